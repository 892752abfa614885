//! A test program for `fdgrab run`: makes `bind` calls, including the malformed and
//! racy ones real programs rarely make, and prints one JSON line with what the
//! kernel (or the supervisor) answered.
//!
//! Modes (those with a fixed address use 127.66.0.1, which other tests on the
//! machine are unlikely to bind):
//! - `bind KIND ADDR PORT`: KIND is tcp4, tcp6 (dual-stack), tcp6only, udp4, udp6,
//!   mptcp4, udplite4, raw4tcp (a raw socket of protocol TCP) or unix (ADDR is then
//!   a path); `{"socket_errno":N}` if the socket cannot be made. TCP sockets also listen, and dual-stack ones
//!   accept an IPv4 connection to prove it.
//! - `inuse PORT`: binds and listens on 127.66.0.1:PORT, then binds a second socket there.
//! - `efault PORT` / `short PORT`: bind with an unmapped pointer / addrlen 8.
//! - `rebind PORT`: binds 127.66.0.1:PORT, then the same again (EINVAL), then another port.
//! - `threads T TOTAL BASE`: T threads make TOTAL binds in all, thread i on port BASE+i;
//!   every fifth bind goes to port BASE-1, which the policy should forbid.
//! - `dup2race N PORT`: one thread binds a TCP socket at a fixed fd number to PORT while
//!   another keeps putting a pipe or a UDP decoy at that number.
//! - `sigurg N PORT`: binds while another thread sends SIGURG (SA_RESTART) in a storm.
//! - `eintr N PORT`: as `sigurg`, with SIGUSR1 and no `SA_RESTART`: a bind that
//!   fails `EINTR` is retried on the same socket until it does not.
//! - `file-bind PATH PORT`: binds an open regular file (`PATH`) to
//!   127.66.0.1:PORT (the kernel answers ENOTSOCK), while another thread binds a
//!   TCP socket to PORT+1.
//! - `file-listen PATH [PORT]`: calls `listen` on an open regular file (`PATH`): the
//!   kernel answers ENOTSOCK; `{"errno":E}` (PORT, if given, is not used).
//! - `flock-bind PATH N PORT`: N times, opens `PATH`, takes an exclusive `flock`,
//!   binds that file to 127.66.0.1:PORT (ENOTSOCK), closes it and tries the lock
//!   again through a new open; `{"errno":E,"still_locked":K}` (K: how often the
//!   closed file still held the lock).
//! - `fork-kill N PORT`: prints a ready line and waits for a line on stdin; then N
//!   children bind in a loop and are SIGKILLed at random moments.
//! - `wait-bind PORT`: waits for a line on stdin, then binds 127.66.0.1:PORT.
//! - `addrform PORT`: a UDP IPv6 socket connected to a v4-mapped address, turned
//!   IPv4 with `IPV6_ADDRFORM`, disconnected (which frees its port) and then bound
//!   to 127.66.0.1:PORT with an IPv4 sockaddr.
//! - `netns-tid-reuse H T PORT`: H short-lived threads each bind 127.66.0.1:PORT and
//!   note their tid; then a child binds PORT too, moves into a user and network
//!   namespace of its own and binds a socket made before the move (still in the
//!   first netns) to PORT+1; then it runs T short-lived threads, and each whose tid
//!   is one the first threads had binds that old socket, and a socket of the new
//!   netns, to PORT+1.
//! - `fuse-stall PATH PORT`: maps the FUSE file PATH (its pages, never touched
//!   here) and, on a thread, binds a TCP socket with its sockaddr on page 0;
//!   once that bind returns (or after 10 s), binds 127.66.0.1:PORT; then the
//!   same with page 1 and PORT+1. `{"stalls":[E,E],"binds":[E,E]}` (-1: no
//!   answer within 10 s).
//! - `fuse-bind PATH`: binds a TCP socket with its sockaddr on the first page of
//!   a mapping of the FUSE file PATH; `{"errno":N}` once answered.
//! - `uffd-bind`: binds a TCP socket with its sockaddr on a page nobody fills
//!   (userfaultfd): whoever reads it blocks; `{"errno":N}` once answered.
//! - `parity`: a table of binds the kernel answers in different ways (lengths,
//!   families that do not match the socket, `AF_UNSPEC`, v4-mapped, scope ids,
//!   non-local, multicast, sockets already bound or connected, bad fds, files,
//!   other protocols, dual-stack wildcards), all on ports below 1024 on
//!   loopback; `{"case":errno,...}` (a negative number: the socket could not be
//!   made). For a network namespace of its own.
//! - `io-uring`, `x32`, `int80`: calls the filter refuses or kills.
//! - `nosys`: `syscall(-1)` and `syscall(0xffff_ffff)`, numbers of no call of
//!   any ABI; `{"errnos":[E1,E2]}` (the kernel's ENOSYS).
//! - `loop-bind N PORT` / `loop-getppid N`: timing loops (median ns per iteration).

