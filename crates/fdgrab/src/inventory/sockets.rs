//! Socket details for the inventory, resolved in the **target's** network
//! namespace: `/proc/PID/net/*` shows the namespace of PID, not ours, and the unix
//! socket dump is made on a netlink socket created inside that namespace.

pub(crate) use super::socket_info::{tcp_state, unix_info, unix_type};
pub use super::socket_info::{Endpoint, SocketInfo};
use super::{inet_diag, sock_diag, unix_diag};
use crate::error::{Error, Result};
use crate::{Pid, TargetFd};
use rustix::fs::{openat, Mode, OFlags};
use rustix::io::Errno;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};

/// Up to this many sockets are looked up one protocol (unix: one inode) at a time.
const FEW_SOCKETS: usize = 16;

/// Which tables a listing needs.
#[derive(Default)]
struct Want {
    /// TCP, UDP over IPv4 and IPv6.
    tcp: [bool; 2],
    udp: [bool; 2],
    unix: bool,
    /// The TCP sockets to find, when known: if they all listen, the listening
    /// hash alone answers and the (often much larger) established one is not walked.
    tcp_inodes: Vec<u64>,
    /// Unix sockets to look up by inode; `None`: dump them all.
    unix_inodes: Option<Vec<u64>>,
    /// `/proc/PID/net` text tables: (file, family, protocol, type).
    text: Vec<(&'static str, &'static str, &'static str, &'static str)>,
}

impl Want {
    fn all() -> Self {
        Self {
            tcp: [true; 2],
            udp: [true; 2],
            unix: true,
            tcp_inodes: Vec::new(),
            unix_inodes: None,
            text: vec![
                ("net/udplite", "inet", "udplite", "dgram"),
                ("net/udplite6", "inet6", "udplite", "dgram"),
                ("net/raw", "inet", "raw", "raw"),
                ("net/raw6", "inet6", "raw", "raw"),
                ("net/netlink", "", "", ""),
                ("net/packet", "", "", ""),
            ],
        }
    }

    fn needs_diag(&self) -> bool {
        self.tcp.contains(&true) || self.udp.contains(&true) || self.unix
    }
}

/// All sockets of the target's network namespace, keyed by inode.
pub(crate) struct SocketTable {
    pub(crate) by_inode: HashMap<u64, SocketInfo>,
}

impl SocketTable {
    /// Every socket of `pid`'s network namespace.
    pub(crate) fn load(pid: Pid, proc_dir: &OwnedFd) -> Result<Self> {
        Self::load_some(pid, proc_dir, &Want::all())
    }

    /// Just enough to describe the sockets `held` (inode, fd number) by `pid`. A
    /// handful are sorted by protocol first (the `system.sockprotoname` xattr, no
    /// socket touched) so that only their protocols' tables are read, unix sockets
    /// by inode; beyond that, dumping everything is cheaper than asking.
    pub(crate) fn load_for(
        pid: Pid,
        proc_dir: &OwnedFd,
        fd_dir: &OwnedFd,
        held: &[(u64, TargetFd)],
    ) -> Result<Self> {
        if held.len() > FEW_SOCKETS {
            return Self::load(pid, proc_dir);
        }
        let mut want = Want {
            unix_inodes: Some(Vec::new()),
            ..Want::default()
        };
        for &(ino, fd) in held {
            match sockprotoname(fd_dir, &fd.as_raw().to_string()).as_deref() {
                Some(p @ ("TCP" | "TCPv6")) => {
                    want.tcp[usize::from(p == "TCPv6")] = true;
                    want.tcp_inodes.push(ino);
                }
                // An MPTCP socket is described by its TCP subflows, which the
                // kernel grafts onto its inode (as lsof and ss show it); an
                // IPv6 one may run an IPv4 subflow, so both tables are asked.
                Some("MPTCP" | "MPTCPv6") => {
                    want.tcp = [true, true];
                    want.tcp_inodes.push(ino);
                }
                Some("UDP") => want.udp[0] = true,
                Some("UDPv6") => want.udp[1] = true,
                Some(p) if p.starts_with("UNIX") => {
                    if let Some(inodes) = &mut want.unix_inodes {
                        inodes.push(ino);
                    }
                    want.unix = true;
                }
                Some("NETLINK") => want.text.push(("net/netlink", "", "", "")),
                Some("PACKET") => want.text.push(("net/packet", "", "", "")),
                Some("RAW") => want.text.push(("net/raw", "inet", "raw", "raw")),
                Some("RAWv6") => want.text.push(("net/raw6", "inet6", "raw", "raw")),
                Some("UDP-Lite") => want.text.push(("net/udplite", "inet", "udplite", "dgram")),
                Some("UDPLITEv6") => want
                    .text
                    .push(("net/udplite6", "inet6", "udplite", "dgram")),
                // Gone meanwhile, or a protocol no table lists (the xattr names it).
                _ => {}
            }
        }
        want.text.sort_unstable();
        want.text.dedup();
        Self::load_some(pid, proc_dir, &want)
    }

