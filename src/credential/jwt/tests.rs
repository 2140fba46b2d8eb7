//! Tests of key loading and token verification, against the fixture tokens
//! in `tests/fixtures/jwt.json` and keys made for them.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::*;
use crate::credential::MAX_ID_LEN;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "fixture-jwt-hs256-secret";

// Test-only keys, made with `openssl genpkey` for these tests.
const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC1KBHyevhyy6iM
rahopJQT9jMsY500hWZRZH9hy0H9egnjZ5vhuvyGAmKic0tuZx1l0drDCL0oYKBY
UTiajuu7+iR1OyJBlywaulrZHAX1lReC8yLuN6eNSuwBU15CiNJeOkf4bU89cSt9
EzIvyqy4Cee+V7W4w64mtNHqGVJH93OtQbxDQPRibQ2Hc77Q6G6zLkj1/a0IUCRt
8v+pVg7kYkdLB2ttO+GzQ7arFXnAoc00OJiMgH/xZJwcNSANHcmHxwklYOOR4ZhF
r0ghFl3OE2HtZAtAi5DlaYdUvsczbJY5z2QomjFGTSj4clX4MGd4dqtYZ7BF9MjB
rrT4vKEZAgMBAAECggEAO6mGv6VgTe5lBG/tFwmc+zYKhIQKMlH88LF4gmy+vwyC
VTK6VA2RPVFryrTOEv5C4FXNBo7KPZIVPQEC82Q+nxozB6kCDzgKfoMBiJ+CFu+T
Xr1Us8AAnrgeIhGi6abGIeJv8ZGOl12+ROMdlD/bwoEAod+hKcjIglbrC35raue2
a9TE+g3AccYYZuv3K02b+vghJUYUgoSM2brGDsmf4hCoW9E4UHZoMtW43lDVwONu
p1U/v+8da6pp/Cvq8c1M8lwCFoQ1AkcwXMXZq96dpN+YRJ6zAy3VgstePVLSFAhx
PwRTjuy5JrWaPlVCQwJlvBVpIqNZlBJJRF43SSE4QQKBgQDf9SeH4V9QIDisDdYm
fCl/skEFsdW+kaAJw3yG/gFoJV5+PWeAhrQ77y/tz54dGpjrLqUfgBLF7y5GQL/6
eVd9PTA3OhH+lAKEyGwM4XxxZkei8qKNc+h6ESviicnnjTc9HMfutNEcip5SjB16
QzsiV9w/NG6dFAuXC80uBP4srwKBgQDPEz/FAE6ijmonoWphNiLbKnAPfWGBbv1Z
HuQpO165laNyv+Uie7RUn9sYIiKtFzfzivAvvFvraSofgT8q6viaGebZq3iB2s8a
p1FjRQGda28sDCHN3DAs1b+fwXSYmAplvVGg3wCWfsgQ02HyAG5t8irGkMDCEzeZ
0L1VJSxQtwKBgCBazoc27AorXYSdyx5sOaKVIgeslXCeoTxH3amy8IkXPPuH63gJ
/efaulXk9LbHrOftKTXPzuaBk3Ha0OFivlz9hgW0gf0BbQu52MJToSLQ3/COlSVS
ZXedG3Xy6hRltmFB0zCNNtikvhK241tScyyW/N60uHZA+xurPM01M3NJAoGBAMUu
qTyobDiysDcIp8nlyQ81u/ukAuNDkw/4MH9qv2qtKTUtsb1CWpdymSjD6I02XNsW
ZFywWj8ypx/U7RerJAtpur9vXpMYjrnstb13inAiS3yAGPh0QZOP/qbbinF75fq3
ajFr6J1mIJCVGOFes8kSHtVyJXso3XskoAWiHi7FAoGANaIcVW89pPLunZ8UpRvq
gouiZGF4tlXFV5Eu7NN6lxRooVBh/GTJlb6ylEo+n2VTeF8i2Jaw+QTiP6B5AjiI
1R0tEgAJkfYz9utQ9BsSSM/p86m1R0R9TazYodJHegF0XjMq6eGLLe758bzlNbYr
ItKa+kyruJyFUTgc7leraPs=
-----END PRIVATE KEY-----
";
const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtSgR8nr4csuojK2oaKSU
E/YzLGOdNIVmUWR/YctB/XoJ42eb4br8hgJionNLbmcdZdHawwi9KGCgWFE4mo7r
u/okdTsiQZcsGrpa2RwF9ZUXgvMi7jenjUrsAVNeQojSXjpH+G1PPXErfRMyL8qs
uAnnvle1uMOuJrTR6hlSR/dzrUG8Q0D0Ym0Nh3O+0Ohusy5I9f2tCFAkbfL/qVYO
5GJHSwdrbTvhs0O2qxV5wKHNNDiYjIB/8WScHDUgDR3Jh8cJJWDjkeGYRa9IIRZd
zhNh7WQLQIuQ5WmHVL7HM2yWOc9kKJoxRk0o+HJV+DBneHarWGewRfTIwa60+Lyh
GQIDAQAB
-----END PUBLIC KEY-----
";
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgQg1DKFreXH1vc5Kp
hdI6RqKSlmVeQvvkTBi1wJzlYEihRANCAASReK2zfNgQBwCD5/AjMKOW46mgNRYp
vYYapj8KTsKJMfvPC8gVAd9n6cfadAwoW+XfALkJv4pnnNtqx6oGiHH0
-----END PRIVATE KEY-----
";
const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEkXits3zYEAcAg+fwIzCjluOpoDUW
Kb2GGqY/Ck7CiTH7zwvIFQHfZ+nH2nQMKFvl3wC5Cb+KZ5zbaseqBohx9A==
-----END PUBLIC KEY-----
";
const EC384_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDCbxCsd5MY9EhuvTVNL
mw9JFcNj4iK38dUcDEykjCoY8onZUIBTc5q86CpgHXGZ7OyhZANiAAS0k4O7A6Aq
YsiFpo15D44TBecEG2qzWSFdgE+IaoUNRurj20cQuytxdlnZCnDRERPFCSsVpnkC
ufG4B9ol4Jg+Unr0e5twSl9xiVtF1Nyp1zwXxdF/a2bvODKM30WPqEM=
-----END PRIVATE KEY-----
";
const EC384_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEtJODuwOgKmLIhaaNeQ+OEwXnBBtqs1kh
XYBPiGqFDUbq49tHELsrcXZZ2Qpw0RETxQkrFaZ5ArnxuAfaJeCYPlJ69HubcEpf
cYlbRdTcqdc8F8XRf2tm7zgyjN9Fj6hD
-----END PUBLIC KEY-----
";
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIFmLUb6uq721yNXoEyM/m4RcEsnXCMsra7ZcZUuqjDyt
-----END PRIVATE KEY-----
";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA3UZmJbjI5d1Q106MnMomPsBSa5SyfKIdTbdARYu2RAk=
-----END PUBLIC KEY-----
";

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt.json"
    ))
    .expect("read jwt fixture");
    serde_json::from_str(&text).expect("parse jwt fixture")
}

