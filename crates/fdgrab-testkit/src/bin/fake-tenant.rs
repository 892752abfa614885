//! A container as the agent sees it, without a runtime: installs a filter that
//! sends `bind` to a listener, hands the listener to the agent at SOCKET the way
//! runc does (one `ContainerProcessState` document, the fd in `SCM_RIGHTS`), then
//! makes binds on command, one JSON line per answer.
//!
//! `fake-tenant SOCKET ID [METADATA]`, then on stdin:
//! - `bind ADDR PORT`: one TCP bind; `{"errno":N,"us":T}`.
//! - `lat N ADDR PORT`: N binds of fresh sockets, each closed after;
//!   `{"n":N,"errors":E,"first_errno":X,"p50_us":..,"p99_us":..,"max_us":..}`.
//! - `threads N BASE PORT`: N threads bind at once, thread i to 127.BASE.(i/250).(i%250+1):PORT
//!   (BASE is the second octet); `{"ok":K,"errnos":[...]}` once all are done.
//! - `uffd PORT`: a thread binds with its sockaddr on a userfaultfd page that
//!   is never filled; prints `{"stalled":true}` at once and `{"uffd_errno":N}`
//!   when the bind returns.
//! - `uffd-fault PORT [MS]`: like `uffd`, but MS ms (0) after the bind returns
//!   (and its line is printed) the thread unmaps the page and closes the
//!   userfaultfd, so that a read still blocked on it ends in `EFAULT`.
//! - `mmap-bind PATH PAGE PORT`: maps the file at PATH (shared, read-only,
//!   `fuse::PAGES` pages) and has a thread bind with its sockaddr at the start of page PAGE,
//!   never touched here; prints `{"stalled":true}` at once and
//!   `{"mmap_errno":N}` when the bind returns. On a FUSE file whose daemon holds
//!   reads, whoever reads that sockaddr waits for the daemon.
//! - `file-bind PATH PORT [N]`: opens the file at PATH (kept open) and binds
//!   it to 127.66.0.1:PORT (the kernel answers ENOTSOCK); `{"errno":N}`. With
//!   N, N threads bind it at once instead and `{"started":N}` comes at once
//!   (the threads say nothing).
//! - `foreign PORT`: binds 0.0.0.0:PORT on a TCP socket made in a network namespace
//!   of its own (only with `FAKE_TENANT_FOREIGN=1`, which makes that socket at
//!   start and then drops to uid/gid 65534, so that the kernel alone would refuse
//!   a privileged port); `{"errno":N}`. `FAKE_TENANT_FOREIGN_PORT_START` sets that
//!   netns's `ip_unprivileged_port_start`.
//! - `storm N BASE PORT`: like `threads`, but every thread keeps binding (a fresh
//!   socket each time) until `stop`; `{"started":N}` once all run.
//! - `trickle SOCKET N`: N threads each connect to the agent at SOCKET and send
//!   a document that never ends in 256-byte writes, again and again, until
//!   `stop`; `{"started":N}` at once.
//! - `stop`: ends `storm` and `trickle`; `{"binds":B,"connections":C}` once every
//!   thread has ended.
//! - `fork-bind ADDR PORT FD [TIMES]`: a child process (under the same filter)
//!   binds a fresh TCP socket, placed at FD (closing the one before), to
//!   ADDR:PORT, TIMES times (1); `{"pid":P}` at once (the child may stay in a
//!   bind).
//! - `reap PID`: waits for that child; `{"reaped":PID}`.
//! - `clone-bind PID ADDR PORT FD`: a child made with `clone3` and `set_tid`, so
//!   that its pid is PID (free again after `reap`), binds one socket to
//!   ADDR:PORT and then keeps another, unbound, at FD; `{"pid":P,"errno":N}`.
//! - `query`: where that child's socket at FD is bound now;
//!   `{"addr":A,"port":N}`.
//! - `bind-fd FD ADDR PORT`: `bind(FD, ADDR:PORT)` with the raw number, a
//!   bad one (-1) included; `{"errno":N}`.
//! - `int80-geteuid ADDR PORT`: a thread drops to uid 65534 and makes the
//!   i386 `geteuid` (`int 0x80`, number 49, the native `bind`'s number) with
//!   the registers of a `bind` of a fresh TCP socket to ADDR:PORT (sockaddr in
//!   the low 4 GiB); `{"ret":R,"port":P}`, P where the socket is bound then
//!   (0: unbound). Only with `FAKE_TENANT_ANY_ABI=1`, whose filter traps
//!   number 49 whatever the ABI (`{"error":..}` on other architectures).
//! - `exit`.
//!
//! `FAKE_TENANT_ALLOW_BIND` sets the `org.fdgrab.allow-bind` annotation.
//! `FAKE_TENANT_POD` names the pod (else `pod-ID`): containers restarted in
//! one pod.
//! `FAKE_TENANT_SPLIT` sends the document in two writes 20 ms apart, the
//! listener with the second.

