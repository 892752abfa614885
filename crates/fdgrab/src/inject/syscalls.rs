//! Names of the system calls fdgrab injects, shared by the session (its error
//! messages) and the seccomp check (its refusals); a leaf, so neither imports the
//! other for it.

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
        #[cfg(target_arch = "x86_64")]
        libc::SYS_dup2 => "dup2 (injected)",
        libc::SYS_close_range => "close_range (injected)",
        _ => "a syscall injected into the target",
    }
}
