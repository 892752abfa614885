//! The OCI seccomp agent's event loop: one epoll set holding the listening unix
//! socket, every runtime connection still being read, and an eventfd through
//! which the containers' workers ([`super::tenant`]) report.
//!
//! Each container's listener is served by a worker thread of its own, so no
//! container's bind waits on another's. This thread accepts and reads runtime
//! connections (non-blocking, each with a deadline, parsed in linear time), runs
//! the workers' watchdog, and drops what was kept for a container once its filter
//! has lost its last user. A document that arrives in pieces is finished by the
//! slow lane, a thread at nice 19, so that a client trickling megabytes costs the
//! workers no CPU.

use crate::supervise::audit::{capped, AuditLabels, AuditSink};
use crate::supervise::oci::{
    container_policy, deny_all, ContainerListener, ContainerProcessState, ReadProgress, Rejection,
    StateReader,
};
use crate::supervise::pidfd_cache::{FdBudget, ThreadPidfds};
use crate::supervise::policy::{Policy, PolicyCell};
use crate::supervise::port_threshold::UnprivilegedPorts;
use crate::supervise::tenant::{LatencyStats, Shared, Tenant, TenantEvent, WATCHDOG_TICK};
use crate::supervise::{io_err, watch_in, ListenerId};
use crate::Result;
use rustix::event::epoll;
use rustix::io::Errno;
use rustix::net::SocketFlags;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Text from a runtime's document (the container id, annotations), as logged: a
/// newline in it must not start a log line of its own.
pub(crate) fn shown(text: &str) -> String {
    crate::inventory::escape(text.as_bytes())
}

const LISTENER_TOKEN: u64 = 0;
const WORKERS_TOKEN: u64 = 1;
const FIRST_CONN_TOKEN: u64 = 2;

/// How long a runtime may take to send its whole document. runc and crun send it
/// in one `sendmsg` right after `connect`, so this only bounds broken clients.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the slow lane reads the connections whose document arrives in
/// pieces.
const TRICKLE_PAUSE: Duration = Duration::from_millis(5);

/// Connections the slow lane reads at once. A newcomer is always taken: to make
/// room, the peer process holding most of the lane loses its oldest connection
/// (see [`make_room`]), so that clients trickling forever cannot lock out a
/// runtime whose document happens to arrive in two reads.
const SLOW_LANE_MAX: usize = 64;

/// Connections handed to the slow lane that it has not yet taken in (it runs at
/// nice 19 and may lag): past this the agent's thread keeps reading newcomers
/// itself, in its own bounded table, which bounds the descriptors a flood can
/// pin without turning a runtime away.
const SLOW_LANE_BACKLOG: usize = 2 * SLOW_LANE_MAX;

/// Bytes the slow lane reads from one connection per round ([`TRICKLE_PAUSE`]):
/// 3.2 MB/s per client, a megabyte in a third of a second, well within
/// [`CONNECTION_TIMEOUT`], and a bounded cost per round however many bytes the
/// clients have queued.
const SLOW_LANE_BUDGET: usize = 16 * 1024;

/// The slow lane's nice value: it runs only when nothing else wants the CPU.
const SLOW_LANE_NICE: i32 = 19;

/// How often queued audit lines are offered again to a sink that did not take
/// them (a FIFO whose reader lags).
const AUDIT_RETRY: Duration = Duration::from_millis(20);

/// How often cached pidfds of exited threads are closed.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// After `EMFILE`/`ENFILE` on accept, the listening socket is left alone this long
/// instead of spinning on a readiness that cannot be served.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Pods a node runs at most unless told ([`Agent::set_max_pods`]): the
/// kubelet's default `maxPods`.
pub const DEFAULT_MAX_PODS: usize = crate::seccomp::killable_read::DEFAULT_MAX_TENANTS;

