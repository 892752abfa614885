//! A small process that holds a pty master while nobody is attached.
//!
//! Closing the last descriptor of a master hangs the session up (the kernel sends
//! `SIGHUP` to the slave's session and every read of the slave fails), so a
//! detach must leave the master with someone. The keeper is a double-forked child
//! of fdgrab, in a session of its own, named [`KEEPER_COMM`]. It reads what the
//! programs write, so they never block on a full pty buffer, and keeps the last
//! [`REPLAY_BYTES`] of it for the next attach. It exits when the session ends
//! (`EIO`), on `SIGTERM`, or when a later attach retires it ([`Keeper::retire`]).
//!
//! Its descriptors are exactly: `/dev/null` at 0-2, the master at
//! [`MASTER_FD`], and the two ends of a unix socket pair it created itself, at
//! [`CONTROL_FD`] (its end) and [`CONTROL_PEER_FD`] (the end a new attach takes a
//! copy of). A process is recognised as a keeper by what a name cannot fake: its
//! executable is the same file as ours, and the socket at [`CONTROL_PEER_FD`] was
//! made by that very process (`SO_PEERCRED`).

use super::termios::own_errno;
use crate::error::{Error, Result};
use crate::pidfd::PidFd;
use crate::{Pid, TargetFd};
use rustix::io::Errno;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The command name (`/proc/PID/comm`) of a keeper. Only a hint for people: a
/// keeper is recognised by [`Keeper::identify`], not by this name.
pub const KEEPER_COMM: &str = "fdgrab-keep";

/// How much of the output written while detached a keeper keeps (the newest
/// bytes) and hands to the next attach.
pub const REPLAY_BYTES: usize = 64 * 1024;

/// Where a keeper holds the master.
pub const MASTER_FD: i32 = 3;
/// The keeper's end of its control socket pair.
pub const CONTROL_FD: i32 = 4;
/// The other end, which the keeper holds only so that an attach can copy it.
pub const CONTROL_PEER_FD: i32 = 5;

/// What retires a keeper: sent on the control socket, answered with the replay.
const RETIRE: u8 = b'R';

/// Hands `master` to a new keeper process and returns its pid. Our copy is closed
/// when this returns, so the keeper is then the master's only holder (unless the
/// caller has other copies).
///
/// The child runs no Rust code after `fork`, only system calls on memory
/// allocated before it, so this is safe to call from a multi-threaded process.
pub fn keep_in_background(master: OwnedFd) -> Result<Pid> {
    // Above the numbers the keeper uses, so that arranging them cannot overwrite it.
    let high = rustix::io::fcntl_dupfd_cloexec(&master, 10)
        .map_err(|e| own_errno("fcntl(F_DUPFD_CLOEXEC) of the master", e))?;
    drop(master);
    let (report_r, report_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| own_errno("pipe", e))?;
    let m = high.as_raw_fd();
    let w = report_w.as_raw_fd();
    // The replay ring, allocated here: the keeper allocates nothing.
    let mut ring = vec![0u8; REPLAY_BYTES];
    let ring_ptr = ring.as_mut_ptr();
    // The signals the keeper ignores, listed here: it allocates nothing either.
    // Every one that would end it but SIGTERM (its documented way out): a stray
    // `kill -USR1` must not hang the session up.
    let ignored: Vec<i32> = crate::signalfd::ending_by_default()
        .into_iter()
        .filter(|&s| s != libc::SIGTERM)
        .chain([libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGPIPE])
        .collect();

    // SAFETY: fork has no memory-safety preconditions. The child only makes
    // async-signal-safe calls (setsid, fork, write, _exit, and in `keep` open,
    // dup2, close_range, socketpair, prctl, sigprocmask, signal, fcntl, chdir,
    // getpid, poll, read) on memory that exists before the fork, and never returns into
    // the caller's frames.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(own_errno("fork", Errno::from_raw_os_error(errno())));
    }
    if child == 0 {
        // SAFETY: see above; these only pass integers and pointers to locals, and
        // `ring_ptr` points at REPLAY_BYTES bytes this child's copy of the heap owns.
        unsafe {
            libc::setsid();
            // The keeper reports its own pid once it can be recognised as one (named,
            // its control socket in place): an attach right after this one returns
            // must not find a holder still named "fdgrab" and refuse as if another
            // fdgrab were attached.
            if libc::fork() == 0 {
                keep(m, ring_ptr, &ignored, w);
            }
            libc::_exit(0);
        }
    }
    drop(report_w);
    drop(high);
    drop(ring);
    drop(ignored);
    // The intermediate child exits at once; reaping it leaves the keeper an orphan
    // adopted by init (or the nearest subreaper), not our child.
    let _ = rustix::process::waitpid(
        rustix::process::Pid::from_raw(child),
        rustix::process::WaitOptions::empty(),
    );
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(&report_r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(own_errno("read(keeper pid)", e)),
        }
    }
    let pid = i32::from_ne_bytes(buf);
    if got < buf.len() || pid <= 0 {
        return Err(own_errno("fork (keeper)", Errno::CHILD));
    }
    tracing::debug!(keeper = pid, "pty master left with a keeper");
    Ok(pid)
}

