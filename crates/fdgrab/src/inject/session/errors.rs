//! Errors of a session: what a failed ptrace request, memory access or injected
//! call means for the caller, named after the call.

use super::{Session, State};
use crate::error::Error;
use crate::pidfd::PidFd;
use crate::{procfs, Pid, TargetFd};
use rustix::io::Errno;

/// Why an injected syscall did not produce a result.
#[derive(Debug)]
pub(super) enum RunError {
    /// A signal arrived before the thread's signals were blocked. It has not been
    /// delivered yet; the caller decides what to do with it.
    SignalFirst(i32),
    Fatal(Error),
}

impl From<Error> for RunError {
    fn from(e: Error) -> Self {
        RunError::Fatal(e)
    }
}

impl Session<'_> {
    /// The traced thread is gone. When it was not the leader (the leader had
    /// exited, a zombie), only an `execve` in another thread or a group exit can
    /// have killed it while it ran our calls, and both end within moments: the
    /// exec takes the leader's pid (a live leader again: the process lives on),
    /// the exit ends the process.
    pub(super) fn died(&mut self) -> Error {
        self.state = State::Gone;
        if self.tid != self.pid {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            while self.target.is_alive() && std::time::Instant::now() < deadline {
                if procfs::thread_alive(self.pid, self.pid) {
                    self.replaced = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.gone_error()
    }

    /// What a session whose thread is gone reports: the process died, or
    /// ([`Session::replaced`]) it lives on with a new program.
    pub(super) fn gone_error(&self) -> Error {
        if self.replaced {
            Error::io(
                "the traced thread was killed by an execve that another thread of the \
                 process ran during the session: the process now runs a new program, with \
                 none of the session's close-on-exec fds and its memory replaced",
                self.pid,
                None,
                Errno::CHILD,
            )
        } else {
            Error::NoSuchProcess { pid: self.pid }
        }
    }

    /// A ptrace/waitpid failure: `ESRCH`/`ECHILD` on a dead target means it died;
    /// on a live thread that no longer has a tracer, that an `execve` in
    /// another thread took its pid (the thread we traced is gone, and this one is
    /// not ours: nothing more may be written to it or undone in it).
    pub(super) fn ptrace_error(&mut self, op: &'static str, e: Errno) -> Error {
        if matches!(e, Errno::SRCH | Errno::CHILD) {
            if !self.target.is_alive() || !procfs::thread_alive(self.pid, self.tid) {
                return self.died();
            }
            // Untraced: not ours any more. (Not compared with our pid: a /proc of
            // another pid namespace would show our pid under another number.)
            let untraced = procfs::task_status(self.pid, self.tid)
                .ok()
                .and_then(|st| st.tracer_pid)
                == Some(0);
            if untraced {
                self.state = State::Gone;
                self.replaced = true;
                return self.gone_error();
            }
        }
        Error::io(op, self.pid, None, e)
    }

    pub(super) fn mem_error(&self, op: &'static str, e: Errno) -> Error {
        if e == Errno::SRCH || !self.target.is_alive() {
            return Error::NoSuchProcess { pid: self.pid };
        }
        Error::io(op, self.pid, None, e)
    }
}

pub(super) fn seize_error(target: &PidFd, tid: Pid, e: Errno) -> Error {
    let pid = target.pid();
    match e {
        Errno::SRCH => Error::NoSuchProcess { pid },
        Errno::PERM | Errno::ACCESS => {
            let tracer = procfs::task_status(pid, tid)
                .ok()
                .and_then(|st| st.tracer_pid)
                .filter(|&t| t != 0);
            let hint = match tracer {
                Some(t) => {
                    format!("thread {tid} is already traced by process {t} (a debugger or strace?)")
                }
                None => crate::access::permission_hint(pid),
            };
            Error::PermissionDenied {
                pid,
                fd: None,
                op: "ptrace(PTRACE_SEIZE)",
                hint,
            }
        }
        e => Error::io("ptrace(PTRACE_SEIZE)", pid, None, e),
    }
}

/// Maps a negative return of an injected call to an error that says it happened
/// inside the target (where its seccomp filter, LSM and limits apply).
pub(crate) fn remote_error(pid: Pid, fd: Option<TargetFd>, op: &'static str, ret: i64) -> Error {
    let e = Errno::from_raw_os_error((-ret) as i32);
    match e {
        Errno::PERM | Errno::ACCESS => Error::PermissionDenied {
            pid,
            fd,
            op,
            hint: "refused inside the target: its seccomp filter or an LSM policy denies this call there".into(),
        },
        Errno::BADF => match fd {
            Some(fd) => Error::NoSuchFd { pid, fd },
            None => Error::io(op, pid, None, e),
        },
        Errno::NOSYS => Error::PermissionDenied {
            pid,
            fd,
            op,
            hint: "the call gave ENOSYS inside the target (a seccomp filter there refuses it)".into(),
        },
        Errno::MFILE => Error::Io {
            op,
            pid,
            fd,
            source: std::io::Error::other(format!(
                "{}: the process has no free fd number below its open-file limit \
                 (RLIMIT_NOFILE), and the injected calls need one there for a grab, two \
                 for a put or redirect",
                std::io::Error::from(e)
            )),
        },
        e => Error::io(op, pid, fd, e),
    }
}
