//! The `bind(2)` handler: performs allowed privileged binds on the caller's socket.
//!
//! For each trapped `bind(fd, addr, addrlen)`:
//! 1. an `addrlen` the kernel rejects, or an unreadable `addr`, is handed back to the
//!    kernel (`CONTINUE`), which answers `EINVAL`/`EFAULT` exactly as it would have;
//! 2. the sockaddr is copied with `process_vm_readv` and `ID_VALID` is checked;
//!    from here on only our copy is used;
//! 3. the fd is copied out through a **thread** pidfd (the request names a thread)
//!    and must be a TCP or UDP socket of the sockaddr's family: another thread may
//!    have `dup2`'d something else over the number, and then the kernel decides;
//! 4. a port below the socket netns's `ip_unprivileged_port_start` that the policy
//!    allows is bound by us, and the result (0 or the exact errno) is the answer;
//!    anything else goes back to the kernel with the caller's own credentials.
//!
//! A call restarted after a signal (new request id) on a socket we already bound to
//! that address is answered 0.

use super::audit::{rfc3339_now, AuditLabels, AuditRecord, AuditSink, Decision};
use super::handler::{Answer, Context, Handler};
use super::pidfd_cache::{CachedThread, FdBudget, ThreadPidfds};
use super::policy::{Policy, PolicyCell, Proto};
use super::port_threshold::{caller_netns, thread_netns_inode, CallerNetns};
use crate::pidfd::PidFd;
use crate::seccomp::{
    read_validated, read_validated_within, Notification, ReadError, Response, SendError,
};
use rustix::io::Errno;
use rustix::process::{pidfd_getfd, PidfdGetfdFlags};
use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

/// `sizeof(struct sockaddr_storage)`: the kernel refuses a longer `addrlen`.
pub(super) const MAX_ADDRLEN: i32 = 128;
const SOCKADDR_IN_LEN: usize = 16;
/// `SIN6_LEN_RFC2133`: the shortest `sockaddr_in6` the kernel accepts (no scope id).
const SOCKADDR_IN6_MIN: usize = 24;

/// Performs allowed privileged binds.
#[derive(Debug)]
pub struct BindHandler {
    policy: Arc<PolicyCell>,
    /// Sockets (by sockfs device and inode) we bound whose caller never saw the
    /// answer, with the address.
    unanswered: HashMap<(u64, u64), SocketAddr>,
    /// Thread pidfds by tid, possibly shared with other listeners. A cached pidfd
    /// whose thread died fails with `ESRCH` and is reopened; while its thread
    /// lives, no other thread has that tid.
    pidfds: Arc<ThreadPidfds>,
    /// Whose share of `pidfds` this handler spends.
    owner: u64,
    /// Whose places for what can outlive a call this handler spends (see
    /// [`BindHandler::share`]).
    share: u64,
    /// Whether `pidfds` is ours alone (then `maintain` prunes it).
    private_cache: bool,
}

/// More than this many withdrawn binds at once means nobody is retrying them.
const MAX_UNANSWERED: usize = 4096;

impl BindHandler {
    /// A handler with a pidfd cache of its own, sized from `RLIMIT_NOFILE`.
    pub fn new(policy: Arc<Policy>) -> Self {
        let cache = Arc::new(ThreadPidfds::new(FdBudget::current().pidfd_capacity()));
        let mut h = Self::shared(Arc::new(PolicyCell::new(policy)), cache, 0);
        h.private_cache = true;
        h
    }

    /// A handler that reads its policy from `policy` at each decision and caches
    /// pidfds in `pidfds` within `owner`'s share. Whoever shares the cache closes
    /// an owner's entries ([`ThreadPidfds::remove_owner`]) when it is gone.
    pub fn shared(policy: Arc<PolicyCell>, pidfds: Arc<ThreadPidfds>, owner: u64) -> Self {
        pidfds.add_owner(owner);
        Self {
            policy,
            unanswered: HashMap::new(),
            pidfds,
            owner,
            share: owner,
            private_cache: false,
        }
    }

    /// Spends `share`'s places for what can outlive a call: killable readers
    /// a kill cannot end, closes of FUSE files that wait (the owner's by
    /// default). The agent gives every container of one pod the same share,
    /// so that a pod whose containers restart does not get fresh places with
    /// each restart.
    pub fn share(mut self, share: u64) -> Self {
        self.share = share;
        self
    }
}

fn socket_key(sock: &OwnedFd) -> Option<(u64, u64)> {
    rustix::fs::fstat(sock)
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}

/// What we learned about one request, for the audit line.
#[derive(Default)]
struct Facts {
    /// The call's fd, family and address, as far as they were decoded.
    call: BindArgs,
    proto: Option<Proto>,
    /// The socket's network namespace (nsfs inode), once the socket was looked at.
    netns: Option<u64>,
    /// The read outlived `Context::read_deadline`.
    overdue: bool,
}

/// What a trapped `bind(fd, addr, addrlen)` asks, learnt step by step by
/// [`decode_bind`]: whatever was learnt before a step stopped it stays here, for
/// an audit line.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BindArgs {
    /// The caller's fd number.
    pub fd: Option<i32>,
    /// `sa_family` of our copy of the sockaddr.
    pub family: Option<i32>,
    /// The address, once parsed the way the kernel's IPv4/IPv6 binds do.
    pub addr: Option<SocketAddr>,
}

/// Why [`decode_bind`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Undecoded {
    /// The request is gone (or someone else answers it): send nothing.
    Gone,
    /// The kernel judges the call (`CONTINUE`), for this reason.
    Kernel(&'static str),
    /// Reading the caller's memory outlived its deadline.
    TimedOut,
}

