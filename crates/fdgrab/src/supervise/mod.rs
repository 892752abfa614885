//! The supervisor: an event loop over seccomp listeners that answers trapped calls
//! through [`Handler`]s, with [`bind::BindHandler`] performing allowed privileged
//! binds.
//!
//! [`Supervisor`] owns an epoll fd and is itself pollable ([`AsFd`]), so an outer
//! loop (the `run` command, the OCI agent) can wait on it next to its own fds and
//! call [`Supervisor::dispatch`] when it is readable. One request is answered per
//! ready listener per round; nothing in a round waits on a target.

pub mod agent;
pub mod audit;
pub mod bind;
pub mod capabilities;
pub mod command;
pub mod handler;
pub mod handover;
pub mod oci;
pub mod pidfd_cache;
pub mod policy;
pub mod port_threshold;
pub mod tenant;

pub use audit::{AuditLabels, AuditSink, Decision};
pub use bind::BindHandler;
pub use command::{SupervisedCommand, User};
pub use handler::{Answer, Claim, Context, Handler};
pub use policy::{Policy, PolicyError, Proto};

use crate::error::{Error, Result};
use crate::seccomp::{Listener, Notification, Response, SendError};
use port_threshold::UnprivilegedPorts;
use rustix::event::epoll;
use rustix::event::Timespec;
use rustix::io::Errno;
use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAINTENANCE_EVERY: Duration = Duration::from_secs(1);
/// Ready fds taken per `epoll_wait`; more are picked up by the next round.
const EVENTS_PER_ROUND: usize = 64;

/// Names one listener within a [`Supervisor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u64);

/// Something the outer loop may want to know about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// The filter has no users left (`POLLHUP`): every process it covered has
    /// exited. The listener and its handlers were dropped.
    ListenerClosed(ListenerId),
    /// A request was answered (or found gone).
    Handled {
        /// The listener it came through.
        listener: ListenerId,
        /// The calling thread (0: outside our pid namespace).
        tid: i32,
        /// The system call number.
        syscall: i32,
    },
    /// An fd registered with [`Supervisor::watch`] is readable (or hung up).
    Ready(u64),
}

struct Entry {
    listener: Listener,
    labels: AuditLabels,
    handlers: Vec<Box<dyn Handler>>,
}

/// Answers seccomp notifications from any number of listeners.
pub struct Supervisor {
    epoll: OwnedFd,
    entries: HashMap<u64, Entry>,
    /// epoll ids of fds an outer loop asked us to watch, with the caller's token.
    watched: HashMap<u64, u64>,
    next_id: u64,
    audit: AuditSink,
    ports: UnprivilegedPorts,
    last_maintenance: Instant,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("listeners", &self.entries.len())
            .field("audit", &self.audit)
            .finish()
    }
}

/// Adds `fd` to `epoll` under a fresh id from `next_id`, remembered in `watched`
/// with the caller's `token`: an outer loop's own fds in a loop's epoll set.
fn watch_in(
    epoll: &OwnedFd,
    next_id: &mut u64,
    watched: &mut HashMap<u64, u64>,
    fd: BorrowedFd<'_>,
    token: u64,
) -> Result<()> {
    let id = *next_id;
    *next_id += 1;
    epoll::add(
        epoll,
        fd,
        epoll::EventData::new_u64(id),
        epoll::EventFlags::IN,
    )
    .map_err(|e| io_err("epoll_ctl(ADD, watched fd)", e))?;
    watched.insert(id, token);
    Ok(())
}

fn io_err(op: &'static str, e: Errno) -> Error {
    Error::local(op, e)
}

