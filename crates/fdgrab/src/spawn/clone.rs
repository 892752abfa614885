//! The child half of the spawner: `clone(CLONE_VM | CLONE_VFORK)` and the steps the
//! child runs before `execve`. All of the spawner's `unsafe` lives here.
//!
//! The child shares our memory (and the spawning thread's TLS) until it execs, and
//! we are suspended meanwhile. So the child must not allocate, take locks, unwind or
//! return into our frames; it reads what [`Prepared`] holds, makes system calls, and
//! leaves through `execve` or `_exit`. Before `clone` every signal is blocked, so no
//! handler of ours can run on the child's stack; the child resets handlers to their
//! defaults before it unblocks anything.

use super::{Credentials, SeccompHandBack, Session, SignalDefaults, Step};
use crate::clone_vm::{clone_with_signals_blocked, Stack};
use crate::sys::errno;
use rustix::io::Errno;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use std::ffi::{c_char, c_int, c_void, CString};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// Everything the child reads, built in the parent.
pub(super) struct Prepared<'a> {
    path: CString,
    // The C arrays point into these; they must outlive the child's exec.
    _argv: Vec<CString>,
    _env: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    /// Empty when the program inherits our environment as it is: `execve` then
    /// gets the C library's `environ` itself (see [`Prepared::envp`]).
    envp_ptrs: Vec<*const c_char>,
    /// `LISTEN_PID=` followed by room for the digits and a NUL, when asked for.
    pid_entry: Option<Vec<u8>>,
    moves: Vec<(RawFd, RawFd)>,
    close_other_fds: bool,
    /// The soft `RLIMIT_NOFILE` (capped), when `close_other_fds` is set.
    nofile: i32,
    sigrtmax: c_int,
    session: Session,
    signals: SignalDefaults,
    credentials: Option<&'a Credentials>,
    death_signal: Option<(c_int, rustix::process::Pid)>,
    no_new_privs: bool,
    seccomp: Option<&'a SeccompHandBack>,
}

impl<'a> Prepared<'a> {
    #[allow(clippy::too_many_arguments)]
    /// `env: None` passes our own environment on unchanged, without a copy
    /// (`listen_pid` needs a copy to add its entry to, and is ignored then).
    pub(super) fn new(
        path: CString,
        argv: Vec<CString>,
        env: Option<Vec<CString>>,
        listen_pid: bool,
        moves: Vec<(RawFd, RawFd)>,
        close_other_fds: bool,
        session: Session,
        signals: SignalDefaults,
        credentials: Option<&'a Credentials>,
        death_signal: Option<c_int>,
        no_new_privs: bool,
        seccomp: Option<&'a SeccompHandBack>,
    ) -> Self {
        let argv_ptrs = argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let inherit = env.is_none();
        let env = env.unwrap_or_default();
        let mut pid_entry = (listen_pid && !inherit).then(|| {
            let mut e = LISTEN_PID_PREFIX.to_vec();
            // The longest pid has 10 digits; the rest stays NUL.
            e.extend_from_slice(&[0u8; 16]);
            e
        });
        let envp_ptrs = if inherit {
            Vec::new()
        } else {
            env.iter()
                .map(|e| e.as_ptr())
                .chain(pid_entry.as_mut().map(|e| e.as_mut_ptr() as *const c_char))
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        // Only the fallback of `close_other_fds` needs the limit (no call otherwise:
        // `get` asked three times).
        let nofile = if close_other_fds {
            rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(1 << 20)
                .min(1 << 20) as i32
        } else {
            0
        };
        Self {
            path,
            _argv: argv,
            _env: env,
            argv_ptrs,
            envp_ptrs,
            pid_entry,
            moves,
            close_other_fds,
            nofile,
            sigrtmax: libc::SIGRTMAX(),
            session,
            signals,
            credentials,
            death_signal: death_signal.map(|s| (s, rustix::process::getpid())),
            no_new_privs,
            seccomp,
        }
    }
}

impl Prepared<'_> {
    /// The environment array for `execve`: ours as the C library holds it, or the
    /// prepared copy.
    fn envp(&self) -> *const *const c_char {
        if !self.envp_ptrs.is_empty() {
            return self.envp_ptrs.as_ptr();
        }
        // SAFETY: a by-value read of the C library's pointer to its NULL-terminated
        // `KEY=value` array, which it keeps valid for the life of the process
        // unless the environment is changed. Nothing in fdgrab changes it, and
        // `std::env::set_var`'s contract (an `unsafe fn` in every edition, though
        // only edition 2024 makes callers say so) makes its caller ensure that no
        // other thread reads the environment by other means meanwhile, such as
        // this exec; `execvp` and `posix_spawn` read `environ` the same way.
        unsafe { environ }
    }
}

