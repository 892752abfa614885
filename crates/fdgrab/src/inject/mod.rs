//! The ptrace injection engine: making another process run system calls for us.
//!
//! Before `pidfd_getfd(2)` (Linux 5.6) the only way to take a descriptor out of a
//! process was to make it send the descriptor itself. A [`Session`] stops one thread
//! of the target with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, runs syscalls in it, and
//! puts everything back. On top of it this module offers:
//!
//! - taking copies of descriptors (the `ptrace` backend of [`crate::grab`]): the
//!   target connects to a unix socket of ours and sends them with `SCM_RIGHTS`;
//! - the reverse, [`put`]: we send one of our descriptors and the target `dup3`s it
//!   over a number of its own;
//! - [`close_in_target`], the second half of a steal;
//! - [`redirect`]/[`undo_redirect`]: point a descriptor elsewhere and back.
//!
//! Injected calls run as the target: with its credentials, its seccomp filter, its
//! mount and network namespaces. A refusal there comes back as an error naming the
//! call, with the target restored.

mod arch;
pub(crate) mod ptrace;
mod rendezvous;
mod seccomp;
mod session;
mod syscalls;
mod tty;

pub use seccomp::SeccompPolicy;
pub use session::Session;
pub use tty::{take_terminal, CttyChange};

use seccomp::{k, Planned, UNKNOWN};

use crate::error::{Error, Result};
use crate::passfd::{self, SCM_MAX_FD};
use crate::pidfd::PidFd;
use crate::{procfs, TargetFd};
use rendezvous::{Listener, Mailbox};
use session::{remote_error, Staged};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// What a steal leaves behind at the target's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloseMode {
    /// `close(2)`: the number is freed (and may be reused by the target's next open);
    /// the target's next use of it fails with `EBADF`. A thread already blocked on
    /// the fd is not woken.
    Close,
    /// `dup2` /dev/null over it: the number stays taken, reads see end-of-file and
    /// writes are discarded.
    DevNull,
}

/// A connection between fdgrab and the target, set up inside a session.
#[derive(Debug)]
struct Channel {
    /// The target's end (a descriptor number in the target).
    remote: i32,
    /// Ours.
    conn: OwnedFd,
}

/// `struct msghdr` for LP64 Linux, as the target's kernel reads it; `name` is the
/// address and length of a `msg_name` (0, 0 for none).
fn msghdr(name: (u64, u64), iov: u64, control: u64, controllen: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(56);
    m.extend_from_slice(&name.0.to_ne_bytes()); // msg_name
    m.extend_from_slice(&name.1.to_ne_bytes()); // msg_namelen + padding
    m.extend_from_slice(&iov.to_ne_bytes());
    m.extend_from_slice(&1u64.to_ne_bytes()); // msg_iovlen
    m.extend_from_slice(&control.to_ne_bytes());
    m.extend_from_slice(&controllen.to_ne_bytes());
    m.extend_from_slice(&0u64.to_ne_bytes()); // msg_flags + padding
    m
}

const MSGHDR_CONTROLLEN: u64 = 40;
const MSGHDR_FLAGS: u64 = 48;
const CMSG_HDR: usize = 16;

fn iovec(base: u64, len: u64) -> Vec<u8> {
    [base.to_ne_bytes(), len.to_ne_bytes()].concat()
}

fn cmsg_space(nfds: usize) -> usize {
    (CMSG_HDR + 4 * nfds + 7) & !7
}

/// The type of the target's end of the channel. Non-blocking because its
/// `connect` must never wait: anyone in the network namespace can connect to our
/// abstract name (it is listed in /proc/net/unix) and fill the listener's backlog,
/// and a blocking `connect` would then hold the target, with its signals blocked,
/// and fdgrab for as long as they like. Full, it fails with EAGAIN instead; the
/// `recvmsg` that follows uses MSG_DONTWAIT anyway.
const CHANNEL_SOCKET_TYPE: i32 = libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;