/// A snapshot of the agent ([`Agent::stats`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct AgentStats {
    /// Containers supervised now.
    pub containers: usize,
    /// Runtime connections whose document has not fully arrived.
    pub connections_pending: usize,
    /// Idle connections closed to make room for new ones.
    pub connections_evicted: u64,
    /// Thread pidfds held for trapped callers, over all containers.
    pub cached_pidfds: usize,
    /// Trapped calls decided (by the bind handler; answered by workers).
    pub decisions: u64,
    /// Decision latency quantiles, as the upper bound of a power-of-two bucket.
    pub latency_p50_us: Option<u64>,
    /// As `latency_p50_us`, the 99th percentile.
    pub latency_p99_us: Option<u64>,
    /// Workers blocked in a read of a container's memory in their own thread
    /// and given up on, over all containers (at most one per container; from
    /// `MAX_GIVEN_UP_IN_THREAD` on, every read runs in a killable reader).
    pub blocked_workers: usize,
    /// Killable readers killed at a deadline that have not died yet (a FUSE
    /// request their daemon took and does not answer), over all containers:
    /// reaped as they die; at most 4 per pod (else container), and in all 4
    /// per pod the node may run plus 1 (see [`Agent::set_max_pods`]).
    pub buried_readers: usize,
    /// Audit lines dropped because the audit sink did not take them (a pipe or
    /// FIFO nobody reads): decisions never wait for it.
    pub audit_lines_dropped: u64,
    /// The same, container by container.
    pub per_container: Vec<ContainerStats>,
}

/// One container in [`AgentStats`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerStats {
    /// The container id.
    pub id: String,
    /// The pod's name, when the runtime's annotations carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's namespace, when the runtime's annotations carry it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Trapped calls decided for it.
    pub decisions: u64,
    /// Requests answered ETIMEDOUT: their read outlived the deadline.
    pub timeouts: u64,
    /// Its workers stuck in a read of its memory right now.
    pub blocked_workers: usize,
    /// Its pod's (else its own) killable readers killed but not dead yet.
    pub buried_readers: usize,
    /// Thread pidfds held for its callers.
    pub cached_pidfds: usize,
}

impl AgentStats {
    /// One line for systemd's `STATUS=`.
    pub fn status_line(&self) -> String {
        let lat = match (self.latency_p50_us, self.latency_p99_us) {
            (Some(a), Some(b)) => format!("; bind latency p50<={a}us p99<={b}us"),
            _ => String::new(),
        };
        let dropped = match self.audit_lines_dropped {
            0 => String::new(),
            n => format!("; {n} audit lines dropped"),
        };
        format!(
            "supervising {} containers; {} decisions; {} pidfds cached; {} connections pending{lat}{dropped}",
            self.containers, self.decisions, self.cached_pidfds, self.connections_pending
        )
    }
}

/// Something that happened in one [`Agent::turn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// A container's listener is now supervised.
    ContainerAdded {
        /// The container id, whole (logs and audit lines cut it to 4 KiB).
        container_id: String,
        /// Its listener in the supervisor.
        listener: ListenerId,
    },
    /// A container's filter has no users left; its listener and policy are gone.
    ContainerReleased {
        /// The container id, whole.
        container_id: String,
        /// The listener it had.
        listener: ListenerId,
    },
    /// A connection was turned away; the reason was logged.
    Rejected {
        /// Why, as logged.
        reason: String,
    },
    /// An fd registered with [`Agent::watch`] is readable.
    Ready(u64),
}

struct Connection {
    sock: OwnedFd,
    reader: StateReader,
    deadline: Instant,
    /// When data last arrived (or the connection was accepted).
    active: Instant,
    accepted: Instant,
    /// The connecting process (`SO_PEERCRED`), when the kernel says.
    peer: Option<i32>,
}

/// A thread at nice 19 that reads the documents that arrive in pieces.
///
/// Runtimes send their whole document in one message, which this agent's
/// thread reads at once. A client that sends it in pieces makes the agent scan
/// and copy a megabyte at a time, for as long as it likes; on the agent's own
/// thread, at normal priority, that CPU was taken from the containers' workers.
/// Handed to this thread, it is spent only when no worker (nor anything else on
/// the node) wants the CPU, and in batches: the thread wakes every
/// [`TRICKLE_PAUSE`] and reads up to [`SLOW_LANE_BUDGET`] from each connection.
struct SlowLane {
    tx: Sender<Connection>,
    pending: Arc<AtomicUsize>,
}

