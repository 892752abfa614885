//! A target process for fdgrab's tests. It opens descriptors, prints one JSON line
//! with its *own* view of them (fstat, getsockname, fcntl, ...), then waits for
//! stdin to close. Tests compare what fdgrab sees from outside with this report.
//!
//! Modes:
//! - `zoo [--nondumpable]`: one fd of every kind the inventory knows.
//! - `leader-exit`: opens a pipe, starts a thread, and ends the main thread with
//!   `SYS_exit`, leaving a process whose leader is a zombie.
//! - `many N`: N mixed descriptors (for benchmarks). Its files are in the report's
//!   `dir`, removed at EOF on stdin, or by the test's `Target` when dropped.
//!
//! Modes for the ptrace injection tests; each opens a file labelled `file` (content
//! `INJECT_FILE_CONTENT`) and reports it, then:
//! - `blocked-read`: blocks SIGUSR1/SIGUSR2, leaves one of each pending (thread- and
//!   process-directed), then loops on single `read(0)` calls, printing
//!   `{"n": ret, "errno": e, "data": "..."}` per call; ends at EOF or an error.
//! - `nanosleep MS`: one `nanosleep(MS)`, then prints `{"ret", "errno", "elapsed_ms"}`.
//! - `spin`: a single thread in a CPU-bound loop, printing `tick N` every 100 ms.
//! - `threads N`: N threads (spinning, sleeping, blocked on a pipe, waiting on a
//!   condvar) while the main thread echoes stdin lines back.
//! - `trap-socket`: like `deny-socket`, but the filter traps `socket()` with SIGSYS
//!   (which kills the process unless the signal never arrives).
//! - `accept`: one raw `accept4` on a loopback TCP listener (port in the report's
//!   `extra.port`), then prints `{"ret", "errno"}`.
//! - `epoll`: one raw `epoll_wait` on stdin, then prints `{"ret", "errno"}`.
//! - `ppoll`: blocks SIGUSR1, then waits in `ppoll` on stdin with a temporary mask
//!   of SIGUSR2 only; when stdin is readable prints `{"ret", "usr1", "usr2"}`: which
//!   of the two are blocked *after* ppoll has put the normal mask back.
//! - `deny-socket`: installs a seccomp filter that makes `socket()` fail with EPERM,
//!   then echoes stdin lines.
//! - `seccomp ACTION NAME,...`: like `blocked-read`, but once the report is out it
//!   installs a seccomp filter that answers the named syscalls (`socket`, `mmap`,
//!   `munmap`, `connect`, `sendmsg`, `recvmsg`, `dup3`, `close`, `fcntl`,
//!   `rt_sigprocmask`, `mknod`) with ACTION (`kill-process`, `kill-thread`, `trap`,
//!   `errno`, `notify` (with a listener nobody answers), `trace`, `log`), then echoes
//!   stdin with raw reads and writes only.
//! - `signal-read rt|usr2 restart|norestart`: a counting handler for SIGRTMIN (queued,
//!   so none merge) or SIGUSR2, with or without `SA_RESTART`, signals unblocked;
//!   then single raw `read(0)` calls, printing `{"n", "errno", "data", "count"}`.
//! - `vfork-sleep MS`: after the report, `vfork`s a child that sleeps MS and exits,
//!   so the main thread sits in uninterruptible sleep (state D) for that long; then
//!   echoes stdin like `blocked-read`.
//! - `lock-pi`: a helper thread holds a PI futex; the main thread blocks in
//!   `FUTEX_LOCK_PI` on it (interrupted, the kernel answers `-ERESTARTNOINTR`), with
//!   a counting SIGUSR1 handler without `SA_RESTART`. A line on stdin makes the helper
//!   unlock; the main thread then prints `{"ret", "errno", "count"}`.
//! - `exec-enosys NAME[=ERRNO],... -- CMD ARGS...`: makes the named syscalls
//!   (`pidfd_open`, `pidfd_getfd`, `statx`, `openat2`, `kcmp`, `socket`) fail with
//!   ENOSYS, or with ERRNO (`EPERM`, `EINVAL`, `EAFNOSUPPORT`) where given, then
//!   execs CMD. Prints no report.

use serde_json::{json, Value};
use std::ffi::CString;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("zoo");
    let report = match mode {
        "zoo" => zoo(args.iter().any(|a| a == "--nondumpable")),
        "leader-exit" => leader_exit(),
        "many" => many(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000)),
        "blocked-read" => return blocked_read(),
        "nanosleep" => return nanosleep(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000)),
        "spin" => return spin(),
        "fake-vdso" => return fake_vdso(),
        "threads" => return threads(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(8)),
        "deny-socket" => return deny_socket(),
        "trap-socket" => return trap_socket(),
        "ppoll" => return ppoll_mask(),
        "accept" => return blocked_accept(),
        "epoll" => return blocked_epoll(),
        "exec-enosys" => return exec_enosys(&args[1..]),
        "seccomp" => return seccomp_filtered(&args[1..]),
        "tsync-trap-when-traced" => return tsync_trap_when_traced(Tsync::TrapClose),
        "tsync-no-exec-when-traced" => return tsync_trap_when_traced(Tsync::NoExec),
        "tsync-notify-when-traced" => return tsync_trap_when_traced(Tsync::NotifyClose),
        "hijack-routine" => return hijack_routine(Hijack::Loop),
        "exec-when-traced" => return exec_when_traced(),
        "leader-exit-exec-when-traced" => return leader_exit_exec_when_traced(),
        "hold-unmap-when-traced" => return hold_unmap_when_traced(),
        "forge-routine" => return hijack_routine(Hijack::Forge),
        "unmap-routine" => return hijack_routine(Hijack::Unmap),
        "sigsys-routine" => return hijack_routine(Hijack::SendSigsys),
        "signal-read" => return signal_read(&args[1..]),
        "vfork-sleep" => {
            return vfork_sleep(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(3000))
        }
        "lock-pi" => return lock_pi(),
        "sigsuspend" => return sigsuspend_loop(),
        #[cfg(target_arch = "x86_64")]
        "ia32-read" => return ia32_read(),
        #[cfg(target_arch = "x86_64")]
        "int80-epoll-pwait2" => return int80_epoll_pwait2(),
        "try-grab" => {
            // Reports what fdgrab::grab says when called from this process (used to
            // test the library with dropped credentials); exits at once.
            emit(&try_grab(args.get(1), args.get(2)));
            return;
        }
        other => {
            eprintln!("fdgrab-target: unknown mode {other}");
            std::process::exit(2);
        }
    };
    emit(&report);
    wait_for_eof();
    if mode == "many" {
        // Closed stdin: the test is done with the files (a test that kills the
        // target instead removes them when its `Target` is dropped).
        if let Some(dir) = report["dir"].as_str() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A new, empty directory in the temp dir. The name carries the pid and the time,
/// so a directory left by an earlier process with the same (reused) pid, possibly
/// owned by another user, is never reused.
fn fresh_dir(kind: &str) -> std::path::PathBuf {
    loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("fdgrab-{kind}-{}-{nanos}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("creating {}: {e}", dir.display()),
        }
    }
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn wait_for_eof() {
    let stdin = std::io::stdin();
    let mut line = String::new();
    while stdin
        .lock()
        .read_line(&mut line)
        .map(|n| n > 0)
        .unwrap_or(false)
    {
        line.clear();
    }
}

fn check(r: libc::c_int, what: &str) -> RawFd {
    if r < 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
    r
}

fn try_grab(pid: Option<&String>, fd: Option<&String>) -> Value {
    let pid: i32 = pid.and_then(|p| p.parse().ok()).unwrap_or(0);
    let fd = fd
        .and_then(|f| f.parse().ok())
        .and_then(fdgrab::TargetFd::new);
    let Some(fd) = fd else {
        return json!({"error": "usage"});
    };
    match fdgrab::PidFd::open(pid).and_then(|p| fdgrab::grab::pidfd_getfd(&p, fd)) {
        Ok(_) => json!({"ok": true}),
        Err(e) => {
            let kind = format!("{e:?}");
            let variant = kind.split([' ', '{', '(']).next().unwrap_or("").to_string();
            json!({"error": variant, "message": e.to_string()})
        }
    }
}

/// Our own view of one descriptor.
fn describe(fd: RawFd, label: &str) -> Value {
    let st = rustix::fs::fstat(borrow(fd)).expect("fstat");
    // SAFETY: fcntl on a descriptor we own, no pointers.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    let fdfl = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    // SAFETY: lseek with SEEK_CUR reads the position without moving it.
    let off = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
    json!({
        "fd": fd,
        "label": label,
        "ino": st.st_ino,
        "dev": fdgrab_testkit::devstr(st.st_dev),
        "mode": st.st_mode & libc::S_IFMT,
        "size": st.st_size,
        "nlink": st.st_nlink,
        "offset": if off >= 0 { json!(off) } else { Value::Null },
        "append": fl & libc::O_APPEND != 0,
        "nonblock": fl & libc::O_NONBLOCK != 0,
        "accmode": fl & libc::O_ACCMODE,
        "cloexec": fdfl & libc::FD_CLOEXEC != 0,
    })
}

fn borrow<'a>(fd: RawFd) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: every fd passed here is kept open for the life of the process.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn sockname(fd: RawFd, peer: bool) -> Value {
    let addr = if peer {
        rustix::net::getpeername(borrow(fd))
    } else {
        rustix::net::getsockname(borrow(fd)).map(Some)
    };
    match addr {
        Ok(Some(a)) => {
            if let Ok(sa) = SocketAddr::try_from(a.clone()) {
                json!({"address": sa.ip().to_string(), "port": sa.port()})
            } else if let Ok(ua) = rustix::net::SocketAddrUnix::try_from(a) {
                if let Some(p) = ua.path() {
                    json!({"path": p.to_string_lossy()})
                } else if let Some(name) = ua.abstract_name().filter(|n| !n.is_empty()) {
                    json!({"path": format!("@{}", String::from_utf8_lossy(name))})
                } else {
                    Value::Null
                }
            } else {
                Value::Null
            }
        }
        _ => Value::Null,
    }
}

