//! Handing taken listening sockets to a server through its own `bind(2)`: the
//! supervisor behind `fdgrab exec --via bind`.
//!
//! The new server runs under a filter that traps `bind` and `listen`
//! ([`handover_filter`]). For each trapped `bind(fd, addr, addrlen)`:
//! 1. a request no taken socket can match (bad length, unreadable address, port 0,
//!    an address no taken socket has) goes back to the kernel (`CONTINUE`);
//! 2. the sockaddr is decoded as the bind handler does ([`super::bind`]'s
//!    `decode_bind`), with its deadline: the copy runs in a reader process of
//!    its own, and one that outlives [`READ_DEADLINE`] (a page a userfaultfd or
//!    FUSE server never fills) is killed (or, if the kill cannot end it, left
//!    to a reaper), the bind answered `ETIMEDOUT` and the handover refused
//!    ([`Handover::refusal`]); this supervisor's thread also
//!    serves signals and the ready gate, so it must not block. Then the caller's
//!    fd is copied through a **thread** pidfd and its `/proc` fd flags are read,
//!    and `ID_VALID` is checked again; only our copies are used from then on;
//! 3. the caller's socket must be unbound and of the taken socket's family, type
//!    and protocol (another thread may have `dup2`'d something else over the
//!    number): otherwise the kernel decides;
//! 4. for the IPv6 wildcard, `IPV6_V6ONLY` must agree: a dual-stack socket cannot
//!    stand in for a v6-only one or the reverse (a specific v6 address is always
//!    v6-only once bound). A conflict refuses the whole handover ([`Handover::refusal`])
//!    and the bind is answered `EADDRINUSE`, which is what the kernel would have
//!    said while the old server holds the address;
//! 5. what the new server set on its own socket is carried over to the taken one:
//!    `O_NONBLOCK` (the accept loop depends on it), `TCP_DEFER_ACCEPT`, and
//!    `SO_RCVBUF`/`SO_SNDBUF` where they differ from a fresh socket's (set
//!    explicitly); the previous values are kept so that [`Handover::abort`] can put
//!    them back. `SO_REUSEADDR` only matters for a bind and is not carried;
//!    `SO_REUSEPORT` is left as the old server set it (group membership is fixed
//!    at bind time). `O_NONBLOCK` of a stream socket is applied only when the
//!    server calls `listen` on it (or at the commit): the old server shares the
//!    flag, and a blocking accept loop there fails with `EAGAIN` once it is set,
//!    which must not happen for a new server that fails before listening;
//! 6. `SECCOMP_IOCTL_NOTIF_ADDFD` with `SETFD` installs the taken socket at the
//!    caller's very number (its own socket is closed by the replacement), keeping
//!    the caller's close-on-exec flag, and the bind is answered 0.
//!
//! Each taken socket is handed out once. A second bind to the same address (the
//! next `SO_REUSEPORT` worker) gets the next taken socket with that address, if
//! any; when all are out the bind goes to the kernel, which lets it join the
//! group if both sides set `SO_REUSEPORT` and answers `EADDRINUSE` otherwise.
//!
//! A trapped `listen` on a taken socket (whichever way it reached the server) is
//! answered 0 without touching the socket, which is already listening; the
//! requested backlog is applied at [`Handover::commit`]. A `listen` on any other
//! socket goes to the kernel. The server counts as ready once it has called
//! `listen` on every taken socket.
//!
//! A bind restarted after a signal (new request id) on a socket we already
//! installed at that number, for that address, is answered 0.
//!
//! After [`Handover::commit`] or [`Handover::abort`] every call goes straight back
//! to the kernel: a later bind (a reload adding a port) works as if unsupervised.