impl Supervisor {
    /// Creates an empty supervisor that writes decisions to `audit`.
    pub fn new(audit: AuditSink) -> Result<Self> {
        let epoll =
            epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| io_err("epoll_create1", e))?;
        Ok(Self {
            epoll,
            entries: HashMap::new(),
            watched: HashMap::new(),
            next_id: 1,
            audit,
            ports: UnprivilegedPorts::new(),
            last_maintenance: Instant::now(),
        })
    }

    /// Supervises a listener with the bind handler and `policy`.
    pub fn add_listener(
        &mut self,
        notify_fd: OwnedFd,
        policy: Arc<Policy>,
        labels: AuditLabels,
    ) -> Result<ListenerId> {
        self.add_listener_with(notify_fd, vec![Box::new(BindHandler::new(policy))], labels)
    }

    /// Supervises a listener with explicit handlers. A trapped call no handler
    /// claims is handed back to the kernel (`CONTINUE`).
    ///
    /// `SYNC_WAKE_UP` is switched on where the kernel has it (6.6).
    pub fn add_listener_with(
        &mut self,
        notify_fd: OwnedFd,
        handlers: Vec<Box<dyn Handler>>,
        labels: AuditLabels,
    ) -> Result<ListenerId> {
        let listener = Listener::from_fd(notify_fd);
        sync_wake_up(&listener);
        let id = self.next_id;
        self.next_id += 1;
        epoll::add(
            &self.epoll,
            &listener,
            epoll::EventData::new_u64(id),
            epoll::EventFlags::IN,
        )
        .map_err(|e| io_err("epoll_ctl(ADD, seccomp listener)", e))?;
        self.entries.insert(
            id,
            Entry {
                listener,
                labels,
                handlers,
            },
        );
        Ok(ListenerId(id))
    }

    /// Stops supervising a listener. Its filter's trapped calls then fail with
    /// `ENOSYS` once no other copy of the listener fd exists.
    pub fn remove_listener(&mut self, id: ListenerId) -> bool {
        match self.entries.remove(&id.0) {
            Some(e) => {
                let _ = epoll::delete(&self.epoll, &e.listener);
                true
            }
            None => false,
        }
    }

    /// Also waits for `fd` in [`Supervisor::dispatch`], which then reports
    /// [`SupervisorEvent::Ready`]`(token)`. Lets a caller with a few fds of its own
    /// (a signalfd, a pidfd) block in one `epoll_wait` instead of polling the
    /// supervisor and then dispatching. The caller keeps `fd` open until
    /// [`Supervisor::unwatch`].
    pub fn watch(&mut self, fd: BorrowedFd<'_>, token: u64) -> Result<()> {
        watch_in(&self.epoll, &mut self.next_id, &mut self.watched, fd, token)
    }

    /// Stops watching `fd` (registered with `token`).
    pub fn unwatch(&mut self, fd: BorrowedFd<'_>, token: u64) {
        self.watched.retain(|_, t| *t != token);
        let _ = epoll::delete(&self.epoll, fd);
    }

    /// How many listeners are supervised.
    pub fn listener_count(&self) -> usize {
        self.entries.len()
    }

    /// Waits up to `timeout` (forever with `None`) for ready listeners and answers
    /// one pending request on each. Returns what happened.
    ///
    /// Handlers cache per-thread state; about once a second `dispatch` lets them
    /// drop what belongs to exited threads, so a caller should pass a timeout of
    /// a second or so rather than `None` if it wants that to happen while idle.
    pub fn dispatch(&mut self, timeout: Option<Duration>) -> Result<Vec<SupervisorEvent>> {
        let ts = timeout.map(|t| Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        });
        let mut events = [MaybeUninit::<epoll::Event>::uninit(); EVENTS_PER_ROUND];
        // The ready events are read straight from the stack buffer: no copy is
        // allocated per round on the per-notification path.
        let ready: &[epoll::Event] = match epoll::wait(&self.epoll, &mut events, ts.as_ref()) {
            Ok((ready, _)) => ready,
            Err(Errno::INTR) => return Ok(Vec::new()),
            Err(e) => return Err(io_err("epoll_wait", e)),
        };
        let mut out = Vec::with_capacity(ready.len());
        for ev in ready {
            let (id, flags) = (ev.data.u64(), ev.flags);
            if let Some(&token) = self.watched.get(&id) {
                out.push(SupervisorEvent::Ready(token));
            } else if flags.contains(epoll::EventFlags::IN) {
                if let Some(ev) = self.serve_one(id) {
                    out.push(ev);
                }
            } else if flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::ERR)
                && self.remove_listener(ListenerId(id))
            {
                tracing::debug!(listener = id, "filter has no users left; listener closed");
                out.push(SupervisorEvent::ListenerClosed(ListenerId(id)));
            }
        }
        if self.last_maintenance.elapsed() >= MAINTENANCE_EVERY {
            self.last_maintenance = Instant::now();
            for entry in self.entries.values_mut() {
                for h in &mut entry.handlers {
                    h.maintain();
                }
            }
        }
        Ok(out)
    }

    fn serve_one(&mut self, id: u64) -> Option<SupervisorEvent> {
        let entry = self.entries.get_mut(&id)?;
        let notif = match entry.listener.recv() {
            Ok(Some(n)) => n,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(listener = id, error = %e, "SECCOMP_IOCTL_NOTIF_RECV failed");
                return None;
            }
        };
        let answer = answer(entry, &self.audit, &self.ports, &notif);
        if let Answer::Respond(resp) = answer {
            match entry.listener.respond(notif.id, resp) {
                Ok(()) | Err(SendError::Gone) => {}
                Err(e) => {
                    tracing::warn!(listener = id, tid = notif.tid, error = %e, "answering a trapped call")
                }
            }
        }
        Some(SupervisorEvent::Handled {
            listener: ListenerId(id),
            tid: notif.tid,
            syscall: notif.data.nr,
        })
    }
}

