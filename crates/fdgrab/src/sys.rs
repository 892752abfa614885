//! The few raw system calls and ioctls that rustix does not wrap.
//!
//! `unsafe` in this crate lives in five places, each block with a `// SAFETY:`
//! comment: here; `seccomp/ioctl.rs` (the seccomp system call and the notify
//! ioctls, whose structs rustix lacks); `spawn/clone.rs` (the vfork-style child
//! and its steps before exec); `passwd.rs` (the C library's NSS lookups); and
//! `inject/` (ptrace and register access). The CLI crate has none
//! (`#![forbid(unsafe_code)]`).

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
    let r = unsafe { libc::ioctl(pidfd.as_fd().as_raw_fd(), PIDFD_GET_INFO as _, &mut info) };
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

/// A close-on-exec copy (numbered 3 or above) of descriptor number `n` of our own
/// process, e.g. one inherited from the shell; `EBADF` if `n` is not open.
pub(crate) fn dup_own_fd(n: std::os::fd::RawFd) -> Result<std::os::fd::OwnedFd, Errno> {
    if n < 0 {
        return Err(Errno::BADF);
    }
    // SAFETY: the borrow lasts for one fcntl that only duplicates the descriptor;
    // it closes nothing, and a number that is not open gives EBADF.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(n) };
    rustix::io::fcntl_dupfd_cloexec(fd, 3)
}

/// The errno of the libc call that just failed, as an `Errno` (`EIO` if it left
/// none: `Errno` cannot hold 0). The one helper for the crate's raw calls.
pub(crate) fn errno() -> Errno {
    Errno::from_raw_os_error(last_errno())
}

fn last_errno() -> i32 {
    match std::io::Error::last_os_error().raw_os_error() {
        Some(e) if e > 0 => e,
        _ => libc::EIO,
    }
}

/// A signal set made from signal numbers.
pub(crate) fn sigset(sigs: &[i32]) -> libc::sigset_t {
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

/// `getsockopt(sock, level, name)` for an `int` option.
pub(crate) fn getsockopt_int(
    sock: impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
) -> Result<libc::c_int, Errno> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(Errno::from_raw_os_error(last_errno()))
    } else {
        Ok(v)
    }
}

/// `setsockopt(sock, level, name, &value)` for an `int` option.
pub(crate) fn setsockopt_int(
    sock: impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<(), Errno> {
    // SAFETY: `value` is a valid int for the size given; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(Errno::from_raw_os_error(last_errno()))
    } else {
        Ok(())
    }
}

/// `fork(2)`: `Some(child pid)` in the parent, `None` in the child. Callers make
/// sure the process is single-threaded, so the child's copy of every lock and
/// allocator state is consistent.
pub(crate) fn fork() -> Result<Option<crate::Pid>, Errno> {
    // SAFETY: fork has no memory-safety preconditions of its own; in a
    // single-threaded process (checked by the caller) the child may go on running
    // ordinary Rust code.
    let r = unsafe { libc::fork() };
    match r {
        -1 => Err(Errno::from_raw_os_error(last_errno())),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// `dup2(from, to)` onto a number we do not own as an `OwnedFd` (stdio).
pub(crate) fn dup_onto(from: impl AsFd, to: std::os::fd::RawFd) -> Result<(), Errno> {
    // SAFETY: dup2 only changes the fd table; `to` is a stdio number the caller
    // means to replace.
    let r = unsafe { libc::dup2(from.as_fd().as_raw_fd(), to) };
    if r < 0 {
        Err(Errno::from_raw_os_error(last_errno()))
    } else {
        Ok(())
    }
}

/// `_exit(2)`: ends a forked helper without running the parent's exit handlers.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// The credentials of a unix socket's peer (`SO_PEERCRED`): pid, uid, gid.
///
/// Read into `libc::ucred` rather than rustix's `UCred`, whose pid cannot be 0:
/// the kernel reports pid 0 for a peer outside our pid namespace, which any
/// process sharing the socket's network namespace can be.
pub(crate) fn peer_cred(sock: impl AsFd) -> Result<(i32, u32, u32), Errno> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given, and the
    // fd is borrowed, so open, for the call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(Errno::from_raw_os_error(last_errno()));
    }
    Ok((cred.pid, cred.uid, cred.gid))
}
