//! `shardgate demo`: the gateway on its embedded config (`gateway/demo.yaml`, a real
//! config a user can copy) with one simulated vLLM server (`shardgate-sim`, in
//! process) on every EndpointSlice address of that config: two models, four
//! servers. Prints the listen address and a ready-to-paste streaming `curl`.
//! `demo -c FILE…` runs the same on an edited copy of that config (e.g. with an
//! HTTPS listener and a SecurityPolicy), as long as its EndpointSlices still
//! belong to the two demo Services.
//!
//! The simulated servers come with the cargo feature `demo` (on by default). A
//! binary built with `--no-default-features` has no simulator linked in: its
//! `shardgate demo` still prints the config (`--print-config`) but otherwise exits
//! with status 2 and says the feature is missing.

use std::process::ExitCode;

#[cfg(feature = "demo")]
use shardgate_runtime::Shutdown;

use crate::cli::DemoArgs;

/// The embedded demo config.
pub const DEMO_CONFIG: &str = include_str!("../demo.yaml");

/// Which model the simulated servers behind each demo Service serve.
pub const DEMO_SERVICES: [(&str, &str); 2] = [
    ("default/llama-vllm", "llama-3-8b"),
    ("default/qwen-vllm", "qwen-2.5-7b"),
];

/// Start one simulated server per endpoint of `table`, serving the model its
/// Service maps to in [`DEMO_SERVICES`].
#[cfg(feature = "demo")]
pub fn start_sims(
    table: &shardgate_routing::RoutingTable,
) -> Result<Vec<shardgate_sim::SimHandle>, String> {
    let mut sims = Vec::new();
    for ep in table.endpoints() {
        let Some((_, model)) = DEMO_SERVICES.iter().find(|(svc, _)| *svc == ep.backend) else {
            return Err(format!(
                "demo config endpoint {} belongs to {}, which has no simulated model \
                 (the demo simulates default/llama-vllm and default/qwen-vllm)",
                ep.addr, ep.backend
            ));
        };
        let config = shardgate_sim::SimConfig {
            host: ep.addr.ip().to_string(),
            port: ep.addr.port(),
            model: vec![model.to_string()],
            ..Default::default()
        };
        match shardgate_sim::spawn(config) {
            Ok(h) => sims.push(h),
            Err(e) => {
                return Err(format!(
                    "cannot start the simulated server on {}: {e}",
                    ep.addr
                ))
            }
        }
    }
    Ok(sims)
}

/// Run the demo until SIGINT/SIGTERM.
pub fn run(args: &DemoArgs) -> ExitCode {
    if args.print_config {
        print!("{DEMO_CONFIG}");
        return ExitCode::SUCCESS;
    }
    serve_demo(args)
}

/// Without the `demo` feature there are no simulated servers to start.
#[cfg(not(feature = "demo"))]
fn serve_demo(_args: &DemoArgs) -> ExitCode {
    eprintln!(
        "error: this shardgate was built without the `demo` feature (no simulated backends); \
         rebuild with default features for `shardgate demo`, or run `shardgate serve -c CONFIG`"
    );
    ExitCode::from(2)
}

/// Start the simulated servers, then the gateway in front of them.
#[cfg(feature = "demo")]
fn serve_demo(args: &DemoArgs) -> ExitCode {
    let sources = if args.config.is_empty() {
        vec![("demo.yaml (embedded)".to_string(), DEMO_CONFIG.to_string())]
    } else {
        match crate::load::read_sources(&args.config, args.run.config_limits.max_config_bytes) {
            Ok(s) => s,
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return ExitCode::from(2);
            }
        }
    };
    let loaded = match crate::load::load(&sources) {
        Ok(l) => l,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let sims = match start_sims(&loaded.table) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    for s in &sims {
        tracing::info!(addr = %s.addr(), "simulated vLLM server started");
    }
    let mut run = args.run.clone();
    if args.port.is_some() {
        run.listen_port = args.port;
    }
    let shutdown = Shutdown::new();
    let code = match crate::start(&sources, &run, shutdown) {
        Ok(running) => {
            let addr = running
                .addrs
                .first()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let host = addr.replace("0.0.0.0", "127.0.0.1");
            let scheme = match loaded.table.listeners().iter().find(|l| l.served) {
                Some(l) if l.protocol == "HTTPS" => "https",
                _ => "http",
            };
            println!(
                "shardgate demo is serving on {scheme}://{host} (models: llama-3-8b, qwen-2.5-7b)"
            );
            println!("Try a streaming chat completion:\n");
            println!(
                "  curl -N {scheme}://{host}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"llama-3-8b\",\"stream\":true,\"max_tokens\":40,\"messages\":[{{\"role\":\"user\",\"content\":\"Tell me about shard-per-core gateways\"}}]}}'\n"
            );
            println!("  curl {scheme}://{host}/v1/models\n\nCtrl-C stops it.");
            crate::wait_shards(running.shards)
        }
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            ExitCode::from(2)
        }
    };
    for s in sims {
        s.shutdown();
    }
    code
}
