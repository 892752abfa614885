//! Starting a program with a chosen set of descriptors: the one spawner behind
//! `get`, `steal`, `exec` (socket activation) and `run` (the bind supervisor).
//!
//! Everything the child needs is prepared here, in the parent: the resolved program,
//! `argv` and `envp` as C arrays, the fd plan as a list of `dup2` pairs, the
//! credentials and the seccomp filter. The child then runs a fixed list of steps
//! that only make system calls (`spawn/clone.rs` holds that code and all of this module's
//! `unsafe`), and either execs or reports the step and errno that failed.
//!
//! The child is made with `clone(CLONE_VM | CLONE_VFORK)`, not `fork`: it borrows our
//! memory until `execve`, so nothing is copied (a `fork` of this binary costs ~0.3 ms;
//! the vfork-style child ~50 µs until the exec has happened) and the caller is
//! suspended meanwhile. `posix_spawn` uses the same kind of child inside glibc, but
//! it cannot write `LISTEN_PID` (the child's own pid) into the environment, set
//! credentials or install a seccomp filter, so one spawner could not serve all four
//! commands with it; measured on this machine it is no faster (see
//! `docs/architecture.md`).
//!
//! Because the caller stays suspended until the child has exec'd or exited, a
//! failure is reported through memory both share, and [`Spawn::spawn`] returns only
//! once the program is running: an error names the program and the step.

mod clone;

use crate::error::{Error, Result};
use crate::pidfd::PidFd;
use crate::seccomp::InstallError;
use crate::signalfd::SignalFd;
pub use crate::spawn_error::{SpawnError, Step};
use crate::Pid;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::{fcntl_dupfd_cloexec, Errno};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

/// A failure of ours (not of a target).
fn local_io(op: &'static str, e: Errno) -> Error {
    Error::local(op, e)
}

/// The child's `step` of starting `program` failed with `errno`. The seccomp
/// filter step's errno is read here, where seccomp's meaning of it is known: an
/// `EBUSY` means a listener exists already, which a user can act on.
fn child_failed(program: &Path, step: Step, errno: Errno) -> SpawnError {
    let e = SpawnError::failed(program, step, errno);
    if step == Step::Filter && InstallError::from_errno(errno) == InstallError::ListenerExists {
        e.detail(
            "(this process already has a seccomp listener: fdgrab run cannot run inside \
             another fdgrab run or under another seccomp notify supervisor)",
        )
    } else {
        e
    }
}

/// Descriptors to install in the child: each of ours at a chosen number.
///
/// Every other descriptor of ours that is close-on-exec stays so; with
/// [`Spawn::close_other_fds`] every other descriptor above 2 is made close-on-exec
/// in the child too. Only the installed numbers lose `FD_CLOEXEC`.
#[derive(Debug, Default)]
pub struct FdPlan {
    /// Close-on-exec copies, none of them on a destination number, so that no
    /// `dup2` in the child can overwrite a source still to be installed, and every
    /// `dup2` makes a new descriptor (which never has `FD_CLOEXEC`).
    moves: Vec<(OwnedFd, RawFd)>,
}

impl FdPlan {
    /// No descriptors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a plan from `(our fd, number in the child)` pairs.
    ///
    /// Refuses two fds for one number and a number at or above the soft
    /// `RLIMIT_NOFILE` (where `dup2` in the child would fail with a bare `EBADF`),
    /// before anything is started.
    pub fn from_pairs<F: AsFd>(pairs: impl IntoIterator<Item = (F, RawFd)>) -> Result<Self> {
        let pairs: Vec<(F, RawFd)> = pairs.into_iter().collect();
        let seen = Self::checked(pairs.iter().map(|(_, to)| *to))?;
        let mut moves = Vec::with_capacity(pairs.len());
        let mut parked = Vec::new();
        for (fd, to) in pairs {
            let copy = loop {
                let c = fcntl_dupfd_cloexec(&fd, 3).map_err(|e| match e {
                    Errno::MFILE => local_io(
                        "copying the fds for the command (F_DUPFD_CLOEXEC): fdgrab holds about \
                         two of its own per fd it hands on; raise `ulimit -n`",
                        e,
                    ),
                    e => local_io("F_DUPFD_CLOEXEC", e),
                })?;
                if seen.binary_search(&c.as_raw_fd()).is_ok() {
                    // Hold that number until every source has its copy.
                    parked.push(c);
                } else {
                    break c;
                }
            };
            moves.push((copy, to));
        }
        drop(parked);
        Ok(Self { moves })
    }

