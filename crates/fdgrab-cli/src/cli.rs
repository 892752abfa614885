//! Command-line definitions (clap derive). The man page and shell completions are
//! generated from these, so help texts here are the documentation.

use crate::args::{parse_duration, parse_fd, parse_fd_map, parse_pid, parse_selector, parse_signal, FdMap};
use clap::{Parser, Subcommand};
use fdgrab::activation::Selector;
use fdgrab::{Pid, TargetFd};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Take, steal and hand over the open file descriptors of other processes.
#[derive(Debug, Parser)]
#[command(
    name = "fdgrab",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage, 3 unsupported kernel, \
4 permission denied, 5 no such process or fd."
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). FDGRAB_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List a process's open fds: number, mode, type, device/inode, offset and name.
    ///
    /// Nothing in the target is touched: offsets do not move and no socket is grabbed.
    /// Sockets are resolved in the target's network namespace.
    Ls(LsArgs),
    /// Copy fds out of a process and run a command with them installed.
    ///
    /// Each FD is installed in CMD at NEWFD (default: the number it has in the target),
    /// with close-on-exec cleared. fdgrab exits with CMD's status.
    Get(GetArgs),
    /// Copy a file's content to stdout through one of a process's fds.
    ///
    /// Regular files and memfds are read from offset 0 with positional reads, so the
    /// target's offset does not move; this recovers deleted files and memfds. Pipes,
    /// sockets and character devices would lose data for the target, so they are read
    /// only with --consume.
    Cat(CatArgs),
    /// Send copies of a process's fds to a unix socket with SCM_RIGHTS.
    ///
    /// Each message carries at most 253 fds and the text
    /// "fdgrab pid=PID fds=N,N,...\n" naming the target's numbers, in order.
    Send(SendArgs),
    /// Hand a running server's listening sockets to a new server (systemd socket activation).
    ///
    /// Copies the sockets chosen by SELECTORs out of PID and starts CMD with them at fd 3,
    /// 4, ... in selector order, with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set as systemd
    /// does, and NOTIFY_SOCKET pointing at fdgrab. The old server is not touched until CMD
    /// is ready: it sent READY=1, or with --ready-timeout it is still running after that
    /// long. Then --steal closes the sockets in the old server and --signal-old signals it
    /// (through a pidfd). If CMD exits or never becomes ready, it is stopped, the old server
    /// is left exactly as it was, and fdgrab exits non-zero. Otherwise fdgrab stays CMD's
    /// parent, forwards SIGTERM, SIGINT and SIGHUP to it and exits with its status
    /// (--detach: returns once CMD is ready and prints its pid).
    ///
    /// Selectors: tcp:ADDR:PORT, udp:ADDR:PORT (ADDR is an IPv4 address, [IPv6] or *, PORT
    /// a number or *), unix:PATH (@NAME for abstract), fd:N, or * for every listening or
    /// bound socket. All members of an SO_REUSEPORT group are taken together.
    #[command(verbatim_doc_comment)]
    Exec(ExecArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the man page (or write one page per command into --dir).
    Man(ManArgs),
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// The process to list.
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
    /// Only these fds. An fd the process does not have is an error (exit 5).
    #[arg(value_parser = parse_fd, allow_negative_numbers = true)]
    pub fds: Vec<TargetFd>,
    /// One JSON document on stdout (schema in README).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The process to take fds from.
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
    /// FD or FD:NEWFD, one or more.
    #[arg(required = true, value_parser = parse_fd_map, allow_negative_numbers = true, value_name = "FD[:NEWFD]")]
    pub fds: Vec<FdMap>,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

#[derive(Debug, clap::Args)]
pub struct CatArgs {
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
    #[arg(value_parser = parse_fd, allow_negative_numbers = true)]
    pub fd: TargetFd,
    /// Read pipes, sockets and devices too, taking the data away from the target.
    #[arg(long)]
    pub consume: bool,
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
    /// The fds to send, in order.
    #[arg(required = true, value_parser = parse_fd, allow_negative_numbers = true)]
    pub fds: Vec<TargetFd>,
    /// Path of a listening unix stream socket (`@name` for an abstract one).
    #[arg(long, value_name = "SOCKET_PATH")]
    pub to: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The running server to take sockets from.
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
    /// Which sockets to hand over, in the order the new server gets them (fd 3, 4, ...).
    #[arg(required = true, value_parser = parse_selector, value_name = "SELECTOR")]
    pub selectors: Vec<Selector>,
    /// LISTEN_FDNAMES entry for each selector, in order (default: the selector with ':'
    /// replaced by '-'). Give one per selector or none.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Signal the old server once the new one is ready (e.g. TERM, QUIT, WINCH, USR2).
    #[arg(long, value_name = "SIG", value_parser = parse_signal)]
    pub signal_old: Option<i32>,
    /// Count the new server as ready if it is still running this long after start and
    /// has not sent READY=1 (e.g. 500ms, 2s). Without it, READY=1 is required.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ready_timeout: Option<Duration>,
    /// Give up if the new server is not ready after this long: it is stopped and the old
    /// server keeps serving.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "90s")]
    pub start_timeout: Duration,
    /// Close the sockets in the old server (by ptrace) before signalling it.
    #[arg(long)]
    pub steal: bool,
    /// Return once the new server is ready, printing its pid, instead of waiting for it.
    #[arg(long)]
    pub detach: bool,
    /// The new server, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write fdgrab.1 and one fdgrab-COMMAND.1 per command into this directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}
