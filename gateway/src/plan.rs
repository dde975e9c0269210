//! The request plan: one pure function from a parsed request to what the gateway
//! does with it. No sockets, no clock, no shard state: the same inputs always
//! give the same plan, so every routing, priority and error choice is unit-tested
//! here without I/O (see the tests at the bottom).
//!
//! A protocol front end (HTTP/1.1 in `proxy`; HTTP/2 and gRPC in
//! `h2`) parses the head,
//! reads the body and hands over a [`RequestInfo`]: method, path, query, host, a
//! header lookup and the body. [`plan`] then
//! 1. answers `GET /v1/models` itself ([`Plan::Models`]);
//! 2. takes the model from the JSON body's `model` (OpenAI paths; scanned, never
//!    a DOM; malformed JSON or two `model` keys → 400 `invalid_json`), else the
//!    front end's [`RequestInfo::message_model`] (gRPC `model_name`), else
//!    `X-Model-Type` / `X-Gateway-Model-Name`;
//! 3. matches the listener's routes (no match → 404 `model_not_found` when a
//!    model was named, else `route_not_found`; a missing filter → 500);
//! 4. resolves the request's priority (README "Flow control"):
//!    `X-Request-Priority`, else the `X-Priority` queue's, else the
//!    `InferenceObjective` named by `x-gateway-inference-objective` (unknown →
//!    400 `unknown_inference_objective`), else the model's `InferenceModel` /
//!    like-named objective, else 0;
//! 5. decides between batching (the rule has a BatchingPolicy, the body names
//!    its model and is mergeable; an unknown `X-Priority` queue → 400) and
//!    forwarding.
//!
//! Cost: one route match (0.3–1.4 µs over 100 routes, `bench/results/micro.md`),
//! one body scan for `model` on OpenAI paths, and two hash lookups for the
//! priority. Nothing is allocated unless a model name was JSON-escaped or an
//! error message is built.

use std::borrow::Cow;

use shardgate_batching::{classify, Batchable, QueueId};
use shardgate_routing::table::{kserve_model, OBJECTIVE_HEADER};
use shardgate_routing::{
    extract_model_strict, RequestView, RouteMatch, RuleAction, MODEL_HEADER, MODEL_TYPE_HEADER,
};

use crate::error::Failure;
use crate::state::GatewayState;

/// Paths whose JSON body carries the OpenAI `model` field.
pub const MODEL_BODY_PATHS: [&str; 3] =
    ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"];

/// A parsed request, whatever protocol carried it (`'a`: the request's bytes;
/// `'r`: the header lookup).
pub struct RequestInfo<'r, 'a> {
    /// Method, e.g. `POST` (`:method` in HTTP/2).
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// `Host` or `:authority`.
    pub host: Option<&'a str>,
    /// Header lookup: lowercase name in, first value out.
    pub header: &'r dyn Fn(&str) -> Option<&'a [u8]>,
    /// The whole request body (for a gRPC call: its first bytes, as far as
    /// the front end read them to find the model).
    pub body: &'a [u8],
    /// A model the protocol front end read from the request itself: a gRPC
    /// call's `model_name` ([`crate::grpc::wire`]). It stands where the JSON
    /// body's `model` would (matching, picking), but is never rewritten or
    /// batched.
    pub message_model: Option<&'a str>,
    /// A uniformly random number for this request: picks a model-version
    /// split's target (the caller draws it, so the plan stays a function of
    /// its inputs).
    pub roll: u32,
}

impl<'a> RequestInfo<'_, 'a> {
    fn header(&self, name: &str) -> Option<&'a [u8]> {
        (self.header)(name)
    }

    fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// What the gateway does with one request, and what it learned deciding it.
