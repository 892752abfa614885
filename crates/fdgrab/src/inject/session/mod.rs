//! One ptrace injection session on one thread of a target.
//!
//! Lifecycle: `PTRACE_SEIZE` + `PTRACE_INTERRUPT` (no SIGSTOP the target could see),
//! save the registers, block all blockable signals in the thread (with
//! `PTRACE_SETSIGMASK` where that is exact, else with an injected `rt_sigprocmask`
//! whose sets live briefly below the stack's red zone; see `sigmask`), map a scratch
//! page with an injected `mmap`, run any number of syscalls, then undo all of it in
//! reverse: close what we opened there, `munmap`, restore the mask, restore the
//! registers, detach. The same undo runs from `Drop` and on every error path.
//!
//! Each injected syscall is run by pointing the instruction pointer at a `syscall`
//! instruction that already exists in the target (in the vDSO, or the one the thread
//! is stopped after) and single-stepping over it (`PTRACE_SINGLESTEP`): one stop per call.
//! Nothing in the target's code is ever patched, so other threads running the same
//! code are unaffected. A routine of several calls (`routine`) runs instead from
//! the session's own scratch mapping, made read+exec for it.

mod errors;
mod locate;
mod routine;
mod sigmask;
mod stop;

pub(crate) use crate::inject::syscalls::syscall_name;
pub(crate) use errors::remote_error;
#[cfg(target_arch = "x86_64")]
pub(crate) use routine::{RoutineEnd, ROUTINE_TIMEOUT};

use super::arch::{Regs, SYSCALL_INSN};
use super::ptrace;
use super::seccomp::{self, k, Gate, Planned, SeccompPolicy, UNKNOWN};
use crate::error::{Error, Result};
use crate::pidfd::PidFd;
use crate::{Pid, TargetFd};
use errors::{seize_error, RunError};
use locate::find_syscall_insn;
use rustix::io::Errno;
use sigmask::{OurMask, MASK_AREA};
use std::marker::PhantomData;
use stop::STOP_TIMEOUT;

/// Size of the scratch mapping: room for a msghdr, a sockaddr and 253 fds of
/// `SCM_RIGHTS`, several times over.
const SCRATCH_LEN: u64 = 16 * 1024;

/// The arguments of the scratch mapping's `mmap`: readable, and `PROT_WRITE` or
/// `PROT_EXEC` besides.
fn scratch_mmap(prot: i32) -> [u64; 6] {
    [
        0,
        SCRATCH_LEN,
        (libc::PROT_READ | prot) as u64,
        (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
        u64::MAX,
        0,
    ]
}

/// Data laid out for the scratch mapping (see [`Session::stage`]): each piece
/// 16-byte aligned, as [`Session::push_bytes`] places it.
#[derive(Debug)]
pub(crate) struct Staged {
    /// The address in the target of `bytes[0]`.
    at: u64,
    bytes: Vec<u8>,
}

impl Staged {
    /// Appends `data`; returns the address it will have in the target.
    pub(crate) fn put(&mut self, data: &[u8]) -> u64 {
        self.bytes.resize((self.bytes.len() + 15) & !15, 0);
        let addr = self.at + self.bytes.len() as u64;
        self.bytes.extend_from_slice(data);
        addr
    }
}

/// Where the session stands with its thread. Whether a SIGSTOP must be passed on
/// and what the filters allow are kept apart: they are facts, not states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Seized; the thread has not reached a stop (or never did).
    Seized,
    /// At a ptrace stop on the signal path (our interrupt, the single-step SIGTRAP
    /// of an injected call, or a routine's trap) with its original registers
    /// saved. Detaching from here with those registers back lets the kernel
    /// finish an interrupted syscall (restart or EINTR) exactly as it would have.
    Stopped,
    /// The target died.
    Gone,
    /// Restored and detached, or given up.
    Finished,
}

