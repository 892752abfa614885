//! `fdgrab exec --via bind`: servers that know nothing of LISTEN_FDS take over a
//! live server's sockets through their own `bind()`, under load, with not one
//! request failing; and every way the handover can fail leaves the old server
//! serving with its fd table unchanged.
//!
//! Every page says `master=N` so that the testkit's HTTP probe reports which
//! generation answered: 1 the old server, 2 the new one.

use fdgrab_testkit::handover::{
    fd_table, free_port_on, gunicorn, gunicorn_args, process_exists, write_pid_app, Answer, Exec,
    Load, Probe, Server, TempDir,
};
use fdgrab_testkit::{
    fdgrab, is_root, output_timeout, read_line_timeout, skip, wait_gone, TIMEOUT,
};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A small HTTP server that binds each `HOST,PORT[,OPTION...]` spec itself
/// (SO_REUSEADDR like most servers; options `reuseport`, `v6only=N`, `nonblock`
/// before bind, `defer=N` (TCP_DEFER_ACCEPT), `rcvbuf=N`, `backlog=N` (default 64),
/// `blocking` to keep the listener blocking), answers every request with argv[1], prints a `sock` line per
/// socket (its inode and options as it sees them after bind) and then `listening`,
/// and on SIGTERM finishes the request in hand and exits.
const MULTI_PY: &str = r#"
import os, selectors, signal, socket, sys
body = sys.argv[1].encode()
sel = selectors.DefaultSelector()
if os.environ.get('STORM'):
    # SIGALRM every 50 us while binding, with SA_RESTART: trapped calls are
    # interrupted and restarted by the kernel (a new notification each time).
    signal.signal(signal.SIGALRM, lambda *a: None)
    signal.siginterrupt(signal.SIGALRM, False)
    signal.setitimer(signal.ITIMER_REAL, 0.00005, 0.00005)
for spec in sys.argv[2:]:
    parts = spec.split(',')
    host, port = parts[0], int(parts[1])
    s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for p in parts[2:]:
        if p == 'reuseport':
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        elif p.startswith('v6only='):
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(p[7:]))
        elif p == 'nonblock':
            s.setblocking(False)
        elif p.startswith('defer='):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, int(p[6:]))
        elif p.startswith('rcvbuf='):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(p[7:]))
    s.bind((host, port))
    s.listen(int(([p[8:] for p in parts if p.startswith('backlog=')] or ['64'])[0]))
    if 'blocking' not in parts and 'nonblock' not in parts:
        s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    print('sock ino=%d defer=%d rcvbuf=%d nonblock=%d' % (
        os.fstat(s.fileno()).st_ino,
        s.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT),
        s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        int(os.get_blocking(s.fileno()) is False)))
signal.setitimer(signal.ITIMER_REAL, 0, 0)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print('listening', flush=True)
while not stop:
    for key, _ in sel.select(0.1):
        try:
            c, _ = key.fileobj.accept()
        except (BlockingIOError, InterruptedError):
            continue
        c.setblocking(True)
        c.settimeout(5)
        try:
            data = b''
            while b'\r\n\r\n' not in data:
                d = c.recv(4096)
                if not d:
                    break
                data += d
            c.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
        except OSError:
            pass
        c.close()
"#;

fn python() -> String {
    "python3".into()
}

fn multi_cmd(page: &str, specs: &[String]) -> Vec<String> {
    let mut v = vec![python(), "-c".into(), MULTI_PY.into(), page.into()];
    v.extend(specs.iter().cloned());
    v
}

/// Starts `cmd` (prints `listening` on stdout when ready) as the old server.
fn start_multi(page: &str, specs: &[String]) -> Server {
    let cmd = multi_cmd(page, specs);
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python3");
    let pid = child.id() as i32;
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    loop {
        let line = read_line_timeout(&mut out, TIMEOUT).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("server {pid} did not start: {e}")
        });
        if line.trim() == "listening" {
            break;
        }
    }
    Server {
        child,
        pid,
        addrs: specs.to_vec(),
        report: None,
    }
}

