//! The front door for taking descriptors out of another process.
//!
//! [`grab`] is a thin, typed wrapper over `pidfd_getfd(2)` (Linux 5.6). The result
//! is a new descriptor in *our* table that refers to the same open file description
//! as the target's: offsets and status flags are shared, and it always carries
//! `FD_CLOEXEC`.

use crate::error::{Error, Result};
use crate::inject::{self, CloseMode};
use crate::pidfd::PidFd;
use crate::{procfs, sys, Pid, TargetFd};
use rustix::io::Errno;
use rustix::process::{pidfd_getfd, PidfdGetfdFlags};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// How a descriptor is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Backend {
    /// The best mechanism the kernel offers.
    #[default]
    Auto,
    /// `pidfd_getfd(2)`.
    Pidfd,
    /// ptrace injection: the target is made to send the fd over a unix socket
    /// (see [`crate::inject`]). Slower, and briefly stops one target thread.
    Ptrace,
}

impl Backend {
    /// The name used on the command line and in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Pidfd => "pidfd",
            Backend::Ptrace => "ptrace",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "pidfd" => Ok(Backend::Pidfd),
            "ptrace" => Ok(Backend::Ptrace),
            other => Err(format!(
                "unknown backend '{other}' (expected auto, pidfd or ptrace)"
            )),
        }
    }
}

/// One descriptor taken from a target.
#[derive(Debug)]
pub struct Grabbed {
    /// The number it has in the target.
    pub target_fd: TargetFd,
    /// Our copy (close-on-exec).
    pub fd: OwnedFd,
    /// The mechanism that actually took it (never `Auto`).
    pub backend: Backend,
}

/// Options for taking descriptors.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrabOptions {
    pub backend: Backend,
    /// Take the fds away from the target once the copies are verified.
    pub steal: Option<CloseMode>,
    /// What ptrace injection does about the target's seccomp filters.
    pub seccomp: inject::SeccompPolicy,
}

impl GrabOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The seccomp policy of the ptrace backend (e.g. [`inject::SeccompPolicy::force`]).
    pub fn seccomp(mut self, policy: inject::SeccompPolicy) -> Self {
        self.seccomp = policy;
        self
    }

    /// Makes the grab a steal: after every copy has been checked to be the same open
    /// file as the target's fd, the target's fds are closed (or get /dev/null) with
    /// [`crate::inject::close_in_target`]. If that fails, the copies are dropped and
    /// the target keeps its fds.
    pub fn steal(mut self, how: CloseMode) -> Self {
        self.steal = Some(how);
        self
    }

    /// Takes one descriptor.
    pub fn grab(&self, target: &PidFd, fd: TargetFd) -> Result<Grabbed> {
        let mut all = self.grab_many(target, &[fd])?;
        all.pop().ok_or(Error::NoSuchFd {
            pid: target.pid(),
            fd,
        })
    }

    /// Takes several descriptors, all or nothing: on the first failure the copies
    /// already made are closed and the error names the fd that failed.
    ///
    /// [`Backend::Auto`] uses `pidfd_getfd` and falls back to ptrace injection only
    /// when the kernel lacks it (`ENOSYS`); any other refusal is reported as is,
    /// because ptrace would be refused for the same reason. Every copy, whichever
    /// backend made it, is checked with [`same_file`].
    pub fn grab_many(&self, target: &PidFd, fds: &[TargetFd]) -> Result<Vec<Grabbed>> {
        let (copies, backend) = match self.backend {
            Backend::Pidfd => (grab_many(target, fds)?, Backend::Pidfd),
            Backend::Ptrace => (
                inject::grab_fds(target, fds, self.seccomp)?,
                Backend::Ptrace,
            ),
            Backend::Auto => {
                match grab_many(target, fds) {
                    Err(Error::Unsupported {
                        op: "pidfd_getfd", ..
                    }) => {
                        tracing::debug!(pid = target.pid(), "pidfd_getfd is not available (ENOSYS); falling back to ptrace injection");
                        (
                            inject::grab_fds(target, fds, self.seccomp)?,
                            Backend::Ptrace,
                        )
                    }
                    r => (r?, Backend::Pidfd),
                }
            }
        };
        let mut out = Vec::with_capacity(copies.len());
        let mut owner = None;
        for (&target_fd, fd) in fds.iter().zip(copies) {
            if !same_file_cached(target, &mut owner, target_fd, fd.as_fd())? {
                return Err(Error::WrongKind {
                    pid: target.pid(),
                    fd: target_fd,
                    reason: format!(
                        "the copy taken by {} is not the same open file as the target's fd \
                         (the target replaced the fd meanwhile?)",
                        backend.name()
                    ),
                });
            }
            out.push(Grabbed {
                target_fd,
                fd,
                backend,
            });
        }
        if let Some(how) = self.steal {
            inject::close_in_target(target, fds, how, self.seccomp)?;
        }
        Ok(out)
    }
}

