//! Small readers for `/proc` files. They fall back gracefully: `/proc` is the slow
//! path behind ioctls and syscalls, and a missing field is not worth failing over.

use crate::Pid;
use std::fs;

/// Fields of `/proc/PID/status` that we use.
#[derive(Debug, Default, Clone)]
pub(crate) struct Status {
    pub tgid: Option<Pid>,
    pub ppid: Option<Pid>,
    /// real, effective, saved, fs
    pub uids: Option<[u32; 4]>,
    pub gids: Option<[u32; 4]>,
    /// The process (thread) tracing this one; 0 when none.
    pub tracer_pid: Option<Pid>,
    /// `Seccomp`: 0 none, 1 strict, 2 filter (per thread).
    pub seccomp: Option<u8>,
    /// `CapEff`: the effective capability set.
    pub cap_eff: Option<u64>,
    /// `SigIgn`: the signals the process ignores.
    pub sig_ign: Option<u64>,
}

pub(crate) fn status(pid: Pid) -> std::io::Result<Status> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status"))?)
}

/// `/proc/PID/task/TID/status`: what differs per thread (the tracer, above all).
pub(crate) fn task_status(pid: Pid, tid: Pid) -> std::io::Result<Status> {
    parse_status(&fs::read_to_string(format!(
        "/proc/{pid}/task/{tid}/status"
    ))?)
}

/// `/proc/thread-self/status`: the calling thread's (our seccomp mode is per thread).
pub(crate) fn own_thread_status() -> std::io::Result<Status> {
    parse_status(&fs::read_to_string("/proc/thread-self/status")?)
}

pub(crate) fn parse_status(text: &str) -> std::io::Result<Status> {
    let mut st = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Tgid" => st.tgid = value.parse().ok(),
            "PPid" => st.ppid = value.parse().ok(),
            "Uid" => st.uids = parse4(value),
            "Gid" => st.gids = parse4(value),
            "TracerPid" => st.tracer_pid = value.parse().ok(),
            "Seccomp" => st.seccomp = value.parse().ok(),
            "CapEff" => st.cap_eff = u64::from_str_radix(value, 16).ok(),
            "SigIgn" => st.sig_ign = u64::from_str_radix(value, 16).ok(),
            _ => {}
        }
    }
    Ok(st)
}

fn parse4(value: &str) -> Option<[u32; 4]> {
    let mut it = value.split_whitespace().map(|v| v.parse::<u32>());
    Some([
        it.next()?.ok()?,
        it.next()?.ok()?,
        it.next()?.ok()?,
        it.next()?.ok()?,
    ])
}

/// Every process id listed in `/proc` (one per thread group: `/proc` names no
/// other threads), ascending. Non-numeric entries (`self`, `sys`, ...) are skipped
/// without being copied: one `getdents64` buffer serves the whole listing.
pub fn pids() -> std::io::Result<Vec<Pid>> {
    use rustix::fs::{Mode, OFlags, RawDir};
    use std::mem::MaybeUninit;
    let dir = rustix::fs::openat(
        rustix::fs::CWD,
        "/proc",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 16 * 1024];
    let mut entries = RawDir::new(&dir, &mut buf);
    let mut out = Vec::new();
    while let Some(entry) = entries.next() {
        if let Some(pid) = numeric_name(entry?.file_name().to_bytes()) {
            out.push(pid);
        }
    }
    // `/proc` lists in pid order today; sorting keeps the promise if that changes.
    out.sort_unstable();
    Ok(out)
}

/// The positive number a `/proc` entry name spells, digits only (no sign, no
/// spaces), or `None`.
fn numeric_name(name: &[u8]) -> Option<Pid> {
    if name.is_empty() || name.len() > 10 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = name
        .iter()
        .fold(0_u64, |n, &d| n * 10 + u64::from(d - b'0'));
    Pid::try_from(n).ok().filter(|&p| p > 0)
}

/// The thread ids of a process, from `/proc/PID/task`.
pub(crate) fn tasks(pid: Pid) -> std::io::Result<Vec<Pid>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(tid);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// `/proc/sys/kernel/yama/ptrace_scope`, when Yama is built in.
pub(crate) fn yama_ptrace_scope() -> Option<u32> {
    fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The cgroup v2 id of a process: the inode number of its cgroup directory.
pub(crate) fn cgroup_id(pid: Pid) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    fs::metadata(format!("/sys/fs/cgroup{path}"))
        .ok()
        .map(|m| m.ino())
}

