//! Micro-batching on the data path: the shard side of `BatchingPolicy`.
//!
//! A rule linked to a `BatchingPolicy` (ExtensionRef, or a `targetRefs` default)
//! sends its non-streaming `/v1/embeddings` and `/v1/completions` requests through
//! this shard's [`shardgate_batching::Batcher`]: the request picks its queue by
//! `X-Priority` (unknown name → 400), else by its resolved priority (above 0 the
//! most urgent queue, 0 the default queue, below 0 the least urgent one), waits in
//! its lane (same model, parameters, route rule and credentials), and a flush —
//! full, oldest member at the queue's `maxLatency`, or at once when adaptive
//! batching sees the target below `targetUtilization` — merges the lane into one
//! upstream call whose answer is split back byte-exactly, each member getting only
//! its own items. Requests that cannot be merged go alone through the normal path.
//! Everything stays on the shard: one batcher per policy, no cross-core traffic.
//! A driver task per policy sleeps until the batcher's next deadline.
//!
//! The adaptive signal of a lane is the least utilised healthy endpoint its rule
//! reaches, each one's utilisation being [`shardgate_batching::EndpointLoad`] over
//! the latest scoring snapshot: KV use, GPU use, its queue, and running plus
//! waiting (or the gateway's in-flight, whichever is larger) over the capacity
//! learned per endpoint ([`shardgate_batching::CapacityEstimate`]). A lane carries
//! its rule's dense id, so finding its backends is one index, not a scan. A merged
//! call counts as one in-flight request on its endpoint, and is shed when all
//! endpoints are saturated only if every member is sheddable (its highest
//! priority is below 0).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardgate_batching::{
    classify, merge, retry_alone, split, split_error, BatchKey, BatchPolicy, BatchSpec, Batcher,
    CapacityEstimate, EndpointLoad, FlushReason, Pending, QueueId, QueueSpec, ReadyBatch, Reject,
};
use shardgate_routing::scoring::PickRequest;
use shardgate_routing::telemetry::SignalKind;
use shardgate_routing::RoutingTable;

use crate::shard::Shard;

/// What a member gets back.
#[derive(Debug)]
pub struct Reply {
    /// Status for the client.
    pub status: u16,
    /// JSON body for the client.
    pub body: Vec<u8>,
}

/// What separates lanes beyond the body's batch key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaneCtx {
    /// Dense rule id ([`RoutingTable::rule`]).
    rule_id: usize,
    path: String,
    model: String,
    auth: Option<Vec<u8>>,
}

/// A waiting request.
pub struct Member {
    body: Bytes,
    priority: i32,
    tx: local_sync::oneshot::Sender<Reply>,
}

type Lane = (BatchKey, LaneCtx);

/// One policy's batcher on one shard.
pub struct PolicyBatcher {
    /// `namespace/name` of the BatchingPolicy.
    pub key: String,
    batcher: RefCell<Batcher<Member, Lane>>,
    wake: Notify,
    /// Queue names by [`QueueId`].
    queue_names: Vec<String>,
    /// Per endpoint id: its learned capacity (grown on demand).
    capacity: RefCell<Vec<CapacityEstimate>>,
}

/// Build a shard's batchers, one per BatchingPolicy (errors name the policy and field).
pub fn policies(table: &RoutingTable) -> Result<Vec<(String, BatchPolicy)>, String> {
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for rule in table.rules() {
        let Some(key) = rule.batching else { continue };
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let Some(p) = table.batching_policy(key) else {
            continue;
        };
        let spec = BatchSpec {
            max_batch_size: p.spec.max_batch_size,
            max_latency: p.spec.max_latency,
            adaptive_enabled: p.spec.adaptive_batching.as_ref().is_some_and(|a| a.enabled),
            target_utilization: p
                .spec
                .adaptive_batching
                .as_ref()
                .and_then(|a| a.target_utilization),
            queues: p
                .spec
                .priority_queues
                .iter()
                .map(|q| QueueSpec {
                    name: q.name.clone(),
                    max_latency: q.max_latency,
                    max_batch_size: q.max_batch_size,
                })
                .collect(),
        };
        let policy =
            BatchPolicy::from_spec(&spec).map_err(|e| format!("BatchingPolicy {key}: {e}"))?;
        out.push((key.to_string(), policy));
    }
    Ok(out)
}

