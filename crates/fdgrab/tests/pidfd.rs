//! `PidFd` against real processes: opening, signalling, waiting and identity.

use fdgrab::{Error, PidFd, PidFdFlags};
use fdgrab_testkit::{Target, TIMEOUT};
use std::process::Command;
use std::time::Duration;

#[test]
fn signal_and_wait_for_exit() {
    let mut child = Command::new("sleep").arg("60").spawn().expect("sleep");
    let pidfd = PidFd::from_child(&child).expect("pidfd");
    assert!(pidfd.is_alive());
    assert!(!pidfd
        .wait_exit(Some(Duration::from_millis(20)))
        .expect("poll"));
    pidfd.send_signal(0).expect("signal 0 probes existence");
    pidfd.send_signal(libc::SIGTERM).expect("SIGTERM");
    assert!(pidfd.wait_exit(Some(TIMEOUT)).expect("poll"));
    let status = pidfd.wait_child().expect("waitid(P_PIDFD)");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(matches!(
        pidfd.send_signal(libc::SIGTERM),
        Err(Error::NoSuchProcess { .. })
    ));
    // waitid(P_PIDFD) reaped it, so std's own waitpid finds no child any more.
    assert!(child.try_wait().is_err());
}

#[test]
#[allow(clippy::zombie_processes)] // reaped through the pidfd, which clippy cannot see
fn child_exit_code_through_pidfd() {
    let child = Command::new("sh")
        .args(["-c", "exit 7"])
        .spawn()
        .expect("sh");
    let pidfd = PidFd::from_child(&child).expect("pidfd");
    assert_eq!(pidfd.wait_child().expect("wait").code(), Some(7));
}

#[test]
fn nonblocking_pidfd() {
    let t = Target::spawn(["zoo"]);
    let pidfd = PidFd::open_with(
        t.pid,
        PidFdFlags {
            nonblock: true,
            thread: false,
        },
    )
    .expect("pidfd");
    let pidfd = pidfd.as_pidfd().expect("a real pidfd");
    let fl = rustix::fs::fcntl_getfl(pidfd).expect("F_GETFL");
    assert!(fl.contains(rustix::fs::OFlags::NONBLOCK));
    // waitid on a non-blocking pidfd of a running child does not block.
    let r = rustix::process::waitid(
        rustix::process::WaitId::PidFd(pidfd),
        rustix::process::WaitIdOptions::EXITED,
    );
    assert!(matches!(r, Err(rustix::io::Errno::AGAIN)), "{r:?}");
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid layout), from our mountinfo.
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(Into::into))?
    })
}

/// A cgroup of our own. Dropping it moves whatever is in it back to the parent
/// (a process that just exited may still hold it) and removes it.
struct OwnCgroup(std::path::PathBuf);

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        let parent = self.0.parent().expect("parent").join("cgroup.procs");
        let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let _ = std::fs::write(&parent, pid);
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn info_matches_proc() {
    let t = Target::spawn(["zoo"]);
    // In a cgroup of its own, so its id is not the root's (1), which a wrong
    // answer could match by chance.
    let cgroup = cgroup2_mount()
        .filter(|_| fdgrab_testkit::is_root())
        .map(|root| {
            let dir = root.join(format!("fdgrab-test-{}-{}", std::process::id(), t.pid));
            std::fs::create_dir(&dir).expect("mkdir cgroup");
            std::fs::write(dir.join("cgroup.procs"), t.pid.to_string()).expect("move to cgroup");
            OwnCgroup(dir)
        });
    let pidfd = PidFd::open(t.pid).expect("pidfd");
    let info = pidfd.info().expect("info");
    assert_eq!(info.pid, t.pid);
    assert_eq!(info.tgid, t.pid);
    assert_eq!(info.ppid, std::process::id() as i32);
    let status = std::fs::read_to_string(format!("/proc/{}/status", t.pid)).expect("status");
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid")
        .split_whitespace()
        .map(|v| v.parse().expect("uid"))
        .collect();
    assert_eq!(info.uids.to_vec(), uids);
    match (info.cgroup_id, &cgroup) {
        (Some(id), Some(OwnCgroup(dir))) => {
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::metadata(dir).expect("cgroup dir").ino();
            assert_eq!(id, ino, "cgroup id of {} ({})", dir.display(), info.source);
        }
        (None, _) => fdgrab_testkit::skip(&format!(
            "no cgroup id from {} (PIDFD_GET_INFO, Linux 6.13, and a cgroup v2 mount)",
            info.source
        )),
        (Some(_), None) => fdgrab_testkit::skip("cannot make a cgroup v2 of our own to compare"),
    }
}

