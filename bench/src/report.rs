//! The final report (human text and JSON, same numbers; times in microseconds) and
//! the once-a-second progress line.
//!
//! `rps` is successful responses per second of the measured window, which runs
//! from the end of the warm-up to the end of the last counted request (so it
//! includes the tail of requests still in flight when the schedule ended).
//! `requests = ok + failed`; in open loop `requests` equals `scheduled`, the number
//! of counted requests the schedule held, whatever happened to them.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::{Mode, Plan};
use crate::stats::{Stats, Summary};
use crate::template::Template;

/// Requests that did not succeed, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// Connection could not be opened.
    pub connect: u64,
    /// Writing the request failed.
    pub write: u64,
    /// Reading the response failed.
    pub read: u64,
    /// The server closed the connection mid-response.
    pub closed: u64,
    /// Malformed response.
    pub protocol: u64,
    /// No complete response within the timeout.
    pub timeout: u64,
    /// Open loop: could not be scheduled (backlog full).
    pub dropped: u64,
    /// Responses with a 4xx status.
    pub http_4xx: u64,
    /// Responses with a 5xx status.
    pub http_5xx: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `open` or `closed`.
    pub mode: &'static str,
    /// Target URL (normalised), with the path every request used.
    pub url: String,
    /// Request template.
    pub template: Template,
    /// Whether responses were streamed (TTFT measured).
    pub stream: bool,
    /// Worker threads.
    pub threads: usize,
    /// Connections, all threads together.
    pub connections: usize,
    /// Open loop: target rate, requests/s.
    pub rate: Option<f64>,
    /// Warm-up, seconds.
    pub warmup_s: f64,
    /// Measured window, seconds.
    pub duration_s: f64,
    /// I/O driver(s) the workers ran on (`io_uring`, `epoll`, or both).
    pub driver: String,
    /// Counted requests: `ok + failed`.
    pub requests: u64,
    /// Open loop: counted requests in the schedule (equals `requests`).
    pub scheduled: Option<u64>,
    /// Successful responses (status < 400).
    pub ok: u64,
    /// Everything else, errors and 4xx/5xx included.
    pub failed: u64,
    /// Successful responses per second of the measured window.
    pub rps: f64,
    /// Latency of successful responses, from each request's intended start.
    pub latency: Option<Summary>,
    /// Time to the first SSE `data:` line, streaming only.
    pub ttft: Option<Summary>,
    /// Failures by kind.
    pub errors: Errors,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// TCP connections opened.
    pub connects: u64,
}

impl Report {
    /// Build the report of a finished run that started at `start`.
    pub fn new(
        plan: &Plan,
        stats: &Stats,
        drivers: &[shardgate_runtime::Driver],
        start: Instant,
    ) -> Report {
        let c = &stats.counts;
        let measure_from = start + plan.warmup;
        let window = stats
            .last_done
            .map(|l| l.saturating_duration_since(measure_from))
            .filter(|d| !d.is_zero())
            .or(plan.stop.duration)
            .unwrap_or(Duration::ZERO);
        let duration_s = window.as_secs_f64();
        let mut names: Vec<&str> = drivers.iter().map(|d| d.name()).collect();
        names.sort_unstable();
        names.dedup();
        let (mode, rate, scheduled) = match plan.mode {
            Mode::Open { rate } => (
                "open",
                Some(rate),
                Some(
                    (0..plan.threads)
                        .filter_map(|t| plan.schedule(start, t))
                        .map(|s| s.counted())
                        .sum(),
                ),
            ),
            Mode::Closed => ("closed", None, None),
        };
        Report {
            mode,
            url: format!("http://{}{}", plan.target.host_header, plan.path),
            template: plan.config.request.template,
            stream: plan.stream,
            threads: plan.threads,
            connections: plan.connections,
            rate,
            warmup_s: plan.warmup.as_secs_f64(),
            duration_s,
            driver: names.join("+"),
            requests: c.requests(),
            scheduled,
            ok: c.ok,
            failed: c.failed(),
            rps: if duration_s > 0.0 {
                c.ok as f64 / duration_s
            } else {
                0.0
            },
            latency: Summary::of(&stats.latency),
            ttft: Summary::of(&stats.ttft),
            errors: Errors {
                connect: c.connect,
                write: c.write,
                read: c.read,
                closed: c.closed,
                protocol: c.protocol,
                timeout: c.timeout,
                dropped: c.dropped,
                http_4xx: c.status_range(400, 499),
                http_5xx: c.status_range(500, 599),
            },
            status: c.status_map(),
            connects: c.connects,
        }
    }

