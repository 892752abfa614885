//! `fdgrab redirect`: point a running process's fd at a file, and back.
//!
//! `--undo` must never act on an fd fdgrab did not save: `redirect --undo PID 1 2`
//! (a typo) would otherwise move stderr onto stdout and close fd 2. `kcmp` cannot
//! tell, because once `redirect` exits no copy of ours is left to compare with. So
//! `redirect` writes a record (root: /run/fdgrab/redirect, others:
//! $XDG_RUNTIME_DIR/fdgrab/redirect) named after the pid, the process's start time
//! and both fd numbers, holding the [`FdIdentity`] of the saved fd (file, mount,
//! close-on-exec, which `F_DUPFD_CLOEXEC` set) and of the file installed at FD.
//! `--undo` proceeds only when a record exists for exactly this process (a reused
//! pid has another start time) and both fds still match it; else it exits 2 and
//! changes nothing.

use crate::cli::RedirectArgs;
use crate::exit::UsageError;
use anyhow::{Context, Result};
use fdgrab::access::{fd_identity, FdIdentity};
use fdgrab::grab::Preflight;
use fdgrab::inject;
use fdgrab::{PidFd, TargetFd};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(a: RedirectArgs) -> Result<ExitCode> {
    if a.undo {
        let saved = a
            .target
            .to_str()
            .ok_or_else(|| UsageError("SAVEDFD must be a number".into()))
            .and_then(|s| {
                crate::args::parse_fd(s).map_err(|e| UsageError(format!("SAVEDFD: {e}")))
            })?;
        let target = Preflight::new(a.pid)
            .injects()
            .existing(&[a.fd, saved])
            .check()?;
        let record = recorded(&target, a.fd, saved)?;
        inject::undo_redirect(&target, a.fd, saved, a.force.seccomp())?;
        if let Err(e) = std::fs::remove_file(&record) {
            tracing::warn!(path = %record.display(), error = %e, "removing the redirect record");
        }
        if a.json {
            crate::exit::print_line(
                serde_json::json!({"pid": a.pid, "fd": a.fd, "restored_from": saved, "method": "ptrace"}),
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Everything that can refuse runs before the file is created or truncated.
    let target = Preflight::new(a.pid).injects().existing(&[a.fd]).check()?;
    let path = PathBuf::from(&a.target);
    let mut o = std::fs::OpenOptions::new();
    if a.append {
        o.append(true);
    } else {
        o.write(true);
    }
    let file = Output::open(&path, o.create(true).mode(0o644), true, !a.append)?;
    let r = inject::redirect_with(
        &target,
        a.fd,
        file.as_fd(),
        a.force.seccomp(),
        file.before_install(),
    );
    let saved = file.keep_if(r)?;
    if let Err(e) = record(&target, a.fd, saved, &path) {
        crate::exit::eprint_line(format_args!(
            "fdgrab: warning: could not record saved fd {saved} ({e:#}); \
             `fdgrab redirect --undo` will refuse it"
        ));
    }
    let undo = [
        "fdgrab".to_string(),
        "redirect".into(),
        "--undo".into(),
        a.pid.to_string(),
        a.fd.to_string(),
        saved.to_string(),
    ];
    if a.json {
        let mut doc = serde_json::json!({
            "pid": a.pid, "fd": a.fd, "saved_fd": saved, "undo": undo, "method": "ptrace",
        });
        json_path(&mut doc, "path", &path);
        crate::exit::print_line(doc)?;
    } else {
        crate::exit::print_line(format_args!(
            "fd {} of process {} now goes to {} (the old fd is kept in the process as fd {saved})",
            a.fd,
            a.pid,
            path.display()
        ))?;
        crate::exit::print_line(format_args!("undo: {}", undo.join(" ")))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A saved fd and the file that was installed in place of the original.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    saved: FdIdentity,
    installed: FdIdentity,
    /// For messages only, so lossy: a name that is not UTF-8 must not keep the
    /// record from being written.
    path: String,
}

/// Sets `doc[key]` to `path` as `ls --json` gives names (docs/inventory.md): the
/// UTF-8 string, lossy, and for a name that is not UTF-8 also `KEY_bytes`, the
/// exact bytes as numbers.
pub(crate) fn json_path(doc: &mut serde_json::Value, key: &str, path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    doc[key] = path.to_string_lossy().into();
    if path.to_str().is_none() {
        doc[format!("{key}_bytes")] = path.as_os_str().as_bytes().into();
    }
}

fn state_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/run/fdgrab/redirect");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("fdgrab/redirect"),
        _ => std::env::temp_dir().join(format!(
            "fdgrab-{}/redirect",
            rustix::process::geteuid().as_raw()
        )),
    }
}

/// Removes the records of processes that have exited (their pid is gone or names
/// a process with another start time): nothing can undo those any more.
fn prune(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let mut parts = name.to_str().unwrap_or("").split('-');
        let (Some(Ok(pid)), Some(Ok(start))) = (
            parts.next().map(str::parse::<fdgrab::Pid>),
            parts.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if fdgrab::access::process_start(pid) != Some(start) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Records decide whether an fd of another process gets closed, so they are only
/// read from, and written to, a directory that fdgrab's user owns and nobody else
/// can write to (a shared temp dir could have been prepared by someone else). The
/// same holds for its parent (`fdgrab-UID` in a temp dir): whoever owns that can
/// swap the record directory for another between this check and the read.
fn trusted_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let meta = std::fs::symlink_metadata(d).with_context(|| format!("{}", d.display()))?;
        if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
            anyhow::bail!(
                "{} is not a directory owned by uid {me} and writable only by it",
                d.display()
            );
        }
    }
    Ok(())
}

fn record_path(start: u64, pid: fdgrab::Pid, fd: TargetFd, saved: TargetFd) -> PathBuf {
    state_dir().join(format!("{pid}-{start}-{fd}-{saved}.json"))
}

fn record(target: &PidFd, fd: TargetFd, saved: TargetFd, path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let rec = Record {
        saved: fd_identity(target, saved)?,
        installed: fd_identity(target, fd)?,
        path: path.to_string_lossy().into_owned(),
    };
    let file = record_path(rec.saved.start, target.pid(), fd, saved);
    let dir = state_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    trusted_dir(&dir)?;
    prune(&dir);
    std::fs::write(&file, serde_json::to_vec(&rec)?)
        .with_context(|| format!("writing {}", file.display()))
}

/// The record `redirect` wrote for this process, fd and saved fd, checked against
/// both fds as they are now. Returns the record's path.
fn recorded(target: &PidFd, fd: TargetFd, saved: TargetFd) -> Result<PathBuf> {
    let pid = target.pid();
    let now_saved = fd_identity(target, saved)?;
    let now_fd = fd_identity(target, fd)?;
    let file = record_path(now_saved.start, pid, fd, saved);
    let refuse = |why: String| -> anyhow::Error {
        UsageError(format!(
            "fd {saved} of process {pid} is not a saved fd that `fdgrab redirect` made for fd {fd}: \
             {why}; nothing was changed"
        ))
        .into()
    };
    trusted_dir(&state_dir()).map_err(|e| refuse(format!("{e:#}")))?;
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse(format!("no record {}", file.display())))
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let rec: Record = serde_json::from_slice(&text)
        .map_err(|e| refuse(format!("unreadable record {}: {e}", file.display())))?;
    if rec.saved != now_saved {
        return Err(refuse(format!(
            "fd {saved} is no longer the file redirect saved (the process replaced it)"
        )));
    }
    let same_file = |a: &FdIdentity, b: &FdIdentity| (a.dev, a.ino) == (b.dev, b.ino);
    if !same_file(&rec.installed, &now_fd) {
        return Err(refuse(format!(
            "fd {fd} no longer points at {} (the process reopened it since)",
            rec.path
        )));
    }
    Ok(file)
}

