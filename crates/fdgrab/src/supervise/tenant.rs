//! One container's share of the agent: its seccomp listener, served by a thread
//! of its own.
//!
//! The only step of a bind decision that can block on the container is reading
//! its memory: `process_vm_readv` on a page that a userfaultfd or FUSE server
//! never fills sleeps killably, that is until a fatal signal, and a fatal signal
//! ends a whole thread group. So each container is served by its own worker
//! thread, which blocks in `poll` on the listener and answers with no hand-off,
//! and nothing one container does can stall another's worker.
//!
//! A read runs in one of two places. Normally in the worker's own thread (about
//! 1 µs); such a read, once stalled, can only be abandoned. Or in a killable
//! reader ([`crate::seccomp::read_validated_within`]: a process of its own
//! sharing our memory, one per worker, handed each read), which is killed at [`READ_DEADLINE`]
//! and always reaped. A container's reads go to killable readers (a) once one
//! of its requests has outlived the deadline (it is *suspect* from then on), and
//! (b) for every container while [`MAX_GIVEN_UP_IN_THREAD`] or more workers are
//! given up on agent-wide.
//!
//! A watchdog on the agent's thread answers a request still in a worker after
//! [`READ_DEADLINE`] with `ETIMEDOUT` (with an audit line) and marks its
//! container suspect; a [`Claim`] decides whether the worker or the watchdog
//! answers, never both. A worker whose read is in a killable reader is left to
//! serve on: its reader dies at the deadline, and whichever of it and the
//! watchdog claims the request first answers it. A worker stalled in its own
//! thread is given up on (it exits when its read returns) and a fresh one
//! started; if that cannot start, the stalled worker is kept and the watchdog
//! retries at every tick; if the container is gone, it is given up on without a
//! successor and the container released.
//!
//! The bound. A thread stalled in its own read ends only when the page is filled
//! or its filler lets go, which a filler outside the container (a userfaultfd
//! passed to a sidecar) may never do, container restarts or not. By (a) a
//! container has at most one such thread in its life ([`MAX_BLOCKED_WORKERS`]);
//! by (b) a read starts in a worker's own thread only while fewer than
//! [`MAX_GIVEN_UP_IN_THREAD`] workers are given up on agent-wide. So the agent
//! never holds more than `MAX_GIVEN_UP_IN_THREAD + R` given-up threads, where
//! `R` is the number of in-thread reads still in flight when the count reached
//! the cap (at most one per other container then being served), however many
//! containers come, stall and go; besides those, one worker per living
//! container, an idle or busy killable reader per worker that read killably, and, for a moment, a
//! lowered worker handing over to its successor (`Pace`).
//!
//! A reader that SIGKILL does not end: a page of a FUSE file the container
//! maps is read by a request that, once its daemon has taken it and never
//! answers, the kernel waits out uninterruptibly. Such a reader is buried
//! (see `seccomp::killable_read`): its worker answers `ETIMEDOUT` and
//! serves on with a fresh reader, and a reaper thread reaps the buried one
//! once the daemon answers or dies. A container (its pod, when named) may leave
//! `MAX_BURIED_PER_TENANT` (4) of them; past that, the container's reads that
//! need a new reader are answered `ETIMEDOUT` at once, without one. The
//! agent-wide bound follows from the pods the node runs
//! ([`super::agent::Agent::set_max_pods`]), so that pods at their shares never
//! deny a reader to a pod below its own (see `seccomp::killable_read`).

use super::audit::{AuditLabels, AuditSink};
use super::bind::{audit_unread, BindHandler};
use super::handler::{handle_guarded, Answer, Claim, Context, Handler};
use super::pidfd_cache::ThreadPidfds;
use super::policy::PolicyCell;
use super::port_threshold::UnprivilegedPorts;
use crate::seccomp::{Listener, Response, SendError};
use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long one request may take before its container gets `ETIMEDOUT`. A read
/// of resident memory takes microseconds; this leaves room for a swapped-out page.
pub const READ_DEADLINE: Duration = Duration::from_millis(500);

/// How often a watchdog (the agent's, `run`'s) looks for a read that outlived
/// [`READ_DEADLINE`]: a fifth of it.
pub(crate) const WATCHDOG_TICK: Duration =
    Duration::from_nanos(READ_DEADLINE.as_nanos() as u64 / 5);

