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
/// namespace: attaches from different namespaces do not see each other's. Anyone
/// can bind an abstract name, so a name held by a process of another user (not
/// root) does not count as the lock.
#[derive(Debug)]
pub struct AttachLock {
    _socket: OwnedFd,
}

impl AttachLock {
    /// Takes the lock for `pty` of the devpts instance `instance` (its `st_dev`;
    /// `None`: our own `/dev/pts`); `Ok(None)` if another process holds it. Indexes
    /// repeat across instances, so the instance is part of the name.
    pub fn acquire(pty: Pty, instance: Option<u64>) -> Result<Option<Self>> {
        use std::os::unix::fs::MetadataExt;
        let dev =
            instance.unwrap_or_else(|| std::fs::metadata("/dev/pts").map(|m| m.dev()).unwrap_or(0));
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
            Ok(()) => {
                // Listening, so that a later attach can ask who holds it.
                rustix::net::listen(&socket, 1).map_err(|e| own_errno("listen(attach lock)", e))?;
                Ok(Some(Self { _socket: socket }))
            }
            Err(rustix::io::Errno::ADDRINUSE) => {
                if held_by_us_or_root(&addr) {
                    return Ok(None);
                }
                // Anyone may bind an abstract name: a name another user holds does
                // not lock us out (an fdgrab of that user relaying the session is
                // still found among the master's holders).
                tracing::warn!(%pty, "the attach lock's name is held by another user's process; going on without it");
                Ok(Some(Self { _socket: socket }))
            }
            Err(e) => Err(own_errno("bind(attach lock)", e)),
        }
    }
}

/// Whether the process listening on `addr` runs as our effective uid or as root
/// (`SO_PEERCRED`); a name nobody listens on is not a lock we took.
fn held_by_us_or_root(addr: &SocketAddrUnix) -> bool {
    let Ok(probe) = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    ) else {
        return true;
    };
    // An attach that has just bound its lock listens a moment later: a refused
    // connection is asked again before it counts as nobody's lock.
    let mut tries = 0;
    loop {
        match rustix::net::connect(&probe, addr) {
            Ok(()) => break,
            // A full backlog: several attaches are asking at once; a lock all the same.
            Err(rustix::io::Errno::AGAIN) => return true,
            Err(rustix::io::Errno::CONNREFUSED) if tries < 5 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(_) => return false,
        }
    }
    match crate::sys::peer_cred(&probe) {
        Ok((_, uid, _)) => uid == 0 || uid == rustix::process::geteuid().as_raw(),
        Err(_) => true,
    }
}
