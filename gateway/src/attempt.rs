//! The upstream attempt state machine: what to do after each try of a request
//! on an endpoint. Pure: it holds no socket and reads no clock; `now` is an
//! argument, so it is tested on a virtual clock (tests at the bottom).
//!
//! Three pieces, all owned by one shard:
//! - [`Outliers`]: per endpoint, consecutive connection failures, the ejection
//!   deadline (`eject_base × 2^(failures−1)`, capped at `eject_max`; 50 ms and
//!   5 s by default) and the 5xx streak (`--eject-after-5xx` answers in a row
//!   eject like a refused connection; 0 = never). A 2xx–4xx answer restores.
//! - [`RetryBudget`]: each request adds `retry_budget` tokens (0.2 by
//!   default), each retry takes one; at most 10 are banked, one at start.
//! - [`Attempts`]: one request's tries. After a pick, the caller reports an
//!   [`Outcome`] and gets a [`Verdict`]: retry on a fresh connection (a pooled
//!   connection that turned out stale, once), pick another endpoint (connect
//!   failure, or a 503 before anything reached the client while the budget and
//!   `--retries` allow and another endpoint is available), deliver, answer a
//!   failure, or abandon (the client left). The verdict also names the
//!   `gateway_upstream_errors_total` kind to count and any ejection.
//!
//! The proxy, batched calls and (through [`Outliers`]) the admin views use the
//! same machine, so a batched call gets the retry budget, the stale-connection
//! retry and the error metrics that a proxied request gets.

use std::time::{Duration, Instant};

use shardgate_routing::BackendGroup;

use crate::error::{Failure, UpstreamError, UpstreamErrorKind};

/// Ejection settings.
#[derive(Debug, Clone, Copy)]
pub struct OutlierConfig {
    /// First ejection period.
    pub eject_base: Duration,
    /// Longest ejection period.
    pub eject_max: Duration,
    /// Consecutive 5xx answers that eject (0 = never).
    pub eject_after_5xx: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct EndpointHealth {
    failures: u32,
    /// When the current ejection episode began (failures > 0).
    ejected_at: Option<Instant>,
    /// The episode began with a 5xx streak, not a connection failure: only a
    /// passing health probe (not a telemetry scrape) ends it early.
    by_5xx: bool,
    ejected_until: Option<Instant>,
    errors_5xx: u32,
}

/// Why a 5xx streak ejects.
const EJECT_5XX: &str = "consecutive 5xx responses";

/// One shard's passive health view of every endpoint.
#[derive(Debug)]
pub struct Outliers {
    eps: Vec<EndpointHealth>,
    cfg: OutlierConfig,
    /// Endpoints with a failure streak (so the common case skips restore checks).
    failing: usize,
}

/// An endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Endpoint id.
    pub endpoint: usize,
    /// Consecutive failures so far.
    pub failures: u32,
    /// How long it stays out.
    pub period: Duration,
    /// Why.
    pub reason: &'static str,
}

impl Outliers {
    /// Every endpoint available.
    pub fn new(endpoints: usize, cfg: OutlierConfig) -> Self {
        Outliers {
            eps: vec![EndpointHealth::default(); endpoints],
            cfg,
            failing: 0,
        }
    }

    /// Room for `endpoints` endpoints (a reload added some); new ones are available.
    pub fn grow(&mut self, endpoints: usize) {
        if self.eps.len() < endpoints {
            self.eps.resize(endpoints, EndpointHealth::default());
        }
    }

    /// Whether `ep` may be picked at `now` (not ejected, or its period is over).
    pub fn available(&self, ep: usize, now: Instant) -> bool {
        self.eps
            .get(ep)
            .is_some_and(|e| e.ejected_until.is_none_or(|t| t <= now))
    }

