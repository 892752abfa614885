//! The privileged-port threshold of a socket's network namespace.
//!
//! `bind` checks `CAP_NET_BIND_SERVICE` for ports below the
//! `net.ipv4.ip_unprivileged_port_start` sysctl of the **socket's** netns (IPv6
//! uses the same sysctl). The supervisor asks the socket for its netns
//! (`SIOCGSKNS`), reads our own netns's value fresh each time through a kept-open
//! file, and reads a foreign netns's value from a short-lived thread that joins
//! it, caching that for a second.

use crate::sys;
use rustix::fs::{fstat, Stat};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
/// The kernel's default when the sysctl cannot be read.
const DEFAULT_START: u16 = 1024;
const FOREIGN_TTL: Duration = Duration::from_secs(1);

type NsKey = (u64, u64);

/// Per-netns threshold lookups.
#[derive(Debug)]
pub struct UnprivilegedPorts {
    own: Option<(NsKey, File)>,
    foreign: HashMap<NsKey, (u16, Instant)>,
}

fn key(st: &Stat) -> NsKey {
    (st.st_dev, st.st_ino)
}

fn parse(text: &[u8]) -> Option<u16> {
    std::str::from_utf8(text)
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()
        .map(|v| v.min(u32::from(u16::MAX)) as u16)
}

impl Default for UnprivilegedPorts {
    fn default() -> Self {
        Self::new()
    }
}

impl UnprivilegedPorts {
    pub fn new() -> Self {
        let own = (|| {
            let ns = rustix::fs::stat("/proc/thread-self/ns/net").ok()?;
            let file = File::open(SYSCTL).ok()?;
            Some((key(&ns), file))
        })();
        Self {
            own,
            foreign: HashMap::new(),
        }
    }

    /// The first unprivileged port for `sock`. `tid` names a thread that holds the
    /// socket, used when the kernel will not name the socket's netns.
    pub fn for_socket(&mut self, sock: impl AsFd, tid: i32) -> u16 {
        let ns = sys::socket_netns(&sock).ok().or_else(|| {
            rustix::fs::open(
                format!("/proc/{tid}/ns/net"),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()
        });
        let Some(ns) = ns else { return DEFAULT_START };
        let Ok(st) = fstat(&ns) else {
            return DEFAULT_START;
        };
        let k = key(&st);
        if let Some((own_key, file)) = &self.own {
            if *own_key == k {
                let mut buf = [0u8; 16];
                return match file.read_at(&mut buf, 0) {
                    Ok(n) => parse(&buf[..n]).unwrap_or(DEFAULT_START),
                    Err(_) => DEFAULT_START,
                };
            }
        }
        if let Some(&(v, at)) = self.foreign.get(&k) {
            if at.elapsed() < FOREIGN_TTL {
                return v;
            }
        }
        let v = read_in_netns(ns).unwrap_or(DEFAULT_START);
        if self.foreign.len() > 4096 {
            self.foreign.retain(|_, (_, at)| at.elapsed() < FOREIGN_TTL);
        }
        self.foreign.insert(k, (v, Instant::now()));
        v
    }
}

/// Reads the sysctl from a thread that has joined `ns`. `/proc/sys/net` shows the
/// netns of the reading thread, and a thread may change netns on its own.
fn read_in_netns(ns: OwnedFd) -> Option<u16> {
    let reader = std::thread::Builder::new()
        .name("fdgrab-netns".into())
        .spawn(move || {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .ok()?;
            parse(&std::fs::read(SYSCTL).ok()?)
        });
    match reader {
        Ok(h) => h.join().ok().flatten(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a thread to read a foreign netns's port threshold");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_netns_threshold_matches_sysctl() {
        let expected = parse(&std::fs::read(SYSCTL).expect("sysctl")).expect("number");
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        let mut ports = UnprivilegedPorts::new();
        assert_eq!(ports.for_socket(&sock, std::process::id() as i32), expected);
    }
}
