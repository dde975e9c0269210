//! Shard wiring: each shard turns its pre-bound `SO_REUSEPORT` sockets into monoio
//! listeners, accepts until the gateway drains, spawns one task per connection, and
//! on drain waits for its in-flight requests (up to the drain deadline) before its
//! runtime — and with it every idle connection — is dropped.

use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpListener;
use monoio::time::Instant;
use shardgate_runtime::{ShardInfo, Shutdown};

use crate::access_log::{AccessLog, FLUSH_EVERY};
use crate::control::ControlShared;
use crate::metrics::{MetricsHub, PUBLISH_EVERY};
use crate::proxy::serve_connection;
use crate::shard::Shard;
use crate::state::GatewayState;

/// One served port: the listener indices of the routing table on it, and one
/// pre-bound socket per shard.
pub struct PortSockets {
    /// Routing-table listener indices sharing this port.
    pub listeners: Vec<usize>,
    /// One socket per shard (index = shard id).
    pub sockets: Vec<StdListener>,
}

/// A shard's main future: accept on every port until drain, then wait for in-flight
/// requests to finish.
pub async fn shard_main(
    info: ShardInfo,
    state: Arc<GatewayState>,
    shutdown: Shutdown,
    hub: Arc<MetricsHub>,
    access_log: Option<AccessLog>,
    control: Arc<ControlShared>,
    sockets: Vec<(Vec<usize>, StdListener)>,
) {
    let shard = Shard::new(
        info.id,
        state,
        shutdown.clone(),
        hub,
        access_log.map(|l| l.shard()),
        control,
    );
    shard.publish_metrics();
    monoio::spawn(publish_loop(shard.clone()));
    if let Some(a) = &shard.admission {
        monoio::spawn(a.clone().driver());
    }
    for pb in &shard.batchers {
        monoio::spawn(crate::batch::driver(shard.clone(), pb.clone()));
    }
    tracing::debug!(shard = info.id, driver = info.driver.name(), core = ?info.core, "shard started");
    for (listeners, std_listener) in sockets {
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(shard = info.id, error = %e, "cannot register listener");
                continue;
            }
        };
        let listeners: Rc<[usize]> = listeners.into();
        monoio::spawn(accept_loop(shard.clone(), listener, listeners));
    }
    shutdown.wait().await;
    let deadline = Instant::now() + shard.state.settings.drain_timeout;
    while shard.in_flight.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    shard.publish_metrics();
    if let Some(log) = &shard.access_log {
        log.borrow_mut().flush();
    }
    if shard.in_flight.get() > 0 {
        tracing::warn!(
            shard = info.id,
            in_flight = shard.in_flight.get(),
            "drain deadline passed; closing"
        );
    }
}

/// Publish this shard's metrics every [`PUBLISH_EVERY`] and hand its access-log
/// lines to the writer every [`FLUSH_EVERY`], until the runtime stops.
async fn publish_loop(shard: Rc<Shard>) {
    let mut last_publish = Instant::now();
    loop {
        monoio::time::sleep(FLUSH_EVERY.min(PUBLISH_EVERY)).await;
        if let Some(log) = &shard.access_log {
            log.borrow_mut().flush();
        }
        if let Some(a) = &shard.admission {
            if let Some(share) = shard.control.shares.load().get(shard.id) {
                a.set_share(*share);
            }
        }
        if last_publish.elapsed() >= PUBLISH_EVERY {
            shard.publish_metrics();
            last_publish = Instant::now();
        }
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, listeners: Rc<[usize]>) {
    loop {
        // Wait for readiness (cancel-safe) so the drain check never drops an accepted socket.
        monoio::select! {
            r = listener.readable(false) => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "listener failed");
                    return;
                }
            }
            _ = monoio::time::sleep(Shutdown::POLL) => {}
        }
        if shard.shutdown.is_draining() {
            return;
        }
        // The socket is readable, so this completes at once (each shard owns its socket).
        match listener.accept().await {
            Ok((stream, peer)) => {
                monoio::spawn(serve_connection(
                    shard.clone(),
                    stream,
                    peer,
                    listeners.clone(),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "accept failed"),
        }
    }
}
