//! `fdgrab run`: real programs as uid 65534 binding privileged ports on loopback
//! through the seccomp supervisor, plus the kernel's errnos, races and process
//! handling. Every test uses its own port (or loopback address) so tests can run
//! in parallel.

use fdgrab_testkit::{
    bin, fdgrab, output_timeout, read_line_timeout, wait_for_child_of, wait_gone, wait_timeout,
    TIMEOUT,
};
use serde_json::Value;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

fn root_or_skip() -> bool {
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip(
            "fdgrab run tests need root (they drop to uid 65534 and bind privileged ports)",
        );
        return false;
    }
    true
}

/// `fdgrab run --user nobody ARGS... -- CMD...`
fn run_cmd(opts: &[&str], cmd: &[&str]) -> Command {
    let mut c = fdgrab();
    c.arg("run")
        .arg("--user")
        .arg("nobody")
        .args(opts)
        .arg("--")
        .args(cmd);
    c
}

fn probe() -> String {
    bin("bind-probe").to_string_lossy().into_owned()
}

/// Runs `bind-probe ARGS` under `fdgrab run` and parses its JSON line.
fn probe_run(opts: &[&str], args: &[&str]) -> Value {
    let p = probe();
    let mut cmd: Vec<&str> = vec![&p];
    cmd.extend_from_slice(args);
    let out = output_timeout(&mut run_cmd(opts, &cmd), Duration::from_secs(150));
    parse_last(&out)
}

fn parse_last(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no output; status {:?}, stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

/// Runs `bind-probe ARGS` as uid 65534 with no supervisor.
fn probe_unsupervised(args: &[&str]) -> Value {
    let mut c = Command::new(probe());
    c.args(args).uid(NOBODY).gid(NOBODY);
    parse_last(&output_timeout(&mut c, TIMEOUT))
}

/// A temporary directory that uid 65534 may write to.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("fdgrab-run-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).expect("chown");
        TempDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `fdgrab run` server, killed on drop.
struct Server(Child);

impl Server {
    /// SIGTERM to fdgrab, which forwards it; returns fdgrab's exit status. A
    /// SIGKILL would leave the server's own children (nginx workers) running: the
    /// parent-death signal reaches only the program fdgrab started.
    fn stop(&mut self) -> std::process::ExitStatus {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        wait_timeout(&mut self.0, TIMEOUT).expect("fdgrab exits after SIGTERM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// GETs `/` from `addr`, retrying until the server is up. Returns the response.
fn http_get(addr: &str, server: &mut Server) -> String {
    let addr: SocketAddr = addr.parse().expect("socket address");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(Some(st)) = server.0.try_wait() {
            let mut err = String::new();
            if let Some(e) = server.0.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("server exited early with {st:?}: {err}");
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            write!(s, "GET / HTTP/1.0\r\nHost: test\r\n\r\n").expect("send request");
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listening on {addr} after {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_server(cmd: &mut Command) -> Server {
    Server(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fdgrab run"),
    )
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[test]
fn run_python_http_server_on_port_80_as_nobody() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("py");
    std::fs::write(dir.path("hello.txt"), "hi\n").expect("write");
    let d = dir.0.to_string_lossy().into_owned();
    let mut server = spawn_server(&mut run_cmd(
        &["--allow-bind", "tcp:80@127.66.0.1"],
        &[
            python(),
            "-m",
            "http.server",
            "80",
            "--bind",
            "127.66.0.1",
            "--directory",
            &d,
        ],
    ));
    let resp = http_get("127.66.0.1:80", &mut server);
    assert!(resp.starts_with("HTTP/1.0 200"), "response: {resp}");
    assert!(resp.contains("hello.txt"), "directory listing: {resp}");
    // SIGTERM to fdgrab is forwarded; python dies of it and fdgrab reports 128+15.
    let st = server.stop();
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "status {st:?}");
}

#[test]
fn run_without_allow_rule_gets_eacces_like_unsupervised() {
    if !root_or_skip() {
        return;
    }
    let supervised = probe_run(&[], &["bind", "tcp4", "127.66.0.4", "80"]);
    let plain = probe_unsupervised(&["bind", "tcp4", "127.66.0.4", "80"]);
    assert_eq!(supervised["errno"], libc::EACCES, "{supervised}");
    assert_eq!(supervised, plain);
    // And a real server fails the same way.
    let out = output_timeout(
        &mut run_cmd(
            &[],
            &[python(), "-m", "http.server", "80", "--bind", "127.66.0.4"],
        ),
        TIMEOUT,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "stderr: {err}");
}

#[test]
fn run_busybox_httpd_static_on_port_80() {
    if !root_or_skip() {
        return;
    }
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!("busybox-static is not installed (scripts/test installs it)");
    };
    let dir = TempDir::new("bb");
    std::fs::write(dir.path("index.html"), "static busybox\n").expect("write");
    let d = dir.0.to_string_lossy().into_owned();
    let mut server = spawn_server(&mut run_cmd(
        &["--allow-bind", "tcp:80@127.66.0.2"],
        &[busybox, "httpd", "-f", "-p", "127.66.0.2:80", "-h", &d],
    ));
    let resp = http_get("127.66.0.2:80", &mut server);
    assert!(
        resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
        "response: {resp}"
    );
    assert!(resp.contains("static busybox"), "body: {resp}");
}

#[test]
fn run_nginx_as_nobody_listen_80() {
    if !root_or_skip() {
        return;
    }
    let Some(nginx) = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!("nginx is not installed (scripts/test installs it)");
    };
    let dir = TempDir::new("nginx");
    let d = dir.0.to_string_lossy().into_owned();
    std::fs::create_dir_all(dir.path("www")).expect("mkdir");
    std::fs::write(dir.path("www/index.html"), "nginx as nobody\n").expect("write");
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
          fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
          server {{ listen 127.66.0.3:80; root {d}/www; }}\n}}\n"
    );
    std::fs::write(dir.path("nginx.conf"), conf).expect("write conf");
    let conf_path = format!("{d}/nginx.conf");
    let err_log = format!("{d}/error.log");
    let mut server = spawn_server(&mut run_cmd(
        &["--allow-bind", "tcp:80@127.66.0.3"],
        &[nginx, "-c", &conf_path, "-p", &d, "-e", &err_log],
    ));
    let resp = http_get("127.66.0.3:80", &mut server);
    assert!(
        resp.contains(" 200 OK"),
        "response: {resp}\nerror.log: {}",
        std::fs::read_to_string(&err_log).unwrap_or_default()
    );
    assert!(resp.contains("nginx as nobody"), "body: {resp}");
    let st = server.stop();
    assert!(
        st.success(),
        "nginx stops cleanly on a forwarded SIGTERM: {st:?}"
    );
    let left = Command::new("pgrep")
        .args(["-f", &conf_path])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "nginx processes left: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

/// Binds itself into the net_cls cgroup argv[1], binds and listens on
/// 127.79.9.10:argv[2], and prints its socket's classid as sock_diag reports it.
const CLASSID_PY: &str = r#"import socket, struct, sys, os
cg = sys.argv[1]; port = int(sys.argv[2])
open(cg + "/cgroup.procs", "w").write(str(os.getpid()))
s = socket.socket(); s.bind(("127.79.9.10", port)); s.listen()
def classid():
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4)
    # inet_diag_req_v2: family, protocol, ext, pad, states, sockid(sport,dport,src[16],dst[16],if,cookie[2])
    ext = 1 << (6 - 1)  # INET_DIAG_TCLASS also returns INET_DIAG_CLASS_ID
    sockid = struct.pack("!HH", port, 0) + b"\0"*32 + struct.pack("=I", 0) + struct.pack("=II", 0xffffffff, 0xffffffff)
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, ext, 0, 1 << 10) + sockid
    hdr = struct.pack("=IHHII", 16 + len(req), 20, 0x301, 1, 0)
    nl.sendto(hdr + req, (0, 0))
    data = nl.recv(65536)
    off = 0; found = None
    while off < len(data):
        ln, ty = struct.unpack_from("=IH", data, off)
        if ty == 20:
            m = data[off+16:off+ln]
            sport = struct.unpack_from("!H", m, 4)[0]
            a = 72
            while a + 4 <= len(m):
                alen, aty = struct.unpack_from("=HH", m, a)
                if alen < 4: break
                if aty == 17 and sport == port:
                    found = struct.unpack_from("=I", m, a + 4)[0]
                a += (alen + 3) & ~3
        if ty in (2, 3): break
        off += (ln + 3) & ~3
    return found
