//! `fdgrab exec`: hand a running server's sockets to a new server through systemd
//! socket activation, and retire the old server only once the new one is ready.

use crate::cli::ExecArgs;
use crate::exit::UsageError;
use crate::launch::{forwarded_signals, passthrough};
use anyhow::{bail, Context, Result};
use fdgrab::activation::{self, ActivationCommand, NotReady, NotifySocket, Readiness, TakenSocket};
use fdgrab::grab::open_target;
use fdgrab::inject::CloseMode;
use fdgrab::signalfd::signal_name;
use fdgrab::PidFd;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

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
    for name in &a.names {
        activation::check_fd_name(name).map_err(|e| UsageError(format!("--name: {e}")))?;
    }
    let program = activation::find_program(&a.cmd[0])?;
    // Blocked before anything is started, so that a ^C during the handover is seen
    // by the wait loop (and aborts it cleanly) instead of killing fdgrab halfway.
    let signals = forwarded_signals()?;

    let target = open_target(a.pid, a.backend.backend)?;
    let how = fdgrab::GrabOptions::new().backend(a.backend.backend);
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
    let cmd = ActivationCommand {
        program,
        argv: a.cmd.clone(),
        names,
        notify_socket: Some(notify.address().to_string()),
        new_session: a.detach,
    };
    let fds: Vec<BorrowedFd<'_>> = taken.iter().map(|t| t.fd.as_fd()).collect();
    let mut child = activation::spawn(&cmd, &fds)?;
    // The child has its own copies. Ours must go now: if the new server dies later,
    // a listening socket kept open only by fdgrab would queue connections nobody takes.
    drop(fds);
    let summary = describe_taken(&taken);
    let target_fds: Vec<fdgrab::TargetFd> = taken
        .iter()
        .flat_map(|t| t.selected.target_fds.iter().copied())
        .collect();
    drop(taken);

    let new_pid = child.pid();
    let outcome = child.wait_ready(
        Some(&notify),
        Some(&signals),
        a.ready_timeout,
        a.start_timeout,
    )?;
    drop(notify);
    let how = match outcome {
        Ok(how) => how,
        Err(why) => {
            let reason = match why {
                NotReady::Exited(st) => {
                    format!("exited ({}) before it was ready", describe_status(st))
                }
                NotReady::TimedOut(t) => {
                    let st = child.terminate(STOP_GRACE)?;
                    format!(
                        "sent no READY=1 within {t:?} (stopped it: {}); if it does not speak sd_notify, \
                         use --ready-timeout",
                        describe_status(st)
                    )
                }
                NotReady::Interrupted(sig) => {
                    let st = child.terminate(STOP_GRACE)?;
                    format!(
                        "was not ready yet when fdgrab received {} (stopped it: {})",
                        signal_name(sig),
                        describe_status(st)
                    )
                }
            };
            bail!(
                "new server {new_pid} ({}) {reason}; process {} was not touched and keeps its sockets",
                a.cmd[0].to_string_lossy(),
                a.pid
            );
        }
    };

    if a.steal {
        steal(&target, &target_fds, &mut child)?;
    }
    let how = match how {
        Readiness::Notified => "sent READY=1".to_string(),
        Readiness::Assumed(t) => format!("still running after {t:?}"),
    };
    eprintln!(
        "fdgrab: new server {new_pid} is ready ({how}); it has {summary} from process {}",
        a.pid
    );
    if let Some(sig) = a.signal_old {
        // The new server is serving by now (and with --steal the old one no longer
        // is), so a failed signal must not take the new server down: say so and go on.
        match target.send_signal(sig) {
            Ok(()) => eprintln!("fdgrab: sent {} to old server {}", signal_name(sig), a.pid),
            Err(fdgrab::Error::NoSuchProcess { .. }) => {
                eprintln!(
                    "fdgrab: old server {} has already exited; no signal sent",
                    a.pid
                )
            }
            Err(e) => eprintln!(
                "fdgrab: could not send {} to old server {}: {e}; both servers keep running",
                signal_name(sig),
                a.pid
            ),
        }
    }
    if a.detach {
        crate::exit::print_line(child.release())?;
        return Ok(ExitCode::SUCCESS);
    }
    let status = child.wait_forwarding(&signals)?;
    Ok(passthrough(status))
}

fn describe_taken(taken: &[TakenSocket]) -> String {
    let parts: Vec<String> = taken
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let s = &t.selected;
            let nums: Vec<String> = s.target_fds.iter().map(|f| f.to_string()).collect();
            format!(
                "fd {} = {} {} (old fd {})",
                activation::LISTEN_FDS_START + i as i32,
                s.info.protocol.as_deref().unwrap_or(&s.info.family),
                describe_endpoint(&s.info),
                nums.join(",")
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
) -> Result<()> {
    match fdgrab::inject::close_in_target(target, fds, CloseMode::Close) {
        Ok(()) => {
            let nums: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
            eprintln!(
                "fdgrab: closed fd {} in old server {}",
                nums.join(","),
                target.pid()
            );
            Ok(())
        }
        Err(e) => {
            let st = child.terminate(STOP_GRACE)?;
            Err(anyhow::Error::new(e).context(format!(
                "closing the sockets in process {} failed; stopped the new server {} ({})",
                target.pid(),
                child.pid(),
                describe_status(st)
            )))
        }
    }
}
