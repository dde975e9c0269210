//! Command line: `shardgate serve | check | demo`, parsed with clap. Every limit
//! the data path enforces has a flag here with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// shardgate: a shard-per-core inference gateway for vLLM, SGLang, TGI, Triton and
/// KServe servers, configured with Kubernetes Gateway API resources.
#[derive(Debug, Parser)]
#[command(name = "shardgate", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway on one or more config files (multi-document Kubernetes YAML).
    Serve(ServeArgs),
    /// Validate config files and print the resolved routing table (like `nginx -t`);
    /// exits non-zero with every error found.
    Check(CheckArgs),
    /// Run the gateway on its embedded demo config with simulated vLLM backends
    /// started in-process: no cluster and no GPU needed (a binary built without the
    /// default `demo` feature only prints the config).
    Demo(DemoArgs),
    /// Ask a running gateway to re-read its config files now (what a file
    /// change or SIGHUP does): `POST /admin/reload` on its admin listener.
    Reload(ReloadArgs),
}

/// `shardgate reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The running gateway's admin listener.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_addr: SocketAddr,
    /// How long to wait for its answer.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub timeout: Duration,
}

/// `shardgate check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Config file(s); `-` reads standard input.
    #[arg(short = 'c', long = "config", required = true)]
    pub config: Vec<PathBuf>,
    /// Limits on the configuration files.
    #[command(flatten)]
    pub config_limits: ConfigLimitArgs,
}

/// Limits on configuration files, checked before any YAML is parsed.
#[derive(Debug, Args, Clone)]
pub struct ConfigLimitArgs {
    /// Largest total size of all config files together, in bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_config_bytes: usize,
    /// Deepest nesting of any one YAML document (Kubernetes manifests stay under 20).
    #[arg(long, default_value_t = 64)]
    pub max_config_depth: usize,
}

impl ConfigLimitArgs {
    /// As the routing crate's loader takes them.
    pub fn limits(&self) -> shardgate_routing::LoadLimits {
        shardgate_routing::LoadLimits {
            max_bytes: self.max_config_bytes,
            max_depth: self.max_config_depth,
        }
    }
}

/// `shardgate serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file(s) (multi-document YAML: Gateway, HTTPRoute, EndpointSlice, InferenceConfig, …).
    #[arg(
        short = 'c',
        long = "config",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub config: Vec<PathBuf>,
    /// Controller mode: the configuration comes from the Kubernetes API.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Shared runtime options.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Kubernetes controller mode (`serve --kubernetes`).
#[derive(Debug, Args, Clone)]
pub struct KubeArgs {
    /// Read the configuration from the Kubernetes API instead of files: watch
    /// Gateway API, Inference Extension and ai.gateway.io objects, serve the
    /// Gateways whose GatewayClass names `--controller-name`, write their status.
    /// Credentials: in-cluster (service account), else `KUBECONFIG` / ~/.kube/config.
    #[arg(long)]
    pub kubernetes: bool,
    /// The `controllerName` of the GatewayClasses this gateway serves.
    #[arg(long, default_value = "ai.gateway.io/inference-controller")]
    pub controller_name: String,
    /// Longest wait at start for the first list of every watched kind.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub kubernetes_sync_timeout: Duration,
    /// Namespace of the `coordination.k8s.io` Lease that elects the one
    /// replica that writes status (every replica serves).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of that Lease.
    #[arg(long, default_value = "shardgate-status-writer")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else the
    /// host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The address written into Gateway `status.addresses` (in the DaemonSet,
    /// from the downward API: `status.hostIP`).
    #[arg(long, env = "GATEWAY_ADDRESS")]
    pub gateway_address: Option<String>,
}

