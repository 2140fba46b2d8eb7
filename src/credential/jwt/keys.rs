//! Key loading for bearer JWTs: the supported algorithms, PEM public keys
//! and JWKS documents turned into checked decoding keys (each probed against
//! the crypto backend once, at load time), and the key set a verifier picks
//! from by algorithm family and `kid`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

/// The algorithms `[jwt] algorithms` may list, by their JOSE names.
pub const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// The algorithm with JOSE name `name` (case-sensitive), if supported.
pub fn algorithm(name: &str) -> Option<Algorithm> {
    ALGORITHMS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

/// The JOSE name of `alg`.
pub fn algorithm_name(alg: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, a)| *a == alg)
        .map_or("?", |(n, _)| n)
}

/// The kind of an asymmetric key, which decides the algorithms it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind verifies `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyKind::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyKind::P256, Algorithm::ES256)
                | (KeyKind::P384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            KeyKind::Rsa => "an RSA key (RS*/PS*)",
            KeyKind::P256 => "a P-256 EC key (ES256)",
            KeyKind::P384 => "a P-384 EC key (ES384)",
            KeyKind::Ed25519 => "an Ed25519 key (EdDSA)",
        }
    }
}

/// A public key from `public_key_file` or `jwks_file`, checked at load time.
#[derive(Clone)]
pub struct PublicKey {
    key: DecodingKey,
    kind: KeyKind,
    kid: Option<String>,
    /// A JWK's `alg`: the key then verifies that algorithm only.
    alg: Option<Algorithm>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("kind", &self.kind)
            .field("kid", &self.kid)
            .field("alg", &self.alg.map(algorithm_name))
            .finish()
    }
}

impl PublicKey {
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether this key verifies tokens signed with `alg`.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// Reads a PEM public key (`-----BEGIN PUBLIC KEY-----`, or PKCS#1
/// `-----BEGIN RSA PUBLIC KEY-----`): RSA of 2048 to 4096 bits, EC P-256 or
/// P-384, or Ed25519. Private keys and certificates are refused. The error
/// completes a sentence about the file ("<file> is not ...").
pub fn public_key_from_pem(pem: &[u8]) -> Result<PublicKey, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "is not a PEM file (not text)")?;
    let label = text
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("-----BEGIN ")?
                .strip_suffix("-----")
        })
        .ok_or("is not a PEM file (no -----BEGIN line)")?;
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        other if other.contains("PRIVATE") => {
            return Err("holds a private key; give the public key instead \
                        (e.g. `openssl pkey -in private.pem -pubout`)"
                .to_owned())
        }
        other => {
            return Err(format!(
                "holds a {other:?} PEM block; expected a public key (-----BEGIN PUBLIC KEY-----)"
            ))
        }
    }
    let unusable = "is not a valid RSA, EC (P-256, P-384) or Ed25519 public key";
    let key = |kind, key| PublicKey {
        key,
        kind,
        kid: None,
        alg: None,
    };
    if let Ok(der) = DecodingKey::from_rsa_pem(pem) {
        let der = der.try_get_as_bytes().map_err(|_| unusable)?;
        let components = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_public_key;
        let (n, e) = components(der).map_err(|_| "is not a valid RSA public key")?;
        return Ok(key(KeyKind::Rsa, rsa_key(&n, &e)?));
    }
    if let Ok(ec) = DecodingKey::from_ec_pem(pem) {
        let point = ec.try_get_as_bytes().map_err(|_| unusable)?;
        let (kind, decoding) = ec_key(point)?;
        return Ok(key(kind, decoding));
    }
    if let Ok(ed) = DecodingKey::from_ed_pem(pem) {
        let x = ed.try_get_as_bytes().map_err(|_| unusable)?;
        return Ok(key(KeyKind::Ed25519, ed_key(x)?));
    }
    Err(unusable.to_owned())
}

