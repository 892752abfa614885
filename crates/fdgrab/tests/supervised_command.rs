//! `SupervisedCommand::start` with a filter of the caller's own: the program
//! installs it on itself, hands the listener back, and the caller answers its
//! trapped calls.

use fdgrab::seccomp::{Action, Response, SyscallFilter};
use fdgrab::supervise::SupervisedCommand;
use fdgrab_testkit::{status_field, TIMEOUT};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use std::ffi::OsString;

#[test]
fn a_pluggable_filter_traps_and_the_caller_answers() {
    let dir = std::env::temp_dir().join(format!("fdgrab-supcmd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("ppid");
    // dash asks getppid() once at start-up for $PPID; the filter sends it to us.
    let filter = SyscallFilter::new(Action::Allow)
        .rule(libc::SYS_getppid, Action::Notify)
        .build()
        .expect("filter");
    let script = format!("echo $PPID > {}", out.display());
    let argv: Vec<OsString> = ["sh", "-c", &script].iter().map(OsString::from).collect();
    let mut started = SupervisedCommand::new(&argv)
        .filter(&filter)
        .start()
        .expect("start");
    let pid = started.child.pid();

    let mut fds = [PollFd::new(&started.listener, PollFlags::IN)];
    let wait = Timespec {
        tv_sec: TIMEOUT.as_secs() as _,
        tv_nsec: 0,
    };
    assert_eq!(
        poll(&mut fds, Some(&wait)).expect("poll"),
        1,
        "no trapped call"
    );
    let n = started.listener.recv().expect("recv").expect("a request");
    assert_eq!(n.data.nr, libc::SYS_getppid as i32);
    assert_eq!(n.tid, pid);
    // Trapped, so the program is stopped where its filter is in force.
    assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("2"));
    assert_eq!(status_field(pid, "NoNewPrivs").as_deref(), Some("1"));
    started
        .listener
        .respond(n.id, Response::Value(4242))
        .expect("respond");

    // Bounded: a trapped call nobody answers would hold the program for good.
    if !started
        .child
        .pidfd()
        .wait_exit(Some(TIMEOUT))
        .expect("poll")
    {
        let _ = started.child.terminate(std::time::Duration::ZERO);
        panic!("the program did not finish once its trapped call was answered");
    }
    let st = started.child.wait().expect("wait");
    assert!(st.success(), "{st:?}");
    assert_eq!(std::fs::read_to_string(&out).expect("output"), "4242\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new server under the bind handover whose sockaddr is on a page nobody fills
/// (userfaultfd): the supervisor, which also serves signals and the ready gate,
/// must not wait on it. The read is abandoned at the deadline, the bind answered
/// `ETIMEDOUT`, and the handover refused with the reason.
#[test]
fn handover_read_of_an_unfilled_page_has_a_deadline() {
    use fdgrab::supervise::handover::Handover;
    use fdgrab::supervise::SupervisorEvent;
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip("process_vm_readv on a nobody-owned program needs root");
        return;
    }
    // The taken socket: the handover offers it, though this bind never says where.
    let taken = std::net::TcpListener::bind("127.66.7.1:0").expect("listen");
    let handover = Handover::new(vec![OwnedFd::from(taken)]).expect("handover");
    let argv: Vec<OsString> = [
        fdgrab_testkit::bin("bind-probe").into_os_string(),
        "uffd-bind".into(),
    ]
    .into();
    let (mut child, mut sup, out_r) = start_under_handover(&argv, &handover);
    // The supervisor runs on a thread of its own, so that a read that blocked it
    // for good fails this test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let until = Instant::now() + TIMEOUT;
        while Instant::now() < until {
            match sup.dispatch(Some(Duration::from_millis(100))) {
                Ok(evs)
                    if evs
                        .iter()
                        .any(|e| matches!(e, SupervisorEvent::Handled { .. })) =>
                {
                    let _ = tx.send(());
                    return;
                }
                Ok(_) => {}
                Err(e) => panic!("dispatch: {e}"),
            }
        }
    });
    rx.recv_timeout(TIMEOUT)
        .expect("the supervisor never answered the bind: its read has no deadline");
    let st = child.wait().expect("wait");
    assert!(st.success(), "{st:?}");
    let line = std::io::read_to_string(std::fs::File::from(out_r)).expect("probe output");
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("probe output");
    assert_eq!(v["errno"], libc::ETIMEDOUT, "{v}");
    let why = handover.refusal().expect("the handover is refused");
    assert!(why.contains("could not be read within 500 ms"), "{why}");
    handover.abort();
}

