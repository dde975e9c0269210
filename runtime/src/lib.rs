//! Shard-per-core runtime for shardgate.
//!
//! One OS thread per shard, each running its own monoio runtime (io_uring through
//! `FusionDriver`, falling back to epoll when io_uring is missing or forbidden, e.g.
//! by a container seccomp profile), optionally pinned to one core with
//! `core_affinity`. Every shard owns its own `SO_REUSEPORT` listener socket for each
//! served port, so the kernel spreads connections across shards and a connection
//! lives and dies on the core that accepted it. Another process is refused the
//! port (`EADDRINUSE`) unless it asks to share it ([`PortSharing`], see
//! [`bind_reuseport`] for how and the one race left). Nothing on the data path is shared
//! between shards except what [`Shutdown`] carries (one flag, read at most every
//! [`Shutdown::POLL`], and the listening sockets it shuts when it fires) and the
//! read-only snapshots the gateway publishes.
//!
//! Drain: [`Shutdown::trigger`] shuts every registered listening socket
//! (`shutdown(SHUT_RD)`) on the triggering thread before it returns, so from then
//! on a new connection is refused by the kernel (RST) and connections still in a
//! listener's backlog are reset at once, whatever the shards are busy with; the
//! shards' accept loops wake on the shut socket and stop.
//!
//! Numbers: listener backlog 4,096; shutdown flag polled every 50 ms by idle loops;
//! 1,024 io_uring entries per shard; [`raise_nofile_limit`] raises the soft
//! descriptor limit to the hard one (at most 1,048,576).
//!
//! io_uring setup ([`UringSetup`], `--uring-setup`): by default every shard's ring is
//! created with `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER` (each ring is
//! only ever used by the thread that made it, so completions need no inter-processor
//! interrupt to be posted); `defer` adds `IORING_SETUP_DEFER_TASKRUN` (completion
//! work runs only when the shard asks for events); `plain` uses none. A kernel that
//! rejects the flags (before Linux 6.0 / 6.1) gets a plain ring, logged.
//!
//! Unsafe code is denied except in three places: [`io::peer_state`] borrows a
//! monoio socket's raw descriptor (monoio offers no `AsFd`) to peek through
//! socket2, and [`nofile_limit`] / [`raise_nofile_limit`] make one libc call each.

#![deny(unsafe_code)]

pub mod io;

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
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

/// io_uring setup flags for the shards' rings (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UringSetup {
    /// No setup flags.
    Plain,
    /// `COOP_TASKRUN | SINGLE_ISSUER` (the default).
    #[default]
    Coop,
    /// `COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN`.
    Defer,
}

impl UringSetup {
    /// Parse `plain`, `coop` or `defer`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "plain" => Some(UringSetup::Plain),
            "coop" => Some(UringSetup::Coop),
            "defer" => Some(UringSetup::Defer),
            _ => None,
        }
    }

    fn builder(self) -> io_uring::Builder {
        let mut b = io_uring::IoUring::builder();
        match self {
            UringSetup::Plain => {}
            UringSetup::Coop => {
                b.setup_coop_taskrun().setup_single_issuer();
            }
            UringSetup::Defer => {
                b.setup_coop_taskrun()
                    .setup_single_issuer()
                    .setup_defer_taskrun();
            }
        }
        b
    }
}

/// Build a shard's runtime with `setup`, falling back to a plain ring when the
/// kernel refuses the flags.
fn build_shard_runtime(
    id: usize,
    setup: UringSetup,
) -> std::io::Result<
    monoio::FusionRuntime<
        monoio::time::TimeDriver<monoio::IoUringDriver>,
        monoio::time::TimeDriver<monoio::LegacyDriver>,
    >,
