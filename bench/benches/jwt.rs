//! JWT authentication: the per-request cost of `shardgate::jwt` — what a request
//! on a rule with a SecurityPolicy `authentication.jwt` pays on the shard
//! (README "JWT authentication"): split the `Authorization` header, decode the
//! header segment, pick the key by `kid`, verify the signature, decode and check
//! the claims (`exp`, `nbf`, `iss`, `aud`), extract `sub`.
//!
//! - `verify/RS256`, `verify/PS256`: a 2048-bit RSA key (public-key operation);
//! - `verify/ES256`: P-256 ECDSA;
//! - `verify/EdDSA`: Ed25519;
//! - `cached/RS256_hit`: the same token again through a shard's
//!   `TokenCache` (what every request after a client's first pays);
//! - `reject/bad_signature`: an RS256 token whose signature does not match
//!   (the full verification, then a refusal);
//! - `reject/malformed`: a token that is not three base64url segments (refused
//!   before any parsing);
//! - `reject/missing`: no `Authorization` header.
//!
//! Keys and tokens are the test ones of `gateway/tests/data/jwt/` (minted here
//! with `jsonwebtoken`). Numbers: bench/results/micro.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use shardgate::jwt::{Authenticator, TokenCache};

const RSA: &[u8] = include_bytes!("../../gateway/tests/data/jwt/rsa.pem");
const EC: &[u8] = include_bytes!("../../gateway/tests/data/jwt/ec.pem");
const ED: &[u8] = include_bytes!("../../gateway/tests/data/jwt/ed.pem");
const JWKS: &str = include_str!("../../gateway/tests/data/jwt/jwks.json");
const ISS: &str = "https://auth.example.com";
const AUD: &str = "ai-inference";

fn authenticator() -> Authenticator {
    let keys =
        serde_json::from_str::<serde_json::Value>(JWKS).expect("jwks.json")["keys"].to_string();
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: shardgate\n  listeners: [{{name: http, protocol: HTTP, port: 80}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: svc, port: 8000}}]\n---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata: {{name: sp, namespace: default}}\nspec:\n  targetRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}\n  authentication:\n    jwt:\n      providers:\n      - name: p\n        issuer: {ISS}\n        audiences: [{AUD}]\n        localJWKS: {{keys: {keys}}}\n"
    );
    let config = shardgate_routing::load_sources(&[("bench.yaml".into(), yaml)]).expect("config");
    let table =
        shardgate_routing::RoutingTable::build(&config, &mut |_, _| Vec::new()).expect("table");
    Authenticator::build(&table, Duration::from_secs(30)).expect("authenticator")
}

fn bearer(alg: Algorithm, kid: &str) -> Vec<u8> {
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED),
        _ => EncodingKey::from_rsa_pem(RSA),
    }
    .expect("key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({"sub": "user-1", "iss": ISS, "aud": AUD, "iat": now, "exp": now + 86_400});
    let mut h = Header::new(alg);
    h.kid = Some(kid.to_owned());
    format!("Bearer {}", encode(&h, &claims, &key).expect("token")).into_bytes()
}

fn bench(c: &mut Criterion) {
    let auth = authenticator();
    let policy = auth.policy("default/sp").expect("policy");
    let mut g = c.benchmark_group("verify");
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::PS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::EdDSA, "ed-1"),
    ] {
        let token = bearer(alg, kid);
        assert!(policy.verify(Some(&token)).is_ok(), "{alg:?} token refused");
        g.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| black_box(policy.verify(Some(black_box(&token)))).is_ok())
        });
    }
    g.finish();
    let mut g = c.benchmark_group("cached");
    let token = bearer(Algorithm::RS256, "rsa-1");
    let mut cache = TokenCache::new(4096);
    let now = shardgate::jwt::unix_now();
    assert!(policy.verify_cached(&mut cache, Some(&token), now).is_ok());
    g.bench_function("RS256_hit", |b| {
        b.iter(|| black_box(policy.verify_cached(&mut cache, Some(black_box(&token)), now)).is_ok())
    });
    g.finish();
    let mut g = c.benchmark_group("reject");
    let mut bad = bearer(Algorithm::RS256, "rsa-1");
    let n = bad.len();
    bad[n - 5] = if bad[n - 5] == b'A' { b'B' } else { b'A' };
    assert!(policy.verify(Some(&bad)).is_err());
    g.bench_function("bad_signature", |b| {
        b.iter(|| black_box(policy.verify(Some(black_box(&bad)))).is_err())
    });
    let malformed = b"Bearer not.a-token".to_vec();
    g.bench_function("malformed", |b| {
        b.iter(|| black_box(policy.verify(Some(black_box(&malformed)))).is_err())
    });
    g.bench_function("missing", |b| {
        b.iter(|| black_box(policy.verify(None)).is_err())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
