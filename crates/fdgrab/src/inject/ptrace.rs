//! The raw ptrace(2) and waitpid(2) calls the injection session is built from. Nothing here knows about registers (that is
//! `arch`) or about sessions; every function returns the kernel's errno untouched.

use crate::Pid;
use rustix::io::Errno;

/// `PTRACE_O_TRACESYSGOOD`: syscall stops report `SIGTRAP | 0x80`, so they cannot be
/// mistaken for a real `SIGTRAP`.
pub(crate) const O_TRACESYSGOOD: libc::c_int = libc::PTRACE_O_TRACESYSGOOD;

// The injection engine's raw calls (here and `arch`) read their errno so.
pub(crate) use crate::sys::errno;

/// The type of ptrace(2)'s request argument in the C library's prototype: glibc
/// declares an enum (`unsigned int`), musl an `int`.
#[cfg(target_env = "musl")]
type Request = libc::c_int;
#[cfg(not(target_env = "musl"))]
type Request = libc::c_uint;

fn request(req: Request, tid: Pid, addr: usize, data: usize) -> Result<(), Errno> {
    // SAFETY: every request sent through here (SEIZE, SETOPTIONS, INTERRUPT, CONT,
    // SINGLESTEP, DETACH) takes integers only in `addr` and `data`; the kernel reads no memory.
    let r = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `PTRACE_SEIZE`: become the tracer of `tid` without stopping it.
pub(crate) fn seize(tid: Pid, options: libc::c_int) -> Result<(), Errno> {
    request(libc::PTRACE_SEIZE, tid, 0, options as usize)
}

/// `PTRACE_SETOPTIONS`: replace the tracing options (e.g. add or drop
/// `PTRACE_O_SUSPEND_SECCOMP`).
pub(crate) fn set_options(tid: Pid, options: libc::c_int) -> Result<(), Errno> {
    request(libc::PTRACE_SETOPTIONS, tid, 0, options as usize)
}

/// `PTRACE_O_SUSPEND_SECCOMP` (4.3): the tracee's seccomp filters do not run while
/// this option is set. Setting it needs `CAP_SYS_ADMIN`, `CONFIG_CHECKPOINT_RESTORE`
/// and a tracer that is not itself under seccomp (`EPERM`/`EINVAL` otherwise).
pub(crate) const O_SUSPEND_SECCOMP: libc::c_int = libc::PTRACE_O_SUSPEND_SECCOMP;

/// `PTRACE_SECCOMP_GET_FILTER` (4.4).
const SECCOMP_GET_FILTER: Request = 0x420c;

/// Filter number `index` (0 = the most recently installed) of a stopped tracee, as
/// the classic BPF it was installed with. `ENOENT` past the oldest filter; `EACCES`
/// without `CAP_SYS_ADMIN` or when we are under seccomp ourselves; `EMEDIUMTYPE`
/// when the thread is not in filter mode.
pub(crate) fn seccomp_filter(tid: Pid, index: usize) -> Result<Vec<libc::sock_filter>, Errno> {
    // The kernel copies the whole filter without a length to check against, and the
    // stack can change between two calls (another thread of the target can add a
    // filter to this one with SECCOMP_FILTER_FLAG_TSYNC even while it is stopped), so
    // asking for the length first would not bound the copy. No filter is longer than
    // BPF_MAXINSNS instructions: one call into a buffer of that size is always safe.
    const BPF_MAXINSNS: usize = 4096;
    let empty = libc::sock_filter {
        code: 0,
        jt: 0,
        jf: 0,
        k: 0,
    };
    let mut buf = vec![empty; BPF_MAXINSNS];
    // SAFETY: `buf` holds BPF_MAXINSNS sock_filters, the most the kernel accepts in
    // one filter and so the most it writes for any index.
    let r = unsafe {
        libc::ptrace(
            SECCOMP_GET_FILTER,
            tid,
            index as *mut libc::c_void,
            buf.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// `PTRACE_INTERRUPT`: make a seized tracee stop (`PTRACE_EVENT_STOP`) without a signal.
pub(crate) fn interrupt(tid: Pid) -> Result<(), Errno> {
    request(libc::PTRACE_INTERRUPT, tid, 0, 0)
}

/// `PTRACE_CONT`, delivering `sig` (0 for none).
pub(crate) fn cont(tid: Pid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_CONT, tid, 0, sig as usize)
}

/// `PTRACE_DETACH`, delivering `sig`.
pub(crate) fn detach(tid: Pid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_DETACH, tid, 0, sig as usize)
}

/// `PTRACE_SINGLESTEP`: run one instruction, delivering `sig`.
pub(crate) fn single_step(tid: Pid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_SINGLESTEP, tid, 0, sig as usize)
}

/// `si_code` of the signal a tracee is stopped to deliver (`PTRACE_GETSIGINFO`):
/// positive when the kernel raised it for a fault, zero or negative when a process
/// sent it.
pub(crate) fn signal_code(tid: Pid) -> Result<i32, Errno> {
    // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one siginfo_t into `info`, which is that large.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGINFO,
            tid,
            std::ptr::null_mut::<libc::c_void>(),
            (&mut info as *mut libc::siginfo_t).cast::<libc::c_void>(),
        )
    };
    if r < 0 {
        return Err(errno());
    }
    Ok(info.si_code)
}

