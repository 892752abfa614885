//! The one spawner (`fdgrab::spawn`): what the started program sees, read from
//! `/proc` of the real process after its exec, and how each failure is reported.

use fdgrab::signalfd::SignalFd;
use fdgrab::spawn::{Credentials, FdPlan, SignalDefaults, Spawn, SpawnError, Step};
use fdgrab_testkit::status_field;
use rustix::io::Errno;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

fn argv(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A started `sleep`, killed and reaped on drop.
struct Running(fdgrab::spawn::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.terminate(Duration::from_secs(5));
    }
}

impl Running {
    fn pid(&self) -> i32 {
        self.0.pid()
    }
}

/// Starts `sleep` and waits until it sleeps: right after exec the dynamic loader
/// still opens files of its own, which would blur the fd table we check.
fn sleeper(spawn: Spawn) -> Running {
    let r = Running(spawn.spawn().expect("spawn sleep"));
    let deadline = std::time::Instant::now() + fdgrab_testkit::TIMEOUT;
    loop {
        let sc = std::fs::read_to_string(format!("/proc/{}/syscall", r.pid())).unwrap_or_default();
        let nr = sc
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<i64>().ok());
        if nr == Some(libc::SYS_clock_nanosleep) || nr == Some(libc::SYS_nanosleep) {
            return r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sleep never slept: {sc}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn memfd(name: &str) -> OwnedFd {
    rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).expect("memfd")
}

fn fds_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort();
    v
}

fn cloexec(pid: i32, fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .expect("flags line");
    u64::from_str_radix(flags.trim(), 8).expect("octal") & libc::O_CLOEXEC as u64 != 0
}

fn link(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .expect("readlink")
        .to_string_lossy()
        .into_owned()
}

fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .expect("environ")
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn sigset(pid: i32, key: &str) -> u64 {
    u64::from_str_radix(&status_field(pid, key).expect(key), 16).expect("hex mask")
}

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

#[test]
fn fd_plan_is_exact_and_only_installed_fds_lose_cloexec() {
    let a = memfd("spawn-a");
    let b = memfd("spawn-b");
    // A source already sitting on another source's destination number, and a
    // descriptor of ours without FD_CLOEXEC that must still reach the program.
    let inherited = rustix::io::dup(&a).expect("dup");
    let plan = FdPlan::from_pairs([(&a, 9), (&b, a.as_raw_fd())]).expect("plan");
    let r = sleeper(Spawn::new(&argv(&["sleep", "30"])).expect("argv").fds(plan));
    let pid = r.pid();
    assert!(link(pid, 9).contains("spawn-a"), "{}", link(pid, 9));
    assert!(link(pid, a.as_raw_fd()).contains("spawn-b"));
    assert!(!cloexec(pid, 9) && !cloexec(pid, a.as_raw_fd()));
    let fds = fds_of(pid);
    assert!(fds.contains(&inherited.as_raw_fd()), "{fds:?}");
    // Our close-on-exec fds (b, the memfds' copies) did not follow.
    assert!(!fds.contains(&b.as_raw_fd()), "{fds:?}");

    // With close_other_fds, only 0-2 and the plan remain.
    let plan = FdPlan::listen_fds(&[&a, &b]).expect("plan");
    let r = sleeper(
        Spawn::new(&argv(&["sleep", "30"]))
            .expect("argv")
            .fds(plan)
            .close_other_fds(),
    );
    let fds = fds_of(r.pid());
    assert_eq!(&fds[fds.len() - 2..], &[3, 4], "{fds:?}");
    assert!(fds.iter().all(|&f| f <= 4), "{fds:?}");
    assert!(link(r.pid(), 3).contains("spawn-a") && link(r.pid(), 4).contains("spawn-b"));
}

#[test]
fn fd_plan_refuses_one_number_twice_and_numbers_past_the_limit() {
    let a = memfd("spawn-dup");
    let err = FdPlan::from_pairs([(&a, 7), (&a, 7)]).expect_err("two fds at 7");
    assert!(err.to_string().contains("fd number 7"), "{err}");
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .expect("finite limit");
    let err = FdPlan::from_pairs([(&a, limit as i32)]).expect_err("past the limit");
    assert!(err.to_string().contains("open-file limit"), "{err}");
}

#[test]
fn listen_pid_is_the_childs_own_pid_and_env_is_set() {
    let r = sleeper(
        Spawn::new(&argv(&["sleep", "30"]))
            .expect("argv")
            .env("LISTEN_FDS", "0")
            .env_remove("HOME")
            .listen_pid(),
    );
    let env = environ(r.pid());
    assert!(env.contains(&format!("LISTEN_PID={}", r.pid())), "{env:?}");
    assert!(env.contains(&"LISTEN_FDS=0".to_string()), "{env:?}");
    assert!(!env.iter().any(|e| e.starts_with("HOME=")), "{env:?}");
    assert_eq!(
        env.iter().filter(|e| e.starts_with("LISTEN_PID=")).count(),
        1
    );
}