impl PolicyBatcher {
    /// A batcher for `policy`.
    pub fn new(key: String, policy: BatchPolicy) -> Self {
        let queue_names = policy.queues().iter().map(|q| q.name.clone()).collect();
        PolicyBatcher {
            key,
            batcher: RefCell::new(Batcher::new(policy)),
            wake: Notify::default(),
            queue_names,
            capacity: RefCell::new(Vec::new()),
        }
    }

    /// The name of queue `id` (`"default"` for an id of another policy).
    pub fn queue_name(&self, id: QueueId) -> &str {
        self.queue_names
            .get(id.0)
            .map_or(shardgate_batching::policy::DEFAULT_QUEUE, String::as_str)
    }

    /// The admission priority of queue `name` (higher is more important).
    pub fn priority_of(&self, name: &str) -> Option<i32> {
        let b = self.batcher.borrow();
        let id = b.policy().queue_id(name)?;
        b.policy().queues().get(id.0).map(|q| q.priority)
    }

    /// Requests waiting per queue: (queue name, depth).
    pub fn depths(&self) -> Vec<(String, usize)> {
        let b = self.batcher.borrow();
        b.policy()
            .queues()
            .iter()
            .enumerate()
            .map(|(i, q)| (q.name.clone(), b.depth(shardgate_batching::QueueId(i))))
            .collect()
    }

    /// Per queue: flushes by reason, batch-size and wait histograms (for metrics).
    pub fn stats(&self) -> Vec<QueueMetrics> {
        let b = self.batcher.borrow();
        b.stats()
            .map(|(q, s)| QueueMetrics {
                queue: q.name.clone(),
                depth: s.depth as u64,
                flushes: FLUSH_REASONS
                    .iter()
                    .map(|r| (flush_name(*r), s.flushes(*r)))
                    .collect(),
                batch_size: s.batch_size.buckets().collect(),
                batch_size_sum: s.batch_size.sum(),
                queued_us: s.queued_us.buckets().collect(),
                queued_us_sum: s.queued_us.sum(),
                expired: s.expired,
                rejected_full: s.rejected_full,
            })
            .collect()
    }
}

/// A queue's numbers for `/metrics`.
#[derive(Debug, Clone)]
pub struct QueueMetrics {
    /// Queue (priority) name.
    pub queue: String,
    /// Requests waiting.
    pub depth: u64,
    /// Flushes by reason.
    pub flushes: Vec<(&'static str, u64)>,
    /// Batch-size buckets: (upper bound, count); `None` = +Inf.
    pub batch_size: Vec<(Option<u64>, u64)>,
    /// Sum of batch sizes.
    pub batch_size_sum: u64,
    /// Wait buckets in µs.
    pub queued_us: Vec<(Option<u64>, u64)>,
    /// Sum of waits in µs.
    pub queued_us_sum: u64,
    /// Requests expired waiting.
    pub expired: u64,
    /// Requests refused on a full queue.
    pub rejected_full: u64,
}

const FLUSH_REASONS: [FlushReason; 5] = [
    FlushReason::Full,
    FlushReason::Deadline,
    FlushReason::Adaptive,
    FlushReason::Alone,
    FlushReason::Drain,
];

fn flush_name(r: FlushReason) -> &'static str {
    match r {
        FlushReason::Full => "full",
        FlushReason::Deadline => "deadline",
        FlushReason::Adaptive => "adaptive",
        FlushReason::Alone => "alone",
        FlushReason::Drain => "drain",
    }
}

