//! Taking fds by ptrace injection, against the references measured in the same run:
//! `pidfd_getfd` (what the ptrace backend falls back from) and gdb's
//! `call (int)dup(N)` (how it is done by hand). Goals: a single-fd ptrace grab in at
//! most 0.5 ms (median) and at least 1000x faster than gdb; 1,000 fds in one session
//! at most 30 us per fd.
//!
//! Run: `cargo bench -p fdgrab --bench inject`. The target is a `python3` process
//! holding 1,000 fds and sleeping, so the ptrace path always interrupts a blocking
//! syscall and restarts it.

use fdgrab::{Backend, GrabOptions, PidFd, TargetFd};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TARGET: &str = "import os, sys, time\n\
fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(1000)]\n\
print(' '.join(map(str, fds)), flush=True)\n\
time.sleep(3600)\n";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
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

    let pidfd = time_n(5000, || {
        drop(fdgrab::grab(&target, fd).expect("pidfd_getfd"))
    });
    let ptrace_opts = GrabOptions::new().backend(Backend::Ptrace);
    for _ in 0..20 {
        drop(ptrace_opts.grab(&target, fd).expect("warm-up"));
    }
    let ptrace = time_n(1000, || {
        drop(ptrace_opts.grab(&target, fd).expect("ptrace grab"))
    });
    let raw = time_n(1000, || {
        drop(fdgrab::inject::grab_fds(&target, &[fd], Default::default()).expect("ptrace grab"))
    });

    let many = time_n(20, || {
        let got = ptrace_opts.grab_many(&target, &all).expect("1000 fds");
        assert_eq!(got.len(), all.len());
        got
    });
    let per_fd = many / all.len() as u32;

    let gdb = gdb_dup(pid, fd.as_raw());

    println!("ptrace injection benchmark (target: python3 pid {pid}, sleeping)");
    println!(
        "  pidfd_getfd, one fd (median of 5000):            {:>10.1} us",
        us(pidfd)
    );
    println!(
        "  ptrace, one fd, raw session (median of 1000):    {:>10.1} us",
        us(raw)
    );
    println!(
        "  ptrace, one fd, + identity check (median, 1000): {:>10.1} us",
        us(ptrace)
    );
    match gdb {
        Some(g) => println!(
            "  gdb -p PID -batch call (int)dup(N) (median of 5): {:>10.1} us",
            us(g)
        ),
        None => println!("  gdb: not installed, reference skipped"),
    }
    println!(
        "  ptrace, {} fds in one session (median of 20): {:>10.1} us = {:.2} us per fd",
        all.len(),
        us(many),
        us(per_fd)
    );
    println!("ratios:");
    println!(
        "  ptrace / pidfd_getfd: {:.0}x slower",
        ptrace.as_secs_f64() / pidfd.as_secs_f64()
    );
    if let Some(g) = gdb {
        let ratio = g.as_secs_f64() / ptrace.as_secs_f64();
        println!(
            "  gdb / ptrace: {ratio:.0}x faster [goal >= 1000x: {}]",
            verdict(ratio >= 1000.0)
        );
    }
    println!("goals:");
    println!(
        "  ptrace single fd <= 500 us median: {}",
        verdict(ptrace <= Duration::from_micros(500))
    );
    println!(
        "  1000 fds <= 30 us per fd: {}",
        verdict(per_fd <= Duration::from_micros(30))
    );
    let _ = child.kill();
    let _ = child.wait();
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
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