fn options(algorithms: &[Algorithm]) -> JwtOptions {
    JwtOptions {
        algorithms: algorithms.to_vec(),
        secret: None,
        public_key: None,
        jwks: None,
        id_claim: "tokenId".into(),
        issuer: None,
        audience: Vec::new(),
        typ: None,
        claims: Vec::new(),
        leeway: Duration::from_secs(30),
    }
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn hs_verifier() -> JwtVerifier {
    JwtVerifier::new(JwtOptions {
        secret: Some(SECRET.as_bytes().to_vec()),
        ..options(&[Algorithm::HS256])
    })
}

fn fixture_verifier() -> JwtVerifier {
    let fx = fixture();
    let jwks = jwks_keys(fx["jwks"].to_string().as_bytes()).unwrap();
    let pem = public_key_from_pem(fx["rs256_public_key_pem"].as_str().unwrap().as_bytes()).unwrap();
    JwtVerifier::new(JwtOptions {
        secret: Some(fx["hs256_secret"].as_str().unwrap().as_bytes().to_vec()),
        public_key: Some(pem),
        jwks: Some(jwks),
        ..options(&[Algorithm::HS256, Algorithm::RS256])
    })
}

#[test]
fn fixture_tokens_verify_or_are_refused_as_expected() {
    let fx = fixture();
    let v = fixture_verifier();
    for case in fx["valid"].as_array().unwrap() {
        let token = case["token"].as_str().unwrap();
        let got = v.verify(token).unwrap();
        let key = case["redis_key"].as_str().unwrap();
        assert_eq!(format!("token:{}", got.id.as_str()), key);
        for (claim, want) in case["expect"].as_object().unwrap() {
            assert_eq!(&got.claims[claim], want, "{claim}");
        }
    }
    let expired = fx["invalid"][0]["token"].as_str().unwrap();
    assert_eq!(v.verify(expired).unwrap_err(), JwtRejected::Expired);
}

#[test]
fn the_allowlist_is_enforced_before_any_key() {
    let fx = fixture();
    let rs = fx["valid"][1]["token"].as_str().unwrap();
    let hs = fx["valid"][0]["token"].as_str().unwrap();
    // HS256 is not listed: refused even though the secret would verify it.
    let only_rs = JwtVerifier::new(JwtOptions {
        secret: Some(SECRET.as_bytes().to_vec()),
        jwks: Some(jwks_keys(fx["jwks"].to_string().as_bytes()).unwrap()),
        ..options(&[Algorithm::RS256])
    });
    assert_eq!(only_rs.verify(hs).unwrap_err(), JwtRejected::Algorithm);
    assert!(only_rs.verify(rs).is_ok());
    // alg: none, in its usual spellings, with and without a signature.
    let claims = json!({"tokenId": "x", "exp": now() + 60});
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}));
        for token in [
            format!("{header}.{}.", b64(&claims)),
            format!("{header}.{}.c2ln", b64(&claims)),
        ] {
            assert_eq!(
                fixture_verifier().verify(&token).unwrap_err(),
                JwtRejected::Algorithm,
                "{alg}"
            );
        }
    }
}

