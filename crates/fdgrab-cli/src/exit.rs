//! Exit codes. They are part of the interface, so each one is a named variant
//! rather than a number scattered through the code, and this table is their only
//! description: `--help`, the man page and docs/exit-codes.md are generated from it.

use std::process::ExitCode;

/// Declares [`Code`], its [`Code::ALL`] table and each code's one-line meaning, so a
/// code cannot be added without its documentation.
macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $n:literal => $meaning:literal,)+) => {
        /// The documented exit codes (besides 0, and a wrapped command's own status).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Code {
            $($(#[$doc])* $name = $n,)+
        }

        impl Code {
            /// Every code, in numeric order.
            pub const ALL: &'static [Code] = &[$(Code::$name,)+];

            /// What the code means, in one line.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Code::$name => $meaning,)+
                }
            }
        }
    };
}

codes! {
    Failure = 1 => "failure: anything not listed below (an fd of the wrong kind, an I/O error); ls --pids: nothing matched",
    Usage = 2 => "usage: a bad argument (pid 0, a negative pid or fd, a number out of range, a missing -- CMD, a bad policy file)",
    Unsupported = 3 => "the running kernel lacks a needed system call (pidfd_open needs Linux 5.3, pidfd_getfd 5.6)",
    PermissionDenied = 4 => "permission denied (another uid, a non-dumpable target, Yama, an LSM); the message names the likely cause",
    NoSuchProcessOrFd = 5 => "no such process (it never existed, exited or was reaped) or no such fd in it",
    /// `attach`: the terminal session is already attached by another fdgrab.
    AlreadyAttached = 6 => "attach: the terminal session is already attached by another fdgrab",
    /// `attach`: detached; the program keeps running and can be attached again.
    Detached = 7 => "attach: detached; the program keeps running and can be attached again",
    /// CMD was found but could not be started: not executable, or a set-up step
    /// before its exec failed (as `env` and shells use 126).
    CannotExecute = 126 => "CMD was found but could not be started (not executable, or a set-up step before its exec failed), as env and shells use 126",
    /// CMD was not found (as `env` and shells use 127).
    NotFound = 127 => "CMD was not found, as env and shells use 127",
    /// Whoever read fdgrab's stdout went away (`fdgrab ls | head`): fdgrab stops
    /// quietly with the status a shell shows for a program killed by SIGPIPE.
    BrokenPipe = 141 => "stdout's reader went away (EPIPE, e.g. piped into head): fdgrab stops quietly, with the status a shell shows for a program killed by SIGPIPE",
}

/// What exit status 0 and the statuses of wrapped commands mean; shared by every
/// rendering of the table.
pub const SUCCESS_MEANING: &str = "success. Commands that run a program (get, steal, exec, run) exit with its status instead; a program killed by signal N gives 128+N.";

impl Code {
    /// `--help`'s closing text: one entry per code, wrapped to fit 80 columns.
    pub fn help_text() -> String {
        let mut s = String::from("Exit status:\n");
        let rows = std::iter::once((0, SUCCESS_MEANING))
            .chain(Code::ALL.iter().map(|c| (*c as u8, c.meaning())));
        for (code, meaning) in rows {
            s.push_str(&format!("  {code:<3}  "));
            let mut width = 0;
            for word in meaning.split(' ') {
                if width > 0 && width + 1 + word.len() > 71 {
                    s.push_str("\n       ");
                    width = 0;
                } else if width > 0 {
                    s.push(' ');
                    width += 1;
                }
                s.push_str(word);
                width += word.len();
            }
            s.push('\n');
        }
        s.push_str(
            "Errors go to stderr as one line naming the pid, fd or argument and the reason.",
        );
        s
    }

    /// The man page's EXIT STATUS section body (roff).
    pub fn roff() -> String {
        let mut s = format!(".TP\n0\n{}\n", roff_escape(SUCCESS_MEANING));
        for c in Code::ALL {
            s.push_str(&format!(
                ".TP\n{}\n{}\n",
                *c as u8,
                roff_escape(c.meaning())
            ));
        }
        s
    }
}

/// Escapes text for a roff paragraph: backslashes, hyphens (so they are not
/// hyphenation points) and a leading dot or quote (which would start a request).
pub fn roff_escape(text: &str) -> String {
    let s = text.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
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
        eprint_line(format_args!("fdgrab: {e:#}"));
    }
    code.into()
}

/// `eprintln!` that never panics: a message that cannot be written (stderr's
/// reader went away) must not turn a documented exit code, or a command that
/// only warned, into a panic's 101. One `write`, so that a line shared with a
/// program's own output (CMD inherits our stderr) is not split.
pub fn eprint_line(line: impl std::fmt::Display) {
    use std::io::Write;
    let line = format!("{line}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_order_and_complete() {
        let numbers: Vec<u8> = Code::ALL.iter().map(|c| *c as u8).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        assert_eq!(numbers.first(), Some(&1));
        let help = Code::help_text();
        assert!(help.lines().all(|l| l.len() <= 80), "{help}");
        let flowed = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for c in Code::ALL {
            assert!(flowed.contains(c.meaning()), "{c:?} missing from --help");
        }
    }

    #[test]
    fn roff_is_escaped() {
        assert_eq!(roff_escape("a-b"), "a\\-b");
        assert_eq!(roff_escape(".x"), "\\&.x");
        assert!(!Code::roff().contains("pid-"), "hyphens escaped");
    }
}