/// An attached injection session. See the module documentation.
///
/// The session must stay on the thread that attached (ptrace ties the tracer to a
/// thread), so it is neither `Send` nor `Sync`. While it lives, SIGINT, SIGTERM,
/// SIGHUP and SIGQUIT are blocked in the calling thread, so they take effect only
/// after the target has been restored. In a multithreaded program, block them in
/// the other threads too.
#[derive(Debug)]
pub struct Session<'a> {
    target: &'a PidFd,
    pid: Pid,
    tid: Pid,
    /// The thread's registers when we stopped it (valid once it has stopped).
    saved: Regs,
    state: State,
    /// Address of a `syscall` instruction in the target.
    insn: u64,
    /// The thread's original blocked-signal set, once we have replaced it.
    old_mask: Option<u64>,
    /// Stack bytes we overwrite for the mask calls, put back afterwards.
    stack_backup: Option<(u64, [u8; 16])>,
    scratch: Option<u64>,
    scratch_used: u64,
    /// The scratch mapping is read+exec (for a routine, see `routine`): it is
    /// written through `mem`, since `process_vm_writev` honours protections.
    scratch_exec: bool,
    /// `/proc/PID/task/TID/mem`, opened for the first write to an exec scratch.
    mem: Option<std::fs::File>,
    /// How many ptrace stops the session has waited for (reported at the detach).
    stops: u32,
    /// Descriptors the session opened in the target and has not handed over.
    remote_fds: Vec<i32>,
    /// Block and restore the thread's signals with `PTRACE_SETSIGMASK` rather than
    /// injected `rt_sigprocmask` calls (see [`sigmask::mask_by_ptrace_is_exact`]).
    mask_by_ptrace: bool,
    /// Run calls through syscall stops instead of single-stepping: set for the call
    /// that puts back a mask blocking SIGTRAP, and for every call when the process
    /// ignores SIGTRAP or has one pending (see [`Session::through_syscall_stops`]).
    no_forced_trap: bool,
    /// A SIGTRAP of the target's own was pending when we looked (its `status`, just
    /// before seizing): the session keeps SIGTRAP blocked too, so that it stays
    /// pending rather than be taken for a step's (see [`Session::blocking_set`]).
    trap_pending: bool,
    /// A SIGSYS was pending when we looked: the session keeps it blocked, so that
    /// it stays pending rather than be taken for one a call forced (see
    /// [`Session::blocking_set`]).
    sys_pending: bool,
    /// The thread was killed by an `execve` in another thread, which took its pid
    /// (see [`Session::ptrace_error`]): gone, though the process lives on.
    replaced: bool,
    /// The first stop was a group stop (the process was stopped by a stop signal):
    /// the thread's signals are then blocked by ptrace, before it runs anything,
    /// whatever call it is in, so that no handler runs while the process is stopped.
    group_stopped: bool,
    /// Our own thread's mask while termination signals are held back.
    our_mask: Option<OurMask>,
    /// How long to poll for a stop before blocking in waitpid.
    spin: ptrace::Spin,
    /// What the thread's seccomp filters mean for the injected calls.
    gate: Gate,
    policy: SeccompPolicy,
    _not_send: PhantomData<*const ()>,
}

impl<'a> Session<'a> {
    /// Attaches to `target` (its thread-group leader, or another live thread if the
    /// leader has exited) and prepares it for injected syscalls.
    ///
    /// Errors: [`Error::NoSuchProcess`] if it is gone; [`Error::PermissionDenied`]
    /// when `PTRACE_SEIZE` gives `EPERM` (another tracer, Yama, uid, LSM);
    /// an error for a 32-bit target.
    ///
    /// The thread's seccomp filters are handled with the default [`SeccompPolicy`]:
    /// each injected call is checked against them before it runs.
    pub fn attach(target: &'a PidFd) -> Result<Session<'a>> {
        let owner = crate::access::fd_table_owner_status(target)?;
        Self::attach_planned(target, owner, SeccompPolicy::default(), &[], false)
    }

    /// [`Session::attach`] with a seccomp policy and the calls the caller plans to
    /// make besides the session's own (`rt_sigprocmask`, `mmap`, `munmap`): when the
    /// thread is under seccomp they are all checked before anything runs in it, and
    /// the session refuses ([`Error::SeccompRefused`], [`Error::SeccompUnchecked`])
    /// rather than let a filter kill or trap the target.
    ///
    /// `owner` is the thread to use and its `status`, read just before
    /// ([`crate::access::fd_table_owner_status`]). With `exec_scratch`, the scratch
    /// mapping is made read+exec where that is allowed, for a routine (see
    /// [`Session::routine_allowed`]); its data then goes in through `/proc/PID/mem`.
    pub(crate) fn attach_planned(
        target: &'a PidFd,
        owner: (Pid, crate::procfs::Status),
        policy: SeccompPolicy,
        plan: &[Planned],
        exec_scratch: bool,
    ) -> Result<Session<'a>> {
        let pid = target.pid();
        let (tid, status) = owner;
        let pending = status.sig_pnd.unwrap_or(0) | status.shd_pnd.unwrap_or(0);
        let trap_pending = pending & sigmask::TRAP_BIT != 0;
        // A routine's faults must find no signal of theirs pending or ignored.
        let exec_scratch = exec_scratch
            && (pending | status.sig_ign.unwrap_or(u64::MAX)) & sigmask::ROUTINE_FAULT_BITS == 0;
        let seccomp_mode = seccomp::before_seize(pid, tid, &status, policy)?;
        let our_mask = OurMask::hold_signals();
        if let Err(e) = ptrace::seize(tid, ptrace::O_TRACESYSGOOD) {
            our_mask.restore();
            return Err(seize_error(target, tid, e));
        }
        tracing::debug!(pid, tid, "seized");
        // The pid could have been reused between choosing the thread and seizing it;
        // the pidfd (or the start time) tells. A stranger is stopped and let go untouched.
        let stranger = !target.is_alive();
        let mut s = Session {
            target,
            pid,
            tid,
            saved: Regs::default(),
            state: State::Seized,
            insn: 0,
            old_mask: None,
            stack_backup: None,
            scratch: None,
            scratch_used: 0,
            scratch_exec: false,
            mem: None,
            stops: 0,
            remote_fds: Vec::new(),
            mask_by_ptrace: false,
            no_forced_trap: false,
            trap_pending,
            sys_pending: pending & sigmask::SYS_BIT != 0,
            group_stopped: false,
            replaced: false,
            our_mask: Some(our_mask),
            spin: ptrace::Spin::default(),
            gate: if seccomp_mode.is_none() && policy.is_forced() {
                Gate::Unchecked
            } else {
                Gate::Open
            },
            policy,
            _not_send: PhantomData,
        };
        if stranger {
            let _ = s.stop_for_injection(STOP_TIMEOUT);
            let _ = s.finish();
            return Err(Error::NoSuchProcess { pid });
        }
        match s.prepare(seccomp_mode.map(|m| (m, policy, plan)), exec_scratch) {
            Ok(()) => Ok(s),
            Err(e) => {
                if let Err(cleanup) = s.finish() {
                    tracing::warn!(pid, error = %cleanup, "restoring the target after a failed attach");
                }
                Err(e)
            }
        }
    }

