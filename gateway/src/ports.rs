//! The served ports: one `SO_REUSEPORT` socket per shard for every port a
//! served listener names, bound at start and, when a reload adds or removes
//! listeners, bound or unbound while the gateway runs.
//!
//! Listeners that share a port share its sockets; a connection remembers the
//! port it came in on (the configuration's number, before `--listen-port`
//! moves the first one), and each request finds that port's listeners in the
//! state in force (`state::GatewayState::listeners_on`), so listener
//! indices may change from one configuration to the next.
//!
//! A reload ([`Ports::plan`] then [`Ports::apply`]):
//! - **a new port** is bound (one socket per shard) before anything else
//!   changes, so a port that cannot be bound leaves the running configuration
//!   as it was; after the new state is in force, each shard gets its socket
//!   through its inbox (an `mpsc` channel it drains every 250 ms, off the
//!   request path) and starts accepting;
//! - **a removed port** (or one whose listeners switch between `HTTP` and
//!   `HTTPS`, which is removed and bound again) is shut after the new state is
//!   in force: its sockets leave the `SO_REUSEPORT` group, their backlogs are
//!   reset and the accept loops end. Its open connections get a 404 with
//!   `Connection: close` for their next request (no listener is left to route
//!   it);
//! - **an `HTTPS` port whose listeners changed** (another hostname, another
//!   certificate) gets its certificates replaced for the handshakes that
//!   follow; connections that exist keep theirs.
//!
//! `--port-map FROM=TO` moves any port, at start and whenever a reload binds
//! it (two gateways on one host, unprivileged ports); `--listen-port` moves
//! the first port no `--port-map` names.
//!
//! The port `--listen-port` replaced at start keeps its socket while the
//! configuration keeps its number; a reload that removes it, or turns it
//! between `HTTP` and `HTTPS`, waits for a restart (`restart_required`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use shardgate_routing::ListenerInfo;
use shardgate_runtime::{PortSharing, Shutdown};

use crate::tls::{Certs, PortTls};

/// One served port on one shard: the port's number in the configuration,
/// its TLS configuration when its listeners are `HTTPS`, the shard's
/// pre-bound socket, and the flag a reload sets when the port goes.
pub struct PortSocket {
    /// The port as the configuration names it (the key of
    /// `state::GatewayState::listeners_on`).
    pub port: u16,
    /// The port's rustls configuration (`HTTPS` listeners), shared by shards.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// This shard's socket.
    pub socket: StdListener,
    /// Set when a reload removed the port: the accept loop ends.
    pub closed: Arc<AtomicBool>,
}

/// What a shard starts with: its sockets, and the inbox through which a
/// reload hands it the sockets of new ports.
pub struct ShardPorts {
    /// One socket per port served at start.
    pub sockets: Vec<PortSocket>,
    /// New ports' sockets, from reloads.
    pub inbox: mpsc::Receiver<PortSocket>,
}

/// Served listeners grouped by port (listener indices in `listeners`' order).
pub fn served(listeners: &[ListenerInfo]) -> BTreeMap<u16, Vec<usize>> {
    let mut ports: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.served {
            ports.entry(l.port).or_default().push(i);
        }
    }
    ports
}

/// One bound port.
struct Bound {
    /// The configuration's number for it.
    port: u16,
    /// Where it listens.
    addr: SocketAddr,
    /// Its listeners (indices in the configuration in force).
    listeners: Vec<usize>,
    /// Its certificates, when its listeners are `HTTPS`.
    tls: Option<PortTls>,
    /// A duplicate of each shard's socket, to shut it when the port goes.
    sockets: Vec<StdListener>,
    closed: Arc<AtomicBool>,
    /// `--listen-port` moved it at start.
    overridden: bool,
}

