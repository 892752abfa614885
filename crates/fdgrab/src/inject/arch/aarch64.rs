//! aarch64: `struct user_pt_regs` (read with `PTRACE_GETREGSET`/`NT_PRSTATUS`, arm64
//! has no `PTRACE_GETREGS`), the syscall number in its own regset
//! (`NT_ARM_SYSTEM_CALL`), the `svc #0` instruction and the syscall ABI (nr in x8;
//! args in x0-x5; result in x0).
//!
//! Restarts differ from x86_64 in a way the session must know about. arm64's
//! `do_signal` rewinds an interrupted syscall *before* it reports the stop to the
//! tracer: at a `PTRACE_INTERRUPT` stop the tracer already sees `pc` on the `svc`, x0
//! put back from the kernel's private `orig_x0` (which ptrace cannot read) and the
//! syscall number forgotten (-1). Such a frame reads as "about to run `svc`", so
//! [`Regs::pending_restart`] is `None` and restoring the registers re-runs the call
//! with its original arguments. That is the kernel's own decision for
//! `ERESTARTSYS`/`ERESTARTNOINTR`/`ERESTARTNOHAND` (a signal that arrived meanwhile
//! interrupts the re-entered call and is decided there). For
//! `ERESTART_RESTARTBLOCK` (relative `nanosleep`, timed futex waits) the kernel would
//! have continued with `restart_syscall(2)`; restored by us, the call starts over with
//! its full timeout, because the return code that told them apart is gone from the
//! registers the tracer can see.
//!
//! At syscall-entry and syscall-exit stops arm64 shows x7 as 0 or 1 (entry/exit)
//! and puts the thread's own x7 back when it resumes, whatever the tracer wrote:
//! registers kept for restoring must be read at a stop that is not a syscall stop
//! (the session saves them at its interrupt stop), and no injected call may take a
//! seventh argument.
//!
//! This module is compile-checked and its pure parts are unit-tested under
//! qemu-user, which does not emulate ptrace; the injection itself has not run on
//! arm64 hardware.

use super::Restart;
use crate::Pid;
use rustix::io::Errno;

/// `svc #0` (0xd4000001), little-endian as it sits in memory. Instructions are 4
/// bytes and 4-aligned; [`INSN_ALIGN`] keeps a scan from matching across two.
pub(crate) const SYSCALL_INSN: [u8; 4] = [0x01, 0x00, 0x00, 0xd4];

/// Alignment of every instruction.
pub(crate) const INSN_ALIGN: usize = 4;

/// AAPCS64 has no red zone, but signal frames and a leaf's spills stay above `sp`;
/// keeping the x86_64 margin costs nothing and leaves room for a careless leaf.
pub(crate) const RED_ZONE: u64 = 128;

/// `NT_ARM_SYSTEM_CALL` (`include/uapi/linux/elf.h`): the regset holding the
/// syscall number the kernel is in (`-1` outside one), readable and writable.
const NT_ARM_SYSTEM_CALL: libc::c_int = 0x404;

/// `PSR_MODE32_BIT`: set in pstate while the thread runs AArch32 code, whose
/// syscall numbers and structs differ.
const PSR_MODE32_BIT: u64 = 0x10;

/// A thread's general-purpose registers and the syscall number it is in.
#[derive(Clone, Copy)]
pub(crate) struct Regs {
    gp: libc::user_regs_struct,
    /// `NT_ARM_SYSTEM_CALL`: the role x86_64's `orig_rax` plays.
    syscallno: i32,
    /// The kernel handed back an AArch32 register set (a compat task).
    compat: bool,
}

impl std::fmt::Debug for Regs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Regs {{ pc: {:#x}, sp: {:#x}, x0: {}, x8: {}, syscallno: {} }}",
            self.gp.pc, self.gp.sp, self.gp.regs[0] as i64, self.gp.regs[8], self.syscallno
        )
    }
}

impl Default for Regs {
    fn default() -> Regs {
        Regs {
            // SAFETY: user_regs_struct is plain integers, so all-zero is a valid value.
            gp: unsafe { std::mem::zeroed() },
            syscallno: -1,
            compat: false,
        }
    }
}

