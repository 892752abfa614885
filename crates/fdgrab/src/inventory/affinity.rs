//! CPU affinity for the scan threads: a thread keeps the core it starts on.
//!
//! Why pin at all: the scan's threads are woken together when the plan is
//! ready (they start while the calling thread lists `/proc`), and the scheduler
//! does not always spread them. Traced with `perf sched timehist` on the 2-core
//! VM here (`ls --path FILE` over ~90 processes and a 1,000-fd one): in 3 of 7
//! runs the woken thread was placed on the core where the other one was already
//! scanning and preempted it, and the idle core stayed idle for 1.7–3.1 ms — the
//! length of the whole scan — because a thread that ran a moment ago counts as
//! cache-hot and is not pulled to an idle core. Pinned to the distinct cores
//! they started on, the threads cannot stack: the same runs took a median
//! 2.81 ms against 3.16 ms, and the slowest tenth 2.99 ms against 4.14 ms.
//!
//! A thread is pinned only to the core it is running on, and only if no other
//! thread of the scan took it; otherwise it is left to the scheduler. Moving it
//! to a free core instead (the first version) was worse when that core was
//! busy with another program: the scheduler had started both threads on the
//! other core for that reason, the moved thread waited 4 ms behind the other
//! program there, and the run waited for it although the first thread had done
//! all the work meanwhile (traced the same way).
//!
//! Pinning gives up nothing the scan relies on: its threads claim work one
//! piece at a time (a process, or a range of 64 fds of a large table), so a
//! thread whose core is busy with another program simply claims less, as an
//! unpinned one would. What it does give up: a pinned thread cannot flee its
//! core, so one held by a real-time busy loop there holds its current piece
//! until the kernel's real-time throttling lets it run (cores isolated from
//! the scheduler are outside the process's affinity and never chosen). Only
//! threads the scan itself started are pinned; they end with the scan.

use rustix::thread::{sched_getaffinity, sched_getcpu, sched_setaffinity, CpuSet};
use std::sync::Mutex;

/// The cores this process may run on, handed out one per thread.
pub(crate) struct Cores {
    /// Not yet taken by a thread.
    free: Mutex<Vec<usize>>,
    count: usize,
}

impl Cores {
    /// The process's allowed cores (`sched_getaffinity(2)`; one core if that
    /// fails).
    pub(crate) fn allowed() -> Self {
        let free: Vec<usize> = sched_getaffinity(None)
            .map(|set| (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
            .unwrap_or_default();
        Cores {
            count: free.len().max(1),
            free: Mutex::new(free),
        }
    }

    /// How many cores: 1 at least.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Pins the calling thread to the core it runs on, unless another thread
    /// took that core: the core pinned to, or `None` when the thread was left
    /// as it was (its core taken, or the kernel refused: `sched_setaffinity(2)`
    /// under a seccomp filter, or a cpuset changed meanwhile, `EINVAL`); it then
    /// runs wherever the scheduler puts it, as it would unpinned.
    pub(crate) fn pin_this_thread(&self) -> Option<usize> {
        let core = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            let here = sched_getcpu();
            let i = free.iter().position(|&c| c == here)?;
            free.swap_remove(i)
        };
        let mut one = CpuSet::new();
        one.set(core);
        match sched_setaffinity(None, &one) {
            Ok(()) => Some(core),
            Err(e) => {
                tracing::debug!(core, error = %e, "scan thread not pinned");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed_now() -> Vec<usize> {
        let set = sched_getaffinity(None).expect("sched_getaffinity");
        (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect()
    }

    /// Runs `f` on a new thread whose affinity is first set to `cores`.
    fn on(
        cores: &[usize],
        f: impl FnOnce() -> Option<usize> + Send,
    ) -> (Option<usize>, Vec<usize>) {
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut set = CpuSet::new();
                cores.iter().for_each(|&c| set.set(c));
                sched_setaffinity(None, &set).expect("sched_setaffinity");
                let pinned = f();
                (pinned, allowed_now())
            })
            .join()
            .expect("join")
        })
    }

    /// A thread is pinned to the core it runs on while that core is free; a
    /// second thread on a taken core is left alone (never moved to another
    /// core); each core is handed out once.
    #[test]
    fn a_thread_keeps_its_own_core_and_a_taken_core_is_not_shared() {
        let all = allowed_now();
        if all.len() < 2 {
            fdgrab_testkit::skip("pinning needs at least 2 allowed cores");
            return;
        }
        let (c0, c1) = (all[0], all[1]);
        let cores = Cores::allowed();
        assert_eq!(cores.count(), all.len());
        assert_eq!(on(&[c0], || cores.pin_this_thread()), (Some(c0), vec![c0]));
        // c0 is taken: not pinned (its mask stays the one it had) ...
        assert_eq!(on(&[c0], || cores.pin_this_thread()), (None, vec![c0]));
        // ... and a thread that may run anywhere either gets the free core it
        // runs on, or stays free to run anywhere.
        let (pinned, mask) = on(&all, || cores.pin_this_thread());
        match pinned {
            Some(c) => {
                assert_ne!(c, c0, "c0 handed out twice");
                assert_eq!(mask, vec![c]);
            }
            None => assert_eq!(mask, all),
        }
        assert_eq!(
            on(&[c1], || cores.pin_this_thread()).0.is_some(),
            pinned != Some(c1)
        );
    }
}
