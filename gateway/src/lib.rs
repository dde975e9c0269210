//! shardgate: the gateway binary's library — CLI commands, wiring of shards,
//! the data path, the control thread and the admin listener.
//!
//! `serve` loads the config, binds one `SO_REUSEPORT` socket per shard per served
//! port on the main thread (so bind errors surface before anything starts; a
//! port another process listens on is refused unless
//! `--reuse-port-with-other-processes`), starts
//! the shards and the admin thread, then waits. SIGTERM/SIGINT starts a drain:
//! every shard's listener is shut at once by the signal thread (new connections
//! are refused, connections still in a backlog are reset), requests on open
//! keep-alive connections are answered with `Connection: close`, in-flight
//! requests finish (up to `--drain-timeout`), and the process exits 0. A second
//! signal exits at once. A panic is contained to its connection, stream or
//! batch ([`contain`]); one that escapes into a shard's own loops drains the
//! other shards and exits 70.
//!
//! Descriptors: at start the soft `RLIMIT_NOFILE` is raised to the hard limit
//! and, without `--max-connections`, the client-connection cap is derived from
//! it ([`conns::default_max_connections`]); both are logged.
//!
//! # One request, accept to response (modules in one direction)
//!
//! 1. [`server`] accepts on the shard the kernel chose and spawns
//!    `proxy::serve_connection` (under [`contain`]: a panic ends that
//!    connection only).
//! 2. [`proxy`] (the HTTP/1.1 front end) reads and parses the head and body, and
//!    hands a protocol-neutral [`plan::RequestInfo`] to
//! 3. [`plan`] (pure): model, route, priority, and the decision — answer now,
//!    batch, or forward — from the read-only [`state::GatewayState`].
//! 4. [`proxy`] carries the plan out: a rule with a SecurityPolicy's JWT
//!    authentication first checks the bearer token ([`jwt`], pure; 401 when it
//!    fails), then its rate limit ([`ratelimit`], 429 over it), the admission
//!    permit from [`admit`], a
//!    batched request through [`batch`] (the executor of [`lanes`]), a forwarded
//!    one through the pick of [`shard`] and
//! 5. [`attempt`] (pure): after each try — stale connection, connect failure,
//!    503 before the first byte, timeout — retry fresh, pick again, deliver or
//!    answer; ejections, 5xx streaks and the retry budget live there too;
//! 6. [`upstream`]: the one client — pool, connect (over TLS where a
//!    BackendTLSPolicy asks, with [`upstream_tls`]'s settings), request
//!    serialisation, exchange — used by the proxy, batched calls and the
//!    control thread;
//! 7. back in [`proxy`], the response streams to the client; [`metrics`] and
//!    [`access_log`] record it.
//!
//! HTTP/2 (GRPC listeners, prior knowledge on HTTP listeners, ALPN `h2` on
//! HTTPS ones) takes the same path through [`h2`] instead of [`proxy`]: gRPC
//! calls ([`grpc`], pure: the `model_name` scan, statuses, `grpc-timeout`) are
//! planned by [`plan`], admitted by the same policy steps and relayed over
//! HTTP/2 to the backend ([`h2_upstream`]); HTTP requests over HTTP/2 are
//! planned the same way and forwarded over [`upstream`].
//! Both HTTP/2 sides, [`h2`] for clients and [`h2_upstream`] (with
//! [`h2_bridge`]) for backends, build on [`h2_io`] (limits, buffer size, the
//! TLS adapter) and not on each other: the upstream client sits below every
//! front end.
//!
//! Beside the data path, never inside it: [`control`] (scrapes, health checks,
//! the scoring snapshot, prefix sharing, remote JWK sets through
//! [`jwks_fetch`]), fed by the shards' [`report`]s;
//! [`admin`] and [`endpoints_view`] (`/metrics`, `/debug/*`; [`redact`] masks
//! credentials in `/debug/config`); [`reload`] (live configuration from files)
//! and [`k8s`] (`serve --kubernetes`: the Kubernetes API as the source of the
//! same snapshots, and the status written back). The leaves — [`bodymem`], [`conns`], [`contain`],
//! [`error`], [`notify`], [`ratelimit`], [`report`], [`state`], [`ticks`], [`upstream_tls`] — import no other module of the
//! crate's data path, and `tests/module_graph.rs` fails on any import cycle
//! (a folder's files count as its module; the files of one folder must not
//! import each other in a cycle either).

#![forbid(unsafe_code)]

