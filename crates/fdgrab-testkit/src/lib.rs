//! Shared helpers for fdgrab's integration tests: finding the workspace's binaries,
//! spawning real target processes that report their own view of their fds, and
//! running commands with a hard timeout so that no test can hang CI.

pub mod bench;
pub mod containers;
pub mod cri;
pub mod fuse;
pub mod handover;
pub mod oci;
#[cfg(target_arch = "x86_64")]
pub mod seccomp_oracle;
pub mod tmux;
pub mod uffd;

use serde_json::Value;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The default limit for anything a test waits on.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a binary built from this workspace (`fdgrab`, `fdgrab-target`, ...).
///
/// Test executables live in `target/<profile>/deps/`; the binaries one level up.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// The `fdgrab` command.
pub fn fdgrab() -> Command {
    Command::new(bin("fdgrab"))
}

/// A spawned `fdgrab-target` (or any process that prints one JSON line when ready).
/// It is killed and reaped on drop.
#[allow(missing_debug_implementations)]
pub struct Target {
    pub child: Child,
    pub pid: i32,
    /// The first JSON line the target printed: its own view of what it opened.
    pub report: Value,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<BufReader<ChildStdout>>,
}

impl Target {
    /// Runs `fdgrab-target ARGS...` and waits for its report.
    pub fn spawn<I, S>(args: I) -> Target
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(bin("fdgrab-target"));
        cmd.args(args);
        Target::spawn_cmd(cmd)
    }

    /// Runs `cmd` (stdin/stdout piped) and waits for its first line of JSON.
    pub fn spawn_cmd(mut cmd: Command) -> Target {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning the target");
        let pid = child.id() as i32;
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let line = read_line_timeout(&mut stdout, TIMEOUT).unwrap_or_else(|e| {
            let _ = child.kill();
            panic!("target {pid} did not report: {e}")
        });
        let report =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad report {line:?}: {e}"));
        let stdin = child.stdin.take();
        Target {
            child,
            pid,
            report,
            stdin,
            stdout: Some(stdout),
        }
    }

    /// Reads the next line the target prints, with a timeout.
    pub fn next_line(&mut self) -> String {
        read_line_timeout(self.stdout.as_mut().expect("stdout"), TIMEOUT).expect("target line")
    }

    /// Closes the target's stdin (the zoo target exits on EOF) and waits.
    pub fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        wait_timeout(&mut self.child, TIMEOUT).expect("target did not exit")
    }

    /// The report entry for fd `fd`.
    pub fn fd_report(&self, fd: i64) -> &Value {
        self.report["fds"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["fd"].as_i64() == Some(fd)))
            .unwrap_or_else(|| panic!("no fd {fd} in report"))
    }

    /// The number of the fd the target labelled `label`.
    pub fn fd_labelled(&self, label: &str) -> i32 {
        self.report["fds"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["label"] == label))
            .and_then(|e| e["fd"].as_i64())
            .unwrap_or_else(|| panic!("no fd labelled {label}")) as i32
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The files of a `many` target are the test's, through this handle: a
        // killed target cannot remove them itself.
        if let Some(dir) = self.report["dir"].as_str().map(Path::new) {
            let ours = dir.parent() == Some(std::env::temp_dir().as_path())
                && dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(MANY_DIR_PREFIX));
            if ours {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// How the directory of a `many` target's files is named in the temp dir.
pub const MANY_DIR_PREFIX: &str = "fdgrab-many-";

/// Reads one line, failing after `timeout`.
pub fn read_line_timeout<R: Read + AsFd>(
    r: &mut BufReader<R>,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    loop {
        if !r.buffer().is_empty() {
            let buf = r.buffer();
            if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&buf[..pos]);
                r.consume(pos + 1);
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            let n = buf.len();
            line.extend_from_slice(buf);
            r.consume(n);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timed out after {timeout:?}"));
        }
        if !poll_readable(r.get_ref().as_fd(), left) {
            continue;
        }
        let got = r.fill_buf().map_err(|e| e.to_string())?;
        if got.is_empty() {
            return Err(format!(
                "EOF before a full line (got {:?})",
                String::from_utf8_lossy(&line)
            ));
        }
    }
}

