//! Verification of bearer JWTs: per token the size and shape are checked,
//! the algorithm allowlist is enforced before any key is chosen, then the
//! signature, the registered claims, `typ` and `[jwt.claims]`; a verified
//! token yields its claims and the id of its Redis key.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::keys::{algorithm_name, KeySet, PublicKey};
use crate::credential::{SessionId, MAX_ID_LEN};

/// Longest token accepted, in bytes; longer ones are refused before parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Longest leeway `[jwt] leeway` may set.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

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
    keys: KeySet,
    id_claim: String,
    typ: Option<String>,
    claims: Vec<ClaimRule>,
    /// Seconds past `exp` a token is still accepted.
    leeway: u64,
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
            .field("keys", &self.keys)
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
    /// The last second (Unix time) the token is accepted: its `exp` plus
    /// the leeway.
    pub valid_until: u64,
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
            keys: KeySet::new(options.secret.as_deref(), options.public_key, options.jwks),
            id_claim: options.id_claim,
            typ: options.typ,
            claims: options.claims,
            leeway,
        }
    }

    /// The claim whose value names the token's Redis key.
    pub fn id_claim(&self) -> &str {
        &self.id_claim
    }

    /// Whether some configured key can verify tokens signed with `alg`.
    pub fn has_key_for(&self, alg: Algorithm) -> bool {
        self.keys.has_key_for(alg)
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
        for key in self.keys.candidates(*alg, header.kid.as_deref()) {
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
        // jsonwebtoken required `exp` and checked it, so it is a number.
        let exp = match claims.get("exp") {
            Some(Value::Number(n)) => n
                .as_u64()
                .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
                .unwrap_or(0),
            _ => 0,
        };
        Ok(VerifiedToken {
            id: SessionId::new(id),
            claims,
            valid_until: exp.saturating_add(self.leeway),
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
