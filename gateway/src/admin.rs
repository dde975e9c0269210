//! Admin listener (default 127.0.0.1:9901) on its own thread and runtime, away from
//! the shards: `/healthz` (process up), `/readyz` (serving and not draining; 503
//! while draining or when some model has no healthy endpoint), `/debug/config`
//! (the loaded resources, their enforcement status, warnings, the revision
//! and the last reload), `POST /admin/reload` (re-read the config files),
//! `/debug/endpoints` (telemetry, health, scores per endpoint), `/metrics`
//! (Prometheus text format, every shard merged at scrape).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};
use shardgate_http::{parse_request_head, write, Limits};
use shardgate_runtime::io::read_into;
use shardgate_runtime::Shutdown;

/// What the admin endpoints report.
pub struct AdminView {
    /// `/debug/config` and the configuration revision.
    pub config: Arc<crate::reload::ConfigStatus>,
    /// The gateway state in force: model pre-warming, canary rollouts
    /// (`ModelRollout`) and global rate limits through Redis, when on.
    pub live: Arc<crate::state::LiveState>,
    /// Per-model autoscaling signals (`/autoscale`), unless turned off.
    pub autoscale: Option<Arc<crate::autoscale::AutoscaleView>>,
    /// Drain flag.
    pub shutdown: Shutdown,
    /// Shard metrics, merged at scrape.
    pub hub: Arc<crate::metrics::MetricsHub>,
    /// Endpoint health, telemetry and scores.
    pub endpoints: crate::endpoints_view::EndpointsView,
}

/// Start the admin thread on an already-bound listener.
pub fn spawn(listener: std::net::TcpListener, view: Arc<AdminView>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let r = shardgate_runtime::block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "admin listener");
                        return;
                    }
                };
                loop {
                    if let Ok((stream, _)) = listener.accept().await {
                        monoio::spawn(serve(stream, view.clone()));
                    }
                }
            });
            if let Err(e) = r {
                tracing::error!(error = %e, "admin runtime");
            }
        })?;
    Ok(())
}

/// Bind the admin address.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

async fn serve(mut stream: TcpStream, view: Arc<AdminView>) {
    let mut buf = BytesMut::with_capacity(4096);
    let limits = Limits::default();
    loop {
        let head = loop {
            let bytes = std::mem::take(&mut buf).freeze();
            match parse_request_head(&bytes, &limits) {
                Ok(Some((h, len))) => {
                    buf.extend_from_slice(&bytes[len..]);
                    break h;
                }
                Ok(None) => {
                    buf = bytes
                        .try_into_mut()
                        .unwrap_or_else(|b| BytesMut::from(&b[..]))
                }
                Err(_) => return,
            }
            let (res, b) = read_into(&mut stream, buf).await;
            buf = b;
            match res {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        };
        let (status, ctype, body): (u16, &[u8], Vec<u8>) = match head.path() {
            "/healthz" => (200, b"text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                if view.shutdown.is_draining() {
                    (503, b"text/plain", b"draining\n".to_vec())
                } else if let Err(models) = view.endpoints.readiness() {
                    let msg = format!(
                        "not ready: no healthy endpoint for model(s) {}\n",
                        models.join(", ")
                    );
                    (503, b"text/plain", msg.into_bytes())
                } else {
                    (200, b"text/plain", b"ready\n".to_vec())
                }
            }
            "/debug/config" => (200, b"application/json", view.config.debug_json()),
            "/admin/reload" if head.method() == "POST" => {
                if view.config.request_reload() {
                    let body = format!(
                        "{{\"reload\":\"requested\",\"revision\":{},\"see\":\"/debug/config\"}}\n",
                        view.config.revision()
                    );
                    (202, b"application/json", body.into_bytes())
                } else {
                    (
                        409,
                        b"application/json",
                        b"{\"error\":\"the configuration is not read from watched files (serve -c FILE)\"}\n".to_vec(),
                    )
                }
            }
            "/admin/reload" => (405, b"text/plain", b"POST only\n".to_vec()),
            "/autoscale" => match &view.autoscale {
                Some(a) => (200, b"application/json", a.json()),
                None => (
                    404,
                    b"text/plain",
                    b"autoscaling signals are off (--autoscale-interval 0)\n".to_vec(),
                ),
            },
            "/metrics" => (200, b"text/plain; version=0.0.4; charset=utf-8", {
                let mut text = view.hub.render();
                view.endpoints.render_metrics(&mut text);
                view.config.render(&mut text);
                let state = view.live.load();
                if let Some(w) = &state.warmth {
                    w.render(&mut text);
                }
                if let Some(a) = &view.autoscale {
                    a.render(&mut text);
                }
                if let Some(g) = &state.global_limiter {
                    g.render(&mut text);
                }
                if let Some(r) = &state.rollouts {
                    r.render(&mut text);
                }
                text.into_bytes()
            }),
            "/debug/endpoints" => (200, b"application/json", view.endpoints.debug_json()),
            "/debug/rollouts" => match &view.live.load().rollouts {
                Some(r) => (200, b"application/json", r.json()),
                None => (200, b"application/json", b"{\"rollouts\": []}\n".to_vec()),
            },
            _ => (404, b"text/plain", b"not found\n".to_vec()),
        };
        let mut out = Vec::with_capacity(256 + body.len());
        write::status_line(&mut out, status);
        write::header(&mut out, "content-type", ctype);
        write::header_u64(&mut out, "content-length", body.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        let (res, _) = stream.write_all(out).await;
        if res.is_err() || !head.keep_alive() {
            return;
        }
    }
}
