//! HTTP/2 as an attacker speaks it, frame by frame, against the real gateway
//! over TLS: header blocks a client library would never send (upper-case
//! names, connection-specific fields, CR/LF/NUL in values, pseudo-headers
//! that disagree or are missing), bodies that disagree with their
//! `content-length`, header blocks that never end or decode to far more than
//! they weigh, and floods of control frames. Each is refused before anything
//! reaches the app, the gateway neither panics nor grows, and the next
//! client is served.

mod support;

use std::time::Duration;

use support::h2raw::{self, Outcome, RawH2, CONTINUATION, END_HEADERS, END_STREAM, HEADERS};
use support::tls::{certificate, curl, echoed, CertFiles};
use support::{EchoUpstream, RedisServer, TestGateway, ALICE, ALICE_KEY};

struct Edge {
    redis: RedisServer,
    upstream: EchoUpstream,
    gateway: TestGateway,
    _dir: tempfile::TempDir,
    cert: CertFiles,
}

fn start() -> Edge {
    start_with("", "")
}

/// `redis` is added to `[redis]`, `rest` at the end of the config.
fn start_with(redis_extra: &str, rest: &str) -> Edge {
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = certificate(dir.path(), "a", &["a.test", "b.test"], false);
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let gateway = TestGateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
threads = 1
h2_max_concurrent_streams = 8
max_request_header_bytes = 16384

[redis]
url = "{redis}"
{redis_extra}

[session]
secrets = ["fixture-secret-current"]

[identity.headers]
"X-User-Id" = "user.id"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/public/"
upstream = "app"
access = "public"

[[route]]
path_prefix = "/"
upstream = "app"

[[tls.certificates]]
cert = "{cert}"
key = "{key}"
default = true
{rest}
"#,
        redis = redis.url(),
        upstream = upstream.addr,
        cert = cert.cert.display(),
        key = cert.key.display(),
    ));
    use redis::Commands;
    let _: () = redis
        .conn()
        .set_ex(ALICE_KEY, r#"{"user":{"id":"1001"}}"#, 600)
        .expect("SET alice");
    Edge {
        redis,
        upstream,
        gateway,
        _dir: dir,
        cert,
    }
}

impl Edge {
    async fn connect(&self) -> RawH2 {
        RawH2::connect(self.gateway.tls_addr(), "a.test", &self.cert.cert).await
    }

    /// The gateway still serves: a fresh HTTP/2 connection with Alice's
    /// cookie gets the app, and nothing in its log says it panicked.
    fn still_serves(&self, after: &str) {
        let fine = curl(
            self.gateway.tls_addr(),
            "a.test",
            "/app",
            Some(&self.cert.cert),
            true,
            &["-H", &format!("Cookie: {ALICE}")],
        );
        assert_eq!(
            (fine.status, fine.version.as_str()),
            (200, "2"),
            "after {after}: a new connection is not served: {fine:?}"
        );
        let log = self.gateway.log();
        assert!(!log.contains("panicked"), "after {after}: {log}");
    }

