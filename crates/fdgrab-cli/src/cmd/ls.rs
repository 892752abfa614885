//! `fdgrab ls`: a read-only listing of the fds of some processes, or of all of them,
//! narrowed by the questions lsof, ss and fuser answer.

use crate::cli::LsArgs;
use crate::exit::{Code, UsageError};
use anyhow::Result;
use fdgrab::inventory::{escape, query, FdEntry, FdKind, ProcessFds, Query, QueryResult};
use fdgrab::{Error, TargetFd};
use rustix::fs::{Mode, OFlags};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

/// Bumped whenever a field changes meaning or disappears; new fields do not bump it.
/// 2: one document for any number of processes (`processes`), `command`, `nlink`,
/// and `*_bytes` for names that are not UTF-8.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(serde::Serialize)]
struct Doc<'a> {
    schema_version: u32,
    processes: &'a [ProcessFds],
}

pub fn run(a: LsArgs) -> Result<ExitCode> {
    let q = build_query(&a)?;
    // Once for the whole run, rather than as the reason every process is skipped.
    fdgrab::inventory::check_proc_namespace()?;
    let named = (!a.pids.is_empty()).then_some(a.pids.as_slice());
    let mut result = query(named, &q);
    // One named process without a requested fd: the user asked for something that
    // is not there. An fd that is there but another filter left out is not missing;
    // nor is one when the process itself could not be read (reported below).
    if let ([pid], [_, ..], []) = (a.pids.as_slice(), a.fds.as_slice(), &result.skipped[..]) {
        let listed = |fd: TargetFd| {
            result
                .processes
                .iter()
                .any(|p| p.fds.iter().any(|e| e.fd == fd))
        };
        let held = |fd: TargetFd| std::fs::symlink_metadata(format!("/proc/{pid}/fd/{fd}")).is_ok();
        if let Some(missing) = a.fds.iter().find(|&&f| !listed(f) && !held(f)) {
            return Err(Error::NoSuchFd {
                pid: *pid,
                fd: *missing,
            }
            .into());
        }
    }
    // Like `lsof -t`, `fuser` and `pgrep`, --pids with nothing found exits 1, so
    // that `pids=$(fdgrab ls ... --pids) || ...` can tell; a named process that
    // could not be read keeps its own status.
    let status = match report_skipped(&mut result, named.is_some())? {
        None if a.pids_only && result.processes.is_empty() => Code::Failure.into(),
        None => ExitCode::SUCCESS,
        Some(code) => code,
    };

    if result.unheld_sockets > 0 {
        let n = result.unheld_sockets;
        crate::exit::eprint_line(format!(
            "fdgrab: no process found, but the kernel has {n} matching socket{}: held by a \
             process outside this pid namespace (/proc shows none of them), by one that could \
             not be read, in a thread's private fd table, in flight in a unix socket, or by \
             the kernel itself (a vxlan or wireguard tunnel, an NFS mount)",
            if n == 1 { "" } else { "s" }
        ));
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    if a.pids_only {
        let mut pids: Vec<i32> = result.processes.iter().map(|p| p.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in pids {
            writeln!(out, "{pid}").map_err(crate::exit::stdout_error("writing to stdout"))?;
        }
    } else if a.json {
        let doc = Doc {
            schema_version: SCHEMA_VERSION,
            processes: &result.processes,
        };
        serde_json::to_writer(&mut out, &doc)
            .map_err(|e| crate::exit::stdout_error("writing JSON")(e.into()))?;
        out.write_all(b"\n")
            .map_err(crate::exit::stdout_error("writing JSON"))?;
    } else {
        let with_process = a.pids.len() != 1;
        write_table(&mut out, &result.processes, with_process)
            .map_err(crate::exit::stdout_error("writing the table"))?;
    }
    out.flush()
        .map_err(crate::exit::stdout_error("writing to stdout"))?;
    // The process exits next: freeing every entry one by one first is wasted time.
    std::mem::forget(result);
    Ok(status)
}

/// `fdgrab ls` with only `--path FILE`, `--port PORT` and the switches `--pids`,
/// `--deleted`, `--listen`, `--json`, each at most once: the questions scripts ask
/// in loops, read without clap, as [`super::fast_get`] reads `get`. Building
/// clap's command tree and matching it cost `ls --path FILE --pids` about 0.1 ms,
/// a tenth of its run on a small host. Any other shape, a value that clap might
/// read otherwise (one starting with `-`, an empty one, a port not spelled in
/// digits), `FDGRAB_LOG_FORMAT` set or help gives `None`, and clap reads the line
/// as always, with its own messages. The test `fast_ls_agrees_with_clap` holds the
/// two to the same result.
pub fn fast_ls(argv: &[std::ffi::OsString]) -> Option<LsArgs> {
    let (sub, rest) = argv.get(1..)?.split_first()?;
    if sub != "ls" || std::env::var_os("FDGRAB_LOG_FORMAT").is_some() {
        return None;
    }
    let mut a = LsArgs {
        pids: Vec::new(),
        fds: Vec::new(),
        port: None,
        path: None,
        deleted: false,
        kinds: Vec::new(),
        listen: false,
        user: None,
        pids_only: false,
        json: false,
    };
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
            Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
            None => (bytes, None),
        };
        let switch = match name {
            b"--pids" => &mut a.pids_only,
            b"--deleted" => &mut a.deleted,
            b"--listen" => &mut a.listen,
            b"--json" => &mut a.json,
            b"--path" | b"--port" => {
                let value = match inline {
                    Some(v) => v,
                    None => args.next()?.as_bytes(),
                };
                if value.is_empty() || value[0] == b'-' {
                    return None;
                }
                if name == b"--path" {
                    let path = std::ffi::OsStr::from_bytes(value);
                    a.path.replace(path.into()).is_none().then_some(())?;
                } else {
                    let port = std::str::from_utf8(value)
                        .ok()
                        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))?
                        .parse::<u16>()
                        .ok()
                        .filter(|&p| p != 0)?;
                    a.port.replace(port).is_none().then_some(())?;
                }
                continue;
            }
            _ => return None,
        };
        if inline.is_some() || std::mem::replace(switch, true) {
            return None;
        }
    }
    // clap's own refusal, with its message.
    if a.pids_only && a.json {
        return None;
    }
    Some(a)
}

