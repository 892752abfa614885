//! Starting CMD for `get`, `steal`, `exec` and `run`, and passing its status on.
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

/// The signals fdgrab passes on to CMD while it waits for it.
pub const FORWARDED: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Blocks [`FORWARDED`] and opens a signalfd for them. Called before CMD starts, so
/// that a signal arriving meanwhile is forwarded rather than killing fdgrab with
/// CMD orphaned; the spawner unblocks them in CMD.
pub fn forwarded_signals() -> Result<SignalFd> {
    Ok(SignalFd::block(&FORWARDED)?)
}

/// Takes `fds` out of `target` with `backend` and starts `argv` with each installed at
/// its new number. CMD is looked up first, so that a typo takes nothing. Returns once
/// CMD has exec'd, with the backend that took the fds; our copies are closed by then.
pub fn grab_and_spawn(
    target: &fdgrab::PidFd,
    fds: &[crate::args::FdMap],
    backend: fdgrab::Backend,
    argv: &[OsString],
) -> Result<(Child, fdgrab::Backend)> {
    let spawn = Spawn::new(argv)?;
    let program = find_program(&argv[0])?;
    let wanted: Vec<_> = fds.iter().map(|m| m.fd).collect();
    let grabbed = fdgrab::GrabOptions::new()
        .backend(backend)
        .grab_many(target, &wanted)?;
    let used = grabbed.first().map(|g| g.backend).unwrap_or(backend);
    let plan = FdPlan::from_pairs(grabbed.into_iter().zip(fds).map(|(g, m)| (g.fd, m.new_fd)))?;
    let child = spawn.program(program).fds(plan).spawn()?;
    Ok((child, used))
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
