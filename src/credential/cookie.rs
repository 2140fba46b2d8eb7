//! Session ids from the `Cookie` header: finding a cookie by name, plain ids, and
//! express-session signed cookies (`s:<id>.<base64 HMAC-SHA256>`, URL-encoded),
//! checked against the configured secrets in order until one matches, each
//! comparison in constant time (key rotation).

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha1::Sha1;
use sha2::Sha256;
use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::hash::BuildHasher;
use subtle::{Choice, ConstantTimeEq};
use thread_local::ThreadLocal;

use super::{SessionId, MAX_ID_LEN};

/// Length of an HMAC-SHA256 tag.
const TAG_LEN: usize = 32;
/// Length of a 32-byte tag in unpadded base64.
const TAG_B64_LEN: usize = 43;

/// Finds the raw (still URL-encoded) value of the first cookie called `name`.
///
/// Looks through every `Cookie` header value in order (a request may carry several),
/// splits each on `;`, trims spaces and tabs around names and values, and returns
/// the value of the first pair whose name equals `name` exactly, with one pair of
/// surrounding double quotes removed. Pairs without `=` are ignored.
///
/// Bytes that are not UTF-8 elsewhere in a header do not hide the cookie. If the
/// first cookie with that name has a value that is not UTF-8, the result is `None`
/// (the first occurrence wins, as in express-session: a later one is not used).
/// Allocation-free.
pub fn find_cookie<'a>(
    cookie_headers: impl IntoIterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a str> {
    let name = name.as_bytes();
    for header in cookie_headers {
        for pair in header.split(|&b| b == b';') {
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if trim_sp(&pair[..eq]) != name {
                continue;
            }
            let mut value = trim_sp(&pair[eq + 1..]);
            if let [b'"', inner @ .., b'"'] = value {
                value = inner;
            }
            return std::str::from_utf8(value).ok();
        }
    }
    None
}

fn trim_sp(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// An unsigned session id from a cookie value: percent-decoded, then rejected if
/// empty, longer than [`MAX_ID_LEN`] bytes, not UTF-8, or containing control
/// characters or whitespace.
pub fn plain_id(raw: &str) -> Option<SessionId> {
    let id = percent_decode_str(raw).decode_utf8().ok()?;
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return None;
    }
    Some(SessionId::new(id.into_owned()))
}

/// Verifies express-session signed cookies against a fixed list of secrets.
///
/// Keeps one HMAC-SHA256 instance per secret, already keyed, and clones it per
/// check (cheaper than keying again). Secrets are tried in order until one
/// matches; each signature comparison is constant time.
///
/// Cookie values it accepted lately are remembered per thread (see
/// [`Accepted`]), so a client's next requests skip the percent-decoding and
/// the HMAC. Verification is a pure function of the value and the secrets,
/// which a verifier never changes (a reload makes a new one), so the memo
/// cannot answer differently from a fresh check. Refused values are never
/// remembered. Whether the session behind an id is still valid is not this
/// verifier's question: Redis and the session cache still decide it on
/// every request.
pub struct ExpressVerifier {
    scheme: Scheme,
    keyed: Vec<Hmac<Sha256>>,
    /// Flask-Session's keys (HMAC-SHA1, derived from each secret).
    flask: Vec<Hmac<Sha1>>,
    accepted: ThreadLocal<RefCell<Accepted>>,
    /// Keyed per process, so a client cannot choose values that share a slot.
    hasher: foldhash::fast::RandomState,
}

impl fmt::Debug for ExpressVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpressVerifier")
            .field("secrets", &self.keyed.len())
            .finish()
    }
}

impl ExpressVerifier {
    /// Keys one HMAC per secret. With no secrets, nothing verifies.
    pub fn new(secrets: &[String]) -> Self {
        Self::from_keys(secrets)
    }

    /// Like [`ExpressVerifier::new`], for secrets given as bytes or strings.
    pub fn from_keys<S: AsRef<[u8]>>(secrets: &[S]) -> Self {
        Self::with_scheme(Scheme::Express, secrets)
    }