fn build_query(a: &LsArgs) -> Result<Query> {
    let (file, file_is_socket) = match &a.path {
        Some(p) => {
            // One walk of the name, to an O_PATH descriptor (which calls no
            // file system code), then its cached attributes, as for the fds
            // compared with it: a path on a file server that does not answer
            // still names its device and inode.
            let cannot = |e: rustix::io::Errno| {
                let e = std::io::Error::from(e);
                UsageError(format!("--path {}: cannot stat it: {e}", p.display()))
            };
            let flags = OFlags::PATH | OFlags::CLOEXEC;
            let fd = rustix::fs::open(p.as_path(), flags, Mode::empty()).map_err(cannot)?;
            let m = fdgrab::statx::cached(&fd).map_err(cannot)?;
            // A unix socket's name is matched by the sockets bound to it; a
            // socket itself (/proc/PID/fd/N of one, an inode of sockfs) by the
            // fds on it, as any other file and as fuser does.
            let name = m.file_type() == libc::S_IFSOCK && !on_sockfs(&fd, &m);
            (Some((m.dev, m.ino)), name)
        }
        None => (None, false),
    };
    let uid = a.user.as_deref().map(uid_of).transpose()?;
    Ok(Query {
        fds: a.fds.clone(),
        port: a.port,
        file,
        file_is_socket,
        unlinked: a.deleted,
        kinds: a.kinds.clone(),
        listening: a.listen,
        uid,
        pids_only: a.pids_only,
    })
}

/// Whether `fd` (with attributes `m`), opened on a socket's inode, is on the
/// socket itself rather than on a name one was bound to. sockfs names its
/// inodes `socket:[INODE]`, which is what the kernel gives for the descriptor's
/// path; a name's path is the name's. Where `/proc` cannot tell (not mounted, or
/// another pid namespace's), the device is compared with a socket's made for
/// the question: every socket is an inode of the one sockfs. Asking the name's
/// own file system (`statfs`) was a request to its server when the name is on
/// FUSE or NFS, and one that does not answer held `ls` for good.
fn on_sockfs(fd: &std::os::fd::OwnedFd, m: &fdgrab::statx::Attrs) -> bool {
    use rustix::net::{socket, AddressFamily, SocketType};
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(fd));
    match rustix::fs::readlink(link, Vec::new()) {
        Ok(l) => l.to_bytes().starts_with(b"socket:["),
        Err(_) => socket(AddressFamily::UNIX, SocketType::DGRAM, None)
            .ok()
            .and_then(|s| fdgrab::statx::cached(&s).ok())
            .is_some_and(|s| s.dev == m.dev),
    }
}

