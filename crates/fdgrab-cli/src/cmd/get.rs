//! `fdgrab get`: run a command with copies of a process's fds.

use crate::cli::GetArgs;
use crate::spawn::{grab_and_spawn, passthrough};
use anyhow::{Context, Result};
use fdgrab::grab::open_target;
use std::process::ExitCode;

pub fn run(a: GetArgs) -> Result<ExitCode> {
    let target = open_target(a.pid, a.backend.backend)?;
    let (mut child, _) = grab_and_spawn(&target, &a.fds, a.backend, &a.cmd)?;
    let status = child.wait().context("waiting for the command")?;
    Ok(passthrough(status))
}