    /// A verifier of cookies signed the way `scheme` says.
    pub fn with_scheme<S: AsRef<[u8]>>(scheme: Scheme, secrets: &[S]) -> Self {
        ExpressVerifier {
            scheme,
            keyed: secrets.iter().map(|s| keyed_mac(s.as_ref())).collect(),
            flask: match scheme {
                Scheme::Flask => secrets.iter().map(|s| flask_key(s.as_ref())).collect(),
                _ => Vec::new(),
            },
            accepted: ThreadLocal::new(),
            hasher: Default::default(),
        }
    }

    /// Checks a raw (URL-encoded) `connect.sid`-style cookie value and returns the
    /// session id when its signature matches any secret.
    ///
    /// The value is percent-decoded, must start with `s:`, and is split at the last
    /// `.` into id and signature. The signature must be unpadded standard base64 of
    /// exactly 32 bytes. Ids that are empty or longer than [`MAX_ID_LEN`] bytes are
    /// rejected.
    pub fn verify(&self, raw: &str) -> Option<SessionId> {
        self.check(raw).ok().map(|(id, _)| id)
    }

    /// Like [`ExpressVerifier::verify`], saying which secret (by its index in
    /// `secrets`) signed the cookie, or why it was refused.
    pub fn check(&self, raw: &str) -> Result<(SessionId, usize), SignedCookieRejected> {
        let hash = self.hasher.hash_one(raw.as_bytes());
        let accepted = self.accepted.get_or(|| RefCell::new(Accepted::default()));
        if let Some(hit) = accepted.borrow().find(hash, raw) {
            return Ok(hit);
        }
        let (id, index) = self.check_uncached(raw)?;
        accepted.borrow_mut().put(hash, raw, &id, index);
        Ok((id, index))
    }

    /// [`ExpressVerifier::check`] without the memo.
    fn check_uncached(&self, raw: &str) -> Result<(SessionId, usize), SignedCookieRejected> {
        // Sized once: the decoded value is never longer than the raw one.
        let mut decoded = Vec::with_capacity(raw.len());
        decoded.extend(percent_decode_str(raw));
        let decoded = String::from_utf8(decoded).map_err(|_| SignedCookieRejected::Malformed)?;
        if self.scheme == Scheme::Flask {
            return self.check_flask(&decoded);
        }
        let rest = match self.scheme {
            Scheme::Express => decoded.strip_prefix("s:"),
            _ => Some(decoded.as_str()),
        };
        let (id, sig) = rest
            .and_then(split_signed)
            .ok_or(SignedCookieRejected::Malformed)?;
        // Each comparison is constant time. Stopping at the first matching
        // secret only tells a client which secret signed its own valid cookie
        // (the current one, almost always), and saves an HMAC per request.
        let index = self.keyed.iter().position(|mac| {
            let tag = mac
                .clone()
                .chain_update(id.as_bytes())
                .finalize()
                .into_bytes();
            bool::from(tag.as_slice().ct_eq(&sig))
        });
        match index {
            Some(index) => Ok((SessionId::new(id.to_owned()), index)),
            None => Err(SignedCookieRejected::BadSignature),
        }
    }
}

impl ExpressVerifier {
    /// Flask-Session's `<id>.<sig>`: itsdangerous, HMAC-SHA1 under a key
    /// derived from the secret, the tag in URL-safe base64 without padding.
    fn check_flask(&self, decoded: &str) -> Result<(SessionId, usize), SignedCookieRejected> {
        let (id, sig_b64) = decoded
            .rsplit_once('.')
            .ok_or(SignedCookieRejected::Malformed)?;
        if id.is_empty() || id.len() > MAX_ID_LEN || sig_b64.len() != 27 {
            return Err(SignedCookieRejected::Malformed);
        }
        let mut sig = [0u8; 21];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_slice(sig_b64, &mut sig)
            .map_err(|_| SignedCookieRejected::Malformed)?;
        if n != 20 {
            return Err(SignedCookieRejected::Malformed);
        }
        let index = self.flask.iter().position(|mac| {
            let tag = mac
                .clone()
                .chain_update(id.as_bytes())
                .finalize()
                .into_bytes();
            bool::from(tag.as_slice().ct_eq(&sig[..20]))
        });
        match index {
            Some(index) => Ok((SessionId::new(id.to_owned()), index)),
            None => Err(SignedCookieRejected::BadSignature),
        }
    }
}

