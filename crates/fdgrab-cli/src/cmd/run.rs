//! `fdgrab run`: run a program under the bind supervisor.
//!
//! The child drops to `--user`, sets its parent-death signal, sets no_new_privs,
//! installs the filter (so the filter is installed by the unprivileged program
//! itself) and passes the listener fd back over a socketpair before exec. The parent
//! keeps only the capabilities the supervisor needs and serves the listener until
//! the program exits, forwarding SIGINT, SIGTERM and SIGHUP.

use crate::cli::{BindPolicyArgs, RunArgs};
use crate::exit::UsageError;
use crate::spawn::passthrough;
use anyhow::{anyhow, Context, Result};
use fdgrab::seccomp::{self, InstallError, InstallFlags};
use fdgrab::signalfd::{SavedMask, SignalFd};
use fdgrab::supervise::{AuditLabels, AuditSink, Policy, Supervisor, SupervisorEvent};
use fdgrab::PidFd;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Gid, Pid, Uid};
use std::ffi::OsString;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;

pub fn run(a: RunArgs) -> Result<ExitCode> {
    let policy = load_policy(&a.bind_policy.allow_bind, a.bind_policy.policy.as_deref())?;
    let audit = open_audit(&a.bind_policy)?;
    let user = a.user.as_deref().map(resolve_user).transpose()?;
    let (prog, rest) = a
        .cmd
        .split_first()
        .ok_or_else(|| UsageError("no command given after --".into()))?;
    let filter = seccomp::bind_supervisor_filter()
        .context("building the seccomp filter")?
        .raw();
    tracing::info!(policy = %policy, "starting supervised program");

    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .context("socketpair for the listener fd")?;
    // Blocked and read from a signalfd so that they can be forwarded; the child puts
    // the old mask back before exec.
    let signals = SignalFd::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        .context("blocking SIGINT/SIGTERM/SIGHUP for forwarding")?;

    let setup = ChildSetup {
        user: user.clone(),
        parent: rustix::process::getpid(),
        pdeathsig: !a.keep_running_on_supervisor_exit,
        filter,
        sock: theirs.as_raw_fd(),
        signal_mask: signals.saved_mask(),
    };
    let mut cmd = Command::new(prog);
    cmd.args(rest);
    if let Some(u) = &user {
        // Programs look at these to find their home and name.
        cmd.env("USER", &u.name)
            .env("LOGNAME", &u.name)
            .env("HOME", &u.home);
    }
    // SAFETY: the closure runs in the forked child before exec. The parent is
    // single-threaded here, and the closure only makes system calls on data prepared
    // before the fork (the filter, the groups), with no allocation.
    unsafe {
        cmd.pre_exec(move || setup.apply());
    }
    let spawned = cmd.spawn();
    drop(theirs);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => return Err(setup_error(&ours, e, prog)),
    };
    let pidfd = PidFd::from_child(&child)?;
    let listener =
        receive_listener(&ours).context("receiving the seccomp listener from the program")?;
    drop(ours);

    fdgrab::supervise::pidfd_cache::FdBudget::raise_nofile(); // after the spawn: the child keeps its limit
    let mut sup = Supervisor::new(audit)?;
    sup.add_listener(listener, Arc::new(policy), AuditLabels::default())?;
    // The supervisor's set (docs/supervisor.md), plus CAP_KILL to forward signals.
    if let Err(e) = fdgrab::supervise::capabilities::restrict(rustix::thread::CapabilitySet::KILL) {
        tracing::debug!(error = %e, "capset failed; keeping capabilities");
    }

    // One epoll_wait per round: the signalfd and the pidfd wait with the listener.
    const SIGNALS: u64 = 1;
    const EXITED: u64 = 2;
    sup.watch(signals.as_fd(), SIGNALS)?;
    sup.watch(pidfd.as_fd(), EXITED)?;
    loop {
        // A timeout so that the supervisor's idle maintenance runs.
        for ev in sup.dispatch(Some(std::time::Duration::from_secs(1)))? {
            match ev {
                SupervisorEvent::Ready(SIGNALS) => {
                    while let Some(sig) = signals.read()? {
                        tracing::debug!(sig, pid = pidfd.pid(), "forwarding signal");
                        if let Err(e) = pidfd.send_signal(sig) {
                            tracing::debug!(error = %e, "forwarding a signal to an exited program");
                        }
                    }
                }
                SupervisorEvent::Ready(EXITED) => {
                    let status = pidfd.wait_child()?;
                    tracing::info!(?status, "program exited");
                    return Ok(passthrough(status));
                }
                _ => {}
            }
        }
    }
}