fn sock(fd: RawFd, label: &str, family: &str, ty: &str, proto: &str, state: Option<&str>) -> Value {
    let mut v = describe(fd, label);
    v["socket"] = json!({
        "family": family, "type": ty, "protocol": proto, "state": state,
        "local": sockname(fd, false), "peer": sockname(fd, true),
    });
    v
}

fn zoo(nondumpable: bool) -> Value {
    let dir = fresh_dir("zoo");
    let mut fds = Vec::new();

    // A regular file with its offset moved, and one in append mode.
    let path = dir.join("file.txt");
    std::fs::write(&path, b"hello, world\n").expect("write");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let ffd = f.into_raw_fd();
    // SAFETY: plain lseek on our fd.
    unsafe { libc::lseek(ffd, 7, libc::SEEK_SET) };
    let mut v = describe(ffd, "file");
    v["path"] = json!(path.to_string_lossy());
    fds.push(v);
    let a = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open append")
        .into_raw_fd();
    let mut v = describe(a, "append");
    v["path"] = json!(path.to_string_lossy());
    fds.push(v);

    // A file that was deleted while open.
    let del = dir.join("deleted.log");
    std::fs::write(&del, b"the deleted log's content\n").expect("write");
    let d = std::fs::File::open(&del).expect("open").into_raw_fd();
    std::fs::remove_file(&del).expect("unlink");
    let mut v = describe(d, "deleted");
    v["path"] = json!(del.to_string_lossy());
    v["content"] = json!("the deleted log's content\n");
    fds.push(v);

    // A directory and a character device.
    let dfd = std::fs::File::open(&dir).expect("open dir").into_raw_fd();
    let mut v = describe(dfd, "dir");
    v["path"] = json!(dir.to_string_lossy());
    fds.push(v);
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("null")
        .into_raw_fd();
    let mut v = describe(null, "devnull");
    v["path"] = json!("/dev/null");
    fds.push(v);

    // A pipe; the write end non-blocking.
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    let (r, w) = (r.into_raw_fd(), w.into_raw_fd());
    // SAFETY: fcntl on our fd.
    unsafe { libc::fcntl(w, libc::F_SETFL, libc::O_NONBLOCK) };
    fds.push(describe(r, "pipe-r"));
    fds.push(describe(w, "pipe-w"));

    // Anonymous inodes.
    // SAFETY: each call below creates a new descriptor and takes no pointers except
    // where noted; results are checked.
    let efd = check(unsafe { libc::eventfd(3, libc::EFD_CLOEXEC) }, "eventfd");
    fds.push(anon(efd, "eventfd"));
    // SAFETY: as above.
    let ep = check(unsafe { libc::epoll_create1(0) }, "epoll");
    fds.push(anon(ep, "epoll"));
    // SAFETY: as above.
    let tfd = check(
        unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, 0) },
        "timerfd",
    );
    fds.push(anon(tfd, "timerfd"));
    // SAFETY: an empty, initialised sigset on the stack.
    let sfd = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::signalfd(-1, &set, 0)
    };
    fds.push(anon(check(sfd, "signalfd"), "signalfd"));
    // SAFETY: pidfd_open(getpid(), 0): integers only.
    let pfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) } as RawFd;
    fds.push(anon(check(pfd, "pidfd_open"), "pidfd"));
    // SAFETY: no pointers.
    let ifd = check(unsafe { libc::inotify_init1(0) }, "inotify");
    fds.push(anon(ifd, "inotify"));
    if let Some(b) = bpf_map() {
        fds.push(anon(b, "bpf"));
    }
    if let Some(u) = io_uring() {
        fds.push(anon(u, "io_uring"));
    }

    // A memfd with content.
    let name = CString::new("zoo-memfd").expect("name");
    // SAFETY: a valid NUL-terminated name.
    let mfd = check(unsafe { libc::memfd_create(name.as_ptr(), 0) }, "memfd");
    // SAFETY: the buffer is valid for its length.
    unsafe { libc::write(mfd, b"memfd payload".as_ptr().cast(), 13) };
    // SAFETY: lseek on our fd.
    unsafe { libc::lseek(mfd, 3, libc::SEEK_SET) };
    let mut v = describe(mfd, "memfd");
    v["memfd"] = json!("zoo-memfd");
    v["content"] = json!("memfd payload");
    fds.push(v);

    // TCP: a listener, a client connection, and its accepted end; an IPv6 listener.
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("tcp listen");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (s, _) = l.accept().expect("accept");
    fds.push(sock(
        l.into_raw_fd(),
        "tcp-listen",
        "inet",
        "stream",
        "tcp",
        Some("LISTEN"),
    ));
    fds.push(sock(
        c.into_raw_fd(),
        "tcp-client",
        "inet",
        "stream",
        "tcp",
        Some("ESTABLISHED"),
    ));
    fds.push(sock(
        s.into_raw_fd(),
        "tcp-server",
        "inet",
        "stream",
        "tcp",
        Some("ESTABLISHED"),
    ));
    if let Ok(l6) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        fds.push(sock(
            l6.into_raw_fd(),
            "tcp6-listen",
            "inet6",
            "stream",
            "tcp",
            Some("LISTEN"),
        ));
    }
    // UDP, unconnected and connected; IPv6.
    let u = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
    let uc = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("udp");
    uc.connect(u.local_addr().expect("addr"))
        .expect("udp connect");
    fds.push(sock(
        u.into_raw_fd(),
        "udp",
        "inet",
        "dgram",
        "udp",
        Some("UNCONN"),
    ));
    fds.push(sock(
        uc.into_raw_fd(),
        "udp-connected",
        "inet",
        "dgram",
        "udp",
        Some("CONNECTED"),
    ));
    if let Ok(u6) = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) {
        fds.push(sock(
            u6.into_raw_fd(),
            "udp6",
            "inet6",
            "dgram",
            "udp",
            Some("UNCONN"),
        ));
    }
    // Unix: a stream pair, a listener on a path, an abstract datagram socket.
    let (p1, p2) = UnixStream::pair().expect("pair");
    let (p1, p2) = (p1.into_raw_fd(), p2.into_raw_fd());
    let mut v1 = sock(
        p1,
        "unix-pair-a",
        "unix",
        "stream",
        "unix",
        Some("CONNECTED"),
    );
    let mut v2 = sock(
        p2,
        "unix-pair-b",
        "unix",
        "stream",
        "unix",
        Some("CONNECTED"),
    );
    v1["socket"]["peer_inode"] = v2["ino"].clone();
    v2["socket"]["peer_inode"] = v1["ino"].clone();
    fds.push(v1);
    fds.push(v2);
    let upath = dir.join("listen.sock");
    let ul = UnixListener::bind(&upath).expect("unix listen");
    fds.push(sock(
        ul.into_raw_fd(),
        "unix-listen",
        "unix",
        "stream",
        "unix",
        Some("LISTEN"),
    ));
    let abs = format!("fdgrab-zoo-{}", std::process::id());
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()).expect("abstract")
    };
    let ud = UnixDatagram::bind_addr(&addr).expect("abstract bind");
    fds.push(sock(
        ud.into_raw_fd(),
        "unix-abstract",
        "unix",
        "dgram",
        "unix",
        Some("UNCONNECTED"),
    ));

    if nondumpable {
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
    json!({"pid": std::process::id(), "dir": dir.to_string_lossy(), "fds": fds})
}

