//! Precise prefix-cache routing (#18): the KV-events thread, which subscribes to
//! each endpoint's vLLM KV-cache event stream, keeps the exact block index and
//! publishes it to the shards.
//!
//! **Configuration** (`--kv-events SPEC`, repeatable): `ENDPOINT=TARGET
//! [,replay=TARGET][,topic=TOPIC]`, where `ENDPOINT` is an endpoint's
//! `HOST:PORT` as the EndpointSlices list it, or `*` for every endpoint, and a
//! `TARGET` is `HOST:PORT`, `:PORT` (the endpoint's own IP) or `+N` (the
//! endpoint's IP, its port plus N). Pods running vLLM with
//! `--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
//! "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"}'` are
//! `*=:5557,replay=:5558`. The first spec that names the endpoint exactly
//! wins, else `*`. Endpoints a live reload adds are
//! picked up within [`RESCAN`] (500 ms); removed ones are dropped.
//!
//! **Thread.** One OS thread running a current-thread tokio runtime (ZMQ is the
//! pure-Rust `zeromq` crate): one task per endpoint owns its SUB socket
//! (auto-reconnecting; a disconnect marks the stream lost) and, on a sequence
//! gap, asks the replay ROUTER (a DEALER request `["", start]`, answers until
//! sequence −1, 2 s at most) before applying the batch that revealed it; with
//! no replay socket, or a failed replay, the endpoint is resynchronised
//! (cleared). All tasks share one [`ExactIndex`] in a `RefCell` (one thread,
//! never held across an await). Every [`PUBLISH`] (10 ms) the thread expires
//! lost streams' entries (`--kv-events-expiry`, 10 s) and, when anything
//! changed, stores a new [`PreciseSnapshot`] in [`Precise::snapshot`]
//! (`arc-swap`): shards only load it.
//!
//! **Scoring.** For an endpoint whose stream is live, the shard's prefix
//! scorer uses the precise match (leading request blocks the endpoint holds,
//! from [`crate::kv_tokenize`]) instead of the approximate index; others, and
//! requests whose model has no tokenizer, use the approximate index.

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::StreamExt;
use shardgate_kvevents::wire::{decode_batch, message, seq_of, END_SEQ};
use shardgate_kvevents::{ExactIndex, PreciseSnapshot, SeqVerdict};
use zeromq::{Socket, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use crate::kv_tokenize::Tokenizers;

/// How often the endpoint list is checked for added or removed endpoints.
pub const RESCAN: Duration = Duration::from_millis(500);
/// How often a changed index is published to the shards.
pub const PUBLISH: Duration = Duration::from_millis(10);
/// Longest a replay may take.
pub const REPLAY_TIMEOUT: Duration = Duration::from_secs(2);

/// Where an event socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A fixed `HOST:PORT`.
    Addr(String),
    /// The endpoint's host, this port.
    Port(u16),
    /// The endpoint's host, its port plus this.
    Offset(i32),
}

impl Target {
    fn parse(s: &str) -> Result<Self, String> {
        if let Some(n) = s.strip_prefix('+') {
            return n
                .parse::<i32>()
                .map(Target::Offset)
                .map_err(|_| format!("{s:?}: +N needs an integer offset"));
        }
        if let Some(p) = s.strip_prefix(':') {
            return p
                .parse::<u16>()
                .map(Target::Port)
                .map_err(|_| format!("{s:?}: :PORT needs a port number"));
        }
        match s.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                Ok(Target::Addr(s.to_owned()))
            }
            _ => Err(format!("{s:?}: expected HOST:PORT, :PORT or +N")),
        }
    }

    fn resolve(&self, ep: SocketAddr) -> Option<SocketAddr> {
        match self {
            Target::Addr(a) => a.to_socket_addrs().ok()?.next(),
            Target::Port(p) => Some(SocketAddr::new(ep.ip(), *p)),
            Target::Offset(n) => {
                let p = u16::try_from(i32::from(ep.port()).checked_add(*n)?).ok()?;
                Some(SocketAddr::new(ep.ip(), p))
            }
        }
    }
}

/// One `--kv-events` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpec {
    endpoint: Option<SocketAddr>,
    publisher: Target,
    replay: Option<Target>,
    topic: String,
}

