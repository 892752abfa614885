//! The unix sockets through which descriptors cross between fdgrab and a target
//! during an injection session.
//!
//! Towards us ([`Mailbox`]): fdgrab binds a fresh abstract-namespace datagram
//! socket with `SO_PASSCRED`, and the target sends the fds to its name with one
//! `sendmsg` from an unconnected datagram socket (no `connect`, so one injected call
//! less). Each message carries the sender's credentials, and only the target's are
//! taken: anyone in the namespace could send to the name.
//!
//! Towards the target ([`Listener`]): a stream listener the target connects to, the
//! connection checked with `SO_PEERCRED`; we then send on it and the target receives.
//!
//! Abstract names are per network namespace, so when the target lives in another
//! namespace the socket is created *inside* that namespace, from a short-lived thread
//! that `setns`es into it (only that thread moves).

use crate::error::{Error, Result};
use crate::Pid;
use rustix::fs::{open, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{
    accept_with, bind, listen, socket_with, sockopt, AddressFamily, SocketAddrUnix, SocketFlags,
    SocketType,
};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

static SERIAL: AtomicU32 = AtomicU32::new(0);

/// A listening socket the target can reach, and its address as the target must
/// write it (`struct sockaddr_un` bytes).
#[derive(Debug)]
pub(crate) struct Listener {
    fd: OwnedFd,
    sockaddr: Vec<u8>,
}

/// A socket of `ty` bound to a new abstract name in the network namespace of thread
/// `tid` of `pid` (a thread's view, because a zombie leader has no namespaces), set up
/// by `setup` before it is bound; and its `sockaddr_un` as the target must write it.
fn bound_socket(
    pid: Pid,
    tid: Pid,
    ty: SocketType,
    setup: impl FnOnce(&OwnedFd) -> std::io::Result<()> + Send,
) -> Result<(OwnedFd, Vec<u8>)> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "fdgrab-rendezvous-{}-{}-{nanos:08x}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    );
    let make = || -> std::io::Result<OwnedFd> {
        let fd = socket_with(
            AddressFamily::UNIX,
            ty,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        setup(&fd)?;
        bind(&fd, &SocketAddrUnix::new_abstract_name(name.as_bytes())?)?;
        Ok(fd)
    };
    let fd = in_netns_of(pid, tid, make).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => Error::NoSuchProcess { pid },
        _ => Error::Io {
            op: "creating the rendezvous socket in the target's network namespace",
            pid,
            fd: None,
            source: e,
        },
    })?;
    let mut sockaddr = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    sockaddr.push(0);
    sockaddr.extend_from_slice(name.as_bytes());
    Ok((fd, sockaddr))
}

impl Listener {
    /// Listens on a new abstract name in the network namespace of thread `tid` of
    /// process `pid`.
    pub(crate) fn new(pid: Pid, tid: Pid) -> Result<Listener> {
        let (fd, sockaddr) = bound_socket(pid, tid, SocketType::STREAM, |_| Ok(()))?;
        listen(&fd, 8)
            .map_err(|e| Error::io("listening on the rendezvous socket", pid, None, e))?;
        Ok(Listener { fd, sockaddr })
    }

    /// The `sockaddr_un` the target connects to.
    pub(crate) fn sockaddr(&self) -> &[u8] {
        &self.sockaddr
    }

    /// Takes the target's queued connection. Its `connect` has already returned, so
    /// the connection is waiting; connections from other processes are dropped.
    pub(crate) fn accept_from(&self, pid: Pid) -> Result<OwnedFd> {
        loop {
            let conn = match accept_with(&self.fd, SocketFlags::CLOEXEC) {
                Ok(c) => c,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => {
                    return Err(Error::io(
                        "accepting the target's connection (none was queued)",
                        pid,
                        None,
                        Errno::AGAIN,
                    ))
                }
                Err(e) => return Err(Error::io("accepting the target's connection", pid, None, e)),
            };
            // A peer in another pid namespace reads as pid 0, never as `pid`.
            match crate::sys::peer_cred(&conn) {
                Ok((peer, _, _)) if peer == pid => return Ok(conn),
                Ok((peer, _, _)) => {
                    tracing::warn!(
                        pid,
                        intruder = peer,
                        "dropping a foreign connection to the rendezvous socket"
                    );
                }
                Err(e) => {
                    return Err(Error::io(
                        "SO_PEERCRED on the rendezvous socket",
                        pid,
                        None,
                        e,
                    ))
                }
            }
        }
    }
}

/// A datagram socket the target sends descriptors to. See the module documentation.
#[derive(Debug)]
pub(crate) struct Mailbox {
    fd: OwnedFd,
    sockaddr: Vec<u8>,
}

impl Mailbox {
    /// Binds a new abstract name, with `SO_PASSCRED`, in the network namespace of
    /// thread `tid` of `pid`.
    pub(crate) fn new(pid: Pid, tid: Pid) -> Result<Mailbox> {
        let (fd, sockaddr) = bound_socket(pid, tid, SocketType::DGRAM, |fd| {
            sockopt::set_socket_passcred(fd, true).map_err(Into::into)
        })?;
        Ok(Mailbox { fd, sockaddr })
    }

    /// The `sockaddr_un` the target sends to.
    pub(crate) fn sockaddr(&self) -> &[u8] {
        &self.sockaddr
    }

    /// Takes the target's queued message and the (close-on-exec) fds it carries, at
    /// most `max_fds`. The target's `sendmsg` has returned, so the message is waiting;
    /// messages from other processes are dropped with their fds. `MSG_CTRUNC` (fds
    /// that did not fit, or that our fd limit refused) is `EMFILE`.
    pub(crate) fn take_from(&self, pid: Pid, max_fds: usize) -> std::io::Result<Vec<OwnedFd>> {
        use rustix::net::{
            recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
        };
        use std::mem::MaybeUninit;
        let max_fds = max_fds.max(1);
        let mut space =
            vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(max_fds), ScmCredentials(1))];
        loop {
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut byte = [0u8; 1];
            let msg = match recvmsg(
                &self.fd,
                &mut [std::io::IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(Errno::INTR) => continue,
                r => r?,
            };
            let mut fds = Vec::new();
            let mut sender = None;
            for m in control.drain() {
                match m {
                    RecvAncillaryMessage::ScmRights(rights) => fds.extend(rights),
                    RecvAncillaryMessage::ScmCredentials(cred) => {
                        sender = Some(cred.pid.as_raw_nonzero().get())
                    }
                    _ => {}
                }
            }
            if sender != Some(pid) {
                tracing::warn!(pid, intruder = ?sender, "dropping a foreign message to the rendezvous socket");
                continue;
            }
            if msg.flags.contains(ReturnFlags::CTRUNC) {
                return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
            }
            return Ok(fds);
        }
    }
}

/// Runs `make` in the network namespace of thread `tid` of `pid`.
fn in_netns_of<T: Send>(
    pid: Pid,
    tid: Pid,
    make: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let path = format!("/proc/{pid}/task/{tid}/ns/net");
    // The usual case, the target in our namespace, needs no descriptor: two stats
    // instead of an open, an fstat, a stat and a close. Should the target move
    // meanwhile, its sendmsg or connect to our name fails, as when it moves later.
    let theirs = rustix::fs::stat(path.as_str())?;
    let ours = rustix::fs::stat("/proc/thread-self/ns/net")?;
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino) {
        return make();
    }
    let ns = open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    crate::netns::run_in(ns.as_fd(), make)
}