/// Tests: the size of what calling the async fn `$f` returns (its future's
/// state machine), without calling it; one type parameter name per argument.
#[cfg(test)]
macro_rules! future_size {
    ($f:expr; $($a:ident),*) => {{
        fn size<F, $($a,)* R>(_: &F) -> usize
        where
            F: Fn($($a),*) -> R,
        {
            std::mem::size_of::<R>()
        }
        size(&$f)
    }};
}

pub mod access_log;
pub mod admin;
pub mod admit;
pub mod attempt;
pub mod autoscale;
pub mod batch;
pub mod bodymem;
pub mod cli;
pub mod conns;
pub mod contain;
pub mod control;
pub mod demo;
pub mod endpoints_view;
pub mod error;
pub mod grpc;
pub mod h2;
pub mod h2_bridge;
pub mod h2_io;
pub mod h2_upstream;
pub mod jwks_fetch;
pub mod jwt;
pub mod k8s;
pub mod kv_events;
pub mod kv_offload;
pub mod kv_tokenize;
pub mod lanes;
pub mod load;
pub mod metrics;
pub mod models_poll;
pub mod notify;
pub mod plan;
pub mod ports;
pub mod prewarm;
pub mod proxy;
pub mod ratelimit;
pub mod ratelimit_global;
pub mod redact;
pub mod reload;
pub mod report;
pub mod rollout;
pub mod server;
pub mod shard;
pub mod state;
pub mod throttle;
pub mod ticks;
pub mod tls;
pub mod upstream;
pub mod upstream_tls;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use shardgate_runtime::Shutdown;

use crate::cli::{Cli, Command, RunArgs};
use crate::state::GatewayState;

/// Entry point of the `shardgate` binary.
pub fn main_entry() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    match cli.command {
        Command::Serve(args) if args.kube.kubernetes => k8s::serve(&args.kube, &args.run),
        Command::Serve(args) => {
            match load::read_sources(&args.config, args.run.config_limits.max_config_bytes) {
                Ok(sources) => serve_watching(&sources, &args.config, &args.run, Shutdown::new()),
                Err(errors) => report_errors(&errors),
            }
        }
        Command::Check(args) => check(&args.config, &args.config_limits),
        Command::Demo(args) => demo::run(&args),
        Command::Reload(args) => request_reload(&args),
    }
}