fn anon(fd: RawFd, kind: &str) -> Value {
    let mut v = describe(fd, kind);
    v["anon"] = json!(kind);
    v
}

/// A one-entry BPF array map (needs CAP_BPF or root; skipped otherwise).
fn bpf_map() -> Option<RawFd> {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        rest: [u8; 112],
    }
    let attr = MapCreate {
        map_type: 2,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        rest: [0; 112],
    };
    // SAFETY: BPF_MAP_CREATE (0) with a zero-padded attr of the stated size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    (r >= 0).then_some(r as RawFd)
}

/// An io_uring instance (skipped where io_uring is disabled).
fn io_uring() -> Option<RawFd> {
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup(4, &params) with a zeroed, correctly sized params struct.
    let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
    (r >= 0).then_some(r as RawFd)
}

fn leader_exit() -> Value {
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    let (r, w) = (r.into_raw_fd(), w.into_raw_fd());
    let report =
        json!({"pid": std::process::id(), "fds": [describe(r, "pipe-r"), describe(w, "pipe-w")]});
    spawn_started(|| loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    });
    emit(&report);
    std::thread::sleep(std::time::Duration::from_millis(50));
    // SAFETY: ends only the calling (main) thread; the other thread keeps the
    // process, and its fd table, alive until the test kills it.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!()
}

/// `n` descriptors of mixed kinds, for benchmarks: files, pipes, TCP listeners and
/// connections, UDP, unix pairs, eventfds, memfds.
fn many(n: usize) -> Value {
    raise_nofile(n as u64 + 64);
    let dir = fresh_dir("many");
    let mut kept: Vec<OwnedFd> = Vec::with_capacity(n);
    let mut i = 0usize;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    while kept.len() < n {
        match i % 8 {
            0 => {
                let p = dir.join(format!("f{i}"));
                kept.push(std::fs::File::create(&p).expect("create").into());
            }
            1 => {
                let (r, w) = rustix::pipe::pipe().expect("pipe");
                kept.push(r);
                kept.push(w);
            }
            2 => kept.push(
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .expect("listen")
                    .into(),
            ),
            3 => {
                let c = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
                let (s, _) = listener.accept().expect("accept");
                kept.push(c.into());
                kept.push(s.into());
            }
            4 => kept.push(
                UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                    .expect("udp")
                    .into(),
            ),
            5 => {
                let (a, b) = UnixStream::pair().expect("pair");
                kept.push(a.into());
                kept.push(b.into());
            }
            6 => {
                // SAFETY: eventfd with integer arguments; wrapped at once.
                let e = check(unsafe { libc::eventfd(0, 0) }, "eventfd");
                // SAFETY: e is a fresh fd we own.
                kept.push(unsafe { OwnedFd::from_raw_fd(e) });
            }
            _ => {
                let name = CString::new(format!("bench-{i}")).expect("name");
                // SAFETY: a valid NUL-terminated name.
                let m = check(unsafe { libc::memfd_create(name.as_ptr(), 0) }, "memfd");
                // SAFETY: m is a fresh fd we own.
                kept.push(unsafe { OwnedFd::from_raw_fd(m) });
            }
        }
        i += 1;
    }
    let count = kept.len();
    let first = kept.first().map(|f| f.as_raw_fd()).unwrap_or(-1);
    std::mem::forget(kept);
    json!({"pid": std::process::id(), "count": count, "first": first, "dir": dir.to_string_lossy(), "fds": []})
}

fn raise_nofile(want: u64) {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let max = lim.maximum.unwrap_or(u64::MAX);
    let new = rustix::process::Rlimit {
        current: Some(want.min(max).max(lim.current.unwrap_or(0))),
        maximum: lim.maximum,
    };
    let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, new);
}

/// The content of the file every injection mode opens (label `file`).
const INJECT_FILE_CONTENT: &str = "inject test file\n";

fn inject_report(extra: Value) -> Value {
    let dir = fresh_dir("inject");
    let path = dir.join("file.txt");
    std::fs::write(&path, INJECT_FILE_CONTENT).expect("write");
    let fd = std::fs::File::open(&path).expect("open").into_raw_fd();
    let mut v = describe(fd, "file");
    v["path"] = json!(path.to_string_lossy());
    v["content"] = json!(INJECT_FILE_CONTENT);
    json!({"pid": std::process::id(), "dir": dir.to_string_lossy(), "fds": [v], "extra": extra})
}

/// One raw `read(0)` per line printed: no retry loop, so an `EINTR` or a wrong count
/// caused by the injection would show. Each line also carries how many signals the
/// `signal-read` handler has counted. Ends at EOF or an error other than EINTR.
fn echo_reads() {
    let mut buf = [0u8; 4096];
    loop {
        if PPOLL_FIRST.load(std::sync::atomic::Ordering::SeqCst) {
            ppoll_until_readable();
        }
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        let errno = if n < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        };
        let data = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
        let count = HANDLED.load(std::sync::atomic::Ordering::SeqCst);
        emit(&json!({"n": n, "errno": errno, "data": data, "count": count}));
        if n == 0 || (n < 0 && errno != libc::EINTR) {
            return;
        }
    }
}

/// Blocks SIGUSR1 and SIGUSR2 and leaves one of each pending: SIGUSR1 directed at
/// this thread, SIGUSR2 at the process.
fn leave_usr_signals_pending() {
    let set = sigset_of(&[libc::SIGUSR1, libc::SIGUSR2]);
    // SAFETY: blocks two signals in this thread; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // SAFETY: tgkill to our own thread, integers only.
    unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            std::process::id() as libc::c_long,
            rustix::thread::gettid().as_raw_nonzero().get() as libc::c_long,
            libc::SIGUSR1 as libc::c_long,
        )
    };
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::USR2)
        .expect("kill");
}

fn blocked_read() {
    leave_usr_signals_pending();
    emit(&inject_report(json!({})));
    echo_reads();
}

