//! Selecting listening sockets by address: `tcp:ADDR:PORT`, `udp:ADDR:PORT`,
//! `unix:PATH`, `fd:N` and `*`.
//!
//! Matching works on a read-only listing of the target's sockets, so choosing
//! sockets never grabs one that is not wanted (a grab rewrites a socket's cgroup-v1
//! class ids).

use crate::inventory::{Endpoint, FdEntry, FdKind, SocketInfo};
use crate::TargetFd;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One descriptor of the target, as far as socket selection needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The number in the target.
    pub fd: TargetFd,
    /// What `/proc/PID/fd/N` points at.
    pub link: String,
    /// The socket inode, for sockets.
    pub inode: Option<u64>,
    /// Details of listening and bound sockets (others may be left out).
    pub socket: Option<SocketInfo>,
}

impl Candidate {
    /// `127.0.0.1:8080 (LISTEN)`, a path, or the link.
    pub fn display_name(&self) -> String {
        self.socket
            .as_ref()
            .map_or_else(|| self.link.clone(), SocketInfo::describe)
    }
}

impl From<&FdEntry> for Candidate {
    fn from(e: &FdEntry) -> Self {
        Candidate {
            fd: e.fd,
            link: e.link.clone(),
            inode: e.inode.filter(|_| e.kind == FdKind::Socket),
            socket: e.socket.clone(),
        }
    }
}

/// An address, or any address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrMatch {
    /// `*`: any address, the wildcards `0.0.0.0` and `::` included.
    Any,
    /// Exactly this address (an IPv4 one also as its IPv4-mapped IPv6 form).
    Exact(IpAddr),
}

/// A port, or any port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// `*`: any port.
    Any,
    /// Exactly this port.
    Exact(u16),
}

/// Which sockets of a process to hand over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// A listening TCP socket (IPv4 or IPv6).
    Tcp {
        /// The local address it listens on.
        addr: AddrMatch,
        /// The local port.
        port: PortMatch,
    },
    /// A bound, unconnected UDP socket.
    Udp {
        /// The local address it is bound to.
        addr: AddrMatch,
        /// The local port.
        port: PortMatch,
    },
    /// A listening unix stream/seqpacket socket or a bound unix datagram socket.
    Unix {
        /// The socket's path; `@name` is an abstract address.
        path: String,
    },
    /// The socket at this number in the target, which must be listening or bound.
    Fd(TargetFd),
    /// Every listening or bound socket of the target.
    All,
}

impl FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Selector::All);
        }
        let Some((kind, rest)) = s.split_once(':') else {
            return Err(format!(
                "'{s}' is not a socket selector (expected tcp:ADDR:PORT, udp:ADDR:PORT, unix:PATH, fd:N or *)"
            ));
        };
        match kind {
            "tcp" | "udp" => {
                let (addr, port) = parse_inet(rest).map_err(|why| format!("selector '{s}': {why}"))?;
                Ok(if kind == "tcp" { Selector::Tcp { addr, port } } else { Selector::Udp { addr, port } })
            }
            "unix" if rest.is_empty() || rest == "@" => {
                Err(format!("selector '{s}': the unix socket path is empty"))
            }
            "unix" => Ok(Selector::Unix { path: rest.to_string() }),
            "fd" => {
                let n: i32 = rest
                    .parse()
                    .map_err(|_| format!("selector '{s}': '{rest}' is not an fd number (expected 0, 1, 2, ...)"))?;
                TargetFd::new(n)
                    .map(Selector::Fd)
                    .ok_or_else(|| format!("selector '{s}': fd numbers are not negative"))
            }
            other => Err(format!(
                "selector '{s}': unknown kind '{other}' (expected tcp, udp, unix or fd, or * for every socket)"
            )),
        }
    }
}

fn parse_inet(rest: &str) -> Result<(AddrMatch, PortMatch), String> {
    let (addr, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (inside, after) = v6
            .split_once(']')
            .ok_or_else(|| "an IPv6 address opened with '[' needs a closing ']'".to_string())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "expected ':PORT' after the bracketed IPv6 address".to_string())?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("'{inside}' is not an IPv6 address"))?;
        (AddrMatch::Exact(IpAddr::V6(ip)), port)
    } else {
        let (addr, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| "expected ADDR:PORT".to_string())?;
        let addr = if addr == "*" {
            AddrMatch::Any
        } else if addr.contains(':') {
            return Err(format!(
                "IPv6 addresses go in brackets, as in [{addr}]:{port}"
            ));
        } else {
            let ip: Ipv4Addr = addr.parse().map_err(|_| {
                format!("'{addr}' is not an IPv4 address (use * for any, [ADDR] for IPv6)")
            })?;
            AddrMatch::Exact(IpAddr::V4(ip))
        };
        (addr, port)
    };
    let port = if port == "*" {
        PortMatch::Any
    } else {
        match port.parse::<u16>() {
            Ok(0) => return Err("port 0 is never listening; give the bound port or *".into()),
            Ok(p) => PortMatch::Exact(p),
            Err(_) => return Err(format!("'{port}' is not a port number (1-65535 or *)")),
        }
    };
    Ok((addr, port))
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Tcp { addr, port } => write!(f, "tcp:{}", InetDisplay(*addr, *port)),
            Selector::Udp { addr, port } => write!(f, "udp:{}", InetDisplay(*addr, *port)),
            Selector::Unix { path } => write!(f, "unix:{path}"),
            Selector::Fd(fd) => write!(f, "fd:{fd}"),
            Selector::All => f.write_str("*"),
        }
    }
}