use super::bind::{
    decode_bind, let_go_of_file, reserve_close, thread_group_pidfd, BindArgs, Undecoded,
    CLOSES_WAITING_REASON,
};
use super::handler::{Answer, Context, Handler};
use super::tenant::READ_DEADLINE;
use crate::error::{Error, Result};
use crate::pidfd::PidFd;
use crate::seccomp::{
    Action, AddFdAt, BuildError, Notification, Program, Response, SendError, SyscallFilter,
};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrAny, SocketFlags, SocketType};
use rustix::process::{pidfd_getfd, PidfdGetfdFlags};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// The filter of a server taking sockets through `bind`: `bind` and `listen` go to
/// the listener, everything else is allowed. io_uring is left alone: a bind it
/// makes simply reaches the kernel, which answers `EADDRINUSE` for a taken address.
pub fn handover_filter() -> std::result::Result<Program, BuildError> {
    SyscallFilter::new(Action::Allow)
        .rule(libc::SYS_bind, Action::Notify)
        .rule(libc::SYS_listen, Action::Notify)
        .build()
}

/// Family, type and protocol of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Kind {
    domain: AddressFamily,
    ty: SocketType,
    protocol: i32,
}

fn kind_of(sock: impl AsFd) -> Option<Kind> {
    use rustix::net::sockopt;
    let sock = sock.as_fd();
    Some(Kind {
        domain: sockopt::socket_domain(sock).ok()?,
        ty: sockopt::socket_type(sock).ok()?,
        protocol: sockopt::socket_protocol(sock)
            .ok()?
            .map_or(0, |p| p.as_raw().get() as i32),
    })
}

fn key_of(sock: impl AsFd) -> Option<(u64, u64)> {
    rustix::fs::fstat(sock)
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

fn local_addr(sock: impl AsFd) -> Option<SocketAddr> {
    let name: SocketAddrAny = rustix::net::getsockname(sock).ok()?;
    SocketAddr::try_from(name).ok()
}

fn same_endpoint(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.ip() == b.ip() && a.port() == b.port()
}

/// Options carried from the new server's socket to the taken one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Carried {
    nonblock: bool,
    /// `TCP_DEFER_ACCEPT` in seconds (TCP only).
    defer_accept: Option<i32>,
    /// What to set (the value asked for, i.e. half what `getsockopt` reports), when
    /// the server set it.
    rcvbuf: Option<i32>,
    sndbuf: Option<i32>,
}

/// The taken socket's own values of what we changed, to put back on abort.
#[derive(Clone, Copy, Debug, Default)]
struct Saved {
    nonblock: Option<bool>,
    defer_accept: Option<i32>,
    rcvbuf: Option<i32>,
    sndbuf: Option<i32>,
}

#[derive(Debug)]
struct Slot {
    /// Our copy; dropped at commit/abort.
    fd: Option<OwnedFd>,
    key: (u64, u64),
    addr: SocketAddr,
    kind: Kind,
    /// Where it went: `(tid, fd)`.
    handed: Option<(i32, i32)>,
    /// The backlog of the new server's `listen` on it.
    listened: Option<i32>,
    saved: Saved,
    /// The `O_NONBLOCK` the new server chose, not applied yet (see [`apply_nonblock`]).
    nonblock: Option<bool>,
}

#[derive(Debug)]
struct State {
    slots: Vec<Slot>,
    refusal: Option<String>,
    /// A bind we answered was withdrawn (signal): its restart must find us.
    unanswered: bool,
    done: bool,
}

/// The shared record of a handover: the handler fills it, the launcher reads it.
#[derive(Clone, Debug)]
pub struct Handover(Arc<Mutex<State>>);

