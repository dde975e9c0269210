//! Remote JWK sets: the control thread's fetch loop, one per `remoteJWKS`
//! provider ([`crate::jwt::KeySource::Remote`]).
//!
//! Each loop fetches its set at start, then again every `cacheDuration`
//! (default 5 min) and, within [`POLL`] (50 ms), when a shard asked for it: a
//! token named an unknown `kid` or the provider had no keys yet. Shards ask at
//! most once per [`crate::jwt::REFETCH_MIN_INTERVAL`] (10 s) per provider, so
//! a flood of unknown `kid`s costs at most one fetch per 10 s. A 200 with a
//! JWK set holding at least one usable key replaces the provider's set (an
//! `ArcSwap`: shards never wait); anything else keeps the last one and is
//! logged. Each fetch is bounded by [`FETCH_TIMEOUT`] (5 s) and
//! [`crate::upstream::MAX_BODY`].
//!
//! `http://` and `https://` URIs are fetched. An `https://` server is
//! verified as a backend under a `BackendTLSPolicy` is ([`crate::upstream_tls`]):
//! SNI and the verified name are the URI's host, trusted roots are Mozilla's
//! (`webpki-roots`) plus the certificates of `--jwks-ca-file` when given (a
//! private CA); a failed verification is a failed fetch (logged, the last key
//! set kept). A host name is resolved at each fetch on a short-lived thread
//! of its own (the control thread polls for the answer every [`DNS_POLL`],
//! 10 ms, within [`FETCH_TIMEOUT`]): a slow resolver never stalls scrapes and
//! health checks; an IP address needs no lookup.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use monoio::time::Instant;

use crate::jwt::{Authenticator, KeySet, KeySource};
use crate::upstream::{connect, exchange_whole};
use crate::upstream_tls::{add_pem, system_roots, UpstreamTls};

/// How often a loop checks for a shard's refetch request (50 ms).
pub const POLL: Duration = Duration::from_millis(50);
/// Bound on one fetch: connect, request and whole response (5 s).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the control thread looks for a host name's resolution (10 ms).
pub const DNS_POLL: Duration = Duration::from_millis(10);
/// Wait before retrying a failed fetch when no shard asks sooner (30 s).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// An `http[s]://host[:port]/path` URI, split.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpUri<'a> {
    /// `https://`.
    pub tls: bool,
    /// `host[:port]`, for `Host`.
    pub authority: &'a str,
    /// Host alone (brackets kept off an IPv6 literal).
    pub host: &'a str,
    /// Port (80, or 443 for `https://`, when absent).
    pub port: u16,
    /// Path and query, `/` when absent.
    pub path: &'a str,
}

/// Split an `http://` or `https://` URI; `None` for another scheme or a
/// malformed one.
pub fn parse_http_uri(uri: &str) -> Option<HttpUri<'_>> {
    let (tls, rest) = match uri.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, uri.strip_prefix("http://")?),
    };
    let default_port = if tls { 443 } else { 80 };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']')?;
            match after.strip_prefix(':') {
                Some(p) => (h, p.parse().ok()?),
                None if after.is_empty() => (h, default_port),
                None => return None,
            }
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, default_port),
        },
    };
    if host.is_empty() {
        return None;
    }
    Some(HttpUri {
        tls,
        authority,
        host,
        port,
        path,
    })
}