impl EventSpec {
    /// Parses `ENDPOINT=TARGET[,replay=TARGET][,topic=TOPIC]` (see the module
    /// docs); the error names the flag and the part at fault.
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = |why: String| format!("--kv-events {s:?}: {why}");
        let (ep, rest) = s
            .split_once('=')
            .ok_or_else(|| err("expected ENDPOINT=TARGET[,replay=TARGET][,topic=TOPIC]".into()))?;
        let endpoint = match ep {
            "*" => None,
            a => Some(
                a.parse::<SocketAddr>()
                    .map_err(|_| err(format!("endpoint {a:?} is not * or IP:PORT")))?,
            ),
        };
        let mut parts = rest.split(',');
        let publisher = Target::parse(parts.next().unwrap_or_default()).map_err(err)?;
        let mut replay = None;
        let mut topic = String::new();
        for p in parts {
            match p.split_once('=') {
                Some(("replay", t)) => replay = Some(Target::parse(t).map_err(err)?),
                Some(("topic", t)) => topic = t.to_owned(),
                _ => return Err(err(format!("{p:?}: expected replay=TARGET or topic=TOPIC"))),
            }
        }
        Ok(Self {
            endpoint,
            publisher,
            replay,
            topic,
        })
    }
}

/// The resolved sockets of one endpoint's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAddr {
    /// The PUB socket.
    pub publisher: SocketAddr,
    /// The replay ROUTER socket.
    pub replay: Option<SocketAddr>,
    /// The subscribed topic (prefix).
    pub topic: String,
}

/// Every `--kv-events` spec, and the thread's settings.
#[derive(Debug, Clone, Default)]
pub struct KvEventsConfig {
    /// The specs, in flag order.
    pub specs: Vec<EventSpec>,
    /// How long a lost stream's entries are kept.
    pub expiry: Duration,
}

impl KvEventsConfig {
    /// The stream of the endpoint at `ep`: the spec naming it, else `*`.
    pub fn stream(&self, ep: SocketAddr) -> Option<StreamAddr> {
        let spec = self
            .specs
            .iter()
            .find(|s| s.endpoint == Some(ep))
            .or_else(|| self.specs.iter().find(|s| s.endpoint.is_none()))?;
        Some(StreamAddr {
            publisher: spec.publisher.resolve(ep)?,
            replay: spec.replay.as_ref().and_then(|r| r.resolve(ep)),
            topic: spec.topic.clone(),
        })
    }

    /// Whether any stream is configured.
    pub fn enabled(&self) -> bool {
        !self.specs.is_empty()
    }
}

/// What the KV-events thread shares with shards and the admin thread.
#[derive(Debug)]
pub struct Precise {
    /// The exact index's latest snapshot.
    pub snapshot: ArcSwap<PreciseSnapshot>,
    /// Tokenizers by model, and the hashing settings.
    pub tokenizers: Arc<Tokenizers>,
    /// The kv-tokenize threads large prompts are keyed on.
    pub offload: Option<crate::kv_offload::Offload>,
    /// Per endpoint id: the stream it subscribes to (`/debug/endpoints`).
    pub streams: ArcSwap<Vec<Option<StreamAddr>>>,
}

impl Default for Precise {
    fn default() -> Self {
        Self::new(Tokenizers::default())
    }
}

impl Precise {
    /// Nothing live yet.
    pub fn new(tokenizers: Tokenizers) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(PreciseSnapshot::default()),
            tokenizers: Arc::new(tokenizers),
            offload: None,
            streams: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// Key large prompts on worker threads ([`crate::kv_offload`]).
    pub fn with_offload(
        mut self,
        config: crate::kv_offload::OffloadConfig,
    ) -> Result<Self, String> {
        self.offload = crate::kv_offload::Offload::start(self.tokenizers.clone(), config)?;
        Ok(self)
    }

    /// The block keys of `body` for `model` (`lora`: `model` is a LoRA
    /// adapter, whose blocks hash with its name): inline for a short body,
    /// on a kv-tokenize thread for a long one; `None` scores the request
    /// approximately.
    pub async fn keys(&self, model: &str, lora: bool, body: &[u8]) -> Option<Vec<u64>> {
        match &self.offload {
            Some(o) if !o.inline(body.len()) => o.keys(model, lora, body).await,
            _ => self.tokenizers.keys(model, lora.then_some(model), body),
        }
    }

    /// Whether requests can be scored precisely at all (a tokenizer and a live
    /// stream).
    pub fn active(&self) -> bool {
        !self.tokenizers.is_empty() && self.snapshot.load().any_live()
    }

    /// `/debug/endpoints`' `kv_events` of endpoint `id` (null without a stream).
    pub fn status(&self, id: usize) -> serde_json::Value {
        let streams = self.streams.load();
        let Some(Some(addr)) = streams.get(id) else {
            return serde_json::Value::Null;
        };
        let snap = self.snapshot.load();
        let e = snap.endpoints.get(id).and_then(|e| e.as_deref());
        let st = e.map(|e| e.stats).unwrap_or_default();
        serde_json::json!({
            "publisher": addr.publisher.to_string(),
            "replay": addr.replay.map(|r| r.to_string()),
            "topic": addr.topic,
            "live": e.is_some_and(|e| e.live),
            "blocks": e.map_or(0, |e| e.blocks.len()),
            "batches": st.batches,
            "events": st.events,
            "last_seq": st.last_seq,
            "gaps": st.gaps,
            "replays": st.replays,
            "resyncs": st.resyncs,
            "restarts": st.restarts,
            "malformed": st.malformed,
        })
    }
}

