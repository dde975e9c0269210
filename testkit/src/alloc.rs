//! A counting global allocator for the no-allocation tests.
//!
//! A test binary installs it with
//! `#[global_allocator] static GLOBAL: Counting = Counting;` and reads either
//! [`Counting::total`] (allocations and reallocations by every thread since start:
//! the gateway's shards run on their own threads) or [`Counting::count`]
//! (allocations by the calling thread while a closure runs: unaffected by the other
//! tests libtest runs in parallel). Deallocations are not counted.
//!
//! [`Counting::start_trace`]`(n)` records a backtrace (7 frames, std/alloc frames
//! left out) of each of the next `n` allocations of any thread, to find where an
//! allocation regression comes from; the tracer's own allocations are not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The counting allocator: forwards to [`System`] and counts.
pub struct Counting;

static TOTAL: AtomicU64 = AtomicU64::new(0);
/// Allocations still to trace.
static TRACE_LEFT: AtomicU64 = AtomicU64::new(0);
#[allow(clippy::disallowed_types)] // a test-only debugging aid, off the data path
static TRACES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    /// Allocations by this thread.
    static THREAD: Cell<u64> = const { Cell::new(0) };
    /// Set while this thread records a trace (whose own allocations are not traced).
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

impl Counting {
    /// Allocations and reallocations by every thread since the process started.
    pub fn total() -> u64 {
        TOTAL.load(Ordering::Relaxed)
    }

    /// Allocations and reallocations by the calling thread since it started.
    pub fn on_this_thread() -> u64 {
        THREAD.with(Cell::get)
    }

    /// Run `f`; its result and how many allocations the calling thread made meanwhile.
    pub fn count<T>(f: impl FnOnce() -> T) -> (T, u64) {
        let before = Self::on_this_thread();
        let out = f();
        (out, Self::on_this_thread() - before)
    }

    /// Record a backtrace of each of the next `n` allocations (any thread).
    pub fn start_trace(n: u64) {
        TRACE_LEFT.store(n, Ordering::Relaxed);
    }

    /// Stop tracing; the backtraces recorded since [`Counting::start_trace`].
    pub fn take_traces() -> Vec<String> {
        TRACE_LEFT.store(0, Ordering::Relaxed);
        TRACES
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }
}

fn counted(size: usize) {
    // The tracer's own allocations (backtrace, formatting) are not the test's.
    if IN_TRACE.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    TOTAL.fetch_add(1, Ordering::Relaxed);
    // `try_with`: a thread being torn down may still allocate; it is then counted in
    // the total only (the const-initialised cells have no destructor, so this is moot
    // in practice).
    let _ = THREAD.try_with(|c| c.set(c.get() + 1));
    if TRACE_LEFT.load(Ordering::Relaxed) == 0 {
        return;
    }
    if TRACE_LEFT
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
        && IN_TRACE.try_with(|t| t.set(true)).is_ok()
    {
        record(size);
        let _ = IN_TRACE.try_with(|t| t.set(false));
    }
}

/// Push a trimmed backtrace of the current allocation.
fn record(size: usize) {
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let frames: Vec<&str> = bt
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .filter(|l| {
            !["std::", "alloc::", "core::", "backtrace", "__rust"]
                .iter()
                .any(|p| l.contains(p))
        })
        .take(7)
        .collect();
    if let Ok(mut t) = TRACES.lock() {
        t.push(format!("{size} bytes\n{}", frames.join("\n")));
    }
}

// SAFETY: every method forwards the caller's arguments unchanged to `System`, which
// upholds the `GlobalAlloc` contract; counting touches only atomics and
// const-initialised thread-locals, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        // SAFETY: the caller's layout, forwarded (same contract as ours).
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::Counting;

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    #[test]
    fn counts_the_calling_threads_allocations() {
        let (v, n) = Counting::count(|| std::hint::black_box(vec![1u8; 100]));
        assert_eq!(v.len(), 100);
        assert_eq!(n, 1);
        let (_, n) = Counting::count(|| std::hint::black_box(1 + 1));
        assert_eq!(n, 0);
        let before = Counting::total();
        let other =
            std::thread::spawn(|| Counting::count(|| std::hint::black_box(vec![0u64; 8])).1)
                .join()
                .unwrap();
        assert_eq!(other, 1);
        assert!(Counting::total() > before);
    }

    #[test]
    fn traces_the_next_allocations() {
        // Room for allocations of other threads (the test harness, a parallel test).
        Counting::start_trace(1000);
        drop(std::hint::black_box(vec![0u8; 4321]));
        let traces = Counting::take_traces();
        assert!(
            traces.iter().any(|t| t.starts_with("4321 bytes")),
            "{traces:?}"
        );
    }
}
