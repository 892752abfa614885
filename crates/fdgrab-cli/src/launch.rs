//! Starting CMD for `get`, `steal`, `exec` and `run`, and passing its status on
//! (or, for `get`, running it in fdgrab's place).
//!
//! The spawning itself is the library's ([`fdgrab::spawn`]); this module holds what
//! the commands share around it: the signals they forward and the exit code they
//! report for CMD.

use anyhow::Result;
use fdgrab::signalfd::SignalFd;
use fdgrab::spawn::{find_program, Child, FdPlan, Spawn};
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};

/// Blocks every signal that would end fdgrab by default, and the terminal ones,
/// and opens a signalfd for them: fdgrab passes them on to CMD while it waits for
/// it. Called before CMD starts, so that a signal arriving meanwhile is forwarded
/// rather than killing fdgrab with CMD orphaned (under `run`, with nobody left to
/// answer its trapped binds); not only ^C and `kill`'s TERM: a `kill -USR1` meant
/// for a server (nginx reopens its logs on it) or a timer's ALRM as well. The
/// kernel's own terminal signals and group signals are not passed on
/// (`Child::forward`); the spawner unblocks everything in CMD.
pub fn forwarded_signals() -> Result<SignalFd> {
    let mut blocked = fdgrab::signalfd::ending_by_default();
    blocked.extend(fdgrab::signalfd::TERMINAL_SIGNALS);
    Ok(SignalFd::block(&blocked)?)
}

/// Takes `fds` out of `target` with `backend` and replaces fdgrab with `argv`, each
/// fd installed at its new number: `get` has nothing to do once CMD runs, so CMD
/// runs in fdgrab's place (same pid) rather than as a child fdgrab would wait for.
/// Signals sent to fdgrab's pid then reach CMD itself, and its status is the one
/// fdgrab's parent sees. CMD is looked up first, so that a typo takes nothing.
/// Returns only on failure.
pub fn grab_and_exec(
    target: &fdgrab::PidFd,
    fds: &[crate::args::FdMap],
    backend: crate::cli::BackendArg,
    argv: &[OsString],
) -> Result<std::convert::Infallible> {
    let spawn = Spawner::new(argv, fds)?;
    // No signal is blocked here: a ptrace session holds every signal of ours while
    // it runs (the target is never left mid-injection), and a signal that ends
    // fdgrab before the exec only ends what CMD would have been.
    let wanted: Vec<_> = fds.iter().map(|m| m.fd).collect();
    let grabbed = fdgrab::GrabOptions::new()
        .backend(backend.backend)
        .seccomp(backend.force.seccomp())
        .grab_many(target, &wanted)?;
    Err(spawn.exec(grabbed, fds))
}

/// CMD, looked up before anything is taken (a typo takes nothing), to be started
/// with grabbed fds: from the front door's hook, so that a steal closes the fds in
/// the target only once CMD has exec'd.
pub struct Spawner {
    spawn: Spawn,
    program: std::path::PathBuf,
}

impl Spawner {
    /// Also checks the NEWFD numbers of `fds` (two fds for one number, one past our
    /// limit), which would otherwise be refused only once the copies exist.
    pub fn new(argv: &[OsString], fds: &[crate::args::FdMap]) -> Result<Self> {
        FdPlan::check_numbers(fds.iter().map(|m| m.new_fd))?;
        let spawn = Spawn::new(argv)?;
        let program = find_program(&argv[0])?;
        Ok(Self { spawn, program })
    }

    /// Starts CMD with each of `grabbed` installed at the matching `fds` entry's new
    /// number. Returns once CMD has exec'd.
    pub fn start(self, grabbed: Vec<fdgrab::Grabbed>, fds: &[crate::args::FdMap]) -> Result<Child> {
        Ok(self.command(grabbed, fds)?.spawn()?)
    }

    /// Replaces fdgrab with CMD, each of `grabbed` installed at the matching `fds`
    /// entry's new number. Returns only on failure.
    pub fn exec(self, grabbed: Vec<fdgrab::Grabbed>, fds: &[crate::args::FdMap]) -> anyhow::Error {
        match self.command(grabbed, fds) {
            Ok(spawn) => spawn.exec_in_place().into(),
            Err(e) => e.into(),
        }
    }

    /// CMD with its program found and each of `grabbed` planned at its new number.
    fn command(
        self,
        grabbed: Vec<fdgrab::Grabbed>,
        fds: &[crate::args::FdMap],
    ) -> fdgrab::Result<Spawn> {
        let plan = FdPlan::from_pairs(grabbed.into_iter().zip(fds).map(|(g, m)| (g.fd, m.new_fd)))?;
        Ok(self.spawn.program(self.program).fds(plan))
    }
}

/// The exit code a shell would report for `status`: the exit code, or 128+signal.
pub fn passthrough(status: ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        ExitCode::from(code as u8)
    } else if let Some(sig) = status.signal() {
        ExitCode::from((128 + sig) as u8)
    } else {
        ExitCode::FAILURE
    }
}
