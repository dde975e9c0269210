//! Tokenizing off the shards (precise prefix routing, #18).
//!
//! Computing a request's vLLM block keys ([`crate::kv_tokenize`]) costs about
//! 265 µs for a 1k-token prompt and 2.4 ms for an 8k-token one (bench
//! `kv_hash`): done on a shard, that long a stall delays every other
//! connection of the shard. So a prompt body longer than
//! `--kv-tokenize-inline-bytes` (default 2 KiB, about 100 µs of work) is sent
//! to one of `--kv-tokenize-threads` worker threads (default 1) and the
//! request's task waits for the keys while the shard serves its other
//! connections; shorter ones are keyed inline, where a hand-off would cost
//! more than it saves.
//!
//! - **Queue.** One bounded channel per worker ([`QUEUE_PER_WORKER`] jobs);
//!   a shard hands a job to the first worker with room, starting from its own
//!   rotation. This is the one cross-core hand-off on a request's path besides
//!   the snapshots, and only for large prompts on models with a tokenizer,
//!   where a contended enqueue (~100 ns) is noise next to the milliseconds of
//!   work it moves away; a job owns a copy of the body (the connection's
//!   buffer is reused while the request waits).
//! - **Waiting.** The shard has no cross-thread wake-up (monoio without its
//!   `sync` feature), so the task checks the job's slot (an atomic load) on a
//!   250 µs timer, at most `--kv-tokenize-timeout` (default 50 ms).
//! - **Never worse than approximate.** A full queue, a timeout or a body the
//!   tokenizer cannot key gives no keys: the request is scored by the
//!   approximate index, as a model without a tokenizer is. Counted in
//!   `gateway_kv_tokenize_total{result="offloaded|queue_full|timeout"}`.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::kv_tokenize::Tokenizers;

/// Jobs each worker's queue holds.
pub const QUEUE_PER_WORKER: usize = 64;

/// How often a waiting request checks its job.
const POLL: Duration = Duration::from_micros(250);

/// Outcomes counted in `gateway_kv_tokenize_total` (labels).
pub const RESULTS: [&str; 3] = ["offloaded", "queue_full", "timeout"];

/// `gateway_kv_tokenize_total` by [`RESULTS`]: written by the workers
/// (offloaded) and by shards only on the fallback paths.
pub static COUNTS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// `--kv-tokenize-*`.
#[derive(Clone, Copy, Debug)]
pub struct OffloadConfig {
    /// Worker threads; 0 keys every prompt inline.
    pub threads: usize,
    /// Bodies up to this many bytes are keyed on the shard.
    pub inline_bytes: usize,
    /// Longest a request waits for its keys.
    pub timeout: Duration,
}

/// One job: the keys of one body, computed by a worker.
struct Job {
    model: Box<str>,
    lora: bool,
    body: Box<[u8]>,
    slot: Arc<OnceLock<Option<Vec<u64>>>>,
}

/// The worker threads and their queues.
pub struct Offload {
    queues: Vec<SyncSender<Job>>,
    config: OffloadConfig,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload")
            .field("config", &self.config)
            .finish()
    }
}

thread_local! {
    /// Where this shard's next job starts looking for room.
    static NEXT: Cell<usize> = const { Cell::new(0) };
}

