//! The emulator's loop: bytes both ways between our terminal and a pty master.

use super::termios::{copy_window_size, own_errno, own_error, RawMode};
use crate::error::Result;
use crate::signalfd::SignalFd;
use rustix::event::{poll, EventfdFlags, PollFd, PollFlags};
use rustix::fs::OFlags;
use rustix::io::Errno;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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
    /// A terminating signal arrived: `SIGHUP`, `SIGINT`, `SIGTERM`, `SIGQUIT`, or
    /// another of [`relay_signals`].
    Signal(i32),
    /// Our own terminal went away (end of file or `EIO` reading it, or an error
    /// writing to it), e.g. the ssh connection fdgrab ran in dropped.
    TerminalGone,
}

/// The signals the relay handles itself; [`relay_signals`] adds the others that
/// would end fdgrab.
const RELAY_SIGNALS: [i32; 6] = [
    libc::SIGWINCH,
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGTSTP,
];

/// The signals [`relay`] expects its signalfd to carry: those it handles itself
/// (`SIGWINCH`, `SIGHUP`, `SIGINT`, `SIGTERM`, `SIGQUIT`, `SIGTSTP`) and every
/// other signal that would end fdgrab by default (`SIGUSR1`, `SIGALRM`,
/// real-time signals, ...) but the relay's own
/// [`wake_signal`]: each of those ends the relay as [`RelayEnd::Signal`] like
/// `SIGTERM`, so that a stray `kill -USR1` leaves a keeper holding the session and
/// our terminal in its modes, instead of killing fdgrab with the terminal raw and
/// the program hung up.
pub fn relay_signals() -> Vec<i32> {
    let mut sigs = RELAY_SIGNALS.to_vec();
    // fdgrab's own resource limits end the relay as well, rather than fdgrab.
    let own_limits = [libc::SIGXCPU, libc::SIGXFSZ];
    for sig in crate::signalfd::ending_by_default()
        .into_iter()
        .chain(own_limits)
    {
        if sig != wake_signal() && !sigs.contains(&sig) {
            sigs.push(sig);
        }
    }
    sigs
}

/// One read of the master: a pty hands out what it holds (at most a few KiB at a
/// time under a fast writer), so this is never the limit.
const BUF: usize = 64 * 1024;

/// Typed input kept while the program does not read it. Below this, input is
/// still read (so a detach works after a paste into a program that stopped
/// reading, whose pty queues only a few KiB); above it, input waits in our
/// terminal.
const MAX_PENDING: usize = 1024 * 1024;

/// How long the last output (before a detach or a signal) or the last keys (before
/// the escape) may take to go out once the relay is ending.
const FLUSH_FOR: Duration = Duration::from_secs(1);

