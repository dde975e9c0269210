//! The simulated inference engine: continuous batching over a KV block pool with a prefix
//! cache and LoRA slots. Sans-IO: every call takes `now` (microseconds on any clock) and
//! the engine never reads a clock, sleeps or does I/O, so tests drive it on a virtual
//! clock.
//!
//! Model (one engine per server, like one vLLM `EngineCore`):
//! - **Queues**: a FIFO `waiting` queue and a `running` set of at most `max_num_seqs`.
//! - **Admission** at the start of each step, in FIFO order: a request needs its LoRA
//!   adapter loaded or a free slot (at most `max_loras` distinct adapters among running
//!   requests; a request whose adapter cannot load is skipped and keeps its place), and
//!   `ceil((prompt + max_tokens) / block_size)` KV blocks, **reserved up front** (no
//!   growth, no preemption); its leading prompt blocks found in the prefix cache are
//!   shared, not allocated. A request that does not fit in KV blocks stops admission
//!   (head-of-line, as vLLM).
//! - **Prefix cache**: see [`crate::kv`]; the lookup covers at most
//!   `(prompt − 1) / block_size` blocks so at least one token is computed (vLLM does the
//!   same). Queries count all prompt tokens, hits count cached tokens.
//! - **Step time** = Σ `prefill_us_per_token × uncached prompt tokens` of the requests
//!   admitted in this step + `call_overhead_us × calls` admitted in this step (a call is
//!   one API request, however many prompts it has: its first prompt carries the cost,
//!   [`NewRequest::call_overhead`]) + `embedding_us_per_input × prefill-only requests`
//!   admitted in this step + (`decode_step_us + decode_step_us_per_seq × decoding
//!   sequences`, when any sequence decodes); at least 1 µs. No chunked prefill: a long
//!   prefill delays every running sequence's next token, and the per-call overhead is
//!   serialized on the engine like vLLM's single scheduler/tokenizer loop: one call per
//!   step of 64 inputs costs one overhead, 64 calls of one input cost 64.
//! - **End of step**: every running sequence that decodes emits one token (a newly
//!   admitted request emits its first token here: TTFT = queue + its prefill step);
//!   a sequence that reached `max_tokens` finishes (`length`), a prefill-only (embedding)
//!   request finishes with no token (`stop`); their blocks are released to the cache.
//! - **Abort** (client gone) frees the request's blocks at once and counts it
//!   (`finished_reason="abort"`, `requests_cancelled`).
//!
//! Driving: call [`Engine::step`] with the current time whenever a request arrived or the
//! previous [`StepOutput::next_wakeup`] has passed; deliver its events.

use std::collections::{BTreeMap, HashSet, VecDeque};

use crate::kv::{BlockId, KvCache};
use crate::metrics::EngineMetrics;

/// Time in microseconds since an arbitrary origin chosen by the caller.
pub type Micros = u64;

/// Identifier of a request, chosen by the caller, unique among live requests.
pub type RequestId = u64;

/// Speed of the simulated GPU (changeable at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Time per uncached prompt token, µs.
    pub prefill_us_per_token: u64,
    /// Base time of a decode step, µs.
    pub decode_step_us: u64,
    /// Extra decode-step time per decoding sequence, µs.
    pub decode_step_us_per_seq: u64,
    /// Fixed cost of admitting one API call (its first prompt), µs.
    pub call_overhead_us: u64,
    /// Cost of admitting one prefill-only (embedding) prompt, µs, on top of its prefill.
    pub embedding_us_per_input: u64,
}

/// Fixed engine limits plus the initial [`Timing`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// KV blocks in the pool.
    pub num_gpu_blocks: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Most distinct LoRA adapters among running requests.
    pub max_loras: usize,
    /// Step timing.
    pub timing: Timing,
}

