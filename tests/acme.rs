//! Certificates from ACME, against Debian's `pebble` (the ACME test server)
//! with `pebble-challtestsrv` answering its DNS queries with 127.0.0.1: the
//! gateway orders a certificate over HTTP-01 (answered on its plain
//! listener), serves it on its TLS listener (a client trusting pebble's root
//! completes the handshake), and after a restart serves the stored one
//! without ordering again.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::tls::{certificate, curl};
use support::{EchoUpstream, RedisServer, TestGateway};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed (by PID) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Pebble {
    dns: Option<Killed>,
    dns_port: u16,
    _pebble: Killed,
    directory: String,
    management: u16,
    /// Pebble's own TLS certificate (what the gateway must trust to reach it).
    tls_cert: std::path::PathBuf,
}

/// pebble-challtestsrv answering every name with 127.0.0.1 on `port`.
fn dns_server(port: u16) -> Killed {
    Killed(
        Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (apt-get install -y pebble)"),
    )
}

/// pebble, validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`
/// of 127.0.0.1 for every name.
fn pebble(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
    pebble_with(dir, http_port, tls_port, None)
}

/// `pebble`, issuing certificates valid for `validity` seconds when given.
fn pebble_with(dir: &Path, http_port: u16, tls_port: u16, validity: Option<u64>) -> Pebble {
    let dns = free_port();
    let dns_server = dns_server(dns);
    let tls = certificate(dir, "pebble", &["127.0.0.1", "localhost"], false);
    let (listen, management) = (free_port(), free_port());
    let mut config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": tls.cert,
        "privateKey": tls.key,
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    if let Some(seconds) = validity {
        config["pebble"]["certificateValidityPeriod"] = seconds.into();
    }
    let config_path = dir.join("pebble.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
    let pebble = Command::new("pebble")
        .arg("-config")
        .arg(&config_path)
        .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        // Every order is validated (pebble reuses valid authorizations half
        // of the time by default).
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("pebble (apt-get install -y pebble)");
    let pebble = Pebble {
        dns: Some(dns_server),
        dns_port: dns,
        _pebble: Killed(pebble),
        directory: format!("https://127.0.0.1:{listen}/dir"),
        management,
        tls_cert: tls.cert,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
        assert!(Instant::now() < deadline, "pebble did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    pebble
}

impl Pebble {
    /// The root pebble's certificates chain to (made at its start).
    fn root(&self, dir: &Path) -> std::path::PathBuf {
        let out = Command::new("curl")
            .args([
                "-sk",
                &format!("https://127.0.0.1:{}/roots/0", self.management),
            ])
            .output()
            .unwrap();
        let path = dir.join("pebble-root.pem");
        std::fs::write(&path, &out.stdout).unwrap();
        path
    }
}

fn gateway(
    redis: &RedisServer,
    upstream: &EchoUpstream,
    http: u16,
    tls: u16,
    p: &Pebble,
    storage: &Path,
) -> TestGateway {
    gateway_with(
        redis,
        upstream,
        http,
        tls,
        &p.directory,
        &p.tls_cert,
        storage,
        "",
    )
}

/// 32 bytes in base64: the fleet's `share_key` in these tests.
const SHARE_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

#[allow(clippy::too_many_arguments)]
fn gateway_with(
    redis: &RedisServer,
    upstream: &EchoUpstream,
    http: u16,
    tls: u16,
    directory: &str,
    ca: &Path,
    storage: &Path,
    acme_extra: &str,
) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:{http}"]
listen_tls = ["127.0.0.1:{tls}"]
threads = 1

[redis]
url = "{url}"

[session]
cookie = "sid"
cookie_format = "plain"

[acme]
directory = "{directory}"
ca = "{ca}"
terms_agreed = true
contact = ["mailto:ops@app.test"]
names = ["app.test"]
storage = "{storage}"
{acme_extra}

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/"
upstream = "app"
access = "public"
"#,
        url = redis.url(),
        ca = ca.display(),
        storage = storage.display(),
        upstream = upstream.addr,
    ))
}

