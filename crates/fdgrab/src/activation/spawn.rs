//! Starting the new server as systemd would, on the crate's one spawner.

use super::ActivatedChild;
use crate::error::{Error, Result};
use crate::spawn::{FdPlan, Session, SignalDefaults, Spawn};
use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;

/// The longest `LISTEN_FDNAMES` entry systemd accepts (`FDNAME_MAX`).
pub(crate) const MAX_FD_NAME: usize = 255;

/// Checks a `LISTEN_FDNAMES` entry the way systemd does: at most [`MAX_FD_NAME`]
/// printable ASCII characters, no `:` (the separator).
pub fn check_fd_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("an fd name cannot be empty".into());
    }
    if name.len() > MAX_FD_NAME {
        return Err(format!(
            "fd name '{name}' is longer than {MAX_FD_NAME} characters"
        ));
    }
    if let Some(c) = name.chars().find(|c| *c == ':' || !c.is_ascii_graphic()) {
        return Err(format!(
            "fd name '{name}' contains {c:?}; names are printable ASCII without ':' or spaces"
        ));
    }
    Ok(())
}

/// How to start the new server.
#[derive(Clone, Debug)]
pub struct ActivationCommand {
    /// The resolved program ([`super::find_program`]).
    pub program: PathBuf,
    /// The full argument vector, `argv[0]` included.
    pub argv: Vec<OsString>,
    /// One `LISTEN_FDNAMES` entry per socket.
    pub names: Vec<String>,
    /// `NOTIFY_SOCKET` for the child, if readiness is to be reported.
    pub notify_socket: Option<String>,
    /// Start the child in a new session (it will outlive us) rather than in a new
    /// process group of ours.
    pub new_session: bool,
}

/// Variables we set, removed from the inherited environment first.
const OWN_VARS: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
];

/// Starts `cmd` with `fds` at 3, 4, … and the socket-activation environment, on the
/// crate's one spawner ([`crate::spawn`]).
///
/// The environment is ours, minus any inherited `LISTEN_*`/`NOTIFY_SOCKET`, plus
/// `LISTEN_FDS`, `LISTEN_FDNAMES`, `NOTIFY_SOCKET` (when set) and `LISTEN_PID`, which
/// the child writes itself before exec. Every other descriptor above 2 is closed at
/// exec, and every signal starts at its default, as systemd starts a service.
pub fn spawn(cmd: &ActivationCommand, fds: &[BorrowedFd<'_>]) -> Result<ActivatedChild> {
    let child = prepare(cmd, fds)?.spawn()?;
    tracing::info!(pid = child.pid(), program = %cmd.program.display(), fds = fds.len(), "started new server");
    Ok(ActivatedChild::new(child))
}

/// The [`Spawn`] behind [`spawn`]: `fds` at 3, 4, … with `LISTEN_FDS` and
/// `LISTEN_FDNAMES` (none and no `LISTEN_*` at all when `fds` is empty), `NOTIFY_SOCKET`,
/// every other fd closed at exec, default signal dispositions, and the session.
pub fn prepare(cmd: &ActivationCommand, fds: &[BorrowedFd<'_>]) -> Result<Spawn> {
    if cmd.names.len() != fds.len() {
        return Err(Error::InvalidArgument(format!(
            "{} fd names for {} sockets",
            cmd.names.len(),
            fds.len()
        )));
    }
    setup(Spawn::new(&cmd.argv)?, cmd, FdPlan::listen_fds(fds)?)
}

/// Adds what [`prepare`] describes to `spawn`, with `plan` installing the sockets.
pub fn setup(spawn: Spawn, cmd: &ActivationCommand, plan: FdPlan) -> Result<Spawn> {
    for name in &cmd.names {
        check_fd_name(name).map_err(Error::InvalidArgument)?;
    }
    let mut spawn = spawn.program(&cmd.program);
    for var in OWN_VARS {
        spawn = spawn.env_remove(var);
    }
    if !plan.is_empty() {
        spawn = spawn
            .env("LISTEN_FDS", plan.len().to_string())
            .env("LISTEN_FDNAMES", cmd.names.join(":"))
            .listen_pid();
    }
    if let Some(n) = &cmd.notify_socket {
        spawn = spawn.env("NOTIFY_SOCKET", n);
    }
    Ok(spawn
        .fds(plan)
        .close_other_fds()
        .signal_defaults(SignalDefaults::All)
        .session(if cmd.new_session {
            Session::NewSession
        } else {
            Session::NewProcessGroup
        }))
}
