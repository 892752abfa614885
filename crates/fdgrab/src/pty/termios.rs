//! Our own terminal's modes and window size.

use crate::error::{Error, Result};
use rustix::termios::{self, OptionalActions, Termios};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Whether `fd` is a terminal (`isatty`).
pub fn is_terminal(fd: impl AsFd) -> bool {
    termios::isatty(fd)
}

/// Our terminal in raw mode: no line editing, no echo, no signal keys, no output
/// processing, so that every byte goes to the program on the other side and its
/// output arrives untouched. Dropping it puts the saved modes back (`TCSADRAIN`),
/// which is why callers take signals through a signalfd instead of dying on them.
#[derive(Debug)]
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
    raw: bool,
}

impl RawMode {
    /// Saves the modes of the terminal `fd` (`tcgetattr`) and switches it to raw
    /// mode (`cfmakeraw`). Fails with `ENOTTY` if `fd` is not a terminal.
    pub fn enter(fd: impl AsFd) -> Result<Self> {
        let fd = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| own_error("dup our terminal", e))?;
        let saved = termios::tcgetattr(&fd).map_err(|e| own_errno("tcgetattr", e))?;
        let mut me = Self {
            fd,
            saved,
            raw: false,
        };
        me.resume()?;
        Ok(me)
    }

    /// Puts the saved modes back for now (e.g. before stopping ourselves); `resume`
    /// switches to raw mode again.
    pub fn suspend(&mut self) {
        if self.raw {
            // Not `Drain`: a terminal that stopped reading (a stalled connection)
            // would hold us here for good, with the session depending on us.
            if let Err(e) = termios::tcsetattr(&self.fd, OptionalActions::Now, &self.saved) {
                tracing::warn!(error = %e, "could not restore the terminal's modes");
            }
            self.raw = false;
        }
    }

    /// Switches (back) to raw mode.
    pub fn resume(&mut self) -> Result<()> {
        let mut raw = self.saved.clone();
        raw.make_raw();
        termios::tcsetattr(&self.fd, OptionalActions::Now, &raw)
            .map_err(|e| own_errno("tcsetattr(raw)", e))?;
        self.raw = true;
        Ok(())
    }

    /// The terminal this guard is for.
    pub fn terminal(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.suspend();
    }
}

/// Copies the window size of terminal `from` (`TIOCGWINSZ`) to the pty master `to`
/// (`TIOCSWINSZ`). When the size changes, the kernel sends `SIGWINCH` to the
/// foreground process group on the slave, so full-screen programs redraw.
///
/// A size with no rows or no columns is a terminal that does not know its size (a
/// serial line, a pty whose emulator never set one): it is not copied, and the
/// program keeps the size it had rather than being told it has no room at all.
pub fn copy_window_size(from: impl AsFd, to: impl AsFd) -> Result<()> {
    let ws = termios::tcgetwinsize(from).map_err(|e| own_errno("TIOCGWINSZ", e))?;
    if ws.ws_row == 0 || ws.ws_col == 0 {
        tracing::debug!(
            rows = ws.ws_row,
            cols = ws.ws_col,
            "our terminal's size is unknown: not copied"
        );
        return Ok(());
    }
    termios::tcsetwinsize(to, ws).map_err(|e| own_errno("TIOCSWINSZ on the pty master", e))
}

fn me() -> crate::Pid {
    rustix::process::getpid().as_raw_nonzero().get()
}

pub(super) fn own_errno(op: &'static str, e: rustix::io::Errno) -> Error {
    Error::io(op, me(), None, e)
}

pub(super) fn own_error(op: &'static str, e: std::io::Error) -> Error {
    Error::Io {
        op,
        pid: me(),
        fd: None,
        source: e,
    }
}

/// Sends `SIGWINCH` to the foreground process group of the session on `master`'s
/// slave (`TIOCGPGRP` on the master), so that full-screen programs redraw on a new
/// terminal even when its size equals the old one (the kernel signals only changes).
pub fn redraw(master: impl AsFd) -> Result<()> {
    let pgrp =
        termios::tcgetpgrp(master).map_err(|e| own_errno("TIOCGPGRP on the pty master", e))?;
    rustix::process::kill_process_group(pgrp, rustix::process::Signal::WINCH)
        .map_err(|e| own_errno("kill(SIGWINCH) to the foreground process group", e))
}