/// `shardgate demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Port for the gateway listener (overrides the demo config's 8080; 0 = any free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Print the embedded demo config and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Run the demo on these config files instead of the embedded one: an edited
    /// copy of `--print-config` (an HTTPS listener, a SecurityPolicy, …). Every
    /// EndpointSlice must still belong to one of the demo's two Services.
    #[arg(short = 'c', long = "config")]
    pub config: Vec<std::path::PathBuf>,
    /// Shared runtime options.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Options shared by `serve` and `demo`.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Number of shards (one thread and one SO_REUSEPORT listener per shard).
    /// Default: the number of cores this process may run on.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Address the listeners bind to; the port comes from each Gateway listener.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
    /// Override the port of the (first) HTTP listener, e.g. 0 for an ephemeral port in tests.
    #[arg(long)]
    pub listen_port: Option<u16>,
    /// Serve the configuration's listener port FROM on port TO instead
    /// (`FROM=TO`, repeatable; `0` = ephemeral), at start and for ports a
    /// reload adds: e.g. `--port-map 50051=0` for a second gateway on one host.
    #[arg(long = "port-map", value_name = "FROM=TO", value_parser = parse_port_map)]
    pub port_map: Vec<(u16, u16)>,
    /// Let other processes of the same user share the listener ports through
    /// SO_REUSEPORT (a zero-downtime binary upgrade: start the new binary, then
    /// drain the old one). Without it a port another process listens on is
    /// refused: `serve` exits 2 naming the address.
    #[arg(long)]
    pub reuse_port_with_other_processes: bool,
    /// Admin address (/healthz, /readyz, /debug/config). `off` disables it.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin_addr: String,
    /// Do not pin shards to cores.
    #[arg(long)]
    pub no_pin: bool,
    /// Use the epoll driver even when io_uring is available (same as MONOIO_FORCE_LEGACY_DRIVER=1).
    #[arg(long)]
    pub force_epoll: bool,
    /// io_uring ring setup: `coop` (COOP_TASKRUN + SINGLE_ISSUER), `defer` (+ DEFER_TASKRUN) or `plain`; a kernel that refuses the flags gets a plain ring.
    #[arg(long, default_value = "coop", value_parser = parse_uring_setup)]
    pub uring_setup: shardgate_runtime::UringSetup,
    /// Once serving, write `{"listen":["ip:port",…],"admin":…,"shards":…,"driver":…,"pid":…}` to this file (for scripts and tests).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// JSON-lines access log: a file to append to, or `-` for stdout (off by default).
    #[arg(long)]
    pub access_log: Option<PathBuf>,
    /// Data-path limits and timeouts.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Limits on the configuration files.
    #[command(flatten)]
    pub config_limits: ConfigLimitArgs,
}

fn duration(s: &str) -> Result<Duration, String> {
    shardgate_routing::parse_duration(s)
}

