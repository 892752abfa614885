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
use fdgrab::signalfd::SignalFd;
use fdgrab::supervise::agent::{Agent, AgentEvent};
use fdgrab::supervise::capabilities;
use fdgrab::supervise::pidfd_cache::FdBudget;
use fdgrab::supervise::policy::Policy;
use rustix::fs::{Mode, Uid};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use rustix::thread::CapabilitySet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The agent's epoll token for its signalfd.
const SIGNALS: u64 = 1;

/// How often, at most, the `STATUS=` line is refreshed for decisions alone.
const STATUS_EVERY: Duration = Duration::from_secs(2);

pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let budget = FdBudget::raise_nofile();
    let upper = upper_policy(&a)?;
    let audit = crate::bind_policy::open_audit(&a.bind_policy)?;
    let listener = listen_at(&a.socket)?;
    // Before any thread exists: capabilities are per thread, and threads inherit.
    match capabilities::restrict(CapabilitySet::empty()) {
        Ok(Some(sets)) => {
            tracing::debug!(effective = ?sets.effective, "capabilities dropped to what the agent uses")
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot drop capabilities; keeping them"),
    }
    // Blocked before any worker thread exists: threads inherit the mask, so these
    // signals reach only the signalfd (SIGHUP no longer kills the agent).
    let signals = SignalFd::block(&[libc::SIGHUP, libc::SIGUSR1])
        .context("blocking SIGHUP and SIGUSR1 for the agent's signalfd")?;
    let mut agent =
        Agent::new(listener, upper, audit, budget).context("setting up the event loop")?;
    agent.set_max_pods(a.max_pods as usize);
    agent
        .watch(signals.as_fd(), SIGNALS)
        .context("watching the signalfd")?;
    let systemd = NotifySender::from_env().context("NOTIFY_SOCKET")?;
    if let Some(n) = &systemd {
        n.send(
            &format!("READY=1\nSTATUS={}", agent.stats().status_line()),
            true,
        )
        .context("notifying systemd (NOTIFY_SOCKET)")?;
    }
    tracing::info!(socket = %a.socket.display(), nofile = budget.limit, max_pods = a.max_pods, "fdgrab agent ready");
    let mut last_status = (Instant::now(), 0u64);
    loop {
        let events = agent.turn(None).context("agent event loop")?;
        let mut changed = false;
        for ev in &events {
            match ev {
                AgentEvent::Ready(SIGNALS) => {
                    while let Some(sig) = signals.read().context("reading the signalfd")? {
                        match sig {
                            libc::SIGHUP => reload(&a, &mut agent),
                            libc::SIGUSR1 => dump_stats(&agent),
                            _ => {}
                        }
                    }
                    changed = true;
                }
                AgentEvent::Rejected { .. } | AgentEvent::Ready(_) => {}
                _ => changed = true,
            }
        }
        let Some(n) = &systemd else { continue };
        let stats = agent.stats();
        let decided = stats.decisions != last_status.1;
        if changed || (decided && last_status.0.elapsed() >= STATUS_EVERY) {
            last_status = (Instant::now(), stats.decisions);
            // Only a status line: losing one must neither stop nor stall the agent.
            if let Err(e) = n.send(&format!("STATUS={}", stats.status_line()), false) {
                tracing::debug!(error = %e, "systemd status update failed");
            }
        }
    }
}

/// SIGHUP: read the policy again and reopen the audit file. A policy that does
/// not load is logged and the running one stays; a reopen that fails keeps
/// writing to the old file.
fn reload(a: &AgentArgs, agent: &mut Agent) {
    if let Err(e) = agent.reopen_audit() {
        tracing::error!(error = %e, "SIGHUP: cannot reopen the audit file; still writing to the old one");
    }
    // Logged once in effect, so that whoever waits for the line sees the new policy.
    match upper_policy(a) {
        Ok(p) => {
            let shown = p.to_string();
            agent.set_policy(p);
            tracing::info!(policy = %shown, "SIGHUP: policy reloaded, audit file reopened");
        }
        Err(e) => tracing::error!("SIGHUP: {e:#}; keeping the current policy"),
    }
}

/// SIGUSR1: one log line with the agent's state as JSON.
fn dump_stats(agent: &Agent) {
    match serde_json::to_string(&agent.stats()) {
        Ok(json) => tracing::info!(stats = %json, "SIGUSR1: agent state"),
        Err(e) => tracing::warn!(error = %e, "cannot encode the agent's state"),
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
