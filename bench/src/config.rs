//! A load test's configuration (the library form of the CLI flags) and the
//! validated [`Plan`] the workers run: target checked, request rendered once,
//! connections, rate, backlog and request budget split across threads.
//!
//! Defaults: closed loop, 16 connections, 1 thread, 10 s, no warm-up, 10 s timeout,
//! a backlog of 65,536 waiting requests (open loop), the `completion` template for
//! model `sim-model`. Threads are capped at the number of connections (a thread
//! without a connection could send nothing).

use std::time::Duration;

use shardgate_http::Limits;

use crate::schedule::{Schedule, Stop};
use crate::target::{parse_target, Target};
use crate::template::{render_request, RequestSpec};
use crate::ConfigError;

/// Default measured duration when neither a duration nor a request count is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Highest accepted `--rate`, requests/s.
pub const MAX_RATE: f64 = 100_000_000.0;
/// Most connections.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// What to run (every field has a CLI flag of the same name).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Target URL (this machine only).
    pub url: String,
    /// Open loop at this many requests/s; `None` = closed loop.
    pub rate: Option<f64>,
    /// Measured duration (after the warm-up).
    pub duration: Option<Duration>,
    /// Counted requests (after the warm-up).
    pub requests: Option<u64>,
    /// Warm-up before measuring (requests run, nothing is counted).
    pub warmup: Duration,
    /// Keep-alive connections, all threads together.
    pub connections: usize,
    /// Worker threads, each with its own monoio runtime.
    pub threads: usize,
    /// Per-request timeout, from the request's (intended) start.
    pub timeout: Duration,
    /// Open loop: most requests waiting for a free connection, all threads together.
    pub max_backlog: usize,
    /// The request to send.
    pub request: RequestSpec,
    /// Pin worker threads to cores (round-robin over the cores this process may use).
    pub pin: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: "http://127.0.0.1:8000".into(),
            rate: None,
            duration: None,
            requests: None,
            warmup: Duration::ZERO,
            connections: 16,
            threads: 1,
            timeout: Duration::from_secs(10),
            max_backlog: 65_536,
            request: RequestSpec::default(),
            pin: false,
        }
    }
}

/// Open or closed loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Requests start on a fixed schedule at this rate (requests/s).
    Open {
        /// Requests per second, all threads together.
        rate: f64,
    },
    /// Each connection sends its next request when the previous one ends.
    Closed,
}

/// A validated configuration, request bytes rendered.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where to send.
    pub target: Target,
    /// The request, head and body.
    pub request: Vec<u8>,
    /// Whether the method is HEAD.
    pub head_request: bool,
    /// The request target (path and query) every request uses.
    pub path: String,
    /// Whether to measure TTFT (streaming responses).
    pub stream: bool,
    /// Open or closed loop.
    pub mode: Mode,
    /// When to stop (at least one bound is set).
    pub stop: Stop,
    /// Warm-up.
    pub warmup: Duration,
    /// Connections, all threads together.
    pub connections: usize,
    /// Worker threads.
    pub threads: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Open-loop backlog bound, all threads together.
    pub max_backlog: usize,
    /// Response parser limits.
    pub limits: Limits,
    /// The configuration this plan came from.
    pub config: Config,
}

fn share(total: usize, parts: usize, index: usize) -> usize {
    let parts = parts.max(1);
    total / parts + usize::from(index < total % parts)
}

impl Plan {
    /// Validate `config` and render its request.
    pub fn new(config: &Config) -> Result<Plan, ConfigError> {
        let value = |m: String| Err(ConfigError::Value(m));
        let target = parse_target(&config.url)?;
        if config.connections == 0 || config.connections > MAX_CONNECTIONS {
            return value(format!("--connections must be 1..={MAX_CONNECTIONS}"));
        }
        if config.threads == 0 {
            return value("--threads must be at least 1".into());
        }
        if config.timeout.is_zero() {
            return value("--timeout must be positive".into());
        }
        if config.max_backlog == 0 {
            return value("--max-backlog must be at least 1".into());
        }
        if config.duration.is_some_and(|d| d.is_zero()) {
            return value("--duration must be positive".into());
        }
        if config.requests == Some(0) {
            return value("--requests must be at least 1".into());
        }
        let mode = match config.rate {
            None => Mode::Closed,
            Some(r) if r.is_finite() && r > 0.0 && r <= MAX_RATE => Mode::Open { rate: r },
            Some(r) => return value(format!("--rate {r} is not within (0, {MAX_RATE}]")),
        };
        let stop = Stop {
            duration: match (config.duration, config.requests) {
                (None, None) => Some(DEFAULT_DURATION),
                (d, _) => d,
            },
            requests: config.requests,
        };
        let rendered =
            render_request(&config.request, &target.host_header, target.path.as_deref())?;
        let threads = config.threads.min(config.connections);
        Ok(Plan {
            request: rendered.bytes,
            head_request: rendered.head_request,
            path: rendered.path,
            stream: config.request.stream,
            mode,
            stop,
            warmup: config.warmup,
            connections: config.connections,
            threads,
            timeout: config.timeout,
            max_backlog: config.max_backlog,
            limits: Limits::default(),
            target,
            config: config.clone(),
        })
    }

