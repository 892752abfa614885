//! The grab routine (`socket`, `sendmsg`, `close` run from code in the scratch
//! mapping in one resume, see docs/injection.md): taken where it keeps every
//! guarantee of the per-call steps, and the per-call way everywhere else. Which way
//! a grab went is read from the session's own count of ptrace stops (`-vv`): 4 with
//! the routine (interrupt, `mmap`, routine, `munmap`), 6 call by call. After every
//! case the target is alive, answering, untraced, with nothing of ours left, and
//! no filter was suspended to let the routine through.

use fdgrab_testkit::{fdgrab, is_root, output_timeout, skip, Snapshot, Target, TIMEOUT};
use std::process::Output;

/// `fdgrab -vv get --backend ptrace PID FD -- readlink -v /proc/self/fd/FD` (`get`
/// hands the copy on at the target's number).
fn get(t: &Target, fd: i32) -> Output {
    output_timeout(
        fdgrab().args([
            "-vv",
            "get",
            "--backend",
            "ptrace",
            &t.pid.to_string(),
            &fd.to_string(),
            "--",
            "readlink",
            "-v",
            &format!("/proc/self/fd/{fd}"),
        ]),
        TIMEOUT,
    )
}

/// The debug line of a grab that does not use the routine.
const CALL_BY_CALL: &str = "injecting call by call";