/// How long after now a client trusting `root` first completes a request
/// to app.test at `addr` (the certificate is issued and served); fails
/// after 30 s with the gateway's and pebble's logs.
fn served_after(addr: std::net::SocketAddr, root: &Path, gw: &TestGateway, dir: &Path) -> Duration {
    let started = Instant::now();
    loop {
        let seen = curl(addr, "app.test", "/x", Some(root), false, &[]);
        if seen.status == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no certificate from pebble: {seen:?}\n{}\n{}",
            gw.log(),
            std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_name_gets_a_certificate_over_http_01_and_keeps_it_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("acme");
    let (http, tls) = (free_port(), free_port());
    let p = pebble(dir.path(), http, tls);
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gw = gateway(&redis, &upstream, http, tls, &p, &storage);
    let root = p.root(dir.path());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tls));
    let took = served_after(addr, &root, &gw, dir.path());
    println!("issued and served {took:?} after the gateway started");
    assert!(gw.log().contains("ACME: certificate issued"));
    let issued = std::fs::read(storage.join("cert.pem")).unwrap();
    // The account and the certificate's key are the gateway's user's only.
    use std::os::unix::fs::PermissionsExt;
    for file in ["key.pem", "account.json"] {
        let mode = std::fs::metadata(storage.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is readable by others");
    }
    drop(gw);
    // A restart serves the stored certificate at once, ordering nothing.
    let gw = gateway(&redis, &upstream, http, tls, &p, &storage);
    let seen = curl(addr, "app.test", "/x", Some(&root), false, &[]);
    assert_eq!(seen.status, 200, "{seen:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !gw.log().contains("ACME: certificate issued"),
        "{}",
        gw.log()
    );
    assert!(
        std::fs::read(storage.join("cert.pem")).unwrap() == issued,
        "ordered again"
    );
}

/// A certificate is renewed at two thirds of its lifetime: the new one is
/// served from the next handshake, and an HTTP/2 connection opened on the
/// old one keeps serving requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_the_certificate_without_dropping_an_open_connection() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("acme");
    let (http, tls) = (free_port(), free_port());
    let p = pebble_with(dir.path(), http, tls, Some(9));
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gw = gateway(&redis, &upstream, http, tls, &p, &storage);
    let root = p.root(dir.path());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tls));
    let started = Instant::now();
    while !storage.join("cert.pem").exists()
        || curl(addr, "app.test", "/x", Some(&root), false, &[]).status != 200
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no first certificate:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = std::fs::read(storage.join("cert.pem")).unwrap();
    let mut h2 = support::h2raw::RawH2::connect(addr, "app.test", &root).await;
    let fields = support::h2raw::request_fields("app.test", "/x");
    let id = h2.request(&fields, false).await;
    assert_eq!(h2.outcome(id).await, support::h2raw::Outcome::Status(200));
    // Renewed at two thirds of 9 s.
    let started = Instant::now();
    while std::fs::read(storage.join("cert.pem")).unwrap() == first {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not renewed:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "renewed {:?} after the first certificate",
        started.elapsed()
    );
    // The open connection serves on; a new one completes its handshake.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = h2.request(&fields, false).await;
    assert_eq!(h2.outcome(id).await, support::h2raw::Outcome::Status(200));
    assert_eq!(
        curl(addr, "app.test", "/x", Some(&root), true, &[]).status,
        200
    );
    let orders = gw.log().matches("ACME: certificate issued").count();
    assert!(orders >= 2, "{}", gw.log());
}