    /// The checks of [`FdPlan::from_pairs`] on the numbers alone, so that a command
    /// can refuse a bad map before it takes any fd.
    pub fn check_numbers(numbers: impl IntoIterator<Item = RawFd>) -> Result<()> {
        Self::checked(numbers).map(drop)
    }

    /// The destination numbers, sorted, once each is known to be unique and below
    /// the limit. (A sorted `Vec`, not a `HashSet`: its `RandomState` costs a
    /// `getrandom` call per `get`, for a handful of numbers.)
    fn checked(numbers: impl IntoIterator<Item = RawFd>) -> Result<Vec<RawFd>> {
        let mut seen: Vec<RawFd> = numbers.into_iter().collect();
        if let Some(to) = seen.iter().find(|&&to| to < 0) {
            return Err(Error::InvalidArgument(format!(
                "fd number {to} is negative"
            )));
        }
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::InvalidArgument(format!(
                "fd number {} is the destination of more than one fd",
                w[0]
            )));
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        if let Some(limit) = limit {
            if let Some(to) = seen.iter().find(|&&to| to as u64 >= limit) {
                return Err(Error::InvalidArgument(format!(
                    "NEWFD {to} is not below the open-file limit {limit} (ulimit -n)"
                )));
            }
        }
        Ok(seen)
    }

    /// `fds[i]` at `3 + i`, as systemd passes sockets (`SD_LISTEN_FDS_START`).
    pub fn listen_fds<F: AsFd>(fds: &[F]) -> Result<Self> {
        Self::from_pairs(
            fds.iter()
                .enumerate()
                .map(|(i, f)| (f.as_fd(), LISTEN_FDS_START + i as RawFd)),
        )
    }

    /// How many descriptors the plan installs.
    pub fn len(&self) -> usize {
        self.moves.len()
    }

    /// Whether the plan installs nothing.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }
}

/// The first descriptor number of socket-activation fds (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// How the child relates to our session and process group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Session {
    /// Ours: a terminal's ^C reaches both, and the child can read the terminal.
    #[default]
    Inherit,
    /// Its own process group, so that a terminal's ^C reaches only us (we forward it).
    NewProcessGroup,
    /// A new session without a controlling terminal, for a child that outlives us.
    NewSession,
}

/// Which signal dispositions the child starts with. Handlers never survive exec;
/// the question is what happens to ignored signals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SignalDefaults {
    /// Keep ignored signals ignored (as `nohup` expects), except `SIGPIPE`, which
    /// the Rust runtime ignores for itself, not for the program.
    #[default]
    KeepIgnored,
    /// Every signal at its default, as systemd starts a service.
    All,
}

/// The user and groups the child switches to before exec (`setgroups`, `setgid`,
/// `setuid`, in that order, on the child alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The user id (`setuid`).
    pub uid: libc::uid_t,
    /// The group id (`setgid`).
    pub gid: libc::gid_t,
    /// The supplementary groups (`setgroups`); usually includes `gid`.
    pub groups: Vec<libc::gid_t>,
}

/// The seccomp part of a supervised start: the filter the child installs on
/// itself with `NEW_LISTENER`, and the socket on which it hands the listener back.
#[derive(Debug)]
pub(crate) struct SeccompHandBack {
    pub filter: Vec<libc::sock_filter>,
    pub flags: crate::seccomp::InstallFlags,
    /// The child's end of a socketpair (close-on-exec).
    pub sock: OwnedFd,
}

/// A program to start: the builder for the one spawner.
#[derive(Debug)]
pub struct Spawn {
    argv: Vec<OsString>,
    program: Option<PathBuf>,
    env_set: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    listen_pid: bool,
    fds: FdPlan,
    close_other_fds: bool,
    session: Session,
    signals: SignalDefaults,
    credentials: Option<Credentials>,
    death_signal: Option<i32>,
    no_new_privs: bool,
    seccomp: Option<SeccompHandBack>,
}

