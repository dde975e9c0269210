//! Fuzz target: arbitrary bytes as a `grpc-timeout` value. Must never panic;
//! a value that parses formats back to one that parses to at least as long.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shardgate::grpc::timeout::{format, parse};

fuzz_target!(|data: &[u8]| {
    if let Some(d) = parse(data) {
        let mut s = String::new();
        format(d, &mut s);
        let back = parse(s.as_bytes()).expect("a formatted timeout parses");
        assert!(back >= d);
    }
});