/// `SYNC_WAKE_UP` where the kernel has it (6.6).
fn sync_wake_up(listener: &Listener) {
    match listener.set_sync_wake_up() {
        Ok(on) => tracing::debug!(sync_wake_up = on, "listener added"),
        Err(e) => {
            tracing::debug!(error = %e, "SET_FLAGS(SYNC_WAKE_UP) failed; continuing without")
        }
    }
}

/// Serves one listener on the calling thread until its filter has no users left:
/// the loop of a supervisor with a single listener and nothing else to wait for.
///
/// It blocks in `SECCOMP_IOCTL_NOTIF_RECV` itself rather than in `epoll_wait`
/// first: one system call fewer per request, and with `SYNC_WAKE_UP` (switched on
/// here where the kernel has it) the trapped thread wakes this one directly. Since
/// 6.6 a blocked `RECV` returns `ENOENT` once the filter has no users; before, it
/// blocks for good, so run this on a thread the caller can leave behind.
pub fn serve_listener(
    notify_fd: OwnedFd,
    handlers: Vec<Box<dyn Handler>>,
    audit: Arc<AuditSink>,
    labels: AuditLabels,
) -> Result<()> {
    let listener = Listener::from_fd(notify_fd);
    sync_wake_up(&listener);
    let ports = UnprivilegedPorts::new();
    let mut entry = Entry {
        listener,
        labels,
        handlers,
    };
    let mut last_maintenance = Instant::now();
    loop {
        match entry.listener.recv() {
            Ok(Some(notif)) => {
                if let Answer::Respond(resp) = answer(&mut entry, &audit, &ports, &notif) {
                    match entry.listener.respond(notif.id, resp) {
                        Ok(()) | Err(SendError::Gone) => {}
                        Err(e) => {
                            tracing::warn!(tid = notif.tid, error = %e, "answering a trapped call")
                        }
                    }
                }
            }
            // A request withdrawn before we read it, a signal, or no users left.
            Ok(None) => {
                if hung_up(&entry.listener) {
                    tracing::debug!("filter has no users left; listener closed");
                    return Ok(());
                }
            }
            Err(source) => {
                return Err(Error::Local {
                    op: "SECCOMP_IOCTL_NOTIF_RECV",
                    source,
                })
            }
        }
        if last_maintenance.elapsed() >= MAINTENANCE_EVERY {
            last_maintenance = Instant::now();
            for h in &mut entry.handlers {
                h.maintain();
            }
        }
    }
}

/// Whether the listener's filter has no users left (`POLLHUP`), without waiting.
fn hung_up(listener: &Listener) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut pfd = [PollFd::new(listener, PollFlags::IN)];
    match poll(&mut pfd, Some(&Timespec::default())) {
        Ok(_) => pfd[0]
            .revents()
            .intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
        Err(_) => false,
    }
}

fn answer(
    entry: &mut Entry,
    audit: &AuditSink,
    ports: &UnprivilegedPorts,
    notif: &Notification,
) -> Answer {
    let nr = libc::c_long::from(notif.data.nr);
    let Some(handler) = entry
        .handlers
        .iter_mut()
        .find(|h| h.syscalls().contains(&nr))
    else {
        tracing::debug!(
            nr,
            tid = notif.tid,
            "no handler for a trapped call; continuing"
        );
        return Answer::Respond(Response::Continue);
    };
    let mut cx = Context {
        listener: &entry.listener,
        audit,
        labels: &entry.labels,
        ports,
        claim: None,
        read_deadline: None,
    };
    handler::handle_guarded(handler.as_mut(), &mut cx, notif)
}

// The OCI agent may move a supervisor into a thread of its own.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Supervisor>();
};

impl AsFd for Supervisor {
    /// The epoll fd: readable when some listener has work (or hung up).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}
