//! Shard-wide timer grids: a deadline that need not be exact is moved to the
//! next boundary of a grid shared by the whole shard thread, so the timers of
//! many connections fall on the same instants and cost the shard one wake-up
//! and one timer-wheel slot, not one each.
//!
//! Used where a connection's timer is a housekeeping bound rather than a
//! promise to the client: the HTTP/2 connection tick (100 ms: drain and idle
//! checks) and the end of an HTTP/1.1 connection's hot wait
//! (`--client-hot-wait` rounded up to `proxy::HOT_GRID`: by default 50–100 ms
//! after its last request). Spread over time, such timers woke the shard once
//! per connection (at 300 requests a second over 64 sparse connections, a
//! wake-up per request just to demote the connection) and cut every wait of
//! the shard short: its io_uring waits time out at the next timer
//! (`bench/results/latency.md` sections 8 and 9).
//!
//! The grid starts at the first instant the thread asks about; grids of
//! different periods share that origin, so a 100 ms boundary is also a 50 ms
//! one.

use std::cell::Cell;
use std::time::Duration;

use monoio::time::Instant;

/// The first boundary of the thread's grid of `period` strictly after `at`.
pub fn boundary_after(at: Instant, period: Duration) -> Instant {
    thread_local!(static ORIGIN: Cell<Option<Instant>> = const { Cell::new(None) });
    let origin = ORIGIN.with(|o| {
        let origin = o.get().unwrap_or(at);
        o.set(Some(origin));
        origin
    });
    // In u64 nanoseconds (584 years from the origin): no 128-bit division
    // on the request path.
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let step = nanos(period).max(1);
    let steps = nanos(at.saturating_duration_since(origin)) / step + 1;
    origin
        .checked_add(Duration::from_nanos(steps.saturating_mul(step)))
        .unwrap_or(at + period)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(100);

    #[test]
    fn boundaries_are_shared_after_the_instant_and_at_most_one_period_away() {
        let start = Instant::now();
        let first = boundary_after(start, P);
        assert!(first > start && first <= start + P);
        // Instants within one period share its boundary; the boundary itself
        // moves on by exactly one period.
        for ms in [0u64, 1, 17, 49] {
            let now = start + Duration::from_millis(ms);
            if now < first {
                assert_eq!(boundary_after(now, P), first);
            }
        }
        assert_eq!(boundary_after(first, P), first + P);
        let later = first + Duration::from_millis(250);
        let t = boundary_after(later, P);
        assert!(t > later && t <= later + P);
        assert_eq!(t.duration_since(first).as_nanos() % P.as_nanos(), 0);
    }

    #[test]
    fn grids_of_different_periods_share_their_origin() {
        let start = Instant::now();
        let coarse = boundary_after(start, P);
        let fine = Duration::from_millis(50);
        // Every 100 ms boundary is a 50 ms one.
        let mut t = boundary_after(start, fine);
        while t < coarse {
            t = boundary_after(t, fine);
        }
        assert_eq!(t, coarse);
    }
}
