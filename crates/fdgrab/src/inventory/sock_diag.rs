//! The `NETLINK_SOCK_DIAG` transport (`sock_diag(7)`): a netlink socket made in the
//! right network namespace, one request, and the walk over the answer messages.
//! The per-family request and message layouts live in `inet_diag` and `unix_diag`.

use rustix::fs::{openat, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{
    netlink, recv, send, socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
};
use std::os::fd::{AsFd, OwnedFd};

pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The request type of `inet_diag`'s original interface, still answered for
/// TCP: its dumps cover both address families in one walk (see
/// `inet_diag::dump_tcp`). The answer messages carry the same type.
pub(crate) const TCPDIAG_GETSOCK: u16 = 18;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// The 16-byte `struct nlmsghdr` of a `SOCK_DIAG_BY_FAMILY` request whose total
/// length is `len`.
pub(crate) fn request_header(len: u32, flags: u16) -> Vec<u8> {
    typed_request_header(SOCK_DIAG_BY_FAMILY, len, flags)
}

/// [`request_header`] for a request of type `ty`.
pub(crate) fn typed_request_header(ty: u16, len: u32, flags: u16) -> Vec<u8> {
    let mut req = Vec::with_capacity(len as usize);
    req.extend_from_slice(&len.to_ne_bytes());
    req.extend_from_slice(&ty.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // portid: the kernel
    req
}

/// Sends one sock_diag request (a dump or an exact lookup) and hands the
/// payload of every answer message to `each`, until `NLMSG_DONE`, or after the one
/// answer of a non-dump request. A kernel error (`NLMSG_ERROR` with a non-zero code)
/// becomes the error, e.g. `ENOENT` when the protocol's diag module is missing or
/// an exact lookup finds no such socket.
pub(crate) fn request(
    sock: &OwnedFd,
    req: &[u8],
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let dump = req
        .get(6..8)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]) & NLM_F_DUMP == NLM_F_DUMP)
        .unwrap_or(false);
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
        if let Some(end) = walk(&buf[..n], dump, &mut each) {
            return end;
        }
    }
}

/// Hands the payload of each `SOCK_DIAG_BY_FAMILY` (or `TCPDIAG_GETSOCK`) message
/// in one reply datagram to `each`; `Some` once the answer is complete
/// (`NLMSG_DONE`, an error or an acknowledgement, or the one answer to a non-dump
/// request), `None` when more datagrams follow.
pub(crate) fn walk(
    mut msgs: &[u8],
    dump: bool,
    each: &mut impl FnMut(&[u8]),
) -> Option<std::io::Result<()>> {
    while msgs.len() >= 16 {
        let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
        let ty = u16::from_ne_bytes([msgs[4], msgs[5]]);
        if len < 16 || len > msgs.len() {
            return Some(Err(std::io::Error::other("malformed netlink message")));
        }
        match ty {
            NLMSG_DONE => return Some(Ok(())),
            NLMSG_ERROR => {
                let err = msgs
                    .get(16..20)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(-libc::EIO);
                if err == 0 {
                    return Some(Ok(())); // an acknowledgement
                }
                // The kernel sends a negative errno; anything else (i32::MIN has no
                // negation) is a malformed reply, reported as EIO.
                let errno = err.checked_neg().filter(|e| *e > 0).unwrap_or(libc::EIO);
                return Some(Err(std::io::Error::from_raw_os_error(errno)));
            }
            // A socket sends one request at a time, so an answer of the older
            // type answers a request of that type.
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                each(&msgs[16..len]);
                if !dump {
                    return Some(Ok(()));
                }
            }
            _ => {}
        }
        msgs = &msgs[align4(len).min(msgs.len())..];
    }
    None
}

/// The netlink attributes (`struct nlattr`: length, type, data) packed in `attrs`,
/// as (type, data) pairs; a truncated attribute ends the walk.
pub(crate) fn attributes(mut attrs: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if attrs.len() < 4 {
            return None;
        }
        let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let aty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if alen < 4 || alen > attrs.len() {
            return None;
        }
        let data = &attrs[4..alen];
        attrs = &attrs[align4(alen).min(attrs.len())..];
        Some((aty, data))
    })
}

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A sock_diag netlink socket in the network namespace of the process whose
/// `/proc/PID` directory is `proc_dir`. A netlink socket stays in the namespace it
/// was created in, so a short-lived thread enters the target's namespace (`setns`
/// affects only the calling thread), creates the socket and ends.
pub(crate) fn socket_in(proc_dir: &OwnedFd) -> std::io::Result<OwnedFd> {
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

/// A sock_diag socket in our own network namespace, for tests.
#[cfg(test)]
pub(crate) fn socket_here() -> OwnedFd {
    let proc_dir = rustix::fs::open(
        "/proc/self",
        OFlags::PATH | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .expect("/proc/self");
    socket_in(&proc_dir).expect("sock_diag socket")
}
