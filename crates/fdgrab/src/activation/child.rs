//! The new server once started: waiting for its readiness, forwarding signals,
//! stopping it if the handover is called off.

use super::notify::{self, NotifySocket};
use crate::error::{Error, Result};
use crate::pidfd::PidFd;
use crate::signalfd::SignalFd;
use crate::spawn::Child;
use crate::Pid;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// Why the new server counts as ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// It sent `READY=1`.
    Notified,
    /// It sent nothing but was alive when the ready timeout passed.
    Assumed(Duration),
    /// It called `listen` on every socket it was handed through `bind`.
    Listening,
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
    /// The [`ReadyGate`] called the handover off; it is still running.
    Refused,
    /// The ready timeout passed while it was stopped by this signal (`SIGTTIN`:
    /// it read from the terminal, whose foreground its process group is not):
    /// alive, but serving nothing.
    Stopped(i32),
}

/// A second source of readiness for [`ActivatedChild::wait_ready_gated`]: the
/// `bind` handover supervisor, which must also keep answering trapped calls while
/// the launcher waits.
pub trait ReadyGate {
    /// Readable when the gate has work.
    fn fd(&self) -> BorrowedFd<'_>;
    /// Does that work (without blocking).
    fn service(&mut self) -> Result<()>;
    /// Ready by the gate's own measure.
    fn ready(&self) -> bool;
    /// Whether `READY=1` or the ready timeout may count now.
    fn may_count(&self) -> bool;
    /// Whether the handover must be called off.
    fn refused(&self) -> bool;
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
    /// Takes charge of a freshly started server.
    pub(super) fn new(child: Child) -> Self {
        Self {
            child,
            released: false,
        }
    }

    /// The new server's pid.
    pub fn pid(&self) -> Pid {
        self.child.pid()
    }

    /// A pidfd of the new server, for signalling and waiting without pid races.
    pub fn pidfd(&self) -> &PidFd {
        self.child.pidfd()
    }

    /// Takes charge of a child started on the spawner (e.g. by
    /// [`crate::supervise::SupervisedCommand`]).
    pub fn from_child(child: Child) -> Self {
        Self::new(child)
    }

    /// Passes every pending signal of `signals` on to the child.
    pub fn forward(&self, signals: &SignalFd) -> Result<()> {
        self.child.forward(signals)
    }

