//! `fdgrab get`: run a command with copies of a process's fds.

use crate::cli::GetArgs;
use crate::launch::{forwarded_signals, grab_and_spawn, passthrough};
use anyhow::Result;
use fdgrab::grab::Preflight;
use std::process::ExitCode;

pub fn run(a: GetArgs) -> Result<ExitCode> {
    let wanted: Vec<_> = a.fds.iter().map(|m| m.fd).collect();
    let target = Preflight::new(a.pid)
        .backend(a.backend.backend)
        .existing(&wanted)
        .check()?;
    // pidfd_getfd takes any fd; the ptrace backend has the target send them over a
    // unix socket, which refuses some (io_uring).
    let fds = if a.backend.backend == fdgrab::Backend::Ptrace {
        let skip = a.unpassable.skip_unpassable;
        super::send::passable(
            &target,
            &a.fds,
            skip,
            |m| m.fd,
            "taken by the ptrace backend",
        )?
        .0
    } else {
        a.fds.clone()
    };
    let signals = forwarded_signals()?;
    let (mut child, _) = grab_and_spawn(&target, &fds, a.backend, &a.cmd)?;
    let status = child.wait_forwarding(&signals)?;
    Ok(passthrough(status))
}
