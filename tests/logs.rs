//! Credentials never reach the logs: the real gateway at `RUST_LOG=debug`
//! (every crate asked for debug), a request mix with cookies, bearer ids,
//! JWTs, query-string tokens, a malformed request and a 502 from an upstream
//! that is down; then every line of its stdout and stderr is searched for
//! each secret that was sent.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use redis::Commands;
use serde_json::json;
use support::{get, EchoUpstream, RedisServer, TestGateway, ALICE, ALICE_KEY};

const ALICE_ID: &str = "f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o";
const ALICE_SIG: &str = "HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lT0";
const BAD_ID: &str = "forgedSessionId0000000000000777";
const API_TOKEN: &str = "apiTokenSecret0000000000000042";
const UNKNOWN_TOKEN: &str = "unknownBearer00000000000000099";
const QUERY_SECRET: &str = "querySecret0000000000000005";
const JWT_SECRET: &str = "logs-test-jwt-secret";
const TOKEN_ID: &str = "tokenIdSecret000000000000000031";

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(redis: &RedisServer, upstream: &EchoUpstream, bearer: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"
command_timeout = "500ms"

[session]
secrets = ["fixture-secret-current"]
{bearer}

[identity.headers]
"X-User-Id" = "user.id"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[upstream]]
name = "down"
addrs = ["127.0.0.1:{down}"]
connect_timeout = "200ms"

[[route]]
path_prefix = "/public/"
upstream = "app"
access = "public"

[[route]]
path_prefix = "/down/"
upstream = "down"

[[route]]
path_prefix = "/"
upstream = "app"
"#,
        url = redis.url(),
        upstream = upstream.addr,
        down = closed_port(),
    )
}

