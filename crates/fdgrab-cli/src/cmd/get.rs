//! `fdgrab get`: run a command with copies of a process's fds, in fdgrab's place.

use crate::cli::GetArgs;
use crate::launch::grab_and_exec;
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
    // CMD replaces fdgrab: from here on its status is fdgrab's.
    match grab_and_exec(&target, &fds, a.backend, &a.cmd)? {}
}
