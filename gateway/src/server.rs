//! Shard wiring: each shard turns its pre-bound `SO_REUSEPORT` sockets into monoio
//! listeners, accepts until the gateway drains, spawns one task per connection, and
//! on drain waits for its in-flight requests (up to the drain deadline) before its
//! runtime — and with it every idle connection — is dropped.
//!
//! The accept loop keeps the shard within its connection cap
//! ([`crate::conns`]): at the cap a new connection makes the longest-idle
//! keep-alive connection close, or, with none idle, is accepted and closed at once
//! (`gateway_connections_refused_total{reason="cap"}`). When descriptors run out
//! (EMFILE/ENFILE) it closes up to 16 idle connections and pauses accepting for
//! 10 ms, doubling up to 1 s while the failures go on (`reason="emfile"`); other
//! accept errors pause the same way, except a client's own abort. Its warnings
//! are rate-limited to one line a second per shard, with the count held back.
//!
//! A port whose listeners are `HTTPS` completes a TLS handshake first
//! ([`crate::tls`], within `--tls-handshake-timeout`) and then serves the
//! connection exactly as a plain one.
//!
//! Each connection's task runs under [`crate::contain::contained`]: a panic
//! in it ends that connection only.
//!
//! Drain: the listening sockets are shut by [`Shutdown::trigger`] on the signal
//! thread (new connections refused, backlogs reset at once); the accept loops
//! wake on the shut socket and end.

use std::rc::Rc;
use std::sync::Arc;

use monoio::net::TcpListener;
use monoio::time::Instant;
use shardgate_runtime::{ShardInfo, Shutdown};

use crate::access_log::{AccessLog, FLUSH_EVERY};
use crate::conns::{Backoff, LogLimiter, SHED_ON_EMFILE};
use crate::contain::{contained, FatalOnUnwind, Task};
use crate::control::ControlShared;
use crate::metrics::{MetricsHub, PUBLISH_EVERY};
use crate::ports::{PortSocket, ShardPorts};
use crate::proxy::serve_connection;
use crate::shard::{ConnGauge, Shard};

/// A shard's main future: accept on every port until drain, then wait for in-flight
/// requests to finish.
pub async fn shard_main(
    info: ShardInfo,
    live: Arc<crate::state::LiveState>,
    shutdown: Shutdown,
    hub: Arc<MetricsHub>,
    access_log: Option<AccessLog>,
    control: Arc<ControlShared>,
    ports: ShardPorts,
) {
    // A panic that escapes the contained tasks ends this thread: the other
    // shards drain and the process exits 70 ([`crate::contain`]).
    let _fatal = FatalOnUnwind {
        shard: info.id,
        shutdown: shutdown.clone(),
    };
    let shard = Shard::new(
        info.id,
        live,
        shutdown.clone(),
        hub,
        access_log.map(|l| l.shard()),
        control,
        spawn_batch_driver,
    );
    shard.publish_metrics();
    monoio::spawn(publish_loop(shard.clone()));
    // The admission (and its driver) is made now when a budget is set.
    let _ = shard.admission();
    for pb in shard.batchers() {
        spawn_batch_driver(shard.clone(), pb);
    }
    tracing::debug!(shard = info.id, driver = info.driver.name(), core = ?info.core, "shard started");
    for p in ports.sockets {
        listen(&shard, p);
    }
    monoio::spawn(port_inbox(shard.clone(), ports.inbox));
    shutdown.wait().await;
    let deadline = Instant::now() + shard.settings.drain_timeout;
    while shard.in_flight.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    shard.publish_metrics();
    if let Some(log) = &shard.access_log {
        log.borrow_mut().flush();
    }
    // Pooled HTTP/2 upstream connections end inside the runtime.
    crate::h2_upstream::close_all(std::time::Duration::from_secs(1)).await;
    if shard.in_flight.get() > 0 {
        tracing::warn!(
            shard = info.id,
            in_flight = shard.in_flight.get(),
            "drain deadline passed; closing"
        );
    }
}

/// Run a batcher's driver on this shard.
fn spawn_batch_driver(shard: Rc<Shard>, pb: Rc<crate::lanes::PolicyBatcher>) {
    monoio::spawn(crate::batch::driver(shard, pb));
}

/// Start accepting on `p` (a port served at start, or bound by a reload).
fn listen(shard: &Rc<Shard>, p: PortSocket) {
    match TcpListener::from_std(p.socket) {
        Ok(l) => {
            monoio::spawn(accept_loop(shard.clone(), l, p.port, p.tls, p.closed));
        }
        Err(e) => {
            tracing::error!(shard = shard.id, port = p.port, error = %e, "cannot register listener")
        }
    }
}

/// Take the sockets of ports a reload bound (every 250 ms, off the request
/// path) until the gateway drains.
async fn port_inbox(shard: Rc<Shard>, inbox: std::sync::mpsc::Receiver<PortSocket>) {
    while !shard.shutdown.is_draining() {
        monoio::time::sleep(FLUSH_EVERY).await;
        while let Ok(p) = inbox.try_recv() {
            if !shard.shutdown.is_draining() {
                listen(&shard, p);
            }
        }
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
        let adm = match shard.control.budget() {
            // Made here when a reload set a budget, so every shard reports.
            Some(_) => shard.admission(),
            None => shard.admission_made(),
        };
        if let Some(a) = adm {
            match shard.control.budget() {
                Some(_) => {
                    if let Some(share) = shard.control.shares.load().get(shard.id) {
                        a.set_share(*share);
                    }
                }
                // The budget was removed by a reload: let every waiter in.
                None => a.set_share(u32::MAX),
            }
        }
        if last_publish.elapsed() >= PUBLISH_EVERY {
            shard.publish_metrics();
            last_publish = Instant::now();
        }
    }
}

