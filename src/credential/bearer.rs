//! `Authorization: Bearer <token>` parsing (RFC 6750 section 2.1): the scheme is
//! case-insensitive and the token must be a token68. Anything else is no credential.

/// Returns the token of an `Authorization` header value using the `Bearer` scheme.
///
/// The scheme is matched case-insensitively and must be followed by one or more
/// spaces, then a token68 (`A-Za-z0-9-._~+/` then optional `=` padding) and
/// nothing else. Whitespace around the whole field value (OWS, which HTTP does not
/// count as part of the value) is ignored. Returns `None` for anything else: another
/// scheme, an empty token, spaces inside the token, non-ASCII bytes.
pub fn bearer_token(authorization: &[u8]) -> Option<&str> {
    let value = trim_ows(authorization);
    const SCHEME: &[u8] = b"bearer";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    if spaces == 0 {
        return None;
    }
    let token = &rest[spaces..];
    if !is_token68(token) {
        return None;
    }
    // token68 bytes are ASCII, so this cannot fail.
    std::str::from_utf8(token).ok()
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_token68(t: &[u8]) -> bool {
    let body = t
        .iter()
        .take_while(|&&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
        .count();
    body > 0 && t[body..].iter().all(|&b| b == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bearer_tokens() {
        assert_eq!(
            bearer_token(b"Bearer abc.def-ghi_jkl"),
            Some("abc.def-ghi_jkl")
        );
        assert_eq!(bearer_token(b"bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"BEARER abc"), Some("abc"));
        assert_eq!(bearer_token(b"BeArEr    abc"), Some("abc"));
        assert_eq!(bearer_token(b"Bearer a+b/c~d=="), Some("a+b/c~d=="));
        assert_eq!(bearer_token(b"Bearer abc "), Some("abc"));
        assert_eq!(bearer_token(b" Bearer abc\t"), Some("abc"));
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0b2tlbklkIjoiMSJ9.c2ln";
        assert_eq!(bearer_token(format!("Bearer {jwt}").as_bytes()), Some(jwt));
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer    ",
            b"Bearerabc",
            b"Bearer\tabc",
            b"Basic dXNlcjpwYXNz",
            b"Bearer abc def",
            b"Bearer abc,def",
            b"Bearer =abc",
            b"Bearer ab=c",
            b"Bearer ===",
            b"Bearer ab\"c",
            b"Bearer \xc3\xa9t\xc3\xa9",
            b"Bearer abc\xff",
            b"Bearer abc\0",
            b"Bearer\xc2\xa0abc",
            b"Token abc",
            b"Bearers abc",
        ] {
            assert_eq!(
                bearer_token(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn fixture_jwts_are_extracted() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/jwt.json"
        ))
        .expect("read jwt fixture");
        let v: serde_json::Value = serde_json::from_str(&text).expect("parse jwt fixture");
        let mut seen = 0;
        for list in ["valid", "invalid"] {
            for entry in v[list].as_array().into_iter().flatten() {
                if let Some(token) = entry["token"].as_str() {
                    let header = format!("Bearer {token}");
                    assert_eq!(bearer_token(header.as_bytes()), Some(token));
                    seen += 1;
                }
            }
        }
        assert!(seen > 0, "no tokens in the fixture");
    }
}
