//! The OCI seccomp agent's event loop: one epoll set holding the listening unix
//! socket, every runtime connection still being read, and the [`Supervisor`]'s
//! own fd (which stands for all container listeners).
//!
//! Nothing in a turn blocks on one container: connections are non-blocking and
//! read only as far as they have data, each has a deadline, and the supervisor is
//! dispatched with a zero timeout. When a container's filter loses its last user,
//! the supervisor reports `ListenerClosed` and everything kept for it is dropped.

use crate::supervise::audit::AuditLabels;
use crate::supervise::oci::{
    container_policy, deny_all, ContainerListener, ReadProgress, Rejection, StateReader,
};
use crate::supervise::policy::Policy;
use crate::supervise::{io_err, ListenerId, Supervisor, SupervisorEvent};
use crate::Result;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::SocketFlags;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER_TOKEN: u64 = 0;
const SUPERVISOR_TOKEN: u64 = 1;
const FIRST_CONN_TOKEN: u64 = 2;

/// How long a runtime may take to send its whole document. runc and crun send it
/// in one `sendmsg` right after `connect`, so this only bounds broken clients.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections being read at once; beyond this new ones are closed at once, so a
/// flood of idle connections cannot exhaust the agent's descriptors.
pub const MAX_PENDING_CONNECTIONS: usize = 512;

/// After `EMFILE`/`ENFILE` on accept, the listening socket is left alone this long
/// instead of spinning on a readiness that cannot be served.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Something that happened in one [`Agent::turn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// A container's listener is now supervised.
    ContainerAdded {
        container_id: String,
        listener: ListenerId,
    },
    /// A container's filter has no users left; its listener and policy are gone.
    ContainerReleased {
        container_id: String,
        listener: ListenerId,
    },
    /// A connection was turned away; the reason was logged.
    Rejected { reason: String },
}

struct Connection {
    sock: OwnedFd,
    reader: StateReader,
    deadline: Instant,
}

struct Container {
    id: String,
}

/// The OCI seccomp agent. It is itself pollable ([`AsFd`]): its epoll fd is
/// readable when a turn has work to do.
pub struct Agent {
    epoll: OwnedFd,
    listener: OwnedFd,
    accept_paused_until: Option<Instant>,
    supervisor: Supervisor,
    upper: Arc<Policy>,
    connections: HashMap<u64, Connection>,
    containers: HashMap<ListenerId, Container>,
    next_token: u64,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("connections", &self.connections.len())
            .field("containers", &self.containers.len())
            .finish_non_exhaustive()
    }
}

