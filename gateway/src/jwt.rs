//! JWT authentication (`SecurityPolicy.spec.authentication.jwt`): the key sets,
//! and the check a shard runs on a request's `Authorization: Bearer` token.
//!
//! Pure: no sockets. Key sets live in one `ArcSwap` per provider; a shard loads
//! the current one (no lock) and the control thread's fetcher
//! (`jwks_fetch`) swaps in fresh ones for `remoteJWKS` providers.
//!
//! A token is refused (401, one [`Reason`]) unless, in this order:
//! 1. the header is `Bearer <token>`, the token at most [`MAX_TOKEN_BYTES`]
//!    (8 KiB; checked before any parsing), three non-empty base64url segments;
//! 2. its header's `alg` is asymmetric: RS256/384/512, PS256/384/512, ES256/384
//!    or EdDSA (`none` and HS* never verify: no key confusion);
//! 3. with several providers, its `iss` names one of them;
//! 4. its `kid` names a key of the provider's set (without a `kid`: the first
//!    key that takes its `alg`); an unknown `kid` also asks for a refetch of a
//!    remote set, at most once per [`REFETCH_MIN_INTERVAL`] (10 s) per provider;
//! 5. the key takes the token's `alg` (the JWK's own `alg`, else its type and
//!    curve), and the signature verifies (`jsonwebtoken`, ring backend);
//! 6. `exp` is present and not past, `nbf` (when present) not ahead, each with
//!    `--jwt-leeway` (default 30 s); `iss` equals the provider's `issuer` and
//!    `aud` names one of its `audiences` (when configured, both are required).
//!
//! A valid token yields its `sub` and the provider's `claimToHeaders` values.
//! Cost on a valid token: two base64 decodes and JSON parses of the header and
//! claims plus one signature check (`bench/benches/jwt.rs`, 2-vCPU VM: RS256
//! 2048-bit 23 µs, PS256 24 µs, ES256 54 µs, EdDSA 48 µs); what `jsonwebtoken`
//! allocates for them and the `sub` string. Requests on rules without JWT
//! authentication never reach this module.
//!
//! # Verified-token cache
//! Clients send the same token on request after request (it is their API key),
//! so each shard keeps the tokens it verified in a [`TokenCache`] (no lock: one
//! per shard; `--jwt-cache-size` entries, default 4,096, 0 = off). A hit is
//! the exact token bytes for the same policy, before its `exp` (+ leeway), with
//! the provider's key set not swapped since (every swap, i.e. each remote
//! JWKS refresh, bumps the provider's generation, so each cached token is
//! verified again once against the new keys: a removed key stops working
//! within one refresh). A hit costs one hash of the token and one `Rc` clone (no allocation,
//! 0.15 µs for an RS256 token instead of 23–54 µs, `bench/benches/jwt.rs`). Only valid tokens are
//! cached: a refused token is checked in full every time. When the cache is
//! full, expired entries go first, then an arbitrary one.

use std::collections::HashMap;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use shardgate_routing::config::JwtProvider;
use shardgate_routing::RoutingTable;

/// Longest bearer token accepted (8 KiB); longer ones are refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default `--jwt-leeway`: clock skew allowed on `exp` and `nbf` (30 s).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default refresh interval of a remote JWK set without `cacheDuration` (5 min).
pub const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(300);
/// Unknown-`kid` refetches of one provider's set are at least this far apart (10 s).
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Path appended to an `issuer` for a provider with neither `localJWKS` nor `remoteJWKS`.
pub const WELL_KNOWN_JWKS: &str = "/.well-known/jwks.json";
/// Default `--jwt-cache-size`: verified tokens each shard remembers (4,096).
pub const DEFAULT_CACHE_ENTRIES: usize = 4096;

/// Process-wide source of [`JwtPolicy`] identities (never reused, so a cache
/// entry can never match a policy built later, e.g. by a reload).
static POLICY_UIDS: AtomicU64 = AtomicU64::new(1);

