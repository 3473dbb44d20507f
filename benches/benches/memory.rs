//! Memory per pending job, measured by counting the bytes the allocator hands out while
//! 100,000 jobs are submitted to a snapshot (job slot, name, task groups, queue index entry).
//! Run: `cargo bench -p gantry-benches --bench memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use gantry_benches::{flat, jobs};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards every call to the system allocator unchanged; it only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    const N: usize = 100_000;
    let (mut s, q) = flat(1_000);
    // Build the validated jobs first so only what the snapshot keeps is counted.
    let js = jobs(&q, "pending-job-", N, |b| {
        b.queue("q0").tasks(2).gpus(4).runtime_s(3600.0)
    });
    let before = LIVE.load(Ordering::Relaxed);
    for (i, j) in js.iter().enumerate() {
        s.submit(j, i as u64).expect("submit");
    }
    let after = LIVE.load(Ordering::Relaxed);
    drop(js);
    let per_job = (after - before) as f64 / N as f64;
    println!(
        "memory per pending job: {per_job:.0} bytes ({N} jobs, {} bytes in all)",
        after - before
    );
    assert!(
        per_job <= 1024.0,
        "memory per pending job {per_job:.0} B exceeds 1 KiB"
    );
}