/// Decodes a trapped bind's arguments into `args`, with our copy of the sockaddr
/// read in this thread, or with a `deadline` in a reader process that is killed
/// at the deadline. `claim` runs right after the read,
/// the only step that can block on the caller, whatever the read did (or before
/// judging a length that needs no read): `false` means someone else answered
/// meanwhile, and nothing may be answered or recorded as ours. Only that copy is
/// used from then on. Returns the fd and the address.
pub(super) fn decode_bind(
    listener: &crate::seccomp::Listener,
    n: &Notification,
    args: &mut BindArgs,
    deadline: Option<(std::time::Instant, u64)>,
    claim: impl FnOnce() -> bool,
) -> Result<(i32, SocketAddr), Undecoded> {
    // A number means a call only with its ABI: a filter that traps bind's
    // number under every ABI (a runtime's profile lists i386 and x32 too)
    // reports other calls with it (on x86_64, 49 is the i386 geteuid).
    if n.data.arch != crate::seccomp::bpf::NATIVE_AUDIT_ARCH {
        return Err(the_kernels(
            claim,
            "a call through another ABI (the kernel decides)",
        ));
    }
    // bind takes `int fd` and `int addrlen`: the upper halves are ignored.
    let fd = n.data.args[0] as u32 as i32;
    let ptr = n.data.args[1];
    let addrlen = n.data.args[2] as u32 as i32;
    args.fd = Some(fd);
    // The kernel looks the fd up before the address: a negative one is its
    // EBADF, and no descriptor call of ours may be handed one.
    if fd < 0 {
        return Err(the_kernels(claim, "negative fd (the kernel answers EBADF)"));
    }
    if !(2..=MAX_ADDRLEN).contains(&addrlen) {
        return Err(the_kernels(claim, "address length the kernel judges"));
    }
    let mut buf = [0u8; MAX_ADDRLEN as usize];
    let raw = &mut buf[..addrlen as usize];
    // The read names the thread by tid and the ID_VALID inside proves the tid
    // still named the caller; nothing per-caller is opened before the policy
    // could allow the bind.
    let read = match deadline {
        None => read_validated(listener, n, ptr, raw),
        Some((d, tenant)) => read_validated_within(listener, n, ptr, raw, d, tenant),
    };
    let judged = match read {
        Ok(()) => None,
        Err(ReadError::Gone) => return Err(Undecoded::Gone),
        // An earlier read of this tenant's is still stuck: answered as its
        // own deadline would have been, without a reader.
        Err(ReadError::TimedOut | ReadError::Stuck) => return Err(Undecoded::TimedOut),
        Err(ReadError::Fault) => Some("bad address (the kernel answers EFAULT)"),
        Err(ReadError::Other(_)) => Some("cannot read the caller's memory"),
    };
    // A read that failed after the deadline is no more ours to answer than one
    // that worked.
    if !claim() {
        return Err(Undecoded::Gone);
    }
    if let Some(reason) = judged {
        return Err(Undecoded::Kernel(reason));
    }
    let family = i32::from(u16::from_ne_bytes([raw[0], raw[1]]));
    args.family = Some(family);
    let addr = parse_sockaddr(family, raw).map_err(Undecoded::Kernel)?;
    args.addr = Some(addr);
    Ok((fd, addr))
}

/// The kernel judges the call, for `reason`, if the answer is still ours to
/// give (`claim`).
fn the_kernels(claim: impl FnOnce() -> bool, reason: &'static str) -> Undecoded {
    match claim() {
        true => Undecoded::Kernel(reason),
        false => Undecoded::Gone,
    }
}

impl Handler for BindHandler {
    fn syscalls(&self) -> &[libc::c_long] {
        &[libc::SYS_bind]
    }

    /// Closes the cached pidfds (and netns links) of threads that have exited,
    /// when the cache is this handler's alone (a shared one is pruned by its
    /// owner).
    fn maintain(&mut self) {
        if self.private_cache {
            self.pidfds.prune_exited();
        }
    }

    fn handle(&mut self, cx: &mut Context<'_>, notif: &Notification) -> Answer {
        let mut facts = Facts::default();
        let (response, decision, reason, bound) = match self.decide(cx, notif, &mut facts) {
            Some(d) => d,
            None if facts.overdue => return Answer::Overdue,
            None => return Answer::Done,
        };
        tracing::debug!(
            tid = notif.tid,
            addr = ?facts.call.addr,
            ?decision,
            reason,
            "bind"
        );
        if cx.audit.is_enabled() {
            audit(
                cx, notif, &mut facts, response, decision, reason, self.share,
            );
        }
        let Some(sock) = bound else {
            return Answer::Respond(response);
        };
        // We changed the socket: if the caller never learns that, remember it so a
        // restarted call is answered as the success it was.
        match cx.listener.respond(notif.id, response) {
            Ok(()) => {}
            Err(SendError::Gone) => {
                if let (Some(addr), Some(key)) = (facts.call.addr, socket_key(&sock)) {
                    if self.unanswered.len() >= MAX_UNANSWERED {
                        self.unanswered.clear();
                    }
                    self.unanswered.insert(key, addr);
                    tracing::debug!(tid = notif.tid, %addr, "bound, but the caller left the call; remembering for its restart");
                }
            }
            Err(e) => tracing::warn!(tid = notif.tid, error = %e, "answering a bind"),
        }
        Answer::Done
    }
}

