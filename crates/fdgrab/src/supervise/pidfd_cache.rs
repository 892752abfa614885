//! The supervisor's descriptor budget and its cache of thread pidfds.
//!
//! Every descriptor the supervisor holds comes out of one table, sized by
//! `RLIMIT_NOFILE`. The only per-caller descriptors it keeps are per thread that
//! made an allowed bind: its pidfd (to skip `pidfd_open` on the next one) and a
//! link to its `/proc/TID/ns/net` (to read its netns without a path walk). Both
//! live in one entry of one cache with a fixed share of the table. Within it,
//! each owner (a container, for the agent) gets an equal share and is evicted
//! least-recently-used first: a container with a thousand binding threads
//! recycles its own entries and never pushes out another's.

use crate::pidfd::PidFd;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

/// Fewest entries an owner may keep however many owners share the cache.
const MIN_SHARE: usize = 4;
/// Largest cache, whatever the limit: pruning polls every entry once a second.
const MAX_CAPACITY: usize = 16_384;

/// How the process's descriptor table is divided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// `RLIMIT_NOFILE`'s soft limit after raising it.
    pub limit: u64,
}

impl FdBudget {
    /// Raises the soft `RLIMIT_NOFILE` to the hard one (a long-lived supervisor
    /// should not run out below what the administrator allows) and returns the
    /// resulting budget. A failure to raise keeps the current soft limit.
    pub fn raise_nofile() -> FdBudget {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let cur = getrlimit(Resource::Nofile);
        if cur.maximum != cur.current {
            let want = Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            };
            match setrlimit(Resource::Nofile, want) {
                Ok(()) => {
                    tracing::debug!(limit = ?cur.maximum, "raised RLIMIT_NOFILE to its hard limit")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE; keeping the soft limit")
                }
            }
        }
        FdBudget::current()
    }

    /// The budget under the current soft limit, changing nothing.
    pub fn current() -> FdBudget {
        let cur = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        FdBudget {
            limit: cur.current.unwrap_or(u64::MAX),
        }
    }

    /// Cached thread entries: a quarter of the table, at two descriptors each
    /// (a pidfd and a netns link).
    pub fn pidfd_capacity(&self) -> usize {
        usize::try_from(self.limit / 8)
            .unwrap_or(usize::MAX)
            .clamp(MIN_SHARE, MAX_CAPACITY)
    }

    /// Runtime connections being read at once: an eighth of the table, at most 512.
    pub fn pending_connections(&self) -> usize {
        usize::try_from(self.limit / 8)
            .unwrap_or(usize::MAX)
            .clamp(8, 512)
    }
}

struct Slot {
    pidfd: Arc<PidFd>,
    /// The thread's `/proc/TID/ns/net` link, once one was proven its own.
    link: Option<Arc<OwnedFd>>,
    owner: u64,
    stamp: u64,
}

/// A cached thread: its pidfd and, if one was kept, its netns link.
#[derive(Debug, Clone)]
pub struct CachedThread {
    /// The thread's pidfd.
    pub pidfd: Arc<PidFd>,
    /// An `O_PATH` link to the thread's `/proc/TID/ns/net`, opened while the
    /// thread was parked in a request that was still pending afterwards.
    pub link: Option<Arc<OwnedFd>>,
}

#[derive(Default)]
struct Inner {
    by_tid: HashMap<i32, Slot>,
    /// Per owner: its entries by last use, oldest first.
    lru: HashMap<u64, BTreeMap<u64, i32>>,
    owners: usize,
    clock: u64,
}

impl Inner {
    fn share(&self, capacity: usize) -> usize {
        (capacity / self.owners.max(1)).max(MIN_SHARE)
    }

    fn remove(&mut self, tid: i32) -> Option<Slot> {
        let slot = self.by_tid.remove(&tid)?;
        if let Some(l) = self.lru.get_mut(&slot.owner) {
            l.remove(&slot.stamp);
        }
        Some(slot)
    }

    fn evict_oldest_of(&mut self, owner: u64) -> bool {
        let oldest = self
            .lru
            .get_mut(&owner)
            .and_then(|l| l.pop_first())
            .map(|(_, tid)| tid);
        match oldest {
            Some(tid) => {
                self.by_tid.remove(&tid);
                true
            }
            None => false,
        }
    }

    /// Evicts from whichever owner holds the most.
    fn evict_from_largest(&mut self) -> bool {
        let largest = self
            .lru
            .iter()
            .max_by_key(|(_, l)| l.len())
            .map(|(o, _)| *o);
        largest.is_some_and(|o| self.evict_oldest_of(o))
    }
}

