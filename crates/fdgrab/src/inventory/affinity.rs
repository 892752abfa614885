//! CPU affinity for the scan threads: one core each.
//!
//! Why pin at all: the scan's threads are woken together when the plan is
//! ready (they start while the calling thread lists `/proc`), and the scheduler
//! does not always spread them. Traced with `perf sched timehist` on the 2-core
//! VM here (`ls --path FILE` over ~90 processes and a 1,000-fd one): in 3 of 7
//! runs the woken thread was placed on the core where the other one was already
//! scanning and preempted it, and the idle core stayed idle for 1.7–3.1 ms — the
//! length of the whole scan — because a thread that ran a moment ago counts as
//! cache-hot and is not pulled to an idle core. Pinned to distinct cores, the
//! threads cannot stack: the same runs took a median 2.81 ms against 3.16 ms,
//! and the slowest tenth 2.99 ms against 4.14 ms.
//!
//! Pinning gives up nothing the scan relies on: its threads claim work one
//! piece at a time (a process, or a range of 64 fds of a large table), so a
//! thread whose core is busy with another program simply claims less, as an
//! unpinned one would. Only threads the scan itself started are pinned; they
//! end with the scan.

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

    /// Pins the calling thread to a core no other thread took: the one it runs
    /// on if that is free (no migration), else the lowest free one. Nothing
    /// happens once every core is taken, or when the kernel refuses
    /// (`sched_setaffinity(2)` under a seccomp filter, or a cpuset changed
    /// meanwhile: `EINVAL`): the thread then runs wherever the scheduler puts
    /// it, as it would unpinned.
    pub(crate) fn pin_this_thread(&self) {
        let core = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            let here = sched_getcpu();
            match free.iter().position(|&c| c == here) {
                Some(i) => free.swap_remove(i),
                None if free.is_empty() => return,
                None => free.remove(0),
            }
        };
        let mut one = CpuSet::new();
        one.set(core);
        if let Err(e) = sched_setaffinity(None, &one) {
            tracing::debug!(core, error = %e, "scan thread not pinned");
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

    /// One thread per core, each pinned to a core of its own among those the
    /// process may use; a thread that comes after every core is taken keeps
    /// the whole set.
    #[test]
    fn each_thread_gets_a_core_of_its_own() {
        let all = allowed_now();
        if all.len() < 2 {
            fdgrab_testkit::skip("pinning needs at least 2 allowed cores");
            return;
        }
        let cores = Cores::allowed();
        assert_eq!(cores.count(), all.len());
        let pinned: Vec<Vec<usize>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..all.len())
                .map(|_| {
                    s.spawn(|| {
                        cores.pin_this_thread();
                        allowed_now()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("join"))
                .collect()
        });
        let mut taken: Vec<usize> = pinned
            .iter()
            .map(|set| {
                assert_eq!(set.len(), 1, "one core per thread: {set:?}");
                set[0]
            })
            .collect();
        taken.sort_unstable();
        assert_eq!(taken, all, "every allowed core, once");
        let late = std::thread::scope(|s| {
            s.spawn(|| {
                cores.pin_this_thread();
                allowed_now()
            })
            .join()
            .expect("join")
        });
        assert_eq!(late, all, "no core left: not pinned");
    }
}
