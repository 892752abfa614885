//! Command-line definitions (clap derive). The man page and shell completions are
//! generated from these, so help texts here are the documentation.

use crate::args::{
    parse_backend, parse_duration, parse_escape, parse_fd, parse_fd_map, parse_kind, parse_pid,
    parse_selector, parse_signal, FdMap,
};
use clap::{Parser, Subcommand};
use fdgrab::activation::Selector;
use fdgrab::{Backend, Pid, TargetFd};
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
// `--help` closes with the exit-status table (exit::Code::help_text), attached by
// main only when help may be printed.
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace). FDGRAB_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Log lines on stderr as plain text (coloured only on a terminal) or as one JSON
    /// object per line.
    #[arg(
        long,
        value_enum,
        global = true,
        env = "FDGRAB_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// Each command's arguments are built only when that command runs (`defer`): the
/// others cost nothing at start-up. Help, man pages and completions expand them all.
#[derive(Debug, Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// List open fds: of some processes, or of every process, or only those matching.
    ///
    /// Each fd: number, mode, type, device/inode, size or offset, and a name (path,
    /// socket addresses and state, pipe inode, anon-inode kind). Nothing in a target is
    /// touched: offsets do not move and no socket is grabbed. Sockets are resolved in
    /// each process's own network namespace.
    ///
    /// Without PID every process fdgrab may read is listed, and the table starts with
    /// COMMAND and PID columns (as with several PIDs). A process that cannot be read
    /// (it exited, or it is not ours) is skipped with one summary line on stderr; that
    /// changes the exit status only for a PID named on the command line (4 permission
    /// denied, 5 no such process), and the others are listed all the same.
    ///
    /// Filters combine (all must hold): --port, --path, --deleted, --type, --listen,
    /// --user, --fd. --pids prints just the sorted, unique pids, e.g. for
    /// kill $(fdgrab ls --port 8080 --pids), and exits 1 when none matched (as lsof
    /// -t, fuser and pgrep do).
    ///
    /// Names in the table are escaped so that they cannot act on a terminal or span
    /// lines: \\ for a backslash, \n \t \r \e, \xNN for other control bytes and for
    /// bytes that are not UTF-8, \u{XXXX} for Unicode controls and bidi overrides; an
    /// abstract unix socket's leading NUL is shown as @.
    ///
    /// --json prints one document, schema 2:
    /// {"schema_version": 2, "processes": [{"pid", "command", "process", "fds": [...]}]}.
    /// Changed from schema 1 (one process at the top level): the processes array,
    /// "command", and per fd "nlink". Every name field (link, path, memfd, a socket's
    /// path, command) is a string; when that string alone would not give back the
    /// exact bytes (not UTF-8, or an abstract socket name), a sibling field NAME_bytes
    /// holds them as an array of numbers 0-255.
    #[command(verbatim_doc_comment)]
    Ls(LsArgs),
    /// Copy fds out of a process and run a command with them installed.
    ///
    /// Each FD is installed in CMD at NEWFD (default: the number it has in the target),
    /// with close-on-exec cleared. CMD then runs in fdgrab's place (same pid, as with
    /// env or nohup), so signals reach it directly and its status is fdgrab's (127: CMD
    /// not found; 126: it cannot be started).
    /// The process, every FD, the NEWFD map and CMD are checked before anything is
    /// taken: a refused get changes nothing in the process.
    Get(GetArgs),
    /// Copy a file's content to stdout through one of a process's fds.
    ///
    /// Regular files and memfds are read from offset 0 with positional reads, so the
    /// target's offset does not move; this recovers deleted files and memfds. Pipes,
    /// sockets and character devices would lose data for the target, so they are read
    /// only with --consume. A write-only fd (a logger's O_APPEND log) is read through
    /// a read-only reopen of /proc/PID/fd/FD, checked to be the same file. The process
    /// is never changed, whether cat succeeds or refuses.
    Cat(CatArgs),
    /// Send copies of a process's fds to a unix socket with SCM_RIGHTS.
    ///
    /// Each message carries at most 253 fds and the text
    /// "fdgrab pid=PID fds=N,N,...\n" naming the target's numbers, in order. Every FD
    /// is checked before anything is sent (one the kernel cannot pass, an io_uring,
    /// fails the whole command unless --skip-unpassable); the process is not changed.
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
    /// parent, forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, every other
    /// signal that would end fdgrab, and a user's SIGTTIN, SIGTTOU and SIGWINCH to it, and
    /// exits with its status (--detach: returns once CMD is ready and prints its pid).
    ///
    /// With --via bind, CMD needs no LISTEN_FDS support: it runs under a seccomp filter
    /// that traps bind and listen, and its own bind() of a taken address (same address,
    /// port, family, type) receives the taken socket at that fd number (ADDFD). Other
    /// binds go to the kernel. It is ready once it called listen() on every taken socket.
    /// fdgrab supervises it for its whole life (--detach leaves a supervisor process).
    ///
    /// Selectors: tcp:ADDR:PORT, udp:ADDR:PORT (ADDR is an IPv4 address, [IPv6] or *, PORT
    /// a number or *), unix:PATH (@NAME for abstract), fd:N, or * for every listening or
    /// bound socket. All members of an SO_REUSEPORT group are taken together.
    #[command(verbatim_doc_comment)]
    Exec(ExecArgs),
    /// Move fds out of a process into a command: copy, start CMD, then close them in
    /// the process.
    ///
    /// Like `get`, but once every copy is verified to be the same open file as the
    /// process's fd and CMD has started (exec succeeded), the fds are closed in the
    /// process (its next use of the number fails with EBADF, and the number may be
    /// reused), or with --null, /dev/null is put over them (the number stays taken;
    /// reads see end-of-file, writes are discarded). If CMD cannot be started, nothing
    /// is taken from the process. Closing uses ptrace injection. Signals and exit status
    /// as for `get`. A steal whose close could not follow (a traced process, or seccomp
    /// filters fdgrab cannot read, without --force) is refused before anything is copied
    /// or CMD starts; a number the process reused meanwhile is not closed.
    Steal(StealArgs),
    /// Install a file, or one of fdgrab's own fds, into a running process at number FD.
    ///
    /// Whatever the process had open at FD is replaced atomically (dup3 in the
    /// process, through ptrace injection); FD's close-on-exec flag is kept. The
    /// process, FD (below its open-file limit) and access are checked before the file
    /// is opened, and the file is emptied only right before the dup3: a refused put
    /// changes no file.
    Put(PutArgs),
    /// Point a running process's fd (e.g. 1, its stdout) at a file, reversibly.
    ///
    /// The old fd is first kept alive in the process at a high number; fdgrab prints
    /// the exact `fdgrab redirect --undo PID FD SAVEDFD` command that puts it back.
    /// Everything is checked before the file is opened, and it is emptied only right
    /// before the switch: a refused redirect changes no file.
    Redirect(RedirectArgs),
    /// Run a command under a seccomp supervisor that performs its privileged binds.
    ///
    /// `bind` is trapped with seccomp user notification. A bind to a port below the
    /// socket netns's ip_unprivileged_port_start that the policy allows is performed
    /// by fdgrab on the program's own socket and answered with the exact result;
    /// every other bind is handed back to the kernel untouched. io_uring_setup fails
    /// with ENOSYS (io_uring can bind without seccomp seeing it). Calls made through
    /// another ABI (i386, x32) kill the program. fdgrab forwards every signal that would
    /// end it (INT, TERM, HUP, QUIT, USR1, USR2, ALRM...) and exits with the program's status (127: not found; 126: it cannot
    /// be started, e.g. a failed switch to --user).
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
    /// Move a running program's terminal session onto this terminal (like reptyr).
    ///
    /// Finds the pseudo-terminal PID runs on and the process holding its master (sshd,
    /// tmux, screen, script, a terminal emulator), takes a copy of the master and puts
    /// /dev/null over the holder's fds, then relays between this terminal (in raw mode)
    /// and the session, copying the window size now and on every resize. Every process
    /// on that terminal moves, job control included.
    ///
    /// When nobody holds the master any more (or with --single), PID alone moves: it
    /// gets a new terminal as its controlling terminal and on every fd that was on the
    /// old one; its children and other processes on the old terminal stay behind.
    ///
    /// Type Enter ~ . to detach: the program keeps running (a small `fdgrab-keep`
    /// process holds the session) and `fdgrab attach PID` picks it up again. SIGHUP,
    /// SIGINT, SIGTERM and SIGQUIT to fdgrab detach the same way.
    ///
    /// Exit status: 0 the session ended (no process has the terminal open any more);
    /// 7 detached, the program still runs; 128+N detached on signal N; 2 PID is not on
    /// a pseudo-terminal, is on this one, or cannot be moved alone, or stdin/stdout is
    /// not a terminal in whose foreground fdgrab runs; 4 the master's holder (or PID)
    /// may not be inspected or traced; 5 no such process; 6 already attached by another
    /// fdgrab.
    Attach(AttachArgs),
    /// Print a seccomp profile (OCI/Docker JSON) whose `bind` goes to the agent.
    ///
    /// Starts from --from, or from a built-in profile equivalent to the default
    /// container runtimes apply. `bind` is taken out of every rule that lets it
    /// through (with or without argument, capability, architecture or kernel
    /// conditions, `names` or the old `name` field) and put into SCMP_ACT_NOTIFY
    /// rules with the same conditions; a defaultAction that allows it (ALLOW, LOG)
    /// gets an explicit NOTIFY rule. Simply appending a NOTIFY rule would do nothing:
    /// the profile's own ALLOW for bind would win. Every other rule and field is kept
    /// as it was; listenerPath and listenerMetadata are set. Notes go to stderr. A
    /// profile that never allows bind is refused (exit 2): the agent would widen it.
    Profile(ProfileArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print a man page, or write them all into --dir.
    Man(ManArgs),
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// The processes to list; none: every process fdgrab may read.
    #[arg(value_name = "PID", value_parser = parse_pid, allow_negative_numbers = true)]
    pub pids: Vec<Pid>,
    /// Only these fds (repeat or separate with commas). With one PID, an fd the
    /// process does not have is an error (exit 5).
    #[arg(long = "fd", value_name = "FD", value_parser = parse_fd, value_delimiter = ',')]
    pub fds: Vec<TargetFd>,
    /// Only TCP and UDP sockets whose local or peer port is PORT (lsof -i :PORT).
    // Port 0 names no socket (unbound ones and unconnected peers show 0): a
    // query for it could only ever answer "nobody", so it is refused.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only fds open on PATH: the same device and inode, under any name (fuser PATH).
    /// For a unix socket's name: the sockets bound to it and those accepted on them.
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Only fds on files with no name left (link count 0): deleted files and memfds,
    /// with their sizes (lsof +L1).
    #[arg(long)]
    pub deleted: bool,
    /// Only fds of these types (repeat or separate with commas): file, dir, chr, blk,
    /// fifo, pipe, socket, anon, memfd, symlink, unknown.
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_kind, value_delimiter = ',')]
    pub kinds: Vec<fdgrab::FdKind>,
    /// Only listening sockets: TCP and unix in LISTEN, UDP bound and unconnected (ss -l).
    #[arg(long)]
    pub listen: bool,
    /// Only processes whose effective user is USER (a name, looked up through NSS, or a
    /// number).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Print only the matching pids, sorted and unique, one per line (lsof -t). Exits 1
    /// when none matched.
    #[arg(long = "pids", conflicts_with = "json")]
    pub pids_only: bool,
    /// One JSON document on stdout (schema 2; see docs/inventory.md).
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
    #[command(flatten)]
    pub backend: BackendArg,
    #[command(flatten)]
    pub unpassable: UnpassableArg,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

