//! `process_vm_readv` in a process of its own, which can be killed.
//!
//! A read of another process's memory that faults on a page a userfaultfd or
//! FUSE server never fills sleeps in the kernel `TASK_KILLABLE`: no signal but a
//! fatal one ends it. A fatal signal ends a whole thread group, so a thread of
//! ours stuck that way can only be abandoned, never ended. A child that shares
//! our memory (`CLONE_VM`) but is a thread group of its own (no `CLONE_THREAD`)
//! can be sent `SIGKILL` alone: the read then returns at once and the child dies
//! (measured on the 6.18 kernel here: gone 0.2 ms after the signal; not so for a
//! FUSE request its daemon has taken and does not answer, which the kernel waits
//! out uninterruptibly: see [`crate::supervise`]'s agent). That is what
//! [`read`] does, in a reader each calling thread keeps: the thread puts a
//! request (tid, addresses, length) in a slot they share and wakes the reader
//! on a futex; the reader copies straight into the caller's buffer, says DONE
//! and sleeps until the next request. Past the deadline the thread kills the
//! reader and reaps it before [`read`] returns, so the buffer and the stack it
//! used are free again, no zombie stays and no byte of a cut-short read is used;
//! the next read starts a fresh one. A thread's reader is killed and reaped
//! when the thread exits (its thread-local's destructor), and dies with the
//! thread in any case (its parent-death signal). A child of `fork` inherits the
//! thread-local but not the reader, so a reader is used and killed only by the
//! process that started it.
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
//! parent-death signal, futex waits and wakes, the read): it shares our memory
//! and, without `CLONE_SETTLS`, the calling thread's TLS, so it must never touch
//! `errno`, the allocator, a lock or a panic. Its exit signal is 0, so only a
//! wait with `__WALL` sees it: a `waitpid(-1)` elsewhere in the process cannot
//! reap it (and reuse its pid) behind our back.

use crate::clone_vm::{clone_with_signals_blocked, Stack};
use rustix::io::Errno;
use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicIsize, AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

