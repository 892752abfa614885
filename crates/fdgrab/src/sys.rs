//! The few raw system calls and ioctls that rustix does not wrap. All of this
//! crate's `unsafe` outside the ptrace engine lives here.

use rustix::io::Errno;
use std::os::fd::{AsFd, AsRawFd};

/// `struct pidfd_info` from `<linux/pidfd.h>`, version 0 (64 bytes, Linux 6.13).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PidfdInfo {
    pub mask: u64,
    pub cgroupid: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub ruid: u32,
    pub rgid: u32,
    pub euid: u32,
    pub egid: u32,
    pub suid: u32,
    pub sgid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    pub spare0: u32,
}

pub(crate) const PIDFD_INFO_PID: u64 = 1 << 0;
pub(crate) const PIDFD_INFO_CREDS: u64 = 1 << 1;
pub(crate) const PIDFD_INFO_CGROUPID: u64 = 1 << 2;

/// `_IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as libc::c_ulong) << 16) | (0xFF << 8) | 11;

const _: () = assert!(std::mem::size_of::<PidfdInfo>() == 64);

/// `ioctl(pidfd, PIDFD_GET_INFO, &info)`. Kernels before 6.13 answer `ENOTTY` (or
/// `EINVAL` on some 6.1x), which callers treat as "not supported".
pub(crate) fn pidfd_get_info(pidfd: impl AsFd, mask: u64) -> Result<PidfdInfo, Errno> {
    let mut info = PidfdInfo {
        mask,
        ..Default::default()
    };
    // SAFETY: `info` is a properly sized, writable `struct pidfd_info`; the ioctl
    // number encodes exactly that size, so the kernel writes within it.
    let r = unsafe { libc::ioctl(pidfd.as_fd().as_raw_fd(), PIDFD_GET_INFO, &mut info) };
    if r < 0 {
        Err(Errno::from_raw_os_error(last_errno()))
    } else {
        Ok(info)
    }
}

/// `KCMP_FILE` from `<linux/kcmp.h>`.
const KCMP_FILE: libc::c_int = 0;