use fdgrab::seccomp::{self, Action, InstallFlags, SyscallFilter};
use serde_json::json;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

fn say(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn tcp() -> OwnedFd {
    rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .expect("socket")
}

fn bind_once(addr: Ipv4Addr, port: u16) -> (i32, u128, OwnedFd) {
    let s = tcp();
    let t = Instant::now();
    let r = rustix::net::bind(&s, &SocketAddrV4::new(addr, port));
    let us = t.elapsed().as_micros();
    (r.err().map_or(0, |e| e.raw_os_error()), us, s)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, id) = match (args.first(), args.get(1)) {
        (Some(s), Some(i)) => (s.clone(), i.clone()),
        _ => {
            eprintln!("usage: fake-tenant SOCKET ID [METADATA]");
            std::process::exit(2);
        }
    };
    let metadata = args.get(2).cloned().unwrap_or_default();
    // A test may lower the descriptor limit for the agent it starts; a tenant
    // holding a socket per thread needs more (root may raise its hard limit).
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(65_536),
            maximum: Some(65_536),
        },
    );
    let foreign = std::env::var_os("FAKE_TENANT_FOREIGN").map(|_| foreign_socket());
    let prog = match std::env::var_os("FAKE_TENANT_ANY_ABI") {
        // A runtime's profile may trap a number under every ABI it lists: the
        // native bind's number is another call elsewhere (i386 `geteuid`).
        Some(_) => seccomp::Program::from_insns(vec![
            seccomp::Insn::load_abs(0),
            seccomp::Insn::jeq(libc::SYS_bind as u32, 0, 1),
            seccomp::Insn::ret(Action::Notify),
            seccomp::Insn::ret(Action::Allow),
        ]),
        None => SyscallFilter::new(Action::Allow)
            .rule(libc::SYS_bind, Action::Notify)
            .build(),
    }
    .expect("filter");
    seccomp::set_no_new_privs().expect("no_new_privs");
    let listener = seccomp::install(&prog, InstallFlags::supervised())
        .expect("installing the filter")
        .expect("a listener");
    let mut doc = json!({
        "ociVersion": "1.0.2",
        "fds": ["seccompFd"],
        "pid": std::process::id(),
        "metadata": metadata,
        "state": {
            "ociVersion": "1.0.2",
            "id": id,
            "status": "creating",
            "pid": std::process::id(),
            "bundle": "/nonexistent",
            "annotations": {
                "io.kubernetes.pod.name": format!("pod-{id}"),
                "io.kubernetes.pod.namespace": "tenants",
                "io.kubernetes.container.name": "app",
            },
        },
    });
    if let Some(v) = std::env::var_os("FAKE_TENANT_POD") {
        doc["state"]["annotations"]["io.kubernetes.pod.name"] = v.to_string_lossy().into();
    }
    if let Some(v) = std::env::var_os("FAKE_TENANT_ALLOW_BIND") {
        doc["state"]["annotations"]["org.fdgrab.allow-bind"] = v.to_string_lossy().into();
    }
    let fd = listener.into_fd();
    {
        let conn = UnixStream::connect(&socket).expect("connecting to the agent");
        let text = doc.to_string();
        let mut rest = text.as_bytes();
        if std::env::var_os("FAKE_TENANT_SPLIT").is_some() {
            // A runtime whose document arrives in two reads, the listener with
            // the second.
            let (head, tail) = rest.split_at(rest.len() / 2);
            if let Err(e) = std::io::Write::write_all(&mut &conn, head) {
                say(json!({"ready": false, "error": format!("sending the first half: {e}")}));
                std::process::exit(1);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            rest = tail;
        }
        if let Err(e) = fdgrab::passfd::send_fds(&conn, rest, &[fd.as_fd()]) {
            // The agent closed the connection: a runtime would fail the container.
            say(json!({"ready": false, "error": format!("sending the listener: {e}")}));
            std::process::exit(1);
        }
    }
    drop(fd);
    if foreign.is_some() {
        // setresgid/setresuid to non-root ids clear every capability.
        rustix::thread::set_thread_res_gid(gid(), gid(), gid()).expect("setresgid");
        rustix::thread::set_thread_res_uid(uid(), uid(), uid()).expect("setresuid");
    }
    let mut foreign = foreign;
    say(json!({"ready": true, "pid": std::process::id()}));
    let mut held: Vec<OwnedFd> = Vec::new();
    let mut running: Vec<std::thread::JoinHandle<Sustained>> = Vec::new();
    let mut cloned: Option<(OwnedFd, OwnedFd)> = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let w: Vec<&str> = line.split_whitespace().collect();
        let ip = |i: usize| w.get(i).and_then(|s| s.parse::<Ipv4Addr>().ok());
        let num = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        match w.first().copied() {
            Some("bind") => {
                let (errno, us, s) = bind_once(ip(1).expect("ADDR"), num(2) as u16);
                held.push(s);
                say(json!({"errno": errno, "us": us}));
            }
            Some("lat") => lat(num(1) as usize, ip(2).expect("ADDR"), num(3) as u16),
            Some("threads") => threads(num(1) as usize, num(2) as u8, num(3) as u16),
            Some("uffd") => uffd(num(1) as u16, None),
            Some("uffd-fault") => uffd(num(1) as u16, Some(num(2))),
            Some("file-bind") => file_bind(w.get(1).copied().unwrap_or(""), num(2) as u16, num(3)),
            Some("mmap-bind") => mmap_bind(w.get(1).copied().unwrap_or(""), num(2) as usize),
            Some("storm") => {
                running.extend(storm(num(1) as usize, num(2) as u8, num(3) as u16));
                say(json!({"started": num(1)}));
            }
            Some("trickle") => {
                let socket = std::path::PathBuf::from(w.get(1).copied().unwrap_or(""));
                running.extend((0..num(2)).map(|_| {
                    let socket = socket.clone();
                    std::thread::spawn(move || trickle(&socket))
                }));
                say(json!({"started": num(2)}));
            }
            Some("stop") => {
                STOP.store(true, std::sync::atomic::Ordering::Release);
                let (mut binds, mut connections) = (0, 0);
                for h in running.drain(..) {
                    let s = h.join().expect("join");
                    binds += s.binds;
                    connections += s.connections;
                }
                STOP.store(false, std::sync::atomic::Ordering::Release);
                say(json!({"binds": binds, "connections": connections}));
            }
            Some("foreign") => {
                let Some(s) = foreign.take() else {
                    say(json!({"error": "no foreign socket (FAKE_TENANT_FOREIGN)"}));
                    continue;
                };
                let r =
                    rustix::net::bind(&s, &SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, num(1) as u16));
                held.push(s);
                say(json!({"errno": r.err().map_or(0, |e| e.raw_os_error())}));
            }
            Some("fork-bind") => {
                let sa = fdgrab_testkit::sockaddr_v4(ip(1).expect("ADDR"), num(2) as u16);
                let times = num(4).max(1);
                say(json!({"pid": fork_bind(sa, num(3) as i32, times)}));
            }
            Some("reap") => {
                let pid = num(1) as i32;
                // SAFETY: waits for our own child; the status is written to a local.
                let r = unsafe { libc::waitpid(pid, &mut 0, 0) };
                say(json!({"reaped": r}));
            }
            Some("clone-bind") => {
                let sa = fdgrab_testkit::sockaddr_v4(ip(2).expect("ADDR"), num(3) as u16);
                match clone_bind(num(1) as i32, sa, num(4) as i32) {
                    Ok((pid, errno, ctl)) => {
                        cloned = Some(ctl);
                        say(json!({"pid": pid, "errno": errno}));
                    }
                    Err(e) => say(json!({"error": e})),
                }
            }
            Some("query") => match cloned.as_ref().map(query) {
                Some(Some(sa)) => say(json!({
                    "addr": Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)).to_string(),
                    "port": u16::from_be(sa.sin_port),
                })),
                _ => say(json!({"error": "no cloned child to ask"})),
            },
            Some("bind-fd") => {
                let fd = w.get(1).and_then(|s| s.parse::<i32>().ok()).unwrap_or(-1);
                let sa = fdgrab_testkit::sockaddr_v4(ip(2).expect("ADDR"), num(3) as u16);
                // SAFETY: a bind with a pointer to our own sockaddr_in and its
                // size; a bad fd is the kernel's (or the supervisor's) to answer.
                let r = unsafe {
                    libc::bind(
                        fd,
                        std::ptr::addr_of!(sa).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                };
                let errno = if r == 0 {
                    0
                } else {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
                };
                say(json!({"errno": errno}));
            }
            Some("int80-geteuid") => say(int80_geteuid(ip(1).expect("ADDR"), num(2) as u16)),
            Some("exit") | None => break,
            Some(other) => say(json!({"error": format!("unknown command {other}")})),
        }
    }
}

