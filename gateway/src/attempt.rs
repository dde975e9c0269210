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
    ejected_until: Option<Instant>,
    errors_5xx: u32,
}

/// One shard's passive health view of every endpoint.
#[derive(Debug)]
pub struct Outliers {
    eps: Vec<EndpointHealth>,
    cfg: OutlierConfig,
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
        }
    }

    /// Whether `ep` may be picked at `now` (not ejected, or its period is over).
    pub fn available(&self, ep: usize, now: Instant) -> bool {
        self.eps
            .get(ep)
            .is_some_and(|e| e.ejected_until.is_none_or(|t| t <= now))
    }

    /// Eject `ep` for an exponentially growing period.
    pub fn eject(&mut self, ep: usize, now: Instant, reason: &'static str) -> Option<Ejection> {
        let cfg = self.cfg;
        let st = self.eps.get_mut(ep)?;
        st.failures = st.failures.saturating_add(1);
        let factor = 1u32 << (st.failures - 1).min(16);
        let period = cfg.eject_base.saturating_mul(factor).min(cfg.eject_max);
        st.ejected_until = Some(now + period);
        Some(Ejection {
            endpoint: ep,
            failures: st.failures,
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
        self.eject(ep, now, "consecutive 5xx responses")
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
        st.ejected_until = None;
        true
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
                UpstreamErrorKind::Connect | UpstreamErrorKind::Send => {
                    let reason = e.static_message();
                    self.last_error = Some(reason);
                    let kind = if e.kind == UpstreamErrorKind::Connect {
                        "connect"
                    } else {
                        "reset"
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
