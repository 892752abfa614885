//! systemd socket activation for sockets taken out of a running process.
//!
//! The pieces of a zero-downtime handover, in the order they are used:
//! 1. [`select`] picks sockets from a read-only [`listing`] of the target by [`Selector`], and
//!    [`take_sockets`] copies them with `pidfd_getfd`, checking that each copy is the
//!    socket the inventory saw;
//! 2. [`spawn`] starts the new server as systemd would: the sockets at fd 3, 4, …
//!    without `FD_CLOEXEC`, `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID` set to the
//!    child's own pid after fork, optionally `NOTIFY_SOCKET`, and nothing else of ours;
//! 3. [`ActivatedChild::wait_ready`] waits for `READY=1` (or for a grace time) while
//!    watching for the child's exit and for signals.
//!
//! Nothing here changes the old server: the copies share its open file
//! descriptions, and what happens to it afterwards is the caller's decision.

pub mod notify;
pub mod selector;

pub use notify::{Notification, NotifySocket};
pub use selector::{is_listening_or_bound, AddrMatch, PortMatch, Selector};

use crate::error::{Error, Result};
use crate::inventory::{
    bracketed, diag_table, inet_diag, inventory, proc_error, unix_diag, Inventory, ProcDirs,
    SocketInfo,
};
use crate::pidfd::PidFd;
use crate::signalfd::SignalFd;
use crate::spawn::{Child, FdPlan, Session, SignalDefaults, Spawn};
use crate::{Pid, TargetFd};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

pub use crate::spawn::{find_program, LISTEN_FDS_START};

/// A socket chosen for handover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// Index of the selector that chose it (for its `LISTEN_FDNAMES` entry).
    pub selector: usize,
    /// Every number the socket has in the target, lowest first: a socket dup'd to
    /// several numbers is one socket and is passed once.
    pub target_fds: Vec<TargetFd>,
    pub inode: u64,
    pub info: SocketInfo,
}

/// A selected socket with our copy of it.
#[derive(Debug)]
pub struct TakenSocket {
    pub selected: Selected,
    /// Our copy (close-on-exec), sharing the target's open file description.
    pub fd: OwnedFd,
}

/// Chooses sockets of `inv` for `selectors`, in selector order and, within one
/// selector, in the target's fd order.
///
/// Every member of an `SO_REUSEPORT` group is taken together, also for `fd:N`. A
/// socket chosen by two selectors is passed once, under the first. A selector that
/// matches nothing is an error listing what the process does listen on.
pub fn select(pid: Pid, fds: &[Candidate], selectors: &[Selector]) -> Result<Vec<Selected>> {
    let resolve = |rel: &str| {
        std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .map(|cwd| cwd.join(rel).to_string_lossy().into_owned())
    };
    let mut chosen: Vec<Selected> = Vec::new();
    let mut by_inode: HashMap<u64, usize> = HashMap::new();
    for (index, sel) in selectors.iter().enumerate() {
        let mut hits: Vec<&Candidate> = fds.iter().filter(|e| sel.matches(e, resolve)).collect();
        if let Selector::Fd(fd) = sel {
            let Some(entry) = hits.first().copied() else {
                return Err(Error::NoSuchFd { pid, fd: *fd });
            };
            let Some(sock) = entry.socket.as_ref().filter(|_| entry.inode.is_some()) else {
                let what = if entry.link.starts_with("socket:") {
                    "is a socket that is neither listening nor bound (a connection, or a kind fdgrab cannot pass)"
                } else {
                    "is not a socket; only sockets can be handed over"
                };
                return Err(Error::WrongKind {
                    pid,
                    fd: *fd,
                    reason: format!("'{}' {what}", entry.link),
                });
            };
            if !is_listening_or_bound(sock) {
                return Err(Error::WrongKind {
                    pid,
                    fd: *fd,
                    reason: format!(
                        "{} {} is not listening or bound, so a new server could not serve it",
                        sock.protocol.as_deref().unwrap_or(&sock.family),
                        entry.display_name()
                    ),
                });
            }
            hits.extend(fds.iter().filter(|e| {
                e.fd != *fd
                    && e.socket
                        .as_ref()
                        .is_some_and(|s| is_listening_or_bound(s) && selector::same_group(s, sock))
            }));
            hits.sort_by_key(|e| e.fd);
        }
        if hits.is_empty() {
            return Err(Error::NoMatchingSocket {
                pid,
                selector: sel.to_string(),
                available: describe_listeners(fds),
            });
        }
        for entry in hits {
            let (Some(inode), Some(info)) = (entry.inode, entry.socket.as_ref()) else {
                continue;
            };
            match by_inode.get(&inode) {
                Some(&i) => {
                    if !chosen[i].target_fds.contains(&entry.fd) {
                        chosen[i].target_fds.push(entry.fd);
                        chosen[i].target_fds.sort();
                    }
                }
                None => {
                    by_inode.insert(inode, chosen.len());
                    chosen.push(Selected {
                        selector: index,
                        target_fds: vec![entry.fd],
                        inode,
                        info: info.clone(),
                    });
                }
            }
        }
    }
    Ok(chosen)
}

