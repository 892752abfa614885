//! A read-only listing of a process's descriptors, built from `/proc/PID/fd`,
//! `/proc/PID/fdinfo` and the target's own network namespace.
//!
//! Listing never changes the target: nothing is read from its files (offsets stay
//! put) and no socket is grabbed. `pidfd_getfd` on a socket would rewrite its
//! cgroup-v1 net_cls/net_prio ids to ours, so sockets are resolved through
//! `/proc/PID/net/*` and `NETLINK_SOCK_DIAG` instead.

pub(crate) mod inet_diag;
pub(crate) mod names;
mod query;
pub(crate) mod sock_diag;
mod socket_info;
pub(crate) mod sockets;
pub(crate) mod unix_diag;

pub use names::escape;
pub use query::{query, ProcessFds, Query, QueryResult, Skipped};

pub use sockets::{Endpoint, SocketInfo};

use crate::error::{Error, Result};
use crate::pidfd::PidFd;
use crate::{access::permission_hint, Pid, TargetFd};
use rustix::fs::{openat, readlinkat, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// What kind of object a descriptor refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FdKind {
    /// A regular file (memfds are reported as [`FdKind::Memfd`]).
    File,
    /// A directory.
    Dir,
    /// Character device.
    Chr,
    /// Block device.
    Blk,
    /// A named FIFO in the file system.
    Fifo,
    /// An anonymous pipe (`pipe(2)`).
    Pipe,
    /// A socket (details in [`FdEntry::socket`]).
    Socket,
    /// An anonymous inode: eventfd, epoll, timerfd, signalfd, pidfd, inotify, bpf, io_uring, ...
    Anon,
    /// A `memfd_create(2)` file.
    Memfd,
    /// A symbolic link itself (opened with `O_PATH | O_NOFOLLOW`).
    Symlink,
    /// Anything the kernel reported that is none of the above.
    Unknown,
}

impl FdKind {
    /// The short upper-case name used in table output (close to `lsof`'s TYPE).
    pub fn label(self) -> &'static str {
        match self {
            FdKind::File => "REG",
            FdKind::Dir => "DIR",
            FdKind::Chr => "CHR",
            FdKind::Blk => "BLK",
            FdKind::Fifo => "FIFO",
            FdKind::Pipe => "PIPE",
            FdKind::Socket => "SOCK",
            FdKind::Anon => "a_inode",
            FdKind::Memfd => "MEMFD",
            FdKind::Symlink => "LINK",
            FdKind::Unknown => "unknown",
        }
    }
}

/// Access mode from `O_ACCMODE`, or `path` for `O_PATH` descriptors.
/// How the descriptor was opened (`O_ACCMODE` of its open file description).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// `O_RDONLY`.
    #[serde(rename = "r")]
    Read,
    /// `O_WRONLY`.
    #[serde(rename = "w")]
    Write,
    /// `O_RDWR`.
    #[serde(rename = "rw")]
    ReadWrite,
    /// `O_PATH`: a location only, no reads or writes.
    Path,
}

impl Access {
    /// `lsof`'s mode letter.
    pub fn letter(self) -> char {
        match self {
            Access::Read => 'r',
            Access::Write => 'w',
            Access::ReadWrite => 'u',
            Access::Path => ' ',
        }
    }
}

/// Status flags of the open file description, and the descriptor's close-on-exec bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FdFlags {
    /// `O_APPEND`: every write goes to the end.
    pub append: bool,
    /// `O_NONBLOCK`, shared by every copy of the description.
    pub nonblock: bool,
    /// `FD_CLOEXEC` of this descriptor (not of the description).
    pub cloexec: bool,
    /// The raw `flags:` value from fdinfo (octal there), for anything not named above.
    pub raw: u32,
}

/// One descriptor of the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FdEntry {
    /// The number in the target.
    pub fd: TargetFd,
    /// How it was opened.
    pub access: Access,
    /// Status flags and close-on-exec.
    pub flags: FdFlags,
    /// What it refers to.
    #[serde(rename = "type")]
    pub kind: FdKind,
    /// `major:minor` of the device holding the inode.
    pub dev: Option<String>,
    /// `major:minor` of a character or block device itself.
    pub rdev: Option<String>,
    /// The inode number (for sockets and pipes, the N of `socket:[N]`/`pipe:[N]`).
    pub inode: Option<u64>,
    /// Size in bytes for regular files and memfds.
    pub size: Option<u64>,
    /// The file position (`pos:` in fdinfo).
    pub offset: Option<u64>,
    /// The mount id from fdinfo (`mnt_id:`).
    pub mnt_id: Option<u64>,
    /// The link count of the inode (0 for unlinked files and memfds), when stat'ed.
    pub nlink: Option<u64>,
    /// What `/proc/PID/fd/N` points at, as the kernel says it (lossy UTF-8; see
    /// `link_bytes`).
    pub link: String,
    /// The exact bytes of `link` when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link_bytes: Option<Vec<u8>>,
    /// The file's path for path-backed descriptors, without the " (deleted)" suffix.
    pub path: Option<String>,
    /// The exact bytes of `path` when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<Vec<u8>>,
    /// The file was unlinked while open (it can still be recovered through the fd).
    pub deleted: bool,
    /// For anonymous inodes: eventfd, epoll, timerfd, signalfd, pidfd, inotify,
    /// fanotify, bpf, io_uring, userfaultfd, ... (`bpf-map`-like names keep their detail
    /// in `link`).
    pub anon: Option<String>,
    /// For memfds: the name given to `memfd_create`.
    pub memfd: Option<String>,
    /// The exact bytes of `memfd` when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memfd_bytes: Option<Vec<u8>>,
    /// For sockets: family, type, protocol, state and addresses, when known.
    pub socket: Option<SocketInfo>,
}

impl FdEntry {
    /// A one-line human description, as in `lsof`'s NAME column (lossy UTF-8; see
    /// [`FdEntry::display_name_bytes`]).
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.display_name_bytes()).into_owned()
    }

    /// The NAME column as exact bytes: a file name may be any bytes but NUL, and an
    /// abstract unix socket name any bytes at all. Pass it through [`escape`] before
    /// it reaches a terminal.
    pub fn display_name_bytes(&self) -> Vec<u8> {
        match (&self.socket, self.kind) {
            (Some(s), _) => s.describe_bytes(),
            (None, FdKind::Memfd) => {
                let mut name = b"memfd:".to_vec();
                name.extend_from_slice(names::exact(&self.memfd, &self.memfd_bytes));
                name
            }
            _ => names::exact_str(&self.link, &self.link_bytes).to_vec(),
        }
    }

    /// Whether the inode has no name left in any directory (`lsof +L1`): unlinked
    /// files and memfds. The link count decides when it is known: a file whose
    /// opened name was removed (`deleted`) may keep another hard link.
    pub fn is_unlinked(&self) -> bool {
        self.nlink.map_or(self.deleted, |n| n == 0)
    }
}

/// The descriptors of one process.
#[derive(Clone, Debug, Serialize)]
pub struct Inventory {
    /// The process listed.
    pub pid: Pid,
    /// Its descriptors, in ascending order.
    pub fds: Vec<FdEntry>,
}

const O_PATH_BIT: u32 = 0o10000000;
const O_APPEND_BIT: u32 = 0o2000;
const O_NONBLOCK_BIT: u32 = 0o4000;
const O_CLOEXEC_BIT: u32 = 0o2000000;

