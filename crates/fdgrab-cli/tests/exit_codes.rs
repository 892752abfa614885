//! Every documented exit code, and bad input of every kind: a clear message that
//! names the offending value, the right code, and never a panic.

use fdgrab_testkit::{output_timeout, run_fdgrab, Target, TIMEOUT};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

fn check(out: &Output, code: i32, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention {n:?}: {err}");
    }
}

/// A pid that no process has: one we spawned and reaped.
fn free_pid() -> String {
    let mut c = Command::new("true").spawn().expect("true");
    let pid = c.id();
    c.wait().expect("reap");
    pid.to_string()
}

#[test]
fn code_0_success() {
    let t = Target::spawn(["zoo"]);
    check(&run_fdgrab(["ls", &t.pid.to_string()]), 0, &[]);
    check(&run_fdgrab(["--help"]), 0, &[]);
}

#[test]
fn code_1_failure() {
    let t = Target::spawn(["zoo"]);
    let pid = t.pid.to_string();
    let pipe = t.fd_labelled("pipe-r").to_string();
    check(&run_fdgrab(["cat", &pid, &pipe]), 1, &["--consume", &pid]);
}

/// CMD not found is 127 and not executable is 126, as with `env` and shells, for
/// every command that starts one.
#[test]
fn code_126_127_when_cmd_cannot_start() {
    let t = Target::spawn(["zoo"]);
    let pid = t.pid.to_string();
    let fd = t.fd_labelled("file").to_string();
    for cmd in ["get", "steal"] {
        check(
            &run_fdgrab([cmd, &pid, &fd, "--", "/nonexistent/cmd"]),
            127,
            &["command '/nonexistent/cmd' not found"],
        );
        check(
            &run_fdgrab([cmd, &pid, &fd, "--", "fdgrab-no-such-cmd"]),
            127,
            &["command 'fdgrab-no-such-cmd' not found in PATH"],
        );
        check(
            &run_fdgrab([cmd, &pid, &fd, "--", "/etc/passwd"]),
            126,
            &["cannot execute '/etc/passwd'", "not an executable file"],
        );
    }
    // Refused before anything was taken: the target keeps its fd.
    assert!(std::path::Path::new(&format!("/proc/{pid}/fd/{fd}")).exists());
}

#[test]
fn code_2_usage() {
    check(&run_fdgrab::<[&str; 0], &str>([]), 2, &["Usage"]);
    check(&run_fdgrab(["frobnicate"]), 2, &["frobnicate"]);
    check(&run_fdgrab(["get", "1", "0"]), 2, &["CMD"]);
}

/// The kernel lacks the syscall: simulated with strace's fault injection, which
/// makes the real syscall return ENOSYS.
#[test]
fn code_3_unsupported_kernel() {
    let t = Target::spawn(["zoo"]);
    let pid = t.pid.to_string();
    let fdgrab = fdgrab_testkit::bin("fdgrab");
    for (sys, args) in [
        ("pidfd_open", vec!["ls", &pid]),
        // auto would fall back to ptrace injection; the pidfd backend must report it.
        ("pidfd_getfd", vec!["cat", "--backend", "pidfd", &pid, "0"]),
    ] {
        let mut cmd = Command::new("strace");
        cmd.args([
            "-f",
            "-o",
            "/dev/null",
            "-e",
            &format!("inject={sys}:error=ENOSYS"),
        ])
        .arg(&fdgrab)
        .args(&args);
        let out = output_timeout(&mut cmd, TIMEOUT);
        check(&out, 3, &[sys, "not supported"]);
    }
}

#[test]
fn code_4_permission_denied() {
    let t = Target::spawn(["zoo"]);
    let pid = t.pid.to_string();
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.args(["get", &pid, "3", "--", "true"])
        .uid(65534)
        .gid(65534);
    let out = output_timeout(&mut cmd, TIMEOUT);
    check(&out, 4, &["permission denied", &pid, "uid 0"]);
}