/// Reads a JWKS document (`{"keys": [...]}`). Keys that are not signature
/// verification keys this gateway supports (`use` other than `sig`, `oct`
/// secrets, P-521, Ed448, unknown `alg`) are skipped; a malformed key, a private
/// key or a duplicate `kid` is an error, as is a set with no usable key.
pub fn jwks_keys(json: &[u8]) -> Result<Vec<PublicKey>, String> {
    #[derive(Deserialize)]
    struct JwkSet {
        keys: Vec<Value>,
    }
    let set: JwkSet = serde_json::from_slice(json)
        .map_err(|e| format!("is not a JWKS document (`{{\"keys\": [...]}}`): {e}"))?;
    let mut out: Vec<PublicKey> = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let label = match jwk.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("keys[{i}] (kid {kid:?})"),
            None => format!("keys[{i}]"),
        };
        match jwk_key(jwk) {
            Ok(Some(key)) => {
                if key.kid.is_some() && out.iter().any(|k| k.kid == key.kid) {
                    return Err(format!("{label}: the kid is used by another key too"));
                }
                out.push(key);
            }
            Ok(None) => {}
            Err(message) => return Err(format!("{label} {message}")),
        }
    }
    if out.is_empty() {
        return Err(
            "holds no RSA, EC (P-256, P-384) or Ed25519 signature verification key".to_owned(),
        );
    }
    Ok(out)
}

