//! Session lifecycle end to end: logout and logout-all answered by the
//! gateway itself, and the `sessiongate session ...` admin commands, against
//! a real redis-server, the real binary and the express-session fixtures.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use redis::Commands;
use sessiongate::credential::cookie::express_sign;
use support::{fixture, get, request, Client, EchoUpstream, RedisServer, TestGateway};

const SECRETS: &str = r#"["fixture-secret-current", "fixture-secret-previous"]"#;
const LOGOUT: &str = "/auth/logout";
const LOGOUT_ALL: &str = "/auth/logout-all";
const CLEARED: &str = "connect.sid=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; \
                       HttpOnly; SameSite=Lax";

/// Alice (user 1001, fixture `user-shape`), listed in the fixture's user set.
const ALICE: &str = "f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o";
/// Alice's second session, added by the tests.
const ALICE_2: &str = "aliceSecondSessionFromAPhone0001";
/// User 7007 (fixture `signed-with-previous-secret`).
const VIEWER: &str = "27D-Pq_tbBxSbRlpuRSKUFOxYmHQg_Nr";
/// User 2002 (fixture `passport-shape`: `passport.user`, no `user.id`).
const PASSPORT: &str = "pjWxb3ny2PvjrjAxrDGSWqq8YNfSQ2Xj";

fn config(redis_url: &str, upstream: &EchoUpstream, session_extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{redis_url}"
command_timeout = "200ms"

[session]
cookie = "connect.sid"
secrets = {SECRETS}
bearer = "opaque"
bearer_key = "api:{{id}}"
logout_path = "{LOGOUT}"
logout_all_path = "{LOGOUT_ALL}"
user_sessions_key = "user:{{user}}:sessions"
{session_extra}

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Role" = "user.role"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/"
upstream = "app"
"#,
        upstream = upstream.addr,
    )
}

struct Setup {
    redis: RedisServer,
    _upstream: EchoUpstream,
    gateway: TestGateway,
}

fn setup(session_extra: &str) -> Setup {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let gateway = TestGateway::start(&config(&redis.url(), &upstream, session_extra));
    load_sessions(&redis);
    Setup {
        redis,
        _upstream: upstream,
        gateway,
    }
}

/// The express-session fixtures as the app stored them, Alice's user set
/// (`user_sessions_set`), and a second session of Alice's, listed there too.
fn load_sessions(redis: &RedisServer) {
    let fx = fixture("express-session.json");
    let mut conn = redis.conn();
    let mut alice_value = String::new();
    for case in fx["valid"].as_array().expect("valid") {
        let key = case["redis_key"].as_str().unwrap();
        let value = case["redis_value"].as_str().unwrap();
        let ttl = case["ttl_seconds"].as_u64().unwrap();
        let _: () = conn.set_ex(key, value, ttl).unwrap();
        if case["session_id"] == ALICE {
            alice_value = value.to_owned();
        }
    }
    let _: () = conn
        .set_ex(format!("sess:{ALICE_2}"), alice_value, 86400)
        .unwrap();
    let set = &fx["user_sessions_set"];
    let set_key = set["key"].as_str().unwrap();
    assert_eq!(set_key, "user:1001:sessions");
    for member in set["members"].as_array().unwrap() {
        let _: () = conn.sadd(set_key, member.as_str().unwrap()).unwrap();
    }
    let _: () = conn.sadd(set_key, ALICE_2).unwrap();
    let _: () = conn.sadd("user:7007:sessions", VIEWER).unwrap();
}

/// The `Cookie` header for session `id`, signed as express-session does.
fn cookie(id: &str) -> String {
    format!("connect.sid={}", express_sign(id, "fixture-secret-current"))
}

fn status_with(s: &Setup, id: &str) -> u16 {
    get(
        s.gateway.addr,
        "/x",
        &[("Cookie", &cookie(id)), ("Accept", "application/json")],
    )
    .status
}

fn post(s: &Setup, path: &str, headers: &[(&str, &str)]) -> support::Response {
    request(s.gateway.addr, "POST", path, headers)
}

fn members(redis: &RedisServer, set: &str) -> Vec<String> {
    let mut ids: Vec<String> = redis.conn().smembers(set).unwrap();
    ids.sort();
    ids
}