/// The calls [`open_channel`] makes, and the `close` of its socket at the end.
fn channel_calls(plan: &mut Vec<Planned>) {
    let ty = CHANNEL_SOCKET_TYPE as u64;
    plan.push(Planned::new(
        libc::SYS_socket,
        &[k(libc::AF_UNIX as u64), k(ty), k(0)],
    ));
    plan.push(Planned::new(
        libc::SYS_connect,
        &[UNKNOWN, UNKNOWN, UNKNOWN],
    ));
    plan.push(Planned::new(libc::SYS_close, &[UNKNOWN]));
}

/// The calls [`receive_from_us`] and then [`install`] at `at` make.
fn receive_and_install_calls(plan: &mut Vec<Planned>, at: TargetFd) {
    channel_calls(plan);
    let flags = (libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) as u64;
    plan.push(Planned::new(
        libc::SYS_recvmsg,
        &[UNKNOWN, UNKNOWN, k(flags)],
    ));
    install_calls(plan, UNKNOWN, at);
}

/// The calls [`install`] of `from` at `at` may make.
fn install_calls(plan: &mut Vec<Planned>, from: Option<u64>, at: TargetFd) {
    let at = at.as_raw() as u64;
    plan.push(get_flags_call(at));
    for cloexec in [0, libc::O_CLOEXEC as u64] {
        plan.push(Planned::new(libc::SYS_dup3, &[from, k(at), k(cloexec)]));
    }
    for cloexec in [0, libc::FD_CLOEXEC as u64] {
        plan.push(Planned::new(
            libc::SYS_fcntl,
            &[k(at), k(libc::F_SETFD as u64), k(cloexec)],
        ));
    }
    plan.push(Planned::new(libc::SYS_close, &[from]));
}

fn get_flags_call(fd: u64) -> Planned {
    Planned::new(libc::SYS_fcntl, &[k(fd), k(libc::F_GETFD as u64)])
}

/// Opens the channel: the target makes a unix stream socket and connects to ours.
fn open_channel(s: &mut Session<'_>) -> Result<Channel> {
    let pid = s.pid();
    let listener = Listener::new(pid, s.tid())?;
    let ty = CHANNEL_SOCKET_TYPE as u64;
    let fd = s.syscall(libc::SYS_socket, &[libc::AF_UNIX as u64, ty, 0])?;
    if fd < 0 {
        return Err(remote_error(pid, None, "socket(AF_UNIX) (injected)", fd));
    }
    let fd = fd as i32;
    s.track_remote_fd(fd);
    let addr = s.push_bytes(listener.sockaddr())?;
    let r = s.syscall(
        libc::SYS_connect,
        &[fd as u64, addr, listener.sockaddr().len() as u64],
    )?;
    if r < 0 {
        return Err(remote_error(
            pid,
            None,
            "connect to fdgrab's rendezvous socket (injected)",
            r,
        ));
    }
    let conn = listener.accept_from(pid)?;
    s.reset_scratch();
    Ok(Channel { remote: fd, conn })
}

/// The calls [`grab_fds`] makes: a datagram socket, `sendmsg`s to our mailbox, and
/// the `close` of the socket at the end.
fn mailbox_calls(plan: &mut Vec<Planned>) {
    plan.push(Planned::new(libc::SYS_socket, &MAILBOX_SOCKET.map(k)));
    plan.push(Planned::new(
        libc::SYS_sendmsg,
        &[UNKNOWN, UNKNOWN, k(SEND_FLAGS)],
    ));
    plan.push(Planned::new(libc::SYS_close, &[UNKNOWN]));
}