/// Starts the thread. `endpoints` lists the endpoint addresses in force, by
/// id (`None`: retired), and is called every [`RESCAN`]; the thread ends when
/// `stop` returns true.
pub fn spawn(
    precise: Arc<Precise>,
    config: KvEventsConfig,
    endpoints: impl Fn() -> Vec<Option<SocketAddr>> + Send + 'static,
    stop: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kv-events".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "kv events: no runtime");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(precise, config, endpoints, stop));
        })
}

type Shared = Rc<RefCell<ExactIndex>>;

async fn run(
    precise: Arc<Precise>,
    config: KvEventsConfig,
    endpoints: impl Fn() -> Vec<Option<SocketAddr>>,
    stop: impl Fn() -> bool,
) {
    let index: Shared = Rc::new(RefCell::new(ExactIndex::new(config.expiry)));
    let mut tasks: Vec<Option<(StreamAddr, tokio::task::JoinHandle<()>)>> = Vec::new();
    let mut last_scan: Option<Instant> = None;
    let mut tick = tokio::time::interval(PUBLISH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if stop() {
            for (_, t) in tasks.iter().flatten() {
                t.abort();
            }
            return;
        }
        let now = Instant::now();
        if last_scan.is_none_or(|t| now.duration_since(t) >= RESCAN) {
            last_scan = Some(now);
            let eps = endpoints();
            let wanted: Vec<Option<StreamAddr>> = eps
                .iter()
                .map(|a| a.and_then(|a| config.stream(a)))
                .collect();
            if tasks.len() < wanted.len() {
                tasks.resize_with(wanted.len(), || None);
            }
            for (id, slot) in tasks.iter_mut().enumerate() {
                let want = wanted.get(id).cloned().flatten();
                if slot.as_ref().map(|(a, _)| a) == want.as_ref() {
                    continue;
                }
                if let Some((_, t)) = slot.take() {
                    t.abort();
                    index.borrow_mut().remove(id);
                }
                if let Some(addr) = want {
                    index.borrow_mut().add(id);
                    let t = tokio::task::spawn_local(subscribe(id, addr.clone(), index.clone()));
                    *slot = Some((addr, t));
                }
            }
            precise.streams.store(Arc::new(wanted));
        }
        let mut ix = index.borrow_mut();
        ix.expire(now);
        if ix.dirty() {
            precise.snapshot.store(Arc::new(ix.snapshot()));
        }
    }
}

