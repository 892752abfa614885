//! The interface between the event loop and what it does with a trapped call.
//!
//! A handler claims syscall numbers; the loop hands it each request for one of
//! them together with a [`Context`], and sends the [`Answer`] it returns. The bind
//! handler is the first; others (for example one that opens files with `ADDFD`)
//! plug in the same way.

use super::audit::{AuditLabels, AuditSink};
use super::port_threshold::UnprivilegedPorts;
use crate::seccomp::{Listener, Notification, Response};

/// Everything a handler may use while answering one request.
#[derive(Debug)]
pub struct Context<'a> {
    /// The listener the request came from (for `ID_VALID`, remote reads, `ADDFD`).
    pub listener: &'a Listener,
    pub audit: &'a AuditSink,
    pub labels: &'a AuditLabels,
    /// Privileged-port thresholds per network namespace, shared by all listeners.
    pub ports: &'a mut UnprivilegedPorts,
}

/// What the loop does after a handler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send this response.
    Respond(Response),
    /// The handler already answered (for example with `ADDFD | SEND`), or the
    /// request is gone; send nothing.
    Done,
}

/// One kind of trapped system call.
pub trait Handler: Send + std::fmt::Debug {
    /// The native syscall numbers (`libc::SYS_*`) this handler answers.
    fn syscalls(&self) -> &[libc::c_long];

    /// Decides one request. Must not block on the target: it is parked until we
    /// answer, and other targets wait behind it.
    fn handle(&mut self, cx: &mut Context<'_>, notif: &Notification) -> Answer;

    /// Called from [`super::Supervisor::dispatch`] about once a second: drop what
    /// is cached about processes that have exited.
    fn maintain(&mut self) {}
}