/// Thread pidfds by tid, shared by every listener of a process.
pub struct ThreadPidfds {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ThreadPidfds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPidfds")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl ThreadPidfds {
    /// A cache of at most `capacity` pidfds.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(MIN_SHARE),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves maps that are still consistent
        // enough to evict from; a poisoned cache must not stop the supervisor.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `owner` among those sharing the cache (its share shrinks others').
    /// Adding a known owner again (a replacement worker) keeps its entries.
    pub fn add_owner(&self, owner: u64) {
        let mut g = self.lock();
        if let std::collections::hash_map::Entry::Vacant(v) = g.lru.entry(owner) {
            v.insert(BTreeMap::new());
            g.owners += 1;
        }
    }

    /// Closes every pidfd `owner` cached and gives its share back.
    pub fn remove_owner(&self, owner: u64) {
        let mut g = self.lock();
        if let Some(l) = g.lru.remove(&owner) {
            g.owners = g.owners.saturating_sub(1);
            for tid in l.into_values() {
                g.by_tid.remove(&tid);
            }
        }
    }

    /// The cached pidfd of `tid`, now the most recently used.
    pub fn get(&self, tid: i32) -> Option<Arc<PidFd>> {
        self.lookup(None, tid).map(|e| e.pidfd)
    }

    /// The pidfd and netns link `owner` cached for `tid`, now the most recently
    /// used; `None` when `tid`'s entry is another owner's.
    ///
    /// An entry proves a request's caller only if it is older than the
    /// request's `ID_VALID`: its thread held the tid from its caching until now,
    /// so it was the thread in the call. An owner's entries are cached by its
    /// one deciding worker, a request at a time, so every entry it finds is
    /// older than the request it decides; another owner's worker may cache
    /// one meanwhile for a tid the caller left (exited) after its request was
    /// validated: a newcomer's, in another container.
    pub fn entry(&self, owner: u64, tid: i32) -> Option<CachedThread> {
        self.lookup(Some(owner), tid)
    }

    fn lookup(&self, owner: Option<u64>, tid: i32) -> Option<CachedThread> {
        let mut guard = self.lock();
        let g = &mut *guard;
        let slot = g.by_tid.get_mut(&tid)?;
        if owner.is_some_and(|o| o != slot.owner) {
            return None;
        }
        let entry = CachedThread {
            pidfd: Arc::clone(&slot.pidfd),
            link: slot.link.clone(),
        };
        // Already the most recently used (a thread binding again): the order
        // stays as it is, with no tree update.
        if slot.stamp != g.clock {
            g.clock += 1;
            let (owner, old) = (slot.owner, slot.stamp);
            slot.stamp = g.clock;
            if let Some(l) = g.lru.get_mut(&owner) {
                l.remove(&old);
                l.insert(g.clock, tid);
            }
        }
        Some(entry)
    }

    /// Keeps `link` with `tid`'s entry if that entry still holds `pidfd` (the
    /// pidfd the request was served with: then link and pidfd name the same
    /// thread); otherwise closes it. `false` when it was not kept.
    pub fn keep_link(&self, tid: i32, pidfd: &Arc<PidFd>, link: OwnedFd) -> bool {
        let mut g = self.lock();
        match g.by_tid.get_mut(&tid) {
            Some(slot) if Arc::ptr_eq(&slot.pidfd, pidfd) => {
                slot.link = Some(Arc::new(link));
                true
            }
            _ => false,
        }
    }

    /// Descriptors held: pidfds and netns links (a link still in use by a
    /// request outlives its entry by that request).
    pub fn descriptors(&self) -> usize {
        let g = self.lock();
        g.by_tid.len() + g.by_tid.values().filter(|s| s.link.is_some()).count()
    }

    /// Caches `pidfd` for `tid` on behalf of `owner`, first evicting `owner`'s
    /// least recently used entry if it is at its share, then the largest owner's
    /// if the cache is full.
    pub fn insert(&self, owner: u64, tid: i32, pidfd: PidFd) -> Arc<PidFd> {
        let pidfd = Arc::new(pidfd);
        let mut g = self.lock();
        g.remove(tid);
        if let std::collections::hash_map::Entry::Vacant(v) = g.lru.entry(owner) {
            v.insert(BTreeMap::new());
            g.owners += 1;
        }
        let share = g.share(self.capacity);
        while g.lru.get(&owner).map_or(0, BTreeMap::len) >= share {
            if !g.evict_oldest_of(owner) {
                break;
            }
        }
        while g.by_tid.len() >= self.capacity {
            if !g.evict_from_largest() {
                break;
            }
        }
        g.clock += 1;
        let stamp = g.clock;
        g.by_tid.insert(
            tid,
            Slot {
                pidfd: Arc::clone(&pidfd),
                link: None,
                owner,
                stamp,
            },
        );
        if let Some(l) = g.lru.get_mut(&owner) {
            l.insert(stamp, tid);
        }
        pidfd
    }

