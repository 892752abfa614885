//! Network namespaces. A socket belongs to the namespace it was created in, and
//! `/proc/sys/net` shows the namespace of the thread that reads it, so work that must
//! happen "inside" another process's namespace runs on a short-lived thread that
//! `setns(2)`s there. `setns(CLONE_NEWNET)` changes only the calling thread, so the
//! rest of the process is never moved.

use rustix::fs::{fstat, stat};
use std::os::fd::{AsFd, BorrowedFd};

/// Whether the namespace file `ns` (an open `/proc/.../ns/net`) is our own namespace.
pub(crate) fn is_ours(ns: BorrowedFd<'_>) -> std::io::Result<bool> {
    let theirs = fstat(ns)?;
    let ours = stat("/proc/thread-self/ns/net")?;
    Ok((theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino))
}

/// Runs `work` in the network namespace `ns`: directly when it is ours, otherwise on a
/// scoped thread that enters it first (which needs CAP_SYS_ADMIN over that namespace).
pub(crate) fn run_in<T: Send>(
    ns: BorrowedFd<'_>,
    work: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    if is_ours(ns)? {
        return work();
    }
    std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<T> {
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            work()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns helper thread panicked")))
    })
}