/// Workers of one container that may be given up on at once. Only a read in
/// the worker's own thread can be given up on, and after its first the
/// container reads only in killable readers, so one is all it ever needs; a
/// second is refused (the worker is answered for and kept) as a guard.
pub const MAX_BLOCKED_WORKERS: usize = 1;

/// Given-up workers over all containers from which on every read, of every
/// container, runs in a killable reader: a thread given up on in a read cannot
/// be ended (see the module docs), a reader process can, so the agent's
/// unkillable stuck threads stop growing here, however many containers come and
/// stall.
pub const MAX_GIVEN_UP_IN_THREAD: usize = 16;

/// A container's binds answered `ETIMEDOUT` are warned of at most this often
/// (the first at once, then with the count since): past its share of stuck
/// readers, each of its binds is answered so at once.
const TIMEOUT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Given-up workers over all containers.
#[derive(Debug, Default)]
pub(crate) struct BlockedPool {
    /// Given-up workers still blocked.
    given_up: AtomicUsize,
}

impl BlockedPool {
    /// Given-up workers over all containers.
    pub fn given_up(&self) -> usize {
        self.given_up.load(Ordering::Acquire)
    }
}

/// One container's given-up workers.
///
/// The count changes only under the container's job lock (the caller's guard is
/// the proof), so that a worker returning while the watchdog gives up on
/// another cannot leave the agent-wide count off.
#[derive(Debug, Default)]
pub(crate) struct BlockedPlaces {
    blocked: AtomicUsize,
}

impl BlockedPlaces {
    /// Given-up workers of this container still blocked.
    fn count(&self) -> usize {
        self.blocked.load(Ordering::Acquire)
    }

    /// Counts one more given-up worker; false when it holds
    /// [`MAX_BLOCKED_WORKERS`] already.
    fn take<T>(&self, pool: &BlockedPool, _job: &MutexGuard<'_, T>) -> bool {
        let held = self.count();
        if held >= MAX_BLOCKED_WORKERS {
            return false;
        }
        pool.given_up.fetch_add(1, Ordering::AcqRel);
        self.blocked.store(held + 1, Ordering::Release);
        true
    }

    /// Gives back the place of one given-up worker: its read returned (or the
    /// successor it was given up for could not start).
    fn give_back<T>(&self, pool: &BlockedPool, _job: &MutexGuard<'_, T>) {
        let held = self.count();
        debug_assert!(held > 0, "a place given back that was never taken");
        if held == 0 {
            return;
        }
        pool.given_up.fetch_sub(1, Ordering::AcqRel);
        self.blocked.store(held - 1, Ordering::Release);
    }
}

/// A worker that finds, at least this many times within one [`BUSY_WINDOW`],
/// another call of its container waiting behind the one it took, yields: it
/// runs at [`BUSY_NICE`] until its container stops queueing calls.
const BUSY_QUEUED: u32 = 32;
const BUSY_WINDOW: Duration = Duration::from_millis(20);
const BUSY_NICE: i32 = 19;

/// A worker's priority: lowered while its container keeps many calls queued (a
/// thousand threads binding at once), so that it takes CPU from the other
/// containers' workers only when they do not want it. A container whose calls
/// come one at a time, however fast, keeps nice 0.
///
/// Lowering needs no privilege; coming back would need `CAP_SYS_NICE` (or a
/// raised `RLIMIT_NICE`, whose hard limit only `CAP_SYS_RESOURCE` raises). So a
/// lowered worker that should come back is replaced instead: the agent's thread,
/// at nice 0, starts a successor, which inherits nice 0.
struct Pace {
    since: Instant,
    queued: u32,
    lowered: bool,
}

/// What [`Pace::note`] wants done.
#[derive(Debug, PartialEq, Eq)]
enum PaceChange {
    Keep,
    Lower,
    Restore,
}

impl Pace {
    fn new() -> Self {
        Pace {
            since: Instant::now(),
            queued: 0,
            lowered: false,
        }
    }

    /// Counts one call (`queued`: another was waiting behind it), and once per
    /// window says whether the priority should change.
    fn note(&mut self, queued: bool, now: Instant) -> PaceChange {
        self.queued += u32::from(queued);
        let elapsed = now.duration_since(self.since);
        if elapsed < BUSY_WINDOW {
            return PaceChange::Keep;
        }
        // A long pause is not busy, whatever queued before it.
        let busy = self.queued >= BUSY_QUEUED && elapsed < 2 * BUSY_WINDOW;
        self.since = now;
        self.queued = 0;
        match (busy, self.lowered) {
            (true, false) => PaceChange::Lower,
            (false, true) => PaceChange::Restore,
            _ => PaceChange::Keep,
        }
    }
}

