//! `fdgrab exec` failing: whatever goes wrong, the old server keeps serving with
//! exactly the fds it had, no other process is left holding its sockets, and fdgrab
//! says why with the documented exit code.

use fdgrab_testkit::handover::{fd_table, holders, process_tree, Probe, Server, TempDir};
use fdgrab_testkit::{bin, fdgrab, run_fdgrab, wait_timeout, TIMEOUT};
use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::Duration;

struct Old {
    server: Server,
    probe: Probe,
    fds: BTreeMap<i32, String>,
}

fn old_server() -> Old {
    let server = Server::activated(&["--listen", "tcp:127.0.0.1:0", "--listen", "udp:127.0.0.1:0"]);
    let probe = Probe::Tcp(server.addrs[0].parse().expect("addr"));
    assert_eq!(probe.ask(), Ok(server.pid));
    let fds = fd_table(server.pid);
    Old { server, probe, fds }
}

impl Old {
    fn tcp(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.server.port(0))
    }

    /// The old server still serves, has the same fd table, and shares its sockets
    /// with no process outside its own tree.
    fn assert_untouched(&self) {
        let pid = self.server.pid;
        assert_eq!(fd_table(pid), self.fds, "the old server's fd table changed");
        for _ in 0..20 {
            assert_eq!(
                self.probe.ask(),
                Ok(pid),
                "the old server must still answer every request"
            );
        }
        let tree = process_tree(pid);
        for link in self.fds.values().filter(|l| l.starts_with("socket:")) {
            let extra: Vec<i32> = holders(link)
                .into_iter()
                .filter(|p| !tree.contains(p))
                .collect();
            assert!(extra.is_empty(), "{link} is also held by {extra:?}");
        }
    }
}

fn exec(old: &Old, args: &[&str]) -> Output {
    let mut all = vec!["exec".to_string(), old.server.pid.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    run_fdgrab(&all)
}

fn activated() -> String {
    bin("fdgrab-activated").to_string_lossy().into_owned()
}

fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

#[test]
fn exec_selector_matching_nothing_lists_listeners() {
    let old = old_server();
    let out = exec(&old, &["tcp:127.0.0.1:1", "--", &activated(), "serve"]);
    let tcp_port = old.server.port(0).to_string();
    let udp_port = old.server.port(1).to_string();
    assert_fails(
        &out,
        5,
        &[
            &format!(
                "process {} has no socket matching 'tcp:127.0.0.1:1'",
                old.server.pid
            ),
            "it listens on:",
            &format!("tcp 127.0.0.1:{tcp_port} (LISTEN)"),
            &format!("udp 127.0.0.1:{udp_port}"),
        ],
    );
    // A selector of the wrong kind for an existing port also matches nothing.
    let out = exec(
        &old,
        &[&format!("udp:*:{tcp_port}"), "--", &activated(), "serve"],
    );
    assert_fails(&out, 5, &["no socket matching"]);
    old.assert_untouched();
}

#[test]
fn exec_fd_selector_errors() {
    let old = old_server();
    let out = exec(&old, &["fd:0", "--", &activated(), "serve"]);
    assert_fails(&out, 1, &["fd 0", "not a socket"]);
    let out = exec(&old, &["fd:999", "--", &activated(), "serve"]);
    assert_fails(&out, 5, &["has no open fd 999"]);
    old.assert_untouched();
}

#[test]
fn exec_bad_arguments_are_usage_errors() {
    let old = old_server();
    let tcp = old.tcp();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["tcp:::1:80", "--", "true"],
            "IPv6 addresses go in brackets",
        ),
        (
            vec!["tcp:*:80", "--name", "a", "--name", "b", "--", "true"],
            "2 --name values for 1 selectors",
        ),
        (
            vec![&tcp, "--name", "has:colon", "--", "true"],
            "without ':'",
        ),
        (
            vec![&tcp, "--signal-old", "NOPE", "--", "true"],
            "'NOPE' is not a signal",
        ),
        (
            vec![&tcp, "--ready-timeout", "soon", "--", "true"],
            "'soon' is not a duration",
        ),
        (vec![&tcp], "CMD"),
    ];
    for (args, needle) in cases {
        let out = exec(&old, &args);
        assert_fails(&out, 2, &[needle]);
    }
    let out = run_fdgrab(["exec", "0", "tcp:*:80", "--", "true"]);
    assert_fails(&out, 2, &["pid 0"]);
    old.assert_untouched();
}

