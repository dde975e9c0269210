//! Test harness shared by the end-to-end tests: the gateway binary as a child
//! process and in-process simulated backends (both from `shardgate-testkit`), config
//! builders, and a small raw HTTP/1.1 client that can read responses incrementally
//! (to see SSE events arrive) or send malformed bytes.

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

pub mod pki;

// Each test crate uses a different part of the harness.
#[allow(unused_imports)]
pub use shardgate_testkit::{
    poll,
    sim::{sim, sim_at},
    GatewayProcess, Launch, SimConfig, SimHandle,
};

/// Config: a Gateway on port 8080 (overridden to 0), and one HTTPRoute per
/// `(model, [(weight, [addrs])])`, matching the model by body or X-Model-Type.
/// One backend group: weight and endpoint addresses.
pub type Group = (u32, Vec<SocketAddr>);

pub fn config(routes: &[(&str, Vec<Group>)]) -> String {
    let mut y = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: default\nspec:\n  gatewayClassName: shardgate\n  listeners:\n  - name: http\n    protocol: HTTP\n    port: 8080\n",
    );
    for (ri, (model, groups)) in routes.iter().enumerate() {
        y.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r{ri}\n  namespace: default\nspec:\n  parentRefs:\n  - name: gw\n  rules:\n  - matches:\n    - headers:\n      - name: X-Gateway-Model-Name\n        value: {model}\n    - headers:\n      - name: X-Model-Type\n        value: {model}\n    backendRefs:\n"
        ));
        for (gi, (weight, _)) in groups.iter().enumerate() {
            y.push_str(&format!(
                "    - name: svc-{ri}-{gi}\n      port: 8000\n      weight: {weight}\n"
            ));
        }
        for (gi, (_, addrs)) in groups.iter().enumerate() {
            for (ai, a) in addrs.iter().enumerate() {
                y.push_str(&format!(
                    "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{ri}-{gi}-{ai}\n  namespace: default\n  labels:\n    kubernetes.io/service-name: svc-{ri}-{gi}\naddressType: IPv4\nports:\n- port: {}\nendpoints:\n- addresses: [\"{}\"]\n",
                    a.port(),
                    a.ip()
                ));
            }
        }
    }
    y
}

/// A gateway child process (`shardgate serve`, killed on drop): the testkit's
/// [`GatewayProcess`] on this crate's binary, plus a [`Client`] to it.
pub struct Gateway(GatewayProcess);

impl Gateway {
    /// Start `shardgate serve` on `yaml` with extra flags; waits (polling) until it serves.
    pub fn start(yaml: &str, extra: &[&str]) -> Gateway {
        Self::launch(yaml, extra, Launch::default())
    }

