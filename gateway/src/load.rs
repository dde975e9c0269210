//! Config loading for `serve`, `check` and `demo`: read the files, parse every
//! document, build the routing table (Service backends resolve through
//! EndpointSlices in the files, else DNS), and resolve the data-path settings
//! (CLI flags, then the InferenceConfig's timeouts, then defaults).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use shardgate_routing::{load_sources_with, Config, LoadLimits, RoutingTable};

use crate::cli::LimitArgs;
use crate::state::Settings;

/// A loaded configuration.
pub struct Loaded {
    /// Parsed documents.
    pub config: Config,
    /// Compiled routing table.
    pub table: RoutingTable,
}

/// Read `paths` (`-` = stdin) into (name, text) pairs, reading no more than
/// `max_bytes` in all (`--max-config-bytes`): a file that would cross it is
/// an error naming it, and what is left is not read.
pub fn read_sources(
    paths: &[PathBuf],
    max_bytes: usize,
) -> Result<Vec<(String, String)>, Vec<String>> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut left = max_bytes;
    for p in paths {
        let name = p.display().to_string();
        let reader: std::io::Result<Box<dyn Read>> = if name == "-" {
            Ok(Box::new(std::io::stdin()))
        } else {
            std::fs::File::open(p).map(|f| Box::new(f) as Box<dyn Read>)
        };
        let mut text = String::new();
        let read = reader.and_then(|r| r.take(left as u64 + 1).read_to_string(&mut text));
        match read {
            Ok(n) if n > left => {
                errors.push(format!(
                    "{name}: configuration larger than the limit of {max_bytes} bytes (--max-config-bytes)"
                ));
                break;
            }
            Ok(n) => {
                left -= n;
                out.push((name, text));
            }
            Err(e) => errors.push(format!("{name}: cannot read: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// DNS fallback for Service backendRefs no EndpointSlice covers: `name` as given,
/// then as `name.svc`-less host (IP literals resolve directly).
pub fn resolve_dns(host: &str, port: u16) -> Vec<SocketAddr> {
    match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(_) => Vec::new(),
    }
}

/// Parse and compile the sources with the default [`LoadLimits`]; every
/// error is returned, formatted.
pub fn load(sources: &[(String, String)]) -> Result<Loaded, Vec<String>> {
    load_with(sources, &LoadLimits::default())
}

/// [`load`] with explicit limits on size and nesting.
pub fn load_with(sources: &[(String, String)], limits: &LoadLimits) -> Result<Loaded, Vec<String>> {
    let config = load_sources_with(sources, limits)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let table = RoutingTable::build(&config, &mut resolve_dns)
        .map_err(|errs| errs.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    Ok(Loaded { config, table })
}

/// Resolve the data-path settings.
pub fn settings(limits: &LimitArgs, table: &RoutingTable) -> Settings {
    let ic = table.inference_config();
    let timeouts = ic.and_then(|c| c.spec.timeout.as_ref());
    let inference = timeouts.and_then(|t| t.inference).filter(|d| !d.is_zero());
    let idle = timeouts.and_then(|t| t.idle).filter(|d| !d.is_zero());
    Settings {
        limits: shardgate_http::Limits {
            max_header_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
            max_body_bytes: limits.max_body_bytes,
        },
        header_timeout: limits.header_timeout,
        client_idle_timeout: limits.client_idle_timeout,
        client_hot_wait: limits.client_hot_wait,
        client_hot_conns: limits.client_hot_conns,
        max_buffered_body_bytes: limits.max_buffered_body_bytes,
        send_timeout: limits.send_timeout,
        tls_handshake_timeout: limits.tls_handshake_timeout,
        connect_timeout: limits.connect_timeout,
        response_timeout: limits
            .response_timeout
            .or(inference)
            .unwrap_or(Duration::from_secs(300)),
        stream_idle_timeout: limits
            .stream_idle_timeout
            .or(idle)
            .unwrap_or(Duration::from_secs(60)),
        upstream_idle_per_endpoint: limits.upstream_idle_per_endpoint,
        upstream_idle_timeout: limits.upstream_idle_timeout,
        drain_timeout: limits.drain_timeout,
        eject_base: limits.eject_base,
        eject_max: limits.eject_max,
        saturated_action: match (limits.pass_saturated, limits.saturated_action.as_str()) {
            (true, _) | (_, "pass") => crate::state::SaturatedAction::Pass,
            (_, "reject") => crate::state::SaturatedAction::Reject,
            _ => crate::state::SaturatedAction::Shed,
        },
        prefix_blocks_per_endpoint: limits.prefix_blocks_per_endpoint,
        saturation: shardgate_routing::scoring::Saturation {
            max_waiting: limits.saturation_waiting,
            max_kv_usage: limits.saturation_kv,
            max_metrics_age: limits.saturation_metrics_age.unwrap_or(Duration::MAX),
            unscraped_is_saturated: false,
        },
        eject_after_5xx: limits.eject_after_5xx,
        retries: limits.retries,
        retry_budget: limits.retry_budget,
        max_concurrent: ic
            .and_then(|c| c.spec.resource_management.as_ref())
            .and_then(|r| r.max_concurrent_inferences)
            .filter(|n| *n > 0),
        admission_timeout: limits.admission_timeout,
        jwt_leeway: limits.jwt_leeway,
        jwt_cache_size: limits.jwt_cache_size,
        shards: 1,
        max_connections: limits.max_connections.unwrap_or(u64::MAX),
        rate_limit_max_keys: limits.rate_limit_max_keys,
        trusted_proxies: limits.trusted_proxies.clone(),
        h2: crate::h2_io::Limits {
            max_concurrent_streams: limits.h2_max_concurrent_streams,
            max_header_list_bytes: limits.h2_max_header_list_bytes,
            header_table_bytes: limits.h2_header_table_bytes,
            stream_window: limits.h2_stream_window,
            connection_window: limits.h2_connection_window,
            max_pending_resets: limits.h2_max_pending_resets,
            upstream_streams_per_connection: limits.h2_upstream_streams_per_connection,
            ..crate::h2_io::Limits::default()
        },
    }
}

/// Control-plane settings from the CLI.
pub fn control_settings(limits: &LimitArgs) -> crate::control::ControlSettings {
    crate::control::ControlSettings {
        scrape_interval: limits.scrape_interval,
        scrape_timeout: limits.scrape_timeout,
        stale_after_intervals: limits.stale_after_intervals,
        unhealthy_after: limits.unhealthy_after.max(1),
        healthy_after: limits.healthy_after.max(1),
        scrape: !limits.no_scrape,
        models_interval: limits.models_interval,
        max_concurrent_scrapes: limits.max_concurrent_scrapes.max(1),
    }
}

/// `--rate-limit-redis` and its settings from the CLI (None: global limits off).
pub fn global_limit_settings(
    limits: &LimitArgs,
) -> Option<crate::ratelimit_global::GlobalSettings> {
    Some(crate::ratelimit_global::GlobalSettings {
        addr: limits.rate_limit_redis.clone()?,
        failure: limits.rate_limit_redis_failure,
        batch: limits.rate_limit_redis_batch.max(1),
        timeout: limits
            .rate_limit_redis_timeout
            .max(Duration::from_millis(1)),
        prefix: limits.rate_limit_redis_prefix.clone(),
        max_keys: limits.rate_limit_max_keys,
    })
}

/// Every document of the sources as JSON, redacted by [`crate::redact::redact_document`].
fn resources_json(sources: &[(String, String)]) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (_, text) in sources {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            if let Ok(mut v) = serde_json::Value::deserialize(doc) {
                if v.is_null() {
                    continue;
                }
                crate::redact::redact_document(&mut v);
                out.push(v);
            }
        }
    }
    out
}

/// The `/debug/config` body of a loaded configuration (before the reload
/// fields `reload::ConfigStatus` adds).
pub fn debug_config_value(loaded: &Loaded, sources: &[(String, String)]) -> serde_json::Value {
    let docs: Vec<serde_json::Value> = loaded
        .config
        .docs
        .iter()
        .map(|(m, _)| serde_json::json!({"file": m.file, "index": m.index, "kind": m.kind, "apiVersion": m.api_version, "namespace": m.namespace, "name": m.name}))
        .collect();
    let report: Vec<serde_json::Value> = loaded
        .config
        .enforcement_report()
        .into_iter()
        .map(|(k, s, n)| serde_json::json!({"kind": k, "status": s, "count": n}))
        .collect();
    let endpoints: Vec<String> = loaded
        .table
        .endpoints()
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    // Warnings as the sentences `check` and the log show.
    let warnings: Vec<String> = loaded
        .table
        .warnings()
        .iter()
        .map(ToString::to_string)
        .collect();
    serde_json::json!({
        "documents": docs,
        "kinds": report,
        "models": loaded.table.models(),
        "endpoints": endpoints,
        "warnings": warnings,
        "resources": resources_json(sources),
    })
}
