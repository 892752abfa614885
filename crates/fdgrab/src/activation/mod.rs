//! systemd socket activation for sockets taken out of a running process.
//!
//! The pieces of a zero-downtime handover, in the order they are used:
//! 1. [`select`] picks sockets from a read-only [`listing`] of the target by [`Selector`], and
//!    [`take_sockets`] copies them with `pidfd_getfd`, checking that each copy is the
//!    socket the inventory saw;
//! 2. [`spawn`] starts the new server as systemd would: the sockets at fd 3, 4, …
//!    without `FD_CLOEXEC`, `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID` set to the
//!    child's own pid after fork, optionally `NOTIFY_SOCKET`, and nothing else of ours;
//! 3. [`ActivatedChild::wait_ready`] waits for `READY=1` (or for a grace time) while
//!    watching for the child's exit and for signals.
//!
//! Nothing here changes the old server: the copies share its open file
//! descriptions, and what happens to it afterwards is the caller's decision.

pub mod bind_handover;
mod child;
mod listing;
pub mod notify;
pub mod selector;
mod spawn;
mod status_flags;

pub use child::{adopt_orphans, ActivatedChild, NotReady, Readiness, ReadyGate};
pub use listing::{
    describe_listeners, listing, select, take_sockets, take_sockets_with, Selected, TakenSocket,
};
pub use notify::{Notification, NotifySender, NotifySocket};
pub use selector::{is_listening_or_bound, AddrMatch, Candidate, PortMatch, Selector};
pub use spawn::{check_fd_name, prepare, setup, spawn, ActivationCommand};
pub use status_flags::SavedStatusFlags;

pub use crate::spawn::{find_program, LISTEN_FDS_START};
