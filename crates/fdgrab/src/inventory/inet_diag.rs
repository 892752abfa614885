//! `NETLINK_SOCK_DIAG` dumps of TCP and UDP sockets (`sock_diag(7)`), filtered by
//! state inside the kernel. Asking for listening TCP sockets walks only the
//! listening hash, whereas reading `/proc/PID/net/tcp` walks the whole established
//! hash as well: several milliseconds on a host with a large table, however few
//! sockets it holds. `fdgrab exec` uses this to find listeners quickly.

use super::sock_diag::{self, request_header, typed_request_header, NLM_F_DUMP, TCPDIAG_GETSOCK};
use super::socket_info::{Endpoint, SocketInfo};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// `1 << TCP_LISTEN`.
pub(crate) const STATES_LISTEN: u32 = 1 << 10;
/// Every state.
pub(crate) const STATES_ALL: u32 = u32::MAX;
/// Every state a socket with an inode can be in: TIME_WAIT (6) and NEW_SYN_RECV
/// (12) entries are kernel-internal mini sockets that no fd refers to, and on a busy
/// host they outnumber the real ones many times over.
pub(crate) const STATES_WITH_INODE: u32 = !((1 << 6) | (1 << 12));

/// One socket from a dump.
#[derive(Debug)]
pub(crate) struct InetSock {
    pub inode: u64,
    pub info: SocketInfo,
}

/// `INET_DIAG_REQ_BYTECODE`: a filter program attached to a dump request.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// Filter ops (`enum` in `linux/inet_diag.h`): source / destination port equal.
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_EQ: u8 = 11;
const INET_DIAG_BC_D_EQ: u8 = 12;

/// Dumps the `protocol` (`IPPROTO_TCP`/`IPPROTO_UDP`) sockets of one address
/// family whose state is in `states`, on a sock_diag socket made in the right
/// network namespace. With `port`, the kernel itself keeps only sockets whose local
/// or remote port is `port` (a bytecode filter, Linux 4.16+ for the `*_EQ` ops), so
/// a host with a large table sends back only what was asked for.
pub(crate) fn dump(
    sock: &OwnedFd,
    family: u8,
    protocol: u8,
    states: u32,
    port: Option<u16>,
) -> std::io::Result<Vec<InetSock>> {
    dump_as(sock, family, protocol, None, states, port)
}

/// `dump`, with `wide_protocol` (one that does not fit the request's u8, as
/// MPTCP's 262) asked for through `INET_DIAG_REQ_PROTOCOL`; the sockets are
/// then parsed as `protocol`'s.
fn dump_as(
    sock: &OwnedFd,
    family: u8,
    protocol: u8,
    wide_protocol: Option<u32>,
    states: u32,
    port: Option<u16>,
) -> std::io::Result<Vec<InetSock>> {
    let filter = bytecode_attribute(port);
    let attr_len = filter.len() + wide_protocol.map_or(0, |_| 8);
    // struct nlmsghdr + struct inet_diag_req_v2 (56 bytes, socket id all zero),
    // then the optional bytecode and protocol attributes.
    let mut req = request_header((72 + attr_len) as u32, NLM_F_DUMP);
    req.extend_from_slice(&[family, protocol, 0, 0]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    req.extend_from_slice(&filter);
    if let Some(p) = wide_protocol {
        req.extend_from_slice(&8u16.to_ne_bytes());
        req.extend_from_slice(&INET_DIAG_REQ_PROTOCOL.to_ne_bytes());
        req.extend_from_slice(&p.to_ne_bytes());
    }
    collect(sock, &req, protocol)
}

/// The TCP sockets of the address families in `families` (IPv4, IPv6) whose
/// state is in `states`, on `port` if given.
///
/// The kernel keeps IPv4 and IPv6 TCP sockets in one established hash and walks
/// every bucket of it for any dump that asks for more than listeners, whatever
/// the family asked for: 1.5–1.7 ms for the 262,144 buckets of a 23 GB host
/// holding 30 sockets. One request per family walked it twice. `inet_diag`'s
/// original interface (`TCPDIAG_GETSOCK`) dumps both families in one walk, and
/// is asked where both are wanted; a kernel that refuses it is asked once per
/// family.
pub(crate) fn dump_tcp(
    sock: &OwnedFd,
    families: [bool; 2],
    states: u32,
    port: Option<u16>,
) -> std::io::Result<Vec<InetSock>> {
    dump_tcp_as(sock, TCPDIAG_GETSOCK, families, states, port)
}

/// [`dump_tcp`], asking for both families with a request of type `both`.
fn dump_tcp_as(
    sock: &OwnedFd,
    both: u16,
    families: [bool; 2],
    states: u32,
    port: Option<u16>,
) -> std::io::Result<Vec<InetSock>> {
    if families == [true, true] && !BOTH_REFUSED.load(Ordering::Relaxed) {
        // Only the kernel's refusal of the request leads to the per-family dumps;
        // any other failure may have left part of the answer on the socket.
        match tcp_of_both_families(sock, both, states, port)? {
            Ok(socks) => return Ok(socks),
            // The kernel without the request (EINVAL) or without inet_diag's
            // handler for it (EOPNOTSUPP, ENOENT); any other error (ENOMEM, say)
            // is not about the request, and fails this dump alone.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOENT)
                ) =>
            {
                BOTH_REFUSED.store(true, Ordering::Relaxed);
                tracing::debug!(error = %e, "TCPDIAG_GETSOCK refused; one TCP dump per address family")
            }
            Err(e) => return Err(e),
        }
    }
    per_family(sock, libc::IPPROTO_TCP as u8, families, states, port)
}