/// Starts a server that logs nothing useful on start: waits until `addr` answers.
fn start_and_wait(cmd: &[String], addr: SocketAddr) -> Server {
    let child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id() as i32;
    let server = Server {
        child,
        pid,
        addrs: vec![addr.to_string()],
        report: None,
    };
    let deadline = Instant::now() + TIMEOUT;
    while Probe::Http(addr).ask() != Ok(1) {
        assert!(
            Instant::now() < deadline,
            "{cmd:?} never answered on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

fn ready() -> bool {
    if !is_root() {
        skip(
            "fdgrab exec --via bind tests need root (pidfd_getfd of another user's server, nginx)",
        );
        return false;
    }
    true
}

fn tally(answers: &[Answer]) -> BTreeMap<i32, usize> {
    let mut by = BTreeMap::new();
    for a in answers.iter().flatten() {
        *by.entry(*a).or_insert(0) += 1;
    }
    by
}

/// How the old server leaves once the new one is ready.
enum Retire {
    /// `--signal-old SIG`, and the old server exits by itself (gracefully).
    Signal(&'static str),
    /// `--steal`: the sockets are closed in the old server (for servers without a
    /// graceful stop); the test kills it once only the new server answers.
    Steal,
}

/// Hands `old`'s `selectors` to `new_cmd` under load on `probes` and checks: no
/// request failed, both generations answered, and the last answers all come from
/// the new server. Returns the running `fdgrab exec` and the answers.
fn zero_downtime(
    old: &mut Server,
    selectors: &[String],
    new_cmd: &[String],
    probes: Vec<Probe>,
    via: &str,
    retire: Retire,
) -> (Exec, Vec<Answer>) {
    let old_sockets = sockets_of(old.pid);
    let load = Load::start(probes, 200_000);
    load.wait_for(40, TIMEOUT);
    let mut args = vec![old.pid.to_string()];
    args.extend(selectors.iter().cloned());
    args.extend(["--via".into(), via.into()]);
    match retire {
        Retire::Signal(sig) => args.extend(["--signal-old".into(), sig.into()]),
        Retire::Steal => args.push("--steal".into()),
    }
    args.push("--".into());
    args.extend(new_cmd.iter().cloned());
    let exec = Exec::start(&args);
    // Pages say 1 or 2; gunicorn's pid app says the arbiter's pid.
    let (old_pid, new_pid) = (old.pid, exec.new_pid);
    let is_new = move |a: &Answer| *a == Ok(2) || *a == Ok(new_pid);
    let is_old = move |a: &Answer| *a == Ok(1) || *a == Ok(old_pid);
    // Its own bind() received the old server's socket (the kernel alone would have
    // answered EADDRINUSE).
    let handed = sockets_of(exec.new_pid);
    assert!(
        handed.iter().any(|s| old_sockets.contains(s)),
        "the new server holds none of the old server's sockets: {handed:?} vs {old_sockets:?}"
    );
    match retire {
        Retire::Signal(_) => {
            old.wait_exit(TIMEOUT);
        }
        Retire::Steal => {
            // Once the old server's numbers are closed only the new one accepts.
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let answers = load.answers.lock().expect("answers").clone();
                if answers.len() > 60 && answers.iter().rev().take(30).all(is_new) {
                    break;
                }
                assert!(Instant::now() < deadline, "answers never switched");
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = old.child.kill();
            old.wait_exit(TIMEOUT);
        }
    }
    let n = load.count();
    load.wait_for(n + 60, TIMEOUT);
    let answers = load.finish();
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
    let by = tally(&answers);
    assert!(answers.iter().any(is_old), "old never answered: {by:?}");
    assert!(
        answers.iter().rev().take(40).all(is_new),
        "the last answers are not all from the new server: {by:?}"
    );
    assert!(process_exists(exec.new_pid), "new server died");
    (exec, answers)
}

/// The inodes of the sockets a process holds (`socket:[N]` links).
fn sockets_of(pid: i32) -> Vec<String> {
    fd_table(pid)
        .into_values()
        .filter(|l| l.starts_with("socket:"))
        .collect()
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    if ip.contains(':') {
        format!("[{ip}]:{port}").parse().expect("addr")
    } else {
        format!("{ip}:{port}").parse().expect("addr")
    }
}

fn spec(ip: &str, port: u16, extra: &str) -> String {
    format!("{ip},{port}{extra}")
}

fn selector(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("tcp:[{ip}]:{port}")
    } else {
        format!("tcp:{ip}:{port}")
    }
}

/// A directory holding `index.html` with `master=N`.
fn site(tmp: &TempDir, n: u32) -> String {
    let dir = tmp.path().join(format!("site{n}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("index.html"), format!("master={n}\n")).expect("write page");
    dir.to_string_lossy().into_owned()
}

fn http_server_case(ip: &str) {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("via-bind-http");
    let port = free_port_on(ip);
    let cmd = |n| {
        vec![
            python(),
            "-m".into(),
            "http.server".into(),
            "--bind".into(),
            ip.to_string(),
            port.to_string(),
            "--directory".into(),
            site(&tmp, n),
        ]
    };
    let mut old = start_and_wait(&cmd(1), addr(ip, port));
    let (exec, _) = zero_downtime(
        &mut old,
        &[selector(ip, port)],
        &cmd(2),
        vec![Probe::Http(addr(ip, port))],
        "bind",
        Retire::Steal,
    );
    drop(exec);
}

#[test]
fn python_http_server_to_python_http_server_ipv4() {
    http_server_case("127.61.0.1");
}

#[test]
fn python_http_server_to_python_http_server_ipv6() {
    http_server_case("::1");
}

#[test]
fn busybox_httpd_to_busybox_httpd() {
    if !ready() {
        return;
    }
    let Some(busybox) = which("busybox") else {
        skip("busybox is not installed (Debian package busybox-static)");
        return;
    };
    let tmp = TempDir::new("via-bind-busybox");
    let ip = "127.61.0.2";
    let port = free_port_on(ip);
    let cmd = |n| {
        vec![
            busybox.clone(),
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            format!("{ip}:{port}"),
            "-h".into(),
            site(&tmp, n),
        ]
    };
    let mut old = start_and_wait(&cmd(1), addr(ip, port));
    // busybox httpd forks a process per connection, but a SIGTERM between its
    // accept and its fork resets that connection: it has no graceful stop.
    let (exec, _) = zero_downtime(
        &mut old,
        &[selector(ip, port)],
        &cmd(2),
        vec![Probe::Http(addr(ip, port))],
        "bind",
        Retire::Steal,
    );
    drop(exec);
}

fn which(name: &str) -> Option<String> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .chain([Path::new("/usr/sbin").to_path_buf()])
            .map(|d| d.join(name))
            .find(|f| f.is_file())
            .map(|f| f.to_string_lossy().into_owned())
    })
}

/// An nginx prefix in `tmp` serving `master=N` on `listen` (one `listen` line each).
fn nginx_cmd(nginx: &str, tmp: &TempDir, n: u32, listens: &[String]) -> Vec<String> {
    let prefix = tmp.path().join(format!("nginx{n}"));
    std::fs::create_dir_all(prefix.join("logs")).expect("mkdir");
    let root = site(tmp, n);
    let listen: String = listens
        .iter()
        .map(|l| format!("    listen {l};\n"))
        .collect();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
         fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
         server {{\n{listen}    root {root};\n    add_header X-Generation {n};\n  }}\n}}\n",
        p = prefix.display()
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    vec![
        nginx.into(),
        "-p".into(),
        prefix.to_string_lossy().into_owned(),
        "-c".into(),
        conf_path.to_string_lossy().into_owned(),
    ]
}