    /// Connections of worker `thread`.
    pub fn connections_of(&self, thread: usize) -> usize {
        share(self.connections, self.threads, thread)
    }

    /// Open-loop backlog bound of worker `thread` (at least 1).
    pub fn backlog_of(&self, thread: usize) -> usize {
        share(self.max_backlog, self.threads, thread).max(1)
    }

    /// Closed loop: counted requests worker `thread` may start (`None` = no bound).
    pub fn budget_of(&self, thread: usize) -> Option<u64> {
        self.stop.requests.map(|n| {
            let t = self.threads.max(1) as u64;
            n / t + u64::from((thread as u64) < n % t)
        })
    }

    /// Open loop: worker `thread`'s schedule from `start`; `None` in closed loop.
    pub fn schedule(&self, start: std::time::Instant, thread: usize) -> Option<Schedule> {
        match self.mode {
            Mode::Open { rate } => Some(Schedule::new(
                start,
                rate,
                self.warmup,
                self.stop,
                self.threads,
                thread,
            )),
            Mode::Closed => None,
        }
    }
}

/// Parse a duration: a number with an optional unit `ns`, `us`/`µs`, `ms`, `s`
/// (default), `m` or `h` (`10s`, `500ms`, `1.5m`, `2`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 10s, 500ms, 2m)"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        u => return Err(format!("unknown duration unit {u:?} in {s:?}")),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|_| format!("duration {s:?} out of range"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7ns").unwrap(), Duration::from_nanos(7));
        for bad in ["", "s", "10x", "-1s", "1e400", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plan_splits_and_validates() {
        let config = Config {
            url: "http://127.0.0.1:9/".into(),
            connections: 10,
            threads: 3,
            requests: Some(100),
            max_backlog: 8,
            ..Config::default()
        };
        let plan = Plan::new(&config).unwrap();
        assert_eq!(plan.mode, Mode::Closed);
        assert_eq!(
            (0..3).map(|t| plan.connections_of(t)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        assert_eq!((0..3).map(|t| plan.budget_of(t).unwrap()).sum::<u64>(), 100);
        assert_eq!((0..3).map(|t| plan.backlog_of(t)).sum::<usize>(), 8);
        assert!(plan.schedule(std::time::Instant::now(), 0).is_none());
        assert_eq!(plan.stop.duration, None);
        assert!(plan
            .request
            .starts_with(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));

        let more_threads = Plan::new(&Config {
            connections: 2,
            threads: 8,
            ..config.clone()
        })
        .unwrap();
        assert_eq!(more_threads.threads, 2);

        let default_stop = Plan::new(&Config {
            requests: None,
            rate: Some(100.0),
            ..config.clone()
        })
        .unwrap();
        assert_eq!(default_stop.stop.duration, Some(DEFAULT_DURATION));
        assert_eq!(default_stop.mode, Mode::Open { rate: 100.0 });

        for bad in [
            Config {
                connections: 0,
                ..config.clone()
            },
            Config {
                threads: 0,
                ..config.clone()
            },
            Config {
                rate: Some(0.0),
                ..config.clone()
            },
            Config {
                rate: Some(f64::NAN),
                ..config.clone()
            },
            Config {
                timeout: Duration::ZERO,
                ..config.clone()
            },
            Config {
                requests: Some(0),
                ..config.clone()
            },
            Config {
                duration: Some(Duration::ZERO),
                ..config.clone()
            },
            Config {
                url: "http://example.com/".into(),
                ..config.clone()
            },
        ] {
            assert!(Plan::new(&bad).is_err(), "{bad:?}");
        }
    }
}
