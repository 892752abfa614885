//! The seccomp layer and the `Supervisor` API driven directly, the way the OCI
//! agent uses them: a spawned child installs a filter and hands its listener over a
//! socketpair; the test's supervisor answers. The filter is only ever installed in
//! the child, never in the test process.

use fdgrab::seccomp::{
    self, Action, AddFdAt, InstallFlags, Listener, Notification, Response, SyscallFilter,
};
use fdgrab::supervise::{
    Answer, AuditLabels, AuditSink, Context, Handler, Policy, Supervisor, SupervisorEvent,
};
use fdgrab_testkit::{bin, TIMEOUT};
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use std::io::{IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spawns `cmd` with `filter` installed (after an optional uid change) and returns
/// the child and its listener.
fn spawn_filtered(mut cmd: Command, filter: &SyscallFilter, uid: Option<u32>) -> (Child, OwnedFd) {
    let prog = filter.build().expect("filter").raw();
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socketpair");
    let raw = theirs.as_raw_fd();
    // SAFETY: runs in the forked child before exec; only system calls on data
    // prepared before the fork, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let sock = BorrowedFd::borrow_raw(raw);
            if let Some(u) = uid {
                rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(u))?;
                rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(u))?;
            }
            seccomp::set_no_new_privs()?;
            let listener = seccomp::install_filter(&prog, InstallFlags::supervised())
                .map_err(|e| std::io::Error::from(e.errno()))?
                .ok_or_else(|| std::io::Error::other("no listener"))?;
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [listener.as_fd()];
            control.push(SendAncillaryMessage::ScmRights(&fds));
            rustix::net::sendmsg(
                sock,
                &[IoSlice::new(b"L")],
                &mut control,
                SendFlags::NOSIGNAL,
            )?;
            Ok(())
        });
    }
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    let child = cmd.spawn().expect("spawn filtered child");
    drop(theirs);
    let mut buf = [0u8; 4];
    let got = fdgrab::passfd::recv_fds(&ours, &mut buf, 1).expect("listener");
    let fd = got.fds.into_iter().next().expect("listener fd");
    (child, fd)
}

/// Dispatches until the child exits and its listener hangs up; returns the events
/// and the child's stdout.
fn supervise(sup: &mut Supervisor, mut child: Child) -> (Vec<SupervisorEvent>, String) {
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut events = Vec::new();
    while sup.listener_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "child still trapped after {TIMEOUT:?}"
        );
        events.extend(
            sup.dispatch(Some(Duration::from_millis(100)))
                .expect("dispatch"),
        );
    }
    let _ = child.wait();
    (events, reader.join().unwrap_or_default())
}

fn root_or_skip() -> bool {
    if !fdgrab_testkit::is_root() {
        fdgrab_testkit::skip("needs root (drops to uid 65534 and binds port 80)");
        return false;
    }
    true
}

#[test]
fn seccomp_supervisor_binds_for_an_unprivileged_child_and_reports_hangup() {
    if !root_or_skip() {
        return;
    }
    let filter = SyscallFilter::new(Action::Allow).rule(libc::SYS_bind, Action::Notify);
    let mut cmd = Command::new(bin("bind-probe"));
    cmd.args(["bind", "tcp4", "127.66.0.1", "79"]);
    let (child, listener) = spawn_filtered(cmd, &filter, Some(65534));
    let mut sup = Supervisor::new(AuditSink::none()).expect("supervisor");
    let policy = Arc::new(Policy::from_specs(&["tcp:79@127.66.0.1"]).expect("policy"));
    let labels = AuditLabels {
        container_id: Some("test".into()),
        ..AuditLabels::default()
    };
    let id = sup.add_listener(listener, policy, labels).expect("add");
    assert_eq!(sup.listener_count(), 1);
    let (events, out) = supervise(&mut sup, child);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("probe JSON");
    assert_eq!(v["errno"], 0, "{v}");
    assert_eq!(v["port"], 79, "{v}");
    assert!(events
        .iter()
        .any(|e| matches!(e, SupervisorEvent::Handled { listener, .. } if *listener == id)));
    assert_eq!(
        events.last(),
        Some(&SupervisorEvent::ListenerClosed(id)),
        "{events:?}"
    );
    assert_eq!(sup.listener_count(), 0);
}

/// Answers `getppid` with a fixed value and `dup` by installing a memfd in the
/// caller with `ADDFD | SEND`, checking `ID_VALID` on the way.
#[derive(Debug)]
struct FakeCalls {
    memfd: OwnedFd,
    seen_valid: bool,
}

impl Handler for FakeCalls {
    fn syscalls(&self) -> &[libc::c_long] {
        &[libc::SYS_getppid, libc::SYS_dup]
    }

    fn handle(&mut self, cx: &mut Context<'_>, n: &Notification) -> Answer {
        self.seen_valid |= cx.listener.id_valid(n.id);
        if i64::from(n.data.nr) == libc::SYS_getppid {
            return Answer::Respond(Response::Value(4242));
        }
        match cx
            .listener
            .add_fd(n.id, self.memfd.as_fd(), AddFdAt::Lowest, false, true)
        {
            Ok(_) => Answer::Done,
            Err(e) => Answer::Respond(Response::Error(
                rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO),
            )),
        }
    }
}