/// Relays between our terminal (`raw`'s, read from `input`, written to `output`)
/// and the pty `master` until one of the [`RelayEnd`] events. `signals` should
/// carry [`relay_signals`] (and be made on this thread, so the threads started
/// here keep them blocked): `SIGWINCH` copies our window size to the master,
/// `SIGTSTP` puts our terminal back to normal, stops fdgrab, and switches to raw
/// mode again on `SIGCONT`, and the terminating ones end the relay.
///
/// Each direction has threads of its own doing blocking reads and writes: the
/// output is one `read` of the master and one `write` to our terminal per chunk,
/// so a program writing fast is never held up waiting for a poll round to notice
/// its pty is full. Typed input goes through a queue (up to 1 MiB) to a thread
/// writing the master, so a program that stops reading its input cannot stall
/// the output, nor keep the escape from being seen. This thread only waits for
/// signals and for the end; it stops the others with a signal of their own
/// ([`wake_signal`], whose handler does nothing) that interrupts their system
/// calls.
///
/// The master's `O_NONBLOCK` (a keeper sets it) is cleared for the loop and its
/// status flags put back before returning. Our terminal's status flags are never
/// changed: they belong to an open file description shared with the shell that
/// runs fdgrab, which must not find its terminal non-blocking after fdgrab exits
/// (even when fdgrab is killed). A terminal that stops reading (a stalled
/// connection) holds the output thread in its write, not this one: signals still
/// end the relay, and after [`FLUSH_FOR`] the output not yet written is dropped.
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
    let _blocking = Blocking::set(master)?;
    install_wake_handler()?;
    let ends = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| own_errno("eventfd", e))?;
    let shared = Shared {
        stop: AtomicBool::new(false),
        end: Mutex::new(None),
        ends,
        typed: Mutex::new(Typed::default()),
        typed_changed: Condvar::new(),
    };
    let workers: [Worker; 3] = Default::default();
    std::thread::scope(|scope| {
        let (sh, w) = (&shared, &workers);
        let spawned = [
            std::thread::Builder::new()
                .name("relay-output".into())
                .spawn_scoped(scope, move || {
                    w[0].run(sh, || copy_output(master, output, sh, replay))
                }),
            std::thread::Builder::new()
                .name("relay-input".into())
                .spawn_scoped(scope, move || {
                    w[1].run(sh, || read_input(input, sh, escape))
                }),
            std::thread::Builder::new()
                .name("relay-to-master".into())
                .spawn_scoped(scope, move || w[2].run(sh, || write_master(master, sh))),
        ];
        let mut failed = None;
        for (s, w) in spawned.into_iter().zip(&workers) {
            if let Err(e) = s {
                // Never started: nothing to stop.
                w.done.store(true, Ordering::SeqCst);
                failed.get_or_insert(e);
            }
        }
        let end = match failed {
            Some(e) => Err(own_error("starting a relay thread", e)),
            None => wait_for_end(&shared, raw, master, signals),
        };
        // Whichever way it ended, the threads go before the master's flags are
        // put back and before the caller hands the master on.
        shared.stop.store(true, Ordering::SeqCst);
        shared.typed_changed.notify_all();
        for w in &workers {
            w.interrupt_until_done();
        }
        end
    })
}

