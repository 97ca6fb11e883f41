//! A counting global allocator: live heap bytes and allocation counts of
//! the whole bench process, for "client memory per held lock" and
//! "allocations per cycle".
//!
//! It wraps the system allocator and adds two relaxed atomic adds per call
//! on a per-thread shard (a cache line of its own), so the two worker
//! threads do not bounce one counter between cores. Every subject of a
//! scenario pays the same small toll.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

const SHARDS: usize = 16;

#[repr(align(64))]
struct Shard {
    bytes: AtomicIsize,
    allocs: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Shard = Shard {
    bytes: AtomicIsize::new(0),
    allocs: AtomicUsize::new(0),
};

static SHARD_COUNTERS: [Shard; SHARDS] = [EMPTY; SHARDS];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    // Const-initialised, no destructor: safe to touch inside the allocator.
    static MY_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard() -> &'static Shard {
    let index = MY_SHARD
        .try_with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
                s.set(i);
            }
            i
        })
        // A thread being torn down: any shard will do.
        .unwrap_or(0);
    &SHARD_COUNTERS[index]
}

/// The system allocator, counted.
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counters
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let s = shard();
            s.bytes.fetch_add(layout.size() as isize, Relaxed);
            s.allocs.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shard().bytes.fetch_sub(layout.size() as isize, Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            let s = shard();
            s.bytes.fetch_add(layout.size() as isize, Relaxed);
            s.allocs.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let s = shard();
            s.bytes
                .fetch_add(new_size as isize - layout.size() as isize, Relaxed);
            s.allocs.fetch_add(1, Relaxed);
        }
        p
    }
}

/// A reading of the counters.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    /// Heap bytes live (requested sizes, not the allocator's rounding).
    pub live_bytes: isize,
    /// Allocations (and reallocations) so far.
    pub allocs: usize,
}

pub fn snapshot() -> Snapshot {
    let mut out = Snapshot {
        live_bytes: 0,
        allocs: 0,
    };
    for s in &SHARD_COUNTERS {
        out.live_bytes += s.bytes.load(Relaxed);
        out.allocs += s.allocs.load(Relaxed);
    }
    out
}

/// Resident set size of this process (`VmRSS` in /proc/self/status).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
