//! Passing descriptors over unix sockets with `SCM_RIGHTS`.
//!
//! The kernel accepts at most [`SCM_MAX_FD`] descriptors in one message; more
//! gives `EINVAL`. [`send_fds`] refuses that up front, and [`send_all_fds`] splits
//! a longer list into several messages. [`recv_fds`] always receives with
//! `MSG_CMSG_CLOEXEC`, so no descriptor leaks into a child we exec, and treats a
//! truncated control message (`MSG_CTRUNC`) as an error: the kernel has then closed
//! the descriptors that did not fit, and carrying on would silently lose them.

use rustix::io::Errno;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// `SCM_MAX_FD` in the kernel (`include/net/scm.h`).
pub const SCM_MAX_FD: usize = 253;

/// Sends `data` with `fds` attached in one `sendmsg`. `data` must not be empty: a
/// stream socket does not deliver ancillary data without at least one byte.
pub fn send_fds(sock: impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    if data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "SCM_RIGHTS needs at least one data byte",
        ));
    }
    if fds.len() > SCM_MAX_FD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} fds in one message; the kernel accepts at most {SCM_MAX_FD}",
                fds.len()
            ),
        ));
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("control buffer too small for SCM_RIGHTS"));
    }
    loop {
        match sendmsg(
            &sock,
            &[IoSlice::new(data)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(Errno::INTR) => continue,
            r => return r.map_err(Into::into),
        }
    }
}

/// Sends any number of descriptors, [`SCM_MAX_FD`] per message. Each message
/// carries `header(chunk_index, fds_in_chunk)` as its data.
pub fn send_all_fds(
    sock: impl AsFd,
    fds: &[BorrowedFd<'_>],
    mut header: impl FnMut(usize, usize) -> Vec<u8>,
) -> io::Result<()> {
    for (i, chunk) in fds.chunks(SCM_MAX_FD).enumerate() {
        let data = header(i, chunk.len());
        let sent = send_fds(&sock, &data, chunk)?;
        if sent != data.len() {
            // The fds went with the first byte; the rest of the header must follow.
            write_all(&sock, &data[sent..])?;
        }
    }
    Ok(())
}

fn write_all(sock: impl AsFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::net::send(&sock, data, SendFlags::NOSIGNAL) {
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What one `recvmsg` returned.
#[derive(Debug)]
pub struct Received {
    /// Bytes of data read into the caller's buffer (0 means end of stream).
    pub len: usize,
    /// Descriptors that came with it, each close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// Receives data and up to `max_fds` descriptors with `MSG_CMSG_CLOEXEC`.
///
/// `MSG_CTRUNC` (the sender attached more than `max_fds`) is an error of kind
/// `InvalidData`; the descriptors that did fit are closed before returning.
pub fn recv_fds(sock: impl AsFd, buf: &mut [u8], max_fds: usize) -> io::Result<Received> {
    let max_fds = max_fds.clamp(1, SCM_MAX_FD);
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = loop {
        match recvmsg(
            &sock,
            &mut [IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(Errno::INTR) => continue,
            r => break r?,
        }
    };
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control message truncated: the sender attached more than {max_fds} fds"),
        ));
    }
    Ok(Received {
        len: msg.bytes,
        fds,
    })
}

/// Why the kernel would refuse to pass a file with `SCM_RIGHTS`, judged from its
/// `/proc/PID/fd/N` link, or `None` when it would pass it.
///
/// io_uring instances are refused (`sendmsg` fails with `EINVAL` for the whole
/// message): a ring that could travel over a unix socket could end up holding a
/// reference to that socket, a cycle the kernel no longer allows.
pub fn refusal(link: &std::path::Path) -> Option<&'static str> {
    (link.as_os_str() == "anon_inode:[io_uring]").then_some(
        "it is an io_uring instance, and the kernel refuses to pass io_uring fds over unix \
         sockets (SCM_RIGHTS gives EINVAL)",
    )
}

/// [`refusal`] for one of our own descriptors.
pub fn refusal_for(fd: BorrowedFd<'_>) -> Option<&'static str> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    refusal(&link)
}