#[test]
fn an_hs_token_is_never_checked_with_a_public_key() {
    let fx = fixture();
    let pem = fx["rs256_public_key_pem"].as_str().unwrap();
    let claims = json!({"tokenId": "x", "exp": now() + 60});
    let forged = hs256(&claims, pem.as_bytes());
    // The classic confusion: HS256 signed with the public key's PEM bytes.
    let only_rs = JwtVerifier::new(JwtOptions {
        public_key: Some(public_key_from_pem(pem.as_bytes()).unwrap()),
        ..options(&[Algorithm::RS256])
    });
    assert_eq!(only_rs.verify(&forged).unwrap_err(), JwtRejected::Algorithm);
    // Even with HS256 allowed, the HMAC key is the secret and nothing else.
    assert_eq!(
        fixture_verifier().verify(&forged).unwrap_err(),
        JwtRejected::Signature
    );
    // HS256 allowed but no secret at all: there is no key to try.
    let no_secret = JwtVerifier::new(JwtOptions {
        public_key: Some(public_key_from_pem(pem.as_bytes()).unwrap()),
        ..options(&[Algorithm::HS256, Algorithm::RS256])
    });
    assert_eq!(
        no_secret.verify(&forged).unwrap_err(),
        JwtRejected::UnknownKey
    );
}