    /// Eject `ep` for an exponentially growing period. Once per episode: while
    /// `ep` is ejected, more failures (requests that were already in flight when
    /// it failed) change nothing, so a burst of concurrent failures escalates
    /// the backoff once, not once per request.
    pub fn eject(&mut self, ep: usize, now: Instant, reason: &'static str) -> Option<Ejection> {
        let cfg = self.cfg;
        let st = self.eps.get_mut(ep)?;
        if st.ejected_until.is_some_and(|t| t > now) {
            return None;
        }
        let new_episode = st.failures == 0;
        if new_episode {
            st.ejected_at = Some(now);
            st.by_5xx = reason == EJECT_5XX;
        }
        st.failures = st.failures.saturating_add(1);
        let failures = st.failures;
        let factor = 1u32 << (failures - 1).min(16);
        let period = cfg.eject_base.saturating_mul(factor).min(cfg.eject_max);
        st.ejected_until = Some(now + period);
        if new_episode {
            self.failing += 1;
        }
        Some(Ejection {
            endpoint: ep,
            failures,
            period,
            reason,
        })
    }

    /// Count a 5xx answer; enough in a row eject.
    pub fn on_5xx(&mut self, ep: usize, now: Instant) -> Option<Ejection> {
        let limit = self.cfg.eject_after_5xx;
        if limit == 0 {
            return None;
        }
        let st = self.eps.get_mut(ep)?;
        st.errors_5xx += 1;
        if st.errors_5xx < limit {
            return None;
        }
        st.errors_5xx = 0;
        self.eject(ep, now, EJECT_5XX)
    }

    /// `ep` answered without a server error: clear its streak and any ejection.
    /// True when it had been failing (worth a log line).
    pub fn restore(&mut self, ep: usize) -> bool {
        let Some(st) = self.eps.get_mut(ep) else {
            return false;
        };
        st.errors_5xx = 0;
        if st.failures == 0 {
            return false;
        }
        st.failures = 0;
        st.ejected_at = None;
        st.ejected_until = None;
        self.failing = self.failing.saturating_sub(1);
        true
    }

    /// Whether some endpoint has a failure streak (then [`Self::restore_checked`]
    /// is worth calling).
    pub fn any_failing(&self) -> bool {
        self.failing > 0
    }

    /// Active checks of `ep` passed: its last telemetry scrape at `scraped`, its
    /// last health probe at `probed`. A failure streak that began before one of
    /// them ends, whatever is left of the ejection period; a streak of 5xx
    /// answers only ends by a probe (the metrics page of a server that fails
    /// inference still answers). True when `ep` was restored.
    pub fn restore_checked(
        &mut self,
        ep: usize,
        scraped: Option<Instant>,
        probed: Option<Instant>,
    ) -> bool {
        let Some(st) = self.eps.get(ep) else {
            return false;
        };
        let Some(began) = st.ejected_at else {
            return false;
        };
        let checked = if st.by_5xx {
            probed
        } else {
            scraped.max(probed)
        };
        if checked.is_some_and(|t| t > began) {
            self.restore(ep)
        } else {
            false
        }
    }

    /// Whether `ep` is ejected at `now`.
    pub fn ejected(&self, ep: usize, now: Instant) -> bool {
        !self.available(ep, now)
    }

    /// Whether some endpoint of `groups` is available and not in `tried`.
    pub fn has_alternative(&self, groups: &[BackendGroup], tried: &[usize], now: Instant) -> bool {
        groups
            .iter()
            .filter(|g| g.weight > 0)
            .flat_map(|g| g.endpoints.iter())
            .any(|ep| !tried.contains(ep) && self.available(*ep, now))
    }
}

/// Retries may add at most a fraction of the requests.
#[derive(Debug, Clone, Copy)]
pub struct RetryBudget {
    tokens: f64,
    per_request: f64,
}

/// Most retry tokens banked.
pub const RETRY_TOKENS_MAX: f64 = 10.0;

impl RetryBudget {
    /// One token to start, `per_request` more per request.
    pub fn new(per_request: f64) -> Self {
        RetryBudget {
            tokens: 1.0,
            per_request,
        }
    }

    /// Credit one request.
    pub fn earn(&mut self) {
        self.tokens = (self.tokens + self.per_request).min(RETRY_TOKENS_MAX);
    }