/// A request handed to the engine.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Caller-chosen id, echoed in events.
    pub id: RequestId,
    /// LoRA adapter the request needs, if any.
    pub lora: Option<String>,
    /// Prompt length in tokens.
    pub prompt_len: usize,
    /// Chained hashes of the prompt's full blocks (see [`crate::tokens::Prompt::block_hashes`]).
    pub block_hashes: Vec<u64>,
    /// Tokens to generate; 0 = prefill only (embeddings).
    pub max_tokens: usize,
    /// Whether admitting this request charges [`Timing::call_overhead_us`]: true for the
    /// first prompt of each API call, false for its other prompts.
    pub call_overhead: bool,
}

/// Why a request was refused at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddError {
    /// The request needs more KV blocks than the whole pool holds.
    TooLarge {
        /// Blocks it needs.
        needed_blocks: usize,
        /// Blocks in the pool.
        num_gpu_blocks: usize,
    },
    /// A LoRA request while `max_loras` is 0.
    LoraDisabled,
    /// The id is already live.
    DuplicateId,
}

/// Something that happened at the end of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// The request produced its output token number `index` (0-based).
    Token {
        /// Request.
        id: RequestId,
        /// Position of the token in the output.
        index: u32,
    },
    /// The request finished; it produced no more events.
    Finished {
        /// Request.
        id: RequestId,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Output tokens.
        completion_tokens: usize,
        /// Prompt tokens served from the prefix cache.
        cached_tokens: usize,
    },
}

/// Result of [`Engine::step`].
#[derive(Debug, Clone, Default)]
pub struct StepOutput {
    /// Events of the step that completed during this call, in running order.
    pub events: Vec<EngineEvent>,
    /// When the step in flight ends (call `step` again then); `None` when idle.
    pub next_wakeup: Option<Micros>,
}

#[derive(Debug)]
struct Seq {
    req: NewRequest,
    arrival: Micros,
    blocks: Vec<BlockId>,
    cached_tokens: usize,
    generated: usize,
    last_token_at: Option<Micros>,
}

/// The engine state machine.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    kv: KvCache,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    /// Adapter → running requests using it.
    lora_running: BTreeMap<String, usize>,
    /// Ids of waiting and running requests.
    live: HashSet<RequestId>,
    /// End of the step in flight.
    in_flight: Option<Micros>,
    metrics: EngineMetrics,
}

fn secs(us: Micros) -> f64 {
    us as f64 / 1e6
}

impl Engine {
    /// A fresh engine (empty cache, no requests).
    pub fn new(cfg: EngineConfig) -> Self {
        let mut cfg = cfg;
        cfg.block_size = cfg.block_size.max(1);
        cfg.max_num_seqs = cfg.max_num_seqs.max(1);
        Self {
            kv: KvCache::new(cfg.num_gpu_blocks),
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            lora_running: BTreeMap::new(),
            live: HashSet::new(),
            in_flight: None,
            metrics: EngineMetrics::default(),
        }
    }

    /// The configuration (with current timing).
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Changes step timing from the next step on.
    pub fn set_timing(&mut self, timing: Timing) {
        self.cfg.timing = timing;
    }

    /// KV blocks a request needs (prompt plus all output tokens).
    pub fn blocks_needed(&self, prompt_len: usize, max_tokens: usize) -> usize {
        (prompt_len + max_tokens).div_ceil(self.cfg.block_size)
    }

    /// Queues a request arriving at `now`.
    pub fn add_request(&mut self, req: NewRequest, now: Micros) -> Result<(), AddError> {
        let needed = self.blocks_needed(req.prompt_len, req.max_tokens);
        if needed > self.cfg.num_gpu_blocks {
            return Err(AddError::TooLarge {
                needed_blocks: needed,
                num_gpu_blocks: self.cfg.num_gpu_blocks,
            });
        }
        if req.lora.is_some() && self.cfg.max_loras == 0 {
            return Err(AddError::LoraDisabled);
        }
        if !self.live.insert(req.id) {
            return Err(AddError::DuplicateId);
        }
        self.waiting.push_back(Seq {
            req,
            arrival: now,
            blocks: Vec::new(),
            cached_tokens: 0,
            generated: 0,
            last_token_at: None,
        });
        Ok(())
    }