/// What [`submit`] decided.
pub enum Submitted {
    /// The request is not batchable: send it through the normal path.
    NotBatchable,
    /// Answer now (unknown queue, queue full).
    Refused {
        /// Status.
        status: u16,
        /// Error code.
        code: &'static str,
        /// Message.
        message: String,
    },
    /// Wait for the reply; the request waits in this queue.
    Waiting(local_sync::oneshot::Receiver<Reply>, QueueId),
}

/// Everything [`submit`] needs to know about the request.
pub struct Request<'a> {
    /// Request path.
    pub path: &'a str,
    /// Body.
    pub body: &'a Bytes,
    /// `X-Priority` value (a queue name).
    pub priority: Option<&'a str>,
    /// The request's resolved priority: picks the queue when `priority` is
    /// `None`, and lets a batch of sheddable members be shed.
    pub level: i32,
    /// `Authorization` value.
    pub auth: Option<&'a [u8]>,
    /// Model.
    pub model: &'a str,
    /// Dense rule id ([`shardgate_routing::RouteMatch::rule_id`]).
    pub rule_id: usize,
}

/// Queue a request on `pb` if it can be merged.
pub fn submit(shard: &Rc<Shard>, pb: &Rc<PolicyBatcher>, req: &Request<'_>) -> Submitted {
    let now = Instant::now();
    let Ok(Some(class)) = classify(req.path, req.body) else {
        return Submitted::NotBatchable;
    };
    let mut b = pb.batcher.borrow_mut();
    let queue = match req.priority {
        None => b.policy().queue_for_priority(req.level),
        Some(name) => match b.policy().queue_id(name) {
            Some(q) => q,
            None => {
                let names: Vec<&str> = b
                    .policy()
                    .queues()
                    .iter()
                    .map(|q| q.name.as_str())
                    .collect();
                return Submitted::Refused {
                    status: 400,
                    code: "unknown_priority_queue",
                    message: format!(
                        "X-Priority `{name}` names no queue of BatchingPolicy {}; queues: {}",
                        pb.key,
                        names.join(", ")
                    ),
                };
            }
        },
    };
    let (tx, rx) = local_sync::oneshot::channel();
    let ctx = LaneCtx {
        rule_id: req.rule_id,
        path: req.path.to_string(),
        model: req.model.to_string(),
        auth: req.auth.map(|a| a.to_vec()),
    };
    let pending = Pending {
        queue,
        key: Some((class.key, ctx)),
        items: class.inputs,
        payload: Member {
            body: req.body.clone(),
            priority: req.level,
            tx,
        },
    };
    match b.push(pending, now) {
        Ok(_) => {
            drop(b);
            pb.wake.notify();
            drain(shard, pb);
            Submitted::Waiting(rx, queue)
        }
        Err(rej) => {
            let (status, code) = match rej.reason {
                Reject::UnknownQueue => (400, "unknown_priority_queue"),
                _ => (429, "queue_full"),
            };
            Submitted::Refused {
                status,
                code,
                message: format!(
                    "batching queue of BatchingPolicy {} refused the request ({:?})",
                    pb.key, rej.reason
                ),
            }
        }
    }
}

