//! The spawner's own cost: from the call to the child having exec'd `/bin/true`,
//! for fdgrab's spawner (`clone(CLONE_VM|CLONE_VFORK)`, with a one-fd plan), std's
//! `Command` (glibc `posix_spawn`, the same kind of child) and std's `Command` with
//! a `pre_exec` closure (which forces a full `fork`; what the CLI used before).
//! Each returns once the exec has happened. Rounds are interleaved; medians.
//!
//! Goal: fdgrab's spawner ≤ 1.2× posix_spawn. Exits non-zero when missed.

use fdgrab::spawn::{FdPlan, Spawn};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 300;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // A process the size of a real one: fork copies page tables, vfork does not.
    let ballast = vec![1u8; 64 << 20];
    let memfd = rustix::fs::memfd_create("bench", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    let argv = [OsString::from("/bin/true")];
    let (mut ours, mut posix, mut fork) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut child = Spawn::new(&argv)
            .expect("argv")
            .program("/bin/true")
            .fds(FdPlan::from_pairs([(&memfd, 3)]).expect("plan"))
            .spawn()
            .expect("spawn");
        ours.push(start.elapsed());
        child.wait().expect("wait");

        let start = Instant::now();
        let mut c = Command::new("/bin/true").spawn().expect("posix_spawn");
        posix.push(start.elapsed());
        c.wait().expect("wait");

        let start = Instant::now();
        let mut cmd = Command::new("/bin/true");
        // SAFETY: an empty closure; it only makes std fork instead of posix_spawn.
        unsafe { cmd.pre_exec(|| Ok(())) };
        let mut c = cmd.spawn().expect("fork");
        fork.push(start.elapsed());
        c.wait().expect("wait");
    }
    std::hint::black_box(&ballast);
    let (o, p, f) = (median(&mut ours), median(&mut posix), median(&mut fork));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ratio = us(o) / us(p);
    println!("{ROUNDS} interleaved rounds, median time until the child has exec'd /bin/true:");
    println!(
        "  fdgrab::spawn (clone VM|VFORK, 1 fd)  {:8.1} µs  {ratio:.2}x posix_spawn (goal <= 1.2x)",
        us(o)
    );
    println!("  std Command (posix_spawn)             {:8.1} µs", us(p));
    println!(
        "  std Command + pre_exec (fork)         {:8.1} µs  {:.2}x fdgrab::spawn",
        us(f),
        us(f) / us(o)
    );
    if ratio > 1.2 {
        eprintln!("goal missed: fdgrab::spawn is {ratio:.2}x posix_spawn, goal 1.2x");
        std::process::exit(1);
    }
}
