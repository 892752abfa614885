//! The questions lsof, ss and fuser answer, asked of many processes at once: who
//! holds this port, this file, a deleted file, a listening socket.
//!
//! Each question is answered from the cheapest source first. A port or listening
//! question goes to the kernel once per network namespace (inet_diag with a port
//! filter in bytecode, states filtered in the kernel), which gives the socket
//! inodes; then each process's fd links are read and only the descriptors whose link
//! names one of those inodes get their fdinfo read. A file question compares
//! device and inode from a stat of each non-pseudo link; a deleted-file question
//! looks for the kernel's " (deleted)" suffix first. Processes are spread over the
//! cores, and processes of one network namespace share one socket table.

use super::sockets::{SocketInfo, SocketTable};
use super::{
    inet_diag, sock_diag, unix_diag, BlockSource, Blocks, FdEntry, FdKind, Select, SocketSource,
    TableMatch,
};
use crate::error::{Error, Result};
use crate::pidfd::{PidFd, ProcessInfo};
use crate::{Pid, TargetFd};
use rustix::fs::{openat, statat, AtFlags, Mode, OFlags};
use serde::Serialize;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// What to look for. Every narrowing given must hold (they combine with "and").
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only these descriptor numbers.
    pub fds: Vec<TargetFd>,
    /// TCP and UDP sockets whose local or peer port is this.
    pub port: Option<u16>,
    /// Descriptors open on this (device, inode), as `stat(2)` gives them.
    pub file: Option<(u64, u64)>,
    /// `file` is a unix socket's name: then the descriptors wanted are the unix
    /// sockets bound to it and the connections accepted on them (what lsof and
    /// fuser list), whose own inodes are sockfs ones.
    pub file_is_socket: bool,
    /// Descriptors on files with no name left (link count 0): deleted files and
    /// memfds, as `lsof +L1` lists them.
    pub unlinked: bool,
    /// Only these kinds.
    pub kinds: Vec<FdKind>,
    /// Listening sockets: TCP and unix in `LISTEN`, and UDP sockets bound to a port
    /// and not connected (what `ss -l` shows).
    pub listening: bool,
    /// Only processes whose effective uid is this.
    pub uid: Option<u32>,
    /// Only the pids are wanted (`ls --pids`): a process found by a first pass
    /// that decides the query exactly (by device and inode, or by socket inode,
    /// with no fd-number, type or link-count narrowing) is reported with its pid
    /// alone: no pidfd, fdinfo, command or credentials are read for it, and its
    /// `fds`, `command` and `process` stay empty.
    pub pids_only: bool,
}

impl Query {
    /// Whether only some descriptors are wanted: then a process with none of them
    /// is left out of the result.
    pub fn narrows_fds(&self) -> bool {
        !self.fds.is_empty()
            || self.port.is_some()
            || self.file.is_some()
            || self.unlinked
            || !self.kinds.is_empty()
            || self.listening
    }
}

/// The matching descriptors of one process.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessFds {
    /// The process.
    pub pid: Pid,
    /// The command name (`/proc/PID/comm`, lossy UTF-8; see `command_bytes`).
    pub command: String,
    /// The exact bytes of `command` when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_bytes: Option<Vec<u8>>,
    /// Identity and credentials; `None` if the process could not be asked.
    pub process: Option<ProcessInfo>,
    /// Its descriptors that match the query, in ascending order.
    pub fds: Vec<FdEntry>,
}

/// A process that could not be listed, and why (it exited, or we may not read it).
#[derive(Debug)]
pub struct Skipped {
    /// The process.
    pub pid: Pid,
    /// Why it could not be listed (e.g. [`Error::NoSuchProcess`],
    /// [`Error::PermissionDenied`]).
    pub error: Error,
}

/// What a query found: the processes listed and those that could not be.
#[derive(Debug, Default)]
pub struct QueryResult {
    /// By pid. Without a narrowing query, every readable process appears, even with
    /// no fds (a kernel thread); with one, only processes with a match.
    pub processes: Vec<ProcessFds>,
    /// Processes that could not be read, by pid.
    pub skipped: Vec<Skipped>,
    /// When a question about sockets alone (`port`, `listening`, a unix
    /// socket's name, over every process) found no process: how many sockets
    /// the kernel reported as matching it all the same. No fd fdgrab could read
    /// refers to them: they are held by a process outside the caller's pid
    /// namespace (sharing its network namespace), in a thread's private fd
    /// table, by a process that could not be read, only in flight in a unix socket's
    /// queue, or by the kernel itself (a tunnel's or a network file system's
    /// socket has an inode and no fd). 0 otherwise.
    pub unheld_sockets: usize,
}

/// Answers `q` over `pids`, or over every process when `pids` is `None` (except the
/// caller itself, whose descriptors would be the query's own). A process that
/// cannot be read is reported in [`QueryResult::skipped`] and the others are still
/// listed.
pub fn query(pids: Option<&[Pid]>, q: &Query) -> QueryResult {
    let every_process = pids.is_none();
    let named_pids: Option<Vec<Pid>> = pids.map(|p| {
        // A pid named twice is one process: listed (or skipped) once. The
        // order is kept, since the first skipped pid decides the exit status.
        let mut seen = std::collections::HashSet::new();
        p.iter().copied().filter(|&pid| seen.insert(pid)).collect()
    });
    let found = OnceLock::new();
    let tables = NetnsTables::default();
    let (pids, mut slots) = match named_pids {
        // One process: no thread to wait for.
        Some(pids) if pids.len() <= 1 => {
            let sockets = found.get_or_init(|| sockets_asked(&pids, q));
            let plan = Plan::new(pids, q, sockets, None);
            let slots = plan
                .pids
                .iter()
                .map(|&pid| Some(named(pid, q, &plan.select, &plan.source)))
                .collect();
            (plan.pids, slots)
        }
        // Many: the workers start while this thread lists the processes and
        // asks for the sockets the query needs.
        named_pids => {
            let scan = Scan::new(q, named_pids.as_ref().map(Vec::len));
            let slots = scan.run(|| {
                let pids = named_pids.unwrap_or_else(all_pids);
                let found = found.get_or_init(|| {
                    if !every_process {
                        return sockets_asked(&pids, q);
                    }
                    // The caller's own network namespace is asked too, though
                    // no listed process may live there (a pid namespace of its
                    // own, an unprivileged caller): its matching sockets are
                    // what tells "held by nobody we see" from "free".
                    let mut in_netns = pids.clone();
                    in_netns.push(std::process::id() as Pid);
                    sockets_asked(&in_netns, q)
                });
                Plan::new(pids, q, found, Some(&tables))
            });
            let pids = scan.into_plan().map(|p| p.pids).unwrap_or_default();
            (pids, slots)
        }
    };
    let mut out = QueryResult::default();
    for (pid, slot) in pids.iter().zip(slots.iter_mut()) {
        match slot.take() {
            Some(Ok(Some(p))) => out.processes.push(p),
            Some(Ok(None)) => {}
            Some(Err(error)) => out.skipped.push(Skipped { pid: *pid, error }),
            None => out.skipped.push(Skipped {
                pid: *pid,
                error: Error::io("inventory worker", *pid, None, rustix::io::Errno::IO),
            }),
        }
    }
    tables.describe_foreign_sockets(&mut out.processes);
    out.processes.sort_by_key(|p| p.pid);
    let sockets_only = q.uid.is_none()
        && q.fds.is_empty()
        && q.kinds.is_empty()
        && !q.unlinked
        && (q.file.is_none() || q.file_is_socket);
    if every_process && sockets_only && out.processes.is_empty() {
        // Inode 0: an orphan (closed, still finishing its connection), which
        // no fd can hold. The caller's own (inherited) sockets are held, by
        // the one process the scan leaves out.
        if let Some(f) = found.get().and_then(Option::as_ref) {
            let ours = own_socket_inodes();
            out.unheld_sockets = f
                .keys()
                .filter(|&&ino| ino != 0 && !ours.contains(&ino))
                .count();
        }
    }
    out
}

