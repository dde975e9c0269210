//! `shardgate-load` binary: parses the flags ([`shardgate_bench::cli::Args`]) and runs
//! the load test; see the library for what it measures.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    shardgate_bench::cli::main_with(&shardgate_bench::cli::Args::parse())
}