/// A program whose environment is not changed gets ours passed on as it is (no
/// copy is made then): every entry, in order. (`get`, which execs in place, is
/// checked the same way, with bytes that are not UTF-8, in the CLI's
/// `entry_point` tests.)
#[test]
fn unchanged_environment_is_passed_on_exactly() {
    let ours = std::fs::read("/proc/self/environ").expect("our environ");
    let r = sleeper(Spawn::new(&argv(&["sleep", "30"])).expect("argv"));
    let child = std::fs::read(format!("/proc/{}/environ", r.pid())).expect("child environ");
    assert_eq!(
        String::from_utf8_lossy(&child),
        String::from_utf8_lossy(&ours)
    );
    assert!(
        ours.split(|&b| b == 0).count() > 1,
        "an empty environment proves nothing"
    );
}

#[test]
fn signal_mask_is_empty_and_dispositions_reset() {
    // Blocked here, as get/steal/exec/run block what they forward.
    let _blocked = SignalFd::block(&[libc::SIGTERM, libc::SIGUSR1]).expect("block");
    // SAFETY: sets a disposition of this test process (one test per process).
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let mine = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    let blk = mine
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .expect("SigBlk");
    assert_ne!(
        u64::from_str_radix(blk.trim(), 16).expect("hex") & bit(libc::SIGTERM),
        0
    );

    let r = sleeper(Spawn::new(&argv(&["sleep", "30"])).expect("argv"));
    assert_eq!(
        sigset(r.pid(), "SigBlk"),
        0,
        "the program starts with nothing blocked"
    );
    let ign = sigset(r.pid(), "SigIgn");
    assert_ne!(
        ign & bit(libc::SIGHUP),
        0,
        "an ignored SIGHUP stays ignored (nohup)"
    );
    assert_eq!(
        ign & bit(libc::SIGPIPE),
        0,
        "Rust's ignored SIGPIPE is reset"
    );

    let r = sleeper(
        Spawn::new(&argv(&["sleep", "30"]))
            .expect("argv")
            .signal_defaults(SignalDefaults::All),
    );
    assert_eq!(sigset(r.pid(), "SigBlk"), 0);
    assert_eq!(sigset(r.pid(), "SigIgn"), 0, "every signal at its default");
}

fn spawn_error(s: Spawn) -> SpawnError {
    match s.spawn() {
        Err(fdgrab::Error::Spawn(e)) => e,
        other => panic!("expected a spawn error, got {other:?}"),
    }
}

#[test]
fn not_found_and_not_executable_are_told_apart() {
    let e = spawn_error(Spawn::new(&argv(&["/nonexistent/prog"])).expect("argv"));
    assert!(e.is_not_found() && e.step() == Step::Resolve, "{e:?}");
    let e = spawn_error(Spawn::new(&argv(&["/etc/passwd"])).expect("argv"));
    assert!(!e.is_not_found() && e.errno() == Errno::ACCESS, "{e:?}");

    // Resolution skipped: execve itself fails in the child and says why.
    let dir = std::env::temp_dir().join(format!("fdgrab-spawn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let junk = dir.join("junk");
    std::fs::write(&junk, [0x7fu8, b'E', b'L', b'F', 0, 0, 0, 0]).expect("write");
    std::fs::set_permissions(&junk, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let e = spawn_error(Spawn::new(&argv(&["junk"])).expect("argv").program(&junk));
    assert_eq!((e.step(), e.errno()), (Step::Exec, Errno::NOEXEC), "{e:?}");
    let e = spawn_error(
        Spawn::new(&argv(&["gone"]))
            .expect("argv")
            .program(dir.join("gone")),
    );
    assert_eq!((e.step(), e.errno()), (Step::Exec, Errno::NOENT), "{e:?}");
    assert!(e.is_not_found());
    assert!(e.to_string().contains("not found"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each credential step fails on its own, named, with the kernel's errno. The
/// invalid id (-1) makes each call fail even for root, one step at a time.
#[test]
fn each_credential_step_reports_its_own_failure() {
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip("credential steps need root");
        return;
    }
    let bad = u32::MAX;
    let cases = [
        (vec![bad], 0, 0, Step::Groups),
        (vec![], bad, 0, Step::Gid),
        (vec![], 0, bad, Step::Uid),
    ];
    for (groups, gid, uid, step) in cases {
        let e = spawn_error(
            Spawn::new(&argv(&["true"]))
                .expect("argv")
                .credentials(Credentials { uid, gid, groups }),
        );
        assert_eq!((e.step(), e.errno()), (step, Errno::INVAL), "{e:?}");
        assert!(e.to_string().contains(step.what()), "{e}");
    }
}