extern "C" {
    /// The C library's environment (environ(7)), as glibc and musl export it.
    static mut environ: *const *const c_char;
}

/// `struct sigaction` as the kernel's `rt_sigaction` takes it on x86-64 and
/// aarch64 (handler, flags, restorer, 64-bit mask).
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// What the child left for us: its pid, and the step and errno if it failed.
pub(super) struct Outcome {
    pub pid: i32,
    pub failure: Option<(u8, Errno)>,
}

/// Written by the child, read by us after it has exec'd or exited.
struct Report {
    step: AtomicU8,
    errno: AtomicI32,
}

struct ChildArgs<'p, 'a> {
    prepared: &'p Prepared<'a>,
    report: &'p Report,
}

/// Starts the child and returns once it has exec'd or exited.
pub(super) fn spawn(prepared: &Prepared<'_>) -> Result<Outcome, Errno> {
    let stack = Stack::take()?;
    let report = Report {
        step: AtomicU8::new(0),
        errno: AtomicI32::new(0),
    };
    let args = ChildArgs {
        prepared,
        report: &report,
    };
    // SAFETY: `child_main` runs on `stack` with `args`, both alive until clone
    // returns, which with CLONE_VFORK is after the child's execve or exit. The child
    // only makes system calls on memory prepared above (see `ChildArgs::run`).
    let pid = unsafe {
        clone_with_signals_blocked(
            child_main,
            &stack,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&args as *const ChildArgs<'_, '_>).cast_mut().cast(),
            std::ptr::null_mut(),
        )
    };
    // The child has exec'd or exited: nothing runs on the stack any more.
    stack.give_back();
    let pid = pid?;
    let step = report.step.load(Ordering::SeqCst);
    let failure = (step != 0).then(|| {
        (
            step,
            match report.errno.load(Ordering::SeqCst) {
                e if e > 0 => Errno::from_raw_os_error(e),
                _ => Errno::IO,
            },
        )
    });
    Ok(Outcome { pid, failure })
}

/// Sets to `SIG_DFL` every signal that must not keep its disposition across exec:
/// handlers of ours (when `handlers` is set: a vfork-style child shares our
/// handlers' code but must never run it; `execve` resets them anyway), and ignored
/// signals as [`SignalDefaults`] asks (`SIGPIPE` always, which the Rust runtime
/// ignores for itself, not for the program).
fn reset_signals(p: &Prepared<'_>, handlers: bool) -> Result<(), Errno> {
    if !handlers && p.signals == SignalDefaults::KeepIgnored {
        // Only SIGPIPE can need a change: no query needed.
        return set_default(libc::SIGPIPE);
    }
    for sig in 1..=p.sigrtmax {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // The raw call: glibc's sigaction refuses the two signals it keeps for
        // itself (32, 33), which an ignoring parent may still pass on.
        let mut old = KernelSigaction::default();
        // SAFETY: a null new action (a query) and a valid pointer for the old one,
        // with the kernel's sigset size.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<KernelSigaction>(),
                &mut old as *mut KernelSigaction,
                8usize,
            )
        };
        let reset = match old.handler {
            h if h == libc::SIG_DFL => false,
            h if h == libc::SIG_IGN => p.signals == SignalDefaults::All || sig == libc::SIGPIPE,
            // A handler of ours.
            _ => handlers,
        };
        if reset {
            set_default(sig)?;
        }
    }
    Ok(())
}

fn set_default(sig: c_int) -> Result<(), Errno> {
    set_handler(sig, libc::SIG_DFL)
}

