//! `shardgate-load`: an HTTP/1.1 load generator on shardgate's own runtime
//! (monoio, one runtime per worker thread, io_uring or epoll).
//!
//! Two modes:
//! - **open loop** (`rate` set): requests start on a fixed schedule,
//!   `start + g / rate` for request `g`, whatever the server does; latency is
//!   measured from that intended start (coordinated-omission-correct, see
//!   [`schedule`]); a bounded pool of keep-alive connections carries them (a request
//!   waits in a bounded backlog for a free connection, and that wait is part of its
//!   latency; a request that finds the backlog full is counted as dropped);
//! - **closed loop**: each connection sends its next request as soon as the
//!   previous response ends (maximum throughput).
//!
//! Threads split the connections, the rate (thread `t` of `T` takes every `T`-th
//! request of the global schedule) and the request budget; each keeps its own HDR
//! histograms, merged exactly at the end. Request bytes are rendered once
//! ([`template`]); responses are decoded with shardgate-http ([`response`]).
//! Only this machine may be targeted ([`target`]).
//!
//! Library use: build a [`Config`], call [`run`] with a progress callback (called
//! about once a second), read the [`Report`]. The `shardgate-load` binary is a thin
//! CLI over that ([`cli`]).
//!
//! Numbers: start 50 ms after [`run`] is called (threads build their runtimes and
//! connect meanwhile); progress every 1 s; timer precision a few µs ([`timers`]).

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod queue;
pub mod report;
pub mod response;
pub mod schedule;
pub mod stats;
pub mod target;
pub mod template;
pub mod timers;
mod worker;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::{parse_duration, Config, Mode, Plan};
pub use report::{Progress, Report};
pub use schedule::{Schedule, Stop};
pub use stats::{Outcome, Stats, Summary};
pub use template::{RequestSpec, Template};

/// Time between [`run`] and the first request: workers start and connect meanwhile.
pub const START_LEAD: Duration = Duration::from_millis(50);
/// How long after a tick boundary the main thread prints (workers report at the
/// boundary).
const PRINT_LAG: Duration = Duration::from_millis(20);

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Bad or refused `--url`.
    #[error("invalid --url {0}")]
    Url(String),
    /// Bad `--header`.
    #[error("invalid --header {0}")]
    Header(String),
    /// Any other invalid value.
    #[error("{0}")]
    Value(String),
}

/// Why a run did not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Worker threads could not be started.
    #[error("cannot start worker threads: {0}")]
    Spawn(std::io::Error),
    /// Some worker threads ended without finishing (runtime could not be built, or
    /// a panic).
    #[error("{failed} of {threads} worker threads did not finish (runtime could not start?)")]
    Worker {
        /// Threads that failed.
        failed: usize,
        /// Threads started.
        threads: usize,
    },
}

/// Run a load test to completion and report. `progress` is called on the calling
/// thread about once a second while it runs.
pub fn run(config: &Config, progress: &mut dyn FnMut(&Progress)) -> Result<Report, RunError> {
    let plan = Arc::new(Plan::new(config)?);
    let threads = plan.threads;
    let start = Instant::now() + START_LEAD;
    let (tx, rx) = mpsc::channel();
    let mut recyclers = Vec::with_capacity(threads);
    let mut payloads = Vec::with_capacity(threads);
    for thread in 0..threads {
        let (rtx, rrx) = mpsc::channel();
        recyclers.push(rtx);
        payloads.push(worker::Payload {
            plan: plan.clone(),
            start,
            thread,
            tx: tx.clone(),
            recycle: rrx,
            exit: worker::ExitGuard(tx.clone()),
        });
    }
    drop(tx);
    let shards = shardgate_runtime::spawn_shards(payloads, config.pin, worker::main)
        .map_err(RunError::Spawn)?;

    let mut total = Stats::new();
    let mut drivers = Vec::with_capacity(threads);
    let mut exited = 0;
    let mut next_print = start + worker::TICK + PRINT_LAG;
    let mut last = (start, 0u64);
    while exited < threads {
        let now = Instant::now();
        if now >= next_print {
            let ended = total.counts.requests() + total.warmup;
            let dt = now.saturating_duration_since(last.0).as_secs_f64();
            progress(&Progress {
                elapsed: now.saturating_duration_since(start),
                warmup: now < start + plan.warmup,
                ok: total.counts.ok,
                failed: total.counts.failed(),
                rps: if dt > 0.0 {
                    ended.saturating_sub(last.1) as f64 / dt
                } else {
                    0.0
                },
                p99_us: Summary::of(&total.latency).map(|s| s.p99_us),
            });
            last = (now, ended);
            next_print += worker::TICK;
            continue;
        }
        match rx.recv_timeout(next_print - now) {
            Ok(worker::Msg::Tick { thread, mut stats }) => {
                total.merge(&stats);
                stats.reset();
                if let Some(r) = recyclers.get(thread) {
                    let _ = r.send(stats);
                }
            }
            Ok(worker::Msg::Done { stats, driver }) => {
                total.merge(&stats);
                drivers.push(driver);
            }
            Ok(worker::Msg::Exit) => exited += 1,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    shards.join();
    if drivers.len() < threads {
        return Err(RunError::Worker {
            failed: threads - drivers.len(),
            threads,
        });
    }
    Ok(Report::new(&plan, &total, &drivers, start))
}