fn jwt(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Sends `raw` as it is and reads whatever comes back.
fn raw(gateway: &TestGateway, raw: &str) {
    let mut conn = TcpStream::connect(gateway.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    conn.write_all(raw.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
}

/// The requests every gateway gets, with `credential` (an `Authorization`
/// value) as the bearer credential.
fn request_mix(gateway: &TestGateway, bearers: &[String]) {
    let q = format!("?access_token={QUERY_SECRET}&x=1");
    let bad_cookie = format!("connect.sid=s%3A{BAD_ID}.AAAAsignatureAAAA");
    let json = ("Accept", "application/json");
    let status = |path: &str, headers: &[(&str, &str)]| get(gateway.addr, path, headers).status;
    assert_eq!(status(&format!("/x{q}"), &[("Cookie", ALICE)]), 200);
    assert_eq!(
        status(&format!("/x{q}"), &[("Cookie", &bad_cookie), json]),
        401
    );
    assert_eq!(
        status(
            &format!("/x{q}"),
            &[("Cookie", &format!("connect.sid={ALICE_ID}")), json]
        ),
        401
    );
    assert_eq!(status(&format!("/public/{q}"), &[("Cookie", ALICE)]), 200);
    assert_eq!(status(&format!("/x{q}"), &[json]), 401);
    for bearer in bearers {
        let s = status(&format!("/x{q}"), &[("Authorization", bearer), json]);
        assert!(s == 200 || s == 401, "{s}");
    }
    // The upstream is down: Pingora's own error line about it.
    assert_eq!(status(&format!("/down/x{q}"), &[("Cookie", ALICE)]), 502);
    // A request head that does not parse (Pingora keeps its raw bytes in the error).
    raw(
        gateway,
        &format!(
            "GET /x{q} HTTP/1.1\r\nHost: a\r\nCookie: {ALICE}\r\nAuthorization: {}\r\nBad header\r\n\r\n",
            bearers[0]
        ),
    );
    // A well-formed request cut short.
    let mut conn = TcpStream::connect(gateway.addr).unwrap();
    conn.write_all(format!("GET /x{q} HTTP/1.1\r\nHost: a\r\nCookie: {ALICE}\r\n").as_bytes())
        .unwrap();
    drop(conn);
}

fn assert_no_secrets(gateway: &TestGateway, secrets: &[&str]) {
    // Let the last lines reach the log.
    std::thread::sleep(Duration::from_millis(300));
    let stderr = gateway.log();
    let stdout = gateway.stdout();
    assert!(
        stderr.contains("DEBUG"),
        "debug logging is not on, the test proves nothing:\n{stderr}"
    );
    assert!(
        stderr.contains("GET /down/x"),
        "no error line about the 502:\n{stderr}"
    );
    assert!(
        stdout.iter().filter(|l| l.starts_with('{')).count() >= 8,
        "{stdout:#?}"
    );
    for (name, text) in [
        ("stderr", stderr.lines().collect::<Vec<_>>()),
        ("stdout", stdout.iter().map(String::as_str).collect()),
    ] {
        for line in text {
            for secret in secrets {
                assert!(!line.contains(secret), "{name} shows {secret:?}:\n{line}");
            }
        }
    }
}

#[test]
fn no_credential_reaches_the_logs_at_debug_with_opaque_bearer_ids() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let mut conn = redis.conn();
    let session = r#"{"cookie":{},"user":{"id":"1001"}}"#;
    let _: () = conn.set_ex(ALICE_KEY, session, 600).unwrap();
    let _: () = conn
        .set_ex(format!("api:{API_TOKEN}"), session, 600)
        .unwrap();
    let text = config(
        &redis,
        &upstream,
        "bearer = \"opaque\"\nbearer_key = \"api:{id}\"",
    );
    let gateway = TestGateway::start_with_env(&text, &[("RUST_LOG", "trace")]);
    request_mix(
        &gateway,
        &[
            format!("Bearer {API_TOKEN}"),
            format!("Bearer {UNKNOWN_TOKEN}"),
        ],
    );
    assert_no_secrets(
        &gateway,
        &[
            ALICE_ID,
            ALICE_SIG,
            BAD_ID,
            API_TOKEN,
            UNKNOWN_TOKEN,
            QUERY_SECRET,
            "access_token",
        ],
    );
}

#[test]
fn no_credential_reaches_the_logs_at_debug_with_jwts() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let mut conn = redis.conn();
    let _: () = conn
        .set_ex(ALICE_KEY, r#"{"cookie":{},"user":{"id":"1001"}}"#, 600)
        .unwrap();
    let _: () = conn.set_ex(format!("token:{TOKEN_ID}"), "{}", 600).unwrap();
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let good = jwt(json!({"tokenId": TOKEN_ID, "userId": "7", "exp": exp}));
    let revoked = jwt(json!({"tokenId": "revokedTokenId0000000000000017", "exp": exp}));
    let expired = jwt(json!({"tokenId": TOKEN_ID, "exp": exp - 7200}));
    let text = config(
        &redis,
        &upstream,
        &format!("bearer = \"jwt\"\n\n[jwt]\nalgorithms = [\"HS256\"]\nsecret = \"{JWT_SECRET}\""),
    );
    let gateway = TestGateway::start_with_env(&text, &[("RUST_LOG", "debug")]);
    let bearers: Vec<String> = [&good, &revoked, &expired]
        .iter()
        .map(|t| format!("Bearer {t}"))
        .collect();
    request_mix(&gateway, &bearers);
    let signature = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    let payload = |t: &str| t.split('.').nth(1).unwrap().to_owned();
    let mut secrets: Vec<String> = vec![
        ALICE_ID.into(),
        ALICE_SIG.into(),
        BAD_ID.into(),
        QUERY_SECRET.into(),
        TOKEN_ID.into(),
        "revokedTokenId0000000000000017".into(),
        JWT_SECRET.into(),
    ];
    for t in [&good, &revoked, &expired] {
        secrets.push(signature(t));
        secrets.push(payload(t));
    }
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_no_secrets(&gateway, &secrets);
}