/// One JWK: `Ok(None)` when it is not a key this gateway verifies with.
fn jwk_key(jwk: &Value) -> Result<Option<PublicKey>, String> {
    let obj = jwk.as_object().ok_or("is not a JSON object")?;
    let text = |name: &str| -> Result<Option<&str>, String> {
        match obj.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("has a {name:?} that is not a string")),
        }
    };
    let required = |name: &str| -> Result<Vec<u8>, String> {
        let value = text(name)?.ok_or_else(|| format!("has no {name:?}"))?;
        URL_SAFE_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|_| format!("has a {name:?} that is not base64url"))
    };
    if text("use")?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = obj.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Ok(None);
        }
    }
    let kty = text("kty")?.ok_or("has no \"kty\"")?;
    if kty == "oct" {
        // A shared secret: HMAC keys come from `secret`, never from the JWKS.
        return Ok(None);
    }
    if obj.contains_key("d") {
        return Err(
            "is a private key (it has \"d\"); a JWKS file must hold public keys only".into(),
        );
    }
    let alg = match text("alg")? {
        None => None,
        Some(name) => match algorithm(name) {
            Some(alg) => Some(alg),
            None => return Ok(None),
        },
    };
    let (kind, key) = match kty {
        "RSA" => (KeyKind::Rsa, rsa_key(&required("n")?, &required("e")?)?),
        "EC" => {
            let size = match text("crv")? {
                Some("P-256") => 32,
                Some("P-384") => 48,
                Some(_) => return Ok(None),
                None => return Err("has no \"crv\"".into()),
            };
            let (x, y) = (required("x")?, required("y")?);
            if x.len() != size || y.len() != size {
                return Err("has coordinates of the wrong length for its curve".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ec_key(&point)?
        }
        "OKP" => match text("crv")? {
            Some("Ed25519") => (KeyKind::Ed25519, ed_key(&required("x")?)?),
            Some(_) => return Ok(None),
            None => return Err("has no \"crv\"".into()),
        },
        _ => return Ok(None),
    };
    if let Some(alg) = alg {
        if !kind.fits(alg) {
            return Err(format!(
                "has alg {:?}, which {} cannot verify",
                algorithm_name(alg),
                kind.describe()
            ));
        }
    }
    Ok(Some(PublicKey {
        key,
        kind,
        kid: text("kid")?.map(str::to_owned),
        alg,
    }))
}

/// An RSA public key from its big-endian modulus and exponent.
fn rsa_key(n: &[u8], e: &[u8]) -> Result<DecodingKey, String> {
    let strip = |b: &[u8]| -> Vec<u8> { b.iter().copied().skip_while(|&x| x == 0).collect() };
    let (n, e) = (strip(n), strip(e));
    let Some(&top) = n.first() else {
        return Err("is not a valid RSA key (empty modulus)".into());
    };
    let bits = n.len() * 8 - top.leading_zeros() as usize;
    if !(2048..=4096).contains(&bits) {
        return Err(format!(
            "is an RSA key of {bits} bits; 2048 to 4096 bits are accepted"
        ));
    }
    let exponent = if e.len() <= 8 {
        e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    } else {
        u64::MAX
    };
    if n.last().is_some_and(|b| b & 1 == 0)
        || !(3..=(1 << 33) - 1).contains(&exponent)
        || exponent & 1 == 0
    {
        return Err("is not a valid RSA public key".into());
    }
    Ok(DecodingKey::from_rsa_raw_components(&n, &e))
}

/// An EC public key from its uncompressed SEC1 point (P-256 or P-384).
fn ec_key(point: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    let (kind, alg) = match point.len() {
        65 => (KeyKind::P256, Algorithm::ES256),
        97 => (KeyKind::P384, Algorithm::ES384),
        _ => return Err("is an EC key on an unsupported curve (P-256 and P-384 are)".into()),
    };
    let key = DecodingKey::from_ec_der(point);
    if point.first() != Some(&0x04) || !probe(&key, alg) {
        return Err("is not a valid EC public key (not a point on its curve)".into());
    }
    Ok((kind, key))
}

/// An Ed25519 public key from its 32 bytes.
fn ed_key(x: &[u8]) -> Result<DecodingKey, String> {
    // The length check also keeps jsonwebtoken's verifier (which slices the
    // first 32 bytes) from ever seeing a shorter key.
    if x.len() != 32 {
        return Err("is not a valid Ed25519 public key (it must be 32 bytes)".into());
    }
    let key = DecodingKey::from_ed_der(x);
    if !probe(&key, Algorithm::EdDSA) {
        return Err("is not a valid Ed25519 public key".into());
    }
    Ok(key)
}

/// Whether the crypto backend accepts `key` for `alg`: it parses EC and Ed25519
/// keys when building a verifier and fails then, while a wrong signature is
/// only a `false`.
fn probe(key: &DecodingKey, alg: Algorithm) -> bool {
    jsonwebtoken::crypto::verify("AA", b"sessiongate", key, alg).is_ok()
}

/// The keys a verifier picks from. HMAC keys are only ever built from the
/// secret, so an HS* token can never be checked against a public key; with a
/// JWKS, a token's `kid` must name one of its keys.
pub(super) struct KeySet {
    secret: Option<DecodingKey>,
    public_key: Option<PublicKey>,
    jwks: Option<Vec<PublicKey>>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .field("public_key", &self.public_key)
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl KeySet {
    pub(super) fn new(
        secret: Option<&[u8]>,
        public_key: Option<PublicKey>,
        jwks: Option<Vec<PublicKey>>,
    ) -> KeySet {
        KeySet {
            secret: secret.map(DecodingKey::from_secret),
            public_key,
            jwks,
        }
    }

    /// Whether some configured key can verify tokens signed with `alg`.
    pub(super) fn has_key_for(&self, alg: Algorithm) -> bool {
        if alg.family() == AlgorithmFamily::Hmac {
            return self.secret.is_some();
        }
        self.public_key
            .iter()
            .chain(self.jwks.iter().flatten())
            .any(|k| k.fits(alg))
    }

    /// The keys that may verify a token signed with (allowlisted) `alg`.
    pub(super) fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<&DecodingKey> {
        if alg.family() == AlgorithmFamily::Hmac {
            return self.secret.iter().collect();
        }
        match (kid, &self.jwks) {
            // With a JWKS, a `kid` must name one of its keys.
            (Some(kid), Some(jwks)) => jwks
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid) && k.fits(alg))
                .map(|k| &k.key)
                .collect(),
            _ => self
                .public_key
                .iter()
                .chain(self.jwks.iter().flatten())
                .filter(|k| k.fits(alg))
                .map(|k| &k.key)
                .collect(),
        }
    }
}