#[test]
fn nginx_to_nginx_with_a_different_configuration() {
    if !ready() {
        return;
    }
    let Some(nginx) = which("nginx") else {
        skip("nginx is not installed (Debian package nginx-light)");
        return;
    };
    let tmp = TempDir::new("via-bind-nginx");
    let ip = "127.61.0.3";
    let (p1, p2) = (free_port_on(ip), free_port_on(ip));
    let listens = [format!("{ip}:{p1}"), format!("{ip}:{p2}")];
    let mut old = start_and_wait(&nginx_cmd(&nginx, &tmp, 1, &listens), addr(ip, p1));
    let new_cmd = nginx_cmd(&nginx, &tmp, 2, &listens);
    // QUIT: nginx's graceful stop (finish requests in hand, then exit). Two ports
    // at once.
    let (exec, _) = zero_downtime(
        &mut old,
        &[selector(ip, p1), selector(ip, p2)],
        &new_cmd,
        vec![Probe::Http(addr(ip, p1)), Probe::Http(addr(ip, p2))],
        "bind",
        Retire::Signal("QUIT"),
    );
    // A reload that adds a port: the supervisor (still there) lets the new bind
    // through to the kernel as if unsupervised.
    let p3 = free_port_on(ip);
    let mut more = listens.to_vec();
    more.push(format!("{ip}:{p3}"));
    nginx_cmd(&nginx, &tmp, 2, &more);
    let master = rustix::process::Pid::from_raw(exec.new_pid).expect("pid");
    rustix::process::kill_process(master, rustix::process::Signal::HUP).expect("HUP nginx");
    let deadline = Instant::now() + TIMEOUT;
    while Probe::Http(addr(ip, p3)).ask() != Ok(2) {
        assert!(
            Instant::now() < deadline,
            "nginx never served the port added by reload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(Probe::Http(addr(ip, p1)).ask(), Ok(2));
    // nginx's workers outlive a killed master: stop it as nginx stops (TERM, and the
    // master takes its workers down), and let fdgrab reap it, before letting go.
    rustix::process::kill_process(master, rustix::process::Signal::TERM).expect("TERM nginx");
    let deadline = Instant::now() + TIMEOUT;
    while std::path::Path::new(&format!("/proc/{}", exec.new_pid)).exists() {
        assert!(Instant::now() < deadline, "nginx did not stop on TERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(exec);
}

#[test]
fn two_ports_ipv4_and_ipv6_at_once() {
    if !ready() {
        return;
    }
    let (ip4, ip6) = ("127.61.0.4", "::1");
    let (p4, p6) = (free_port_on(ip4), free_port_on(ip6));
    let specs = [spec(ip4, p4, ""), spec(ip6, p6, ",v6only=1")];
    let mut old = start_multi("master=1", &specs);
    let before = sockets_of(old.pid);
    let (exec, _) = zero_downtime(
        &mut old,
        &[selector(ip4, p4), selector(ip6, p6)],
        &multi_cmd("master=2", &specs),
        vec![Probe::Http(addr(ip4, p4)), Probe::Http(addr(ip6, p6))],
        "bind",
        Retire::Signal("TERM"),
    );
    // The new server holds the very sockets the old one had.
    holds_all(exec.new_pid, &before);
}

/// Asserts that `pid` holds every socket of `sockets`; returns its sockets.
fn holds_all(pid: i32, sockets: &[String]) -> Vec<String> {
    let now = sockets_of(pid);
    for s in sockets {
        assert!(now.contains(s), "{s} was not handed over: {now:?}");
    }
    now
}

#[test]
fn reuseport_group_is_handed_over_member_by_member_and_a_third_bind_joins_through_the_kernel() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.5";
    let port = free_port_on(ip);
    let member = spec(ip, port, ",reuseport");
    let mut old = start_multi("master=1", &[member.clone(), member.clone()]);
    let before = sockets_of(old.pid);
    assert_eq!(before.len(), 2, "{before:?}");
    let (exec, _) = zero_downtime(
        &mut old,
        &[selector(ip, port)],
        &multi_cmd("master=2", &[member.clone(), member.clone(), member]),
        vec![Probe::Http(addr(ip, port))],
        "bind",
        Retire::Signal("TERM"),
    );
    let now = holds_all(exec.new_pid, &before);
    assert_eq!(now.len(), 3, "{now:?}");
}

#[test]
fn a_bind_to_an_untaken_port_goes_through_the_kernel() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.6";
    let (taken, other) = (free_port_on(ip), free_port_on(ip));
    let mut old = start_multi("master=1", &[spec(ip, taken, "")]);
    let before = sockets_of(old.pid);
    let (exec, _) = zero_downtime(
        &mut old,
        &[selector(ip, taken)],
        &multi_cmd("master=2", &[spec(ip, taken, ""), spec(ip, other, "")]),
        vec![Probe::Http(addr(ip, taken))],
        "bind",
        Retire::Signal("TERM"),
    );
    assert_eq!(Probe::Http(addr(ip, other)).ask(), Ok(2));
    let now = sockets_of(exec.new_pid);
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(
        now.iter().filter(|s| before.contains(s)).count(),
        1,
        "exactly one socket is the old server's: {now:?} vs {before:?}"
    );
}

/// Runs a handover that must fail, under load on `probes` (all served by the old
/// server), and checks the message, that no request failed and that the old
/// server's fd table and socket flags are as before.
fn failed_handover(
    old: &Server,
    selectors: &[String],
    extra: &[&str],
    new_cmd: &[String],
    probes: Vec<Probe>,
    expect: &str,
) {
    let table = fd_table(old.pid);
    let flags = socket_flags(old.pid);
    let load = Load::start(probes, 200_000);
    load.wait_for(20, TIMEOUT);
    let mut cmd = fdgrab();
    cmd.arg("exec").arg(old.pid.to_string()).args(selectors);
    cmd.args(["--via", "bind", "--signal-old", "TERM"])
        .args(extra);
    cmd.arg("--").args(new_cmd);
    let out = output_timeout(&mut cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "handover succeeded: {err}");
    assert!(err.contains(expect), "expected {expect:?} in: {err}");
    assert!(
        err.contains("was not touched and keeps its sockets"),
        "{err}"
    );
    let n = load.count();
    load.wait_for(n + 20, TIMEOUT);
    let answers = load.finish();
    assert!(
        answers.iter().all(|a| *a == Ok(1)),
        "not every request was answered by the old server: {:?}",
        tally(&answers)
    );
    assert!(process_exists(old.pid));
    assert_eq!(
        fd_table(old.pid),
        table,
        "the old server's fd table changed"
    );
    assert_eq!(
        socket_flags(old.pid),
        flags,
        "the old server's socket flags changed"
    );
}

/// `flags:` of every socket fd of `pid` (O_NONBLOCK lives in the shared open file
/// description: a handover must not leave it changed when it fails).
fn socket_flags(pid: i32) -> BTreeMap<i32, String> {
    fd_table(pid)
        .into_iter()
        .filter(|(_, l)| l.starts_with("socket:"))
        .map(|(n, _)| {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).unwrap_or_default();
            let flags = info
                .lines()
                .find(|l| l.starts_with("flags:"))
                .unwrap_or_default()
                .to_string();
            (n, flags)
        })
        .collect()
}

#[test]
fn failure_new_server_exits_early() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.7";
    let port = free_port_on(ip);
    let old = start_multi("master=1", &[spec(ip, port, "")]);
    failed_handover(
        &old,
        &[selector(ip, port)],
        &[],
        &[python(), "-c".into(), "import sys; sys.exit(3)".into()],
        vec![Probe::Http(addr(ip, port))],
        "exited (exit status 3) before it was ready, without binding tcp",
    );
}