    /// Whether no request succeeded (the CLI then exits non-zero).
    pub fn all_failed(&self) -> bool {
        self.ok == 0
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The report as human text (several lines).
    pub fn human(&self) -> String {
        let mut out = String::new();
        let rate = self
            .rate
            .map(|r| format!(" at {r} req/s"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{} loop{rate}, {} thread(s), {} connection(s), {:.2} s measured (+{:.2} s warm-up), {} ({})",
            self.mode, self.threads, self.connections, self.duration_s, self.warmup_s, self.url, self.driver
        );
        let sched = self
            .scheduled
            .map(|s| format!(", scheduled {s}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "requests  {} (ok {}, failed {}{sched})  rps {:.1}  connections opened {}",
            self.requests, self.ok, self.failed, self.rps, self.connects
        );
        for (name, s) in [("latency", &self.latency), ("ttft", &self.ttft)] {
            match s {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "{name:<9} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}  (n={})",
                        fmt_us(s.p50_us),
                        fmt_us(s.p90_us),
                        fmt_us(s.p99_us),
                        fmt_us(s.p999_us),
                        fmt_us(s.max_us),
                        fmt_us(s.mean_us),
                        s.count
                    );
                }
                None if name == "latency" || self.stream => {
                    let _ = writeln!(out, "{name:<9} (no successful responses)");
                }
                None => {}
            }
        }
        let e = &self.errors;
        let _ = writeln!(
            out,
            "errors    connect {}  write {}  read {}  closed {}  protocol {}  timeout {}  dropped {}  4xx {}  5xx {}",
            e.connect, e.write, e.read, e.closed, e.protocol, e.timeout, e.dropped, e.http_4xx, e.http_5xx
        );
        let status: Vec<String> = self
            .status
            .iter()
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        let _ = writeln!(
            out,
            "status    {}",
            if status.is_empty() {
                "-".into()
            } else {
                status.join("  ")
            }
        );
        out
    }
}

/// Microseconds, printed with a unit that keeps 3-4 significant digits.
pub fn fmt_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{:.2}s", us / 1_000_000.0)
    } else if us >= 10_000.0 {
        format!("{:.1}ms", us / 1000.0)
    } else if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.1}µs")
    }
}

/// One progress line's numbers (printed once a second on stderr by the CLI).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Since the start.
    pub elapsed: Duration,
    /// Still in the warm-up.
    pub warmup: bool,
    /// Successful responses so far (counted ones).
    pub ok: u64,
    /// Failed requests so far (counted ones).
    pub failed: u64,
    /// Requests ended per second over the last interval (warm-up ones included).
    pub rps: f64,
    /// p99 latency so far, µs.
    pub p99_us: Option<f64>,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:>6.1}s]{} rps {:>9.1}  ok {:>9}  errors {:>7}  p99 {}",
            self.elapsed.as_secs_f64(),
            if self.warmup { " warm-up" } else { "" },
            self.rps,
            self.ok,
            self.failed,
            self.p99_us.map_or_else(|| "-".into(), fmt_us)
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;
    use crate::stats::Outcome;

    #[test]
    fn report_numbers_match_the_stats() {
        let plan = Plan::new(&Config {
            url: "http://127.0.0.1:9".into(),
            rate: Some(1000.0),
            duration: Some(Duration::from_secs(2)),
            threads: 2,
            connections: 4,
            ..Config::default()
        })
        .unwrap();
        let start = Instant::now();
        let mut stats = Stats::new();
        for i in 0..1990u64 {
            stats.record(
                Outcome::Ok(200),
                Duration::from_micros(100 + i % 100),
                None,
                start + Duration::from_millis(i),
            );
        }
        for o in [Outcome::Status(503), Outcome::Status(404), Outcome::Timeout] {
            for _ in 0..2 {
                stats.record(o, Duration::ZERO, None, start);
            }
        }
        for _ in 0..4 {
            stats.record(Outcome::Dropped, Duration::ZERO, None, start);
        }
        let r = Report::new(&plan, &stats, &[shardgate_runtime::Driver::Epoll], start);
        assert_eq!(r.mode, "open");
        assert_eq!(r.scheduled, Some(2000));
        assert_eq!(r.requests, 2000);
        assert_eq!((r.ok, r.failed), (1990, 10));
        assert_eq!(r.errors.http_5xx, 2);
        assert_eq!(r.errors.http_4xx, 2);
        assert_eq!(r.errors.dropped, 4);
        assert_eq!(r.status.get(&200), Some(&1990));
        assert!((r.duration_s - 1.989).abs() < 1e-6);
        assert!((r.rps - 1990.0 / 1.989).abs() < 1e-6);
        let lat = r.latency.unwrap();
        assert_eq!(lat.count, 1990);
        assert!((lat.p50_us - 149.0).abs() <= 1.0, "{lat:?}");
        assert!(r.ttft.is_none());
        assert!(!r.all_failed());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["ok"], 1990);
        assert_eq!(v["status"]["503"], 2);
        assert_eq!(v["latency"]["count"], 1990);
        assert_eq!(v["errors"]["timeout"], 2);
        assert_eq!(v["template"], "completion");
        let text = r.human();
        assert!(
            text.contains("requests  2000 (ok 1990, failed 10, scheduled 2000)"),
            "{text}"
        );
        assert!(text.contains("503: 2"));
        assert_eq!(fmt_us(12.34), "12.3µs");
        assert_eq!(fmt_us(1234.0), "1.23ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50s");
    }
}
