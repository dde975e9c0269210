//! vLLM's KV-event wire format, decoded and encoded without I/O.
//!
//! **Frames.** vLLM's `ZmqEventPublisher` sends each batch as a three-frame
//! ZMQ multipart message on a PUB socket: the topic (UTF-8, may be empty), the
//! sequence number (8 bytes, big-endian, from 0 per publisher start) and the
//! msgpack payload. Its replay socket (ROUTER) answers a request carrying a
//! start sequence (8 bytes big-endian) with `(seq, payload)` pairs, ending with
//! sequence −1 and an empty payload.
//!
//! **Payload.** A msgspec-encoded `KVEventBatch`. Releases up to v0.10 encode
//! structs `array_like` (`[ts, [events…], dp_rank?]`, an event
//! `["BlockStored", hashes, parent, token_ids, block_size, lora_id, medium?,
//! …]`); later ones encode maps (`{"ts": …, "events": […]}`, an event
//! `{"type": "BlockStored", "block_hashes": …}`). Both are read. A block hash
//! is an integer (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`, and old releases,
//! possibly negative) or the 32 raw hash bytes; either way it becomes the
//! [`BlockKey`] of the hash's last 8 bytes (what vLLM's int conversion
//! keeps), so both spellings name the same block.
//!
//! **Limits.** A payload over [`MAX_PAYLOAD`] (16 MiB) or nested deeper than
//! msgpack's decoder allows is rejected; every field is type-checked and a
//! batch with one malformed event is rejected whole ([`WireError`] says
//! which event and field). Decoding allocates the event vectors only.

use rmpv::Value;

/// A block, as the index keys it: the low 64 bits of vLLM's block hash.
pub type BlockKey = u64;

/// Largest payload accepted, in bytes.
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Sequence number vLLM's replay socket ends a replay with.
pub const END_SEQ: i64 = -1;

/// Why a message or payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not three frames (topic, sequence, payload).
    #[error("expected 3 frames (topic, sequence, payload), got {0}")]
    Frames(usize),
    /// The sequence frame is not 8 bytes.
    #[error("sequence frame is {0} bytes, not 8")]
    SeqLen(usize),
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes exceeds the 16 MiB limit")]
    TooLarge(usize),
    /// The payload is not msgpack.
    #[error("payload is not msgpack: {0}")]
    Msgpack(String),
    /// Bytes left after the batch.
    #[error("{0} trailing bytes after the batch")]
    Trailing(usize),
    /// A field is missing or has the wrong type.
    #[error("{what}: {why}")]
    Field {
        /// Where (e.g. `events[2].block_hashes`).
        what: String,
        /// What was wrong.
        why: &'static str,
    },
}

fn field(what: impl Into<String>, why: &'static str) -> WireError {
    WireError::Field {
        what: what.into(),
        why,
    }
}

/// One KV-cache event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Blocks became cached (prefix-cache hits possible from now on).
    Stored(BlockStored),
    /// Blocks were evicted.
    Removed {
        /// The evicted blocks.
        block_hashes: Vec<BlockKey>,
        /// Storage tier (`"GPU"`, `"CPU"`, …), when the server says.
        medium: Option<String>,
    },
    /// The whole cache was reset.
    AllCleared,
}

/// The fields of a `BlockStored` event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockStored {
    /// The stored blocks, in chain order.
    pub block_hashes: Vec<BlockKey>,
    /// The block before the first one, `None` for a chain's first block.
    pub parent_block_hash: Option<BlockKey>,
    /// Token ids of the stored blocks (`block_size` per block).
    pub token_ids: Vec<u32>,
    /// Tokens per block.
    pub block_size: u32,
    /// LoRA adapter id (deprecated by vLLM in favour of `lora_name`).
    pub lora_id: Option<i64>,
    /// Storage tier (`"GPU"`, `"CPU"`, …), when the server says.
    pub medium: Option<String>,
    /// LoRA adapter name, when the server says.
    pub lora_name: Option<String>,
}

/// A decoded `KVEventBatch`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// Publisher timestamp (seconds since the epoch).
    pub ts: f64,
    /// The events, in order.
    pub events: Vec<Event>,
    /// Data-parallel rank, when given.
    pub dp_rank: Option<i64>,
}

