//! A small server that speaks systemd socket activation, for `fdgrab exec` tests.
//!
//! `fdgrab-activated serve [--listen SPEC]... [--reuseport N] [--ready MODE]`
//!   Takes its sockets from `LISTEN_FDS` when `LISTEN_PID` is its own pid, and
//!   otherwise creates them from `--listen` (`tcp:127.0.0.1:0`, `tcp:[::1]:0`,
//!   `udp:127.0.0.1:0`, `unix:PATH`, `unixdgram:PATH`; `--reuseport N` makes N
//!   SO_REUSEPORT listeners per tcp spec). Prints one JSON line (pid, sockets,
//!   activation variables), then answers every stream connection and every
//!   datagram with `pid=PID\n`. SIGTERM/SIGINT: finishes the request in hand and
//!   exits 0, leaving queued connections in the (shared) socket.
//!   `--ready` is `notify` (default: READY=1 to NOTIFY_SOCKET once serving),
//!   `never` (serve, never notify), `exit:CODE` (exit at once), or `delay:MS`.
//!
//! `fdgrab-activated hold --listen SPEC...`
//!   Opens the sockets like `serve`, prints the same report, and never accepts:
//!   an old server whose only role is to own the listeners (for benchmarks).
//!
//! `fdgrab-activated probe FILE`
//!   Writes what it was started with (pid, environment, every fd with its fd flags,
//!   status flags and socket identity) to FILE as JSON, sends READY=1 if
//!   NOTIFY_SOCKET is set, and waits for SIGTERM. Used to compare `fdgrab exec`
//!   with `systemd-socket-activate`.

use fdgrab::signalfd::SignalFd;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::net::{sockopt, AddressFamily, SocketType};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..], false),
        Some("hold") => serve(&args[1..], true),
        Some("probe") => probe(
            args.get(1)
                .map(String::as_str)
                .unwrap_or_else(|| die("probe FILE")),
        ),
        _ => die("usage: fdgrab-activated serve|probe ..."),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("fdgrab-activated: {msg}");
    std::process::exit(2)
}

enum Sock {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Unix(UnixListener),
    UnixDgram(UnixDatagram),
}

impl Sock {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Udp(s) => s.as_fd(),
            Sock::Unix(s) => s.as_fd(),
            Sock::UnixDgram(s) => s.as_fd(),
        }
    }

    fn describe(&self) -> Value {
        let fd = self.fd().as_raw_fd();
        match self {
            Sock::Tcp(s) => {
                json!({"fd": fd, "kind": "tcp", "addr": s.local_addr().map(|a| a.to_string()).ok()})
            }
            Sock::Udp(s) => {
                json!({"fd": fd, "kind": "udp", "addr": s.local_addr().map(|a| a.to_string()).ok()})
            }
            Sock::Unix(s) => json!({"fd": fd, "kind": "unix",
                "path": s.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.to_string_lossy().into_owned()))}),
            Sock::UnixDgram(s) => json!({"fd": fd, "kind": "unixdgram",
                "path": s.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.to_string_lossy().into_owned()))}),
        }
    }
}

fn activation_fds() -> Option<Vec<OwnedFd>> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let n: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    // SAFETY: with LISTEN_PID naming us, fds 3..3+n were handed to us and nothing else
    // in this process has claimed them.
    Some(
        (3..3 + n)
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect(),
    )
}

fn classify(fd: OwnedFd) -> Sock {
    let domain =
        sockopt::socket_domain(&fd).unwrap_or_else(|e| die(&format!("fd {}: {e}", fd.as_raw_fd())));
    let ty =
        sockopt::socket_type(&fd).unwrap_or_else(|e| die(&format!("fd {}: {e}", fd.as_raw_fd())));
    match (domain, ty) {
        (AddressFamily::INET | AddressFamily::INET6, SocketType::STREAM) => Sock::Tcp(fd.into()),
        (AddressFamily::INET | AddressFamily::INET6, SocketType::DGRAM) => Sock::Udp(fd.into()),
        (AddressFamily::UNIX, SocketType::STREAM) => Sock::Unix(fd.into()),
        (AddressFamily::UNIX, SocketType::DGRAM) => Sock::UnixDgram(fd.into()),
        _ => die(&format!("fd {}: unsupported socket", fd.as_raw_fd())),
    }
}