print("classid=%#x" % (classid() or 0), flush=True)
"#;

/// A bind the supervisor hands back to the kernel is left untouched even when it
/// is audited: copying the socket out (pidfd_getfd) would move it into the
/// supervisor's cgroup-v1 net_cls/net_prio class.
#[test]
fn run_audited_bind_keeps_the_sockets_net_cls_class() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("netcls");
    let mnt = dir.path("net_cls");
    std::fs::create_dir(&mnt).expect("mount point");
    // A host that already mounts net_cls together with net_prio (systemd's
    // hybrid layout) accepts only the same set of controllers.
    let mounted = ["net_cls", "net_cls,net_prio"].iter().any(|opts| {
        Command::new("mount")
            .args(["-t", "cgroup", "-o", opts, "fdgrab-test"])
            .arg(&mnt)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !mounted {
        fdgrab_testkit::skip("cannot mount the cgroup-v1 net_cls controller");
        return;
    }
    let group = mnt.join(format!("fdgrab-{}", std::process::id()));
    std::fs::create_dir(&group).expect("cgroup");
    std::fs::write(group.join("net_cls.classid"), "0x100001").expect("classid");
    let script = dir.path("classid.py");
    std::fs::write(&script, CLASSID_PY).expect("script");
    let audit = dir.path("audit.jsonl");
    let out = output_timeout(
        fdgrab()
            .arg("run")
            .arg("--audit")
            .arg(&audit)
            .arg("--")
            .arg(python())
            .arg(&script)
            .arg(&group)
            .arg("41239"),
        TIMEOUT,
    );
    let _ = std::fs::remove_dir(&group);
    let _ = Command::new("umount").arg(&mnt).status();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let line = std::fs::read_to_string(&audit).expect("audit");
    assert!(
        line.contains("\"proto\":\"tcp\""),
        "the audit line still names the protocol: {line}"
    );
    assert!(line.contains("\"decision\":\"continue\""), "{line}");
    assert_eq!(stdout.trim(), "classid=0x100001", "{out:?}");
}

#[test]
fn run_unprivileged_and_unix_binds_pass_untouched() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("untouched");
    let audit = dir.path("audit.jsonl");
    let audit_s = audit.to_string_lossy().into_owned();
    let v = probe_run(
        &["--allow-bind", "1-65535", "--audit", &audit_s],
        &["bind", "tcp4", "127.66.0.1", "42081"],
    );
    assert_eq!(v["errno"], 0, "{v}");
    assert_eq!(v["port"], 42081);
    let sock = dir.path("s.sock").to_string_lossy().into_owned();
    let v = probe_run(
        &["--allow-bind", "1-65535", "--audit", &audit_s],
        &["bind", "unix", &sock],
    );
    assert_eq!(v["errno"], 0, "{v}");
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .expect("audit file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["decision"], "continue");
    assert_eq!(lines[0]["reason"], "unprivileged port");
    assert_eq!(lines[0]["port"], 42081);
    assert_eq!(lines[1]["decision"], "continue");
    assert_eq!(lines[1]["family"], "unix");
}

#[test]
fn run_ipv6_dual_stack_and_udp() {
    if !root_or_skip() {
        return;
    }
    let allow = ["--allow-bind", "92-94"];
    let dual = probe_run(&allow, &["bind", "tcp6", "::", "92"]);
    assert_eq!(dual["errno"], 0, "{dual}");
    assert_eq!(
        dual["v4_connect"], true,
        "a dual-stack socket on [::]:92 accepts IPv4: {dual}"
    );
    let v6only = probe_run(&allow, &["bind", "tcp6only", "::1", "93"]);
    assert_eq!(
        (v6only["errno"].clone(), v6only["port"].clone()),
        (0.into(), 93.into()),
        "{v6only}"
    );
    let udp4 = probe_run(&allow, &["bind", "udp4", "127.66.0.1", "94"]);
    assert_eq!(
        (udp4["errno"].clone(), udp4["port"].clone()),
        (0.into(), 94.into()),
        "{udp4}"
    );
    let udp6 = probe_run(&allow, &["bind", "udp6", "::1", "94"]);
    assert_eq!(
        (udp6["errno"].clone(), udp6["port"].clone()),
        (0.into(), 94.into()),
        "{udp6}"
    );
    // A TCP-only rule does not cover UDP.
    let udp_denied = probe_run(
        &["--allow-bind", "tcp:94"],
        &["bind", "udp4", "127.66.0.1", "94"],
    );
    assert_eq!(udp_denied["errno"], libc::EACCES, "{udp_denied}");
}

#[test]
fn run_answers_the_kernels_errnos() {
    if !root_or_skip() {
        return;
    }
    let allow = ["--allow-bind", "87-90@127.66.0.1"];
    let inuse = probe_run(&allow, &["inuse", "87"]);
    assert_eq!(
        (inuse["first"].clone(), inuse["second"].clone()),
        (0.into(), libc::EADDRINUSE.into()),
        "{inuse}"
    );
    let efault = probe_run(&allow, &["efault", "88"]);
    assert_eq!(efault["errno"], libc::EFAULT, "{efault}");
    let short = probe_run(&allow, &["short", "89"]);
    assert_eq!(short["errno"], libc::EINVAL, "{short}");
    assert_eq!(short["negative_len_errno"], libc::EINVAL, "{short}");
    // What root would get without a supervisor, for the same calls.
    let mut c = Command::new(probe());
    c.args(["short", "89"]);
    let root_short = parse_last(&output_timeout(&mut c, TIMEOUT));
    assert_eq!(short, root_short);
    // Binding a bound socket again is EINVAL, as for root; port 91 is not allowed.
    let rebind = probe_run(&allow, &["rebind", "90"]);
    assert_eq!(rebind["first"], 0, "{rebind}");
    assert_eq!(rebind["again"], libc::EINVAL, "{rebind}");
    assert_eq!(rebind["port"], 90, "{rebind}");
}

#[test]
fn run_forbidden_privileged_port_never_succeeds() {
    if !root_or_skip() {
        return;
    }
    let allow = ["--allow-bind", "tcp:95@127.66.0.1"];
    for args in [
        ["bind", "tcp4", "127.66.0.1", "96"],
        ["bind", "tcp4", "127.66.0.9", "95"],
        ["bind", "tcp4", "0.0.0.0", "95"],
        ["bind", "udp4", "127.66.0.1", "95"],
        ["bind", "tcp6", "::1", "95"],
    ] {
        let v = probe_run(&allow, &args);
        assert_eq!(v["errno"], libc::EACCES, "{args:?}: {v}");
        assert_eq!(v["port"], 0, "{args:?}: {v}");
    }
    let ok = probe_run(&allow, &["bind", "tcp4", "127.66.0.1", "95"]);
    assert_eq!(ok["errno"], 0, "{ok}");
}

/// Only TCP and UDP sockets are bound by the supervisor: a stream socket that is
/// MPTCP, a datagram socket that is UDP-Lite and a raw socket of protocol TCP all
/// go back to the kernel, even where the policy allows the port.
#[test]
fn run_binds_only_tcp_and_udp_sockets() {
    if !root_or_skip() {
        return;
    }
    let allow = ["--allow-bind", "97@127.66.0.1"];
    for kind in ["mptcp4", "udplite4"] {
        let v = probe_run(&allow, &["bind", kind, "127.66.0.1", "97"]);
        if v.get("socket_errno").is_some() {
            fdgrab_testkit::skip(&format!("this kernel cannot make an {kind} socket: {v}"));
            continue;
        }
        assert_eq!(v["errno"], libc::EACCES, "{kind}: {v}");
        assert_eq!(v["port"], 0, "{kind}: {v}");
    }
    // A raw socket needs CAP_NET_RAW: the program runs as root, and the audit line
    // shows who decided.
    let dir = TempDir::new("raw");
    let audit = dir.path("a.jsonl").to_string_lossy().into_owned();
    let p = probe();
    let mut c = fdgrab();
    c.args([
        "run",
        "--allow-bind",
        "97@127.66.0.1",
        "--audit",
        &audit,
        "--",
    ])
    .args([p.as_str(), "bind", "raw4tcp", "127.66.0.1", "97"]);
    let v = parse_last(&output_timeout(&mut c, TIMEOUT));
    assert_eq!(v["errno"], 0, "the kernel binds a raw socket for root: {v}");
    let text = std::fs::read_to_string(&audit).expect("audit");
    let line: Value =
        serde_json::from_str(text.lines().last().expect("an audit line")).expect("json");
    assert_eq!(line["decision"], "continue", "{line}");
    assert_eq!(line["reason"], "not a TCP or UDP socket", "{line}");
}

/// An IPv6 UDP socket turned IPv4 by `IPV6_ADDRFORM` keeps its protocol name
/// (`UDPv6`) but is an IPv4 socket now; once disconnected it is unbound again,
/// and an allowed IPv4 bind of it must succeed as it does for root.
#[test]
fn run_binds_an_ipv6_socket_turned_ipv4() {
    if !root_or_skip() {
        return;
    }
    let v = probe_run(&["--allow-bind", "udp:98@127.66.0.1"], &["addrform", "98"]);
    assert_eq!(v["inet"], true, "IPV6_ADDRFORM made it an IPv4 socket: {v}");
    assert_eq!(v["errno"], 0, "the policy allows udp:98: {v}");
    assert_eq!(v["port"], 98, "{v}");
    let plain = probe_unsupervised(&["addrform", "98"]);
    assert_eq!(plain["errno"], libc::EACCES, "without fdgrab: {plain}");
}

#[test]
fn run_64_threads_10000_binds() {
    if !root_or_skip() {
        return;
    }
    // Threads bind ports 100..=163; every fifth bind goes to 99, which is forbidden.
    let v = probe_run(
        &["--allow-bind", "tcp:100-163@127.66.0.1"],
        &["threads", "64", "10000", "100"],
    );
    assert_eq!(v["wrong"], 0, "{v}");
    let (ok, denied) = (
        v["ok"].as_u64().unwrap_or(0),
        v["denied"].as_u64().unwrap_or(0),
    );
    assert_eq!(ok + denied, 10_000, "{v}");
    assert!(ok > 7900 && denied > 1900, "{v}");
}

#[test]
fn run_dup2_race_never_binds_the_wrong_file() {
    if !root_or_skip() {
        return;
    }
    let n = 3000;
    let v = probe_run(
        &["--allow-bind", "tcp:84@127.66.0.1"],
        &["dup2race", &n.to_string(), "84"],
    );
    assert_eq!(v["decoy_port"], 0, "the UDP decoy must never be bound: {v}");
    assert_eq!(
        v["zero_but_unbound"], 0,
        "a 0 answer must mean our TCP socket got the port: {v}"
    );
    let errnos = v["errnos"].as_object().expect("errnos");
    let mut total = 0;
    for (k, count) in errnos {
        assert!(
            ["0", "13", "88"].contains(&k.as_str()),
            "unexpected errno {k}: {v}"
        );
        total += count.as_u64().expect("count");
    }
    assert_eq!(total, n, "{v}");
}

#[test]
fn run_sigurg_storm_during_binds() {
    if !root_or_skip() {
        return;
    }
    let v = probe_run(
        &["--allow-bind", "tcp:85@127.66.0.1"],
        &["sigurg", "3000", "85"],
    );
    assert_eq!(v["bad"], 0, "{v}");
    assert_eq!(v["ok"], 3000, "{v}");
    assert!(
        v["signals"].as_u64().unwrap_or(0) > 1000,
        "the storm must actually happen: {v}"
    );
}

/// Without `SA_RESTART` a signal makes a supervised bind fail `EINTR` (an
/// unsupervised one never does), possibly after fdgrab bound the socket. A retry
/// on the same socket is then answered 0, never `EINVAL`, and every bind ends
/// with the socket on the port.
#[test]
fn run_bind_interrupted_without_sa_restart_then_retried() {
    if !root_or_skip() {
        return;
    }
    let v = probe_run(
        &["--allow-bind", "tcp:166@127.66.0.1"],
        &["eintr", "3000", "166"],
    );
    assert_eq!(v["bad"], 0, "{v}");
    assert_eq!(v["ok"], 3000, "{v}");
    assert!(
        v["interrupted"].as_u64().unwrap_or(0) > 0,
        "the storm must interrupt some binds: {v}"
    );
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn run_program_killed_mid_notification_leaks_nothing() {
    if !root_or_skip() {
        return;
    }
    let p = probe();
    let mut child = run_cmd(
        &["--allow-bind", "tcp:86@127.66.0.1"],
        &[&p, "fork-kill", "150", "86"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn");
    let _guard = Guard(child.id());
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let ready = read_line_timeout(&mut out, TIMEOUT).expect("ready line");
    assert!(ready.contains("ready"), "{ready}");
    // fdgrab may still be setting up its supervisor when the program reports ready.
    let before = settled_fd_count(child.id());
    writeln!(stdin).expect("start");
    let done = read_line_timeout(&mut out, Duration::from_secs(120)).expect("result line");
    assert!(done.contains("\"killed\":150"), "{done}");
    // The supervisor may still be finishing the request of the child killed last.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = fd_count(child.id());
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = fd_count(child.id());
    }
    let listing: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .map(|d| {
            d.flatten()
                .map(|e| format!("{:?}", std::fs::read_link(e.path()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        before, after,
        "fdgrab's fd count changed: {before} -> {after}: {listing:?}"
    );
    writeln!(stdin).expect("finish");
    let st = wait_timeout(&mut child, TIMEOUT).expect("exit");
    assert!(st.success(), "{st:?}");
}

/// The fd count once it has not changed for 300 ms.
fn settled_fd_count(pid: u32) -> usize {
    let deadline = Instant::now() + TIMEOUT;
    let mut last = fd_count(pid);
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = fd_count(pid);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

struct Guard(u32);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

#[test]
fn run_nested_is_a_clear_error() {
    if !root_or_skip() {
        return;
    }
    let f = bin("fdgrab").to_string_lossy().into_owned();
    let mut c = fdgrab();
    c.args(["run", "--allow-bind", "80", "--", &f, "run", "--", "true"]);
    let out = output_timeout(&mut c, TIMEOUT);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot start '/usr/bin/true': installing the seccomp filter"),
        "stderr: {err}"
    );
    assert!(err.contains("(os error 16)"), "EBUSY: {err}");
    assert!(
        err.contains("cannot run inside another fdgrab run"),
        "stderr: {err}"
    );
}

/// Each credential step of the child's set-up fails on its own, named, with exit
/// 126 and nothing started. fdgrab runs without one capability (bounding set) so
/// that exactly that step is refused. (setgid alone cannot be made to fail this
/// way: it needs the same capability as setgroups; the library's spawn tests
/// cover it with an invalid gid.)
#[test]
fn run_child_setup_failures_name_the_step() {
    if !root_or_skip() {
        return;
    }
    let cases = [
        ("-setgid", "setting the supplementary groups (setgroups)"),
        ("-setuid", "switching user (setuid)"),
    ];
    for (caps, step) in cases {
        let mut c = Command::new("setpriv");
        c.arg(format!("--bounding-set={caps}"))
            .arg(bin("fdgrab"))
            .args(["run", "--user", "nobody", "--", "sh", "-c", "echo started"]);
        let out = output_timeout(&mut c, TIMEOUT);
        assert_eq!(out.status.code(), Some(126), "{caps}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("cannot start '/usr/bin/sh': {step}"))
                || err.contains(&format!("cannot start '/bin/sh': {step}")),
            "{caps}: {err}"
        );
        assert!(err.contains("Operation not permitted"), "{caps}: {err}");
        assert!(out.stdout.is_empty(), "{caps}: the program ran");
    }
    // Not found and not executable: 127 and 126, as for get, steal and exec.
    let out = output_timeout(&mut run_cmd(&[], &["/nonexistent/prog"]), TIMEOUT);
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let out = output_timeout(&mut run_cmd(&[], &["/etc/passwd"]), TIMEOUT);
    assert_eq!(out.status.code(), Some(126), "{out:?}");
}

/// `--user` goes through NSS: a user and groups that exist only in the extrausers
/// database (as LDAP, SSSD or systemd dynamic users exist only in theirs). The
/// database and an nsswitch.conf naming it are bind-mounted in a mount namespace
/// private to this test, so nothing outside it (other tests included) sees them.
#[test]
fn run_user_known_only_through_nss() {
    if !root_or_skip() {
        return;
    }
    let db = Path::new("/var/lib/extrausers");
    if !db.is_dir() || !Path::new("/usr/lib/libnss_extrausers.so.2").exists() {
        fdgrab_testkit::skip("libnss-extrausers is not installed (./scripts/test installs it)");
        return;
    }
    let dir = TempDir::new("nss");
    let conf = std::fs::read_to_string("/etc/nsswitch.conf").expect("nsswitch.conf");
    let conf: String = conf
        .lines()
        .map(|l| match l.split_once(':') {
            Some((db @ ("passwd" | "group"), rest)) => format!("{db}:{rest} extrausers\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(dir.path("nsswitch.conf"), conf).expect("write nsswitch.conf");
    std::fs::create_dir(dir.path("db")).expect("mkdir");
    std::fs::write(
        dir.path("db/passwd"),
        "fdgrabnss:x:23456:23457:NSS only:/nonexistent-nss-home:/bin/sh\n",
    )
    .expect("write passwd");
    std::fs::write(
        dir.path("db/group"),
        "fdgrabnssgrp:x:23457:\nfdgrabnssextra:x:23458:fdgrabnss\n",
    )
    .expect("write group");
    let in_private_ns = |user: &str| {
        let script = format!(
            "mount --bind {conf} /etc/nsswitch.conf && mount --bind {db} {real} && \
             exec {fdgrab} run --user {user} -- sh -c 'id -u; id -g; id -G; echo \"$HOME $USER\"'",
            conf = dir.path("nsswitch.conf").display(),
            db = dir.path("db").display(),
            real = db.display(),
            fdgrab = bin("fdgrab").display(),
        );
        let out = in_private_mounts(&script);
        assert!(out.status.success(), "{user}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        in_private_ns("fdgrabnss"),
        "23456\n23457\n23457 23458\n/nonexistent-nss-home fdgrabnss\n"
    );
    assert_eq!(
        in_private_ns("fdgrabnss:fdgrabnssextra"),
        "23456\n23458\n23458\n/nonexistent-nss-home fdgrabnss\n"
    );
    // Outside the namespace the user does not exist: a usage error naming it.
    let mut c = fdgrab();
    c.args(["run", "--user", "fdgrabnss", "--", "true"]);
    let out = output_timeout(&mut c, TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user 'fdgrabnss'"));
}

/// `--user` values that glibc's `getent` would read as ids (`strtoul` takes white
/// space, a sign and numbers beyond 32 bits; 4294967296 is uid 0 once cut) are
/// names to fdgrab, as to the C library: refused as unknown, the program never
/// started. The static build, which asks `getent`, ran it as root.
#[test]
fn run_user_names_that_getent_reads_as_ids_are_refused() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("getent-ids");
    for (spec, named) in [
        ("4294967296", "no user '4294967296'"),
        (" 0", "no user ' 0'"),
        ("-4294967295", "no user '-4294967295'"),
        ("nobody:4294967296", "no group '4294967296'"),
        ("nobody: 0", "no group ' 0'"),
    ] {
        let marker = dir.path("started");
        let mut c = fdgrab();
        c.arg("run")
            .arg(format!("--user={spec}"))
            .args(["--", "touch"])
            .arg(&marker);
        let out = output_timeout(&mut c, TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "'{spec}': {out:?}");
        assert!(stderr.contains(named), "'{spec}': {stderr}");
        assert!(!marker.exists(), "'{spec}': the program ran");
    }
}

/// Runs `script` with `sh` in a mount namespace of its own, whose bind mounts no
/// other test sees.
fn in_private_mounts(script: &str) -> Output {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", script]);
    output_timeout(&mut c, TIMEOUT)
}

/// Writes `DIR/getent`, a shell script standing in for `/usr/bin/getent` (the real
/// one is copied to `DIR/getent.real`, which `body` may run as `{real}`).
fn fake_getent(dir: &TempDir, body: &str) {
    std::fs::copy("/usr/bin/getent", dir.path("getent.real")).expect("copy getent");
    let real = dir.path("getent.real").display().to_string();
    std::fs::write(
        dir.path("getent"),
        format!("#!/bin/sh\n{}", body.replace("{real}", &real)),
    )
    .expect("write getent");
    std::fs::set_permissions(
        dir.path("getent"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
}

/// A `getent` as Alpine's (musl-utils): no `initgroups` database, and every
/// argument after the database a key, `--` included, the first one not found
/// ending it with status 2. `--user` still finds the user and its supplementary
/// groups: the static build asks the C library's own lookup for the groups. (The
/// glibc build never runs `getent`; this holds for both.) The group file and the
/// `getent` are bind-mounted in a mount namespace private to the test.
#[test]
fn run_user_groups_without_getent_initgroups() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("getent");
    fake_getent(
        &dir,
        "db=$1; shift\n[ \"$db\" = initgroups ] && exit 1\n\
         for k in \"$@\"; do [ \"$k\" = -- ] && exit 2; {real} \"$db\" -- \"$k\" || exit; done\n",
    );
    let mut group = std::fs::read_to_string("/etc/group").expect("/etc/group");
    group.push_str("fdgrabgetentgrp:x:23459:daemon\n");
    std::fs::write(dir.path("group"), group).expect("write group");
    let script = format!(
        "mount --bind {dir}/getent /usr/bin/getent && mount --bind {dir}/group /etc/group && \
         exec {fdgrab} run --user daemon -- id -G",
        dir = dir.path("").display(),
        fdgrab = bin("fdgrab").display(),
    );
    let out = in_private_mounts(&script);
    assert!(out.status.success(), "{out:?}");
    let groups: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    assert!(
        groups.contains(&23459),
        "daemon's extra group is missing: {out:?}"
    );
}

/// A directory's gecos may hold a ':' (LDAP, SSSD; a passwd file cannot), which
/// `getent` prints as it is: `HOME` is still the home, the last field but one.
/// Only the musl build reads `getent`'s lines (the glibc one gets the fields from
/// NSS itself, and no passwd file can hold such an entry), hence the cfg.
#[cfg(target_env = "musl")]
#[test]
fn run_user_home_from_a_getent_line_with_a_colon_in_gecos() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("getent-gecos");
    fake_getent(
        &dir,
        "[ \"$1\" = passwd ] && [ \"$2\" = fdgrabgecos ] && \
         exec echo 'fdgrabgecos:x:23471:23471:Ops: night shift:/nonexistent-gecos-home:/bin/sh'\n\
         exec {real} \"$@\"\n",
    );
    let script = format!(
        "mount --bind {dir}/getent /usr/bin/getent && \
         exec {fdgrab} run --user fdgrabgecos -- sh -c 'echo \"$HOME\"; id -u'",
        dir = dir.path("").display(),
        fdgrab = bin("fdgrab").display(),
    );
    let out = in_private_mounts(&script);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/nonexistent-gecos-home\n23471\n"
    );
}

#[test]
fn run_refuses_io_uring_and_foreign_abis() {
    if !root_or_skip() {
        return;
    }
    let v = probe_run(&[], &["io-uring"]);
    assert_eq!(v["errno"], libc::ENOSYS, "{v}");
    // A negative number has the x32 bit set but is no x32 call: the kernel's
    // ENOSYS, as without the filter (before, the program was killed).
    let v = probe_run(&[], &["nosys"]);
    assert_eq!(
        v["errnos"],
        serde_json::json!([libc::ENOSYS, libc::ENOSYS]),
        "{v}"
    );
    for mode in ["x32", "int80"] {
        let out = output_timeout(&mut run_cmd(&[], &[&probe(), mode]), TIMEOUT);
        assert_eq!(
            out.status.code(),
            Some(128 + libc::SIGSYS),
            "{mode}: {out:?}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("survived"),
            "{mode}: {out:?}"
        );
    }
}

#[test]
fn run_policy_file() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("policy");
    let good = dir.path("good.toml");
    std::fs::write(
        &good,
        "# web\n[[bind]]\nport = \"97-98\"\nproto = \"tcp\"\naddr = \"127.66.0.1\"\n",
    )
    .expect("write");
    let g = good.to_string_lossy().into_owned();
    let v = probe_run(&["--policy", &g], &["bind", "tcp4", "127.66.0.1", "97"]);
    assert_eq!(v["errno"], 0, "{v}");
    let v = probe_run(&["--policy", &g], &["bind", "udp4", "127.66.0.1", "97"]);
    assert_eq!(v["errno"], libc::EACCES, "{v}");

    let bad = dir.path("bad.toml");
    std::fs::write(&bad, "[[bind]]\nport = 80\nproto = \"sctp\"\n").expect("write");
    let marker = dir.path("started");
    let b = bad.to_string_lossy().into_owned();
    let m = marker.to_string_lossy().into_owned();
    let out = output_timeout(&mut run_cmd(&["--policy", &b], &["touch", &m]), TIMEOUT);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:3") && err.contains("sctp"),
        "stderr: {err}"
    );
    assert!(
        !marker.exists(),
        "the program must not start with a bad policy"
    );
    let out = output_timeout(
        &mut run_cmd(&["--allow-bind", "tcp:80-70"], &["touch", &m]),
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("backwards"),
        "{out:?}"
    );
    assert!(!marker.exists());
}

#[test]
fn run_audit_line_fields() {
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("audit");
    let audit = dir.path("a.jsonl").to_string_lossy().into_owned();
    let v = probe_run(
        &["--allow-bind", "83@127.66.0.1", "--audit", &audit],
        &["inuse", "83"],
    );
    assert_eq!(v["second"], libc::EADDRINUSE, "{v}");
    let text = std::fs::read_to_string(&audit).expect("audit");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for l in &lines {
        for key in [
            "time", "pid", "tid", "exe", "uid", "family", "address", "port", "decision", "errno",
        ] {
            assert!(l.get(key).is_some(), "missing {key}: {l}");
        }
        assert_eq!(l["uid"], NOBODY);
        assert_eq!(l["family"], "inet");
        assert_eq!(l["address"], "127.66.0.1");
        assert_eq!(l["port"], 83);
        assert_eq!(l["decision"], "bind");
        assert!(
            l["exe"].as_str().unwrap_or("").ends_with("bind-probe"),
            "{l}"
        );
    }
    assert_eq!(lines[0]["errno"], 0);
    assert_eq!(lines[1]["errno"], libc::EADDRINUSE);
}

#[test]
fn run_exit_status_and_parent_death() {
    if !root_or_skip() {
        return;
    }
    let out = output_timeout(&mut run_cmd(&[], &["sh", "-c", "exit 7"]), TIMEOUT);
    assert_eq!(out.status.code(), Some(7));

    // SIGINT and SIGHUP are forwarded like SIGTERM.
    for sig in [rustix::process::Signal::INT, rustix::process::Signal::HUP] {
        let mut child = run_cmd(&[], &["sleep", "60"]).spawn().expect("spawn");
        let _g = Guard(child.id());
        let sleeper = wait_for_child_of(child.id());
        let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, sig).expect("signal fdgrab");
        let st = wait_timeout(&mut child, TIMEOUT).expect("fdgrab exits");
        assert_eq!(st.code(), Some(128 + sig.as_raw()), "{sig:?}: {st:?}");
        assert!(wait_gone(sleeper));
    }

    // fdgrab killed: by default the program dies with it.
    let mut child = run_cmd(&[], &["sleep", "60"]).spawn().expect("spawn");
    let _g = Guard(child.id());
    let sleeper = wait_for_child_of(child.id());
    child.kill().expect("kill fdgrab");
    let _ = child.wait();
    assert!(
        wait_gone(sleeper),
        "the program outlived fdgrab without --keep-running-on-supervisor-exit"
    );

    // With --keep-running-on-supervisor-exit it lives on, and its binds get ENOSYS.
    let p = probe();
    let mut child = run_cmd(
        &["--keep-running-on-supervisor-exit", "--allow-bind", "82"],
        &[&p, "wait-bind", "82"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn");
    let _g2 = Guard(child.id());
    let program = wait_for_child_of(child.id());
    let _g3 = Guard(program);
    let mut stdin = child.stdin.take().expect("stdin");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    child.kill().expect("kill fdgrab");
    let _ = child.wait();
    writeln!(stdin).expect("tell the program to bind");
    let line = read_line_timeout(&mut out, TIMEOUT).expect("program output");
    let v: Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["errno"], libc::ENOSYS, "{v}");
}

#[test]
fn run_uses_the_sockets_netns_port_threshold() {
    if !root_or_skip() {
        return;
    }
    // A fresh netns whose ip_unprivileged_port_start is 70: port 75 is unprivileged
    // there (the kernel lets nobody bind it), port 65 is not (fdgrab binds it).
    let f = bin("fdgrab").to_string_lossy().into_owned();
    let p = probe();
    let script = format!(
        "ip link set lo up && echo 70 > /proc/sys/net/ipv4/ip_unprivileged_port_start && \
         {f} run --user nobody --allow-bind 60-80 --audit - -- {p} bind tcp4 127.0.0.1 75 && \
         {f} run --user nobody --allow-bind 60-80 --audit - -- {p} bind tcp4 127.0.0.1 65"
    );
    let out = output_timeout(
        Command::new("unshare").args(["--net", "sh", "-c", &script]),
        TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["decision"], "continue", "{lines:?}");
    assert_eq!(lines[0]["reason"], "unprivileged port", "{lines:?}");
    assert_eq!(lines[1]["errno"], 0, "{lines:?}");
    assert_eq!(lines[2]["decision"], "bind", "{lines:?}");
    assert_eq!(lines[3]["errno"], 0, "{lines:?}");
    assert_eq!(lines[3]["port"], 65, "{lines:?}");
}

/// Whether this kernel is at least `major.minor` (`uname -r`).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

/// The caller's netns is read from kept `/proc/TID/ns/net` links and its fds through
/// cached thread pidfds. A thread that moved into a netns of its own after a bind
/// (so its link is kept) is judged in the new netns; and threads of that moved
/// process that are given tids earlier binding threads had (cached links and
/// pidfds of exited threads) are judged as themselves: binding a socket of the
/// first netns is the kernel's EACCES every time, binding one of their own netns
/// succeeds. Tids wrap within the test in a pid namespace of its own with a
/// `pid_max` of 1000 (per pid namespace since Linux 6.14).
#[test]
fn run_netns_identity_survives_moves_and_tid_reuse() {
    if !root_or_skip() {
        return;
    }
    if !kernel_at_least(6, 14) {
        // Before 6.14 pid_max is global: the test must not lower the host's.
        fdgrab_testkit::skip("a pid_max of a pid namespace's own needs Linux 6.14");
        return;
    }
    let f = bin("fdgrab").to_string_lossy().into_owned();
    let p = probe();
    let script = format!(
        "echo 1000 > /proc/sys/kernel/pid_max && exec {f} run --user nobody \
         --allow-bind tcp:164-165@127.66.0.1 -- {p} netns-tid-reuse 100 3000 164"
    );
    let out = output_timeout(
        Command::new("unshare").args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script]),
        Duration::from_secs(150),
    );
    let v = parse_last(&out);
    if v.get("unshare_errno").is_some() {
        fdgrab_testkit::skip(&format!("no user namespace for uid 65534: {v}"));
        return;
    }
    assert_eq!(v["marked"], 100, "the first threads bind: {v}");
    assert_eq!(v["before"], 0, "the child binds before moving: {v}");
    assert_eq!(
        v["moved"],
        libc::EACCES,
        "the moved thread's old socket: {v}"
    );
    let hits = v["hits"].as_u64().unwrap_or(0);
    assert!(hits > 0, "some tids must come back: {v}");
    assert_eq!(v["refused"].as_u64(), Some(hits), "{v}");
    assert_eq!(v["wrong"], 0, "{v}");
    assert_eq!(
        v["old_port"], 0,
        "the first netns's socket stays unbound: {v}"
    );
    assert_eq!(
        v["guest_ok"].as_u64(),
        Some(hits),
        "their own netns's binds: {v}"
    );
}

/// The fd of a trapped bind need not be a socket: here it is a file on a FUSE
/// file system whose server is slow to answer. fdgrab must learn that it is not a
/// socket without asking the file's file system anything (an extended attribute
/// read goes to the FUSE server, which then holds the supervisor, and with it
/// every other bind of the program), and leave the call to the kernel (ENOTSOCK).
#[test]
fn run_bind_of_a_fuse_file_never_reaches_its_file_system() {
    if !root_or_skip() {
        return;
    }
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("run") else {
        fdgrab_testkit::skip("cannot mount a FUSE file system here");
        return;
    };
    let v = probe_run(
        &["--allow-bind", "tcp:167-168@127.66.0.1"],
        &["file-bind", &fs.file(), "167"],
    );
    assert_eq!(v["errno"], libc::ENOTSOCK, "{v}");
    assert_eq!(v["other_errno"], 0, "{v}");
    assert_eq!(
        fs.slow_requests(),
        0,
        "fdgrab asked the FUSE server about the file: {v}"
    );
    // A port the policy does not allow, audited: the audit line's protocol is
    // looked up without asking the file's file system either.
    let dir = TempDir::new("fuse-audit");
    let audit = dir.path("a.jsonl").to_string_lossy().into_owned();
    let v = probe_run(
        &["--allow-bind", "tcp:168@127.66.0.1", "--audit", &audit],
        &["file-bind", &fs.file(), "169"],
    );
    assert_eq!(v["errno"], libc::ENOTSOCK, "{v}");
    assert_eq!(fs.slow_requests(), 0, "audited: {v}");
    let text = std::fs::read_to_string(&audit).expect("audit");
    assert!(text.contains("\"port\":169"), "{text}");
}

/// Audit lines that waited because the audit FIFO was full reach it once its
/// reader catches up, even when the program binds nothing more: `run`'s serving
/// thread sleeps in RECV, so someone else must push the queue out.
#[test]
fn run_audit_queue_drains_without_further_binds() {
    use fdgrab_testkit::oci::{line_count, one_page_fifo_reader, read_until};
    if !root_or_skip() {
        return;
    }
    let dir = TempDir::new("audit-drain");
    let fifo = dir.path("audit.fifo");
    // One page of pipe: a handful of lines fill it, the rest waits in the queue.
    let mut reader = one_page_fifo_reader(&fifo);
    const BINDS: usize = 60;
    // Each bind on its own address, then the program stays, binding nothing.
    let script = format!(
        "import socket,sys,time\n\
         for i in range({BINDS}):\n\
         \x20   s=socket.socket(); s.bind(('127.84.0.%d' % (i+1), 97)); s.close()\n\
         print('bound', flush=True)\n\
         sys.stdin.read()\n"
    );
    let mut child = run_cmd(
        &["--allow-bind", "tcp:97", "--audit", &fifo.to_string_lossy()],
        &[python(), "-c", &script],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn fdgrab run");
    let _g = Guard(child.id());
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let line = read_line_timeout(&mut out, TIMEOUT).expect("the program's binds");
    assert_eq!(line.trim(), "bound");
    let mut text = Vec::new();
    read_until(&mut reader, &mut text, |t| line_count(t) >= BINDS);
    let addresses: Vec<String> = std::str::from_utf8(&text)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("torn {l:?}: {e}"));
            v["address"].as_str().expect("address").to_owned()
        })
        .collect();
    let want: Vec<String> = (1..=BINDS).map(|i| format!("127.84.0.{i}")).collect();
    assert_eq!(
        addresses, want,
        "queued audit lines stayed in fdgrab run, or came torn or out of order"
    );
    drop(child.stdin.take());
    let st = wait_timeout(&mut child, TIMEOUT).expect("fdgrab run exits");
    assert!(st.success(), "{st:?}");
}