/// Waits for a signal or a thread's end, on this thread.
fn wait_for_end(
    shared: &Shared,
    raw: &mut RawMode,
    master: BorrowedFd<'_>,
    signals: &SignalFd,
) -> Result<RelayEnd> {
    loop {
        let mut fds = [
            PollFd::new(signals, PollFlags::IN),
            PollFd::new(&shared.ends, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => return Err(own_errno("poll", e)),
        }
        if fds[0].revents().contains(PollFlags::IN) {
            while let Some(sig) = signals.read()? {
                match sig {
                    libc::SIGWINCH => resize(raw, master),
                    libc::SIGTSTP => {
                        // The shell gets the terminal back as it left it.
                        raw.suspend();
                        // SIGSTOP rather than SIGTSTP: the latter is blocked (it
                        // arrives through the signalfd).
                        let _ = rustix::process::kill_process(
                            rustix::process::getpid(),
                            rustix::process::Signal::STOP,
                        );
                        raw.resume()?;
                        resize(raw, master);
                    }
                    sig => return Ok(RelayEnd::Signal(sig)),
                }
            }
        }
        if let Some(end) = lock(&shared.end).take() {
            return end;
        }
    }
}

/// What the relay's threads share.
struct Shared {
    /// Set once the relay ends: every thread returns as soon as it sees it.
    stop: AtomicBool,
    /// The first end a thread reported.
    end: Mutex<Option<Result<RelayEnd>>>,
    /// Readable once `end` is set.
    ends: OwnedFd,
    typed: Mutex<Typed>,
    /// Signalled when `typed` changes (or the relay stops).
    typed_changed: Condvar,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Reports a thread's end (`None`: it stopped because it was asked to).
    fn finish(&self, end: Option<Result<RelayEnd>>) {
        let Some(end) = end else { return };
        let mut first = lock(&self.end);
        if first.is_none() && !self.stopping() {
            *first = Some(end);
            let _ = rustix::io::write(&self.ends, &1u64.to_ne_bytes());
        }
    }
}

/// Input read from our terminal, not yet written to the master.
#[derive(Default)]
struct Typed {
    data: Vec<u8>,
    /// The master thread holds bytes it took from `data` and has not written all.
    writing: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking thread is one of ours: its panic is what the caller sees (the
    // scope re-raises it); the data stays usable for the others' orderly end.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Master → our terminal: one blocking read, one blocking write. `None` once asked
/// to stop.
fn copy_output(
    master: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    shared: &Shared,
    replay: Vec<u8>,
) -> Option<Result<RelayEnd>> {
    if write_all(output, &replay, shared).is_err() {
        return Some(Ok(RelayEnd::TerminalGone));
    }
    let mut buf = vec![0u8; BUF];
    while !shared.stopping() {
        match rustix::io::read(master, &mut buf) {
            Ok(0) | Err(Errno::IO) => return Some(Ok(RelayEnd::SessionEnded)),
            Ok(n) => {
                // Read before a stop: still shown (within FLUSH_FOR), as nobody
                // else will have it.
                if write_all(output, &buf[..n], shared).is_err() {
                    return Some(Ok(RelayEnd::TerminalGone));
                }
            }
            Err(Errno::INTR) => {}
            // Someone else sharing the master's open file description made it
            // non-blocking again.
            Err(Errno::AGAIN) => wait_for(master, PollFlags::IN),
            Err(e) => return Some(Err(own_errno("read(pty master)", e))),
        }
    }
    None
}

/// Our terminal → the typed queue, watching for the escape. `None` once asked to
/// stop.
fn read_input(input: BorrowedFd<'_>, shared: &Shared, escape: Escape) -> Option<Result<RelayEnd>> {
    let mut keys = EscapeState::new(escape);
    let mut buf = [0u8; 4096];
    while !shared.stopping() {
        let n = match rustix::io::read(input, &mut buf) {
            Ok(0) | Err(Errno::IO) => return Some(Ok(RelayEnd::TerminalGone)),
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => {
                wait_for(input, PollFlags::IN);
                continue;
            }
            Err(e) => return Some(Err(own_errno("read(our terminal)", e))),
        };
        let mut typed = lock(&shared.typed);
        let detach = keys.feed(&buf[..n], &mut typed.data);
        shared.typed_changed.notify_all();
        if detach {
            // Whatever was typed before the escape still goes, if the program
            // takes it soon.
            let until = Instant::now() + FLUSH_FOR;
            while (!typed.data.is_empty() || typed.writing) && !shared.stopping() {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                typed = wait_typed(shared, typed, left);
            }
            return Some(Ok(RelayEnd::Detached));
        }
        // Past the bound, input waits in our terminal until the program reads.
        while typed.data.len() >= MAX_PENDING && !shared.stopping() {
            typed = wait_typed(shared, typed, Duration::from_millis(100));
        }
    }
    None
}

fn wait_typed<'a>(
    shared: &'a Shared,
    typed: MutexGuard<'a, Typed>,
    at_most: Duration,
) -> MutexGuard<'a, Typed> {
    match shared.typed_changed.wait_timeout(typed, at_most) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}

/// The typed queue → the master, blocking. `None` once asked to stop.
fn write_master(master: BorrowedFd<'_>, shared: &Shared) -> Option<Result<RelayEnd>> {
    let mut chunk = Vec::new();
    loop {
        {
            let mut typed = lock(&shared.typed);
            typed.writing = false;
            shared.typed_changed.notify_all();
            while typed.data.is_empty() && !shared.stopping() {
                typed = match shared.typed_changed.wait(typed) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
            if shared.stopping() {
                return None;
            }
            std::mem::swap(&mut chunk, &mut typed.data);
            typed.writing = true;
            shared.typed_changed.notify_all();
        }
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            match rustix::io::write(master, rest) {
                Ok(n) => rest = &rest[n..],
                Err(Errno::INTR) if shared.stopping() => return None,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => wait_for(master, PollFlags::OUT),
                Err(Errno::IO) => return Some(Ok(RelayEnd::SessionEnded)),
                Err(e) => return Some(Err(own_errno("write(pty master)", e))),
            }
        }
        chunk.clear();
    }
}

/// Writes all of `data` to blocking `fd`. Once the relay is stopping, gives up
/// after [`FLUSH_FOR`] (a terminal that stopped reading must not hold us).
fn write_all(
    fd: BorrowedFd<'_>,
    mut data: &[u8],
    shared: &Shared,
) -> std::result::Result<(), Errno> {
    let mut stopped_at: Option<Instant> = None;
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => wait_for(fd, PollFlags::OUT),
            Err(e) => return Err(e),
        }
        if shared.stopping() && stopped_at.get_or_insert_with(Instant::now).elapsed() >= FLUSH_FOR {
            break;
        }
    }
    Ok(())
}