#[test]
fn tampering_and_wrong_keys_fail_the_signature() {
    let v = hs_verifier();
    let claims = json!({"tokenId": "t1", "role": "viewer", "exp": now() + 60});
    let token = hs256(&claims, SECRET.as_bytes());
    assert_eq!(v.verify(&token).unwrap().id.as_str(), "t1");
    let parts: Vec<&str> = token.split('.').collect();
    let admin = b64(&json!({"tokenId": "t1", "role": "admin", "exp": now() + 60}));
    let tampered = format!("{}.{admin}.{}", parts[0], parts[2]);
    assert_eq!(v.verify(&tampered).unwrap_err(), JwtRejected::Signature);
    let wrong = hs256(&claims, b"another-secret");
    assert_eq!(v.verify(&wrong).unwrap_err(), JwtRejected::Signature);
    let unsigned = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(v.verify(&unsigned).unwrap_err(), JwtRejected::Signature);
}

#[test]
fn malformed_tokens_are_refused() {
    let v = hs_verifier();
    let good = hs256(
        &json!({"tokenId": "t", "exp": now() + 60}),
        SECRET.as_bytes(),
    );
    let long = format!("{good}{}", "A".repeat(MAX_TOKEN_LEN));
    for bad in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        ".e30.sig",
        "e30..sig",
        "!!!.e30.sig",
        "bm90IGpzb24.e30.sig",
        long.as_str(),
    ] {
        assert_eq!(
            v.verify(bad).unwrap_err(),
            JwtRejected::Malformed,
            "{bad:.20}"
        );
    }
    // A header with a critical extension nobody here understands.
    let header = b64(&json!({"alg": "HS256", "crit": ["b64"], "b64": false}));
    let token = format!("{header}.{}.sig", b64(&json!({"exp": now() + 60})));
    assert_eq!(v.verify(&token).unwrap_err(), JwtRejected::Malformed);
}

#[test]
fn exp_is_required_and_nbf_honoured_with_the_leeway() {
    let v = hs_verifier();
    let sign = |claims: Value| hs256(&claims, SECRET.as_bytes());
    assert_eq!(
        v.verify(&sign(json!({"tokenId": "t"}))).unwrap_err(),
        JwtRejected::Claims
    );
    assert_eq!(
        v.verify(&sign(json!({"tokenId": "t", "exp": "tomorrow"})))
            .unwrap_err(),
        JwtRejected::Claims
    );
    assert_eq!(
        v.verify(&sign(json!({"tokenId": "t", "exp": now() - 120})))
            .unwrap_err(),
        JwtRejected::Expired
    );
    // Within the 30s leeway.
    assert!(v
        .verify(&sign(json!({"tokenId": "t", "exp": now() - 10})))
        .is_ok());
    assert!(v
        .verify(&sign(
            json!({"tokenId": "t", "exp": now() + 60, "nbf": now() + 10})
        ))
        .is_ok());
    assert_eq!(
        v.verify(&sign(
            json!({"tokenId": "t", "exp": now() + 600, "nbf": now() + 300})
        ))
        .unwrap_err(),
        JwtRejected::NotYetValid
    );
    let strict = JwtVerifier::new(JwtOptions {
        secret: Some(SECRET.as_bytes().to_vec()),
        leeway: Duration::ZERO,
        ..options(&[Algorithm::HS256])
    });
    assert_eq!(
        strict
            .verify(&sign(json!({"tokenId": "t", "exp": now() - 10})))
            .unwrap_err(),
        JwtRejected::Expired
    );
}