/// The state letter and start time (clock ticks after boot) of `/proc/PID/stat`.
pub(crate) fn stat_state(pid: Pid) -> Option<(char, u64)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether thread `tid` of process `pid` exists and has not exited (is neither a
/// zombie nor dead).
pub(crate) fn thread_alive(pid: Pid, tid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

pub(crate) fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name is in parentheses and may contain anything; fields follow
    // the last ')': state is field 3 and starttime field 22 of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// `(pgrp, session, tty_nr, tpgid)` of the text of `/proc/PID/stat`: fields 5-8,
/// counted after the command name's last `)` as `parse_stat` does.
pub(crate) fn parse_stat_ids(stat: &str) -> Option<(Pid, Pid, i64, Pid)> {
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(2);
    let pgrp = f.next()?.parse().ok()?;
    let sid = f.next()?.parse().ok()?;
    let tty = f.next()?.parse().ok()?;
    let tpgid = f.next()?.parse().ok()?;
    Some((pgrp, sid, tty, tpgid))
}

/// Whether `pid` is still the process that started at `start` and has not exited.
/// A zombie leader counts as alive while another of its threads runs.
pub(crate) fn alive_since(pid: Pid, start: u64) -> bool {
    match stat_state(pid) {
        Some((_, s)) if s != start => false,
        Some(('Z' | 'X', _)) => tasks(pid).map(|t| t.len() > 1).unwrap_or(false),
        Some(_) => true,
        None => false,
    }
}

/// Whether fd `fd` of thread `tid` of `pid` is an io_uring instance (its
/// `/proc/PID/task/TID/fd/N` link reads `anon_inode:[io_uring]`).
pub(crate) fn is_io_uring(pid: Pid, tid: Pid, fd: i32) -> bool {
    fs::read_link(format!("/proc/{pid}/task/{tid}/fd/{fd}"))
        .is_ok_and(|l| l.as_os_str() == "anon_inode:[io_uring]")
}

/// `/proc/PID/task/TID/maps`: a thread's view, which still works once the leader
/// has exited (`/proc/PID/maps` is then empty).
pub(crate) fn thread_maps(pid: Pid, tid: Pid) -> std::io::Result<String> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/maps"))
}

/// `/proc/PID/task/TID/auxv`: the auxiliary vector the process started with.
pub(crate) fn thread_auxv(pid: Pid, tid: Pid) -> std::io::Result<Vec<u8>> {
    fs::read(format!("/proc/{pid}/task/{tid}/auxv"))
}

/// `PF_KTHREAD` in the flags field of `/proc/PID/stat` (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether `pid` is a kernel thread (it has no fd table or memory of its own).
pub(crate) fn is_kernel_thread(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // flags is field 9: the 7th after the state that follows the ')'.
            s.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(6)?
                .parse::<u64>()
                .ok()
        })
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// The soft `RLIMIT_NOFILE` of `pid` from `/proc/PID/limits` (readable by anyone);
/// `None` for "unlimited" or when it cannot be read.
pub(crate) fn nofile_limit(pid: Pid) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.strip_prefix("Max open files")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_names_only() {
        assert_eq!(numeric_name(b"1"), Some(1));
        assert_eq!(numeric_name(b"4194304"), Some(4_194_304));
        assert_eq!(numeric_name(b"self"), None);
        assert_eq!(numeric_name(b"0"), None);
        assert_eq!(numeric_name(b""), None);
        assert_eq!(numeric_name(b"+5"), None);
        assert_eq!(numeric_name(b"99999999999"), None);
        assert_eq!(numeric_name(b"4294967295"), None);
    }

    #[test]
    fn pids_lists_this_process_sorted() {
        let pids = pids().expect("read /proc");
        let me = std::process::id() as Pid;
        assert!(pids.contains(&me), "{me} not in {pids:?}");
        assert!(pids.windows(2).all(|w| w[0] < w[1]));
    }
}