pub struct Decision<'a> {
    /// The request's model: its own (body or header), else the rule's one model,
    /// else a KServe path's; for metrics, logs and picking.
    pub model: Option<Cow<'a, str>>,
    /// Where [`Self::model`] came from.
    pub model_source: ModelSource,
    /// Whether the matched rule is known to serve [`Self::model`] (it then gets a
    /// metrics label of its own; the set is bounded by the configuration).
    pub known_model: bool,
    /// The matched route's `namespace/name`.
    pub route: Option<&'a str>,
    /// `namespace/name` of the SecurityPolicy of the matched rule: the executor
    /// authenticates the request ([`crate::jwt`]) before carrying out any plan.
    pub security: Option<&'a str>,
    /// What to do.
    pub plan: Plan<'a>,
    /// The model name the body's `model` is rewritten to (a model-version
    /// split: `InferenceModel.targetModels`, `InferenceModelRewrite`,
    /// `ModelRollout`); [`Self::model`] is then this target.
    pub rewrite: Option<&'a str>,
    /// With a rewrite: the model the client asked for (rate limits and
    /// priorities are about it, metrics and picks about the target).
    pub requested: Option<Cow<'a, str>>,
}

/// Where a request's model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// No model.
    None,
    /// The JSON body's `model`.
    Body,
    /// `X-Model-Type`, else `X-Gateway-Model-Name`.
    Header,
    /// A protocol message's field ([`RequestInfo::message_model`]).
    Message,
    /// The matched rule's one model, or a KServe path's.
    Route,
}

impl<'a> Decision<'a> {
    /// The model named by the body, if any (batching needs it).
    pub fn body_model(&self) -> Option<&str> {
        match self.model_source {
            ModelSource::Body => self.model.as_deref(),
            _ => None,
        }
    }

    /// The matched rule the request goes to (a forward or a batch).
    pub fn target_route(&self) -> Option<&RouteMatch<'a>> {
        match &self.plan {
            Plan::Forward(t) | Plan::Batch { target: t, .. } => Some(&t.route),
            _ => None,
        }
    }

    /// The model the client named, in the body or a header: route matching,
    /// model-aware picks and the upstream's `X-Gateway-Model-Name` use it.
    pub fn named_model(&self) -> Option<&str> {
        match self.model_source {
            ModelSource::Body | ModelSource::Header | ModelSource::Message => self.model.as_deref(),
            _ => None,
        }
    }
}

/// The three kinds of plan: answer now, batch, or forward.
pub enum Plan<'a> {
    /// Answer with the gateway's own `/v1/models` list.
    Models,
    /// Answer with this error.
    Reject(Failure),
    /// Send to one endpoint of the route.
    Forward(Target<'a>),
    /// Queue on the rule's batcher, to be merged with compatible requests.
    Batch {
        /// Where the batch goes.
        target: Target<'a>,
        /// `namespace/name` of the BatchingPolicy.
        policy: &'a str,
        /// The queue the request waits in.
        queue: QueueId,
        /// The `X-Priority` queue name the client gave, if any.
        queue_name: Option<&'a str>,
        /// The body's batch key and input count.
        class: Batchable,
    },
}

/// A route decision shared by forwarded and batched requests.
pub struct Target<'a> {
    /// The matched rule.
    pub route: RouteMatch<'a>,
    /// Resolved priority (higher is more important; below 0 sheddable).
    pub priority: i32,
}

fn is_model_body_path(method: &str, path: &str) -> bool {
    method == "POST" && MODEL_BODY_PATHS.contains(&path)
}

/// Model name from a header value (lossily decoded when it is not UTF-8).
fn header_model(v: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(v)
}