use serde_json::{json, Value};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketType};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let report = match arg(0) {
        "bind" => bind_mode(arg(1), arg(2), num(3, 80) as u16),
        "inuse" => inuse(num(1, 80) as u16),
        "efault" => efault(num(1, 80) as u16),
        "short" => short(num(1, 80) as u16),
        "rebind" => rebind(num(1, 80) as u16),
        "threads" => threads(num(1, 64) as usize, num(2, 10_000), num(3, 100) as u16),
        "dup2race" => dup2race(num(1, 2000), num(2, 80) as u16),
        "sigurg" => sigurg(num(1, 2000), num(2, 80) as u16),
        "eintr" => storm_binds(num(1, 2000), num(2, 80) as u16, libc::SIGUSR1, 0),
        "file-bind" => file_bind(arg(1), num(2, 80) as u16),
        "file-listen" => file_listen(arg(1)),
        "flock-bind" => flock_bind(arg(1), num(2, 100), num(3, 80) as u16),
        "fork-kill" => fork_kill(num(1, 100), num(2, 80) as u16),
        "wait-bind" => {
            wait_line();
            bind_mode("tcp4", "127.66.0.1", num(1, 80) as u16)
        }
        "addrform" => addrform(num(1, 80) as u16),
        "netns-tid-reuse" => netns_tid_reuse(num(1, 100), num(2, 5000), num(3, 80) as u16),
        "uffd-bind" => uffd_bind(),
        "fuse-stall" => fuse_stall(arg(1), num(2, 80) as u16),
        "fuse-bind" => match fdgrab_testkit::fuse::map_pages(arg(1)) {
            Ok(at) => {
                let s = tcp_socket(AddressFamily::INET);
                json!({ "errno": raw_bind(s.as_raw_fd(), at as *const libc::sockaddr, 16) })
            }
            Err(e) => json!({ "error": e }),
        },
        "parity" => parity(),
        "io-uring" => io_uring(),
        "x32" => x32(),
        "nosys" => nosys(),
        "int80" => int80(),
        "loop-bind" => loop_bind(num(1, 10_000), num(2, 80) as u16),
        "loop-getppid" => loop_getppid(num(1, 1_000_000)),
        other => {
            eprintln!("bind-probe: unknown mode '{other}'");
            std::process::exit(2);
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{report}");
    let _ = out.flush();
    // `fork-kill` waits so the test can count fdgrab's fds while the program lives.
    if arg(0) == "fork-kill" {
        wait_line();
    }
}

fn wait_line() {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

fn errno_of(r: Result<(), Errno>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.raw_os_error(),
    }
}

fn tcp_socket(family: AddressFamily) -> OwnedFd {
    let s = rustix::net::socket(family, SocketType::STREAM, None).expect("socket");
    rustix::net::sockopt::set_socket_reuseaddr(&s, true).expect("SO_REUSEADDR");
    s
}

fn local_port(s: impl AsFd) -> u16 {
    rustix::net::getsockname(s)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn bind_mode(kind: &str, addr: &str, port: u16) -> Value {
    if kind == "unix" {
        let s = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None).expect("socket");
        let a = rustix::net::SocketAddrUnix::new(addr).expect("unix path");
        return json!({ "errno": errno_of(rustix::net::bind(&s, &a)) });
    }
    let ip: IpAddr = addr.parse().expect("ip address");
    let (family, ty, protocol) = match kind {
        "tcp4" => (AddressFamily::INET, SocketType::STREAM, 0),
        "tcp6" | "tcp6only" => (AddressFamily::INET6, SocketType::STREAM, 0),
        "udp4" => (AddressFamily::INET, SocketType::DGRAM, 0),
        "udp6" => (AddressFamily::INET6, SocketType::DGRAM, 0),
        // Stream and datagram sockets that are not TCP or UDP.
        "mptcp4" => (AddressFamily::INET, SocketType::STREAM, libc::IPPROTO_MPTCP),
        "udplite4" => (
            AddressFamily::INET,
            SocketType::DGRAM,
            libc::IPPROTO_UDPLITE,
        ),
        // A raw socket of protocol TCP (needs CAP_NET_RAW).
        "raw4tcp" => (AddressFamily::INET, SocketType::RAW, libc::IPPROTO_TCP),
        other => panic!("unknown kind {other}"),
    };
    let protocol = std::num::NonZeroU32::new(protocol as u32).map(rustix::net::Protocol::from_raw);
    let s = match rustix::net::socket(family, ty, protocol) {
        Ok(s) => s,
        Err(e) => return json!({ "socket_errno": e.raw_os_error() }),
    };
    if family == AddressFamily::INET6 {
        rustix::net::sockopt::set_ipv6_v6only(&s, kind == "tcp6only").expect("IPV6_V6ONLY");
    }
    let e = errno_of(rustix::net::bind(&s, &SocketAddr::new(ip, port)));
    let mut v = json!({ "errno": e, "port": local_port(&s) });
    if e == 0 && ty == SocketType::STREAM {
        rustix::net::listen(&s, 8).expect("listen");
        if kind == "tcp6" && ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            let c = TcpStream::connect_timeout(
                &SocketAddr::new(ADDR.into(), port),
                Duration::from_secs(5),
            );
            v["v4_connect"] = json!(c.is_ok());
        }
    }
    v
}

