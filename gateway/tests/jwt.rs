//! JWT verification against a JWK set (`shardgate::jwt`), one test per attack
//! of issue #15 (alg none, key confusion, expired, not yet valid, wrong issuer,
//! wrong audience, unknown kid and the refetch rate limit, a 100 KB token, a
//! malformed segment) and the tokens that must pass (RS256, ES256, EdDSA).

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use shardgate::jwt::{Authenticator, JwtPolicy, Reason, Verified};

const RSA: &[u8] = include_bytes!("data/jwt/rsa.pem");
const RSA_PUB: &[u8] = include_bytes!("data/jwt/rsa.pub.pem");
const EC: &[u8] = include_bytes!("data/jwt/ec.pem");
const ED: &[u8] = include_bytes!("data/jwt/ed.pem");
const JWKS: &str = include_str!("data/jwt/jwks.json");
const ISS: &str = "https://auth.example.com";
const AUD: &str = "ai-inference";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A config whose one rule has SecurityPolicy `default/sp` with `providers`.
fn auth_for(providers: &str) -> Authenticator {
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: shardgate\n  listeners: [{{name: http, protocol: HTTP, port: 80}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: svc, port: 8000}}]\n---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata: {{name: sp, namespace: default}}\nspec:\n  targetRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}\n  authentication:\n    jwt:\n      providers:\n{providers}"
    );
    let config = shardgate_routing::load_sources(&[("t.yaml".into(), yaml)]).unwrap();
    let table = shardgate_routing::RoutingTable::build(&config, &mut |_, _| Vec::new()).unwrap();
    Authenticator::build(&table, Duration::from_secs(30)).unwrap()
}

fn local(extra: &str) -> Authenticator {
    let keys = serde_json::from_str::<serde_json::Value>(JWKS).unwrap()["keys"].to_string();
    auth_for(&format!(
        "      - name: p\n        issuer: {ISS}\n        audiences: [{AUD}]\n        localJWKS: {{keys: {keys}}}\n{extra}"
    ))
}

fn policy(a: &Authenticator) -> &JwtPolicy {
    a.policy("default/sp").expect("policy default/sp")
}

fn claims() -> serde_json::Value {
    json!({"sub": "user-1", "iss": ISS, "aud": AUD, "exp": now() + 600, "iat": now()})
}

fn mint(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(EC).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED).unwrap(),
        _ => EncodingKey::from_rsa_pem(RSA).unwrap(),
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, &key).unwrap()
}

fn check(p: &JwtPolicy, token: &str) -> Result<Verified, Reason> {
    p.verify(Some(format!("Bearer {token}").as_bytes()))
}

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn valid_rs256_es256_and_eddsa_tokens_pass() {
    let a = local("");
    let p = policy(&a);
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::RS512, "rsa-1"),
        (Algorithm::PS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::EdDSA, "ed-1"),
    ] {
        let v = check(p, &mint(alg, Some(kid), &claims()));
        assert_eq!(v.map(|v| v.subject), Ok(Some("user-1".into())), "{alg:?}");
    }
    // Without a kid, the first key that takes the alg.
    assert!(check(p, &mint(Algorithm::RS256, None, &claims())).is_ok());
    assert!(check(p, &mint(Algorithm::ES256, None, &claims())).is_ok());
    // The scheme is case-insensitive.
    let t = mint(Algorithm::RS256, Some("rsa-1"), &claims());
    assert!(p.verify(Some(format!("bearer {t}").as_bytes())).is_ok());
}

#[test]
fn missing_or_other_scheme_is_missing() {
    let a = local("");
    let p = policy(&a);
    assert_eq!(p.verify(None), Err(Reason::Missing));
    assert_eq!(p.verify(Some(b"Basic dXNlcjpwdw==")), Err(Reason::Missing));
    assert_eq!(p.verify(Some(b"Bearer ")), Err(Reason::Missing));
}