/// How a signed cookie is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// express-session: `s:<id>.<sig>`, percent-encoded.
    Express,
    /// @fastify/session: `<id>.<sig>` (express's signature without the
    /// `s:`, percent-decoded only when it holds a `%`, which is the same).
    Fastify,
    /// Flask-Session with `SESSION_USE_SIGNER`: `<id>.<sig>`, itsdangerous.
    Flask,
}

/// itsdangerous' `Signer(secret, salt="flask-session", key_derivation="hmac")`:
/// the key is HMAC-SHA1(secret, salt), the signature HMAC-SHA1(key, id).
fn flask_key(secret: &[u8]) -> Hmac<Sha1> {
    let derived = <Hmac<Sha1> as Mac>::new_from_slice(secret)
        .expect("HMAC accepts keys of any length")
        .chain_update(b"flask-session")
        .finalize()
        .into_bytes();
    <Hmac<Sha1> as Mac>::new_from_slice(&derived).expect("HMAC accepts keys of any length")
}

/// Slots in one thread's memo of accepted cookie values (a power of two).
/// Full, with typical ~80-byte values, it holds about 0.5 MB.
const ACCEPTED_SLOTS: usize = 2048;

/// One thread's memo of cookie values that verified, direct-mapped by the
/// value's keyed hash: a value replaces whatever its slot held. Lookups
/// compare the whole value in constant time, so a near miss (a forged
/// signature for a remembered id) takes as long as any other.
#[derive(Default)]
struct Accepted {
    /// Made on first use.
    slots: Vec<Option<Remembered>>,
}

struct Remembered {
    hash: u64,
    raw: Box<str>,
    id: SessionId,
    index: usize,
}

impl Accepted {
    fn slot(hash: u64) -> usize {
        (hash as usize) & (ACCEPTED_SLOTS - 1)
    }

    fn find(&self, hash: u64, raw: &str) -> Option<(SessionId, usize)> {
        let seen = self.slots.get(Self::slot(hash))?.as_ref()?;
        let same = seen.hash == hash
            && seen.raw.len() == raw.len()
            && bool::from(ct_eq_words(seen.raw.as_bytes(), raw.as_bytes()));
        same.then(|| (seen.id.clone(), seen.index))
    }

    fn put(&mut self, hash: u64, raw: &str, id: &SessionId, index: usize) {
        if self.slots.is_empty() {
            self.slots.resize_with(ACCEPTED_SLOTS, || None);
        }
        self.slots[Self::slot(hash)] = Some(Remembered {
            hash,
            raw: raw.into(),
            id: id.clone(),
            index,
        });
    }
}

/// Constant-time equality of two slices of the same length, eight bytes at a
/// time (`subtle` compares slices a byte at a time, several times slower).
fn ct_eq_words(a: &[u8], b: &[u8]) -> Choice {
    debug_assert_eq!(a.len(), b.len());
    let mut diff = 0u64;
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = a_words.remainder().iter().zip(b_words.remainder());
    for (x, y) in a_words.zip(b_words) {
        let x = u64::from_ne_bytes(x.try_into().expect("eight bytes"));
        let y = u64::from_ne_bytes(y.try_into().expect("eight bytes"));
        diff |= x ^ y;
    }
    for (x, y) in tail {
        diff |= u64::from(x ^ y);
    }
    diff.ct_eq(&0)
}

/// Why a signed cookie value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedCookieRejected {
    /// Not `s:<id>.<43 base64 characters>` once percent-decoded.
    Malformed,
    /// Well formed, but no configured secret signed it.
    BadSignature,
}

impl SignedCookieRejected {
    pub fn as_str(self) -> &'static str {
        match self {
            SignedCookieRejected::Malformed => "malformed",
            SignedCookieRejected::BadSignature => "bad_signature",
        }
    }
}

