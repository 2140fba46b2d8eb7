//! End to end for `bearer = "jwt"`: the real gateway, a real redis-server and
//! an echo upstream. Tokens come from tests/fixtures/jwt.json (made by the npm
//! `jsonwebtoken`); the hostile ones are crafted here.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use redis::Commands;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::{fixture, get, EchoUpstream, RedisServer, Response, TestGateway};

const HS_SECRET: &str = "fixture-jwt-hs256-secret";
const EXPRESS_SECRET: &str = "fixture-secret-current";
/// The `hs256` fixture token's Redis key (also the `revoked` token's).
const CAROL_KEY: &str = "token:b5742c46-b6bf-448b-82c4-170aa08817d4";
const CAROL_ID: &str = "b5742c46-b6bf-448b-82c4-170aa08817d4";
const ALICE_COOKIE: &str = "connect.sid=s%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lT0";

struct Setup {
    redis: RedisServer,
    upstream: EchoUpstream,
    gateway: TestGateway,
    /// Holds the JWKS and PEM files the config points at.
    _keys: tempfile::TempDir,
}

/// A config with express cookies and bearer JWTs; `jwt` replaces the default
/// `[jwt]` keys (HS256 + RS256, the fixture secret and JWKS).
fn config(
    redis: &RedisServer,
    upstream: &EchoUpstream,
    keys: &std::path::Path,
    jwt: &str,
) -> String {
    let default_jwt = format!(
        "algorithms = [\"HS256\", \"RS256\"]\nsecret = \"{HS_SECRET}\"\njwks_file = {:?}\n",
        keys.join("jwks.json").display()
    );
    let jwt = if jwt.is_empty() {
        default_jwt
    } else {
        jwt.replace("{keys}", &keys.display().to_string())
    };
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"
command_timeout = "200ms"

[session]
cookie = "connect.sid"
cookie_format = "express"
secrets = ["{EXPRESS_SECRET}"]
bearer = "jwt"
key = "sess:{{id}}"
role_field = "claims.role"

[jwt]
{jwt}

[identity.headers]
"X-User-Id" = "claims.userId"
"X-User-Email" = "claims.email"
"X-User-Role" = "claims.role"
"X-Token-Type" = "claims.type"
"X-Session-User" = "session.userId"
"X-Token-Session" = "session"
"X-Cookie-User" = "user.id"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
name = "editors"
path_prefix = "/edit/"
upstream = "app"
roles = ["editor"]

[[route]]
name = "app"
path_prefix = "/"
upstream = "app"
on_unauthenticated = {{ redirect = "/login" }}
"#,
        url = redis.url(),
        upstream = upstream.addr,
    )
}

fn key_files() -> tempfile::TempDir {
    let fx = fixture("jwt.json");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("jwks.json"), fx["jwks"].to_string()).expect("write jwks");
    std::fs::write(
        dir.path().join("key.pem"),
        fx["rs256_public_key_pem"].as_str().unwrap(),
    )
    .expect("write pem");
    dir
}

fn setup_with(jwt: &str) -> Setup {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let keys = key_files();
    let gateway = TestGateway::start(&config(&redis, &upstream, keys.path(), jwt));
    Setup {
        redis,
        upstream,
        gateway,
        _keys: keys,
    }
}

fn setup() -> Setup {
    setup_with("")
}

/// Loads every valid token's key into Redis, as the app does at login.
fn load_tokens(redis: &RedisServer) -> Vec<Value> {
    support::load_fixture(redis, "jwt.json")
}

fn bearer(s: &Setup, path: &str, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    get(
        s.gateway.addr,
        path,
        &[("Authorization", &auth), ("Accept", "application/json")],
    )
}

