//! A target process for fdgrab's tests. It opens descriptors, prints one JSON line
//! with its *own* view of them (fstat, getsockname, fcntl, ...), then waits for
//! stdin to close. Tests compare what fdgrab sees from outside with this report.
//!
//! Modes:
//! - `zoo [--nondumpable]`: one fd of every kind the inventory knows.
//! - `leader-exit`: opens a pipe, starts a thread, and ends the main thread with
//!   `SYS_exit`, leaving a process whose leader is a zombie.
//! - `many N`: N mixed descriptors (for benchmarks).

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
    match fdgrab::PidFd::open(pid).and_then(|p| fdgrab::grab(&p, fd)) {
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
    let dir = std::env::temp_dir().join(format!("fdgrab-zoo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
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
    std::thread::spawn(|| loop {
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
    let dir = std::env::temp_dir().join(format!("fdgrab-many-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
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