/// `PTRACE_GETSIGMASK` (3.11): the stopped tracee's blocked-signal set (signals
/// 1-64, bit `n - 1` for signal `n`); since 5.1 the mask a call that swaps masks
/// will put back, while the thread is on its way out of one.
pub(crate) fn sigmask(tid: Pid) -> Result<u64, Errno> {
    let mut set = 0u64;
    // SAFETY: with `addr` = 8 the kernel writes exactly 8 bytes (a kernel sigset_t
    // of this ABI) to `data`, which points at our u64.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK as Request,
            tid,
            std::mem::size_of::<u64>() as *mut libc::c_void,
            (&mut set as *mut u64).cast::<libc::c_void>(),
        )
    };
    if r < 0 {
        return Err(errno());
    }
    Ok(set)
}

/// `PTRACE_SETSIGMASK` (3.11): replaces the stopped tracee's blocked-signal set
/// (SIGKILL and SIGSTOP are dropped from it by the kernel). Since 5.1 it also
/// clears the thread's "restore the saved mask on the way out" flag, which only
/// matters for a thread inside a call that swaps masks (`ppoll`, `sigsuspend`,
/// ...): see `session::sigmask`.
pub(crate) fn set_sigmask(tid: Pid, set: u64) -> Result<(), Errno> {
    // SAFETY: with `addr` = 8 the kernel reads exactly 8 bytes from `data`, which
    // points at our u64.
    let r = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGMASK as Request,
            tid,
            std::mem::size_of::<u64>() as *mut libc::c_void,
            (&set as *const u64).cast_mut().cast::<libc::c_void>(),
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `PTRACE_SYSCALL`: run to the next syscall-entry or -exit stop, delivering `sig`.
pub(crate) fn syscall(tid: Pid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_SYSCALL, tid, 0, sig as usize)
}

/// How long [`wait`] polls before it blocks, adapted to how fast stops arrive.
///
/// A stop normally follows within microseconds. Blocking at once lets our CPU go
/// idle, and waking an idle CPU costs more than the stop itself (tens of µs on a
/// VM), once per stop. Polling for too long, though, takes the CPU from the very
/// thread we wait for when the machine is busy. So the budget follows the stops:
/// a stop that came while polling sets it to a little over twice its latency; one
/// that did not halves it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spin {
    budget: std::time::Duration,
}

const SPIN_MIN: std::time::Duration = std::time::Duration::from_micros(4);
const SPIN_MAX: std::time::Duration = std::time::Duration::from_micros(60);

impl Default for Spin {
    fn default() -> Self {
        Spin {
            budget: std::time::Duration::from_micros(30),
        }
    }
}

/// `waitpid(tid, &status, __WALL)`: until the tracee's next stop or exit, polling
/// for at most `spin`'s budget first, then with naps (5 µs for 200 µs, then as in
/// [`wait_until`]).
///
/// Never a blocking `waitpid`: when another thread of the process runs `execve`
/// while ours waits in a call, the kernel kills ours, gives its pid to the exec'ing
/// thread and drops the trace, and the wake-up it sends the tracer carries the
/// dead thread's *new* pid, which a `waitpid` for `tid` filters out (checked on
/// 6.18): a blocked tracer would sleep for ever. Polled, the next `waitpid` finds
/// no tracee `tid` and fails with `ECHILD`.
pub(crate) fn wait(tid: Pid, spin: &mut Spin) -> Result<i32, Errno> {
    loop {
        let far = std::time::Instant::now() + std::time::Duration::from_secs(3600);
        if let Some(st) = wait_polled(tid, spin, far, true)? {
            return Ok(st);
        }
    }
}

/// The calling thread's timer slack set to 1 µs until dropped, then put back.
///
/// A normal thread's sleeps may overrun by its slack (50 µs by default) so that
/// the kernel can batch wake-ups: a 20 µs nap would take about 70. The first stop
/// of a session waits for a thread that is often asleep on another, idle CPU (on a
/// VM, tens of µs to wake), longer than the spin; fine naps catch it when it comes.
///
/// Through the raw syscall: the slack is a 64-bit count of ns, and the libc
/// wrapper (like rustix's) returns an int, which would cut a slack of seconds.
struct FineTimerSlack(Option<libc::c_ulong>);

