//! `fdgrab steal`: move fds out of a process into a command.

use crate::cli::StealArgs;
use crate::spawn::{passthrough, spawn, FdPlan};
use anyhow::{Context, Result};
use fdgrab::inject::{close_in_target, CloseMode};
use fdgrab::{GrabOptions, PidFd};
use std::process::ExitCode;

pub fn run(a: StealArgs) -> Result<ExitCode> {
    let target = PidFd::open(a.pid)?;
    let wanted: Vec<_> = a.fds.iter().map(|m| m.fd).collect();
    // The copies are verified (same open file as the target's fd) by grab_many.
    let grabbed = GrabOptions::new()
        .backend(a.backend.backend)
        .grab_many(&target, &wanted)?;
    let backend = grabbed.first().map(|g| g.backend);
    let pairs = grabbed
        .into_iter()
        .zip(&a.fds)
        .map(|(g, m)| (g.fd, m.new_fd))
        .collect();
    let plan = FdPlan::new(pairs)?;
    // `spawn` returns only once exec has succeeded (std reports exec failure through
    // a close-on-exec pipe), so a command that cannot start takes nothing.
    let mut child = spawn(&a.cmd, &plan)?;
    drop(plan);
    let how = if a.null {
        CloseMode::DevNull
    } else {
        CloseMode::Close
    };
    if let Err(e) = close_in_target(&target, &wanted, how) {
        let _ = child.wait();
        return Err(anyhow::Error::new(e).context(format!(
            "the command ran with copies, but the fds could not be taken from process {}, which still has them",
            a.pid
        )));
    }
    tracing::info!(pid = a.pid, fds = ?wanted, ?how, backend = ?backend, "stolen");
    let status = child.wait().context("waiting for the command")?;
    Ok(passthrough(status))
}
