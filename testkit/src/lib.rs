//! Test support shared by shardgate's test binaries (a dev-dependency only, never
//! linked into a shipped binary).
//!
//! - [`alloc`]: [`Counting`], a global allocator that counts allocations, in
//!   total (every thread) and per thread, with an optional backtrace of the first
//!   N allocations (`SHARDGATE_ALLOC_TRACE=N` in the gateway's alloc test);
//! - [`process`]: [`ChildGuard`] (a child process killed, reaped and its temp dir
//!   removed on drop, also when the test panics), [`poll`] (a condition polled
//!   every 5 ms until a deadline), [`temp_dir`], [`wait_ready_file`];
//! - `sim` (feature `sim`): simulated vLLM backends (`shardgate-sim`) in process on
//!   127.0.0.1, ephemeral port;
//! - [`gateway`]: [`GatewayProcess`], `shardgate serve` as a child process on
//!   127.0.0.1 with ephemeral ports, ready once its `--ready-file` appears (20 s
//!   deadline);
//! - [`grpc`]: [`grpc::GrpcClient`], a blocking gRPC client over h2c (unary
//!   calls, and streams driven message by message);
//! - [`h2raw`]: [`h2raw::RawH2`], raw HTTP/2 frames for hostile-input tests;
//! - [`redis`]: [`RedisServer`], a real `redis-server` on 127.0.0.1 (free
//!   port), killable and restartable, for the global rate-limit tests.
//!
//! Unsafe code: this is the one crate of the workspace that cannot forbid it.
//! Implementing `GlobalAlloc` is `unsafe` by definition (the allocator forwards to
//! `System`), and [`ChildGuard::terminate`] sends SIGTERM with `libc::kill`. Every
//! other crate carries `#![forbid(unsafe_code)]` (the runtime a `deny` with one
//! documented exception), and the test binaries that count allocations install
//! [`Counting`] without writing any unsafe themselves.

#![allow(clippy::unwrap_used)]

pub mod alloc;
pub mod gateway;
pub mod grpc;
pub mod h2raw;
pub mod process;
pub mod redis;
#[cfg(feature = "sim")]
pub mod sim;

pub use alloc::Counting;
pub use gateway::{GatewayProcess, Launch};
pub use process::{poll, temp_dir, wait_ready_file, ChildGuard};
pub use redis::RedisServer;
#[cfg(feature = "sim")]
pub use shardgate_sim::{SimConfig, SimHandle};
