//! What one worker thread counts, and how threads' counts merge.
//!
//! Every request ends in exactly one [`Outcome`]; [`Counts`] keeps one counter per
//! outcome kind plus one per HTTP status code (0..=599), so `ok + failed` always
//! equals the number of requests that were due. Latency and TTFT go into HDR
//! histograms ([`hdrhistogram`]) in nanoseconds, from 1 ns to 1 hour with 3
//! significant digits (every value within 0.1 % of what was recorded, ≈ 260 KiB per
//! histogram); they are merged exactly (bucket counts add up), so percentiles of the
//! merged histogram are those of all threads' samples together.
//!
//! Only successful responses (status < 400) are recorded in the latency histogram:
//! a fast `503` must not make the server look quick. TTFT is recorded for successful
//! streaming responses that carried at least one SSE `data:` line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value a histogram keeps exactly (larger ones are clamped): 1 hour, in ns.
pub const HIST_MAX_NS: u64 = 3_600 * 1_000_000_000;
/// Significant decimal digits kept by the histograms.
pub const HIST_SIGFIG: u8 = 3;
/// Status codes counted one by one (`0..STATUS_SLOTS`).
pub const STATUS_SLOTS: usize = 600;

/// A histogram with the bounds every worker uses (so any two merge).
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, HIST_MAX_NS, HIST_SIGFIG) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts.
        Err(e) => unreachable!("constant histogram bounds rejected: {e:?}"),
    }
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A complete response with a status below 400.
    Ok(u16),
    /// A complete response with status 400 or above.
    Status(u16),
    /// The TCP connection could not be opened.
    Connect,
    /// Writing the request failed.
    Write,
    /// Reading the response failed with an I/O error.
    Read,
    /// The server closed the connection before the response was complete.
    Closed,
    /// The response was not valid HTTP/1.1 (head or body framing).
    Protocol,
    /// No complete response within `--timeout` of the request's start.
    Timeout,
    /// Open loop only: the backlog of requests waiting for a connection was full,
    /// so the request could not even be scheduled.
    Dropped,
}

/// Counters of one thread (or of all, after [`Counts::merge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Complete responses with status < 400.
    pub ok: u64,
    /// Connect errors.
    pub connect: u64,
    /// Write errors.
    pub write: u64,
    /// Read errors.
    pub read: u64,
    /// Connections closed before the response was complete.
    pub closed: u64,
    /// Malformed responses.
    pub protocol: u64,
    /// Requests that timed out.
    pub timeout: u64,
    /// Open-loop requests dropped because the backlog was full.
    pub dropped: u64,
    /// TCP connections opened (the first of each connection included).
    pub connects: u64,
    /// Responses by status code (all codes, successful ones included).
    status: Box<[u64; STATUS_SLOTS]>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            ok: 0,
            connect: 0,
            write: 0,
            read: 0,
            closed: 0,
            protocol: 0,
            timeout: 0,
            dropped: 0,
            connects: 0,
            status: Box::new([0; STATUS_SLOTS]),
        }
    }
}

