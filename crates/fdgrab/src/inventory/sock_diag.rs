//! The `NETLINK_SOCK_DIAG` transport (`sock_diag(7)`): a netlink socket made in the
//! right network namespace, one request, and the walk over the answer messages.
//! The per-family request and message layouts live in `inet_diag` and `unix_diag`.

use rustix::fs::{openat, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{
    connect, netlink, recvfrom, send, socket_with, AddressFamily, RecvFlags, SendFlags,
    SocketFlags, SocketType,
};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The request type of `inet_diag`'s original interface, still answered for
/// TCP: its dumps cover both address families in one walk (see
/// `inet_diag::dump_tcp`). The answer messages carry the same type, as every
/// answer carries its request's.
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

/// Sequence numbers for requests: an answer left queued by an earlier request on
/// the same socket (one cut short by an error) carries another number and is
/// never read as this one's.
static SEQ: AtomicU32 = AtomicU32::new(1);

/// How an answer ended.
#[derive(Debug)]
pub(crate) enum End {
    /// `NLMSG_DONE`, an acknowledgement, or the one answer to a non-dump request.
    Done,
    /// The kernel's error (`NLMSG_ERROR`), e.g. `ENOENT` when the protocol's diag
    /// module is missing or an exact lookup finds no such socket.
    Refused(std::io::Error),
    /// A dump that failed part way (`NLMSG_DONE` carrying an error), or a
    /// malformed answer.
    Failed(std::io::Error),
}

/// Sends one sock_diag request (a dump or an exact lookup) and hands the
/// payload of every answer message to `each`, until `NLMSG_DONE`, or after the one
/// answer of a non-dump request. A kernel error becomes the error.
pub(crate) fn request(sock: &OwnedFd, req: &[u8], each: impl FnMut(&[u8])) -> std::io::Result<()> {
    match request_or_refused(sock, req, each)? {
        None => Ok(()),
        Some(refused) => Err(refused),
    }
}

/// [`request`], telling the kernel's refusal of the request itself (its error
/// before any answer: `Ok(Some(error))`) from a failure after answers began or
/// of the socket (`Err`), after which the socket may still hold part of the
/// answer.
pub(crate) fn request_or_refused(
    sock: &OwnedFd,
    req: &[u8],
    mut each: impl FnMut(&[u8]),
) -> std::io::Result<Option<std::io::Error>> {
    if req.len() < 16 {
        return Err(std::io::Error::other(
            "sock_diag request shorter than its header",
        ));
    }
    let field = |at: usize| u16::from_ne_bytes([req[at], req[at + 1]]);
    let (ty, flags) = (field(4), field(6));
    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut sent = req.to_vec();
    sent[8..12].copy_from_slice(&seq.to_ne_bytes());
    send(sock, &sent, SendFlags::empty())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut answered = false;
    loop {
        let n = loop {
            match recvfrom(sock, &mut buf[..], RecvFlags::empty()) {
                Ok((n, _, from)) if from_the_kernel(from.as_ref()) => break n,
                // Queued by another socket before ours was connected (binding
                // comes first, and its port id is our pid, which anyone can
                // guess): never read as the kernel's.
                Ok(_) => continue,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Err(std::io::Error::other(
                "empty sock_diag answer before its end",
            ));
        }
        let mut each_seen = |p: &[u8]| {
            answered = true;
            each(p)
        };
        match walk(&buf[..n], ty, Some(seq), dump, &mut each_seen) {
            None => {}
            Some(End::Done) => return Ok(None),
            Some(End::Refused(e)) if !answered => return Ok(Some(e)),
            Some(End::Refused(e) | End::Failed(e)) => return Err(e),
        }
    }
}

/// Whether a datagram came from the kernel: port id 0, no multicast group. No
/// other socket can have port 0.
fn from_the_kernel(from: Option<&rustix::net::SocketAddrAny>) -> bool {
    from.and_then(|a| netlink::SocketAddrNetlink::try_from(a.clone()).ok())
        .is_some_and(|a| a.pid() == 0 && a.groups() == 0)
}

/// Hands the payload of each answer message of type `ty` (the request's) in one
/// reply datagram to `each`, skipping those of another request (`seq`, when
/// given); `Some` once the answer has ended, `None` when more datagrams follow.
pub(crate) fn walk(
    mut msgs: &[u8],
    ty: u16,
    seq: Option<u32>,
    dump: bool,
    each: &mut impl FnMut(&[u8]),
) -> Option<End> {
    let errno_at = |m: &[u8]| {
        m.get(16..20)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    // The kernel sends a negative errno; anything else (i32::MIN has no negation)
    // is a malformed reply, reported as EIO.
    let error = |err: i32| {
        let errno = err.checked_neg().filter(|e| *e > 0).unwrap_or(libc::EIO);
        std::io::Error::from_raw_os_error(errno)
    };
    while msgs.len() >= 16 {
        let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
        let mty = u16::from_ne_bytes([msgs[4], msgs[5]]);
        let mseq = u32::from_ne_bytes([msgs[8], msgs[9], msgs[10], msgs[11]]);
        if len < 16 || len > msgs.len() {
            return Some(End::Failed(std::io::Error::other(
                "malformed netlink message",
            )));
        }
        let msg = &msgs[..len];
        msgs = &msgs[align4(len).min(msgs.len())..];
        if seq.is_some_and(|s| s != mseq) {
            continue;
        }
        match mty {
            NLMSG_DONE => {
                return Some(match errno_at(msg) {
                    Some(err) if err < 0 => End::Failed(error(err)),
                    _ => End::Done,
                });
            }
            NLMSG_ERROR => {
                return Some(match errno_at(msg).unwrap_or(-libc::EIO) {
                    0 => End::Done, // an acknowledgement
                    err => End::Refused(error(err)),
                });
            }
            t if t == ty => {
                each(&msg[16..]);
                if !dump {
                    return Some(End::Done);
                }
            }
            _ => {}
        }
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
        let sock = socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )?;
        // Connected to the kernel (port 0), the socket takes no message from any
        // other: whoever holds CAP_NET_ADMIN over the namespace (the owner of an
        // unprivileged user namespace, for one) may otherwise send it forged
        // answers. `connect` binds first, so a message may still be queued in
        // between: `request` reads only the kernel's datagrams.
        connect(&sock, &netlink::SocketAddrNetlink::new(0, 0))?;
        Ok(sock)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::net::{getsockname, sendto};
    use std::os::fd::AsRawFd;

    /// A netlink message: header (type, flags, seq) and payload.
    fn msg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::with_capacity(align4(len));
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(align4(len), 0);
        m
    }

    /// A `unix_diag_msg` for inode `ino`: stream, connected.
    fn unix_answer(ino: u32) -> Vec<u8> {
        let mut p = vec![libc::AF_UNIX as u8, 1, 1, 0];
        p.extend_from_slice(&ino.to_ne_bytes());
        p.extend_from_slice(&[0u8; 8]);
        p
    }

    /// Our sock_diag socket takes answers from the kernel alone: another netlink
    /// socket in its namespace (ours here, as root; in an unprivileged user
    /// namespace, its owner) cannot queue a forged answer on it, and the next
    /// request is answered by the kernel.
    #[test]
    fn no_other_socket_can_answer_for_the_kernel() {
        let sock = socket_here();
        let ours = netlink::SocketAddrNetlink::try_from(getsockname(&sock).expect("getsockname"))
            .expect("a netlink address");
        let forger = socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )
        .expect("socket");
        let forged_ino = 0x7fff_fff0;
        let next = SEQ.load(Ordering::Relaxed);
        let mut forged = msg(SOCK_DIAG_BY_FAMILY, 2, next, &unix_answer(forged_ino));
        forged.extend(msg(NLMSG_DONE, 2, next, &0i32.to_ne_bytes()));
        let sent = sendto(&forger, &forged, SendFlags::empty(), &ours);
        assert_eq!(sent.err(), Some(Errno::CONNREFUSED));
        let listed = super::super::unix_diag::dump(&sock).expect("unix dump");
        assert!(listed.iter().all(|s| s.inode != u64::from(forged_ino)));
    }

    /// A forged answer queued before the socket was connected (`connect` binds
    /// it first, under a port id anyone can guess: our pid) is never read as the
    /// kernel's, whatever sequence numbers it carries.
    #[test]
    fn an_answer_queued_before_connecting_is_not_read() {
        let new_socket = || {
            socket_with(
                AddressFamily::NETLINK,
                SocketType::DGRAM,
                SocketFlags::CLOEXEC,
                Some(netlink::SOCK_DIAG),
            )
            .expect("socket")
        };
        let sock = new_socket();
        rustix::net::bind(&sock, &netlink::SocketAddrNetlink::new(0, 0)).expect("bind");
        let ours = netlink::SocketAddrNetlink::try_from(getsockname(&sock).expect("getsockname"))
            .expect("a netlink address");
        let forged_ino = 0x7fff_fff1;
        let next = SEQ.load(Ordering::Relaxed);
        let mut forged = Vec::new();
        for seq in next..next + 8 {
            forged.extend(msg(SOCK_DIAG_BY_FAMILY, 2, seq, &unix_answer(forged_ino)));
            forged.extend(msg(NLMSG_DONE, 2, seq, &0i32.to_ne_bytes()));
        }
        sendto(new_socket(), &forged, SendFlags::empty(), &ours).expect("queued");
        connect(&sock, &netlink::SocketAddrNetlink::new(0, 0)).expect("connect");
        let listed = super::super::unix_diag::dump(&sock).expect("unix dump");
        assert!(listed.iter().all(|s| s.inode != u64::from(forged_ino)));
        // Our own sockets are there: the kernel's answer was read.
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let a_ino = std::fs::metadata(format!("/proc/self/fd/{}", a.as_raw_fd()))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .expect("stat");
        let listed = super::super::unix_diag::dump(&sock).expect("unix dump");
        assert!(listed.iter().any(|s| s.inode == a_ino));
    }

    /// An answer is read only from messages of its own request (sequence number)
    /// and type; a dump that fails part way (`NLMSG_DONE` with an error) fails,
    /// and the kernel's error is a refusal.
    #[test]
    fn an_answer_is_read_only_from_its_own_requests_messages() {
        let mut datagram = msg(SOCK_DIAG_BY_FAMILY, 2, 6, &unix_answer(1));
        datagram.extend(msg(TCPDIAG_GETSOCK, 2, 7, &unix_answer(2)));
        datagram.extend(msg(SOCK_DIAG_BY_FAMILY, 2, 7, &unix_answer(3)));
        datagram.extend(msg(NLMSG_DONE, 2, 6, &0i32.to_ne_bytes()));
        let mut seen = Vec::new();
        let mut each = |p: &[u8]| seen.push(p[4]);
        assert!(walk(&datagram, SOCK_DIAG_BY_FAMILY, Some(7), true, &mut each).is_none());
        assert_eq!(seen, [3]);
        let failed = msg(NLMSG_DONE, 2, 7, &(-libc::EINTR).to_ne_bytes());
        let end = walk(&failed, SOCK_DIAG_BY_FAMILY, Some(7), true, &mut |_| {});
        assert!(
            matches!(&end, Some(End::Failed(e)) if e.raw_os_error() == Some(libc::EINTR)),
            "{end:?}"
        );
        let refused = msg(NLMSG_ERROR, 0, 7, &(-libc::ENOENT).to_ne_bytes());
        let end = walk(&refused, SOCK_DIAG_BY_FAMILY, Some(7), true, &mut |_| {});
        assert!(
            matches!(&end, Some(End::Refused(e)) if e.raw_os_error() == Some(libc::ENOENT)),
            "{end:?}"
        );
    }
}