fn set_handler(sig: c_int, handler: libc::sighandler_t) -> Result<(), Errno> {
    let act = KernelSigaction {
        handler,
        ..KernelSigaction::default()
    };
    // SAFETY: a valid action with no handler code (SIG_DFL or SIG_IGN); in a
    // vfork-style child the dispositions are its own (no CLONE_SIGHAND).
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &act as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
    if r < 0 {
        return Err(errno());
    }
    Ok(())
}

pub(super) fn ignore_sigpipe() -> Result<(), Errno> {
    set_handler(libc::SIGPIPE, libc::SIG_IGN)
}

/// Installs the fd plan: every `(from, to)` pair with `dup2`, and with
/// `close_other_fds` every other descriptor above 2 marked close-on-exec first.
fn install_fds(p: &Prepared<'_>) -> Result<(), Errno> {
    if p.close_other_fds {
        // SAFETY: integers only. CLOSE_RANGE_CLOEXEC (5.11) marks rather than
        // closes, so the sources and the hand-back socket stay usable until exec;
        // dup2 below clears the flag on the installed numbers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if r < 0 {
            for fd in 3..p.nofile {
                // SAFETY: integers only; EBADF for numbers not in use is expected.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
    for &(from, to) in &p.moves {
        // SAFETY: integers only. No source sits on a destination number, so each
        // dup2 makes a new descriptor, which never has FD_CLOEXEC.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// Sets the signal mask to the empty set.
fn unblock_all() {
    // SAFETY: an all-zero sigset_t is the empty set.
    let empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; null old set.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) };
}

fn execve(p: &Prepared<'_>) -> Errno {
    // SAFETY: path, argv and envp are NUL-terminated strings and null-terminated
    // pointer arrays in `Prepared`, alive until exec (in a child: until clone
    // returns in the parent).
    unsafe { libc::execve(p.path.as_ptr(), p.argv_ptrs.as_ptr(), p.envp()) };
    errno()
}

/// Replaces this process with the program: the same steps as a child's, minus
/// those only a child can take (session, credentials, filter). Returns only when a
/// step failed, with the step and errno; by then the fd plan may be partly
/// installed, but fd 2 is ours again (so the error can be reported where it was
/// going) and `SIGPIPE` is ignored again.
pub(super) fn exec_in_place(p: &Prepared<'_>) -> (Step, Errno) {
    if let Err(e) = reset_signals(p, false) {
        return (Step::Signals, e);
    }
    let failure = |step, e, stderr: Option<RawFd>| {
        if let Some(saved) = stderr {
            // SAFETY: integers only; `saved` is a close-on-exec copy of our stderr.
            unsafe { libc::dup2(saved, 2) };
            // SAFETY: `saved` is ours and nothing else refers to it.
            unsafe { libc::close(saved) };
        }
        let _ = ignore_sigpipe();
        (step, e)
    };
    // The plan may put a grabbed fd at 2; an exec failure is still reported on our
    // own stderr.
    let stderr = p
        .moves
        .iter()
        .any(|&(_, to)| to == 2)
        .then(|| save_stderr(p))
        .flatten();
    if let Err(e) = install_fds(p) {
        return failure(Step::Fds, e, stderr);
    }
    unblock_all();
    let e = execve(p);
    failure(Step::Exec, e, stderr)
}

/// A close-on-exec copy of fd 2 on a number the plan does not install over (a
/// copy there would be replaced by a grabbed fd, and an error written into it);
/// `None` when stderr is closed or no number is left.
fn save_stderr(p: &Prepared<'_>) -> Option<RawFd> {
    let mut lowest = 3;
    loop {
        // SAFETY: integers only.
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, lowest) };
        if fd < 0 {
            return None;
        }
        if !p.moves.iter().any(|&(_, to)| to == fd) {
            return Some(fd);
        }
        // SAFETY: the copy just made, ours alone.
        unsafe { libc::close(fd) };
        lowest = fd + 1;
    }
}

extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` that `spawn` passed, alive while we run.
    let args = unsafe { &*(arg as *const ChildArgs<'_, '_>) };
    args.run()
}

impl ChildArgs<'_, '_> {
    /// The child between clone and exec: system calls only, no allocation, no panic.
    fn run(&self) -> ! {
        let p = self.prepared;
        self.reset_signals();
        let r = match p.session {
            Session::Inherit => Ok(()),
            Session::NewProcessGroup => rustix::process::setpgid(None, None),
            Session::NewSession => rustix::process::setsid().map(drop),
        };
        self.check(Step::Session, r);
        self.write_listen_pid();
        self.install_fds();
        if let Some(c) = p.credentials {
            // A process of one thread: the raw per-thread calls cover all of it
            // (glibc's wrappers would signal every thread of *our* process).
            // SAFETY: `groups` is a valid array of `len` gids; the kernel copies it.
            let r =
                unsafe { libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr()) };
            self.check_raw(Step::Groups, r);
            // SAFETY: integers only.
            let r = unsafe { libc::syscall(libc::SYS_setgid, c.gid) };
            self.check_raw(Step::Gid, r);
            // SAFETY: integers only.
            let r = unsafe { libc::syscall(libc::SYS_setuid, c.uid) };
            self.check_raw(Step::Uid, r);
        }
        if let Some((sig, parent)) = p.death_signal {
            // After the uid change: changing credentials clears the death signal.
            // SAFETY: integers only.
            let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
            if r < 0 {
                self.fail(Step::DeathSignal, errno());
            }
            // The parent may have died before the signal was armed.
            if rustix::process::getppid() != Some(parent) {
                self.fail(Step::DeathSignal, Errno::SRCH);
            }
        }
        if p.no_new_privs {
            self.check(Step::NoNewPrivs, rustix::thread::set_no_new_privs(true));
        }
        if let Some(s) = p.seccomp {
            self.install_filter(s);
        }
        // Last before exec: from here on a signal acts on the child alone, by default.
        unblock_all();
        self.fail(Step::Exec, execve(p))
    }

    fn reset_signals(&self) {
        self.check(Step::Signals, reset_signals(self.prepared, true));
    }

    fn write_listen_pid(&self) {
        let Some(entry) = &self.prepared.pid_entry else {
            return;
        };
        let mut pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
        let mut digits = [0u8; 10];
        let mut n = 0;
        while n < digits.len() {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        let start = LISTEN_PID_PREFIX.len();
        let base = entry.as_ptr().cast_mut();
        for i in 0..entry.len() - start {
            let b = if i < n { digits[n - 1 - i] } else { 0 };
            // SAFETY: within the entry's buffer, which only the envp array points
            // into; our caller is suspended, so nothing reads it meanwhile.
            unsafe { base.add(start + i).write_volatile(b) };
        }
    }

    fn install_fds(&self) {
        self.check(Step::Fds, install_fds(self.prepared));
    }

    fn install_filter(&self, s: &SeccompHandBack) {
        let listener = match crate::seccomp::install_filter(&s.filter, s.flags) {
            Ok(Some(l)) => l,
            Ok(None) => self.fail(Step::Filter, Errno::INVAL),
            Err(e) => self.fail(Step::Filter, e.errno()),
        };
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [listener.as_fd()];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            self.fail(Step::SendListener, Errno::NOBUFS);
        }
        let sent = rustix::net::sendmsg(
            &s.sock,
            &[IoSlice::new(b"L")],
            &mut control,
            SendFlags::NOSIGNAL,
        );
        self.check(Step::SendListener, sent.map(drop));
        // `listener` closes here: the program keeps no copy of its own listener.
    }

    fn check<T>(&self, step: Step, r: Result<T, Errno>) {
        if let Err(e) = r {
            self.fail(step, e);
        }
    }

    fn check_raw(&self, step: Step, r: libc::c_long) {
        if r < 0 {
            self.fail(step, errno());
        }
    }

    fn fail(&self, step: Step, e: Errno) -> ! {
        self.report.errno.store(e.raw_os_error(), Ordering::SeqCst);
        self.report.step.store(step as u8, Ordering::SeqCst);
        // SAFETY: ends the child without running our destructors or atexit handlers,
        // which belong to the parent whose memory we share.
        unsafe { libc::_exit(127) }
    }
}
