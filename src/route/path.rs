//! Request path normalisation: one canonical form per path, so that `%2e%2e`,
//! `//`, `/./` and `/../` tricks cannot move a request out of (or into) a
//! protected prefix, and ambiguous encodings are refused outright. The gateway
//! routes on this form and forwards exactly this form.

use std::borrow::Cow;

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathRejected {
    #[error("encoded slash or backslash in path")]
    EncodedSeparator,
    #[error("NUL or control character in path")]
    ControlChar,
    #[error("malformed percent-encoding")]
    BadEncoding,
    #[error("path does not start with /")]
    NotAbsolute,
    /// Percent-decoded, the path is not UTF-8 (e.g. the overlong `%C0%AE`).
    #[error("path is not UTF-8 once decoded")]
    NotUtf8,
    /// A `;` path parameter, with `path_parameters = "reject"`.
    #[error("path parameter (;) in path")]
    Parameter,
    /// With `non_canonical_paths = "reject"`: the path differs from its normal form.
    #[error("path is not in normal form")]
    NotCanonical,
}

impl PathRejected {
    /// A short stable code for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            PathRejected::EncodedSeparator => "encoded_separator",
            PathRejected::ControlChar => "control_char",
            PathRejected::BadEncoding => "bad_encoding",
            PathRejected::NotAbsolute => "not_absolute",
            PathRejected::NotUtf8 => "not_utf8",
            PathRejected::Parameter => "path_parameter",
            PathRejected::NotCanonical => "not_canonical",
        }
    }
}

/// Normalises a request path (no query string: the caller splits at `?`) for route
/// matching.
///
/// - The path must start with `/` ([`PathRejected::NotAbsolute`]; `*` is not
///   handled here).
/// - Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, hex
///   case-insensitively, so `%2e%2E` becomes `..` before dot segments are removed.
///   Other encoded bytes stay encoded, with upper-case hex (`%c3%a9` → `%C3%A9`).
/// - `%2F`, `%5C` and a raw `\` are refused ([`PathRejected::EncodedSeparator`]);
///   raw or encoded control characters (0x00-0x1F, 0x7F) are refused
///   ([`PathRejected::ControlChar`]); a `%` not followed by two hex digits is
///   refused ([`PathRejected::BadEncoding`]).
/// - Raw non-ASCII characters are percent-encoded (upper-case hex), so `/café` and
///   `/caf%C3%A9` normalise to the same path. Once every `%XX` is decoded the path
///   must be UTF-8 ([`PathRejected::NotUtf8`]): overlong forms such as `%C0%AE`,
///   which some decoders read as `.`, are refused.
/// - Duplicate slashes are collapsed and dot segments removed (RFC 3986 5.2.4); a
///   trailing `/.` or `/..` leaves a trailing slash. `;` is not special.
///
/// Returns [`Cow::Borrowed`] when the input is already normal.
pub fn normalise_path(raw: &str) -> Result<Cow<'_, str>, PathRejected> {
    if !raw.starts_with('/') {
        return Err(PathRejected::NotAbsolute);
    }
    if is_plainly_normal(raw.as_bytes()) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw.as_bytes())?;
    let out = remove_dot_segments(&decoded);
    if out == raw {
        Ok(Cow::Borrowed(raw))
    } else {
        Ok(Cow::Owned(out))
    }
}

/// Fast path: no `%`, `\`, control or non-ASCII bytes, and no `//` or `/.`. Such a
/// path is its own normal form.
fn is_plainly_normal(b: &[u8]) -> bool {
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'%' | b'\\' | 0x00..=0x1F | 0x7F..=0xFF => return false,
            b'/' if matches!(b.get(i + 1), Some(b'/' | b'.')) => return false,
            _ => {}
        }
    }
    true
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn push_encoded(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0x0F)]));
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// First pass: checks and canonicalises percent-encoding. The result is ASCII.
fn decode_unreserved(b: &[u8]) -> Result<String, PathRejected> {
    let mut out = String::with_capacity(b.len() + 8);
    // The fully decoded bytes, checked for UTF-8 when any is non-ASCII.
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex_val),
                    b.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(PathRejected::BadEncoding);
                };
                let v = (hi << 4) | lo;
                decoded.push(v);
                match v {
                    0x00..=0x1F | 0x7F => return Err(PathRejected::ControlChar),
                    b'/' | b'\\' => return Err(PathRejected::EncodedSeparator),
                    _ if is_unreserved(v) => out.push(char::from(v)),
                    _ => push_encoded(&mut out, v),
                }
                i += 3;
            }
            b'\\' => return Err(PathRejected::EncodedSeparator),
            0x00..=0x1F | 0x7F => return Err(PathRejected::ControlChar),
            0x80..=0xFF => {
                decoded.push(c);
                push_encoded(&mut out, c);
                i += 1;
            }
            _ => {
                decoded.push(c);
                out.push(char::from(c));
                i += 1;
            }
        }
    }
    if !decoded.is_ascii() && std::str::from_utf8(&decoded).is_err() {
        return Err(PathRejected::NotUtf8);
    }
    Ok(out)
}

