//! Command-line definitions (clap derive). The man page and shell completions are
//! generated from these, so help texts here are the documentation.

use crate::args::{parse_fd, parse_fd_map, parse_pid, FdMap};
use clap::{Parser, Subcommand};
use fdgrab::{Pid, TargetFd};
use std::ffi::OsString;
use std::path::PathBuf;

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
    /// Run a command under a seccomp supervisor that performs its privileged binds.
    ///
    /// `bind` is trapped with seccomp user notification. A bind to a port below the
    /// socket netns's ip_unprivileged_port_start that the policy allows is performed
    /// by fdgrab on the program's own socket and answered with the exact result;
    /// every other bind is handed back to the kernel untouched. io_uring_setup fails
    /// with ENOSYS (io_uring can bind without seccomp seeing it). Calls made through
    /// another ABI (i386, x32) kill the program. fdgrab forwards SIGINT, SIGTERM and
    /// SIGHUP and exits with the program's status.
    Run(RunArgs),
    /// Serve as an OCI seccomp agent: supervise containers' binds for runc and crun.
    ///
    /// Runtimes connect to --socket (the seccomp profile's `listenerPath`) and hand
    /// over each container's seccomp listener. Privileged binds the policy allows are
    /// performed for the container; all else gets the kernel's own answer. A container
    /// may narrow the policy through `listenerMetadata` (`allow-bind=tcp:80,tcp:443`) or
    /// the annotation `org.fdgrab.allow-bind`, never widen it. If the agent exits,
    /// supervised binds fail with ENOSYS, and runtimes refuse to start new containers
    /// that name the socket.
    Agent(AgentArgs),
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
pub struct RunArgs {
    /// Run the program as USER (and GROUP): a name or a number. Supplementary groups
    /// come from /etc/group. fdgrab itself keeps root, but only the capabilities it needs.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Allow binds matching SPEC = [tcp|udp:]PORT[-PORT][@ADDR]. Repeatable.
    #[arg(long = "allow-bind", value_name = "SPEC")]
    pub allow_bind: Vec<String>,
    /// A TOML policy file (format in README); its rules are added to --allow-bind.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Append one JSON line per decision to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE|-")]
    pub audit: Option<PathBuf>,
    /// Do not kill the program (SIGKILL as parent-death signal) if fdgrab dies.
    /// Its trapped binds then fail with ENOSYS.
    #[arg(long)]
    pub keep_running_on_supervisor_exit: bool,
    /// The command to run, after `--`.
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

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The unix socket runtimes connect to (created mode 0600, owned by root). A stale
    /// socket file is replaced; one a live agent listens on is an error.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Allow privileged binds matching SPEC, `[tcp|udp:]PORT[-PORT][@ADDR]`, to every
    /// container (repeatable; the upper bound containers can only narrow).
    #[arg(long = "allow-bind", value_name = "SPEC")]
    pub allow_bind: Vec<String>,
    /// A TOML policy file, merged with the --allow-bind specs (format in README).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Write one JSON line per decision, with the container id and bundle, to FILE
    /// (`-` for stdout).
    #[arg(long, value_name = "FILE|-")]
    pub audit: Option<PathBuf>,
}
