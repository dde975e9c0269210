//! Byte-exact batches and hash vectors (from `testdata/vectors.py`: Python's
//! `cbor2` + `hashlib`, the reference `msgpack` encoder), gap handling and
//! the index.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::hash::{none_hash, BlockHasher};
use crate::index::{ExactIndex, SeqVerdict, StreamTracker};
use crate::wire::{decode_batch, encode_batch, message, Batch, BlockStored, Event, WireError};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const ARRAY_BATCH: &str = "93cb3ff80000000000009397ab426c6f636b53746f726564920102c0dc0020000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f10c0a347505593ac426c6f636b52656d6f7665649102a347505591b0416c6c426c6f636b73436c656172656400";
const MAP_BATCH: &str = "82a27473cb4000000000000000a66576656e74739288a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368657391c420cd7c51bc5a8fc8643f383a2b9e01522fba7473c669e9270c7b0bf7bf7fd01682b1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f696473dc00100102030405060708090a0b0c0d0e0f10aa626c6f636b5f73697a6510a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c083a474797065ac426c6f636b52656d6f766564ac626c6f636b5f68617368657391fba66d656469756dc0";

#[test]
fn none_hash_matches_vllm() {
    let h = none_hash("vllm-none-hash");
    assert_eq!(
        h.to_vec(),
        unhex("9bd96a485ad84efdafb72ee48a1d7a69bcead0f8f0433173941b276b9581eef0")
    );
}

#[test]
fn block_hashes_match_vllm_sha256_cbor() {
    let mut hasher = BlockHasher::new(16, "vllm-none-hash");
    let toks: Vec<u32> = (1..=33).collect();
    let mut keys = Vec::new();
    // 33 tokens: two whole blocks, the 33rd token is not hashed.
    hasher.keys(&toks, None, 256, &mut keys);
    assert_eq!(keys, vec![0x7b0b_f7bf_7fd0_1682, 0x0b36_8b33_d87b_f3bf]);
    let b0 = hasher.block(None, &toks[..16], None);
    assert_eq!(
        b0.to_vec(),
        unhex("cd7c51bc5a8fc8643f383a2b9e01522fba7473c669e9270c7b0bf7bf7fd01682")
    );
    // Token ids above 65,535 (4-byte CBOR ints) and a LoRA extra key.
    let big: Vec<u32> = (0..16).map(|i| 100_000 + i * 1000).collect();
    keys.clear();
    hasher.keys(&big, Some("my-lora"), 256, &mut keys);
    assert_eq!(keys, vec![0xc68a_3748_bfc9_838c]);
    // PYTHONHASHSEED=42.
    let mut seeded = BlockHasher::new(16, "42");
    keys.clear();
    seeded.keys(&[5; 16], None, 256, &mut keys);
    assert_eq!(keys, vec![0x9658_179f_9352_c373]);
    // max_blocks caps the work.
    keys.clear();
    hasher.keys(&toks, None, 1, &mut keys);
    assert_eq!(keys.len(), 1);
}

#[test]
fn decodes_the_array_like_encoding() {
    let b = decode_batch(&unhex(ARRAY_BATCH)).unwrap();
    assert_eq!(b.ts, 1.5);
    assert_eq!(b.dp_rank, Some(0));
    assert_eq!(
        b.events,
        vec![
            Event::Stored(BlockStored {
                block_hashes: vec![1, 2],
                parent_block_hash: None,
                token_ids: (0..32).collect(),
                block_size: 16,
                lora_id: None,
                medium: Some("GPU".into()),
                lora_name: None,
            }),
            Event::Removed {
                block_hashes: vec![2],
                medium: Some("GPU".into()),
            },
            Event::AllCleared,
        ]
    );
}

#[test]
fn decodes_the_map_encoding_with_byte_and_negative_hashes() {
    let b = decode_batch(&unhex(MAP_BATCH)).unwrap();
    assert_eq!(b.ts, 2.0);
    let Event::Stored(s) = &b.events[0] else {
        panic!("{:?}", b.events)
    };
    // 32 hash bytes key as their last 8, the same as the int form.
    assert_eq!(s.block_hashes, vec![0x7b0b_f7bf_7fd0_1682]);
    assert_eq!(s.token_ids, (1..=16).collect::<Vec<u32>>());
    assert_eq!(
        b.events[1],
        Event::Removed {
            block_hashes: vec![(-5i64) as u64],
            medium: None
        }
    );
}

