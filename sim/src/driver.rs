//! The engine task: owns the [`Engine`], feeds it requests from HTTP handlers and drives
//! its steps on the tokio clock.
//!
//! One task per server. Each loop turn: apply the current timing (runtime-changeable
//! through `/sim/faults`), call [`Engine::step`] with the time since the task started,
//! deliver the events to each request's channel, then wait for a command or the end of
//! the step in flight. Step ends are tokio timers: steps shorter than the timer's 1 ms
//! resolution take about 1 ms of wall time (the engine measures TTFT with the real time
//! at which the step was observed to end).
//!
//! Cancellation: a request whose channel is closed (the HTTP handler or body was dropped:
//! the client went away) is aborted in the engine when a token cannot be delivered, and
//! waiting requests are swept for closed channels after every completed step.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::engine::{AddError, Engine, EngineEvent, Micros, NewRequest, RequestId, Timing};
use crate::metrics::{EngineMetrics, LoraInfoHistory};

/// One engine request of an HTTP request (one prompt / choice).
#[derive(Debug)]
pub(crate) struct Part {
    pub choice: u32,
    pub lora: Option<String>,
    pub prompt_len: usize,
    pub block_hashes: Vec<u64>,
    pub max_tokens: usize,
}

/// What an HTTP request receives, per choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SeqEvent {
    Token {
        choice: u32,
        index: u32,
    },
    Finished {
        choice: u32,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Rejected {
        choice: u32,
        error: AddError,
    },
}

/// Engine metrics plus the `vllm:lora_requests_info` history, for `/metrics`.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub metrics: EngineMetrics,
    pub lora_history: LoraInfoHistory,
}

/// Messages from HTTP handlers to the engine task.
#[derive(Debug)]
pub(crate) enum Command {
    Submit {
        parts: Vec<Part>,
        events: mpsc::UnboundedSender<SeqEvent>,
    },
    Snapshot(oneshot::Sender<Snapshot>),
}

struct Route {
    events: mpsc::UnboundedSender<SeqEvent>,
    choice: u32,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Runs until the command channel closes (or the task is aborted). Before
/// each step the engine takes the timing `timing` gives (`/sim/faults` can
/// change it at run time); the KV events of each step go to `kv_events`,
/// when the simulator publishes them.
pub(crate) async fn run(
    timing: impl Fn() -> Timing,
    kv_events: Option<mpsc::UnboundedSender<shardgate_kvevents::Batch>>,
    mut engine: Engine,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let origin = Instant::now();
    let now = || -> Micros { u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX) };
    let mut routes: HashMap<RequestId, Route> = HashMap::new();
    let mut lora_history = LoraInfoHistory::default();
    let mut next_id: RequestId = 0;
    loop {
        engine.set_timing(timing());
        let out = engine.step(now());
        if let Some(kv) = &kv_events {
            let events = engine.kv_mut().take_events();
            if !events.is_empty() {
                let _ = kv.send(crate::kv_events::batch(events, engine.config().block_size));
            }
        }
        if !out.events.is_empty() {
            deliver(&mut engine, &mut routes, out.events);
            routes.retain(|id, r| {
                if r.events.is_closed() {
                    engine.abort(*id);
                    false
                } else {
                    true
                }
            });
        }
        let wake = out.next_wakeup;
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(origin + Duration::from_micros(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => return,
                Some(Command::Submit { parts, events }) => {
                    let t = now();
                    for (k, p) in parts.into_iter().enumerate() {
                        let id = next_id;
                        next_id += 1;
                        let req = NewRequest {
                            id,
                            lora: p.lora,
                            prompt_len: p.prompt_len,
                            block_hashes: p.block_hashes,
                            max_tokens: p.max_tokens,
                            // One HTTP request = one call: its first prompt pays the overhead.
                            call_overhead: k == 0,
                        };
                        match engine.add_request(req, t) {
                            Ok(()) => {
                                routes.insert(id, Route { events: events.clone(), choice: p.choice });
                            }
                            Err(error) => {
                                let _ = events.send(SeqEvent::Rejected { choice: p.choice, error });
                            }
                        }
                    }
                }
                Some(Command::Snapshot(reply)) => {
                    let metrics = engine.metrics();
                    lora_history.record(
                        metrics.running_loras.join(","),
                        metrics.waiting_loras.join(","),
                        unix_now(),
                    );
                    let _ = reply.send(Snapshot { metrics, lora_history: lora_history.clone() });
                }
            },
            () = sleep => {}
        }
    }
}

fn deliver(engine: &mut Engine, routes: &mut HashMap<RequestId, Route>, events: Vec<EngineEvent>) {
    for ev in events {
        match ev {
            EngineEvent::Token { id, index } => {
                let Some(r) = routes.get(&id) else { continue };
                let sent = r.events.send(SeqEvent::Token {
                    choice: r.choice,
                    index,
                });
                if sent.is_err() {
                    routes.remove(&id);
                    engine.abort(id);
                }
            }
            EngineEvent::Finished {
                id,
                prompt_tokens,
                completion_tokens,
                ..
            } => {
                if let Some(r) = routes.remove(&id) {
                    let _ = r.events.send(SeqEvent::Finished {
                        choice: r.choice,
                        prompt_tokens,
                        completion_tokens,
                    });
                }
            }
        }
    }
}