/// A user name (through NSS, as `run --user` resolves it) or a number.
fn uid_of(user: &str) -> Result<u32> {
    if user.contains(':') {
        return Err(UsageError(format!("--user '{user}': a user, without a group")).into());
    }
    // Only the uid matters here: a bare number that `run --user` would refuse for
    // its group is still a uid to filter by.
    match fdgrab::passwd::User::lookup(user) {
        Ok(u) => Ok(u.uid),
        Err(e) => user.parse().map_err(|_| e.into()),
    }
}

/// One summary line on stderr for the processes that could not be read. They fail
/// the run only when the user named them: the first one's error gives the status
/// (`None`: they do not change it).
fn report_skipped(result: &mut QueryResult, named: bool) -> Result<Option<ExitCode>> {
    if result.skipped.is_empty() {
        return Ok(None);
    }
    let gone = result
        .skipped
        .iter()
        .filter(|s| matches!(s.error, Error::NoSuchProcess { .. }))
        .count();
    let denied = result
        .skipped
        .iter()
        .filter(|s| matches!(s.error, Error::PermissionDenied { .. }))
        .count();
    let other = result.skipped.len() - gone - denied;
    let mut parts = Vec::new();
    for (n, why) in [
        (denied, "permission denied"),
        (gone, "no such process (or exited)"),
        (other, "other errors"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {why}"));
        }
    }
    let mut line = format!(
        "fdgrab: skipped {} process{}: {}",
        result.skipped.len(),
        if result.skipped.len() == 1 { "" } else { "es" },
        parts.join(", ")
    );
    if named {
        let pids: Vec<String> = result.skipped.iter().map(|s| s.pid.to_string()).collect();
        line.push_str(&format!(" (pid {})", pids.join(", ")));
        if let [only] = &result.skipped[..] {
            line = format!("fdgrab: {}", only.error);
        }
    }
    crate::exit::eprint_line(line);
    if named {
        let first = result.skipped.remove(0).error;
        return Ok(Some(crate::exit::code_for(&first.into()).into()));
    }
    Ok(None)
}

const HEADERS: [&str; 9] = [
    "COMMAND", "PID", "FD", "FLAGS", "TYPE", "DEVICE", "SIZE/OFF", "NODE", "NAME",
];

