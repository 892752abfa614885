//! Why a program did not start: the step of the child's set-up that failed and the
//! errno it failed with.
//!
//! A leaf: it imports nothing from the crate, so that [`crate::Error`] can hold a
//! [`SpawnError`] while the spawner ([`crate::spawn`], which re-exports both types)
//! returns [`crate::Error`]. Whatever a message needs from another module (the
//! meaning of a seccomp errno, where a program was looked for) is worked out by the
//! spawner and carried here as data.

use rustix::io::Errno;
use std::path::Path;

/// A step of the child's set-up, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum Step {
    /// Finding the program in `PATH` (in the parent).
    Resolve = 1,
    /// Resetting signal dispositions.
    Signals,
    /// `setsid`/`setpgid`.
    Session,
    /// Installing the fd plan (`dup2`, `close_range`).
    Fds,
    /// `setgroups`.
    Groups,
    /// `setgid`.
    Gid,
    /// `setuid`.
    Uid,
    /// `PR_SET_PDEATHSIG`, and checking the parent is still the one that spawned.
    DeathSignal,
    /// `PR_SET_NO_NEW_PRIVS`.
    NoNewPrivs,
    /// `seccomp(SECCOMP_SET_MODE_FILTER)`.
    Filter,
    /// Sending the seccomp listener back to the parent.
    SendListener,
    /// `execve`.
    Exec,
}

impl Step {
    const ALL: [Step; 12] = [
        Step::Resolve,
        Step::Signals,
        Step::Session,
        Step::Fds,
        Step::Groups,
        Step::Gid,
        Step::Uid,
        Step::DeathSignal,
        Step::NoNewPrivs,
        Step::Filter,
        Step::SendListener,
        Step::Exec,
    ];

    pub(crate) fn from_u8(b: u8) -> Option<Step> {
        Self::ALL.into_iter().find(|s| *s as u8 == b)
    }

    /// What the step does, for messages.
    pub fn what(self) -> &'static str {
        match self {
            Step::Resolve => "finding the program",
            Step::Signals => "resetting signal dispositions",
            Step::Session => "setting the session or process group",
            Step::Fds => "installing the descriptors (dup2)",
            Step::Groups => "setting the supplementary groups (setgroups)",
            Step::Gid => "switching group (setgid)",
            Step::Uid => "switching user (setuid)",
            Step::DeathSignal => "setting the parent-death signal",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Filter => "installing the seccomp filter",
            Step::SendListener => "passing the seccomp listener to the supervisor",
            Step::Exec => "executing the program (execve)",
        }
    }
}

/// A program that did not start.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub struct SpawnError {
    program: String,
    step: Step,
    errno: Errno,
    /// Where it was looked for, or why it cannot run, when we know more than errno.
    detail: Option<String>,
    /// `execve` said ENOENT about a file that exists: what is missing is the
    /// interpreter its `#!` line names, or its ELF loader.
    loader_missing: bool,
    #[source]
    source: std::io::Error,
}

impl SpawnError {
    pub(crate) fn new(program: &Path, step: Step, errno: Errno) -> Self {
        Self {
            program: program.to_string_lossy().into_owned(),
            step,
            errno,
            detail: None,
            loader_missing: false,
            source: errno.into(),
        }
    }

    /// A step of starting `program` failed with `errno`.
    pub(crate) fn failed(program: &Path, step: Step, errno: Errno) -> Self {
        let mut e = Self::new(program, step, errno);
        // execve's ENOENT about a file that exists.
        e.loader_missing = step == Step::Exec && errno == Errno::NOENT && program.is_file();
        e
    }

    /// Adds what we know beyond the errno, written after the message.
    pub(crate) fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }

    /// The step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// The errno of the failed call.
    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// The program as given or resolved.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// The program does not exist (`ENOENT`/`ENOTDIR` finding or executing it):
    /// what shells report with status 127.
    pub fn is_not_found(&self) -> bool {
        matches!(self.step, Step::Resolve | Step::Exec)
            && matches!(self.errno, Errno::NOENT | Errno::NOTDIR)
    }

    fn message(&self) -> String {
        let p = &self.program;
        let msg = match self.step {
            _ if self.is_not_found() && self.loader_missing => format!(
                "cannot execute '{p}': the interpreter its #! line names (or its ELF loader) \
                 does not exist"
            ),
            _ if self.is_not_found() => format!("command '{p}' not found"),
            Step::Resolve | Step::Exec => format!("cannot execute '{p}'"),
            step => format!("cannot start '{p}': {}", step.what()),
        };
        match &self.detail {
            Some(d) => format!("{msg} {d}"),
            None => msg,
        }
    }
}