impl AsFd for Agent {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl Agent {
    /// Takes a listening unix stream socket (it is made non-blocking here), the
    /// agent-wide policy that bounds every container, and the supervisor that will
    /// own the containers' listeners.
    pub fn new(listener: OwnedFd, upper: Policy, supervisor: Supervisor) -> Result<Self> {
        rustix::io::ioctl_fionbio(&listener, true).map_err(|e| io_err("ioctl(FIONBIO)", e))?;
        let epoll =
            epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| io_err("epoll_create1", e))?;
        for (fd, token, what) in [
            (listener.as_fd(), LISTENER_TOKEN, "epoll_ctl(ADD listener)"),
            (
                supervisor.as_fd(),
                SUPERVISOR_TOKEN,
                "epoll_ctl(ADD supervisor)",
            ),
        ] {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(token),
                epoll::EventFlags::IN,
            )
            .map_err(|e| io_err(what, e))?;
        }
        Ok(Agent {
            epoll,
            listener,
            accept_paused_until: None,
            supervisor,
            upper: Arc::new(upper),
            connections: HashMap::new(),
            containers: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
        })
    }

    /// Containers currently supervised.
    pub fn container_count(&self) -> usize {
        self.containers.len()
    }

    /// Waits up to `timeout` (`None`: until something happens) and handles
    /// everything that is ready. Errors are the agent's own (epoll, supervisor);
    /// anything a runtime or container does wrong is logged and handled here.
    pub fn turn(&mut self, timeout: Option<Duration>) -> Result<Vec<AgentEvent>> {
        let mut events = Vec::new();
        let now = Instant::now();
        let wait = self
            .next_deadline()
            .map(|d| d.saturating_duration_since(now));
        let wait = match (timeout, wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ts = wait.map(|d| rustix::event::Timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        let mut ready = Vec::with_capacity(64);
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut ready),
            ts.as_ref(),
        ) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(io_err("epoll_wait", e)),
        }
        for ev in &ready {
            match ev.data.u64() {
                LISTENER_TOKEN => self.accept_all(),
                SUPERVISOR_TOKEN => self.dispatch(&mut events)?,
                token => self.read_connection(token, &mut events),
            }
        }
        self.expire(&mut events);
        Ok(events)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.connections
            .values()
            .map(|c| c.deadline)
            .chain(self.accept_paused_until)
            .min()
    }

    fn accept_all(&mut self) {
        loop {
            match rustix::net::accept_with(
                &self.listener,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            ) {
                Ok(sock) => self.add_connection(sock),
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR | Errno::CONNABORTED) => {}
                Err(e @ (Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)) => {
                    tracing::error!(error = %e, "accept failed; pausing new connections for {ACCEPT_BACKOFF:?}");
                    if let Err(e) = epoll::modify(
                        &self.epoll,
                        &self.listener,
                        epoll::EventData::new_u64(LISTENER_TOKEN),
                        epoll::EventFlags::empty(),
                    ) {
                        tracing::error!(error = %e, "could not pause the listening socket");
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn add_connection(&mut self, sock: OwnedFd) {
        if self.connections.len() >= MAX_PENDING_CONNECTIONS {
            tracing::warn!(
                limit = MAX_PENDING_CONNECTIONS,
                "too many connections being read; closing a new one"
            );
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = epoll::add(
            &self.epoll,
            &sock,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        ) {
            tracing::error!(error = %e, "could not watch a new connection; closing it");
            return;
        }
        tracing::debug!(token, "runtime connected");
        let deadline = Instant::now() + CONNECTION_TIMEOUT;
        self.connections.insert(
            token,
            Connection {
                sock,
                reader: StateReader::new(),
                deadline,
            },
        );
    }

    fn read_connection(&mut self, token: u64, events: &mut Vec<AgentEvent>) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        let outcome = conn.reader.read_from(conn.sock.as_fd());
        if matches!(outcome, Ok(ReadProgress::Pending)) {
            return;
        }
        // Done with this connection either way; closing it also drops it from epoll.
        self.connections.remove(&token);
        match outcome {
            Ok(ReadProgress::Pending) => {}
            Ok(ReadProgress::Complete(listener)) => self.add_container(*listener, events),
            Err(Rejection::Empty) => {
                // A liveness probe (another agent checking the socket) or a runtime
                // that gave up: nothing to report beyond debug.
                tracing::debug!(token, "connection closed without data");
            }
            Err(rejection) => {
                tracing::warn!(token, reason = %rejection, "rejected a seccomp agent connection");
                events.push(AgentEvent::Rejected {
                    reason: rejection.to_string(),
                });
            }
        }
    }

    fn add_container(&mut self, listener: ContainerListener, events: &mut Vec<AgentEvent>) {
        let state = listener.state;
        let container_id = state.state.id.clone();
        let policy = match container_policy(&self.upper, &state) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    container = %container_id,
                    error = %e,
                    "unreadable narrowing request; this container gets no privileged ports"
                );
                deny_all()
            }
        };
        let labels = AuditLabels {
            container_id: Some(container_id.clone()),
            bundle: Some(state.state.bundle.clone()),
        };
        match self
            .supervisor
            .add_listener(listener.notify_fd, policy, labels)
        {
            Ok(id) => {
                tracing::info!(
                    container = %container_id,
                    bundle = %state.state.bundle,
                    pid = state.pid,
                    status = ?state.state.status,
                    oci_version = %state.oci_version,
                    containers = self.containers.len() + 1,
                    "supervising container"
                );
                self.containers.insert(
                    id,
                    Container {
                        id: container_id.clone(),
                    },
                );
                events.push(AgentEvent::ContainerAdded {
                    container_id,
                    listener: id,
                });
            }
            Err(e) => {
                let reason = format!("supervising container {container_id}: {e}");
                tracing::warn!(container = %container_id, error = %e, "could not supervise container");
                events.push(AgentEvent::Rejected { reason });
            }
        }
    }

    fn dispatch(&mut self, events: &mut Vec<AgentEvent>) -> Result<()> {
        let happened = self.supervisor.dispatch(Some(Duration::ZERO))?;
        for ev in happened {
            if let SupervisorEvent::ListenerClosed(id) = ev {
                let container_id = self
                    .containers
                    .remove(&id)
                    .map(|c| c.id)
                    .unwrap_or_default();
                tracing::info!(
                    container = %container_id,
                    containers = self.containers.len(),
                    "container's filter has no users left; released"
                );
                events.push(AgentEvent::ContainerReleased {
                    container_id,
                    listener: id,
                });
            }
        }
        Ok(())
    }

    fn expire(&mut self, events: &mut Vec<AgentEvent>) {
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            if let Err(e) = epoll::modify(
                &self.epoll,
                &self.listener,
                epoll::EventData::new_u64(LISTENER_TOKEN),
                epoll::EventFlags::IN,
            ) {
                tracing::error!(error = %e, "could not resume the listening socket");
            }
        }
        let late: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some(conn) = self.connections.remove(&token) {
                let reason = format!(
                    "no complete document within {:?} ({} bytes received)",
                    CONNECTION_TIMEOUT,
                    conn.reader.len()
                );
                tracing::warn!(token, reason = %reason, "rejected a seccomp agent connection");
                events.push(AgentEvent::Rejected { reason });
            }
        }
    }
}