#[test]
fn claim_rules() {
    let claims: Map<String, Value> = serde_json::from_value(json!({
        "type": "access", "role": "viewer", "level": 3, "admin": false,
        "groups": ["staff", "ops"], "scope": "read write"
    }))
    .unwrap();
    let rule = |claim: &str, check| ClaimRule {
        claim: claim.into(),
        check,
    };
    let holds = [
        rule("type", ClaimCheck::Equals(json!("access"))),
        rule("level", ClaimCheck::Equals(json!(3))),
        rule("admin", ClaimCheck::Equals(json!(false))),
        rule(
            "role",
            ClaimCheck::OneOf(vec![json!("admin"), json!("viewer")]),
        ),
        rule("groups", ClaimCheck::Contains(vec![json!("ops")])),
        rule(
            "groups",
            ClaimCheck::Contains(vec![json!("ops"), json!("staff")]),
        ),
        rule("scope", ClaimCheck::Contains(vec![json!("write")])),
    ];
    for r in &holds {
        assert!(r.holds(&claims), "{r:?}");
    }
    let fails = [
        rule("type", ClaimCheck::Equals(json!("refresh"))),
        rule("level", ClaimCheck::Equals(json!("3"))),
        rule("missing", ClaimCheck::Equals(json!("x"))),
        rule("role", ClaimCheck::OneOf(vec![json!("admin")])),
        rule(
            "groups",
            ClaimCheck::Contains(vec![json!("ops"), json!("root")]),
        ),
        rule("scope", ClaimCheck::Contains(vec![json!("rea")])),
        rule(
            "type",
            ClaimCheck::Contains(vec![json!("access"), json!("x")]),
        ),
        rule("level", ClaimCheck::Contains(vec![json!(3)])),
    ];
    for r in &fails {
        assert!(!r.holds(&claims), "{r:?}");
    }
}

#[test]
fn issuer_and_audience_when_configured() {
    let v = JwtVerifier::new(JwtOptions {
        secret: Some(SECRET.as_bytes().to_vec()),
        issuer: Some("https://id.example".into()),
        audience: vec!["api".into()],
        ..options(&[Algorithm::HS256])
    });
    let sign = |claims: Value| hs256(&claims, SECRET.as_bytes());
    let exp = now() + 60;
    let ok = [
        json!({"tokenId": "t", "exp": exp, "iss": "https://id.example", "aud": "api"}),
        json!({"tokenId": "t", "exp": exp, "iss": "https://id.example", "aud": ["web", "api"]}),
    ];
    for claims in ok {
        assert!(v.verify(&sign(claims.clone())).is_ok(), "{claims}");
    }
    let bad = [
        json!({"tokenId": "t", "exp": exp, "aud": "api"}),
        json!({"tokenId": "t", "exp": exp, "iss": "https://evil.example", "aud": "api"}),
        json!({"tokenId": "t", "exp": exp, "iss": "https://id.example"}),
        json!({"tokenId": "t", "exp": exp, "iss": "https://id.example", "aud": "web"}),
        json!({"tokenId": "t", "exp": exp, "iss": "https://id.example", "aud": ["web"]}),
    ];
    for claims in bad {
        assert_eq!(
            v.verify(&sign(claims.clone())).unwrap_err(),
            JwtRejected::Claims,
            "{claims}"
        );
    }
    // Without a configured audience, `aud` is not looked at.
    assert!(hs_verifier()
        .verify(&sign(json!({"tokenId": "t", "exp": exp, "aud": "x"})))
        .is_ok());
}

#[test]
fn the_id_claim_must_be_a_usable_string_or_number() {
    let v = hs_verifier();
    let sign = |id: Value| {
        hs256(
            &json!({"tokenId": id, "exp": now() + 60}),
            SECRET.as_bytes(),
        )
    };
    assert_eq!(v.verify(&sign(json!("abc"))).unwrap().id.as_str(), "abc");
    assert_eq!(v.verify(&sign(json!(42))).unwrap().id.as_str(), "42");
    for bad in [
        json!(""),
        json!(null),
        json!(true),
        json!({"a": 1}),
        json!(["a"]),
        json!("a b"),
        json!("a\nb"),
        json!("x".repeat(MAX_ID_LEN + 1)),
    ] {
        assert_eq!(
            v.verify(&sign(bad.clone())).unwrap_err(),
            JwtRejected::NoTokenId,
            "{bad}"
        );
    }
    let missing = hs256(&json!({"exp": now() + 60}), SECRET.as_bytes());
    assert_eq!(v.verify(&missing).unwrap_err(), JwtRejected::NoTokenId);
    let other = JwtVerifier::new(JwtOptions {
        secret: Some(SECRET.as_bytes().to_vec()),
        id_claim: "jti".into(),
        ..options(&[Algorithm::HS256])
    });
    let jti = hs256(&json!({"jti": "j1", "exp": now() + 60}), SECRET.as_bytes());
    assert_eq!(other.verify(&jti).unwrap().id.as_str(), "j1");
}