struct InetDisplay(AddrMatch, PortMatch);

impl fmt::Display for InetDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            AddrMatch::Any => f.write_str("*")?,
            AddrMatch::Exact(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            AddrMatch::Exact(ip) => write!(f, "{ip}")?,
        }
        match self.1 {
            PortMatch::Any => f.write_str(":*"),
            PortMatch::Exact(p) => write!(f, ":{p}"),
        }
    }
}

impl Selector {
    /// The name a socket gets in `LISTEN_FDNAMES` when `--name` does not give one:
    /// the selector with each `:` turned into `-` (systemd forbids `:` in names),
    /// e.g. `tcp-127.0.0.1-8080`, `unix-/run/app.sock`, `fd-3`. Anything else a
    /// name may not hold (a unix path's spaces or non-ASCII characters) becomes `_`,
    /// and a name longer than systemd's 255 characters keeps its last 255 (a
    /// path's end tells most): the user never chose this name, so it must never
    /// be what refuses the command.
    pub fn default_fd_name(&self) -> String {
        let name: String = self
            .to_string()
            .chars()
            .map(|c| match c {
                ':' => '-',
                c if c.is_ascii_graphic() => c,
                _ => '_',
            })
            .collect();
        if name == "*" {
            return "listen".into();
        }
        // ASCII by now: one byte per character.
        name[name.len().saturating_sub(super::spawn::MAX_FD_NAME)..].to_string()
    }

    /// Whether `entry` is a socket this selector takes. `fd:N` matches on the number
    /// alone; callers check that the socket is listening or bound.
    pub fn matches(
        &self,
        entry: &Candidate,
        resolve_target_path: impl Fn(&str) -> Option<String>,
    ) -> bool {
        if let Selector::Fd(fd) = self {
            return entry.fd == *fd;
        }
        let Some(sock) = entry.socket.as_ref() else {
            return false;
        };
        if !is_listening_or_bound(sock) {
            return false;
        }
        match self {
            Selector::Tcp { addr, port } => {
                sock.protocol.as_deref() == Some("tcp")
                    && inet_matches(sock.local.as_ref(), *addr, *port)
            }
            Selector::Udp { addr, port } => {
                sock.protocol.as_deref() == Some("udp")
                    && inet_matches(sock.local.as_ref(), *addr, *port)
            }
            Selector::Unix { path } => {
                let Some(theirs) = sock.local.as_ref().and_then(|l| l.path.as_deref()) else {
                    return false;
                };
                if sock.family != "unix" {
                    return false;
                }
                theirs == path
                    || (!theirs.starts_with('/')
                        && !theirs.starts_with('@')
                        && resolve_target_path(theirs).is_some_and(|abs| same_path(&abs, path)))
                    || same_path(theirs, path)
            }
            Selector::All => true,
            Selector::Fd(_) => false,
        }
    }
}

/// `a` and `b` name the same place once `b` (given by the user, possibly relative to
/// our working directory) is made absolute.
fn same_path(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    if b.starts_with('/') || b.starts_with('@') {
        return false;
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(b))
        .is_ok_and(|abs| abs.as_os_str() == a)
}

fn inet_matches(local: Option<&Endpoint>, addr: AddrMatch, port: PortMatch) -> bool {
    let Some(local) = local else { return false };
    let (Some(ip), Some(p)) = (local.ip(), local.port) else {
        return false;
    };
    let addr_ok = match addr {
        AddrMatch::Any => true,
        AddrMatch::Exact(want) => want == ip,
    };
    let port_ok = match port {
        PortMatch::Any => true,
        PortMatch::Exact(want) => want == p,
    };
    addr_ok && port_ok
}