/// The response once `done` holds for it, asking again for up to a second:
/// the decision cache hears of a changed token key within milliseconds, not
/// before the command returns.
fn settled(s: &Setup, path: &str, token: &str, done: impl Fn(&Response) -> bool) -> Response {
    let start = Instant::now();
    loop {
        let resp = bearer(s, path, token);
        if done(&resp) || start.elapsed() > Duration::from_secs(1) {
            return resp;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Carol's claims (her token key is loaded by `load_tokens`).
fn carol(role: &str) -> Value {
    json!({"userId": "3003", "tokenId": CAROL_ID, "type": "access", "role": role, "exp": now() + 600})
}

fn assert_refused(resp: &Response, what: &str) {
    assert_eq!(resp.status, 401, "{what}: {}", resp.body);
    assert_eq!(
        resp.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#),
        "{what}"
    );
    assert!(
        resp.body.contains("unauthenticated"),
        "{what}: {}",
        resp.body
    );
}

#[test]
fn every_valid_jwt_fixture_is_forwarded_with_its_claims_and_session() {
    let s = setup();
    for case in load_tokens(&s.redis) {
        let name = case["name"].as_str().unwrap();
        let token = case["token"].as_str().unwrap();
        let auth = format!("Bearer {token}");
        let resp = get(
            s.gateway.addr,
            "/dashboard",
            &[
                ("Authorization", &auth),
                ("X-User-Id", "spoofed"),
                ("x_user_role", "admin"),
            ],
        );
        assert_eq!(resp.status, 200, "{name}: {}", resp.body);
        let expect = &case["expect"];
        let header_for = [
            ("userId", "X-User-Id"),
            ("email", "X-User-Email"),
            ("role", "X-User-Role"),
            ("type", "X-Token-Type"),
        ];
        for (claim, header) in header_for {
            let want = expect[claim].as_str().unwrap();
            assert_eq!(resp.echoed(header), vec![want], "{name}: {claim}");
        }
        assert!(resp.echoed("x_user_role").is_empty(), "{name}");
        // `session.*` comes from the token key's value in Redis.
        let stored: Value = serde_json::from_str(case["redis_value"].as_str().unwrap()).unwrap();
        assert_eq!(
            resp.echoed("X-Session-User"),
            vec![stored["userId"].as_str().unwrap()],
            "{name}"
        );
        assert!(resp.echoed("X-Cookie-User").is_empty(), "{name}");
        // The token itself reaches the app untouched.
        assert_eq!(resp.echoed("Authorization"), vec![auth.clone()], "{name}");
    }
    assert_eq!(s.upstream.requests(), 2);
}

#[test]
fn expired_and_revoked_fixtures_get_401() {
    let s = setup();
    let fx = fixture("jwt.json");
    // The revoked token's key is not loaded; nothing else is either.
    for case in fx["invalid"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let resp = bearer(&s, "/dashboard", case["token"].as_str().unwrap());
        assert_refused(&resp, name);
    }
    // A browser navigation with a bad bearer token is not redirected to the login.
    let expired = fx["invalid"][0]["token"].as_str().unwrap();
    let auth = format!("Bearer {expired}");
    let resp = get(
        s.gateway.addr,
        "/dashboard",
        &[("Authorization", &auth), ("Accept", "text/html")],
    );
    assert_eq!(resp.status, 401);
    assert_eq!(s.upstream.requests(), 0);
}

#[test]
fn hostile_tokens_get_401_and_never_reach_the_app() {
    let s = setup();
    load_tokens(&s.redis);
    let fx = fixture("jwt.json");
    let pem = fx["rs256_public_key_pem"].as_str().unwrap();
    let good = hs256(&carol("editor"), HS_SECRET.as_bytes());
    assert_eq!(bearer(&s, "/edit/x", &good).status, 200);
    let before = s.upstream.requests();

    let parts: Vec<&str> = good.split('.').collect();
    let admin = b64(&carol("admin"));
    let mut hostile: Vec<(&str, String)> = vec![
        (
            "alg none, unsigned",
            format!("{}.{admin}.", b64(&json!({"alg": "none", "typ": "JWT"}))),
        ),
        (
            "alg none with a signature",
            format!("{}.{admin}.{}", b64(&json!({"alg": "none"})), parts[2]),
        ),
        (
            "tampered payload",
            format!("{}.{admin}.{}", parts[0], parts[2]),
        ),
        ("stripped signature", format!("{}.{}.", parts[0], parts[1])),
        (
            "wrong HMAC key",
            hs256(&carol("admin"), b"not-the-fixture-secret"),
        ),
        (
            "HS256 signed with the RSA public key (alg confusion)",
            hs256(&carol("admin"), pem.as_bytes()),
        ),
        ("RS256 header on an HMAC signature", {
            let header = b64(&json!({"alg": "RS256", "typ": "JWT"}));
            let unsigned = format!("{header}.{admin}");
            let sig = hs256(&carol("admin"), pem.as_bytes());
            format!("{unsigned}.{}", sig.rsplit('.').next().unwrap())
        }),
        ("not a JWT", "abc.def".to_owned()),
        ("oversized", format!("{good}{}", "A".repeat(9000))),
    ];
    // The RS256 fixture token with its kid replaced: unknown kid.
    let rs = fx["valid"][1]["token"].as_str().unwrap();
    let rs_parts: Vec<&str> = rs.split('.').collect();
    let other_kid = b64(&json!({"alg": "RS256", "typ": "JWT", "kid": "someone-else"}));
    hostile.push((
        "unknown kid",
        format!("{other_kid}.{}.{}", rs_parts[1], rs_parts[2]),
    ));
    hostile.push((
        "no exp",
        hs256(
            &json!({"userId": "3003", "tokenId": CAROL_ID, "role": "editor"}),
            HS_SECRET.as_bytes(),
        ),
    ));
    hostile.push((
        "not valid yet",
        hs256(
            &json!({"tokenId": CAROL_ID, "role": "editor", "exp": now() + 600, "nbf": now() + 300}),
            HS_SECRET.as_bytes(),
        ),
    ));
    hostile.push((
        "no token id",
        hs256(
            &json!({"role": "editor", "exp": now() + 600}),
            HS_SECRET.as_bytes(),
        ),
    ));
    for (what, token) in &hostile {
        assert_refused(&bearer(&s, "/edit/x", token), what);
    }
    // Not a bearer token at all.
    let resp = get(
        s.gateway.addr,
        "/edit/x",
        &[
            ("Authorization", "Basic dXNlcjpwYXNz"),
            ("Accept", "application/json"),
        ],
    );
    assert_refused(&resp, "Basic credentials");
    assert_eq!(
        s.upstream.requests(),
        before,
        "a hostile token reached the app"
    );
}

#[test]
fn an_hs256_token_is_refused_when_only_rs256_is_allowed() {
    let s = setup_with(
        "algorithms = [\"RS256\"]\npublic_key_file = \"{keys}/key.pem\"\njwks_file = \"{keys}/jwks.json\"\n",
    );
    let valid = load_tokens(&s.redis);
    let hs = valid[0]["token"].as_str().unwrap();
    let rs = valid[1]["token"].as_str().unwrap();
    assert_refused(&bearer(&s, "/x", hs), "HS256 with only RS256 allowed");
    let confused = hs256(
        &carol("admin"),
        fixture("jwt.json")["rs256_public_key_pem"]
            .as_str()
            .unwrap()
            .as_bytes(),
    );
    assert_refused(&bearer(&s, "/x", &confused), "alg confusion");
    assert_eq!(s.upstream.requests(), 0);
    assert_eq!(bearer(&s, "/x", rs).status, 200);
}

#[test]
fn a_token_revoked_by_del_is_refused_within_milliseconds() {
    let s = setup();
    let valid = load_tokens(&s.redis);
    let mut conn = s.redis.conn();
    for case in valid {
        let name = case["name"].as_str().unwrap();
        let token = case["token"].as_str().unwrap();
        for _ in 0..3 {
            assert_eq!(bearer(&s, "/x", token).status, 200, "{name}");
        }
        let _: () = conn.del(case["redis_key"].as_str().unwrap()).unwrap();
        assert_refused(&settled(&s, "/x", token, |r| r.status != 200), name);
        // A fresh login (SET again) makes it valid again.
        let _: () = conn
            .set(
                case["redis_key"].as_str().unwrap(),
                case["redis_value"].as_str().unwrap(),
            )
            .unwrap();
        assert_eq!(
            settled(&s, "/x", token, |r| r.status == 200).status,
            200,
            "{name}"
        );
    }
}

#[test]
fn roles_come_from_the_claims() {
    let s = setup();
    let valid = load_tokens(&s.redis);
    // Carol is an editor (HS256), Dave a viewer (RS256).
    assert_eq!(
        bearer(&s, "/edit/doc", valid[0]["token"].as_str().unwrap()).status,
        200
    );
    let resp = bearer(&s, "/edit/doc", valid[1]["token"].as_str().unwrap());
    assert_eq!(resp.status, 403, "{}", resp.body);
}

#[test]
fn a_token_key_may_hold_any_value() {
    let s = setup();
    let mut conn = s.redis.conn();
    let token = hs256(&carol("editor"), HS_SECRET.as_bytes());
    for (stored, want) in [
        ("1", "1"),
        ("active", "active"),
        (r#"{"userId":"3003"}"#, ""),
    ] {
        let _: () = conn.set_ex(CAROL_KEY, stored, 60).unwrap();
        let whole: Vec<&str> = if want.is_empty() { vec![] } else { vec![want] };
        let resp = settled(&s, "/x", &token, |r| r.echoed("X-Token-Session") == whole);
        assert_eq!(resp.status, 200, "{stored}: {}", resp.body);
        assert_eq!(resp.echoed("X-Token-Session"), whole, "{stored}");
        assert_eq!(resp.echoed("X-User-Id"), vec!["3003"], "{stored}");
    }
    // A hash works too.
    let _: () = conn.del(CAROL_KEY).unwrap();
    let _: () = conn.hset(CAROL_KEY, "userId", "3003").unwrap();
    let resp = settled(&s, "/x", &token, |r| {
        r.echoed("X-Session-User") == vec!["3003"]
    });
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.echoed("X-Session-User"), vec!["3003"]);
}

#[test]
fn issuer_and_audience_are_enforced_when_configured() {
    let s = setup_with(&format!(
        "algorithms = [\"HS256\"]\nsecret = \"{HS_SECRET}\"\nissuer = \"https://id.example\"\naudience = \"api\"\n"
    ));
    load_tokens(&s.redis);
    let with = |extra: Value| {
        let mut claims = carol("editor");
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        hs256(&claims, HS_SECRET.as_bytes())
    };
    let ok = with(json!({"iss": "https://id.example", "aud": ["web", "api"]}));
    assert_eq!(bearer(&s, "/x", &ok).status, 200);
    let before = s.upstream.requests();
    for (what, claims) in [
        (
            "wrong issuer",
            json!({"iss": "https://evil.example", "aud": "api"}),
        ),
        (
            "wrong audience",
            json!({"iss": "https://id.example", "aud": "web"}),
        ),
        ("no issuer", json!({"aud": "api"})),
        ("no audience", json!({"iss": "https://id.example"})),
    ] {
        assert_refused(&bearer(&s, "/x", &with(claims)), what);
    }
    // The fixture tokens carry neither.
    let fx = fixture("jwt.json");
    assert_refused(
        &bearer(&s, "/x", fx["valid"][0]["token"].as_str().unwrap()),
        "fixture",
    );
    assert_eq!(s.upstream.requests(), before);
}

#[test]
fn cookies_still_work_and_come_first() {
    let s = setup();
    let valid = load_tokens(&s.redis);
    let fx = fixture("express-session.json");
    let alice = &fx["valid"][0];
    let mut conn = s.redis.conn();
    let _: () = conn
        .set_ex(
            alice["redis_key"].as_str().unwrap(),
            alice["redis_value"].as_str().unwrap(),
            60,
        )
        .unwrap();
    let resp = get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.echoed("X-Cookie-User"), vec!["1001"]);

    // A valid cookie wins over a bearer token, even a bad one.
    let resp = get(
        s.gateway.addr,
        "/x",
        &[
            ("Cookie", ALICE_COOKIE),
            ("Authorization", "Bearer not.a.jwt"),
        ],
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echoed("X-Cookie-User"), vec!["1001"]);
    assert!(resp.echoed("X-User-Id").is_empty());

    // A bad cookie does not hide a valid bearer token.
    let auth = format!("Bearer {}", valid[0]["token"].as_str().unwrap());
    let resp = get(
        s.gateway.addr,
        "/x",
        &[
            ("Cookie", "connect.sid=s%3Anope.bad"),
            ("Authorization", &auth),
        ],
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.echoed("X-User-Id"), vec!["3003"]);
    assert!(resp.echoed("X-Cookie-User").is_empty());
}

#[test]
fn a_valid_token_gets_503_when_redis_is_down() {
    let mut s = setup();
    let valid = load_tokens(&s.redis);
    let token = valid[0]["token"].as_str().unwrap();
    assert_eq!(bearer(&s, "/x", token).status, 200);
    s.redis.stop();
    // The decision cache may answer for the few milliseconds it takes to
    // notice that its invalidation channel is gone; after that, every token
    // needs Redis again.
    let stopped = Instant::now();
    let resp = loop {
        let resp = bearer(&s, "/x", token);
        if resp.status != 200 {
            break resp;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "no 503 after 1 s"
        );
    };
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert_eq!(resp.header("retry-after"), Some("1"));
    let forwarded = s.upstream.requests();
    for _ in 0..5 {
        assert_eq!(bearer(&s, "/x", token).status, 503);
    }
    assert_eq!(s.upstream.requests(), forwarded);
    // Bad tokens are still 401: verification needs no Redis.
    let forged = hs256(&carol("admin"), b"wrong");
    assert_refused(&bearer(&s, "/x", &forged), "forged while redis is down");
}

#[test]
fn the_gateway_never_logs_a_token() {
    let s = setup();
    let valid = load_tokens(&s.redis);
    let fx = fixture("jwt.json");
    let tokens: Vec<&str> = valid
        .iter()
        .chain(fx["invalid"].as_array().unwrap())
        .map(|c| c["token"].as_str().unwrap())
        .collect();
    for token in &tokens {
        let _ = bearer(&s, "/x", token);
    }
    let log = s.gateway.log();
    for token in &tokens {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token reached the log");
    }
    assert!(!log.contains(HS_SECRET));
}

#[test]
fn check_refuses_bearer_jwt_without_a_jwt_table_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let text = "[server]\nlisten = [\"127.0.0.1:8080\"]\n\n[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n\n\
                [session]\ncookie_format = \"plain\"\nbearer = \"jwt\"\n\n[[upstream]]\nname = \"app\"\n\
                addrs = [\"127.0.0.1:3000\"]\n\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(support::gateway::binary())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("proxy.toml:9:10: session.bearer:") && err.contains("[jwt]"),
        "{err}"
    );

    // With a [jwt] table whose key file is relative to the config, it passes.
    let fx = fixture("jwt.json");
    std::fs::write(
        dir.path().join("key.pem"),
        fx["rs256_public_key_pem"].as_str().unwrap(),
    )
    .unwrap();
    let with_jwt =
        format!("{text}\n[jwt]\nalgorithms = [\"RS256\"]\npublic_key_file = \"key.pem\"\n");
    std::fs::write(&path, with_jwt).unwrap();
    let out = std::process::Command::new(support::gateway::binary())
        .args(["check", "-c"])
        .arg(&path)
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The app's refresh token is signed with the same secret and names the same
/// `token:<tokenId>` key as its access token; `[jwt.claims] type = "access"`
/// tells them apart. Refused tokens carry reason `claim_mismatch` in the
/// access log and in `sessiongate_auth_failures_total`.
#[test]
fn refresh_tokens_are_refused_where_access_tokens_are_expected() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let keys = key_files();
    let jwt = format!(
        "algorithms = [\"HS256\"]\nsecret = \"{HS_SECRET}\"\ntyp = \"JWT\"\n\n\
         [jwt.claims]\ntype = \"access\"\nrole = [\"editor\", \"viewer\"]\n"
    );
    let text = config(&redis, &upstream, keys.path(), &jwt).replace(
        "[identity.headers]",
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[identity.headers]",
    );
    let s = Setup {
        gateway: TestGateway::start(&text),
        redis,
        upstream,
        _keys: keys,
    };
    load_tokens(&s.redis);
    let fx = fixture("jwt.json");
    let secret = fx["hs256_secret"].as_str().unwrap().as_bytes();
    let access = fx["valid"][0]["token"].as_str().unwrap();
    let resp = bearer(&s, "/x", access);
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.echoed("X-Token-Type"), vec!["access"]);

    // What TokenService signs next to it: 7 days, same secret, same token id
    // (whose Redis key exists).
    let refresh = hs256(
        &json!({"userId": "3003", "tokenId": CAROL_ID, "type": "refresh",
                "exp": now() + 7 * 24 * 3600}),
        secret,
    );
    let refresh_with_role = hs256(
        &json!({"userId": "3003", "tokenId": CAROL_ID, "type": "refresh", "role": "editor",
                "exp": now() + 7 * 24 * 3600}),
        secret,
    );
    let other_role = hs256(&carol("admin"), secret);
    let mut at_jwt = Header::new(Algorithm::HS256);
    at_jwt.typ = Some("at+jwt".into());
    let other_typ = encode(&at_jwt, &carol("editor"), &EncodingKey::from_secret(secret)).unwrap();
    let before = s.upstream.requests();
    for (what, token) in [
        ("refresh token", &refresh),
        ("refresh token with a role", &refresh_with_role),
        ("role not listed", &other_role),
        ("another typ", &other_typ),
    ] {
        assert_refused(&bearer(&s, "/x", token), what);
    }
    assert_eq!(s.upstream.requests(), before, "none reached the app");
    // Carol's own access token, freshly minted, still passes.
    assert_eq!(
        bearer(&s, "/x", &hs256(&carol("viewer"), secret)).status,
        200
    );

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let reasons = loop {
        let reasons: Vec<String> = s
            .gateway
            .access_log()
            .iter()
            .filter(|l| l["status"] == 401)
            .map(|l| l["reason"].as_str().unwrap_or("").to_owned())
            .collect();
        if reasons.len() >= 4 || std::time::Instant::now() > deadline {
            break reasons;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(reasons, ["claim_mismatch"; 4]);
    let metrics = get(s.gateway.admin_addr(), "/metrics", &[]).body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "sessiongate_auth_failures_total{reason=\"claim_mismatch\"} 4"),
        "{metrics}"
    );
}

/// A bad `[jwt.claims]` rule is a configuration error naming its key and line.
#[test]
fn bad_claim_rules_are_refused_with_their_keys_and_lines() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let keys = key_files();
    let jwt = format!(
        "algorithms = [\"HS256\"]\nsecret = \"{HS_SECRET}\"\n\n\
         [jwt.claims]\ntype = 1.5\nrole = []\nscope = {{ has = [\"read\"] }}\n"
    );
    let text = config(&redis, &upstream, keys.path(), &jwt);
    let Err(err) = TestGateway::try_start(&text) else {
        panic!("the gateway must refuse the rules");
    };
    for want in [
        ":25:8: jwt.claims.type: a claim rule is a string, integer or boolean",
        ":26:8: jwt.claims.role: must list at least one value",
        ":27:17: jwt.claims.scope.has: unknown rule \"has\", expected `contains`",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
}
