//! `NETLINK_SOCK_DIAG` dump of unix sockets (`unix_diag(7)`), made inside the
//! target's network namespace. It is the only source of the peer inode of a
//! connected unix socket.

use super::sockets::{unix_info, unix_type, SocketInfo};
use rustix::fs::{openat, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{
    netlink, recv, send, socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
};
use std::os::fd::{AsFd, OwnedFd};

pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;

pub(crate) struct UnixSock {
    pub inode: u64,
    pub info: SocketInfo,
}

/// Dumps every unix socket of the namespace `sock` (a sock_diag socket) lives in.
pub(crate) fn dump(sock: &OwnedFd) -> std::io::Result<Vec<UnixSock>> {
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // portid: the kernel
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&0u32.to_ne_bytes()); // any inode
    req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER).to_ne_bytes());
    req.extend_from_slice(&[0u8; 8]); // cookie
    let mut out = Vec::new();
    dump_raw(sock, &req, |payload| {
        if let Some(s) = parse_msg(payload) {
            out.push(s);
        }
    })?;
    Ok(out)
}

/// Sends one `SOCK_DIAG_BY_FAMILY` dump request and hands the payload of every
/// answer message to `each`, until `NLMSG_DONE`. A kernel error (`NLMSG_ERROR`)
/// becomes the error, e.g. `ENOENT` when the protocol's diag module is missing.
pub(crate) fn dump_raw(
    sock: &OwnedFd,
    req: &[u8],
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    send(sock, req, SendFlags::empty())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = loop {
            match recv(sock, &mut buf, RecvFlags::empty()) {
                Ok((n, _)) => break n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Ok(());
        }
        let mut msgs = &buf[..n];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().unwrap_or_default()) as usize;
            let ty = u16::from_ne_bytes(msgs[4..6].try_into().unwrap_or_default());
            if len < 16 || len > msgs.len() {
                return Err(std::io::Error::other("malformed netlink message"));
            }
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let err = msgs
                        .get(16..20)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()));
                    return Err(std::io::Error::from_raw_os_error(
                        -err.unwrap_or(-libc::EIO),
                    ));
                }
                SOCK_DIAG_BY_FAMILY => each(&msgs[16..len]),
                _ => {}
            }
            msgs = &msgs[align4(len).min(msgs.len())..];
        }
    }
}

fn parse_msg(p: &[u8]) -> Option<UnixSock> {
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
    let mut attrs = &p[16..];
    while attrs.len() >= 4 {
        let alen = u16::from_ne_bytes(attrs[0..2].try_into().ok()?) as usize;
        let aty = u16::from_ne_bytes(attrs[2..4].try_into().ok()?);
        if alen < 4 || alen > attrs.len() {
            break;
        }
        let data = &attrs[4..alen];
        match aty {
            UNIX_DIAG_NAME if !data.is_empty() => {
                path = Some(if data[0] == 0 {
                    format!("@{}", String::from_utf8_lossy(&data[1..]))
                } else {
                    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                    String::from_utf8_lossy(&data[..end]).into_owned()
                });
            }
            UNIX_DIAG_PEER if data.len() >= 4 => {
                let v = u32::from_ne_bytes(data[0..4].try_into().ok()?);
                if v != 0 {
                    peer = Some(u64::from(v));
                }
            }
            _ => {}
        }
        attrs = &attrs[align4(alen).min(attrs.len())..];
    }
    Some(UnixSock {
        inode,
        info: unix_info(ty, state, path, peer),
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A sock_diag netlink socket in `pid`'s network namespace. A netlink socket stays
/// in the namespace it was created in, so a short-lived thread enters the target's
/// namespace (`setns` affects only the calling thread), creates the socket and ends.
pub(crate) fn diag_socket_in(proc_dir: &OwnedFd) -> std::io::Result<OwnedFd> {
    let ns = openat(
        proc_dir,
        "ns/net",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    crate::netns::run_in(ns.as_fd(), || {
        Ok(socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )?)
    })
}
