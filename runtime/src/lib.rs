//! Shard-per-core runtime for shardgate.
//!
//! One OS thread per shard, each running its own monoio runtime (io_uring through
//! `FusionDriver`, falling back to epoll when io_uring is missing or forbidden, e.g.
//! by a container seccomp profile), optionally pinned to one core with
//! `core_affinity`. Every shard owns its own `SO_REUSEPORT` listener socket for each
//! served port, so the kernel spreads connections across shards and a connection
//! lives and dies on the core that accepted it. Nothing on the data path is shared
//! between shards except what [`Shutdown`] carries (one flag, read at most every
//! [`Shutdown::POLL`]) and the read-only snapshots the gateway publishes.
//!
//! Numbers: listener backlog 4,096; shutdown flag polled every 50 ms by idle loops.

pub mod io;

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// The I/O driver a shard runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Linux io_uring.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl Driver {
    /// Lower-case name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// Which driver shards will use: io_uring when the kernel offers every operation
/// monoio needs and `MONOIO_FORCE_LEGACY_DRIVER` is not set, else epoll.
pub fn detect_driver() -> Driver {
    if monoio::utils::detect_uring() {
        Driver::IoUring
    } else {
        Driver::Epoll
    }
}

/// Force the epoll driver for every shard built afterwards. Must be called before
/// the first runtime is built (the detection result is cached by monoio) and while
/// the process is still single-threaded.
pub fn force_epoll() {
    // SAFETY-free on edition 2021; called from main before any thread starts.
    std::env::set_var("MONOIO_FORCE_LEGACY_DRIVER", "1");
}

/// Process-wide stop signal: set once by the signal handler (or a test), observed by
/// every shard's accept loop and by connections between requests.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    draining: Arc<AtomicBool>,
}

impl Shutdown {
    /// How often idle loops look at the flag.
    pub const POLL: Duration = Duration::from_millis(50);

    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start draining: stop accepting, finish in-flight requests, then exit.
    pub fn trigger(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolve once draining has started (polls every [`Shutdown::POLL`]).
    pub async fn wait(&self) {
        while !self.is_draining() {
            monoio::time::sleep(Self::POLL).await;
        }
    }
}

/// Bind `count` listening sockets on `addr` with `SO_REUSEPORT`, one per shard.
///
/// The first socket binds `addr` as given (port 0 picks an ephemeral port); the
/// others bind the port the first one got, so every shard listens on the same
/// port. Binding happens on the calling thread so errors (address in use,
/// permission) surface before any shard starts.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> std::io::Result<Vec<StdListener>> {
    let mut out = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bound.into())?;
        socket.listen(4096)?;
        let listener: StdListener = socket.into();
        bound = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// What a shard's main future gets to know about its place.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// Shard index, `0..shards`.
    pub id: usize,
    /// Total number of shards.
    pub shards: usize,
    /// The driver this shard's runtime uses.
    pub driver: Driver,
    /// The core this shard is pinned to, if pinning succeeded.
    pub core: Option<usize>,
}

/// Handles of the running shard threads.
pub struct Shards {
    threads: Vec<JoinHandle<()>>,
}

impl Shards {
    /// Wait for every shard thread to finish.
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a shard thread panicked");
            }
        }
    }
}

/// Start one shard thread per element of `per_shard`. Each builds its runtime (timer
/// enabled), pins itself to a core when `pin` is true (cores taken round-robin from
/// those this process may use), and runs `main(info, payload)` to completion. The
/// payload hands a shard what is its alone (e.g. its listening sockets).
pub fn spawn_shards<P, F, Fut>(per_shard: Vec<P>, pin: bool, main: F) -> std::io::Result<Shards>
where
    P: Send + 'static,
    F: Fn(ShardInfo, P) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let count = per_shard.len();
    let cores = if pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut threads = Vec::with_capacity(count);
    for (id, payload) in per_shard.into_iter().enumerate() {
        let main = main.clone();
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[id % cores.len()])
        };
        let t = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                let pinned = core
                    .filter(|c| core_affinity::set_for_current(*c))
                    .map(|c| c.id);
                let built = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .with_entries(1024)
                    .enable_timer()
                    .build();
                let mut rt = match built {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(shard = id, error = %e, "cannot build the shard runtime");
                        return;
                    }
                };
                let driver = match &rt {
                    monoio::FusionRuntime::Uring(_) => Driver::IoUring,
                    monoio::FusionRuntime::Legacy(_) => Driver::Epoll,
                };
                let info = ShardInfo {
                    id,
                    shards: count,
                    driver,
                    core: pinned,
                };
                rt.block_on(main(info, payload));
            })?;
        threads.push(t);
    }
    Ok(Shards { threads })
}

/// Run one future on a fresh single-threaded monoio runtime on the current thread
/// (used by the admin listener and by tools such as the load generator).
pub fn block_on<F: Future>(fut: F) -> std::io::Result<F::Output> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(256)
        .enable_timer()
        .build()?;
    Ok(rt.block_on(fut))
}
