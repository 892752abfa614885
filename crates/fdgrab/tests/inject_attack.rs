//! Attacks on the injection engine's transparency promise that the other suites do
//! not cover: target state the kernel changes behind the session's back (the
//! single-step's forced SIGTRAP), seccomp filters keyed on arguments known only at
//! run time, and a fault of the injected frame itself.

use fdgrab::{Backend, GrabOptions, PidFd, TargetFd};
use fdgrab_testkit::{status_field, wait_in_syscall, Snapshot, Target};
use std::io::Write;

/// Every single-step of an injected call ends in a SIGTRAP the kernel forces on the
/// thread; forcing a blocked signal resets its handler to SIG_DFL. A target with a
/// SIGTRAP handler (the Go runtime installs one, so do debuggers and sanitizers) must
/// keep it: afterwards a SIGTRAP still runs the handler instead of killing it.
#[test]
fn attack_injection_keeps_the_targets_sigtrap_handler() {
    let mut t = grab_keeps_signal_state(&["signal-read", "trap", "restart"]);
    // SAFETY: kill with integer arguments.
    assert_eq!(unsafe { libc::kill(t.pid, libc::SIGTRAP) }, 0);
    echo(&mut t, "alive\n");
}

/// A filter keyed on an argument the session only learns while it runs: `munmap` is
/// refused for addresses above 0x7f00_ffff_ffff, where the scratch page lands, but
/// not for the stand-in address the up-front check tries. The cleanup must still
/// happen (suspending the filter for it, as root may): no mapping of ours is left.
#[test]
fn attack_cleanup_refused_only_for_the_real_address_leaves_no_mapping() {
    let mut t = Target::spawn(["seccomp", "errno", "munmap", "high"]);
    wait_in_syscall(t.pid, t.pid, libc::SYS_read);
    let before = Snapshot::take(t.pid);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let fd = TargetFd::new(t.fd_labelled("file")).expect("fd");
    let r = GrabOptions::new().backend(Backend::Ptrace).grab(&pidfd, fd);
    before.assert_no_leftovers(&before.fds, "after the grab");
    r.expect("ptrace grab");
    before.assert_unharmed(&mut t, &before.fds, "after the grab");
}

/// A thread that blocks every signal (SIGTRAP included) keeps exactly that mask and
/// its SIGTRAP handler: the call that puts the mask back must not end in a forced
/// SIGTRAP, which would unblock SIGTRAP and reset its handler.
#[test]
fn attack_injection_keeps_a_mask_that_blocks_sigtrap() {
    let mut t = grab_keeps_signal_state(&["signal-read", "trap", "restart", "block-all"]);
    // The session left from a syscall-exit stop: the interrupted read still restarts
    // and returns exactly the next line.
    echo(&mut t, "restarted\n");
}

/// Spawns the target with `args`, grabs its file by ptrace while it waits in `read`,
/// and checks its signal handlers, mask and pending signals are as before and
/// nothing of ours is left.
fn grab_keeps_signal_state(args: &[&str]) -> Target {
    grab_keeps_signal_state_after(args, |_| {})
}

/// [`grab_keeps_signal_state`], with `prepare` done to the target (by pid) once it
/// waits in `read`, before the state is read.
fn grab_keeps_signal_state_after(args: &[&str], prepare: impl FnOnce(i32)) -> Target {
    let t = Target::spawn(args);
    let waits_in = if args.contains(&"ppoll") {
        libc::SYS_ppoll
    } else {
        libc::SYS_read
    };
    wait_in_syscall(t.pid, t.pid, waits_in);
    prepare(t.pid);
    let before = grab_comparing_signal_state(&t);
    before.assert_no_leftovers(&before.fds, "after the grab");
    t
}

/// Grabs the target's file by ptrace and checks its signal handlers, mask and
/// pending signals are as before; returns the snapshot taken before.
fn grab_comparing_signal_state(t: &Target) -> Snapshot {
    let before = Snapshot::take(t.pid);
    let fields = ["SigCgt", "SigIgn", "SigBlk", "SigPnd", "ShdPnd"];
    let sig = fields.map(|k| status_field(t.pid, k).expect("status"));
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let fd = TargetFd::new(t.fd_labelled("file")).expect("fd");
    let g = GrabOptions::new()
        .backend(Backend::Ptrace)
        .grab(&pidfd, fd)
        .expect("ptrace grab");
    drop(g);
    let after = fields.map(|k| status_field(t.pid, k).expect("status"));
    assert_eq!(sig, after, "{fields:?} changed by the injection");
    before
}

fn echo(t: &mut Target, s: &str) {
    let stdin = t.stdin.as_mut().expect("stdin");
    stdin.write_all(s.as_bytes()).expect("write");
    stdin.flush().expect("flush");
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(
        (
            line["n"].as_u64(),
            line["errno"].as_i64(),
            line["data"].as_str()
        ),
        (Some(s.len() as u64), Some(0), Some(s)),
        "{line}"
    );
}