/// Lists every descriptor of the process behind `target`.
///
/// Descriptors opened or closed while we read are either included or not; a
/// descriptor closed between `readlink` and `fdinfo` is skipped. If the process
/// itself exits during the listing, the result is [`Error::NoSuchProcess`] rather
/// than a partial list that could belong to a recycled pid.
///
/// Sockets cost the most: nothing is asked of the kernel when the process holds
/// none, a few are looked up per protocol (unix sockets by inode), and only a
/// process holding many gets its namespace's tables dumped.
pub fn inventory(target: &PidFd) -> Result<Inventory> {
    list(target, &Select::default(), &SocketSource::PerProcess)
}

/// Every descriptor of the process behind `target`, with socket details for its
/// listening and bound sockets only: what a handover needs to choose from.
///
/// Listening TCP, all UDP and all unix sockets are taken from kernel-filtered
/// `sock_diag` dumps in the target's network namespace, which is much cheaper than
/// describing every connection as [`inventory`] does. Where those dumps are refused
/// (no `inet_diag` module, no right to enter the namespace) the held sockets are
/// described as [`inventory`] would, connections included.
pub fn listening(target: &PidFd) -> Result<Inventory> {
    list(target, &Select::default(), &SocketSource::Listening)
}

/// Which descriptors a listing keeps. Everything is kept by default; each narrowing
/// is decided from the cheapest source first (the link, then a stat), so fdinfo is
/// read only for the descriptors that are kept.
#[derive(Default)]
pub(crate) struct Select<'a> {
    /// Only these numbers (empty: all).
    pub fds: &'a [TargetFd],
    /// Only sockets with these inodes, already resolved (a port or listening query).
    pub sockets: Option<&'a HashMap<u64, SocketInfo>>,
    /// Only descriptors on this (device, inode).
    pub file: Option<(u64, u64)>,
    /// Only unlinked files and memfds.
    pub unlinked: bool,
    /// Only these kinds (empty: all).
    pub kinds: &'a [FdKind],
}

/// What the first pass over one fd table saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TableMatch {
    /// An fd passed it.
    Found,
    /// No fd did.
    None,
    /// Its directory lists no fd, but threads live on behind an exited leader:
    /// the table they share is seen only through them (by a full description),
    /// so nothing is known yet.
    ThroughThreads,
}

impl TableMatch {
    fn found(any: bool) -> TableMatch {
        if any {
            TableMatch::Found
        } else {
            TableMatch::None
        }
    }
}

impl Select<'_> {
    /// Whether a match in the first pass is a match of the whole query: the
    /// narrowings it checks (device and inode, socket inodes) are all there is.
    pub(crate) fn first_pass_is_exact(&self) -> bool {
        self.prefilters() && self.fds.is_empty() && self.kinds.is_empty() && !self.unlinked
    }

    /// Whether the first pass decides anything (else every process may match).
    pub(crate) fn prefilters(&self) -> bool {
        self.by_link() || self.file.is_some()
    }

    /// `/proc/PID/fd`, opened for the first pass.
    pub(crate) fn open_fd_dir(&self, pid: Pid) -> Result<OwnedFd> {
        openat(
            rustix::fs::CWD,
            format!("/proc/{pid}/fd"),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| proc_error(pid, "open /proc/PID/fd", e))
    }

    /// The first pass over the whole table of `fd_dir`, listed here.
    pub(crate) fn table_may_match(&self, pid: Pid, fd_dir: &OwnedFd) -> Result<TableMatch> {
        let numbers = crate::procfs::numbered_entries(fd_dir.as_fd())
            .map_err(|e| proc_error(pid, "read /proc/PID/fd", e))?;
        if numbers.is_empty() {
            // A kernel thread or a process without fds holds nothing; a leader
            // that exited is listed through one of its threads.
            return Ok(if crate::procfs::has_other_threads(fd_dir.as_fd()) {
                TableMatch::ThroughThreads
            } else {
                TableMatch::None
            });
        }
        Ok(TableMatch::found(self.any_may_match(
            pid,
            fd_dir.as_fd(),
            numbers,
            None,
        )?))
    }

    /// The first pass over a table of `count` fds (the size of its directory,
    /// Linux 6.2+) whose offsets are its numbers: fds `0..count` are tried without
    /// a listing (a table is usually dense, and listing an entry costs procfs
    /// about a third of what trying it costs; a hole costs one try that finds
    /// nothing), then the directory is listed from `count` on, which finds every
    /// fd past the holes (usually none: one empty `getdents64`). Once the holes
    /// met are many for the numbers left below `count` (a shell's `0 1 2 10
    /// 255`: a hole at 3, one number left), the listing starts right after the
    /// last hole instead: a hole tried costs about what four entries listed do.
    pub(crate) fn counted_table_may_match(
        &self,
        pid: Pid,
        fd_dir: &OwnedFd,
        count: usize,
    ) -> Result<TableMatch> {
        let mut listed_from = count;
        let mut holes = 0;
        for n in 0..count {
            let Ok(number) = i32::try_from(n) else {
                break;
            };
            match self.fd_first_pass(pid, fd_dir.as_fd(), number)? {
                FirstPass::May => return Ok(TableMatch::Found),
                FirstPass::Not => {}
                FirstPass::Closed => {
                    holes += 1;
                    if count - n - 1 <= 4 * holes {
                        listed_from = n + 1;
                        break;
                    }
                }
            }
        }
        let rest = rustix::fs::seek(fd_dir, rustix::fs::SeekFrom::Start(listed_from as u64 + 2))
            .and_then(|_| crate::procfs::numbered_entries(fd_dir.as_fd()))
            .map_err(|e| proc_error(pid, "read /proc/PID/fd", e))?;
        if self.any_may_match(pid, fd_dir.as_fd(), rest, None)? {
            return Ok(TableMatch::Found);
        }
        // A leader that exited after the count leaves a directory with nothing
        // in it, as `table_may_match` finds it. Only a try that met a hole can
        // have seen that (a table every try found whole was read through), so
        // the common no-match pays no extra stat.
        Ok(if holes > 0 && leader_exited(fd_dir.as_fd()) {
            TableMatch::ThroughThreads
        } else {
            TableMatch::None
        })
    }

    /// Whether any of `numbers` passes the first pass; stops early (with
    /// `false`) once `settled` says another reader decided.
    pub(crate) fn any_may_match(
        &self,
        pid: Pid,
        fd_dir: BorrowedFd<'_>,
        numbers: impl IntoIterator<Item = i32>,
        settled: Option<&AtomicBool>,
    ) -> Result<bool> {
        for n in numbers {
            if settled.is_some_and(|s| s.load(Ordering::Relaxed)) {
                break;
            }
            if self.fd_may_match(pid, fd_dir, n)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The first pass over descriptor `n`: its link, then its stat, each only
    /// when a narrowing needs it.
    pub(crate) fn fd_may_match(&self, pid: Pid, fd_dir: BorrowedFd<'_>, n: i32) -> Result<bool> {
        Ok(self.fd_first_pass(pid, fd_dir, n)? == FirstPass::May)
    }

    /// The first pass over descriptor `n`, telling a closed one apart.
    fn fd_first_pass(&self, pid: Pid, fd_dir: BorrowedFd<'_>, n: i32) -> Result<FirstPass> {
        let n = itoa(n);
        if self.by_link() {
            match fd_link(pid, fd_dir, &n)? {
                None => return Ok(FirstPass::Closed),
                Some(l) if !self.link_may_match(&l) => return Ok(FirstPass::Not),
                Some(_) => {}
            }
        }
        self.file_first_pass(pid, fd_dir, &n)
    }

    /// Whether anything can be decided from the link alone.
    fn by_link(&self) -> bool {
        self.sockets.is_some() || self.unlinked
    }

    /// Whether descriptor `n` with link `link` can still match.
    fn link_may_match(&self, link: &[u8]) -> bool {
        if let Some(socks) = self.sockets {
            let ino = std::str::from_utf8(link)
                .ok()
                .and_then(|l| bracketed(l, "socket:["));
            if !ino.is_some_and(|i| socks.contains_key(&i)) {
                return false;
            }
        }
        !self.unlinked || link.ends_with(b" (deleted)")
    }

    /// Whether descriptor `n` can be on the file asked for: one stat through the
    /// fd link, as fuser does, with no readlink. A process that may not be read is
    /// an error, not a process without a match: its fd directory may still list
    /// (same owner) while every link and stat through it is refused (the ptrace
    /// read check, e.g. a target with capabilities the caller lacks).
    fn file_may_match(&self, pid: Pid, fd_dir: BorrowedFd<'_>, n: &str) -> Result<bool> {
        Ok(self.file_first_pass(pid, fd_dir, n)? == FirstPass::May)
    }

    fn file_first_pass(&self, pid: Pid, fd_dir: BorrowedFd<'_>, n: &str) -> Result<FirstPass> {
        let Some((dev, ino)) = self.file else {
            return Ok(FirstPass::May);
        };
        match crate::statx::cached_at(fd_dir, n) {
            Ok(st) if st.dev == dev && st.ino == ino => Ok(FirstPass::May),
            Ok(_) => Ok(FirstPass::Not),
            Err(Errno::NOENT) => Ok(FirstPass::Closed),
            // Refused by the file itself (a FUSE mount without allow_other) or
            // by the process: the link, which touches nothing of the file, tells.
            Err(Errno::ACCESS | Errno::PERM) => fd_link(pid, fd_dir, n).map(|_| FirstPass::Not),
            Err(_) => Ok(FirstPass::Not),
        }
    }

    fn keeps(&self, e: &FdEntry) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && (!self.unlinked || e.is_unlinked())
    }
}

