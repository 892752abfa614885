//! Whole-command cost of `fdgrab get PID FD -- /bin/true` against `/bin/true`
//! itself: what a user pays per call in a script, start-up and spawn included.
//!
//! Three commands, interleaved round by round so that load on the machine hits
//! each alike; medians compared:
//! - `/bin/true` (the reference);
//! - `fdgrab get PID FD -- /bin/true` (pidfd_getfd). Goal: median ≤ 2.0× `/bin/true`;
//! - the same with `--backend ptrace`. Goal: median ≤ 3.0× `/bin/true`, and its p90
//!   ≤ 1.5× its own median (no long tail).
//!
//! Exits non-zero when a goal is missed. Run with `scripts/bench get_vs_true`
//! (it builds the release binaries); `FDGRAB_BENCH_BIN` measures another fdgrab
//! binary (e.g. an older build).

use fdgrab_testkit::{bin, Target};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 60;

fn time(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let st = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    let took = start.elapsed();
    assert!(st.success(), "{cmd:?} failed: {st}");
    took
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let target = Target::spawn(["zoo"]);
    let pid = target.pid.to_string();
    let fd = target.fd_labelled("file").to_string();
    let fdgrab = std::env::var_os("FDGRAB_BENCH_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| bin("fdgrab"));
    let get = |backend: &str| {
        let mut c = Command::new(&fdgrab);
        c.args(["get", "--backend", backend, &pid, &fd, "--", "/bin/true"]);
        c
    };
    // Warm the page cache and check every command works before timing.
    for _ in 0..3 {
        time(&mut Command::new("/bin/true"));
        time(&mut get("pidfd"));
        time(&mut get("ptrace"));
    }
    let (mut t, mut p, mut x, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        t.push(time(&mut Command::new("/bin/true")));
        v.push(time(Command::new(&fdgrab).arg("--version")));
        p.push(time(&mut get("pidfd")));
        x.push(time(&mut get("ptrace")));
    }
    let true_med = quantile(&mut t, 0.5);
    let pidfd_med = quantile(&mut p, 0.5);
    let ptrace_med = quantile(&mut x, 0.5);
    let ptrace_p90 = quantile(&mut x, 0.9);
    let pidfd_ratio = ms(pidfd_med) / ms(true_med);
    let ptrace_ratio = ms(ptrace_med) / ms(true_med);
    let tail = ms(ptrace_p90) / ms(ptrace_med);
    println!("{ROUNDS} interleaved rounds, medians:");
    println!(
        "  /bin/true                            {:7.3} ms (p90 {:.3})",
        ms(true_med),
        ms(quantile(&mut t, 0.9))
    );
    println!(
        "  fdgrab --version (start-up alone)    {:7.3} ms (p90 {:.3})",
        ms(quantile(&mut v, 0.5)),
        ms(quantile(&mut v, 0.9))
    );
    println!(
        "  fdgrab get PID FD -- /bin/true       {:7.3} ms (p90 {:.3})  {pidfd_ratio:.2}x /bin/true (goal <= 2.0x)",
        ms(pidfd_med),
        ms(quantile(&mut p, 0.9))
    );
    println!(
        "  fdgrab get --backend ptrace ...      {:7.3} ms (p90 {:.3})  {ptrace_ratio:.2}x /bin/true (goal <= 3.0x), p90/median {tail:.2} (goal <= 1.5)",
        ms(ptrace_med),
        ms(ptrace_p90)
    );
    drop(target);
    let mut goals = fdgrab_testkit::bench::Goals::new("get_vs_true");
    goals.at_most("get (pidfd) / /bin/true", pidfd_ratio, 2.0);
    goals.at_most("get --backend ptrace / /bin/true", ptrace_ratio, 3.0);
    goals.at_most("get --backend ptrace p90 / its median", tail, 1.5);
    goals.finish()
}
