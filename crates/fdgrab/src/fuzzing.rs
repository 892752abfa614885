//! The parsers of untrusted input that are private to the crate, reachable for the
//! fuzz targets (`fuzz/`) and the property tests. Each function is the exact code
//! production runs on that input, with no I/O around it. Not a stable API.
//! Also the two private reads the `killable_read` benchmark compares
//! ([`in_thread_read`], [`killable_read`]).

use crate::inventory::{Endpoint, SocketInfo};
use std::net::SocketAddr;

/// The bind supervisor's reading of a sockaddr copied out of the supervised
/// program (`addrlen` bytes, the family in the first two): what `decide` does
/// once the memory is read. `Err` carries the reason the kernel is left to answer.
pub fn bind_sockaddr(raw: &[u8]) -> Result<SocketAddr, &'static str> {
    let Some(family) = raw.get(..2) else {
        return Err("address length the kernel judges");
    };
    let family = i32::from(u16::from_ne_bytes([family[0], family[1]]));
    crate::supervise::bind::parse_sockaddr(family, raw)
}

/// `/proc/PID/fdinfo/N`: (pos, flags, mnt_id, ino).
pub fn fdinfo(text: &[u8]) -> (Option<u64>, u32, Option<u64>, Option<u64>) {
    let i = crate::inventory::FdInfo::parse(text);
    (i.pos, i.flags, i.mnt_id, i.ino)
}

/// A `/proc/PID/fd/N` link target as the inventory reads it: the inode of a
/// `socket:[N]` or `pipe:[N]` link, the kind of an `anon_inode:` one, and the name
/// split into its string and exact-bytes forms.
pub fn fd_link(link: &[u8]) -> (Option<u64>, Option<u64>, Option<String>, Vec<u8>) {
    let (s, bytes) = crate::inventory::names::split_utf8(link.to_vec());
    let socket = crate::inventory::bracketed(&s, "socket:[");
    let pipe = crate::inventory::bracketed(&s, "pipe:[");
    let anon = s
        .strip_prefix("anon_inode:")
        .map(crate::inventory::anon_kind);
    let exact = crate::inventory::names::exact_str(&s, &bytes).to_vec();
    (socket, pipe, anon, exact)
}

/// `/proc/PID/status`: (tgid, ppid, uids, gids, tracer).
#[allow(clippy::type_complexity)]
pub fn proc_status(
    text: &str,
) -> (
    Option<i32>,
    Option<i32>,
    Option<[u32; 4]>,
    Option<[u32; 4]>,
    Option<i32>,
) {
    let s = crate::procfs::parse_status(text).unwrap_or_default();
    (s.tgid, s.ppid, s.uids, s.gids, s.tracer_pid)
}

/// `/proc/PID/stat`: the state letter and the start time.
pub fn proc_stat(text: &str) -> Option<(char, u64)> {
    crate::procfs::parse_stat(text)
}

/// Which `/proc/PID/net` table [`proc_net`] reads.
#[derive(Clone, Copy, Debug)]
pub enum NetTable {
    Inet,
    Unix,
    Netlink,
    Packet,
}

/// A `/proc/PID/net` table (`tcp`-like, `unix`, `netlink`, `packet`), as the
/// fallback socket listing reads it: the sockets found, by inode.
pub fn proc_net(table: NetTable, text: &str) -> Vec<(u64, SocketInfo)> {
    let mut t = crate::inventory::sockets::SocketTable {
        by_inode: Default::default(),
    };
    match table {
        NetTable::Inet => t.parse_inet(text, "inet", "raw", "raw"),
        NetTable::Unix => t.parse_unix(text),
        NetTable::Netlink => t.parse_netlink(text),
        NetTable::Packet => t.parse_packet(text),
    }
    let mut v: Vec<_> = t.by_inode.into_iter().collect();
    v.sort_by_key(|(ino, _)| *ino);
    v
}

