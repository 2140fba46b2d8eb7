//! Bearer JWTs from arbitrary text against a verifier that allows HS256 and
//! RS256 (the RSA key from the fixtures): verification never panics, and
//! nothing verifies whose payload was not signed with the HMAC secret or the
//! RSA key.
#![no_main]

use std::time::Duration;

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use sessiongate::credential::jwt::{
    public_key_from_pem, ClaimCheck, ClaimRule, JwtOptions, JwtVerifier,
};

const RSA_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAyFlmKUcmA4IcRyx0TW3l\nXRDdYQAVnTdpvSM11KiwPUSoqBZsNssmwXu/08614nfDubQjNCh1U8yZ9UXBJ6oZ\nNwHX5z2e22nu3wMxJ6xUE26lOw77ni8RnrJEB0zrLOPntQI71Lem+ccoPSAihU5n\nwpwJDPOau/dIiCWbTdNKUxRVmX1ct9OP8d0QKtTk9TElteXBCLXN/Y22BXdTeyYR\nfCbgEl6CkbkRD1QH71cgHYEVxDoeYf4AC5AzwUOgLLYO9HqU+3lgDLN8akq5I/MN\nMkKH5u8XlWsqcgf/4ffcZJYbKO6STEPV3dVQzpajIo32wWA+zxf8847sZnTt+bIa\n5QIDAQAB\n-----END PUBLIC KEY-----\n";

/// Token ids of the signed fixture tokens (tests/fixtures/jwt.json).
const SIGNED_IDS: [&str; 3] = [
    "b5742c46-b6bf-448b-82c4-170aa08817d4",
    "1ba1a11e-b38f-4046-824b-4573a0cba63a",
    "00000000-0000-4000-8000-000000000001",
];

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let verifier = JwtVerifier::new(JwtOptions {
        algorithms: vec![Algorithm::HS256, Algorithm::RS256],
        secret: Some(b"fixture-jwt-hs256-secret".to_vec()),
        public_key: public_key_from_pem(RSA_PEM.as_bytes()).ok(),
        jwks: None,
        id_claim: "tokenId".into(),
        issuer: None,
        audience: Vec::new(),
        leeway: Duration::from_secs(30),
        typ: Some("JWT".into()),
        claims: vec![ClaimRule {
            claim: "type".into(),
            check: ClaimCheck::Equals("access".into()),
        }],
    });
    // Only the tokens the app signed (the fixtures seed the corpus) verify; a
    // mutation that still verifies must carry one of their token ids, i.e.
    // the signed payload was not changed.
    if let Ok(verified) = verifier.verify(token) {
        assert!(
            SIGNED_IDS.contains(&verified.id.as_str()),
            "a forged token verified"
        );
    }
});