// `--skip-unpassable`, for commands that pass fds over a unix socket. (A plain comment: clap would take a doc comment on a flattened struct as the about text of every command that flattens it.)
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct UnpassableArg {
    /// Leave out fds the kernel refuses to pass over a unix socket (io_uring
    /// instances; `send`, and `get --backend ptrace`) and hand over the rest, naming
    /// each one left out on stderr. Without it such an fd makes the whole command
    /// fail before anything is taken or sent.
    #[arg(long)]
    pub skip_unpassable: bool,
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
    #[command(flatten)]
    pub backend: BackendArg,
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
    #[command(flatten)]
    pub backend: BackendArg,
    #[command(flatten)]
    pub unpassable: UnpassableArg,
    /// After sending, print one JSON object: pid, fds sent, the backend and method
    /// that took them, and the fds left out with --skip-unpassable.
    #[arg(long)]
    pub json: bool,
}

// `--backend`, shared by every command that takes fds out of a process.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct BackendArg {
    /// How fds are taken: pidfd (pidfd_getfd, Linux 5.6), ptrace (injection: the process
    /// is briefly stopped and sends them itself), or auto (pidfd, falling back to ptrace
    /// only if the kernel lacks pidfd_getfd).
    #[arg(long, default_value = "auto", value_parser = backend_values(), value_name = "BACKEND")]
    pub backend: Backend,
    #[command(flatten)]
    pub force: ForceArg,
}

