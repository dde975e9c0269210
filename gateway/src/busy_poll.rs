//! Busy polling (`--busy-poll`): a shard that has just seen a request start or end keeps
//! its core busy for a while instead of sleeping, polling its ring (or epoll) for
//! completions, so that what arrives soon after (the backend's answer, a keep-alive
//! client's next request) is picked up without a wake-up.
//!
//! Why: a shard that waits sleeps in `io_uring_enter` (or `epoll_wait`), and when its core
//! has nothing else to run the core goes idle. Waking an idle core costs an
//! inter-processor interrupt and, on a virtual machine, an exit to the hypervisor and its
//! scheduler: tens of µs at the median and milliseconds in the tail on the project's VM,
//! paid twice per proxied request (the client's request, the backend's answer). A core
//! that polls pays none of it, for the price of the CPU it burns polling. It pays where a
//! shard has a core of its own (pinned, `isolcpus`, a guaranteed-CPU pod) and backends
//! answer within the window; on a core shared with other work it takes CPU from that work.
//! Off by default.
//!
//! How, without a hook in the runtime's park: one task per shard ([`run`]). When a
//! request starts or ends on the shard ([`BusyPoll::note`], called by the shard's
//! in-flight guard), the task is woken and starts a phase: it yields to the runtime over
//! and over, and each time the runtime finds its run queue non-empty it submits and
//! reaps completions without waiting (monoio's `submit`: `io_uring_enter` without
//! `GETEVENTS`, or `epoll_wait` with a zero timeout), runs what they woke, and polls the
//! task again. The phase ends when no request has started or ended for the window.
//!
//! Timers: monoio fires its timers only when it parks, and a polling shard does not park.
//! A phase is therefore capped at [`PHASE_CAP`] (1 ms); one that reaches it sleeps on a
//! timer, which fires only after a park, before the next phase may start. Timers are
//! late by at most the cap (every timeout on the request path is 10 ms or longer).
//!
//! Numbers: window 0 (off) by default, at most 1 s; phase cap 1 ms; per request, one
//! counter bump and a waker check at its start and its end, nothing when it is off. The
//! time spent polling is exported as `gateway_busy_poll_seconds_total` per shard.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Longest phase of polling before the shard must park once (so that its timers fire).
pub const PHASE_CAP: Duration = Duration::from_millis(1);

/// Largest `--busy-poll` window accepted.
pub const MAX_WINDOW: Duration = Duration::from_secs(1);

/// One shard's busy-polling state (present only when `--busy-poll` is set).
pub struct BusyPoll {
    window: Duration,
    /// Requests started plus requests ended on the shard.
    events: Cell<u64>,
    /// The polling task, while it waits for the next event.
    waker: Cell<Option<Waker>>,
    /// Time spent polling, over every phase that ended.
    polled: Cell<Duration>,
}

impl BusyPoll {
    /// Polling for `window` after each request's start or end.
    pub fn new(window: Duration) -> Self {
        BusyPoll {
            window,
            events: Cell::new(0),
            waker: Cell::new(None),
            polled: Cell::new(Duration::ZERO),
        }
    }

    /// A request started or ended on the shard.
    #[inline]
    pub fn note(&self) {
        self.events.set(self.events.get().wrapping_add(1));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Time spent polling so far (phases that ended).
    pub fn polled(&self) -> Duration {
        self.polled.get()
    }

    /// Ready once an event has been noted since `seen`.
    fn event_after(&self, seen: u64) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.events.get() != seen {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

/// What the polling task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Yield and poll again.
    Poll,
    /// The window passed without an event: wait for the next one.
    Rest,
    /// The phase reached [`PHASE_CAP`]: let the shard park once before polling again.
    Park,
}

/// One phase of polling: the decisions, without a clock or a runtime.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    start: Instant,
    last_event: Instant,
    seen: u64,
}

impl Phase {
    /// A phase starting at `now`, with `events` noted so far.
    pub fn begin(now: Instant, events: u64) -> Self {
        Phase {
            start: now,
            last_event: now,
            seen: events,
        }
    }

    /// The decision at `now`, with `events` noted so far.
    pub fn step(&mut self, now: Instant, events: u64, window: Duration) -> Next {
        if events != self.seen {
            self.seen = events;
            self.last_event = now;
        }
        if now.saturating_duration_since(self.start) >= PHASE_CAP {
            Next::Park
        } else if now.saturating_duration_since(self.last_event) >= window {
            Next::Rest
        } else {
            Next::Poll
        }
    }

    /// The same phase after a park: its cap counts from `now`, its window still from
    /// the last event.
    pub fn resume(&mut self, now: Instant) {
        self.start = now;
    }

    /// How long the phase has lasted at `now`.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.start)
    }