/// Limits and timeouts, each with a default.
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Maximum request head size in bytes (431 beyond).
    #[arg(long, default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Maximum number of request header fields (431 beyond).
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,
    /// Maximum request body size in bytes (413 beyond). Bodies are buffered to route on `model`.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    pub max_body_bytes: u64,
    /// Request-body memory all shards may buffer at once, in bytes (each shard gets
    /// an equal share). A request whose body does not fit its shard's share now is
    /// refused at once with 503 and `Retry-After: 1` (`body_budget_exhausted`); one
    /// larger than the whole share gets 413. Default 256 MiB.
    #[arg(long, default_value_t = crate::bodymem::DEFAULT_TOTAL)]
    pub max_buffered_body_bytes: u64,
    /// Time allowed to receive a whole request (head and body) once its first byte arrived (408 beyond).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,
    /// Most client connections open at once, in total; each shard takes an even
    /// share. At a shard's share a new connection first makes the longest-idle
    /// keep-alive connection close; with none idle it is accepted and closed at
    /// once. Default: derived from the descriptor limit (the soft RLIMIT_NOFILE,
    /// raised to the hard one at start), leaving room for one upstream connection
    /// per client connection, the listeners and the control thread (logged).
    #[arg(long)]
    pub max_connections: Option<u64>,
    /// Close a client keep-alive connection idle this long.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub client_idle_timeout: Duration,
    /// How long a kept-alive HTTP/1.1 client connection keeps its receive
    /// armed into its read buffer (16 KiB) and its request state (~7.5 KiB)
    /// after a request, rounded up to the shard's 50 ms grid. A client that
    /// sends again within it pays no switch from idle (three io_uring
    /// operations and the state's allocation); past it the connection gives
    /// both back and waits for readability holding neither. Longer: less CPU
    /// for clients that send every few hundred ms, more memory pinned by them.
    #[arg(long, default_value = "50ms", value_parser = duration)]
    pub client_hot_wait: Duration,
    /// Quiet HTTP/1.1 client connections kept hot past `--client-hot-wait`, in
    /// total (each shard an even share): such a connection keeps its receive
    /// armed into its read buffer, with its request state (~24 KiB), until its
    /// next request or `--client-idle-timeout`, so a client that sends every few
    /// hundred ms or seconds pays no switch from idle. Beyond the budget quiet
    /// connections go idle holding nothing. Kept connections count as idle at
    /// `--max-connections` (closed first to make room). 0 turns it off.
    #[arg(long, default_value_t = 1024)]
    pub client_hot_conns: u64,
    /// Longest a single write to a client may block (a client that stops reading).
    /// When it fires the connection closes, the upstream request is cancelled (its
    /// connection dropped) and `gateway_client_aborts_total{reason="send_timeout"}`
    /// counts it. Like nginx's `send_timeout`.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub send_timeout: Duration,
    /// Time allowed for a client's TLS handshake on an `HTTPS` listener; past it
    /// the connection closes.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub tls_handshake_timeout: Duration,
    /// A TLS client whose SNI names no `HTTPS` listener of the port (or that
    /// sends none while every listener has a hostname): `default` serves the
    /// port's first certificate, `reject` ends the handshake with an alert.
    #[arg(long, value_enum, default_value = "default")]
    pub tls_unknown_sni: UnknownSni,
    /// Upstream connect timeout (the endpoint is then ejected and another tried).
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Whole-request upstream deadline (504 before the response head; abort after).
    /// Default: InferenceConfig `timeout.inference`, else 300s.
    #[arg(long, value_parser = duration)]
    pub response_timeout: Option<Duration>,
    /// Longest silence allowed between upstream bytes (504 / abort).
    /// Default: InferenceConfig `timeout.idle`, else 60s.
    #[arg(long, value_parser = duration)]
    pub stream_idle_timeout: Option<Duration>,
    /// Idle keep-alive upstream connections kept per endpoint per shard.
    #[arg(long, default_value_t = 64)]
    pub upstream_idle_per_endpoint: usize,
    /// Drop pooled upstream connections idle longer than this (uvicorn, vLLM's server, closes after 5s).
    #[arg(long, default_value = "4s", value_parser = duration)]
    pub upstream_idle_timeout: Duration,
    /// On SIGTERM/SIGINT, wait at most this long for in-flight requests.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// First ejection period of an endpoint that refuses connections; doubles per failure.
    #[arg(long, default_value = "250ms", value_parser = duration)]
    pub eject_base: Duration,
    /// Longest ejection period.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub eject_max: Duration,
    /// Consecutive 5xx answers from an endpoint that eject it on a shard (0 = never).
    #[arg(long, default_value_t = 5)]
    pub eject_after_5xx: u32,
    /// Retries per request on another endpoint, after a connection failure or a 503
    /// received before any response byte reached the client.
    #[arg(long, default_value_t = 1)]
    pub retries: u32,
    /// Retries may add at most this fraction of requests (per shard, token bucket).
    #[arg(long, default_value_t = 0.2)]
    pub retry_budget: f64,
    /// When every healthy endpoint of a route is saturated: `shed` answers sheddable
    /// requests (priority below 0) 429 with Retry-After and sends the others to the
    /// best saturated endpoint; `reject` answers everyone 503 with Retry-After;
    /// `pass` sends everyone to the best saturated endpoint.
    #[arg(long, default_value = "shed", value_parser = ["shed", "reject", "pass"])]
    pub saturated_action: String,
    /// Same as `--saturated-action pass`.
    #[arg(long)]
    pub pass_saturated: bool,
    /// Saturation filter: an endpoint with more waiting requests than this is saturated.
    #[arg(long, default_value_t = 5.0)]
    pub saturation_waiting: f64,
    /// Saturation filter: an endpoint with KV-cache usage above this (0–1) is saturated.
    #[arg(long, default_value_t = 0.8)]
    pub saturation_kv: f64,
    /// Saturation filter: also treat an endpoint whose last successful scrape is older
    /// than this as saturated (off by default: stale signals are dropped from scoring,
    /// and a stalled control thread must not turn into 503s).
    #[arg(long, value_parser = duration)]
    pub saturation_metrics_age: Option<Duration>,
    /// Prefix-cache index capacity per endpoint per shard, in blocks of 64 bytes
    /// (about 50 bytes of memory per block).
    #[arg(long, default_value_t = 31_250)]
    pub prefix_blocks_per_endpoint: usize,
    /// Precise prefix routing (#18): subscribe to endpoints' vLLM KV-cache events.
    /// `ENDPOINT=TARGET[,replay=TARGET][,topic=TOPIC]`, ENDPOINT `IP:PORT` or `*`,
    /// TARGET `HOST:PORT`, `:PORT` (the endpoint's host) or `+N` (its port + N).
    /// Repeatable; an exact ENDPOINT wins over `*`.
    #[arg(long = "kv-events", value_name = "SPEC")]
    pub kv_events: Vec<String>,
    /// The tokenizer.json of a model, for precise prefix routing: `MODEL=PATH`
    /// (repeatable). A model without one is scored by the approximate index.
    #[arg(long = "kv-tokenizer", value_name = "MODEL=PATH")]
    pub kv_tokenizer: Vec<String>,
    /// A model's chat template (Jinja), `MODEL=PATH` (default: the `chat_template`
    /// of the tokenizer's sibling tokenizer_config.json, if any).
    #[arg(long = "kv-chat-template", value_name = "MODEL=PATH")]
    pub kv_chat_template: Vec<String>,
    /// Tokens per KV block on the servers (vLLM `--block-size`).
    #[arg(long, default_value_t = 16)]
    pub kv_block_size: usize,
    /// The servers' `NONE_HASH` seed: their `PYTHONHASHSEED`, else vLLM's fixed
    /// `vllm-none-hash` (with `--prefix-caching-hash-algo sha256_cbor`).
    #[arg(long, default_value = "vllm-none-hash")]
    pub kv_hash_seed: String,
    /// How long the blocks of an endpoint whose event stream was lost are kept
    /// (it is scored approximately from the loss on).
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub kv_events_expiry: Duration,
    /// Threads that key long prompts for precise prefix routing, off the shards
    /// (0: every prompt is keyed on its shard).
    #[arg(long, default_value_t = 1)]
    pub kv_tokenize_threads: usize,
    /// Prompt bodies up to this many bytes are keyed on the shard (about 100 µs
    /// of tokenizing at the default); longer ones on a kv-tokenize thread.
    #[arg(long, default_value_t = 2048)]
    pub kv_tokenize_inline_bytes: usize,
    /// Longest a request waits for a kv-tokenize thread's keys; past it (or with
    /// every queue full) it is scored by the approximate index.
    #[arg(long, default_value = "50ms", value_parser = duration)]
    pub kv_tokenize_timeout: Duration,
    /// Queue scale k of the scorers: the queue scores k/(k+q) and a prefix match
    /// counts its matched fraction × k/(k+q), q = waiting + this shard's in-flight
    /// requests to the endpoint. Larger keeps prefix affinity under more load (the
    /// saturation filter still applies). Default 30.
    #[arg(long)]
    pub queue_scale: Option<f64>,
    /// The Kubernetes node this gateway runs on (in the DaemonSet, from the
    /// downward API: `spec.nodeName`). With `InferenceConfig` `gpuAffinity: true`,
    /// endpoints whose EndpointSlice `nodeName` is this node are preferred.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Weight of the locality scorer (endpoints on `--node-name`) when
    /// `gpuAffinity` is on; the default 2 keeps traffic local until the local
    /// endpoints are saturated. 0 turns the preference off.
    #[arg(long, default_value_t = 2.0)]
    pub locality_weight: f64,
    /// How often the per-model autoscaling signals (`/autoscale`,
    /// `gateway_model_*`) are computed; 0 turns them off.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub autoscale_interval: Duration,
    /// TTFT a backend must keep for its concurrency to count as its capacity.
    #[arg(long, default_value = "2s", value_parser = duration)]
    pub autoscale_ttft_slo: Duration,
    /// Requests one replica is assumed to run until its capacity is measured.
    #[arg(long, default_value_t = 8.0)]
    pub autoscale_default_capacity: f64,
    /// Size of each ring that shares recorded prefix blocks between shards (two per
    /// shard), in 8-byte words; a record takes 1 + its blocks (at most 257). A
    /// record that does not fit is dropped and counted. 0 turns sharing off.
    #[arg(long, default_value_t = 32_768)]
    pub prefix_share_ring: usize,
    /// Most prefix blocks a shard replays from the other shards before one pick
    /// (at least one record per pick).
    #[arg(long, default_value_t = 4_096)]
    pub prefix_share_drain: usize,
    /// How often the control thread moves prefix records between the shards' rings.
    #[arg(long, default_value = "5ms", value_parser = duration)]
    pub prefix_share_interval: Duration,
    /// Telemetry scrape interval (`GET /metrics` on every endpoint).
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub scrape_interval: Duration,
    /// Per-scrape timeout.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub scrape_timeout: Duration,
    /// A telemetry signal older than this many scrape intervals is stale (reported,
    /// its scorer weight redistributed, never read as zero).
    #[arg(long, default_value_t = 2)]
    pub stale_after_intervals: u32,
    /// Do not scrape endpoints' telemetry (scorers then see no signals).
    #[arg(long)]
    pub no_scrape: bool,
    /// How often to poll every endpoint's `GET /v1/models` for the models and
    /// LoRA adapters it serves (first poll at start); requests go only to
    /// endpoints that serve their model. An endpoint never listed serves any
    /// model; a failed poll keeps the last list. 0 turns polling off.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub models_interval: Duration,
    /// Telemetry scrapes and `/v1/models` polls in flight at once (the control
    /// thread queues the rest); with more endpoints than this, their
    /// connections are closed after each request instead of kept open.
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_scrapes: usize,
    /// Most (SecurityPolicy, client, model) rate-limit keys tracked at once
    /// (about 100 bytes each). Idle keys are forgotten when the table is full; a
    /// new client that finds it full of active keys is refused with 429.
    #[arg(long, default_value_t = crate::ratelimit::DEFAULT_MAX_KEYS)]
    pub rate_limit_max_keys: usize,
    /// Proxies whose `X-Forwarded-For` is believed for rate limiting, as
    /// addresses or CIDRs, comma-separated (e.g. `10.0.0.0/8,fd00::/8`). Empty
    /// (the default): the client is always the TCP peer.
    #[arg(long, value_delimiter = ',', value_parser = crate::ratelimit::IpNet::parse)]
    pub trusted_proxies: Vec<crate::ratelimit::IpNet>,
    /// HTTP/2 (GRPC listeners): concurrent streams per client connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`); more are refused (`REFUSED_STREAM`).
    #[arg(long, default_value_t = 100)]
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: largest header list a client may send, in bytes
    /// (`SETTINGS_MAX_HEADER_LIST_SIZE`; bounds a CONTINUATION flood).
    #[arg(long, default_value_t = 16 * 1024)]
    pub h2_max_header_list_bytes: u32,
    /// HTTP/2: the HPACK dynamic table a client's encoder may use, in bytes.
    #[arg(long, default_value_t = 4096)]
    pub h2_header_table_bytes: u32,
    /// HTTP/2: receive window per stream, in bytes (the most one stream can
    /// make the gateway hold per direction).
    #[arg(long, default_value_t = 1 << 20)]
    pub h2_stream_window: u32,
    /// HTTP/2: receive window per connection, in bytes.
    #[arg(long, default_value_t = 2 << 20)]
    pub h2_connection_window: u32,
    /// HTTP/2: streams a client may reset before the gateway accepted them
    /// (rapid reset, CVE-2023-44487); beyond it the connection gets GOAWAY.
    #[arg(long, default_value_t = 20)]
    pub h2_max_pending_resets: usize,
    /// HTTP/2 to gRPC backends: streams per pooled connection before the
    /// shard opens another.
    #[arg(long, default_value_t = 100)]
    pub h2_upstream_streams_per_connection: usize,
    /// Make SecurityPolicy request limits fleet-wide through this Redis
    /// (`redis://HOST:PORT[/DB]`): every replica draws permits in leases from
    /// one GCRA cell per key there, so 10/minute means 10 for the fleet.
    /// Unset (the default): limits are per replica.
    #[arg(long, value_parser = |s: &str| s.parse::<crate::ratelimit_global::RedisAddr>())]
    pub rate_limit_redis: Option<crate::ratelimit_global::RedisAddr>,
    /// While Redis is unreachable: `open` falls back to the per-replica limit,
    /// `closed` refuses with 429 `rate_limit_unavailable`.
    #[arg(long, default_value = "open", value_parser = |s: &str| s.parse::<crate::ratelimit_global::FailureMode>())]
    pub rate_limit_redis_failure: crate::ratelimit_global::FailureMode,
    /// The most permits one lease draws from Redis at once (leases are also
    /// kept to a quarter of the limit over the replicas).
    #[arg(long, default_value_t = crate::ratelimit_global::DEFAULT_BATCH)]
    pub rate_limit_redis_batch: u32,
    /// Redis connect and command timeout, and a request's longest wait for a
    /// lease refill before the failure mode decides.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub rate_limit_redis_timeout: Duration,
    /// Prefix of the rate-limit keys in Redis (replicas sharing limits must
    /// use the same one).
    #[arg(long, default_value = crate::ratelimit_global::DEFAULT_PREFIX)]
    pub rate_limit_redis_prefix: String,
    /// Longest wait for a `maxConcurrentInferences` permit before 429.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub admission_timeout: Duration,
    /// Consecutive failed health checks that eject an endpoint.
    #[arg(long, default_value_t = 2)]
    pub unhealthy_after: u32,
    /// Consecutive passed health checks that restore it.
    #[arg(long, default_value_t = 1)]
    pub healthy_after: u32,
    /// Clock skew allowed on a JWT's `exp` and `nbf` (SecurityPolicy
    /// `authentication.jwt`).
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub jwt_leeway: Duration,
    /// Verified JWTs each shard remembers, so a client's token is checked once
    /// until it expires or its key set changes (0 = verify every request).
    #[arg(long, default_value_t = crate::jwt::DEFAULT_CACHE_ENTRIES)]
    pub jwt_cache_size: usize,
    /// PEM file of CA certificates that `https://` `remoteJWKS` servers are
    /// verified against, besides the system roots (a private CA; the tests'
    /// local one).
    #[arg(long, value_name = "PATH")]
    pub jwks_ca_file: Option<std::path::PathBuf>,
}

