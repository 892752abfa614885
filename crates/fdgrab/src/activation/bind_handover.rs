//! Starting the new server under the `bind` handover supervisor
//! ([`crate::supervise::handover`]) and supervising it for its whole life.
//!
//! A trapped call fails with `ENOSYS` once the supervisor is gone, so the
//! supervisor stays for as long as any process under the filter lives: in the
//! foreground ([`BindHandover::serve`]) or in a small process of its own
//! ([`BindHandover::detach`]). After the handover is decided every trapped call is
//! handed straight back to the kernel.

use super::{ActivatedChild, ActivationCommand, ReadyGate};
use crate::error::{Error, Result};
use crate::signalfd::SignalFd;
use crate::spawn::FdPlan;
use crate::supervise::command::Started;
use crate::supervise::handover::{handover_filter, Handover};
use crate::supervise::SupervisorEvent;
use crate::supervise::{AuditLabels, AuditSink, Handler, SupervisedCommand, Supervisor};
use crate::Pid;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::ExitStatus;
use std::time::Duration;

/// The supervisor of a new server that takes sockets through `bind`.
#[derive(Debug)]
pub struct BindHandover {
    sup: Supervisor,
    handover: Handover,
    /// Only by bind (`--via bind`): `READY=1` and the ready timeout count only once
    /// every taken address is bound. With socket activation too, the server may
    /// never bind at all.
    bind_only: bool,
}

impl BindHandover {
    /// Starts `cmd` as [`super::spawn`] would, but under the handover filter, with
    /// `taken` (our copies of the old server's sockets) offered to its binds. A
    /// non-empty `env_plan` ([`FdPlan::listen_fds`]) also passes sockets by socket
    /// activation (`--via both`).
    pub fn spawn(
        cmd: &ActivationCommand,
        env_plan: FdPlan,
        taken: Vec<OwnedFd>,
    ) -> Result<(ActivatedChild, BindHandover)> {
        if cmd.names.len() != env_plan.len() {
            return Err(Error::InvalidArgument(format!(
                "{} fd names for {} sockets",
                cmd.names.len(),
                env_plan.len()
            )));
        }
        let handover = Handover::new(taken)?;
        let filter = handover_filter()
            .map_err(|e| Error::InvalidArgument(format!("building the seccomp filter: {e}")))?;
        let bind_only = env_plan.is_empty();
        let plan = env_plan;
        let setup_cmd = cmd.clone();
        let Started { child, listener } = SupervisedCommand::new(&cmd.argv)
            .filter(&filter)
            // The server must outlive a supervisor that dies after the handover;
            // only its later binds then fail (ENOSYS).
            .kill_on_supervisor_exit(false)
            .spawn_setup(move |spawn| super::setup(spawn, &setup_cmd, plan))
            .start()?;
        let child = ActivatedChild::from_child(child);
        tracing::info!(pid = child.pid(), program = %cmd.program.display(), "started new server under the bind handover supervisor");
        let mut sup = Supervisor::new(AuditSink::none())?;
        let handlers: Vec<Box<dyn Handler>> = vec![Box::new(handover.handler())];
        sup.add_listener_with(listener.into_fd(), handlers, AuditLabels::default())?;
        Ok((
            child,
            BindHandover {
                sup,
                handover,
                bind_only,
            },
        ))
    }

    /// What happened to the offered sockets.
    pub fn handover(&self) -> &Handover {
        &self.handover
    }

    /// Supervises until the server exits, forwarding every signal read from
    /// `signals`; returns its status.
    pub fn serve(&mut self, child: &mut ActivatedChild, signals: &SignalFd) -> Result<ExitStatus> {
        const SIGNALS: u64 = 1;
        const EXITED: u64 = 2;
        self.sup.watch(signals.as_fd(), SIGNALS)?;
        self.sup.watch(child.pidfd().exit_fd()?, EXITED)?;
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            for ev in self.sup.dispatch(Some(Duration::from_secs(1)))? {
                if ev == SupervisorEvent::Ready(SIGNALS) {
                    child.forward(signals)?;
                }
            }
        }
    }

    /// Leaves the supervisor running in a process of its own (in a new session,
    /// stdio on `/dev/null`) until every process under the filter has exited;
    /// returns its pid. The caller must be single-threaded.
    pub fn detach(mut self) -> Result<Pid> {
        let threads = std::fs::read_dir("/proc/self/task")
            .map_err(|e| Error::Local {
                op: "listing /proc/self/task",
                source: e,
            })?
            .count();
        if threads != 1 {
            return Err(Error::InvalidArgument(format!(
                "cannot fork a detached supervisor from a process with {threads} threads"
            )));
        }
        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| Error::Local {
                op: "opening /dev/null",
                source: e,
            })?;
        match crate::sys::fork().map_err(|e| Error::local("fork", e))? {
            Some(pid) => Ok(pid),
            None => {
                let _ = rustix::process::setsid();
                // The handover's reads ran in a reader of fdgrab's; none of
                // its descriptors stays here.
                crate::seccomp::killable_read::drop_thread_reader();
                // fdgrab blocks the signals it forwards; this process must be
                // stoppable by them like any other.
                crate::sys::set_signal_mask(&crate::sys::sigset(&[]));
                // But only by those meant to stop a process: a stray `kill -USR1`
                // (or a timer's ALRM) that ended it would leave the new server's
                // later binds answered ENOSYS, with nobody behind the filter.
                let stopping = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];
                for sig in crate::signalfd::ending_by_default() {
                    if !stopping.contains(&sig) {
                        // SAFETY: SIG_IGN installs no handler code; this process
                        // is single-threaded (checked before the fork).
                        unsafe { libc::signal(sig, libc::SIG_IGN) };
                    }
                }
                for n in 0..3 {
                    let _ = crate::sys::dup_onto(&devnull, n);
                }
                drop(devnull);
                // Until every process under the filter has exited (the listener
                // hangs up) or the loop fails.
                while let Ok(evs) = self.sup.dispatch(Some(Duration::from_secs(1))) {
                    let closed = evs
                        .iter()
                        .any(|e| matches!(e, SupervisorEvent::ListenerClosed(_)));
                    if closed || self.sup.listener_count() == 0 {
                        break;
                    }
                }
                crate::sys::exit_now(0)
            }
        }
    }
}

impl ReadyGate for BindHandover {
    fn fd(&self) -> BorrowedFd<'_> {
        self.sup.as_fd()
    }

    fn service(&mut self) -> Result<()> {
        self.sup.dispatch(Some(Duration::ZERO)).map(drop)
    }

    fn ready(&self) -> bool {
        self.handover.all_listening()
    }

    fn may_count(&self) -> bool {
        !self.bind_only || self.handover.all_bound()
    }

    fn refused(&self) -> bool {
        self.handover.refusal().is_some()
    }
}
