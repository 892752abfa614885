//! `fdgrab ls` against inputs its authors did not try: names that imitate the
//! kernel's own decorations, and command lines that repeat themselves.

use fdgrab_testkit::{output_timeout, Target, TIMEOUT};
use serde_json::Value;
use std::process::Command;

/// Opens each path given (creating it) and reports fd and inode, then waits.
const HOLDER: &str = r#"
import json, os, sys
fds = []
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    fds.append({"fd": fd, "ino": os.fstat(fd).st_ino})
print(json.dumps({"fds": fds}), flush=True)
sys.stdin.read()
"#;

/// A shell holding `path` open for reading on fd 3, then waiting (as `cat`).
fn holds_on_fd_3(path: &str) -> Target {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "exec 3<\"$0\"; echo '{}'; exec cat", path]);
    Target::spawn_cmd(cmd)
}

fn holder(paths: &[&str]) -> Target {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(HOLDER).args(paths);
    Target::spawn_cmd(cmd)
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fdgrab-lsa-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn ls_json(args: &[&str]) -> Value {
    ls_json_filtered(None, None, args)
}

/// A live file whose name ends in " (deleted)" is not deleted: the kernel adds
/// that suffix to unlinked files' links, but a name may carry it too. lsof +L1
/// (link count 0) does not list it, its path keeps the suffix, and a file that
/// really is deleted next to it is still found.
#[test]
fn a_live_file_named_like_a_deleted_one_is_not_deleted() {
    let dir = temp_dir("suffix");
    let live = dir.join("app.log (deleted)");
    let gone = dir.join("gone.log");
    let (l, g) = (live.to_str().expect("utf8"), gone.to_str().expect("utf8"));
    let t = holder(&[l, g]);
    std::fs::remove_file(&gone).expect("unlink");
    let fd = |i: usize| t.report["fds"][i]["fd"].as_i64().expect("fd");
    let pid = t.pid.to_string();

    let doc = ls_json(&[&pid, "--fd", &fd(0).to_string()]);
    let e = &doc["processes"][0]["fds"][0];
    assert_eq!(e["deleted"], false, "{e}");
    assert_eq!(e["nlink"], 1, "{e}");
    assert_eq!(e["path"], l, "{e}");

    let doc = ls_json(&[&pid, "--deleted"]);
    let fds: Vec<i64> = doc["processes"][0]["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .map(|e| e["fd"].as_i64().expect("fd"))
        .collect();
    assert_eq!(fds, [fd(1)], "only the unlinked file: {doc}");
    let e = &doc["processes"][0]["fds"][0];
    assert_eq!((&e["deleted"], &e["path"]), (&Value::Bool(true), &g.into()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pid named twice is listed once, in the table, in JSON and in --pids
/// (as lsof -p does).
#[test]
fn a_pid_named_twice_is_listed_once() {
    let dir = temp_dir("twice");
    let f = dir.join("f");
    let t = holder(&[f.to_str().expect("utf8")]);
    let pid = t.pid.to_string();
    let fd = t.report["fds"][0]["fd"].as_i64().expect("fd").to_string();
    let doc = ls_json(&[&pid, &pid, "--fd", &fd]);
    let pids: Vec<&Value> = doc["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .map(|p| &p["pid"])
        .collect();
    assert_eq!(pids, [&Value::from(t.pid)], "{doc}");
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.args(["ls", &pid, &pid, "--fd", &fd]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.lines().count(), 2, "header and one row:\n{table}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--path` on a unix socket's name finds the socket bound to it and the
/// connections accepted on it, as lsof and fuser do (the fds refer to sockfs
/// inodes, never to the name's inode, so comparing stats alone finds nothing).
/// The client's end is not bound to the name and is left out, as lsof does.
#[test]
fn path_of_a_unix_socket_finds_its_listener_and_accepted_connections() {
    let dir = temp_dir("usock");
    let sock = dir.join("app.sock");
    let s = sock.to_str().expect("utf8");
    let server = r#"
import json, os, socket, sys
l = socket.socket(socket.AF_UNIX); l.bind(sys.argv[1]); l.listen()
print(json.dumps({"listen": l.fileno()}), flush=True)
a, _ = l.accept()
print(json.dumps({"accepted": a.fileno()}), flush=True)
sys.stdin.read()
"#;
    let client = r#"
import json, os, socket, sys
c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1])
print(json.dumps({"client": c.fileno()}), flush=True)
sys.stdin.read()
"#;
    let py = |script: &str| {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).arg(s);
        Target::spawn_cmd(cmd)
    };
    let mut srv = py(server);
    let cli = py(client);
    let accepted: Value = serde_json::from_str(&srv.next_line()).expect("accepted");
    let doc = ls_json(&["--path", s]);
    let mut found: Vec<(i64, i64)> = Vec::new();
    for p in doc["processes"].as_array().expect("processes") {
        for e in p["fds"].as_array().expect("fds") {
            found.push((
                p["pid"].as_i64().expect("pid"),
                e["fd"].as_i64().expect("fd"),
            ));
            assert_eq!(e["socket"]["local"]["path"], s, "{e}");
        }
    }
    found.sort_unstable();
    let srv_pid = i64::from(srv.pid);
    assert_eq!(
        found,
        [
            (srv_pid, srv.report["listen"].as_i64().expect("fd")),
            (srv_pid, accepted["accepted"].as_i64().expect("fd")),
        ],
        "{doc}"
    );
    // fuser agrees on the holders.
    let out = output_timeout(Command::new("fuser").arg(s), TIMEOUT);
    let fuser: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(fuser, [srv_pid]);
    drop(cli);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With one PID, `--fd N` for an fd the process does not have is exit 5 whether
/// or not another requested fd exists; and an fd that exists but is filtered out
/// by another filter is not "missing" (nothing printed, exit 0).
#[test]
fn a_missing_fd_is_an_error_alone_and_a_filtered_one_is_not() {
    let dir = temp_dir("missing-fd");
    let f = dir.join("f");
    let t = holder(&[f.to_str().expect("utf8")]);
    let pid = t.pid.to_string();
    let fd = t.report["fds"][0]["fd"].as_i64().expect("fd").to_string();
    let run = |args: &[&str]| {
        let mut cmd = fdgrab_testkit::fdgrab();
        cmd.arg("ls").arg(&pid).args(args);
        output_timeout(&mut cmd, TIMEOUT)
    };
    for missing in [
        &["--fd", "777"][..],
        &["--fd", "777", "--json"],
        &["--fd", "777", "--pids"],
    ] {
        let out = run(missing);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{missing:?}: {err}");
        assert!(err.contains("777") && err.contains(&pid), "{err}");
    }
    // The file is there but is not a socket: filtered, not missing.
    let out = run(&["--fd", &fd, "--type", "socket"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let out = run(&["--fd", &format!("0,{fd}"), "--type", "file"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--deleted` is `lsof +L1`: files with no name left. A file whose opened name
/// was removed but which keeps another hard link still has a name: its fd says
/// `deleted` (the name it was opened by is gone) with link count 1, and
/// `--deleted` leaves it out, as lsof +L1 does.
#[test]
fn deleted_leaves_out_a_file_that_keeps_another_link() {
    let dir = temp_dir("hardlink");
    let opened = dir.join("opened");
    let other = dir.join("other");
    let t = holder(&[opened.to_str().expect("utf8")]);
    std::fs::hard_link(&opened, &other).expect("link");
    std::fs::remove_file(&opened).expect("unlink");
    let pid = t.pid.to_string();
    let doc = ls_json(&[&pid, "--fd", &t.report["fds"][0]["fd"].to_string()]);
    let e = &doc["processes"][0]["fds"][0];
    assert_eq!(
        (&e["deleted"], &e["nlink"]),
        (&Value::Bool(true), &Value::from(1)),
        "{e}"
    );
    let doc = ls_json(&[&pid, "--deleted"]);
    assert_eq!(doc["processes"], Value::Array(Vec::new()), "{doc}");
    let lsof = output_timeout(
        Command::new("lsof").args(["-n", "-a", "+L1", "-p", &pid]),
        TIMEOUT,
    );
    assert!(
        !String::from_utf8_lossy(&lsof.stdout).contains("opened"),
        "lsof +L1 lists it after all: {}",
        String::from_utf8_lossy(&lsof.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Holds, in DIR, every kind of inode that can lose its last name while open:
/// an O_TMPFILE file (never had one), a deleted file, a removed directory, a
/// removed FIFO, a memfd; and two that keep a name: a file whose opened name
/// was removed but which has another hard link, and a live file. Reports which
/// fds are unlinked.
const UNLINKED_KINDS: &str = r#"
import json, os, sys
d = sys.argv[1]
t = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600); os.write(t, b"tmp")
open(d + "/gone", "w").write("gone"); g = os.open(d + "/gone", os.O_RDONLY); os.unlink(d + "/gone")
os.mkdir(d + "/dir"); r = os.open(d + "/dir", os.O_RDONLY | os.O_DIRECTORY); os.rmdir(d + "/dir")
os.mkfifo(d + "/fifo"); f = os.open(d + "/fifo", os.O_RDWR); os.unlink(d + "/fifo")
m = os.memfd_create("kinds")
open(d + "/a", "w").write("a"); os.link(d + "/a", d + "/b"); h = os.open(d + "/a", os.O_RDONLY); os.unlink(d + "/a")
live = os.open(d + "/b", os.O_RDONLY)
print(json.dumps({"unlinked": sorted([t, g, r, f, m]), "named": [h, live]}), flush=True)
sys.stdin.read()
"#;

/// `--deleted` finds every kind of unlinked inode lsof +L1 finds (an O_TMPFILE
/// file, a deleted file, a removed directory and FIFO, a memfd) and no inode
/// that still has a name, on the same fds as lsof.
#[test]
fn deleted_finds_every_unlinked_kind_as_lsof_does() {
    let dir = temp_dir("kinds");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(UNLINKED_KINDS).arg(&dir);
    let t = Target::spawn_cmd(cmd);
    let pid = t.pid.to_string();
    let want: Vec<i64> = t.report["unlinked"]
        .as_array()
        .expect("unlinked")
        .iter()
        .map(|v| v.as_i64().expect("fd"))
        .collect();
    let doc = ls_json(&[&pid, "--deleted"]);
    let found: Vec<i64> = doc["processes"][0]["fds"]
        .as_array()
        .map(|a| a.iter().map(|e| e["fd"].as_i64().expect("fd")).collect())
        .unwrap_or_default();
    assert_eq!(found, want, "{doc}");
    for e in doc["processes"][0]["fds"].as_array().expect("fds") {
        assert_eq!(e["nlink"], 0, "{e}");
    }
    // lsof +L1 -F f: one "fN" line per fd (and "fcwd", "ftxt" and the like).
    let lsof = output_timeout(
        Command::new("lsof").args(["-n", "-a", "+L1", "-p", &pid, "-F", "f"]),
        TIMEOUT,
    );
    let theirs: Vec<i64> = String::from_utf8_lossy(&lsof.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix('f')?.parse().ok())
        .collect();
    assert_eq!(theirs, want, "lsof +L1 disagrees");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Renames itself (PR_SET_NAME) to the bytes given in hex, then reports its
/// own /proc/self/comm as bytes.
const NAMED: &str = r#"
import ctypes, json, sys
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0)
comm = open("/proc/self/comm", "rb").read().rstrip(b"\n")
print(json.dumps({"comm": list(comm)}), flush=True)
sys.stdin.read()
"#;

/// Command names a process can give itself: a newline, bytes that are not
/// UTF-8, and 16 bytes (the kernel keeps 15). JSON gives each exactly (the
/// string, or `command_bytes` when it is not UTF-8), and the table keeps every
/// fd on one line with the name escaped.
#[test]
fn hostile_command_names_are_exact_in_json_and_escaped_in_the_table() {
    let names = ["610a62", "ff61fe62", "4142434445464748494a4b4c4d4e4f50"];
    let targets: Vec<Target> = names
        .iter()
        .map(|hex| {
            let mut cmd = Command::new("python3");
            cmd.arg("-c").arg(NAMED).arg(hex);
            Target::spawn_cmd(cmd)
        })
        .collect();
    let pids: Vec<String> = targets.iter().map(|t| t.pid.to_string()).collect();
    let mut args: Vec<&str> = pids.iter().map(String::as_str).collect();
    args.extend(["--fd", "0"]);
    let doc = ls_json(&args);
    let procs = doc["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), targets.len(), "{doc}");
    for t in &targets {
        let comm: Vec<u8> = t.report["comm"]
            .as_array()
            .expect("comm")
            .iter()
            .map(|b| b.as_u64().expect("byte") as u8)
            .collect();
        let p = procs.iter().find(|p| p["pid"] == t.pid).expect("listed");
        let exact: Vec<u8> = match p.get("command_bytes") {
            Some(b) => b
                .as_array()
                .expect("bytes")
                .iter()
                .map(|b| b.as_u64().expect("byte") as u8)
                .collect(),
            None => p["command"].as_str().expect("command").as_bytes().to_vec(),
        };
        assert_eq!(exact, comm, "{p}");
    }
    assert_eq!(targets[2].report["comm"].as_array().map(Vec::len), Some(15));
    let out = output_timeout(fdgrab_testkit::fdgrab().arg("ls").args(&args), TIMEOUT);
    let table = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), targets.len(), "{table}");
    for (t, want) in targets
        .iter()
        .zip(["a\\nb", "\\xffa\\xfeb", "ABCDEFGHIJKLMNO"])
    {
        let pid = t.pid.to_string();
        let cells = rows
            .iter()
            .map(|r| r.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.get(1) == Some(&pid.as_str()));
        assert_eq!(
            cells.and_then(|c| c.first().copied()),
            Some(want),
            "{table}"
        );
    }
}

/// A unix socket bound to the relative path `@name` is not the abstract socket
/// `@name`: the table shows the abstract one's NUL as `@` (as ss and lsof do), so
/// the path's own `@` is escaped, and JSON keeps the two apart by `path_bytes`.
#[test]
fn a_socket_path_starting_with_at_is_not_shown_as_abstract() {
    let dir = temp_dir("at");
    let name = format!("fdgrab-lsa-at-{}", std::process::id());
    let script = r#"
import json, os, socket, sys
os.chdir(sys.argv[1])
a = socket.socket(socket.AF_UNIX); a.bind(b"\0" + sys.argv[2].encode()); a.listen()
p = socket.socket(socket.AF_UNIX); p.bind(b"@" + sys.argv[2].encode()); p.listen()
print(json.dumps({"abstract": a.fileno(), "path": p.fileno()}), flush=True)
sys.stdin.read()
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .arg(dir.to_str().expect("utf8"))
        .arg(&name);
    let t = Target::spawn_cmd(cmd);
    let fd = |k: &str| t.report[k].as_i64().expect("fd").to_string();
    let row = |fd: &str| {
        let mut cmd = fdgrab_testkit::fdgrab();
        cmd.args(["ls", &t.pid.to_string(), "--fd", fd]);
        let out = output_timeout(&mut cmd, TIMEOUT);
        assert!(out.status.success());
        let table = String::from_utf8(out.stdout).expect("utf8");
        table.lines().nth(1).expect("one row").to_string()
    };
    let (abstract_row, path_row) = (row(&fd("abstract")), row(&fd("path")));
    assert!(
        abstract_row.contains(&format!(" @{name} ")),
        "{abstract_row}"
    );
    assert!(path_row.contains(&format!(" \\x40{name} ")), "{path_row}");
    let doc = ls_json(&[&t.pid.to_string(), "--fd", &fd("path")]);
    let local = &doc["processes"][0]["fds"][0]["socket"]["local"];
    assert_eq!(local["path"], format!("@{name}"));
    assert!(local.get("path_bytes").is_none(), "{local}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same for a holder in a chroot: /proc/PID/fd/N reads relative to the
/// reader's root, not the holder's, so the name is checked from ours as well.
#[test]
fn a_live_file_named_like_a_deleted_one_in_a_chroot_is_not_deleted() {
    let dir = temp_dir("chroot");
    std::fs::create_dir_all(dir.join("bin")).expect("bin");
    // Debian's busybox is static: a chroot needs nothing else.
    std::fs::copy("/usr/bin/busybox", dir.join("bin/busybox")).expect("busybox");
    let mut cmd = Command::new("chroot");
    cmd.arg(&dir).args([
        "/bin/busybox",
        "sh",
        "-c",
        "exec 3<>'/app.log (deleted)'; echo '{}'; exec /bin/busybox cat",
    ]);
    let t = Target::spawn_cmd(cmd);
    let doc = ls_json(&[&t.pid.to_string(), "--fd", "3"]);
    let e = &doc["processes"][0]["fds"][0];
    let full = dir.join("app.log (deleted)");
    assert_eq!(e["deleted"], false, "{e}");
    assert_eq!(e["path"], full.to_str().expect("utf8"), "{e}");
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process whose thread-group leader exited has no /proc/PID/ns/net (the
/// leader is a zombie), yet its other threads still hold its sockets in their
/// network namespace. `ls PID` already lists through a live thread; `--port` and
/// `--listen` must find the listener the same way, here in a namespace of its own.
#[test]
fn port_and_listen_find_a_listener_whose_leader_exited() {
    let script = r#"
import ctypes, json, socket, threading, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
print(json.dumps({"port": l.getsockname()[1], "fd": l.fileno()}), flush=True)
threading.Thread(target=lambda: time.sleep(120)).start()
ctypes.CDLL(None).syscall(60, 0)  # exit(2): the leader thread alone
"#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "python3", "-c", script]);
    let t = Target::spawn_cmd(cmd);
    fdgrab_testkit::wait_leader_zombie(t.pid);
    let pid = t.pid.to_string();
    let port = t.report["port"].to_string();
    let fd = t.report["fd"].as_i64().expect("fd");
    for args in [
        vec![&pid[..], "--port", &port],
        vec!["--port", &port],
        vec![&pid[..], "--listen"],
    ] {
        let doc = ls_json(&args);
        let found = pid_fd_pairs(&doc);
        let ours = (i64::from(t.pid), fd);
        if args[0] == pid {
            assert_eq!(found, [ours], "ls {args:?}: {doc}");
        } else {
            // System-wide, another namespace may use the same port number.
            assert!(found.contains(&ours), "ls {args:?}: {doc}");
        }
    }
}

/// `fdgrab ls ARGS` as uid/gid 65534, with a timeout.
fn as_nobody(args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.arg("ls").args(args).uid(65534).gid(65534);
    output_timeout(&mut cmd, TIMEOUT)
}

/// setpriv options for uid 65534 without capabilities, and with one.
const NOBODY: &str = "--reuid=65534 --regid=65534 --clear-groups";
const CAPPED: &str = "--reuid=65534 --regid=65534 --clear-groups \
                      --inh-caps=+net_bind_service --ambient-caps=+net_bind_service";

/// A process of the caller's own uid that holds a capability the caller lacks: its
/// `/proc/PID/fd` directory opens and lists (same owner), but every link and stat
/// through it is refused (ptrace read access needs the caller's capabilities to
/// cover the target's). A narrowing query must report it as unreadable, as the
/// plain listing does, not pass it over as a process without a match.
#[test]
fn a_narrowing_query_reports_a_process_it_may_not_read() {
    let mut cmd = Command::new("setpriv");
    cmd.args(CAPPED.split(' '))
        .arg(fdgrab_testkit::bin("fdgrab-target"))
        .arg("zoo");
    let t = Target::spawn_cmd(cmd);
    let pid = t.pid.to_string();
    let file = t.report["fds"]
        .as_array()
        .and_then(|fds| fds.iter().find(|e| e["label"] == "file"))
        .and_then(|e| e["path"].as_str())
        .expect("the zoo's file")
        .to_string();
    let f = file.as_str();
    // The truth: the plain listing may not read it (4), and names it.
    let plain = as_nobody(&[&pid]);
    assert_eq!(plain.status.code(), Some(4), "{plain:?}");
    for filter in [
        &["--path", f][..],
        &["--deleted"],
        &["--port", "1"],
        &["--type", "file"],
    ] {
        let mut args = vec![&pid[..]];
        args.extend_from_slice(filter);
        args.push("--pids");
        let out = as_nobody(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "ls {args:?}: {err}");
        assert!(err.contains(&pid), "ls {args:?}: {err}");
    }
    // System-wide, in a pid namespace of its own so that the count is exact: its
    // init (root's sh) and the capable process are both skipped as unreadable.
    let script = format!(
        "setpriv {CAPPED} sleep 30 & sleep 0.3; \
         for q in '--port 1' '--deleted' '--path /dev/null'; do \
           setpriv {NOBODY} {fg} ls $q --pids; echo \"rc=$?\"; \
         done; kill $!",
        fg = fdgrab_testkit::bin("fdgrab").display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "sh", "-c", &script]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "rc=1\n".repeat(3),
        "{err}"
    );
    let want = "fdgrab: skipped 2 processes: 2 permission denied\n";
    assert_eq!(err, want.repeat(3));
    if let Some(dir) = t.report["dir"].as_str() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A zombie named on the command line has exited: `ls ZPID` says so (exit 5), and
/// a filter must not turn that into "nothing matched" (exit 1) or an empty success.
#[test]
fn a_named_zombie_is_no_such_process_with_or_without_a_filter() {
    let mut child = Command::new("true").spawn().expect("true");
    let pid = child.id().to_string();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .ok()
        .flatten()
        != Some(true)
    {
        assert!(std::time::Instant::now() < deadline, "no zombie");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let file = std::env::current_exe().expect("exe");
    let f = file.to_str().expect("utf8");
    for filter in [
        &[][..],
        &["--path", f],
        &["--deleted"],
        &["--port", "1"],
        &["--type", "file"],
        // Another user's: a quiet "no match" (status 0) before the fix.
        &["--user", "nobody"],
        &["--user", "root"],
    ] {
        for pids_only in [false, true] {
            let mut args = vec!["ls", &pid[..]];
            args.extend_from_slice(filter);
            if pids_only {
                args.push("--pids");
            }
            let out = output_timeout(fdgrab_testkit::fdgrab().args(&args), TIMEOUT);
            assert_eq!(out.status.code(), Some(5), "{args:?}: {out:?}");
            assert!(String::from_utf8_lossy(&out.stderr).contains(&pid[..]));
        }
    }
    child.wait().expect("reap");
}

/// `/proc` mounted with `hidepid=2` (in a mount namespace of its own) hides
/// root's processes from uid 65534: a named root process is alive, so `ls PID`
/// says the caller may not read it (exit 4, naming hidepid), not that it is gone
/// (exit 5), with or without a filter (`--user` too, which reads its status
/// first); the caller's own process is still listed,
/// and a system-wide query does not see the hidden one at all (as `ps`).
#[test]
fn a_process_hidden_by_hidepid_is_denied_not_gone() {
    let root = holder(&[]);
    let mut cmd = Command::new("setpriv");
    cmd.args(NOBODY.split(' ')).args(["sleep", "30"]);
    let mut own = cmd.spawn().expect("sleep as 65534");
    let script = format!(
        "mount -t proc -o hidepid=2 proc /proc || exit 99; \
         for q in '' '--path /dev/null' '--type chr --pids' '--user 0'; do \
           setpriv {NOBODY} {fg} ls {root} $q >/dev/null; echo \"rc=$?\"; \
         done; \
         setpriv {NOBODY} {fg} ls {own} --fd 0 --pids; \
         setpriv {NOBODY} {fg} ls --path /dev/null --pids 2>/dev/null",
        fg = fdgrab_testkit::bin("fdgrab").display(),
        root = root.pid,
        own = own.id(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    let _ = own.kill();
    let _ = own.wait();
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let mut lines = stdout.lines();
    for q in ["", "--path", "--type", "--user"] {
        assert_eq!(lines.next(), Some("rc=4"), "ls PID {q}: {stdout}{err}");
    }
    let own = own.id().to_string();
    assert_eq!(lines.next(), Some(own.as_str()), "{stdout}{err}");
    let rest: Vec<&str> = lines.collect();
    assert!(!rest.contains(&root.pid.to_string().as_str()), "{rest:?}");
    assert!(rest.contains(&own.as_str()), "{rest:?}");
    assert_eq!(err.matches("mounted with hidepid=2").count(), 4, "{err}");
}

/// A process with a second thread that reports the thread's id.
fn thread_reporter() -> Target {
    let script = r#"
import json, os, threading
ready = threading.Event()
def run():
    ready.set(); threading.Event().wait()
threading.Thread(target=run, daemon=True).start(); ready.wait()
tid = [int(t) for t in os.listdir("/proc/self/task") if int(t) != os.getpid()][0]
print(json.dumps({"tid": tid}), flush=True)
import sys; sys.stdin.read()
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    Target::spawn_cmd(cmd)
}

/// A thread of a process `/proc` hides (`hidepid=2`) is still refused as a
/// thread (exit 2), but its process cannot be named; the message then says
/// how to find it, not the library's "open it as a thread", which `ls` has
/// no way to do.
#[test]
fn a_hidden_thread_id_is_refused_with_advice_ls_can_follow() {
    let t = thread_reporter();
    let tid = t.report["tid"].as_i64().expect("tid");
    let script = format!(
        "mount -t proc -o hidepid=2 proc /proc || exit 99; setpriv {NOBODY} {fg} ls {tid}",
        fg = fdgrab_testkit::bin("fdgrab").display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("pid {tid} is a thread")), "{err}");
    assert!(!err.contains("open it as a thread"), "{err}");
    assert!(err.contains("hidepid"), "{err}");
}

/// A thread id is not a process: `ls TID` fails as a usage error (exit 2)
/// naming the process the thread belongs to, with or without a filter, and a
/// process named beside it is still listed.
#[test]
fn a_thread_id_is_refused_naming_its_process() {
    let t = thread_reporter();
    let tid = t.report["tid"].as_i64().expect("tid").to_string();
    let pid = t.pid.to_string();
    for args in [
        &["ls", &tid[..]][..],
        &["ls", &tid, "--path", "/dev/null", "--pids"],
        // With `--user` of another user it was a quiet "no match" (status 0).
        &["ls", &tid, "--user", "nobody"],
    ] {
        let out = output_timeout(fdgrab_testkit::fdgrab().args(args), TIMEOUT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let want = format!("pid {tid} is a thread of process {pid}");
        assert!(err.contains(&want), "{args:?}: {err}");
    }
    let out = output_timeout(
        fdgrab_testkit::fdgrab().args(["ls", &tid, &pid, "--pids"]),
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{pid}\n"));
}

/// A table that changes while it is read: two threads dup2 into the holes of a
/// sparse table and close them again, and now and then close_range a stretch,
/// growing and shrinking it across 128-fd block boundaries. Each listing must still
/// hold every fd that stayed open throughout, exactly once, in order (fds that
/// come and go may or may not appear).
#[test]
fn a_table_changing_during_the_listing_keeps_every_stable_fd_once() {
    const CHURN: &str = r#"
import json, os, random, resource, sys, threading
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
null = os.open("/dev/null", os.O_RDONLY)
stable = {null}
for b in range(1, 12):
    for n in (b * 128 - 1, b * 128, b * 128 + 1, b * 128 + 127):
        if n > null:
            stable.add(os.dup2(null, n))
stable.update(os.dup2(null, n) for n in range(300, 600, 2))
churn = [n for n in range(128, 2000) if n not in stable]
def spin(seed):
    r = random.Random(seed)
    while True:
        try: os.dup2(null, r.choice(churn))
        except OSError: pass
        try: os.close(r.choice(churn))
        except OSError: pass
        if r.random() < 0.001:
            os.closerange(1600, 2000)  # close_range(2); no stable fd there
for seed in (1, 2):
    threading.Thread(target=spin, args=(seed,), daemon=True).start()
print(json.dumps({"stable": sorted(stable)}), flush=True)
sys.stdin.read()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", CHURN]);
    let t = Target::spawn_cmd(cmd);
    let stable: Vec<i64> = t.report["stable"]
        .as_array()
        .expect("stable")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    let pid = t.pid.to_string();
    for round in 0..8 {
        let doc = ls_json(&[&pid]);
        let fds: Vec<i64> = doc["processes"][0]["fds"]
            .as_array()
            .expect("fds")
            .iter()
            .filter_map(|e| e["fd"].as_i64())
            .collect();
        // Above 256 fds the table is read range by range, on several threads.
        assert!(fds.len() > 256, "round {round}: only {} fds", fds.len());
        assert!(
            fds.windows(2).all(|w| w[0] < w[1]),
            "round {round}: order or duplicates"
        );
        let missing: Vec<&i64> = stable.iter().filter(|n| !fds.contains(n)).collect();
        assert!(missing.is_empty(), "round {round}: missing {missing:?}");
        // The table and --pids through a narrowing query, the same way.
        let mut cmd = fdgrab_testkit::fdgrab();
        cmd.args(["ls", &pid, "--type", "chr"]);
        let out = output_timeout(&mut cmd, TIMEOUT);
        assert!(out.status.success(), "{out:?}");
        let rows: Vec<i64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                l.split_whitespace()
                    .next()?
                    .trim_end_matches(['r', 'w', 'u'])
                    .parse()
                    .ok()
            })
            .collect();
        assert!(
            rows.windows(2).all(|w| w[0] < w[1]),
            "round {round}: table order"
        );
        assert!(
            stable.iter().all(|n| rows.contains(n)),
            "round {round}: table misses a stable fd"
        );
    }
}

/// In a new pid namespace that kept its parent's /proc (`unshare --pid --fork`
/// without `--mount-proc`), a pid means one process to pidfd_open and another in
/// /proc: `ls PID` described the parent namespace's process of that number (its
/// name, its fds) as if it were the one asked for. Refused with the reason now,
/// once for a whole run; with a /proc of its own the same listing is right.
#[test]
fn a_proc_of_another_pid_namespace_is_refused_not_misread() {
    let fg = fdgrab_testkit::bin("fdgrab");
    let fg = fg.display();
    for (mount_proc, ok) in [(false, false), (true, true)] {
        // With its own /proc, the listing waits (up to 10 s) until the child has
        // its fd 3 and is sleep: on a loaded host the shell's child may not have
        // run yet when the next command starts. Without, /proc/$! is another
        // process, and the run is refused whatever the child's state.
        let wait = if mount_proc {
            "i=0; while [ \"$(cat /proc/$!/comm)\" != sleep ] && [ $i -lt 1000 ]; do \
             i=$((i+1)); sleep 0.01; done; "
        } else {
            ""
        };
        let holder = format!(
            "sleep 30 3</dev/null & {wait}{fg} ls $! --fd 3 --json; echo \"rc=$?\"; \
             {fg} ls --pids; echo \"rc=$?\"; kill $!"
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork"]);
        if mount_proc {
            cmd.arg("--mount-proc");
        }
        cmd.args(["sh", "-c", &holder]);
        let out = output_timeout(&mut cmd, TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        if ok {
            let doc: Value =
                serde_json::from_str(stdout.lines().next().unwrap_or("")).expect("json");
            let p = &doc["processes"][0];
            assert_eq!(p["command"], "sleep", "{stdout}");
            assert_eq!(p["fds"][0]["link"], "/dev/null", "{stdout}");
            assert!(stdout.contains("rc=0\n"), "{stdout} {err}");
        } else {
            assert_eq!(stdout, "rc=1\nrc=1\n", "{err}");
            assert_eq!(err.matches("another pid namespace").count(), 2, "{err}");
        }
    }
}

/// Holds the file PATH at exactly the fd numbers of SPEC's `at` (dup2), in a table
/// first filled with `fill` /dev/null fds and then cut by `close` ([lo, hi)
/// stretches, closerange), so that fds sit in holes, on range boundaries and past
/// the table's fd count. With `clone_files`, a second process (clone with
/// CLONE_FILES, not CLONE_THREAD) shares the very same table. Reports the pids.
const LAYOUT: &str = r#"
import ctypes, json, os, resource, signal, sys
path, spec = sys.argv[1], json.loads(sys.argv[2])
top = max(spec["at"] + [spec.get("fill", 0)]) + 64
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(top, soft), max(top, hard)))
except (ValueError, OSError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
keep = [os.open("/dev/null", os.O_RDONLY) for _ in range(spec.get("fill", 0))]
for lo, hi in spec.get("close", []):
    os.closerange(lo, hi)
f = os.open(path, os.O_RDONLY)
for n in spec["at"]:
    os.dup2(f, n)
if f not in spec["at"]:
    os.close(f)
pids = [os.getpid()]
if spec.get("clone_files"):
    libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": 56, "aarch64": 220}[os.uname().machine]
    child = libc.syscall(nr, 0x400 | signal.SIGCHLD, 0, 0, 0, 0)  # CLONE_FILES
    if child == 0:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        while True:
            signal.pause()
    pids.append(child)
print(json.dumps({"pids": pids, "count": len(os.listdir("/proc/self/fd")) - 1}), flush=True)
sys.stdin.read()
"#;

/// This process's hard RLIMIT_NOFILE, which its python children inherit.
fn hard_nofile() -> i64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .expect("a hard limit on open files")
}

/// The pids fuser finds holding `path` by their fds, sorted and unique.
fn fuser_pids(path: &str) -> Vec<i64> {
    let out = output_timeout(Command::new("fuser").arg(path), TIMEOUT);
    let mut pids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Every (pid, fd) a schema 2 document lists, in its order.
fn pid_fd_pairs(doc: &Value) -> Vec<(i64, i64)> {
    doc["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .flat_map(|p| {
            let pid = p["pid"].as_i64().expect("pid");
            p["fds"]
                .as_array()
                .expect("fds")
                .iter()
                .map(move |e| (pid, e["fd"].as_i64().expect("fd")))
        })
        .collect()
}

/// `fdgrab ls ARGS` (which must succeed): stdout.
fn ls_ok(args: &[&str]) -> String {
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.arg("ls").args(args);
    let out = output_timeout(&mut cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "ls {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The fd numbers the document lists for `pid`, in its order.
fn fds_of(doc: &Value, pid: i64) -> Vec<i64> {
    doc["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| p["pid"].as_i64() == Some(pid))
        .flat_map(|p| p["fds"].as_array().expect("fds").iter())
        .filter_map(|e| e["fd"].as_i64())
        .collect()
}

/// `--path` is exact on tables laid out against the scan's shortcuts: fds far
/// apart (5 and 6/7 of the fd limit), one at the limit (1,048,575 under the usual
/// nr_open), a
/// table whose count is 3 with fds 0, 1 and 70,000, a table large enough to be
/// shared among the scan's threads with its only match on each side of every
/// 64-fd range boundary below, at and past its fd count, and tables shared by two
/// processes (CLONE_FILES without CLONE_THREAD); the same past a count of 300,
/// which `ls PID` reads in blocks. System-wide and per pid, the
/// fds listed are exactly the ones held, --pids prints every holder, and fuser
/// agrees.
#[test]
fn path_is_exact_on_sparse_shared_and_boundary_tables() {
    let dir = temp_dir("layouts");
    let file = dir.join("held");
    std::fs::write(&file, b"x").expect("write");
    let f = file.to_str().expect("utf8");
    // 297 /dev/null fds (3..300), 200..300 closed again: a count of 200 (with the
    // file), so ranges of 64 below 192 are tried and the rest listed.
    let shared = |at: i64| serde_json::json!({"fill": 297, "close": [[200, 300]], "at": [at]});
    // The highest fd this test may hold: 1,048,575 where the hard limit is the
    // kernel's usual nr_open, lower where it is not and may not be raised.
    let top = hard_nofile() - 1;
    let mut specs = vec![
        serde_json::json!({"at": [5, top * 6 / 7]}),
        serde_json::json!({"at": [top]}),
        serde_json::json!({"close": [[2, 3]], "at": [top.min(70_000)]}),
        serde_json::json!({"at": [5], "clone_files": true}),
        serde_json::json!({"fill": 297, "close": [[200, 300]], "at": [250], "clone_files": true}),
    ];
    for at in [
        63, 64, 127, 128, 191, 192, 199, 200, 255, 256, 319, 320, top,
    ] {
        specs.push(shared(at));
    }
    // A count of 300: `ls PID` reads it in blocks of 128, tried below 256.
    for at in [255, 256, 299, 300, 383, 384, top] {
        specs.push(serde_json::json!({"fill": 397, "close": [[300, 400]], "at": [at]}));
    }
    let holders: Vec<(Target, Vec<i64>)> = specs
        .iter()
        .map(|spec| {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", LAYOUT, f, &spec.to_string()]);
            let at = spec["at"]
                .as_array()
                .expect("at")
                .iter()
                .filter_map(Value::as_i64)
                .collect();
            (Target::spawn_cmd(cmd), at)
        })
        .collect();
    let pids_of = |t: &Target| -> Vec<i64> {
        t.report["pids"]
            .as_array()
            .expect("pids")
            .iter()
            .filter_map(Value::as_i64)
            .collect()
    };
    let mut all: Vec<i64> = holders.iter().flat_map(|(t, _)| pids_of(t)).collect();
    all.sort_unstable();
    let printed: Vec<i64> = ls_ok(&["--path", f, "--pids"])
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect();
    assert_eq!(printed, all, "--pids");
    assert_eq!(fuser_pids(f), all, "fuser disagrees");
    let doc = ls_json(&["--path", f]);
    for (t, at) in &holders {
        for pid in pids_of(t) {
            let spec = &t.report;
            assert_eq!(&fds_of(&doc, pid), at, "system-wide, pid {pid}: {spec}");
            let one = ls_json(&[&pid.to_string(), "--path", f]);
            assert_eq!(&fds_of(&one, pid), at, "ls {pid} --path: {spec}");
            // The whole table, as the kernel lists it (the holder is idle).
            let mut held: Vec<i64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .expect("fd dir")
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            held.sort_unstable();
            let whole = ls_json(&[&pid.to_string()]);
            assert_eq!(fds_of(&whole, pid), held, "ls {pid}: {spec}");
        }
    }
    drop(holders);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Listens on a port of 127.0.0.1 and, given a port, connects to it; reports both.
const PEER: &str = r#"
import json, socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
out = {"port": l.getsockname()[1]}
if len(sys.argv) > 1:
    c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    out["client"] = c.fileno()
print(json.dumps(out), flush=True)
sys.stdin.read()
"#;

/// `fdgrab ls ARGS --pids` as root or as uid 65534: the pids printed (none when it
/// exits 1, which --pids means for "nothing matched"; any other failure fails).
fn pids_as(nobody: bool, args: &[&str]) -> Vec<i64> {
    use std::os::unix::process::CommandExt;
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.arg("ls").args(args).arg("--pids");
    if nobody {
        cmd.uid(65534).gid(65534);
    }
    let out = output_timeout(&mut cmd, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{args:?}: {err}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("pid"))
        .collect()
}

/// --pids reports a match the first pass decides by pid alone, but every other
/// narrowing still holds: --user leaves out a holder of another uid (for --path,
/// --port and --listen), --fd and --type are still decided per fd, and an
/// unprivileged caller finds its own holder with a large table (fds past its count)
/// while the processes it may not read stay out.
#[test]
fn pids_keeps_user_fd_and_type_narrowings() {
    let dir = temp_dir("pids-user");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let file = dir.join("held");
    std::fs::write(&file, b"x").expect("write");
    let f = file.to_str().expect("utf8");
    let layout = |nobody: bool, spec: Value| {
        let mut cmd = Command::new("setpriv");
        if nobody {
            cmd.args(NOBODY.split(' '));
        }
        cmd.args(["/usr/bin/python3", "-c", LAYOUT, f, &spec.to_string()]);
        Target::spawn_cmd(cmd)
    };
    // Root holds the file at fd 7; nobody at fd 250 of a 200-fd table.
    let mine = layout(false, serde_json::json!({"at": [7]}));
    let theirs = layout(
        true,
        serde_json::json!({"fill": 297, "close": [[200, 300]], "at": [250]}),
    );
    let (root_pid, nobody_pid) = (i64::from(mine.pid), i64::from(theirs.pid));
    let mut both = vec![root_pid, nobody_pid];
    both.sort_unstable();
    assert_eq!(pids_as(false, &["--path", f]), both);
    assert_eq!(pids_as(false, &["--path", f, "--user", "0"]), [root_pid]);
    assert_eq!(
        pids_as(false, &["--path", f, "--user", "65534"]),
        [nobody_pid]
    );
    assert_eq!(pids_as(false, &["--path", f, "--fd", "250"]), [nobody_pid]);
    assert_eq!(pids_as(false, &["--path", f, "--fd", "7"]), [root_pid]);
    assert_eq!(pids_as(false, &["--path", f, "--type", "file"]), both);
    assert_eq!(
        pids_as(false, &["--path", f, "--type", "socket"]),
        [0_i64; 0]
    );
    assert_eq!(pids_as(true, &["--path", f]), [nobody_pid]);

    // A server of nobody's and a root client of it: both hold the port.
    let mut cmd = Command::new("setpriv");
    cmd.args(NOBODY.split(" "))
        .args(["/usr/bin/python3", "-c", PEER]);
    let server = Target::spawn_cmd(cmd);
    let port = server.report["port"].as_i64().expect("port").to_string();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PEER, &port]);
    let client = Target::spawn_cmd(cmd);
    let (srv, cli) = (i64::from(server.pid), i64::from(client.pid));
    let client_fd = client.report["client"].as_i64().expect("fd").to_string();
    assert_eq!(pids_as(false, &["--port", &port]), [srv, cli]);
    assert_eq!(pids_as(false, &["--port", &port, "--user", "65534"]), [srv]);
    assert_eq!(pids_as(false, &["--port", &port, "--user", "0"]), [cli]);
    assert_eq!(
        pids_as(false, &["--port", &port, "--fd", &client_fd]),
        [cli]
    );
    assert_eq!(
        pids_as(false, &["--port", &port, "--listen", "--user", "0"]),
        [0_i64; 0]
    );
    assert_eq!(pids_as(true, &["--port", &port]), [srv]);
    drop((mine, theirs, server, client));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A large table that churns while system-wide scans run: two threads dup2 into
/// and close fds from 3 to 2,000 and now and then close a whole stretch, so the
/// fd count swings across the stable fds holding the file (at 199, 200 and 1,999:
/// below, at and far past any count), which are therefore tried in one scan and
/// listed in the next. Every scan finds the holder, and lists exactly those fds.
#[test]
fn a_churning_table_keeps_its_stable_match_in_every_scan() {
    const CHURN: &str = r#"
import json, os, random, resource, sys, threading
path = sys.argv[1]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
null = os.open("/dev/null", os.O_RDONLY)
f = os.open(path, os.O_RDONLY)
stable = [199, 200, 1999]
for n in stable:
    os.dup2(f, n)
os.close(f)
churn = [n for n in range(3, 1999) if n not in stable and n != null]
def spin(seed):
    r = random.Random(seed)
    while True:
        for _ in range(r.randrange(1, 200)):
            try: os.dup2(null, r.choice(churn))
            except OSError: pass
        for _ in range(r.randrange(1, 200)):
            try: os.close(r.choice(churn))
            except OSError: pass
        if r.random() < 0.05:
            os.closerange(201, 1999)
for seed in (1, 2):
    threading.Thread(target=spin, args=(seed,), daemon=True).start()
print(json.dumps({"stable": stable}), flush=True)
sys.stdin.read()
"#;
    let dir = temp_dir("churn-scan");
    let file = dir.join("held");
    std::fs::write(&file, b"x").expect("write");
    let f = file.to_str().expect("utf8");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", CHURN, f]);
    let t = Target::spawn_cmd(cmd);
    let pid = i64::from(t.pid);
    for round in 0..12 {
        assert_eq!(pids_as(false, &["--path", f]), [pid], "round {round}");
        let doc = ls_json(&["--path", f]);
        assert_eq!(fds_of(&doc, pid), [199, 200, 1999], "round {round}");
    }
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP listener and one end of a unix socket pair, both also held by a forked
/// child; reports the pids and the fds.
const SOCKETS_SHARED: &str = r#"
import ctypes, json, os, signal, socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
a, b = socket.socketpair()
child = os.fork()
if child == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    while True:
        signal.pause()
print(json.dumps({"pids": [os.getpid(), child], "tcp": l.fileno(), "unix": a.fileno()}), flush=True)
sys.stdin.read()
"#;

/// `--path /proc/PID/fd/N` of a socket names the socket itself (an inode of
/// sockfs), not a unix socket's name on a file system: its holders are the fds on
/// that inode, as fuser finds them (a TCP socket has no name to be bound to, and a
/// unix socket pair's end none either).
#[test]
fn path_through_proc_fd_of_a_socket_finds_its_holders() {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", SOCKETS_SHARED]);
    let t = Target::spawn_cmd(cmd);
    let pids: Vec<i64> = t.report["pids"]
        .as_array()
        .expect("pids")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    for kind in ["tcp", "unix"] {
        let fd = t.report[kind].as_i64().expect("fd");
        let path = format!("/proc/{}/fd/{fd}", t.pid);
        assert_eq!(fuser_pids(&path), pids, "{kind}: fuser");
        assert_eq!(pids_as(false, &["--path", &path]), pids, "{kind}: --pids");
        let doc = ls_json(&["--path", &path]);
        for &pid in &pids {
            assert_eq!(fds_of(&doc, pid), [fd], "{kind}: pid {pid}: {doc}");
        }
    }
}

/// Kernel threads hold no fd, and an unprivileged caller may not open their
/// (root's) fd directories: a narrowing query skips them as unreadable, as the
/// plain listing does, rather than passing them over as holding nothing (its
/// shortcut for empty fd tables, two stats and no open, is only for
/// directories the caller owns). Compared by the summary's count against the
/// kernel threads counted around each query: other processes (a parallel test
/// suite's) come and go between two queries, so the two queries' counts need
/// not agree with each other, but neither may count fewer than the kernel
/// threads that lived through it.
#[test]
fn kernel_threads_stay_unreadable_to_an_unprivileged_narrowing_query() {
    // PF_KTHREAD, in the flags (9th field) of /proc/PID/stat.
    let kthreads = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| {
                let e = e.ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                let flags = after_comm.split_whitespace().nth(6)?.parse::<u64>().ok()?;
                (flags & 0x0020_0000 != 0).then(|| e.file_name().to_string_lossy().into_owned())
            })
            .collect()
    };
    if kthreads().is_empty() {
        fdgrab_testkit::skip("no kernel thread in this pid namespace");
        return;
    }
    let denied = |args: &[&str]| -> usize {
        let out = as_nobody(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let counts = err
            .trim()
            .rsplit_once(": ")
            .map_or("", |(_, counts)| counts);
        counts
            .split(", ")
            .find_map(|part| part.strip_suffix(" permission denied"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("ls {args:?}: no count of unreadable processes: {err}"))
    };
    for args in [&["--pids"][..], &["--path", "/dev/null", "--pids"]] {
        let before = kthreads();
        let n = denied(args);
        let lived = before.intersection(&kthreads()).count();
        assert!(
            n >= lived,
            "ls {args:?} counts {n} unreadable processes, but {lived} kernel threads lived through it"
        );
    }
}

/// A system-wide scan where no thread can be started (a pids cgroup at its limit,
/// as under a unit's `TasksMax=`): the calling thread scans alone and finds every
/// holder. Before, the refused spawn panicked while the workers already started
/// waited for a plan that never came, and the scope waited for them: a hang.
#[test]
fn a_scan_that_can_start_no_thread_still_answers() {
    let Some(root) = fdgrab_testkit::pids_cgroup_root() else {
        return;
    };
    let cg = root.join(format!("fdgrab-ls-nothreads-{}", std::process::id()));
    std::fs::create_dir(&cg).unwrap_or_else(|e| panic!("mkdir {}: {e}", cg.display()));
    // Room for the shell that moves itself in and then becomes fdgrab, no more.
    std::fs::write(cg.join("pids.max"), "1").expect("pids.max");
    let dir = temp_dir("nothreads");
    let file = dir.join("held");
    std::fs::write(&file, b"x").expect("write");
    let t = holder(&[file.to_str().expect("utf8")]);
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" ls --path \"$1\" --pids",
        cg.display()
    );
    let out = output_timeout(
        Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg(env!("CARGO_BIN_EXE_fdgrab"))
            .arg(&file),
        TIMEOUT,
    );
    let _ = std::fs::remove_dir(&cg);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        t.pid.to_string(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Port 0 is no port a socket is found by (an unbound socket and an unconnected
/// peer both read 0): `--port 0` answered "nobody" with status 0, which passes
/// for "free". It is a usage error naming the option.
#[test]
fn port_zero_is_a_usage_error() {
    let out = output_timeout(
        Command::new(fdgrab_testkit::bin("fdgrab")).args(["ls", "--port", "0", "--pids"]),
        TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--port"), "{err}");
    assert!(out.stdout.is_empty());
}

/// A process holding a file on a FUSE mount whose server does not answer (a
/// dead sshfs, a stuck lxcfs) must not stall `ls` for everyone: the device,
/// inode, size and link count come from what the kernel has cached, and no
/// request reaches the file server. The test server answers the file's
/// attributes only 2 s late, and counts every such request made by this test's
/// processes, `fdgrab` included.
#[test]
fn a_file_server_that_does_not_answer_stalls_no_listing() {
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("ls-stall") else {
        fdgrab_testkit::skip("FUSE cannot be mounted here");
        return;
    };
    let file = fs.file();
    let t = holds_on_fd_3(&file);
    let pid = t.pid.to_string();
    let ino = std::fs::metadata(format!("/proc/{pid}/fd/3"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    // The test's own stat above was the file server's first late answer.
    let before = fs.slow_requests();
    assert!(before >= 1 && ino.is_ok(), "the test server answered late");
    let ino = ino.unwrap_or_default();

    let started = std::time::Instant::now();
    let doc = ls_json(&[&pid, "--fd", "3"]);
    let e = &doc["processes"][0]["fds"][0];
    assert_eq!(
        (&e["type"], &e["inode"]),
        (&"file".into(), &ino.into()),
        "{e}"
    );
    let pids = ls_ok(&["--path", &file, "--pids"]);
    assert!(pids.lines().any(|l| l == pid), "{pid} holds {file}: {pids}");
    for args in [["--path", "/etc/hostname"], ["--deleted", "--json"]] {
        let mut cmd = fdgrab_testkit::fdgrab();
        let out = output_timeout(cmd.arg("ls").args(args), TIMEOUT);
        // 1: nothing matched.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "ls {args:?}: {out:?}"
        );
    }
    assert_eq!(
        fs.slow_requests(),
        before,
        "ls asked the file server for attributes"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "ls waited for the file server: {:?}",
        started.elapsed()
    );
}

/// A name that ends in " (deleted)" is checked by walking it: the file may
/// really be called so. On a file server, a walk whose cached directory
/// entries have expired asks the server to look each name up again, and one
/// that does not answer held `ls` (`ls PID`, and `ls --deleted` of every
/// process) as the attributes did. The walk now goes only as far as the
/// kernel's caches go; where they cannot tell, the suffix is taken for the
/// kernel's (as for an unlinked file, the far more common case), which is what
/// docs/inventory.md says.
#[test]
fn a_name_like_a_deleted_one_on_a_file_server_that_does_not_answer_stalls_no_listing() {
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("ls-lookup") else {
        fdgrab_testkit::skip("FUSE cannot be mounted here");
        return;
    };
    let file = fs.named_deleted();
    let t = holds_on_fd_3(&file);
    let pid = t.pid.to_string();
    let ino = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(format!("/proc/{pid}/fd/3")).expect("stat the target's fd"),
    );
    // The server's entries are valid for one second: past that a walk by
    // name asks it again.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    fs.slow_lookups();
    // Where the walk through the caches is refused (Linux before 5.12:
    // EINVAL, before 5.6: ENOSYS), the same rule holds: a full walk is made
    // only through mounts that cannot wait, and this one is FUSE.
    for filter in ["openat2=EINVAL", "openat2=ENOSYS"] {
        let before = fs.slow_requests();
        let started = std::time::Instant::now();
        let doc = ls_json_filtered(Some(filter), None, &[&pid, "--fd", "3"]);
        let took = started.elapsed();
        assert_eq!(
            fs.slow_requests(),
            before,
            "{filter}: a lookup on the server"
        );
        assert!(
            took < std::time::Duration::from_secs(2),
            "{filter}: {took:?}"
        );
        assert_eq!(
            doc["processes"][0]["fds"][0]["deleted"], true,
            "{filter}: {doc}"
        );
    }
    let before = fs.slow_requests();

    let started = std::time::Instant::now();
    let doc = ls_json(&[&pid, "--fd", "3"]);
    let mut cmd = fdgrab_testkit::fdgrab();
    let out = output_timeout(cmd.args(["ls", "--deleted", "--json"]), TIMEOUT);
    let took = started.elapsed();
    assert_eq!(
        fs.slow_requests(),
        before,
        "ls looked the name up on the file server"
    );
    assert!(
        took < std::time::Duration::from_secs(2),
        "ls waited for the file server: {took:?}"
    );
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    let e = &doc["processes"][0]["fds"][0];
    assert_eq!(
        (&e["type"], &e["inode"], &e["nlink"]),
        (&"file".into(), &ino.into(), &1.into()),
        "{e}"
    );
    // The caches cannot tell this name from an unlinked file's link.
    let stripped = file.strip_suffix(" (deleted)").unwrap_or(&file);
    assert_eq!(
        (&e["deleted"], &e["path"]),
        (&true.into(), &stripped.into()),
        "{e}"
    );
}

/// Holds, in DIR, a file, the directory, /dev/null, a pipe, a deleted file, a
/// live file named like a deleted one, a file whose opened name was removed
/// while another hard link keeps it, and a listening unix socket.
const FALLBACK_KINDS: &str = r#"
import json, os, socket, sys
d = sys.argv[1]
open(d + "/file", "w").write("file"); f = os.open(d + "/file", os.O_RDONLY)
dd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
n = os.open("/dev/null", os.O_RDONLY)
r, w = os.pipe()
open(d + "/gone", "w").write("gone!"); g = os.open(d + "/gone", os.O_RDONLY); os.unlink(d + "/gone")
open(d + "/app.log (deleted)", "w").write("live"); l = os.open(d + "/app.log (deleted)", os.O_RDONLY)
open(d + "/a", "w").write("a"); os.link(d + "/a", d + "/b"); h = os.open(d + "/a", os.O_RDONLY); os.unlink(d + "/a")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(d + "/sock"); s.listen()
print(json.dumps({"fds": [f, dd, n, r, w, g, l, h, s.fileno()]}), flush=True)
sys.stdin.read()
"#;

/// `fdgrab ls ARGS --json` run through `fdgrab-target exec-enosys FILTER` (the
/// syscalls FILTER names fail with the errno it gives), as `uid` if given (set
/// in the forked child before the exec).
fn ls_json_filtered(filter: Option<&str>, uid: Option<u32>, args: &[&str]) -> Value {
    use std::os::unix::process::CommandExt;
    let fdgrab = fdgrab_testkit::bin("fdgrab");
    let mut cmd = match filter {
        Some(f) => {
            let mut c = Command::new(fdgrab_testkit::bin("fdgrab-target"));
            c.args(["exec-enosys", f, "--"]).arg(&fdgrab);
            c
        }
        None => Command::new(&fdgrab),
    };
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.arg("ls").args(args).arg("--json");
    let out = output_timeout(&mut cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "ls {args:?} under {filter:?} as {uid:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

/// Where `statx` is refused (ENOSYS on old kernels, EPERM from older
/// container seccomp profiles) `ls` falls back to `fstatat`, and the listing is
/// the one made without a filter, field by field, for every kind of fd, and so
/// are `--deleted` and `--path`. Where `openat2` is refused (ENOSYS before 5.6,
/// EINVAL, EPERM from a profile) the same holds but for the one live file named
/// like a deleted one: no name is walked then, so it is taken for deleted. The
/// same holds for uid 65534 listing its own process.
#[test]
fn statx_and_openat2_refused_give_the_same_listing() {
    let dir = temp_dir("fallback");
    let d = dir.to_str().expect("utf8").to_owned();
    let file = format!("{d}/file");
    for uid in [None, Some(65534)] {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::os::unix::fs::chown(&dir, uid, uid).expect("chown");
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(FALLBACK_KINDS).arg(&d);
        if let Some(uid) = uid {
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            std::os::unix::process::CommandExt::gid(&mut cmd, uid);
        }
        let t = Target::spawn_cmd(cmd);
        let pid = t.pid.to_string();
        let want = ls_json_filtered(None, uid, &[&pid]);
        let fds = want["processes"][0]["fds"].as_array().expect("fds");
        assert!(fds.len() >= 9, "{want}");
        let named = fds
            .iter()
            .find(|e| e["path"] == format!("{d}/app.log (deleted)"))
            .unwrap_or_else(|| panic!("the live file: {want}"));
        assert_eq!(named["deleted"], false, "{named}");
        let want_deleted = ls_json_filtered(None, uid, &[&pid, "--deleted"]);
        assert_eq!(
            want_deleted["processes"][0]["fds"].as_array().map(Vec::len),
            Some(1),
            "{want_deleted}"
        );
        for filter in [
            "statx",
            "statx=EPERM",
            "openat2",
            "openat2=EINVAL",
            "openat2=EPERM,statx=EPERM",
            "openat2,statx",
        ] {
            // Without openat2 no name is walked (one name at a time, through
            // local mounts, needs it), so the live file named like a deleted one
            // is taken for a deleted one, as docs/inventory.md says.
            let mut expected = want["processes"].clone();
            if filter.contains("openat2") {
                for e in expected[0]["fds"].as_array_mut().expect("fds") {
                    if e["path"] == format!("{d}/app.log (deleted)") {
                        e["path"] = format!("{d}/app.log").into();
                        e["deleted"] = true.into();
                    }
                }
            }
            let got = ls_json_filtered(Some(filter), uid, &[&pid]);
            assert_eq!(
                got["processes"], expected,
                "ls {pid} under {filter} as {uid:?}"
            );
            let got = ls_json_filtered(Some(filter), uid, &[&pid, "--deleted"]);
            assert_eq!(
                got["processes"], want_deleted["processes"],
                "ls {pid} --deleted under {filter} as {uid:?}"
            );
            let got = ls_json_filtered(Some(filter), uid, &["--path", &file]);
            let pids: Vec<i64> = got["processes"]
                .as_array()
                .map(|p| p.iter().filter_map(|p| p["pid"].as_i64()).collect())
                .unwrap_or_default();
            assert_eq!(
                pids,
                vec![i64::from(t.pid)],
                "ls --path {file} under {filter} as {uid:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Holds, with its working directory and its root on the FUSE mount DIR, the
/// file `f` (whose attributes the server answers late once open), `g
/// (deleted)`, and a TCP listener on 127.0.0.1; reports the port.
const FUSE_HOLDER: &str = r#"
import json, os, socket, sys
os.chdir(sys.argv[1])
f = os.open("f", os.O_RDONLY)
g = os.open("g (deleted)", os.O_RDONLY)
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
os.chroot(".")
print(json.dumps({"port": s.getsockname()[1], "fds": [f, g]}), flush=True)
sys.stdin.read()
"#;

/// No question `ls` answers, and no listing `exec` chooses from, asks a file
/// server the user did not name: with a process whose working directory and
/// root are on a FUSE mount, holding there one file whose attributes and one whose name
/// lookups the server answers only 2 s late (and counts), every filter and
/// output of `ls`, for that process and for all, and an `exec` handover from
/// it, make no request to the server.
#[test]
fn no_listing_asks_a_file_server_that_does_not_answer() {
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("ls-every") else {
        fdgrab_testkit::skip("FUSE cannot be mounted here");
        return;
    };
    let dir = fs.dir();
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(FUSE_HOLDER).arg(&dir);
    let t = Target::spawn_cmd(cmd);
    let pid = t.pid.to_string();
    let port = t.report["port"].to_string();
    // Past the name entries' one second, and every later lookup late.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    fs.slow_lookups();
    let before = fs.slow_requests();
    let runs: &[&[&str]] = &[
        &[&pid],
        &[&pid, "--json"],
        &[&pid, "--deleted"],
        &[&pid, "--type", "file", "--json"],
        &[],
        &["--json"],
        &["--deleted", "--json"],
        &["--deleted", "--pids"],
        &["--type", "file"],
        &["--type", "file", "--pids"],
        &["--user", "root", "--type", "file"],
        &["--listen"],
        &["--port", &port, "--json"],
        &["--port", &port, "--pids"],
        &["--path", "/etc/hostname"],
        &["--path", "/etc/hostname", "--pids"],
    ];
    for args in runs {
        let started = std::time::Instant::now();
        let mut cmd = fdgrab_testkit::fdgrab();
        let out = output_timeout(
            cmd.arg("ls")
                .args(*args)
                .stdout(std::process::Stdio::null()),
            TIMEOUT,
        );
        // 1: nothing matched.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "ls {args:?}: {out:?}"
        );
        assert_eq!(
            fs.slow_requests(),
            before,
            "ls {args:?} asked the file server (took {:?})",
            started.elapsed()
        );
    }
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.args(["exec", "--ready-timeout", "100ms", "--detach", &pid])
        .arg(format!("tcp:127.0.0.1:{port}"))
        .args(["--", "sleep", "2"]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    assert!(out.status.success(), "exec: {out:?}");
    assert_eq!(
        fs.slow_requests(),
        before,
        "exec's listing asked the file server"
    );
}

/// `ls --path` of a unix socket's name on a file server (a FUSE mount here)
/// looks for the sockets bound to that name; telling a name from a socket
/// itself (`/proc/PID/fd/N` of one) asked the name's file system for its
/// statistics (`statfs`), a request to the server, answered 2 s late here.
/// Every socket is on the kernel's one sockfs, whose device tells it instead.
#[test]
fn path_of_a_socket_name_on_a_file_server_asks_it_nothing_more() {
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("ls-sockname") else {
        fdgrab_testkit::skip("FUSE cannot be mounted here");
        return;
    };
    let name = fs.socket_name();
    let before = fs.slow_requests();
    let mut cmd = fdgrab_testkit::fdgrab();
    let out = output_timeout(cmd.args(["ls", "--path", &name, "--json"]), TIMEOUT);
    assert_eq!(
        fs.slow_requests(),
        before,
        "ls --path asked the name's file server"
    );
    // Nothing is bound to it: no process (1, or 0 with a process it could
    // not read).
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["processes"], Value::Array(Vec::new()), "{doc}");
    // A socket itself is still matched by the fds on it.
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let me = std::process::id();
    let link = format!("/proc/{me}/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&a));
    let doc = ls_json(&["--path", &link]);
    let pids: Vec<i64> = doc["processes"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["pid"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(pids, vec![i64::from(me)], "{doc}");
}

/// A live directory named like a deleted one on a local file system whose names
/// the kernel never resolves from its caches alone (cgroupfs, a kernfs, as
/// sysfs) keeps its name and is not deleted: the walk through the caches cannot
/// tell there, and the full walk, which asks no server on a local file system,
/// does.
#[test]
fn a_live_directory_named_like_a_deleted_one_on_cgroupfs_is_not_deleted() {
    let Some(root) = fdgrab_testkit::pids_cgroup_root() else {
        return;
    };
    let dir = root.join(format!("fdgrab-lsa-{} (deleted)", std::process::id()));
    let _ = std::fs::remove_dir(&dir);
    std::fs::create_dir(&dir).expect("mkdir in the cgroup file system");
    let d = dir.to_str().expect("utf8").to_string();
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg("import json,os,sys\nfd=os.open(sys.argv[1], os.O_RDONLY)\nprint(json.dumps({'fd': fd}), flush=True)\nsys.stdin.read()")
        .arg(&d);
    let t = Target::spawn_cmd(cmd);
    let fd = t.report["fd"].as_i64().expect("fd").to_string();
    let doc = ls_json(&[&t.pid.to_string(), "--fd", &fd]);
    let e = &doc["processes"][0]["fds"][0];
    assert_eq!(
        (&e["type"], &e["deleted"]),
        (&"dir".into(), &false.into()),
        "{e}"
    );
    assert_eq!(e["path"], d.as_str(), "{e}");
    drop(t);
    let _ = std::fs::remove_dir(&dir);
}

/// `--path /proc/PID/fd/N` of a socket finds the fds on that socket even where
/// fdgrab may make no socket of its own (a sandbox refusing `socket()`, as
/// systemd's `RestrictAddressFamilies=` does): telling a socket from a socket's
/// name needs no socket.
#[test]
fn path_of_a_socket_itself_is_found_where_sockets_are_refused() {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(
        "import json,socket,sys\na,b=socket.socketpair()\nprint(json.dumps({'fd': a.fileno()}), flush=True)\nsys.stdin.read()",
    );
    let t = Target::spawn_cmd(cmd);
    let path = format!("/proc/{}/fd/{}", t.pid, t.report["fd"]);
    for filter in [None, Some("socket=EAFNOSUPPORT")] {
        let doc = ls_json_filtered(filter, None, &["--path", &path]);
        let found = pid_fd_pairs(&doc);
        let want = (i64::from(t.pid), t.report["fd"].as_i64().expect("fd"));
        assert!(
            found.contains(&want),
            "{filter:?}: {want:?} not in {found:?}"
        );
    }
}

/// The full walk that settles a name ending in " (deleted)" where the caches
/// cannot is made only through mounts that cannot wait: an overlay whose lower
/// layer is a FUSE mount is not one (its lookups go down to the FUSE server),
/// though the fd's own mount is the overlay. The server answers lookups 2 s
/// late and counts them.
#[test]
fn a_name_on_an_overlay_over_a_file_server_is_not_walked() {
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("ls-overlay") else {
        fdgrab_testkit::skip("FUSE cannot be mounted here");
        return;
    };
    let dir = temp_dir("overlay");
    let (upper, work, merged) = (dir.join("u"), dir.join("w"), dir.join("m"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).expect("overlay dirs");
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        fs.dir(),
        upper.display(),
        work.display()
    );
    let mut mount = Command::new("mount");
    mount
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&merged);
    let out = output_timeout(&mut mount, TIMEOUT);
    if !out.status.success() {
        fdgrab_testkit::skip(&format!(
            "overlay over FUSE cannot be mounted here: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let file = merged.join("g (deleted)").to_string_lossy().into_owned();
    let t = holds_on_fd_3(&file);
    // Past the server's one-second entry timeout, a walk by name asks it again.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    fs.slow_lookups();
    let before = fs.slow_requests();
    let started = std::time::Instant::now();
    let doc = ls_json(&[&t.pid.to_string(), "--fd", "3"]);
    let took = started.elapsed();
    drop(t);
    let _ = output_timeout(Command::new("umount").arg(&merged), TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        fs.slow_requests(),
        before,
        "ls looked the name up on the server"
    );
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    assert_eq!(doc["processes"][0]["fds"][0]["type"], "file", "{doc}");
}
