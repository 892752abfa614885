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
