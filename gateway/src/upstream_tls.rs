//! Upstream TLS settings: what a connection to a backend (or a `remoteJWKS`
//! server) over TLS verifies, built once, shared by `Arc`.
//!
//! The routing table says which endpoints a `BackendTLSPolicy` covers
//! ([`shardgate_routing::EndpointInfo::tls`]); [`for_endpoints`] turns each
//! policy into one [`UpstreamTls`] (one rustls `ClientConfig`, `ring`
//! provider, as the listeners use) and hands every endpoint of the policy the
//! same `Arc`, so the shards' pools and the control thread's clients resume
//! sessions across connections. Choices and numbers:
//! - trust: the policy's CA bundles (every PEM certificate of each
//!   ConfigMap's `ca.crt`), or with `wellKnownCACertificates: System`
//!   Mozilla's roots compiled in (`webpki-roots`: no file on the host needed);
//! - names: SNI is `hostname`; the certificate must be valid for `hostname`,
//!   or, when `subjectAltNames` lists names, for one of them (tried in order);
//! - TLS 1.3 and 1.2, ALPN `http/1.1` (`h2` to gRPC backends and to those
//!   whose port speaks HTTP/2, which must choose it), session resumption on (rustls'
//!   in-memory store: 256 servers, tickets and TLS 1.2 session ids); no client
//!   certificate (no mTLS to backends);
//! - a handshake failure becomes a short fixed message ([`describe`]) that
//!   the client's 502 body and the logs carry: a certificate not valid for
//!   the name, signed by an unknown CA, expired, or a backend that does not
//!   speak TLS.
//!
//! `tls_handshake` runs the client handshake on a shard's (or the control
//! thread's) socket for both upstream clients, HTTP/1.1 and HTTP/2.

use std::net::SocketAddr;
use std::sync::Arc;

use monoio::net::TcpStream;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use shardgate_routing::{BackendTls, EndpointInfo};

use crate::error::{UpstreamError, UpstreamErrorKind};
use crate::tls::{HandshakeError, TlsStream};

/// How connections to one set of servers are secured: the rustls
/// configuration (with its session cache) and the name sent as SNI.
#[derive(Debug)]
pub struct UpstreamTls {
    /// Shared by every connection it makes (sessions resume across them).
    pub config: Arc<ClientConfig>,
    /// The same with ALPN `h2` only, for gRPC backends (`h2_upstream`);
    /// it shares the session store.
    pub h2_config: Arc<ClientConfig>,
    /// SNI, and the name verified when no other names are listed.
    pub server_name: ServerName<'static>,
    /// Where it came from, for logs: `BackendTLSPolicy ns/name` or `remoteJWKS`.
    pub origin: String,
}

impl UpstreamTls {
    /// A client connection for one handshake.
    pub fn connection(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
    }