fn exists(redis: &RedisServer, key: &str) -> bool {
    redis.conn().exists(key).unwrap()
}

#[test]
fn logout_ends_exactly_the_callers_session_and_clears_the_cookie() {
    let s = setup("");
    // Served once first, so the session is in the gateway's cache.
    let resp = get(s.gateway.addr, "/x", &[("Cookie", &cookie(ALICE))]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echoed("X-User-Id"), ["1001"]);

    // On a kept-alive connection: logout, then the next request on it.
    let mut client = Client::connect(s.gateway.addr);
    let resp = client
        .send("POST", LOGOUT, &[("Cookie", &cookie(ALICE))])
        .expect("logout answered");
    assert_eq!(resp.status, 204, "{}", resp.body);
    assert_eq!(resp.header("set-cookie"), Some(CLEARED));
    assert_eq!(resp.header("content-length"), None, "a 204 has no length");
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    let next = client
        .send(
            "GET",
            "/x",
            &[("Cookie", &cookie(ALICE)), ("Accept", "application/json")],
        )
        .expect("connection kept alive");
    assert_eq!(next.status, 401);

    assert!(!exists(&s.redis, &format!("sess:{ALICE}")));
    assert_eq!(members(&s.redis, "user:1001:sessions"), [ALICE_2]);
    // Alice's other session and other users' sessions are untouched.
    assert_eq!(status_with(&s, ALICE_2), 200);
    assert_eq!(status_with(&s, VIEWER), 200);
    assert_eq!(status_with(&s, PASSPORT), 200);

    // Again: idempotent.
    let again = post(&s, LOGOUT, &[("Cookie", &cookie(ALICE))]);
    assert_eq!(again.status, 204);
    assert_eq!(again.header("set-cookie"), Some(CLEARED));
}

#[test]
fn logout_with_an_opaque_bearer_token_ends_that_session() {
    let s = setup("");
    // The app issued VIEWER's session as an API token too (under `bearer_key`).
    let mut conn = s.redis.conn();
    let value: String = conn.get(format!("sess:{VIEWER}")).unwrap();
    let _: () = conn.set_ex(format!("api:{VIEWER}"), value, 600).unwrap();
    let auth = format!("Bearer {VIEWER}");
    assert_eq!(
        get(s.gateway.addr, "/x", &[("Authorization", &auth)]).status,
        200
    );
    let resp = post(&s, LOGOUT, &[("Authorization", &auth)]);
    assert_eq!(resp.status, 204);
    assert_eq!(
        get(s.gateway.addr, "/x", &[("Authorization", &auth)]).status,
        401
    );
    assert!(!exists(&s.redis, "user:7007:sessions"), "its only id left");
    assert!(!exists(&s.redis, &format!("api:{VIEWER}")));
    assert_eq!(status_with(&s, ALICE), 200);
}

#[test]
fn logout_all_ends_every_session_of_the_callers_user_only() {
    let s = setup("");
    for id in [ALICE, ALICE_2, VIEWER, PASSPORT] {
        assert_eq!(status_with(&s, id), 200, "before");
    }
    // From Alice's second session: both of hers end.
    let resp = post(&s, LOGOUT_ALL, &[("Cookie", &cookie(ALICE_2))]);
    assert_eq!(resp.status, 204, "{}", resp.body);
    assert_eq!(resp.header("set-cookie"), Some(CLEARED));
    assert_eq!(status_with(&s, ALICE), 401);
    assert_eq!(status_with(&s, ALICE_2), 401);
    assert!(!exists(&s.redis, "user:1001:sessions"), "the set is gone");

    assert_eq!(status_with(&s, VIEWER), 200);
    assert_eq!(status_with(&s, PASSPORT), 200);
    assert_eq!(members(&s.redis, "user:7007:sessions"), [VIEWER]);

    // Idempotent, and a session without `user.id` ends only itself.
    assert_eq!(
        post(&s, LOGOUT_ALL, &[("Cookie", &cookie(ALICE))]).status,
        204
    );
    assert_eq!(
        post(&s, LOGOUT_ALL, &[("Cookie", &cookie(PASSPORT))]).status,
        204
    );
    assert_eq!(status_with(&s, PASSPORT), 401);
    assert_eq!(status_with(&s, VIEWER), 200);
}