/// The loopback address the fixed-address modes use: an unusual one, so that
/// other tests on the machine binding 127.0.0.1 do not collide with ours.
const ADDR: Ipv4Addr = Ipv4Addr::new(127, 66, 0, 1);

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(ADDR.into(), port)
}

fn inuse(port: u16) -> Value {
    let a = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
    let first = errno_of(rustix::net::bind(&a, &v4(port)));
    let _ = rustix::net::listen(&a, 1);
    let b = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
    let second = errno_of(rustix::net::bind(&b, &v4(port)));
    json!({ "first": first, "second": second, "second_port": local_port(&b) })
}

/// `bind(fd, ptr, len)` with a raw pointer, as a buggy program would call it.
fn raw_bind(fd: RawFd, ptr: *const libc::sockaddr, len: libc::socklen_t) -> i32 {
    // SAFETY: the kernel validates the pointer and length; a bad one gives EFAULT
    // or EINVAL and nothing is written to our memory.
    let r = unsafe { libc::bind(fd, ptr, len) };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn sockaddr_in(port: u16) -> libc::sockaddr_in {
    fdgrab_testkit::sockaddr_v4(ADDR, port)
}

fn efault(port: u16) -> Value {
    let s = tcp_socket(AddressFamily::INET);
    // Page 1 of the address space is never mapped.
    let e = raw_bind(s.as_raw_fd(), 0x1000 as *const libc::sockaddr, 16);
    json!({ "errno": e, "port": local_port(&s), "asked": port })
}

fn addrform(port: u16) -> Value {
    let s = rustix::net::socket(AddressFamily::INET6, SocketType::DGRAM, None).expect("udp6");
    let mapped = SocketAddr::new(IpAddr::V6(ADDR.to_ipv6_mapped()), 9);
    rustix::net::connect(&s, &mapped).expect("connect to a v4-mapped address");
    let v4: libc::c_int = libc::AF_INET;
    // SAFETY: IPV6_ADDRFORM reads one int from the pointer given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_ADDRFORM,
            (&v4 as *const libc::c_int).cast(),
            4,
        )
    };
    assert_eq!(r, 0, "IPV6_ADDRFORM: {}", std::io::Error::last_os_error());
    rustix::net::connect_unspec(&s).expect("disconnect");
    let family = rustix::net::sockopt::socket_domain(&s).expect("SO_DOMAIN");
    let sa = sockaddr_in(port);
    let e = raw_bind(s.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), 16);
    json!({ "errno": e, "port": local_port(&s), "inet": family == AddressFamily::INET })
}

/// Tids of the first netns's binding threads, shared with the forked child.
const TID_MAP: usize = 1 << 22;

fn netns_tid_reuse(host_threads: u64, total: u64, port: u16) -> Value {
    // SAFETY: a fresh anonymous shared mapping; only this function uses it, as
    // bytes indexed by tid (tids are below 2^22, the kernel's PID_MAX_LIMIT).
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            TID_MAP,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap");
    let marks = map as usize;
    let mark = move |tid: i32| marks + tid as usize % TID_MAP;
    // Past the low tids, which the kernel skips once tids wrap (RESERVED_PIDS).
    for _ in 0..1000 {
        let t = std::thread::spawn(|| rustix::thread::gettid().as_raw_nonzero().get());
        if t.join().expect("thread") > 400 {
            break;
        }
    }
    let old = tcp_socket(AddressFamily::INET);
    let mut marked = 0;
    for _ in 0..host_threads {
        let t = std::thread::spawn(move || {
            let s = tcp_socket(AddressFamily::INET);
            let ok = rustix::net::bind(&s, &v4(port)).is_ok();
            let tid = rustix::thread::gettid().as_raw_nonzero().get();
            // SAFETY: inside the mapping; one thread writes at a time.
            unsafe { *(mark(tid) as *mut u8) = u8::from(ok) };
            ok
        });
        marked += u64::from(t.join().expect("host thread"));
    }
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    // SAFETY: every thread of this process was joined above: the child is a copy
    // of a single-threaded process.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(r);
        let v = netns_tid_reuse_child(&old, total, port, mark);
        let _ = rustix::io::write(&w, v.to_string().as_bytes());
        // SAFETY: leaves the forked child without running the parent's exit code.
        unsafe { libc::_exit(0) };
    }
    drop(w);
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut text);
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let mut v: Value = serde_json::from_str(&text).unwrap_or(json!({ "child": text }));
    v["marked"] = json!(marked);
    v
}