/// Why a killable read gave no bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KillableError {
    /// `process_vm_readv` failed (a short read is `EFAULT`), or the reader could
    /// not be started.
    Read(Errno),
    /// The deadline passed; the reader was killed and reaped.
    TimedOut,
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
    local: AtomicUsize,
    remote: AtomicUsize,
    len: AtomicUsize,
    result: AtomicIsize,
    /// Our pid: the reader's parent while it lives.
    parent: AtomicUsize,
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
    fn start() -> Result<Reader, Errno> {
        let stack = Stack::take()?;
        let slot = Box::new(Slot {
            state: AtomicU32::new(IDLE),
            pid: AtomicUsize::new(0),
            local: AtomicUsize::new(0),
            remote: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            result: AtomicIsize::new(0),
            parent: AtomicUsize::new(std::process::id() as usize),
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
            pidfd,
            pid,
            cpu: std::cell::Cell::new(-1),
            slot,
            stack: Some(stack),
        })
    }

    /// One read; `None` when the deadline passed first (the reader must then
    /// be dropped: it is still inside the read).
    fn read(&self, tid: i32, addr: u64, buf: &mut [u8], deadline: Instant) -> Option<isize> {
        self.pin_here();
        let slot = &self.slot;
        slot.pid.store(tid as usize, Ordering::Relaxed);
        slot.local
            .store(buf.as_mut_ptr() as usize, Ordering::Relaxed);
        slot.remote.store(addr as usize, Ordering::Relaxed);
        slot.len.store(buf.len(), Ordering::Relaxed);
        slot.state.store(ASKED, Ordering::Release);
        futex(&slot.state, libc::FUTEX_WAKE, 1, None);
        loop {
            if slot.state.load(Ordering::Acquire) == DONE {
                // The reader wrote `buf` before it said DONE, and touches it no
                // more.
                return Some(slot.result.load(Ordering::Relaxed));
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
        // Idle (waiting on its futex) or stalled in a read: a fatal signal ends
        // either at once (ESRCH only if it died meanwhile).
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

/// Copies `buf.len()` bytes at `addr` out of thread `tid`'s process, in this
/// thread's reader process, which is killed if it has not finished by
/// `deadline`.
pub(crate) fn read(
    tid: i32,
    addr: u64,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), KillableError> {
    // Past the deadline already: no reader is started (or used) for nothing.
    if Instant::now() >= deadline {
        return Err(KillableError::TimedOut);
    }
    let got = READER.try_with(|cell| {
        let mut reader = cell.borrow_mut();
        if reader
            .as_ref()
            .is_some_and(|r| r.owner != std::process::id())
        {
            *reader = None;
        }
        if reader.is_none() {
            *reader = Some(Reader::start().map_err(KillableError::Read)?);
        }
        let answer = reader
            .as_ref()
            .and_then(|r| r.read(tid, addr, buf, deadline));
        if answer.is_none() {
            // Killed and reaped before `buf` is given back: no byte of a read
            // cut short is ever used.
            *reader = None;
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
/// live on without reading killably, which should hold no stray pidfd.
pub(crate) fn drop_thread_reader() {
    let _ = READER.try_with(|cell| cell.borrow_mut().take());
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
    // outlives the agent blocked on a page.
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
        let len = slot.len.load(Ordering::Relaxed);
        let local = libc::iovec {
            iov_base: slot.local.load(Ordering::Relaxed) as *mut c_void,
            iov_len: len,
        };
        let remote = libc::iovec {
            iov_base: slot.remote.load(Ordering::Relaxed) as *mut c_void,
            iov_len: len,
        };
        // SAFETY: the iovecs describe the caller's buffer (writable, shared
        // with us by CLONE_VM, not given back before DONE) and memory of the
        // other process, which the kernel checks.
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
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon()).expect("read");
        assert_eq!(buf, src);
    }

    #[test]
    fn an_unmapped_address_is_efault() {
        let mut buf = [0u8; 16];
        assert_eq!(
            read(own_tid(), 8, &mut buf, soon()),
            Err(KillableError::Read(Errno::FAULT))
        );
    }

    #[test]
    fn a_thread_that_died_is_esrch() {
        let tid = std::thread::spawn(own_tid).join().expect("thread");
        let mut buf = [0u8; 4];
        let x = 7u32;
        assert_eq!(
            read(tid, &x as *const u32 as u64, &mut buf, soon()),
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
            read(own_tid(), page as u64, &mut buf, deadline),
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
                Instant::now() + Duration::from_millis(100)
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
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon()).expect("read");
        let with_reader = (before.0 + 1, before.1 + 1);
        assert_eq!(fds_and_children(), with_reader, "one reader, its pidfd");
        for i in 0..5_000u32 {
            let src = [i as u8; 128];
            let mut buf = [0u8; 128];
            read(own_tid(), src.as_ptr() as u64, &mut buf, soon()).expect("read");
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
            read(own_tid(), src.as_ptr() as u64, &mut buf, soon()).expect("read");
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
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon()).expect("read");
        // SAFETY: the test's child only reads, then leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let mut buf = [0u8; 6];
            let deadline = Instant::now() + Duration::from_millis(300);
            let ok = read(own_tid(), src.as_ptr() as u64, &mut buf, deadline) == Ok(())
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
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon()).expect("parent's reader");
        assert_eq!(buf, src);
        assert_eq!(
            fdgrab_testkit::children_count("self"),
            1,
            "still one reader"
        );
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
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon()).expect("read");
        let mut stalled = [0u8; 25];
        let deadline = Instant::now() + Duration::from_millis(100);
        assert_eq!(
            read(own_tid(), page as u64, &mut stalled, deadline),
            Err(KillableError::TimedOut)
        );
        let mut buf = [0u8; 25];
        read(own_tid(), src.as_ptr() as u64, &mut buf, soon()).expect("read");
        assert_eq!(buf, src);
    }
}
