//! The injecting commands against targets under seccomp, end to end: as root the
//! filters are read and suspended where needed; as another user they cannot be
//! read, so a filtered target is refused (exit 4) unless `--force` is given. After
//! every case the target is alive, answering, untraced, with nothing of ours left.

use fdgrab_testkit::{
    fdgrab, injection_leftovers, is_root, output_timeout, proc_fds, skip, status_field, Target,
    TIMEOUT,
};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

struct Before {
    maps: String,
    fds: Vec<String>,
    signals: [String; 3],
}

fn before(pid: i32) -> Before {
    Before {
        maps: std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps"),
        fds: proc_fds(pid),
        signals: ["SigBlk", "SigPnd", "ShdPnd"].map(|k| status_field(pid, k).expect("status")),
    }
}

fn assert_unharmed(t: &mut Target, b: &Before, fds: &[String], case: &str) {
    if let Some(problem) = injection_leftovers(t.pid, &b.maps, fds) {
        panic!("{case}: {problem}");
    }
    let signals = ["SigBlk", "SigPnd", "ShdPnd"].map(|k| status_field(t.pid, k).expect("status"));
    assert_eq!(signals, b.signals, "{case}: signal state changed");
    let stdin = t.stdin.as_mut().expect("stdin");
    stdin.write_all(b"ping\n").expect("write");
    stdin.flush().expect("flush");
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(line["data"], "ping\n", "{case}: target does not answer");
}

/// A target as uid 65534 under a filter giving `action` to `calls`.
fn nobody_target(action: &str, calls: &str) -> Target {
    let mut cmd = Command::new(fdgrab_testkit::bin("fdgrab-target"));
    cmd.args(["seccomp", action, calls]).uid(65534).gid(65534);
    Target::spawn_cmd(cmd)
}

fn fdgrab_as_nobody(args: &[&str]) -> Output {
    let mut cmd = fdgrab();
    cmd.args(args).uid(65534).gid(65534);
    output_timeout(&mut cmd, TIMEOUT)
}

#[test]
fn seccomp_cli_unreadable_filter_refused_without_force() {
    if !is_root() {
        skip("switching to uid 65534 needs root");
        return;
    }
    let mut t = nobody_target("errno", "mknod");
    let b = before(t.pid);
    let pid = t.pid.to_string();
    let file = t.fd_labelled("file").to_string();
    let cases: [&[&str]; 6] = [
        &["put", &pid, "61", "--file", "/dev/null", "--read"],
        &["redirect", &pid, "1", "/dev/null"],
        &["cat", "--backend", "ptrace", &pid, &file],
        &["get", "--backend", "ptrace", &pid, &file, "--", "true"],
        &[
            "send",
            "--backend",
            "ptrace",
            &pid,
            &file,
            "--to",
            "/nonexistent.sock",
        ],
        &["steal", "--backend", "ptrace", &pid, &file, "--", "true"],
    ];
    for args in cases {
        let case = args.join(" ");
        let out = fdgrab_as_nobody(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{case}: {err}");
        assert!(
            err.contains("seccomp") && err.contains("--force") && err.contains(&pid),
            "{case}: {err}"
        );
        assert_unharmed(&mut t, &b, &b.fds, &case);
    }
    // --force: the filter (errno on mknod) is harmless, so the commands now work.
    let out = fdgrab_as_nobody(&["cat", "--force", "--backend", "ptrace", &pid, &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inject test file\n");
    assert_unharmed(&mut t, &b, &b.fds, "cat --force");
    let out = fdgrab_as_nobody(&[
        "put",
        "--force",
        &pid,
        "61",
        "--file",
        "/dev/null",
        "--read",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut fds = b.fds.clone();
    fds.push("61 -> /dev/null".into());
    fds.sort();
    assert_unharmed(&mut t, &b, &fds, "put --force");
}

/// Forced into a filter that traps the injected `socket`: the trap is caught (the
/// SIGSYS is not delivered), the command fails with exit 4 and the target lives.
#[test]
fn seccomp_cli_forced_into_a_trap_the_target_survives() {
    if !is_root() {
        skip("switching to uid 65534 needs root");
        return;
    }
    let mut t = nobody_target("trap", "socket");
    let b = before(t.pid);
    let pid = t.pid.to_string();
    let file = t.fd_labelled("file").to_string();
    let out = fdgrab_as_nobody(&["cat", "--force", "--backend", "ptrace", &pid, &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("socket") && err.contains("SIGSYS"), "{err}");
    assert_unharmed(&mut t, &b, &b.fds, "forced trap");
}

/// As root the default plan suspends a filter that would kill the target.
#[test]
fn seccomp_cli_root_serves_a_kill_filter_by_suspending_it() {
    if !is_root() {
        skip("reading and suspending seccomp filters needs root");
        return;
    }
    let mut t = Target::spawn(["seccomp", "kill-process", "socket,mmap,dup3"]);
    let b = before(t.pid);
    let pid = t.pid.to_string();
    let file = t.fd_labelled("file").to_string();
    let mut cmd = fdgrab();
    cmd.args(["-v", "cat", "--backend", "ptrace", &pid, &file]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("PTRACE_O_SUSPEND_SECCOMP"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inject test file\n");
    assert_unharmed(&mut t, &b, &b.fds, "cat");
    let mut cmd = fdgrab();
    cmd.args(["put", &pid, "61", "--file", "/dev/null", "--read"]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut fds = b.fds.clone();
    fds.push("61 -> /dev/null".into());
    fds.sort();
    assert_unharmed(&mut t, &b, &fds, "put");
}