/// Why a request was refused: the `reason` label of
/// `gateway_auth_failures_total` and the `error_description` it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Token longer than [`MAX_TOKEN_BYTES`].
    TooLarge,
    /// Not three base64url segments, or a header or claims that do not parse.
    Malformed,
    /// `alg` is `none`, symmetric, unknown, or not the key's.
    UnsupportedAlg,
    /// No key with the token's `kid` (or for its `alg`).
    UnknownKid,
    /// The provider has no keys yet (a remote set never fetched).
    NoKeys,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is past.
    Expired,
    /// `nbf` is ahead.
    NotYetValid,
    /// `iss` is not the provider's (or, with several providers, none's).
    WrongIssuer,
    /// `aud` names none of the provider's audiences.
    WrongAudience,
    /// A required claim (`exp`, or `iss`/`aud` when configured) is missing.
    MissingClaim,
}

impl Reason {
    /// Every reason, in label order.
    pub const ALL: [Reason; 12] = [
        Reason::Missing,
        Reason::TooLarge,
        Reason::Malformed,
        Reason::UnsupportedAlg,
        Reason::UnknownKid,
        Reason::NoKeys,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::MissingClaim,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::TooLarge => "too_large",
            Reason::Malformed => "malformed",
            Reason::UnsupportedAlg => "unsupported_alg",
            Reason::UnknownKid => "unknown_kid",
            Reason::NoKeys => "no_keys",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::MissingClaim => "missing_claim",
        }
    }

    /// Index in [`Self::ALL`].
    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The client-facing message (says nothing of the keys).
    pub fn message(self) -> &'static str {
        match self {
            Reason::Missing => "This route requires a bearer token (Authorization: Bearer <JWT>).",
            Reason::TooLarge => "The bearer token is too large.",
            Reason::Malformed => "The bearer token is malformed.",
            Reason::UnsupportedAlg => "The bearer token's signing algorithm is not accepted.",
            Reason::UnknownKid => "The bearer token is signed with an unknown key.",
            Reason::NoKeys => "The token issuer's keys are not available.",
            Reason::BadSignature => "The bearer token's signature is invalid.",
            Reason::Expired => "The bearer token has expired.",
            Reason::NotYetValid => "The bearer token is not valid yet.",
            Reason::WrongIssuer => "The bearer token's issuer is not accepted.",
            Reason::WrongAudience => "The bearer token's audience is not accepted.",
            Reason::MissingClaim => "The bearer token lacks a required claim.",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3: no error code when the
    /// request had no token).
    pub fn www_authenticate(self) -> &'static str {
        macro_rules! bearer {
            ($d:literal) => {
                concat!(
                    "Bearer realm=\"shardgate\", error=\"invalid_token\", error_description=\"",
                    $d,
                    "\""
                )
            };
        }
        match self {
            Reason::Missing => "Bearer realm=\"shardgate\"",
            Reason::TooLarge => bearer!("token too large"),
            Reason::Malformed => bearer!("malformed token"),
            Reason::UnsupportedAlg => bearer!("algorithm not accepted"),
            Reason::UnknownKid => bearer!("unknown key"),
            Reason::NoKeys => bearer!("issuer keys unavailable"),
            Reason::BadSignature => bearer!("invalid signature"),
            Reason::Expired => bearer!("token expired"),
            Reason::NotYetValid => bearer!("token not yet valid"),
            Reason::WrongIssuer => bearer!("issuer not accepted"),
            Reason::WrongAudience => bearer!("audience not accepted"),
            Reason::MissingClaim => bearer!("required claim missing"),
        }
    }
}

/// Key families: which algorithms one key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

fn family(alg: Algorithm) -> Option<Family> {
    match alg {
        a if RSA_ALGS.contains(&a) => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        _ => None,
    }
}

/// One verification key.
struct Key {
    kid: Option<String>,
    /// The algorithms it verifies (one family).
    algs: Vec<Algorithm>,
    family: Family,
    key: DecodingKey,
}

