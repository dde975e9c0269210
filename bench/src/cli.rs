//! The `shardgate-load` command line: flags, their defaults, and the run.
//!
//! Exit codes: 0 when at least one request succeeded, 1 when every request failed
//! (or none ran), 2 for invalid flags or a run that could not start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::{parse_duration, Config};
use crate::template::{RequestSpec, Template};

/// Flags of `shardgate-load`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "shardgate-load",
    version,
    about = "HTTP/1.1 load generator: open loop at a fixed rate (latency from the intended \
             start) or closed loop over N keep-alive connections; this machine only"
)]
pub struct Args {
    /// Target, e.g. http://127.0.0.1:8000 (localhost or an IP of this machine only).
    #[arg(long)]
    pub url: String,
    /// Open loop at this many requests per second (all threads together); without it,
    /// closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured duration after the warm-up (10s when neither --duration nor
    /// --requests is given).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Counted requests after the warm-up (stops at whichever bound comes first).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Warm-up before measuring: requests run but are not counted.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Keep-alive connections, all threads together.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub connections: usize,
    /// Worker threads, each with its own monoio runtime (capped at --connections).
    #[arg(long, short = 't', default_value_t = 1)]
    pub threads: usize,
    /// Per-request timeout, counted from the request's (intended) start.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// Open loop: most requests waiting for a free connection (more are dropped and
    /// counted).
    #[arg(long, default_value_t = 65_536)]
    pub max_backlog: usize,
    /// Request template.
    #[arg(long, value_enum, default_value = "completion")]
    pub template: Template,
    /// Model name in the request body.
    #[arg(long, default_value = "sim-model")]
    pub model: String,
    /// `max_tokens` in the request body.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: u32,
    /// Ask for a streamed (SSE) response and measure time to first token.
    #[arg(long)]
    pub stream: bool,
    /// Words in the prompt.
    #[arg(long, default_value_t = 16)]
    pub prompt_words: usize,
    /// Send this file as the body (any template).
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// Request path (overrides the URL's and the template's).
    #[arg(long)]
    pub path: Option<String>,
    /// Extra header, 'name: value' (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Request method (default: POST, GET for --template raw).
    #[arg(long)]
    pub method: Option<String>,
    /// Also write the report as JSON to this file (times in microseconds).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Pin worker threads to cores (round-robin over the cores this process may use).
    #[arg(long)]
    pub pin: bool,
    /// Use the epoll driver even where io_uring is available.
    #[arg(long)]
    pub epoll: bool,
    /// No progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

impl Args {
    /// The library configuration these flags describe (reads `--body-file`).
    pub fn to_config(&self) -> Result<Config, String> {
        let body = match &self.body_file {
            Some(p) => Some(
                std::fs::read(p)
                    .map_err(|e| format!("cannot read --body-file {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Ok(Config {
            url: self.url.clone(),
            rate: self.rate,
            duration: self.duration,
            requests: self.requests,
            warmup: self.warmup,
            connections: self.connections,
            threads: self.threads,
            timeout: self.timeout,
            max_backlog: self.max_backlog,
            request: RequestSpec {
                template: self.template,
                model: self.model.clone(),
                max_tokens: self.max_tokens,
                stream: self.stream,
                prompt_words: self.prompt_words,
                body,
                path: self.path.clone(),
                method: self.method.clone(),
                headers: self.headers.clone(),
            },
            pin: self.pin,
        })
    }
}

/// Run the CLI with parsed flags: progress on stderr, report on stdout.
pub fn main_with(args: &Args) -> ExitCode {
    if args.epoll {
        shardgate_runtime::force_epoll();
    }
    let config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardgate-load: {e}");
            return ExitCode::from(2);
        }
    };
    let quiet = args.quiet;
    let report = match crate::run(&config, &mut |p| {
        if !quiet {
            eprintln!("{p}");
        }
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shardgate-load: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.human());
    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, report.to_json() + "\n") {
            eprintln!("shardgate-load: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if report.all_failed() {
        eprintln!("shardgate-load: every request failed");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn flags_map_to_the_config() {
        let args = Args::try_parse_from([
            "shardgate-load",
            "--url",
            "http://127.0.0.1:8000",
            "--rate",
            "5000",
            "--duration",
            "3s",
            "--warmup",
            "500ms",
            "-c",
            "64",
            "-t",
            "2",
            "--template",
            "chat",
            "--stream",
            "-H",
            "X-A: 1",
            "--header",
            "X-B: 2",
        ])
        .unwrap();
        let c = args.to_config().unwrap();
        assert_eq!(c.rate, Some(5000.0));
        assert_eq!(c.duration, Some(Duration::from_secs(3)));
        assert_eq!(c.warmup, Duration::from_millis(500));
        assert_eq!((c.connections, c.threads), (64, 2));
        assert_eq!(c.request.template, Template::Chat);
        assert!(c.request.stream);
        assert_eq!(c.request.headers, ["X-A: 1", "X-B: 2"]);
        assert_eq!(c.timeout, Duration::from_secs(10));

        assert!(
            Args::try_parse_from(["shardgate-load"]).is_err(),
            "--url is required"
        );
        assert!(Args::try_parse_from(["shardgate-load", "--url", "u", "--duration", "x"]).is_err());
        let missing = Args::try_parse_from([
            "shardgate-load",
            "--url",
            "http://127.0.0.1:1",
            "--body-file",
            "/nonexistent/body.json",
        ])
        .unwrap();
        assert!(missing.to_config().unwrap_err().contains("--body-file"));
    }
}
