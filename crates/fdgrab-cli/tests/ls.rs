//! `fdgrab ls` against a target that reports its own view of every fd it opened.

use fdgrab_testkit::{output_timeout, run_fdgrab, Target, TIMEOUT};
use serde_json::Value;
use std::process::Command;

/// The one process of a schema-2 document about a single pid.
fn only_process(doc: Value, pid: i32) -> Value {
    assert_eq!(doc["schema_version"], 2, "{doc}");
    let procs = doc["processes"].as_array().expect("processes array");
    assert_eq!(procs.len(), 1, "{doc}");
    let p = procs[0].clone();
    assert_eq!(p["pid"].as_i64(), Some(pid.into()));
    assert!(p["command"].is_string(), "{p}");
    p
}

fn ls_json(pid: i32) -> Value {
    let out = run_fdgrab(["ls", &pid.to_string(), "--json"]);
    assert!(
        out.status.success(),
        "ls failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = serde_json::from_slice(&out.stdout).expect("ls --json output is one JSON document");
    only_process(doc, pid)
}

/// `ls --json` with a system call made to fail by strace's fault injection
/// (`inject` is strace's `-e` argument), as on an older or sandboxed kernel.
fn ls_json_with_fault(pid: i32, inject: &str) -> Value {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-o", "/dev/null", "-e", inject])
        .arg(fdgrab_testkit::bin("fdgrab"))
        .args(["ls", &pid.to_string(), "--json"]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    only_process(
        serde_json::from_slice(&out.stdout).expect("ls --json output"),
        pid,
    )
}

fn entry(doc: &Value, fd: i64) -> &Value {
    doc["fds"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["fd"].as_i64() == Some(fd)))
        .unwrap_or_else(|| panic!("fd {fd} missing from ls --json"))
}

fn expected_type(r: &Value) -> &'static str {
    if r.get("memfd").is_some() {
        return "memfd";
    }
    match r["mode"].as_u64().unwrap_or(0) as u32 {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFCHR => "chr",
        libc::S_IFIFO => "pipe",
        libc::S_IFSOCK => "socket",
        _ => "anon",
    }
}

/// Every fd of the zoo, field by field: what `ls --json` sees from outside must be
/// what the target sees from inside.
fn assert_matches_report(t: &Target, doc: &Value) {
    assert_matches_report_with(t, doc, true);
}

/// `unix_peers`: whether the listing can know unix peer inodes (sock_diag only).
fn assert_matches_report_with(t: &Target, doc: &Value, unix_peers: bool) {
    assert_eq!(doc["pid"].as_i64(), Some(t.pid.into()));
    assert_eq!(
        doc["command"].as_str(),
        std::fs::read_to_string(format!("/proc/{}/comm", t.pid))
            .ok()
            .as_deref()
            .map(str::trim_end)
    );
    let reports = t.report["fds"].as_array().expect("report fds");
    assert!(reports.len() >= 25, "the zoo opened {} fds", reports.len());
    for r in reports {
        let fd = r["fd"].as_i64().expect("fd");
        let label = r["label"].as_str().unwrap_or("?");
        let e = entry(doc, fd);
        let ctx = format!("fd {fd} ({label}): ls says {e}\n target says {r}");
        assert_eq!(e["type"], expected_type(r), "type: {ctx}");
        assert_eq!(e["inode"], r["ino"], "inode: {ctx}");
        assert_eq!(e["dev"], r["dev"], "dev: {ctx}");
        let access = ["r", "w", "rw"][r["accmode"].as_u64().expect("accmode") as usize];
        assert_eq!(e["access"], access, "access: {ctx}");
        for flag in ["append", "nonblock", "cloexec"] {
            assert_eq!(e["flags"][flag], r[flag], "{flag}: {ctx}");
        }
        if !r["offset"].is_null() {
            assert_eq!(e["offset"], r["offset"], "offset: {ctx}");
        }
        match expected_type(r) {
            "file" | "memfd" => {
                assert_eq!(e["size"], r["size"], "size: {ctx}");
                let nlink = if label == "deleted" || expected_type(r) == "memfd" {
                    0
                } else {
                    1
                };
                assert_eq!(e["nlink"], nlink, "nlink: {ctx}");
            }
            _ => {}
        }
        if let Some(path) = r.get("path") {
            assert_eq!(&e["path"], path, "path: {ctx}");
        }
        assert_eq!(e["deleted"], label == "deleted", "deleted: {ctx}");
        if let Some(anon) = r.get("anon") {
            assert_eq!(&e["anon"], anon, "anon kind: {ctx}");
        }
        if let Some(name) = r.get("memfd") {
            assert_eq!(&e["memfd"], name, "memfd name: {ctx}");
        }
        if let Some(s) = r.get("socket") {
            let es = &e["socket"];
            for k in ["family", "type", "protocol", "state"] {
                assert_eq!(es[k], s[k], "socket {k}: {ctx}");
            }
            assert_eq!(
                endpoint_as_reported(&es["local"]),
                s["local"],
                "local address: {ctx}"
            );
            assert_eq!(
                endpoint_as_reported(&es["peer"]),
                s["peer"],
                "peer address: {ctx}"
            );
            match s.get("peer_inode") {
                Some(peer) if unix_peers => {
                    assert_eq!(&es["peer_inode"], peer, "unix peer inode: {ctx}")
                }
                _ => assert!(es["peer_inode"].is_null(), "unix peer inode: {ctx}"),
            }
        }
    }
}

