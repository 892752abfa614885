//! The front door for taking descriptors out of another process.
//!
//! [`GrabOptions`] is the one way in: `pidfd_getfd(2)` (Linux 5.6) or ptrace
//! injection, every copy verified to be the target's open file, and for a steal a
//! hook between the copy and the close. [`Preflight`] checks a whole command before
//! its first side effect. A copy is a new descriptor in *our* table that refers to
//! the same open file description as the target's: offsets and status flags are
//! shared, and it always carries `FD_CLOEXEC`.

use crate::access::{self, permission_hint, same_file_cached};
use crate::error::{Error, Result};
use crate::inject::{self, CloseMode};
use crate::pidfd::PidFd;
use crate::{procfs, Pid, TargetFd};
use rustix::io::Errno;
use rustix::process::PidfdGetfdFlags;
use std::os::fd::{AsFd, OwnedFd};

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

    /// The kernel mechanism behind a backend that took an fd, as reported in JSON
    /// output and logs: `pidfd_getfd` or `ptrace`.
    pub fn method(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Pidfd => "pidfd_getfd",
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
    /// The mechanism that actually took it (never `Auto`); see [`Backend::method`].
    pub backend: Backend,
}

/// The front door for taking descriptors: a builder with the backend and, for a
/// steal, what to leave behind in the target.
///
/// ```no_run
/// use fdgrab::{grab::Preflight, CloseMode, GrabOptions, TargetFd};
/// let fd = TargetFd::new(3).expect("fd 3");
/// let target = Preflight::new(1234).injects().existing(&[fd]).check()?;
/// // Steal fd 3: copy, verify, hand the copies on, then close it in the target.
/// let taken = GrabOptions::new()
///     .steal(CloseMode::Close)
///     .grab_many_then(&target, &[fd], |copies| -> fdgrab::Result<usize> {
///         Ok(copies.len()) // e.g. start the process that will own them
///     })?;
/// taken.closed?;
/// # Ok::<(), fdgrab::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct GrabOptions {
    backend: Backend,
    steal: Option<CloseMode>,
    seccomp: inject::SeccompPolicy,
}

/// What [`GrabOptions::grab_many_then`] did.
#[derive(Debug)]
#[must_use = "a failed close leaves the fds in the target: check `closed`"]
pub struct Taken<T> {
    /// What the hook returned.
    pub value: T,
    /// The mechanism that took the copies.
    pub backend: Backend,
    /// The close half of a steal: `Ok` when the target no longer has the fds (or
    /// when this was not a steal); on error the target still has them all.
    pub closed: Result<()>,
}

impl GrabOptions {
    /// Copies with [`Backend::Auto`], no steal.
    pub fn new() -> Self {
        Self::default()
    }

    /// How the copies are taken (default [`Backend::Auto`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Makes the grab a steal: after every copy has been checked to be the same open
    /// file as the target's fd (and the hook of [`Self::grab_many_then`] has run), the
    /// target's fds are closed (or get /dev/null) with
    /// [`crate::inject::close_in_target`]. If that fails the target keeps its fds.
    /// Right before the close, each fd must still be the file that was copied (the
    /// target may have reused the number while the hook ran), else
    /// [`Error::IdentityMismatch`] and nothing is closed.
    pub fn steal(mut self, how: CloseMode) -> Self {
        self.steal = Some(how);
        self
    }

