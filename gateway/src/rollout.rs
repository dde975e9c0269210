//! Canary rollouts (`ModelRollout`): the canary's traffic weight, stepped up
//! while its SLO holds against the stable version's, rolled back at once on a
//! breach.
//!
//! # How
//! A rollout splits requests for `modelName` on its pool between `stable` and
//! `canary` (the plan rewrites the body's `model`, `plan`); the
//! canary's weight, in percent, is one atomic per rollout that every shard
//! reads ([`Rollouts::canary_weight`]). A controller thread ([`spawn`]) looks
//! every [`TICK`] (250 ms) at both versions' answers since the current step
//! began ([`crate::metrics::MetricsHub::model_quality`]: the shards' last
//! publish, at most 500 ms old) and judges them ([`judge`], pure):
//! - the canary's error rate (5xx or no answer) may exceed the stable's by at
//!   most `maxErrorRateIncrease` (default 0.02);
//! - its p99 TTFT may be at most `maxTtftP99Ratio` × the stable's (default
//!   1.5), and its p99 time per output token `maxTpotP99Ratio` × (when set);
//! - nothing is judged before the canary has `minRequests` answers (default
//!   20) in the window, and the latency checks need `minRequests` samples on
//!   both sides. The stable side of a window with too few stable answers (the
//!   last steps send it little or nothing) is the last window that had enough.
//!
//! A breach rolls back at the tick that sees it (the canary's weight goes to
//! 0 and stays there; a warning names the numbers). A step ends after
//! `stepDuration`; the next begins if the window held and had enough canary
//! answers (else the step waits for them). After the 100 % step's window
//! holds, the rollout has succeeded and stays at 100 %.
//!
//! State is shown at `/debug/rollouts` (JSON) and as metrics:
//! `gateway_rollout_state{rollout,model,state}` (1 for the current state of
//! `progressing`, `succeeded`, `rolled_back`), `gateway_rollout_canary_weight_percent`
//! and `gateway_rollout_step`. A rollout starts over when the gateway starts
//! (its state is not persisted).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shardgate_routing::config::RolloutAnalysis;
use shardgate_routing::RolloutSpec;

use crate::metrics::{MetricsHub, ModelQuality, TPOT_BUCKETS, TTFT_BUCKETS};

/// How often the controller judges (250 ms).
pub const TICK: Duration = Duration::from_millis(250);

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Stepping through its weights.
    Progressing,
    /// At 100 % with the last window held.
    Succeeded,
    /// The canary breached its SLO: weight 0.
    RolledBack,
}

impl State {
    /// The `state` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Progressing => "progressing",
            State::Succeeded => "succeeded",
            State::RolledBack => "rolled_back",
        }
    }
}

/// One version's numbers over a window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    /// Answers.
    pub requests: u64,
    /// Failed answers.
    pub errors: u64,
    /// p99 TTFT, seconds, with enough samples.
    pub ttft_p99: Option<f64>,
    /// p99 time per output token, seconds, with enough samples.
    pub tpot_p99: Option<f64>,
}

impl Window {
    /// Error rate (0 without answers).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    fn of(q: &ModelQuality, min: u64) -> Window {
        let p99 = |h: &crate::metrics::Hist, b: &[f64]| {
            (h.count() >= min).then(|| h.quantile(b, 0.99)).flatten()
        };
        Window {
            requests: q.requests,
            errors: q.errors,
            ttft_p99: p99(&q.ttft, &TTFT_BUCKETS),
            tpot_p99: p99(&q.tpot, &TPOT_BUCKETS),
        }
    }
}

/// What a window says.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too few canary answers to judge.
    Insufficient,
    /// The SLO held.
    Holds,
    /// The SLO broke: why, with the numbers.
    Breach(String),
}