/// The exact bytes of a name field of `ls --json`: `NAME_bytes` when present, else
/// the string's UTF-8 (the documented round-trip rule of schema 2).
fn name_bytes(obj: &Value, field: &str) -> Option<Vec<u8>> {
    match obj.get(format!("{field}_bytes")) {
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|b| u8::try_from(b.as_u64().expect("byte")).expect("0-255"))
                .collect(),
        ),
        _ => obj[field].as_str().map(|s| s.as_bytes().to_vec()),
    }
}

/// A socket endpoint of `ls --json` in the target's own words: an abstract name
/// is "@name", and its `path_bytes` must hold the NUL-led bytes.
fn endpoint_as_reported(e: &Value) -> Value {
    let mut e = e.clone();
    if let Some(path) = e["path"].as_str().map(str::to_string) {
        let exact = name_bytes(&e, "path").expect("path");
        if let Some(name) = path.strip_prefix('@') {
            assert_eq!(
                exact,
                [b"\0", name.as_bytes()].concat(),
                "abstract name bytes"
            );
        } else {
            assert_eq!(exact, path.as_bytes());
        }
        e.as_object_mut().map(|o| o.remove("path_bytes"));
    }
    e
}

#[test]
fn ls_json_matches_the_targets_own_view() {
    let t = Target::spawn(["zoo"]);
    let doc = ls_json(t.pid);
    assert_matches_report(&t, &doc);
    // The zoo leaves out kinds the kernel refuses it; say so rather than pass quietly.
    for kind in ["bpf", "io_uring"] {
        let present = t.report["fds"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["label"] == kind));
        if !present {
            fdgrab_testkit::skip(&format!(
                "the kernel refused to create a {kind} fd, so ls was not checked on one"
            ));
        }
    }
}

#[test]
fn ls_does_not_move_offsets() {
    let t = Target::spawn(["zoo"]);
    let file = t.fd_labelled("file");
    let memfd = t.fd_labelled("memfd");
    let before = (
        fdgrab_testkit::proc_offset(t.pid, file),
        fdgrab_testkit::proc_offset(t.pid, memfd),
    );
    for _ in 0..3 {
        ls_json(t.pid);
        run_fdgrab(["ls", &t.pid.to_string()]);
    }
    let after = (
        fdgrab_testkit::proc_offset(t.pid, file),
        fdgrab_testkit::proc_offset(t.pid, memfd),
    );
    assert_eq!(before, after);
    assert_eq!(before, (7, 3));
}