/// The path as Tomcat and Jetty read it: every segment's `;` parameters
/// removed (`/admin;x=1/secret` is `/admin/secret`), then dot segments removed
/// again (`/public/..;/admin/` is `/admin/`). `normal` is a normalised path.
pub fn strip_parameters(normal: &str) -> String {
    let mut stripped = String::with_capacity(normal.len());
    for (i, segment) in normal.split('/').enumerate() {
        if i > 0 {
            stripped.push('/');
        }
        stripped.push_str(segment.split(';').next().unwrap_or(""));
    }
    remove_dot_segments(&stripped)
}

/// Second pass: collapses empty segments and removes `.` and `..` (RFC 3986 5.2.4).
/// `path` starts with `/`.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let mut parts = path.split('/').skip(1).peekable();
    while let Some(seg) = parts.next() {
        let last = parts.peek().is_none();
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
        trailing_slash = last && matches!(seg, "" | "." | "..");
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if segments.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

/// Route prefix matching on a normalised path: a plain byte prefix match, except
/// that a prefix ending in `/` also matches the directory itself (`/admin/`
/// matches `/admin`). `/admin/` does not match `/administrator`; `/admin` does
/// (the config author chooses with the trailing slash).
pub fn prefix_matches(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix) || prefix.strip_suffix('/').is_some_and(|dir| path == dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(s: &str) -> Result<String, PathRejected> {
        normalise_path(s).map(Cow::into_owned)
    }

    #[test]
    fn already_normal_is_borrowed() {
        for p in [
            "/",
            "/a",
            "/a/",
            "/a/b.c",
            "/a/b..c",
            "/a/...",
            "/a.",
            "/public;/x",
            "/a-b_c~d",
            "/.well-known/x",
            "/a/.x/",
        ] {
            match normalise_path(p) {
                Ok(Cow::Borrowed(s)) => assert_eq!(s, p),
                other => panic!("{p}: {other:?}"),
            }
        }
    }

    #[test]
    fn changed_paths_are_owned() {
        assert!(matches!(normalise_path("//a"), Ok(Cow::Owned(_))));
        assert!(matches!(normalise_path("/%61"), Ok(Cow::Owned(_))));
    }

    #[test]
    fn dot_segments_and_slashes() {
        let cases = [
            ("/a/./b/../c", "/a/c"),
            ("/..", "/"),
            ("/.", "/"),
            ("/../..", "/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/./", "/a/b/"),
            ("/a/b/../", "/a/"),
            ("//a///b", "/a/b"),
            ("//", "/"),
            ("///", "/"),
            ("/a//", "/a/"),
            ("/a/../../../b", "/b"),
            ("/public/../admin", "/admin"),
            ("/public;/../admin", "/admin"),
            ("/public/..;/admin", "/public/..;/admin"),
            ("/a/.../b", "/a/.../b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a//../b", "/b"),
            ("/./a", "/a"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn percent_encoding() {
        let cases = [
            ("/%2e%2E/admin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/.%2E/admin", "/admin"),
            ("/public/%2e/admin", "/public/admin"),
            ("/%61dmin/", "/admin/"),
            ("/%41%5a%30%2D%5F%7e", "/AZ0-_~"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a%3bb", "/a%3Bb"),
            ("/%25", "/%25"),
            ("/%252e%252e/x", "/%252e%252e/x"),
            ("/a;b=c/d", "/a;b=c/d"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejections() {
        use PathRejected::*;
        let cases = [
            ("", NotAbsolute),
            ("a/b", NotAbsolute),
            ("*", NotAbsolute),
            ("%2F", NotAbsolute),
            ("/a%2Fb", EncodedSeparator),
            ("/a%2fb", EncodedSeparator),
            ("/a%5Cb", EncodedSeparator),
            ("/a%5cb", EncodedSeparator),
            ("/a\\b", EncodedSeparator),
            ("/..\\admin", EncodedSeparator),
            ("/a%00b", ControlChar),
            ("/a%0a", ControlChar),
            ("/a%1F", ControlChar),
            ("/a%7f", ControlChar),
            ("/a\0b", ControlChar),
            ("/a\tb", ControlChar),
            ("/a\nb", ControlChar),
            ("/a\x7fb", ControlChar),
            ("/a%", BadEncoding),
            ("/a%2", BadEncoding),
            ("/a%g0", BadEncoding),
            ("/a%0g", BadEncoding),
            ("/a%%32%65", BadEncoding),
            ("/%é", BadEncoding),
            ("/%c0%ae%c0%ae/admin", NotUtf8),
            ("/a%ff", NotUtf8),
            ("/a%c3", NotUtf8),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn parameters_are_stripped_per_segment() {
        let cases = [
            ("/admin;x=1/secret", "/admin/secret"),
            ("/public/..;/admin/", "/admin/"),
            ("/a;b/c;d=e;f", "/a/c"),
            ("/;x/a", "/a"),
            ("/app/x;jsessionid=1", "/app/x"),
            ("/plain", "/plain"),
            ("/a/..;", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(strip_parameters(input), want, "{input}");
        }
    }

    #[test]
    fn prefixes() {
        assert!(prefix_matches("/admin/x", "/admin/"));
        assert!(prefix_matches("/admin/", "/admin/"));
        assert!(prefix_matches("/admin", "/admin/"));
        assert!(!prefix_matches("/administrator", "/admin/"));
        assert!(!prefix_matches("/adm", "/admin/"));
        assert!(prefix_matches("/administrator", "/admin"));
        assert!(prefix_matches("/anything", "/"));
        assert!(!prefix_matches("/public", "/admin/"));
    }

    /// Segments chosen to make dot-segment and encoding tricks likely.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just(".%2e".to_string()),
            Just("...".to_string()),
            Just("admin".to_string()),
            Just("%61dmin".to_string()),
            Just("public".to_string()),
            Just("public;".to_string()),
            Just("..;".to_string()),
            Just("%c3%a9".to_string()),
            Just("%25".to_string()),
            "[a-z.%;~]{0,4}".prop_map(String::from),
        ]
    }

    fn tricky_path() -> impl Strategy<Value = String> {
        (prop::collection::vec(segment(), 0..8), any::<bool>()).prop_map(|(segs, trailing)| {
            let mut p = String::from("/");
            p.push_str(&segs.join("/"));
            if trailing {
                p.push('/');
            }
            p
        })
    }

    fn check_normal_form(input: &str, n: &str) {
        assert!(n.starts_with('/'), "{input:?} -> {n:?}");
        assert!(!n.contains("//"), "{input:?} -> {n:?}");
        assert!(!n.contains("/./"), "{input:?} -> {n:?}");
        assert!(!n.contains("/../"), "{input:?} -> {n:?}");
        assert!(!n.ends_with("/."), "{input:?} -> {n:?}");
        assert!(!n.ends_with("/.."), "{input:?} -> {n:?}");
        assert!(n.is_ascii(), "{input:?} -> {n:?}");
        assert!(
            !n.bytes().any(|b| b.is_ascii_control() || b == b'\\'),
            "{input:?} -> {n:?}"
        );
        let again = normalise_path(n).expect("normal form is accepted");
        assert_eq!(again, n, "not idempotent: {input:?}");
        assert!(
            matches!(again, Cow::Borrowed(_)),
            "normal form not borrowed: {n:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn tricky_paths_normalise_well(p in tricky_path()) {
            if let Ok(n) = normalise_path(&p) {
                check_normal_form(&p, &n);
                if n.starts_with("/admin/") || n == "/admin" {
                    prop_assert!(!prefix_matches(&n, "/public/"), "{p:?} -> {n:?}");
                }
                if prefix_matches(&n, "/public/") {
                    prop_assert!(!prefix_matches(&n, "/admin/"), "{p:?} -> {n:?}");
                }
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(p in "/\\PC{0,40}|\\PC{0,20}") {
            if let Ok(n) = normalise_path(&p) {
                check_normal_form(&p, &n);
            }
        }

        #[test]
        fn arbitrary_bytes_as_paths(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            let p = format!("/{}", String::from_utf8_lossy(&bytes));
            if let Ok(n) = normalise_path(&p) {
                check_normal_form(&p, &n);
            }
        }

        #[test]
        fn escaping_a_prefix_needs_dot_dot(p in tricky_path()) {
            // A path under /public/ with no `..` (raw or encoded) stays under /public/.
            let full = format!("/public{p}");
            let lower = full.to_ascii_lowercase();
            if !lower.contains("..") && !lower.contains(".%2e") && !lower.contains("%2e.")
                && !lower.contains("%2e%2e")
            {
                if let Ok(n) = normalise_path(&full) {
                    prop_assert!(prefix_matches(&n, "/public/"), "{full:?} -> {n:?}");
                }
            }
        }
    }
}