    /// Events noted when the phase last looked.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

/// Returns `Pending` once, waking itself: the runtime polls the task again after
/// submitting and reaping completions (its run queue is not empty).
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// The shard's polling task: runs until the runtime ends.
pub async fn run(bp: Rc<BusyPoll>) {
    // From the counter's start: an event noted before the task first runs starts a phase.
    let mut seen = 0;
    loop {
        bp.event_after(seen).await;
        let mut phase = Phase::begin(Instant::now(), bp.events.get());
        loop {
            let next = loop {
                YieldOnce(false).await;
                match phase.step(Instant::now(), bp.events.get(), bp.window) {
                    Next::Poll => continue,
                    other => break other,
                }
            };
            bp.polled
                .set(bp.polled.get() + phase.elapsed(Instant::now()));
            if next == Next::Rest {
                break;
            }
            // A timer fires only after the runtime parks, and so do the shard's.
            monoio::time::sleep(Duration::from_micros(1)).await;
            phase.resume(Instant::now());
        }
        seen = phase.seen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_micros(200);

    #[test]
    fn a_phase_polls_within_the_window_and_rests_after_it() {
        let t0 = Instant::now();
        let mut p = Phase::begin(t0, 1);
        assert_eq!(p.step(t0 + Duration::from_micros(199), 1, W), Next::Poll);
        assert_eq!(p.step(t0 + W, 1, W), Next::Rest);
    }

    #[test]
    fn an_event_extends_the_window_from_when_it_was_seen() {
        let t0 = Instant::now();
        let mut p = Phase::begin(t0, 1);
        assert_eq!(p.step(t0 + Duration::from_micros(150), 2, W), Next::Poll);
        assert_eq!(p.step(t0 + Duration::from_micros(349), 2, W), Next::Poll);
        assert_eq!(p.step(t0 + Duration::from_micros(350), 2, W), Next::Rest);
        assert_eq!(p.seen(), 2);
    }

    #[test]
    fn a_phase_with_events_all_along_parks_at_the_cap() {
        let t0 = Instant::now();
        let mut p = Phase::begin(t0, 0);
        let mut events = 0;
        let mut t = t0;
        while t < t0 + PHASE_CAP - Duration::from_micros(50) {
            t += Duration::from_micros(50);
            events += 1;
            assert_eq!(p.step(t, events, W), Next::Poll);
        }
        assert_eq!(p.step(t0 + PHASE_CAP, events + 1, W), Next::Park);
        assert_eq!(p.elapsed(t0 + PHASE_CAP), PHASE_CAP);
    }

    #[test]
    fn a_window_longer_than_the_cap_parks_at_the_cap_and_resumes_to_its_end() {
        let t0 = Instant::now();
        let mut p = Phase::begin(t0, 0);
        let long = Duration::from_millis(3);
        assert_eq!(p.step(t0 + Duration::from_micros(999), 0, long), Next::Poll);
        assert_eq!(p.step(t0 + PHASE_CAP, 0, long), Next::Park);
        p.resume(t0 + Duration::from_micros(1100));
        assert_eq!(
            p.step(t0 + Duration::from_micros(2000), 0, long),
            Next::Poll
        );
        assert_eq!(
            p.step(t0 + Duration::from_micros(2100), 0, long),
            Next::Park
        );
        p.resume(t0 + Duration::from_micros(2200));
        assert_eq!(
            p.step(t0 + Duration::from_micros(2999), 0, long),
            Next::Poll
        );
        assert_eq!(p.step(t0 + long, 0, long), Next::Rest);
    }

    /// A window at the largest allowed still never polls a millisecond past the cap.
    #[test]
    fn every_decision_within_a_phase_is_bounded_by_the_cap() {
        let t0 = Instant::now();
        for window in [Duration::from_micros(1), W, PHASE_CAP, MAX_WINDOW] {
            let mut p = Phase::begin(t0, 0);
            for us in (0..5_000).step_by(7) {
                let now = t0 + Duration::from_micros(us);
                if p.step(now, us / 100, window) == Next::Poll {
                    assert!(p.elapsed(now) < PHASE_CAP, "{window:?} polled at {us} µs");
                }
            }
        }
    }

    /// The task on a real runtime: it polls after an event, rests once the window has
    /// passed, and a later event starts a new phase.
    #[test]
    fn the_task_polls_after_an_event_and_then_rests() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        // The test runs as a task of its own, as the gateway's tasks do (the runtime's
        // main future is polled differently).
        rt.block_on(async {
            monoio::spawn(async {
                let window = Duration::from_micros(500);
                let bp = Rc::new(BusyPoll::new(window));
                let task = monoio::spawn(run(bp.clone()));
                // Nothing noted: the task waits without polling (the sleep parks the
                // runtime, so the task has run by then).
                monoio::time::sleep(Duration::from_millis(5)).await;
                assert_eq!(bp.polled(), Duration::ZERO);
                bp.note();
                // One phase: at least the window.
                let deadline = Instant::now() + Duration::from_secs(5);
                while bp.polled() < window {
                    assert!(Instant::now() < deadline, "the phase never ended");
                    monoio::time::sleep(Duration::from_millis(1)).await;
                }
                // Rested: the total stops growing.
                let rested = bp.polled();
                monoio::time::sleep(Duration::from_millis(20)).await;
                assert_eq!(bp.polled(), rested, "polling went on without events");
                bp.note();
                let deadline = Instant::now() + Duration::from_secs(5);
                while bp.polled() == rested {
                    assert!(Instant::now() < deadline, "a second event started no phase");
                    monoio::time::sleep(Duration::from_millis(1)).await;
                }
                drop(task);
            })
            .await
        });
    }
}