fn uid() -> rustix::process::Uid {
    rustix::process::Uid::from_raw(65534)
}

fn gid() -> rustix::process::Gid {
    rustix::process::Gid::from_raw(65534)
}

/// A TCP socket made in a new network namespace by a thread that then ends: the
/// socket stays there while the process stays in its own.
fn foreign_socket() -> OwnedFd {
    std::thread::spawn(|| {
        // SAFETY: CLONE_NEWNET moves only this short-lived thread; no file table or
        // memory is unshared behind the standard library's back.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
            .expect("unshare(CLONE_NEWNET) needs root");
        if let Ok(start) = std::env::var("FAKE_TENANT_FOREIGN_PORT_START") {
            std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", start)
                .expect("setting the foreign netns's port threshold");
        }
        tcp()
    })
    .join()
    .expect("foreign socket thread")
}

fn lat(n: usize, addr: Ipv4Addr, port: u16) {
    let mut times = Vec::with_capacity(n);
    let (mut errors, mut first) = (0, 0);
    for _ in 0..n {
        let (errno, us, s) = bind_once(addr, port);
        drop(s);
        if errno != 0 {
            errors += 1;
            if first == 0 {
                first = errno;
            }
        }
        times.push(us);
    }
    times.sort_unstable();
    let q = |p: f64| {
        times
            .get(((times.len() as f64 - 1.0) * p) as usize)
            .copied()
    };
    say(json!({"n": n, "errors": errors, "first_errno": first,
        "p50_us": q(0.5), "p99_us": q(0.99), "max_us": times.last()}));
}