impl Counts {
    /// Count one outcome.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok(code) => {
                self.ok += 1;
                self.count_status(code);
            }
            Outcome::Status(code) => self.count_status(code),
            Outcome::Connect => self.connect += 1,
            Outcome::Write => self.write += 1,
            Outcome::Read => self.read += 1,
            Outcome::Closed => self.closed += 1,
            Outcome::Protocol => self.protocol += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::Dropped => self.dropped += 1,
        }
    }

    fn count_status(&mut self, code: u16) {
        if let Some(slot) = self.status.get_mut(usize::from(code)) {
            *slot += 1;
        }
    }

    /// Responses with this status code.
    pub fn status(&self, code: u16) -> u64 {
        self.status.get(usize::from(code)).copied().unwrap_or(0)
    }

    /// Responses with a status in `lo..=hi`.
    pub fn status_range(&self, lo: u16, hi: u16) -> u64 {
        (lo..=hi).map(|c| self.status(c)).sum()
    }

    /// Every status code seen, with its count.
    pub fn status_map(&self) -> BTreeMap<u16, u64> {
        (0..STATUS_SLOTS as u16)
            .filter_map(|c| {
                let n = self.status(c);
                (n > 0).then_some((c, n))
            })
            .collect()
    }

    /// Requests that did not end in a successful response (every error kind,
    /// statuses ≥ 400 and dropped requests included).
    pub fn failed(&self) -> u64 {
        self.connect
            + self.write
            + self.read
            + self.closed
            + self.protocol
            + self.timeout
            + self.dropped
            + self.status_range(400, 599)
    }

    /// Requests that were due: `ok + failed`.
    pub fn requests(&self) -> u64 {
        self.ok + self.failed()
    }

    /// Add `other`'s counters to these.
    pub fn merge(&mut self, other: &Counts) {
        self.ok += other.ok;
        self.connect += other.connect;
        self.write += other.write;
        self.read += other.read;
        self.closed += other.closed;
        self.protocol += other.protocol;
        self.timeout += other.timeout;
        self.dropped += other.dropped;
        self.connects += other.connects;
        for (a, b) in self.status.iter_mut().zip(other.status.iter()) {
            *a += b;
        }
    }

    /// Zero every counter (keeps the allocation).
    pub fn reset(&mut self) {
        let Counts {
            ok,
            connect,
            write,
            read,
            closed,
            protocol,
            timeout,
            dropped,
            connects,
            status,
        } = self;
        for n in [
            ok, connect, write, read, closed, protocol, timeout, dropped, connects,
        ] {
            *n = 0;
        }
        status.fill(0);
    }
}

/// Counters plus histograms: what a worker sends to the main thread.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Outcome counters.
    pub counts: Counts,
    /// Latency of successful responses, ns, from each request's intended start.
    pub latency: Histogram<u64>,
    /// Time to the first SSE `data:` line of successful streaming responses, ns.
    pub ttft: Histogram<u64>,
    /// When the last counted request ended.
    pub last_done: Option<Instant>,
    /// Warm-up requests that ended (any outcome; not in `counts`).
    pub warmup: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// Nanoseconds of `d`, saturating.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Self {
        Stats {
            counts: Counts::default(),
            latency: new_histogram(),
            ttft: new_histogram(),
            last_done: None,
            warmup: 0,
        }
    }

    /// Record one finished request: its outcome, and for successes its latency and
    /// (streaming) TTFT. `done` is when it ended.
    pub fn record(
        &mut self,
        outcome: Outcome,
        latency: Duration,
        ttft: Option<Duration>,
        done: Instant,
    ) {
        self.counts.record(outcome);
        if let Outcome::Ok(_) = outcome {
            self.latency.saturating_record(nanos(latency).max(1));
            if let Some(t) = ttft {
                self.ttft.saturating_record(nanos(t).max(1));
            }
        }
        self.last_done = Some(self.last_done.map_or(done, |l| l.max(done)));
    }

    /// Add `other` to these statistics (counters add, histograms merge exactly).
    pub fn merge(&mut self, other: &Stats) {
        self.counts.merge(&other.counts);
        // Same bounds everywhere: `add` cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.ttft.add(&other.ttft);
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.warmup += other.warmup;
    }

    /// Forget everything (keeps the allocations, for recycling).
    pub fn reset(&mut self) {
        self.counts.reset();
        self.latency.reset();
        self.ttft.reset();
        self.last_done = None;
        self.warmup = 0;
    }
}

/// Percentiles of one histogram, in microseconds (what the report prints).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Smallest sample, µs.
    pub min_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest sample, µs.
    pub max_us: f64,
}

fn us(ns: u64) -> f64 {
    // One decimal: 0.1 µs is below the histograms' precision above 100 µs anyway.
    (ns as f64 / 100.0).round() / 10.0
}

