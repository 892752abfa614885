//! Seccomp user notification: a typed BPF builder, filter installation, the
//! listener ioctls and validated reads of the trapped thread's memory.
//!
//! This is the project's only BPF builder; the `run` supervisor and the OCI agent
//! both use it.

pub mod bpf;
mod filter;
mod ioctl;
pub(crate) mod killable_read;
mod notify;
pub mod profile;
mod remote;

pub use bpf::{
    evaluate_stack, Action, BuildError, Insn, Program, SeccompData, StackVerdict, SyscallFilter,
};
pub use filter::{install, install_filter, set_no_new_privs, InstallError, InstallFlags};
pub use notify::{AddFdAt, Listener, Notification, Response, SendError, SyscallData};
pub use remote::{read_validated, read_validated_within, ReadError};

/// The filter `fdgrab run` installs: native calls only (x86_64 or aarch64; others kill the
/// process), `bind` goes to the listener, `io_uring_setup` fails with `ENOSYS`
/// (io_uring can bind without seccomp seeing it), everything else is allowed.
pub fn bind_supervisor_filter() -> Result<Program, BuildError> {
    SyscallFilter::new(Action::Allow)
        .rule(libc::SYS_bind, Action::Notify)
        .rule(libc::SYS_io_uring_setup, Action::Errno(libc::ENOSYS as u16))
        .build()
}
