//! Micro-batching on the data path: the executor of `plan::Plan::Batch`.
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
//! A driver task per policy sleeps until the batcher's next deadline. The merged
//! upstream call goes through the one upstream client ([`crate::upstream`])
//! and the attempt machine ([`crate::attempt`]): the same picks, retry budget,
//! stale-connection retry, ejections and error metrics as a proxied request.
//!
//! The adaptive signal of a lane is the least utilised healthy endpoint its rule
//! reaches, each one's utilisation being [`shardgate_batching::EndpointLoad`] over
//! the latest scoring snapshot: KV use, GPU use, its queue, and running plus
//! waiting (or the gateway's in-flight, whichever is larger) over the capacity
//! learned per endpoint ([`shardgate_batching::CapacityEstimate`]; 1 until a scrape
//! shows more running). A lane carries its rule's dense id, so finding its
//! backends is one index, not a scan. A merged call counts as one in-flight
//! request on its endpoint; between its flush and that moment (pick, connect) it
//! counts on every endpoint of its rule ([`crate::lanes::Dispatching`]), so a
//! burst does not read an idle target before the first call is counted (issue 12,
//! item 12: 64 clients became 64 single calls). When a call ends, the policy's
//! driver drains again at once. A merged call is shed when all endpoints are
//! saturated only if every member is sheddable (its highest priority is below 0).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use monoio::time::Instant;
use shardgate_batching::{
    merge, retry_alone, split, split_error, Batchable, CapacityEstimate, EndpointLoad, Pending,
    QueueId, ReadyBatch, Reject,
};
use shardgate_routing::scoring::PickRequest;
use shardgate_routing::telemetry::SignalKind;

use crate::attempt::{Action, Attempts, Outcome};
use crate::error::Failure;
use crate::lanes::{Dispatching, Lane, LaneCtx, LaneState, Member, PolicyBatcher, Reply};
use crate::shard::{EndpointInFlight, Shard};
use crate::state::GatewayState;
use crate::upstream::{exchange_whole, write_post};

/// What [`submit`] decided.
pub enum Submitted {
    /// Answer now (queue full).
    Refused(Failure),
    /// Wait for the reply; the request waits in this queue.
    Waiting(local_sync::oneshot::Receiver<Reply>, QueueId),
}

/// Everything [`submit`] needs to know about the request.
pub struct Request<'a> {
    /// Request path.
    pub path: &'a str,
    /// Body.
    pub body: &'a Bytes,
    /// The body's batch key and inputs ([`shardgate_batching::classify`]).
    pub class: Batchable,
    /// The queue the plan chose.
    pub queue: QueueId,
    /// The request's resolved priority (a batch of sheddable members may be shed).
    pub level: i32,
    /// `Authorization` value.
    pub auth: Option<&'a [u8]>,
    /// Model.
    pub model: &'a str,
    /// Dense rule id ([`shardgate_routing::RouteMatch::rule_id`]).
    pub rule_id: usize,
    /// The gateway state the request was planned on (the lane flushes on it).
    pub state: &'a Arc<GatewayState>,
}

/// Queue a request on `pb`.
pub fn submit(shard: &Rc<Shard>, pb: &Rc<PolicyBatcher>, req: Request<'_>) -> Submitted {
    let now = std::time::Instant::now();
    let (tx, rx) = local_sync::oneshot::channel();
    let ctx = LaneCtx {
        state: LaneState(req.state.clone()),
        rule_id: req.rule_id,
        path: req.path.to_string(),
        model: req.model.to_string(),
        auth: req.auth.map(|a| a.to_vec()),
    };
    let pending = Pending {
        queue: req.queue,
        key: Some((req.class.key, ctx)),
        items: req.class.inputs,
        payload: Member {
            body: req.body.clone(),
            priority: req.level,
            tx,
        },
    };
    let pushed = pb.batcher.borrow_mut().push(pending, now);
    match pushed {
        Ok(_) => {
            pb.wake.notify();
            drain(shard, pb);
            Submitted::Waiting(rx, req.queue)
        }
        Err(rej) => {
            let (status, code) = match rej.reason {
                Reject::UnknownQueue => (400, "unknown_priority_queue"),
                _ => (429, "queue_full"),
            };
            Submitted::Refused(Failure::batch_refused(
                status,
                code,
                format!(
                    "batching queue of BatchingPolicy {} refused the request ({:?})",
                    pb.key, rej.reason
                ),
            ))
        }
    }
}