/// Plan one request that arrived on `listeners` (listeners sharing a port share
/// one table: the first stands for them all).
pub fn plan<'a>(
    req: &RequestInfo<'_, 'a>,
    state: &'a GatewayState,
    listeners: &[usize],
) -> Decision<'a> {
    let mut d = Decision {
        model: None,
        model_source: ModelSource::None,
        known_model: false,
        route: None,
        security: None,
        plan: Plan::Models,
        rewrite: None,
        requested: None,
    };
    if req.method == "GET" && req.path == "/v1/models" {
        return d;
    }
    if is_model_body_path(req.method, req.path) {
        match extract_model_strict(req.body) {
            Ok(Some(m)) => {
                d.model = Some(m);
                d.model_source = ModelSource::Body;
            }
            Ok(None) => {}
            Err(e) => {
                d.plan = Plan::Reject(Failure::bad_json(e.to_string()));
                return d;
            }
        }
    }
    if let (None, Some(m)) = (&d.model, req.message_model) {
        d.model = Some(Cow::Borrowed(m));
        d.model_source = ModelSource::Message;
    }
    if d.model.is_none() {
        d.model = req
            .header(MODEL_TYPE_HEADER)
            .or_else(|| req.header(MODEL_HEADER))
            .map(header_model);
        if d.model.is_some() {
            d.model_source = ModelSource::Header;
        }
    }
    // The matcher reads the request's model for `X-Gateway-Model-Name` (over any
    // client copy) and `X-Model-Type` (when the client sent none), so routes
    // written either way serve plain OpenAI clients and `X-Model-Type` clients.
    let lookup = |name: &str| req.header(name);
    let view = RequestView {
        method: req.method,
        path: req.path,
        query: req.query,
        host: req.host,
        model: d.named_model(),
        headers: &lookup,
    };
    let matched = listeners
        .first()
        .and_then(|l| state.table.match_request(*l, &view));
    let Some(route) = matched else {
        let f = match &d.model {
            Some(m) => Failure::unknown_model(m),
            None => Failure::no_route(req.method, req.path),
        };
        d.plan = Plan::Reject(f);
        return d;
    };
    d.route = Some(route.route);
    d.security = route.security;
    if let RuleAction::FilterNotFound { filter } = route.action {
        d.plan = Plan::Reject(Failure::filter_not_found(filter));
        return d;
    }
    if d.model.is_none() {
        d.model = route
            .model
            .or_else(|| kserve_model(req.path))
            .map(Cow::Borrowed);
        if d.model.is_some() {
            d.model_source = ModelSource::Route;
        }
    }
    d.known_model = d
        .model
        .as_deref()
        .is_some_and(|m| route.models.iter().any(|k| k == m));

    let batch_policy = route.batching.and_then(|k| state.batch_policy(k));
    let queue_name = req.header_str("x-priority");
    let objective = match req.header(OBJECTIVE_HEADER) {
        None => None,
        Some(v) => {
            let found = std::str::from_utf8(v)
                .ok()
                .and_then(|n| state.table.objective_priority(route.rule_id, n.trim()));
            if found.is_none() {
                d.plan = Plan::Reject(Failure::batch_refused(
                    400,
                    "unknown_inference_objective",
                    format!(
                        "{OBJECTIVE_HEADER} `{}` names no InferenceObjective",
                        String::from_utf8_lossy(v)
                    ),
                ));
                return d;
            }
            found
        }
    };
    let priority = req
        .header_str("x-request-priority")
        .and_then(|v| v.trim().parse::<i32>().ok())
        .or_else(|| {
            let policy = batch_policy?;
            let id = policy.queue_id(queue_name?)?;
            policy.queues().get(id.0).map(|q| q.priority)
        })
        .or(objective)
        .or_else(|| {
            d.model
                .as_deref()
                .and_then(|m| state.table.model_priority(route.rule_id, m))
        })
        .unwrap_or(0);

    // A model-version split sends the request upstream as one of its targets
    // (priority and route stay those of the requested model). Only a body's
    // model is rewritten; a split request is forwarded, never batched.
    if d.model_source == ModelSource::Body {
        let split = d
            .model
            .as_deref()
            .and_then(|m| state.table.model_split(route.rule_id, m));
        if let Some(to) = split.and_then(|s| split_target(s, state, req.roll)) {
            d.rewrite = Some(to);
            d.requested = d.model.replace(Cow::Borrowed(to));
            d.known_model = true;
        }
    }

    let target = Target { route, priority };
    let batchable = match (route.batching, batch_policy, d.model_source) {
        _ if d.rewrite.is_some() => None,
        (Some(key), Some(policy), ModelSource::Body) => match classify(req.path, req.body) {
            Ok(Some(class)) => Some((key, policy, class)),
            _ => None,
        },
        _ => None,
    };
    d.plan = match batchable {
        None => Plan::Forward(target),
        Some((key, policy, class)) => {
            let queue = match queue_name {
                None => Some(policy.queue_for_priority(priority)),
                Some(name) => policy.queue_id(name),
            };
            match queue {
                Some(queue) => Plan::Batch {
                    target,
                    policy: key,
                    queue,
                    queue_name,
                    class,
                },
                None => {
                    let names: Vec<&str> =
                        policy.queues().iter().map(|q| q.name.as_str()).collect();
                    Plan::Reject(Failure::batch_refused(
                        400,
                        "unknown_priority_queue",
                        format!(
                            "X-Priority `{}` names no queue of BatchingPolicy {key}; queues: {}",
                            queue_name.unwrap_or(""),
                            names.join(", ")
                        ),
                    ))
                }
            }
        }
    };
    d
}