fn reuseport_listeners(addr: SocketAddr, n: usize) -> Vec<Sock> {
    use rustix::net::{bind, listen, socket};
    let mut out = Vec::new();
    let mut bound = addr;
    for _ in 0..n {
        let family = if addr.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let s = socket(family, SocketType::STREAM, None)
            .unwrap_or_else(|e| die(&format!("socket: {e}")));
        sockopt::set_socket_reuseport(&s, true)
            .unwrap_or_else(|e| die(&format!("SO_REUSEPORT: {e}")));
        bind(&s, &bound).unwrap_or_else(|e| die(&format!("bind {bound}: {e}")));
        listen(&s, 128).unwrap_or_else(|e| die(&format!("listen: {e}")));
        let l: TcpListener = s.into();
        bound = l
            .local_addr()
            .unwrap_or_else(|e| die(&format!("local_addr: {e}")));
        out.push(Sock::Tcp(l));
    }
    out
}

fn open_spec(spec: &str, reuseport: usize) -> Vec<Sock> {
    let (kind, rest) = spec
        .split_once(':')
        .unwrap_or_else(|| die(&format!("bad --listen {spec}")));
    let inet = || -> SocketAddr {
        rest.parse()
            .unwrap_or_else(|_| die(&format!("bad address {rest}")))
    };
    match kind {
        "tcp" if reuseport > 1 => reuseport_listeners(inet(), reuseport),
        "tcp" => vec![Sock::Tcp(
            TcpListener::bind(inet()).unwrap_or_else(|e| die(&format!("{spec}: {e}"))),
        )],
        "udp" => vec![Sock::Udp(
            UdpSocket::bind(inet()).unwrap_or_else(|e| die(&format!("{spec}: {e}"))),
        )],
        "unix" => vec![Sock::Unix(
            UnixListener::bind(rest).unwrap_or_else(|e| die(&format!("{spec}: {e}"))),
        )],
        "unixdgram" => {
            vec![Sock::UnixDgram(
                UnixDatagram::bind(rest).unwrap_or_else(|e| die(&format!("{spec}: {e}"))),
            )]
        }
        _ => die(&format!("unknown kind in --listen {spec}")),
    }
}

fn notify(state: &str) {
    let Ok(addr) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let r = if let Some(name) = addr.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &addr)
    };
    if let Err(e) = r {
        eprintln!("fdgrab-activated: notify {addr}: {e}");
    }
}

fn serve(args: &[String], hold: bool) {
    let mut specs = Vec::new();
    let mut reuseport = 1;
    let mut ready = "notify".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--listen" => specs.push(val()),
            "--reuseport" => reuseport = val().parse().unwrap_or_else(|_| die("--reuseport N")),
            "--ready" => ready = val(),
            other => die(&format!("unknown option {other}")),
        }
    }
    if let Some(code) = ready.strip_prefix("exit:") {
        std::process::exit(code.parse().unwrap_or(1));
    }
    let signals =
        SignalFd::block(&[libc::SIGTERM, libc::SIGINT]).unwrap_or_else(|e| die(&e.to_string()));
    let activated = activation_fds();
    let socks: Vec<Sock> = match activated {
        Some(fds) => fds.into_iter().map(classify).collect(),
        None => specs.iter().flat_map(|s| open_spec(s, reuseport)).collect(),
    };
    // Real servers make their listeners non-blocking: with a socket shared between
    // two processes, a readable listener may be empty by the time we accept.
    for s in &socks {
        let _ = rustix::io::ioctl_fionbio(s.fd(), true);
    }
    let env = |k: &str| std::env::var(k).ok();
    let report = json!({
        "pid": std::process::id(),
        "activated": env("LISTEN_PID").is_some() && env("LISTEN_FDS").is_some(),
        "listen_fds": env("LISTEN_FDS"), "listen_fdnames": env("LISTEN_FDNAMES"),
        "sockets": socks.iter().map(Sock::describe).collect::<Vec<_>>(),
    });
    println!("{report}");
    let _ = std::io::stdout().flush();
    match ready.as_str() {
        "notify" => notify("READY=1\nSTATUS=serving\n"),
        "never" => {}
        d if d.starts_with("delay:") => {
            std::thread::sleep(Duration::from_millis(d[6..].parse().unwrap_or(0)));
            notify("READY=1\n");
        }
        other => die(&format!("unknown --ready {other}")),
    }
    if hold {
        let mut pfd = [PollFd::new(&signals, PollFlags::IN)];
        while !matches!(poll(&mut pfd, None), Ok(n) if n > 0) {}
        std::process::exit(0);
    }
    let reply = format!("pid={}\n", std::process::id());
    // A socket closed under us (fdgrab exec --steal) polls as POLLNVAL; it is dropped
    // from the set without closing the number, which is no longer ours.
    let mut socks: Vec<Option<Sock>> = socks.into_iter().map(Some).collect();
    loop {
        let live: Vec<usize> = (0..socks.len()).filter(|&i| socks[i].is_some()).collect();
        let mut fds: Vec<PollFd<'_>> = live
            .iter()
            .filter_map(|&i| {
                socks[i]
                    .as_ref()
                    .map(|s| PollFd::from_borrowed_fd(s.fd(), PollFlags::IN))
            })
            .collect();
        fds.push(PollFd::new(&signals, PollFlags::IN));
        if poll(&mut fds, None).is_err() {
            continue;
        }
        let events: Vec<(Option<usize>, PollFlags)> = fds
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.revents().is_empty())
            .map(|(j, f)| (live.get(j).copied(), f.revents()))
            .collect();
        drop(fds);
        for (idx, revents) in events {
            let Some(i) = idx else {
                if signals.read().ok().flatten().is_some() {
                    // Finished the requests in hand; anything queued stays in the
                    // shared socket for whoever else holds it.
                    std::process::exit(0);
                }
                continue;
            };
            if revents.contains(PollFlags::NVAL) {
                if let Some(gone) = socks[i].take() {
                    std::mem::forget(gone);
                }
                continue;
            }
            match &socks[i] {
                None => {}
                Some(Sock::Tcp(l)) => {
                    if let Ok((c, _)) = l.accept() {
                        answer(c, &reply);
                    }
                }
                Some(Sock::Unix(l)) => {
                    if let Ok((c, _)) = l.accept() {
                        answer(c, &reply);
                    }
                }
                Some(Sock::Udp(s)) => {
                    let mut buf = [0u8; 512];
                    if let Ok((_, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(reply.as_bytes(), from);
                    }
                }
                Some(Sock::UnixDgram(s)) => {
                    let mut buf = [0u8; 512];
                    if let Ok((_, from)) = s.recv_from(&mut buf) {
                        if let Some(p) = from.as_pathname() {
                            let _ = s.send_to(reply.as_bytes(), p);
                        }
                    }
                }
            }
        }
    }
}

