//! The privileged-port threshold of a socket's network namespace.
//!
//! `bind` checks `CAP_NET_BIND_SERVICE` for ports below the
//! `net.ipv4.ip_unprivileged_port_start` sysctl of the **socket's** netns (IPv6
//! uses the same sysctl). The supervisor names the socket's netns by its cookie
//! (`SO_NETNS_COOKIE`, one `getsockopt`), falling back to `SIOCGSKNS` on kernels
//! without it. Our own netns's value is read through a kept-open file; a foreign
//! netns's value from a short-lived thread that joins it. Values are cached for a
//! second, so a changed sysctl takes effect within a second.

use crate::sys;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
/// The kernel's default when the sysctl cannot be read.
const DEFAULT_START: u16 = 1024;
const TTL: Duration = Duration::from_secs(1);
const MAX_CACHED: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum NsKey {
    Cookie(u64),
    Inode(u64, u64),
}

/// A socket's network namespace, looked up once per bind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketNetns {
    /// `SO_NETNS_COOKIE` (5.14).
    pub cookie: Option<u64>,
    /// The nsfs inode (as `/proc/PID/ns/net` names it).
    pub inode: Option<u64>,
}

/// Per-netns threshold lookups.
#[derive(Debug)]
pub struct UnprivilegedPorts {
    own: Option<(NsKey, File)>,
    /// nsfs inodes by netns cookie. A cookie names one netns for the life of the
    /// system, so an entry never goes stale; it saves a `SIOCGSKNS` (which opens
    /// a file) per bind.
    inodes: Mutex<HashMap<u64, u64>>,
    /// Shared by every worker of the agent; held only for map operations, never
    /// while a foreign netns is read.
    cache: Mutex<HashMap<NsKey, (u16, Instant)>>,
}

fn parse(text: &[u8]) -> Option<u16> {
    std::str::from_utf8(text)
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()
        .map(|v| v.min(u32::from(u16::MAX)) as u16)
}

/// The socket's netns key, and an fd for the netns when one had to be opened.
/// `cookie`: the socket's netns cookie when the caller already read it.
fn ns_key(sock: impl AsFd, tid: i32, cookie: Option<u64>) -> Option<(NsKey, Option<OwnedFd>)> {
    if let Some(c) = cookie.or_else(|| sys::socket_netns_cookie(&sock).ok()) {
        return Some((NsKey::Cookie(c), None));
    }
    let ns = ns_fd(sock, tid)?;
    let st = rustix::fs::fstat(&ns).ok()?;
    Some((NsKey::Inode(st.st_dev, st.st_ino), Some(ns)))
}

/// The socket's own netns (`SIOCGSKNS`), or the thread's when the kernel will not
/// name the socket's.
fn ns_fd(sock: impl AsFd, tid: i32) -> Option<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    sys::socket_netns(&sock).ok().or_else(|| {
        rustix::fs::open(
            format!("/proc/{tid}/ns/net"),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
    })
}

impl Default for UnprivilegedPorts {
    fn default() -> Self {
        Self::new()
    }
}