/// Set by `stop` for the sustained attacks.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stopped() -> bool {
    STOP.load(std::sync::atomic::Ordering::Acquire)
}

/// What one thread of a sustained attack did.
#[derive(Default)]
struct Sustained {
    binds: u64,
    connections: u64,
}

/// `n` threads that start together (with the caller too when `with_caller`, who
/// then calls `wait` on the barrier), thread i running `work` with
/// 127.BASE.(i/250).(i%250+1) and PORT.
fn binders<T: Send + 'static>(
    n: usize,
    base: u8,
    port: u16,
    with_caller: bool,
    work: fn(Ipv4Addr, u16) -> T,
) -> (
    Vec<std::thread::JoinHandle<T>>,
    std::sync::Arc<std::sync::Barrier>,
) {
    let start = std::sync::Arc::new(std::sync::Barrier::new(n + usize::from(with_caller)));
    let handles = (0..n)
        .map(|i| {
            let start = std::sync::Arc::clone(&start);
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    start.wait();
                    work(
                        Ipv4Addr::new(127, base, (i / 250) as u8, (i % 250 + 1) as u8),
                        port,
                    )
                })
                .expect("thread")
        })
        .collect();
    (handles, start)
}

/// `n` threads binding to 127.BASE.x.y:PORT until `stop`; returns once all run.
/// Every thread binds at least once, even if `stop` comes before the scheduler
/// ran it: a test may count on `n` calls having been made and answered.
fn storm(n: usize, base: u8, port: u16) -> Vec<std::thread::JoinHandle<Sustained>> {
    let (handles, start) = binders(n, base, port, true, |addr, port| {
        let mut done = Sustained::default();
        loop {
            drop(bind_once(addr, port));
            done.binds += 1;
            if stopped() {
                break done;
            }
        }
    });
    start.wait();
    handles
}