#[test]
fn alg_none_is_refused() {
    let a = local("");
    let p = policy(&a);
    let head = b64(&json!({"alg": "none", "typ": "JWT"}));
    let body = b64(&claims());
    // Unsigned (empty signature) and with a junk signature.
    assert_eq!(check(p, &format!("{head}.{body}.")), Err(Reason::Malformed));
    assert_eq!(
        check(p, &format!("{head}.{body}.c2ln")),
        Err(Reason::UnsupportedAlg)
    );
    let head = b64(&json!({"alg": "None", "kid": "rsa-1"}));
    assert_eq!(
        check(p, &format!("{head}.{body}.c2ln")),
        Err(Reason::UnsupportedAlg)
    );
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let a = local("");
    let p = policy(&a);
    for kid in [Some("rsa-1"), None] {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_owned);
        let t = encode(&h, &claims(), &EncodingKey::from_secret(RSA_PUB)).unwrap();
        assert_eq!(check(p, &t), Err(Reason::UnsupportedAlg), "kid {kid:?}");
    }
    // An alg of another family than the key's: ES256 header on the RSA key.
    let t = mint(Algorithm::ES256, Some("rsa-1"), &claims());
    assert_eq!(check(p, &t), Err(Reason::UnsupportedAlg));
    // ES384 on the P-256 key (an ES256 signature under an ES384 header).
    let t = mint(Algorithm::ES256, Some("ec-1"), &claims());
    let rest = t.split_once('.').unwrap().1;
    let head = b64(&json!({"alg": "ES384", "kid": "ec-1"}));
    assert_eq!(
        check(p, &format!("{head}.{rest}")),
        Err(Reason::UnsupportedAlg)
    );
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused_with_leeway() {
    let a = local("");
    let p = policy(&a);
    let mut c = claims();
    c["exp"] = json!(now() - 120);
    assert_eq!(
        check(p, &mint(Algorithm::RS256, Some("rsa-1"), &c)),
        Err(Reason::Expired)
    );
    c["exp"] = json!(now() - 5);
    assert!(
        check(p, &mint(Algorithm::RS256, Some("rsa-1"), &c)).is_ok(),
        "within the 30 s leeway"
    );
    let mut c = claims();
    c["nbf"] = json!(now() + 120);
    assert_eq!(
        check(p, &mint(Algorithm::RS256, Some("rsa-1"), &c)),
        Err(Reason::NotYetValid)
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        check(p, &mint(Algorithm::RS256, Some("rsa-1"), &c)),
        Err(Reason::MissingClaim)
    );
}

#[test]
fn wrong_issuer_and_wrong_audience_are_refused() {
    let a = local("");
    let p = policy(&a);
    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    assert_eq!(
        check(p, &mint(Algorithm::RS256, Some("rsa-1"), &c)),
        Err(Reason::WrongIssuer)
    );
    let mut c = claims();
    c["aud"] = json!("another-api");
    assert_eq!(
        check(p, &mint(Algorithm::RS256, Some("rsa-1"), &c)),
        Err(Reason::WrongAudience)
    );
    c["aud"] = json!(["another-api", AUD]);
    assert!(
        check(p, &mint(Algorithm::RS256, Some("rsa-1"), &c)).is_ok(),
        "one of several"
    );
    let mut c = claims();
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        check(p, &mint(Algorithm::RS256, Some("rsa-1"), &c)),
        Err(Reason::MissingClaim)
    );
}

#[test]
fn unknown_kid_and_bad_signature_are_refused() {
    let a = local("");
    let p = policy(&a);
    let t = mint(Algorithm::RS256, Some("rsa-2"), &claims());
    assert_eq!(check(p, &t), Err(Reason::UnknownKid));
    // A payload swapped under a valid signature.
    let t = mint(Algorithm::RS256, Some("rsa-1"), &claims());
    let mut c = claims();
    c["sub"] = json!("admin");
    let parts: Vec<&str> = t.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    assert_eq!(check(p, &forged), Err(Reason::BadSignature));
}

#[test]
fn oversized_and_malformed_tokens_are_refused_before_parsing() {
    let a = local("");
    let p = policy(&a);
    let big = "A".repeat(100 * 1024);
    assert_eq!(
        check(p, &format!("{big}.{big}.{big}")),
        Err(Reason::TooLarge)
    );
    let t = mint(Algorithm::RS256, Some("rsa-1"), &claims());
    let parts: Vec<&str> = t.split('.').collect();
    for bad in [
        format!("{}.{}!.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}==.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{t}.{}", parts[2]),
        // A segment of 4n + 1 characters is no base64 at all.
        format!(
            "{}.{}.{}",
            parts[0],
            &parts[1][..4 * (parts[1].len() / 4) + 1],
            parts[2]
        ),
        "e30.e30.e30".replace("e30", "bm90IGpzb24"),
    ] {
        assert_eq!(check(p, &bad), Err(Reason::Malformed), "{bad}");
    }
}