/// The vDSO's address (from the auxiliary vector) now holds a readable but not
/// executable page that happens to start with `0f 05`. Running an injected call
/// there faults (SIGSEGV at our frame): that fault must end the session with an
/// error and the target untouched, never be delivered to the target (it would die)
/// nor retried forever.
#[test]
fn attack_fault_at_the_injected_frame_is_not_delivered() {
    let mut t = Target::spawn(["fake-vdso"]);
    assert_eq!(t.next_line(), "{\"replaced\":true}");
    // Out of its last write and into the loop, so no syscall of its own is at hand.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let before = Snapshot::take(t.pid);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let fd = TargetFd::new(t.fd_labelled("file")).expect("fd");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = GrabOptions::new().backend(Backend::Ptrace).grab(&pidfd, fd);
        let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
    });
    let r = rx
        .recv_timeout(fdgrab_testkit::TIMEOUT)
        .expect("the grab hung");
    if let Ok(()) = r {
        panic!("a grab through a non-executable syscall instruction succeeded");
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        status_field(t.pid, "State").is_some_and(|s| !s.starts_with('Z') && !s.starts_with('X')),
        "target died: {:?} ({r:?})",
        status_field(t.pid, "State")
    );
    before.assert_no_leftovers(&before.fds, "after the refused grab");
    let _ = t.child.kill();
}

/// A target that ignores SIGTRAP keeps ignoring it: the forced SIGTRAP of a
/// single-step would reset an ignored signal to SIG_DFL (a later SIGTRAP would then
/// kill the target), so such a session runs its calls through syscall stops.
#[test]
fn attack_injection_keeps_sigtrap_ignored() {
    let mut t = grab_keeps_signal_state(&["signal-read", "usr2", "restart", "ignore-trap"]);
    // SAFETY: kill with integer arguments.
    assert_eq!(unsafe { libc::kill(t.pid, libc::SIGTRAP) }, 0);
    echo(&mut t, "still ignored\n");
}

/// The thread that grabs sets its timer slack to 1 µs while it naps for the first
/// stop, and must put back exactly the slack it had, whatever its size: a caller
/// (or a service manager's `TimerSlackNSec=`) may use several seconds to save power.
/// The target is in uninterruptible sleep for 300 ms, so the wait does nap.
#[test]
fn attack_a_large_timer_slack_of_the_caller_is_put_back() {
    fn slack() -> i64 {
        // SAFETY: PR_GET_TIMERSLACK takes no pointers; the raw call returns the
        // whole value (the libc wrapper returns an int).
        unsafe {
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_GET_TIMERSLACK,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        }
    }
    let mut t = Target::spawn(["vfork-sleep", "300"]);
    let deadline = std::time::Instant::now() + fdgrab_testkit::TIMEOUT;
    while !status_field(t.pid, "State").is_some_and(|st| st.starts_with('D')) {
        assert!(
            std::time::Instant::now() < deadline,
            "target never entered state D"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let before = Snapshot::take(t.pid);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let fd = TargetFd::new(t.fd_labelled("file")).expect("fd");
    let large: u64 = 5_000_000_000;
    let after = std::thread::spawn(move || {
        // SAFETY: an integer argument; this thread only.
        let r = unsafe {
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_TIMERSLACK,
                large,
                0usize,
                0usize,
                0usize,
            )
        };
        assert_eq!(r, 0, "PR_SET_TIMERSLACK");
        assert_eq!(slack(), large as i64);
        let g = GrabOptions::new().backend(Backend::Ptrace).grab(&pidfd, fd);
        (g.map(|_| ()).map_err(|e| e.to_string()), slack())
    })
    .join()
    .expect("grab thread");
    assert_eq!(
        after.1, large as i64,
        "timer slack changed by the grab ({:?})",
        after.0
    );
    after.0.expect("ptrace grab");
    before.assert_no_leftovers(&before.fds, "after the grab");
    let stdin = t.stdin.as_mut().expect("stdin");
    stdin.write_all(b"woke\n").expect("write");
    stdin.flush().expect("flush");
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(line["n"], 5, "{line}");
}

/// A SIGTRAP that is pending when the session starts belongs to the target, not to
/// the single-steps: here it is blocked (the thread blocks everything) and pending
/// both for the thread and for the process, and must still be, the handler intact.
#[test]
fn attack_injection_keeps_a_pending_sigtrap() {
    pending_sigtrap_kept(&["signal-read", "trap", "restart", "block-all"]);
}

/// [`attack_injection_keeps_a_pending_sigtrap`] for a thread in `ppoll` with a
/// mask, whose signals the session blocks with an injected `rt_sigprocmask`.
#[test]
fn attack_injection_keeps_a_pending_sigtrap_in_ppoll() {
    pending_sigtrap_kept(&["signal-read", "trap", "restart", "block-all", "ppoll"]);
}

fn pending_sigtrap_kept(args: &[&str]) {
    let mut t = grab_keeps_signal_state_after(args, |pid| {
        // SAFETY: kill and tgkill with integer arguments.
        unsafe {
            assert_eq!(libc::kill(pid, libc::SIGTRAP), 0);
            assert_eq!(libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGTRAP), 0);
        }
        let bit = 1u64 << (libc::SIGTRAP - 1);
        for k in ["SigPnd", "ShdPnd"] {
            let v = status_field(pid, k).expect("status");
            let v = u64::from_str_radix(&v, 16).expect("hex");
            assert_ne!(v & bit, 0, "{k} {v:#x}: SIGTRAP not pending");
        }
    });
    echo(&mut t, "still pending\n");
}