/// Sends never-ending documents to the agent at `socket` until `stop`.
fn trickle(socket: &std::path::Path) -> Sustained {
    let mut doc = br#"{"ociVersion":""#.to_vec();
    doc.resize((1 << 20) + 512, b'a');
    let mut done = Sustained::default();
    while !stopped() {
        let Ok(mut s) = UnixStream::connect(socket) else {
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        };
        done.connections += 1;
        // A write the agent does not drain times out, so that `stop` is seen.
        let _ = s.set_write_timeout(Some(std::time::Duration::from_millis(50)));
        'doc: for piece in doc.chunks(256) {
            let mut rest = piece;
            while !rest.is_empty() {
                match std::io::Write::write(&mut s, rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) && !stopped() => {}
                    Err(_) => break 'doc,
                }
                if stopped() {
                    break 'doc;
                }
            }
        }
    }
    done
}

fn threads(n: usize, base: u8, port: u16) {
    let (handles, _) = binders(n, base, port, false, bind_once);
    let results: Vec<(i32, u128, OwnedFd)> = handles
        .into_iter()
        .map(|h| h.join().expect("join"))
        .collect();
    let ok = results.iter().filter(|r| r.0 == 0).count();
    let mut errnos: Vec<i32> = results.iter().map(|r| r.0).filter(|&e| e != 0).collect();
    errnos.sort_unstable();
    errnos.dedup();
    say(json!({"ok": ok, "errnos": errnos}));
}

/// A sockaddr on a page registered with userfaultfd for missing-page faults that
/// nobody serves: whoever reads it from another process blocks. With
/// `unmap_after` (ms), the page is unmapped that long after the bind returns
/// and the userfaultfd closed: a read still blocked on it then fails with
/// `EFAULT`.
fn uffd(port: u16, unmap_after: Option<u64>) {
    let (ufd, page) = match fdgrab_testkit::uffd::unfilled_page() {
        Ok(p) => p,
        Err(e) => {
            say(json!({ "error": e }));
            return;
        }
    };
    std::thread::spawn(move || {
        let s = tcp();
        // SAFETY: bind reads 16 bytes at `page` (never touched here); the page
        // stays mapped for the life of the process.
        let r = unsafe { libc::bind(s.as_raw_fd(), page as *const libc::sockaddr, 16) };
        let errno = if r == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        };
        say(json!({"uffd_errno": errno, "port": port}));
        if let Some(ms) = unmap_after {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            // SAFETY: the page was mapped by unfilled_page and nothing here
            // refers to it any more.
            if unsafe { libc::munmap(page as *mut libc::c_void, 4096) } != 0 {
                say(json!({"error": format!("munmap: {}", std::io::Error::last_os_error())}));
            }
            drop(ufd);
            return;
        }
        // Keep the userfaultfd open: the page must stay unserved.
        std::mem::forget(ufd);
    });
    say(json!({"stalled": true}));
}