#[test]
fn code_5_no_such_process_or_fd() {
    let pid = free_pid();
    check(&run_fdgrab(["ls", &pid]), 5, &[&pid, "no such process"]);
    check(&run_fdgrab(["get", &pid, "1", "--", "true"]), 5, &[&pid]);
    let t = Target::spawn(["zoo"]);
    let tp = t.pid.to_string();
    check(&run_fdgrab(["cat", &tp, "999"]), 5, &["999", &tp]);
    check(
        &run_fdgrab(["get", &tp, "2147483647", "--", "true"]),
        5,
        &["2147483647"],
    );
    // An fd selector that matches nothing (a bare second number would be a pid,
    // and a fixed one may be in use by then).
    check(&run_fdgrab(["ls", &tp, "--fd", "4321"]), 5, &["4321", &tp]);
    let gone = free_pid();
    check(
        &run_fdgrab(["ls", &tp, &gone]),
        5,
        &[&gone, "no such process"],
    );
}

#[test]
fn bad_pids_and_fds_on_every_command() {
    let cases: &[(&str, &str)] = &[
        ("0", "pid 0"),
        ("-1", "negative"),
        ("-99999", "negative"),
        ("abc", "'abc'"),
        ("12x", "'12x'"),
        ("99999999999", "out of range"),
        ("", "''"),
    ];
    for (pid, needle) in cases {
        check(&run_fdgrab(["ls", pid]), 2, &[needle]);
        check(&run_fdgrab(["cat", pid, "1"]), 2, &[needle]);
        check(&run_fdgrab(["get", pid, "1", "--", "true"]), 2, &[needle]);
        check(
            &run_fdgrab(["send", pid, "1", "--to", "/tmp/x"]),
            2,
            &[needle],
        );
    }
    let t = Target::spawn(["zoo"]);
    let tp = t.pid.to_string();
    for (fd, needle) in [
        ("-1", "negative"),
        ("99999999999", "out of range"),
        ("x", "'x'"),
        ("3:-2", "NEWFD"),
    ] {
        check(&run_fdgrab(["get", &tp, fd, "--", "true"]), 2, &[needle]);
    }
    for (fd, needle) in [
        ("-1", "negative"),
        ("4294967296", "out of range"),
        ("one", "'one'"),
    ] {
        check(&run_fdgrab(["cat", &tp, fd]), 2, &[needle]);
        check(&run_fdgrab(["ls", &tp, fd]), 2, &[needle]);
    }
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_fdgrab(["completions", shell]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("fdgrab"));
    }
    let out = run_fdgrab(["man"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH") && page.contains("fdgrab"));
    let dir = std::env::temp_dir().join(format!("fdgrab-man-{}", std::process::id()));
    let out = run_fdgrab(["man", "--dir", &dir.to_string_lossy()]);
    assert!(out.status.success());
    for page in [
        "fdgrab.1",
        "fdgrab-ls.1",
        "fdgrab-get.1",
        "fdgrab-cat.1",
        "fdgrab-send.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Our own fd table is full: the first read of the target's /proc entry (before
/// anything is taken) fails with EMFILE, reported as such and naming the target.
#[test]
fn too_many_open_files_is_reported() {
    let t = Target::spawn(["zoo"]);
    let pid = t.pid.to_string();
    let cat = |fd: &str| {
        let mut cmd = Command::new("prlimit");
        // stdin, stdout, stderr and the pidfd fit; nothing else does.
        cmd.args(["--nofile=4:4", "--"])
            .arg(fdgrab_testkit::bin("fdgrab"))
            .args(["cat", &pid, fd]);
        output_timeout(&mut cmd, TIMEOUT)
    };
    // The checks of an fd that is there open nothing; the copy is what fails.
    check(
        &cat("3"),
        1,
        &["too many open files in fdgrab", "fd 3", &pid],
    );
    // A missing fd makes the checks read /proc/PID/stat to tell why; failing to
    // open it at all is reported as what it is, not as "no such process". EMFILE by
    // number: its text is the C library's ("Too many open files" in glibc, "No file
    // descriptors available" in musl).
    check(&cat("999"), 1, &["(os error 24)", &pid, "/proc/PID/stat"]);
}
