//! The `fdgrab` command. All logic that is not about arguments, output or exit
//! codes lives in the `fdgrab` library.

// Every `unsafe` block of the project lives in the library, next to the kernel
// interface it wraps. The one exception to the lint is not a block: the unmangled
// `main` symbol below (see `entry`).
#![deny(unsafe_code)]
// Our own C `main` instead of std's `lang_start`; see `entry`. (The unit-test
// harness brings its own.)
#![cfg_attr(not(test), no_main)]

mod args;
mod bind_policy;
mod cli;
mod cmd;
mod exit;
mod launch;
mod logging;

use std::process::ExitCode;

/// The process's entry point, called by the C library, in place of std's runtime
/// start (`lang_start`). That start costs about a fifth of `fdgrab --version`'s
/// instructions, mostly to find the main thread's stack for the stack-overflow
/// message (glibc parses `/proc/self/maps` for it). We do the rest of what it
/// does ourselves:
/// - fds 0, 1 and 2 are opened on `/dev/null` when closed, so that no fd of ours
///   (a pidfd, a grabbed fd) can land on a standard number;
/// - `SIGPIPE` is ignored, so a closed pipe is an `EPIPE` error (reported, or exit
///   141 quietly for stdout) rather than a silent death;
/// - a panic prints its message (the default hook) and exits with 101;
/// - stdout is flushed before exit.
///
/// The arguments and environment are read through std, which on glibc takes them
/// from the C library's start-up (before `main`), not from `lang_start`. What is
/// given up: a stack overflow is a plain SIGSEGV without std's message.
// SAFETY (of the unmangled symbol): this binary defines no other `main`, and the C
// runtime calls it with the signature given.
#[cfg(not(test))]
#[allow(unsafe_code)]
#[no_mangle]
extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    entry()
}

#[cfg_attr(test, allow(dead_code))]
fn entry() -> std::ffi::c_int {
    use std::io::Write as _;
    standard_fds_open();
    if let Err(e) = fdgrab::spawn::ignore_sigpipe() {
        eprintln!("fdgrab: {e}");
        return exit::Code::Failure as u8 as std::ffi::c_int;
    }
    let code = std::panic::catch_unwind(run).unwrap_or_else(|_| ExitCode::from(101));
    let _ = std::io::stdout().lock().flush();
    // `ExitCode` hides its number; it is one of 256.
    (0..=u8::MAX)
        .find(|&n| ExitCode::from(n) == code)
        .map_or(1, std::ffi::c_int::from)
}

/// Opens `/dev/null` on each of fds 0, 1 and 2 that is closed, lowest first (so
/// `open` returns that very number), as std's start-up does.
fn standard_fds_open() {
    use rustix::event::{poll, PollFd, PollFlags};
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let mut fds = [
        PollFd::new(&i, PollFlags::empty()),
        PollFd::new(&o, PollFlags::empty()),
        PollFd::new(&e, PollFlags::empty()),
    ];
    if poll(&mut fds, Some(&rustix::event::Timespec::default())).is_err() {
        return;
    }
    let closed: Vec<bool> = fds
        .iter()
        .map(|f| f.revents().contains(PollFlags::NVAL))
        .collect();
    for closed in closed {
        if closed {
            // Kept open for the life of the process, at the number it filled (the
            // lowest free one: `n`, as those below are open).
            let null = rustix::fs::open(
                "/dev/null",
                rustix::fs::OFlags::RDWR,
                rustix::fs::Mode::empty(),
            );
            if let Ok(fd) = null {
                std::mem::forget(fd);
            }
        }
    }
}

fn run() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr.
            let _ = e.print();
            return if e.use_stderr() {
                exit::Code::Usage.into()
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    logging::init(cli.verbose, cli.log_format);
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => exit::report(&e),
    }
}

/// Parses the command line. The exit-status table closing `fdgrab --help` is
/// rendered only when help may be printed: formatting it costs more than parsing a
/// short command line.
fn parse() -> Result<cli::Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = cli::Cli::command();
    if args
        .iter()
        .skip(1)
        .any(|a| a == "-h" || a == "--help" || a == "help")
    {
        cmd = cmd.after_help(exit::Code::help_text());
    }
    let matches = cmd.try_get_matches_from(args)?;
    cli::Cli::from_arg_matches(&matches)
}
