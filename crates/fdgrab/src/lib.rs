//! Take, steal and hand over the open file descriptors of other Linux processes.
//!
//! The primitive is `pidfd_getfd(2)` (Linux 5.6): it copies a descriptor out of another
//! process without stopping it, and the copy refers to the *same* open file description
//! (same offset, same status flags). This crate wraps it with typed errors, a
//! read-only inventory of a process's descriptors, and `SCM_RIGHTS` helpers.
//!
//! The library never prints and never exits; it emits `tracing` events and returns
//! [`Error`] values that carry the pid, the fd and the operation that failed.
//!
//! ```
//! use fdgrab::{inventory, GrabOptions, PidFd, TargetFd};
//! use std::process::{Command, Stdio};
//!
//! // A process holding the read end of a pipe as its stdin.
//! let mut child = Command::new("sleep").arg("10").stdin(Stdio::piped()).spawn()?;
//! let target = PidFd::from_child(&child)?;
//!
//! // What it has open, without touching it.
//! let inv = inventory(&target)?;
//! assert!(inv.fds.iter().any(|e| e.fd.as_raw() == 0 && e.link.starts_with("pipe:")));
//!
//! // A copy of its fd 0: the same open pipe (checked), in our table, close-on-exec.
//! let stdin_copy = GrabOptions::new().grab(&target, TargetFd::new(0).expect("fd 0"))?;
//! assert_eq!(stdin_copy.backend.method(), "pidfd_getfd");
//!
//! target.send_signal(libc::SIGKILL)?;
//! child.wait()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Every public item is documented.
#![deny(missing_docs)]

pub mod access;
pub mod activation;
#[cfg(target_env = "musl")]
pub mod allocator;
mod clone_vm;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grab;
pub mod inject;
pub mod inventory;
mod netns;
pub mod passfd;
pub mod passwd;
pub mod pidfd;
pub mod procfs;
pub mod pty;
pub mod seccomp;
pub mod signalfd;
pub mod spawn;
mod spawn_error;
pub mod statx;
pub mod supervise;
mod sys;

pub use error::{Error, Result};
pub use grab::{Backend, GrabOptions, Grabbed, Preflight, Taken};
pub use inject::{close_in_target, put, CloseMode};
pub use inventory::{inventory, FdEntry, FdKind, Inventory};
pub use pidfd::{PidFd, PidFdFlags, ProcessInfo};

use std::fmt;

/// A descriptor number in *another* process's fd table.
///
/// It is deliberately not an `AsFd`/`RawFd`: using it as one of our own descriptors
/// would act on whatever we happen to have open under that number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct TargetFd(i32);

impl TargetFd {
    /// Wraps a foreign descriptor number. Negative numbers are refused, because no
    /// process can have them open and the kernel would read them as "no fd".
    pub fn new(raw: i32) -> Option<Self> {
        (raw >= 0).then_some(Self(raw))
    }

    /// The number as the target process sees it.
    pub fn as_raw(self) -> i32 {
        self.0
    }
}

impl fmt::Display for TargetFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A process or thread id as the caller's pid namespace sees it.
pub type Pid = i32;
