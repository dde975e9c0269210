//! The open-loop schedule and coordinated-omission-correct latency.
//!
//! Requests are numbered globally `g = 0, 1, 2, …`; request `g` is *intended* to
//! start at `start + g / rate` seconds, whatever happens to earlier requests. With
//! `T` threads, thread `t` owns the requests `g ≡ t (mod T)` (its `k`-th request is
//! `g = k·T + t`), so the threads together keep exactly the global schedule with no
//! coordination. Requests whose intended start falls inside the warm-up
//! (`g / rate < warmup`) run but are not counted. The schedule ends at
//! `warmup + duration` (exclusive) and/or after `requests` counted requests,
//! whichever comes first.
//!
//! Latency is measured from the intended start, not from when the request was
//! actually written ([`latency`]): if the server stalls for 1 s, every request that
//! should have gone out during the stall is charged for its wait (for a free
//! connection, in the backlog), which is what a user arriving at that rate would
//! see. Measuring from the actual send would hide the stall ("coordinated
//! omission"). Intended times are computed from the index, never accumulated, so
//! they do not drift.

use std::time::{Duration, Instant};

/// How long to keep issuing requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    /// Measured time after the warm-up.
    pub duration: Option<Duration>,
    /// Counted requests after the warm-up.
    pub requests: Option<u64>,
}

/// One thread's share of the open-loop schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    start: Instant,
    rate: f64,
    stride: u64,
    offset: u64,
    warmup_count: u64,
    end: u64,
}

/// Number of global indices `g` with `g / rate < secs`: `ceil(secs · rate)`,
/// rounding away float noise (so 1 s at 1000/s is exactly 1000).
fn count_before(secs: f64, rate: f64) -> u64 {
    let x = secs * rate;
    let nearest = x.round();
    let c = if (x - nearest).abs() < 1e-6 {
        nearest
    } else {
        x.ceil()
    };
    if c <= 0.0 {
        0
    } else if c >= u64::MAX as f64 {
        u64::MAX
    } else {
        c as u64
    }
}

impl Schedule {
    /// Thread `thread` of `threads` at a total `rate` (requests/s, > 0), starting at
    /// `start`. Without any `stop` bound the schedule never ends.
    pub fn new(
        start: Instant,
        rate: f64,
        warmup: Duration,
        stop: Stop,
        threads: usize,
        thread: usize,
    ) -> Schedule {
        let warmup_count = count_before(warmup.as_secs_f64(), rate);
        let by_time = stop
            .duration
            .map(|d| count_before((warmup + d).as_secs_f64(), rate));
        let by_count = stop.requests.map(|n| warmup_count.saturating_add(n));
        let end = match (by_time, by_count) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => u64::MAX,
        };
        Schedule {
            start,
            rate,
            stride: threads.max(1) as u64,
            offset: thread as u64,
            warmup_count,
            end,
        }
    }

    /// Global index of this thread's `k`-th request.
    pub fn global(&self, k: u64) -> u64 {
        k.saturating_mul(self.stride).saturating_add(self.offset)
    }

    /// Offset of global request `g` from the start: `g / rate`, rounded to the ns.
    pub fn offset_of(&self, g: u64) -> Duration {
        let ns = (g as f64 * 1e9 / self.rate).round();
        Duration::from_nanos(if ns >= u64::MAX as f64 {
            u64::MAX
        } else {
            ns as u64
        })
    }

    /// This thread's `k`-th request: its intended start and whether it is counted
    /// (not warm-up); `None` once past the end of the schedule.
    pub fn get(&self, k: u64) -> Option<(Instant, bool)> {
        let g = self.global(k);
        if g >= self.end {
            return None;
        }
        let at = self.start.checked_add(self.offset_of(g))?;
        Some((at, g >= self.warmup_count))
    }

    /// Global requests in the warm-up.
    pub fn warmup_count(&self) -> u64 {
        self.warmup_count
    }

    /// Global index one past the last request (`u64::MAX` when unbounded).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Counted requests this thread will schedule.
    pub fn counted(&self) -> u64 {
        self.in_range(self.warmup_count, self.end)
    }

    /// Number of this thread's global indices in `lo..hi`.
    fn in_range(&self, lo: u64, hi: u64) -> u64 {
        // Indices g = k·stride + offset; count those below a bound.
        let below = |b: u64| {
            if b <= self.offset {
                0
            } else {
                (b - self.offset - 1) / self.stride + 1
            }
        };
        below(hi).saturating_sub(below(lo))
    }
}