/// A parsed JWK set: the keys shardgate can use (RSA, EC P-256/P-384, Ed25519
/// signing keys); symmetric (`oct`) and encryption keys are left out.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// Parse JWKs, keeping the usable ones; also returns how many were left out.
    pub fn from_jwks(keys: &[serde_json::Value]) -> (KeySet, usize) {
        let mut set = KeySet::default();
        for v in keys {
            if let Some(k) = parse_key(v) {
                set.keys.push(k);
            }
        }
        let skipped = keys.len() - set.keys.len();
        (set, skipped)
    }

    /// Parse a JWKS document (`{"keys": [...]}`), as a remote set serves it.
    pub fn from_json(body: &[u8]) -> Result<(KeySet, usize), String> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWK set: {e}"))?;
        Ok(KeySet::from_jwks(&doc.keys))
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is usable.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None => self.keys.iter().find(|k| k.algs.contains(&alg)),
        }
    }
}

fn parse_key(v: &serde_json::Value) -> Option<Key> {
    let s = |name: &str| v.get(name).and_then(|x| x.as_str());
    if s("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(v.clone()).ok()?;
    let (fam, mut algs) = match (s("kty")?, s("crv")) {
        ("RSA", _) => (Family::Rsa, RSA_ALGS.to_vec()),
        ("EC", Some("P-256")) => (Family::Ec, vec![Algorithm::ES256]),
        ("EC", Some("P-384")) => (Family::Ec, vec![Algorithm::ES384]),
        ("OKP", Some("Ed25519")) => (Family::Ed, vec![Algorithm::EdDSA]),
        _ => return None,
    };
    if let Some(a) = s("alg") {
        let alg = Algorithm::from_str(a).ok()?;
        if !algs.contains(&alg) {
            return None;
        }
        algs = vec![alg];
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(Key {
        kid: s("kid").map(str::to_owned),
        algs,
        family: fam,
        key,
    })
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `localJWKS`, inline or from a Secret (a reload that changes the
    /// Secret swaps the set: [`Authenticator::adopt_local_keys`]).
    Local,
    /// Fetched from `uri` every `refresh` (and on an unknown `kid`).
    Remote {
        /// The JWKS URL (`remoteJWKS.uri`, else `<issuer>/.well-known/jwks.json`).
        uri: String,
        /// `remoteJWKS.cacheDuration`, else [`DEFAULT_CACHE_DURATION`].
        refresh: Duration,
    },
}

/// One `providers[]` entry, ready to verify.
pub struct Provider {
    /// `namespace/name` of the policy and the provider's name, for logs.
    pub name: String,
    issuer: Option<String>,
    source: KeySource,
    keys: ArcSwap<KeySet>,
    /// `claimToHeaders`: (claim, lowercase header name).
    claim_headers: Vec<(String, String)>,
    /// One validation per key family (its algorithms, issuer, audiences, leeway).
    validations: [Validation; 3],
    refetch: AtomicBool,
    /// Bumped on every key-set swap: cached verifications of older sets lapse.
    generation: AtomicU64,
    /// Milliseconds since `origin` + 1 of the last refetch request (0: none yet).
    last_ask_ms: AtomicU64,
    origin: Instant,
}

impl Provider {
    fn new(policy: &str, p: &JwtProvider, leeway: Duration) -> Result<Self, String> {
        let name = format!("{policy}/{}", p.name);
        let (source, keys) = match (&p.local_jwks, &p.remote_jwks, &p.issuer) {
            (Some(local), _, _) => {
                let (set, skipped) = KeySet::from_jwks(&local.keys);
                if set.is_empty() {
                    return Err(format!(
                        "SecurityPolicy {policy}: provider {}: localJWKS has no usable key (RSA, EC P-256/P-384 or Ed25519 signing keys)",
                        p.name
                    ));
                }
                if skipped > 0 {
                    tracing::warn!(provider = %name, skipped, "localJWKS: keys left out (unsupported type, curve, alg or use)");
                }
                (KeySource::Local, set)
            }
            (None, Some(remote), _) => (
                KeySource::Remote {
                    uri: remote.uri.clone(),
                    refresh: remote.cache_duration.unwrap_or(DEFAULT_CACHE_DURATION),
                },
                KeySet::default(),
            ),
            (None, None, Some(iss)) => (
                KeySource::Remote {
                    uri: format!("{}{WELL_KNOWN_JWKS}", iss.trim_end_matches('/')),
                    refresh: DEFAULT_CACHE_DURATION,
                },
                KeySet::default(),
            ),
            (None, None, None) => {
                return Err(format!(
                "SecurityPolicy {policy}: provider {}: no keys (localJWKS, remoteJWKS or issuer)",
                p.name
            ))
            }
        };
        let validation = |algs: &[Algorithm]| {
            let mut v = Validation::new(algs[0]);
            v.algorithms = algs.to_vec();
            v.leeway = leeway.as_secs();
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if let Some(iss) = &p.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            if p.audiences.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&p.audiences);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            v
        };
        Ok(Provider {
            name,
            issuer: p.issuer.clone(),
            source,
            keys: ArcSwap::from_pointee(keys),
            claim_headers: p
                .claim_to_headers
                .iter()
                .map(|c| (c.claim.clone(), c.header.to_ascii_lowercase()))
                .collect(),
            validations: [
                validation(&RSA_ALGS),
                validation(&[Algorithm::ES256, Algorithm::ES384]),
                validation(&[Algorithm::EdDSA]),
            ],
            refetch: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            last_ask_ms: AtomicU64::new(0),
            origin: Instant::now(),
        })
    }

    /// Where the keys come from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// Swap in a fresh key set (the fetcher).
    pub fn store_keys(&self, set: KeySet) {
        self.keys.store(Arc::new(set));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Number of usable keys now.
    pub fn key_count(&self) -> usize {
        self.keys.load().len()
    }

    /// Whether a refetch was asked for since the last call (the fetcher).
    pub fn take_refetch(&self) -> bool {
        self.refetch.swap(false, Ordering::AcqRel)
    }

    /// Ask the fetcher for a refetch of a remote set, at most once per
    /// [`REFETCH_MIN_INTERVAL`]; whether this call asked.
    fn ask_refetch(&self) -> bool {
        if !matches!(self.source, KeySource::Remote { .. }) {
            return false;
        }
        let now = self.origin.elapsed().as_millis() as u64 + 1;
        let last = self.last_ask_ms.load(Ordering::Acquire);
        if last != 0 && now < last + REFETCH_MIN_INTERVAL.as_millis() as u64 {
            return false;
        }
        if self
            .last_ask_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.refetch.store(true, Ordering::Release);
        true
    }
}

/// One SecurityPolicy's JWT providers.
pub struct JwtPolicy {
    /// Unique for the process's lifetime (the [`TokenCache`] key).
    uid: u64,
    /// Clock skew allowed on `exp` (cache entries last until `exp` + this).
    leeway_secs: u64,
    providers: Vec<Provider>,
    /// Every provider's `claimToHeaders` header names, lowercase, once each.
    claim_header_names: Vec<String>,
}

/// What a valid token established.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// The `sub` claim (the client identity for rate limits).
    pub subject: Option<String>,
    /// `claimToHeaders` (lowercase header name, value) for the backend.
    pub headers: Vec<(String, String)>,
    /// The `exp` claim (seconds since the epoch; 0 when not an integer).
    pub expires: u64,
    /// Index of the provider whose key verified it.
    pub provider: usize,
}

#[derive(Deserialize)]
struct TokenHeader<'a> {
    #[serde(borrow)]
    alg: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct IssOnly {
    #[serde(default)]
    iss: Option<String>,
}

#[derive(Deserialize)]
struct SubOnly {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
}

/// Seconds since the Unix epoch now (the clock `exp` is compared with).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A NumericDate claim as whole seconds (0 when absent or not a number).
fn seconds(v: Option<f64>) -> u64 {
    match v {
        Some(x) if x.is_finite() && x > 0.0 => x as u64,
        _ => 0,
    }
}

/// The token of an `Authorization` value (`Bearer`, any case, then spaces).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let t = rest.trim_ascii();
    (!t.is_empty()).then_some(t)
}

/// The three segments of a compact JWS, when each is non-empty base64url.
fn segments(token: &[u8]) -> Option<[&[u8]; 3]> {
    let mut it = token.split(|b| *b == b'.');
    let parts = [it.next()?, it.next()?, it.next()?];
    if it.next().is_some() {
        return None;
    }
    let b64 = |s: &[u8]| {
        !s.is_empty()
            && s.len() % 4 != 1
            && s.iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    };
    parts.iter().all(|s| b64(s)).then_some(parts)
}

fn claim_value(v: &serde_json::Value) -> Option<String> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    // A header value carries no control characters (no header injection).
    (!s.bytes().any(|b| b.is_ascii_control())).then_some(s)
}

