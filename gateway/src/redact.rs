//! Redaction of configuration documents for `/debug/config` (pure).
//!
//! The admin listener shows every loaded document as JSON. What it shows is
//! decided by an allow-list, not by a list of names to hide: anything that can
//! carry a credential is masked as `"<redacted>"` unless it is known to be
//! harmless. [`redact_document`] applies five rules to one document, at every
//! depth:
//!
//! 1. **`Secret` objects** (`kind: Secret`): the values of `data` and
//!    `stringData` are never shown, only their keys.
//! 2. **Name/value pairs** — header matches and the `set`/`add` lists of
//!    `requestHeaderModifier`/`responseHeaderModifier` filters (HTTPRoute and
//!    GRPCRoute), query-parameter matches, container `env` entries: any object
//!    with a `name` and a `value` has its `value` masked unless the name is in
//!    [`SAFE_HEADERS`]. Header maps (an object under a key ending in
//!    `headers`) are treated the same way, entry by entry.
//! 3. **Secret-looking keys**: the value of any key that, lower-cased with
//!    `-`, `_` and `.` removed, contains one of [`SECRET_KEY_PARTS`] (or is
//!    exactly `auth`) is masked whole, whatever its type.
//! 4. **URL userinfo**: in every string, each `scheme://user:password@host`
//!    becomes `scheme://<redacted>@host`.
//! 5. **Credentials in text**: a string that contains `bearer `, `basic ` or
//!    `authorization:` (any case) is masked whole, as is the
//!    `kubectl.kubernetes.io/last-applied-configuration` annotation (a copy of
//!    the whole object, rules not applied).
//!
//! Masking too much costs a debug view some detail; masking too little leaks a
//! credential to whoever can reach the admin port. The rules err on the first
//! side.

use serde_json::Value;

/// What a masked value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Header (or name/value) names whose values are shown, compared
/// case-insensitively. Kept small on purpose; each is a routing key the
/// gateway itself reads and never a credential:
/// - `x-gateway-model-name`, `x-model-type`: the model a route matches;
/// - `x-priority`: the priority class of a request;
/// - `content-type`: a media type.
pub const SAFE_HEADERS: [&str; 4] = [
    "x-gateway-model-name",
    "x-model-type",
    "x-priority",
    "content-type",
];

/// Substrings of a normalised key (lower case, no `-`, `_`, `.`) that mark
/// its value as secret: `pass` covers password, passwd, passphrase; `key`
/// covers apiKey, access_key, privateKey, hmacKey and `key` itself.
pub const SECRET_KEY_PARTS: [&str; 12] = [
    "secret",
    "pass",
    "token",
    "key",
    "credential",
    "authorization",
    "bearer",
    "hmac",
    "cookie",
    "private",
    "signature",
    "salt",
];

/// The annotation `kubectl apply` stores: a verbatim copy of the object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Masks everything in `doc` that may hold a credential (see the module doc).
pub fn redact_document(doc: &mut Value) {
    redact_value(doc);
}

/// Whether `key` names something secret (rule 3).
pub fn is_secret_key(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    norm == "auth" || SECRET_KEY_PARTS.iter().any(|p| norm.contains(p))
}

