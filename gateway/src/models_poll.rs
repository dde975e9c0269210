//! What each endpoint serves: the control thread's `GET /v1/models` poll.
//!
//! One loop per endpoint on the control thread: a first poll right at start,
//! then one every `--models-interval` (default 10 s, ±10 % jitter; 0 turns
//! polling off), each bounded by `--scrape-timeout`. The body is OpenAI's list
//! format, `{"object":"list","data":[{"id":"…"}, …]}`; vLLM also lists its LoRA
//! adapters there, with `"parent"` set to the base model
//! ([`parse_models`] → [`ServedModels`]). A 200 with a parseable, non-empty
//! list replaces the endpoint's list; anything else (connection error,
//! timeout, other status, bad JSON, an empty list) keeps the last one, and an
//! endpoint never listed successfully serves any model (the model filter is
//! off for it). The scoring snapshot built every scrape interval carries the
//! lists ([`shardgate_routing::scoring::EndpointView::models`]), so the
//! filter costs a request no allocation.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use serde::Deserialize;
use shardgate_routing::scoring::{ServedAdapter, ServedModels};

use crate::upstream::Target;

/// Default `--models-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Per endpoint (by id): its last successful list, `None` until one.
pub type ModelLists = Rc<RefCell<Vec<Option<ServedModels>>>>;

#[derive(Deserialize)]
struct List {
    data: Vec<Card>,
}

#[derive(Deserialize)]
struct Card {
    id: String,
    #[serde(default)]
    parent: Option<String>,
}

/// Parses a `GET /v1/models` body: entries without a `parent` (or with an
/// empty one, or one naming themselves) are base models, the others LoRA
/// adapters of their parent. Empty ids and repeated names are skipped. An
/// error for a body that is not such a list, or lists nothing.
pub fn parse_models(body: &[u8]) -> Result<ServedModels, String> {
    let list: List = serde_json::from_slice(body).map_err(|e| format!("not a model list: {e}"))?;
    let mut out = ServedModels::default();
    for card in list.data {
        if card.id.is_empty() || out.has_model(&card.id) || out.adapter_base(&card.id).is_some() {
            continue;
        }
        match card.parent.filter(|p| !p.is_empty() && *p != card.id) {
            Some(base) => out.adapters.push(ServedAdapter {
                name: card.id,
                base,
            }),
            None => out.models.push(card.id),
        }
    }
    if out.models.is_empty() && out.adapters.is_empty() {
        return Err("the list names no model".into());
    }
    Ok(out)
}

/// Polls endpoint `ep` at `addr` forever (see the module docs), writing its
/// list into `lists[ep]`.
#[allow(clippy::too_many_arguments)]
pub async fn poll_loop(
    ep: usize,
    target: Target,
    interval: Duration,
    timeout: Duration,
    lists: ModelLists,
    throttle: crate::throttle::Throttle,
    retired: std::sync::Arc<crate::report::Retired>,
    epoch: crate::report::LoopEpoch,
) {
    let addr = target.addr;
    let mut conn = target.client();
    let mut failing = false;
    loop {
        if !epoch.current() {
            return;
        }
        if retired.get(ep) {
            // Retired by a reload: idle until it comes back.
            monoio::time::sleep(interval).await;
            continue;
        }
        let slot = throttle.slots.acquire().await;
        let got = conn.get("/v1/models", timeout).await;
        if !throttle.keep_alive {
            conn = target.client();
        }
        drop(slot);
        let result = match got {
            Ok(r) if r.status == 200 => parse_models(&r.body),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(models) => {
                let mut lists = lists.borrow_mut();
                if let Some(slot) = lists.get_mut(ep) {
                    if slot.as_ref() != Some(&models) {
                        tracing::info!(endpoint = %addr, models = ?models.models, adapters = models.adapters.len(), "served models listed");
                        *slot = Some(models);
                    }
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    if let Some(suppressed) = throttle.warn() {
                        tracing::warn!(endpoint = %addr, error = %e, suppressed, "GET /v1/models failed: keeping the last list");
                    }
                    failing = true;
                }
            }
        }
        monoio::time::sleep(interval.mul_f64(0.9 + 0.2 * fastrand::f64())).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_base_models_and_lora_adapters() {
        // vLLM with two LoRA modules (trimmed to the fields that matter).
        let body = br#"{"object":"list","data":[
            {"id":"meta-llama/Llama-3.1-8B","object":"model","root":"/models/llama","parent":null,"max_model_len":8192},
            {"id":"sql-lora","object":"model","root":"/adapters/sql","parent":"meta-llama/Llama-3.1-8B"},
            {"id":"chat-lora","object":"model","parent":"meta-llama/Llama-3.1-8B"}
        ]}"#;
        let m = parse_models(body).unwrap();
        assert_eq!(m.models, ["meta-llama/Llama-3.1-8B"]);
        assert_eq!(m.adapter_base("sql-lora"), Some("meta-llama/Llama-3.1-8B"));
        assert_eq!(m.adapter_base("chat-lora"), Some("meta-llama/Llama-3.1-8B"));
        assert_eq!(m.adapters.len(), 2);
    }

    #[test]
    fn plain_openai_lists_and_odd_entries() {
        // No `parent` at all (OpenAI, SGLang), aliases, a self-parent, a
        // repeat, an empty id and an unknown field.
        let body = br#"{"object":"list","data":[
            {"id":"a","owned_by":"x"},{"id":"b","parent":""},{"id":"c","parent":"c"},
            {"id":"a"},{"id":""},{"id":"d","extra":{"k":1}}
        ]}"#;
        let m = parse_models(body).unwrap();
        assert_eq!(m.models, ["a", "b", "c", "d"]);
        assert!(m.adapters.is_empty());
    }

    #[test]
    fn what_is_not_a_list_is_an_error() {
        for body in [
            &b""[..],
            b"not json",
            b"{}",
            br#"{"object":"list"}"#,
            br#"{"object":"list","data":{}}"#,
            br#"{"object":"list","data":[{"name":"x"}]}"#,
            br#"{"object":"list","data":[]}"#,
            br#"{"object":"list","data":[{"id":""}]}"#,
            br#"{"detail":"Not Found"}"#,
        ] {
            assert!(
                parse_models(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_simulator_lists_what_it_serves() {
        let body = shardgate_sim::api::models_response(
            &["base".into(), "alias".into()],
            &["l1".into(), "l2".into()],
            1,
            4096,
        );
        let m = parse_models(&body).unwrap();
        assert_eq!(m.models, ["base", "alias"]);
        assert_eq!(m.adapter_base("l1"), Some("base"));
        assert_eq!(m.adapter_base("l2"), Some("base"));
    }
}