    /// [`Gateway::start`] with a descriptor limit and/or captured stderr.
    pub fn launch(yaml: &str, extra: &[&str], how: Launch) -> Gateway {
        Gateway(GatewayProcess::launch(
            Path::new(env!("CARGO_BIN_EXE_shardgate")),
            yaml,
            extra,
            how,
        ))
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Stop it with SIGTERM and require a clean exit within `within`.
    pub fn stop_cleanly(&mut self, within: Duration) {
        self.terminate();
        let status = self
            .wait_exit(within)
            .expect("the gateway did not exit after SIGTERM");
        assert!(status.success(), "{status}");
    }

    /// The admin listener's `/metrics` text.
    pub fn metrics(&self) -> String {
        Client::connect(self.admin.expect("admin listener"))
            .get("/metrics")
            .text()
    }
}

impl Deref for Gateway {
    type Target = GatewayProcess;
    fn deref(&self) -> &GatewayProcess {
        &self.0
    }
}

impl DerefMut for Gateway {
    fn deref_mut(&mut self) -> &mut GatewayProcess {
        &mut self.0
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A raw HTTP/1.1 client over one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).expect("connect"))
    }

    /// A client over a socket the test set up itself (buffer sizes, …).
    pub fn over(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// POST a JSON body.
    pub fn post(&mut self, path: &str, body: &str, extra_headers: &[(&str, &str)]) -> Response {
        let mut req = format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len());
        for (n, v) in extra_headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.send_raw(req.as_bytes());
        self.read_response()
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.send_raw(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes());
        self.read_response()
    }

    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 16384];
        match self.stream.read(&mut tmp) {
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                n
            }
            Err(_) => 0,
        }
    }

    /// Whether the server closed the connection (reads EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut tmp = [0u8; 1];
        matches!(self.stream.read(&mut tmp), Ok(0) | Err(_))
    }

    /// Read one response head.
    pub fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(len)) = resp.parse(&self.buf) {
                let status = resp.code.unwrap();
                let hs = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.buf.drain(..len);
                if (100..200).contains(&status) {
                    continue;
                }
                return (status, hs);
            }
            assert!(
                self.fill() > 0,
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Read a whole response.
    pub fn read_response(&mut self) -> Response {
        let (status, headers) = self.read_head();
        let mut r = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"));
        if chunked {
            while let Some(chunk) = self.next_chunk() {
                r.body.extend_from_slice(&chunk);
            }
        } else if let Some(len) = r
            .header("content-length")
            .map(|v| v.trim().parse::<usize>().unwrap())
        {
            while self.buf.len() < len {
                assert!(self.fill() > 0, "closed mid-body");
            }
            r.body = self.buf.drain(..len).collect();
        } else {
            while self.fill() > 0 {}
            r.body = std::mem::take(&mut self.buf);
        }
        r
    }

    /// Read the next chunk of a chunked body (None at the last chunk).
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
                if size == 0 {
                    // The last chunk, then (optional trailers and) the blank line.
                    let end = loop {
                        if let Some(e) = self.buf[pos..].windows(4).position(|w| w == b"\r\n\r\n") {
                            break pos + e;
                        }
                        assert!(self.fill() > 0, "closed in the trailer section");
                    };
                    self.buf.drain(..end + 4);
                    return None;
                }
                while self.buf.len() < pos + 2 + size + 2 {
                    assert!(self.fill() > 0, "closed mid-chunk");
                }
                let data = self.buf[pos + 2..pos + 2 + size].to_vec();
                self.buf.drain(..pos + 2 + size + 2);
                return Some(data);
            }
            assert!(self.fill() > 0, "closed before the next chunk");
        }
    }
}

/// Saturate the first endpoint: open `n` streaming chat requests for `model`
/// (`max_tokens` each) and wait until its telemetry (the admin listener's
/// `/debug/endpoints`) reports a waiting request. Keep the returned connections
/// open for as long as the backend must stay saturated.
#[allow(dead_code)]
pub fn saturate(gw: &Gateway, model: &str, n: usize, max_tokens: u32) -> Vec<Client> {
    let mut streams = Vec::new();
    for _ in 0..n {
        let mut c = gw.connect();
        let body = chat(model, true, max_tokens);
        c.send_raw(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        streams.push(c);
    }
    let admin = gw.admin.expect("saturate needs the admin listener");
    let saturated = poll(Duration::from_secs(10), || {
        let j = Client::connect(admin).get("/debug/endpoints").json();
        (j["endpoints"][0]["telemetry"]["waiting"].as_f64()? >= 1.0).then_some(())
    });
    if saturated.is_none() {
        let view = Client::connect(admin).get("/debug/endpoints").json();
        panic!("the backend never reported a queue: {view}");
    }
    streams
}

/// A chat completion body.
pub fn chat(model: &str, stream: bool, max_tokens: u32) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hello there gateway"}}]}}"#
    )
}

/// Sim stats JSON.
/// The values of header `name` (any case) in a `/sim/echo` answer: what the
/// backend received.
pub fn echoed_header(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap().to_string())
        .collect()
}

pub fn sim_stats(addr: SocketAddr) -> serde_json::Value {
    let mut c = Client::connect(addr);
    c.get("/sim/stats").json()
}

/// The value of the sample `line_start` (`name{labels}`) in a metrics text.
#[allow(dead_code)]
pub fn sample(metrics: &str, line_start: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}
