//! The ptrace injection engine against real processes: targets stopped in blocking
//! syscalls, spinning, multithreaded, sandboxed, and dying mid-session. After every
//! test the target must be running, untraced, with no mapping or fd of ours left.
// The blocking calls named here are x86_64's; the aarch64 port is compile-checked only.
#![cfg(target_arch = "x86_64")]

use fdgrab::inject::{self, CloseMode, SeccompPolicy, Session};
use fdgrab::{Backend, Error, GrabOptions, PidFd, TargetFd};
use fdgrab_testkit::{injection_leftovers, proc_fds, status_field, wait_in_syscall, Target};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::time::Duration;

fn tfd(n: i32) -> TargetFd {
    TargetFd::new(n).expect("fd")
}

/// Takes the target's `file` fd by ptrace and checks it reads the file's content.
fn grab_file_by_ptrace(t: &Target) -> fdgrab::Grabbed {
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let fd = t.fd_labelled("file");
    let g = GrabOptions::new()
        .backend(Backend::Ptrace)
        .grab(&pidfd, tfd(fd))
        .expect("ptrace grab");
    assert_eq!(g.backend, Backend::Ptrace);
    let mut f = std::fs::File::from(g.fd.try_clone().expect("dup"));
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read");
    assert_eq!(s, t.report["fds"][0]["content"].as_str().expect("content"));
    g
}

fn snapshot(pid: i32) -> (String, Vec<String>) {
    (
        std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps"),
        proc_fds(pid),
    )
}

fn assert_clean(pid: i32, before: &(String, Vec<String>)) {
    if let Some(problem) = injection_leftovers(pid, &before.0, &before.1) {
        panic!("{problem}");
    }
}

/// The target reads `s` with one read and reports exactly it: it works normally.
fn assert_echo(t: &mut Target, s: &str) {
    write_line(t, s);
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(
        (line["n"].as_u64(), line["data"].as_str()),
        (Some(s.len() as u64), Some(s)),
        "{line}"
    );
}

fn write_line(t: &mut Target, s: &str) {
    let stdin = t.stdin.as_mut().expect("stdin");
    stdin.write_all(s.as_bytes()).expect("write");
    stdin.flush().expect("flush");
}