    /// Forgets `tid` (its pidfd named an earlier thread).
    pub fn remove(&self, tid: i32) {
        self.lock().remove(tid);
    }

    /// Closes up to half the cache, largest owners first: the answer to `EMFILE`.
    pub fn shrink(&self) -> usize {
        let mut g = self.lock();
        let n = g.by_tid.len().div_ceil(2);
        let mut done = 0;
        while done < n && g.evict_from_largest() {
            done += 1;
        }
        done
    }

    /// Closes the pidfds of threads that have exited (a thread pidfd polls readable
    /// once its thread is gone). The poll runs outside the lock.
    pub fn prune_exited(&self) {
        use rustix::event::{PollFd, PollFlags};
        let snapshot: Vec<(i32, Arc<PidFd>)> = {
            let g = self.lock();
            g.by_tid
                .iter()
                // Only real pidfds poll for an exit; a /proc handle would poll
                // readable at once. The cache never holds one, but say so in types.
                .filter(|(_, s)| s.pidfd.as_pidfd().is_some())
                .map(|(t, s)| (*t, Arc::clone(&s.pidfd)))
                .collect()
        };
        if snapshot.is_empty() {
            return;
        }
        let mut fds: Vec<PollFd<'_>> = snapshot
            .iter()
            .filter_map(|(_, p)| p.as_pidfd())
            .map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
            .collect();
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if rustix::event::poll(&mut fds, Some(&zero)).is_err() {
            return;
        }
        let dead: Vec<(i32, &Arc<PidFd>)> = snapshot
            .iter()
            .zip(&fds)
            .filter(|(_, f)| !f.revents().is_empty())
            .map(|((t, p), _)| (*t, p))
            .collect();
        let mut g = self.lock();
        for (tid, p) in dead {
            // Only if the entry is still the one polled, not a newer thread's.
            if g.by_tid.get(&tid).is_some_and(|s| Arc::ptr_eq(&s.pidfd, p)) {
                g.remove(tid);
            }
        }
    }