/// The answer, the audit decision and reason, and our copy of the socket if we
/// bound it. That copy is closed right after the answer; its identity (an
/// `fstat`) is looked up only if the caller left the call before the answer.
type Decided = (Response, Decision, &'static str, Option<OwnedFd>);

impl BindHandler {
    /// `None` when the request vanished (nothing to answer).
    fn decide(
        &mut self,
        cx: &mut Context<'_>,
        n: &Notification,
        facts: &mut Facts,
    ) -> Option<Decided> {
        let cont = |reason| Some((Response::Continue, Decision::Continue, reason, None));
        // Past the read, the only step that can block on the caller, the answer
        // is ours to give, unless a watchdog already gave one.
        let deadline = cx.read_deadline.map(|d| (d, self.share));
        let (fd, addr) = match decode_bind(cx.listener, n, &mut facts.call, deadline, || cx.claim())
        {
            Ok(call) => call,
            Err(Undecoded::Kernel(reason)) => return cont(reason),
            Err(Undecoded::Gone) => return None,
            Err(Undecoded::TimedOut) => {
                facts.overdue = true;
                return None;
            }
        };
        if addr.port() == 0 {
            return cont("port 0 (the kernel picks a port)");
        }
        let policy = self.policy.get();
        if !policy.could_allow(addr.ip(), addr.port()) {
            return cont("not allowed by policy (the kernel decides)");
        }
        let Some(place) = reserve_close(self.share) else {
            return cont(CLOSES_WAITING_REASON);
        };
        let (sock, cached) = match self.grab(cx, n, fd) {
            Ok(s) => s,
            Err(None) => return None,
            Err(Some(reason)) => return cont(reason),
        };
        // One SO_NETNS_COOKIE names the socket's netns for the policy and the
        // threshold, and comes first: a getsockopt answers ENOTSOCK for any other
        // file without reaching its file system, where an xattr read or an ioctl
        // would ask a FUSE server (which may never answer). The caller is parked
        // in this call, so its netns cannot change under us.
        let cookie = match crate::sys::socket_netns_cookie(&sock) {
            Err(Errno::NOTSOCK) => {
                let_go_of_file(sock, place);
                return cont("the fd is not a socket");
            }
            c => c.ok(),
        };
        // A socket's close waits for nobody.
        drop(place);
        let proto = match socket_proto(&sock, addr) {
            Ok(p) => p,
            Err(reason) => return cont(reason),
        };
        facts.proto = Some(proto);
        let netns = cx.ports.socket_netns_with(&sock, cookie);
        facts.netns = netns.inode;
        if !policy.any_netns() {
            let kept = cached.as_ref().and_then(|c| c.link.as_deref());
            let caller = caller_netns(kept, n.tid, || cx.listener.id_valid(n.id));
            let same = caller
                .inode()
                .and_then(|ino| cx.ports.in_netns(&netns, n.tid, ino));
            match (caller, cached) {
                (CallerNetns::Gone, _) => return None,
                // A link proven the caller's, kept with the pidfd that reached
                // the caller's fd table: both name the same thread.
                (CallerNetns::Opened(_, link), Some(c)) => {
                    self.pidfds.keep_link(n.tid, &c.pidfd, link);
                }
                _ => {}
            }
            if same.is_none() && out_of_descriptors(&sock) {
                // Naming a netns may take a descriptor (`SIOCGSKNS`, or a
                // socket made in the caller's): that is why it is unknown.
                self.pidfds.shrink();
                return cont(EMFILE_REASON);
            }
            if same != Some(true) {
                return cont("the socket lives in another network namespace than the caller; the policy allows only the caller's (netns = \"any\" widens it)");
            }
        }
        if !policy.allows(proto, addr.ip(), addr.port()) {
            return cont("not allowed by policy (the kernel decides)");
        }
        // `[::]` takes `0.0.0.0` too unless the socket is IPV6_V6ONLY, and any
        // thread (or process) sharing the socket can clear that option up to the
        // very bind, which cannot be undone. So the IPv6 wildcard is granted only
        // where the IPv4 one is too, whatever the option says now.
        if is_ipv6_wildcard(addr)
            && !policy.allows(proto, Ipv4Addr::UNSPECIFIED.into(), addr.port())
        {
            return cont(DUAL_STACK_REASON);
        }
        if addr.port() >= cx.ports.for_socket_in(&sock, n.tid, netns.cookie) {
            return cont("unprivileged port");
        }
        match rustix::net::bind(&sock, &addr) {
            Ok(()) => Some((
                Response::Value(0),
                Decision::Bind,
                "allowed by policy",
                Some(sock),
            )),
            Err(Errno::INVAL) if self.restarted(&sock, &addr) => Some((
                Response::Value(0),
                Decision::AlreadyBound,
                "restarted call; already bound to this address",
                Some(sock),
            )),
            Err(e) => Some((
                Response::Error(e),
                Decision::Bind,
                "allowed by policy; bind failed",
                None,
            )),
        }
    }
}

/// `pidfd_getfd` on a caller's pidfd. Callers' pidfds are always real ones; a
/// `/proc` handle, which the call would reject, is refused the same way (EBADF).
fn getfd_from(thread: &PidFd, fd: i32) -> rustix::io::Result<OwnedFd> {
    match thread.as_pidfd() {
        Some(p) => pidfd_getfd(p, fd, PidfdGetfdFlags::empty()),
        None => Err(Errno::BADF),
    }
}

/// Our copy of the caller's sockaddr, checked the way `inet_bind`/`inet6_bind` do.
/// `inet_bind` accepts `AF_UNSPEC` as `AF_INET` when the address is `INADDR_ANY`
/// (an old compatibility rule); `inet6_bind` accepts only `AF_INET6`, which the
/// socket check then enforces.
pub(crate) fn parse_sockaddr(family: i32, raw: &[u8]) -> Result<SocketAddr, &'static str> {
    match family {
        libc::AF_UNSPEC if raw.len() >= SOCKADDR_IN_LEN && raw[4..8] == [0; 4] => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                port,
            )))
        }
        libc::AF_UNSPEC if raw.len() >= SOCKADDR_IN_LEN => {
            Err("AF_UNSPEC with an address other than INADDR_ANY (the kernel answers EAFNOSUPPORT)")
        }
        libc::AF_INET if raw.len() >= SOCKADDR_IN_LEN => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if raw.len() >= SOCKADDR_IN6_MIN => {
            let port = u16::from_be_bytes([raw[2], raw[3]]);
            let flow = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&raw[8..24]);
            let scope = if raw.len() >= 28 {
                u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]])
            } else {
                0
            };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(octets),
                port,
                flow,
                scope,
            )))
        }
        libc::AF_INET | libc::AF_INET6 | libc::AF_UNSPEC => {
            Err("address shorter than its family needs (the kernel answers EINVAL)")
        }
        _ => Err("not an IP address"),
    }
}