#[test]
fn exec_command_not_found() {
    let old = old_server();
    let tcp = old.tcp();
    let out = exec(&old, &[&tcp, "--", "/nonexistent/fdgrab-server"]);
    assert_fails(
        &out,
        127,
        &["command '/nonexistent/fdgrab-server' not found"],
    );
    let out = exec(
        &old,
        &[&tcp, "--", "fdgrab-no-such-server-anywhere", "--flag"],
    );
    assert_fails(
        &out,
        127,
        &["command 'fdgrab-no-such-server-anywhere' not found in PATH"],
    );
    let dir = TempDir::new("exec-noexec");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "not a program\n").expect("write");
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let out = exec(&old, &[&tcp, "--", &plain.to_string_lossy()]);
    assert_fails(&out, 126, &["cannot execute", "not an executable file"]);
    // Executable but not a program: execve itself fails in the child (ENOEXEC), which
    // the child reports to the spawner after the sockets were already taken.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, [0x7fu8, b'E', b'L', b'F', 0, 0, 0, 0]).expect("write");
    std::fs::set_permissions(&junk, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let out = exec(&old, &[&tcp, "--", &junk.to_string_lossy()]);
    assert_fails(&out, 126, &["cannot execute", "junk", "Exec format error"]);
    // A symlink loop is no "not found": execve would fail with ELOOP (by number:
    // "Too many levels of symbolic links" in glibc, "Symbolic link loop" in musl).
    let a = dir.path().join("loop-a");
    std::os::unix::fs::symlink(dir.path().join("loop-b"), &a).expect("symlink");
    std::os::unix::fs::symlink(&a, dir.path().join("loop-b")).expect("symlink");
    let out = exec(&old, &[&tcp, "--", &a.to_string_lossy()]);
    assert_fails(&out, 126, &["cannot execute", "(os error 40)"]);
    old.assert_untouched();
}

#[test]
fn exec_new_server_exiting_at_once() {
    let old = old_server();
    let out = exec(
        &old,
        &[
            &old.tcp(),
            "--signal-old",
            "TERM",
            "--",
            &activated(),
            "serve",
            "--ready",
            "exit:3",
        ],
    );
    assert_fails(
        &out,
        1,
        &[
            "exited (exit status 3) before it was ready",
            &format!(
                "process {} was not touched and keeps its sockets",
                old.server.pid
            ),
        ],
    );
    old.assert_untouched();
}

#[test]
fn exec_new_server_never_ready() {
    let old = old_server();
    let out = exec(
        &old,
        &[
            &old.tcp(),
            "--signal-old",
            "KILL",
            "--start-timeout",
            "1s",
            "--",
            &activated(),
            "serve",
            "--ready",
            "never",
        ],
    );
    assert_fails(
        &out,
        1,
        &[
            "sent no READY=1 within 1s",
            "stopped it",
            "use --ready-timeout",
            "was not touched",
        ],
    );
    old.assert_untouched();
}

/// ^C while the new server is starting aborts the handover: the new server is
/// stopped and the old one is left alone.
#[test]
fn exec_interrupted_while_waiting() {
    let old = old_server();
    let (child, _) = start_never_ready(&old, &["--signal-old", "KILL"]);
    interrupt_and_expect_abort(&old, child);
}