/// Two gateways on one Redis, sharing through it (`share_key`): exactly one
/// order reaches pebble, and both serve the one certificate. Pebble sends
/// every validation to the second gateway's plain port, so when the first
/// gateway holds the lock, the second answers its token from Redis.
#[test]
fn a_fleet_orders_once_and_serves_one_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (http_a, tls_a, http_b, tls_b) = (free_port(), free_port(), free_port(), free_port());
    let p = pebble(dir.path(), http_b, tls_b);
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let share = format!("share_key = \"{SHARE_KEY}\"");
    let (store_a, store_b) = (dir.path().join("a"), dir.path().join("b"));
    let b = gateway_with(
        &redis,
        &upstream,
        http_b,
        tls_b,
        &p.directory,
        &p.tls_cert,
        &store_b,
        &share,
    );
    let a = gateway_with(
        &redis,
        &upstream,
        http_a,
        tls_a,
        &p.directory,
        &p.tls_cert,
        &store_a,
        &share,
    );
    let root = p.root(dir.path());
    let started = Instant::now();
    for tls in [tls_a, tls_b] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tls));
        while curl(addr, "app.test", "/x", Some(&root), false, &[]).status != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "gateway on {tls} serves no certificate:\n{}\n{}",
                a.log(),
                b.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!(
        "both gateways serve the fleet's certificate {:?} after start",
        started.elapsed()
    );
    let cert_a = std::fs::read(store_a.join("cert.pem")).unwrap();
    let cert_b = std::fs::read(store_b.join("cert.pem")).unwrap();
    assert!(cert_a == cert_b, "two certificates");
    let log = std::fs::read_to_string(dir.path().join("pebble.log")).unwrap();
    assert_eq!(log.matches("POST /order-plz").count(), 1, "{log}");
    // The key is in Redis only sealed.
    let stored: String = redis::cmd("GET")
        .arg("sessiongate:acme:key")
        .query(&mut redis.conn())
        .unwrap();
    assert!(!stored.contains("PRIVATE KEY"));
    let key = std::fs::read_to_string(store_a.join("key.pem")).unwrap();
    assert!(key.contains("PRIVATE KEY"));
}

/// A gateway of a fleet (`share_key`) whose own orders cannot reach any
/// ACME server: what it answers comes from the fleet's Redis. It and its
/// TLS port.
fn fleet_member(
    dir: &Path,
    redis: &RedisServer,
    upstream: &EchoUpstream,
    extra: &str,
) -> (TestGateway, u16) {
    let ca = certificate(dir, "nowhere", &["127.0.0.1"], false);
    let (http, tls) = (free_port(), free_port());
    let gw = gateway_with(
        redis,
        upstream,
        http,
        tls,
        "https://127.0.0.1:9/dir",
        &ca.cert,
        &dir.join("acme"),
        &format!("share_key = \"{SHARE_KEY}\"\n{extra}"),
    );
    (gw, tls)
}

/// A validation request for a token another gateway of the fleet waits on
/// (published in Redis) is answered; anything else is not.
#[test]
fn a_validation_for_another_gateways_token_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let (gw, _) = fleet_member(dir.path(), &redis, &upstream, "");
    let _: () = redis::cmd("SET")
        .arg("sessiongate:acme:token:tok-1_A")
        .arg("tok-1_A.thumbprint")
        .query(&mut redis.conn())
        .unwrap();
    let answer = support::get(gw.addr, "/.well-known/acme-challenge/tok-1_A", &[]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "tok-1_A.thumbprint");
    // An unknown token, or one that could not be a token, is routed as usual
    // (here: the public route's upstream, which echoes).
    for path in [
        "/.well-known/acme-challenge/unknown",
        "/.well-known/acme-challenge/tok-1_A%00",
    ] {
        let resp = support::get(gw.addr, path, &[]);
        assert_ne!(resp.body, "tok-1_A.thumbprint", "{path}");
    }
}

/// An order that fails (pebble cannot resolve the name: its DNS is gone)
/// leaves the current certificate serving and is retried; once DNS is back
/// the retry renews it.
#[test]
fn a_failed_renewal_keeps_the_old_certificate_serving_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("acme");
    let (http, tls) = (free_port(), free_port());
    let mut p = pebble_with(dir.path(), http, tls, Some(20));
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gw = gateway(&redis, &upstream, http, tls, &p, &storage);
    let root = p.root(dir.path());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tls));
    let started = Instant::now();
    while curl(addr, "app.test", "/x", Some(&root), false, &[]).status != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no first certificate:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = std::fs::read(storage.join("cert.pem")).unwrap();
    // Renewal comes due at two thirds of 20 s; with pebble's DNS gone it fails.
    p.dns = None;
    while !gw.log().contains("ACME: order failed") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no failed renewal:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("the renewal failed {:?} after start", started.elapsed());
    assert!(
        std::fs::read(storage.join("cert.pem")).unwrap() == first,
        "renewed without DNS"
    );
    assert_eq!(
        curl(addr, "app.test", "/x", Some(&root), false, &[]).status,
        200,
        "the old certificate stopped serving"
    );
    // DNS back: the retry (after its backoff) renews.
    p.dns = Some(dns_server(p.dns_port));
    while std::fs::read(storage.join("cert.pem")).unwrap() == first {
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "never renewed:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("renewed by a retry {:?} after start", started.elapsed());
    assert_eq!(
        curl(addr, "app.test", "/x", Some(&root), false, &[]).status,
        200
    );
}