fn netns_tid_reuse_child(
    old: &OwnedFd,
    total: u64,
    port: u16,
    mark: impl Fn(i32) -> usize + Copy + Send + 'static,
) -> Value {
    let first = tcp_socket(AddressFamily::INET);
    let before = errno_of(rustix::net::bind(&first, &v4(port)));
    // SAFETY: unshare moves this single-threaded process; no memory is touched.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } != 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        return json!({ "before": before, "unshare_errno": e });
    }
    let moved = errno_of(rustix::net::bind(old, &v4(port + 1)));
    let old_fd = old.as_raw_fd();
    let (mut hits, mut refused, mut wrong, mut guest_ok) = (0u64, 0u64, Vec::new(), 0u64);
    for _ in 0..total {
        let t = std::thread::spawn(move || {
            let tid = rustix::thread::gettid().as_raw_nonzero().get();
            // SAFETY: inside the mapping, written before the fork.
            if unsafe { *(mark(tid) as *const u8) } == 0 {
                return None;
            }
            // SAFETY: the old socket stays open in this process while threads run.
            let old = unsafe { std::os::fd::BorrowedFd::borrow_raw(old_fd) };
            let e = errno_of(rustix::net::bind(old, &v4(port + 1)));
            let fresh = tcp_socket(AddressFamily::INET);
            let g = errno_of(rustix::net::bind(&fresh, &v4(port + 1)));
            Some((tid, e, g))
        });
        if let Some((tid, e, g)) = t.join().expect("thread") {
            hits += 1;
            if e == libc::EACCES {
                refused += 1;
            } else {
                wrong.push(format!("tid {tid}: old socket errno {e}"));
            }
            guest_ok += u64::from(g == 0);
        }
    }
    json!({ "before": before, "moved": moved, "hits": hits, "refused": refused,
            "guest_ok": guest_ok, "wrong": wrong.len(),
            "examples": wrong.iter().take(5).collect::<Vec<_>>(),
            "old_port": local_port(old) })
}

fn fuse_stall(path: &str, port: u16) -> Value {
    let at = match fdgrab_testkit::fuse::map_pages(path) {
        Ok(at) => at,
        Err(e) => return json!({ "error": e }),
    };
    let (mut stalls, mut binds) = (Vec::new(), Vec::new());
    for page in 0..2usize {
        let addr = at + 4096 * page;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let s = tcp_socket(AddressFamily::INET);
            let _ = tx.send(raw_bind(s.as_raw_fd(), addr as *const libc::sockaddr, 16));
        });
        stalls.push(rx.recv_timeout(Duration::from_secs(10)).unwrap_or(-1));
        let (tx, rx) = std::sync::mpsc::channel();
        let p = port + page as u16;
        std::thread::spawn(move || {
            let s = tcp_socket(AddressFamily::INET);
            let _ = tx.send(errno_of(rustix::net::bind(&s, &v4(p))));
            // The socket stays bound while the probe lives.
            std::mem::forget(s);
        });
        binds.push(rx.recv_timeout(Duration::from_secs(10)).unwrap_or(-1));
    }
    json!({ "stalls": stalls, "binds": binds })
}

fn uffd_bind() -> Value {
    let (_ufd, page) = match fdgrab_testkit::uffd::unfilled_page() {
        Ok(p) => p,
        Err(e) => return json!({ "error": e }),
    };
    let s = tcp_socket(AddressFamily::INET);
    let e = raw_bind(s.as_raw_fd(), page as *const libc::sockaddr, 16);
    json!({ "errno": e, "port": local_port(&s) })
}

fn short(port: u16) -> Value {
    let s = tcp_socket(AddressFamily::INET);
    let sa = sockaddr_in(port);
    let e = raw_bind(s.as_raw_fd(), (&sa as *const libc::sockaddr_in).cast(), 8);
    let negative = raw_bind(
        s.as_raw_fd(),
        (&sa as *const libc::sockaddr_in).cast(),
        u32::MAX,
    );
    json!({ "errno": e, "negative_len_errno": negative, "port": local_port(&s) })
}

fn rebind(port: u16) -> Value {
    let s = tcp_socket(AddressFamily::INET);
    let first = errno_of(rustix::net::bind(&s, &v4(port)));
    let again = errno_of(rustix::net::bind(&s, &v4(port)));
    let other = errno_of(rustix::net::bind(&s, &v4(port + 1)));
    json!({ "first": first, "again": again, "other": other, "port": local_port(&s) })
}