/// `--tls-unknown-sni`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownSni {
    /// Serve the port's default certificate (its first listener's first).
    Default,
    /// Refuse the handshake (a TLS alert; the client sees a handshake failure).
    Reject,
}

/// Parse an admin address flag: `off` → None.
pub fn admin_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| format!("--admin-addr {s}: {e}"))
}

fn parse_port_map(s: &str) -> Result<(u16, u16), String> {
    let (from, to) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected FROM=TO, e.g. 50051=0"))?;
    let port = |p: &str, what: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("`{s}`: {what} `{p}` is not a port number (0-65535)"))
    };
    let from = port(from, "FROM")?;
    if from == 0 {
        return Err(format!("`{s}`: FROM must be a listener's port, not 0"));
    }
    Ok((from, port(to, "TO")?))
}

fn parse_uring_setup(s: &str) -> Result<shardgate_runtime::UringSetup, String> {
    shardgate_runtime::UringSetup::parse(s)
        .ok_or_else(|| format!("`{s}`: expected coop, defer or plain"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::parse_port_map;

    #[test]
    fn port_maps_parse_and_say_what_is_wrong() {
        assert_eq!(parse_port_map("50051=0"), Ok((50051, 0)));
        assert_eq!(parse_port_map(" 8080 = 18080 "), Ok((8080, 18080)));
        assert!(parse_port_map("50051").unwrap_err().contains("FROM=TO"));
        assert!(parse_port_map("0=1").unwrap_err().contains("not 0"));
        assert!(parse_port_map("a=1").unwrap_err().contains("FROM `a`"));
        assert!(parse_port_map("1=70000")
            .unwrap_err()
            .contains("TO `70000`"));
    }
}