#[test]
fn kid_selects_the_jwks_key_and_an_unknown_kid_is_refused() {
    let fx = fixture();
    let rs = fx["valid"][1]["token"].as_str().unwrap();
    let jwks = jwks_keys(fx["jwks"].to_string().as_bytes()).unwrap();
    assert_eq!(jwks.len(), 1);
    assert_eq!(
        jwks[0].kid(),
        Some("RVYVosJXtVnrL03JQ-i-4M7KKh_3V4AgsbX88yhjPME")
    );
    let v = JwtVerifier::new(JwtOptions {
        jwks: Some(jwks),
        ..options(&[Algorithm::RS256])
    });
    assert!(v.verify(rs).is_ok());
    // The same token with another kid (the signature covers the header, so
    // it would not verify anyway; the kid alone refuses it first).
    let parts: Vec<&str> = rs.split('.').collect();
    let header = b64(&json!({"alg": "RS256", "typ": "JWT", "kid": "nope"}));
    let other = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(v.verify(&other).unwrap_err(), JwtRejected::UnknownKey);
    // Without a kid, the JWKS keys that fit are tried.
    let header = b64(&json!({"alg": "RS256", "typ": "JWT"}));
    let bare = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(v.verify(&bare).unwrap_err(), JwtRejected::Signature);
    // With the PEM only, the kid is not looked at.
    let pem_only = JwtVerifier::new(JwtOptions {
        public_key: Some(
            public_key_from_pem(fx["rs256_public_key_pem"].as_str().unwrap().as_bytes()).unwrap(),
        ),
        ..options(&[Algorithm::RS256])
    });
    assert!(pem_only.verify(rs).is_ok());
}

