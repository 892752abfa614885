//! One ptrace injection session on one thread of a target.
//!
//! Lifecycle: `PTRACE_SEIZE` + `PTRACE_INTERRUPT` (no SIGSTOP the target could see),
//! save the registers, block all blockable signals in the thread with an injected
//! `rt_sigprocmask` (its sets live briefly below the stack's red zone), map a scratch
//! page with an injected `mmap`, run any number of syscalls, then undo all of it in
//! reverse: close what we opened there, `munmap`, restore the mask, restore the
//! registers, detach. The same undo runs from `Drop` and on every error path.
//!
//! Each injected syscall is run by pointing the instruction pointer at a `syscall`
//! instruction that already exists in the target (in the vDSO, or the one the thread
//! is stopped after) and single-stepping over it (`PTRACE_SINGLESTEP`): one stop per call.
//! Nothing in the target's code is ever patched, so other threads running the same
//! code are unaffected.

use super::arch::{Regs, RED_ZONE, SYSCALL_INSN};
use super::ptrace;
use super::seccomp::{self, k, Gate, Planned, SeccompPolicy, UNKNOWN};
use crate::error::{Error, Result};
use crate::pidfd::PidFd;
use crate::{procfs, Pid, TargetFd};
use rustix::io::Errno;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// Size of the scratch mapping: room for a msghdr, a sockaddr and 253 fds of
/// `SCM_RIGHTS`, several times over.
const SCRATCH_LEN: u64 = 16 * 1024;

/// How long a thread may take to reach a ptrace stop after `PTRACE_INTERRUPT`. A
/// thread in uninterruptible sleep (state D) stops only when it wakes up.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where, below the stack pointer, the signal sets are put for the injected
/// `rt_sigprocmask` calls (beyond the red zone, 16-byte aligned).
const MASK_AREA: u64 = RED_ZONE + 64;

/// What a `waitpid` status says about the tracee.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// It exited or was killed.
    Gone,
    /// A syscall-entry or -exit stop (`SIGTRAP | 0x80`).
    Syscall,
    /// `PTRACE_EVENT_STOP`: our interrupt (SIGTRAP) or a group stop (a stop signal).
    Event(i32),
    /// A signal is about to be delivered.
    Signal(i32),
}

