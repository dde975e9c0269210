//! Request templates, rendered once into the exact bytes every request sends.
//!
//! | template | method | path | body |
//! |---|---|---|---|
//! | `completion` | POST | `/v1/completions` | `{"model","prompt","max_tokens","stream"}` |
//! | `chat` | POST | `/v1/chat/completions` | `{"model","messages":[{"role":"user","content"}],"max_tokens","stream"}` |
//! | `embeddings` | POST | `/v1/embeddings` | `{"model","input"}` (cannot stream) |
//! | `raw` | GET | `/` | empty, or `--body-file` |
//!
//! `model` comes first in every body (a gateway scans only as far as it needs). The
//! prompt is `--prompt-words` words cycled from a fixed 32-word list, so the bytes
//! are the same on every run. `--body-file` replaces the body of any template;
//! `--path` and `--method` override the defaults (a path in the URL wins over the
//! template's). The head carries `Host`, `User-Agent: shardgate-load/VERSION`,
//! `Content-Type: application/json` (when there is a body), `Accept:
//! text/event-stream` (streaming) and `Content-Length` (when there is a body or the
//! method is POST, PUT or PATCH); a `--header` with the same name replaces a default
//! one. `Content-Length`, `Transfer-Encoding` and `Connection` cannot be set: the
//! load generator frames bodies and keeps connections alive itself.

use crate::ConfigError;

/// Which request body to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// OpenAI `/v1/completions`.
    Completion,
    /// OpenAI `/v1/chat/completions`.
    Chat,
    /// OpenAI `/v1/embeddings`.
    Embeddings,
    /// A plain request: `GET /` unless told otherwise.
    Raw,
}

impl Template {
    /// The default request path.
    pub fn default_path(self) -> &'static str {
        match self {
            Template::Completion => "/v1/completions",
            Template::Chat => "/v1/chat/completions",
            Template::Embeddings => "/v1/embeddings",
            Template::Raw => "/",
        }
    }

    /// The default method.
    pub fn default_method(self) -> &'static str {
        match self {
            Template::Raw => "GET",
            _ => "POST",
        }
    }
}

/// Everything a request is rendered from.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSpec {
    /// Body template.
    pub template: Template,
    /// `model` field.
    pub model: String,
    /// `max_tokens` field (completion, chat).
    pub max_tokens: u32,
    /// `stream` field (completion, chat); also turns on TTFT measurement.
    pub stream: bool,
    /// Words in the prompt.
    pub prompt_words: usize,
    /// A body that replaces the template's (from `--body-file`).
    pub body: Option<Vec<u8>>,
    /// Request path (overrides the URL's and the template's).
    pub path: Option<String>,
    /// Method (overrides the template's).
    pub method: Option<String>,
    /// Extra header fields, `name: value`.
    pub headers: Vec<String>,
}

impl Default for RequestSpec {
    fn default() -> Self {
        RequestSpec {
            template: Template::Completion,
            model: "sim-model".into(),
            max_tokens: 16,
            stream: false,
            prompt_words: 16,
            body: None,
            path: None,
            method: None,
            headers: Vec::new(),
        }
    }
}

/// A rendered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Head and body, ready to write.
    pub bytes: Vec<u8>,
    /// Whether the method is HEAD (the response then has no body).
    pub head_request: bool,
    /// The request target (path and query).
    pub path: String,
}

const WORDS: [&str; 32] = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "silver",
    "GPUs",
    "hum",
    "under",
    "one",
    "gateway",
    "that",
    "routes",
    "every",
    "token",
    "to",
    "the",
    "least",
    "loaded",
    "cache",
    "warm",
    "replica",
    "in",
    "under",
    "a",
    "millisecond",
];

/// A prompt of exactly `words` words (a fixed sequence, cycled).
pub fn prompt(words: usize) -> String {
    let mut out = String::with_capacity(words * 7);
    for i in 0..words {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[i % WORDS.len()]);
    }
    out
}

