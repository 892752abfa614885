//! May fdgrab act on this process, and is this copy really the target's fd?
//!
//! Everything here only looks: `/proc` files, `kcmp(2)`, and an `O_RDONLY` open of
//! `/proc/PID/mem`. [`crate::grab::Preflight`] runs these checks before a command's
//! first side effect. The ptrace engine and [`crate::grab`] both use the permission
//! hint and the identity check from here, which keeps them from importing each other.

use crate::error::{Error, Result};
use crate::pidfd::PidFd;
use crate::{procfs, sys, Pid, TargetFd};
use rustix::io::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// Refuses a traced thread (`PTRACE_SEIZE` would fail, and a debugger is looking at
/// it) and runs the attach-mode access check without attaching.
pub(crate) fn check_attach(target: &PidFd, tid: Pid) -> Result<()> {
    let pid = target.pid();
    let me = rustix::process::getpid().as_raw_nonzero().get();
    if let Some(tracer) = procfs::task_status(pid, tid)
        .ok()
        .and_then(|s| s.tracer_pid)
        .filter(|&t| t != 0 && t != me)
    {
        return Err(Error::PermissionDenied {
            pid,
            fd: None,
            op: "ptrace(PTRACE_SEIZE)",
            hint: format!(
                "thread {tid} is already traced by process {tracer} (a debugger or strace?); \
                 fdgrab would have to stop it, which only one tracer may do"
            ),
        });
    }
    match rustix::fs::open(
        // The thread's own entry: a zombie leader has no memory to check against.
        format!("/proc/{pid}/task/{tid}/mem"),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(_) => Ok(()),
        Err(Errno::PERM | Errno::ACCESS) => Err(Error::PermissionDenied {
            pid,
            fd: None,
            op: "ptrace access check (open /proc/PID/mem)",
            hint: permission_hint(pid),
        }),
        Err(Errno::NOENT | Errno::SRCH) => Err(Error::NoSuchProcess { pid }),
        Err(e) => Err(Error::io("open(/proc/PID/mem)", pid, None, e)),
    }
}

/// Whether `fd` is open in the table of thread `owner`.
pub(crate) fn fd_is_open(target: &PidFd, owner: Pid, fd: TargetFd) -> Result<()> {
    let pid = target.pid();
    match rustix::fs::readlink(format!("/proc/{pid}/task/{owner}/fd/{fd}"), Vec::new()) {
        Ok(_) => Ok(()),
        Err(Errno::NOENT) if target.is_alive() => Err(Error::NoSuchFd { pid, fd }),
        Err(Errno::NOENT | Errno::SRCH) => Err(Error::NoSuchProcess { pid }),
        Err(Errno::PERM | Errno::ACCESS) => Err(Error::PermissionDenied {
            pid,
            fd: Some(fd),
            // The kernel guards /proc/PID/fd with a ptrace access check (read
            // mode): uids, dumpability and LSMs decide (Yama restricts only attaching).
            op: "reading /proc/PID/fd (a ptrace access check)",
            hint: permission_hint(pid),
        }),
        Err(e) => Err(Error::io("readlink(/proc/PID/fd/N)", pid, Some(fd), e)),
    }
}

/// The thread whose view of the fd table to use: the leader, unless it has exited
/// (a zombie leader with live threads), then the first live thread.
pub(crate) fn fd_table_owner(target: &PidFd) -> Result<Pid> {
    fd_table_owner_given(target, None)
}

/// [`fd_table_owner`] for a caller that has just read whether the leader is alive
/// (`leader_alive`), so that its `stat` is not read a second time.
pub(crate) fn fd_table_owner_given(target: &PidFd, leader_alive: Option<bool>) -> Result<Pid> {
    let pid = target.pid();
    if !target.is_alive() {
        return Err(Error::NoSuchProcess { pid });
    }
    if target.is_thread() || leader_alive.unwrap_or_else(|| procfs::thread_alive(pid, pid)) {
        return Ok(pid);
    }
    let tids = procfs::tasks(pid).map_err(|_| Error::NoSuchProcess { pid })?;
    tids.into_iter()
        .find(|&t| t != pid && procfs::thread_alive(pid, t))
        .ok_or(Error::NoSuchProcess { pid })
}

