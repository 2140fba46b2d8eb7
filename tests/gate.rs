//! The gate between client and app, on both forwarding engines: the headers
//! the gateway owns in every spelling, the forwarding headers of untrusted
//! and trusted peers, the forwarded host and port, the response fields the
//! gateway must not relay, pipelined requests and HTTP/1.0 clients. Each
//! request is sent once on the lean path (no body) and once forced through
//! the full proxy (a body), and the upstream must see the same head.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use support::scripted::{Script, ScriptedUpstream};
use support::{Client, Response, Stack, TestGateway, ALICE};

fn config(url: &str, upstream: SocketAddr, trusted: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"

[session]
secrets = ["fixture-secret-current"]

[rate_limit]
trusted_proxies = [{trusted}]

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
path_prefix = "/"
upstream = "app"
"#
    )
}

fn stack(trusted: &str) -> Stack {
    let stack = Stack::start(|url, upstream| config(url, upstream, trusted));
    stack.seed_alice(r#"{"user":{"id":"1001","role":"viewer"}}"#);
    stack
}

/// The request once without a body (lean path) and once with one (full
/// proxy); the echo upstream's view of each.
fn both_engines(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> [Response; 2] {
    let send = |body: bool| {
        let mut request = format!("{} {path} HTTP/1.1\r\n", if body { "POST" } else { "GET" });
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if body {
            request.push_str("Content-Length: 4\r\n\r\nbody");
        } else {
            request.push_str("\r\n");
        }
        let mut client = Client::connect(addr);
        client.write(request.as_bytes()).expect("send");
        let response = client.read().expect("a response");
        assert_eq!(response.status, 200, "{request}: {}", response.body);
        response
    };
    [send(false), send(true)]
}

/// The echoed head as a sorted list of (lower-case name, value), without
/// the fields that frame a body.
fn head_of(response: &Response) -> Vec<(String, String)> {
    let mut head: Vec<(String, String)> = response
        .echoed_headers()
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .filter(|(n, _)| n != "content-length")
        .collect();
    head.sort();
    head
}

/// Every spelling of the names the gateway owns that a client may try.
const SPOOFED: &[(&str, &str)] = &[
    ("X-Original-URL", "/admin/secret"),
    ("X_Original_URL", "/admin/secret"),
    ("x_original_uri", "/admin/secret"),
    ("X-Rewrite-URL", "/admin/secret"),
    ("X_HTTP_Method_Override", "DELETE"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X_Method_Override", "DELETE"),
    ("X-Forwarded-For", "10.9.9.9"),
    ("X_Forwarded_For", "10.9.9.9"),
    ("X_Forwarded_Host", "evil.test"),
    ("X-Forwarded-Host", "evil.test"),
    ("X_Forwarded_Proto", "https"),
    ("X-Forwarded-Proto", "https"),
    ("Forwarded", "for=10.9.9.9;proto=https"),
    ("X-Real-IP", "10.9.9.9"),
    ("X_Real_IP", "10.9.9.9"),
    ("True-Client-IP", "10.9.9.9"),
    ("Client-IP", "10.9.9.9"),
    ("X-Client-IP", "10.9.9.9"),
    ("CF-Connecting-IP", "10.9.9.9"),
    ("X-Forwarded-Port", "443"),
    ("X_Forwarded_Port", "443"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Server", "evil.test"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Client-Cert", "Hash=abc;Subject=\"CN=admin\""),
    ("X-User-Id", "1"),
    ("X_User_Id", "1"),
    ("x-user_role", "admin"),
];

#[test]
fn an_untrusted_client_reaches_the_app_with_none_of_the_owned_headers_on_either_engine() {
    let s = stack("");
    let port = s.gateway.addr.port();
    for (path, cookie) in [("/public/x", None), ("/app", Some(ALICE))] {
        let host = format!("127.0.0.1:{port}");
        let mut headers: Vec<(&str, &str)> = vec![("Host", &host)];
        headers.extend_from_slice(SPOOFED);
        if let Some(cookie) = cookie {
            headers.push(("Cookie", cookie));
        }
        let [lean, full] = both_engines(s.gateway.addr, path, &headers);
        for (engine, response) in [("lean", &lean), ("full", &full)] {
            let head = head_of(response);
            let names: Vec<&str> = head.iter().map(|(n, _)| n.as_str()).collect();
            for (spoofed, _) in SPOOFED {
                let folded = spoofed.to_ascii_lowercase().replace('_', "-");
                let survivors: Vec<_> = head
                    .iter()
                    .filter(|(n, v)| n.replace('_', "-") == folded && v != "127.0.0.1")
                    .filter(|(n, v)| !(n == "x-user-id" && v == "1001"))
                    .filter(|(n, v)| !(n == "x-user-role" && v == "viewer"))
                    .filter(|(n, v)| !(n == "x-forwarded-proto" && v == "http"))
                    .filter(|(n, v)| !(n == "x-forwarded-host" && *v == host))
                    .collect();
                assert!(
                    survivors.is_empty(),
                    "{engine} {path}: {spoofed} reached the app: {survivors:?} in {names:?}"
                );
            }
            let value = |name: &str| {
                head.iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
            };
            assert_eq!(value("x-forwarded-for"), ["127.0.0.1"], "{engine} {path}");
            assert_eq!(value("x-forwarded-proto"), ["http"], "{engine} {path}");
            assert_eq!(
                value("x-forwarded-host"),
                [host.as_str()],
                "{engine} {path}"
            );
            assert_eq!(value("host"), [host.as_str()], "{engine} {path}");
            assert!(value("x-real-ip").is_empty(), "{engine} {path}");
            if cookie.is_some() {
                assert_eq!(value("x-user-id"), ["1001"], "{engine} {path}");
                assert_eq!(value("x-user-role"), ["viewer"], "{engine} {path}");
            } else {
                assert!(value("x-user-id").is_empty(), "{engine} {path}");
            }
        }
        assert_eq!(
            head_of(&lean),
            head_of(&full),
            "the engines forward one head"
        );
    }
}

#[test]
fn a_trusted_proxy_keeps_its_canonical_forwarding_headers_but_never_other_spellings() {
    let s = stack(r#""127.0.0.1/32""#);
    let headers = [
        ("Host", "site.test"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("X-Real-IP", "203.0.113.9"),
        ("X-Forwarded-Port", "443"),
        ("X_Forwarded_For", "10.9.9.9"),
        ("X_Real_IP", "10.9.9.9"),
        ("X_Forwarded_Proto", "http"),
        ("X-Original-URL", "/admin/secret"),
    ];
    let [lean, full] = both_engines(s.gateway.addr, "/public/x", &headers);
    for response in [&lean, &full] {
        let head = head_of(response);
        let value = |name: &str| {
            head.iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(value("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
        assert_eq!(value("x-forwarded-proto"), ["https"]);
        assert_eq!(value("x-real-ip"), ["203.0.113.9"]);
        assert_eq!(value("x-forwarded-port"), ["443"]);
        assert!(head.iter().all(|(n, _)| !n.contains('_')), "{head:?}");
        assert!(value("x-original-url").is_empty());
    }
    assert_eq!(head_of(&lean), head_of(&full));
}

#[test]
fn the_app_is_sent_the_canonical_host_with_the_clients_port() {
    let s = stack("");
    for (sent, want) in [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("Site.TEST.:8443", "site.test:8443"),
        ("site.test:0443", "site.test:443"),
        ("site.test", "site.test"),
        ("site.test:", "site.test"),
        ("[::1]:9000", "[::1]:9000"),
    ] {
        let [lean, full] = both_engines(s.gateway.addr, "/public/x", &[("Host", sent)]);
        for response in [&lean, &full] {
            assert_eq!(response.echoed("host"), [want], "Host: {sent}");
            assert_eq!(response.echoed("x-forwarded-host"), [want], "Host: {sent}");
        }
        assert_eq!(head_of(&lean), head_of(&full), "Host: {sent}");
    }
}

fn scripted(
    scripts: &[(&str, &str, bool)],
) -> (support::RedisServer, ScriptedUpstream, TestGateway) {
    let redis = support::RedisServer::start();
    let upstream = ScriptedUpstream::start(
        scripts
            .iter()
            .map(|(path, bytes, close)| {
                (
                    path.to_string(),
                    Script {
                        bytes: bytes.as_bytes().to_vec(),
                        close: *close,
                    },
                )
            })
            .collect::<HashMap<_, _>>(),
    );
    let gateway = TestGateway::start(&config(&redis.url(), upstream.addr, ""));
    (redis, upstream, gateway)
}

/// One request on its own connection, on the lean path or the full proxy,
/// and everything the client reads until the gateway closes or answers.
fn exchange(
    addr: SocketAddr,
    path: &str,
    full: bool,
    version: &str,
    extra: &str,
) -> Option<Response> {
    let mut client = Client::connect(addr);
    let request = if full {
        format!("POST {path} {version}\r\nHost: site.test\r\n{extra}Content-Length: 1\r\n\r\nx")
    } else {
        format!("GET {path} {version}\r\nHost: site.test\r\n{extra}\r\n")
    };
    client.write(request.as_bytes())?;
    client.read()
}

#[test]
fn hop_by_hop_response_fields_are_not_relayed_by_either_engine() {
    let (_redis, _upstream, gateway) = scripted(&[(
        "/public/hop",
        "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nConnection: X-Other\r\n\
         X-Secret: s\r\nX-Other: o\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
         Upgrade: h2c\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nok",
        false,
    )]);
    for full in [false, true] {
        let response =
            exchange(gateway.addr, "/public/hop", full, "HTTP/1.1", "").expect("response");
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "ok");
        for name in [
            "x-secret",
            "x-other",
            "keep-alive",
            "proxy-connection",
            "upgrade",
        ] {
            assert_eq!(response.header(name), None, "full={full}: {name} relayed");
        }
        assert_eq!(response.header("x-kept"), Some("k"), "full={full}");
        assert_eq!(
            response.header("connection"),
            Some("keep-alive"),
            "full={full}"
        );
    }
}

#[test]
fn a_response_framed_two_ways_is_answered_502_by_either_engine() {
    let chunked = "\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    let cases = [
        ("/public/te-gzip", format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip{chunked}")),
        (
            "/public/te-identity",
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity{chunked}"),
        ),
        (
            "/public/te-cl",
            format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2{chunked}"),
        ),
        (
            "/public/cl-cl",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!".to_owned(),
        ),
        ("/public/fine", format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked{chunked}")),
    ];
    let scripts: Vec<(&str, &str, bool)> =
        cases.iter().map(|(p, b)| (*p, b.as_str(), true)).collect();
    let (_redis, _upstream, gateway) = scripted(&scripts);
    for (path, _) in &cases {
        for full in [false, true] {
            let response = exchange(gateway.addr, path, full, "HTTP/1.1", "").expect("response");
            if *path == "/public/fine" || *path == "/public/te-cl" {
                // Both lengths: the chunked framing wins and the length is
                // dropped before relaying (RFC 9112 6.3), so the client reads
                // one framing.
                assert_eq!(
                    (response.status, response.body.as_str()),
                    (200, "ok"),
                    "full={full}"
                );
                assert_eq!(response.header("content-length"), None, "full={full}");
            } else {
                assert_eq!(response.status, 502, "full={full} {path}: {response:?}");
            }
        }
    }
    // And the gateway serves on.
    let response =
        exchange(gateway.addr, "/public/other", false, "HTTP/1.1", "").expect("response");
    assert_eq!(response.status, 200);
}

#[test]
fn an_http_1_0_client_gets_a_body_delimited_by_the_close_from_either_engine() {
    let (_redis, _upstream, gateway) = scripted(&[
        (
            "/public/chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            false,
        ),
        ("/public/close", "HTTP/1.1 200 OK\r\n\r\nhello", true),
    ]);
    for path in ["/public/chunked", "/public/close"] {
        for full in [false, true] {
            let mut client = Client::connect(gateway.addr);
            let request = if full {
                format!("POST {path} HTTP/1.0\r\nHost: site.test\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx")
            } else {
                format!("GET {path} HTTP/1.0\r\nHost: site.test\r\nConnection: keep-alive\r\n\r\n")
            };
            client.write(request.as_bytes()).expect("send");
            let all = String::from_utf8_lossy(&client.read_to_close()).into_owned();
            let (head, body) = all.split_once("\r\n\r\n").expect("a whole head");
            assert!(
                head.starts_with("HTTP/1.1 200"),
                "{path} full={full}: {all}"
            );
            assert!(
                !head.to_ascii_lowercase().contains("transfer-encoding"),
                "{path} full={full}: {head}"
            );
            assert_eq!(body, "hello", "{path} full={full}");
        }
    }
}

#[test]
fn pipelined_requests_are_served_in_order_on_either_engine() {
    let s = stack("");
    let addr = s.gateway.addr;
    let cases: [(&str, &[&str]); 3] = [
        (
            "GET /public/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /public/2 HTTP/1.1\r\nHost: a\r\n\r\nGET /public/3 HTTP/1.1\r\nHost: a\r\n\r\n",
            &["/public/1", "/public/2", "/public/3"],
        ),
        (
            "POST /public/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /public/2 HTTP/1.1\r\nHost: a\r\n\r\n",
            &["/public/1", "/public/2"],
        ),
        (
            "GET /public/1 HTTP/1.1\r\nHost: a\r\nConnection: x-hop\r\n\r\nPOST /public/2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nzGET /public/3 HTTP/1.1\r\nHost: a\r\n\r\n",
            &["/public/1", "/public/2", "/public/3"],
        ),
    ];
    for (bytes, targets) in cases {
        let mut client = Client::connect(addr);
        client.write(bytes.as_bytes()).expect("send");
        for target in targets {
            let response = client
                .read()
                .unwrap_or_else(|| panic!("no response for {target} of {bytes:?}"));
            assert_eq!(response.status, 200, "{target}");
            assert_eq!(response.echoed_target(), *target, "{bytes:?}");
            assert_ne!(response.header("connection"), Some("close"), "{target}");
        }
        // The connection is still usable.
        let response = client
            .send("GET", "/public/after", &[])
            .expect("a later request");
        assert_eq!(response.echoed_target(), "/public/after");
    }
}

#[test]
fn the_keep_alive_limit_counts_requests_on_both_engines() {
    let s = Stack::start(|url, upstream| {
        config(url, upstream, "").replace("threads = 1", "threads = 1\nkeepalive_requests = 3")
    });
    for bodies in [
        [false, false, false],
        [false, true, false],
        [true, false, true],
    ] {
        let mut client = Client::connect(s.gateway.addr);
        for (i, body) in bodies.iter().enumerate() {
            let request = if *body {
                "POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz"
            } else {
                "GET /public/x HTTP/1.1\r\nHost: a\r\n\r\n"
            };
            client.write(request.as_bytes()).expect("send");
            let response = client
                .read()
                .unwrap_or_else(|| panic!("{bodies:?}: no response to request {}", i + 1));
            assert_eq!(response.status, 200);
            let close = response.header("connection") == Some("close");
            assert_eq!(close, i == 2, "{bodies:?}: request {}", i + 1);
        }
        assert!(
            client.read().is_none(),
            "{bodies:?}: the connection was kept"
        );
    }
}

#[test]
fn https_redirect_sends_every_plain_request_to_https_on_both_engines() {
    let s = Stack::start(|url, upstream| {
        config(url, upstream, "").replace(
            "threads = 1",
            "threads = 1\nhttps_redirect = true\nhsts = \"max-age=63072000\"",
        )
    });
    for (full, target, want) in [
        (false, "/public/x?y=1", "https://site.test/public/x?y=1"),
        (true, "/app/%61/../b", "https://site.test/app/b"),
        (false, "/nowhere", "https://site.test/nowhere"),
    ] {
        let mut client = Client::connect(s.gateway.addr);
        let request = if full {
            format!("POST {target} HTTP/1.1\r\nHost: Site.Test.:8080\r\nContent-Length: 1\r\n\r\nx")
        } else {
            format!("GET {target} HTTP/1.1\r\nHost: Site.Test.:8080\r\n\r\n")
        };
        client.write(request.as_bytes()).expect("send");
        let response = client.read().expect("a response");
        assert_eq!(response.status, 308, "{target}");
        assert_eq!(response.header("location"), Some(want), "{target}");
        // Never over plain HTTP (RFC 6797 8.1).
        assert_eq!(response.header("strict-transport-security"), None);
    }
    assert_eq!(
        s.upstream.requests(),
        0,
        "a redirected request reached the app"
    );
}

#[test]
fn https_redirect_trusts_a_trusted_proxys_https() {
    let s = Stack::start(|url, upstream| {
        config(url, upstream, r#""127.0.0.1/32""#)
            .replace("threads = 1", "threads = 1\nhttps_redirect = true")
    });
    let over_tls = support::get(
        s.gateway.addr,
        "/public/x",
        &[("Host", "site.test"), ("X-Forwarded-Proto", "https")],
    );
    assert_eq!(
        over_tls.status, 200,
        "a request the balancer took over TLS was sent round again"
    );
    let plain = support::get(
        s.gateway.addr,
        "/public/x",
        &[("Host", "site.test"), ("X-Forwarded-Proto", "http")],
    );
    assert_eq!(plain.status, 308);
    assert_eq!(plain.header("location"), Some("https://site.test/public/x"));
}