impl Offload {
    /// Start `config.threads` workers keying with `tokenizers`; `None` when
    /// there are none to start (no worker, or no tokenizer). The workers end
    /// when the `Offload` is dropped.
    pub fn start(
        tokenizers: Arc<Tokenizers>,
        config: OffloadConfig,
    ) -> Result<Option<Self>, String> {
        if config.threads == 0 || tokenizers.is_empty() {
            return Ok(None);
        }
        let mut queues = Vec::with_capacity(config.threads);
        for i in 0..config.threads {
            let (tx, rx) = sync_channel::<Job>(QUEUE_PER_WORKER);
            let tok = tokenizers.clone();
            std::thread::Builder::new()
                .name(format!("kv-tokenize-{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        let lora = job.lora.then_some(&*job.model);
                        let keys = tok.keys(&job.model, lora, &job.body);
                        let _ = job.slot.set(keys);
                        COUNTS[0].fetch_add(1, Ordering::Relaxed);
                    }
                })
                .map_err(|e| format!("cannot start the kv-tokenize thread: {e}"))?;
            queues.push(tx);
        }
        Ok(Some(Self { queues, config }))
    }

    /// Whether a body of `len` bytes is keyed inline.
    pub fn inline(&self, len: usize) -> bool {
        len <= self.config.inline_bytes
    }

    /// Hand `body` to a worker: the slot its keys will be set in, or `None`
    /// when every queue is full.
    fn submit(
        &self,
        model: &str,
        lora: bool,
        body: &[u8],
    ) -> Option<Arc<OnceLock<Option<Vec<u64>>>>> {
        let slot = Arc::new(OnceLock::new());
        let mut job = Job {
            model: model.into(),
            lora,
            body: body.into(),
            slot: slot.clone(),
        };
        let n = self.queues.len();
        let start = NEXT.with(|c| {
            let v = c.get();
            c.set(v.wrapping_add(1));
            v
        });
        for k in 0..n {
            match self.queues[(start + k) % n].try_send(job) {
                Ok(()) => return Some(slot),
                Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => job = j,
            }
        }
        COUNTS[1].fetch_add(1, Ordering::Relaxed);
        None
    }

    /// The keys of `body` for `model` computed by a worker, waited for on the
    /// shard's timer; `None` (approximate scoring) on a full queue or past
    /// the timeout.
    pub async fn keys(&self, model: &str, lora: bool, body: &[u8]) -> Option<Vec<u64>> {
        let slot = self.submit(model, lora, body)?;
        let deadline = monoio::time::Instant::now() + self.config.timeout;
        loop {
            if let Some(keys) = slot.get() {
                return keys.clone();
            }
            if monoio::time::Instant::now() >= deadline {
                COUNTS[2].fetch_add(1, Ordering::Relaxed);
                return None;
            }
            monoio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn tokenizers() -> Arc<Tokenizers> {
        let data = |n: &str| format!("{}/tests/data/kv/{n}", env!("CARGO_MANIFEST_DIR"));
        Arc::new(
            Tokenizers::load(
                &[format!("m={}", data("tokenizer.json"))],
                &[format!("m={}", data("chat_template.jinja"))],
                16,
                "vllm-none-hash",
            )
            .unwrap(),
        )
    }

    fn body(words: usize) -> String {
        let p: Vec<String> = (0..words).map(|i| (i % 2000).to_string()).collect();
        format!(r#"{{"model":"m","prompt":"{}"}}"#, p.join(" "))
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn offloaded_keys_equal_inline_ones() {
        let tok = tokenizers();
        let cfg = OffloadConfig {
            threads: 2,
            inline_bytes: 64,
            timeout: Duration::from_secs(10),
        };
        let off = Offload::start(tok.clone(), cfg).unwrap().unwrap();
        let b = body(800);
        assert!(!off.inline(b.len()));
        let inline = tok.keys("m", None, b.as_bytes()).unwrap();
        assert_eq!(inline.len(), 50);
        let got = run(off.keys("m", false, b.as_bytes())).unwrap();
        assert_eq!(got, inline);
        // A body the tokenizer cannot key, and a model without a tokenizer.
        assert_eq!(run(off.keys("m", false, b"not json")), None);
        assert_eq!(run(off.keys("other", false, b.as_bytes())), None);
    }

    #[test]
    fn nothing_starts_without_threads_or_tokenizers() {
        let cfg = OffloadConfig {
            threads: 0,
            inline_bytes: 0,
            timeout: Duration::from_millis(1),
        };
        assert!(Offload::start(tokenizers(), cfg).unwrap().is_none());
        let cfg = OffloadConfig { threads: 1, ..cfg };
        assert!(Offload::start(Arc::new(Tokenizers::default()), cfg)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_full_queue_and_a_timeout_fall_back_to_no_keys() {
        // A worker that is never free: its queue is filled by hand, its
        // receiver kept (the thread is not started).
        let (tx, _rx) = sync_channel::<Job>(1);
        let off = Offload {
            queues: vec![tx],
            config: OffloadConfig {
                threads: 1,
                inline_bytes: 0,
                timeout: Duration::from_millis(5),
            },
        };
        let full0 = COUNTS[1].load(Ordering::Relaxed);
        let timeout0 = COUNTS[2].load(Ordering::Relaxed);
        // The first job is queued and never answered: a timeout.
        assert_eq!(run(off.keys("m", false, b"{}")), None);
        assert!(COUNTS[2].load(Ordering::Relaxed) > timeout0);
        // The queue (one job) is full now: refused at once.
        assert!(off.submit("m", false, b"{}").is_none());
        assert!(COUNTS[1].load(Ordering::Relaxed) > full0);
    }
}