#[test]
fn encode_round_trips_and_matches_the_reference_encoder() {
    let b = decode_batch(&unhex(ARRAY_BATCH)).unwrap();
    // lora_name (None) is written as nil: one byte more than the reference,
    // which stops at medium; both decode the same.
    let again = decode_batch(&encode_batch(&b)).unwrap();
    assert_eq!(again, b);
}

#[test]
fn rejects_malformed_input() {
    assert_eq!(message(&[b"t", b"1234"]), Err(WireError::Frames(2)));
    assert_eq!(
        message(&[b"t".as_slice(), b"1234".as_slice(), b"".as_slice()]),
        Err(WireError::SeqLen(4))
    );
    let seven = 7u64.to_be_bytes();
    let m = message(&[b"kv".as_slice(), &seven, b"\x90"]).unwrap();
    assert_eq!((m.topic, m.seq), (b"kv".as_slice(), 7));
    // Not msgpack / truncated / trailing bytes / wrong shapes.
    assert!(matches!(decode_batch(b""), Err(WireError::Msgpack(_))));
    let full = unhex(ARRAY_BATCH);
    for cut in [1, 10, full.len() / 2, full.len() - 1] {
        assert!(decode_batch(&full[..cut]).is_err(), "cut at {cut}");
    }
    let mut trailing = full.clone();
    trailing.push(0);
    assert_eq!(decode_batch(&trailing), Err(WireError::Trailing(1)));
    let bad = [
        // [1.0, [["Nope"]]]
        "92cb3ff000000000000091".to_owned() + "91a44e6f7065",
        // [1.0, [[1]]]: no tag
        "92cb3ff0000000000000919101".to_owned(),
        // [1.0, [["BlockStored", "x", nil, [], 16, nil]]]: hashes not an array
        "92cb3ff00000000000009196ab426c6f636b53746f726564a178c09010c0".to_owned(),
        // block_size 0
        "92cb3ff00000000000009196ab426c6f636b53746f72656490c09000c0".to_owned(),
        // "ts" missing: [nil, []]
        "92c090".to_owned(),
        // a string
        "a161".to_owned(),
    ];
    for b in &bad {
        assert!(decode_batch(&unhex(b)).is_err(), "{b}");
    }
    let e = decode_batch(&unhex(&bad[2])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "events[0].block_hashes: missing or not an array"
    );
}

#[test]
fn tracker_detects_gaps_duplicates_and_restarts() {
    let mut t = StreamTracker::default();
    assert_eq!(t.check(0), SeqVerdict::Apply);
    assert_eq!(t.check(5), SeqVerdict::Gap { from: 0 });
    t.applied(0);
    assert_eq!(t.check(1), SeqVerdict::Apply);
    t.applied(1);
    assert_eq!(t.check(1), SeqVerdict::Duplicate);
    assert_eq!(t.check(4), SeqVerdict::Gap { from: 2 });
    assert_eq!(t.check(0), SeqVerdict::Restarted);
}

fn stored(keys: &[u64]) -> Batch {
    Batch {
        ts: 0.0,
        events: vec![Event::Stored(BlockStored {
            block_hashes: keys.to_vec(),
            block_size: 16,
            ..BlockStored::default()
        })],
        dp_rank: None,
    }
}