/// One multipart message: topic, sequence, payload (borrowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The PUB topic.
    pub topic: &'a [u8],
    /// The batch's sequence number.
    pub seq: i64,
    /// The msgpack payload.
    pub payload: &'a [u8],
}

/// Splits a PUB message's frames (topic, 8-byte big-endian sequence, payload).
pub fn message<'a>(frames: &[&'a [u8]]) -> Result<Message<'a>, WireError> {
    let [topic, seq, payload] = frames else {
        return Err(WireError::Frames(frames.len()));
    };
    Ok(Message {
        topic,
        seq: seq_of(seq)?,
        payload,
    })
}

/// Reads an 8-byte big-endian sequence frame.
pub fn seq_of(frame: &[u8]) -> Result<i64, WireError> {
    let b: [u8; 8] = frame
        .try_into()
        .map_err(|_| WireError::SeqLen(frame.len()))?;
    Ok(i64::from_be_bytes(b))
}

/// Decodes a `KVEventBatch` payload (either struct encoding).
pub fn decode_batch(payload: &[u8]) -> Result<Batch, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge(payload.len()));
    }
    let mut rd = payload;
    let v = rmpv::decode::read_value(&mut rd).map_err(|e| WireError::Msgpack(e.to_string()))?;
    if !rd.is_empty() {
        return Err(WireError::Trailing(rd.len()));
    }
    let (ts, events, dp) = match &v {
        Value::Array(a) => (a.first(), a.get(1), a.get(2)),
        Value::Map(m) => (get(m, "ts"), get(m, "events"), get(m, "data_parallel_rank")),
        _ => return Err(field("batch", "not an array or a map")),
    };
    let ts = match ts {
        Some(Value::F64(f)) => *f,
        Some(Value::F32(f)) => f64::from(*f),
        Some(v) if v.as_i64().is_some() => v.as_i64().unwrap_or_default() as f64,
        _ => return Err(field("ts", "missing or not a number")),
    };
    let Some(Value::Array(list)) = events else {
        return Err(field("events", "missing or not an array"));
    };
    let dp_rank = match dp {
        None | Some(Value::Nil) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| field("data_parallel_rank", "not an integer"))?,
        ),
    };
    let events = list
        .iter()
        .enumerate()
        .map(|(i, e)| event(i, e))
        .collect::<Result<_, _>>()?;
    Ok(Batch {
        ts,
        events,
        dp_rank,
    })
}

fn get<'v>(m: &'v [(Value, Value)], key: &str) -> Option<&'v Value> {
    m.iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// An event's fields by name, whichever encoding.
struct Fields<'v> {
    i: usize,
    array: Option<&'v [Value]>,
    map: Option<&'v [(Value, Value)]>,
}

impl<'v> Fields<'v> {
    /// Field `name`, at `pos` in the array form (after the tag).
    fn get(&self, pos: usize, name: &str) -> Option<&'v Value> {
        let v = match (self.array, self.map) {
            (Some(a), _) => a.get(pos + 1),
            (_, Some(m)) => get(m, name),
            _ => None,
        };
        v.filter(|v| !v.is_nil())
    }

    fn what(&self, name: &str) -> String {
        format!("events[{}].{name}", self.i)
    }

    fn hashes(&self, pos: usize, name: &str) -> Result<Vec<BlockKey>, WireError> {
        let Some(Value::Array(a)) = self.get(pos, name) else {
            return Err(field(self.what(name), "missing or not an array"));
        };
        a.iter()
            .map(|h| block_key(h).ok_or_else(|| field(self.what(name), "not a block hash")))
            .collect()
    }

    fn opt_str(&self, pos: usize, name: &str) -> Result<Option<String>, WireError> {
        match self.get(pos, name) {
            None => Ok(None),
            Some(Value::String(s)) => s
                .as_str()
                .map(|s| Some(s.to_owned()))
                .ok_or_else(|| field(self.what(name), "not UTF-8")),
            Some(_) => Err(field(self.what(name), "not a string")),
        }
    }
}

/// A block hash value: an integer (two's complement for negatives, as old
/// vLLM's Python `hash()` values) or bytes (the last 8, big-endian).
pub fn block_key(v: &Value) -> Option<BlockKey> {
    match v {
        Value::Integer(i) => i.as_u64().or_else(|| i.as_i64().map(|n| n as u64)),
        Value::Binary(b) if !b.is_empty() => Some(key_of_bytes(b)),
        _ => None,
    }
}

