//! `fdgrab attach` against `reptyr -T`, and the relay's throughput.
//!
//! 1. *Time to the first relayed byte*: a `cat` runs in a window of an "old" tmux
//!    server. The tool (`fdgrab attach PID` or `reptyr -T PID`) starts on a pty of
//!    this bench, which keeps typing `x` into it; the time runs from the spawn until
//!    the first `x` echoed by the old session's line discipline comes back through
//!    the tool. Rounds alternate between the two tools; medians are compared.
//!    Goal: at most 1.5x reptyr's time (see `LATENCY_GOAL`).
//! 2. *Throughput*: `cat` of a 4 MB file, timed by the shell itself, in a bash
//!    attached through `fdgrab attach` from a window of a "new" tmux server, against
//!    the same `cat` in a plain bash window of that server. Goal: >= 0.9x the plain
//!    pane's rate (tmux's own parsing is the bottleneck of both).
//!
//! Run: `scripts/bench attach` (as root; tmux and reptyr installed, as scripts/test
//! does). `FDGRAB_BENCH_ROUNDS` changes the number of rounds;
//! `FDGRAB_BENCH_ATTACH=throughput` runs only the second part, and
//! `FDGRAB_BENCH_FDGRAB=PATH` measures another build of fdgrab (e.g. an older
//! relay); `FDGRAB_BENCH_COMPARE=PATH[:PATH...]` adds panes attached through other builds
//! to the throughput rounds, to compare two versions on one machine state.

use fdgrab_testkit::bench::Goals;
use fdgrab_testkit::bin;
use fdgrab_testkit::tmux::Tmux;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