/// The session's stop count from its "detached" debug line.
fn stops(err: &str) -> Option<u32> {
    let at = err.find("stops=")? + "stops=".len();
    err[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Checks that `get`'s output names what the target's `fd` is.
fn assert_copy_of(t: &Target, fd: i32, out: &Output, case: &str) {
    let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", t.pid)).expect("readlink");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        link.to_string_lossy(),
        "{case}: the copy is not the target's fd {fd}"
    );
}

/// Grabs the target's `file` fd and checks the copy, the way taken (`want`
/// stops), that no filter was suspended, and the target.
fn grab_in(mut t: Target, want: u32, case: &str) {
    let b = Snapshot::take(t.pid);
    let fd = t.fd_labelled("file");
    let out = get(&t, fd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{case}: {err}");
    assert_copy_of(&t, fd, &out, case);
    assert_eq!(stops(&err), Some(want), "{case}: {err}");
    assert_eq!(err.contains(CALL_BY_CALL), want != 4, "{case}: {err}");
    assert!(!err.contains("SUSPEND_SECCOMP"), "{case}: {err}");
    b.assert_unharmed(&mut t, &b.fds, case);
}

#[test]
fn routine_grabs_in_four_stops() {
    grab_in(
        Target::spawn(["signal-read", "usr2", "restart"]),
        4,
        "no filter",
    );
    if !is_root() {
        skip("reading seccomp filters needs root");
        return;
    }
    // A filter that allows every call of the routine from where it runs.
    grab_in(
        Target::spawn(["seccomp", "kill-process", "mknod"]),
        4,
        "a filter on mknod",
    );
}

/// [`grab_in`] a target under the filter `args` give, expecting the per-call way.
fn per_call_in(args: &[&str], case: &str) {
    if !is_root() {
        skip("reading seccomp filters needs root");
        return;
    }
    grab_in(Target::spawn(args), 6, case);
}

/// A filter that kills on an executable `mmap`: no such mapping is asked for
/// (the target would die), and the calls are made one by one, filter in force.
#[test]
fn routine_not_used_where_a_filter_refuses_an_exec_mapping() {
    per_call_in(
        &["seccomp", "kill-process", "mmap", "exec"],
        "kill on PROT_EXEC",
    );
    per_call_in(&["seccomp", "errno", "mmap", "exec"], "EPERM for PROT_EXEC");
    // systemd's MemoryDenyWriteExecute=: `mprotect` with PROT_EXEC refused (its
    // `mmap` rule refuses only write+exec, which lets a read+exec mapping through).
    per_call_in(
        &["seccomp", "errno", "mprotect,pkey_mprotect", "exec"],
        "MemoryDenyWriteExecute",
    );
}

/// A filter that looks at the fd of `sendmsg` and `close` (here: kill if it is
/// above 2^47, never true for an fd): the fd is known only inside the routine,
/// so its verdict cannot be known before, and the calls go one by one, each
/// checked with its real fd.
#[test]
fn routine_not_used_where_a_filter_reads_the_fd_it_makes() {
    let args = ["seccomp", "kill-process", "sendmsg,close", "high"];
    per_call_in(&args, "kill on sendmsg/close by fd");
}

/// A filter that kills a `socket` made from 2 bytes into a page: where the
/// routine's own `syscall` instruction is (it starts the fresh mapping), not where
/// a step's is. Checked with the routine's real instruction pointer, the routine
/// is ruled out; the step's `socket` passes.
#[test]
fn routine_not_used_where_a_filter_treats_its_code_differently() {
    let args = ["seccomp", "kill-process", "socket", "ip2"];
    per_call_in(&args, "kill on socket from a page start");
}

/// `socket` failing inside the routine (EMFILE: the target's fd limit lowered to
/// its lowest free number) ends it before `sendmsg`, and the error is the one the
/// per-call way reports; the target keeps no fd and no mapping of ours.
#[test]
fn routine_socket_failure_stops_it_and_reports_the_errno() {
    if !is_root() {
        skip("the per-call comparison reads seccomp filters (root)");
        return;
    }
    let mut errors = Vec::new();
    for (args, per_call) in [
        (&["signal-read", "usr2", "restart"][..], false),
        (&["seccomp", "errno", "mmap", "exec"][..], true),
    ] {
        let mut t = Target::spawn(args);
        let lowest_free = fdgrab_testkit::fill_fd_table(t.pid);
        let b = Snapshot::take(t.pid);
        let fd = t.fd_labelled("file");
        assert!((fd as u64) < lowest_free);
        let out = get(&t, fd);
        let err = String::from_utf8_lossy(&out.stderr);
        let case = args.join(" ");
        assert!(!out.status.success(), "{case}: {err}");
        // Interrupt, mmap, the routine or the failed socket, munmap.
        assert_eq!(stops(&err), Some(4), "{case}: {err}");
        assert_eq!(err.contains(CALL_BY_CALL), per_call, "{case}: {err}");
        let line = err
            .lines()
            .find(|l| l.contains("socket(AF_UNIX, SOCK_DGRAM)"))
            .unwrap_or_else(|| panic!("{case}: no socket error: {err}"));
        // EMFILE by number (its text is the C library's).
        assert!(line.contains("(os error 24)"), "{case}: {line}");
        errors.push(line.replace(&t.pid.to_string(), "PID"));
        b.assert_unharmed(&mut t, &b.fds, &case);
    }
    assert_eq!(errors[0], errors[1], "the two ways report differently");
}

/// A signal the routine forces stops it there, undelivered. The target's second
/// thread gives every thread, once the main one is traced (after fdgrab found no
/// filter to read), a filter that traps the routine's `close` (SIGSYS, which
/// would kill it if delivered). The routine is then stopped at the trap, its
/// socket closed with a step (from another address, which the filter lets
/// through), the scratch page unmapped, and the grab fails naming the signal;
/// the target lives on as it was. When the filter comes in too early or too late
/// the grab simply succeeds, so cases are tried until the trap has been met.
#[test]
fn routine_stopped_by_a_signal_it_forces() {
    if !is_root() {
        skip("a filter installed for all threads with TSYNC needs root here");
        return;
    }
    let mut outcomes = Vec::new();
    for _ in 0..40 {
        let mut t = Target::spawn(["tsync-trap-when-traced"]);
        let b = Snapshot::take(t.pid);
        let out = get(&t, t.fd_labelled("file"));
        let err = String::from_utf8_lossy(&out.stderr);
        let forced = err.contains("forced a signal");
        assert_eq!(
            out.status.success(),
            !forced,
            "{:?} {:?}: {err}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
        b.assert_unharmed(&mut t, &b.fds, "a filter added mid-session");
        outcomes.push(forced);
        if forced {
            assert!(err.contains("signal 31"), "SIGSYS: {err}");
            return;
        }
    }
    panic!("the trap was never met in {} grabs", outcomes.len());
}

/// A hostile second thread replaces the routine's final `int3` with a jump to
/// itself once the code is in place, so the routine never ends: fdgrab must not
/// wait for it forever. It gives up after a deadline, stops the thread, closes
/// what the routine opened, takes its page back and restores the thread; the
/// grab fails and the target runs on as before. When the thread comes too late
/// the grab simply succeeds, so cases are tried until the hijack has landed.
#[test]
fn routine_that_never_ends_is_given_up() {
    for _ in 0..40 {
        let mut t = Target::spawn(["hijack-routine"]);
        let b = Snapshot::take(t.pid);
        let out = get(&t, t.fd_labelled("file"));
        let err = String::from_utf8_lossy(&out.stderr);
        let hijacked = err.contains("did not end");
        assert_eq!(out.status.success(), !hijacked, "{err}");
        let fds = fds_with_listener(&t, &b, hijacked, &err);
        b.assert_unharmed(&mut t, &fds, "a routine that never ends");
        if hijacked {
            return;
        }
    }
    panic!("the hijack never landed in 40 grabs");
}

/// `/proc/PID/task/TID/mem` that cannot be opened for writing (here: a read-only
/// file bind-mounted over it in fdgrab's own mount namespace; on other systems
/// `proc_mem.force_override=never`): the read+exec page is given back and the grab
/// goes call by call from a read+write one: interrupt, `mmap` (exec), `munmap`,
/// `mmap`, `socket`, `sendmsg`, `close`, `munmap`.
#[test]
fn routine_not_used_where_the_target_memory_cannot_be_written() {
    if !is_root() {
        skip("a bind mount over /proc/PID/task/TID/mem needs root");
        return;
    }
    let mut t = Target::spawn(["signal-read", "usr2", "restart"]);
    let b = Snapshot::take(t.pid);
    let fd = t.fd_labelled("file");
    let ro = std::env::temp_dir().join(format!("fdgrab-routine-ro-{}", std::process::id()));
    std::fs::write(&ro, b"").expect("write");
    let script = format!(
        "mount --bind -o ro {} /proc/{pid}/task/{pid}/mem && exec {} -vv get --backend ptrace {pid} {fd} -- readlink -v /proc/self/fd/{fd}",
        ro.display(),
        fdgrab_testkit::bin("fdgrab").display(),
        pid = t.pid,
    );
    let out = output_timeout(
        std::process::Command::new("unshare").args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ]),
        TIMEOUT,
    );
    let _ = std::fs::remove_file(&ro);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("scratch mapping cannot be written"), "{err}");
    assert_copy_of(&t, fd, &out, "/proc/PID/mem not writable");
    assert_eq!(stops(&err), Some(8), "{err}");
    b.assert_unharmed(&mut t, &b.fds, "/proc/PID/mem not writable");
}