/// [`fd_table_owner`] and that thread's `status`, read once when the leader is
/// alive (its `State` line tells, where [`fd_table_owner`] reads `stat`).
pub(crate) fn fd_table_owner_status(target: &PidFd) -> Result<(Pid, procfs::Status)> {
    let pid = target.pid();
    if !target.is_alive() {
        return Err(Error::NoSuchProcess { pid });
    }
    if let Ok(st) = procfs::task_status(pid, pid) {
        if target.is_thread() || st.state.is_some_and(|s| !matches!(s, 'Z' | 'X')) {
            return Ok((pid, st));
        }
    }
    let tid = fd_table_owner(target)?;
    let st = procfs::task_status(pid, tid).map_err(|_| Error::NoSuchProcess { pid })?;
    Ok((tid, st))
}

/// Works out the most likely reason the ptrace access check (`PTRACE_MODE_ATTACH_REALCREDS`)
/// refused us, so the user is not left guessing between uid, dumpability, Yama and LSMs.
pub(crate) fn permission_hint(pid: Pid) -> String {
    use std::os::unix::fs::MetadataExt;
    let our_uid = rustix::process::getuid().as_raw();
    let our_euid = rustix::process::geteuid().as_raw();
    let mut causes = Vec::new();
    let status = procfs::status(pid).ok();
    if let Some(uids) = status.as_ref().and_then(|s| s.uids) {
        if our_euid != 0 && uids.iter().any(|&u| u != our_uid) {
            causes.push(format!(
                "the target runs as uid {} (real/effective/saved {}/{}/{}) and fdgrab as uid {our_uid}; \
                 taking fds needs the same uids or CAP_SYS_PTRACE",
                uids[1], uids[0], uids[1], uids[2]
            ));
        }
        // The files inside /proc/PID of a non-dumpable process are owned by root,
        // whatever its uid.
        if let Ok(meta) = std::fs::metadata(format!("/proc/{pid}/status")) {
            if meta.uid() == 0 && uids[1] != 0 && our_euid != 0 {
                causes.push(
                    "the target is not dumpable (set-uid/set-gid exec, or prctl(PR_SET_DUMPABLE, 0))"
                        .into(),
                );
            }
        }
    }
    match procfs::yama_ptrace_scope() {
        Some(1) if our_euid != 0 => causes.push(
            "Yama ptrace_scope is 1: only descendants can be accessed without CAP_SYS_PTRACE"
                .into(),
        ),
        Some(2) => causes
            .push("Yama ptrace_scope is 2: only CAP_SYS_PTRACE may access other processes".into()),
        Some(3) => {
            causes.push("Yama ptrace_scope is 3: process access is disabled for everyone".into())
        }
        _ => {}
    }
    if causes.is_empty() {
        let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
        let lsm = lsm.trim();
        format!(
            "possible causes: another uid, a non-dumpable target, Yama's ptrace_scope, or an LSM \
             policy{}",
            if lsm.is_empty() {
                String::new()
            } else {
                format!(" (active LSMs: {lsm})")
            }
        )
    } else {
        causes.join("; ")
    }
}

/// Checks that `ours` and the target's `fd` are the same open file description.
///
/// With `kcmp(KCMP_FILE)` (`CONFIG_KCMP`, and allowed to us) the answer is exact: the
/// same *open* (shared offset and flags), which implies the same device and inode.
/// Without it, the device and inode numbers are compared (`stat` of
/// `/proc/PID/task/TID/fd/N` against `fstat`), which proves the same file only. The
/// table is reached through a live thread, so a process whose leader has exited is
/// checked too.
pub fn same_file(target: &PidFd, fd: TargetFd, ours: BorrowedFd<'_>) -> Result<bool> {
    same_file_cached(target, &mut None, fd, ours)
}

/// [`same_file`] that asks about the process's own id first, so the common case
/// costs one `kcmp`. Only a process whose leader has exited (its table reachable
/// through another thread) needs a live thread looked up in `/proc`; that thread is
/// kept in `owner` for the next fds.
pub(crate) fn same_file_cached(
    target: &PidFd,
    owner: &mut Option<Pid>,
    fd: TargetFd,
    ours: BorrowedFd<'_>,
) -> Result<bool> {
    if let Some(tid) = *owner {
        return same_file_in(target, tid, fd, ours);
    }
    match same_file_in(target, target.pid(), fd, ours) {
        Err(Error::NoSuchFd { .. }) | Err(Error::NoSuchProcess { .. }) => {
            let tid = fd_table_owner(target)?;
            *owner = Some(tid);
            same_file_in(target, tid, fd, ours)
        }
        r => r,
    }
}