impl SlowLane {
    fn spawn(done: Sender<TenantEvent>, waker: Arc<OwnedFd>) -> std::io::Result<SlowLane> {
        let (tx, rx) = channel::<Connection>();
        let pending = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&pending);
        std::thread::Builder::new()
            .name("fdgrab-slowlane".into())
            .stack_size(256 * 1024)
            .spawn(move || slow_lane(&rx, &done, &waker, &count))?;
        Ok(SlowLane { tx, pending })
    }
}

fn slow_lane(
    rx: &Receiver<Connection>,
    done: &Sender<TenantEvent>,
    waker: &OwnedFd,
    count: &AtomicUsize,
) {
    // Only lowering: no capability needed, and it concerns this thread alone.
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), SLOW_LANE_NICE)
    {
        tracing::warn!(error = %e, "cannot lower the slow lane's priority");
    }
    let mut conns: Vec<Connection> = Vec::new();
    let report = |ev: TenantEvent| {
        if done.send(ev).is_ok() {
            let _ = rustix::io::write(waker, &1u64.to_ne_bytes());
        }
    };
    loop {
        match rx.recv_timeout(TRICKLE_PAUSE) {
            Ok(c) => conns.push(c),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
        conns.extend(rx.try_iter());
        for evicted in make_room(&mut conns, SLOW_LANE_MAX) {
            let reason = format!(
                "more than {SLOW_LANE_MAX} clients are sending their document in pieces; closed the oldest connection of the client holding most ({} bytes received)",
                evicted.reader.len()
            );
            tracing::warn!(peer = ?evicted.peer, reason = %reason, "rejected a seccomp agent connection");
            report(TenantEvent::Rejected(reason));
        }
        let now = Instant::now();
        conns.retain_mut(|c| {
            if c.deadline <= now {
                let reason = format!(
                    "no complete document within {:?} ({} bytes received)",
                    CONNECTION_TIMEOUT,
                    c.reader.len()
                );
                tracing::warn!(reason = %reason, "rejected a seccomp agent connection");
                report(TenantEvent::Rejected(reason));
                return false;
            }
            match c.reader.read_at_most(c.sock.as_fd(), SLOW_LANE_BUDGET) {
                Ok(ReadProgress::Pending) => true,
                Ok(ReadProgress::Complete(listener)) => {
                    report(TenantEvent::Document(listener));
                    false
                }
                Err(Rejection::Empty) => false,
                Err(rejection) => {
                    tracing::warn!(reason = %rejection, "rejected a seccomp agent connection");
                    report(TenantEvent::Rejected(rejection.to_string()));
                    false
                }
            }
        });
        count.store(conns.len(), Ordering::Relaxed);
    }
}

/// Takes connections out of `conns` until at most `max` remain: each time the
/// oldest of those whose peer process holds the most. One process trickling on
/// many connections thus pays first, and among single-connection peers the one
/// trickling longest does; a newcomer (a runtime, whose document completes
/// within milliseconds) is the last to go.
fn make_room(conns: &mut Vec<Connection>, max: usize) -> Vec<Connection> {
    let mut out = Vec::new();
    while conns.len() > max {
        let mut per_peer: HashMap<Option<i32>, usize> = HashMap::new();
        for c in conns.iter() {
            *per_peer.entry(c.peer).or_default() += 1;
        }
        let victim = conns
            .iter()
            .enumerate()
            // Most connections for its peer first, then accepted earliest.
            .max_by_key(|(_, c)| (per_peer[&c.peer], std::cmp::Reverse(c.accepted)))
            .map(|(i, _)| i);
        match victim {
            Some(i) => out.push(conns.swap_remove(i)),
            None => break,
        }
    }
    out
}