/// Opens the target for taking fds with `backend`. Without `pidfd_open` (kernels
/// before 5.3, or a sandbox that refuses it with ENOSYS) the [`Backend::Auto`] and
/// [`Backend::Ptrace`] backends can still work, so the process is then named through
/// `/proc` ([`PidFd::open_procfs`]); [`Backend::Pidfd`] reports the error.
pub fn open_target(pid: Pid, backend: Backend) -> Result<PidFd> {
    match PidFd::open(pid) {
        Err(Error::Unsupported {
            op: "pidfd_open", ..
        }) if backend != Backend::Pidfd => {
            tracing::debug!(pid, "pidfd_open is not available (ENOSYS); naming the process through /proc for ptrace injection");
            PidFd::open_procfs(pid)
        }
        r => r,
    }
}

/// `pidfd_getfd(pidfd, fd, 0)`: copies descriptor `fd` out of the target.
///
/// Errors, as the kernel reports them:
/// - `EBADF` for an fd the target does not have → [`Error::NoSuchFd`]; before
///   Linux 6.9 an exiting target also gave `EBADF`, which we tell apart by polling
///   the pidfd → [`Error::NoSuchProcess`];
/// - `ESRCH` (exited or exiting target) → [`Error::NoSuchProcess`]. If only the
///   thread-group leader has exited and other threads still run, the copy is
///   retried through a thread pidfd of a live thread;
/// - `EPERM` from the ptrace access check, Yama or an LSM → [`Error::PermissionDenied`]
///   with the most likely cause;
/// - `EMFILE`/`ENFILE` → [`Error::TooManyFiles`]; `ENOSYS` → [`Error::Unsupported`].
pub fn grab(target: &PidFd, fd: TargetFd) -> Result<OwnedFd> {
    if target.is_procfs() {
        // No pidfd_open means no pidfd_getfd either (5.3 < 5.6).
        return Err(Error::Unsupported {
            op: "pidfd_getfd",
            needs: "5.6",
            source: Errno::NOSYS.into(),
        });
    }
    match pidfd_getfd(target, fd.as_raw(), PidfdGetfdFlags::empty()) {
        Ok(ours) => Ok(ours),
        Err(Errno::SRCH) if !target.is_thread() && target.is_alive() => {
            grab_via_live_thread(target, fd)
        }
        Err(e) => Err(getfd_error(target, fd, e)),
    }
}

/// Opens `pid` and takes one descriptor from it.
pub fn grab_pid(pid: Pid, fd: TargetFd) -> Result<OwnedFd> {
    grab(&PidFd::open(pid)?, fd)
}

/// Takes several descriptors in one pass, all or nothing.
pub fn grab_many(target: &PidFd, fds: &[TargetFd]) -> Result<Vec<OwnedFd>> {
    fds.iter().map(|&fd| grab(target, fd)).collect()
}

