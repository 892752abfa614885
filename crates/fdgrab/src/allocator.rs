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
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// `mi_option_destroy_on_exit` in mimalloc 3's `mi_option_t` (also 22 in
/// mimalloc 2). Above 1, mimalloc does nothing at exit.
pub const MI_OPTION_DESTROY_ON_EXIT: libmimalloc_sys::mi_option_t = 22;

/// `mi_option_show_stats` and `mi_option_verbose`: whether mimalloc was asked to
/// report at exit (`MIMALLOC_SHOW_STATS`, `MIMALLOC_VERBOSE`).
const MI_OPTION_SHOW_STATS: libmimalloc_sys::mi_option_t = 1;
const MI_OPTION_VERBOSE: libmimalloc_sys::mi_option_t = 2;

/// `mi_option_allow_thp` in mimalloc 3's `mi_option_t` (37 in mimalloc 2; the
/// bindings name no constant for it). A test reads mimalloc's own name for it
/// from its verbose start-up report, so a change of version cannot silently
/// set some other option.
pub const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

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
    /// memory stays until the exit (mimalloc's own delay), and the process takes
    /// no transparent huge pages.
    ///
    /// mimalloc reserves its heap as one 1 GiB mapping and asks for huge pages
    /// on it (`MADV_HUGEPAGE`), so where THP is `madvise` or `always` the first
    /// touch of each 2 MiB of it zeroes a whole huge page, and each purge of
    /// 64 KiB in one splits it, with a TLB flush on every core the threads ran
    /// on. perf showed `clear_page_erms` at 12% of a system-wide `ls --path`;
    /// turning THP off only once the command was under way (as this build did
    /// before) came after the first huge page was already zeroed, 0.26 ms of a
    /// 1.5 ms command. With `allow_thp` off and `PR_SET_THP_DISABLE` set
    /// before its first allocation, mimalloc asks for no huge pages and the
    /// kernel gives none. `PR_SET_THP_DISABLE` outlives `execve`: the one program `ls` may start is
    /// `getent` (for `--user`), a lookup that lives for milliseconds and loses
    /// nothing by running on small pages.
    pub fn use_mimalloc_briefly() -> bool {
        let chosen = CHOICE
            .compare_exchange(UNDECIDED, MIMALLOC, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if chosen {
            // mimalloc reads this option as it starts (to set `PR_SET_THP_DISABLE`)
            // and again at each mapping it makes (to advise it): the first may
            // already be past, hence the prctl of our own, which also covers THP
            // `always`, where no advice is needed.
            // SAFETY: stores an integer in mimalloc's option table.
            unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
            // Refused (a seccomp filter, an old kernel): huge pages cost time,
            // never correctness.
            let _ = rustix::thread::disable_transparent_huge_pages(true);
            // At exit a statically linked mimalloc collects its heap, which
            // gives every free page back with `madvise(MADV_DONTNEED)`: 6–17
            // calls an `ls`, each a TLB flush, for memory the exit frees anyway
            // (~20 µs, 3% of a small `ls PID`). Unless its report was asked
            // for, it is told to do nothing at exit.
            // SAFETY: reads and stores integers in mimalloc's option table.
            unsafe {
                if !libmimalloc_sys::mi_option_is_enabled(MI_OPTION_SHOW_STATS)
                    && !libmimalloc_sys::mi_option_is_enabled(MI_OPTION_VERBOSE)
                {
                    libmimalloc_sys::mi_option_set(MI_OPTION_DESTROY_ON_EXIT, 2);
                }
            }
        }
        chosen
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
