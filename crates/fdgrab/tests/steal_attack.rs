//! A steal closes the target's fds only after the hook (starting CMD) has run,
//! which takes milliseconds. A busy server reuses fd numbers all the time (accept,
//! open): the number the copy was taken from may name another file by then, and
//! closing it would break the target.

use fdgrab::grab::Preflight;
use fdgrab::{CloseMode, Error, GrabOptions, TargetFd};
use fdgrab_testkit::{read_line_timeout, wait_timeout, TIMEOUT};
use std::io::{BufReader, Write};
use std::process::{Command, Stdio};

/// Python holding fd 7 on one file; on "swap" it puts another file at 7.
const SWAPPER: &str = r#"
import os, sys
a = os.open("/etc/hostname", os.O_RDONLY); os.dup2(a, 7); os.close(a)
print("ready", flush=True)
for line in sys.stdin:
    b = os.open("/etc/passwd", os.O_RDONLY); os.dup2(b, 7); os.close(b)
    print("swapped", flush=True)
"#;

#[test]
fn steal_never_closes_a_number_the_target_reused() {
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip("the close half of a steal injects: needs root here");
        return;
    }
    let mut py = Command::new("python3")
        .args(["-c", SWAPPER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = py.id() as i32;
    let mut out = BufReader::new(py.stdout.take().expect("stdout"));
    let mut stdin = py.stdin.take().expect("stdin");
    assert_eq!(
        read_line_timeout(&mut out, TIMEOUT).expect("ready").trim(),
        "ready"
    );
    let fd = TargetFd::new(7).expect("fd 7");
    let target = Preflight::new(pid)
        .injects()
        .existing(&[fd])
        .check()
        .expect("preflight");
    let taken = GrabOptions::new()
        .steal(CloseMode::Close)
        .grab_many_then(&target, &[fd], |copies| -> fdgrab::Result<usize> {
            // While CMD would be starting, the target reuses the number.
            stdin.write_all(b"swap\n").expect("write");
            stdin.flush().expect("flush");
            let line = read_line_timeout(&mut out, TIMEOUT).expect("swapped");
            assert_eq!(line.trim(), "swapped");
            Ok(copies.len())
        })
        .expect("the copy itself succeeds");
    assert!(
        matches!(taken.closed, Err(Error::IdentityMismatch { .. })),
        "{:?}",
        taken.closed
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/fd/7"))
            .expect("fd 7 must still be open")
            .display()
            .to_string(),
        "/etc/passwd"
    );
    let _ = py.kill();
    let _ = wait_timeout(&mut py, TIMEOUT);
}
