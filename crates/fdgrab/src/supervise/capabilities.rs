//! The capabilities a supervisor keeps once it is running (`capabilities(7)`).
//!
//! Effective, all the time:
//! - `CAP_NET_BIND_SERVICE`: the bind it performs for the caller;
//! - `CAP_SYS_PTRACE`: `pidfd_getfd` and `process_vm_readv` on callers of other
//!   users, and `/proc/TID/{exe,status,ns/net}` of them;
//! - `CAP_NET_ADMIN`: `SIOCGSKNS`, which names a socket's network namespace
//!   (compared with the caller's, and used to read that namespace's threshold).
//!
//! Permitted but not effective: `CAP_SYS_ADMIN`, which `setns(2)` needs. Only the
//! short-lived thread that enters a container's network namespace to read its
//! `ip_unprivileged_port_start` raises it, for itself.
//!
//! Everything else is dropped from all three sets. Capabilities are per thread, so
//! [`restrict`] must run before the supervisor starts any thread; threads inherit
//! the restricted sets.

use rustix::thread::{CapabilitySet, CapabilitySets};

/// Effective while supervising.
pub const SUPERVISOR: CapabilitySet = CapabilitySet::NET_BIND_SERVICE
    .union(CapabilitySet::SYS_PTRACE)
    .union(CapabilitySet::NET_ADMIN);

/// Permitted only, raised by the thread that enters a foreign netns.
pub const NETNS_ENTRY: CapabilitySet = CapabilitySet::SYS_ADMIN;

/// Restricts the calling thread to [`SUPERVISOR`] (effective) plus [`NETNS_ENTRY`]
/// and `extra` (permitted; `extra` effective too). Returns the sets now in force,
/// or `None` when we are not root and hold nothing to drop.
pub fn restrict(extra: CapabilitySet) -> std::io::Result<Option<CapabilitySets>> {
    let now = rustix::thread::capabilities(None)?;
    if now.permitted.is_empty() {
        return Ok(None);
    }
    let effective = now.permitted & (SUPERVISOR | extra);
    let sets = CapabilitySets {
        effective,
        permitted: now.permitted & (SUPERVISOR | NETNS_ENTRY | extra),
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, sets)?;
    tracing::debug!(effective = ?sets.effective, permitted = ?sets.permitted, "capabilities restricted");
    Ok(Some(sets))
}

/// Runs `work` on the calling thread with [`NETNS_ENTRY`] raised when it is
/// permitted, and lowered again afterwards. Meant for a thread of its own.
pub(crate) fn with_netns_entry<T>(work: impl FnOnce() -> T) -> T {
    let raised = rustix::thread::capabilities(None)
        .ok()
        .filter(|s| s.permitted.contains(NETNS_ENTRY) && !s.effective.contains(NETNS_ENTRY))
        .and_then(|s| {
            let up = CapabilitySets {
                effective: s.effective | NETNS_ENTRY,
                ..s
            };
            rustix::thread::set_capabilities(None, up).ok().map(|()| s)
        });
    let out = work();
    if let Some(before) = raised {
        let _ = rustix::thread::set_capabilities(None, before);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a thread of its own (capabilities are per thread): after `restrict`,
    /// only the supervisor's set is effective, CAP_SYS_ADMIN is permitted only,
    /// and `with_netns_entry` raises it for its closure alone.
    #[test]
    fn restrict_keeps_what_the_supervisor_uses() {
        if !rustix::process::geteuid().is_root() {
            fdgrab_testkit::skip("dropping capabilities needs root's");
            return;
        }
        std::thread::spawn(|| {
            let sets = restrict(CapabilitySet::empty())
                .expect("capset")
                .expect("root holds capabilities");
            assert_eq!(sets.effective, SUPERVISOR);
            assert_eq!(sets.permitted, SUPERVISOR | NETNS_ENTRY);
            let now = rustix::thread::capabilities(None).expect("capget");
            assert_eq!(now.effective, SUPERVISOR);
            let inside = with_netns_entry(|| rustix::thread::capabilities(None).expect("capget"));
            assert!(inside.effective.contains(NETNS_ENTRY));
            let after = rustix::thread::capabilities(None).expect("capget");
            assert!(!after.effective.contains(NETNS_ENTRY));
        })
        .join()
        .expect("thread");
    }
}