/// Splits a decoded `s:<id>.<sig>` value into the id and the decoded signature.
fn split_signed(rest: &str) -> Option<(&str, [u8; TAG_LEN])> {
    let (id, sig_b64) = rest.rsplit_once('.')?;
    if id.is_empty() || id.len() > MAX_ID_LEN || sig_b64.len() != TAG_B64_LEN {
        return None;
    }
    // 43 base64 chars may be estimated at 33 bytes: leave room, then insist on 32.
    let mut buf = [0u8; TAG_LEN + 1];
    let n = STANDARD_NO_PAD.decode_slice(sig_b64, &mut buf).ok()?;
    if n != TAG_LEN {
        return None;
    }
    let mut sig = [0u8; TAG_LEN];
    sig.copy_from_slice(&buf[..TAG_LEN]);
    Some((id, sig))
}

fn keyed_mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// Verifies an express-session signed cookie value against `secrets` (any one
/// may match). Prefer a long-lived [`ExpressVerifier`] on hot paths.
pub fn express_id<S: AsRef<[u8]>>(raw: &str, secrets: &[S]) -> Option<SessionId> {
    ExpressVerifier::from_keys(secrets).verify(raw)
}

/// The characters JavaScript's `encodeURIComponent` leaves alone are
/// `A-Z a-z 0-9 - _ . ! ~ * ' ( )`; everything else is percent-encoded.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The cookie value express-session sets for session `id` signed with `secret`:
/// `encodeURIComponent("s:" + id + "." + sig)`, e.g. `s%3A<id>.<sig>` with `+`
/// and `/` in the signature written as `%2B` and `%2F`.
/// Signs `id` the way @fastify/session does: `<id>.<sig>`, no `s:`, not
/// percent-encoded.
pub fn fastify_sign(id: &str, secret: &str) -> String {
    let tag = keyed_mac(secret.as_bytes())
        .chain_update(id.as_bytes())
        .finalize()
        .into_bytes();
    format!("{id}.{}", STANDARD_NO_PAD.encode(tag))
}

