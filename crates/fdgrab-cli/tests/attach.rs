//! `fdgrab attach` against real terminals: tmux servers (each on its own socket) as
//! the old and the new terminal, `script` as another old one, python3 and bash as
//! the programs. Every wait polls the pane with a deadline.

use fdgrab_testkit::tmux::Tmux;
use fdgrab_testkit::{bin, skip, status_field, TIMEOUT};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn ready() -> bool {
    if !fdgrab_testkit::is_root() {
        skip("attach tests need root (they steal from root-owned tmux servers and drop to uid 65534)");
        return false;
    }
    if !Tmux::available() {
        skip("tmux is not installed (scripts/test installs it)");
        return false;
    }
    true
}

/// A new terminal running `fdgrab attach ARGS`, then printing its exit status and
/// the terminal's modes, then idling.
fn attach_in(tag: &str, cols: u16, rows: u16, prefix: &str, args: &str) -> Tmux {
    let cmd = format!(
        "{prefix}{} attach {args}; echo EXIT=$?; stty -a; echo STTY-DONE; exec sleep 600",
        bin("fdgrab").display()
    );
    Tmux::start(tag, cols, rows, &cmd)
}

/// Waits for fdgrab's exit line and checks its status and that the terminal it ran
/// in is back in cooked mode. Returns the pane text.
fn expect_exit(t: &Tmux, code: i32) -> String {
    let text = t.wait_for("STTY-DONE", WAIT);
    assert!(
        text.contains(&format!("EXIT={code}\n")),
        "expected exit status {code}; pane:\n{text}"
    );
    let modes = text.split("EXIT=").nth(1).expect("stty output");
    for flag in ["icanon", "echo", "isig", "icrnl", "opost"] {
        assert!(
            modes.split_whitespace().any(|w| w == flag),
            "the terminal was left without {flag} (raw mode?):\n{modes}"
        );
    }
    text
}

/// The program is neither stopped nor traced.
fn assert_healthy(pid: i32) {
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_else(|| panic!("process {pid} is gone"));
    assert!(
        !matches!(state.as_str(), "T" | "t" | "Z" | "X"),
        "process {pid} is in state {state}"
    );
    assert_eq!(
        status_field(pid, "TracerPid").as_deref(),
        Some("0"),
        "process {pid} is still traced"
    );
}

/// Whether `pid` has a pty master open.
fn holds_a_master(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|l| l.file_name().is_some_and(|n| n == "ptmx"))
            })
        })
        .unwrap_or(false)
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn state(pid: i32) -> Option<char> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()?
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn gone(pid: i32) -> bool {
    matches!(state(pid), None | Some('Z') | Some('X'))
}

/// Ends the attached python with `exit()`, which ends fdgrab with status 0.
fn exit_python(t: &Tmux, py: i32) {
    t.type_line("exit()");
    expect_exit(t, 0);
    wait_until("python to exit", || gone(py));
}

/// The keeper pid named in fdgrab's detach message.
fn keeper_in(text: &str) -> i32 {
    text.split("held by process ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no keeper pid in:\n{text}"))
}

/// A python REPL in an old terminal, with `x = 41` typed into it.
fn old_python(tag: &str) -> (Tmux, i32, KillOnDrop) {
    let old = Tmux::start(tag, 80, 24, "exec python3 -q");
    old.wait_for(">>>", WAIT);
    old.type_line("x = 41; import os");
    let pid = old.pane_pid();
    (old, pid, KillOnDrop::new(pid))
}