    /// The gateway's resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.gateway.pid()))
            .expect("gateway status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

fn alice_cookie() -> String {
    ALICE.to_owned()
}

/// A request that the gateway would serve (Alice's session on a protected
/// path) with one field added or replaced.
fn served_with<'a>(cookie: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut fields = h2raw::request_fields("a.test", "/app");
    fields.push(("cookie", cookie));
    fields.extend_from_slice(extra);
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_header_blocks_are_refused_before_the_app() {
    let edge = start();
    let cookie = alice_cookie();
    // The control: the same request, well formed, is served.
    let mut raw = edge.connect().await;
    let id = raw.request(&served_with(&cookie, &[]), false).await;
    assert_eq!(raw.outcome(id).await, Outcome::Status(200));
    drop(raw);

    let pseudo = |method: &'static str,
                  scheme: Option<&'static str>,
                  authority: Option<&'static str>,
                  path: Option<&'static str>| {
        let mut fields = vec![(":method", method)];
        if let Some(s) = scheme {
            fields.push((":scheme", s));
        }
        if let Some(a) = authority {
            fields.push((":authority", a));
        }
        if let Some(p) = path {
            fields.push((":path", p));
        }
        fields
    };
    let mut cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        // Names: HTTP/2 field names are lower case (RFC 9113 8.2.1).
        (
            "an upper-case name",
            served_with(&cookie, &[("X-Forwarded-For", "1.2.3.4")]),
        ),
        (
            "an upper-case identity header",
            served_with(&cookie, &[("X-User-Id", "0")]),
        ),
        (
            "an upper-case Cookie",
            [
                h2raw::request_fields("a.test", "/app"),
                vec![("Cookie", cookie.as_str())],
            ]
            .concat(),
        ),
        (
            "a space in a name",
            served_with(&cookie, &[("x user", "1")]),
        ),
        (
            "a colon in a name",
            served_with(&cookie, &[("x:user", "1")]),
        ),
        ("an empty name", served_with(&cookie, &[("", "1")])),
        // Connection-specific fields (RFC 9113 8.2.2).
        (
            "connection",
            served_with(&cookie, &[("connection", "close")]),
        ),
        ("keep-alive", served_with(&cookie, &[("keep-alive", "5")])),
        (
            "proxy-connection",
            served_with(&cookie, &[("proxy-connection", "keep-alive")]),
        ),
        (
            "transfer-encoding",
            served_with(&cookie, &[("transfer-encoding", "chunked")]),
        ),
        ("upgrade", served_with(&cookie, &[("upgrade", "websocket")])),
        (
            "te other than trailers",
            served_with(&cookie, &[("te", "gzip")]),
        ),
        // Values: no CR, LF or NUL (RFC 9113 8.2.1), in any field.
        ("CR in a value", served_with(&cookie, &[("x-a", "a\rb")])),
        ("LF in a value", served_with(&cookie, &[("x-a", "a\nb")])),
        ("NUL in a value", served_with(&cookie, &[("x-a", "a\0b")])),
        (
            "a request line smuggled in a value",
            served_with(
                &cookie,
                &[("x-a", "a\r\n\r\nGET /admin HTTP/1.1\r\nhost: a.test")],
            ),
        ),
        // Pseudo-headers.
        (
            ":scheme http",
            [
                pseudo("GET", Some("http"), Some("a.test"), Some("/app")),
                vec![("cookie", cookie.as_str())],
            ]
            .concat(),
        ),
        (
            "no :path",
            pseudo("GET", Some("https"), Some("a.test"), None),
        ),
        (
            "no :scheme",
            pseudo("GET", None, Some("a.test"), Some("/public/x")),
        ),
        (
            "an empty :path",
            pseudo("GET", Some("https"), Some("a.test"), Some("")),
        ),
        (
            "a :path without a slash",
            pseudo("GET", Some("https"), Some("a.test"), Some("public/x")),
        ),
        (
            "an absolute :path",
            pseudo(
                "GET",
                Some("https"),
                Some("a.test"),
                Some("https://b.test/public/x"),
            ),
        ),
        (
            "an asterisk :path on GET",
            pseudo("GET", Some("https"), Some("a.test"), Some("*")),
        ),
        ("CONNECT", pseudo("CONNECT", None, Some("a.test:443"), None)),
        (
            "an unknown pseudo-header",
            [served_with(&cookie, &[]), vec![(":protocol", "websocket")]].concat(),
        ),
        (
            "a pseudo-header after a field",
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                ("cookie", cookie.as_str()),
                (":authority", "a.test"),
                (":path", "/app"),
            ],
        ),
        (
            "two :path",
            [
                pseudo("GET", Some("https"), Some("a.test"), Some("/app")),
                vec![(":path", "/public/x"), ("cookie", cookie.as_str())],
            ]
            .concat(),
        ),
        (
            "userinfo in :authority",
            pseudo("GET", Some("https"), Some("x@a.test"), Some("/public/x")),
        ),
        // Host and :authority must agree (RFC 9113 8.3.1).
        (
            "a host that disagrees with :authority",
            [
                pseudo("GET", Some("https"), Some("a.test"), Some("/public/x")),
                vec![("host", "b.test")],
            ]
            .concat(),
        ),
        (
            "a second host",
            [
                pseudo("GET", Some("https"), None, Some("/public/x")),
                vec![("host", "a.test"), ("host", "b.test")],
            ]
            .concat(),
        ),
        (
            "neither :authority nor host",
            pseudo("GET", Some("https"), None, Some("/public/x")),
        ),
    ];
    // A traversal out of the public prefix is decided on the canonical path.
    cases.push((
        "a dot segment out of a public prefix",
        pseudo("GET", Some("https"), Some("a.test"), Some("/public/../app")),
    ));
    // Two lengths for one body: an HTTP/1 upstream could take either.
    for lengths in [
        &[("content-length", "0"), ("content-length", "5")][..],
        &[("content-length", "0, 5")],
    ] {
        let mut fields = h2raw::request_fields("a.test", "/public/post");
        fields[0] = (":method", "POST");
        fields.extend_from_slice(lengths);
        cases.push(("two content-lengths", fields));
    }
    cases.push((
        "an encoded dot segment out of a public prefix",
        pseudo(
            "GET",
            Some("https"),
            Some("a.test"),
            Some("/public/%2e%2e/app"),
        ),
    ));
    for (what, fields) in &cases {
        let before = edge.upstream.requests();
        let mut raw = edge.connect().await;
        let id = raw.request(fields, false).await;
        let outcome = raw.outcome(id).await;
        assert!(outcome.refused(), "{what}: {outcome:?}");
        // Let a request the gateway had forwarded arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            edge.upstream.requests(),
            before,
            "{what}: reached the app ({outcome:?})"
        );
        println!("{what}: {outcome:?}");
    }
    edge.still_serves("malformed header blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_http_2_allows_is_served_and_routed_on_the_authority() {
    let edge = start();
    let cookie = alice_cookie();
    let mut raw = edge.connect().await;
    // `te: trailers` is the one TE allowed.
    let id = raw
        .request(&served_with(&cookie, &[("te", "trailers")]), false)
        .await;
    assert_eq!(raw.outcome(id).await, Outcome::Status(200), "te: trailers");
    // No :authority: the host comes from `host`.
    let id = raw
        .request(
            &[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/app"),
                ("host", "a.test"),
                ("cookie", &cookie),
            ],
            false,
        )
        .await;
    let (outcome, body) = raw.response(id).await;
    assert_eq!(outcome, Outcome::Status(200), "host without :authority");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(echoed(&body, "host"), ["a.test"], "{body}");
    // A host that agrees with :authority is fine.
    let id = raw
        .request(&served_with(&cookie, &[("host", "a.test")]), false)
        .await;
    assert_eq!(raw.outcome(id).await, Outcome::Status(200), "same host");
    // A session cookie split over several `cookie` fields: the first
    // occurrence decides, as it does for the app's cookie parser, which gets
    // the fields joined in their order.
    let forged = "connect.sid=s%3Aforged.forged";
    for (first, second, want) in [
        (forged, cookie.as_str(), 401),
        (cookie.as_str(), forged, 200),
    ] {
        let mut fields = h2raw::request_fields("a.test", "/app");
        fields.push(("cookie", first));
        fields.push(("cookie", "theme=dark"));
        fields.push(("cookie", second));
        let id = raw.request(&fields, false).await;
        let (outcome, body) = raw.response(id).await;
        assert_eq!(outcome, Outcome::Status(want), "{first} then {second}");
        if want == 200 {
            let body = String::from_utf8_lossy(&body);
            assert_eq!(
                echoed(&body, "cookie"),
                [format!("{first}; theme=dark; {second}")],
                "{body}"
            );
        }
    }
    // Paths that leave the public prefix for the app's eyes only: without a
    // session, whatever is served must be what the gateway judged public,
    // and the app gets exactly that path.
    for path in [
        "/public/../app",
        "/public/%2e%2e/app",
        "/public/%2E%2E%2Fapp",
        "/public/..%2fapp",
        "/public/..%5capp",
        "/public\\..\\app",
        "/public/./../app",
        "/public//../../app",
        "/PUBLIC/../app",
        "/public/x/..;/../app",
        "/public/%252e%252e/app",
        "/public/x?/../../app",
        "/public/x#/../../app",
    ] {
        let id = raw
            .request(&h2raw::request_fields("a.test", path), false)
            .await;
        let (outcome, body) = raw.response(id).await;
        let body = String::from_utf8_lossy(&body);
        if !outcome.refused() {
            let doc: serde_json::Value = serde_json::from_str(&body).expect("echo");
            let target = doc["target"].as_str().unwrap_or_default();
            let served = target.split('?').next().unwrap_or_default();
            assert!(
                served.starts_with("/public/")
                    && !served.contains("..")
                    && !served.to_ascii_lowercase().contains("%2e")
                    && !served.contains('\\'),
                "{path}: the app was sent {target}"
            );
        }
        println!("{path}: {outcome:?}");
    }
    // The same connection may carry another name its certificate covers.
    let mut fields = h2raw::request_fields("b.test", "/app");
    fields.push(("cookie", &cookie));
    let id = raw.request(&fields, false).await;
    let (outcome, body) = raw.response(id).await;
    assert_eq!(
        outcome,
        Outcome::Status(200),
        "b.test on a.test's connection"
    );
    assert_eq!(echoed(&String::from_utf8_lossy(&body), "host"), ["b.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_override_headers_sent_by_the_client_never_reach_the_app() {
    let edge = start();
    let cookie = alice_cookie();
    let forged = [
        ("x-user-id", "0"),
        ("x_user_id", "0"),
        ("x-user_id", "0"),
        ("x-original-url", "/admin"),
        ("x_original_url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("x_http_method_override", "DELETE"),
        ("x-forwarded-host", "evil.test"),
        ("x_forwarded_host", "evil.test"),
        ("x-forwarded-proto", "http"),
        ("forwarded", "for=1.2.3.4;proto=http"),
    ];
    let mut raw = edge.connect().await;
    for (path, with_cookie) in [("/public/x", false), ("/app", true)] {
        let mut fields = h2raw::request_fields("a.test", path);
        if with_cookie {
            fields.push(("cookie", &cookie));
        }
        fields.extend_from_slice(&forged);
        // A second, split copy of an identity header.
        fields.push(("x-user-id", "1"));
        let id = raw.request(&fields, false).await;
        let (outcome, body) = raw.response(id).await;
        assert_eq!(outcome, Outcome::Status(200), "{path}");
        let body = String::from_utf8_lossy(&body);
        let want_id: Vec<String> = if with_cookie {
            vec!["1001".into()]
        } else {
            Vec::new()
        };
        assert_eq!(echoed(&body, "x-user-id"), want_id, "{path}: {body}");
        // The gateway's own forwarding headers, and nothing of the client's.
        assert_eq!(echoed(&body, "x-forwarded-proto"), ["https"], "{body}");
        assert_eq!(echoed(&body, "x-forwarded-host"), ["a.test"], "{body}");
        assert_eq!(echoed(&body, "x-forwarded-for"), ["127.0.0.1"], "{body}");
        for (name, _) in &forged {
            if name.starts_with("x-forwarded-") || *name == "x-user-id" {
                continue;
            }
            assert!(
                echoed(&body, name).is_empty(),
                "{path}: {name} reached the app: {body}"
            );
        }
        assert!(
            !body.contains("evil.test") && !body.contains("1.2.3.4"),
            "{path}: a forged value reached the app: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_disagrees_with_its_content_length_is_refused() {
    let edge = start();
    // A body longer than announced could be read by an HTTP/1 upstream as
    // a second request; a shorter one leaves the upstream waiting.
    let smuggled = b"GET /app HTTP/1.1\r\nhost: a.test\r\n\r\n";
    let len = smuggled.len().to_string();
    let short = (smuggled.len() + 10).to_string();
    for (what, announced, body) in [
        ("content-length 0 and a body", "0", &smuggled[..]),
        ("a body longer than announced", "4", &smuggled[..]),
        (
            "a body shorter than announced",
            short.as_str(),
            &smuggled[..],
        ),
        ("the exact length", len.as_str(), &smuggled[..]),
    ] {
        // The lean path reads such a body whole; with `te: trailers` the
        // stream goes to the full proxy, which streams it.
        for full in [false, true] {
            let before = edge.upstream.requests();
            let mut raw = edge.connect().await;
            let mut fields = h2raw::request_fields("a.test", "/public/post");
            fields[0] = (":method", "POST");
            fields.push(("content-length", announced));
            if full {
                fields.push(("te", "trailers"));
            }
            let id = raw.request(&fields, true).await;
            raw.frame(h2raw::DATA, END_STREAM, id, body).await;
            let outcome = raw.outcome(id).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let reached = edge.upstream.requests() - before;
            println!(
                "{what} (full proxy: {full}): {outcome:?}, {reached} request(s) reached the app"
            );
            if what == "the exact length" {
                assert_eq!(outcome, Outcome::Status(200), "{what}");
                assert_eq!(reached, 1, "{what}");
            } else {
                assert!(outcome.refused(), "{what}: {outcome:?}");
                // The full proxy may forward a `content-length: 0` head
                // (without the DATA) before the h2 library resets the
                // stream; the lean path reads to the end of the stream first.
                let most = if full { 1 } else { 0 };
                assert!(
                    reached <= most,
                    "{what}: {reached} requests reached the app"
                );
            }
        }
    }
    edge.still_serves("content-length mismatches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_blocks_that_never_end_or_swell_are_cut_off() {
    let edge = start();
    let rss_before = edge.rss_kib();

    // CONTINUATION flood: a header block that never ends, 1 KiB fields
    // without END_HEADERS, far past max_request_header_bytes.
    let mut raw = edge.connect().await;
    let id = raw.stream();
    let start = h2raw::block(&h2raw::request_fields("a.test", "/public/x"));
    raw.frame(HEADERS, END_STREAM, id, &start).await;
    let value = "v".repeat(1024);
    let mut sent = 0usize;
    for i in 0..20_000 {
        let name = format!("x-f{i}");
        let fields = [(name.as_str(), value.as_str())];
        if !raw.frame(CONTINUATION, 0, id, &h2raw::block(&fields)).await {
            break;
        }
        sent += 1;
    }
    let goaway = raw.drain(Duration::from_secs(2)).await;
    println!("CONTINUATION flood: {sent} frames sent, GOAWAY {goaway:?}");
    assert!(
        sent < 20_000 || goaway.is_some(),
        "20000 CONTINUATION frames (20 MiB of header block) were taken in"
    );
    assert!(
        !raw.seen.iter().any(|f| f.kind == HEADERS && f.stream == id),
        "the endless block was answered as a request"
    );

    // Empty CONTINUATION frames: no bytes, only work.
    let mut raw = edge.connect().await;
    let id = raw.stream();
    raw.frame(HEADERS, END_STREAM, id, &start).await;
    let mut empty = 0usize;
    for _ in 0..100_000 {
        if !raw.frame(CONTINUATION, 0, id, &[]).await {
            break;
        }
        empty += 1;
    }
    let goaway = raw.drain(Duration::from_secs(2)).await;
    println!("empty CONTINUATION flood: {empty} frames sent, GOAWAY {goaway:?}");

    // One huge field in a block that ends.
    let mut raw = edge.connect().await;
    let big = "b".repeat(64 * 1024);
    let mut block = h2raw::block(&h2raw::request_fields("a.test", "/public/x"));
    h2raw::literal(&mut block, b"x-big", big.as_bytes());
    let id = raw.stream();
    let (head, rest) = block.split_at(16_000);
    raw.frame(HEADERS, END_STREAM, id, head).await;
    let chunks: Vec<&[u8]> = rest.chunks(16_000).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let flags = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        raw.frame(CONTINUATION, flags, id, chunk).await;
    }
    let outcome = raw.outcome(id).await;
    println!("a 64 KiB field: {outcome:?}");
    assert!(outcome.refused(), "a 64 KiB field: {outcome:?}");

    // An HPACK bomb: a 4 KiB field put in the dynamic table once, then
    // named again by its one-byte index thousands of times.
    let before = edge.upstream.requests();
    let mut raw = edge.connect().await;
    let id = raw.stream();
    let mut block = h2raw::block(&h2raw::request_fields("a.test", "/public/x"));
    let filler = "z".repeat(4000);
    block.push(0x40); // literal with incremental indexing, new name
    block.push(5);
    block.extend_from_slice(b"x-big");
    block.extend_from_slice(&[
        0x7f,
        0x80 + ((4000 - 127) % 128) as u8,
        ((4000 - 127) / 128) as u8,
    ]);
    block.extend_from_slice(filler.as_bytes());
    block.extend(std::iter::repeat_n(0x80 | 62, 10_000));
    let chunks: Vec<&[u8]> = block.chunks(16_000).collect();
    raw.frame(
        HEADERS,
        END_STREAM | if chunks.len() == 1 { END_HEADERS } else { 0 },
        id,
        chunks[0],
    )
    .await;
    for (i, chunk) in chunks.iter().enumerate().skip(1) {
        let flags = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        raw.frame(CONTINUATION, flags, id, chunk).await;
    }
    let outcome = raw.outcome(id).await;
    println!("an HPACK bomb (40 MB decoded from 14 KB): {outcome:?}");
    assert!(outcome.refused(), "an HPACK bomb: {outcome:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        edge.upstream.requests(),
        before,
        "the HPACK bomb reached the app"
    );

    let rss_after = edge.rss_kib();
    println!("gateway RSS: {rss_before} KiB before, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "the gateway grew from {rss_before} KiB to {rss_after} KiB"
    );
    edge.still_serves("header floods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frame_floods_do_not_grow_the_gateway() {
    let edge = start();
    let rss_before = edge.rss_kib();
    // PINGs and SETTINGS sent without reading a single answer: the
    // gateway's answers back up behind a client that does not read.
    let mut raw = edge.connect().await;
    let mut sent = 0usize;
    for i in 0..200_000u64 {
        let ok = if i % 2 == 0 {
            raw.frame(h2raw::PING, 0, 0, &i.to_be_bytes()).await
        } else {
            raw.frame(h2raw::SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]).await
        };
        if !ok {
            break;
        }
        sent += 1;
    }
    let rss_during = edge.rss_kib();
    drop(raw);
    // Streams opened and reset by the client, over and over (rapid reset).
    let mut raw = edge.connect().await;
    let mut resets = 0usize;
    for _ in 0..5_000 {
        let id = raw
            .request(&h2raw::request_fields("a.test", "/public/x"), false)
            .await;
        if !raw
            .frame(h2raw::RST_STREAM, 0, id, &h2raw::CANCEL.to_be_bytes())
            .await
        {
            break;
        }
        resets += 1;
    }
    let goaway = raw.drain(Duration::from_secs(2)).await;
    println!(
        "{sent} PING/SETTINGS frames unread; {resets} streams reset, GOAWAY {goaway:?}; \
         RSS {rss_before} KiB before, {rss_during} KiB during"
    );
    assert!(
        rss_during < rss_before + 32 * 1024,
        "unread control frames grew the gateway from {rss_before} KiB to {rss_during} KiB"
    );
    assert!(
        resets < 5_000 || goaway.is_some(),
        "5000 streams opened and reset on one connection were all taken"
    );
    edge.still_serves("control frame floods");
}

/// MadeYouReset (2025): the client makes the *server* reset streams it has
/// accepted, with frames that are stream errors (here a WINDOW_UPDATE that
/// overflows the stream's window),
/// so that no client RST_STREAM is counted against it while the requests
/// behind the streams keep running. The requests in flight are bounded per
/// connection whoever reset the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_server_is_made_to_reset_cannot_pile_up_requests() {
    let edge = start_with("command_timeout = \"10s\"", "[cache]\nenabled = false\n");
    let before = edge.redis.calls("get");
    // Redis holds every reply: each request the gateway starts waits in its
    // session lookup.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query(&mut edge.redis.conn())
        .expect("pause");
    let mut raw = edge.connect().await;
    let mut opened = 0usize;
    let mut n = 0usize;
    'rounds: for _ in 0..20 {
        let mut ids = Vec::new();
        for _ in 0..8 {
            n += 1;
            let cookie = format!(
                "connect.sid={}",
                sessiongate::credential::cookie::express_sign(
                    &format!("s{n}"),
                    "fixture-secret-current"
                )
            );
            let mut fields = h2raw::request_fields("a.test", "/app");
            fields.push(("cookie", &cookie));
            let id = raw.stream();
            if !raw
                .frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    id,
                    &h2raw::block(&fields),
                )
                .await
            {
                break 'rounds;
            }
            ids.push(id);
            opened += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for id in ids {
            // A window past 2^31-1 is a stream error (RFC 9113 6.9.1): the
            // server resets the stream. (A zero increment, the other
            // classic, is taken by the h2 library for a connection error.)
            if !raw
                .frame(h2raw::WINDOW_UPDATE, 0, id, &0x7fff_ffffu32.to_be_bytes())
                .await
            {
                break 'rounds;
            }
        }
    }
    let goaway = raw.drain(Duration::from_secs(1)).await;
    let server_resets = raw
        .seen
        .iter()
        .filter(|f| f.kind == h2raw::RST_STREAM)
        .count();
    // Redis runs what was queued once the pause ends.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let lookups = edge.redis.calls("get") - before;
    println!(
        "{opened} streams opened, {server_resets} reset by the gateway, GOAWAY {goaway:?}, \
         {lookups} session lookups"
    );
    assert!(server_resets > 0, "the gateway reset no stream");
    assert!(
        lookups <= 8,
        "{lookups} session lookups from one connection allowed 8 streams in flight"
    );
    edge.still_serves("streams the server was made to reset");
}

/// What the echo upstream says it received: method, target, body length
/// and every header in order but `te`.
fn upstream_saw(echo: &[u8]) -> (String, String, u64, Vec<(String, String)>) {
    let doc: serde_json::Value = serde_json::from_slice(echo).expect("echo");
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let headers = doc["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .map(|p| (text(&p[0]), text(&p[1])))
        .filter(|(name, _)| name != "te")
        .collect();
    (
        text(&doc["method"]),
        text(&doc["target"]),
        doc["body_bytes"].as_u64().unwrap_or_default(),
        headers,
    )
}

/// The lean engine and the full proxy (the same request with `te:
/// trailers`, which the lean engine leaves to it) send the upstream the same
/// request: method, target, body and every header, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_send_the_upstream_the_same_request_for_a_stream() {
    let edge = start();
    let cookie = alice_cookie();
    let mut raw = edge.connect().await;
    let mut seen = Vec::new();
    for te in [None, Some(("te", "trailers"))] {
        let mut extra = vec![
            ("cookie", "theme=dark"),
            ("x-user-id", "spoofed"),
            ("x-forwarded-for", "198.51.100.7"),
            ("accept", "text/html"),
        ];
        extra.extend(te);
        let mut fields = served_with(&cookie, &extra);
        fields[3] = (":path", "/app/./x/../y?q=1&r=%20");
        let id = raw.request(&fields, false).await;
        let (outcome, body) = raw.response(id).await;
        assert_eq!(outcome, Outcome::Status(200), "te: {te:?}");
        seen.push(upstream_saw(&body));
    }
    assert_eq!(seen[0], seen[1]);
    let headers = &seen[0].3;
    assert!(
        headers.contains(&("x-user-id".to_owned(), "1001".to_owned())),
        "{headers:?}"
    );
    assert!(!headers.iter().any(|(_, v)| v == "spoofed"), "{headers:?}");
    // A POST with a small body: read whole by the lean path, streamed by
    // the full proxy; the upstream gets the same head and the same body.
    let mut posted = Vec::new();
    for te in [None, Some(("te", "trailers"))] {
        let mut extra = vec![("content-length", "11"), ("content-type", "text/plain")];
        extra.extend(te);
        let mut fields = served_with(&cookie, &extra);
        fields[0] = (":method", "POST");
        let id = raw.request(&fields, true).await;
        raw.frame(h2raw::DATA, END_STREAM, id, b"hello world").await;
        let (outcome, body) = raw.response(id).await;
        assert_eq!(outcome, Outcome::Status(200), "te: {te:?}");
        posted.push(upstream_saw(&body));
    }
    assert_eq!(posted[0], posted[1]);
    assert_eq!(posted[0].2, 11);
    // HEAD on the lean path: the status, and no body.
    let mut fields = served_with(&cookie, &[]);
    fields[0] = (":method", "HEAD");
    let id = raw.request(&fields, false).await;
    let (outcome, body) = raw.response(id).await;
    assert_eq!(outcome, Outcome::Status(200));
    assert!(body.is_empty(), "{body:?}");
}