/// Sockets are resolved in the target's network namespace: a listener inside a
/// fresh netns is invisible in ours, yet `ls` reports it with its address and state,
/// and unix peers are found through a sock_diag socket made inside that namespace.
#[test]
fn ls_resolves_sockets_in_the_targets_netns() {
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "sh", "-c", "ip link set lo up && exec \"$0\" zoo"])
        .arg(fdgrab_testkit::bin("fdgrab-target"));
    let t = Target::spawn_cmd(cmd);
    let ours = std::fs::metadata("/proc/self/ns/net").expect("ns");
    let theirs = std::fs::metadata(format!("/proc/{}/ns/net", t.pid)).expect("ns");
    use std::os::unix::fs::MetadataExt;
    assert_ne!(ours.ino(), theirs.ino(), "target must be in its own netns");
    let doc = ls_json(t.pid);
    assert_matches_report(&t, &doc);
    // And the listener is really not in our namespace's table (matched by inode,
    // since a port number may well be in use in both namespaces).
    let ino = t.fd_report(t.fd_labelled("tcp-listen").into())["ino"]
        .as_u64()
        .expect("ino");
    let ours_tcp = std::fs::read_to_string("/proc/self/net/tcp").expect("tcp");
    let ino = ino.to_string();
    let visible = ours_tcp
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(9) == Some(ino.as_str()));
    assert!(!visible, "listener unexpectedly visible in our netns");
}

#[test]
fn ls_table_reads_like_lsof() {
    let t = Target::spawn(["zoo"]);
    let out = run_fdgrab(["ls", &t.pid.to_string()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    let header = text.lines().next().expect("header");
    for col in ["FD", "TYPE", "DEVICE", "SIZE/OFF", "NODE", "NAME"] {
        assert!(header.contains(col), "{header}");
    }
    let line_for = |label: &str| {
        let fd = t.fd_labelled(label);
        text.lines()
            .find(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|c| c.trim_end_matches(['r', 'w', 'u']) == fd.to_string())
            })
            .unwrap_or_else(|| panic!("no row for {label}:\n{text}"))
            .to_string()
    };
    assert!(line_for("deleted").ends_with("(deleted)"));
    assert!(line_for("tcp-listen").contains("(LISTEN)"));
    assert!(line_for("tcp-client").contains("->127.0.0.1:"));
    assert!(line_for("memfd").contains("memfd:zoo-memfd"));
    assert!(line_for("eventfd").contains("eventfd"));
    assert!(line_for("unix-pair-a").contains("->INO="));
}

#[test]
fn ls_selected_fds_and_missing_fd() {
    let t = Target::spawn(["zoo"]);
    let fd = t.fd_labelled("pipe-r").to_string();
    let out = run_fdgrab(["ls", &t.pid.to_string(), "--fd", &fd, "--json"]);
    assert!(out.status.success());
    let doc = only_process(serde_json::from_slice(&out.stdout).expect("json"), t.pid);
    assert_eq!(doc["fds"].as_array().map(Vec::len), Some(1));
    assert_eq!(doc["fds"][0]["fd"].as_i64(), Some(fd.parse().expect("fd")));
    let out = run_fdgrab(["ls", &t.pid.to_string(), "--fd", "0,777"]);
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("777") && err.contains(&t.pid.to_string()),
        "{err}"
    );
}

#[test]
fn ls_works_for_plain_sleep_and_python() {
    let mut sleep = Command::new("sleep").arg("30").spawn().expect("sleep");
    let out = output_timeout(
        fdgrab_testkit::fdgrab().args(["ls", &sleep.id().to_string(), "--json"]),
        TIMEOUT,
    );
    assert!(out.status.success());
    let doc = only_process(
        serde_json::from_slice(&out.stdout).expect("json"),
        sleep.id() as i32,
    );
    assert_eq!(doc["command"], "sleep");
    assert!(doc["fds"]
        .as_array()
        .is_some_and(|a| a.iter().any(|e| e["fd"] == 0)));
    let _ = sleep.kill();
    let _ = sleep.wait();

    // A python3 process with a listening socket and an open file.
    let mut py = Command::new("python3");
    py.args([
        "-c",
        "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\n\
         print('{\"port\": %d}' % s.getsockname()[1], flush=True)\nsys.stdin.read()",
    ]);
    let t = Target::spawn_cmd(py);
    let port = t.report["port"].as_u64().expect("port");
    let doc = ls_json(t.pid);
    let listener = doc["fds"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| e["socket"]["local"]["port"].as_u64() == Some(port))
        })
        .expect("python's listener in ls");
    assert_eq!(listener["socket"]["state"], "LISTEN");
    assert_eq!(listener["socket"]["local"]["address"], "127.0.0.1");
}

