//! Routines: several injected calls run in one resume, from code written into the
//! scratch mapping, ending in a trap (see `arch::send_routine`). A routine saves
//! the stops between its calls; it runs only where it keeps what the per-call
//! steps guarantee, else the caller makes the same calls one by one:
//!
//! - the scratch mapping is read+exec for its whole life (no writable and
//!   executable page, and nothing else of the target's is touched), asked for
//!   only when the thread's filters are in force (not suspended, not unchecked)
//!   and let such an `mmap` through; an `mmap` the kernel refuses (an LSM) gets a
//!   plain read+write mapping instead;
//! - every call of the routine passes the thread's filters with its exact
//!   arguments and the instruction pointer it will show them (in the scratch
//!   mapping, not where a step's call would be), and a filter that looks at an
//!   argument only the routine learns (the fd `socket` returns) rules the routine
//!   out;
//! - signals: the thread's are blocked as for a step, so none is delivered into
//!   the routine; a SIGSTOP is passed on as a step passes it on; a signal the
//!   routine forces (a fault, a seccomp trap of a filter added meanwhile) ends it
//!   there, undelivered, and the caller closes whatever it had opened;
//! - it ends in a forced SIGTRAP (`int3`), like a step, so it is not used where a
//!   step's is not (SIGTRAP ignored or pending in the target);
//! - the thread stops on the signal path at its end, as after a step, so the
//!   restart decision at the detach is the kernel's, unchanged.

use super::sigmask::ROUTINE_FAULT_BITS;
use super::stop::{classify, Stop};
use super::{Session, State};
use crate::error::{Error, Result};
use crate::inject::arch::{Regs, SYSCALL_INSN};
use crate::inject::ptrace;
use crate::inject::seccomp::{self, Gate, Planned};
use std::time::{Duration, Instant};

/// How long a routine may run before it is stopped where it is: its calls never
/// block (a datagram `sendmsg` with `MSG_DONTWAIT`, a `socket`, the `close` of
/// that socket), so only code that is no longer ours (another thread of the target
/// rewrote it) or a starved thread takes this long.
pub(crate) const ROUTINE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a routine's run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RoutineEnd {
    /// At its final trap.
    Trap,
    /// On a signal it forced (a fault, a seccomp trap), not delivered.
    Forced(i32),
    /// Stopped where it was after [`ROUTINE_TIMEOUT`].
    GivenUp,
}