#[test]
fn failure_new_server_never_binds_a_taken_address() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.8";
    let (port, other) = (free_port_on(ip), free_port_on(ip));
    let old = start_multi("master=1", &[spec(ip, port, "")]);
    failed_handover(
        &old,
        &[selector(ip, port)],
        &["--start-timeout", "3s", "--ready-timeout", "1s"],
        &multi_cmd("master=2", &[spec(ip, other, "")]),
        vec![Probe::Http(addr(ip, port))],
        &format!("did not bind tcp {ip}:{port}"),
    );
}

#[test]
fn failure_new_server_binds_only_some_taken_addresses() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.9";
    let (p1, p2) = (free_port_on(ip), free_port_on(ip));
    let old = start_multi(
        "master=1",
        &[spec(ip, p1, ",blocking"), spec(ip, p2, ",blocking")],
    );
    // The new server gets p1 (made non-blocking and TCP_DEFER_ACCEPT for it, which
    // must be undone) and serves it until the handover is called off, so the load
    // asks p2 only.
    failed_handover(
        &old,
        &[selector(ip, p1), selector(ip, p2)],
        &["--start-timeout", "3s"],
        &multi_cmd("master=2", &[spec(ip, p1, ",nonblock,defer=7,backlog=17")]),
        vec![Probe::Http(addr(ip, p2))],
        &format!("did not bind tcp {ip}:{p2}"),
    );
    assert_eq!(Probe::Http(addr(ip, p1)).ask(), Ok(1));
    // The new server's listen() did not change the old server's backlog.
    assert_eq!(backlog(ip, p1), Some(64));
}

