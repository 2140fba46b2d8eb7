//! The request-target and `Host` as the gateway decides on them, and as it
//! forwards them: one canonical reading, computed once, before routing.
//!
//! - Only origin-form (`/path?query`) and absolute-form with the `http` scheme
//!   (`http://host/path?query`) are accepted; asterisk-form, authority-form,
//!   other schemes and anything that does not start with `/` are refused.
//! - Every request needs a host: HTTP/1.1 requests exactly one `Host` header
//!   (RFC 9112 3.2), HTTP/1.0 requests a `Host` header or an absolute-form
//!   authority. When both are present they must name the same host.
//! - The host is normalised (lower case, port removed, one trailing dot
//!   removed) and must be a valid DNS name, IPv4 address or bracketed IPv6
//!   address.
//! - The path is normalised by [`normalise_path`]; `;` path parameters are
//!   refused unless allowed, and with `non_canonical_paths = "reject"` a path
//!   that is not already normal is refused instead of rewritten.
//!
//! What reaches the upstream is the normalised path with the original query
//! in origin-form, and the normalised host as `Host`.

use std::borrow::Cow;

use http::{HeaderValue, Uri};

use super::path::{normalise_path, PathRejected};

/// Request headers that some frameworks let override the method or the path
/// the request line gave (Symfony and IIS read `X-Original-URL`, Rails and
/// Express's method-override middleware `X-HTTP-Method-Override`). The
/// gateway decided on the request line, so client-sent copies never reach the
/// upstream.
pub const OVERRIDE_HEADERS: [&str; 6] = [
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// How requests whose path is not in normal form are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonCanonicalPaths {
    /// Route on the normal form and forward the normal form (the default).
    #[default]
    Rewrite,
    /// Refuse with 400: the upstream only ever sees the bytes the client sent.
    Reject,
}

/// How `;` path parameters (`/app;jsessionid=1/x`) are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParameters {
    /// Refuse with 400 (the default).
    #[default]
    Reject,
    /// Accept; routes are chosen under the reading with the parameters and the
    /// one without, and the request must satisfy both.
    Allow,
}

/// The request-target and host rules of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetPolicy {
    pub non_canonical_paths: NonCanonicalPaths,
    pub path_parameters: PathParameters,
}

/// Why a request-target or its host was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetRejected {
    #[error("request-target is neither origin-form nor http absolute-form")]
    Form,
    #[error("request-target is not UTF-8")]
    NotUtf8,
    #[error("no host: neither an absolute-form authority nor a Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("invalid host")]
    BadHost,
    #[error("the Host header disagrees with the request-target's authority")]
    ConflictingHost,
    #[error("{0}")]
    Path(PathRejected),
}

impl TargetRejected {
    /// A short stable code for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetRejected::Form => "bad_target",
            TargetRejected::NotUtf8 => "bad_target",
            TargetRejected::MissingHost => "missing_host",
            TargetRejected::DuplicateHost => "duplicate_host",
            TargetRejected::BadHost => "bad_host",
            TargetRejected::ConflictingHost => "conflicting_host",
            TargetRejected::Path(_) => "bad_path",
        }
    }
}

impl From<PathRejected> for TargetRejected {
    fn from(e: PathRejected) -> Self {
        TargetRejected::Path(e)
    }
}

/// What the upstream request must be changed to so that it says what was
/// decided. Empty when the client's bytes already say exactly that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// The origin-form target to send instead of the client's.
    pub uri: Option<Uri>,
    /// The `Host` to send instead of the client's.
    pub host: Option<HeaderValue>,
}

/// A request-target and host in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'r> {
    /// Lower case, no port, no trailing dot; IPv6 in brackets.
    pub host: Cow<'r, str>,
    /// The normalised path.
    pub path: Cow<'r, str>,
    /// The query as sent (without `?`), if any.
    pub query: Option<&'r str>,
    /// What the forwarded request needs changed.
    pub rewrite: Rewrite,
}