/// TCP or UDP, if `sock` is a socket of `addr`'s family; otherwise why the kernel
/// should decide.
///
/// One `fgetxattr(system.sockprotoname)` answers what `SO_DOMAIN`, `SO_TYPE` and
/// `SO_PROTOCOL` would: it is the name of the protocol the socket was made with
/// (`TCP`, `TCPv6`, `UDP`, `UDPv6`; `RAW`, `PING`, `MPTCP`, `UDP-Lite`, `UNIX`,
/// ... for everything else). The name is the one the socket was made with: an
/// IPv6 TCP or UDP socket turned IPv4 by `IPV6_ADDRFORM` is still `TCPv6` or
/// `UDPv6`, and once disconnected it is unbound again, so an IPv6 name with an
/// IPv4 address asks the socket's family now (`SO_DOMAIN`); a socket cannot turn
/// IPv6, so nothing else needs the extra call.
fn socket_proto(sock: &OwnedFd, addr: SocketAddr) -> Result<Proto, &'static str> {
    let (v6, proto) = protocol_name(sock)?;
    let v6 = v6
        && (addr.is_ipv6()
            || rustix::net::sockopt::socket_domain(sock)
                .map_or(true, |d| d == rustix::net::AddressFamily::INET6));
    if v6 != addr.is_ipv6() {
        return Err("socket family differs from the address family");
    }
    Ok(proto)
}

/// Whether `sock` was made as an IPv6 socket, and TCP or UDP, from its protocol
/// name.
fn protocol_name(sock: &OwnedFd) -> Result<(bool, Proto), &'static str> {
    let mut name = [0u8; 16];
    let n = rustix::fs::fgetxattr(sock, "system.sockprotoname", &mut name)
        .map_err(|_| "the fd is not a socket")?;
    inet_protocol(&name[..n]).ok_or("not a TCP or UDP socket")
}

/// The family (IPv6 or not) and protocol a `system.sockprotoname` value names.
fn inet_protocol(name: &[u8]) -> Option<(bool, Proto)> {
    match name.strip_suffix(b"\0").unwrap_or(name) {
        b"TCP" => Some((false, Proto::Tcp)),
        b"TCPv6" => Some((true, Proto::Tcp)),
        b"UDP" => Some((false, Proto::Udp)),
        b"UDPv6" => Some((true, Proto::Udp)),
        _ => None,
    }
}

/// Before Linux 6.9 there are no thread pidfds; a pidfd of the thread's process
/// reaches the same fd table. The tgid is read from `/proc/TID/status`; the
/// ID_VALID that follows the memory read proves the thread (so its process, so the
/// number) stayed alive from before this lookup until after it.
pub(super) fn thread_group_pidfd(tid: i32) -> crate::Result<PidFd> {
    let tgid = crate::procfs::status(tid)
        .ok()
        .and_then(|st| st.tgid)
        .ok_or(crate::Error::NoSuchProcess { pid: tid })?;
    tracing::debug!(tid, tgid, "no PIDFD_THREAD; using the thread group's pidfd");
    PidFd::open(tgid)
}

/// Whether `addr` is the IPv6 wildcard, which a socket without `IPV6_V6ONLY`
/// binds together with the IPv4 one.
fn is_ipv6_wildcard(addr: SocketAddr) -> bool {
    matches!(addr, SocketAddr::V6(a) if a.ip().is_unspecified())
}

const DUAL_STACK_REASON: &str = "[::] takes 0.0.0.0 too unless IPV6_V6ONLY is set, which the program can clear up to the bind; the policy does not allow 0.0.0.0 (the kernel decides)";

pub(super) const CLOSES_WAITING_REASON: &str = "closes of earlier copies of this program's (its pod's) files still wait for their server (a FUSE server holding FLUSH?); no copy is taken (the kernel decides)";
const EMFILE_REASON: &str =
    "the supervisor is out of file descriptors (EMFILE; the kernel decides)";
const NO_PIDFD_REASON: &str = "cannot open a pidfd for the caller (the kernel decides)";
const NO_FD_REASON: &str = "no such fd in the caller (the kernel answers)";

/// Whether our descriptor table is full (a `F_DUPFD_CLOEXEC` of `fd` fails
/// `EMFILE`); asked only on the rare path where something could not be named.
fn out_of_descriptors(fd: impl AsFd) -> bool {
    matches!(
        rustix::io::fcntl_dupfd_cloexec(fd, 0),
        Err(Errno::MFILE | Errno::NFILE)
    )
}

/// Why no pidfd could be opened for a thread.
enum OpenFailure {
    /// Our table is full even after shrinking the cache.
    TooManyFiles,
    Other,
}

fn is_emfile(e: &crate::Error) -> bool {
    match e {
        crate::Error::Io { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::EMFILE) | Some(libc::ENFILE)
        ),
        crate::Error::TooManyFiles { .. } => true,
        _ => false,
    }
}

impl BindHandler {
    /// Opens and caches a pidfd for `tid`. On `EMFILE` half the cache is closed
    /// and the open retried once.
    fn open_thread(&self, tid: i32) -> Result<Arc<PidFd>, OpenFailure> {
        let open = || match PidFd::open_thread(tid) {
            Err(crate::Error::Unsupported { .. }) => thread_group_pidfd(tid),
            r => r,
        };
        let opened = match open() {
            Err(e) if is_emfile(&e) => {
                let closed = self.pidfds.shrink();
                tracing::warn!(
                    tid,
                    closed,
                    "EMFILE opening a pidfd; shrank the pidfd cache"
                );
                open()
            }
            r => r,
        };
        match opened {
            Ok(p) => Ok(self.keep(tid, p)),
            Err(e) if is_emfile(&e) => Err(OpenFailure::TooManyFiles),
            Err(_) => Err(OpenFailure::Other),
        }
    }

    /// Caches `p` for `tid` if it is a thread pidfd. A thread group's pidfd
    /// (before Linux 6.9) outlives the thread it was opened for: a later thread
    /// of another process with the same tid would reach the first process's fds
    /// through it, so it serves one request only (opened and validated with
    /// `ID_VALID` each time).
    fn keep(&self, tid: i32, p: PidFd) -> Arc<PidFd> {
        if p.is_thread() {
            self.pidfds.insert(self.owner, tid, p)
        } else {
            Arc::new(p)
        }
    }