/// The arguments of the `socket` the target sends to our mailbox from: an
/// unconnected datagram socket.
const MAILBOX_SOCKET: [u64; 3] = [
    libc::AF_UNIX as u64,
    (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64,
    0,
];

/// The flags of the target's `sendmsg` to our mailbox.
const SEND_FLAGS: u64 = (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u64;

const MAILBOX_SOCKET_OP: &str = "socket(AF_UNIX, SOCK_DGRAM) (injected)";

/// The socket the target sends to our mailbox from.
fn open_mailbox_socket(s: &mut Session<'_>) -> Result<i32> {
    let fd = s.syscall(libc::SYS_socket, &MAILBOX_SOCKET)?;
    if fd < 0 {
        return Err(remote_error(s.pid(), None, MAILBOX_SOCKET_OP, fd));
    }
    s.track_remote_fd(fd as i32);
    Ok(fd as i32)
}

/// Which of `fds` the target does not have, using `fcntl(F_GETFD)` in the target.
fn first_missing(s: &mut Session<'_>, fds: &[TargetFd]) -> Result<Option<TargetFd>> {
    for &fd in fds {
        if fd_flags(s, fd)?.is_none() {
            return Ok(Some(fd));
        }
    }
    Ok(None)
}

/// The target's `FD_*` flags of `fd`, or `None` if it has no such fd.
fn fd_flags(s: &mut Session<'_>, fd: TargetFd) -> Result<Option<i32>> {
    let r = s.syscall(libc::SYS_fcntl, &[fd.as_raw() as u64, libc::F_GETFD as u64])?;
    match r {
        r if r >= 0 => Ok(Some(r as i32)),
        r if r == -(libc::EBADF as i64) => Ok(None),
        r => Err(remote_error(
            s.pid(),
            Some(fd),
            "fcntl(F_GETFD) (injected)",
            r,
        )),
    }
}

/// Lays out the message that carries `fds` (at most [`SCM_MAX_FD`]) to our
/// mailbox; returns the address its msghdr will have in the target.
fn stage_rights(st: &mut Staged, mailbox: &Mailbox, fds: &[TargetFd]) -> u64 {
    let name = st.put(mailbox.sockaddr());
    let byte = st.put(b"F");
    let iov = st.put(&iovec(byte, 1));
    let mut control = Vec::with_capacity(cmsg_space(fds.len()));
    control.extend_from_slice(&((CMSG_HDR + 4 * fds.len()) as u64).to_ne_bytes());
    control.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
    control.extend_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
    for fd in fds {
        control.extend_from_slice(&fd.as_raw().to_ne_bytes());
    }
    control.resize(cmsg_space(fds.len()), 0);
    let ctl = st.put(&control);
    let name = (name, mailbox.sockaddr().len() as u64);
    st.put(&msghdr(name, iov, ctl, control.len() as u64))
}

/// What a `sendmsg` of `fds` to our mailbox that returned `r` in the target means:
/// `EBADF` names the first fd the target does not have, `EINVAL` an io_uring fd.
fn check_sent(s: &mut Session<'_>, fds: &[TargetFd], r: i64) -> Result<()> {
    let pid = s.pid();
    if r == -(libc::EBADF as i64) {
        if let Some(fd) = first_missing(s, fds)? {
            return Err(Error::NoSuchFd { pid, fd });
        }
    }
    if r == -(libc::EINVAL as i64) {
        if let Some(fd) = fds
            .iter()
            .copied()
            .find(|&fd| procfs::is_io_uring(pid, s.tid(), fd.as_raw()))
        {
            return Err(Error::WrongKind {
                pid,
                fd,
                reason: "it is an io_uring instance, and the kernel refuses to pass io_uring fds with SCM_RIGHTS (sendmsg gave EINVAL), so it cannot be taken by ptrace injection".into(),
            });
        }
    }
    if r < 0 {
        return Err(remote_error(
            pid,
            None,
            "sendmsg(SCM_RIGHTS) to fdgrab (injected)",
            r,
        ));
    }
    Ok(())
}

/// Takes the message the target's `sendmsg` of `fds` queued in our mailbox.
fn receive(mailbox: &Mailbox, pid: crate::Pid, fds: &[TargetFd]) -> Result<Vec<OwnedFd>> {
    let got = mailbox
        .take_from(pid, fds.len())
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => Error::TooManyFiles { pid, fd: fds[0] },
            _ => Error::Io {
                op: "receiving fds from the target",
                pid,
                fd: None,
                source: e,
            },
        })?;
    if got.len() != fds.len() {
        return Err(Error::io(
            "receiving fds from the target (fewer arrived than were sent; is fdgrab's fd limit too low?)",
            pid,
            None,
            rustix::io::Errno::MFILE,
        ));
    }
    Ok(got)
}

