//! The `fdgrab` command. All logic that is not about arguments, output or exit
//! codes lives in the `fdgrab` library.

mod args;
mod cli;
mod cmd;
mod exit;
mod spawn;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = match cli::Cli::try_parse() {
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
    init_logging(cli.verbose, cli.log_format);
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => exit::report(&e),
    }
}

/// `println!` panics when stdout's reader has gone (EPIPE): end quietly with 0
/// instead, as errors carrying EPIPE do (see `exit::report`). Rust ignores SIGPIPE,
/// so without this `fdgrab ... | head` would report a panic.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        let epipe = format!("(os error {})", libc::EPIPE);
        if msg.starts_with("failed printing to stdout") && msg.contains(&epipe) {
            std::process::exit(0);
        }
        default(info)
    }));
}

/// Installs the log subscriber. Without `-v`, `FDGRAB_LOG` or a log format, only
/// warnings and errors are printed, through a fixed level filter: parsing filter
/// directives costs start-up time that a plain command should not pay.
///
/// Lines carry ANSI colours only when stderr is a terminal (and `NO_COLOR` is unset),
/// so files and the journal get plain text. `--log-format json` (or
/// `FDGRAB_LOG_FORMAT=json`) prints one JSON object per line.
fn init_logging(verbose: u8, format: Option<cli::LogFormat>) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let env = std::env::var_os("FDGRAB_LOG").filter(|v| !v.is_empty());
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let json = format == Some(cli::LogFormat::Json);
    let ansi = !json && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = match (env, json) {
        (None, false) => builder.with_max_level(level).with_ansi(ansi).try_init(),
        (None, true) => builder.with_max_level(level).json().try_init(),
        (Some(directives), json) => {
            let directives = directives.to_string_lossy();
            let filter = EnvFilter::try_new(&*directives).unwrap_or_else(|e| {
                eprintln!("fdgrab: ignoring FDGRAB_LOG={directives:?}: {e}");
                EnvFilter::new(level.to_string())
            });
            let builder = builder.with_env_filter(filter);
            if json {
                builder.json().try_init()
            } else {
                builder.with_ansi(ansi).try_init()
            }
        }
    };
}