#[test]
fn info_of_dropped_privileges() {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(fdgrab_testkit::bin("fdgrab-target"));
    cmd.arg("zoo").uid(65534).gid(65534);
    let t = Target::spawn_cmd(cmd);
    let info = PidFd::open(t.pid).expect("pidfd").info().expect("info");
    assert_eq!(info.uids, [65534; 4]);
    assert_eq!(info.gids, [65534; 4]);
}

#[test]
fn bad_pids() {
    assert!(matches!(PidFd::open(0), Err(Error::InvalidArgument(_))));
    assert!(matches!(PidFd::open(-4), Err(Error::InvalidArgument(_))));
    // A pid that cannot exist: above the kernel's hard limit of 2^22.
    assert!(matches!(
        PidFd::open(4_194_305),
        Err(Error::NoSuchProcess { pid: 4_194_305 })
    ));
    let t = Target::spawn(["zoo"]);
    let p = PidFd::open(t.pid).expect("pidfd");
    assert!(matches!(p.send_signal(-1), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        p.send_signal(1000),
        Err(Error::InvalidArgument(_))
    ));
}

/// `from_owned` accepts only a pidfd, and only for the pid it names.
#[test]
fn from_owned_checks_the_fd() {
    use rustix::process::{pidfd_open, Pid as RPid, PidfdFlags};
    let mut child = Command::new("sleep").arg("60").spawn().expect("sleep");
    let pid = child.id() as i32;
    let open =
        || pidfd_open(RPid::from_raw(pid).expect("pid"), PidfdFlags::empty()).expect("pidfd_open");

    let p = PidFd::from_owned(open(), pid).expect("a pidfd for pid");
    assert_eq!(p.pid(), pid);
    assert!(!p.is_thread() && !p.is_procfs() && p.as_pidfd().is_some());
    assert!(p.is_alive());

    match PidFd::from_owned(open(), pid + 1) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains(&format!("process {pid}")), "{m}"),
        other => panic!("a pidfd for another pid was accepted: {other:?}"),
    }
    let file = std::fs::File::open("/proc/self/status").expect("open");
    match PidFd::from_owned(file.into(), pid) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("is not a pidfd"), "{m}"),
        other => panic!("a regular file was accepted: {other:?}"),
    }
    let dir = std::fs::File::open(format!("/proc/{pid}")).expect("open /proc/PID");
    assert!(
        matches!(
            PidFd::from_owned(dir.into(), pid),
            Err(Error::InvalidArgument(_))
        ),
        "a /proc/PID directory is not a pidfd"
    );
    let thread = PidFd::open_thread(pid).expect("thread pidfd");
    let raw: std::os::fd::OwnedFd = thread.into();
    assert!(PidFd::from_owned(raw, pid)
        .expect("thread pidfd")
        .is_thread());

    let kept = open();
    child.kill().expect("kill");
    child.wait().expect("reap");
    assert!(matches!(
        PidFd::from_owned(kept, pid),
        Err(Error::NoSuchProcess { .. })
    ));

    // A /proc handle has no pidfd to hand to pidfd system calls.
    let me = std::process::id() as i32;
    assert!(PidFd::open_procfs(me).expect("procfs").as_pidfd().is_none());
}