/// Makes the target send copies of `fds` to our mailbox from its socket `remote`, at
/// most 253 per message.
fn send_to_us(
    s: &mut Session<'_>,
    mailbox: &Mailbox,
    remote: i32,
    fds: &[TargetFd],
) -> Result<Vec<OwnedFd>> {
    let pid = s.pid();
    let mut out = Vec::with_capacity(fds.len());
    for chunk in fds.chunks(SCM_MAX_FD) {
        if s.termination_requested() {
            return Err(interrupted(pid));
        }
        s.reset_scratch();
        let mut st = s.stage()?;
        let msg = stage_rights(&mut st, mailbox, chunk);
        s.push_staged(st)?;
        let r = s.syscall(libc::SYS_sendmsg, &[remote as u64, msg, SEND_FLAGS])?;
        check_sent(s, chunk, r)?;
        out.extend(receive(mailbox, pid, chunk)?);
    }
    Ok(out)
}

fn interrupted(pid: crate::Pid) -> Error {
    Error::io(
        "taking fds (interrupted by a termination signal)",
        pid,
        None,
        rustix::io::Errno::INTR,
    )
}

/// Takes copies of `fds` (at most one message's) with one routine in the target
/// (see `arch::send_routine`): it makes the socket, sends from it and closes it
/// without a stop in between. `Ok(None)`, with nothing done in the target, where
/// the routine may not run (see [`Session::routine_allowed`]); the caller then makes
/// the same calls one by one. The results are read as the per-call way reads them.
#[cfg(target_arch = "x86_64")]
fn send_in_one_go(
    s: &mut Session<'_>,
    mailbox: &Mailbox,
    fds: &[TargetFd],
) -> Result<Option<Vec<OwnedFd>>> {
    use arch::send_routine::{CALLS, CODE, END};
    use session::RoutineEnd;
    let pid = s.pid();
    if fds.len() > SCM_MAX_FD {
        return Ok(None);
    }
    if s.termination_requested() {
        return Err(interrupted(pid));
    }
    s.reset_scratch();
    let mut st = s.stage()?;
    let at = st.put(&CODE);
    let msg = stage_rights(&mut st, mailbox, fds);
    let calls = [
        (
            Planned::new(libc::SYS_socket, &MAILBOX_SOCKET.map(k)),
            at + CALLS[0],
        ),
        (
            Planned::new(libc::SYS_sendmsg, &[UNKNOWN, k(msg), k(SEND_FLAGS)]),
            at + CALLS[1],
        ),
        // The routine leaves sendmsg's message and flags in the second and third
        // argument registers: a filter sees them with `close` too.
        (
            Planned::new(libc::SYS_close, &[UNKNOWN, k(msg), k(SEND_FLAGS)]),
            at + CALLS[2],
        ),
    ];
    if !s.routine_allowed(&calls) {
        tracing::debug!(
            pid,
            "the send routine may not run here; injecting call by call"
        );
        return Ok(None);
    }
    s.push_staged(st)?;
    let (regs, end) = s.run_routine(
        |saved| saved.for_send_routine(at, MAILBOX_SOCKET, msg, SEND_FLAGS),
        at + END,
    )?;
    let done = regs.send_progress(at, end == RoutineEnd::Forced(libc::SIGSYS));
    tracing::trace!(pid, ?done, ?end, "send routine");
    let why = match end {
        RoutineEnd::Trap => None,
        RoutineEnd::Forced(sig) => Some((
            "running the injected send routine (it forced a signal, which was not delivered)",
            format!("signal {sig}"),
        )),
        RoutineEnd::GivenUp => Some((
            "running the injected send routine (it did not end; stopped there and undone)",
            format!(
                "still running after {} s",
                session::ROUTINE_TIMEOUT.as_secs()
            ),
        )),
    };
    if let Some((op, what)) = why {
        if let Some(fd) = done.open_fd {
            s.track_remote_fd(fd);
        }
        return Err(Error::Io {
            op,
            pid,
            fd: None,
            source: std::io::Error::other(format!("{what} at {:#x}", regs.instruction_pointer())),
        });
    }
    let Some(sent) = done.sendmsg else {
        return Err(remote_error(pid, None, MAILBOX_SOCKET_OP, done.last));
    };
    check_sent(s, fds, sent)?;
    let got = receive(mailbox, pid, fds)?;
    if done.last < 0 && done.last != -(libc::EINTR as i64) {
        return Err(remote_error(pid, None, "close (injected)", done.last));
    }
    Ok(Some(got))
}

