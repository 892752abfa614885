//! The emulator's loop: bytes both ways between our terminal and a pty master.

use super::termios::{copy_window_size, own_errno, RawMode};
use crate::error::Result;
use crate::signalfd::SignalFd;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::fs::OFlags;
use rustix::io::Errno;
use std::os::fd::BorrowedFd;

/// The detach escape, ssh style: the escape character typed at the start of a
/// line (first thing after attaching, or after Enter), then `.`, detaches. The
/// character typed twice sends it once; followed by anything else, both are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Escape(Option<u8>);

impl Escape {
    /// `~`, as ssh.
    pub const DEFAULT: Escape = Escape(Some(b'~'));
    /// No escape: every byte is passed on; only the end of the session (or a
    /// signal to fdgrab) ends the relay.
    pub const NONE: Escape = Escape(None);

    /// An escape with character `c`.
    pub fn new(c: u8) -> Self {
        Escape(Some(c))
    }

    /// The character, if the escape is enabled.
    pub fn char(self) -> Option<u8> {
        self.0
    }
}

/// Why [`relay`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The session ended: reading the master failed with `EIO` (or hit end of file),
    /// which the kernel reports once no process has the slave open any more.
    SessionEnded,
    /// The user typed the escape sequence.
    Detached,
    /// A terminating signal arrived: `SIGHUP`, `SIGINT`, `SIGTERM` or `SIGQUIT`.
    Signal(i32),
    /// Our own terminal went away (end of file or `EIO` reading it, or an error
    /// writing to it), e.g. the ssh connection fdgrab ran in dropped.
    TerminalGone,
}

/// The signals [`relay`] expects its signalfd to carry.
pub const RELAY_SIGNALS: [i32; 6] = [
    libc::SIGWINCH,
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGTSTP,
];

const BUF: usize = 64 * 1024;

/// Typed input kept while the program does not read it. Below this, input is
/// still read (so a detach works after a paste into a program that stopped
/// reading, whose pty queues only a few KiB); above it, input waits in our
/// terminal.
const MAX_PENDING: usize = 1024 * 1024;