fn prctl_timer_slack(op: libc::c_int, value: libc::c_ulong) -> libc::c_long {
    let unused: libc::c_ulong = 0;
    // SAFETY: PR_GET_TIMERSLACK and PR_SET_TIMERSLACK take integers only (the
    // slack in ns) and concern only the calling thread.
    unsafe { libc::syscall(libc::SYS_prctl, op, value, unused, unused, unused) }
}

impl FineTimerSlack {
    fn set() -> FineTimerSlack {
        let old = prctl_timer_slack(libc::PR_GET_TIMERSLACK, 0);
        let set = old > 0 && prctl_timer_slack(libc::PR_SET_TIMERSLACK, 1000) == 0;
        FineTimerSlack(set.then_some(old as libc::c_ulong))
    }
}

impl Drop for FineTimerSlack {
    fn drop(&mut self) {
        if let Some(old) = self.0 {
            prctl_timer_slack(libc::PR_SET_TIMERSLACK, old);
        }
    }
}

/// Naps of [`wait_until`]: 20 µs for the first millisecond, then growing to 500 µs,
/// and after a second (a call that blocks: a hung flush) to 10 ms.
const NAP: std::time::Duration = std::time::Duration::from_micros(20);
const NAP_FINE_FOR: std::time::Duration = std::time::Duration::from_millis(1);
const NAP_MAX: std::time::Duration = std::time::Duration::from_micros(500);
const NAP_LONG_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
const NAP_LONG: std::time::Duration = std::time::Duration::from_millis(10);
/// A step's stop, unlike the first, normally comes within tens of µs: its naps
/// start at 5 µs, for the first 200 µs, so as not to overshoot it by much.
const NAP_STEP: std::time::Duration = std::time::Duration::from_micros(5);
const NAP_STEP_FOR: std::time::Duration = std::time::Duration::from_micros(200);

/// [`wait`] with a deadline, for a stop that may never come (a thread in
/// uninterruptible sleep): after the spin, polls with sleeps of 20 µs (timer slack
/// 1 µs, see [`FineTimerSlack`]) for a millisecond, then growing to 500 µs. Not
/// `sched_yield`: on a busy machine that hands the CPU to every other runnable task,
/// for milliseconds. `Ok(None)` at the deadline.
pub(crate) fn wait_until(
    tid: Pid,
    spin: &mut Spin,
    deadline: std::time::Instant,
) -> Result<Option<i32>, Errno> {
    wait_polled(tid, spin, deadline, false)
}

/// [`wait_until`]; for a `step` (whose stop normally comes at once), a stop that
/// did not come within the spin halves its budget, and the naps start finer.
fn wait_polled(
    tid: Pid,
    spin: &mut Spin,
    deadline: std::time::Instant,
    step: bool,
) -> Result<Option<i32>, Errno> {
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = wait_flags(tid, libc::WNOHANG)? {
            spin.budget = (start.elapsed() * 2 + SPIN_MIN).clamp(SPIN_MIN, SPIN_MAX);
            return Ok(Some(st));
        }
        if start.elapsed() >= spin.budget {
            break;
        }
        std::hint::spin_loop();
    }
    if step {
        spin.budget = (spin.budget / 2).max(SPIN_MIN);
    }
    let _slack = FineTimerSlack::set();
    let mut nap = if step { NAP_STEP } else { NAP };
    loop {
        if let Some(st) = wait_flags(tid, libc::WNOHANG)? {
            return Ok(Some(st));
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(nap.min(deadline - now));
        let waited = start.elapsed();
        if waited >= NAP_LONG_AFTER {
            nap = NAP_LONG;
        } else if waited >= NAP_FINE_FOR {
            nap = (nap * 2).min(NAP_MAX);
        } else if waited >= NAP_STEP_FOR {
            nap = nap.max(NAP);
        }
    }
}

fn wait_flags(tid: Pid, extra: libc::c_int) -> Result<Option<i32>, Errno> {
    let mut status = 0;
    let flags = libc::__WALL | extra;
    loop {
        // SAFETY: `status` is a valid, writable int for the duration of the call.
        let r = unsafe { libc::waitpid(tid, &mut status, flags) };
        if r < 0 {
            match errno() {
                Errno::INTR => continue,
                e => return Err(e),
            }
        }
        return Ok((r != 0).then_some(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slack() -> libc::c_int {
        // SAFETY: PR_GET_TIMERSLACK takes no pointers.
        unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) }
    }

    /// The naps of the first stop run with a 1 µs slack, and the thread's own slack
    /// comes back however the wait ends (the guard's drop runs on every return).
    #[test]
    fn fine_timer_slack_is_put_back() {
        std::thread::spawn(|| {
            // SAFETY: an integer argument; this thread only.
            let r = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 70_000, 0, 0, 0) };
            assert_eq!(r, 0);
            {
                let _fine = FineTimerSlack::set();
                assert_eq!(slack(), 1000);
            }
            assert_eq!(slack(), 70_000);
        })
        .join()
        .expect("thread");
    }
}