#[cfg(not(target_arch = "x86_64"))]
fn send_in_one_go(
    _: &mut Session<'_>,
    _: &Mailbox,
    _: &[TargetFd],
) -> Result<Option<Vec<OwnedFd>>> {
    Ok(None)
}

/// Sends `ours` to the target, which receives it at some free number (close-on-exec)
/// that is returned; the session closes it at the end unless the caller keeps it.
fn receive_from_us(s: &mut Session<'_>, ch: &Channel, ours: BorrowedFd<'_>) -> Result<i32> {
    let pid = s.pid();
    passfd::send_fds(&ch.conn, b"P", &[ours]).map_err(|e| Error::Io {
        op: "sending the fd to the target",
        pid,
        fd: None,
        source: e,
    })?;
    s.reset_scratch();
    let mut st = s.stage()?;
    let byte = st.put(&[0u8]);
    let iov = st.put(&iovec(byte, 1));
    let space = cmsg_space(1);
    let ctl = st.put(&vec![0u8; space]);
    let msg = st.put(&msghdr((0, 0), iov, ctl, space as u64));
    s.push_staged(st)?;
    let flags = (libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) as u64;
    let r = s.syscall(libc::SYS_recvmsg, &[ch.remote as u64, msg, flags])?;
    if r < 0 {
        return Err(remote_error(
            pid,
            None,
            "recvmsg(SCM_RIGHTS) from fdgrab (injected)",
            r,
        ));
    }
    let mut hdr = [0u8; 56];
    s.read_bytes(msg, &mut hdr)?;
    let controllen = u64_at(&hdr, MSGHDR_CONTROLLEN as usize);
    let msg_flags = u32_at(&hdr, MSGHDR_FLAGS as usize) as i32;
    let mut control = vec![0u8; space];
    s.read_bytes(ctl, &mut control)?;
    if msg_flags & libc::MSG_CTRUNC != 0 {
        // The kernel truncates the SCM_RIGHTS data when the receiver cannot install
        // the fd: its table is full (the socket took the last free number).
        return Err(remote_error(
            pid,
            None,
            "recvmsg(SCM_RIGHTS) from fdgrab (injected)",
            -(libc::EMFILE as i64),
        ));
    }
    let ok = controllen as usize >= CMSG_HDR + 4
        && u64_at(&control, 0) as usize == CMSG_HDR + 4
        && u32_at(&control, 8) as i32 == libc::SOL_SOCKET
        && u32_at(&control, 12) as i32 == libc::SCM_RIGHTS;
    if !ok {
        return Err(Error::io(
            "the target received no fd (its recvmsg returned no SCM_RIGHTS)",
            pid,
            None,
            rustix::io::Errno::PROTO,
        ));
    }
    let fd = u32_at(&control, CMSG_HDR) as i32;
    s.track_remote_fd(fd);
    Ok(fd)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

/// Installs the target's `from` at `at` with `dup3`, atomically replacing whatever
/// was there and keeping its close-on-exec flag. `from` stays open.
fn install(s: &mut Session<'_>, from: i32, at: TargetFd) -> Result<()> {
    let pid = s.pid();
    let cloexec = fd_flags(s, at)?.is_some_and(|f| f & libc::FD_CLOEXEC != 0);
    if from == at.as_raw() {
        // The received fd landed on the (free) number itself; only the flag is left.
        let flags = if cloexec { libc::FD_CLOEXEC } else { 0 };
        let r = s.syscall(
            libc::SYS_fcntl,
            &[from as u64, libc::F_SETFD as u64, flags as u64],
        )?;
        if r < 0 {
            return Err(remote_error(pid, Some(at), "fcntl(F_SETFD) (injected)", r));
        }
        s.keep_remote_fd(from);
        return Ok(());
    }
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    let r = s.syscall(
        libc::SYS_dup3,
        &[from as u64, at.as_raw() as u64, flags as u64],
    )?;
    if r < 0 {
        return Err(remote_error(pid, Some(at), "dup3 (injected)", r));
    }
    Ok(())
}

/// Takes copies of `fds` out of `target` with one injection session. The copies are
/// close-on-exec. Callers normally go through [`crate::grab::GrabOptions`] with
/// [`crate::Backend::Ptrace`], which also checks each copy's identity.
///
/// `policy` says what to do about the target's seccomp filters; the calls checked
/// against them are `socket`, `sendmsg` and `close` besides the session's
/// own (see [`Session`]). On x86_64 those three run as one routine from a
/// read+exec scratch mapping where the filters (if any) let each of them run from
/// there, else one by one (docs/injection.md, "The grab routine").
pub fn grab_fds(target: &PidFd, fds: &[TargetFd], policy: SeccompPolicy) -> Result<Vec<OwnedFd>> {
    grab_fds_of(
        target,
        crate::access::fd_table_owner_status(target)?,
        fds,
        policy,
    )
}

/// [`grab_fds`] from the thread `owner` names (the fd table's owner and its
/// `status`, read by the caller just before, see
/// [`crate::access::fd_table_owner_status`]).
pub(crate) fn grab_fds_of(
    target: &PidFd,
    owner: (crate::Pid, procfs::Status),
    fds: &[TargetFd],
    policy: SeccompPolicy,
) -> Result<Vec<OwnedFd>> {
    if fds.is_empty() {
        return Ok(Vec::new());
    }
    let mut plan = Vec::new();
    mailbox_calls(&mut plan);
    let one_go = cfg!(target_arch = "x86_64") && fds.len() <= SCM_MAX_FD;
    with_session_of(target, owner, policy, &plan, one_go, |s| {
        let mailbox = Mailbox::new(s.pid(), s.tid())?;
        if let Some(got) = send_in_one_go(s, &mailbox, fds)? {
            return Ok(got);
        }
        let remote = open_mailbox_socket(s)?;
        send_to_us(s, &mailbox, remote, fds)
    })
}

/// Refuses now what a later [`close_in_target`] with `policy` would refuse before
/// seizing (a thread under seccomp whose filters fdgrab cannot read, without
/// `force`), so that a steal can say no before it copies anything or starts CMD.
pub(crate) fn check_close_allowed(target: &PidFd, policy: SeccompPolicy) -> Result<()> {
    let (tid, status) = crate::access::fd_table_owner_status(target)?;
    seccomp::before_seize(target.pid(), tid, &status, policy).map(|_| ())
}

/// Closes `fds` in `target` (or, with [`CloseMode::DevNull`], puts /dev/null over
/// them), all in one session. Every fd is checked to exist before any is touched, so
/// a wrong number leaves the target unchanged ([`Error::NoSuchFd`]).
pub fn close_in_target(
    target: &PidFd,
    fds: &[TargetFd],
    how: CloseMode,
    policy: SeccompPolicy,
) -> Result<()> {
    let mut fds = fds.to_vec();
    fds.sort_unstable();
    fds.dedup();
    let fds = fds.as_slice();
    if fds.is_empty() {
        return Ok(());
    }
    let null = match how {
        CloseMode::DevNull => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| Error::Io {
                    op: "opening /dev/null",
                    pid: target.pid(),
                    fd: None,
                    source: e,
                })?,
        ),
        CloseMode::Close => None,
    };
    let mut plan = Vec::new();
    for &fd in fds {
        plan.push(get_flags_call(fd.as_raw() as u64));
        match how {
            CloseMode::Close => plan.push(Planned::new(libc::SYS_close, &[k(fd.as_raw() as u64)])),
            CloseMode::DevNull => receive_and_install_calls(&mut plan, fd),
        }
    }
    with_session(target, policy, &plan, |s| {
        if let Some(fd) = first_missing(s, fds)? {
            return Err(Error::NoSuchFd { pid: s.pid(), fd });
        }
        match &null {
            None => {
                for &fd in fds {
                    let r = s.syscall(libc::SYS_close, &[fd.as_raw() as u64])?;
                    // Only EBADF leaves a number open; any other error (EINTR, or
                    // EIO from a flush) comes after the fd was already freed.
                    if r == -(libc::EBADF as i64) {
                        return Err(remote_error(s.pid(), Some(fd), "close (injected)", r));
                    }
                    if r < 0 {
                        tracing::warn!(pid = s.pid(), %fd, errno = -r, "the injected close freed the fd but reported an error from its flush");
                    }
                }
            }
            Some(null) => {
                let ch = open_channel(s)?;
                let theirs = receive_from_us(s, &ch, null.as_fd())?;
                for &fd in fds {
                    install(s, theirs, fd)?;
                }
            }
        }
        tracing::debug!(pid = s.pid(), ?fds, ?how, "closed in target");
        Ok(())
    })
}