impl UnprivilegedPorts {
    /// An empty cache; our own network namespace's threshold is read now.
    pub fn new() -> Self {
        let own = (|| {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0")
                .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
                .ok()?;
            let (key, _) = ns_key(&probe, std::process::id() as i32, None)?;
            Some((key, File::open(SYSCTL).ok()?))
        })();
        Self {
            own,
            inodes: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The first unprivileged port for `sock`. `tid` names a thread that holds the
    /// socket, used when the kernel will not name the socket's netns.
    pub fn for_socket(&self, sock: impl AsFd, tid: i32) -> u16 {
        self.for_socket_in(sock, tid, None)
    }

    /// [`Self::for_socket`] with the socket's netns cookie already read
    /// ([`SocketNetns::cookie`]): one `getsockopt` per bind names the netns for
    /// the threshold and for the netns policy alike.
    pub fn for_socket_in(&self, sock: impl AsFd, tid: i32, cookie: Option<u64>) -> u16 {
        let Some((key, ns)) = ns_key(&sock, tid, cookie) else {
            return DEFAULT_START;
        };
        if let Some(&(v, at)) = self.lock().get(&key) {
            if at.elapsed() < TTL {
                return v;
            }
        }
        let v = match &self.own {
            Some((own, file)) if *own == key => {
                let mut buf = [0u8; 16];
                file.read_at(&mut buf, 0)
                    .ok()
                    .and_then(|n| parse(&buf[..n]))
            }
            _ => ns.or_else(|| ns_fd(&sock, tid)).and_then(read_in_netns),
        }
        .unwrap_or(DEFAULT_START);
        tracing::debug!(netns = ?key, start = v, "ip_unprivileged_port_start read");
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, at)| at.elapsed() < TTL);
        }
        cache.insert(key, (v, Instant::now()));
        v
    }

    /// The nsfs inode of `sock`'s network namespace (as `/proc/PID/ns/net`
    /// names it), when it can be learnt: from the cookie cache, else with
    /// `SIOCGSKNS` (which needs `CAP_NET_ADMIN`).
    pub fn netns_inode(&self, sock: impl AsFd) -> Option<u64> {
        self.socket_netns(sock).inode
    }

    /// The socket's network namespace as far as it can be named: its cookie
    /// (one `getsockopt`) and, from the cookie cache or `SIOCGSKNS`, its inode.
    pub fn socket_netns(&self, sock: impl AsFd) -> SocketNetns {
        let cookie = sys::socket_netns_cookie(&sock).ok();
        self.socket_netns_with(sock, cookie)
    }

    /// [`Self::socket_netns`] with the socket's `SO_NETNS_COOKIE` already read
    /// (`None`: the kernel has none).
    pub fn socket_netns_with(&self, sock: impl AsFd, cookie: Option<u64>) -> SocketNetns {
        let Some(cookie) = cookie else {
            return SocketNetns {
                cookie: None,
                inode: socket_netns_inode(&sock),
            };
        };
        let cached = self.inodes().get(&cookie).copied();
        let inode = cached.or_else(|| {
            let ino = socket_netns_inode(&sock)?;
            self.remember(cookie, ino);
            Some(ino)
        });
        SocketNetns {
            cookie: Some(cookie),
            inode,
        }
    }

    /// Whether `sock` lives in the network namespace whose nsfs inode is
    /// `caller_ns` (thread `tid`'s). `None`: cannot tell.
    pub fn same_netns(&self, sock: impl AsFd, tid: i32, caller_ns: u64) -> Option<bool> {
        self.in_netns(&self.socket_netns(sock), tid, caller_ns)
    }

    /// [`Self::same_netns`] for a socket whose netns was already looked up.
    ///
    /// Without `CAP_NET_ADMIN` the socket's namespace cannot be named, but its
    /// cookie can be read; the caller's namespace's cookie is then learnt once, by
    /// a short-lived thread that enters it (`CAP_SYS_ADMIN`) and makes a socket
    /// there, and kept like any other cookie.
    pub fn in_netns(&self, sock: &SocketNetns, tid: i32, caller_ns: u64) -> Option<bool> {
        if let Some(ino) = sock.inode {
            return Some(ino == caller_ns);
        }
        let cookie = sock.cookie?;
        let caller_cookie = caller_netns_cookie(tid, caller_ns)?;
        self.remember(caller_cookie, caller_ns);
        Some(cookie == caller_cookie)
    }

    fn inodes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, cookie: u64, ino: u64) {
        let mut map = self.inodes();
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(cookie, ino);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NsKey, (u16, Instant)>> {
        // Entries are plain values: a poisoned map is still a valid map.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A caller's network namespace, read for the netns check
/// ([`caller_netns`]).
#[derive(Debug)]
pub enum CallerNetns {
    /// Read through a kept link (`None`: an unexpected link text).
    Kept(Option<u64>),
    /// Read through a link opened by path just now, proven to be the caller's:
    /// worth keeping for the thread's next bind.
    Opened(Option<u64>, OwnedFd),
    /// Read by path, with no link to keep (the supervisor is out of
    /// descriptors); proven to be the caller's.
    ByPath(Option<u64>),
    /// The caller's netns could not be read.
    Unknown,
    /// The request is gone: answer nothing.
    Gone,
}

impl CallerNetns {
    /// The nsfs inode, if one was read.
    pub fn inode(&self) -> Option<u64> {
        match self {
            CallerNetns::Kept(i) | CallerNetns::Opened(i, _) | CallerNetns::ByPath(i) => *i,
            CallerNetns::Unknown | CallerNetns::Gone => None,
        }
    }
}

/// The nsfs inode of thread `tid`'s network namespace now, for a request from
/// `tid` that was pending when this was called.
///
/// `kept` is an `O_PATH | O_NOFOLLOW` link to the thread's `/proc/TID/ns/net`
/// from an earlier bind. `readlinkat(link, "")` reads the thread's *current*
/// netns, as `readlink` of the path does, at half the cost: no path walk. A link
/// names the thread it was opened for (its `struct pid`), never a later thread
/// given the same tid: once that thread is gone, reading it fails. So while a
/// read succeeds its thread is alive, and since live threads have distinct tids,
/// it is the caller parked in the request.
///
/// Without a kept link (or once its thread is gone) a link is opened by path. It
/// names whichever thread holds `tid` at the open: the caller may have left its
/// call, exited, and had its tid given to another thread since the last
/// `ID_VALID`. So `still_caller` (an `ID_VALID` of the request) runs after such
/// an open; `false` means the request is gone, and nothing is answered or kept.
pub fn caller_netns(
    kept: Option<&OwnedFd>,
    tid: i32,
    still_caller: impl FnOnce() -> bool,
) -> CallerNetns {
    use rustix::fs::{Mode, OFlags};
    if let Some(Ok(ino)) = kept.map(read_link_inode) {
        return CallerNetns::Kept(ino);
    }
    let path = format!("/proc/{tid}/ns/net");
    let link = match rustix::fs::open(
        &path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(link) => link,
        // Out of descriptors: the link's text is still read, by path (which
        // needs none), and nothing is kept.
        Err(rustix::io::Errno::MFILE | rustix::io::Errno::NFILE) => {
            let Ok(ino) = read_link_inode_at(rustix::fs::CWD, path.as_str()) else {
                return CallerNetns::Unknown;
            };
            return if still_caller() {
                CallerNetns::ByPath(ino)
            } else {
                CallerNetns::Gone
            };
        }
        Err(_) => return CallerNetns::Unknown,
    };
    let Ok(ino) = read_link_inode(&link) else {
        return CallerNetns::Unknown;
    };
    if !still_caller() {
        return CallerNetns::Gone;
    }
    CallerNetns::Opened(ino, link)
}

/// The nsfs inode a kept `/proc/TID/ns/net` link names now (`Ok(None)`: not
/// a `net:[INODE]` text); an error once its thread is gone. Read into a stack
/// buffer: this is on every allowed bind's path, which allocates nothing.
pub(crate) fn read_link_inode(link: impl AsFd) -> rustix::io::Result<Option<u64>> {
    read_link_inode_at(link, c"")
}

/// [`read_link_inode`] of the link at `path` from `dir`.
fn read_link_inode_at(
    dir: impl AsFd,
    path: impl rustix::path::Arg,
) -> rustix::io::Result<Option<u64>> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 32];
    let (text, _) = rustix::fs::readlinkat_raw(dir, path, &mut buf)?;
    Ok(netns_link_inode(text))
}