#[test]
fn failure_ipv6_v6only_conflict_refuses_the_handover() {
    if !ready() {
        return;
    }
    // The wildcard: a socket bound to a specific v6 address is v6-only anyway.
    let ip = "::";
    let port = free_port_on(ip);
    let old = start_multi("master=1", &[spec(ip, port, ",v6only=1")]);
    failed_handover(
        &old,
        &[selector(ip, port)],
        &[],
        &multi_cmd("master=2", &[spec(ip, port, ",v6only=0")]),
        vec![Probe::Http(addr("::1", port))],
        "IPV6_V6ONLY=0 but the taken one has 1",
    );
}

#[test]
fn via_both_gunicorn_takes_the_sockets_by_listen_fds_and_is_ready_by_listen() {
    if !ready() {
        return;
    }
    let Some(g) = gunicorn() else {
        skip("gunicorn is not installed (Debian package gunicorn)");
        return;
    };
    let tmp = TempDir::new("via-both-gunicorn");
    write_pid_app(tmp.path());
    let ip = "127.61.0.10";
    let port = free_port_on(ip);
    let bind = format!("{ip}:{port}");
    let mut old = Server::gunicorn(tmp.path(), &[&bind]);
    let mut new_cmd = vec![g.to_string_lossy().into_owned(), "-b".into(), bind];
    new_cmd.extend(gunicorn_args(tmp.path()));
    let (exec, _) = zero_downtime(
        &mut old,
        &[selector(ip, port)],
        &new_cmd,
        vec![Probe::Http(addr(ip, port))],
        "both",
        Retire::Signal("TERM"),
    );
    assert!(
        exec.log
            .iter()
            .any(|l| l.contains("listens on every taken socket")),
        "{:?}",
        exec.log
    );
}

