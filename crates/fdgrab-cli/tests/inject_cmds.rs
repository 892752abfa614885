//! `--backend`, `steal`, `put` and `redirect` end to end, against real processes.

use fdgrab_testkit::{
    bin, fdgrab, injection_leftovers, output_timeout, proc_fds, read_line_timeout, run_fdgrab,
    status_field, Target, TIMEOUT,
};
use serde_json::Value;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_in_read(pid: i32) {
    for _ in 0..500 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if s.split_whitespace().next() == Some("0") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{pid} never blocked in read");
}

fn json_line(t: &mut Target) -> Value {
    serde_json::from_str(&t.next_line()).expect("json line")
}

fn send_line(t: &mut Target, s: &str) {
    let stdin = t.stdin.as_mut().expect("stdin");
    stdin.write_all(s.as_bytes()).expect("write");
    stdin.flush().expect("flush");
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fdgrab-inject-cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("mkdir");
    d.join(name)
}

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that fdgrab failed with exit `code` and returns its stderr.
fn failure_text(out: &std::process::Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{err}");
    err
}

/// Asserts success and parses the JSON document fdgrab printed.
fn success_json(out: &std::process::Output) -> Value {
    assert_ok(out);
    serde_json::from_slice(&out.stdout).expect("json on stdout")
}

/// Waits until the file at `path` contains `text`.
fn wait_for_text(path: &std::path::Path, text: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            Instant::now() < deadline,
            "{text:?} never reached {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn snapshot(pid: i32) -> (String, Vec<String>) {
    (
        std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps"),
        proc_fds(pid),
    )
}

/// `fdgrab cat --backend ptrace` of the target's `file` fd, and the target left clean.
fn cat_file_by_ptrace(t: &Target) {
    let before = snapshot(t.pid);
    let fd = t.fd_labelled("file").to_string();
    let out = run_fdgrab(["cat", "--backend", "ptrace", &t.pid.to_string(), &fd]);
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inject test file\n");
    assert_eq!(injection_leftovers(t.pid, &before.0, &before.1), None);
}

#[test]
fn inject_cli_cat_by_ptrace() {
    let t = Target::spawn(["blocked-read"]);
    wait_in_read(t.pid);
    cat_file_by_ptrace(&t);
}