#[test]
fn other_methods_on_the_logout_paths_get_405_and_end_nothing() {
    let s = setup("");
    for path in [LOGOUT, LOGOUT_ALL, "/auth/./logout", "/auth//logout-all"] {
        for method in ["GET", "HEAD", "PUT", "DELETE"] {
            let resp = request(s.gateway.addr, method, path, &[("Cookie", &cookie(ALICE))]);
            assert_eq!(resp.status, 405, "{method} {path}");
            assert_eq!(resp.header("allow"), Some("POST"), "{method} {path}");
            assert_eq!(resp.header("set-cookie"), None, "{method} {path}");
        }
    }
    let resp = get(s.gateway.addr, LOGOUT, &[]);
    assert!(resp.body.contains("method_not_allowed"), "{}", resp.body);
    assert_eq!(status_with(&s, ALICE), 200);
    assert_eq!(status_with(&s, ALICE_2), 200);
    assert_eq!(members(&s.redis, "user:1001:sessions"), [ALICE_2, ALICE]);
}

#[test]
fn logout_without_a_session_still_clears_the_cookie() {
    let s = setup("");
    let unknown = cookie("noSuchSessionAnywhere00000000000");
    let tampered = "connect.sid=s%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lTA";
    for path in [LOGOUT, LOGOUT_ALL] {
        for headers in [
            vec![],
            vec![("Cookie", unknown.as_str())],
            vec![("Cookie", tampered)],
        ] {
            let resp = post(&s, path, &headers);
            assert_eq!(resp.status, 204, "{path} {headers:?}");
            assert_eq!(resp.header("set-cookie"), Some(CLEARED));
        }
    }
    // A tampered cookie naming Alice's id ends nothing.
    assert_eq!(status_with(&s, ALICE), 200);
}

#[test]
fn logout_redirects_and_clears_with_the_configured_path_and_domain() {
    let s = setup(
        "logout_redirect = \"/goodbye\"\ncookie_path = \"/app\"\ncookie_domain = \"example.test\"",
    );
    let resp = post(&s, LOGOUT, &[("Cookie", &cookie(ALICE))]);
    assert_eq!(resp.status, 303);
    assert_eq!(resp.header("location"), Some("/goodbye"));
    assert_eq!(
        resp.header("set-cookie"),
        Some(
            "connect.sid=; Path=/app; Domain=example.test; Expires=Thu, 01 Jan 1970 00:00:00 \
             GMT; Max-Age=0; HttpOnly; SameSite=Lax"
        )
    );
    assert_eq!(status_with(&s, ALICE), 401);
}

#[test]
fn logout_while_redis_is_down_is_503_and_keeps_the_cookie() {
    let mut s = setup("");
    s.redis.stop();
    for path in [LOGOUT, LOGOUT_ALL] {
        let resp = post(&s, path, &[("Cookie", &cookie(ALICE))]);
        assert_eq!(resp.status, 503, "{path}");
        assert_eq!(resp.header("set-cookie"), None, "{path}");
        assert_eq!(resp.header("retry-after"), Some("1"), "{path}");
    }
    // Without a session there is nothing to end: no Redis call, still 204.
    assert_eq!(post(&s, LOGOUT, &[]).status, 204);
}

/// A logout POST with `headers`, for `Host: host`, carrying `id`'s cookie.
fn logout_from(s: &Setup, path: &str, host: &str, id: &str, headers: &[(&str, &str)]) -> u16 {
    let cookie = cookie(id);
    let mut all = vec![("Host", host), ("Cookie", cookie.as_str())];
    all.extend_from_slice(headers);
    let resp = post(s, path, &all);
    if resp.status == 403 {
        assert_eq!(
            resp.header("set-cookie"),
            None,
            "a refusal keeps the cookie"
        );
        assert!(resp.body.contains("forbidden"), "{}", resp.body);
    }
    resp.status
}

