//! Pseudo-terminals: finding the pty a process runs on and who holds its master,
//! and acting as the terminal emulator for it (what `fdgrab attach` is made of).
//!
//! A pty is a pair: the *slave* `/dev/pts/N` is the terminal programs read and
//! write (their stdin/stdout/stderr and controlling tty), the *master* is held by
//! whatever draws it: sshd, tmux, screen, `script`, a terminal emulator. Moving a
//! whole terminal session means taking the master from that holder; the programs
//! on the slave keep their session, process groups and job control untouched.
//!
//! - [`terminal_of`]: the pty a process runs on (`/proc/PID/stat` field `tty_nr`,
//!   else the `/dev/pts/N` its fd 0, 1 or 2 points at);
//! - [`master_holders`]: every process with that pty's master open, found through
//!   the `tty-index` line the kernel puts in `/proc/PID/fdinfo/FD` of a ptmx fd
//!   ([`master_holders_near`]: among the session's ancestors only, quickly);
//! - [`relay`]: the emulator's loop between our terminal and a master, with raw
//!   mode ([`RawMode`]), window-size propagation and an ssh-style escape;
//! - [`keep_in_background`]: leaves a master with a small process that keeps the
//!   session alive (and re-attachable) after we go, with the newest output for
//!   the next attach ([`Keeper`]);
//! - [`plan_single_move`] with [`crate::inject::take_terminal`]: when the master
//!   cannot be had, one process alone moves onto a new pty ([`open_pair`]).
//!
//! Pty indexes are per devpts instance: a container with its own `/dev/pts` has its
//! own `pts/0`. [`master_holders`] goes by index; [`terminal_identity`] and
//! [`master_identity`] tell which instance (and which pty of it) a target's
//! slave and a grabbed master belong to.

mod keeper;
mod lock;
pub(crate) mod relay;
mod single;
mod termios;

pub use keeper::{
    keep_in_background, runs_executable, Keeper, CONTROL_FD, CONTROL_PEER_FD, KEEPER_COMM,
    MASTER_FD, REPLAY_BYTES,
};
pub use lock::AttachLock;

pub use relay::{relay, relay_signals, Escape, RelayEnd};
pub use single::{copy_modes, plan_single_move, SingleMove};
pub use termios::{copy_window_size, is_terminal, redraw, RawMode};

use crate::error::{Error, Result};
use crate::{Pid, TargetFd};
use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsFd;

/// The major number of Unix98 pty slaves (`UNIX98_PTY_SLAVE_MAJOR`); the minor is
/// the index (up to 2^20, all under this one major).
const PTS_MAJOR: u32 = 136;

/// A pty slave, `/dev/pts/N`, by its index `N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Pty(u32);

impl Pty {
    /// The pty with index `n` (`/dev/pts/n`).
    pub fn new(n: u32) -> Self {
        Self(n)
    }

    /// The index `N` of `/dev/pts/N`.
    pub fn index(self) -> u32 {
        self.0
    }

    /// The pty whose slave has device number `rdev` (as in `st_rdev` or
    /// `tty_nr`), if it is a Unix98 pty slave.
    pub fn from_rdev(rdev: u64) -> Option<Self> {
        let major = rustix::fs::major(rdev);
        let minor = rustix::fs::minor(rdev);
        (major == PTS_MAJOR).then_some(Self(minor))
    }

    /// The pty `fd` is a slave of, if it is one (its cached attributes: a file
    /// on a file server that does not answer is not waited for).
    pub fn of_fd(fd: impl AsFd) -> Option<Self> {
        Self::of_attrs(crate::statx::cached(fd.as_fd()).ok()?)
    }

    /// The pty `/proc/PID/fd/N`, or any path, is a slave of, if it is one.
    pub(crate) fn of_path(path: &str) -> Option<Self> {
        Self::of_attrs(crate::statx::cached_at(rustix::fs::CWD, path).ok()?)
    }

    fn of_attrs(st: crate::statx::Attrs) -> Option<Self> {
        (st.file_type() == libc::S_IFCHR)
            .then(|| Self::from_rdev(st.rdev))
            .flatten()
    }
}