// `--force`, shared by every command that may inject into a process with ptrace.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ForceArg {
    /// Inject (ptrace) even into a process under seccomp whose filters fdgrab cannot
    /// read (it needs CAP_SYS_ADMIN for that): a call the filter forbids could then kill
    /// the process. Calls a readable filter refuses are never made, --force or not.
    #[arg(long)]
    pub force: bool,
}

impl ForceArg {
    pub fn seccomp(self) -> fdgrab::inject::SeccompPolicy {
        fdgrab::inject::SeccompPolicy::new().force(self.force)
    }
}

/// `--backend`'s values, listed for `--help` and shell completion.
fn backend_values() -> impl clap::builder::TypedValueParser<Value = Backend> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["auto", "pidfd", "ptrace"])
        .try_map(|s| parse_backend(&s))
}

#[derive(Debug, clap::Args)]
pub struct StealArgs {
    /// The process to take fds from.
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
    /// FD or FD:NEWFD, one or more.
    #[arg(required = true, value_parser = parse_fd_map, allow_negative_numbers = true, value_name = "FD[:NEWFD]")]
    pub fds: Vec<FdMap>,
    /// Put /dev/null over the fds in the process instead of closing them.
    #[arg(long)]
    pub null: bool,
    /// Signal the process once its fds are taken (e.g. TERM). A server that polls a
    /// stolen listening socket with poll/select spins on it afterwards; see
    /// docs/grab.md for which server shapes are safe without it.
    #[arg(long, value_name = "SIG", value_parser = parse_signal)]
    pub signal_old: Option<i32>,
    #[command(flatten)]
    pub backend: BackendArg,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// A process on the terminal session to move.
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
    /// The escape character typed after Enter to detach (~ . ) or send itself (~ ~);
    /// `^]` style for a control key; `none` disables it.
    #[arg(short, long, value_name = "CHAR", value_parser = parse_escape)]
    pub escape: Option<fdgrab::pty::Escape>,
    /// Move PID alone onto a new terminal instead of taking the session (the default
    /// when nobody holds the master any more). Its children and every other process
    /// on the old terminal stay there.
    #[arg(long)]
    pub single: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["file", "our_fd"])))]