/// A stopped process (SIGSTOP) with a SIGTRAP pending, not blocked, and a handler
/// for it: a grab must neither run the handler while the process is stopped nor
/// swallow the signal; after SIGCONT the handler runs, once.
#[test]
fn attack_injection_keeps_a_sigtrap_pending_in_a_stopped_process() {
    grab_while_stopped_with_pending(&["signal-read", "trap", "restart"], libc::SIGTRAP);
}

/// A stopped process (SIGSTOP) in `ppoll` with a mask (so the session would block
/// its signals with an injected `rt_sigprocmask`) and a SIGUSR2 pending: the grab
/// must not run the handler while the process is stopped (resuming the thread to
/// make that call would deliver the signal first); after SIGCONT it runs, once.
#[test]
fn attack_injection_runs_no_handler_in_a_stopped_process() {
    grab_while_stopped_with_pending(&["signal-read", "usr2", "restart", "ppoll"], libc::SIGUSR2);
}

/// Spawns a `signal-read` target with `args` counting `sig`, stops it (SIGSTOP),
/// sends it `sig`, grabs by ptrace: the signal state must not change and the
/// process stay stopped; after SIGCONT the handler has run exactly once when the
/// next line is read.
fn grab_while_stopped_with_pending(args: &[&str], sig: i32) {
    let mut t = Target::spawn(args);
    let waits_in = if args.contains(&"ppoll") {
        libc::SYS_ppoll
    } else {
        libc::SYS_read
    };
    wait_in_syscall(t.pid, t.pid, waits_in);
    // SAFETY: kill with integer arguments.
    assert_eq!(unsafe { libc::kill(t.pid, libc::SIGSTOP) }, 0);
    let deadline = std::time::Instant::now() + fdgrab_testkit::TIMEOUT;
    while !status_field(t.pid, "State").is_some_and(|st| st.starts_with('T')) {
        assert!(std::time::Instant::now() < deadline, "target never stopped");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // SAFETY: kill with integer arguments.
    assert_eq!(unsafe { libc::kill(t.pid, sig) }, 0);
    let before = grab_comparing_signal_state(&t);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(
        status_field(t.pid, "State").is_some_and(|st| st.starts_with('T')),
        "no longer stopped: {:?}",
        status_field(t.pid, "State")
    );
    // SAFETY: kill with integer arguments.
    assert_eq!(unsafe { libc::kill(t.pid, libc::SIGCONT) }, 0);
    before.assert_no_leftovers(&before.fds, "after the grab and SIGCONT");
    let stdin = t.stdin.as_mut().expect("stdin");
    stdin.write_all(b"cont\n").expect("write");
    stdin.flush().expect("flush");
    let line: serde_json::Value = serde_json::from_str(&t.next_line()).expect("json");
    assert_eq!(
        (line["n"].as_i64(), line["count"].as_u64()),
        (Some(5), Some(1)),
        "the handler of signal {sig} must run once, after SIGCONT: {line}"
    );
}

/// A 32-bit (ia32) thread, here a 64-bit process that switched to 32-bit code and
/// blocks in an ia32 `read`: the ptrace backend speaks only the native ABI, so the
/// grab is refused, naming the reason, and the thread is left exactly as it was:
/// its read returns the next line, whose length it exits with.
#[cfg(target_arch = "x86_64")]
#[test]
fn attack_a_32_bit_thread_is_refused_and_left_untouched() {
    let mut t = Target::spawn(["ia32-read"]);
    if t.report["extra"]["ia32"] != true {
        fdgrab_testkit::skip("the kernel runs no ia32 code");
        return;
    }
    // The ia32 number of read.
    wait_in_syscall(t.pid, t.pid, 3);
    let before = Snapshot::take(t.pid);
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let fd = TargetFd::new(t.fd_labelled("file")).expect("fd");
    let err = GrabOptions::new()
        .backend(Backend::Ptrace)
        .grab(&pidfd, fd)
        .map(|_| ())
        .expect_err("a ptrace grab from a 32-bit thread");
    assert!(err.to_string().contains("32-bit"), "{err}");
    before.assert_no_leftovers(&before.fds, "after the refused grab");
    let stdin = t.stdin.as_mut().expect("stdin");
    stdin.write_all(b"12345\n").expect("write");
    stdin.flush().expect("flush");
    let deadline = std::time::Instant::now() + fdgrab_testkit::TIMEOUT;
    let status = loop {
        if let Some(st) = t.child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ia32 read never returned"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(status.code(), Some(6), "{status:?}");
}
