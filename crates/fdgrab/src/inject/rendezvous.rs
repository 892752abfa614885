//! The unix socket through which descriptors cross between fdgrab and a target
//! during an injection session.
//!
//! fdgrab listens on a fresh abstract-namespace stream socket; the injected code in
//! the target connects to it. Abstract names are per network namespace, so when the
//! target lives in another namespace the listener is created *inside* that namespace,
//! from a short-lived thread that `setns`es into it (only that thread moves). The
//! accepted connection is checked with `SO_PEERCRED`: anyone in the namespace could
//! connect to the name, only the target's connection is used.

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

impl Listener {
    /// Listens on a new abstract name in the network namespace of thread `tid` of
    /// process `pid` (a thread's view, because a zombie leader has no namespaces).
    pub(crate) fn new(pid: Pid, tid: Pid) -> Result<Listener> {
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
                SocketType::STREAM,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                None,
            )?;
            bind(&fd, &SocketAddrUnix::new_abstract_name(name.as_bytes())?)?;
            listen(&fd, 8)?;
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
            match sockopt::socket_peercred(&conn) {
                Ok(cred) if cred.pid.as_raw_nonzero().get() == pid => return Ok(conn),
                Ok(cred) => {
                    tracing::warn!(
                        pid,
                        intruder = cred.pid.as_raw_nonzero().get(),
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

/// Runs `make` in the network namespace of thread `tid` of `pid`.
fn in_netns_of<T: Send>(
    pid: Pid,
    tid: Pid,
    make: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let path = format!("/proc/{pid}/task/{tid}/ns/net");
    let ns = open(
        path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    crate::netns::run_in(ns.as_fd(), make)
}
