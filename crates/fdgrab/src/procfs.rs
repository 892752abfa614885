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
    /// `TracerPid`: 0 when nobody traces it.
    pub tracer: Option<Pid>,
    /// `SigPnd`: signals pending for this thread only.
    pub sig_pending: Option<u64>,
    /// `Seccomp`: 0 none, 1 strict, 2 filter.
    pub seccomp: Option<u8>,
    /// `CapEff`: the effective capability set.
    pub cap_eff: Option<u64>,
}

pub(crate) fn status(pid: Pid) -> std::io::Result<Status> {
    Ok(parse_status(&fs::read_to_string(format!(
        "/proc/{pid}/status"
    ))?))
}

/// `/proc/PID/task/TID/status`: one thread's view (its own pending signals and
/// seccomp mode; the rest is the process's).
pub(crate) fn thread_status(pid: Pid, tid: Pid) -> std::io::Result<Status> {
    Ok(parse_status(&fs::read_to_string(format!(
        "/proc/{pid}/task/{tid}/status"
    ))?))
}

/// `/proc/thread-self/status`: the calling thread's (our seccomp mode is per thread).
pub(crate) fn own_thread_status() -> std::io::Result<Status> {
    Ok(parse_status(&fs::read_to_string(
        "/proc/thread-self/status",
    )?))
}

fn parse_status(text: &str) -> Status {
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
            "TracerPid" => st.tracer = value.parse().ok(),
            "SigPnd" => st.sig_pending = u64::from_str_radix(value, 16).ok(),
            "Seccomp" => st.seccomp = value.parse().ok(),
            "CapEff" => st.cap_eff = u64::from_str_radix(value, 16).ok(),
            _ => {}
        }
    }
    st
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

fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name is in parentheses and may contain anything; fields follow
    // the last ')': state is field 3 and starttime field 22 of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
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