/// What the first pass learned of one fd number.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FirstPass {
    /// It may match: the narrowings the first pass checks hold.
    May,
    /// It does not match.
    Not,
    /// No fd has that number.
    Closed,
}

/// Where socket details come from.
pub(crate) enum SocketSource<'a> {
    /// Asked of the kernel for this process alone, for just the sockets it holds.
    PerProcess,
    /// One table per network namespace, shared by every process of a scan.
    Shared(&'a query::NetnsTables),
    /// Listening and bound sockets only, from state-filtered dumps; per process if
    /// a dump is refused.
    Listening,
}

/// Checks that `/proc` shows this process's own pid namespace, so that a pid read
/// there, or `/proc/PID` of a pid a pidfd was opened for, is the same process. A
/// `/proc` mounted for another namespace (a new pid namespace that kept its
/// parent's `/proc`, as `unshare --pid --fork` without `--mount-proc` does) would
/// describe a different process under the same number. Asked of `/proc/self` once
/// per run.
pub fn check_proc_namespace() -> Result<()> {
    static SELF_IN_PROC: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let seen = SELF_IN_PROC.get_or_init(|| {
        std::fs::read_link("/proc/self")
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    });
    let me = std::process::id().to_string();
    if seen.as_deref() == Some(me.as_str()) {
        return Ok(());
    }
    let why = match seen {
        Some(other) => format!(
            "/proc/self is {other} there but this process is {me} in its own pid \
             namespace: pids in that /proc are not this namespace's (mount a proc file \
             system for this pid namespace, e.g. unshare --mount-proc)"
        ),
        None => "/proc/self cannot be read: no proc file system for this process's \
                 pid namespace is mounted on /proc"
            .to_string(),
    };
    Err(Error::Local {
        op: "/proc belongs to another pid namespace",
        source: std::io::Error::other(why),
    })
}

pub(crate) fn list(target: &PidFd, select: &Select, sockets: &SocketSource) -> Result<Inventory> {
    check_proc_namespace()?;
    let pid = target.pid();
    let (mut dirs, mut numbers) =
        ProcDirs::open(pid, &format!("/proc/{pid}")).map_err(|e| hidden_if_alive(target, e))?;
    // Once the thread-group leader has exited, /proc/PID/fd is empty even though
    // the other threads still share a live fd table; read it through one of them.
    if numbers.is_empty()
        && crate::procfs::has_other_threads(dirs.fd_dir.as_fd())
        && target.is_alive()
    {
        for tid in crate::procfs::tasks(pid)
            .unwrap_or_default()
            .into_iter()
            .filter(|&t| t != pid)
        {
            if let Ok((d, n)) = ProcDirs::open(pid, &format!("/proc/{pid}/task/{tid}")) {
                if !n.is_empty() {
                    tracing::debug!(pid, tid, "leader exited; listing fds through a live thread");
                    (dirs, numbers) = (d, n);
                    break;
                }
            }
        }
    }
    if let Numbers::Listed(numbers) = &mut numbers {
        if !select.fds.is_empty() {
            numbers.retain(|n| select.fds.contains(&TargetFd(*n)));
        }
    }
    let ProcDirs {
        proc_dir,
        fd_dir,
        fdinfo_dir,
    } = dirs;

    // Each fd costs an open/read/close of its fdinfo (files add a readlink and a
    // stat), all in procfs and all independent, so large tables are split across
    // cores; small ones are read right here (a thread costs more than it saves, and
    // far more on a loaded host, where each new thread waits for a CPU). The table
    // is cut into blocks that the readers claim one at a time, so a reader that the
    // scheduler holds back leaves its share to the others instead of making them
    // wait at the end.
    let read_blocks = |blocks: &Blocks, socket_seen: Option<&mpsc::Sender<()>>| {
        let mut told = false;
        let mut reader = EntryReader {
            pid,
            fd_dir: &fd_dir,
            fdinfo_dir: &fdinfo_dir,
            devs_by_mount: HashMap::new(),
            pseudo_mounts: HashMap::new(),
        };
        // A reader of ranges moves its own directory position.
        let own_dir = match blocks.source {
            BlockSource::Listed(..) => None,
            BlockSource::Ranges { .. } => Some(
                openat(
                    &fd_dir,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| proc_error(pid, "open /proc/PID/fd", e))?,
            ),
        };
        let mut done = Vec::new();
        loop {
            let claimed = blocks
                .claim(own_dir.as_ref().map(|d| d.as_fd()))
                .map_err(|e| proc_error(pid, "read /proc/PID/fd", e))?;
            let Some((i, mut part)) = claimed else {
                break;
            };
            if !select.fds.is_empty() {
                part.retain(|n| select.fds.contains(&TargetFd(*n)));
            }
            let mut out = Vec::with_capacity(part.len());
            for &n in &part {
                let link = if select.by_link() {
                    let name = itoa(n);
                    match reader.link(&name)? {
                        Some(l) if select.link_may_match(&l) => Some(l),
                        _ => continue,
                    }
                } else {
                    None
                };
                if select.file.is_some() && !select.file_may_match(pid, fd_dir.as_fd(), &itoa(n))? {
                    continue;
                }
                if let Some(e) = reader.read(n, link)? {
                    if select.keeps(&e) {
                        if let (Some(tx), false, FdKind::Socket) = (socket_seen, told, e.kind) {
                            told = tx.send(()).is_ok();
                        }
                        out.push(e);
                    }
                }
            }
            done.push((i, out));
        }
        Ok::<_, Error>(done)
    };
    let mut preloaded = None;
    let (source, expected) = match &numbers {
        Numbers::Listed(all) => (BlockSource::Listed(all), all.len()),
        Numbers::Large(count) => (
            BlockSource::Ranges {
                tried_below: *count,
            },
            *count,
        ),
    };
    let mut fds = if expected <= PARALLEL_THRESHOLD {
        let one = Blocks::new(source, expected.max(1));
        let all = read_blocks(&one, None)?;
        all.into_iter().flat_map(|(_, part)| part).collect()
    } else {
        let workers = cores().min(MAX_WORKERS);
        let blocks = Blocks::new(source, BLOCK);
        // A large table of one process: its namespace's socket tables are read on
        // one more thread as soon as a reader meets the first socket (and never,
        // if none does), while the readers go on.
        let preload = select.sockets.is_none() && matches!(sockets, SocketSource::PerProcess);
        let (tx, rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let table = preload.then(|| {
                let proc_dir = &proc_dir;
                s.spawn(move || {
                    rx.recv()
                        .ok()
                        .map(|()| sockets::SocketTable::load(pid, proc_dir))
                })
            });
            // This thread is one of the readers.
            let helpers: Vec<_> = (1..workers)
                .map(|_| {
                    let tx = preload.then(|| tx.clone());
                    let blocks = &blocks;
                    s.spawn(move || read_blocks(blocks, tx.as_ref()))
                })
                .collect();
            let mine = read_blocks(&blocks, preload.then_some(&tx));
            drop(tx);
            let mut found = mine?;
            for h in helpers {
                found.extend(h.join().map_err(|_| worker_panicked(pid))??);
            }
            found.sort_unstable_by_key(|(i, _)| *i);
            let mut fds = Vec::with_capacity(expected);
            for (_, part) in found {
                fds.extend(part);
            }
            if let Some(t) = table {
                preloaded = t.join().map_err(|_| worker_panicked(pid))?.transpose()?;
            }
            Ok::<_, Error>(fds)
        })?
    };

    let held: Vec<(u64, TargetFd)> = fds
        .iter()
        .filter(|e| e.kind == FdKind::Socket)
        .filter_map(|e| Some((e.inode?, e.fd)))
        .collect();
    if !held.is_empty() {
        let resolve = |table: &sockets::SocketTable, e: &mut FdEntry| {
            if let Some(ino) = e.inode {
                e.socket = Some(table.lookup(ino, &fd_dir, e.fd));
            }
        };
        let socket_fds = fds.iter_mut().filter(|e| e.kind == FdKind::Socket);
        if let Some(found) = select.sockets {
            for e in socket_fds {
                e.socket = e.inode.and_then(|i| found.get(&i).cloned());
            }
        } else if let SocketSource::Shared(tables) = sockets {
            let table = tables.get(pid, &proc_dir, &fd_dir, &held)?;
            socket_fds.for_each(|e| resolve(&table, e));
        } else if let Some(found) = matches!(sockets, SocketSource::Listening)
            .then(|| listener_table(pid, &proc_dir))
            .flatten()
        {
            for e in socket_fds {
                e.socket = e.inode.and_then(|i| found.get(&i).cloned());
            }
        } else {
            let table = match preloaded {
                Some(t) => t,
                None => sockets::SocketTable::load_for(pid, &proc_dir, &fd_dir, &held)?,
            };
            describe_sockets(table, &mut fds, &fd_dir);
        }
    }

    if !target.is_alive() {
        return Err(Error::NoSuchProcess { pid });
    }
    Ok(Inventory { pid, fds })
}