/// Whether an accept failed for want of descriptors.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether an accept error is the client's doing or a retry (no pause needed).
fn transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset, Interrupted, WouldBlock};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// Whether `port` serves a `GRPC` listener in the state in force (its
/// connections speak HTTP/2 with prior knowledge).
fn grpc_port(shard: &Shard, port: u16) -> bool {
    let st = shard.state();
    st.listeners_on(port).iter().any(|&l| {
        st.table
            .listeners()
            .get(l)
            .is_some_and(|x| x.protocol == "GRPC")
    })
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    port: u16,
    tls: Option<Arc<rustls::ServerConfig>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut backoff = Backoff::default();
    let mut accept_log = LogLimiter::default();
    let mut cap_log = LogLimiter::default();
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
        if shard.shutdown.is_draining() || closed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        // The socket is readable, so this completes at once (each shard owns its socket).
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff.reset();
                let conns = &shard.conns;
                if conns.open.get() >= conns.cap && conns.idle.shed_oldest(1) == 0 {
                    // At the cap with no idle connection to close: close at once.
                    drop(stream);
                    shard.metrics.borrow_mut().connections_refused_cap += 1;
                    if let Some(held_back) = cap_log.allow(std::time::Instant::now()) {
                        tracing::warn!(
                            shard = shard.id,
                            cap = conns.cap,
                            held_back,
                            "connection cap reached: closing new connections (--max-connections)"
                        );
                    }
                    continue;
                }
                let open = ConnGauge::new(&shard);
                match &tls {
                    None if grpc_port(&shard, port) => {
                        // A GRPC listener's port: HTTP/2 with prior knowledge.
                        monoio::spawn(contained(
                            Task::Connection,
                            crate::h2::serve_connection(shard.clone(), stream, peer, port, open),
                        ));
                    }
                    None => {
                        // HTTP/1.1, or HTTP/2 with prior knowledge ([`crate::h2`]).
                        let shard = shard.clone();
                        monoio::spawn(contained(Task::Connection, async move {
                            let wait = crate::h2::SNIFF_WAIT.min(shard.settings.header_timeout);
                            if crate::h2::sniff_preface(&stream, wait).await {
                                crate::h2::serve_connection(shard, stream, peer, port, open).await
                            } else {
                                serve_connection(shard, stream, peer, port, open).await
                            }
                        }));
                    }
                    Some(config) => {
                        monoio::spawn(contained(
                            Task::Connection,
                            serve_tls(shard.clone(), stream, peer, port, open, config.clone()),
                        ));
                    }
                }
            }
            Err(_)
                if shard.shutdown.is_draining()
                    || closed.load(std::sync::atomic::Ordering::Acquire) =>
            {
                return
            }
            Err(e) if transient(&e) => {
                tracing::debug!(shard = shard.id, error = %e, "accept failed");
            }
            Err(e) => {
                let exhausted = out_of_descriptors(&e);
                let shed = if exhausted {
                    shard.metrics.borrow_mut().connections_refused_emfile += 1;
                    shard.conns.idle.shed_oldest(SHED_ON_EMFILE)
                } else {
                    0
                };
                let pause = backoff.fail();
                if let Some(held_back) = accept_log.allow(std::time::Instant::now()) {
                    tracing::warn!(
                        shard = shard.id,
                        error = %e,
                        pause_ms = pause.as_millis() as u64,
                        idle_closed = shed,
                        open = shard.conns.open.get(),
                        held_back,
                        "accept failed; pausing accepts"
                    );
                }
                monoio::time::sleep(pause).await;
            }
        }
    }
}

/// Complete a TLS handshake (within `--tls-handshake-timeout`), then serve the
/// connection like a plain one. A failed handshake closes the connection.
async fn serve_tls(
    shard: Rc<Shard>,
    stream: monoio::net::TcpStream,
    peer: std::net::SocketAddr,
    port: u16,
    open: ConnGauge,
    config: Arc<rustls::ServerConfig>,
) {
    let _ = stream.set_nodelay(true);
    let timeout = shard.settings.tls_handshake_timeout;
    match crate::tls::accept(stream, config, timeout).await {
        Ok(tls) => {
            shard.metrics.borrow_mut().tls_handshakes[tls.handshake_result()] += 1;
            if tls.alpn() == Some(b"h2") {
                crate::h2::serve_tls(shard, tls, peer, port, open).await
            } else {
                serve_connection(shard, tls, peer, port, open).await
            }
        }
        Err(e) => {
            shard.metrics.borrow_mut().tls_handshakes[e.index()] += 1;
            tracing::debug!(shard = shard.id, %peer, reason = e.reason(), error = ?e, "TLS handshake failed");
        }
    }
}