> {
    let build = |urb: io_uring::Builder| {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .with_entries(1024)
            .uring_builder(urb)
            .enable_timer()
            .build()
    };
    match build(setup.builder()) {
        Ok(rt) => Ok(rt),
        Err(e) if setup != UringSetup::Plain => {
            tracing::warn!(shard = id, error = %e, ?setup, "io_uring setup flags refused; using a plain ring");
            build(UringSetup::Plain.builder())
        }
        Err(e) => Err(e),
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
/// every shard's accept loop and by connections between requests. The listening
/// sockets registered with [`Shutdown::close_on_trigger`] are shut when it fires.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    draining: Arc<AtomicBool>,
    /// Duplicates of the listening sockets to shut on trigger (no lock: the list
    /// is swapped whole; touched only at bind and at trigger).
    listeners: Arc<ArcSwap<Vec<Arc<Socket>>>>,
}

impl Shutdown {
    /// How often idle loops look at the flag.
    pub const POLL: Duration = Duration::from_millis(50);

    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start draining: shut every registered listener (new connections are
    /// refused from now on, backlogs reset), then finish in-flight requests and exit.
    pub fn trigger(&self) {
        self.draining.store(true, Ordering::SeqCst);
        for l in self.listeners.load().iter() {
            shut_listener(l);
        }
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

    /// Shut `listener` (a duplicate of its descriptor, so the caller keeps its
    /// own) when the drain starts, or now if it has started.
    pub fn close_on_trigger(&self, listener: &StdListener) -> std::io::Result<()> {
        let dup = Arc::new(Socket::from(listener.try_clone()?));
        self.listeners.rcu(|held| {
            let mut held = Vec::clone(held);
            held.push(dup.clone());
            held
        });
        // A trigger that read the list before our push is seen here (both SeqCst);
        // shutting a socket twice is harmless.
        if self.draining.load(Ordering::SeqCst) {
            shut_listener(&dup);
        }
        Ok(())
    }
}

/// Stop a listening socket: `shutdown(SHUT_RD)` takes it out of its
/// `SO_REUSEPORT` group and resets the connections in its backlog; accepts on
/// it fail and waiters on its readiness wake.
fn shut_listener(l: &Socket) {
    if let Err(e) = l.shutdown(std::net::Shutdown::Read) {
        tracing::warn!(error = %e, "cannot shut a listener for the drain");
    }
}

/// The process's `RLIMIT_NOFILE` as (soft, hard).
#[allow(unsafe_code)] // one libc call on a struct we own; see SAFETY.
pub fn nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Most descriptors [`raise_nofile_limit`] asks for: 1,048,576 (Linux's default
/// `fs.nr_open`).
pub const NOFILE_CEILING: u64 = 1 << 20;

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (at most [`NOFILE_CEILING`])
/// and return the soft limit in force afterwards. A refused raise keeps the old
/// limit and returns it.
#[allow(unsafe_code)] // one libc call on a struct we own; see SAFETY.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let (soft, hard) = nofile_limit()?;
    let want = hard.min(NOFILE_CEILING);
    if want <= soft {
        return Ok(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: want as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the valid struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Ok(soft);
    }
    Ok(want)
}

/// Who may share a served port with this process's shards (`SO_REUSEPORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortSharing {
    /// Only this process's shards: binding fails with `EADDRINUSE` when another
    /// process already listens on the address (see [`bind_reuseport`]).
    #[default]
    ThisProcessOnly,
    /// Any process of the same user may join (a zero-downtime binary upgrade:
    /// the new binary starts on the port, the old one drains and exits).
    WithOtherProcesses,
}

/// Bind `count` listening sockets on `addr` with `SO_REUSEPORT`, one per shard.
///
/// The first socket binds `addr` as given (port 0 picks an ephemeral port); the
/// others bind the port the first one got, so every shard listens on the same
/// port. Binding happens on the calling thread so errors (address in use,
/// permission) surface before any shard starts.
///
/// # Exclusivity ([`PortSharing::ThisProcessOnly`])
///
/// Linux lets any socket with `SO_REUSEPORT` of the same effective UID join a
/// listening group, so a second gateway started by the same user on the same
/// port would bind without error and take part of the traffic. To refuse that,
/// a probe socket **without** `SO_REUSEPORT` (but with `SO_REUSEADDR`, so the
/// `TIME_WAIT` connections a restarted gateway leaves do not count) first
/// binds the address: the kernel refuses it (`EADDRINUSE`) while any other
/// socket listens there, whatever its options and owner. Once it binds, the
/// probe is closed and the group is bound and listening at once. The one
/// window left is the few microseconds between the probe's close and the first
/// group socket's `listen`: two gateways started in that same instant could
/// both pass. Every later start is refused. (Keeping the probe bound would not
/// close the window: a non-listening socket with `SO_REUSEADDR` blocks nobody,
/// and a listening one blocks this process's own group too.) With port 0 the
/// kernel picks a port nobody holds, so there is no probe.
pub fn bind_reuseport(
    addr: SocketAddr,
    count: usize,
    sharing: PortSharing,
) -> std::io::Result<Vec<StdListener>> {
    if sharing == PortSharing::ThisProcessOnly && addr.port() != 0 {
        probe_exclusive(addr)?;
    }
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

/// Bind (and drop) a socket without `SO_REUSEPORT` on `addr`: `EADDRINUSE`
/// when another socket listens there (see [`bind_reuseport`]).
fn probe_exclusive(addr: SocketAddr) -> std::io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{e}: another process listens on {addr}"),
            )
        } else {
            e
        }
    })
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
    /// Wait for every shard thread to finish; returns how many ended by a
    /// panic.
    pub fn join(self) -> usize {
        let mut panicked = 0;
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a shard thread panicked");
                panicked += 1;
            }
        }
        panicked
    }
}