/// The roots `https://` JWK set servers are verified against: Mozilla's,
/// plus every certificate of the PEM file `ca_file` when given (`Err` names
/// the file).
pub fn roots(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, String> {
    let mut roots = system_roots();
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("--jwks-ca-file {}: {e}", path.display()))?;
        add_pem(&mut roots, &pem).map_err(|e| format!("--jwks-ca-file {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Start one fetch loop per remote provider on the current (control)
/// runtime; `https://` servers are verified against `roots`.
pub fn spawn_all(auth: &Arc<Authenticator>, roots: &Arc<rustls::RootCertStore>) {
    for (i, p) in auth.providers().enumerate() {
        if matches!(p.source(), KeySource::Remote { .. }) {
            monoio::spawn(fetch_loop(Arc::downgrade(auth), i, roots.clone()));
        }
    }
}

/// Fetch provider `index`'s keys on its interval (and at once when a shard
/// asks) for as long as its authenticator serves: a reload that replaces it
/// ends the loop.
async fn fetch_loop(
    auth: std::sync::Weak<Authenticator>,
    index: usize,
    roots: Arc<rustls::RootCertStore>,
) {
    let (name, uri, refresh) = {
        let Some(a) = auth.upgrade() else { return };
        let Some(provider) = a.providers().nth(index) else {
            return;
        };
        let KeySource::Remote { uri, refresh } = provider.source() else {
            return;
        };
        (provider.name.clone(), uri.clone(), *refresh)
    };
    let refresh = refresh.max(Duration::from_secs(1));
    let Some(target) = parse_http_uri(&uri) else {
        tracing::warn!(provider = %name, uri = %uri, "remoteJWKS: not an http:// or https:// URI; tokens of this provider are refused (401 no_keys)");
        return;
    };
    let tls = if target.tls {
        let origin = format!("remoteJWKS of provider {name}");
        match UpstreamTls::new(target.host, (*roots).clone(), &[], origin) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::warn!(provider = %name, uri = %uri, error = %e, "remoteJWKS: cannot set up TLS; tokens of this provider are refused (401 no_keys)");
                return;
            }
        }
    } else {
        None
    };
    let mut req = Vec::new();
    loop {
        let next = match fetch(&target, tls.as_ref(), &mut req).await {
            Ok(set) => {
                let Some(a) = auth.upgrade() else { return };
                let Some(provider) = a.providers().nth(index) else {
                    return;
                };
                tracing::info!(provider = %name, keys = set.len(), "remoteJWKS fetched");
                provider.store_keys(set);
                Instant::now() + refresh
            }
            Err(e) => {
                tracing::warn!(provider = %name, uri = %uri, error = %e, "remoteJWKS fetch failed; keeping the last key set");
                Instant::now() + refresh.min(RETRY_AFTER_FAILURE)
            }
        };
        loop {
            monoio::time::sleep(POLL).await;
            let Some(a) = auth.upgrade() else {
                tracing::debug!(provider = %name, "remoteJWKS: the authenticator was replaced; this fetch loop ends");
                return;
            };
            let refetch = a.providers().nth(index).is_some_and(|p| p.take_refetch());
            if refetch || Instant::now() >= next {
                break;
            }
        }
    }
}

async fn fetch(
    target: &HttpUri<'_>,
    tls: Option<&Arc<UpstreamTls>>,
    req: &mut Vec<u8>,
) -> Result<KeySet, String> {
    let addr = resolve(target.host, target.port).await?;
    let deadline = Instant::now() + FETCH_TIMEOUT;
    let conn = connect(addr, FETCH_TIMEOUT, tls, None)
        .await
        .map_err(|e| e.message().to_string())?;
    if let Some(n) = conn
        .stream
        .tls_handshake()
        .and_then(|i| crate::upstream::CONTROL_TLS_HANDSHAKES.get(i))
    {
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    req.clear();
    req.extend_from_slice(b"GET ");
    req.extend_from_slice(target.path.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\n");
    shardgate_http::write::header(req, "host", target.authority.as_bytes());
    shardgate_http::write::header(req, "user-agent", b"shardgate");
    shardgate_http::write::header(req, "accept", b"application/json");
    shardgate_http::write::header(req, "connection", b"close");
    req.extend_from_slice(b"\r\n");
    let (reply, _) = exchange_whole(conn, req, deadline, FETCH_TIMEOUT)
        .await
        .map_err(|e| e.message().to_string())?;
    if reply.status != 200 {
        return Err(format!("status {}", reply.status));
    }
    let (set, skipped) = KeySet::from_json(&reply.body)?;
    if set.is_empty() {
        return Err(format!("no usable key ({skipped} left out)"));
    }
    Ok(set)
}

/// The first address of `host:port`, looked up on a thread of its own
/// (see the module doc).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("jwks-dns".into())
        .spawn(move || {
            let r = (name.as_str(), port)
                .to_socket_addrs()
                .map(|mut a| a.next());
            let _ = tx.send(r);
        })
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let deadline = Instant::now() + FETCH_TIMEOUT;
    loop {
        match rx.try_recv() {
            Ok(Ok(Some(addr))) => return Ok(addr),
            Ok(Ok(None)) => return Err(format!("{host} resolves to no address")),
            Ok(Err(e)) => return Err(format!("cannot resolve {host}: {e}")),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err(format!("cannot resolve {host}"))
            }
            Err(std::sync::mpsc::TryRecvError::Empty) if Instant::now() >= deadline => {
                return Err(format!("resolving {host} took over {FETCH_TIMEOUT:?}"))
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => monoio::time::sleep(DNS_POLL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_no_lookup_and_names_resolve_off_the_thread() {
        let r = shardgate_runtime::block_on(async {
            (
                resolve("127.0.0.1", 8443).await,
                resolve("localhost", 80).await,
                resolve("no-such-host.invalid", 80).await,
            )
        })
        .expect("runtime");
        assert_eq!(r.0, Ok(SocketAddr::from(([127, 0, 0, 1], 8443))));
        assert!(
            r.1.as_ref()
                .is_ok_and(|a| a.port() == 80 && a.ip().is_loopback()),
            "{:?}",
            r.1
        );
        assert!(r.2.is_err());
    }

    #[test]
    fn http_and_https_uris_split() {
        let u = parse_http_uri("http://127.0.0.1:8080/jwks?x=1");
        assert_eq!(
            u,
            Some(HttpUri {
                tls: false,
                authority: "127.0.0.1:8080",
                host: "127.0.0.1",
                port: 8080,
                path: "/jwks?x=1"
            })
        );
        let u = parse_http_uri("http://auth.example").map(|u| (u.host, u.port, u.path));
        assert_eq!(u, Some(("auth.example", 80, "/")));
        let u = parse_http_uri("http://[::1]:9/k").map(|u| (u.host, u.port));
        assert_eq!(u, Some(("::1", 9)));
        let u = parse_http_uri("https://auth.example/jwks").map(|u| (u.tls, u.host, u.port));
        assert_eq!(u, Some((true, "auth.example", 443)));
        let u = parse_http_uri("https://127.0.0.1:8443").map(|u| (u.tls, u.port, u.path));
        assert_eq!(u, Some((true, 8443, "/")));
        assert_eq!(parse_http_uri("ftp://auth.example/jwks"), None);
        assert_eq!(parse_http_uri("http://u:p@h/jwks"), None);
        assert_eq!(parse_http_uri("http:///jwks"), None);
        assert_eq!(parse_http_uri("http://h:notaport/"), None);
    }
}
