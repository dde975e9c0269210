//! Microsecond-precise timers for one worker thread: the one seam through which the
//! worker's tasks wait for time.
//!
//! monoio's timer wheel ticks in whole milliseconds and rounds every sleep up to the
//! next tick, so an open-loop request sent on it would leave up to 1 ms late, and
//! latency measured from the intended start would carry that error. Instead, every
//! task of a worker waits through [`Timers`]: one slot per task (at most one armed
//! deadline each), a min-heap of deadlines, and one [`Timers::drive`] task that
//! fires them. When the nearest deadline is more than [`SPIN`] (2 ms) away, the
//! driver sleeps on monoio's wheel until `SPIN` before it (the thread parks in the
//! kernel and handles I/O); closer than that, it yields to the runtime on every
//! turn (the runtime keeps submitting and reaping I/O between turns) and fires the
//! deadline within a few microseconds of it.
//!
//! Yielding needs care: monoio puts a task that wakes itself while running at the
//! *front* of its run queue, so a self-waking spinner would starve every other
//! task of the thread until it stopped spinning (every I/O completion would wait
//! for the next deadline). The driver therefore spins in a ping-pong with a helper
//! task: each wakes the other, and a task woken from outside goes to the back of
//! the queue, behind the connection tasks. Because monoio only runs its wheel
//! when the runtime parks, which a saturated runtime may not do for a long time,
//! tasks also fire due deadlines themselves after each request
//! ([`Timers::fire_due`]). An open loop above ≈ 500 requests/s
//! per thread therefore keeps its thread busy; a closed loop (only far-away
//! timeouts) does not.
//!
//! The bookkeeping ([`Timers::arm`], [`Timers::fire`], [`Timers::next_deadline`])
//! takes `now` from the caller and is unit-tested on made-up instants; the heap
//! holds at most about one entry per slot (a re-armed slot reuses its entry).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::{poll_fn, Future};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How close a deadline must be for the driver to spin instead of sleeping.
pub const SPIN: Duration = Duration::from_millis(2);

/// A deadline passed before the future it guarded completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

#[derive(Debug, Default)]
struct Slot {
    /// The live deadline, if any.
    armed: Option<Instant>,
    /// The earliest heap entry for this slot, if any.
    queued: Option<Instant>,
    /// The armed deadline passed (cleared by the next arm or disarm).
    fired: bool,
    waker: Option<Waker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DriverState {
    /// No deadline: waits for an arm.
    Idle,
    /// Sleeping on monoio's wheel toward this deadline.
    Sleeping(Instant),
    /// Yielding on every turn.
    Spinning,
}

#[derive(Debug)]
struct Inner {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
    slots: Vec<Slot>,
    driver: Option<Waker>,
    /// The spin helper's waker (see the module docs).
    helper: Option<Waker>,
    state: DriverState,
}

/// A worker's timers (cheap to clone: all clones share the same state).
#[derive(Debug, Clone)]
pub struct Timers {
    inner: Rc<RefCell<Inner>>,
}

impl Timers {
    /// Timers with `slots` slots, numbered `0..slots`.
    pub fn new(slots: usize) -> Timers {
        Timers {
            inner: Rc::new(RefCell::new(Inner {
                heap: BinaryHeap::with_capacity(slots * 2),
                slots: (0..slots).map(|_| Slot::default()).collect(),
                driver: None,
                helper: None,
                state: DriverState::Idle,
            })),
        }
    }

    /// Arm `slot` for `deadline` (replacing its previous deadline).
    pub fn arm(&self, slot: usize, deadline: Instant) {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let Some(s) = inner.slots.get_mut(slot) else {
            return;
        };
        s.armed = Some(deadline);
        s.fired = false;
        if s.queued.is_none_or(|q| deadline < q) {
            s.queued = Some(deadline);
            inner.heap.push(Reverse((deadline, slot)));
        }
        let wake = match inner.state {
            DriverState::Idle => true,
            DriverState::Sleeping(toward) => deadline < toward,
            DriverState::Spinning => false,
        };
        if wake {
            if let Some(w) = &inner.driver {
                w.wake_by_ref();
            }
        }
    }

