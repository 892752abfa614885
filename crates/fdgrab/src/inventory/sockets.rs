//! Socket details for the inventory, resolved in the **target's** network
//! namespace: `/proc/PID/net/*` shows the namespace of PID, not ours, and the unix
//! socket dump is made on a netlink socket created inside that namespace.

use super::{inet_diag, sock_diag, unix_diag};
use crate::error::{Error, Result};
use crate::{Pid, TargetFd};
use rustix::fs::{openat, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};

/// One end of a socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// IP address, for inet sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// File system path, or `@name` for an abstract unix address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Endpoint {
    fn inet(ip: IpAddr, port: u16) -> Self {
        Self {
            address: Some(ip.to_string()),
            port: Some(port),
            path: None,
        }
    }

    fn unix(path: String) -> Self {
        Self {
            address: None,
            port: None,
            path: Some(path),
        }
    }

    /// The IP address, parsed.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.as_deref()?.parse().ok()
    }

    fn describe(&self) -> String {
        match (self.ip(), self.port, &self.path) {
            (Some(IpAddr::V6(ip)), Some(port), _) => format!("[{ip}]:{port}"),
            (Some(ip), Some(port), _) => format!("{ip}:{port}"),
            (_, _, Some(p)) => p.clone(),
            _ => String::new(),
        }
    }
}

/// What the inventory knows about a socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SocketInfo {
    /// `inet`, `inet6`, `unix`, `netlink`, `packet`, or `unknown`.
    pub family: String,
    /// `stream`, `dgram`, `seqpacket`, `raw`, when known.
    #[serde(rename = "type")]
    pub socket_type: Option<String>,
    /// `tcp`, `udp`, `udplite`, `raw`, `unix`, `netlink:<n>`, `packet`, ...
    pub protocol: Option<String>,
    /// TCP state names (`LISTEN`, `ESTABLISHED`, ...) for TCP; for unix sockets
    /// `LISTEN`, `CONNECTED`, `UNCONNECTED`, `CONNECTING`; `UNCONN`/`CONNECTED` for UDP.
    pub state: Option<String>,
    pub local: Option<Endpoint>,
    pub peer: Option<Endpoint>,
    /// For connected unix sockets: the inode of the socket at the other end.
    pub peer_inode: Option<u64>,
}

impl SocketInfo {
    fn unknown(protocol: Option<String>) -> Self {
        let family = match protocol.as_deref() {
            Some(p) if p.starts_with("UNIX") => "unix",
            Some(p) if p.ends_with("v6") => "inet6",
            Some("TCP" | "UDP" | "RAW" | "UDP-Lite" | "PING") => "inet",
            Some("NETLINK") => "netlink",
            Some("PACKET") => "packet",
            _ => "unknown",
        };
        Self {
            family: family.into(),
            socket_type: None,
            protocol: protocol.map(|p| p.to_lowercase()),
            state: None,
            local: None,
            peer: None,
            peer_inode: None,
        }
    }

    /// A one-line description like `lsof`'s NAME column.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(l) = &self.local {
            s.push_str(&l.describe());
        }
        if let Some(p) = &self.peer {
            s.push_str("->");
            s.push_str(&p.describe());
        }
        if self.family == "unix" {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str("type=");
            s.push_str(&self.socket_type.as_deref().unwrap_or("?").to_uppercase());
            if let Some(ino) = self.peer_inode {
                s.push_str(&format!(" ->INO={ino}"));
            }
        } else if s.is_empty() {
            s = format!(
                "{} {}",
                self.family,
                self.protocol.as_deref().unwrap_or("?")
            );
        }
        if let Some(state) = &self.state {
            s.push_str(&format!(" ({state})"));
        }
        s
    }
}

/// All sockets of the target's network namespace, keyed by inode.
pub(crate) struct SocketTable {
    by_inode: HashMap<u64, SocketInfo>,
}

