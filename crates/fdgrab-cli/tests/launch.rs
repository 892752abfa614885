//! What `get` and `steal` do around CMD: signals sent to fdgrab reach CMD, fdgrab
//! exits with CMD's status, and no CMD is left behind holding the fds.

use fdgrab_testkit::{fdgrab, wait_for_child_of, wait_gone, wait_timeout, Target, TIMEOUT};
use rustix::process::{kill_process, Pid, Signal};
use std::process::Stdio;

/// Kills a process on drop, so that a failing test leaves nothing running.
struct Guard(u32);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(pid) = Pid::from_raw(self.0 as i32) {
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}

fn holds(pid: u32, fd: i32, like: &str) -> bool {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .is_ok_and(|l| l.to_string_lossy().contains(like))
}

/// `fdgrab CMD PID FD:7 -- sh -c SCRIPT` started, with CMD ready: the shell
/// holds the target's file at fd 7 and SCRIPT has opened /dev/null at fd 9 (its
/// sign that it is ready). Both are killed on drop.
struct Started {
    fdgrab: std::process::Child,
    /// CMD's pid (fdgrab's own under `get`).
    cmd: u32,
    _guards: [Guard; 2],
    _target: Target,
}

impl Started {
    fn new(command: &str, script: &str, stdout: Stdio) -> Self {
        let t = Target::spawn(["zoo"]);
        let file = t.fd_labelled("file");
        let file_path = std::fs::read_link(format!("/proc/{}/fd/{file}", t.pid))
            .expect("the target's file")
            .display()
            .to_string();
        let mut fdgrab = fdgrab();
        if command == "run" {
            // `run` takes no fd: fd 7 is opened by the script itself.
            fdgrab.args([
                "run",
                "--",
                "sh",
                "-c",
                &format!("exec 7<{file_path}; {script}"),
            ]);
        } else {
            fdgrab.args([command, &t.pid.to_string(), &format!("{file}:7"), "--"]);
            fdgrab.args(["sh", "-c", script]);
        }
        let child = fdgrab
            .stdin(Stdio::null())
            .stdout(stdout)
            .spawn()
            .expect("spawn fdgrab");
        let g = Guard(child.id());
        // `get` runs CMD in its own place (same pid); `steal` starts it as a child.
        let cmd = if command == "get" {
            child.id()
        } else {
            wait_for_child_of(child.id())
        };
        let deadline = std::time::Instant::now() + TIMEOUT;
        while !(holds(cmd, 7, "file.txt") && holds(cmd, 9, "/dev/null")) {
            assert!(
                std::time::Instant::now() < deadline,
                "CMD never got fd 7 or never got ready"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Self {
            fdgrab: child,
            cmd,
            _guards: [g, Guard(cmd)],
            _target: t,
        }
    }

    /// Sends signal number `sig` to fdgrab.
    fn signal(&self, sig: i32) {
        // SAFETY: kill takes plain integers; fdgrab is our unreaped child.
        let r = unsafe { libc::kill(self.fdgrab.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "signal {sig} to fdgrab");
    }

    /// fdgrab's exit status as a shell reports it (128+N for a process killed
    /// by signal N).
    fn status(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let st = wait_timeout(&mut self.fdgrab, TIMEOUT).expect("fdgrab exits after the signal");
        st.code().or(st.signal().map(|n| 128 + n))
    }
}

/// Starts `fdgrab CMD PID FD:7 -- sh -c SCRIPT` (see [`Started`]), sends `sig`
/// to fdgrab once CMD is ready, and returns fdgrab's exit status as a shell
/// reports it and CMD's pid. (`steal` exits with 128+N itself; under `get`, CMD
/// *is* fdgrab's process, so the signal that killed CMD is what fdgrab's parent
/// sees.)
fn signal_fdgrab(command: &str, script: &str, sig: Signal) -> (Option<i32>, u32) {
    let mut s = Started::new(command, script, Stdio::inherit());
    s.signal(sig.as_raw());
    (s.status(), s.cmd)
}

#[test]
fn get_and_steal_forward_signals_and_exit_with_cmds_status() {
    for command in ["get", "steal", "run"] {
        // Not only the usual four: a stray `kill -USR1` (or a timer's ALRM) meant
        // for CMD used to end `steal` and `run` with CMD orphaned (under `run`,
        // with no supervisor for its binds).
        for (sig, name) in [
            (Signal::TERM, "TERM"),
            (Signal::INT, "INT"),
            (Signal::HUP, "HUP"),
            (Signal::QUIT, "QUIT"),
            (Signal::USR1, "USR1"),
            (Signal::USR2, "USR2"),
            (Signal::ALARM, "ALRM"),
        ] {
            // CMD dies of the forwarded signal: fdgrab reports it as a shell would.
            let (code, cmd) = signal_fdgrab(command, "exec 9</dev/null; exec sleep 60", sig);
            assert_eq!(code, Some(128 + sig.as_raw()), "{command} {sig:?}");
            assert!(wait_gone(cmd), "{command}: CMD {cmd} outlived fdgrab");
            // CMD handles the signal and picks its own status: fdgrab passes it on
            // (a fdgrab ended by the signal itself would report 128+N instead).
            let (code, cmd) = signal_fdgrab(
                command,
                &format!("trap 'exit 42' {name}; exec 9</dev/null; while :; do sleep 0.05; done"),
                sig,
            );
            assert_eq!(code, Some(42), "{command} {name}");
            assert!(wait_gone(cmd));
        }
    }
}

/// A terminal's ^C goes to the whole foreground process group, CMD included: fdgrab
/// must not forward a second SIGINT (to many programs a second ^C means "force").
/// fdgrab runs as the session leader of a pty, and ^C is typed into its master three
/// times. CMD counts deliveries at the C level (Python's wakeup fd gets one byte per
/// delivery), so with the bug the count is above 3 unless the kernel happened to
/// merge every pair.
#[test]
fn terminal_interrupt_reaches_cmd_once() {
    let t = Target::spawn(["zoo"]);
    let file = t.fd_labelled("file");
    let counter = r#"
import os, signal, sys, time
r, w = os.pipe()
os.set_blocking(w, False)
os.set_blocking(r, False)
signal.set_wakeup_fd(w)
signal.signal(signal.SIGINT, lambda *a: None)
def term(*a):
    try:
        data = os.read(r, 4096)
    except BlockingIOError:
        data = b''
    print('count', data.count(bytes([signal.SIGINT])), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print('ready', flush=True)
while True:
    time.sleep(0.01)
"#;
    let driver = r#"
import os, pty, select, signal, sys, time
argv = sys.argv[1:]
pid, master = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
out = b''
end = time.time() + 20
while b'ready' not in out:
    left = end - time.time()
    if left <= 0 or not select.select([master], [], [], left)[0]:
        sys.exit('timed out waiting for CMD: %r' % out)
    out += os.read(master, 4096)
for _ in range(3):
    os.write(master, b'\x03')
    # Room for a forwarded second SIGINT, if any, to arrive on its own.
    time.sleep(0.2)
os.kill(pid, signal.SIGTERM)
_, status = os.waitpid(pid, 0)
while select.select([master], [], [], 1.0)[0]:
    try:
        chunk = os.read(master, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
print(out.decode(errors='replace'))
print('status', os.waitstatus_to_exitcode(status))
"#;
    for command in ["get", "steal"] {
        let out = fdgrab_testkit::output_timeout(
            std::process::Command::new("python3")
                .args(["-c", driver])
                .arg(fdgrab_testkit::bin("fdgrab"))
                .args([command, &t.pid.to_string(), &format!("{file}:7"), "--"])
                .args(["python3", "-c", counter]),
            TIMEOUT,
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{command}: {out:?}");
        assert!(
            text.contains("count 3"),
            "{command}: three ^C must be three SIGINTs in CMD: {text}"
        );
        assert!(
            text.contains("status 0"),
            "{command}: fdgrab exits with CMD's status: {text}"
        );
    }
}

/// Under `steal` and `run`, the signals a user sends that are CMD's business
/// and would not end fdgrab (`SIGWINCH`, `SIGTTIN`, `SIGTTOU`: a resize, a
/// worker more or less), and a real-time one, are passed on to CMD, and fdgrab
/// goes on waiting (not stopped by `SIGTTIN`/`SIGTTOU`, nor ended).
#[test]
fn steal_and_run_forward_terminal_and_realtime_signals() {
    use std::io::BufReader;
    let rt = libc::SIGRTMIN() + 3;
    let sigs = [
        (libc::SIGWINCH, "WINCH"),
        (libc::SIGTTIN, "TTIN"),
        (libc::SIGTTOU, "TTOU"),
        (rt, "RT"),
    ];
    let traps: String = sigs
        .iter()
        .map(|(n, name)| format!("trap 'echo {name}' {n}; "))
        .collect();
    for command in ["steal", "run"] {
        let script = format!("{traps}exec 9</dev/null; while :; do sleep 0.05; done");
        let mut s = Started::new(command, &script, Stdio::piped());
        let mut out = BufReader::new(s.fdgrab.stdout.take().expect("fdgrab's stdout"));
        // One at a time: a shell runs pending traps in its own order.
        for (sig, name) in sigs {
            s.signal(sig);
            let line = fdgrab_testkit::read_line_timeout(&mut out, TIMEOUT)
                .unwrap_or_else(|e| panic!("{command}: {name} never reached CMD: {e}"));
            assert_eq!(line, name, "{command}");
        }
        s.signal(libc::SIGTERM);
        assert_eq!(s.status(), Some(128 + libc::SIGTERM), "{command}");
        assert!(wait_gone(s.cmd), "{command}: CMD outlived fdgrab");
    }
}

/// A `SIGTERM` or `SIGHUP` passed on to a CMD that is stopped is followed by
/// `SIGCONT`, as a shell's `kill` of a stopped job: else it stays pending, and
/// `steal` or `run` would wait for a CMD that never ends.
#[test]
fn steal_and_run_end_a_stopped_cmd() {
    let state = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| {
                st.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_owned)
            })
    };
    for command in ["steal", "run"] {
        for sig in [libc::SIGTERM, libc::SIGHUP] {
            let mut s = Started::new(command, "exec 9</dev/null; exec sleep 60", Stdio::null());
            let pid = Pid::from_raw(s.cmd as i32).expect("CMD's pid");
            kill_process(pid, Signal::STOP).expect("SIGSTOP to CMD");
            let deadline = std::time::Instant::now() + TIMEOUT;
            while state(s.cmd).as_deref() != Some("T") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{command}: CMD never stopped"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            s.signal(sig);
            assert_eq!(s.status(), Some(128 + sig), "{command} {sig}");
            assert!(wait_gone(s.cmd), "{command}: CMD outlived fdgrab");
        }
    }
}