#[test]
fn index_applies_events_and_snapshots_share_unchanged_endpoints() {
    let now = Instant::now();
    let mut ix = ExactIndex::new(Duration::from_secs(10));
    ix.connected(0);
    ix.connected(1);
    assert!(!ix.is_live(0), "no batch yet");
    ix.apply(0, 0, &stored(&[10, 11, 12]));
    ix.apply(1, 0, &stored(&[10]));
    let s1 = ix.snapshot();
    assert!(s1.is_live(0) && s1.is_live(1));
    assert_eq!(s1.match_len(0, &[10, 11, 12, 13]), 3);
    assert_eq!(s1.match_len(1, &[10, 11, 12, 13]), 1);
    assert_eq!(s1.match_len(2, &[10]), 0);
    // Remove a middle block: the run stops there.
    let removed = Batch {
        ts: 0.0,
        events: vec![Event::Removed {
            block_hashes: vec![11],
            medium: None,
        }],
        dp_rank: None,
    };
    assert_eq!(ix.check(0, 1), SeqVerdict::Apply);
    ix.apply(0, 1, &removed);
    let s2 = ix.snapshot();
    assert_eq!(s2.match_len(0, &[10, 11, 12]), 1);
    // Endpoint 1 did not change: the same Arc.
    assert!(std::sync::Arc::ptr_eq(
        s1.endpoints[1].as_ref().unwrap(),
        s2.endpoints[1].as_ref().unwrap()
    ));
    // A CPU-tier removal leaves a GPU block alone.
    let cpu = Batch {
        ts: 0.0,
        events: vec![Event::Removed {
            block_hashes: vec![10],
            medium: Some("CPU".into()),
        }],
        dp_rank: None,
    };
    ix.apply(0, 2, &cpu);
    assert_eq!(ix.len(0), 2);
    // Clear.
    let clear = Batch {
        ts: 0.0,
        events: vec![Event::AllCleared],
        dp_rank: None,
    };
    ix.apply(0, 3, &clear);
    assert_eq!(ix.len(0), 0);
    assert_eq!(ix.stats(0).unwrap().last_seq, Some(3));
    // Lost: not live at once, entries expire after the grace.
    ix.lose(1, now);
    assert!(!ix.snapshot().is_live(1));
    ix.expire(now + Duration::from_secs(5));
    assert_eq!(ix.len(1), 1);
    ix.expire(now + Duration::from_secs(10));
    assert_eq!(ix.len(1), 0);
}

#[test]
fn gap_without_replay_resyncs() {
    let mut ix = ExactIndex::new(Duration::from_secs(10));
    ix.connected(0);
    ix.apply(0, 0, &stored(&[1, 2]));
    assert_eq!(ix.check(0, 3), SeqVerdict::Gap { from: 1 });
    ix.resync(0, false);
    ix.apply(0, 3, &stored(&[7]));
    assert_eq!(ix.len(0), 1);
    let st = ix.stats(0).unwrap();
    assert_eq!((st.gaps, st.resyncs, st.last_seq), (1, 1, Some(3)));
    assert_eq!(ix.check(0, 4), SeqVerdict::Apply);
}

/// A fuzz pass without a fuzzer: 20,000 deterministic mutations of the two
/// valid batches (byte flips, truncations, insertions) and random buffers
/// decode to a batch or an error, never a panic.
#[test]
fn mutated_and_random_payloads_never_panic() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds = [unhex(ARRAY_BATCH), unhex(MAP_BATCH)];
    let mut ok = 0;
    for i in 0..20_000 {
        let mut b = seeds[i % 2].clone();
        match next() % 4 {
            0 => {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            1 => b.truncate((next() as usize) % b.len()),
            2 => {
                let at = (next() as usize) % b.len();
                b.insert(at, next() as u8);
            }
            _ => b = (0..(next() % 64)).map(|_| next() as u8).collect(),
        }
        if decode_batch(&b).is_ok() {
            ok += 1;
        }
    }
    assert!(ok < 20_000);
}

/// Length prefixes that claim gigabytes are rejected without allocating them.
#[test]
fn huge_length_prefixes_do_not_allocate() {
    for b in [
        "ddffffffff",                     // array32 of 4G elements
        "dfffffffff",                     // map32 of 4G pairs
        "c6ffffffff",                     // bin32 of 4 GiB
        "92cb3ff0000000000000ddffffffff", // [1.0, array32(4G)]
    ] {
        assert!(decode_batch(&unhex(b)).is_err(), "{b}");
    }
}

#[test]
fn a_server_that_restarts_during_a_loss_is_cleared() {
    let t0 = Instant::now();
    let mut ix = ExactIndex::new(Duration::from_secs(10));
    ix.connected(0);
    assert_eq!(ix.check(0, 0), SeqVerdict::Apply);
    ix.apply(0, 0, &stored(&[1, 2]));
    ix.lose(0, t0);
    // Back within the expiry: the blocks were kept; sequence 0 again means
    // a new server, whose cache is empty.
    ix.connected(0);
    assert_eq!(ix.check(0, 0), SeqVerdict::Restarted);
    ix.resync(0, true);
    ix.apply(0, 0, &stored(&[3]));
    assert_eq!(ix.len(0), 1);
    assert_eq!(ix.stats(0).unwrap().restarts, 1);
}