/// The connecting process (`SO_PEERCRED`); none for a peer outside our pid
/// namespace, which the kernel reports as pid 0.
fn peer_pid(sock: &OwnedFd) -> Option<i32> {
    crate::sys::peer_cred(sock)
        .ok()
        .and_then(|(pid, _, _)| (pid > 0).then_some(pid))
}

struct Container {
    id: String,
    tenant: Arc<Tenant>,
    /// What the container asked for, kept so that a reload can recompute it.
    state: ContainerProcessState,
}

/// The OCI seccomp agent. It is itself pollable ([`AsFd`]): its epoll fd is
/// readable when a turn has work to do.
pub struct Agent {
    epoll: OwnedFd,
    listener: OwnedFd,
    accept_paused_until: Option<Instant>,
    upper: Arc<Policy>,
    connections: HashMap<u64, Connection>,
    max_connections: usize,
    containers: HashMap<ListenerId, Container>,
    next_token: u64,
    next_listener: u64,
    shared: Arc<Shared>,
    events_tx: Sender<TenantEvent>,
    events_rx: Receiver<TenantEvent>,
    waker: Arc<OwnedFd>,
    slow: SlowLane,
    last_prune: Instant,
    /// Audit lines wait in the queue for the sink: [`Agent::turn`] retries them.
    audit_waiting: bool,
    evicted_connections: u64,
    /// epoll tokens of fds a caller asked us to watch, with the caller's token.
    watched: HashMap<u64, u64>,
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
    /// agent-wide policy that bounds every container, where to audit, and the
    /// descriptor budget (see [`FdBudget::raise_nofile`]).
    pub fn new(
        listener: OwnedFd,
        upper: Policy,
        audit: AuditSink,
        budget: FdBudget,
    ) -> Result<Self> {
        rustix::io::ioctl_fionbio(&listener, true).map_err(|e| io_err("ioctl(FIONBIO)", e))?;
        let epoll =
            epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| io_err("epoll_create1", e))?;
        let waker = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| io_err("eventfd", e))?;
        for (fd, token, what) in [
            (listener.as_fd(), LISTENER_TOKEN, "epoll_ctl(ADD listener)"),
            (waker.as_fd(), WORKERS_TOKEN, "epoll_ctl(ADD eventfd)"),
        ] {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(token),
                epoll::EventFlags::IN,
            )
            .map_err(|e| io_err(what, e))?;
        }
        let (events_tx, events_rx) = channel();
        let waker = Arc::new(waker);
        let slow = SlowLane::spawn(events_tx.clone(), Arc::clone(&waker)).map_err(|e| {
            io_err(
                "starting the slow lane thread",
                Errno::from_io_error(&e).unwrap_or(Errno::AGAIN),
            )
        })?;
        let shared = Arc::new(Shared {
            audit: Arc::new(audit),
            ports: UnprivilegedPorts::new(),
            pidfds: Arc::new(ThreadPidfds::new(budget.pidfd_capacity())),
            latency: LatencyStats::default(),
            blocked: Default::default(),
            paced: true,
        });
        tracing::debug!(
            nofile = budget.limit,
            pidfds = budget.pidfd_capacity(),
            connections = budget.pending_connections(),
            "descriptor budget"
        );
        Ok(Agent {
            epoll,
            listener,
            accept_paused_until: None,
            upper: Arc::new(upper),
            connections: HashMap::new(),
            max_connections: budget.pending_connections(),
            containers: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            next_listener: 1,
            shared,
            events_tx,
            events_rx,
            waker,
            slow,
            last_prune: Instant::now(),
            audit_waiting: false,
            evicted_connections: 0,
            watched: HashMap::new(),
        })
    }

    /// Also waits for `fd` (a signalfd, say) in [`Agent::turn`], which then reports
    /// [`AgentEvent::Ready`]`(token)`. The caller keeps `fd` open.
    pub fn watch(&mut self, fd: BorrowedFd<'_>, token: u64) -> Result<()> {
        watch_in(
            &self.epoll,
            &mut self.next_token,
            &mut self.watched,
            fd,
            token,
        )
    }

    /// Replaces the agent-wide bound (a reload). Every container's policy is
    /// recomputed from it and the container's own request, and takes effect
    /// from its next decision.
    pub fn set_policy(&mut self, upper: Policy) {
        self.upper = Arc::new(upper);
        for c in self.containers.values() {
            let p = self.policy_for(&c.state);
            c.tenant.policy.set(p);
        }
    }

    /// How many pods the node runs at most (the kubelet's `maxPods`; at least
    /// 1), which bounds the killable readers a kill cannot end that the agent
    /// keeps: 4 per pod, plus (once more pods than that hold some: pods gone
    /// whose FUSE daemon lives on) one each for a pod that holds none; at
    /// `5 * max_pods` no reader starts, each pod counted up to its 4 (a
    /// worker's reader already running can still be left stuck: at most one
    /// per container past its pod's share, which spends no other pod's room),
    /// nor at `10 * max_pods` counted in full. Below its share a pod always gets a reader, so
    /// pods at their shares deny none to another. Process-wide: every agent
    /// of the process shares the bound.
    pub fn set_max_pods(&mut self, max_pods: usize) {
        crate::seccomp::killable_read::set_max_tenants(max_pods);
    }

    /// Reopens the audit file at its path (after logrotate moved it away).
    pub fn reopen_audit(&self) -> std::io::Result<()> {
        self.shared.audit.reopen()
    }

    /// What the agent holds and has done, for a status line or a stats dump.
    pub fn stats(&self) -> AgentStats {
        use std::sync::atomic::Ordering::Relaxed;
        let containers: Vec<ContainerStats> = self
            .containers
            .values()
            .map(|c| ContainerStats {
                id: c.id.clone(),
                pod: c.tenant.labels.pod.clone(),
                namespace: c.tenant.labels.namespace.clone(),
                decisions: c.tenant.counters.decisions.load(Relaxed),
                timeouts: c.tenant.counters.timeouts.load(Relaxed),
                blocked_workers: c.tenant.blocked_workers(),
                buried_readers: crate::seccomp::killable_read::buried(c.tenant.share()).0,
                cached_pidfds: self.shared.pidfds.len_of(c.tenant.id),
            })
            .collect();
        AgentStats {
            containers: containers.len(),
            connections_pending: self.connections.len() + self.slow.pending.load(Ordering::Relaxed),
            connections_evicted: self.evicted_connections,
            cached_pidfds: self.shared.pidfds.len(),
            decisions: self.shared.latency.count(),
            latency_p50_us: self.shared.latency.quantile_us(0.5),
            latency_p99_us: self.shared.latency.quantile_us(0.99),
            audit_lines_dropped: self.shared.audit.dropped(),
            blocked_workers: self.shared.blocked.given_up(),
            buried_readers: crate::seccomp::killable_read::buried(u64::MAX).1,
            per_container: containers,
        }
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
                WORKERS_TOKEN => self.drain_worker_events(&mut events),
                token => match self.watched.get(&token) {
                    Some(&t) => events.push(AgentEvent::Ready(t)),
                    None => self.read_connection(token, &mut events),
                },
            }
        }
        self.expire(&mut events);
        let now = Instant::now();
        for c in self.containers.values() {
            c.tenant.expire_overdue(now);
        }
        self.audit_waiting = self.shared.audit.flush();
        if now.duration_since(self.last_prune) >= PRUNE_EVERY {
            self.last_prune = now;
            self.shared.pidfds.prune_exited();
        }
        Ok(events)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let watchdog = (!self.containers.is_empty()).then(|| Instant::now() + WATCHDOG_TICK);
        let audit = self.audit_waiting.then(|| Instant::now() + AUDIT_RETRY);
        self.connections
            .values()
            .map(|c| c.deadline)
            .chain(self.accept_paused_until)
            .chain(watchdog)
            .chain(audit)
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
        if self.connections.len() >= self.max_connections {
            // A runtime sends its document right after connecting, so the
            // connection that has been quiet longest is the least likely to be
            // one; the new one is always read.
            let idlest = self
                .connections
                .iter()
                .min_by_key(|(_, c)| c.active)
                .map(|(t, _)| *t);
            if let Some(conn) = idlest.and_then(|t| self.connections.remove(&t)) {
                self.evicted_connections += 1;
                tracing::warn!(
                    limit = self.max_connections,
                    bytes = conn.reader.len(),
                    idle = ?conn.active.elapsed(),
                    "too many connections being read; closed the one idle longest"
                );
            }
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
        let now = Instant::now();
        let peer = peer_pid(&sock);
        self.connections.insert(
            token,
            Connection {
                sock,
                reader: StateReader::new(),
                deadline: now + CONNECTION_TIMEOUT,
                active: now,
                accepted: now,
                peer,
            },
        );
    }

    fn read_connection(&mut self, token: u64, events: &mut Vec<AgentEvent>) {
        let Some(conn) = self.connections.get_mut(&token) else {
            return;
        };
        let now = Instant::now();
        conn.active = now;
        let outcome = conn.reader.read_from(conn.sock.as_fd());
        if matches!(outcome, Ok(ReadProgress::Pending)) && !conn.reader.is_empty() {
            // Runtimes send the whole document in one message. One that arrives
            // in pieces goes to the slow lane, at the lowest priority, unless a
            // flood keeps the slow lane from taking in what it was handed: then
            // it stays in this thread's table (bounded, idlest closed first) and
            // is read here as its data comes, rather than turned away.
            if self.slow.pending.load(Ordering::Relaxed) >= SLOW_LANE_BACKLOG {
                tracing::debug!(
                    token,
                    "the slow lane lags; this thread reads the document on"
                );
                return;
            }
            let Some(conn) = self.connections.remove(&token) else {
                return;
            };
            let _ = epoll::delete(&self.epoll, &conn.sock);
            tracing::debug!(
                token,
                bytes = conn.reader.len(),
                "document arrives in pieces; the slow lane reads the rest"
            );
            // Counted now, so that a burst of trickling clients meets the limit.
            self.slow.pending.fetch_add(1, Ordering::Relaxed);
            if self.slow.tx.send(conn).is_err() {
                tracing::error!(token, "the slow lane has ended; closing a connection");
            }
            return;
        }
        if matches!(outcome, Ok(ReadProgress::Pending)) {
            return;
        }
        // Done with this connection either way. It is closed (which also drops it
        // from epoll) only after the outcome is logged: a client that waits for
        // the close then finds the reason in the log.
        let closing = self.connections.remove(&token);
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
        drop(closing);
    }

    fn add_container(&mut self, listener: ContainerListener, events: &mut Vec<AgentEvent>) {
        let state = listener.state;
        let policy = self.policy_for(&state);
        let mut labels = AuditLabels::from_state(&state);
        let container_id = labels.container_id.clone().unwrap_or_default();
        let bundle = labels.bundle.clone().unwrap_or_default();
        let id = self.next_listener;
        self.next_listener += 1;
        // Its own share of the audit queue, whatever its id looks like.
        labels.owner = id;
        self.shared.pidfds.add_owner(id);
        let tenant = Tenant::new(
            id,
            listener.notify_fd,
            labels,
            Arc::new(PolicyCell::new(policy)),
            Arc::clone(&self.shared),
            self.events_tx.clone(),
            Arc::clone(&self.waker),
        );
        if let Err(e) = tenant.spawn_worker(0) {
            self.shared.pidfds.remove_owner(id);
            let reason = format!("supervising container {container_id}: starting its worker: {e}");
            tracing::warn!(container = %shown(&container_id), error = %e, "could not supervise container");
            events.push(AgentEvent::Rejected { reason });
            return;
        }
        tracing::info!(
            container = %shown(&container_id),
            bundle = %shown(&bundle),
            pid = state.pid,
            status = ?state.state.status,
            oci_version = %shown(&capped(&state.oci_version)),
            containers = self.containers.len() + 1,
            "supervising container"
        );
        let id = ListenerId(id);
        let whole_id = state.state.id.clone();
        self.containers.insert(
            id,
            Container {
                id: container_id.clone(),
                tenant,
                state,
            },
        );
        events.push(AgentEvent::ContainerAdded {
            container_id: whole_id,
            listener: id,
        });
    }

    /// The agent's bound narrowed by what the container asked for.
    fn policy_for(&self, state: &ContainerProcessState) -> Arc<Policy> {
        match container_policy(&self.upper, state) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    container = %shown(&capped(&state.state.id)),
                    error = %shown(&e.to_string()),
                    "unreadable narrowing request; this container gets no privileged ports"
                );
                deny_all()
            }
        }
    }

    fn drain_worker_events(&mut self, events: &mut Vec<AgentEvent>) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.waker, &mut buf);
        while let Ok(ev) = self.events_rx.try_recv() {
            let raw = match ev {
                TenantEvent::Released(raw) => raw,
                TenantEvent::Document(listener) => {
                    self.add_container(*listener, events);
                    continue;
                }
                TenantEvent::Rejected(reason) => {
                    events.push(AgentEvent::Rejected { reason });
                    continue;
                }
                TenantEvent::Respawn(raw, generation, done) => {
                    let started = self
                        .containers
                        .get(&ListenerId(raw))
                        .is_some_and(|c| match c.tenant.spawn_worker(generation) {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::warn!(container = %shown(&c.id), error = %e,
                                    "cannot start a worker at nice 0; the one at nice 19 serves on");
                                false
                            }
                        });
                    let _ = done.send(started);
                    continue;
                }
            };
            let id = ListenerId(raw);
            self.shared.pidfds.remove_owner(raw);
            let container_id = self
                .containers
                .remove(&id)
                .map(|c| c.state.state.id)
                .unwrap_or_default();
            tracing::info!(
                container = %shown(&container_id),
                containers = self.containers.len(),
                "container's filter has no users left; released"
            );
            events.push(AgentEvent::ContainerReleased {
                container_id,
                listener: id,
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The events name a container by its whole id: logs, audit lines and the
    /// state dump cut it to 4 KiB, but a library user matching events to
    /// containers must not see two ids that agree in their first 4 KiB as one.
    #[test]
    fn container_events_carry_the_whole_id() {
        let dir = std::env::temp_dir().join(format!("fdgrab-agent-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let socket = std::os::unix::net::UnixListener::bind(dir.join("agent.sock")).expect("bind");
        let mut agent = Agent::new(
            OwnedFd::from(socket),
            Policy::default(),
            AuditSink::none(),
            FdBudget::current(),
        )
        .expect("agent");
        let id = format!(
            "{}-the-end",
            "c".repeat(super::super::audit::MAX_LABEL_BYTES + 10)
        );
        let doc = format!(
            r#"{{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":1,"state":{{"ociVersion":"1.0.2","id":"{id}","status":"creating","pid":1,"bundle":"/b"}}}}"#
        );
        let state = super::super::oci::parse_document(doc.as_bytes())
            .expect("parse")
            .expect("complete");
        // Not a listener: its worker finds that out at the first readiness,
        // and releases the container.
        let notify_fd =
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd");
        let wake = rustix::io::dup(&notify_fd).expect("dup");
        let mut events = Vec::new();
        agent.add_container(ContainerListener { state, notify_fd }, &mut events);
        assert_eq!(
            events,
            vec![AgentEvent::ContainerAdded {
                container_id: id.clone(),
                listener: ListenerId(1),
            }]
        );
        rustix::io::write(&wake, &1u64.to_ne_bytes()).expect("wake the worker");
        let until = Instant::now() + Duration::from_secs(20);
        let released = loop {
            let evs = agent.turn(Some(Duration::from_millis(100))).expect("turn");
            if let Some(AgentEvent::ContainerReleased { container_id, .. }) = evs
                .into_iter()
                .find(|e| matches!(e, AgentEvent::ContainerReleased { .. }))
            {
                break container_id;
            }
            assert!(Instant::now() < until, "the container was never released");
        };
        assert_eq!(released, id);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
