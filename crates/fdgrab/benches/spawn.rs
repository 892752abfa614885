//! The spawner's own cost: from the call to the child having exec'd `/bin/true`,
//! for fdgrab's spawner (`clone(CLONE_VM|CLONE_VFORK)`, with no fd and with a
//! one-fd plan), std's `Command` (glibc `posix_spawn`, the same kind of child) and
//! std's `Command` with a `pre_exec` closure (which forces a full `fork`; what the
//! CLI used before). Each returns once the exec has happened.
//!
//! fdgrab's spawner and posix_spawn run interleaved, in rotating order. The `fork`
//! rounds run afterwards on their own: a `fork` leaves the parent's pages
//! copy-on-write, and whatever ran next would pay for the faults.
//!
//! Goal: fdgrab's spawner without fds ≤ 1.2× posix_spawn (which is given none
//! either). Exits non-zero when missed.

use fdgrab::spawn::{FdPlan, Spawn};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const ROUNDS: usize = 300;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ours(argv: &[OsString], fd: Option<&OwnedFd>) -> Duration {
    let start = Instant::now();
    let mut spawn = Spawn::new(argv).expect("argv").program("/bin/true");
    if let Some(fd) = fd {
        spawn = spawn.fds(FdPlan::from_pairs([(fd, 3)]).expect("plan"));
    }
    let mut child = spawn.spawn().expect("spawn");
    let took = start.elapsed();
    child.wait().expect("wait");
    took
}

fn std_spawn(fork: bool) -> Duration {
    let start = Instant::now();
    let mut cmd = Command::new("/bin/true");
    if fork {
        // SAFETY: an empty closure; it only makes std fork instead of posix_spawn.
        unsafe { cmd.pre_exec(|| Ok(())) };
    }
    let mut c = cmd.spawn().expect("spawn");
    let took = start.elapsed();
    c.wait().expect("wait");
    took
}

fn main() {
    // A process the size of a real one: fork copies page tables, vfork does not.
    let ballast = vec![1u8; 64 << 20];
    let memfd = rustix::fs::memfd_create("bench", rustix::fs::MemfdFlags::CLOEXEC).expect("memfd");
    let argv = [OsString::from("/bin/true")];
    let mut times: [Vec<Duration>; 3] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..3 {
            let which = (round + k) % 3;
            let t = match which {
                0 => ours(&argv, None),
                1 => ours(&argv, Some(&memfd)),
                _ => std_spawn(false),
            };
            times[which].push(t);
        }
    }
    let mut forks: Vec<Duration> = (0..ROUNDS / 6).map(|_| std_spawn(true)).collect();
    std::hint::black_box(&ballast);
    let [bare, one, posix] = times.map(|mut v| median(&mut v));
    let fork = median(&mut forks);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let ratio = us(bare) / us(posix);
    println!(
        "{ROUNDS} rounds, order rotating ({} fork rounds after); median time until the child has exec'd /bin/true:",
        ROUNDS / 6
    );
    println!(
        "  fdgrab::spawn (clone VM|VFORK)     {:8.1} µs  {ratio:.2}x posix_spawn (goal <= 1.2x)",
        us(bare)
    );
    println!("  fdgrab::spawn, one fd installed    {:8.1} µs", us(one));
    println!("  std Command (posix_spawn)          {:8.1} µs", us(posix));
    println!(
        "  std Command + pre_exec (fork)      {:8.1} µs  {:.1}x fdgrab::spawn",
        us(fork),
        us(fork) / us(bare)
    );
    let mut goals = fdgrab_testkit::bench::Goals::new("spawn");
    goals.at_most("fdgrab::spawn / posix_spawn", ratio, 1.2);
    goals.finish()
}