/// Flush every ready batch (each becomes its own task) and fail expired members.
fn drain(shard: &Rc<Shard>, pb: &Rc<PolicyBatcher>) {
    let now = Instant::now();
    let snapshot = shard.control.snapshot.load();
    let table = &shard.state.table;
    let mut capacity = pb.capacity.borrow_mut();
    loop {
        let ready = pb.batcher.borrow_mut().poll_ready_with(now, |(_, ctx)| {
            // The adaptive signal: the least utilised healthy endpoint the lane reaches.
            let rule = table.rule(ctx.rule_id)?;
            rule.backends
                .iter()
                .filter(|g| g.weight > 0)
                .flat_map(|g| g.endpoints.iter())
                .filter_map(|&ep| {
                    let view = snapshot.endpoint(ep).filter(|v| v.healthy)?;
                    let t = &view.telemetry;
                    let (running, waiting) =
                        (t.value(SignalKind::Running), t.value(SignalKind::Waiting));
                    if capacity.len() <= ep {
                        capacity.resize(ep + 1, CapacityEstimate::default());
                    }
                    let cap = capacity.get_mut(ep)?;
                    cap.observe(running, waiting);
                    let local = shard.endpoints.get(ep).map_or(0, |e| e.in_flight.get());
                    EndpointLoad {
                        kv_usage: t.value(SignalKind::KvUsage),
                        gpu_util: t.value(SignalKind::GpuUtil),
                        running,
                        waiting,
                        capacity: cap.get(),
                        gateway_in_flight: Some(view.inflight.max(local)),
                    }
                    .utilization()
                })
                .reduce(f64::min)
        });
        let Some(batch) = ready else { break };
        monoio::spawn(send_batch(shard.clone(), batch));
    }
    loop {
        let expired = pb.batcher.borrow_mut().poll_expired(now);
        let Some(x) = expired else { break };
        let body = format!(
            "{{\"error\":{{\"message\":\"waited {} ms in the batching queue\",\"type\":\"rate_limit_error\",\"param\":null,\"code\":\"queue_timeout\"}}}}",
            x.waited.as_millis()
        );
        let _ = x.payload.tx.send(Reply {
            status: 429,
            body: body.into_bytes(),
        });
    }
}