/// Judge the canary's window against the stable's (pure).
pub fn judge(canary: &Window, stable: &Window, a: &RolloutAnalysis) -> Verdict {
    if canary.requests < u64::from(a.min_requests()) {
        return Verdict::Insufficient;
    }
    let (ec, es) = (canary.error_rate(), stable.error_rate());
    if ec > es + a.max_error_rate_increase() {
        return Verdict::Breach(format!(
            "error rate {:.1} % ({} of {}) against the stable's {:.1} % (allowed +{:.1} points)",
            ec * 100.0,
            canary.errors,
            canary.requests,
            es * 100.0,
            a.max_error_rate_increase() * 100.0
        ));
    }
    let ratio_breach = |what: &str, c: Option<f64>, s: Option<f64>, max: Option<f64>| {
        let (c, s, max) = (c?, s?, max?);
        (s > 0.0 && c > s * max).then(|| {
            format!(
                "p99 {what} {:.1} ms against the stable's {:.1} ms (allowed {max}×)",
                c * 1e3,
                s * 1e3
            )
        })
    };
    if let Some(why) = ratio_breach(
        "TTFT",
        canary.ttft_p99,
        stable.ttft_p99,
        Some(a.max_ttft_p99_ratio()),
    ) {
        return Verdict::Breach(why);
    }
    if let Some(why) = ratio_breach(
        "time per output token",
        canary.tpot_p99,
        stable.tpot_p99,
        a.max_tpot_p99_ratio,
    ) {
        return Verdict::Breach(why);
    }
    Verdict::Holds
}

/// What `/debug/rollouts` shows of one rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Where it stands.
    pub state: State,
    /// Index into the steps.
    pub step: usize,
    /// The canary's weight now, percent.
    pub weight: u32,
    /// Why it is where it is (the numbers of a rollback).
    pub reason: String,
    /// The current (or last) window's numbers: canary, stable.
    pub window: (Window, Window),
}

/// One rollout's live state.
pub struct Live {
    /// The resolved `ModelRollout`.
    pub spec: RolloutSpec,
    canary_pct: AtomicU32,
    status: ArcSwap<Status>,
}

/// Every rollout of the configuration, shared by the shards (weights) and
/// the admin listener (status).
pub struct Rollouts {
    live: Vec<Live>,
}

impl Rollouts {
    /// One entry per `ModelRollout` of the table (`None` without any).
    pub fn for_table(table: &shardgate_routing::RoutingTable) -> Option<Arc<Rollouts>> {
        let live: Vec<Live> = table
            .rollouts()
            .iter()
            .map(|spec| {
                let first = spec.steps.first().copied().unwrap_or(100);
                Live {
                    spec: spec.clone(),
                    canary_pct: AtomicU32::new(first),
                    status: ArcSwap::from_pointee(Status {
                        state: State::Progressing,
                        step: 0,
                        weight: first,
                        reason: format!("step 1 of {}: {first} %", spec.steps.len()),
                        window: Default::default(),
                    }),
                }
            })
            .collect();
        (!live.is_empty()).then(|| Arc::new(Rollouts { live }))
    }

    /// The canary's weight of rollout `i`, percent (0 when unknown).
    pub fn canary_weight(&self, i: usize) -> u32 {
        self.live
            .get(i)
            .map_or(0, |l| l.canary_pct.load(Ordering::Relaxed))
    }

    /// Every rollout's status.
    pub fn statuses(&self) -> Vec<(&RolloutSpec, Arc<Status>)> {
        self.live
            .iter()
            .map(|l| (&l.spec, l.status.load_full()))
            .collect()
    }

