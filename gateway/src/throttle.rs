//! Throttles for the control thread (single-threaded, no locks): [`Slots`],
//! a counting semaphore that caps concurrent scrapes and polls
//! (`--max-concurrent-scrapes`, 256 by default), and [`WarnLimiter`], which
//! lets at most a few warnings of one kind through per second and counts
//! the rest (so 80,000 unreachable endpoints log a handful of lines, not
//! 80,000).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Shared by the control thread's scrape and poll loops: the concurrency cap
/// and the failure-warning limiter (5 lines a second, the rest counted).
#[derive(Clone)]
pub struct Throttle {
    /// Slots for requests in flight.
    pub slots: Slots,
    /// Failure warnings.
    pub warns: Rc<RefCell<WarnLimiter>>,
    /// Whether connections stay open between requests.
    pub keep_alive: bool,
}

impl Throttle {
    /// `max_in_flight` slots for `endpoints` endpoints: connections stay open
    /// only when every endpoint can hold a slot.
    pub fn new(max_in_flight: usize, endpoints: usize) -> Self {
        Throttle {
            slots: Slots::new(max_in_flight),
            warns: Rc::new(RefCell::new(WarnLimiter::new(5))),
            keep_alive: endpoints <= max_in_flight,
        }
    }

    /// Whether to log a failure warning now; `Some(suppressed since the last)`.
    pub fn warn(&self) -> Option<u64> {
        self.warns.borrow_mut().allow(Instant::now())
    }
}

/// A counting semaphore shared by the tasks of one thread.
#[derive(Clone)]
pub struct Slots {
    inner: Rc<RefCell<SlotsInner>>,
}

struct SlotsInner {
    free: usize,
    waiters: VecDeque<Waker>,
}

/// A held slot; dropping it frees the slot and wakes the next waiter.
pub struct Slot {
    inner: Rc<RefCell<SlotsInner>>,
}

impl Slots {
    /// `n` slots (at least one).
    pub fn new(n: usize) -> Self {
        Slots {
            inner: Rc::new(RefCell::new(SlotsInner {
                free: n.max(1),
                waiters: VecDeque::new(),
            })),
        }
    }

    /// Waits for a free slot (first come, first served). The control loops
    /// never drop a waiting `Acquire`; one dropped while queued would leave a
    /// stale waker that takes one hand-over.
    pub fn acquire(&self) -> Acquire {
        Acquire {
            inner: self.inner.clone(),
            queued: false,
        }
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.inner.borrow().free
    }
}

/// The future of [`Slots::acquire`].
pub struct Acquire {
    inner: Rc<RefCell<SlotsInner>>,
    queued: bool,
}

impl Future for Acquire {
    type Output = Slot;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Slot> {
        let inner = self.inner.clone();
        let mut s = inner.borrow_mut();
        // A newcomer does not jump a queue of waiters.
        if s.free > 0 && (self.queued || s.waiters.is_empty()) {
            s.free -= 1;
            return Poll::Ready(Slot {
                inner: self.inner.clone(),
            });
        }
        s.waiters.push_back(cx.waker().clone());
        self.queued = true;
        Poll::Pending
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.inner.borrow_mut();
        s.free += 1;
        if let Some(w) = s.waiters.pop_front() {
            w.wake();
        }
    }
}

/// Lets `per_second` events through per second; counts the rest.
pub struct WarnLimiter {
    per_second: u32,
    window: Instant,
    passed: u32,
    suppressed: u64,
}

impl WarnLimiter {
    /// A limiter letting `per_second` events through per second.
    pub fn new(per_second: u32) -> Self {
        WarnLimiter {
            per_second,
            window: Instant::now(),
            passed: 0,
            suppressed: 0,
        }
    }

    /// Whether to log this event at `now`; `Some(n)` when it may, with the
    /// number suppressed since the last one let through (to mention).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.passed = 0;
        }
        if self.passed < self.per_second {
            self.passed += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn slots_cap_holders_and_hand_over_in_order() {
        let slots = Slots::new(2);
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(slots.acquire());
        let mut b = Box::pin(slots.acquire());
        let mut c = Box::pin(slots.acquire());
        let Poll::Ready(sa) = a.as_mut().poll(&mut cx) else {
            panic!("a waits")
        };
        let Poll::Ready(_sb) = b.as_mut().poll(&mut cx) else {
            panic!("b waits")
        };
        assert!(c.as_mut().poll(&mut cx).is_pending(), "a third holder");
        assert_eq!(slots.free(), 0);
        drop(sa);
        assert!(
            flag.0.load(std::sync::atomic::Ordering::SeqCst),
            "the waiter is woken"
        );
        let Poll::Ready(_sc) = c.as_mut().poll(&mut cx) else {
            panic!("c still waits")
        };
        assert_eq!(slots.free(), 0);
    }

    #[test]
    fn warnings_are_limited_per_second_and_the_rest_counted() {
        let mut w = WarnLimiter::new(3);
        let t0 = Instant::now();
        let passed = (0..1000).filter(|_| w.allow(t0).is_some()).count();
        assert_eq!(passed, 3);
        assert_eq!(w.allow(t0 + Duration::from_secs(1)), Some(997));
    }
}
