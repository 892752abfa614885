//! `fdgrab put`: install a file or one of our fds into a running process.

use crate::cli::PutArgs;
use crate::exit::UsageError;
use anyhow::{Context, Result};
use fdgrab::grab::open_target;
use fdgrab::{inject, Backend};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

pub fn run(a: PutArgs) -> Result<ExitCode> {
    let target = open_target(a.pid, Backend::Ptrace)?;
    let opened: Option<OwnedFd> = match &a.file {
        Some(path) => {
            let mut o = std::fs::OpenOptions::new();
            if a.read {
                o.read(true);
            } else if a.rw {
                o.read(true).write(true).create(true);
            } else if a.append {
                o.append(true).create(true);
            } else {
                o.write(true).create(true).truncate(true);
            }
            let f = o
                .mode(0o644)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            Some(f.into())
        }
        None => None,
    };
    let ours: BorrowedFd<'_> = match (&opened, a.our_fd) {
        (Some(f), _) => f.as_fd(),
        (None, Some(n)) => borrow_inherited(n.as_raw())?,
        (None, None) => return Err(UsageError("give --file PATH or --fd N".into()).into()),
    };
    inject::put(&target, ours, a.fd, a.force.seccomp())?;
    if a.json {
        let source = match (&a.file, a.our_fd) {
            (Some(p), _) => serde_json::json!({"file": p}),
            (None, n) => serde_json::json!({"fd": n}),
        };
        println!(
            "{}",
            serde_json::json!({"pid": a.pid, "fd": a.fd, "source": source, "method": "ptrace"})
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One of fdgrab's own fds, inherited from the shell. Checked to be open first, so
/// a typo gives a clear error rather than acting on nothing.
fn borrow_inherited(n: i32) -> Result<BorrowedFd<'static>> {
    if !std::path::Path::new(&format!("/proc/self/fd/{n}")).exists() {
        return Err(UsageError(format!(
            "--fd {n}: fdgrab has no fd {n} open (pass it from the shell, e.g. {n}>FILE)"
        ))
        .into());
    }
    // SAFETY: fd `n` is open (checked just above) and fdgrab never closes an fd it
    // did not open itself, so it stays open for the rest of the process.
    Ok(unsafe { BorrowedFd::borrow_raw(n) })
}
