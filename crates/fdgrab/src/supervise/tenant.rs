//! One container's share of the agent: its seccomp listener, served by a thread
//! of its own.
//!
//! The only step of a bind decision that can block on the container is reading
//! its memory (`process_vm_readv` waits, uninterruptibly, on a page that a
//! userfaultfd or FUSE server never fills). So each container is served by its
//! own worker thread, which blocks in `poll` on the listener and answers with no
//! hand-off, and nothing one container does can stall another's worker.
//!
//! A watchdog on the agent's thread bounds the stall for the container itself:
//! once a request has been in a worker for [`READ_DEADLINE`], the watchdog
//! answers it `ETIMEDOUT` (with an audit line), gives up on that worker (it exits
//! when its read returns, normally at the latest when the container dies; see
//! below) and starts a fresh one. A container with [`MAX_BLOCKED_WORKERS`] workers still blocked gets
//! `ETIMEDOUT` at once for every bind, without a read, until one returns. A
//! [`Claim`] decides whether the worker or the watchdog answers, never both.
//!
//! Places for given-up workers (`BlockedPlaces`): a container's first
//! ([`OWN_BLOCKED_WORKERS`]) is its own and is always there, so its worker is
//! replaced whatever other containers hold; only further ones take a place of
//! the agent-wide pool of [`MAX_BLOCKED_TOTAL`]. With the pool full, a stalled
//! worker that would need a pool place is answered for but kept, and replaced
//! once there is room. So no set of containers can take the place another
//! container needs to get past its first stalled read, and the agent holds at
//! most `(1 + OWN_BLOCKED_WORKERS) × containers + MAX_BLOCKED_TOTAL` workers
//! (two per container plus 16), and at most `1 + MAX_BLOCKED_WORKERS` (three)
//! for any one container; besides those, for a moment, a lowered worker
//! handing over to its successor (`Pace`).
//!
//! That bound counts supervised containers. A blocked read ends when the page
//! is filled or its filler lets go; a filler outside the container (a
//! userfaultfd passed to another container) keeps the read, and the places of
//! the dead container's given-up workers, past the container's end, and
//! nothing here can end it. The watchdog releases a container that is gone
//! instead of replacing its kept worker, so at least no place is spent on a
//! successor that would serve nobody.

use super::audit::{AuditLabels, AuditSink};
use super::bind::{audit_unread, BindHandler};
use super::handler::{Answer, Claim, Context, Handler};
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

/// Workers of one container that may be given up on (blocked in a read) at
/// once; beyond, its binds get `ETIMEDOUT` without a read.
pub const MAX_BLOCKED_WORKERS: usize = 2;

/// Given-up workers a container holds without drawing from the agent-wide pool:
/// its first stalled read is always answered and its worker always replaced,
/// whatever the other containers hold. It costs at most one more thread per
/// container, next to the worker the agent pays for each anyway.
pub const OWN_BLOCKED_WORKERS: usize = 1;

/// Places for given-up workers beyond each container's own
/// ([`OWN_BLOCKED_WORKERS`]), shared by all containers, first come first
/// served. With every place taken, a worker that outlives its deadline and
/// would need one is not replaced at once: its request is still answered
/// `ETIMEDOUT`, but that container's next binds wait for its own read to
/// return, or for a place to free (then the watchdog replaces the kept worker
/// at its next tick). Only a container with a given-up worker already can be
/// kept so. The agent thus never holds more than two workers per container plus
/// this many, however many containers stall.
pub const MAX_BLOCKED_TOTAL: usize = 16;

/// Counts of given-up workers over all containers.
#[derive(Debug, Default)]
pub(crate) struct BlockedPool {
    /// Given-up workers still blocked, own places and pool places alike.
    given_up: AtomicUsize,
    /// Of those, the ones holding a pool place (at most [`MAX_BLOCKED_TOTAL`]).
    pooled: AtomicUsize,
}