/// Relays between our terminal (`raw`'s, read from `input`, written to `output`)
/// and the pty `master` until one of the [`RelayEnd`] events. `signals` should
/// carry [`RELAY_SIGNALS`]: `SIGWINCH` copies our window size to the master,
/// `SIGTSTP` puts our terminal back to normal, stops fdgrab, and switches to raw
/// mode again on `SIGCONT`, and the terminating ones end the relay.
///
/// The master is made non-blocking for the loop (so a program that stops reading
/// its input cannot stall its output), and its status flags are restored before
/// returning; so is our output's (as ssh does: a terminal that stops reading must
/// not hold fdgrab in a write where no signal reaches it). Input the program does not take yet is kept, up to 1 MiB; past
/// that, input is read only once the program takes some (and the escape with it).
/// `replay` (what a keeper kept while nobody was attached, see [`super::Keeper`])
/// is written to our terminal first, ahead of anything the master gives.
pub fn relay(
    master: BorrowedFd<'_>,
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    raw: &mut RawMode,
    signals: &SignalFd,
    escape: Escape,
    replay: Vec<u8>,
) -> Result<RelayEnd> {
    let _nonblocking = NonBlocking::set(master)?;
    // Our terminal too (as ssh does): a terminal that stops reading (a stalled
    // connection) must not block us in a write where signals cannot reach us.
    let mut out_nonblocking = Some(NonBlocking::set(output)?);
    let mut buf = vec![0u8; BUF];
    let mut to_master: Vec<u8> = Vec::new();
    let mut to_output: Vec<u8> = replay;
    let mut keys = EscapeState::new(escape);
    loop {
        // The master is read only while our terminal keeps up.
        let mut master_events = if to_output.is_empty() {
            PollFlags::IN
        } else {
            PollFlags::empty()
        };
        if !to_master.is_empty() {
            master_events |= PollFlags::OUT;
        }
        let output_events = if to_output.is_empty() {
            PollFlags::empty()
        } else {
            PollFlags::OUT
        };
        let input_events = if to_master.len() < MAX_PENDING {
            PollFlags::IN
        } else {
            PollFlags::empty()
        };
        let mut fds = [
            PollFd::new(&master, master_events),
            PollFd::new(&input, input_events),
            PollFd::new(signals, PollFlags::IN),
            PollFd::new(&output, output_events),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(own_errno("poll", e)),
        }
        let (m, i, s, o) = (
            fds[0].revents(),
            fds[1].revents(),
            fds[2].revents(),
            fds[3].revents(),
        );

        if s.contains(PollFlags::IN) {
            while let Some(sig) = signals.read()? {
                match sig {
                    libc::SIGWINCH => resize(raw, master),
                    libc::SIGTSTP => {
                        // The shell gets the terminal back as it left it.
                        drop(out_nonblocking.take());
                        raw.suspend();
                        // SIGSTOP rather than SIGTSTP: the latter is blocked (it
                        // arrives through the signalfd).
                        let _ = rustix::process::kill_process(
                            rustix::process::getpid(),
                            rustix::process::Signal::STOP,
                        );
                        raw.resume()?;
                        out_nonblocking.replace(NonBlocking::set(output)?);
                        resize(raw, master);
                    }
                    sig => return Ok(RelayEnd::Signal(sig)),
                }
            }
        }

        if o.intersects(PollFlags::OUT | PollFlags::HUP | PollFlags::ERR)
            && write_some(output, &mut to_output).is_err()
        {
            return Ok(RelayEnd::TerminalGone);
        }

        // A hang-up is reported whatever was asked; while our terminal lags behind,
        // reading on is bounded by what the pty still holds.
        if m.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            // A pty hands out at most a few KiB per read: gather what is there into
            // one write, so the terminal we write to wakes up once per batch.
            let mut got = 0;
            let mut ended = false;
            while got < buf.len() {
                match rustix::io::read(master, &mut buf[got..]) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => got += n,
                    Err(Errno::INTR) => {}
                    Err(Errno::AGAIN) => break,
                    Err(Errno::IO) => {
                        ended = true;
                        break;
                    }
                    Err(e) => return Err(own_errno("read(pty master)", e)),
                }
            }
            to_output.extend_from_slice(&buf[..got]);
            if write_some(output, &mut to_output).is_err() {
                return Ok(RelayEnd::TerminalGone);
            }
            if ended {
                // The program's last words, if our terminal takes them soon.
                flush_blocking(output, &to_output);
                return Ok(RelayEnd::SessionEnded);
            }
        }

        if m.contains(PollFlags::OUT) {
            if let Some(end) = send(master, &mut to_master)? {
                return Ok(end);
            }
        }

        if i.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) {
            match rustix::io::read(input, &mut buf[..4096]) {
                Ok(0) | Err(Errno::IO) => return Ok(RelayEnd::TerminalGone),
                Ok(n) => {
                    if keys.feed(&buf[..n], &mut to_master) {
                        // Whatever was typed before the escape still goes.
                        flush_blocking(master, &to_master);
                        return Ok(RelayEnd::Detached);
                    }
                }
                Err(Errno::AGAIN) | Err(Errno::INTR) => {}
                Err(e) => return Err(own_errno("read(our terminal)", e)),
            }
            // Usually the pty takes it at once; what it does not is kept.
            if let Some(end) = send(master, &mut to_master)? {
                return Ok(end);
            }
        }
    }
}

/// The master's status flags, put back on drop.
struct NonBlocking<'a> {
    fd: BorrowedFd<'a>,
    flags: OFlags,
}

impl<'a> NonBlocking<'a> {
    fn set(fd: BorrowedFd<'a>) -> Result<Self> {
        let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| own_errno("fcntl(F_GETFL)", e))?;
        rustix::fs::fcntl_setfl(fd, flags | OFlags::NONBLOCK)
            .map_err(|e| own_errno("fcntl(F_SETFL, O_NONBLOCK)", e))?;
        Ok(Self { fd, flags })
    }
}