#[test]
fn ls_of_a_process_whose_leader_exited() {
    let t = Target::spawn(["leader-exit"]);
    fdgrab_testkit::wait_leader_zombie(t.pid);
    let doc = ls_json(t.pid);
    for label in ["pipe-r", "pipe-w"] {
        let fd = t.fd_labelled(label);
        assert_eq!(
            entry(&doc, fd.into())["inode"],
            t.fd_report(fd.into())["ino"],
            "{label}"
        );
    }
}

/// `process` comes from PIDFD_GET_INFO; with the ioctl failing as on a kernel
/// before 6.13 (ENOTTY, injected by strace), /proc gives the same answer.
#[test]
fn ls_process_info_with_and_without_pidfd_get_info() {
    let t = Target::spawn(["zoo"]);
    let doc = ls_json(t.pid);
    let p = &doc["process"];
    assert_eq!(p["source"], "ioctl");
    assert_eq!(p["pid"].as_i64(), Some(t.pid.into()));
    assert_eq!(p["ppid"].as_u64(), Some(std::process::id().into()));
    let fallback = ls_json_with_fault(t.pid, "inject=ioctl:error=ENOTTY");
    let q = &fallback["process"];
    assert_eq!(q["source"], "procfs");
    for k in ["pid", "tgid", "ppid", "uids", "gids", "cgroup_id"] {
        assert_eq!(p[k], q[k], "{k}");
    }
}

/// An unprivileged user lists its own processes in full, and is refused (exit 4)
/// for root's.
#[test]
fn ls_as_an_unprivileged_user() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(fdgrab_testkit::bin("fdgrab-target"));
    cmd.arg("zoo").uid(65534).gid(65534);
    let t = Target::spawn_cmd(cmd);
    let mut ls = fdgrab_testkit::fdgrab();
    ls.args(["ls", &t.pid.to_string(), "--json"])
        .uid(65534)
        .gid(65534);
    let out = output_timeout(&mut ls, TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = only_process(serde_json::from_slice(&out.stdout).expect("json"), t.pid);
    assert_matches_report(&t, &doc);

    let root = Target::spawn(["zoo"]);
    let mut ls = fdgrab_testkit::fdgrab();
    ls.args(["ls", &root.pid.to_string()]).uid(65534).gid(65534);
    let out = output_timeout(&mut ls, TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&root.pid.to_string()));
}

/// Without sock_diag (socket() refused, as in a sandbox or without CAP_SYS_ADMIN over
/// a foreign netns) the sockets come from /proc/PID/net, the same in every field
/// but unix peers, which only sock_diag reports.
#[test]
fn ls_without_sock_diag_reads_proc_net() {
    let t = Target::spawn(["zoo"]);
    let doc = ls_json_with_fault(t.pid, "inject=socket:error=EPERM");
    assert_matches_report_with(&t, &doc, false);
}