/// The per-policy driver: sleeps until the batcher's next deadline (or a push),
/// then drains.
pub async fn driver(shard: Rc<Shard>, pb: Rc<PolicyBatcher>) {
    loop {
        let next = {
            let b = pb.batcher.borrow();
            match (b.next_deadline(), b.next_expiry()) {
                (Some(a), Some(e)) => Some(a.min(e)),
                (a, e) => a.or(e),
            }
        };
        match next {
            Some(t) => {
                let wait = t.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    monoio::select! {
                        _ = monoio::time::sleep(wait) => {}
                        _ = pb.wake.wait() => {}
                    }
                }
            }
            None => pb.wake.wait().await,
        }
        drain(&shard, &pb);
        // A batch ready but not taken (its deadline is now) must not spin.
        monoio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn send_batch(shard: Rc<Shard>, batch: ReadyBatch<Member, Lane>) {
    let members = batch.members;
    let Some((key, ctx)) = batch.key else {
        return;
    };
    let bodies: Vec<&[u8]> = members.iter().map(|m| m.body.as_ref()).collect();
    // Shed only if every member may be shed.
    let priority = members.iter().map(|m| m.priority).max().unwrap_or(0);
    let replies: Vec<Reply> = match merge(&key, &bodies) {
        Ok(merged) => match call(&shard, &ctx, &merged.body, priority).await {
            Ok((status, body)) if (200..300).contains(&status) => {
                match split(&body, &merged.plan) {
                    Ok(parts) => parts
                        .into_iter()
                        .map(|b| Reply { status, body: b })
                        .collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot split a batched response");
                        (0..members.len())
                            .map(|_| {
                                gateway_error(
                                    502,
                                    "batch_split_failed",
                                    "the upstream's batched answer could not be split",
                                )
                            })
                            .collect()
                    }
                }
            }
            Ok((status, _)) if members.len() > 1 && retry_alone(status) => {
                // One member may have failed the whole batch: resend each alone.
                let mut out = Vec::with_capacity(members.len());
                for m in &members {
                    out.push(match call(&shard, &ctx, &m.body, m.priority).await {
                        Ok((s, b)) => Reply { status: s, body: b },
                        Err(r) => r,
                    });
                }
                out
            }
            Ok((status, body)) => split_error(status, &body, members.len())
                .into_iter()
                .map(|e| Reply {
                    status: e.status,
                    body: e.body,
                })
                .collect(),
            Err(r) => (0..members.len())
                .map(|_| Reply {
                    status: r.status,
                    body: r.body.clone(),
                })
                .collect(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot merge a batch");
            (0..members.len())
                .map(|_| gateway_error(500, "batch_merge_failed", "the batch could not be merged"))
                .collect()
        }
    };
    for (m, r) in members.into_iter().zip(replies) {
        let _ = m.tx.send(r);
    }
}

fn gateway_error(status: u16, code: &str, message: &str) -> Reply {
    let mut body = Vec::new();
    shardgate_http::write::openai_error_json(&mut body, message, "gateway_error", code);
    Reply { status, body }
}

/// One buffered upstream call for a batch: pick, pooled connection, whole body.
async fn call(
    shard: &Rc<Shard>,
    ctx: &LaneCtx,
    body: &[u8],
    priority: i32,
) -> Result<(u16, Vec<u8>), Reply> {
    let settings = &shard.state.settings;
    let (backends, policy) = shard
        .state
        .table
        .rule(ctx.rule_id)
        .map_or((&[][..], None), |r| (r.backends, r.policy));
    let profile = shard.state.profile(policy);
    let req = PickRequest {
        model: Some(&ctx.model),
        adapter: None,
        prefix_total_blocks: 0,
    };
    let mut tried = Vec::new();
    loop {
        let now = monoio::time::Instant::now();
        let ep = match shard.pick(backends, &tried, now, profile, &req, None, priority) {
            Ok(ep) => ep,
            Err(crate::shard::PickFailure::Shed) => {
                return Err(gateway_error(
                    429,
                    "shed_saturated",
                    "every endpoint is saturated and the request is sheddable",
                ))
            }
            Err(_) => {
                return Err(gateway_error(
                    503,
                    "no_healthy_endpoint",
                    "no healthy endpoint is available for the batch",
                ))
            }
        };
        tried.push(ep);
        let addr = shard.addr(ep);
        let mut out = Vec::with_capacity(body.len() + 256);
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(ctx.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        shardgate_http::write::header(&mut out, "host", addr.to_string().as_bytes());
        shardgate_http::write::header(&mut out, "content-type", b"application/json");
        shardgate_http::write::header(
            &mut out,
            crate::proxy::MODEL_HEADER_NAME,
            ctx.model.as_bytes(),
        );
        if let Some(a) = &ctx.auth {
            shardgate_http::write::header(&mut out, "authorization", a);
        }
        shardgate_http::write::header_u64(&mut out, "content-length", body.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        let conn = match shard.take_conn(ep, now) {
            Some(c) => Ok(c),
            None => crate::proxy::connect(addr, settings.connect_timeout).await,
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(why) => {
                shard.eject(ep, monoio::time::Instant::now(), why);
                if tried.len() > settings.retries as usize {
                    return Err(gateway_error(502, "upstream_failed", why));
                }
                continue;
            }
        };
        let counted = crate::shard::EndpointInFlight::new(shard, ep);
        let fut = crate::client::exchange(&mut conn.stream, &mut conn.buf, out);
        let answer = monoio::time::timeout(settings.response_timeout, fut).await;
        drop(counted);
        match answer {
            Ok(Ok((status, body, keep))) => {
                if status >= 500 {
                    shard.upstream_5xx(ep, monoio::time::Instant::now());
                } else {
                    shard.restore(ep);
                }
                if keep {
                    shard.put_conn(ep, conn, monoio::time::Instant::now());
                }
                return Ok((status, body));
            }
            Ok(Err(e)) => return Err(gateway_error(502, "upstream_failed", &e)),
            Err(_) => {
                return Err(gateway_error(
                    504,
                    "upstream_timeout",
                    "the batched upstream call timed out",
                ))
            }
        }
    }
}

/// A single-thread notification: `notify` wakes the one `wait`er (or the next one).
#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    /// Wake the waiter (or let the next `wait` return at once).
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolve at the next (or a pending) `notify`.
    pub fn wait(&self) -> NotifyWait<'_> {
        NotifyWait(self)
    }
}

/// The future of [`Notify::wait`].
pub struct NotifyWait<'a>(&'a Notify);

impl Future for NotifyWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.replace(false) {
            Poll::Ready(())
        } else {
            *self.0.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}