impl std::fmt::Display for Pty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "/dev/pts/{}", self.0)
    }
}

/// The pty `pid` runs on: its controlling terminal (`tty_nr` in `/proc/PID/stat`)
/// if that is a pty, otherwise the pty its fd 0, 1 or 2 is open on (a process that
/// left its session with `setsid` but kept the fds). `None`: not on a pty.
pub fn terminal_of(pid: Pid) -> Result<Option<Pty>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| proc_read_error(pid, "read /proc/PID/stat", e))?;
    let tty_nr = crate::procfs::parse_stat_ids(&stat).map_or(0, |(_, _, tty, _)| tty);
    if let Some(pty) = decode_tty_nr(tty_nr) {
        return Ok(Some(pty));
    }
    for fd in 0..3 {
        if let Some(pty) = Pty::of_path(&format!("/proc/{pid}/fd/{fd}")) {
            return Ok(Some(pty));
        }
    }
    Ok(None)
}

/// `tty_nr` packs the device number as the kernel's old `new_encode_dev`: minor
/// bits 0-7 and 20-31, major bits 8-19.
fn decode_tty_nr(tty_nr: i64) -> Option<Pty> {
    let v = tty_nr as u64 & 0xffff_ffff;
    let major = (v >> 8) & 0xfff;
    let minor = (v & 0xff) | ((v >> 12) & 0xfff00);
    if v == 0 {
        return None;
    }
    Pty::from_rdev(rustix::fs::makedev(major as u32, minor as u32))
}

/// The devpts instance (`st_dev`) of the pty whose master is `master`: its slave
/// is looked at through an `O_PATH` descriptor from `TIOCGPTPEER` (Linux 4.13),
/// which opens no terminal. `None` if `master` is not a pty master.
pub fn master_instance(master: impl AsFd) -> Option<u64> {
    master_identity(master).map(|id| id.dev)
}

/// Which pty a slave is, beyond its instance and index: devpts gives a new pty's
/// slave a new inode, with the index's inode number but a new change time, so an
/// index the kernel reused for another session (while an old slave of it is still
/// open somewhere) does not compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlaveIdentity {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl SlaveIdentity {
    /// The devpts instance (`st_dev`) the slave belongs to. Pty indexes repeat
    /// across instances (a container's `/dev/pts` has its own `pts/0`), so the
    /// index alone does not name a pty.
    pub fn instance(self) -> u64 {
        self.dev
    }

    fn of(st: &rustix::fs::Stat) -> Self {
        Self {
            dev: st.st_dev,
            ino: st.st_ino,
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        }
    }
}

/// The identity of `pty` as `pid` has it open on fd 0, 1 or 2; `None` if none of
/// them is that slave.
pub fn slave_identity(pid: Pid, pty: Pty) -> Option<SlaveIdentity> {
    (0..3).find_map(|fd| {
        let st = rustix::fs::stat(format!("/proc/{pid}/fd/{fd}")).ok()?;
        (Pty::from_rdev(st.st_rdev) == Some(pty)).then(|| SlaveIdentity::of(&st))
    })
}

/// The identity of `pid`'s terminal `pty`: the slave it has open on fd 0, 1 or 2,
/// or else, when `pty` is its controlling terminal but its stdio went elsewhere (a
/// job started `</dev/null >log 2>&1 &`), the one its session leader has open
/// there: a session has one controlling terminal. `None` when neither tells, and
/// only the index is known.
pub fn terminal_identity(pid: Pid, pty: Pty) -> Option<SlaveIdentity> {
    slave_identity(pid, pty).or_else(|| {
        let ids = |p: Pid| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            crate::procfs::parse_stat_ids(&stat)
        };
        let (_, sid, tty_nr, _) = ids(pid)?;
        if sid <= 0 || sid == pid || decode_tty_nr(tty_nr) != Some(pty) {
            return None;
        }
        // Still that session's leader, on the same controlling terminal.
        let (_, leader_sid, leader_tty, _) = ids(sid)?;
        if leader_sid != sid || leader_tty != tty_nr {
            return None;
        }
        // (Were the pid reused since by another session's leader on another
        // instance's pts/N, no holder would match: PID would be moved alone, and
        // no one else's master taken.)
        slave_identity(sid, pty)
    })
}