/// Reads the request line, then answers and closes.
fn answer<S: Read + Write + AsFd>(mut c: S, reply: &str) {
    let _ = rustix::io::ioctl_fionbio(&c, false);
    let _ = sockopt::set_socket_timeout(&c, sockopt::Timeout::Recv, Some(Duration::from_secs(5)));
    let mut buf = [0u8; 256];
    let mut got = Vec::new();
    while !got.contains(&b'\n') {
        match c.read(&mut buf) {
            // A read with a receive timeout is never restarted after a stop, the
            // ptrace one of `exec --steal`'s close included (docs/injection.md):
            // real servers read again, as here. Answering then, with the request
            // still to come, made the client's read fail with a reset.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let _ = c.write_all(reply.as_bytes());
}

fn probe(file: &str) {
    let signals =
        SignalFd::block(&[libc::SIGTERM, libc::SIGINT]).unwrap_or_else(|e| die(&e.to_string()));
    let mut numbers: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    numbers.sort_unstable();
    let sfd = signals.as_fd().as_raw_fd();
    let fds: Vec<Value> = numbers
        .into_iter()
        .filter(|&n| n != sfd)
        .filter_map(|n| {
            // SAFETY: fcntl with integer arguments; a number that is not open (the
            // read_dir handle, now closed) gives EBADF and is skipped.
            let fd_flags = unsafe { libc::fcntl(n, libc::F_GETFD) };
            if fd_flags < 0 {
                return None;
            }
            // SAFETY: as above.
            let fl = unsafe { libc::fcntl(n, libc::F_GETFL) };
            // SAFETY: n is open (checked above) and stays open while borrowed here.
            let b = unsafe { BorrowedFd::borrow_raw(n) };
            let st = rustix::fs::fstat(b).ok()?;
            let mut v = json!({"fd": n, "cloexec": fd_flags & libc::FD_CLOEXEC != 0, "status_flags": fl,
                "is_socket": st.st_mode & libc::S_IFMT == libc::S_IFSOCK});
            if st.st_mode & libc::S_IFMT == libc::S_IFSOCK {
                v["domain"] = json!(sockopt::socket_domain(b).map(|d| d.as_raw()).ok());
                v["type"] = json!(sockopt::socket_type(b).map(|t| t.as_raw()).ok());
                v["listening"] = json!(sockopt::socket_acceptconn(b).ok());
            }
            Some(v)
        })
        .collect();
    let env: serde_json::Map<String, Value> =
        std::env::vars().map(|(k, v)| (k, json!(v))).collect();
    let report = json!({"pid": std::process::id(), "env": env, "fds": fds});
    std::fs::write(file, report.to_string()).unwrap_or_else(|e| die(&format!("{file}: {e}")));
    notify("READY=1\n");
    let mut pfd = [PollFd::new(&signals, PollFlags::IN)];
    let _ = poll(&mut pfd, None);
}
