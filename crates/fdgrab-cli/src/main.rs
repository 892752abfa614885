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

/// std's start-up (`lang_start`) stays in charge: it opens `/dev/null` on closed
/// fds 0, 1 and 2 (so no fd of ours, a pidfd or a grabbed fd, lands on a standard
/// number), ignores `SIGPIPE` (a closed pipe is an `EPIPE` error, reported, or exit
/// 141 quietly for stdout), exits 101 on a panic and flushes stdout. A C `main`
/// of our own was measured to save about a fifth of `fdgrab --version`'s
/// instructions (std finds the main thread's stack for its overflow message by
/// parsing `/proc/self/maps`), about 0.1 ms; it was given up because it needs an
/// unsafe attribute (`no_mangle`) in this crate, which holds no unsafe code.
fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to stderr.
            // Help that did not reach stdout is a failed write like any other
            // (141 quietly for a closed pipe).
            let printed = e.print();
            return if e.use_stderr() {
                exit::Code::Usage.into()
            } else {
                match printed.and_then(|()| std::io::Write::flush(&mut std::io::stdout())) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(err) => exit::report(&exit::stdout_error("writing to stdout")(err)),
                }
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
    let matches = cmd.try_get_matches_from_mut(args)?;
    let cli = cli::Cli::from_arg_matches(&matches);
    // Freeing clap's command tree and matches (a few hundred allocations) took 6% of
    // `get`'s instructions: they are left to the process's exit or exec instead (for
    // the long-running agent and run, a one-time ~100 KB that is never touched again).
    std::mem::forget(matches);
    std::mem::forget(cmd);
    cli
}

#[cfg(test)]
mod tests {
    /// build.rs links GCC's static unwinder in place of libgcc_s.so.1, for this
    /// test binary as for fdgrab: a panic still unwinds to `catch_unwind` (attach
    /// restores the terminal that way), and the shared unwinder is not loaded.
    #[test]
    fn panics_unwind_through_the_static_unwinder() {
        let caught = std::panic::catch_unwind(|| panic!("unwinding on purpose"));
        assert!(caught.is_err());
        let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
        assert!(
            !maps.contains("libgcc_s"),
            "libgcc_s is mapped, build.rs did not link the static unwinder:\n{maps}"
        );
    }
}