/// Installs our `ours` into `target` at number `at`, atomically replacing whatever
/// was open there (`dup3`), keeping that number's close-on-exec flag (a free number
/// gets none). The target's copy shares our open file description.
pub fn put(
    target: &PidFd,
    ours: BorrowedFd<'_>,
    at: TargetFd,
    policy: SeccompPolicy,
) -> Result<()> {
    put_with(target, ours, at, policy, || Ok(()))
}

/// [`put`] that runs `before_install` right before the `dup3` that changes the
/// target: the last point where a failure leaves the target as it was. A caller
/// that truncates the user's file there loses nothing when the injection fails.
pub fn put_with(
    target: &PidFd,
    ours: BorrowedFd<'_>,
    at: TargetFd,
    policy: SeccompPolicy,
    before_install: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let mut plan = Vec::new();
    receive_and_install_calls(&mut plan, at);
    with_session(target, policy, &plan, |s| {
        let ch = open_channel(s)?;
        let theirs = receive_from_us(s, &ch, ours)?;
        before_install()?;
        install(s, theirs, at)
    })
}

/// The lowest numbers tried for the saved copy in [`redirect`], highest first; each
/// must stay under the target's `RLIMIT_NOFILE`.
const SAVE_FLOORS: [u64; 4] = [1000, 500, 100, 10];