    /// `/debug/rollouts`.
    pub fn json(&self) -> Vec<u8> {
        let w = |w: &Window| {
            serde_json::json!({
                "requests": w.requests,
                "errors": w.errors,
                "error_rate": w.error_rate(),
                "ttft_p99_ms": w.ttft_p99.map(|v| v * 1e3),
                "tpot_p99_ms": w.tpot_p99.map(|v| v * 1e3),
            })
        };
        let list: Vec<serde_json::Value> = self
            .statuses()
            .into_iter()
            .map(|(spec, s)| {
                serde_json::json!({
                    "rollout": spec.key,
                    "model": spec.model,
                    "pool": spec.pool,
                    "stable": spec.stable,
                    "canary": spec.canary,
                    "steps": spec.steps,
                    "step_duration_s": spec.step_duration.as_secs_f64(),
                    "state": s.state.as_str(),
                    "step": s.step + 1,
                    "canary_weight_percent": s.weight,
                    "reason": s.reason,
                    "window": {"canary": w(&s.window.0), "stable": w(&s.window.1)},
                })
            })
            .collect();
        let mut body =
            serde_json::to_vec_pretty(&serde_json::json!({ "rollouts": list })).unwrap_or_default();
        body.push(b'\n');
        body
    }

    /// `gateway_rollout_*` metrics.
    pub fn render(&self, out: &mut String) {
        use shardgate_promtext::{Kind, PromWriter, Style};
        let st = self.statuses();
        let mut w = PromWriter::new(out, Style::PLAIN);
        w.family(
            "gateway_rollout_state",
            "Where each ModelRollout stands: 1 for its current state (progressing, succeeded, rolled_back).",
            Kind::Gauge,
        );
        for (spec, s) in &st {
            for state in [State::Progressing, State::Succeeded, State::RolledBack] {
                w.sample(
                    "",
                    &[
                        ("rollout", &spec.key),
                        ("model", &spec.model),
                        ("state", state.as_str()),
                    ],
                    u64::from(s.state == state),
                );
            }
        }
        w.family(
            "gateway_rollout_canary_weight_percent",
            "The canary's share of the rollout's requests, percent.",
            Kind::Gauge,
        );
        for (spec, s) in &st {
            w.sample(
                "",
                &[("rollout", &spec.key), ("model", &spec.model)],
                u64::from(s.weight),
            );
        }
        w.family(
            "gateway_rollout_step",
            "The rollout's current step, from 1.",
            Kind::Gauge,
        );
        for (spec, s) in &st {
            w.sample("", &[("rollout", &spec.key)], (s.step + 1) as u64);
        }
    }
}

/// One rollout's controller: the pure stepping logic, on a passed-in clock.
#[derive(Debug)]
pub struct Controller {
    state: State,
    step: usize,
    step_started: Instant,
    base: (ModelQuality, ModelQuality),
    /// The last window in which the stable version had enough answers.
    stable_ref: Option<Window>,
}

impl Controller {
    /// A controller whose first step starts at `now` with these readings.
    pub fn new(now: Instant, canary: ModelQuality, stable: ModelQuality) -> Self {
        Controller {
            state: State::Progressing,
            step: 0,
            step_started: now,
            base: (canary, stable),
            stable_ref: None,
        }
    }