/// Workers do little besides syscalls; the netns reader runs in a thread of its own.
const WORKER_STACK: usize = 256 * 1024;

/// Everything the workers of all containers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub audit: Arc<AuditSink>,
    pub ports: UnprivilegedPorts,
    pub pidfds: Arc<ThreadPidfds>,
    pub latency: LatencyStats,
    /// Workers given up on over all containers.
    pub blocked: BlockedPool,
    /// Whether a busy worker yields ([`Pace`]): CPU between containers. Not
    /// under `run`, which serves one program; its workers then also skip the
    /// look for a queued call that pacing needs, and the `poll` before each
    /// `RECV` (two system calls per call).
    pub paced: bool,
}

/// Decision latencies (RECV to answer), in power-of-two microsecond buckets.
#[derive(Debug, Default)]
pub struct LatencyStats {
    buckets: [AtomicU64; 24],
}

impl LatencyStats {
    /// Counts one decision that took `d`.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().max(1);
        let i = (127 - us.leading_zeros() as usize).min(23);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Total decisions recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Upper bound of the bucket holding quantile `q` (0..=1), in microseconds.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(2u64 << i);
            }
        }
        None
    }
}

/// What a worker tells the agent's thread.
#[derive(Debug)]
pub(crate) enum TenantEvent {
    /// The filter has no users left.
    Released(u64),
    /// A worker at low priority wants a successor at nice 0 (the container is
    /// not busy any more): the agent's thread starts it for `generation` and
    /// says through the sender whether it did.
    Respawn(u64, u64, std::sync::mpsc::SyncSender<bool>),
    /// The slow lane ([`super::agent`]) finished reading a trickled document.
    Document(Box<super::oci::ContainerListener>),
    /// The slow lane turned a connection away; the reason was logged.
    Rejected(String),
}

/// What became of a worker the watchdog would give up on.
#[derive(Debug, PartialEq, Eq)]
enum Replacement {
    /// Given up on; a successor serves the container.
    Started,
    /// Kept: this container has a given-up worker already (not expected: its
    /// reads after the first stall are killable).
    NoPlace,
    /// Kept: its successor could not be started (logged).
    SpawnFailed,
    /// Given up on without a successor: the container is gone (its filter has
    /// no users left), so a successor would serve nobody. The container is
    /// released.
    ContainerGone,
}

/// The request a worker is deciding.
#[derive(Clone, Debug)]
struct Job {
    id: u64,
    tid: i32,
    since: Instant,
    claim: Arc<Claim>,
    /// The read runs in a killable reader, which ends at the deadline: its
    /// worker is never given up on.
    killable: bool,
}

/// Counters shown in the agent's status.
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// Trapped calls decided.
    pub decisions: AtomicU64,
    /// Requests answered `ETIMEDOUT`: their read outlived [`READ_DEADLINE`].
    pub timeouts: AtomicU64,
}

/// One container's listener and its workers' shared state.
#[derive(Debug)]
pub(crate) struct Tenant {
    pub id: u64,
    listener: Listener,
    pub labels: AuditLabels,
    pub policy: Arc<PolicyCell>,
    job: Mutex<Option<Job>>,
    /// Workers given up on that are still inside a read; changed only under
    /// `job`'s lock.
    blocked: BlockedPlaces,
    /// Bumped whenever the current worker is replaced; a worker whose number is
    /// stale exits.
    generation: AtomicU64,
    /// Set once the agent was told the container is gone: whichever of the
    /// watchdog and a worker sees it first tells it, and only that one.
    released: AtomicBool,
    /// The last attempt to start a replacement worker failed (and was logged).
    spawn_failing: AtomicBool,
    /// A request of this container outlived [`READ_DEADLINE`]: from then on its
    /// reads all run in killable readers.
    suspect: AtomicBool,
    /// When its last `ETIMEDOUT` was warned of, and how many were answered
    /// since (see [`TIMEOUT_WARN_EVERY`]).
    timeout_warned: Mutex<(Option<Instant>, u64)>,
    pub counters: TenantCounters,
    shared: Arc<Shared>,
    events: Mutex<Sender<TenantEvent>>,
    waker: Arc<OwnedFd>,
}

