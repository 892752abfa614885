//! Stops: what a `waitpid` status means, reaching the first stop, running one
//! injected call to its stop, and leaving from the last one.

use super::errors::RunError;
use super::{Session, State};
use crate::error::{Error, Result};
use crate::inject::arch::{Regs, SYSCALL_INSN};
use crate::inject::ptrace;
use rustix::io::Errno;
use std::time::{Duration, Instant};

/// How long a thread may take to reach a ptrace stop after `PTRACE_INTERRUPT`. A
/// thread in uninterruptible sleep (state D) stops only when it wakes up.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a `waitpid` status says about the tracee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// It exited or was killed.
    Gone,
    /// A syscall-entry or -exit stop (`SIGTRAP | 0x80`).
    Syscall,
    /// `PTRACE_EVENT_STOP`: our interrupt (SIGTRAP) or a group stop (a stop signal).
    Event(i32),
    /// A signal is about to be delivered.
    Signal(i32),
}

pub(super) fn classify(status: i32) -> Stop {
    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        return Stop::Gone;
    }
    let sig = libc::WSTOPSIG(status);
    if sig == libc::SIGTRAP | 0x80 {
        return Stop::Syscall;
    }
    if status >> 16 == libc::PTRACE_EVENT_STOP {
        return Stop::Event(sig);
    }
    Stop::Signal(sig)
}

