//! Fuzz target: arbitrary bytes as the start of a gRPC request body, scanned
//! for KServe v2 `model_name`, whole and cut at every length. Must never
//! panic, and a name found must be a slice of the input that stays found
//! once more bytes arrive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::grpc::wire::{model_name, Scan};

fuzz_target!(|data: &[u8]| {
    let whole = model_name(data);
    for cut in 0..data.len() {
        if let Ok(Scan::Found(m)) = model_name(&data[..cut]) {
            assert_eq!(whole, Ok(Scan::Found(m)));
        }
    }
    if let Ok(Scan::Found(m)) = whole {
        let range = m.as_ptr() as usize..m.as_ptr() as usize + m.len();
        let input = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        assert!(input.start <= range.start && range.end <= input.end);
    }
});