    /// A fresh pidfd for the request's thread, validated: the thread was in the
    /// call before the open (the read's ID_VALID) and still is after it, so the
    /// tid named it throughout.
    fn fresh_thread(
        &self,
        cx: &Context<'_>,
        n: &Notification,
    ) -> Result<CachedThread, Option<&'static str>> {
        let opened = self.open_thread(n.tid);
        if !cx.listener.id_valid(n.id) {
            if opened.is_ok() {
                self.pidfds.remove(n.tid);
            }
            return Err(None);
        }
        opened
            .map(|pidfd| CachedThread { pidfd, link: None })
            .map_err(|f| {
                Some(match f {
                    OpenFailure::TooManyFiles => EMFILE_REASON,
                    OpenFailure::Other => NO_PIDFD_REASON,
                })
            })
    }

    /// Copies the caller's fd `fd`, with the cache entry (pidfd and netns link)
    /// that reached it when the pidfd is a cached one. `Err(None)`: the request
    /// is gone; `Err(Some(why))`: the kernel should decide.
    fn grab(
        &mut self,
        cx: &Context<'_>,
        n: &Notification,
        fd: i32,
    ) -> Result<(OwnedFd, Option<CachedThread>), Option<&'static str>> {
        let getfd_error = |e: Errno| match e {
            Errno::SRCH => None,
            Errno::MFILE | Errno::NFILE => Some(EMFILE_REASON),
            _ => Some(NO_FD_REASON),
        };
        let (thread, fresh) = match self.pidfds.entry(self.owner, n.tid) {
            Some(c) => (c, false),
            None => (self.fresh_thread(cx, n)?, true),
        };
        match getfd_from(&thread.pidfd, fd) {
            Ok(s) => return Ok((s, self.cached(thread))),
            // The cached pidfd named an earlier thread with this tid.
            Err(Errno::SRCH) if !fresh => {}
            Err(e @ (Errno::MFILE | Errno::NFILE)) => {
                self.pidfds.shrink();
                return getfd_from(&thread.pidfd, fd)
                    .map(|s| (s, None))
                    .map_err(|_| getfd_error(e));
            }
            Err(e) => return Err(getfd_error(e)),
        }
        self.pidfds.remove(n.tid);
        let thread = self.fresh_thread(cx, n)?;
        let sock = getfd_from(&thread.pidfd, fd).map_err(getfd_error)?;
        Ok((sock, self.cached(thread)))
    }

    /// `thread` if its pidfd is a cached thread pidfd (a thread group's, before
    /// Linux 6.9, serves one request and keeps no link).
    fn cached(&self, thread: CachedThread) -> Option<CachedThread> {
        thread.pidfd.is_thread().then_some(thread)
    }

    /// Whether `sock` is one we bound to `want` for a call its caller left.
    fn restarted(&mut self, sock: &OwnedFd, want: &SocketAddr) -> bool {
        let Some(key) = socket_key(sock) else {
            return false;
        };
        match self.unanswered.get(&key) {
            Some(addr) if addr == want && bound_to(sock, want) => {
                self.unanswered.remove(&key);
                true
            }
            _ => false,
        }
    }
}

fn bound_to(sock: &OwnedFd, want: &SocketAddr) -> bool {
    let Ok(name) = rustix::net::getsockname(sock) else {
        return false;
    };
    match SocketAddr::try_from(name) {
        Ok(have) => have.port() == want.port() && have.ip() == want.ip(),
        Err(_) => false,
    }
}

fn family_name(f: i32) -> String {
    match f {
        libc::AF_UNSPEC => "unspec".into(),
        libc::AF_INET => "inet".into(),
        libc::AF_INET6 => "inet6".into(),
        libc::AF_UNIX => "unix".into(),
        libc::AF_NETLINK => "netlink".into(),
        libc::AF_PACKET => "packet".into(),
        other => other.to_string(),
    }
}

fn audit(
    cx: &Context<'_>,
    n: &Notification,
    facts: &mut Facts,
    response: Response,
    decision: Decision,
    reason: &str,
    owner: u64,
) {
    let inet = matches!(
        facts.call.family,
        Some(libc::AF_INET | libc::AF_INET6 | libc::AF_UNSPEC)
    );
    if facts.proto.is_none() && inet {
        facts.proto = facts
            .call
            .fd
            .and_then(|fd| peek_transport(n.tid, fd, owner, || cx.listener.id_valid(n.id)));
    }
    write_audit(
        cx.audit, cx.labels, n.tid, facts, response, decision, reason,
    );
}

/// The protocol of the caller's socket `fd`, for an audit line the decision did
/// not need it for. Read from the socket's `system.sockprotoname` attribute (the
/// kernel's protocol name) through `/proc` when we may search the caller's fd
/// directory: a copy of the socket (`pidfd_getfd`) moves it into our cgroup-v1
/// net_cls/net_prio class, changing a socket handed back untouched. Otherwise
/// (the agent keeps no DAC capability, and a non-root caller's fd directory is
/// its own) a pidfd and a copy, both closed at once; but not where the copy
/// could re-tag the socket (v1 net_cls/net_prio cgroups in use): then unknown.
/// The pidfd is opened by tid after the decision: `still_caller` (an
/// `ID_VALID`) proves it names the caller before anything is copied out of it,
/// so that no other process's socket is touched.
///
/// An xattr read of anything but a socket would reach the file's file system (a
/// FUSE server, which may never answer): the fd must be a socket first, by its
/// `/proc` link's text (`socket:[INODE]`) or, for our copy, by a `getsockopt`.
/// Between the link's text and the read another thread may put a file at the
/// number; that narrow window remains on this audit-only path.
fn peek_transport(
    tid: i32,
    fd: i32,
    owner: u64,
    still_caller: impl FnOnce() -> bool,
) -> Option<Proto> {
    let path = format!("/proc/{tid}/fd/{fd}");
    let mut name = [0u8; 16];
    match rustix::fs::readlink(&path, Vec::new()) {
        Ok(link) if link.as_bytes().starts_with(b"socket:") => {
            match rustix::fs::getxattr(&path, "system.sockprotoname", &mut name) {
                Ok(n) => return inet_protocol(&name[..n]).map(|(_, p)| p),
                Err(Errno::ACCESS) => {}
                Err(_) => return None,
            }
        }
        Ok(_) => return None,
        Err(Errno::ACCESS) => {}
        Err(_) => return None,
    }
    if super::audit::copying_a_socket_retags_it() {
        return None;
    }
    let thread = match PidFd::open_thread(tid) {
        Err(crate::Error::Unsupported { .. }) => thread_group_pidfd(tid),
        r => r,
    }
    .ok()?;
    if !still_caller() {
        return None;
    }
    let place = reserve_close(owner)?;
    let sock = getfd_from(&thread, fd).ok()?;
    if crate::sys::socket_netns_cookie(&sock) == Err(Errno::NOTSOCK) {
        let_go_of_file(sock, place);
        return None;
    }
    protocol_name(&sock).ok().map(|(_, p)| p)
}

