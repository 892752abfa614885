//! `fdgrab get`: run a command with copies of a process's fds.

use crate::cli::GetArgs;
use crate::spawn::{grab_and_spawn, passthrough};
use anyhow::{Context, Result};
use fdgrab::grab::Preflight;
use std::process::ExitCode;

pub fn run(a: GetArgs) -> Result<ExitCode> {
    let wanted: Vec<_> = a.fds.iter().map(|m| m.fd).collect();
    let target = Preflight::new(a.pid)
        .backend(a.backend.backend)
        .existing(&wanted)
        .check()?;
    let (mut child, _) = grab_and_spawn(&target, &a.fds, a.backend.backend, &a.cmd)?;
    let status = child.wait().context("waiting for the command")?;
    Ok(passthrough(status))
}
