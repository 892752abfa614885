//! `NETLINK_SOCK_DIAG` dumps of TCP and UDP sockets (`sock_diag(7)`), filtered by
//! state inside the kernel. Asking for listening TCP sockets walks only the
//! listening hash, whereas reading `/proc/PID/net/tcp` walks the whole established
//! hash as well: several milliseconds on a host with a large table, however few
//! sockets it holds. `fdgrab exec` uses this to find listeners quickly.

use super::sock_diag::{self, request_header, NLM_F_DUMP};
use super::sockets::{Endpoint, SocketInfo};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;

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

/// Dumps the `protocol` (`IPPROTO_TCP`/`IPPROTO_UDP`) sockets of one address
/// family whose state is in `states`, on a sock_diag socket made in the right
/// network namespace.
pub(crate) fn dump(
    sock: &OwnedFd,
    family: u8,
    protocol: u8,
    states: u32,
) -> std::io::Result<Vec<InetSock>> {
    // struct nlmsghdr + struct inet_diag_req_v2 (56 bytes, socket id all zero).
    let mut req = request_header(72, NLM_F_DUMP);
    req.extend_from_slice(&[family, protocol, 0, 0]);
    req.extend_from_slice(&states.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    let mut out = Vec::new();
    sock_diag::request(sock, &req, |p| {
        if let Some(s) = parse_msg(p, protocol) {
            out.push(s);
        }
    })?;
    Ok(out)
}

/// `struct inet_diag_msg`: family, state, timer, retrans; the socket id (ports in
/// network order, then 16-byte source and destination addresses, interface,
/// cookie); expires, rqueue, wqueue, uid, inode.
fn parse_msg(p: &[u8], protocol: u8) -> Option<InetSock> {
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
    let endpoint = |ip: IpAddr, port| Endpoint {
        address: Some(ip.to_string()),
        port: Some(port),
        path: None,
    };
    let (ty, proto, state_name, connected) = if protocol == libc::IPPROTO_TCP as u8 {
        (
            "stream",
            "tcp",
            super::sockets::tcp_state(state),
            state != 10,
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