impl<'r> Target<'r> {
    /// Canonicalises `raw` (the request-target exactly as received) and the
    /// request's `Host` header values; `host_header_required` for HTTP/1.1.
    pub fn parse(
        raw: &'r [u8],
        mut hosts: impl Iterator<Item = &'r [u8]>,
        host_header_required: bool,
        policy: TargetPolicy,
    ) -> Result<Target<'r>, TargetRejected> {
        let raw = std::str::from_utf8(raw).map_err(|_| TargetRejected::NotUtf8)?;
        if raw.contains('#') {
            return Err(TargetRejected::Form);
        }
        let (authority, path_and_query) = if raw.starts_with('/') {
            (None, raw)
        } else if raw
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
        {
            let rest = &raw[7..];
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            (Some(&rest[..end]), &rest[end..])
        } else {
            return Err(TargetRejected::Form);
        };
        let (raw_path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        // `http://host` and `http://host?q` have the empty path, which is `/`.
        let raw_path = if raw_path.is_empty() && authority.is_some() {
            "/"
        } else {
            raw_path
        };

        let header = hosts.next();
        if hosts.next().is_some() {
            return Err(TargetRejected::DuplicateHost);
        }
        let header = header
            .map(|h| std::str::from_utf8(h).map_err(|_| TargetRejected::BadHost))
            .transpose()?;
        if header.is_none() && host_header_required {
            return Err(TargetRejected::MissingHost);
        }
        let (host, port) = match (authority, header) {
            (None, None) => return Err(TargetRejected::MissingHost),
            (Some(authority), header) => {
                let host = normalise_host(authority)?;
                let port = port_of(authority)?;
                if let Some(header) = header {
                    let other = port_of(header)?;
                    if normalise_host(header)? != host
                        || matches!((port, other), (Some(a), Some(b)) if a != b)
                    {
                        return Err(TargetRejected::ConflictingHost);
                    }
                }
                (host, port)
            }
            (None, Some(header)) => (normalise_host(header)?, port_of(header)?),
        };

        let path = normalise_path(raw_path)?;
        if policy.path_parameters == PathParameters::Reject && path.contains(';') {
            return Err(PathRejected::Parameter.into());
        }
        let path_changed = path.as_ref() != raw_path;
        if path_changed && policy.non_canonical_paths == NonCanonicalPaths::Reject {
            return Err(PathRejected::NotCanonical.into());
        }

        let mut rewrite = Rewrite::default();
        if path_changed || authority.is_some() {
            let mut target = String::with_capacity(path.len() + 1 + query.map_or(0, str::len));
            target.push_str(&path);
            if let Some(query) = query {
                target.push('?');
                target.push_str(query);
            }
            rewrite.uri = Some(Uri::try_from(target).map_err(|_| TargetRejected::Form)?);
        }
        // The app is sent the canonical host with the client's port: apps
        // build absolute URLs and redirects from it.
        if !header.is_some_and(|h| is_forwarded_form(h, &host, port)) {
            let forwarded = match port {
                Some(port) => Cow::Owned(format!("{host}:{port}")),
                None => Cow::Borrowed(&*host),
            };
            rewrite.host =
                Some(HeaderValue::from_str(&forwarded).map_err(|_| TargetRejected::BadHost)?);
        }
        Ok(Target {
            host,
            path,
            query,
            rewrite,
        })
    }
}

