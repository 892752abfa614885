//! Exit codes. They are part of the interface (see README), so each one is a
//! named variant rather than a number scattered through the code.

use std::process::ExitCode;

/// The documented exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Failure = 1,
    Usage = 2,
    Unsupported = 3,
    PermissionDenied = 4,
    NoSuchProcessOrFd = 5,
    /// `attach`: the terminal session is already attached by another fdgrab.
    AlreadyAttached = 6,
    /// `attach`: detached; the program keeps running and can be attached again.
    Detached = 7,
    /// CMD was found but could not be started: not executable, or a set-up step
    /// before its exec failed (as `env` and shells use 126).
    CannotExecute = 126,
    /// CMD was not found (as `env` and shells use 127).
    NotFound = 127,
    /// Whoever read fdgrab's stdout went away (`fdgrab ls | head`): fdgrab stops
    /// quietly with the status a shell shows for a program killed by SIGPIPE.
    BrokenPipe = 141,
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> ExitCode {
        ExitCode::from(c as u8)
    }
}

/// A command-line error that is the user's to fix (exit 2), raised after clap has
/// accepted the syntax, e.g. two fds mapped to the same number.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// An error that carries its own exit code (a refusal no library error kind names).
#[derive(Debug)]
pub struct CodedError(pub Code, pub String);

impl std::fmt::Display for CodedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for CodedError {}

/// Picks the exit code for an error by looking through its chain for a typed cause.
pub fn code_for(e: &anyhow::Error) -> Code {
    for cause in e.chain() {
        if cause.downcast_ref::<StdoutClosed>().is_some() {
            return Code::BrokenPipe;
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            return Code::Usage;
        }
        if let Some(CodedError(code, _)) = cause.downcast_ref::<CodedError>() {
            return *code;
        }
        if let Some(err) = cause.downcast_ref::<fdgrab::Error>() {
            return match err {
                fdgrab::Error::NoSuchProcess { .. }
                | fdgrab::Error::NoSuchFd { .. }
                | fdgrab::Error::NoMatchingSocket { .. } => Code::NoSuchProcessOrFd,
                fdgrab::Error::PermissionDenied { .. }
                | fdgrab::Error::SeccompRefused { .. }
                | fdgrab::Error::SeccompUnchecked { .. } => Code::PermissionDenied,
                fdgrab::Error::Unsupported { .. } => Code::Unsupported,
                fdgrab::Error::InvalidArgument(_) => Code::Usage,
                fdgrab::Error::Spawn(e) if e.is_not_found() => Code::NotFound,
                fdgrab::Error::Spawn(_) => Code::CannotExecute,
                _ => Code::Failure,
            };
        }
    }
    Code::Failure
}

/// Prints the error chain on stderr and returns its exit code; a closed stdout
/// ([`Code::BrokenPipe`]) is not worth a message.
pub fn report(e: &anyhow::Error) -> ExitCode {
    let code = code_for(e);
    if code != Code::BrokenPipe {
        eprintln!("fdgrab: {e:#}");
    }
    code.into()
}

/// The reader of our stdout went away (EPIPE on a write to stdout; Rust ignores
/// SIGPIPE). Only writes to stdout become this: EPIPE on a socket fdgrab sends to
/// is an error like any other.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// For `map_err` on a write to stdout: [`StdoutClosed`] for EPIPE, else the error
/// with `what` as its context.
pub fn stdout_error(what: &'static str) -> impl FnOnce(std::io::Error) -> anyhow::Error {
    move |e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            StdoutClosed.into()
        } else {
            anyhow::Error::new(e).context(what)
        }
    }
}

/// `println!` that returns an error instead of panicking when stdout is closed.
pub fn print_line(line: impl std::fmt::Display) -> anyhow::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}").map_err(stdout_error("writing to stdout"))
}
