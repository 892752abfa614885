//! `process_vm_readv` in a process of its own, which can be killed.
//!
//! A read of another process's memory that faults on a page a userfaultfd or
//! FUSE server never fills sleeps in the kernel `TASK_KILLABLE`: no signal but a
//! fatal one ends it. A fatal signal ends a whole thread group, so a thread of
//! ours stuck that way can only be abandoned, never ended. A child that shares
//! our memory (`CLONE_VM`) but is a thread group of its own (no `CLONE_THREAD`)
//! can be sent `SIGKILL` alone: the read then returns at once and the child dies
//! (measured on the 6.18 kernel here: gone 0.2 ms after the signal). That is
//! what [`read`] does, in a reader each calling thread keeps: the thread puts a
//! request (tid, address, length) in a slot they share and wakes the reader on
//! a futex; the reader copies into the slot's own buffer, says DONE and sleeps
//! until the next request; the thread then copies the bytes out. Past the
//! deadline the thread kills the reader; the next read starts a fresh one.
//!
//! **A reader that SIGKILL does not end.** A FUSE request its daemon has
//! already taken is waited out uninterruptibly (`request_wait_answer`: once the
//! request is in user space, even a fatal signal only marks it): a page of a
//! FUSE file the caller maps, read with readahead off or without
//! `FUSE_ASYNC_READ`, keeps a killed reader alive until the daemon answers or
//! its connection ends. So a killed reader is waited for [`KILL_GRACE`] at most;
//! one still alive then is *buried*: handed, with the slot it copies into and the
//! stack it runs on, to a reaper thread that reaps it without waiting
//! (`WNOHANG`) whenever it has died, and frees both only then. The calling
//! thread's buffer was never the reader's to write, so it is free the moment
//! [`read`] returns, and the thread carries on with a fresh reader. Buried
//! readers are bounded per tenant (whoever the caller names: the agent's pod
//! or container): a read that would need a new reader gets
//! [`KillableError::Stuck`] at once, without starting one, when its tenant has
//! [`MAX_BURIED_PER_TENANT`] buried. The process-wide bound follows from the
//! tenants a node may run ([`set_max_tenants`]): up to
//! [`MAX_BURIED_PER_TENANT`] per tenant it may run, every tenant below its
//! share gets a reader, so that tenants at their shares cannot deny one to
//! another; past that (more tenants hold stuck readers than it runs: tenants
//! gone whose file system lives on), only a tenant with none buried, up to one
//! more per tenant it may run; past that, nobody. Each tenant counts towards
//! these up to its share only: the checks are made when a reader starts, so
//! a tenant whose threads' readers all stall at once may leave one per
//! thread, past its share, and those must not spend the others' room.
//!
//! A thread's reader is killed and reaped when the thread exits (its
//! thread-local's destructor), and dies with the thread in any case (its
//! parent-death signal). A child of `fork` inherits the thread-local but not the
//! reader, so a reader is used and killed only by the process that started it.
//!
//! A reader per read (a `clone`, an exit and a reap each time) cost 40–47 µs and
//! pushed a victim container's p99 bind latency to 7–63× its quiet value once
//! every container read killably (the `agent_start` bench's "16 userfaultfd
//! stalls"): a new task must first be scheduled, on a loaded machine behind
//! everything else. A hand-off to a reader that is already there is a futex wake
//! and wait, about 6 µs against 1 µs in the calling thread, once the reader is
//! pinned to the CPU the thread runs on (woken on the other, idle, CPU of a VM
//! it cost 49 µs); callers still use it only where a stalled read must end (see
//! [`crate::supervise`]'s agent).
//!
//! The reader runs one function that makes raw system calls only (its
//! parent-death signal, dropping its share of our descriptor table, futex
//! waits and wakes, the read): it shares our memory
//! and, without `CLONE_SETTLS`, the calling thread's TLS, so it must never touch
//! `errno`, the allocator, a lock or a panic. Its exit signal is 0, so only a
//! wait with `__WALL` sees it: a `waitpid(-1)` elsewhere in the process cannot
//! reap it (and reuse its pid) behind our back.

use crate::clone_vm::{clone_with_signals_blocked, Stack};
use rustix::io::Errno;
use std::cell::{RefCell, UnsafeCell};
use std::ffi::{c_int, c_void};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most bytes one [`read`] copies: the reader copies into a buffer of its
/// slot of this size (a sockaddr is at most 128 bytes).
pub(crate) const MAX_READ: usize = 128;

/// How long a killed reader is waited for before it is buried: one blocked on
/// a userfaultfd page or a FUSE request not yet taken is gone in about 0.2 ms.
pub const KILL_GRACE: Duration = Duration::from_millis(20);

/// Buried readers (killed, not yet dead) of one tenant at most: past that its
/// reads that need a new reader are refused at once ([`KillableError::Stuck`]).
pub const MAX_BURIED_PER_TENANT: usize = 4;

/// Tenants a process serves at most, unless told ([`set_max_tenants`]): the
/// kubelet's default `maxPods`.
pub const DEFAULT_MAX_TENANTS: usize = 110;

/// Tenants the process may serve at once ([`set_max_tenants`]), which sizes
/// the process-wide bound on buried readers: each is a task of ours (a pid,
/// its kernel stack, a pidfd and a stack mapping) for as long as its FUSE
/// daemon does not answer, which may be for ever.
static MAX_TENANTS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_TENANTS);

