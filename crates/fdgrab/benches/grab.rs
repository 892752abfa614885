//! `fdgrab::grab::pidfd_getfd` + close against a raw `pidfd_getfd` + close loop, interleaved in
//! the same run. Goal: at most 1.10x the raw syscall.

use fdgrab::grab::pidfd_getfd as grab;
use fdgrab::{PidFd, TargetFd};
use rustix::process::{pidfd_getfd, PidfdGetfdFlags};
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::Instant;

const BATCH: usize = 20_000;
const ROUNDS: usize = 21;

fn main() {
    let mut child = Command::new("sleep")
        .arg("300")
        .stdin(Stdio::piped())
        .spawn()
        .expect("sleep");
    let pidfd = PidFd::from_child(&child).expect("pidfd");
    let fd = TargetFd::new(0).expect("fd 0");
    let raw_pidfd = pidfd.as_pidfd().expect("a real pidfd");

    let raw = || {
        let start = Instant::now();
        for _ in 0..BATCH {
            let f = pidfd_getfd(raw_pidfd, 0, PidfdGetfdFlags::empty()).expect("pidfd_getfd");
            drop(black_box(f));
        }
        start.elapsed().as_secs_f64() * 1e9 / BATCH as f64
    };
    let ours = || {
        let start = Instant::now();
        for _ in 0..BATCH {
            let f = grab(&pidfd, fd).expect("grab");
            drop(black_box(f));
        }
        start.elapsed().as_secs_f64() * 1e9 / BATCH as f64
    };
    raw();
    ours();
    let (mut r, mut o) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        // Alternate the order so that neither side always runs on a warmer cache.
        if i % 2 == 0 {
            r.push(raw());
            o.push(ours());
        } else {
            o.push(ours());
            r.push(raw());
        }
    }
    r.sort_by(f64::total_cmp);
    o.sort_by(f64::total_cmp);
    let (rm, om) = (r[ROUNDS / 2], o[ROUNDS / 2]);
    println!("grab+close, median of {ROUNDS} rounds x {BATCH}:");
    println!("  raw pidfd_getfd + close  {rm:>8.0} ns");
    println!("  grab::pidfd_getfd+close {om:>8.0} ns");
    println!(
        "  ratio fdgrab/raw         {:>8.3}x (goal <= 1.10)",
        om / rm
    );
    let _ = child.kill();
    let _ = child.wait();
    let mut goals = fdgrab_testkit::bench::Goals::new("grab");
    goals.at_most("grab::pidfd_getfd / raw pidfd_getfd", om / rm, 1.10);
    goals.finish()
}