    /// Take a token for a retry, if there is one.
    pub fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickFailure {
    /// Every endpoint of the route is ejected (connection failures) or was tried.
    NoEndpoint,
    /// Every candidate failed its health checks.
    Unhealthy,
    /// Every healthy candidate is saturated (queue or KV-cache over threshold).
    Saturated,
    /// Every healthy candidate is saturated and the request is sheddable.
    Shed,
    /// Only endpoints still warming up for the model are left, and
    /// `modelPrewarming.mode` is `strict`.
    Warming,
}

/// What happened on one try.
#[derive(Debug)]
pub enum Outcome {
    /// A response head arrived with this status, nothing sent to the client yet.
    Head(u16),
    /// The exchange failed before a response head.
    Error(UpstreamError),
}

/// What to do next.
#[derive(Debug)]
pub enum Action {
    /// Send the request again on a fresh connection to the same endpoint.
    RetryFresh,
    /// Pick another endpoint (call [`Attempts::next`] first).
    PickAgain,
    /// Deliver the response.
    Deliver,
    /// Answer this failure.
    Respond(Failure),
    /// Stop: the client is gone.
    Abandon,
}

/// The machine's answer to an [`Outcome`].
#[derive(Debug)]
pub struct Verdict {
    /// What to do.
    pub action: Action,
    /// `gateway_upstream_errors_total{kind}` to count on the endpoint, if any.
    pub error_kind: Option<&'static str>,
    /// The endpoint was ejected (log it, drop its pooled connections).
    pub ejection: Option<Ejection>,
    /// The endpoint was failing and is restored (log it).
    pub restored: bool,
}

impl Verdict {
    fn new(action: Action, error_kind: Option<&'static str>) -> Self {
        Verdict {
            action,
            error_kind,
            ejection: None,
            restored: false,
        }
    }
}

/// Most endpoints one request tries (no heap).
pub const MAX_TRIES: usize = 8;

/// One request's tries.
#[derive(Debug)]
pub struct Attempts {
    tried: [usize; MAX_TRIES],
    len: usize,
    max_retries: u32,
    last_error: Option<&'static str>,
    /// A 503 retry already took its budget token.
    retry_paid: bool,
    /// The current endpoint is being retried on a fresh connection.
    fresh: bool,
}

impl Attempts {
    /// A request that may retry on `max_retries` other endpoints (`--retries`).
    pub fn new(max_retries: u32) -> Self {
        Attempts {
            tried: [0; MAX_TRIES],
            len: 0,
            max_retries,
            last_error: None,
            retry_paid: false,
            fresh: false,
        }
    }

    /// Endpoints tried so far (exclude them from the next pick).
    pub fn tried(&self) -> &[usize] {
        &self.tried[..self.len]
    }

    /// Before each pick: may the request try (again)? A retry needs `--retries`
    /// room and a budget token (a 503 retry has paid already).
    pub fn next(&mut self, budget: &mut RetryBudget) -> Result<(), Failure> {
        if self.len == 0 || std::mem::take(&mut self.retry_paid) {
            return Ok(());
        }
        if self.len as u32 > self.max_retries || !budget.take() {
            return Err(Failure::upstream_failed(
                self.last_error.unwrap_or("retry budget exhausted"),
            ));
        }
        Ok(())
    }

    /// The pick failed: the failure to answer.
    pub fn pick_failed(&self, why: PickFailure, route: &str) -> Failure {
        match (why, self.last_error) {
            (PickFailure::Saturated, _) => Failure::saturated(route),
            (PickFailure::Shed, _) => Failure::shed_saturated(route),
            (PickFailure::Warming, _) => Failure::warming(route),
            (_, Some(e)) => Failure::upstream_failed(e),
            _ => Failure::no_endpoint(route),
        }
    }

    /// `ep` was picked.
    pub fn picked(&mut self, ep: usize) {
        if self.len < MAX_TRIES {
            self.tried[self.len] = ep;
            self.len += 1;
        }
        self.fresh = false;
    }