impl Spawn {
    /// `argv[0]` is the program, found as `execvp` would unless [`Spawn::program`]
    /// names it.
    pub fn new(argv: &[OsString]) -> Result<Self> {
        if argv.first().is_none_or(|a| a.is_empty()) {
            return Err(Error::InvalidArgument("no command given".into()));
        }
        Ok(Self {
            argv: argv.to_vec(),
            program: None,
            env_set: Vec::new(),
            env_remove: Vec::new(),
            listen_pid: false,
            fds: FdPlan::new(),
            close_other_fds: false,
            session: Session::Inherit,
            signals: SignalDefaults::KeepIgnored,
            credentials: None,
            death_signal: None,
            no_new_privs: false,
            seccomp: None,
        })
    }

    /// The program file to execute (already resolved, e.g. by [`find_program`]).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// Sets a variable in the child's environment (ours otherwise).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env_set.push((key.into(), value.into()));
        self
    }

    /// Removes an inherited variable.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// Sets `LISTEN_PID` to the child's own pid, written by the child before exec
    /// (systemd socket activation).
    pub fn listen_pid(mut self) -> Self {
        self.listen_pid = true;
        self
    }

    /// The descriptors to install.
    pub fn fds(mut self, plan: FdPlan) -> Self {
        self.fds = plan;
        self
    }

    /// Makes every descriptor above 2 that the plan does not install close-on-exec
    /// in the child, so nothing of ours but the plan reaches the program.
    pub fn close_other_fds(mut self) -> Self {
        self.close_other_fds = true;
        self
    }

    /// The process group and session the child starts in (default: ours).
    pub fn session(mut self, s: Session) -> Self {
        self.session = s;
        self
    }

    /// Which signal dispositions the child starts with (default: ignored stay
    /// ignored, except `SIGPIPE`).
    pub fn signal_defaults(mut self, s: SignalDefaults) -> Self {
        self.signals = s;
        self
    }

    /// Switches the child to this user and these groups before exec.
    pub fn credentials(mut self, c: Credentials) -> Self {
        self.credentials = Some(c);
        self
    }

    /// `PR_SET_PDEATHSIG`: the child gets `sig` when the spawning thread exits. Set
    /// after the credential change, which would clear it; the child also checks
    /// that its parent did not die before the signal was armed.
    pub fn death_signal(mut self, sig: i32) -> Self {
        self.death_signal = Some(sig);
        self
    }

    /// `PR_SET_NO_NEW_PRIVS` in the child.
    pub fn no_new_privs(mut self) -> Self {
        self.no_new_privs = true;
        self
    }

    pub(crate) fn seccomp(mut self, s: SeccompHandBack) -> Self {
        self.seccomp = Some(s);
        self
    }

    /// Starts the program. Returns once it has exec'd; every failure before that
    /// (not found, not executable, a set-up step) is a [`SpawnError`] inside
    /// [`Error::Spawn`], and the failed child has been reaped.
    ///
    /// With no variable set or removed, the child's `execve` reads the C library's
    /// `environ` directly, without the lock std's `Command` holds while it does the
    /// same: another thread of the caller must not call `std::env::set_var` or
    /// `remove_var` meanwhile (their safety contract forbids it in every edition;
    /// edition 2021 merely does not make the caller write `unsafe`). Setting any
    /// variable with [`Spawn::env`] makes a copy under std's lock instead.
    pub fn spawn(self) -> Result<Child> {
        let program = match &self.program {
            Some(p) => p.clone(),
            None => find_program(&self.argv[0])?,
        };
        let prepared = self.prepare(&program)?;
        let report = clone::spawn(&prepared).map_err(|e| local_io("clone", e))?;
        let pid = report.pid;
        if let Some((step, errno)) = report.failure {
            // The child has _exit'ed (vfork semantics): reap it now.
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
            }
            let step = Step::from_u8(step).unwrap_or(Step::Exec);
            return Err(child_failed(&program, step, errno).into());
        }
        tracing::debug!(pid, program = %program.display(), fds = self.fds.len(), "spawned");
        drop(prepared);
        let shares_group = self.session == Session::Inherit;
        drop(self);
        // Our unreaped child keeps its pid, so this cannot name another process.
        match PidFd::open(pid) {
            Ok(pidfd) => Ok(Child {
                pidfd,
                status: None,
                shares_group,
            }),
            Err(e) => {
                // A child we cannot watch must not run on with the fds we gave it.
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    let _ =
                        rustix::process::waitpid(Some(p), rustix::process::WaitOptions::empty());
                }
                Err(e)
            }
        }
    }

    /// Replaces this process with the program (`execve` in place, no child): for a
    /// caller with nothing left to do once the program runs. The program then has
    /// our pid, our parent, and receives signals sent to us directly; its exit
    /// status is the one our parent sees.
    ///
    /// It starts exactly as a spawned one would: the fd plan installed without
    /// `FD_CLOEXEC`, an empty signal mask, handlers reset by `execve`, ignored
    /// signals as [`Spawn::signal_defaults`] says. Settings that only a child can
    /// have ([`Spawn::session`], credentials, death signal, `no_new_privs`,
    /// `LISTEN_PID`, a filter) are refused with [`Error::InvalidArgument`] before
    /// anything changes.
    ///
    /// Returns only on failure. A [`SpawnError`] at [`Step::Fds`] or
    /// [`Step::Exec`] means this process has changed: some descriptors of the plan
    /// may be installed and the signal mask is empty. Standard error is ours again,
    /// so the caller can report the error and exit.
    pub fn exec_in_place(self) -> Error {
        if self.session != Session::Inherit
            || self.credentials.is_some()
            || self.death_signal.is_some()
            || self.no_new_privs
            || self.listen_pid
            || self.seccomp.is_some()
        {
            return Error::InvalidArgument(
                "a session, credentials, a death signal, no_new_privs, LISTEN_PID or a \
                 seccomp filter need a child: use spawn, not exec_in_place"
                    .into(),
            );
        }
        let program = match &self.program {
            Some(p) => p.clone(),
            None => match find_program(&self.argv[0]) {
                Ok(p) => p,
                Err(e) => return e,
            },
        };
        let prepared = match self.prepare(&program) {
            Ok(p) => p,
            Err(e) => return e,
        };
        tracing::debug!(program = %program.display(), fds = self.fds.len(), "exec in place");
        let (step, errno) = clone::exec_in_place(&prepared);
        child_failed(&program, step, errno).into()
    }

    fn prepare(&self, program: &Path) -> Result<clone::Prepared<'_>> {
        let cstr = |b: &[u8], what: &str| {
            CString::new(b)
                .map_err(|_| Error::InvalidArgument(format!("{what} contains a NUL byte")))
        };
        let path = cstr(program.as_os_str().as_bytes(), "the program path")?;
        let argv = self
            .argv
            .iter()
            .map(|a| cstr(a.as_bytes(), "an argument"))
            .collect::<Result<Vec<_>>>()?;
        // Copying the environment into new strings cost ~55,000 instructions (7% of
        // a whole `fdgrab get`); a program that inherits it unchanged gets ours as
        // it is.
        let inherit = self.env_set.is_empty() && self.env_remove.is_empty() && !self.listen_pid;
        let env = if inherit {
            None
        } else {
            Some(self.changed_env()?)
        };
        Ok(clone::Prepared::new(
            path,
            argv,
            env,
            self.listen_pid,
            self.fds
                .moves
                .iter()
                .map(|(fd, to)| (fd.as_raw_fd(), *to))
                .collect(),
            self.close_other_fds,
            self.session,
            self.signals,
            self.credentials.as_ref(),
            self.death_signal,
            self.no_new_privs,
            self.seccomp.as_ref(),
        ))
    }

    /// Our environment with this spawn's changes, as `KEY=value` C strings
    /// (`LISTEN_PID`'s entry is added by the child).
    fn changed_env(&self) -> Result<Vec<CString>> {
        let mut env: Vec<CString> = Vec::new();
        let own = |k: &OsStr| {
            self.env_remove.iter().any(|r| r == k)
                || self.env_set.iter().any(|(s, _)| s == k)
                || (self.listen_pid && k == "LISTEN_PID")
        };
        let mut push = |k: &OsStr, v: &OsStr| -> Result<()> {
            // Sized for the '=' and the NUL, so that CString::new does not reallocate.
            let mut kv = Vec::with_capacity(k.len() + v.len() + 2);
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            env.push(CString::new(kv).map_err(|_| {
                Error::InvalidArgument("an environment variable contains a NUL byte".into())
            })?);
            Ok(())
        };
        for (k, v) in std::env::vars_os() {
            if !own(&k) {
                push(&k, &v)?;
            }
        }
        for (k, v) in &self.env_set {
            push(k, v)?;
        }
        Ok(env)
    }
}