/// How ports are bound (from the command line).
#[derive(Clone)]
pub struct BindSettings {
    /// `--bind`.
    pub ip: IpAddr,
    /// `--listen-port`: replaces the first port's number at start.
    pub listen_port: Option<u16>,
    /// `--port-map FROM=TO`: the configuration's port FROM listens on TO,
    /// whenever it is bound (at start or by a reload).
    pub port_map: Vec<(u16, u16)>,
    /// `--reuse-port-with-other-processes`.
    pub sharing: PortSharing,
    /// `--tls-unknown-sni reject`.
    pub reject_unknown_sni: bool,
    /// Number of shards (one socket each per port).
    pub shards: usize,
}

/// Every served port, and the shards' inboxes (held by the reloader).
pub struct Ports {
    settings: BindSettings,
    bound: Vec<Bound>,
    inboxes: Vec<mpsc::Sender<PortSocket>>,
}

/// A reload's port changes, bound and checked, not yet in force.
pub struct PortPlan {
    /// New ports with their sockets (one per shard).
    add: Vec<(Bound, Vec<StdListener>)>,
    /// Ports (configuration numbers) to shut.
    remove: Vec<u16>,
    /// Ports that stay, with their new listeners and certificates.
    keep: Vec<(u16, Vec<usize>, Option<Certs>)>,
}

/// Why a configuration without a served listener cannot be served.
const NOTHING_TO_SERVE: &str =
    "no Gateway listener with protocol HTTP, HTTPS or GRPC: nothing to serve";

fn bind_error(addr: SocketAddr, e: &std::io::Error, sharing: PortSharing) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse && sharing == PortSharing::ThisProcessOnly {
        format!(
            "cannot listen on {addr}: address in use by another process (is another shardgate running? pass --reuse-port-with-other-processes to share the port for a zero-downtime upgrade): {e}"
        )
    } else {
        format!("cannot listen on {addr}: {e}")
    }
}

impl BindSettings {
    /// The `--port-map` target of the configuration's `port`, if any.
    fn mapped(&self, port: u16) -> Option<u16> {
        self.port_map
            .iter()
            .rev()
            .find(|(from, _)| *from == port)
            .map(|(_, to)| *to)
    }

    /// Where the configuration's `port` listens when a reload binds it.
    fn number_for(&self, port: u16) -> u16 {
        self.mapped(port).unwrap_or(port)
    }
}