pub struct PutArgs {
    /// The process to install the fd into.
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
    /// The number it gets in the process.
    #[arg(value_parser = parse_fd, allow_negative_numbers = true)]
    pub fd: TargetFd,
    /// Open this file (default: write-only, created, truncated).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Open the file for appending instead of truncating it.
    #[arg(long, requires = "file", conflicts_with_all = ["read", "rw"])]
    pub append: bool,
    /// Open the file read-only.
    #[arg(long, requires = "file", conflicts_with = "rw")]
    pub read: bool,
    /// Open the file read-write (created if missing, not truncated).
    #[arg(long, requires = "file")]
    pub rw: bool,
    /// Install fdgrab's own fd N (inherited from the shell, e.g. `--fd 3 3>log`).
    #[arg(long = "fd", value_name = "N", value_parser = parse_fd, allow_negative_numbers = true)]
    pub our_fd: Option<TargetFd>,
    /// Print one JSON object describing what was done.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub force: ForceArg,
}

#[derive(Debug, clap::Args)]
pub struct RedirectArgs {
    /// Undo an earlier redirect: the third argument is then the saved fd it printed.
    /// Only a saved fd that redirect recorded for this process and FD is accepted
    /// (else exit 2, nothing changed).
    #[arg(long)]
    pub undo: bool,
    /// The process.
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
    /// Its fd to redirect (1 for stdout).
    #[arg(value_parser = parse_fd, allow_negative_numbers = true)]
    pub fd: TargetFd,
    /// The file to write to (created; truncated unless --append), or with --undo the
    /// saved fd number.
    #[arg(value_name = "PATH|SAVEDFD")]
    pub target: OsString,
    /// Append to the file instead of truncating it.
    #[arg(long, conflicts_with = "undo")]
    pub append: bool,
    /// Print one JSON object (with the undo command as an argv array).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub force: ForceArg,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The running server to take sockets from.
    #[arg(value_parser = parse_pid, allow_negative_numbers = true)]
    pub pid: Pid,
    /// Which sockets to hand over, in the order the new server gets them (fd 3, 4, ...).
    #[arg(required = true, value_parser = parse_selector, value_name = "SELECTOR")]
    pub selectors: Vec<Selector>,
    #[command(flatten)]
    pub backend: BackendArg,
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
    /// With --via bind or both, a small supervisor process stays behind for as long as
    /// the new server lives; its pid is printed on a second line.
    #[arg(long)]
    pub detach: bool,
    /// How the new server receives the sockets: `env` passes them as fd 3, 4, ... with
    /// LISTEN_FDS (systemd socket activation); `bind` runs it under a seccomp supervisor
    /// that answers its own bind() of a taken address by installing the taken socket at
    /// that fd number (for servers that know nothing of LISTEN_FDS); `both` does both.
    /// Under bind, the server is ready once it has called listen() on every taken
    /// socket (or sent READY=1, or --ready-timeout passed, after it bound them all).
    #[arg(long, value_enum, default_value = "env", value_name = "MODE")]
    pub via: Via,
    /// The new server, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

/// How `exec` passes the sockets to the new server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// LISTEN_FDS (systemd socket activation).
    Env,
    /// The server's own bind() receives the taken socket.
    Bind,
    /// Both at once.
    Both,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run the program as USER (and GROUP): a name or a number, looked up through NSS
    /// (nsswitch.conf), with the user's supplementary groups. fdgrab itself keeps root,
    /// but only the capabilities it needs.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    #[command(flatten)]
    pub bind_policy: BindPolicyArgs,
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
    /// The page to print: a command (ls, get, ...), policy (fdgrab-policy(5), the
    /// --allow-bind and --policy format) or json (fdgrab-json(5), the JSON schemas).
    /// Default: fdgrab(1).
    #[arg(value_name = "PAGE", conflicts_with = "dir")]
    pub page: Option<String>,
    /// Write every page into this directory: fdgrab.1, one fdgrab-COMMAND.1 per
    /// command, fdgrab-policy.5 and fdgrab-json.5 (into the sibling man5 when DIR is
    /// a man1 directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The unix socket runtimes connect to (created mode 0600, owned by root). A stale
    /// socket file is replaced; one a live agent listens on is an error.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// For the agent, the policy is the upper bound that containers can only narrow,
    /// and audit lines carry the container id and bundle.
    #[command(flatten)]
    pub bind_policy: BindPolicyArgs,
    /// The most pods this node runs (the kubelet's maxPods). It bounds what a pod can
    /// leave behind in the agent: a reader of a container's memory stuck for good in
    /// a FUSE read that no kill ends. Each pod may leave 4; up to 4 per pod this
    /// allows, one pod's stuck readers never deny a reader to another, and once 5 per
    /// pod this allows are stuck (each pod counted up to its 4), or 10 counted in
    /// full, the agent starts no reader.
    #[arg(long, value_name = "N", allow_negative_numbers = true,
          default_value_t = fdgrab::supervise::agent::DEFAULT_MAX_PODS as u32,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_pods: u32,
}