impl Tenant {
    pub fn new(
        id: u64,
        notify_fd: OwnedFd,
        labels: AuditLabels,
        policy: Arc<PolicyCell>,
        shared: Arc<Shared>,
        events: Sender<TenantEvent>,
        waker: Arc<OwnedFd>,
    ) -> Arc<Tenant> {
        let listener = Listener::from_fd(notify_fd);
        match listener.set_sync_wake_up() {
            Ok(on) => tracing::debug!(sync_wake_up = on, "container listener added"),
            Err(e) => {
                tracing::debug!(error = %e, "SET_FLAGS(SYNC_WAKE_UP) failed; continuing without")
            }
        }
        Arc::new(Tenant {
            id,
            listener,
            labels,
            policy,
            job: Mutex::new(None),
            blocked: BlockedPlaces::default(),
            generation: AtomicU64::new(0),
            released: AtomicBool::new(false),
            spawn_failing: AtomicBool::new(false),
            suspect: AtomicBool::new(false),
            timeout_warned: Mutex::new((None, 0)),
            counters: TenantCounters::default(),
            shared,
            events: Mutex::new(events),
            waker,
        })
    }

    /// Starts the worker for generation `generation`.
    pub fn spawn_worker(self: &Arc<Self>, generation: u64) -> std::io::Result<()> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("fdgrab-tenant-{}", self.id))
            .stack_size(WORKER_STACK)
            .spawn(move || me.work(generation))
            .map(drop)
    }

    /// Whose places this container's stuck readers and waiting closes take:
    /// its pod's, when the runtime names the pod (a restarted container is a
    /// new container of the same pod; see [`share_of`]), else its own. Never
    /// 0, which is `run`'s and the handover's.
    pub fn share(&self) -> u64 {
        share_of(&self.labels, self.id)
    }

    fn shown_id(&self) -> String {
        crate::inventory::escape(self.labels.container_id.as_deref().unwrap_or("").as_bytes())
    }

    /// Workers blocked in a read that the watchdog gave up on.
    pub fn blocked_workers(&self) -> usize {
        self.blocked.count()
    }

    fn set_job(&self, job: Job) {
        *self.job.lock().unwrap_or_else(|p| p.into_inner()) = Some(job);
    }

    /// The watchdog: answers a request that has outlived [`READ_DEADLINE`] and
    /// marks its container suspect. A worker reading in a killable reader is
    /// left to serve on (its reader dies at the deadline). One reading in its
    /// own thread is given up on and replaced; if its successor cannot start,
    /// it is kept and the replacement retried at every tick, and if the
    /// container is gone it is given up on without a successor and the
    /// container released (its worker is the only one watching its listener).
    /// Returns whether it answered.
    ///
    /// Everything up to the worker's fate is decided under the job lock, which
    /// the worker also holds when it looks at its fate after its read: it never
    /// sees the request expired but its generation not yet moved on, concludes
    /// it was kept, and later exits without giving back its place among the
    /// blocked.
    pub fn expire_overdue(self: &Arc<Self>, now: Instant) -> bool {
        let mut g = self.job.lock().unwrap_or_else(|p| p.into_inner());
        let Some(job) = g.clone() else {
            return false;
        };
        if job.killable {
            // Its reader is killed at the deadline and the worker serves on:
            // answer for it if it has not, never replace it.
            if now.duration_since(job.since) < READ_DEADLINE || !job.claim.expire() {
                return false;
            }
            drop(g);
            self.answer_overdue(job.id, job.tid);
            return true;
        }
        let kept_before = job.claim.expired();
        if !kept_before && (now.duration_since(job.since) < READ_DEADLINE || !job.claim.expire()) {
            return false;
        }
        // Its successor, and every worker after it, reads killably.
        self.suspect.store(true, Ordering::Release);
        let gone = super::hung_up(&self.listener);
        let replacement = self.replace_worker(&g, !gone);
        let replaced = matches!(
            replacement,
            Replacement::Started | Replacement::ContainerGone
        );
        if replaced {
            // A successor (if any) owns the slot; the old worker finds its
            // generation moved on and exits, giving its place back, when its
            // read returns.
            *g = None;
        }
        drop(g);
        if gone {
            // Nobody is left to be served.
            self.release();
        }
        if kept_before {
            if replacement == Replacement::Started {
                tracing::info!(container = %self.shown_id(), "a kept worker is replaced");
            }
            return false;
        }
        self.answer_overdue(job.id, job.tid);
        if replacement == Replacement::NoPlace {
            tracing::warn!(
                container = %self.shown_id(),
                given_up = self.blocked.count(),
                "a second read of this container blocked in its worker's own thread; the worker is kept until its read returns"
            );
        }
        true
    }

    /// Gives up on the current worker ([`BlockedPlaces::take`]) and, with
    /// `successor`, starts one. Called with the job lock held.
    fn replace_worker(
        self: &Arc<Self>,
        job: &MutexGuard<'_, Option<Job>>,
        successor: bool,
    ) -> Replacement {
        if !self.blocked.take(&self.shared.blocked, job) {
            return Replacement::NoPlace;
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        if !successor {
            return Replacement::ContainerGone;
        }
        if let Err(e) = self.spawn_worker(generation) {
            // Keep the blocked worker as this container's: it serves on when its
            // read returns (it looks only under the lock we hold).
            self.generation.store(generation - 1, Ordering::Release);
            self.blocked.give_back(&self.shared.blocked, job);
            // Retried at every tick: an error once per run of failures.
            if self.spawn_failing.swap(true, Ordering::Relaxed) {
                tracing::debug!(error = %e, container = %self.shown_id(),
                    "still cannot start a replacement worker");
            } else {
                tracing::error!(error = %e, container = %self.shown_id(),
                    "cannot start a replacement worker; this container's binds wait until its read returns or one can start");
            }
            return Replacement::SpawnFailed;
        }
        self.spawn_failing.store(false, Ordering::Relaxed);
        Replacement::Started
    }

    /// Answers `ETIMEDOUT` for a request whose read outlived [`READ_DEADLINE`],
    /// by whoever holds its claim, and marks the container suspect.
    fn answer_overdue(&self, id: u64, tid: i32) {
        self.suspect.store(true, Ordering::Release);
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        let reason = "reading the caller's memory outlived the deadline (a page nobody fills?)";
        if let Some(answered) = self.timeout_warning_due(Instant::now()) {
            tracing::warn!(
                container = %self.shown_id(),
                tid,
                deadline = ?READ_DEADLINE,
                answered,
                "bind answered ETIMEDOUT: {reason}"
            );
        }
        self.answer_unread(id, tid, reason);
    }

    /// Counts one more bind answered `ETIMEDOUT`; whether to warn of it, with
    /// how many were answered so since the last warning (this one included).
    /// A container past its share of stuck readers has every bind answered at
    /// once, as fast as it binds: a warning each would flood the log.
    fn timeout_warning_due(&self, now: Instant) -> Option<u64> {
        let mut w = self
            .timeout_warned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        w.1 += 1;
        if w.0
            .is_some_and(|last| now.duration_since(last) < TIMEOUT_WARN_EVERY)
        {
            return None;
        }
        w.0 = Some(now);
        Some(std::mem::take(&mut w.1))
    }

    fn answer_unread(&self, id: u64, tid: i32, reason: &str) {
        audit_unread(
            &self.shared.audit,
            &self.labels,
            tid,
            Errno::TIMEDOUT,
            reason,
        );
        match self.listener.respond(id, Response::Error(Errno::TIMEDOUT)) {
            Ok(()) | Err(SendError::Gone) => {}
            Err(e) => tracing::warn!(tid, error = %e, "answering a timed-out bind"),
        }
    }

    /// Asks the agent's thread for a successor at nice 0, between two calls.
    /// Returns whether this worker must now exit (else it serves on as it is).
    fn respawn(&self, generation: u64) -> bool {
        let next = generation + 1;
        // Only the watchdog bumps the generation otherwise, and only while a job
        // is current; this worker has none.
        if self
            .generation
            .compare_exchange(generation, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return true;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let sent = self
            .events
            .lock()
            .is_ok_and(|ev| ev.send(TenantEvent::Respawn(self.id, next, tx)).is_ok());
        let _ = rustix::io::write(&*self.waker, &1u64.to_ne_bytes());
        if sent && rx.recv().unwrap_or(false) {
            tracing::debug!(container = %self.shown_id(), "container calm again: a worker at nice 0 takes over");
            return true;
        }
        self.generation.store(generation, Ordering::Release);
        false
    }

    /// Tells the agent the container is gone, once.
    fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(tx) = self.events.lock() {
            let _ = tx.send(TenantEvent::Released(self.id));
        }
        let _ = rustix::io::write(&*self.waker, &1u64.to_ne_bytes());
    }

    fn work(self: Arc<Self>, generation: u64) {
        let policy = Arc::clone(&self.policy);
        let mut handler = BindHandler::shared(policy, Arc::clone(&self.shared.pidfds), self.id)
            .share(self.share());
        let bind_nr = handler.syscalls().to_vec();
        let mut pace = Pace::new();
        let mut restore = false;
        let mut claim = Arc::new(Claim::default());
        loop {
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            // Handed over between two calls: a waiting one stays queued in the
            // kernel for the successor.
            if std::mem::take(&mut restore) && self.respawn(generation) {
                return;
            }
            // Unpaced (`run`, one program), the worker blocks in RECV itself:
            // one system call fewer per call. Its process ends with the
            // program, so a RECV that never returns (before Linux 6.6, once
            // the filter has no users) keeps nothing alive.
            if self.shared.paced {
                let mut pfd = [PollFd::new(&self.listener, PollFlags::IN)];
                match rustix::event::poll(&mut pfd, None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "poll on a container listener failed; releasing it");
                        return self.release();
                    }
                }
                let revents = pfd[0].revents();
                if !revents.contains(PollFlags::IN)
                    && revents.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
                {
                    return self.release();
                }
            }
            let notif = match self.listener.recv() {
                Ok(Some(n)) => n,
                // Since 6.6 RECV fails at once when the filter has no users left.
                Ok(None) if !self.shared.paced && super::hung_up(&self.listener) => {
                    return self.release();
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "SECCOMP_IOCTL_NOTIF_RECV failed; releasing the container");
                    return self.release();
                }
            };
            let change = if self.shared.paced {
                // Another call of this container already waiting, with this one
                // taken: two of its threads are in a trapped call at once. A
                // thread calling one at a time, however fast, never shows that.
                let zero = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                let mut more = [PollFd::new(&self.listener, PollFlags::IN)];
                let queued = matches!(rustix::event::poll(&mut more, Some(&zero)), Ok(n) if n > 0)
                    && more[0].revents().contains(PollFlags::IN);
                pace.note(queued, Instant::now())
            } else {
                PaceChange::Keep
            };
            match change {
                PaceChange::Keep => {}
                PaceChange::Lower => {
                    let me = Some(rustix::thread::gettid());
                    match rustix::process::setpriority_process(me, BUSY_NICE) {
                        Ok(()) => {
                            pace.lowered = true;
                            tracing::debug!(container = %self.shown_id(), "busy container: its worker yields (nice {BUSY_NICE})");
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot lower the worker's priority"),
                    }
                }
                PaceChange::Restore => restore = true,
            }
            let started = Instant::now();
            self.counters.decisions.fetch_add(1, Ordering::Relaxed);
            if !bind_nr.contains(&libc::c_long::from(notif.data.nr)) {
                let _ = self.listener.respond(notif.id, Response::Continue);
                continue;
            }
            // A fresh claim per request; the last one is reset in place when
            // nobody else holds it any more (no allocation per bind), else a
            // new one is made.
            match Arc::get_mut(&mut claim) {
                Some(c) => *c = Claim::default(),
                None => claim = Arc::new(Claim::default()),
            }
            // In a killable reader: a container that stalled a read before, and
            // every container once the agent holds its share of threads it can
            // never end. Else in this thread, which costs about 1 µs.
            let killable = self.suspect.load(Ordering::Acquire)
                || self.shared.blocked.given_up() >= MAX_GIVEN_UP_IN_THREAD;
            self.set_job(Job {
                id: notif.id,
                tid: notif.tid,
                since: started,
                claim: Arc::clone(&claim),
                killable,
            });
            let answer = {
                let mut cx = Context {
                    listener: &self.listener,
                    audit: &self.shared.audit,
                    labels: &self.labels,
                    ports: &self.shared.ports,
                    claim: Some(&claim),
                    read_deadline: killable.then(|| started + READ_DEADLINE),
                };
                handle_guarded(&mut handler, &mut cx, &notif)
            };
            // Under the job lock: the watchdog decides this worker's fate under it.
            let (mine, replaced) = {
                let mut g = self.job.lock().unwrap_or_else(|p| p.into_inner());
                if g.as_ref().is_some_and(|j| Arc::ptr_eq(&j.claim, &claim)) {
                    *g = None;
                }
                let mine = claim.take();
                let replaced = !mine && self.generation.load(Ordering::Acquire) != generation;
                if replaced {
                    // Given up on and replaced: our place goes back under the
                    // same lock the watchdog takes places under.
                    self.blocked.give_back(&self.shared.blocked, &g);
                }
                (mine, replaced)
            };
            if replaced {
                // The watchdog answered and started our successor: whatever our
                // answer, serving on would put two workers on one listener.
                tracing::debug!(tid = notif.tid, "a blocked read returned; worker exits");
                return;
            }
            if answer == Answer::Overdue {
                // Its reader was killed at the deadline; the watchdog may have
                // answered already.
                if mine {
                    self.answer_overdue(notif.id, notif.tid);
                }
                continue;
            }
            if !mine {
                // The watchdog answered but kept us: no successor could start, or
                // a second read blocked in this thread.
                tracing::debug!(tid = notif.tid, "a blocked read returned; worker serves on");
                continue;
            }
            if let Answer::Respond(resp) = answer {
                match self.listener.respond(notif.id, resp) {
                    Ok(()) | Err(SendError::Gone) => {}
                    Err(e) => {
                        tracing::warn!(tid = notif.tid, error = %e, "answering a trapped call")
                    }
                }
            }
            self.shared.latency.record(started.elapsed());
        }
    }
}

