//! `shardgate serve` as a child process for the end-to-end tests.
//!
//! The config goes to a temp dir with the ready file; the gateway binds 127.0.0.1
//! with ephemeral ports (listener and admin), one shard unless `--shards` is
//! given, `RUST_LOG` defaulting to `warn`. Start-up waits up to 20 s for the ready
//! file, which names the listen and admin addresses and the I/O driver.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
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
    /// Where the gateway's stderr goes, when [`Launch::capture_stderr`] was set.
    pub stderr: Option<PathBuf>,
}

/// How to launch a gateway child beyond its flags.
#[derive(Debug, Default, Clone, Copy)]
pub struct Launch {
    /// Run the child under this `RLIMIT_NOFILE` (soft and hard), set between
    /// fork and exec.
    pub nofile: Option<u64>,
    /// Send the child's stderr to a file ([`GatewayProcess::stderr`]) instead of ours.
    pub capture_stderr: bool,
    /// `RUST_LOG` for the child (default: ours, else `warn`).
    pub rust_log: Option<&'static str>,
    /// More environment variables for the child.
    pub env: &'static [(&'static str, &'static str)],
}

impl GatewayProcess {
    /// Start `bin serve` on `yaml` with `extra` flags; returns once it serves.
    pub fn start(bin: &Path, yaml: &str, extra: &[&str]) -> GatewayProcess {
        Self::launch(bin, yaml, extra, Launch::default())
    }

    /// [`GatewayProcess::start`] with a descriptor limit and/or captured stderr.
    pub fn launch(bin: &Path, yaml: &str, extra: &[&str], how: Launch) -> GatewayProcess {
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
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .env(
                "RUST_LOG",
                how.rust_log
                    .map(str::to_string)
                    .unwrap_or_else(|| std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())),
            )
            .envs(how.env.iter().copied())
            .stdin(Stdio::null());
        let stderr = how.capture_stderr.then(|| dir.join("stderr.log"));
        if let Some(path) = &stderr {
            let file = std::fs::File::create(path)
                .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
            cmd.stderr(file);
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
        let child = cmd
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
            stderr,
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
    pub fn cpu_time(&mut self) -> Duration {
        let pid = self.process.child().id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
        // Fields after the command name (which may hold spaces) start at ") ".
        let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ticks = field(11) + field(12);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
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