/// Whether the value of header (or name/value pair) `name` may be shown.
pub fn is_safe_header(name: &str) -> bool {
    SAFE_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn masked() -> Value {
    Value::String(REDACTED.to_owned())
}

fn redact_value(v: &mut Value) {
    match v {
        Value::Object(map) => {
            // Rule 1: a Secret's data is never shown, only its keys.
            if map.get("kind").and_then(Value::as_str) == Some("Secret") {
                for field in ["data", "stringData"] {
                    if let Some(data) = map.get_mut(field) {
                        mask_all_values(data);
                    }
                }
            }
            // Rule 2: a name/value pair shows its value only for a safe name.
            let pair_safe = map.get("name").and_then(Value::as_str).map(is_safe_header);
            if let (Some(safe), Some(value)) = (pair_safe, map.get_mut("value")) {
                if !safe {
                    *value = masked();
                }
            }
            for (k, val) in map.iter_mut() {
                if is_secret_key(k) || k == LAST_APPLIED {
                    *val = masked();
                } else if k.to_ascii_lowercase().ends_with("headers") && val.is_object() {
                    redact_header_map(val);
                } else {
                    redact_value(val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        Value::String(s) => {
            if let Some(clean) = redact_text(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

/// A map of header name → value: values shown only for safe names.
fn redact_header_map(v: &mut Value) {
    if let Value::Object(map) = v {
        for (name, value) in map.iter_mut() {
            if !is_safe_header(name) {
                *value = masked();
            } else {
                redact_value(value);
            }
        }
    }
}

/// Replaces every value of a map (or the value itself) with [`REDACTED`].
fn mask_all_values(v: &mut Value) {
    match v {
        Value::Object(map) => map.values_mut().for_each(|x| *x = masked()),
        Value::Null => {}
        other => *other = masked(),
    }
}

/// Rules 4 and 5 on one string; `None` when it needs no change.
pub fn redact_text(s: &str) -> Option<String> {
    let lower = s.to_ascii_lowercase();
    if ["bearer ", "basic ", "authorization:"]
        .iter()
        .any(|m| lower.contains(m))
    {
        return Some(REDACTED.to_owned());
    }
    if !s.contains("://") {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first `/`, `?`, `#` or whitespace.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every secret of the hostile fixture: none may survive redaction.
    const SECRETS: [&str; 20] = [
        "AUTHZ-1",
        "BEARER-2",
        "ACCESS-3",
        "KEY-4",
        "HMAC-5",
        "COOKIE-6",
        "PASS-7",
        "PHRASE-8",
        "URLPW-9",
        "SETAUTH-10",
        "APIKEY-11",
        "ADDHDR-12",
        "RESPHDR-13",
        "MATCHHDR-14",
        "SECRETDATA-15",
        "STRINGDATA-16",
        "ENVVAL-17",
        "LASTAPPLIED-18",
        "MAPHDR-19",
        "ARGBEARER-20",
    ];

    /// A document with each case of #12 item 6 (and a few more).
    const HOSTILE: &str = r#"
kind: HTTPRoute
metadata:
  name: r
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"value":"LASTAPPLIED-18"}'
spec:
  authorization: AUTHZ-1
  auth:
    bearer: BEARER-2
  access_key: ACCESS-3
  key: KEY-4
  hmac: HMAC-5
  Cookie: COOKIE-6
  pass: PASS-7
  passphrase: PHRASE-8
  backendUrl: https://user:URLPW-9@backend.example:8443/v1?x=1
  plainUrl: http://models.example/v1
  args: ["--header", "Authorization: Bearer ARGBEARER-20"]
  healthHeaders:
    X-Token-Ish: MAPHDR-19
    Content-Type: application/json
  rules:
  - matches:
    - headers:
      - name: X-Gateway-Model-Name
        value: llama-3
      - name: X-Tenant-Secret
        value: MATCHHDR-14
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set:
        - name: Authorization
          value: SETAUTH-10
        - name: X-Model-Type
          value: gpt-large
        add:
        - name: X-Api-Key
          value: APIKEY-11
        - name: X-Whatever
          value: ADDHDR-12
        remove: [X-Debug]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - name: Set-Something
          value: RESPHDR-13
  env:
  - name: OPENAI_BASE
    value: ENVVAL-17
---
apiVersion: v1
kind: Secret
metadata: {name: s}
data:
  token: U0VDUkVUREFUQS0xNQ==
  plain: SECRETDATA-15
stringData:
  whatever: STRINGDATA-16
"#;

    fn redacted_fixture() -> Vec<Value> {
        use serde::Deserialize;
        serde_yaml_ng::Deserializer::from_str(HOSTILE)
            .map(|d| {
                let mut v = Value::deserialize(d).unwrap();
                redact_document(&mut v);
                v
            })
            .collect()
    }

    #[test]
    fn no_secret_of_the_hostile_fixture_survives() {
        let docs = redacted_fixture();
        let text = serde_json::to_string(&docs).unwrap();
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(!text.contains("U0VDUkVUREFUQS0xNQ"), "{text}");
    }

    #[test]
    fn harmless_values_stay_visible() {
        let docs = redacted_fixture();
        let spec = &docs[0]["spec"];
        let m = &spec["rules"][0]["matches"][0]["headers"];
        assert_eq!(m[0]["value"], "llama-3");
        assert_eq!(m[1]["name"], "X-Tenant-Secret", "names stay");
        assert_eq!(m[1]["value"], REDACTED);
        let set = &spec["rules"][0]["filters"][0]["requestHeaderModifier"]["set"];
        assert_eq!(set[1]["value"], "gpt-large");
        assert_eq!(
            spec["backendUrl"],
            "https://<redacted>@backend.example:8443/v1?x=1"
        );
        assert_eq!(spec["plainUrl"], "http://models.example/v1");
        assert_eq!(spec["healthHeaders"]["Content-Type"], "application/json");
        // A Secret keeps its keys, never its values.
        let data = docs[1]["data"].as_object().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["plain", "token"]);
        assert_eq!(docs[1]["stringData"]["whatever"], REDACTED);
        assert_eq!(docs[1]["metadata"]["name"], "s");
    }

    #[test]
    fn secret_keys_are_matched_loosely() {
        for k in [
            "authorization",
            "auth",
            "auth.bearer",
            "access_key",
            "accessKey",
            "key",
            "hmac",
            "cookie",
            "pass",
            "passphrase",
            "Pass-Word",
            "clientSecret",
            "API-KEY",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["name", "authentication", "issuer", "value", "hostname"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn userinfo_is_masked_in_every_url_of_a_string() {
        assert_eq!(
            redact_text("a=https://u:p@h/x b=ftp://q@r c=http://s/t").as_deref(),
            Some("a=https://<redacted>@h/x b=ftp://<redacted>@r c=http://s/t")
        );
        assert_eq!(redact_text("http://host:80/p@q"), None, "@ in the path");
        assert_eq!(redact_text("no url"), None);
    }
}