    /// Disarm `slot` (its heap entry, if any, is dropped lazily).
    pub fn disarm(&self, slot: usize) {
        if let Some(s) = self.inner.borrow_mut().slots.get_mut(slot) {
            s.armed = None;
            s.fired = false;
            s.waker = None;
        }
    }

    /// Whether `slot`'s deadline fired; if not, remember `cx`'s waker for it.
    fn poll_fired(&self, slot: usize, cx: &mut Context<'_>) -> bool {
        let mut inner = self.inner.borrow_mut();
        let Some(s) = inner.slots.get_mut(slot) else {
            return true;
        };
        if s.fired {
            return true;
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        false
    }

    /// Fire every armed deadline at or before `now` (waking its task); returns how
    /// many fired.
    pub fn fire(&self, now: Instant) -> usize {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        let mut fired = 0;
        while let Some(&Reverse((d, slot))) = inner.heap.peek() {
            if d > now {
                break;
            }
            inner.heap.pop();
            let Some(s) = inner.slots.get_mut(slot) else {
                continue;
            };
            if s.queued == Some(d) {
                s.queued = None;
            }
            match s.armed {
                Some(a) if a <= now => {
                    s.armed = None;
                    s.fired = true;
                    fired += 1;
                    if let Some(w) = s.waker.take() {
                        w.wake();
                    }
                }
                Some(a) if s.queued.is_none() => {
                    s.queued = Some(a);
                    inner.heap.push(Reverse((a, slot)));
                }
                _ => {}
            }
        }
        fired
    }

    /// Fire due deadlines, if any (cheap when none is due: one heap peek). Busy
    /// tasks call it with the time they already read: monoio runs its timer wheel
    /// only when the runtime parks, which a saturated closed loop may not do for
    /// seconds, so without this the driver's wheel sleep could fire late.
    pub fn fire_due(&self, now: Instant) -> usize {
        let due = self
            .inner
            .borrow()
            .heap
            .peek()
            .is_some_and(|Reverse((d, _))| *d <= now);
        if due {
            self.fire(now)
        } else {
            0
        }
    }

    /// The nearest live deadline (stale heap entries are dropped or moved to their
    /// slot's current deadline on the way).
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut guard = self.inner.borrow_mut();
        let inner = &mut *guard;
        while let Some(&Reverse((d, slot))) = inner.heap.peek() {
            let Some(s) = inner.slots.get_mut(slot) else {
                inner.heap.pop();
                continue;
            };
            match s.armed {
                Some(a) if a <= d => return Some(a),
                live => {
                    inner.heap.pop();
                    if s.queued == Some(d) {
                        s.queued = None;
                    }
                    if let (Some(a), None) = (live, s.queued) {
                        s.queued = Some(a);
                        inner.heap.push(Reverse((a, slot)));
                    }
                }
            }
        }
        None
    }

    /// Entries in the heap (live and stale).
    pub fn heap_len(&self) -> usize {
        self.inner.borrow().heap.len()
    }

