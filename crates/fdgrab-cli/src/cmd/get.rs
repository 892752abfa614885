//! `fdgrab get`: run a command with copies of a process's fds.

use crate::cli::GetArgs;
use crate::spawn::{passthrough, spawn, FdPlan};
use anyhow::{Context, Result};
use fdgrab::{GrabOptions, PidFd};
use std::process::ExitCode;

pub fn run(a: GetArgs) -> Result<ExitCode> {
    let target = PidFd::open(a.pid)?;
    let wanted: Vec<_> = a.fds.iter().map(|m| m.fd).collect();
    let grabbed = GrabOptions::new().grab_many(&target, &wanted)?;
    let pairs = grabbed
        .into_iter()
        .zip(&a.fds)
        .map(|(g, m)| (g.fd, m.new_fd))
        .collect();
    let plan = FdPlan::new(pairs)?;
    let mut child = spawn(&a.cmd, &plan)?;
    // Our copies must not keep pipes open once the child has them.
    drop(plan);
    let status = child.wait().context("waiting for the command")?;
    Ok(passthrough(status))
}
