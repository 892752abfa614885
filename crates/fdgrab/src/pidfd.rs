//! Process file descriptors (`pidfd_open(2)`, Linux 5.3).
//!
//! A pidfd names one process (or, with `PIDFD_THREAD`, one thread) for as long as we
//! hold it, so a pid that is reused after the target dies cannot redirect anything we
//! do through it. Every operation in this crate that touches another process goes
//! through a [`PidFd`].

use crate::error::{Error, Result};
use crate::{procfs, sys, Pid};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{pidfd_open, PidfdFlags};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// `PIDFD_THREAD` (Linux 6.9) is `O_EXCL`; rustix does not name it.
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// How to open a pidfd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PidFdFlags {
    /// `PIDFD_NONBLOCK`: `waitid` on it returns `EAGAIN` instead of blocking.
    pub nonblock: bool,
    /// `PIDFD_THREAD`: name one thread rather than its thread group.
    pub thread: bool,
}

impl PidFdFlags {
    fn to_rustix(self) -> PidfdFlags {
        let mut bits = 0;
        if self.nonblock {
            bits |= PidfdFlags::NONBLOCK.bits();
        }
        if self.thread {
            bits |= PIDFD_THREAD;
        }
        PidfdFlags::from_bits_retain(bits)
    }
}

/// An open pidfd, with the pid it was opened for, or (before Linux 5.3) the
/// `/proc/PID` directory of that process.
#[derive(Debug)]
pub struct PidFd {
    handle: Handle,
    pid: Pid,
    flags: PidFdFlags,
}

/// What names the process.
#[derive(Debug)]
enum Handle {
    /// A real pidfd (`pidfd_open`, or checked by [`PidFd::from_owned`]).
    Pidfd(OwnedFd),
    /// [`PidFd::open_procfs`]: the `/proc/PID` directory and the start time that a
    /// reused pid would not share. Pidfd system calls reject it (`EBADF`).
    Procfs { dir: OwnedFd, start: u64 },
}

/// Identity and credentials of a process, from `PIDFD_GET_INFO` or `/proc`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProcessInfo {
    /// The id the pidfd was opened for (a thread id for thread pidfds).
    pub pid: Pid,
    /// The thread-group id, i.e. the process id.
    pub tgid: Pid,
    /// The parent's process id.
    pub ppid: Pid,
    /// real, effective, saved-set, filesystem
    pub uids: [u32; 4],
    /// real, effective, saved-set, filesystem
    pub gids: [u32; 4],
    /// The cgroup v2 id (the inode of the cgroup directory), when known.
    pub cgroup_id: Option<u64>,
    /// Where the answer came from: `"ioctl"` or `"procfs"`.
    pub source: &'static str,
}

impl PidFd {
    /// Opens a pidfd for process `pid` (a thread-group leader).
    ///
    /// Errors: `ESRCH` → [`Error::NoSuchProcess`]; `ENOSYS` → [`Error::Unsupported`].
    /// A `pid` that names a non-leader thread fails with `ENOENT`/`EINVAL` on current
    /// kernels; use [`PidFd::open_thread`] for those.
    pub fn open(pid: Pid) -> Result<Self> {
        Self::open_with(pid, PidFdFlags::default())
    }

    /// Opens a pidfd for one thread (`PIDFD_THREAD`, Linux 6.9). Seccomp
    /// notifications report thread ids, and a process whose leader has exited can
    /// only be reached through one of its remaining threads.
    pub fn open_thread(tid: Pid) -> Result<Self> {
        Self::open_with(
            tid,
            PidFdFlags {
                thread: true,
                nonblock: false,
            },
        )
    }

