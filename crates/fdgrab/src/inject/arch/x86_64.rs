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

/// The routine a grab runs in the target in one resume instead of three
/// single-steps: `socket`, `sendmsg` of the fds to our mailbox from that socket,
/// `close` of it, then `int3`. It is written into the session's scratch mapping
/// (mapped read+exec, written through `/proc/PID/mem`) and entered with the frame of
/// [`Regs::for_send_routine`]. A failed `socket` skips the rest; a failed `sendmsg`
/// still closes the socket (the close does not use its result). Each step leaves
/// what the tracer needs in callee-saved registers (the frame is ours and is
/// replaced by the thread's own registers afterwards):
///
/// - r14: the socket while it is open in the target, else -1 (set right after
///   `socket` returns, reset right after `close`), so a routine stopped at any
///   point tells whether an fd of ours is left to close;
/// - r15: `sendmsg`'s result, or `i64::MIN` until it has run;
/// - rax at the `int3`: `close`'s result, or `socket`'s `-errno` if it failed.
///
/// ```text
///  0: 0f 05                 syscall          ; socket(rdi, rsi, rdx) (rax = 41)
///  2: 48 85 c0              test rax, rax
///  5: 78 27                 js   0x2e        ; failed: straight to the trap
///  7: 49 89 c6              mov  r14, rax
///  a: 48 89 c7              mov  rdi, rax
///  d: 4c 89 e6              mov  rsi, r12    ; the msghdr
/// 10: 4c 89 ea              mov  rdx, r13    ; the flags
/// 13: b8 2e 00 00 00        mov  eax, 46
/// 18: 0f 05                 syscall          ; sendmsg
/// 1a: 49 89 c7              mov  r15, rax
/// 1d: 4c 89 f7              mov  rdi, r14
/// 20: b8 03 00 00 00        mov  eax, 3
/// 25: 0f 05                 syscall          ; close
/// 27: 49 c7 c6 ff ff ff ff  mov  r14, -1
/// 2e: cc                    int3
/// ```
pub(crate) mod send_routine {
    /// The machine code.
    pub(crate) const CODE: [u8; 0x2f] = [
        0x0f, 0x05, 0x48, 0x85, 0xc0, 0x78, 0x27, 0x49, 0x89, 0xc6, 0x48, 0x89, 0xc7, 0x4c, 0x89,
        0xe6, 0x4c, 0x89, 0xea, 0xb8, 0x2e, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x49, 0x89, 0xc7, 0x4c,
        0x89, 0xf7, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x49, 0xc7, 0xc6, 0xff, 0xff, 0xff,
        0xff, 0xcc,
    ];
    /// Offsets just past the `syscall` of `socket`, `sendmsg` and `close`: the
    /// instruction pointer each call shows a seccomp filter.
    pub(crate) const CALLS: [u64; 3] = [0x02, 0x1a, 0x27];
    /// Offset just past the `int3`: the instruction pointer at the routine's end.
    pub(crate) const END: u64 = 0x2f;
}

/// Where a send routine stands, read from its registers at a stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SendProgress {
    /// The socket the routine made, while it is open in the target.
    pub open_fd: Option<i32>,
    /// `sendmsg`'s result, once it has run.
    pub sendmsg: Option<i64>,
    /// The result of the last call made (`close`, or a failed `socket`).
    pub last: i64,
}

impl Regs {
    /// The frame that runs [`send_routine`] at `at`: `socket(socket[0..3])`, then
    /// `sendmsg(fd, msg, flags)`. `orig_rax = -1`, as for [`Regs::for_syscall`].
    pub(crate) fn for_send_routine(&self, at: u64, socket: [u64; 3], msg: u64, flags: u64) -> Regs {
        let mut r = self.for_syscall(at, libc::SYS_socket, &socket).0;
        r.r12 = msg;
        r.r13 = flags;
        r.r14 = u64::MAX;
        r.r15 = i64::MIN as u64;
        Regs(r)
    }

    /// The progress of a [`send_routine`] at `at` stopped with these registers;
    /// `skipped`: the stop is a seccomp trap's, so the call just before the
    /// instruction pointer did not run. Between a call's `syscall` and the `mov`
    /// that records it in r14 (a stop there: an interrupt, a fault of the next
    /// fetch) the socket is in rax after `socket`, and already closed after
    /// `close`, unless that did not run: trapped, or interrupted before it ran
    /// (a user-notification wait our interrupt ended leaves a restart code).
    pub(crate) fn send_progress(&self, at: u64, skipped: bool) -> SendProgress {
        let interrupted = (-516..=-512).contains(&(self.0.rax as i64));
        let fd = match self.0.rip.wrapping_sub(at) {
            0x02..=0x07 if !skipped => self.0.rax as i64,
            0x27 if !skipped && !interrupted => -1,
            _ => self.0.r14 as i64,
        };
        let sent = self.0.r15 as i64;
        SendProgress {
            open_fd: (0..=i64::from(i32::MAX)).contains(&fd).then_some(fd as i32),
            sendmsg: (sent != i64::MIN).then_some(sent),
            last: self.0.rax as i64,
        }
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

    /// The jump of a failed `socket` lands on the `int3`, and the offsets named
    /// are those of the instructions they describe.
    #[test]
    fn send_routine_layout() {
        use send_routine::{CALLS, CODE, END};
        for at in CALLS {
            assert_eq!(&CODE[at as usize - 2..at as usize], &SYSCALL_INSN);
        }
        assert_eq!(CODE[END as usize - 1], 0xcc);
        assert_eq!(CODE.len() as u64, END);
        // js rel8 at 5, the next instruction at 7.
        assert_eq!(CODE[5], 0x78);
        assert_eq!(7 + CODE[6] as u64, END - 1);
        let mut r = Regs::default().for_send_routine(0x5000, [1, 2, 0], 0x6000, 0x40);
        // Stopped right after `socket` returned 7, and after `close` of it; or
        // trapped by seccomp there (rax the call's number, the socket left open).
        r.0.rip = 0x5002;
        r.0.rax = 7;
        assert_eq!(r.send_progress(0x5000, false).open_fd, Some(7));
        assert_eq!(r.send_progress(0x5000, true).open_fd, None);
        r.0.rip = 0x5027;
        r.0.r14 = 7;
        r.0.rax = 0;
        assert_eq!(r.send_progress(0x5000, false).open_fd, None);
        assert_eq!(r.send_progress(0x5000, true).open_fd, Some(7));
        r.0.rax = (-512i64) as u64;
        assert_eq!(r.send_progress(0x5000, false).open_fd, Some(7));
        r.0.rip = 0x502f;
        r.0.r14 = u64::MAX;
        assert_eq!(r.send_progress(0x5000, false).open_fd, None);
        let r = Regs::default().for_send_routine(0x5000, [1, 2, 0], 0x6000, 0x40);
        assert_eq!(
            r.send_progress(0x5000, false),
            SendProgress {
                open_fd: None,
                sendmsg: None,
                last: libc::SYS_socket
            }
        );
        assert_eq!((r.0.rip, r.0.orig_rax as i64), (0x5000, -1));
    }
}
