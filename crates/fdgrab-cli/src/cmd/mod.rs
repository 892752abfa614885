//! One module per subcommand.

mod agent;
mod cat;
mod docs;
mod get;
mod ls;
mod run;
mod send;

use crate::cli::{Cli, Command};
use std::process::ExitCode;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ls(a) => ls::run(a),
        Command::Get(a) => get::run(a),
        Command::Cat(a) => cat::run(a),
        Command::Send(a) => send::run(a),
        Command::Run(a) => run::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
    }
}
