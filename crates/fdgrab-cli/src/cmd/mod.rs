//! One module per subcommand.

mod agent;
mod attach;
mod cat;
mod docs;
mod exec;
mod get;
mod ls;
mod profile;
mod put;
mod redirect;
mod run;
mod send;
mod steal;

pub use get::fast_get;
pub use ls::fast_ls;

use crate::cli::{Cli, Command};
use std::process::ExitCode;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ls(a) => ls::run(a),
        Command::Get(a) => get::run(a),
        Command::Cat(a) => cat::run(a),
        Command::Send(a) => send::run(a),
        Command::Exec(a) => exec::run(a),
        Command::Steal(a) => steal::run(a),
        Command::Put(a) => put::run(a),
        Command::Redirect(a) => redirect::run(a),
        Command::Run(a) => run::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Attach(a) => attach::run(a),
        Command::Profile(a) => profile::run(a),
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
    }
}

/// For the fast paths' tests: reads each of `lines` (arguments after `fdgrab`)
/// with `fast` and with clap; every line `fast` reads, clap must read to the same
/// command (`pick` takes its arguments out; compared through `Debug`, which shows
/// every field) with no global option; and `fast` reads `expected` of them (none
/// with `FDGRAB_LOG_FORMAT` set: clap reads it for `--log-format`).
#[cfg(test)]
pub(crate) fn fast_path_agrees_with_clap<T: std::fmt::Debug>(
    lines: &[&[&str]],
    expected: usize,
    fast: impl Fn(&[std::ffi::OsString]) -> Option<T>,
    pick: impl Fn(Command) -> Option<T>,
) {
    use clap::Parser;
    let mut read = 0;
    for line in lines {
        let argv: Vec<std::ffi::OsString> = std::iter::once("fdgrab")
            .chain(line.iter().copied())
            .map(Into::into)
            .collect();
        match (fast(&argv), Cli::try_parse_from(&argv)) {
            (None, _) => {}
            (Some(fast), Ok(cli)) => {
                read += 1;
                assert_eq!((cli.verbose, cli.log_format), (0, None), "{line:?}");
                let by_clap = pick(cli.command)
                    .unwrap_or_else(|| panic!("{line:?}: clap read another command"));
                assert_eq!(format!("{fast:?}"), format!("{by_clap:?}"), "{line:?}");
            }
            (Some(fast), Err(e)) => panic!("{line:?}: read as {fast:?}, clap says {e}"),
        }
    }
    let expected = match std::env::var_os("FDGRAB_LOG_FORMAT") {
        None => expected,
        Some(_) => 0,
    };
    assert_eq!(
        read, expected,
        "the lines of the expected shape are read fast"
    );
}
