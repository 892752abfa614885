//! `fdgrab exec`: hand a running server's sockets to a new server through systemd
//! socket activation, and retire the old server only once the new one is ready.

use crate::cli::{ExecArgs, Via};
use crate::exit::UsageError;
use crate::launch::{forwarded_signals, passthrough};
use anyhow::{bail, Context, Result};
use fdgrab::activation::bind_handover::BindHandover;
use fdgrab::activation::{
    self, ActivationCommand, NotReady, NotifySocket, Readiness, ReadyGate, TakenSocket,
};
use fdgrab::grab::Preflight;
use fdgrab::inject::CloseMode;
use fdgrab::signalfd::signal_name;
use fdgrab::PidFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

/// Writes one line to stderr in a single `write`: the new server shares the stream,
/// and `eprintln!` (unbuffered) writes a line in pieces that its output can split.
macro_rules! say {
    ($($arg:tt)*) => {{
        crate::exit::eprint_line(format_args!($($arg)*));
    }};
}

/// How long a new server that failed to start gets to shut down after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub fn run(a: ExecArgs) -> Result<ExitCode> {
    if !a.names.is_empty() && a.names.len() != a.selectors.len() {
        return Err(UsageError(format!(
            "{} --name values for {} selectors; give one per selector, or none",
            a.names.len(),
            a.selectors.len()
        ))
        .into());
    }
    if a.via == Via::Bind && !a.names.is_empty() {
        return Err(UsageError(
            "--name sets LISTEN_FDNAMES, which --via bind does not pass; use --via both".into(),
        )
        .into());
    }
    for name in &a.names {
        activation::check_fd_name(name).map_err(|e| UsageError(format!("--name: {e}")))?;
    }
    let program = activation::find_program(&a.cmd[0])?;
    // Blocked before anything is started, so that a ^C during the handover is seen
    // by the wait loop (and aborts it cleanly) instead of killing fdgrab halfway;
    // the same set as steal and run forward (see `forwarded_signals`).
    let signals = forwarded_signals()?;

    // --steal injects its close: a target that cannot be stopped (traced, no access)
    // is refused here, before the new server starts.
    let mut preflight = Preflight::new(a.pid).backend(a.backend.backend);
    if a.steal {
        preflight = preflight.injects();
    }
    let target = preflight.check()?;
    let how = fdgrab::GrabOptions::new()
        .backend(a.backend.backend)
        .seccomp(a.backend.force.seccomp());
    let taken = activation::take_sockets_with(&target, &a.selectors, &how)
        .with_context(|| format!("choosing sockets of process {}", a.pid))?;
    let names: Vec<String> = taken
        .iter()
        .map(|t| match a.names.get(t.selected.selector) {
            Some(n) => n.clone(),
            None => a.selectors[t.selected.selector].default_fd_name(),
        })
        .collect();

    let notify = NotifySocket::bind()?;
    // What the new server forks and leaves behind before it is ready (a server that
    // daemonizes) becomes our child, so that calling the handover off stops it too
    // instead of leaving it serving on the old server's sockets.
    activation::adopt_orphans(true)?;
    let via_env = a.via != Via::Bind;
    let cmd = ActivationCommand {
        program,
        argv: a.cmd.clone(),
        names: if via_env { names } else { Vec::new() },
        notify_socket: Some(notify.address().to_string()),
        new_session: a.detach,
    };
    let summary = describe_taken(&taken, via_env);
    let target_fds: Vec<fdgrab::TargetFd> = taken
        .iter()
        .flat_map(|t| t.selected.target_fds.iter().copied())
        .collect();
    // What the new server does to the shared sockets' status flags (it makes them
    // non-blocking, usually) is undone if the handover is called off: read now,
    // before it starts, and put back through copies kept until the handover is
    // decided.
    let (flags, mut child, mut supervisor) = if a.via == Via::Env {
        // Our copies themselves, kept (not one more each: fdgrab already holds about
        // two fds per socket while it starts the server).
        let flags = activation::SavedStatusFlags::save(taken.into_iter().map(|t| t.fd).collect())?;
        let child = activation::spawn(&cmd, &flags.fds())?;
        (flags, child, None)
    } else {
        let ours: Vec<std::os::fd::OwnedFd> = taken.into_iter().map(|t| t.fd).collect();
        let flags = activation::SavedStatusFlags::save(
            ours.iter()
                .map(|f| f.try_clone())
                .collect::<std::io::Result<_>>()
                .context("copying the taken sockets")?,
        )?;
        let env_fds = match a.via {
            Via::Both => flags.fds(),
            _ => Vec::new(),
        };
        let plan = fdgrab::spawn::FdPlan::listen_fds(&env_fds)?;
        drop(env_fds);
        // The supervisor keeps its copies until the handover is decided.
        let (child, sup) = BindHandover::spawn(&cmd, plan, ours)?;
        (flags, child, Some(sup))
    };

    let new_pid = child.pid();
    let outcome = child.wait_ready_gated(
        Some(&notify),
        Some(&signals),
        a.ready_timeout,
        a.start_timeout,
        supervisor.as_mut().map(|s| s as &mut dyn ReadyGate),
    )?;
    // Kept for the new server's life only where fdgrab stays and reads it (below).
    let notify = (a.via == Via::Env && !a.detach).then_some(notify);
    let how = match outcome {
        Ok(how) => how,
        Err(why) => {
            // Undo what the new server changed on the shared sockets and stop
            // supervising (its pending and later binds see ENOSYS) before stopping it.
            let unclaimed = supervisor.as_ref().map(|s| s.handover().unclaimed());
            let refusal = supervisor.as_ref().and_then(|s| s.handover().refusal());
            if let Some(s) = supervisor.take() {
                s.handover().abort();
            }
            // The new server is stopped below (or has exited); what it forked and
            // left behind goes too, or it would serve on beside the old server.
            let left_behind = match why {
                NotReady::Exited(_) => match child.end_left_behind(STOP_GRACE) {
                    0 => String::new(),
                    n => format!(" (stopped {n} process(es) it had forked and left behind)"),
                },
                _ => String::new(),
            };
            let reason = match why {
                NotReady::Exited(st) => match unclaimed.as_ref().filter(|u| !u.is_empty()) {
                    Some(u) => format!(
                        "exited ({}) before it was ready{left_behind}, without binding {} (a bind must name \
                         exactly a taken address, with its family and type; any other gets the \
                         kernel's answer, EADDRINUSE while the old server holds the port)",
                        describe_status(st),
                        u.join(", ")
                    ),
                    None => format!(
                        "exited ({}) before it was ready{left_behind}",
                        describe_status(st)
                    ),
                },
                NotReady::TimedOut(t) => {
                    let st = child.terminate_all(STOP_GRACE)?;
                    match unclaimed.filter(|u| !u.is_empty()) {
                        Some(u) => format!(
                            "did not bind {} within {t:?} (stopped it: {}); it must bind exactly \
                             the taken addresses",
                            u.join(", "),
                            describe_status(st)
                        ),
                        None if a.via != Via::Env => format!(
                            "bound every taken address but neither called listen() on all of them \
                             nor sent READY=1 within {t:?} (stopped it: {}); use --ready-timeout",
                            describe_status(st)
                        ),
                        None => format!(
                            "sent no READY=1 within {t:?} (stopped it: {}); if it does not speak \
                             sd_notify, use --ready-timeout",
                            describe_status(st)
                        ),
                    }
                }
                NotReady::Interrupted(sig) => {
                    let st = child.terminate_all(STOP_GRACE)?;
                    format!(
                        "was not ready yet when fdgrab received {} (stopped it: {})",
                        signal_name(sig),
                        describe_status(st)
                    )
                }
                NotReady::Stopped(sig) => {
                    let st = child.terminate_all(STOP_GRACE)?;
                    format!(
                        "was stopped ({}) when --ready-timeout passed, so it served nothing \
                         (stopped it: {}); it runs in a process group of its own, which may not \
                         read from the terminal fdgrab runs in (SIGTTIN) nor, under `stty \
                         tostop`, write to it (SIGTTOU): give it </dev/null or another output",
                        signal_name(sig),
                        describe_status(st)
                    )
                }
                NotReady::Refused => {
                    let st = child.terminate_all(STOP_GRACE)?;
                    format!(
                        "cannot take over: {} (stopped it: {})",
                        refusal.unwrap_or_default(),
                        describe_status(st)
                    )
                }
            };
            // Nothing of the new server's runs any more.
            let put_back = match flags.restore() {
                0 => "",
                _ => " (the status flags the new server changed on them, O_NONBLOCK, put back)",
            };
            bail!(
                "new server {new_pid} ({}) {reason}; process {} was not touched and keeps its \
                 sockets{put_back}",
                a.cmd[0].to_string_lossy(),
                a.pid
            );
        }
    };

    // From here on the new server's orphans are not ours.
    activation::adopt_orphans(false)?;
    if a.steal {
        if let Err(e) = steal(&target, &target_fds, &mut child, a.backend.force.seccomp()) {
            if let Some(s) = &supervisor {
                s.handover().abort();
            }
            flags.restore();
            return Err(e);
        }
    }
    if let Some(s) = &supervisor {
        s.handover().commit();
    }
    // Our copies must go now: if the new server dies later, a listening socket kept
    // open only by fdgrab would queue connections nobody takes.
    drop(flags);
    let how = match how {
        Readiness::Notified => "sent READY=1".to_string(),
        Readiness::Assumed(t) => format!("still running after {t:?}"),
        Readiness::Listening => "listens on every taken socket".to_string(),
    };
    say!(
        "fdgrab: new server {new_pid} is ready ({how}); it has {summary} from process {}",
        a.pid
    );
    if let Some(sig) = a.signal_old {
        // The new server is serving by now (and with --steal the old one no longer
        // is), so a failed signal must not take the new server down: say so and go on.
        match target.send_signal(sig) {
            Ok(()) => say!("fdgrab: sent {} to old server {}", signal_name(sig), a.pid),
            Err(fdgrab::Error::NoSuchProcess { .. }) => {
                say!(
                    "fdgrab: old server {} has already exited; no signal sent",
                    a.pid
                )
            }
            Err(e) => say!(
                "fdgrab: could not send {} to old server {}: {e}; both servers keep running",
                signal_name(sig),
                a.pid
            ),
        }
    }
    if a.detach {
        // The detached supervisor is a fork of this process: what fdgrab itself
        // holds (the signalfd, the old and new servers' pidfds) would otherwise
        // stay open in it for the new server's whole life.
        drop(signals);
        drop(target);
        child.release();
        let sup_pid = match supervisor {
            Some(s) => Some(s.detach()?),
            None => None,
        };
        crate::exit::print_line(new_pid)?;
        if let Some(p) = sup_pid {
            say!("fdgrab: supervisor {p} stays with new server {new_pid}");
            crate::exit::print_line(p)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let status = match supervisor.as_mut() {
        Some(s) => s.serve(&mut child, &signals)?,
        None => match &notify {
            Some(n) => child.wait_forwarding_notified(&signals, n)?,
            None => child.wait_forwarding(&signals)?,
        },
    };
    Ok(passthrough(status))
}

fn describe_taken(taken: &[TakenSocket], numbered: bool) -> String {
    let parts: Vec<String> = taken
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let s = &t.selected;
            let nums: Vec<String> = s.target_fds.iter().map(|f| f.to_string()).collect();
            let at = if numbered {
                format!("fd {} = ", activation::LISTEN_FDS_START + i as i32)
            } else {
                String::new()
            };
            format!(
                "{at}{} {} (old fd {}, taken by {})",
                s.info.protocol.as_deref().unwrap_or(&s.info.family),
                describe_endpoint(&s.info),
                nums.join(","),
                t.backend.method()
            )
        })
        .collect();
    parts.join(", ")
}