/// Sets `SIGPIPE` to be ignored, as the Rust runtime does before `main`: a write
/// to a closed pipe or socket then fails with `EPIPE` instead of killing us. For a
/// binary with its own entry point (`#![no_main]`); programs started by
/// [`Spawn`] get `SIGPIPE` at its default either way.
pub fn ignore_sigpipe() -> Result<()> {
    clone::ignore_sigpipe().map_err(|e| local_io("rt_sigaction(SIGPIPE, SIG_IGN)", e))
}

/// A copy of descriptor `n` that this process inherited (from the shell, or from
/// whoever started it), as an [`OwnedFd`] that can be installed or passed on.
///
/// Errors: [`Error::InvalidArgument`] naming `n` when it is not open (`EBADF`).
pub fn dup_inherited(n: RawFd) -> Result<OwnedFd> {
    crate::sys::dup_own_fd(n).map_err(|e| match e {
        Errno::BADF => Error::InvalidArgument(format!("fd {n} is not open in this process")),
        e => local_io("F_DUPFD_CLOEXEC", e),
    })
}

/// Finds `cmd` as `execvp` would: a name with a `/` is used as is, anything else is
/// looked up in `PATH`. Done in the parent, before anything is started, so that a
/// typo costs nothing and the child need not allocate.
///
/// Errors are [`SpawnError`]s at [`Step::Resolve`]: `ENOENT` when nothing by that
/// name exists, `EACCES` when it exists but is not an executable file.
pub fn find_program(cmd: &OsStr) -> Result<PathBuf> {
    let fail = |p: &Path, e| SpawnError::new(p, Step::Resolve, e);
    if cmd.is_empty() {
        return Err(Error::InvalidArgument("the command to run is empty".into()));
    }
    if cmd.as_bytes().contains(&b'/') {
        let p = PathBuf::from(cmd);
        return match candidate(&p) {
            Candidate::Runnable => Ok(p),
            Candidate::Missing => Err(fail(&p, Errno::NOENT).into()),
            Candidate::Refused(errno, None) => Err(fail(&p, errno).into()),
            Candidate::Refused(errno, Some(why)) => {
                Err(fail(&p, errno).detail(format!("({why})")).into())
            }
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut refused = None;
    for dir in std::env::split_paths(&path) {
        let candidate_path = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        }
        .join(cmd);
        match candidate(&candidate_path) {
            Candidate::Runnable => return Ok(candidate_path),
            Candidate::Refused(errno, why) => {
                refused.get_or_insert((candidate_path, errno, why));
            }
            Candidate::Missing => {}
        }
    }
    // As execvp: a candidate that exists but may not be run makes the error its own
    // (EACCES for permissions), not ENOENT.
    let (errno, detail) = match refused {
        Some((first, errno, why)) => (
            errno,
            format!(
                "(found in PATH as {}{}; PATH={})",
                first.display(),
                why.map_or_else(String::new, |why| format!(", {why}")),
                path.to_string_lossy()
            ),
        ),
        None => (
            Errno::NOENT,
            format!("in PATH ({})", path.to_string_lossy()),
        ),
    };
    Err(fail(Path::new(cmd), errno).detail(detail).into())
}

/// What [`find_program`] makes of one path.
enum Candidate {
    Runnable,
    /// Nothing by that name (`ENOENT`, `ENOTDIR`).
    Missing,
    /// It exists, or may, but cannot be run by us: the errno execve would give,
    /// and why, when we know more than the errno.
    Refused(Errno, Option<String>),
}

impl Candidate {
    fn refused(errno: Errno, why: impl Into<String>) -> Self {
        Self::Refused(errno, Some(why.into()))
    }
}

/// One `stat` and one `access` per candidate. `access(X_OK)` alone is true for
/// root whenever any x bit is set, or even none on some file systems; execve needs
/// a regular file with an x bit, that the caller may execute, on a path whose
/// directories the caller may search.
fn candidate(p: &Path) -> Candidate {
    use rustix::fs::{access, Access};
    use std::os::unix::fs::PermissionsExt;
    let uid = || rustix::process::geteuid().as_raw();
    match p.metadata() {
        Ok(m) if m.is_dir() => {
            Candidate::refused(Errno::ACCESS, "not an executable file: a directory")
        }
        Ok(m) if !m.is_file() => {
            Candidate::refused(Errno::ACCESS, "not an executable file: not a regular file")
        }
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Candidate::refused(
            Errno::ACCESS,
            "not an executable file: no execute permission bit",
        ),
        Ok(_) => match access(p, Access::EXEC_OK) {
            Ok(()) => Candidate::Runnable,
            Err(e) => Candidate::refused(
                e,
                format!(
                    "not executable by uid {}: its permission bits or an ACL refuse it, or its \
                 file system is mounted noexec",
                    uid()
                ),
            ),
        },
        Err(e) => match e.raw_os_error().map(Errno::from_raw_os_error) {
            Some(Errno::NOENT | Errno::NOTDIR) | None => Candidate::Missing,
            Some(Errno::ACCESS) => Candidate::refused(
                Errno::ACCESS,
                format!("a directory on its path is not searchable by uid {}", uid()),
            ),
            // A symlink loop, a name too long, an I/O error: execve would fail the
            // same way, and "not found" would be a lie.
            Some(errno) => Candidate::Refused(errno, None),
        },
    }
}

/// A started program, our child. Dropping it neither waits for nor stops it.
#[derive(Debug)]
pub struct Child {
    pidfd: PidFd,
    status: Option<ExitStatus>,
    /// In our process group: a terminal's signals reach it without us.
    shares_group: bool,
}

impl Child {
    /// The child's pid.
    pub fn pid(&self) -> Pid {
        self.pidfd.pid()
    }

    /// A pidfd of the child, opened before it could exit: signals and waits through
    /// it cannot reach a recycled pid.
    pub fn pidfd(&self) -> &PidFd {
        &self.pidfd
    }

    /// The exit status, once [`Child::try_wait`] or a wait has reaped it.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Reaps the child if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() && !self.pidfd.is_alive() {
            self.status = Some(self.pidfd.wait_child()?);
        }
        Ok(self.status)
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        let st = self.pidfd.wait_child()?;
        self.status = Some(st);
        Ok(st)
    }

    /// Waits for the child to exit, passing every signal read from `signals` on to
    /// it, and returns its status.
    pub fn wait_forwarding(&mut self, signals: &SignalFd) -> Result<ExitStatus> {
        self.wait_forwarding_also(signals, None, || Ok(()))
    }

    /// [`Child::wait_forwarding`] that also wakes up when `also` is readable, and
    /// calls `serve` after every wake-up, once the signals are passed on.
    pub fn wait_forwarding_also(
        &mut self,
        signals: &SignalFd,
        also: Option<BorrowedFd<'_>>,
        mut serve: impl FnMut() -> Result<()>,
    ) -> Result<ExitStatus> {
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            let exit_fd = self.pidfd.exit_fd()?;
            let mut fds = [
                PollFd::new(&exit_fd, PollFlags::IN),
                PollFd::new(signals, PollFlags::IN),
                PollFd::from_borrowed_fd(also.unwrap_or(signals.as_fd()), PollFlags::IN),
            ];
            let n = if also.is_some() { 3 } else { 2 };
            match poll(&mut fds[..n], None) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(Error::io("poll", self.pid(), None, e)),
            }
            self.forward(signals)?;
            serve()?;
        }
    }

    /// Passes every pending signal of `signals` on to the child, except one the
    /// kernel sent to our whole process group (a terminal's ^C) when the child is
    /// in that group: it got its own, and a second ^C means "force" to many
    /// programs; and except one of [`crate::signalfd::TERMINAL_SIGNALS`] from the
    /// kernel, which is about our own terminal.
    pub fn forward(&self, signals: &SignalFd) -> Result<()> {
        while let Some(info) = signals.read_info()? {
            let sig = info.signo;
            if info.from_kernel() && self.shares_group {
                tracing::debug!(
                    pid = self.pid(),
                    sig,
                    "not forwarding a process-group signal"
                );
                continue;
            }
            // Our terminal's size, our own background read or write: not the child's.
            if info.from_kernel() && crate::signalfd::TERMINAL_SIGNALS.contains(&sig) {
                continue;
            }
            tracing::info!(pid = self.pid(), sig, "forwarding signal");
            match self.pidfd.send_signal(sig) {
                Ok(()) | Err(Error::NoSuchProcess { .. }) => {}
                Err(e) => return Err(e),
            }
            // As a shell's `kill` of a stopped job: a stopped child would keep a
            // SIGTERM or SIGHUP pending, and us waiting, until someone continued it.
            if matches!(sig, libc::SIGTERM | libc::SIGHUP) && self.stopped() {
                let _ = self.pidfd.send_signal(libc::SIGCONT);
            }
        }
        Ok(())
    }

    /// The signal that stopped the child, if it is stopped now (`waitid` with
    /// `WSTOPPED | WNOHANG | WNOWAIT` on its pidfd: nothing is consumed, and stops
    /// are never waited for otherwise, so a stop is reported until a `SIGCONT`).
    pub fn stopped_by(&self) -> Option<i32> {
        use rustix::process::{waitid, WaitId, WaitIdOptions};
        let fd = self.pidfd.as_pidfd()?;
        let opts = WaitIdOptions::STOPPED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        waitid(WaitId::PidFd(fd), opts)
            .ok()
            .flatten()
            .and_then(|st| st.stopping_signal())
    }

    fn stopped(&self) -> bool {
        self.stopped_by().is_some()
    }

    /// Sends `SIGTERM`, waits up to `grace`, then `SIGKILL`s, and reaps.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.status {
            return Ok(st);
        }
        match self.pidfd.send_signal(libc::SIGTERM) {
            Ok(()) | Err(Error::NoSuchProcess { .. }) => {}
            Err(e) => return Err(e),
        }
        // A stopped child would keep the SIGTERM pending for the whole grace time.
        let _ = self.pidfd.send_signal(libc::SIGCONT);
        if !self.pidfd.wait_exit(Some(grace))? {
            tracing::warn!(
                pid = self.pid(),
                ?grace,
                "child ignored SIGTERM; killing it"
            );
            match self.pidfd.send_signal(libc::SIGKILL) {
                Ok(()) | Err(Error::NoSuchProcess { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.wait()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts users (and the CLI tests) read, word for word: the filter step's
    /// hint is worked out here and carried by the error as data.
    #[test]
    fn child_failures_read_as_before() {
        let p = Path::new("/nonexistent/prog");
        let cases = [
            (
                Step::Filter,
                Errno::BUSY,
                "cannot start '/nonexistent/prog': installing the seccomp filter (this process \
                 already has a seccomp listener: fdgrab run cannot run inside another fdgrab \
                 run or under another seccomp notify supervisor)",
            ),
            (
                Step::Filter,
                Errno::INVAL,
                "cannot start '/nonexistent/prog': installing the seccomp filter",
            ),
            (
                Step::Uid,
                Errno::PERM,
                "cannot start '/nonexistent/prog': switching user (setuid)",
            ),
            // The hint belongs to the filter step alone.
            (
                Step::Groups,
                Errno::BUSY,
                "cannot start '/nonexistent/prog': setting the supplementary groups (setgroups)",
            ),
            (
                Step::Exec,
                Errno::NOENT,
                "command '/nonexistent/prog' not found",
            ),
        ];
        for (step, errno, want) in cases {
            assert_eq!(
                child_failed(p, step, errno).to_string(),
                want,
                "{step:?} {errno:?}"
            );
        }
        let e = child_failed(p, Step::Filter, Errno::BUSY);
        assert_eq!((e.step(), e.errno()), (Step::Filter, Errno::BUSY));
        assert_eq!(
            std::error::Error::source(&e).map(|s| s.to_string()),
            Some(std::io::Error::from(Errno::BUSY).to_string())
        );
    }
}
