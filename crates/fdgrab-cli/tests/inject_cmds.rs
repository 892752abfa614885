//! `--backend`, `steal`, `put` and `redirect` end to end, against real processes.

use fdgrab_testkit::{
    assert_success as assert_ok, bin, fdgrab, injection_leftovers, output_timeout, proc_fds,
    read_line_timeout, run_fdgrab, status_field, test_path, Target, TIMEOUT,
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
    test_path("fdgrab-inject-cli", name)
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
    let out = run_fdgrab(["-v", "cat", "--backend", "ptrace", &t.pid.to_string(), &fd]);
    assert_ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inject test file\n");
    // The ptrace backend really did it (a --backend that was ignored would say
    // pidfd_getfd here).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("(method: ptrace)"), "{err}");
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
        let method = if expect == "pidfd" {
            "pidfd_getfd"
        } else {
            "ptrace"
        };
        assert_eq!(doc["method"], method, "{doc}");
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
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'gdb'") && err.contains("auto, pidfd, ptrace"),
        "{err}"
    );
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
    let sock = absent("fallback.sock");
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
                "-v",
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
            .stderr(Stdio::piped())
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
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("stderr");
        let method = if backend == "ptrace" {
            "ptrace"
        } else {
            "pidfd_getfd"
        };
        assert!(
            err.contains(&format!("stolen (method: {method})")),
            "{backend}: {err}"
        );
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
    assert_eq!(out.status.code(), Some(127), "CMD not found");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("command '/nonexistent/command' not found")
    );
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
    let sock = absent("leader-exit.sock");
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
    assert_eq!(success_json(&out)["method"], "ptrace");
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
        err.contains("ptrace") && err.contains(&t.pid.to_string()),
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

/// What a refused command must leave exactly as it was: the target (alive, running,
/// untraced, same maps and fds) and the user's files (same bytes, or still absent).
struct Untouched {
    pid: i32,
    before: (String, Vec<String>),
    files: Vec<(std::path::PathBuf, Option<Vec<u8>>)>,
}

impl Untouched {
    fn new(pid: i32, files: &[&std::path::Path]) -> Self {
        Untouched {
            pid,
            before: snapshot(pid),
            files: files
                .iter()
                .map(|p| (p.to_path_buf(), std::fs::read(p).ok()))
                .collect(),
        }
    }

    /// `what` names the command in the failure message.
    fn check(&self, what: &str) {
        let state = status_field(self.pid, "State").unwrap_or_default();
        assert!(
            !state.is_empty() && !state.starts_with('Z') && !state.starts_with('X'),
            "{what}: target {} is gone ({state})",
            self.pid
        );
        assert_eq!(
            injection_leftovers(self.pid, &self.before.0, &self.before.1),
            None,
            "{what}"
        );
        for (path, content) in &self.files {
            assert_eq!(
                &std::fs::read(path).ok(),
                content,
                "{what}: {} changed",
                path.display()
            );
        }
    }
}

/// A user file with content that a refused command must not change.
fn precious(name: &str) -> std::path::PathBuf {
    let path = tmp(name);
    std::fs::write(&path, b"precious content\n").expect("write");
    path
}

