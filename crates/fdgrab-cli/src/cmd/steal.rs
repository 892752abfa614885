//! `fdgrab steal`: move fds out of a process into a command.

use crate::cli::StealArgs;
use crate::launch::{forwarded_signals, passthrough, Spawner};
use anyhow::Result;
use fdgrab::grab::Preflight;
use fdgrab::inject::CloseMode;
use fdgrab::{GrabOptions, Grabbed};
use std::process::ExitCode;

pub fn run(a: StealArgs) -> Result<ExitCode> {
    let wanted: Vec<_> = a.fds.iter().map(|m| m.fd).collect();
    // The close half of a steal injects, so a target that cannot be stopped (traced,
    // kernel thread, no access) is refused here, before CMD starts.
    let target = Preflight::new(a.pid)
        .backend(a.backend.backend)
        .injects()
        .existing(&wanted)
        .check()?;
    let how = if a.null {
        CloseMode::DevNull
    } else {
        CloseMode::Close
    };
    // The library's steal: the copies are verified (same open file as the target's
    // fd), then the hook starts CMD, and only once it has exec'd does the target lose
    // anything; a command that cannot start takes nothing.
    let spawn = Spawner::new(&a.cmd, &a.fds)?;
    let signals = forwarded_signals()?;
    let taken = GrabOptions::new()
        .backend(a.backend.backend)
        .seccomp(a.backend.force.seccomp())
        .steal(how)
        .grab_many_then(&target, &wanted, |grabbed| {
            if a.signal_old.is_none() {
                warn_listening(a.pid, &grabbed);
            }
            if !a.null {
                warn_standard(a.pid, &grabbed);
            }
            spawn.start(grabbed, &a.fds)
        })?;
    let mut child = taken.value;
    if let Err(e) = taken.closed {
        let _ = child.wait_forwarding(&signals);
        return Err(anyhow::Error::new(e).context(format!(
            "the command ran with copies, but the fds could not be taken from process {}, which still has them",
            a.pid
        )));
    }
    tracing::info!(pid = a.pid, fds = ?wanted, ?how, "stolen (method: {})", taken.backend.method());
    if let Some(sig) = a.signal_old {
        // Through the pidfd: a process that exited meanwhile cannot be confused with
        // a newcomer that got its pid.
        if let Err(e) = target.send_signal(sig) {
            crate::exit::eprint_line(format_args!(
                "fdgrab: the fds were stolen, but signalling process {}: {e}",
                a.pid
            ));
        }
    }
    let status = child.wait_forwarding(&signals)?;
    Ok(passthrough(status))
}

/// A listening socket taken away from a server that polls it with poll/select
/// makes that server spin on EBADF (or on /dev/null's constant readiness); say so
/// before it happens.
fn warn_listening(pid: fdgrab::Pid, grabbed: &[Grabbed]) {
    for g in grabbed {
        if rustix::net::sockopt::socket_acceptconn(&g.fd).unwrap_or(false) {
            crate::exit::eprint_line(format_args!(
                "fdgrab: warning: fd {} of process {pid} is a listening socket; a server that \
                 polls it with poll or select will spin at full CPU once it is gone. Pass \
                 --signal-old SIG to stop the old server (see docs/grab.md)",
                g.target_fd
            ));
        }
    }
}

/// Closing fd 0, 1 or 2 frees a number the process's own code writes to (or reads
/// from) without looking: the next file it opens gets that number, and its output
/// goes into that file. `--null` keeps the number taken.
fn warn_standard(pid: fdgrab::Pid, grabbed: &[Grabbed]) {
    const NAMES: [(&str, &str); 3] = [
        (
            "standard input",
            "what it reads from fd 0 then comes out of that file",
        ),
        (
            "standard output",
            "what it writes to fd 1 then goes into that file",
        ),
        (
            "standard error",
            "what it writes to fd 2 then goes into that file",
        ),
    ];
    for g in grabbed {
        if let Some((name, effect)) = usize::try_from(g.target_fd.as_raw())
            .ok()
            .and_then(|n| NAMES.get(n))
        {
            crate::exit::eprint_line(format_args!(
                "fdgrab: warning: fd {} is process {pid}'s {name}; once it is closed, the next \
                 file the process opens gets that number, and {effect}. Pass --null to keep \
                 the number taken by /dev/null",
                g.target_fd
            ));
        }
    }
}