impl JwtPolicy {
    /// Check the request's `Authorization` value (see the module docs).
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<Verified, Reason> {
        let value = authorization.ok_or(Reason::Missing)?;
        let token = bearer(value).ok_or(Reason::Missing)?;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Reason::TooLarge);
        }
        let [head, payload, _] = segments(token).ok_or(Reason::Malformed)?;
        let token = std::str::from_utf8(token).map_err(|_| Reason::Malformed)?;
        let head = URL_SAFE_NO_PAD
            .decode(head)
            .map_err(|_| Reason::Malformed)?;
        let head: TokenHeader<'_> = serde_json::from_slice(&head).map_err(|_| Reason::Malformed)?;
        let alg = Algorithm::from_str(&head.alg).map_err(|_| Reason::UnsupportedAlg)?;
        let fam = family(alg).ok_or(Reason::UnsupportedAlg)?;
        let (index, provider) = match self.providers.as_slice() {
            [one] => (0, one),
            many => {
                let claims = URL_SAFE_NO_PAD
                    .decode(payload)
                    .map_err(|_| Reason::Malformed)?;
                let iss: IssOnly =
                    serde_json::from_slice(&claims).map_err(|_| Reason::Malformed)?;
                let iss = iss.iss.ok_or(Reason::MissingClaim)?;
                many.iter()
                    .enumerate()
                    .find(|(_, p)| p.issuer.as_deref() == Some(iss.as_str()))
                    .ok_or(Reason::WrongIssuer)?
            }
        };
        let keys = provider.keys.load();
        if keys.is_empty() {
            provider.ask_refetch();
            return Err(Reason::NoKeys);
        }
        let Some(key) = keys.find(head.kid.as_deref(), alg) else {
            provider.ask_refetch();
            return Err(Reason::UnknownKid);
        };
        if key.family != fam || !key.algs.contains(&alg) {
            return Err(Reason::UnsupportedAlg);
        }
        let validation = &provider.validations[fam as usize];
        let map_err = |e: jsonwebtoken::errors::Error| match e.kind() {
            ErrorKind::ExpiredSignature => Reason::Expired,
            ErrorKind::ImmatureSignature => Reason::NotYetValid,
            ErrorKind::InvalidIssuer => Reason::WrongIssuer,
            ErrorKind::InvalidAudience => Reason::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) => Reason::MissingClaim,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Reason::UnsupportedAlg,
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => Reason::Malformed,
            _ => Reason::BadSignature,
        };
        if provider.claim_headers.is_empty() {
            let data =
                jsonwebtoken::decode::<SubOnly>(token, &key.key, validation).map_err(map_err)?;
            return Ok(Verified {
                subject: data.claims.sub,
                headers: Vec::new(),
                expires: seconds(data.claims.exp),
                provider: index,
            });
        }
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, &key.key, validation,
        )
        .map_err(map_err)?;
        let claims = data.claims;
        Ok(Verified {
            expires: seconds(claims.get("exp").and_then(|e| e.as_f64())),
            provider: index,
            subject: claims
                .get("sub")
                .and_then(|s| s.as_str())
                .map(str::to_owned),
            headers: provider
                .claim_headers
                .iter()
                .filter_map(|(claim, header)| {
                    Some((header.clone(), claim_value(claims.get(claim)?)?))
                })
                .collect(),
        })
    }

    /// Header names this policy's providers set (a client's own copies are dropped).
    pub fn claim_header_names(&self) -> &[String] {
        &self.claim_header_names
    }

    /// [`JwtPolicy::verify`] through this shard's `cache`: a token verified
    /// before (same bytes, not expired at `now_unix`, same key set) is not
    /// checked again. See the module docs.
    pub fn verify_cached(
        &self,
        cache: &mut TokenCache,
        authorization: Option<&[u8]>,
        now_unix: u64,
    ) -> Result<Rc<Verified>, Reason> {
        let token = authorization.and_then(bearer);
        if let Some(t) = token {
            if let Some(v) = cache.get(self, t, now_unix) {
                return Ok(v);
            }
        }
        let v = Rc::new(self.verify(authorization)?);
        if let Some(t) = token {
            cache.insert(self, t, &v, now_unix);
        }
        Ok(v)
    }

    fn generation(&self, provider: usize) -> u64 {
        self.providers
            .get(provider)
            .map_or(u64::MAX, |p| p.generation.load(Ordering::Acquire))
    }
}

