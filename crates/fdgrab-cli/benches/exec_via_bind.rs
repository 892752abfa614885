//! Start-up cost of `fdgrab exec --via bind`: the time from launching to the new
//! server's first answer, against `--via env` and against a plain cold start of the
//! same server (gunicorn, which speaks LISTEN_FDS and binds by itself as well).
//!
//! - cold: `gunicorn -b 127.0.0.1:PORT` on a free port; the client retries refused
//!   connections every 100 µs and the clock stops at the first answer;
//! - env / bind: this process holds a listening socket it never accepts on, and
//!   `fdgrab exec OWN_PID tcp:ADDR --via MODE -- gunicorn -b ADDR` takes it; the
//!   client connects at once (the connection waits in the backlog).
//!
//! Rounds are interleaved; medians are compared. Goal: `--via bind` within 1.2x of
//! the cold start. Exits non-zero when the goal is missed.
//!
//! Run with `scripts/bench exec_via_bind` (it builds the release binaries).

use fdgrab_testkit::bench::Goals;
use fdgrab_testkit::handover::{
    first_answer, free_port, gunicorn, gunicorn_args, stop_child, write_pid_app, Probe, TempDir,
};
use fdgrab_testkit::{bin, TIMEOUT};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GOAL: f64 = 1.2;

fn timed(mut cmd: Command, addr: SocketAddr) -> Duration {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    first_answer(&Probe::Http(addr), t0 + TIMEOUT);
    let took = t0.elapsed();
    stop_child(&mut child);
    took
}

fn cold(server: &[String]) -> Duration {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut cmd = Command::new(&server[0]);
    cmd.arg("-b").arg(addr.to_string()).args(&server[1..]);
    timed(cmd, addr)
}

fn via(mode: &str, held: SocketAddr, server: &[String]) -> Duration {
    let mut cmd = Command::new(bin("fdgrab"));
    cmd.args(["exec", &std::process::id().to_string()])
        .arg(format!("tcp:{held}"))
        .args(["--via", mode, "--"])
        .arg(&server[0])
        .arg("-b")
        .arg(held.to_string())
        .args(&server[1..]);
    timed(cmd, held)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut goals = Goals::new("exec_via_bind");
    let Some(g) = gunicorn() else {
        goals.skip("gunicorn is not installed (Debian package gunicorn)");
    };
    let dir = TempDir::new("bench-via-bind");
    write_pid_app(dir.path());
    let server: Vec<String> = std::iter::once(g.to_string_lossy().into_owned())
        .chain(gunicorn_args(dir.path()))
        .collect();
    // The "old server": us, holding a socket we never accept on.
    let held = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = held.local_addr().expect("addr");
    // One unmeasured round each warms the page cache.
    cold(&server);
    via("env", addr, &server);
    via("bind", addr, &server);
    let rounds = 9;
    let (mut c, mut e, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // The order rotates, so that no side always runs right after another.
        for k in 0..3 {
            match (round + k) % 3 {
                0 => c.push(cold(&server)),
                1 => e.push(via("env", addr, &server)),
                _ => b.push(via("bind", addr, &server)),
            }
        }
    }
    let (c, e, b) = (median(c), median(e), median(b));
    let ratio = b.as_secs_f64() / c.as_secs_f64();
    println!("launch -> first answer, gunicorn -w 2, {rounds} interleaved rounds, medians");
    println!(
        "cold start {:>9}   --via env {:>9} ({:.2}x)   --via bind {:>9} ({ratio:.2}x cold, {:.2}x env)",
        ms(c),
        ms(e),
        e.as_secs_f64() / c.as_secs_f64(),
        ms(b),
        b.as_secs_f64() / e.as_secs_f64(),
    );
    drop(held);
    goals.at_most("--via bind / cold start", ratio, GOAL);
    goals.finish()
}
