//! `fdgrab ls`: a read-only listing of a process's fds.

use crate::cli::LsArgs;
use anyhow::{Context, Result};
use fdgrab::inventory::{inventory, FdEntry, FdKind};
use fdgrab::{Error, PidFd};
use std::io::Write;
use std::process::ExitCode;

/// Bumped whenever a field changes meaning or disappears; new fields do not bump it.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(serde::Serialize)]
struct Doc<'a> {
    schema_version: u32,
    pid: i32,
    /// Identity and credentials; null if the process could not be asked.
    process: Option<fdgrab::ProcessInfo>,
    fds: &'a [FdEntry],
}

pub fn run(a: LsArgs) -> Result<ExitCode> {
    let target = PidFd::open(a.pid)?;
    let mut inv = inventory(&target)?;
    if !a.fds.is_empty() {
        if let Some(missing) = a.fds.iter().find(|f| !inv.fds.iter().any(|e| e.fd == **f)) {
            return Err(Error::NoSuchFd {
                pid: a.pid,
                fd: *missing,
            }
            .into());
        }
        inv.fds.retain(|e| a.fds.contains(&e.fd));
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    if a.json {
        let process = target.info().ok();
        let doc = Doc {
            schema_version: SCHEMA_VERSION,
            pid: inv.pid,
            process,
            fds: &inv.fds,
        };
        serde_json::to_writer(&mut out, &doc).context("writing JSON")?;
        out.write_all(b"\n").context("writing JSON")?;
    } else {
        write_table(&mut out, &inv.fds).context("writing the table")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn write_table(out: &mut impl Write, fds: &[FdEntry]) -> std::io::Result<()> {
    let rows: Vec<[String; 7]> = fds.iter().map(row).collect();
    let headers = ["FD", "FLAGS", "TYPE", "DEVICE", "SIZE/OFF", "NODE", "NAME"];
    let mut widths = headers.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()).take(6) {
            *w = (*w).max(c.len());
        }
    }
    let mut line = String::with_capacity(256);
    let mut emit = |cells: [&str; 7], out: &mut dyn Write| -> std::io::Result<()> {
        line.clear();
        for (i, c) in cells.iter().enumerate() {
            if i < 6 {
                // Numbers right-aligned as in lsof; words left-aligned.
                let right = matches!(i, 0 | 4 | 5);
                let pad = widths[i].saturating_sub(c.len());
                if right {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                line.push(' ');
            } else {
                line.push_str(c);
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())
    };
    emit(headers, out)?;
    for r in &rows {
        emit([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6]], out)?;
    }
    Ok(())
}

fn row(e: &FdEntry) -> [String; 7] {
    let fd = format!("{}{}", e.fd, e.access.letter());
    let mut flags = String::new();
    if e.flags.cloexec {
        flags.push('e');
    }
    if e.flags.append {
        flags.push('a');
    }
    if e.flags.nonblock {
        flags.push('n');
    }
    if flags.is_empty() {
        flags.push('-');
    }
    let ty = match (&e.socket, e.kind) {
        (Some(s), _) => match s.family.as_str() {
            "inet" => "IPv4".to_string(),
            "inet6" => "IPv6".to_string(),
            f => f.to_string(),
        },
        (None, FdKind::Anon) => e.anon.clone().unwrap_or_else(|| "a_inode".into()),
        (None, k) => k.label().to_string(),
    };
    let dev = e.rdev.clone().or_else(|| e.dev.clone()).unwrap_or_default();
    let size_off = match (e.kind, e.size, e.offset) {
        (FdKind::File | FdKind::Dir | FdKind::Memfd, Some(size), _) => size.to_string(),
        (_, _, Some(off)) => format!("0t{off}"),
        _ => String::new(),
    };
    let node = match &e.socket {
        Some(s) if s.family.starts_with("inet") => {
            s.protocol.clone().unwrap_or_default().to_uppercase()
        }
        _ => e.inode.map(|i| i.to_string()).unwrap_or_default(),
    };
    let mut name = e.display_name();
    if e.deleted && !name.ends_with("(deleted)") {
        name.push_str(" (deleted)");
    }
    [fd, flags, ty, dev, size_off, node, name]
}
