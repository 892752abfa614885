//! Injection into targets under seccomp filters that answer one of the injected
//! calls with kill, trap, errno, trace or a user notification. Without suspension
//! fdgrab must refuse before running anything; with it (root) it must succeed. Either
//! way the target is checked after every case: alive and answering, not stopped, not
//! traced, signal mask and pending signals unchanged, no mapping of ours, fd table
//! unchanged except for the intended change.

use fdgrab::inject::{self, SeccompPolicy};
use fdgrab::{Backend, Error, GrabOptions, PidFd, TargetFd};
use fdgrab_testkit::{is_root, skip, status_field, wait_in_syscall, Snapshot, Target};
use std::os::fd::AsFd;

fn tfd(n: i32) -> TargetFd {
    TargetFd::new(n).expect("fd")
}

/// Which library operation exercises `call`: a grab (socket, sendmsg, close and the
/// session's mmap/munmap/rt_sigprocmask) or a put (connect, recvmsg, fcntl, dup3).
#[derive(Clone, Copy, PartialEq)]
enum Op {
    Grab,
    Put,
}

fn op_for(call: &str) -> Op {
    match call {
        "connect" | "recvmsg" | "dup3" | "fcntl" => Op::Put,
        _ => Op::Grab,
    }
}

/// Where `put` installs our file in the target.
const PUT_AT: i32 = 61;

fn run_op(t: &Target, op: Op, policy: SeccompPolicy) -> fdgrab::Result<()> {
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    match op {
        Op::Grab => {
            let g = GrabOptions::new()
                .backend(Backend::Ptrace)
                .seccomp(policy)
                .grab(&pidfd, tfd(t.fd_labelled("file")))?;
            assert_eq!(g.backend, Backend::Ptrace);
            Ok(())
        }
        Op::Put => {
            let f = std::fs::File::open("/dev/null").expect("open");
            inject::put(&pidfd, f.as_fd(), tfd(PUT_AT), policy)
        }
    }
}

fn spawn_filtered(action: &str, calls: &str) -> Target {
    spawn_filtered_in(action, calls, "read")
}

/// [`spawn_filtered`] with the target waiting in `read` or, with `"ppoll"`, in a
/// ppoll with a mask: a thread the session must block with an injected
/// `rt_sigprocmask`, since `PTRACE_SETSIGMASK` would lose ppoll's saved mask.
fn spawn_filtered_in(action: &str, calls: &str, wait: &str) -> Target {
    let t = Target::spawn(["seccomp", action, calls, wait]);
    if wait == "ppoll" {
        wait_in_syscall(t.pid, t.pid, libc::SYS_ppoll);
    }
    assert_eq!(
        status_field(t.pid, "Seccomp").as_deref(),
        Some("2"),
        "target {action} {calls} is not in filter mode"
    );
    t
}

/// The kernel's name of the action the target's filter uses.
fn kernel_name(action: &str) -> &'static str {
    match action {
        "kill-process" => "SECCOMP_RET_KILL_PROCESS",
        "kill-thread" => "SECCOMP_RET_KILL_THREAD",
        "trap" => "SECCOMP_RET_TRAP",
        "errno" => "SECCOMP_RET_ERRNO",
        "notify" => "SECCOMP_RET_USER_NOTIF",
        "trace" => "SECCOMP_RET_TRACE",
        other => panic!("no such action {other}"),
    }
}

const CALLS: [&str; 10] = [
    "socket",
    "mmap",
    "connect",
    "sendmsg",
    "close",
    "munmap",
    "rt_sigprocmask",
    "recvmsg",
    "dup3",
    "fcntl",
];

