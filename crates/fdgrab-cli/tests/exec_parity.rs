//! The new server sees what `systemd-socket-activate` would give it for the same
//! kind of sockets: the same variables, fd numbers, fd flags and status flags.

use fdgrab_testkit::handover::{free_port_on, TempDir};
use fdgrab_testkit::{bin, fdgrab, wait_timeout, Target, TIMEOUT};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// The environment both launchers start from; systemd-socket-activate passes on
/// exactly these four (plus -E ones), so the comparison is like for like.
fn base_env(cmd: &mut Command) {
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/root")
        .env("TERM", "dumb")
        .env("USER", "root");
}

fn wait_file(p: &Path) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(p) {
            if let Ok(v) = serde_json::from_str(&text) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The systemd side's listening address, used by no other test.
const PARITY_IP: &str = "127.77.0.1";

fn kill(pid: i64) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
}

/// Our probe under systemd-socket-activate, on a TCP port and a unix path of its
/// making. It starts the command on the first connection.
fn under_systemd(dir: &Path) -> Value {
    let port = free_port_on(PARITY_IP);
    let report = dir.join("systemd.json");
    let unix = dir.join("systemd.sock");
    let mut cmd = Command::new(SOCKET_ACTIVATE);
    base_env(&mut cmd);
    cmd.arg(format!("--listen={PARITY_IP}:{port}"))
        .arg(format!("--listen={}", unix.display()))
        .arg("--fdname=web:ctl")
        .arg(bin("fdgrab-activated"))
        .arg("probe")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn systemd-socket-activate");
    let deadline = Instant::now() + TIMEOUT;
    let conn = loop {
        match std::net::TcpStream::connect((PARITY_IP, port)) {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "systemd-socket-activate never listened: {e}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    let v = wait_file(&report);
    drop(conn);
    kill(v["pid"].as_i64().expect("pid"));
    let _ = wait_timeout(&mut child, TIMEOUT);
    v
}

/// The same probe started by `fdgrab exec` with a TCP listener and a unix listener
/// taken from a running process (the zoo target: plain blocking sockets).
fn under_fdgrab(dir: &Path) -> Value {
    let zoo = Target::spawn(["zoo"]);
    let tcp = zoo.fd_report(zoo.fd_labelled("tcp-listen") as i64)["socket"]["local"].clone();
    let unix = PathBuf::from(zoo.report["dir"].as_str().expect("dir")).join("listen.sock");
    let report = dir.join("fdgrab.json");
    let mut cmd = fdgrab();
    base_env(&mut cmd);
    let out = cmd
        .args(["exec", &zoo.pid.to_string()])
        .arg(format!(
            "tcp:{}:{}",
            tcp["address"].as_str().expect("addr"),
            tcp["port"]
        ))
        .arg(format!("unix:{}", unix.display()))
        .args(["--name", "web", "--name", "ctl", "--detach", "--"])
        .arg(bin("fdgrab-activated"))
        .arg("probe")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fdgrab");
    let mut out = out;
    let st = wait_timeout(&mut out, TIMEOUT).expect("fdgrab exec --detach did not return");
    assert!(st.success(), "fdgrab exec failed: {st:?}");
    let v = wait_file(&report);
    kill(v["pid"].as_i64().expect("pid"));
    v
}

#[test]
fn exec_environment_matches_systemd_socket_activate() {
    assert!(
        Path::new(SOCKET_ACTIVATE).exists(),
        "{SOCKET_ACTIVATE} is missing (Debian package systemd; ./scripts/test installs it)"
    );
    let dir = TempDir::new("exec-parity");
    let sd = under_systemd(dir.path());
    let fg = under_fdgrab(dir.path());
    eprintln!("systemd-socket-activate gave: {sd}\nfdgrab exec gave: {fg}");

    // Variables: the same names, except NOTIFY_SOCKET which only fdgrab provides
    // (systemd itself does for Type=notify services; the tool does not).
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v["env"]
            .as_object()
            .expect("env")
            .keys()
            .filter(|k| *k != "NOTIFY_SOCKET")
            .cloned()
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&fg), keys(&sd));
    assert!(fg["env"]["NOTIFY_SOCKET"]
        .as_str()
        .is_some_and(|s| s.starts_with('@')));
    for v in [&sd, &fg] {
        assert_eq!(v["env"]["LISTEN_FDS"], "2");
        assert_eq!(v["env"]["LISTEN_FDNAMES"], "web:ctl");
        assert_eq!(
            v["env"]["LISTEN_PID"],
            v["pid"].to_string(),
            "LISTEN_PID is the server's own pid"
        );
    }
    for k in ["PATH", "HOME", "TERM", "USER"] {
        assert_eq!(fg["env"][k], sd["env"][k], "{k}");
    }

    // Descriptors: the same numbers; for the passed sockets the same fd flags
    // (close-on-exec cleared), status flags and socket identity.
    let fds = |v: &Value| -> Vec<Value> { v["fds"].as_array().expect("fds").clone() };
    let numbers = |v: &Value| -> Vec<i64> {
        fds(v)
            .iter()
            .map(|f| f["fd"].as_i64().expect("fd"))
            .collect()
    };
    assert_eq!(
        numbers(&fg),
        vec![0, 1, 2, 3, 4],
        "no fd of fdgrab's may leak into the new server"
    );
    assert_eq!(numbers(&fg), numbers(&sd));
    for (a, b) in fds(&fg).iter().zip(fds(&sd).iter()).skip(3) {
        for field in [
            "cloexec",
            "status_flags",
            "is_socket",
            "domain",
            "type",
            "listening",
        ] {
            assert_eq!(
                a[field], b[field],
                "fd {}: {field} differs: fdgrab {a} vs systemd {b}",
                a["fd"]
            );
        }
        assert_eq!(a["cloexec"], false);
        assert_eq!(a["listening"], true);
    }
}