fn nanosleep(ms: u64) {
    emit(&inject_report(json!({"ms": ms})));
    let req = libc::timespec {
        tv_sec: (ms / 1000) as _,
        tv_nsec: ((ms % 1000) * 1_000_000) as _,
    };
    let mut rem = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let t0 = std::time::Instant::now();
    // SAFETY: both timespecs are valid locals.
    let r = unsafe { libc::nanosleep(&req, &mut rem) };
    let errno = if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    };
    emit(&json!({"ret": r, "errno": errno, "elapsed_ms": t0.elapsed().as_secs_f64() * 1000.0}));
    wait_for_eof();
}

fn spin() {
    emit(&inject_report(json!({})));
    let start = std::time::Instant::now();
    let mut acc: u64 = 1;
    let mut ticks = 0u64;
    loop {
        for i in 0..1_000_000u64 {
            acc = acc.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(acc);
        // Instant::now() goes through the vDSO: no syscall while spinning.
        if start.elapsed().as_millis() as u64 >= (ticks + 1) * 100 {
            ticks += 1;
            emit(&json!({"tick": ticks}));
            if ticks >= 1200 {
                return;
            }
        }
    }
}

/// Spins with its vDSO replaced by a readable, non-executable page that starts with
/// the bytes of a `syscall` instruction (what a process that unmapped its vDSO and
/// reused the address could look like). Prints `{"replaced": true}` once done.
fn fake_vdso() {
    emit(&inject_report(json!({})));
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let (start, end) = maps
        .lines()
        .find(|l| l.ends_with("[vdso]"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| {
            (
                usize::from_str_radix(a, 16).expect("hex"),
                usize::from_str_radix(b, 16).expect("hex"),
            )
        })
        .expect("no [vdso] mapping");
    // SAFETY: nothing below calls into the vDSO again (no clock reads); the new page
    // is mapped at the same address, private and anonymous.
    unsafe {
        check(libc::munmap(start as *mut _, end - start), "munmap");
        let p = libc::mmap(
            start as *mut _,
            end - start,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
        assert_eq!(p as usize, start, "mmap");
        *(start as *mut [u8; 2]) = [0x0f, 0x05];
    }
    raw_write(b"{\"replaced\":true}\n");
    let mut acc: u64 = 1;
    loop {
        acc = std::hint::black_box(acc.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn threads(n: usize) {
    let (r, _w) = rustix::pipe::pipe().expect("pipe");
    let r = std::sync::Arc::new(r);
    let pair = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    for i in 1..n {
        let r = r.clone();
        let pair = pair.clone();
        spawn_started(move || match i % 4 {
            0 => {
                let mut acc = 0u64;
                loop {
                    acc = std::hint::black_box(acc.wrapping_add(1));
                }
            }
            1 => loop {
                std::thread::sleep(std::time::Duration::from_millis(7));
            },
            2 => {
                let mut b = [0u8; 1];
                let _ = rustix::io::read(&*r, &mut b);
            }
            _ => {
                let (m, c) = &*pair;
                let mut g = m.lock().expect("lock");
                while !*g {
                    g = c.wait(g).expect("wait");
                }
            }
        });
    }
    emit(&inject_report(json!({"threads": n})));
    echo_reads();
}

/// Starts a thread running `f` and returns once it has started, since tests take
/// their snapshot of the maps after the report: the thread's start-up (its stack,
/// its alternate signal stack, the C library's first allocations in it) must not
/// change them later, which the static musl build showed. The channel is freed by
/// this thread, after the new one has dropped its end.
fn spawn_started<F: FnOnce() + Send + 'static>(f: F) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(0);
    std::thread::spawn(move || {
        drop(tx);
        f()
    });
    // Err once the sender is gone: that is the signal.
    let _ = rx.recv();
}

/// The calling (main) thread's `status`, opened before the report: the fd table
/// must not change while the test looks at it.
fn main_thread_status() -> std::fs::File {
    let main = rustix::thread::gettid().as_raw_nonzero().get();
    std::fs::File::open(format!("/proc/self/task/{main}/status")).expect("status")
}

/// Spins until the thread whose `status` this is has a tracer: an attack that
/// must come after fdgrab looked at the target and before it is done.
///
/// It allocates nothing: a thread that allocated (and freed) while the tracer runs
/// would change the maps that a test compares before and after.
fn spin_until_traced(status: &std::fs::File) {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    loop {
        let n = status.read_at(&mut buf, 0).unwrap_or(0);
        let traced = buf[..n]
            .split(|&b| b == b'\n')
            .find_map(|l| l.strip_prefix(b"TracerPid:"))
            .is_some_and(|v| v.trim_ascii() != b"0");
        if traced {
            return;
        }
        std::hint::spin_loop();
    }
}

/// Like `blocked-read`, with a second thread that waits for the main thread to be
/// traced and then, with `SECCOMP_FILTER_FLAG_TSYNC`, gives every thread a filter
/// that traps (SIGSYS) a `close` made 0x27 bytes into a page: where the injected
/// grab routine makes its `close`. A tracer that read the filters before (there
/// were none) learns of it only from the trap. See [`Tsync`] for the others.
fn tsync_trap_when_traced(what: Tsync) {
    let status = main_thread_status();
    // A program that installs a trapping filter handles SIGSYS: that handler must
    // survive a trap an injected call meets.
    install_counter(libc::SIGSYS, false);
    spawn_started(move || {
        spin_until_traced(&status);
        let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        let prog = [
            ins(0x20, 0, 0, 0),                      // ld nr
            ins(0x15, 0, 4, libc::SYS_close as u32), // jeq close
            ins(0x20, 0, 0, 8),                      // ld instruction_pointer (low)
            ins(0x54, 0, 0, 0xfff),                  // and
            ins(0x15, 0, 1, 0x27),                   // jeq
            ins(0x06, 0, 0, fdgrab_testkit::SECCOMP_RET_TRAP),
            ins(0x06, 0, 0, 0x7fff_0000),
        ];
        let no_exec_prog = [
            ins(0x20, 0, 0, 0),                      // ld nr
            ins(0x15, 0, 3, libc::SYS_mmap as u32),  // jeq mmap
            ins(0x20, 0, 0, 32),                     // ld args[2] (low)
            ins(0x45, 0, 1, libc::PROT_EXEC as u32), // jset
            ins(0x06, 0, 0, 0x0005_0000 | libc::EPERM as u32),
            ins(0x06, 0, 0, 0x7fff_0000),
        ];
        const TSYNC: u32 = 1;
        // NEW_LISTENER with TSYNC needs TSYNC_ESRCH.
        const NOTIFY: u32 = TSYNC | 8 | 16;
        let notify_prog = {
            let mut p = prog;
            p[5] = ins(0x06, 0, 0, 0x7fc0_0000);
            p
        };
        let (prog, flags): (&[libc::sock_filter], u32) = match what {
            Tsync::TrapClose => (&prog, TSYNC),
            Tsync::NoExec => (&no_exec_prog, TSYNC),
            Tsync::NotifyClose => (&notify_prog, NOTIFY),
        };
        // The listener (NotifyClose) stays open and is never read: the call waits.
        fdgrab_testkit::install_filter_with(prog, flags).expect("seccomp filter");
        loop {
            std::thread::park();
        }
    });
    emit(&inject_report(json!({})));
    echo_reads();
}

/// Like `blocked-read`, with a hostile second thread that attacks the tracer's
/// routine while it runs (see [`Hijack`]). Racing the routine from a spinning
/// thread lands too rarely on a busy machine, so the attack is paced by the
/// kernel: once the main thread is traced (after the tracer read our filters),
/// the thread adds, for every thread (TSYNC), a user-notification filter on the
/// routine's own call (its `sendmsg`, 0x1a bytes into a page, or its `close`,
/// 0x27 in). Its listener, this thread, then holds that call while it does its
/// harm, and lets it run on (`CONTINUE`). Every later call of those kinds at those
/// addresses is let through at once.
fn hijack_routine(how: Hijack) {
    if matches!(how, Hijack::Unmap) {
        install_counter(libc::SIGSEGV, false);
    }
    let status = main_thread_status();
    spawn_started(move || {
        spin_until_traced(&status);
        let (nr, at) = match how {
            Hijack::Forge => (libc::SYS_sendmsg, 0x1a),
            Hijack::Loop | Hijack::Unmap | Hijack::SendSigsys => (libc::SYS_close, 0x27),
        };
        let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        let prog = [
            ins(0x20, 0, 0, 0),           // ld nr
            ins(0x15, 0, 4, nr as u32),   // jeq
            ins(0x20, 0, 0, 8),           // ld instruction_pointer (low)
            ins(0x54, 0, 0, 0xfff),       // and
            ins(0x15, 0, 1, at),          // jeq
            ins(0x06, 0, 0, 0x7fc0_0000), // user notification
            ins(0x06, 0, 0, 0x7fff_0000), // allow
        ];
        // TSYNC, NEW_LISTENER, TSYNC_ESRCH.
        let fd = fdgrab_testkit::install_filter_with(&prog, 1 | 8 | 16).expect("seccomp filter");
        // SAFETY: the listener the kernel just gave us, owned by nothing else.
        let listener = fdgrab::seccomp::Listener::from_fd(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut done = false;
        while let Ok(Some(n)) = listener.recv() {
            if !done {
                done = true;
                hijack_page(how, n.data.instruction_pointer as usize & !0xfff);
            }
            let _ = listener.respond(n.id, fdgrab::seccomp::Response::Continue);
        }
    });
    emit(&inject_report(json!({})));
    echo_reads();
}

/// Does `how` to the routine's page at `page` (in this process), while its call
/// is held.
fn hijack_page(how: Hijack, page: usize) {
    let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
    match how {
        Hijack::Unmap => {
            // SAFETY: unmaps the tracer's scratch page, which nothing of ours uses.
            unsafe { libc::munmap(page as *mut libc::c_void, 4096) };
        }
        Hijack::Loop => {
            // SAFETY: the tracer's scratch page, mapped (its call is held), made
            // writable (or left alone if it cannot be); nothing of ours uses it.
            unsafe {
                if libc::mprotect(page as *mut libc::c_void, 4096, rwx) != 0 {
                    return;
                }
                let int3 = (page + 0x2e) as *mut u8;
                if std::ptr::read_volatile(int3) == 0xcc {
                    // jmp . (to itself)
                    std::ptr::write_volatile(int3, 0xeb);
                    std::ptr::write_volatile(int3.add(1), 0xfe);
                }
            }
        }
        Hijack::SendSigsys => {
            let pid = std::process::id() as libc::pid_t;
            // SAFETY: tgkill with integer arguments, to our own main thread.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGSYS) };
        }
        Hijack::Forge => {
            // SAFETY: as for Loop.
            if unsafe { libc::mprotect(page as *mut libc::c_void, 4096, rwx) } != 0 {
                return;
            }
            forge_rights(std::process::id() as libc::pid_t, page);
        }
    }
}

/// What `hijack-routine`'s second thread does to the routine's page.
#[derive(Clone, Copy)]
enum Hijack {
    /// Replaces the final `int3` with a jump to itself.
    Loop,
    /// Replaces the fd in the `SCM_RIGHTS` message with its own fd 0, so that
    /// what the tracer receives is not the fd it asked for.
    Forge,
    /// Unmaps the page (the routine faults), with a SIGSEGV handler installed
    /// that must survive the fault.
    Unmap,
    /// Sends SIGSYS to the main thread (a signal from a process, which the routine
    /// did not force): its `close` then runs, and the signal is met right after.
    SendSigsys,
}

/// Rewrites the fd of the first one-fd `SCM_RIGHTS` control message in the first
/// KiB at `at` (in this process, `me`) into 0.
fn forge_rights(me: libc::pid_t, at: usize) {
    // cmsg_len 20 (one fd), SOL_SOCKET, SCM_RIGHTS.
    let mut header = Vec::new();
    header.extend_from_slice(&20u64.to_ne_bytes());
    header.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
    header.extend_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
    let mut page = vec![0u8; 1024];
    let mut zero = 0i32.to_ne_bytes();
    let local = libc::iovec {
        iov_base: page.as_mut_ptr().cast(),
        iov_len: page.len(),
    };
    let remote = libc::iovec {
        iov_base: at as *mut libc::c_void,
        iov_len: page.len(),
    };
    // SAFETY: reads into `page`; a bad remote address gives EFAULT.
    let n = unsafe { libc::process_vm_readv(me, &local, 1, &remote, 1, 0) };
    let found = (n == page.len() as isize)
        .then(|| page.windows(header.len()).position(|w| w == header))
        .flatten();
    if let Some(off) = found {
        let local = libc::iovec {
            iov_base: zero.as_mut_ptr().cast(),
            iov_len: 4,
        };
        let remote = libc::iovec {
            iov_base: (at + off + header.len()) as *mut libc::c_void,
            iov_len: 4,
        };
        // SAFETY: writes the 4 bytes of `zero`; a bad address gives EFAULT.
        unsafe { libc::process_vm_writev(me, &local, 1, &remote, 1, 0) };
    }
}

/// The filter `tsync-*-when-traced` adds once the main thread is traced.
#[derive(Clone, Copy)]
enum Tsync {
    /// Traps (SIGSYS) a `close` made 0x27 bytes into a page.
    TrapClose,
    /// Refuses (EPERM) an `mmap` with PROT_EXEC, as an LSM would.
    NoExec,
    /// Sends a `close` made 0x27 bytes into a page to a user-notification
    /// listener that never answers.
    NotifyClose,
}

fn deny_socket() {
    fdgrab_testkit::install_errno_filter(&[(libc::SYS_socket, libc::EPERM)])
        .expect("seccomp filter");
    emit(&inject_report(json!({"denied": "socket"})));
    echo_reads();
}

fn trap_socket() {
    fdgrab_testkit::install_filter(&[(libc::SYS_socket, fdgrab_testkit::SECCOMP_RET_TRAP)])
        .expect("seccomp filter");
    emit(&inject_report(json!({"trapped": "socket"})));
    echo_reads();
}

fn seccomp_filtered(args: &[String]) {
    let usage = || -> ! {
        eprintln!("usage: fdgrab-target seccomp ACTION NAME,... [high|exec|ip2] [ppoll]");
        std::process::exit(2);
    };
    let (Some(action), Some(names)) = (args.first(), args.get(1)) else {
        usage()
    };
    let action: u32 = match action.as_str() {
        "kill-process" => 0x8000_0000,
        "kill-thread" => 0,
        "trap" => fdgrab_testkit::SECCOMP_RET_TRAP,
        "errno" => 0x0005_0000 | libc::EPERM as u32,
        "notify" => 0x7fc0_0000,
        "trace" => 0x7ff0_0000,
        "log" => 0x7ffc_0000,
        _ => usage(),
    };
    let mut nrs = Vec::new();
    for name in names.split(',') {
        nrs.push(match name {
            "socket" => libc::SYS_socket,
            "mmap" => libc::SYS_mmap,
            "munmap" => libc::SYS_munmap,
            "mprotect" => libc::SYS_mprotect,
            "pkey_mprotect" => libc::SYS_pkey_mprotect,
            "connect" => libc::SYS_connect,
            "sendmsg" => libc::SYS_sendmsg,
            "recvmsg" => libc::SYS_recvmsg,
            "dup3" => libc::SYS_dup3,
            "close" => libc::SYS_close,
            "fcntl" => libc::SYS_fcntl,
            "rt_sigprocmask" => libc::SYS_rt_sigprocmask,
            #[cfg(target_arch = "x86_64")]
            "mknod" => libc::SYS_mknod,
            // arm64 has only mknodat.
            #[cfg(not(target_arch = "x86_64"))]
            "mknod" => libc::SYS_mknodat,
            _ => usage(),
        });
    }
    leave_usr_signals_pending();
    if action == fdgrab_testkit::SECCOMP_RET_TRAP {
        // A program that installs a trapping filter handles SIGSYS: that handler
        // must survive a trap an injected call meets.
        install_counter(libc::SIGSYS, false);
    }
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = vec![ins(0x20, 0, 0, 0)]; // ld nr
                                             // "high": the action applies only when the first argument is above
                                             // 0x7f00_ffff_ffff (say, unmapping where the libraries and mmap areas live).
    let high = args[2..].iter().any(|a| a == "high");
    // "exec": only when the third argument has PROT_EXEC (an executable mmap).
    let exec = args[2..].iter().any(|a| a == "exec");
    // "ip2": only for a call made from 2 bytes into a page (a `syscall` instruction
    // at a page's start, as in code written at the start of a fresh mapping).
    let ip2 = args[2..].iter().any(|a| a == "ip2");
    // "ppoll": wait in ppoll with a mask (the one in force, so the signal state the
    // tests compare stays the same) before each read: a call that swaps masks.
    let in_ppoll = args[2..].iter().any(|a| a == "ppoll");
    let mut mask = sigset_of(&[]);
    // SAFETY: reads the current mask into an initialised set (before the filter,
    // which may forbid rt_sigprocmask).
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) };
    for &nr in &nrs {
        if exec {
            prog.push(ins(0x15, 0, 4, nr as u32));
            prog.push(ins(0x20, 0, 0, 32)); // ld args[2] (low half)
            prog.push(ins(0x45, 0, 1, libc::PROT_EXEC as u32)); // jset
            prog.push(ins(0x06, 0, 0, action));
            prog.push(ins(0x06, 0, 0, 0x7fff_0000));
        } else if ip2 {
            prog.push(ins(0x15, 0, 5, nr as u32));
            prog.push(ins(0x20, 0, 0, 8)); // ld instruction_pointer (low half)
            prog.push(ins(0x54, 0, 0, 0xfff)); // and
            prog.push(ins(0x15, 0, 1, 2)); // jeq
            prog.push(ins(0x06, 0, 0, action));
            prog.push(ins(0x06, 0, 0, 0x7fff_0000));
        } else if high {
            prog.push(ins(0x15, 0, 4, nr as u32));
            prog.push(ins(0x20, 0, 0, 20)); // ld args[0] >> 32
            prog.push(ins(0x25, 0, 1, 0x7f00)); // jgt
            prog.push(ins(0x06, 0, 0, action));
            prog.push(ins(0x06, 0, 0, 0x7fff_0000));
        } else {
            prog.push(ins(0x15, 0, 1, nr as u32));
            prog.push(ins(0x06, 0, 0, action));
        }
    }
    prog.push(ins(0x06, 0, 0, 0x7fff_0000));
    let report = serde_json::to_string(&inject_report(json!({"action": args[0], "calls": names})))
        .expect("json")
        + "\n";
    let flags = if args[0] == "notify" {
        fdgrab_testkit::SECCOMP_FLAG_NEW_LISTENER
    } else {
        0
    };
    // The listener (if any) stays open and unanswered: a notified call would hang.
    fdgrab_testkit::install_filter_with(&prog, flags).expect("seccomp filter");
    // From here on: raw read and write only, so the filter never meets our own calls.
    raw_write(report.as_bytes());
    let mut buf = [0u8; 4096];
    loop {
        if in_ppoll {
            let mut pfd = libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, no timeout, an initialised mask; glibc's
            // ppoll is the bare syscall.
            unsafe { libc::ppoll(&mut pfd, 1, std::ptr::null(), &mask) };
        }
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // SAFETY: ends the process; no destructors needed.
            unsafe { libc::_exit(0) };
        }
        // Each line comes back as it was read: the test's echo check.
        raw_write(b"{\"n\":");
        raw_write(n.to_string().as_bytes());
        raw_write(b",\"errno\":0,\"data\":");
        let quoted =
            serde_json::to_string(&String::from_utf8_lossy(&buf[..n as usize])).unwrap_or_default();
        raw_write(quoted.as_bytes());
        raw_write(b"}\n");
    }
}

static HANDLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    HANDLED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Installs [`count_signal`] for `sig`, with `SA_RESTART` if asked.
fn install_counter(sig: i32, restart: bool) {
    // SAFETY: a zeroed sigaction is valid; the fields used are set below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = count_signal as *const () as libc::sighandler_t;
    sa.sa_flags = if restart { libc::SA_RESTART } else { 0 };
    // SAFETY: installs a handler that only touches an atomic.
    check(
        unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) },
        "sigaction",
    );
}

fn signal_read(args: &[String]) {
    let sig = match args.first().map(String::as_str) {
        Some("rt") => libc::SIGRTMIN(),
        Some("usr2") => libc::SIGUSR2,
        Some("trap") => libc::SIGTRAP,
        _ => {
            eprintln!(
                "usage: fdgrab-target signal-read rt|usr2|trap restart|norestart [block-all|ignore-trap] [ppoll]"
            );
            std::process::exit(2);
        }
    };
    install_counter(sig, args.get(1).map(String::as_str) == Some("restart"));
    if args.get(2).map(String::as_str) == Some("ignore-trap") {
        // SAFETY: sets SIGTRAP's disposition to "ignore".
        unsafe { libc::signal(libc::SIGTRAP, libc::SIG_IGN) };
    }
    if args.get(2).map(String::as_str) == Some("block-all") {
        // The daemon pattern "block everything, take signals from a signalfd".
        // SAFETY: sigfillset on a local set, then a mask change of this thread.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
    }
    if args[2.min(args.len())..].iter().any(|a| a == "ppoll") {
        // Wait for input in a ppoll with a mask (the one in force) before each read:
        // a call that swaps masks, so a session blocks this thread's signals with an
        // injected rt_sigprocmask (and its signal-first retry), not with ptrace.
        PPOLL_FIRST.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    emit(&inject_report(json!({"signal": sig})));
    echo_reads();
}

/// Set by `signal-read ... ppoll`: [`echo_reads`] waits in `ppoll` before each read.
static PPOLL_FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Waits in `ppoll` with the mask in force until stdin is readable (handlers that
/// interrupt it run, and it is called again).
fn ppoll_until_readable() {
    let mut mask = sigset_of(&[]);
    // SAFETY: reads the current mask into an initialised set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask) };
    loop {
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout, an initialised mask.
        if unsafe { libc::ppoll(&mut pfd, 1, std::ptr::null(), &mask) } > 0 {
            return;
        }
    }
}

fn vfork_sleep(ms: u64) {
    emit(&inject_report(json!({"ms": ms})));
    let req = libc::timespec {
        tv_sec: (ms / 1000) as _,
        tv_nsec: ((ms % 1000) * 1_000_000) as _,
    };
    // vfork is the point: it is what leaves the parent in state D.
    #[allow(deprecated)]
    // SAFETY: the child only makes raw nanosleep and _exit calls on a timespec
    // prepared before, so it touches nothing the suspended parent relies on.
    let pid = unsafe { libc::vfork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            libc::syscall(libc::SYS_nanosleep, &req as *const libc::timespec, 0usize);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    echo_reads();
}

static PI_LOCK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn lock_pi() {
    install_counter(libc::SIGUSR1, false);
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_started(move || {
        let tid = rustix::thread::gettid().as_raw_nonzero().get() as u32;
        // Uncontended PI lock: the owner's tid in the word, no syscall.
        PI_LOCK
            .compare_exchange(
                0,
                tid,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            )
            .expect("free lock");
        tx.send(()).expect("send");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        // SAFETY: unlocks the PI futex we own; the kernel hands it to the waiter.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                PI_LOCK.as_ptr(),
                libc::FUTEX_UNLOCK_PI,
                0,
                std::ptr::null::<libc::timespec>(),
            )
        };
        // Keep the process alive until stdin closes.
        wait_for_eof();
    });
    rx.recv().expect("helper locked");
    emit(&inject_report(json!({})));
    // SAFETY: waits for the PI futex; the kernel reads and writes the word.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            PI_LOCK.as_ptr(),
            libc::FUTEX_LOCK_PI,
            0,
            std::ptr::null::<libc::timespec>(),
        )
    };
    let errno = if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    };
    let count = HANDLED.load(std::sync::atomic::Ordering::SeqCst);
    emit(&json!({"ret": r, "errno": errno, "count": count}));
    loop {
        std::thread::park();
    }
}