/// Whether our `fd` is the terminal `pty` whose identity is `identity` (a
/// process's, from [`terminal_identity`]): a slave of the same index that, when
/// the identity is known, is also the same inode of the same devpts instance (a
/// container's `pts/0` is not the host's `pts/0`).
pub fn is_terminal_of(fd: impl AsFd, pty: Pty, identity: Option<SlaveIdentity>) -> bool {
    let Ok(st) = rustix::fs::fstat(fd) else {
        return false;
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || Pty::from_rdev(st.st_rdev) != Some(pty) {
        return false;
    }
    identity.is_none_or(|id| id == SlaveIdentity::of(&st))
}

/// The identity of the slave of the pty whose master is `master` (through an
/// `O_PATH` descriptor from `TIOCGPTPEER`, which opens no terminal).
pub fn master_identity(master: impl AsFd) -> Option<SlaveIdentity> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let flags = libc::O_PATH | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags by value and returns a new fd (or -1).
    let peer = unsafe { libc::ioctl(master.as_fd().as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if peer < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    let peer = unsafe { OwnedFd::from_raw_fd(peer) };
    rustix::fs::fstat(&peer)
        .ok()
        .map(|st| SlaveIdentity::of(&st))
}

/// A process that has a pty's master open, at one or more fds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MasterHolder {
    /// The holding process.
    pub pid: Pid,
    /// Its fds open on the master, lowest first.
    pub fds: Vec<TargetFd>,
    /// Its fds open on the slave, when the slave is not its own terminal (emulators
    /// such as `script` keep one so the pty never reads as hung up). While any is
    /// open the session cannot end, so taking the session over takes these too.
    pub slave_fds: Vec<TargetFd>,
    /// Its command name (`/proc/PID/comm`), e.g. `sshd`, `tmux: server`.
    pub comm: String,
}

impl MasterHolder {
    /// Whether this is a session left behind by [`keep_in_background`], decided
    /// by [`Keeper::identify`] (never by the process's name).
    pub fn is_keeper(&self) -> bool {
        Keeper::identify(self.pid).is_some()
    }
}

/// What [`master_holders`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Holders {
    /// The processes that hold the master, by pid.
    pub holders: Vec<MasterHolder>,
    /// Processes whose fds we were not allowed to look at (`EACCES`): one of them
    /// may hold the master.
    pub unreadable: Vec<Pid>,
}

/// Every process that has the master of `pty` open, found by scanning `/proc/*/fd`
/// for links to `/dev/ptmx` (or a devpts instance's `ptmx`) whose
/// `/proc/PID/fdinfo/FD` says `tty-index: N`. Only thread-group leaders are
/// scanned (threads share the fd table in all but exotic `clone` uses).
pub fn master_holders(pty: Pty) -> Result<Holders> {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    let pids = crate::procfs::pids().map_err(|e| Error::Io {
        op: "read /proc",
        pid: me,
        fd: None,
        source: e,
    })?;
    let out = holders_among(pty, pids);
    tracing::debug!(%pty, holders = ?out.holders, unreadable = out.unreadable.len(), "pty master holders");
    Ok(out)
}

