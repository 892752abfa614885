//! fdgrab starts through its own C `main`, not std's runtime start (see
//! `crates/fdgrab-cli/src/main.rs`). What that start did and fdgrab relies on,
//! checked against real processes: closed standard fds are filled before any fd of
//! ours is opened, `SIGPIPE` is ignored in fdgrab but at its default in every CMD,
//! and a reader going away is a quiet exit.

use fdgrab_testkit::{output_timeout, wait_timeout, Target, TIMEOUT};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// The fds of process `pid`, number and what it points at, once it runs `comm`.
fn fds_once_running(pid: u32, comm: &str) -> Vec<(i32, String)> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    let running =
        || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm);
    let fds = || {
        let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("fd dir")
            .filter_map(|e| {
                let n: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let to = std::fs::read_link(format!("/proc/{pid}/fd/{n}")).ok()?;
                Some((n, to.to_string_lossy().into_owned()))
            })
            .collect();
        fds.sort();
        fds
    };
    // The name changes at the exec, before CMD's own start-up, which opens files of
    // its own for a moment (`sleep` reads /etc/locale.alias on the lowest free
    // number, 1 when 1 is closed): the table counts once it holds still.
    let mut last = None;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} never ran {comm}, or its fds never held still"
        );
        if running() {
            let now = fds();
            if last.as_ref() == Some(&now) {
                return now;
            }
            last = Some(now);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// fdgrab started with fds 0, 1 and 2 all closed (by a shell that then execs it),
/// so that the first fds fdgrab opens (its pidfd, the grabbed copies, the ptrace
/// backend's sockets) would get 0, 1 and 2 if nothing filled them first. CMD (run
/// in fdgrab's place, same pid) holds /dev/null on the standard numbers, the
/// target's file on 7, and nothing else, with either backend.
#[test]
fn closed_standard_fds_at_start_are_filled_before_anything_is_opened() {
    let t = Target::spawn(["zoo"]);
    let file = t.fd_labelled("file");
    let path = std::fs::read_link(format!("/proc/{}/fd/{file}", t.pid)).expect("target's file");
    let path = path.to_string_lossy().into_owned();
    // What the shell passes on besides 0-2 (a test runner's jobserver pipe, the
    // shell's own saved copies) reaches CMD through fdgrab unchanged: `get` leaves
    // inherited fds alone.
    let mut plain = Command::new("sh")
        .args(["-c", CLOSE_STD_THEN_EXEC, "sh", "sleep", "30"])
        .spawn()
        .expect("spawn sh");
    let inherited = fds_once_running(plain.id(), "sleep");
    let _ = plain.kill();
    let _ = plain.wait();
    assert!(
        inherited.iter().all(|(n, _)| *n > 2 && *n != 7),
        "{inherited:?}"
    );
    for backend in ["pidfd", "ptrace"] {
        let mut child = Command::new("sh")
            .args(["-c", CLOSE_STD_THEN_EXEC, "sh"])
            .arg(fdgrab_testkit::bin("fdgrab"))
            .args(["get", "--backend", backend, &t.pid.to_string()])
            .args([
                format!("{file}:7"),
                "--".into(),
                "sleep".into(),
                "30".into(),
            ])
            .spawn()
            .expect("spawn sh");
        let fds = fds_once_running(child.id(), "sleep");
        let _ = child.kill();
        let _ = child.wait();
        let null = "/dev/null".to_string();
        let mut want = vec![
            (0, null.clone()),
            (1, null.clone()),
            (2, null),
            (7, path.clone()),
        ];
        want.extend(inherited.iter().cloned());
        want.sort();
        assert_eq!(fds, want, "{backend}");
    }
    // A command that prints (to the /dev/null that now is its stdout) and one that
    // is refused (its message to the /dev/null on 2) end with their own statuses.
    for (args, code) in [
        (vec!["ls".to_string(), t.pid.to_string()], 0),
        (
            vec![
                "get".into(),
                "0".into(),
                "3".into(),
                "--".into(),
                "true".into(),
            ],
            2,
        ),
    ] {
        let out = output_timeout(
            Command::new("sh")
                .args(["-c", CLOSE_STD_THEN_EXEC, "sh"])
                .arg(fdgrab_testkit::bin("fdgrab"))
                .args(&args),
            TIMEOUT,
        );
        assert_eq!(out.status.code(), Some(code), "{args:?}: {out:?}");
    }
}

/// A shell script that closes fds 0, 1 and 2, then execs its arguments.
const CLOSE_STD_THEN_EXEC: &str = "exec 0<&- 1>&- 2>&-; exec \"$@\"";

/// fdgrab ignores `SIGPIPE` for itself, but CMD must start with it at its default,
/// as from a shell: `yes` writing into a pipe nobody reads is killed by `SIGPIPE`
/// (with `SIGPIPE` ignored it would print "Broken pipe" and exit 1). `get` runs CMD
/// in its own place, so the status is the signal itself; `steal` runs it as a child
/// and reports 128+13 as a shell would.
#[test]
fn cmd_starts_with_sigpipe_at_its_default() {
    let t = Target::spawn(["zoo"]);
    let pid = t.pid.to_string();
    for (cmd, fd) in [("get", "file"), ("steal", "append")] {
        let fd = t.fd_labelled(fd).to_string();
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        drop(r);
        let mut child = fdgrab_testkit::fdgrab()
            .args([cmd, &pid, &fd, "--", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fdgrab");
        let status = wait_timeout(&mut child, TIMEOUT).expect("fdgrab ended");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("read stderr");
        assert!(err.is_empty(), "{cmd}: {err}");
        match cmd {
            "get" => assert_eq!(status.signal(), Some(libc::SIGPIPE), "{cmd}: {status:?}"),
            _ => assert_eq!(
                status.code(),
                Some(128 + libc::SIGPIPE),
                "{cmd}: {status:?}"
            ),
        }
    }
}

/// `fdgrab ls PID | head -1` in a shell, PID holding 1,500 files (over 100 KB of
/// listing, more than a pipe holds): the header line comes through, then head
/// leaves and fdgrab's next write meets the closed pipe. fdgrab ends with 141
/// without a word on stderr: no panic's 101, no "Broken pipe" error. (A shell
/// shows 141 for a death by `SIGPIPE` too; `cli_conventions`'
/// `closed_stdout_ends_quietly_with_141` tells an exit from a death.)
#[test]
fn ls_into_head_ends_quietly() {
    let t = Target::spawn(["many", "1500"]);
    let out = output_timeout(
        Command::new("bash")
            .args([
                "-c",
                "\"$1\" ls \"$2\" | head -1; echo \"fdgrab status ${PIPESTATUS[0]}\"",
                "bash",
            ])
            .arg(fdgrab_testkit::bin("fdgrab"))
            .arg(t.pid.to_string()),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}{stderr}");
    assert!(
        lines[0].contains("FD") && lines[0].contains("NAME"),
        "{stdout}"
    );
    assert_eq!(lines[1], "fdgrab status 141", "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// `get` passes its environment on to CMD exactly as it got it (as the C library
/// holds it, without a copy): every entry in order, bytes that are not UTF-8 and
/// an empty value included.
#[test]
fn get_passes_its_environment_on_exactly() {
    use std::os::unix::ffi::OsStrExt;
    let t = Target::spawn(["zoo"]);
    let file = t.fd_labelled("file").to_string();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9 =x");
    let mut child = fdgrab_testkit::fdgrab()
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("FDGRAB_ENV_ODD", odd)
        .env("FDGRAB_ENV_EMPTY", "")
        .args(["get", &t.pid.to_string(), &file, "--", "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn fdgrab");
    fds_once_running(child.id(), "sleep");
    let env = std::fs::read(format!("/proc/{}/environ", child.id())).expect("CMD's environ");
    let _ = child.kill();
    let _ = child.wait();
    // std's `Command` hands a cleared-and-set environment over sorted by name.
    let mut want = b"FDGRAB_ENV_EMPTY=\0FDGRAB_ENV_ODD=".to_vec();
    want.extend_from_slice(odd.as_bytes());
    want.extend_from_slice(b"\0PATH=/usr/bin:/bin\0");
    assert_eq!(
        String::from_utf8_lossy(&env),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(env, want);
}

/// fdgrab started with fds 1 and 2 closed where `/dev/null` cannot be opened (a
/// mount namespace whose `/dev` is an empty tmpfs: a bare chroot or container).
/// std's start-up aborts then; fdgrab runs on, but the numbers must still be taken
/// before any fd of ours is opened: otherwise the grabbed file lands on 1 or 2 and
/// fdgrab's own log lines (`-vv`) are written into the target's file. The file is
/// unchanged, and CMD gets 1 and 2 closed, as fdgrab got them.
#[test]
fn closed_standard_fds_without_dev_null_receive_nothing_of_ours() {
    let t = Target::spawn(["zoo"]);
    let file = t.fd_labelled("file");
    let path = std::fs::read_link(format!("/proc/{}/fd/{file}", t.pid)).expect("target's file");
    let before = std::fs::read(&path).expect("read the target's file");
    let script = "mount -t tmpfs fdgrab-no-dev /dev || exit 99; exec 1>&- 2>&-; exec \"$@\"";
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(fdgrab_testkit::bin("fdgrab"))
        .args(["-vv", "get", &t.pid.to_string(), &format!("{file}:7")])
        .args(["--", "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn unshare");
    let fds = fds_once_running(child.id(), "sleep");
    let _ = child.kill();
    let _ = child.wait();
    let after = std::fs::read(&path).expect("read the target's file");
    assert_eq!(
        String::from_utf8_lossy(&after),
        String::from_utf8_lossy(&before),
        "fdgrab wrote into the target's file"
    );
    let numbers: Vec<i32> = fds.iter().map(|(n, _)| *n).collect();
    assert!(
        numbers.contains(&0) && !numbers.contains(&1) && !numbers.contains(&2),
        "{fds:?}"
    );
    assert!(
        fds.contains(&(7, path.to_string_lossy().into_owned())),
        "{fds:?}"
    );
}

/// The static musl build's `main` picks mimalloc for `ls`, `agent` and `run`, also
/// after global options with their values apart, and leaves every other command on
/// musl's allocator (docs/packaging.md). Which one served is told by mimalloc's own
/// statistics at exit (`MIMALLOC_SHOW_STATS`): its arena section appears only when
/// it allocated. Only the musl build has the switch (the glibc one uses glibc's
/// allocator for everything), hence the cfg.
#[cfg(target_env = "musl")]
#[test]
fn musl_allocator_follows_the_subcommand_after_global_options() {
    let pid = std::process::id().to_string();
    let served_by_mimalloc = |args: &[&str]| {
        let mut c = fdgrab_testkit::fdgrab();
        c.args(args).env("MIMALLOC_SHOW_STATS", "1");
        let out = output_timeout(&mut c, TIMEOUT);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stderr).contains("committed")
    };
    for args in [
        &["ls", &pid][..],
        &["-v", "ls", &pid],
        &["--log-format", "json", "ls", &pid],
        &["--log-format=text", "-vv", "ls", &pid],
    ] {
        assert!(
            served_by_mimalloc(args),
            "{args:?}: musl's allocator served"
        );
    }
    for args in [
        &["completions", "bash"][..],
        &["--log-format", "json", "completions", "bash"],
    ] {
        assert!(!served_by_mimalloc(args), "{args:?}: mimalloc served");
    }
}

/// The option numbers `fdgrab::allocator` sets name the options it means: the
/// bindings name no constant for them, and the numbers differ between mimalloc
/// versions. mimalloc's verbose start-up report lists every option by name in
/// the order of its `mi_option_t`. `ls` sets `allow_thp` after that report is
/// printed, so the report shows its default; `ls`'s effect is in the run's time
/// (docs/performance.md, issue 11, "huge pages before the first allocation").
#[cfg(target_env = "musl")]
#[test]
fn mimalloc_option_numbers_name_the_options_meant() {
    let pid = std::process::id().to_string();
    let mut c = fdgrab_testkit::fdgrab();
    c.args(["ls", &pid]).env("MIMALLOC_VERBOSE", "1");
    let out = output_timeout(&mut c, TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let names: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("option '")?.split('\'').next())
        .collect();
    // `mi_option_t` is a C int.
    let at = |n: i32| names.get(usize::try_from(n).expect("index")).copied();
    assert_eq!(
        at(fdgrab::allocator::MI_OPTION_PURGE_DELAY),
        Some("purge_delay"),
        "{names:?}"
    );
    assert_eq!(
        at(fdgrab::allocator::MI_OPTION_ALLOW_THP),
        Some("allow_thp"),
        "{names:?}"
    );
    assert_eq!(
        at(fdgrab::allocator::MI_OPTION_DESTROY_ON_EXIT),
        Some("destroy_on_exit"),
        "{names:?}"
    );
    assert_eq!(at(1), Some("show_stats"), "{names:?}");
    assert_eq!(at(2), Some("verbose"), "{names:?}");
}

/// The static build's `ls` takes no transparent huge pages from its first
/// allocation on (mimalloc advises none, and the process is marked before
/// mimalloc's heap is touched), and gives nothing back at exit (no `madvise`
/// after its output): both were time spent on memory a brief command never needs
/// back (docs/packaging.md, "Allocator").
#[cfg(target_env = "musl")]
#[test]
fn musl_ls_takes_no_huge_pages_and_gives_nothing_back_at_exit() {
    let dir = std::env::temp_dir().join(format!("fdgrab-ls-thp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let trace = dir.join("trace");
    let pid = std::process::id().to_string();
    let fdgrab = fdgrab_testkit::bin("fdgrab");
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-e", "trace=madvise,prctl,write", "-o"])
        .arg(&trace)
        .arg(&fdgrab)
        .args(["ls", &pid]);
    let out = output_timeout(&mut c, TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&trace).expect("trace");
    let lines: Vec<&str> = text.lines().collect();
    let marked = lines
        .iter()
        .position(|l| l.contains("prctl(PR_SET_THP_DISABLE, 1"))
        .unwrap_or_else(|| panic!("no PR_SET_THP_DISABLE:\n{text}"));
    assert!(!text.contains("MADV_HUGEPAGE"), "{text}");
    // The first write is the table; nothing of the heap is touched before the mark.
    let first_madvise = lines.iter().position(|l| l.contains("madvise("));
    assert!(first_madvise.is_none_or(|m| m > marked), "{text}");
    let output = lines
        .iter()
        .rposition(|l| l.contains("write(1,"))
        .unwrap_or_else(|| panic!("no output:\n{text}"));
    assert!(
        !lines[output..].iter().any(|l| l.contains("madvise(")),
        "madvise after the output:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
