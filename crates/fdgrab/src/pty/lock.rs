//! One attach per session: an abstract unix socket named after the pty.

use super::termios::own_errno;
use super::Pty;
use crate::error::Result;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
use std::os::fd::OwnedFd;

/// Held by whoever relays a pty's session; a second [`AttachLock::acquire`] for the
/// same pty fails while it lives. It is a socket bound to an abstract name made of
/// the devpts instance and the pty index, so it goes away with its process, however
/// that ends, and needs no writable directory. Abstract names are per network
/// namespace: attaches from different namespaces do not see each other's.
#[derive(Debug)]
pub struct AttachLock {
    _socket: OwnedFd,
}

impl AttachLock {
    /// Takes the lock for `pty`; `Ok(None)` if another process holds it.
    pub fn acquire(pty: Pty) -> Result<Option<Self>> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata("/dev/pts").map(|m| m.dev()).unwrap_or(0);
        let name = format!("fdgrab-attach/{dev:x}/{}", pty.index());
        let addr = SocketAddrUnix::new_abstract_name(name.as_bytes())
            .map_err(|e| own_errno("abstract socket name", e))?;
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| own_errno("socket(AF_UNIX)", e))?;
        match rustix::net::bind(&socket, &addr) {
            Ok(()) => Ok(Some(Self { _socket: socket })),
            Err(rustix::io::Errno::ADDRINUSE) => Ok(None),
            Err(e) => Err(own_errno("bind(attach lock)", e)),
        }
    }
}