/// One `ADDR:PORT` field of a `/proc/PID/net/tcp`-like table.
pub fn proc_net_endpoint(field: &str) -> Option<Endpoint> {
    crate::inventory::sockets::parse_hex_endpoint(field)
}

/// One sock_diag reply datagram, as the netlink transport walks it, each
/// `SOCK_DIAG_BY_FAMILY` payload decoded by the inet and unix parsers.
#[allow(clippy::type_complexity)]
pub fn sock_diag_reply(
    datagram: &[u8],
    dump: bool,
) -> (Option<std::io::Result<()>>, Vec<(u64, SocketInfo)>) {
    let mut found = Vec::new();
    use crate::inventory::sock_diag::{walk, End, SOCK_DIAG_BY_FAMILY};
    let end = walk(datagram, SOCK_DIAG_BY_FAMILY, None, dump, &mut |p| {
        for proto in [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8] {
            if let Some(s) = crate::inventory::inet_diag::parse_msg(p, proto) {
                found.push((s.inode, s.info));
            }
        }
        if let Some(s) = crate::inventory::unix_diag::parse_msg(p) {
            found.push((s.inode, s.info));
        }
    });
    let end = end.map(|e| match e {
        End::Done => Ok(()),
        End::Refused(e) | End::Failed(e) => Err(e),
    });
    (end, found)
}

/// A name split for JSON (`name` plus `name_bytes` when it is not UTF-8).
pub fn json_name(bytes: &[u8]) -> (String, Option<Vec<u8>>) {
    crate::inventory::names::split_utf8(bytes.to_vec())
}

/// The exact bytes back from the JSON form of a name.
pub fn json_name_bytes<'a>(s: &'a str, bytes: &'a Option<Vec<u8>>) -> &'a [u8] {
    crate::inventory::names::exact_str(s, bytes)
}

/// Reads the table form of a name back: the inverse of
/// [`crate::inventory::escape`], `None` for text `escape` never writes. It exists
/// to prove that escaping loses nothing (two names never print the same).
pub fn unescape(shown: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(shown.len());
    let mut chars = shown.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next()? {
            '\\' => out.push(b'\\'),
            'n' => out.push(b'\n'),
            't' => out.push(b'\t'),
            'r' => out.push(b'\r'),
            'e' => out.push(0x1b),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                if hex.len() != 2 {
                    return None;
                }
                out.push(u8::from_str_radix(&hex, 16).ok()?);
            }
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => return None,
        }
    }
    Some(out)
}

/// `fdgrab attach`'s escape detection over typed bytes arriving in `pieces`, as the
/// relay feeds it: what is sent on to the program, and whether the user detached
/// (nothing after the detach is read).
pub fn pty_escape(escape: crate::pty::Escape, pieces: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut keys = crate::pty::relay::EscapeState::new(escape);
    let mut out = Vec::new();
    for piece in pieces {
        if keys.feed(piece, &mut out) {
            return (out, true);
        }
    }
    (out, false)
}

/// The agent's in-thread read, as a worker makes it for a container that never
/// stalled one: the reference of the `killable_read` benchmark.
pub fn in_thread_read(tid: i32, addr: u64, buf: &mut [u8]) -> Result<(), rustix::io::Errno> {
    crate::sys::process_vm_read(tid, addr, buf)
}

/// The agent's killable read (a reader process, killed at `deadline`): copies
/// `buf.len()` bytes at `addr` out of thread `tid`'s process. For the
/// `killable_read` benchmark; `Err` is the errno, or `ETIMEDOUT` for the deadline.
pub fn killable_read(
    tid: i32,
    addr: u64,
    buf: &mut [u8],
    deadline: std::time::Instant,
) -> Result<(), rustix::io::Errno> {
    use crate::seccomp::killable_read::{read, KillableError};
    read(tid, addr, buf, deadline, 0).map_err(|e| match e {
        KillableError::Read(e) => e,
        KillableError::TimedOut | KillableError::Stuck => rustix::io::Errno::TIMEDOUT,
    })
}