/// One endpoint's subscription, for as long as it is configured.
async fn subscribe(id: usize, addr: StreamAddr, index: Shared) {
    loop {
        let mut opts = zeromq::SocketOptions::default();
        opts.connect_timeout(Duration::from_secs(1));
        let mut sub = zeromq::SubSocket::with_options(opts);
        let mut monitor = sub.monitor();
        let endpoint = format!("tcp://{}", addr.publisher);
        if sub.connect(&endpoint).await.is_err() || sub.subscribe(&addr.topic).await.is_err() {
            index.borrow_mut().lose(id, Instant::now());
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        index.borrow_mut().connected(id);
        tracing::info!(endpoint = id, publisher = %addr.publisher, "kv events: subscribed");
        loop {
            let next = tokio::select! {
                m = sub.recv() => m.ok(),
                ev = monitor.next() => match ev {
                    Some(SocketEvent::Disconnected(_)) | None => None,
                    Some(SocketEvent::Connected(..)) => {
                        index.borrow_mut().connected(id);
                        continue;
                    }
                    Some(_) => continue,
                },
            };
            let Some(m) = next else {
                index.borrow_mut().lose(id, Instant::now());
                break;
            };
            on_message(id, &addr, &index, m).await;
        }
        // Reconnect with a fresh socket (a new subscription position).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn on_message(id: usize, addr: &StreamAddr, index: &Shared, m: ZmqMessage) {
    let frames: Vec<Bytes> = m.into_vec();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_ref()).collect();
    let Ok(msg) = message(&refs) else {
        index.borrow_mut().malformed(id);
        return;
    };
    let Ok(batch) = decode_batch(msg.payload) else {
        index.borrow_mut().malformed(id);
        return;
    };
    let verdict = index.borrow_mut().check(id, msg.seq);
    match verdict {
        SeqVerdict::Apply => index.borrow_mut().apply(id, msg.seq, &batch),
        SeqVerdict::Duplicate => {}
        SeqVerdict::Restarted => {
            let mut ix = index.borrow_mut();
            ix.resync(id, true);
            ix.apply(id, msg.seq, &batch);
        }
        SeqVerdict::Gap { from } => {
            let replayed = match addr.replay {
                Some(r) => replay(id, r, from, msg.seq, index).await,
                None => false,
            };
            let mut ix = index.borrow_mut();
            if replayed && ix.check(id, msg.seq) == SeqVerdict::Apply {
                ix.replayed(id);
            } else {
                ix.resync(id, false);
            }
            if ix.check(id, msg.seq) != SeqVerdict::Duplicate {
                ix.apply(id, msg.seq, &batch);
            }
        }
    }
}

/// Asks the replay socket for batches from `from` and applies those before
/// `until`, in order; true when it answered in time.
async fn replay(id: usize, at: SocketAddr, from: i64, until: i64, index: &Shared) -> bool {
    let work = async {
        let mut dealer = zeromq::DealerSocket::new();
        dealer.connect(&format!("tcp://{at}")).await.ok()?;
        let req = vec![Bytes::new(), Bytes::copy_from_slice(&from.to_be_bytes())];
        dealer.send(ZmqMessage::try_from(req).ok()?).await.ok()?;
        loop {
            let frames = dealer.recv().await.ok()?.into_vec();
            // ["", seq, payload] (the ROUTER's empty delimiter kept).
            let (seq, payload) = match frames.as_slice() {
                [_, s, p] | [s, p] => (seq_of(s).ok()?, p.clone()),
                _ => return None,
            };
            if seq == END_SEQ {
                return Some(());
            }
            if seq >= until {
                continue;
            }
            let Ok(batch) = decode_batch(&payload) else {
                index.borrow_mut().malformed(id);
                continue;
            };
            let mut ix = index.borrow_mut();
            match ix.check(id, seq) {
                SeqVerdict::Apply => ix.apply(id, seq, &batch),
                SeqVerdict::Gap { .. } => {
                    // The replay buffer starts later than asked: what it holds is
                    // all there is.
                    ix.resync(id, false);
                    ix.apply(id, seq, &batch);
                }
                _ => {}
            }
        }
    };
    matches!(
        tokio::time::timeout(REPLAY_TIMEOUT, work).await,
        Ok(Some(()))
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn specs_parse_and_resolve() {
        let ep: SocketAddr = "10.0.0.7:8000".parse().unwrap();
        let other: SocketAddr = "10.0.0.8:8000".parse().unwrap();
        let cfg = KvEventsConfig {
            specs: vec![
                EventSpec::parse("10.0.0.7:8000=127.0.0.1:9000,replay=+2,topic=kv").unwrap(),
                EventSpec::parse("*=:5557,replay=:5558").unwrap(),
            ],
            expiry: Duration::from_secs(10),
        };
        let s = cfg.stream(ep).unwrap();
        assert_eq!(s.publisher, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(s.replay, Some("10.0.0.7:8002".parse().unwrap()));
        assert_eq!(s.topic, "kv");
        let s = cfg.stream(other).unwrap();
        assert_eq!(s.publisher, "10.0.0.8:5557".parse().unwrap());
        assert_eq!(s.replay, Some("10.0.0.8:5558".parse().unwrap()));
        assert_eq!(s.topic, "");
        let none = KvEventsConfig::default();
        assert!(!none.enabled() && none.stream(ep).is_none());
        // An offset out of the port range resolves to nothing.
        let cfg = KvEventsConfig {
            specs: vec![EventSpec::parse("*=+60000").unwrap()],
            expiry: Duration::ZERO,
        };
        assert!(cfg.stream(ep).is_none());
    }

    #[test]
    fn bad_specs_name_the_flag_and_the_part() {
        for (spec, why) in [
            ("10.0.0.7:8000", "expected ENDPOINT=TARGET"),
            ("host=:5557", "endpoint \"host\" is not * or IP:PORT"),
            ("*=5557", "expected HOST:PORT, :PORT or +N"),
            ("*=:x", ":PORT needs a port number"),
            ("*=+x", "+N needs an integer offset"),
            ("*=:5557,replay", "expected replay=TARGET or topic=TOPIC"),
            ("*=:5557,replay=nope", "expected HOST:PORT, :PORT or +N"),
        ] {
            let e = EventSpec::parse(spec).unwrap_err();
            assert!(e.starts_with("--kv-events "), "{e}");
            assert!(e.contains(why), "{spec}: {e}");
        }
    }
}
