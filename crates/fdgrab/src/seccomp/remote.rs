//! Reading a trapped thread's memory.
//!
//! The pointer arguments of a trapped call point into the target's memory, which
//! other threads of the target may change at any moment. The safe order is: copy
//! the bytes once with `process_vm_readv(2)`, then check `ID_VALID` (the thread is
//! still parked in *this* call, so the tid still named the right process while we
//! read), and from then on act only on our copy.

use super::killable_read::KillableError;
use super::notify::{Listener, Notification};
use rustix::io::Errno;
use std::time::Instant;

/// Why target memory could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The range is not (entirely) mapped readable in the target: the kernel would
    /// answer the call itself with `EFAULT`.
    #[error("bad address in the target (EFAULT)")]
    Fault,
    /// The request is no longer pending; nothing read may be trusted.
    #[error("the trapped call is gone")]
    Gone,
    /// Any other errno of `process_vm_readv(2)` (e.g. `ESRCH`: the thread is gone).
    #[error("process_vm_readv: {0}")]
    Other(Errno),
    /// The read outlived its deadline ([`read_validated_within`]): the memory is
    /// on a page nobody fills (a userfaultfd or FUSE server that does not answer).
    #[error("reading the target's memory outlived the deadline")]
    TimedOut,
    /// Nothing was read: earlier reads of this tenant's memory outlived their
    /// deadlines and their readers are still stuck (a FUSE request its daemon
    /// does not answer), as many as a tenant may leave.
    #[error("earlier reads of the target's memory are still stuck")]
    Stuck,
}

/// [`read_validated`] with a deadline. `process_vm_readv` on a page that a
/// userfaultfd or FUSE server never fills waits until a fatal signal, so the copy
/// runs in a process of its own that shares our memory, which is killed at
/// `deadline`: then [`ReadError::TimedOut`] is returned, and nothing of the read
/// is left behind in `buf`. A reader that a kill does not end (a FUSE request
/// its daemon took) is left to a reaper and counts against `tenant`'s share of
/// such readers; past it, [`ReadError::Stuck`] at once. `buf` holds at most
/// 128 bytes (more is `EINVAL`). `ID_VALID` is checked here, after the copy
/// arrived.
pub fn read_validated_within(
    listener: &Listener,
    notif: &Notification,
    addr: u64,
    buf: &mut [u8],
    deadline: Instant,
    tenant: u64,
) -> Result<(), ReadError> {
    if notif.tid <= 0 {
        return Err(ReadError::Other(Errno::SRCH));
    }
    let result = match super::killable_read::read(notif.tid, addr, buf, deadline, tenant) {
        Ok(()) => Ok(()),
        Err(KillableError::Read(e)) => Err(classify(e)),
        Err(KillableError::TimedOut) => return Err(ReadError::TimedOut),
        Err(KillableError::Stuck) => return Err(ReadError::Stuck),
    };
    if !listener.id_valid(notif.id) {
        return Err(ReadError::Gone);
    }
    result
}

fn classify(e: Errno) -> ReadError {
    match e {
        Errno::FAULT => ReadError::Fault,
        Errno::SRCH => ReadError::Gone,
        e => ReadError::Other(e),
    }
}

/// Copies `buf.len()` bytes at `addr` out of the thread that sent `notif`, then
/// checks that `notif` is still pending.
pub fn read_validated(
    listener: &Listener,
    notif: &Notification,
    addr: u64,
    buf: &mut [u8],
) -> Result<(), ReadError> {
    if notif.tid <= 0 {
        // The caller lives outside our pid namespace; we cannot name it.
        return Err(ReadError::Other(Errno::SRCH));
    }
    // A short read (the range runs into unmapped memory) is EFAULT too.
    let result = crate::sys::process_vm_read(notif.tid, addr, buf).map_err(classify);
    if !listener.id_valid(notif.id) {
        return Err(ReadError::Gone);
    }
    result
}
