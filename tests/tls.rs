//! TLS and HTTP/2 on the real gateway, with certificates made in the test
//! and curl as the client: the certificate is chosen by SNI (exact, wildcard,
//! default), sessions are enforced over HTTP/1.1 and HTTP/2 alike, a request
//! for a host the connection's certificate does not cover gets 421, and
//! `check` refuses certificates that would not serve.

mod support;

use std::path::Path;
use std::process::Command;

use support::tls::{certificate, curl, echoed, CertFiles};
use support::{EchoUpstream, RedisServer, TestGateway, ALICE, ALICE_KEY};

struct Tls {
    _redis: RedisServer,
    _upstream: EchoUpstream,
    gateway: TestGateway,
    _dir: tempfile::TempDir,
    a: CertFiles,
    b: CertFiles,
    d: CertFiles,
}

fn config(redis: &str, upstream: std::net::SocketAddr, certs: &[(&CertFiles, bool)]) -> String {
    let mut text = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{redis}"

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
"#
    );
    for (files, default) in certs {
        text.push_str(&format!(
            "\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\ndefault = {default}\n",
            files.cert.display(),
            files.key.display()
        ));
    }
    text
}

fn start(with_default: bool) -> Tls {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = certificate(dir.path(), "a", &["a.test"], false);
    let b = certificate(dir.path(), "b", &["*.b.test"], false);
    let d = certificate(dir.path(), "d", &["d.test"], false);
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let gateway = TestGateway::start(&config(
        &redis.url(),
        upstream.addr,
        &[(&a, false), (&b, false), (&d, with_default)],
    ));
    use redis::Commands;
    let _: () = redis
        .conn()
        .set_ex(ALICE_KEY, r#"{"user":{"id":"1001"}}"#, 600)
        .expect("SET alice");
    Tls {
        _redis: redis,
        _upstream: upstream,
        gateway,
        _dir: dir,
        a,
        b,
        d,
    }
}

#[test]
fn sni_picks_the_certificate_and_sessions_are_enforced_over_http_1_and_2() {
    let s = start(true);
    let addr = s.gateway.tls_addr();
    for (name, ca) in [("a.test", &s.a), ("x.b.test", &s.b), ("d.test", &s.d)] {
        for h2 in [false, true] {
            let want_version = if h2 { "2" } else { "1.1" };
            let open = curl(
                addr,
                name,
                "/app",
                Some(&ca.cert),
                h2,
                &["-H", &format!("Cookie: {ALICE}")],
            );
            assert_eq!(
                (open.status, open.version.as_str()),
                (200, want_version),
                "{name} h2={h2}: {open:?}"
            );
            assert_eq!(echoed(&open.body, "x-user-id"), ["1001"], "{name} h2={h2}");
            assert_eq!(
                echoed(&open.body, "x-forwarded-proto"),
                ["https"],
                "{name} h2={h2}"
            );
            assert_eq!(
                echoed(&open.body, "host"),
                [format!("{name}:{}", addr.port())],
                "{name} h2={h2}: the app is sent the host the client named"
            );
            let shut = curl(addr, name, "/app", Some(&ca.cert), h2, &[]);
            assert_eq!(shut.status, 401, "{name} h2={h2}: {shut:?}");
            // The certificate served is the one for the name: trusting
            // another one fails the handshake.
            let other = if name == "a.test" { &s.d } else { &s.a };
            let wrong = curl(addr, name, "/public/x", Some(&other.cert), h2, &[]);
            assert_eq!(
                wrong.status, 0,
                "{name} h2={h2}: served by the wrong certificate"
            );
        }
    }
    // An SNI no certificate covers, and no SNI at all (an address), get the
    // default certificate.
    // (curl cannot verify d.test's certificate for the name other.test.)
    let unknown = curl(
        addr,
        "other.test",
        "/public/x",
        None,
        false,
        &["-H", "Host: d.test"],
    );
    assert_eq!(unknown.status, 200, "{unknown:?}");
    let by_address = curl(addr, "127.0.0.1", "/public/x", None, true, &[]);
    assert_eq!(
        (by_address.status, by_address.version.as_str()),
        (200, "2"),
        "{by_address:?}"
    );
}

#[test]
fn without_a_default_certificate_an_unknown_or_missing_sni_is_refused() {
    let s = start(false);
    let addr = s.gateway.tls_addr();
    assert_eq!(
        curl(addr, "other.test", "/public/x", None, false, &[]).status,
        0
    );
    assert_eq!(
        curl(addr, "127.0.0.1", "/public/x", None, false, &[]).status,
        0
    );
    assert_eq!(
        curl(addr, "a.test", "/public/x", Some(&s.a.cert), false, &[]).status,
        200
    );
}

#[test]
fn a_request_for_a_host_the_certificate_does_not_cover_gets_421_on_http_1_and_2() {
    let s = start(true);
    let addr = s.gateway.tls_addr();
    for h2 in [false, true] {
        // Fronting: a.test's connection, d.test's request.
        let fronted = curl(
            addr,
            "a.test",
            "/public/x",
            Some(&s.a.cert),
            h2,
            &["-H", "Host: d.test"],
        );
        assert_eq!(fronted.status, 421, "h2={h2}: {fronted:?}");
        // One wildcard certificate covers both names: the connection may
        // carry either (a browser reuses its HTTP/2 connection for them).
        let coalesced = curl(
            addr,
            "x.b.test",
            "/public/x",
            Some(&s.b.cert),
            h2,
            &["-H", "Host: y.b.test"],
        );
        assert_eq!(coalesced.status, 200, "h2={h2}: {coalesced:?}");
        // And the gateway serves on.
        let fine = curl(addr, "a.test", "/public/x", Some(&s.a.cert), h2, &[]);
        assert_eq!(fine.status, 200, "h2={h2}");
    }
    let log = s.gateway.access_log_until(|l| l["reason"] == "misdirected");
    assert!(log
        .iter()
        .any(|l| l["status"] == 421 && l["reason"] == "misdirected"));
}

#[test]
fn http_2_splits_of_the_cookie_reach_the_app_as_one_field() {
    let s = start(true);
    let addr = s.gateway.tls_addr();
    let split = curl(
        addr,
        "a.test",
        "/app",
        Some(&s.a.cert),
        true,
        &[
            "-H",
            "Cookie: theme=dark",
            "-H",
            &format!("Cookie: {ALICE}"),
        ],
    );
    assert_eq!(split.status, 200, "{split:?}");
    assert_eq!(
        echoed(&split.body, "cookie"),
        [format!("theme=dark; {ALICE}")],
        "the app is sent one Cookie field"
    );
    // Identity headers a client sends over HTTP/2 are stripped like any other.
    let spoofed = curl(
        addr,
        "a.test",
        "/public/x",
        Some(&s.a.cert),
        true,
        &[
            "-H",
            "x-user-id: 1",
            "-H",
            "x_user_id: 1",
            "-H",
            "x-original-url: /admin",
        ],
    );
    assert_eq!(spoofed.status, 200, "{spoofed:?}");
    for name in ["x-user-id", "x_user_id", "x-original-url"] {
        assert!(
            echoed(&spoofed.body, name).is_empty(),
            "{name} reached the app"
        );
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
fn check_refuses_certificates_that_would_not_serve() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = certificate(dir.path(), "good", &["a.test"], false);
    let other = certificate(dir.path(), "other", &["b.test"], false);
    let expired = certificate(dir.path(), "expired", &["c.test"], true);
    let garbage = CertFiles {
        cert: dir.path().join("garbage.pem"),
        key: good.key.clone(),
    };
    std::fs::write(&garbage.cert, "not a certificate").expect("write");
    let mismatched = CertFiles {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (ok, text) = check(
        &config("redis://127.0.0.1:1", upstream, &[(&good, true)]),
        dir.path(),
    );
    assert!(ok, "a good certificate was refused: {text}");
    for (files, why) in [
        (&expired, "expired"),
        (&garbage, "no certificate"),
        (&mismatched, "does not match"),
    ] {
        let (ok, text) = check(
            &config("redis://127.0.0.1:1", upstream, &[(files, false)]),
            dir.path(),
        );
        assert!(!ok, "{why}: accepted");
        assert!(text.contains("tls.certificates[0].cert"), "{why}: {text}");
        assert!(text.contains(why), "{why}: {text}");
    }
    let (ok, text) = check(
        &config(
            "redis://127.0.0.1:1",
            upstream,
            &[(&good, false), (&good, false)],
        ),
        dir.path(),
    );
    assert!(!ok && text.contains("a.test is named by"), "{text}");
    let (ok, text) = check(&config("redis://127.0.0.1:1", upstream, &[]), dir.path());
    assert!(!ok && text.contains("listen_tls needs"), "{text}");
}

/// An HTTP/2 client over TLS (the `h2` crate) that trusts `ca` for `name`.
async fn h2_connect(
    addr: std::net::SocketAddr,
    name: &str,
    ca: &Path,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read ca");
    let der = pem_to_der(&pem);
    roots.add(der.into()).expect("add root");
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let tls = connector
        .connect(server_name, tcp)
        .await
        .expect("TLS handshake");
    let (send, conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver)
}

/// The DER of the first certificate in a PEM file.
fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("base64 certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_after_acceptance_cannot_pile_up_requests() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = certificate(dir.path(), "a", &["a.test"], false);
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let text = config(&redis.url(), upstream.addr, &[(&a, true)])
        .replace("threads = 1", "threads = 1\nh2_max_concurrent_streams = 4")
        .replace("[redis]\n", "[redis]\ncommand_timeout = \"10s\"\n")
        + "\n[cache]\nenabled = false\n";
    let gateway = TestGateway::start(&text);
    let addr = gateway.tls_addr();
    let before = redis.calls("get");
    // Redis holds every reply: each request the gateway starts waits in its
    // session lookup, where nothing watches for the client's reset.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query(&mut redis.conn())
        .expect("pause");
    let (mut send, driver) = h2_connect(addr, "a.test", &a.cert).await;
    let (mut sent, mut refused, mut n) = (0, 0, 0);
    // Rounds of 4 streams, each reset by the client once the gateway has
    // accepted it: without a bound on requests in flight every round would
    // start 4 more session lookups.
    'rounds: for _ in 0..10 {
        let mut streams = Vec::new();
        for _ in 0..4 {
            let Ok(ready) = send.clone().ready().await else {
                break 'rounds;
            };
            send = ready;
            n += 1;
            let cookie = format!(
                "connect.sid={}",
                sessiongate::credential::cookie::express_sign(
                    &format!("s{n}"),
                    "fixture-secret-current"
                )
            );
            let request = http::Request::builder()
                .uri("https://a.test/app")
                .header("cookie", cookie)
                .body(())
                .expect("request");
            match send.send_request(request, true) {
                Ok((response, stream)) => {
                    sent += 1;
                    streams.push((response, stream));
                }
                Err(_) => break 'rounds,
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for (response, mut stream) in streams {
            // A refused stream has its answer already; the others are reset.
            match tokio::time::timeout(std::time::Duration::from_millis(10), response).await {
                Ok(Err(e)) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => refused += 1,
                _ => stream.send_reset(h2::Reason::CANCEL),
            }
        }
    }
    // Redis runs what was queued once the pause ends.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let lookups = redis.calls("get") - before;
    assert!(
        lookups <= 4,
        "{lookups} session lookups from one connection allowed 4 in flight ({sent} streams sent)"
    );
    assert!(refused > 0, "no stream was refused ({sent} sent)");
    drop(send);
    driver.abort();
    // A new connection is served.
    let fine = curl(addr, "a.test", "/public/x", Some(&a.cert), true, &[]);
    assert_eq!(fine.status, 200, "a request on a new connection: {fine:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_certificate_files_and_keeps_the_old_ones_when_the_new_are_bad() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = certificate(dir.path(), "a", &["a.test"], false);
    // Kept apart: the served files are rewritten in place below.
    let first_ca = dir.path().join("first-ca.pem");
    std::fs::copy(&first.cert, &first_ca).expect("copy");
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let gateway = TestGateway::start(&config(&redis.url(), upstream.addr, &[(&first, true)]));
    let addr = gateway.tls_addr();
    assert_eq!(
        curl(addr, "a.test", "/public/x", Some(&first_ca), false, &[]).status,
        200
    );
    // An HTTP/2 connection opened before the reload.
    let (send, driver) = h2_connect(addr, "a.test", &first_ca).await;

    // certbot/cert-manager style: new files in place, then SIGHUP.
    let renewed = certificate(dir.path(), "renewed", &["a.test"], false);
    std::fs::copy(&renewed.cert, &first.cert).expect("copy cert");
    std::fs::copy(&renewed.key, &first.key).expect("copy key");
    gateway.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while curl(addr, "a.test", "/public/x", Some(&renewed.cert), false, &[]).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        curl(addr, "a.test", "/public/x", Some(&first_ca), false, &[]).status,
        0,
        "new handshakes still get the old certificate"
    );
    // The connection opened before keeps its session and is served.
    let mut send = send.ready().await.expect("the old connection is open");
    let request = http::Request::builder()
        .uri("https://a.test/public/old")
        .body(())
        .expect("request");
    let (response, _) = send.send_request(request, true).expect("send");
    assert_eq!(response.await.expect("response").status(), 200);
    drop(send);
    driver.abort();

    // A bad file: the reload is refused and the renewed certificate stays.
    std::fs::write(&first.cert, "garbage").expect("write");
    gateway.signal(libc::SIGHUP);
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(
        curl(addr, "a.test", "/public/x", Some(&renewed.cert), false, &[]).status,
        200,
        "a bad certificate file replaced the one served"
    );
    assert!(
        gateway.log().contains("tls.certificates[0].cert"),
        "the refused reload does not say why"
    );
}

#[test]
fn certificate_files_changed_on_disk_are_served_without_a_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = certificate(dir.path(), "a", &["a.test"], false);
    let first_ca = dir.path().join("first-ca.pem");
    std::fs::copy(&first.cert, &first_ca).expect("copy");
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let text = config(&redis.url(), upstream.addr, &[(&first, true)]).replacen(
        "[[tls.certificates]]",
        "[tls]\nwatch_interval = \"100ms\"\n\n[[tls.certificates]]",
        1,
    );
    let gateway = TestGateway::start(&text);
    let addr = gateway.tls_addr();
    assert_eq!(
        curl(addr, "a.test", "/public/x", Some(&first_ca), false, &[]).status,
        200
    );
    // cert-manager style: the new files are renamed into place.
    let renewed = certificate(dir.path(), "renewed", &["a.test"], false);
    std::fs::rename(&renewed.key, &first.key).expect("rename key");
    std::fs::copy(&renewed.cert, dir.path().join("next.pem")).expect("copy");
    std::fs::rename(dir.path().join("next.pem"), &first.cert).expect("rename cert");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while curl(addr, "a.test", "/public/x", Some(&renewed.cert), false, &[]).status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        curl(addr, "a.test", "/public/x", Some(&first_ca), false, &[]).status,
        0
    );
}
