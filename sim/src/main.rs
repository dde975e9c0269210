//! `shardgate-sim` binary: parses [`shardgate_sim::SimConfig`] flags and serves until
//! ctrl-c. Logs go to stderr (`RUST_LOG`, default `info`).

#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = shardgate_sim::SimConfig::parse();
    if let Err(e) = shardgate_sim::run_blocking(config) {
        tracing::error!(error = %e, "shardgate-sim failed");
        std::process::exit(1);
    }
}