#[test]
fn detach_leaves_a_supervisor_for_the_new_servers_life() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.11";
    let port = free_port_on(ip);
    let specs = [spec(ip, port, "")];
    let mut old = start_multi("master=1", &specs);
    let mut args = vec![old.pid.to_string(), selector(ip, port)];
    args.extend(["--via", "bind", "--detach", "--signal-old", "TERM", "--"].map(String::from));
    args.extend(multi_cmd("master=2", &specs));
    let mut exec = Exec::start(&args);
    // fdgrab prints two pids on stdout; the new server's own lines (it shares
    // the stream) may come between.
    let mut out = exec.stdout.take().expect("stdout");
    let mut pids = Vec::new();
    while pids.len() < 2 {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).expect("stdout") > 0,
            "stdout ended"
        );
        if let Ok(p) = line.trim().parse::<i32>() {
            pids.push(p);
        }
    }
    let (new_pid, sup) = (pids[0], pids[1]);
    assert_eq!(new_pid, exec.new_pid);
    let st = fdgrab_testkit::wait_timeout(&mut exec.child, TIMEOUT).expect("fdgrab exits");
    assert!(st.success(), "{st:?}");
    old.wait_exit(TIMEOUT);
    assert_eq!(Probe::Http(addr(ip, port)).ask(), Ok(2));
    assert!(process_exists(sup), "the supervisor did not stay");
    // It holds what supervising needs, and nothing fdgrab held for itself: no
    // signalfd, no pidfd of the old or the new server, no taken socket.
    let strays: Vec<String> = fd_links(sup)
        .into_iter()
        .filter(|l| l.contains("signalfd") || l.contains("[pidfd]") || l.starts_with("socket:"))
        .collect();
    assert!(
        strays.is_empty(),
        "the detached supervisor keeps {strays:?}"
    );
    let blocked = fdgrab_testkit::status_field(sup, "SigBlk").expect("SigBlk");
    assert_eq!(
        u64::from_str_radix(blocked.trim(), 16).ok(),
        Some(0),
        "the supervisor keeps fdgrab's blocked signals: {blocked}"
    );
    // A stray USR1, USR2 or ALRM does not end it (the server's binds would get
    // ENOSYS); TERM would.
    let sup_pid = rustix::process::Pid::from_raw(sup).expect("pid");
    for sig in [
        rustix::process::Signal::USR1,
        rustix::process::Signal::USR2,
        rustix::process::Signal::ALARM,
    ] {
        rustix::process::kill_process(sup_pid, sig).expect("signal the supervisor");
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(process_exists(sup), "a stray signal ended the supervisor");
    assert_eq!(Probe::Http(addr(ip, port)).ask(), Ok(2));
    // It leaves with the last process under the filter.
    let pid = rustix::process::Pid::from_raw(new_pid).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("TERM new server");
    assert!(
        wait_gone(sup as u32),
        "the supervisor outlived the new server"
    );
}

#[test]
fn options_the_new_server_set_are_carried_to_the_taken_socket() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.12";
    let port = free_port_on(ip);
    let mut old = start_multi("master=1", &[spec(ip, port, ",blocking")]);
    let before = sockets_of(old.pid);
    let (mut exec, _) = zero_downtime(
        &mut old,
        &[selector(ip, port)],
        &multi_cmd(
            "master=2",
            &[spec(ip, port, ",nonblock,defer=7,rcvbuf=65536,backlog=17")],
        ),
        vec![Probe::Http(addr(ip, port))],
        "bind",
        Retire::Signal("TERM"),
    );
    let mut out = exec.stdout.take().expect("stdout");
    let mut line = String::new();
    out.read_line(&mut line).expect("sock line");
    // The server reads these from its fd after bind, i.e. from the old socket.
    let ino = before[0]
        .trim_start_matches("socket:[")
        .trim_end_matches(']')
        .to_string();
    assert_eq!(
        line.trim(),
        format!("sock ino={ino} defer=7 rcvbuf=131072 nonblock=1")
    );
    // The backlog the new server asked for is applied once the handover succeeded.
    assert_eq!(backlog(ip, port), Some(17));
}