    /// A client connection for one handshake that offers only `h2`.
    pub fn h2_connection(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.h2_config.clone(), self.server_name.clone())
    }

    /// Settings for `hostname`, trusting `roots`, accepting a certificate
    /// valid for one of `alt_names` instead of `hostname` when not empty.
    pub fn new(
        hostname: &str,
        roots: RootCertStore,
        alt_names: &[String],
        origin: String,
    ) -> Result<Self, String> {
        let server_name = ServerName::try_from(hostname.to_owned())
            .map_err(|_| format!("{origin}: {hostname:?} is not a valid server name"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("{origin}: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = if alt_names.is_empty() {
            webpki
        } else {
            let names = alt_names
                .iter()
                .map(|n| {
                    ServerName::try_from(n.clone())
                        .map_err(|_| format!("{origin}: {n:?} is not a valid DNS name"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(AltNames {
                inner: webpki,
                names,
            })
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("{origin}: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut h2_config = config.clone();
        h2_config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(UpstreamTls {
            config: Arc::new(config),
            h2_config: Arc::new(h2_config),
            server_name,
            origin,
        })
    }

    /// The settings a resolved `BackendTLSPolicy` asks for. `Err` names the
    /// policy and the ConfigMap whose bundle cannot be used.
    pub fn from_policy(b: &BackendTls) -> Result<Self, String> {
        let origin = format!("BackendTLSPolicy {}", b.policy);
        let roots = if b.system_roots {
            system_roots()
        } else {
            let mut roots = RootCertStore::empty();
            for (from, pem) in &b.ca_bundles {
                add_pem(&mut roots, pem.as_bytes())
                    .map_err(|e| format!("{origin}: {from}: ca.crt: {e}"))?;
            }
            roots
        };
        Self::new(&b.hostname, roots, &b.subject_alt_names, origin)
    }
}

/// Mozilla's root certificates (`webpki-roots`).
pub fn system_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// Add every certificate of a PEM bundle to `roots`; an error when one does
/// not parse or the bundle has none.
pub fn add_pem(roots: &mut RootCertStore, pem: &[u8]) -> Result<(), String> {
    let mut n = 0;
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
        roots
            .add(der)
            .map_err(|e| format!("certificate {n} is not a usable CA: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("no PEM certificate".into());
    }
    Ok(())
}

/// Per endpoint (indexed like `endpoints`), its TLS settings: one
/// [`UpstreamTls`] per policy, shared by the policy's endpoints; `None` for
/// plaintext endpoints.
pub fn for_endpoints(endpoints: &[EndpointInfo]) -> Result<Vec<Option<Arc<UpstreamTls>>>, String> {
    let mut built: Vec<(&Arc<BackendTls>, Arc<UpstreamTls>)> = Vec::new();
    let mut out = Vec::with_capacity(endpoints.len());
    for e in endpoints {
        let Some(b) = &e.tls else {
            out.push(None);
            continue;
        };
        if let Some((_, t)) = built.iter().find(|(p, _)| Arc::ptr_eq(p, b)) {
            out.push(Some(t.clone()));
            continue;
        }
        let t = Arc::new(UpstreamTls::from_policy(b)?);
        built.push((b, t.clone()));
        out.push(Some(t));
    }
    Ok(out)
}

/// A short, fixed account of a failed handshake, for the client's error body,
/// the metric's log line and the attempt's last error.
pub fn describe(e: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "TLS: certificate not valid for the name the BackendTLSPolicy verifies"
            }
            CertificateError::UnknownIssuer => "TLS: certificate signed by an unknown CA",
            // An issuer named like a trusted CA whose key did not sign it.
            CertificateError::BadSignature => {
                "TLS: certificate signed by an unknown CA (its signature does not verify)"
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                "TLS: certificate expired or not yet valid"
            }
            _ => "TLS: certificate verification failed",
        },
        E::AlertReceived(_) => "TLS: the backend refused the handshake",
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => {
            "TLS: handshake failed (does the backend speak TLS?)"
        }
        _ => "TLS: handshake failed",
    }
}

/// Accepts a certificate valid for any of `names` (`subjectAltNames`),
/// whatever name the connection was opened with.
#[derive(Debug)]
struct AltNames {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AltNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS handshake with backend `addr` on `stream`, under `tls`, offering
/// ALPN `h2` (gRPC, `h2_upstream`) or `http/1.1`. A failure is a
/// [`UpstreamErrorKind::Tls`] error with a short reason ([`describe`]).
pub(crate) async fn tls_handshake(
    stream: TcpStream,
    addr: SocketAddr,
    tls: &UpstreamTls,
    h2: bool,
) -> Result<TlsStream<rustls::ClientConnection>, UpstreamError> {
    let conn = if h2 {
        tls.h2_connection()
    } else {
        tls.connection()
    };
    let conn = conn.map_err(|e| {
        tracing::warn!(endpoint = %addr, origin = %tls.origin, error = %e, "TLS setup failed");
        UpstreamError::new(UpstreamErrorKind::Tls, "TLS: handshake failed")
    })?;
    crate::tls::connect(stream, conn).await.map_err(|e| {
        let why = match &e {
            HandshakeError::Tls(t) => describe(t),
            _ => "TLS: handshake failed (does the backend speak TLS?)",
        };
        // The caller logs `why` (rate-limited where it repeats); the details
        // (names expected and presented) are for debugging.
        tracing::debug!(endpoint = %addr, origin = %tls.origin, error = ?e, "{why}");
        UpstreamError::new(UpstreamErrorKind::Tls, why)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ServerConfig, ServerConnection};

    struct Ca {
        key: KeyPair,
        cert: rcgen::Certificate,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca { key, cert }
    }

    /// A server configuration with a leaf for `names` signed by `ca`.
    fn server(ca: &Ca, names: &[&str]) -> Arc<ServerConfig> {
        let key = KeyPair::generate().unwrap();
        let p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        Arc::new(cfg)
    }

    fn policy(ca: &Ca, hostname: &str, alt: &[&str]) -> BackendTls {
        BackendTls {
            policy: "ns/p".into(),
            hostname: hostname.into(),
            ca_bundles: vec![("ConfigMap ns/ca".into(), ca.cert.pem())],
            system_roots: false,
            subject_alt_names: alt.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Run a handshake in memory; the client's verdict.
    fn handshake(tls: &UpstreamTls, server: Arc<ServerConfig>) -> Result<(), rustls::Error> {
        session(tls, server).map(|_| ())
    }

    /// Run a handshake in memory, then hand the client what the server sent
    /// after it (session tickets); the client connection.
    fn session(
        tls: &UpstreamTls,
        server: Arc<ServerConfig>,
    ) -> Result<ClientConnection, rustls::Error> {
        let mut c = tls.connection().unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        let mut done = false;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                s.read_tls(&mut &buf[..]).unwrap();
                // The server's own errors follow the client's alert.
                let _ = s.process_new_packets();
            }
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets()?;
            }
            if done {
                return Ok(c);
            }
            done = !c.is_handshaking() && !s.is_handshaking();
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn the_policy_name_and_ca_verify_and_failures_say_why() {
        let a = ca("a");
        let tls = UpstreamTls::from_policy(&policy(&a, "vllm.internal", &[])).unwrap();
        assert_eq!(tls.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        handshake(&tls, server(&a, &["vllm.internal"])).unwrap();
        let e = handshake(&tls, server(&a, &["other.internal"])).unwrap_err();
        assert_eq!(
            describe(&e),
            "TLS: certificate not valid for the name the BackendTLSPolicy verifies"
        );
        let e = handshake(&tls, server(&ca("b"), &["vllm.internal"])).unwrap_err();
        assert_eq!(describe(&e), "TLS: certificate signed by an unknown CA");
    }

    #[test]
    fn a_second_connection_resumes_the_session() {
        let a = ca("a");
        let tls = UpstreamTls::from_policy(&policy(&a, "vllm.internal", &[])).unwrap();
        let server = server(&a, &["vllm.internal"]);
        let first = session(&tls, server.clone()).unwrap();
        assert_eq!(first.handshake_kind(), Some(rustls::HandshakeKind::Full));
        let second = session(&tls, server).unwrap();
        assert_eq!(
            second.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
    }

    #[test]
    fn subject_alt_names_replace_the_hostname_in_verification() {
        let a = ca("a");
        let tls =
            UpstreamTls::from_policy(&policy(&a, "sni.internal", &["x.internal", "y.internal"]))
                .unwrap();
        handshake(&tls, server(&a, &["y.internal"])).unwrap();
        // Valid for the SNI name only: not enough once names are listed.
        let e = handshake(&tls, server(&a, &["sni.internal"])).unwrap_err();
        assert!(describe(&e).contains("not valid for the name"), "{e}");
    }

    #[test]
    fn a_bad_bundle_names_the_policy_and_config_map() {
        let a = ca("a");
        let mut p = policy(&a, "vllm.internal", &[]);
        p.ca_bundles[0].1 =
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n".into();
        let e = UpstreamTls::from_policy(&p).unwrap_err();
        assert!(
            e.starts_with("BackendTLSPolicy ns/p: ConfigMap ns/ca: ca.crt:"),
            "{e}"
        );
        let mut p = policy(&a, "vllm.internal", &[]);
        p.ca_bundles[0].1 = "no pem here".into();
        let e = UpstreamTls::from_policy(&p).unwrap_err();
        assert!(e.ends_with("no PEM certificate"), "{e}");
    }

    #[test]
    fn endpoints_of_one_policy_share_one_configuration() {
        let a = ca("a");
        let p = Arc::new(policy(&a, "vllm.internal", &[]));
        let ep = |port: u16, tls: Option<Arc<BackendTls>>| EndpointInfo {
            h2: false,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            backend: "ns/vllm".into(),
            node: None,
            tls,
            retired: false,
        };
        let eps = [ep(1, Some(p.clone())), ep(2, None), ep(3, Some(p))];
        let out = for_endpoints(&eps).unwrap();
        assert!(out[1].is_none());
        let (first, third) = (out[0].as_ref().unwrap(), out[2].as_ref().unwrap());
        assert!(Arc::ptr_eq(first, third));
        assert_eq!(first.origin, "BackendTLSPolicy ns/p");
    }

    #[test]
    fn system_roots_are_mozillas() {
        assert!(system_roots().len() > 100);
        let p = BackendTls {
            system_roots: true,
            ca_bundles: Vec::new(),
            ..policy(&ca("a"), "api.example.com", &[])
        };
        UpstreamTls::from_policy(&p).unwrap();
    }
}
