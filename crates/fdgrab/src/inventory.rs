//! A read-only listing of a process's descriptors, built from `/proc/PID/fd`,
//! `/proc/PID/fdinfo` and the target's own network namespace.
//!
//! Listing never changes the target: nothing is read from its files (offsets stay
//! put) and no socket is grabbed. `pidfd_getfd` on a socket would rewrite its
//! cgroup-v1 net_cls/net_prio ids to ours, so sockets are resolved through
//! `/proc/PID/net/*` and `NETLINK_SOCK_DIAG` instead.

pub(crate) mod inet_diag;
mod sockets;
pub(crate) mod unix_diag;

pub(crate) use sockets::diag_table;
pub use sockets::{Endpoint, SocketInfo};

use crate::error::{Error, Result};
use crate::pidfd::PidFd;
use crate::{access::permission_hint, Pid, TargetFd};
use rustix::fs::{openat, readlinkat, statat, AtFlags, Dir, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;
use std::collections::HashMap;
use std::os::fd::OwnedFd;

/// What kind of object a descriptor refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FdKind {
    /// A regular file (memfds are reported as [`FdKind::Memfd`]).
    File,
    Dir,
    /// Character device.
    Chr,
    /// Block device.
    Blk,
    /// A named FIFO in the file system.
    Fifo,
    /// An anonymous pipe (`pipe(2)`).
    Pipe,
    Socket,
    /// An anonymous inode: eventfd, epoll, timerfd, signalfd, pidfd, inotify, bpf, io_uring, ...
    Anon,
    /// A `memfd_create(2)` file.
    Memfd,
    Symlink,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[serde(rename = "r")]
    Read,
    #[serde(rename = "w")]
    Write,
    #[serde(rename = "rw")]
    ReadWrite,
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
    pub append: bool,
    pub nonblock: bool,
    pub cloexec: bool,
    /// The raw `flags:` value from fdinfo (octal there), for anything not named above.
    pub raw: u32,
}

/// One descriptor of the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FdEntry {
    pub fd: TargetFd,
    pub access: Access,
    pub flags: FdFlags,
    #[serde(rename = "type")]
    pub kind: FdKind,
    /// `major:minor` of the device holding the inode.
    pub dev: Option<String>,
    /// `major:minor` of a character or block device itself.
    pub rdev: Option<String>,
    pub inode: Option<u64>,
    /// Size in bytes for regular files and memfds.
    pub size: Option<u64>,
    /// The file position (`pos:` in fdinfo).
    pub offset: Option<u64>,
    pub mnt_id: Option<u64>,
    /// What `/proc/PID/fd/N` points at, exactly as the kernel says it.
    pub link: String,
    /// The file's path for path-backed descriptors, without the " (deleted)" suffix.
    pub path: Option<String>,
    /// The file was unlinked while open (it can still be recovered through the fd).
    pub deleted: bool,
    /// For anonymous inodes: eventfd, epoll, timerfd, signalfd, pidfd, inotify,
    /// fanotify, bpf, io_uring, userfaultfd, ... (`bpf-map`-like names keep their detail
    /// in `link`).
    pub anon: Option<String>,
    /// For memfds: the name given to `memfd_create`.
    pub memfd: Option<String>,
    pub socket: Option<SocketInfo>,
}

impl FdEntry {
    /// A one-line human description, as in `lsof`'s NAME column.
    pub fn display_name(&self) -> String {
        match (&self.socket, self.kind) {
            (Some(s), _) => s.describe(),
            (None, FdKind::Pipe) => self.link.clone(),
            (None, FdKind::Memfd) => {
                format!("memfd:{}", self.memfd.as_deref().unwrap_or(""))
            }
            _ => self.link.clone(),
        }
    }
}

