//! Attacks on `cat`, `put`, `redirect`, `get` and `steal` that the commands' own
//! tests did not try: special files, odd fd maps, records and spawn corner cases.
//! Every target is a real process, checked after each case.

use fdgrab_testkit::{
    assert_success as assert_ok, proc_fds, run_fdgrab, test_path, wait_timeout, Target, TIMEOUT,
};
use std::process::{Child, Command, Stdio};

/// A `sleep` whose stdout is `out`, killed and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn with_stdout(out: &std::path::Path) -> Self {
        let file = std::fs::File::create(out).expect("create the target's stdout");
        let mut cmd = Command::new("sleep");
        cmd.arg("300").stdout(file);
        Self::from_command(cmd)
    }

    /// `cmd` must run `sleep`.
    fn from_command(mut cmd: Command) -> Self {
        let child = cmd.stdin(Stdio::null()).spawn().expect("sleep");
        // Until `sleep` sleeps, its table still changes (the spawner's pipe, the
        // locale files it reads at start-up).
        let deadline = std::time::Instant::now() + TIMEOUT;
        let sleeping = |pid: u32| {
            let sc = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            let nr = sc
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<i64>().ok());
            nr == Some(libc::SYS_clock_nanosleep) || nr == Some(libc::SYS_nanosleep)
        };
        while !sleeping(child.id()) {
            assert!(std::time::Instant::now() < deadline, "sleep never started");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Sleeper(child)
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    fn fd_link(&self, fd: i32) -> String {
        std::fs::read_link(format!("/proc/{}/fd/{fd}", self.0.id()))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = wait_timeout(&mut self.0, TIMEOUT);
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    test_path("fdgrab-attack", name)
}

/// `redirect PID 1 /dev/null` is how one silences a chatty process, and a FIFO is
/// how one pipes it elsewhere: neither can be truncated (`ftruncate` gives EINVAL),
/// and neither needs to be, as a shell's `>` (O_TRUNC, ignored there) shows.
#[test]
fn redirect_and_put_to_devices_and_fifos() {
    let log = tmp("devnull-target.out");
    let t = Sleeper::with_stdout(&log);
    let r = run_fdgrab(["redirect", "--json", &t.pid(), "1", "/dev/null"]);
    assert_ok(&r);
    assert_eq!(t.fd_link(1), "/dev/null");
    let doc: serde_json::Value = serde_json::from_slice(&r.stdout).expect("json");
    let saved = doc["saved_fd"].as_i64().expect("saved_fd").to_string();
    assert_ok(&run_fdgrab(["redirect", "--undo", &t.pid(), "1", &saved]));
    assert_eq!(t.fd_link(1), log.display().to_string());

    let out = run_fdgrab(["put", &t.pid(), "7", "--file", "/dev/null"]);
    assert_ok(&out);
    assert_eq!(t.fd_link(7), "/dev/null");

    let fifo = tmp("redirect.fifo");
    let _ = std::fs::remove_file(&fifo);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from(0o600),
        0,
    )
    .expect("mkfifo");
    // A reader, so that the writer's open does not block.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("fifo reader");
    let out = run_fdgrab(["put", &t.pid(), "8", "--file", fifo.to_str().expect("utf8")]);
    assert_ok(&out);
    // That FIFO, not merely some pipe.
    use std::os::unix::fs::MetadataExt;
    let installed = std::fs::metadata(format!("/proc/{}/fd/8", t.pid())).expect("fd 8");
    let made = std::fs::metadata(&fifo).expect("the fifo");
    assert_eq!(
        (installed.dev(), installed.ino()),
        (made.dev(), made.ino()),
        "fd 8 is {}",
        t.fd_link(8)
    );
    drop(reader);
    // The target lives on with everything put into it.
    assert!(
        fdgrab_testkit::status_field(t.0.id() as i32, "State").is_some_and(|s| s.starts_with('S')),
        "the target is no longer asleep"
    );
    assert_eq!(t.fd_link(7), "/dev/null");
    assert_eq!(t.fd_link(1), log.display().to_string());
}

use std::os::unix::fs::OpenOptionsExt;

/// `fdgrab redirect PID 1 FILE | true` (or `fdgrab cat PID FD | head`): a reader
/// that goes away is not a failure of the command. Before, `redirect` panicked
/// (exit 101, a backtrace) *after* redirecting the target, and `cat` printed
/// "Broken pipe" and exited 1. Now fdgrab ends quietly with 141, as a shell reports
/// a process killed by SIGPIPE, and the redirect it made stays recorded for undo.
#[test]
fn closed_stdout_is_a_quiet_141_not_a_panic() {
    let log = tmp("epipe-target.out");
    let t = Sleeper::with_stdout(&log);
    std::fs::write(&log, "something to print\n").expect("write the log");
    let new = tmp("epipe-redirect.out");
    for args in [
        vec!["cat".to_string(), t.pid(), "1".into()],
        vec![
            "redirect".to_string(),
            t.pid(),
            "1".into(),
            new.display().to_string(),
        ],
    ] {
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        drop(r);
        let mut cmd = fdgrab_testkit::fdgrab();
        cmd.args(&args).stdin(Stdio::null()).stderr(Stdio::piped());
        cmd.stdout(Stdio::from(w));
        let child = cmd.spawn().expect("fdgrab");
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
    // The redirect happened and can be undone from its record.
    let saved = std::fs::read_dir(format!("/proc/{}/fd", t.0.id()))
        .expect("fds")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&n| n != 1 && t.fd_link(n) == log.display().to_string())
        .expect("the saved fd");
    assert_eq!(t.fd_link(1), new.display().to_string());
    assert_ok(&run_fdgrab([
        "redirect",
        "--undo",
        &t.pid(),
        "1",
        &saved.to_string(),
    ]));
    assert_eq!(t.fd_link(1), log.display().to_string());
}

