//! The kernel's pidfd_getfd selftests, ported to fdgrab's API and run against real
//! processes, plus the cases fdgrab adds on top (leader-exited processes, thread
//! pidfds, batches).

use fdgrab::access::same_file;
use fdgrab::grab::{pidfd_getfd as grab, GrabOptions};
use fdgrab::{Error, PidFd, TargetFd};
use fdgrab_testkit::{bin, Target, TIMEOUT};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

fn tfd(n: i32) -> TargetFd {
    TargetFd::new(n).expect("non-negative fd")
}

#[test]
fn grabbed_fd_is_the_same_open_file_and_cloexec() {
    let t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd_open");
    let n = t.fd_labelled("file");
    let ours = grab(&pidfd, tfd(n)).expect("grab");

    // kcmp(KCMP_FILE) says it is the same open file description.
    assert!(same_file(&pidfd, tfd(n), ours.as_fd()).expect("kcmp"));

    // FD_CLOEXEC is always set on the copy, whatever the target had.
    let flags = rustix::io::fcntl_getfd(&ours).expect("F_GETFD");
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));

    // The offset is shared: the target left it at 7, and moving ours moves theirs.
    assert_eq!(
        rustix::fs::seek(&ours, rustix::fs::SeekFrom::Current(0)).expect("lseek"),
        7
    );
    rustix::fs::seek(&ours, rustix::fs::SeekFrom::Start(3)).expect("lseek");
    assert_eq!(fdgrab_testkit::proc_offset(t.pid, n), 3);
}

#[test]
fn grabbed_pipe_carries_data_both_ways() {
    let t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd_open");
    let w = grab(&pidfd, tfd(t.fd_labelled("pipe-w"))).expect("grab write end");
    let r = grab(&pidfd, tfd(t.fd_labelled("pipe-r"))).expect("grab read end");
    // The write end was non-blocking in the target; the copy shares that status flag.
    let fl = rustix::fs::fcntl_getfl(&w).expect("F_GETFL");
    assert!(fl.contains(rustix::fs::OFlags::NONBLOCK));
    rustix::io::write(&w, b"through the target's pipe").expect("write");
    let mut buf = [0u8; 64];
    let n = rustix::io::read(&r, &mut buf).expect("read");
    assert_eq!(&buf[..n], b"through the target's pipe");
}

#[test]
fn unknown_fd_is_no_such_fd() {
    let t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd_open");
    for n in [1000, i32::MAX] {
        match grab(&pidfd, tfd(n)) {
            Err(Error::NoSuchFd { pid, fd }) => {
                assert_eq!(pid, t.pid);
                assert_eq!(fd.as_raw(), n);
            }
            other => panic!("expected NoSuchFd for fd {n}, got {other:?}"),
        }
    }
    let msg = grab(&pidfd, tfd(1000)).expect_err("no fd 1000").to_string();
    assert!(
        msg.contains(&t.pid.to_string()) && msg.contains("1000"),
        "{msg}"
    );
}

