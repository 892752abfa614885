//! `fdgrab cat`: copy a file's content out through another process's fd.

use crate::cli::CatArgs;
use anyhow::{Context, Result};
use fdgrab::grab::Preflight;
use fdgrab::{Error, GrabOptions};
use rustix::fs::{fstat, FileType};
use rustix::io::{pread, read, Errno};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

pub fn run(a: CatArgs) -> Result<ExitCode> {
    let target = Preflight::new(a.pid)
        .backend(a.backend.backend)
        .existing(&[a.fd])
        .check()?;
    let g = GrabOptions::new()
        .backend(a.backend.backend)
        .seccomp(a.backend.force.seccomp())
        .grab(&target, a.fd)?;
    let st = fstat(&g.fd).context("fstat on the grabbed fd")?;
    let ft = FileType::from_raw_mode(st.st_mode);
    let mut out = std::io::stdout().lock();
    match ft {
        // pread never moves the shared file position, so the target sees no change.
        // A write-only fd (a logger's O_APPEND log) is read through a read-only reopen.
        FileType::RegularFile | FileType::BlockDevice => {
            refuse_own_output(&st, a.pid, a.fd)?;
            let fd = fdgrab::grab::readable(&target, a.fd, g.fd)?;
            copy_positional(&fd, &mut out)?
        }
        FileType::Directory => {
            return Err(Error::WrongKind {
                pid: a.pid,
                fd: a.fd,
                reason: "is a directory".into(),
            }
            .into())
        }
        _ if a.consume => copy_consuming(&g.fd, &mut out)?,
        _ => {
            let what = match ft {
                FileType::Fifo => "a pipe",
                FileType::Socket => "a socket",
                FileType::CharacterDevice => "a character device",
                _ => "not a regular file",
            };
            return Err(Error::WrongKind {
                pid: a.pid,
                fd: a.fd,
                reason: format!(
                    "is {what}; reading it takes the data away from the process. Pass --consume to do it anyway"
                ),
            }
            .into());
        }
    }
    out.flush()
        .map_err(crate::exit::stdout_error("writing to stdout"))?;
    Ok(ExitCode::SUCCESS)
}

/// A file that is also our standard output (`fdgrab cat PID 1 >> app.log` for a
/// process logging to app.log) grows by what we copy as fast as we read it: the
/// copy would never end and fill the disk. Refused, as cat(1) refuses "input file
/// is output file".
fn refuse_own_output(st: &rustix::fs::Stat, pid: i32, fd: fdgrab::TargetFd) -> Result<()> {
    let out = match fstat(std::io::stdout()) {
        Ok(out) => out,
        Err(_) => return Ok(()),
    };
    if (out.st_dev, out.st_ino) == (st.st_dev, st.st_ino) {
        return Err(crate::exit::UsageError(format!(
            "fd {fd} of process {pid} is the very file fdgrab's standard output writes to: \
             copying it into itself would never end; write to another file"
        ))
        .into());
    }
    Ok(())
}

fn copy_positional(fd: &OwnedFd, out: &mut impl Write) -> Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    loop {
        let n = match pread(fd, &mut buf, off) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e).context("reading the file"),
        };
        out.write_all(&buf[..n])
            .map_err(crate::exit::stdout_error("writing to stdout"))?;
        off += n as u64;
    }
}

fn copy_consuming(fd: &OwnedFd, out: &mut impl Write) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match read(fd, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            // The description is shared, and the target may have made it non-blocking.
            Err(Errno::AGAIN) => {
                let mut pfd = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                match rustix::event::poll(&mut pfd, None) {
                    Ok(_) | Err(Errno::INTR) => continue,
                    Err(e) => return Err(e).context("waiting for data on the fd"),
                }
            }
            Err(e) => return Err(e).context("reading from the fd"),
        };
        out.write_all(&buf[..n])
            .map_err(crate::exit::stdout_error("writing to stdout"))?;
        out.flush()
            .map_err(crate::exit::stdout_error("writing to stdout"))?;
    }
}
