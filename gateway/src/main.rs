//! The `shardgate` binary: everything lives in the library (`shardgate::main_entry`).
//!
//! Memory comes from mimalloc rather than glibc's malloc. The HTTP/1.1 path
//! allocates nothing per request, but the HTTP/2 and gRPC paths do (the `h2`
//! crate's frames and `http::HeaderMap`s); mimalloc's per-thread free lists
//! serve them with 6–7 % fewer instructions per request and 7–24 % more
//! requests per second on one shard (`bench/instructions.py`, `bench/h2.py`;
//! `bench/results/latency.md` section 11), for ~12 MB more resident memory
//! under load (28 MB against 16 MB, one shard, 64 connections). The library's
//! own tests that count allocations install their own allocator.

#![forbid(unsafe_code)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    shardgate::main_entry()
}