/// The nsfs inode of thread `tid`'s network namespace, from the link's text
/// (`net:[INODE]`): reading the link costs half of following it.
pub(crate) fn thread_netns_inode(tid: i32) -> Option<u64> {
    read_link_inode_at(rustix::fs::CWD, format!("/proc/{tid}/ns/net"))
        .ok()
        .flatten()
}

/// The inode in a `net:[INODE]` link text.
pub(crate) fn netns_link_inode(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text)
        .ok()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn socket_netns_inode(sock: impl AsFd) -> Option<u64> {
    let ns = sys::socket_netns(sock).ok()?;
    rustix::fs::fstat(&ns).ok().map(|st| st.st_ino)
}

/// The cookie of thread `tid`'s network namespace, from a socket made there by a
/// thread that joins it; `None` if the namespace moved on from `expect_ns`.
fn caller_netns_cookie(tid: i32, expect_ns: u64) -> Option<u64> {
    use rustix::fs::{Mode, OFlags};
    let ns = rustix::fs::open(
        format!("/proc/{tid}/ns/net"),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    if rustix::fs::fstat(&ns).ok()?.st_ino != expect_ns {
        return None;
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            super::capabilities::with_netns_entry(|| {
                crate::netns::run_in(ns.as_fd(), || {
                    let probe = rustix::net::socket(
                        rustix::net::AddressFamily::INET,
                        rustix::net::SocketType::DGRAM,
                        None,
                    )?;
                    sys::socket_netns_cookie(&probe).map_err(std::io::Error::from)
                })
            })
        })
        .join()
        .ok()
    })
    .and_then(|r| {
        r.map_err(|e| tracing::warn!(tid, error = %e, "cannot learn a netns's cookie"))
            .ok()
    })
}

