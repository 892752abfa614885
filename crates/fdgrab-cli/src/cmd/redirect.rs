//! `fdgrab redirect`: point a running process's fd at a file, and back.

use crate::cli::RedirectArgs;
use crate::exit::UsageError;
use anyhow::{Context, Result};
use fdgrab::grab::open_target;
use fdgrab::{inject, Backend};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(a: RedirectArgs) -> Result<ExitCode> {
    let target = open_target(a.pid, Backend::Ptrace)?;
    if a.undo {
        let saved = a
            .target
            .to_str()
            .ok_or_else(|| UsageError("SAVEDFD must be a number".into()))
            .and_then(|s| {
                crate::args::parse_fd(s).map_err(|e| UsageError(format!("SAVEDFD: {e}")))
            })?;
        inject::undo_redirect(&target, a.fd, saved, a.force.seccomp())?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({"pid": a.pid, "fd": a.fd, "restored_from": saved, "method": "ptrace"})
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = PathBuf::from(&a.target);
    let mut o = std::fs::OpenOptions::new();
    if a.append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    let file = o
        .create(true)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let saved = inject::redirect(&target, a.fd, file.as_fd(), a.force.seccomp())?;
    let undo = [
        "fdgrab".to_string(),
        "redirect".into(),
        "--undo".into(),
        a.pid.to_string(),
        a.fd.to_string(),
        saved.to_string(),
    ];
    if a.json {
        let doc = serde_json::json!({
            "pid": a.pid, "fd": a.fd, "path": path, "saved_fd": saved, "undo": undo, "method": "ptrace",
        });
        println!("{doc}");
    } else {
        println!(
            "fd {} of process {} now goes to {} (the old fd is kept in the process as fd {saved})",
            a.fd,
            a.pid,
            path.display()
        );
        println!("undo: {}", undo.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}