/// fdgrab may take up to this many times reptyr's time to the first byte: it scans
/// every process for holders of the master (all are taken, and another attach is
/// detected), where reptyr -T looks at the terminal emulator it guesses; the ptrace
/// injection that puts /dev/null in place dominates both.
const LATENCY_GOAL: f64 = 1.5;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn kill(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

fn wait_or_kill(child: &mut Child, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit after its session ended");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Spawns `tool` on a fresh pty of ours and times until `x` comes back.
fn first_byte(tool: &[&str], target: i32) -> Duration {
    let (master, slave) = fdgrab::pty::open_pair().expect("a pty for the tool");
    rustix::termios::tcsetwinsize(
        &master,
        rustix::termios::Winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .expect("window size");
    // No echo from our own line discipline: only the old session's echo, relayed
    // by the tool, may answer.
    let mut modes = rustix::termios::tcgetattr(&slave).expect("tcgetattr");
    modes.make_raw();
    rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &modes)
        .expect("tcsetattr");
    let dup = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
    let start = Instant::now();
    let mut child = Command::new(tool[0])
        .args(&tool[1..])
        .arg(target.to_string())
        .stdin(dup(&slave))
        .stdout(dup(&slave))
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", tool[0]));
    drop(slave);
    let mut buf = [0u8; 256];
    let took = loop {
        assert!(
            start.elapsed() < DEADLINE,
            "{} relayed nothing within {DEADLINE:?}",
            tool[0]
        );
        let _ = rustix::io::write(&master, b"x");
        let mut p = [rustix::event::PollFd::new(
            &master,
            rustix::event::PollFlags::IN,
        )];
        let t = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 200_000,
        };
        if rustix::event::poll(&mut p, Some(&t)).unwrap_or(0) > 0 {
            if let Ok(n) = rustix::io::read(&master, &mut buf) {
                if buf[..n].contains(&b'x') {
                    break start.elapsed();
                }
            }
        }
    };
    kill(target);
    wait_or_kill(&mut child, tool[0]);
    took
}

/// Runs `cat FILE` in window `id` of `t`, timed by the shell, in microseconds.
fn timed_cat(t: &Tmux, id: &str, file: &str) -> Duration {
    t.type_line_in(
        id,
        &format!("s=$(date +%s%N); cat {file}; e=$(date +%s%N); echo ELAPSED=$(( (e-s)/1000 ))us"),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = t.capture_window(id);
        if let Some(us) = text
            .split("ELAPSED=")
            .filter_map(|s| s.split("us").next()?.trim().parse::<u64>().ok())
            .last()
        {
            return Duration::from_micros(us);
        }
        assert!(
            Instant::now() < deadline,
            "cat did not finish in {id}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Part 1: fdgrab's median time to the first relayed byte over reptyr's.
fn first_byte_ratio(fdgrab: &str, rounds: usize) -> f64 {
    let old = Tmux::start("bench-attach-old", 80, 24, "exec sleep 1000000");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so drift hits both alike.
        let order: [bool; 2] = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for use_fdgrab in order {
            let (_, cat) = old.new_window("exec cat");
            // Wait until cat runs on its terminal.
            let deadline = Instant::now() + DEADLINE;
            while std::fs::read_to_string(format!("/proc/{cat}/comm"))
                .map_or(true, |c| c != "cat\n")
            {
                assert!(Instant::now() < deadline, "cat did not start");
                std::thread::sleep(Duration::from_millis(2));
            }
            if use_fdgrab {
                ours.push(first_byte(&[fdgrab, "attach"], cat));
            } else {
                theirs.push(first_byte(&["reptyr", "-T"], cat));
            }
        }
    }
    drop(old);
    let (f, r) = (median(&mut ours), median(&mut theirs));
    let ratio = f.as_secs_f64() / r.as_secs_f64();
    println!(
        "attach: first relayed byte  fdgrab attach {:>8.2} ms   reptyr -T {:>8.2} ms   ratio {ratio:.2} (goal <= {LATENCY_GOAL:.2}; medians of {rounds})",
        f.as_secs_f64() * 1e3,
        r.as_secs_f64() * 1e3
    );

    ratio
}

fn main() {
    let mut goals = Goals::new("attach");
    if !rustix::process::geteuid().is_root() {
        goals.skip("needs root");
    }
    for tool in ["tmux", "reptyr"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            goals.skip(&format!(
                "{tool} is not installed (scripts/test installs it)"
            ));
        }
    }
    let rounds: usize = std::env::var("FDGRAB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let fdgrab = std::env::var_os("FDGRAB_BENCH_FDGRAB")
        .map_or_else(|| bin("fdgrab"), std::path::PathBuf::from);
    let fdgrab = fdgrab.to_str().expect("utf-8 path");
    let only_throughput = std::env::var("FDGRAB_BENCH_ATTACH").is_ok_and(|v| v == "throughput");

    // 1. Time to the first relayed byte.
    let latency_ratio = if only_throughput {
        None
    } else {
        Some(first_byte_ratio(fdgrab, rounds))
    };

    // 2. Throughput of the relay.
    let dir = std::env::temp_dir().join(format!("fdgrab-bench-attach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("big.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("file"));
        for i in 0..60_000 {
            writeln!(
                f,
                "line {i:07} the quick brown fox jumps over the lazy dog 0123456789"
            )
            .expect("write");
        }
    }
    let file = file.to_str().expect("utf-8 path").to_owned();
    let old = Tmux::start("bench-attach-told", 100, 30, "exec sleep 1000000");
    let new = Tmux::start("bench-attach-tnew", 100, 30, "exec sleep 1000000");
    // The panes measured, each round in a rotated order: through fdgrab, plain, and
    // through the build named by FDGRAB_BENCH_COMPARE if set.
    let mut panes: Vec<(String, String, Option<i32>)> = Vec::new();
    let mut attach_pane = |label: String, tool: &str| {
        let (_, shell) = old.new_window("exec bash --norc --noprofile");
        let (id, _) = new.new_window(&format!("exec {tool} attach {shell}"));
        let deadline = Instant::now() + DEADLINE;
        while !new.capture_window(&id).contains("to detach") {
            assert!(Instant::now() < deadline, "{tool} attach did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        panes.push((label, id, Some(shell)));
    };
    attach_pane("attached".into(), fdgrab);
    let others = std::env::var("FDGRAB_BENCH_COMPARE").unwrap_or_default();
    for other in others.split(':').filter(|o| !o.is_empty()) {
        attach_pane(format!("attached by {other}"), other);
    }
    let (plain, _) = new.new_window("exec bash --norc --noprofile");
    panes.push(("plain tmux pane".into(), plain, None));
    let throughput_rounds = (rounds / 3).max(5);
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); panes.len()];
    for round in 0..throughput_rounds {
        for k in 0..panes.len() {
            let at = (round + k) % panes.len();
            for (_, id, _) in &panes {
                new.run(&["send-keys", "-t", id, "clear", "Enter"]);
            }
            times[at].push(timed_cat(&new, &panes[at].1, &file));
        }
    }
    for (_, _, shell) in &panes {
        if let Some(shell) = shell {
            kill(*shell);
        }
    }
    drop(new);
    drop(old);
    let _ = std::fs::remove_dir_all(&dir);
    let size = 60_000.0 * 70.0 / 1e6;
    let rate = |d: &Duration| size / d.as_secs_f64();
    for ((label, _, _), t) in panes.iter().zip(&times) {
        let each: Vec<String> = t.iter().map(|d| format!("{:.1}", rate(d))).collect();
        println!("attach: {label}: MB/s per round {}", each.join(" "));
    }
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    let d = medians[medians.len() - 1];
    let v = medians[0];
    let throughput_ratio = d.as_secs_f64() / v.as_secs_f64();
    println!(
        "attach: cat of {size:.1} MB    attached {:>8.1} MB/s   plain tmux pane {:>8.1} MB/s   ratio {throughput_ratio:.2} (goal >= 0.90; medians of {throughput_rounds})",
        rate(&v),
        rate(&d)
    );
    for (pane, m) in panes.iter().zip(&medians).skip(1) {
        if pane.2.is_some() {
            println!(
                "attach: {} {:>8.1} MB/s   ratio {:.2} to the plain pane",
                pane.0,
                rate(m),
                d.as_secs_f64() / m.as_secs_f64()
            );
        }
    }

    if let Some(latency_ratio) = latency_ratio {
        goals.at_most(
            "first relayed byte, fdgrab attach / reptyr -T",
            latency_ratio,
            LATENCY_GOAL,
        );
    }
    goals.at_least(
        "cat throughput, attached / plain tmux pane",
        throughput_ratio,
        0.9,
    );
    goals.finish()
}
