//! Hostile and odd input to `fdgrab send` and `fdgrab exec` that the other test
//! files do not cover: every refusal names the argument and says what it is, and
//! nothing is taken; what is accepted works.

use fdgrab_testkit::{run_fdgrab, Target};
use std::os::unix::net::{UnixDatagram, UnixListener};

/// `--to` naming something that cannot receive fds: the error says what it is
/// (the kernel's errno alone reads "Connection refused" for a regular file), and
/// the target keeps its fd.
#[test]
fn send_to_something_other_than_a_listening_stream_socket_says_what_it_is() {
    let t = Target::spawn(["zoo"]);
    let dir = std::env::temp_dir().join(format!("fdgrab-send-to-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("plain");
    std::fs::write(&file, "x").expect("file");
    let dgram = dir.join("dgram.sock");
    let _dgram = UnixDatagram::bind(&dgram).expect("bind dgram");
    // Bound and then closed: the name stays, nobody listens.
    let stale = dir.join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind stream"));
    let fd = t.fd_labelled("memfd").to_string();
    for (path, needle) in [
        (&file, "it is not a socket"),
        (&dgram, "not a stream socket"),
        (&stale, "a socket nobody listens on"),
    ] {
        for backend in ["pidfd", "ptrace"] {
            let out = run_fdgrab([
                "send",
                &t.pid.to_string(),
                &fd,
                "--backend",
                backend,
                "--to",
                &path.to_string_lossy(),
            ]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains(&format!("connecting to {}", path.display()))
                    && stderr.contains(needle),
                "{backend}: {stderr}"
            );
        }
    }
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/fd/{fd}", t.pid))
            .map(|l| l.to_string_lossy().starts_with("/memfd:"))
            .ok(),
        Some(true),
        "the target's fd {fd}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A unix socket whose path holds characters `LISTEN_FDNAMES` may not (a space,
/// non-ASCII) is handed over under a name made valid, instead of the command being
/// refused over a name the user never gave.
#[test]
fn exec_unix_path_with_a_space_gets_a_valid_default_name() {
    let dir = std::env::temp_dir().join(format!("fdgrab-exec-name-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("my app é.sock");
    // The old server binds and listens itself, then says so.
    let mut server = KillOnDrop(
        std::process::Command::new("python3")
            .args([
                "-c",
                "import socket, sys, time\n\
             s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n\
             print('up', flush=True); time.sleep(60)",
            ])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut up = std::io::BufReader::new(server.0.stdout.take().expect("stdout"));
    let line = fdgrab_testkit::read_line_timeout(&mut up, fdgrab_testkit::TIMEOUT)
        .expect("the old server's line");
    assert_eq!(line.trim(), "up");
    let names = dir.join("names");
    let out = fdgrab_testkit::output_timeout(
        fdgrab_testkit::fdgrab().args([
            "exec",
            &server.0.id().to_string(),
            &format!("unix:{}", path.display()),
            "--ready-timeout",
            "200ms",
            "--detach",
            "--",
            "sh",
            "-c",
            &format!(
                "echo \"$LISTEN_FDS $LISTEN_FDNAMES\" > '{}'; exec sleep 5 >/dev/null 2>&1",
                names.display()
            ),
        ]),
        fdgrab_testkit::TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let new_pid: i32 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid printed: {stderr}"));
    let got = std::fs::read_to_string(&names).expect("names file");
    assert_eq!(
        got.trim(),
        format!(
            "1 unix-{}",
            path.display().to_string().replace([' ', 'é'], "_")
        )
    );
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(new_pid, libc::SIGKILL) };
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child killed and reaped however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--steal` when the old server exited on its own after its sockets were taken
/// (here the new server kills it while starting): there is nothing left to close,
/// and the new server, ready and now the sockets' only holder, keeps serving
/// (before, the failed close stopped it: nobody served any more).
#[test]
fn exec_steal_after_the_old_server_exited_keeps_the_new_one_serving() {
    use fdgrab_testkit::handover::{Exec, Probe, Server};
    let old = Server::activated(&["--listen", "tcp:127.0.0.1:0"]);
    let probe = Probe::Tcp(old.addrs[0].parse().expect("addr"));
    assert_eq!(probe.ask(), Ok(old.pid));
    let mut exec = Exec::start(&[
        old.pid.to_string(),
        format!("tcp:127.0.0.1:{}", old.port(0)),
        "--steal".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        format!(
            "kill -KILL {}; sleep 0.3; exec {} serve",
            old.pid,
            fdgrab_testkit::bin("fdgrab-activated").display()
        ),
    ]);
    assert!(
        exec.log
            .iter()
            .any(|l| l.contains(&format!("old server {} has already exited", old.pid))),
        "{:#?}",
        exec.log
    );
    for _ in 0..5 {
        assert_eq!(probe.ask(), Ok(exec.new_pid), "the new server serves");
    }
    exec.signal(libc::SIGTERM);
    let st = fdgrab_testkit::wait_timeout(&mut exec.child, fdgrab_testkit::TIMEOUT)
        .expect("fdgrab did not exit on SIGTERM");
    assert_eq!(st.code(), Some(0), "fdgrab-activated ends 0 on SIGTERM");
}

/// Under `--via env` in the foreground, `NOTIFY_SOCKET` stays open for the new
/// server's life, as under systemd: a `STATUS=` sent after `READY=1` is received,
/// not refused (`ECONNREFUSED` made this server exit 9).
#[test]
fn exec_notify_socket_outlives_readiness() {
    use fdgrab_testkit::handover::{Probe, Server};
    let old = Server::activated(&["--listen", "tcp:127.0.0.1:0"]);
    let probe = Probe::Tcp(old.addrs[0].parse().expect("addr"));
    assert_eq!(probe.ask(), Ok(old.pid));
    let server = r#"
import os, socket, sys, time
lst = socket.socket(fileno=3)
name = os.environ["NOTIFY_SOCKET"]
addr = "\0" + name[1:] if name.startswith("@") else name
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
u.sendto(b"READY=1", addr)
for i in range(5):
    time.sleep(0.1)
    try:
        u.sendto(b"STATUS=serving %d" % i, addr)
    except OSError as e:
        print("notify failed:", e, file=sys.stderr, flush=True)
        sys.exit(9)
"#;
    let out = fdgrab_testkit::output_timeout(
        fdgrab_testkit::fdgrab().args([
            "exec",
            &old.pid.to_string(),
            &format!("tcp:127.0.0.1:{}", old.port(0)),
            "--",
            "python3",
            "-c",
            server,
        ]),
        fdgrab_testkit::TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("is ready (sent READY=1)"), "{stderr}");
    assert_eq!(
        probe.ask(),
        Ok(old.pid),
        "the old server, not signalled, serves on"
    );
}

/// The new server was stopped (`kill -STOP`) after the handover; `SIGTERM` to
/// fdgrab reaches it and continues it, as a shell's `kill` of a stopped job does,
/// so both end instead of fdgrab waiting for ever on a pending signal.
#[test]
fn exec_sigterm_ends_a_stopped_new_server() {
    use fdgrab_testkit::handover::{Exec, Server};
    let old = Server::activated(&["--listen", "tcp:127.0.0.1:0"]);
    let mut exec = Exec::start(&[
        old.pid.to_string(),
        format!("tcp:127.0.0.1:{}", old.port(0)),
        "--".into(),
        fdgrab_testkit::bin("fdgrab-activated")
            .to_string_lossy()
            .into_owned(),
        "serve".into(),
    ]);
    let new = rustix::process::Pid::from_raw(exec.new_pid).expect("pid");
    rustix::process::kill_process(new, rustix::process::Signal::STOP).expect("SIGSTOP");
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{}/stat", exec.new_pid))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.trim_start().chars().next())
            })
            == Some('T')
    };
    let deadline = std::time::Instant::now() + fdgrab_testkit::TIMEOUT;
    while !stopped() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    exec.signal(libc::SIGTERM);
    let st = fdgrab_testkit::wait_timeout(&mut exec.child, fdgrab_testkit::TIMEOUT)
        .expect("fdgrab waited on a stopped server");
    assert_eq!(st.code(), Some(0), "fdgrab-activated ends 0 on SIGTERM");
}