/// Gives each socket fd its details from `table`, a table made for this listing
/// alone: each entry is moved out rather than copied (thousands of sockets in a
/// large table), and a socket held by several fds is copied from the first.
fn describe_sockets(table: sockets::SocketTable, fds: &mut [FdEntry], fd_dir: &OwnedFd) {
    let mut by_inode = table.into_map();
    let mut first_holder: HashMap<u64, usize> = HashMap::new();
    for i in 0..fds.len() {
        let (FdKind::Socket, Some(ino)) = (fds[i].kind, fds[i].inode) else {
            continue;
        };
        let info = match by_inode.remove(&ino) {
            Some(info) => {
                first_holder.insert(ino, i);
                info
            }
            None => match first_holder.get(&ino).and_then(|&j| fds[j].socket.clone()) {
                Some(info) => info,
                None => sockets::SocketTable::unknown(fd_dir, fds[i].fd),
            },
        };
        fds[i].socket = Some(info);
    }
}

/// Listening TCP, all UDP and all unix sockets of `pid`'s network namespace by
/// inode; `None` if any dump is refused.
fn listener_table(pid: Pid, proc_dir: &OwnedFd) -> Option<HashMap<u64, SocketInfo>> {
    sock_diag::socket_in(proc_dir)
        .and_then(|sock| sockets::diag_table(&sock, inet_diag::STATES_LISTEN))
        .map_err(|e| tracing::debug!(pid, error = %e, "sock_diag dumps unavailable; describing every held socket"))
        .ok()
}

/// The fd numbers of a table: listed up front, or, for a large one, only counted
/// (the readers list it range by range).
pub(crate) enum Numbers {
    Listed(Vec<i32>),
    Large(usize),
}

impl Numbers {
    fn is_empty(&self) -> bool {
        matches!(self, Numbers::Listed(v) if v.is_empty())
    }
}

pub(crate) enum BlockSource<'a> {
    /// Slices of a listing made up front.
    Listed(&'a [i32]),
    /// Ranges of numbers, each read by the reader that claims it. Those below
    /// `tried_below` (the table's fd count) are not listed: the reader tries
    /// every number in them. A table is usually dense up to its count, and
    /// listing an entry costs procfs about a third of what trying it costs, so
    /// this saves the listing; a hole costs a try that finds nothing (`ENOENT`).
    /// Ranges from the count on are listed (`getdents64`), which finds every fd
    /// past the holes; holes are bounded by the count, so a sparse table costs
    /// at most twice its fds.
    Ranges { tried_below: usize },
}

/// Where the readers of one table claim their next block of fd numbers, keyed so
/// that sorting the keys puts the blocks back in fd order.
pub(crate) struct Blocks<'a> {
    source: BlockSource<'a>,
    size: usize,
    /// The next block (Listed: its index; Ranges: its first number).
    next: AtomicUsize,
    /// Ranges: no fd at or past this number.
    end: AtomicUsize,
}

impl<'a> Blocks<'a> {
    pub(crate) fn new(source: BlockSource<'a>, size: usize) -> Self {
        Self {
            source,
            size,
            next: AtomicUsize::new(0),
            end: AtomicUsize::new(usize::MAX),
        }
    }

    /// The next block with at least one fd, or `None` when the table is done.
    /// `dir` is the caller's own handle on the fd directory (Ranges only).
    pub(crate) fn claim(
        &self,
        dir: Option<BorrowedFd<'_>>,
    ) -> rustix::io::Result<Option<(usize, Vec<i32>)>> {
        let (&BlockSource::Ranges { tried_below }, Some(dir)) = (&self.source, dir) else {
            let BlockSource::Listed(all) = self.source else {
                return Ok(None);
            };
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            return Ok(all.chunks(self.size).nth(i).map(|p| (i, p.to_vec())));
        };
        loop {
            let lo = self.next.fetch_add(self.size, Ordering::Relaxed);
            if lo >= self.end.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let hi = lo + self.size;
            if hi <= tried_below {
                let part = (lo..hi).filter_map(|n| i32::try_from(n).ok()).collect();
                return Ok(Some((lo / self.size, part)));
            }
            let (part, after) = crate::procfs::fd_numbers_in(dir, lo, hi)?;
            match after {
                None => {
                    self.end.fetch_min(hi, Ordering::Relaxed);
                }
                // Nothing between hi and the next fd: its range is the next worth
                // claiming (a sparse table skips its holes).
                Some(next) => {
                    self.next
                        .fetch_max(next - next % self.size, Ordering::Relaxed);
                }
            }
            if !part.is_empty() {
                return Ok(Some((lo / self.size, part)));
            }
        }
    }
}