/// A process pidfd reports `ESRCH` once the thread-group leader has exited, even
/// while other threads run and the fd table is alive. A thread pidfd of one of those
/// threads reaches the same table. The process pidfd is still alive (checked by the
/// caller), so the pid has not been reused and `/proc/PID/task` lists its threads.
fn grab_via_live_thread(target: &PidFd, fd: TargetFd) -> Result<OwnedFd> {
    let pid = target.pid();
    let tids = procfs::tasks(pid).map_err(|_| Error::NoSuchProcess { pid })?;
    for tid in tids.into_iter().filter(|&t| t != pid) {
        let Ok(thread) = PidFd::open_thread(tid) else {
            continue;
        };
        match pidfd_getfd(&thread, fd.as_raw(), PidfdGetfdFlags::empty()) {
            Ok(ours) => {
                tracing::debug!(
                    pid,
                    tid,
                    fd = fd.as_raw(),
                    "leader exited; took fd through a thread pidfd"
                );
                return Ok(ours);
            }
            Err(Errno::SRCH) => continue,
            Err(e) => return Err(getfd_error(&thread, fd, e).with_pid(pid)),
        }
    }
    Err(Error::NoSuchProcess { pid })
}

fn getfd_error(target: &PidFd, fd: TargetFd, e: Errno) -> Error {
    let pid = target.pid();
    match e {
        Errno::BADF if !target.is_alive() => Error::NoSuchProcess { pid },
        Errno::BADF => Error::NoSuchFd { pid, fd },
        Errno::SRCH => Error::NoSuchProcess { pid },
        Errno::PERM | Errno::ACCESS => Error::PermissionDenied {
            pid,
            fd: Some(fd),
            op: "pidfd_getfd",
            hint: permission_hint(pid),
        },
        Errno::MFILE | Errno::NFILE => Error::TooManyFiles { pid, fd },
        Errno::NOSYS => Error::Unsupported {
            op: "pidfd_getfd",
            needs: "5.6",
            source: e.into(),
        },
        e => Error::io("pidfd_getfd", pid, Some(fd), e),
    }
}

impl Error {
    fn with_pid(self, pid: Pid) -> Self {
        match self {
            Error::NoSuchProcess { .. } => Error::NoSuchProcess { pid },
            Error::NoSuchFd { fd, .. } => Error::NoSuchFd { pid, fd },
            Error::PermissionDenied { fd, op, hint, .. } => {
                Error::PermissionDenied { pid, fd, op, hint }
            }
            Error::TooManyFiles { fd, .. } => Error::TooManyFiles { pid, fd },
            other => other,
        }
    }
}

/// Works out the most likely reason the ptrace access check (`PTRACE_MODE_ATTACH_REALCREDS`)
/// refused us, so the user is not left guessing between uid, dumpability, Yama and LSMs.
pub(crate) fn permission_hint(pid: Pid) -> String {
    use std::os::unix::fs::MetadataExt;
    let our_uid = rustix::process::getuid().as_raw();
    let our_euid = rustix::process::geteuid().as_raw();
    let mut causes = Vec::new();
    let status = procfs::status(pid).ok();
    if let Some(uids) = status.as_ref().and_then(|s| s.uids) {
        if our_euid != 0 && uids.iter().any(|&u| u != our_uid) {
            causes.push(format!(
                "the target runs as uid {} (real/effective/saved {}/{}/{}) and fdgrab as uid {our_uid}; \
                 taking fds needs the same uids or CAP_SYS_PTRACE",
                uids[1], uids[0], uids[1], uids[2]
            ));
        }
        // The files inside /proc/PID of a non-dumpable process are owned by root,
        // whatever its uid.
        if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/status")) {
            if meta.uid() == 0 && uids[1] != 0 && our_euid != 0 {
                causes.push(
                    "the target is not dumpable (set-uid/set-gid exec, or prctl(PR_SET_DUMPABLE, 0))"
                        .into(),
                );
            }
        }
    }
    match procfs::yama_ptrace_scope() {
        Some(1) if our_euid != 0 => causes.push(
            "Yama ptrace_scope is 1: only descendants can be accessed without CAP_SYS_PTRACE"
                .into(),
        ),
        Some(2) => causes
            .push("Yama ptrace_scope is 2: only CAP_SYS_PTRACE may access other processes".into()),
        Some(3) => {
            causes.push("Yama ptrace_scope is 3: process access is disabled for everyone".into())
        }
        _ => {}
    }
    if causes.is_empty() {
        let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
        let lsm = lsm.trim();
        format!(
            "possible causes: another uid, a non-dumpable target, Yama's ptrace_scope, or an LSM \
             policy{}",
            if lsm.is_empty() {
                String::new()
            } else {
                format!(" (active LSMs: {lsm})")
            }
        )
    } else {
        causes.join("; ")
    }
}

