//! `fdgrab ls` over many processes and its filters, checked against the truth: what
//! the target processes report about their own sockets and files, and what ss,
//! fuser and lsof say where they agree.

use fdgrab_testkit::{output_timeout, Target, TIMEOUT};
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

/// Runs `fdgrab ARGS` with a timeout, optionally as uid/gid 65534.
fn fdgrab(args: &[&str], nobody: bool) -> Output {
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.args(args);
    if nobody {
        cmd.uid(65534).gid(65534);
    }
    output_timeout(&mut cmd, TIMEOUT)
}

/// `fdgrab ls ARGS --json`, which must succeed; the schema-2 document.
fn ls_json(args: &[&str]) -> Value {
    let mut all = vec!["ls"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = fdgrab(&all, false);
    assert!(
        out.status.success(),
        "ls {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["schema_version"], 2);
    doc
}

fn processes(doc: &Value) -> &[Value] {
    doc["processes"].as_array().expect("processes")
}

/// (pid, inode) of every fd in the document.
fn pid_inodes(doc: &Value) -> BTreeSet<(i64, u64)> {
    let mut out = BTreeSet::new();
    for p in processes(doc) {
        for e in p["fds"].as_array().expect("fds") {
            out.insert((
                p["pid"].as_i64().expect("pid"),
                e["inode"].as_u64().expect("inode"),
            ));
        }
    }
    out
}

/// `fdgrab ls ARGS --pids`: the pids printed, which must be sorted and unique.
fn ls_pids(args: &[&str]) -> Vec<i64> {
    let mut all = vec!["ls"];
    all.extend_from_slice(args);
    all.push("--pids");
    let out = fdgrab(&all, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids: Vec<i64> = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| l.parse().expect("one pid per line"))
        .collect();
    let mut sorted = pids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(pids, sorted, "--pids output must be sorted and unique");
    pids
}

/// A python3 process running `script` (which prints one JSON line when ready).
fn python(script: &str, args: &[&str]) -> Target {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    Target::spawn_cmd(cmd)
}

/// Listens on 127.0.0.1:PORT and [::1]:PORT (TCP) and binds UDP 127.0.0.1:PORT,
/// one PORT free on all three; reports the inodes, then accepts two connections
/// and reports theirs.
const SERVER: &str = r#"
import json, os, socket, sys
ino = lambda s: os.fstat(s.fileno()).st_ino
while True:
    l4 = socket.socket(); l4.bind(("127.0.0.1", 0)); port = l4.getsockname()[1]
    try:
        l6 = socket.socket(socket.AF_INET6); l6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        l6.bind(("::1", port))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", port))
        break
    except OSError:
        l4.close()
l4.listen(); l6.listen()
print(json.dumps({"port": port, "listen4": ino(l4), "listen6": ino(l6), "udp": ino(u)}), flush=True)
a4, _ = l4.accept(); a6, _ = l6.accept()
print(json.dumps({"acc4": ino(a4), "acc6": ino(a6)}), flush=True)
sys.stdin.read()
"#;

/// Connects to 127.0.0.1:PORT and [::1]:PORT and reports its sockets' inodes.
const CLIENT: &str = r#"
import json, os, socket, sys
port = int(sys.argv[1])
ino = lambda s: os.fstat(s.fileno()).st_ino
c4 = socket.create_connection(("127.0.0.1", port))
c6 = socket.socket(socket.AF_INET6); c6.connect(("::1", port))
print(json.dumps({"c4": ino(c4), "c6": ino(c6)}), flush=True)
sys.stdin.read()
"#;

fn inode(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The socket inodes ss reports for TCP and UDP sockets with local or peer PORT.
fn ss_inodes(port: u16) -> BTreeSet<u64> {
    let filter = format!("( sport = :{port} or dport = :{port} )");
    let out = output_timeout(Command::new("ss").args(["-tuaneH", &filter]), TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("ino:")?.parse().ok())
        .filter(|&i| i != 0)
        .collect()
}

/// `lsof -t ARGS`: the pids lsof finds.
fn lsof_pids(args: &[&str]) -> BTreeSet<i64> {
    let out = output_timeout(Command::new("lsof").arg("-t").args(args), TIMEOUT);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[test]
fn port_finds_listeners_and_clients_on_ipv4_and_ipv6() {
    let mut server = python(SERVER, &[]);
    let port = server.report["port"].as_u64().expect("port") as u16;
    let client = python(CLIENT, &[&port.to_string()]);
    let accepted: Value = serde_json::from_str(&server.next_line()).expect("accepted");
    let (s, c) = (server.pid as i64, client.pid as i64);
    let truth: BTreeSet<(i64, u64)> = [
        (s, inode(&server.report, "listen4")),
        (s, inode(&server.report, "listen6")),
        (s, inode(&server.report, "udp")),
        (s, inode(&accepted, "acc4")),
        (s, inode(&accepted, "acc6")),
        (c, inode(&client.report, "c4")),
        (c, inode(&client.report, "c6")),
    ]
    .into();

    let p = port.to_string();
    let doc = ls_json(&["--port", &p]);
    assert_eq!(pid_inodes(&doc), truth, "ls --port {port}: {doc}");
    // Every fd found names the port at one of its ends, in the family it lives in.
    for proc_ in processes(&doc) {
        for e in proc_["fds"].as_array().expect("fds") {
            let sock = &e["socket"];
            let ends = [&sock["local"]["port"], &sock["peer"]["port"]];
            assert!(ends.iter().any(|v| v.as_u64() == Some(port.into())), "{e}");
            let v6 = [inode(&server.report, "listen6"), inode(&accepted, "acc6")]
                .contains(&inode(e, "inode"))
                || inode(e, "inode") == inode(&client.report, "c6");
            assert_eq!(sock["family"], if v6 { "inet6" } else { "inet" }, "{e}");
        }
    }
    // ss sees the same sockets; lsof the same processes.
    let inodes: BTreeSet<u64> = truth.iter().map(|&(_, i)| i).collect();
    assert_eq!(ss_inodes(port), inodes, "ss disagrees");
    let pids = ls_pids(&["--port", &p]);
    assert_eq!(pids, vec![s.min(c), s.max(c)]);
    let lsof = lsof_pids(&["-n", "-P", &format!("-i:{port}")]);
    assert_eq!(lsof, pids.iter().copied().collect(), "lsof disagrees");

    // Listening only: the two TCP listeners and the bound UDP socket.
    let doc = ls_json(&["--port", &p, "--listen"]);
    let listeners: BTreeSet<(i64, u64)> = [
        (s, inode(&server.report, "listen4")),
        (s, inode(&server.report, "listen6")),
        (s, inode(&server.report, "udp")),
    ]
    .into();
    assert_eq!(pid_inodes(&doc), listeners, "{doc}");
    // Combined with a type and a pid: still the same three.
    let doc = ls_json(&[&s.to_string(), "--port", &p, "--listen", "--type", "socket"]);
    assert_eq!(pid_inodes(&doc), listeners);
    // And the client alone has no listener.
    let out = fdgrab(&["ls", &c.to_string(), "--port", &p, "--listen"], false);
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A listener in a fresh network namespace, on a port nothing uses there: found by
/// port although it is invisible in our namespace's tables.
#[test]
fn port_in_another_network_namespace() {
    let script = r#"
import json, os, socket, sys
l = socket.socket(); l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen()
print(json.dumps({"ino": os.fstat(l.fileno()).st_ino}), flush=True)
sys.stdin.read()
"#;
    // Another namespace, so a fixed port cannot collide with other tests.
    let port = "47813";
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "sh",
        "-c",
        "ip link set lo up && exec python3 -c \"$0\" \"$1\"",
    ])
    .args([script, port]);
    let t = Target::spawn_cmd(cmd);
    let doc = ls_json(&["--port", port]);
    let ino = inode(&t.report, "ino");
    assert!(
        pid_inodes(&doc).contains(&(t.pid.into(), ino)),
        "listener in another netns not found: {doc}"
    );
    let ours = ss_inodes(port.parse().expect("port"));
    assert!(!ours.contains(&ino), "unexpectedly visible in our netns");
}

/// In a network namespace of its own (fixed ports, nothing else there): a
/// dual-stack IPv6 listener on 4000 with an IPv4 client (accepted as
/// `::ffff:127.0.0.1`), an SO_REUSEPORT pair on 4001, a bound UDP socket on
/// 4002 and a UDP socket connected to it from an ephemeral port. Reports each
/// group's inodes and the ephemeral port.
const PORT_KINDS: &str = r#"
import json, os, socket, sys
ino = lambda s: os.fstat(s.fileno()).st_ino
d = socket.socket(socket.AF_INET6); d.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
d.bind(("::", 4000)); d.listen()
c = socket.create_connection(("127.0.0.1", 4000)); a, _ = d.accept()
rp = []
for _ in range(2):
    r = socket.socket(); r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    r.bind(("127.0.0.1", 4001)); r.listen(); rp.append(r)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 4002))
uc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); uc.connect(("127.0.0.1", 4002))
print(json.dumps({"4000": [ino(d), ino(c), ino(a)], "4001": [ino(r) for r in rp],
                  "4002": [ino(u), ino(uc)], "ephemeral": uc.getsockname()[1],
                  "connected_udp": ino(uc), "mapped": a.getpeername()[0]}), flush=True)