/// One cached verification.
struct Cached {
    verified: Rc<Verified>,
    /// Valid while `now` < this (`exp` + leeway).
    until: u64,
    /// The provider's key-set generation it was verified against.
    generation: u64,
}

/// A shard's verified tokens, per policy (see the module docs).
pub struct TokenCache {
    capacity: usize,
    len: usize,
    by_policy: HashMap<u64, HashMap<Box<[u8]>, Cached>>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0: nothing is cached).
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            len: 0,
            by_policy: HashMap::new(),
        }
    }

    /// Forget every verdict (the authenticator was replaced by a reload).
    pub fn clear(&mut self) {
        self.by_policy.clear();
        self.len = 0;
    }

    /// Tokens held now.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get(&self, policy: &JwtPolicy, token: &[u8], now: u64) -> Option<Rc<Verified>> {
        let c = self.by_policy.get(&policy.uid)?.get(token)?;
        (now < c.until && c.generation == policy.generation(c.verified.provider))
            .then(|| c.verified.clone())
    }

    fn insert(&mut self, policy: &JwtPolicy, token: &[u8], v: &Rc<Verified>, now: u64) {
        if self.capacity == 0 || v.expires == 0 {
            return;
        }
        if self.len >= self.capacity {
            self.evict(now);
        }
        let entry = Cached {
            verified: v.clone(),
            until: v.expires.saturating_add(policy.leeway_secs),
            generation: policy.generation(v.provider),
        };
        let map = self.by_policy.entry(policy.uid).or_default();
        if map.insert(token.into(), entry).is_none() {
            self.len += 1;
        }
    }

    /// Make room: drop expired entries, else one arbitrary entry.
    fn evict(&mut self, now: u64) {
        for map in self.by_policy.values_mut() {
            map.retain(|_, c| now < c.until);
        }
        self.by_policy.retain(|_, m| !m.is_empty());
        self.len = self.by_policy.values().map(HashMap::len).sum();
        if self.len >= self.capacity {
            if let Some(map) = self.by_policy.values_mut().next() {
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                    self.len -= 1;
                }
            }
        }
    }
}

