//! The static musl build's heap (docs/packaging.md).
//!
//! musl's own allocator costs nothing to set up, which is most of what a short
//! command such as `get` pays for its heap; but it is slow at many small
//! allocations (`ls` of a 10,000-fd table took 26% longer than with glibc) and at
//! giving memory back from many threads. mimalloc is the opposite: fast once
//! running, but its set-up and first pages cost ~0.25 ms of a `get`. [`Heap`]
//! uses musl's for every command but the ones that allocate a lot, which pick
//! mimalloc with [`Heap::use_mimalloc`] (or [`Heap::use_mimalloc_briefly`]) before
//! their first allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

/// Which allocator serves the process: decided once, at the first allocation at
/// the latest, and never changed (a block must be freed by the one that made it).
static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// `mi_option_purge_delay` in `mi_option_t`, the same number in mimalloc 2 and 3
/// (the bindings name no constant for it; the crate builds mimalloc 3 unless its
/// `v2` feature is on).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The global allocator of the musl build: see the module documentation.
#[derive(Debug)]
pub struct Heap;

impl Heap {
    /// Makes mimalloc the allocator for the rest of the process. Takes effect only
    /// before the first allocation; returns whether it did.
    ///
    /// Freed memory then goes back to the kernel at once rather than a second
    /// later (mimalloc 3's default delay): the agent's clients read documents of
    /// up to 1 MiB each, and 32 at once left it ~90 MB larger for good.
    pub fn use_mimalloc() -> bool {
        let chosen = CHOICE
            .compare_exchange(UNDECIDED, MIMALLOC, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if chosen {
            // SAFETY: stores an integer in mimalloc's option table.
            unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
        }
        chosen
    }

    /// [`Heap::use_mimalloc`] for a command that runs briefly (`ls`): freed
    /// memory stays until the exit (mimalloc's own delay). Such a command calls
    /// [`Heap::forgo_huge_pages`] once it will start no other program.
    pub fn use_mimalloc_briefly() -> bool {
        CHOICE
            .compare_exchange(UNDECIDED, MIMALLOC, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Takes no more transparent huge pages in this process, where mimalloc
    /// serves it. mimalloc reserves its heap as one 1 GiB mapping, so where THP
    /// is `always` (or through the `MADV_HUGEPAGE` it asks for) the first touch
    /// of each 2 MiB of it zeroes a whole huge page, and each purge of 64 KiB in
    /// one splits it, with a TLB flush on every core the threads ran on: a
    /// quarter of a system-wide `ls --path`'s time (perf: `clear_page_erms`,
    /// `__split_huge_pmd`, `smp_call_function_many_cond`), which made the static
    /// build 20% slower than glibc's. The setting outlives `execve` in
    /// children: call it only once the command will start no program (`ls
    /// --user` runs `getent` first).
    pub fn forgo_huge_pages() {
        if CHOICE.load(Ordering::Relaxed) == MIMALLOC {
            // Refused (a seccomp filter, an old kernel): huge pages cost time,
            // never correctness.
            let _ = rustix::thread::disable_transparent_huge_pages(true);
        }
    }

    fn mimalloc() -> bool {
        match CHOICE.load(Ordering::Relaxed) {
            UNDECIDED => {
                // The first allocation decides for musl's, unless a racing
                // `use_mimalloc` won (then that answer stands).
                let _ =
                    CHOICE.compare_exchange(UNDECIDED, SYSTEM, Ordering::SeqCst, Ordering::SeqCst);
                CHOICE.load(Ordering::SeqCst) == MIMALLOC
            }
            c => c == MIMALLOC,
        }
    }
}

// SAFETY: every call goes to one allocator, the same for the life of the process
// (`CHOICE` is fixed before the first allocation), so each block is freed and
// resized by the allocator that made it; both uphold `GlobalAlloc`'s contract.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if Self::mimalloc() {
                mimalloc::MiMalloc.alloc(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            if Self::mimalloc() {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            } else {
                System.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator (see above).
        unsafe {
            if Self::mimalloc() {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the same allocator (see above).
        unsafe {
            if Self::mimalloc() {
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
            } else {
                System.realloc(ptr, layout, new_size)
            }
        }
    }
}
