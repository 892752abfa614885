//! The injecting commands against targets under seccomp, end to end: as root the
//! filters are read and suspended where needed; as another user they cannot be
//! read, so a filtered target is refused (exit 4) unless `--force` is given. After
//! every case the target is alive, answering, untraced, with nothing of ours left.

use fdgrab_testkit::{fdgrab, is_root, output_timeout, skip, Snapshot, Target, TIMEOUT};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A target as uid 65534 under a filter giving `action` to `calls`.
fn nobody_target(action: &str, calls: &str) -> Target {
    let mut cmd = Command::new(fdgrab_testkit::bin("fdgrab-target"));
    cmd.args(["seccomp", action, calls]).uid(65534).gid(65534);
    Target::spawn_cmd(cmd)
}

fn fdgrab_as_root(args: &[&str]) -> Output {
    output_timeout(fdgrab().args(args), TIMEOUT)
}

fn fdgrab_as_nobody(args: &[&str]) -> Output {
    let mut cmd = fdgrab();
    cmd.args(args).uid(65534).gid(65534);
    output_timeout(&mut cmd, TIMEOUT)
}

#[test]
fn seccomp_cli_unreadable_filter_refused_without_force() {
    if !is_root() {
        skip("switching to uid 65534 needs root");
        return;
    }
    let mut t = nobody_target("errno", "mknod");
    let b = Snapshot::take(t.pid);
    let pid = t.pid.to_string();
    let file = t.fd_labelled("file").to_string();
    // `send` connects to --to before it takes anything: a socket that listens, which
    // uid 65534 may connect to, so that the seccomp check is what refuses.
    let dir = std::env::temp_dir().join(format!("fdgrab-seccomp-send-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let open = |p: &std::path::Path| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod")
    };
    open(&dir);
    let to = dir.join("to.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&to).expect("bind --to");
    open(&to);
    let to = to.display().to_string();
    let cases: [&[&str]; 6] = [
        &["put", &pid, "61", "--file", "/dev/null", "--read"],
        &["redirect", &pid, "1", "/dev/null"],
        &["cat", "--backend", "ptrace", &pid, &file],
        &["get", "--backend", "ptrace", &pid, &file, "--", "true"],
        &["send", "--backend", "ptrace", &pid, &file, "--to", &to],
        &["steal", "--backend", "ptrace", &pid, &file, "--", "true"],
    ];
    for args in cases {
        let case = args.join(" ");
        let out = fdgrab_as_nobody(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{case}: {err}");
        assert!(
            err.contains("seccomp") && err.contains("--force") && err.contains(&pid),
            "{case}: {err}"
        );
        b.assert_unharmed(&mut t, &b.fds, &case);
    }
    // A steal whose copy needs no injection (pidfd_getfd) must still be refused
    // before CMD starts: the close that would follow cannot be checked.
    let marker = std::env::temp_dir().join(format!("fdgrab-steal-marker-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let touch = format!("touch {}", marker.display());
    let out = fdgrab_as_nobody(&["steal", &pid, &file, "--", "sh", "-c", &touch]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "steal by pidfd: {err}");
    assert!(err.contains("seccomp") && err.contains("--force"), "{err}");
    assert!(!marker.exists(), "CMD ran although the close was refused");
    b.assert_unharmed(&mut t, &b.fds, "steal by pidfd");
    // --force: the filter (errno on mknod) is harmless, so the commands now work.
    let out = fdgrab_as_nobody(&["cat", "--force", "--backend", "ptrace", &pid, &file]);
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inject test file\n");
    b.assert_unharmed(&mut t, &b.fds, "cat --force");
    let out = fdgrab_as_nobody(&[
        "put",
        "--force",
        &pid,
        "61",
        "--file",
        "/dev/null",
        "--read",
    ]);
    assert_success(&out);
    let fds = b.fds_with("61 -> /dev/null");
    b.assert_unharmed(&mut t, &fds, "put --force");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Forced into a filter that traps the injected `socket`: the trap is caught (the
/// SIGSYS is not delivered), the command fails with exit 4 and the target lives.
#[test]
fn seccomp_cli_forced_into_a_trap_the_target_survives() {
    if !is_root() {
        skip("switching to uid 65534 needs root");
        return;
    }
    let mut t = nobody_target("trap", "socket");
    let b = Snapshot::take(t.pid);
    let pid = t.pid.to_string();
    let file = t.fd_labelled("file").to_string();
    let out = fdgrab_as_nobody(&["cat", "--force", "--backend", "ptrace", &pid, &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("socket") && err.contains("SIGSYS"), "{err}");
    b.assert_unharmed(&mut t, &b.fds, "forced trap");
}

/// As root the default plan suspends a filter that would kill the target.
#[test]
fn seccomp_cli_root_serves_a_kill_filter_by_suspending_it() {
    if !is_root() {
        skip("reading and suspending seccomp filters needs root");
        return;
    }
    let mut t = Target::spawn(["seccomp", "kill-process", "socket,mmap,dup3"]);
    let b = Snapshot::take(t.pid);
    let pid = t.pid.to_string();
    let file = t.fd_labelled("file").to_string();
    let out = fdgrab_as_root(&["-v", "cat", "--backend", "ptrace", &pid, &file]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("PTRACE_O_SUSPEND_SECCOMP"), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inject test file\n");
    b.assert_unharmed(&mut t, &b.fds, "cat");
    assert_success(&fdgrab_as_root(&[
        "put",
        &pid,
        "61",
        "--file",
        "/dev/null",
        "--read",
    ]));
    let fds = b.fds_with("61 -> /dev/null");
    b.assert_unharmed(&mut t, &fds, "put");
}
