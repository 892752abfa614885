//! The open file status flags (`O_NONBLOCK` above all) of taken sockets, saved
//! before the new server starts and put back if the handover is called off.
//!
//! A taken socket shares its open file description with the old server, status
//! flags included: a new server that makes its listener non-blocking (most do)
//! makes the old server's non-blocking too. That is harmless while the new server
//! takes over, but after a handover that was called off, an old server that
//! accepts in a blocking loop would get `EAGAIN` from its next `accept` and, as
//! Python's `socket.accept` does, fail. Putting the flags back leaves it as it
//! was.

use crate::error::{Error, Result};
use rustix::fs::OFlags;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Copies of the taken sockets with their status flags as they were before the
/// new server started.
#[derive(Debug)]
pub struct SavedStatusFlags {
    saved: Vec<(OwnedFd, OFlags)>,
}

impl SavedStatusFlags {
    /// Reads the status flags of each of `fds` (`F_GETFL`) and keeps them, to put
    /// the flags back through.
    pub fn save(fds: Vec<OwnedFd>) -> Result<Self> {
        let saved = fds
            .into_iter()
            .map(|f| {
                let flags = rustix::fs::fcntl_getfl(&f).map_err(|e| Error::local("F_GETFL", e))?;
                Ok((f, flags))
            })
            .collect::<Result<_>>()?;
        Ok(Self { saved })
    }

    /// The sockets, in the order given to [`SavedStatusFlags::save`].
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.saved.iter().map(|(f, _)| f.as_fd()).collect()
    }

    /// Puts back every status flag that changed since [`SavedStatusFlags::save`]
    /// (`F_SETFL`); returns how many sockets needed it. Call it once nothing of
    /// the new server's runs any more.
    pub fn restore(&self) -> usize {
        let mut restored = 0;
        for (fd, was) in &self.saved {
            let now = match rustix::fs::fcntl_getfl(fd) {
                Ok(now) => now,
                Err(e) => {
                    tracing::warn!(error = %e, "F_GETFL of a taken socket");
                    continue;
                }
            };
            if now == *was {
                continue;
            }
            match rustix::fs::fcntl_setfl(fd, *was) {
                Ok(()) => {
                    tracing::info!(?was, ?now, "put a taken socket's status flags back");
                    restored += 1;
                }
                Err(e) => tracing::warn!(error = %e, "F_SETFL of a taken socket"),
            }
        }
        restored
    }
}