    /// One look at the cumulative readings: the new status when something
    /// changed or a window was judged.
    pub fn tick(
        &mut self,
        spec: &RolloutSpec,
        now: Instant,
        canary: &ModelQuality,
        stable: &ModelQuality,
    ) -> Status {
        let a = &spec.analysis;
        let min = u64::from(a.min_requests());
        let wc = Window::of(&canary.since(&self.base.0), min);
        let mut ws = Window::of(&stable.since(&self.base.1), min);
        let weight = |step: usize| spec.steps.get(step).copied().unwrap_or(100);
        if self.state != State::Progressing {
            let w = if self.state == State::RolledBack {
                0
            } else {
                100
            };
            return self.status(w, String::new(), (wc, ws));
        }
        if ws.requests >= min {
            self.stable_ref = Some(ws);
        } else if let Some(r) = self.stable_ref {
            ws = r;
        }
        let verdict = judge(&wc, &ws, a);
        if let Verdict::Breach(why) = verdict {
            self.state = State::RolledBack;
            let reason = format!(
                "rolled back at step {} ({} %): canary {}",
                self.step + 1,
                weight(self.step),
                why
            );
            return self.status(0, reason, (wc, ws));
        }
        let dwelt = now.saturating_duration_since(self.step_started) >= spec.step_duration;
        let w = weight(self.step);
        if dwelt && verdict == Verdict::Holds {
            if self.step + 1 >= spec.steps.len() {
                self.state = State::Succeeded;
                return self.status(
                    100,
                    format!("succeeded: {} serves all of {}", spec.canary, spec.model),
                    (wc, ws),
                );
            }
            self.step += 1;
            self.step_started = now;
            self.base = (canary.clone(), stable.clone());
            let w = weight(self.step);
            return self.status(
                w,
                format!("step {} of {}: {w} %", self.step + 1, spec.steps.len()),
                (Window::default(), Window::default()),
            );
        }
        let reason = if dwelt {
            format!(
                "step {} of {}: {w} %, waiting for {} canary answers (has {})",
                self.step + 1,
                spec.steps.len(),
                min,
                wc.requests
            )
        } else {
            format!("step {} of {}: {w} %", self.step + 1, spec.steps.len())
        };
        self.status(w, reason, (wc, ws))
    }

    fn status(&self, weight: u32, reason: String, window: (Window, Window)) -> Status {
        Status {
            state: self.state,
            step: self.step,
            weight,
            reason,
            window,
        }
    }
}

/// Start the controller thread; it ends once `rollouts` is dropped everywhere
/// else.
pub fn spawn(rollouts: &Arc<Rollouts>, hub: Arc<MetricsHub>) -> std::io::Result<()> {
    let weak = Arc::downgrade(rollouts);
    std::thread::Builder::new()
        .name("rollouts".into())
        .spawn(move || run(&weak, &hub))
        .map(|_| ())
}