/// What a process listens on, for error messages.
pub fn describe_listeners(fds: &[Candidate]) -> String {
    let list: Vec<String> = fds
        .iter()
        .filter(|e| e.socket.as_ref().is_some_and(is_listening_or_bound))
        .map(|e| {
            let s = e
                .socket
                .as_ref()
                .map(|s| s.protocol.clone().unwrap_or_else(|| s.family.clone()));
            format!("fd {} {} {}", e.fd, s.unwrap_or_default(), e.display_name())
        })
        .collect();
    if list.is_empty() {
        "it has no listening or bound sockets".into()
    } else {
        format!("it listens on: {}", list.join(", "))
    }
}

/// One descriptor of the target, as far as socket selection needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub fd: TargetFd,
    /// What `/proc/PID/fd/N` points at.
    pub link: String,
    /// The socket inode, for sockets.
    pub inode: Option<u64>,
    /// Details of listening and bound sockets (others may be left out).
    pub socket: Option<SocketInfo>,
}

impl Candidate {
    /// `127.0.0.1:8080 (LISTEN)`, a path, or the link.
    pub fn display_name(&self) -> String {
        self.socket
            .as_ref()
            .map_or_else(|| self.link.clone(), SocketInfo::describe)
    }
}

/// Every fd of the target, with details for its listening and bound sockets.
///
/// Listeners are found with kernel-filtered `sock_diag` dumps in the target's
/// network namespace (listening TCP, all UDP and unix sockets), which is much
/// cheaper than the full [`inventory`]; where those dumps are unavailable (no
/// `inet_diag` module, no right to enter the namespace) the inventory is used.
pub fn listing(target: &PidFd) -> Result<Vec<Candidate>> {
    match quick_listing(target) {
        Ok(Some(list)) => Ok(list),
        Ok(None) => Ok(from_inventory(&inventory(target)?)),
        Err(e) => Err(e),
    }
}

fn from_inventory(inv: &Inventory) -> Vec<Candidate> {
    inv.fds
        .iter()
        .map(|e| Candidate {
            fd: e.fd,
            link: e.link.clone(),
            inode: e.inode,
            socket: e.socket.clone(),
        })
        .collect()
}

/// `Ok(None)` asks the caller to fall back to the full inventory.
fn quick_listing(target: &PidFd) -> Result<Option<Vec<Candidate>>> {
    let pid = target.pid();
    let (dirs, numbers) = ProcDirs::open(pid, &format!("/proc/{pid}"))?;
    if numbers.is_empty() {
        // Also what a process whose leader thread exited shows; the inventory knows
        // how to read its table through another thread.
        return Ok(None);
    }
    let (proc_dir, fd_dir) = (&dirs.proc_dir, &dirs.fd_dir);
    let mut list = Vec::with_capacity(numbers.len());
    for n in numbers {
        let Some(fd) = TargetFd::new(n) else { continue };
        let link = match rustix::fs::readlinkat(fd_dir, n.to_string(), Vec::new()) {
            Ok(l) => l.to_string_lossy().into_owned(),
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(proc_error(pid, "readlink /proc/PID/fd/N", e)),
        };
        let inode = bracketed(&link, "socket:[");
        list.push(Candidate {
            fd,
            link,
            inode,
            socket: None,
        });
    }
    if list.iter().any(|c| c.inode.is_some()) {
        let Some(table) = listener_table(pid, proc_dir) else {
            return Ok(None);
        };
        for c in &mut list {
            c.socket = c.inode.and_then(|i| table.get(&i).cloned());
        }
    }
    if !target.is_alive() {
        return Err(Error::NoSuchProcess { pid });
    }
    Ok(Some(list))
}

/// Listening TCP, all UDP and all unix sockets of `pid`'s network namespace by inode;
/// `None` if any dump is refused.
fn listener_table(pid: Pid, proc_dir: &OwnedFd) -> Option<HashMap<u64, SocketInfo>> {
    unix_diag::diag_socket_in(proc_dir)
        .and_then(|sock| diag_table(&sock, inet_diag::STATES_LISTEN))
        .map_err(|e| tracing::debug!(pid, error = %e, "sock_diag dumps unavailable; using the inventory"))
        .ok()
}

