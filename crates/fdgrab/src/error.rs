//! Typed errors. Every variant that concerns a target names its pid (and fd where
//! there is one), because "EBADF" alone does not tell a user which of two processes
//! or descriptors was wrong.

use crate::{Pid, TargetFd};
use std::io;

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with enough context to act on it.
///
/// Variants that wrap an OS error expose it through `source()` rather than in their
/// own message, so printing the chain (`{:#}` with anyhow) shows it exactly once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process (or thread) does not exist, has exited, or was reaped.
    #[error("process {pid}: no such process (it does not exist, has exited, or was reaped)")]
    NoSuchProcess {
        /// The pid (or tid) that named it.
        pid: Pid,
    },

    /// The target is alive but has nothing open at that number.
    #[error("process {pid} has no open fd {fd}")]
    NoSuchFd {
        /// The target.
        pid: Pid,
        /// The number it does not have.
        fd: TargetFd,
    },

    /// The kernel refused the access check (`EPERM`/`EACCES`).
    #[error("permission denied: {op} on process {pid}{}: {hint}", fd_suffix(*.fd))]
    PermissionDenied {
        /// The target.
        pid: Pid,
        /// The target's fd, when one was involved.
        fd: Option<TargetFd>,
        /// The operation refused, e.g. `pidfd_getfd`.
        op: &'static str,
        /// The likely cause, worked out from the target's credentials and the system's
        /// ptrace policy.
        hint: String,
    },

    /// The running kernel lacks a system call or flag we need (`ENOSYS`, or `EINVAL`
    /// for an unknown flag).
    #[error("{op} is not supported by this kernel (needs Linux {needs} or later)")]
    Unsupported {
        /// The system call or flag, e.g. `pidfd_getfd`.
        op: &'static str,
        /// The first Linux version that has it, e.g. `5.6`.
        needs: &'static str,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },

    /// Our own fd table is full (`EMFILE`/`ENFILE`).
    #[error("too many open files in fdgrab while taking fd {fd} from process {pid}")]
    TooManyFiles {
        /// The target.
        pid: Pid,
        /// The fd being taken when our table filled up.
        fd: TargetFd,
    },

    /// An argument that no process could satisfy.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A file we expected to be of one kind is of another (e.g. `cat` on a socket
    /// without consuming).
    #[error("process {pid} fd {fd}: {reason}")]
    WrongKind {
        /// The target.
        pid: Pid,
        /// Its fd.
        fd: TargetFd,
        /// What it is and why that does not fit.
        reason: String,
    },

    /// A socket selector (`fdgrab exec`) matched none of the target's sockets.
    #[error("process {pid} has no socket matching '{selector}'; {available}")]
    NoMatchingSocket {
        /// The target.
        pid: Pid,
        /// The selector as given, e.g. `tcp:*:8080`.
        selector: String,
        /// What the process does listen on, for the user to pick from.
        available: String,
    },

    /// The seccomp filter of the thread fdgrab would inject into answers one of the
    /// calls it needs with something other than "allow" (kill, trap, errno, trace,
    /// user notification), and there was no other way (see `docs/injection.md`). The
    /// call was not run; the target was left as it was.
    #[error("process {pid}: the seccomp filter of thread {tid} (filter {filter}, 0 = newest) answers the injected call {call} with {action}; refusing to inject: {hint}")]
    SeccompRefused {
        /// The target.
        pid: Pid,
        /// The thread whose filter refuses.
        tid: Pid,
        /// The call as it would have been made, e.g. `socket(0x1, 0x80001, 0x0)`.
        call: String,
        /// The filter's action, e.g. `SECCOMP_RET_KILL_PROCESS`.
        action: String,
        /// Which filter of the thread's stack (0 = most recently installed).
        filter: usize,
        /// What the user can do about it.
        hint: String,
    },

    /// The thread is under seccomp, and its filters cannot be read to check the
    /// injected calls (this needs `CAP_SYS_ADMIN` and a caller not under seccomp).
    /// Nothing was done to the target; the caller may force injection.
    #[error("process {pid}: thread {tid} is under seccomp ({mode}) and fdgrab cannot check its filters ({why}); an injected call it forbids could kill the process, so nothing was done (force it with --force)")]
    SeccompUnchecked {
        /// The target.
        pid: Pid,
        /// The thread that would be injected into.
        tid: Pid,
        /// Its seccomp mode (`strict` or `filter`).
        mode: &'static str,
        /// Why its filters cannot be read.
        why: String,
    },

    /// The copy we hold is not the open file the target has at `fd` (the target
    /// replaced the fd between the copy and the check).
    #[error(
        "process {pid} fd {fd}: the copy taken by {method} is not the same open file as the \
         target's fd (the target replaced the fd meanwhile?)"
    )]
    IdentityMismatch {
        /// The target.
        pid: Pid,
        /// Its fd.
        fd: TargetFd,
        /// The mechanism that made the copy (`pidfd_getfd` or `ptrace`).
        method: &'static str,
    },

    /// A system call on fdgrab's own side failed (no target is involved).
    #[error("{op}")]
    Local {
        /// The operation, e.g. `opening /dev/null`.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Any other system error, with the operation that hit it.
    #[error("{op} (process {pid}{})", fd_suffix(*.fd))]
    Io {
        /// The operation, e.g. `reading /proc/PID/fdinfo/N`.
        op: &'static str,
        /// The target.
        pid: Pid,
        /// The target's fd, when one was involved.
        fd: Option<TargetFd>,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A program we were to start did not start ([`crate::spawn`]).
    #[error(transparent)]
    Spawn(#[from] crate::spawn_error::SpawnError),
}

fn fd_suffix(fd: Option<TargetFd>) -> String {
    fd.map(|fd| format!(", fd {fd}")).unwrap_or_default()
}

impl Error {
    /// Builds an `Io` error from a rustix errno.
    pub(crate) fn io(
        op: &'static str,
        pid: Pid,
        fd: Option<TargetFd>,
        e: rustix::io::Errno,
    ) -> Self {
        Error::Io {
            op,
            pid,
            fd,
            source: e.into(),
        }
    }

    /// Builds a [`Error::Local`] error from a rustix errno.
    pub(crate) fn local(op: &'static str, e: rustix::io::Errno) -> Self {
        Error::Local {
            op,
            source: e.into(),
        }
    }

    /// The pid the error is about, when it is about one.
    pub fn pid(&self) -> Option<Pid> {
        match self {
            Error::NoSuchProcess { pid }
            | Error::NoSuchFd { pid, .. }
            | Error::PermissionDenied { pid, .. }
            | Error::TooManyFiles { pid, .. }
            | Error::WrongKind { pid, .. }
            | Error::IdentityMismatch { pid, .. }
            | Error::NoMatchingSocket { pid, .. }
            | Error::SeccompRefused { pid, .. }
            | Error::SeccompUnchecked { pid, .. }
            | Error::Io { pid, .. } => Some(*pid),
            Error::Unsupported { .. }
            | Error::InvalidArgument(_)
            | Error::Local { .. }
            | Error::Spawn(_) => None,
        }
    }
}