/// Starts `fdgrab exec` with `extra` options and a new server that never says it
/// is ready, and waits until that server holds the old one's listener too; returns
/// fdgrab and the listener's `/proc` link.
fn start_never_ready(old: &Old, extra: &[&str]) -> (std::process::Child, String) {
    let child = fdgrab()
        .args(["exec", &old.server.pid.to_string(), &old.tcp()])
        .args(extra)
        .arg("--")
        .args([&activated(), "serve", "--ready", "never"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let link = old
        .fds
        .values()
        .find(|l| l.starts_with("socket:"))
        .cloned()
        .expect("socket");
    let deadline = std::time::Instant::now() + TIMEOUT;
    while holders(&link).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "new server never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, link)
}

/// Sends fdgrab `SIGINT` while its new server is not ready: it must call the
/// handover off, say so, exit 1, and leave the old server as it was.
fn interrupt_and_expect_abort(old: &Old, mut child: std::process::Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let st = wait_timeout(&mut child, TIMEOUT).expect("fdgrab did not exit after SIGINT");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(st.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("was not ready yet when fdgrab received SIGINT"),
        "{stderr}"
    );
    old.assert_untouched();
}

/// The state letter of `pid` in `/proc/PID/stat` (`T`: stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// A signal fdgrab does not use for itself but that would end it (`SIGUSR1`,
/// a real-time one) while the new server is starting aborts the handover like ^C:
/// the new server is stopped, the old one is left alone, and fdgrab says which
/// signal. Before, fdgrab died of it, leaving the new server orphaned beside the
/// old one, both on the shared sockets.
#[test]
fn exec_any_ending_signal_while_waiting_aborts_cleanly() {
    for (sig, name) in [
        (libc::SIGUSR1, "SIGUSR1".to_string()),
        (
            libc::SIGRTMIN() + 2,
            format!("signal {}", libc::SIGRTMIN() + 2),
        ),
    ] {
        let old = old_server();
        let (mut child, link) = start_never_ready(&old, &[]);
        // SAFETY: kill(2) on our own child's pid, which it keeps until we reap it.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0, "kill");
        let st = wait_timeout(&mut child, TIMEOUT).expect("fdgrab did not exit");
        if st.code() != Some(1) {
            // A new server fdgrab left behind shares our stderr pipe: end it
            // before failing, or reading stderr would wait for it forever.
            let tree = process_tree(old.server.pid);
            for p in holders(&link).into_iter().filter(|p| !tree.contains(p)) {
                // SAFETY: kill(2) has no memory effects.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            panic!("{name}: fdgrab ended with {st:?}, not 1");
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("stderr");
        assert!(
            stderr.contains(&format!("was not ready yet when fdgrab received {name}")),
            "{stderr}"
        );
        old.assert_untouched();
    }
}

/// Once the new server runs, `SIGUSR1`, `SIGUSR2`, `SIGTTIN`, `SIGTTOU` and
/// `SIGWINCH` sent to fdgrab are the server's (nginx reopens its logs on USR1,
/// gunicorn upgrades on USR2 and adds a worker on TTIN): fdgrab passes them
/// on and keeps supervising, under `--via env` and under `--via bind` (where the
/// server's later binds need fdgrab alive), and `SIGTERM` still ends both with the
/// server's status.
#[test]
fn exec_forwards_usr1_and_usr2_to_the_ready_server() {
    for via in ["env", "bind"] {
        let old = old_server();
        let dir = TempDir::new("exec-usr1");
        let log = dir.path().join("signals");
        let listener = match via {
            "env" => "socket.socket(fileno=3)".to_string(),
            _ => format!(
                "socket.create_server(('127.0.0.1', {}))",
                old.server.port(0)
            ),
        };
        let server = format!(
            r#"
import os, signal, socket, sys, time
log = open({log:?}, "a", buffering=1)
for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGWINCH):
    signal.signal(s, lambda n, f: log.write(signal.Signals(n).name + "\n"))
lst = {listener}
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
name = os.environ["NOTIFY_SOCKET"]
try:
    u.sendto(b"READY=1", "\0" + name[1:] if name.startswith("@") else name)
except ConnectionRefusedError:
    pass  # --via bind: its listen() made it ready first, and fdgrab stopped listening
while True:
    time.sleep(1)
"#,
            log = log.to_string_lossy()
        );
        let mut exec = fdgrab_testkit::handover::Exec::start(&[
            old.server.pid.to_string(),
            old.tcp(),
            "--via".into(),
            via.into(),
            "--".into(),
            "python3".into(),
            "-c".into(),
            server,
        ]);
        let seen = |want: &str| {
            let deadline = std::time::Instant::now() + TIMEOUT;
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.lines().any(|l| l == want) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "--via {via}: the new server never got {want}; it logged {text:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        exec.signal(libc::SIGUSR1);
        seen("SIGUSR1");
        exec.signal(libc::SIGUSR2);
        seen("SIGUSR2");
        // gunicorn's TTIN/TTOU, nginx's WINCH: the server's, and they stop fdgrab
        // no more.
        for (sig, name) in [
            (libc::SIGTTIN, "SIGTTIN"),
            (libc::SIGTTOU, "SIGTTOU"),
            (libc::SIGWINCH, "SIGWINCH"),
        ] {
            exec.signal(sig);
            seen(name);
        }
        assert_ne!(
            proc_state(exec.child.id()),
            Some('T'),
            "--via {via}: fdgrab was stopped"
        );
        assert_eq!(
            exec.child.try_wait().expect("try_wait"),
            None,
            "--via {via}: fdgrab must keep running"
        );
        exec.signal(libc::SIGTERM);
        let st = wait_timeout(&mut exec.child, TIMEOUT).expect("fdgrab did not exit on SIGTERM");
        assert_eq!(
            st.code(),
            Some(128 + libc::SIGTERM),
            "--via {via}: the server's own status"
        );
    }
}

/// A new server that daemonizes (forks twice, `setsid`, the first process exits)
/// counts as having exited before it was ready; the daemon it left behind holding
/// the sockets is stopped too, so the old server is again their only holder (before,
/// the daemon served on beside it while fdgrab said it was "not touched").
#[test]
fn exec_new_server_that_daemonizes_leaves_nothing_behind() {
    let old = old_server();
    let daemon = r#"
import os, socket, sys, time
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    os._exit(0)
null = os.open("/dev/null", os.O_RDWR)
for n in range(3):
    os.dup2(null, n)
lst = socket.socket(fileno=3)
time.sleep(120)
"#;
    let out = exec(
        &old,
        &[
            &old.tcp(),
            "--signal-old",
            "KILL",
            "--",
            "python3",
            "-c",
            daemon,
        ],
    );
    assert_fails(
        &out,
        1,
        &[
            // 1, or 2 when the intermediate process was stopped just after its fork.
            "exited (exit status 0) before it was ready (stopped ",
            "process(es) it had forked and left behind)",
            "was not touched and keeps its sockets",
        ],
    );
    old.assert_untouched();
}

/// A CMD that exists but that the caller may not run is "cannot execute" (126)
/// with the reason, never "not found" (127): uid 65534 behind a directory it may
/// not search (the path stat fails with EACCES), facing a file only its owner may
/// execute, and finding such files in PATH. Nothing is taken first.
#[test]
fn exec_command_the_caller_may_not_run_is_126_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let old = old_server();
    let dir = TempDir::new("exec-noperm");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).expect("mkdir");
    let hidden = closed.join("server");
    std::fs::copy("/bin/true", &hidden).expect("copy");
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let owner_only = dir.path().join("owner-only");
    std::fs::copy("/bin/true", &owner_only).expect("copy");
    std::fs::set_permissions(&owner_only, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let as_nobody = |cmd: &str, path_var: &str| {
        let out = fdgrab()
            .args(["exec", &old.server.pid.to_string(), &old.tcp(), "--", cmd])
            .env("PATH", path_var)
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .output()
            .expect("fdgrab");
        out
    };
    let dirs = format!("{}:{}", closed.display(), dir.path().display());
    for (cmd, path_var, needles) in [
        (
            hidden.to_str().expect("utf-8"),
            "/usr/bin:/bin",
            vec![
                "cannot execute",
                "a directory on its path is not searchable by uid 65534",
                // EACCES by number: its text is the C library's.
                "(os error 13)",
            ],
        ),
        (
            owner_only.to_str().expect("utf-8"),
            "/usr/bin:/bin",
            vec!["cannot execute", "not executable by uid 65534"],
        ),
        (
            "server",
            dirs.as_str(),
            vec![
                "cannot execute 'server'",
                "found in PATH as",
                "a directory on its path is not searchable by uid 65534",
            ],
        ),
        (
            "owner-only",
            dir.path().to_str().expect("utf-8"),
            vec!["found in PATH as", "not executable by uid 65534"],
        ),
    ] {
        let out = as_nobody(cmd, path_var);
        assert_fails(&out, 126, &needles);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("not found"), "{cmd}: {stderr}");
    }
    old.assert_untouched();
}

/// Run from a terminal, a new server that reads it (a passphrase prompt) is
/// stopped by `SIGTTIN`: its process group is not the terminal's foreground. Alive
/// but serving nothing, it is not "still running" when `--ready-timeout` passes:
/// the handover is called off and the old server keeps serving (before, fdgrab
/// called it ready and sent the old server its `--signal-old`).
#[test]
fn exec_new_server_stopped_by_the_terminal_is_not_ready() {
    use fdgrab_testkit::tmux::Tmux;
    if !Tmux::available() {
        fdgrab_testkit::skip("tmux is not installed (scripts/test installs it)");
        return;
    }
    let old = old_server();
    let cmd = format!(
        "{} exec {} {} --ready-timeout 1s --signal-old KILL -- python3 -c \
         'import socket; s = socket.socket(fileno=3); input(\"passphrase: \")'; \
         echo EXIT=$?; exec sleep 600",
        bin("fdgrab").display(),
        old.server.pid,
        old.tcp()
    );
    let term = Tmux::start("exec-ttin", 200, 40, &cmd);
    let text = term.wait_for("EXIT=", TIMEOUT);
    assert!(text.contains("EXIT=1"), "{text}");
    let flat = text.replace('\n', "");
    assert!(
        flat.contains("was stopped (SIGTTIN) when --ready-timeout passed"),
        "{text}"
    );
    old.assert_untouched();
}

/// The old server accepts in a plain blocking loop (Python's `socket.accept`); the
/// new server makes the shared listener non-blocking, as most servers do, and then
/// fails to start. The handover is called off and the listener is blocking again:
/// the old server keeps serving (before, its next `accept` failed with `EAGAIN`
/// and it died, although fdgrab said it was "not touched").
#[test]
fn exec_called_off_puts_back_the_blocking_mode_the_new_server_changed() {
    use fdgrab_testkit::handover::Probe;
    for via in ["env", "both"] {
        let mut old = Reap(
            std::process::Command::new("python3")
                .args([
                    "-c",
                    "import os, socket\n\
                 s = socket.create_server(('127.0.0.1', 0))\n\
                 print(s.getsockname()[1], s.fileno(), flush=True)\n\
                 while True:\n\
                 \x20   c, _ = s.accept()\n\
                 \x20   c.recv(16); c.sendall(b'pid=%d\\n' % os.getpid()); c.close()\n",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3"),
        );
        let pid = old.0.id() as i32;
        let mut out = std::io::BufReader::new(old.0.stdout.take().expect("stdout"));
        let line = fdgrab_testkit::read_line_timeout(&mut out, TIMEOUT).expect("port");
        let (port, fd) = line.trim().split_once(' ').expect("port fd");
        let probe = Probe::Tcp(format!("127.0.0.1:{port}").parse().expect("addr"));
        assert_eq!(probe.ask(), Ok(pid));
        let flags = || {
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("flags:"))
                        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                })
                .expect("flags")
        };
        let before = flags();
        let out = run_fdgrab([
            "exec",
            &pid.to_string(),
            &format!("tcp:127.0.0.1:{port}"),
            "--via",
            via,
            "--",
            "python3",
            "-c",
            "import socket, sys; s = socket.socket(fileno=3); s.setblocking(False); sys.exit(3)",
        ]);
        assert_fails(&out, 1, &["exited (exit status 3)", "O_NONBLOCK, put back"]);
        assert_eq!(flags(), before, "--via {via}: the listener's status flags");
        for _ in 0..5 {
            assert_eq!(
                probe.ask(),
                Ok(pid),
                "--via {via}: the old server serves on"
            );
        }
        drop(old);
    }
}

/// A child killed and reaped however the test ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// While the new server starts, a user's `SIGTTIN` or `SIGWINCH` to fdgrab (meant
/// for the server) neither stops fdgrab (`SIGTTIN`'s default) nor calls the
/// handover off; a `SIGINT` afterwards still does.
#[test]
fn exec_terminal_signals_while_waiting_do_not_call_the_handover_off() {
    let old = old_server();
    let (mut child, _) = start_never_ready(&old, &[]);
    for sig in [libc::SIGTTIN, libc::SIGWINCH, libc::SIGTTOU] {
        // SAFETY: kill(2) on our own child's pid, which it keeps until we reap it.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0, "kill");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(child.try_wait().expect("try_wait"), None, "fdgrab ended");
    assert_ne!(proc_state(child.id()), Some('T'), "fdgrab was stopped");
    interrupt_and_expect_abort(&old, child);
}