/// The audit sink named by `--audit`: none, stdout for `-`, or an appended file.
pub(crate) fn open_audit(a: &BindPolicyArgs) -> Result<AuditSink> {
    Ok(match a.audit.as_deref() {
        None => AuditSink::none(),
        Some(p) if p == Path::new("-") => AuditSink::stdout(),
        Some(p) => AuditSink::from_path(p)
            .with_context(|| format!("cannot open audit file {}", p.display()))?,
    })
}

pub(crate) fn load_policy(specs: &[String], file: Option<&Path>) -> Result<Policy> {
    let mut policy = Policy::from_specs(specs).map_err(|e| UsageError(e.to_string()))?;
    if let Some(path) = file {
        let from_file =
            Policy::from_file(path).map_err(|e| UsageError(format!("policy file {e}")))?;
        policy = policy.merge(from_file);
    }
    Ok(policy)
}

/// The user the program runs as.
#[derive(Clone, Debug)]
struct User {
    name: String,
    home: String,
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// `USER[:GROUP]`, each a name from /etc/passwd and /etc/group or a number.
fn resolve_user(spec: &str) -> Result<User> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(UsageError(format!("--user '{spec}': empty user name")).into());
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && (f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user)));
    let (name, uid, mut gid, home) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => {
            let uid: u32 = f[2]
                .parse()
                .map_err(|_| UsageError(format!("/etc/passwd: bad uid for {}", f[0])))?;
            let gid: u32 = f[3]
                .parse()
                .map_err(|_| UsageError(format!("/etc/passwd: bad gid for {}", f[0])))?;
            (f[0].to_string(), uid, gid, f[5].to_string())
        }
        (None, Ok(n)) => (n.to_string(), n, n, "/".to_string()),
        (None, Err(_)) => {
            return Err(
                UsageError(format!("--user '{spec}': no user '{user}' in /etc/passwd")).into(),
            )
        }
    };
    if let Some(g) = group {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => groups
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    UsageError(format!("--user '{spec}': no group '{g}' in /etc/group"))
                })?,
        };
    }
    let mut supplementary = vec![gid];
    for f in groups.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
        if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
            if let Ok(g) = f[2].parse::<u32>() {
                if !supplementary.contains(&g) {
                    supplementary.push(g);
                }
            }
        }
    }
    Ok(User {
        name,
        home,
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        groups: supplementary.into_iter().map(Gid::from_raw).collect(),
    })
}

/// Which step of the child's setup failed (sent to the parent as one byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Step {
    Groups = 1,
    Gid,
    Uid,
    DeathSignal,
    NoNewPrivs,
    Filter,
    SendListener,
}

impl Step {
    fn from_u8(b: u8) -> Option<Step> {
        [
            Step::Groups,
            Step::Gid,
            Step::Uid,
            Step::DeathSignal,
            Step::NoNewPrivs,
            Step::Filter,
            Step::SendListener,
        ]
        .into_iter()
        .find(|s| *s as u8 == b)
    }

    fn what(self) -> &'static str {
        match self {
            Step::Groups => "setting the supplementary groups (setgroups)",
            Step::Gid => "switching group (setgid)",
            Step::Uid => "switching user (setuid)",
            Step::DeathSignal => "setting the parent-death signal",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Filter => "installing the seccomp filter",
            Step::SendListener => "passing the listener fd to fdgrab",
        }
    }
}

/// What the child does between fork and exec. Everything is prepared before the
/// fork; `apply` only makes system calls.
struct ChildSetup {
    user: Option<User>,
    parent: Pid,
    pdeathsig: bool,
    filter: Vec<libc::sock_filter>,
    sock: RawFd,
    signal_mask: SavedMask,
}