    /// Reaps the child if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait()
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
        self.wait_ready_gated(notify, signals, ready_after, start_timeout, None)
    }

    /// [`ActivatedChild::wait_ready`] with a [`ReadyGate`] served meanwhile: its own
    /// readiness counts, and `READY=1` or `ready_after` count only once it allows.
    pub fn wait_ready_gated(
        &mut self,
        notify: Option<&NotifySocket>,
        signals: Option<&SignalFd>,
        ready_after: Option<Duration>,
        start_timeout: Duration,
        mut gate: Option<&mut dyn ReadyGate>,
    ) -> Result<std::result::Result<Readiness, NotReady>> {
        let start = Instant::now();
        let pid = self.pid();
        loop {
            let elapsed = start.elapsed();
            let may_count = gate.as_ref().is_none_or(|g| g.may_count());
            if let Some(after) = ready_after.filter(|_| may_count) {
                if elapsed >= after {
                    if let Some(st) = self.child.try_wait()? {
                        return Ok(Err(NotReady::Exited(st)));
                    }
                    // "Still running" must mean able to serve.
                    if let Some(sig) = self.child.stopped_by() {
                        return Ok(Err(NotReady::Stopped(sig)));
                    }
                    return Ok(Ok(Readiness::Assumed(after)));
                }
            }
            if elapsed >= start_timeout {
                if let Some(st) = self.child.try_wait()? {
                    return Ok(Err(NotReady::Exited(st)));
                }
                return Ok(Err(NotReady::TimedOut(start_timeout)));
            }
            let deadline = ready_after
                .filter(|_| may_count)
                .map_or(start_timeout, |a| a.min(start_timeout));
            let left = deadline.saturating_sub(elapsed);
            let gate_fd = gate.as_ref().map(|g| g.fd());
            let exit_fd = self.child.pidfd().exit_fd()?;
            let mut fds = vec![PollFd::new(&exit_fd, PollFlags::IN)];
            if let Some(g) = &gate_fd {
                fds.push(PollFd::new(g, PollFlags::IN));
            }
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
            if let Some(g) = gate.as_mut() {
                g.service()?;
                // Before the exit check: a refused server usually exits next.
                if g.refused() {
                    return Ok(Err(NotReady::Refused));
                }
            }
            if let Some(st) = self.child.try_wait()? {
                return Ok(Err(NotReady::Exited(st)));
            }
            if let Some(g) = &gate {
                if g.ready() {
                    return Ok(Ok(Readiness::Listening));
                }
            }
            if let Some(s) = signals {
                while let Some(info) = s.read_info()? {
                    // A terminal's resize, a user's `kill -TTIN` meant for the
                    // server: no reason to call the handover off.
                    if crate::signalfd::TERMINAL_SIGNALS.contains(&info.signo) {
                        if !info.from_kernel() {
                            let _ = self.child.pidfd().send_signal(info.signo);
                        }
                        continue;
                    }
                    return Ok(Err(NotReady::Interrupted(info.signo)));
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
                    if msg.is_ready() && !gate.as_ref().is_none_or(|g| g.may_count()) {
                        tracing::info!(
                            pid,
                            "READY=1 before every taken address was bound; waiting on"
                        );
                        continue;
                    }
                    if msg.is_ready() {
                        // It may have said READY=1 and died straight after.
                        if let Some(st) = self.child.try_wait()? {
                            return Ok(Err(NotReady::Exited(st)));
                        }
                        return Ok(Ok(Readiness::Notified));
                    }
                }
            }
        }
    }

    /// Sends `SIGTERM`, waits up to `grace`, then `SIGKILL`s, and reaps.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.child.terminate(grace)
    }

    /// [`ActivatedChild::terminate`], then [`ActivatedChild::end_left_behind`]: a
    /// handover called off leaves no process of the new server's holding the old
    /// server's sockets.
    pub fn terminate_all(&mut self, grace: Duration) -> Result<ExitStatus> {
        let st = self.terminate(grace)?;
        self.end_left_behind(grace);
        Ok(st)
    }

    /// Stops (`SIGTERM`, `SIGKILL` after `grace`) and reaps every other child of
    /// ours: after [`adopt_orphans`], the processes the new server forked and left
    /// behind (it exited, or daemonized), which still hold the sockets it was
    /// given. Children of those that are orphaned meanwhile come to us in turn, so
    /// this looks again a few times.
    ///
    /// Returns how many processes it stopped.
    pub fn end_left_behind(&self, grace: Duration) -> usize {
        let server = self.pid();
        let mut ended = 0;
        for _ in 0..LEFT_BEHIND_ROUNDS {
            // Our children, unreaped, cannot be replaced by another process under
            // the same pid before the pidfd is open.
            let kids: Vec<PidFd> = other_children(server)
                .into_iter()
                .filter_map(|p| PidFd::open(p).ok())
                .collect();
            if kids.is_empty() {
                break;
            }
            for k in &kids {
                // One that has exited already (a daemon's intermediate process) is
                // only reaped.
                if k.is_alive() {
                    tracing::info!(
                        pid = k.pid(),
                        server,
                        "stopping a process the new server left behind"
                    );
                    ended += 1;
                    let _ = k.send_signal(libc::SIGTERM);
                    // A stopped one would keep it pending for the whole grace time.
                    let _ = k.send_signal(libc::SIGCONT);
                }
            }
            let deadline = Instant::now() + grace;
            for k in &kids {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut gone = k.wait_exit(Some(left)).unwrap_or(false);
                if !gone {
                    let _ = k.send_signal(libc::SIGKILL);
                    // SIGKILL does not end a process in an uninterruptible wait (a
                    // FUSE or NFS read): it is left to be reaped when fdgrab exits
                    // rather than waited for without end.
                    gone = k.wait_exit(Some(KILL_GRACE)).unwrap_or(false);
                }
                if gone {
                    let _ = k.wait_child();
                } else {
                    tracing::warn!(
                        pid = k.pid(),
                        server,
                        "a process the new server left behind did not end on SIGKILL"
                    );
                }
            }
        }
        ended
    }

    /// Waits for the child to exit, passing every signal read from `signals` on to
    /// it, and returns its status.
    pub fn wait_forwarding(&mut self, signals: &SignalFd) -> Result<ExitStatus> {
        self.child.wait_forwarding(signals)
    }

    /// [`ActivatedChild::wait_forwarding`] that also keeps reading `notify`, as
    /// systemd keeps a service's `NOTIFY_SOCKET` for its whole life: a server's
    /// later `STATUS=`, `RELOADING=1` or `STOPPING=1` is logged instead of failing
    /// with `ECONNREFUSED` (or, unread, filling the socket until it blocks).
    pub fn wait_forwarding_notified(
        &mut self,
        signals: &SignalFd,
        notify: &NotifySocket,
    ) -> Result<ExitStatus> {
        let pid = self.pid();
        self.child
            .wait_forwarding_also(signals, Some(notify.as_fd()), || {
                while let Some(msg) = notify.recv()? {
                    // Anyone in the network namespace may write to an abstract name.
                    if !notify::is_same_or_descendant(msg.pid, pid) {
                        continue;
                    }
                    if let Some(status) = msg.field("STATUS") {
                        tracing::info!(pid, sender = msg.pid, status, "new server status");
                    }
                }
                Ok(())
            })
    }
}

/// How long [`ActivatedChild::end_left_behind`] waits for a process it killed.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// How many times [`ActivatedChild::end_left_behind`] looks for children at most.
const LEFT_BEHIND_ROUNDS: usize = 4;

/// Makes this process the reaper of its descendants' orphans
/// (`PR_SET_CHILD_SUBREAPER`): a process the new server forks and leaves behind
/// (it exits first, or daemonizes with a double fork and `setsid`) becomes our
/// child rather than init's, so that a handover called off can stop it too
/// ([`ActivatedChild::end_left_behind`]). `false` turns it off again, for once the
/// new server is ready: a long-running server's orphans are not ours to reap.
pub fn adopt_orphans(on: bool) -> Result<()> {
    let me = on.then(rustix::process::getpid);
    rustix::process::set_child_subreaper(me)
        .map_err(|e| Error::local("prctl(PR_SET_CHILD_SUBREAPER)", e))
}

/// Our children (of every thread) but `except` and our own killable readers
/// (see `seccomp::killable_read`): those share our memory, and one buried in a
/// FUSE read its daemon holds ends with no signal, so a wait for it would
/// never return.
fn other_children(except: Pid) -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut kids: Vec<Pid> = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<Pid>>()
        })
        .filter(|&p| p != except && !shares_our_memory(p))
        .collect();
    kids.sort_unstable();
    kids.dedup();
    kids
}

/// Whether `pid` shares our address space (`kcmp(KCMP_VM)`); `false` where
/// that cannot be told.
fn shares_our_memory(pid: Pid) -> bool {
    const KCMP_VM: libc::c_long = 1;
    // SAFETY: integer arguments only; the call compares two processes' mm.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::c_long::from(std::process::id() as i32),
            libc::c_long::from(pid),
            KCMP_VM,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    r == 0
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
