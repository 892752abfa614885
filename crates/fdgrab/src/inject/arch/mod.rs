//! Everything that differs between CPU architectures: register layout, the syscall
//! instruction, the syscall calling convention and the kernel's restart codes.
//! x86_64 and aarch64 are implemented; on any other architecture the crate does not
//! build, rather than ship an untested port. Only x86_64 runs in the test suite:
//! aarch64 is compile-checked, and its pure parts are unit-tested under qemu-user,
//! which does not emulate ptrace.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::*;
/// x86_64 instructions may start at any byte.
#[cfg(target_arch = "x86_64")]
pub(crate) const INSN_ALIGN: usize = 1;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub(crate) use aarch64::*;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "fdgrab's ptrace injection (src/inject/arch) is implemented for x86_64 and aarch64 only"
);

/// How the kernel will finish a syscall that was interrupted when we stopped the
/// thread, once the thread leaves the signal path without a signal to handle (on
/// arm64 only seen at a syscall-exit stop; see `aarch64.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Restart {
    /// `ERESTARTSYS`/`ERESTARTNOINTR`/`ERESTARTNOHAND`: the instruction pointer moves
    /// back over the syscall instruction and the syscall number is set again.
    Rewind,
    /// `ERESTART_RESTARTBLOCK`: as above, but with `restart_syscall(2)` as the number,
    /// which continues from the thread's saved restart block (nanosleep's remaining time).
    RestartBlock,
}

/// `-ERESTARTSYS`, `-ERESTARTNOINTR`, `-ERESTARTNOHAND`, `-ERESTART_RESTARTBLOCK`
/// (`include/linux/errno.h`): never seen by user space, because the kernel rewrites
/// them on the way out of the signal path.
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// The restart the kernel owes a syscall whose return register holds `ret`.
fn restart_for(ret: i64) -> Option<Restart> {
    match -ret {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => Some(Restart::Rewind),
        ERESTART_RESTARTBLOCK => Some(Restart::RestartBlock),
        _ => None,
    }
}

/// Offset of the first syscall instruction in `code`, which was read from an address
/// aligned to [`INSN_ALIGN`] (a mapping or page start).
pub(crate) fn find_syscall_insn(code: &[u8]) -> Option<usize> {
    (0..code.len())
        .step_by(INSN_ALIGN)
        .find(|&i| code[i..].starts_with(&SYSCALL_INSN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_aligned_syscall_insns() {
        let mut code = vec![0u8; 64];
        assert_eq!(find_syscall_insn(&code), None);
        code[13..13 + SYSCALL_INSN.len()].copy_from_slice(&SYSCALL_INSN);
        let aligned_only = INSN_ALIGN > 1;
        assert_eq!(
            find_syscall_insn(&code),
            if aligned_only { None } else { Some(13) }
        );
        code[40..40 + SYSCALL_INSN.len()].copy_from_slice(&SYSCALL_INSN);
        assert_eq!(
            find_syscall_insn(&code),
            Some(if aligned_only { 40 } else { 13 })
        );
        assert_eq!(
            find_syscall_insn(&SYSCALL_INSN[..1]),
            None,
            "a cut-off insn"
        );
    }
}
