//! A small process that holds a pty master while nobody is attached.
//!
//! Closing the last descriptor of a master hangs the session up (the kernel sends
//! `SIGHUP` to the slave's session and every read of the slave fails), so a
//! detach must leave the master with someone. The keeper is a double-forked child
//! of fdgrab, in a session of its own, named [`KEEPER_COMM`], that reads and
//! discards what the programs write (so they never block on a full pty buffer),
//! and exits when the session ends (`EIO`) or on `SIGTERM`, which is how a later
//! `fdgrab attach` retires it after taking a copy of the master.

use super::termios::own_errno;
use crate::error::Result;
use crate::Pid;
use rustix::io::Errno;
use std::os::fd::{AsRawFd, OwnedFd};

/// The command name (`/proc/PID/comm`) of a keeper.
pub const KEEPER_COMM: &str = "fdgrab-keep";

/// Hands `master` to a new keeper process and returns its pid. Our copy is closed
/// when this returns, so the keeper is then the master's only holder (unless the
/// caller has other copies).
///
/// The child runs no Rust code after `fork`, only system calls, so this is safe to
/// call from a multi-threaded process.
pub fn keep_in_background(master: OwnedFd) -> Result<Pid> {
    // Above 2, so that putting /dev/null on 0-2 cannot overwrite it.
    let high = rustix::io::fcntl_dupfd_cloexec(&master, 10)
        .map_err(|e| own_errno("fcntl(F_DUPFD_CLOEXEC) of the master", e))?;
    drop(master);
    let (report_r, report_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| own_errno("pipe", e))?;
    let m = high.as_raw_fd();
    let w = report_w.as_raw_fd();

    // SAFETY: fork has no memory-safety preconditions. The child only makes
    // async-signal-safe calls (setsid, fork, write, _exit, and in `keep` open,
    // dup2, close_range, prctl, sigprocmask, signal, fcntl, chdir, read) on memory
    // that exists before the fork, and never returns into the caller's frames.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(own_errno("fork", Errno::from_raw_os_error(errno())));
    }
    if child == 0 {
        // SAFETY: see above; these only pass integers and pointers to locals.
        unsafe {
            libc::setsid();
            let keeper = libc::fork();
            if keeper == 0 {
                keep(m);
            }
            let bytes = keeper.to_ne_bytes();
            libc::write(w, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(0);
        }
    }
    drop(report_w);
    drop(high);
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

/// The keeper's whole life. Never returns.
///
/// # Safety
/// Only to be called in a freshly forked child: it closes every descriptor but `m`.
unsafe fn keep(m: i32) -> ! {
    // SAFETY: plain system calls on integers and on pointers to constants and locals.
    unsafe {
        let name = b"fdgrab-keep\0";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        if m > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (m - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (m + 1) as u32, u32::MAX, 0u32);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        for sig in [
            libc::SIGHUP,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::chdir(c"/".as_ptr());
        let fl = libc::fcntl(m, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(m, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::read(m, buf.as_mut_ptr().cast(), buf.len());
            if n > 0 {
                continue;
            }
            if n < 0 {
                let e = errno();
                if e == libc::EINTR || e == libc::EAGAIN {
                    if e == libc::EAGAIN {
                        // Someone made the description non-blocking again (a new
                        // attach taking over): wait instead of spinning.
                        let mut p = libc::pollfd {
                            fd: m,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        libc::poll(&mut p, 1, 100);
                    }
                    continue;
                }
            }
            libc::_exit(0);
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