/// `/proc/PID` (or `/proc/PID/task/TID`) and its `fd` and `fdinfo` directories.
pub(crate) struct ProcDirs {
    pub(crate) proc_dir: OwnedFd,
    pub(crate) fd_dir: OwnedFd,
    fdinfo_dir: OwnedFd,
}

impl ProcDirs {
    /// Opens the directories under `base` and lists the fd numbers, unless the
    /// table is large (Linux 6.2+ gives the count as the size of `fd`): then the
    /// readers list it range by range themselves.
    pub(crate) fn open(pid: Pid, base: &str) -> Result<(Self, Numbers)> {
        let dir_flags = OFlags::DIRECTORY | OFlags::CLOEXEC;
        let proc_dir = openat(
            rustix::fs::CWD,
            base,
            OFlags::PATH | dir_flags,
            Mode::empty(),
        )
        .map_err(|e| proc_error(pid, "open /proc/PID", e))?;
        let fd_dir = openat(&proc_dir, "fd", OFlags::RDONLY | dir_flags, Mode::empty())
            .map_err(|e| proc_error(pid, "open /proc/PID/fd", e))?;
        let fdinfo_dir = openat(&proc_dir, "fdinfo", OFlags::PATH | dir_flags, Mode::empty())
            .map_err(|e| proc_error(pid, "open /proc/PID/fdinfo", e))?;
        let count = rustix::fs::fstat(&fd_dir).map_or(0, |st| st.st_size);
        // Ranges rely on fd N being at offset N + 2: checked once, and a kernel
        // that says otherwise gets the full listing instead.
        let numbers = if usize::try_from(count).is_ok_and(|c| c > PARALLEL_THRESHOLD)
            && crate::procfs::fd_offsets_are_numbers(fd_dir.as_fd())
                .map_err(|e| proc_error(pid, "read /proc/PID/fd", e))?
        {
            Numbers::Large(count as usize)
        } else {
            Numbers::Listed(
                crate::procfs::numbered_entries(fd_dir.as_fd())
                    .map_err(|e| proc_error(pid, "read /proc/PID/fd", e))?,
            )
        };
        Ok((
            Self {
                proc_dir,
                fd_dir,
                fdinfo_dir,
            },
            numbers,
        ))
    }
}

/// Opens `pid` and lists its descriptors.
pub fn inventory_pid(pid: Pid) -> Result<Inventory> {
    inventory(&PidFd::open(pid)?)
}

/// Below this many fds, threads cost more than they save.
const PARALLEL_THRESHOLD: usize = 256;
/// The fds a reader claims at a time: small enough to even out readers that run at
/// different speeds, large enough that claiming costs nothing.
const BLOCK: usize = 128;
const MAX_WORKERS: usize = 4;

fn worker_panicked(pid: Pid) -> Error {
    Error::Io {
        op: "inventory worker",
        pid,
        fd: None,
        source: std::io::Error::other("worker thread panicked"),
    }
}

/// Whether the leader behind `fd_dir`, a table the kernel counted fds in (Linux
/// 6.2+), has exited while other threads live on: the kernel then counts no fd
/// in its directory, and the table those threads share is seen only through them.
pub(crate) fn leader_exited(fd_dir: BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd_dir).is_ok_and(|st| st.st_size == 0)
        && crate::procfs::has_other_threads(fd_dir)
}

/// A process whose pidfd is live but whose `/proc/PID` cannot be found is hidden
/// from us (`/proc` mounted with `hidepid=2` or `invisible`), not gone: the
/// caller may not read it, as when its files refuse us.
pub(crate) fn hidden_if_alive(target: &PidFd, e: Error) -> Error {
    match e {
        Error::NoSuchProcess { pid } if target.is_alive() => Error::PermissionDenied {
            pid,
            fd: None,
            op: "open /proc/PID",
            hint: "/proc hides the processes of other users from us (mounted with hidepid=2 or \
                   hidepid=invisible); ask as their user or as root"
                .into(),
        },
        e => e,
    }
}

pub(crate) fn proc_error(pid: Pid, op: &'static str, e: Errno) -> Error {
    match e {
        Errno::NOENT | Errno::SRCH => Error::NoSuchProcess { pid },
        Errno::ACCESS | Errno::PERM => Error::PermissionDenied {
            pid,
            fd: None,
            op,
            hint: permission_hint(pid),
        },
        e => Error::io(op, pid, None, e),
    }
}

struct EntryReader<'a> {
    pid: Pid,
    fd_dir: &'a OwnedFd,
    fdinfo_dir: &'a OwnedFd,
    /// Device numbers of mounts already seen, by mount id.
    devs_by_mount: HashMap<u64, Option<u64>>,
    /// Mount ids known to be sockfs or pipefs, with their link prefix.
    pseudo_mounts: HashMap<u64, &'static str>,
}

#[derive(Debug)]
pub(crate) struct FdInfo {
    pub(crate) pos: Option<u64>,
    pub(crate) flags: u32,
    pub(crate) mnt_id: Option<u64>,
    /// `ino:` (Linux 5.14+).
    pub(crate) ino: Option<u64>,
    /// `tty-index:` of a pty master (Linux 4.14+).
    pub(crate) tty_index: Option<u32>,
}

impl FdInfo {
    /// The fields we use from the text of `/proc/PID/fdinfo/N`; a field that is
    /// missing or unreadable stays unknown.
    pub(crate) fn parse(buf: &[u8]) -> FdInfo {
        let text = std::str::from_utf8(buf).unwrap_or("");
        let mut info = FdInfo {
            pos: None,
            flags: 0,
            mnt_id: None,
            ino: None,
            tty_index: None,
        };
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k {
                "pos" => info.pos = v.parse().ok(),
                "flags" => info.flags = u32::from_str_radix(v, 8).unwrap_or(0),
                "mnt_id" => info.mnt_id = v.parse().ok(),
                "ino" => info.ino = v.parse().ok(),
                "tty-index" => info.tty_index = v.parse().ok(),
                _ => {}
            }
        }
        info
    }
}