fn raw_write(mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: `b` is a valid buffer for its length.
        let n = unsafe { libc::write(1, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            return;
        }
        b = &b[n as usize..];
    }
}

fn exec_enosys(args: &[String]) {
    use std::os::unix::process::CommandExt;
    let (names, cmd) = match args.split_first() {
        Some((names, rest)) if rest.first().map(String::as_str) == Some("--") && rest.len() > 1 => {
            (names, &rest[1..])
        }
        _ => {
            eprintln!("usage: fdgrab-target exec-enosys NAME[=ERRNO],... -- CMD ARGS...");
            std::process::exit(2);
        }
    };
    let mut rules = Vec::new();
    for rule in names.split(',') {
        let (name, errno) = rule.split_once('=').unwrap_or((rule, "ENOSYS"));
        let nr = match name {
            "pidfd_open" => libc::SYS_pidfd_open,
            "pidfd_getfd" => libc::SYS_pidfd_getfd,
            "statx" => libc::SYS_statx,
            "openat2" => libc::SYS_openat2,
            "kcmp" => libc::SYS_kcmp,
            "socket" => libc::SYS_socket,
            other => {
                eprintln!("fdgrab-target: unknown syscall {other}");
                std::process::exit(2);
            }
        };
        let errno = match errno {
            "ENOSYS" => libc::ENOSYS,
            "EPERM" => libc::EPERM,
            "EINVAL" => libc::EINVAL,
            "EAFNOSUPPORT" => libc::EAFNOSUPPORT,
            other => {
                eprintln!("fdgrab-target: unknown errno {other}");
                std::process::exit(2);
            }
        };
        rules.push((nr, errno));
    }
    fdgrab_testkit::install_errno_filter(&rules).expect("seccomp filter");
    let e = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    eprintln!("fdgrab-target: exec {}: {e}", cmd[0]);
    std::process::exit(127);
}

