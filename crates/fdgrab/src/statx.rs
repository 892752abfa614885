//! `statx(2)` with `AT_STATX_DONT_SYNC`: a file's attributes as the kernel has
//! them, without asking the file's server.
//!
//! Looking at *other* processes' files (`ls`, a steal's identity check, the
//! terminal a job runs on) must not wait on their file systems. A `stat` of a
//! file on FUSE whose cached attributes have expired sends `GETATTR` to the FUSE
//! server, and a server that never answers (a dead sshfs, a stuck lxcfs) holds the
//! caller for good: once the server has read the request, not even `SIGKILL` ends
//! the wait. NFS and Ceph likewise go to the server. With `AT_STATX_DONT_SYNC`
//! they answer from the inode as it is cached (CIFS too, as long as the size is
//! not asked for); device, inode number, type and rdev never change for an
//! inode, and size and link count are what this host last saw. Local file
//! systems answer the same either way. 9p mounted without `cache=loose` or
//! `cache=meta` asks its server whatever the flag, and CIFS does for a file
//! unlinked on this host.
//!
//! The call is refused in some sandboxes (older container seccomp profiles fail
//! `statx` with `EPERM`, old kernels lack it): then `fstatat`, which may wait,
//! is what is left, and is used from then on.

use rustix::fs::{AtFlags, StatxFlags};
use rustix::io::{Errno, Result};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The attributes `fdgrab` compares and shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// The device of the file system holding the inode, encoded as `st_dev`.
    pub dev: u64,
    /// The inode number.
    pub ino: u64,
    /// Type and permission bits, as `st_mode`.
    pub mode: u32,
    /// Links to the inode: 0 for an unlinked file.
    pub nlink: u64,
    /// Size in bytes, as this host last saw it.
    pub size: u64,
    /// The device a character or block special file stands for.
    pub rdev: u64,
}

impl Attrs {
    /// The file type bits (`S_IFMT`) of the mode.
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
}

/// Set once `statx` was refused; every later call goes to `fstatat`.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// The size is not asked for, though it is used: the kernel copies every basic
/// field whatever the mask, and CIFS waits for the file's pending writes to
/// reach its server when the size is asked for (`filemap_fdatawait`, which no
/// signal ends), even with `AT_STATX_DONT_SYNC`.
const WANTED: StatxFlags = StatxFlags::TYPE
    .union(StatxFlags::INO)
    .union(StatxFlags::NLINK);

/// The attributes of `path` relative to `dir`, following a final link (the
/// magic links of `/proc/PID/fd/` included), from the kernel's cache.
pub fn cached_at(dir: impl AsFd, path: impl rustix::path::Arg + Copy) -> Result<Attrs> {
    stat(dir.as_fd(), path, AtFlags::empty())
}

/// The attributes of the open file `fd`, from the kernel's cache.
pub fn cached(fd: impl AsFd) -> Result<Attrs> {
    stat(fd.as_fd(), "", AtFlags::EMPTY_PATH)
}

/// Set once `openat2` with `RESOLVE_CACHED` was found refused; [`cached_walk`]
/// then cannot tell anything.
static WALK_REFUSED: AtomicBool = AtomicBool::new(false);

/// The attributes of the file `path` names (the final component itself, not
/// what it may point to), looked up by name relative to `dir` only as far as
/// the kernel's caches go. With `in_root`, `dir` is the root the walk cannot
/// leave (absolute names and `..` stay under it).
///
/// `Err(EAGAIN)`: the caches could not tell. That is a name not cached, a
/// cached entry due to be checked with its file system (a FUSE or NFS entry
/// past its timeout), but also, with everything cached, a file system that
/// never answers from its caches alone (sysfs and cgroupfs) or a permission
/// check that would have to read an ACL from disk; and a kernel or sandbox
/// that refuses such a walk. The caller decides whether a full walk
/// (by other means: `ls` walks one name at a time through local mounts) is
/// safe for it.
///
/// `openat2(O_PATH, RESOLVE_CACHED)` (Linux 5.12): the walk stays in RCU
/// mode, where a file system can only answer from its cache, and an `O_PATH`
/// open calls no file system code. Refused means `EINVAL` or `ENOSYS` (an
/// older kernel) or `EPERM` (a sandbox), each confirmed on `/`, since a name
/// can give `EINVAL` of its own.
pub fn cached_walk(
    dir: impl AsFd,
    path: impl rustix::path::Arg + Copy,
    in_root: bool,
) -> Result<Attrs> {
    use rustix::fs::ResolveFlags;
    if WALK_REFUSED.load(Ordering::Relaxed) {
        return Err(Errno::AGAIN);
    }
    let dir = dir.as_fd();
    let mut resolve = ResolveFlags::CACHED;
    if in_root {
        resolve |= ResolveFlags::IN_ROOT;
    }
    // A rename elsewhere while walking in RCU mode also ends the walk with
    // EAGAIN: one more try tells that apart from a name not cached.
    let mut tries = 2;
    loop {
        match open_path(dir, path, resolve) {
            Ok(fd) => return cached(&fd),
            Err(Errno::AGAIN) if tries > 1 => tries -= 1,
            Err(e @ (Errno::INVAL | Errno::NOSYS | Errno::PERM)) => {
                return match open_path(rustix::fs::CWD, "/", ResolveFlags::CACHED) {
                    Err(Errno::INVAL | Errno::NOSYS | Errno::PERM) => {
                        WALK_REFUSED.store(true, Ordering::Relaxed);
                        Err(Errno::AGAIN)
                    }
                    _ => Err(e),
                };
            }
            Err(e) => return Err(e),
        }
    }
}

