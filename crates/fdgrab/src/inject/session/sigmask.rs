//! The target thread's signal mask during a session: blocked with
//! `PTRACE_SETSIGMASK` when that is exact, else with an injected `rt_sigprocmask`
//! (see [`Session::block_signals`]), restored at the end the same way; and the
//! termination signals held back in our own thread.

use super::errors::{remote_error, RunError};
use super::stop::STOP_TIMEOUT;
use super::Session;
use crate::error::{Error, Result};
use crate::inject::arch::{Regs, RED_ZONE, SYSCALL_INSN};
use crate::inject::ptrace;
use crate::inject::seccomp::Gate;
use rustix::io::Errno;

/// The signals that ask us to stop: a long loop of injected calls ends early when
/// one is held back (see [`Session::termination_requested`]).
const TERMINATION: [i32; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Faults the kernel raises on our own code: blocking them does not hold them back
/// (a forced one kills all the same), so they stay unblocked.
const FAULTS: [i32; 6] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// The faults a routine can force on the target thread (`SIGTRAP` aside, which is
/// never blocked): a seccomp trap's SIGSYS (a filter added with TSYNC once the
/// filters were read), and a fault on its code page (another thread unmapped or
/// changed it). The kernel resets the handler of a signal it forces while it is
/// blocked or ignored to SIG_DFL, for the whole process and for good, so a
/// routine runs with these unblocked, and not at all where the process ignores
/// one or has one pending (an unblocked pending one would be taken for forced).
pub(super) const ROUTINE_FAULT_BITS: u64 = 1 << (libc::SIGSEGV - 1)
    | 1 << (libc::SIGBUS - 1)
    | 1 << (libc::SIGFPE - 1)
    | 1 << (libc::SIGILL - 1)
    | 1 << (libc::SIGSYS - 1);

/// Our own thread's signal mask from before [`OurMask::hold_signals`].
#[derive(Clone, Copy)]
pub(super) struct OurMask(Option<libc::sigset_t>);

impl std::fmt::Debug for OurMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OurMask")
    }
}

impl OurMask {
    /// Blocks every signal but [`FAULTS`] in the calling thread (the tracer); they
    /// stay pending until [`OurMask::restore`]. A tracer that dies or stops with
    /// the target in hand leaves it stopped, or detached mid-step with its
    /// registers swapped, and it dies of SIGTRAP or SIGSEGV: so not only the
    /// termination signals wait, but a SIGUSR1 or SIGALRM (meant for the command
    /// `get` runs in fdgrab's place, which already has fdgrab's pid) and a
    /// terminal's ^Z too.
    pub(super) fn hold_signals() -> OurMask {
        let held: Vec<i32> = (1..=libc::SIGRTMAX())
            .filter(|s| !FAULTS.contains(s))
            .collect();
        OurMask(crate::sys::block_signals(&held).ok())
    }

    /// Puts the mask back; a held signal is delivered now.
    pub(super) fn restore(self) {
        if let Some(mask) = self.0 {
            crate::sys::set_signal_mask(&mask);
        }
    }
}

/// Where, below the stack pointer, the signal sets are put for the injected
/// `rt_sigprocmask` calls (beyond the red zone, 16-byte aligned).
pub(super) const MASK_AREA: u64 = RED_ZONE + 64;

/// The mask a session puts in place: every signal but SIGTRAP. Each single-step ends
/// in a SIGTRAP the kernel *forces* on the thread, and forcing a blocked signal resets
/// its handler to SIG_DFL and unblocks it for good: a target's own SIGTRAP handler
/// (the Go runtime's, a debugger's) would be lost. Left unblocked, the step's SIGTRAP
/// is reported to us and dropped, and the handler stays.
const BLOCK_ALL_BUT_TRAP: u64 = !TRAP_BIT;

/// SIGTRAP in a signal set.
pub(super) const TRAP_BIT: u64 = 1 << (libc::SIGTRAP - 1);

/// SIGSYS in a signal set.
pub(super) const SYS_BIT: u64 = 1 << (libc::SIGSYS - 1);

