//! Test harness shared by the end-to-end tests: a gateway child process on
//! 127.0.0.1 with ephemeral ports (killed on drop), in-process simulated backends,
//! config builders, and a small raw HTTP/1.1 client that can read responses
//! incrementally (to see SSE events arrive) or send malformed bytes.

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use shardgate_sim::{SimConfig, SimHandle};

/// Poll `f` until it returns Some or `deadline` passes.
pub fn poll<T>(deadline: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        // The polling interval of a deadline-bounded poll: the condition decides, not the pause.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A simulated vLLM backend on an ephemeral port.
pub fn sim(models: &[&str], tweak: impl FnOnce(&mut SimConfig)) -> SimHandle {
    let mut c = SimConfig {
        host: "127.0.0.1".into(),
        port: 0,
        model: models.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    };
    tweak(&mut c);
    shardgate_sim::spawn(c).expect("start sim")
}

/// Restart a sim on a fixed address (after it was shut down).
pub fn sim_at(addr: SocketAddr, models: &[&str]) -> SimHandle {
    let c = SimConfig {
        host: addr.ip().to_string(),
        port: addr.port(),
        model: models.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    };
    let mut last = None;
    let h = poll(Duration::from_secs(5), || {
        match shardgate_sim::spawn(c.clone()) {
            Ok(h) => Some(h),
            Err(e) => {
                last = Some(e);
                None
            }
        }
    });
    h.unwrap_or_else(|| panic!("restart sim on {addr}: {last:?}"))
}

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

/// A gateway child process.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// The I/O driver the gateway reported (`io_uring` or `epoll`).
    pub driver: String,
    /// Where the gateway's stderr goes, when [`Launch::capture_stderr`] was set.
    pub stderr: Option<PathBuf>,
    dir: PathBuf,
}

/// How to launch a gateway child beyond its flags.
#[derive(Debug, Default, Clone, Copy)]
pub struct Launch {
    /// Run the child under this `RLIMIT_NOFILE` (soft and hard), set between
    /// fork and exec.
    pub nofile: Option<u64>,
    /// Send the child's stderr to a file ([`Gateway::stderr`]) instead of ours.
    pub capture_stderr: bool,
    /// `RUST_LOG` for the child (default: ours, else `warn`).
    pub rust_log: Option<&'static str>,
}

static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn temp_dir() -> PathBuf {
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("shardgate-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Gateway {
    /// Start `shardgate serve` on `yaml` with extra flags; waits (polling) until it serves.
    pub fn start(yaml: &str, extra: &[&str]) -> Gateway {
        Self::launch(yaml, extra, Launch::default())
    }

    /// [`Gateway::start`] with a descriptor limit and/or captured stderr.
    pub fn launch(yaml: &str, extra: &[&str], how: Launch) -> Gateway {
        let dir = temp_dir();
        let cfg = dir.join("config.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let ready = dir.join("ready.json");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "-c".into(),
            cfg.display().to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--listen-port".into(),
            "0".into(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
            "--ready-file".into(),
            ready.display().to_string(),
        ];
        if !extra.contains(&"--shards") {
            args.extend(["--shards".into(), "1".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardgate"));
        cmd.args(&args)
            .env(
                "RUST_LOG",
                how.rust_log
                    .map(str::to_string)
                    .unwrap_or_else(|| std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())),
            )
            .stdin(Stdio::null());
        let stderr = how.capture_stderr.then(|| dir.join("stderr.log"));
        if let Some(path) = &stderr {
            cmd.stderr(std::fs::File::create(path).unwrap());
        }
        if let Some(n) = how.nofile {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().expect("spawn shardgate");
        let mut gw = Gateway {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            admin: None,
            driver: String::new(),
            stderr,
            dir,
        };
        let info: serde_json::Value = poll(Duration::from_secs(20), || {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("shardgate exited early: {status}");
            }
            let text = std::fs::read_to_string(&ready).ok()?;
            serde_json::from_str(&text).ok()
        })
        .expect("gateway did not become ready");
        gw.addr = info["listen"][0].as_str().unwrap().parse().unwrap();
        gw.admin = info["admin"].as_str().map(|a| a.parse().unwrap());
        gw.driver = info["driver"].as_str().unwrap_or_default().to_string();
        gw
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// The captured stderr so far (empty when not captured).
    pub fn stderr_text(&self) -> String {
        self.stderr
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// CPU time (user + system) the child has used so far, from `/proc`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces) start at ") ".
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// The admin listener's `/metrics` text.
    pub fn metrics(&self) -> String {
        Client::connect(self.admin.expect("admin listener"))
            .get("/metrics")
            .text()
    }

    /// Wait for exit with a deadline.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        poll(within, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
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
        let stream = TcpStream::connect(addr).expect("connect");
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
    assert!(saturated.is_some(), "the backend never reported a queue");
    streams
}

/// A chat completion body.
pub fn chat(model: &str, stream: bool, max_tokens: u32) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hello there gateway"}}]}}"#
    )
}

/// Sim stats JSON.
pub fn sim_stats(addr: SocketAddr) -> serde_json::Value {
    let mut c = Client::connect(addr);
    c.get("/sim/stats").json()
}
