//! Starting a program under a seccomp notify filter and supervising it: the
//! launcher behind `fdgrab run`.
//!
//! The program is started on the crate's one spawner ([`crate::spawn`]). Between
//! clone and exec the child, in this order: drops to the user (`setgroups`,
//! `setgid`, `setuid`), arms `PR_SET_PDEATHSIG` (after `setuid`, which clears it),
//! sets `no_new_privs`, installs the filter with `NEW_LISTENER` (so the filter is
//! installed by the unprivileged program itself), and hands the listener back over a
//! socketpair. Each step that fails is reported as a [`SpawnError`] naming it.
//!
//! The filter is pluggable: [`SupervisedCommand::filter`] takes any program that
//! notifies; the default traps `bind` ([`seccomp::bind_supervisor_filter`]).
//!
//! [`SpawnError`]: crate::spawn::SpawnError

use super::{AuditLabels, AuditSink, Policy};
use crate::error::{Error, Result};
pub use crate::passwd::User;
use crate::seccomp::{self, InstallFlags, Listener, Program};
use crate::signalfd::SignalFd;
use crate::spawn::{Child, Credentials, SeccompHandBack, Spawn};
use rustix::event::{PollFd, PollFlags};
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::sync::Arc;

/// How often `run`'s watchdog looks for a read of the program's memory that
/// outlived its deadline (as the agent's: a fifth of the deadline).
const WATCHDOG_EVERY: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: super::tenant::WATCHDOG_TICK.as_secs() as i64,
    tv_nsec: super::tenant::WATCHDOG_TICK.subsec_nanos() as i64,
};

/// How often `run` retries audit lines the sink could not take yet (as the
/// agent does).
const AUDIT_RETRY_EVERY: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: 0,
    tv_nsec: 20_000_000,
};

/// How often `run` closes the cached pidfds of threads that have exited.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A program to run under a seccomp notify supervisor.
#[derive(Debug)]
pub struct SupervisedCommand {
    argv: Vec<OsString>,
    user: Option<User>,
    policy: Policy,
    audit: AuditSink,
    filter: Option<Vec<libc::sock_filter>>,
    death_signal: bool,
    setup: Option<SpawnSetup>,
}

/// A caller's additions to the [`Spawn`] (environment, fd plan, session).
pub struct SpawnSetup(Box<dyn FnOnce(Spawn) -> Result<Spawn> + Send>);

impl std::fmt::Debug for SpawnSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpawnSetup")
    }
}

/// A supervised program that has exec'd, with the listener of its filter.
#[derive(Debug)]
pub struct Started {
    /// The program.
    pub child: Child,
    /// The user-notification listener of the filter it runs under.
    pub listener: Listener,
}

impl SupervisedCommand {
    /// `argv[0]` is looked up as `execvp` would.
    pub fn new(argv: &[OsString]) -> Self {
        Self {
            argv: argv.to_vec(),
            user: None,
            policy: Policy::default(),
            audit: AuditSink::none(),
            filter: None,
            death_signal: true,
            setup: None,
        }
    }

    /// Runs the program as `user` (see [`User::lookup`]), and sets `USER`,
    /// `LOGNAME` and `HOME` for it.
    pub fn user(mut self, user: User) -> Self {
        self.user = Some(user);
        self
    }

    /// What the bind handler allows.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Where decisions are logged.
    pub fn audit(mut self, audit: AuditSink) -> Self {
        self.audit = audit;
        self
    }

    /// The filter the program installs; it must return `SECCOMP_RET_USER_NOTIF`
    /// for what the supervisor is to answer. Default: trap `bind`.
    pub fn filter(mut self, prog: &Program) -> Self {
        self.filter = Some(prog.raw());
        self
    }

    /// Lets the caller shape the launch (environment, fds to install, session,
    /// signal dispositions) on the spawner before the user, death signal and filter
    /// are added; `argv` may be resolved there too ([`Spawn::program`]).
    pub fn spawn_setup(mut self, f: impl FnOnce(Spawn) -> Result<Spawn> + Send + 'static) -> Self {
        self.setup = Some(SpawnSetup(Box::new(f)));
        self
    }

    /// Whether the program gets `SIGKILL` when the supervisor exits (default). If
    /// not, it runs on and its trapped calls fail with `ENOSYS`.
    pub fn kill_on_supervisor_exit(mut self, yes: bool) -> Self {
        self.death_signal = yes;
        self
    }