/// Sets how many tenants (the agent's pods) the process serves at most
/// (at least 1). Buried readers are then bounded by
/// [`MAX_BURIED_PER_TENANT`]` + 1` per tenant it may serve (see the module docs).
pub fn set_max_tenants(n: usize) {
    MAX_TENANTS.store(n.max(1), Ordering::Relaxed);
}

/// The most buried readers from which on only a tenant with none gets a
/// reader, and the most from which on nobody does (each tenant counted up to
/// its share: see [`may_start`]).
fn buried_caps() -> (usize, usize) {
    let tenants = MAX_TENANTS.load(Ordering::Relaxed);
    let shares = tenants.saturating_mul(MAX_BURIED_PER_TENANT);
    (shares, shares.saturating_add(tenants))
}

/// Buried readers, each counted, from which on nobody gets a reader: twice
/// the ceiling. Counted up to their shares, tenants whose threads' readers
/// stalled all at once (one per thread, past the share) could otherwise
/// churn: a tenant of many threads stalls them all, goes, and a new one does
/// the same, without bound while the capped count stays low.
fn hard_cap() -> usize {
    buried_caps().1.saturating_mul(2)
}

/// How often the reaper looks for buried readers that have died.
const REAP_EVERY: Duration = Duration::from_millis(25);

/// Why a killable read gave no bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillableError {
    /// `process_vm_readv` failed (a short read is `EFAULT`), or the reader could
    /// not be started.
    Read(Errno),
    /// The deadline passed; the reader was killed (and reaped, or buried: see
    /// the module docs).
    TimedOut,
    /// No reader was started: the tenant has as many buried readers as it may
    /// ([`MAX_BURIED_PER_TENANT`], or fewer once the process holds its bound:
    /// see the module docs), that is earlier reads of its memory are still
    /// stuck.
    Stuck,
}

/// [`Slot::state`]: no request yet.
const IDLE: u32 = 0;
/// [`Slot::state`]: a request waits for the reader.
const ASKED: u32 = 1;
/// [`Slot::state`]: the reader answered the last request and touches nothing
/// but this word until the next.
const DONE: u32 = 2;

/// What the calling thread and its reader share: one request at a time. It is
/// on the heap, freed only once the reader is reaped.
#[repr(C)]
struct Slot {
    /// A futex word: [`IDLE`], [`ASKED`] or [`DONE`].
    state: AtomicU32,
    pid: AtomicUsize,
    remote: AtomicUsize,
    len: AtomicUsize,
    result: AtomicIsize,
    /// Our pid: the reader's parent while it lives.
    parent: AtomicUsize,
    /// Where the reader copies to: the reader's own, so that one that outlives
    /// its read (buried) never writes memory the caller has taken back. Read
    /// by the calling thread only after DONE, written by the reader only
    /// between ASKED and DONE.
    bytes: UnsafeCell<[u8; MAX_READ]>,
}

/// A reader process that serves one thread's reads one after another, so that
/// a read costs a hand-off between two tasks (a few µs) instead of a `clone`,
/// an exit and a reap each. It is killed when a read outlives its deadline
/// (the next read starts a fresh one) and when its thread exits.
struct Reader {
    /// The process that started it: a child of `fork` inherits the thread's
    /// `Reader` but not the reader, which must be neither used nor killed from
    /// there.
    owner: u32,
    /// Whose reads it serves (see [`read`]): whose share a burial spends.
    tenant: u64,
    /// Reaped already (by the reaper, without waiting): its drop frees only.
    reaped: bool,
    pidfd: OwnedFd,
    /// The reader's pid, to pin it.
    pid: i32,
    /// The CPU it is pinned to (-1: none yet).
    cpu: std::cell::Cell<i32>,
    slot: Box<Slot>,
    /// Given back once the reader is reaped.
    stack: Option<Stack>,
}

thread_local! {
    /// The calling thread's reader, once it read killably.
    static READER: RefCell<Option<Reader>> = const { RefCell::new(None) };
}