/// Whether `PTRACE_GETSIGMASK`/`PTRACE_SETSIGMASK` are exact on every kernel for a
/// thread stopped with `regs`. A call that runs with a temporary mask (`ppoll`,
/// `pselect6`, `epoll_pwait`, `epoll_pwait2` given a mask, `rt_sigsuspend`,
/// `io_pgetevents`, `io_uring_enter`) leaves the thread's "restore the saved mask
/// on the way out" flag set at our stop. Since Linux 5.1 (commit fcfc2aa0185f)
/// GETSIGMASK then returns the saved mask and SETSIGMASK drops the flag, which is
/// exact; before, GETSIGMASK returned the temporary mask and the kernel put the
/// saved one back over ours at the first resume, unblocking signals while our calls
/// ran. The ptrace backend is also the fallback for kernels that old, so: yes for a
/// thread stopped in its own code, or in one of the common blocking calls that never
/// swap masks (or a mask-taking one given none); no for every other call, which
/// then gets the injected `rt_sigprocmask`, exact everywhere.
///
/// x86_64 decides a syscall's restart after our stop, so `orig_rax` still names
/// the call there. arm64 forgets it before the stop (see `arch/aarch64.rs`), so it
/// cannot tell and always injects.
#[cfg(target_arch = "x86_64")]
pub(super) fn mask_by_ptrace_is_exact(regs: &Regs) -> bool {
    const NEVER_SWAP: [i64; 33] = [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_recvmmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_sendmmsg,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_poll,
        libc::SYS_select,
        libc::SYS_epoll_wait,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_futex,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_pause,
        libc::SYS_restart_syscall,
        libc::SYS_sched_yield,
        libc::SYS_msgrcv,
        libc::SYS_msgsnd,
        libc::SYS_semop,
        libc::SYS_semtimedop,
        libc::SYS_flock,
        libc::SYS_fcntl,
        libc::SYS_openat,
    ];
    let Some(nr) = regs.syscall_nr() else {
        return true;
    };
    // The calls that take a mask, given none (a null pointer), swap nothing.
    let mask_arg = match nr {
        libc::SYS_ppoll => Some(3),
        libc::SYS_epoll_pwait | libc::SYS_epoll_pwait2 => Some(4),
        libc::SYS_pselect6 => Some(5),
        _ => None,
    };
    match mask_arg {
        Some(i) => regs.syscall_arg(i) == 0,
        None => NEVER_SWAP.contains(&nr),
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) fn mask_by_ptrace_is_exact(_: &Regs) -> bool {
    false
}

/// Whether a session blocks the signals of a thread stopped with `regs` (its
/// `syscall` instruction found at `insn`) with `PTRACE_SETSIGMASK`.
///
/// Always when the first stop was a group stop (the process stopped by a stop
/// signal): an injected call would resume the thread through the signal path
/// first and run the handler of any signal pending, while the process is meant to
/// be stopped. Blocked by ptrace, such a signal waits for SIGCONT (one that only
/// the temporary mask of a call that is not restarted, like `epoll_pwait`, lets
/// through then waits for the next such call).
///
/// Else where [`mask_by_ptrace_is_exact`], for a thread that entered its syscall
/// with the native instruction, the one it is stopped right after: only then can
/// its number and arguments be read as native ones. A 64-bit thread can also enter
/// with `int $0x80`: an ia32 number (ia32 `sigsuspend` is 72, native `fcntl`), the
/// arguments in other registers.
pub(super) fn mask_by_ptrace(regs: &Regs, insn: u64, group_stopped: bool) -> bool {
    let native_entry = regs.syscall_nr().is_none()
        || insn.wrapping_add(SYSCALL_INSN.len() as u64) == regs.instruction_pointer();
    group_stopped || native_entry && mask_by_ptrace_is_exact(regs)
}

impl Session<'_> {
    /// Replaces the thread's signal mask with "everything blocked" (but SIGTRAP, see
    /// [`BLOCK_ALL_BUT_TRAP`]), keeping the old one.
    ///
    /// With `PTRACE_SETSIGMASK` where [`mask_by_ptrace_is_exact`]: no injected call,
    /// no stop, and a signal that arrived before stays pending until the mask is put
    /// back, then is delivered on the thread's own frame as it would have been.
    /// Elsewhere with the target's own `rt_sigprocmask`, which leaves the flag alone.
    pub(super) fn block_signals(&mut self) -> Result<()> {
        if self.mask_by_ptrace {
            let old =
                ptrace::sigmask(self.tid).map_err(|e| self.ptrace_error("PTRACE_GETSIGMASK", e))?;
            ptrace::set_sigmask(self.tid, self.blocking_set())
                .map_err(|e| self.ptrace_error("PTRACE_SETSIGMASK", e))?;
            self.old_mask = Some(old);
            return Ok(());
        }
        for _ in 0..16 {
            let area = self.mask_area()?;
            let mut sets = [0u8; 16];
            sets[..8].copy_from_slice(&self.blocking_set().to_ne_bytes());
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

    /// The mask the session puts in place: [`BLOCK_ALL_BUT_TRAP`], or everything when
    /// the target has a SIGTRAP of its own pending. Unblocked, that one would be
    /// reported at the first resume and dropped as a step's; blocked, it waits for
    /// the thread's mask to come back. The calls then run through syscall stops, so
    /// that no step's SIGTRAP is forced on the blocked signal.
    ///
    /// SIGSYS stays unblocked too (unless one is pending, see `sys_pending`): a
    /// call a seccomp filter traps forces it, and forcing a blocked signal resets
    /// its handler to SIG_DFL for the whole process, so a target with a SIGSYS
    /// handler (any program that installs trapping filters) would die of its next
    /// trapped call. Unblocked, it is reported to us and dropped, as a step's
    /// SIGTRAP is.
    fn blocking_set(&self) -> u64 {
        let set = if self.trap_pending {
            !0
        } else {
            BLOCK_ALL_BUT_TRAP
        };
        if self.sys_pending {
            set
        } else {
            set & !SYS_BIT
        }
    }

    /// Whether every call must avoid the single-step's forced SIGTRAP: when the
    /// process ignores SIGTRAP, forcing it resets it to SIG_DFL whatever the mask.
    /// Not in an unchecked session (see [`Session::unblock_signals`]).
    pub(super) fn sigtrap_ignored(&self) -> bool {
        let ignored = crate::procfs::task_sig_ignored(self.pid, self.tid)
            .is_some_and(|set| set & !BLOCK_ALL_BUT_TRAP != 0);
        ignored && !matches!(self.gate, Gate::Unchecked)
    }

    /// The 16 bytes below the red zone, saved the first time.
    pub(super) fn mask_area(&mut self) -> Result<u64> {
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

    pub(super) fn restore_stack(&mut self) {
        if let Some((area, bytes)) = self.stack_backup.take() {
            if let Err(e) = crate::sys::process_vm_write(self.tid, area, &bytes) {
                tracing::debug!(pid = self.pid, error = %e, "could not put back stack bytes");
            }
        }
    }

    pub(super) fn unblock_signals(&mut self, mask: u64) -> Result<()> {
        if self.mask_by_ptrace {
            // Set at the last stop, right before the detach: the thread runs no code
            // of ours with it, so no forced SIGTRAP meets a mask that blocks it.
            return ptrace::set_sigmask(self.tid, mask)
                .map_err(|e| self.ptrace_error("PTRACE_SETSIGMASK", e));
        }
        let area = self.mask_area()?;
        crate::sys::process_vm_write(self.tid, area, &mask.to_ne_bytes())
            .map_err(|e| self.mem_error("writing a signal set", e))?;
        // Not when the filters could not be checked: a seccomp trap of this call would
        // then leave its SIGSYS pending past the exit stop, where nothing catches it.
        let all_calls = self.no_forced_trap;
        self.no_forced_trap =
            all_calls || mask & !BLOCK_ALL_BUT_TRAP != 0 && !matches!(self.gate, Gate::Unchecked);
        let r = self.syscall(
            libc::SYS_rt_sigprocmask,
            &[libc::SIG_SETMASK as u64, area, 0, 8],
        );
        self.no_forced_trap = all_calls;
        let r = r?;
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

    /// Whether SIGINT, SIGTERM, SIGHUP or SIGQUIT is waiting for the session to end.
    /// Long loops of injected calls check this to stop early; the signal then takes
    /// effect when the session has restored the target.
    pub fn termination_requested(&self) -> bool {
        crate::sys::any_signal_pending(&TERMINATION)
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn ptrace_sets_the_mask_only_where_no_saved_mask_can_be_pending() {
        let user_code = Regs::default().for_syscall(0x1000, 0, &[]);
        assert!(mask_by_ptrace_is_exact(&user_code));
        for nr in [
            libc::SYS_read,
            libc::SYS_clock_nanosleep,
            libc::SYS_epoll_wait,
        ] {
            assert!(mask_by_ptrace_is_exact(&Regs::in_syscall(
                nr,
                &[3, 0, 0, 0, 0, 0]
            )));
        }
        let mask = 0x7ffd_0000_1000;
        for (nr, at) in [
            (libc::SYS_ppoll, 3),
            (libc::SYS_epoll_pwait, 4),
            (libc::SYS_epoll_pwait2, 4),
            (libc::SYS_pselect6, 5),
        ] {
            let mut args = [3, 0x7ffd_0000_2000, 1, 0, 0, 0];
            assert!(
                mask_by_ptrace_is_exact(&Regs::in_syscall(nr, &args)),
                "{nr} without a mask"
            );
            args[at] = mask;
            assert!(
                !mask_by_ptrace_is_exact(&Regs::in_syscall(nr, &args)),
                "{nr} with a mask"
            );
        }
        // Entered with `int $0x80` (not stopped right after the `syscall` at `insn`):
        // an ia32 number, whatever it reads as natively; in a group stop, always.
        // (`Regs::in_syscall` leaves the thread at 0x1000.)
        let at = |insn: u64, nr: i64| {
            mask_by_ptrace(&Regs::in_syscall(nr, &[3, 0, 0, 0, 0, 0]), insn, false)
        };
        assert!(at(0x1000 - 2, libc::SYS_fcntl));
        assert!(at(0x1000 - 2, libc::SYS_epoll_pwait2));
        assert!(!at(0x7000, libc::SYS_fcntl), "ia32 sigsuspend");
        assert!(!at(0x7000, libc::SYS_epoll_pwait2), "ia32 epoll_pwait2");
        let sigsuspend = Regs::in_syscall(libc::SYS_rt_sigsuspend, &[0x1000, 8]);
        assert!(mask_by_ptrace(&sigsuspend, 0x7000, true));
        assert!(!mask_by_ptrace(&sigsuspend, 0x7000, false));
        // Calls that always swap, and any call not known never to.
        for nr in [
            libc::SYS_rt_sigsuspend,
            333, // io_pgetevents
            libc::SYS_io_uring_enter,
            libc::SYS_ioctl,
        ] {
            assert!(
                !mask_by_ptrace_is_exact(&Regs::in_syscall(nr, &[0, 0, 0, 0, mask, mask])),
                "{nr}"
            );
        }
    }
}