impl EntryReader<'_> {
    /// The target of `/proc/PID/fd/N` as bytes; `None` if the fd was closed.
    fn link(&self, name: &str) -> Result<Option<Vec<u8>>> {
        fd_link(self.pid, self.fd_dir.as_fd(), name)
    }

    /// Reads descriptor `n`; `link` when the caller already read it.
    fn read(&mut self, n: i32, link: Option<Vec<u8>>) -> Result<Option<FdEntry>> {
        let name = itoa(n);
        let Some(info) = self.fdinfo(&name)? else {
            return Ok(None);
        };
        // Sockets and pipes live on one internal mount each, and their link is just
        // "socket:[INO]" / "pipe:[INO]". Once a mount id is known to be one of those,
        // fdinfo's mnt_id and ino say everything readlink would, for one syscall less.
        let pseudo = info
            .mnt_id
            .and_then(|m| self.pseudo_mounts.get(&m).copied());
        let link_bytes = match (link, pseudo, info.ino) {
            (Some(l), _, _) => l,
            (None, Some(prefix), Some(ino)) => format!("{prefix}{ino}]").into_bytes(),
            (None, _, _) => match self.link(&name)? {
                Some(l) => l,
                None => return Ok(None),
            },
        };
        let (link, raw_link) = names::split_utf8(link_bytes);
        if pseudo.is_none() {
            if let (Some(mnt), Some(ino)) = (info.mnt_id, info.ino) {
                for prefix in ["socket:[", "pipe:["] {
                    if bracketed(&link, prefix) == Some(ino) {
                        self.pseudo_mounts.insert(mnt, prefix);
                    }
                }
            }
        }
        let fd = TargetFd(n);
        let flags = FdFlags {
            append: info.flags & O_APPEND_BIT != 0,
            nonblock: info.flags & O_NONBLOCK_BIT != 0,
            cloexec: info.flags & O_CLOEXEC_BIT != 0,
            raw: info.flags,
        };
        let access = if info.flags & O_PATH_BIT != 0 {
            Access::Path
        } else {
            match info.flags & 0o3 {
                0 => Access::Read,
                1 => Access::Write,
                _ => Access::ReadWrite,
            }
        };
        let mut e = FdEntry {
            fd,
            access,
            flags,
            kind: FdKind::Unknown,
            dev: None,
            rdev: None,
            inode: None,
            size: None,
            offset: info.pos,
            mnt_id: info.mnt_id,
            nlink: None,
            link: String::new(),
            link_bytes: None,
            path: None,
            path_bytes: None,
            deleted: false,
            anon: None,
            memfd: None,
            memfd_bytes: None,
            socket: None,
        };

        if let Some(ino) = bracketed(&link, "socket:[") {
            e.kind = FdKind::Socket;
            e.inode = Some(ino);
            e.dev = self.mount_dev(info.mnt_id, &name);
        } else if let Some(ino) = bracketed(&link, "pipe:[") {
            e.kind = FdKind::Pipe;
            e.inode = Some(ino);
            e.dev = self.mount_dev(info.mnt_id, &name);
        } else if let Some(kind) = link.strip_prefix("anon_inode:") {
            e.kind = FdKind::Anon;
            e.anon = Some(anon_kind(kind));
            // The inode comes from fdinfo and the device from the mount, so most
            // anonymous inodes need no stat at all.
            match (info.ino, info.mnt_id) {
                (Some(ino), Some(_)) => {
                    e.inode = Some(ino);
                    e.dev = self.mount_dev(info.mnt_id, &name);
                }
                _ => {
                    self.fill_from_stat(&mut e, &name);
                    e.kind = FdKind::Anon;
                }
            }
        } else {
            self.fill_from_stat(&mut e, &name);
            let raw = names::exact_str(&link, &raw_link);
            let (path, deleted_suffix) = match raw.strip_suffix(b" (deleted)") {
                Some(p) if !self.names_this_inode(raw, &e) => (p, true),
                _ => (raw, false),
            };
            if let Some(memfd) = path.strip_prefix(b"/memfd:") {
                e.kind = FdKind::Memfd;
                (e.memfd, e.memfd_bytes) = names::split_utf8_opt(memfd.to_vec());
                e.deleted = false;
            } else {
                e.deleted = e.deleted || deleted_suffix;
                if path.starts_with(b"/") {
                    (e.path, e.path_bytes) = names::split_utf8_opt(path.to_vec());
                }
            }
        }
        e.link_bytes = raw_link;
        e.link = link;
        Ok(Some(e))
    }

    fn fdinfo(&self, name: &str) -> Result<Option<FdInfo>> {
        let file = match openat(
            self.fdinfo_dir,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(f) => f,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(proc_error(self.pid, "open /proc/PID/fdinfo/N", e)),
        };
        // The fields we need are the first lines; the rest (epoll targets, inotify
        // watches) can be long and is not needed.
        let mut buf = [0u8; 512];
        let len = loop {
            match rustix::io::read(&file, &mut buf) {
                Ok(n) => break n,
                Err(Errno::INTR) => continue,
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(proc_error(self.pid, "read /proc/PID/fdinfo/N", e)),
            }
        };
        Ok(Some(FdInfo::parse(&buf[..len])))
    }

    fn fill_from_stat(&self, e: &mut FdEntry, name: &str) {
        let Ok(st) = crate::statx::cached_at(self.fd_dir, name) else {
            return;
        };
        e.kind = match st.file_type() {
            libc::S_IFREG => FdKind::File,
            libc::S_IFDIR => FdKind::Dir,
            libc::S_IFCHR => FdKind::Chr,
            libc::S_IFBLK => FdKind::Blk,
            libc::S_IFIFO => FdKind::Fifo,
            libc::S_IFSOCK => FdKind::Socket,
            libc::S_IFLNK => FdKind::Symlink,
            _ => FdKind::Unknown,
        };
        e.dev = Some(devstr(st.dev));
        e.inode = Some(st.ino);
        if matches!(e.kind, FdKind::Chr | FdKind::Blk) {
            e.rdev = Some(devstr(st.rdev));
        }
        if matches!(e.kind, FdKind::File | FdKind::Dir) {
            e.size = Some(st.size);
        }
        e.nlink = Some(st.nlink);
        if e.kind == FdKind::File && st.nlink == 0 {
            e.deleted = true;
        }
    }

    /// Whether `path`, the whole link, is a name of `e`'s inode: then a
    /// " (deleted)" at its end belongs to the name, not to the kernel. The link is
    /// written from our root when the file is reachable from it (a chrooted
    /// target), else from the root of the target's mount namespace, so both are
    /// asked; the inode check rules out a wrong answer from either. Only asked of
    /// inodes that still have a link, so unlinked files cost nothing.
    ///
    /// The name is walked through the kernel's caches first
    /// ([`crate::statx::cached_walk`]). Where they cannot tell, it is walked
    /// again one name at a time ([`walk_local`]), a name the caches cannot give
    /// looked up in full only in a directory on a local mount; a mount whose
    /// server may not answer (FUSE, NFS, CIFS, 9p, Ceph, autofs, and overlay
    /// and other stacked file systems, whose layers may be any of these) ends
    /// the walk there, and the suffix is then taken for the kernel's, as for a
    /// file that was unlinked (whose name with the suffix is not cached either).
    /// Local file systems can leave the cached walk with everything cached
    /// (sysfs and cgroupfs always do; a directory's ACL not read yet does), and
    /// there the second walk asks nothing of a server.
    fn names_this_inode(&self, path: &[u8], e: &FdEntry) -> bool {
        // Links are written from a root; anything else is not a name to walk.
        if e.nlink.is_none_or(|n| n == 0) || !path.starts_with(b"/") {
            return false;
        }
        let same =
            |st: crate::statx::Attrs| Some(devstr(st.dev)) == e.dev && Some(st.ino) == e.inode;
        // From our root, in our mount namespace, then from the target's root,
        // in its namespace (reached through procfs alone: an O_PATH open calls
        // no file system code, and the walk starts past it).
        if self.name_is(None, path, same) {
            return true;
        }
        let Ok(root) = openat(self.fd_dir, "../root", Self::ROOT_FLAGS, Mode::empty()) else {
            return false;
        };
        self.name_is(Some(&root), path, same)
    }

    const ROOT_FLAGS: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

    /// Whether `path`, walked from the target's `root` (ours where `None`), is
    /// a file `same` accepts; see [`Self::names_this_inode`].
    fn name_is(
        &self,
        root: Option<&OwnedFd>,
        path: &[u8],
        same: impl Fn(crate::statx::Attrs) -> bool,
    ) -> bool {
        let in_root = root.is_some();
        let dir = root.map_or(rustix::fs::CWD, |r| r.as_fd());
        match crate::statx::cached_walk(dir, path, in_root) {
            Ok(st) => same(st),
            Err(Errno::AGAIN) => {
                // Our root is opened only now: the cached walk above needs none.
                let ours;
                let root = match root {
                    Some(r) => r,
                    None => match rustix::fs::open("/", Self::ROOT_FLAGS, Mode::empty()) {
                        Ok(fd) => {
                            ours = fd;
                            &ours
                        }
                        Err(_) => return false,
                    },
                };
                let mountinfo = || {
                    if in_root {
                        read_mountinfo(self.fd_dir.as_fd(), "../mountinfo")
                    } else {
                        read_mountinfo(rustix::fs::CWD, "/proc/self/mountinfo")
                    }
                };
                let found = walk_local(root, path, &mountinfo);
                if found.is_none() {
                    tracing::debug!(
                        pid = self.pid,
                        "{} is not cached and its walk meets a mount that may wait for a \
                         server; its \" (deleted)\" is taken for the kernel's",
                        String::from_utf8_lossy(path)
                    );
                }
                found.is_some_and(same)
            }
            Err(_) => false,
        }
    }

    /// The device of everything on one mount is the same, so pseudo file systems
    /// (sockfs, pipefs, anon_inodefs, pidfs) are stat'ed once per mount.
    fn mount_dev(&mut self, mnt_id: Option<u64>, name: &str) -> Option<String> {
        let fd_dir = self.fd_dir;
        let lookup = || crate::statx::cached_at(fd_dir, name).ok().map(|st| st.dev);
        let dev = match mnt_id {
            Some(m) => *self.devs_by_mount.entry(m).or_insert_with(lookup),
            None => lookup(),
        };
        dev.map(devstr)
    }
}