/// The newest [`REPLAY_BYTES`] of what the master gave, in a fixed buffer.
struct Ring {
    buf: *mut u8,
    start: usize,
    len: usize,
}

impl Ring {
    /// # Safety
    /// `self.buf` must point at [`REPLAY_BYTES`] writable bytes.
    unsafe fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(REPLAY_BYTES)..];
        for &b in data {
            let at = (self.start + self.len) % REPLAY_BYTES;
            // SAFETY: `at` < REPLAY_BYTES, inside the buffer (the caller's promise).
            unsafe { *self.buf.add(at) = b };
            if self.len < REPLAY_BYTES {
                self.len += 1;
            } else {
                self.start = (self.start + 1) % REPLAY_BYTES;
            }
        }
    }

    /// The kept bytes, oldest first, as (at most) two slices.
    ///
    /// # Safety
    /// As for [`Ring::push`].
    unsafe fn parts(&self) -> [&[u8]; 2] {
        let first = self.len.min(REPLAY_BYTES - self.start);
        // SAFETY: both ranges lie inside the buffer (start + first <= REPLAY_BYTES,
        // len - first <= start).
        unsafe {
            [
                std::slice::from_raw_parts(self.buf.add(self.start), first),
                std::slice::from_raw_parts(self.buf, self.len - first),
            ]
        }
    }
}

/// Closes every descriptor from `from` up but `keep` (`close_range`, once or twice).
///
/// # Safety
/// Closes descriptors behind the back of anything that owns them: only for the
/// keeper, which owns nothing but what it arranges itself.
unsafe fn close_all_from_but(from: i32, keep: i32) {
    let close = |lo: i32, hi: u32| {
        // SAFETY: close_range takes integers only; see the function's contract.
        unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi, 0u32) };
    };
    if keep >= from {
        if keep > from {
            close(from, (keep - 1) as u32);
        }
        close(keep + 1, u32::MAX);
    } else {
        close(from, u32::MAX);
    }
}