    /// Wait until `deadline` on `slot` (returns at once if it has passed).
    pub async fn sleep_until(&self, slot: usize, deadline: Instant) {
        if Instant::now() >= deadline {
            return;
        }
        self.arm(slot, deadline);
        let _disarm = Disarm { timers: self, slot };
        poll_fn(|cx| {
            if self.poll_fired(slot, cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    /// Run `fut` until it completes or `deadline` passes (then `fut` is dropped,
    /// cancelling its I/O, and `Err(Elapsed)` returned).
    pub async fn timeout<F: Future>(
        &self,
        slot: usize,
        deadline: Instant,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        let mut fut = std::pin::pin!(fut);
        self.arm(slot, deadline);
        let _disarm = Disarm { timers: self, slot };
        poll_fn(|cx| {
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            if self.poll_fired(slot, cx) {
                Poll::Ready(Err(Elapsed))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// The driver task: fires deadlines, sleeping on monoio's wheel while the next
    /// one is far and spinning when it is near. Runs until the runtime stops; must
    /// run inside a monoio runtime (it spawns its spin helper).
    pub async fn drive(self) {
        monoio::spawn(self.clone().spin_helper());
        let mut sleep = Box::pin(monoio::time::sleep(Duration::from_secs(3600)));
        let mut sleeping_to: Option<Instant> = None;
        poll_fn(|cx| loop {
            let now = Instant::now();
            self.fire(now);
            let next = self.next_deadline();
            let mut inner = self.inner.borrow_mut();
            match &inner.driver {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => inner.driver = Some(cx.waker().clone()),
            }
            match next {
                None => {
                    inner.state = DriverState::Idle;
                    return Poll::<()>::Pending;
                }
                Some(d) if d.saturating_duration_since(now) <= SPIN => {
                    inner.state = DriverState::Spinning;
                    // Not `cx.waker().wake_by_ref()`: see the module docs. Before
                    // the helper first ran, it finds `Spinning` and wakes us.
                    if let Some(h) = inner.helper.take() {
                        h.wake();
                    }
                    return Poll::Pending;
                }
                Some(d) => {
                    inner.state = DriverState::Sleeping(d);
                    drop(inner);
                    let wake_at = d.checked_sub(SPIN).unwrap_or(d);
                    if sleeping_to != Some(wake_at) {
                        sleep
                            .as_mut()
                            .reset(monoio::time::Instant::from_std(wake_at));
                        sleeping_to = Some(wake_at);
                    }
                    match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => sleeping_to = None,
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        })
        .await
    }
}

impl Timers {
    /// The driver's partner while it spins: woken by the driver, wakes it back (so
    /// both re-enter monoio's run queue at the back).
    async fn spin_helper(self) {
        poll_fn(|cx| {
            let mut inner = self.inner.borrow_mut();
            if inner.state == DriverState::Spinning {
                if let Some(d) = &inner.driver {
                    d.wake_by_ref();
                }
            }
            match &inner.helper {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => inner.helper = Some(cx.waker().clone()),
            }
            Poll::<()>::Pending
        })
        .await
    }
}

struct Disarm<'a> {
    timers: &'a Timers,
    slot: usize,
}

impl Drop for Disarm<'_> {
    fn drop(&mut self) {
        self.timers.disarm(self.slot);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn fires_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let timers = Timers::new(3);
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        timers.arm(0, t0 + ms(30));
        timers.arm(1, t0 + ms(10));
        timers.arm(2, t0 + ms(20));
        for slot in 0..3 {
            assert!(!timers.poll_fired(slot, &mut cx));
        }
        assert_eq!(timers.next_deadline(), Some(t0 + ms(10)));
        assert_eq!(timers.fire(t0 + ms(5)), 0);
        assert_eq!(timers.fire(t0 + ms(20)), 2);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(timers.poll_fired(1, &mut cx) && timers.poll_fired(2, &mut cx));
        assert!(!timers.poll_fired(0, &mut cx));
        assert_eq!(timers.next_deadline(), Some(t0 + ms(30)));
        assert_eq!(timers.fire_due(t0 + ms(29)), 0);
        assert_eq!(timers.fire_due(t0 + ms(30)), 1);
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.heap_len(), 0);
    }

    #[test]
    fn disarm_and_rearm_keep_the_heap_small() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let timers = Timers::new(1);
        // A connection arms a 10 s timeout per request, and requests complete fast:
        // later (larger) deadlines reuse the queued entry instead of piling up.
        for i in 0..1000u64 {
            timers.arm(0, t0 + s(10) + Duration::from_micros(i));
            timers.disarm(0);
        }
        assert_eq!(timers.heap_len(), 1);
        assert_eq!(timers.next_deadline(), None, "disarmed: nothing live");
        assert_eq!(timers.heap_len(), 0);

        timers.arm(0, t0 + s(10));
        timers.arm(0, t0 + s(20)); // later: entry at 10 s stays, moved on demand
        assert_eq!(timers.heap_len(), 1);
        assert_eq!(timers.next_deadline(), Some(t0 + s(20)));
        assert_eq!(timers.fire(t0 + s(15)), 0);
        timers.arm(0, t0 + s(5)); // earlier than the queued entry: a new one
        assert_eq!(timers.next_deadline(), Some(t0 + s(5)));
        assert_eq!(timers.fire(t0 + s(5)), 1);
        assert_eq!(timers.next_deadline(), None);
        assert_eq!(timers.fire(t0 + s(100)), 0);
    }

    #[test]
    fn a_stale_entry_reaching_its_time_requeues_the_live_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let timers = Timers::new(2);
        timers.arm(0, t0 + ms(10));
        timers.arm(0, t0 + ms(50));
        timers.arm(1, t0 + ms(20));
        // At 30 ms the 10 ms entry is stale (slot 0 now wants 50 ms): no fire for 0.
        assert_eq!(timers.fire(t0 + ms(30)), 1);
        assert_eq!(timers.next_deadline(), Some(t0 + ms(50)));
        assert_eq!(timers.fire(t0 + ms(50)), 1);
    }

    #[test]
    fn arming_wakes_an_idle_or_later_sleeping_driver() {
        let t0 = Instant::now();
        let timers = Timers::new(2);
        let (count, w) = waker();
        {
            let mut inner = timers.inner.borrow_mut();
            inner.driver = Some(w);
            inner.state = DriverState::Sleeping(t0 + Duration::from_secs(1));
        }
        timers.arm(0, t0 + Duration::from_secs(2));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "later than the target");
        timers.arm(1, t0 + Duration::from_millis(500));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "earlier: driver woken");
        timers.inner.borrow_mut().state = DriverState::Idle;
        timers.arm(1, t0 + Duration::from_secs(3));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    struct PingPong {
        turn: usize,
        wakers: [Option<Waker>; 2],
    }

    /// Take turns with the other player `rounds` times; player 0 also keeps a
    /// deadline 1.5 ms ahead armed (so the driver spins) and counts how often it
    /// fired before being re-armed.
    async fn player(
        state: Rc<RefCell<PingPong>>,
        me: usize,
        rounds: u32,
        keep: Option<(Timers, Rc<std::cell::Cell<u32>>)>,
    ) {
        for _ in 0..rounds {
            poll_fn(|cx| {
                let mut s = state.borrow_mut();
                if s.turn == me {
                    Poll::Ready(())
                } else {
                    s.wakers[me] = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            if let Some((timers, fired)) = &keep {
                if timers.inner.borrow().slots[0].fired {
                    fired.set(fired.get() + 1);
                }
                timers.arm(0, Instant::now() + Duration::from_micros(1500));
            }
            let mut s = state.borrow_mut();
            s.turn = 1 - me;
            if let Some(w) = s.wakers[1 - me].take() {
                w.wake();
            }
        }
    }

    #[test]
    fn a_spinning_driver_does_not_starve_other_tasks() {
        // monoio runs a task that wakes itself at the front of its queue; a driver
        // spinning that way would let the players take a turn only when a deadline
        // fired (once per round). Spinning fairly, the deadline never comes due.
        let rounds = 200;
        let fired = shardgate_runtime::block_on(async move {
            let timers = Timers::new(1);
            monoio::spawn(timers.clone().drive());
            let state = Rc::new(RefCell::new(PingPong {
                turn: 0,
                wakers: [None, None],
            }));
            let fired = Rc::new(std::cell::Cell::new(0));
            let other = monoio::spawn(player(state.clone(), 1, rounds, None));
            player(state, 0, rounds, Some((timers.clone(), fired.clone()))).await;
            other.await;
            fired.get()
        })
        .unwrap();
        assert!(
            fired < rounds / 4,
            "deadline fired in {fired} of {rounds} rounds"
        );
    }
}