/// A host as routes compare it: lower case, port removed, one trailing dot
/// removed. Refuses userinfo, empty labels, characters outside letters,
/// digits, `-` and `_`, a non-numeric port, and an IPv6 literal that does not
/// parse.
pub fn normalise_host(authority: &str) -> Result<Cow<'_, str>, TargetRejected> {
    let bad = TargetRejected::BadHost;
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(bad)?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(bad)?),
        };
        (&authority[..v6.len() + 2], port)
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    if port.is_some_and(|p| p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad);
    }
    if name.starts_with('[') {
        return Ok(lower(name));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty()
        || name.len() > 253
        || name.split('.').any(|label| {
            label.is_empty()
                || label.len() > 63
                || !label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    {
        return Err(bad);
    }
    Ok(lower(name))
}

/// The port of an authority, if it names one (`host:` names none). Refuses
/// a port that is not a number up to 65535.
pub fn port_of(authority: &str) -> Result<Option<u16>, TargetRejected> {
    let after_host = match authority.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(_, after)| after),
        None => authority.rfind(':').map_or("", |i| &authority[i..]),
    };
    match after_host.strip_prefix(':') {
        None | Some("") => Ok(None),
        Some(digits) if digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()) => digits
            .parse::<u16>()
            .map(Some)
            .map_err(|_| TargetRejected::BadHost),
        Some(_) => Err(TargetRejected::BadHost),
    }
}

/// Whether a `Host` value is already the canonical `host[:port]`.
fn is_forwarded_form(header: &str, host: &str, port: Option<u16>) -> bool {
    let Some(rest) = header.strip_prefix(host) else {
        return false;
    };
    match port {
        None => rest.is_empty(),
        Some(port) => rest
            .strip_prefix(':')
            .is_some_and(|digits| digits.parse() == Ok(port) && !digits.starts_with('0')),
    }
}

fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<'a>(raw: &'a str, hosts: &[&'a str]) -> Result<Target<'a>, TargetRejected> {
        Target::parse(
            raw.as_bytes(),
            hosts.iter().map(|h| h.as_bytes()),
            false,
            TargetPolicy::default(),
        )
    }

    #[test]
    fn hosts_are_normalised() {
        for (input, want) in [
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("example.com:8080", "example.com"),
            ("example.com.", "example.com"),
            ("Example.com.:80", "example.com"),
            ("127.0.0.1:9", "127.0.0.1"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("[ABCD::1]", "[abcd::1]"),
            ("my_host", "my_host"),
            ("example.com:", "example.com"),
        ] {
            assert_eq!(normalise_host(input).as_deref(), Ok(want), "{input}");
        }
        for input in [
            "",
            ":80",
            ".",
            "example.com..",
            "a..b",
            "user@example.com",
            "example.com:80:80",
            "example.com:http",
            "exa mple.com",
            "exa%41mple.com",
            "[::1",
            "[nothex]",
            "[::1]x",
            "example.com/",
            "example.com:123456",
        ] {
            assert_eq!(
                normalise_host(input),
                Err(TargetRejected::BadHost),
                "{input}"
            );
        }
    }

    #[test]
    fn origin_form_is_forwarded_as_is_when_already_normal() {
        let t = parse("/app/x?a=1", &["example.com"]).unwrap();
        assert_eq!(t.path, "/app/x");
        assert_eq!(t.query, Some("a=1"));
        assert_eq!(t.rewrite, Rewrite::default());
    }

    #[test]
    fn a_non_normal_path_is_forwarded_normalised_with_its_query() {
        let t = parse("//public/admin/secret?x=%2e", &["example.com:8080"]).unwrap();
        assert_eq!(t.path, "/public/admin/secret");
        assert_eq!(
            t.rewrite.uri.as_ref().map(|u| u.to_string()),
            Some("/public/admin/secret?x=%2e".to_owned())
        );
        assert_eq!(t.rewrite.host, None, "the port is kept");
    }

    #[test]
    fn the_forwarded_host_keeps_the_port() {
        for (hosts, want) in [
            (&["example.com:8080"][..], None),
            (&["Example.COM.:8080"][..], Some("example.com:8080")),
            (&["example.com:08080"][..], Some("example.com:8080")),
            (&["example.com:"][..], Some("example.com")),
            (&["example.com"][..], None),
            (&["[::1]:8443"][..], None),
            (&["[ABCD::1]:8443"][..], Some("[abcd::1]:8443")),
        ] {
            let t = parse("/x", hosts).unwrap();
            assert_eq!(
                t.rewrite.host.as_ref().map(|h| h.to_str().unwrap()),
                want,
                "{hosts:?}"
            );
        }
        let t = parse("http://a.test:8080/x", &["a.test"]).unwrap();
        assert_eq!(t.rewrite.host.as_ref().unwrap(), "a.test:8080");
        assert_eq!(
            parse("http://a.test:8080/x", &["a.test:9090"]),
            Err(TargetRejected::ConflictingHost)
        );
        assert_eq!(parse("/x", &["a.test:65536"]), Err(TargetRejected::BadHost));
    }

    #[test]
    fn absolute_form_routes_on_its_authority() {
        let t = parse("http://Admin.Test./x?q", &[]).unwrap();
        assert_eq!(t.host, "admin.test");
        assert_eq!(t.rewrite.uri.as_ref().unwrap().to_string(), "/x?q");
        assert_eq!(t.rewrite.host.as_ref().unwrap(), "admin.test");
        let t = parse("HTTP://admin.test", &["admin.test"]).unwrap();
        assert_eq!(t.path, "/");
        assert_eq!(t.rewrite.uri.as_ref().unwrap().to_string(), "/");
        assert_eq!(t.rewrite.host, None);
        assert_eq!(
            parse("http://admin.test/x", &["public.test"]),
            Err(TargetRejected::ConflictingHost)
        );
        assert_eq!(
            parse("http://admin.test:8080/x", &["ADMIN.test"])
                .unwrap()
                .host,
            "admin.test"
        );
    }

    #[test]
    fn other_forms_are_refused() {
        for raw in [
            "admin/secret",
            "x:/admin/",
            "*",
            "example.com:443",
            "https://example.com/",
            "ftp://example.com/",
            "http:/admin",
            "/a#frag",
            "",
            "?q",
        ] {
            assert_eq!(parse(raw, &["h"]), Err(TargetRejected::Form), "{raw:?}");
        }
        assert_eq!(parse("http://user@h/", &[]), Err(TargetRejected::BadHost));
    }

    #[test]
    fn host_is_required_and_single() {
        assert_eq!(parse("/", &[]), Err(TargetRejected::MissingHost));
        let no_host = |raw: &'static str, required| {
            Target::parse(
                raw.as_bytes(),
                std::iter::empty(),
                required,
                TargetPolicy::default(),
            )
        };
        assert_eq!(no_host("http://a/", true), Err(TargetRejected::MissingHost));
        assert_eq!(no_host("http://a/", false).unwrap().host, "a");
        assert_eq!(parse("/", &["a", "a"]), Err(TargetRejected::DuplicateHost));
        assert_eq!(parse("/", &["a b"]), Err(TargetRejected::BadHost));
    }

    #[test]
    fn path_parameters_and_strict_mode() {
        assert_eq!(
            parse("/admin;x=1/secret", &["h"]),
            Err(TargetRejected::Path(PathRejected::Parameter))
        );
        let allow = TargetPolicy {
            path_parameters: PathParameters::Allow,
            ..TargetPolicy::default()
        };
        let t =
            Target::parse(b"/app;jsessionid=1/x", [&b"h"[..]].into_iter(), true, allow).unwrap();
        assert_eq!(t.path, "/app;jsessionid=1/x");
        assert_eq!(t.rewrite.uri, None);

        let strict = TargetPolicy {
            non_canonical_paths: NonCanonicalPaths::Reject,
            ..TargetPolicy::default()
        };
        let strict_parse = |raw: &'static str| {
            Target::parse(raw.as_bytes(), [&b"h"[..]].into_iter(), true, strict)
        };
        assert_eq!(
            strict_parse("/a/../b"),
            Err(TargetRejected::Path(PathRejected::NotCanonical))
        );
        assert_eq!(
            strict_parse("/%61"),
            Err(TargetRejected::Path(PathRejected::NotCanonical))
        );
        assert!(strict_parse("/a/b?x=/../").is_ok());
    }
}