/// Points the target's `fd` at our `file`, first keeping the old one alive at a high
/// number (`fcntl(F_DUPFD_CLOEXEC)` in the target), which is returned. Undo with
/// [`undo_redirect`].
pub fn redirect(
    target: &PidFd,
    fd: TargetFd,
    file: BorrowedFd<'_>,
    policy: SeccompPolicy,
) -> Result<TargetFd> {
    redirect_with(target, fd, file, policy, || Ok(()))
}

/// [`redirect`] that runs `before_install` right before the `dup3` that points
/// the target's fd at `file` (see [`put_with`]).
pub fn redirect_with(
    target: &PidFd,
    fd: TargetFd,
    file: BorrowedFd<'_>,
    policy: SeccompPolicy,
    before_install: impl FnOnce() -> Result<()>,
) -> Result<TargetFd> {
    let raw = fd.as_raw() as u64;
    let mut plan = vec![get_flags_call(raw)];
    for floor in SAVE_FLOORS {
        plan.push(Planned::new(
            libc::SYS_fcntl,
            &[k(raw), k(libc::F_DUPFD_CLOEXEC as u64), k(floor)],
        ));
    }
    receive_and_install_calls(&mut plan, fd);
    with_session(target, policy, &plan, |s| {
        let pid = s.pid();
        if fd_flags(s, fd)?.is_none() {
            return Err(Error::NoSuchFd { pid, fd });
        }
        let mut saved = None;
        for floor in SAVE_FLOORS {
            let r = s.syscall(
                libc::SYS_fcntl,
                &[fd.as_raw() as u64, libc::F_DUPFD_CLOEXEC as u64, floor],
            )?;
            if r >= 0 {
                saved = Some(r as i32);
                break;
            }
            if r != -(libc::EINVAL as i64) && r != -(libc::EMFILE as i64) {
                return Err(remote_error(
                    pid,
                    Some(fd),
                    "fcntl(F_DUPFD_CLOEXEC) (injected)",
                    r,
                ));
            }
        }
        let saved = saved.ok_or_else(|| {
            Error::io(
                "keeping the old fd at a high number (the target's fd limit is too low)",
                pid,
                Some(fd),
                rustix::io::Errno::MFILE,
            )
        })?;
        s.track_remote_fd(saved);
        let ch = open_channel(s)?;
        let theirs = receive_from_us(s, &ch, file)?;
        before_install()?;
        install(s, theirs, fd)?;
        s.keep_remote_fd(saved);
        let saved = TargetFd::new(saved)
            .ok_or_else(|| Error::InvalidArgument("negative fd from the target".into()))?;
        tracing::debug!(pid, fd = fd.as_raw(), saved = saved.as_raw(), "redirected");
        Ok(saved)
    })
}