/// The [`BlockKey`] of a hash's bytes: the last 8, big-endian (shorter ones
/// zero-extended on the left).
pub fn key_of_bytes(b: &[u8]) -> BlockKey {
    let tail = b.get(b.len().saturating_sub(8)..).unwrap_or(b);
    tail.iter().fold(0u64, |k, x| (k << 8) | u64::from(*x))
}

fn event(i: usize, v: &Value) -> Result<Event, WireError> {
    let (tag, f) = match v {
        Value::Array(a) => (
            a.first().and_then(Value::as_str),
            Fields {
                i,
                array: Some(a),
                map: None,
            },
        ),
        Value::Map(m) => (
            get(m, "type").and_then(Value::as_str),
            Fields {
                i,
                array: None,
                map: Some(m),
            },
        ),
        _ => return Err(field(format!("events[{i}]"), "not an array or a map")),
    };
    match tag {
        Some("BlockStored") => {
            let block_hashes = f.hashes(0, "block_hashes")?;
            let parent_block_hash = match f.get(1, "parent_block_hash") {
                None => None,
                Some(p) => Some(
                    block_key(p)
                        .ok_or_else(|| field(f.what("parent_block_hash"), "not a block hash"))?,
                ),
            };
            let Some(Value::Array(toks)) = f.get(2, "token_ids") else {
                return Err(field(f.what("token_ids"), "missing or not an array"));
            };
            let token_ids = toks
                .iter()
                .map(|t| {
                    t.as_u64()
                        .and_then(|t| u32::try_from(t).ok())
                        .ok_or_else(|| field(f.what("token_ids"), "not a token id"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let block_size = f
                .get(3, "block_size")
                .and_then(Value::as_u64)
                .and_then(|b| u32::try_from(b).ok())
                .filter(|b| *b > 0)
                .ok_or_else(|| field(f.what("block_size"), "missing or not a positive integer"))?;
            let lora_id = match f.get(4, "lora_id") {
                None => None,
                Some(v) => Some(
                    v.as_i64()
                        .ok_or_else(|| field(f.what("lora_id"), "not an integer"))?,
                ),
            };
            let medium = f.opt_str(5, "medium")?;
            let lora_name = f.opt_str(6, "lora_name")?;
            Ok(Event::Stored(BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
                medium,
                lora_name,
            }))
        }
        Some("BlockRemoved") => Ok(Event::Removed {
            block_hashes: f.hashes(0, "block_hashes")?,
            medium: f.opt_str(1, "medium")?,
        }),
        Some("AllBlocksCleared") => Ok(Event::AllCleared),
        Some(_) => Err(field(format!("events[{i}]"), "unknown event type")),
        None => Err(field(format!("events[{i}]"), "no type tag")),
    }
}

/// Encodes a batch in the array-like form (what the simulator publishes;
/// block hashes as integers, i.e. `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`).
pub fn encode_batch(batch: &Batch) -> Vec<u8> {
    let opt_str = |s: &Option<String>| s.as_deref().map_or(Value::Nil, Value::from);
    let hashes = |h: &[BlockKey]| Value::Array(h.iter().map(|k| Value::from(*k)).collect());
    let events = batch
        .events
        .iter()
        .map(|e| match e {
            Event::Stored(s) => Value::Array(vec![
                Value::from("BlockStored"),
                hashes(&s.block_hashes),
                s.parent_block_hash.map_or(Value::Nil, Value::from),
                Value::Array(s.token_ids.iter().map(|t| Value::from(*t)).collect()),
                Value::from(s.block_size),
                s.lora_id.map_or(Value::Nil, Value::from),
                opt_str(&s.medium),
                opt_str(&s.lora_name),
            ]),
            Event::Removed {
                block_hashes,
                medium,
            } => Value::Array(vec![
                Value::from("BlockRemoved"),
                hashes(block_hashes),
                opt_str(medium),
            ]),
            Event::AllCleared => Value::Array(vec![Value::from("AllBlocksCleared")]),
        })
        .collect();
    let mut top = vec![Value::F64(batch.ts), Value::Array(events)];
    if let Some(dp) = batch.dp_rank {
        top.push(Value::from(dp));
    }
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &Value::Array(top));
    out
}