/// The target a `roll` picks from a split: by static weights, or, for a
/// rollout, the canary with its live weight in percent.
fn split_target<'a>(
    split: &'a shardgate_routing::SplitEntry,
    state: &GatewayState,
    roll: u32,
) -> Option<&'a str> {
    if let Some(i) = split.rollout {
        let canary = state.rollouts.as_ref().map_or(0, |r| r.canary_weight(i));
        let (stable, canary_t) = (split.targets.first()?, split.targets.get(1)?);
        return Some(if roll % 100 < canary {
            canary_t.model.as_str()
        } else {
            stable.model.as_str()
        });
    }
    let total: u64 = split.targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut at = u64::from(roll) % total;
    for t in &split.targets {
        let w = u64::from(t.weight);
        if at < w {
            return Some(t.model.as_str());
        }
        at -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    const CONFIG: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: shardgate
  listeners: [{name: http, protocol: HTTP, port: 8080}]
---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: pool, namespace: default}
spec:
  targetPorts: [{number: 8000}]
  selector: {matchLabels: {app: sim}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: pool-1
  namespace: default
  labels: {inference.networking.k8s.io/pool-name: pool}
addressType: IPv4
ports: [{port: 8000}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: crit, namespace: default}
spec: {modelName: crit, criticality: Critical, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {name: shed, namespace: default}
spec: {modelName: shed, criticality: Sheddable, poolRef: {name: pool}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceObjective
metadata: {name: urgent, namespace: default}
spec: {priority: 10, poolRef: {name: pool}}
---
apiVersion: ai.gateway.io/v1alpha1
kind: BatchingPolicy
metadata: {name: batching, namespace: default}
spec:
  maxBatchSize: 32
  maxLatency: 50ms
  priorityQueues:
  - {name: real-time, maxLatency: 10ms, maxBatchSize: 4}
  - {name: batch, maxLatency: 100ms, maxBatchSize: 64}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r0, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches:
    - headers: [{name: X-Gateway-Model-Name, value: crit}]
    - headers: [{name: X-Gateway-Model-Name, value: shed}]
    - headers: [{name: X-Model-Type, value: typed}]
    backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: pool}]
  - matches: [{headers: [{name: X-Gateway-Model-Name, value: emb}]}]
    filters:
    - {type: ExtensionRef, extensionRef: {group: ai.gateway.io, kind: BatchingPolicy, name: batching}}
    backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: pool}]
  - matches: [{path: {type: Exact, value: /v2/models/resnet/infer}}]
    backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: pool}]
  - matches: [{path: {type: PathPrefix, value: /broken}}]
    filters:
    - {type: ExtensionRef, extensionRef: {group: ai.gateway.io, kind: BatchingPolicy, name: missing}}
    backendRefs: [{group: inference.networking.k8s.io, kind: InferencePool, name: pool}]