/// `put PID N --fd 3` when the shell gave fdgrab no fd 3: fdgrab's own pidfd of
/// the target used to be opened first and land on 3, so the "fdgrab has no fd 3
/// open" check passed and the target got a pidfd of itself. The inherited fd must
/// be taken before fdgrab opens anything of its own.
#[test]
fn put_fd_never_passes_fdgrabs_own_descriptor() {
    let t = Sleeper::with_stdout(&tmp("own-fd-target.out"));
    let before = proc_fds(t.0.id() as i32);
    let script = format!(
        "exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; exec '{}' put {} 9 --fd 3",
        fdgrab_testkit::bin("fdgrab").display(),
        t.pid()
    );
    let out = fdgrab_testkit::output_timeout(Command::new("sh").args(["-c", &script]), TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no fd 3 open"), "{err}");
    assert_eq!(proc_fds(t.0.id() as i32), before);
}

/// Without `XDG_RUNTIME_DIR`, a user's redirect records live in
/// `$TMPDIR/fdgrab-UID/redirect`. Another user can create `fdgrab-UID` first; the
/// record directory inside is then the victim's, but its parent is the attacker's,
/// who can swap it for a directory of forged records between fdgrab's check and
/// its read. A parent fdgrab's user does not own is refused: no record is
/// written there, and `--undo` refuses (exit 2, nothing changed).
#[test]
fn redirect_records_refuse_a_parent_another_user_owns() {
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip("needs root to act as two users");
        return;
    }
    let base = tmp("records-tmpdir");
    std::fs::create_dir_all(&base).expect("mkdir");
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
        .expect("chmod");
    // The "attacker" (uid 4242) got there first.
    let planted = base.join("fdgrab-65534");
    std::fs::create_dir_all(&planted).expect("mkdir");
    std::fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    std::os::unix::fs::chown(&planted, Some(4242), Some(4242)).expect("chown");
    // Target and fdgrab both run as nobody.
    let as_nobody = |cmd: &mut Command| {
        cmd.uid(65534).gid(65534);
    };
    let out_file = base.join("target.out");
    std::fs::write(&out_file, "").expect("create");
    std::os::unix::fs::chown(&out_file, Some(65534), Some(65534)).expect("chown");
    let mut sleep = Command::new("sleep");
    sleep
        .arg("300")
        .stdout(std::fs::File::create(&out_file).expect("open"));
    as_nobody(&mut sleep);
    let t = Sleeper::from_command(sleep);
    let new = base.join("new.out");
    let mut c = fdgrab_testkit::fdgrab();
    c.args(["redirect", "--json", &t.pid(), "1"])
        .arg(&new)
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", &base);
    as_nobody(&mut c);
    let r = fdgrab_testkit::output_timeout(&mut c, TIMEOUT);
    assert_ok(&r);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("will refuse it"), "{err}");
    let doc: serde_json::Value = serde_json::from_slice(&r.stdout).expect("json");
    let saved = doc["saved_fd"].as_i64().expect("saved_fd").to_string();
    let mut u = fdgrab_testkit::fdgrab();
    u.args(["redirect", "--undo", &t.pid(), "1", &saved])
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", &base);
    as_nobody(&mut u);
    let before = proc_fds(t.0.id() as i32);
    let out = fdgrab_testkit::output_timeout(&mut u, TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(proc_fds(t.0.id() as i32), before);
    let _ = std::fs::remove_dir_all(&base);
}

use std::os::unix::process::CommandExt;