fn sigset_of(sigs: &[i32]) -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the whole set.
    unsafe { libc::sigemptyset(set.as_mut_ptr()) };
    // SAFETY: initialised just above.
    let mut set = unsafe { set.assume_init() };
    for &sig in sigs {
        // SAFETY: an initialised set and a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

fn ppoll_mask() {
    let usr1 = sigset_of(&[libc::SIGUSR1]);
    // SAFETY: blocks SIGUSR1 in this thread; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, std::ptr::null_mut()) };
    emit(&inject_report(json!({})));
    let during = sigset_of(&[libc::SIGUSR2]);
    let mut pfd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout, a valid temporary mask.
    let r = unsafe { libc::ppoll(&mut pfd, 1, std::ptr::null(), &during) };
    let mut now = sigset_of(&[]);
    // SAFETY: reads the current mask into an initialised set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now) };
    // SAFETY: sigismember reads the initialised set.
    let (u1, u2) = unsafe {
        (
            libc::sigismember(&now, libc::SIGUSR1),
            libc::sigismember(&now, libc::SIGUSR2),
        )
    };
    emit(&json!({"ret": r, "usr1": u1 == 1, "usr2": u2 == 1}));
    wait_for_eof();
}

fn report_call(r: i64) {
    let errno = if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    };
    emit(&json!({"ret": r, "errno": errno}));
}

