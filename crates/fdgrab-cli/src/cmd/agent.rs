//! `fdgrab agent`: the bind supervisor as an OCI seccomp agent.
//!
//! Runtimes (runc, crun) connect to `--socket` and hand over each container's
//! seccomp listener; the library's [`Agent`] supervises them all on one event loop.
//! This file owns what is about the command: the socket file, the policy bound,
//! the audit sink and systemd readiness.

use crate::cli::AgentArgs;
use crate::exit::UsageError;
use anyhow::{bail, Context};
use fdgrab::activation::NotifySender;
use fdgrab::supervise::agent::{Agent, AgentEvent};
use fdgrab::supervise::policy::Policy;
use fdgrab::supervise::Supervisor;
use rustix::fs::{Mode, Uid};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::ExitCode;

pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let upper = upper_policy(&a)?;
    let audit = crate::bind_policy::open_audit(&a.bind_policy)?;
    let listener = listen_at(&a.socket)?;
    let supervisor = Supervisor::new(audit).context("creating the supervisor")?;
    let mut agent = Agent::new(listener, upper, supervisor).context("setting up the event loop")?;
    let systemd = NotifySender::from_env()?;
    if let Some(n) = &systemd {
        n.send("READY=1\nSTATUS=supervising 0 containers", true)
            .context("notifying systemd (NOTIFY_SOCKET)")?;
    }
    tracing::info!(socket = %a.socket.display(), "fdgrab agent ready");
    loop {
        let events = agent.turn(None).context("agent event loop")?;
        let changed = events
            .iter()
            .any(|e| !matches!(e, AgentEvent::Rejected { .. }));
        if let (true, Some(n)) = (changed, &systemd) {
            // Only a status line: losing one must neither stop nor stall the agent.
            if let Err(e) = n.send(
                &format!("STATUS=supervising {} containers", agent.container_count()),
                false,
            ) {
                tracing::debug!(error = %e, "systemd status update failed");
            }
        }
    }
}

/// The agent-wide bound: every `--allow-bind` spec plus the `--policy` file,
/// read exactly as `fdgrab run` reads them.
fn upper_policy(a: &AgentArgs) -> anyhow::Result<Policy> {
    let policy =
        crate::bind_policy::load_policy(&a.bind_policy.allow_bind, a.bind_policy.policy.as_deref())
            .context("the agent's policy (--allow-bind, --policy)")?;
    if policy.is_empty() {
        tracing::warn!("empty policy: containers get no privileged ports from this agent");
    }
    Ok(policy)
}

/// Creates the listening socket at `path`, mode 0600 and owned by root (when we
/// are root), replacing a stale socket file but never a live agent's.
fn listen_at(path: &Path) -> anyhow::Result<OwnedFd> {
    let addr = SocketAddrUnix::new(path)
        .map_err(|e| UsageError(format!("--socket {}: {e}", path.display())))?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if socket_is_live(&addr)? {
                bail!("another agent is already listening on {}", path.display());
            }
            tracing::info!(socket = %path.display(), "replacing a stale socket");
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => {
            return Err(UsageError(format!(
                "--socket {}: exists and is not a socket; not replacing it",
                path.display()
            ))
            .into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .context("creating the agent socket")?;
    // The file is created by bind with the umask applied; 0177 makes it 0600 from
    // the first instant, so no runtime-visible window exists with wider access.
    let old = rustix::process::umask(Mode::from_raw_mode(0o177));
    let bound = rustix::net::bind(&sock, &addr);
    rustix::process::umask(old);
    bound.with_context(|| format!("binding the agent socket {}", path.display()))?;
    // No chmod by path: the umask above already made it 0600, and a path-based call
    // after bind could be redirected by a symlink swapped in meanwhile. The owner is
    // the creator (root); only the group can differ (a set-gid directory), and
    // lchown never follows a symlink.
    if rustix::process::geteuid().is_root() {
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(Uid::ROOT),
            Some(rustix::fs::Gid::ROOT),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("chown root {}", path.display()))?;
    } else {
        tracing::warn!("not running as root: the socket is owned by the current user, and binds need privileges");
    }
    rustix::net::listen(&sock, 128).with_context(|| format!("listening on {}", path.display()))?;
    Ok(sock)
}

/// Whether something accepts connections on `addr`. A socket file nobody listens
/// on refuses (ECONNREFUSED); a full backlog (EAGAIN) still means a live owner.
fn socket_is_live(addr: &SocketAddrUnix) -> anyhow::Result<bool> {
    let probe = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    match rustix::net::connect(&probe, addr) {
        Ok(()) | Err(Errno::AGAIN | Errno::INPROGRESS) => Ok(true),
        Err(Errno::CONNREFUSED) => Ok(false),
        Err(e) => Err(e).context("probing the existing socket"),
    }
}