#[test]
fn a_cross_site_logout_is_refused_and_leaves_the_session_alone() {
    let s = setup("");
    // As a browser at http://127.0.0.1:<port>/ would send them.
    let host = s.gateway.addr.to_string();
    let own = format!("http://{host}");
    let other_port = format!("http://127.0.0.1:{}", s.gateway.addr.port() ^ 1);
    let https = format!("https://{host}");
    for (path, headers) in [
        (LOGOUT, vec![("Sec-Fetch-Site", "cross-site")]),
        // Sec-Fetch-Site decides when a browser sends it.
        (
            LOGOUT_ALL,
            vec![("Sec-Fetch-Site", "cross-site"), ("Origin", own.as_str())],
        ),
        (LOGOUT, vec![("Origin", "http://evil.test")]),
        (LOGOUT_ALL, vec![("Origin", "null")]),
        (LOGOUT, vec![("Origin", https.as_str())]),
        (LOGOUT, vec![("Origin", other_port.as_str())]),
    ] {
        let status = logout_from(&s, path, &host, ALICE, &headers);
        assert_eq!(status, 403, "{path} {headers:?}");
    }
    assert!(exists(&s.redis, &format!("sess:{ALICE}")));
    assert_eq!(members(&s.redis, "user:1001:sessions"), [ALICE_2, ALICE]);
    assert_eq!(status_with(&s, ALICE), 200);
    assert_eq!(status_with(&s, ALICE_2), 200);
    // Logged like any refusal: forbidden, with its reason.
    let log = s.gateway.access_log_until(|l| l["reason"] == "cross_site");
    let refused: Vec<_> = log.iter().filter(|l| l["reason"] == "cross_site").collect();
    assert!(!refused.is_empty(), "{log:?}");
    assert_eq!(refused[0]["status"], 403);
    assert_eq!(refused[0]["decision"], "forbidden");

    // The same site (either header), a typed URL, and a client that sends
    // neither header (curl, an app) log out.
    let same_origin = [("Sec-Fetch-Site", "same-origin")];
    assert_eq!(logout_from(&s, LOGOUT, &host, ALICE, &same_origin), 204);
    assert_eq!(status_with(&s, ALICE), 401);
    let origin = [("Origin", own.as_str())];
    assert_eq!(logout_from(&s, LOGOUT, &host, ALICE_2, &origin), 204);
    assert_eq!(status_with(&s, ALICE_2), 401);
    let typed = [("Sec-Fetch-Site", "none")];
    assert_eq!(logout_from(&s, LOGOUT, &host, PASSPORT, &typed), 204);
    assert_eq!(status_with(&s, PASSPORT), 401);
    assert_eq!(logout_from(&s, LOGOUT_ALL, &host, VIEWER, &[]), 204);
    assert_eq!(status_with(&s, VIEWER), 401);
}

#[test]
fn the_origin_is_https_only_when_a_trusted_proxy_says_so() {
    let forwarded = [
        ("X-Forwarded-Proto", "https"),
        ("Origin", "https://app.test"),
    ];
    // A client's own X-Forwarded-Proto is not believed.
    let s = setup("");
    assert_eq!(logout_from(&s, LOGOUT, "app.test", ALICE, &forwarded), 403);
    assert_eq!(status_with(&s, ALICE), 200);
    let plain = [
        ("X-Forwarded-Proto", "https"),
        ("Origin", "http://app.test"),
    ];
    assert_eq!(logout_from(&s, LOGOUT, "App.Test:80", ALICE, &plain), 204);
    assert_eq!(status_with(&s, ALICE), 401);

    // Behind a TLS-terminating proxy the gateway trusts, it is.
    let s = setup("\n[rate_limit]\ntrusted_proxies = [\"127.0.0.1/32\"]");
    assert_eq!(logout_from(&s, LOGOUT, "app.test", ALICE, &plain), 403);
    assert_eq!(status_with(&s, ALICE), 200);
    assert_eq!(logout_from(&s, LOGOUT, "app.test", ALICE, &forwarded), 204);
    assert_eq!(status_with(&s, ALICE), 401);
}

// ---------------------------------------------------------------------------
// The CLI

fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(support::gateway::binary())
        .arg("session")
        .args(args)
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sessiongate")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `session create` and returns (id, Cookie header).
fn create(config: &Path, user: &str) -> (String, String) {
    let out = cli(
        config,
        &[
            "create",
            "--user",
            user,
            "--field",
            "role=admin",
            "--ttl",
            "1h",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
            .trim()
            .to_owned()
    };
    (line("session:"), line("cookie:"))
}

#[test]
fn cli_sessions_pass_are_listed_and_revoked() {
    let s = setup("");
    let config = &s.gateway.config_path;
    let (id, cookie_header) = create(config, "4242");
    let resp = get(s.gateway.addr, "/x", &[("Cookie", &cookie_header)]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echoed("X-User-Id"), ["4242"]);
    assert_eq!(resp.echoed("X-User-Role"), ["admin"]);
    assert_eq!(members(&s.redis, "user:4242:sessions"), [id.as_str()]);

    // `list` shows live ids with their TTL, and stale ones as such (left in the set).
    let _: () = s
        .redis
        .conn()
        .sadd("user:4242:sessions", "goneGone")
        .unwrap();
    let out = cli(config, &["list", "--user", "4242"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let live = text.lines().find(|l| l.contains(&id)).expect(&text);
    assert!(live.starts_with("session"), "{text}");
    let ttl: u64 = live
        .split("ttl ")
        .nth(1)
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {live:?}"));
    assert!((3590..=3600).contains(&ttl), "{live}");
    let stale = text.lines().find(|l| l.contains("goneGone")).expect(&text);
    assert!(stale.contains("stale"), "{text}");
    assert!(text.contains("1 live, 1 stale"), "{text}");

    // `revoke`: ends it (and unlists it); requests are refused as soon as the
    // cache has heard of the delete (milliseconds; allow a loaded machine 2 s).
    let out = cli(config, &["revoke", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let status = loop {
        let status = get(
            s.gateway.addr,
            "/x",
            &[("Cookie", &cookie_header), ("Accept", "application/json")],
        )
        .status;
        if status == 401 || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert_eq!(status, 401);
    assert_eq!(members(&s.redis, "user:4242:sessions"), ["goneGone"]);
    let out = cli(config, &["list", "--user", "4242"]);
    assert!(!stdout(&out).contains(&id), "{}", stdout(&out));

    // Unknown id: exit 1.
    let out = cli(config, &["revoke", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no session with that id"));
}

#[test]
fn cli_revoke_user_ends_every_session_of_the_user() {
    let s = setup("");
    let config = &s.gateway.config_path;
    let (_, first) = create(config, "1001");
    let (_, second) = create(config, "1001");
    for c in [
        first.as_str(),
        second.as_str(),
        &cookie(ALICE),
        &cookie(ALICE_2),
    ] {
        assert_eq!(get(s.gateway.addr, "/x", &[("Cookie", c)]).status, 200);
    }
    assert_eq!(members(&s.redis, "user:1001:sessions").len(), 4);

    let out = cli(config, &["revoke-user", "1001"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ended 4 sessions");
    for c in [
        first.as_str(),
        second.as_str(),
        &cookie(ALICE),
        &cookie(ALICE_2),
    ] {
        let resp = get(
            s.gateway.addr,
            "/x",
            &[("Cookie", c), ("Accept", "application/json")],
        );
        assert_eq!(resp.status, 401);
    }
    assert!(!exists(&s.redis, "user:1001:sessions"));
    assert_eq!(status_with(&s, VIEWER), 200);

    // Nothing left: still fine.
    let out = cli(config, &["revoke-user", "1001"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out).trim(), "ended 0 sessions");
    let out = cli(config, &["list", "--user", "1001"]);
    assert_eq!(stdout(&out).trim(), "0 live, 0 stale");
}

#[test]
fn cli_names_an_unreachable_redis_without_its_password() {
    let mut redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let dir = tempfile::tempdir().unwrap();
    let with_password = format!("redis://ops:hunter2@127.0.0.1:{}/0", redis.port);
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&with_password, &upstream, "")).unwrap();
    redis.stop();

    for args in [
        vec!["create", "--user", "1"],
        vec!["list", "--user", "1"],
        vec!["revoke-user", "1"],
        vec!["revoke", ALICE],
    ] {
        let out = cli(&path, &args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        let message = stderr(&out);
        let redacted = format!("redis://ops:***@127.0.0.1:{}/0", redis.port);
        assert!(message.contains(&redacted), "{args:?}: {message}");
        assert!(!message.contains("hunter2"), "{args:?}: {message}");
    }
}

#[test]
fn cli_user_commands_need_user_sessions_key() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let text = config(&redis.url(), &upstream, "")
        .replace("logout_all_path = \"/auth/logout-all\"\n", "")
        .replace("user_sessions_key = \"user:{user}:sessions\"\n", "");
    std::fs::write(&path, text).unwrap();
    for args in [vec!["revoke-user", "1001"], vec!["list", "--user", "1001"]] {
        let out = cli(&path, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("user_sessions_key"),
            "{}",
            stderr(&out)
        );
    }
    // `create` works without it, and lists nothing.
    let out = cli(&path, &["create", "--user", "1001"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let keys: Vec<String> = redis.conn().keys("user:*").unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

// ---------------------------------------------------------------------------
// Bearer JWTs

const HS_SECRET: &str = "fixture-jwt-hs256-secret";
const CAROL_TOKEN_ID: &str = "b5742c46-b6bf-448b-82c4-170aa08817d4";

/// A token for user 3003 with token id `id`, signed like the fixture's.
fn carol_token(id: &str) -> String {
    let claims = serde_json::json!({
        "userId": "3003",
        "tokenId": id,
        "type": "access",
        "exp": 4_951_087_769u64,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS_SECRET.as_bytes()),
    )
    .expect("sign a token")
}

#[test]
fn jwt_logout_ends_the_token_and_logout_all_every_token_and_session_of_its_user() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let text = config(
        &redis.url(),
        &upstream,
        "user_field = \"claims.userId\"\nuser_tokens_key = \"user:{user}:tokens\"",
    )
    .replace(
        "bearer = \"opaque\"\nbearer_key = \"api:{id}\"",
        "bearer = \"jwt\"",
    ) + &format!("\n[jwt]\nalgorithms = [\"HS256\"]\nsecret = \"{HS_SECRET}\"\n");
    let gateway = TestGateway::start(&text);
    load_sessions(&redis);

    let fx = fixture("jwt.json");
    let hs = &fx["valid"][0];
    assert_eq!(hs["name"], "hs256");
    let mut conn = redis.conn();
    let value = hs["redis_value"].as_str().unwrap();
    let _: () = conn
        .set_ex(format!("token:{CAROL_TOKEN_ID}"), value, 600)
        .unwrap();
    let _: () = conn.set_ex("token:carol-second", value, 600).unwrap();
    let _: () = conn
        .sadd("user:3003:tokens", &[CAROL_TOKEN_ID, "carol-second"])
        .unwrap();
    // A cookie session of Carol's, listed in her session set.
    let _: () = conn
        .set_ex("sess:carolCookieSession", r#"{"user":{"id":"3003"}}"#, 600)
        .unwrap();
    let _: () = conn
        .sadd("user:3003:sessions", "carolCookieSession")
        .unwrap();

    let first = format!("Bearer {}", hs["token"].as_str().unwrap());
    let second = format!("Bearer {}", carol_token("carol-second"));
    let status = |auth: &str| get(gateway.addr, "/x", &[("Authorization", auth)]).status;
    assert_eq!(status(&first), 200);
    assert_eq!(status(&second), 200);

    let resp = request(gateway.addr, "POST", LOGOUT, &[("Authorization", &first)]);
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("set-cookie"), Some(CLEARED));
    assert_eq!(status(&first), 401);
    assert_eq!(status(&second), 200);
    assert_eq!(members(&redis, "user:3003:tokens"), ["carol-second"]);

    let resp = request(
        gateway.addr,
        "POST",
        LOGOUT_ALL,
        &[("Authorization", &second)],
    );
    assert_eq!(resp.status, 204);
    assert_eq!(status(&second), 401);
    assert!(!exists(&redis, "sess:carolCookieSession"));
    assert!(!exists(&redis, "user:3003:tokens"));
    assert!(!exists(&redis, "user:3003:sessions"));
    // Other users are untouched.
    assert!(exists(&redis, &format!("sess:{ALICE}")));
    assert_eq!(members(&redis, "user:1001:sessions"), [ALICE_2, ALICE]);

    // `session revoke-user` ends tokens too.
    let _: () = conn.set_ex("token:carol-third", value, 600).unwrap();
    let _: () = conn.sadd("user:3003:tokens", "carol-third").unwrap();
    let out = cli(&gateway.config_path, &["revoke-user", "3003"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "ended 0 sessions and 1 tokens");
    assert_eq!(
        status(&format!("Bearer {}", carol_token("carol-third"))),
        401
    );
}