/// A certificate over TLS-ALPN-01 (pebble validates on the gateway's TLS
/// listener; nothing listens on its HTTP-01 port), with the `key_type`
/// asked for; the listener keeps serving HTTP/1.1 and HTTP/2 beside the
/// validations.
#[test]
fn a_name_gets_a_certificate_over_tls_alpn_01_with_the_key_type_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("acme");
    let (http, tls) = (free_port(), free_port());
    // pebble's HTTP-01 port is one nobody listens on.
    let p = pebble(dir.path(), free_port(), tls);
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gw = gateway_with(
        &redis,
        &upstream,
        http,
        tls,
        &p.directory,
        &p.tls_cert,
        &storage,
        "challenge = \"tls-alpn-01\"\nkey_type = \"ecdsa-p384\"",
    );
    let root = p.root(dir.path());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], tls));
    let took = served_after(addr, &root, &gw, dir.path());
    println!("issued over TLS-ALPN-01 and served {took:?} after the gateway started");
    let log = gw.log();
    assert!(log.contains("TLS-ALPN-01 validation answered"), "{log}");
    let key = std::fs::read_to_string(storage.join("key.pem")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key).unwrap();
    assert!(key.is_compatible(&rcgen::PKCS_ECDSA_P384_SHA384));
    // The listener still speaks both protocols through the step that looks
    // for validations.
    let h2 = curl(addr, "app.test", "/x", Some(&root), true, &[]);
    assert_eq!((h2.status, h2.version.as_str()), (200, "2"), "{h2:?}");
    // acme-tls/1 for a name nothing is validating: no handshake.
    assert!(alpn_certificate(addr, "app.test").is_none());
    assert_eq!(
        curl(addr, "app.test", "/x", Some(&root), false, &[]).status,
        200
    );
}

/// A TLS-ALPN-01 validation for a name another gateway of the fleet is
/// validating (its digest published in Redis) gets the challenge
/// certificate; one for another name does not.
#[test]
fn a_tls_alpn_01_validation_for_another_gateways_order_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let (gw, tls) = fleet_member(dir.path(), &redis, &upstream, "challenge = \"tls-alpn-01\"");
    let digest: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7) ^ 0xa5).collect();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let _: () = redis::cmd("SET")
        .arg("sessiongate:acme:alpn:app.test")
        .arg(&hex)
        .query(&mut redis.conn())
        .unwrap();
    let leaf = alpn_certificate(
        std::net::SocketAddr::from(([127, 0, 0, 1], tls)),
        "APP.test",
    )
    .unwrap_or_else(|| panic!("no challenge certificate\n{}", gw.log()));
    // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), critical, holding the digest.
    let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
    let at = leaf
        .windows(oid.len())
        .position(|w| w == oid)
        .expect("acmeIdentifier extension");
    let mut extension = vec![0x01, 0x01, 0xff, 0x04, 0x22, 0x04, 0x20];
    extension.extend_from_slice(&digest);
    assert_eq!(
        &leaf[at + oid.len()..at + oid.len() + extension.len()],
        extension.as_slice()
    );
    assert!(alpn_certificate(
        std::net::SocketAddr::from(([127, 0, 0, 1], tls)),
        "other.test"
    )
    .is_none());
}

/// The leaf certificate of a handshake offering only `acme-tls/1` for
/// `name`, as an ACME server's validation does (`None`: no handshake).
fn alpn_certificate(addr: std::net::SocketAddr, name: &str) -> Option<Vec<u8>> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;

    /// Validations look at the certificate, not at who signed it.
    #[derive(Debug)]
    struct Any(Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            // webpki refuses the critical acmeIdentifier extension.
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            // webpki refuses the critical acmeIdentifier extension.
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let server = ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    assert_eq!(conn.alpn_protocol(), Some(&b"acme-tls/1"[..]));
    Some(conn.peer_certificates()?.first()?.to_vec())
}