fn blocked_accept() {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let port = l.local_addr().expect("addr").port();
    emit(&inject_report(json!({"port": port})));
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: accept4 on our listener with null address pointers.
    let r = unsafe {
        libc::syscall(
            libc::SYS_accept4,
            l.as_raw_fd() as libc::c_long,
            null,
            null,
            0 as libc::c_long,
        )
    };
    report_call(r);
    wait_for_eof();
}

fn blocked_epoll() {
    // SAFETY: creates a new epoll fd; no pointers.
    let ep = check(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    );
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: registers fd 0 with a valid event struct.
    check(
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, 0, &mut ev) },
        "epoll_ctl",
    );
    emit(&inject_report(json!({})));
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: `out` has room for the 4 events asked for; no timeout.
    #[cfg(target_arch = "x86_64")]
    let r = unsafe {
        libc::syscall(
            libc::SYS_epoll_wait,
            ep as libc::c_long,
            out.as_mut_ptr(),
            4 as libc::c_long,
            -1 as libc::c_long,
        )
    };
    // arm64 has no epoll_wait; epoll_pwait without a mask is the same call.
    // SAFETY: as above; a null sigmask leaves the mask alone.
    #[cfg(not(target_arch = "x86_64"))]
    let r = unsafe {
        libc::syscall(
            libc::SYS_epoll_pwait,
            ep as libc::c_long,
            out.as_mut_ptr(),
            4 as libc::c_long,
            -1 as libc::c_long,
            std::ptr::null::<libc::sigset_t>(),
            8 as libc::c_long,
        )
    };
    report_call(r);
    wait_for_eof();
}

/// A 64-bit thread that waits in the ia32 `epoll_pwait2` (441) through `int $0x80`,
/// with a temporary mask that unblocks SIGUSR1 (blocked otherwise): its `orig_rax`
/// is an ia32 number, and its mask argument is in `edi`, not `r8` (kept 0 here).
/// Prints `{"ret", "count"}` each time the call returns (the SIGUSR1 handler's
/// count), then waits for a line on stdin before calling again.
#[cfg(target_arch = "x86_64")]
fn int80_epoll_pwait2() {
    install_counter(libc::SIGUSR1, false);
    let usr1 = sigset_of(&[libc::SIGUSR1]);
    // SAFETY: blocks SIGUSR1 in this thread; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, std::ptr::null_mut()) };
    // SAFETY: creates a new epoll fd (with nothing in it); no pointers.
    let ep = check(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    );
    // Pointers of an ia32 call are 32 bits: a page below 4 GiB for the empty
    // compat sigset (offset 0) and the events buffer (offset 64).
    // SAFETY: a fresh anonymous mapping, no address hint.
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
    assert_ne!(page, libc::MAP_FAILED, "mmap MAP_32BIT");
    let page = page as u64;
    emit(&inject_report(json!({})));
    let mut line = [0u8; 256];
    loop {
        let mut ret: u64 = 441;
        // SAFETY: ia32 epoll_pwait2(ep, page + 64, 1, NULL, page, 8): it writes at
        // most one 12-byte event at page + 64 and reads 8 bytes of mask at page. rbx
        // and rbp are saved around the call (the compiler reserves them).
        unsafe {
            std::arch::asm!(
                "push rbx",
                "push rbp",
                "mov ebx, {ep:e}",
                "mov ebp, 8",
                "int 0x80",
                "pop rbp",
                "pop rbx",
                ep = in(reg) ep,
                inout("rax") ret,
                in("rcx") page + 64,
                in("rdx") 1u64,
                in("rsi") 0u64,
                in("rdi") page,
                in("r8") 0u64,
            )
        };
        let count = HANDLED.load(std::sync::atomic::Ordering::SeqCst);
        emit(&json!({"ret": ret as i32, "count": count}));
        // SAFETY: `line` is writable for its length.
        if unsafe { libc::read(0, line.as_mut_ptr().cast(), line.len()) } <= 0 {
            return;
        }
    }
}

