//! The interface between the event loop and what it does with a trapped call.
//!
//! A handler claims syscall numbers; the loop hands it each request for one of
//! them together with a [`Context`], and sends the [`Answer`] it returns. The bind
//! handler is the first; others (for example one that opens files with `ADDFD`)
//! plug in the same way.

use super::audit::{AuditLabels, AuditSink};
use super::port_threshold::UnprivilegedPorts;
use crate::seccomp::{Listener, Notification, Response};
use std::sync::atomic::{AtomicU8, Ordering};

/// Everything a handler may use while answering one request.
#[derive(Debug)]
pub struct Context<'a> {
    /// The listener the request came from (for `ID_VALID`, remote reads, `ADDFD`).
    pub listener: &'a Listener,
    /// Where decisions are recorded.
    pub audit: &'a AuditSink,
    /// The labels of the listener's lines (container, pod, ...).
    pub labels: &'a AuditLabels,
    /// Privileged-port thresholds per network namespace, shared by all listeners.
    pub ports: &'a UnprivilegedPorts,
    /// Set when someone else may answer this request after a deadline: the
    /// handler must [`Context::claim`] it before changing anything.
    pub claim: Option<&'a Claim>,
    /// When set, the caller's memory is read in a reader process that is killed
    /// at this instant (the request then has no answer from the handler): for
    /// callers whose reads may stall. `None`: read in this thread.
    pub read_deadline: Option<std::time::Instant>,
}

impl Context<'_> {
    /// Takes the right to act on (and answer) this request. `false`: the deadline
    /// passed and the request was answered for us; do nothing more with it.
    pub fn claim(&self) -> bool {
        self.claim.is_none_or(Claim::take)
    }
}

/// Who answers a request that has a deadline: the handler that claims it first,
/// or the watchdog that expires it first. Exactly one of them wins.
#[derive(Debug, Default)]
pub struct Claim(AtomicU8);

const PENDING: u8 = 0;
const TAKEN: u8 = 1;
const EXPIRED: u8 = 2;

impl Claim {
    /// The handler's side; `true` also when it already holds the claim.
    pub fn take(&self) -> bool {
        match self
            .0
            .compare_exchange(PENDING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == TAKEN,
        }
    }

    /// The watchdog's side: `true` if the handler had not claimed it yet, and now
    /// never will.
    pub fn expire(&self) -> bool {
        self.0
            .compare_exchange(PENDING, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the watchdog won.
    pub fn expired(&self) -> bool {
        self.0.load(Ordering::Acquire) == EXPIRED
    }
}

/// What the loop does after a handler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send this response.
    Respond(Response),
    /// The handler already answered (for example with `ADDFD | SEND`), or the
    /// request is gone; send nothing.
    Done,
    /// Reading the caller's memory outlived [`Context::read_deadline`]; the
    /// handler neither claimed nor answered the request. Whoever set the
    /// deadline answers it (the agent's worker: `ETIMEDOUT`, if its claim is
    /// still free).
    Overdue,
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

/// [`Handler::handle`], with a panic turned into `CONTINUE`: the caller is
/// parked until someone answers, and a panic would end the thread that serves
/// its listener (under the agent, that container's worker; under `run`, the
/// supervisor), leaving this call and every later one unanswered for good.
/// The kernel then judges the call with the caller's own rights.
pub fn handle_guarded(
    handler: &mut (impl Handler + ?Sized),
    cx: &mut Context<'_>,
    notif: &Notification,
) -> Answer {
    let run = std::panic::AssertUnwindSafe(|| handler.handle(cx, notif));
    std::panic::catch_unwind(run).unwrap_or_else(|_| {
        tracing::error!(
            tid = notif.tid,
            nr = notif.data.nr,
            "the handler of a trapped call panicked; the kernel decides it"
        );
        Answer::Respond(Response::Continue)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Panics;

    impl Handler for Panics {
        fn syscalls(&self) -> &[libc::c_long] {
            &[libc::SYS_bind]
        }
        fn handle(&mut self, _: &mut Context<'_>, _: &Notification) -> Answer {
            panic!("a handler bug")
        }
    }

    #[test]
    fn a_panicking_handler_leaves_the_call_to_the_kernel() {
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).expect("eventfd");
        let listener = Listener::from_fd(fd);
        let audit = AuditSink::none();
        let labels = AuditLabels::default();
        let ports = UnprivilegedPorts::new();
        let mut cx = Context {
            listener: &listener,
            audit: &audit,
            labels: &labels,
            ports: &ports,
            claim: None,
            read_deadline: None,
        };
        let notif = Notification {
            id: 1,
            tid: 1,
            data: crate::seccomp::SyscallData {
                nr: libc::SYS_bind as i32,
                arch: crate::seccomp::bpf::NATIVE_AUDIT_ARCH,
                instruction_pointer: 0,
                args: [0; 6],
            },
        };
        assert_eq!(
            handle_guarded(&mut Panics, &mut cx, &notif),
            Answer::Respond(Response::Continue)
        );
    }
}
