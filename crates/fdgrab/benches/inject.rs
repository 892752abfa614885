//! Taking fds by ptrace injection, against references measured in the same run:
//! `pidfd_getfd` (what the ptrace backend falls back from), gdb's
//! `call (int)dup(N)` (how it is done by hand), and `/bin/true` (the floor of any
//! command). Library grabs are measured in interleaved rounds (pidfd, ptrace,
//! ptrace without the identity check, each round a median of 50), and the whole
//! command `fdgrab get --backend ptrace PID FD -- /bin/true` in interleaved rounds
//! with `/bin/true`.
//!
//! Goals (the process exits 1 when one is missed; `bench inject:` summary line):
//! - a library ptrace grab of one fd in at most 0.2 ms (median of round medians):
//!   the issue states this one absolutely, so it is judged as the grab's time over
//!   that budget (at most 1.0x); its ratio to `pidfd_getfd` in the same run is
//!   printed beside it;
//! - gdb one-liner / whole ptrace command >= 150x;
//! - 1,000 fds in one session at most 30x `pidfd_getfd` per fd.
//!
//! Run: `scripts/bench inject` (it builds the release `fdgrab` first). The target is
//! a `python3` process holding 1,000 fds and sleeping, so the ptrace path always
//! interrupts a blocking syscall and restarts it.

use fdgrab::{Backend, GrabOptions, PidFd, TargetFd};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TARGET: &str = "import os, sys, time\n\
fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(1000)]\n\
print(' '.join(map(str, fds)), flush=True)\n\
time.sleep(3600)\n";

/// Interleaved rounds of each measurement.
const ROUNDS: usize = 30;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() * 9 / 10]
}

/// Median time of `f` over `n` runs; what it returns is dropped (closed) untimed.
fn time_n<T>(n: usize, mut f: impl FnMut() -> T) -> Duration {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = f();
        v.push(t.elapsed());
        drop(out);
    }
    median(v)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The release `fdgrab` next to this benchmark (`target/release/fdgrab`).
fn fdgrab_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/release");
    dir.join("fdgrab")
}

fn run_ok(cmd: &mut Command) {
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    assert!(st.success(), "{cmd:?} failed");
}