/// A file opened for a command that can still fail after the open (the injection
/// itself; every check that can be made beforehand already ran). The file is not
/// truncated at the open: [`Output::before_install`] truncates it at the last moment
/// before the target is changed, and [`Output::keep_if`] removes a file the open
/// created when the command fails. A refusal therefore leaves the user's files as
/// they were.
pub(crate) struct Output {
    file: std::fs::File,
    created: Option<PathBuf>,
    truncate: bool,
}

impl Output {
    /// Opens `path` with `o` (which must not truncate); `create` says whether `o`
    /// may create it, `truncate` whether to empty it before the install.
    pub(crate) fn open(
        path: &std::path::Path,
        o: &mut std::fs::OpenOptions,
        create: bool,
        truncate: bool,
    ) -> Result<Self> {
        let ctx = || format!("opening {}", path.display());
        let mut created = None;
        // create_new tells whether this open made the file.
        let file = match o.clone().create_new(create).open(path) {
            Ok(file) if create => {
                created = Some(path.to_path_buf());
                file
            }
            Ok(file) => file,
            Err(e) if create && e.kind() == std::io::ErrorKind::AlreadyExists => {
                o.create(false).open(path).with_context(ctx)?
            }
            Err(e) => return Err(e).with_context(ctx),
        };
        Ok(Self {
            file,
            created,
            truncate,
        })
    }

    /// The hook for [`inject::put_with`]/[`inject::redirect_with`]: empties the file
    /// if it is to be truncated. Only a regular file is: a FIFO, a terminal or
    /// /dev/null has no length (`ftruncate` refuses it with EINVAL), and `O_TRUNC`
    /// ignores them too.
    pub(crate) fn before_install(&self) -> impl FnOnce() -> fdgrab::Result<()> + '_ {
        move || {
            let meta = self.file.metadata().map_err(|e| fdgrab::Error::Local {
                op: "fstat on the output file",
                source: e,
            })?;
            if self.truncate && meta.is_file() {
                self.file.set_len(0).map_err(|e| fdgrab::Error::Local {
                    op: "truncating the output file",
                    source: e,
                })?;
            }
            Ok(())
        }
    }

    /// Passes `r` through; on error removes the file if this open created it and
    /// the path still names it.
    pub(crate) fn keep_if<T>(&self, r: fdgrab::Result<T>) -> fdgrab::Result<T> {
        if r.is_err() {
            if let Some(path) = &self.created {
                use std::os::unix::fs::MetadataExt;
                let ours = self.file.metadata().ok().map(|m| (m.dev(), m.ino()));
                let there = std::fs::symlink_metadata(path)
                    .ok()
                    .map(|m| (m.dev(), m.ino()));
                if ours.is_some() && ours == there {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        r
    }
}

impl AsFd for Output {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}