#[test]
fn several_providers_are_picked_by_iss_and_claims_become_headers() {
    let keys = serde_json::from_str::<serde_json::Value>(JWKS).unwrap()["keys"].to_string();
    let a = auth_for(&format!(
        "      - name: one\n        issuer: https://one.example\n        remoteJWKS: {{uri: 'http://127.0.0.1:9/jwks'}}\n      - name: two\n        issuer: {ISS}\n        audiences: [{AUD}]\n        localJWKS: {{keys: {keys}}}\n        claimToHeaders: [{{claim: sub, header: X-JWT-Sub}}, {{claim: tier, header: x-tier}}, {{claim: missing, header: x-missing}}]\n"
    ));
    let p = policy(&a);
    let mut c = claims();
    c["tier"] = json!(3);
    let v = check(p, &mint(Algorithm::ES256, Some("ec-1"), &c)).unwrap();
    assert_eq!(
        v.headers,
        [
            ("x-jwt-sub".to_string(), "user-1".to_string()),
            ("x-tier".into(), "3".into())
        ]
    );
    assert_eq!(p.claim_header_names(), ["x-jwt-sub", "x-tier", "x-missing"]);
    c["iss"] = json!("https://nobody.example");
    assert_eq!(
        check(p, &mint(Algorithm::ES256, Some("ec-1"), &c)),
        Err(Reason::WrongIssuer)
    );
    c["iss"] = json!("https://one.example");
    assert_eq!(
        check(p, &mint(Algorithm::ES256, Some("ec-1"), &c)),
        Err(Reason::NoKeys)
    );
}

#[test]
fn a_flood_of_unknown_kids_asks_for_one_refetch() {
    let keys = serde_json::from_str::<serde_json::Value>(JWKS).unwrap()["keys"].to_string();
    let a = auth_for("      - name: p\n        issuer: http://127.0.0.1:9\n");
    let prov = a.providers().next().unwrap();
    // No keys fetched yet: refused, and a refetch is asked for once.
    let mut c = claims();
    c["iss"] = json!("http://127.0.0.1:9");
    let t = mint(Algorithm::RS256, Some("rsa-1"), &c);
    assert_eq!(check(policy(&a), &t), Err(Reason::NoKeys));
    assert!(prov.take_refetch());
    // The fetcher stores a set; a flood of unknown kids asks for no refetch
    // within the 10 s interval.
    let (set, _) =
        shardgate::jwt::KeySet::from_json(format!("{{\"keys\":{keys}}}").as_bytes()).unwrap();
    prov.store_keys(set);
    assert_eq!(prov.key_count(), 3);
    assert!(check(policy(&a), &t).is_ok());
    for i in 0..1000 {
        let t = mint(Algorithm::RS256, Some(&format!("k{i}")), &c);
        assert_eq!(check(policy(&a), &t), Err(Reason::UnknownKid));
    }
    assert!(!prov.take_refetch(), "asked again within 10 s");
}

#[test]
fn a_local_jwks_without_usable_keys_is_a_start_error() {
    let yaml_keys = "[{kty: oct, k: c2VjcmV0}]";
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: shardgate\n  listeners: [{{name: http, protocol: HTTP, port: 80}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: svc, port: 8000}}]\n---\napiVersion: gateway.networking.k8s.io/v1alpha2\nkind: SecurityPolicy\nmetadata: {{name: sp, namespace: default}}\nspec:\n  targetRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}\n  authentication:\n    jwt:\n      providers:\n      - name: p\n        localJWKS: {{keys: {yaml_keys}}}\n"
    );
    let config = shardgate_routing::load_sources(&[("t.yaml".into(), yaml)]).unwrap();
    let table = shardgate_routing::RoutingTable::build(&config, &mut |_, _| Vec::new()).unwrap();
    let e = Authenticator::build(&table, Duration::from_secs(30))
        .err()
        .unwrap();
    assert!(e.contains("no usable key"), "{e}");
}

#[test]
fn the_token_cache_skips_re_verification_until_exp_or_a_key_change() {
    use shardgate::jwt::TokenCache;
    use std::rc::Rc;
    let a = local("");
    let p = policy(&a);
    let mut cache = TokenCache::new(16);
    let c = claims();
    let exp = c["exp"].as_u64().unwrap();
    let bearer = format!("Bearer {}", mint(Algorithm::RS256, Some("rsa-1"), &c));
    let auth = Some(bearer.as_bytes());
    let first = p.verify_cached(&mut cache, auth, now()).unwrap();
    assert_eq!(first.subject.as_deref(), Some("user-1"));
    assert_eq!(first.expires, exp);
    assert_eq!(cache.len(), 1);
    // A hit is the very same verification (no new check, no allocation).
    let hit = p.verify_cached(&mut cache, auth, now()).unwrap();
    assert!(Rc::ptr_eq(&first, &hit));
    // Past exp + leeway (30 s) the entry is not used: a full check again (the
    // token is still valid by the real clock, so it passes, as a new result).
    let late = p.verify_cached(&mut cache, auth, exp + 30).unwrap();
    assert!(!Rc::ptr_eq(&first, &late));
    let again = p.verify_cached(&mut cache, auth, now()).unwrap();
    assert!(Rc::ptr_eq(&late, &again), "the re-verified token is cached");
    // A key-set swap (JWKS refresh) re-verifies every cached token.
    let set = shardgate::jwt::KeySet::from_json(JWKS.as_bytes())
        .unwrap()
        .0;
    a.providers().next().unwrap().store_keys(set);
    let after = p.verify_cached(&mut cache, auth, now()).unwrap();
    assert!(!Rc::ptr_eq(&again, &after));
    // Refused tokens are never cached: each is checked in full.
    let before = cache.len();
    let mut bad = bearer.clone().into_bytes();
    let n = bad.len();
    bad[n - 3] = if bad[n - 3] == b'A' { b'B' } else { b'A' };
    for _ in 0..3 {
        assert_eq!(
            p.verify_cached(&mut cache, Some(&bad), now()).map(|_| ()),
            Err(Reason::BadSignature)
        );
    }
    assert_eq!(cache.len(), before);
    assert_eq!(
        p.verify_cached(&mut cache, None, now()).map(|_| ()),
        Err(Reason::Missing)
    );
}