/// Lists the target's fds, selects, and copies the chosen sockets out of it.
///
/// Each copy is checked to be the socket the listing saw (same inode): the target
/// may close a number and reuse it between the listing and the copy.
pub fn take_sockets(target: &PidFd, selectors: &[Selector]) -> Result<Vec<TakenSocket>> {
    take_sockets_with(target, selectors, &crate::grab::GrabOptions::new())
}

/// [`take_sockets`] with a chosen grab backend (`pidfd_getfd` or ptrace injection).
pub fn take_sockets_with(
    target: &PidFd,
    selectors: &[Selector],
    how: &crate::grab::GrabOptions,
) -> Result<Vec<TakenSocket>> {
    let fds = listing(target)?;
    let selected = select(target.pid(), &fds, selectors)?;
    let mut taken = Vec::with_capacity(selected.len());
    for sel in selected {
        let fd = sel.target_fds[0];
        let ours = how.grab(target, fd)?.fd;
        let st =
            rustix::fs::fstat(&ours).map_err(|e| Error::io("fstat", target.pid(), Some(fd), e))?;
        if st.st_ino != sel.inode {
            return Err(Error::WrongKind {
                pid: target.pid(),
                fd,
                reason: format!(
                    "the fd changed while it was being taken (was socket:[{}], now inode {})",
                    sel.inode, st.st_ino
                ),
            });
        }
        tracing::debug!(
            pid = target.pid(),
            fd = fd.as_raw(),
            inode = sel.inode,
            "took socket"
        );
        taken.push(TakenSocket {
            selected: sel,
            fd: ours,
        });
    }
    Ok(taken)
}

/// Checks a `LISTEN_FDNAMES` entry the way systemd does: at most 255 printable
/// ASCII characters, no `:` (the separator).
pub fn check_fd_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("an fd name cannot be empty".into());
    }
    if name.len() > 255 {
        return Err(format!("fd name '{name}' is longer than 255 characters"));
    }
    if let Some(c) = name.chars().find(|c| *c == ':' || !c.is_ascii_graphic()) {
        return Err(format!(
            "fd name '{name}' contains {c:?}; names are printable ASCII without ':' or spaces"
        ));
    }
    Ok(())
}

/// How to start the new server.
#[derive(Clone, Debug)]
pub struct ActivationCommand {
    /// The resolved program ([`find_program`]).
    pub program: PathBuf,
    /// The full argument vector, `argv[0]` included.
    pub argv: Vec<OsString>,
    /// One `LISTEN_FDNAMES` entry per socket.
    pub names: Vec<String>,
    /// `NOTIFY_SOCKET` for the child, if readiness is to be reported.
    pub notify_socket: Option<String>,
    /// Start the child in a new session (it will outlive us) rather than in a new
    /// process group of ours.
    pub new_session: bool,
}

/// Variables we set, removed from the inherited environment first.
const OWN_VARS: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
];

/// Starts `cmd` with `fds` at 3, 4, … and the socket-activation environment, on the
/// crate's one spawner ([`crate::spawn`]).
///
/// The environment is ours, minus any inherited `LISTEN_*`/`NOTIFY_SOCKET`, plus
/// `LISTEN_FDS`, `LISTEN_FDNAMES`, `NOTIFY_SOCKET` (when set) and `LISTEN_PID`, which
/// the child writes itself before exec. Every other descriptor above 2 is closed at
/// exec, and every signal starts at its default, as systemd starts a service.
pub fn spawn(cmd: &ActivationCommand, fds: &[BorrowedFd<'_>]) -> Result<ActivatedChild> {
    if cmd.names.len() != fds.len() {
        return Err(Error::InvalidArgument(format!(
            "{} fd names for {} sockets",
            cmd.names.len(),
            fds.len()
        )));
    }
    for name in &cmd.names {
        check_fd_name(name).map_err(Error::InvalidArgument)?;
    }
    let mut spawn = Spawn::new(&cmd.argv)?.program(&cmd.program);
    for var in OWN_VARS {
        spawn = spawn.env_remove(var);
    }
    spawn = spawn
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", cmd.names.join(":"))
        .listen_pid();
    if let Some(n) = &cmd.notify_socket {
        spawn = spawn.env("NOTIFY_SOCKET", n);
    }
    let child = spawn
        .fds(FdPlan::listen_fds(fds)?)
        .close_other_fds()
        .signal_defaults(SignalDefaults::All)
        .session(if cmd.new_session {
            Session::NewSession
        } else {
            Session::NewProcessGroup
        })
        .spawn()?;
    tracing::info!(pid = child.pid(), program = %cmd.program.display(), fds = fds.len(), "started new server");
    Ok(ActivatedChild {
        child,
        released: false,
    })
}

/// Why the new server counts as ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// It sent `READY=1`.
    Notified,
    /// It sent nothing but was alive when the ready timeout passed.
    Assumed(Duration),
}