    /// Starts the program and receives its listener; the caller supervises.
    ///
    /// Signals the caller blocked (e.g. in a [`SignalFd`]) are unblocked in the
    /// program.
    pub fn start(&mut self) -> Result<Started> {
        let filter = match self.filter.take() {
            Some(f) => f,
            None => seccomp::bind_supervisor_filter()
                .map_err(|e| Error::InvalidArgument(format!("building the seccomp filter: {e}")))?
                .raw(),
        };
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::local("socketpair (listener hand-back)", e))?;
        let mut spawn = Spawn::new(&self.argv)?;
        if let Some(SpawnSetup(f)) = self.setup.take() {
            spawn = f(spawn)?;
        }
        if let Some(u) = &self.user {
            // Programs look at these to find their home and name.
            spawn = spawn
                .env("USER", &u.name)
                .env("LOGNAME", &u.name)
                .env("HOME", &u.home)
                .credentials(Credentials {
                    uid: u.uid,
                    gid: u.gid,
                    groups: u.groups.clone(),
                });
        }
        if self.death_signal {
            spawn = spawn.death_signal(libc::SIGKILL);
        }
        let child = spawn
            .no_new_privs()
            .seccomp(SeccompHandBack {
                filter,
                flags: InstallFlags::supervised(),
                sock: theirs,
            })
            .spawn()?;
        // The child's end closed with the spawner, so a missing message is EOF, not
        // a hang.
        let listener = receive_listener(&ours, child.pid())?;
        Ok(Started { child, listener })
    }

    /// Starts the program and supervises it until it exits, forwarding every
    /// signal read from `signals` to it; returns its exit status. Once the listener
    /// is ours, the process keeps only the capabilities the supervisor uses.
    ///
    /// The listener is served as the agent serves a container's
    /// ([`super::tenant`]): by a worker thread of its own, whose read of the
    /// program's memory, should it outlive [`super::tenant::READ_DEADLINE`],
    /// is answered `ETIMEDOUT` by this thread's watchdog (the worker is then
    /// replaced, and from then on every read runs in a reader that can be
    /// killed). This thread also waits for signals and the exit.
    pub fn run(mut self, signals: &SignalFd) -> Result<ExitStatus> {
        let Started {
            mut child,
            listener,
        } = self.start()?;
        // After the spawn, so that the program keeps the limit it was given.
        let budget = super::pidfd_cache::FdBudget::raise_nofile();
        let audit = Arc::new(std::mem::replace(&mut self.audit, AuditSink::none()));
        // The supervisor's set, plus CAP_KILL to forward signals to another user.
        // Capabilities are per thread: dropped before the serving thread starts,
        // which inherits the reduced sets.
        if let Err(e) = super::capabilities::restrict(rustix::thread::CapabilitySet::KILL) {
            tracing::debug!(error = %e, "capset failed; keeping capabilities");
        }
        // The serving thread sleeps while idle, so this thread closes the
        // cached pidfds and netns links of exited threads, once a second.
        let pidfds = Arc::new(super::pidfd_cache::ThreadPidfds::new(
            budget.pidfd_capacity(),
        ));
        let policy = Arc::new(super::policy::PolicyCell::new(Arc::new(self.policy)));
        let shared = Arc::new(super::tenant::Shared {
            audit: Arc::clone(&audit),
            ports: super::port_threshold::UnprivilegedPorts::new(),
            pidfds: Arc::clone(&pidfds),
            latency: Default::default(),
            blocked: Default::default(),
            // One program: no other container to yield CPU to.
            paced: false,
        });
        let waker = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| Error::local("eventfd", e))?;
        let waker = Arc::new(waker);
        let (events_tx, events) = std::sync::mpsc::channel();
        let tenant = super::tenant::Tenant::new(
            0,
            listener.into_fd(),
            AuditLabels::default(),
            policy,
            shared,
            events_tx,
            Arc::clone(&waker),
        );
        tenant.spawn_worker(0).map_err(|e| Error::Local {
            op: "starting the supervisor thread",
            source: e,
        })?;

        let exited = child.pidfd().exit_fd()?;
        // Lines the audit sink could not take at once (a FIFO whose reader lags)
        // wait in its queue; the serving thread does not write them out, so
        // this thread does, often while some wait and once a second otherwise.
        let mut audit_pending = false;
        let mut last_prune = std::time::Instant::now();
        loop {
            let mut pfds = [
                PollFd::new(signals, PollFlags::IN),
                PollFd::new(&exited, PollFlags::IN),
                PollFd::new(&*waker, PollFlags::IN),
            ];
            // The watchdog's tick, as the agent's.
            let tick = if audit_pending {
                AUDIT_RETRY_EVERY
            } else {
                WATCHDOG_EVERY
            };
            match rustix::event::poll(&mut pfds, Some(&tick)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::local("poll (signals, program exit)", e)),
            }
            tenant.expire_overdue(std::time::Instant::now());
            if !pfds[2].revents().is_empty() {
                let _ = rustix::io::read(&*waker, &mut [0u8; 8]);
                for ev in events.try_iter() {
                    // A worker lowered while the program bound from many
                    // threads at once asks for a successor at nice 0.
                    if let super::tenant::TenantEvent::Respawn(_, generation, done) = ev {
                        let _ = done.send(tenant.spawn_worker(generation).is_ok());
                    }
                }
            }
            audit_pending = audit.flush();
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = std::time::Instant::now();
                pidfds.prune_exited();
            }
            if !pfds[0].revents().is_empty() {
                child.forward(signals)?;
            }
            if !pfds[1].revents().is_empty() {
                let status = child.wait()?;
                tracing::info!(?status, "program exited");
                audit.flush();
                return Ok(status);
            }
        }
    }
}

fn receive_listener(ours: &OwnedFd, pid: crate::Pid) -> Result<Listener> {
    let mut buf = [0u8; 8];
    let got = crate::passfd::recv_fds(ours, &mut buf, 1).map_err(|e| Error::Io {
        op: "receiving the seccomp listener",
        pid,
        fd: None,
        source: e,
    })?;
    match (got.len, buf[0], got.fds.into_iter().next()) {
        (1, b'L', Some(fd)) => Ok(Listener::from_fd(fd)),
        _ => Err(Error::Io {
            op: "receiving the seccomp listener",
            pid,
            fd: None,
            source: std::io::Error::other("the program did not pass its listener fd"),
        }),
    }
}
