//! `shardgate serve` as a child process for the end-to-end tests.
//!
//! The config goes to a temp dir with the ready file; the gateway binds 127.0.0.1
//! with ephemeral ports (listener and admin), one shard unless `--shards` is
//! given, `RUST_LOG` defaulting to `warn`. Start-up waits up to 20 s for the ready
//! file, which names the listen and admin addresses and the I/O driver.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{temp_dir, wait_ready_file, ChildGuard};

/// Longest wait for the gateway's ready file.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A running gateway child process (killed on drop).
pub struct GatewayProcess {
    /// The process and its temp dir.
    pub process: ChildGuard,
    /// The first HTTP listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: Option<SocketAddr>,
    /// The I/O driver the gateway reported (`io_uring` or `epoll`).
    pub driver: String,
}

impl GatewayProcess {
    /// Start `bin serve` on `yaml` with `extra` flags; returns once it serves.
    pub fn start(bin: &Path, yaml: &str, extra: &[&str]) -> GatewayProcess {
        let dir = temp_dir("shardgate-test");
        let cfg = dir.join("config.yaml");
        std::fs::write(&cfg, yaml).unwrap_or_else(|e| panic!("write {}: {e}", cfg.display()));
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
        let child = Command::new(bin)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut process = ChildGuard::new(child, Some(dir));
        let info = wait_ready_file(&mut process, &ready, READY_DEADLINE);
        let addr = info["listen"][0]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listen address in the ready file: {info}"));
        let admin = info["admin"].as_str().and_then(|a| a.parse().ok());
        let driver = info["driver"].as_str().unwrap_or_default().to_string();
        GatewayProcess {
            process,
            addr,
            admin,
            driver,
        }
    }
}

impl Deref for GatewayProcess {
    type Target = ChildGuard;
    fn deref(&self) -> &ChildGuard {
        &self.process
    }
}

impl DerefMut for GatewayProcess {
    fn deref_mut(&mut self) -> &mut ChildGuard {
        &mut self.process
    }
}