impl SocketTable {
    pub(crate) fn load(pid: Pid, proc_dir: &OwnedFd) -> Result<Self> {
        // sock_diag answers per protocol and filters by state in the kernel, so it
        // skips the TIME_WAIT entries that make /proc/net/tcp slow on busy hosts.
        // Without it (no CAP_SYS_ADMIN over a foreign netns, or a missing diag
        // module) the /proc text tables say the same, minus unix peers.
        let diag = sock_diag::socket_in(proc_dir)
            .and_then(|sock| diag_table(&sock, inet_diag::STATES_WITH_INODE));
        let mut text_tables = vec![
            ("net/udplite", "inet", "udplite", "dgram"),
            ("net/udplite6", "inet6", "udplite", "dgram"),
            ("net/raw", "inet", "raw", "raw"),
            ("net/raw6", "inet6", "raw", "raw"),
        ];
        let mut t = match diag {
            Ok(by_inode) => SocketTable { by_inode },
            Err(e) => {
                tracing::debug!(pid, error = %e, "sock_diag unavailable; reading /proc/PID/net");
                text_tables.extend([
                    ("net/tcp", "inet", "tcp", "stream"),
                    ("net/tcp6", "inet6", "tcp", "stream"),
                    ("net/udp", "inet", "udp", "dgram"),
                    ("net/udp6", "inet6", "udp", "dgram"),
                ]);
                let mut t = SocketTable {
                    by_inode: HashMap::new(),
                };
                if let Some(text) = read_proc(pid, proc_dir, "net/unix")? {
                    t.parse_unix(&text);
                }
                t
            }
        };
        for (file, family, proto, ty) in text_tables {
            if let Some(text) = read_proc(pid, proc_dir, file)? {
                t.parse_inet(&text, family, proto, ty);
            }
        }
        if let Some(text) = read_proc(pid, proc_dir, "net/netlink")? {
            t.parse_netlink(&text);
        }
        if let Some(text) = read_proc(pid, proc_dir, "net/packet")? {
            t.parse_packet(&text);
        }
        Ok(t)
    }

    /// The socket with inode `ino`. A socket we do not find in any table (it may
    /// have been created after the dump, or be of a family we do not parse) is
    /// named through the `system.sockprotoname` xattr, still without touching it.
    pub(crate) fn lookup(&self, ino: u64, fd_dir: &OwnedFd, fd: TargetFd) -> SocketInfo {
        if let Some(s) = self.by_inode.get(&ino) {
            return s.clone();
        }
        let name = fd.as_raw().to_string();
        let proto = sockprotoname(fd_dir, &name);
        SocketInfo::unknown(proto)
    }

    fn parse_inet(&mut self, text: &str, family: &str, proto: &str, ty: &str) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let Ok(inode) = f[9].parse::<u64>() else {
                continue;
            };
            if inode == 0 {
                continue; // TIME_WAIT and request sockets have no inode
            }
            let (Some(local), Some(peer)) = (parse_hex_endpoint(f[1]), parse_hex_endpoint(f[2]))
            else {
                continue;
            };
            let st = u8::from_str_radix(f[3], 16).unwrap_or(0);
            let (state, peer) = match proto {
                "tcp" => (Some(tcp_state(st).to_string()), (st != 10).then_some(peer)),
                "raw" => (None, (!is_unspecified(&peer)).then_some(peer)),
                _ => {
                    let connected = st == 1;
                    (
                        Some(if connected { "CONNECTED" } else { "UNCONN" }.to_string()),
                        connected.then_some(peer),
                    )
                }
            };
            let protocol = if proto == "raw" {
                // The "port" of a raw socket is its IP protocol number.
                format!("raw:{}", local.port.unwrap_or(0))
            } else {
                proto.to_string()
            };
            self.by_inode.insert(
                inode,
                SocketInfo {
                    family: family.into(),
                    socket_type: Some(ty.into()),
                    protocol: Some(protocol),
                    state,
                    local: Some(local),
                    peer,
                    peer_inode: None,
                },
            );
        }
    }

    fn parse_netlink(&mut self, text: &str) {
        // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let Ok(inode) = f[9].parse::<u64>() else {
                continue;
            };
            let proto = netlink_protocol(f[1].parse().unwrap_or(-1));
            self.by_inode.insert(
                inode,
                SocketInfo {
                    family: "netlink".into(),
                    socket_type: None,
                    protocol: Some(proto),
                    state: None,
                    local: Some(Endpoint {
                        address: None,
                        port: None,
                        path: Some(format!("portid={}", f[2])),
                    }),
                    peer: None,
                    peer_inode: None,
                },
            );
        }
    }

    fn parse_packet(&mut self, text: &str) {
        // sk RefCnt Type Proto Iface R Rmem User Inode
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 {
                continue;
            }
            let Ok(inode) = f[8].parse::<u64>() else {
                continue;
            };
            let ty = match f[2] {
                "2" => "dgram",
                "3" => "raw",
                _ => "packet",
            };
            self.by_inode.insert(
                inode,
                SocketInfo {
                    family: "packet".into(),
                    socket_type: Some(ty.into()),
                    protocol: Some(format!("packet:0x{}", f[3])),
                    state: None,
                    local: None,
                    peer: None,
                    peer_inode: None,
                },
            );
        }
    }

    fn parse_unix(&mut self, text: &str) {
        // Num RefCount Protocol Flags Type St Inode Path
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 7 {
                continue;
            }
            let Ok(inode) = f[6].parse::<u64>() else {
                continue;
            };
            let flags = u32::from_str_radix(f[3], 16).unwrap_or(0);
            let ty = u16::from_str_radix(f[4], 16).unwrap_or(0);
            let st = u8::from_str_radix(f[5], 16).unwrap_or(0);
            let state = if flags & 0x0001_0000 != 0 {
                "LISTEN"
            } else {
                match st {
                    1 => "UNCONNECTED",
                    2 => "CONNECTING",
                    3 => "CONNECTED",
                    4 => "DISCONNECTING",
                    _ => "UNKNOWN",
                }
            };
            self.by_inode.insert(
                inode,
                unix_info(
                    unix_type(ty.into()),
                    state,
                    f.get(7).map(|p| p.to_string()),
                    None,
                ),
            );
        }
    }
}