/// Why the new server did not become ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// It exited (and was reaped) first.
    Exited(ExitStatus),
    /// No `READY=1` within the start timeout; it is still running.
    TimedOut(Duration),
    /// We received this signal while waiting; it is still running.
    Interrupted(i32),
}

/// The new server, our child.
///
/// Dropping it while it runs stops it (SIGTERM, then SIGKILL after two seconds),
/// because a half-started server must not keep sharing the old server's sockets;
/// [`ActivatedChild::release`] lets it run on instead.
#[derive(Debug)]
pub struct ActivatedChild {
    child: Child,
    released: bool,
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

impl ActivatedChild {
    pub fn pid(&self) -> Pid {
        self.child.pid()
    }

    pub fn pidfd(&self) -> &PidFd {
        self.child.pidfd()
    }

    /// Lets the child outlive this handle (and us): it is not stopped on drop.
    pub fn release(mut self) -> Pid {
        self.released = true;
        self.pid()
    }

    /// Waits until the child is ready: it sends `READY=1` on `notify` (from itself or
    /// a descendant), or, with `ready_after`, that much time passes and it is alive.
    /// Gives up after `start_timeout`, when the child exits, or when one of the
    /// signals in `signals` arrives.
    pub fn wait_ready(
        &mut self,
        notify: Option<&NotifySocket>,
        signals: Option<&SignalFd>,
        ready_after: Option<Duration>,
        start_timeout: Duration,
    ) -> Result<std::result::Result<Readiness, NotReady>> {
        let start = Instant::now();
        let pid = self.pid();
        loop {
            let elapsed = start.elapsed();
            if let Some(after) = ready_after {
                if elapsed >= after {
                    if self.reap_if_exited()? {
                        return Ok(Err(NotReady::Exited(
                            self.child.status().unwrap_or_default(),
                        )));
                    }
                    return Ok(Ok(Readiness::Assumed(after)));
                }
            }
            if elapsed >= start_timeout {
                if self.reap_if_exited()? {
                    return Ok(Err(NotReady::Exited(
                        self.child.status().unwrap_or_default(),
                    )));
                }
                return Ok(Err(NotReady::TimedOut(start_timeout)));
            }
            let deadline = ready_after.map_or(start_timeout, |a| a.min(start_timeout));
            let left = deadline.saturating_sub(elapsed);
            let mut fds = vec![PollFd::new(self.child.pidfd(), PollFlags::IN)];
            if let Some(n) = notify {
                fds.push(PollFd::new(n, PollFlags::IN));
            }
            if let Some(s) = signals {
                fds.push(PollFd::new(s, PollFlags::IN));
            }
            match poll(&mut fds, Some(&timespec(left))) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(Error::io("poll", pid, None, e)),
            }
            if self.reap_if_exited()? {
                return Ok(Err(NotReady::Exited(
                    self.child.status().unwrap_or_default(),
                )));
            }
            if let Some(s) = signals {
                if let Some(sig) = s.read()? {
                    return Ok(Err(NotReady::Interrupted(sig)));
                }
            }
            if let Some(n) = notify {
                while let Some(msg) = n.recv()? {
                    if !notify::is_same_or_descendant(msg.pid, pid) {
                        tracing::warn!(
                            sender = msg.pid,
                            server = pid,
                            "ignored a notification from outside the new server"
                        );
                        continue;
                    }
                    if let Some(status) = msg.field("STATUS") {
                        tracing::info!(pid, status, "new server status");
                    }
                    if msg.is_ready() {
                        // It may have said READY=1 and died straight after.
                        if self.reap_if_exited()? {
                            return Ok(Err(NotReady::Exited(
                                self.child.status().unwrap_or_default(),
                            )));
                        }
                        return Ok(Ok(Readiness::Notified));
                    }
                }
            }
        }
    }

    /// Reaps the child if it has exited; `true` if it has.
    fn reap_if_exited(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// Sends `SIGTERM`, waits up to `grace`, then `SIGKILL`s, and reaps.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.child.terminate(grace)
    }

    /// Waits for the child to exit, passing every signal read from `signals` on to
    /// it, and returns its status.
    pub fn wait_forwarding(&mut self, signals: &SignalFd) -> Result<ExitStatus> {
        self.child.wait_forwarding(signals)
    }
}

impl Drop for ActivatedChild {
    fn drop(&mut self) {
        if self.released || self.child.status().is_some() {
            return;
        }
        tracing::warn!(pid = self.pid(), "stopping the new server");
        if let Err(e) = self.terminate(Duration::from_secs(2)) {
            tracing::warn!(pid = self.pid(), error = %e, "could not stop the new server");
        }
    }
}