/// For a descriptor someone else made non-blocking: waits (a while at most, and
/// interruptibly) until `events`.
fn wait_for(fd: BorrowedFd<'_>, events: PollFlags) {
    let mut p = [PollFd::new(&fd, events)];
    let t = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    let _ = poll(&mut p, Some(&t));
}

/// A `pthread_t`, which musl defines as a pointer (hence not `Send`).
#[derive(Clone, Copy)]
struct ThreadId(libc::pthread_t);

// SAFETY: the value is only an id handed back to `pthread_kill`; nothing is ever
// read or written through it, and `Worker` signals it only while the thread runs.
unsafe impl Send for ThreadId {}

/// A relay thread, as seen by the thread that stops it.
#[derive(Default)]
struct Worker {
    /// The thread's id while it runs; `None` before and after.
    running: Mutex<Option<ThreadId>>,
    done: AtomicBool,
}

impl Worker {
    /// Runs `body` on this (new) thread and reports its end to `shared`.
    fn run(&self, shared: &Shared, body: impl FnOnce() -> Option<Result<RelayEnd>>) {
        // SAFETY: pthread_self has no preconditions.
        *lock(&self.running) = Some(ThreadId(unsafe { libc::pthread_self() }));
        // Runs however `body` ends: nobody signals a thread that is gone, and a
        // panic still wakes the waiting thread (which would otherwise wait for an
        // end that never comes; the scope then passes the panic on).
        struct Done<'a>(&'a Worker, &'a Shared);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                *lock(&self.0.running) = None;
                self.0.done.store(true, Ordering::SeqCst);
                if std::thread::panicking() {
                    self.1.finish(Some(Err(own_error(
                        "relay thread",
                        std::io::Error::other("panicked"),
                    ))));
                }
            }
        }
        let _done = Done(self, shared);
        shared.finish(body());
    }

    /// Sends the wake signal to the thread until it has returned: one signal can
    /// land just before the blocking call it was meant to interrupt.
    fn interrupt_until_done(&self) {
        while !self.done.load(Ordering::SeqCst) {
            {
                let running = lock(&self.running);
                if let Some(ThreadId(t)) = *running {
                    // SAFETY: `t` is a thread of this process that has not
                    // returned: it clears `running` (under this lock) before it
                    // does.
                    unsafe { libc::pthread_kill(t, wake_signal()) };
                } else if self.done.load(Ordering::SeqCst) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The signal that interrupts a relay thread's blocking system call: the first
/// real-time signal the C library leaves to programs. The relay installs a
/// handler for it that does nothing (without `SA_RESTART`, so the call fails with
/// `EINTR`), and sends it only to its own threads.
pub fn wake_signal() -> i32 {
    libc::SIGRTMIN()
}

extern "C" fn on_wake(_: libc::c_int) {}

fn install_wake_handler() -> Result<()> {
    // SAFETY: a zeroed sigaction is valid (no flags, empty mask); the handler is
    // an `extern "C"` function that touches nothing.
    let r = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wake as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(wake_signal(), &sa, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(own_error(
            "sigaction(relay wake signal)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// The master's status flags, blocking for the relay, put back on drop.
struct Blocking<'a> {
    fd: BorrowedFd<'a>,
    flags: OFlags,
}

impl<'a> Blocking<'a> {
    fn set(fd: BorrowedFd<'a>) -> Result<Self> {
        let flags = rustix::fs::fcntl_getfl(fd).map_err(|e| own_errno("fcntl(F_GETFL)", e))?;
        rustix::fs::fcntl_setfl(fd, flags - OFlags::NONBLOCK)
            .map_err(|e| own_errno("fcntl(F_SETFL, blocking)", e))?;
        Ok(Self { fd, flags })
    }
}

impl Drop for Blocking<'_> {
    fn drop(&mut self) {
        if let Err(e) = rustix::fs::fcntl_setfl(self.fd, self.flags) {
            tracing::warn!(error = %e, "could not restore the master's status flags");
        }
    }
}

fn resize(raw: &RawMode, master: BorrowedFd<'_>) {
    if let Err(e) = copy_window_size(raw.terminal(), master) {
        tracing::debug!(error = %e, "window size not copied");
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