fn write_table(
    out: &mut impl Write,
    procs: &[ProcessFds],
    with_process: bool,
) -> std::io::Result<()> {
    let skip = if with_process { 0 } else { 2 };
    // COMMAND and PID once per process; the other cells per fd.
    let heads: Vec<[String; 2]> = procs
        .iter()
        .map(|p| {
            let command = p.command_bytes.as_deref().unwrap_or(p.command.as_bytes());
            [escape(command), p.pid.to_string()]
        })
        .collect();
    let fds: Vec<(usize, &FdEntry)> = procs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.fds.iter().map(move |e| (i, e)))
        .collect();
    let rows = rows_of(&fds);
    let mut widths = HEADERS.map(str::len);
    for (i, _) in &fds {
        for (w, c) in widths.iter_mut().zip(&heads[*i]) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &rows {
        for (w, c) in widths[2..8].iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = String::with_capacity(256);
    let mut emit = |cells: [&str; 9], out: &mut dyn Write| -> std::io::Result<()> {
        line.clear();
        for (i, c) in cells.iter().enumerate().skip(skip) {
            if i < 8 {
                // Numbers right-aligned as in lsof; words left-aligned.
                let right = matches!(i, 1 | 2 | 6 | 7);
                let pad = widths[i].saturating_sub(c.chars().count());
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
    if rows.is_empty() {
        return Ok(()); // nothing matched: no header either, as lsof
    }
    emit(HEADERS, out)?;
    for ((p, _), r) in fds.iter().zip(&rows) {
        let [command, pid] = &heads[*p];
        emit(
            std::array::from_fn(|i| match i {
                0 => command.as_str(),
                1 => pid.as_str(),
                i => r[i - 2].as_str(),
            }),
            out,
        )?;
    }
    // Freeing tens of thousands of cells one by one just before exiting is
    // wasted time.
    std::mem::forget(rows);
    Ok(())
}

/// Rows from this many fds on are formatted on every core.
const PARALLEL_ROWS: usize = 2048;

/// The cells after COMMAND and PID of each fd, in order.
fn rows_of(fds: &[(usize, &FdEntry)]) -> Vec<[String; 7]> {
    // Asked only for a table this large: std's count reads the cgroup's CPU
    // quota files, ten system calls, at every call.
    let cores = if fds.len() < PARALLEL_ROWS {
        1
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    if cores < 2 {
        return fds.iter().map(|(_, e)| row(e)).collect();
    }
    let chunk = fds.len().div_ceil(cores);
    std::thread::scope(|s| {
        let parts: Vec<_> = fds
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(|(_, e)| row(e)).collect::<Vec<_>>()))
            .collect();
        let mut rows = Vec::with_capacity(fds.len());
        for p in parts {
            // A panic in `row` is a bug; it surfaces here as in the serial case.
            rows.extend(p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        rows
    })
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
    let mut name = escape(&e.display_name_bytes());
    // An abstract socket's leading NUL shows as `@`: a path's own leading `@` is
    // escaped, so that the two never print the same.
    let local = e.socket.as_ref().and_then(|s| s.local.as_ref());
    let local_bytes = local.and_then(|l| {
        l.path_bytes
            .as_deref()
            .or(l.path.as_deref().map(str::as_bytes))
    });
    if local_bytes.is_some_and(|b| b.first() == Some(&b'@')) {
        name.replace_range(..1, "\\x40");
    }
    if e.deleted && !name.ends_with("(deleted)") {
        name.push_str(" (deleted)");
    }
    [fd, flags, ty, dev, size_off, node, name]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line the fast path reads, clap reads to the same `ls`; every line it
    /// leaves alone is clap's (including the errors). Compared through `Debug`,
    /// which shows every field.
    #[test]
    fn fast_ls_agrees_with_clap() {
        use clap::Parser;
        let lines: &[&[&str]] = &[
            &["ls", "--path", "/tmp/x", "--pids"],
            &["ls", "--pids", "--path=/tmp/x"],
            &["ls", "--path", "a=b", "--json"],
            &["ls", "--port", "80", "--pids"],
            &["ls", "--port=080", "--listen"],
            &["ls", "--deleted"],
            &["ls", "--listen", "--pids", "--port", "65535", "--path", "x"],
            &["ls"],
            // Left to clap: errors, other options, other shapes.
            &["ls", "--pids", "--json"],
            &["ls", "--pids", "--pids"],
            &["ls", "--path", "a", "--path", "b"],
            &["ls", "--path"],
            &["ls", "--path", ""],
            &["ls", "--path="],
            &["ls", "--path", "-x"],
            &["ls", "--path", "--pids"],
            &["ls", "--port", "0"],
            &["ls", "--port", "65536"],
            &["ls", "--port", "+80"],
            &["ls", "--port", " 80"],
            &["ls", "--port", "http"],
            &["ls", "--pids=1"],
            &["ls", "--pid"],
            &["ls", "--fd", "3"],
            &["ls", "--type", "file"],
            &["ls", "--user", "root"],
            &["ls", "42"],
            &["ls", "-v"],
            &["-v", "ls"],
            &["ls", "--help"],
            &["ls", "-h"],
            &["ls", "--", "42"],
            &["get", "42", "3", "--", "true"],
        ];
        super::super::fast_path_agrees_with_clap(lines, 8, fast_ls, |c| match c {
            crate::cli::Command::Ls(a) => Some(a),
            _ => None,
        });
        // The fast path leaves a run with FDGRAB_LOG_FORMAT set to clap.
        if std::env::var_os("FDGRAB_LOG_FORMAT").is_some() {
            return;
        }
        // A path that is not UTF-8 is read as the bytes it is, as clap reads it.
        let non_utf8 = std::os::unix::ffi::OsStringExt::from_vec(vec![b'/', 0xff]);
        let argv: Vec<std::ffi::OsString> =
            vec!["fdgrab".into(), "ls".into(), "--path".into(), non_utf8];
        let by_clap = crate::cli::Cli::try_parse_from(&argv).expect("clap reads it");
        let crate::cli::Command::Ls(by_clap) = by_clap.command else {
            panic!("clap read another command");
        };
        let fast = fast_ls(&argv).expect("read fast");
        assert_eq!(format!("{fast:?}"), format!("{by_clap:?}"));
    }
}