    /// The process id of the target.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The thread the syscalls run on.
    pub fn tid(&self) -> Pid {
        self.tid
    }

    fn prepare(
        &mut self,
        seccomp: Option<(u8, SeccompPolicy, &[Planned])>,
        exec_scratch: bool,
    ) -> Result<()> {
        // A thread that was being traced by someone else cannot be seized, so from here
        // only we can stop it. Signal-delivery stops that come first are passed on.
        self.stop_for_injection(STOP_TIMEOUT)?;
        self.insn = find_syscall_insn(self.pid, self.tid, &self.saved)?;
        self.mask_by_ptrace = sigmask::mask_by_ptrace(&self.saved, self.insn, self.group_stopped);
        tracing::trace!(pid = self.pid, insn = format_args!("{:#x}", self.insn), regs = ?self.saved, mask_by_ptrace = self.mask_by_ptrace, "stopped");
        if let Some((mode, policy, plan)) = seccomp {
            let mut all = self.own_calls();
            all.extend_from_slice(plan);
            let ip = self.insn + SYSCALL_INSN.len() as u64;
            self.gate = seccomp::decide(self.pid, self.tid, mode, &all, ip, policy)?;
        }
        self.trap_pending &= !matches!(self.gate, Gate::Unchecked);
        self.no_forced_trap = self.sigtrap_ignored() || self.trap_pending;
        self.block_signals()?;
        if exec_scratch && self.exec_scratch_allowed() {
            let addr = self.syscall(libc::SYS_mmap, &scratch_mmap(libc::PROT_EXEC))?;
            if (-4095..0).contains(&addr) {
                // An LSM (SELinux execmem) or a memory limit: the per-call way needs
                // no executable page.
                tracing::debug!(
                    pid = self.pid,
                    ret = addr,
                    "no read+exec scratch mapping; injecting call by call"
                );
            } else if self.exec_scratch_writable(addr as u64)? {
                return Ok(());
            }
        }
        let addr = self.syscall(libc::SYS_mmap, &scratch_mmap(libc::PROT_WRITE))?;
        if (-4095..0).contains(&addr) {
            return Err(remote_error(
                self.pid,
                None,
                "mmap (scratch page, injected)",
                addr,
            ));
        }
        self.scratch = Some(addr as u64);
        Ok(())
    }

