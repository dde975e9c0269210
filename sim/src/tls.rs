//! HTTPS for the simulated server (`--tls-cert PATH --tls-key PATH`): one
//! rustls server configuration (ring provider, TLS 1.3 and 1.2, ALPN `h2`
//! then `http/1.1`: gRPC and HTTP/1.1 on the same port) from a PEM certificate chain and key, so tests can put a
//! backend behind a `BackendTLSPolicy`. The handshake runs on the connection's
//! task (tokio-rustls) before hyper sees the stream; a client that fails it is
//! dropped, counted in `/sim/stats` as `tls_handshake_failures_total`.

use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::SimConfig;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// The acceptor `config` asks for; `None` without `--tls-cert`. An error names
/// the file that cannot be used, or a flag given without the other.
pub(crate) fn acceptor(config: &SimConfig) -> io::Result<Option<TlsAcceptor>> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err(invalid("--tls-cert and --tls-key go together".into())),
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| invalid(format!("{}: {e}", p.display())))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| invalid(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("--tls-cert/--tls-key: {e}")))?;
    // h2 for gRPC clients (hyper's auto builder serves both on the stream).
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(cfg))))
}