impl Session<'_> {
    /// `PTRACE_INTERRUPT` and wait for the resulting stop, then save the registers.
    pub(super) fn stop_for_injection(&mut self, timeout: Duration) -> Result<()> {
        self.state = State::Seized;
        ptrace::interrupt(self.tid).map_err(|e| self.ptrace_error("PTRACE_INTERRUPT", e))?;
        let deadline = Instant::now() + timeout;
        loop {
            let status = match ptrace::wait_until(self.tid, &mut self.spin, deadline) {
                Ok(Some(st)) => st,
                Ok(None) => {
                    let op = if in_vfork(self.pid, self.tid) {
                        "waiting for the target thread to stop: it is in vfork, in \
                         uninterruptible sleep until its child runs execve or exits"
                    } else {
                        "waiting for the target thread to stop (it may be in uninterruptible sleep)"
                    };
                    return Err(Error::io(op, self.pid, None, Errno::TIMEDOUT));
                }
                Err(e) => return Err(self.ptrace_error("waitpid", e)),
            };
            self.stops += 1;
            match classify(status) {
                Stop::Gone => return Err(self.died()),
                Stop::Event(sig) => {
                    self.group_stopped = sig != libc::SIGTRAP;
                    break;
                }
                // A signal was being delivered: let it go on, our interrupt stays pending.
                Stop::Signal(sig) => {
                    ptrace::cont(self.tid, sig).map_err(|e| self.ptrace_error("PTRACE_CONT", e))?
                }
                Stop::Syscall => {
                    ptrace::cont(self.tid, 0).map_err(|e| self.ptrace_error("PTRACE_CONT", e))?
                }
            }
        }
        self.saved = Regs::read(self.tid).map_err(|e| self.ptrace_error("PTRACE_GETREGS", e))?;
        self.state = State::Stopped;
        if !self.saved.is_native_abi() {
            return Err(Error::Io {
                op:
                    "ptrace injection (a 32-bit process; only the native 64-bit ABI is implemented)",
                pid: self.pid,
                fd: None,
                source: std::io::Error::from(std::io::ErrorKind::Unsupported),
            });
        }
        Ok(())
    }

    /// Runs the frame with `PTRACE_SINGLESTEP` over the `syscall` instruction: one
    /// stop (the single-step SIGTRAP, with the instruction pointer just past the
    /// instruction) instead of a syscall-entry and a syscall-exit stop.
    ///
    /// Whether the call has run is read from the instruction pointer at each stop, so
    /// a resume never steps an instruction of the target's own. Pending signals are
    /// reported before the instruction runs: while the thread's signals are not
    /// blocked yet (`blocked` false) such a signal ends the attempt
    /// ([`RunError::SignalFirst`]); once they are, the only signals left are SIGSTOP,
    /// which is passed on, and those the call itself forces (SIGSYS from a seccomp
    /// trap, a fault), which are dropped. A forced signal is reported before the
    /// step's SIGTRAP. Returns the result and the forced signal dropped, if any.
    pub(super) fn step_over_syscall(
        &mut self,
        frame: &Regs,
        nr: i64,
        blocked: bool,
    ) -> std::result::Result<(i64, Option<i32>), RunError> {
        let after = self.insn + SYSCALL_INSN.len() as u64;
        let mut deliver = 0;
        let mut forced = None;
        loop {
            ptrace::single_step(self.tid, deliver)
                .map_err(|e| self.ptrace_error("PTRACE_SINGLESTEP", e))?;
            deliver = 0;
            let status = self.wait()?;
            let sig = match classify(status) {
                Stop::Gone => return Err(self.died().into()),
                // Group-stop and other event stops come before a queued SIGTRAP is
                // reported; resuming again reports it without running anything.
                Stop::Event(_) | Stop::Syscall => continue,
                Stop::Signal(sig) => sig,
            };
            let regs = Regs::read(self.tid).map_err(|e| self.ptrace_error("PTRACE_GETREGS", e))?;
            let done = regs.instruction_pointer() == after;
            if sig == libc::SIGTRAP && done {
                if self.restarted(&regs, frame, nr)? {
                    continue;
                }
                return Ok((regs.syscall_result(), forced));
            }
            // Interrupted before it ran (or rewound for a restart), or a signal the
            // call forced.
            deliver = self.on_signal(sig, nr, done, blocked, &mut forced)?;
            // If the call ran, its SIGTRAP is still queued and is reported on the
            // next resume, before the thread runs any instruction of its own.
        }
    }

    /// Runs the frame with `PTRACE_SYSCALL`: a syscall-entry and a syscall-exit stop,
    /// and no forced SIGTRAP. Used for the call after which the thread's mask blocks
    /// SIGTRAP again: the single-step's SIGTRAP, forced on a blocked signal, would
    /// unblock it and reset its handler to SIG_DFL. Signals are handled as in
    /// [`Session::step_over_syscall`]; the exit stop is not on the signal path, but the
    /// kernel takes the restart decision after it all the same (on the way out to
    /// user mode), so detaching there with the original registers back is as exact.
    pub(super) fn through_syscall_stops(
        &mut self,
        frame: &Regs,
        nr: i64,
        blocked: bool,
    ) -> std::result::Result<(i64, Option<i32>), RunError> {
        let mut deliver = 0;
        let mut entered = false;
        let mut forced = None;
        loop {
            ptrace::syscall(self.tid, deliver)
                .map_err(|e| self.ptrace_error("PTRACE_SYSCALL", e))?;
            deliver = 0;
            let sig = match classify(self.wait()?) {
                Stop::Gone => return Err(self.died().into()),
                Stop::Syscall if entered => {
                    let regs =
                        Regs::read(self.tid).map_err(|e| self.ptrace_error("PTRACE_GETREGS", e))?;
                    if self.restarted(&regs, frame, nr)? {
                        entered = false;
                        continue;
                    }
                    return Ok((regs.syscall_result(), forced));
                }
                Stop::Syscall => {
                    entered = true;
                    continue;
                }
                Stop::Event(_) => continue,
                Stop::Signal(sig) => sig,
            };
            deliver = self.on_signal(sig, nr, entered, blocked, &mut forced)?;
        }
    }

    /// An injected call that a signal interrupted ends with a restart code in its
    /// result register (`-ERESTARTSYS` and the like: a blocking call such as a
    /// `munmap` a seccomp user-notification supervisor holds, met by a SIGSTOP, the
    /// one signal the session cannot block; never a `close`, which the kernel turns
    /// into `EINTR` since its fd is already gone). The kernel turns that into a restart on the way out of the
    /// stop, after the tracer has looked, and the code is not a result: taken as
    /// one, a cleanup `munmap` "failed" with error 512 and left the scratch page
    /// mapped. No handler can run here (everything else is blocked, and SIGSTOP has
    /// none), so the kernel would restart the call: it is put back as it was, to be
    /// run again. Returns whether it was.
    fn restarted(
        &mut self,
        regs: &Regs,
        frame: &Regs,
        nr: i64,
    ) -> std::result::Result<bool, RunError> {
        if regs.pending_restart().is_none() {
            return Ok(false);
        }
        tracing::debug!(
            pid = self.pid,
            nr,
            ret = regs.syscall_result(),
            "an injected call was interrupted by a signal; restarting it"
        );
        // The frame the call was started with, not one rebuilt from `regs`: on
        // aarch64 the first argument's register now holds the restart code (the
        // kernel keeps the original in `orig_x0`, which ptrace cannot read).
        frame
            .write(self.tid)
            .map_err(|e| self.ptrace_error("PTRACE_SETREGS", e))?;
        Ok(true)
    }

    /// A signal reported while an injected call runs, other than the step's own
    /// SIGTRAP: what to deliver on the next resume. SIGSTOP is passed on. Before
    /// the call has run (`ran` false), a fault of our frame is an error, and while the
    /// thread's signals are not blocked yet any other signal ends the attempt
    /// ([`RunError::SignalFirst`]). Otherwise, with everything but SIGTRAP blocked, only
    /// a signal forced by the call gets here (SIGSYS from a seccomp trap, a fault), or
    /// a stale SIGTRAP of an earlier step (or, rarely, one sent by someone else).
    /// Delivering it would run the target's handler on our frame, or kill it; it is
    /// dropped and, unless a SIGTRAP, recorded in `forced`.
    fn on_signal(
        &mut self,
        sig: i32,
        nr: i64,
        ran: bool,
        blocked: bool,
        forced: &mut Option<i32>,
    ) -> std::result::Result<i32, RunError> {
        if !ran {
            self.check_not_faulted(sig, nr)?;
        }
        match sig {
            libc::SIGSTOP => return Ok(libc::SIGSTOP),
            sig if !ran && !blocked => return Err(RunError::SignalFirst(sig)),
            sig => {
                tracing::debug!(
                    pid = self.pid,
                    sig,
                    nr,
                    "dropping a signal forced by an injected call"
                );
                if sig != libc::SIGTRAP {
                    *forced = Some(sig);
                }
            }
        }
        Ok(0)
    }

    /// Fails if `sig`, reported before the call ran, is a fault of our frame (the
    /// `syscall` instruction we jumped to is not executable after all, say a page
    /// now mapped where the vDSO was): delivering it would kill the target or run
    /// its handler on our frame, and stepping again would fault forever. Detaching
    /// from this stop discards it.
    fn check_not_faulted(&mut self, sig: i32, nr: i64) -> std::result::Result<(), RunError> {
        if !matches!(
            sig,
            libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE
        ) {
            return Ok(());
        }
        let code =
            ptrace::signal_code(self.tid).map_err(|e| self.ptrace_error("PTRACE_GETSIGINFO", e))?;
        if code <= 0 {
            // Sent by a process: an ordinary signal.
            return Ok(());
        }
        Err(Error::Io {
            op: "running an injected syscall (the syscall instruction used faulted; the signal was not delivered)",
            pid: self.pid,
            fd: None,
            source: std::io::Error::other(format!(
                "signal {sig} at {:#x} before {} ran",
                self.insn,
                super::syscall_name(nr)
            )),
        }
        .into())
    }

    /// Waits for the thread's next stop, spinning briefly first (see [`ptrace::Spin`]).
    ///
    /// No deadline, unlike [`Session::stop_for_injection`]'s wait, and on purpose for
    /// now. Here the thread has been resumed into one of our calls: the stop comes when
    /// that call returns, and a signal, group stop, exit or SIGKILL also ends the wait.
    /// It can still block for as long as the call itself blocks: `close` or `dup2` of a
    /// file whose flush hangs (a FUSE daemon that does not answer, the target itself
    /// being that daemon, a dead NFS server), where even `PTRACE_INTERRUPT` does not
    /// return the call (FUSE waits killably once the request is sent). Giving up
    /// there is worse than waiting: a running tracee cannot be detached, and when
    /// fdgrab exited the kernel would let the call return into our frame with our
    /// registers, so the target would run on corrupted. The wait polls (see
    /// [`ptrace::wait`]), so a thread an `execve` elsewhere in the process took
    /// away ends it with `ECHILD`.
    pub(super) fn wait(&mut self) -> std::result::Result<i32, RunError> {
        let tid = self.tid;
        let status =
            ptrace::wait(tid, &mut self.spin).map_err(|e| self.ptrace_error("waitpid", e))?;
        self.stops += 1;
        Ok(status)
    }

    /// Puts the saved registers back and detaches.
    ///
    /// If the thread was stopped inside a syscall that the kernel still has to
    /// restart (see [`crate::inject::arch::Restart`]), the kernel decides between
    /// restart and EINTR on the way out of the signal path, with whatever signal
    /// became pending meanwhile. Every stop of a session is on that path (the
    /// interrupt's event stop, the single-step SIGTRAP of each call), so detaching from
    /// the last one with the original registers back lets the kernel decide exactly as
    /// it would have without us: no rewinding by hand, no extra stop.
    pub(super) fn restore_and_detach(&mut self) -> Result<()> {
        let tid = self.tid;
        if self.state == State::Seized {
            // It never stopped (uninterruptible sleep past the timeout): there is
            // nothing to restore, and a running tracee cannot be detached. If it stops
            // later it stays stopped until this process exits, when the kernel drops
            // the trace and lets it go; so the error says so.
            return ptrace::detach(tid, 0).map_err(|e| {
                Error::io(
                    "detaching from a thread that never stopped (it is released when fdgrab exits)",
                    self.pid,
                    None,
                    e,
                )
            });
        }
        self.gate
            .before_own_code(tid)
            .map_err(|e| self.ptrace_error("PTRACE_SETOPTIONS", e))?;
        self.saved
            .write(tid)
            .map_err(|e| self.ptrace_error("PTRACE_SETREGS", e))?;
        if let Some(restart) = self.saved.pending_restart() {
            tracing::trace!(pid = self.pid, ?restart, resumes = ?self.saved.after_restart(), "leaving an interrupted syscall to the kernel's restart logic");
        }
        // A SIGSTOP that came during the session was passed on, and the group stop it
        // began is the kernel's to keep: the detach puts the thread back into it if it
        // is still in effect. Sending another SIGSTOP here "to make sure" stopped a
        // process that a SIGCONT had continued meanwhile (a STOP/CONT pair during the
        // session), and showed its parent a stop nobody sent.
        ptrace::detach(tid, 0).map_err(|e| self.ptrace_error("PTRACE_DETACH", e))?;
        tracing::debug!(
            pid = self.pid,
            tid,
            stops = self.stops,
            "detached, target restored"
        );
        Ok(())
    }
}

/// Whether thread `tid` waits in `vfork` (or a `clone`/`clone3` with
/// `CLONE_VFORK`, as `posix_spawn` makes) for its child to exec or exit: the wait
/// ptrace cannot stop (`/proc/PID/task/TID/syscall`, readable to its tracer).
fn in_vfork(pid: crate::Pid, tid: crate::Pid) -> bool {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).unwrap_or_default();
    let mut fields = text.split_whitespace();
    let nr: Option<i64> = fields.next().and_then(|f| f.parse().ok());
    let arg0 = fields
        .next()
        .and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok());
    let vfork_flag = |flags: u64| flags & libc::CLONE_VFORK as u64 != 0;
    match (nr, arg0) {
        #[cfg(target_arch = "x86_64")]
        (Some(libc::SYS_vfork), _) => true,
        (Some(libc::SYS_clone), Some(flags)) => vfork_flag(flags),
        (Some(libc::SYS_clone3), Some(args)) => {
            // `struct clone_args` starts with the flags.
            let mut flags = [0u8; 8];
            crate::sys::process_vm_read(tid, args, &mut flags).is_ok()
                && vfork_flag(u64::from_ne_bytes(flags))
        }
        _ => false,
    }
}