";

    fn state() -> GatewayState {
        state_with("")
    }

    fn state_with(extra: &str) -> GatewayState {
        let text = format!("{CONFIG}{extra}");
        let loaded = crate::load::load(&[("plan.yaml".into(), text)]).expect("config");
        let cli = crate::cli::Cli::try_parse_from(["shardgate", "serve", "-c", "plan.yaml"])
            .expect("cli");
        let crate::cli::Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let settings = crate::load::settings(&args.run.limits, &loaded.table);
        GatewayState::new(loaded.table, settings).expect("state")
    }

    /// Plan `method path` with `headers` and `body` on listener 0.
    fn run<'a>(
        st: &'a GatewayState,
        method: &'a str,
        path: &'a str,
        headers: &'a [(&'a str, &'a str)],
        body: &'a str,
    ) -> Decision<'a> {
        run_rolled(st, method, path, headers, body, 0)
    }

    fn run_rolled<'a>(
        st: &'a GatewayState,
        method: &'a str,
        path: &'a str,
        headers: &'a [(&'a str, &'a str)],
        body: &'a str,
        roll: u32,
    ) -> Decision<'a> {
        let lookup = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        };
        let info = RequestInfo {
            method,
            path,
            query: None,
            host: None,
            header: &lookup,
            body: body.as_bytes(),
            message_model: None,
            roll,
        };
        plan(&info, st, &[0])
    }

    fn forward(d: &Decision<'_>) -> (i32, &'static str) {
        match &d.plan {
            Plan::Forward(t) => (t.priority, "forward"),
            Plan::Batch { target, .. } => (target.priority, "batch"),
            Plan::Models => (0, "models"),
            Plan::Reject(_) => (0, "reject"),
        }
    }

    fn rejected(d: &Decision<'_>) -> (u16, &'static str) {
        match &d.plan {
            Plan::Reject(f) => (f.status, f.code),
            _ => panic!("not rejected"),
        }
    }

    fn completion(model: &str) -> String {
        format!(r#"{{"model":"{model}","prompt":"hi","max_tokens":1}}"#)
    }

    #[test]
    fn a_split_model_is_rewritten_to_a_target_by_weight_and_not_batched() {
        let st = state_with("---\napiVersion: inference.networking.x-k8s.io/v1alpha2\nkind: InferenceModelRewrite\nmetadata: {name: rw, namespace: default}\nspec:\n  poolRef: {name: pool}\n  rules:\n  - matches: [{model: {type: Exact, value: crit}}]\n    targets: [{modelRewrite: crit-v1, weight: 3}, {modelRewrite: crit-v2, weight: 1}]\n");
        let body = completion("crit");
        let mut seen = std::collections::HashMap::new();
        for roll in 0..400u32 {
            let d = run_rolled(&st, "POST", "/v1/completions", &[], &body, roll);
            assert_eq!(d.rewrite, d.model.as_deref());
            assert_eq!(d.requested.as_deref(), Some("crit"));
            assert!(d.known_model);
            // Priority stays the requested model's (InferenceModel crit: Critical).
            assert_eq!(forward(&d), (1, "forward"));
            *seen.entry(d.rewrite.unwrap().to_string()).or_insert(0) += 1;
        }
        assert_eq!(seen["crit-v1"], 300);
        assert_eq!(seen["crit-v2"], 100);
        // Another model is left alone.
        let other = completion("shed");
        assert_eq!(
            run(&st, "POST", "/v1/completions", &[], &other).rewrite,
            None
        );
    }

    #[test]
    fn a_rollout_sends_its_live_canary_share() {
        let st = state_with("---\napiVersion: ai.gateway.io/v1alpha1\nkind: ModelRollout\nmetadata: {name: ro, namespace: default}\nspec:\n  modelName: crit\n  poolRef: {name: pool}\n  stable: crit-v1\n  canary: crit-v2\n  steps: [10, 100]\n");
        let body = completion("crit");
        let canary = (0..1000u32)
            .filter(|r| {
                run_rolled(&st, "POST", "/v1/completions", &[], &body, *r).rewrite
                    == Some("crit-v2")
            })
            .count();
        assert_eq!(canary, 100, "the first step: 10 %");
    }

    #[test]
    fn the_gateway_answers_v1_models_itself() {
        let st = state();
        let d = run(&st, "GET", "/v1/models", &[], "");
        assert!(matches!(d.plan, Plan::Models));
        assert!(d.route.is_none());
    }

    #[test]
    fn body_model_routes_and_is_a_known_model() {
        let st = state();
        let body = completion("crit");
        let d = run(&st, "POST", "/v1/completions", &[], &body);
        assert_eq!(forward(&d), (1, "forward"), "InferenceModel Critical = 1");
        assert_eq!(d.model.as_deref(), Some("crit"));
        assert_eq!(d.body_model(), Some("crit"));
        assert!(d.known_model);
        assert_eq!(d.route, Some("default/r0"));
    }

    #[test]
    fn header_model_routes_but_is_not_a_body_model() {
        let st = state();
        let d = run(&st, "GET", "/anything", &[("X-Model-Type", "typed")], "");
        assert_eq!(forward(&d), (0, "forward"));
        assert_eq!(d.model.as_deref(), Some("typed"));
        assert_eq!(d.body_model(), None);
        assert_eq!(d.named_model(), Some("typed"));
        assert_eq!(d.model_source, ModelSource::Header);
    }

    #[test]
    fn x_model_type_reaches_routes_that_match_x_gateway_model_name() {
        // README: both headers name the model; the rule for `crit` matches
        // `X-Gateway-Model-Name` only.
        let st = state();
        let d = run(
            &st,
            "POST",
            "/v1/chat/completions",
            &[("X-Model-Type", "crit")],
            r#"{"messages":[]}"#,
        );
        assert_eq!(forward(&d), (1, "forward"), "routed, with crit's priority");
        assert_eq!(d.named_model(), Some("crit"));
        // The body's model wins over the header.
        let shed = completion("shed");
        let d = run(
            &st,
            "POST",
            "/v1/completions",
            &[("X-Model-Type", "typed")],
            &shed,
        );
        assert_eq!(forward(&d), (-1, "forward"));
        assert_eq!(d.named_model(), Some("shed"));
    }

    #[test]
    fn priority_order_request_header_then_objective_then_model() {
        let st = state();
        let body = completion("shed");
        let p = |headers: &[(&str, &str)]| {
            forward(&run(&st, "POST", "/v1/completions", headers, &body)).0
        };
        assert_eq!(p(&[]), -1, "InferenceModel Sheddable");
        assert_eq!(p(&[("x-gateway-inference-objective", "urgent")]), 10);
        assert_eq!(
            p(&[
                ("x-gateway-inference-objective", "urgent"),
                ("x-request-priority", "-3")
            ]),
            -3
        );
        // A priority that does not parse falls through to the next source.
        assert_eq!(p(&[("x-request-priority", "high")]), -1);
    }

    #[test]
    fn an_unknown_objective_is_a_400_even_with_an_explicit_priority() {
        let st = state();
        let body = completion("crit");
        let headers = [
            ("x-gateway-inference-objective", "nope"),
            ("x-request-priority", "3"),
        ];
        let d = run(&st, "POST", "/v1/completions", &headers, &body);
        assert_eq!(rejected(&d), (400, "unknown_inference_objective"));
    }

    #[test]
    fn unknown_model_and_unknown_route_are_404s() {
        let st = state();
        let body = completion("ghost");
        let d = run(&st, "POST", "/v1/completions", &[], &body);
        assert_eq!(rejected(&d), (404, "model_not_found"));
        assert_eq!(d.model.as_deref(), Some("ghost"));
        let d = run(&st, "GET", "/nothing", &[], "");
        assert_eq!(rejected(&d), (404, "route_not_found"));
    }

    #[test]
    fn malformed_json_and_two_model_keys_are_400s() {
        let st = state();
        for body in [r#"{"model":"#, r#"{"model":"a","model":"b"}"#] {
            let d = run(&st, "POST", "/v1/chat/completions", &[], body);
            assert_eq!(rejected(&d), (400, "invalid_json"), "{body}");
        }
    }

    #[test]
    fn an_escaped_model_name_is_decoded() {
        let st = state();
        let d = run(
            &st,
            "POST",
            "/v1/completions",
            &[],
            r#"{"model":"cr\u0069t","prompt":"x"}"#,
        );
        assert_eq!(d.model.as_deref(), Some("crit"));
        assert_eq!(forward(&d), (1, "forward"));
    }

    #[test]
    fn a_kserve_path_names_its_model() {
        let st = state();
        let d = run(&st, "POST", "/v2/models/resnet/infer", &[], "{}");
        assert_eq!(forward(&d), (0, "forward"));
        assert_eq!(d.model.as_deref(), Some("resnet"));
        assert_eq!(d.body_model(), None);
        assert_eq!(d.named_model(), None);
        assert_eq!(d.model_source, ModelSource::Route);
    }

    #[test]
    fn a_missing_filter_is_a_500() {
        let st = state();
        let d = run(&st, "GET", "/broken/x", &[], "");
        assert_eq!(rejected(&d), (500, "filter_not_found"));
        assert_eq!(d.route, Some("default/r0"));
    }

    #[test]
    fn batchable_requests_pick_their_queue() {
        let st = state();
        let body = r#"{"model":"emb","input":["a","b"]}"#;
        let queue = |headers: &[(&str, &str)]| -> Result<(usize, i32), (u16, &'static str)> {
            let d = run(&st, "POST", "/v1/embeddings", headers, body);
            match d.plan {
                Plan::Batch {
                    queue,
                    target,
                    policy,
                    class,
                    ..
                } => {
                    assert_eq!(policy, "default/batching");
                    assert_eq!(class.inputs, 2);
                    Ok((queue.0, target.priority))
                }
                Plan::Reject(f) => Err((f.status, f.code)),
                _ => panic!("neither batched nor rejected"),
            }
        };
        // Queues most urgent first: real-time (priority 2), default (1), batch (0).
        assert_eq!(queue(&[]), Ok((1, 0)), "priority 0: the default queue");
        assert_eq!(queue(&[("x-priority", "real-time")]), Ok((0, 2)));
        assert_eq!(queue(&[("x-priority", "batch")]), Ok((2, 0)));
        assert_eq!(queue(&[("x-request-priority", "4")]), Ok((0, 4)));
        assert_eq!(queue(&[("x-request-priority", "-1")]), Ok((2, -1)));
        assert_eq!(
            queue(&[("x-priority", "nope")]),
            Err((400, "unknown_priority_queue"))
        );
    }

    #[test]
    fn streaming_or_header_routed_requests_are_not_batched() {
        let st = state();
        let body = r#"{"model":"emb","prompt":"a","stream":true}"#;
        let d = run(&st, "POST", "/v1/completions", &[], body);
        assert_eq!(forward(&d).1, "forward");
        let d = run(
            &st,
            "POST",
            "/v1/other",
            &[("x-gateway-model-name", "emb")],
            r#"{"input":["a"]}"#,
        );
        assert_eq!(forward(&d).1, "forward", "the body names no model");
    }

    #[test]
    fn a_grpc_model_name_routes_like_the_body_model_and_is_never_batched() {
        let st = state();
        let plan_for = |model: &'static str, headers: &'static [(&'static str, &'static str)]| {
            let lookup = move |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_bytes())
            };
            let info = RequestInfo {
                method: "POST",
                path: "/inference.GRPCInferenceService/ModelInfer",
                query: None,
                host: None,
                header: &lookup,
                body: b"\0\0\0\0\x05\x0a\x03emb",
                message_model: Some(model),
                roll: 0,
            };
            let d = plan(&info, &st, &[0]);
            (
                d.model.as_deref().map(str::to_owned),
                d.model_source,
                d.named_model().map(str::to_owned),
                d.body_model().map(str::to_owned),
                match &d.plan {
                    Plan::Forward(t) => Ok(t.priority),
                    Plan::Reject(f) => Err((f.status, f.code)),
                    Plan::Batch { .. } => Err((0, "batched")),
                    Plan::Models => Err((0, "models")),
                },
            )
        };
        let (m, src, named, body, plan) = plan_for("crit", &[]);
        assert_eq!((m.as_deref(), src), (Some("crit"), ModelSource::Message));
        assert_eq!((named.as_deref(), body), (Some("crit"), None));
        assert!(matches!(plan, Ok(p) if p > 0), "{plan:?}");
        // The rule with a BatchingPolicy forwards a gRPC call.
        assert_eq!(plan_for("emb", &[]).4, Ok(0));
        // The message's model wins over a client header; unknown → 404.
        assert_eq!(
            plan_for("nope", &[("x-gateway-model-name", "crit")]).4,
            Err((404, "model_not_found"))
        );
    }
}
