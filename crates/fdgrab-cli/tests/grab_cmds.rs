//! `get`, `cat` and `send` end to end, against real processes.

use fdgrab_testkit::{output_timeout, run_fdgrab, Target, TIMEOUT};
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// `sleep` holds the write end of a pipe at fd 5; `get` installs it as stdout of a
/// shell, whose output must come out of our read end.
#[test]
fn get_into_sh_writes_to_the_targets_pipe() {
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    let wraw = w.as_raw_fd();
    let mut sleep = Command::new("sleep");
    sleep.arg("60");
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        sleep.pre_exec(move || {
            if libc::dup2(wraw, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut sleep = sleep.spawn().expect("sleep");
    drop(w);
    let out = run_fdgrab([
        "get",
        &sleep.id().to_string(),
        "5:1",
        "--",
        "sh",
        "-c",
        "echo hello from sh; exit 3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit status passes through: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = sleep.kill();
    let _ = sleep.wait();
    let mut got = String::new();
    std::fs::File::from(r)
        .read_to_string(&mut got)
        .expect("read");
    assert_eq!(got, "hello from sh\n");
}

#[test]
fn get_installs_several_fds_without_cloexec() {
    let t = Target::spawn(["zoo"]);
    let file = t.fd_labelled("file");
    let memfd = t.fd_labelled("memfd");
    // The child names its fd 7, prints its fdinfo flags, and reads the memfd via 8.
    let script = "readlink /proc/$$/fd/7; grep flags /proc/$$/fdinfo/7; cat <&8";
    let spec10 = format!("{file}:7");
    let spec11 = format!("{memfd}:8");
    let out = run_fdgrab([
        "get",
        &t.pid.to_string(),
        &spec10,
        &spec11,
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("file.txt"), "{text}");
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .expect("flags line");
    assert_eq!(
        flags & 0o2000000,
        0,
        "close-on-exec must be cleared in the command: {text}"
    );
    // The memfd's shared offset was 3: the child reads from there ("fd payload").
    assert!(text.contains("fd payload"), "{text}");
    // Reading through the shared description moved the target's offset too.
    assert_eq!(fdgrab_testkit::proc_offset(t.pid, memfd), 13);
}

#[test]
fn get_refuses_two_fds_for_one_number() {
    let t = Target::spawn(["zoo"]);
    let a = format!("{}:9", t.fd_labelled("file"));
    let b = format!("{}:9", t.fd_labelled("memfd"));
    let out = run_fdgrab(["get", &t.pid.to_string(), &a, &b, "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fd number 9"));
}

#[test]
fn cat_recovers_memfd_and_deleted_file_without_moving_offsets() {
    let t = Target::spawn(["zoo"]);
    for label in ["memfd", "deleted", "file"] {
        let fd = t.fd_labelled(label);
        let before = fdgrab_testkit::proc_offset(t.pid, fd);
        let out = run_fdgrab(["cat", &t.pid.to_string(), &fd.to_string()]);
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = match label {
            "file" => "hello, world\n",
            _ => t.fd_report(fd.into())["content"].as_str().expect("content"),
        };
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{label}");
        assert_eq!(
            fdgrab_testkit::proc_offset(t.pid, fd),
            before,
            "{label}: offset moved"
        );
    }
}

#[test]
fn cat_of_pipe_needs_consume() {
    let t = Target::spawn(["zoo"]);
    let r = t.fd_labelled("pipe-r");
    let out = run_fdgrab(["cat", &t.pid.to_string(), &r.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--consume") && err.contains("pipe") && err.contains(&r.to_string()),
        "{err}"
    );

    // With --consume, data written into the target's pipe comes out of cat. Put some
    // data in through the write end (via get), then close every writer so cat ends.
    let w = t.fd_labelled("pipe-w");
    let out = run_fdgrab([
        "get",
        &t.pid.to_string(),
        &format!("{w}:1"),
        "--",
        "printf",
        "queued bytes",
    ]);
    assert!(out.status.success());
    // The target still holds the write end, so read exactly what is queued via get+head.
    let out = run_fdgrab([
        "get",
        &t.pid.to_string(),
        &format!("{r}:0"),
        "--",
        "head",
        "-c",
        "12",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "queued bytes");
    let dir = run_fdgrab(["cat", &t.pid.to_string(), &t.fd_labelled("dir").to_string()]);
    assert_eq!(dir.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dir.stderr).contains("directory"));
}

#[test]
fn cat_consume_reads_a_pipe_until_eof() {
    // `sh` holds the read end at fd 0 and sleeps; we own the only write end.
    let mut child = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::piped())
        .spawn()
        .expect("sleep");
    let mut stdin = child.stdin.take().expect("stdin");
    use std::io::Write;
    stdin
        .write_all(b"consumed through the target\n")
        .expect("write");
    drop(stdin);
    let out = run_fdgrab(["cat", &child.id().to_string(), "0", "--consume"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "consumed through the target\n"
    );
}

#[test]
fn send_to_a_listening_unix_socket() {
    let t = Target::spawn(["zoo"]);
    let dir = std::env::temp_dir().join(format!("fdgrab-send-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("recv.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    let labels = ["memfd", "tcp-listen", "pipe-r"];
    let fds: Vec<String> = labels
        .iter()
        .map(|l| t.fd_labelled(l).to_string())
        .collect();
    let mut args = vec!["send".to_string(), t.pid.to_string()];
    args.extend(fds.iter().cloned());
    args.extend(["--to".to_string(), path.to_string_lossy().into_owned()]);
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.args(&args);
    let sender = std::thread::spawn(move || output_timeout(&mut cmd, TIMEOUT));
    let (conn, _) = listener.accept().expect("accept");
    conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = [0u8; 256];
    let got = fdgrab::passfd::recv_fds(&conn, &mut buf, 16).expect("recv");
    let header = String::from_utf8_lossy(&buf[..got.len]).into_owned();
    assert_eq!(
        header,
        format!("fdgrab pid={} fds={}\n", t.pid, fds.join(","))
    );
    assert_eq!(got.fds.len(), 3);
    for (label, fd) in labels.iter().zip(&got.fds) {
        let ino = rustix::fs::fstat(fd).expect("fstat").st_ino;
        let want = t.fd_report(t.fd_labelled(label).into())["ino"].as_u64();
        assert_eq!(Some(ino), want, "{label}");
    }
    let out = sender.join().expect("sender");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _: Vec<OwnedFd> = got.fds;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn send_to_a_missing_socket_fails_cleanly() {
    let t = Target::spawn(["zoo"]);
    let out = run_fdgrab([
        "send",
        &t.pid.to_string(),
        "0",
        "--to",
        "/nonexistent/fdgrab.sock",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/fdgrab.sock"));
}

/// Destinations near the fd limit work (sources are parked on free numbers, not
/// above the highest destination), and one past the limit is a usage error.
#[test]
fn get_near_the_fd_limit() {
    let t = Target::spawn(["zoo"]);
    let pid = t.pid.to_string();
    let file = t.fd_labelled("file");
    let fdgrab = fdgrab_testkit::bin("fdgrab");
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=1024:1024", "--"]).arg(&fdgrab).args([
        "get",
        &pid,
        &format!("{file}:1023"),
        "--",
        "sh",
        "-c",
        "readlink /proc/$$/fd/1023",
    ]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("file.txt"));

    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=1024:1024", "--"]).arg(&fdgrab).args([
        "get",
        &pid,
        &format!("{file}:1024"),
        "--",
        "true",
    ]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NEWFD 1024") && err.contains("1024"), "{err}");
}

/// A logger's view: a deleted log held `O_WRONLY|O_APPEND`, and a memfd reachable
/// only through a write-only fd. `cat` must read both through either backend,
/// leave the offsets where they were and the target's fd table as it was.
#[test]
fn cat_reads_write_only_deleted_log_and_memfd() {
    let dir = std::env::temp_dir().join(format!("fdgrab-cat-wronly-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let log = dir.join("app.log");
    let script = r#"
import json, os, sys
log = sys.argv[1]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
os.write(fd, b"line one\nline two\n")
os.unlink(log)
m = os.memfd_create("wronly-memfd")
os.write(m, b"memfd via a write-only fd")
w = os.open("/proc/self/fd/%d" % m, os.O_WRONLY)
os.close(m)
print(json.dumps({"log": fd, "memfd": w}), flush=True)
sys.stdin.read()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(&log);
    let t = Target::spawn_cmd(cmd);
    let pid = t.pid.to_string();
    for (label, want) in [
        ("log", "line one\nline two\n"),
        ("memfd", "memfd via a write-only fd"),
    ] {
        let fd = t.report[label].as_i64().expect("fd") as i32;
        // The premise: the target's fd really is write-only (O_ACCMODE == O_WRONLY).
        let fdinfo =
            std::fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", t.pid)).expect("fdinfo");
        let flags = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .expect("flags");
        assert_eq!(flags & 3, 1, "{label}: not write-only: {fdinfo}");
        let before = (
            fdgrab_testkit::proc_offset(t.pid, fd),
            fdgrab_testkit::proc_fds(t.pid),
        );
        for backend in ["pidfd", "ptrace"] {
            let out = run_fdgrab(["-v", "cat", "--backend", backend, &pid, &fd.to_string()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "{label} {backend}: {:?} {err}",
                out.status
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                want,
                "{label} {backend}"
            );
            let method = if backend == "pidfd" {
                "pidfd_getfd"
            } else {
                "ptrace"
            };
            assert!(
                err.contains(&format!("(method: {method})")),
                "{label} {backend}: {err}"
            );
            let after = (
                fdgrab_testkit::proc_offset(t.pid, fd),
                fdgrab_testkit::proc_fds(t.pid),
            );
            assert_eq!(
                after, before,
                "{label} {backend}: offset or fd table changed"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// io_uring fds cannot travel over a unix socket. `send` and `get --backend ptrace`
/// name the fd and the reason and take nothing, unless --skip-unpassable is given,
/// then the other fds go and the skipped one is named. `get` by pidfd_getfd (no
/// socket involved) installs it like any other fd.
#[test]
fn io_uring_fds_are_named_and_skipped_only_when_asked() {
    let t = Target::spawn(["zoo"]);
    let has_ring = t.report["fds"]
        .as_array()
        .is_some_and(|a| a.iter().any(|e| e["label"] == "io_uring"));
    if !has_ring {
        fdgrab_testkit::skip("io_uring_setup failed here (io_uring disabled?)");
        return;
    }
    let pid = t.pid.to_string();
    let ring = t.fd_labelled("io_uring").to_string();
    let file = t.fd_labelled("file").to_string();
    let dir = std::env::temp_dir().join(format!("fdgrab-uring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("recv.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let sock = path.to_str().expect("utf8");
    let fds_before = fdgrab_testkit::proc_fds(t.pid);

    let out = run_fdgrab(["send", &pid, &file, &ring, "--to", sock]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("fd {ring}"))
            && err.contains("io_uring")
            && err.contains("--skip-unpassable"),
        "{err}"
    );
    assert!(listener.accept().is_err(), "nothing may be sent");
    let ptrace_get = |extra: &[&str]| {
        let mut args = vec!["-v", "get", "--backend", "ptrace"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[pid.as_str(), file.as_str(), ring.as_str(), "--", "true"]);
        run_fdgrab(args)
    };
    let out = ptrace_get(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("fd {ring}")) && err.contains("io_uring"),
        "{err}"
    );
    let out = ptrace_get(&["--skip-unpassable"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("skipping fd {ring}")), "{err}");
    // The file was really taken by injection (an ignored --backend would say pidfd_getfd).
    assert!(err.contains("(method: ptrace)"), "{err}");
    assert_eq!(fdgrab_testkit::proc_fds(t.pid), fds_before);

    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.args([
        "send",
        "--json",
        "--skip-unpassable",
        &pid,
        &file,
        &ring,
        "--to",
        sock,
    ]);
    let sender = std::thread::spawn(move || output_timeout(&mut cmd, TIMEOUT));
    let deadline = std::time::Instant::now() + TIMEOUT;
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("no connection: {e}"),
        }
    };
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = [0u8; 256];
    let got = fdgrab::passfd::recv_fds(&conn, &mut buf, 16).expect("recv");
    assert_eq!(
        String::from_utf8_lossy(&buf[..got.len]),
        format!("fdgrab pid={pid} fds={file}\n")
    );
    assert_eq!(got.fds.len(), 1);
    let out = sender.join().expect("sender");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("skipping fd {ring}")), "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["skipped"][0]["fd"].as_i64(), ring.parse().ok());
    assert_eq!(doc["method"], "pidfd_getfd");

    // pidfd_getfd and dup2 into the command: no socket, so the ring is installed.
    let script = format!("readlink /proc/$$/fd/{ring}");
    let out = run_fdgrab(["get", &pid, &ring, "--", "sh", "-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "anon_inode:[io_uring]"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fd numbers a `sh -c` reports for itself (`ls /proc/$$/fd`), one per line.
fn reported_fds(text: &str) -> Vec<i32> {
    let mut v: Vec<i32> = text
        .lines()
        .skip_while(|l| *l != "fds:")
        .skip(1)
        .take_while(|l| !l.contains(':'))
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    v.sort();
    v
}

fn status_mask(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {key} line in {text}"))
}

/// `get` runs CMD in its own place: CMD has fdgrab's pid, exactly the fd plan on
/// top of what fdgrab itself inherited (none of fdgrab's own fds, the installed
/// ones without close-on-exec), an empty signal mask, and ignored signals still
/// ignored except SIGPIPE. Both backends.
#[test]
fn get_runs_cmd_in_fdgrabs_place_with_the_exact_fd_plan() {
    let t = Target::spawn(["zoo"]);
    let file = t.fd_labelled("file");
    let memfd = t.fd_labelled("memfd");
    // The masks are read with builtins: sh blocks every signal around each fork
    // (dash), so a grep of its status could see that passing mask instead.
    let script = "echo pid=$$; echo fds:; ls /proc/$$/fd; echo end:; \
                  grep -h flags /proc/$$/fdinfo/7 /proc/$$/fdinfo/9; \
                  while read -r l; do case $l in Sig[BI]*) echo \"$l\";; esac; done </proc/$$/status";
    // The same shell without fdgrab: what it inherits from us and the test harness.
    let plain = output_timeout(
        Command::new("sh").args([
            "-c",
            "trap '' HUP PIPE; exec \"$@\"",
            "sh",
            "sh",
            "-c",
            script,
        ]),
        TIMEOUT,
    );
    let base = reported_fds(&String::from_utf8_lossy(&plain.stdout));
    assert!(base.contains(&1), "{plain:?}");
    for backend in ["pidfd", "ptrace"] {
        // fdgrab starts with SIGHUP and SIGPIPE ignored, as under `nohup`.
        let mut child = Command::new("sh")
            .args(["-c", "trap '' HUP PIPE; exec \"$@\"", "sh"])
            .arg(fdgrab_testkit::bin("fdgrab"))
            .args(["get", "--backend", backend, &t.pid.to_string()])
            .args([format!("{file}:7"), format!("{memfd}:9")])
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fdgrab");
        let pid = child.id();
        let st = fdgrab_testkit::wait_timeout(&mut child, TIMEOUT).expect("fdgrab exits");
        let mut text = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut text)
            .expect("read");
        assert!(st.success(), "{backend}: {st} {text}");
        // `sh` execs fdgrab, which execs CMD: all three are one process.
        assert!(text.contains(&format!("pid={pid}\n")), "{backend}: {text}");
        let mut want = base.clone();
        want.extend([7, 9]);
        want.sort();
        want.dedup();
        assert_eq!(reported_fds(&text), want, "{backend}: {text}");
        let flags: Vec<u32> = text
            .lines()
            .filter_map(|l| l.strip_prefix("flags:"))
            .filter_map(|v| u32::from_str_radix(v.trim(), 8).ok())
            .collect();
        assert_eq!(flags.len(), 2, "{backend}: {text}");
        assert!(
            flags.iter().all(|f| f & 0o2000000 == 0),
            "{backend}: installed fds keep close-on-exec: {text}"
        );
        assert_eq!(status_mask(&text, "SigBlk:"), 0, "{backend}: {text}");
        let ign = status_mask(&text, "SigIgn:");
        assert_ne!(
            ign & (1 << (libc::SIGHUP - 1)),
            0,
            "{backend}: SIGHUP: {text}"
        );
        assert_eq!(
            ign & (1 << (libc::SIGPIPE - 1)),
            0,
            "{backend}: SIGPIPE: {text}"
        );
    }
    // get never changes the target.
    assert!(std::fs::read_link(format!("/proc/{}/fd/{file}", t.pid)).is_ok());
}

/// An exec that fails after the fd plan is in place (here: over fdgrab's own
/// stderr) is still reported on fdgrab's stderr, with 126 for a file the kernel
/// refuses and 127 for a missing #! interpreter; the target keeps its fd.
#[test]
fn get_reports_a_failed_exec_on_its_own_stderr() {
    let t = Target::spawn(["zoo"]);
    let file = t.fd_labelled("file");
    let dir = std::env::temp_dir().join(format!("fdgrab-get-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let junk = dir.join("junk");
    std::fs::write(&junk, b"\x7fELF this is no executable").expect("write");
    let script = dir.join("script");
    std::fs::write(&script, b"#!/nonexistent/interpreter\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    for p in [&junk, &script] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for (backend, prog, code, needle) in [
        ("pidfd", &junk, 126, "Exec format error"),
        ("ptrace", &junk, 126, "Exec format error"),
        ("pidfd", &script, 127, "interpreter"),
    ] {
        let out = output_timeout(
            fdgrab_testkit::fdgrab()
                .args(["get", "--backend", backend, &t.pid.to_string()])
                .args([format!("{file}:2"), "--".into()])
                .arg(prog),
            TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{backend} {prog:?}: {err}");
        assert!(err.contains(needle), "{backend} {prog:?}: {err}");
        assert!(err.contains(&*prog.to_string_lossy()), "{err}");
        assert!(std::fs::read_link(format!("/proc/{}/fd/{file}", t.pid)).is_ok());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// fdgrab has its own entry point instead of std's runtime start; what that start
/// did still holds: closed standard fds are opened on /dev/null (so nothing of
/// fdgrab's lands on 0-2 and reaches CMD there), arguments that are not UTF-8 and
/// the environment pass through exactly, and CMD's exit status is fdgrab's.
#[test]
fn entry_point_keeps_what_std_start_up_did() {
    use std::os::unix::ffi::OsStrExt;
    let t = Target::spawn(["zoo"]);
    let file = t.fd_labelled("file");
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9");
    // fdgrab starts with stdin and stderr closed; CMD reports what it has there.
    let out = output_timeout(
        Command::new("sh")
            .args(["-c", "exec 0<&- 2>&-; exec \"$@\"", "sh"])
            .arg(fdgrab_testkit::bin("fdgrab"))
            .args(["get", &t.pid.to_string(), &format!("{file}:7"), "--"])
            .args(["sh", "-c"])
            .arg("readlink /proc/$$/fd/0 /proc/$$/fd/2 /proc/$$/fd/7; printf '%s|%s\\n' \"$1\" \"$FDGRAB_ENTRY_TEST\"; exit 7")
            .arg("sh")
            .arg(odd)
            .env("FDGRAB_ENTRY_TEST", "kept"),
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let lines: Vec<&[u8]> = out.stdout.split(|&b| b == b'\n').collect();
    assert_eq!(lines[0], b"/dev/null", "{out:?}");
    assert_eq!(lines[1], b"/dev/null", "{out:?}");
    assert!(lines[2].ends_with(b"file.txt"), "{out:?}");
    assert_eq!(lines[3], b"caf\xe9|kept", "{out:?}");
}

/// A failed exec is reported on fdgrab's own stderr even when the plan covers fd 2
/// *and* the numbers just above it, where fdgrab parks its copy of stderr: the
/// message must never be written into the target's file.
#[test]
fn get_never_reports_a_failed_exec_into_a_grabbed_fd() {
    let t = Target::spawn(["zoo"]);
    let file = t.fd_labelled("file");
    let dir = fdgrab_testkit::test_path("get-exec-park", "dir");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("script");
    std::fs::write(&script, b"#!/nonexistent/interpreter\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = std::fs::read_link(format!("/proc/{}/fd/{file}", t.pid)).expect("target's file");
    let before = std::fs::read(&path).expect("read the target's file");
    for backend in ["pidfd", "ptrace"] {
        let out = output_timeout(
            fdgrab_testkit::fdgrab()
                .args(["get", "--backend", backend, &t.pid.to_string()])
                .args((2..=12).map(|n| format!("{file}:{n}")))
                .arg("--")
                .arg(&script),
            TIMEOUT,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(127), "{backend}: {err}");
        assert!(err.contains("interpreter"), "{backend}: {err}");
        let after = std::fs::read(&path).expect("read the target's file");
        assert_eq!(
            String::from_utf8_lossy(&after),
            String::from_utf8_lossy(&before),
            "{backend}: fdgrab wrote into the target's file"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pid a process's `TracerPid` names, or `None` once it is gone.
fn tracer_of(pid: u32) -> Option<u32> {
    fdgrab_testkit::status_field(pid as i32, "TracerPid")?
        .parse()
        .ok()
}

/// A signal that reaches fdgrab while a ptrace grab (or put) has the target in
/// hand (a supervisor's SIGUSR1 or SIGALRM meant for CMD, whose pid fdgrab already
/// is; a terminal's ^Z) waits until the target is restored: the target keeps running
/// unharmed and untraced, and fdgrab never stops with the target in hand.
#[test]
fn a_signal_during_a_ptrace_grab_never_harms_the_target() {
    let file = fdgrab_testkit::test_path("get-signal-grab", "file");
    // Busy, with a system call now and then: registers left half-restored make
    // it crash at once.
    let mut target = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys\n\
             os.dup2(os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND), 7)\n\
             print('ready', flush=True)\n\
             n = 0\n\
             while True:\n    n += 1\n    if n % 1000 == 0: os.getppid()\n",
        )
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("target");
    let tpid = target.id();
    let mut out = std::io::BufReader::new(target.stdout.take().expect("stdout"));
    let line = fdgrab_testkit::read_line_timeout(&mut out, TIMEOUT).expect("ready");
    assert_eq!(line, "ready");
    let tp = tpid.to_string();
    let get: &[&str] = &["get", "--backend", "ptrace", &tp, "7", "--", "true"];
    // put injects the same way (fd 8: the target's own fds stay as they are).
    let put: &[&str] = &["put", &tp, "8", "--file", "/dev/null"];
    for (args, sig) in [
        (get, libc::SIGUSR1),
        (get, libc::SIGALRM),
        (get, libc::SIGTSTP),
        (put, libc::SIGUSR1),
    ] {
        let mut hits = 0;
        for _ in 0..200 {
            if hits == 8 {
                break;
            }
            let mut fdgrab = fdgrab_testkit::fdgrab()
                .args(args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("fdgrab");
            let fpid = fdgrab.id();
            let deadline = std::time::Instant::now() + TIMEOUT;
            let in_hand = loop {
                if tracer_of(tpid) == Some(fpid) {
                    break true;
                }
                if fdgrab.try_wait().ok().flatten().is_some()
                    || std::time::Instant::now() > deadline
                {
                    break false;
                }
            };
            if in_hand {
                // At a different point of the session each time.
                let at = std::time::Instant::now();
                while at.elapsed() < std::time::Duration::from_micros(150 * hits) {}
                hits += 1;
                // SAFETY: a signal to our own unreaped child.
                unsafe { libc::kill(fpid as i32, sig) };
            }
            // ^Z stops fdgrab, but only once the target is restored (a stop at
            // CMD's start, as job control means it): then the target runs untraced.
            let deadline = std::time::Instant::now() + TIMEOUT;
            while fdgrab.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline
            {
                let fstate = fdgrab_testkit::status_field(fpid as i32, "State");
                if fstate.as_deref().is_some_and(|s| s.starts_with('T')) {
                    let state = fdgrab_testkit::status_field(tpid as i32, "State");
                    let traced = tracer_of(tpid);
                    // SAFETY: a signal to our own unreaped child.
                    unsafe { libc::kill(fpid as i32, libc::SIGCONT) };
                    assert_eq!(
                        traced,
                        Some(0),
                        "{args:?} signal {sig}: fdgrab stopped with the target in hand ({state:?})"
                    );
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let st = fdgrab_testkit::wait_timeout(&mut fdgrab, TIMEOUT);
            let state = fdgrab_testkit::status_field(tpid as i32, "State");
            assert!(
                target.try_wait().ok().flatten().is_none(),
                "{args:?} signal {sig}: the target died: {:?}",
                target.try_wait()
            );
            assert_eq!(
                tracer_of(tpid),
                Some(0),
                "{args:?} signal {sig}: state {state:?}"
            );
            assert!(
                state.as_deref().is_some_and(|s| s.starts_with('R')),
                "{args:?} signal {sig}: target state {state:?}"
            );
            st.unwrap_or_else(|e| panic!("{args:?} signal {sig}: {e}"));
        }
        assert_eq!(
            hits, 8,
            "{args:?} signal {sig}: never caught fdgrab with the target in hand"
        );
    }
    let _ = target.kill();
    let _ = target.wait();
    let _ = std::fs::remove_dir_all(file.parent().expect("dir"));
}

/// A process's name is bytes (`prctl(PR_SET_NAME)`, or the file name it was
/// started from), and it shows in `/proc/PID/status` and `stat`: a name that is not
/// UTF-8 must not stop get (either backend), steal or put.
#[test]
fn a_target_whose_name_is_not_utf8_can_be_grabbed() {
    use std::os::unix::ffi::OsStrExt;
    let dir = fdgrab_testkit::test_path("get-odd-name", "dir");
    std::fs::create_dir_all(&dir).expect("dir");
    let link = dir.join(std::ffi::OsStr::from_bytes(b"sl\xff\xfep"));
    std::os::unix::fs::symlink("/bin/sleep", &link).expect("symlink");
    let file = dir.join("file");
    std::fs::write(&file, b"held\n").expect("write");
    let mut target = Command::new("sh")
        .args(["-c", "exec 5<\"$1\" 6<\"$1\"; exec \"$2\" 60", "sh"])
        .arg(&file)
        .arg(&link)
        .spawn()
        .expect("target");
    let pid = target.id().to_string();
    // Until sh has exec'd the oddly named sleep.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::fs::read(format!("/proc/{pid}/comm")).ok().as_deref() != Some(b"sl\xff\xfep\n") {
        assert!(std::time::Instant::now() < deadline, "target never exec'd");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for backend in ["pidfd", "ptrace"] {
        let out = run_fdgrab([
            "get",
            "--backend",
            backend,
            &pid,
            "5:7",
            "--",
            "sh",
            "-c",
            "cat /proc/$$/fd/7",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "get {backend}: {err}");
        assert_eq!(out.stdout, b"held\n", "get {backend}: {err}");
    }
    let out = run_fdgrab(["put", &pid, "6", "--file", "/dev/null"]);
    assert!(
        out.status.success(),
        "put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_fdgrab(["steal", &pid, "5", "--", "true"]);
    assert!(
        out.status.success(),
        "steal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_link(format!("/proc/{pid}/fd/5")).is_err(),
        "steal left fd 5"
    );
    let _ = target.kill();
    let _ = target.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `fdgrab cat PID 1 >> app.log` for a process that logs to app.log: the file
/// grows by what cat copies as fast as cat reads it, so the copy never ended
/// (it filled the disk; here a 1 MiB `ulimit -f` stops it). It is refused up
/// front, naming the pid and fd, and the file keeps its content.
#[test]
fn cat_into_the_file_it_reads_is_refused() {
    let dir = fdgrab_testkit::test_path("fdgrab-cat-self", "dir");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let log = dir.join("app.log");
    std::fs::write(&log, b"first line\n").expect("write");
    let app = std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .expect("open log");
    let mut sleep = Command::new("sleep")
        .arg("60")
        .stdout(app)
        .spawn()
        .expect("sleep");
    let script = format!(
        "ulimit -f 1024; exec \"$0\" cat {} 1 >> '{}'",
        sleep.id(),
        log.display()
    );
    let out = output_timeout(
        Command::new("sh")
            .args(["-c", &script])
            .arg(fdgrab_testkit::bin("fdgrab")),
        TIMEOUT,
    );
    let _ = sleep.kill();
    let _ = sleep.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("fd 1 of process {}", sleep.id())) && err.contains("standard output"),
        "{err}"
    );
    assert_eq!(std::fs::read(&log).expect("read"), b"first line\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A steal checks, before it closes the target's fd, that the fd still holds
/// the file it copied, by device and inode from the kernel's cached attributes
/// (`statx`), and a ptrace copy is compared with the target's fd (`kcmp`, else
/// those attributes). Where `statx` is refused (ENOSYS on old kernels, EPERM
/// from older container seccomp profiles; here a seccomp filter set up before
/// fdgrab's exec) it falls back to `fstatat`, and the steal is done as without
/// the filter: the command gets the file, the target's fd is closed.
#[test]
fn steal_with_statx_refused_is_done() {
    let dir = fdgrab_testkit::test_path("steal-no-statx", "dir");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("file");
    std::fs::write(&file, b"held\n").expect("write");
    for (filter, backend) in [
        ("statx", "auto"),
        ("statx=EPERM", "auto"),
        ("statx=EPERM,kcmp=EPERM", "ptrace"),
        ("statx,kcmp", "ptrace"),
    ] {
        let mut target = Command::new("sh")
            .args(["-c", "exec 5<\"$1\"; exec sleep 60", "sh"])
            .arg(&file)
            .spawn()
            .expect("target");
        let pid = target.id().to_string();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::fs::read(format!("/proc/{pid}/comm")).ok().as_deref() != Some(b"sleep\n") {
            assert!(std::time::Instant::now() < deadline, "target never exec'd");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut cmd = Command::new(fdgrab_testkit::bin("fdgrab-target"));
        cmd.args(["exec-enosys", filter, "--"])
            .arg(fdgrab_testkit::bin("fdgrab"))
            .args(["steal", "--backend", backend, &pid, "5:3", "--"])
            .args(["sh", "-c", "cat <&3"]);
        let out = output_timeout(&mut cmd, TIMEOUT);
        let gone = std::fs::read_link(format!("/proc/{pid}/fd/5")).is_err();
        let _ = target.kill();
        let _ = target.wait();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "steal under {filter}: {err}");
        assert_eq!(out.stdout, b"held\n", "steal under {filter}: {err}");
        assert!(gone, "steal under {filter} left fd 5: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Holds, with its working directory on the FUSE mount DIR, the file `f`
/// (whose attributes the server answers late once open) and `g (deleted)`,
/// besides a plain file (FILE) and a pipe; reports the numbers.
const FUSE_NEIGHBOUR: &str = r#"
import json, os, sys
os.chdir(sys.argv[1])
f = os.open("f", os.O_RDONLY)
g = os.open("g (deleted)", os.O_RDONLY)
plain = os.open(sys.argv[2], os.O_RDWR)
r, w = os.pipe()
os.write(w, b"piped\n")
print(json.dumps({"plain": plain, "pipe": r, "out": w}), flush=True)
sys.stdin.read()
"#;

/// The commands that take, send, install or redirect one fd of a process make
/// no request to a file server that serves *other* fds of it (and its working
/// directory): the server answers attributes, name lookups and extended
/// attributes only 2 s late here, and counts every request. Only the fd named is
/// looked at.
#[test]
fn grab_commands_ask_no_file_server_of_other_fds() {
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("grab-neighbour") else {
        fdgrab_testkit::skip("FUSE cannot be mounted here");
        return;
    };
    let dir = fs.dir();
    let work = fdgrab_testkit::test_path("grab-neighbour", "dir");
    std::fs::create_dir_all(&work).expect("dir");
    let plain = work.join("plain");
    std::fs::write(&plain, b"plain\n").expect("write");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(FUSE_NEIGHBOUR).arg(&dir).arg(&plain);
    let t = Target::spawn_cmd(cmd);
    let pid = t.pid.to_string();
    let num = |k: &str| t.report[k].to_string();
    let (plain_fd, pipe_fd, out_fd) = (num("plain"), num("pipe"), num("out"));
    std::thread::sleep(std::time::Duration::from_millis(1300));
    fs.slow_lookups();
    let before = fs.slow_requests();
    let sock = work.join("to.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let redirected = work.join("redirected");
    let sock_s = sock.to_str().expect("utf8");
    let redirected_s = redirected.to_str().expect("utf8");
    let runs: Vec<Vec<&str>> = vec![
        vec!["cat", &pid, &plain_fd],
        vec!["cat", "--backend", "ptrace", &pid, &plain_fd],
        vec!["get", &pid, &plain_fd, "--", "true"],
        vec!["get", "--backend", "ptrace", &pid, &pipe_fd, "--", "true"],
        vec!["send", &pid, &plain_fd, "--to", sock_s],
        vec!["put", &pid, "40", "--file", "/dev/null"],
        vec!["redirect", "--json", &pid, &out_fd, redirected_s],
        vec!["steal", &pid, "40", "--", "true"],
        vec![
            "steal",
            "--backend",
            "ptrace",
            "--null",
            &pid,
            &plain_fd,
            "--",
            "true",
        ],
    ];
    for args in &runs {
        let mut cmd = fdgrab_testkit::fdgrab();
        let out = output_timeout(cmd.args(args).stdin(Stdio::null()), TIMEOUT);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            fs.slow_requests(),
            before,
            "{args:?} asked the file server of another fd"
        );
        if args[0] == "send" {
            let _ = listener.accept();
        }
    }
    drop(t);
    let _ = std::fs::remove_dir_all(&work);
}
