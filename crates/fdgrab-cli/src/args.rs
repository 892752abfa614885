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
}
