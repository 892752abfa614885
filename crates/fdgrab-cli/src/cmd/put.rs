//! `fdgrab put`: install a file or one of our fds into a running process.

use super::redirect::Output;
use crate::cli::PutArgs;
use crate::exit::UsageError;
use anyhow::Result;
use fdgrab::grab::Preflight;
use fdgrab::inject;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

pub fn run(a: PutArgs) -> Result<ExitCode> {
    // First, before fdgrab opens anything of its own that could land on that
    // number (the target's pidfd would, as the lowest free fd).
    let inherited = a.our_fd.map(|n| dup_inherited(n.as_raw())).transpose()?;
    // Everything that can refuse runs before the file is created or truncated.
    let target = Preflight::new(a.pid).injects().install_at(a.fd).check()?;
    let opened: Option<Output> = match &a.file {
        Some(path) => {
            let mut o = std::fs::OpenOptions::new();
            if a.read {
                o.read(true);
            } else if a.rw {
                o.read(true).write(true).create(true);
            } else if a.append {
                o.append(true).create(true);
            } else {
                o.write(true).create(true);
            }
            let (create, truncate) = (!a.read, !(a.read || a.rw || a.append));
            Some(Output::open(path, o.mode(0o644), create, truncate)?)
        }
        None => None,
    };
    let ours: BorrowedFd<'_> = match (&opened, &inherited) {
        (Some(f), _) => f.as_fd(),
        (None, Some(fd)) => fd.as_fd(),
        (None, None) => return Err(UsageError("give --file PATH or --fd N".into()).into()),
    };
    match &opened {
        Some(out) => out.keep_if(inject::put_with(
            &target,
            ours,
            a.fd,
            a.force.seccomp(),
            out.before_install(),
        ))?,
        None => inject::put(&target, ours, a.fd, a.force.seccomp())?,
    }
    if a.json {
        let source = match (&a.file, a.our_fd) {
            (Some(p), _) => {
                let mut source = serde_json::json!({});
                super::redirect::json_path(&mut source, "file", p);
                source
            }
            (None, n) => serde_json::json!({"fd": n}),
        };
        crate::exit::print_line(
            serde_json::json!({"pid": a.pid, "fd": a.fd, "source": source, "method": "ptrace"}),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One of fdgrab's own fds, inherited from the shell; a typo gives a clear error
/// rather than acting on nothing.
fn dup_inherited(n: i32) -> Result<OwnedFd> {
    fdgrab::spawn::dup_inherited(n).map_err(|e| match e {
        fdgrab::Error::InvalidArgument(_) => UsageError(format!(
            "--fd {n}: fdgrab has no fd {n} open (pass it from the shell, e.g. {n}>FILE)"
        ))
        .into(),
        e => e.into(),
    })
}
