//! `process_vm_readv` in a process of its own, which can be killed.
//!
//! A read of another process's memory that faults on a page a userfaultfd or
//! FUSE server never fills sleeps in the kernel `TASK_KILLABLE`: no signal but a
//! fatal one ends it. A fatal signal ends a whole thread group, so a thread of
//! ours stuck that way can only be abandoned, never ended. A child that shares
//! our memory (`CLONE_VM`) but is a thread group of its own (no `CLONE_THREAD`)
//! can be sent `SIGKILL` alone: the read then returns at once and the child dies
//! (measured on the 6.18 kernel here: gone 0.2 ms after the signal). That is what
//! [`read`] does: the child copies straight into the caller's buffer and exits;
//! we wait on its pidfd until the deadline, and kill it past it. It is reaped
//! before [`read`] returns, every way, so the buffer and the stack it used are
//! free again and no zombie stays.
//!
//! It costs a process (a `clone` sharing memory, files and signal handlers, no
//! copy of either) per read, some tens of microseconds against about one for a
//! read in the calling thread, so callers use it only where a stalled read must
//! end (see [`crate::supervise`]'s agent).
//!
//! The child runs one function that makes three raw system calls (its
//! parent-death signal, the read, `exit`): it shares our
//! memory and, without `CLONE_SETTLS`, the calling thread's TLS, so it must
//! never touch `errno`, the allocator, a lock or a panic. Its exit signal is 0,
//! so only a wait with `__WALL` sees it: a `waitpid(-1)` elsewhere in the
//! process cannot reap it (and reuse its pid) behind our back.

use crate::clone_vm::{clone_with_signals_blocked, Stack};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use std::ffi::{c_int, c_void};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicIsize, Ordering};
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

/// The result slot before the child wrote it.
const PENDING: isize = isize::MIN;

/// What the child reads and writes; lives in [`read`]'s frame until the child
/// is reaped.
#[repr(C)]
struct Request {
    pid: usize,
    local: libc::iovec,
    remote: libc::iovec,
    result: AtomicIsize,
}

/// Copies `buf.len()` bytes at `addr` out of thread `tid`'s process, in a child
/// process that is killed if it has not finished by `deadline`.
pub(crate) fn read(
    tid: i32,
    addr: u64,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), KillableError> {
    let stack = Stack::take().map_err(KillableError::Read)?;
    let req = Request {
        pid: tid as usize,
        local: libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        },
        remote: libc::iovec {
            iov_base: addr as usize as *mut c_void,
            iov_len: buf.len(),
        },
        result: AtomicIsize::new(PENDING),
    };
    let mut pidfd: c_int = -1;
    // Shared memory, files, fs and signal handlers: nothing to copy. Exit signal 0.
    let flags = libc::CLONE_VM
        | libc::CLONE_FILES
        | libc::CLONE_FS
        | libc::CLONE_SIGHAND
        | libc::CLONE_PIDFD;
    // SAFETY: `reader_main` makes raw system calls only (no TLS, allocation,
    // locks or unwinding). `stack` and `req` (with `buf`, which `req.local`
    // points into) live until the child is reaped below, on every path.
    let spawned = unsafe {
        clone_with_signals_blocked(
            reader_main,
            &stack,
            flags,
            (&req as *const Request).cast_mut().cast(),
            &mut pidfd,
        )
    };
    if let Err(e) = spawned {
        stack.give_back();
        return Err(KillableError::Read(e));
    }
    // SAFETY: CLONE_PIDFD wrote a fresh (close-on-exec) pidfd of the child,
    // owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let finished = wait_until(&pidfd, deadline);
    if !finished {
        // Killable sleep: it dies at once (ESRCH only if it exited meanwhile).
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    }
    reap(&pidfd);
    // Reaped: nothing runs on the stack or writes into `buf` any more.
    stack.give_back();
    match req.result.load(Ordering::Acquire) {
        // Killed before its read returned.
        PENDING => Err(KillableError::TimedOut),
        r if r < 0 => Err(KillableError::Read(Errno::from_raw_os_error(-r as i32))),
        r if r as usize != buf.len() => Err(KillableError::Read(Errno::FAULT)),
        _ => Ok(()),
    }
}

/// Waits for the child to exit, until `deadline`; whether it did.
fn wait_until(pidfd: &OwnedFd, deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut pfd = [PollFd::new(pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut pfd, Some(&ts)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(Errno::INTR) => continue,
            // Not expected for a pidfd; the kill and the blocking reap settle it.
            Err(_) => return false,
        }
    }
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
                pidfd.as_raw_fd() as libc::id_t,
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
    // SAFETY: `arg` is the `Request` that `read` passed; it lives until we are
    // reaped.
    let req = unsafe { &*(arg as *const Request) };
    // Killed with the thread that waits for it: only when the whole agent dies
    // (that thread reaps it before going on), so no reader outlives the agent
    // blocked on a page.
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
    // SAFETY: the iovecs describe the caller's buffer (writable, shared with us
    // by CLONE_VM) and memory of the other process, which the kernel checks.
    let r = unsafe {
        raw_syscall6(
            libc::SYS_process_vm_readv as usize,
            [
                req.pid,
                &req.local as *const libc::iovec as usize,
                1,
                &req.remote as *const libc::iovec as usize,
                1,
                0,
            ],
        )
    };
    req.result.store(r, Ordering::Release);
    // The C library's clone returns into a raw `exit`.
    0
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
            read(own_tid(), page as u64, &mut buf, Instant::now()),
            Err(KillableError::TimedOut)
        );
        assert_eq!(fds_and_children(), before);
    }

    #[test]
    fn many_reads_leak_nothing() {
        let src = [0x5au8; 128];
        let before = fds_and_children();
        for _ in 0..500 {
            let mut buf = [0u8; 128];
            read(own_tid(), src.as_ptr() as u64, &mut buf, soon()).expect("read");
            assert_eq!(buf, src);
        }
        assert_eq!(fds_and_children(), before);
    }
}