impl Handover {
    /// Offers `sockets` (our copies of the old server's listening sockets), in order.
    /// Each must be a bound IPv4 or IPv6 socket.
    pub fn new(sockets: Vec<OwnedFd>) -> Result<Self> {
        let mut slots = Vec::with_capacity(sockets.len());
        for fd in sockets {
            let (Some(key), Some(addr), Some(kind)) = (key_of(&fd), local_addr(&fd), kind_of(&fd))
            else {
                return Err(Error::InvalidArgument(
                    "--via bind hands over IPv4 and IPv6 sockets only (a unix socket has no \
                     address a server would bind to while the old one holds it)"
                        .into(),
                ));
            };
            slots.push(Slot {
                fd: Some(fd),
                key,
                addr,
                kind,
                handed: None,
                listened: None,
                saved: Saved::default(),
                nonblock: None,
            });
        }
        Ok(Self(Arc::new(Mutex::new(State {
            slots,
            refusal: None,
            unanswered: false,
            done: false,
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; use it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handler to give the supervisor.
    pub fn handler(&self) -> HandoverHandler {
        HandoverHandler {
            state: self.clone(),
        }
    }

    /// Whether every taken socket has been installed by a bind.
    pub fn all_bound(&self) -> bool {
        self.lock().slots.iter().all(|s| s.handed.is_some())
    }

    /// Whether the server has called `listen` on every taken stream socket and
    /// bound every taken datagram socket (which has no `listen`).
    pub fn all_listening(&self) -> bool {
        self.lock().slots.iter().all(|s| match s.kind.ty {
            SocketType::STREAM | SocketType::SEQPACKET => s.listened.is_some(),
            _ => s.handed.is_some(),
        })
    }

    /// How many taken sockets were installed by a bind.
    pub fn bound_count(&self) -> usize {
        self.lock()
            .slots
            .iter()
            .filter(|s| s.handed.is_some())
            .count()
    }

    /// The addresses no bind has claimed yet, as `tcp 127.0.0.1:8080`.
    pub fn unclaimed(&self) -> Vec<String> {
        self.lock()
            .slots
            .iter()
            .filter(|s| s.handed.is_none())
            .map(describe)
            .collect()
    }

    /// Why the handover cannot go on, if a bind conflicted.
    pub fn refusal(&self) -> Option<String> {
        self.lock().refusal.clone()
    }

    /// The handover succeeded: applies the backlogs the server asked for, drops our
    /// copies, and lets every later call through.
    pub fn commit(&self) {
        let mut st = self.lock();
        st.done = true;
        for s in &mut st.slots {
            if let Some(fd) = &s.fd {
                apply_nonblock(fd, &s.saved, s.nonblock.take());
            }
            if let (Some(fd), Some(backlog)) = (&s.fd, s.listened) {
                // listen on a listening socket only changes its backlog.
                if let Err(e) = rustix::net::listen(fd, backlog) {
                    tracing::warn!(addr = %s.addr, backlog, error = %e, "could not apply the new server's backlog");
                }
            }
            s.fd = None;
        }
    }

    /// The handover failed: puts back what was changed on the taken sockets (the
    /// old server keeps serving on them as before) and drops our copies.
    pub fn abort(&self) {
        let mut st = self.lock();
        st.done = true;
        for s in &mut st.slots {
            if let Some(fd) = s.fd.take() {
                restore(&fd, &s.saved);
            }
        }
    }
}

fn describe(s: &Slot) -> String {
    let proto = match (s.kind.ty, s.kind.protocol) {
        (SocketType::STREAM, libc::IPPROTO_TCP) => "tcp",
        (SocketType::DGRAM, libc::IPPROTO_UDP) => "udp",
        _ => "socket",
    };
    format!("{proto} {}", s.addr)
}

/// Answers `bind` and `listen` for a [`Handover`].
#[derive(Debug)]
pub struct HandoverHandler {
    state: Handover,
}

impl Handler for HandoverHandler {
    fn syscalls(&self) -> &[libc::c_long] {
        &[libc::SYS_bind, libc::SYS_listen]
    }

    fn handle(&mut self, cx: &mut Context<'_>, n: &Notification) -> Answer {
        let mut st = self.state.lock();
        let (resp, why) = if libc::c_long::from(n.data.nr) == libc::SYS_listen {
            match on_listen(&mut st, cx, n) {
                Some(r) => r,
                None => return Answer::Done,
            }
        } else {
            match on_bind(&mut st, cx, n) {
                Some(r) => r,
                None => return Answer::Done,
            }
        };
        tracing::debug!(tid = n.tid, nr = n.data.nr, ?resp, why, "handover");
        match resp {
            Handed::Not(r) => Answer::Respond(r),
            Handed::Installed => match cx.listener.respond(n.id, Response::Value(0)) {
                Ok(()) => Answer::Done,
                Err(SendError::Gone) => {
                    st.unanswered = true;
                    Answer::Done
                }
                Err(e) => {
                    tracing::warn!(tid = n.tid, error = %e, "answering a handed-over bind");
                    Answer::Done
                }
            },
        }
    }
}

#[derive(Debug)]
enum Handed {
    /// The socket was installed: answer 0 (and remember a withdrawn answer).
    Installed,
    Not(Response),
}

type Decided = Option<(Handed, &'static str)>;

fn cont(why: &'static str) -> Decided {
    Some((Handed::Not(Response::Continue), why))
}

/// A pidfd for the caller's thread (its process's before Linux 6.9). `None`: the
/// request is gone or the caller cannot be named; the kernel decides then.
fn open_caller(cx: &Context<'_>, n: &Notification) -> std::result::Result<PidFd, Decided> {
    let opened = match PidFd::open_thread(n.tid) {
        Err(Error::Unsupported { .. }) => thread_group_pidfd(n.tid),
        r => r,
    };
    opened.map_err(|_| {
        if cx.listener.id_valid(n.id) {
            cont("cannot open a pidfd for the caller")
        } else {
            None
        }
    })
}

/// A copy of the caller's `fd`, through a pidfd closed again at once.
fn grab_caller_fd(
    cx: &Context<'_>,
    n: &Notification,
    fd: i32,
) -> std::result::Result<OwnedFd, Decided> {
    let thread = open_caller(cx, n)?;
    let Some(thread) = thread.as_pidfd() else {
        return Err(cont("cannot open a pidfd for the caller"));
    };
    pidfd_getfd(thread, fd, PidfdGetfdFlags::empty()).map_err(|e| match e {
        Errno::SRCH => None,
        _ => cont("no such fd in the caller (the kernel answers)"),
    })
}

fn on_listen(st: &mut State, cx: &Context<'_>, n: &Notification) -> Decided {
    if st.done || st.slots.iter().all(|s| s.listened.is_some()) {
        return cont("no taken socket waits for listen");
    }
    let fd = n.data.args[0] as u32 as i32;
    let backlog = n.data.args[1] as u32 as i32;
    // As for a bind: closing a copy of a FUSE file waits for its server (FLUSH),
    // so it is made off this thread, in a place taken before the copy.
    let Some(place) = reserve_close(0) else {
        return cont(CLOSES_WAITING_REASON);
    };
    let theirs = match grab_caller_fd(cx, n, fd) {
        Ok(s) => s,
        Err(d) => return d,
    };
    if !cx.listener.id_valid(n.id) {
        let_go_of_file(theirs, place);
        return None;
    }
    // A getsockopt fails ENOTSOCK for any other file without reaching its file
    // system; an fstat of a FUSE file may be a request to its server.
    if rustix::net::sockopt::socket_type(&theirs).is_err() {
        let_go_of_file(theirs, place);
        return cont("not a taken socket");
    }
    drop(place);
    let key = key_of(&theirs);
    match st.slots.iter_mut().find(|s| Some(s.key) == key) {
        Some(slot) => {
            slot.listened = Some(backlog);
            // The server starts accepting once this is answered: now it needs the
            // mode it chose.
            if let Some(fd) = &slot.fd {
                apply_nonblock(fd, &slot.saved, slot.nonblock.take());
            }
            tracing::info!(tid = n.tid, fd, addr = %slot.addr, backlog, "new server listens on a taken socket");
            Some((
                Handed::Not(Response::Value(0)),
                "taken socket, already listening",
            ))
        }
        None => cont("not a taken socket"),
    }
}

fn on_bind(st: &mut State, cx: &Context<'_>, n: &Notification) -> Decided {
    if st.done || (!st.unanswered && st.slots.iter().all(|s| s.handed.is_some())) {
        return cont("every taken socket was handed out");
    }
    // The new server's memory is read with the bind handler's deadline: the
    // supervisor serves every signal and the ready gate from this thread.
    let mut args = BindArgs::default();
    let (fd, addr) = match decode_bind(
        cx.listener,
        n,
        &mut args,
        Some((std::time::Instant::now() + READ_DEADLINE, 0)),
        || true,
    ) {
        Ok(call) => call,
        Err(Undecoded::Gone) => return None,
        Err(Undecoded::Kernel(why)) => return cont(why),
        Err(Undecoded::TimedOut) => {
            let why = format!(
                "the new server's bind address could not be read within {} ms (its \
                 memory is on a page nobody fills; answered ETIMEDOUT)",
                READ_DEADLINE.as_millis()
            );
            tracing::warn!(tid = n.tid, "{why}");
            st.refusal.get_or_insert(why);
            return Some((
                Handed::Not(Response::Error(Errno::TIMEDOUT)),
                "reading the caller's memory outlived the deadline",
            ));
        }
    };
    if addr.port() == 0
        || !st
            .slots
            .iter()
            .any(|s| same_endpoint(&s.addr, &addr) && s.addr.is_ipv4() == addr.is_ipv4())
    {
        return cont("no taken socket has this address");
    }
    // Only a bind of a taken address costs a pidfd. And only while a close of the
    // copy has a place to wait: past the program's places, `let_go_of_file` would
    // close it on this thread, which a FUSE server holding FLUSH stalls for good.
    let Some(place) = reserve_close(0) else {
        return cont(CLOSES_WAITING_REASON);
    };
    let theirs = match grab_caller_fd(cx, n, fd) {
        Ok(s) => s,
        Err(d) => return d,
    };
    let flags = fd_flags(n.tid, fd);
    if !cx.listener.id_valid(n.id) {
        // Not known to be a socket yet: a FUSE file's close may never return.
        let_go_of_file(theirs, place);
        return None;
    }
    // The socket's kind first: getsockopt fails ENOTSOCK for any other file
    // without reaching its file system, where the fstat below could ask a FUSE
    // server (which may never answer). A handed socket is a socket.
    let Some(kind) = kind_of(&theirs) else {
        // Closing a FUSE file asks its server (FLUSH): not on this thread.
        let_go_of_file(theirs, place);
        return cont("the fd is not a socket");
    };
    drop(place);
    let key = key_of(&theirs);
    // A restarted call on the socket we already installed there.
    if let Some(s) = st
        .slots
        .iter()
        .find(|s| s.handed.is_some() && Some(s.key) == key && same_endpoint(&s.addr, &addr))
    {
        tracing::debug!(tid = n.tid, fd, addr = %s.addr, "restarted bind on a handed socket");
        st.unanswered = false;
        return Some((
            Handed::Not(Response::Value(0)),
            "restarted call; the taken socket is already there",
        ));
    }
    if local_addr(&theirs).is_some_and(|a| a.port() != 0) {
        return cont("the caller's socket is already bound (the kernel answers EINVAL)");
    }
    let Some(idx) = st
        .slots
        .iter()
        .position(|s| s.handed.is_none() && same_endpoint(&s.addr, &addr) && s.kind == kind)
    else {
        return cont("no unclaimed taken socket of this address, family, type and protocol");
    };
    let slot = &mut st.slots[idx];
    let Some(ours) = slot.fd.as_ref() else {
        return cont("the handover is over");
    };
    // Bound to a specific v6 address a socket is v6-only whatever was asked (the
    // kernel sets the flag at bind); only the wildcard's flag decides anything.
    if kind.domain == AddressFamily::INET6 && addr.ip().is_unspecified() {
        let mine = rustix::net::sockopt::ipv6_v6only(ours).ok();
        let wanted = rustix::net::sockopt::ipv6_v6only(&theirs).ok();
        if mine != wanted {
            let why = format!(
                "the new server's socket for {} has IPV6_V6ONLY={} but the taken one has {}; \
                 a dual-stack socket cannot stand in for a v6-only one (answered its bind EADDRINUSE)",
                describe(slot),
                u8::from(wanted == Some(true)),
                u8::from(mine == Some(true)),
            );
            tracing::warn!(tid = n.tid, fd, "{why}");
            st.refusal.get_or_insert(why);
            return Some((
                Handed::Not(Response::Error(Errno::ADDRINUSE)),
                "IPV6_V6ONLY differs",
            ));
        }
    }
    let carried = carried(&theirs, kind);
    let saved = apply(ours, &carried);
    // A stream socket's mode waits for the server's listen (or the commit): the old
    // server shares it, and one that accepts in a blocking loop would fail with
    // EAGAIN, and stop, if this new server then failed before listening.
    let stream = matches!(kind.ty, SocketType::STREAM | SocketType::SEQPACKET);
    let pending = if stream {
        Some(carried.nonblock)
    } else {
        apply_nonblock(ours, &saved, Some(carried.nonblock));
        None
    };
    let cloexec = flags.is_some_and(|f| f & libc::O_CLOEXEC != 0);
    match cx
        .listener
        .add_fd(n.id, ours.as_fd(), AddFdAt::Number(fd), cloexec, false)
    {
        Ok(_) => {
            slot.saved = saved;
            slot.nonblock = pending;
            slot.handed = Some((n.tid, fd));
            tracing::info!(tid = n.tid, fd, addr = %slot.addr, ?carried, "installed a taken socket at the caller's fd");
            Some((Handed::Installed, "taken socket installed"))
        }
        Err(e) => {
            restore(ours, &saved);
            if e.raw_os_error() == Some(libc::ENOENT) {
                return None;
            }
            tracing::warn!(tid = n.tid, fd, error = %e, "SECCOMP_IOCTL_NOTIF_ADDFD failed; the kernel decides");
            cont("ADDFD failed")
        }
    }
}

/// The `flags:` line of `/proc/TID/fdinfo/FD` (octal; includes `O_CLOEXEC` for
/// the fd-table flag).
fn fd_flags(tid: i32, fd: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{tid}/fdinfo/{fd}")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("flags:"))?;
    i32::from_str_radix(line.trim(), 8).ok()
}

/// What the new server set on its socket that should carry over.
fn carried(theirs: &OwnedFd, kind: Kind) -> Carried {
    use crate::sys::getsockopt_int;
    let nonblock = rustix::fs::fcntl_getfl(theirs)
        .map(|f| f.contains(rustix::fs::OFlags::NONBLOCK))
        .unwrap_or(false);
    let defer_accept = (kind.protocol == libc::IPPROTO_TCP)
        .then(|| getsockopt_int(theirs, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT).ok())
        .flatten();
    // A buffer size differing from a fresh socket's was set by the server. The
    // kernel reports twice what was asked for.
    let fresh = rustix::net::socket_with(
        kind.domain,
        kind.ty,
        SocketFlags::CLOEXEC,
        rustix::net::Protocol::from_raw(
            std::num::NonZeroU32::new(kind.protocol as u32).unwrap_or(std::num::NonZeroU32::MIN),
        )
        .into(),
    )
    .ok();
    let explicit = |name| {
        let v = getsockopt_int(theirs, libc::SOL_SOCKET, name).ok()?;
        let d = getsockopt_int(fresh.as_ref()?, libc::SOL_SOCKET, name).ok()?;
        (v != d).then_some(v / 2)
    };
    Carried {
        nonblock,
        defer_accept,
        rcvbuf: explicit(libc::SO_RCVBUF),
        sndbuf: explicit(libc::SO_SNDBUF),
    }
}

/// Sets `c` on `ours`; returns the previous values of what changed.
fn apply(ours: &OwnedFd, c: &Carried) -> Saved {
    use crate::sys::{getsockopt_int, setsockopt_int};
    let mut saved = Saved {
        // Recorded whatever happens next, so that an abort also undoes a mode the
        // server set on the taken socket itself after its bind.
        nonblock: nonblock_of(ours),
        ..Saved::default()
    };
    let set = |level, name, want: Option<i32>, slot: &mut Option<i32>, scale: i32| {
        let Some(want) = want else { return };
        let Ok(was) = getsockopt_int(ours, level, name) else {
            return;
        };
        if was / scale != want && setsockopt_int(ours, level, name, want).is_ok() {
            *slot = Some(was / scale);
        }
    };
    set(
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        c.defer_accept,
        &mut saved.defer_accept,
        1,
    );
    set(
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        c.rcvbuf,
        &mut saved.rcvbuf,
        2,
    );
    set(
        libc::SOL_SOCKET,
        libc::SO_SNDBUF,
        c.sndbuf,
        &mut saved.sndbuf,
        2,
    );
    saved
}

fn nonblock_of(fd: &OwnedFd) -> Option<bool> {
    rustix::fs::fcntl_getfl(fd)
        .ok()
        .map(|f| f.contains(rustix::fs::OFlags::NONBLOCK))
}

/// Gives the taken socket the `O_NONBLOCK` the new server chose (`want`), unless the
/// server already changed the mode itself since its bind (`saved` holds the mode
/// before).
fn apply_nonblock(ours: &OwnedFd, saved: &Saved, want: Option<bool>) {
    let (Some(want), Some(before)) = (want, saved.nonblock) else {
        return;
    };
    if nonblock_of(ours) == Some(before) && before != want {
        if let Err(e) = rustix::io::ioctl_fionbio(ours, want) {
            tracing::warn!(error = %e, "could not carry O_NONBLOCK to the taken socket");
        }
    }
}

fn restore(ours: &OwnedFd, s: &Saved) {
    use crate::sys::setsockopt_int;
    if let Some(nb) = s.nonblock {
        let _ = rustix::io::ioctl_fionbio(ours, nb);
    }
    if let Some(v) = s.defer_accept {
        let _ = setsockopt_int(ours, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, v);
    }
    if let Some(v) = s.rcvbuf {
        let _ = setsockopt_int(ours, libc::SOL_SOCKET, libc::SO_RCVBUF, v);
    }
    if let Some(v) = s.sndbuf {
        let _ = setsockopt_int(ours, libc::SOL_SOCKET, libc::SO_SNDBUF, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::bpf::AUDIT_ARCH_X86_64;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_filter_traps_bind_and_listen_only() {
        let p = handover_filter().expect("filter");
        let verdict = |nr: libc::c_long| p.run(AUDIT_ARCH_X86_64, nr as u32).action;
        assert_eq!(verdict(libc::SYS_bind), Action::Notify);
        assert_eq!(verdict(libc::SYS_listen), Action::Notify);
        for nr in [
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_io_uring_setup,
        ] {
            assert_eq!(verdict(nr), Action::Allow, "syscall {nr}");
        }
    }

    #[test]
    fn fd_flags_show_close_on_exec_of_the_fd() {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let f = std::fs::File::open("/dev/null").expect("open");
        let flags = fd_flags(me, f.as_raw_fd()).expect("fdinfo flags");
        assert_ne!(flags & libc::O_CLOEXEC, 0);
        let dup = rustix::io::dup(&f).expect("dup");
        let flags = fd_flags(me, dup.as_raw_fd()).expect("fdinfo flags");
        assert_eq!(flags & libc::O_CLOEXEC, 0);
    }

    #[test]
    fn a_unix_socket_is_refused_with_a_reason() {
        let (a, _b) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let err = Handover::new(vec![a]).expect_err("unix socket accepted");
        assert!(
            err.to_string().contains("IPv4 and IPv6 sockets only"),
            "{err}"
        );
    }

    #[test]
    fn carried_options_are_applied_and_restored() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let ours: OwnedFd = l.into();
        let copy = rustix::io::fcntl_dupfd_cloexec(&ours, 0).expect("dup");
        let h = Handover::new(vec![copy]).expect("handover");
        assert!(!h.all_bound() && !h.all_listening());
        assert_eq!(h.unclaimed().len(), 1);
        assert!(h.unclaimed()[0].starts_with("tcp 127.0.0.1:"));
        // What the handler does for a bind with a non-blocking, deferring socket.
        let wanted = Carried {
            nonblock: true,
            defer_accept: Some(7),
            // 7 s round-trips: the kernel keeps a count of SYN-ACK retransmits.
            rcvbuf: None,
            sndbuf: None,
        };
        let saved = apply(&ours, &wanted);
        let nonblock = |fd: &OwnedFd| {
            rustix::fs::fcntl_getfl(fd)
                .expect("getfl")
                .contains(rustix::fs::OFlags::NONBLOCK)
        };
        let defer = |fd: &OwnedFd| {
            crate::sys::getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT).expect("get")
        };
        // The mode waits for the server's listen.
        assert!(!nonblock(&ours));
        apply_nonblock(&ours, &saved, Some(wanted.nonblock));
        assert!(nonblock(&ours));
        assert_eq!(defer(&ours), 7);
        restore(&ours, &saved);
        assert!(!nonblock(&ours));
        assert_eq!(defer(&ours), 0);
        h.abort();
        assert!(h.refusal().is_none());
    }
}