    /// Whether a request is waiting or running.
    pub fn contains(&self, id: RequestId) -> bool {
        self.live.contains(&id)
    }

    /// Cancels a request (client gone): frees its blocks. Returns whether it was live.
    pub fn abort(&mut self, id: RequestId) -> bool {
        if !self.live.remove(&id) {
            return false;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.req.id == id) {
            self.waiting.remove(i);
        } else if let Some(i) = self.running.iter().position(|s| s.req.id == id) {
            let seq = self.running.remove(i);
            self.release(&seq);
        } else {
            return false;
        }
        self.metrics.finished_abort += 1;
        true
    }

    /// Requests running.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    /// Requests waiting.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The KV pool, to turn event recording on or take the events.
    pub fn kv_mut(&mut self) -> &mut KvCache {
        &mut self.kv
    }

    /// The KV cache (read-only).
    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// Whether nothing is queued, running or in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.running.is_empty() && self.waiting.is_empty()
    }

    /// A snapshot of the metrics, gauges filled in.
    pub fn metrics(&self) -> EngineMetrics {
        let mut m = self.metrics.clone();
        m.running = self.running.len();
        m.waiting = self.waiting.len();
        m.kv_usage = self.kv.usage();
        m.running_loras = self.lora_running.keys().cloned().collect();
        let mut waiting: Vec<String> = self
            .waiting
            .iter()
            .filter_map(|s| s.req.lora.clone())
            .collect();
        waiting.sort();
        waiting.dedup();
        m.waiting_loras = waiting;
        m
    }

    /// Advances the engine to `now`: completes the step in flight if it has ended (its
    /// events are returned), then starts the next step if any request can run.
    pub fn step(&mut self, now: Micros) -> StepOutput {
        let mut out = StepOutput::default();
        if let Some(end) = self.in_flight {
            if now < end {
                out.next_wakeup = Some(end);
                return out;
            }
            self.in_flight = None;
            self.complete(now, &mut out.events);
        }
        if let Some(d) = self.schedule(now) {
            let end = now.saturating_add(d);
            self.in_flight = Some(end);
            out.next_wakeup = Some(end);
        }
        out
    }

    /// Admits what fits and returns the step's duration, or `None` when nothing runs.
    fn schedule(&mut self, now: Micros) -> Option<Micros> {
        let bs = self.cfg.block_size;
        let mut prefill_tokens: u64 = 0;
        let mut calls: u64 = 0;
        let mut embedding_inputs: u64 = 0;
        let mut i = 0;
        while i < self.waiting.len() && self.running.len() < self.cfg.max_num_seqs {
            let seq = &self.waiting[i];
            if let Some(lora) = &seq.req.lora {
                if !self.lora_running.contains_key(lora)
                    && self.lora_running.len() >= self.cfg.max_loras
                {
                    i += 1;
                    continue;
                }
            }
            let prompt_len = seq.req.prompt_len;
            let lookup_n = (prompt_len.saturating_sub(1) / bs).min(seq.req.block_hashes.len());
            let hit = self.kv.lookup(&seq.req.block_hashes[..lookup_n]);
            let total = self.blocks_needed(prompt_len, seq.req.max_tokens);
            let Some(blocks) = self.kv.allocate(&seq.req.block_hashes, hit, total) else {
                break; // head-of-line: wait for blocks
            };
            let Some(mut seq) = self.waiting.remove(i) else {
                break;
            };
            let cached = (hit * bs).min(prompt_len);
            seq.blocks = blocks;
            seq.cached_tokens = cached;
            self.metrics.prefix_cache_queries += prompt_len as u64;
            self.metrics.prefix_cache_hits += cached as u64;
            self.metrics.prompt_tokens += prompt_len as u64;
            self.metrics
                .queue_time
                .observe(secs(now.saturating_sub(seq.arrival)));
            prefill_tokens += (prompt_len - cached) as u64;
            calls += u64::from(seq.req.call_overhead);
            embedding_inputs += u64::from(seq.req.max_tokens == 0);
            if let Some(lora) = &seq.req.lora {
                *self.lora_running.entry(lora.clone()).or_insert(0) += 1;
            }
            self.running.push(seq);
        }
        if self.running.is_empty() {
            return None;
        }
        let t = self.cfg.timing;
        let decoding = self.running.iter().filter(|s| s.req.max_tokens > 0).count() as u64;
        let mut d = prefill_tokens
            .saturating_mul(t.prefill_us_per_token)
            .saturating_add(calls.saturating_mul(t.call_overhead_us))
            .saturating_add(embedding_inputs.saturating_mul(t.embedding_us_per_input));
        if decoding > 0 {
            d = d
                .saturating_add(t.decode_step_us)
                .saturating_add(t.decode_step_us_per_seq.saturating_mul(decoding));
        }
        self.metrics.steps += 1;
        Some(d.max(1))
    }

    /// Ends the step in flight at `now`: one token per decoding sequence, then finishes.
    fn complete(&mut self, now: Micros, events: &mut Vec<EngineEvent>) {
        let running = std::mem::take(&mut self.running);
        for mut seq in running {
            if seq.generated < seq.req.max_tokens {
                seq.generated += 1;
                self.metrics.generation_tokens += 1;
                events.push(EngineEvent::Token {
                    id: seq.req.id,
                    index: u32::try_from(seq.generated - 1).unwrap_or(u32::MAX),
                });
                match seq.last_token_at {
                    None => self
                        .metrics
                        .ttft
                        .observe(secs(now.saturating_sub(seq.arrival))),
                    Some(t) => self.metrics.itl.observe(secs(now.saturating_sub(t))),
                }
                seq.last_token_at = Some(now);
            }
            if seq.generated >= seq.req.max_tokens {
                if seq.req.max_tokens == 0 {
                    self.metrics.finished_stop += 1;
                } else {
                    self.metrics.finished_length += 1;
                }
                self.metrics
                    .e2e
                    .observe(secs(now.saturating_sub(seq.arrival)));
                events.push(EngineEvent::Finished {
                    id: seq.req.id,
                    prompt_tokens: seq.req.prompt_len,
                    completion_tokens: seq.generated,
                    cached_tokens: seq.cached_tokens,
                });
                self.release(&seq);
            } else {
                self.running.push(seq);
            }
        }
    }

    fn release(&mut self, seq: &Seq) {
        self.live.remove(&seq.req.id);
        self.kv.free(&seq.blocks);
        if let Some(lora) = &seq.req.lora {
            if let Some(n) = self.lora_running.get_mut(lora) {
                *n -= 1;
                if *n == 0 {
                    self.lora_running.remove(lora);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tokens::Prompt;

    const TIMING: Timing = Timing {
        prefill_us_per_token: 100,
        decode_step_us: 1_000,
        decode_step_us_per_seq: 100,
        call_overhead_us: 0,
        embedding_us_per_input: 0,
    };

    fn engine(max_num_seqs: usize, num_gpu_blocks: usize, block_size: usize) -> Engine {
        Engine::new(EngineConfig {
            max_num_seqs,
            num_gpu_blocks,
            block_size,
            max_loras: 2,
            timing: TIMING,
        })
    }

    fn req(id: RequestId, text: &str, max_tokens: usize, bs: usize) -> NewRequest {
        let p = Prompt::from_text(text);
        NewRequest {
            id,
            lora: None,
            prompt_len: p.len(),
            block_hashes: p.block_hashes("m", bs),
            max_tokens,
            call_overhead: true,
        }
    }

    fn words(prefix: &str, n: usize) -> String {
        (0..n)
            .map(|i| format!("{prefix}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs until idle; returns (time, event) pairs and the final time.
    fn run(e: &mut Engine, mut now: Micros) -> (Vec<(Micros, EngineEvent)>, Micros) {
        let mut all = Vec::new();
        for _ in 0..100_000 {
            let out = e.step(now);
            all.extend(out.events.into_iter().map(|ev| (now, ev)));
            match out.next_wakeup {
                Some(t) => now = t,
                None => return (all, now),
            }
        }
        panic!("engine did not go idle");
    }

    fn first_token_at(events: &[(Micros, EngineEvent)], id: RequestId) -> Micros {
        events
            .iter()
            .find(|(_, e)| matches!(e, EngineEvent::Token { id: i, index: 0 } if *i == id))
            .map(|(t, _)| *t)
            .unwrap()
    }

    #[test]
    fn admission_limited_by_max_num_seqs() {
        let mut e = engine(2, 1000, 4);
        for id in 0..3 {
            e.add_request(req(id, "a b c", 2, 4), 0).unwrap();
        }
        let out = e.step(0);
        assert!(out.next_wakeup.is_some());
        assert_eq!((e.num_running(), e.num_waiting()), (2, 1));
        let (events, _) = run(&mut e, out.next_wakeup.unwrap());
        let finished = events
            .iter()
            .filter(|(_, e)| matches!(e, EngineEvent::Finished { .. }))
            .count();
        assert_eq!(finished, 3);
        // Request 2 started only after 0 and 1 finished (2 steps each).
        assert!(first_token_at(&events, 2) > first_token_at(&events, 0));
        assert!(e.is_idle());
        assert_eq!(e.kv().blocks_in_use(), 0);
    }

    #[test]
    fn admission_limited_by_kv_blocks() {
        // 4 blocks of 4 tokens; each request needs ceil((4 + 4) / 4) = 2 blocks.
        let mut e = engine(16, 4, 4);
        e.add_request(req(0, &words("a", 4), 4, 4), 0).unwrap();
        e.add_request(req(1, &words("b", 4), 4, 4), 0).unwrap();
        e.add_request(req(2, &words("c", 4), 4, 4), 0).unwrap();
        let out = e.step(0);
        assert_eq!((e.num_running(), e.num_waiting()), (2, 1));
        assert_eq!(e.kv().blocks_in_use(), 4);
        assert!((e.metrics().kv_usage - 1.0).abs() < 1e-9);
        let (events, _) = run(&mut e, out.next_wakeup.unwrap());
        assert!(first_token_at(&events, 2) > first_token_at(&events, 1));
        // Too large for the whole pool: refused at once.
        assert_eq!(
            e.add_request(req(9, &words("d", 16), 1, 4), 0),
            Err(AddError::TooLarge {
                needed_blocks: 5,
                num_gpu_blocks: 4
            })
        );
    }

    #[test]
    fn prefix_cache_hit_shortens_prefill_and_counts() {
        let bs = 4;
        let prefix = words("sys", 64);
        let mut e = engine(16, 1000, bs);
        e.add_request(req(0, &format!("{prefix} first question"), 1, bs), 0)
            .unwrap();
        let out = e.step(0);
        let cold = out.next_wakeup.unwrap();
        let (_, t) = run(&mut e, cold);
        let m = e.metrics();
        assert_eq!(m.prefix_cache_hits, 0);
        assert_eq!(m.prefix_cache_queries, 66);

        e.add_request(req(1, &format!("{prefix} second one"), 1, bs), t)
            .unwrap();
        let warm = e.step(t).next_wakeup.unwrap() - t;
        // Cold: 66 prefill tokens; warm: 64 cached, 2 computed.
        assert_eq!(cold, 66 * 100 + 1_000 + 100);
        assert_eq!(warm, 2 * 100 + 1_000 + 100);
        let (_, _) = run(&mut e, t + warm);
        let m = e.metrics();
        assert_eq!(m.prefix_cache_hits, 64);
        assert_eq!(m.prefix_cache_queries, 132);
        assert_eq!(m.ttft.count(), 2);
    }

    #[test]
    fn full_prompt_hit_still_computes_one_token() {
        let bs = 4;
        let text = words("x", 8);
        let mut e = engine(16, 100, bs);
        e.add_request(req(0, &text, 1, bs), 0).unwrap();
        let (_, t) = run(&mut e, 0);
        e.add_request(req(1, &text, 1, bs), t).unwrap();
        let d = e.step(t).next_wakeup.unwrap() - t;
        // 8 tokens, lookup limited to (8 - 1) / 4 = 1 block: 4 cached, 4 computed.
        assert_eq!(d, 4 * 100 + 1_000 + 100);
        assert_eq!(e.metrics().prefix_cache_hits, 4);
    }

    #[test]
    fn lru_evicts_old_prefixes() {
        let bs = 4;
        // 8 blocks; each request: 8 prompt tokens + 4 output = 3 blocks, the first 2 full
        // prompt blocks (cacheable), the third released empty.
        let mut e = engine(1, 8, bs);
        let mut now = 0;
        for (id, p) in ["a", "b", "c", "d"].iter().enumerate() {
            e.add_request(req(id as u64, &words(p, 8), 4, bs), now)
                .unwrap();
            now = run(&mut e, now).1;
        }
        // a, b, c left 6 cached blocks and 2 empty; d needed 3, so the oldest cached block
        // went: a's tail (tails are released first, so evicted first).
        let hashes = |p: &str| Prompt::from_text(&words(p, 8)).block_hashes("m", bs);
        assert_eq!(e.kv().lookup(&hashes("d")), 2);
        assert_eq!(e.kv().lookup(&hashes("b")), 2);
        assert_eq!(e.kv().lookup(&hashes("a")), 1);
        assert_eq!(e.kv().cached_free_blocks(), 7);
        let before = e.metrics().prefix_cache_hits;
        // d again hits (lookup capped at (8 - 1) / 4 = 1 block); its 2 fresh blocks take
        // the one empty block and evict a's head, the oldest.
        e.add_request(req(10, &words("d", 8), 4, bs), now).unwrap();
        now = run(&mut e, now).1;
        assert_eq!(e.metrics().prefix_cache_hits - before, 4);
        assert_eq!(e.kv().lookup(&hashes("a")), 0);
        e.add_request(req(11, &words("a", 8), 4, bs), now).unwrap();
        run(&mut e, now);
        assert_eq!(e.metrics().prefix_cache_hits - before, 4);
    }

    #[test]
    fn decode_step_grows_with_batch_size() {
        let mut e = engine(16, 1000, 4);
        e.add_request(req(0, "", 3, 4), 0).unwrap();
        let first = e.step(0).next_wakeup.unwrap();
        let second = e.step(first).next_wakeup.unwrap() - first;
        assert_eq!(second, 1_000 + 100);
        let (_, t) = run(&mut e, first + second);

        for id in 1..=4 {
            e.add_request(req(id, "", 3, 4), t).unwrap();
        }
        let first = e.step(t).next_wakeup.unwrap();
        let second = e.step(first).next_wakeup.unwrap() - first;
        assert_eq!(second, 1_000 + 4 * 100);
    }

    #[test]
    fn abort_frees_blocks_and_counts() {
        let mut e = engine(1, 100, 4);
        e.add_request(req(0, &words("a", 8), 100, 4), 0).unwrap();
        e.add_request(req(1, &words("b", 8), 100, 4), 0).unwrap();
        let end = e.step(0).next_wakeup.unwrap();
        assert_eq!(e.kv().blocks_in_use(), 27);
        assert!(e.abort(0));
        assert!(e.abort(1));
        assert!(!e.abort(1));
        assert_eq!(e.kv().blocks_in_use(), 0);
        assert_eq!((e.num_running(), e.num_waiting()), (0, 0));
        let out = e.step(end);
        assert!(out.events.is_empty());
        assert_eq!(out.next_wakeup, None);
        assert_eq!(e.metrics().finished_abort, 2);
    }

    #[test]
    fn lora_slots_limit_running_adapters() {
        let mut e = Engine::new(EngineConfig {
            max_num_seqs: 16,
            num_gpu_blocks: 1000,
            block_size: 4,
            max_loras: 1,
            timing: TIMING,
        });
        let r = |id, lora: &str| {
            let mut q = req(id, "hi", 2, 4);
            q.lora = Some(lora.to_owned());
            q
        };
        e.add_request(r(0, "a"), 0).unwrap();
        e.add_request(r(1, "b"), 0).unwrap();
        e.add_request(r(2, "a"), 0).unwrap();
        e.add_request(req(3, "base", 2, 4), 0).unwrap();
        let end = e.step(0).next_wakeup.unwrap();
        // "b" cannot load: skipped; "a" twice and the base request run.
        assert_eq!((e.num_running(), e.num_waiting()), (3, 1));
        let m = e.metrics();
        assert_eq!(m.running_loras, vec!["a"]);
        assert_eq!(m.waiting_loras, vec!["b"]);
        let (events, _) = run(&mut e, end);
        assert!(first_token_at(&events, 1) > end);
        let m = e.metrics();
        assert!(m.running_loras.is_empty() && m.waiting_loras.is_empty());
        assert_eq!(m.finished_length, 4);
    }

    #[test]
    fn prefill_only_requests_finish_after_prefill() {
        let mut e = engine(16, 100, 4);
        e.add_request(req(0, "one two three", 0, 4), 0).unwrap();
        let end = e.step(0).next_wakeup.unwrap();
        assert_eq!(end, 300);
        let out = e.step(end);
        assert_eq!(
            out.events,
            vec![EngineEvent::Finished {
                id: 0,
                prompt_tokens: 3,
                completion_tokens: 0,
                cached_tokens: 0
            }]
        );
        assert_eq!(e.metrics().finished_stop, 1);
    }

    #[test]
    fn step_before_wakeup_changes_nothing() {
        let mut e = engine(16, 100, 4);
        e.add_request(req(0, "a", 2, 4), 0).unwrap();
        let end = e.step(0).next_wakeup.unwrap();
        let out = e.step(end - 1);
        assert!(out.events.is_empty());
        assert_eq!(out.next_wakeup, Some(end));
        // A request arriving mid-step joins at the next step.
        e.add_request(req(1, "b", 1, 4), end - 1).unwrap();
        assert_eq!(e.num_waiting(), 1);
        let out = e.step(end);
        assert_eq!(out.events.len(), 1);
        assert_eq!(e.num_running(), 2);
    }

    fn costly(max_num_seqs: usize, call_overhead_us: u64, embedding_us_per_input: u64) -> Engine {
        Engine::new(EngineConfig {
            max_num_seqs,
            num_gpu_blocks: 1000,
            block_size: 4,
            max_loras: 2,
            timing: Timing {
                call_overhead_us,
                embedding_us_per_input,
                ..TIMING
            },
        })
    }

    /// One API call of `inputs` prompts `text` (only the first carries the call overhead).
    fn call(
        e: &mut Engine,
        first_id: RequestId,
        inputs: usize,
        text: &str,
        max_tokens: usize,
        now: Micros,
    ) {
        for k in 0..inputs {
            let mut r = req(first_id + k as u64, text, max_tokens, 4);
            r.call_overhead = k == 0;
            e.add_request(r, now).unwrap();
        }
    }

    #[test]
    fn call_overhead_is_charged_once_per_call_in_the_admitting_step() {
        // One call of 3 two-token inputs: 2,000 µs overhead once + 6 tokens × 100 µs.
        let mut e = costly(16, 2_000, 0);
        call(&mut e, 0, 3, "a b", 0, 0);
        assert_eq!(e.step(0).next_wakeup, Some(2_000 + 600));
        let (events, end) = run(&mut e, 2_600);
        assert_eq!(end, 2_600);
        assert_eq!(events.len(), 3);

        // Three calls of one input each, all admitted in one step: three overheads.
        let mut e = costly(16, 2_000, 0);
        for id in 0..3 {
            call(&mut e, id, 1, "a b", 0, 0);
        }
        assert_eq!(e.step(0).next_wakeup, Some(3 * 2_000 + 600));

        // Default (0): the step time is unchanged.
        let mut e = costly(16, 0, 0);
        call(&mut e, 0, 3, "a b", 0, 0);
        assert_eq!(e.step(0).next_wakeup, Some(600));
    }

    #[test]
    fn call_overhead_goes_to_the_step_that_admits_the_call() {
        // max_num_seqs 2: a 3-input call is admitted over two steps; only the first pays.
        let mut e = costly(2, 2_000, 0);
        call(&mut e, 0, 3, "a b", 0, 0);
        let first = e.step(0).next_wakeup.unwrap();
        assert_eq!(first, 2_000 + 2 * 200);
        let second = e.step(first).next_wakeup.unwrap();
        assert_eq!(second - first, 200);

        // A call arriving mid-step lengthens the next step, not the one in flight, and
        // delays the token of the sequence already decoding (serialized on the engine).
        let mut e = costly(16, 2_000, 0);
        call(&mut e, 0, 1, "a", 3, 0);
        let end1 = e.step(0).next_wakeup.unwrap();
        assert_eq!(end1, 2_000 + 100 + 1_000 + 100);
        call(&mut e, 10, 1, "x y", 0, end1 - 1);
        assert_eq!(e.step(end1 - 1).next_wakeup, Some(end1));
        let end2 = e.step(end1).next_wakeup.unwrap();
        assert_eq!(end2 - end1, 2_000 + 200 + 1_000 + 100);
        // Without new calls the decode step is back to its plain cost.
        let end3 = e.step(end2).next_wakeup.unwrap();
        assert_eq!(end3 - end2, 1_000 + 100);
    }

    #[test]
    fn embedding_inputs_cost_per_input_plus_prefill() {
        // k inputs cost k × 50 µs + their prefill; a generating request pays no per-input cost.
        let mut e = costly(64, 0, 50);
        call(&mut e, 0, 4, "a b c", 0, 0);
        assert_eq!(e.step(0).next_wakeup, Some(4 * 50 + 4 * 3 * 100));
        let mut e = costly(64, 0, 50);
        call(&mut e, 0, 1, "a b c", 2, 0);
        assert_eq!(e.step(0).next_wakeup, Some(3 * 100 + 1_000 + 100));

        // The batching trade-off on the virtual clock: 64 one-input calls versus one
        // 64-input call, 2 ms overhead, 50 µs per input, no prefill.
        let timing = |e: &mut Engine| {
            let t = e.config().timing;
            e.set_timing(Timing {
                prefill_us_per_token: 0,
                ..t
            });
        };
        let mut alone = costly(256, 2_000, 50);
        timing(&mut alone);
        for id in 0..64 {
            call(&mut alone, id, 1, "w", 0, 0);
        }
        let mut merged = costly(256, 2_000, 50);
        timing(&mut merged);
        call(&mut merged, 0, 64, "w", 0, 0);
        let (a, ta) = run(&mut alone, 0);
        let (m, tm) = run(&mut merged, 0);
        assert_eq!((a.len(), m.len()), (64, 64));
        assert_eq!(ta, 64 * 2_000 + 64 * 50);
        assert_eq!(tm, 2_000 + 64 * 50);
    }
}
