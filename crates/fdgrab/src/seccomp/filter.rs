//! Installing a filter on the calling thread.

use super::bpf::Program;
use super::ioctl;
use super::notify::Listener;
use rustix::io::Errno;

/// `SECCOMP_FILTER_FLAG_*` bits fdgrab uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstallFlags {
    /// `NEW_LISTENER` (5.0): return a listener fd. Only one listener may exist in a
    /// filter chain; a second gives `EBUSY`.
    pub new_listener: bool,
    /// `WAIT_KILLABLE_RECV` (5.19): once the listener has received a request, only
    /// a fatal signal interrupts the trapped call, so signal storms (Go's SIGURG)
    /// cannot make a call we already acted on come back with a new id.
    pub wait_killable_recv: bool,
    /// `TSYNC`: apply to every thread of the process (not combinable with
    /// `NEW_LISTENER` unless `TSYNC_ESRCH`, so it is not used with a listener here).
    pub tsync: bool,
}

impl InstallFlags {
    /// `NEW_LISTENER | WAIT_KILLABLE_RECV`: what a notifying supervisor wants.
    pub fn supervised() -> Self {
        Self {
            new_listener: true,
            wait_killable_recv: true,
            tsync: false,
        }
    }

    fn bits(self) -> libc::c_ulong {
        let mut b = 0;
        if self.new_listener {
            b |= libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
        }
        if self.wait_killable_recv {
            b |= libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
        }
        if self.tsync {
            b |= libc::SECCOMP_FILTER_FLAG_TSYNC;
        }
        b as libc::c_ulong
    }
}

/// Why a filter could not be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InstallError {
    /// `EBUSY` with `NEW_LISTENER`: a filter with a listener is already installed
    /// on this process (for example, `fdgrab run` inside `fdgrab run`).
    #[error("this process already has a seccomp filter with a listener (nested supervisor?); the kernel allows only one per filter chain")]
    ListenerExists,
    /// `EACCES`: neither `no_new_privs` nor `CAP_SYS_ADMIN`.
    #[error("installing a seccomp filter needs no_new_privs or CAP_SYS_ADMIN")]
    NeedsNoNewPrivs,
    /// `EINVAL` for a flag this kernel lacks.
    #[error("the kernel refused the filter or one of its flags (WAIT_KILLABLE_RECV needs Linux 5.19): {0}")]
    Unsupported(Errno),
    /// Any other errno from `seccomp(SECCOMP_SET_MODE_FILTER)`.
    #[error("seccomp(SECCOMP_SET_MODE_FILTER): {0}")]
    Other(Errno),
}

impl InstallError {
    /// The errno the kernel returned.
    pub fn errno(self) -> Errno {
        match self {
            InstallError::ListenerExists => Errno::BUSY,
            InstallError::NeedsNoNewPrivs => Errno::ACCESS,
            InstallError::Unsupported(e) | InstallError::Other(e) => e,
        }
    }

    /// Maps an errno from `seccomp(2)` to the error.
    pub fn from_errno(e: Errno) -> Self {
        match e {
            Errno::BUSY => InstallError::ListenerExists,
            Errno::ACCESS => InstallError::NeedsNoNewPrivs,
            Errno::INVAL | Errno::NOSYS => InstallError::Unsupported(e),
            e => InstallError::Other(e),
        }
    }
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`: exec can no longer grant privileges, which is
/// what lets an unprivileged thread install a filter.
pub fn set_no_new_privs() -> Result<(), Errno> {
    rustix::thread::set_no_new_privs(true)
}

/// `seccomp(SECCOMP_SET_MODE_FILTER)` on the calling thread. The filter is
/// inherited by threads and children created afterwards and survives exec.
///
/// This call allocates nothing, so it may run between `fork` and `exec`.
pub fn install_filter(
    prog: &[libc::sock_filter],
    flags: InstallFlags,
) -> Result<Option<Listener>, InstallError> {
    ioctl::set_mode_filter(prog, flags.bits())
        .map(|fd| fd.map(Listener::from_fd))
        .map_err(InstallError::from_errno)
}

/// [`install_filter`] for a built [`Program`] (allocates; not for use after fork).
pub fn install(prog: &Program, flags: InstallFlags) -> Result<Option<Listener>, InstallError> {
    install_filter(&prog.raw(), flags)
}
