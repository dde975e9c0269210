//! A real `redis-server` (Debian's package; `scripts/test` installs it) as a
//! child process on 127.0.0.1, for the global rate-limit tests: no persistence,
//! its own temp dir, killed on drop, restartable on the same port.
//!
//! redis-server cannot be told to pick an ephemeral port and report it
//! (`--port 0` turns TCP off), so a free port is found by binding port 0 and
//! closing it; a start that loses the port to another process is retried on a
//! new one.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{poll, temp_dir, ChildGuard};

/// A running redis-server.
pub struct RedisServer {
    guard: Option<ChildGuard>,
    /// Where it listens.
    pub addr: SocketAddr,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Whether a server at `addr` answers `PING`.
pub fn pings(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn spawn(port: u16) -> Option<ChildGuard> {
    let dir = temp_dir("shardgate-redis");
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}): install it (Debian: apt-get install redis-server; scripts/test does)")
        });
    let mut guard = ChildGuard::new(child, Some(dir));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let up = poll(Duration::from_secs(10), || {
        if guard.exited().is_some() {
            return Some(false);
        }
        pings(addr).then_some(true)
    });
    (up == Some(true)).then_some(guard)
}

impl RedisServer {
    /// Start one on a free port (ready: it answers `PING`).
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            if let Some(guard) = spawn(port) {
                return RedisServer {
                    guard: Some(guard),
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                };
            }
        }
        panic!("redis-server did not start on a free port in 5 tries");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kill it (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.guard = None;
        let addr = self.addr;
        let gone = poll(Duration::from_secs(5), || (!pings(addr)).then_some(()));
        assert!(
            gone.is_some(),
            "redis-server at {addr} still answers after kill"
        );
    }

    /// Start it again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.guard = None;
        let port = self.addr.port();
        let guard = poll(Duration::from_secs(10), || spawn(port));
        self.guard = Some(guard.expect("redis-server did not restart on its port"));
    }
}