fn classify(status: i32) -> Stop {
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

/// Why an injected syscall did not produce a result.
#[derive(Debug)]
enum RunError {
    /// A signal arrived before the thread's signals were blocked. It has not been
    /// delivered yet; the caller decides what to do with it.
    SignalFirst(i32),
    Fatal(Error),
}

impl From<Error> for RunError {
    fn from(e: Error) -> Self {
        RunError::Fatal(e)
    }
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
    /// The thread's registers when we stopped it (valid once `stopped`).
    saved: Regs,
    /// The thread reached its first stop and `saved` holds its registers.
    stopped: bool,
    /// Address of a `syscall` instruction in the target.
    insn: u64,
    /// The thread's original blocked-signal set, once we have replaced it.
    old_mask: Option<u64>,
    /// Stack bytes we overwrite for the mask calls, put back afterwards.
    stack_backup: Option<(u64, [u8; 16])>,
    scratch: Option<u64>,
    scratch_used: u64,
    /// Descriptors the session opened in the target and has not handed over.
    remote_fds: Vec<i32>,
    /// Nothing has run since the attach stop, so detaching needs no extra stop.
    at_attach_stop: bool,
    /// A SIGSTOP that arrived during the session, passed on at the end.
    stop_seen: bool,
    gone: bool,
    finished: bool,
    our_mask: Option<ptrace::OurMask>,
    /// How long to poll for a stop before blocking in waitpid.
    spin: ptrace::Spin,
    /// What the thread's seccomp filters mean for the injected calls.
    gate: Gate,
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
        Self::attach_planned(target, SeccompPolicy::default(), &[])
    }

    /// [`Session::attach`] with a seccomp policy and the calls the caller plans to
    /// make besides the session's own (`rt_sigprocmask`, `mmap`, `munmap`): when the
    /// thread is under seccomp they are all checked before anything runs in it, and
    /// the session refuses ([`Error::SeccompRefused`], [`Error::SeccompUnchecked`])
    /// rather than let a filter kill or trap the target.
    pub(crate) fn attach_planned(
        target: &'a PidFd,
        policy: SeccompPolicy,
        plan: &[Planned],
    ) -> Result<Session<'a>> {
        let pid = target.pid();
        let tid = pick_thread(target)?;
        let seccomp_mode = seccomp::before_seize(pid, tid, policy)?;
        let our_mask = ptrace::block_termination_signals();
        if let Err(e) = ptrace::seize(tid, ptrace::O_TRACESYSGOOD) {
            ptrace::restore_mask(our_mask);
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
            stopped: false,
            insn: 0,
            old_mask: None,
            stack_backup: None,
            scratch: None,
            scratch_used: 0,
            remote_fds: Vec::new(),
            at_attach_stop: true,
            stop_seen: false,
            gone: false,
            finished: false,
            our_mask: Some(our_mask),
            spin: ptrace::Spin::default(),
            gate: if seccomp_mode.is_none() && policy.is_forced() {
                Gate::Unchecked
            } else {
                Gate::Open
            },
            _not_send: PhantomData,
        };
        if stranger {
            let _ = s.stop_for_injection(STOP_TIMEOUT);
            let _ = s.finish();
            return Err(Error::NoSuchProcess { pid });
        }
        match s.prepare(seccomp_mode.map(|m| (m, policy, plan))) {
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

    fn prepare(&mut self, seccomp: Option<(u8, SeccompPolicy, &[Planned])>) -> Result<()> {
        // A thread that was being traced by someone else cannot be seized, so from here
        // only we can stop it. Signal-delivery stops that come first are passed on.
        self.stop_for_injection(STOP_TIMEOUT)?;
        self.insn = find_syscall_insn(self.pid, self.tid, &self.saved)?;
        tracing::trace!(pid = self.pid, insn = format_args!("{:#x}", self.insn), regs = ?self.saved, "stopped");
        if let Some((mode, policy, plan)) = seccomp {
            let mut all = self.own_calls();
            all.extend_from_slice(plan);
            let ip = self.insn + SYSCALL_INSN.len() as u64;
            self.gate = seccomp::decide(self.pid, self.tid, mode, &all, ip, policy)?;
        }
        self.block_signals()?;
        let addr = self.syscall(
            libc::SYS_mmap,
            &[
                0,
                SCRATCH_LEN,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
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

    /// `PTRACE_INTERRUPT` and wait for the resulting stop, then save the registers.
    fn stop_for_injection(&mut self, timeout: Duration) -> Result<()> {
        self.stopped = false;
        ptrace::interrupt(self.tid).map_err(|e| self.ptrace_error("PTRACE_INTERRUPT", e))?;
        let deadline = Instant::now() + timeout;
        let mut spins = 0u32;
        loop {
            let status = match ptrace::try_wait(self.tid) {
                Ok(Some(st)) => st,
                Ok(None) => {
                    if Instant::now() >= deadline {
                        return Err(Error::io(
                            "waiting for the target thread to stop (it may be in uninterruptible sleep)",
                            self.pid,
                            None,
                            Errno::TIMEDOUT,
                        ));
                    }
                    // Stops normally arrive within microseconds; yield first, then back off.
                    spins += 1;
                    if spins < 2000 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    continue;
                }
                Err(e) => return Err(self.ptrace_error("waitpid", e)),
            };
            match classify(status) {
                Stop::Gone => return Err(self.died()),
                Stop::Event(_) => break,
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
        self.stopped = true;
        self.at_attach_stop = true;
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

    /// The calls every session makes besides the caller's, with the arguments they
    /// will have: block signals, map the scratch page, unmap it, restore the mask.
    fn own_calls(&self) -> Vec<Planned> {
        let area = self.saved.stack_pointer().wrapping_sub(MASK_AREA) & !15;
        let set_mask = libc::SIG_SETMASK as u64;
        vec![
            Planned::new(
                libc::SYS_rt_sigprocmask,
                &[k(set_mask), k(area), k(area + 8), k(8)],
            ),
            Planned::new(
                libc::SYS_mmap,
                &[
                    k(0),
                    k(SCRATCH_LEN),
                    k((libc::PROT_READ | libc::PROT_WRITE) as u64),
                    k((libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64),
                    k(u64::MAX),
                    k(0),
                ],
            ),
            Planned::new(libc::SYS_munmap, &[UNKNOWN, k(SCRATCH_LEN)]),
            Planned::new(
                libc::SYS_rt_sigprocmask,
                &[k(set_mask), k(area), k(0), k(8)],
            ),
        ]
    }

    /// Replaces the thread's signal mask with "everything blocked", keeping the old one.
    /// Done with the target's own `rt_sigprocmask` rather than `PTRACE_SETSIGMASK`,
    /// because the latter also clears the thread's "restore the saved mask" flag and
    /// would leave a thread caught in `ppoll`/`epoll_pwait`/`sigsuspend` with its
    /// temporary mask for good.
    fn block_signals(&mut self) -> Result<()> {
        for _ in 0..16 {
            let area = self.mask_area()?;
            let mut sets = [0u8; 16];
            sets[..8].copy_from_slice(&u64::MAX.to_ne_bytes());
            crate::sys::process_vm_write(self.tid, area, &sets)
                .map_err(|e| self.mem_error("writing a signal set", e))?;
            let args = [libc::SIG_SETMASK as u64, area, area + 8, 8];
            match self.run(libc::SYS_rt_sigprocmask, &args, false) {
                Ok(0) => {
                    let mut old = [0u8; 8];
                    crate::sys::process_vm_read(self.tid, area + 8, &mut old)
                        .map_err(|e| self.mem_error("reading the signal mask", e))?;
                    self.old_mask = Some(u64::from_ne_bytes(old));
                    return Ok(());
                }
                Ok(r) => return Err(remote_error(self.pid, None, "rt_sigprocmask (injected)", r)),
                Err(RunError::Fatal(e)) => return Err(e),
                Err(RunError::SignalFirst(sig)) => {
                    // Let the signal be delivered on the original frame, exactly as
                    // it would have been without us, then stop the thread again.
                    tracing::debug!(
                        pid = self.pid,
                        sig,
                        "a signal arrived before blocking; delivering it first"
                    );
                    self.restore_stack();
                    self.saved
                        .write(self.tid)
                        .map_err(|e| self.ptrace_error("PTRACE_SETREGS", e))?;
                    self.gate
                        .before_own_code(self.tid)
                        .map_err(|e| self.ptrace_error("PTRACE_SETOPTIONS", e))?;
                    ptrace::cont(self.tid, sig).map_err(|e| self.ptrace_error("PTRACE_CONT", e))?;
                    self.stop_for_injection(STOP_TIMEOUT)?;
                }
            }
        }
        Err(Error::io(
            "blocking signals in the target (a signal storm kept interrupting)",
            self.pid,
            None,
            Errno::AGAIN,
        ))
    }

    /// The 16 bytes below the red zone, saved the first time.
    fn mask_area(&mut self) -> Result<u64> {
        let area = (self.saved.stack_pointer().wrapping_sub(MASK_AREA)) & !15;
        if self.stack_backup.map(|(a, _)| a) != Some(area) {
            self.restore_stack();
            let mut bytes = [0u8; 16];
            crate::sys::process_vm_read(self.tid, area, &mut bytes)
                .map_err(|e| self.mem_error("reading the target's stack", e))?;
            self.stack_backup = Some((area, bytes));
        }
        Ok(area)
    }

    fn restore_stack(&mut self) {
        if let Some((area, bytes)) = self.stack_backup.take() {
            if let Err(e) = crate::sys::process_vm_write(self.tid, area, &bytes) {
                tracing::debug!(pid = self.pid, error = %e, "could not put back stack bytes");
            }
        }
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
        if self.gone {
            return Err(Error::NoSuchProcess { pid: self.pid }.into());
        }
        if self.finished {
            return Err(Error::InvalidArgument(
                "the injection session has already been detached".into(),
            )
            .into());
        }
        let ip = self.insn + SYSCALL_INSN.len() as u64;
        if let Gate::Checked(filters) = &self.gate {
            if let Some(v) = seccomp::refused_now(filters, nr, args, ip) {
                let known: Vec<Option<u64>> = args.iter().map(|&a| Some(a)).collect();
                return Err(seccomp::refusal(
                    self.pid,
                    self.tid,
                    seccomp::describe(nr, &known),
                    v,
                    "the call was not made; the target is restored".into(),
                )
                .into());
            }
        }
        self.gate
            .before_injected(self.tid)
            .map_err(|e| self.ptrace_error("PTRACE_SETOPTIONS", e))?;
        let frame = self.saved.for_syscall(self.insn, nr, args);
        frame
            .write(self.tid)
            .map_err(|e| self.ptrace_error("PTRACE_SETREGS", e))?;
        self.at_attach_stop = false;
        let (r, forced) = self.step_over_syscall(nr, blocked)?;
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
    fn step_over_syscall(
        &mut self,
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
            match sig {
                libc::SIGTRAP if done => return Ok((regs.syscall_result(), forced)),
                // Interrupted before it ran (or rewound for a restart): deliver the
                // stop and step again.
                libc::SIGSTOP => {
                    self.stop_seen = true;
                    deliver = libc::SIGSTOP;
                }
                sig if !done && !blocked => return Err(RunError::SignalFirst(sig)),
                // With everything blocked, only a signal forced by the call gets
                // here (SIGSYS from a seccomp trap, or a fault), or a stale SIGTRAP
                // of an earlier step. Delivering it would run the target's handler on
                // our frame, or kill it; it is dropped.
                sig => {
                    tracing::debug!(
                        pid = self.pid,
                        sig,
                        nr,
                        "dropping a signal forced by an injected call"
                    );
                    if sig != libc::SIGTRAP {
                        forced = Some(sig);
                    }
                }
            }
            // If the call ran, its SIGTRAP is still queued and is reported on the
            // next resume, before the thread runs any instruction of its own.
        }
    }

    /// Waits for the thread's next stop, spinning briefly first (see [`ptrace::Spin`]).
    fn wait(&mut self) -> std::result::Result<i32, RunError> {
        let tid = self.tid;
        ptrace::wait(tid, &mut self.spin).map_err(|e| self.ptrace_error("waitpid", e).into())
    }

    /// Whether SIGINT, SIGTERM, SIGHUP or SIGQUIT is waiting for the session to end.
    /// Long loops of injected calls check this to stop early; the signal then takes
    /// effect when the session has restored the target.
    pub fn termination_requested(&self) -> bool {
        ptrace::termination_pending()
    }

    /// Copies `data` into the scratch mapping and returns its address in the target.
    /// The space is reused after [`Session::reset_scratch`].
    pub fn push_bytes(&mut self, data: &[u8]) -> Result<u64> {
        let base = self
            .scratch
            .ok_or_else(|| Error::InvalidArgument("no scratch mapping".into()))?;
        let start = (self.scratch_used + 15) & !15;
        let end = start + data.len() as u64;
        if end > SCRATCH_LEN {
            return Err(Error::InvalidArgument(format!(
                "{} bytes do not fit in the {SCRATCH_LEN}-byte scratch mapping",
                data.len()
            )));
        }
        crate::sys::process_vm_write(self.tid, base + start, data)
            .map_err(|e| self.mem_error("writing scratch memory", e))?;
        self.scratch_used = end;
        Ok(base + start)
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
        if self.finished {
            return Ok(());
        }
        let mut first: Option<Error> = None;
        let mut note = |e: Error| {
            if first.is_none() {
                first = Some(e);
            }
        };
        if !self.gone {
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
        if let (Some(addr), false) = (self.scratch, self.gone) {
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
        if let (Some(mask), false) = (self.old_mask, self.gone) {
            match self.unblock_signals(mask) {
                Ok(()) => self.old_mask = None,
                Err(e) => note(e),
            }
        }
        if !self.gone {
            self.restore_stack();
            if let Err(e) = self.restore_and_detach() {
                note(e);
            }
        }
        self.finished = true;
        if let Some(mask) = self.our_mask.take() {
            ptrace::restore_mask(mask);
        }
        if self.gone {
            return Err(Error::NoSuchProcess { pid: self.pid });
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn unblock_signals(&mut self, mask: u64) -> Result<()> {
        let area = self.mask_area()?;
        crate::sys::process_vm_write(self.tid, area, &mask.to_ne_bytes())
            .map_err(|e| self.mem_error("writing a signal set", e))?;
        let r = self.syscall(
            libc::SYS_rt_sigprocmask,
            &[libc::SIG_SETMASK as u64, area, 0, 8],
        )?;
        if r != 0 {
            return Err(remote_error(
                self.pid,
                None,
                "rt_sigprocmask (restoring the mask, injected)",
                r,
            ));
        }
        Ok(())
    }

    /// Puts the saved registers back and detaches.
    ///
    /// If the thread was stopped inside a syscall that the kernel still has to
    /// restart (see [`super::arch::Restart`]), the restart must happen on the way out of
    /// a *signal-path* stop, because that is where the kernel does it, and where a signal
    /// that became pending meanwhile is handled with the right `EINTR`/`SA_RESTART`
    /// semantics. Our last stop was a syscall-exit stop, which is not on that path,
    /// so the thread is taken through one more `PTRACE_INTERRUPT` stop with its
    /// original registers, and detached from there.
    fn restore_and_detach(&mut self) -> Result<()> {
        let tid = self.tid;
        if !self.stopped {
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
        let mut deliver = 0;
        if self.saved.pending_restart().is_some() && !self.at_attach_stop {
            let resumes = self.saved.after_restart();
            tracing::trace!(pid = self.pid, restart = ?self.saved.pending_restart(), resumes = ?resumes, "finishing an interrupted syscall");
            ptrace::interrupt(tid).map_err(|e| self.ptrace_error("PTRACE_INTERRUPT", e))?;
            ptrace::cont(tid, 0).map_err(|e| self.ptrace_error("PTRACE_CONT", e))?;
            loop {
                let status = ptrace::wait(tid, &mut self.spin)
                    .map_err(|e| self.ptrace_error("waitpid", e))?;
                match classify(status) {
                    Stop::Gone => return Err(self.died()),
                    Stop::Event(_) => break,
                    // The signal path reached a real signal first: detach with it, the
                    // kernel then handles signal and restart together.
                    Stop::Signal(sig) => {
                        deliver = sig;
                        break;
                    }
                    Stop::Syscall => {
                        ptrace::cont(tid, 0).map_err(|e| self.ptrace_error("PTRACE_CONT", e))?
                    }
                }
            }
        }
        ptrace::detach(tid, deliver).map_err(|e| self.ptrace_error("PTRACE_DETACH", e))?;
        if self.stop_seen && deliver == 0 {
            // The SIGSTOP we passed on was consumed while we traced the thread; the
            // group stop it began resumes for this thread on detach, but make sure.
            let _ = self.target.send_signal(libc::SIGSTOP);
        }
        tracing::debug!(pid = self.pid, tid, "detached, target restored");
        Ok(())
    }

    fn died(&mut self) -> Error {
        self.gone = true;
        Error::NoSuchProcess { pid: self.pid }
    }

    /// A ptrace/waitpid failure: `ESRCH`/`ECHILD` on a dead target means it died.
    fn ptrace_error(&mut self, op: &'static str, e: Errno) -> Error {
        if matches!(e, Errno::SRCH | Errno::CHILD)
            && (!self.target.is_alive() || !procfs::thread_alive(self.pid, self.tid))
        {
            return self.died();
        }
        Error::io(op, self.pid, None, e)
    }

    fn mem_error(&self, op: &'static str, e: Errno) -> Error {
        if e == Errno::SRCH || !self.target.is_alive() {
            return Error::NoSuchProcess { pid: self.pid };
        }
        Error::io(op, self.pid, None, e)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(pid = self.pid, error = %e, "restoring the target when dropping the session");
        }
    }
}

/// The thread to inject into: the leader, unless it has exited (a zombie leader with
/// live threads), then the first live thread.
pub(crate) fn pick_thread(target: &PidFd) -> Result<Pid> {
    let pid = target.pid();
    if !target.is_alive() {
        return Err(Error::NoSuchProcess { pid });
    }
    if target.is_thread() || procfs::thread_alive(pid, pid) {
        return Ok(pid);
    }
    let tids = procfs::tasks(pid).map_err(|_| Error::NoSuchProcess { pid })?;
    tids.into_iter()
        .find(|&t| t != pid && procfs::thread_alive(pid, t))
        .ok_or(Error::NoSuchProcess { pid })
}

fn seize_error(target: &PidFd, tid: Pid, e: Errno) -> Error {
    let pid = target.pid();
    match e {
        Errno::SRCH => Error::NoSuchProcess { pid },
        Errno::PERM | Errno::ACCESS => {
            let tracer = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("TracerPid:"))
                        .and_then(|v| v.trim().parse::<Pid>().ok())
                })
                .filter(|&t| t != 0);
            let hint = match tracer {
                Some(t) => {
                    format!("thread {tid} is already traced by process {t} (a debugger or strace?)")
                }
                None => crate::grab::permission_hint(pid),
            };
            Error::PermissionDenied {
                pid,
                fd: None,
                op: "ptrace(PTRACE_SEIZE)",
                hint,
            }
        }
        e => Error::io("ptrace(PTRACE_SEIZE)", pid, None, e),
    }
}

/// Finds the address of a `syscall` instruction the target can execute: the one the
/// thread is stopped right after, if it is in a syscall (one 2-byte read); else in
/// the vDSO, whose clock fallbacks contain one (found through `AT_SYSINFO_EHDR`);
/// else in any executable mapping.
///
/// Memory is always addressed through the thread id: once the leader has exited,
/// `/proc/PID/maps` is empty and `process_vm_readv(PID)` fails.
fn find_syscall_insn(pid: Pid, tid: Pid, regs: &Regs) -> Result<u64> {
    if regs.syscall_nr().is_some() {
        let at = regs
            .instruction_pointer()
            .wrapping_sub(SYSCALL_INSN.len() as u64);
        let mut b = [0u8; 2];
        if crate::sys::process_vm_read(tid, at, &mut b).is_ok() && b == SYSCALL_INSN {
            return Ok(at);
        }
    }
    if let Some(at) = vdso_base(pid, tid).and_then(|base| scan_pages(tid, base, 8)) {
        return Ok(at);
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/maps"))
        .map_err(|_| Error::NoSuchProcess { pid })?;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !perms.starts_with("r-x") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        if let Some(at) = scan(tid, a, b.min(a + (4 << 20))) {
            return Ok(at);
        }
    }
    Err(Error::io(
        "finding a syscall instruction in the target",
        pid,
        None,
        Errno::NOEXEC,
    ))
}

/// `AT_SYSINFO_EHDR` from the thread's auxiliary vector: where the vDSO is mapped.
fn vdso_base(pid: Pid, tid: Pid) -> Option<u64> {
    const AT_SYSINFO_EHDR: u64 = 33;
    let auxv = std::fs::read(format!("/proc/{pid}/task/{tid}/auxv")).ok()?;
    auxv.chunks_exact(16).find_map(|pair| {
        let mut k = [0u8; 8];
        let mut v = [0u8; 8];
        k.copy_from_slice(&pair[..8]);
        v.copy_from_slice(&pair[8..]);
        (u64::from_ne_bytes(k) == AT_SYSINFO_EHDR).then_some(u64::from_ne_bytes(v))
    })
}

/// Scans up to `max` pages from `base`, stopping at the first unreadable one.
fn scan_pages(tid: Pid, base: u64, max: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let mut buf = Vec::new();
    for i in 0..max {
        let mut page = vec![0u8; PAGE as usize];
        if crate::sys::process_vm_read(tid, base + i * PAGE, &mut page).is_err() {
            break;
        }
        buf.extend_from_slice(&page);
        if let Some(pos) = buf.windows(2).position(|w| w == SYSCALL_INSN) {
            return Some(base + pos as u64);
        }
    }
    None
}

fn scan(tid: Pid, start: u64, end: u64) -> Option<u64> {
    let mut buf = vec![0u8; (end - start) as usize];
    crate::sys::process_vm_read(tid, start, &mut buf).ok()?;
    buf.windows(2)
        .position(|w| w == SYSCALL_INSN)
        .map(|i| start + i as u64)
}

/// The name of a syscall the session injects, for error messages.
pub(crate) fn syscall_name(nr: i64) -> &'static str {
    match nr {
        libc::SYS_socket => "socket (injected)",
        libc::SYS_connect => "connect (injected)",
        libc::SYS_sendmsg => "sendmsg (injected)",
        libc::SYS_recvmsg => "recvmsg (injected)",
        libc::SYS_close => "close (injected)",
        libc::SYS_dup3 => "dup3 (injected)",
        libc::SYS_fcntl => "fcntl (injected)",
        libc::SYS_mmap => "mmap (injected)",
        libc::SYS_munmap => "munmap (injected)",
        libc::SYS_rt_sigprocmask => "rt_sigprocmask (injected)",
        libc::SYS_dup2 => "dup2 (injected)",
        libc::SYS_close_range => "close_range (injected)",
        _ => "a syscall injected into the target",
    }
}

/// Maps a negative return of an injected call to an error that says it happened
/// inside the target (where its seccomp filter, LSM and limits apply).
pub(crate) fn remote_error(pid: Pid, fd: Option<TargetFd>, op: &'static str, ret: i64) -> Error {
    let e = Errno::from_raw_os_error((-ret) as i32);
    match e {
        Errno::PERM | Errno::ACCESS => Error::PermissionDenied {
            pid,
            fd,
            op,
            hint: "refused inside the target: its seccomp filter or an LSM policy denies this call there".into(),
        },
        Errno::BADF => match fd {
            Some(fd) => Error::NoSuchFd { pid, fd },
            None => Error::io(op, pid, None, e),
        },
        Errno::NOSYS => Error::PermissionDenied {
            pid,
            fd,
            op,
            hint: "the call gave ENOSYS inside the target (a seccomp filter there refuses it)".into(),
        },
        e => Error::io(op, pid, fd, e),
    }
}