impl Session<'_> {
    /// Whether a read+exec scratch mapping may be asked for (see the module
    /// documentation).
    pub(super) fn exec_scratch_allowed(&self) -> bool {
        // Where the routine can never run (see [`Self::routine_allowed`]), an
        // executable mapping would cost the probe and the staging for nothing.
        if self.no_forced_trap || !self.mask_by_ptrace {
            return false;
        }
        let ip = self.insn + SYSCALL_INSN.len() as u64;
        match &self.gate {
            Gate::Open => true,
            // A filter that refuses to make memory executable (systemd's
            // MemoryDenyWriteExecute= refuses `mprotect` with PROT_EXEC, and lets a
            // read+exec `mmap` through) says the target runs no code that was not
            // mapped from a file: it gets none of ours either.
            Gate::Checked(filters) => {
                let args = super::scratch_mmap(libc::PROT_EXEC);
                let exec = [
                    0,
                    super::SCRATCH_LEN,
                    (libc::PROT_READ | libc::PROT_EXEC) as u64,
                ];
                seccomp::refused_now(filters, libc::SYS_mmap, &args, ip).is_none()
                    && seccomp::refused_now(filters, libc::SYS_mprotect, &exec, ip).is_none()
            }
            Gate::Suspended { .. } | Gate::Unchecked => false,
        }
    }

    /// Whether a routine whose `calls` (each with the instruction pointer it shows a
    /// filter; `None` for an argument an earlier call of the routine returns) may
    /// run from the scratch mapping now.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn routine_allowed(&self, calls: &[(Planned, u64)]) -> bool {
        // Where the mask is set by injected calls (a thread stopped in ppoll,
        // sigsuspend and the like, whose saved mask the kernel still has to put
        // back), the routine's own mask changes by ptrace would clear that flag
        // and read the saved mask for the session's: such a thread is served
        // call by call.
        if !self.scratch_exec
            || self.no_forced_trap
            || !self.mask_by_ptrace
            || self.state != State::Stopped
        {
            return false;
        }
        match &self.gate {
            Gate::Open => true,
            Gate::Checked(filters) => seccomp::routine_runs(filters, calls),
            Gate::Suspended { .. } | Gate::Unchecked => false,
        }
    }

    /// Takes the read+exec mapping at `addr` as the scratch mapping if it can be
    /// written through `/proc/PID/mem` (a kernel built or booted with
    /// `proc_mem.force_override=never` refuses); else unmaps it and returns false,
    /// for a read+write one.
    pub(super) fn exec_scratch_writable(&mut self, addr: u64) -> Result<bool> {
        self.scratch = Some(addr);
        self.scratch_exec = true;
        match self.write_through_mem(addr, &[0]) {
            Ok(()) => return Ok(true),
            Err(e @ Error::NoSuchProcess { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!(pid = self.pid, error = %e, "the read+exec scratch mapping cannot be written; injecting call by call");
            }
        }
        self.scratch_exec = false;
        let r = self.syscall(libc::SYS_munmap, &[addr, super::SCRATCH_LEN])?;
        if r != 0 {
            return Err(super::remote_error(
                self.pid,
                None,
                "munmap (scratch page, injected)",
                r,
            ));
        }
        self.scratch = None;
        Ok(false)
    }

    /// Writes into the target through `/proc/PID/task/TID/mem`, which (unlike
    /// `process_vm_writev`) reaches a read-only page, as a debugger's breakpoints do.
    pub(super) fn write_through_mem(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let pid = self.pid;
        if self.mem.is_none() {
            let path = format!("/proc/{pid}/task/{}/mem", self.tid);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| self.io_error("opening the target's /proc/PID/mem", e))?;
            self.mem = Some(file);
        }
        let written = match &self.mem {
            Some(mem) => mem.write_all_at(data, addr),
            None => Ok(()),
        };
        written.map_err(|e| self.io_error("writing scratch memory through /proc/PID/mem", e))
    }

    fn io_error(&self, op: &'static str, e: std::io::Error) -> Error {
        if !self.target.is_alive() {
            return Error::NoSuchProcess { pid: self.pid };
        }
        Error::Io {
            op,
            pid: self.pid,
            fd: None,
            source: e,
        }
    }

    /// Runs a routine: the frame `frame` makes from the thread's saved registers
    /// (entering the routine), resumed until the routine's trap leaves the
    /// instruction pointer at `end`. Returns the registers there; or those at a
    /// signal the routine forced (a fault, a seccomp trap), where it was stopped
    /// and not resumed (the signal is not delivered); or those where it was
    /// stopped after running too long (see [`RoutineEnd`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn run_routine(
        &mut self,
        frame: impl FnOnce(&Regs) -> Regs,
        end: u64,
    ) -> Result<(Regs, RoutineEnd)> {
        match self.state {
            State::Stopped => {}
            State::Gone => return Err(self.gone_error()),
            State::Seized | State::Finished => {
                return Err(Error::InvalidArgument(
                    "an injected routine needs a stopped thread".into(),
                ))
            }
        }
        let tid = self.tid;
        frame(&self.saved)
            .write(tid)
            .map_err(|e| self.ptrace_error("PTRACE_SETREGS", e))?;
        // Faults unblocked while it runs, so that forcing one keeps the target's
        // handler (see `ROUTINE_FAULT_BITS`); the session's mask is back at its stop.
        let mask = ptrace::sigmask(tid).map_err(|e| self.ptrace_error("PTRACE_GETSIGMASK", e))?;
        ptrace::set_sigmask(tid, mask & !ROUTINE_FAULT_BITS)
            .map_err(|e| self.ptrace_error("PTRACE_SETSIGMASK", e))?;
        let r = self.resume_routine(end);
        if self.state == State::Gone {
            return r;
        }
        let back = ptrace::set_sigmask(tid, mask);
        let (regs, forced) = r?;
        back.map_err(|e| self.ptrace_error("PTRACE_SETSIGMASK", e))?;
        Ok((regs, forced))
    }

    /// Resumes a routine entered by [`Session::run_routine`] until it stops at
    /// `end`, on a signal it forced, or at [`ROUTINE_TIMEOUT`].
    fn resume_routine(&mut self, end: u64) -> Result<(Regs, RoutineEnd)> {
        let tid = self.tid;
        let deadline = Instant::now() + ROUTINE_TIMEOUT;
        let mut given_up = false;
        let mut deliver = 0;
        loop {
            ptrace::cont(tid, deliver).map_err(|e| self.ptrace_error("PTRACE_CONT", e))?;
            deliver = 0;
            let status = loop {
                if given_up {
                    // As for a step's call, from here the stop is waited for without
                    // a deadline: a thread left running in our code with our
                    // registers (when fdgrab exits) would be worse. It comes at once
                    // unless the thread is in a call that even the interrupt does
                    // not end (say, a user-notification wait made killable).
                    break ptrace::wait(tid, &mut self.spin)
                        .map_err(|e| self.ptrace_error("waitpid", e))?;
                }
                match ptrace::wait_until(tid, &mut self.spin, deadline) {
                    Ok(Some(status)) => break status,
                    Err(e) => return Err(self.ptrace_error("waitpid", e)),
                    // Its three calls never block: code that runs this long is not
                    // ours any more (another thread of the target rewrote the page),
                    // a call a filter added meanwhile holds (a user notification), or
                    // a starved thread. Either way it is stopped where it is.
                    Ok(None) => {
                        tracing::debug!(
                            pid = self.pid,
                            "the injected routine did not end; interrupting it"
                        );
                        ptrace::interrupt(tid)
                            .map_err(|e| self.ptrace_error("PTRACE_INTERRUPT", e))?;
                        given_up = true;
                    }
                }
            };
            self.stops += 1;
            let sig = match classify(status) {
                Stop::Gone => return Err(self.died()),
                // Our interrupt's stop (or a group stop that took its place).
                Stop::Event(_) if given_up => {
                    let regs =
                        Regs::read(tid).map_err(|e| self.ptrace_error("PTRACE_GETREGS", e))?;
                    return Ok((regs, RoutineEnd::GivenUp));
                }
                // A group stop (a SIGSTOP passed on) ends with this resume, as at a step.
                Stop::Event(_) | Stop::Syscall => continue,
                Stop::Signal(sig) => sig,
            };
            let regs = Regs::read(tid).map_err(|e| self.ptrace_error("PTRACE_GETREGS", e))?;
            match sig {
                // A pending interrupt of ours is met (and passed) at the next step.
                libc::SIGTRAP if regs.instruction_pointer() == end => {
                    return Ok((regs, RoutineEnd::Trap))
                }
                libc::SIGSTOP => deliver = libc::SIGSTOP,
                // Not the routine's own (it has one trap, at its end): sent by
                // someone else and dropped, as at a step.
                libc::SIGTRAP => {}
                // Sent by a process (`kill`, `tgkill`: a code of 0 or below), not
                // forced by the routine: dropped like a foreign SIGTRAP. Taken for
                // forced, a SIGSYS would pass for a seccomp skip of the call before
                // the stop, and the routine's progress (which fd is open) be misread.
                sig if ptrace::signal_code(tid)
                    .map_err(|e| self.ptrace_error("PTRACE_GETSIGINFO", e))?
                    <= 0 =>
                {
                    tracing::debug!(
                        pid = self.pid,
                        sig,
                        "a signal sent during the routine: dropped"
                    );
                }
                sig => {
                    tracing::debug!(
                        pid = self.pid,
                        sig,
                        ip = format_args!("{:#x}", regs.instruction_pointer()),
                        "the injected routine forced a signal; stopping it there"
                    );
                    return Ok((regs, RoutineEnd::Forced(sig)));
                }
            }
        }
    }
}