/// `shardgate reload`: `POST /admin/reload` to a running gateway; prints its
/// answer; success only on 202.
fn request_reload(args: &cli::ReloadArgs) -> ExitCode {
    use std::io::{Read, Write};
    let addr = args.admin_addr;
    let attempt = || -> std::io::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, args.timeout)?;
        s.set_read_timeout(Some(args.timeout))?;
        s.set_write_timeout(Some(args.timeout))?;
        s.write_all(
            format!("POST /admin/reload HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut raw = Vec::new();
        s.take(64 * 1024).read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .trim()
            .to_string();
        Ok((status, body))
    };
    match attempt() {
        Ok((202, body)) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("shardgate reload: {addr} answered {status}: {body}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("shardgate reload: cannot reach the admin listener at {addr}: {e}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn report_errors(errors: &[String]) -> ExitCode {
    for e in errors {
        eprintln!("error: {e}");
    }
    eprintln!("shardgate: {} configuration error(s)", errors.len());
    ExitCode::from(2)
}

/// `shardgate check`: validate, print the routing table, exit 0 or 2.
pub fn check(paths: &[std::path::PathBuf], limits: &cli::ConfigLimitArgs) -> ExitCode {
    let sources = match load::read_sources(paths, limits.max_config_bytes) {
        Ok(s) => s,
        Err(errors) => return report_errors(&errors),
    };
    match load::load_with(&sources, &limits.limits()) {
        Ok(loaded) => {
            println!("{}", loaded.table);
            println!("Resources:");
            for (kind, status, count) in loaded.config.enforcement_report() {
                println!("  {kind:<18} {count:>3}  {status}");
            }
            println!(
                "configuration OK ({} document(s))",
                loaded.config.docs.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => report_errors(&errors),
    }
}

/// The `--kv-events` specs and settings (errors name the flag and the spec).
fn kv_events_config(limits: &cli::LimitArgs) -> Result<kv_events::KvEventsConfig, String> {
    Ok(kv_events::KvEventsConfig {
        specs: limits
            .kv_events
            .iter()
            .map(|s| kv_events::EventSpec::parse(s))
            .collect::<Result<_, _>>()?,
        expiry: limits.kv_events_expiry,
    })
}

/// Run the gateway on `sources` until `shutdown` fires (a signal or the caller).
pub fn serve(sources: &[(String, String)], run: &RunArgs, shutdown: Shutdown) -> ExitCode {
    serve_watching(sources, &[], run, shutdown)
}

/// [`serve`] `sources`, read from `paths`, reloading them when they change or
/// on `SIGHUP` ([`reload`]).
pub fn serve_watching(
    sources: &[(String, String)],
    paths: &[std::path::PathBuf],
    run: &RunArgs,
    shutdown: Shutdown,
) -> ExitCode {
    match start(sources, run, shutdown) {
        Ok(running) => {
            let files: Vec<_> = paths
                .iter()
                .filter(|p| p.as_os_str() != "-")
                .cloned()
                .collect();
            if !files.is_empty() {
                if let Err(e) = running.reloader.watch(files) {
                    tracing::warn!(error = %e, "cannot watch the configuration files: no live reload");
                }
            }
            wait_shards(running.shards)
        }
        Err(errors) => report_errors(&errors),
    }
}

/// Waits for the shard threads to end; the process's exit status: 0 after a
/// drain, 70 (`EX_SOFTWARE`) when a shard's thread panicked ([`contain`]).
pub fn wait_shards(shards: shardgate_runtime::Shards) -> ExitCode {
    let panicked = shards.join();
    if panicked > 0 || contain::shard_panicked() {
        tracing::error!(panicked, "a shard panicked: exiting with status 70");
        return ExitCode::from(70);
    }
    tracing::info!("drained; bye");
    ExitCode::SUCCESS
}

/// A started gateway.
pub struct Running {
    /// The shard threads.
    pub shards: shardgate_runtime::Shards,
    /// Served addresses, one per port.
    pub addrs: Vec<SocketAddr>,
    /// Reloads the configuration (certificates and JWK sets live); taken
    /// by [`reload::Reloader::watch`].
    pub reloader: reload::Reloader,
}

/// Load, bind and start everything; returns once the shards run.
pub fn start(
    sources: &[(String, String)],
    run: &RunArgs,
    shutdown: Shutdown,
) -> Result<Running, Vec<String>> {
    if run.force_epoll {
        shardgate_runtime::force_epoll();
    }
    let loaded = load::load_with(sources, &run.config_limits.limits())?;
    for w in loaded.table.warnings() {
        tracing::warn!("config: {w}");
    }
    for (kind, status, count) in loaded.config.enforcement_report() {
        tracing::info!(kind = %kind, count, "{status}");
    }
    let mut settings = load::settings(&run.limits, &loaded.table);
    let shards = run
        .shards
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    settings.shards = shards;
    settings.max_connections = connection_cap(
        run.limits.max_connections,
        shards,
        loaded.table.listeners().iter().filter(|l| l.served).count(),
        loaded.table.endpoints().len(),
    );
    let body_share = bodymem::BodyBudget::share_of(settings.max_buffered_body_bytes, shards);
    if body_share < settings.limits.max_body_bytes {
        tracing::warn!(
            share = body_share,
            max_body_bytes = settings.limits.max_body_bytes,
            shards,
            "each shard may buffer {body_share} bytes of request bodies (--max-buffered-body-bytes over {shards} shards), less than --max-body-bytes: larger bodies get 413"
        );
    }

    // Group served listeners by port; bind one socket per shard per port.
    for l in loaded.table.listeners().iter().filter(|l| !l.served) {
        tracing::warn!(listener = %l.name, protocol = %l.protocol, port = l.port, "listener accepted, not served yet (HTTP, HTTPS and GRPC listeners only)");
    }
    let (ports, per_shard) = ports::Ports::bind(
        ports::BindSettings {
            ip: run.bind,
            listen_port: run.listen_port,
            port_map: run.port_map.clone(),
            sharing: if run.reuse_port_with_other_processes {
                shardgate_runtime::PortSharing::WithOtherProcesses
            } else {
                shardgate_runtime::PortSharing::ThisProcessOnly
            },
            reject_unknown_sni: run.limits.tls_unknown_sni == cli::UnknownSni::Reject,
            shards,
        },
        loaded.table.listeners(),
        &shutdown,
    )
    .map_err(|e| vec![e])?;
    let addrs = ports.addrs();

    let driver = shardgate_runtime::detect_driver();
    let endpoints: Vec<String> = loaded
        .table
        .endpoints()
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    let hub = Arc::new(metrics::MetricsHub::new(shards, endpoints, driver.name()));
    let access_log = match &run.access_log {
        Some(path) => Some(
            access_log::AccessLog::open(path)
                .map_err(|e| vec![format!("cannot open access log {}: {e}", path.display())])?,
        ),
        None => None,
    };
    let specs = control::health_specs(&loaded.table);
    let pick = state::PickSettings {
        queue_scale: run.limits.queue_scale,
        share: shardgate_routing::scoring::ShareConfig {
            ring_words: run.limits.prefix_share_ring,
            drain_blocks: run.limits.prefix_share_drain,
        },
        share_interval: run.limits.prefix_share_interval,
        locality_weight: 0.0,
    };
    let locality = control::locality(&loaded.table, run.limits.node_name.as_deref());
    let pick = state::PickSettings {
        locality_weight: if locality.iter().any(|l| l.is_some()) {
            run.limits.locality_weight.max(0.0)
        } else {
            0.0
        },
        ..pick
    };
    let control = control::ControlShared::new(
        loaded.table.endpoints().len(),
        load::control_settings(&run.limits),
        &specs,
        settings.max_concurrent,
        shards,
    );
    let control = control.with_locality(locality.iter().map(|l| *l == Some(true)).collect());
    // Precise prefix routing (#18): tokenizers now (a bad file fails the start),
    // the KV-events thread once the live state exists.
    let kv_config = kv_events_config(&run.limits).map_err(|e| vec![e])?;
    let precise = Arc::new(
        kv_events::Precise::new(
            kv_tokenize::Tokenizers::load(
                &run.limits.kv_tokenizer,
                &run.limits.kv_chat_template,
                run.limits.kv_block_size,
                &run.limits.kv_hash_seed,
            )
            .map_err(|e| vec![e])?,
        )
        .with_offload(kv_offload::OffloadConfig {
            threads: run.limits.kv_tokenize_threads,
            inline_bytes: run.limits.kv_tokenize_inline_bytes,
            timeout: run.limits.kv_tokenize_timeout,
        })
        .map_err(|e| vec![e])?,
    );
    let control = control.with_precise(precise.clone());
    // Prefix sharing between shards: the control thread is the rings' hub.
    let (control, share_inbox) = if shards > 1 && pick.share.enabled() {
        let (c, inbox) = control.with_prefix_share(pick.share_interval);
        (c, Some(inbox))
    } else {
        (control, None)
    };
    let control = Arc::new(control);
    let upstream_tls =
        upstream_tls::for_endpoints(loaded.table.endpoints()).map_err(|e| vec![e])?;
    let endpoint_targets: Vec<upstream::Target> = loaded
        .table
        .endpoints()
        .iter()
        .zip(&upstream_tls)
        .map(|(e, tls)| upstream::Target {
            addr: e.addr,
            tls: tls.clone(),
            h2: e.h2,
        })
        .collect();
    let jwks_roots =
        Arc::new(jwks_fetch::roots(run.limits.jwks_ca_file.as_deref()).map_err(|e| vec![e])?);
    let auth = Arc::new(
        jwt::Authenticator::build(&loaded.table, settings.jwt_leeway).map_err(|e| vec![e])?,
    );
    control::spawn(
        control.clone(),
        endpoint_targets,
        specs,
        share_inbox,
        auth.clone(),
        jwks_roots,
    )
    .map_err(|e| vec![format!("cannot start the control thread: {e}")])?;
    let config_status = Arc::new(reload::ConfigStatus::new(
        load::debug_config_value(&loaded, sources),
        sources,
    ));
    let mut reloader = reload::Reloader::new(
        &run.config_limits,
        &run.limits,
        settings.jwt_leeway,
        sources,
        &loaded.config,
        ports,
        auth.clone(),
        config_status.clone(),
    );
    let warmth = prewarm::Warmth::for_table(&loaded.table, control.capacity);
    let endpoint_lists = Arc::new(arc_swap::ArcSwap::from_pointee(
        endpoints_view::EndpointLists::of(&loaded.table),
    ));
    let autoscale = if run.limits.autoscale_interval.is_zero() {
        None
    } else {
        Some(
            autoscale::spawn(
                autoscale::Settings {
                    interval: run.limits.autoscale_interval,
                    ttft_slo: run.limits.autoscale_ttft_slo,
                    default_capacity: run.limits.autoscale_default_capacity,
                },
                endpoint_lists.clone(),
                hub.clone(),
                control.clone(),
            )
            .map_err(|e| vec![format!("cannot start the autoscaling signals: {e}")])?,
        )
    };
    let global_limiter =
        ratelimit_global::start(load::global_limit_settings(&run.limits), &loaded.table)
            .map_err(|e| vec![e])?;
    let rollouts = rollout::Rollouts::for_table(&loaded.table);
    if let Some(r) = &rollouts {
        rollout::spawn(r, hub.clone())
            .map_err(|e| vec![format!("cannot start the rollout controller: {e}")])?;
    }
    let mut state =
        GatewayState::with_auth(loaded.table, settings, pick, auth).map_err(|e| vec![e])?;
    state.warmth = warmth;
    state.global_limiter = global_limiter;
    state.rollouts = rollouts;
    // The control thread's settings: one session cache per policy for all.
    state.upstream_tls = upstream_tls;
    let state = Arc::new(state);
    start_prewarm(&state).map_err(|e| vec![format!("cannot start the model warm-up: {e}")])?;
    let live = Arc::new(state::LiveState::new(state));
    if kv_config.enabled() {
        let (kv_live, kv_control, kv_stop) = (live.clone(), control.clone(), shutdown.clone());
        kv_events::spawn(
            precise,
            kv_config,
            move || {
                let state = kv_live.load();
                state
                    .table
                    .endpoints()
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (!kv_control.retired.get(i)).then_some(e.addr))
                    .collect()
            },
            move || kv_stop.is_draining(),
        )
        .map_err(|e| vec![format!("cannot start the KV-events thread: {e}")])?;
    }
    endpoint_lists.store(Arc::new(
        endpoints_view::EndpointLists::of(&live.load().table)
            .with_profile(*live.load().profile(None)),
    ));
    let mut admin_addr = cli::admin_addr(&run.admin_addr).map_err(|e| vec![e])?;
    if let Some(a) = admin_addr {
        let listener =
            admin::bind(a).map_err(|e| vec![format!("cannot listen on admin address {a}: {e}")])?;
        admin_addr = listener.local_addr().ok();
        let view = Arc::new(admin::AdminView {
            config: config_status.clone(),
            live: live.clone(),
            autoscale: autoscale.clone(),
            endpoints: endpoints_view::EndpointsView {
                lists: endpoint_lists.clone(),
                control: control.clone(),
                hub: hub.clone(),
            },
            shutdown: shutdown.clone(),
            hub: hub.clone(),
        });
        admin::spawn(listener, view).map_err(|e| vec![e.to_string()])?;
    }

    reloader.attach(reload::LiveHandles {
        live: live.clone(),
        control: control.clone(),
        hub: hub.clone(),
        node: run.limits.node_name.clone(),
        views: endpoint_lists,
    });
    let shard_live = live.clone();
    let shard_shutdown = shutdown.clone();
    let handles = shardgate_runtime::spawn_shards_with(
        per_shard,
        !run.no_pin,
        run.uring_setup,
        move |info, sockets| {
            server::shard_main(
                info,
                shard_live.clone(),
                shard_shutdown.clone(),
                hub.clone(),
                access_log.clone(),
                control.clone(),
                sockets,
            )
        },
    )
    .map_err(|e| vec![format!("cannot start shards: {e}")])?;

    install_signals(shutdown);
    let listen: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    tracing::info!(
        listen = %listen.join(","),
        shards,
        driver = driver.name(),
        admin = %admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        "shardgate serving"
    );
    if let Some(path) = &run.ready_file {
        let ready = serde_json::json!({"listen": listen, "admin": admin_addr.map(|a| a.to_string()), "shards": shards, "driver": driver.name(), "pid": std::process::id()});
        let tmp = path.with_extension("tmp");
        if let Err(e) =
            std::fs::write(&tmp, ready.to_string()).and_then(|_| std::fs::rename(&tmp, path))
        {
            tracing::warn!(error = %e, path = %path.display(), "cannot write the ready file");
        }
    }
    Ok(Running {
        shards: handles,
        addrs,
        reloader,
    })
}

/// Warm the models `modelPrewarming` lists ([`prewarm`]), when it is on.
/// The fleet-wide limiter and its lease thread, with `--rate-limit-redis` and
/// some SecurityPolicy `rateLimit` to apply it to.
fn start_prewarm(state: &GatewayState) -> std::io::Result<()> {
    match &state.warmth {
        Some(w) => prewarm::start(w, &state.table, None).map(|_| ()),
        None => Ok(()),
    }
}

/// The total client-connection cap: `--max-connections` when given, else derived
/// from the descriptor limit (after raising the soft limit to the hard one).
fn connection_cap(flag: Option<u64>, shards: usize, ports: usize, endpoints: usize) -> u64 {
    let nofile = match shardgate_runtime::raise_nofile_limit() {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
            None
        }
    };
    let derived = nofile.map(|n| conns::default_max_connections(n, shards, ports, endpoints));
    let cap = match (flag, derived) {
        (Some(cap), Some(safe)) if cap > safe => {
            tracing::warn!(
                max_connections = cap,
                nofile = nofile.unwrap_or(0),
                safe,
                "--max-connections is above what the descriptor limit safely allows; \
                 accepts will pause when descriptors run out"
            );
            cap
        }
        (Some(cap), _) => cap,
        (None, Some(safe)) => safe,
        (None, None) => 10_000,
    }
    .max(shards as u64);
    tracing::info!(
        max_connections = cap,
        per_shard = cap / shards.max(1) as u64,
        nofile = nofile.unwrap_or(0),
        source = if flag.is_some() {
            "--max-connections"
        } else {
            "RLIMIT_NOFILE"
        },
        "client connection cap"
    );
    cap
}

fn install_signals(shutdown: Shutdown) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install signal handlers");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen > 1 {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    std::process::exit(1);
                }
                // Shut the listeners first: once this line is logged, no new
                // connection is accepted.
                shutdown.trigger();
                tracing::info!(
                    signal = sig,
                    "draining: no new connections; finishing in-flight requests"
                );
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the signal thread");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A loadable configuration with a credential in each place #12 item 6
    /// found one (and the seed's SecurityPolicy, whose JWT material lands here).
    const HOSTILE_CONFIG: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: gw
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"password":"LEAK-LAST"}'
spec:
  gatewayClassName: shardgate
  listeners: [{name: http, protocol: HTTP, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches:
    - headers:
      - {name: X-Gateway-Model-Name, value: llama}
      - {name: X-Tenant-Token, value: LEAK-MATCH}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: Authorization, value: "Bearer LEAK-SET"}]
        add: [{name: X-Api-Key, value: LEAK-ADD}]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Upstream-Cookie, value: LEAK-RESP}]
    backendRefs: [{name: svc, port: 8000}]