#[test]
fn seccomp_handlers_answer_values_and_install_fds() {
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let memfd =
        rustix::fs::memfd_create("fdgrab-test", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    rustix::io::write(&memfd, b"from the supervisor").expect("write");
    let filter = SyscallFilter::new(Action::Allow)
        .rule(libc::SYS_getppid, Action::Notify)
        .rule(libc::SYS_dup, Action::Notify);
    let mut cmd = Command::new(python);
    cmd.args([
        "-c",
        "import os, ctypes; fd = ctypes.CDLL(None).syscall(32, 0); \
         print(os.getppid(), fd, os.pread(fd, 64, 0).decode())",
    ]);
    let (child, listener) = spawn_filtered(cmd, &filter, None);
    let mut sup = Supervisor::new(AuditSink::none()).expect("supervisor");
    let handler = FakeCalls {
        memfd,
        seen_valid: false,
    };
    sup.add_listener_with(listener, vec![Box::new(handler)], AuditLabels::default())
        .expect("add");
    let (_, out) = supervise(&mut sup, child);
    let parts: Vec<&str> = out.trim().splitn(3, ' ').collect();
    assert_eq!(
        parts.first(),
        Some(&"4242"),
        "getppid answered by the handler: {out}"
    );
    assert!(
        parts
            .get(1)
            .and_then(|f| f.parse::<i32>().ok())
            .is_some_and(|f| f >= 3),
        "{out}"
    );
    assert_eq!(
        parts.get(2),
        Some(&"from the supervisor"),
        "dup answered with ADDFD|SEND: {out}"
    );
}

#[test]
fn seccomp_listener_basics() {
    // A request id that was never issued is not valid, in either encoding.
    let filter = SyscallFilter::new(Action::Allow).rule(libc::SYS_getppid, Action::Notify);
    let (mut child, fd) = spawn_filtered(Command::new("true"), &filter, None);
    let listener = Listener::from_fd(fd);
    assert!(!listener.id_valid(0xdead_beef));
    // SYNC_WAKE_UP exists since 6.6: there it must take effect, not be skipped.
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    let took = listener.set_sync_wake_up().expect("SET_FLAGS");
    assert_eq!(took, version >= (6, 6), "kernel {release}");
    let _ = child.wait();
    // Answering a request that does not exist is ENOENT, reported as "gone".
    assert!(matches!(
        listener.respond(12345, Response::Continue),
        Err(seccomp::SendError::Gone)
    ));
}

/// The supervisor `fdgrab run` uses, on a socket made in another network
/// namespace by an unprivileged program: handed back to the kernel (EACCES) under
/// the default policy, bound when the policy says `netns = "any"`.
#[test]
fn seccomp_supervisor_socket_from_another_netns() {
    use fdgrab_testkit::oci::{FakeTenant, TempDir};
    use std::sync::atomic::{AtomicBool, Ordering};
    if !root_or_skip() {
        return;
    }
    for any in [false, true] {
        let dir = TempDir::new("fdgrab-sup-netns");
        let path = dir.path().join("listener.sock");
        let accept = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let mut tenant = FakeTenant::spawn_at(&path, "run-netns", true, None);
        let (conn, _) = accept.accept().expect("accept");
        let mut buf = vec![0u8; 8192];
        let got = fdgrab::passfd::recv_fds(&conn, &mut buf, 4).expect("recv the listener");
        let listener = got.fds.into_iter().next().expect("one fd");
        assert_eq!(tenant.line(TIMEOUT)["ready"], true);
        let audit_path = dir.path().join("audit.jsonl");
        let mut sup =
            Supervisor::new(AuditSink::from_path(&audit_path).expect("audit")).expect("sup");
        let policy = Policy::from_specs(&["tcp:88"])
            .expect("policy")
            .with_any_netns(any);
        sup.add_listener(listener, Arc::new(policy), AuditLabels::default())
            .expect("add");
        let stop = Arc::new(AtomicBool::new(false));
        let serving = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sup.dispatch(Some(Duration::from_millis(20)))
                        .expect("dispatch");
                }
            })
        };
        let r = tenant.ask("foreign 88", TIMEOUT);
        stop.store(true, Ordering::Relaxed);
        serving.join().expect("supervisor thread");
        let want = if any { 0 } else { libc::EACCES };
        assert_eq!(r["errno"], want, "netns = any: {any}: {r}");
        let text = std::fs::read_to_string(&audit_path).expect("audit");
        let line: serde_json::Value =
            serde_json::from_str(text.lines().last().expect("a line")).expect("json");
        let decision = if any { "bind" } else { "continue" };
        assert_eq!(line["decision"], decision, "{line}");
        assert!(line["netns"].as_u64().is_some(), "{line}");
    }
}
