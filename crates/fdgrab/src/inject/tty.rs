//! Moving one process onto a new terminal from inside it (the single-process mode
//! of `fdgrab attach`, for when the terminal's master cannot be taken).
//!
//! The kernel lets a process acquire a controlling terminal (`TIOCSCTTY`) only as
//! the leader of a session that has none. So, depending on where the target is:
//! - a session leader with a controlling tty drops it first (`TIOCNOTTY` on
//!   `/dev/tty`). That sends `SIGHUP` and `SIGCONT` to the old terminal's foreground
//!   process group; the target ignores `SIGHUP` meanwhile (and the queued one is
//!   discarded by setting `SIG_IGN` again before its own action is put back);
//! - a session leader without one (its terminal was hung up) just acquires;
//! - any other process starts a session of its own with `setsid`, which fails for
//!   a process-group leader: it first joins another process group of its session
//!   (`setpgid`), and `setsid` then needs that no process is left in the group
//!   named after it.
//!
//! Then the new slave is `dup3`ed over every fd that was on the old terminal.

use super::{open_channel, receive_from_us, remote_error, with_session, SeccompPolicy, Session};
use crate::error::{Error, Result};
use crate::pidfd::PidFd;
use crate::{Pid, TargetFd};
use std::os::fd::BorrowedFd;

/// What the target must do to make the new terminal its controlling terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CttyChange {
    /// It leads its session, which has a controlling terminal: `TIOCNOTTY`, then
    /// `TIOCSCTTY`.
    LeaderWithTty,
    /// It leads its session, which has none (hung up): `TIOCSCTTY`.
    LeaderWithoutTty,
    /// It is not a session leader: `setpgid(0, join)` first when it leads its process
    /// group, then `setsid`, then `TIOCSCTTY`.
    Member {
        /// The process group to join first (`setpgid`), when it leads its own.
        join: Option<Pid>,
    },
}

/// Makes `slave` (one of our descriptors, a pty slave) the controlling terminal of
/// `target` as `change` says, and installs it over each of `fds` (`dup3`, keeping
/// each number's close-on-exec flag), all in one injection session.
pub fn take_terminal(
    target: &PidFd,
    slave: BorrowedFd<'_>,
    change: CttyChange,
    fds: &[TargetFd],
) -> Result<()> {
    // Checked against the target's seccomp filters before anything runs (the
    // terminal calls too, as far as their arguments are known); the rest are checked
    // one by one just before they run.
    let mut plan = Vec::new();
    for &fd in fds {
        super::receive_and_install_calls(&mut plan, fd);
    }
    plan.push(super::seccomp::Planned::new(
        libc::SYS_ioctl,
        &[
            super::seccomp::UNKNOWN,
            super::seccomp::k(TIOCSCTTY),
            super::seccomp::k(0),
        ],
    ));
    with_session(target, SeccompPolicy::default(), &plan, |s| {
        let ch = open_channel(s)?;
        let theirs = receive_from_us(s, &ch, slave)?;
        // The old terminal, still open in the target while it has none: what puts
        // it back should the new one be refused.
        let old = match change {
            CttyChange::LeaderWithTty => Some(drop_ctty_ignoring_hup(s)?),
            CttyChange::LeaderWithoutTty => None,
            CttyChange::Member { join } => {
                new_session(s, join)?;
                None
            }
        };
        let r = s.syscall(libc::SYS_ioctl, &[theirs as u64, TIOCSCTTY, 0])?;
        if r < 0 {
            let restored = match old {
                Some(fd) => s
                    .syscall(libc::SYS_ioctl, &[fd as u64, TIOCSCTTY, 0])
                    .is_ok_and(|r| r == 0),
                None => false,
            };
            tracing::warn!(
                pid = s.pid(),
                restored,
                "TIOCSCTTY on the new terminal refused"
            );
            return Err(remote_error(
                s.pid(),
                None,
                if restored {
                    "ioctl(TIOCSCTTY) on the new terminal (injected; the old terminal was made \
                     its controlling terminal again)"
                } else {
                    "ioctl(TIOCSCTTY) on the new terminal (injected)"
                },
                r,
            ));
        }
        if let Some(fd) = old {
            s.close_remote(fd)?;
        }
        for &fd in fds {
            super::install(s, theirs, fd)?;
        }
        tracing::debug!(pid = s.pid(), ?change, ?fds, "moved onto a new terminal");
        Ok(())
    })
}

