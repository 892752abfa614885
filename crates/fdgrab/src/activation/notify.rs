//! `sd_notify(3)` both ways: [`NotifySocket`] is the receiving end, a datagram
//! socket named by `NOTIFY_SOCKET` on which a service reports `READY=1` (used by
//! `fdgrab exec`); [`NotifySender`] is a service's sending end (used by
//! `fdgrab agent` when systemd starts it).
//!
//! The socket has an abstract address, so there is no file to clean up, but
//! anyone in the network namespace can send to it. Every datagram therefore carries
//! the sender's credentials (`SO_PASSCRED`, filled in by the kernel, not by the
//! sender) and only the new server or its descendants are believed.

use crate::error::{Error, Result};
use crate::{procfs, Pid};
use rustix::io::Errno;
use rustix::net::{
    bind, recvmsg, socket_with, sockopt, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// systemd reads at most this much of a notification.
const MAX_MESSAGE: usize = 4096;

/// A bound, non-blocking `NOTIFY_SOCKET` listener.
#[derive(Debug)]
pub struct NotifySocket {
    sock: OwnedFd,
    /// `@name`, the form `NOTIFY_SOCKET` uses for abstract addresses.
    address: String,
}

/// One datagram a process sent to the notify socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    /// The sender's pid as the kernel saw it (in our pid namespace).
    pub pid: Pid,
    /// The sender's uid (`SCM_CREDENTIALS`).
    pub uid: u32,
    /// `KEY=VALUE` assignments, one per line.
    pub fields: Vec<(String, String)>,
}

impl Notification {
    /// Whether the message says `READY=1`.
    pub fn is_ready(&self) -> bool {
        self.field("READY") == Some("1")
    }

    /// The value of one assignment.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl NotifySocket {
    /// Binds a fresh abstract datagram socket with `SO_PASSCRED` set.
    pub fn bind() -> Result<Self> {
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let io = Error::local;
        let sock = socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| io("socket(AF_UNIX, SOCK_DGRAM)", e))?;
        sockopt::set_socket_passcred(&sock, true).map_err(|e| io("setsockopt(SO_PASSCRED)", e))?;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!(
                "fdgrab/notify/{me}/{}-{nanos:x}",
                SERIAL.fetch_add(1, Ordering::Relaxed)
            );
            let addr = SocketAddrUnix::new_abstract_name(name.as_bytes())
                .map_err(|e| io("notify address", e))?;
            match bind(&sock, &addr) {
                Ok(()) => {
                    tracing::debug!(address = %name, "notify socket bound");
                    return Ok(Self {
                        sock,
                        address: format!("@{name}"),
                    });
                }
                // Another process in this network namespace has the name; pick another.
                Err(Errno::ADDRINUSE) => continue,
                Err(e) => return Err(io("bind(notify socket)", e)),
            }
        }
    }

    /// The value to put in `NOTIFY_SOCKET`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The next queued notification, or `None` when there is none. Datagrams that
    /// arrive without credentials are dropped.
    pub fn recv(&self) -> Result<Option<Notification>> {
        loop {
            let mut data = vec![0u8; MAX_MESSAGE];
            let mut space =
                [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(16))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let msg = match recvmsg(
                &self.sock,
                &mut [IoSliceMut::new(&mut data)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            ) {
                Ok(m) => m,
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(Error::local("recvmsg(notify socket)", e)),
            };
            let mut cred = None;
            for m in control.drain() {
                match m {
                    RecvAncillaryMessage::ScmCredentials(c) => cred = Some(c),
                    // Descriptors sent along (FDSTORE=1) are closed as the iterator drops them.
                    RecvAncillaryMessage::ScmRights(fds) => drop(fds.collect::<Vec<_>>()),
                    _ => {}
                }
            }
            let Some(cred) = cred else {
                tracing::debug!("notification without credentials dropped");
                continue;
            };
            let text = String::from_utf8_lossy(&data[..msg.bytes.min(data.len())]);
            let fields = parse_fields(&text);
            return Ok(Some(Notification {
                pid: cred.pid.as_raw_nonzero().get(),
                uid: cred.uid.as_raw(),
                fields,
            }));
        }
    }
}

impl AsFd for NotifySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// The sending end of `sd_notify(3)`, for a process that systemd (or `fdgrab
/// exec`) started with `NOTIFY_SOCKET` set: datagrams of `KEY=VALUE` lines to that
/// address, where a leading `@` names an abstract socket.
#[derive(Debug)]
pub struct NotifySender {
    sock: OwnedFd,
    addr: SocketAddrUnix,
}

impl NotifySender {
    /// The sender for `NOTIFY_SOCKET`, or `None` when it is not set.
    ///
    /// Errors: [`Error::InvalidArgument`] for an address no unix socket can have.
    pub fn from_env() -> Result<Option<Self>> {
        use std::os::unix::ffi::OsStrExt;
        let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let bytes = target.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddrUnix::new_abstract_name(name),
            None => SocketAddrUnix::new(bytes),
        }
        .map_err(|e| Error::InvalidArgument(format!("NOTIFY_SOCKET={target:?}: {e}")))?;
        let sock = socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| Error::local("socket (NOTIFY_SOCKET)", e))?;
        Ok(Some(Self { sock, addr }))
    }

    /// Sends one notification, e.g. `READY=1\nSTATUS=...`. With `wait` false the
    /// message is dropped rather than blocking when the receiver's queue is full
    /// (`EAGAIN`), for a sender that must never stall on its supervisor.
    pub fn send(&self, state: &str, wait: bool) -> rustix::io::Result<usize> {
        let mut flags = rustix::net::SendFlags::NOSIGNAL;
        if !wait {
            flags |= rustix::net::SendFlags::DONTWAIT;
        }
        rustix::net::sendto(&self.sock, state.as_bytes(), flags, &self.addr)
    }
}

fn parse_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether `pid` is `root` or one of its descendants. A server that forks its
/// workers before it is ready (or a wrapper script that runs it) may report from a
/// child; systemd calls this `NotifyAccess=all`, limited here to the new server's
/// own process tree.
pub fn is_same_or_descendant(pid: Pid, root: Pid) -> bool {
    let mut cur = pid;
    for _ in 0..64 {
        if cur == root {
            return true;
        }
        if cur <= 1 {
            return false;
        }
        match procfs::status(cur).ok().and_then(|s| s.ppid) {
            Some(parent) => cur = parent,
            None => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn receives_ready_with_the_senders_pid() {
        let n = NotifySocket::bind().expect("bind");
        assert!(n.address().starts_with("@fdgrab/notify/"));
        assert_eq!(n.recv().expect("recv"), None);
        let tx = UnixDatagram::unbound().expect("socket");
        let addr = {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(&n.address().as_bytes()[1..])
                .expect("addr")
        };
        tx.send_to_addr(b"STATUS=starting\nREADY=1\n", &addr)
            .expect("send");
        let got = n.recv().expect("recv").expect("a message");
        assert_eq!(got.pid, std::process::id() as Pid);
        assert!(got.is_ready());
        assert_eq!(got.field("STATUS"), Some("starting"));
        assert!(is_same_or_descendant(got.pid, got.pid));
        assert!(!is_same_or_descendant(1, got.pid));
    }
}