/// The backlog of the TCP listener on `ip:port` (`ss`'s Send-Q for a listener).
fn backlog(ip: &str, port: u16) -> Option<u32> {
    let out = output_timeout(
        Command::new("ss").args(["-Hltn", "src", &format!("{ip}:{port}")]),
        TIMEOUT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(2).and_then(|q| q.parse().ok())
}

#[test]
fn via_both_a_socket_activated_server_that_never_binds_is_ready_by_ready_1() {
    if !ready() {
        return;
    }
    let listen = format!("tcp:127.61.0.13:{}", free_port_on("127.61.0.13"));
    let mut old = Server::activated(&["--listen", &listen]);
    let a: SocketAddr = old.addrs[0].parse().expect("addr");
    let new_cmd = [
        fdgrab_testkit::bin("fdgrab-activated")
            .to_string_lossy()
            .into_owned(),
        "serve".into(),
    ];
    let (exec, _) = zero_downtime(
        &mut old,
        &[format!("tcp:{a}")],
        &new_cmd,
        vec![Probe::Tcp(a)],
        "both",
        Retire::Signal("TERM"),
    );
    assert!(
        exec.log.iter().any(|l| l.contains("sent READY=1")),
        "{:?}",
        exec.log
    );
}

#[test]
fn via_bind_refuses_unix_sockets_and_fd_names_as_usage_errors() {
    if !ready() {
        return;
    }
    let tmp = TempDir::new("via-bind-unix");
    let path = tmp.path().join("s");
    let old = Server::activated(&["--listen", &format!("unix:{}", path.display())]);
    let table = fd_table(old.pid);
    let run = |args: &[&str]| {
        let mut cmd = fdgrab();
        cmd.arg("exec").arg(old.pid.to_string()).args(args);
        output_timeout(&mut cmd, TIMEOUT)
    };
    let unix = format!("unix:{}", path.display());
    let out = run(&[&unix, "--via", "bind", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("IPv4 and IPv6 sockets only"), "{err}");
    let out = run(&[&unix, "--via", "bind", "--name", "web", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--name sets LISTEN_FDNAMES"), "{err}");
    assert_eq!(fd_table(old.pid), table);
    assert!(process_exists(old.pid));
}

/// Binds the taken address from a pipe dup2'd over a socket's number, and from a UDP
/// socket; prints what each got.
const MISMATCH_PY: &str = r#"
import os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
r, w = os.pipe()
os.dup2(r, s.fileno())
try:
    s.bind((host, port))
    print('pipe bound', flush=True)
except OSError as e:
    print('pipe errno %d' % e.errno, flush=True)
print('pipe now %s' % os.readlink('/proc/self/fd/%d' % s.fileno()), flush=True)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((host, port))
print('udp now %s type=%d' % (os.readlink('/proc/self/fd/%d' % u.fileno()), int(u.type)), flush=True)
"#;

#[test]
fn a_bind_on_a_non_socket_or_another_type_never_receives_the_taken_socket() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.14";
    let port = free_port_on(ip);
    let old = start_multi("master=1", &[spec(ip, port, "")]);
    let taken = sockets_of(old.pid);
    let table = fd_table(old.pid);
    let mut cmd = fdgrab();
    cmd.arg("exec")
        .arg(old.pid.to_string())
        .arg(selector(ip, port))
        .args(["--via", "bind", "--"])
        .args([python(), "-c".into(), MISMATCH_PY.into()])
        .args([ip.to_string(), port.to_string()]);
    let out = output_timeout(&mut cmd, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    // The kernel's own answer for a pipe: ENOTSOCK; the pipe stays.
    assert!(
        text.contains(&format!("pipe errno {}", libc::ENOTSOCK)),
        "{text}"
    );
    assert!(text.contains("pipe now pipe:["), "{text}");
    // A UDP socket gets the kernel's bind (TCP and UDP ports are apart).
    let udp = text
        .lines()
        .find_map(|l| l.strip_prefix("udp now "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        udp.starts_with("socket:[") && udp.ends_with(&format!("type={}", libc::SOCK_DGRAM)),
        "{text}"
    );
    assert!(!taken.iter().any(|t| udp.contains(t.as_str())), "{text}");
    assert_eq!(fd_table(old.pid), table);
    assert_eq!(Probe::Http(addr(ip, port)).ask(), Ok(1));
}

#[test]
fn binds_interrupted_by_a_signal_storm_still_receive_the_taken_sockets() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.15";
    let (p1, p2) = (free_port_on(ip), free_port_on(ip));
    let specs = [spec(ip, p1, ""), spec(ip, p2, "")];
    let mut old = start_multi("master=1", &specs);
    let before = sockets_of(old.pid);
    let mut new_cmd = vec!["env".to_string(), "STORM=1".into()];
    new_cmd.extend(multi_cmd("master=2", &specs));
    let (exec, _) = zero_downtime(
        &mut old,
        &[selector(ip, p1), selector(ip, p2)],
        &new_cmd,
        vec![Probe::Http(addr(ip, p1)), Probe::Http(addr(ip, p2))],
        "bind",
        Retire::Signal("TERM"),
    );
    holds_all(exec.new_pid, &before);
}

#[test]
fn the_dual_stack_ipv6_wildcard_is_handed_over_when_v6only_agrees() {
    if !ready() {
        return;
    }
    let ip = "::";
    let port = free_port_on(ip);
    let specs = [spec(ip, port, ",v6only=0")];
    let mut old = start_multi("master=1", &specs);
    let before = sockets_of(old.pid);
    // IPv4 clients reach the same dual-stack socket.
    let (exec, _) = zero_downtime(
        &mut old,
        &[selector(ip, port)],
        &multi_cmd("master=2", &specs),
        vec![
            Probe::Http(addr("::1", port)),
            Probe::Http(addr("127.0.0.1", port)),
        ],
        "bind",
        Retire::Signal("TERM"),
    );
    holds_all(exec.new_pid, &before);
}

#[test]
fn a_server_started_by_via_bind_can_itself_be_handed_over_again() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.16";
    let port = free_port_on(ip);
    let specs = [spec(ip, port, "")];
    let mut gen1 = start_multi("master=1", &specs);
    let probe = Probe::Http(addr(ip, port));
    let load = Load::start(vec![probe.clone()], 200_000);
    load.wait_for(30, TIMEOUT);
    let upgrade = |from: i32, page: &str| {
        let mut args = vec![from.to_string(), selector(ip, port)];
        args.extend(["--via", "bind", "--signal-old", "TERM", "--"].map(String::from));
        args.extend(multi_cmd(page, &specs));
        Exec::start(&args)
    };
    let mut first = upgrade(gen1.pid, "master=2");
    gen1.wait_exit(TIMEOUT);
    let n = load.count();
    load.wait_for(n + 30, TIMEOUT);
    // gen2 runs under a handover filter of its own; gen3 replaces it the same way.
    let third = upgrade(first.new_pid, "master=3");
    // gen2 leaves on TERM, and its fdgrab with it, passing on its status.
    let st = fdgrab_testkit::wait_timeout(&mut first.child, TIMEOUT).expect("first fdgrab exits");
    assert!(st.success(), "{st:?}");
    let n = load.count();
    load.wait_for(n + 30, TIMEOUT);
    let answers = load.finish();
    let by = tally(&answers);
    assert!(answers.iter().all(|a| a.is_ok()), "failed requests: {by:?}");
    for generation in [1, 2, 3] {
        assert!(
            by.contains_key(&generation),
            "generation {generation} never answered: {by:?}"
        );
    }
    assert!(answers.iter().rev().take(20).all(|a| *a == Ok(3)), "{by:?}");
    drop(third);
}

/// A plain blocking server (`accept` in a loop on a blocking listener, as many
/// simple servers are): argv[1] is the page, argv[2] and [3] the address.
const BLOCKING_PY: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[3])))
s.listen(64)
print('listening', flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        data = b''
        while b'\r\n\r\n' not in data:
            d = c.recv(4096)
            if not d:
                break
            data += d
        body = sys.argv[1].encode()
        c.sendall(b'HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
    except OSError:
        pass
    c.close()
"#;

#[test]
fn failure_after_a_non_blocking_bind_leaves_a_blocking_old_server_serving() {
    if !ready() {
        return;
    }
    let ip = "127.61.0.23";
    let port = free_port_on(ip);
    let mut child = Command::new(python())
        .args(["-c", BLOCKING_PY, "master=1", ip, &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let pid = child.id() as i32;
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let line = read_line_timeout(&mut out, TIMEOUT).expect("old server's first line");
    assert_eq!(line.trim(), "listening");
    let old = Server {
        child,
        pid,
        addrs: vec![spec(ip, port, "")],
        report: None,
    };
    // The new server binds a non-blocking socket (as event-loop servers do), then
    // fails before listen (a configuration error found after binding), while the
    // old one keeps accepting under load.
    let new = format!(
        "import socket, sys, time\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.setblocking(False)\n\
         s.bind(('{ip}', {port}))\n\
         time.sleep(1.5)\n\
         sys.exit(4)\n"
    );
    failed_handover(
        &old,
        &[selector(ip, port)],
        &[],
        &[python(), "-c".into(), new],
        vec![Probe::Http(addr(ip, port))],
        "exited (exit status 4) before it was ready",
    );
}

/// The targets of a process's fd links.
fn fd_links(pid: i32) -> std::collections::HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect()
}