/// Reads the sysctl from a thread that has joined `ns`. `/proc/sys/net` shows the
/// netns of the reading thread, and a thread may change netns on its own.
/// The thread that enters it raises CAP_SYS_ADMIN for itself only (see
/// [`super::capabilities`]); the rest of the process never holds it effective.
fn read_in_netns(ns: OwnedFd) -> Option<u16> {
    let read = std::thread::scope(|s| {
        s.spawn(|| {
            super::capabilities::with_netns_entry(|| {
                crate::netns::run_in(ns.as_fd(), || std::fs::read(SYSCTL))
            })
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns reader thread panicked")))
    });
    match read {
        Ok(text) => parse(&text),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a foreign netns's port threshold");
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
        let ports = UnprivilegedPorts::new();
        assert!(ports.own.is_some());
        assert_eq!(ports.for_socket(&sock, std::process::id() as i32), expected);
    }

    /// A thread parked in a new network namespace, with a socket made there; it
    /// writes that netns's sysctl on request.
    struct ForeignNetns {
        sock: std::net::UdpSocket,
        set: std::sync::mpsc::Sender<Option<&'static str>>,
        done: std::sync::mpsc::Receiver<std::io::Result<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl ForeignNetns {
        /// `Ok(None)`: this machine cannot make a netns (no privilege), a skip.
        fn new(start: &'static str) -> Result<Option<ForeignNetns>, String> {
            let (sock_tx, sock_rx) = std::sync::mpsc::channel();
            let (set, set_rx) = std::sync::mpsc::channel::<Option<&'static str>>();
            let (done_tx, done) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new
                // network namespace; it touches no memory.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    let _ = sock_tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let made = std::fs::write(SYSCTL, start).and_then(|()| {
                    // Loopback is down in a new netns; an unbound socket is enough.
                    rustix::net::socket(
                        rustix::net::AddressFamily::INET,
                        rustix::net::SocketType::DGRAM,
                        None,
                    )
                    .map(std::net::UdpSocket::from)
                    .map_err(std::io::Error::from)
                });
                let _ = sock_tx.send(made);
                while let Ok(Some(v)) = set_rx.recv() {
                    let _ = done_tx.send(std::fs::write(SYSCTL, v));
                }
            });
            match sock_rx.recv().map_err(|e| e.to_string())? {
                Ok(sock) => Ok(Some(ForeignNetns {
                    sock,
                    set,
                    done,
                    thread: Some(thread),
                })),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(None),
                Err(e) => Err(format!("making a socket in a new netns: {e}")),
            }
        }

        fn set(&self, v: &'static str) {
            self.set.send(Some(v)).expect("netns thread");
            self.done
                .recv()
                .expect("netns thread")
                .expect("writing the sysctl");
        }
    }

    impl Drop for ForeignNetns {
        fn drop(&mut self) {
            let _ = self.set.send(None);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// A kept link reads its thread's netns as it is now (a thread that moved is
    /// seen in its new netns), and once its thread has exited it answers for no
    /// one: not for a later thread given the same tid either.
    #[test]
    fn a_kept_netns_link_follows_its_thread_and_dies_with_it() {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::metadata("/proc/self/ns/net").expect("own netns");
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (moved_tx, moved_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tid_tx
                .send(rustix::thread::gettid().as_raw_nonzero().get())
                .expect("tid");
            let _ = go_rx.recv();
            // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new
            // network namespace; it touches no memory.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            let now = std::fs::metadata("/proc/thread-self/ns/net").ok();
            moved_tx.send((r, now.map(|m| m.ino()))).expect("moved");
            let _ = go_rx.recv();
        });
        let tid = tid_rx.recv().expect("tid");
        let link = match caller_netns(None, tid, || true) {
            CallerNetns::Opened(ino, link) => {
                assert_eq!(ino, Some(ours.ino()));
                link
            }
            other => panic!("opened by path: {other:?}"),
        };
        go_tx.send(()).expect("go");
        let (r, moved) = moved_rx.recv().expect("moved");
        if r == 0 {
            let moved = moved.expect("new netns inode");
            assert_ne!(moved, ours.ino());
            let kept = caller_netns(Some(&link), tid, || panic!("a kept link needs no ID_VALID"));
            assert!(
                matches!(kept, CallerNetns::Kept(Some(i)) if i == moved),
                "{kept:?}"
            );
        } else {
            fdgrab_testkit::skip("unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN");
        }
        go_tx.send(()).expect("go");
        t.join().expect("join");
        assert!(
            read_link_inode(&link).is_err(),
            "the link died with its thread"
        );
        // Whoever holds the tid now (usually nobody) is read by path only, and
        // only answered for while the request is pending.
        let after = caller_netns(Some(&link), tid, || false);
        assert!(
            matches!(after, CallerNetns::Unknown | CallerNetns::Gone),
            "{after:?}"
        );
    }

    /// A link opened by path is trusted (answered and kept) only if the request
    /// is still pending afterwards: by then the tid may name another thread.
    #[test]
    fn netns_link_opened_by_path_needs_the_caller() {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        assert!(matches!(
            caller_netns(None, tid, || false),
            CallerNetns::Gone
        ));
        let ours = std::fs::metadata("/proc/thread-self/ns/net").expect("own netns");
        let ino = Some(std::os::unix::fs::MetadataExt::ino(&ours));
        let got = caller_netns(None, tid, || true);
        assert!(
            matches!(got, CallerNetns::Opened(i, _) if i == ino),
            "{got:?}"
        );
    }

    /// A socket made in another netns (as a container's would be) is judged by that
    /// netns's sysctl, not ours.
    #[test]
    fn foreign_netns_threshold_is_the_sockets() {
        let Some(ns) = ForeignNetns::new("123").expect("foreign netns") else {
            fdgrab_testkit::skip("creating a network namespace needs CAP_SYS_ADMIN");
            return;
        };
        let ports = UnprivilegedPorts::new();
        assert_eq!(ports.for_socket(&ns.sock, std::process::id() as i32), 123);
        let ours = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        let expected = parse(&std::fs::read(SYSCTL).expect("sysctl")).expect("number");
        assert_eq!(ports.for_socket(&ours, std::process::id() as i32), expected);
    }

    /// A value is read once per TTL: a change shows only after it.
    #[test]
    fn threshold_is_cached_for_a_second() {
        let Some(ns) = ForeignNetns::new("200").expect("foreign netns") else {
            fdgrab_testkit::skip("creating a network namespace needs CAP_SYS_ADMIN");
            return;
        };
        let tid = std::process::id() as i32;
        let ports = UnprivilegedPorts::new();
        let first = Instant::now();
        assert_eq!(ports.for_socket(&ns.sock, tid), 200);
        ns.set("300");
        if first.elapsed() < TTL {
            assert_eq!(
                ports.for_socket(&ns.sock, tid),
                200,
                "served from the cache"
            );
        }
        std::thread::sleep(TTL);
        assert_eq!(
            ports.for_socket(&ns.sock, tid),
            300,
            "read again after the TTL"
        );
    }
}