/// [`same_file`] with the thread that owns the fd table already chosen.
fn same_file_in(target: &PidFd, owner: Pid, fd: TargetFd, ours: BorrowedFd<'_>) -> Result<bool> {
    let pid = target.pid();
    let me = rustix::process::getpid().as_raw_nonzero().get();
    match sys::kcmp_file(owner, fd.as_raw(), me, ours.as_raw_fd()) {
        Ok(same) => return Ok(same),
        Err(Errno::NOSYS) | Err(Errno::PERM) | Err(Errno::ACCESS) => {}
        Err(Errno::BADF) => return Err(Error::NoSuchFd { pid, fd }),
        Err(Errno::SRCH) => return Err(Error::NoSuchProcess { pid }),
        Err(e) => return Err(Error::io("kcmp", pid, Some(fd), e)),
    }
    let theirs = fd_stat(target, owner, fd)?;
    let mine = crate::statx::cached(ours.as_fd()).map_err(|e| Error::local("stat", e))?;
    Ok((theirs.dev, theirs.ino) == (mine.dev, mine.ino))
}

/// What can be checked about a target's fd from outside, without a copy of it: the
/// file (device and inode, as `stat` of `/proc/PID/fd/N` reports them), the mount,
/// and the fd's close-on-exec flag, plus the process's start time, which a reused
/// pid would not share. Used to recognise an fd later, when no copy of ours is
/// left to `kcmp` against.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FdIdentity {
    /// Start of the process, in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start: u64,
    /// The device of the descriptor's inode (`st_dev`).
    pub dev: u64,
    /// The inode number (`st_ino`).
    pub ino: u64,
    /// `mnt_id` from `/proc/PID/fdinfo/N`.
    pub mnt_id: u64,
    /// `O_CLOEXEC` is set in the fd's flags.
    pub cloexec: bool,
}

/// Reads the [`FdIdentity`] of the target's `fd`.
pub fn fd_identity(target: &PidFd, fd: TargetFd) -> Result<FdIdentity> {
    let pid = target.pid();
    let owner = fd_table_owner(target)?;
    let (_, start) = procfs::stat_state(pid).ok_or(Error::NoSuchProcess { pid })?;
    let st = fd_stat(target, owner, fd)?;
    let info =
        std::fs::read_to_string(format!("/proc/{pid}/task/{owner}/fdinfo/{fd}")).map_err(|e| {
            Error::Io {
                op: "reading /proc/PID/fdinfo/N",
                pid,
                fd: Some(fd),
                source: e,
            }
        })?;
    let field = |key: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or("")
    };
    let flags = u64::from_str_radix(field("flags:"), 8).unwrap_or(0);
    Ok(FdIdentity {
        start,
        dev: st.dev,
        ino: st.ino,
        mnt_id: field("mnt_id:").parse().unwrap_or(0),
        cloexec: flags & libc::O_CLOEXEC as u64 != 0,
    })
}

/// `stat` of the target's `fd`, read through thread `owner` (see [`fd_table_owner`]).
/// The one place that maps its errors: `ENOENT` is a closed fd while the process
/// lives, and a gone process after.
/// The attributes are the kernel's cached ones ([`crate::statx`]): the target's
/// file server is never waited for.
pub(crate) fn fd_stat(target: &PidFd, owner: Pid, fd: TargetFd) -> Result<crate::statx::Attrs> {
    let pid = target.pid();
    let path = format!("/proc/{pid}/task/{owner}/fd/{fd}");
    crate::statx::cached_at(rustix::fs::CWD, path.as_str()).map_err(|e| match e {
        Errno::NOENT if target.is_alive() => Error::NoSuchFd { pid, fd },
        Errno::NOENT | Errno::SRCH => Error::NoSuchProcess { pid },
        e => Error::io("stat(/proc/PID/fd/N)", pid, Some(fd), e),
    })
}

/// When process `pid` started (clock ticks after boot, `/proc/PID/stat` field 22), or
/// `None` if there is no such process. With the pid it names one process for good.
pub fn process_start(pid: Pid) -> Option<u64> {
    procfs::stat_state(pid).map(|(_, start)| start)
}