    /// Whether this try may use a pooled connection (not when retrying fresh).
    pub fn may_use_pool(&self) -> bool {
        !self.fresh
    }

    /// Judge one try of `ep`.
    pub fn on(
        &mut self,
        ep: usize,
        outcome: Outcome,
        now: Instant,
        outliers: &mut Outliers,
        budget: &mut RetryBudget,
        groups: &[BackendGroup],
    ) -> Verdict {
        match outcome {
            Outcome::Head(status) => {
                let mut v = Verdict::new(Action::Deliver, None);
                if status >= 500 {
                    v.ejection = outliers.on_5xx(ep, now);
                } else {
                    v.restored = outliers.restore(ep);
                }
                if status == 503
                    && self.len as u32 <= self.max_retries
                    && outliers.has_alternative(groups, self.tried(), now)
                    && budget.take()
                {
                    self.retry_paid = true;
                    self.last_error = Some("the upstream answered 503");
                    v.action = Action::PickAgain;
                    v.error_kind = Some("http_503_retried");
                }
                v
            }
            Outcome::Error(e) => match e.kind {
                UpstreamErrorKind::Connect | UpstreamErrorKind::Tls | UpstreamErrorKind::Send => {
                    let reason = e.static_message();
                    self.last_error = Some(reason);
                    let kind = match e.kind {
                        UpstreamErrorKind::Connect => "connect",
                        UpstreamErrorKind::Tls => "tls",
                        _ => "reset",
                    };
                    let mut v = Verdict::new(Action::PickAgain, Some(kind));
                    v.ejection = outliers.eject(ep, now, reason);
                    v
                }
                UpstreamErrorKind::Stale if !self.fresh => {
                    self.fresh = true;
                    Verdict::new(Action::RetryFresh, Some("stale_connection_retried"))
                }
                UpstreamErrorKind::Stale => Verdict::new(
                    Action::Respond(Failure::upstream_failed(
                        "connection closed before the response",
                    )),
                    Some("reset"),
                ),
                UpstreamErrorKind::ClientGone => {
                    Verdict::new(Action::Abandon, Some("client_cancelled"))
                }
                UpstreamErrorKind::Timeout
                | UpstreamErrorKind::Protocol
                | UpstreamErrorKind::Closed => {
                    let kind = match e.kind {
                        UpstreamErrorKind::Timeout => "timeout",
                        UpstreamErrorKind::Protocol => "protocol",
                        _ => "reset",
                    };
                    let mut v = Verdict::new(Action::Respond(e.to_failure()), Some(kind));
                    v.ejection = outliers.on_5xx(ep, now);
                    v
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const BASE: Duration = Duration::from_millis(50);

    fn outliers(n: usize, after_5xx: u32) -> Outliers {
        Outliers::new(
            n,
            OutlierConfig {
                eject_base: BASE,
                eject_max: Duration::from_millis(300),
                eject_after_5xx: after_5xx,
            },
        )
    }

    fn groups(eps: &[usize]) -> Vec<BackendGroup> {
        vec![BackendGroup {
            name: "default/svc".into(),
            weight: 1,
            endpoints: eps.to_vec(),
        }]
    }

    fn err(kind: UpstreamErrorKind, msg: &'static str) -> Outcome {
        Outcome::Error(UpstreamError::new(kind, msg))
    }

    /// One request's machine with the shard state it acts on, on a virtual clock.
    struct World {
        now: Instant,
        out: Outliers,
        budget: RetryBudget,
        groups: Vec<BackendGroup>,
    }

    impl World {
        fn new(eps: &[usize]) -> Self {
            World {
                now: Instant::now(),
                out: outliers(eps.len(), 3),
                budget: RetryBudget::new(0.2),
                groups: groups(eps),
            }
        }
        fn on(&mut self, a: &mut Attempts, ep: usize, o: Outcome) -> Verdict {
            a.on(
                ep,
                o,
                self.now,
                &mut self.out,
                &mut self.budget,
                &self.groups,
            )
        }
    }

    #[test]
    fn a_stale_pooled_connection_is_retried_once_on_a_fresh_one() {
        let mut w = World::new(&[0, 1]);
        let mut a = Attempts::new(2);
        a.next(&mut w.budget).unwrap();
        a.picked(0);
        assert!(a.may_use_pool());
        let v = w.on(&mut a, 0, err(UpstreamErrorKind::Stale, "stale"));
        assert!(matches!(v.action, Action::RetryFresh));
        assert_eq!(v.error_kind, Some("stale_connection_retried"));
        assert!(
            !a.may_use_pool(),
            "the retry must not take a pooled connection"
        );
        let v = w.on(&mut a, 0, err(UpstreamErrorKind::Stale, "stale"));
        match v.action {
            Action::Respond(f) => assert_eq!((f.status, f.code), (502, "upstream_failed")),
            other => panic!("{other:?}"),
        }
        assert!(
            w.out.available(0, w.now),
            "a stale connection ejects nothing"
        );
    }

    #[test]
    fn a_refused_connect_ejects_and_tries_the_next_endpoint() {
        let mut w = World::new(&[0, 1]);
        let mut a = Attempts::new(2);
        w.budget.earn();
        a.next(&mut w.budget).unwrap();
        a.picked(0);
        let v = w.on(
            &mut a,
            0,
            err(UpstreamErrorKind::Connect, "connection refused"),
        );
        assert!(matches!(v.action, Action::PickAgain));
        assert_eq!(v.error_kind, Some("connect"));
        assert_eq!(
            v.ejection,
            Some(Ejection {
                endpoint: 0,
                failures: 1,
                period: BASE,
                reason: "connection refused"
            })
        );
        assert!(!w.out.available(0, w.now));
        // The retry costs a budget token (the one banked at start).
        a.next(&mut w.budget).unwrap();
        assert_eq!(a.tried(), &[0]);
        a.picked(1);
        let v = w.on(&mut a, 1, Outcome::Head(200));
        assert!(matches!(v.action, Action::Deliver));
        assert_eq!(v.error_kind, None);
    }

    #[test]
    fn the_only_endpoint_refusing_gives_one_exact_502() {
        // What `dead_backend_gives_502_then_recovers` sees end to end.
        let mut w = World::new(&[0]);
        let mut a = Attempts::new(2);
        a.next(&mut w.budget).unwrap();
        a.picked(0);
        let v = w.on(
            &mut a,
            0,
            err(UpstreamErrorKind::Connect, "connection refused"),
        );
        assert!(matches!(v.action, Action::PickAgain));
        // Budget allows a retry, but the pick finds nothing: the answer names the
        // connect failure, not "no healthy endpoint".
        a.next(&mut w.budget).unwrap();
        let f = a.pick_failed(PickFailure::NoEndpoint, "default/r");
        assert_eq!((f.status, f.code), (502, "upstream_failed"));
        assert!(f.message.contains("connection refused"), "{}", f.message);
    }

    #[test]
    fn ejection_grows_exponentially_is_capped_and_ends_on_the_clock() {
        let mut out = outliers(1, 0);
        let t0 = Instant::now();
        // Each failure comes when the previous ejection has ended.
        let mut t = t0;
        let mut periods = Vec::new();
        for _ in 0..5 {
            let p = out.eject(0, t, "x").unwrap().period;
            periods.push(p.as_millis() as u64);
            t += p;
        }
        assert_eq!(periods, [50, 100, 200, 300, 300]);
        let last = t - Duration::from_millis(300);
        assert!(!out.available(0, last + Duration::from_millis(299)));
        assert!(out.available(0, last + Duration::from_millis(300)));
        assert!(out.restore(0), "it was failing");
        assert!(!out.restore(0), "a second restore has nothing to log");
        assert_eq!(
            out.eject(0, t0, "x").unwrap().period,
            BASE,
            "restore resets the backoff"
        );
        assert!(
            out.eject(9, t0, "x").is_none(),
            "unknown endpoints are ignored"
        );
    }

    #[test]
    fn a_5xx_streak_ejects_and_a_success_resets_it() {
        let mut w = World::new(&[0]);
        for round in 0..2 {
            let mut a = Attempts::new(0);
            a.picked(0);
            let v = w.on(&mut a, 0, Outcome::Head(500));
            assert!(matches!(v.action, Action::Deliver), "a 500 is delivered");
            assert!(v.ejection.is_none(), "round {round}");
        }
        let mut a = Attempts::new(0);
        a.picked(0);
        assert!(w.on(&mut a, 0, Outcome::Head(200)).ejection.is_none());
        for _ in 0..2 {
            assert!(w.on(&mut a, 0, Outcome::Head(502)).ejection.is_none());
        }
        let v = w.on(&mut a, 0, Outcome::Head(500));
        assert_eq!(
            v.ejection.map(|e| e.reason),
            Some("consecutive 5xx responses")
        );
        // Timeouts and broken responses count towards the streak too.
        let mut w = World::new(&[0]);
        for _ in 0..2 {
            let v = w.on(&mut a, 0, err(UpstreamErrorKind::Timeout, "slow"));
            assert_eq!(v.error_kind, Some("timeout"));
            match v.action {
                Action::Respond(f) => assert_eq!(f.status, 504),
                other => panic!("{other:?}"),
            }
        }
        let v = w.on(&mut a, 0, err(UpstreamErrorKind::Protocol, "bad"));
        assert_eq!(v.error_kind, Some("protocol"));
        assert!(v.ejection.is_some());
    }

    #[test]
    fn a_503_is_retried_elsewhere_only_with_budget_room_and_an_alternative() {
        // Alternative and budget: retried, paying the token up front.
        let mut w = World::new(&[0, 1]);
        let mut a = Attempts::new(1);
        a.next(&mut w.budget).unwrap();
        a.picked(0);
        let v = w.on(&mut a, 0, Outcome::Head(503));
        assert!(matches!(v.action, Action::PickAgain));
        assert_eq!(v.error_kind, Some("http_503_retried"));
        a.next(&mut w.budget)
            .expect("the 503 retry was paid for already");
        a.picked(1);
        // `--retries 1` used up: the second 503 is delivered.
        let v = w.on(&mut a, 1, Outcome::Head(503));
        assert!(matches!(v.action, Action::Deliver));

        // No alternative: delivered.
        let mut w = World::new(&[0]);
        let mut a = Attempts::new(3);
        a.picked(0);
        assert!(matches!(
            w.on(&mut a, 0, Outcome::Head(503)).action,
            Action::Deliver
        ));

        // No budget: delivered.
        let mut w = World::new(&[0, 1]);
        assert!(w.budget.take());
        let mut a = Attempts::new(3);
        a.picked(0);
        assert!(matches!(
            w.on(&mut a, 0, Outcome::Head(503)).action,
            Action::Deliver
        ));

        // The alternative is ejected: delivered.
        let mut w = World::new(&[0, 1]);
        w.out.eject(1, w.now, "down");
        let mut a = Attempts::new(3);
        a.picked(0);
        assert!(matches!(
            w.on(&mut a, 0, Outcome::Head(503)).action,
            Action::Deliver
        ));
    }

    #[test]
    fn the_retry_budget_caps_retries_at_a_fraction_of_requests() {
        let mut b = RetryBudget::new(0.2);
        assert!(b.take(), "one token banked at start");
        assert!(!b.take());
        let mut granted = 0;
        for _ in 0..100 {
            b.earn();
            if b.take() {
                granted += 1;
            }
        }
        assert_eq!(granted, 20, "20 % of 100 requests");
        for _ in 0..1000 {
            b.earn();
        }
        let banked = (0..100).filter(|_| b.take()).count();
        assert_eq!(banked, RETRY_TOKENS_MAX as usize);
    }

    #[test]
    fn retries_stop_at_the_limit_or_an_empty_budget_naming_the_last_error() {
        let mut w = World::new(&[0, 1, 2, 3]);
        for _ in 0..20 {
            w.budget.earn();
        }
        let mut a = Attempts::new(2);
        for ep in 0..3 {
            a.next(&mut w.budget).unwrap();
            a.picked(ep);
            let v = w.on(
                &mut a,
                ep,
                err(UpstreamErrorKind::Send, "connection reset while sending"),
            );
            assert_eq!(v.error_kind, Some("reset"));
        }
        let f = a.next(&mut w.budget).unwrap_err();
        assert_eq!(f.status, 502);
        assert!(
            f.message.contains("connection reset while sending"),
            "{}",
            f.message
        );

        let mut w = World::new(&[0, 1]);
        assert!(w.budget.take());
        let mut a = Attempts::new(5);
        a.picked(0);
        w.on(
            &mut a,
            0,
            err(UpstreamErrorKind::Connect, "connect timed out"),
        );
        let f = a.next(&mut w.budget).unwrap_err();
        assert!(f.message.contains("connect timed out"), "{}", f.message);
    }

    #[test]
    fn a_client_that_leaves_abandons_the_request() {
        let mut w = World::new(&[0]);
        let mut a = Attempts::new(1);
        a.picked(0);
        let v = w.on(&mut a, 0, err(UpstreamErrorKind::ClientGone, "gone"));
        assert!(matches!(v.action, Action::Abandon));
        assert_eq!(v.error_kind, Some("client_cancelled"));
        assert!(v.ejection.is_none());
    }

    #[test]
    fn pick_failures_map_to_their_answers() {
        let a = Attempts::new(1);
        let code = |why| {
            let f = a.pick_failed(why, "r");
            (f.status, f.code)
        };
        assert_eq!(
            code(PickFailure::Saturated),
            (503, "all_endpoints_saturated")
        );
        assert_eq!(code(PickFailure::Shed), (429, "shed_saturated"));
        assert_eq!(code(PickFailure::NoEndpoint), (503, "no_healthy_endpoint"));
        assert_eq!(code(PickFailure::Unhealthy), (503, "no_healthy_endpoint"));
    }

    #[test]
    fn concurrent_failures_escalate_an_ejection_once() {
        // 59 requests in flight when the endpoint died all fail within 2 ms.
        let mut out = outliers(1, 0);
        let t0 = Instant::now();
        let first = out.eject(0, t0, "connection refused").unwrap();
        for i in 1..59u64 {
            let t = t0 + Duration::from_micros(i * 30);
            assert!(
                out.eject(0, t, "connection refused").is_none(),
                "failure {i}"
            );
        }
        assert_eq!((first.failures, first.period), (1, BASE));
        // The next episode (after the period) escalates once more.
        let next = out.eject(0, t0 + BASE, "connection refused").unwrap();
        assert_eq!((next.failures, next.period), (2, BASE * 2));
    }

    #[test]
    fn a_passing_check_after_the_ejection_began_restores() {
        let mut out = outliers(2, 2);
        let t0 = Instant::now();
        assert!(!out.any_failing());
        out.eject(0, t0, "connection refused").unwrap();
        assert!(out.any_failing());
        let before = Some(t0 - Duration::from_millis(1));
        let after = Some(t0 + Duration::from_millis(1));
        assert!(
            !out.restore_checked(0, before, None),
            "a check before the failure proves nothing"
        );
        assert!(!out.available(0, t0 + Duration::from_millis(10)));
        assert!(
            out.restore_checked(0, after, None),
            "a scrape that passed after it"
        );
        assert!(out.available(0, t0 + Duration::from_millis(10)));
        assert!(!out.any_failing());
        assert!(
            !out.restore_checked(0, after, after),
            "nothing left to restore"
        );

        // A 5xx streak: the metrics page may still answer; only a probe restores.
        out.on_5xx(1, t0);
        assert!(out.on_5xx(1, t0).is_some());
        assert!(!out.restore_checked(1, after, None));
        assert!(!out.restore_checked(1, after, before));
        assert!(out.restore_checked(1, None, after));
    }
}