/// A new server under the bind handover that binds a file on a FUSE file system
/// (not a socket) to a taken address: the supervisor, which also serves signals
/// and the ready gate, must find out that it is no socket without asking the
/// file's file system (an `fstat` of a FUSE file whose attributes are not cached
/// is a request to its server, which may never answer), and leave the call to
/// the kernel (`ENOTSOCK`).
#[test]
fn handover_bind_of_a_fuse_file_never_reaches_its_file_system() {
    use fdgrab::supervise::handover::Handover;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip("mounting FUSE needs root");
        return;
    }
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("handover") else {
        fdgrab_testkit::skip("cannot mount a FUSE file system here");
        return;
    };
    // bind-probe's file-bind binds 127.66.0.1:PORT.
    let taken = std::net::TcpListener::bind("127.66.0.1:0").expect("listen");
    let port = taken.local_addr().expect("port").port();
    let handover = Handover::new(vec![OwnedFd::from(taken)]).expect("handover");
    let argv: Vec<OsString> = [
        fdgrab_testkit::bin("bind-probe").into_os_string(),
        "file-bind".into(),
        fs.file().into(),
        port.to_string().into(),
    ]
    .into();
    let (mut child, mut sup, out_r) = start_under_handover(&argv, &handover);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let serving = std::thread::spawn(move || {
        let until = Instant::now() + TIMEOUT;
        while !stop2.load(Ordering::Relaxed) && Instant::now() < until {
            if let Err(e) = sup.dispatch(Some(Duration::from_millis(100))) {
                panic!("dispatch: {e}");
            }
        }
    });
    if !child.pidfd().wait_exit(Some(TIMEOUT)).expect("poll") {
        let _ = child.terminate(Duration::ZERO);
        panic!("the program did not finish");
    }
    let st = child.wait().expect("wait");
    stop.store(true, Ordering::Relaxed);
    serving.join().expect("supervisor thread");
    assert!(st.success(), "{st:?}");
    let line = std::io::read_to_string(std::fs::File::from(out_r)).expect("probe output");
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("probe output");
    assert_eq!(v["errno"], libc::ENOTSOCK, "{v}");
    assert_eq!(
        fs.slow_requests(),
        0,
        "the supervisor asked the FUSE server about the file: {v}"
    );
    handover.abort();
}

/// Starts `argv` under the bind handover's filter, its stdout on a pipe, and a
/// supervisor serving it with `handover`'s handler: the child, the supervisor
/// and the pipe's read end.
fn start_under_handover(
    argv: &[OsString],
    handover: &fdgrab::supervise::handover::Handover,
) -> (
    fdgrab::spawn::Child,
    fdgrab::supervise::Supervisor,
    std::os::fd::OwnedFd,
) {
    use fdgrab::supervise::{AuditLabels, AuditSink, Handler, Supervisor};
    let (out_r, out_w) = rustix::pipe::pipe().expect("pipe");
    let started = SupervisedCommand::new(argv)
        .filter(&fdgrab::supervise::handover::handover_filter().expect("filter"))
        .spawn_setup(move |s| Ok(s.fds(fdgrab::spawn::FdPlan::from_pairs([(out_w, 1)])?)))
        .start()
        .expect("start");
    let mut sup = Supervisor::new(AuditSink::none()).expect("supervisor");
    let handlers: Vec<Box<dyn Handler>> = vec![Box::new(handover.handler())];
    sup.add_listener_with(started.listener.into_fd(), handlers, AuditLabels::default())
        .expect("listener");
    (started.child, sup, out_r)
}