    fn load_some(pid: Pid, proc_dir: &OwnedFd, want: &Want) -> Result<Self> {
        // sock_diag answers per protocol and filters by state in the kernel, so it
        // skips the TIME_WAIT entries that make /proc/net/tcp slow on busy hosts.
        // Without it (no CAP_SYS_ADMIN over a foreign netns, or a missing diag
        // module) the /proc text tables say the same, minus unix peers.
        let mut t = SocketTable {
            by_inode: HashMap::new(),
        };
        let diag = if want.needs_diag() {
            sock_diag::socket_in(proc_dir).and_then(|sock| t.fill_from_diag(&sock, want))
        } else {
            Ok(())
        };
        let mut text_tables = want.text.clone();
        if let Err(e) = diag {
            tracing::debug!(pid, error = %e, "sock_diag unavailable; reading /proc/PID/net");
            t.by_inode.clear();
            for (i, v6) in [false, true].into_iter().enumerate() {
                let (tcp, udp) = if v6 {
                    (("net/tcp6", "inet6"), ("net/udp6", "inet6"))
                } else {
                    (("net/tcp", "inet"), ("net/udp", "inet"))
                };
                if want.tcp[i] {
                    text_tables.push((tcp.0, tcp.1, "tcp", "stream"));
                }
                if want.udp[i] {
                    text_tables.push((udp.0, udp.1, "udp", "dgram"));
                }
            }
            if want.unix {
                if let Some(text) = read_proc(pid, proc_dir, "net/unix")? {
                    t.parse_unix(&text);
                }
            }
        }
        for (file, family, proto, ty) in text_tables {
            let Some(text) = read_proc(pid, proc_dir, file)? else {
                continue;
            };
            match file {
                "net/netlink" => t.parse_netlink(&text),
                "net/packet" => t.parse_packet(&text),
                _ => t.parse_inet(&text, family, proto, ty),
            }
        }
        Ok(t)
    }

    fn fill_from_diag(&mut self, sock: &OwnedFd, want: &Want) -> std::io::Result<()> {
        let mut tcp_states = inet_diag::STATES_WITH_INODE;
        let mut shared = std::collections::HashSet::new();
        if !want.tcp_inodes.is_empty() {
            let socks = inet_diag::dump_tcp(sock, want.tcp, inet_diag::STATES_LISTEN, None)?;
            inet_diag::insert_all(&mut self.by_inode, socks, &mut shared);
            tcp_states &= !inet_diag::STATES_LISTEN;
            if want
                .tcp_inodes
                .iter()
                .all(|i| self.by_inode.contains_key(i))
            {
                tcp_states = 0;
            }
        }
        if want.tcp.contains(&true) && tcp_states != 0 {
            let socks = inet_diag::dump_tcp(sock, want.tcp, tcp_states, None)?;
            inet_diag::insert_all(&mut self.by_inode, socks, &mut shared);
        }
        if want.udp.contains(&true) {
            let socks = inet_diag::dump_udp(sock, want.udp, inet_diag::STATES_ALL, None)?;
            inet_diag::insert_all(&mut self.by_inode, socks, &mut shared);
        }
        let states = inet_diag::STATES_WITH_INODE;
        inet_diag::describe_mptcp(sock, states, None, &mut self.by_inode, &shared);
        match (&want.unix_inodes, want.unix) {
            (_, false) => {}
            (Some(inodes), true) => {
                for &ino in inodes {
                    if let Some(s) = unix_diag::lookup(sock, ino)? {
                        self.by_inode.insert(s.inode, s.info);
                    }
                }
            }
            (None, true) => self.by_inode.extend(
                unix_diag::dump(sock)?
                    .into_iter()
                    .map(|s| (s.inode, s.info)),
            ),
        }
        Ok(())
    }

    pub(crate) fn into_map(self) -> HashMap<u64, SocketInfo> {
        self.by_inode
    }

    /// The socket with inode `ino`. A socket we do not find in any table (it may
    /// have been created after the dump, or be of a family we do not parse) is
    /// named through the `system.sockprotoname` xattr, still without touching it.
    pub(crate) fn lookup(&self, ino: u64, fd_dir: &OwnedFd, fd: TargetFd) -> SocketInfo {
        match self.by_inode.get(&ino) {
            Some(s) => s.clone(),
            None => Self::unknown(fd_dir, fd),
        }
    }

    /// A socket found in no table, named by its `system.sockprotoname` xattr.
    pub(crate) fn unknown(fd_dir: &OwnedFd, fd: TargetFd) -> SocketInfo {
        let name = fd.as_raw().to_string();
        SocketInfo::unknown(sockprotoname(fd_dir, &name))
    }

    pub(crate) fn parse_inet(&mut self, text: &str, family: &str, proto: &str, ty: &str) {
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
                // Closed, port 0 names no peer: a socket that never connected
                // has an all-zero one, one disconnected keeps the address
                // alone. An attempt to port 0 (SYN_SENT) still has one.
                "tcp" => (
                    Some(tcp_state(st).to_string()),
                    (st != 10 && !(st == 7 && peer.port == Some(0))).then_some(peer),
                ),
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

    pub(crate) fn parse_netlink(&mut self, text: &str) {
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
                    local: Some(Endpoint::unix(format!("portid={}", f[2]))),
                    peer: None,
                    peer_inode: None,
                },
            );
        }
    }

    pub(crate) fn parse_packet(&mut self, text: &str) {
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

    pub(crate) fn parse_unix(&mut self, text: &str) {
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
                    // The kernel prints an abstract name's NULs as '@'.
                    f.get(7).map(|p| match p.strip_prefix('@') {
                        Some(name) => Endpoint::unix_bytes(&[b"\0", name.as_bytes()].concat()),
                        None => Endpoint::unix(p.to_string()),
                    }),
                    None,
                ),
            );
        }
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
    let tcp = inet_diag::dump_tcp(sock, [true, true], tcp_states, None)?;
    let udp = inet_diag::dump_udp(sock, [true, true], inet_diag::STATES_ALL, None)?;
    let mut table: HashMap<u64, SocketInfo> = tcp
        .into_iter()
        .chain(udp)
        .map(|s| (s.inode, s.info))
        .collect();
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

pub(crate) fn parse_hex_endpoint(s: &str) -> Option<Endpoint> {
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
                // `get`: a field that is not ASCII must not split a character.
                let v = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
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
