//! `fdgrab run`: run a program under the bind supervisor.
//!
//! The launcher is the library's [`SupervisedCommand`]: the program drops to
//! `--user`, sets its parent-death signal and no_new_privs, installs the filter
//! itself and hands the listener back before exec. fdgrab keeps only the
//! capabilities the supervisor needs and serves the listener until the program
//! exits, forwarding every signal that would end fdgrab (see `launch::forwarded_signals`).

use crate::bind_policy::{load_policy, open_audit};
use crate::cli::RunArgs;
use crate::exit::UsageError;
use crate::launch::{forwarded_signals, passthrough};
use anyhow::{Context, Result};
use fdgrab::supervise::{SupervisedCommand, User};
use std::process::ExitCode;

pub fn run(a: RunArgs) -> Result<ExitCode> {
    let policy = load_policy(&a.bind_policy.allow_bind, a.bind_policy.policy.as_deref())?;
    let user = a.user.as_deref().map(User::lookup).transpose()?;
    if a.cmd.is_empty() {
        return Err(UsageError("no command given after --".into()).into());
    }
    // Opening the sink may create its file: only once the arguments are good.
    let audit = open_audit(&a.bind_policy)?;
    tracing::info!(policy = %policy, "starting supervised program");
    // Blocked and read from a signalfd so that they can be forwarded; the spawner
    // unblocks them in the program.
    let signals = forwarded_signals().context("blocking the signals to forward")?;
    let mut cmd = SupervisedCommand::new(&a.cmd)
        .policy(policy)
        .audit(audit)
        .kill_on_supervisor_exit(!a.keep_running_on_supervisor_exit);
    if let Some(u) = user {
        cmd = cmd.user(u);
    }
    let status = cmd.run(&signals)?;
    tracing::info!(?status, "program exited");
    Ok(passthrough(status))
}