/// [`Tenant::share`] of the container `id` labelled `labels`: its pod
/// sandbox's when the runtime names it, else its pod's by namespace and name,
/// else its own. The sandbox id first: CRI-O's pod label is the container's
/// own name, restart attempt included (a fresh share per restart), and the
/// name and namespace keys are plain annotations a runtime may pass on from
/// its request; the runtime sets the sandbox id itself and keeps it across
/// restarts.
fn share_of(labels: &AuditLabels, id: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match (&labels.sandbox, &labels.pod) {
        (Some(sandbox), _) => (0u8, sandbox).hash(&mut h),
        (None, Some(pod)) => (1u8, &labels.namespace, pod).hash(&mut h),
        (None, None) => return id,
    }
    h.finish() | 1 << 63
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels of a container whose runtime passed these annotations.
    fn labelled(annotations: &[(&str, &str)]) -> AuditLabels {
        let annotations: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect();
        let doc = serde_json::json!({
            "ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": 1,
            "state": {"ociVersion": "1.0.2", "id": "c", "status": "creating",
                      "pid": 1, "bundle": "/b", "annotations": annotations},
        });
        let state = super::super::oci::parse_document(doc.to_string().as_bytes())
            .expect("parse")
            .expect("complete");
        AuditLabels::from_state(&state)
    }

    /// Places go with the pod sandbox the runtime names. CRI-O labels each
    /// container by its own name, restart attempt included
    /// (`io.kubernetes.cri-o.Name`), but keeps its sandbox id: a restarted
    /// container is of the same sandbox and gets no fresh places. Two
    /// sandboxes never share places, whatever pod name and namespace their
    /// annotations claim (plain annotations, which a runtime may pass on).
    #[test]
    fn places_go_with_the_pod_sandbox() {
        let crio = |name: &str, sandbox: &str| {
            labelled(&[
                ("io.kubernetes.cri-o.Name", name),
                ("io.kubernetes.cri-o.SandboxID", sandbox),
            ])
        };
        let (first, restarted) = (
            crio("k8s_app_web-0_shop_6f1c_0", "5b2e"),
            crio("k8s_app_web-0_shop_6f1c_1", "5b2e"),
        );
        assert_eq!(share_of(&first, 1), share_of(&restarted, 2), "a restart");
        assert_ne!(
            share_of(&first, 1),
            share_of(&crio("k8s_app_web-0_shop_6f1c_0", "9d40"), 3),
            "another sandbox"
        );
        let claiming = |sandbox: &str| {
            labelled(&[
                ("io.kubernetes.pod.name", "web-0"),
                ("io.kubernetes.pod.namespace", "shop"),
                ("io.kubernetes.cri.sandbox-id", sandbox),
            ])
        };
        assert_ne!(
            share_of(&claiming("a1"), 1),
            share_of(&claiming("b2"), 2),
            "two sandboxes claiming one pod"
        );
        // Each runtime sets its own key after what it passes on, never the
        // other's: a pod that passes the other runtime's key on, naming
        // another sandbox, does not take that sandbox's places.
        let (victim_containerd, victim_crio) = (
            labelled(&[("io.kubernetes.cri.sandbox-id", "a1")]),
            labelled(&[("io.kubernetes.cri-o.SandboxID", "a1")]),
        );
        let forged =
            |own_key: &str, other_key: &str| labelled(&[(own_key, "c3"), (other_key, "a1")]);
        for forger in [
            forged(
                "io.kubernetes.cri-o.SandboxID",
                "io.kubernetes.cri.sandbox-id",
            ),
            forged(
                "io.kubernetes.cri.sandbox-id",
                "io.kubernetes.cri-o.SandboxID",
            ),
        ] {
            for victim in [&victim_containerd, &victim_crio] {
                assert_ne!(share_of(&forger, 4), share_of(victim, 5), "a forged key");
            }
        }
        // Without a sandbox id: the pod, by namespace and name.
        let pod = |ns: &str| {
            labelled(&[
                ("io.kubernetes.pod.name", "web-0"),
                ("io.kubernetes.pod.namespace", ns),
            ])
        };
        assert_eq!(share_of(&pod("shop"), 1), share_of(&pod("shop"), 2));
        assert_ne!(share_of(&pod("shop"), 1), share_of(&pod("blog"), 2));
        // Without either: the container's own.
        assert_eq!(share_of(&labelled(&[]), 7), 7);
    }

    /// A container's places and the lock its count changes under.
    struct Container {
        places: BlockedPlaces,
        job: Mutex<()>,
    }

    impl Container {
        fn new() -> Self {
            Container {
                places: BlockedPlaces::default(),
                job: Mutex::new(()),
            }
        }

        fn give_up(&self, pool: &BlockedPool) -> bool {
            self.places.take(pool, &self.job.lock().expect("lock"))
        }

        fn returns(&self, pool: &BlockedPool) {
            self.places.give_back(pool, &self.job.lock().expect("lock"))
        }
    }

    fn containers(n: usize) -> Vec<Container> {
        (0..n).map(|_| Container::new()).collect()
    }

    #[test]
    fn no_container_holds_more_than_its_limit() {
        let pool = BlockedPool::default();
        let c = Container::new();
        for _ in 0..MAX_BLOCKED_WORKERS {
            assert!(c.give_up(&pool));
        }
        assert!(!c.give_up(&pool));
        assert_eq!(c.places.count(), MAX_BLOCKED_WORKERS);
        assert_eq!(pool.given_up(), MAX_BLOCKED_WORKERS);
    }

    /// Containers that exit while holding places: each blocked read returns,
    /// and the agent-wide count is as if they had never stalled.
    #[test]
    fn exiting_containers_give_every_place_back() {
        let pool = BlockedPool::default();
        let cs = containers(MAX_GIVEN_UP_IN_THREAD + 4);
        for c in &cs {
            assert!(c.give_up(&pool), "every container has its place");
        }
        assert_eq!(pool.given_up(), cs.len());
        for c in &cs {
            c.returns(&pool);
            assert_eq!(c.places.count(), 0);
        }
        assert_eq!(pool.given_up(), 0);
    }

    /// The successor a place was taken for could not start: the place is
    /// given back at once and the counts are where they were.
    #[test]
    fn a_failed_spawn_leaves_the_counts_as_they_were() {
        let pool = BlockedPool::default();
        let c = Container::new();
        let before = (pool.given_up(), c.places.count());
        assert!(c.give_up(&pool));
        c.returns(&pool);
        assert_eq!((pool.given_up(), c.places.count()), before);
        assert!(c.give_up(&pool), "the place is there for the next try");
    }

    /// Many threads give up and return at once, as watchdog and workers do:
    /// the count never exceeds one per container and ends at zero.
    #[test]
    fn concurrent_give_ups_and_returns_keep_the_count_exact() {
        let pool = Arc::new(BlockedPool::default());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let cs = containers(4);
                    for _ in 0..2_000 {
                        for c in &cs {
                            let _ = c.give_up(&pool);
                            assert!(pool.given_up() <= 8 * 4 * MAX_BLOCKED_WORKERS);
                        }
                        for c in &cs {
                            if c.places.count() > 0 {
                                c.returns(&pool);
                            }
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert_eq!(pool.given_up(), 0);
    }
}