/// Handing N fds to CMD takes about 2N of fdgrab's own (each copy and the copy
/// the fd plan keeps), so a low `ulimit -n` runs out well before N reaches it.
/// That was a bare "F_DUPFD_CLOEXEC: Too many open files"; the message now says
/// what ran out and what to raise, and the target keeps everything.
#[test]
fn get_past_our_fd_limit_names_the_limit() {
    let t = Sleeper::with_stdout(&tmp("limit-target.out"));
    // 40 copies of its stdout, at 10..49.
    let fds: Vec<String> = (10..50).map(|n| n.to_string()).collect();
    for n in 10..50 {
        let out = run_fdgrab(["put", &t.pid(), &n.to_string(), "--file", "/dev/null"]);
        assert_ok(&out);
    }
    let before = proc_fds(t.0.id() as i32);
    let script = format!(
        "ulimit -n 60 && exec '{}' get {} {} -- true",
        fdgrab_testkit::bin("fdgrab").display(),
        t.pid(),
        fds.join(" ")
    );
    let out = fdgrab_testkit::output_timeout(Command::new("sh").args(["-c", &script]), TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ulimit -n"), "{err}");
    assert_eq!(proc_fds(t.0.id() as i32), before);
}

/// Two fds for one NEWFD (or a NEWFD past fdgrab's limit) is a usage error that
/// docs/grab.md promises "before anything is taken". It was found only once the
/// copies existed: with `--backend ptrace` after stopping the target and making it
/// send them.
#[test]
fn bad_newfd_maps_are_refused_before_anything_is_taken() {
    let t = Sleeper::with_stdout(&tmp("newfd-target.out"));
    for (cmd, maps) in [
        ("get", ["0:5", "1:5"]),
        ("steal", ["0:5", "1:5"]),
        ("get", ["0:5", "1:2147483647"]),
    ] {
        let out = run_fdgrab([
            "-v",
            cmd,
            "--backend",
            "ptrace",
            &t.pid(),
            maps[0],
            maps[1],
            "--",
            "true",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd} {maps:?}: {err}");
        assert!(!err.contains("took copies"), "{cmd} {maps:?}: {err}");
    }
    assert_eq!(t.fd_link(1), tmp("newfd-target.out").display().to_string());
}

/// A FILE whose name is not UTF-8: `redirect --json` panicked (exit 101) after
/// redirecting, plain `redirect` could not write its undo record ("path contains
/// invalid UTF-8"), so `--undo` refused for good, and `put --json` panicked too.
/// The JSON now carries the name as `ls --json` does (`path` lossy, `path_bytes`
/// exact).
#[test]
fn non_utf8_file_names_redirect_undo_and_report() {
    use std::os::unix::ffi::OsStrExt;
    let log = tmp("utf8-target.out");
    let t = Sleeper::with_stdout(&log);
    let dir = tmp("");
    let name = std::ffi::OsStr::from_bytes(b"odd-\xff-name.log");
    let file = dir.join(name);
    let mut c = fdgrab_testkit::fdgrab();
    c.args(["redirect", "--json", &t.pid(), "1"]).arg(&file);
    let r = fdgrab_testkit::output_timeout(&mut c, TIMEOUT);
    assert_ok(&r);
    let doc: serde_json::Value = serde_json::from_slice(&r.stdout).expect("json");
    let bytes: Vec<u8> = doc["path_bytes"]
        .as_array()
        .expect("path_bytes")
        .iter()
        .map(|b| b.as_u64().expect("byte") as u8)
        .collect();
    assert_eq!(bytes, file.as_os_str().as_bytes());
    assert!(
        r.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let saved = doc["saved_fd"].as_i64().expect("saved_fd").to_string();
    assert_ok(&run_fdgrab(["redirect", "--undo", &t.pid(), "1", &saved]));
    assert_eq!(t.fd_link(1), log.display().to_string());

    let mut c = fdgrab_testkit::fdgrab();
    c.args(["put", "--json", &t.pid(), "9", "--file"])
        .arg(&file);
    let r = fdgrab_testkit::output_timeout(&mut c, TIMEOUT);
    assert_ok(&r);
    let doc: serde_json::Value = serde_json::from_slice(&r.stdout).expect("json");
    assert!(doc["source"]["file_bytes"].is_array(), "{doc}");
}

/// Without `kcmp` (no `CONFIG_KCMP`, or refused), the check that a copy the
/// target sent (ptrace) is the target's fd falls back to comparing device and
/// inode: `cat` still delivers the right file, and the trace shows that comparison
/// is what decided.
#[test]
fn identity_check_without_kcmp_compares_the_inode() {
    let t = Target::spawn(["zoo"]);
    let fd = t.fd_labelled("file").to_string();
    let pid = t.pid.to_string();
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-e",
        "trace=kcmp,stat,newfstatat,statx",
        "-e",
        "inject=kcmp:error=ENOSYS",
        "-o",
        "/dev/stderr",
    ])
    .arg(fdgrab_testkit::bin("fdgrab"))
    .args(["cat", "--backend", "ptrace", &pid, &fd]);
    let out = fdgrab_testkit::output_timeout(&mut cmd, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let want = std::fs::read(
        t.fd_report(fd.parse().expect("fd"))["path"]
            .as_str()
            .expect("path"),
    )
    .expect("the target's file");
    assert_eq!(out.stdout, want, "{err}");
    let kcmp = err
        .find("kcmp(")
        .unwrap_or_else(|| panic!("no kcmp was tried: {err}"));
    assert!(err[kcmp..].contains("(INJECTED)"), "{err}");
    let fallback = format!("/proc/{pid}/task/{pid}/fd/{fd}");
    assert!(
        err[kcmp..].contains(&fallback),
        "no stat of {fallback} after the refused kcmp: {err}"
    );
}
