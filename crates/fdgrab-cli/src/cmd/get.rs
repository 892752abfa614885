//! `fdgrab get`: run a command with copies of a process's fds, in fdgrab's place.

use crate::cli::GetArgs;
use crate::launch::grab_and_exec;
use anyhow::Result;
use fdgrab::grab::Preflight;
use std::process::ExitCode;

pub fn run(a: GetArgs) -> Result<ExitCode> {
    let wanted: Vec<_> = a.fds.iter().map(|m| m.fd).collect();
    let target = Preflight::new(a.pid)
        .backend(a.backend.backend)
        .existing(&wanted)
        .check()?;
    // pidfd_getfd takes any fd; the ptrace backend has the target send them over a
    // unix socket, which refuses some (io_uring). Only --skip-unpassable needs them
    // sorted out here: otherwise the backend itself refuses the first one, before it
    // stops the target, and that refusal is given the same advice.
    let ptrace = a.backend.backend == fdgrab::Backend::Ptrace;
    let fds = if ptrace && a.unpassable.skip_unpassable {
        super::send::passable(
            &target,
            &a.fds,
            true,
            |m| m.fd,
            "taken by the ptrace backend",
        )?
        .0
    } else {
        a.fds.clone()
    };
    // CMD replaces fdgrab: from here on its status is fdgrab's.
    match grab_and_exec(&target, &fds, a.backend, &a.cmd) {
        Ok(never) => match never {},
        Err(e) if ptrace && unpassable(&e) => Err(e.context(super::send::SKIP_ADVICE)),
        Err(e) => Err(e),
    }
}

/// Whether `e` is the ptrace backend's refusal of an fd the kernel will not pass
/// over a unix socket ([`fdgrab::grab::unpassable_error`]).
fn unpassable(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref(), Some(fdgrab::Error::WrongKind { .. }))
}

/// `fdgrab get [--backend B] PID FD[:NEWFD]... -- CMD...`, the command scripts run
/// in loops, read without clap: building clap's command tree and matching it cost
/// about a twelfth of such a run (0.1 ms of 1.4 here, and 29 of its 173 page
/// faults). Only that exact shape is read here, every value through the parser
/// clap uses for it; anything else (another option, a value that does not parse,
/// `FDGRAB_LOG_FORMAT` set, help) gives `None`, and clap reads the line as always,
/// with its own messages. The test `fast_get_agrees_with_clap` holds the two to
/// the same result.
pub fn fast_get(argv: &[std::ffi::OsString]) -> Option<crate::cli::GetArgs> {
    let (sub, rest) = argv.get(1..)?.split_first()?;
    if sub != "get" || std::env::var_os("FDGRAB_LOG_FORMAT").is_some() {
        return None;
    }
    let dash = rest.iter().position(|a| a == "--")?;
    let cmd = rest[dash + 1..].to_vec();
    let mut backend = None;
    let mut positional = Vec::with_capacity(dash);
    let mut before = rest[..dash].iter();
    while let Some(arg) = before.next() {
        let arg = arg.to_str()?;
        let value = match arg.strip_prefix("--backend") {
            Some("") => before.next()?.to_str()?,
            Some(v) => v.strip_prefix('=')?,
            None if arg.starts_with('-') => return None,
            None => {
                positional.push(arg);
                continue;
            }
        };
        if backend
            .replace(crate::args::parse_backend(value).ok()?)
            .is_some()
        {
            return None;
        }
    }
    let (pid, fds) = positional.split_first()?;
    if fds.is_empty() || cmd.is_empty() {
        return None;
    }
    Some(crate::cli::GetArgs {
        pid: crate::args::parse_pid(pid).ok()?,
        fds: fds
            .iter()
            .map(|f| crate::args::parse_fd_map(f).ok())
            .collect::<Option<_>>()?,
        backend: crate::cli::BackendArg {
            backend: backend.unwrap_or_default(),
            force: crate::cli::ForceArg { force: false },
        },
        unpassable: crate::cli::UnpassableArg {
            skip_unpassable: false,
        },
        cmd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line the fast path reads, clap reads to the same `get`; every line it
    /// leaves alone is clap's (including the errors). Compared through `Debug`,
    /// which shows every field.
    #[test]
    fn fast_get_agrees_with_clap() {
        let lines: &[&[&str]] = &[
            &["get", "42", "3", "--", "true"],
            &[
                "get", "42", "3", "4:10", "0:7", "--", "sh", "-c", "x", "--", "y",
            ],
            &["get", "--backend", "ptrace", "42", "3", "--", "true"],
            &["get", "42", "--backend=pidfd", "3", "--", "true"],
            &[
                "get",
                "42",
                "3",
                "--backend",
                "auto",
                "--",
                "true",
                "--backend",
            ],
            &["get", " 42", "+3", "--", "true"],
            &["get", "42", "3", "--", "--help"],
            &["get", "42", "3", "--", ""],
            // Left to clap: errors, other options, other shapes.
            &["get", "42", "--", "true"],
            &["get", "42", "3", "--"],
            &["get", "42", "3", "true"],
            &["get", "-42", "3", "--", "true"],
            &["get", "42", "-3", "--", "true"],
            &["get", "42", "3:", "--", "true"],
            &["get", "0", "3", "--", "true"],
            &["get", "x", "3", "--", "true"],
            &["get", "--backend", "bogus", "42", "3", "--", "true"],
            &[
                "get",
                "--backend",
                "ptrace",
                "--backend",
                "pidfd",
                "42",
                "3",
                "--",
                "t",
            ],
            &["get", "--backend", "42", "3", "--", "true"],
            &["get", "--backend"],
            &["get", "--backendx", "42", "3", "--", "true"],
            &["get", "--force", "42", "3", "--", "true"],
            &["get", "--skip-unpassable", "42", "3", "--", "true"],
            &["get", "-v", "42", "3", "--", "true"],
            &["-v", "get", "42", "3", "--", "true"],
            &["get", "--help"],
            &["get", "-h", "42", "3", "--", "true"],
            &["get"],
            &["ls", "42"],
            &["steal", "42", "3", "--", "true"],
        ];
        super::super::fast_path_agrees_with_clap(lines, 8, fast_get, |c| match c {
            crate::cli::Command::Get(a) => Some(a),
            _ => None,
        });
        let argv: Vec<std::ffi::OsString> = ["fdgrab", "get", "42", "3", "--", "t"]
            .into_iter()
            .map(Into::into)
            .collect();
        let non_utf8 = std::os::unix::ffi::OsStringExt::from_vec(vec![b'4', 0xff]);
        let mut bad = argv.clone();
        bad[2] = non_utf8;
        assert!(
            fast_get(&bad).is_none(),
            "a value that is not UTF-8 is clap's"
        );
    }
}
