//! Bearer JWTs (`[session] bearer = "jwt"`): keys are parsed and checked once,
//! at load time; per token the algorithm allowlist is enforced before any key is
//! chosen, and a verified token yields its claims and the id of its Redis key.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::cookie::MAX_ID_LEN;
use super::SessionId;

/// Longest token accepted, in bytes; longer ones are refused before parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest leeway `[jwt] leeway` may set.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

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

/// Why a bearer JWT was refused. Logged, never shown to the client; the
/// messages never include any part of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtRejected {
    #[error("not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not in the allowlist")]
    Algorithm,
    #[error("no configured key matches the token (unknown kid)")]
    UnknownKey,
    #[error("the signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's claims do not match (iss, aud, or a malformed exp/nbf)")]
    Claims,
    #[error("the token has no usable id claim")]
    NoTokenId,
    #[error("the token does not satisfy a [jwt.claims] rule or the required typ")]
    ClaimMismatch,
}

impl JwtRejected {
    pub fn as_str(self) -> &'static str {
        match self {
            JwtRejected::Malformed => "malformed",
            JwtRejected::Algorithm => "algorithm",
            JwtRejected::UnknownKey => "unknown_key",
            JwtRejected::Signature => "signature",
            JwtRejected::Expired => "expired",
            JwtRejected::NotYetValid => "not_yet_valid",
            JwtRejected::Claims => "claims",
            JwtRejected::NoTokenId => "no_token_id",
            JwtRejected::ClaimMismatch => "claim_mismatch",
        }
    }
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