fn run(weak: &std::sync::Weak<Rollouts>, hub: &MetricsHub) {
    let Some(rollouts) = weak.upgrade() else {
        return;
    };
    let now = Instant::now();
    let mut controllers: Vec<Controller> = rollouts
        .live
        .iter()
        .map(|l| {
            Controller::new(
                now,
                hub.model_quality(&l.spec.canary),
                hub.model_quality(&l.spec.stable),
            )
        })
        .collect();
    for l in &rollouts.live {
        tracing::info!(rollout = %l.spec.key, model = %l.spec.model, stable = %l.spec.stable, canary = %l.spec.canary, weight = l.canary_pct.load(Ordering::Relaxed), "rollout started");
    }
    drop(rollouts);
    loop {
        let deadline = Instant::now() + TICK;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            std::thread::park_timeout(left);
        }
        let Some(rollouts) = weak.upgrade() else {
            return;
        };
        let now = Instant::now();
        for (l, c) in rollouts.live.iter().zip(controllers.iter_mut()) {
            let before = l.status.load();
            let s = c.tick(
                &l.spec,
                now,
                &hub.model_quality(&l.spec.canary),
                &hub.model_quality(&l.spec.stable),
            );
            l.canary_pct.store(s.weight, Ordering::Relaxed);
            if s.state != before.state || s.step != before.step {
                match s.state {
                    State::RolledBack => {
                        tracing::warn!(rollout = %l.spec.key, model = %l.spec.model, canary = %l.spec.canary, reason = %s.reason, "rollout rolled back")
                    }
                    _ => {
                        tracing::info!(rollout = %l.spec.key, model = %l.spec.model, weight = s.weight, reason = %s.reason, "rollout {}", s.state.as_str())
                    }
                }
            }
            let keep_reason = s.reason.is_empty();
            let s = if keep_reason {
                Status {
                    reason: before.reason.clone(),
                    ..s
                }
            } else {
                s
            };
            l.status.store(Arc::new(s));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(steps: &[u32]) -> RolloutSpec {
        RolloutSpec {
            key: "ns/r".into(),
            model: "m".into(),
            pool: "ns/pool".into(),
            stable: "m-v1".into(),
            canary: "m-v2".into(),
            steps: steps.to_vec(),
            step_duration: Duration::from_secs(10),
            analysis: RolloutAnalysis {
                min_requests: Some(10),
                ..Default::default()
            },
        }
    }

    fn q(requests: u64, errors: u64) -> ModelQuality {
        ModelQuality {
            requests,
            errors,
            ..Default::default()
        }
    }

    #[test]
    fn judging_needs_enough_canary_answers_then_compares_error_rates() {
        let a = RolloutAnalysis::default();
        let w = |requests, errors| Window {
            requests,
            errors,
            ..Default::default()
        };
        assert_eq!(judge(&w(19, 19), &w(100, 0), &a), Verdict::Insufficient);
        assert_eq!(judge(&w(100, 2), &w(100, 1), &a), Verdict::Holds);
        let Verdict::Breach(why) = judge(&w(100, 4), &w(100, 1), &a) else {
            panic!()
        };
        assert!(why.contains("error rate 4.0 % (4 of 100)"), "{why}");
        // Latency: canary p99 TTFT 2× the stable's breaches the default 1.5×.
        let mut c = w(100, 0);
        let mut s = w(100, 0);
        c.ttft_p99 = Some(0.2);
        s.ttft_p99 = Some(0.1);
        let Verdict::Breach(why) = judge(&c, &s, &a) else {
            panic!()
        };
        assert!(
            why.contains("p99 TTFT 200.0 ms against the stable's 100.0 ms"),
            "{why}"
        );
        c.ttft_p99 = Some(0.14);
        assert_eq!(judge(&c, &s, &a), Verdict::Holds);
    }

    #[test]
    fn a_healthy_canary_walks_every_step_and_a_breach_rolls_back_at_once() {
        let sp = spec(&[10, 50, 100]);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut c = Controller::new(t0, q(0, 0), q(0, 0));
        // Mid-step: no advance.
        let s = c.tick(&sp, at(5), &q(5, 0), &q(50, 0));
        assert_eq!((s.state, s.weight), (State::Progressing, 10));
        // Dwelt but too few canary answers: waits.
        let s = c.tick(&sp, at(10), &q(8, 0), &q(80, 0));
        assert_eq!(s.weight, 10);
        assert!(
            s.reason.contains("waiting for 10 canary answers (has 8)"),
            "{}",
            s.reason
        );
        let s = c.tick(&sp, at(11), &q(12, 0), &q(90, 0));
        assert_eq!((s.step, s.weight), (1, 50));
        // The next window counts from the step's start.
        let s = c.tick(&sp, at(21), &q(20, 0), &q(100, 0));
        assert_eq!(s.weight, 50, "8 canary answers in this window");
        let s = c.tick(&sp, at(22), &q(30, 0), &q(110, 0));
        assert_eq!((s.step, s.weight), (2, 100));
        // At 100 % the stable gets nothing: the last stable window stands in.
        let s = c.tick(&sp, at(33), &q(50, 0), &q(110, 0));
        assert_eq!((s.state, s.weight), (State::Succeeded, 100));

        let mut c = Controller::new(t0, q(0, 0), q(0, 0));
        let s = c.tick(&sp, at(1), &q(10, 5), &q(90, 0));
        assert_eq!((s.state, s.weight), (State::RolledBack, 0));
        assert!(
            s.reason.contains("rolled back at step 1 (10 %)"),
            "{}",
            s.reason
        );
        assert!(
            s.reason.contains("error rate 50.0 % (5 of 10)"),
            "{}",
            s.reason
        );
        // And stays there.
        let s = c.tick(&sp, at(100), &q(10, 5), &q(1000, 0));
        assert_eq!((s.state, s.weight), (State::RolledBack, 0));
    }
}