/// Binds an open file (see the `file-bind` command).
fn file_bind(path: &str, port: u16, threads: u64) {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return say(json!({"error": format!("open {path}: {e}")})),
    };
    let sa = fdgrab_testkit::sockaddr_v4(Ipv4Addr::new(127, 66, 0, 1), port);
    let fd = file.as_raw_fd();
    // Kept open for the life of the process: its close would be a FLUSH of
    // our own, which the test may hold.
    std::mem::forget(file);
    let bind = move || {
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: a bind of our own open file with a valid sockaddr_in.
        let r = unsafe { libc::bind(fd, std::ptr::from_ref(&sa).cast(), len) };
        if r == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        }
    };
    if threads == 0 {
        return say(json!({"errno": bind()}));
    }
    for _ in 0..threads {
        std::thread::spawn(move || {
            bind();
        });
    }
    say(json!({"started": threads}));
}

/// A bind whose sockaddr lies on page `page` of a shared mapping of `path`,
/// made on a thread of its own (see the `mmap-bind` command).
fn mmap_bind(path: &str, page: usize) {
    let at = match fdgrab_testkit::fuse::map_pages(path) {
        Ok(at) => at,
        Err(e) => return say(json!({ "error": e })),
    };
    let addr = at + 4096 * page.min(fdgrab_testkit::fuse::PAGES - 1);
    std::thread::spawn(move || {
        let s = tcp();
        // SAFETY: bind reads 16 bytes at `addr`, inside the mapping, which
        // stays for the life of the process.
        let r = unsafe { libc::bind(s.as_raw_fd(), addr as *const libc::sockaddr, 16) };
        let errno = if r == 0 {
            0
        } else {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        };
        say(json!({"mmap_errno": errno}));
    });
    say(json!({"stalled": true}));
}

/// In a forked child: a TCP socket at `fd`, bound to `sa`; the errno (0: bound).
/// Only async-signal-safe calls, on memory prepared before the fork.
fn bind_at(sa: &libc::sockaddr_in, fd: i32) -> i32 {
    // SAFETY: plain system calls on our own descriptors; `sa` is a valid
    // sockaddr_in of the length given.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        libc::dup2(s, fd);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, std::ptr::from_ref(sa).cast(), len) == 0 {
            0
        } else {
            *libc::__errno_location()
        }
    }
}

/// A child that binds a socket at `fd` to `sa` `times` times and exits; its pid.
fn fork_bind(sa: libc::sockaddr_in, fd: i32, times: u64) -> i32 {
    // SAFETY: the child runs only async-signal-safe calls (bind_at, _exit).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        for _ in 0..times {
            bind_at(&sa, fd);
        }
        // SAFETY: ends the forked child without running the parent's atexit work.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
}