/// The id of the mount `fd` is on: the `mnt_id:` line of its
/// `/proc/self/fdinfo`, which asks no file system (a `statx` calls the file
/// system's `getattr`, and 9p without a cache, or CIFS after a change in the
/// directory, then ask their server), else `STATX_MNT_ID` (Linux 5.8) where
/// `/proc` cannot tell; `None` where neither gives it.
pub fn mount_id(fd: impl AsFd) -> Option<u64> {
    let fd = fd.as_fd();
    if let Some(id) = crate::procfs::own_fd_mount_id(fd) {
        return Some(id);
    }
    let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
    let st = rustix::fs::statx(fd, "", flags, StatxFlags::MNT_ID).ok()?;
    StatxFlags::from_bits_retain(st.stx_mask)
        .contains(StatxFlags::MNT_ID)
        .then_some(st.stx_mnt_id)
}

fn open_path(
    dir: BorrowedFd<'_>,
    path: impl rustix::path::Arg,
    resolve: rustix::fs::ResolveFlags,
) -> Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let oflags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat2(dir, path, oflags, Mode::empty(), resolve)
}

fn stat(dir: BorrowedFd<'_>, path: impl rustix::path::Arg + Copy, flags: AtFlags) -> Result<Attrs> {
    if !REFUSED.load(Ordering::Relaxed) {
        match rustix::fs::statx(dir, path, flags | AtFlags::STATX_DONT_SYNC, WANTED) {
            Ok(st) => return Ok(from_statx(&st)),
            // EPERM may also be the file's own answer: the fallback then gives the
            // same error, and only a fallback that works marks statx refused.
            Err(e @ (Errno::NOSYS | Errno::PERM)) => {
                let old = fstatat(dir, path, flags);
                if old.is_ok() || e == Errno::NOSYS {
                    REFUSED.store(true, Ordering::Relaxed);
                }
                return old;
            }
            Err(e) => return Err(e),
        }
    }
    fstatat(dir, path, flags)
}

fn fstatat(dir: BorrowedFd<'_>, path: impl rustix::path::Arg, flags: AtFlags) -> Result<Attrs> {
    let st = rustix::fs::statat(dir, path, flags)?;
    // nlink_t is 32 bits on aarch64 and 64 on x86_64, where the cast is a no-op;
    // the other fields' widths differ the same way between architectures.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Ok(Attrs {
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        mode: st.st_mode as u32,
        nlink: st.st_nlink as u64,
        size: st.st_size as u64,
        rdev: st.st_rdev as u64,
    })
}

fn from_statx(st: &rustix::fs::Statx) -> Attrs {
    Attrs {
        dev: rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
        ino: st.stx_ino,
        mode: u32::from(st.stx_mode),
        nlink: u64::from(st.stx_nlink),
        size: st.stx_size,
        rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The cached attributes are those `stat` gives, for a file, a directory, a
    /// device and a pipe, through a path, an open fd and a `/proc` fd link.
    #[test]
    fn agree_with_stat() {
        let (r, _w) = rustix::pipe::pipe().expect("pipe");
        let file = std::fs::File::open("/proc/self/exe").expect("exe");
        let proc_fd = std::fs::File::open("/proc/self/fd").expect("fd dir");
        for path in ["/proc/self/exe", "/", "/dev/null"] {
            let want = std::fs::metadata(path).expect("stat");
            let got = cached_at(rustix::fs::CWD, path).expect("statx");
            assert_eq!(
                (got.dev, got.ino, got.mode, got.nlink, got.rdev),
                (
                    want.dev(),
                    want.ino(),
                    want.mode(),
                    want.nlink(),
                    want.rdev()
                ),
                "{path}"
            );
            if want.is_file() {
                assert_eq!(got.size, want.size(), "{path}");
            }
        }
        let by_fd = cached(file.as_fd()).expect("statx fd");
        assert_eq!(
            by_fd,
            cached_at(rustix::fs::CWD, "/proc/self/exe").expect("statx")
        );
        let name = rustix::fd::AsRawFd::as_raw_fd(&r).to_string();
        let pipe = cached_at(proc_fd.as_fd(), name.as_str()).expect("statx pipe");
        assert_eq!(pipe.file_type(), libc::S_IFIFO);
        assert_eq!(pipe, cached(r.as_fd()).expect("statx pipe fd"));
    }

    /// A walk through cached names gives the attributes `lstat` gives, from
    /// our root and under another root; a name never looked up is not cached.
    #[test]
    fn a_cached_walk_agrees_with_lstat() {
        let dev = std::fs::File::open("/dev").expect("/dev");
        // Looked up once, so that its entry is in the cache.
        let want = std::fs::symlink_metadata("/dev/null").expect("lstat");
        let key = |a: Attrs| (a.dev, a.ino, a.mode);
        let got = cached_walk(rustix::fs::CWD, "/dev/null", false).expect("walk");
        assert_eq!(key(got), (want.dev(), want.ino(), want.mode()));
        let under = cached_walk(dev.as_fd(), "/null", true).expect("walk in root");
        assert_eq!(under, got);
        let fresh = format!("/dev/fdgrab-never-{}", std::process::id());
        let r = cached_walk(rustix::fs::CWD, fresh.as_str(), false).map(|_| ());
        assert!(matches!(r, Err(Errno::AGAIN | Errno::NOENT)), "{r:?}");
    }

    /// A missing name is the kernel's error, not a fallback's.
    #[test]
    fn a_missing_name_is_enoent() {
        assert_eq!(
            cached_at(rustix::fs::CWD, "/nonexistent/fdgrab").map(|_| ()),
            Err(Errno::NOENT)
        );
    }
}
