//! The session's restart and signal paths against real targets: signals that come
//! before the mask is in place (the signal-first retry loop), a signal that becomes
//! pending during the session and must be handled on the way out, SIGSTOP during a
//! session, a thread that never stops, and a call the kernel restarts even after a
//! handler ran (`-ERESTARTNOINTR`).

use fdgrab::inject::Session;
use fdgrab::{Backend, GrabOptions, PidFd, TargetFd};
use fdgrab_testkit::{output_timeout, status_field, wait_in_syscall, Snapshot, Target, TIMEOUT};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn tfd(n: i32) -> TargetFd {
    TargetFd::new(n).expect("fd")
}

fn send_line(t: &mut Target, s: &str) {
    let stdin = t.stdin.as_mut().expect("stdin");
    stdin.write_all(s.as_bytes()).expect("write");
    stdin.flush().expect("flush");
}

fn json_line(t: &mut Target) -> serde_json::Value {
    serde_json::from_str(&t.next_line()).expect("json")
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill with integer arguments.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid} {sig}");
}

/// A storm of queued real-time signals while grabs run: every signal that arrives
/// before the session has blocked the thread's signals is delivered first, on the
/// thread's own frame, and the session retries. None may be lost or delivered twice
/// (real-time signals queue, so the handler count must equal the number sent), the
/// SA_RESTART read must not return early, and every grab must succeed.
#[test]
fn restart_signal_storm_goes_through_the_signal_first_retry_loop() {
    // In ppoll with a mask: the session blocks signals with an injected
    // rt_sigprocmask, before which a storm signal is delivered first.
    signal_storm(&["signal-read", "rt", "restart", "ppoll"], libc::SYS_ppoll);
}

/// The same storm against a thread in `read`, whose mask the session sets with
/// `PTRACE_SETSIGMASK`: a signal that arrives first stays pending through the
/// session and is handled after it, still exactly once.
#[test]
fn restart_signal_storm_with_the_mask_set_by_ptrace() {
    signal_storm(&["signal-read", "rt", "restart"], libc::SYS_read);
}