    /// The calls every session makes besides the caller's, with the arguments they
    /// will have: block signals (unless done by ptrace), map the scratch page, unmap
    /// it, restore the mask (unless done by ptrace).
    fn own_calls(&self) -> Vec<Planned> {
        let area = self.saved.stack_pointer().wrapping_sub(MASK_AREA) & !15;
        let set_mask = libc::SIG_SETMASK as u64;
        let mut calls = vec![
            Planned::new(
                libc::SYS_rt_sigprocmask,
                &[k(set_mask), k(area), k(area + 8), k(8)],
            ),
            Planned::new(libc::SYS_mmap, &scratch_mmap(libc::PROT_WRITE).map(k)),
            Planned::new(libc::SYS_munmap, &[UNKNOWN, k(SCRATCH_LEN)]),
            Planned::new(
                libc::SYS_rt_sigprocmask,
                &[k(set_mask), k(area), k(0), k(8)],
            ),
        ];
        if self.mask_by_ptrace {
            calls.retain(|c| c.nr != libc::SYS_rt_sigprocmask);
        }
        calls
    }

    /// Runs one syscall in the target and returns what the kernel returned there:
    /// a negative value is `-errno` *in the target*.
    ///
    /// `Err` means the session itself failed: [`Error::NoSuchProcess`] if the target
    /// died, or an error if the call faulted (for example `SIGSYS` from the target's
    /// seccomp filter).
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> Result<i64> {
        if args.len() > 6 {
            return Err(Error::InvalidArgument(format!(
                "syscall {nr}: at most 6 arguments, got {}",
                args.len()
            )));
        }
        match self.run(nr, args, true) {
            Ok(r) => Ok(r),
            Err(RunError::Fatal(e)) => Err(e),
            Err(RunError::SignalFirst(sig)) => Err(Error::io(
                "injected syscall interrupted by a signal",
                self.pid,
                None,
                Errno::from_raw_os_error(sig),
            )),
        }
    }

    fn run(&mut self, nr: i64, args: &[u64], blocked: bool) -> std::result::Result<i64, RunError> {
        if self.state == State::Gone {
            return Err(self.gone_error().into());
        }
        if self.state == State::Finished {
            return Err(Error::InvalidArgument(
                "the injection session has already been detached".into(),
            )
            .into());
        }
        let ip = self.insn + SYSCALL_INSN.len() as u64;
        if let Gate::Checked(filters) = &self.gate {
            if let Some(v) = seccomp::refused_now(filters, nr, args, ip) {
                let known: Vec<Option<u64>> = args.iter().map(|&a| Some(a)).collect();
                let call = seccomp::describe(nr, &known);
                // The up-front check could only try stand-ins for arguments known
                // now (the scratch address, an fd the target got). Refusing here
                // would be harmless for the work, but not for the cleanup (munmap,
                // close, the mask): so suspend, as the up-front check would have.
                let suspended = self.policy.may_suspend() && self.gate.suspend(self.tid).is_ok();
                if !suspended {
                    return Err(seccomp::refusal(
                        self.pid,
                        self.tid,
                        call,
                        v,
                        "the call was not made; the target is restored".into(),
                    )
                    .into());
                }
                tracing::info!(pid = self.pid, tid = self.tid, %call, action = %v.verdict.action, "the target's seccomp filter would refuse this call with its real arguments; suspending it for the injected calls (PTRACE_O_SUSPEND_SECCOMP)");
            }
        }
        self.gate
            .before_injected(self.tid)
            .map_err(|e| self.ptrace_error("PTRACE_SETOPTIONS", e))?;
        let frame = self.saved.for_syscall(self.insn, nr, args);
        frame
            .write(self.tid)
            .map_err(|e| self.ptrace_error("PTRACE_SETREGS", e))?;
        let (r, forced) = if self.no_forced_trap {
            self.through_syscall_stops(&frame, nr, blocked)?
        } else {
            self.step_over_syscall(&frame, nr, blocked)?
        };
        tracing::trace!(pid = self.pid, nr, ?args, ret = r, "injected syscall");
        // A seccomp SECCOMP_RET_TRAP skips the call, puts the syscall number back in
        // the result register and queues SIGSYS. Acting on that "result" (say, as an fd
        // from socket()) would touch an unrelated fd of the target. Only possible when
        // the filters could not be checked (a forced session).
        if r == nr && forced == Some(libc::SIGSYS) {
            return Err(Error::PermissionDenied {
                pid: self.pid,
                fd: None,
                op: syscall_name(nr),
                hint: "the target's seccomp filter traps this call (SIGSYS); the signal was not delivered".into(),
            }
            .into());
        }
        Ok(r)
    }

    /// Copies `data` into the scratch mapping and returns its address in the target.
    /// The space is reused after [`Session::reset_scratch`].
    pub fn push_bytes(&mut self, data: &[u8]) -> Result<u64> {
        let mut staged = self.stage()?;
        let at = staged.put(data);
        self.push_staged(staged)?;
        Ok(at)
    }