impl AsFd for Target {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stdout.as_ref().expect("stdout").get_ref().as_fd()
    }
}

fn poll_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, count 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    r > 0
}

/// Waits for `child`, killing it after `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Ok(st),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "process {} still running after {timeout:?}; killed",
                child.id()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cmd` to completion with captured output, killing it after `timeout`.
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_timeout(&mut child, timeout).unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Runs `fdgrab ARGS...` with the default timeout.
pub fn run_fdgrab<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output_timeout(fdgrab().args(args), TIMEOUT)
}

/// `major:minor` as the inventory prints it.
pub fn devstr(dev: u64) -> String {
    let (ma, mi) = (libc::major(dev), libc::minor(dev));
    format!("{ma}:{mi}")
}

/// Waits until the thread-group leader of `pid` is a zombie (the `leader-exit` target
/// ends its main thread right after reporting).
pub fn wait_leader_zombie(pid: i32) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        if st
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the leader of {pid} never exited"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reports that a test cannot run here and why. Returns normally (the caller then
/// returns early) unless `FDGRAB_REQUIRE_ALL` is set, as `scripts/test` does: there a
/// skip is a failure, so a machine that silently lacks root, a runtime or a kernel
/// feature cannot turn the suite green.
pub fn skip(reason: &str) {
    if std::env::var_os("FDGRAB_REQUIRE_ALL").is_some_and(|v| v != "0") {
        panic!("cannot run this test here: {reason} (FDGRAB_REQUIRE_ALL is set)");
    }
    eprintln!("SKIP: {reason}");
}

/// Whether we run as root (the integration tests need it; CI runs as root).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Reads `/proc/PID/fdinfo/FD`'s `pos:` field.
pub fn proc_offset(pid: i32, fd: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
    text.lines()
        .find_map(|l| l.strip_prefix("pos:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("pos field")
}

/// Test-only seccomp: installs a filter that makes each listed syscall number fail
/// with its errno and allows everything else. Used by the test targets to simulate a
/// kernel without `pidfd_getfd` (ENOSYS) or a sandbox that refuses `socket` (EPERM).
/// Call it only in a process made for the purpose (it cannot be removed), after
/// `PR_SET_NO_NEW_PRIVS`, which it sets.
pub fn install_errno_filter(rules: &[(i64, i32)]) -> std::io::Result<()> {
    const RET_ERRNO: u32 = 0x0005_0000;
    let actions: Vec<(i64, u32)> = rules
        .iter()
        .map(|&(nr, e)| (nr, RET_ERRNO | (e as u32 & 0xffff)))
        .collect();
    install_filter(&actions)
}

/// `SECCOMP_RET_TRAP`: the call fails with ENOSYS and the thread gets SIGSYS, whose
/// default action kills the process.
pub const SECCOMP_RET_TRAP: u32 = 0x0003_0000;

/// Test-only seccomp: each listed syscall number gets the given `SECCOMP_RET_*` action,
/// everything else is allowed. See [`install_errno_filter`].
pub fn install_filter(rules: &[(i64, u32)]) -> std::io::Result<()> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let ins = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let mut prog = vec![
        ins(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(RET_K, 0, 0, RET_ALLOW),
        ins(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
    ];
    for &(nr, action) in rules {
        prog.push(ins(JEQ_K, 0, 1, nr as u32));
        prog.push(ins(RET_K, 0, 0, action));
    }
    prog.push(ins(RET_K, 0, 0, RET_ALLOW));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies it.
    if unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `SECCOMP_FILTER_FLAG_NEW_LISTENER`: [`install_filter_with`] then returns the
/// listener fd.
pub const SECCOMP_FLAG_NEW_LISTENER: u32 = 1 << 3;

/// Installs a raw classic-BPF program with `seccomp(SECCOMP_SET_MODE_FILTER, flags)`
/// after `PR_SET_NO_NEW_PRIVS`; returns what the call returned (a listener fd with
/// [`SECCOMP_FLAG_NEW_LISTENER`], else 0). Test-only, like [`install_filter`].
pub fn install_filter_with(prog: &[libc::sock_filter], flags: u32) -> std::io::Result<i32> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_long,
            flags as libc::c_long,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r as i32)
}

/// A line of `/proc/PID/status`, e.g. `status_field(pid, "SigBlk")`.
pub fn status_field(pid: i32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_string())
    })
}

/// Lowers `pid`'s soft `RLIMIT_NOFILE` to its lowest free fd number, so that its
/// fd table is full (no free number below the limit); returns that number.
pub fn fill_fd_table(pid: i32) -> u64 {
    let fds = proc_fds(pid);
    let lowest_free = (0..)
        .find(|n| !fds.iter().any(|l| l.starts_with(&format!("{n} ->"))))
        .expect("a free number");
    let limit = libc::rlimit {
        rlim_cur: lowest_free,
        rlim_max: 4096,
    };
    // SAFETY: prlimit with a valid new limit and no old-limit pointer.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    lowest_free
}

/// Checks that nothing of an injection session is left in `pid`: none of its threads
/// is stopped or traced, no anonymous 16 KiB scratch mapping was added, and its fds are the ones
/// listed in `fds_before`. Returns a description of the first difference.
pub fn injection_leftovers(pid: i32, maps_before: &str, fds_before: &[String]) -> Option<String> {
    // Every thread: a session stops and traces one of them, not always the leader.
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()).collect::<Vec<_>>());
    for task in tasks.unwrap_or_default() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("")
        };
        if field("State:").starts_with('t') || field("State:").starts_with('T') {
            return Some(format!(
                "thread {tid} of {pid} left stopped: {}",
                field("State:")
            ));
        }
        if field("TracerPid:") != "0" && !field("TracerPid:").is_empty() {
            return Some(format!(
                "thread {tid} of {pid} still traced by {}",
                field("TracerPid:")
            ));
        }
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let before: std::collections::HashSet<&str> = maps_before.lines().collect();
    for line in maps.lines().filter(|l| !before.contains(l)) {
        // A new anonymous mapping that is not the heap or a stack growth.
        let mut parts = line.split_whitespace();
        let range = parts.next().unwrap_or("");
        let name = line.split_whitespace().nth(5);
        if name.is_none() {
            if let Some((a, b)) = range.split_once('-') {
                let len = u64::from_str_radix(b, 16).unwrap_or(0)
                    - u64::from_str_radix(a, 16).unwrap_or(0);
                if len == 16 * 1024 {
                    return Some(format!(
                        "new 16 KiB anonymous mapping left in {pid}: {line}"
                    ));
                }
            }
        }
    }
    let fds = proc_fds(pid);
    if fds != fds_before {
        return Some(format!(
            "fd table of {pid} changed: before {fds_before:?}, after {fds:?}"
        ));
    }
    None
}

/// What an injection must leave as it was: mappings, fd table, signal mask,
/// pending signals and dispositions (`SigBlk`, `SigPnd`, `ShdPnd`, `SigIgn`,
/// `SigCgt`: a signal the kernel forces while it is blocked loses its handler).
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub pid: i32,
    pub maps: String,
    pub fds: Vec<String>,
    pub signals: [String; 5],
}

impl Snapshot {
    pub fn take(pid: i32) -> Snapshot {
        Snapshot {
            pid,
            maps: std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps"),
            fds: proc_fds(pid),
            signals: ["SigBlk", "SigPnd", "ShdPnd", "SigIgn", "SigCgt"]
                .map(|k| status_field(pid, k).expect("status")),
        }
    }

    /// The fd table with `line` ("N -> target") added, sorted like [`proc_fds`].
    pub fn fds_with(&self, line: &str) -> Vec<String> {
        let mut fds = self.fds.clone();
        fds.push(line.into());
        fds.sort();
        fds
    }

    /// Panics unless nothing of a session is left ([`injection_leftovers`], with
    /// `fds` as the expected table).
    pub fn assert_no_leftovers(&self, fds: &[String], case: &str) {
        if let Some(problem) = injection_leftovers(self.pid, &self.maps, fds) {
            panic!("{case}: {problem}");
        }
    }

    /// [`Snapshot::assert_no_leftovers`], the signal state unchanged, and the target
    /// (a mode that echoes stdin as `{"data": ...}` lines) still answering.
    pub fn assert_unharmed(&self, t: &mut Target, fds: &[String], case: &str) {
        self.assert_no_leftovers(fds, case);
        let now = Snapshot::take(self.pid);
        assert_eq!(now.signals, self.signals, "{case}: signal state changed");
        let stdin = t.stdin.as_mut().expect("stdin");
        stdin.write_all(b"ping\n").expect("write");
        stdin.flush().expect("flush");
        let line: Value =
            serde_json::from_str(&t.next_line()).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(line["data"], "ping\n", "{case}: target does not answer");
    }
}

/// Waits until thread `tid` of `pid` is blocked in syscall `nr` (the first field
/// of `/proc/PID/task/TID/syscall`).
pub fn wait_in_syscall(pid: i32, tid: i32, nr: i64) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let s =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).unwrap_or_default();
        if s.split_whitespace()
            .next()
            .and_then(|n| n.parse::<i64>().ok())
            == Some(nr)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("thread {tid} of {pid} never blocked in syscall {nr}");
}

/// `/proc/PID/fd` as sorted "N -> target" strings.
pub fn proc_fds(pid: i32) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    let link = std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    format!("{} -> {link}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The first child of `pid` once it has exec'd something other than `fdgrab`
/// (the CMD an fdgrab command started); panics after [`TIMEOUT`]. The static
/// build's `getent` (its user lookup, before anything else is set up) is not
/// CMD: a signal sent then found fdgrab with its default dispositions.
pub fn wait_for_child_of(pid: u32) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(c) = children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            let exe = std::fs::read_link(format!("/proc/{c}/exe")).unwrap_or_default();
            let exe = exe.to_string_lossy();
            if !exe.is_empty() && !exe.ends_with("fdgrab") && !exe.ends_with("/getent") {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} started no program"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many children `pid` has now, over all its threads, zombies included
/// (`/proc/PID/task/TID/children`); `pid` may be `"self"`.
pub fn children_count(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .count()
        })
        .sum()
}

/// Whether `pid` is gone (or a zombie) within [`TIMEOUT`].
pub fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `name` inside a directory of this test process's own (`prefix-PID` under the
/// temp dir), created on first use.
pub fn test_path(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("mkdir");
    d.join(name)
}

/// Asserts that a command succeeded, showing its exit status and stderr if not.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `struct sockaddr_in` for raw `bind`/`connect` calls in the test programs.
pub fn sockaddr_v4(addr: std::net::Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The root of a pids cgroup hierarchy, v2 (with the controller enabled for its
/// children) or v1: where a test makes a cgroup whose `pids.max` it sets, the way
/// to make thread or process creation fail (`EAGAIN`) even for root. `None`,
/// after a loud skip, when no pids controller is mounted.
pub fn pids_cgroup_root() -> Option<std::path::PathBuf> {
    let v2 = std::path::Path::new("/sys/fs/cgroup");
    if std::fs::read_to_string(v2.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"))
    {
        // The root's children get the controller only once it is enabled.
        let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+pids");
        return Some(v2.to_path_buf());
    }
    let v1 = std::path::PathBuf::from("/sys/fs/cgroup/pids");
    if v1.join("cgroup.procs").exists() {
        return Some(v1);
    }
    skip("no pids cgroup controller is mounted (v1 or v2)");
    None
}
