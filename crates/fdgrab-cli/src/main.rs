//! The `fdgrab` command. All logic that is not about arguments, output or exit
//! codes lives in the `fdgrab` library.

// Every `unsafe` block of the project lives in the library, next to the kernel
// interface it wraps. The one exception to the lint is not a block but the
// unmangled `main` symbol below (see `entry`).
#![deny(unsafe_code)]
// Our own C `main` instead of std's runtime start (`lang_start`); see `entry`. The
// unit-test harness brings its own `main`.
#![cfg_attr(not(test), no_main)]

mod args;
mod bind_policy;
mod cli;
mod cmd;
mod exit;
mod launch;
mod logging;

use std::ffi::c_int;

/// The static musl build's allocator: musl's own, or mimalloc for the commands in
/// [`ALLOCATING`] (see `fdgrab::allocator`).
#[cfg(target_env = "musl")]
#[global_allocator]
static HEAP: fdgrab::allocator::Heap = fdgrab::allocator::Heap;

/// The commands that allocate a lot: big tables, and the long-running supervisors
/// with many threads.
#[cfg(all(not(test), target_env = "musl"))]
const ALLOCATING: [&[u8]; 3] = [b"ls", b"agent", b"run"];

use std::process::ExitCode;

/// The process's entry point, called by the C library in place of std's runtime
/// start. That start cost ~85 µs of every command on this project's machines (a
/// tenth of `fdgrab --version`): it finds the main thread's stack for its
/// stack-overflow message by having glibc parse `/proc/self/maps`
/// (`pthread_getattr_np`), then maps an alternate signal stack and installs
/// `SIGSEGV`/`SIGBUS` handlers. What it did that fdgrab relies on is done in
/// [`entry`]; what is given up:
/// - a stack overflow, in the main thread or in a thread spawned later (std sets
///   up their handler only once `lang_start` has), is a plain `SIGSEGV` (killed
///   by signal 11, as a C program overflowing), without std's "has overflowed its
///   stack" line. No deep
///   recursion is known in fdgrab: clap's parsing is flat, and the parsers of
///   untrusted input (serde_json, toml) stop at a nesting limit of their own;
/// - the main thread has no name: a panic there reads `thread '<unnamed>' (TID)`,
///   where TID is fdgrab's pid, instead of `thread 'main'`.
///
/// The arguments and the environment still come through std: on glibc it takes
/// them from the C library's start-up (an `.init_array` function), not from
/// `lang_start`. std's `Command`, threads (but for the overflow message) and every
/// other std API behave as before. Elsewhere (musl, the static build) std learns
/// the arguments only from `lang_start`: `main` copies them from `argv` for
/// [`parse`]. The environment comes from the C library on both.
// SAFETY (of the unmangled symbol): this binary defines no other `main`, and the C
// runtime calls it with this signature.
#[cfg(not(test))]
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
extern "C" fn main(argc: c_int, argv: *const *const std::ffi::c_char) -> c_int {
    #[cfg(not(target_env = "gnu"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let count = usize::try_from(argc).unwrap_or(0);
        // SAFETY: the C runtime passes `argc` pointers in `argv`, each to a
        // NUL-terminated string that lives as long as the process; they are copied.
        let arg = |i: usize| unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) }.to_bytes();
        // Before the first allocation.
        #[cfg(target_env = "musl")]
        match subcommand((1..count).map(arg)) {
            // Brief: see `use_mimalloc_briefly`.
            Some(b"ls") => {
                fdgrab::allocator::Heap::use_mimalloc_briefly();
            }
            Some(c) if ALLOCATING.contains(&c) => {
                fdgrab::allocator::Heap::use_mimalloc();
            }
            _ => {}
        }
        let args = (0..count)
            .map(arg)
            .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
            .collect();
        let _ = C_ARGS.set(args);
    }
    #[cfg(target_env = "gnu")]
    let _ = (argc, argv);
    entry(run)
}

/// The subcommand among the arguments after the program's name, found without
/// allocating: the first that is neither an option nor the value of a global
/// option given apart (`--log-format json ls`).
#[cfg(any(test, target_env = "musl"))]
fn subcommand<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> Option<&'a [u8]> {
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        if a == b"--log-format" {
            args.next();
        } else if !a.starts_with(b"-") {
            return Some(a);
        }
    }
    None
}

/// The command line as `main` received it, where std does not know it (musl).
#[cfg(not(target_env = "gnu"))]
static C_ARGS: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

/// What std's start-up did that fdgrab relies on, around `run`:
/// - fds 0, 1 and 2 are opened on `/dev/null` when closed, so that no fd of ours (a
///   pidfd, a grabbed fd) can land on a standard number, be taken for stdio and
///   reach CMD there ([`standard_fds_open`]);
/// - `SIGPIPE` is ignored, so that a write to a closed pipe or socket is an `EPIPE`
///   error: reported, or for stdout a quiet exit 141 (`fdgrab ls | head`). The
///   library's spawner sets it back to its default in every CMD, and std's
///   `Command` does the same on its own (it resets `SIGPIPE` unless the
///   `-Zon-broken-pipe` attribute was used, which only `lang_start` could record);
/// - a panic prints its message (the default hook runs before unwinding) and exits
///   with 101 instead of unwinding out of a C function (an abort);
/// - stdout's buffer is flushed before exit (`lang_start`'s clean-up did it; C's
///   `exit` knows nothing of Rust's buffers).
fn entry(run: impl FnOnce() -> ExitCode + std::panic::UnwindSafe) -> c_int {
    use std::io::Write as _;
    standard_fds_open();
    if let Err(e) = fdgrab::spawn::ignore_sigpipe() {
        exit::eprint_line(format_args!("fdgrab: {e}"));
        return c_int::from(exit::Code::Failure as u8);
    }
    let code = std::panic::catch_unwind(run).unwrap_or(ExitCode::from(PANIC_EXIT));
    let _ = std::io::stdout().lock().flush();
    // `ExitCode` does not give its number back (on stable); it is one of 256.
    (0..=u8::MAX)
        .find(|&n| ExitCode::from(n) == code)
        .map_or(1, c_int::from)
}