/// The inodes of the sockets in the caller's own fd table.
fn own_socket_inodes() -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let link = std::fs::read_link(e.ok()?.path()).ok()?;
        super::bracketed(link.to_str()?, "socket:[")
    })
    .collect()
}

/// The sockets a port, listening or socket-name query selects among `pids`
/// (by inode); `None` when the query asks for no socket in particular.
fn sockets_asked(pids: &[Pid], q: &Query) -> Option<HashMap<u64, SocketInfo>> {
    let mut found = (q.port.is_some() || q.listening).then(|| matching_sockets(pids, q));
    if let Some((dev, ino)) = q.file.filter(|_| q.file_is_socket) {
        let bound = bound_sockets(pids, dev, ino);
        found = Some(match found {
            Some(f) => f
                .into_iter()
                .filter(|(i, _)| bound.contains_key(i))
                .collect(),
            None => bound,
        });
    }
    found
}

/// What a scan works through: the processes, which of their fds are wanted,
/// and where socket details come from.
struct Plan<'a> {
    pids: Vec<Pid>,
    select: Select<'a>,
    source: SocketSource<'a>,
}

impl<'a> Plan<'a> {
    /// `tables`: socket tables shared by the processes of one network
    /// namespace (else each process asks for its own).
    fn new(
        pids: Vec<Pid>,
        q: &'a Query,
        sockets: &'a Option<HashMap<u64, SocketInfo>>,
        tables: Option<&'a NetnsTables>,
    ) -> Self {
        let select = Select {
            fds: &q.fds,
            sockets: sockets.as_ref(),
            file: q.file.filter(|_| !q.file_is_socket),
            unlinked: q.unlinked,
            kinds: &q.kinds,
        };
        let source = match tables {
            Some(t) if pids.len() > 1 => SocketSource::Shared(t),
            _ => SocketSource::PerProcess,
        };
        Plan {
            pids,
            select,
            source,
        }
    }
}

/// A process the user named: one that cannot be listed (a zombie, one we may not
/// read) is an error even when a filter would have left all its fds out, so it
/// is described whole, with no cheap first pass (which only saves work over many
/// processes).
fn named(
    pid: Pid,
    q: &Query,
    select: &Select,
    source: &SocketSource,
) -> Result<Option<ProcessFds>> {
    if q.uid.is_none() {
        return describe(pid, q, select, source);
    }
    // What it is comes before whose it is: a thread id, a zombie or a process
    // /proc hides from us is the same error with `--user` as without, never a
    // quiet "no match".
    let target = PidFd::open(pid).map_err(|e| thread_of_process(pid, e))?;
    // A process /proc hides from us has no status to read either.
    let matches = user_matches(pid, q).map_err(|e| super::hidden_if_alive(&target, e))?;
    if !matches {
        if !target.is_alive() {
            return Err(Error::NoSuchProcess { pid });
        }
        return Ok(None);
    }
    describe(pid, q, select, source)
}

/// Whether `pid` runs as the user the query asks for (any, without `--user`).
fn user_matches(pid: Pid, q: &Query) -> Result<bool> {
    let Some(uid) = q.uid else {
        return Ok(true);
    };
    let st = crate::procfs::status(pid).map_err(|e| io_to_proc(pid, e))?;
    Ok(st.uids.map(|u| u[1]) == Some(uid))
}

/// The full listing of a process that passed the cheap checks: its matching
/// descriptors with fdinfo, its command and credentials (`None` when a narrowing
/// query leaves no descriptor).
fn describe(
    pid: Pid,
    q: &Query,
    select: &Select,
    source: &SocketSource,
) -> Result<Option<ProcessFds>> {
    let target = PidFd::open(pid).map_err(|e| thread_of_process(pid, e))?;
    let inv = super::list(&target, select, source)?;
    if q.narrows_fds() && inv.fds.is_empty() {
        return Ok(None);
    }
    let comm =
        crate::procfs::comm(pid).map_err(|e| super::proc_error(pid, "read /proc/PID/comm", e))?;
    let (command, command_bytes) = super::names::split_utf8(comm);
    Ok(Some(ProcessFds {
        pid,
        command,
        command_bytes,
        process: target.info().ok(),
        fds: inv.fds,
    }))
}

/// A thread id named where a process is wanted: the error names its process,
/// which is the one to list (the threads share its table).
fn thread_of_process(pid: Pid, e: Error) -> Error {
    let tgid = || crate::procfs::status(pid).ok()?.tgid.filter(|&t| t != pid);
    match e {
        Error::InvalidArgument(_) => match tgid() {
            Some(tgid) => Error::InvalidArgument(format!(
                "pid {pid} is a thread of process {tgid}, not a process: list {tgid}"
            )),
            // Its status is hidden from us (or it has just exited): the
            // library's advice (open it as a thread) is nothing ls can do.
            None => Error::InvalidArgument(format!(
                "pid {pid} is a thread, not a process: list its process (Tgid in \
                 /proc/{pid}/status, which /proc does not show us: mounted with \
                 hidepid=2 or hidepid=invisible, or the thread has exited)"
            )),
        },
        e => e,
    }
}

/// The outcome for the process at one index of the scan's pid list.
type Outcome = (usize, Result<Option<ProcessFds>>);

/// A scan of many processes, shared by its worker threads. Each worker claims
/// the next process; a process with a large fd table does not keep one worker
/// busy while the others run out of work: its first pass (one stat or readlink
/// per fd) is cut into ranges of fd numbers that every worker claims, each
/// trying the numbers of its range (below the table's count) or listing it
/// itself (procfs puts fd N at directory offset N + 2), so a single busy process
/// among many idle ones is checked on every core. Whoever finishes a table's
/// last range finishes that process.
struct Scan<'a> {
    q: &'a Query,
    /// How many processes the user named (`None`: every process): each is
    /// described whole, and the scan needs no more threads than them.
    named: Option<usize>,
    /// The processes and what to look for: made by the calling thread while
    /// the workers start.
    plan: OnceLock<Plan<'a>>,
    state: Mutex<ScanState>,
    /// Signalled when the plan is made, when a table is shared, or when no
    /// worker is opening a process any more.
    wake: Condvar,
    /// Whether this kernel numbers fd directory offsets as ranges need: asked
    /// of the first large table (one `getdents64`), once per scan.
    ranges_ok: OnceLock<bool>,
    /// Whether this kernel gives an fd directory's size as its number of fds
    /// (Linux 6.2+; older ones say 0): asked of our own, once per scan.
    counts_fds: OnceLock<bool>,
    /// `/proc`, for stats of its entries without walking to it each time.
    proc_root: OnceLock<Option<OwnedFd>>,
    /// Our effective uid: the owner of an fd directory we may open.
    euid: u32,
}

