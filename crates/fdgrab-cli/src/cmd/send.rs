//! `fdgrab send`: hand copies of a process's fds to a unix socket.

use crate::cli::SendArgs;
use anyhow::{Context, Result};
use fdgrab::grab::open_target;
use fdgrab::{passfd, GrabOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

pub fn run(a: SendArgs) -> Result<ExitCode> {
    let target = open_target(a.pid, a.backend.backend)?;
    let grabbed = GrabOptions::new()
        .backend(a.backend.backend)
        .seccomp(a.backend.force.seccomp())
        .grab_many(&target, &a.fds)?;
    let sock = connect(&a.to)?;
    let borrowed: Vec<BorrowedFd<'_>> = grabbed.iter().map(|g| g.fd.as_fd()).collect();
    let numbers: Vec<String> = a.fds.iter().map(|f| f.to_string()).collect();
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
        let backend = grabbed.first().map(|g| g.backend.name()).unwrap_or("none");
        let doc = serde_json::json!({"pid": a.pid, "fds": a.fds, "backend": backend, "to": a.to});
        println!("{doc}");
    }
    Ok(ExitCode::SUCCESS)
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
    UnixStream::connect(path).with_context(|| format!("connecting to {}", path.display()))
}
