//! Starting a command with descriptors installed at chosen numbers.

use crate::exit::UsageError;
use anyhow::{Context, Result};
use rustix::io::fcntl_dupfd_cloexec;
use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, ExitStatus};

/// Descriptors to install in a child: `(our fd, number in the child)`.
#[derive(Debug, Default)]
pub struct FdPlan {
    moves: Vec<(OwnedFd, RawFd)>,
}

impl FdPlan {
    /// Builds a plan, refusing two fds for the same child number.
    pub fn new(pairs: Vec<(OwnedFd, RawFd)>) -> Result<Self> {
        let mut seen = HashSet::new();
        for (_, to) in &pairs {
            if !seen.insert(*to) {
                return Err(UsageError(format!(
                    "fd number {to} is the destination of more than one fd"
                ))
                .into());
            }
        }
        // dup2 past the soft fd limit fails in the child with a bare EBADF; say which
        // number is wrong before anything is started.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        if let Some(limit) = limit {
            if let Some(to) = seen.iter().find(|&&to| to as u64 >= limit) {
                return Err(UsageError(format!(
                    "NEWFD {to} is not below the open-file limit {limit} (ulimit -n)"
                ))
                .into());
            }
        }
        // Every source is first copied to a number that no destination uses, so that
        // installing one fd can never overwrite a source still to be installed. The
        // copies are close-on-exec; dup2 onto the destination clears that flag.
        let mut moves = Vec::with_capacity(pairs.len());
        let mut parked = Vec::new();
        for (fd, to) in pairs {
            let copy = loop {
                let c = fcntl_dupfd_cloexec(&fd, 3).context("duplicating a grabbed fd")?;
                if seen.contains(&c.as_raw_fd()) {
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

    /// Applies the plan to `cmd`, to run in the child between fork and exec.
    pub fn apply(&self, cmd: &mut Command) {
        let pairs: Vec<(RawFd, RawFd)> = self
            .moves
            .iter()
            .map(|(fd, to)| (fd.as_raw_fd(), *to))
            .collect();
        // SAFETY: the closure runs in the forked child before exec and only calls
        // dup2, which is async-signal-safe; it allocates nothing. No source sits on a
        // destination number (see `new`), so every dup2 makes a new descriptor, and
        // a new descriptor never has FD_CLOEXEC.
        unsafe {
            cmd.pre_exec(move || {
                for &(from, to) in &pairs {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

/// Spawns `argv` with `plan` applied.
pub fn spawn(argv: &[OsString], plan: &FdPlan) -> Result<Child> {
    let (prog, rest) = argv
        .split_first()
        .ok_or_else(|| UsageError("no command given after --".into()))?;
    let mut cmd = Command::new(prog);
    cmd.args(rest);
    plan.apply(&mut cmd);
    cmd.spawn()
        .with_context(|| format!("cannot run '{}'", prog.to_string_lossy()))
}

/// Takes `fds` out of `target` with `backend` and starts `argv` with each installed at
/// its new number. Returns once exec has succeeded (std reports an exec failure
/// through a close-on-exec pipe), with the backend that took the fds. Our copies are
/// closed before returning, so no pipe stays open on our side.
pub fn grab_and_spawn(
    target: &fdgrab::PidFd,
    fds: &[crate::args::FdMap],
    backend: crate::cli::BackendArg,
    argv: &[OsString],
) -> Result<(Child, fdgrab::Backend)> {
    let wanted: Vec<_> = fds.iter().map(|m| m.fd).collect();
    let grabbed = fdgrab::GrabOptions::new()
        .backend(backend.backend)
        .seccomp(backend.force.seccomp())
        .grab_many(target, &wanted)?;
    let used = grabbed
        .first()
        .map(|g| g.backend)
        .unwrap_or(backend.backend);
    let pairs = grabbed
        .into_iter()
        .zip(fds)
        .map(|(g, m)| (g.fd, m.new_fd))
        .collect();
    let plan = FdPlan::new(pairs)?;
    let child = spawn(argv, &plan)?;
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
