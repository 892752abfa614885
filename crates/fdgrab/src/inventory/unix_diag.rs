//! `NETLINK_SOCK_DIAG` dump of unix sockets (`unix_diag(7)`), made inside the
//! target's network namespace. It is the only source of the peer inode of a
//! connected unix socket.

use super::sock_diag::{self, attributes, request_header, NLM_F_DUMP};
use super::socket_info::{unix_info, unix_type, Endpoint, SocketInfo};
use std::os::fd::OwnedFd;

const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_VFS: u32 = 0x2;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;

pub(crate) struct UnixSock {
    pub inode: u64,
    pub info: SocketInfo,
    /// The file a bound path socket created (`struct unix_diag_vfs`: its device as
    /// the kernel encodes it inside, major << 20 | minor, and the low 32 bits of its
    /// inode); only asked for by [`bound_to`].
    vfs: Option<(u32, u32)>,
}

/// Dumps every unix socket of the namespace `sock` (a sock_diag socket) lives in.
pub(crate) fn dump(sock: &OwnedFd) -> std::io::Result<Vec<UnixSock>> {
    dump_showing(sock, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER)
}

fn dump_showing(sock: &OwnedFd, show: u32) -> std::io::Result<Vec<UnixSock>> {
    let mut out = Vec::new();
    sock_diag::request(sock, &unix_request(0, NLM_F_DUMP, show), |payload| {
        if let Some(s) = parse_msg(payload) {
            out.push(s);
        }
    })?;
    Ok(out)
}

/// The unix sockets of `sock`'s namespace that are bound to the file `(dev, ino)`
/// (as `stat(2)` gives them), and the connections accepted on them, which carry
/// the same name but no file of their own: what lsof and fuser list for a socket
/// path.
pub(crate) fn bound_to(sock: &OwnedFd, dev: u64, ino: u64) -> std::io::Result<Vec<UnixSock>> {
    let file = (
        (rustix::fs::major(dev) << 20) | rustix::fs::minor(dev),
        ino as u32,
    );
    let all = dump_showing(sock, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_VFS)?;
    let names: Vec<Option<Endpoint>> = all
        .iter()
        .filter(|s| s.vfs == Some(file))
        .map(|s| s.info.local.clone())
        .collect();
    Ok(all
        .into_iter()
        .filter(|s| match s.vfs {
            Some(v) => v == file,
            None => s.info.local.is_some() && names.contains(&s.info.local),
        })
        .collect())
}

/// The unix socket with inode `ino`, asked for alone (no dump); `None` if it is
/// gone.
pub(crate) fn lookup(sock: &OwnedFd, ino: u64) -> std::io::Result<Option<UnixSock>> {
    let Ok(ino32) = u32::try_from(ino) else {
        return Ok(None); // unix_diag inodes are 32-bit; such a socket cannot be asked for
    };
    let mut out = None;
    let req = unix_request(ino32, 0, UDIAG_SHOW_NAME | UDIAG_SHOW_PEER);
    match sock_diag::request(sock, &req, |p| out = parse_msg(p)) {
        Ok(()) => Ok(out),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `struct nlmsghdr` + `struct unix_diag_req` for `inode` (0 with a dump: any).
fn unix_request(inode: u32, flags: u16, show: u32) -> Vec<u8> {
    let mut req = request_header(40, flags);
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&inode.to_ne_bytes());
    req.extend_from_slice(&show.to_ne_bytes());
    // An exact lookup needs the cookie or INET_DIAG_NOCOOKIE (all ones).
    req.extend_from_slice(&[0xff; 8]);
    req
}

pub(crate) fn parse_msg(p: &[u8]) -> Option<UnixSock> {
    // struct unix_diag_msg { u8 family, type, state, pad; u32 ino; u32 cookie[2]; }
    if p.len() < 16 {
        return None;
    }
    let ty = unix_type(u32::from(p[1]));
    let state = match p[2] {
        10 => "LISTEN",
        1 => "CONNECTED",
        2 => "CONNECTING",
        7 => "UNCONNECTED",
        _ => "UNKNOWN",
    };
    let inode = u64::from(u32::from_ne_bytes(p[4..8].try_into().ok()?));
    let mut path = None;
    let mut peer = None;
    let mut vfs = None;
    for (aty, data) in attributes(&p[16..]) {
        match aty {
            UNIX_DIAG_NAME if !data.is_empty() => path = Some(Endpoint::unix_bytes(data)),
            UNIX_DIAG_VFS if data.len() >= 8 => {
                let ino = u32::from_ne_bytes(data[0..4].try_into().ok()?);
                let dev = u32::from_ne_bytes(data[4..8].try_into().ok()?);
                vfs = Some((dev, ino));
            }
            UNIX_DIAG_PEER if data.len() >= 4 => {
                let v = u32::from_ne_bytes(data[0..4].try_into().ok()?);
                if v != 0 {
                    peer = Some(u64::from(v));
                }
            }
            _ => {}
        }
    }
    Some(UnixSock {
        inode,
        info: unix_info(ty, state, path, peer),
        vfs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// One socket asked for by inode, without a dump: its type and its peer.
    #[test]
    fn lookup_by_inode_finds_the_peer() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let ino = |s: &std::os::unix::net::UnixStream| {
            use std::os::fd::AsRawFd;
            std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                .expect("stat")
                .ino()
        };
        let sock = sock_diag::socket_here();
        let found = lookup(&sock, ino(&a)).expect("lookup").expect("the socket");
        assert_eq!(found.inode, ino(&a));
        assert_eq!(found.info.peer_inode, Some(ino(&b)));
        assert_eq!(found.info.socket_type.as_deref(), Some("stream"));
        drop(b);
        // A closed socket is no error, just absent.
        let gone = ino(&a) + 1_000_000;
        assert!(lookup(&sock, gone).expect("lookup").is_none());
    }
}