/// A child with pid `pid` (clone3's `set_tid`) that binds one socket to `sa`,
/// keeps a second one unbound at `fd`, and answers `query` until its control
/// pipe closes. Returns its pid, the bind's errno, and the control pipe (our
/// write end, the end we read answers from).
fn clone_bind(
    pid: i32,
    sa: libc::sockaddr_in,
    fd: i32,
) -> Result<(i32, i32, (OwnedFd, OwnedFd)), i32> {
    let (go_r, go_w) = pipe();
    let (out_r, out_w) = pipe();
    let tids = [pid];
    // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal,
    // stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    let mut args = [0u64; 11];
    args[4] = libc::SIGCHLD as u64;
    args[8] = tids.as_ptr() as u64;
    args[9] = 1;
    // SAFETY: clone3 without CLONE_VM is a fork; the child runs only
    // async-signal-safe calls on memory prepared before it.
    let got = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args.as_mut_ptr(),
            std::mem::size_of_val(&args),
        )
    };
    if got < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    if got == 0 {
        // SAFETY: the child's own descriptors and stack buffers only.
        unsafe {
            libc::close(go_w.as_raw_fd());
            libc::close(out_r.as_raw_fd());
            let first = bind_at(&sa, 3000);
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            libc::dup2(s, fd);
            libc::write(out_w.as_raw_fd(), std::ptr::from_ref(&first).cast(), 4);
            let mut b = 0u8;
            while libc::read(go_r.as_raw_fd(), std::ptr::from_mut(&mut b).cast(), 1) == 1 {
                let mut name: libc::sockaddr_in = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                libc::getsockname(fd, std::ptr::from_mut(&mut name).cast(), &mut len);
                libc::write(
                    out_w.as_raw_fd(),
                    std::ptr::from_ref(&name).cast(),
                    std::mem::size_of::<libc::sockaddr_in>(),
                );
            }
            libc::_exit(0);
        }
    }
    drop((go_r, out_w));
    let mut errno = [0u8; 4];
    rustix::io::read(&out_r, &mut errno).map_err(|e| e.raw_os_error())?;
    Ok((got as i32, i32::from_ne_bytes(errno), (go_w, out_r)))
}

/// Asks the `clone_bind` child where its socket is bound.
fn query(ctl: &(OwnedFd, OwnedFd)) -> Option<libc::sockaddr_in> {
    rustix::io::write(&ctl.0, &[1]).ok()?;
    let mut buf = [0u8; std::mem::size_of::<libc::sockaddr_in>()];
    let n = rustix::io::read(&ctl.1, &mut buf).ok()?;
    (n == buf.len()).then(|| {
        // SAFETY: `buf` holds a whole sockaddr_in written by the child.
        unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) }
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn int80_geteuid(_: Ipv4Addr, _: u16) -> serde_json::Value {
    json!({"error": "int 0x80 exists on x86_64 only"})
}

#[cfg(target_arch = "x86_64")]
fn int80_geteuid(addr: Ipv4Addr, port: u16) -> serde_json::Value {
    std::thread::spawn(move || {
        // setresgid/setresuid of this thread alone: it makes the call.
        rustix::thread::set_thread_res_gid(gid(), gid(), gid()).expect("setresgid");
        rustix::thread::set_thread_res_uid(uid(), uid(), uid()).expect("setresuid");
        let s = tcp();
        // SAFETY: a fresh anonymous page below 4 GiB (i386 pointers are 32 bits),
        // unmapped below; nothing else refers to it.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return json!({"error": "mmap(MAP_32BIT) failed"});
        }
        let sa = fdgrab_testkit::sockaddr_v4(addr, port);
        // SAFETY: the page is ours, writable and large enough for a sockaddr_in.
        unsafe { std::ptr::write(page.cast::<libc::sockaddr_in>(), sa) };
        let mut ret: i64 = 49; // i386 geteuid, which takes no arguments
                               // SAFETY: the i386 geteuid reads no memory; the registers it ignores
                               // carry a bind's arguments for whoever decodes the call as one.
                               // `int 0x80` clobbers only eax (r8-r11 are preserved by the compat entry).
        unsafe {
            // rbx is LLVM's: swapped in and back around the call.
            std::arch::asm!(
                "xchg rbx, {fd}",
                "int 0x80",
                "xchg rbx, {fd}",
                fd = inout(reg) s.as_raw_fd() as u64 => _,
                inout("rax") ret,
                in("rcx") page as u64,
                in("rdx") std::mem::size_of::<libc::sockaddr_in>() as u64,
                options(nostack),
            )
        };
        let bound = rustix::net::getsockname(&s)
            .ok()
            .and_then(|a| std::net::SocketAddr::try_from(a).ok())
            .map_or(0, |a| a.port());
        // SAFETY: unmaps the page mapped above; nothing refers to it any more.
        unsafe { libc::munmap(page, 4096) };
        json!({"ret": ret, "port": bound})
    })
    .join()
    .expect("int 0x80 thread")
}