/// Several processes in one run share one socket table per network namespace
/// (whole-namespace dumps rather than the per-socket lookups of a single pid): two
/// zoos, one in a fresh netns, each still matches its own report field by field.
#[test]
fn ls_of_several_pids_matches_each_targets_own_view() {
    let here = Target::spawn(["zoo"]);
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "sh", "-c", "ip link set lo up && exec \"$0\" zoo"])
        .arg(fdgrab_testkit::bin("fdgrab-target"));
    let there = Target::spawn_cmd(cmd);
    let out = run_fdgrab([
        "ls",
        &here.pid.to_string(),
        &there.pid.to_string(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["schema_version"], 2);
    let procs = doc["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), 2);
    for t in [&here, &there] {
        let p = procs
            .iter()
            .find(|p| p["pid"].as_i64() == Some(t.pid.into()))
            .unwrap_or_else(|| panic!("{} missing", t.pid));
        assert_matches_report(t, p);
    }
}

/// Pay only for what is asked: a process holding no socket costs no netlink socket
/// at all, and one holding a unix pair is answered by exact lookups by inode (no
/// dump of the host's unix sockets). Seen through strace.
#[test]
fn ls_asks_the_kernel_only_about_sockets_the_target_holds() {
    let trace = |pid: u32| {
        let log = std::env::temp_dir().join(format!("fdgrab-ls-trace-{pid}"));
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-e", "trace=socket,sendto", "-o"])
            .arg(&log)
            .arg(fdgrab_testkit::bin("fdgrab"))
            .args(["ls", &pid.to_string()]);
        let out = output_timeout(&mut cmd, TIMEOUT);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&log).expect("strace log");
        let _ = std::fs::remove_file(&log);
        text
    };
    let mut sleep = Command::new("sleep").arg("30").spawn().expect("sleep");
    let text = trace(sleep.id());
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert!(
        !text.contains("AF_NETLINK"),
        "netlink used for a process without sockets:\n{text}"
    );

    let pair = Target::spawn_cmd({
        let mut py = Command::new("python3");
        py.args([
            "-c",
            "import socket,sys\na,b=socket.socketpair()\nprint('{}', flush=True)\nsys.stdin.read()",
        ]);
        py
    });
    let text = trace(pair.pid as u32);
    // A unix_diag request is 40 bytes (an inet_diag one 72); strace decodes the
    // first message on a socket before it knows the protocol, so match the length.
    let unix_requests: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("sendto(") && l.contains("nlmsg_len=40"))
        .collect();
    assert_eq!(unix_requests.len(), 2, "one lookup per socket:\n{text}");
    for l in unix_requests {
        assert!(
            !l.contains("NLM_F_DUMP") && !l.contains("0x300"),
            "a dump: {l}"
        );
    }
}

/// A table large enough to be read on several threads, with the socket tables read
/// meanwhile: every socket is resolved, the same as when the process is listed
/// among others (one shared table per namespace, read after the fds).
#[test]
fn ls_of_a_large_table_resolves_every_socket() {
    let t = Target::spawn(["many", "800"]);
    let alone = ls_json(t.pid);
    let fds = alone["fds"].as_array().expect("fds");
    assert!(fds.len() >= 800, "{} fds", fds.len());
    let sockets: Vec<&Value> = fds.iter().filter(|e| e["type"] == "socket").collect();
    assert!(sockets.len() > 200, "{} sockets", sockets.len());
    for e in &sockets {
        let s = &e["socket"];
        assert!(
            ["inet", "unix"].contains(&s["family"].as_str().unwrap_or("")) && !s["state"].is_null(),
            "unresolved: {e}"
        );
    }
    let me = std::process::id().to_string();
    let out = run_fdgrab(["ls", &t.pid.to_string(), &me, "--json"]);
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    let shared = doc["processes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["pid"].as_i64() == Some(t.pid.into())))
        .expect("target listed");
    assert_eq!(shared["fds"], alone["fds"]);
}

/// A python3 process running `script`, which prints one JSON line when ready.
fn python_target(script: &str) -> Target {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    Target::spawn_cmd(cmd)
}

/// The fd numbers in `/proc/PID/fd`, ascending: the truth for an idle target.
fn proc_fd_numbers(pid: i32) -> Vec<i64> {
    let mut v: Vec<i64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// The FD column of a one-process `ls` table (the number without its mode
/// letter), row by row.
fn table_fd_numbers(stdout: &[u8]) -> Vec<i64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fd = l.split_whitespace().next()?;
            fd.trim_end_matches(['r', 'w', 'u']).parse().ok()
        })
        .collect()
}