/// `PTRACE_GETREGSET`/`PTRACE_SETREGSET` of one regset into or from `buf`; returns
/// the length the kernel used.
///
/// # Safety
/// `buf` must point at `len` writable (GET) or readable (SET) bytes.
unsafe fn regset(
    request: libc::c_uint,
    tid: Pid,
    note: libc::c_int,
    buf: *mut libc::c_void,
    len: usize,
) -> Result<usize, Errno> {
    let mut iov = libc::iovec {
        iov_base: buf,
        iov_len: len,
    };
    // SAFETY: the kernel reads or writes at most `iov_len` bytes at `iov_base`, which
    // the caller vouches for, and updates `iov_len` in our local iovec.
    let r = unsafe {
        libc::ptrace(
            request,
            tid,
            note as usize as *mut libc::c_void,
            (&mut iov as *mut libc::iovec).cast::<libc::c_void>(),
        )
    };
    if r < 0 {
        Err(crate::inject::ptrace::errno())
    } else {
        Ok(iov.iov_len)
    }
}

impl Regs {
    /// `PTRACE_GETREGSET` of `NT_PRSTATUS` and `NT_ARM_SYSTEM_CALL`.
    pub(crate) fn read(tid: Pid) -> Result<Regs, Errno> {
        let mut r = Regs::default();
        let size = std::mem::size_of::<libc::user_regs_struct>();
        // SAFETY: `r.gp` is a user_regs_struct of exactly `size` writable bytes.
        let got = unsafe {
            regset(
                libc::PTRACE_GETREGSET,
                tid,
                libc::NT_PRSTATUS,
                (&mut r.gp as *mut libc::user_regs_struct).cast(),
                size,
            )
        }?;
        // An AArch32 task's NT_PRSTATUS is the shorter compat layout; it is refused
        // by `is_native_abi`, so nothing more is read.
        r.compat = got != size;
        if r.compat {
            return Ok(r);
        }
        // SAFETY: `r.syscallno` is an i32, the regset's whole size.
        unsafe {
            regset(
                libc::PTRACE_GETREGSET,
                tid,
                NT_ARM_SYSTEM_CALL,
                (&mut r.syscallno as *mut i32).cast(),
                std::mem::size_of::<i32>(),
            )
        }?;
        Ok(r)
    }

    /// `PTRACE_SETREGSET` of both regsets. The kernel validates pstate itself.
    pub(crate) fn write(&self, tid: Pid) -> Result<(), Errno> {
        if self.compat {
            return Err(Errno::NOTSUP);
        }
        let mut gp = self.gp;
        let mut nr = self.syscallno;
        // SAFETY: `gp` is a local user_regs_struct, its whole size readable.
        unsafe {
            regset(
                libc::PTRACE_SETREGSET,
                tid,
                libc::NT_PRSTATUS,
                (&mut gp as *mut libc::user_regs_struct).cast(),
                std::mem::size_of::<libc::user_regs_struct>(),
            )
        }?;
        // SAFETY: `nr` is a local i32, the regset's whole size.
        unsafe {
            regset(
                libc::PTRACE_SETREGSET,
                tid,
                NT_ARM_SYSTEM_CALL,
                (&mut nr as *mut i32).cast(),
                std::mem::size_of::<i32>(),
            )
        }?;
        Ok(())
    }

    /// Whether the thread runs AArch64 code (ours is the only ABI we speak).
    pub(crate) fn is_native_abi(&self) -> bool {
        !self.compat && self.gp.pstate & PSR_MODE32_BIT == 0
    }

    pub(crate) fn stack_pointer(&self) -> u64 {
        self.gp.sp
    }

    pub(crate) fn instruction_pointer(&self) -> u64 {
        self.gp.pc
    }

    /// The number of the syscall the thread is in, if it was stopped inside one.
    pub(crate) fn syscall_nr(&self) -> Option<i64> {
        (self.syscallno >= 0).then_some(i64::from(self.syscallno))
    }

    /// The syscall's return value (valid at a syscall-exit stop).
    pub(crate) fn syscall_result(&self) -> i64 {
        self.gp.regs[0] as i64
    }