impl Reader {
    fn start(tenant: u64) -> Result<Reader, Errno> {
        let stack = Stack::take()?;
        let slot = Box::new(Slot {
            state: AtomicU32::new(IDLE),
            pid: AtomicUsize::new(0),
            remote: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            result: AtomicIsize::new(0),
            parent: AtomicUsize::new(std::process::id() as usize),
            bytes: UnsafeCell::new([0; MAX_READ]),
        });
        let mut pidfd: c_int = -1;
        // Shared memory, files, fs and signal handlers: nothing to copy. Exit signal 0.
        let flags = libc::CLONE_VM
            | libc::CLONE_FILES
            | libc::CLONE_FS
            | libc::CLONE_SIGHAND
            | libc::CLONE_PIDFD;
        // SAFETY: `reader_main` makes raw system calls and atomic accesses to
        // the slot only (no TLS, allocation, locks or unwinding). `stack` and
        // `slot` live in the `Reader`, which reaps the child before freeing
        // either (its `Drop`).
        let spawned = unsafe {
            clone_with_signals_blocked(
                reader_main,
                &stack,
                flags,
                (&*slot as *const Slot).cast_mut().cast(),
                &mut pidfd,
            )
        };
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                stack.give_back();
                return Err(e);
            }
        };
        // SAFETY: CLONE_PIDFD wrote a fresh (close-on-exec) pidfd of the child,
        // owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        Ok(Reader {
            owner: std::process::id(),
            tenant,
            reaped: false,
            pidfd,
            pid,
            cpu: std::cell::Cell::new(-1),
            slot,
            stack: Some(stack),
        })
    }

    /// One read of at most [`MAX_READ`] bytes; `None` when the deadline passed
    /// first (the reader must then be retired: it is still inside the read).
    fn read(&self, tid: i32, addr: u64, buf: &mut [u8], deadline: Instant) -> Option<isize> {
        self.pin_here();
        let slot = &self.slot;
        let len = buf.len().min(MAX_READ);
        slot.pid.store(tid as usize, Ordering::Relaxed);
        slot.remote.store(addr as usize, Ordering::Relaxed);
        slot.len.store(len, Ordering::Relaxed);
        slot.state.store(ASKED, Ordering::Release);
        futex(&slot.state, libc::FUTEX_WAKE, 1, None);
        loop {
            if slot.state.load(Ordering::Acquire) == DONE {
                let r = slot.result.load(Ordering::Relaxed);
                // SAFETY: the reader wrote the bytes before it said DONE and
                // touches them no more until the next ASKED, which only this
                // thread sets.
                let bytes = unsafe { &*slot.bytes.get() };
                let got = usize::try_from(r).unwrap_or(0).min(len);
                buf[..got].copy_from_slice(&bytes[..got]);
                return Some(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let ts = libc::timespec {
                // `as _`: time_t's Rust alias differs between the C libraries. A
                // wait cut at an hour only loops again towards the deadline.
                tv_sec: left.as_secs().min(3600) as _,
                tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
            };
            futex(&slot.state, libc::FUTEX_WAIT, ASKED, Some(&ts));
        }
    }
}

impl Reader {
    /// Pins the reader to the CPU this thread runs on, which it leaves to wait
    /// for the answer: the wake-up then needs no other CPU, which in a VM
    /// with an idle one costs some 40 µs (its way out of idle). Only when the
    /// thread moved; a failure (a CPU outside our cpuset) only costs time.
    fn pin_here(&self) {
        // SAFETY: no arguments.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu < 0 || cpu == self.cpu.get() || cpu as usize >= libc::CPU_SETSIZE as usize {
            return;
        }
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size given; the pid is our
        // reader's, alive until reaped.
        let r = unsafe {
            libc::sched_setaffinity(self.pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        self.cpu.set(if r == 0 { cpu } else { -1 });
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.owner != std::process::id() {
            // Inherited through `fork`: the reader is our parent's (and shares
            // its memory, not ours); only our copies of the pidfd, slot and
            // stack go.
            return;
        }
        if self.reaped {
            if let Some(stack) = self.stack.take() {
                stack.give_back();
            }
            return;
        }
        // Idle (waiting on its futex; one stalled in a read was retired, not
        // kept): a fatal signal ends it at once (ESRCH only if it died
        // meanwhile).
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
        reap(&self.pidfd);
        // Reaped: nothing runs on the stack or reads the slot any more.
        if let Some(stack) = self.stack.take() {
            stack.give_back();
        }
    }
}

/// A private futex operation on `word` (the reader shares our memory, so
/// private futexes reach it); the result does not matter to the callers, who
/// look at the word again.
fn futex(word: &AtomicU32, op: c_int, val: u32, timeout: Option<&libc::timespec>) {
    let ts = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the call; `ts` is null or a
    // valid timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            ts,
        )
    };
}

/// Copies `buf.len()` bytes (at most [`MAX_READ`]: more is `EINVAL`) at
/// `addr` out of thread `tid`'s process, in this thread's reader process,
/// which is killed if it has not finished by `deadline`. `tenant` names whose
/// reads these are: a reader killed but not dead counts against its share of
/// buried readers (see the module docs).
pub(crate) fn read(
    tid: i32,
    addr: u64,
    buf: &mut [u8],
    deadline: Instant,
    tenant: u64,
) -> Result<(), KillableError> {
    if buf.len() > MAX_READ {
        return Err(KillableError::Read(Errno::INVAL));
    }
    // Past the deadline already: no reader is started (or used) for nothing.
    if Instant::now() >= deadline {
        return Err(KillableError::TimedOut);
    }
    let got = READER.try_with(|cell| {
        let mut reader = cell.borrow_mut();
        if reader
            .as_ref()
            .is_some_and(|r| r.owner != std::process::id() || r.tenant != tenant)
        {
            *reader = None;
        }
        if reader.is_none() {
            if !may_start(tenant) {
                return Err(KillableError::Stuck);
            }
            *reader = Some(Reader::start(tenant).map_err(KillableError::Read)?);
        }
        let answer = reader
            .as_ref()
            .and_then(|r| r.read(tid, addr, buf, deadline));
        if answer.is_none() {
            // It never wrote `buf`; killed, it is reaped here or buried.
            if let Some(r) = reader.take() {
                retire(r);
            }
        }
        Ok(answer)
    });
    match got {
        // This thread is exiting: no reader to be had.
        Err(_) => Err(KillableError::Read(Errno::AGAIN)),
        Ok(Err(e)) => Err(e),
        Ok(Ok(None)) => Err(KillableError::TimedOut),
        Ok(Ok(Some(r))) if r < 0 => Err(KillableError::Read(Errno::from_raw_os_error(-r as i32))),
        Ok(Ok(Some(r))) if r as usize != buf.len() => Err(KillableError::Read(Errno::FAULT)),
        Ok(Ok(Some(_))) => Ok(()),
    }
}