#[test]
fn the_token_cache_is_bounded_and_can_be_off() {
    use shardgate::jwt::TokenCache;
    use std::rc::Rc;
    let a = local("");
    let p = policy(&a);
    let token = |sub: &str| {
        let mut c = claims();
        c["sub"] = json!(sub);
        format!("Bearer {}", mint(Algorithm::ES256, Some("ec-1"), &c))
    };
    let mut cache = TokenCache::new(2);
    for i in 0..5 {
        let t = token(&format!("user-{i}"));
        p.verify_cached(&mut cache, Some(t.as_bytes()), now())
            .unwrap();
        assert!(cache.len() <= 2, "{} entries", cache.len());
    }
    let mut off = TokenCache::new(0);
    let t = token("x");
    let one = p
        .verify_cached(&mut off, Some(t.as_bytes()), now())
        .unwrap();
    let two = p
        .verify_cached(&mut off, Some(t.as_bytes()), now())
        .unwrap();
    assert!(!Rc::ptr_eq(&one, &two));
    assert!(off.is_empty());
}

#[test]
fn a_local_jwks_from_a_secret_verifies_tokens() {
    let jwks = serde_json::from_str::<serde_json::Value>(JWKS)
        .unwrap()
        .to_string();
    let a = auth_for(&format!(
        "      - name: p\n        issuer: {ISS}\n        audiences: [{AUD}]\n        localJWKS: {{secretRef: {{name: idp-jwks}}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: idp-jwks, namespace: default}}\ntype: Opaque\nstringData:\n  jwks.json: '{jwks}'\n"
    ));
    let p = policy(&a);
    assert_eq!(a.providers().next().unwrap().key_count(), 3);
    let v = check(p, &mint(Algorithm::ES256, Some("ec-1"), &claims()));
    assert_eq!(v.map(|v| v.subject), Ok(Some("user-1".into())));
}

/// A reload that changes the Secret of a `localJWKS.secretRef` swaps the key
/// set of the running provider (`Authenticator::adopt_local_keys`): a key
/// added to the Secret verifies at once, a removed one stops verifying, and
/// a token cached under the old set is checked again.
#[test]
fn a_reloaded_jwks_secret_swaps_the_keys() {
    let all = serde_json::from_str::<serde_json::Value>(JWKS).unwrap();
    let only = |kid: &str| {
        let keys: Vec<_> = all["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kid"] == kid)
            .cloned()
            .collect();
        json!({ "keys": keys }).to_string()
    };
    let with_secret = |jwks: &str| {
        auth_for(&format!(
            "      - name: p\n        issuer: {ISS}\n        audiences: [{AUD}]\n        localJWKS: {{secretRef: {{name: idp-jwks}}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: idp-jwks, namespace: default}}\ntype: Opaque\nstringData:\n  jwks.json: '{jwks}'\n"
        ))
    };
    let running = with_secret(&only("rsa-1"));
    let rsa = mint(Algorithm::RS256, Some("rsa-1"), &claims());
    let ec = mint(Algorithm::ES256, Some("ec-1"), &claims());
    let mut cache = shardgate::jwt::TokenCache::new(16);
    let p = policy(&running);
    let header = format!("Bearer {rsa}");
    assert!(p
        .verify_cached(&mut cache, Some(header.as_bytes()), now())
        .is_ok());
    assert!(check(p, &ec).is_err());

    assert_eq!(running.adopt_local_keys(&with_secret(&only("ec-1"))), 1);
    assert!(check(p, &ec).is_ok(), "the added key verifies");
    assert!(
        check(p, &rsa).is_err(),
        "the removed key no longer verifies"
    );
    assert!(
        p.verify_cached(&mut cache, Some(header.as_bytes()), now())
            .is_err(),
        "a token cached under the old set is checked again"
    );
}