impl Ports {
    /// Bind every served port of `all` for the start: the shards' sockets
    /// (with their inboxes) and the registry the reloader keeps. Start
    /// sockets are shut by `shutdown`'s drain.
    pub fn bind(
        settings: BindSettings,
        all: &[ListenerInfo],
        shutdown: &Shutdown,
    ) -> Result<(Ports, Vec<ShardPorts>), String> {
        let shards = settings.shards.max(1);
        let mut ports = served(all);
        if ports.is_empty() {
            return Err(NOTHING_TO_SERVE.to_string());
        }
        let overridden = match settings.listen_port {
            Some(p) => ports
                .keys()
                .find(|port| settings.mapped(**port).is_none())
                .map(|first| (*first, p)),
            None => None,
        };
        if let Some((from, to)) = overridden {
            tracing::info!(from, to, "listener port overridden by --listen-port");
        }
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards).map(|_| mpsc::channel()).unzip();
        let mut per_shard: Vec<ShardPorts> = rxs
            .into_iter()
            .map(|inbox| ShardPorts {
                sockets: Vec::new(),
                inbox,
            })
            .collect();
        let mut registry = Ports {
            settings,
            bound: Vec::new(),
            inboxes: txs,
        };
        for (port, listeners) in std::mem::take(&mut ports) {
            let number = match overridden {
                Some((from, to)) if from == port => to,
                _ => registry.settings.number_for(port),
            };
            let (bound, sockets) = registry.bind_port(port, number, listeners, all)?;
            for s in &sockets {
                shutdown
                    .close_on_trigger(s)
                    .map_err(|e| format!("cannot prepare {} for the drain: {e}", bound.addr))?;
            }
            for (shard, socket) in sockets.into_iter().enumerate() {
                if let Some(p) = per_shard.get_mut(shard) {
                    p.sockets.push(PortSocket {
                        port,
                        tls: bound.tls.as_ref().map(|t| t.config.clone()),
                        socket,
                        closed: bound.closed.clone(),
                    });
                }
            }
            registry.bound.push(Bound {
                overridden: overridden.is_some_and(|(from, _)| from == port),
                ..bound
            });
        }
        Ok((registry, per_shard))
    }

    /// Bind `number` for the configuration's `port` (one socket per shard).
    fn bind_port(
        &self,
        port: u16,
        number: u16,
        listeners: Vec<usize>,
        all: &[ListenerInfo],
    ) -> Result<(Bound, Vec<StdListener>), String> {
        let s = &self.settings;
        let addr = SocketAddr::new(s.ip, number);
        let tls = crate::tls::port_config(all, &listeners, s.reject_unknown_sni)?;
        let sockets = shardgate_runtime::bind_reuseport(addr, s.shards.max(1), s.sharing)
            .map_err(|e| bind_error(addr, &e, s.sharing))?;
        let addr = match sockets.first() {
            Some(first) => first.local_addr().map_err(|e| e.to_string())?,
            None => addr,
        };
        let dups = sockets
            .iter()
            .map(|s| s.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        Ok((
            Bound {
                port,
                addr,
                listeners,
                tls,
                sockets: dups,
                closed: Arc::new(AtomicBool::new(false)),
                overridden: false,
            },
            sockets,
        ))
    }

    /// The addresses served now, one per port.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.bound.iter().map(|b| b.addr).collect()
    }

    /// (configuration port, address) of every port served now.
    pub fn listening(&self) -> Vec<(u16, SocketAddr)> {
        self.bound.iter().map(|b| (b.port, b.addr)).collect()
    }

    /// New certificates for every `HTTPS` port from `all` (a reload whose
    /// only change is Secrets; the listeners as now). Nothing changes until
    /// [`Ports::install_certs`].
    pub fn prepare_certs(&self, all: &[ListenerInfo]) -> Result<Vec<(u16, Certs)>, String> {
        self.bound
            .iter()
            .filter_map(|b| Some((b.port, b.tls.as_ref()?, &b.listeners)))
            .map(|(port, tls, listeners)| Ok((port, tls.prepare(all, listeners)?)))
            .collect()
    }

    /// Serve `certs` on the next handshakes of their ports.
    pub fn install_certs(&self, certs: Vec<(u16, Certs)>) {
        for (port, c) in certs {
            if let Some(tls) = self
                .bound
                .iter()
                .find(|b| b.port == port)
                .and_then(|b| b.tls.as_ref())
            {
                tls.install(c);
            }
        }
    }

    /// Why `all`'s ports cannot be served without a restart: the port
    /// `--listen-port` moved at start is removed or switches between `HTTP`
    /// and `HTTPS`. None when they can.
    pub fn restart_needed(&self, all: &[ListenerInfo]) -> Option<String> {
        let want = served(all);
        self.bound.iter().filter(|b| b.overridden).find_map(|b| {
            let stays = want.get(&b.port).is_some_and(|ls| {
                ls.iter().any(|&i| is_tls(all, i)) == b.tls.is_some()
            });
            (!stays).then(|| {
                format!(
                    "listener port {} (served on {} through --listen-port) is removed or switches between HTTP and HTTPS",
                    b.port, b.addr
                )
            })
        })
    }

    /// How many ports serve TLS.
    pub fn tls_ports(&self) -> usize {
        self.bound.iter().filter(|b| b.tls.is_some()).count()
    }

    /// The port changes `all` (a reload's listeners) asks for: new ports bound,
    /// the certificates of kept `HTTPS` ports checked. Nothing serves
    /// differently until [`Ports::apply`]; an `Err` (a port that cannot be
    /// bound, a certificate that cannot be used, a change to the
    /// `--listen-port` port) changes nothing, and the sockets bound so far
    /// close with the plan.
    pub fn plan(&self, all: &[ListenerInfo]) -> Result<PortPlan, String> {
        if let Some(why) = self.restart_needed(all) {
            return Err(why);
        }
        let want = served(all);
        if want.is_empty() {
            return Err(NOTHING_TO_SERVE.to_string());
        }
        let mut plan = PortPlan {
            add: Vec::new(),
            remove: Vec::new(),
            keep: Vec::new(),
        };
        for b in &self.bound {
            let tls_now = b.tls.is_some();
            let tls_then = want
                .get(&b.port)
                .is_some_and(|ls| ls.iter().any(|&i| is_tls(all, i)));
            let stays = want.contains_key(&b.port) && tls_now == tls_then;
            if !stays {
                plan.remove.push(b.port);
            }
        }
        for (port, listeners) in want {
            let kept = self
                .bound
                .iter()
                .find(|b| b.port == port && !plan.remove.contains(&b.port));
            match kept {
                Some(b) => {
                    let certs = b
                        .tls
                        .as_ref()
                        .map(|tls| tls.prepare(all, &listeners))
                        .transpose()?;
                    plan.keep.push((port, listeners, certs));
                }
                None => plan.add.push(self.bind_port(
                    port,
                    self.settings.number_for(port),
                    listeners,
                    all,
                )?),
            }
        }
        Ok(plan)
    }

    /// Put `plan` in force (after the state that routes on it): kept ports
    /// take their listeners and certificates, removed ones are shut, new ones
    /// go to the shards. Returns (ports added, ports removed).
    pub fn apply(&mut self, plan: PortPlan) -> (usize, usize) {
        let (added, removed) = (plan.add.len(), plan.remove.len());
        for (port, listeners, certs) in plan.keep {
            if let Some(b) = self.bound.iter_mut().find(|b| b.port == port) {
                b.listeners = listeners;
                if let (Some(tls), Some(c)) = (&b.tls, certs) {
                    tls.install(c);
                }
            }
        }
        for port in plan.remove {
            if let Some(i) = self.bound.iter().position(|b| b.port == port) {
                let b = self.bound.remove(i);
                b.closed.store(true, Ordering::Release);
                for s in &b.sockets {
                    shut(s);
                }
                tracing::info!(port, addr = %b.addr, "listener port unbound by a reload");
            }
        }
        for (bound, sockets) in plan.add {
            for (shard, socket) in sockets.into_iter().enumerate() {
                if let Some(tx) = self.inboxes.get(shard) {
                    let _ = tx.send(PortSocket {
                        port: bound.port,
                        tls: bound.tls.as_ref().map(|t| t.config.clone()),
                        socket,
                        closed: bound.closed.clone(),
                    });
                }
            }
            tracing::info!(port = bound.port, addr = %bound.addr, tls = bound.tls.is_some(), "listener port bound by a reload");
            self.bound.push(bound);
        }
        (added, removed)
    }
}

fn is_tls(all: &[ListenerInfo], i: usize) -> bool {
    all.get(i)
        .is_some_and(|l| l.protocol.eq_ignore_ascii_case("HTTPS"))
}

/// Take a listening socket out of its `SO_REUSEPORT` group: its backlog is
/// reset, a waiting accept wakes and fails.
fn shut(l: &StdListener) {
    if let Err(e) = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Read) {
        tracing::debug!(error = %e, "shutting a listening socket");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(listen_port: Option<u16>, port_map: Vec<(u16, u16)>) -> BindSettings {
        BindSettings {
            ip: IpAddr::from([127, 0, 0, 1]),
            listen_port,
            port_map,
            sharing: PortSharing::ThisProcessOnly,
            reject_unknown_sni: false,
            shards: 1,
        }
    }

    #[test]
    fn a_port_map_moves_its_port_and_the_last_entry_wins() {
        let s = settings(None, vec![(50051, 0), (8080, 9000), (8080, 9001)]);
        assert_eq!(s.number_for(50051), 0);
        assert_eq!(s.number_for(8080), 9001);
        assert_eq!(s.number_for(8443), 8443);
        assert_eq!(s.mapped(8443), None);
    }
}