/// Forgets this thread's reader: ends it if this process started it, else (a
/// child of `fork`) only closes the inherited pidfd. For a process about to
/// live on without reading killably, which should hold no stray pidfd. Buried
/// readers inherited from the parent are forgotten too (their pidfds closed).
pub(crate) fn drop_thread_reader() {
    let _ = READER.try_with(|cell| cell.borrow_mut().take());
    // `try_lock`: in a child of `fork` the parent's reaper may have held it.
    let inherited = match GRAVEYARD.try_lock() {
        Ok(mut g) if g.buried.iter().any(|r| r.owner != std::process::id()) => {
            // The parent's reaper thread is not ours either.
            g.reaper = false;
            std::mem::take(&mut g.buried)
        }
        _ => Vec::new(),
    };
    drop(inherited);
}

/// Readers killed but not dead yet (see the module docs), and whether the
/// reaper thread runs.
struct Graveyard {
    buried: Vec<Reader>,
    reaper: bool,
}

static GRAVEYARD: Mutex<Graveyard> = Mutex::new(Graveyard {
    buried: Vec::new(),
    reaper: false,
});

/// Whether the reaper could not be started when last wanted: then whoever
/// takes the graveyard's lock reaps.
static NO_REAPER: AtomicBool = AtomicBool::new(false);

fn graveyard() -> std::sync::MutexGuard<'static, Graveyard> {
    GRAVEYARD.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `tenant` may start a reader: it is below its share of buried
/// readers, and either the process is below the shares of the tenants it may
/// serve or (up to one more each) `tenant` has none buried. A tenant that
/// stalls no read never has one buried, so tenants at their shares can deny
/// it a reader only once more of them hold stuck readers than the process
/// serves, and then only past one more each.
fn may_start(tenant: u64) -> bool {
    let mut g = graveyard();
    if g.buried.is_empty() {
        return true;
    }
    if NO_REAPER.load(Ordering::Relaxed) {
        sweep(&mut g);
    }
    // A tenant past its share asks on each of its calls: answered first,
    // with one pass.
    let mine = g.buried.iter().filter(|r| r.tenant == tenant).count();
    let (shares, ceiling) = buried_caps();
    if mine >= MAX_BURIED_PER_TENANT {
        return false;
    }
    if g.buried.len() < shares {
        return true;
    }
    if g.buried.len() >= hard_cap() {
        return false;
    }
    // Each tenant counts up to its share only: the share is checked when a
    // reader starts, so a tenant whose workers' readers, started at once,
    // all stall leaves one per worker; counted in full, they spent the
    // others' room, and one tenant with enough workers alone denied a
    // reader to every tenant holding any.
    let mut per_tenant = std::collections::HashMap::<u64, usize>::new();
    for r in &g.buried {
        *per_tenant.entry(r.tenant).or_default() += 1;
    }
    let held: usize = per_tenant
        .values()
        .map(|&n| n.min(MAX_BURIED_PER_TENANT))
        .sum();
    held < shares || (mine == 0 && held < ceiling)
}

/// Buried readers of `tenant`, and over all tenants.
pub(crate) fn buried(tenant: u64) -> (usize, usize) {
    let g = graveyard();
    let mine = g.buried.iter().filter(|r| r.tenant == tenant).count();
    (mine, g.buried.len())
}

/// Reaps the buried readers that have died (without waiting) and frees what
/// they ran on.
fn sweep(g: &mut Graveyard) {
    g.buried.retain_mut(|r| {
        r.reaped = try_reap(&r.pidfd);
        !r.reaped
    });
}

/// Ends a reader whose read outlived its deadline: killed, then reaped if it
/// dies within [`KILL_GRACE`], else buried.
fn retire(mut r: Reader) {
    if r.owner != std::process::id() {
        return;
    }
    let _ = rustix::process::pidfd_send_signal(&r.pidfd, rustix::process::Signal::KILL);
    // A pidfd polls readable once its process has exited.
    let grace = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: KILL_GRACE.as_nanos() as _,
    };
    let mut pfd = [rustix::event::PollFd::new(
        &r.pidfd,
        rustix::event::PollFlags::IN,
    )];
    let _ = rustix::event::poll(&mut pfd, Some(&grace));
    if try_reap(&r.pidfd) {
        r.reaped = true;
        return;
    }
    tracing::warn!(
        reader = r.pid,
        tenant = r.tenant,
        "a killed reader does not die (a FUSE request its daemon took and does not answer?); reaped once it does"
    );
    let mut g = graveyard();
    g.buried.push(r);
    if !g.reaper {
        let started = std::thread::Builder::new()
            .name("fdgrab-reaper".into())
            .stack_size(64 * 1024)
            .spawn(reap_buried);
        g.reaper = started.is_ok();
        NO_REAPER.store(started.is_err(), Ordering::Relaxed);
    }
}

/// The reaper: reaps buried readers as they die, and ends once none is left.
fn reap_buried() {
    loop {
        let freed = {
            let mut g = graveyard();
            let before = g.buried.len();
            let mut dead = Vec::new();
            let mut i = 0;
            while i < g.buried.len() {
                if try_reap(&g.buried[i].pidfd) {
                    let mut r = g.buried.swap_remove(i);
                    r.reaped = true;
                    dead.push(r);
                } else {
                    i += 1;
                }
            }
            if g.buried.is_empty() {
                g.reaper = false;
                drop(g);
                drop(dead);
                tracing::debug!(reaped = before, "every buried reader reaped");
                return;
            }
            dead
        };
        // Freed outside the lock: a stack given back takes another.
        drop(freed);
        std::thread::sleep(REAP_EVERY);
    }
}