/// Blocks SIGUSR1, then waits for it in `rt_sigsuspend` with an empty mask (the
/// temporary mask that lets it through), printing `{"ret", "errno", "count"}` each
/// time the call returns, then waiting for a line on stdin before calling again.
fn sigsuspend_loop() {
    install_counter(libc::SIGUSR1, false);
    let usr1 = sigset_of(&[libc::SIGUSR1]);
    // SAFETY: blocks SIGUSR1 in this thread; a null old-set pointer is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, std::ptr::null_mut()) };
    emit(&inject_report(json!({})));
    let none = sigset_of(&[]);
    let mut line = [0u8; 256];
    loop {
        // SAFETY: an initialised set; the call only reads it.
        let ret = unsafe { libc::sigsuspend(&none) };
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let count = HANDLED.load(std::sync::atomic::Ordering::SeqCst);
        emit(&json!({"ret": ret, "errno": errno, "count": count}));
        // SAFETY: `line` is writable for its length.
        if unsafe { libc::read(0, line.as_mut_ptr().cast(), line.len()) } <= 0 {
            return;
        }
    }
}

/// Switches to 32-bit code (ia32, code segment 0x23) that makes a blocking
/// `read(0, buf, 64)` through `int $0x80`, then exits with the count read as its
/// status. First prints `{"ia32": false}` and returns when the kernel runs no ia32
/// code (a child that tries an ia32 `getpid` dies), else the usual report.
#[cfg(target_arch = "x86_64")]
fn ia32_read() {
    // SAFETY: the child only makes an ia32 getpid (no pointers) and exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: ia32 getpid takes no arguments; eax is its number and result.
        unsafe { std::arch::asm!("int 0x80", inout("eax") 20u32 => _) };
        // SAFETY: ends the child.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    if !libc::WIFEXITED(status) {
        emit(&json!({"ia32": false}));
        return;
    }
    // One page below 4 GiB: the code at its start, a buffer at 0x800, the stack
    // at its end (the 32-bit code sees only the low halves of rip and rsp).
    // SAFETY: a fresh anonymous mapping, no address hint.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED, "mmap MAP_32BIT");
    let base = page as u64;
    let buf = (base + 0x800) as u32;
    let mut code = vec![0xb8, 3, 0, 0, 0]; // mov eax, 3 (read)
    code.extend_from_slice(&[0x31, 0xdb]); // xor ebx, ebx
    code.push(0xb9); // mov ecx, buf
    code.extend_from_slice(&buf.to_le_bytes());
    code.extend_from_slice(&[0xba, 64, 0, 0, 0]); // mov edx, 64
    code.extend_from_slice(&[0xcd, 0x80]); // int 0x80
    code.extend_from_slice(&[0x89, 0xc3]); // mov ebx, eax
    code.extend_from_slice(&[0xb8, 252, 0, 0, 0]); // mov eax, 252 (exit_group)
    code.extend_from_slice(&[0xcd, 0x80, 0xf4]); // int 0x80; hlt
                                                 // SAFETY: the mapping is 4096 writable bytes; the code is far shorter.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), page.cast::<u8>(), code.len()) };
    emit(&inject_report(json!({"ia32": true})));
    // SAFETY: a far return into the 32-bit code segment at the code above, with a
    // stack in the same page; that code never comes back, it exits the process.
    unsafe {
        std::arch::asm!(
            "mov rsp, {stack}",
            "push 0x23",
            "push {code}",
            "retfq",
            stack = in(reg) base + 4096,
            code = in(reg) base,
            options(noreturn)
        )
    }
}

/// Once the main thread is traced, adds for every thread (TSYNC) a
/// user-notification filter on `munmap` of 16 KiB (the tracer's scratch page) and
/// returns its listener: the tracer's last call then waits for this thread.
fn listen_for_scratch_unmap(status: &std::fs::File) -> fdgrab::seccomp::Listener {
    spin_until_traced(status);
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let prog = [
        ins(0x20, 0, 0, 0),                       // ld nr
        ins(0x15, 0, 3, libc::SYS_munmap as u32), // jeq munmap
        ins(0x20, 0, 0, 24),                      // ld args[1] (low)
        ins(0x15, 0, 1, 16 * 1024),               // jeq 16 KiB
        ins(0x06, 0, 0, 0x7fc0_0000),             // user notification
        ins(0x06, 0, 0, 0x7fff_0000),             // allow
    ];
    // TSYNC, NEW_LISTENER, TSYNC_ESRCH.
    let fd = fdgrab_testkit::install_filter_with(&prog, 1 | 8 | 16).expect("seccomp filter");
    // SAFETY: the listener the kernel just gave us, owned by nothing else.
    fdgrab::seccomp::Listener::from_fd(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Like `blocked-read`, with a second thread that replaces the program while the
/// main thread is traced: when the tracer's `munmap` waits for it (see
/// [`listen_for_scratch_unmap`]), it runs `execve("/bin/sleep")`. The kernel then
/// kills the main thread and gives its pid to the exec'ing one: the tracer loses
/// its tracee while it waits for it, without a wake-up. The new program inherits
/// the filter, but not the listener (close-on-exec), and `sleep` makes no such
/// `munmap`.
fn exec_when_traced() {
    exec_when_thread_traced(main_thread_status());
    emit(&inject_report(json!({})));
    echo_reads();
}

/// The second thread of [`exec_when_traced`], for the thread whose `status` this is.
fn exec_when_thread_traced(status: std::fs::File) {
    spawn_started(move || {
        let listener = listen_for_scratch_unmap(&status);
        if let Ok(Some(_)) = listener.recv() {
            let err = std::os::unix::process::CommandExt::exec(
                std::process::Command::new("/bin/sleep").arg("60"),
            );
            eprintln!("fdgrab-target: exec: {err}");
            std::process::exit(1);
        }
    });
}

/// [`exec_when_traced`] in a process whose main thread has exited (as in
/// `leader-exit`): the tracer traces the echoing thread, not the leader, and the
/// execve, from a third thread, kills it and takes the leader's pid. The report
/// comes once the leader is a zombie.
fn leader_exit_exec_when_traced() {
    let leader = std::process::id();
    spawn_started(move || {
        exec_when_thread_traced(main_thread_status());
        let state = || {
            std::fs::read_to_string(format!("/proc/self/task/{leader}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        };
        while !state() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        emit(&inject_report(json!({})));
        echo_reads();
        std::process::exit(0);
    });
    std::thread::sleep(std::time::Duration::from_millis(20));
    // SAFETY: ends only the calling (main) thread; the others keep the process.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
}

/// Like `blocked-read`, with a second thread that holds the tracer's `munmap` (see
/// [`listen_for_scratch_unmap`]) and prints `{"held": true}` when it does, so that
/// the test can signal the process while the session is sure to be under way.
/// Every `munmap` after the first is let through at once.
fn hold_unmap_when_traced() {
    let status = main_thread_status();
    spawn_started(move || {
        let listener = listen_for_scratch_unmap(&status);
        let mut first = true;
        loop {
            // `None`: interrupted (the stop signal the test sends), or the call
            // went away (a signal interrupted it; it comes again when restarted).
            let n = match listener.recv() {
                Ok(Some(n)) => n,
                Ok(None) => continue,
                Err(e) => {
                    eprintln!("fdgrab-target: listener: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    continue;
                }
            };
            if first {
                first = false;
                // Not `emit`: the traced main thread may have been stopped while
                // it held the stdout lock (just after printing its report), and
                // would hold it until the call this thread holds returns.
                let line = b"{\"held\":true}\n";
                // SAFETY: writes `line`, valid for its length, to fd 1.
                unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
                continue;
            }
            let _ = listener.respond(n.id, fdgrab::seccomp::Response::Continue);
        }
    });
    emit(&inject_report(json!({})));
    echo_reads();
}