fn threads(t: usize, total: u64, base: u16) -> Value {
    let ok = Arc::new(AtomicU64::new(0));
    let denied = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let handles: Vec<_> = (0..t)
        .map(|i| {
            let per = total / t as u64 + u64::from((i as u64) < total % t as u64);
            let (ok, denied, wrong) = (ok.clone(), denied.clone(), wrong.clone());
            std::thread::spawn(move || {
                for n in 0..per {
                    let forbidden = n % 5 == 4;
                    let port = if forbidden { base - 1 } else { base + i as u16 };
                    let s = tcp_socket(AddressFamily::INET);
                    let r = rustix::net::bind(&s, &v4(port));
                    match (forbidden, r) {
                        (false, Ok(())) if local_port(&s) == port => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        (true, Err(Errno::ACCESS)) if local_port(&s) == 0 => {
                            denied.fetch_add(1, Ordering::Relaxed);
                        }
                        (f, r) => {
                            if let Ok(mut w) = wrong.lock() {
                                w.push(format!(
                                    "thread {i} port {port} forbidden={f}: {r:?} bound {}",
                                    local_port(&s)
                                ));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("bind thread");
    }
    let wrong = wrong.lock().map(|w| w.clone()).unwrap_or_default();
    json!({ "ok": ok.load(Ordering::Relaxed), "denied": denied.load(Ordering::Relaxed),
            "wrong": wrong.len(), "examples": wrong.iter().take(5).collect::<Vec<_>>() })
}

fn dup2(from: RawFd, to: RawFd) {
    // SAFETY: dup2 on numbers this test owns; the race with the binding thread is
    // the point of the test and can only make that thread's bind act on another file.
    unsafe { libc::dup2(from, to) };
}

fn dup2race(n: u64, port: u16) -> Value {
    const SLOT: RawFd = 900;
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().expect("pipe");
    let decoy = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None).expect("udp");
    let stop = Arc::new(AtomicBool::new(false));
    let (pr, dr) = (pipe_r.as_raw_fd(), decoy.as_raw_fd());
    let stop2 = stop.clone();
    let racer = std::thread::spawn(move || {
        let mut round = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            dup2(pr, SLOT);
            dup2(dr, SLOT);
            round += 1;
            // Pause now and then so the binding thread's socket also gets its turn.
            if round % 4 == 0 {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    });
    let mut counts = std::collections::BTreeMap::<i32, u64>::new();
    let mut bound_tcp = 0u64;
    let mut zero_but_unbound = 0u64;
    for _ in 0..n {
        let s = tcp_socket(AddressFamily::INET);
        dup2(s.as_raw_fd(), SLOT);
        let sa = sockaddr_in(port);
        let e = raw_bind(SLOT, (&sa as *const libc::sockaddr_in).cast(), 16);
        *counts.entry(e).or_default() += 1;
        if local_port(&s) == port {
            bound_tcp += 1;
        } else if e == 0 {
            zero_but_unbound += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().expect("racer");
    // SAFETY: SLOT is a number this test put there; closing it frees it.
    unsafe { libc::close(SLOT) };
    let counts: serde_json::Map<String, Value> = counts
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({ "errnos": counts, "bound_tcp": bound_tcp, "zero_but_unbound": zero_but_unbound,
            "decoy_port": local_port(&decoy) })
}

extern "C" fn on_sigurg(_: libc::c_int) {}

fn sigurg(n: u64, port: u16) -> Value {
    storm_binds(n, port, libc::SIGURG, libc::SA_RESTART)
}

/// Binds `n` sockets while another thread sends `sig` to the binding thread in a
/// storm; the handler does nothing and is installed with `sa_flags`. A bind that
/// fails `EINTR` (no `SA_RESTART`) is retried on the same socket.
fn storm_binds(n: u64, port: u16, sig: libc::c_int, sa_flags: libc::c_int) -> Value {
    // SAFETY: installs a handler that does nothing (async-signal-safe); with
    // SA_RESTART as Go's runtime does for its preemption signal, or without.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigurg as *const () as usize;
        sa.sa_flags = sa_flags;
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
    // SAFETY: gettid has no arguments.
    let tid = unsafe { libc::gettid() };
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (stop2, sent2) = (stop.clone(), sent.clone());
    let storm = std::thread::spawn(move || {
        // SAFETY: getpid has no arguments.
        let pid = unsafe { libc::getpid() };
        while !stop2.load(Ordering::Relaxed) {
            // SAFETY: tgkill with our own pid/tid and a handled signal.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
            sent2.fetch_add(1, Ordering::Relaxed);
        }
    });
    let (mut ok, mut interrupted, mut bad) = (0u64, 0u64, Vec::new());
    for _ in 0..n {
        let s = tcp_socket(AddressFamily::INET);
        let mut r = rustix::net::bind(&s, &v4(port));
        while r == Err(Errno::INTR) {
            interrupted += 1;
            r = rustix::net::bind(&s, &v4(port));
        }
        match r {
            Ok(()) if local_port(&s) == port => ok += 1,
            r => bad.push(format!("{r:?} port {}", local_port(&s))),
        }
    }
    stop.store(true, Ordering::Relaxed);
    storm.join().expect("storm thread");
    json!({ "ok": ok, "bad": bad.len(), "examples": bad.iter().take(5).collect::<Vec<_>>(),
            "signals": sent.load(Ordering::Relaxed), "interrupted": interrupted })
}

fn file_bind(path: &str, port: u16) -> Value {
    let file = std::fs::File::open(path).expect("open the file");
    let other = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let s = tcp_socket(AddressFamily::INET);
        errno_of(rustix::net::bind(&s, &v4(port + 1)))
    });
    let sa = sockaddr_in(port);
    let e = raw_bind(
        file.as_raw_fd(),
        (&sa as *const libc::sockaddr_in).cast(),
        16,
    );
    let other = other.join().expect("other bind");
    // Closed at exit, after the report: closing a FUSE file waits for its
    // server's answer to FLUSH, which a test may hold.
    std::mem::forget(file);
    json!({ "errno": e, "other_errno": other })
}

fn file_listen(path: &str) -> Value {
    let file = std::fs::File::open(path).expect("open the file");
    let e = errno_of(rustix::net::listen(&file, 5));
    // Closed at exit, after the report, as in `file_bind`.
    std::mem::forget(file);
    json!({ "errno": e })
}

fn flock_bind(path: &str, n: u64, port: u16) -> Value {
    use rustix::fs::{flock, FlockOperation};
    let sa = sockaddr_in(port);
    let (mut errno, mut still_locked) = (0, 0);
    for _ in 0..n {
        let file = std::fs::File::open(path).expect("open the file");
        // Waits for a copy of the last round's file, if one is still open.
        flock(&file, FlockOperation::LockExclusive).expect("first lock");
        errno = raw_bind(
            file.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            16,
        );
        drop(file);
        // The lock belongs to the open file, and every copy of it was closed.
        let again = std::fs::File::open(path).expect("open the file again");
        if flock(&again, FlockOperation::NonBlockingLockExclusive).is_err() {
            still_locked += 1;
        }
    }
    json!({ "errno": errno, "still_locked": still_locked })
}

fn fork_kill(n: u64, port: u16) -> Value {
    println!("{}", json!({ "ready": true }));
    let _ = std::io::stdout().flush();
    wait_line();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut killed = 0;
    for _ in 0..n {
        // SAFETY: the child only makes system calls (socket/bind/close) and _exit;
        // this program is single-threaded here.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            loop {
                // SAFETY: plain system calls in the forked child.
                unsafe {
                    let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    let one: libc::c_int = 1;
                    libc::setsockopt(
                        s,
                        libc::SOL_SOCKET,
                        libc::SO_REUSEADDR,
                        (&one as *const libc::c_int).cast(),
                        4,
                    );
                    let sa = sockaddr_in(port);
                    libc::bind(s, (&sa as *const libc::sockaddr_in).cast(), 16);
                    libc::close(s);
                }
            }
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(200 + seed % 3000));
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        killed += 1;
    }
    json!({ "killed": killed })
}

fn io_uring() -> Value {
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes a 120-byte io_uring_params.
    let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
    let errno = if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    };
    if r >= 0 {
        // SAFETY: r is the io_uring fd we just got.
        drop(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
    }
    json!({ "errno": errno })
}

fn nosys() -> Value {
    let errnos: Vec<i32> = [-1i64, 0xffff_ffff]
        .into_iter()
        .map(|nr| {
            // SAFETY: no call has this number; the kernel answers ENOSYS.
            let r = unsafe { libc::syscall(nr as libc::c_long) };
            if r == -1 {
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
            } else {
                0
            }
        })
        .collect();
    json!({ "errnos": errnos })
}

fn x32() -> Value {
    println!("{}", json!({ "calling": "x32 getpid" }));
    // SAFETY: an x32-numbered getpid; no memory involved. The filter kills us.
    let r = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
    json!({ "survived": true, "ret": r })
}

#[cfg(not(target_arch = "x86_64"))]
fn int80() -> Value {
    json!({ "unsupported": "int 0x80 exists on x86_64 only" })
}

#[cfg(target_arch = "x86_64")]
fn int80() -> Value {
    println!("{}", json!({ "calling": "int 0x80 getpid" }));
    let mut ret: i64 = 20; // __NR_getpid on i386
                           // SAFETY: the i386 getpid takes no arguments and touches no memory; `int 0x80`
                           // clobbers only eax (and r8-r11 are preserved by the kernel's compat entry).
    unsafe { std::arch::asm!("int 0x80", inout("rax") ret, options(nostack)) };
    json!({ "survived": true, "ret": ret })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn loop_bind(n: u64, port: u16) -> Value {
    let mut samples = Vec::with_capacity(n as usize);
    let mut fails = 0u64;
    for _ in 0..n {
        let t = Instant::now();
        let s = tcp_socket(AddressFamily::INET);
        if rustix::net::bind(&s, &v4(port)).is_err() {
            fails += 1;
        }
        drop(s);
        samples.push(t.elapsed().as_nanos() as f64);
    }
    json!({ "median_ns": median(samples), "fails": fails })
}

fn loop_getppid(n: u64) -> Value {
    const BATCH: u64 = 1000;
    let mut samples = Vec::new();
    for _ in 0..(n / BATCH).max(1) {
        let t = Instant::now();
        for _ in 0..BATCH {
            std::hint::black_box(rustix::process::getppid());
        }
        samples.push(t.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    json!({ "median_ns": median(samples) })
}

/// A raw socket(2): the fd, or minus the errno.
fn raw_socket(domain: i32, ty: i32, protocol: i32) -> RawFd {
    // SAFETY: socket(2) takes no pointers; the fd is left open on purpose (the
    // table's sockets live until the probe exits).
    let fd = unsafe { libc::socket(domain, ty, protocol) };
    if fd < 0 {
        -std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
    } else {
        fd
    }
}

fn raw_v6(addr: &str, port: u16, scope: u32, flow: u32) -> libc::sockaddr_in6 {
    let ip: Ipv6Addr = addr.parse().expect("an IPv6 address");
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: port.to_be(),
        sin6_flowinfo: flow.to_be(),
        sin6_addr: libc::in6_addr {
            s6_addr: ip.octets(),
        },
        sin6_scope_id: scope,
    }
}

fn parity() -> Value {
    let v4 = |a: &str, port: u16| fdgrab_testkit::sockaddr_v4(a.parse().expect("IPv4"), port);
    let tcp4 = || raw_socket(libc::AF_INET, libc::SOCK_STREAM, 0);
    let udp4 = || raw_socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
    let set_int = |s: RawFd, level: i32, opt: i32, value: i32| {
        // SAFETY: s is ours; the option is an int.
        unsafe { libc::setsockopt(s, level, opt, std::ptr::addr_of!(value).cast(), 4) };
    };
    let tcp6 = |only: i32| {
        let s = raw_socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
        set_int(s, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, only);
        s
    };
    let b4 = |fd: RawFd, sa: libc::sockaddr_in, len: u32| {
        let mut buf = [0u8; 200];
        // SAFETY: a sockaddr_in is plain bytes and fits the buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(std::ptr::addr_of!(sa).cast::<u8>(), buf.as_mut_ptr(), 16)
        };
        raw_bind(fd, buf.as_ptr().cast(), len)
    };
    let b6 = |fd: RawFd, sa: libc::sockaddr_in6, len: u32| {
        raw_bind(fd, std::ptr::addr_of!(sa).cast(), len)
    };
    let in6 = std::mem::size_of::<libc::sockaddr_in6>() as u32;
    let mut r = serde_json::Map::new();
    let mut put = |k: &str, v: i32| {
        r.insert(k.into(), v.into());
    };
    put("v4 len16", b4(tcp4(), v4("127.0.0.1", 80), 16));
    put("v4 len15", b4(tcp4(), v4("127.0.0.2", 81), 15));
    put("v4 len17", b4(tcp4(), v4("127.0.0.2", 82), 17));
    put("v4 len128", b4(tcp4(), v4("127.0.0.2", 83), 128));
    put("v4 len129", b4(tcp4(), v4("127.0.0.2", 83), 129));
    put("v4 len0", b4(tcp4(), v4("127.0.0.2", 83), 0));
    put("v4 len1", b4(tcp4(), v4("127.0.0.2", 83), 1));
    put("v4 len-1", b4(tcp4(), v4("127.0.0.2", 83), u32::MAX));
    put(
        "v6 addr on v4 socket",
        b6(tcp4(), raw_v6("::1", 84, 0, 0), in6),
    );
    put(
        "v4 addr on v6 socket len16",
        b4(tcp6(0), v4("127.0.0.2", 85), 16),
    );
    put(
        "v4 addr on v6 socket len28",
        b4(tcp6(0), v4("127.0.0.2", 85), 28),
    );
    let mut unspec = v4("0.0.0.0", 86);
    unspec.sin_family = libc::AF_UNSPEC as libc::sa_family_t;
    put("unspec any", b4(tcp4(), unspec, 16));
    put("unspec any on v6", b4(tcp6(0), unspec, 16));
    let mut unspec_lo = v4("127.0.0.1", 87);
    unspec_lo.sin_family = libc::AF_UNSPEC as libc::sa_family_t;
    put("unspec loopback", b4(tcp4(), unspec_lo, 16));
    put(
        "mapped on v6only",
        b6(tcp6(1), raw_v6("::ffff:127.0.0.3", 89, 0, 0), in6),
    );
    put(
        "mapped on dual",
        b6(tcp6(0), raw_v6("::ffff:127.0.0.3", 90, 0, 0), in6),
    );
    put("v6 len24", b6(tcp6(1), raw_v6("::1", 91, 0, 0), 24));
    put("v6 len26", b6(tcp6(1), raw_v6("::1", 92, 0, 0), 26));
    put("v6 len23", b6(tcp6(1), raw_v6("::1", 93, 0, 0), 23));
    put(
        "link-local without scope",
        b6(tcp6(1), raw_v6("fe80::1", 94, 0, 0), in6),
    );
    put(
        "link-local scope lo",
        b6(tcp6(1), raw_v6("fe80::1", 95, 1, 0), in6),
    );
    put(
        "link-local scope len24",
        b6(tcp6(1), raw_v6("fe80::1", 96, 1, 0), 24),
    );
    put("::1 scope 99", b6(tcp6(1), raw_v6("::1", 97, 99, 0), in6));
    put(
        "::1 flowinfo",
        b6(tcp6(1), raw_v6("::1", 98, 0, 0x12345), in6),
    );
    put("non-local", b4(tcp4(), v4("10.255.255.1", 99), 16));
    let s = tcp4();
    set_int(s, libc::IPPROTO_IP, libc::IP_FREEBIND, 1);
    put("non-local freebind", b4(s, v4("10.255.255.1", 100), 16));
    put("udp multicast", b4(udp4(), v4("224.0.0.1", 101), 16));
    put("udp broadcast", b4(udp4(), v4("127.255.255.255", 102), 16));
    put("tcp broadcast", b4(tcp4(), v4("127.255.255.255", 102), 16));
    let s = tcp4();
    b4(s, v4("127.0.0.4", 103), 16);
    put("already bound", b4(s, v4("127.0.0.4", 104), 16));
    put("same address again", b4(s, v4("127.0.0.4", 103), 16));
    let s = tcp4();
    // SAFETY: listen(2) on our own socket.
    unsafe { libc::listen(s, 1) };
    put("listening", b4(s, v4("127.0.0.4", 105), 16));
    let s = udp4();
    let peer = v4("127.0.0.1", 9);
    // SAFETY: connect(2) with our own sockaddr_in and its size.
    unsafe { libc::connect(s, std::ptr::addr_of!(peer).cast(), 16) };
    put("connected udp", b4(s, v4("127.0.0.4", 106), 16));
    let s = tcp4();
    b4(s, v4("127.0.0.5", 107), 16);
    // SAFETY: listen(2) on our own socket.
    unsafe { libc::listen(s, 1) };
    put("in use", b4(tcp4(), v4("127.0.0.5", 107), 16));
    let s = tcp4();
    set_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
    put("in use, SO_REUSEADDR", b4(s, v4("127.0.0.5", 107), 16));
    put("udp on a tcp port", b4(udp4(), v4("127.0.0.5", 107), 16));
    let path = std::fs::File::open("/").expect("/");
    put(
        "directory fd",
        b4(path.as_raw_fd(), v4("127.0.0.6", 108), 16),
    );
    put("fd -1", b4(-1, v4("127.0.0.6", 108), 16));
    put("fd 999999", b4(999_999, v4("127.0.0.6", 108), 16));
    put("efault", raw_bind(tcp4(), 8 as *const libc::sockaddr, 16));
    put(
        "v4 address on unix socket",
        b4(
            raw_socket(libc::AF_UNIX, libc::SOCK_STREAM, 0),
            v4("127.0.0.6", 108),
            16,
        ),
    );
    let s = raw_socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP);
    put(
        "ping",
        if s < 0 {
            s
        } else {
            b4(s, v4("127.0.0.6", 110), 16)
        },
    );
    put("dual-stack [::]", b6(tcp6(0), raw_v6("::", 112, 0, 0), in6));
    put(
        "dual-stack ::ffff:0.0.0.0",
        b6(tcp6(0), raw_v6("::ffff:0.0.0.0", 113, 0, 0), in6),
    );
    put(
        "0.0.0.0 after ::ffff:0.0.0.0",
        b4(tcp4(), v4("0.0.0.0", 113), 16),
    );
    put("port 0", b4(tcp4(), v4("127.0.0.7", 0), 16));
    Value::Object(r)
}