/// The holders of the master of `pty` among the ancestors of `pid` and of its
/// session leader: where terminal emulators, tmux, screen, `script` and sshd sit
/// (the leader's parent, or sshd's privileged monitor above it). A few processes
/// instead of all of them, so a first answer comes quickly; it may miss a holder
/// elsewhere (a process the master was passed to), which only
/// [`master_holders`] finds.
pub fn master_holders_near(pid: Pid, pty: Pty) -> Holders {
    let mut near = Vec::new();
    let sid = fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| crate::procfs::parse_stat_ids(&st))
        .map(|(_, sid, _, _)| sid);
    for start in [Some(pid), sid].into_iter().flatten() {
        let mut p = start;
        // Bounded: a pid namespace's init has ppid 0, and a chain is never long.
        for _ in 0..64 {
            if p <= 1 || near.contains(&p) {
                break;
            }
            near.push(p);
            match crate::procfs::status(p).ok().and_then(|s| s.ppid) {
                Some(pp) => p = pp,
                None => break,
            }
        }
    }
    near.sort_unstable();
    let out = holders_among(pty, near);
    tracing::debug!(%pty, holders = ?out.holders, "pty master holders near the session");
    out
}

/// The holders of the master of `pty` among `pids`.
fn holders_among(pty: Pty, pids: Vec<Pid>) -> Holders {
    let mut out = Holders::default();
    // One directory buffer and one link buffer for the whole scan, and every fd
    // looked at relative to its process's open fd directory: a few thousand
    // links on a busy host, so no path is built or walked from / per fd.
    let mut dirbuf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
    let mut linkbuf = Vec::with_capacity(256);
    for pid in pids {
        use rustix::fs::{Mode, OFlags};
        let dir = match rustix::fs::openat(
            rustix::fs::CWD,
            format!("/proc/{pid}/fd"),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(d) => d,
            Err(rustix::io::Errno::ACCESS) => {
                out.unreadable.push(pid);
                continue;
            }
            // Exited meanwhile, or a kernel thread.
            Err(_) => continue,
        };
        let mut found = Vec::new();
        let mut slave_fds = Vec::new();
        let mut entries = rustix::fs::RawDir::new(&dir, &mut dirbuf);
        while let Some(Ok(entry)) = entries.next() {
            let name = entry.file_name();
            let Some(t) = std::str::from_utf8(name.to_bytes())
                .ok()
                .and_then(|s| s.parse::<i32>().ok())
                .and_then(TargetFd::new)
            else {
                continue;
            };
            let Ok(link) = rustix::fs::readlinkat(&dir, name, std::mem::take(&mut linkbuf)) else {
                continue;
            };
            let bytes = link.as_bytes();
            if bytes.rsplit(|&b| b == b'/').next() == Some(b"ptmx".as_slice()) {
                if tty_index(pid, t.as_raw()) == Some(pty.index()) {
                    found.push(t);
                }
            } else if bytes.starts_with(b"/dev/pts/") && is_slave_of(&dir, name, pty) {
                slave_fds.push(t);
            }
            linkbuf = link.into_bytes_with_nul();
        }
        if !found.is_empty() {
            found.sort_unstable();
            slave_fds.sort_unstable();
            if terminal_of(pid).ok().flatten() == Some(pty) {
                // It is on the session itself: its slave fds are its terminal.
                slave_fds.clear();
            }
            let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end().to_owned())
                .unwrap_or_default();
            out.holders.push(MasterHolder {
                pid,
                fds: found,
                slave_fds,
                comm,
            });
        }
    }
    out.holders.sort_by_key(|h| h.pid);
    out
}

/// Whether fd `name` of the process whose fd directory is `dir` is the slave of `pty`.
/// From the cached attributes: the link is only a name, and a process in a mount
/// namespace of its own may see a FUSE or NFS file as `/dev/pts/N`, whose server
/// a plain `stat` would ask.
fn is_slave_of(dir: &std::os::fd::OwnedFd, name: &std::ffi::CStr, pty: Pty) -> bool {
    crate::statx::cached_at(dir, name)
        .is_ok_and(|st| st.file_type() == libc::S_IFCHR && Pty::from_rdev(st.rdev) == Some(pty))
}

