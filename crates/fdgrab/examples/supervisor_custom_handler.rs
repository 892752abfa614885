//! A seccomp supervisor with a handler of our own: `getppid(2)` answered with 4242.
//!
//! A worker thread installs a filter that sends its `getppid` calls to a listener
//! (seccomp filters without TSYNC cover only the installing thread and what it
//! starts later) and hands the listener to the main thread. The main thread runs a
//! [`Supervisor`] with one [`Handler`]: each trapped call is answered with a fixed
//! value instead of being run. When the worker exits, its filter has no users left
//! and the supervisor reports the listener closed.
//!
//! Needs Linux 5.0 (seccomp user notification); no privileges.
//! `cargo run -p fdgrab --example supervisor_custom_handler`

use fdgrab::seccomp::{self, Action, InstallFlags, Notification, Response, SyscallFilter};
use fdgrab::supervise::{
    Answer, AuditLabels, AuditSink, Context, Handler, Supervisor, SupervisorEvent,
};
use std::sync::mpsc;
use std::time::Duration;

/// Answers every `getppid` with a value of our choosing.
#[derive(Debug)]
struct FixedParent(i64);

impl Handler for FixedParent {
    fn syscalls(&self) -> &[libc::c_long] {
        &[libc::SYS_getppid]
    }

    fn handle(&mut self, _cx: &mut Context<'_>, notif: &Notification) -> Answer {
        println!("thread {} called getppid: answering {}", notif.tid, self.0);
        Answer::Respond(Response::Value(self.0))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = SyscallFilter::new(Action::Allow)
        .rule(libc::SYS_getppid, Action::Notify)
        .build()?;
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || -> Result<i32, String> {
        // Per thread, like the filter: lets an unprivileged thread install one.
        seccomp::set_no_new_privs().map_err(|e| e.to_string())?;
        let listener = seccomp::install(&filter, InstallFlags::supervised())
            .map_err(|e| e.to_string())?
            .ok_or("the kernel returned no listener")?;
        tx.send(listener.into_fd()).map_err(|e| e.to_string())?;
        // Blocks until the supervisor answers.
        Ok(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()))
    });
    let listener = rx.recv()?;

    let mut sup = Supervisor::new(AuditSink::none())?;
    let id = sup.add_listener_with(
        listener,
        vec![Box::new(FixedParent(4242))],
        AuditLabels::default(),
    )?;
    'serve: loop {
        for event in sup.dispatch(Some(Duration::from_secs(5)))? {
            if event == SupervisorEvent::ListenerClosed(id) {
                break 'serve;
            }
        }
    }
    let seen = worker.join().map_err(|_| "worker panicked")??;
    println!("the worker saw getppid() = {seen}");
    assert_eq!(seen, 4242);
    Ok(())
}
