//! KV-cache events in vLLM's wire format (`--kv-events-port`), over ZMQ.
//!
//! What vLLM's `ZmqEventPublisher` does, on the simulator's runtime: a PUB socket sends
//! one multipart message per engine step that changed the prefix cache — the topic
//! (`--kv-events-topic`, default empty), the batch's sequence number (8 bytes
//! big-endian, from 0) and the msgpack `KVEventBatch` ([`shardgate_kvevents::wire`]:
//! `BlockStored` / `BlockRemoved`, integer block hashes). The last 10,000 payloads are
//! kept for the optional ROUTER replay socket (`--kv-events-replay-port`): a request
//! `(identity, "", start seq)` is answered with `(seq, payload)` for every kept batch from
//! `start`, then `(-1, "")`.
//!
//! With events on, the prefix cache's block hashes are vLLM's `sha256_cbor` hashes of
//! the token ids ([`shardgate_kvevents::BlockHasher`], `--prefix-hash-seed`, the LoRA
//! adapter name as extra key), so a gateway that tokenizes the prompt the same way
//! ([`crate::tokens`]: one id per word) computes the same keys.

use std::collections::VecDeque;

use bytes::Bytes;
use shardgate_kvevents::{encode_batch, Batch, BlockStored, Event};
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use crate::kv::KvEvent;

/// Batches kept for replay (vLLM's default `buffer_steps`).
pub const REPLAY_BUFFER: usize = 10_000;

/// The vLLM events of one step's cache changes.
pub(crate) fn batch(events: Vec<KvEvent>, block_size: usize) -> Batch {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let events = events
        .into_iter()
        .map(|e| match e {
            KvEvent::Stored { hashes, parent } => Event::Stored(BlockStored {
                block_hashes: hashes,
                parent_block_hash: parent,
                token_ids: Vec::new(),
                block_size: u32::try_from(block_size).unwrap_or(u32::MAX),
                lora_id: None,
                medium: Some("GPU".into()),
                lora_name: None,
            }),
            KvEvent::Removed(h) => Event::Removed {
                block_hashes: vec![h],
                medium: Some("GPU".into()),
            },
        })
        .collect();
    Batch {
        ts,
        events,
        dp_rank: Some(0),
    }
}

/// Publishes batches from `rx` until it closes; serves replays meanwhile.
pub(crate) async fn publish(
    pub_listener: std::net::TcpListener,
    replay_listener: Option<std::net::TcpListener>,
    topic: String,
    mut rx: mpsc::UnboundedReceiver<Batch>,
) {
    let mut publisher = zeromq::PubSocket::new();
    if let Err(e) = publisher.bind_listener(pub_listener).await {
        tracing::error!(error = %e, "kv events: cannot listen");
        return;
    }
    let mut replay = match replay_listener {
        Some(l) => {
            let mut r = zeromq::RouterSocket::new();
            match r.bind_listener(l).await {
                Ok(_) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "kv events: cannot listen for replays");
                    None
                }
            }
        }
        None => None,
    };
    let topic = Bytes::from(topic.into_bytes());
    let mut kept: VecDeque<(i64, Bytes)> = VecDeque::new();
    let mut seq: i64 = 0;
    loop {
        let replay_req = async {
            match replay.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            b = rx.recv() => {
                let Some(b) = b else { return };
                let payload = Bytes::from(encode_batch(&b));
                let frames = vec![topic.clone(), Bytes::copy_from_slice(&seq.to_be_bytes()), payload.clone()];
                if let Ok(m) = ZmqMessage::try_from(frames) {
                    // A PUB socket drops for slow or absent subscribers, as vLLM's does.
                    let _ = publisher.send(m).await;
                }
                if kept.len() == REPLAY_BUFFER {
                    kept.pop_front();
                }
                kept.push_back((seq, payload));
                seq += 1;
            }
            req = replay_req => {
                let Ok(req) = req else { continue };
                let frames = req.into_vec();
                let [id, _, start] = frames.as_slice() else { continue };
                let Ok(start) = shardgate_kvevents::wire::seq_of(start) else { continue };
                let Some(r) = replay.as_mut() else { continue };
                for (s, p) in kept.iter().filter(|(s, _)| *s >= start) {
                    let m = vec![id.clone(), Bytes::new(), Bytes::copy_from_slice(&s.to_be_bytes()), p.clone()];
                    if let Ok(m) = ZmqMessage::try_from(m) {
                        let _ = r.send(m).await;
                    }
                }
                let end = vec![id.clone(), Bytes::new(), Bytes::copy_from_slice(&shardgate_kvevents::wire::END_SEQ.to_be_bytes()), Bytes::new()];
                if let Ok(m) = ZmqMessage::try_from(end) {
                    let _ = r.send(m).await;
                }
            }
        }
    }
}
