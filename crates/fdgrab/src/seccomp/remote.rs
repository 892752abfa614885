//! Reading a trapped thread's memory.
//!
//! The pointer arguments of a trapped call point into the target's memory, which
//! other threads of the target may change at any moment. The safe order is: copy
//! the bytes once with `process_vm_readv(2)`, then check `ID_VALID` (the thread is
//! still parked in *this* call, so the tid still named the right process while we
//! read), and from then on act only on our copy.

use super::notify::{Listener, Notification};
use rustix::io::Errno;

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
    let result = match crate::sys::process_vm_read(notif.tid, addr, buf) {
        Ok(()) => Ok(()),
        Err(Errno::FAULT) => Err(ReadError::Fault),
        Err(Errno::SRCH) => Err(ReadError::Gone),
        Err(e) => Err(ReadError::Other(e)),
    };
    if !listener.id_valid(notif.id) {
        return Err(ReadError::Gone);
    }
    result
}