/// For each injected call: refused (nothing run) without suspension, served with it.
fn refused_then_served(action: &str) {
    if !is_root() {
        skip("reading and suspending seccomp filters needs root");
        return;
    }
    for call in CALLS {
        let case = format!("{action} on {call}");
        let op = op_for(call);
        // Only a thread in a call that swaps masks gets an injected rt_sigprocmask.
        let wait = if call == "rt_sigprocmask" {
            "ppoll"
        } else {
            "read"
        };
        let mut t = spawn_filtered_in(action, call, wait);
        let b = Snapshot::take(t.pid);
        match run_op(&t, op, SeccompPolicy::new().suspend(false)) {
            Err(Error::SeccompRefused {
                call: c,
                action: a,
                pid,
                ..
            }) => {
                assert_eq!(pid, t.pid, "{case}");
                assert!(c.starts_with(&format!("{call}(")), "{case}: named {c}");
                assert!(a.starts_with(kernel_name(action)), "{case}: action {a}");
            }
            other => panic!("{case}: expected SeccompRefused, got {other:?}"),
        }
        b.assert_unharmed(&mut t, &b.fds, &format!("{case}, refused"));
        // Suspending the filter for the injected calls lets the operation through.
        run_op(&t, op, SeccompPolicy::new())
            .unwrap_or_else(|e| panic!("{case}: with suspension: {e}"));
        let fds = match op {
            Op::Put => b.fds_with(&format!("{PUT_AT} -> /dev/null")),
            Op::Grab => b.fds.clone(),
        };
        b.assert_unharmed(&mut t, &fds, &format!("{case}, suspended"));
    }
}

#[test]
fn seccomp_kill_process_filters_are_never_triggered() {
    refused_then_served("kill-process");
}

#[test]
fn seccomp_kill_thread_filters_are_never_triggered() {
    refused_then_served("kill-thread");
}

#[test]
fn seccomp_trap_filters_are_never_triggered() {
    refused_then_served("trap");
}

#[test]
fn seccomp_errno_filters_are_refused_up_front() {
    refused_then_served("errno");
}

#[test]
fn seccomp_user_notif_filters_are_refused_up_front() {
    refused_then_served("notify");
}

#[test]
fn seccomp_trace_filters_are_refused_up_front() {
    refused_then_served("trace");
}

/// Filters on calls fdgrab never makes, or that only log, are checked and served
/// without suspending anything.
#[test]
fn seccomp_filter_on_unrelated_call_is_served() {
    if !is_root() {
        skip("reading seccomp filters needs root");
        return;
    }
    for (action, calls) in [
        ("kill-process", "mknod"),
        ("kill-thread", "mknod"),
        ("log", "socket,mmap,sendmsg,recvmsg,dup3,close"),
    ] {
        for op in [Op::Grab, Op::Put] {
            let case = format!("{action} on {calls}");
            let mut t = spawn_filtered(action, calls);
            let b = Snapshot::take(t.pid);
            run_op(&t, op, SeccompPolicy::new().suspend(false))
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            let fds = match op {
                Op::Put => b.fds_with(&format!("{PUT_AT} -> /dev/null")),
                Op::Grab => b.fds.clone(),
            };
            b.assert_unharmed(&mut t, &fds, &case);
        }
    }
}

/// A thread outside the calls that swap masks (here in `read`) has its mask set with
/// `PTRACE_SETSIGMASK`: no `rt_sigprocmask` runs in it, so a filter that would kill
/// or refuse one neither stops the session nor needs suspending, and the mask comes
/// back exactly.
#[test]
fn seccomp_filter_on_rt_sigprocmask_is_not_met_outside_mask_swapping_calls() {
    if !is_root() {
        skip("reading seccomp filters needs root");
        return;
    }
    for action in ["kill-process", "errno"] {
        let case = format!("{action} on rt_sigprocmask, target in read");
        let mut t = spawn_filtered_in(action, "rt_sigprocmask", "read");
        wait_in_syscall(t.pid, t.pid, libc::SYS_read);
        let b = Snapshot::take(t.pid);
        run_op(&t, Op::Grab, SeccompPolicy::new().suspend(false))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        b.assert_unharmed(&mut t, &b.fds, &case);
    }
}
