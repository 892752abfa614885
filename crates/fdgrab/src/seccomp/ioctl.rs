//! Raw `seccomp(2)` and the listener ioctls. This file holds the seccomp layer's
//! `unsafe`; everything above it is typed.

use crate::sys::errno;
use rustix::io::Errno;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;

/// `_IOR('!', 2, __u64)`: the first, mistaken encoding of `ID_VALID` (5.0–5.16
/// kernels know only this one; later ones accept both).
pub(crate) const NOTIF_ID_VALID_OLD: libc::c_ulong = (2 << 30) | (8 << 16) | (0x21 << 8) | 2;

const _: () = assert!(std::mem::size_of::<libc::seccomp_notif>() == 80);
const _: () = assert!(std::mem::size_of::<libc::seccomp_notif_resp>() == 24);
const _: () = assert!(std::mem::size_of::<libc::seccomp_notif_addfd>() == 24);
const _: () = assert!(libc::SECCOMP_IOCTL_NOTIF_ID_VALID as libc::c_ulong == 0x4008_2102);

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog)`. Returns the listener fd when
/// `flags` has `NEW_LISTENER`, otherwise `None`.
pub(crate) fn set_mode_filter(
    prog: &[libc::sock_filter],
    flags: libc::c_ulong,
) -> Result<Option<OwnedFd>, Errno> {
    let len = u16::try_from(prog.len()).map_err(|_| Errno::INVAL)?;
    let fprog = libc::sock_fprog {
        len,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `len` initialised instructions that outlive the call;
    // the kernel copies them and keeps no pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER as libc::c_long,
            flags as libc::c_long,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(errno());
    }
    if flags & libc::SECCOMP_FILTER_FLAG_NEW_LISTENER as libc::c_ulong != 0 {
        let raw = i32::try_from(r).map_err(|_| Errno::INVAL)?;
        // SAFETY: with NEW_LISTENER the return value is a fresh fd that we now own.
        Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }))
    } else {
        Ok(None)
    }
}

/// `SECCOMP_IOCTL_NOTIF_RECV`. The struct is zeroed first: the kernel refuses a
/// non-zero one with `EINVAL`.
pub(crate) fn notif_recv(fd: BorrowedFd<'_>) -> Result<libc::seccomp_notif, Errno> {
    // SAFETY: seccomp_notif is plain old data; all-zero is a valid value.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: `n` is a writable seccomp_notif, the size the ioctl number encodes.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(n)
    }
}

/// `SECCOMP_IOCTL_NOTIF_SEND`.
pub(crate) fn notif_send(fd: BorrowedFd<'_>, resp: &libc::seccomp_notif_resp) -> Result<(), Errno> {
    let mut resp = *resp;
    // SAFETY: `resp` is a seccomp_notif_resp, the size the ioctl number encodes.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `SECCOMP_IOCTL_NOTIF_ID_VALID` with either encoding.
pub(crate) fn notif_id_valid(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    id: u64,
) -> Result<(), Errno> {
    let mut id = id;
    // SAFETY: the kernel reads one u64 through the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request as _, &mut id) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `SECCOMP_IOCTL_NOTIF_ADDFD`: returns the fd number installed in the target.
pub(crate) fn notif_addfd(
    fd: BorrowedFd<'_>,
    addfd: &libc::seccomp_notif_addfd,
) -> Result<i32, Errno> {
    let mut a = *addfd;
    // SAFETY: `a` is a seccomp_notif_addfd, the size the ioctl number encodes.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &mut a) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS`: the flags travel by value, not by pointer.
pub(crate) fn notif_set_flags(fd: BorrowedFd<'_>, flags: u64) -> Result<(), Errno> {
    // SAFETY: this ioctl takes an integer argument; no memory is passed.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
            flags as libc::c_ulong,
        )
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}
