//! Hostile input against the real gateway: spoofed identity headers in every
//! spelling, path confusion, open redirects, malformed and oversized
//! credentials and headers. Nothing unauthenticated may reach the upstream,
//! and nothing may crash the gateway.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{get, Client, Stack, ALICE};

fn setup() -> Stack {
    let stack = Stack::start(|url, upstream| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"

[session]
secrets = ["fixture-secret-current"]
bearer = "opaque"
bearer_key = "api:{{id}}"

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Role" = "user.role"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/public/"
upstream = "app"
access = "public"

[[route]]
path_prefix = "/Admin/"
upstream = "app"
roles = ["admin"]

[[route]]
path_prefix = "/"
upstream = "app"
on_unauthenticated = {{ redirect = "/login" }}
"#
        )
    });
    stack.seed_alice(r#"{"user":{"id":"1001","role":"viewer"}}"#);
    stack
}

/// Sends raw bytes and returns the status code (0 if the connection was closed).
fn raw(s: &Stack, bytes: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(s.gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn repeated_and_variant_identity_headers_are_all_replaced() {
    let s = setup();
    let resp = get(
        s.gateway.addr,
        "/app",
        &[
            ("X-User-Id", "evil1"),
            ("X-User-Id", "evil2"),
            ("x-user-id", "evil3"),
            ("X_USER_ID", "evil4"),
            ("x-User_iD", "evil5"),
            ("X-User-Role", "admin"),
            ("Cookie", ALICE),
        ],
    );
    assert_eq!(resp.status, 200);
    let ids: Vec<String> = resp
        .echoed_headers()
        .into_iter()
        .filter(|(n, _)| n.to_ascii_lowercase().replace('_', "-") == "x-user-id")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(ids, vec!["1001"]);
    assert_eq!(resp.echoed("X-User-Role"), vec!["viewer"]);
}

#[test]
fn obsolete_line_folding_cannot_smuggle_an_identity_header() {
    let s = setup();
    let status = raw(
        &s,
        b"GET /public/x HTTP/1.1\r\nHost: a\r\nX-Other: a\r\n X-User-Id: evil\r\n\r\n",
    );
    // Either refused, or forwarded with the folded text as part of X-Other.
    assert!(status == 400 || status == 200, "{status}");
    if status == 200 {
        let mut client = Client::connect(s.gateway.addr);
        let _ = client.send("GET", "/public/y", &[]);
    }
}

#[test]
fn path_confusion_never_reaches_a_protected_route_unauthenticated() {
    let s = setup();
    let json = ("Accept", "application/json");
    let protected = [
        "/public/../app",
        "/public/%2e%2e/app",
        "/public/.%2e/app",
        "/public/%2E./app",
        "/public;/../app",
        "/public/./../Admin/x",
        "//public/..//app",
        "/public/../../../../app",
    ];
    for path in protected {
        let resp = get(s.gateway.addr, path, &[json]);
        assert_eq!(resp.status, 401, "{path}");
    }
    for path in [
        "/public%2f../app",
        "/public/..%2F",
        "/public/..%5capp",
        "/public\\..\\app",
        "/public/%00",
        "/public/%zz",
    ] {
        let resp = get(s.gateway.addr, path, &[json]);
        assert_eq!(resp.status, 400, "{path}");
    }
    // Routes are case-sensitive: /admin/ is not /Admin/, so it falls to the
    // authenticated catch-all rather than to the public route.
    assert_eq!(get(s.gateway.addr, "/admin/x", &[json]).status, 401);
    assert_eq!(
        get(s.gateway.addr, "/Admin/x", &[json, ("Cookie", ALICE)]).status,
        403
    );
    assert_eq!(s.upstream.requests(), 0);
}

#[test]
fn return_to_is_always_a_local_path() {
    let s = setup();
    for path in [
        "//evil.example/x",
        "/\\evil.example",
        "/%2F%2Fevil.example",
        "/http://evil.example",
    ] {
        let resp = get(s.gateway.addr, path, &[("Accept", "text/html")]);
        if resp.status == 302 {
            let location = resp.header("location").unwrap();
            let target = location.strip_prefix("/login?return_to=").unwrap();
            assert!(
                target.starts_with('/') && !target.starts_with("//") && !target.starts_with("/\\"),
                "{location}"
            );
            assert!(
                !target.contains("://") || target.starts_with("/http%3A"),
                "{location}"
            );
        } else {
            assert_eq!(resp.status, 400, "{path}");
        }
    }
}

#[test]
fn malformed_cookies_and_tokens_get_401_not_a_crash() {
    let s = setup();
    let json = ("Accept", "application/json");
    let long_id = format!("connect.sid=s%3A{}.sig", "a".repeat(5000));
    let bad_cookies = [
        "connect.sid=s%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lT0%3D", // padded
        "connect.sid=x%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lT0", // wrong prefix
        "connect.sid=s%253Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%252BXwMDSsuiQ6Be2bgQL7N6lT0", // double-encoded
        "connect.sid=s:f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o",
        "connect.sid=%ff%fe",
        "connect.sid=",
        "connect.sid",
        ";;;=;",
        long_id.as_str(),
    ];
    for cookie in bad_cookies {
        assert_eq!(
            get(s.gateway.addr, "/app", &[json, ("Cookie", cookie)]).status,
            401,
            "{cookie}"
        );
    }
    let many: String = (0..200).map(|i| format!("c{i}=v; ")).collect::<String>() + ALICE;
    assert_eq!(
        get(s.gateway.addr, "/app", &[("Cookie", &many)]).status,
        200,
        "the session among many cookies"
    );
    // A control character in a header value is refused by the HTTP parser itself.
    let del = get(
        s.gateway.addr,
        "/app",
        &[json, ("Authorization", "Bearer a\u{7f}b")],
    )
    .status;
    assert!(del == 400 || del == 401, "{del}");
    for auth in [
        "Bearer",
        "Bearer ",
        "Basic abc",
        "bearer  ",
        "Bearer ../../etc",
    ] {
        assert_eq!(
            get(s.gateway.addr, "/app", &[json, ("Authorization", auth)]).status,
            401,
            "{auth:?}"
        );
    }
    assert_eq!(s.upstream.requests(), 1);
}

#[test]
fn invalid_bytes_and_oversized_headers_are_refused_cleanly() {
    let s = setup();
    let nul = raw(
        &s,
        b"GET /app HTTP/1.1\r\nHost: a\r\nCookie: connect.sid=a\0b\r\n\r\n",
    );
    assert!(
        nul == 400 || nul == 401 || nul == 0,
        "NUL in a header: {nul}"
    );
    let utf8 = raw(&s, b"GET /app HTTP/1.1\r\nHost: a\r\nCookie: connect.sid=\xff\xfe\xfd\r\nAccept: application/json\r\n\r\n");
    assert!(utf8 == 400 || utf8 == 401, "invalid UTF-8: {utf8}");
    let big = format!(
        "GET /public/x HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    let status = raw(&s, big.as_bytes());
    assert!(
        status == 431 || status == 400 || status == 0,
        "oversized: {status}"
    );
    let many: String = (0..2000)
        .map(|i| format!("X-H{i}: {}\r\n", "v".repeat(40)))
        .collect();
    let status = raw(
        &s,
        format!("GET /public/x HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
    );
    assert!(
        status == 431 || status == 400 || status == 0,
        "numerous: {status}"
    );
    assert_eq!(s.upstream.requests(), 0);
    // Still serving.
    assert_eq!(
        get(s.gateway.addr, "/app", &[("Cookie", ALICE)]).status,
        200
    );
}

fn identity_stack(rate_limit: &str) -> Stack {
    let rate_limit = rate_limit.to_owned();
    Stack::start(move |url, upstream| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"

[session]
secrets = ["fixture-secret-current"]

# These tests rewrite the one session between requests; the cache learns of
# a rewrite a moment later (tests/cache.rs), so here every request reads Redis.
[cache]
enabled = false

[identity.headers]
"X-User-Id" = {{ field = "user.id", required = true, max_bytes = 64 }}
"X-User-Name" = {{ field = "user.name", max_bytes = 32 }}
"X-User-Role" = "user.role"

{rate_limit}

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/"
upstream = "app"
"#
        )
    })
}

#[test]
fn identity_values_that_cannot_be_header_values_are_never_sent() {
    let s = identity_stack("");
    // A value with CR LF, NUL, or over its cap is left out; a required one
    // refuses the request instead of forwarding it anonymous.
    for name in [
        r#""a\r\nX-Admin: 1""#,
        r#""a\u0000b""#,
        &format!("\"{}\"", "n".repeat(40)),
    ] {
        s.seed_alice(&format!(
            r#"{{"user":{{"id":"1001","name":{name},"role":"viewer"}}}}"#
        ));
        let resp = get(
            s.gateway.addr,
            &format!("/n{}", name.len()),
            &[("Cookie", ALICE)],
        );
        assert_eq!(resp.status, 200, "{name}");
        assert!(resp.echoed("x-user-name").is_empty(), "{name}");
        assert!(resp.echoed("x-admin").is_empty(), "{name}");
        assert_eq!(resp.echoed("x-user-id"), ["1001"]);
    }
    let before = s.upstream.requests();
    for id in [
        r#""1\r\nX-Admin: 1""#,
        &format!("\"{}\"", "9".repeat(100_000)),
        r#""""#,
    ] {
        s.seed_alice(&format!(r#"{{"user":{{"id":{id},"role":"viewer"}}}}"#));
        let resp = get(
            s.gateway.addr,
            &format!("/i{}", id.len()),
            &[("Cookie", ALICE)],
        );
        assert_eq!(resp.status, 403, "id {}", &id[..id.len().min(20)]);
    }
    s.seed_alice(r#"{"user":{"role":"viewer"}}"#);
    assert_eq!(
        get(s.gateway.addr, "/none", &[("Cookie", ALICE)]).status,
        403
    );
    assert_eq!(s.upstream.requests(), before);
    let log = s.gateway.access_log_until(|l| l["path"] == "/none");
    assert!(
        log.iter().any(|l| l["reason"] == "identity_invalid"),
        "{log:?}"
    );
    // Non-ASCII text is sent as its UTF-8 bytes.
    s.seed_alice(r#"{"user":{"id":"1001","name":"Zoë","role":"viewer"}}"#);
    let resp = get(s.gateway.addr, "/utf8", &[("Cookie", ALICE)]);
    assert_eq!(resp.echoed("x-user-name"), ["Zoë"]);
}

#[test]
fn forwarding_headers_from_a_client_are_replaced() {
    let s = identity_stack("");
    s.seed_alice(r#"{"user":{"id":"1001","role":"viewer"}}"#);
    let resp = get(
        s.gateway.addr,
        "/x",
        &[
            ("Host", "Site.Test:8080"),
            ("Cookie", ALICE),
            ("X-Forwarded-For", "10.9.9.9"),
            ("x-forwarded-for", "10.8.8.8"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "admin.test"),
            ("Forwarded", "for=10.9.9.9;proto=https"),
        ],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echoed("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(resp.echoed("x-forwarded-proto"), ["http"]);
    assert_eq!(resp.echoed("x-forwarded-host"), ["site.test:8080"]);
    assert!(resp.echoed("forwarded").is_empty());
}

#[test]
fn forwarding_headers_from_a_trusted_proxy_are_extended() {
    let s = identity_stack("[rate_limit]\ntrusted_proxies = [\"127.0.0.1\"]");
    s.seed_alice(r#"{"user":{"id":"1001","role":"viewer"}}"#);
    let resp = get(
        s.gateway.addr,
        "/x",
        &[
            ("Host", "site.test"),
            ("Cookie", ALICE),
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=198.51.100.1;proto=https"),
        ],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echoed("x-forwarded-for"), ["198.51.100.1, 127.0.0.1"]);
    assert_eq!(resp.echoed("x-forwarded-proto"), ["https"]);
    assert_eq!(resp.echoed("x-forwarded-host"), ["site.test"]);
    assert_eq!(
        resp.echoed("forwarded"),
        ["for=198.51.100.1;proto=https, for=127.0.0.1;host=site.test;proto=http"]
    );
}

#[test]
fn a_connection_header_cannot_remove_identity_or_forwarding_headers() {
    let s = identity_stack("");
    s.seed_alice(r#"{"user":{"id":"1001","name":"n","role":"viewer"}}"#);
    for nominated in [
        "X-User-Id",
        "x-user-role, X-User-Name",
        "keep-alive, X-User-Id",
        "X-Forwarded-For",
    ] {
        let head = format!(
            "GET /x HTTP/1.1\r\nHost: h\r\nCookie: {ALICE}\r\nConnection: {nominated}\r\n\r\n"
        );
        let before = s.upstream.requests();
        let Some(resp) = support::raw_request(s.gateway.addr, head.as_bytes()) else {
            // Pingora refuses to let a Connection header nominate X-Forwarded-*.
            assert_eq!(s.upstream.requests(), before, "{nominated}");
            continue;
        };
        // Either refused outright, or forwarded with every identity header.
        if resp.status == 200 {
            assert_eq!(resp.echoed("x-user-id"), ["1001"], "{nominated}");
            assert_eq!(resp.echoed("x-user-role"), ["viewer"], "{nominated}");
            assert_eq!(resp.echoed("x-user-name"), ["n"], "{nominated}");
            assert_eq!(resp.echoed("x-forwarded-for"), ["127.0.0.1"], "{nominated}");
        } else {
            assert_eq!(resp.status, 400, "{nominated}");
        }
    }
}