---
apiVersion: ai.gateway.io/v1alpha1
kind: SecurityPolicy
metadata: {name: sp}
spec:
  authorization: LEAK-AUTHZ
  auth: {bearer: LEAK-BEARER}
  access_key: LEAK-ACCESS
  key: LEAK-KEY
  hmac: LEAK-HMAC
  cookie: LEAK-COOKIE
  pass: LEAK-PASS
  passphrase: LEAK-PHRASE
  upstream: https://admin:LEAK-URLPW@models.example/v1
"#;

    #[test]
    fn debug_config_shows_no_secret() {
        let sources = [("hostile.yaml".to_owned(), HOSTILE_CONFIG.to_owned())];
        let config = shardgate_routing::load_sources(&sources).unwrap();
        let table =
            shardgate_routing::RoutingTable::build(&config, &mut |_, _| Vec::new()).unwrap();
        let loaded = load::Loaded { config, table };
        let text = load::debug_config_value(&loaded, &sources).to_string();
        assert_eq!(text.matches("LEAK-").count(), 0, "{text}");
        // What is harmless stays visible.
        assert!(text.contains("\"llama\""), "{text}");
        assert!(
            text.contains("https://<redacted>@models.example/v1"),
            "{text}"
        );
        assert!(text.contains("X-Api-Key"), "header names stay: {text}");
    }

    #[test]
    fn debug_config_lists_warnings_as_sentences() {
        let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: d}\nspec:\n  gatewayClassName: missing\n  listeners: [{name: http, protocol: HTTP, port: 80}]\n";
        let sources = [("g.yaml".to_owned(), yaml.to_owned())];
        let config = shardgate_routing::load_sources(&sources).unwrap();
        let table =
            shardgate_routing::RoutingTable::build(&config, &mut |_, _| Vec::new()).unwrap();
        let loaded = load::Loaded { config, table };
        let json: serde_json::Value = load::debug_config_value(&loaded, &sources);
        assert_eq!(
            json["warnings"],
            serde_json::json!([
                "Gateway d/gw: GatewayClass missing not found (standalone mode: ignored)"
            ])
        );
    }
}