/// Every SecurityPolicy with JWT authentication that a rule uses, by key.
#[derive(Default)]
pub struct Authenticator {
    policies: Vec<(String, JwtPolicy)>,
}

impl Authenticator {
    /// Build the providers of every SecurityPolicy that some rule links and
    /// that has `authentication.jwt` (an unusable `localJWKS` is an error).
    pub fn build(table: &RoutingTable, leeway: Duration) -> Result<Self, String> {
        let mut policies: Vec<(String, JwtPolicy)> = Vec::new();
        for rule in table.rules() {
            let Some(key) = rule.security else { continue };
            if policies.iter().any(|(k, _)| k == key) {
                continue;
            }
            let Some(jwt) = table
                .security_policy(key)
                .and_then(|sp| sp.spec.authentication.as_ref())
                .and_then(|a| a.jwt.as_ref())
            else {
                continue;
            };
            let providers = jwt
                .providers
                .iter()
                .map(|p| Provider::new(key, p, leeway))
                .collect::<Result<Vec<_>, _>>()?;
            if !providers.is_empty() {
                let mut claim_header_names: Vec<String> = Vec::new();
                for p in &providers {
                    for (_, h) in &p.claim_headers {
                        if !claim_header_names.contains(h) {
                            claim_header_names.push(h.clone());
                        }
                    }
                }
                policies.push((
                    key.to_string(),
                    JwtPolicy {
                        uid: POLICY_UIDS.fetch_add(1, Ordering::Relaxed),
                        leeway_secs: leeway.as_secs(),
                        providers,
                        claim_header_names,
                    },
                ));
            }
        }
        Ok(Authenticator { policies })
    }