fn main() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let want = lim.maximum.unwrap_or(65536).min(65536);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(want),
            maximum: lim.maximum,
        },
    );
    let bin = fdgrab_bin();
    if !bin.exists() {
        eprintln!(
            "{} is missing: build it first (cargo build --release --workspace --bins, as scripts/bench does)",
            bin.display()
        );
        std::process::exit(2);
    }
    let mut child = Command::new("python3")
        .args(["-c", TARGET])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("python3 is needed for this benchmark");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("target line");
    let all: Vec<TargetFd> = line
        .split_whitespace()
        .filter_map(|n| n.parse::<i32>().ok())
        .filter_map(TargetFd::new)
        .collect();
    assert_eq!(all.len(), 1000);
    let fd = all[0];
    let pid = child.id() as i32;
    let target = PidFd::open(pid).expect("pidfd");
    std::thread::sleep(Duration::from_millis(100));

    let ptrace_opts = GrabOptions::new().backend(Backend::Ptrace);
    for _ in 0..20 {
        drop(ptrace_opts.grab(&target, fd).expect("warm-up"));
    }
    let (mut pidfd, mut ptrace, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cmd, mut truth) = (Vec::new(), Vec::new());
    let (pid_s, fd_s) = (pid.to_string(), fd.as_raw().to_string());
    for _ in 0..ROUNDS {
        pidfd.push(time_n(50, || {
            drop(fdgrab::grab::pidfd_getfd(&target, fd).expect("pidfd_getfd"))
        }));
        ptrace.push(time_n(50, || {
            drop(ptrace_opts.grab(&target, fd).expect("ptrace grab"))
        }));
        raw.push(time_n(50, || {
            drop(fdgrab::inject::grab_fds(&target, &[fd], Default::default()).expect("ptrace grab"))
        }));
        truth.push(time_n(1, || run_ok(&mut Command::new("/bin/true"))));
        cmd.push(time_n(1, || {
            run_ok(Command::new(&bin).args([
                "get",
                "--backend",
                "ptrace",
                &pid_s,
                &fd_s,
                "--",
                "/bin/true",
            ]))
        }));
    }
    let (cmd_p90, truth_p90) = (p90(cmd.clone()), p90(truth.clone()));
    let (pidfd, ptrace, raw, cmd, truth) = (
        median(pidfd),
        median(ptrace),
        median(raw),
        median(cmd),
        median(truth),
    );

    let many = time_n(20, || {
        let got = ptrace_opts.grab_many(&target, &all).expect("1000 fds");
        assert_eq!(got.len(), all.len());
        got
    });
    let per_fd = many / all.len() as u32;

    let gdb = gdb_dup(pid, fd.as_raw());

    println!("ptrace injection benchmark (target: python3 pid {pid}, sleeping; {ROUNDS} interleaved rounds)");
    println!(
        "  pidfd_getfd, one fd:                           {:>10.1} us",
        us(pidfd)
    );
    println!(
        "  ptrace, one fd, inject::grab_fds:              {:>10.1} us",
        us(raw)
    );
    println!(
        "  ptrace, one fd, GrabOptions (+ identity check): {:>9.1} us",
        us(ptrace)
    );
    println!(
        "  /bin/true:                                     {:>10.1} us (p90 {:.1})",
        us(truth),
        us(truth_p90)
    );
    println!(
        "  fdgrab get --backend ptrace PID FD -- /bin/true: {:>8.1} us (p90 {:.1})",
        us(cmd),
        us(cmd_p90)
    );
    match gdb {
        Some(g) => println!(
            "  gdb -p PID -batch call (int)dup(N) (median of 5): {:>8.1} us",
            us(g)
        ),
        None => println!("  gdb: not installed"),
    }
    println!(
        "  ptrace, {} fds in one session (median of 20): {:>10.1} us = {:.2} us per fd",
        all.len(),
        us(many),
        us(per_fd)
    );
    println!("ratios:");
    println!(
        "  ptrace grab / pidfd_getfd: {:.0}x",
        ptrace.as_secs_f64() / pidfd.as_secs_f64()
    );
    println!(
        "  whole ptrace command / /bin/true: {:.2}x",
        cmd.as_secs_f64() / truth.as_secs_f64()
    );
    println!(
        "  ptrace, per fd of 1,000 / pidfd_getfd: {:.2}x",
        per_fd.as_secs_f64() / pidfd.as_secs_f64()
    );
    let _ = child.kill();
    let _ = child.wait();
    let mut goals = fdgrab_testkit::bench::Goals::new("inject");
    goals.at_most(
        "library ptrace grab of one fd / the 0.2 ms budget",
        ptrace.as_secs_f64() / 200e-6,
        1.0,
    );
    match gdb {
        Some(g) => goals.at_least(
            "gdb one-liner / whole ptrace command",
            g.as_secs_f64() / cmd.as_secs_f64(),
            150.0,
        ),
        None => goals.not_measured(
            "gdb one-liner / whole ptrace command",
            "gdb is not installed",
        ),
    }
    goals.at_most(
        "ptrace, per fd of 1,000 in one session / pidfd_getfd",
        per_fd.as_secs_f64() / pidfd.as_secs_f64(),
        30.0,
    );
    goals.finish()
}

/// The by-hand way: gdb attaches, calls dup(N) in the target, detaches.
fn gdb_dup(pid: i32, fd: i32) -> Option<Duration> {
    let ok = Command::new("gdb")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let runs = (0..5)
        .map(|_| {
            let t = Instant::now();
            let st = Command::new("gdb")
                .args([
                    "-nx",
                    "-iex",
                    "set debuginfod enabled off",
                    "-p",
                    &pid.to_string(),
                    "-batch",
                ])
                .args(["-ex", &format!("call (int)dup({fd})")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("gdb");
            assert!(st.success(), "gdb failed");
            t.elapsed()
        })
        .collect();
    Some(median(runs))
}
