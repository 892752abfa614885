//! `fdgrab send`: hand copies of a process's fds to a unix socket.

use crate::cli::SendArgs;
use anyhow::{Context, Result};
use fdgrab::grab::Preflight;
use fdgrab::{passfd, GrabOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

pub fn run(a: SendArgs) -> Result<ExitCode> {
    let target = Preflight::new(a.pid)
        .backend(a.backend.backend)
        .existing(&a.fds)
        .check()?;
    // Every fd SCM_RIGHTS would refuse is known before anything is taken or sent.
    let (fds, skipped) = passable(
        &target,
        &a.fds,
        a.unpassable.skip_unpassable,
        |f| *f,
        "sent",
    )?;
    // A destination that cannot take them is known before anything is taken (with
    // --backend ptrace, taking stops the target).
    let sock = connect(&a.to)?;
    let grabbed = GrabOptions::new()
        .backend(a.backend.backend)
        .seccomp(a.backend.force.seccomp())
        .grab_many(&target, &fds)?;
    let borrowed: Vec<BorrowedFd<'_>> = grabbed.iter().map(|g| g.fd.as_fd()).collect();
    let numbers: Vec<String> = fds.iter().map(|f| f.to_string()).collect();
    passfd::send_all_fds(&sock, &borrowed, |i, n| {
        let start = i * passfd::SCM_MAX_FD;
        format!(
            "fdgrab pid={} fds={}\n",
            a.pid,
            numbers[start..start + n].join(",")
        )
        .into_bytes()
    })
    .with_context(|| format!("sending fds to {}", a.to.display()))?;
    if a.json {
        let used = grabbed.first().map(|g| g.backend);
        let skipped: Vec<_> = skipped
            .iter()
            .map(|(fd, why)| serde_json::json!({"fd": fd, "reason": why}))
            .collect();
        let mut doc = serde_json::json!({
            "pid": a.pid,
            "fds": fds,
            "backend": used.map(|b| b.name()).unwrap_or("none"),
            "method": used.map(|b| b.method()).unwrap_or("none"),
            "skipped": skipped,
        });
        super::redirect::json_path(&mut doc, "to", &a.to);
        crate::exit::print_line(doc)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Target fds left out, each with the kernel's reason.
pub(crate) type Refused = Vec<(fdgrab::TargetFd, &'static str)>;

/// The advice given with the refusal of an fd the kernel will not pass.
pub(crate) const SKIP_ADVICE: &str =
    "nothing was taken; pass --skip-unpassable to hand over the other fds";

/// Splits `items` (each naming a target fd through `fd_of`) into those the kernel
/// will pass over a unix socket and those it refuses, with the reason. A refused fd
/// is an error naming it unless `skip` (`--skip-unpassable`); skipped ones are named
/// on stderr, and skipping every fd is an error too.
pub(crate) fn passable<T: Clone>(
    target: &fdgrab::PidFd,
    items: &[T],
    skip: bool,
    fd_of: impl Fn(&T) -> fdgrab::TargetFd,
    how: &str,
) -> Result<(Vec<T>, Refused)> {
    let fds: Vec<_> = items.iter().map(&fd_of).collect();
    let refused = fdgrab::grab::unpassable(target, &fds)?;
    if refused.is_empty() {
        return Ok((items.to_vec(), refused));
    }
    let pid = target.pid();
    if !skip {
        let (fd, why) = refused[0];
        return Err(
            anyhow::Error::new(fdgrab::grab::unpassable_error(pid, fd, why, how))
                .context(SKIP_ADVICE),
        );
    }
    for (fd, why) in &refused {
        crate::exit::eprint_line(format_args!(
            "fdgrab: skipping fd {fd} of process {pid}: {why}"
        ));
    }
    let kept: Vec<T> = items
        .iter()
        .filter(|i| !refused.iter().any(|(fd, _)| *fd == fd_of(i)))
        .cloned()
        .collect();
    if kept.is_empty() {
        return Err(crate::exit::UsageError(format!(
            "every fd given for process {pid} was skipped; nothing to hand over"
        ))
        .into());
    }
    Ok((kept, refused))
}

fn connect(path: &std::path::Path) -> Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)
            .with_context(|| format!("abstract socket name {}", path.display()))?;
        return UnixStream::connect_addr(&addr)
            .with_context(|| format!("connecting to {}", path.display()));
    }
    UnixStream::connect(path).map_err(|e| {
        let why = connect_hint(path, &e);
        anyhow::Error::new(e).context(format!("connecting to {}{why}", path.display()))
    })
}

/// What the kernel's errno means for `--to`, when it alone would mislead: a
/// regular file answers `ECONNREFUSED` like a socket nobody listens on, and a
/// datagram socket `EPROTOTYPE`.
fn connect_hint(path: &std::path::Path, e: &std::io::Error) -> String {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path).map(|m| m.file_type());
    match (e.raw_os_error(), kind) {
        (Some(libc::ECONNREFUSED), Ok(t)) if !t.is_socket() => {
            " (it is not a socket; --to names a listening unix stream socket)".into()
        }
        (Some(libc::ECONNREFUSED), _) => " (a socket nobody listens on)".into(),
        (Some(libc::EPROTOTYPE), _) => {
            " (not a stream socket, e.g. a datagram one; --to names a listening unix stream \
             socket)"
                .into()
        }
        _ => String::new(),
    }
}