sys.stdin.read()
"#;

/// `--port` on the cases a port question meets besides plain listeners and
/// clients: a dual-stack listener and its IPv4-mapped connection, an
/// SO_REUSEPORT group, connected and unconnected UDP, and a filter equal to a
/// client's ephemeral port (only that client). Each against the process's own
/// report and ss in its namespace; `--listen` keeps the listeners and the
/// unconnected UDP socket only.
#[test]
fn port_finds_dual_stack_reuseport_and_udp_sockets() {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "sh",
        "-c",
        "ip link set lo up && exec python3 -c \"$0\"",
        PORT_KINDS,
    ]);
    let t = Target::spawn_cmd(cmd);
    assert_eq!(t.report["mapped"], "::ffff:127.0.0.1", "{}", t.report);
    let pid = i64::from(t.pid);
    let inodes = |key: &str| -> BTreeSet<(i64, u64)> {
        t.report[key]
            .as_array()
            .expect("inodes")
            .iter()
            .map(|v| (pid, v.as_u64().expect("inode")))
            .collect()
    };
    let ephemeral = t.report["ephemeral"].to_string();
    let cases = [
        ("4000", inodes("4000")),
        ("4001", inodes("4001")),
        ("4002", inodes("4002")),
        (
            &ephemeral[..],
            [(pid, inode(&t.report, "connected_udp"))].into(),
        ),
    ];
    let target = t.pid.to_string();
    for (port, truth) in &cases {
        // Other namespaces may use these ports too: only the target is compared.
        let doc = ls_json(&["--port", port]);
        let ours: BTreeSet<(i64, u64)> = pid_inodes(&doc)
            .into_iter()
            .filter(|&(p, _)| p == pid)
            .collect();
        assert_eq!(&ours, truth, "ls --port {port}: {doc}");
        let mut ss = Command::new("nsenter");
        ss.args(["-t", &target, "-n", "ss", "-tuaneH"])
            .arg(format!("( sport = :{port} or dport = :{port} )"));
        let out = output_timeout(&mut ss, TIMEOUT);
        let theirs: BTreeSet<(i64, u64)> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("ino:")?.parse().ok())
            .filter(|&i| i != 0)
            .map(|i| (pid, i))
            .collect();
        assert_eq!(&theirs, truth, "ss disagrees on {port}");
    }
    let doc = ls_json(&[&target, "--listen"]);
    let mut listening = inodes("4001");
    for key in ["4000", "4002"] {
        listening.insert((pid, t.report[key][0].as_u64().expect("inode")));
    }
    assert_eq!(pid_inodes(&doc), listening, "{doc}");
}

/// A thread that unshares its fd table (CLONE_FILES) and listens on a port
/// there, and opens a file there; reports its tid, the port and the inode.
const THREAD_TABLE: &str = r#"
import ctypes, json, os, socket, sys, threading
path = sys.argv[1]
ready = threading.Event(); out = {}
def run():
    if ctypes.CDLL(None, use_errno=True).unshare(0x400) != 0:
        out["refused"] = os.strerror(ctypes.get_errno()); ready.set(); return
    l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
    f = os.open(path, os.O_RDONLY)
    out.update(port=l.getsockname()[1], ino=os.fstat(l.fileno()).st_ino, tid=threading.get_native_id())
    ready.set(); threading.Event().wait()