/// An executable `mmap` the kernel refuses though the filters fdgrab read let it
/// through (here a filter that refuses it with EPERM, added with TSYNC by the
/// target's second thread once the main one is traced, standing in for an LSM's
/// `execmem` or a memory limit): the grab goes call by call from a read+write
/// page: interrupt, `mmap` (exec, refused), `mmap`, `socket`, `sendmsg`,
/// `close`, `munmap`. When the filter comes too late the routine is used, so
/// cases are tried until the refusal has been met.
#[test]
fn routine_not_used_where_the_exec_mapping_is_refused() {
    if !is_root() {
        skip("a filter installed for all threads with TSYNC needs root here");
        return;
    }
    for _ in 0..40 {
        let mut t = Target::spawn(["tsync-no-exec-when-traced"]);
        let b = Snapshot::take(t.pid);
        let fd = t.fd_labelled("file");
        let out = get(&t, fd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_copy_of(&t, fd, &out, "an exec mapping refused");
        b.assert_unharmed(&mut t, &b.fds, "an exec mapping refused");
        if err.contains("no read+exec scratch mapping") {
            assert_eq!(stops(&err), Some(7), "{err}");
            return;
        }
        assert_eq!(stops(&err), Some(4), "{err}");
    }
    panic!("the refusal was never met in 40 grabs");
}

/// A call of the routine that waits (here its `close`, sent to a user-notification
/// listener, that the target's second thread adds with TSYNC once the main one is
/// traced, and never answers): after the deadline the routine is interrupted,
/// which ends the wait before the `close` ran; the socket it made is closed with
/// a step, and the target keeps nothing of ours (only its own new listener).
#[test]
fn routine_waiting_in_a_call_is_interrupted() {
    if !is_root() {
        skip("a filter installed for all threads with TSYNC needs root here");
        return;
    }
    for _ in 0..40 {
        let mut t = Target::spawn(["tsync-notify-when-traced"]);
        let b = Snapshot::take(t.pid);
        let out = get(&t, t.fd_labelled("file"));
        let err = String::from_utf8_lossy(&out.stderr);
        let waited = err.contains("did not end");
        assert_eq!(out.status.success(), !waited, "{err}");
        let fds = fds_with_listener(&t, &b, waited, &err);
        b.assert_unharmed(&mut t, &fds, &format!("a call that waits ({err})"));
        if waited {
            return;
        }
    }
    panic!("the wait was never met in 40 grabs");
}

/// A hostile second thread rewrites the fd in the routine's `SCM_RIGHTS` message
/// (to its fd 0) once it is written: the copy fdgrab receives is not the one it
/// asked for, and the identity check refuses it (nothing is handed on). When the
/// thread comes too late the grab simply succeeds, so cases are tried until the
/// forgery has landed.
#[test]
fn routine_forged_message_is_refused() {
    for _ in 0..40 {
        let mut t = Target::spawn(["forge-routine"]);
        let b = Snapshot::take(t.pid);
        let fd = t.fd_labelled("file");
        let out = get(&t, fd);
        let err = String::from_utf8_lossy(&out.stderr);
        let forged = err.contains("is not the same open file");
        let fds = fds_with_listener(&t, &b, forged, &err);
        b.assert_unharmed(&mut t, &fds, "a forged message");
        if forged {
            assert!(!out.status.success(), "{err}");
            assert!(out.stdout.is_empty(), "handed on: {err}");
            return;
        }
        assert!(out.status.success(), "{err}");
        assert_copy_of(&t, fd, &out, "a forgery that came too late");
    }
    panic!("the forgery never landed in 40 grabs");
}

/// A hostile second thread unmaps the routine's page once its code is written:
/// the routine faults (SIGSEGV forced on the thread), is stopped there, the
/// signal is not delivered and the target's own SIGSEGV handler is kept; or the
/// page goes after the routine ended, and the grab succeeds. Cases are tried
/// until the fault has been met.
#[test]
fn routine_whose_page_is_unmapped_faults_harmlessly() {
    for _ in 0..40 {
        let mut t = Target::spawn(["unmap-routine"]);
        let b = Snapshot::take(t.pid);
        let fd = t.fd_labelled("file");
        let out = get(&t, fd);
        let err = String::from_utf8_lossy(&out.stderr);
        let faulted = err.contains("forced a signal");
        let fds = fds_with_listener(&t, &b, faulted, &err);
        b.assert_unharmed(&mut t, &fds, "the routine's page unmapped");
        if faulted {
            assert!(err.contains("signal 11"), "{err}");
            assert!(!out.status.success(), "{err}");
            return;
        }
        assert!(out.status.success(), "{err}");
    }
    panic!("the fault was never met in 40 grabs");
}

/// The target's fds as `b` saw them, plus the user-notification listener its
/// second thread adds once it sees the trace: when the attack `landed` that was
/// during the grab; otherwise it may come after it, or (once the target is no
/// longer traced) never.
fn fds_with_listener(t: &Target, b: &Snapshot, landed: bool, err: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let listener = loop {
        let found = fdgrab_testkit::proc_fds(t.pid)
            .into_iter()
            .find(|l| l.ends_with("seccomp notify"));
        if found.is_some() || landed || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(listener.is_some() || !landed, "{err}");
    match &listener {
        Some(l) => b.fds_with(l),
        None => b.fds.clone(),
    }
}

/// A SIGSYS sent by a process (`tgkill`) while the routine runs, right after its
/// `close` ran, is not a seccomp trap: it is dropped, as a foreign SIGTRAP is, and
/// the routine goes on to its end. Taken for a trap, the `close` would have been
/// thought skipped and its fd closed a second time in the target (one of the
/// target's own, had another thread got that number meanwhile); the grab failed.
#[test]
fn routine_signal_sent_by_a_process_is_not_taken_for_a_trap() {
    if !is_root() {
        skip("a filter installed for all threads with TSYNC needs root here");
        return;
    }
    for _ in 0..40 {
        let mut t = Target::spawn(["sigsys-routine"]);
        let b = Snapshot::take(t.pid);
        let fd = t.fd_labelled("file");
        let out = get(&t, fd);
        let err = String::from_utf8_lossy(&out.stderr);
        let sent = err.contains("a signal sent during the routine");
        assert!(out.status.success(), "{err}");
        assert_copy_of(&t, fd, &out, "a SIGSYS sent mid-routine");
        let fds = fds_with_listener(&t, &b, sent, &err);
        b.assert_unharmed(&mut t, &fds, "a SIGSYS sent mid-routine");
        if sent {
            return;
        }
    }
    panic!("the signal was never sent during the routine in 40 grabs");
}
