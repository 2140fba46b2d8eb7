//! Request canonicalisation against the real gateway and an upstream that
//! records the exact request-target and headers it receives. For each class
//! of confusion (path spelling, case, `;` parameters, target forms, hosts) the
//! upstream either never sees the request, or sees the canonical form with the
//! identity of a session that the protected route admits.

mod support;

use support::{raw_request, Response, Stack, ALICE};

/// An app-realistic layout: an admin vhost, `/admin/` for admins, `/app/` for
/// any session, `/api/` for GET and POST only, and everything else public.
fn setup(server_extra: &str, role: &str) -> Stack {
    let server_extra = server_extra.to_owned();
    let stack = Stack::start(move |url, upstream| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1
{server_extra}

[redis]
url = "{url}"

[session]
secrets = ["fixture-secret-current"]

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Role" = "user.role"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
name = "admin-vhost"
host = "admin.test"
path_prefix = "/"
upstream = "app"
roles = ["admin"]

[[route]]
path_prefix = "/admin/"
upstream = "app"
roles = ["admin"]

[[route]]
path_prefix = "/app/"
upstream = "app"

[[route]]
path_prefix = "/api/"
upstream = "app"
methods = ["GET", "POST"]

[[route]]
name = "site"
path_prefix = "/"
upstream = "app"
access = "public"
"#
        )
    });
    stack.seed_alice(&format!(r#"{{"user":{{"id":"1001","role":"{role}"}}}}"#));
    stack
}

/// `METHOD target HTTP/1.1` with `Host: host` (none when empty) and the
/// session cookie when `cookie`.
fn send(s: &Stack, method: &str, target: &str, host: &str, cookie: bool) -> Option<Response> {
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    if !host.is_empty() {
        head.push_str(&format!("Host: {host}\r\n"));
    }
    if cookie {
        head.push_str(&format!("Cookie: {ALICE}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    raw_request(s.gateway.addr, head.as_bytes())
}

fn status(s: &Stack, target: &str, cookie: bool) -> u16 {
    send(s, "GET", target, "site.test", cookie).map_or(0, |r| r.status)
}

/// Asserts that `target` is forwarded and the upstream receives `want`.
fn forwarded_as(s: &Stack, target: &str, cookie: bool, want: &str) -> Response {
    let resp = send(s, "GET", target, "site.test", cookie).expect("a response");
    assert_eq!(resp.status, 200, "{target}: {}", resp.body);
    assert_eq!(resp.echoed_target(), want, "{target}");
    resp
}

#[test]
fn the_upstream_receives_the_path_the_route_was_chosen_on() {
    let s = setup("", "viewer");
    // Public to the gateway only as its normal form, and forwarded as that form.
    forwarded_as(&s, "//public/admin/secret", false, "/public/admin/secret");
    forwarded_as(
        &s,
        "/public/x/%2e%2e/y?q=%2e%2e",
        false,
        "/public/y?q=%2e%2e",
    );
    forwarded_as(&s, "/public/./a//b/", false, "/public/a/b/");
    forwarded_as(&s, "/caf%c3%a9", false, "/caf%C3%A9");
    forwarded_as(&s, "/%61pp-not/x", false, "/app-not/x");
    // Already normal: the bytes pass untouched, query included.
    forwarded_as(
        &s,
        "/public/a?x=/../admin&y=%2F",
        false,
        "/public/a?x=/../admin&y=%2F",
    );
    let before = s.upstream.requests();
    for target in [
        "//admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/.%2E/admin/",
        "/x/../app/",
        "/%61dmin/secret",
        "/%61pp/x",
    ] {
        assert_eq!(status(&s, target, false), 401, "{target}");
    }
    for target in [
        "/%c0%ae%c0%ae/admin/",
        "/admin%2fsecret",
        "/a%5c..%5cadmin/",
        "/a/%00",
        "/a%",
    ] {
        assert_eq!(status(&s, target, false), 400, "{target}");
    }
    assert_eq!(
        s.upstream.requests(),
        before,
        "a refused request reached the upstream"
    );

    // The access log shows the forwarded path.
    forwarded_as(&s, "/public/x/%2e%2e/logged", false, "/public/logged");
    let log = s
        .gateway
        .access_log_until(|l| l["path"] == "/public/logged");
    assert!(
        log.iter().any(|l| l["path"] == "/public/logged"),
        "access log: {log:?}"
    );
    // Forwarded lines show what the upstream got; refused ones what was sent.
    let forwarded = log.iter().filter(|l| l["decision"] == "public");
    assert!(!forwarded.clone().any(|l| l["path"]
        .as_str()
        .is_some_and(|p| p.contains("%2e") || p.contains("//"))));
    assert!(forwarded.count() >= 7);
}

#[test]
fn case_variants_need_what_the_case_insensitive_reading_needs() {
    let s = setup("", "viewer");
    let before = s.upstream.requests();
    for target in [
        "/ADMIN/secret",
        "/Admin/secret",
        "/aDmIn/",
        "/APP/x",
        "/%41PP/x",
    ] {
        assert_eq!(status(&s, target, false), 401, "{target}");
    }
    for target in ["/ADMIN/secret", "/Admin/secret", "/ADMIN"] {
        assert_eq!(status(&s, target, true), 403, "{target}");
    }
    assert_eq!(s.upstream.requests(), before);
    // A viewer may use the app under any spelling; the upstream sees who.
    let resp = forwarded_as(&s, "/APP/x", true, "/APP/x");
    assert_eq!(resp.echoed("x-user-id"), ["1001"]);

    // An admin gets through, to the route of the exact reading.
    s.seed_alice(r#"{"user":{"id":"1","role":"admin"}}"#);
    // The cached viewer session is dropped when Redis reports the change,
    // a moment after the SET.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while status(&s, "/ADMIN/x", true) != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new role never applied"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let resp = forwarded_as(&s, "/ADMIN/secret", true, "/ADMIN/secret");
    assert_eq!(resp.echoed("x-user-role"), ["admin"]);
    let log = s.gateway.access_log_until(|l| l["path"] == "/ADMIN/secret");
    let last = log
        .iter()
        .rev()
        .find(|l| l["path"] == "/ADMIN/secret")
        .unwrap();
    assert_eq!(last["route"], "site", "{last}");
}

#[test]
fn only_origin_form_and_http_absolute_form_are_accepted() {
    let s = setup("", "viewer");
    for (method, target) in [
        ("GET", "admin/secret"),
        ("GET", "x:/admin/"),
        ("GET", "https://admin.test/"),
        ("GET", "ftp://admin.test/x"),
        ("OPTIONS", "*"),
        ("GET", "http:/admin/"),
    ] {
        let resp = send(&s, method, target, "site.test", true);
        assert_eq!(resp.map(|r| r.status), Some(400), "{method} {target}");
    }
    // CONNECT is refused one way or another, and never forwarded.
    let resp = send(&s, "CONNECT", "admin.test:443", "admin.test:443", true);
    assert!(resp.is_none_or(|r| r.status >= 400));
    assert_eq!(s.upstream.requests(), 0);

    // Absolute-form routes on its authority.
    assert_eq!(
        send(&s, "GET", "http://admin.test/x", "admin.test", false).map(|r| r.status),
        Some(401)
    );
    assert_eq!(
        send(
            &s,
            "GET",
            "http://ADMIN.test:8080/x",
            "ADMIN.test:8080",
            true
        )
        .map(|r| r.status),
        Some(403)
    );
    // A Host that disagrees with the authority, or none on HTTP/1.1: 400.
    for host in ["site.test", ""] {
        let resp = send(&s, "GET", "http://admin.test/x", host, false);
        assert_eq!(resp.map(|r| r.status), Some(400), "Host {host:?}");
    }
    // HTTP/1.0 may omit Host; the authority is then the host.
    let resp = raw_request(s.gateway.addr, b"GET http://admin.test/x HTTP/1.0\r\n\r\n");
    assert_eq!(resp.map(|r| r.status), Some(401));
    let resp = raw_request(s.gateway.addr, b"GET /x HTTP/1.0\r\n\r\n");
    assert_eq!(resp.map(|r| r.status), Some(400), "no host at all");
    assert_eq!(s.upstream.requests(), 0);

    // Forwarded in origin-form, with the authority as Host.
    let resp = send(&s, "GET", "http://site.test/a?b", "site.test", false).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echoed_target(), "/a?b");
    assert_eq!(resp.echoed("host"), ["site.test"]);
}

#[test]
fn hosts_are_normalised_before_routing_and_forwarded_normalised() {
    let s = setup("", "viewer");
    for host in [
        "admin.test.",
        "ADMIN.TEST",
        "Admin.Test.:8443",
        "admin.test:",
    ] {
        let resp = send(&s, "GET", "/x", host, false);
        assert_eq!(resp.map(|r| r.status), Some(401), "Host {host:?}");
    }
    for host in [
        "admin.test..",
        "admin .test",
        "user@admin.test",
        "admin.test:80:80",
        "admin.test:x",
        "[::1",
        "adm%69n.test",
    ] {
        let resp = send(&s, "GET", "/x", host, false);
        assert_eq!(resp.map(|r| r.status), Some(400), "Host {host:?}");
    }
    let two = b"GET /x HTTP/1.1\r\nHost: site.test\r\nHost: admin.test\r\n\r\n";
    assert_eq!(
        raw_request(s.gateway.addr, two).map(|r| r.status),
        Some(400)
    );
    let resp = raw_request(
        s.gateway.addr,
        b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.map(|r| r.status), Some(400), "HTTP/1.1 without Host");
    assert_eq!(s.upstream.requests(), 0);

    let resp = send(&s, "GET", "/x", "Site.TEST.:8080", false).unwrap();
    assert_eq!(resp.status, 200);
    // Routed on the normalised host; forwarded with the client's port, which
    // apps build absolute URLs and redirects from.
    assert_eq!(resp.echoed("host"), ["site.test:8080"]);
    let resp = send(&s, "GET", "/x", "[::1]:8080", false).unwrap();
    assert_eq!(resp.echoed("host"), ["[::1]:8080"]);
}

#[test]
fn path_parameters_are_refused_by_default() {
    let s = setup("", "admin");
    for target in [
        "/admin;x=1/secret",
        "/public/..;/admin/",
        "/app;jsessionid=1/x",
        "/x;",
    ] {
        assert_eq!(status(&s, target, true), 400, "{target}");
    }
    // An encoded `;` is data, not a parameter.
    forwarded_as(&s, "/a%3bb", false, "/a%3Bb");
    assert_eq!(s.upstream.requests(), 1);
}

#[test]
fn allowed_path_parameters_must_satisfy_the_reading_without_them() {
    let s = setup(r#"path_parameters = "allow""#, "viewer");
    let before = s.upstream.requests();
    // Tomcat and Jetty read these as /admin/secret and /admin/.
    for target in ["/admin;x=1/secret", "/public/..;/admin/", "/ADMIN;a/x"] {
        assert_eq!(status(&s, target, false), 401, "{target}");
        assert_eq!(status(&s, target, true), 403, "{target}");
    }
    assert_eq!(s.upstream.requests(), before);
    // Java sessions in the path keep working, forwarded as sent.
    let resp = forwarded_as(&s, "/app/x;jsessionid=1", true, "/app/x;jsessionid=1");
    assert_eq!(resp.echoed("x-user-id"), ["1001"]);
    forwarded_as(
        &s,
        "/shop;jsessionid=2/item",
        false,
        "/shop;jsessionid=2/item",
    );
}

#[test]
fn strict_mode_refuses_what_it_would_otherwise_rewrite() {
    let s = setup(r#"non_canonical_paths = "reject""#, "viewer");
    for target in [
        "//public/x",
        "/a/./b",
        "/a/../b",
        "/%61",
        "/caf%c3%a9",
        "/a/",
    ] {
        let want = if target == "/a/" { 200 } else { 400 };
        assert_eq!(status(&s, target, false), want, "{target}");
    }
    forwarded_as(&s, "/a/b?x=/../y", false, "/a/b?x=/../y");
    forwarded_as(&s, "/caf%C3%A9", false, "/caf%C3%A9");
}

#[test]
fn headers_that_override_the_path_or_method_never_reach_the_app() {
    let s = setup("", "viewer");
    let mut head = String::from("POST /api/x HTTP/1.1\r\nHost: site.test\r\n");
    head.push_str(&format!("Cookie: {ALICE}\r\nContent-Length: 0\r\n"));
    for name in [
        "X-Original-URL",
        "x-rewrite-url",
        "X-Override-URL",
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    ] {
        head.push_str(&format!("{name}: DELETE /admin/secret\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let resp = raw_request(s.gateway.addr, head.as_bytes()).expect("a response");
    assert_eq!(resp.status, 200, "{}", resp.body);
    let echoed: Vec<String> = resp.echoed_headers().into_iter().map(|(n, _)| n).collect();
    assert!(
        !echoed
            .iter()
            .any(|n| n.to_ascii_lowercase().contains("-url")
                || n.to_ascii_lowercase().contains("method")),
        "{echoed:?}"
    );
}

#[test]
fn routes_serve_only_their_methods_and_never_trace_by_default() {
    let s = setup("", "viewer");
    let resp = send(&s, "DELETE", "/api/x", "site.test", true).unwrap();
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET, POST"));
    // The stricter reading's methods apply too.
    let resp = send(&s, "DELETE", "/API/x", "site.test", true).unwrap();
    assert_eq!(resp.status, 405);
    for target in ["/", "/app/x", "/api/x"] {
        let resp = send(&s, "TRACE", target, "site.test", true).unwrap();
        assert_eq!(resp.status, 405, "TRACE {target}");
    }
    assert_eq!(s.upstream.requests(), 0);
    let resp = send(&s, "GET", "/api/x", "site.test", true).unwrap();
    assert_eq!(resp.status, 200);
}

/// A route's `host` is kept in the form request hosts are compared in: one
/// trailing dot and the case do not matter, so `host = "Admin.Test."` is the
/// vhost of `admin.test` and `admin.test.` alike (not a route nothing reaches,
/// letting its requests fall through to the public catch-all).
#[test]
fn a_route_host_written_with_a_trailing_dot_matches_with_or_without_it() {
    let s = Stack::start(|url, upstream| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"

[session]
secrets = ["fixture-secret-current"]

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
name = "admin-vhost"
host = "Admin.Test."
path_prefix = "/"
upstream = "app"

[[route]]
name = "site"
path_prefix = "/"
upstream = "app"
access = "public"
"#
        )
    });
    for host in ["admin.test", "admin.test.", "ADMIN.test.:8443"] {
        let resp = send(&s, "GET", "/x", host, false);
        assert_eq!(resp.map(|r| r.status), Some(401), "Host {host:?}");
    }
    assert_eq!(s.upstream.requests(), 0);
    let resp = send(&s, "GET", "/x", "site.test", false);
    assert_eq!(resp.map(|r| r.status), Some(200));
}
