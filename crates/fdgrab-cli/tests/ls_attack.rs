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
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.arg("ls").args(args).arg("--json");
    let out = output_timeout(&mut cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "ls {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
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
