//! The `fdgrab` command. All logic that is not about arguments, output or exit
//! codes lives in the `fdgrab` library.

// Every `unsafe` block of the project lives in the library, next to the kernel
// interface it wraps.
#![forbid(unsafe_code)]

mod args;
mod bind_policy;
mod cli;
mod cmd;
mod exit;
mod launch;
mod logging;

use std::process::ExitCode;

fn main() -> ExitCode {
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