/// Queue the request on `pb` and wait for its answer: a member's share of the
/// batched reply, or the gateway's error (queue full, queue timeout, a batch that
/// could not be merged, split or sent). Counts the queue depth while waiting.
pub async fn run(shard: &Rc<Shard>, pb: &Rc<PolicyBatcher>, req: Request<'_>) -> Reply {
    let model = req.model;
    match submit(shard, pb, req) {
        Submitted::Refused(f) => reply(&f),
        Submitted::Waiting(rx, queue) => {
            let queue = pb.queue_name(queue);
            shard
                .metrics
                .borrow_mut()
                .queue_depth_add(queue, Some(model), 1);
            let answer = rx.await;
            shard
                .metrics
                .borrow_mut()
                .queue_depth_add(queue, Some(model), -1);
            answer.unwrap_or_else(|_| {
                let f = batch_failure(500, "batch_dropped", "the batch was dropped");
                reply(&f)
            })
        }
    }
}

/// Flush every ready batch (each becomes its own task) and fail expired members.
fn drain(shard: &Rc<Shard>, pb: &Rc<PolicyBatcher>) {
    let now = std::time::Instant::now();
    let snapshot = shard.control.snapshot.load();
    let mut capacity = pb.capacity.borrow_mut();
    loop {
        let ready = pb.batcher.borrow_mut().poll_ready_with(now, |(_, ctx)| {
            // The adaptive signal: the least utilised healthy endpoint the lane reaches.
            let rule = ctx.state.0.table.rule(ctx.rule_id)?;
            // Flushed batches of this rule not counted in flight yet: on each
            // endpoint (we do not know which one they will pick), the safe side.
            let dispatching = pb.dispatching(ctx.rule_id);
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
                    cap.observe(running);
                    let local = shard.report().map_or(0, |r| r.in_flight(ep));
                    EndpointLoad {
                        kv_usage: t.value(SignalKind::KvUsage),
                        gpu_util: t.value(SignalKind::GpuUtil),
                        running,
                        waiting,
                        capacity: cap.get(),
                        gateway_in_flight: Some(view.inflight.max(local) + dispatching),
                    }
                    .utilization()
                })
                .reduce(f64::min)
        });
        let Some(batch) = ready else { break };
        let rule = batch
            .key
            .as_ref()
            .map_or(usize::MAX, |(_, ctx)| ctx.rule_id);
        let dispatch = Dispatching::start(pb, rule);
        monoio::spawn(crate::contain::contained(
            crate::contain::Task::Batch,
            send_batch(shard.clone(), pb.clone(), batch, dispatch),
        ));
    }
    loop {
        let expired = pb.batcher.borrow_mut().poll_expired(now);
        let Some(x) = expired else { break };
        let f = Failure::batch_refused(
            429,
            "queue_timeout",
            format!("waited {} ms in the batching queue", x.waited.as_millis()),
        );
        let _ = x.payload.tx.send(Reply {
            status: 429,
            body: f.json_body(),
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
                let wait = t.saturating_duration_since(std::time::Instant::now());
                if !wait.is_zero() {
                    monoio::select! {
                        _ = monoio::time::sleep(wait) => {}
                        _ = pb.wake.wait() => {}
                    }
                }
            }
            // Retired by a reload and empty: this policy's lanes are done.
            None if pb.retired.get() => {
                shard.drop_batcher(&pb);
                return;
            }
            None => pb.wake.wait().await,
        }
        drain(&shard, &pb);
        // A batch ready but not taken (its deadline is now) must not spin.
        monoio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn reply(f: &Failure) -> Reply {
    Reply {
        status: f.status,
        body: f.json_body(),
    }
}

async fn send_batch(
    shard: Rc<Shard>,
    pb: Rc<PolicyBatcher>,
    batch: ReadyBatch<Member, Lane>,
    dispatch: Dispatching,
) {
    let mut dispatch = Some(dispatch);
    let members = batch.members;
    let Some((key, ctx)) = batch.key else {
        return;
    };
    let bodies: Vec<&[u8]> = members.iter().map(|m| m.body.as_ref()).collect();
    // Shed only if every member may be shed.
    let priority = members.iter().map(|m| m.priority).max().unwrap_or(0);
    let replies: Vec<Reply> = match merge(&key, &bodies) {
        Ok(merged) => match call(&shard, &ctx, &merged.body, priority, &mut dispatch).await {
            Ok((status, body)) if (200..300).contains(&status) => {
                match split(&body, &merged.plan) {
                    Ok(parts) => parts
                        .into_iter()
                        .map(|b| Reply { status, body: b })
                        .collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot split a batched response");
                        let f = batch_failure(
                            502,
                            "batch_split_failed",
                            "the upstream's batched answer could not be split",
                        );
                        (0..members.len()).map(|_| reply(&f)).collect()
                    }
                }
            }
            Ok((status, _)) if members.len() > 1 && retry_alone(status) => {
                // One member may have failed the whole batch: resend each alone.
                let mut out = Vec::with_capacity(members.len());
                for m in &members {
                    out.push(
                        match call(&shard, &ctx, &m.body, m.priority, &mut None).await {
                            Ok((s, b)) => Reply { status: s, body: b },
                            Err(f) => reply(&f),
                        },
                    );
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
            Err(f) => (0..members.len()).map(|_| reply(&f)).collect(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot merge a batch");
            let f = batch_failure(500, "batch_merge_failed", "the batch could not be merged");
            (0..members.len()).map(|_| reply(&f)).collect()
        }
    };
    for (m, r) in members.into_iter().zip(replies) {
        let _ = m.tx.send(r);
    }
    // The endpoint has one call less: lanes held back by a busy target look again.
    drop(dispatch);
    pb.wake.notify();
}

fn batch_failure(status: u16, code: &'static str, message: &str) -> Failure {
    Failure::with(
        crate::error::Side::Gateway,
        status,
        "gateway_error",
        code,
        message.to_string(),
    )
}

/// One buffered upstream call for a batch: the attempt machine over picks,
/// pooled or fresh connections and whole-body exchanges. `dispatch` is let go
/// once the call counts in flight on its endpoint.
async fn call(
    shard: &Rc<Shard>,
    ctx: &LaneCtx,
    body: &[u8],
    priority: i32,
    dispatch: &mut Option<Dispatching>,
) -> Result<(u16, Vec<u8>), Failure> {
    let settings = &shard.settings;
    // Adopt a newer state's endpoints (indices are stable), but route on the
    // state the members were planned on.
    let _ = shard.state_for_request();
    let state = &ctx.state.0;
    let rule = state.table.rule(ctx.rule_id);
    let (backends, policy, route) =
        rule.map_or((&[][..], None, ""), |r| (r.backends, r.policy, r.route));
    let profile = state.profile(policy);
    let req = PickRequest {
        model: Some(&ctx.model),
        adapter: None,
        prefix_total_blocks: 0,
        session: None,
    };
    let deadline = Instant::now() + state.settings.response_timeout;
    let mut attempts = Attempts::new(settings.retries);
    shard.budget.borrow_mut().earn();
    let mut out = Vec::with_capacity(body.len() + 256);
    loop {
        attempts.next(&mut shard.budget.borrow_mut())?;
        let now = Instant::now();
        let ep = match shard.pick(
            backends,
            attempts.tried(),
            now,
            profile,
            &req,
            None,
            priority,
        ) {
            Ok(ep) => ep,
            Err(why) => return Err(attempts.pick_failed(why, route)),
        };
        attempts.picked(ep);
        let addr = shard.addr(ep);
        let mut extra: [(&str, &[u8]); 2] = [
            (shardgate_routing::MODEL_HEADER, ctx.model.as_bytes()),
            ("", b""),
        ];
        let n = match &ctx.auth {
            Some(a) => {
                extra[1] = ("authorization", a);
                2
            }
            None => 1,
        };
        write_post(&ctx.path, addr, &extra[..n], body, &mut out);
        loop {
            let conn = shard
                .upstream_conn(ep, attempts.may_use_pool(), Instant::now())
                .await;
            let counted = EndpointInFlight::new(shard, ep);
            dispatch.take();
            let result = match conn {
                Ok(conn) => {
                    exchange_whole(conn, &mut out, deadline, state.settings.stream_idle_timeout)
                        .await
                }
                Err(e) => Err(e),
            };
            drop(counted);
            let (outcome, answer) = match result {
                Ok((reply, conn)) => {
                    let status = reply.status;
                    (Outcome::Head(status), Some((reply, conn)))
                }
                Err(e) => (Outcome::Error(e), None),
            };
            let action = shard.judge(&mut attempts, ep, outcome, backends);
            match action {
                Action::Deliver => {
                    let Some((reply, conn)) = answer else {
                        return Err(Failure::upstream_failed("no answer"));
                    };
                    if reply.keep_alive && !shard.shutdown.is_draining() {
                        shard.pool.borrow_mut().put(ep, conn, Instant::now());
                    }
                    return Ok((reply.status, reply.body));
                }
                Action::RetryFresh => continue,
                Action::PickAgain => break,
                Action::Respond(f) => return Err(f),
                Action::Abandon => return Err(Failure::upstream_failed("the call was abandoned")),
            }
        }
    }
}
