//! Reading a trapped thread's memory.
//!
//! The pointer arguments of a trapped call point into the target's memory, which
//! other threads of the target may change at any moment. The safe order is: copy
//! the bytes once with `process_vm_readv(2)`, then check `ID_VALID` (the thread is
//! still parked in *this* call, so the tid still named the right process while we
//! read), and from then on act only on our copy.

use super::notify::{Listener, Notification};
use rustix::io::Errno;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
}

/// Reads of [`read_validated_within`] still in flight, abandoned ones included.
static READS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Reads that may be blocked at once; beyond that, [`read_validated_within`]
/// answers [`ReadError::TimedOut`] without reading, so that a target cannot pile
/// up blocked threads in the supervisor.
pub const MAX_BLOCKED_READS: usize = 2;

/// [`read_validated`] with a deadline. `process_vm_readv` on a page that a
/// userfaultfd or FUSE server never fills waits uninterruptibly, so the copy runs
/// on a short-lived thread; after `deadline` it is abandoned (it ends when its read
/// returns, at the latest when the target dies) and [`ReadError::TimedOut`] is
/// returned. `ID_VALID` is checked here, after the copy arrived.
pub fn read_validated_within(
    listener: &Listener,
    notif: &Notification,
    addr: u64,
    buf: &mut [u8],
    deadline: Duration,
) -> Result<(), ReadError> {
    if notif.tid <= 0 {
        return Err(ReadError::Other(Errno::SRCH));
    }
    if READS_IN_FLIGHT.fetch_add(1, Ordering::AcqRel) >= MAX_BLOCKED_READS {
        READS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return Err(ReadError::TimedOut);
    }
    let (tid, len) = (notif.tid, buf.len());
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("fdgrab-read".into())
        .stack_size(READER_STACK)
        .spawn(move || {
            let mut copy = vec![0u8; len];
            let r = crate::sys::process_vm_read(tid, addr, &mut copy);
            READS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            // The receiver is gone when the deadline passed: nothing to do.
            let _ = tx.send((r, copy));
        });
    if spawned.is_err() {
        READS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        return Err(ReadError::Other(Errno::AGAIN));
    }
    let result = match rx.recv_timeout(deadline) {
        Ok((Ok(()), copy)) => {
            buf.copy_from_slice(&copy);
            Ok(())
        }
        Ok((Err(e), _)) => Err(classify(e)),
        Err(_) => return Err(ReadError::TimedOut),
    };
    if !listener.id_valid(notif.id) {
        return Err(ReadError::Gone);
    }
    result
}

/// A reader thread needs little more than the copy itself.
const READER_STACK: usize = 64 * 1024;

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
