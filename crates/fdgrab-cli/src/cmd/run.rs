//! `fdgrab run`: run a program under the bind supervisor.
//!
//! The launcher is the library's [`SupervisedCommand`]: the program drops to
//! `--user`, sets its parent-death signal and no_new_privs, installs the filter
//! itself and hands the listener back before exec. fdgrab keeps only the
//! capabilities the supervisor needs and serves the listener until the program
//! exits, forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT.

use crate::bind_policy::{load_policy, open_audit};
use crate::cli::RunArgs;
use crate::exit::UsageError;
use crate::launch::{forwarded_signals, passthrough};
use anyhow::{Context, Result};
use fdgrab::supervise::{SupervisedCommand, User};
use std::process::ExitCode;

pub fn run(a: RunArgs) -> Result<ExitCode> {
    let policy = load_policy(&a.bind_policy.allow_bind, a.bind_policy.policy.as_deref())?;
    let audit = open_audit(&a.bind_policy)?;
    let user = a.user.as_deref().map(resolve_user).transpose()?;
    if a.cmd.is_empty() {
        return Err(UsageError("no command given after --".into()).into());
    }
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

/// `USER[:GROUP]`, each a name from /etc/passwd and /etc/group or a number.
fn resolve_user(spec: &str) -> Result<User> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(UsageError(format!("--user '{spec}': empty user name")).into());
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user)));
    let (name, uid, mut gid, home) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => {
            let uid: u32 = f[2]
                .parse()
                .map_err(|_| UsageError(format!("/etc/passwd: bad uid for {}", f[0])))?;
            let gid: u32 = f[3]
                .parse()
                .map_err(|_| UsageError(format!("/etc/passwd: bad gid for {}", f[0])))?;
            (f[0].to_string(), uid, gid, f[5].to_string())
        }
        (None, Ok(n)) => (n.to_string(), n, n, "/".to_string()),
        (None, Err(_)) => {
            return Err(
                UsageError(format!("--user '{spec}': no user '{user}' in /etc/passwd")).into(),
            )
        }
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    UsageError(format!("--user '{spec}': no group '{g}' in /etc/group"))
                })?,
        };
    }
    let mut supplementary = vec![gid];
    for f in groups.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
        if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
            if let Ok(g) = f[2].parse::<u32>() {
                if !supplementary.contains(&g) {
                    supplementary.push(g);
                }
            }
        }
    }
    Ok(User {
        name,
        home,
        uid,
        gid,
        groups: supplementary,
    })
}