#[derive(Default)]
struct ScanState {
    /// The calling thread is done making the plan (or gave up: then `plan`
    /// stays empty and the workers leave).
    planned: bool,
    /// The next index of `pids` to claim.
    next: usize,
    /// Workers opening a process right now: each may still share a table, so
    /// idle workers wait for them rather than leave.
    opening: usize,
    /// Shared tables that may have ranges left to claim.
    tables: Vec<Arc<SharedTable>>,
}

/// The fd table of one process, checked range by range by every worker.
struct SharedTable {
    index: usize,
    pid: Pid,
    fd_dir: OwnedFd,
    ranges: Blocks<'static>,
    /// A range has found a match (or failed): later ranges are not checked.
    settled: AtomicBool,
    progress: Mutex<TableProgress>,
}

#[derive(Default)]
struct TableProgress {
    /// Ranges claimed and not finished.
    in_flight: usize,
    /// No range is left to claim.
    exhausted: bool,
    /// A worker has taken the table's outcome.
    finished: bool,
    error: Option<Error>,
}

/// A table with more fds than this is shared among the workers...
const SHARE_FROM: usize = 2 * SHARED_BLOCK;
/// ... in ranges of this many fd numbers (a range of stats takes tens of
/// microseconds).
const SHARED_BLOCK: usize = 64;

enum Work {
    Table(Arc<SharedTable>),
    Process(usize),
}

/// A worker's claim on a process it is opening; dropping it (also while a
/// panic unwinds) ends the claim and wakes the workers waiting for it.
struct Opening<'s, 'a>(&'s Scan<'a>);

impl Drop for Opening<'_, '_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.opening -= 1;
        if st.opening == 0 {
            self.0.wake.notify_all();
        }
    }
}

/// Hands the plan to the workers when dropped: also when making it panicked,
/// so that no worker waits for a plan that never comes.
struct Publish<'s, 'a>(&'s Scan<'a>);

impl Drop for Publish<'_, '_> {
    fn drop(&mut self) {
        self.0.lock().planned = true;
        self.0.wake.notify_all();
    }
}

/// A worker's own handle on a shared table's fd directory: listing a range moves
/// the directory position, so readers do not share one.
type OwnDir = Option<(usize, OwnedFd)>;

impl<'a> Scan<'a> {
    /// `named`: how many processes the user named (`None`: every process).
    fn new(q: &'a Query, named: Option<usize>) -> Self {
        Scan {
            q,
            named,
            plan: OnceLock::new(),
            state: Mutex::default(),
            wake: Condvar::new(),
            ranges_ok: OnceLock::new(),
            counts_fds: OnceLock::new(),
            proc_root: OnceLock::new(),
            euid: rustix::process::geteuid().as_raw(),
        }
    }

    /// Runs the scan on one thread per core: the outcome of each process by its
    /// index in the plan's `pids` (`None` if its worker panicked). The workers
    /// start first, and the calling thread makes the plan (`prepare`: listing
    /// the processes, asking for sockets) while they set themselves up (signal
    /// stack, `malloc` arena, waking on the other core); the spawns themselves
    /// stay on the calling thread. Then the calling thread only waits: were
    /// it a worker, the scheduler could queue a new thread behind it on its
    /// own core for milliseconds (measured: a helper waited 2 ms to run while
    /// the other core was free), where a caller that sleeps at once leaves its
    /// core to a worker.
    ///
    /// The workers are not joined: the scope ends as soon as each has handed
    /// over its outcomes, and their threads' own teardown (unmapping the signal
    /// stack, releasing the stack, exiting) then overlaps with what the caller
    /// does next instead of delaying it.
    fn run(&self, prepare: impl FnOnce() -> Plan<'a>) -> Vec<Option<Result<Option<ProcessFds>>>> {
        let workers = scan_threads(super::cores(), self.named);
        let done = Mutex::new(Vec::new());
        let work = || {
            // A panicking worker leaves its processes as None.
            let outcomes = std::panic::catch_unwind(AssertUnwindSafe(|| self.work()));
            if let Ok(outcomes) = outcomes {
                done.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(outcomes);
            }
        };
        std::thread::scope(|s| {
            // Released (the plan published, or its absence) however this ends:
            // started workers wait for it, and the scope waits for them.
            let publish = Publish(self);
            let mut started = 0;
            for _ in 0..workers {
                // A thread refused (a pids limit, RLIMIT_NPROC, no memory) is not
                // an error: fewer workers do the same work.
                if std::thread::Builder::new().spawn_scoped(s, work).is_err() {
                    break;
                }
                started += 1;
            }
            let _ = self.plan.set(prepare());
            drop(publish);
            if started == 0 {
                tracing::debug!("no scan thread could be started: the calling thread scans");
                work();
            }
        });
        let n = self.plan.get().map_or(0, |p| p.pids.len());
        let mut slots: Vec<_> = (0..n).map(|_| None).collect();
        for (i, r) in done.into_inner().unwrap_or_else(|p| p.into_inner()) {
            slots[i] = Some(r);
        }
        slots
    }

    fn into_plan(self) -> Option<Plan<'a>> {
        self.plan.into_inner()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ScanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One worker: claims work until none is left, and returns its outcomes.
    fn work(&self) -> Vec<Outcome> {
        let mut done = Vec::new();
        let mut own_dir: OwnDir = None;
        while let Some((plan, work)) = self.claim() {
            match work {
                Work::Table(table) => {
                    let (outcome, exhausted) = self.check_range(plan, &table, &mut own_dir);
                    if exhausted {
                        self.lock().tables.retain(|t| !Arc::ptr_eq(t, &table));
                    }
                    done.extend(outcome);
                }
                Work::Process(i) => {
                    // Dropped last, even if `process` panics: waiting workers
                    // must learn that this one will share no table.
                    let _opening = Opening(self);
                    match self.process(plan, i) {
                        Ok(Some(table)) => {
                            self.lock().tables.push(table);
                            self.wake.notify_all();
                        }
                        Ok(None) => {}
                        Err(outcome) => done.push(outcome),
                    }
                }
            }
        }
        done
    }