/// Closes of copies of callers' files that may still wait (see
/// [`let_go_of_file`]): per owner (the agent's pod or container; 0 under
/// `run` and the handover), and how many run on threads of their own.
struct Closing {
    by_owner: Vec<OwnerCloses>,
    threads: usize,
    /// Callers waiting on [`CLOSING_FREED`]: only then is it told (a wake-up is
    /// a system call, and every bind the policy could allow gives a place back).
    waiters: usize,
}

/// One owner's places: `taken` before its copy is known to be a socket (given
/// back within microseconds, since that check waits on nothing), `closing` once
/// spent on a close that may wait for ever.
#[derive(Clone, Copy, Debug)]
struct OwnerCloses {
    owner: u64,
    taken: usize,
    closing: usize,
}

static CLOSING: std::sync::Mutex<Closing> = std::sync::Mutex::new(Closing {
    by_owner: Vec::new(),
    threads: 0,
    waiters: 0,
});
/// Told when a place is given back.
static CLOSING_FREED: std::sync::Condvar = std::sync::Condvar::new();
/// The most such threads at once, over all owners: each may wait for ever.
const MAX_CLOSING: usize = 64;
/// The most such closes one owner may have waiting, on threads or on its
/// worker: one container holding its files' flushes cannot take the others'
/// places, and a container restarted again and again cannot leave a worker
/// stuck in a close each time.
const MAX_CLOSING_PER_OWNER: usize = 4;
/// How long a caller waits for one of its owner's places that another caller
/// has only taken: a pod's containers binding at the same moment must not see
/// the kernel refuse a bind for a place that comes back at once. Places spent
/// on closes are not waited for.
const TAKEN_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// How long the serving thread waits for a close handed to a thread of its own.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Where a close that may wait is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// On a thread of its own.
    Thread,
    /// On the calling worker: every thread is taken.
    Here,
}

fn closing() -> std::sync::MutexGuard<'static, Closing> {
    CLOSING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes a place for one of `owner`'s closes; `None` when it has
/// [`MAX_CLOSING_PER_OWNER`] closes waiting, or places taken by other callers
/// that were not given back within [`TAKEN_WAIT`].
fn take_closing_place(owner: u64) -> Option<Place> {
    let deadline = std::time::Instant::now() + TAKEN_WAIT;
    let mut g = closing();
    loop {
        let i = match g.by_owner.iter().position(|c| c.owner == owner) {
            Some(i) => i,
            None => {
                g.by_owner.push(OwnerCloses {
                    owner,
                    taken: 0,
                    closing: 0,
                });
                g.by_owner.len() - 1
            }
        };
        let c = g.by_owner[i];
        if c.taken + c.closing < MAX_CLOSING_PER_OWNER {
            g.by_owner[i].taken += 1;
            break;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if c.taken == 0 || left.is_zero() {
            return None;
        }
        g.waiters += 1;
        g = match CLOSING_FREED.wait_timeout(g, left) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
        g.waiters -= 1;
    }
    // Where a close is made is decided when the place is spent: a place only
    // taken for a check must not take a closer thread from a close that waits.
    Some(Place::Here)
}

/// Gives back a place taken ([`take_closing_place`]), or `spent` on a close
/// that is now done.
fn give_closing_place_back(owner: u64, place: Place, spent: bool) {
    let mut g = closing();
    if let Some(i) = g.by_owner.iter().position(|c| c.owner == owner) {
        let c = &mut g.by_owner[i];
        if spent {
            c.closing -= 1;
        } else {
            c.taken -= 1;
        }
        if c.taken + c.closing == 0 {
            g.by_owner.swap_remove(i);
        }
    }
    if place == Place::Thread {
        g.threads -= 1;
    }
    wake_waiters(g);
}

/// Tells the callers waiting for places, if any, that one changed.
fn wake_waiters(g: std::sync::MutexGuard<'static, Closing>) {
    let any = g.waiters > 0;
    drop(g);
    if any {
        CLOSING_FREED.notify_all();
    }
}

/// A place for one of `owner`'s closes, taken before a caller's fd is copied
/// ([`reserve_close`]) and held until the copy is known to be a socket: given
/// back on drop, or spent by [`let_go_of_file`] until its close is done.
pub(super) struct ClosePlace {
    owner: u64,
    place: Place,
    spent: bool,
}

impl ClosePlace {
    /// Counts the place as a close that may wait: no longer worth waiting for.
    fn spend(&mut self) {
        let mut g = closing();
        if let Some(c) = g.by_owner.iter_mut().find(|c| c.owner == self.owner) {
            c.taken -= 1;
            c.closing += 1;
        }
        if g.threads < MAX_CLOSING {
            g.threads += 1;
            self.place = Place::Thread;
        }
        self.spent = true;
        // A caller waiting for this owner's places must not wait for this one.
        wake_waiters(g);
    }
}

/// Takes a place for one more close of `owner`'s, or `None` when it has
/// [`MAX_CLOSING_PER_OWNER`] waiting (or taken by callers that keep them past
/// [`TAKEN_WAIT`]). A caller's fd is copied only with one: the copy of a file
/// that is no socket must be closed, and past the owner's places that close
/// could only be made where nothing bounds it. The check and the take are one
/// step, so that callers serving one owner at once (a pod's containers) cannot
/// all pass on its last place.
pub(super) fn reserve_close(owner: u64) -> Option<ClosePlace> {
    take_closing_place(owner).map(|place| ClosePlace {
        owner,
        place,
        spent: false,
    })
}

impl Drop for ClosePlace {
    fn drop(&mut self) {
        give_closing_place_back(self.owner, self.place, self.spent);
    }
}

/// Closes our copy of a caller's fd that is not a socket, off the thread that
/// serves the listener. Closing a FUSE file is a `FLUSH` request to its server,
/// which the kernel waits out uninterruptibly once the server has taken it: a
/// server that never answers would hold the worker (and the caller, still
/// unanswered) for ever. One owner may have [`MAX_CLOSING_PER_OWNER`] such
/// closes waiting, and [`MAX_CLOSING`] wait on threads in all; past the
/// latter the close is made here, and counts against the owner's places all
/// the same. Callers take the place ([`reserve_close`]) before they copy a
/// caller's fd, so that past its places an owner's copies are not taken at
/// all (else: made here).
///
/// The caller is answered only once the close is done or [`CLOSE_WAIT`] has
/// passed: a copy still open after the answer keeps what the file holds (a
/// `flock`, a pipe's writer, a tty's session) past the caller's own close.
pub(super) fn let_go_of_file(copy: OwnedFd, mut place: ClosePlace) {
    place.spend();
    if place.place == Place::Here {
        // The place is given back once the close is done.
        drop(copy);
        return;
    }
    let (done, closed) = std::sync::mpsc::sync_channel::<()>(1);
    let closer = std::thread::Builder::new()
        .name("fdgrab-close".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            drop(copy);
            drop(place);
            let _ = done.send(());
        });
    // A closure that could not start was dropped, with the copy and the place.
    if closer.is_ok() {
        let _ = closed.recv_timeout(CLOSE_WAIT);
    }
}

