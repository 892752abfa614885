//! Planning the single-process move: one process, alone, onto a new pty.

use super::{terminal_of, Pty};
use crate::error::{Error, Result};
use crate::inject::CttyChange;
use crate::{Pid, TargetFd};
use std::fs;

/// What [`crate::inject::take_terminal`] must do to move one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SingleMove {
    /// The process to move.
    pub pid: Pid,
    /// The terminal it leaves.
    pub old: Pty,
    /// How its controlling terminal is changed.
    pub change: CttyChange,
    /// Its fds open on the old terminal: each gets the new slave.
    pub fds: Vec<TargetFd>,
    /// Other processes still on the old terminal (its session, or fds there):
    /// they stay behind.
    pub left_behind: Vec<Pid>,
}

/// `(pgrp, session, tty_nr, tpgid)` of `/proc/PID/stat`.
fn ids(pid: Pid) -> Option<(Pid, Pid, i64, Pid)> {
    crate::procfs::parse_stat_ids(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process's `(pid, pgrp, session)`.
fn all_ids() -> Vec<(Pid, Pid, Pid)> {
    crate::procfs::pids()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| ids(p).map(|(g, s, _, _)| (p, g, s)))
        .collect()
}

fn refuse(pid: Pid, why: String) -> Error {
    Error::InvalidArgument(format!(
        "process {pid} cannot be moved alone onto a new terminal: {why}"
    ))
}

/// Works out how `pid` can be moved alone off its pty, or why it cannot. Nothing is
/// changed.
///
/// Refused: a process whose process group would keep other members in the way
/// (`setsid` needs the group named after it to be empty), and a session leader
/// whose dropping of the old terminal would send `SIGHUP` to processes other than
/// itself (its terminal's foreground group holds others).
pub fn plan_single_move(pid: Pid) -> Result<SingleMove> {
    let old = terminal_of(pid)?.ok_or_else(|| refuse(pid, "it is not on a pty".into()))?;
    let (pgrp, sid, tty_nr, tpgid) = ids(pid).ok_or(Error::NoSuchProcess { pid })?;
    let everyone = all_ids();
    let others_in = |group: Pid| -> Vec<Pid> {
        everyone
            .iter()
            .filter(|&&(p, g, _)| g == group && p != pid)
            .map(|&(p, _, _)| p)
            .collect()
    };
    let change = if pid == sid {
        if tty_nr != 0 {
            if tpgid > 0 && tpgid != pgrp {
                return Err(refuse(
                    pid,
                    format!(
                        "it leads its session, and dropping the old terminal would hang up the \
                         foreground job there (process group {tpgid})"
                    ),
                ));
            }
            let others = others_in(pgrp);
            if tpgid == pgrp && !others.is_empty() {
                return Err(refuse(
                    pid,
                    format!(
                        "it leads its session, and dropping the old terminal would send SIGHUP to \
                         the other members of its process group ({others:?})"
                    ),
                ));
            }
            CttyChange::LeaderWithTty
        } else {
            CttyChange::LeaderWithoutTty
        }
    } else {
        let join = if pgrp == pid {
            let target_group = everyone
                .iter()
                .filter(|&&(_, g, s)| s == sid && g != pid)
                .map(|&(_, g, _)| g)
                .min_by_key(|&g| (g != sid, g));
            match target_group {
                Some(g) => Some(g),
                None => {
                    return Err(refuse(
                        pid,
                        format!(
                            "it leads process group {pid}, and its session {sid} has no other \
                             group to step into before setsid"
                        ),
                    ))
                }
            }
        } else {
            None
        };
        let others = others_in(pid);
        if !others.is_empty() {
            return Err(refuse(
                pid,
                format!(
                    "other processes ({others:?}) are in the process group named after it, so \
                     setsid would fail"
                ),
            ));
        }
        CttyChange::Member { join }
    };
    let mut fds = Vec::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let on_old = e.path().to_str().and_then(Pty::of_path) == Some(old);
            if let (true, Some(fd)) = (on_old, TargetFd::new(n)) {
                fds.push(fd);
            }
        }
    }
    fds.sort_unstable();
    let left_behind = everyone
        .iter()
        .filter(|&&(p, _, s)| p != pid && s == sid)
        .map(|&(p, _, _)| p)
        .collect();
    Ok(SingleMove {
        pid,
        old,
        change,
        fds,
        left_behind,
    })
}

/// Copies the terminal modes of `from` (opened by path, `O_NOCTTY`) to `to`, so
/// a program that set them once (raw mode, no echo) finds them again. `false` if
/// `from` could not be read (e.g. hung up).
pub fn copy_modes(from: Pty, to: impl std::os::fd::AsFd) -> bool {
    use rustix::fs::{Mode, OFlags};
    let Ok(old) = rustix::fs::open(
        format!("/dev/pts/{}", from.index()),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let Ok(modes) = rustix::termios::tcgetattr(&old) else {
        return false;
    };
    rustix::termios::tcsetattr(to, rustix::termios::OptionalActions::Now, &modes).is_ok()
}
