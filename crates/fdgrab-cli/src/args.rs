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

#[cfg(test)]
mod tests {
    use super::*;

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