/// The keeper's whole life. Never returns.
///
/// # Safety
/// Only to be called in a freshly forked child: it closes every descriptor but the
/// ones it keeps. `ring` must point at [`REPLAY_BYTES`] writable bytes.
unsafe fn keep(m: i32, ring: *mut u8, ignored: &[i32], report: i32) -> ! {
    // SAFETY: plain system calls on integers and on pointers to constants and locals.
    unsafe {
        let name = b"fdgrab-keep\0";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        // Above the numbers arranged below, kept through them until the report.
        let report = libc::fcntl(report, libc::F_DUPFD_CLOEXEC, 10);
        // /dev/null first lands on the lowest free number, possibly MASTER_FD:
        // moved above the numbers the keeper arranges before they are arranged.
        let low = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        let null = libc::fcntl(low, libc::F_DUPFD_CLOEXEC, 10);
        libc::close(low);
        if null < 0 || libc::dup3(m, MASTER_FD, 0) < 0 {
            libc::_exit(1);
        }
        for fd in 0..3 {
            libc::dup2(null, fd);
        }
        // Everything else goes: what fdgrab had open (its terminal, the copies it
        // made), and the spare /dev/null and master numbers; the report pipe at the
        // end.
        close_all_from_but(MASTER_FD + 1, report);
        let mut pair = [0i32; 2];
        // Made here, so that its credentials (SO_PEERCRED) name the keeper itself.
        if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) != 0
            || libc::dup2(pair[0], CONTROL_FD) < 0
            || libc::dup2(pair[1], CONTROL_PEER_FD) < 0
        {
            libc::_exit(1);
        }
        close_all_from_but(CONTROL_PEER_FD + 1, report);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for &sig in ignored {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::chdir(c"/".as_ptr());
        // Recognisable now (Keeper::identify): the attach that made us may go.
        let me = libc::getpid().to_ne_bytes();
        if report < 0 || libc::write(report, me.as_ptr().cast(), me.len()) != me.len() as isize {
            libc::_exit(1);
        }
        libc::close(report);
        // Non-blocking: an attach taking a copy may read first what poll announced.
        let fl = libc::fcntl(MASTER_FD, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(MASTER_FD, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let mut ring = Ring {
            buf: ring,
            start: 0,
            len: 0,
        };
        let mut buf = [0u8; 4096];
        loop {
            let mut p = [
                libc::pollfd {
                    fd: MASTER_FD,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: CONTROL_FD,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if libc::poll(p.as_mut_ptr(), 2, -1) < 0 {
                continue;
            }
            if p[1].revents & libc::POLLIN != 0 {
                let mut req = 0u8;
                if libc::read(CONTROL_FD, (&mut req as *mut u8).cast(), 1) == 1 && req == RETIRE {
                    // Not one more read of the master: what comes next stays in the
                    // pty for the new attach, after these bytes.
                    for part in ring.parts() {
                        write_all(CONTROL_FD, part);
                    }
                    libc::_exit(0);
                }
            }
            if p[0].revents != 0 {
                let n = libc::read(MASTER_FD, buf.as_mut_ptr().cast(), buf.len());
                if n > 0 {
                    ring.push(&buf[..n as usize]);
                    continue;
                }
                if n < 0 && matches!(errno(), libc::EINTR | libc::EAGAIN) {
                    continue;
                }
                // EIO or end of file: no process has the slave open any more.
                libc::_exit(0);
            }
        }
    }
}

/// # Safety
/// Only system calls; for the keeper.
unsafe fn write_all(fd: i32, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: `data` is a live slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n > 0 {
            data = &data[n as usize..];
        } else if n < 0 && errno() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A keeper found holding a master, with a copy of its control socket.
#[derive(Debug)]
pub struct Keeper {
    pid: Pid,
    control: OwnedFd,
}

/// Whether process `pid` runs the executable file `exe`, judged by device and
/// inode: a name or a path in `/proc/PID/cmdline` could be anything.
/// The attributes are the kernel's cached ones: a process whose executable
/// lives on a file server that does not answer is not waited for.
pub fn runs_executable(pid: Pid, exe: &std::path::Path) -> bool {
    let cached = |p: &std::path::Path| crate::statx::cached_at(rustix::fs::CWD, p);
    let Ok(ours) = cached(exe) else {
        return false;
    };
    let theirs = format!("/proc/{pid}/exe");
    cached(std::path::Path::new(&theirs)).is_ok_and(|t| (ours.dev, ours.ino) == (t.dev, t.ino))
}

impl Keeper {
    /// Whether `pid` is a keeper: its executable is the same file as ours, it is
    /// named [`KEEPER_COMM`], and its [`CONTROL_PEER_FD`] is a connected unix stream
    /// socket that `pid` itself created (the kernel's `SO_PEERCRED`, which no
    /// process can set for another), and it runs as our effective uid. The name
    /// alone decides nothing. Takes a copy of that socket (`pidfd_getfd`).
    ///
    /// A process that creates a socket pair and then execs our executable under
    /// the keeper's name passes all of this (exec keeps its pid and descriptors):
    /// callers must not trust a "keeper" that does not exit once retired
    /// (`fdgrab attach` then treats it as any other holder).
    pub fn identify(pid: Pid) -> Option<Keeper> {
        Self::identify_as(pid, std::path::Path::new("/proc/self/exe"))
    }

    /// [`Keeper::identify`] for a keeper left by the executable `exe` (a program
    /// other than fdgrab, such as a test, asking about fdgrab's keepers).
    pub fn identify_as(pid: Pid, exe: &std::path::Path) -> Option<Keeper> {
        use std::os::unix::fs::MetadataExt;
        if !runs_executable(pid, exe) {
            return None;
        }
        // Not enough alone (anyone can name itself so), but an attaching fdgrab,
        // which runs the same executable, is not taken for a keeper.
        // Made by an fdgrab of our uid (a keeper keeps its maker's credentials).
        if std::fs::metadata(format!("/proc/{pid}")).ok()?.uid()
            != rustix::process::geteuid().as_raw()
        {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if comm.trim_end() != KEEPER_COMM {
            return None;
        }
        let target = PidFd::open(pid).ok()?;
        let control = crate::grab::pidfd_getfd(&target, TargetFd::new(CONTROL_PEER_FD)?).ok()?;
        // A connected stream socket (a listening one reports its own creator too).
        if rustix::net::sockopt::socket_acceptconn(&control).unwrap_or(true)
            || rustix::net::sockopt::socket_type(&control).ok()? != rustix::net::SocketType::STREAM
        {
            return None;
        }
        let (peer, _, _) = crate::sys::peer_cred(&control).ok()?;
        (peer == pid).then_some(Keeper { pid, control })
    }

    /// The keeper's pid.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Asks the keeper to hand over the output it kept and exit, and returns that
    /// output (at most [`REPLAY_BYTES`], oldest first). The keeper reads nothing
    /// more from the master once asked, so what the programs write next waits in
    /// the pty for whoever holds a copy of the master: take one before this.
    pub fn retire(self) -> Result<Vec<u8>> {
        let io = |op, e: Errno| Error::io(op, self.pid, TargetFd::new(CONTROL_PEER_FD), e);
        let mut sent = false;
        while !sent {
            match rustix::io::write(&self.control, &[RETIRE]) {
                Ok(_) => sent = true,
                Err(Errno::INTR) => {}
                Err(e) => return Err(io("write(keeper control socket)", e)),
            }
        }
        // Until the keeper exits (its end closes: end of file), bounded.
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    keeper = self.pid,
                    "keeper did not finish its replay in time"
                );
                break;
            }
            let mut p = [rustix::event::PollFd::new(
                &self.control,
                rustix::event::PollFlags::IN,
            )];
            let t = rustix::event::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos() as i64,
            };
            match rustix::event::poll(&mut p, Some(&t)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(io("poll(keeper control socket)", e)),
            }
            match rustix::io::read(&self.control, &mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                Err(e) => return Err(io("read(keeper control socket)", e)),
            }
        }
        out.truncate(REPLAY_BYTES);
        tracing::debug!(keeper = self.pid, replay = out.len(), "keeper retired");
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_bytes_in_order() {
        let mut mem = vec![0u8; REPLAY_BYTES];
        let mut r = Ring {
            buf: mem.as_mut_ptr(),
            start: 0,
            len: 0,
        };
        let joined = |r: &Ring| {
            // SAFETY: `mem` is REPLAY_BYTES long and outlives `r`.
            let [a, b] = unsafe { r.parts() };
            [a, b].concat()
        };
        // SAFETY: as above.
        unsafe { r.push(b"hello ") };
        assert_eq!(joined(&r), b"hello ");
        let big: Vec<u8> = (0..REPLAY_BYTES + 1000).map(|i| (i % 251) as u8).collect();
        // SAFETY: as above.
        unsafe { r.push(&big) };
        assert_eq!(joined(&r), &big[1000..]);
        // SAFETY: as above.
        unsafe { r.push(b"tail") };
        let mut want = big[1004..].to_vec();
        want.extend_from_slice(b"tail");
        assert_eq!(joined(&r), want);
    }
}