    /// Entries cached.
    pub fn len(&self) -> usize {
        self.lock().by_tid.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries cached for `owner`.
    pub fn len_of(&self, owner: u64) -> usize {
        self.lock().lru.get(&owner).map_or(0, BTreeMap::len)
    }

    /// The most entries any one owner may keep right now.
    pub fn share(&self) -> usize {
        self.lock().share(self.capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads of our own process, parked until dropped, each with a real pidfd.
    struct Threads {
        tids: Vec<i32>,
        stop: std::sync::mpsc::Sender<()>,
        handles: Vec<std::thread::JoinHandle<()>>,
    }

    fn threads(n: usize) -> Threads {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let stop_rx = Arc::new(Mutex::new(stop_rx));
        let handles = (0..n)
            .map(|_| {
                let tx = tid_tx.clone();
                let rx = Arc::clone(&stop_rx);
                std::thread::spawn(move || {
                    tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                        .expect("send tid");
                    let _ = rx.lock().map(|r| r.recv());
                })
            })
            .collect();
        let tids = (0..n).map(|_| tid_rx.recv().expect("tid")).collect();
        Threads {
            tids,
            stop,
            handles,
        }
    }

    impl Drop for Threads {
        fn drop(&mut self) {
            for _ in &self.handles {
                let _ = self.stop.send(());
            }
            for h in self.handles.drain(..) {
                let _ = h.join();
            }
        }
    }

    fn pidfd(tid: i32) -> PidFd {
        PidFd::open_thread(tid)
            .or_else(|_| PidFd::open(std::process::id() as i32))
            .expect("pidfd")
    }

    /// The watchdog replaces a container's worker, and the new worker's handler
    /// joins the cache under the same owner: the container's entries must stay
    /// its own, within its share, and be closed when it goes.
    #[test]
    fn a_replacement_worker_keeps_its_containers_entries() {
        use crate::supervise::bind::BindHandler;
        use crate::supervise::policy::{Policy, PolicyCell};
        let t = threads(16);
        let cache = Arc::new(ThreadPidfds::new(16));
        let cell = Arc::new(PolicyCell::new(Arc::new(Policy::empty())));
        cache.add_owner(2);
        let _first = BindHandler::shared(Arc::clone(&cell), Arc::clone(&cache), 1);
        for &tid in &t.tids[..8] {
            cache.insert(1, tid, pidfd(tid));
        }
        let _replacement = BindHandler::shared(cell, Arc::clone(&cache), 1);
        assert_eq!(
            cache.len_of(1),
            8,
            "the container's entries are still counted"
        );
        for &tid in &t.tids[8..] {
            cache.insert(1, tid, pidfd(tid));
        }
        assert_eq!(cache.len(), 8, "the container stayed within its share");
        cache.remove_owner(1);
        assert_eq!(cache.len(), 0, "every pidfd of the container was closed");
    }

    #[test]
    fn one_owner_cannot_push_out_another() {
        let t = threads(24);
        let cache = ThreadPidfds::new(16);
        cache.add_owner(1);
        cache.add_owner(2);
        assert_eq!(cache.share(), 8);
        for &tid in &t.tids[..4] {
            cache.insert(2, tid, pidfd(tid));
        }
        // Owner 1 binds from 20 threads: it recycles its own 8 entries.
        for &tid in &t.tids[4..] {
            cache.insert(1, tid, pidfd(tid));
        }
        assert_eq!(cache.len_of(1), 8);
        assert_eq!(cache.len_of(2), 4, "the neighbour's entries survived");
        for &tid in &t.tids[..4] {
            assert!(cache.get(tid).is_some(), "tid {tid} of owner 2 evicted");
        }
        // Owner 1 kept its most recent threads, not its first ones.
        assert!(cache.get(t.tids[4]).is_none());
        assert!(cache.get(*t.tids.last().expect("tid")).is_some());
        cache.remove_owner(1);
        assert_eq!(cache.len(), 4);
    }

    #[test]
    fn least_recently_used_goes_first_and_shrink_halves() {
        let t = threads(6);
        let cache = ThreadPidfds::new(4);
        for &tid in &t.tids[..4] {
            cache.insert(7, tid, pidfd(tid));
        }
        // Touch the oldest so that the second oldest is evicted next.
        assert!(cache.get(t.tids[0]).is_some());
        cache.insert(7, t.tids[4], pidfd(t.tids[4]));
        assert!(cache.get(t.tids[0]).is_some());
        assert!(cache.get(t.tids[1]).is_none());
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.shrink(), 2);
        assert_eq!(cache.len(), 2);
    }

    /// Getting the newest entry again leaves the order alone (no tree update);
    /// the entry that is really the oldest still goes first, and an entry made
    /// newest by a get is kept.
    #[test]
    fn getting_the_newest_again_keeps_the_order() {
        let t = threads(6);
        let cache = ThreadPidfds::new(4);
        for &tid in &t.tids[..4] {
            cache.insert(7, tid, pidfd(tid));
        }
        for _ in 0..3 {
            assert!(cache.get(t.tids[3]).is_some(), "the newest, again");
        }
        cache.insert(7, t.tids[4], pidfd(t.tids[4]));
        assert!(cache.get(t.tids[0]).is_none(), "the oldest went first");
        assert!(cache.get(t.tids[3]).is_some());
        // tids[1] becomes the newest, and a repeated get keeps it so.
        assert!(cache.get(t.tids[1]).is_some());
        assert!(cache.get(t.tids[1]).is_some());
        cache.insert(7, t.tids[5], pidfd(t.tids[5]));
        assert!(cache.get(t.tids[2]).is_none(), "then the next oldest");
        for &tid in &[t.tids[1], t.tids[3], t.tids[4], t.tids[5]] {
            assert!(cache.get(tid).is_some(), "tid {tid} kept");
        }
    }

    fn netns_link(tid: i32) -> OwnedFd {
        rustix::fs::open(
            format!("/proc/{tid}/ns/net"),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .expect("netns link")
    }

    /// Open descriptors of this process.
    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").expect("fd dir").count()
    }

    /// A netns link is kept only with the pidfd it was proven with, and goes
    /// with that entry: a later pidfd for the tid (a later thread) starts
    /// without one.
    #[test]
    fn a_netns_link_lives_and_dies_with_its_pidfd() {
        let t = threads(2);
        let tid = t.tids[0];
        let cache = ThreadPidfds::new(8);
        let first = cache.insert(1, tid, pidfd(tid));
        let other = Arc::new(pidfd(tid));
        assert!(
            !cache.keep_link(tid, &other, netns_link(tid)),
            "not with another pidfd"
        );
        assert!(cache.entry(1, tid).expect("entry").link.is_none());
        assert!(cache.keep_link(tid, &first, netns_link(tid)));
        assert!(cache.entry(1, tid).expect("entry").link.is_some());
        assert_eq!(cache.descriptors(), 2);
        // The tid's entry replaced (its pidfd named an earlier thread): no link.
        cache.remove(tid);
        assert!(!cache.keep_link(tid, &first, netns_link(tid)), "entry gone");
        cache.insert(1, tid, pidfd(tid));
        assert!(cache.entry(1, tid).expect("entry").link.is_none());
        assert!(
            !cache.keep_link(t.tids[1], &first, netns_link(t.tids[1])),
            "no entry for that tid"
        );
        assert_eq!(cache.descriptors(), 1);
    }

    /// An owner is never handed another owner's entry for a tid: a worker
    /// deciding a request cannot tell whether that entry was cached before the
    /// request was validated (then its thread was the caller) or after.
    #[test]
    fn an_entry_is_its_owners_alone() {
        let cache = ThreadPidfds::new(8);
        let t = threads(1);
        let tid = t.tids[0];
        cache.insert(2, tid, pidfd(tid));
        assert!(cache.entry(1, tid).is_none(), "owner 2's entry");
        assert!(cache.entry(2, tid).is_some());
        cache.insert(1, tid, pidfd(tid));
        assert!(cache.entry(2, tid).is_none(), "taken over by owner 1");
        assert!(cache.entry(1, tid).is_some());
        assert_eq!(cache.len(), 1);
    }

    /// The agent's one budget holds however many containers bind: every
    /// container's threads keep a pidfd and a netns link, yet the cache never
    /// holds more than its capacity in entries and twice that in descriptors,
    /// a quarter of the table; removing the containers closes them all.
    #[test]
    fn the_budget_holds_with_many_containers() {
        const CONTAINERS: u64 = 40;
        const THREADS_EACH: usize = 3;
        let budget = FdBudget { limit: 256 };
        let cache = ThreadPidfds::new(budget.pidfd_capacity());
        assert_eq!(budget.pidfd_capacity(), 32);
        let before = open_fds();
        let mut all = Vec::new();
        for owner in 0..CONTAINERS {
            cache.add_owner(owner);
            let t = threads(THREADS_EACH);
            for &tid in &t.tids {
                let p = cache.insert(owner, tid, pidfd(tid));
                assert!(cache.keep_link(tid, &p, netns_link(tid)));
                assert!(cache.len() <= budget.pidfd_capacity());
                assert!(cache.descriptors() <= 2 * budget.pidfd_capacity());
                assert!(cache.len_of(owner) <= cache.share());
            }
            all.push(t);
        }
        assert_eq!(cache.len(), budget.pidfd_capacity());
        assert_eq!(cache.descriptors(), 2 * budget.pidfd_capacity());
        assert!(
            open_fds() - before <= budget.limit as usize / 4,
            "the cache holds {} descriptors, more than a quarter of {}",
            open_fds() - before,
            budget.limit
        );
        for owner in 0..CONTAINERS {
            cache.remove_owner(owner);
        }
        assert!(cache.is_empty());
        assert_eq!(open_fds(), before, "every pidfd and link closed");
        drop(all);
    }

    #[test]
    fn exited_threads_are_pruned() {
        let cache = ThreadPidfds::new(8);
        let live = threads(1);
        let dead = threads(1);
        let dead_tid = dead.tids[0];
        cache.insert(1, live.tids[0], pidfd(live.tids[0]));
        cache.insert(1, dead_tid, pidfd(dead_tid));
        drop(dead);
        // The kernel reports the thread's exit on its pidfd once it is reaped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cache.len() > 1 && std::time::Instant::now() < deadline {
            cache.prune_exited();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(cache.len(), 1);
        assert!(cache.get(live.tids[0]).is_some());
    }

    #[test]
    fn budget_follows_the_limit() {
        assert_eq!(FdBudget { limit: 1024 }.pidfd_capacity(), 128);
        assert_eq!(FdBudget { limit: 1024 }.pending_connections(), 128);
        assert_eq!(FdBudget { limit: 1 << 20 }.pidfd_capacity(), MAX_CAPACITY);
        assert_eq!(FdBudget { limit: 1 << 20 }.pending_connections(), 512);
        let raised = FdBudget::raise_nofile();
        let r = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(r.current, r.maximum, "soft limit raised to the hard one");
        assert_eq!(Some(raised.limit), r.current);
    }
}
