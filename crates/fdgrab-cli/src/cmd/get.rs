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
    // unix socket, which refuses some (io_uring). Only --skip-unpassable needs them
    // sorted out here: otherwise the backend itself refuses the first one, before it
    // stops the target, and that refusal is given the same advice.
    let ptrace = a.backend.backend == fdgrab::Backend::Ptrace;
    let fds = if ptrace && a.unpassable.skip_unpassable {
        super::send::passable(
            &target,
            &a.fds,
            true,
            |m| m.fd,
            "taken by the ptrace backend",
        )?
        .0
    } else {
        a.fds.clone()
    };
    // CMD replaces fdgrab: from here on its status is fdgrab's.
    match grab_and_exec(&target, &fds, a.backend, &a.cmd) {
        Ok(never) => match never {},
        Err(e) if ptrace && unpassable(&e) => Err(e.context(super::send::SKIP_ADVICE)),
        Err(e) => Err(e),
    }
}

/// Whether `e` is the ptrace backend's refusal of an fd the kernel will not pass
/// over a unix socket ([`fdgrab::grab::unpassable_error`]).
fn unpassable(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref(), Some(fdgrab::Error::WrongKind { .. }))
}
