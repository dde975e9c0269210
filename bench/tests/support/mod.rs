//! A tiny fixed-response HTTP/1.1 server for the load generator's tests: std::net,
//! one thread per connection, bound to 127.0.0.1:0. The request path picks the
//! answer:
//!
//! | path | answer |
//! |---|---|
//! | `/cl` | 200, `Content-Length: 5` |
//! | `/chunked` | 200, chunked (2 chunks) |
//! | `/alt` | alternates the two above on each connection |
//! | `/v1/completions`, `/v1/chat/completions` | 200, chunked SSE: 3 `data:` events and `data: [DONE]`, one write each |
//! | `/status/NNN` | status NNN with a small JSON body |
//! | `/close` | 200 with `Connection: close`, then closes |
//! | `/eof` | 200 with no length: the body ends when the server closes |
//! | `/silent` | reads the request, never answers |
//!
//! Connections end when the client closes them (or after 10 s idle); `Drop` stops
//! the accept loop and joins it.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A running test server.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Responses written (complete ones).
    pub responses: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Start on 127.0.0.1:0.
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let responses = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), responses.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Acquire) {
                    break;
                }
                if let Ok(conn) = conn {
                    let r = r.clone();
                    std::thread::spawn(move || serve(conn, &r));
                }
            }
        });
        TestServer {
            addr,
            responses,
            stop,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Responses written so far.
    pub fn responses(&self) -> u64 {
        self.responses.load(Ordering::Acquire)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Read one request head (+ Content-Length body) from `conn`, keeping any extra
/// bytes in `buf`. Returns the path, or `None` at EOF / error.
fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head.split(' ').nth(1)?.to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + len);
    Some(path)
}

const CL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const CHUNKED: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";

fn serve(mut conn: TcpStream, responses: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::new();
    let mut n = 0u64;
    while let Some(path) = read_request(&mut conn, &mut buf) {
        n += 1;
        let ok = match path.as_str() {
            "/cl" => conn.write_all(CL).is_ok(),
            "/chunked" => conn.write_all(CHUNKED).is_ok(),
            "/alt" => conn
                .write_all(if n % 2 == 0 { CHUNKED } else { CL })
                .is_ok(),
            "/v1/completions" | "/v1/chat/completions" => sse(&mut conn).is_ok(),
            "/close" => {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                );
                responses.fetch_add(1, Ordering::AcqRel);
                return;
            }
            "/eof" => {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close");
                responses.fetch_add(1, Ordering::AcqRel);
                return;
            }
            "/silent" => continue,
            p => match p
                .strip_prefix("/status/")
                .and_then(|s| s.parse::<u16>().ok())
            {
                Some(code) => {
                    let body = format!("{{\"error\":{{\"code\":\"{code}\"}}}}");
                    conn.write_all(
                        format!(
                            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .is_ok()
                }
                None => conn
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .is_ok(),
            },
        };
        if !ok {
            return;
        }
        responses.fetch_add(1, Ordering::AcqRel);
    }
}

fn sse(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    for i in 0..3 {
        let event = format!("data: {{\"choices\":[{{\"text\":\"w{i}\"}}]}}\n\n");
        conn.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())?;
    }
    let done = "data: [DONE]\n\n";
    conn.write_all(format!("{:x}\r\n{done}\r\n0\r\n\r\n", done.len()).as_bytes())
}
