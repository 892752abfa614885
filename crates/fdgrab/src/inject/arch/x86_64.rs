//! x86_64: `struct user_regs_struct`, the `syscall` instruction (`0f 05`), the
//! syscall ABI (nr in rax; args in rdi, rsi, rdx, r10, r8, r9; result in rax) and
//! the restart codes the kernel leaves in rax of an interrupted syscall.

use super::Restart;
use crate::Pid;
use rustix::io::Errno;

/// The bytes of the `syscall` instruction. Any occurrence of them in executable
/// memory decodes as `syscall` when execution starts there.
pub(crate) const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// Bytes below the stack pointer that leaf functions may use without moving it (the
/// System V red zone); anything we put on a target's stack goes below this.
pub(crate) const RED_ZONE: u64 = 128;

/// User code segment selector of a 64-bit process; 0x23 means a 32-bit (ia32) one,
/// whose syscall numbers and structs differ.
const USER_CS_64: u64 = 0x33;

/// A thread's general-purpose registers.
#[derive(Clone, Copy)]
pub(crate) struct Regs(libc::user_regs_struct);

impl std::fmt::Debug for Regs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Regs {{ rip: {:#x}, rsp: {:#x}, rax: {}, orig_rax: {} }}",
            self.0.rip, self.0.rsp, self.0.rax as i64, self.0.orig_rax as i64
        )
    }
}

impl Default for Regs {
    fn default() -> Regs {
        // SAFETY: user_regs_struct is plain integers, so all-zero is a valid value.
        Regs(unsafe { std::mem::zeroed() })
    }
}