/// The status of a panic, as std's own start-up exits with.
const PANIC_EXIT: u8 = 101;

/// Opens `/dev/null` on each of fds 0, 1 and 2 that is closed, lowest first, so
/// that `open` (which takes the lowest free number) fills exactly that one. One
/// `fcntl(F_GETFD)` per number: cheaper than std's `poll` of all three in the
/// common case, and it cannot fail for a small `RLIMIT_NOFILE` as `poll` can.
///
/// Where `/dev/null` cannot be opened (an empty `/dev` in a bare chroot or
/// container; std's start-up aborts then), the number is still taken, by a
/// close-on-exec `O_PATH` fd of `/`: reads and writes on it fail with `EBADF`, so
/// to fdgrab (whose stdio ignores `EBADF`) it is as closed as before, and CMD gets
/// the number closed, as fdgrab got it. Left free, it would receive the first fd
/// fdgrab opens, and fdgrab's own messages would be written into a grabbed file.
fn standard_fds_open() {
    use std::os::fd::AsFd;
    let closed = |fd: std::os::fd::BorrowedFd<'_>| {
        rustix::io::fcntl_getfd(fd) == Err(rustix::io::Errno::BADF)
    };
    let std = [
        closed(std::io::stdin().as_fd()),
        closed(std::io::stdout().as_fd()),
        closed(std::io::stderr().as_fd()),
    ];
    use rustix::fs::{open, Mode, OFlags};
    for closed in std {
        if closed {
            let fd = open("/dev/null", OFlags::RDWR, Mode::empty())
                .or_else(|_| open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()));
            // Kept open for the life of the process, at the number it fills.
            if let Ok(fd) = fd {
                std::mem::forget(fd);
            }
        }
    }
}

/// The command: parse, set up logging, dispatch, report.
// The unit-test harness has its own `main`; the tests call `entry` with closures.
#[cfg_attr(test, allow(dead_code))]
fn run() -> ExitCode {
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
    #[cfg(not(target_env = "gnu"))]
    let args: Vec<std::ffi::OsString> = C_ARGS
        .get()
        .cloned()
        .unwrap_or_else(|| std::env::args_os().collect());
    #[cfg(target_env = "gnu")]
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(get) = cmd::fast_get(&args) {
        return Ok(cli::Cli {
            verbose: 0,
            log_format: None,
            command: cli::Command::Get(get),
        });
    }
    if let Some(ls) = cmd::fast_ls(&args) {
        return Ok(cli::Cli {
            verbose: 0,
            log_format: None,
            command: cli::Command::Ls(ls),
        });
    }
    let mut cmd = cli::Cli::command();
    if args
        .iter()
        .skip(1)
        .any(|a| a == "-h" || a == "--help" || a == "help")
    {
        cmd = cmd.after_help(exit::Code::help_text());
    }
    let mut matches = cmd.try_get_matches_from_mut(args)?;
    // `from_arg_matches` would clone the matches first (about 4% of `get`'s
    // instructions); the values are taken out of them instead.
    let cli = cli::Cli::from_arg_matches_mut(&mut matches);
    // Freeing clap's command tree and matches (a few hundred allocations) took 6% of
    // `get`'s instructions: they are left to the process's exit or exec instead (for
    // the long-running agent and run, a one-time ~100 KB that is never touched again).
    std::mem::forget(matches);
    std::mem::forget(cmd);
    cli
}

#[cfg(test)]
mod tests {
    use std::process::ExitCode;

    /// The entry point passes the command's status on, every one of the 256, and
    /// turns a panic into std's 101 (the panic message is printed by the hook
    /// before unwinding), instead of unwinding into the C library (an abort).
    #[test]
    fn entry_passes_statuses_and_turns_a_panic_into_101() {
        for n in [0u8, 1, 2, 7, 101, 126, 127, 141, 255] {
            assert_eq!(super::entry(move || ExitCode::from(n)), i32::from(n));
        }
        assert_eq!(super::entry(|| panic!("panicking on purpose")), 101);
    }

    /// The subcommand that picks the musl build's allocator is the one clap runs,
    /// also after global options, in either place and with their values apart.
    #[test]
    fn subcommand_is_found_after_global_options() {
        let cases: [(&[&str], Option<&str>); 8] = [
            (&["ls", "1"], Some("ls")),
            (&["-v", "agent"], Some("agent")),
            (
                &["-vv", "--log-format", "json", "agent", "--socket", "s"],
                Some("agent"),
            ),
            (&["--log-format=json", "run", "--", "ls"], Some("run")),
            (&["--log-format", "text", "-v", "ls"], Some("ls")),
            (&["get", "--log-format", "json", "1", "0"], Some("get")),
            (&["--log-format"], None),
            (&[], None),
        ];
        for (args, want) in cases {
            let got = super::subcommand(args.iter().map(|a| a.as_bytes()));
            assert_eq!(got, want.map(str::as_bytes), "{args:?}");
        }
        // The one global option with a value is the one skipped.
        let cli = <crate::cli::Cli as clap::CommandFactory>::command();
        let valued: Vec<_> = cli
            .get_arguments()
            .filter(|a| a.is_global_set() && a.get_action().takes_values())
            .filter_map(|a| a.get_long())
            .collect();
        assert_eq!(valued, ["log-format"]);
    }

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