/// Audits a bind answered without looking at it (a deadline passed, or an
/// earlier read of the caller's memory is still blocked).
pub(crate) fn audit_unread(
    audit: &AuditSink,
    labels: &AuditLabels,
    tid: i32,
    errno: Errno,
    reason: &str,
) {
    if audit.is_enabled() {
        let facts = Facts::default();
        let response = Response::Error(errno);
        write_audit(
            audit,
            labels,
            tid,
            &facts,
            response,
            Decision::Refused,
            reason,
        );
    }
}

fn write_audit(
    audit: &AuditSink,
    labels: &AuditLabels,
    tid: i32,
    facts: &Facts,
    response: Response,
    decision: Decision,
    reason: &str,
) {
    let status = crate::procfs::status(tid).ok();
    let exe = std::fs::read_link(format!("/proc/{tid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let errno = match response {
        Response::Value(_) => Some(0),
        Response::Error(e) => Some(e.raw_os_error()),
        Response::Continue => None,
    };
    let rec = AuditRecord {
        time: rfc3339_now(),
        pid: status.as_ref().and_then(|s| s.tgid),
        tid,
        exe,
        uid: status.as_ref().and_then(|s| s.uids).map(|u| u[1]),
        syscall: "bind",
        family: facts.call.family.map(family_name),
        proto: facts.proto.map(|p| match p {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }),
        address: facts.call.addr.map(|a| a.ip().to_string()),
        port: facts.call.addr.map(|a| a.port()),
        decision,
        errno,
        reason,
        container_id: labels.container_id.as_deref(),
        bundle: labels.bundle.as_deref(),
        pod: labels.pod.as_deref(),
        namespace: labels.namespace.as_deref(),
        container_name: labels.container_name.as_deref(),
        netns: facts.netns.or_else(|| thread_netns_inode(tid)),
        owner: labels.owner,
    };
    audit.write(&rec);
}

/// `IpAddr` of a parsed sockaddr, for tests.
#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn sockaddr_parsing_follows_the_kernel() {
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&80u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        let a = parse_sockaddr(libc::AF_INET, &v4).expect("v4");
        assert_eq!(a, "127.0.0.1:80".parse().expect("addr"));
        assert!(parse_sockaddr(libc::AF_INET, &v4[..15]).is_err());
        let mut v6 = [0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[23] = 1;
        let a = parse_sockaddr(libc::AF_INET6, &v6[..24]).expect("rfc2133 length");
        assert_eq!(a.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(a.port(), 443);
        assert!(parse_sockaddr(libc::AF_INET6, &v6[..23]).is_err());
        assert!(parse_sockaddr(libc::AF_UNIX, &v6).is_err());
        // AF_UNSPEC is the IPv4 wildcard when its address is INADDR_ANY, as in
        // inet_bind; anything else is the kernel's EAFNOSUPPORT.
        let mut unspec = [0u8; 16];
        unspec[2..4].copy_from_slice(&80u16.to_be_bytes());
        let a = parse_sockaddr(libc::AF_UNSPEC, &unspec).expect("wildcard");
        assert_eq!(a, "0.0.0.0:80".parse().expect("addr"));
        assert!(parse_sockaddr(libc::AF_UNSPEC, &unspec[..15]).is_err());
        unspec[4] = 127;
        assert!(parse_sockaddr(libc::AF_UNSPEC, &unspec).is_err());
    }

    /// Every outcome [`decode_bind`] can turn into an answer of ours (the
    /// kernel judging the call) needs the claim, not only a read that worked:
    /// with the claim gone to a watchdog that answered `ETIMEDOUT`, the handler
    /// must not audit a decision that is never sent. Here an address length the
    /// kernel judges (no read) and a caller outside our pid namespace (a read
    /// that cannot be made); neither touches the listener.
    #[test]
    fn an_answer_of_ours_needs_the_claim_whatever_the_read_did() {
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd");
        let listener = crate::seccomp::Listener::from_fd(fd);
        let notif = |tid: i32, addrlen: u64| Notification {
            id: 1,
            tid,
            data: crate::seccomp::SyscallData {
                nr: libc::SYS_bind as i32,
                arch: crate::seccomp::bpf::NATIVE_AUDIT_ARCH,
                instruction_pointer: 0,
                args: [3, 0x1000, addrlen, 0, 0, 0],
            },
        };
        for n in [notif(1, 1), notif(0, 16)] {
            let mut args = BindArgs::default();
            let taken = decode_bind(&listener, &n, &mut args, None, || false);
            assert_eq!(
                taken,
                Err(Undecoded::Gone),
                "claimed by someone else: {n:?}"
            );
            let mut args = BindArgs::default();
            let ours = decode_bind(&listener, &n, &mut args, None, || true);
            assert!(matches!(ours, Err(Undecoded::Kernel(_))), "{ours:?}");
        }
    }

    /// A place spent on a close that waits, as [`let_go_of_file`] spends it.
    fn waiting_close(owner: u64) -> Option<ClosePlace> {
        reserve_close(owner).map(|mut p| {
            p.spend();
            p
        })
    }

    /// One owner takes at most its share of the places for closes that may
    /// wait; others still find theirs on threads up to the agent-wide cap,
    /// and past it on their own worker, which counts against their share all
    /// the same. A place given back is there again.
    #[test]
    fn closing_places_are_shared_per_owner() {
        let _serial = places_serial();
        let mut held = Vec::new();
        for _ in 0..MAX_CLOSING_PER_OWNER {
            let p = waiting_close(1).expect("its share");
            assert_eq!(p.place, Place::Thread);
            held.push(p);
        }
        assert!(reserve_close(1).is_none(), "past its share");
        let others = (MAX_CLOSING - MAX_CLOSING_PER_OWNER) / MAX_CLOSING_PER_OWNER;
        for owner in 2..2 + others as u64 {
            for _ in 0..MAX_CLOSING_PER_OWNER {
                let p = waiting_close(owner).expect("its share");
                assert_eq!(p.place, Place::Thread, "{owner}");
                held.push(p);
            }
        }
        let mut late = Vec::new();
        for _ in 0..MAX_CLOSING_PER_OWNER {
            let p = waiting_close(999).expect("its share");
            assert_eq!(p.place, Place::Here, "no thread left");
            late.push(p);
        }
        assert!(
            reserve_close(999).is_none(),
            "closes on its worker count too"
        );
        late.clear();
        // Owner 1's first close is done.
        held.remove(0);
        assert!(reserve_close(1).is_some());
        let p = waiting_close(999).expect("a place given back");
        assert_eq!(p.place, Place::Thread, "a thread given back");
        drop(p);
        held.clear();
        let g = closing();
        assert!(g.by_owner.is_empty() && g.threads == 0 && g.waiters == 0);
    }

    /// Places only taken for checks take no closer thread: a close spent once
    /// they are given back gets a thread of its own, not the caller's worker.
    #[test]
    fn places_only_taken_leave_the_closer_threads_free() {
        let _serial = places_serial();
        let mut held = Vec::new();
        for owner in 0..(MAX_CLOSING / MAX_CLOSING_PER_OWNER) as u64 {
            for _ in 0..MAX_CLOSING_PER_OWNER {
                held.push(reserve_close(5000 + owner).expect("taken"));
            }
        }
        let mut late = reserve_close(9999).expect("a place");
        held.clear();
        late.spend();
        assert_eq!(late.place, Place::Thread);
        drop(late);
        let g = closing();
        assert!(
            g.by_owner.is_empty() && g.threads == 0 && g.waiters == 0,
            "all given back"
        );
    }

    /// A place another caller has only taken (its copy not yet known to be a
    /// socket) comes back at once: a caller that finds its owner's places all
    /// taken so waits for one, rather than have the kernel refuse its bind.
    #[test]
    fn a_place_only_taken_is_waited_for() {
        let _serial = places_serial();
        let mut taken: Vec<_> = (0..MAX_CLOSING_PER_OWNER)
            .map(|_| reserve_close(8).expect("its share"))
            .collect();
        std::thread::scope(|s| {
            let late = s.spawn(|| reserve_close(8).is_some());
            // Pacing only: the late caller is most likely waiting by now.
            std::thread::sleep(std::time::Duration::from_millis(5));
            taken.pop();
            assert!(late.join().expect("the late caller"), "served");
        });
        taken.clear();
        let g = closing();
        assert!(
            g.by_owner.is_empty() && g.threads == 0 && g.waiters == 0,
            "all given back"
        );
    }

    /// The tests that count the process-wide places, one at a time.
    fn places_serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Callers serving one owner at once (a pod's containers, each on its own
    /// worker) all ask for its places together: no more of them get one than
    /// it has while the first ones keep theirs, and a place not spent on a
    /// close is there again once dropped. (A check that took nothing let every
    /// one of them pass.)
    #[test]
    fn close_places_are_taken_by_whoever_checks() {
        let _serial = places_serial();
        let callers = 4 * MAX_CLOSING_PER_OWNER;
        let start = std::sync::Barrier::new(callers);
        let held = std::sync::Barrier::new(callers);
        let got = std::thread::scope(|s| {
            let workers: Vec<_> = (0..callers)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        let place = reserve_close(7);
                        // Nobody gives a place back before everyone has asked.
                        held.wait();
                        place.is_some()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a caller"))
                .filter(|&got| got)
                .count()
        });
        assert_eq!(got, MAX_CLOSING_PER_OWNER);
        let g = closing();
        assert!(
            g.by_owner.is_empty() && g.threads == 0 && g.waiters == 0,
            "all given back"
        );
    }

    /// Only a thread pidfd is kept for a tid: it fails with `ESRCH` once its
    /// thread is gone. A thread group's pidfd (kernels before 6.9) stays valid
    /// while its process lives, so a later thread of *another* process given the
    /// same tid would be served from the first process's fd table.
    #[test]
    fn only_thread_pidfds_are_cached() {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let h = BindHandler::new(Arc::new(Policy::default()));
        let group = PidFd::open(me).expect("pidfd of our process");
        assert!(!group.is_thread());
        h.keep(me, group);
        assert!(
            h.pidfds.get(me).is_none(),
            "a thread group's pidfd is not kept"
        );
        match PidFd::open_thread(me) {
            Ok(thread) => {
                h.keep(me, thread);
                assert!(h.pidfds.get(me).is_some(), "a thread pidfd is kept");
            }
            Err(crate::Error::Unsupported { .. }) => {
                fdgrab_testkit::skip("PIDFD_THREAD needs Linux 6.9")
            }
            Err(e) => panic!("thread pidfd: {e}"),
        }
    }

    #[test]
    fn thread_group_pidfd_of_a_non_leader_thread() {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(rustix::thread::gettid().as_raw_nonzero().get())
                .expect("send");
            let _ = done_rx.recv();
        });
        let tid = rx.recv().expect("tid");
        assert_ne!(tid, me);
        let p = thread_group_pidfd(tid).expect("pidfd of the thread group");
        assert_eq!(p.pid(), me);
        assert!(!p.is_thread());
        done_tx.send(()).expect("done");
        t.join().expect("join");
    }
}