/// The fd numbers of a process's entry in an `ls --json` document, in order.
fn fd_numbers(doc: &Value) -> Vec<i64> {
    doc["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .map(|e| e["fd"].as_i64().expect("fd"))
        .collect()
}

/// A large table with holes and one far-away fd: on Linux 6.2+ (which gives the
/// count as the size of /proc/PID/fd) the readers list it range by range, skip the
/// empty stretch, and must still find every fd exactly once, in order; `--fd` picks
/// from it as from a small one.
#[test]
fn ls_of_a_large_sparse_table_lists_every_fd_once() {
    const SPARSE: &str = r#"
import json, os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
top = min(hard, 70000)
resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(900)]
for fd in fds[::3]:
    os.close(fd)
far = os.dup2(fds[1], top - 1)
print(json.dumps({"far": far}), flush=True)
sys.stdin.read()
"#;
    let t = python_target(SPARSE);
    let far = t.report["far"].as_i64().expect("far");
    let truth = proc_fd_numbers(t.pid);
    assert!(truth.len() > 600 && truth.contains(&far), "{}", truth.len());
    let doc = ls_json(t.pid);
    assert_eq!(fd_numbers(&doc), truth);
    let pick = format!("{},{far}", truth[truth.len() / 2]);
    let out = run_fdgrab(["ls", &t.pid.to_string(), "--fd", &pick, "--json"]);
    let doc = only_process(serde_json::from_slice(&out.stdout).expect("json"), t.pid);
    assert_eq!(fd_numbers(&doc), [truth[truth.len() / 2], far]);
}