/// The UDP sockets of the address families in `families` (IPv4, IPv6) whose
/// state is in `states`, on `port` if given: one dump per family, since UDP has
/// no request for both.
pub(crate) fn dump_udp(
    sock: &OwnedFd,
    families: [bool; 2],
    states: u32,
    port: Option<u16>,
) -> std::io::Result<Vec<InetSock>> {
    per_family(sock, libc::IPPROTO_UDP as u8, families, states, port)
}

/// One `protocol` dump per address family in `families` (IPv4, IPv6).
fn per_family(
    sock: &OwnedFd,
    protocol: u8,
    families: [bool; 2],
    states: u32,
    port: Option<u16>,
) -> std::io::Result<Vec<InetSock>> {
    let mut out = Vec::new();
    for (family, wanted) in [libc::AF_INET as u8, libc::AF_INET6 as u8]
        .into_iter()
        .zip(families)
    {
        if wanted {
            out.extend(dump(sock, family, protocol, states, port)?);
        }
    }
    Ok(out)
}

/// Set once the kernel refused `TCPDIAG_GETSOCK`: not asked again in this run.
static BOTH_REFUSED: AtomicBool = AtomicBool::new(false);

/// One dump of TCP sockets of both families, by a request of type `ty`
/// (`TCPDIAG_GETSOCK`); the inner error is the kernel's refusal of the request.
fn tcp_of_both_families(
    sock: &OwnedFd,
    ty: u16,
    states: u32,
    port: Option<u16>,
) -> std::io::Result<Result<Vec<InetSock>, std::io::Error>> {
    let filter = bytecode_attribute(port);
    // struct nlmsghdr + struct inet_diag_req (60 bytes: family, two address
    // lengths, extensions, socket id, states, tables), then the bytecode. The
    // kernel dumps AF_UNSPEC whatever family the request names.
    let mut req = typed_request_header(ty, (76 + filter.len()) as u32, NLM_F_DUMP);
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    req.extend_from_slice(&[0u8; 48]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&filter);
    let mut out = Vec::new();
    let refused = sock_diag::request_or_refused(sock, &req, |p| {
        if let Some(s) = parse_msg(p, libc::IPPROTO_TCP as u8) {
            out.push(s);
        }
    })?;
    Ok(refused.map_or(Ok(out), Err))
}