    /// The JWT policy of SecurityPolicy `key`, if it has one.
    pub fn policy(&self, key: &str) -> Option<&JwtPolicy> {
        self.policies.iter().find(|(k, _)| k == key).map(|(_, p)| p)
    }

    /// Every provider of every policy.
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.policies.iter().flat_map(|(_, p)| p.providers.iter())
    }

    /// Whether no rule uses JWT authentication.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// A reload built this authenticator to replace `older`: each remote
    /// provider starts with the key set `older` fetched from the same URI, so
    /// tokens verify before the first fetch of the new one. How many were
    /// carried.
    pub fn carry_remote_keys(&self, older: &Authenticator) -> usize {
        let mut carried = 0;
        for (_, policy) in &self.policies {
            for p in &policy.providers {
                let KeySource::Remote { uri, .. } = &p.source else {
                    continue;
                };
                let old = older
                    .policies
                    .iter()
                    .flat_map(|(_, op)| op.providers.iter())
                    .find(|op| matches!(&op.source, KeySource::Remote { uri: u, .. } if u == uri));
                if let Some(op) = old.filter(|op| op.key_count() > 0) {
                    p.keys.store(op.keys.load_full());
                    carried += 1;
                }
            }
        }
        carried
    }

    /// Take the local key sets of `newer` (built from a reloaded
    /// configuration) for this authenticator's `localJWKS` providers of the
    /// same policy and name; how many were swapped. Tokens cached under the
    /// old sets lapse (the generation moves).
    pub fn adopt_local_keys(&self, newer: &Authenticator) -> usize {
        let mut swapped = 0;
        for (key, policy) in &self.policies {
            let Some(new_policy) = newer.policy(key) else {
                continue;
            };
            for p in &policy.providers {
                if !matches!(p.source, KeySource::Local) {
                    continue;
                }
                let Some(np) = new_policy.providers.iter().find(|np| np.name == p.name) else {
                    continue;
                };
                if matches!(np.source, KeySource::Local) {
                    p.keys.store(np.keys.load_full());
                    p.generation.fetch_add(1, Ordering::AcqRel);
                    swapped += 1;
                }
            }
        }
        swapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_and_segments() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearerabc"), None);
        assert!(
            segments(b"a.b.c").is_none(),
            "1-char segments are not base64"
        );
        assert!(segments(b"ab.cd.ef").is_some());
        assert!(segments(b"ab.cd").is_none());
        assert!(segments(b"ab.cd.ef.gh").is_none());
        assert!(segments(b"ab..ef").is_none());
        assert!(segments(b"ab.c+.ef").is_none());
        assert!(segments(b"ab.cd==.ef").is_none());
    }

    #[test]
    fn reasons_have_distinct_labels_and_no_detail() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(Reason::ALL[..i].iter().all(|o| o.label() != r.label()));
            assert!(r
                .www_authenticate()
                .starts_with("Bearer realm=\"shardgate\""));
        }
    }
}