impl ChildSetup {
    fn apply(&self) -> std::io::Result<()> {
        // SAFETY: `sock` is the child end of the socketpair, open in the child until
        // exec (it is close-on-exec); the borrow ends before exec.
        let sock = unsafe { BorrowedFd::borrow_raw(self.sock) };
        let check = |step: Step, r: Result<(), Errno>| -> std::io::Result<()> {
            r.map_err(|e| {
                let mut msg = [0u8; 6];
                msg[0] = b'E';
                msg[1] = step as u8;
                msg[2..].copy_from_slice(&e.raw_os_error().to_le_bytes());
                let _ = rustix::net::send(sock, &msg, SendFlags::NOSIGNAL);
                std::io::Error::from(e)
            })
        };
        // The parent blocks these to forward them; the program must get them.
        self.signal_mask.restore();
        if let Some(u) = &self.user {
            // One thread after fork, so the per-thread credential calls cover the process.
            check(Step::Groups, rustix::thread::set_thread_groups(&u.groups))?;
            check(Step::Gid, rustix::thread::set_thread_gid(u.gid))?;
            check(Step::Uid, rustix::thread::set_thread_uid(u.uid))?;
        }
        if self.pdeathsig {
            // After the uid change: changing credentials clears the death signal.
            check(
                Step::DeathSignal,
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                )),
            )?;
            // fdgrab may have died before the signal was armed.
            if rustix::process::getppid() != Some(self.parent) {
                check(Step::DeathSignal, Err(Errno::SRCH))?;
            }
        }
        check(Step::NoNewPrivs, seccomp::set_no_new_privs())?;
        let listener = match seccomp::install_filter(&self.filter, InstallFlags::supervised()) {
            Ok(Some(l)) => l,
            Ok(None) => return check(Step::Filter, Err(Errno::INVAL)),
            Err(e) => return check(Step::Filter, Err(e.errno())),
        };
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [listener.as_fd()];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return check(Step::SendListener, Err(Errno::NOBUFS));
        }
        let sent = rustix::net::sendmsg(
            sock,
            &[IoSlice::new(b"L")],
            &mut control,
            SendFlags::NOSIGNAL,
        );
        check(Step::SendListener, sent.map(|_| ()))
        // `listener` closes here: the program keeps no copy of its own listener.
    }
}

fn setup_error(ours: &OwnedFd, spawn_err: std::io::Error, prog: &OsString) -> anyhow::Error {
    let mut buf = [0u8; 8];
    let got = rustix::net::recv(ours, &mut buf, rustix::net::RecvFlags::DONTWAIT)
        .map(|(n, _)| n)
        .unwrap_or(0);
    if got == 6 && buf[0] == b'E' {
        let errno = Errno::from_raw_os_error(i32::from_le_bytes([buf[2], buf[3], buf[4], buf[5]]));
        if let Some(step) = Step::from_u8(buf[1]) {
            let io = std::io::Error::from(errno);
            if step == Step::Filter {
                let ie = InstallError::from_errno(errno);
                let hint = match ie {
                    InstallError::ListenerExists => {
                        "; fdgrab run cannot run inside another fdgrab run or under another seccomp \
                         notify supervisor"
                    }
                    _ => "",
                };
                return anyhow!("{}: {ie}{hint}", step.what());
            }
            return anyhow!(io).context(format!(
                "{} for '{}'",
                step.what(),
                prog.to_string_lossy()
            ));
        }
    }
    anyhow!(spawn_err).context(format!("cannot run '{}'", prog.to_string_lossy()))
}

fn receive_listener(ours: &OwnedFd) -> Result<OwnedFd> {
    let mut buf = [0u8; 8];
    let got = fdgrab::passfd::recv_fds(ours, &mut buf, 1)?;
    match (got.len, buf[0], got.fds.into_iter().next()) {
        (1, b'L', Some(fd)) => Ok(fd),
        _ => Err(anyhow!("the program did not pass its listener fd")),
    }
}