fn json_str(s: &str) -> String {
    // Serialising a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The body the template asks for (the `--body-file` body when given).
pub fn render_body(spec: &RequestSpec) -> Result<Vec<u8>, ConfigError> {
    if let Some(b) = &spec.body {
        return Ok(b.clone());
    }
    let model = json_str(&spec.model);
    let prompt = json_str(&prompt(spec.prompt_words));
    let (k, s) = (spec.max_tokens, spec.stream);
    let body = match spec.template {
        Template::Completion => {
            format!(r#"{{"model":{model},"prompt":{prompt},"max_tokens":{k},"stream":{s}}}"#)
        }
        Template::Chat => format!(
            r#"{{"model":{model},"messages":[{{"role":"user","content":{prompt}}}],"max_tokens":{k},"stream":{s}}}"#
        ),
        Template::Embeddings if s => {
            return Err(ConfigError::Value(
                "--stream does not apply to the embeddings template".into(),
            ))
        }
        Template::Embeddings => format!(r#"{{"model":{model},"input":{prompt}}}"#),
        Template::Raw => String::new(),
    };
    Ok(body.into_bytes())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Check a request path: starts with `/`, visible ASCII only.
pub fn check_path(path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Value(format!(
            "invalid path {path:?}: must start with '/' and hold visible ASCII only"
        )));
    }
    Ok(())
}

/// Split `name: value` and check both (token name, no control characters in the value).
pub fn parse_header(raw: &str) -> Result<(String, String), ConfigError> {
    let err = |why: &str| ConfigError::Header(format!("{raw:?}: {why}"));
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| err("expected 'name: value'"))?;
    let name = name.trim();
    let value = value.trim();
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(err("invalid header name"));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(err("control characters in the value"));
    }
    for banned in ["content-length", "transfer-encoding", "connection"] {
        if name.eq_ignore_ascii_case(banned) {
            return Err(err("set by the load generator itself"));
        }
    }
    Ok((name.to_string(), value.to_string()))
}

