//! The seccomp user-notification listener (`SECCOMP_RET_USER_NOTIF`, Linux 5.0).
//!
//! A trapped thread sleeps until the listener answers. [`Listener::recv`] takes one
//! request, [`Listener::respond`] answers it with a value, an errno or "continue",
//! and [`Listener::add_fd`] installs one of our descriptors in the target first.
//!
//! `ENOENT` from `RECV` or `SEND` is normal: the target was killed, or a signal
//! withdrew the request before we answered (it will be retried with a new id if
//! the call restarts). Callers get `Ok(None)` / [`SendError::Gone`] for it.

use super::ioctl;
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

/// `SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP` (6.6).
const FD_SYNC_WAKE_UP: u64 = 1;
/// `SECCOMP_USER_NOTIF_FLAG_CONTINUE` (5.5).
const FLAG_CONTINUE: u32 = 1;
/// `SECCOMP_ADDFD_FLAG_SETFD` (5.9) and `SECCOMP_ADDFD_FLAG_SEND` (5.14).
const ADDFD_FLAG_SETFD: u32 = 1;
const ADDFD_FLAG_SEND: u32 = 2;

/// The arguments of one trapped system call (`struct seccomp_data`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallData {
    /// The system call number, in the numbering of `arch`.
    pub nr: i32,
    /// The `AUDIT_ARCH_*` of the calling convention used (see
    /// [`crate::seccomp::bpf::NATIVE_AUDIT_ARCH`]): a number means a call only
    /// together with it.
    pub arch: u32,
    /// Where the caller's syscall instruction is.
    pub instruction_pointer: u64,
    /// The six argument registers, whatever the call uses; pointers point into
    /// the caller's memory (read them with [`crate::seccomp::read_validated`]).
    pub args: [u64; 6],
}

/// One request from a trapped thread (`struct seccomp_notif`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The cookie that names this request in every answer.
    pub id: u64,
    /// The **thread** id of the caller in our pid namespace, or 0 when the caller
    /// is outside it.
    pub tid: i32,
    /// The call itself.
    pub data: SyscallData,
}

/// How to answer a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// The call returns `val` (>= 0) without running.
    Value(i64),
    /// The call fails with this errno without running.
    Error(Errno),
    /// `SECCOMP_USER_NOTIF_FLAG_CONTINUE`: the kernel runs the call as if no filter
    /// had trapped it, with the caller's own credentials.
    Continue,
}

/// Why a `SEND` did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// `ENOENT`: the request is gone (the caller died or a signal withdrew it).
    #[error("the trapped call is gone (target killed or interrupted)")]
    Gone,
    /// Any other error of `SECCOMP_IOCTL_NOTIF_SEND`.
    #[error("SECCOMP_IOCTL_NOTIF_SEND: {0}")]
    Other(#[source] std::io::Error),
}

/// Where [`Listener::add_fd`] puts the descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddFdAt {
    /// The lowest free number, like `open`.
    Lowest,
    /// Exactly this number, replacing what is there (`SECCOMP_ADDFD_FLAG_SETFD`, 5.9).
    Number(i32),
}

/// Which `ID_VALID` encoding this kernel accepts: 0 unknown, 1 new, 2 old.
static ID_VALID_ENCODING: AtomicU8 = AtomicU8::new(0);