#[test]
fn pem_keys_of_every_supported_kind_load() {
    let fx = fixture();
    let rsa = public_key_from_pem(fx["rs256_public_key_pem"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(rsa.kind(), KeyKind::Rsa);
    assert!(rsa.fits(Algorithm::RS256) && rsa.fits(Algorithm::PS512));
    assert!(!rsa.fits(Algorithm::HS256) && !rsa.fits(Algorithm::ES256));
    assert_eq!(
        public_key_from_pem(EC_PUBLIC.as_bytes()).unwrap().kind(),
        KeyKind::P256
    );
    assert_eq!(
        public_key_from_pem(EC384_PUBLIC.as_bytes()).unwrap().kind(),
        KeyKind::P384
    );
    assert_eq!(
        public_key_from_pem(ED_PUBLIC.as_bytes()).unwrap().kind(),
        KeyKind::Ed25519
    );
    for bad in [
        "",
        "not pem",
        EC_PRIVATE,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ] {
        assert!(public_key_from_pem(bad.as_bytes()).is_err(), "{bad}");
    }
    let private = public_key_from_pem(EC_PRIVATE.as_bytes()).unwrap_err();
    assert!(private.contains("private key"), "{private}");
}

#[test]
fn jwks_documents_are_checked() {
    let ok = jwks_keys(
        br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0"},
            {"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"},
            {"kty":"EC","crv":"P-521","x":"AA","y":"AA"},
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"3UZmJbjI5d1Q106MnMomPsBSa5SyfKIdTbdARYu2RAk"}
        ]}"#,
    )
    .unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!((ok[0].kind(), ok[0].kid()), (KeyKind::Ed25519, Some("ed")));
    for bad in [
        &br#"not json"#[..],
        br#"{"keys": []}"#,
        br#"{"keys": [{"kty":"oct","k":"c2VjcmV0"}]}"#,
        br#"{"keys": [{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
        br#"{"keys": [{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#,
        br#"{"keys": [{"kty":"OKP","crv":"Ed25519","x":"3UZmJbjI5d1Q106MnMomPsBSa5SyfKIdTbdARYu2RAk","d":"AA"}]}"#,
        br#"{"keys": [{"kty":"OKP","crv":"Ed25519","alg":"RS256","x":"3UZmJbjI5d1Q106MnMomPsBSa5SyfKIdTbdARYu2RAk"}]}"#,
        br#"{"keys": [{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}]}"#,
        br#"{"keys": [
            {"kty":"OKP","crv":"Ed25519","kid":"a","x":"3UZmJbjI5d1Q106MnMomPsBSa5SyfKIdTbdARYu2RAk"},
            {"kty":"OKP","crv":"Ed25519","kid":"a","x":"3UZmJbjI5d1Q106MnMomPsBSa5SyfKIdTbdARYu2RAk"}
        ]}"#,
    ] {
        assert!(jwks_keys(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn ec_eddsa_and_pss_tokens_verify_with_their_keys_only() {
    let exp = now() + 60;
    let claims = json!({"tokenId": "k", "exp": exp});
    let cases: [(Algorithm, EncodingKey, &str); 4] = [
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
            EC_PUBLIC,
        ),
        (
            Algorithm::ES384,
            EncodingKey::from_ec_pem(EC384_PRIVATE.as_bytes()).unwrap(),
            EC384_PUBLIC,
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
            ED_PUBLIC,
        ),
        (
            Algorithm::PS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            RSA_PUBLIC,
        ),
    ];
    let every: Vec<Algorithm> = ALGORITHMS.iter().map(|(_, a)| *a).collect();
    for (alg, signing, public) in &cases {
        let token = encode(&Header::new(*alg), &claims, signing).unwrap();
        let v = JwtVerifier::new(JwtOptions {
            public_key: Some(public_key_from_pem(public.as_bytes()).unwrap()),
            ..options(&every)
        });
        assert!(v.has_key_for(*alg));
        assert_eq!(v.verify(&token).unwrap().id.as_str(), "k", "{alg:?}");
        // Not listed: refused.
        let others: Vec<Algorithm> = every.iter().copied().filter(|a| a != alg).collect();
        let v = JwtVerifier::new(JwtOptions {
            public_key: Some(public_key_from_pem(public.as_bytes()).unwrap()),
            ..options(&others)
        });
        assert_eq!(v.verify(&token).unwrap_err(), JwtRejected::Algorithm);
        // Another key of another kind: none fits.
        for (_, _, other) in cases.iter().filter(|(a, _, _)| a != alg) {
            let v = JwtVerifier::new(JwtOptions {
                public_key: Some(public_key_from_pem(other.as_bytes()).unwrap()),
                ..options(&every)
            });
            assert_eq!(v.verify(&token).unwrap_err(), JwtRejected::UnknownKey);
        }
    }
}

#[test]
fn rejections_and_verifiers_never_print_secrets() {
    let v = hs_verifier();
    let shown = format!("{v:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    let token = hs256(
        &json!({"tokenId": "secret-id", "exp": now() + 60}),
        SECRET.as_bytes(),
    );
    let verified = v.verify(&token).unwrap();
    assert!(!format!("{verified:?}").contains("secret-id"));
    for r in [
        JwtRejected::Malformed,
        JwtRejected::Signature,
        JwtRejected::NoTokenId,
    ] {
        assert!(!r.to_string().is_empty() && !r.as_str().is_empty());
    }
}

#[test]
fn algorithm_names_round_trip() {
    for (name, alg) in ALGORITHMS {
        assert_eq!(algorithm(name), Some(*alg));
        assert_eq!(algorithm_name(*alg), *name);
    }
    assert_eq!(algorithm("none"), None);
    assert_eq!(algorithm("hs256"), None);
}