#[test]
fn inject_cli_send_json_names_backend() {
    let t = Target::spawn(["blocked-read"]);
    let fd = t.fd_labelled("file").to_string();
    for (backend, expect) in [("ptrace", "ptrace"), ("pidfd", "pidfd"), ("auto", "pidfd")] {
        let sock = tmp(&format!("send-{backend}.sock"));
        let _ = std::fs::remove_file(&sock);
        let l = UnixListener::bind(&sock).expect("bind");
        let out = run_fdgrab([
            "send",
            "--json",
            "--backend",
            backend,
            &t.pid.to_string(),
            &fd,
            "--to",
            sock.to_str().expect("utf8"),
        ]);
        let doc = success_json(&out);
        assert_eq!(doc["backend"], expect, "{doc}");
        let (conn, _) = l.accept().expect("accept");
        let mut buf = [0u8; 64];
        let got = fdgrab::passfd::recv_fds(&conn, &mut buf, 4).expect("recv");
        assert_eq!(got.fds.len(), 1);
    }
    let out = run_fdgrab([
        "send",
        "--backend",
        "gdb",
        &t.pid.to_string(),
        &fd,
        "--to",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown backend 'gdb'"));
}

/// Runs fdgrab under a seccomp filter that makes the listed syscalls fail with
/// ENOSYS: `pidfd_getfd` as on kernels 5.3 to 5.5, plus `pidfd_open` as before 5.3.
fn fdgrab_with_enosys(syscalls: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin("fdgrab-target"));
    cmd.args([
        "exec-enosys",
        syscalls,
        "--",
        bin("fdgrab").to_str().expect("utf8"),
    ])
    .args(args);
    output_timeout(&mut cmd, TIMEOUT)
}

fn fdgrab_without_getfd(args: &[&str]) -> std::process::Output {
    fdgrab_with_enosys("pidfd_getfd", args)
}

#[test]
fn inject_cli_auto_falls_back_to_ptrace_on_enosys() {
    let t = Target::spawn(["blocked-read"]);
    wait_in_read(t.pid);
    let before = snapshot(t.pid);
    let pid = t.pid.to_string();
    let fd = t.fd_labelled("file").to_string();
    // Forced pidfd backend: the kernel "lacks" it, exit 3.
    let out = fdgrab_without_getfd(&["cat", "--backend", "pidfd", &pid, &fd]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pidfd_getfd is not supported"));
    // Auto: falls back, says so in the debug log, and succeeds.
    let out = fdgrab_without_getfd(&["-vv", "cat", &pid, &fd]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inject test file\n");
    assert!(err.contains("falling back to ptrace"), "{err}");
    let sock = tmp("fallback.sock");
    let _ = std::fs::remove_file(&sock);
    let _l = UnixListener::bind(&sock).expect("bind");
    let out = fdgrab_without_getfd(&[
        "send",
        "--json",
        &pid,
        &fd,
        "--to",
        sock.to_str().expect("utf8"),
    ]);
    let doc = success_json(&out);
    assert_eq!(doc["backend"], "ptrace");
    assert_eq!(injection_leftovers(t.pid, &before.0, &before.1), None);
}

#[test]
fn inject_cli_steal_closes_and_target_sees_ebadf() {
    for backend in ["auto", "ptrace"] {
        let mut t = Target::spawn(["blocked-read"]);
        wait_in_read(t.pid);
        // The command reads the target's stdin pipe; the target's own blocked read
        // restarts after the steal and finds fd 0 gone.
        let pid = t.pid.to_string();
        let mut child = fdgrab()
            .args([
                "steal",
                "--backend",
                backend,
                &pid,
                "0",
                "--",
                "head",
                "-n",
                "1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("fdgrab steal");
        let line = json_line(&mut t);
        assert_eq!(
            (line["n"].as_i64(), line["errno"].as_i64()),
            (Some(-1), Some(libc::EBADF as i64)),
            "{backend}: {line}"
        );
        send_line(&mut t, "hello\n");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let got = read_line_timeout(&mut out, TIMEOUT).expect("the command's output");
        assert_eq!(got, "hello", "{backend}: the command got the stolen pipe");
        let st = fdgrab_testkit::wait_timeout(&mut child, TIMEOUT).expect("steal exits");
        assert!(st.success(), "{backend}");
    }
}

#[test]
fn inject_cli_steal_null_gives_eof() {
    let mut t = Target::spawn(["blocked-read"]);
    wait_in_read(t.pid);
    // The number stays taken, by /dev/null; checked from inside a session-free view
    // before the target's restarted read sees EOF and it exits.
    let out = run_fdgrab([
        "steal",
        "--null",
        &t.pid.to_string(),
        "0:5",
        "--",
        "sh",
        "-c",
        "test -p /proc/self/fd/5",
    ]);
    assert!(
        out.status.success(),
        "the command gets the pipe at 5: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = json_line(&mut t);
    assert_eq!(
        (line["n"].as_i64(), line["errno"].as_i64()),
        (Some(0), Some(0)),
        "EOF expected: {line}"
    );
}

#[test]
fn inject_cli_steal_takes_nothing_if_command_fails() {
    let mut t = Target::spawn(["blocked-read"]);
    wait_in_read(t.pid);
    let before = proc_fds(t.pid);
    let out = run_fdgrab([
        "steal",
        &t.pid.to_string(),
        "0",
        "--",
        "/nonexistent/command",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run '/nonexistent/command'"));
    assert_eq!(proc_fds(t.pid), before, "nothing taken");
    send_line(&mut t, "still mine\n");
    assert_eq!(json_line(&mut t)["data"], "still mine\n");
    // A bad fd: nothing taken either, exit 5.
    let out = run_fdgrab(["steal", &t.pid.to_string(), "0", "99", "--", "true"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(proc_fds(t.pid), before);
}

#[test]
fn inject_cli_put_file_and_own_fd() {
    let mut t = Target::spawn(["blocked-read"]);
    wait_in_read(t.pid);
    let pid = t.pid.to_string();
    let path = tmp("put-stdout.txt");
    let out = run_fdgrab([
        "put",
        "--json",
        &pid,
        "1",
        "--file",
        path.to_str().expect("utf8"),
    ]);
    let doc = success_json(&out);
    assert_eq!(doc["method"], "ptrace");
    send_line(&mut t, "to the file\n");
    wait_for_text(&path, "to the file");
    // --fd: fdgrab's own stdout (another file) goes in at 1.
    let path2 = tmp("put-fd.txt");
    let f = std::fs::File::create(&path2).expect("create");
    let mut cmd = fdgrab();
    cmd.args(["put", &pid, "1", "--fd", "1"]);
    let mut child = cmd
        .stdout(Stdio::from(f))
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    assert!(fdgrab_testkit::wait_timeout(&mut child, TIMEOUT)
        .expect("exit")
        .success());
    send_line(&mut t, "second\n");
    wait_for_text(&path2, "second");
    // Bad input.
    let out = run_fdgrab(["put", &pid, "1", "--fd", "977"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fd 977"));
    let out = run_fdgrab(["put", &pid, "1"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_fdgrab(["put", "999999999", "1", "--file", "/dev/null"]);
    assert_eq!(out.status.code(), Some(5));
}

#[test]
fn inject_cli_redirect_python_stdout_and_undo() {
    let code =
        "import itertools, time\nfor i in itertools.count():\n    print(i)\n    time.sleep(0.02)\n";
    let mut py = Command::new("python3")
        .args(["-u", "-c", code])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("python3");
    let pid = py.id() as i32;
    let mut out = BufReader::new(py.stdout.take().expect("stdout"));
    let first: i64 = read_line_timeout(&mut out, TIMEOUT)
        .expect("line")
        .trim()
        .parse()
        .expect("number");
    let path = tmp("python.log");
    let r = run_fdgrab([
        "redirect",
        "--json",
        &pid.to_string(),
        "1",
        path.to_str().expect("utf8"),
    ]);
    let doc = success_json(&r);
    let undo: Vec<String> = doc["undo"]
        .as_array()
        .expect("undo")
        .iter()
        .map(|v| v.as_str().expect("str").to_string())
        .collect();
    assert_eq!(
        undo[..4],
        ["fdgrab", "redirect", "--undo", &pid.to_string()]
    );
    // Lines appear in the file.
    let deadline = Instant::now() + TIMEOUT;
    while std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .count()
        < 5
    {
        assert!(Instant::now() < deadline, "no lines in the file");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The undo command, exactly as printed, puts stdout back.
    let u = run_fdgrab(&undo[1..]);
    assert_ok(&u);
    let in_file: Vec<i64> = std::fs::read_to_string(&path)
        .expect("file")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    // Drain what reached the pipe before the redirect, then the next line is newer.
    let mut next: i64;
    loop {
        next = read_line_timeout(&mut out, TIMEOUT)
            .expect("line after undo")
            .trim()
            .parse()
            .expect("number");
        if next > first + 1 || in_file.is_empty() {
            break;
        }
    }
    let last_in_file = *in_file.last().expect("file lines");
    assert!(
        next > last_in_file,
        "after undo the pipe gets new lines ({next} after {last_in_file})"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/fd/{}", undo[5])).exists(),
        "saved fd closed by undo"
    );
    let _ = py.kill();
    let _ = py.wait();
    let human = {
        let mut py2 = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::piped())
            .spawn()
            .expect("sleep");
        let r = run_fdgrab([
            "redirect",
            &py2.id().to_string(),
            "1",
            tmp("sleep.log").to_str().expect("utf8"),
        ]);
        let _ = py2.kill();
        let _ = py2.wait();
        String::from_utf8_lossy(&r.stdout).into_owned()
    };
    assert!(human.contains("undo: fdgrab redirect --undo "), "{human}");
}

#[test]
fn inject_cli_sigterm_during_session_restores_target() {
    signal_during_session_restores_target(libc::SIGTERM);
}

#[test]
fn inject_cli_sigint_during_session_restores_target() {
    signal_during_session_restores_target(libc::SIGINT);
}

fn signal_during_session_restores_target(sig: i32) {
    let mut t = Target::spawn(["blocked-read"]);
    wait_in_read(t.pid);
    let before = snapshot(t.pid);
    let mut probe = Command::new(bin("fdgrab-inject-probe"))
        .args([t.pid.to_string(), "60".into()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("probe");
    let mut out = BufReader::new(probe.stdout.take().expect("stdout"));
    assert_eq!(
        read_line_timeout(&mut out, TIMEOUT).expect("attached"),
        "attached"
    );
    assert_eq!(
        status_field(t.pid, "TracerPid").as_deref(),
        Some(probe.id().to_string().as_str())
    );
    let sent = Instant::now();
    fdgrab::PidFd::open(probe.id() as i32)
        .expect("pidfd")
        .send_signal(sig)
        .expect("signal");
    let st = fdgrab_testkit::wait_timeout(&mut probe, TIMEOUT).expect("probe exits");
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "the session ends promptly on signal {sig}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(sig), "the probe dies of signal {sig}");
    assert!(
        read_line_timeout(&mut out, Duration::from_millis(100)).is_err(),
        "it never finished normally"
    );
    assert_eq!(injection_leftovers(t.pid, &before.0, &before.1), None);
    send_line(&mut t, "after\n");
    assert_eq!(json_line(&mut t)["data"], "after\n");
}

#[test]
fn inject_cli_ptrace_into_another_netns() {
    // The rendezvous name is abstract, so it must be created in the target's netns.
    let mut cmd = Command::new("unshare");
    cmd.args(["--net"])
        .arg(bin("fdgrab-target"))
        .arg("blocked-read");
    let t = Target::spawn_cmd(cmd);
    let ours = std::fs::read_link("/proc/self/ns/net").expect("ns");
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/net", t.pid)).expect("ns"),
        ours
    );
    cat_file_by_ptrace(&t);
}

#[test]
fn inject_cli_ptrace_when_leader_exited() {
    let t = Target::spawn(["leader-exit"]);
    fdgrab_testkit::wait_leader_zombie(t.pid);
    assert!(
        status_field(t.pid, "State").is_some_and(|s| s.starts_with('Z')),
        "leader should be a zombie"
    );
    let fd = t.fd_labelled("pipe-w").to_string();
    let sock = tmp("leader-exit.sock");
    let _ = std::fs::remove_file(&sock);
    let l = UnixListener::bind(&sock).expect("bind");
    let out = run_fdgrab([
        "send",
        "--json",
        "--backend",
        "ptrace",
        &t.pid.to_string(),
        &fd,
        "--to",
        sock.to_str().expect("utf8"),
    ]);
    assert_ok(&out);
    let (conn, _) = l.accept().expect("accept");
    let mut buf = [0u8; 64];
    assert_eq!(
        fdgrab::passfd::recv_fds(&conn, &mut buf, 4)
            .expect("recv")
            .fds
            .len(),
        1
    );
    let threads_only = (String::new(), Vec::new());
    let left = injection_leftovers(t.pid, &threads_only.0, &threads_only.1);
    assert!(
        left.as_deref().is_none_or(|m| m.starts_with("fd table")),
        "{left:?}"
    );
}

#[test]
fn inject_cli_errors_name_the_target() {
    let t = Target::spawn(["deny-socket"]);
    wait_in_read(t.pid);
    let before = snapshot(t.pid);
    let pid = t.pid.to_string();
    let out = run_fdgrab([
        "cat",
        "--backend",
        "ptrace",
        &pid,
        &t.fd_labelled("file").to_string(),
    ]);
    // As root the filter refusing socket() is suspended for the injected calls (see
    // inject_seccomp_cli.rs for the refusals).
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inject test file\n");
    let out = run_fdgrab(["redirect", &pid, "55", "/dev/null"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no open fd 55"));
    let out = run_fdgrab(["redirect", "--undo", &pid, "1", "notanumber"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_fdgrab(["redirect", "--undo", &pid, "1", "300"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(injection_leftovers(t.pid, &before.0, &before.1), None);
}

#[test]
fn inject_cli_ptrace_permission_denied_as_another_user() {
    use std::os::unix::process::CommandExt;
    let t = Target::spawn(["blocked-read"]);
    let before = snapshot(t.pid);
    let mut cmd = fdgrab();
    cmd.args(["cat", "--backend", "ptrace", &t.pid.to_string(), "0"])
        .uid(65534)
        .gid(65534);
    let out = output_timeout(&mut cmd, TIMEOUT);
    let err = failure_text(&out, 4);
    assert!(
        err.contains("PTRACE_SEIZE") && err.contains(&t.pid.to_string()),
        "{err}"
    );
    assert_eq!(injection_leftovers(t.pid, &before.0, &before.1), None);
}

#[test]
fn inject_cli_auto_works_without_pidfd_open() {
    let mut t = Target::spawn(["blocked-read"]);
    wait_in_read(t.pid);
    let before = snapshot(t.pid);
    let pid = t.pid.to_string();
    let fd = t.fd_labelled("file").to_string();
    let both = "pidfd_open,pidfd_getfd";
    // The pidfd backend cannot work at all: exit 3, naming pidfd_open.
    let out = fdgrab_with_enosys(both, &["cat", "--backend", "pidfd", &pid, &fd]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pidfd_open"));
    // auto: the process is named through /proc and the fd taken by ptrace.
    let out = fdgrab_with_enosys(both, &["-vv", "cat", &pid, &fd]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inject test file\n");
    assert!(
        err.contains("through /proc") && err.contains("falling back to ptrace"),
        "{err}"
    );
    // put and redirect need only ptrace.
    let path = tmp("no-pidfd-open.txt");
    let out = fdgrab_with_enosys(
        both,
        &[
            "redirect",
            "--json",
            &pid,
            "1",
            path.to_str().expect("utf8"),
        ],
    );
    let doc = success_json(&out);
    send_line(&mut t, "via proc\n");
    wait_for_text(&path, "via proc");
    let saved = doc["saved_fd"].to_string();
    assert_ok(&fdgrab_with_enosys(
        both,
        &["redirect", "--undo", &pid, "1", &saved],
    ));
    assert_eq!(injection_leftovers(t.pid, &before.0, &before.1), None);
    // A pid that does not exist, through /proc: exit 5.
    let out = fdgrab_with_enosys(both, &["cat", "999999999", "0"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
