//! What the agent pays for a read it can kill: a sockaddr-sized copy out of
//! another thread's memory, handed to the calling thread's reader process
//! (`clone(CLONE_VM)`, kept, pinned to the thread's CPU, killed and reaped
//! past a deadline), against the same `process_vm_readv` made in
//! the calling thread, as every read of a container that never stalled is.
//! Interleaved rounds of 1,000 reads, medians.
//!
//! Goal: the killable read ≤ 20× the in-thread one (kept and pinned it is
//! 6.5×; a reader started per read was 41–51×, and pushed a victim's p99 to
//! 7–63× quiet once every container read killably). It is the price a container
//! that once stalled a read (or every container, once 16 workers are given up
//! agent-wide) pays per bind; a bare notify round trip is about 4 µs here, so
//! this bounds how slow those binds get, not the common path.

use std::time::{Duration, Instant};

const ROUNDS: usize = 21;
const READS: u32 = 1_000;

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut goals = fdgrab_testkit::bench::Goals::new("killable_read");
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    let src = [0x11u8; 16];
    let addr = src.as_ptr() as u64;
    let (mut thread, mut killable) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..READS {
            let mut buf = [0u8; 16];
            fdgrab::fuzzing::in_thread_read(tid, addr, &mut buf).expect("in-thread read");
        }
        thread.push(t.elapsed() / READS);
        let t = Instant::now();
        for _ in 0..READS {
            let mut buf = [0u8; 16];
            let deadline = Instant::now() + Duration::from_secs(5);
            fdgrab::fuzzing::killable_read(tid, addr, &mut buf, deadline).expect("killable read");
            assert_eq!(buf, src);
        }
        killable.push(t.elapsed() / READS);
    }
    let (t, k) = (median(&mut thread), median(&mut killable));
    println!("{ROUNDS} interleaved rounds of {READS} reads of 16 bytes, medians:");
    println!("  process_vm_readv in this thread:   {t:?}");
    println!("  in a killable reader process:      {k:?}");
    goals.at_most(
        "killable read / in-thread read",
        k.as_secs_f64() / t.as_secs_f64(),
        20.0,
    );
    goals.finish()
}