pub(crate) fn unix_info(
    ty: &str,
    state: &str,
    path: Option<String>,
    peer_inode: Option<u64>,
) -> SocketInfo {
    SocketInfo {
        family: "unix".into(),
        socket_type: Some(ty.into()),
        protocol: Some("unix".into()),
        state: Some(state.into()),
        local: path.map(Endpoint::unix),
        peer: None,
        peer_inode,
    }
}

pub(crate) fn unix_type(ty: u32) -> &'static str {
    match ty {
        1 => "stream",
        2 => "dgram",
        5 => "seqpacket",
        _ => "unknown",
    }
}

/// TCP sockets whose state is in `tcp_states`, every UDP socket and every unix
/// socket of the network namespace the sock_diag socket `sock` was made in, by
/// inode. Any refused dump (a missing `udp_diag` module, say) is the error, so the
/// caller can fall back as a whole.
pub(crate) fn diag_table(
    sock: &OwnedFd,
    tcp_states: u32,
) -> std::io::Result<HashMap<u64, SocketInfo>> {
    let mut table = HashMap::new();
    for (family, protocol, states) in [
        (libc::AF_INET, libc::IPPROTO_TCP, tcp_states),
        (libc::AF_INET6, libc::IPPROTO_TCP, tcp_states),
        (libc::AF_INET, libc::IPPROTO_UDP, inet_diag::STATES_ALL),
        (libc::AF_INET6, libc::IPPROTO_UDP, inet_diag::STATES_ALL),
    ] {
        let socks = inet_diag::dump(sock, family as u8, protocol as u8, states)?;
        table.extend(socks.into_iter().map(|s| (s.inode, s.info)));
    }
    table.extend(
        unix_diag::dump(sock)?
            .into_iter()
            .map(|s| (s.inode, s.info)),
    );
    Ok(table)
}

fn read_proc(pid: Pid, proc_dir: &OwnedFd, file: &str) -> Result<Option<String>> {
    let f = match openat(
        proc_dir,
        file,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(f) => f,
        // The protocol is not built into this kernel.
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::SRCH) => return Err(Error::NoSuchProcess { pid }),
        Err(e) => return Err(Error::io("open /proc/PID/net", pid, None, e)),
    };
    let mut out = Vec::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        match rustix::io::read(&f, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::INTR) => {}
            Err(e) => return Err(Error::io("read /proc/PID/net", pid, None, e)),
        }
    }
    Ok(Some(String::from_utf8_lossy(&out).into_owned()))
}

fn parse_hex_endpoint(s: &str) -> Option<Endpoint> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => {
            // The kernel prints the big-endian address as a host-order u32.
            let v = u32::from_str_radix(addr, 16).ok()?;
            IpAddr::V4(Ipv4Addr::from(v.to_ne_bytes()))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                let v = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                bytes[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(Endpoint::inet(ip, port))
}

fn is_unspecified(e: &Endpoint) -> bool {
    e.ip().is_none_or(|ip| ip.is_unspecified())
}

pub(crate) fn tcp_state(st: u8) -> &'static str {
    match st {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

fn netlink_protocol(n: i32) -> String {
    let name = match n {
        0 => "route",
        2 => "usersock",
        4 => "sock_diag",
        6 => "xfrm",
        9 => "audit",
        10 => "fib_lookup",
        12 => "netfilter",
        15 => "kobject_uevent",
        16 => "generic",
        _ => return format!("netlink:{n}"),
    };
    format!("netlink:{name}")
}

fn sockprotoname(fd_dir: &OwnedFd, name: &str) -> Option<String> {
    // getxattr needs a path; /proc/self/fd/DIRFD/NAME reaches the entry without
    // opening the socket itself.
    let path = format!(
        "/proc/self/fd/{}/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd_dir.as_fd()),
        name
    );
    let mut buf = [0u8; 64];
    let n = rustix::fs::getxattr(path.as_str(), "system.sockprotoname", &mut buf).ok()?;
    let s = std::str::from_utf8(&buf[..n]).ok()?;
    Some(s.trim_end_matches('\0').to_string())
}
