//! Where log events go. Logging is set up only as far as it was asked for: with no
//! `-v`, `FDGRAB_LOG` or `--log-format`, warnings and errors are printed by
//! [`WarningsOnly`], which costs nothing at start-up; tracing-subscriber's registry
//! and formatters (a sharded slab allocated up front, filter parsing) are built only
//! when logging is requested.
//!
//! Text lines carry ANSI colours only when stderr is a terminal and `NO_COLOR` is
//! unset, so files and the journal get plain text. `--log-format json` (or
//! `FDGRAB_LOG_FORMAT=json`) prints one JSON object per line.

use crate::cli::LogFormat;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};

pub fn init(verbose: u8, format: Option<LogFormat>) {
    let env = std::env::var_os("FDGRAB_LOG").filter(|v| !v.is_empty());
    if verbose == 0 && env.is_none() && format.is_none() {
        let _ = tracing::subscriber::set_global_default(WarningsOnly);
        return;
    }
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    // A log line to a dead stderr must not become a panic or an error of its own.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let json = format == Some(LogFormat::Json);
    let ansi = !json && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = match (env, json) {
        (None, false) => builder.with_max_level(level).with_ansi(ansi).try_init(),
        (None, true) => builder.with_max_level(level).json().try_init(),
        (Some(directives), json) => {
            let directives = directives.to_string_lossy();
            let filter = EnvFilter::try_new(&*directives).unwrap_or_else(|e| {
                crate::exit::eprint_line(format_args!(
                    "fdgrab: ignoring FDGRAB_LOG={directives:?}: {e}"
                ));
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

/// Prints WARN and ERROR events to stderr as one plain line each
/// (`fdgrab: WARN target: message key=value ...`); ignores spans.
struct WarningsOnly;

impl tracing::Subscriber for WarningsOnly {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Spans are below WARN here and never entered into a line; any non-zero id
        // satisfies the contract.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut line = format!("fdgrab: {} {}:", meta.level(), meta.target());
        event.record(&mut Line(&mut line));
        line.push('\n');
        // Never a panic over a log line: stderr may be gone (a hung-up terminal).
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Appends an event's fields to a line: the message bare, the others as key=value.
struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}