impl Regs {
    /// `PTRACE_GETREGS`.
    pub(crate) fn read(tid: Pid) -> Result<Regs, Errno> {
        let mut regs = Regs::default().0;
        // SAFETY: PTRACE_GETREGS writes exactly one user_regs_struct to `data`, which
        // points at our local of that type.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGS,
                tid,
                std::ptr::null_mut::<libc::c_void>(),
                (&mut regs as *mut libc::user_regs_struct).cast::<libc::c_void>(),
            )
        };
        if r < 0 {
            Err(crate::inject::ptrace::errno())
        } else {
            Ok(Regs(regs))
        }
    }

    /// `PTRACE_SETREGS`.
    pub(crate) fn write(&self, tid: Pid) -> Result<(), Errno> {
        // SAFETY: PTRACE_SETREGS reads one user_regs_struct from `data`, which points
        // at ours; the kernel validates segment and flag values itself.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGS,
                tid,
                std::ptr::null_mut::<libc::c_void>(),
                (&self.0 as *const libc::user_regs_struct)
                    .cast_mut()
                    .cast::<libc::c_void>(),
            )
        };
        if r < 0 {
            Err(crate::inject::ptrace::errno())
        } else {
            Ok(())
        }
    }

    /// Whether the thread runs 64-bit code (ours is the only ABI we speak).
    pub(crate) fn is_native_abi(&self) -> bool {
        self.0.cs == USER_CS_64
    }

    pub(crate) fn stack_pointer(&self) -> u64 {
        self.0.rsp
    }

    pub(crate) fn instruction_pointer(&self) -> u64 {
        self.0.rip
    }

    /// The number of the syscall the thread is in, if it was stopped inside one.
    pub(crate) fn syscall_nr(&self) -> Option<i64> {
        let nr = self.0.orig_rax as i64;
        (nr >= 0).then_some(nr)
    }

    /// Argument `i` (0-5) of the syscall the thread is in. The kernel leaves the
    /// argument registers as they were at entry, so they are valid at any stop
    /// inside or on the way out of a syscall.
    pub(crate) fn syscall_arg(&self, i: usize) -> u64 {
        match i {
            0 => self.0.rdi,
            1 => self.0.rsi,
            2 => self.0.rdx,
            3 => self.0.r10,
            4 => self.0.r8,
            5 => self.0.r9,
            _ => 0,
        }
    }

    /// A thread stopped inside syscall `nr` with `args`, for tests.
    #[cfg(test)]
    pub(crate) fn in_syscall(nr: i64, args: &[u64]) -> Regs {
        let mut r = Regs::default().for_syscall(0x1000, nr, args);
        r.0.orig_rax = nr as u64;
        r.0.rax = (-514i64) as u64;
        r
    }

    /// The syscall's return value (valid at a syscall-exit stop).
    pub(crate) fn syscall_result(&self) -> i64 {
        self.0.rax as i64
    }

    /// The restart the kernel still owes this frame, if it is an interrupted syscall.
    pub(crate) fn pending_restart(&self) -> Option<Restart> {
        self.syscall_nr()?;
        super::restart_for(self.0.rax as i64)
    }

    /// A copy of these registers set up to run `syscall` at `insn` with `nr` and up to
    /// six arguments. `orig_rax = -1` marks the frame as "not in a syscall", so the
    /// kernel's restart logic, which runs on the way out of the current stop, leaves
    /// our injected frame alone.
    pub(crate) fn for_syscall(&self, insn: u64, nr: i64, args: &[u64]) -> Regs {
        let mut r = self.0;
        let arg = |i: usize| args.get(i).copied().unwrap_or(0);
        r.rip = insn;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = arg(0);
        r.rsi = arg(1);
        r.rdx = arg(2);
        r.r10 = arg(3);
        r.r8 = arg(4);
        r.r9 = arg(5);
        Regs(r)
    }

    /// The frame the thread resumes with if *we* finish the interrupted syscall's
    /// restart, as `arch/x86/kernel/signal.c` does when no handler runs. The session
    /// prefers to let the kernel do it (see `Session::detach`), and uses this only to
    /// describe what will happen.
    pub(crate) fn after_restart(&self) -> Regs {
        let mut r = self.0;
        match self.pending_restart() {
            Some(Restart::Rewind) => {
                r.rax = r.orig_rax;
                r.rip -= SYSCALL_INSN.len() as u64;
            }
            Some(Restart::RestartBlock) => {
                r.rax = libc::SYS_restart_syscall as u64;
                r.rip -= SYSCALL_INSN.len() as u64;
            }
            None => {}
        }
        Regs(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(orig_rax: i64, rax: i64) -> Regs {
        // SAFETY: plain integers; all-zero is valid.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        r.orig_rax = orig_rax as u64;
        r.rax = rax as u64;
        r.rip = 0x1002;
        Regs(r)
    }

    #[test]
    fn restart_codes() {
        assert_eq!(frame(0, -512).pending_restart(), Some(Restart::Rewind));
        assert_eq!(frame(0, -513).pending_restart(), Some(Restart::Rewind));
        assert_eq!(frame(0, -514).pending_restart(), Some(Restart::Rewind));
        assert_eq!(
            frame(35, -516).pending_restart(),
            Some(Restart::RestartBlock)
        );
        assert_eq!(frame(0, -4).pending_restart(), None, "EINTR is final");
        assert_eq!(frame(-1, -512).pending_restart(), None, "not in a syscall");
        let r = frame(0, -512).after_restart();
        assert_eq!((r.0.rip, r.0.rax), (0x1000, 0));
        let r = frame(35, -516).after_restart();
        assert_eq!(
            (r.0.rip, r.0.rax as i64),
            (0x1000, libc::SYS_restart_syscall)
        );
    }

    #[test]
    fn injected_frame_is_not_a_syscall() {
        let r = frame(0, -512).for_syscall(0x4000, 41, &[1, 2, 3]);
        assert_eq!(r.syscall_nr(), None);
        assert_eq!(r.pending_restart(), None);
        assert_eq!(
            (r.0.rip, r.0.rax, r.0.rdi, r.0.rsi, r.0.rdx, r.0.r10),
            (0x4000, 41, 1, 2, 3, 0)
        );
    }
}