impl Drop for NonBlocking<'_> {
    fn drop(&mut self) {
        if let Err(e) = rustix::fs::fcntl_setfl(self.fd, self.flags) {
            tracing::warn!(error = %e, "could not restore the master's status flags");
        }
    }
}

/// Writes what the master takes now of `pending`, keeping the rest.
fn send(master: BorrowedFd<'_>, pending: &mut Vec<u8>) -> Result<Option<RelayEnd>> {
    if pending.is_empty() {
        return Ok(None);
    }
    match rustix::io::write(master, pending) {
        Ok(n) => {
            pending.drain(..n);
            Ok(None)
        }
        Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(None),
        Err(Errno::IO) => Ok(Some(RelayEnd::SessionEnded)),
        Err(e) => Err(own_errno("write(pty master)", e)),
    }
}

fn resize(raw: &RawMode, master: BorrowedFd<'_>) {
    if let Err(e) = copy_window_size(raw.terminal(), master) {
        tracing::debug!(error = %e, "window size not copied");
    }
}

/// Writes what non-blocking `fd` takes now of `pending`, keeping the rest.
fn write_some(fd: BorrowedFd<'_>, pending: &mut Vec<u8>) -> std::result::Result<(), Errno> {
    while !pending.is_empty() {
        match rustix::io::write(fd, pending) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => {
                pending.drain(..n);
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Best effort, bounded (about a second) on non-blocking `master`: the last keys
/// before a detach, or the last output before the session's end.
fn flush_blocking(master: BorrowedFd<'_>, data: &[u8]) {
    let mut data = data;
    for _ in 0..100 {
        if data.is_empty() {
            return;
        }
        match rustix::io::write(master, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::AGAIN) | Err(Errno::INTR) => {
                let mut p = [PollFd::new(&master, PollFlags::OUT)];
                let timeout = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 10_000_000,
                };
                let _ = poll(&mut p, Some(&timeout));
            }
            Err(_) => return,
        }
    }
}

/// Recognises the escape in the typed bytes.
#[derive(Debug)]
pub(crate) struct EscapeState {
    escape: Escape,
    at_line_start: bool,
    saw_escape: bool,
}

impl EscapeState {
    pub(crate) fn new(escape: Escape) -> Self {
        Self {
            escape,
            at_line_start: true,
            saw_escape: false,
        }
    }

    /// Appends to `out` what `typed` sends on; true once the escape is complete.
    pub(crate) fn feed(&mut self, typed: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(esc) = self.escape.char() else {
            out.extend_from_slice(typed);
            return false;
        };
        for &b in typed {
            if self.saw_escape {
                self.saw_escape = false;
                match b {
                    b'.' => return true,
                    b if b == esc => {
                        out.push(esc);
                        self.at_line_start = false;
                        continue;
                    }
                    _ => out.push(esc),
                }
            } else if self.at_line_start && b == esc {
                self.saw_escape = true;
                continue;
            }
            out.push(b);
            self.at_line_start = matches!(b, b'\r' | b'\n');
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(typed: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut st = EscapeState::new(Escape::DEFAULT);
        let mut out = Vec::new();
        for chunk in typed {
            if st.feed(chunk, &mut out) {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn escape_only_at_line_start() {
        assert_eq!(run(&[b"~."]), (vec![], true));
        assert_eq!(run(&[b"ls\r", b"~", b"."]), (b"ls\r".to_vec(), true));
        assert_eq!(run(&[b"a~."]), (b"a~.".to_vec(), false));
        // Twice sends one, and the line is no longer at its start.
        assert_eq!(run(&[b"~~."]), (b"~.".to_vec(), false));
        // Anything else: both go.
        assert_eq!(run(&[b"~x"]), (b"~x".to_vec(), false));
        assert_eq!(run(&[b"\n~?~."]), (b"\n~?~.".to_vec(), false));
        let mut st = EscapeState::new(Escape::NONE);
        let mut out = Vec::new();
        assert!(!st.feed(b"~.", &mut out));
        assert_eq!(out, b"~.");
    }
}
