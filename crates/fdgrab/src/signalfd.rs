//! Receiving signals as data (`signalfd(2)`), so that a process can wait for a child,
//! a socket and a signal in one `poll`.

use crate::error::{Error, Result};
use crate::sys;
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Signals blocked in the calling thread and readable from a descriptor. Dropping it
/// restores the previous signal mask.
///
/// The mask is per thread: create it on the thread that waits, before starting any
/// other thread, so that no other thread takes the signals instead.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
    old_mask: libc::sigset_t,
}

impl SignalFd {
    /// Blocks `signals` (`pthread_sigmask(SIG_BLOCK)`) and opens a non-blocking,
    /// close-on-exec signalfd for them. Children inherit a blocked mask across exec,
    /// so whoever spawns while this is alive must reset the child's mask (the
    /// activation spawner does).
    pub fn block(signals: &[i32]) -> Result<Self> {
        let old_mask = sys::block_signals(signals).map_err(|e| {
            Error::InvalidArgument(format!("cannot block signals {signals:?}: {e}"))
        })?;
        match sys::signalfd(signals) {
            Ok(fd) => Ok(Self { fd, old_mask }),
            Err(e) => {
                sys::set_signal_mask(&old_mask);
                Err(Error::local("signalfd", e))
            }
        }
    }

    /// The next pending signal number, or `None` if none is pending.
    pub fn read(&self) -> Result<Option<i32>> {
        Ok(self.read_info()?.map(|i| i.signo))
    }

    /// The next pending signal with where it came from, or `None`.
    pub fn read_info(&self) -> Result<Option<SignalInfo>> {
        // struct signalfd_siginfo is 128 bytes: ssi_signo, ssi_errno, ssi_code, ssi_pid.
        let mut buf = [0u8; 128];
        let word =
            |b: &[u8; 128], at: usize| i32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(n) if n >= 16 => {
                    return Ok(Some(SignalInfo {
                        signo: word(&buf, 0),
                        code: word(&buf, 8),
                        pid: word(&buf, 12),
                    }))
                }
                Ok(_) => return Ok(None),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(None),
                Err(e) => return Err(Error::local("read(signalfd)", e)),
            }
        }
    }
}

/// A signal read from a [`SignalFd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalInfo {
    /// The signal number (`ssi_signo`).
    pub signo: i32,
    /// `si_code`: `SI_USER` (0) for `kill`, `SI_KERNEL` (0x80) for what the kernel
    /// sends itself, e.g. a terminal's ^C to its foreground process group.
    pub code: i32,
    /// The sender's pid, for `SI_USER` and `SI_QUEUE`.
    pub pid: i32,
}

impl SignalInfo {
    /// Sent by the kernel (`SI_KERNEL`), not by a process: a terminal's ^C, ^\ or
    /// hang-up, which go to a whole process group.
    pub fn from_kernel(&self) -> bool {
        self.code == libc::SI_KERNEL
    }
}

impl SignalFd {
    /// The signal mask from before [`SignalFd::block`], for a child to put back
    /// between fork and exec (a blocked mask survives both).
    pub fn saved_mask(&self) -> SavedMask {
        SavedMask(self.old_mask)
    }
}

/// A signal mask saved by [`SignalFd::block`].
#[derive(Clone, Copy)]
pub struct SavedMask(libc::sigset_t);

impl std::fmt::Debug for SavedMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SavedMask")
    }
}

impl SavedMask {
    /// Makes this the calling thread's mask. Only `pthread_sigmask`, which is
    /// async-signal-safe, so it may run between fork and exec.
    pub fn restore(&self) {
        sys::set_signal_mask(&self.0);
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        sys::set_signal_mask(&self.old_mask);
    }
}

/// Signals the kernel sends about a terminal: its new size (`SIGWINCH`), a read or
/// (under `tostop`) a write from a background process group (`SIGTTIN`,
/// `SIGTTOU`). From the kernel ([`SignalInfo::from_kernel`]) they concern the
/// receiver's own use of its terminal; sent by a user to a process that supervises
/// a server, they are the server's business (gunicorn adds and removes workers on
/// `TTIN`/`TTOU`, nginx stops its workers gracefully on `WINCH`).
pub const TERMINAL_SIGNALS: [i32; 3] = [libc::SIGWINCH, libc::SIGTTIN, libc::SIGTTOU];

/// Every signal that ends a process by default and reaches it only when sent
/// (`kill`, a timer, a terminal, a resource limit), in numeric order: the
/// standard ones and the real-time ones the C library leaves to programs. Not the
/// faults a thread raises itself (`SIGSEGV`, `SIGBUS`, `SIGFPE`, `SIGILL`,
/// `SIGTRAP`, `SIGSYS`, `SIGABRT`), which the kernel delivers even when blocked,
/// nor `SIGKILL`/`SIGSTOP`, which cannot be blocked, nor `SIGPIPE`, which fdgrab
/// ignores (blocked, a write's `EPIPE` would queue it for the reader), nor
/// `SIGXCPU`/`SIGXFSZ`, which tell a process about its own resource limits (not
/// something to pass on to another). A process that must not be
/// ended midway by a stray `kill -USR1` blocks all of these (see [`SignalFd`]).
pub fn ending_by_default() -> Vec<i32> {
    let mut sigs = vec![
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGTERM,
        libc::SIGSTKFLT,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
    ];
    sigs.sort_unstable();
    sigs.extend(libc::SIGRTMIN()..=libc::SIGRTMAX());
    sigs
}

/// The conventional name of a signal (`TERM` for 15), for messages.
pub fn signal_name(sig: i32) -> String {
    const NAMES: &[(i32, &str)] = &[
        (libc::SIGHUP, "HUP"),
        (libc::SIGINT, "INT"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGKILL, "KILL"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGUSR2, "USR2"),
        (libc::SIGPIPE, "PIPE"),
        (libc::SIGALRM, "ALRM"),
        (libc::SIGTERM, "TERM"),
        (libc::SIGCHLD, "CHLD"),
        (libc::SIGCONT, "CONT"),
        (libc::SIGSTOP, "STOP"),
        (libc::SIGTSTP, "TSTP"),
        (libc::SIGTTIN, "TTIN"),
        (libc::SIGTTOU, "TTOU"),
        (libc::SIGWINCH, "WINCH"),
    ];
    match NAMES.iter().find(|(n, _)| *n == sig) {
        Some((_, name)) => format!("SIG{name}"),
        None => format!("signal {sig}"),
    }
}

/// Parses `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(s: &str) -> std::result::Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) {
            Ok(n)
        } else {
            Err(format!(
                "signal number {n} is out of range (1-{})",
                libc::SIGRTMAX()
            ))
        };
    }
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    (1..32)
        .find(|&n| signal_name(n) == format!("SIG{bare}"))
        .ok_or_else(|| {
            format!("'{s}' is not a signal name (e.g. TERM, HUP, QUIT, USR2, WINCH, or a number)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signal_names() {
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigquit"), Ok(libc::SIGQUIT));
        assert_eq!(parse_signal("SIGWINCH"), Ok(libc::SIGWINCH));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("0").unwrap_err().contains("out of range"));
        assert!(parse_signal("BOGUS").unwrap_err().contains("'BOGUS'"));
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
    }
}