/// Coordinated-omission-correct latency: from the intended start to the end of the
/// response (zero if the response somehow ended before the intended start).
pub fn latency(intended: Instant, done: Instant) -> Duration {
    done.saturating_duration_since(intended)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn stop(duration_ms: Option<u64>, requests: Option<u64>) -> Stop {
        Stop {
            duration: duration_ms.map(Duration::from_millis),
            requests,
        }
    }

    #[test]
    fn intended_times_follow_the_rate() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0, Duration::ZERO, stop(Some(1000), None), 1, 0);
        assert_eq!(s.get(0), Some((t0, true)));
        assert_eq!(s.get(3), Some((t0 + Duration::from_millis(3), true)));
        assert_eq!(s.get(999), Some((t0 + Duration::from_millis(999), true)));
        assert_eq!(s.get(1000), None);
        assert_eq!(s.counted(), 1000);

        // A rate that does not divide a second: rounded to the ns, never drifting.
        let s = Schedule::new(t0, 3.0, Duration::ZERO, stop(Some(1000), None), 1, 0);
        assert_eq!(s.offset_of(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.offset_of(2), Duration::from_nanos(666_666_667));
        assert_eq!(s.offset_of(3), Duration::from_secs(1));
        assert_eq!(s.offset_of(3_000_000), Duration::from_secs(1_000_000));
        assert_eq!(s.counted(), 3);

        // Fractional rates: one request every 2 s.
        let s = Schedule::new(t0, 0.5, Duration::ZERO, stop(Some(5000), None), 1, 0);
        assert_eq!(s.offset_of(2), Duration::from_secs(4));
        assert_eq!(s.counted(), 3); // at 0, 2 and 4 s
    }

    #[test]
    fn threads_split_the_global_schedule_exactly() {
        let t0 = Instant::now();
        let (rate, threads) = (5000.0, 3);
        let st = stop(Some(1000), None);
        let mut seen: Vec<(Instant, bool)> = Vec::new();
        let mut counted = 0;
        for t in 0..threads {
            let s = Schedule::new(t0, rate, Duration::from_millis(100), st, threads, t);
            counted += s.counted();
            let mut prev = None;
            let mut k = 0;
            while let Some((at, c)) = s.get(k) {
                assert!(prev.is_none_or(|p| at > p), "per-thread times increase");
                prev = Some(at);
                seen.push((at, c));
                k += 1;
            }
            assert_eq!(k, s.in_range(0, s.end()));
        }
        seen.sort_by_key(|(at, _)| *at);
        // 1.1 s at 5000/s, the first 0.1 s warm-up.
        assert_eq!(seen.len(), 5500);
        assert_eq!(counted, 5000);
        assert_eq!(seen.iter().filter(|(_, c)| *c).count(), 5000);
        for (g, (at, c)) in seen.iter().enumerate() {
            assert_eq!(*at, t0 + Duration::from_micros(200 * g as u64));
            assert_eq!(*c, g >= 500);
        }
    }

    #[test]
    fn request_bound_and_both_bounds() {
        let t0 = Instant::now();
        let s = Schedule::new(
            t0,
            100.0,
            Duration::from_millis(50),
            stop(None, Some(7)),
            2,
            1,
        );
        // Warm-up: g = 0..5 (0, 10, 20, 30, 40 ms); counted: g = 5..12.
        assert_eq!(s.warmup_count(), 5);
        assert_eq!(s.end(), 12);
        // Thread 1 owns odd g: 1, 3 (warm-up), 5, 7, 9, 11 (counted).
        let got: Vec<_> = (0..10).map_while(|k| s.get(k)).collect();
        assert_eq!(got.len(), 6);
        assert_eq!(got.iter().filter(|(_, c)| *c).count(), 4);
        assert_eq!(s.counted(), 4);
        assert_eq!(got[2].0, t0 + Duration::from_millis(50));

        let both = Schedule::new(t0, 100.0, Duration::ZERO, stop(Some(1000), Some(10)), 1, 0);
        assert_eq!(both.end(), 10);
        let both = Schedule::new(t0, 100.0, Duration::ZERO, stop(Some(30), Some(10)), 1, 0);
        assert_eq!(both.end(), 3);
        let unbounded = Schedule::new(t0, 100.0, Duration::ZERO, stop(None, None), 1, 0);
        assert!(unbounded.get(1_000_000).is_some());
    }

    #[test]
    fn latency_counts_from_the_intended_start() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0, Duration::ZERO, stop(Some(1000), None), 1, 0);
        // The server stalls: request 5 (intended at 5 ms) could only be written at
        // 40 ms and was answered at 41 ms. Its latency is 36 ms, not 1 ms.
        let (intended, _) = s.get(5).unwrap();
        let sent = t0 + Duration::from_millis(40);
        let done = t0 + Duration::from_millis(41);
        assert_eq!(latency(intended, done), Duration::from_millis(36));
        assert_eq!(latency(sent, done), Duration::from_millis(1));
        assert_eq!(latency(done, intended), Duration::ZERO);
    }
}
