//! `shardgate-tls-load`: a closed-loop HTTPS load generator for `bench/tls.py`,
//! made for comparing TLS terminators.
//!
//! Two modes:
//! - `handshake`: every request opens a new TCP connection and does a **full** TLS
//!   handshake (resumption disabled on the client), sends
//!   `GET <path>` with `Connection: close`, and reads to EOF;
//! - `keepalive`: each thread holds one TLS connection and sends request after
//!   request on it.
//!
//! The client is rustls (ring) with one chosen cipher suite and protocol version,
//! so both servers negotiate exactly the same parameters (printed in the
//! result). It checks the server's handshake signature for real (the server pays
//! for a real signature) but not the certificate chain: the bench uses its own
//! self-signed certificate. Blocking sockets, one OS thread per connection; the
//! result is one JSON line on stdout: requests, errors, seconds, version, suite.
//! Why not `wrk`: it resumes TLS sessions on reconnect (every "handshake" it
//! makes is an abbreviated one) and has no cipher or version options.

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// What one request costs the server.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// A new connection and a full handshake per request.
    Handshake,
    /// One long-lived connection per thread.
    Keepalive,
}

/// Flags.
#[derive(Parser, Debug)]
#[command(about = "closed-loop HTTPS load for bench/tls.py")]
struct Args {
    /// Server address (ip:port).
    #[arg(long)]
    addr: SocketAddr,
    /// SNI name sent.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// Request path.
    #[arg(long, default_value = "/v1/models")]
    path: String,
    /// Load mode.
    #[arg(long, value_enum, default_value = "handshake")]
    mode: Mode,
    /// Concurrent connections (one thread each).
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Offer TLS 1.2 only (default: TLS 1.3 only).
    #[arg(long)]
    tls12: bool,
}

/// Accepts any certificate chain but checks the handshake signature with the
/// certificate's key, so the server's signing work is real.
#[derive(Debug)]
struct SignatureOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn config(args: &Args) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut provider = ring::default_provider();
    // One suite and one group, so every server negotiates the same thing.
    let suite = if args.tls12 {
        ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    } else {
        ring::cipher_suite::TLS13_AES_256_GCM_SHA384
    };
    let mut suites = vec![suite];
    if args.tls12 {
        suites.push(ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384);
    }
    provider.cipher_suites = suites;
    provider.kx_groups = vec![ring::kx_group::X25519];
    let provider = Arc::new(provider);
    let versions: &[&rustls::SupportedProtocolVersion] = if args.tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignatureOnly(provider)))
        .with_no_client_auth();
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn open(args: &Args, cfg: &Arc<ClientConfig>) -> std::io::Result<Tls> {
    let name = ServerName::try_from(args.sni.clone()).map_err(std::io::Error::other)?;
    let conn = ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&args.addr, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(StreamOwned::new(conn, tcp))
}

/// The negotiated version and suite, recorded once.
static NEGOTIATED: OnceLock<String> = OnceLock::new();

fn note_negotiated(tls: &Tls) {
    if NEGOTIATED.get().is_none() {
        let v = tls.conn.protocol_version().map(|v| format!("{v:?}"));
        let s = tls
            .conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()));
        let _ = NEGOTIATED.set(format!(
            "{} {}",
            v.unwrap_or_default(),
            s.unwrap_or_default()
        ));
    }
}

/// Read one response with a `Content-Length` (keep-alive mode); `false` on
/// anything unexpected.
fn read_response(tls: &mut Tls, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return false;
            }
            let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
            else {
                return false;
            };
            while buf.len() < end + 4 + len {
                match tls.read(&mut chunk) {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            return true;
        }
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn one_handshake(args: &Args, cfg: &Arc<ClientConfig>, req: &[u8]) -> bool {
    let Ok(mut tls) = open(args, cfg) else {
        return false;
    };
    if tls.write_all(req).is_err() {
        return false;
    }
    note_negotiated(&tls);
    let mut body = Vec::new();
    // Until EOF: the server closes after the answer. A peer that closes
    // without close_notify still delivered a whole answer if it starts 200.
    let _ = tls.read_to_end(&mut body);
    body.starts_with(b"HTTP/1.1 200")
}

fn worker(args: &Args, cfg: &Arc<ClientConfig>, until: Instant, ok: &AtomicU64, bad: &AtomicU64) {
    let running = || Instant::now() < until;
    match args.mode {
        Mode::Handshake => {
            let req = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                args.path, args.sni
            );
            while running() {
                let c = if one_handshake(args, cfg, req.as_bytes()) {
                    ok
                } else {
                    bad
                };
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        Mode::Keepalive => {
            let req = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", args.path, args.sni);
            let mut buf = Vec::with_capacity(16384);
            while running() {
                let Ok(mut tls) = open(args, cfg) else {
                    bad.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                while running() {
                    if tls.write_all(req.as_bytes()).is_err() || !read_response(&mut tls, &mut buf)
                    {
                        bad.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    note_negotiated(&tls);
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let cfg = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (ok, bad) = (AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    // Every worker stops at the deadline, after the request it is in.
    let until = start + Duration::from_secs_f64(args.duration);
    std::thread::scope(|s| {
        for _ in 0..args.threads.max(1) {
            s.spawn(|| worker(&args, &cfg, until, &ok, &bad));
        }
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"requests\":{},\"errors\":{},\"seconds\":{secs:.3},\"negotiated\":\"{}\"}}",
        ok.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        NEGOTIATED.get().map(String::as_str).unwrap_or("?")
    );
    std::process::ExitCode::SUCCESS
}