fn signal_storm(args: &[&str], waits_in: i64) {
    let mut t = Target::spawn(args);
    wait_in_syscall(t.pid, t.pid, waits_in);
    let before = Snapshot::take(t.pid);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let file = tfd(t.fd_labelled("file"));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let storm = {
        let (stop, sent, pid) = (stop.clone(), sent.clone(), t.pid);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                kill(pid, libc::SIGRTMIN());
                sent.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let opts = GrabOptions::new().backend(Backend::Ptrace);
    let mut grabs = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let g = opts.grab(&pidfd, file).expect("grab during a signal storm");
        assert_eq!(g.backend, Backend::Ptrace);
        grabs += 1;
    }
    stop.store(true, Ordering::SeqCst);
    storm.join().expect("storm");
    assert!(grabs > 10, "only {grabs} grabs");
    before.assert_no_leftovers(&before.fds, "after the session");
    // Every queued signal is handled before the read that follows returns.
    let sent = sent.load(Ordering::SeqCst);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        send_line(&mut t, "x\n");
        let line = json_line(&mut t);
        assert_eq!(
            (line["n"].as_i64(), line["data"].as_str()),
            (Some(2), Some("x\n")),
            "{line}"
        );
        let count = line["count"].as_u64().expect("count");
        assert!(count <= sent, "{count} signals handled, {sent} sent");
        if count == sent {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{count} of {sent} signals handled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A signal sent while the session has the thread's signals blocked stays pending
/// and is handled on the way out, with the semantics the thread's handler asked
/// for: without SA_RESTART the interrupted `read` fails with EINTR, with SA_RESTART
/// it is restarted and returns the data.
fn signal_during_session(restart: bool) {
    let mut t = Target::spawn([
        "signal-read",
        "usr2",
        if restart { "restart" } else { "norestart" },
    ]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let before = Snapshot::take(t.pid);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let mut s = Session::attach(&pidfd).expect("attach");
    assert_eq!(
        s.syscall(libc::SYS_getpid, &[]).expect("getpid"),
        t.pid as i64
    );
    kill(t.pid, libc::SIGUSR2);
    assert_eq!(
        s.syscall(libc::SYS_getpid, &[]).expect("getpid"),
        t.pid as i64
    );
    s.detach().expect("detach");
    before.assert_no_leftovers(&before.fds, "after the session");
    if restart {
        send_line(&mut t, "after\n");
        let line = json_line(&mut t);
        assert_eq!(line["n"], 6, "{line}");
        assert_eq!(line["count"], 1, "{line}");
    } else {
        let line = json_line(&mut t);
        assert_eq!(
            (line["n"].as_i64(), line["errno"].as_i64()),
            (Some(-1), Some(libc::EINTR as i64)),
            "{line}"
        );
        assert_eq!(line["count"], 1, "{line}");
        send_line(&mut t, "after\n");
        assert_eq!(json_line(&mut t)["n"], 6);
    }
}

#[test]
fn restart_signal_during_session_without_sa_restart_gives_eintr() {
    signal_during_session(false);
}

#[test]
fn restart_signal_during_session_with_sa_restart_restarts() {
    signal_during_session(true);
}

/// SIGSTOP during a session is not lost: the process ends up stopped as if fdgrab had
/// not been there, untraced, and SIGCONT resumes it with its read intact.
#[test]
fn restart_sigstop_during_session_leaves_the_process_stopped() {
    let mut t = Target::spawn(["signal-read", "usr2", "restart"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let before = Snapshot::take(t.pid);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let mut s = Session::attach(&pidfd).expect("attach");
    kill(t.pid, libc::SIGSTOP);
    for _ in 0..3 {
        assert_eq!(
            s.syscall(libc::SYS_getpid, &[]).expect("getpid"),
            t.pid as i64
        );
    }
    s.detach().expect("detach");
    let deadline = Instant::now() + TIMEOUT;
    while !status_field(t.pid, "State").is_some_and(|st| st.starts_with('T')) {
        assert!(
            Instant::now() < deadline,
            "process not stopped: {:?}",
            status_field(t.pid, "State")
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(status_field(t.pid, "TracerPid").as_deref(), Some("0"));
    kill(t.pid, libc::SIGCONT);
    before.assert_no_leftovers(&before.fds, "after the session");
    read_returns(&mut t, "cont\n");
}

/// A thread in uninterruptible sleep never reaches the stop: fdgrab gives up after
/// its 10 s timeout without touching it, and once fdgrab has exited the thread runs
/// on, untraced and unstopped, when it wakes.
#[test]
fn restart_never_stopped_thread_is_left_alone() {
    let mut t = Target::spawn(["vfork-sleep", "13000"]);
    let deadline = Instant::now() + TIMEOUT;
    while !status_field(t.pid, "State").is_some_and(|st| st.starts_with('D')) {
        assert!(Instant::now() < deadline, "target never entered state D");
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = Snapshot::take(t.pid);
    let file = t.fd_labelled("file").to_string();
    let started = Instant::now();
    let mut cmd = fdgrab_testkit::fdgrab();
    cmd.args(["cat", "--backend", "ptrace", &t.pid.to_string(), &file]);
    let out = output_timeout(&mut cmd, TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("uninterruptible sleep")
            && err.contains("it is in vfork")
            && err.contains(&t.pid.to_string()),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(13),
        "fdgrab waited for the sleep to end"
    );
    // The vfork child ends at 13 s; then the thread runs normally.
    send_line(&mut t, "woke\n");
    let line = json_line(&mut t);
    assert_eq!(line["n"], 5, "{line}");
    before.assert_no_leftovers(&before.fds, "after the session");
}

/// `FUTEX_LOCK_PI` interrupted answers `-ERESTARTNOINTR`: the kernel restarts it even
/// after running a handler without SA_RESTART. A session (with a signal arriving
/// meanwhile) must keep that: the lock is taken once the holder releases it, the
/// call returns 0, never EINTR.
#[test]
fn restart_erestartnointr_call_is_restarted_after_a_handler() {
    let mut t = Target::spawn(["lock-pi"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_futex);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let before = Snapshot::take(t.pid);
    let mut s = Session::attach(&pidfd).expect("attach");
    kill(t.pid, libc::SIGUSR1);
    assert_eq!(
        s.syscall(libc::SYS_getpid, &[]).expect("getpid"),
        t.pid as i64
    );
    s.detach().expect("detach");
    let file = tfd(t.fd_labelled("file"));
    GrabOptions::new()
        .backend(Backend::Ptrace)
        .grab(&pidfd, file)
        .expect("grab");
    before.assert_no_leftovers(&before.fds, "after the session");
    // Still waiting for the lock (restarted, not failed with EINTR).
    wait_in_syscall(t.pid, t.pid, libc::SYS_futex);
    send_line(&mut t, "unlock\n");
    let line = json_line(&mut t);
    assert_eq!(
        (line["ret"].as_i64(), line["errno"].as_i64()),
        (Some(0), Some(0)),
        "{line}"
    );
    assert_eq!(line["count"], 1, "the handler ran once: {line}");
}

/// A 64-bit thread in the ia32 `epoll_pwait2` (through `int $0x80`, an ia32 number
/// in `orig_rax`), whose mask argument unblocks SIGUSR1 (blocked otherwise), in a
/// stopped process (SIGSTOP) with a SIGUSR1 pending: the grab runs no handler
/// while the process is stopped and loses no signal. After SIGCONT the call
/// returns EINTR (the stop's); the handler has run then or, since the call's
/// temporary mask is gone with the session and `epoll_pwait2` is not restarted,
/// runs in the next call; the thread's own mask is back.
#[cfg(target_arch = "x86_64")]
#[test]
fn restart_int80_call_in_a_stopped_process_keeps_its_signal() {
    let mut t = Target::spawn(["int80-epoll-pwait2"]);
    wait_in_syscall(t.pid, t.pid, 441);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let before = Snapshot::take(t.pid);
    kill(t.pid, libc::SIGSTOP);
    let deadline = Instant::now() + TIMEOUT;
    while !status_field(t.pid, "State").is_some_and(|st| st.starts_with('T')) {
        assert!(Instant::now() < deadline, "target never stopped");
        std::thread::sleep(Duration::from_millis(2));
    }
    kill(t.pid, libc::SIGUSR1);
    let pending = ["SigPnd", "ShdPnd"].map(|k| status_field(t.pid, k).expect("status"));
    GrabOptions::new()
        .backend(Backend::Ptrace)
        .grab(&pidfd, tfd(t.fd_labelled("file")))
        .expect("grab");
    let after = ["SigPnd", "ShdPnd"].map(|k| status_field(t.pid, k).expect("status"));
    assert_eq!(pending, after, "pending signals changed while stopped");
    kill(t.pid, libc::SIGCONT);
    let eintr = Some(-(libc::EINTR as i64));
    let mut line = json_line(&mut t);
    assert_eq!(line["ret"].as_i64(), eintr, "{line}");
    if line["count"] == 0 {
        send_line(&mut t, "again\n");
        line = json_line(&mut t);
        assert_eq!(line["ret"].as_i64(), eintr, "{line}");
    }
    assert_eq!(line["count"], 1, "SIGUSR1 handled once: {line}");
    before.assert_no_leftovers(&before.fds, "after the grab");
    let blk = status_field(t.pid, "SigBlk").expect("SigBlk");
    let blk = u64::from_str_radix(&blk, 16).expect("hex");
    assert_ne!(
        blk & (1 << (libc::SIGUSR1 - 1)),
        0,
        "own mask lost: {blk:#x}"
    );
}

/// A thread in `sigsuspend` runs with its temporary mask (SIGUSR1 let through) and
/// the saved one (SIGUSR1 blocked) to put back. After grabs (the injected
/// `rt_sigprocmask` way) it is back in `sigsuspend` with the temporary mask; a
/// SIGUSR1 then ends it through the handler, once, and the saved mask is back.
#[test]
fn restart_sigsuspend_keeps_its_temporary_and_saved_masks() {
    let mut t = Target::spawn(["sigsuspend"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_rt_sigsuspend);
    let before = Snapshot::take(t.pid);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let file = tfd(t.fd_labelled("file"));
    for _ in 0..3 {
        GrabOptions::new()
            .backend(Backend::Ptrace)
            .grab(&pidfd, file)
            .expect("grab");
    }
    wait_in_syscall(t.pid, t.pid, libc::SYS_rt_sigsuspend);
    std::thread::sleep(Duration::from_millis(20));
    before.assert_no_leftovers(&before.fds, "after the grabs");
    assert_eq!(
        Snapshot::take(t.pid).signals,
        before.signals,
        "SigBlk/SigPnd/ShdPnd in sigsuspend after the grabs"
    );
    kill(t.pid, libc::SIGUSR1);
    let line = json_line(&mut t);
    assert_eq!(
        (
            line["ret"].as_i64(),
            line["errno"].as_i64(),
            line["count"].as_u64()
        ),
        (Some(-1), Some(libc::EINTR as i64), Some(1)),
        "{line}"
    );
    let blk = status_field(t.pid, "SigBlk").expect("SigBlk");
    let blk = u64::from_str_radix(&blk, 16).expect("hex");
    assert_ne!(
        blk & (1 << (libc::SIGUSR1 - 1)),
        0,
        "saved mask lost: {blk:#x}"
    );
}

/// SIGSTOP and SIGCONT sent without pause while grabs run (which take the routine:
/// `socket`, `sendmsg`, `close` in one resume, so some stops land inside it): every
/// grab succeeds, nothing of ours is left, and the process, continued at the end,
/// is untraced and its SA_RESTART read returns the next line intact.
#[test]
fn restart_sigstop_storm_during_grabs() {
    let mut t = Target::spawn(["signal-read", "usr2", "restart"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let before = Snapshot::take(t.pid);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let file = tfd(t.fd_labelled("file"));
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let (stop, pid) = (stop.clone(), t.pid);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                kill(pid, libc::SIGSTOP);
                std::thread::sleep(Duration::from_micros(70));
                kill(pid, libc::SIGCONT);
                std::thread::sleep(Duration::from_micros(110));
            }
        })
    };
    let opts = GrabOptions::new().backend(Backend::Ptrace);
    let mut grabs = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        opts.grab(&pidfd, file)
            .expect("grab during a SIGSTOP storm");
        grabs += 1;
    }
    stop.store(true, Ordering::SeqCst);
    storm.join().expect("storm");
    assert!(grabs > 10, "only {grabs} grabs");
    kill(t.pid, libc::SIGCONT);
    let deadline = Instant::now() + TIMEOUT;
    while status_field(t.pid, "State").is_some_and(|st| st.starts_with('T')) {
        assert!(Instant::now() < deadline, "the process stays stopped");
        kill(t.pid, libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(status_field(t.pid, "TracerPid").as_deref(), Some("0"));
    before.assert_no_leftovers(&before.fds, "after the storm");
    read_returns(&mut t, "after\n");
}

/// Sends `s` and checks that the target's next `read` returns exactly it.
fn read_returns(t: &mut Target, s: &str) {
    send_line(t, s);
    let line = json_line(t);
    assert_eq!(
        (line["n"].as_i64(), line["data"].as_str()),
        (Some(s.len() as i64), Some(s)),
        "{line}"
    );
}