/// A path that a refused command must not create.
fn absent(name: &str) -> std::path::PathBuf {
    let path = tmp(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// A zombie: a child of this test that has exited and is not reaped yet.
fn zombie() -> std::process::Child {
    let child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id() as i32;
    let deadline = Instant::now() + TIMEOUT;
    while !status_field(pid, "State").is_some_and(|s| s.starts_with('Z')) {
        assert!(Instant::now() < deadline, "{pid} never became a zombie");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

/// The target's soft RLIMIT_NOFILE, from its own /proc entry.
fn nofile_limit(pid: i32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a numeric open-file limit")
}

#[test]
fn refused_put_and_redirect_touch_no_file_and_no_target() {
    let t = Target::spawn(["blocked-read"]);
    wait_in_read(t.pid);
    let pid = t.pid.to_string();
    let keep = precious("refusal-keep.txt");
    let fresh = absent("refusal-fresh.txt");
    let marker = absent("refusal-cmd-ran");
    let (keep_s, fresh_s, marker_s) = (
        keep.to_str().expect("utf8"),
        fresh.to_str().expect("utf8"),
        marker.to_str().expect("utf8"),
    );
    let guard = Untouched::new(t.pid, &[&keep, &fresh, &marker]);
    let mut z = zombie();
    let zpid = z.id().to_string();
    let limit = nofile_limit(t.pid).to_string();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["redirect", &zpid, "1", keep_s], 5, "no such process"),
        (
            vec!["redirect", "--append", &zpid, "1", keep_s],
            5,
            "no such process",
        ),
        (vec!["redirect", &pid, "999", keep_s], 5, "no open fd 999"),
        (vec!["redirect", &pid, "999", fresh_s], 5, "no open fd 999"),
        (
            vec!["put", &pid, &limit, "--file", fresh_s],
            2,
            "open-file limit",
        ),
        (
            vec!["put", &pid, "20000000", "--file", keep_s],
            2,
            "open-file limit",
        ),
        (
            vec!["put", &zpid, "5", "--file", keep_s],
            5,
            "no such process",
        ),
        (vec!["put", "2", "1", "--file", keep_s], 2, "kernel thread"),
        (vec!["redirect", "2", "1", fresh_s], 2, "kernel thread"),
        (
            vec!["steal", &pid, "999", "--", "touch", marker_s],
            5,
            "no open fd 999",
        ),
        (
            vec!["steal", &zpid, "0", "--", "touch", marker_s],
            5,
            "no such process",
        ),
        (
            vec!["get", &pid, "999", "--", "touch", marker_s],
            5,
            "no open fd 999",
        ),
        (
            vec!["get", "2", "0", "--", "touch", marker_s],
            2,
            "kernel thread",
        ),
    ];
    for (args, code, needle) in &cases {
        let out = run_fdgrab(args);
        let err = failure_text(&out, *code);
        assert!(err.contains(needle), "{args:?}: {err}");
        if *code == 2 && needle.contains("limit") {
            assert!(err.contains(&limit), "the limit is named: {err}");
        }
        guard.check(&format!("{args:?}"));
    }
    let _ = z.wait();
}

#[test]
fn refused_when_another_tracer_holds_the_target() {
    let t = Target::spawn(["blocked-read"]);
    wait_in_read(t.pid);
    let pid = t.pid.to_string();
    let keep = precious("traced-keep.txt");
    let marker = absent("traced-cmd-ran");
    let guard = Untouched::new(t.pid, &[&keep, &marker]);
    let mut strace = Command::new("strace")
        .args(["-q", "-o", "/dev/null", "-p", &pid])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace");
    let deadline = Instant::now() + TIMEOUT;
    while status_field(t.pid, "TracerPid").as_deref() != Some(&strace.id().to_string()) {
        assert!(Instant::now() < deadline, "strace never attached");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (keep_s, marker_s) = (keep.to_str().expect("utf8"), marker.to_str().expect("utf8"));
    let cases: Vec<Vec<&str>> = vec![
        vec!["redirect", &pid, "1", keep_s],
        vec!["put", &pid, "1", "--file", keep_s],
        vec!["steal", &pid, "0", "--", "touch", marker_s],
        vec!["cat", "--backend", "ptrace", &pid, "0"],
        // A ptrace copy has no attach preflight: its seize is refused alike.
        vec![
            "get",
            "--backend",
            "ptrace",
            &pid,
            "0",
            "--",
            "touch",
            marker_s,
        ],
    ];
    for args in &cases {
        let out = run_fdgrab(args);
        let err = failure_text(&out, 4);
        assert!(
            err.contains("already traced by process") && err.contains(&strace.id().to_string()),
            "{args:?}: {err}"
        );
        assert!(!marker.exists(), "{args:?} started CMD");
        assert_eq!(std::fs::read(&keep).expect("keep"), b"precious content\n");
    }
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = fdgrab_testkit::wait_timeout(&mut strace, TIMEOUT);
    let deadline = Instant::now() + TIMEOUT;
    while status_field(t.pid, "TracerPid").as_deref() != Some("0") {
        assert!(Instant::now() < deadline, "strace never detached");
        std::thread::sleep(Duration::from_millis(10));
    }
    guard.check("after the tracer left");
}

/// `redirect --undo` acts only on the saved fd that `redirect` made for that fd:
/// a typo (`--undo PID 1 2`), another fd's saved copy, or a saved number the
/// process has since reused are refused with exit 2 and change nothing.
#[test]
fn undo_accepts_only_the_saved_fd_redirect_made() {
    let mut t = Target::spawn(["blocked-read"]);
    wait_in_read(t.pid);
    let pid = t.pid.to_string();
    let log = tmp("undo-only-ours.log");
    let log2 = tmp("undo-only-ours-2.log");
    let doc = success_json(&run_fdgrab([
        "redirect",
        "--json",
        &pid,
        "1",
        log.to_str().expect("utf8"),
    ]));
    let saved = doc["saved_fd"].as_i64().expect("saved_fd").to_string();
    // The same process's stderr, redirected too: its saved fd is not fd 1's.
    let doc2 = success_json(&run_fdgrab([
        "redirect",
        "--json",
        &pid,
        "2",
        log2.to_str().expect("utf8"),
    ]));
    let saved2 = doc2["saved_fd"].as_i64().expect("saved_fd").to_string();
    let guard = Untouched::new(t.pid, &[&log, &log2]);
    for wrong in ["2", "0", saved2.as_str()] {
        let out = run_fdgrab(["redirect", "--undo", &pid, "1", wrong]);
        let err = failure_text(&out, 2);
        assert!(
            err.contains("not a saved fd") && err.contains("nothing was changed"),
            "{wrong}: {err}"
        );
        guard.check(&format!("--undo 1 {wrong}"));
    }
    // The process reuses the saved number for something else: refused too.
    let other = tmp("undo-only-ours-other");
    std::fs::write(&other, b"x").expect("write");
    assert_ok(&run_fdgrab([
        "put",
        &pid,
        &saved2,
        "--read",
        "--file",
        other.to_str().expect("utf8"),
    ]));
    let guard = Untouched::new(t.pid, &[&log, &log2]);
    let err = failure_text(&run_fdgrab(["redirect", "--undo", &pid, "2", &saved2]), 2);
    assert!(err.contains("no longer the file"), "{err}");
    guard.check("--undo of a reused saved fd");
    // The real one works, once.
    assert_ok(&run_fdgrab(["redirect", "--undo", &pid, "1", &saved]));
    send_line(&mut t, "after undo\n");
    let line = json_line(&mut t);
    assert_eq!(line["data"], "after undo\n", "stdout is the pipe again");
    assert!(!std::path::Path::new(&format!("/proc/{pid}/fd/{saved}")).exists());
    let out = run_fdgrab(["redirect", "--undo", &pid, "1", &saved]);
    failure_text(&out, 5);
}

/// CPU ticks (utime + stime) a process has used so far.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(')').expect("comm").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// The only socket in `pid`'s fd table.
fn only_socket_fd(pid: i32) -> String {
    let socks: Vec<String> = proc_fds(pid)
        .into_iter()
        .filter(|l| l.contains("socket:"))
        .map(|l| l.split(' ').next().expect("fd").to_string())
        .collect();
    assert_eq!(socks.len(), 1, "{pid}: {socks:?}");
    socks[0].clone()
}

/// A new server for a stolen listener at fd 3: answers one connection with "new",
/// then holds the listener until its stdin (fdgrab's, a pipe of the test) closes.
const NEW_SERVER: &str = r#"
import os, socket, sys
os.close(2)
s = socket.socket(fileno=3)
# The description is shared: the old server may have made it non-blocking.
s.setblocking(True)
c, _ = s.accept()
c.sendall(b'new\n')
c.close()
sys.stdin.read()
"#;

fn fetch_line(port: u16) -> String {
    use std::io::Read;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s
}

/// python3 -m http.server polls its listener (selectors.PollSelector): after a steal
/// it would spin on the closed fd, so `--signal-old TERM` stops it once the fd is
/// taken, and the new server gets the connections.
#[test]
fn steal_listener_from_a_poll_server_with_signal_old() {
    let mut old = Command::new("python3")
        .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let mut out = BufReader::new(old.stdout.take().expect("stdout"));
    let banner = read_line_timeout(&mut out, TIMEOUT).expect("banner");
    let port: u16 = banner
        .split(" port ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {banner:?}"));
    let pid = old.id() as i32;
    let fd = only_socket_fd(pid);
    let mut steal = fdgrab();
    steal
        .args([
            "steal",
            "--signal-old",
            "TERM",
            &pid.to_string(),
            &format!("{fd}:3"),
        ])
        .args(["--", "python3", "-c", NEW_SERVER])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut steal = steal.spawn().expect("fdgrab steal");
    // The old server is told to go once the fd is taken: it exits, never spins.
    let status = fdgrab_testkit::wait_timeout(&mut old, TIMEOUT).expect("old server exits");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
    assert_eq!(fetch_line(port), "new\n", "the new server answers");
    drop(steal.stdin.take());
    let status = fdgrab_testkit::wait_timeout(&mut steal, TIMEOUT).expect("steal ends");
    assert!(status.success(), "fdgrab exits with CMD's status");
}

/// An epoll server keeps the stolen listener in its epoll set; with no signal it
/// stays alive and idle (it is not the one accepting), which the CPU it uses after
/// the steal shows. The steal warns about poll servers all the same.
#[test]
fn steal_listener_from_an_epoll_server_leaves_it_idle() {
    let code = r#"
import json, selectors, socket
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen()
s.setblocking(False)
sel = selectors.EpollSelector()
sel.register(s, selectors.EVENT_READ)
print(json.dumps({'port': s.getsockname()[1], 'fd': s.fileno()}), flush=True)
while True:
    for key, _ in sel.select():
        try:
            c, _ = s.accept()
            c.sendall(b'old\n')
            c.close()
        except OSError:
            pass
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", code]);
    let t = Target::spawn_cmd(cmd);
    let port = t.report["port"].as_u64().expect("port") as u16;
    let fd = t.report["fd"].as_i64().expect("fd");
    let mut steal = fdgrab();
    steal
        .args(["steal", &t.pid.to_string(), &format!("{fd}:3")])
        .args(["--", "python3", "-c", NEW_SERVER])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut steal = steal.spawn().expect("fdgrab steal");
    let deadline = Instant::now() + TIMEOUT;
    while std::path::Path::new(&format!("/proc/{}/fd/{fd}", t.pid)).exists() {
        assert!(
            Instant::now() < deadline,
            "fd {fd} never left the old server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(fetch_line(port), "new\n", "the new server answers");
    let before = cpu_ticks(t.pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(t.pid) - before;
    let hz = 100.0; // USER_HZ
    let share = used as f64 / hz / start.elapsed().as_secs_f64();
    eprintln!("epoll server CPU after the steal: {:.0}%", share * 100.0);
    assert!(
        share < 0.5,
        "the old epoll server spins: {:.0}% CPU",
        share * 100.0
    );
    assert!(status_field(t.pid, "State").is_some_and(|s| !s.starts_with('Z')));
    drop(steal.stdin.take());
    let out = steal.wait_with_output().expect("steal output");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a listening socket"), "{err}");
}

/// A refusal that only the injection itself meets (the target's seccomp filter
/// makes the injected socket() fail) still leaves the user's files alone: the file
/// is truncated only right before the install, and a file the command created is
/// removed again.
#[test]
fn failed_injection_leaves_files_as_they_were() {
    let t = Target::spawn(["deny-socket"]);
    wait_in_read(t.pid);
    let pid = t.pid.to_string();
    let keep = precious("inject-fails-keep.txt");
    let fresh = absent("inject-fails-fresh.txt");
    let guard = Untouched::new(t.pid, &[&keep, &fresh]);
    let (keep_s, fresh_s) = (keep.to_str().expect("utf8"), fresh.to_str().expect("utf8"));
    // As root fdgrab would suspend the target's filter for its calls; running under
    // a seccomp filter itself it can neither read nor suspend it, and --force makes
    // it inject anyway, so the injected socket() really fails inside the target.
    for args in [
        vec!["redirect", "--force", &pid, "1", keep_s],
        vec!["redirect", "--force", &pid, "1", fresh_s],
        vec!["put", "--force", &pid, "1", "--file", keep_s],
        vec!["put", "--force", &pid, "9", "--file", fresh_s],
        vec!["put", "--force", &pid, "9", "--append", "--file", fresh_s],
    ] {
        let err = failure_text(&fdgrab_without_getfd(&args), 4);
        assert!(err.contains("socket"), "{args:?}: {err}");
        guard.check(&format!("{args:?}"));
    }
}

/// Another thread of the target runs `execve` while fdgrab waits for the traced
/// thread in one of its calls (the second thread, once the main one is traced,
/// holds the session's `munmap` with a user-notification filter and then execs
/// `/bin/sleep`). The kernel kills the traced thread and hands its pid to the new
/// program without waking a tracer that waits for that pid: fdgrab used to wait
/// for ever there. It must notice, fail naming the execve, and leave the new
/// program running, untraced, with no fd of the session's. When the filter comes
/// too late the put simply succeeds, so cases are tried until the exec is met.
#[test]
fn exec_in_another_thread_during_a_session_ends_it() {
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip("a filter installed for all threads with TSYNC needs root here");
        return;
    }
    exec_during_session("exec-when-traced");
}

/// [`exec_in_another_thread_during_a_session_ends_it`] in a process whose main
/// thread has exited, so that fdgrab traces another thread: the execve kills that
/// one outright (its exit is reported to fdgrab) and the process lives on. fdgrab
/// said "no such process" there.
#[test]
fn exec_during_a_session_with_the_leader_gone_names_the_execve() {
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip("a filter installed for all threads with TSYNC needs root here");
        return;
    }
    exec_during_session("leader-exit-exec-when-traced");
}

fn exec_during_session(mode: &str) {
    for _ in 0..40 {
        let t = Target::spawn([mode]);
        let pid = t.pid.to_string();
        let out = output_timeout(
            fdgrab().args(["put", &pid, "9", "--file", "/dev/null"]),
            Duration::from_secs(20),
        );
        if out.status.success() {
            continue;
        }
        let err = failure_text(&out, 1);
        assert!(err.contains(&pid) && err.contains("execve"), "{err}");
        let deadline = Instant::now() + TIMEOUT;
        let cmdline = |p: &str| std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        while !cmdline(&pid).starts_with(b"/bin/sleep\0") {
            assert!(Instant::now() < deadline, "the new program never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(status_field(t.pid, "TracerPid").as_deref(), Some("0"));
        let state = status_field(t.pid, "State").unwrap_or_default();
        assert!(state.starts_with('S'), "{state}");
        let fds = proc_fds(t.pid);
        assert!(!fds.iter().any(|l| l.contains("socket:")), "{fds:?}");
        return;
    }
    panic!("the exec was never met in 40 puts");
}

/// A process whose fd table is full up to its open-file limit but for one number:
/// `put` needs two there (its socket and the fd it receives), the kernel then
/// drops the fd from the message (`MSG_CTRUNC`). The error must say the table is
/// full (it said "received no fd ... Protocol error"), and a full table refuses
/// a grab the same way; the process keeps its fds, mappings and signal state.
#[test]
fn put_and_grab_into_a_full_fd_table_say_so() {
    let script = "import os, resource, sys\n\
        resource.setrlimit(resource.RLIMIT_NOFILE, (16, 4096))\n\
        fds = []\n\
        try:\n    while True: fds.append(os.open('/dev/null', os.O_RDONLY))\n\
        except OSError: pass\n\
        os.close(fds.pop())\n\
        print('{\"fds\": %d}' % len(fds), flush=True)\n\
        sys.stdin.read()\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]);
    let t = Target::spawn_cmd(cmd);
    let pid = t.pid.to_string();
    let before = fdgrab_testkit::Snapshot::take(t.pid);
    let file = tmp("full-table");
    let path = file.to_str().expect("utf-8 path");
    let out = output_timeout(fdgrab().args(["put", &pid, "5", "--file", path]), TIMEOUT);
    let err = failure_text(&out, 1);
    assert!(
        err.contains(&pid) && err.contains("no free fd number below its open-file limit"),
        "{err}"
    );
    before.assert_no_leftovers(&before.fds, "put into a full table");
    assert!(!file.exists(), "put left the file it created");
    // One free number is enough for the grab's socket.
    let grab = || {
        output_timeout(
            fdgrab().args(["get", "--backend", "ptrace", &pid, "5", "--", "true"]),
            TIMEOUT,
        )
    };
    assert_ok(&grab());
    before.assert_no_leftovers(&before.fds, "a grab with one free number");
    // None: the limit lowered to that number.
    fdgrab_testkit::fill_fd_table(t.pid);
    let err = failure_text(&grab(), 1);
    assert!(
        err.contains("no free fd number below its open-file limit"),
        "{err}"
    );
    before.assert_no_leftovers(&before.fds, "a grab into a full table");
}

/// Stealing fd 0, 1 or 2 with a close frees a number the process uses without
/// looking: its next `open` gets it, and its output goes into that file. `steal`
/// says so (naming the pid and fd, and `--null`); with `--null` it has no reason to.
#[test]
fn steal_of_a_standard_fd_warns_unless_null() {
    let mut sleep = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sleep");
    let pid = sleep.id().to_string();
    let out = run_fdgrab(["steal", &pid, "1", "--", "true"]);
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("fd 1 is process {pid}'s standard output")) && err.contains("--null"),
        "{err}"
    );
    let out = run_fdgrab(["steal", "--null", &pid, "0", "2", "--", "true"]);
    assert_ok(&out);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = sleep.kill();
    let _ = sleep.wait();
}

/// A SIGSTOP and then a SIGCONT (job control, a supervisor pausing a process) that
/// land while fdgrab injects: the process must end up as the last signal left it,
/// running. fdgrab used to send the process another SIGSTOP at the end of every
/// session that had met one "to make sure", which stopped it for good when the
/// SIGCONT had come in between. The target's second thread holds the session's
/// last call (`munmap`, through a user-notification filter it adds once the main
/// thread is traced) until both signals have been sent.
#[test]
fn stop_and_cont_during_a_session_leave_the_process_running() {
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip("a filter installed for all threads with TSYNC needs root here");
        return;
    }
    // When the filter comes too late (a busy machine), the grab simply succeeds
    // without being held: tried again.
    for _ in 0..20 {
        let mut t = Target::spawn(["hold-unmap-when-traced"]);
        let fd = t.fd_labelled("file").to_string();
        let mut grab = fdgrab()
            .args([
                "get",
                "--backend",
                "ptrace",
                &t.pid.to_string(),
                &fd,
                "--",
                "true",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("fdgrab");
        let deadline = Instant::now() + TIMEOUT;
        let held = loop {
            assert!(Instant::now() < deadline, "fdgrab neither held nor done");
            let stdout = t.stdout.as_mut().expect("stdout");
            if let Ok(line) = read_line_timeout(stdout, Duration::from_millis(200)) {
                break line.contains("held");
            }
            if grab.try_wait().expect("try_wait").is_some() {
                break false;
            }
        };
        if held {
            stop_and_cont_while_held(&mut t, &mut grab);
            return;
        }
        let _ = fdgrab_testkit::wait_timeout(&mut grab, TIMEOUT);
    }
    panic!("the session was never held in 20 grabs");
}

fn stop_and_cont_while_held(t: &mut Target, grab: &mut std::process::Child) {
    let pid = t.pid;
    let kill = |sig| {
        // SAFETY: kill with the pid of our own child, not reaped, and a signal number.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
    };
    kill(libc::SIGSTOP);
    // The group stop has reached the thread that holds the call.
    let deadline = Instant::now() + TIMEOUT;
    let holder_stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_str() != Some(&pid.to_string()))
            .any(|e| {
                std::fs::read_to_string(e.path().join("status"))
                    .is_ok_and(|s| s.lines().any(|l| l.starts_with("State:\tT")))
            })
    };
    while !holder_stopped() {
        assert!(Instant::now() < deadline, "the group stop never came");
        std::thread::sleep(Duration::from_millis(5));
    }
    kill(libc::SIGCONT);
    let status = fdgrab_testkit::wait_timeout(grab, TIMEOUT).expect("fdgrab ended");
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(100));
    let state = status_field(pid, "State").unwrap_or_default();
    assert!(!state.starts_with('T'), "left stopped: {state}");
    assert_eq!(status_field(pid, "TracerPid").as_deref(), Some("0"));
    send_line(t, "still there\n");
    assert_eq!(json_line(t)["data"], "still there\n");
}

/// A `close` frees its fd number whatever the file's flush answers: an error
/// (`EIO` from a network or FUSE file whose last write failed) is reported after
/// the fact. `steal` took it for a failed close and said the process "still has"
/// an fd it no longer had, exiting with an error although the command ran and the
/// steal was done.
#[test]
fn steal_whose_close_reports_a_flush_error_is_done() {
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("steal-flush-error") else {
        fdgrab_testkit::skip("FUSE cannot be mounted here");
        return;
    };
    let mut target = Command::new("sh")
        .args(["-c", "exec 3<\"$0\"; exec sleep 60", &fs.file()])
        .spawn()
        .expect("sh");
    let pid = target.id();
    let fd3 = format!("/proc/{pid}/fd/3");
    let deadline = Instant::now() + TIMEOUT;
    while std::fs::read_link(&fd3).map_or(true, |p| !p.ends_with("f"))
        || std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p.ends_with("sh"))
    {
        assert!(
            Instant::now() < deadline,
            "the target never opened the file"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    fs.fail_flushes(libc::EIO);
    let mut steal = fdgrab()
        .args([
            "steal",
            "--backend",
            "ptrace",
            &pid.to_string(),
            "3",
            "--",
            "true",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("fdgrab");
    let status = fdgrab_testkit::wait_timeout(&mut steal, TIMEOUT).expect("fdgrab ended");
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut steal.stderr.take().expect("stderr"), &mut err);
    let gone = std::fs::symlink_metadata(&fd3).is_err();
    let _ = target.kill();
    let _ = target.wait();
    assert!(status.success(), "{status:?}: {err}");
    assert!(!err.contains("still has"), "{err}");
    assert!(gone, "fd 3 is still there");
}
