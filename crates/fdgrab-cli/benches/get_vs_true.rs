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
//! For scale, three more rows, printed and not judged: the floor of any `get` that
//! is a program of its own, started and then exec'ing CMD. Each is a minimal program
//! built here that does only `pidfd_open`, `pidfd_getfd`, `dup2` and `execv`: one
//! in C (`cc`), two in Rust (`rustc`, linked with the static unwinder as fdgrab
//! is), one entered through std's runtime start and one through a C `main` of its
//! own (`#![no_main]`, as fdgrab is). A compiler that is missing leaves its row out.
//!
//! Exits non-zero when a goal is missed. Run with `scripts/bench get_vs_true`
//! (it builds the release binaries); `FDGRAB_BENCH_BIN` measures another fdgrab
//! binary (e.g. an older build).

use fdgrab_testkit::{bin, Target};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 60;

const FLOOR_C: &str = r#"
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int pid = atoi(argv[1]), fd = atoi(argv[2]);
    int p = syscall(SYS_pidfd_open, pid, 0);
    int g = p < 0 ? -1 : syscall(SYS_pidfd_getfd, p, fd, 0);
    if (g < 0 || dup2(g, fd) < 0) return 1;
    execv(argv[3], argv + 3);
    return 127;
}
"#;

/// The Rust floors' work, shared by both entry points: returns the exit status
/// when the exec failed.
const FLOOR_RUST_GET: &str = r#"
use std::os::unix::process::CommandExt;
extern "C" {
    fn syscall(n: i64, ...) -> i64;
    fn dup2(old: i32, new: i32) -> i32;
}
fn get() -> i32 {
    let a: Vec<String> = std::env::args().collect();
    let pid: i32 = a[1].parse().expect("pid");
    let fd: i32 = a[2].parse().expect("fd");
    // SAFETY: plain system calls on integers; no memory is passed.
    let ok = unsafe {
        let p = syscall(434, pid, 0); // pidfd_open
        let g = if p < 0 { -1 } else { syscall(438, p, fd, 0) }; // pidfd_getfd
        g >= 0 && dup2(g as i32, fd) >= 0
    };
    if !ok {
        return 1;
    }
    let e = std::process::Command::new(&a[3]).args(&a[4..]).exec();
    eprintln!("{e}");
    127
}
"#;

/// std's runtime start (`lang_start`) around it.
const FLOOR_RUST_STD_MAIN: &str = r#"
fn main() {
    std::process::exit(get())
}
"#;

/// A C `main` of its own around it, as fdgrab has (no `lang_start`).
const FLOOR_RUST_NO_MAIN: &str = r#"
#![no_main]
#[no_mangle]
extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    get()
}
"#;

/// Builds the floor programs in `dir`: (row name, path) for each compiler found.
fn floor_programs(dir: &std::path::Path) -> Vec<(&'static str, std::path::PathBuf)> {
    let mut out = Vec::new();
    if let Some(p) = fdgrab_testkit::bench::build_c_floor(dir, "floor_c", FLOOR_C, false) {
        out.push(("C get (floor)", p));
    }
    let unwinder = concat!(env!("OUT_DIR"), "/static-unwinder");
    for (name, row, main) in [
        ("floor_rust", "Rust std get (floor)", FLOOR_RUST_STD_MAIN),
        (
            "floor_rust_no_main",
            "Rust no_main get (floor)",
            FLOOR_RUST_NO_MAIN,
        ),
    ] {
        // `#![no_main]` is an inner attribute: it has to come first.
        let src = format!("{main}{FLOOR_RUST_GET}");
        let exe = dir.join(name);
        if let Some(p) = fdgrab_testkit::bench::build_floor(
            dir,
            name,
            "rs",
            &src,
            Command::new("rustc")
                .args(["-C", "opt-level=3", "-C", "strip=debuginfo", "-L"])
                .arg(format!("native={unwinder}"))
                .arg("-o")
                .arg(&exe),
        ) {
            out.push((row, p));
        }
    }
    out
}

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
        .filter(|b| !b.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| bin("fdgrab"));
    let get = |backend: &str| {
        let mut c = Command::new(&fdgrab);
        c.args(["get", "--backend", backend, &pid, &fd, "--", "/bin/true"]);
        c
    };
    let scratch = std::env::temp_dir().join(format!("fdgrab-get-floor-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let floors = floor_programs(&scratch);
    let floor = |path: &std::path::Path| {
        let mut c = Command::new(path);
        c.args([&pid, &fd, "/bin/true"]);
        c
    };
    // Warm the page cache and check every command works before timing.
    for _ in 0..3 {
        time(&mut Command::new("/bin/true"));
        time(&mut get("pidfd"));
        time(&mut get("ptrace"));
        for (_, path) in &floors {
            time(&mut floor(path));
        }
    }
    let (mut t, mut p, mut x, mut v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut f: Vec<Vec<Duration>> = vec![Vec::new(); floors.len()];
    for _ in 0..ROUNDS {
        t.push(time(&mut Command::new("/bin/true")));
        v.push(time(Command::new(&fdgrab).arg("--version")));
        p.push(time(&mut get("pidfd")));
        x.push(time(&mut get("ptrace")));
        for (i, (_, path)) in floors.iter().enumerate() {
            f[i].push(time(&mut floor(path)));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
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
    for (i, (name, _)) in floors.iter().enumerate() {
        let med = quantile(&mut f[i], 0.5);
        println!(
            "  {name:<36} {:7.3} ms (p90 {:.3})  {:.2}x /bin/true; get is {:.2}x this",
            ms(med),
            ms(quantile(&mut f[i], 0.9)),
            ms(med) / ms(true_med),
            ms(pidfd_med) / ms(med)
        );
    }
    drop(target);
    let mut goals = fdgrab_testkit::bench::Goals::new("get_vs_true");
    goals.at_most("get (pidfd) / /bin/true", pidfd_ratio, 2.0);
    goals.at_most("get --backend ptrace / /bin/true", ptrace_ratio, 3.0);
    goals.at_most("get --backend ptrace p90 / its median", tail, 1.5);
    goals.finish()
}