/// A socket that accepts connections or datagrams of its own: a listening TCP,
/// unix-stream or seqpacket socket, an unconnected UDP socket with a port, or a unix
/// datagram socket bound to a name. Connected sockets belong to one peer and are not
/// something a new server can take over.
pub fn is_listening_or_bound(sock: &SocketInfo) -> bool {
    let state = sock.state.as_deref();
    match (
        sock.family.as_str(),
        sock.protocol.as_deref(),
        sock.socket_type.as_deref(),
    ) {
        ("inet" | "inet6", Some("tcp"), _) => state == Some("LISTEN"),
        ("inet" | "inet6", Some("udp"), _) => {
            state == Some("UNCONN")
                && sock
                    .local
                    .as_ref()
                    .and_then(|l| l.port)
                    .is_some_and(|p| p != 0)
        }
        ("unix", _, Some("stream" | "seqpacket")) => state == Some("LISTEN"),
        ("unix", _, Some("dgram")) => {
            state != Some("CONNECTED") && sock.local.as_ref().is_some_and(|l| l.path.is_some())
        }
        _ => false,
    }
}

/// Two sockets that serve the same address together: with `SO_REUSEPORT` the
/// kernel spreads new connections over every member, so a handover that left one
/// behind would lose the connections queued on it when the old server closes it.
pub(crate) fn same_group(a: &SocketInfo, b: &SocketInfo) -> bool {
    a.family == b.family
        && a.protocol == b.protocol
        && a.socket_type == b.socket_type
        && a.local.is_some()
        && a.local == b.local
        && a.local.as_ref().is_some_and(|l| l.port.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            sel("tcp:127.0.0.1:8080"),
            Selector::Tcp {
                addr: AddrMatch::Exact("127.0.0.1".parse().expect("ip")),
                port: PortMatch::Exact(8080)
            }
        );
        assert_eq!(
            sel("tcp:*:80"),
            Selector::Tcp {
                addr: AddrMatch::Any,
                port: PortMatch::Exact(80)
            }
        );
        assert_eq!(
            sel("udp:[::1]:53"),
            Selector::Udp {
                addr: AddrMatch::Exact("::1".parse().expect("ip")),
                port: PortMatch::Exact(53)
            }
        );
        assert_eq!(
            sel("tcp:[::]:*"),
            Selector::Tcp {
                addr: AddrMatch::Exact(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
                port: PortMatch::Any
            }
        );
        assert_eq!(
            sel("unix:/run/x.sock"),
            Selector::Unix {
                path: "/run/x.sock".into()
            }
        );
        assert_eq!(
            sel("unix:@abstract"),
            Selector::Unix {
                path: "@abstract".into()
            }
        );
        assert_eq!(sel("fd:7"), Selector::Fd(TargetFd::new(7).expect("fd")));
        assert_eq!(sel("*"), Selector::All);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "tcp:127.0.0.1:8080",
            "tcp:*:80",
            "udp:[::1]:53",
            "tcp:[::]:*",
            "unix:/a b",
            "fd:3",
            "*",
        ] {
            assert_eq!(sel(s).to_string(), s);
        }
    }

    #[test]
    fn refuses_bad_selectors_with_reasons() {
        let cases = [
            ("tcp:::1:80", "brackets"),
            ("tcp:[::1:80", "closing"),
            ("tcp:[::1]80", "':PORT'"),
            ("tcp:1.2.3:80", "not an IPv4"),
            ("tcp:*:0", "port 0"),
            ("tcp:*:70000", "not a port"),
            ("tcp:*", "ADDR:PORT"),
            ("udp:[zz]:1", "not an IPv6"),
            ("unix:", "empty"),
            ("fd:-1", "not negative"),
            ("fd:x", "not an fd"),
            ("sctp:*:1", "unknown kind"),
            ("8080", "not a socket selector"),
        ];
        for (s, why) in cases {
            let e = s.parse::<Selector>().expect_err(s);
            assert!(e.contains(why) && e.contains(s), "{s}: {e}");
        }
    }

    #[test]
    fn default_names_have_no_colons() {
        assert_eq!(
            sel("tcp:127.0.0.1:8080").default_fd_name(),
            "tcp-127.0.0.1-8080"
        );
        assert_eq!(sel("udp:[::1]:53").default_fd_name(), "udp-[--1]-53");
        assert_eq!(
            sel("unix:/run/a.sock").default_fd_name(),
            "unix-/run/a.sock"
        );
        assert_eq!(sel("fd:3").default_fd_name(), "fd-3");
        assert_eq!(
            sel("unix:/tmp/a bé\t.sock").default_fd_name(),
            "unix-/tmp/a_b__.sock"
        );
        let long = format!("unix:/{}/end.sock", "d".repeat(300));
        let name = sel(&long).default_fd_name();
        assert_eq!(name.len(), 255);
        assert!(name.ends_with("/end.sock"), "{name}");
        for s in [
            "unix:/tmp/a bé.sock",
            &long,
            "unix:@abstract name",
            "tcp:*:*",
        ] {
            let name = sel(s).default_fd_name();
            assert_eq!(
                crate::activation::check_fd_name(&name),
                Ok(()),
                "{s} gives {name}"
            );
        }
        assert_eq!(sel("*").default_fd_name(), "listen");
    }
}