/// `struct sigaction` as the kernel takes it: handler first, all else zero here
/// (no flags, empty mask); big enough for every layout's old action.
const SIGACTION_SIZE: usize = 32;

// The injected ioctl's request numbers as the syscall takes them: the C libraries
// type the constants differently (glibc `unsigned long`, musl `int`).
const TIOCSCTTY: u64 = libc::TIOCSCTTY as _;
const TIOCNOTTY: u64 = libc::TIOCNOTTY as _;

fn sigaction(s: &mut Session<'_>, sig: i32, new: u64, old: u64) -> Result<()> {
    let r = s.syscall(libc::SYS_rt_sigaction, &[sig as u64, new, old, 8])?;
    if r < 0 {
        return Err(remote_error(s.pid(), None, "rt_sigaction (injected)", r));
    }
    Ok(())
}

/// Drops the target's controlling terminal; returns the fd (in the target) of the
/// old terminal, still open there and closed with the session unless kept.
fn drop_ctty_ignoring_hup(s: &mut Session<'_>) -> Result<i32> {
    let pid = s.pid();
    s.reset_scratch();
    let mut ign = vec![0u8; SIGACTION_SIZE];
    ign[..8].copy_from_slice(&(libc::SIG_IGN as u64).to_ne_bytes());
    let mut st = s.stage()?;
    let ign = st.put(&ign);
    let old = st.put(&[0u8; SIGACTION_SIZE]);
    let path = st.put(b"/dev/tty\0");
    s.push_staged(st)?;
    sigaction(s, libc::SIGHUP, ign, old)?;
    let result = (|| {
        let flags = (libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        let fd = s.syscall(libc::SYS_openat, &[libc::AT_FDCWD as u64, path, flags, 0])?;
        if fd < 0 {
            return Err(remote_error(
                pid,
                None,
                "open /dev/tty, the old controlling terminal (injected)",
                fd,
            ));
        }
        s.track_remote_fd(fd as i32);
        let r = s.syscall(libc::SYS_ioctl, &[fd as u64, TIOCNOTTY, 0])?;
        if r < 0 {
            return Err(remote_error(
                pid,
                None,
                "ioctl(TIOCNOTTY) on the old terminal (injected)",
                r,
            ));
        }
        Ok(fd as i32)
    })();
    // Setting SIG_IGN again discards the SIGHUP that TIOCNOTTY queued while the
    // session keeps signals blocked; then the target's own action comes back.
    let again = sigaction(s, libc::SIGHUP, ign, 0);
    let back = sigaction(s, libc::SIGHUP, old, 0);
    let fd = result?;
    again.and(back)?;
    Ok(fd)
}

fn new_session(s: &mut Session<'_>, join: Option<Pid>) -> Result<()> {
    let pid = s.pid();
    if let Some(group) = join {
        let r = s.syscall(libc::SYS_setpgid, &[0, group as u64])?;
        if r < 0 {
            return Err(Error::io(
                "setpgid into another process group of its session (injected)",
                pid,
                None,
                rustix::io::Errno::from_raw_os_error((-r) as i32),
            ));
        }
    }
    let r = s.syscall(libc::SYS_setsid, &[])?;
    if r < 0 {
        if join.is_some() {
            // Back into a group of its own, as before.
            let _ = s.syscall(libc::SYS_setpgid, &[0, 0]);
        }
        return Err(Error::io(
            "setsid (injected; another process is still in the process group named after it?)",
            pid,
            None,
            rustix::io::Errno::from_raw_os_error((-r) as i32),
        ));
    }
    Ok(())
}