/// Reaps the child if it has exited, without waiting; whether it was reaped
/// (or is gone in any case: `ECHILD`).
fn try_reap(pidfd: &OwnedFd) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid value for the kernel to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is valid for writing; the pidfd is ours and names our
    // child. `__WALL`: its exit signal is not SIGCHLD.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_fd().as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::__WALL,
        )
    };
    if r != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD);
    }
    // WNOHANG with nothing to report leaves si_pid 0.
    // SAFETY: filled by the kernel (or still all zero).
    unsafe { info.si_pid() != 0 }
}

/// Reaps the child (blocking until it has exited).
fn reap(pidfd: &OwnedFd) {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for the kernel to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid for writing; the pidfd is ours and names our
        // child. `__WALL`: its exit signal is not SIGCHLD.
        let r = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                std::os::fd::AsRawFd::as_raw_fd(pidfd) as libc::id_t,
                &mut info,
                libc::WEXITED | libc::__WALL,
            )
        };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

extern "C" fn reader_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Slot` of the `Reader` that started us; it lives
    // until we are reaped.
    let slot = unsafe { &*(arg as *const Slot) };
    // Killed with the thread that waits for it: when that thread exits (its
    // `Reader` also kills and reaps us) or the whole agent dies, so no reader
    // outlives the agent blocked on a page, but one a kill cannot end (buried:
    // see the module docs), which outlives it holding no descriptor of ours.
    // SAFETY: integers only.
    unsafe {
        raw_syscall6(
            libc::SYS_prctl as usize,
            [
                libc::PR_SET_PDEATHSIG as usize,
                libc::SIGKILL as usize,
                0,
                0,
                0,
                0,
            ],
        )
    };
    // A descriptor table of our own, empty: a reader that outlives its kill
    // (see the module docs) and then the agent would otherwise keep every
    // descriptor of ours open (the containers' listeners, a caller's pipes)
    // for as long as it is stuck. `CLOSE_RANGE_UNSHARE` (Linux 5.9) copies
    // none of them first; without it, the table stays shared.
    // SAFETY: integers only; the range is every descriptor.
    unsafe {
        raw_syscall6(
            libc::SYS_close_range as usize,
            [
                0,
                u32::MAX as usize,
                libc::CLOSE_RANGE_UNSHARE as usize,
                0,
                0,
                0,
            ],
        )
    };
    // Our parent died before the signal was set (it is then not sent): go
    // rather than wait for requests nobody sends.
    // SAFETY: no arguments.
    let ppid = unsafe { raw_syscall6(libc::SYS_getppid as usize, [0; 6]) };
    if ppid as usize != slot.parent.load(Ordering::Relaxed) {
        return 0;
    }
    loop {
        let seen = slot.state.load(Ordering::Acquire);
        if seen != ASKED {
            // SAFETY: a private futex wait on the slot's word, no timeout.
            unsafe {
                raw_syscall6(
                    libc::SYS_futex as usize,
                    [
                        slot.state.as_ptr() as usize,
                        (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as usize,
                        seen as usize,
                        0,
                        0,
                        0,
                    ],
                )
            };
            continue;
        }
        let len = slot.len.load(Ordering::Relaxed).min(MAX_READ);
        let local = libc::iovec {
            iov_base: slot.bytes.get().cast(),
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: slot.remote.load(Ordering::Relaxed) as *mut c_void,
            iov_len: len,
        };
        // SAFETY: the iovecs describe the slot's buffer (ours until we say
        // DONE, freed only once we are reaped) and memory of the other
        // process, which the kernel checks.
        let r = unsafe {
            raw_syscall6(
                libc::SYS_process_vm_readv as usize,
                [
                    slot.pid.load(Ordering::Relaxed),
                    &local as *const libc::iovec as usize,
                    1,
                    &remote as *const libc::iovec as usize,
                    1,
                    0,
                ],
            )
        };
        slot.result.store(r, Ordering::Relaxed);
        slot.state.store(DONE, Ordering::Release);
        // SAFETY: a private futex wake on the slot's word.
        unsafe {
            raw_syscall6(
                libc::SYS_futex as usize,
                [
                    slot.state.as_ptr() as usize,
                    (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as usize,
                    1,
                    0,
                    0,
                    0,
                ],
            )
        };
    }
}

/// A system call without the C library: returns the result or `-errno`, and
/// writes no `errno` (the thread-local one would be the parent thread's).
///
/// # Safety
/// As the system call `nr` with these arguments.
#[cfg(target_arch = "x86_64")]
unsafe fn raw_syscall6(nr: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the x86-64 Linux system call convention; rcx and r11 are clobbered.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// See the x86-64 version.
///
/// # Safety
/// As the system call `nr` with these arguments.
#[cfg(target_arch = "aarch64")]
unsafe fn raw_syscall6(nr: usize, a: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the arm64 Linux system call convention (number in x8, result in x0).
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") nr,
            inlateout("x0") a[0] as isize => ret,
            in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
            options(nostack),
        );
    }
    ret
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn own_tid() -> i32 {
        rustix::thread::gettid().as_raw_nonzero().get()
    }

    /// Descriptors and children of this process (over all its threads).
    fn fds_and_children() -> (usize, usize) {
        let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
        (fds, fdgrab_testkit::children_count("self"))
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    #[test]
    fn a_read_returns_the_bytes() {
        let src = *b"the bytes a reader process copies";
        let mut buf = [0u8; 33];
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon(), 0).expect("read");
        assert_eq!(buf, src);
    }

    #[test]
    fn an_unmapped_address_is_efault() {
        let mut buf = [0u8; 16];
        assert_eq!(
            read(own_tid(), 8, &mut buf, soon(), 0),
            Err(KillableError::Read(Errno::FAULT))
        );
    }

    #[test]
    fn a_thread_that_died_is_esrch() {
        let tid = std::thread::spawn(own_tid).join().expect("thread");
        let mut buf = [0u8; 4];
        let x = 7u32;
        assert_eq!(
            read(tid, &x as *const u32 as u64, &mut buf, soon(), 0),
            Err(KillableError::Read(Errno::SRCH))
        );
    }

    /// A page registered with a userfaultfd nobody serves: the reader sleeps
    /// killably in the fault until the deadline, is killed and reaped, and
    /// leaves neither a zombie nor a descriptor.
    #[test]
    fn a_read_of_a_page_nobody_fills_is_killed_at_the_deadline() {
        let (_uffd, page) = match fdgrab_testkit::uffd::unfilled_page() {
            Ok(p) => p,
            Err(e) => return fdgrab_testkit::skip(&format!("no userfaultfd: {e}")),
        };
        let before = fds_and_children();
        let mut buf = [0u8; 16];
        let started = Instant::now();
        let deadline = started + Duration::from_millis(200);
        assert_eq!(
            read(own_tid(), page as u64, &mut buf, deadline, 0),
            Err(KillableError::TimedOut)
        );
        assert!(Instant::now() >= deadline, "not before the deadline");
        assert_eq!(fds_and_children(), before, "no zombie, no descriptor left");
        // Killed, the reader gave nothing; the page still stalls the next one.
        assert_eq!(
            read(
                own_tid(),
                page as u64,
                &mut buf,
                Instant::now() + Duration::from_millis(100),
                0
            ),
            Err(KillableError::TimedOut)
        );
        assert_eq!(fds_and_children(), before);
    }

    /// One reader serves a thread's reads one after another; thousands of
    /// reads leave no descriptor and no child beyond it.
    #[test]
    fn many_reads_leak_nothing() {
        let src = [0x5au8; 128];
        let before = fds_and_children();
        let mut buf = [0u8; 128];
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon(), 0).expect("read");
        let with_reader = (before.0 + 1, before.1 + 1);
        assert_eq!(fds_and_children(), with_reader, "one reader, its pidfd");
        for i in 0..5_000u32 {
            let src = [i as u8; 128];
            let mut buf = [0u8; 128];
            read(own_tid(), src.as_ptr() as u64, &mut buf, soon(), 0).expect("read");
            assert_eq!(buf, src);
        }
        assert_eq!(fds_and_children(), with_reader);
    }

    /// A thread's reader dies with the thread: killed and reaped by its
    /// thread-local's destructor, no zombie, no descriptor.
    #[test]
    fn a_thread_that_exits_takes_its_reader_along() {
        let before = fds_and_children();
        std::thread::spawn(|| {
            let src = *b"read in a thread that then exits";
            let mut buf = [0u8; 32];
            read(own_tid(), src.as_ptr() as u64, &mut buf, soon(), 0).expect("read");
            assert_eq!(buf, src);
            assert_eq!(fdgrab_testkit::children_count("self"), 1);
        })
        .join()
        .expect("thread");
        assert_eq!(fds_and_children(), before);
    }

    /// A child of `fork` inherits the thread's reader but not the reader
    /// process: its reads get a reader of their own (no wait for a reader that
    /// never answers, no ETIMEDOUT), and it neither kills nor uses its parent's,
    /// which still serves the parent.
    #[test]
    fn a_forked_child_does_not_use_or_kill_its_parents_reader() {
        let src = *b"forked";
        let mut buf = [0u8; 6];
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon(), 0).expect("read");
        // SAFETY: the test's child only reads, then leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let mut buf = [0u8; 6];
            let deadline = Instant::now() + Duration::from_millis(300);
            let ok = read(own_tid(), src.as_ptr() as u64, &mut buf, deadline, 0) == Ok(())
                && buf == src
                && fdgrab_testkit::children_count("self") == 1;
            drop_thread_reader();
            // SAFETY: leaves the forked child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        // Bounded: under a harness that runs tests in threads, a lock another
        // thread held at the fork could keep the child from ever finishing.
        let mut status = 0;
        let until = Instant::now() + Duration::from_secs(10);
        // SAFETY: polls our own child.
        while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == 0 {
            if Instant::now() > until {
                // SAFETY: our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // SAFETY: reaps it.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                panic!("the forked child did not finish in 10 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
        let mut buf = [0u8; 6];
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon(), 0).expect("parent's reader");
        assert_eq!(buf, src);
        assert_eq!(
            fdgrab_testkit::children_count("self"),
            1,
            "still one reader"
        );
    }

    /// A mapping of the FUSE file's pages, unmapped on drop (before the file
    /// system goes).
    struct Mapped {
        at: usize,
        len: usize,
    }

    impl Mapped {
        fn page(&self, i: usize) -> usize {
            self.at + 4096 * i
        }
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            // SAFETY: our own mapping, which nothing refers to any more.
            unsafe { libc::munmap(self.at as *mut c_void, self.len) };
        }
    }

    /// The pages of a FUSE file mapped here, whose reads the daemon takes and
    /// holds; `None` (after a loud skip) where FUSE cannot be mounted.
    fn held_fuse_pages(tag: &str) -> Option<(fdgrab_testkit::fuse::FuseFile, Mapped)> {
        if !fdgrab_testkit::is_root() {
            fdgrab_testkit::skip("mounting FUSE needs root");
            return None;
        }
        let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount(tag) else {
            fdgrab_testkit::skip("cannot mount a FUSE file system here");
            return None;
        };
        fs.hold_reads();
        let at = fdgrab_testkit::fuse::map_pages(&fs.page()).expect("map the FUSE pages");
        let map = Mapped {
            at,
            len: 4096 * fdgrab_testkit::fuse::PAGES,
        };
        Some((fs, map))
    }

    /// `read` on a thread of its own, bounded: a read that never returns fails
    /// the test instead of hanging it.
    fn read_within(
        addr: usize,
        len: usize,
        deadline: Duration,
        tenant: u64,
    ) -> (Result<(), KillableError>, Vec<u8>) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0xaa; len];
            let r = read(
                own_tid(),
                addr as u64,
                &mut buf,
                Instant::now() + deadline,
                tenant,
            );
            let _ = tx.send((r, buf));
            // The thread's reader (if any) goes with it.
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("the read returned within 20 s")
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < until, "{what}: not within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A read whose FUSE daemon took the request and does not answer: SIGKILL
    /// does not end the reader (the kernel waits the request out). `read`
    /// returns all the same, at its deadline, without a byte in the caller's
    /// buffer; the reader is buried, and the same tenant's and another's next
    /// reads are served by fresh readers. A tenant may leave
    /// `MAX_BURIED_PER_TENANT` such readers; its next read that needs one is
    /// refused at once (`Stuck`) and starts none, while another tenant's still
    /// gets one. When the daemon answers, the reaper reaps every buried reader:
    /// no child, zombie, thread or descriptor is left. (Before, the reap
    /// waited for the daemon: `read` did not return.)
    #[test]
    fn a_reader_stuck_in_a_fuse_read_is_buried_and_reaped_once_answered() {
        let Some((fs, map)) = held_fuse_pages("buried") else {
            return;
        };
        let before = fds_and_children();
        let threads = || std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
        let threads_before = threads();
        let (r, buf) = read_within(map.page(0), 16, Duration::from_millis(200), 7);
        assert_eq!(r, Err(KillableError::TimedOut));
        assert_eq!(
            buf,
            vec![0xaa; 16],
            "nothing written to the caller's buffer"
        );
        assert_eq!(fs.held_reads(), 1, "the daemon took the read");
        assert_eq!(buried(7), (1, 1));
        let src = *b"served next to a stuck reader";
        let (r, buf) = read_within(src.as_ptr() as usize, src.len(), Duration::from_secs(10), 7);
        assert_eq!(
            (r, &buf[..]),
            (Ok(()), &src[..]),
            "the same tenant, a fresh reader"
        );
        // Each reader on a page of its own: a second read of a page whose
        // read is held waits for the page's lock, killably, and dies.
        for n in 2..=MAX_BURIED_PER_TENANT {
            let (r, _) = read_within(map.page(n - 1), 16, Duration::from_millis(100), 7);
            assert_eq!(r, Err(KillableError::TimedOut));
            assert_eq!(buried(7), (n, n));
        }
        let (r, _) = read_within(src.as_ptr() as usize, src.len(), Duration::from_secs(10), 7);
        assert_eq!(
            r,
            Err(KillableError::Stuck),
            "past its share: refused, no reader"
        );
        assert_eq!(buried(7), (MAX_BURIED_PER_TENANT, MAX_BURIED_PER_TENANT));
        let (r, buf) = read_within(src.as_ptr() as usize, src.len(), Duration::from_secs(10), 8);
        assert_eq!(
            (r, &buf[..]),
            (Ok(()), &src[..]),
            "another tenant is served"
        );
        assert_eq!(fs.release_reads(), MAX_BURIED_PER_TENANT);
        wait_until("every buried reader reaped", || buried(7) == (0, 0));
        wait_until("no child, zombie or descriptor left", || {
            fds_and_children() == before
        });
        wait_until("the reaper gone", || threads() == threads_before);
        drop(map);
    }

    /// However many tenants leave readers stuck, the process holds a bounded
    /// number, and tenants at their shares deny nobody a reader. For 3
    /// tenants: 3 fill their shares (12); a tenant with none buried still
    /// gets a reader, and may leave one stuck, but then no second (past the
    /// shares, one each); at 12 + 3 nobody gets one. When the daemon answers,
    /// all are reaped and readers start again.
    #[test]
    fn buried_readers_are_bounded_over_all_tenants() {
        let Some((fs, map)) = held_fuse_pages("cap") else {
            return;
        };
        let before = fds_and_children();
        const TENANTS: usize = 3;
        set_max_tenants(TENANTS);
        let (shares, ceiling) = buried_caps();
        assert_eq!((shares, ceiling), (12, 15));
        // A page per reader.
        const _: () = assert!(TENANTS * (MAX_BURIED_PER_TENANT + 1) < fdgrab_testkit::fuse::PAGES);
        let stall = |page: usize, tenant: u64| {
            read_within(map.page(page), 16, Duration::from_millis(50), tenant).0
        };
        for t in 0..TENANTS {
            for k in 0..MAX_BURIED_PER_TENANT {
                let r = stall(t * MAX_BURIED_PER_TENANT + k, 100 + t as u64);
                assert_eq!(r, Err(KillableError::TimedOut), "tenant {t}, read {k}");
            }
        }
        assert_eq!(buried(100), (MAX_BURIED_PER_TENANT, shares));
        let src = *b"a tenant with nothing buried";
        let honest = |tenant: u64| {
            read_within(
                src.as_ptr() as usize,
                src.len(),
                Duration::from_secs(10),
                tenant,
            )
        };
        let (r, buf) = honest(999);
        assert_eq!(
            (r, &buf[..]),
            (Ok(()), &src[..]),
            "tenants at their shares deny nobody"
        );
        for t in 0..TENANTS as u64 {
            assert_eq!(
                stall(shares + t as usize, 200 + t),
                Err(KillableError::TimedOut)
            );
            assert_eq!(
                stall(40 + t as usize, 200 + t),
                Err(KillableError::Stuck),
                "past the shares, one each"
            );
        }
        assert_eq!(buried(200), (1, ceiling));
        assert_eq!(
            honest(999).0,
            Err(KillableError::Stuck),
            "at the ceiling: nobody"
        );
        assert_eq!(fs.held_reads(), ceiling, "no reader started past the caps");
        assert_eq!(fs.release_reads(), ceiling);
        wait_until("every buried reader reaped", || buried(100).1 == 0);
        wait_until("no child, zombie or descriptor left", || {
            fds_and_children() == before
        });
        let (r, buf) = honest(999);
        assert_eq!((r, &buf[..]), (Ok(()), &src[..]));
        set_max_tenants(DEFAULT_MAX_TENANTS);
        drop(map);
    }

    /// A tenant whose threads all hold a reader started before any was buried
    /// leaves one per thread when all stall at once: past its share, which
    /// spends no other tenant's room (another tenant with none buried still
    /// gets a reader while the total, counted up to the shares, is below
    /// them), up to the hard cap, twice the ceiling counted in full, from
    /// which on nobody gets one.
    #[test]
    fn a_tenants_readers_stalled_at_once_are_bounded_and_spend_no_others_room() {
        let Some((fs, map)) = held_fuse_pages("at-once") else {
            return;
        };
        let before = fds_and_children();
        set_max_tenants(2);
        let (shares, ceiling) = buried_caps();
        assert_eq!((shares, ceiling, hard_cap()), (8, 10, 20));
        let src = *b"honest";
        let stall_all = |threads: usize, first: usize, tenant: u64| {
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
            let at = map.at;
            let readers: Vec<_> = (0..threads)
                .map(|i| {
                    let barrier = std::sync::Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 6];
                        let honest = read(own_tid(), src.as_ptr() as u64, &mut buf, soon(), tenant);
                        barrier.wait();
                        let page = (at + 4096 * (first + i)) as u64;
                        let deadline = Instant::now() + Duration::from_millis(200);
                        (honest, read(own_tid(), page, &mut buf, deadline, tenant))
                    })
                })
                .collect();
            for r in readers {
                let (honest, stalled) = r.join().expect("reader thread");
                assert_eq!(honest, Ok(()));
                assert_eq!(stalled, Err(KillableError::TimedOut));
            }
        };
        stall_all(9, 0, 300);
        assert_eq!(buried(300), (9, 9), "one per thread, past its share");
        let (r, _) = read_within(map.page(20), 16, Duration::from_millis(50), 301);
        assert_eq!(
            r,
            Err(KillableError::TimedOut),
            "counted up to its share: 4 of 8"
        );
        assert_eq!(
            read_within(src.as_ptr() as usize, 6, Duration::from_secs(10), 301).0,
            Ok(()),
            "below its share, another tenant is served"
        );
        stall_all(10, 30, 302);
        assert_eq!(buried(302), (10, 20));
        assert_eq!(
            read_within(src.as_ptr() as usize, 6, Duration::from_secs(10), 303).0,
            Err(KillableError::Stuck),
            "at the hard cap: nobody"
        );
        assert_eq!(fs.release_reads(), 20);
        wait_until("every buried reader reaped", || buried(300).1 == 0);
        wait_until("no child, zombie or descriptor left", || {
            fds_and_children() == before
        });
        set_max_tenants(DEFAULT_MAX_TENANTS);
        drop(map);
    }

    /// The daemon dies instead of answering (its `/dev/fuse` closes, which
    /// aborts the connection): the buried readers die with their requests
    /// and are reaped.
    #[test]
    fn buried_readers_are_reaped_when_the_fuse_daemon_dies() {
        let Some((mut fs, map)) = held_fuse_pages("daemon-dies") else {
            return;
        };
        let before = fds_and_children();
        for n in 1..=2 {
            let (r, _) = read_within(map.page(n), 16, Duration::from_millis(100), 3);
            assert_eq!(r, Err(KillableError::TimedOut));
            assert_eq!(buried(3), (n, n));
        }
        fs.kill_server();
        wait_until("every buried reader reaped", || buried(3) == (0, 0));
        wait_until("no child, zombie or descriptor left", || {
            fds_and_children() == before
        });
        drop(map);
    }

    /// After a killed read the next one gets a fresh reader and the right
    /// bytes (nothing of the killed one's request leaks into it).
    #[test]
    fn a_read_after_a_killed_one_is_served() {
        let (_uffd, page) = match fdgrab_testkit::uffd::unfilled_page() {
            Ok(p) => p,
            Err(e) => return fdgrab_testkit::skip(&format!("no userfaultfd: {e}")),
        };
        let src = *b"bytes after a killed read";
        let mut buf = [0u8; 25];
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon(), 0).expect("read");
        let mut stalled = [0u8; 25];
        let deadline = Instant::now() + Duration::from_millis(100);
        assert_eq!(
            read(own_tid(), page as u64, &mut stalled, deadline, 0),
            Err(KillableError::TimedOut)
        );
        let mut buf = [0u8; 25];
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon(), 0).expect("read");
        assert_eq!(buf, src);
    }
}