#[test]
fn python_repl_moves_resizes_and_outlives_its_old_terminal() {
    if !ready() {
        return;
    }
    let (old, py, _py) = old_python("att-py-old");
    let old_server = old.server_pid();
    let new = attach_in("att-py-new", 100, 30, "", &py.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    assert_healthy(py);

    new.type_line("print('X', x + 1, 'SZ', *os.get_terminal_size())");
    new.wait_for("X 42 SZ 100 30", WAIT);

    new.resize(90, 20);
    new.wait_until(WAIT, |_| {
        new.type_line("print('SZ2', *os.get_terminal_size())");
        std::thread::sleep(Duration::from_millis(50));
        new.capture().contains("SZ2 90 20")
    })
    .unwrap_or_else(|s| panic!("size after resize not seen:\n{s}"));

    // The old terminal goes away entirely; the program stays, attached here.
    old.kill();
    wait_until("the old tmux server to exit", || gone(old_server));
    assert_healthy(py);
    new.type_line("print('STILL', x * 2)");
    new.wait_for("STILL 82", WAIT);

    exit_python(&new, py);
}

#[test]
fn shell_session_moves_from_script_with_job_control() {
    if !ready() {
        return;
    }
    let old = Tmux::start(
        "att-sh-old",
        80,
        24,
        "script -q -c 'bash --norc --noprofile -i' /dev/null",
    );
    old.wait_for("bash-", WAIT);
    let script = old.pane_pid();
    // script does not notice that its master became /dev/null and polls it forever
    // (see docs/attach.md): the old terminal is closed for good at the end.
    let _kill_script = KillOnDrop::new(script);
    let bash = *children(script).first().expect("bash under script");
    let _bash = KillOnDrop::new(bash);
    old.type_line("sleep 300");
    wait_until("sleep to start", || !children(bash).is_empty());
    let sleep = children(bash)[0];

    // Attach through the foreground job's pid: the whole session moves.
    let new = attach_in("att-sh-new", 100, 30, "", &sleep.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    assert!(!holds_a_master(script), "script still holds the master");

    new.key("C-c");
    wait_until("Ctrl-C to end the sleep", || gone(sleep));
    new.type_line("echo A$((1+1))");
    new.wait_for("A2", WAIT);

    new.type_line("sleep 301");
    wait_until("the second sleep", || !children(bash).is_empty());
    let job = children(bash)[0];
    // ^Z typed before bash hands the terminal to the job would go to bash itself.
    wait_until("the second sleep in the foreground", || in_foreground(job));
    new.key("C-z");
    new.wait_for("Stopped", WAIT);
    assert_eq!(state(job), Some('T'), "Ctrl-Z did not stop the job");
    new.type_line("fg");
    wait_until("fg to continue the job", || state(job) == Some('S'));
    new.key("C-c");
    wait_until("Ctrl-C to end the job", || gone(job));
    new.type_line("echo B$((2+2))");
    new.wait_for("B4", WAIT);
    assert_healthy(bash);

    new.type_line("exit");
    expect_exit(&new, 0);
    wait_until("bash to exit", || gone(bash));
}

/// Whether `pid` runs `sleep` in the foreground process group of its terminal
/// (`tpgid` equal to its process group, in /proc/PID/stat).
fn in_foreground(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((name, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    name.ends_with("(sleep") && f.len() > 5 && f[2] == f[5]
}

/// Kills a process when the test ends, however it ends (a failed test must not
/// leave programs and keepers behind), unless its pid now names another process.
struct KillOnDrop(i32, Option<String>);

impl KillOnDrop {
    fn new(pid: i32) -> Self {
        KillOnDrop(pid, start_time(pid))
    }
}

fn start_time(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(19)?
            .to_owned(),
    )
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.1.is_some() && start_time(self.0) == self.1 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

#[test]
fn detach_reattach_and_a_second_attach_is_refused() {
    if !ready() {
        return;
    }
    let (old, py, _py) = old_python("att-det-old");
    let first = attach_in("att-det-a", 100, 30, "", &py.to_string());
    first.wait_for("type Enter ~ . to detach", WAIT);
    first.type_line("y = 7");
    // The relaying fdgrab runs the keeper's executable and holds the master and a
    // socket of its own (the attach lock): still not a keeper.
    let relaying = *children(first.pane_pid()).first().expect("fdgrab under sh");
    assert!(
        !is_keeper(relaying),
        "the relaying fdgrab taken for a keeper"
    );

    // Refused while attached: nothing changes for the first attach.
    let second = attach_in("att-det-b", 100, 30, "", &py.to_string());
    let text = expect_exit(&second, 6);
    assert!(text.contains("already being attached"), "{text}");
    assert_healthy(py);
    // A copy of fdgrab under another name is refused too (the attach lock).
    let dir = std::env::temp_dir().join(format!("fdgrab-attach-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("other-name");
    std::fs::copy(bin("fdgrab"), &copy).expect("copy of fdgrab");
    let third = Tmux::start(
        "att-det-copy",
        100,
        30,
        &format!(
            "{} attach {py}; echo EXIT=$?; stty -a; echo STTY-DONE; exec sleep 600",
            copy.display()
        ),
    );
    let text = expect_exit(&third, 6);
    assert!(text.contains("already being attached"), "{text}");
    drop(third);
    let _ = std::fs::remove_dir_all(&dir);
    assert_healthy(py);
    first.type_line("print('Y', y * 6)");
    first.wait_for("Y 42", WAIT);

    // Detach: Enter ~ .
    first.key("Enter");
    first.type_text("~.");
    let text = expect_exit(&first, 7);
    let keeper = keeper_in(&text);
    assert!(holds_a_master(keeper), "the keeper holds no master");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{keeper}/comm"))
            .ok()
            .as_deref(),
        Some("fdgrab-keep\n")
    );
    assert!(is_keeper(keeper), "the keeper does not answer as one");
    // Exactly what it needs: /dev/null at 0-2, the master, its control socket pair.
    let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{keeper}/fd"))
        .expect("keeper's fds")
        .flatten()
        .map(|e| {
            let n = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse().ok())
                .expect("fd");
            let link = std::fs::read_link(e.path()).expect("fd link");
            let link = link.to_string_lossy();
            let kind = if link.starts_with("socket:") {
                "socket"
            } else {
                &link
            };
            (n, kind.to_owned())
        })
        .collect();
    fds.sort();
    let want: Vec<(i32, String)> = [
        (0, "/dev/null"),
        (1, "/dev/null"),
        (2, "/dev/null"),
        (3, "/dev/ptmx"),
        (4, "socket"),
        (5, "socket"),
    ]
    .into_iter()
    .map(|(n, k)| (n, k.to_owned()))
    .collect();
    assert_eq!(fds, want, "the keeper's fds");
    assert_healthy(py);
    drop(first);
    drop(old);

    // Re-attach: from the keeper, which then exits.
    let third = attach_in("att-det-c", 90, 25, "", &py.to_string());
    let text = third.wait_for("type Enter ~ . to detach", WAIT);
    assert!(text.contains("fdgrab-keep"), "{text}");
    wait_until("the keeper to exit", || gone(keeper));
    third.type_line("print('Z', y + x, 'SZ', *os.get_terminal_size())");
    third.wait_for("Z 48 SZ 90 25", WAIT);
    exit_python(&third, py);
}

/// Runs a refused attach of `py` in a new terminal and checks that nothing moved.
fn refused(tag: &str, prefix: &str, args: &str, code: i32, why: &str, holder: i32, py: i32) {
    let t = attach_in(tag, 100, 30, prefix, args);
    let text = expect_exit(&t, code);
    assert!(text.contains(why), "expected {why:?} in:\n{text}");
    assert!(holds_a_master(holder), "the old terminal lost its master");
    assert_healthy(py);
}

#[test]
fn refusals_change_nothing() {
    if !ready() {
        return;
    }
    let (old, py, _py) = old_python("att-ref-old");
    let server = old.server_pid();

    // Our own stdin is not a terminal.
    let out = fdgrab_testkit::output_timeout(
        fdgrab_testkit::fdgrab()
            .args(["attach", &py.to_string()])
            .stdin(std::process::Stdio::piped()),
        TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a terminal"));
    assert!(holds_a_master(server));
    assert_healthy(py);

    // A process on no terminal.
    let mut lone = std::process::Command::new("setsid")
        .args(["sleep", "60"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("setsid sleep");
    let lone_pid = lone.id() as i32;
    wait_until("setsid to exec sleep", || {
        std::fs::read_to_string(format!("/proc/{lone_pid}/comm")).is_ok_and(|c| c == "sleep\n")
    });
    refused(
        "att-ref-notty",
        "",
        &lone_pid.to_string(),
        2,
        "is not on a pseudo-terminal",
        server,
        py,
    );
    let _ = lone.kill();
    let _ = lone.wait();

    // No such process.
    refused(
        "att-ref-nopid",
        "",
        "999999999",
        5,
        "no such process",
        server,
        py,
    );

    // An unprivileged user against a root-held master.
    refused(
        "att-ref-perm",
        "setpriv --reuid=65534 --regid=65534 --clear-groups ",
        &py.to_string(),
        4,
        "permission denied",
        server,
        py,
    );

    // The sshd case: the program runs as the user, its terminal's master is held by
    // a root process, and the user attaches.
    let user_old = Tmux::start(
        "att-ref-user-old",
        80,
        24,
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups cat",
    );
    let user_py = user_old.pane_pid();
    wait_until("cat to run as uid 65534", || {
        status_field(user_py, "Uid").is_some_and(|u| u.starts_with("65534"))
            && std::fs::read_to_string(format!("/proc/{user_py}/comm")).is_ok_and(|c| c == "cat\n")
    });
    let user_server = user_old.server_pid();
    let t = attach_in(
        "att-ref-user",
        100,
        30,
        "setpriv --reuid=65534 --regid=65534 --clear-groups ",
        &user_py.to_string(),
    );
    let text = expect_exit(&t, 4);
    assert!(
        text.contains("permission denied") && text.contains("uid 65534"),
        "{text}"
    );
    assert!(
        holds_a_master(user_server),
        "the root holder lost its master"
    );
    assert_healthy(user_py);
    drop(user_old);

    // Single-process mode cannot take a process out of a group others share: the
    // first process of a pipeline.
    let shell = Tmux::start("att-ref-pipe-old", 80, 24, "exec bash --norc --noprofile");
    shell.wait_for("bash-", WAIT);
    let bash = shell.pane_pid();
    shell.type_line("sleep 300 | sleep 301");
    wait_until("the pipeline", || children(bash).len() == 2);
    let first = *children(bash).iter().min().expect("first sleep");
    let t = attach_in("att-ref-pipe", 100, 30, "", &format!("--single {first}"));
    let text = expect_exit(&t, 2);
    assert!(text.contains("cannot be moved alone"), "{text}");
    assert_healthy(first);
    assert!(
        std::fs::read_link(format!("/proc/{first}/fd/0"))
            .is_ok_and(|l| l.to_string_lossy().starts_with("pipe:") || l.starts_with("/dev/pts")),
        "the sleep's fds changed"
    );
    assert!(holds_a_master(shell.server_pid()));
    drop(shell);

    // The process is on this very terminal.
    let own = Tmux::start(
        "att-ref-self",
        100,
        30,
        &format!(
            "sleep 60 & {} attach $!; echo EXIT=$?; stty -a; echo STTY-DONE; exec sleep 600",
            bin("fdgrab").display()
        ),
    );
    let text = expect_exit(&own, 2);
    assert!(text.contains("already runs on this terminal"), "{text}");
    assert_healthy(py);
}

#[test]
fn single_process_mode_moves_the_process_alone() {
    if !ready() {
        return;
    }
    let (old, py, _py) = old_python("att-one-old");
    let old_tty = std::fs::read_link(format!("/proc/{py}/fd/0")).expect("python's fd 0");
    let new = attach_in("att-one-new", 100, 30, "", &format!("--single {py}"));
    let text = new.wait_for("type Enter ~ . to detach", WAIT);
    assert!(text.contains("alone, moved from"), "{text}");
    assert_healthy(py);
    new.type_line("print('T', x + 1, os.ttyname(0) == os.ttyname(2), *os.get_terminal_size())");
    new.wait_for("T 42 True 100 30", WAIT);
    let now = std::fs::read_link(format!("/proc/{py}/fd/0")).expect("python's fd 0");
    assert_ne!(now, old_tty, "fd 0 still on the old terminal");
    // Its controlling terminal moved too: Ctrl-C reaches it as SIGINT.
    new.key("C-c");
    new.wait_for("KeyboardInterrupt", WAIT);
    assert_healthy(py);
    drop(old);
    exit_python(&new, py);
}

#[test]
fn a_session_whose_terminal_is_gone_is_moved_alone_and_can_detach() {
    if !ready() {
        return;
    }
    // A loop that survives its terminal's hangup, as a nohup'd job would.
    let old = Tmux::start(
        "att-gone-old",
        80,
        24,
        "exec sh -c 'trap \"\" HUP; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done'",
    );
    old.wait_for("tick 2", WAIT);
    let sh = old.pane_pid();
    let _kill = KillOnDrop::new(sh);
    let server = old.server_pid();
    old.kill();
    wait_until("the old tmux server to exit", || gone(server));
    assert_healthy(sh);

    let new = attach_in("att-gone-new", 100, 30, "", &sh.to_string());
    let text = new.wait_for("type Enter ~ . to detach", WAIT);
    assert!(text.contains("alone, moved from"), "{text}");
    let first = new
        .wait_until(WAIT, |s| s.matches("tick").count() >= 3)
        .unwrap_or_else(|s| panic!("no ticks relayed:\n{s}"));
    assert!(first.contains("tick"));
    assert_healthy(sh);

    new.key("Enter");
    new.type_text("~.");
    expect_exit(&new, 7);
    assert_healthy(sh);
}

fn tokens_of_stty(tty: &str) -> Vec<String> {
    let out = std::process::Command::new("stty")
        .args(["-a", "-F", tty])
        .output()
        .expect("stty");
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == ';')
        .map(str::to_owned)
        .collect()
}

fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

#[test]
fn signals_restore_the_terminal_and_keep_the_session() {
    if !ready() {
        return;
    }
    let (old, py, _py) = old_python("att-sig-old");
    let new = attach_in("att-sig-new", 100, 30, "", &py.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    let fdgrab = *children(new.pane_pid()).first().expect("fdgrab under sh");
    let tty = std::fs::read_link(format!("/proc/{fdgrab}/fd/0")).expect("fdgrab's tty");
    let tty = tty.to_str().expect("tty path").to_owned();
    assert!(
        tokens_of_stty(&tty).iter().any(|t| t == "-icanon"),
        "not raw while attached"
    );

    // SIGTSTP: our terminal back to normal while fdgrab is stopped, raw again after.
    signal(fdgrab, "TSTP");
    wait_until("fdgrab to stop", || state(fdgrab) == Some('T'));
    assert!(
        tokens_of_stty(&tty).iter().any(|t| t == "icanon"),
        "raw while stopped"
    );
    signal(fdgrab, "CONT");
    wait_until("fdgrab to be raw again", || {
        tokens_of_stty(&tty).iter().any(|t| t == "-icanon")
    });
    new.type_line("print('C', x)");
    new.wait_for("C 41", WAIT);
    drop(old);

    // SIGTERM: detaches, the program keeps running with a keeper.
    signal(fdgrab, "TERM");
    let text = expect_exit(&new, 128 + 15);
    assert!(text.contains("detached on SIGTERM"), "{text}");
    let keeper = keeper_in(&text);
    let _keeper = KillOnDrop::new(keeper);
    assert!(holds_a_master(keeper));
    assert_healthy(py);

    // The session ends while detached: the keeper goes too.
    signal(py, "KILL");
    wait_until("the keeper to exit with the session", || gone(keeper));
}

/// Signals that end a program by default but that fdgrab has no use for (a stray
/// `kill -USR1`, a timer's `SIGALRM`, a real-time signal): each detaches like
/// `SIGTERM`, with the terminal back in its modes and a keeper holding the
/// session, instead of killing fdgrab with the terminal raw and the program hung up.
#[test]
fn any_signal_that_would_end_fdgrab_detaches_and_keeps_the_program() {
    if !ready() {
        return;
    }
    let (old, py, _py) = old_python("att-usr-old");
    let mut old = Some(old);
    let rtmin_plus_3 = (libc::SIGRTMIN() + 3).to_string();
    // Each keeper is retired by the next attach; killed early, it would hang up
    // the session.
    let mut keepers = Vec::new();
    for (tag, sig, num) in [
        ("att-usr-1", "USR1", libc::SIGUSR1),
        ("att-usr-2", "ALRM", libc::SIGALRM),
        ("att-usr-3", rtmin_plus_3.as_str(), libc::SIGRTMIN() + 3),
    ] {
        let new = attach_in(tag, 100, 30, "", &py.to_string());
        new.wait_for("type Enter ~ . to detach", WAIT);
        let fdgrab = *children(new.pane_pid()).first().expect("fdgrab under sh");
        new.type_line(&format!("print('BEFORE', '{tag}')"));
        new.wait_for(&format!("BEFORE {tag}"), WAIT);
        drop(old.take());
        signal(fdgrab, sig);
        let text = expect_exit(&new, 128 + num);
        assert!(text.contains("detached on "), "{text}");
        let keeper = keeper_in(&text);
        keepers.push(KillOnDrop::new(keeper));
        assert!(holds_a_master(keeper), "the keeper holds the session");
        assert_healthy(py);
    }
    // The keeper holding the session now shrugs the same signals off (only
    // SIGTERM ends it).
    let keeper = keepers.last().map(|k| k.0).expect("a keeper");
    for sig in ["USR1", "ALRM", rtmin_plus_3.as_str(), "USR2"] {
        signal(keeper, sig);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !gone(keeper) && holds_a_master(keeper),
        "the keeper died of a stray signal"
    );
    assert_healthy(py);
    // Re-attached once more, the program still has its state.
    let new = attach_in("att-usr-4", 100, 30, "", &py.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    new.type_line("print('STATE', x + 1)");
    new.wait_for("STATE 42", WAIT);
    exit_python(&new, py);
}

#[test]
fn a_holder_with_the_master_at_several_fds_loses_all_of_them() {
    if !ready() {
        return;
    }
    // A minimal "emulator": forks python3 on a new pty, keeps the master at two fds,
    // and relays nothing.
    let holder_src = r#"
import os, pty, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp('python3', ['python3', '-q'])
dup = os.dup(fd)
print(pid, fd, dup, flush=True)
time.sleep(600)
"#;
    let mut holder = std::process::Command::new("python3")
        .args(["-c", holder_src])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("holder");
    let holder_pid = holder.id() as i32;
    let _kill = KillOnDrop::new(holder_pid);
    let mut out = std::io::BufReader::new(holder.stdout.take().expect("stdout"));
    let line = fdgrab_testkit::read_line_timeout(&mut out, TIMEOUT).expect("holder's report");
    let nums: Vec<i32> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let (py, fds) = (nums[0], [nums[1], nums[2]]);
    let _py = KillOnDrop::new(py);

    let new = attach_in("att-multi-new", 100, 30, "", &py.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    for fd in fds {
        let link = std::fs::read_link(format!("/proc/{holder_pid}/fd/{fd}")).expect("holder fd");
        assert_eq!(link, std::path::Path::new("/dev/null"), "holder fd {fd}");
    }
    assert!(!holds_a_master(holder_pid));
    new.type_line("print('M', 6 * 7)");
    new.wait_for("M 42", WAIT);
    exit_python(&new, py);
    assert_healthy(holder_pid);
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn losing_our_own_terminal_detaches_and_the_program_lives_on() {
    if !ready() {
        return;
    }
    let (_old, py, _py) = old_python("att-drop-old");
    let new = attach_in("att-drop-new", 100, 30, "", &py.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    new.type_line("z = 5; print('SET', z)");
    new.wait_for("SET 5", WAIT);
    let fdgrab = *children(new.pane_pid()).first().expect("fdgrab under sh");
    // The terminal fdgrab runs in disappears, as when an ssh connection drops.
    new.kill();
    wait_until("fdgrab to exit", || gone(fdgrab));
    assert_healthy(py);
    let tty = fdgrab::pty::terminal_of(py)
        .expect("python's terminal")
        .expect("python on a pty");
    let holders = fdgrab::pty::master_holders(tty).expect("holders").holders;
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert!(is_keeper(holders[0].pid), "{holders:?}");
    let _keeper = KillOnDrop::new(holders[0].pid);
    assert_healthy(py);

    let again = attach_in("att-drop-again", 90, 20, "", &py.to_string());
    again.wait_for("type Enter ~ . to detach", WAIT);
    again.type_line("print('Z', z * x)");
    again.wait_for("Z 205", WAIT);
    exit_python(&again, py);
}

#[test]
fn a_full_screen_program_redraws_on_a_terminal_of_the_same_size() {
    if !ready() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("fdgrab-attach-less-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("text");
    let text: String = (1..=200).map(|i| format!("LESSLINE {i}\n")).collect();
    std::fs::write(&file, text).expect("file");
    let old = Tmux::start("att-less-old", 90, 25, "exec bash --norc --noprofile");
    old.wait_for("bash-", WAIT);
    let bash = old.pane_pid();
    let _bash = KillOnDrop::new(bash);
    old.type_line(&format!("less {}", file.display()));
    old.wait_for("LESSLINE 3", WAIT);
    let less = *children(bash).first().expect("less");

    // Same size: the kernel sends no SIGWINCH of its own.
    let new = attach_in("att-less-new", 90, 25, "", &less.to_string());
    new.wait_for("LESSLINE 3", WAIT);
    new.type_text(" ");
    new.wait_for("LESSLINE 30", WAIT);
    new.type_text("q");
    wait_until("less to quit", || gone(less));
    new.type_line("echo Q$((40+2))");
    new.wait_for("Q42", WAIT);
    new.type_line("exit");
    expect_exit(&new, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn single_process_mode_takes_a_job_out_of_its_shell_session() {
    if !ready() {
        return;
    }
    // python3 as a foreground job of bash: it leads its process group but not the
    // session, so it steps into the shell's group, then starts a session of its own.
    let old = Tmux::start("att-job-old", 80, 24, "exec bash --norc --noprofile");
    old.wait_for("bash-", WAIT);
    let bash = old.pane_pid();
    let _bash = KillOnDrop::new(bash);
    old.type_line("python3 -q");
    old.wait_for(">>>", WAIT);
    let py = *children(bash).first().expect("python under bash");
    let _py = KillOnDrop::new(py);
    old.type_line("w = 6");

    let new = attach_in("att-job-new", 100, 30, "", &format!("--single {py}"));
    let text = new.wait_for("type Enter ~ . to detach", WAIT);
    assert!(text.contains("alone, moved from"), "{text}");
    new.type_line(
        "import os; print('J', w * 7, os.getsid(0) == os.getpid(), *os.get_terminal_size())",
    );
    new.wait_for("J 42 True 100 30", WAIT);
    new.key("C-c");
    new.wait_for("KeyboardInterrupt", WAIT);
    assert_healthy(py);
    assert_healthy(bash);
    exit_python(&new, py);
    // The shell stays on the old terminal and gets its prompt back.
    old.type_line("echo S$((5*5))");
    old.wait_for("S25", WAIT);
}

/// The pty index of `pid`'s stdin (`/dev/pts/N`).
fn pts_index(pid: i32) -> u32 {
    std::fs::read_link(format!("/proc/{pid}/fd/0"))
        .ok()
        .and_then(|l| l.to_str()?.strip_prefix("/dev/pts/")?.parse().ok())
        .unwrap_or_else(|| panic!("process {pid}'s stdin is not on /dev/pts"))
}

#[test]
fn a_master_of_the_same_index_in_another_devpts_instance_is_left_alone() {
    if !ready() {
        return;
    }
    let (_old, py, _py) = old_python("att-inst-old");
    let n = pts_index(py);
    // A bystander in its own mount namespace with its own devpts instance (as in a
    // container) holds the master of *its* pts/N: the same index, another pty.
    let dir = std::env::temp_dir().join(format!("fdgrab-devpts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = format!(
        "import os, fcntl, struct, sys, time\n\
         keep = []\n\
         while True:\n\
         \x20   fd = os.open('{d}/ptmx', os.O_RDWR | os.O_NOCTTY)\n\
         \x20   keep.append(fd)\n\
         \x20   if struct.unpack('I', fcntl.ioctl(fd, 0x80045430, b'\\0' * 4))[0] == {n}: break\n\
         print('FD', fd, flush=True)\n\
         time.sleep(600)\n",
        d = dir.display()
    );
    let mut child = std::process::Command::new("timeout")
        .args(["120", "unshare", "-m", "sh", "-c"])
        .arg(format!(
            "mount -t devpts -o newinstance,ptmxmode=0666 devpts {d} && exec python3 -c \"$0\"",
            d = dir.display()
        ))
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("bystander's line");
    let fd: i32 = line
        .strip_prefix("FD ")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("bystander said {line:?}"));
    let bystander = std::fs::read_to_string(format!("/proc/{}/task/{0}/children", child.id()))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<i32>().ok())
        .expect("python under timeout");
    let _bystander = KillOnDrop::new(bystander);
    let link = |pid: i32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok();
    assert!(link(bystander).is_some_and(|l| l.ends_with("ptmx")));

    let new = attach_in("att-inst-new", 100, 30, "", &py.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    new.type_line("print('X', x + 1)");
    new.wait_for("X 42", WAIT);
    assert!(
        link(bystander).is_some_and(|l| l.ends_with("ptmx")),
        "fdgrab attach replaced another devpts instance's pty master: {:?}",
        link(bystander)
    );
    exit_python(&new, py);
    drop(_bystander);
    let _ = child.wait();
    let _ = std::fs::remove_dir(&dir);
}

/// fdgrab's stdout on the program's own terminal (`fdgrab attach PID > /dev/pts/N`)
/// is refused like its stdin there: relayed back into the terminal it came from,
/// the session's output would go round and round (megabytes a second, for ever).
#[test]
fn stdout_on_the_programs_own_terminal_is_refused() {
    if !ready() {
        return;
    }
    let (old, py, _py) = old_python("att-out-old");
    let n = pts_index(py);
    let new = attach_in("att-out-new", 100, 30, "", &format!("{py} > /dev/pts/{n}"));
    let text = expect_exit(&new, 2);
    assert!(
        text.contains(&format!(
            "already runs on this terminal (/dev/pts/{n}, fdgrab's stdout)"
        )),
        "{text}"
    );
    assert!(
        holds_a_master(old.server_pid()),
        "the old terminal lost its master"
    );
    assert_healthy(py);
}

/// A program on pts/`n` of a devpts instance of its own (as in a container): a
/// holder in its own mount namespace opens ptys there until it has pts/`n`, and
/// runs `python3 ARGS` on it as a session leader, keeping the master.
struct OtherInstance {
    /// `timeout` running the holder.
    child: std::process::Child,
    holder: KillOnDrop,
    program: i32,
    dir: std::path::PathBuf,
}

impl OtherInstance {
    fn start(n: u32, python_args: &[&str]) -> OtherInstance {
        let dir = std::env::temp_dir().join(format!("fdgrab-devpts-{n}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = format!(
            "import os, fcntl, struct, sys, time, termios\n\
             keep = []\n\
             while True:\n\
             \x20   fd = os.open('{d}/ptmx', os.O_RDWR | os.O_NOCTTY)\n\
             \x20   keep.append(fd)\n\
             \x20   if struct.unpack('I', fcntl.ioctl(fd, 0x80045430, b'\\0' * 4))[0] == {n}: break\n\
             fcntl.ioctl(fd, 0x40045431, struct.pack('i', 0))  # TIOCSPTLCK: unlock\n\
             pid = os.fork()\n\
             if pid == 0:\n\
             \x20   os.setsid()\n\
             \x20   s = os.open('{d}/{n}', os.O_RDWR)\n\
             \x20   fcntl.ioctl(s, termios.TIOCSCTTY, 0)\n\
             \x20   for i in range(3): os.dup2(s, i)\n\
             \x20   os.execvp('python3', ['python3'] + sys.argv[1:])\n\
             for k in keep[:-1]: os.close(k)\n\
             print('PID', pid, flush=True)\n\
             time.sleep(600)\n",
            d = dir.display()
        );
        let mut child = std::process::Command::new("timeout")
            .args(["120", "unshare", "-m", "sh", "-c"])
            .arg(format!(
                "mount -t devpts -o newinstance,ptmxmode=0666 devpts {d} && exec python3 -c \"$0\" \"$@\"",
                d = dir.display()
            ))
            .arg(&script)
            .args(python_args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let line = fdgrab_testkit::read_line_timeout(&mut out, TIMEOUT).expect("holder's line");
        let holder = KillOnDrop::new(*children(child.id() as i32).first().expect("under timeout"));
        let program: i32 = line
            .strip_prefix("PID ")
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("holder said {line:?}"));
        wait_until("python on the other pts/N", || {
            std::fs::read_to_string(format!("/proc/{program}/cmdline"))
                .is_ok_and(|c| c.starts_with("python3\0"))
        });
        let rdev = std::fs::metadata(format!("/proc/{program}/fd/0")).map(|m| {
            use std::os::unix::fs::MetadataExt;
            rustix::fs::minor(m.rdev())
        });
        assert_eq!(rdev.ok(), Some(n), "the program's index");
        OtherInstance {
            child,
            holder,
            program,
            dir,
        }
    }
}

impl Drop for OtherInstance {
    fn drop(&mut self) {
        drop(KillOnDrop::new(self.program));
        drop(std::mem::replace(&mut self.holder, KillOnDrop(0, None)));
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A shell in a new terminal, and that terminal's pts index.
fn shell_terminal(tag: &str) -> (Tmux, u32) {
    let new = Tmux::start(tag, 100, 30, "exec bash --norc --noprofile -i");
    new.wait_for("bash-", WAIT);
    let n = pts_index(new.pane_pid());
    (new, n)
}

/// Types `fdgrab attach ARGS` into a shell terminal, followed by what
/// [`expect_exit`] reads.
fn type_attach(t: &Tmux, args: &str) {
    t.type_line(&format!(
        "{} attach {args}; echo E\"\"XIT=$?; stty -a; echo STTY-D\"\"ONE",
        bin("fdgrab").display()
    ));
}

/// Our terminal and the program's have the same index in two devpts instances
/// (the host's `pts/N` and a container's `pts/N`): two different terminals, so the
/// attach goes ahead instead of being refused as "already on this terminal".
#[test]
fn a_program_on_another_instances_pty_of_our_index_can_be_attached() {
    if !ready() {
        return;
    }
    let (new, n) = shell_terminal("att-same-idx");
    let other = OtherInstance::start(n, &["-q"]);
    type_attach(&new, &other.program.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    new.type_line("print('Y', 6 * 7)");
    new.wait_for("Y 42", WAIT);
    exit_python(&new, other.program);
}

/// The program exits while the sweep for other holders still walks `/proc` (here:
/// on the `SIGWINCH` that attaching sends it). The sweep keeps looking for the
/// attached pty itself, not for whatever now has its index: the terminal fdgrab
/// runs in, pts/N of the host's instance, keeps its master (before, the sweep took
/// it from tmux, and the shell fdgrab ran in was hung up).
#[test]
fn a_program_exiting_during_the_sweep_leaves_other_ptys_of_its_index_alone() {
    if !ready() {
        return;
    }
    for round in 0..3 {
        let (new, n) = shell_terminal(&format!("att-sweep-{round}"));
        let server = new.server_pid();
        let other = OtherInstance::start(
            n,
            &[
                "-c",
                "import os, signal, time\n\
                 signal.signal(signal.SIGWINCH, lambda *a: os._exit(0))\n\
                 time.sleep(600)",
            ],
        );
        let catches_winch = || {
            status_field(other.program, "SigCgt")
                .and_then(|m| u64::from_str_radix(&m, 16).ok())
                .is_some_and(|m| m & (1 << (libc::SIGWINCH - 1)) != 0)
        };
        wait_until("the program's SIGWINCH handler", catches_winch);
        type_attach(&new, &other.program.to_string());
        let text = expect_exit(&new, 0);
        assert!(
            text.contains("ended (no process has it open any more)"),
            "{text}"
        );
        assert!(
            holds_a_master(server),
            "tmux lost the master of its own pane"
        );
        drop(other);
    }
}

/// The program has its terminal only as its controlling terminal (its stdio went
/// to /dev/null), and the master's holder is not among its ancestors, so every
/// process is looked at; a container's pts/N of the same index is held elsewhere.
/// The session leader's slave tells which pts/N is the program's: the other
/// instance's holder keeps its master (before, with the index alone to go by, it
/// got /dev/null too).
#[test]
fn a_job_without_stdio_on_its_terminal_takes_only_its_own_master() {
    if !ready() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("fdgrab-ctty-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pidfile = dir.join("job");
    // An "emulator" that opens a pty, starts a shell session on it whose job has
    // no stdio on it, hands the master to a helper (no ancestor of the job) and
    // leaves.
    let emulator = r#"
import os, sys, time, fcntl, termios
master, slave = os.openpty()
shell = os.fork()
if shell == 0:
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for i in range(3):
        os.dup2(slave, i)
    os.execvp("sh", ["sh", "-c", "python3 -c 'import time; time.sleep(600)' </dev/null >/dev/null 2>&1 & echo $! > " + sys.argv[1] + "; exec sleep 600"])
helper = os.fork()
if helper == 0:
    time.sleep(600)
    os._exit(0)
print(os.ttyname(slave).rsplit("/", 1)[1], shell, helper, flush=True)
os._exit(0)
"#;
    let mut em = std::process::Command::new("python3")
        .args(["-c", emulator])
        .arg(&pidfile)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = std::io::BufReader::new(em.stdout.take().expect("stdout"));
    let line = fdgrab_testkit::read_line_timeout(&mut out, TIMEOUT).expect("emulator's line");
    let _ = em.wait();
    let nums: Vec<i32> = line
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let (n, shell, helper) = (nums[0] as u32, nums[1], nums[2]);
    let (_shell, _helper) = (KillOnDrop::new(shell), KillOnDrop::new(helper));
    wait_until("the job's pid", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
    });
    let job: i32 = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("job pid");
    let _job = KillOnDrop::new(job);
    let other = OtherInstance::start(n, &["-q"]);
    let other_holder = other.holder.0;
    assert!(holds_a_master(other_holder));

    let new = attach_in("att-ctty-only", 100, 30, "", &job.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    let text = new.capture();
    assert!(
        text.contains(&format!("taken from {helper} ")),
        "the helper's master: {text}"
    );
    assert!(
        holds_a_master(other_holder),
        "the other devpts instance's holder lost its master"
    );
    assert!(!holds_a_master(helper), "the helper kept the master");
    new.key("Enter");
    new.type_text("~.");
    let text = expect_exit(&new, 7);
    let _keeper = KillOnDrop::new(keeper_in(&text));
    assert_healthy(job);
    drop(other);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Detach, re-attach at once, five times over: the keeper left by a detach is
/// recognisable as one (named, its control socket in place) before that fdgrab
/// exits, so the next attach retires it instead of taking it for another fdgrab
/// still attached (status 6).
#[test]
fn reattaching_right_after_a_detach_is_never_refused() {
    if !ready() {
        return;
    }
    let (_old, py, _py) = old_python("att-quick-old");
    let cmd = format!(
        "for i in 1 2 3 4 5; do {} attach {py}; echo RC=$?; done; echo ALL-DONE; exec sleep 600",
        bin("fdgrab").display()
    );
    let t = Tmux::start("att-quick-new", 100, 40, &cmd);
    for round in 1..=5 {
        t.wait_until(WAIT, |s| {
            s.matches("type Enter ~ . to detach").count() >= round
        })
        .unwrap_or_else(|s| panic!("attach {round} did not start:\n{s}"));
        t.key("Enter");
        t.type_text("~.");
        t.wait_until(WAIT, |s| s.matches("RC=").count() >= round)
            .unwrap_or_else(|s| panic!("attach {round} did not end:\n{s}"));
    }
    let text = t.wait_for("ALL-DONE", WAIT);
    assert_eq!(
        text.matches("RC=7").count(),
        5,
        "every round detached:\n{text}"
    );
    let keeper = keeper_in(&text);
    let _keeper = KillOnDrop::new(keeper);
    assert_healthy(py);
}

/// A terminal that does not know its size (0 rows, 0 columns: a pty whose emulator
/// never set one, a serial line) does not shrink the program's window to nothing:
/// the program keeps the size it had.
#[test]
fn a_terminal_of_unknown_size_leaves_the_programs_size_alone() {
    if !ready() {
        return;
    }
    let (_old, py, _py) = old_python("att-nosize-old");
    // An "emulator" that never sets a size: a fresh pty is 0x0.
    let harness = r#"
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "attach", sys.argv[2]])
buf = b""
def until(want):
    global buf
    end = time.time() + 20
    while want not in buf:
        r, _, _ = select.select([fd], [], [], max(0, end - time.time()))
        if not r:
            sys.exit("timed out waiting for %r; got %r" % (want, buf))
        try:
            buf += os.read(fd, 4096)
        except OSError:
            sys.exit("EOF waiting for %r; got %r" % (want, buf))
until(b"to detach")
os.write(fd, b"print('SZ', *os.get_terminal_size(), 'END')\r")
until(b" END\r\n")
line = [l for l in buf.split(b"\n") if l.startswith(b"SZ ")][-1]
os.write(fd, b"\r~.")
until(b"detached")
_, st = os.waitpid(pid, 0)
print(line.decode().strip(), os.waitstatus_to_exitcode(st), flush=True)
"#;
    let out = fdgrab_testkit::output_timeout(
        std::process::Command::new("python3")
            .args(["-c", harness])
            .arg(bin("fdgrab"))
            .arg(py.to_string()),
        TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "SZ 80 24 END 7",
        "the program's size, fdgrab's status"
    );
    assert_healthy(py);
}

#[test]
fn detach_works_after_a_paste_the_program_does_not_read() {
    if !ready() {
        return;
    }
    let old = Tmux::start("att-paste-old", 80, 24, "exec bash --norc --noprofile -i");
    old.wait_for("bash-", WAIT);
    let bash = old.pane_pid();
    let _bash = KillOnDrop::new(bash);
    // Raw mode, and a foreground job that never reads its input: whatever is typed
    // stays queued in the pty.
    old.type_line("stty raw -echo; sleep 300");
    wait_until("sleep to start", || !children(bash).is_empty());
    let _sleep = KillOnDrop::new(children(bash)[0]);

    let new = attach_in("att-paste-new", 100, 30, "", &bash.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    // More than the pty queues: the rest waits in fdgrab.
    let paste = std::env::temp_dir().join(format!("fdgrab-paste-{}", std::process::id()));
    std::fs::write(&paste, "a".repeat(20_000)).expect("paste file");
    let path = paste.to_str().expect("utf-8 temp path");
    assert!(new.run(&["load-buffer", path]).status.success());
    assert!(new.run(&["paste-buffer"]).status.success());
    let _ = std::fs::remove_file(&paste);
    std::thread::sleep(Duration::from_millis(300));
    new.key("Enter");
    new.type_text("~.");
    let text = expect_exit(&new, 7);
    let keeper = keeper_in(&text);
    let _keeper = KillOnDrop::new(keeper);
    assert_healthy(bash);
}

/// Whether `pid` is a keeper left by our fdgrab (by its handshake, not its name).
fn is_keeper(pid: i32) -> bool {
    fdgrab::pty::Keeper::identify_as(pid, &bin("fdgrab")).is_some()
}

/// A keeper holding the master of `/dev/pts/n`, if there is one.
fn keeper_of(n: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if comm.trim_end() != "fdgrab-keep" || gone(pid) || !is_keeper(pid) {
            return None;
        }
        std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .ok()?
            .flatten()
            .any(|f| {
                std::fs::read_to_string(f.path())
                    .is_ok_and(|t| t.lines().any(|l| l == format!("tty-index:\t{n}")))
            })
            .then_some(pid)
    })
}

#[test]
fn a_terminal_that_stops_reading_does_not_keep_signals_from_detaching() {
    if !ready() {
        return;
    }
    let old = Tmux::start("att-stall-old", 80, 24, "exec bash --norc --noprofile -i");
    old.wait_for("bash-", WAIT);
    let bash = old.pane_pid();
    let _bash = KillOnDrop::new(bash);
    let n = pts_index(bash);
    // fdgrab's own terminal is a pty nobody reads after the banner (a stalled ssh
    // connection): the session's output fills it and fdgrab's writes block.
    let harness = format!(
        "import os, pty, sys, time\n\
         pid, m = pty.fork()\n\
         if pid == 0:\n\
         \x20   os.execv('{fdgrab}', ['fdgrab', 'attach', '{bash}'])\n\
         print('FDGRAB', pid, flush=True)\n\
         data = b''\n\
         while b'to detach' not in data:\n\
         \x20   data += os.read(m, 4096)\n\
         os.write(m, b'yes | head -c 3000000\\r')\n\
         print('STALLED', flush=True)\n\
         time.sleep(120)\n",
        fdgrab = bin("fdgrab").display()
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &harness])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let _harness = KillOnDrop::new(child.id() as i32);
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("harness line");
    let fdgrab: i32 = line
        .strip_prefix("FDGRAB ")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("harness said {line:?}"));
    let _fdgrab = KillOnDrop::new(fdgrab);
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).expect("harness line");
    assert_eq!(line.trim(), "STALLED");
    // Let the output fill fdgrab's terminal.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(keeper_of(n).is_none(), "a keeper before the signal");
    signal(fdgrab, "TERM");
    wait_until("a keeper to hold the session after SIGTERM", || {
        keeper_of(n).is_some()
    });
    let keeper = keeper_of(n).expect("keeper");
    let _keeper = KillOnDrop::new(keeper);
    // Whatever fdgrab does now, the session no longer depends on it.
    signal(fdgrab, "KILL");
    std::thread::sleep(Duration::from_millis(300));
    assert_healthy(bash);
    drop(_harness);
    let _ = child.wait();
}

#[test]
fn another_users_squatting_on_the_attach_lock_does_not_lock_root_out() {
    if !ready() {
        return;
    }
    let (_old, py, _py) = old_python("att-squat-old");
    let n = pts_index(py);
    let dev = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/dev/pts").expect("/dev/pts").dev()
    };
    // uid 65534 binds (and listens on) the abstract name the lock of this pty uses.
    let squat = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind(b'\\0fdgrab-attach/{dev:x}/{n}')\n\
         s.listen(8)\n\
         print('BOUND', flush=True)\n\
         time.sleep(120)\n"
    );
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", &squat])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv");
    let _squatter = KillOnDrop::new(child.id() as i32);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("squatter's line");
    assert_eq!(line.trim(), "BOUND");

    let new = attach_in("att-squat-new", 100, 30, "", &py.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    new.type_line("print('X', x + 1)");
    new.wait_for("X 42", WAIT);
    exit_python(&new, py);
    drop(_squatter);
    let _ = child.wait();
}

#[test]
fn output_written_while_detached_is_replayed_on_reattach() {
    if !ready() {
        return;
    }
    let (_old, py, _py) = old_python("att-replay-old");
    let marker = std::env::temp_dir().join(format!("fdgrab-replay-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let first = attach_in("att-replay-a", 100, 30, "", &py.to_string());
    first.wait_for("type Enter ~ . to detach", WAIT);
    // Written while detached: 400 kB, far more than a pty holds, then a last
    // line, then a file to say the writer was never blocked.
    first.type_line(&format!(
        "import threading, time; threading.Thread(target=lambda: (time.sleep(1.5), \
         [print('flood', i) for i in range(30000)], print('LAST', 6 * 7, flush=True), \
         open('{}', 'w').close())).start()",
        marker.display()
    ));
    first.key("Enter");
    first.type_text("~.");
    let text = expect_exit(&first, 7);
    let keeper = keeper_in(&text);
    let _keeper = KillOnDrop::new(keeper);
    wait_until("the program to write everything while detached", || {
        marker.exists()
    });
    let _ = std::fs::remove_file(&marker);
    assert_healthy(py);

    let again = attach_in("att-replay-b", 100, 30, "", &py.to_string());
    let text = again.wait_for("LAST 42", WAIT);
    assert!(text.contains("flood 29999"), "{text}");
    wait_until("the keeper to exit", || gone(keeper));
    again.type_line("print('AFTER', x + 1)");
    again.wait_for("AFTER 42", WAIT);
    exit_python(&again, py);
}

/// A terminal emulator of our own making: a python that runs `python3 -q` on a new
/// pty, runs `setup` (python, after the fork; it may set `extra`, a list of pids
/// to report), and drains the master. Returns it and the REPL's pid, then `extra`.
fn python_emulator(setup: &str) -> (std::process::Child, Vec<i32>) {
    python_emulator_under(&[], setup)
}

/// [`python_emulator`] run by `wrapper` (a command line that ends by running the
/// python given as its last argument through `sh -c`'s `$0`), or directly.
fn python_emulator_under(wrapper: &[&str], setup: &str) -> (std::process::Child, Vec<i32>) {
    let script = format!(
        "import ctypes, os, pty, sys, time\n\
         pid, m = pty.fork()\n\
         if pid == 0:\n\
         \x20   os.execvp('python3', ['python3', '-q'])\n\
         extra = []\n\
         {setup}\n\
         print('CHILD', pid, *extra, flush=True)\n\
         while True:\n\
         \x20   try:\n\
         \x20       d = os.read(m, 4096)\n\
         \x20   except OSError:\n\
         \x20       d = b''\n\
         \x20   if not d:\n\
         \x20       time.sleep(0.05)\n"
    );
    let mut command = match wrapper {
        [] => {
            let mut c = std::process::Command::new("python3");
            c.arg("-c");
            c
        }
        [first, rest @ ..] => {
            let mut c = std::process::Command::new(first);
            c.args(rest);
            c
        }
    };
    let mut child = command
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("emulator's line");
    let ids: Vec<i32> = line
        .strip_prefix("CHILD ")
        .map(|s| {
            s.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(!ids.is_empty(), "emulator said {line:?}");
    (child, ids)
}

#[test]
fn a_process_named_like_a_keeper_is_not_taken_for_one() {
    if !ready() {
        return;
    }
    // A terminal emulator of its own making that calls itself fdgrab-keep.
    let (mut child, ids) = python_emulator("ctypes.CDLL(None).prctl(15, b'fdgrab-keep', 0, 0, 0)");
    let holder = child.id() as i32;
    let _holder = KillOnDrop::new(holder);
    let py = ids[0];
    let _py = KillOnDrop::new(py);
    wait_until("the impostor's name", || {
        std::fs::read_to_string(format!("/proc/{holder}/comm")).is_ok_and(|c| c == "fdgrab-keep\n")
    });
    assert!(!is_keeper(holder));

    let new = attach_in("att-impostor", 100, 30, "", &py.to_string());
    let text = new.wait_for("type Enter ~ . to detach", WAIT);
    assert!(
        text.contains(&format!("taken from {holder} (fdgrab-keep)")),
        "{text}"
    );
    // Treated as any holder: /dev/null over its master, and it is not ended.
    assert!(!holds_a_master(holder), "the impostor kept its master");
    assert_healthy(holder);
    new.type_line("print('I', 6 * 7)");
    new.wait_for("I 42", WAIT);
    exit_python(&new, py);
    assert_healthy(holder);
    drop(_holder);
    let _ = child.wait();
}

/// Runs `harness` (python) in a mount namespace of its own with a private devpts
/// instance on /dev/pts and /dev/ptmx, so the ptys it and fdgrab make are seen by
/// nobody else; returns its output lines.
fn in_private_devpts(harness: &str) -> Vec<String> {
    let out = std::process::Command::new("timeout")
        .args([
            "90",
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(
            "mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts && \
             mount --bind /dev/pts/ptmx /dev/ptmx && exec python3 -c \"$0\"",
        )
        .arg(harness)
        .output()
        .expect("unshare");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "harness failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(str::to_owned).collect()
}

#[test]
fn single_process_mode_never_leaves_a_process_without_a_terminal() {
    if !ready() {
        return;
    }
    // A hostile process, a session leader without a terminal, opens every new pty
    // slave it sees: the first it gets open becomes its controlling terminal, and
    // TIOCSCTTY on that pty fails for anyone else. Each target (a session leader,
    // and a member of another's session) is moved with --single while it races.
    let harness = format!(
        r#"
import os, pty, select, signal, sys, time
fdgrab = '{fdgrab}'

def tty_nr(pid):
    return int(open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()[4])

def read_until(m, want, limit=20):
    data, end = b'', time.time() + limit
    while want not in data and time.time() < end:
        if select.select([m], [], [], 0.2)[0]:
            try:
                d = os.read(m, 4096)
            except OSError:
                break
            if not d:
                break
            data += d
    return data

for kind in ['leader', 'member']:
    for attempt in range(3):
        pid, tm = pty.fork()
        if pid == 0:
            if kind == 'leader':
                os.execvp('python3', ['python3', '-q'])
            os.execvp('sh', ['sh', '-c', 'python3 -q; true'])
        read_until(tm, b'>>>')
        target = pid
        if kind == 'member':
            target = int(open('/proc/%d/task/%d/children' % (pid, pid)).read().split()[0])
        before = tty_nr(target)
        go_r, go_w = os.pipe()
        fpid, fm = pty.fork()
        if fpid == 0:
            os.read(go_r, 1)
            os.execv(fdgrab, ['fdgrab', 'attach', '--single', str(target)])
        seen = set(os.listdir('/dev/pts'))
        hostile = os.fork()
        if hostile == 0:
            os.setsid()
            end = time.time() + 20
            while time.time() < end:
                for n in os.listdir('/dev/pts'):
                    if n not in seen:
                        # Until it opens: a locked slave refuses (EIO) meanwhile.
                        try:
                            os.open('/dev/pts/' + n, os.O_RDWR)
                            seen.add(n)
                        except OSError:
                            pass
                time.sleep(0.0002)
            os._exit(0)
        time.sleep(0.1)
        os.write(go_w, b'g')
        out = read_until(fm, b'to detach')
        time.sleep(0.2)
        after = tty_nr(target)
        alive = os.path.exists('/proc/%d' % target)
        print('RESULT', kind, attempt, 'moved' if b'alone, moved' in out else 'refused',
              before, after, alive, flush=True)
        if b'alone, moved' not in out:
            print('OUT', out, flush=True)
        os.kill(hostile, signal.SIGKILL)
        os.waitpid(hostile, 0)
        try:
            os.write(fm, b'\r~.')
        except OSError:
            pass
        said = read_until(fm, b're-attach', 5)
        for p in (target, pid, fpid):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        # The keeper ends with the session; it must not outlive this test.
        if b'held by process ' in said:
            keeper = int(said.split(b'held by process ')[1].split(b')')[0])
            def running(p):
                try:
                    return open('/proc/%d/stat' % p).read().rsplit(')', 1)[1].split()[0] != 'Z'
                except OSError:
                    return False
            end = time.time() + 5
            while running(keeper) and time.time() < end:
                time.sleep(0.02)
            if running(keeper):
                print('KEEPER-LEFT', keeper, flush=True)
                os.kill(keeper, signal.SIGKILL)
        for p in (pid, fpid):
            try:
                os.waitpid(p, 0)
            except OSError:
                pass
        os.close(tm)
        os.close(fm)
"#,
        fdgrab = bin("fdgrab").display()
    );
    let lines = in_private_devpts(&harness);
    eprintln!("{lines:#?}");
    let results: Vec<&String> = lines.iter().filter(|l| l.starts_with("RESULT")).collect();
    assert_eq!(results.len(), 6, "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.starts_with("KEEPER-LEFT")),
        "a keeper outlived its session: {lines:#?}"
    );
    for r in results {
        let f: Vec<&str> = r.split_whitespace().collect();
        let (outcome, before, after, alive) = (f[3], f[4], f[5], f[6]);
        assert_eq!(alive, "True", "{lines:#?}");
        // Never without a controlling terminal: either on the new one or, refused,
        // still on the old one.
        assert_ne!(
            after, "0",
            "left without a controlling terminal: {lines:#?}"
        );
        match outcome {
            "moved" => assert_ne!(after, before, "{lines:#?}"),
            _ => assert_eq!(after, before, "{lines:#?}"),
        }
    }
}

#[test]
fn a_holder_outside_the_session_ancestry_loses_the_master_too() {
    if !ready() {
        return;
    }
    // The emulator (the program's parent) forks a helper that keeps a copy of the
    // master: a holder that is no ancestor of the session, found by the sweep of
    // every process that follows the quick take from the ancestors.
    let (mut child, ids) = python_emulator(
        "helper = os.fork()\n\
         if helper == 0:\n\
         \x20   time.sleep(120)\n\
         \x20   os._exit(0)\n\
         extra = [helper]",
    );
    let _emulator = KillOnDrop::new(child.id() as i32);
    let [py, helper] = ids[..] else {
        panic!("emulator said {ids:?}");
    };
    let (_py, _helper) = (KillOnDrop::new(py), KillOnDrop::new(helper));
    assert!(holds_a_master(helper));

    let new = attach_in("att-sweep", 100, 30, "", &py.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    assert!(
        !holds_a_master(child.id() as i32),
        "the emulator kept its master"
    );
    wait_until("the helper to lose its copy of the master", || {
        !holds_a_master(helper)
    });
    assert_healthy(helper);
    new.type_line("print('S', 6 * 7)");
    new.wait_for("S 42", WAIT);
    exit_python(&new, py);
    drop(_emulator);
    let _ = child.wait();
}

#[test]
fn an_ancestor_with_another_instances_pty_of_the_same_index_does_not_hide_the_holder() {
    if !ready() {
        return;
    }
    // The emulator (the program's parent) hands its master to a helper, closes its
    // own, and opens ptys of a devpts instance of its own until it holds one with
    // the program's index: the quick look at the ancestors finds only that one,
    // which is not the program's, and the attach must go on to find the helper.
    let dir = std::env::temp_dir().join(format!("fdgrab-devpts-anc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mount = format!(
        "mount -t devpts -o newinstance,ptmxmode=0666 devpts {} && exec python3 -c \"$0\"",
        dir.display()
    );
    let setup = format!(
        "import fcntl, struct\n\
         helper = os.fork()\n\
         if helper == 0:\n\
         \x20   time.sleep(120)\n\
         \x20   os._exit(0)\n\
         n = struct.unpack('I', fcntl.ioctl(m, 0x80045430, b'\\0' * 4))[0]\n\
         os.close(m)\n\
         keep = []\n\
         while True:\n\
         \x20   m = os.open('{d}/ptmx', os.O_RDWR | os.O_NOCTTY)\n\
         \x20   keep.append(m)\n\
         \x20   if struct.unpack('I', fcntl.ioctl(m, 0x80045430, b'\\0' * 4))[0] == n: break\n\
         extra = [helper]",
        d = dir.display()
    );
    let (mut child, ids) = python_emulator_under(
        &["timeout", "120", "unshare", "-m", "sh", "-c", &mount],
        &setup,
    );
    let emulator = std::fs::read_to_string(format!("/proc/{}/task/{0}/children", child.id()))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<i32>().ok())
        .expect("python under timeout");
    let _emulator = KillOnDrop::new(emulator);
    let [py, helper] = ids[..] else {
        panic!("emulator said {ids:?}");
    };
    let (_py, _helper) = (KillOnDrop::new(py), KillOnDrop::new(helper));
    assert!(holds_a_master(helper));

    let new = attach_in("att-anc-inst", 100, 30, "", &py.to_string());
    let text = new.wait_for("type Enter ~ . to detach", WAIT);
    assert!(
        text.contains(&format!("taken from {helper} (python3);")),
        "{text}"
    );
    assert!(!holds_a_master(helper), "the helper kept the master");
    assert!(
        holds_a_master(emulator),
        "the other instance's pty was taken from the emulator"
    );
    new.type_line("print('A', 6 * 7)");
    new.wait_for("A 42", WAIT);
    exit_python(&new, py);
    drop(_emulator);
    let _ = child.wait();
    let _ = std::fs::remove_dir(&dir);
}

/// `O_NONBLOCK` in the status flags of `fd` of `pid` (`/proc/PID/fdinfo`).
fn nonblocking(pid: i32, fd: i32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or_else(|| panic!("no flags in /proc/{pid}/fdinfo/{fd}: {info:?}"));
    flags & libc::O_NONBLOCK as u32 != 0
}

#[test]
fn the_shell_never_finds_its_terminal_non_blocking_even_after_a_kill() {
    if !ready() {
        return;
    }
    let (_old, py, _py) = old_python("att-nonblock-old");
    // The status flags of a terminal belong to its open file description, which
    // fdgrab shares with the shell it runs in: after fdgrab, the shell asks.
    let new = Tmux::start(
        "att-nonblock-new",
        100,
        30,
        &format!(
            "{} attach {py}; python3 -c \"import fcntl, os; print('NONBLOCK', *(fcntl.fcntl(f, \
             fcntl.F_GETFL) & os.O_NONBLOCK for f in (0, 1)))\"; stty sane; exec sleep 600",
            bin("fdgrab").display()
        ),
    );
    new.wait_for("type Enter ~ . to detach", WAIT);
    let fdgrab = children(new.pane_pid())
        .into_iter()
        .find(|&c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n == "fdgrab\n")
        })
        .expect("fdgrab under the pane's shell");
    let _fdgrab = KillOnDrop::new(fdgrab);
    // Output flowing, so the relay is in its loop.
    new.type_line("print('N', x + 1)");
    new.wait_for("N 42", WAIT);
    for fd in [0, 1] {
        assert!(
            !nonblocking(fdgrab, fd),
            "fdgrab's fd {fd} (its terminal) is non-blocking while attached"
        );
    }
    // Nothing can put flags back after SIGKILL: they must never have been changed.
    signal(fdgrab, "KILL");
    let text = new.wait_for("NONBLOCK ", WAIT);
    assert!(text.contains("NONBLOCK 0 0"), "{text}");
}

/// A python emulator whose fork execs fdgrab's executable as `exe` (named `argv0`),
/// running `fdgrab cat --consume` of a pipe of its own (a command that blocks)
/// with the fds in `fds` ("python expression" -> number) arranged first. The
/// session is attached; that process must lose its copy of the master.
fn our_executable_holding_the_master_loses_it(
    tag: &str,
    exe: &std::path::Path,
    argv0: &str,
    fds: &[(&str, i32)],
) {
    let (from, to): (Vec<&str>, Vec<String>) = fds.iter().map(|(e, n)| (*e, n.to_string())).unzip();
    let setup = format!(
        "import fcntl, socket\n\
         other = os.fork()\n\
         if other == 0:\n\
         \x20   a, b = socket.socketpair()\n\
         \x20   r, w = os.pipe()\n\
         \x20   high = [fcntl.fcntl(f, fcntl.F_DUPFD, 40) for f in (r, w, {from})]\n\
         \x20   for f, to in zip(high, (20, 21, {to})):\n\
         \x20       os.dup2(f, to)\n\
         \x20       os.set_inheritable(to, True)\n\
         \x20   os.execv('{exe}', ['{argv0}', 'cat', '--consume', str(os.getpid()), '20'])\n\
         extra = [other]",
        from = from.join(", "),
        to = to.join(", "),
        exe = exe.display()
    );
    let (mut child, ids) = python_emulator(&setup);
    let _emulator = KillOnDrop::new(child.id() as i32);
    let [py, other] = ids[..] else {
        panic!("emulator said {ids:?}");
    };
    let (_py, _other) = (KillOnDrop::new(py), KillOnDrop::new(other));
    let comm = format!("{argv0}\n");
    wait_until("fdgrab's executable to hold the master", || {
        std::fs::read_to_string(format!("/proc/{other}/comm")).is_ok_and(|c| c == comm)
            && holds_a_master(other)
    });

    let new = attach_in(tag, 100, 30, "", &py.to_string());
    new.wait_for("type Enter ~ . to detach", WAIT);
    let deadline = Instant::now() + WAIT;
    while !gone(other) && holds_a_master(other) {
        assert!(
            Instant::now() < deadline,
            "process {other} ({argv0}) kept the master:\n{}",
            new.capture()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    new.type_line("print('O', 6 * 7)");
    new.wait_for("O 42", WAIT);
    exit_python(&new, py);
    drop(_emulator);
    let _ = child.wait();
}

#[test]
fn a_holder_running_our_own_binary_as_fdgrab_keep_is_not_trusted_with_the_master() {
    if !ready() {
        return;
    }
    // Everything the keeper check looks at, made without being a keeper: the
    // emulator's fork creates a socket pair itself (SO_PEERCRED names it), puts an
    // end at fd 5 (the other at 22) and the master at fd 3, and execs fdgrab
    // through a link named fdgrab-keep (same executable, that comm).
    let dir = std::env::temp_dir().join(format!("fdgrab-impostor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let link = dir.join("fdgrab-keep");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(bin("fdgrab"), &link).expect("symlink");
    our_executable_holding_the_master_loses_it(
        "att-impostor-exe",
        &link,
        "fdgrab-keep",
        &[("m", 3), ("b.fileno()", 5), ("a.fileno()", 22)],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_holder_running_our_own_binary_outside_the_session_ancestry_loses_the_master() {
    if !ready() {
        return;
    }
    // Not an attach (no attach lock is held for this session), merely our
    // executable holding the master: the sweep after the quick take must not
    // leave it the master because it runs fdgrab.
    our_executable_holding_the_master_loses_it(
        "att-own-exe",
        &bin("fdgrab"),
        "fdgrab",
        &[("m", 3)],
    );
}

/// The lines of `t`'s pane, its history included, that are a number alone.
fn numbers_in(t: &Tmux) -> Vec<String> {
    let out = t.run(&["capture-pane", "-p", "-J", "-S", "-"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_program_writing_all_along_loses_and_repeats_nothing_across_detach_and_reattach() {
    if !ready() {
        return;
    }
    // Counts without pause between short sleeps: the detach and the re-attach both
    // fall in the middle of its output.
    let old = Tmux::start(
        "att-stream-old",
        80,
        24,
        "exec python3 -c 'import itertools, time\nfor i in itertools.count():\n    print(i, flush=True)\n    time.sleep(0.003)'",
    );
    let writer = old.pane_pid();
    let _writer = KillOnDrop::new(writer);
    old.wait_for("\n5\n", WAIT);

    let first = attach_in("att-stream-a", 60, 30, "", &writer.to_string());
    wait_until("output through the first attach", || {
        numbers_in(&first).len() > 50
    });
    first.type_text("~.");
    let text = expect_exit(&first, 7);
    let _keeper = KillOnDrop::new(keeper_in(&text));
    // Written while detached: kept by the keeper (far less than its 64 KiB).
    std::thread::sleep(Duration::from_millis(400));
    let second = attach_in("att-stream-b", 60, 30, "", &writer.to_string());
    wait_until("output through the second attach", || {
        numbers_in(&second).len() > 200
    });
    let (a, b) = (numbers_in(&first), numbers_in(&second));
    // A line the detach cut in two ends the first pane and starts the second.
    let mut all: Vec<String> = a.clone();
    let mut rest = &b[..];
    if let (Some(last), Some(head)) = (a.last(), b.first()) {
        let prev: Option<u64> = a.len().checked_sub(2).and_then(|i| a[i].parse().ok());
        let joined = format!("{last}{head}");
        if prev.is_some_and(|p| joined.parse::<u64>().ok() == Some(p + 1)) {
            all.pop();
            all.push(joined);
            rest = &b[1..];
        }
    }
    all.extend(rest.iter().cloned());
    let n: Vec<u64> = all.iter().filter_map(|s| s.parse().ok()).collect();
    for w in n.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "output lost or repeated around {}: first pane ended {:?}, second began {:?}",
            w[0],
            &a[a.len().saturating_sub(3)..],
            &b[..b.len().min(3)]
        );
    }
    second.type_text("~.");
    let text = expect_exit(&second, 7);
    let _keeper = KillOnDrop::new(keeper_in(&text));
}

/// Finding who holds a terminal's master looks at every process's fds, and
/// checks each fd whose link starts with `/dev/pts/` for the terminal's slave.
/// That check must not wait for a file server: a process in a mount namespace
/// of its own may hold a FUSE file that it sees as `/dev/pts/f` (and so does
/// its link), and a plain `stat` of it asked the server, which answers the
/// attributes of an open file only 2 s late here.
#[test]
fn a_file_server_that_does_not_answer_stalls_no_search_for_a_master() {
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("attach-stall") else {
        skip("FUSE cannot be mounted here (attach tests run as root)");
        return;
    };
    let dir = fs.dir();
    let mut holder = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$0\" /dev/pts && exec 3</dev/pts/f && exec sleep 60")
        .arg(&dir)
        .spawn()
        .expect("unshare");
    let _guard = KillOnDrop::new(holder.id() as i32);
    let link = format!("/proc/{}/fd/3", holder.id());
    wait_until("the holder to open /dev/pts/f", || {
        std::fs::read_link(&link).is_ok_and(|l| l == std::path::Path::new("/dev/pts/f"))
    });
    let before = fs.slow_requests();
    let started = Instant::now();
    let holders = fdgrab::pty::master_holders(fdgrab::pty::Pty::new(0));
    let took = started.elapsed();
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(holders.is_ok(), "{holders:?}");
    assert_eq!(
        fs.slow_requests(),
        before,
        "the search asked the file server"
    );
    assert!(
        took < Duration::from_secs(2),
        "the search waited for the file server: {took:?}"
    );
}

/// `attach` of a process whose fds 0 to 2 are files on a FUSE server that
/// answers their attributes only 2 s late (and counts each request), with no
/// controlling terminal: the pty it runs on is looked for on those fds from the
/// kernel's cached attributes, and the refusal (no pty, 2) comes without a
/// request to the server, in full and in `--single` mode.
#[test]
fn a_program_with_its_stdio_on_a_file_server_is_refused_without_asking_it() {
    let Some(fs) = fdgrab_testkit::fuse::FuseFile::mount("attach-stdio") else {
        skip("FUSE cannot be mounted here (attach tests run as root)");
        return;
    };
    let mut target = std::process::Command::new("setsid")
        .args(["sh", "-c", "exec 0<\"$0\" 1<\"$0\" 2<\"$0\"; exec sleep 60"])
        .arg(fs.file())
        .spawn()
        .expect("setsid");
    let pid = target.id() as i32;
    let _guard = KillOnDrop::new(pid);
    wait_until("the target to put its stdio on the FUSE file", || {
        std::fs::read_link(format!("/proc/{pid}/fd/2"))
            .is_ok_and(|l| l == std::path::Path::new(&fs.file()))
            && std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c == b"sleep\n")
    });
    let before = fs.slow_requests();
    for mode in ["", "--single "] {
        // `script` gives fdgrab a terminal of its own to attach to.
        let out = fdgrab_testkit::output_timeout(
            std::process::Command::new("script").args([
                "-qec",
                &format!("{} attach {mode}{pid}", bin("fdgrab").display()),
                "/dev/null",
            ]),
            TIMEOUT,
        );
        assert_eq!(out.status.code(), Some(2), "attach {mode}: {out:?}");
        assert_eq!(
            fs.slow_requests(),
            before,
            "attach {mode}asked the file server"
        );
    }
    let _ = target.kill();
    let _ = target.wait();
}