#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// The profile to start from (a file in the OCI/Docker seccomp JSON format, e.g.
    /// /usr/share/containers/seccomp.json). Default: the built-in runtime default.
    #[arg(long, value_name = "PROFILE.json")]
    pub from: Option<PathBuf>,
    /// The agent's socket, written as `listenerPath`.
    #[arg(long, value_name = "PATH", default_value = fdgrab::seccomp::profile::DEFAULT_LISTENER_PATH)]
    pub socket: PathBuf,
    /// `listenerMetadata` for the agent, e.g. `allow-bind=tcp:80,tcp:443` (narrows the
    /// agent's policy for containers using this profile). Default: the input's, if any.
    /// Checked as the agent reads it: one it could not read is refused (exit 2).
    #[arg(long, value_name = "TEXT")]
    pub metadata: Option<String>,
    /// Write the profile to FILE (through a temporary file renamed into place, so
    /// that a runtime never reads half a profile) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

// The bind policy and audit options, shared by `run` and `agent`.
#[derive(Debug, clap::Args)]
pub struct BindPolicyArgs {
    /// Allow privileged binds matching SPEC = [tcp|udp:]PORT[-PORT][@ADDR]. Repeatable.
    #[arg(long = "allow-bind", value_name = "SPEC")]
    pub allow_bind: Vec<String>,
    /// A TOML policy file (format in README); its rules are added to --allow-bind.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Append one JSON line per decision to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE|-")]
    pub audit: Option<PathBuf>,
}
