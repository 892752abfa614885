//! Value parsers for the command line. Each one names the argument and says why a
//! value is wrong, so `fdgrab ls -3` or `fdgrab get 1 x` never ends in a panic or a
//! bare "invalid digit".

use fdgrab::{Pid, TargetFd};

/// A process id: a positive decimal number.
pub fn parse_pid(s: &str) -> Result<Pid, String> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a process id (expected a positive decimal number)"))?;
    if n == 0 {
        return Err("pid 0 is not a process (it means \"the caller\" to the kernel)".into());
    }
    if n < 0 {
        return Err(format!("pid {n} is negative; process ids are positive"));
    }
    Pid::try_from(n).map_err(|_| format!("pid {n} is out of range (at most {})", i32::MAX))
}

/// A descriptor number in the target.
pub fn parse_fd(s: &str) -> Result<TargetFd, String> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a file descriptor number (expected 0, 1, 2, ...)"))?;
    if n < 0 {
        return Err(format!("fd {n} is negative; descriptor numbers start at 0"));
    }
    let raw =
        i32::try_from(n).map_err(|_| format!("fd {n} is out of range (at most {})", i32::MAX))?;
    TargetFd::new(raw).ok_or_else(|| format!("fd {n} is not valid"))
}

/// `ls --type`: the type names of `ls --json`.
pub fn parse_kind(s: &str) -> Result<fdgrab::FdKind, String> {
    use fdgrab::FdKind::*;
    let kinds = [
        ("file", File),
        ("dir", Dir),
        ("chr", Chr),
        ("blk", Blk),
        ("fifo", Fifo),
        ("pipe", Pipe),
        ("socket", Socket),
        ("anon", Anon),
        ("memfd", Memfd),
        ("symlink", Symlink),
        ("unknown", Unknown),
    ];
    kinds
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            let names: Vec<&str> = kinds.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown fd type '{s}' (expected one of {})",
                names.join(", ")
            )
        })
}

/// `--backend auto|pidfd|ptrace`.
pub fn parse_backend(s: &str) -> Result<fdgrab::Backend, String> {
    s.parse()
}

/// `FD[:NEWFD]`: a target descriptor and the number it gets in the command we run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdMap {
    pub fd: TargetFd,
    pub new_fd: i32,
}

pub fn parse_fd_map(s: &str) -> Result<FdMap, String> {
    let (src, dst) = match s.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let fd = parse_fd(src)?;
    let new_fd = match dst {
        None => fd.as_raw(),
        Some(d) => parse_fd(d)
            .map_err(|e| format!("NEWFD in '{s}': {e}"))?
            .as_raw(),
    };
    Ok(FdMap { fd, new_fd })
}

/// A socket selector for `exec` (`tcp:*:8080`, `unix:/run/x.sock`, `fd:3`, `*`).
pub fn parse_selector(s: &str) -> Result<fdgrab::activation::Selector, String> {
    s.parse()
}

/// A signal by name or number (`TERM`, `SIGHUP`, `15`).
pub fn parse_signal(s: &str) -> Result<i32, String> {
    fdgrab::signalfd::parse_signal(s)
}

/// A duration: a number with a unit (`250ms`, `2s`, `1.5s`, `1m`), or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (expected e.g. 500ms, 2s, 1.5s, 1m)"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "'{other}' in '{s}' is not a time unit (ms, s, m, h)"
            ))
        }
    };
    std::time::Duration::try_from_secs_f64(value * scale)
        .map_err(|_| format!("duration '{s}' is out of range"))
}

/// `attach --escape`: one character (printable ASCII, or `^X` for a control key),
/// or `none`.
pub fn parse_escape(s: &str) -> Result<fdgrab::pty::Escape, String> {
    let b = s.as_bytes();
    match b {
        b"none" => Ok(fdgrab::pty::Escape::NONE),
        [c] if c.is_ascii_graphic() => Ok(fdgrab::pty::Escape::new(*c)),
        [b'^', c] if c.is_ascii_alphabetic() || b"@[\\]^_".contains(c) => {
            Ok(fdgrab::pty::Escape::new(c.to_ascii_uppercase() & 0x1f))
        }
        _ => Err(format!(
            "'{s}' is not an escape character (expected one printable character such as ~, \
             a control key such as ^], or none)"
        )),
    }
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
        if backend.replace(parse_backend(value).ok()?).is_some() {
            return None;
        }
    }
    let (pid, fds) = positional.split_first()?;
    if fds.is_empty() || cmd.is_empty() {
        return None;
    }
    Some(crate::cli::GetArgs {
        pid: parse_pid(pid).ok()?,
        fds: fds
            .iter()
            .map(|f| parse_fd_map(f).ok())
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
        use clap::Parser;
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
        let mut read = 0;
        for line in lines {
            let argv: Vec<std::ffi::OsString> = std::iter::once("fdgrab")
                .chain(line.iter().copied())
                .map(Into::into)
                .collect();
            let by_clap = crate::cli::Cli::try_parse_from(&argv);
            match (fast_get(&argv), by_clap) {
                (None, _) => {}
                (Some(fast), Ok(cli)) => {
                    read += 1;
                    assert_eq!((cli.verbose, cli.log_format), (0, None), "{line:?}");
                    let crate::cli::Command::Get(by_clap) = cli.command else {
                        panic!("{line:?}: clap read another command");
                    };
                    assert_eq!(format!("{fast:?}"), format!("{by_clap:?}"), "{line:?}");
                }
                (Some(fast), Err(e)) => panic!("{line:?}: read as {fast:?}, clap says {e}"),
            }
        }
        // FDGRAB_LOG_FORMAT (clap reads it for --log-format) sends every line to clap.
        let expected = match std::env::var_os("FDGRAB_LOG_FORMAT") {
            None => 8,
            Some(_) => 0,
        };
        assert_eq!(
            read, expected,
            "the lines of the expected shape are read fast"
        );
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

    #[test]
    fn pids() {
        assert_eq!(parse_pid("42"), Ok(42));
        assert!(parse_pid("0").unwrap_err().contains("pid 0"));
        assert!(parse_pid("-3").unwrap_err().contains("negative"));
        assert!(parse_pid("abc").unwrap_err().contains("'abc'"));
        assert!(parse_pid("99999999999")
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn fd_maps() {
        let m = parse_fd_map("3:10").expect("valid map");
        assert_eq!((m.fd.as_raw(), m.new_fd), (3, 10));
        let m = parse_fd_map("4").expect("valid fd");
        assert_eq!((m.fd.as_raw(), m.new_fd), (4, 4));
        assert!(parse_fd_map("-1").unwrap_err().contains("negative"));
        assert!(parse_fd_map("3:-1").unwrap_err().contains("NEWFD"));
        assert!(parse_fd_map("99999999999")
            .unwrap_err()
            .contains("out of range"));
        assert!(parse_fd_map("x").unwrap_err().contains("'x'"));
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").unwrap_err().contains("'soon'"));
        assert!(parse_duration("5 parsecs")
            .unwrap_err()
            .contains("time unit"));
    }

    #[test]
    fn parses_escape_characters() {
        use fdgrab::pty::Escape;
        assert_eq!(parse_escape("~"), Ok(Escape::DEFAULT));
        assert_eq!(parse_escape("none"), Ok(Escape::NONE));
        assert_eq!(parse_escape("^]"), Ok(Escape::new(0x1d)));
        assert_eq!(parse_escape("^a"), Ok(Escape::new(1)));
        assert!(parse_escape("ab").unwrap_err().contains("'ab'"));
        assert!(parse_escape(" ").is_err());
    }
}