pub fn express_sign(id: &str, secret: &str) -> String {
    let tag = keyed_mac(secret.as_bytes())
        .chain_update(id.as_bytes())
        .finalize()
        .into_bytes();
    let signed = format!("s:{id}.{}", STANDARD_NO_PAD.encode(tag));
    match utf8_percent_encode(&signed, URI_COMPONENT).into() {
        Cow::Borrowed(s) => s.to_owned(),
        Cow::Owned(s) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture() -> Value {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/express-session.json"
        ))
        .expect("read express-session fixture");
        serde_json::from_str(&text).expect("parse express-session fixture")
    }

    fn strings(v: &Value) -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_owned())
            .collect()
    }

    fn one(header: &str) -> Option<&str> {
        find_cookie([header.as_bytes()], "connect.sid")
    }

    #[test]
    fn fixture_valid_cookies_verify() {
        let fx = fixture();
        let name = fx["cookie_name"].as_str().expect("cookie_name");
        let verifier = ExpressVerifier::new(&strings(&fx["secrets"]));
        let valid = fx["valid"].as_array().expect("valid");
        assert!(!valid.is_empty());
        for entry in valid {
            let label = entry["name"].as_str().unwrap_or("?");
            let header = entry["cookie_header"].as_str().expect("cookie_header");
            let raw = find_cookie([header.as_bytes()], name).expect(label);
            let id = verifier
                .verify(raw)
                .unwrap_or_else(|| panic!("{label} rejected"));
            assert_eq!(
                id.as_str(),
                entry["session_id"].as_str().expect("session_id")
            );
            // The free function agrees, with the secrets as strings or as bytes.
            let secrets = strings(&fx["secrets"]);
            assert_eq!(express_id(raw, &secrets), Some(id.clone()));
            let bytes: Vec<Vec<u8>> = secrets.iter().map(|s| s.clone().into_bytes()).collect();
            assert_eq!(express_id(raw, &bytes), Some(id));
        }
    }

    #[test]
    fn fixture_invalid_cookies_are_rejected() {
        let fx = fixture();
        let name = fx["cookie_name"].as_str().expect("cookie_name");
        let invalid = fx["invalid"].as_array().expect("invalid");
        assert!(!invalid.is_empty());
        for entry in invalid {
            let label = entry["name"].as_str().unwrap_or("?");
            let secrets = match entry.get("secrets_override") {
                Some(o) => strings(o),
                None => strings(&fx["secrets"]),
            };
            let header = entry["cookie_header"].as_str().expect("cookie_header");
            let raw = find_cookie([header.as_bytes()], name).expect(label);
            assert_eq!(ExpressVerifier::new(&secrets).verify(raw), None, "{label}");
        }
    }

    #[test]
    fn check_names_the_signing_secret_or_why_a_cookie_was_refused() {
        let fx = fixture();
        let name = fx["cookie_name"].as_str().expect("cookie_name");
        let verifier = ExpressVerifier::new(&strings(&fx["secrets"]));
        let cookie = |label: &str, list: &str| {
            let entry = fx[list]
                .as_array()
                .expect(list)
                .iter()
                .find(|e| e["name"] == label)
                .unwrap_or_else(|| panic!("{label}"));
            let header = entry["cookie_header"].as_str().expect("cookie_header");
            find_cookie([header.as_bytes()], name)
                .expect(label)
                .to_owned()
        };
        let (id, index) = verifier.check(&cookie("user-shape", "valid")).unwrap();
        assert_eq!(
            (id.as_str(), index),
            ("f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o", 0)
        );
        let (_, index) = verifier
            .check(&cookie("signed-with-previous-secret", "valid"))
            .unwrap();
        assert_eq!(index, 1);
        assert_eq!(
            verifier
                .check(&cookie("tampered-signature", "invalid"))
                .err(),
            Some(SignedCookieRejected::BadSignature)
        );
        assert_eq!(
            verifier.check(&cookie("unsigned-bare-id", "invalid")).err(),
            Some(SignedCookieRejected::Malformed)
        );
    }

    #[test]
    fn express_sign_reproduces_fixture_cookies() {
        let fx = fixture();
        let secrets = strings(&fx["secrets"]);
        let mut checked = 0;
        for entry in fx["valid"].as_array().expect("valid") {
            let label = entry["name"].as_str().unwrap_or("?");
            if !matches!(label, "user-shape" | "passport-shape") {
                continue;
            }
            let header = entry["cookie_header"].as_str().expect("cookie_header");
            let raw = one(header).expect(label);
            let id = entry["session_id"].as_str().expect("session_id");
            assert_eq!(express_sign(id, &secrets[0]), raw, "{label}");
            checked += 1;
        }
        assert_eq!(checked, 2);
        // And the one signed with the previous secret, with secrets[1].
        let prev = &fx["valid"][2];
        assert_eq!(prev["name"], "signed-with-previous-secret");
        let raw = one(prev["cookie_header"].as_str().expect("cookie_header")).expect("prev");
        let id = prev["session_id"].as_str().expect("session_id");
        assert_eq!(express_sign(id, &secrets[1]), raw);
        assert_ne!(express_sign(id, &secrets[0]), raw);
    }

    #[test]
    fn sign_then_verify_roundtrip_and_encoding() {
        let secrets = vec!["k1".to_string(), "k2".to_string()];
        let v = ExpressVerifier::new(&secrets);
        for id in ["abc", "a.b.c", "with space", "ünï", "x+y/z=", "a;b,c"] {
            let cookie = express_sign(id, "k2");
            assert!(cookie.starts_with("s%3A"), "{cookie}");
            assert!(!cookie.contains(['+', '/', '=', ' ', ';', ',']), "{cookie}");
            assert_eq!(
                v.verify(&cookie).map(|s| s.as_str().to_owned()),
                Some(id.to_owned())
            );
            assert_eq!(
                ExpressVerifier::new(&["k3".to_string()]).verify(&cookie),
                None
            );
        }
        // Not URL-encoded at all works too (cookie npm only decodes when needed).
        let cookie = express_sign("abc", "k1");
        let decoded = percent_decode_str(&cookie)
            .decode_utf8()
            .expect("utf8")
            .into_owned();
        assert!(decoded.starts_with("s:abc."));
        assert!(v.verify(&decoded).is_some());
    }

    #[test]
    fn verify_rejects_malformed_signatures() {
        let secrets = vec!["k".to_string()];
        let v = ExpressVerifier::new(&secrets);
        let good = percent_decode_str(&express_sign("abc", "k"))
            .decode_utf8()
            .expect("utf8")
            .into_owned();
        assert!(v.verify(&good).is_some());
        let (body, sig) = good.rsplit_once('.').expect("dot");
        for bad in [
            format!("{body}.{sig}="),
            format!("{body}.{}", &sig[1..]),
            format!("{body}.{sig}A"),
            format!("{body}.{}*", &sig[..42]),
            format!("{body}{sig}"),
            format!("{body}."),
            format!("{}.{sig}", &body[2..]),
            format!("S:{}.{sig}", &body[2..]),
            format!("s:.{sig}"),
            String::new(),
            "s:".to_string(),
            good.replace("s:abc", "s:abd"),
        ] {
            assert_eq!(v.verify(&bad), None, "{bad}");
        }
        // No secrets configured: nothing verifies.
        assert_eq!(ExpressVerifier::new(&[]).verify(&good), None);
        // Ids longer than the limit are refused even when correctly signed.
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(v.verify(&express_sign(&long, "k")), None);
        let max = "a".repeat(MAX_ID_LEN);
        assert!(v.verify(&express_sign(&max, "k")).is_some());
        // Non-canonical base64 (trailing bits set) is rejected, as express does
        // (it compares the signature string exactly).
        let last = sig.as_bytes()[42];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let pos = alphabet.iter().position(|&c| c == last).expect("b64 char");
        let tweaked = alphabet[(pos & !3) | ((pos + 1) & 3)] as char;
        let bad = format!("{body}.{}{tweaked}", &sig[..42]);
        assert_eq!(v.verify(&bad), None, "{bad}");
    }

    #[test]
    fn express_id_uses_last_dot() {
        let cookie = express_sign("id.with.dots", "s3cret");
        assert_eq!(
            express_id(&cookie, &["s3cret"]).map(|s| s.as_str().to_owned()),
            Some("id.with.dots".to_owned())
        );
    }

    #[test]
    fn find_cookie_basics() {
        assert_eq!(one("connect.sid=abc"), Some("abc"));
        assert_eq!(one("a=1; connect.sid=abc; b=2"), Some("abc"));
        assert_eq!(one("a=1;connect.sid=abc;b=2"), Some("abc"));
        assert_eq!(one("  connect.sid  =  abc  ; b=2"), Some("abc"));
        assert_eq!(one("connect.sid=\"abc\""), Some("abc"));
        assert_eq!(one("connect.sid=\"\"abc\"\""), Some("\"abc\""));
        assert_eq!(one("connect.sid=\""), Some("\""));
        assert_eq!(one("connect.sid="), Some(""));
        assert_eq!(one("connect.sid=a=b"), Some("a=b"));
        assert_eq!(one("connect.sid"), None);
        assert_eq!(one(""), None);
        assert_eq!(one("a=1; b=2"), None);
    }

    #[test]
    fn find_cookie_first_occurrence_wins() {
        assert_eq!(one("connect.sid=first; connect.sid=second"), Some("first"));
        assert_eq!(
            find_cookie(
                [&b"a=1; connect.sid=first"[..], b"connect.sid=second"],
                "connect.sid"
            ),
            Some("first")
        );
        assert_eq!(
            find_cookie([&b"a=1"[..], b"connect.sid=second"], "connect.sid"),
            Some("second")
        );
    }

    #[test]
    fn find_cookie_matches_name_exactly() {
        assert_eq!(one("connect.sid2=x"), None);
        assert_eq!(one("xconnect.sid=x"), None);
        assert_eq!(one("Connect.sid=x"), None);
        assert_eq!(
            one("connect.sid2=x; xconnect.sid=y; connect.sid=z"),
            Some("z")
        );
        assert_eq!(one("connect.sid2=x; xconnect.sid=y"), None);
    }

    #[test]
    fn find_cookie_non_utf8() {
        // Garbage in another cookie of the same header does not hide ours.
        assert_eq!(
            find_cookie([&b"tracker=\xff\xfe; connect.sid=abc"[..]], "connect.sid"),
            Some("abc")
        );
        // A non-UTF-8 first occurrence gives nothing (no fallback to a later one).
        assert_eq!(
            find_cookie(
                [&b"connect.sid=\xff"[..], b"connect.sid=abc"],
                "connect.sid"
            ),
            None
        );
    }

    #[test]
    fn plain_id_rules() {
        assert_eq!(
            plain_id("abc").map(|s| s.as_str().to_owned()),
            Some("abc".into())
        );
        assert_eq!(
            plain_id("a%2Fb").map(|s| s.as_str().to_owned()),
            Some("a/b".into())
        );
        assert_eq!(
            plain_id(&"a".repeat(256)).map(|s| s.as_str().len()),
            Some(256)
        );
        assert!(plain_id(&"a".repeat(257)).is_none());
        assert!(plain_id(&"%61".repeat(257)).is_none());
        assert!(plain_id("").is_none());
        assert!(plain_id("a b").is_none());
        assert!(plain_id("a%20b").is_none());
        assert!(plain_id("a%09b").is_none());
        assert!(plain_id("a%00b").is_none());
        assert!(plain_id("a%0Ab").is_none());
        assert!(plain_id("a%7Fb").is_none());
        assert!(plain_id("a%C2%A0b").is_none());
        assert!(plain_id("a%FFb").is_none());
    }

    fn remembered(verifier: &ExpressVerifier) -> usize {
        verifier.accepted.get().map_or(0, |memo| {
            memo.borrow().slots.iter().filter(|s| s.is_some()).count()
        })
    }

    #[test]
    fn remembered_values_answer_as_a_fresh_check_would() {
        let secrets = ["current".to_string(), "previous".to_string()];
        let verifier = ExpressVerifier::new(&secrets);
        let good = express_sign("id-1", "previous");
        assert_eq!(
            verifier
                .check(&good)
                .map(|(id, i)| (id.as_str().to_owned(), i)),
            Ok(("id-1".into(), 1))
        );
        assert_eq!(remembered(&verifier), 1);
        // The second answer comes from the memo, and is the same.
        assert_eq!(
            verifier
                .check(&good)
                .map(|(id, i)| (id.as_str().to_owned(), i)),
            Ok(("id-1".into(), 1))
        );
        // A value differing in any one byte of the remembered one is checked
        // afresh, and refused: a forged signature for a remembered id included.
        for at in 0..good.len() {
            let mut forged = good.clone().into_bytes();
            forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(forged).unwrap();
            assert!(verifier.check(&forged).is_err(), "byte {at}: {forged}");
        }
        // Refused values are never remembered.
        assert_eq!(remembered(&verifier), 1);
        // Another verifier (a reload with other secrets) has a memo of its own.
        let rotated = ExpressVerifier::new(&["current".to_string()]);
        assert_eq!(
            rotated.check(&good).err(),
            Some(SignedCookieRejected::BadSignature)
        );
    }

    #[test]
    fn a_full_memo_still_verifies_every_value() {
        let verifier = ExpressVerifier::new(&["s".to_string()]);
        let values: Vec<String> = (0..ACCEPTED_SLOTS * 2)
            .map(|i| express_sign(&format!("id-{i}"), "s"))
            .collect();
        for _ in 0..2 {
            for (i, value) in values.iter().enumerate() {
                let id = verifier.verify(value).expect("verifies");
                assert_eq!(id.as_str(), format!("id-{i}"));
            }
        }
        assert!(remembered(&verifier) <= ACCEPTED_SLOTS);
    }

    proptest::proptest! {
        #[test]
        fn word_wise_comparison_is_equality(
            a in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            flip in proptest::option::of((0usize..40, 1u8..=255)),
        ) {
            let mut b = a.clone();
            if let Some((at, x)) = flip {
                if let Some(byte) = b.get_mut(at) {
                    *byte ^= x;
                }
            }
            proptest::prop_assert_eq!(bool::from(ct_eq_words(&a, &b)), a == b);
        }
    }
}