/// One listening socket behind 2,100 fds (dup): a table this large is read in
/// blocks on several threads and formatted on several, and every copy of the
/// socket, not just the first, gets its details.
#[test]
fn ls_of_a_socket_held_by_thousands_of_fds() {
    const DUPS: &str = r#"
import json, os, resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
dups = [os.dup(l.fileno()) for _ in range(2100)]
print(json.dumps({"port": l.getsockname()[1], "ino": os.fstat(l.fileno()).st_ino}), flush=True)
sys.stdin.read()
"#;
    let t = python_target(DUPS);
    let port = t.report["port"].as_u64().expect("port");
    let ino = t.report["ino"].as_u64().expect("ino");
    let doc = ls_json(t.pid);
    let copies: Vec<&Value> = doc["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .filter(|e| e["inode"].as_u64() == Some(ino))
        .collect();
    assert_eq!(copies.len(), 2101);
    for e in &copies {
        assert_eq!(e["socket"]["state"], "LISTEN", "{e}");
        assert_eq!(e["socket"]["local"]["port"].as_u64(), Some(port), "{e}");
    }
    // The table: one line per fd, in fd order, each copy described.
    let out = run_fdgrab(["ls", &t.pid.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.lines().skip(1).collect();
    let fds_in_table = table_fd_numbers(&out.stdout);
    assert_eq!(fds_in_table, fd_numbers(&doc));
    let listening = format!("127.0.0.1:{port} (LISTEN)");
    assert_eq!(
        rows.iter().filter(|l| l.ends_with(&listening)).count(),
        2101
    );
}

/// The `many` target's files go away with it: when the test kills it (dropping
/// its `Target`) and when it ends on its own at EOF on stdin.
#[test]
fn the_many_target_leaves_no_files_behind() {
    let killed = Target::spawn(["many", "40"]);
    let dir = std::path::PathBuf::from(killed.report["dir"].as_str().expect("dir"));
    assert!(dir.is_dir());
    drop(killed);
    assert!(!dir.exists(), "{} left behind", dir.display());

    let mut ended = Target::spawn(["many", "40"]);
    let dir = std::path::PathBuf::from(ended.report["dir"].as_str().expect("dir"));
    drop(ended.stdin.take());
    let deadline = std::time::Instant::now() + TIMEOUT;
    while ended.child.try_wait().expect("wait").is_none() {
        assert!(std::time::Instant::now() < deadline, "target did not end");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// Tables of exactly 255 to 258 fds (the 256 at which the listing switches to
/// ranges read on several threads) and 2,047 to 2,049 (the 2,048 rows from which
/// the table is formatted on every core): the JSON gives exactly /proc's fds, and
/// the table one row per fd, in the same order.
#[test]
fn ls_at_the_sizes_where_the_listing_changes_strategy() {
    const SIZED: &str = r#"
import json, os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
held = []
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    want = int(line)
    while True:
        have = len(os.listdir("/proc/self/fd")) - 1  # listdir's own fd
        if have < want:
            held.append(os.open("/dev/null", os.O_RDONLY))
        elif have > want:
            os.close(held.pop())
        else:
            break
    print(have, flush=True)
"#;
    let mut t = python_target(SIZED);
    for size in [255usize, 256, 257, 258, 2047, 2048, 2049] {
        use std::io::Write;
        let stdin = t.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{size}").expect("ask for a size");
        stdin.flush().expect("flush");
        let line = fdgrab_testkit::read_line_timeout(t.stdout.as_mut().expect("stdout"), TIMEOUT)
            .expect("size reached");
        assert_eq!(line.trim(), size.to_string());
        let truth = proc_fd_numbers(t.pid);
        assert_eq!(truth.len(), size);
        let doc = ls_json(t.pid);
        assert_eq!(fd_numbers(&doc), truth, "{size} fds");
        let out = run_fdgrab(["ls", &t.pid.to_string()]);
        assert!(out.status.success());
        assert_eq!(table_fd_numbers(&out.stdout), truth, "table of {size} fds");
    }
}

/// MPTCP sockets (IPPROTO_MPTCP, 262: what Go servers listen with by default
/// since 1.24 where the kernel allows it): a listener on IPv4, one on IPv6 and
/// a connection on each. The kernel describes them through their TCP subflows,
/// which carry the socket's inode; reports each fd with its own view.
const MPTCP: &str = r#"
import json, socket, sys
try:
    l4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    l6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, 262)
except OSError as e:
    print(json.dumps({"refused": str(e)}), flush=True); sys.stdin.read(); sys.exit()
l6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
l4.bind(("127.0.0.1", 0)); l4.listen(); l6.bind(("::1", 0)); l6.listen()
c4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262); c4.connect(l4.getsockname())
c6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, 262); c6.connect(l6.getsockname()[:2])
a4, _ = l4.accept(); a6, _ = l6.accept()
fds = []
for s, state in [(l4, "LISTEN"), (l6, "LISTEN"), (c4, "ESTABLISHED"), (c6, "ESTABLISHED"),
                 (a4, "ESTABLISHED"), (a6, "ESTABLISHED")]:
    peer = s.getpeername()[1] if state != "LISTEN" else None
    fds.append({"fd": s.fileno(), "state": state, "local": s.getsockname()[1], "peer": peer})
print(json.dumps({"fds": fds}), flush=True)
sys.stdin.read()
"#;

/// `ls PID` describes MPTCP sockets as lsof and ss do, by their TCP subflows:
/// state and both ports as the process sees them (it showed them as `unknown
/// mptcp`, with no address, while `--port` found them), and `--port` finds
/// each by its port.
#[test]
fn mptcp_sockets_are_described_by_their_subflows() {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(MPTCP);
    let t = Target::spawn_cmd(cmd);
    if let Some(why) = t.report["refused"].as_str() {
        fdgrab_testkit::skip(&format!("no MPTCP socket here: {why}"));
        return;
    }
    let doc = ls_json(t.pid);
    let want = t.report["fds"].as_array().expect("fds");
    for w in want {
        let e = entry(&doc, w["fd"].as_i64().expect("fd"));
        assert_eq!(e["type"], "socket", "{e}");
        let s = &e["socket"];
        assert_eq!(s["protocol"], "tcp", "{e}");
        assert_eq!(s["state"], w["state"], "{e}");
        assert_eq!(s["local"]["port"], w["local"], "{e}");
        assert_eq!(s["peer"]["port"], w["peer"], "{e}");
    }
    let pid = t.pid.to_string();
    for w in want.iter().filter(|w| w["state"] == "LISTEN") {
        let port = w["local"].to_string();
        let out = run_fdgrab(["ls", &pid, "--port", &port, "--json"]);
        let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let fds = only_process(doc, t.pid)["fds"].clone();
        let n = fds.as_array().map_or(0, Vec::len);
        assert_eq!(n, 3, "listener, client and accepted on {port}: {fds}");
    }
}