/// The descriptors of one process.
#[derive(Clone, Debug, Serialize)]
pub struct Inventory {
    pub pid: Pid,
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
pub fn inventory(target: &PidFd) -> Result<Inventory> {
    let pid = target.pid();
    let (mut dirs, mut numbers) = ProcDirs::open(pid, &format!("/proc/{pid}"))?;
    // Once the thread-group leader has exited, /proc/PID/fd is empty even though
    // the other threads still share a live fd table; read it through one of them.
    if numbers.is_empty() && target.is_alive() {
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
    let ProcDirs {
        proc_dir,
        fd_dir,
        fdinfo_dir,
    } = dirs;

    // Each fd costs a readlink and an open/read/close of its fdinfo, all in procfs
    // and all independent, so large tables are split across cores. The socket
    // tables are read meanwhile on one more thread.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_WORKERS);
    let chunk = numbers.len().div_ceil(workers).max(PARALLEL_THRESHOLD);
    let (mut fds, table) = std::thread::scope(|s| {
        let table = s.spawn(|| sockets::SocketTable::load(pid, &proc_dir));
        let handles: Vec<_> = numbers
            .chunks(chunk.max(1))
            .map(|part| {
                let (fd_dir, fdinfo_dir) = (&fd_dir, &fdinfo_dir);
                s.spawn(move || {
                    let mut reader = EntryReader {
                        pid,
                        fd_dir,
                        fdinfo_dir,
                        devs_by_mount: HashMap::new(),
                        pseudo_mounts: HashMap::new(),
                    };
                    let mut out = Vec::with_capacity(part.len());
                    for &n in part {
                        if let Some(e) = reader.read(n)? {
                            out.push(e);
                        }
                    }
                    Ok::<_, Error>(out)
                })
            })
            .collect();
        let mut fds = Vec::with_capacity(numbers.len());
        for h in handles {
            fds.extend(h.join().map_err(|_| worker_panicked(pid))??);
        }
        let table = table.join().map_err(|_| worker_panicked(pid));
        Ok::<_, Error>((fds, table))
    })?;

    if fds.iter().any(|e| e.kind == FdKind::Socket) {
        let table = table??;
        for e in fds.iter_mut().filter(|e| e.kind == FdKind::Socket) {
            if let Some(ino) = e.inode {
                e.socket = Some(table.lookup(ino, &fd_dir, e.fd));
            }
        }
    }

    if !target.is_alive() {
        return Err(Error::NoSuchProcess { pid });
    }
    Ok(Inventory { pid, fds })
}

/// `/proc/PID` (or `/proc/PID/task/TID`) and its `fd` and `fdinfo` directories.
pub(crate) struct ProcDirs {
    pub(crate) proc_dir: OwnedFd,
    pub(crate) fd_dir: OwnedFd,
    fdinfo_dir: OwnedFd,
}

impl ProcDirs {
    /// Opens the directories under `base` and returns the sorted fd numbers.
    pub(crate) fn open(pid: Pid, base: &str) -> Result<(Self, Vec<i32>)> {
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
        let mut numbers = Vec::new();
        let dir = Dir::read_from(&fd_dir).map_err(|e| proc_error(pid, "read /proc/PID/fd", e))?;
        for entry in dir {
            let entry = entry.map_err(|e| proc_error(pid, "read /proc/PID/fd", e))?;
            if let Some(n) = entry
                .file_name()
                .to_str()
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
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
const MAX_WORKERS: usize = 4;

fn worker_panicked(pid: Pid) -> Error {
    Error::Io {
        op: "inventory worker",
        pid,
        fd: None,
        source: std::io::Error::other("worker thread panicked"),
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

struct FdInfo {
    pos: Option<u64>,
    flags: u32,
    mnt_id: Option<u64>,
    /// `ino:` (Linux 5.14+).
    ino: Option<u64>,
}

impl EntryReader<'_> {
    fn read(&mut self, n: i32) -> Result<Option<FdEntry>> {
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
        let link = match (pseudo, info.ino) {
            (Some(prefix), Some(ino)) => format!("{prefix}{ino}]"),
            _ => match readlinkat(self.fd_dir, name.as_str(), Vec::new()) {
                Ok(l) => l.to_string_lossy().into_owned(),
                Err(Errno::NOENT) => return Ok(None),
                Err(e) => return Err(proc_error(self.pid, "readlink /proc/PID/fd/N", e)),
            },
        };
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
            link: String::new(),
            path: None,
            deleted: false,
            anon: None,
            memfd: None,
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
            let (path, deleted_suffix) = match link.strip_suffix(" (deleted)") {
                Some(p) => (p.to_string(), true),
                None => (link.clone(), false),
            };
            if let Some(memfd) = path.strip_prefix("/memfd:") {
                e.kind = FdKind::Memfd;
                e.memfd = Some(memfd.to_string());
                e.deleted = false;
            } else {
                e.deleted = e.deleted || deleted_suffix;
                if path.starts_with('/') {
                    e.path = Some(path);
                }
            }
        }
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
        let text = std::str::from_utf8(&buf[..len]).unwrap_or("");
        let mut info = FdInfo {
            pos: None,
            flags: 0,
            mnt_id: None,
            ino: None,
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
                _ => {}
            }
        }
        Ok(Some(info))
    }

    fn fill_from_stat(&self, e: &mut FdEntry, name: &str) {
        let Ok(st) = statat(self.fd_dir, name, AtFlags::empty()) else {
            return;
        };
        let mode = st.st_mode & libc::S_IFMT;
        e.kind = match mode {
            libc::S_IFREG => FdKind::File,
            libc::S_IFDIR => FdKind::Dir,
            libc::S_IFCHR => FdKind::Chr,
            libc::S_IFBLK => FdKind::Blk,
            libc::S_IFIFO => FdKind::Fifo,
            libc::S_IFSOCK => FdKind::Socket,
            libc::S_IFLNK => FdKind::Symlink,
            _ => FdKind::Unknown,
        };
        e.dev = Some(devstr(st.st_dev));
        e.inode = Some(st.st_ino);
        if matches!(e.kind, FdKind::Chr | FdKind::Blk) {
            e.rdev = Some(devstr(st.st_rdev));
        }
        if matches!(e.kind, FdKind::File | FdKind::Dir) {
            e.size = Some(st.st_size as u64);
        }
        if e.kind == FdKind::File && st.st_nlink == 0 {
            e.deleted = true;
        }
    }

    /// The device of everything on one mount is the same, so pseudo file systems
    /// (sockfs, pipefs, anon_inodefs, pidfs) are stat'ed once per mount.
    fn mount_dev(&mut self, mnt_id: Option<u64>, name: &str) -> Option<String> {
        let fd_dir = self.fd_dir;
        let lookup = || {
            statat(fd_dir, name, AtFlags::empty())
                .ok()
                .map(|st| st.st_dev)
        };
        let dev = match mnt_id {
            Some(m) => *self.devs_by_mount.entry(m).or_insert_with(lookup),
            None => lookup(),
        };
        dev.map(devstr)
    }
}

pub(crate) fn bracketed(link: &str, prefix: &str) -> Option<u64> {
    link.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

fn anon_kind(raw: &str) -> String {
    let k = raw.trim_start_matches('[').trim_end_matches(']');
    match k {
        "eventpoll" => "epoll".into(),
        k if k.starts_with("bpf") => "bpf".into(),
        k => k.to_string(),
    }
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
