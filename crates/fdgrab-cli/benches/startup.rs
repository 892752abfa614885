//! Start-up cost of whole commands against `/bin/true`, measured in the same run:
//! wall time (medians of interleaved rounds), minor page faults, and, when valgrind
//! is installed, instruction counts from callgrind, which repeat exactly on a noisy
//! machine.
//!
//! Run: `cargo bench -p fdgrab-cli --bench startup` (as root, to list another
//! process). `FDGRAB_BENCH_ROUNDS` changes the number of rounds (default 41);
//! `FDGRAB_BENCH_BIN` measures another fdgrab binary (e.g. an older build).
//! Goals: `fdgrab --version` executes at most 4.0× the instructions of `/bin/true`
//! and `fdgrab ls PID` (a process with three fds) at most 4.5× (the build before
//! the start-up work: 4.43× and 5.13×). Without valgrind they cannot be checked, and
//! the run fails.
//! Page faults and wall time are printed, not judged: faults are dominated by what
//! the dynamic loader maps, and wall-time ratios on a shared 2-core machine move by
//! more than the difference being measured. Figures: docs/performance.md.
//! A third goal guards the link order of start-up functions (build.rs): at least
//! 80% of the names in `startup-order.txt` are functions of the measured binary
//! (fewer: the file went stale, regenerate it with `scripts/startup-order`).

use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `argv` once: wall time to exit, and its minor faults, read from
/// /proc/PID/stat while it is a zombie (waitid with WNOWAIT), before reaping it.
fn run_once(argv: &[String]) -> (Duration, u64) {
    let t = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let pid = Pid::from_raw(child.id() as i32).expect("child pid");
    waitid(
        WaitId::Pid(pid),
        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
    )
    .unwrap_or_else(|e| panic!("waitid {argv:?}: {e}"));
    let took = t.elapsed();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).expect("stat");
    // Fields after the parenthesised command name; minflt is field 10 overall.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let minflt = after
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .expect("minflt");
    let status = child.wait().expect("reap");
    assert!(status.success(), "{argv:?} failed: {status}");
    (took, minflt)
}

/// Instructions `argv` executes (callgrind's total), or None without valgrind.
fn instructions(argv: &[String]) -> Option<u64> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .args(argv)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdout(Stdio::null())
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    let n = err
        .split("Collected : ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    n.parse().ok()
}

/// How many of the function names in `startup-order.txt` the binary at `bin` has
/// (`nm`), and how many the file lists; None without `nm` or the file.
fn order_resolved(bin: &str) -> Option<(usize, usize)> {
    let order =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/startup-order.txt")).ok()?;
    let nm = Command::new("nm")
        .arg("--defined-only")
        .arg(bin)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&nm.stdout);
    let have: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let wanted: Vec<&str> = order.lines().filter(|l| !l.starts_with('#')).collect();
    let found = wanted.iter().filter(|n| have.contains(*n)).count();
    Some((found, wanted.len()))
}

fn median<T: Ord + Copy>(v: &mut [T]) -> T {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("FDGRAB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(41);
    // A process with three fds (0-2 on /dev/null) for `ls` to list.
    let mut sleeper = Command::new("sleep")
        .arg("300")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sleep");
    let pid = sleeper.id().to_string();
    let fdgrab = std::env::var("FDGRAB_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_fdgrab").to_string());
    let own = |args: &[&str]| -> Vec<String> {
        std::iter::once(fdgrab.as_str())
            .chain(args.iter().copied())
            .map(String::from)
            .collect()
    };
    // (name, argv, goal: at most this many times true's instructions)
    let cmds: Vec<(&str, Vec<String>, f64)> = vec![
        ("/bin/true", vec!["/bin/true".to_string()], 1.0),
        ("fdgrab --version", own(&["--version"]), 4.0),
        ("fdgrab ls PID", own(&["ls", &pid]), 4.5),
    ];
    let mut wall: Vec<Vec<Duration>> = vec![Vec::new(); cmds.len()];
    let mut faults: Vec<Vec<u64>> = vec![Vec::new(); cmds.len()];
    for _ in 0..rounds {
        for (i, (_, argv, _)) in cmds.iter().enumerate() {
            let (t, f) = run_once(argv);
            wall[i].push(t);
            faults[i].push(f);
        }
    }
    let insns: Vec<Option<u64>> = cmds.iter().map(|(_, a, _)| instructions(a)).collect();
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    let base_wall = median(&mut wall[0]).as_secs_f64();
    let base_faults = median(&mut faults[0]) as f64;
    println!(
        "{:<18} {:>10} {:>7} {:>7} {:>7} {:>12} {:>7}",
        "command", "wall ms", "x true", "faults", "x true", "instructions", "x true"
    );
    let mut goals = fdgrab_testkit::bench::Goals::new("startup");
    let mut judged = Vec::new();
    for (i, (name, _, goal)) in cmds.iter().enumerate() {
        let w = median(&mut wall[i]).as_secs_f64();
        let f = median(&mut faults[i]) as f64;
        let (ins, ins_ratio) = match (insns[i], insns[0]) {
            (Some(n), Some(b)) => (n.to_string(), format!("{:.2}", n as f64 / b as f64)),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{name:<18} {:>10.3} {:>7.2} {f:>7.0} {:>7.2} {ins:>12} {ins_ratio:>7}",
            w * 1e3,
            w / base_wall,
            f / base_faults
        );
        if i > 0 {
            judged.push((*name, insns[i], *goal));
        }
    }
    println!("{rounds} interleaved rounds; medians.");
    let what = "startup-order.txt names found in the binary (if low: rerun scripts/startup-order)";
    match order_resolved(&fdgrab) {
        Some((found, listed)) if listed > 0 => {
            println!("{what}: {found} of {listed}");
            goals.at_least(what, found as f64 / listed as f64, 0.8);
        }
        _ => goals.not_measured(what, "no nm, or no startup-order.txt"),
    }
    for (name, n, goal) in judged {
        let what = format!("{name} instructions / /bin/true's");
        match (n, insns[0]) {
            (Some(n), Some(b)) => goals.at_most(&what, n as f64 / b as f64, goal),
            _ => goals.not_measured(&what, "no instruction count: is valgrind installed?"),
        }
    }
    goals.finish()
}
