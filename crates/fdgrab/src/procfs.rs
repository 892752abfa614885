//! Small readers for `/proc` files. They fall back gracefully: `/proc` is the slow
//! path behind ioctls and syscalls, and a missing field is not worth failing over.

use crate::Pid;
use rustix::fs::RawDir;
use std::fs;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};

/// Reads a `/proc` file that the kernel produces as one record (`status`, `stat`,
/// `limits`, `cgroup`, a sysctl: `single_open` seq files) and hands its text to
/// `parse`.
///
/// `fs::read_to_string` costs a `statx` (procfs reports size 0) and a read per
/// doubling of a 32-byte buffer plus one returning 0: 8 to 10 calls for a
/// `status`. Here one read into a 4 KiB buffer does: a one-record file comes whole
/// in one read when it fits, so a short read is its end. A longer file (a `status`
/// with many groups) is read on until EOF. The buffer is left uninitialised (a
/// zeroed one cost more instructions than the parsing).
///
/// Text that is not UTF-8 is taken lossily: a process name (`Name:`, `(comm)`) is
/// any bytes, and must not make the whole file unreadable.
fn read_record<T>(
    path: impl rustix::path::Arg,
    parse: impl FnOnce(&str) -> T,
) -> std::io::Result<T> {
    use rustix::buffer::spare_capacity;
    use rustix::fs::{Mode, OFlags};
    const BUF: usize = 4096;
    let file = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    let mut text = Vec::with_capacity(BUF);
    let n = rustix::io::retry_on_intr(|| rustix::io::read(&file, spare_capacity(&mut text)))?;
    if n == BUF {
        loop {
            text.reserve(BUF);
            let n =
                rustix::io::retry_on_intr(|| rustix::io::read(&file, spare_capacity(&mut text)))?;
            if n == 0 {
                break;
            }
        }
    }
    Ok(match std::str::from_utf8(&text) {
        Ok(s) => parse(s),
        Err(_) => parse(&String::from_utf8_lossy(&text)),
    })
}

/// The mount id of our own descriptor `fd`: the `mnt_id:` line of its
/// `/proc/self/fdinfo`, which no file system is asked for.
pub(crate) fn own_fd_mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    read_record(format!("/proc/self/fdinfo/{raw}"), |text| {
        text.lines()
            .find_map(|l| l.strip_prefix("mnt_id:"))
            .and_then(|v| v.trim().parse().ok())
    })
    .ok()
    .flatten()
}

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
    /// `State`: its letter (`R`, `S`, `D`, `Z`, ...).
    pub state: Option<char>,
    /// `SigPnd`: the signals pending for this thread.
    pub sig_pnd: Option<u64>,
    /// `ShdPnd`: the signals pending for the whole process.
    pub shd_pnd: Option<u64>,
}

pub(crate) fn status(pid: Pid) -> std::io::Result<Status> {
    read_record(format!("/proc/{pid}/status"), parse_status)?
}

/// `/proc/PID/task/TID/status`: what differs per thread (the tracer, above all).
pub(crate) fn task_status(pid: Pid, tid: Pid) -> std::io::Result<Status> {
    read_record(format!("/proc/{pid}/task/{tid}/status"), parse_status)?
}

/// `/proc/thread-self/status`: the calling thread's (our seccomp mode is per thread).
pub(crate) fn own_thread_status() -> std::io::Result<Status> {
    read_record("/proc/thread-self/status", parse_status)?
}