    /// The next piece of work, once the plan is made: a range of a shared
    /// table first (so that tables end early, and processes, which cannot be
    /// cut, are what is left at the end), then the next process. `None` once
    /// nothing is left and no worker may still share a table, or when no plan
    /// came.
    fn claim(&self) -> Option<(&Plan<'a>, Work)> {
        let mut st = self.lock();
        loop {
            if st.planned {
                let plan = self.plan.get()?;
                if let Some(table) = st.tables.last() {
                    return Some((plan, Work::Table(Arc::clone(table))));
                }
                if st.next < plan.pids.len() {
                    st.next += 1;
                    st.opening += 1;
                    return Some((plan, Work::Process(st.next - 1)));
                }
                if st.opening == 0 {
                    return None;
                }
            }
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Process `i`: decided here, or its table handed back to be shared
    /// (`Ok(Some)`); `Err` carries the outcome when it is decided.
    #[allow(clippy::result_large_err)]
    fn process(
        &self,
        plan: &Plan,
        i: usize,
    ) -> std::result::Result<Option<Arc<SharedTable>>, Outcome> {
        let pid = plan.pids[i];
        let (select, source) = (&plan.select, &plan.source);
        let decided = |r: Result<Option<ProcessFds>>| Err((i, r));
        if self.named.is_some() {
            return decided(named(pid, self.q, select, source));
        }
        match user_matches(pid, self.q) {
            Ok(true) => {}
            Ok(false) => return decided(Ok(None)),
            Err(e) => return decided(Err(e)),
        }
        if !select.prefilters() {
            return decided(describe(pid, self.q, select, source));
        }
        // Linux 6.2+ gives the number of open fds as the size of the fd
        // directory, to a stat that needs no permission on it.
        let counted = self.proc_stat(pid, "fd");
        let fd_dir = match &counted {
            // No fd counted in a directory the caller owns (so could open): a
            // kernel thread (dozens on a host) or a leader that exited, told
            // apart below without opening anything (two stats, where open,
            // fstat, stat and close cost 1.5 times as much). One it may not
            // own is opened, so that a refusal stays an error, as in a listing.
            Ok(st) if st.st_size == 0 && st.st_uid == self.euid && self.counts_fds() => None,
            _ => match select.open_fd_dir(pid) {
                Ok(d) => Some(d),
                Err(e) => return decided(Err(e)),
            },
        };
        let count = match (counted, &fd_dir) {
            (Ok(st), _) => st.st_size,
            (Err(_), Some(d)) => rustix::fs::fstat(d).map_or(0, |st| st.st_size),
            (Err(_), None) => 0,
        };
        match fd_dir {
            Some(fd_dir) if count > 0 || !self.counts_fds() => {
                self.first_pass(plan, i, fd_dir, usize::try_from(count).unwrap_or(0))
            }
            // No fd: a kernel thread holds nothing; a leader that exited while
            // its threads live on is read through them.
            _ => decided(
                if crate::procfs::task_links_show_other_threads(self.proc_stat(pid, "task")) {
                    describe(pid, self.q, select, source)
                } else {
                    Ok(None)
                },
            ),
        }
    }

    /// The first pass over process `i`'s fd table of `count` fds (0 when the
    /// kernel does not count them): the table handed back to be shared when it
    /// is large, else decided here.
    #[allow(clippy::result_large_err)]
    fn first_pass(
        &self,
        plan: &Plan,
        i: usize,
        fd_dir: OwnedFd,
        count: usize,
    ) -> std::result::Result<Option<Arc<SharedTable>>, Outcome> {
        let pid = plan.pids[i];
        let select = &plan.select;
        if count > SHARE_FROM && self.ranges_ok(&fd_dir) {
            return Ok(Some(Arc::new(SharedTable {
                index: i,
                pid,
                fd_dir,
                ranges: Blocks::new(BlockSource::Ranges { tried_below: count }, SHARED_BLOCK),
                settled: AtomicBool::new(false),
                progress: Mutex::default(),
            })));
        }
        // The offset check needs two fds to compare; one is listed whole.
        let may_match = if count > 1 && self.ranges_ok(&fd_dir) {
            select.counted_table_may_match(pid, &fd_dir, count)
        } else {
            select.table_may_match(pid, &fd_dir)
        };
        drop(fd_dir);
        Err((
            i,
            match may_match {
                Ok(TableMatch::Found) => self.matched(plan, pid),
                Ok(TableMatch::ThroughThreads) => describe(pid, self.q, select, &plan.source),
                Ok(TableMatch::None) => Ok(None),
                Err(e) => Err(e),
            },
        ))
    }

    /// A process the first pass found a match in.
    fn matched(&self, plan: &Plan, pid: Pid) -> Result<Option<ProcessFds>> {
        if self.q.pids_only && plan.select.first_pass_is_exact() {
            return Ok(Some(ProcessFds {
                pid,
                command: String::new(),
                command_bytes: None,
                process: None,
                fds: Vec::new(),
            }));
        }
        describe(pid, self.q, &plan.select, &plan.source)
    }

    /// `/proc/PID/NAME`, by a stat relative to `/proc`.
    fn proc_stat(&self, pid: Pid, name: &str) -> rustix::io::Result<rustix::fs::Stat> {
        let proc_root = self.proc_root.get_or_init(|| open_proc("/proc"));
        let path = format!("{pid}/{name}");
        match proc_root {
            Some(root) => statat(root, path, AtFlags::empty()),
            None => statat(rustix::fs::CWD, format!("/proc/{path}"), AtFlags::empty()),
        }
    }

    fn counts_fds(&self) -> bool {
        *self.counts_fds.get_or_init(|| {
            // Our fd directory, while open, holds at least itself.
            rustix::fs::open(
                "/proc/self/fd",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .and_then(|d| rustix::fs::fstat(&d))
            .is_ok_and(|st| st.st_size > 0)
        })
    }

    fn ranges_ok(&self, fd_dir: &OwnedFd) -> bool {
        if let Some(&ok) = self.ranges_ok.get() {
            return ok;
        }
        // A table that cannot be read (its process exited, or refuses us) says
        // nothing about the kernel: only an answer is kept for the scan.
        match crate::procfs::fd_offsets_are_numbers(fd_dir.as_fd()) {
            Ok(ok) => *self.ranges_ok.get_or_init(|| ok),
            Err(_) => false,
        }
    }

    /// Claims, lists and checks one range of a shared table: the process's
    /// outcome when this was the table's last range, and whether no range is
    /// left to claim.
    fn check_range(
        &self,
        plan: &Plan,
        table: &SharedTable,
        own_dir: &mut OwnDir,
    ) -> (Option<Outcome>, bool) {
        let lock = || table.progress.lock().unwrap_or_else(|p| p.into_inner());
        lock().in_flight += 1;
        let claimed = if table.settled.load(Ordering::Relaxed) {
            Ok(None)
        } else {
            self.claim_range(table, own_dir)
        };
        let (more, result) = match claimed {
            Ok(Some((_, numbers))) => (
                true,
                plan.select.any_may_match(
                    table.pid,
                    table.fd_dir.as_fd(),
                    numbers,
                    Some(&table.settled),
                ),
            ),
            Ok(None) => (false, Ok(false)),
            Err(e) => (false, Err(e)),
        };
        let mut progress = lock();
        progress.in_flight -= 1;
        match result {
            Ok(false) => {}
            Ok(true) => table.settled.store(true, Ordering::Relaxed),
            Err(e) => {
                progress.error.get_or_insert(e);
                table.settled.store(true, Ordering::Relaxed);
            }
        }
        progress.exhausted |= !more;
        if !progress.exhausted || progress.in_flight > 0 || progress.finished {
            return (None, !more);
        }
        // Every claimed range is checked and none is left: `settled` and
        // `error` are final.
        progress.finished = true;
        let error = progress.error.take();
        drop(progress);
        let outcome = match error {
            Some(e) => Err(e),
            None if table.settled.load(Ordering::Relaxed) => self.matched(plan, table.pid),
            // The ranges were read through the leader, which may have exited
            // since while its threads hold the table on: read it through them.
            None if super::leader_exited(table.fd_dir.as_fd()) => {
                describe(table.pid, self.q, &plan.select, &plan.source)
            }
            None => Ok(None),
        };
        (Some((table.index, outcome)), true)
    }

    /// The next range of `table` with at least one fd, listed through this
    /// worker's own handle on its fd directory.
    fn claim_range(
        &self,
        table: &SharedTable,
        own_dir: &mut OwnDir,
    ) -> Result<Option<(usize, Vec<i32>)>> {
        let pid = table.pid;
        if own_dir.as_ref().is_none_or(|(i, _)| *i != table.index) {
            let dir = openat(
                &table.fd_dir,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| super::proc_error(pid, "open /proc/PID/fd", e))?;
            *own_dir = Some((table.index, dir));
        }
        let dir = own_dir.as_ref().map(|(_, d)| d.as_fd());
        table
            .ranges
            .claim(dir)
            .map_err(|e| super::proc_error(pid, "read /proc/PID/fd", e))
    }
}

/// The scan threads for `cores` cores: one per core, up to 8, and no more than
/// the processes the user `named` (each is described whole by one thread, which
/// spreads a large table over the cores itself).
fn scan_threads(cores: usize, named: Option<usize>) -> usize {
    cores.clamp(1, 8).min(named.unwrap_or(usize::MAX).max(1))
}

fn io_to_proc(pid: Pid, e: std::io::Error) -> Error {
    let errno = rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO);
    super::proc_error(pid, "read /proc/PID", errno)
}

/// Every process id in `/proc`, but ours.
fn all_pids() -> Vec<Pid> {
    let me = std::process::id() as Pid;
    let mut pids = crate::procfs::pids().unwrap_or_default();
    pids.retain(|&p| p != me);
    pids
}

/// One key per network namespace: the device and inode of `/proc/PID/ns/net`.
fn netns_of(proc_dir: &OwnedFd) -> Option<(u64, u64)> {
    statat(proc_dir, "ns/net", AtFlags::empty())
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

fn open_proc(dir: &str) -> Option<OwnedFd> {
    openat(
        rustix::fs::CWD,
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()
}

/// `/proc/PID`, or for a process whose leader exited (a zombie leader has no
/// namespaces left) `/proc/PID/task/TID` of a live thread, with the stat of its
/// `ns/net`.
fn netns_dir(pid: Pid) -> Option<(rustix::fs::Stat, String)> {
    let base = format!("/proc/{pid}");
    match rustix::fs::stat(format!("{base}/ns/net")) {
        Ok(st) => return Some((st, base)),
        // Only a leader that exited is worth a look at the threads; a process we
        // may not read (EACCES) is skipped later anyway.
        Err(rustix::io::Errno::NOENT) => {}
        Err(_) => return None,
    }
    crate::procfs::tasks(pid)
        .ok()?
        .into_iter()
        .filter(|&tid| tid != pid)
        .find_map(|tid| {
            let base = format!("/proc/{pid}/task/{tid}");
            let st = rustix::fs::stat(format!("{base}/ns/net")).ok()?;
            Some((st, base))
        })
}

/// Calls `each` with one process of every network namespace among `pids` and its
/// `/proc/PID` directory.
fn for_each_netns(pids: &[Pid], mut each: impl FnMut(Pid, &OwnedFd)) {
    let mut seen = std::collections::HashSet::new();
    for &pid in pids {
        // One stat per process; the /proc directory is opened once per namespace.
        let Some((st, base)) = netns_dir(pid) else {
            continue; // not ours to read; the process is skipped later anyway
        };
        if !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        if let Some(proc_dir) = open_proc(&base) {
            each(pid, &proc_dir);
        }
    }
}

/// The unix sockets bound to the socket file `(dev, ino)`, and those accepted on
/// them, across the network namespaces of `pids`, by inode.
fn bound_sockets(pids: &[Pid], dev: u64, ino: u64) -> HashMap<u64, SocketInfo> {
    let mut found = HashMap::new();
    for_each_netns(pids, |pid, proc_dir| {
        match sock_diag::socket_in(proc_dir).and_then(|s| unix_diag::bound_to(&s, dev, ino)) {
            Ok(socks) => found.extend(socks.into_iter().map(|s| (s.inode, s.info))),
            Err(e) => {
                tracing::debug!(pid, error = %e, "unix_diag refused; no socket bound to the path found there")
            }
        }
    });
    found
}

/// The sockets a port or listening query asks for, across the network namespaces
/// of `pids`, by inode (socket inodes are unique across namespaces).
fn matching_sockets(pids: &[Pid], q: &Query) -> HashMap<u64, SocketInfo> {
    let mut found = HashMap::new();
    for_each_netns(pids, |pid, proc_dir| {
        let from_diag = sock_diag::socket_in(proc_dir).and_then(|sock| diag_matches(&sock, q));
        let socks = match from_diag {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(pid, error = %e, "sock_diag refused; filtering the /proc tables");
                match SocketTable::load(pid, proc_dir) {
                    Ok(t) => t.into_map(),
                    Err(_) => return,
                }
            }
        };
        found.extend(socks.into_iter().filter(|(_, s)| matches(s, q)));
    });
    found
}

fn diag_matches(sock: &OwnedFd, q: &Query) -> std::io::Result<HashMap<u64, SocketInfo>> {
    let mut out = HashMap::new();
    let (tcp_states, udp_states) = if q.listening {
        // A bound, unconnected UDP socket is in TCP_CLOSE (7).
        (inet_diag::STATES_LISTEN, 1 << 7)
    } else {
        (inet_diag::STATES_WITH_INODE, inet_diag::STATES_ALL)
    };
    let mut shared = std::collections::HashSet::new();
    let socks = inet_diag::dump_tcp(sock, [true, true], tcp_states, q.port)?;
    inet_diag::insert_all(&mut out, socks, &mut shared);
    let socks = inet_diag::dump_udp(sock, [true, true], udp_states, q.port)?;
    inet_diag::insert_all(&mut out, socks, &mut shared);
    inet_diag::describe_mptcp(sock, tcp_states, q.port, &mut out, &shared);
    if q.listening && q.port.is_none() {
        out.extend(
            unix_diag::dump(sock)?
                .into_iter()
                .map(|s| (s.inode, s.info)),
        );
    }
    Ok(out)
}

/// The query's socket conditions, checked again in userspace: the kernel filtered
/// already when sock_diag answered, the /proc fallback did not.
fn matches(s: &SocketInfo, q: &Query) -> bool {
    let inet = matches!(s.protocol.as_deref(), Some("tcp" | "udp"));
    let port_ok = q.port.is_none_or(|p| {
        inet && [&s.local, &s.peer]
            .iter()
            .any(|e| e.as_ref().and_then(|e| e.port) == Some(p))
    });
    let listen_ok = !q.listening
        || match s.state.as_deref() {
            Some("LISTEN") => true,
            Some("UNCONN") => s
                .local
                .as_ref()
                .and_then(|e| e.port)
                .is_some_and(|p| p != 0),
            _ => false,
        };
    port_ok && listen_ok
}

/// Socket tables shared by the processes of one network namespace during a scan:
/// one sock_diag socket and one set of dumps per namespace, however many
/// processes live there.
#[derive(Default)]
pub(crate) struct NetnsTables {
    #[allow(clippy::type_complexity)]
    tables: Mutex<HashMap<(u64, u64), Arc<OnceLock<Option<Arc<SocketTable>>>>>>,
}

impl NetnsTables {
    /// Describes the sockets its holder's own namespace does not know from the
    /// tables of the other namespaces the scan read: a socket keeps the network
    /// namespace it was created in, whoever holds it (one passed over SCM_RIGHTS
    /// from a container, or kept across `setns`). Socket inodes are unique
    /// across namespaces, so an inode found elsewhere is that socket.
    fn describe_foreign_sockets(&self, processes: &mut [ProcessFds]) {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        if tables.len() < 2 {
            return;
        }
        let loaded: Vec<&SocketTable> = tables
            .values()
            .filter_map(|cell| cell.get()?.as_deref())
            .collect();
        let unknown = |e: &FdEntry| {
            e.socket
                .as_ref()
                .is_some_and(|s| s.state.is_none() && s.local.is_none() && s.peer.is_none())
        };
        for e in processes
            .iter_mut()
            .flat_map(|p| p.fds.iter_mut())
            .filter(|e| unknown(e))
        {
            if let Some(info) = e
                .inode
                .and_then(|ino| loaded.iter().find_map(|t| t.by_inode.get(&ino)))
            {
                e.socket = Some(info.clone());
            }
        }
    }

    pub(crate) fn get(
        &self,
        pid: Pid,
        proc_dir: &OwnedFd,
        fd_dir: &OwnedFd,
        held: &[(u64, TargetFd)],
    ) -> Result<Arc<SocketTable>> {
        let per_process = || SocketTable::load_for(pid, proc_dir, fd_dir, held).map(Arc::new);
        let Some(ns) = netns_of(proc_dir) else {
            return per_process();
        };
        let cell = {
            let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(tables.entry(ns).or_default())
        };
        match cell.get_or_init(|| SocketTable::load(pid, proc_dir).ok().map(Arc::new)) {
            Some(t) => Ok(Arc::clone(t)),
            // The process that loaded first vanished meanwhile; ask for this one.
            None => per_process(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fdgrab_testkit::Target;
    use std::os::unix::fs::MetadataExt;

    /// Holds COUNT descriptors of /dev/null, of which the one at index AT (if
    /// below COUNT) is PATH instead; with HIGH (if not negative), PATH is also held
    /// as fd HIGH, far past the others; with HOLES, every third descriptor but the
    /// one at AT is closed again. Reports the numbers still open.
    const HOLDER: &str = r#"
import json, os, resource, sys
count, at, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
high = int(sys.argv[4]) if len(sys.argv) > 4 and int(sys.argv[4]) >= 0 else None
holes = len(sys.argv) > 5
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 64, (high or 0) + 1)), hard))
fds = [os.open(path if i == at else "/dev/null", os.O_RDONLY) for i in range(count)]
target = fds[at] if at < count else None
if holes:
    for i in range(1, count, 3):
        if i != at:
            os.close(fds[i])
    fds = [fd for i, fd in enumerate(fds) if i == at or i % 3 != 1]
if high is not None:
    f = os.open(path, os.O_RDONLY); os.dup2(f, high); os.close(f); fds.append(high)
print(json.dumps({"fds": fds, "target": target}), flush=True)
sys.stdin.read()
"#;

    fn holder(count: usize, at: usize, path: &std::path::Path) -> (Target, Vec<i32>) {
        holder_with(count, at, path, None, false)
    }

    fn holder_with(
        count: usize,
        at: usize,
        path: &std::path::Path,
        high: Option<i32>,
        holes: bool,
    ) -> (Target, Vec<i32>) {
        let mut cmd = std::process::Command::new("python3");
        cmd.args(["-c", HOLDER, &count.to_string(), &at.to_string()])
            .arg(path)
            .arg(high.unwrap_or(-1).to_string())
            .args(holes.then_some("holes"));
        let t = Target::spawn_cmd(cmd);
        let fds = t.report["fds"]
            .as_array()
            .expect("fds")
            .iter()
            .map(|v| v.as_i64().expect("fd") as i32)
            .collect();
        (t, fds)
    }

    fn held_file(tag: &str) -> (std::path::PathBuf, Query) {
        let dir = std::env::temp_dir().join(format!("fdgrab-scan-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("held");
        std::fs::write(&path, b"x").expect("write");
        let m = std::fs::metadata(&path).expect("stat");
        let q = Query {
            file: Some((m.dev(), m.ino())),
            ..Query::default()
        };
        (dir, q)
    }

    fn select(q: &Query) -> Select<'_> {
        Select {
            file: q.file,
            ..Select::default()
        }
    }

    /// The plan of a scan of `pids` for `select`, each process asking for its
    /// own sockets.
    fn plan<'a>(pids: &[Pid], select: Select<'a>) -> Plan<'a> {
        Plan {
            pids: pids.to_vec(),
            select,
            source: SocketSource::PerProcess,
        }
    }

    /// A scan of `pids` whose plan is made, for driving its steps by hand.
    fn planned<'a>(pids: &[Pid], q: &'a Query) -> Scan<'a> {
        let scan = Scan::new(q, None);
        assert!(scan.plan.set(plan(pids, select(q))).is_ok());
        scan.lock().planned = true;
        scan
    }

    /// Scans `pid` and a small holder of only /dev/null with `q`'s file: the fds
    /// listed for `pid` (`None`: no match), checking the small holder has none.
    fn scan_pair(pid: Pid, q: &Query, path: &std::path::Path) -> Option<Vec<i32>> {
        let (small, _) = holder(3, 3, path);
        let pids = [pid, small.pid];
        let mut slots = Scan::new(q, None).run(|| plan(&pids, select(q)));
        assert!(
            matches!(slots[1], Some(Ok(None))),
            "the small holder holds /dev/null only"
        );
        let found = slots[0].take().expect("an outcome").expect("no error");
        found.map(|p| p.fds.iter().map(|e| e.fd.0).collect())
    }

    /// A table large enough to be shared is checked block by block on every
    /// worker; its match is found wherever it is (first block, middle, last fd),
    /// with exactly the matching descriptor, and a table without one is no match.
    #[test]
    fn a_shared_table_finds_its_match_in_any_block() {
        let (dir, q) = held_file("blocks");
        let path = dir.join("held");
        let count = 8 * SHARED_BLOCK + 5;
        for at in [0, count / 2, count - 1, count] {
            let (t, fds) = holder(count, at, &path);
            let want = fds.get(at).map(|&fd| vec![fd]);
            assert_eq!(scan_pair(t.pid, &q, &path), want, "match at index {at}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A sparse shared table: ranges with no fd are skipped, and a match far past
    /// a hole of thousands of numbers is still found.
    #[test]
    fn a_shared_table_with_a_large_hole_finds_a_match_past_it() {
        let (dir, q) = held_file("sparse");
        let path = dir.join("held");
        let count = 3 * SHARED_BLOCK;
        let high = 20 * SHARED_BLOCK as i32 + 7;
        let (t, _) = holder_with(count, count, &path, Some(high), false);
        assert_eq!(scan_pair(t.pid, &q, &path), Some(vec![high]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A table with holes below its fd count: the numbers tried in the ranges
    /// below the count find nothing in the holes, and a match is found both among
    /// them (right after a hole) and past the count, where ranges are listed.
    #[test]
    fn a_shared_table_with_holes_below_its_count() {
        let (dir, q) = held_file("holes");
        let path = dir.join("held");
        let count = 6 * SHARED_BLOCK;
        for at in [3 * SHARED_BLOCK + 2, count - 1] {
            let (t, _) = holder_with(count, at, &path, None, true);
            let open = std::fs::read_dir(format!("/proc/{}/fd", t.pid))
                .expect("fd dir")
                .count();
            let fd = t.report["target"].as_i64().expect("target") as i32;
            if at == count - 1 {
                assert!(fd as usize >= open, "fd {fd} is past the count {open}");
            }
            assert_eq!(scan_pair(t.pid, &q, &path), Some(vec![fd]), "at {at}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A small table (not shared) with holes: its numbers below the fd count
    /// are tried, then the rest is listed (from the count, or from a hole on
    /// once holes are many), so a match among them, right after a hole, past
    /// the point where tries gave way to the listing, or far past the count is
    /// found, and no other descriptor is listed.
    #[test]
    fn a_small_table_with_holes_is_checked_whole() {
        let (dir, q) = held_file("small");
        let path = dir.join("held");
        let count = SHARE_FROM / 2;
        for (at, high) in [(0, None), (7, None), (count - 2, None), (count, Some(700))] {
            let (t, fds) = holder_with(count, at, &path, high, true);
            let fd = high.unwrap_or_else(|| t.report["target"].as_i64().expect("target") as i32);
            assert!(fds.contains(&fd));
            let found = scan_pair(t.pid, &q, &path);
            assert_eq!(found, Some(vec![fd]), "at {at}, high {high:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `pids_only`: a match the first pass decides is reported by its pid
    /// alone; with a narrowing the first pass does not check (a type), the
    /// process is still described, and the narrowing holds.
    #[test]
    fn pids_only_skips_the_description_only_when_the_first_pass_decides() {
        let (dir, mut q) = held_file("pids");
        let path = dir.join("held");
        let (t, fds) = holder(5, 2, &path);
        q.pids_only = true;
        for kinds in [vec![], vec![FdKind::File], vec![FdKind::Pipe]] {
            q.kinds = kinds;
            let select = Select {
                file: q.file,
                kinds: &q.kinds,
                ..Select::default()
            };
            let (small, _) = holder(3, 3, &path);
            let pids = [t.pid, small.pid];
            let slots = Scan::new(&q, None).run(|| plan(&pids, select));
            match (q.kinds.as_slice(), &slots[0]) {
                ([], Some(Ok(Some(p)))) => {
                    assert_eq!(p.pid, t.pid);
                    assert!(p.fds.is_empty() && p.process.is_none(), "{p:?}");
                }
                ([FdKind::File], Some(Ok(Some(p)))) => {
                    let listed: Vec<i32> = p.fds.iter().map(|e| e.fd.0).collect();
                    assert_eq!(listed, [fds[2]]);
                }
                ([FdKind::Pipe], Some(Ok(None))) => {}
                (kinds, other) => panic!("{kinds:?}: {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A plan that is never made (making it panicked) lets the workers go:
    /// the panic reaches the caller instead of a scan that waits forever.
    #[test]
    fn a_scan_whose_plan_panics_ends() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let q = Query::default();
            let scan = Scan::new(&q, None);
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                scan.run(|| panic!("no plan"));
            }));
            let _ = tx.send(ran.is_err());
        });
        assert_eq!(rx.recv_timeout(fdgrab_testkit::TIMEOUT), Ok(true));
    }

    /// Shares the table of `scan`'s only process, checks its first range, runs
    /// `meanwhile`, then checks the other ranges: the outcomes.
    fn first_range_then(scan: &Scan, count: usize, meanwhile: impl FnOnce()) -> Vec<Outcome> {
        let plan = scan.plan.get().expect("a plan");
        let Ok(Some(table)) = scan.process(plan, 0) else {
            panic!("a table of {count} fds is shared");
        };
        let mut own_dir = None;
        let (outcome, exhausted) = scan.check_range(plan, &table, &mut own_dir);
        assert!(outcome.is_none() && !exhausted, "more ranges to go");
        meanwhile();
        let mut outcomes = Vec::new();
        for _ in 0..count {
            let (outcome, exhausted) = scan.check_range(plan, &table, &mut own_dir);
            outcomes.extend(outcome);
            if exhausted {
                break;
            }
        }
        outcomes
    }

    /// Writes `line` to the target's stdin.
    fn tell(t: &mut Target, line: &[u8]) {
        use std::io::Write;
        let stdin = t.stdin.as_mut().expect("stdin");
        stdin.write_all(line).expect("write to the target");
        stdin.flush().expect("flush");
    }

    /// A process that exits while its shared table is being checked ends as "no
    /// such process" (which a run reports as skipped), whether its match was
    /// found before it exited or would have been in a later range: never as a
    /// process that holds nothing.
    #[test]
    fn a_shared_table_whose_process_exits_mid_scan() {
        let (dir, q) = held_file("exit");
        let path = dir.join("held");
        let count = 4 * SHARED_BLOCK + 5;
        for at in [0, count - 1] {
            let (mut t, _) = holder(count, at, &path);
            let pids = [t.pid];
            let scan = planned(&pids, &q);
            let outcomes = first_range_then(&scan, count, || {
                t.child.kill().expect("kill");
                t.child.wait().expect("reap");
            });
            match &outcomes[..] {
                [(0, Err(Error::NoSuchProcess { pid }))] => assert_eq!(*pid, t.pid),
                other => panic!("match at {at}: {other:?}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Holds COUNT descriptors of /dev/null, the last of them PATH, and a second
    /// thread; on a line on stdin the leader exits (pthread_exit), and the thread
    /// keeps the table alive.
    const LEADER_EXITS: &str = r#"
import ctypes, json, os, resource, sys, threading
count, path = int(sys.argv[1]), sys.argv[2]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 64)), hard))
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(count - 1)]
fds.append(os.open(path, os.O_RDONLY))
threading.Thread(target=threading.Event().wait).start()
print(json.dumps({"target": fds[-1]}), flush=True)
sys.stdin.readline()
ctypes.CDLL(None).pthread_exit(None)
"#;

    /// A LEADER_EXITS holder of COUNT fds, the last of them on `file`.
    fn leader_exits(count: usize, file: &std::path::Path) -> Target {
        let mut cmd = std::process::Command::new("python3");
        cmd.args(["-c", LEADER_EXITS, &count.to_string()]).arg(file);
        Target::spawn_cmd(cmd)
    }

    /// `held_file`, and another file beside it that the query does not ask
    /// for: each with whether it is the query's.
    fn held_and_other(tag: &str) -> (std::path::PathBuf, Query, [(std::path::PathBuf, bool); 2]) {
        let (dir, q) = held_file(tag);
        let other = dir.join("other");
        std::fs::write(&other, b"y").expect("write");
        let files = [(dir.join("held"), true), (other, false)];
        (dir, q, files)
    }

    /// A holder whose leader exits while its table is checked (after the first
    /// pass has started, for a shared table, a small counted one, and from
    /// before it is opened), while another thread keeps holding the file: still a
    /// holder, found through the live thread, as when the leader exited before.
    #[test]
    fn a_holder_whose_leader_exits_mid_scan_is_still_found() {
        let (dir, q) = held_file("leader");
        let path = dir.join("held");
        for count in [4 * SHARED_BLOCK + 5, SHARE_FROM / 2] {
            let mut t = leader_exits(count, &path);
            let fd = t.report["target"].as_i64().expect("target") as i32;
            let pids = [t.pid];
            let scan = planned(&pids, &q);
            let exit_leader = |t: &mut Target| {
                tell(t, b"exit\n");
                fdgrab_testkit::wait_leader_zombie(t.pid);
            };
            let outcome = if count > SHARE_FROM {
                let outcomes = first_range_then(&scan, count, || exit_leader(&mut t));
                match <[Outcome; 1]>::try_from(outcomes) {
                    Ok([(0, outcome)]) => outcome,
                    other => panic!("one outcome: {other:?}"),
                }
            } else {
                // The whole first pass of a small table is one call: the leader
                // exits right after its fd directory was counted, which the
                // same call does first, so exit it before and check that the
                // scan still finds the holder (the fast path for empty tables).
                exit_leader(&mut t);
                match scan.process(scan.plan.get().expect("a plan"), 0) {
                    Err((0, outcome)) => outcome,
                    _ => panic!("a small table is decided at once"),
                }
            };
            let found = outcome
                .expect("no error")
                .unwrap_or_else(|| panic!("count {count}: not found"));
            let fds: Vec<i32> = found.fds.iter().map(|e| e.fd.0).collect();
            assert_eq!(fds, [fd], "count {count}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A leader that exits after its table was counted (and before the first
    /// pass tries it) leaves a directory with nothing in it: the counted first
    /// pass says the table is seen through its threads, not that it holds no
    /// match, and the process is then described through a live thread, which
    /// finds the file; a table without it is still no match. The count is taken,
    /// the leader exits, then the pass runs on the stale count: no timing.
    #[test]
    fn a_leader_that_exits_after_its_table_was_counted_is_read_through_its_threads() {
        let (dir, q, files) = held_and_other("counted");
        for (file, holds) in files {
            let mut t = leader_exits(8, &file);
            let fd = t.report["target"].as_i64().expect("target") as i32;
            let pid = t.pid;
            let q = q.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let ran = std::thread::spawn(move || {
                let pids = [pid];
                let scan = planned(&pids, &q);
                let plan = scan.plan.get().expect("a plan");
                let fd_dir = plan.select.open_fd_dir(pid).expect("fd dir");
                let count = rustix::fs::fstat(&fd_dir).expect("fstat").st_size as usize;
                assert!(
                    count > 1 && count <= SHARE_FROM,
                    "a small counted table: {count}"
                );
                let fd_dir2 = plan.select.open_fd_dir(pid).expect("fd dir");
                tell(&mut t, b"exit\n");
                fdgrab_testkit::wait_leader_zombie(pid);
                let seen = plan.select.counted_table_may_match(pid, &fd_dir2, count);
                let outcome = match scan.first_pass(plan, 0, fd_dir, count) {
                    Err((0, outcome)) => outcome,
                    _ => panic!("a small table is decided at once"),
                };
                let _ = tx.send((seen.expect("first pass"), outcome.expect("no error")));
                drop(t);
            });
            let (seen, found) = rx
                .recv_timeout(fdgrab_testkit::TIMEOUT)
                .unwrap_or_else(|_| panic!("the scan of {} ended", file.display()));
            assert_eq!(seen, TableMatch::ThroughThreads);
            let fds: Option<Vec<i32>> = found.map(|p| p.fds.iter().map(|e| e.fd.0).collect());
            assert_eq!(fds, holds.then(|| vec![fd]), "holds {}", file.display());
            ran.join().expect("scan thread");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Named processes need no more scan threads than there are of them (each
    /// is described whole by one thread); every process: one per core, up to 8.
    #[test]
    fn named_pids_cap_the_scan_threads() {
        assert_eq!(scan_threads(8, Some(2)), 2);
        assert_eq!(scan_threads(8, Some(20)), 8);
        assert_eq!(scan_threads(2, Some(3)), 2);
        assert_eq!(scan_threads(16, None), 8);
        assert_eq!(scan_threads(0, Some(0)), 1);
    }

    /// A table whose leader has exited lists no fd in its own directory: the first
    /// pass over it knows nothing (its threads still share the table), which is
    /// not a match. Taken for one, `--pids` printed the process unchecked on
    /// kernels that count no fds (before 6.2), and whenever the leader exited
    /// between the count and the listing. `process` then describes it through a
    /// thread, which finds the file.
    #[test]
    fn an_exited_leaders_table_is_seen_through_its_threads_not_matched() {
        let (dir, q, files) = held_and_other("through");
        for (file, holds) in files {
            let mut t = leader_exits(4, &file);
            tell(&mut t, b"exit\n");
            fdgrab_testkit::wait_leader_zombie(t.pid);
            let pids = [t.pid];
            let scan = planned(&pids, &q);
            let plan = scan.plan.get().expect("a plan");
            let fd_dir = plan.select.open_fd_dir(t.pid).expect("fd dir");
            assert_eq!(
                plan.select
                    .table_may_match(t.pid, &fd_dir)
                    .expect("first pass"),
                TableMatch::ThroughThreads
            );
            drop(fd_dir);
            let found = match scan.process(plan, 0) {
                Err((0, outcome)) => outcome.expect("no error"),
                _ => panic!("an empty table is decided at once"),
            };
            assert_eq!(
                found.is_some(),
                holds,
                "holds {}: {found:?}",
                file.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Holds COUNT descriptors of /dev/null (close-on-exec) and, past them, PATH
    /// (kept across exec); on a line on stdin it becomes `sleep`.
    const EXECS: &str = r#"
import json, os, resource, sys
count, path = int(sys.argv[1]), sys.argv[2]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 64)), hard))
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(count - 1)]
f = os.open(path, os.O_RDONLY); os.set_inheritable(f, True)
print(json.dumps({"target": f}), flush=True)
sys.stdin.readline()
os.execv("/bin/sleep", ["sleep", "30"])
"#;

    /// A process that execs while its shared table is checked: the descriptors
    /// closed on exec are gone, and the one it keeps is still found, with exactly
    /// that descriptor listed.
    #[test]
    fn a_shared_table_whose_process_execs_mid_scan() {
        let (dir, q) = held_file("exec");
        let path = dir.join("held");
        let count = 4 * SHARED_BLOCK + 5;
        let mut cmd = std::process::Command::new("python3");
        cmd.args(["-c", EXECS, &count.to_string()]).arg(&path);
        let mut t = Target::spawn_cmd(cmd);
        let fd = t.report["target"].as_i64().expect("target") as i32;
        let pids = [t.pid];
        let scan = planned(&pids, &q);
        let outcomes = first_range_then(&scan, count, || {
            tell(&mut t, b"exec\n");
            let deadline = std::time::Instant::now() + fdgrab_testkit::TIMEOUT;
            while std::fs::read_to_string(format!("/proc/{}/comm", t.pid))
                .ok()
                .as_deref()
                != Some("sleep\n")
            {
                assert!(std::time::Instant::now() < deadline, "no exec");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        match &outcomes[..] {
            [(0, Ok(Some(p)))] => {
                let fds: Vec<i32> = p.fds.iter().map(|e| e.fd.0).collect();
                assert_eq!(fds, [fd]);
                assert_eq!(p.command, "sleep");
            }
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