/// What `[jwt]` configures, before compiling.
pub struct JwtOptions {
    /// The allowlist; tokens with any other `alg` (including `none`) are refused.
    pub algorithms: Vec<Algorithm>,
    /// The HMAC secret, used for HS* only.
    pub secret: Option<Vec<u8>>,
    pub public_key: Option<PublicKey>,
    /// `None` when no JWKS is configured (then `kid` is not looked at).
    pub jwks: Option<Vec<PublicKey>>,
    pub id_claim: String,
    pub issuer: Option<String>,
    /// `aud` must name one of these (when not empty).
    pub audience: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf` (whole seconds, rounded up).
    pub leeway: Duration,
    /// `[jwt] typ`: the header's `typ` must be exactly this.
    pub typ: Option<String>,
    /// `[jwt.claims]`: every rule must hold.
    pub claims: Vec<ClaimRule>,
}

/// One `[jwt.claims]` entry: a claim and what its value must be.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRule {
    pub claim: String,
    pub check: ClaimCheck,
}

/// What a claim's value must be.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimCheck {
    /// `type = "access"`: exactly this value (a string, integer or boolean).
    Equals(Value),
    /// `role = ["admin", "viewer"]`: one of these values.
    OneOf(Vec<Value>),
    /// `scope = { contains = ["read"] }`: an array claim holding every one of
    /// these, or a string claim of space-separated items (OAuth `scope`) that does.
    Contains(Vec<Value>),
}

impl ClaimRule {
    /// Whether `claims` satisfies this rule (a missing claim never does).
    pub fn holds(&self, claims: &Map<String, Value>) -> bool {
        let Some(value) = claims.get(&self.claim) else {
            return false;
        };
        match &self.check {
            ClaimCheck::Equals(want) => value == want,
            ClaimCheck::OneOf(wanted) => wanted.contains(value),
            ClaimCheck::Contains(wanted) => match value {
                Value::Array(items) => wanted.iter().all(|w| items.contains(w)),
                Value::String(text) => wanted.iter().all(|w| {
                    w.as_str()
                        .is_some_and(|w| text.split(' ').any(|item| item == w))
                }),
                _ => false,
            },
        }
    }
}

/// Verifies bearer JWTs against `[jwt]`; built once at load time.
pub struct JwtVerifier {
    /// The allowlist, each with its validation (jsonwebtoken checks the
    /// header's `alg` against it again).
    allowed: Vec<(Algorithm, Validation)>,
    /// HMAC keys are only ever built from `secret`.
    secret: Option<DecodingKey>,
    public_key: Option<PublicKey>,
    jwks: Option<Vec<PublicKey>>,
    id_claim: String,
    typ: Option<String>,
    claims: Vec<ClaimRule>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithms: Vec<&str> = self
            .allowed
            .iter()
            .map(|(a, _)| algorithm_name(*a))
            .collect();
        f.debug_struct("JwtVerifier")
            .field("algorithms", &algorithms)
            .field("secret", &self.secret.as_ref().map(|_| ".."))
            .field("public_key", &self.public_key)
            .field("jwks", &self.jwks)
            .field("id_claim", &self.id_claim)
            .field("typ", &self.typ)
            .field("claims", &self.claims)
            .finish()
    }
}

/// A token whose signature, algorithm and claims checked out.
#[derive(Clone)]
pub struct VerifiedToken {
    /// The id claim's value: what the token's Redis key is built from.
    pub id: SessionId,
    /// Every claim of the payload.
    pub claims: Map<String, Value>,
}

impl fmt::Debug for VerifiedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("id", &self.id)
            .field("claims", &self.claims.len())
            .finish()
    }
}

/// The part of a JOSE header looked at before any key is chosen.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Critical extensions: none is understood, so any makes the token invalid
    /// (RFC 7515 section 4.1.11).
    #[serde(default)]
    crit: Option<Value>,
    /// `typ`, checked against `[jwt] typ` once the signature verified.
    #[serde(default)]
    typ: Option<Value>,
}

impl JwtVerifier {
    pub fn new(options: JwtOptions) -> JwtVerifier {
        let leeway = options.leeway.as_secs() + u64::from(options.leeway.subsec_nanos() > 0);
        let leeway = leeway.min(MAX_LEEWAY.as_secs());
        let mut algorithms = options.algorithms;
        algorithms.dedup();
        let allowed = algorithms
            .into_iter()
            .map(|alg| {
                let mut v = Validation::new(alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = &options.issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                if options.audience.is_empty() {
                    // Without a configured audience, `aud` is not checked.
                    v.validate_aud = false;
                } else {
                    v.set_audience(&options.audience);
                    required.push("aud");
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        JwtVerifier {
            allowed,
            secret: options.secret.as_deref().map(DecodingKey::from_secret),
            public_key: options.public_key,
            jwks: options.jwks,
            id_claim: options.id_claim,
            typ: options.typ,
            claims: options.claims,
        }
    }

    /// The claim whose value names the token's Redis key.
    pub fn id_claim(&self) -> &str {
        &self.id_claim
    }

    /// Whether some configured key can verify tokens signed with `alg`.
    pub fn has_key_for(&self, alg: Algorithm) -> bool {
        if alg.family() == AlgorithmFamily::Hmac {
            return self.secret.is_some();
        }
        self.public_key
            .iter()
            .chain(self.jwks.iter().flatten())
            .any(|k| k.fits(alg))
    }

    /// Verifies `token`: size, shape, allowlisted `alg`, the key (by `kid`
    /// when a JWKS is configured), the signature, `exp` (required) and `nbf`
    /// with the leeway, `iss` and `aud` when configured, then the id claim (a
    /// string or a number).
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, JwtRejected> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtRejected::Malformed);
        }
        let header = parse_header(token)?;
        // The allowlist first: the key is chosen from the allowed algorithm, so
        // `none`, or an HS* token meant for an RSA public key, never gets one.
        let Some((alg, validation)) = self
            .allowed
            .iter()
            .find(|(a, _)| algorithm_name(*a) == header.alg)
        else {
            return Err(JwtRejected::Algorithm);
        };
        if header.crit.is_some() {
            return Err(JwtRejected::Malformed);
        }
        let mut outcome = JwtRejected::UnknownKey;
        for key in self.candidates(*alg, header.kid.as_deref()) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
                Ok(data) => {
                    // Only a token whose signature verified gets this far: a
                    // refresh token (say) is told apart from an access token.
                    let typ_ok = self.typ.as_ref().is_none_or(|want| {
                        header.typ.as_ref().and_then(Value::as_str) == Some(want.as_str())
                    });
                    if !typ_ok || !self.claims.iter().all(|rule| rule.holds(&data.claims)) {
                        return Err(JwtRejected::ClaimMismatch);
                    }
                    return self.verified(data.claims);
                }
                Err(err) => match rejection(err.kind()) {
                    // Another key may still verify it (tokens without `kid`).
                    JwtRejected::Signature => outcome = JwtRejected::Signature,
                    other => return Err(other),
                },
            }
        }
        Err(outcome)
    }

    /// The keys that may verify a token signed with (allowlisted) `alg`.
    fn candidates(&self, alg: Algorithm, kid: Option<&str>) -> Vec<&DecodingKey> {
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

    fn verified(&self, claims: Map<String, Value>) -> Result<VerifiedToken, JwtRejected> {
        let id = match claims.get(&self.id_claim) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(JwtRejected::NoTokenId),
        };
        if id.is_empty()
            || id.len() > MAX_ID_LEN
            || id.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(JwtRejected::NoTokenId);
        }
        Ok(VerifiedToken {
            id: SessionId::new(id),
            claims,
        })
    }
}

/// Splits a compact JWS into exactly three parts and reads its header.
fn parse_header(token: &str) -> Result<RawHeader, JwtRejected> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtRejected::Malformed);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(JwtRejected::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtRejected::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtRejected::Malformed)
}

fn rejection(kind: &ErrorKind) -> JwtRejected {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey => JwtRejected::Signature,
        ErrorKind::ExpiredSignature => JwtRejected::Expired,
        ErrorKind::ImmatureSignature => JwtRejected::NotYetValid,
        ErrorKind::InvalidIssuer
        | ErrorKind::InvalidAudience
        | ErrorKind::InvalidSubject
        | ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_) => JwtRejected::Claims,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => JwtRejected::Algorithm,
        _ => JwtRejected::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let pem =
            public_key_from_pem(fx["rs256_public_key_pem"].as_str().unwrap().as_bytes()).unwrap();
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
                public_key_from_pem(fx["rs256_public_key_pem"].as_str().unwrap().as_bytes())
                    .unwrap(),
            ),
            ..options(&[Algorithm::RS256])
        });
        assert!(pem_only.verify(rs).is_ok());
    }

    #[test]
    fn pem_keys_of_every_supported_kind_load() {
        let fx = fixture();
        let rsa =
            public_key_from_pem(fx["rs256_public_key_pem"].as_str().unwrap().as_bytes()).unwrap();
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
}