/// Lines are cut at their bytes (`\n` and `:` are ASCII, so every cut is a char
/// boundary), only the values read are trimmed, and reading stops once every field
/// is found: with `str::lines`, `split_once` and a trim per line, one parse cost
/// 32,000 instructions, a ninth of a ptrace `get`'s own (now about 11,000).
pub(crate) fn parse_status(text: &str) -> std::io::Result<Status> {
    const FIELDS: usize = 11;
    let mut st = Status::default();
    let mut found = 0;
    let mut rest = text;
    while found < FIELDS && !rest.is_empty() {
        let (line, tail) = match rest.bytes().position(|b| b == b'\n') {
            Some(end) => (&rest[..end], &rest[end + 1..]),
            None => (rest, ""),
        };
        rest = tail;
        let Some(colon) = line.bytes().position(|b| b == b':') else {
            continue;
        };
        let (key, value) = (&line[..colon], &line[colon + 1..]);
        // Trimmed only for the fields read (a tab before, nothing after).
        let value = || value.trim();
        found += 1;
        match key {
            "Tgid" => st.tgid = value().parse().ok(),
            "PPid" => st.ppid = value().parse().ok(),
            "Uid" => st.uids = parse4(value()),
            "Gid" => st.gids = parse4(value()),
            "TracerPid" => st.tracer_pid = value().parse().ok(),
            "Seccomp" => st.seccomp = value().parse().ok(),
            "CapEff" => st.cap_eff = u64::from_str_radix(value(), 16).ok(),
            "SigIgn" => st.sig_ign = u64::from_str_radix(value(), 16).ok(),
            "State" => st.state = value().chars().next(),
            "SigPnd" => st.sig_pnd = u64::from_str_radix(value(), 16).ok(),
            "ShdPnd" => st.shd_pnd = u64::from_str_radix(value(), 16).ok(),
            _ => found -= 1,
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
/// other threads), ascending.
pub fn pids() -> std::io::Result<Vec<Pid>> {
    let dir = rustix::fs::openat(
        rustix::fs::CWD,
        "/proc",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    Ok(numbered_entries(dir.as_fd())?)
}

/// The entries of a `/proc` directory whose names are numbers (processes in
/// `/proc`, descriptors in `/proc/PID/fd`), ascending. The directory is read from
/// its current position. Other names (`self`, `sys`, ...) are skipped without being
/// copied: one `getdents64` buffer serves the whole listing.
///
/// The listing ends only when `getdents64` returns nothing. A batch that left room
/// in the buffer is no sign of the end: a signal arriving while the kernel fills
/// it (filldir64 stops on `signal_pending`) returns what is there so far.
pub(crate) fn numbered_entries(dir: BorrowedFd<'_>) -> rustix::io::Result<Vec<i32>> {
    const BUF: usize = 16 * 1024;
    let mut buf = [MaybeUninit::<u8>::uninit(); BUF];
    let mut entries = RawDir::new(dir, &mut buf);
    let mut out = Vec::new();
    while let Some(entry) = entries.next() {
        if let Some(n) = numeric_name(entry?.file_name().to_bytes()) {
            out.push(n);
        }
    }
    // Both directories list in number order today; sorting keeps the promise.
    out.sort_unstable();
    Ok(out)
}

/// The descriptors numbered `lo..hi` of a `/proc/PID/fd` directory, read through
/// `dir`, a handle of the caller's own (its position is moved): procfs puts fd N at
/// offset N + 2, so the listing starts right at `lo`, and readers of different
/// ranges share no work. Also where fds past the range may start: the first
/// number at or past `hi`, or `hi` itself when the range ends with fd `hi - 1`
/// (the listing stops there rather than read on); `None`: no fd from `hi` on.
///
/// Each entry listed costs procfs a dentry lookup, so the first `getdents64` has
/// room for the range's entries and no more (24 bytes each below fd 10,000, 32
/// above); a range with holes is followed by calls with room for two entries,
/// only to find where the next fds start.
///
/// The offsets are checked as they come: within one `getdents64` batch each
/// entry's `d_off` is where the next one starts, so fd N followed by fd M must say
/// M + 2. A kernel that numbered its entries otherwise would make the seek land
/// elsewhere and skip fds; that is an error (`EIO`), never a silently short list.
/// (Across batches the table may change between calls, so no check there.)
pub(crate) fn fd_numbers_in(
    dir: BorrowedFd<'_>,
    lo: usize,
    hi: usize,
) -> rustix::io::Result<(Vec<i32>, Option<usize>)> {
    rustix::fs::seek(dir, rustix::fs::SeekFrom::Start(lo as u64 + 2))?;
    let entry_len = if hi <= 10_000 { 24 } else { 32 };
    let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
    let mut len = hi
        .saturating_sub(lo)
        .saturating_mul(entry_len)
        .clamp(64, buf.len());
    let mut out = Vec::new();
    loop {
        // One getdents64 call per batch: `next` on an emptied RawDir would make
        // another, with a buffer of the wrong size.
        let mut entries = RawDir::new(dir, &mut buf[..len]);
        let mut expect_next: Option<u64> = None;
        let mut first = true;
        while first || !entries.is_buffer_empty() {
            let Some(entry) = entries.next() else {
                return Ok((out, None)); // an empty batch: the end
            };
            first = false;
            let entry = entry?;
            let Some(n) = numeric_name(entry.file_name().to_bytes()) else {
                continue;
            };
            let n = n as usize; // never negative: digits only
            if expect_next.is_some_and(|off| off != n as u64 + 2) {
                return Err(rustix::io::Errno::IO);
            }
            expect_next = Some(entry.next_entry_cookie());
            if n >= hi {
                return Ok((out, Some(n)));
            }
            if n >= lo {
                out.push(n as i32);
            }
            if n + 1 == hi {
                return Ok((out, Some(hi)));
            }
        }
        len = 64;
    }
}

/// Whether this kernel puts fd N of a `/proc/PID/fd` directory at offset N + 2
/// (every kernel that gives the fd count as the directory's size, 6.2+, does; the
/// check is one `getdents64`). `dir` is read from its start and rewound.
pub(crate) fn fd_offsets_are_numbers(dir: BorrowedFd<'_>) -> rustix::io::Result<bool> {
    rustix::fs::seek(dir, rustix::fs::SeekFrom::Start(2))?;
    // A few dozen entries are as good a check as a whole table, and each costs
    // procfs a dentry lookup.
    let mut buf = [MaybeUninit::<u8>::uninit(); 1024];
    let mut entries = RawDir::new(dir, &mut buf);
    let mut ok = true;
    let mut expect_next: Option<u64> = None;
    while let Some(entry) = entries.next() {
        let entry = entry?;
        if let Some(n) = numeric_name(entry.file_name().to_bytes()) {
            ok &= expect_next.is_none_or(|off| off == n as u64 + 2);
            expect_next = Some(entry.next_entry_cookie());
        }
        if entries.is_buffer_empty() {
            break; // one batch is enough
        }
    }
    rustix::fs::seek(dir, rustix::fs::SeekFrom::Start(0))?;
    Ok(ok)
}

/// Whether the process whose `/proc/PID/fd` is `fd_dir` has threads besides its
/// leader: the link count of `/proc/PID/task` is 2 plus the number of threads. An
/// empty fd directory with no other thread is a kernel thread or a process with no
/// descriptors; with others, a leader that exited while its threads live on.
pub(crate) fn has_other_threads(fd_dir: BorrowedFd<'_>) -> bool {
    task_links_show_other_threads(rustix::fs::statat(
        fd_dir,
        "../task",
        rustix::fs::AtFlags::empty(),
    ))
}

/// [`has_other_threads`] from a stat of `/proc/PID/task` made another way. One
/// that failed counts as showing other threads: the caller then looks closer.
pub(crate) fn task_links_show_other_threads(task: rustix::io::Result<rustix::fs::Stat>) -> bool {
    task.map_or(true, |st| st.st_nlink > 3)
}

/// The number a `/proc` entry name spells (digits only: no sign, no spaces; fd 0
/// included), or `None`.
fn numeric_name(name: &[u8]) -> Option<i32> {
    if name.is_empty() || name.len() > 10 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = name
        .iter()
        .fold(0_u64, |n, &d| n * 10 + u64::from(d - b'0'));
    i32::try_from(n).ok()
}

/// `/proc/PID/comm` without its newline, in one read: the name is at most 15
/// bytes (`TASK_COMM_LEN`), so the size probe and second read of `fs::read` are
/// not needed.
pub(crate) fn comm(pid: Pid) -> rustix::io::Result<Vec<u8>> {
    let file = rustix::fs::openat(
        rustix::fs::CWD,
        format!("/proc/{pid}/comm"),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut buf = [0u8; 64];
    let n = rustix::io::retry_on_intr(|| rustix::io::read(&file, &mut buf))?;
    let name = &buf[..n];
    Ok(name.strip_suffix(b"\n").unwrap_or(name).to_vec())
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
    read_record("/proc/sys/kernel/yama/ptrace_scope", |t| {
        t.trim().parse().ok()
    })
    .ok()
    .flatten()
}

/// The cgroup v2 id of a process: the inode number of its cgroup directory.
pub(crate) fn cgroup_id(pid: Pid) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = read_record(format!("/proc/{pid}/cgroup"), |text| {
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_owned)
    })
    .ok()??;
    let root = cgroup2_mount_point()?;
    fs::metadata(format!("{root}{path}")).ok().map(|m| m.ino())
}

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a unified
/// layout, but `/sys/fs/cgroup/unified` on a hybrid one, so it is looked up in
/// our own mountinfo rather than assumed.
fn cgroup2_mount_point() -> Option<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(cgroup2_mount_point_in)
}

/// The mount point of one mountinfo line if its filesystem type is cgroup2.
/// Field 5 is the mount point, octal-escaped; the type follows the `-` separator.
fn cgroup2_mount_point_in(line: &str) -> Option<String> {
    let (fields, tail) = line.split_once(" - ")?;
    if tail.split(' ').next()? != "cgroup2" {
        return None;
    }
    let escaped = fields.split(' ').nth(4)?;
    Some(unescape_octal(escaped))
}

/// Undoes the kernel's `\ooo` escaping of space, tab, newline and backslash in
/// mountinfo paths.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The state letter and start time (clock ticks after boot) of `/proc/PID/stat`.
pub(crate) fn stat_state(pid: Pid) -> Option<(char, u64)> {
    read_record(format!("/proc/{pid}/stat"), parse_stat).ok()?
}

/// The signals 1-31 process `pid` ignores (`sigignore`, field 33 of its thread
/// `tid`'s `stat`; the kernel shows only those 31 bits there): `SigIgn` of `status`
/// for the classic signals, at about half the cost.
pub(crate) fn task_sig_ignored(pid: Pid, tid: Pid) -> Option<u64> {
    read_record(format!("/proc/{pid}/task/{tid}/stat"), |stat| {
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(30)?
            .parse()
            .ok()
    })
    .ok()?
}

/// Whether thread `tid` of process `pid` exists and has not exited (is neither a
/// zombie nor dead).
pub(crate) fn thread_alive(pid: Pid, tid: Pid) -> bool {
    read_record(format!("/proc/{pid}/task/{tid}/stat"), parse_stat)
        .ok()
        .flatten()
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

/// Of `/proc/PID/stat`: whether `pid` is a kernel thread (it has no fd table or
/// memory of its own), and whether its leader is alive (neither a zombie nor dead:
/// the leader's own state, as [`thread_alive`] reads it for the leader).
/// An error when the file cannot be read (`ENOENT`: no such process).
pub(crate) fn kernel_thread_and_leader_alive(pid: Pid) -> std::io::Result<(bool, bool)> {
    read_record(format!("/proc/{pid}/stat"), |s| {
        let mut fields = s.rsplit_once(')')?.1.split_whitespace();
        let state = fields.next()?.chars().next()?;
        // flags is field 9: the 6th after the state that follows the ')'.
        let flags = fields.nth(5)?.parse::<u64>().ok()?;
        Some((flags & PF_KTHREAD != 0, !matches!(state, 'Z' | 'X')))
    })
    .map(|found| found.unwrap_or((false, false)))
}

/// The soft `RLIMIT_NOFILE` of `pid` from `/proc/PID/limits` (readable by anyone);
/// `None` for "unlimited" or when it cannot be read.
pub(crate) fn nofile_limit(pid: Pid) -> Option<u64> {
    read_record(format!("/proc/{pid}/limits"), |text| {
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        line.strip_prefix("Max open files")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    #[test]
    fn task_sig_ignored_matches_status() {
        // SAFETY: SIG_IGN for SIGTRAP in this test's own process (nextest runs each
        // test in a process of its own).
        unsafe { libc::signal(libc::SIGTRAP, libc::SIG_IGN) };
        let pid = std::process::id() as i32;
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        let fast = super::task_sig_ignored(pid, tid).expect("stat");
        let status = super::task_status(pid, tid)
            .expect("status")
            .sig_ign
            .expect("SigIgn");
        assert_eq!(fast, status & 0x7fff_ffff);
        assert_ne!(fast & (1 << (libc::SIGTRAP - 1)), 0);
    }

    use super::*;

    /// Files at, around and well past the buffer's size come back whole, and a
    /// `/proc` file reads as `fs::read_to_string` reads it.
    #[test]
    fn read_record_reads_whole_files_of_any_length() {
        let dir = std::env::temp_dir().join(format!("fdgrab-read-record-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        for len in [0, 1, 4095, 4096, 4097, 8192, 20_000] {
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let path = dir.join(len.to_string());
            fs::write(&path, &text).expect("write");
            let got = read_record(&path, str::to_owned).expect("read");
            assert_eq!(got.len(), len);
            assert_eq!(got, text);
        }
        let _ = fs::remove_dir_all(&dir);
        let want = fs::read_to_string("/proc/self/limits").expect("limits");
        assert_eq!(
            read_record("/proc/self/limits", str::to_owned).expect("read"),
            want
        );
        let st = status(std::process::id() as Pid).expect("status");
        assert_eq!(st.tgid, Some(std::process::id() as Pid));
    }

    /// Every field is read wherever it stands; a missing one stays `None` without
    /// hiding the others; once all are found the rest is not read.
    #[test]
    fn status_fields_are_found_and_reading_stops_after_the_last() {
        let text = "Name:\tx\nState:\tt (tracing stop)\nTgid:\t7\nPPid:\t1\n\
                    TracerPid:\t9\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nno colon here\n\
                    SigPnd:\t0000000000000100\nShdPnd:\t0000000000000001\n\
                    SigIgn:\t0000000000001000\nCapEff:\t000001ffffffffff\nSeccomp:\t2\n\
                    Tgid:\t8\n";
        let st = super::parse_status(text).expect("parse");
        assert_eq!(st.state, Some('t'));
        assert_eq!(
            (st.tgid, st.ppid, st.tracer_pid),
            (Some(7), Some(1), Some(9))
        );
        assert_eq!((st.uids, st.gids), (Some([1, 2, 3, 4]), Some([5, 6, 7, 8])));
        assert_eq!((st.sig_pnd, st.shd_pnd), (Some(0x100), Some(1)));
        assert_eq!(
            (st.sig_ign, st.cap_eff),
            (Some(0x1000), Some(0x1ff_ffff_ffff))
        );
        assert_eq!(st.seccomp, Some(2));
        // Cut only at ASCII bytes, so text around them may be anything.
        let odd = super::parse_status("Näme:\t€:é\n:\n\nTgid:\t5 \nPPid:ü").expect("parse");
        assert_eq!((odd.tgid, odd.ppid), (Some(5), None));
        let partial = super::parse_status("Tgid:\t3\nSeccomp:\t0").expect("parse");
        assert_eq!(
            (partial.tgid, partial.seccomp, partial.uids),
            (Some(3), Some(0), None)
        );
        let own = super::status(std::process::id() as super::Pid).expect("own status");
        let text = fs::read_to_string("/proc/self/status").expect("status");
        let uid = text
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .expect("Uid");
        let uids: Vec<u32> = uid
            .split_whitespace()
            .map(|v| v.parse().expect("uid"))
            .collect();
        assert_eq!(own.uids.map(|u| u.to_vec()), Some(uids));
        assert!(own.seccomp.is_some() && own.sig_ign.is_some() && own.shd_pnd.is_some());
    }

    #[test]
    fn numeric_names_only() {
        assert_eq!(numeric_name(b"1"), Some(1));
        assert_eq!(numeric_name(b"4194304"), Some(4_194_304));
        assert_eq!(numeric_name(b"self"), None);
        assert_eq!(numeric_name(b"0"), Some(0));
        assert_eq!(numeric_name(b""), None);
        assert_eq!(numeric_name(b"+5"), None);
        assert_eq!(numeric_name(b"99999999999"), None);
        assert_eq!(numeric_name(b"4294967295"), None);
    }

    #[test]
    fn cgroup2_mount_point_from_mountinfo_lines() {
        let hybrid =
            "35 25 0:30 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw";
        assert_eq!(
            cgroup2_mount_point_in(hybrid).as_deref(),
            Some("/sys/fs/cgroup/unified")
        );
        let v1 = "36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu";
        assert_eq!(cgroup2_mount_point_in(v1), None);
        let spaced = r"40 25 0:32 / /mnt/cg\040two rw - cgroup2 none rw";
        assert_eq!(
            cgroup2_mount_point_in(spaced).as_deref(),
            Some("/mnt/cg two")
        );
        assert_eq!(unescape_octal(r"a\134b\1"), r"a\b\1");
    }

    /// The kernel's own answer (`PIDFD_GET_INFO`'s cgroup id) is the oracle for
    /// the /proc fallback, on whichever cgroup layout this machine has.
    #[test]
    fn cgroup_id_matches_the_kernels_answer() {
        let me = std::process::id() as Pid;
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(me).expect("our pid"),
            rustix::process::PidfdFlags::empty(),
        )
        .expect("pidfd_open");
        let info = match crate::sys::pidfd_get_info(&pidfd, crate::sys::PIDFD_INFO_CGROUPID) {
            Ok(i) if i.mask & crate::sys::PIDFD_INFO_CGROUPID != 0 => i,
            _ => {
                eprintln!("SKIP: no PIDFD_GET_INFO cgroup id on this kernel (Linux 6.13+)");
                return;
            }
        };
        assert_eq!(cgroup_id(me), Some(info.cgroupid));
        // In the root cgroup the id is 1, which a tmpfs root's inode is too: the
        // directory it is read from must also be the cgroup2 mount itself.
        let root = cgroup2_mount_point().expect("the cgroup2 mount");
        let fs_type = rustix::fs::statfs(root.as_str()).expect("statfs").f_type;
        assert_eq!(fs_type as i64, 0x6367_7270, "{root} is not a cgroup2 mount");
    }

    /// `n` more fds of our own (copies of /dev/null), and our `/proc/self/fd`.
    fn own_fds_plus(n: usize) -> (Vec<std::fs::File>, rustix::fd::OwnedFd) {
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let held = (0..n).map(|_| null.try_clone().expect("dup")).collect();
        let dir = rustix::fs::open(
            "/proc/self/fd",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .expect("open /proc/self/fd");
        (held, dir)
    }

    #[test]
    fn numbered_entries_lists_every_fd_across_batches() {
        // Far more fds than one 16 KiB getdents buffer holds (about 680 entries).
        let (held, dir) = own_fds_plus(900);
        let fds = numbered_entries(dir.as_fd()).expect("list");
        use std::os::fd::AsRawFd;
        for h in &held {
            assert!(
                fds.binary_search(&h.as_raw_fd()).is_ok(),
                "fd {} missing",
                h.as_raw_fd()
            );
        }
        assert!(fds.binary_search(&dir.as_raw_fd()).is_ok());
        assert_eq!(fds.first(), Some(&0), "fd 0 is listed");
    }

    #[test]
    fn fd_ranges_cover_the_table_exactly() {
        let (held, dir) = own_fds_plus(300);
        let all = numbered_entries(dir.as_fd()).expect("list");
        let mut joined = Vec::new();
        let mut lo = 0;
        loop {
            let (part, after) = fd_numbers_in(dir.as_fd(), lo, lo + 128).expect("range");
            assert!(part.iter().all(|&n| (lo..lo + 128).contains(&(n as usize))));
            joined.extend(part);
            match after {
                Some(next) => {
                    assert!(next >= lo + 128);
                    lo = next - next % 128;
                }
                None => break,
            }
        }
        assert_eq!(joined, all);
        assert!(all.len() > 300, "{}", all.len());
        drop(held);
    }

    /// Holes right before, at and after block boundaries, a far fd after a long
    /// gap, and the top of a raised RLIMIT_NOFILE: every range asked for gives
    /// exactly the open fds in it, and the first one past it.
    #[test]
    fn fd_ranges_of_a_sparse_table_with_holes_at_block_boundaries() {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let lim = getrlimit(Resource::Nofile);
        // 2^20 (fs.nr_open's default) needs root; otherwise the hard limit.
        let huge = rustix::process::Rlimit {
            current: Some(1 << 20),
            maximum: Some(1 << 20),
        };
        let top = match setrlimit(Resource::Nofile, huge) {
            Ok(()) => 1 << 20,
            Err(_) => {
                let hard = lim.maximum.unwrap_or(1 << 20).min(1 << 20);
                let raised = rustix::process::Rlimit {
                    current: Some(hard),
                    maximum: lim.maximum,
                };
                setrlimit(Resource::Nofile, raised).expect("raise RLIMIT_NOFILE");
                hard
            }
        };
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let mut wanted: Vec<u64> = vec![127, 128, 129, 255, 256, 383, 511, 512, 1023, 1024];
        wanted.extend([65_535, 65_536, 65_663, top - 129, top - 128, top - 1]);
        wanted.retain(|&n| n < top);
        wanted.dedup();
        use std::os::fd::AsRawFd;
        let held: Vec<rustix::fd::OwnedFd> = wanted
            .iter()
            .map(|&n| {
                // The lowest free number from n on: n itself, in a test process.
                let fd = rustix::io::fcntl_dupfd_cloexec(&null, n as i32).expect("dup");
                assert_eq!(fd.as_raw_fd(), n as i32);
                fd
            })
            .collect();
        let dir = rustix::fs::open(
            "/proc/self/fd",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .expect("open /proc/self/fd");
        let all: Vec<usize> = numbered_entries(dir.as_fd())
            .expect("list")
            .into_iter()
            .map(|n| n as usize)
            .collect();
        for &n in &wanted {
            assert!(all.contains(&(n as usize)), "fd {n} not open");
        }
        let mut starts: Vec<usize> = wanted.iter().map(|&n| n as usize / 128 * 128).collect();
        starts.extend([0, 128, 256, 384, 640, 4096, top as usize]);
        for lo in starts {
            let hi = lo + 128;
            let (part, after) = fd_numbers_in(dir.as_fd(), lo, hi).expect("range");
            let want: Vec<i32> = all
                .iter()
                .filter(|&&n| (lo..hi).contains(&n))
                .map(|&n| n as i32)
                .collect();
            assert_eq!(part, want, "fds in {lo}..{hi}");
            let next = all.iter().copied().find(|&n| n >= hi);
            // A range that ends with fd hi - 1 says "from hi on" without reading on.
            let stopped = part.last() == Some(&(hi as i32 - 1)) && after == Some(hi);
            assert!(
                after == next || stopped,
                "after {hi}: {after:?}, next {next:?}"
            );
        }
        drop(held);
        // Lowering the hard limit again may be refused; the test process ends next.
        let _ = setrlimit(Resource::Nofile, lim);
    }

    /// The offsets fd ranges rely on hold on this kernel, and a directory whose
    /// offsets are not its entries' numbers (numbered files on a disk or tmpfs
    /// directory stand in for a kernel that numbered fd entries otherwise) is
    /// never read short: the check says no, and a range read is either exact or
    /// an error.
    #[test]
    fn fd_offsets_are_checked_not_assumed() {
        let (held, fd_dir) = own_fds_plus(300);
        assert!(fd_offsets_are_numbers(fd_dir.as_fd()).expect("probe"));
        assert_eq!(
            numbered_entries(fd_dir.as_fd()).expect("rewound").first(),
            Some(&0)
        );
        drop(held);

        let dir = std::env::temp_dir().join(format!("fdgrab-offsets-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("dir");
        let names: Vec<usize> = (0..400).step_by(5).collect();
        for n in &names {
            fs::write(dir.join(n.to_string()), b"").expect("file");
        }
        let d = rustix::fs::open(
            &dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .expect("open");
        assert!(!fd_offsets_are_numbers(d.as_fd()).expect("probe"));
        for lo in [0, 128, 256] {
            let want: Vec<i32> = names
                .iter()
                .filter(|&&n| (lo..lo + 128).contains(&n))
                .map(|&n| n as i32)
                .collect();
            match fd_numbers_in(d.as_fd(), lo, lo + 128) {
                Ok((part, _)) => assert_eq!(part, want, "a short read of {lo}.."),
                Err(e) => assert_eq!(e, rustix::io::Errno::IO),
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }

    /// A signal that arrives while getdents64 fills a buffer makes it return what
    /// it has so far (filldir64 stops on signal_pending), a short batch that is not
    /// the last: a listing must not end there. A profiler's SIGPROF, a job-control
    /// stop or a library user's own handlers all do this.
    #[test]
    fn numbered_entries_is_not_cut_short_by_signals() {
        use std::sync::atomic::{AtomicBool, Ordering};
        extern "C" fn nothing(_: libc::c_int) {}
        // SAFETY: a handler that does nothing, for SIGUSR1, in this test's own
        // process (nextest runs each test in a process of its own).
        unsafe { libc::signal(libc::SIGUSR1, nothing as *const () as libc::sighandler_t) };
        let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let raised = rustix::process::Rlimit {
            current: lim.maximum.map(|m| m.min(8192)),
            maximum: lim.maximum,
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, raised).expect("rlimit");
        let (held, dir) = own_fds_plus(4000);
        let want = numbered_entries(dir.as_fd()).expect("list");
        // A thread id rather than a pthread_t, which musl makes a pointer (not Sync).
        let me = rustix::thread::gettid().as_raw_nonzero().get();
        let pid = rustix::process::getpid().as_raw_nonzero().get();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: tgkill takes integers only; `me` is the scope's owner
                    // thread, alive until the scope ends, which waits for this one.
                    unsafe { libc::syscall(libc::SYS_tgkill, pid, me, libc::SIGUSR1) };
                }
            });
            let mut short = 0;
            for _ in 0..300 {
                rustix::fs::seek(&dir, rustix::fs::SeekFrom::Start(0)).expect("rewind");
                let got = numbered_entries(dir.as_fd()).expect("list");
                if got != want {
                    short += 1;
                }
            }
            stop.store(true, Ordering::Relaxed);
            assert_eq!(short, 0, "listings cut short by a signal, of 300");
        });
        drop(held);
    }

    #[test]
    fn pids_lists_this_process_sorted() {
        let pids = pids().expect("read /proc");
        let me = std::process::id() as Pid;
        assert!(pids.contains(&me), "{me} not in {pids:?}");
        assert!(pids.windows(2).all(|w| w[0] < w[1]));
    }
}