/// The `tty-index` line of a ptmx fd's fdinfo (Linux 4.14+).
fn tty_index(pid: Pid, fd: i32) -> Option<u32> {
    let info = fs::read(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    crate::inventory::FdInfo::parse(&info).tty_index
}

fn proc_read_error(pid: Pid, op: &'static str, e: std::io::Error) -> Error {
    match e.kind() {
        ErrorKind::NotFound => Error::NoSuchProcess { pid },
        _ => Error::Io {
            op,
            pid,
            fd: None,
            source: e,
        },
    }
}

/// A new pty: `(master, slave)`, both close-on-exec, the slave opened without
/// becoming our controlling terminal (`/dev/ptmx`, `TIOCSPTLCK` to unlock, then
/// `TIOCGPTPEER` for the slave, Linux 4.13, so no path lookup can pick another
/// devpts instance's `pts/N`).
pub fn open_pair() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let master = rustix::fs::open(
        "/dev/ptmx",
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| termios::own_errno("open /dev/ptmx", e))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which points at a local.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(termios::own_error(
            "ioctl(TIOCSPTLCK)",
            std::io::Error::last_os_error(),
        ));
    }
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes the open flags by value and returns a new fd.
    let slave = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if slave < 0 {
        return Err(termios::own_error(
            "ioctl(TIOCGPTPEER)",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master, slave))
}

/// While it lives, nobody can open the slave of a pty of ours (`TIOCSPTLCK` on the
/// master: opening `/dev/pts/N` fails with `EIO`), so nobody can make it their
/// controlling terminal while a process is moved onto it; descriptors already open
/// (ours, the one handed to the process) keep working. Unlocked on drop.
#[derive(Debug)]
pub struct SlaveLock<'a> {
    master: std::os::fd::BorrowedFd<'a>,
}

fn set_pty_lock(master: std::os::fd::BorrowedFd<'_>, locked: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = locked.into();
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which points at a local.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &v) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl<'a> SlaveLock<'a> {
    /// Locks the slave of `master`, then checks that it is nobody's controlling
    /// terminal yet (`TIOCGSID`, asked on the master: on the slave it answers only
    /// for the caller's own terminal), so that a process made a session leader
    /// can acquire it (`TIOCSCTTY` refuses a terminal another session has). A
    /// process that opened the slave before the lock and made it its terminal is
    /// found here, before anything is changed.
    pub fn new(master: std::os::fd::BorrowedFd<'a>) -> Result<Self> {
        set_pty_lock(master, true).map_err(|e| termios::own_error("ioctl(TIOCSPTLCK)", e))?;
        let lock = Self { master };
        let mut sid: libc::pid_t = 0;
        // SAFETY: TIOCGSID writes one pid_t through the pointer, which points at a
        // local; for a pty no session has it fails with ENOTTY.
        let r = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&master),
                libc::TIOCGSID,
                &mut sid,
            )
        };
        if r == 0 {
            return Err(Error::InvalidArgument(format!(
                "the new terminal was made the controlling terminal of session {sid} by another \
                 process before it could be used; nothing was changed"
            )));
        }
        Ok(lock)
    }
}

impl Drop for SlaveLock<'_> {
    fn drop(&mut self) {
        if let Err(e) = set_pty_lock(self.master, false) {
            tracing::warn!(error = %e, "could not unlock the new pty's slave");
        }
    }
}

/// The index of the pty whose master is `master` (`TIOCGPTN`).
pub fn master_index(master: impl AsFd) -> Option<Pty> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int through the pointer, which points at
    // a live local; on a non-master fd the kernel fails with ENOTTY and writes nothing.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&master.as_fd()),
            libc::TIOCGPTN,
            &mut n,
        )
    };
    (r == 0).then_some(Pty(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pts_device_numbers() {
        // pts/0: 136:0 -> tty_nr 0x8800.
        assert_eq!(decode_tty_nr(0x8800), Some(Pty(0)));
        assert_eq!(decode_tty_nr((136 << 8) | 44), Some(Pty(44)));
        // /dev/tty1 (4:1) and no tty at all.
        assert_eq!(decode_tty_nr((4 << 8) | 1), None);
        assert_eq!(decode_tty_nr(0), None);
        // A minor above 255 spills into bits 20-31: 136:0x1234 is pts 4660.
        assert_eq!(
            decode_tty_nr((136 << 8) | 0x34 | (0x12 << 20)),
            Some(Pty(0x1234))
        );
    }
}