impl Summary {
    /// Summary of a histogram of nanoseconds; `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Summary> {
        if h.is_empty() {
            return None;
        }
        Some(Summary {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: (h.mean() / 100.0).round() / 10.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn within(actual: u64, expected: u64) -> bool {
        let tol = (expected as f64 * 0.001).ceil() as u64;
        actual.abs_diff(expected) <= tol
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = new_histogram();
        for v in 1..=100_000u64 {
            h.record(v * 1_000).unwrap(); // 1 µs .. 100 ms
        }
        assert_eq!(h.len(), 100_000);
        assert!(within(h.value_at_quantile(0.5), 50_000_000));
        assert!(within(h.value_at_quantile(0.9), 90_000_000));
        assert!(within(h.value_at_quantile(0.99), 99_000_000));
        assert!(within(h.value_at_quantile(0.999), 99_900_000));
        assert!(within(h.max(), 100_000_000));
        assert!(within(h.min(), 1_000));
        let s = Summary::of(&h).unwrap();
        assert_eq!(s.count, 100_000);
        assert!((s.p50_us - 50_000.0).abs() <= 50.0, "{s:?}");
        assert!((s.p99_us - 99_000.0).abs() <= 99.0, "{s:?}");
        assert!((s.mean_us - 50_000.5).abs() <= 50.0, "{s:?}");
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        assert_eq!(h.value_at_quantile(0.5), 500);
        assert_eq!(h.value_at_quantile(0.99), 990);
        assert_eq!(h.value_at_quantile(0.999), 999);
        assert_eq!(h.max(), 1000);
    }

    #[test]
    fn merged_histograms_equal_one_histogram_of_all_samples() {
        let mut all = Stats::new();
        let mut parts = [Stats::new(), Stats::new(), Stats::new()];
        let now = Instant::now();
        for i in 0..30_000u64 {
            // A skewed distribution: mostly fast, a slow tail.
            let ns = if i % 100 == 0 {
                5_000_000 + i
            } else {
                20_000 + i * 3
            };
            let d = Duration::from_nanos(ns);
            let outcome = if i % 7 == 0 {
                Outcome::Status(503)
            } else {
                Outcome::Ok(200)
            };
            let done = now + Duration::from_nanos(i);
            all.record(outcome, d, Some(d / 2), done);
            parts[(i % 3) as usize].record(outcome, d, Some(d / 2), done);
        }
        let mut merged = Stats::new();
        for p in &parts {
            merged.merge(p);
        }
        assert_eq!(merged.counts, all.counts);
        assert_eq!(merged.latency, all.latency);
        assert_eq!(merged.ttft, all.ttft);
        assert_eq!(merged.last_done, all.last_done);
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                merged.latency.value_at_quantile(q),
                all.latency.value_at_quantile(q)
            );
        }
        assert_eq!(Summary::of(&merged.latency), Summary::of(&all.latency));
        // p99 of the merge is not the max (or mean) of the parts' p99s in general,
        // but here it must lie within their range.
        let p99s: Vec<u64> = parts
            .iter()
            .map(|p| p.latency.value_at_quantile(0.99))
            .collect();
        let m = merged.latency.value_at_quantile(0.99);
        assert!(m >= *p99s.iter().min().unwrap() && m <= *p99s.iter().max().unwrap());
    }

    #[test]
    fn counts_are_consistent() {
        let mut c = Counts::default();
        for o in [
            Outcome::Ok(200),
            Outcome::Ok(204),
            Outcome::Ok(301),
            Outcome::Status(404),
            Outcome::Status(503),
            Outcome::Status(503),
            Outcome::Connect,
            Outcome::Write,
            Outcome::Read,
            Outcome::Closed,
            Outcome::Protocol,
            Outcome::Timeout,
            Outcome::Dropped,
        ] {
            c.record(o);
        }
        assert_eq!(c.ok, 3);
        assert_eq!(c.failed(), 10);
        assert_eq!(c.requests(), 13);
        assert_eq!(c.status(503), 2);
        assert_eq!(c.status_range(500, 599), 2);
        assert_eq!(c.status_range(400, 499), 1);
        let map = c.status_map();
        assert_eq!(map.get(&200), Some(&1));
        assert_eq!(map.values().sum::<u64>(), 6);
        let mut d = c.clone();
        d.merge(&c);
        assert_eq!(d.requests(), 26);
        d.reset();
        assert_eq!(d, Counts::default());
    }

    #[test]
    fn failures_are_not_in_the_latency_histogram() {
        let mut s = Stats::new();
        let now = Instant::now();
        s.record(Outcome::Status(500), Duration::from_millis(1), None, now);
        s.record(Outcome::Timeout, Duration::from_secs(1), None, now);
        assert!(s.latency.is_empty());
        s.record(
            Outcome::Ok(200),
            Duration::from_micros(30),
            Some(Duration::from_micros(10)),
            now,
        );
        assert_eq!(s.latency.len(), 1);
        assert_eq!(s.ttft.len(), 1);
        assert!(Summary::of(&Stats::new().latency).is_none());
    }
}