/// A caller that dropped to uid 65534 cannot take fds from a non-dumpable target,
/// and the error explains why.
#[test]
fn nondumpable_target_unprivileged_caller_is_permission_denied() {
    // The target runs as 65534 too, so only its dumpability stands in the way.
    let mut cmd = Command::new(bin("fdgrab-target"));
    cmd.args(["zoo", "--nondumpable"])
        .uid(65534)
        .gid(65534)
        .env("TMPDIR", "/tmp");
    let t = Target::spawn_cmd(cmd);
    let n = t.fd_labelled("file");

    let mut probe = Command::new(bin("fdgrab-target"));
    probe
        .args(["try-grab", &t.pid.to_string(), &n.to_string()])
        .uid(65534)
        .gid(65534);
    let out = fdgrab_testkit::output_timeout(&mut probe, TIMEOUT);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    assert_eq!(v["error"], "PermissionDenied", "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("not dumpable"),
        "hint should name dumpability: {msg}"
    );
    assert!(msg.contains(&t.pid.to_string()), "{msg}");

    // The same caller with the same uid succeeds against a dumpable target.
    let mut cmd = Command::new(bin("fdgrab-target"));
    cmd.args(["zoo"]).uid(65534).gid(65534);
    let t2 = Target::spawn_cmd(cmd);
    let mut probe = Command::new(bin("fdgrab-target"));
    probe
        .args([
            "try-grab",
            &t2.pid.to_string(),
            &t2.fd_labelled("file").to_string(),
        ])
        .uid(65534)
        .gid(65534);
    let out = fdgrab_testkit::output_timeout(&mut probe, TIMEOUT);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("probe JSON");
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn killed_target_is_no_such_process() {
    let mut t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd_open");
    let n = tfd(t.fd_labelled("file"));
    pidfd.send_signal(libc::SIGKILL).expect("kill");
    assert!(
        pidfd.wait_exit(Some(TIMEOUT)).expect("poll"),
        "target did not exit"
    );
    // Exited but not yet reaped (a zombie).
    assert!(matches!(grab(&pidfd, n), Err(Error::NoSuchProcess { pid }) if pid == t.pid));
    // Reaped.
    t.child.wait().expect("reap");
    assert!(matches!(grab(&pidfd, n), Err(Error::NoSuchProcess { pid }) if pid == t.pid));
    assert!(matches!(
        pidfd.send_signal(0),
        Err(Error::NoSuchProcess { .. })
    ));
    // Pids are handed out in increasing order, so the number is not reused this soon.
    assert!(matches!(
        PidFd::open(t.pid),
        Err(Error::NoSuchProcess { pid }) if pid == t.pid
    ));
}

/// Without `kcmp` (no `CONFIG_KCMP`, or refused), `same_file` compares device and
/// inode: the target's own file is recognised, another file is not. Run in a
/// forked child whose seccomp filter fails `kcmp` with ENOSYS.
#[test]
fn same_file_without_kcmp_compares_the_inode() {
    let t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd_open");
    let n = tfd(t.fd_labelled("file"));
    let ours = grab(&pidfd, n).expect("grab");
    let other = std::fs::File::open(format!("/proc/{}/status", t.pid)).expect("another file");
    // SAFETY: the child runs the checks below and leaves with _exit; the harness
    // runs this test alone in its process.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child == 0 {
        let code =
            if fdgrab_testkit::install_errno_filter(&[(libc::SYS_kcmp, libc::ENOSYS)]).is_err() {
                10
            } else if sys_kcmp_works() {
                11
            } else {
                match (
                    same_file(&pidfd, n, ours.as_fd()),
                    same_file(&pidfd, n, other.as_fd()),
                ) {
                    (Ok(true), Ok(false)) => 0,
                    (Ok(true), Ok(true)) => 1,
                    (Ok(false), _) => 2,
                    _ => 3,
                }
            };
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut status = 0;
    // SAFETY: polling our own child.
    while unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == 0 {
        if std::time::Instant::now() > deadline {
            // SAFETY: our own child, killed and reaped.
            unsafe {
                libc::kill(child, libc::SIGKILL);
                libc::waitpid(child, &mut status, 0);
            }
            panic!("the child did not finish");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let meaning = match code {
        Some(0) => "",
        Some(1) => "another file was taken for the target's",
        Some(2) => "the target's own file was not recognised",
        Some(3) => "same_file failed",
        Some(10) => "the filter could not be installed",
        Some(11) => "kcmp still worked under the filter",
        _ => "the child died",
    };
    assert_eq!(code, Some(0), "{meaning} (status {status:#x})");
}

/// Whether `kcmp(KCMP_FILE)` of our fd 0 with itself answers.
fn sys_kcmp_works() -> bool {
    let me = std::process::id() as libc::c_long;
    // SAFETY: kcmp reads nothing of ours; the arguments are plain numbers.
    unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            me,
            me,
            0 as libc::c_long,
            0 as libc::c_long,
            0 as libc::c_long,
        ) >= 0
    }
}

#[test]
fn process_whose_leader_exited_is_still_grabbable() {
    let t = Target::spawn(["leader-exit"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd_open");
    // Wait until the leader is a zombie while its other thread runs.
    fdgrab_testkit::wait_leader_zombie(t.pid);
    assert!(pidfd.is_alive(), "the process is alive while a thread runs");
    let n = tfd(t.fd_labelled("pipe-w"));
    let ours = grab(&pidfd, n).expect("grab through a live thread");
    let theirs = t.fd_report(n.as_raw().into());
    let st = rustix::fs::fstat(&ours).expect("fstat");
    assert_eq!(Some(st.st_ino), theirs["ino"].as_u64(), "{theirs}");
    assert_eq!(
        fdgrab_testkit::devstr(st.st_dev),
        theirs["dev"].as_str().expect("dev")
    );
}

#[test]
fn thread_pidfd_reaches_the_process_fd_table() {
    let t = Target::spawn(["leader-exit"]);
    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{}/task", t.pid))
        .expect("task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let tid = *tids.iter().find(|&&x| x != t.pid).expect("a second thread");
    // A plain pidfd_open of a non-leader tid is refused with a clear error...
    match PidFd::open(tid) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("thread"), "{msg}"),
        other => panic!("expected InvalidArgument for a tid, got {other:?}"),
    }
    // ...while PIDFD_THREAD opens it, and it grabs from the shared table.
    let thread = match PidFd::open_thread(tid) {
        Ok(t) => t,
        Err(Error::Unsupported { .. }) => {
            return fdgrab_testkit::skip("the kernel has no PIDFD_THREAD (Linux 6.9)");
        }
        Err(e) => panic!("PIDFD_THREAD: {e}"),
    };
    assert!(thread.is_thread());
    let fd = t.fd_labelled("pipe-r");
    let ours = grab(&thread, tfd(fd)).expect("grab via thread");
    // The very pipe the target reported, not merely some open file.
    let st = rustix::fs::fstat(&ours).expect("fstat");
    let theirs = t.fd_report(fd.into());
    assert_eq!(Some(st.st_ino), theirs["ino"].as_u64(), "{theirs}");
    assert_eq!(
        fdgrab_testkit::devstr(st.st_dev),
        theirs["dev"].as_str().expect("dev")
    );
}

#[test]
fn batch_grab_is_all_or_nothing_and_names_the_bad_fd() {
    let t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd_open");
    let good: Vec<TargetFd> = ["file", "pipe-r", "eventfd", "memfd", "tcp-listen"]
        .iter()
        .map(|l| tfd(t.fd_labelled(l)))
        .collect();
    let all: Vec<_> = good
        .iter()
        .map(|&fd| grab(&pidfd, fd))
        .collect::<Result<_, _>>()
        .expect("batch");
    assert_eq!(all.len(), good.len());
    for (fd, ours) in good.iter().zip(&all) {
        assert!(
            same_file(&pidfd, *fd, ours.as_fd()).expect("kcmp"),
            "fd {fd}"
        );
    }
    let mut bad = good.clone();
    bad.insert(2, tfd(4000));
    match GrabOptions::new().grab_many(&pidfd, &bad) {
        Err(Error::NoSuchFd { fd, .. }) => assert_eq!(fd.as_raw(), 4000),
        other => panic!("expected NoSuchFd(4000), got {other:?}"),
    }
}

#[test]
fn sockets_memfds_eventfds_are_grabbable() {
    let t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd_open");
    for label in [
        "eventfd",
        "epoll",
        "timerfd",
        "signalfd",
        "pidfd",
        "inotify",
        "memfd",
        "tcp-listen",
        "udp",
        "unix-pair-a",
    ] {
        let n = t.fd_labelled(label);
        let ours = grab(&pidfd, tfd(n)).unwrap_or_else(|e| panic!("{label}: {e}"));
        let st = rustix::fs::fstat(&ours).expect("fstat");
        assert_eq!(
            Some(st.st_ino),
            t.fd_report(n.into())["ino"].as_u64(),
            "{label}"
        );
        assert!(ours.as_raw_fd() >= 0);
    }
    // A grabbed eventfd is the same counter: the target created it with 3.
    let efd = grab(&pidfd, tfd(t.fd_labelled("eventfd"))).expect("eventfd");
    let mut buf = [0u8; 8];
    rustix::io::read(&efd, &mut buf).expect("read eventfd");
    assert_eq!(u64::from_ne_bytes(buf), 3);
}

/// The front door's steal hook runs with the verified copies while the target still
/// has its fd; a failing hook closes nothing; a succeeding one is followed by the
/// close, and the method is reported.
#[test]
fn steal_hook_runs_between_copy_and_close() {
    use fdgrab::{Backend, CloseMode};
    let t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd_open");
    let fd = tfd(t.fd_labelled("pipe-r"));
    let in_target = || std::path::Path::new(&format!("/proc/{}/fd/{fd}", t.pid)).exists();
    let steal = GrabOptions::new().steal(CloseMode::Close);
    let refused: Result<fdgrab::Taken<()>, Error> = steal.grab_many_then(&pidfd, &[fd], |copies| {
        assert_eq!(copies.len(), 1);
        assert!(in_target(), "the hook runs before the close");
        Err(Error::InvalidArgument("the hook refuses".into()))
    });
    assert!(matches!(refused, Err(Error::InvalidArgument(_))));
    assert!(in_target(), "a failing hook closes nothing");
    let taken = steal
        .grab_many_then(&pidfd, &[fd], |copies| -> Result<_, Error> {
            assert!(in_target(), "the hook runs before the close");
            let g = copies.into_iter().next().expect("one copy");
            let st = rustix::fs::fstat(&g.fd).expect("fstat");
            assert_eq!(
                Some(st.st_ino),
                t.fd_report(fd.as_raw().into())["ino"].as_u64()
            );
            Ok(g.backend)
        })
        .expect("steal");
    taken.closed.expect("closed in the target");
    assert_eq!(taken.value, Backend::Pidfd);
    assert_eq!(taken.backend.method(), "pidfd_getfd");
    assert!(!in_target(), "stolen");
}

/// The preflight refuses, with the error each case deserves, before anything is
/// done: a zombie, a kernel thread, a missing fd, a number at the fd limit.
#[test]
fn preflight_refuses_what_no_operation_could_do() {
    use fdgrab::grab::Preflight;
    let t = Target::spawn(["zoo"]);
    let mut zombie = Command::new("true").spawn().expect("true");
    let zpid = zombie.id() as i32;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !fdgrab_testkit::status_field(zpid, "State").is_some_and(|s| s.starts_with('Z')) {
        assert!(std::time::Instant::now() < deadline, "no zombie");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    match Preflight::new(zpid).injects().check() {
        Err(Error::NoSuchProcess { pid }) => assert_eq!(pid, zpid),
        other => panic!("zombie: {other:?}"),
    }
    let _ = zombie.wait();
    match Preflight::new(2).check() {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("kernel thread"), "{m}"),
        other => panic!("kthreadd: {other:?}"),
    }
    match Preflight::new(t.pid).existing(&[tfd(4000)]).check() {
        Err(Error::NoSuchFd { fd, .. }) => assert_eq!(fd.as_raw(), 4000),
        other => panic!("missing fd: {other:?}"),
    }
    let limit = std::fs::read_to_string(format!("/proc/{}/limits", t.pid))
        .expect("limits")
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next()?.parse::<i32>().ok())
        .expect("limit");
    match Preflight::new(t.pid).install_at(tfd(limit)).check() {
        Err(Error::InvalidArgument(m)) => assert!(m.contains(&limit.to_string()), "{m}"),
        other => panic!("at the limit: {other:?}"),
    }
    assert!(Preflight::new(t.pid)
        .injects()
        .existing(&[tfd(t.fd_labelled("file"))])
        .install_at(tfd(limit - 1))
        .check()
        .is_ok());
}