/// Render the whole request: head (`host` is the `Host` value, `url_path` the URL's
/// path) and body.
pub fn render_request(
    spec: &RequestSpec,
    host: &str,
    url_path: Option<&str>,
) -> Result<Rendered, ConfigError> {
    let method = spec
        .method
        .as_deref()
        .unwrap_or(spec.template.default_method());
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(ConfigError::Value(format!("invalid method {method:?}")));
    }
    let path = spec
        .path
        .as_deref()
        .or(url_path)
        .unwrap_or(spec.template.default_path());
    check_path(path)?;
    let headers = spec
        .headers
        .iter()
        .map(|h| parse_header(h))
        .collect::<Result<Vec<_>, _>>()?;
    let body = render_body(spec)?;
    let user_has = |n: &str| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));

    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\n").as_bytes());
    let mut default = |name: &str, value: &str| {
        if !user_has(name) {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    };
    default("Host", host);
    default(
        "User-Agent",
        concat!("shardgate-load/", env!("CARGO_PKG_VERSION")),
    );
    if !body.is_empty() {
        default("Content-Type", "application/json");
    }
    if spec.stream {
        default("Accept", "text/event-stream");
    }
    let upper = method.to_ascii_uppercase();
    if !body.is_empty() || matches!(upper.as_str(), "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for (name, value) in &headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    Ok(Rendered {
        bytes: out,
        head_request: upper == "HEAD",
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn text(r: &Rendered) -> String {
        String::from_utf8(r.bytes.clone()).unwrap()
    }

    #[test]
    fn prompt_has_the_requested_word_count() {
        assert_eq!(prompt(0), "");
        assert_eq!(prompt(1), "the");
        for n in [1, 31, 32, 33, 1000] {
            assert_eq!(prompt(n).split(' ').count(), n);
        }
        assert_eq!(prompt(40), prompt(40));
    }

    #[test]
    fn completion_request() {
        let spec = RequestSpec {
            prompt_words: 3,
            ..RequestSpec::default()
        };
        let r = render_request(&spec, "127.0.0.1:8000", None).unwrap();
        let body =
            r#"{"model":"sim-model","prompt":"the quick brown","max_tokens":16,"stream":false}"#;
        let expected = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: shardgate-load/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        assert_eq!(text(&r), expected);
        assert!(!r.head_request);
        let v: serde_json::Value = serde_json::from_slice(&render_body(&spec).unwrap()).unwrap();
        assert_eq!(v["model"], "sim-model");
    }

    #[test]
    fn chat_streaming_and_embeddings_bodies_are_valid_json() {
        let chat = RequestSpec {
            template: Template::Chat,
            model: "m \"quoted\"".into(),
            stream: true,
            max_tokens: 7,
            ..RequestSpec::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&render_body(&chat).unwrap()).unwrap();
        assert_eq!(v["model"], "m \"quoted\"");
        assert_eq!(v["messages"][0]["role"], "user");
        assert_eq!(v["messages"][0]["content"], prompt(16));
        assert_eq!(v["max_tokens"], 7);
        assert_eq!(v["stream"], true);
        let r = render_request(&chat, "h", None).unwrap();
        let t = text(&r);
        assert!(t.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"));
        assert!(t.contains("\r\nAccept: text/event-stream\r\n"));

        let emb = RequestSpec {
            template: Template::Embeddings,
            ..RequestSpec::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&render_body(&emb).unwrap()).unwrap();
        assert_eq!(v["input"], prompt(16));
        assert!(v.get("stream").is_none());
        let bad = RequestSpec {
            stream: true,
            ..emb
        };
        assert!(render_body(&bad).is_err());
    }

    #[test]
    fn raw_overrides_and_headers() {
        let raw = RequestSpec {
            template: Template::Raw,
            ..RequestSpec::default()
        };
        let r = render_request(&raw, "localhost:1", Some("/health?x=1")).unwrap();
        assert_eq!(
            text(&r),
            format!(
                "GET /health?x=1 HTTP/1.1\r\nHost: localhost:1\r\nUser-Agent: shardgate-load/{}\r\n\r\n",
                env!("CARGO_PKG_VERSION")
            )
        );
        let spec = RequestSpec {
            template: Template::Raw,
            method: Some("PUT".into()),
            path: Some("/x".into()),
            body: Some(b"hello".to_vec()),
            headers: vec![
                "X-A: 1".into(),
                "host:  other ".into(),
                "content-type: text/plain".into(),
            ],
            ..RequestSpec::default()
        };
        let t = text(&render_request(&spec, "localhost:1", Some("/ignored")).unwrap());
        assert!(t.starts_with("PUT /x HTTP/1.1\r\n"), "{t}");
        assert!(!t.contains("Host: localhost:1"));
        assert!(t.contains("\r\nhost: other\r\n"));
        assert!(!t.contains("application/json"));
        assert!(t.contains("\r\nContent-Length: 5\r\n"));
        assert!(t.contains("\r\nX-A: 1\r\n"));
        assert!(t.ends_with("content-type: text/plain\r\n\r\nhello"), "{t}");
        let head = RequestSpec {
            template: Template::Raw,
            method: Some("HEAD".into()),
            ..RequestSpec::default()
        };
        assert!(render_request(&head, "h", None).unwrap().head_request);
        let post_empty = RequestSpec {
            template: Template::Raw,
            method: Some("POST".into()),
            ..RequestSpec::default()
        };
        assert!(text(&render_request(&post_empty, "h", None).unwrap())
            .contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn rejects_bad_input() {
        for h in [
            "novalue",
            "bad name: x",
            ": x",
            "Content-Length: 5",
            "x: a\r\nb: c",
            "Connection: close",
        ] {
            assert!(parse_header(h).is_err(), "{h}");
        }
        assert_eq!(
            parse_header(" X-Ok :  v v ").unwrap(),
            ("X-Ok".to_string(), "v v".to_string())
        );
        let bad_method = RequestSpec {
            method: Some("G T".into()),
            ..RequestSpec::default()
        };
        assert!(render_request(&bad_method, "h", None).is_err());
        let bad_path = RequestSpec {
            path: Some("x".into()),
            ..RequestSpec::default()
        };
        assert!(render_request(&bad_path, "h", None).is_err());
    }
}