fn describe_endpoint(info: &fdgrab::inventory::SocketInfo) -> String {
    match &info.local {
        Some(l) => match (l.ip(), l.port, &l.path) {
            (Some(std::net::IpAddr::V6(ip)), Some(p), _) => format!("[{ip}]:{p}"),
            (Some(ip), Some(p), _) => format!("{ip}:{p}"),
            (_, _, Some(path)) => path.clone(),
            _ => "?".into(),
        },
        None => "?".into(),
    }
}

fn describe_status(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (_, Some(s)) => format!("killed by {}", signal_name(s)),
        _ => st.to_string(),
    }
}

/// `--steal`: closes every number the taken sockets have in the old server, in one
/// ptrace session. If that fails the handover is called off: the new server is
/// stopped and the old one, which `close_in_target` leaves unchanged when an fd is
/// missing, keeps serving.
fn steal(
    target: &PidFd,
    fds: &[fdgrab::TargetFd],
    child: &mut activation::ActivatedChild,
    seccomp: fdgrab::inject::SeccompPolicy,
) -> Result<()> {
    match fdgrab::inject::close_in_target(target, fds, CloseMode::Close, seccomp) {
        Ok(()) => {
            let nums: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
            say!(
                "fdgrab: closed fd {} in old server {}",
                nums.join(","),
                target.pid()
            );
            Ok(())
        }
        // It exited since it was chosen: its sockets are the new server's alone,
        // which is what stealing was for. Stopping the new server now would leave
        // nobody serving.
        Err(fdgrab::Error::NoSuchProcess { .. }) => {
            say!(
                "fdgrab: old server {} has already exited; no socket left to close",
                target.pid()
            );
            Ok(())
        }
        Err(e) => {
            let st = child.terminate_all(STOP_GRACE)?;
            Err(anyhow::Error::new(e).context(format!(
                "closing the sockets in process {} failed; stopped the new server {} ({})",
                target.pid(),
                child.pid(),
                describe_status(st)
            )))
        }
    }
}
