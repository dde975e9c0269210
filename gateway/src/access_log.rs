//! Optional JSON-lines access log, written off the data path.
//!
//! Each shard formats its lines into its own buffer (no lock, no syscall on the
//! request path) and hands full buffers — at 64 KiB, or every 250 ms — to one
//! writer thread over a channel; that thread does the blocking writes. If the
//! writer falls behind by more than 256 buffers (16 MiB), lines are dropped and
//! counted rather than stalling a shard.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Buffer size at which a shard hands its lines to the writer.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Longest time a line waits in a shard's buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Buffers queued to the writer before lines are dropped.
pub const QUEUE: usize = 256;

/// One access-log line.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// Unix time in milliseconds when the request head was parsed.
    pub ts_ms: u64,
    /// `x-request-id`.
    pub request_id: &'a str,
    /// Client address.
    pub client: &'a str,
    /// Method.
    pub method: &'a str,
    /// Path (no query).
    pub path: &'a str,
    /// Model named by the request.
    pub model: Option<&'a str>,
    /// Matched route.
    pub route: Option<&'a str>,
    /// Endpoint that served it.
    pub endpoint: Option<String>,
    /// Status sent (0: none, the client left first).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes: u64,
    /// Time to first streamed event, ms.
    pub ttft_ms: Option<f64>,
    /// Whole duration, ms.
    pub duration_ms: f64,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u64>,
    /// How the delivery ended: `ok` (the whole answer was written, whatever its
    /// status), `aborted_upstream` (the upstream closed, broke or stalled after
    /// the response began), `aborted_client` (the client went away first) or
    /// `send_timeout` (a write to the client blocked past `--send-timeout`).
    pub outcome: &'a str,
}

/// A shard's side of the access log.
pub struct ShardLog {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    /// Lines dropped because the writer fell behind.
    pub dropped: u64,
}

impl ShardLog {
    /// Append a line (formatting only; no I/O).
    pub fn push(&mut self, line: &Line<'_>) {
        if serde_json::to_writer(&mut self.buf, line).is_ok() {
            self.buf.push(b'\n');
        }
        if self.buf.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// Hand buffered lines to the writer thread (never blocks).
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(FLUSH_BYTES));
        match self.tx.try_send(full) {
            Ok(()) => {}
            Err(TrySendError::Full(b)) | Err(TrySendError::Disconnected(b)) => {
                self.dropped += memchr::memchr_iter(b'\n', &b).count() as u64;
            }
        }
    }
}

/// Where the log goes.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
}

impl AccessLog {
    /// Open `target` (`-` = stdout, else a file appended to) and start the writer thread.
    pub fn open(target: &PathBuf) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = if target.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out))?;
        Ok(AccessLog { tx })
    }

    /// A buffer for one shard.
    pub fn shard(&self) -> ShardLog {
        ShardLog {
            tx: self.tx.clone(),
            buf: Vec::with_capacity(FLUSH_BYTES),
            dropped: 0,
        }
    }
}

fn writer(rx: Receiver<Vec<u8>>, mut out: Box<dyn Write + Send>) {
    while let Ok(buf) = rx.recv() {
        if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
            tracing::warn!("access log write failed");
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
