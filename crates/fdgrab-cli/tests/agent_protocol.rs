//! The agent's socket and its handling of bad clients: each malformed message is
//! rejected and logged, the connection is closed, and the agent goes on serving a
//! real container, even while a slow client sits on a half-sent document.

use fdgrab::passfd::send_fds;
use fdgrab_testkit::oci::{
    unique, AgentProc, Bundle, Container, FakeTenant, NetNs, Runtime, TempDir,
};
use fdgrab_testkit::{fdgrab, is_root, output_timeout, TIMEOUT};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

const DOC: &str = r#"{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":1,"metadata":"","state":{"ociVersion":"1.0.2","id":"fake","status":"creating","pid":1,"bundle":"/nonexistent"}}"#;

fn connect(agent: &AgentProc) -> UnixStream {
    let s = UnixStream::connect(&agent.socket).expect("connecting to the agent");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

/// The agent closes a rejected connection: our read sees EOF.
fn expect_closed(mut s: UnixStream, what: &str) {
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => {}
        other => panic!("{what}: the agent should close the connection, got {other:?}"),
    }
}

fn send_with(agent: &AgentProc, data: &[u8], fds: &[BorrowedFd<'_>]) -> UnixStream {
    let s = connect(agent);
    send_fds(&s, data, fds).expect("sendmsg");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    s
}

#[test]
fn agent_rejects_malformed_messages_and_keeps_serving() {
    if !is_root() {
        fdgrab_testkit::skip("the agent needs root");
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80"]);
    let baseline = agent.fd_count();

    // A slow client: half a document, then silence. It must not hold up anyone.
    let mut slow = connect(&agent);
    slow.write_all(&DOC.as_bytes()[..40])
        .expect("half a document");

    let (pipe_r, pipe_w) = rustix::pipe::pipe().expect("pipe");
    let cases: Vec<(&str, Vec<u8>, Vec<BorrowedFd<'_>>, &str)> = vec![
        (
            "garbage JSON",
            b"this is not json {".to_vec(),
            vec![pipe_r.as_fd()],
            "not a ContainerProcessState document",
        ),
        (
            "no fd",
            DOC.as_bytes().to_vec(),
            vec![],
            "names 1 descriptors but 0 came",
        ),
        (
            "two fds",
            DOC.as_bytes().to_vec(),
            vec![pipe_r.as_fd(), pipe_w.as_fd()],
            "names 1 descriptors but 2 came",
        ),
        (
            "not a seccomp listener",
            DOC.as_bytes().to_vec(),
            vec![pipe_r.as_fd()],
            "is not a seccomp listener but \"pipe:",
        ),
        (
            "truncated",
            DOC.as_bytes()[..DOC.len() / 2].to_vec(),
            vec![pipe_r.as_fd()],
            "in the middle of the document",
        ),
        (
            "wrong status",
            DOC.replace("creating", "stopped").into_bytes(),
            vec![pipe_r.as_fd()],
            "status is `stopped`",
        ),
        (
            "no seccompFd name",
            DOC.replace("seccompFd", "pidFd").into_bytes(),
            vec![pipe_r.as_fd()],
            "names no `seccompFd`",
        ),
    ];
    for (what, data, fds, reason) in cases {
        let s = send_with(&agent, &data, &fds);
        expect_closed(s, what);
        agent
            .log
            .wait_for(reason, TIMEOUT)
            .unwrap_or_else(|e| panic!("{what}: rejection not logged: {e}"));
    }
    // Too many fds for the agent's control buffer: the kernel truncates, the agent says so.
    let many: Vec<BorrowedFd<'_>> = std::iter::repeat_n(pipe_r.as_fd(), 20).collect();
    expect_closed(send_with(&agent, DOC.as_bytes(), &many), "twenty fds");
    agent
        .log
        .wait_for("descriptors attached", TIMEOUT)
        .expect("too many fds logged");
    // A document that arrives in many small writes is fine (it only lacks a real listener).
    let s = connect(&agent);
    send_fds(&s, &DOC.as_bytes()[..1], &[pipe_r.as_fd()]).expect("first byte with the fd");
    for chunk in DOC.as_bytes()[1..].chunks(7) {
        (&s).write_all(chunk).expect("chunk");
        std::thread::sleep(Duration::from_millis(2));
    }
    expect_closed(s, "document in pieces");
    // The line is written before the close, but reaches us through a pipe read by
    // another thread: wait for it rather than read the log at once.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let log = loop {
        let log = agent.log.text();
        if log.matches("is not a seccomp listener").count() >= 2
            || std::time::Instant::now() > deadline
        {
            break log;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        log.matches("is not a seccomp listener").count(),
        2,
        "the split document was parsed whole: {log}"
    );

    // The agent still serves a real container while the slow client hangs on.
    for rt in Runtime::ALL {
        // Skips loudly (a failure under FDGRAB_REQUIRE_ALL) and prepares the host.
        if !rt.usable() {
            continue;
        }
        let ns = NetNs::new();
        let bundle = Bundle::new(&fdgrab_testkit::oci::httpd_spec(&agent.socket, &ns));
        let mut c = Container::run(
            rt,
            &bundle,
            &unique(&format!("fdgrab-{}-after-bad", rt.name())),
        );
        let resp = ns
            .http_get_eventually(80, Duration::from_secs(20))
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; {}; agent {}",
                    rt.name(),
                    c.output.text(),
                    agent.log.text()
                )
            });
        assert!(resp.contains(" 200 "), "{resp}");
        c.kill();
    }

    // The slow client is dropped at its deadline (5 s), with a reason.
    agent
        .log
        .wait_for("no complete document within", Duration::from_secs(15))
        .expect("slow client timed out");
    expect_closed(slow, "slow client");

    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.fd_count() != baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        agent.fd_count(),
        baseline,
        "no fd of a rejected client is kept: {}",
        agent.log.text()
    );
}