    /// The restart the kernel still owes this frame. At a signal-path stop arm64 has
    /// already done the rewind and forgotten the syscall, so this is `None` there.
    pub(crate) fn pending_restart(&self) -> Option<Restart> {
        self.syscall_nr()?;
        super::restart_for(self.gp.regs[0] as i64)
    }

    /// A copy of these registers set up to run `svc #0` at `insn` with `nr` and up to
    /// six arguments. `syscallno = -1` marks the frame as "not in a syscall", as
    /// `orig_rax = -1` does on x86_64, so the kernel's restart logic leaves it alone.
    pub(crate) fn for_syscall(&self, insn: u64, nr: i64, args: &[u64]) -> Regs {
        let mut r = *self;
        r.gp.pc = insn;
        r.gp.regs[8] = nr as u64;
        for (i, reg) in r.gp.regs[..6].iter_mut().enumerate() {
            *reg = args.get(i).copied().unwrap_or(0);
        }
        r.syscallno = -1;
        r
    }

    /// The frame the kernel would resume after finishing the pending restart, for
    /// logs: pc back over `svc`, and x8 = `restart_syscall` for a restart block. x0
    /// is left as is, because the kernel restores it from `orig_x0`, which ptrace
    /// does not show.
    pub(crate) fn after_restart(&self) -> Regs {
        let mut r = *self;
        match self.pending_restart() {
            Some(Restart::Rewind) => {
                r.gp.pc -= SYSCALL_INSN.len() as u64;
            }
            Some(Restart::RestartBlock) => {
                r.gp.regs[8] = libc::SYS_restart_syscall as u64;
                r.gp.pc -= SYSCALL_INSN.len() as u64;
            }
            None => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(syscallno: i32, x0: i64) -> Regs {
        let mut r = Regs {
            syscallno,
            ..Regs::default()
        };
        r.gp.regs[0] = x0 as u64;
        r.gp.regs[8] = 101;
        r.gp.pc = 0x1004;
        r
    }

    #[test]
    fn restart_codes() {
        assert_eq!(frame(63, -512).pending_restart(), Some(Restart::Rewind));
        assert_eq!(frame(63, -513).pending_restart(), Some(Restart::Rewind));
        assert_eq!(frame(63, -514).pending_restart(), Some(Restart::Rewind));
        assert_eq!(
            frame(101, -516).pending_restart(),
            Some(Restart::RestartBlock)
        );
        assert_eq!(frame(63, -4).pending_restart(), None, "EINTR is final");
        // What a PTRACE_INTERRUPT stop shows: already rewound, syscall forgotten.
        assert_eq!(frame(-1, -512).pending_restart(), None);
        let r = frame(63, -512).after_restart();
        assert_eq!((r.gp.pc, r.gp.regs[8]), (0x1000, 101));
        let r = frame(101, -516).after_restart();
        assert_eq!(
            (r.gp.pc, r.gp.regs[8] as i64),
            (0x1000, libc::SYS_restart_syscall)
        );
    }

    #[test]
    fn injected_frame_is_not_a_syscall() {
        let r = frame(63, -512).for_syscall(0x4000, 198, &[1, 2, 3]);
        assert_eq!(r.syscall_nr(), None);
        assert_eq!(r.pending_restart(), None);
        assert_eq!(
            (
                r.gp.pc,
                r.gp.regs[8],
                r.gp.regs[0],
                r.gp.regs[1],
                r.gp.regs[2]
            ),
            (0x4000, 198, 1, 2, 3)
        );
        assert_eq!(&r.gp.regs[3..6], &[0, 0, 0], "unused arguments are zeroed");
    }

    #[test]
    fn abi_from_pstate() {
        let mut r = Regs::default();
        assert!(r.is_native_abi());
        r.gp.pstate = PSR_MODE32_BIT;
        assert!(!r.is_native_abi());
    }

    #[test]
    fn svc_encoding() {
        assert_eq!(u32::from_le_bytes(SYSCALL_INSN), 0xd400_0001);
    }
}
