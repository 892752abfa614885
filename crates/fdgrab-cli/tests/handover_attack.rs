//! Hostile and mistaken input to `fdgrab send`: every refusal names the argument
//! and says what it is, and nothing is taken.

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