/// A container id and an annotation carry text from whoever made the container
/// into the agent's log: a newline there must not start a log line of its own.
#[test]
fn agent_log_lines_cannot_be_forged_by_a_container() {
    if !is_root() {
        fdgrab_testkit::skip("the agent needs root");
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80"]);
    let id = format!("{}\nFORGED-ID fdgrab: forged", unique("forge"));
    let mut t = FakeTenant::spawn_annotated(&agent.socket, &id, "tcp:80,tcp:8\nFORGED-SPEC x");
    assert_eq!(t.line(TIMEOUT)["ready"], true);
    let log = agent
        .log
        .wait_for("supervising container", TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(log.contains("unreadable narrowing request"), "{log}");
    assert!(
        log.lines()
            .all(|l| !l.starts_with("FORGED-ID") && !l.starts_with("FORGED-SPEC")),
        "{log}"
    );
    assert!(
        log.contains("\\nFORGED-ID"),
        "the id is shown escaped: {log}"
    );
}

#[test]
fn agent_socket_is_private_to_root() {
    if !is_root() {
        fdgrab_testkit::skip("the agent needs root");
        return;
    }
    let agent = AgentProc::start(&["--allow-bind", "tcp:80"]);
    let meta = std::fs::symlink_metadata(&agent.socket).expect("socket file");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
}

#[test]
fn agent_replaces_a_stale_socket() {
    if !is_root() {
        fdgrab_testkit::skip("the agent needs root");
        return;
    }
    let dir = TempDir::new("fdgrab-stale");
    let socket = dir.path().join("agent.sock");
    // A socket file whose listener is gone, as a killed agent leaves behind.
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let audit = dir.path().join("audit.jsonl");
    let agent = AgentProc::start_at(
        TempDir::new("fdgrab-stale-agent"),
        &socket,
        &audit,
        &["--allow-bind", "80"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    agent
        .log
        .wait_for("replacing a stale socket", TIMEOUT)
        .expect("logged");
    UnixStream::connect(&socket).expect("the new agent listens");
}

#[test]
fn agent_refuses_a_socket_a_live_agent_owns() {
    if !is_root() {
        fdgrab_testkit::skip("the agent needs root");
        return;
    }
    let first = AgentProc::start(&["--allow-bind", "tcp:80"]);
    let out = output_timeout(
        fdgrab().args(["agent", "--socket"]).arg(&first.socket),
        TIMEOUT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another agent is already listening on"),
        "{err}"
    );
    // The first agent is untouched and still answers.
    let s = UnixStream::connect(&first.socket).expect("first agent still listening");
    drop(s);
    let meta = std::fs::symlink_metadata(&first.socket).expect("socket still there");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

/// Runs `fdgrab agent --socket SOCKET --allow-bind SPEC`, expects a usage error
/// (exit 2), and returns its stderr.
fn agent_usage_error(socket: &std::path::Path, spec: &str) -> String {
    let mut cmd = fdgrab();
    cmd.args(["agent", "--socket"])
        .arg(socket)
        .args(["--allow-bind", spec]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

#[test]
fn agent_refuses_bad_arguments() {
    let dir = TempDir::new("fdgrab-agent-args");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "not a socket").expect("file");
    let err = agent_usage_error(&file, "80");
    assert!(err.contains("exists and is not a socket"), "{err}");
    let kept = std::fs::read_to_string(&file).expect("file kept");
    assert_eq!(kept, "not a socket");

    let sock = dir.path().join("agent.sock");
    let err = agent_usage_error(&sock, "tcp:http");
    assert!(err.contains("--allow-bind"), "{err}");
    assert!(!sock.exists(), "no socket is created for a refused policy");
}

/// `--max-pods` out of range, negative, not a number or empty: a usage error
/// (exit 2) that names the argument, and no socket. (`-1` was taken for an
/// unknown option: "unexpected argument '-1' found", without the argument.)
#[test]
fn agent_refuses_bad_max_pods() {
    let dir = TempDir::new("fdgrab-agent-max-pods");
    let sock = dir.path().join("agent.sock");
    for bad in ["0", "-1", "65537", "many", ""] {
        let mut cmd = fdgrab();
        cmd.args(["agent", "--socket"]).arg(&sock).args([
            "--allow-bind",
            "tcp:85",
            "--max-pods",
            bad,
        ]);
        let out = output_timeout(&mut cmd, TIMEOUT);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("--max-pods"), "{bad:?}: {err}");
        assert!(!sock.exists(), "{bad:?}: no socket");
    }
}
