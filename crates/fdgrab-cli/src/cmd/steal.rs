//! `fdgrab steal`: move fds out of a process into a command.

use crate::cli::StealArgs;
use crate::spawn::{grab_and_spawn, passthrough};
use anyhow::{Context, Result};
use fdgrab::grab::open_target;
use fdgrab::inject::{close_in_target, CloseMode};
use std::process::ExitCode;

pub fn run(a: StealArgs) -> Result<ExitCode> {
    let target = open_target(a.pid, a.backend.backend)?;
    // The copies are verified (same open file as the target's fd) before the command
    // starts, and the command has exec'd before the target loses anything, so a
    // command that cannot start takes nothing.
    let (mut child, backend) = grab_and_spawn(&target, &a.fds, a.backend, &a.cmd)?;
    let wanted: Vec<_> = a.fds.iter().map(|m| m.fd).collect();
    let how = if a.null {
        CloseMode::DevNull
    } else {
        CloseMode::Close
    };
    if let Err(e) = close_in_target(&target, &wanted, how, a.backend.force.seccomp()) {
        let _ = child.wait();
        return Err(anyhow::Error::new(e).context(format!(
            "the command ran with copies, but the fds could not be taken from process {}, which still has them",
            a.pid
        )));
    }
    tracing::info!(pid = a.pid, fds = ?wanted, ?how, backend = backend.name(), "stolen");
    let status = child.wait().context("waiting for the command")?;
    Ok(passthrough(status))
}