    /// Opens a pidfd with explicit flags.
    pub fn open_with(pid: Pid, flags: PidFdFlags) -> Result<Self> {
        if pid <= 0 {
            return Err(Error::InvalidArgument(format!(
                "pid {pid}: a process id must be a positive number"
            )));
        }
        let raw = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| Error::InvalidArgument(format!("pid {pid} is not valid")))?;
        match pidfd_open(raw, flags.to_rustix()) {
            Ok(fd) => {
                tracing::trace!(pid, thread = flags.thread, "pidfd_open");
                Ok(Self {
                    handle: Handle::Pidfd(fd),
                    pid,
                    flags,
                })
            }
            Err(e) => Err(open_error(pid, flags, e)),
        }
    }

    /// Opens a pidfd for a child we spawned. This cannot race with pid reuse: our
    /// unreaped child keeps its pid until we wait for it.
    pub fn from_child(child: &std::process::Child) -> Result<Self> {
        let pid = Pid::try_from(child.id()).map_err(|_| {
            Error::InvalidArgument(format!("child pid {} out of range", child.id()))
        })?;
        Self::open(pid)
    }

    /// Wraps an existing pidfd (for example one made by `clone3(CLONE_PIDFD)` or
    /// received from another process), after checking that it is one and that it
    /// names `pid`: `/proc/self/fdinfo/N` of a pidfd carries a `Pid:` line with the
    /// pid it refers to in our namespace. Whether it names a thread is read from
    /// its `PIDFD_THREAD` (`O_EXCL`) flag.
    ///
    /// Errors: [`Error::InvalidArgument`] for an fd that is not a pidfd or names
    /// another process; [`Error::NoSuchProcess`] when the process has exited
    /// (the kernel then shows `Pid: -1`, and `pid` cannot be confirmed).
    pub fn from_owned(fd: OwnedFd, pid: Pid) -> Result<Self> {
        let n = fd.as_raw_fd();
        let link = std::fs::read_link(format!("/proc/self/fd/{n}")).unwrap_or_default();
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{n}")).unwrap_or_default();
        let field = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        let named = field("Pid:").and_then(|v| v.parse::<Pid>().ok());
        let Some(named) = named.filter(|_| link.to_string_lossy().contains("pidfd")) else {
            return Err(Error::InvalidArgument(format!(
                "fd {n} ({}) is not a pidfd",
                link.display()
            )));
        };
        match named {
            p if p == pid => {}
            -1 | 0 => return Err(Error::NoSuchProcess { pid }),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "fd {n} is a pidfd for process {other}, not {pid}"
                )))
            }
        }
        let flags = field("flags:")
            .and_then(|f| u32::from_str_radix(&f, 8).ok())
            .unwrap_or(0);
        Ok(Self {
            handle: Handle::Pidfd(fd),
            pid,
            flags: PidFdFlags {
                thread: flags & PIDFD_THREAD != 0,
                nonblock: flags & libc::O_NONBLOCK as u32 != 0,
            },
        })
    }

    /// For kernels without `pidfd_open` (before 5.3): names process `pid` by its
    /// `/proc/PID` directory and its start time, which a reused pid would not share.
    /// Only what the ptrace backend needs works on such a handle: liveness, signals
    /// and [`PidFd::info`]; `pidfd_getfd` reports [`Error::Unsupported`].
    pub fn open_procfs(pid: Pid) -> Result<Self> {
        if pid <= 0 {
            return Err(Error::InvalidArgument(format!(
                "pid {pid}: a process id must be a positive number"
            )));
        }
        let dir = rustix::fs::open(
            format!("/proc/{pid}"),
            rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT | Errno::SRCH => Error::NoSuchProcess { pid },
            e => Error::io("open(/proc/PID)", pid, None, e),
        })?;
        let (_, start) = procfs::stat_state(pid).ok_or(Error::NoSuchProcess { pid })?;
        tracing::debug!(pid, start, "identified through /proc (no pidfd_open)");
        Ok(Self {
            handle: Handle::Procfs { dir, start },
            pid,
            flags: PidFdFlags::default(),
        })
    }

    /// Whether this is a [`PidFd::open_procfs`] handle rather than a real pidfd.
    pub fn is_procfs(&self) -> bool {
        matches!(self.handle, Handle::Procfs { .. })
    }

    /// The pidfd, for pidfd system calls; `None` for a [`PidFd::open_procfs`]
    /// handle, which has none.
    pub fn as_pidfd(&self) -> Option<BorrowedFd<'_>> {
        match &self.handle {
            Handle::Pidfd(fd) => Some(fd.as_fd()),
            Handle::Procfs { .. } => None,
        }
    }

    /// The pidfd to poll (or add to an epoll set) for the process's exit. A
    /// [`PidFd::open_procfs`] handle has none, and its `/proc` directory would poll
    /// readable at once, so it is refused as [`Error::Unsupported`].
    pub fn exit_fd(&self) -> Result<BorrowedFd<'_>> {
        self.as_pidfd().ok_or_else(|| Error::Unsupported {
            op: "poll(pidfd)",
            needs: "5.3",
            source: Errno::BADF.into(),
        })
    }

    /// The pid (or tid) this pidfd was opened for.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether this pidfd names a single thread.
    pub fn is_thread(&self) -> bool {
        self.flags.thread
    }

    /// `pidfd_send_signal(2)` (Linux 5.1). `sig` 0 checks existence and permission.
    pub fn send_signal(&self, sig: i32) -> Result<()> {
        if !(0..=libc::SIGRTMAX()).contains(&sig) {
            return Err(Error::InvalidArgument(format!(
                "signal {sig} is not a valid signal number"
            )));
        }
        let sent = match &self.handle {
            Handle::Pidfd(fd) => sys::pidfd_send_signal(fd, sig),
            Handle::Procfs { .. } if !self.is_alive() => Err(Errno::SRCH),
            Handle::Procfs { .. } => sys::kill(self.pid, sig),
        };
        sent.map_err(|e| match e {
            Errno::SRCH => Error::NoSuchProcess { pid: self.pid },
            Errno::PERM => Error::PermissionDenied {
                pid: self.pid,
                fd: None,
                op: "pidfd_send_signal",
                hint: "the target runs as another user and we lack CAP_KILL".into(),
            },
            Errno::NOSYS => Error::Unsupported {
                op: "pidfd_send_signal",
                needs: "5.1",
                source: e.into(),
            },
            e => Error::io("pidfd_send_signal", self.pid, None, e),
        })
    }

    /// Whether the process is still running (has not exited). A pidfd polls
    /// readable once the process exits, whether or not it was reaped.
    pub fn is_alive(&self) -> bool {
        if let Handle::Procfs { start, .. } = self.handle {
            return procfs::alive_since(self.pid, start);
        }
        matches!(self.wait_exit(Some(Duration::ZERO)), Ok(false))
    }

    /// Waits until the process exits, for at most `timeout` (forever with `None`).
    /// Returns `true` if it exited. Works for any process, not only our children.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let Handle::Pidfd(fd) = &self.handle else {
            // No pidfd to poll: look every few milliseconds.
            loop {
                if !self.is_alive() {
                    return Ok(true);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        loop {
            let ts = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    Some(Timespec {
                        tv_sec: left.as_secs() as _,
                        tv_nsec: left.subsec_nanos() as _,
                    })
                }
            };
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            match poll(&mut fds, ts.as_ref()) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(Error::io("poll(pidfd)", self.pid, None, e)),
            }
        }
    }

    /// Reaps our child through the pidfd (`waitid(P_PIDFD)`, Linux 5.4) and returns
    /// its wait status. Only valid for children of the calling process.
    pub fn wait_child(&self) -> Result<std::process::ExitStatus> {
        use rustix::process::{waitid, WaitId, WaitIdOptions};
        use std::os::unix::process::ExitStatusExt;
        loop {
            let id = match &self.handle {
                Handle::Pidfd(fd) => WaitId::PidFd(fd.as_fd()),
                Handle::Procfs { .. } => WaitId::Pid(
                    rustix::process::Pid::from_raw(self.pid)
                        .ok_or(Error::NoSuchProcess { pid: self.pid })?,
                ),
            };
            match waitid(id, WaitIdOptions::EXITED) {
                Ok(Some(st)) => {
                    let raw = if let Some(code) = st.exit_status() {
                        (code & 0xff) << 8
                    } else if let Some(sig) = st.terminating_signal() {
                        sig & 0x7f
                    } else {
                        0
                    };
                    return Ok(std::process::ExitStatus::from_raw(raw));
                }
                Ok(None) => continue,
                Err(Errno::INTR) => continue,
                Err(Errno::CHILD) => return Err(Error::NoSuchProcess { pid: self.pid }),
                Err(e) => return Err(Error::io("waitid(P_PIDFD)", self.pid, None, e)),
            }
        }
    }

    /// Identity and credentials through `PIDFD_GET_INFO` (Linux 6.13), falling back to
    /// `/proc/PID/status` on older kernels. The fallback re-checks the pidfd after
    /// reading, so a recycled pid cannot make it report another process.
    pub fn info(&self) -> Result<ProcessInfo> {
        let Handle::Pidfd(fd) = &self.handle else {
            return self.info_from_proc();
        };
        let mask = sys::PIDFD_INFO_PID | sys::PIDFD_INFO_CREDS | sys::PIDFD_INFO_CGROUPID;
        match sys::pidfd_get_info(fd, mask) {
            Ok(i) => Ok(ProcessInfo {
                pid: i.pid as Pid,
                tgid: i.tgid as Pid,
                ppid: i.ppid as Pid,
                uids: [i.ruid, i.euid, i.suid, i.fsuid],
                gids: [i.rgid, i.egid, i.sgid, i.fsgid],
                cgroup_id: (i.mask & sys::PIDFD_INFO_CGROUPID != 0).then_some(i.cgroupid),
                source: "ioctl",
            }),
            Err(Errno::SRCH) => Err(Error::NoSuchProcess { pid: self.pid }),
            Err(Errno::NOTTY) | Err(Errno::INVAL) => {
                tracing::debug!(pid = self.pid, "PIDFD_GET_INFO unavailable, reading /proc");
                self.info_from_proc()
            }
            Err(e) => Err(Error::io("ioctl(PIDFD_GET_INFO)", self.pid, None, e)),
        }
    }

    fn info_from_proc(&self) -> Result<ProcessInfo> {
        let st = procfs::status(self.pid).map_err(|_| Error::NoSuchProcess { pid: self.pid })?;
        let cgroup_id = procfs::cgroup_id(self.pid);
        if !self.is_alive() {
            return Err(Error::NoSuchProcess { pid: self.pid });
        }
        let missing = || Error::NoSuchProcess { pid: self.pid };
        Ok(ProcessInfo {
            pid: self.pid,
            tgid: st.tgid.ok_or_else(missing)?,
            ppid: st.ppid.ok_or_else(missing)?,
            uids: st.uids.ok_or_else(missing)?,
            gids: st.gids.ok_or_else(missing)?,
            cgroup_id,
            source: "procfs",
        })
    }
}

fn open_error(pid: Pid, flags: PidFdFlags, e: Errno) -> Error {
    match e {
        Errno::SRCH => Error::NoSuchProcess { pid },
        Errno::NOSYS => Error::Unsupported {
            op: "pidfd_open",
            needs: "5.3",
            source: e.into(),
        },
        // A non-leader tid without PIDFD_THREAD: ENOENT on 6.9+, EINVAL before.
        Errno::NOENT | Errno::INVAL if !flags.thread => Error::InvalidArgument(format!(
            "pid {pid} is a thread, not a process; open it as a thread"
        )),
        Errno::INVAL => Error::Unsupported {
            op: "pidfd_open(PIDFD_THREAD)",
            needs: "6.9",
            source: e.into(),
        },
        Errno::MFILE | Errno::NFILE => Error::io("pidfd_open", pid, None, e),
        e => Error::io("pidfd_open", pid, None, e),
    }
}

impl From<PidFd> for OwnedFd {
    fn from(p: PidFd) -> OwnedFd {
        match p.handle {
            Handle::Pidfd(fd) | Handle::Procfs { dir: fd, .. } => fd,
        }
    }
}
