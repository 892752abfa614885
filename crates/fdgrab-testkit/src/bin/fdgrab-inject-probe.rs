//! Holds an injection session open on a target for the signal tests:
//! `fdgrab-inject-probe PID SECONDS` attaches, prints `attached`, then keeps running
//! injected `getpid` calls for SECONDS (or until a termination signal is pending),
//! then detaches and prints `finished`. A SIGTERM sent while it runs must take effect
//! only after the target has been restored, i.e. inside `detach`.

use std::io::Write;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(pid), Some(secs)) = (
        args.first().and_then(|p| p.parse().ok()),
        args.get(1).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: fdgrab-inject-probe PID SECONDS");
        std::process::exit(2);
    };
    let target = fdgrab::PidFd::open(pid).expect("pidfd");
    let mut s = fdgrab::inject::Session::attach(&target).expect("attach");
    println!("attached");
    let _ = std::io::stdout().flush();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end && !s.termination_requested() {
        let r = s.syscall(libc::SYS_getpid, &[]).expect("injected getpid");
        assert_eq!(r, pid as i64);
        std::thread::sleep(Duration::from_millis(1));
    }
    s.detach().expect("detach");
    println!("finished");
}
