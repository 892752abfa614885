//! Children that share our memory (`CLONE_VM`): the spawner's vfork-style child
//! ([`crate::spawn`]) and the killable reader ([`crate::seccomp`]'s reads in a
//! process of their own). Both run on a stack of ours, started with every signal
//! blocked; this module holds that stack and that `clone`, and nothing that knows
//! what the child then does.

use crate::sys::errno;
use rustix::io::Errno;
use std::ffi::{c_int, c_void};

/// A child's stack: a private mapping with a guard page below it.
pub(crate) struct Stack {
    base: *mut c_void,
    len: usize,
}

const STACK_SIZE: usize = 256 * 1024;

impl Stack {
    fn new() -> Result<Self, Errno> {
        let page = rustix::param::page_size();
        let len = STACK_SIZE + page;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing;
        // it aliases nothing.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::STACK,
            )?
        };
        let stack = Self { base, len };
        // SAFETY: the lowest page of the mapping we just made; a stack overflow in the
        // child then faults instead of writing into whatever lies below.
        unsafe { rustix::mm::mprotect(base, page, rustix::mm::MprotectFlags::empty())? };
        Ok(stack)
    }

    pub(crate) fn top(&self) -> *mut c_void {
        // Stacks grow down on every architecture Linux runs this on except parisc.
        self.base.wrapping_byte_add(self.len)
    }
}

// SAFETY: a Stack owns its mapping outright (nothing else points into it once a
// child has exec'd or exited), so it may move between threads.
unsafe impl Send for Stack {}

/// One stack kept from the last child (a spawn's or a killable reader's): mapping,
/// guarding and unmapping a fresh one and faulting its pages in again cost more
/// than the rest of the parent's work.
static SPARE: std::sync::Mutex<Option<Stack>> = std::sync::Mutex::new(None);

impl Stack {
    pub(crate) fn take() -> Result<Self, Errno> {
        match SPARE.lock().ok().and_then(|mut s| s.take()) {
            Some(s) => Ok(s),
            None => Self::new(),
        }
    }

    /// Keeps the stack for the next child, or unmaps it. Only once the child
    /// that ran on it has exec'd or been reaped.
    pub(crate) fn give_back(self) {
        if let Ok(mut spare) = SPARE.lock() {
            if spare.is_none() {
                *spare = Some(self);
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the child has exec'd or exited, so nothing runs
        // on it any more.
        let _ = unsafe { rustix::mm::munmap(self.base, self.len) };
    }
}

/// `clone(2)` through the C library, with every signal blocked in the calling
/// thread meanwhile: the child starts with all signals blocked, so no handler of
/// ours can run on its stack (only SIGKILL and SIGSTOP reach it). `ptid` gets the
/// child's pidfd with `CLONE_PIDFD`. Returns the child's pid.
///
/// # Safety
/// `child` must run on `stack` with `arg` as `clone(2)` does for a child sharing
/// our memory (`CLONE_VM`): no allocation, locks, TLS or unwinding, and `stack` and
/// `arg` must outlive it (until it has exec'd or been reaped).
pub(crate) unsafe fn clone_with_signals_blocked(
    child: extern "C" fn(*mut c_void) -> c_int,
    stack: &Stack,
    flags: c_int,
    arg: *mut c_void,
    ptid: *mut c_int,
) -> Result<i32, Errno> {
    // SAFETY: an all-zero sigset_t is a valid value to fill.
    let mut full: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a sigset_t.
    unsafe { libc::sigfillset(&mut full) };
    // SAFETY: as above; `old` receives our mask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to two sigset_t values.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &full, &mut old) };
    // SAFETY: the caller's contract covers `child`, `stack` and `arg`; `ptid` is
    // written only with CLONE_PIDFD or CLONE_PARENT_SETTID.
    let pid = unsafe { libc::clone(child, stack.top(), flags, arg, ptid) };
    let clone_errno = (pid < 0).then(errno);
    // SAFETY: puts our own mask back; valid pointer.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    match clone_errno {
        Some(e) => Err(e),
        None => Ok(pid),
    }
}