impl BlockedPool {
    /// Given-up workers over all containers.
    pub fn given_up(&self) -> usize {
        self.given_up.load(Ordering::Acquire)
    }

    /// Pool places taken.
    pub fn pooled(&self) -> usize {
        self.pooled.load(Ordering::Acquire)
    }
}

/// One container's given-up workers, and the places they hold.
///
/// Which places a container holds follows from how many workers it has given
/// up on (the first [`OWN_BLOCKED_WORKERS`] are its own, the rest pool
/// places), not from which worker took which: any of them returning gives back
/// a pool place while the container holds one. Its count therefore changes
/// only under its job lock (the caller's guard is the proof), so that a worker
/// returning while the watchdog gives up on another cannot leave the pool
/// counting a place nobody holds.
#[derive(Debug, Default)]
pub(crate) struct BlockedPlaces {
    blocked: AtomicUsize,
}

impl BlockedPlaces {
    /// Given-up workers of this container still blocked.
    fn count(&self) -> usize {
        self.blocked.load(Ordering::Acquire)
    }

    /// Takes a place for one more given-up worker: its own while it has one
    /// left, else one of `pool`'s. False when it needs a pool place and none is
    /// free, or it holds [`MAX_BLOCKED_WORKERS`] already.
    fn take<T>(&self, pool: &BlockedPool, _job: &MutexGuard<'_, T>) -> bool {
        let held = self.count();
        if held >= MAX_BLOCKED_WORKERS {
            return false;
        }
        if held >= OWN_BLOCKED_WORKERS
            && pool
                .pooled
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < MAX_BLOCKED_TOTAL).then_some(n + 1)
                })
                .is_err()
        {
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
        if held > OWN_BLOCKED_WORKERS {
            pool.pooled.fetch_sub(1, Ordering::AcqRel);
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
    /// Workers given up on over all containers, and the pool places they hold.
    pub blocked: BlockedPool,
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
    /// Kept: no place for one more given-up worker of this container.
    NoPlace,
    /// Kept: its successor could not be started (logged).
    SpawnFailed,
    /// Not replaced: the container is gone (its filter has no users left), so
    /// a successor would serve nobody and hold a place for as long as the
    /// blocked read lasts, which a page filled from outside the container can
    /// make forever. The container is released instead.
    ContainerGone,
}

/// The request a worker is deciding.
#[derive(Clone, Debug)]
struct Job {
    id: u64,
    tid: i32,
    since: Instant,
    claim: Arc<Claim>,
}

/// Counters shown in the agent's status.
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// Trapped calls decided.
    pub decisions: AtomicU64,
    /// Requests answered `ETIMEDOUT` by the watchdog.
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
    /// replaces its worker, unless that needs a pool place and every one of the
    /// [`MAX_BLOCKED_TOTAL`] is taken; a worker kept for that reason is replaced
    /// at a later tick, once there is room, or the container is released if it
    /// is gone by then (its kept worker is the only one watching its listener).
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
        let kept_before = job.claim.expired();
        if !kept_before && (now.duration_since(job.since) < READ_DEADLINE || !job.claim.expire()) {
            return false;
        }
        let replacement = if self.gone() {
            Replacement::ContainerGone
        } else {
            self.replace_worker(&g)
        };
        let replaced = replacement == Replacement::Started;
        if replaced {
            // The successor owns the slot; the old worker finds its generation
            // moved on and exits when its read returns.
            *g = None;
        }
        drop(g);
        if replacement == Replacement::ContainerGone {
            // Its worker is kept (it exits once its read returns, if ever) and
            // holds no place; nobody is left to be served.
            self.release();
        }
        if kept_before {
            if replaced {
                tracing::info!(container = %self.shown_id(), "room among blocked workers again: a kept worker is replaced");
            }
            return false;
        }
        self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
        let reason = "reading the caller's memory outlived the deadline (a page nobody fills?)";
        tracing::warn!(
            container = %self.shown_id(),
            tid = job.tid,
            deadline = ?READ_DEADLINE,
            "bind answered ETIMEDOUT: {reason}"
        );
        self.answer_unread(job.id, job.tid, reason);
        if replacement == Replacement::NoPlace {
            tracing::warn!(
                container = %self.shown_id(),
                limit = MAX_BLOCKED_TOTAL,
                given_up = self.blocked.count(),
                "agent-wide limit of blocked workers reached; this container, which has a blocked worker already, keeps its worker until its read returns or a pool place frees"
            );
        }
        true
    }

    /// Gives up on the current worker and starts a successor, if there is a
    /// place for it ([`BlockedPlaces::take`]). Called with the job lock held.
    fn replace_worker(self: &Arc<Self>, job: &MutexGuard<'_, Option<Job>>) -> Replacement {
        if !self.blocked.take(&self.shared.blocked, job) {
            return Replacement::NoPlace;
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
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

    /// Whether the container's filter has no users left (`POLLHUP` on the
    /// listener): nothing of it can make a trapped call any more.
    fn gone(&self) -> bool {
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut pfd = [PollFd::new(&self.listener, PollFlags::empty())];
        matches!(rustix::event::poll(&mut pfd, Some(&zero)), Ok(n) if n > 0)
            && pfd[0].revents().contains(PollFlags::HUP)
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
        let mut handler = BindHandler::shared(policy, Arc::clone(&self.shared.pidfds), self.id);
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
            let notif = match self.listener.recv() {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "SECCOMP_IOCTL_NOTIF_RECV failed; releasing the container");
                    return self.release();
                }
            };
            // Another call of this container already waiting, with this one
            // taken: two of its threads are in a trapped call at once. A thread
            // calling one at a time, however fast, never shows that.
            let zero = rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let mut more = [PollFd::new(&self.listener, PollFlags::IN)];
            let queued = matches!(rustix::event::poll(&mut more, Some(&zero)), Ok(n) if n > 0)
                && more[0].revents().contains(PollFlags::IN);
            match pace.note(queued, Instant::now()) {
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
            if self.blocked.count() >= MAX_BLOCKED_WORKERS {
                self.answer_unread(
                    notif.id,
                    notif.tid,
                    "earlier reads of this container's memory are still blocked",
                );
                continue;
            }
            // A fresh claim per request; the last one is reset in place when
            // nobody else holds it any more (no allocation per bind), else a
            // new one is made.
            match Arc::get_mut(&mut claim) {
                Some(c) => *c = Claim::default(),
                None => claim = Arc::new(Claim::default()),
            }
            self.set_job(Job {
                id: notif.id,
                tid: notif.tid,
                since: started,
                claim: Arc::clone(&claim),
            });
            let answer = {
                let mut cx = Context {
                    listener: &self.listener,
                    audit: &self.shared.audit,
                    labels: &self.labels,
                    ports: &self.shared.ports,
                    claim: Some(&claim),
                };
                handler.handle(&mut cx, &notif)
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
            if !mine {
                if !replaced {
                    // The watchdog answered but kept us (the agent-wide limit).
                    tracing::debug!(tid = notif.tid, "a blocked read returned; worker serves on");
                    continue;
                }
                // The watchdog answered and started our successor.
                tracing::debug!(tid = notif.tid, "a blocked read returned; worker exits");
                return;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_full_pool_never_costs_a_container_its_first_place() {
        let pool = BlockedPool::default();
        let attackers = containers(MAX_BLOCKED_TOTAL + 4);
        for a in &attackers {
            assert!(a.give_up(&pool), "a first place is always there");
        }
        let second: usize = attackers
            .iter()
            .map(|a| usize::from(a.give_up(&pool)))
            .sum();
        assert_eq!(
            second, MAX_BLOCKED_TOTAL,
            "second places come from the pool"
        );
        assert_eq!(pool.pooled(), MAX_BLOCKED_TOTAL);
        let victim = Container::new();
        assert!(victim.give_up(&pool), "the victim's first place");
        assert!(!victim.give_up(&pool), "its second needs the full pool");
        assert_eq!(victim.places.count(), 1);
        assert_eq!(pool.given_up(), attackers.len() + MAX_BLOCKED_TOTAL + 1);
        assert_eq!(pool.pooled(), MAX_BLOCKED_TOTAL);
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
        assert_eq!(pool.pooled(), MAX_BLOCKED_WORKERS - OWN_BLOCKED_WORKERS);
    }

    /// Whichever of a container's two given-up workers returns first, the pool
    /// place goes back, and another container can take it.
    #[test]
    fn a_returning_read_frees_a_pool_place_first() {
        let pool = BlockedPool::default();
        let full = containers(MAX_BLOCKED_TOTAL);
        for c in &full {
            assert!(c.give_up(&pool) && c.give_up(&pool));
        }
        let waiting = Container::new();
        assert!(waiting.give_up(&pool));
        assert!(!waiting.give_up(&pool));
        full[3].returns(&pool);
        assert_eq!(pool.pooled(), MAX_BLOCKED_TOTAL - 1);
        assert_eq!(full[3].places.count(), 1, "it keeps its own place");
        assert!(waiting.give_up(&pool), "the freed place is taken");
        full[3].returns(&pool);
        assert_eq!(pool.pooled(), MAX_BLOCKED_TOTAL, "its own place held none");
        assert!(full[3].give_up(&pool), "its own place is there again");
        assert!(!full[3].give_up(&pool), "a second needs the full pool");
    }

    /// A container that exits while holding places: each of its blocked reads
    /// returns, and the pool and the totals are as if it had never stalled.
    #[test]
    fn an_exiting_container_gives_every_place_back() {
        let pool = BlockedPool::default();
        let others = containers(MAX_BLOCKED_TOTAL - 1);
        for c in &others {
            assert!(c.give_up(&pool) && c.give_up(&pool));
        }
        let exiting = Container::new();
        assert!(exiting.give_up(&pool) && exiting.give_up(&pool));
        assert_eq!(pool.pooled(), MAX_BLOCKED_TOTAL);
        exiting.returns(&pool);
        exiting.returns(&pool);
        assert_eq!(exiting.places.count(), 0);
        assert_eq!(pool.pooled(), MAX_BLOCKED_TOTAL - 1);
        assert_eq!(pool.given_up(), 2 * others.len());
        for c in &others {
            c.returns(&pool);
            c.returns(&pool);
        }
        assert_eq!((pool.pooled(), pool.given_up()), (0, 0));
    }

    /// The successor a place was taken for could not start: the place is
    /// given back at once and the counts are where they were, own or pooled.
    #[test]
    fn a_failed_spawn_leaves_the_counts_as_they_were() {
        let pool = BlockedPool::default();
        let c = Container::new();
        for held in 0..MAX_BLOCKED_WORKERS {
            let before = (pool.given_up(), pool.pooled(), c.places.count());
            assert_eq!(before.2, held);
            assert!(c.give_up(&pool));
            c.returns(&pool);
            assert_eq!((pool.given_up(), pool.pooled(), c.places.count()), before);
            assert!(c.give_up(&pool), "the place is there for the next try");
        }
    }

    /// Many threads give up and return at once, as watchdog and workers do:
    /// the pool never exceeds its size and ends empty.
    #[test]
    fn concurrent_give_ups_and_returns_keep_the_pool_exact() {
        let pool = Arc::new(BlockedPool::default());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let cs = containers(4);
                    for _ in 0..2_000 {
                        for c in &cs {
                            let _ = c.give_up(&pool);
                            assert!(pool.pooled() <= MAX_BLOCKED_TOTAL);
                        }
                        for c in &cs {
                            if c.places.count() > 0 {
                                c.returns(&pool);
                            }
                        }
                    }
                    for c in &cs {
                        while c.places.count() > 0 {
                            c.returns(&pool);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert_eq!((pool.pooled(), pool.given_up()), (0, 0));
    }
}