#[test]
fn inject_blocked_read_resumes_with_exact_data() {
    let mut t = Target::spawn(["blocked-read"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let before = snapshot(t.pid);
    let sig = ["SigBlk", "SigPnd", "ShdPnd"].map(|k| status_field(t.pid, k).expect("status"));
    let _g = grab_file_by_ptrace(&t);
    assert_clean(t.pid, &before);
    let after = ["SigBlk", "SigPnd", "ShdPnd"].map(|k| status_field(t.pid, k).expect("status"));
    assert_eq!(sig, after, "signal mask and pending signals changed");
    assert_ne!(
        sig[1], "0000000000000000",
        "the target should have a thread-pending signal"
    );
    assert_ne!(
        sig[2], "0000000000000000",
        "the target should have a process-pending signal"
    );
    write_line(&mut t, "exactly these 24 bytes\n");
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(line["n"], 23);
    assert_eq!(line["errno"], 0);
    assert_eq!(line["data"], "exactly these 24 bytes\n");
    // Twice more, to be sure the loop carries on normally.
    let _g2 = grab_file_by_ptrace(&t);
    write_line(&mut t, "again\n");
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(
        (line["n"].as_i64(), line["data"].as_str()),
        (Some(6), Some("again\n"))
    );
}

#[test]
fn inject_nanosleep_sleeps_full_time() {
    let mut t = Target::spawn(["nanosleep", "1500"]);
    // The C library's nanosleep: clock_nanosleep in glibc, nanosleep in musl.
    let nr = if cfg!(target_env = "musl") {
        libc::SYS_nanosleep
    } else {
        libc::SYS_clock_nanosleep
    };
    wait_in_syscall(t.pid, t.pid, nr);
    let before = snapshot(t.pid);
    for _ in 0..3 {
        let _g = grab_file_by_ptrace(&t);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_clean(t.pid, &before);
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(line["ret"], 0, "nanosleep must not return early: {line}");
    assert_eq!(line["errno"], 0);
    let ms = line["elapsed_ms"].as_f64().expect("elapsed");
    assert!(ms >= 1500.0, "slept only {ms} ms of 1500");
    assert!(
        ms < 5000.0,
        "slept {ms} ms: the restart must continue, not start over many times"
    );
}

#[test]
fn inject_cpu_bound_target() {
    let mut t = Target::spawn(["spin"]);
    let _ = t.next_line();
    let before = snapshot(t.pid);
    for _ in 0..5 {
        let _g = grab_file_by_ptrace(&t);
    }
    assert_clean(t.pid, &before);
    let a: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    let b: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(
        b["tick"].as_i64(),
        a["tick"].as_i64().map(|n| n + 1),
        "the spinning target keeps counting"
    );
}

#[test]
fn inject_eight_thread_target() {
    let mut t = Target::spawn(["threads", "8"]);
    assert_eq!(
        std::fs::read_dir(format!("/proc/{}/task", t.pid))
            .expect("task")
            .count(),
        8
    );
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let before = snapshot(t.pid);
    for _ in 0..5 {
        let _g = grab_file_by_ptrace(&t);
    }
    assert_clean(t.pid, &before);
    assert_echo(&mut t, "ping\n");
}

#[test]
fn inject_many_fds_in_one_session() {
    // 600 take three messages, so the calls go one by one; 253, the most one
    // message carries, are the largest grab the routine makes (x86_64).
    many_fds_in_one_session(600);
    many_fds_in_one_session(253);
}

fn many_fds_in_one_session(n: usize) {
    let t = Target::spawn(["many", &n.to_string()]);
    let first = t.report["first"].as_i64().expect("first") as i32;
    let count = t.report["count"].as_i64().expect("count") as i32;
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let fds: Vec<TargetFd> = (first..first + count).map(tfd).collect();
    let before = snapshot(t.pid);
    let got = GrabOptions::new()
        .backend(Backend::Ptrace)
        .grab_many(&pidfd, &fds)
        .unwrap_or_else(|e| panic!("grab {n}: {e}"));
    assert_eq!(got.len(), n);
    assert_clean(t.pid, &before);
}

#[test]
fn inject_missing_fd_is_no_such_fd_and_target_clean() {
    let t = Target::spawn(["blocked-read"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let before = snapshot(t.pid);
    let file = tfd(t.fd_labelled("file"));
    match inject::grab_fds(&pidfd, &[file, tfd(777)], SeccompPolicy::default()) {
        Err(Error::NoSuchFd { fd, .. }) => assert_eq!(fd.as_raw(), 777),
        other => panic!("expected NoSuchFd, got {other:?}"),
    }
    assert_clean(t.pid, &before);
}

/// The target's seccomp filter refuses the injected `socket()`, with EPERM or by
/// trapping it (SIGSYS, which would kill the target if delivered). Not allowed to
/// suspend the filter, the session refuses after reading it, before running anything.
fn refused_by_seccomp(mode: &str, action: &str) {
    let mut t = Target::spawn([mode]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let before = snapshot(t.pid);
    let file = tfd(t.fd_labelled("file"));
    match GrabOptions::new()
        .backend(Backend::Ptrace)
        .seccomp(SeccompPolicy::new().suspend(false))
        .grab(&pidfd, file)
    {
        Err(Error::SeccompRefused {
            call, action: a, ..
        }) => {
            assert!(call.starts_with("socket("), "{call}");
            assert!(a.starts_with(action), "{a}");
        }
        other => panic!("expected SeccompRefused from the target's seccomp, got {other:?}"),
    }
    assert_clean(t.pid, &before);
    assert_echo(&mut t, "still alive\n");
}

#[test]
fn inject_refused_by_target_seccomp_restores_target() {
    refused_by_seccomp("deny-socket", "SECCOMP_RET_ERRNO(errno 1)");
}

#[test]
fn inject_trapped_by_target_seccomp_restores_target() {
    refused_by_seccomp("trap-socket", "SECCOMP_RET_TRAP");
}

#[test]
fn inject_target_dies_mid_session() {
    let t = Target::spawn(["blocked-read"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let mut s = Session::attach(&pidfd).expect("attach");
    let r = s.syscall(libc::SYS_getpid, &[]).expect("getpid");
    assert_eq!(r, t.pid as i64);
    pidfd.send_signal(libc::SIGKILL).expect("kill");
    assert!(pidfd
        .wait_exit(Some(Duration::from_secs(10)))
        .expect("wait"));
    match s.syscall(libc::SYS_getpid, &[]) {
        Err(Error::NoSuchProcess { pid }) => assert_eq!(pid, t.pid),
        other => panic!("expected NoSuchProcess, got {other:?}"),
    }
    match s.detach() {
        Err(Error::NoSuchProcess { .. }) => {}
        other => panic!("expected NoSuchProcess from detach, got {other:?}"),
    }
}

#[test]
fn inject_dropping_a_session_restores() {
    let mut t = Target::spawn(["blocked-read"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let before = snapshot(t.pid);
    {
        let mut s = Session::attach(&pidfd).expect("attach");
        let fd = s.syscall(libc::SYS_dup, &[0]).expect("dup");
        assert!(fd > 2);
        let r = s.syscall(libc::SYS_close, &[fd as u64]).expect("close");
        assert_eq!(r, 0);
        // Dropped without detach().
    }
    assert_clean(t.pid, &before);
    write_line(&mut t, "x\n");
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(line["n"], 2);
}

#[test]
fn inject_steal_close_and_devnull() {
    let t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let file = tfd(t.fd_labelled("file"));
    let memfd = tfd(t.fd_labelled("memfd"));
    let theirs = t.fd_report(file.as_raw().into());
    let got = GrabOptions::new()
        .backend(Backend::Ptrace)
        .steal(CloseMode::Close)
        .grab(&pidfd, file)
        .expect("steal");
    assert!(
        !std::path::Path::new(&format!("/proc/{}/fd/{}", t.pid, file)).exists(),
        "fd still open in target"
    );
    // Ours is the file the target had, not merely some open fd.
    let st = rustix::fs::fstat(&got.fd).expect("fstat");
    assert_eq!(Some(st.st_ino), theirs["ino"].as_u64(), "{theirs}");
    assert_eq!(got.backend, Backend::Ptrace);
    GrabOptions::new()
        .steal(CloseMode::DevNull)
        .grab(&pidfd, memfd)
        .expect("steal --null");
    let link = std::fs::read_link(format!("/proc/{}/fd/{}", t.pid, memfd)).expect("link");
    assert_eq!(link.to_string_lossy(), "/dev/null");
}

#[test]
fn inject_put_and_redirect_roundtrip() {
    let t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let dir = tempdir();
    let path = dir.join("put.txt");
    let f = std::fs::File::create(&path).expect("create");
    // Put into a free number, then over an existing one.
    inject::put(&pidfd, f.as_fd(), tfd(200), SeccompPolicy::default()).expect("put free");
    let link = std::fs::read_link(format!("/proc/{}/fd/200", t.pid)).expect("link");
    assert_eq!(link, path);
    let null = tfd(t.fd_labelled("devnull"));
    let before_fds = proc_fds(t.pid);
    let saved =
        inject::redirect(&pidfd, null, f.as_fd(), SeccompPolicy::default()).expect("redirect");
    assert!(saved.as_raw() >= 10);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/fd/{null}", t.pid)).expect("link"),
        path
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/fd/{saved}", t.pid))
            .expect("saved")
            .to_string_lossy(),
        "/dev/null"
    );
    inject::undo_redirect(&pidfd, null, saved, SeccompPolicy::default()).expect("undo");
    assert_eq!(
        proc_fds(t.pid),
        before_fds,
        "undo restores the fd table exactly"
    );
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "fdgrab-inject-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

#[test]
fn inject_keeps_the_mask_a_ppoll_will_restore() {
    // ppoll runs with a temporary mask and puts the normal one back when it returns.
    // The session must not make the temporary mask permanent.
    let mut t = Target::spawn(["ppoll"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_ppoll);
    let before = snapshot(t.pid);
    let _g = grab_file_by_ptrace(&t);
    assert_clean(t.pid, &before);
    write_line(&mut t, "wake\n");
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(line["ret"], 1, "{line}");
    assert_eq!(
        (line["usr1"].as_bool(), line["usr2"].as_bool()),
        (Some(true), Some(false)),
        "mask after ppoll: {line}"
    );
}

#[test]
fn inject_blocked_accept_restarts_and_epoll_wait_gets_eintr() {
    let mut t = Target::spawn(["accept"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_accept4);
    let before = snapshot(t.pid);
    let _g = grab_file_by_ptrace(&t);
    assert_clean(t.pid, &before);
    let port = t.report["extra"]["port"].as_u64().expect("port") as u16;
    let _c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert!(
        line["ret"].as_i64().is_some_and(|fd| fd > 2),
        "accept4 must return the connection: {line}"
    );

    let mut t = Target::spawn(["epoll"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_epoll_wait);
    let before = snapshot(t.pid);
    let _g = grab_file_by_ptrace(&t);
    assert_clean(t.pid, &before);
    // epoll_wait is one of the calls the kernel never restarts after a stop (see
    // signal(7), "interruption by stop signals"; a ptrace stop is one): it returns
    // EINTR, exactly as after SIGSTOP/SIGCONT or `strace -p`, and callers retry it.
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(
        (line["ret"].as_i64(), line["errno"].as_i64()),
        (Some(-1), Some(libc::EINTR as i64)),
        "{line}"
    );
}

#[test]
fn inject_procfs_handle_without_pidfd_open() {
    // What the ptrace backend uses on kernels without pidfd_open.
    let mut t = Target::spawn(["blocked-read"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let handle = PidFd::open_procfs(t.pid).expect("open through /proc");
    assert!(handle.is_procfs() && handle.is_alive());
    assert_eq!(handle.info().expect("info").tgid, t.pid);
    match fdgrab::grab::pidfd_getfd(&handle, tfd(0)) {
        Err(Error::Unsupported { op, .. }) => assert_eq!(op, "pidfd_getfd"),
        other => panic!("pidfd_getfd on a /proc handle must be unsupported, got {other:?}"),
    }
    let g = GrabOptions::new()
        .grab(&handle, tfd(t.fd_labelled("file")))
        .expect("auto grab");
    assert_eq!(g.backend, Backend::Ptrace);
    assert_echo(&mut t, "fine\n");
    handle.send_signal(libc::SIGKILL).expect("kill");
    assert!(handle
        .wait_exit(Some(Duration::from_secs(10)))
        .expect("wait"));
    let _ = t.child.wait();
    assert!(!handle.is_alive());
    assert!(matches!(
        handle.send_signal(0),
        Err(Error::NoSuchProcess { .. })
    ));
    assert!(matches!(
        PidFd::open_procfs(t.pid),
        Err(Error::NoSuchProcess { .. })
    ));
}

/// The kernel refuses to pass an io_uring fd with SCM_RIGHTS (sendmsg: EINVAL): the
/// ptrace backend says so, naming the fd, and leaves the target as it was.
#[test]
fn inject_io_uring_fd_is_refused_by_name() {
    let t = Target::spawn(["zoo"]);
    let Some(uring) = t.report["fds"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["label"] == "io_uring"))
        .and_then(|e| e["fd"].as_i64())
    else {
        fdgrab_testkit::skip("io_uring is disabled on this machine");
        return;
    };
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let before = snapshot(t.pid);
    let file = tfd(t.fd_labelled("file"));
    match inject::grab_fds(&pidfd, &[file, tfd(uring as i32)], SeccompPolicy::default()) {
        Err(Error::WrongKind { pid, fd, reason }) => {
            assert_eq!((pid, fd.as_raw()), (t.pid, uring as i32));
            assert!(
                reason.contains("io_uring") && reason.contains("SCM_RIGHTS"),
                "{reason}"
            );
        }
        other => panic!("expected WrongKind for the io_uring fd, got {other:?}"),
    }
    assert_clean(t.pid, &before);
}