/// Undoes [`redirect`]: `dup3(saved, fd)` in the target, then closes `saved`.
pub fn undo_redirect(
    target: &PidFd,
    fd: TargetFd,
    saved: TargetFd,
    policy: SeccompPolicy,
) -> Result<()> {
    if fd == saved {
        return Err(Error::InvalidArgument(format!(
            "fd {fd} and the saved fd are the same number"
        )));
    }
    let mut plan = vec![get_flags_call(saved.as_raw() as u64)];
    install_calls(&mut plan, k(saved.as_raw() as u64), fd);
    with_session(target, policy, &plan, |s| {
        if fd_flags(s, saved)?.is_none() {
            return Err(Error::NoSuchFd {
                pid: s.pid(),
                fd: saved,
            });
        }
        install(s, saved.as_raw(), fd)?;
        s.close_remote(saved.as_raw())
    })
}

/// Runs `f` in a session and always restores the target; `f`'s error wins over a
/// restore error, which is then only logged.
fn with_session<T>(
    target: &PidFd,
    policy: SeccompPolicy,
    plan: &[Planned],
    f: impl FnOnce(&mut Session<'_>) -> Result<T>,
) -> Result<T> {
    let owner = crate::access::fd_table_owner_status(target)?;
    with_session_of(target, owner, policy, plan, false, f)
}

/// [`with_session`] on the thread `owner` names (see [`grab_fds_of`]), its scratch
/// mapping executable for a routine if `exec_scratch` (see [`Session::attach_planned`]).
fn with_session_of<T>(
    target: &PidFd,
    owner: (crate::Pid, procfs::Status),
    policy: SeccompPolicy,
    plan: &[Planned],
    exec_scratch: bool,
    f: impl FnOnce(&mut Session<'_>) -> Result<T>,
) -> Result<T> {
    let mut s = Session::attach_planned(target, owner, policy, plan, exec_scratch)?;
    let r = f(&mut s);
    let d = s.detach();
    match (r, d) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(restore)) => {
            if !matches!(restore, Error::NoSuchProcess { .. }) {
                tracing::warn!(pid = target.pid(), error = %restore, "restoring the target after a failure");
            }
            Err(e)
        }
    }
}