/// Checks that `ours` and the target's `fd` are the same open file description.
///
/// With `kcmp(KCMP_FILE)` (`CONFIG_KCMP`, and allowed to us) the answer is exact: the
/// same *open* (shared offset and flags), which implies the same device and inode.
/// Without it, the device and inode numbers are compared (`stat` of
/// `/proc/PID/task/TID/fd/N` against `fstat`), which proves the same file only. The
/// table is reached through a live thread, so a process whose leader has exited is
/// checked too.
pub fn same_file(target: &PidFd, fd: TargetFd, ours: BorrowedFd<'_>) -> Result<bool> {
    same_file_cached(target, &mut None, fd, ours)
}

/// [`same_file`] that asks about the process's own id first, so the common case
/// costs one `kcmp`. Only a process whose leader has exited (its table reachable
/// through another thread) needs a live thread looked up in `/proc`; that thread is
/// kept in `owner` for the next fds.
fn same_file_cached(
    target: &PidFd,
    owner: &mut Option<Pid>,
    fd: TargetFd,
    ours: BorrowedFd<'_>,
) -> Result<bool> {
    if let Some(tid) = *owner {
        return same_file_in(target, tid, fd, ours);
    }
    match same_file_in(target, target.pid(), fd, ours) {
        Err(Error::NoSuchFd { .. }) | Err(Error::NoSuchProcess { .. }) => {
            let tid = inject::fd_table_owner(target)?;
            *owner = Some(tid);
            same_file_in(target, tid, fd, ours)
        }
        r => r,
    }
}

/// [`same_file`] with the thread that owns the fd table already chosen.
fn same_file_in(target: &PidFd, owner: Pid, fd: TargetFd, ours: BorrowedFd<'_>) -> Result<bool> {
    let pid = target.pid();
    let me = rustix::process::getpid().as_raw_nonzero().get();
    match sys::kcmp_file(owner, fd.as_raw(), me, ours.as_raw_fd()) {
        Ok(same) => return Ok(same),
        Err(Errno::NOSYS) | Err(Errno::PERM) | Err(Errno::ACCESS) => {}
        Err(Errno::BADF) => return Err(Error::NoSuchFd { pid, fd }),
        Err(Errno::SRCH) => return Err(Error::NoSuchProcess { pid }),
        Err(e) => return Err(Error::io("kcmp", pid, Some(fd), e)),
    }
    let theirs = match rustix::fs::stat(format!("/proc/{pid}/task/{owner}/fd/{fd}")) {
        Ok(st) => st,
        Err(Errno::NOENT) if target.is_alive() => return Err(Error::NoSuchFd { pid, fd }),
        Err(Errno::NOENT) | Err(Errno::SRCH) => return Err(Error::NoSuchProcess { pid }),
        Err(e) => return Err(Error::io("stat(/proc/PID/task/TID/fd/N)", pid, Some(fd), e)),
    };
    let mine = rustix::fs::fstat(ours.as_fd()).map_err(|e| Error::io("fstat", pid, Some(fd), e))?;
    Ok((theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino))
}
