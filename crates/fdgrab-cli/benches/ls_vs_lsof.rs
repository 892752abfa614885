//! `fdgrab ls` against `lsof -p` and `lsfd -p` on a process holding 10,000 mixed fds
//! (files, pipes, TCP listeners and connections, UDP, unix pairs, eventfds, memfds).
//! All commands are timed in the same run, interleaved, and the medians compared.
//!
//! Run with `scripts/bench` (it builds the release binaries first).

use fdgrab_testkit::{bin, output_timeout, Target};
use std::process::Command;
use std::time::{Duration, Instant};

const FDS: usize = 10_000;
const ROUNDS: usize = 15;

fn main() {
    let t = Target::spawn(["many", &FDS.to_string()]);
    let pid = t.pid.to_string();
    let fdgrab = bin("fdgrab");
    let cmds: Vec<(&str, Vec<String>)> = vec![
        (
            "fdgrab ls",
            vec![
                fdgrab.to_string_lossy().into_owned(),
                "ls".into(),
                pid.clone(),
            ],
        ),
        (
            "fdgrab ls --json",
            vec![
                fdgrab.to_string_lossy().into_owned(),
                "ls".into(),
                pid.clone(),
                "--json".into(),
            ],
        ),
        ("lsof -p", vec!["lsof".into(), "-p".into(), pid.clone()]),
        (
            "lsof -n -P -p",
            vec![
                "lsof".into(),
                "-n".into(),
                "-P".into(),
                "-p".into(),
                pid.clone(),
            ],
        ),
        ("lsfd -p", vec!["lsfd".into(), "-p".into(), pid.clone()]),
    ];

    // Same information: every fd appears in each tool's output.
    let count_lines = |argv: &[String]| {
        let out = output_timeout(
            Command::new(&argv[0]).args(&argv[1..]),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let ours = count_lines(&cmds[0].1);
    let theirs = count_lines(&cmds[2].1);
    println!(
        "fds listed: fdgrab {} rows, lsof {} rows (lsof adds cwd/rtd/txt/mem rows)",
        ours - 1,
        theirs - 1
    );
    assert!(ours > FDS, "fdgrab listed only {ours} rows");

    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cmds.len()];
    for _ in 0..ROUNDS {
        for (i, (_, argv)) in cmds.iter().enumerate() {
            let start = Instant::now();
            let out = Command::new(&argv[0])
                .args(&argv[1..])
                .output()
                .expect("run");
            times[i].push(start.elapsed());
            assert!(out.status.success());
        }
    }
    let medians: Vec<f64> = times
        .iter_mut()
        .map(|v| {
            v.sort();
            v[v.len() / 2].as_secs_f64()
        })
        .collect();
    println!("median wall time over {ROUNDS} interleaved rounds, target with {FDS} fds:");
    for ((name, _), m) in cmds.iter().zip(&medians) {
        println!("  {name:<18} {:>8.1} ms", m * 1e3);
    }
    println!("ratios (reference / fdgrab ls; goal >= 3.0 against lsof):");
    for (i, (name, _)) in cmds.iter().enumerate().skip(2) {
        println!("  {name:<18} {:>5.2}x", medians[i] / medians[0]);
    }
}
