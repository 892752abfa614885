//! Everything that differs between CPU architectures: register layout, the syscall
//! instruction, the syscall calling convention and the kernel's restart codes.
//! Only x86_64 is implemented, because it is the only one tested; another
//! architecture gets a clear compile error rather than an untested port.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "fdgrab's ptrace injection (src/inject/arch) is implemented and tested for x86_64 only"
);
