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
use std::os::fd::BorrowedFd;
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
            if self.reap_if_exited()? {
                return Ok(Err(NotReady::Exited(
                    self.child.status().unwrap_or_default(),
                )));
            }
            if let Some(g) = &gate {
                if g.ready() {
                    return Ok(Ok(Readiness::Listening));
                }
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
                    if msg.is_ready() && !gate.as_ref().is_none_or(|g| g.may_count()) {
                        tracing::info!(
                            pid,
                            "READY=1 before every taken address was bound; waiting on"
                        );
                        continue;
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
