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