    /// Starts laying out data for the scratch mapping in our memory, at the
    /// addresses it will have there, so that structures pointing at each other
    /// (a msghdr, its iovec, its control data) go over in one write
    /// ([`Session::push_staged`]).
    pub(crate) fn stage(&self) -> Result<Staged> {
        let base = self
            .scratch
            .ok_or_else(|| Error::InvalidArgument("no scratch mapping".into()))?;
        Ok(Staged {
            at: base + ((self.scratch_used + 15) & !15),
            bytes: Vec::new(),
        })
    }

    /// Copies what was laid out with [`Session::stage`] into the scratch mapping.
    pub(crate) fn push_staged(&mut self, staged: Staged) -> Result<()> {
        let base = self
            .scratch
            .ok_or_else(|| Error::InvalidArgument("no scratch mapping".into()))?;
        let start = staged.at - base;
        let data = staged.bytes;
        let end = start + data.len() as u64;
        if end > SCRATCH_LEN {
            return Err(Error::InvalidArgument(format!(
                "{} bytes do not fit in the {SCRATCH_LEN}-byte scratch mapping",
                data.len()
            )));
        }
        if self.scratch_exec {
            self.write_through_mem(base + start, &data)?;
        } else {
            crate::sys::process_vm_write(self.tid, base + start, &data)
                .map_err(|e| self.mem_error("writing scratch memory", e))?;
        }
        self.scratch_used = end;
        Ok(())
    }

    /// Reads `buf.len()` bytes at `addr` in the target.
    pub fn read_bytes(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        crate::sys::process_vm_read(self.tid, addr, buf)
            .map_err(|e| self.mem_error("reading target memory", e))
    }

    /// Forgets everything pushed into the scratch mapping.
    pub fn reset_scratch(&mut self) {
        self.scratch_used = 0;
    }

    /// Records an fd the session opened in the target; it is closed when the session
    /// ends unless [`Session::keep_remote_fd`] is called first.
    pub(crate) fn track_remote_fd(&mut self, fd: i32) {
        self.remote_fds.push(fd);
    }

    pub(crate) fn keep_remote_fd(&mut self, fd: i32) {
        self.remote_fds.retain(|&f| f != fd);
    }

    /// Closes `fd` in the target now.
    pub(crate) fn close_remote(&mut self, fd: i32) -> Result<()> {
        self.keep_remote_fd(fd);
        let r = self.syscall(libc::SYS_close, &[fd as u64])?;
        if r < 0 {
            return Err(remote_error(
                self.pid,
                TargetFd::new(fd),
                "close (injected)",
                r,
            ));
        }
        Ok(())
    }

    /// Restores the target and detaches. Dropping the session does the same, but
    /// can only log a failure.
    pub fn detach(mut self) -> Result<()> {
        self.finish()
    }

    /// Undoes everything the session did, in reverse order. Every step is attempted
    /// even if an earlier one failed; the first failure is returned.
    fn finish(&mut self) -> Result<()> {
        if self.state == State::Finished {
            return Ok(());
        }
        let mut first: Option<Error> = None;
        let mut note = |e: Error| {
            if first.is_none() {
                first = Some(e);
            }
        };
        if self.state != State::Gone {
            for fd in std::mem::take(&mut self.remote_fds) {
                match self.syscall(libc::SYS_close, &[fd as u64]) {
                    Ok(r) if r < 0 => note(remote_error(
                        self.pid,
                        TargetFd::new(fd),
                        "close (injected)",
                        r,
                    )),
                    Ok(_) => {}
                    Err(e) => note(e),
                }
            }
        }
        if let (Some(addr), true) = (self.scratch, self.state != State::Gone) {
            match self.syscall(libc::SYS_munmap, &[addr, SCRATCH_LEN]) {
                Ok(0) => self.scratch = None,
                Ok(r) => note(remote_error(
                    self.pid,
                    None,
                    "munmap (scratch page, injected)",
                    r,
                )),
                Err(e) => note(e),
            }
        }
        if let (Some(mask), true) = (self.old_mask, self.state != State::Gone) {
            match self.unblock_signals(mask) {
                Ok(()) => self.old_mask = None,
                Err(e) => note(e),
            }
        }
        let gone = self.state == State::Gone;
        if !gone {
            self.restore_stack();
            if let Err(e) = self.restore_and_detach() {
                note(e);
            }
        }
        self.state = State::Finished;
        if let Some(mask) = self.our_mask.take() {
            mask.restore();
        }
        if gone {
            return Err(self.gone_error());
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(pid = self.pid, error = %e, "restoring the target when dropping the session");
        }
    }
}
