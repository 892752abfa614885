//! What the inventory knows about one socket, in the form the sock_diag dumps
//! (`inet_diag`, `unix_diag`) and the `/proc/PID/net` fallback produce it. A leaf:
//! the dumps build these values and `sockets` gathers them, so neither imports the
//! other for the types.

use serde::Serialize;
use std::net::IpAddr;

/// One end of a socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// IP address, for inet sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Port, for inet sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// File system path, or `@name` for an abstract unix address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The exact address bytes when `path` alone does not give them back: an
    /// abstract name (its first byte is the NUL shown as `@`) or a name that is not
    /// UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<Vec<u8>>,
}

impl Endpoint {
    pub(crate) fn inet(ip: IpAddr, port: u16) -> Self {
        Self {
            address: Some(ip.to_string()),
            port: Some(port),
            path: None,
            path_bytes: None,
        }
    }

    pub(super) fn unix(path: String) -> Self {
        Self {
            address: None,
            port: None,
            path: Some(path),
            path_bytes: None,
        }
    }

    /// A unix address from the kernel's bytes: a leading NUL marks an abstract name,
    /// shown as `@`; a path name ends at its first NUL.
    pub(crate) fn unix_bytes(addr: &[u8]) -> Self {
        let (shown, exact) = match addr.split_first() {
            Some((0, name)) => {
                let mut shown = b"@".to_vec();
                shown.extend_from_slice(name);
                (
                    String::from_utf8_lossy(&shown).into_owned(),
                    Some(addr.to_vec()),
                )
            }
            _ => {
                let end = addr.iter().position(|&b| b == 0).unwrap_or(addr.len());
                super::names::split_utf8(addr[..end].to_vec())
            }
        };
        Self {
            path_bytes: exact,
            ..Self::unix(shown)
        }
    }

    /// The IP address, parsed.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.as_deref()?.parse().ok()
    }

    /// As shown in a NAME column: the abstract name's leading NUL as `@`, every
    /// other byte exact.
    fn describe_bytes(&self) -> Vec<u8> {
        match (self.ip(), self.port, &self.path) {
            (Some(IpAddr::V6(ip)), Some(port), _) => format!("[{ip}]:{port}").into_bytes(),
            (Some(ip), Some(port), _) => format!("{ip}:{port}").into_bytes(),
            (_, _, Some(p)) => match &self.path_bytes {
                Some(b) if b.first() == Some(&0) => [b"@", &b[1..]].concat(),
                Some(b) => b.clone(),
                None => p.clone().into_bytes(),
            },
            _ => Vec::new(),
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
    /// The address it is bound to; `None` when unbound.
    pub local: Option<Endpoint>,
    /// The address it is connected to; `None` when unconnected.
    pub peer: Option<Endpoint>,
    /// For connected unix sockets: the inode of the socket at the other end.
    pub peer_inode: Option<u64>,
}

impl SocketInfo {
    pub(super) fn unknown(protocol: Option<String>) -> Self {
        let family = match protocol.as_deref() {
            Some(p) if p.starts_with("UNIX") => "unix",
            Some(p) if p.ends_with("v6") => "inet6",
            Some("TCP" | "UDP" | "RAW" | "UDP-Lite" | "PING" | "MPTCP") => "inet",
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

    /// A one-line description like `lsof`'s NAME column (lossy UTF-8).
    pub fn describe(&self) -> String {
        String::from_utf8_lossy(&self.describe_bytes()).into_owned()
    }

    /// [`SocketInfo::describe`] with unix names as exact bytes.
    pub fn describe_bytes(&self) -> Vec<u8> {
        let mut s = Vec::new();
        if let Some(l) = &self.local {
            s.extend_from_slice(&l.describe_bytes());
        }
        if let Some(p) = &self.peer {
            s.extend_from_slice(b"->");
            s.extend_from_slice(&p.describe_bytes());
        }
        if self.family == "unix" {
            if !s.is_empty() {
                s.push(b' ');
            }
            s.extend_from_slice(b"type=");
            let ty = self.socket_type.as_deref().unwrap_or("?").to_uppercase();
            s.extend_from_slice(ty.as_bytes());
            if let Some(ino) = self.peer_inode {
                s.extend_from_slice(format!(" ->INO={ino}").as_bytes());
            }
        } else if s.is_empty() {
            let proto = self.protocol.as_deref().unwrap_or("?");
            s = format!("{} {proto}", self.family).into_bytes();
        }
        if let Some(state) = &self.state {
            s.extend_from_slice(format!(" ({state})").as_bytes());
        }
        s
    }
}

pub(crate) fn unix_info(
    ty: &str,
    state: &str,
    path: Option<Endpoint>,
    peer_inode: Option<u64>,
) -> SocketInfo {
    SocketInfo {
        family: "unix".into(),
        socket_type: Some(ty.into()),
        protocol: Some("unix".into()),
        state: Some(state.into()),
        local: path,
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