threading.Thread(target=run, daemon=True).start(); ready.wait()
print(json.dumps(out), flush=True)
sys.stdin.read()
"#;

/// A listener (and a file) held only in a thread's private fd table is not
/// found: `/proc/PID/fd` shows the leader's table, and lsof and `ss -p` do not
/// find its owner either (the documented limit). But the kernel still reports
/// the socket, so a port question that finds no process says so on stderr
/// rather than let "nobody" pass for "free"; a port with no socket at all
/// gets no such line, nor does a file question.
#[test]
fn a_socket_held_only_by_a_threads_own_table_is_reported_as_unheld() {
    let (dir, file) = temp_file("thread-table", "held");
    let t = python(THREAD_TABLE, &[file.to_str().expect("utf8")]);
    if let Some(why) = t.report["refused"].as_str() {
        panic!("unshare(CLONE_FILES) refused: {why}");
    }
    let port = t.report["port"].to_string();
    let ino = inode(&t.report, "ino");
    // The truth: the kernel has it, with no owner anyone can name.
    assert!(ss_inodes(port.parse().expect("port")).contains(&ino));
    assert!(lsof_pids(&["-n", "-P", &format!("-i:{port}")]).is_empty());
    let out = fdgrab(&["ls", "--port", &port, "--pids"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(err.contains("the kernel has 1 matching socket"), "{err}");
    // No socket on the port: nothing to say.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let free_port = free.local_addr().expect("addr").port().to_string();
    drop(free);
    let out = fdgrab(&["ls", "--port", &free_port, "--pids"], false);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("kernel has"));
    let f = file.to_str().expect("utf8");
    let out = fdgrab(&["ls", "--path", f, "--pids"], false);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("kernel has"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A listener only fdgrab itself holds (inherited from whoever started it,
/// which kept no copy: here python execs fdgrab) is the caller's own, which a
/// run over every process leaves out; it is not a socket nobody could be
/// found for, so no "no process found" line.
#[test]
fn a_socket_only_the_caller_holds_is_not_reported_as_unheld() {
    let script = r#"
import os, socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
os.set_inheritable(l.fileno(), True)
os.execv(sys.argv[1], [sys.argv[1], "ls", "--port", str(l.getsockname()[1]), "--pids"])
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .arg(fdgrab_testkit::fdgrab().get_program());
    let out = output_timeout(&mut cmd, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(!err.contains("kernel has"), "{err}");
}

/// A socket the kernel holds for itself (a vxlan tunnel's UDP socket, as for
/// wireguard or an NFS mount) has an inode and no fd anywhere: the "no process
/// found" line must not send the reader looking for a thread or an unreadable
/// process only. ss agrees that the socket exists.
#[test]
fn a_socket_the_kernel_holds_is_reported_as_the_kernels() {
    // Another namespace, so a fixed port cannot collide with other tests.
    let port = "47917";
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "sh",
        "-c",
        "ip link set lo up; if ip link add vxfg type vxlan id 42 dstport \"$0\" local 127.0.0.1 \
         dev lo && ip link set vxfg up; then echo '{\"ok\":true}'; else echo '{\"ok\":false}'; \
         fi; exec cat",
        port,
    ]);
    let t = Target::spawn_cmd(cmd);
    if t.report["ok"] != true {
        return fdgrab_testkit::skip("no vxlan device (the vxlan module) to make a kernel socket");
    }
    let mut ss = Command::new("nsenter");
    let pid = t.pid.to_string();
    ss.args(["-t", &pid, "-n", "ss", "-Huan", "sport", "=", port]);
    let theirs = String::from_utf8_lossy(&output_timeout(&mut ss, TIMEOUT).stdout).into_owned();
    assert!(theirs.contains(&format!(":{port} ")), "{theirs}");
    let out = fdgrab(&["ls", "--port", port, "--pids"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the kernel has 1 matching socket"), "{err}");
    assert!(err.contains("by the kernel itself"), "{err}");
}

/// Three MPTCP connections over two subflows each (the second from 127.0.0.2,
/// which the path manager adds), in a fresh network namespace; reports the
/// port, and for each connection the fds of both ends and the client's port.
const MPTCP_TWO_SUBFLOWS: &str = r#"
import json, socket, subprocess, sys, time
def out(**kw):
    print(json.dumps(kw), flush=True); sys.stdin.read(); sys.exit(0)
try:
    l = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
except OSError as e:
    out(ok=False, why=str(e))
l.bind(("127.0.0.1", 0)); l.listen()
port = l.getsockname()[1]
conns = []
for _ in range(3):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    c.connect(("127.0.0.1", port)); s, _ = l.accept()
    c.send(b"x"); s.recv(1)
    conns.append((c, s))
for _ in range(100):
    ss = subprocess.run(["ss", "-Htn", "dport", "=", str(port)], capture_output=True, text=True).stdout
    if len(ss.splitlines()) >= 6:
        break
    time.sleep(0.05)
else:
    out(ok=False, why="no second subflows: " + ss)
out(ok=True, port=port, conns=[{"client": c.fileno(), "server": s.fileno(),
    "client_port": c.getsockname()[1]} for c, s in conns])
"#;

/// An MPTCP socket's TCP subflows all carry its inode: a listing described
/// each end by whichever subflow the dump gave last (hash order), so an end
/// often showed the second subflow's 127.0.0.2 and its port, not the
/// connection's own addresses (those `ss -M` shows). Every end of three
/// connections, listed alone and by `--port`.
#[test]
fn an_mptcp_connection_is_described_by_its_own_addresses_not_a_later_subflow() {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "sh",
        "-c",
        "ip link set lo up && ip addr add 127.0.0.2/8 dev lo && ip mptcp limits set subflow 2 \
         && ip mptcp endpoint add 127.0.0.2 dev lo subflow && exec python3 -c \"$0\"",
        MPTCP_TWO_SUBFLOWS,
    ]);
    let t = Target::spawn_cmd(cmd);
    if t.report["ok"] != true {
        return fdgrab_testkit::skip(&format!("no MPTCP with two subflows: {}", t.report));
    }
    let port = &t.report["port"];
    let pid = t.pid.to_string();
    for args in [&[&pid[..]][..], &["--port", &port.to_string()]] {
        let doc = ls_json(args);
        let socket = |fd: &Value| {
            processes(&doc)
                .iter()
                .filter(|p| p["pid"] == t.pid)
                .flat_map(|p| p["fds"].as_array().expect("fds"))
                .find(|e| &e["fd"] == fd)
                .unwrap_or_else(|| panic!("ls {args:?}: fd {fd} missing: {doc}"))["socket"]
                .clone()
        };
        for conn in t.report["conns"].as_array().expect("conns") {
            let (client, server) = (socket(&conn["client"]), socket(&conn["server"]));
            let ends = [
                (&client["local"], &conn["client_port"]),
                (&client["peer"], port),
                (&server["local"], port),
                (&server["peer"], &conn["client_port"]),
            ];
            for (end, port) in ends {
                assert_eq!(
                    end["address"], "127.0.0.1",
                    "ls {args:?}: {client} {server}"
                );
                assert_eq!(&end["port"], port, "ls {args:?}: {client} {server}");
            }
        }
    }
}

/// Forks a child that moves to a fresh network namespace, listens there and
/// sends the listener back over a socketpair; the parent (still in ours) holds
/// it. Reports the parent's fd, the child's pid and fd, the inode and the port.
const PASSED_ACROSS_NETNS: &str = r#"
import ctypes, json, os, socket, sys
a, b = socket.socketpair()
pid = os.fork()
if pid == 0:
    a.close()
    if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:
        os._exit(3)
    l = socket.socket(); l.bind(("0.0.0.0", 0)); l.listen()
    socket.send_fds(b, [b"l"], [l.fileno()])
    b.send(json.dumps({"fd": l.fileno(), "port": l.getsockname()[1]}).encode())
    sys.stdin.read()
    os._exit(0)
b.close()
_, fds, _, _ = socket.recv_fds(a, 1, 1)
child = json.loads(a.recv(4096))
print(json.dumps({"fd": fds[0], "ino": os.fstat(fds[0]).st_ino, "child": pid,
                  "child_fd": child["fd"], "port": child["port"]}), flush=True)
sys.stdin.read()
"#;

/// A listener made in another network namespace and held (over SCM_RIGHTS) by a
/// process in ours keeps its own namespace: ours has no trace of it. Listing
/// both processes, or every process, describes it for both holders from the
/// namespace it lives in (where a listing read each holder's own namespace
/// only, and showed the one in ours as a bare "TCP" with no address), as
/// `--port` finds both; ss in its namespace agrees.
#[test]
fn a_socket_held_across_network_namespaces_is_described_for_every_holder() {
    let t = python(PASSED_ACROSS_NETNS, &[]);
    let (ino, port) = (inode(&t.report, "ino"), inode(&t.report, "port"));
    let child = t.report["child"].as_i64().expect("child");
    let holders = [
        (i64::from(t.pid), t.report["fd"].as_i64().expect("fd")),
        (child, t.report["child_fd"].as_i64().expect("child fd")),
    ];
    let (parent, child_s) = (t.pid.to_string(), child.to_string());
    let port_s = port.to_string();
    for args in [&[&parent[..], &child_s][..], &[], &["--port", &port_s]] {
        let doc = ls_json(args);
        for (pid, fd) in holders {
            let e = processes(&doc)
                .iter()
                .filter(|p| p["pid"] == pid)
                .flat_map(|p| p["fds"].as_array().expect("fds"))
                .find(|e| e["fd"] == fd)
                .unwrap_or_else(|| panic!("ls {args:?}: pid {pid} fd {fd} missing"));
            assert_eq!(e["inode"], ino, "{e}");
            let sock = &e["socket"];
            assert_eq!(sock["state"], "LISTEN", "ls {args:?}, pid {pid}: {e}");
            assert_eq!(sock["local"]["port"], port, "ls {args:?}, pid {pid}: {e}");
        }
    }
    assert!(
        !ss_inodes(port as u16).contains(&ino),
        "visible in our netns"
    );
    let mut ss = Command::new("nsenter");
    ss.args(["-t", &child_s, "-n", "ss", "-Hltne"]);
    let theirs = String::from_utf8_lossy(&output_timeout(&mut ss, TIMEOUT).stdout).into_owned();
    assert!(theirs.contains(&format!("ino:{ino} ")), "{theirs}");
}

/// Holds the files named in argv open and reports (path, fd, inode) for each.
const HOLDER: &str = r#"
import json, os, sys
fds = []
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY)
    fds.append({"fd": fd, "ino": os.fstat(fd).st_ino})
print(json.dumps({"fds": fds}), flush=True)
sys.stdin.read()
"#;

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fdgrab-lsq-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A fresh `temp_dir` and a small file NAME in it.
fn temp_file(tag: &str, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_dir(tag);
    let file = dir.join(name);
    std::fs::write(&file, b"x").expect("write");
    (dir, file)
}

/// The pids `fuser PATH` prints (its marks stripped), sorted.
fn fuser_pids(path: &str) -> Vec<i64> {
    let out = output_timeout(Command::new("fuser").arg(path), TIMEOUT);
    let mut pids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches(|c: char| c.is_alphabetic()).parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn path_finds_every_holder_by_device_and_inode() {
    let dir = temp_dir("path");
    let file = dir.join("shared");
    std::fs::write(&file, b"hello").expect("write");
    let alias = dir.join("alias");
    std::fs::hard_link(&file, &alias).expect("link");
    let other = dir.join("other");
    std::fs::write(&other, b"x").expect("write");
    let (f, a, o) = (
        file.to_str().expect("utf8"),
        alias.to_str().expect("utf8"),
        other.to_str().expect("utf8"),
    );
    // One opens it by its name, one by a second hard link, one holds another file.
    let t1 = python(HOLDER, &[f, o]);
    let t2 = python(HOLDER, &[a]);
    let t3 = python(HOLDER, &[o]);
    let doc = ls_json(&["--path", f]);
    let ino = t1.report["fds"][0]["ino"].as_u64().expect("ino");
    let truth: BTreeSet<(i64, u64)> = [(t1.pid.into(), ino), (t2.pid.into(), ino)].into();
    assert_eq!(pid_inodes(&doc), truth, "{doc}");
    let fd_of = |t: &Target| t.report["fds"][0]["fd"].as_i64();
    for (t, p) in [(&t1, f), (&t2, a)] {
        let proc_ = processes(&doc)
            .iter()
            .find(|x| x["pid"].as_i64() == Some(t.pid.into()))
            .expect("holder");
        assert_eq!(proc_["fds"][0]["fd"].as_i64(), fd_of(t));
        assert_eq!(proc_["fds"][0]["path"], p);
    }
    // fuser agrees on the holders.
    let ours = ls_pids(&["--path", f]);
    assert_eq!(ours, fuser_pids(f), "fuser disagrees");
    assert!(!ours.contains(&t3.pid.into()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--path` matches by device and inode, never by the link's text: a holder
/// in a mount namespace of its own that opened the file through a bind mount
/// (its link names a directory that is empty in ours) is found, and so are both
/// holders once the file is deleted, named through `/proc/PID/fd/N` (the
/// links then end in " (deleted)"). fuser agrees in both cases.
#[test]
fn path_finds_holders_through_a_bind_mount_and_after_the_unlink() {
    let dir = temp_dir("bind");
    let (real, view) = (dir.join("real"), dir.join("view"));
    std::fs::create_dir_all(&real).expect("dir");
    std::fs::create_dir_all(&view).expect("dir");
    let file = real.join("data");
    std::fs::write(&file, b"held twice").expect("write");
    let (f, r, v) = (
        file.to_str().expect("utf8"),
        real.to_str().expect("utf8"),
        view.to_str().expect("utf8"),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$2" && exec python3 -c "$3" "$2/data""#)
        .args(["sh", r, v, HOLDER]);
    let bound = Target::spawn_cmd(cmd);
    let named = python(HOLDER, &[f]);
    let fd = |t: &Target| t.report["fds"][0]["fd"].as_i64().expect("fd");
    let link = std::fs::read_link(format!("/proc/{}/fd/{}", bound.pid, fd(&bound)));
    assert_eq!(
        link.expect("link"),
        view.join("data"),
        "the holder sees the file through the bind mount"
    );
    assert!(
        std::fs::read_dir(&view).expect("view").next().is_none(),
        "the bind mount is the holder's alone"
    );
    let mut truth = vec![i64::from(bound.pid), i64::from(named.pid)];
    truth.sort_unstable();
    assert_eq!(ls_pids(&["--path", f]), truth, "by name");
    assert_eq!(fuser_pids(f), truth, "fuser by name");
    std::fs::remove_file(&file).expect("unlink");
    let through = format!("/proc/{}/fd/{}", named.pid, fd(&named));
    assert_eq!(ls_pids(&["--path", &through]), truth, "deleted");
    assert_eq!(fuser_pids(&through), truth, "fuser, deleted");
    let doc = ls_json(&["--path", &through]);
    let ino = named.report["fds"][0]["ino"].as_u64().expect("ino");
    let expect: BTreeSet<(i64, u64)> = truth.iter().map(|&p| (p, ino)).collect();
    assert_eq!(pid_inodes(&doc), expect, "{doc}");
    drop(bound);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A deleted file held by two processes, one in another mount namespace, and a
/// memfd: all of them, with sizes, and nothing that still has a name.
#[test]
fn deleted_finds_unlinked_files_and_memfds_across_mount_namespaces() {
    let dir = temp_dir("deleted");
    let file = dir.join("gone.log");
    std::fs::write(&file, vec![b'x'; 4321]).expect("write");
    let kept = dir.join("kept");
    std::fs::write(&kept, b"still here").expect("write");
    let f = file.to_str().expect("utf8");
    let t1 = python(HOLDER, &[f, kept.to_str().expect("utf8")]);
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "python3",
        "-c",
        HOLDER,
        f,
    ]);
    let t2 = Target::spawn_cmd(cmd);
    let mnt = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("ns");
    assert_ne!(
        mnt(t1.pid),
        mnt(t2.pid),
        "second holder must be in its own mount ns"
    );
    let memfd_script = r#"
import json, os, sys
fd = os.memfd_create("lsq-memfd"); os.write(fd, b"12345")
print(json.dumps({"fd": fd, "ino": os.fstat(fd).st_ino}), flush=True)
sys.stdin.read()
"#;
    let t3 = python(memfd_script, &[]);
    std::fs::remove_file(&file).expect("unlink");

    let pids: Vec<String> = [t1.pid, t2.pid, t3.pid]
        .iter()
        .map(|p| p.to_string())
        .collect();
    let mut args: Vec<&str> = pids.iter().map(String::as_str).collect();
    args.push("--deleted");
    let doc = ls_json(&args);
    let ino = t1.report["fds"][0]["ino"].as_u64().expect("ino");
    let truth: BTreeSet<(i64, u64)> = [
        (t1.pid.into(), ino),
        (t2.pid.into(), ino),
        (t3.pid.into(), inode(&t3.report, "ino")),
    ]
    .into();
    assert_eq!(pid_inodes(&doc), truth, "{doc}");
    for p in processes(&doc) {
        let e = &p["fds"][0];
        assert_eq!(e["nlink"], 0, "{e}");
        let (size, ty) = if p["pid"].as_i64() == Some(t3.pid.into()) {
            (5, "memfd")
        } else {
            (4321, "file")
        };
        assert_eq!(e["size"], size, "{e}");
        assert_eq!(e["type"], ty, "{e}");
    }
    // System-wide, the same three are among the holders, as lsof +L1 sees them.
    let all: BTreeSet<i64> = ls_pids(&["--deleted"]).into_iter().collect();
    let lsof = lsof_pids(&["-n", "+L1"]);
    for t in [&t1, &t2, &t3] {
        assert!(
            all.contains(&t.pid.into()),
            "{} missing from ls --deleted",
            t.pid
        );
        assert!(
            lsof.contains(&t.pid.into()),
            "lsof +L1 disagrees on {}",
            t.pid
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Several pids in one document, each as it reports itself; the table gains
/// COMMAND and PID columns.
#[test]
fn several_pids_in_one_schema_2_document_and_table() {
    let a = Target::spawn(["zoo"]);
    let b = python(HOLDER, &["/dev/null"]);
    let (pa, pb) = (a.pid.to_string(), b.pid.to_string());
    let doc = ls_json(&[&pb, &pa]);
    let procs = processes(&doc);
    assert_eq!(procs.len(), 2);
    let (first, second) = (a.pid.min(b.pid), a.pid.max(b.pid));
    assert_eq!(
        procs[0]["pid"].as_i64(),
        Some(first.into()),
        "sorted by pid"
    );
    assert_eq!(procs[1]["pid"].as_i64(), Some(second.into()));
    for p in procs {
        let pid = p["pid"].as_i64().expect("pid");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
        assert_eq!(p["command"], comm.trim_end());
        assert_eq!(p["process"]["pid"].as_i64(), Some(pid));
        let reported = if pid == i64::from(a.pid) {
            &a.report
        } else {
            &b.report
        };
        for r in reported["fds"].as_array().expect("fds") {
            let e = p["fds"]
                .as_array()
                .and_then(|fds| fds.iter().find(|e| e["fd"] == r["fd"]))
                .unwrap_or_else(|| panic!("fd {} of {pid} missing", r["fd"]));
            assert_eq!(e["inode"], r["ino"], "{e}");
        }
    }
    let out = fdgrab(&["ls", &pa, &pb], false);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    let header: Vec<&str> = text
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(&header[..3], ["COMMAND", "PID", "FD"]);
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(cols[1] == pa || cols[1] == pb, "{line}");
    }
    // --type narrows to what the target says it holds of that kind.
    let doc = ls_json(&[&pa, "--type", "pipe,memfd"]);
    let want: BTreeSet<i64> = a.report["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .filter(|r| r.get("memfd").is_some() || r["mode"].as_u64() == Some(libc::S_IFIFO.into()))
        .map(|r| r["fd"].as_i64().expect("fd"))
        .collect();
    let reported: BTreeSet<i64> = a.report["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .map(|r| r["fd"].as_i64().expect("fd"))
        .collect();
    let listed = processes(&doc)[0]["fds"].as_array().expect("fds");
    for e in listed {
        assert!(e["type"] == "pipe" || e["type"] == "memfd", "{e}");
    }
    // Beyond the zoo's own fds the target inherited stdio pipes: compare the zoo's.
    let got: BTreeSet<i64> = listed
        .iter()
        .map(|e| e["fd"].as_i64().expect("fd"))
        .filter(|fd| reported.contains(fd))
        .collect();
    assert_eq!(got, want);
}

/// Processes that exit while the whole system is scanned are skipped with at most
/// one line on stderr, and the run succeeds every time.
#[test]
fn processes_exiting_during_the_scan_do_not_fail_the_run() {
    let mut churn = Command::new("sh")
        .args(["-c", "while :; do sleep 0.001 & sleep 0.001 & wait; done"])
        .spawn()
        .expect("churn");
    let steady = python(HOLDER, &["/dev/null"]);
    for _ in 0..5 {
        let out = fdgrab(&["ls", "--json"], false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.lines().count() <= 1,
            "more than one summary line: {err}"
        );
        let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert!(processes(&doc)
            .iter()
            .any(|p| p["pid"].as_i64() == Some(steady.pid.into())));
    }
    let _ = churn.kill();
    let _ = churn.wait();
}

/// uid 65534 sees its own processes and none of root's, with one summary line
/// for those it may not read, and exit status 0.
#[test]
fn an_unprivileged_caller_lists_only_its_own_processes() {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", HOLDER, "/dev/null"]).uid(65534).gid(65534);
    let mine = Target::spawn_cmd(cmd);
    let roots = python(HOLDER, &["/dev/null"]);
    let out = fdgrab(&["ls", "--json"], true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    let pids: BTreeSet<i64> = processes(&doc)
        .iter()
        .map(|p| p["pid"].as_i64().expect("pid"))
        .collect();
    assert!(pids.contains(&mine.pid.into()), "own process missing");
    assert!(!pids.contains(&roots.pid.into()), "root's process listed");
    for p in processes(&doc) {
        assert_eq!(p["process"]["uids"][1], 65534, "{}", p["pid"]);
    }
    // --user as root: the same process, by name and by number.
    for user in ["nobody", "65534"] {
        let pids = ls_pids(&["--user", user]);
        assert!(pids.contains(&mine.pid.into()), "--user {user}");
        assert!(!pids.contains(&roots.pid.into()), "--user {user}");
    }
    // Naming root's process explicitly is an error (exit 4), naming the pid.
    let out = fdgrab(&["ls", &roots.pid.to_string(), &mine.pid.to_string()], true);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&roots.pid.to_string()));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&mine.pid.to_string()));
}

#[test]
fn pids_output_feeds_kill() {
    let (dir, file) = temp_file("kill", "victim");
    let f = file.to_str().expect("utf8");
    let mut a = python(HOLDER, &[f]);
    let mut b = python(HOLDER, &[f]);
    let bystander = python(HOLDER, &["/dev/null"]);
    let script = format!(
        "kill $({} ls --path '{f}' --pids)",
        fdgrab_testkit::bin("fdgrab").display()
    );
    let out = output_timeout(Command::new("sh").args(["-c", &script]), TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::process::ExitStatusExt;
    for t in [&mut a, &mut b] {
        let st = fdgrab_testkit::wait_timeout(&mut t.child, TIMEOUT).expect("holder exits");
        assert_eq!(st.signal(), Some(libc::SIGTERM));
    }
    assert!(std::path::Path::new(&format!("/proc/{}", bystander.pid)).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// File and socket names with a newline, an escape sequence, a backslash, invalid
/// UTF-8, and an abstract socket name with NULs: the table prints each fd on one
/// line with nothing a terminal would act on, and JSON gives the exact bytes back.
#[test]
fn hostile_names_are_escaped_in_the_table_and_exact_in_json() {
    let dir = temp_dir("hostile");
    let script = r#"
import json, os, socket, sys
d = os.fsencode(sys.argv[1])
names = [b"new\nline", b"esc\x1b[31mred", b"back\\slash", b"bad\xff\xfeutf8"]
fds = []
for n in names:
    p = d + b"/" + n
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o600)
    fds.append({"fd": fd, "path": list(p)})
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = b"\0lsq\nabs\0tract\x1b" + str(os.getpid()).encode()
s.bind(addr)
fds.append({"fd": s.fileno(), "path": list(addr), "socket": True})
print(json.dumps({"fds": fds}), flush=True)
sys.stdin.read()
"#;
    let t = python(script, &[dir.to_str().expect("utf8")]);
    let pid = t.pid.to_string();
    let doc = ls_json(&[&pid]);
    let p = &processes(&doc)[0];
    let bytes_of = |obj: &Value, field: &str| -> Vec<u8> {
        match obj.get(format!("{field}_bytes")) {
            Some(Value::Array(a)) => a.iter().map(|b| b.as_u64().expect("byte") as u8).collect(),
            _ => obj[field].as_str().expect("name").as_bytes().to_vec(),
        }
    };
    let reported = t.report["fds"].as_array().expect("fds");
    for r in reported {
        let want: Vec<u8> = r["path"]
            .as_array()
            .expect("path")
            .iter()
            .map(|b| b.as_u64().expect("byte") as u8)
            .collect();
        let e = p["fds"]
            .as_array()
            .and_then(|fds| fds.iter().find(|e| e["fd"] == r["fd"]))
            .expect("fd listed");
        if r.get("socket").is_some() {
            assert_eq!(bytes_of(&e["socket"]["local"], "path"), want, "{e}");
        } else {
            assert_eq!(bytes_of(e, "path"), want, "path round trip: {e}");
            assert_eq!(bytes_of(e, "link"), want, "link round trip: {e}");
            let utf8 = std::str::from_utf8(&want).is_ok();
            assert_eq!(e.get("path_bytes").is_some(), !utf8, "{e}");
        }
    }

    let out = fdgrab(&["ls", &pid], false);
    assert!(out.status.success());
    assert!(!out.stdout.contains(&0x1b), "raw ESC in the table");
    assert!(!out.stdout.contains(&0), "raw NUL in the table");
    let text = String::from_utf8(out.stdout).expect("the table is valid UTF-8");
    let rows: Vec<&str> = text.lines().skip(1).collect();
    let fds = t.report["fds"].as_array().expect("fds").len();
    let numbered = |fd: &Value| {
        rows.iter()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .map(|c| c.trim_end_matches(['r', 'w', 'u']))
                    == fd.as_i64().map(|n| n.to_string()).as_deref()
            })
            .count()
    };
    for r in reported {
        assert_eq!(numbered(&r["fd"]), 1, "one row for fd {}:\n{text}", r["fd"]);
    }
    assert!(rows.len() >= fds);
    for needle in [
        "new\\nline",
        "esc\\e[31mred",
        "back\\\\slash",
        "bad\\xff\\xfeutf8",
        "@lsq\\nabs\\x00tract\\e",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--listen` on the zoo: its TCP listeners (IPv4 and IPv6), its bound unconnected
/// UDP sockets and its listening unix socket, and nothing connected.
#[test]
fn listen_keeps_exactly_the_listening_sockets() {
    let t = Target::spawn(["zoo"]);
    let doc = ls_json(&[&t.pid.to_string(), "--listen"]);
    let got: BTreeSet<i64> = processes(&doc)[0]["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .map(|e| e["fd"].as_i64().expect("fd"))
        .collect();
    let want: BTreeSet<i64> = ["tcp-listen", "tcp6-listen", "udp", "udp6", "unix-listen"]
        .iter()
        .map(|l| i64::from(t.fd_labelled(l)))
        .collect();
    assert_eq!(got, want, "{doc}");
}

/// `--pids` that finds nothing exits 1 with nothing on stdout, as `lsof -t`, `fuser`
/// and `pgrep` do; the table and JSON still exit 0. A named process that cannot be
/// read keeps its own status (5), found or not.
#[test]
fn pids_exits_1_when_nothing_matches() {
    let (dir, file) = temp_file("nomatch", "unheld");
    let f = file.to_str().expect("utf8");
    // A port nobody holds: one the kernel just handed out and took back.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
        .to_string();
    for filter in [&["--path", f][..], &["--port", &port]] {
        let mut args = vec!["ls"];
        args.extend_from_slice(filter);
        let table = fdgrab(&args, false);
        assert_eq!(table.status.code(), Some(0), "{args:?}");
        assert!(table.stdout.is_empty(), "{args:?}");
        args.push("--pids");
        let out = fdgrab(&args, false);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?}");
        // What a script does with it.
        let script = format!(
            "{} ls {} --pids || echo nobody",
            fdgrab_testkit::bin("fdgrab").display(),
            filter.join(" ")
        );
        let sh = output_timeout(Command::new("sh").args(["-c", &script]), TIMEOUT);
        assert_eq!(String::from_utf8_lossy(&sh.stdout), "nobody\n");
    }
    // A holder turns it into 0 and its pid.
    let holder = python(HOLDER, &[f]);
    assert_eq!(ls_pids(&["--path", f]), [i64::from(holder.pid)]);
    // A named pid that is gone: 5, not 1.
    let mut gone = Command::new("true").spawn().expect("true");
    let pid = gone.id().to_string();
    gone.wait().expect("reap");
    let out = fdgrab(&["ls", &pid, "--path", f, "--pids"], false);
    assert_eq!(out.status.code(), Some(5));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process whose thread-group leader exited has an empty /proc/PID/fd, yet its
/// other threads still share a live fd table: a query over every process still
/// finds what it holds (while kernel threads, also with an empty fd directory, are
/// passed over).
#[test]
fn path_finds_a_holder_whose_leader_exited() {
    let t = Target::spawn(["leader-exit"]);
    fdgrab_testkit::wait_leader_zombie(t.pid);
    let fd = t.fd_labelled("pipe-r");
    let tid = std::fs::read_dir(format!("/proc/{}/task", t.pid))
        .expect("task")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&tid| tid != t.pid)
        .expect("a live thread");
    // The pipe itself, through the live thread's fd table.
    let pipe = format!("/proc/{}/task/{tid}/fd/{fd}", t.pid);
    assert_eq!(ls_pids(&["--path", &pipe]), [i64::from(t.pid)]);
    let doc = ls_json(&["--path", &pipe]);
    let fds: Vec<i64> = processes(&doc)[0]["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .filter_map(|e| e["fd"].as_i64())
        .collect();
    // Both ends of the pipe are the same inode.
    assert!(fds.contains(&i64::from(fd)), "{doc}");
}

/// Holds COUNT descriptors (/dev/null and pipe ends) with, from index AT on, the
/// file PATH, a TCP listener and an unlinked file; reports their numbers and the
/// listener's port.
const BIG_HOLDER: &str = r#"
import json, os, resource, socket, sys, tempfile
count, at, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 64)), hard))
keep, mine, opened = [], {}, 0
while opened < count:
    if opened >= at and not mine:
        mine["file"] = os.open(path, os.O_RDONLY)
        l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(); keep.append(l)
        mine["listener"], mine["port"] = l.fileno(), l.getsockname()[1]
        fd, name = tempfile.mkstemp(dir=os.path.dirname(path)); os.unlink(name)
        mine["deleted"] = fd
        opened += 3
    elif opened % 3 == 0:
        keep.extend(os.pipe()); opened += 2
    else:
        keep.append(os.open("/dev/null", os.O_RDONLY)); opened += 1
print(json.dumps(mine), flush=True)
sys.stdin.read()
"#;

/// A table large enough to be shared among the scan's threads (each lists and
/// checks ranges of fd numbers) still gives every match, wherever it sits: at the
/// start, in the middle or at the very end of the table, for `--path` (with fuser
/// agreeing), `--port` and `--deleted`.
#[test]
fn matches_anywhere_in_a_large_fd_table() {
    let (dir, file) = temp_file("large", "held");
    let f = file.to_str().expect("utf8");
    let count = 900;
    let holders: Vec<Target> = [0, count / 2, count - 3]
        .iter()
        .map(|at| python(BIG_HOLDER, &[&count.to_string(), &at.to_string(), f]))
        .collect();
    let mut all: Vec<i64> = holders.iter().map(|t| i64::from(t.pid)).collect();
    all.sort_unstable();
    assert_eq!(ls_pids(&["--path", f]), all);
    let out = output_timeout(Command::new("fuser").arg(f), TIMEOUT);
    let fuser: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect::<BTreeSet<i64>>()
        .into_iter()
        .collect();
    assert_eq!(fuser, all, "fuser disagrees");
    let doc = ls_json(&["--path", f]);
    let deleted = ls_json(&["--deleted"]);
    for t in &holders {
        let fd = |key: &str| t.report[key].as_i64().unwrap_or_else(|| panic!("{key}"));
        let fds_in = |doc: &Value| -> Vec<i64> {
            processes(doc)
                .iter()
                .filter(|p| p["pid"].as_i64() == Some(t.pid.into()))
                .flat_map(|p| p["fds"].as_array().expect("fds").iter())
                .filter_map(|e| e["fd"].as_i64())
                .collect()
        };
        assert_eq!(fds_in(&doc), [fd("file")], "--path, pid {}", t.pid);
        assert_eq!(
            fds_in(&deleted),
            [fd("deleted")],
            "--deleted, pid {}",
            t.pid
        );
        let port = fd("port").to_string();
        assert_eq!(ls_pids(&["--port", &port]), [i64::from(t.pid)]);
        let by_port = ls_json(&["--port", &port]);
        assert_eq!(fds_in(&by_port), [fd("listener")], "--port, pid {}", t.pid);
    }
    drop(holders);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Processes with large tables that start and exit all through the scan: every
/// run succeeds, finds the steady holder, and says at most one line on stderr.
#[test]
fn large_tables_exiting_during_a_path_scan_do_not_fail_it() {
    let (dir, file) = temp_file("large-churn", "held");
    let f = file.to_str().expect("utf8");
    let target = fdgrab_testkit::bin("fdgrab-target");
    let mut churn = Command::new("sh")
        .args([
            "-c",
            "while :; do \"$0\" many 400 </dev/null >/dev/null & \"$0\" many 400 </dev/null >/dev/null & wait; done",
        ])
        .arg(&target)
        .spawn()
        .expect("churn");
    let steady = python(HOLDER, &[f]);
    for _ in 0..10 {
        let out = fdgrab(&["ls", "--path", f, "--pids"], false);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.lines().count() <= 1,
            "more than one summary line: {err}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            steady.pid.to_string()
        );
    }
    let _ = churn.kill();
    let _ = churn.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A listener held by a process outside fdgrab's pid namespace, in the network
/// namespace fdgrab shares (a pod's sidecar, a `--net=host` container): no
/// process fdgrab can list lives in that network namespace, which was then
/// never asked, so "nobody" passed for "free" with nothing on stderr.
#[test]
fn a_socket_held_outside_the_callers_pid_namespace_is_reported_as_unheld() {
    let t = python(SERVER, &[]);
    let port = t.report["port"].to_string();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(fdgrab_testkit::bin("fdgrab"))
        .args(["ls", "--port", &port, "--pids"]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // The two listeners and the UDP socket of the holder.
    assert!(err.contains("the kernel has 3 matching sockets"), "{err}");
    assert!(err.contains("outside this pid namespace"), "{err}");
}

/// A connection attempt to port 0 (Linux sends the SYN) is SYN_SENT with a real
/// peer: only a closed socket's port 0 means "no peer". In a fresh network
/// namespace where the peer's address routes back to loopback and answers no
/// one, so the attempt stays pending; ss sees it too.
#[test]
fn a_connection_attempt_to_port_0_has_its_peer() {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "sh",
        "-c",
        "ip link set lo up && ip addr add 192.0.2.1/32 dev lo && \
         ip route add 192.0.2.0/24 dev lo && exec python3 -c \"$0\"",
        r#"
import json, socket, sys
s = socket.socket(); s.setblocking(False)
try:
    s.connect(("192.0.2.2", 0))
except BlockingIOError:
    pass
print(json.dumps({"fd": s.fileno(), "port": s.getsockname()[1]}), flush=True)
sys.stdin.read()
"#,
    ]);
    let t = Target::spawn_cmd(cmd);
    let fd = t.report["fd"].as_i64().expect("fd");
    let pid = t.pid.to_string();
    let mut ss = Command::new("nsenter");
    ss.args(["-t", &pid, "-n", "ss", "-Htn", "state", "syn-sent"]);
    let theirs = String::from_utf8_lossy(&output_timeout(&mut ss, TIMEOUT).stdout).into_owned();
    assert!(theirs.contains("192.0.2.2:"), "ss: {theirs}");
    let peer_of = |doc: &Value| {
        processes(doc)
            .iter()
            .flat_map(|p| p["fds"].as_array().expect("fds").iter())
            .find(|e| e["fd"].as_i64() == Some(fd))
            .map(|e| (e["socket"]["state"].clone(), e["socket"]["peer"].clone()))
            .expect("the socket")
    };
    let (state, peer) = peer_of(&ls_json(&["--fd", &fd.to_string(), &pid]));
    assert_eq!(state, "SYN_SENT", "{peer}");
    assert_eq!(peer["address"], "192.0.2.2", "{peer}");
    assert_eq!(peer["port"], 0, "{peer}");
}