/// The target of `/proc/PID/fd/N` as bytes; `None` if the fd was closed, an error
/// if the process may not be read.
fn fd_link(pid: Pid, fd_dir: BorrowedFd<'_>, name: &str) -> Result<Option<Vec<u8>>> {
    match readlinkat(fd_dir, name, Vec::new()) {
        Ok(l) => Ok(Some(l.into_bytes())),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(proc_error(pid, "readlink /proc/PID/fd/N", e)),
    }
}

pub(crate) fn bracketed(link: &str, prefix: &str) -> Option<u64> {
    link.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

pub(crate) fn anon_kind(raw: &str) -> String {
    let k = raw.trim_start_matches('[').trim_end_matches(']');
    match k {
        "eventpoll" => "epoll".into(),
        k if k.starts_with("bpf") => "bpf".into(),
        k => k.to_string(),
    }
}

/// The whole of a `mountinfo` file, `None` if it cannot be read.
fn read_mountinfo(dir: BorrowedFd<'_>, path: &str) -> Option<Vec<u8>> {
    let file = openat(dir, path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(file), &mut text).ok()?;
    Some(text)
}

/// The attributes of `path` walked from `root` one name at a time, or `None`
/// where the walk would have to wait for a server, or fails. Each name is
/// looked up from the caches first (`RESOLVE_CACHED`: in RCU mode no file
/// system can wait, whatever its kind, mount crossings included). A name the
/// caches cannot give is looked up in full only in a directory whose mount is
/// local and has no autofs mount on its mount points (autofs can wait for its
/// daemon as a walk steps onto it), without crossing mounts
/// (`RESOLVE_NO_XDEV`); a mount point met then is stepped onto in full, and the
/// mount reached is checked like any other before a name is looked up in it in
/// full. No symbolic link is followed. A directory's mount is checked by its id
/// through the descriptor that pins it, in a table (`mountinfo`, of the
/// namespace the walk is made in) read after that, so the id cannot name a
/// mount made since; a directory renamed or swapped meanwhile changes where
/// the walk goes, never which file system answers a lookup. Without `openat2`
/// (before Linux 5.6) nothing is walked.
fn walk_local(
    root: &OwnedFd,
    path: &[u8],
    mountinfo: &dyn Fn() -> Option<Vec<u8>>,
) -> Option<crate::statx::Attrs> {
    use rustix::fs::{openat2, ResolveFlags};
    // A directory a name may be looked up in full in: on a local mount with no
    // autofs on its mount points.
    let lookup_safe = |dir: BorrowedFd<'_>| {
        crate::statx::mount_id(dir).is_some_and(|id| {
            mountinfo().is_some_and(|t| mount_is_local(&t, id) && !autofs_on(&t, id))
        })
    };
    let step = |dir: BorrowedFd<'_>, name: &[u8], is_dir: bool| -> Option<OwnedFd> {
        let path = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let flags = if is_dir {
            path | OFlags::DIRECTORY
        } else {
            path
        };
        let base = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
        match openat2(dir, name, flags, Mode::empty(), base | ResolveFlags::CACHED) {
            Ok(fd) => return Some(fd),
            // EINVAL: no RESOLVE_CACHED (Linux 5.6 to 5.11).
            Err(Errno::AGAIN | Errno::INVAL) => {}
            Err(_) => return None,
        }
        if !lookup_safe(dir) {
            return None;
        }
        // Without O_DIRECTORY no automount is triggered: before Linux 6.17 a
        // RESOLVE_NO_XDEV lookup still walked onto the mounts there before
        // giving up.
        let fd = match openat2(dir, name, path, Mode::empty(), base | ResolveFlags::NO_XDEV) {
            Ok(fd) => fd,
            // A mount point in a local directory with no autofs on its mount
            // points: crossing onto it calls no file system code but the
            // mounted one's weak revalidation of its root (9p with a cache,
            // overlay over such), a limit docs/inventory.md states.
            Err(Errno::XDEV) => openat2(dir, name, path, Mode::empty(), base).ok()?,
            Err(_) => return None,
        };
        // Not a directory after all: the next step's lookup in it fails.
        Some(fd)
    };
    let names: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|n| !n.is_empty())
        .collect();
    let (last, dirs) = names.split_last()?;
    let mut cur: Option<OwnedFd> = None;
    for name in dirs {
        let dir = cur.as_ref().map_or(root.as_fd(), |f| f.as_fd());
        cur = Some(step(dir, name, true)?);
    }
    let dir = cur.as_ref().map_or(root.as_fd(), |f| f.as_fd());
    crate::statx::cached(step(dir, last, false)?).ok()
}

/// Whether a `mountinfo` table holds an autofs mount on a mount point in mount
/// `id`, or stacked on a mount there: what a lookup or a crossing of a mount
/// point in `id` may step through (before Linux 6.17 a `RESOLVE_NO_XDEV`
/// lookup too, before it gives up).
fn autofs_on(mountinfo: &[u8], id: u64) -> bool {
    let mounts: Vec<_> = mountinfo
        .split(|&b| b == b'\n')
        .filter_map(mountinfo_fields)
        .collect();
    // The mounts on `id`, then those stacked on them at the same point.
    let mut stack: Vec<(u64, &[u8])> = Vec::new();
    for &(mnt, up, point, fstype) in &mounts {
        if up == id && mnt != id {
            if fstype == b"autofs" {
                return true;
            }
            stack.push((mnt, point));
        }
    }
    while let Some((under, at)) = stack.pop() {
        for &(mnt, up, point, fstype) in &mounts {
            if up == under && point == at && mnt != under {
                if fstype == b"autofs" {
                    return true;
                }
                stack.push((mnt, point));
            }
        }
    }
    false
}