/// Start one shard thread per element of `per_shard`. Each builds its runtime (timer
/// enabled, io_uring set up as [`UringSetup::default`]), pins itself to a core when
/// `pin` is true (cores taken round-robin from those this process may use), and runs
/// `main(info, payload)` to completion. The payload hands a shard what is its alone
/// (e.g. its listening sockets).
pub fn spawn_shards<P, F, Fut>(per_shard: Vec<P>, pin: bool, main: F) -> std::io::Result<Shards>
where
    P: Send + 'static,
    F: Fn(ShardInfo, P) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    spawn_shards_with(per_shard, pin, UringSetup::default(), main)
}

/// [`spawn_shards`] with an explicit io_uring setup.
pub fn spawn_shards_with<P, F, Fut>(
    per_shard: Vec<P>,
    pin: bool,
    uring: UringSetup,
    main: F,
) -> std::io::Result<Shards>
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
                let mut rt = match build_shard_runtime(id, uring) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn trigger_shuts_registered_listeners_at_once() {
        let shutdown = Shutdown::new();
        let listeners = bind_reuseport(
            "127.0.0.1:0".parse().unwrap(),
            2,
            PortSharing::ThisProcessOnly,
        )
        .unwrap();
        let addr = listeners[0].local_addr().unwrap();
        for l in &listeners {
            shutdown.close_on_trigger(l).unwrap();
        }
        // Before the drain: connections land in a backlog.
        let queued = std::net::TcpStream::connect(addr).unwrap();
        shutdown.trigger();
        // Nothing listens any more, though the shards still hold their sockets.
        let e = std::net::TcpStream::connect(addr).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        // The backlogged connection was reset.
        let mut b = [0u8; 1];
        let r = std::io::Read::read(&mut &queued, &mut b);
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        // A listener registered after the drain began is shut at once.
        let late = bind_reuseport(
            "127.0.0.1:0".parse().unwrap(),
            1,
            PortSharing::ThisProcessOnly,
        )
        .unwrap();
        let late_addr = late[0].local_addr().unwrap();
        shutdown.close_on_trigger(&late[0]).unwrap();
        assert!(std::net::TcpStream::connect(late_addr).is_err());
        assert!(shutdown.is_draining());
    }

    #[test]
    fn nofile_limit_can_be_raised_to_the_hard_limit() {
        let (soft, hard) = nofile_limit().unwrap();
        assert!(soft <= hard);
        let now = raise_nofile_limit().unwrap();
        assert!(now >= soft && now <= hard.min(NOFILE_CEILING).max(soft));
    }

    #[test]
    fn a_second_group_on_a_held_port_is_refused_unless_sharing_is_asked_for() -> std::io::Result<()>
    {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let first = bind_reuseport(any, 3, PortSharing::ThisProcessOnly)?;
        let addr = first[0].local_addr()?;
        assert!(first.iter().all(|l| l.local_addr().ok() == Some(addr)));
        // What a second gateway does: the probe finds the listeners.
        let e = bind_reuseport(addr, 2, PortSharing::ThisProcessOnly)
            .err()
            .ok_or_else(|| std::io::Error::other("second group bound"))?;
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        // The upgrade path joins the group (same user), as the kernel allows.
        let joined = bind_reuseport(addr, 1, PortSharing::WithOtherProcesses)?;
        drop((first, joined));
        // Once the listeners are gone, the port is free again.
        let again = bind_reuseport(addr, 2, PortSharing::ThisProcessOnly)?;
        assert_eq!(again.len(), 2);
        Ok(())
    }

    #[test]
    fn uring_setup_names_parse() {
        assert_eq!(UringSetup::parse("coop"), Some(UringSetup::Coop));
        assert_eq!(UringSetup::parse("defer"), Some(UringSetup::Defer));
        assert_eq!(UringSetup::parse("plain"), Some(UringSetup::Plain));
        assert_eq!(UringSetup::parse("fast"), None);
        assert_eq!(UringSetup::default(), UringSetup::Coop);
    }

    #[test]
    fn every_setup_builds_a_runtime_that_runs() {
        for setup in [UringSetup::Plain, UringSetup::Coop, UringSetup::Defer] {
            let mut rt = match build_shard_runtime(0, setup) {
                Ok(rt) => rt,
                Err(e) => panic!("{setup:?}: {e}"),
            };
            let v = rt.block_on(async {
                monoio::time::sleep(Duration::from_millis(1)).await;
                7
            });
            assert_eq!(v, 7, "{setup:?}");
        }
    }
}
