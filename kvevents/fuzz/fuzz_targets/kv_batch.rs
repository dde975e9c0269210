//! Fuzz target: arbitrary bytes as a ZMQ multipart message (split at the first
//! two 0xFF bytes into topic, sequence and payload) and as a bare msgpack
//! `KVEventBatch`; a batch that decodes is applied to an exact index through
//! the sequence tracker and re-encoded. Must never panic or allocate what the
//! input only claims.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate_kvevents::{decode_batch, encode_batch, message, ExactIndex, SeqVerdict};

fuzz_target!(|data: &[u8]| {
    let frames: Vec<&[u8]> = data.splitn(3, |b| *b == 0xFF).collect();
    let mut index = ExactIndex::new(std::time::Duration::from_secs(1));
    index.connected(0);
    if let Ok(m) = message(&frames) {
        if let Ok(batch) = decode_batch(m.payload) {
            match index.check(0, m.seq) {
                SeqVerdict::Duplicate => {}
                _ => index.apply(0, m.seq, &batch),
            }
            let _ = index.snapshot();
        }
    }
    if let Ok(batch) = decode_batch(data) {
        let again = decode_batch(&encode_batch(&batch)).expect("re-encoded batch decodes");
        assert_eq!(again.events.len(), batch.events.len());
    }
});