/// Whether mount `id` of a `mountinfo` table is of a file system that answers
/// without a server; a mount not in the table is not.
fn mount_is_local(mountinfo: &[u8], id: u64) -> bool {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(mountinfo_fields)
        .find(|&(mnt, _, _, _)| mnt == id)
        .is_some_and(|(_, _, _, fstype)| fstype_is_local(fstype))
}

/// Mount id, parent mount id, mount point (as written, escaped) and file
/// system type of one `mountinfo` line. The type is the
/// first field after the " - " separator: optional fields come before it, and
/// the escaped paths hold no space.
fn mountinfo_fields(line: &[u8]) -> Option<(u64, u64, &[u8], &[u8])> {
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let mut fields = line[..sep].split(|&b| b == b' ');
    let mut number = || std::str::from_utf8(fields.next()?).ok()?.parse().ok();
    let (id, parent) = (number()?, number()?);
    // Then device, root, and the mount point (escaped: no space in it).
    let point = fields.nth(2)?;
    let fstype = line[sep + 3..].split(|&b| b == b' ').next()?;
    Some((id, parent, point, fstype))
}

/// File systems known to answer lookups from this host alone: disk, memory
/// and kernel file systems. Any other (FUSE, NFS, CIFS, 9p, Ceph and every
/// networked or daemon-served one, autofs, which mounts on first use, overlay
/// and other stacked ones, whose layers may be any of these, and any type not
/// named here) may have to wait for a server.
fn fstype_is_local(fstype: &[u8]) -> bool {
    const LOCAL: &[&[u8]] = &[
        b"ext2",
        b"ext3",
        b"ext4",
        b"xfs",
        b"btrfs",
        b"f2fs",
        b"jfs",
        b"reiserfs",
        b"nilfs2",
        b"zfs",
        b"bcachefs",
        b"vfat",
        b"msdos",
        b"exfat",
        b"ntfs3",
        b"hfsplus",
        b"udf",
        b"iso9660",
        b"squashfs",
        b"tmpfs",
        b"ramfs",
        b"devtmpfs",
        b"proc",
        b"sysfs",
        b"cgroup",
        b"cgroup2",
        b"devpts",
        b"mqueue",
        b"hugetlbfs",
        b"debugfs",
        b"tracefs",
        b"securityfs",
        b"pstore",
        b"bpf",
        b"configfs",
        b"efivarfs",
        b"binfmt_misc",
        b"fusectl",
        b"nsfs",
        b"rpc_pipefs",
        b"selinuxfs",
    ];
    LOCAL.contains(&fstype)
}

fn devstr(dev: u64) -> String {
    format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))
}

/// Formats a small non-negative integer without going through `fmt`.
fn itoa(mut n: i32) -> String {
    if n == 0 {
        return "0".into();
    }
    let mut digits = [0u8; 12];
    let mut i = digits.len();
    while n > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    String::from_utf8_lossy(&digits[i..]).into_owned()
}

/// The cores this process may run on, for sizing its thread pools: one
/// `sched_getaffinity`, where std's `available_parallelism` also reads the
/// cgroup's CPU quota files at every call (about ten system calls).
pub(crate) fn cores() -> usize {
    rustix::thread::sched_getaffinity(None).map_or(1, |set| set.count().max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[u8] = b"\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /mnt/s rw,nosuid shared:7 master:2 - fuse.sshfs host:/ rw,user_id=0
41 22 0:36 / /srv/my\\040data rw - nfs4 srv:/x rw,vers=4.2
42 22 0:37 / /tmp rw - tmpfs tmpfs rw
43 42 0:38 / /tmp/o rw - overlay overlay rw,lowerdir=/a
";

    /// Id and type come from either side of the separator, whatever optional
    /// fields come before it; a mount is local by its type, and one not in
    /// the table is not.
    #[test]
    fn mounts_are_local_by_their_type_in_the_table() {
        let lines: Vec<_> = TABLE
            .split(|&b| b == b'\n')
            .filter_map(mountinfo_fields)
            .collect();
        assert_eq!(
            lines[1],
            (40, 22, b"/mnt/s".as_slice(), b"fuse.sshfs".as_slice())
        );
        assert_eq!(
            lines[2],
            (41, 22, b"/srv/my\\040data".as_slice(), b"nfs4".as_slice())
        );
        // autofs on /tmp/a, in /tmp's mount; and stacked on /tmp itself.
        let on_tmp = [TABLE, b"44 42 0:39 / /tmp/a rw - autofs systemd-1 rw\n"].concat();
        assert!(autofs_on(&on_tmp, 42) && !autofs_on(&on_tmp, 22) && !autofs_on(TABLE, 22));
        let stacked = [TABLE, b"45 42 0:40 / /tmp rw - autofs systemd-1 rw\n"].concat();
        assert!(autofs_on(&stacked, 22) && !autofs_on(&stacked, 40));
        assert!(mount_is_local(TABLE, 22) && mount_is_local(TABLE, 42));
        for id in [40, 41, 43, 99] {
            assert!(!mount_is_local(TABLE, id), "{id}");
        }
        for remote in [
            "fuse",
            "fuse.sshfs",
            "fuseblk.ntfs",
            "nfs4",
            "9p",
            "overlay",
            "autofs",
            "wekafs",
        ] {
            assert!(!fstype_is_local(remote.as_bytes()), "{remote}");
        }
        for local in [
            "ext4", "xfs", "btrfs", "tmpfs", "sysfs", "cgroup2", "fusectl",
        ] {
            assert!(fstype_is_local(local.as_bytes()), "{local}");
        }
    }

    /// `mountinfo` with the mount `of` (a path) made FUSE.
    fn as_fuse(of: &str) -> Vec<u8> {
        let fd = rustix::fs::open(of, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).expect("open");
        let id = crate::statx::mount_id(&fd).expect("mount id").to_string();
        let table = read_mountinfo(rustix::fs::CWD, "/proc/self/mountinfo").expect("mountinfo");
        String::from_utf8_lossy(&table)
            .lines()
            .map(|l| match l.split_once(" - ") {
                Some((head, _)) if head.split(' ').next() == Some(id.as_str()) => {
                    format!("{head} - fuse.test x rw")
                }
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes()
    }

    /// The walk one name at a time finds what `lstat` finds. A name the caches
    /// give is taken whatever the mount (here /dev/null, with /dev's mount
    /// made FUSE in the table): no file system can wait in such a lookup. A
    /// name they cannot give is looked up in full only in a local mount: sysfs
    /// answers no cached walk, so /sys/fs is found through the real table and
    /// not through one where sysfs is FUSE.
    #[test]
    fn walk_local_looks_names_up_in_full_in_local_mounts_only() {
        use std::os::unix::fs::MetadataExt;
        let root =
            rustix::fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).expect("open /");
        let ours = || read_mountinfo(rustix::fs::CWD, "/proc/self/mountinfo");
        for path in ["/dev/null", "/sys/fs"] {
            let want = std::fs::symlink_metadata(path).expect("lstat");
            let got = walk_local(&root, path.as_bytes(), &ours).expect("a local walk");
            assert_eq!((got.dev, got.ino), (want.dev(), want.ino()), "{path}");
        }
        let dev_fuse = as_fuse("/dev");
        let got = walk_local(&root, b"/dev/null", &|| Some(dev_fuse.clone()));
        assert!(got.is_some(), "a cached name in a mount called FUSE");
        let sys_fuse = as_fuse("/sys");
        let got = walk_local(&root, b"/sys/fs", &|| Some(sys_fuse.clone()));
        assert_eq!(got, None, "a full lookup in a mount called FUSE");
    }
}