/// `kcmp(pid1, pid2, KCMP_FILE, fd1, fd2)`: `Ok(true)` when both fds refer to the
/// same open file description. Needs `CONFIG_KCMP` (absent kernels give `ENOSYS`)
/// and ptrace-read access to both processes.
pub(crate) fn kcmp_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Result<bool, Errno> {
    // SAFETY: kcmp takes only integers; no memory is passed to the kernel.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1 as libc::c_long,
            pid2 as libc::c_long,
            KCMP_FILE as libc::c_long,
            fd1 as libc::c_long,
            fd2 as libc::c_long,
        )
    };
    if r < 0 {
        Err(Errno::from_raw_os_error(last_errno()))
    } else {
        Ok(r == 0)
    }
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)` with any signal number, 0 and real-time
/// signals included (rustix's wrapper takes only named, non-zero signals).
pub(crate) fn pidfd_send_signal(pidfd: impl AsFd, sig: i32) -> Result<(), Errno> {
    // SAFETY: a null siginfo pointer and zero flags; the kernel reads no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_fd().as_raw_fd() as libc::c_long,
            sig as libc::c_long,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_long,
        )
    };
    if r < 0 {
        Err(Errno::from_raw_os_error(last_errno()))
    } else {
        Ok(())
    }
}

/// `kill(pid, sig)`, for [`crate::PidFd::open_procfs`] handles on kernels without
/// pidfds; any signal number, 0 included.
pub(crate) fn kill(pid: i32, sig: i32) -> Result<(), Errno> {
    // SAFETY: kill takes only integers.
    let r = unsafe { libc::kill(pid, sig) };
    if r < 0 {
        Err(Errno::from_raw_os_error(last_errno()))
    } else {
        Ok(())
    }
}

/// Another process's memory, used by the ptrace engine (scratch page) and by the
/// seccomp supervisor (a trapped call's arguments). Writes all of `data` at `addr` in `pid`'s memory (`process_vm_writev`).
pub(crate) fn process_vm_write(pid: crate::Pid, addr: u64, data: &[u8]) -> Result<(), Errno> {
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `local` describes `data`, which the kernel only reads; `remote` names
    // memory in the other process, which the kernel checks and never touches in ours.
    let r = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    match r {
        r if r < 0 => Err(Errno::from_raw_os_error(last_errno())),
        r if r as usize != data.len() => Err(Errno::FAULT),
        _ => Ok(()),
    }
}

/// Fills `buf` from `addr` in `pid`'s memory (`process_vm_readv`).
pub(crate) fn process_vm_read(pid: crate::Pid, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, writable for its whole length; `remote` names
    // memory in the other process, which the kernel checks.
    let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    match r {
        r if r < 0 => Err(Errno::from_raw_os_error(last_errno())),
        r if r as usize != buf.len() => Err(Errno::FAULT),
        _ => Ok(()),
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// How a spawned child relates to our session and process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChildSession {
    /// Its own process group, so that a terminal's ^C reaches only us (we forward it).
    NewProcessGroup,
    /// A new session without a controlling terminal, for a child that outlives us.
    NewSession,
}

/// The step of child set-up that failed, reported back through the exec pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChildStage {
    Dup2 = 1,
    Exec = 2,
}

/// A program ready to `execve`, built entirely before `fork`: after `fork` the child
/// may only use async-signal-safe calls, so nothing there allocates.
#[derive(Debug)]
pub(crate) struct ExecImage {
    pub path: std::ffi::CString,
    pub argv: Vec<std::ffi::CString>,
    /// `KEY=VALUE` entries; `LISTEN_PID=` is appended by [`fork_exec`] with the
    /// child's own pid.
    pub env: Vec<std::ffi::CString>,
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// Forks, installs `fds[i]` at descriptor `3 + i` (close-on-exec cleared), marks every
/// other descriptor above 2 close-on-exec, resets the signal mask and dispositions,
/// writes the child's pid into `LISTEN_PID`, and execs `image`.
///
/// Returns the child's pid once `execve` has succeeded (an `O_CLOEXEC` pipe reports
/// failure from the child, which is then reaped here). Each `fds` entry must be a
/// descriptor numbered at least `3 + fds.len()`, so that installing one can never
/// overwrite another.
pub(crate) fn fork_exec(
    image: &ExecImage,
    fds: &[std::os::fd::BorrowedFd<'_>],
    session: ChildSession,
) -> Result<i32, (ChildStage, Errno)> {
    use std::os::fd::AsRawFd as _;
    let first_free = 3 + fds.len() as i32;
    if fds.iter().any(|f| f.as_raw_fd() < first_free) {
        return Err((ChildStage::Dup2, Errno::INVAL));
    }
    let sources: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let argv: Vec<*const libc::c_char> = image
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    // Room for the longest pid (10 digits) and the terminating NUL.
    let mut pid_entry = LISTEN_PID_PREFIX.to_vec();
    pid_entry.extend_from_slice(&[0u8; 16]);
    let pid_ptr = pid_entry.as_mut_ptr();
    let pid_len = pid_entry.len();
    let envp: Vec<*const libc::c_char> = image
        .env
        .iter()
        .map(|e| e.as_ptr())
        .chain([pid_ptr as *const libc::c_char, std::ptr::null()])
        .collect();
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    let (report_r, report_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| (ChildStage::Exec, e))?;

    // SAFETY: fork has no memory-safety preconditions. The child branch below only
    // makes async-signal-safe system calls on memory prepared above, and leaves
    // through execve or _exit, never returning into the caller's stack frames.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err((ChildStage::Exec, Errno::from_raw_os_error(last_errno())));
    }
    if pid == 0 {
        let child = ChildPlan {
            path: image.path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            pid_entry: pid_ptr,
            pid_len,
            sources: &sources,
            session,
            nofile: nofile.min(1 << 20) as i32,
            report: &report_w,
        };
        child.run();
    }
    drop(report_w);
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(&report_r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    // Keep the pid buffer alive until the child has exec'd or failed.
    drop(pid_entry);
    if got < buf.len() {
        return Ok(pid);
    }
    let stage = if buf[0] == ChildStage::Dup2 as u8 {
        ChildStage::Dup2
    } else {
        ChildStage::Exec
    };
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let _ = rustix::process::waitpid(
        rustix::process::Pid::from_raw(pid),
        rustix::process::WaitOptions::empty(),
    );
    Err((stage, Errno::from_raw_os_error(errno)))
}

/// What the forked child needs, as raw pointers into the parent's (copied) memory.
struct ChildPlan<'a> {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    pid_entry: *mut u8,
    pid_len: usize,
    sources: &'a [i32],
    session: ChildSession,
    nofile: i32,
    report: &'a std::os::fd::OwnedFd,
}

impl ChildPlan<'_> {
    /// Runs in the child between fork and exec: async-signal-safe calls only, no
    /// allocation, no panics.
    fn run(&self) -> ! {
        // SAFETY: an all-zero sigset_t is the empty set on Linux.
        let empty: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid set pointer, null old-set pointer.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) };
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                // SAFETY: resets a disposition; handlers are not ours to keep, and an
                // ignored signal (SIGPIPE in Rust programs) would otherwise stay ignored
                // across exec.
                unsafe { libc::signal(sig, libc::SIG_DFL) };
            }
        }
        match self.session {
            // SAFETY: no pointers; failure leaves the child in our group, which is harmless.
            ChildSession::NewProcessGroup => unsafe { libc::setpgid(0, 0) },
            // SAFETY: as above.
            ChildSession::NewSession => unsafe { libc::setsid() },
        };
        self.write_pid();
        for (i, &src) in self.sources.iter().enumerate() {
            // SAFETY: integers only. dup2 onto a different number gives a descriptor
            // without FD_CLOEXEC; sources are all above the destinations.
            if unsafe { libc::dup2(src, 3 + i as i32) } < 0 {
                self.fail(ChildStage::Dup2);
            }
        }
        let first = 3 + self.sources.len() as u32;
        // SAFETY: integers only. CLOSE_RANGE_CLOEXEC (5.11) marks rather than closes,
        // so the report pipe stays usable until exec succeeds.
        let r = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if r < 0 {
            for fd in first as i32..self.nofile {
                // SAFETY: integers only; EBADF for numbers not in use is expected.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
        // SAFETY: path, argv and envp are NUL-terminated strings and null-terminated
        // arrays built before fork and still owned by the (copied) parent frames.
        unsafe { libc::execve(self.path, self.argv, self.envp) };
        self.fail(ChildStage::Exec)
    }

    fn write_pid(&self) {
        // SAFETY: pid_entry points at a buffer of pid_len bytes that this (forked)
        // process owns a private copy of; nothing else references it here.
        let entry = unsafe { std::slice::from_raw_parts_mut(self.pid_entry, self.pid_len) };
        let mut pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
        let mut digits = [0u8; 10];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 || n == digits.len() {
                break;
            }
        }
        let start = LISTEN_PID_PREFIX.len();
        for (i, slot) in entry.iter_mut().skip(start).enumerate() {
            *slot = if i < n { digits[n - 1 - i] } else { 0 };
        }
    }

    fn fail(&self, stage: ChildStage) -> ! {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        let e = errno.to_ne_bytes();
        let msg = [stage as u8, 0, 0, 0, e[0], e[1], e[2], e[3]];
        let _ = rustix::io::write(self.report, &msg);
        // SAFETY: ends the child without running the parent's destructors or atexit
        // handlers, which belong to the parent.
        unsafe { libc::_exit(127) }
    }
}

/// A signal set made from signal numbers.
fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is the empty set on Linux.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    for &s in sigs {
        // SAFETY: `set` is a valid sigset_t; an out-of-range number gives EINVAL.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

/// Blocks `sigs` in the calling thread and returns the previous mask.
pub(crate) fn block_signals(sigs: &[i32]) -> Result<libc::sigset_t, Errno> {
    let set = sigset(sigs);
    // SAFETY: an all-zero sigset_t is a valid value to be overwritten.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to two sigset_t values.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    if r != 0 {
        return Err(Errno::from_raw_os_error(r));
    }
    Ok(old)
}

/// Restores a signal mask saved by [`block_signals`].
pub(crate) fn set_signal_mask(mask: &libc::sigset_t) {
    // SAFETY: valid pointer to a sigset_t; null old-set pointer.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

/// Whether any of `sigs` is pending for the calling thread (or its process).
pub(crate) fn any_signal_pending(sigs: &[i32]) -> bool {
    // SAFETY: an all-zero sigset_t is a valid value to be overwritten.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigpending writes one sigset into our local.
    if unsafe { libc::sigpending(&mut pending) } != 0 {
        return false;
    }
    sigs.iter()
        // SAFETY: sigismember reads the initialised set.
        .any(|&sig| unsafe { libc::sigismember(&pending, sig) } == 1)
}

/// `signalfd(-1, sigs, SFD_CLOEXEC | SFD_NONBLOCK)`.
pub(crate) fn signalfd(sigs: &[i32]) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::FromRawFd as _;
    let set = sigset(sigs);
    // SAFETY: valid sigset pointer; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(Errno::from_raw_os_error(last_errno()));
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// `SIOCGSKNS` (4.9): an fd for the network namespace a socket lives in.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// `ioctl(sock, SIOCGSKNS)`: the socket's own netns, which may differ from the
/// netns of any thread that holds it. Needs `CAP_NET_ADMIN` over that netns.
pub(crate) fn socket_netns(sock: impl AsFd) -> Result<std::os::fd::OwnedFd, Errno> {
    use std::os::fd::FromRawFd;
    // SAFETY: SIOCGSKNS takes no argument and returns a new fd.
    let r = unsafe { libc::ioctl(sock.as_fd().as_raw_fd(), SIOCGSKNS as _) };
    if r < 0 {
        Err(Errno::from_raw_os_error(last_errno()))
    } else {
        // SAFETY: on success the return value is a fresh fd that we now own.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r) })
    }
}

/// `SO_NETNS_COOKIE` (5.14) from `<asm-generic/socket.h>`.
const SO_NETNS_COOKIE: libc::c_int = 71;

/// `getsockopt(sock, SOL_SOCKET, SO_NETNS_COOKIE)`: a 64-bit id of the socket's
/// network namespace, unique for the boot, without opening the namespace.
pub(crate) fn socket_netns_cookie(sock: impl AsFd) -> Result<u64, Errno> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(Errno::from_raw_os_error(last_errno()))
    } else {
        Ok(cookie)
    }
}