/// The listener end of a seccomp filter.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl Listener {
    /// Wraps a listener fd (from [`super::install_filter`], or received from a
    /// runtime over a unix socket).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Gives the fd back.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// `SECCOMP_IOCTL_NOTIF_SET_FLAGS(SYNC_WAKE_UP)` (6.6): wake the trapped thread
    /// on our CPU when answering, which roughly halves the round trip. Kernels
    /// without it answer `EINVAL`/`ENOTTY`; returns whether it took effect.
    pub fn set_sync_wake_up(&self) -> std::io::Result<bool> {
        match ioctl::notif_set_flags(self.fd.as_fd(), FD_SYNC_WAKE_UP) {
            Ok(()) => Ok(true),
            Err(Errno::INVAL) | Err(Errno::NOTTY) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// `SECCOMP_IOCTL_NOTIF_RECV`: blocks until a request is pending. `Ok(None)`
    /// on `ENOENT` (a request vanished between wake-up and read) and `EINTR`.
    pub fn recv(&self) -> std::io::Result<Option<Notification>> {
        match ioctl::notif_recv(self.fd.as_fd()) {
            Ok(n) => Ok(Some(Notification {
                id: n.id,
                tid: n.pid as i32,
                data: SyscallData {
                    nr: n.data.nr,
                    arch: n.data.arch,
                    instruction_pointer: n.data.instruction_pointer,
                    args: n.data.args,
                },
            })),
            Err(Errno::NOENT) | Err(Errno::INTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `SECCOMP_IOCTL_NOTIF_SEND`.
    pub fn respond(&self, id: u64, response: Response) -> Result<(), SendError> {
        let (val, error, flags) = match response {
            Response::Value(v) => (v, 0, 0),
            Response::Error(e) => (0, -e.raw_os_error(), 0),
            Response::Continue => (0, 0, FLAG_CONTINUE),
        };
        let resp = libc::seccomp_notif_resp {
            id,
            val,
            error,
            flags,
        };
        loop {
            match ioctl::notif_send(self.fd.as_fd(), &resp) {
                Ok(()) => return Ok(()),
                Err(Errno::INTR) => continue,
                Err(Errno::NOENT) => return Err(SendError::Gone),
                Err(e) => return Err(SendError::Other(e.into())),
            }
        }
    }

    /// `SECCOMP_IOCTL_NOTIF_ID_VALID`: whether request `id` is still pending, i.e.
    /// the thread is still inside the trapped call. Anything read from the target
    /// (its memory, its pid) is trustworthy only if this holds *afterwards*.
    ///
    /// Kernels 5.0–5.16 know only the first (`_IOR`) encoding; newer ones accept
    /// both. The working one is remembered.
    pub fn id_valid(&self, id: u64) -> bool {
        let fd = self.fd.as_fd();
        let new = libc::SECCOMP_IOCTL_NOTIF_ID_VALID as libc::c_ulong;
        match ID_VALID_ENCODING.load(Ordering::Relaxed) {
            1 => return ioctl::notif_id_valid(fd, new, id).is_ok(),
            2 => return ioctl::notif_id_valid(fd, ioctl::NOTIF_ID_VALID_OLD, id).is_ok(),
            _ => {}
        }
        match ioctl::notif_id_valid(fd, new, id) {
            Ok(()) => {
                ID_VALID_ENCODING.store(1, Ordering::Relaxed);
                true
            }
            Err(Errno::NOENT) => {
                // The kernel understood the request: the id is simply gone.
                ID_VALID_ENCODING.store(1, Ordering::Relaxed);
                false
            }
            Err(_) => match ioctl::notif_id_valid(fd, ioctl::NOTIF_ID_VALID_OLD, id) {
                Ok(()) => {
                    ID_VALID_ENCODING.store(2, Ordering::Relaxed);
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// `SECCOMP_IOCTL_NOTIF_ADDFD` (5.9): installs a copy of `src` in the trapped
    /// process. With `send` (5.14) the same ioctl also answers the request with the
    /// new number as the call's return value, atomically. Returns the number.
    ///
    /// Errors: `ENOENT` the request is gone; `EBUSY` with SEND after the request
    /// was already answered; `EMFILE` the target's table is full.
    pub fn add_fd(
        &self,
        id: u64,
        src: BorrowedFd<'_>,
        at: AddFdAt,
        cloexec: bool,
        send: bool,
    ) -> std::io::Result<i32> {
        use std::os::fd::AsRawFd;
        let (flags, newfd) = match at {
            AddFdAt::Lowest => (0, 0),
            AddFdAt::Number(n) => (ADDFD_FLAG_SETFD, n as u32),
        };
        let addfd = libc::seccomp_notif_addfd {
            id,
            flags: flags | if send { ADDFD_FLAG_SEND } else { 0 },
            srcfd: src.as_raw_fd() as u32,
            newfd,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        ioctl::notif_addfd(self.fd.as_fd(), &addfd).map_err(Into::into)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