/// The `INET_DIAG_REQ_BYTECODE` attribute keeping only sockets on `port`; empty
/// without a port.
fn bytecode_attribute(port: Option<u16>) -> Vec<u8> {
    let Some(port) = port else {
        return Vec::new();
    };
    let filter = port_filter(port);
    let mut attr = Vec::with_capacity(4 + filter.len());
    attr.extend_from_slice(&((4 + filter.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    attr.extend_from_slice(&filter);
    attr
}

/// Sends `req` and parses each answer as a `protocol` socket.
fn collect(sock: &OwnedFd, req: &[u8], protocol: u8) -> std::io::Result<Vec<InetSock>> {
    let mut out = Vec::new();
    sock_diag::request(sock, req, |p| {
        if let Some(s) = parse_msg(p, protocol) {
            out.push(s);
        }
    })?;
    Ok(out)
}

/// `INET_DIAG_REQ_PROTOCOL`: a u32 protocol, for those past 255.
const INET_DIAG_REQ_PROTOCOL: u16 = 3;
const IPPROTO_MPTCP: u32 = 262;

/// Puts the sockets of a dump into `by_inode`, noting in `shared` each
/// inode met again: the subflows of an MPTCP socket all carry its inode.
pub(crate) fn insert_all(
    by_inode: &mut HashMap<u64, SocketInfo>,
    socks: Vec<InetSock>,
    shared: &mut HashSet<u64>,
) {
    for s in socks {
        if by_inode.insert(s.inode, s.info).is_some() {
            shared.insert(s.inode);
        }
    }
}

/// Describes each MPTCP socket in `shared` (several subflows, one inode) by its
/// connection's own addresses, those of its first subflow as `ss -M` shows
/// them (mptcp_diag), not by whichever subflow a TCP dump gave last. One
/// subflow describes its socket exactly, so a host without such sockets pays
/// nothing; without mptcp_diag the subflow's addresses stay.
pub(crate) fn describe_mptcp(
    sock: &OwnedFd,
    states: u32,
    port: Option<u16>,
    by_inode: &mut HashMap<u64, SocketInfo>,
    shared: &HashSet<u64>,
) {
    if shared.is_empty() {
        return;
    }
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let tcp = libc::IPPROTO_TCP as u8;
        match dump_as(sock, family, tcp, Some(IPPROTO_MPTCP), states, port) {
            Ok(socks) => by_inode.extend(
                socks
                    .into_iter()
                    .filter(|s| shared.contains(&s.inode))
                    .map(|s| (s.inode, s.info)),
            ),
            Err(e) => {
                tracing::debug!(error = %e, "mptcp_diag refused; subflows describe MPTCP sockets")
            }
        }
    }
}

/// "source port == `port` or destination port == `port`" as `inet_diag_bc_op`s
/// (code, yes, no: bytes to jump forward when the test holds or fails). A port test
/// is two ops, the second carrying the port in its `no` field. Ending exactly at the
/// end accepts; jumping 4 bytes past it rejects. The kernel's audit follows the
/// `yes` jumps and wants every `no` target on that path, hence the `or` as ss
/// writes it: test, an unconditional jump to the end, the second test.
fn port_filter(port: u16) -> Vec<u8> {
    let op = |code: u8, yes: u8, no: u16| {
        let mut b = vec![code, yes];
        b.extend_from_slice(&no.to_ne_bytes());
        b
    };
    [
        op(INET_DIAG_BC_S_EQ, 8, 12), // holds: on to the jump; fails: the second test
        op(0, 0, port),
        op(INET_DIAG_BC_JMP, 4, 12),  // to the end: accept
        op(INET_DIAG_BC_D_EQ, 8, 12), // holds: the end (accept); fails: past it
        op(0, 0, port),
    ]
    .concat()
}

/// `struct inet_diag_msg`: family, state, timer, retrans; the socket id (ports in
/// network order, then 16-byte source and destination addresses, interface,
/// cookie); expires, rqueue, wqueue, uid, inode.
pub(crate) fn parse_msg(p: &[u8], protocol: u8) -> Option<InetSock> {
    if p.len() < 72 {
        return None;
    }
    let family = p[0];
    let state = p[1];
    let sport = u16::from_be_bytes([p[4], p[5]]);
    let dport = u16::from_be_bytes([p[6], p[7]]);
    let addr = |b: &[u8]| -> Option<IpAddr> {
        if family == libc::AF_INET as u8 {
            Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
        } else {
            let bytes: [u8; 16] = b.get(..16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
    };
    let src = addr(&p[8..24])?;
    let dst = addr(&p[24..40])?;
    let inode = u64::from(u32::from_ne_bytes(p[68..72].try_into().ok()?));
    if inode == 0 {
        return None;
    }
    let endpoint = Endpoint::inet;
    let (ty, proto, state_name, connected) = if protocol == libc::IPPROTO_TCP as u8 {
        // A closed socket that never connected (bound, or closed before
        // connecting) has an all-zero peer, and one disconnected
        // (`connect(AF_UNSPEC)`) keeps the address with port 0: closed, port 0
        // names no peer. An attempt to port 0 (SYN_SENT) still has one.
        let no_peer = state == 10 || (state == 7 && dport == 0);
        (
            "stream",
            "tcp",
            super::socket_info::tcp_state(state),
            !no_peer,
        )
    } else {
        // UDP reports TCP_ESTABLISHED for connected sockets and TCP_CLOSE otherwise.
        let connected = state == 1;
        (
            "dgram",
            "udp",
            if connected { "CONNECTED" } else { "UNCONN" },
            connected,
        )
    };
    Some(InetSock {
        inode,
        info: SocketInfo {
            family: if family == libc::AF_INET as u8 {
                "inet"
            } else {
                "inet6"
            }
            .into(),
            socket_type: Some(ty.into()),
            protocol: Some(proto.into()),
            state: Some(state_name.into()),
            local: Some(endpoint(src, sport)),
            peer: connected.then(|| endpoint(dst, dport)),
            peer_inode: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn inode_of(fd: &impl std::os::fd::AsRawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .expect("stat")
            .ino()
    }

    /// The IPv4 TCP sockets of our namespace with an inode, on `port` if given.
    fn tcp4_dump(port: Option<u16>) -> Vec<InetSock> {
        let sock = sock_diag::socket_here();
        let (family, tcp) = (libc::AF_INET as u8, libc::IPPROTO_TCP as u8);
        dump(&sock, family, tcp, STATES_WITH_INODE, port).expect("an IPv4 TCP dump")
    }

    /// A listener and both ends of a loopback connection, over `ip`.
    fn connection(ip: &str) -> Option<[std::os::fd::OwnedFd; 3]> {
        let listener = std::net::TcpListener::bind((ip, 0)).ok()?;
        let port = listener.local_addr().ok()?.port();
        let client = std::net::TcpStream::connect((ip, port)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        Some([listener.into(), client.into(), server.into()])
    }

    /// Our sockets among `found`, by inode, with what was said of each.
    fn ours(found: Vec<InetSock>, fds: &[std::os::fd::OwnedFd]) -> Vec<(u64, String)> {
        let mine: Vec<u64> = fds.iter().map(inode_of).collect();
        let mut out: Vec<(u64, String)> = found
            .into_iter()
            .filter(|s| mine.contains(&s.inode))
            .map(|s| (s.inode, format!("{:?}", s.info)))
            .collect();
        out.sort();
        out
    }

    /// The one walk for both families finds exactly what one dump per family
    /// finds, IPv4 and IPv6 alike; the same with a port filter, which keeps only
    /// that port's sockets; and where the kernel refuses the request (here an
    /// unknown type, EINVAL) the per-family dumps answer instead.
    #[test]
    fn one_tcp_dump_of_both_families_finds_what_one_per_family_finds() {
        let Some(v6) = connection("::1") else {
            eprintln!("SKIP: no IPv6 loopback on this host");
            return;
        };
        let v4 = connection("127.0.0.1").expect("IPv4 loopback");
        let all: Vec<_> = v4.into_iter().chain(v6).collect();
        let sock = sock_diag::socket_here();
        let tcp = libc::IPPROTO_TCP as u8;
        let per_family = |port: Option<u16>| {
            let mut found =
                dump(&sock, libc::AF_INET as u8, tcp, STATES_WITH_INODE, port).expect("IPv4 dump");
            found.extend(
                dump(&sock, libc::AF_INET6 as u8, tcp, STATES_WITH_INODE, port).expect("IPv6 dump"),
            );
            ours(found, &all)
        };
        let both = tcp_of_both_families(&sock, TCPDIAG_GETSOCK, STATES_WITH_INODE, None)
            .expect("socket")
            .expect("TCPDIAG_GETSOCK dump");
        let both = ours(both, &all);
        assert_eq!(both.len(), 6, "{both:?}");
        assert_eq!(both, per_family(None));
        let v6_port = std::net::TcpListener::from(all[3].try_clone().expect("dup"))
            .local_addr()
            .expect("addr")
            .port();
        let on_port =
            tcp_of_both_families(&sock, TCPDIAG_GETSOCK, STATES_WITH_INODE, Some(v6_port))
                .expect("socket")
                .expect("filtered TCPDIAG_GETSOCK dump");
        let on_port = ours(on_port, &all);
        assert_eq!(on_port.len(), 3, "{on_port:?}");
        assert_eq!(on_port, per_family(Some(v6_port)));
        // An unknown request type is refused, so the fallback is what answers.
        let unknown = 17;
        let refused = tcp_of_both_families(&sock, unknown, STATES_WITH_INODE, None);
        assert_eq!(
            refused
                .expect("socket")
                .err()
                .and_then(|e| e.raw_os_error()),
            Some(libc::EINVAL)
        );
        let fallback = dump_tcp_as(&sock, unknown, [true, true], STATES_WITH_INODE, None)
            .expect("per-family fallback");
        assert_eq!(ours(fallback, &all), both);
        let v4_only = dump_tcp(&sock, [true, false], STATES_WITH_INODE, None).expect("IPv4");
        assert_eq!(ours(v4_only, &all), ours_of(&both, &all[..3]));
    }

    /// The entries of `said` for the sockets `fds`.
    fn ours_of(said: &[(u64, String)], fds: &[std::os::fd::OwnedFd]) -> Vec<(u64, String)> {
        let mine: Vec<u64> = fds.iter().map(inode_of).collect();
        said.iter()
            .filter(|(i, _)| mine.contains(i))
            .cloned()
            .collect()
    }

    /// A TCP socket that is bound but neither listens nor connected (dumped from
    /// the bind hash since Linux 6.8) shows its address and no peer: the kernel
    /// gives it an all-zero peer, which named a peer 0.0.0.0:0 before. So does
    /// one disconnected by `connect(AF_UNSPEC)`, which keeps its peer's address
    /// with port 0. (`ls_query::a_connection_attempt_to_port_0_has_its_peer`:
    /// one not closed keeps it.)
    #[test]
    fn a_bound_unconnected_tcp_socket_has_no_peer() {
        use rustix::net::{bind, getsockname, socket, AddressFamily, SocketType};
        let s = socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
        bind(
            &s,
            &std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
        )
        .expect("bind");
        let port = std::net::SocketAddrV4::try_from(getsockname(&s).expect("getsockname"))
            .expect("an IPv4 address")
            .port();
        let ino = inode_of(&s);
        // Bound to a port of its own (not an ephemeral one, which a disconnect
        // gives back), connected, then disconnected: it stays in the bind hash.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let dropped = socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
        let dropped_port = loop {
            let free = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let at = std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, free);
            if bind(&dropped, &at).is_ok() {
                break free;
            }
        };
        rustix::net::connect(&dropped, &listener.local_addr().expect("addr")).expect("connect");
        rustix::net::connect_unspec(&dropped).expect("disconnect");
        let found = tcp4_dump(None);
        for (ino, port) in [(ino, port), (inode_of(&dropped), dropped_port)] {
            let info = &found
                .iter()
                .find(|f| f.inode == ino)
                .expect("in the dump")
                .info;
            assert_eq!(info.state.as_deref(), Some("CLOSE"), "{info:?}");
            let local_port = info.local.as_ref().and_then(|e| e.port);
            assert_eq!(local_port, Some(port), "{info:?}");
            assert!(info.peer.is_none(), "{info:?}");
        }
    }

    /// The kernel accepts the port filter (a refused one is EINVAL) and applies it:
    /// both ends of a loopback connection and the listener come back, and nothing
    /// on any other port.
    #[test]
    fn the_kernel_filters_by_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let other = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let found = tcp4_dump(Some(port));
        let inodes: Vec<u64> = found.iter().map(|s| s.inode).collect();
        for s in [inode_of(&listener), inode_of(&client), inode_of(&server)] {
            assert!(inodes.contains(&s), "{s} missing from {found:?}");
        }
        assert!(!inodes.contains(&inode_of(&other)));
        for s in &found {
            let ports = [&s.info.local, &s.info.peer].map(|e| e.as_ref().and_then(|e| e.port));
            assert!(ports.contains(&Some(port)), "{s:?}");
        }
    }
}
