//! TLS to upstreams, against upstreams that speak only TLS (certificates made
//! in the test): verified against the configured CA for the `sni` name on
//! both engines, refused for an unknown CA or another name, mTLS, HTTP/2 to
//! the upstream, health checks over TLS, and `check`'s refusals.

mod support;

use std::path::Path;
use std::process::Command;

use support::tls::{certificate, CertFiles};
use support::tls_upstream::TlsUpstream;
use support::{get, raw_request, RedisServer, TestGateway, ALICE, ALICE_KEY};

fn config(redis: &str, upstream: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{redis}"

[session]
secrets = ["fixture-secret-current"]

[identity.headers]
"X-User-Id" = "user.id"

[[upstream]]
name = "app"
{upstream}

[[route]]
path_prefix = "/"
upstream = "app"
"#
    )
}

fn upstream_keys(addr: std::net::SocketAddr, keys: &str) -> String {
    format!("addrs = [\"{addr}\"]\ntls = true\n{keys}")
}

struct Setup {
    _redis: RedisServer,
    gateway: TestGateway,
}

fn start(upstream: &str) -> Setup {
    let redis = RedisServer::start();
    let gateway = TestGateway::start(&config(&redis.url(), upstream));
    use redis::Commands;
    let _: () = redis
        .conn()
        .set_ex(ALICE_KEY, r#"{"user":{"id":"1001"}}"#, 600)
        .expect("SET alice");
    Setup {
        _redis: redis,
        gateway,
    }
}

/// A GET (the lean path) and a POST with a body (the full proxy).
fn both_engines(s: &Setup) -> [support::Response; 2] {
    let lean = get(s.gateway.addr, "/app", &[("Cookie", ALICE)]);
    let full = raw_request(
        s.gateway.addr,
        format!(
            "POST /app HTTP/1.1\r\nHost: localhost\r\nCookie: {ALICE}\r\n\
             Content-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .unwrap_or_else(|| panic!("no response:\n{}", s.gateway.log()));
    [lean, full]
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_tls_upstream_is_verified_against_its_ca_on_both_engines() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = certificate(dir.path(), "app", &["app.test"], false);
    let stranger = certificate(dir.path(), "stranger", &["app.test"], false);
    let upstream = TlsUpstream::start(&app, false, None);

    // The configured CA: served, the session enforced, identity injected.
    let s = start(&upstream_keys(
        upstream.addr,
        &format!("sni = \"app.test\"\nca = \"{}\"", path(&app.cert)),
    ));
    for (engine, response) in ["lean", "full"].iter().zip(both_engines(&s)) {
        assert_eq!(response.status, 200, "{engine}: {}", response.body);
        assert_eq!(response.echoed("x-user-id"), ["1001"], "{engine}");
        let doc: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(doc["version"], "1.1", "{engine}");
    }
    let unauthenticated = get(s.gateway.addr, "/app", &[]);
    assert_eq!(unauthenticated.status, 401);
    // Kept connections are reused: a second round makes no new handshake
    // the upstream refuses, and every request arrives.
    let before = upstream.requests();
    both_engines(&s);
    assert_eq!(upstream.requests(), before + 2);
    assert_eq!(upstream.refused(), 0);
    drop(s);

    // Another CA, the system roots, another name: refused, nothing arrives.
    for keys in [
        format!("sni = \"app.test\"\nca = \"{}\"", path(&stranger.cert)),
        "sni = \"app.test\"".to_owned(),
        format!("sni = \"other.test\"\nca = \"{}\"", path(&app.cert)),
    ] {
        let s = start(&upstream_keys(upstream.addr, &keys));
        let before = upstream.requests();
        for (engine, response) in ["lean", "full"].iter().zip(both_engines(&s)) {
            assert_eq!(response.status, 502, "{keys} {engine}: {}", response.body);
        }
        assert_eq!(upstream.requests(), before, "{keys}: a request arrived");
        assert!(!s.gateway.log().contains("panicked"), "{}", s.gateway.log());
    }

    // insecure_skip_verify accepts any certificate, and `check` warns.
    let keys = format!(
        "sni = \"other.test\"\nca = \"{}\"\ninsecure_skip_verify = true",
        path(&stranger.cert)
    );
    let s = start(&upstream_keys(upstream.addr, &keys));
    for (engine, response) in ["lean", "full"].iter().zip(both_engines(&s)) {
        assert_eq!(response.status, 200, "{engine}: {}", response.body);
    }
    let (ok, text) = check(
        &config("redis://127.0.0.1:1", &upstream_keys(upstream.addr, &keys)),
        dir.path(),
    );
    assert!(ok, "{text}");
    assert!(text.contains("insecure_skip_verify"), "{text}");
}

#[test]
fn a_client_certificate_is_presented_when_configured() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = certificate(dir.path(), "app", &["app.test"], false);
    let client = certificate(dir.path(), "client", &["gateway.test"], false);
    let upstream = TlsUpstream::start(&app, false, Some(&client.cert));
    let ca = format!("sni = \"app.test\"\nca = \"{}\"", path(&app.cert));

    let with = format!(
        "{ca}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        path(&client.cert),
        path(&client.key)
    );
    let s = start(&upstream_keys(upstream.addr, &with));
    for (engine, response) in ["lean", "full"].iter().zip(both_engines(&s)) {
        assert_eq!(response.status, 200, "{engine}: {}", response.body);
        let doc: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(doc["client_cert"], true, "{engine}");
    }
    drop(s);

    let s = start(&upstream_keys(upstream.addr, &ca));
    let before = upstream.requests();
    for (engine, response) in ["lean", "full"].iter().zip(both_engines(&s)) {
        assert_eq!(response.status, 502, "{engine}: {}", response.body);
    }
    assert_eq!(upstream.requests(), before);
}

#[test]
fn http_2_to_an_upstream_that_speaks_only_http_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = certificate(dir.path(), "app", &["grpc.test"], false);
    let upstream = TlsUpstream::start(&app, true, None);
    let keys = format!(
        "sni = \"grpc.test\"\nca = \"{}\"\nh2 = true",
        path(&app.cert)
    );
    let s = start(&upstream_keys(upstream.addr, &keys));
    for (engine, response) in ["get", "post"].iter().zip(both_engines(&s)) {
        assert_eq!(response.status, 200, "{engine}: {}", response.body);
        let doc: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        assert_eq!(doc["version"], "2", "{engine}");
        assert_eq!(response.echoed("x-user-id"), ["1001"], "{engine}");
    }
    assert_eq!(get(s.gateway.addr, "/app", &[]).status, 401);
}

#[test]
fn health_checks_use_the_upstreams_tls_settings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = certificate(dir.path(), "app", &["app.test"], false);
    let stranger = certificate(dir.path(), "stranger", &["app.test"], false);
    let upstream = TlsUpstream::start(&app, false, None);
    let health = "health_check = { path = \"/healthz\", interval = \"100ms\" }";

    // Verified: the checks arrive as requests over TLS.
    let keys = format!("sni = \"app.test\"\nca = \"{}\"\n{health}", path(&app.cert));
    let s = start(&upstream_keys(upstream.addr, &keys));
    assert_eq!(
        get(s.gateway.addr, "/app", &[("Cookie", ALICE)]).status,
        200
    );
    let before = upstream.requests();
    wait_for(
        || upstream.requests() >= before + 2,
        "health checks to arrive",
    );
    assert!(!s.gateway.log().contains("failed its health check"));
    drop(s);

    // A certificate from an unknown CA fails them.
    let keys = format!(
        "sni = \"app.test\"\nca = \"{}\"\n{health}",
        path(&stranger.cert)
    );
    let s = start(&upstream_keys(upstream.addr, &keys));
    assert_eq!(
        get(s.gateway.addr, "/app", &[("Cookie", ALICE)]).status,
        502
    );
    wait_for(
        || s.gateway.log().contains("failed its health check"),
        "the health check to fail",
    );
}

fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "waited for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn check(config: &str, dir: &Path) -> (bool, String) {
    let path = dir.join("check.toml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(support::gateway::binary())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_refuses_tls_upstreams_that_would_not_be_verified_or_cannot_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app: CertFiles = certificate(dir.path(), "app", &["app.test"], false);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let ca = format!("ca = \"{}\"", path(&app.cert));
    let cases = [
        // An IP address and no sni: Pingora would verify nothing.
        (
            "addrs = [\"127.0.0.1:8443\"]\ntls = true".to_owned(),
            "upstream[0].tls",
            "needs `sni`",
        ),
        (
            format!("addrs = [\"127.0.0.1:8443\"]\ntls = true\nsni = \"app.test\"\nca = \"{}\"", path(&dir.path().join("missing.pem"))),
            "upstream[0].ca",
            "cannot read",
        ),
        (
            format!("addrs = [\"127.0.0.1:8443\"]\ntls = true\nsni = \"app.test\"\nca = \"{}\"", path(&garbage)),
            "upstream[0].ca",
            "no certificate",
        ),
        (
            format!("addrs = [\"127.0.0.1:8443\"]\ntls = true\nsni = \"app.test\"\n{ca}\nclient_cert = \"{}\"", path(&app.cert)),
            "upstream[0].client_key",
            "client_cert needs client_key",
        ),
        (
            format!("addrs = [\"127.0.0.1:8443\"]\ntls = true\nsni = \"app.test\"\n{ca}\nclient_cert = \"{}\"\nclient_key = \"{}\"", path(&app.cert), path(&garbage)),
            "upstream[0].client_cert",
            "garbage.pem",
        ),
        (
            "addrs = [\"127.0.0.1:8443\"]\nh2 = true".to_owned(),
            "upstream[0].h2",
            "only applies with tls = true",
        ),
        (
            "addrs = [\"127.0.0.1:8443\"]\nsni = \"app.test\"".to_owned(),
            "upstream[0].sni",
            "only applies with tls = true",
        ),
    ];
    for (keys, key, why) in cases {
        let (ok, text) = check(&config("redis://127.0.0.1:1", &keys), dir.path());
        assert!(!ok, "{keys}: accepted\n{text}");
        assert!(text.contains(key) && text.contains(why), "{keys}:\n{text}");
        assert!(text.contains("check.toml:"), "{keys}: no line\n{text}");
    }
    // A DNS name in addrs is the name verified when sni is not set.
    let (ok, text) = check(
        &config(
            "redis://127.0.0.1:1",
            &format!("addrs = [\"localhost:8443\"]\ntls = true\n{ca}"),
        ),
        dir.path(),
    );
    assert!(ok, "{text}");
}