    /// What the ptrace backend (and a steal's close) does about the target's seccomp
    /// filters, e.g. [`inject::SeccompPolicy::force`].
    pub fn seccomp(mut self, policy: inject::SeccompPolicy) -> Self {
        self.seccomp = policy;
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
    /// because ptrace would be refused for the same reason. A copy the target sent
    /// (ptrace) is checked with [`access::same_file`] ([`Error::IdentityMismatch`]
    /// if the target replaced the fd meanwhile); one `pidfd_getfd` made is the
    /// target's file by construction. For a steal, a failed close is returned as
    /// the error and the copies are dropped.
    pub fn grab_many(&self, target: &PidFd, fds: &[TargetFd]) -> Result<Vec<Grabbed>> {
        let taken = self.grab_many_then(target, fds, Ok::<_, Error>)?;
        taken.closed?;
        Ok(taken.value)
    }

    /// [`Self::grab_many`] with a hook that receives the verified copies *before* a
    /// steal closes anything in the target. The hook hands the copies on (starts the
    /// command that will own them, sends them); if it fails, nothing is closed. The
    /// close result comes back in [`Taken::closed`] rather than as an error, so the
    /// caller still holds what the hook returned (a started child, say) when the
    /// target refused to let go.
    pub fn grab_many_then<T, E: From<Error>>(
        &self,
        target: &PidFd,
        fds: &[TargetFd],
        hook: impl FnOnce(Vec<Grabbed>) -> std::result::Result<T, E>,
    ) -> std::result::Result<Taken<T>, E> {
        if self.steal.is_some() {
            inject::check_close_allowed(target, self.seccomp)?;
        }
        let (copies, backend) = self.copy(target, fds)?;
        let mut out = Vec::with_capacity(copies.len());
        let mut owner = None;
        for (&target_fd, fd) in fds.iter().zip(copies) {
            // `pidfd_getfd` copies, through the pidfd, whatever the target's table
            // holds at that number at that instant: the copy *is* the target's
            // file, and a `kcmp` right after could only see a later change of the
            // target's own, which no check can rule out. An fd that came over a
            // socket from injected code is compared.
            if backend == Backend::Ptrace
                && !same_file_cached(target, &mut owner, target_fd, fd.as_fd())?
            {
                return Err(Error::IdentityMismatch {
                    pid: target.pid(),
                    fd: target_fd,
                    method: backend.method(),
                }
                .into());
            }
            out.push(Grabbed {
                target_fd,
                fd,
                backend,
            });
        }
        // In the message, not only as a field, so `-v` output states it plainly.
        tracing::info!(pid = target.pid(), fds = ?fds, "took copies (method: {})", backend.method());
        // The hook takes the copies away and may run for milliseconds (starting
        // CMD), while the target may close a number and reuse it (accept, open).
        // What a steal closes must still be the file it copied.
        let copied = match self.steal {
            Some(_) => out
                .iter()
                .map(|g| {
                    let st = crate::statx::cached(&g.fd).map_err(|e| Error::local("stat", e))?;
                    Ok((g.target_fd, (st.dev, st.ino)))
                })
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let value = hook(out)?;
        let closed = match self.steal {
            Some(how) => still_copied(target, &copied, backend)
                .and_then(|()| inject::close_in_target(target, fds, how, self.seccomp)),
            None => Ok(()),
        };
        Ok(Taken {
            value,
            backend,
            closed,
        })
    }

    fn copy(&self, target: &PidFd, fds: &[TargetFd]) -> Result<(Vec<OwnedFd>, Backend)> {
        let by_pidfd = || fds.iter().map(|&fd| pidfd_getfd(target, fd)).collect();
        // The target sends the copies over a unix socket: refuse what the kernel
        // would refuse, naming the fd, before stopping anything.
        let by_ptrace = || {
            // One status read names the fd table's owner for both the check and the
            // session (which also takes its seccomp mode from it).
            let owner = access::fd_table_owner_status(target)?;
            if let Some(&(fd, why)) = unpassable_in(target, owner.0, fds)?.first() {
                return Err(unpassable_error(
                    target.pid(),
                    fd,
                    why,
                    "taken by the ptrace backend",
                ));
            }
            inject::grab_fds_of(target, owner, fds, self.seccomp)
        };
        Ok(match self.backend {
            Backend::Pidfd => (by_pidfd()?, Backend::Pidfd),
            Backend::Ptrace => (by_ptrace()?, Backend::Ptrace),
            Backend::Auto => {
                match by_pidfd() {
                    Err(Error::Unsupported {
                        op: "pidfd_getfd", ..
                    }) => {
                        tracing::debug!(pid = target.pid(), "pidfd_getfd is not available (ENOSYS); falling back to ptrace injection");
                        (by_ptrace()?, Backend::Ptrace)
                    }
                    r => (r?, Backend::Pidfd),
                }
            }
        })
    }
}

/// Checks that each of the target's fds still is the file (device and inode) it was
/// when copied: [`Error::IdentityMismatch`] for the first that is not.
fn still_copied(target: &PidFd, copied: &[(TargetFd, (u64, u64))], backend: Backend) -> Result<()> {
    if copied.is_empty() {
        return Ok(());
    }
    // Only the file is compared: one owner lookup and one stat per fd, not the
    // start time and fdinfo that `fd_identity` also reads.
    let owner = access::fd_table_owner(target)?;
    for &(fd, file) in copied {
        let now = access::fd_stat(target, owner, fd)?;
        if (now.dev, now.ino) != file {
            tracing::warn!(
                pid = target.pid(),
                fd = fd.as_raw(),
                "the target reused the fd number before the steal could close it; leaving it open"
            );
            return Err(Error::IdentityMismatch {
                pid: target.pid(),
                fd,
                method: backend.method(),
            });
        }
    }
    Ok(())
}

/// What a command is about to do to a process, checked as a whole before it starts.
///
/// ```no_run
/// use fdgrab::{grab::Preflight, Backend, TargetFd};
/// let fd = TargetFd::new(1).expect("fd 1");
/// // `put` and `redirect` inject; the fd must exist and be under the target's limit.
/// let target = Preflight::new(1234)
///     .backend(Backend::Ptrace)
///     .injects()
///     .existing(&[fd])
///     .install_at(fd)
///     .check()?;
/// # Ok::<(), fdgrab::Error>(())
/// ```
///
/// The checks, in order (the first failure is returned):
/// 1. the process exists ([`Error::NoSuchProcess`]); a zombie whose threads have all
///    exited counts as gone;
/// 2. it is not a kernel thread ([`Error::InvalidArgument`]: it has no fds of its own);
/// 3. for injection ([`Preflight::injects`]): the thread fdgrab would stop is not
///    traced by another process,
///    and the ptrace attach check passes (an `O_RDONLY` open of
///    `/proc/PID/task/TID/mem` runs the same `PTRACE_MODE_ATTACH` check, Yama and
///    LSMs included, without attaching) → [`Error::PermissionDenied`];
/// 4. every fd in `existing` is open in the target ([`Error::NoSuchFd`]);
/// 5. every number in `install_at` is below the target's soft `RLIMIT_NOFILE`
///    ([`Error::InvalidArgument`] naming the limit: `dup3` would refuse it).
///
/// When every fd in `existing` is open in the leader's own table, one `readlink`
/// per fd answers 1, 2 and 4 together (see `leader_has_all`); the checks are made
/// one by one, each with its own error, only when one of those fails.
///
/// A check cannot stop the target from changing afterwards (closing the fd, exiting);
/// the operation itself still reports that, as the same error. What only an injected
/// call can find out (the target's seccomp filter or LSM refusing it) is reported by
/// the injection before it changes the target; [`crate::inject::put_with`] and
/// [`crate::inject::redirect_with`] let a caller defer its own side effects to that
/// point.
#[derive(Clone, Debug)]
pub struct Preflight {
    pid: Pid,
    backend: Backend,
    injects: bool,
    existing: Vec<TargetFd>,
    install_at: Vec<TargetFd>,
}

impl Preflight {
    /// Starts a plan for process `pid` (backend [`Backend::Auto`], no injection).
    pub fn new(pid: Pid) -> Self {
        Self {
            pid,
            backend: Backend::Auto,
            injects: false,
            existing: Vec::new(),
            install_at: Vec::new(),
        }
    }

    /// The backend fds will be taken with.
    ///
    /// Copying with [`Backend::Ptrace`] needs no [`Self::injects`]: its
    /// `PTRACE_SEIZE` comes before it changes anything in the target and is
    /// refused for the same reasons (another tracer, the attach check), with the
    /// same [`Error::PermissionDenied`] naming the tracer or the likely cause. A
    /// command that has a side effect of its own before it injects (a steal starts
    /// CMD before its close) asks for the check up front with [`Self::injects`].
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The command will stop a thread of the target and inject calls (put, redirect,
    /// the close half of steal).
    pub fn injects(mut self) -> Self {
        self.injects = true;
        self
    }

    /// Fds the target must have open.
    pub fn existing(mut self, fds: &[TargetFd]) -> Self {
        self.existing.extend_from_slice(fds);
        self
    }

    /// A number a descriptor will be installed at in the target.
    pub fn install_at(mut self, fd: TargetFd) -> Self {
        self.install_at.push(fd);
        self
    }

    /// Runs the checks and returns the opened target.
    pub fn check(self) -> Result<PidFd> {
        let pid = self.pid;
        let target = open_target(pid, self.backend)?;
        let owner = if self.leader_has_all(&target) {
            if self.injects {
                access::check_attach(&target, pid)?;
            }
            pid
        } else {
            self.owner_or_refusal(&target)?
        };
        // /proc/PID/limits only when a number must be checked against it: reading
        // it takes a dozen system calls, and most commands install nothing.
        let limit = (!self.install_at.is_empty())
            .then(|| procfs::nofile_limit(pid))
            .flatten();
        if let Some(limit) = limit {
            if let Some(fd) = self
                .install_at
                .iter()
                .find(|fd| fd.as_raw() as u64 >= limit)
            {
                return Err(Error::InvalidArgument(format!(
                    "fd {fd} is not below process {pid}'s open-file limit {limit} \
                     (RLIMIT_NOFILE; dup3 refuses numbers at or above it)"
                )));
            }
        }
        tracing::debug!(pid, owner, injects = self.injects, "preflight passed");
        Ok(target)
    }

    /// The common case, in one `readlink` per fd: every fd in `existing` is open in
    /// the leader's own table. That table proves checks 1 and 2 at once (a kernel
    /// thread has none, and an exited leader's is gone: its `fd` directory is
    /// empty), so the `stat` that [`Self::owner_or_refusal`] reads is not needed.
    /// The pidfd is polled after the reads: a process still alive then is the one
    /// they read (a pid is reused only once its process is reaped).
    fn leader_has_all(&self, target: &PidFd) -> bool {
        let pid = self.pid;
        !self.existing.is_empty()
            && self
                .existing
                .iter()
                .all(|&fd| access::fd_is_open(target, pid, fd).is_ok())
            && target.is_alive()
    }

    /// Checks 1 to 4 one by one, each failure named; returns the thread that owns
    /// the fd table.
    fn owner_or_refusal(&self, target: &PidFd) -> Result<Pid> {
        let pid = self.pid;
        // The checks below read /proc; a failure to read it at all (fdgrab's own fd
        // table full, /proc missing) is reported as what it is, not as "no process".
        let (kernel_thread, leader_alive) =
            procfs::kernel_thread_and_leader_alive(pid).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) | Some(libc::ESRCH) => Error::NoSuchProcess { pid },
                _ => Error::Io {
                    op: "reading /proc/PID/stat",
                    pid,
                    fd: None,
                    source: e,
                },
            })?;
        // A reaped or fully exited process fails here, before anything else is read.
        let owner = access::fd_table_owner_given(target, Some(leader_alive))?;
        if kernel_thread {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            return Err(Error::InvalidArgument(format!(
                "process {pid} ({}) is a kernel thread: it has no fds of its own, and fdgrab \
                 never stops or injects into kernel threads",
                name.trim()
            )));
        }
        if self.injects {
            access::check_attach(target, owner)?;
        }
        for &fd in &self.existing {
            access::fd_is_open(target, owner, fd)?;
        }
        Ok(owner)
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

/// `pidfd_getfd(pidfd, fd, 0)`: copies descriptor `fd` out of the target. This is
/// the bare primitive: no fallback and no identity check. Use [`GrabOptions`]
/// unless you mean exactly this call.
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
pub fn pidfd_getfd(target: &PidFd, fd: TargetFd) -> Result<OwnedFd> {
    let Some(pidfd) = target.as_pidfd() else {
        // No pidfd_open means no pidfd_getfd either (5.3 < 5.6).
        return Err(Error::Unsupported {
            op: "pidfd_getfd",
            needs: "5.6",
            source: Errno::NOSYS.into(),
        });
    };
    match rustix::process::pidfd_getfd(pidfd, fd.as_raw(), PidfdGetfdFlags::empty()) {
        Ok(ours) => Ok(ours),
        Err(Errno::SRCH) if !target.is_thread() && target.is_alive() => {
            grab_via_live_thread(target, fd)
        }
        Err(e) => Err(getfd_error(target, fd, e)),
    }
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
        let Some(thread_fd) = thread.as_pidfd() else {
            continue;
        };
        match rustix::process::pidfd_getfd(thread_fd, fd.as_raw(), PidfdGetfdFlags::empty()) {
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

/// A read-only descriptor for the file behind the target's `fd`, of which `copy` is a
/// grabbed copy: `copy` itself when its open file description is readable, else a
/// new read-only open of `/proc/PID/fd/N` (which reaches deleted files and memfds),
/// checked to be the same device and inode as `copy`.
///
/// A logger typically holds its log `O_WRONLY|O_APPEND`; reading through the shared
/// description would fail with `EBADF`. The new open is a description of our own,
/// so nothing done with it moves the target's offset.
///
/// Errors: [`Error::PermissionDenied`] when the reopen is refused (the file's own
/// mode applies, as for any open); [`Error::IdentityMismatch`] when the target
/// replaced its fd between the copy and the reopen.
pub fn readable(target: &PidFd, fd: TargetFd, copy: OwnedFd) -> Result<OwnedFd> {
    use rustix::fs::{fcntl_getfl, fstat, Mode, OFlags};
    let pid = target.pid();
    let flags = fcntl_getfl(&copy).map_err(|e| Error::local("fcntl(F_GETFL)", e))?;
    let access = flags & OFlags::RWMODE;
    if (access == OFlags::RDONLY || access == OFlags::RDWR) && !flags.contains(OFlags::PATH) {
        return Ok(copy);
    }
    let owner = access::fd_table_owner(target)?;
    let path = format!("/proc/{pid}/task/{owner}/fd/{fd}");
    let reopened = rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT if target.is_alive() => Error::NoSuchFd { pid, fd },
        Errno::NOENT | Errno::SRCH => Error::NoSuchProcess { pid },
        Errno::PERM | Errno::ACCESS => Error::PermissionDenied {
            pid,
            fd: Some(fd),
            op: "reopening a write-only fd read-only (open /proc/PID/fd/N)",
            hint: "the file's own permissions do not allow fdgrab to read it".into(),
        },
        e => Error::io("open(/proc/PID/fd/N, O_RDONLY)", pid, Some(fd), e),
    })?;
    let a = fstat(&copy).map_err(|e| Error::local("fstat", e))?;
    let b = fstat(&reopened).map_err(|e| Error::local("fstat", e))?;
    if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino) {
        return Err(Error::IdentityMismatch {
            pid,
            fd,
            method: "open(/proc/PID/fd/N)",
        });
    }
    tracing::debug!(
        pid,
        fd = fd.as_raw(),
        "the fd is not readable; reading a read-only reopen of the same inode"
    );
    Ok(reopened)
}

/// Those of the target's `fds` that the kernel would refuse to pass over a unix
/// socket (see [`crate::passfd::refusal`]), with the reason. The ptrace backend
/// and `SCM_RIGHTS` hand-overs cannot take them; `pidfd_getfd` can.
pub fn unpassable(target: &PidFd, fds: &[TargetFd]) -> Result<Vec<(TargetFd, &'static str)>> {
    unpassable_in(target, access::fd_table_owner(target)?, fds)
}

/// [`unpassable`] through the fd table of thread `owner`, already chosen.
fn unpassable_in(
    target: &PidFd,
    owner: Pid,
    fds: &[TargetFd],
) -> Result<Vec<(TargetFd, &'static str)>> {
    let pid = target.pid();
    let mut out = Vec::new();
    for &fd in fds {
        match std::fs::read_link(format!("/proc/{pid}/task/{owner}/fd/{fd}")) {
            Ok(link) => {
                if let Some(why) = crate::passfd::refusal(&link) {
                    out.push((fd, why));
                }
            }
            // A missing fd is reported by the operation itself.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io {
                    op: "readlink(/proc/PID/fd/N)",
                    pid,
                    fd: Some(fd),
                    source: e,
                })
            }
        }
    }
    Ok(out)
}

/// [`Error::WrongKind`] for an fd the kernel will not pass over a unix socket.
pub fn unpassable_error(pid: Pid, fd: TargetFd, why: &'static str, how: &str) -> Error {
    Error::WrongKind {
        pid,
        fd,
        reason: format!("cannot be {how}: {why}"),
    }
}
