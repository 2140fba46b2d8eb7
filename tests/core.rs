//! End to end: the real gateway, a real redis-server and an echo upstream.
//! Sessions and cookies come from tests/fixtures, made by express-session.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::Value;
use support::{fixture, get, request, Client, EchoUpstream, RedisServer, TestGateway};

const SECRETS: &str = r#"["fixture-secret-current", "fixture-secret-previous"]"#;

struct Setup {
    redis: RedisServer,
    upstream: EchoUpstream,
    gateway: TestGateway,
}

/// A typical config: express cookies, opaque bearer, public, admin and app routes.
fn config(
    redis: &RedisServer,
    upstream: &EchoUpstream,
    session_extra: &str,
    secrets: &str,
) -> String {
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
secrets = {secrets}
bearer = "opaque"
bearer_key = "api:{{id}}"
key = "sess:{{id}}"
{session_extra}

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Email" = "user.email"
"X-User-Role" = "user.role"
"X-Passport-User" = "passport.user"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/public/"
upstream = "app"
access = "public"

[[route]]
name = "admin"
path_prefix = "/admin/"
upstream = "app"
access = "authenticated"
roles = ["admin"]

[[route]]
name = "app"
path_prefix = "/"
upstream = "app"
access = "authenticated"
on_unauthenticated = {{ redirect = "/login" }}
"#,
        url = redis.url(),
        upstream = upstream.addr,
    )
}

fn setup() -> Setup {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let gateway = TestGateway::start(&config(&redis, &upstream, "", SECRETS));
    Setup {
        redis,
        upstream,
        gateway,
    }
}

/// Loads every valid express-session fixture into Redis, as the app would have.
fn load_express_sessions(redis: &RedisServer) -> Vec<Value> {
    support::load_fixture(redis, "express-session.json")
}

const ALICE_COOKIE: &str = "connect.sid=s%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lT0";
const VIEWER_COOKIE: &str = "connect.sid=s%3A27D-Pq_tbBxSbRlpuRSKUFOxYmHQg_Nr.20FKr79EoBEozE16VHbg0I5vE1p4erFmMImd%2FW12UDY";

#[test]
fn every_valid_express_session_fixture_is_forwarded_with_its_identity() {
    let s = setup();
    let valid = load_express_sessions(&s.redis);
    let header_for = |field: &str| match field {
        "user.id" => "X-User-Id",
        "user.email" => "X-User-Email",
        "user.role" => "X-User-Role",
        "passport.user" => "X-Passport-User",
        _ => "",
    };
    for case in valid {
        let name = case["name"].as_str().unwrap();
        let cookie = case["cookie_header"].as_str().unwrap();
        let resp = get(s.gateway.addr, "/dashboard", &[("Cookie", cookie)]);
        assert_eq!(resp.status, 200, "{name}: {}", resp.body);
        for (field, want) in case["expect"].as_object().unwrap() {
            let header = header_for(field);
            if header.is_empty() {
                continue;
            }
            assert_eq!(
                resp.echoed(header),
                vec![want.as_str().unwrap()],
                "{name}: {field}"
            );
        }
    }
}

#[test]
fn every_invalid_express_cookie_fixture_gets_401_and_never_reaches_the_app() {
    let s = setup();
    load_express_sessions(&s.redis);
    let fx = fixture("express-session.json");
    for case in fx["invalid"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let cookie = case["cookie_header"].as_str().unwrap();
        let gateway;
        let addr = match case.get("secrets_override") {
            Some(secrets) => {
                gateway =
                    TestGateway::start(&config(&s.redis, &s.upstream, "", &secrets.to_string()));
                gateway.addr
            }
            None => s.gateway.addr,
        };
        let resp = get(
            addr,
            "/dashboard",
            &[("Cookie", cookie), ("Accept", "application/json")],
        );
        assert_eq!(resp.status, 401, "{name}");
        assert!(
            resp.body.contains("unauthenticated"),
            "{name}: {}",
            resp.body
        );
    }
    assert_eq!(s.upstream.requests(), 0);
}

#[test]
fn the_first_of_two_session_cookies_wins() {
    let s = setup();
    load_express_sessions(&s.redis);
    let both = format!("{ALICE_COOKIE}; {}", VIEWER_COOKIE);
    let resp = get(s.gateway.addr, "/x", &[("Cookie", &both)]);
    assert_eq!(resp.echoed("X-User-Id"), vec!["1001"]);
    let bad_first = format!("connect.sid=s%3Anope.bad; {ALICE_COOKIE}");
    assert_eq!(
        get(s.gateway.addr, "/x", &[("Cookie", &bad_first)]).status,
        401
    );
}

#[test]
fn a_session_deleted_from_redis_is_refused_within_milliseconds() {
    let s = setup();
    load_express_sessions(&s.redis);
    assert_eq!(
        get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]).status,
        200
    );
    let _: () = s
        .redis
        .conn()
        .del("sess:f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o")
        .unwrap();
    // The cache learns of the DEL from Redis's keyspace event, which races the
    // next request by a fraction of a millisecond.
    let deleted = Instant::now();
    while get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]).status != 401 {
        assert!(
            deleted.elapsed() < Duration::from_secs(1),
            "a deleted session was still served after 1 s (the cache's cap is 30 s)"
        );
    }
}

#[test]
fn plain_cookies_and_opaque_bearer_tokens_resolve_the_same_session() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let cfg = config(&redis, &upstream, "", SECRETS)
        .replace(r#"cookie_format = "express""#, r#"cookie_format = "plain""#)
        .replace(r#""api:{id}""#, r#""same_as_cookie""#);
    let gateway = TestGateway::start(&cfg);
    let _: () = redis
        .conn()
        .set_ex(
            "sess:opaque-123",
            r#"{"user":{"id":"42","role":"viewer"}}"#,
            60,
        )
        .unwrap();

    let by_cookie = get(gateway.addr, "/x", &[("Cookie", "connect.sid=opaque-123")]);
    assert_eq!(by_cookie.status, 200);
    assert_eq!(by_cookie.echoed("X-User-Id"), vec!["42"]);

    let by_bearer = get(
        gateway.addr,
        "/x",
        &[("Authorization", "Bearer opaque-123")],
    );
    assert_eq!(by_bearer.status, 200);
    assert_eq!(by_bearer.echoed("X-User-Role"), vec!["viewer"]);

    let unknown = get(gateway.addr, "/x", &[("Authorization", "Bearer nope-456")]);
    assert_eq!(unknown.status, 401);
    assert_eq!(
        unknown.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    let malformed = get(gateway.addr, "/x", &[("Authorization", "Bearer a b c")]);
    assert_eq!(malformed.status, 401);
    assert_eq!(upstream.requests(), 2);
}

/// With signed cookies, a bare session id is no bearer token: bearer ids are
/// looked up under `bearer_key`, never under the cookie's `key`.
#[test]
fn a_bare_session_id_is_no_bearer_token_when_cookies_are_signed() {
    let s = setup();
    load_express_sessions(&s.redis);
    let alice_id = "f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o";
    assert_eq!(
        get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]).status,
        200
    );
    let bare_cookie = format!("connect.sid={alice_id}");
    let json = ("Accept", "application/json");
    assert_eq!(
        get(s.gateway.addr, "/x", &[("Cookie", &bare_cookie), json]).status,
        401
    );
    let as_bearer = format!("Bearer {alice_id}");
    let resp = get(s.gateway.addr, "/x", &[("Authorization", &as_bearer)]);
    assert_eq!(resp.status, 401, "{}", resp.body);
    assert_eq!(s.upstream.requests(), 1);

    // An API token the app stored under `bearer_key` works as a bearer token,
    // and not as a cookie.
    let _: () = s
        .redis
        .conn()
        .set_ex(
            "api:tok-9f2c",
            r#"{"user":{"id":"77","role":"viewer"}}"#,
            60,
        )
        .unwrap();
    let resp = get(
        s.gateway.addr,
        "/x",
        &[("Authorization", "Bearer tok-9f2c")],
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.echoed("X-User-Id"), vec!["77"]);
    let resp = get(
        s.gateway.addr,
        "/x",
        &[("Cookie", "connect.sid=tok-9f2c"), json],
    );
    assert_eq!(resp.status, 401);
}

/// `allow_unsigned_bearer = true` is the explicit way back to bare session
/// ids as bearer tokens; without it the gateway does not start.
#[test]
fn reusing_the_signed_cookies_key_for_bearer_ids_needs_an_explicit_opt_in() {
    let s = setup();
    load_express_sessions(&s.redis);
    let same =
        config(&s.redis, &s.upstream, "", SECRETS).replace(r#""api:{id}""#, r#""same_as_cookie""#);
    let Err(err) = TestGateway::try_start(&same) else {
        panic!("the gateway must refuse to start");
    };
    assert!(err.contains("session.bearer_key"), "{err}");
    assert!(err.contains("allow_unsigned_bearer = true"), "{err}");

    let opted_in = same + "\n";
    let opted_in = opted_in.replace(
        "bearer_key = \"same_as_cookie\"",
        "bearer_key = \"same_as_cookie\"\nallow_unsigned_bearer = true",
    );
    let gateway = TestGateway::start(&opted_in);
    let resp = get(
        gateway.addr,
        "/x",
        &[("Authorization", "Bearer f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o")],
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
}

#[test]
fn sessions_stored_as_redis_hashes_are_read_field_by_field() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let cfg = config(&redis, &upstream, r#"value = "hash""#, SECRETS)
        .replace(r#"cookie_format = "express""#, r#"cookie_format = "plain""#)
        .replace(r#""X-User-Id" = "user.id""#, r#""X-User-Id" = "uid""#);
    let gateway = TestGateway::start(&cfg);
    let _: () = redis
        .conn()
        .hset_multiple("sess:h1", &[("uid", "77"), ("role", "x")])
        .unwrap();
    let resp = get(gateway.addr, "/x", &[("Cookie", "connect.sid=h1")]);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echoed("X-User-Id"), vec!["77"]);
    // A JSON string where a hash is expected is not a session.
    let _: () = redis.conn().set("sess:s1", "{}").unwrap();
    assert_eq!(
        get(gateway.addr, "/x", &[("Cookie", "connect.sid=s1")]).status,
        401
    );
}

#[test]
fn spoofed_identity_headers_never_reach_the_upstream() {
    let s = setup();
    load_express_sessions(&s.redis);
    let spoofs = [
        ("X-User-Id", "evil"),
        ("x_user_id", "evil"),
        ("X-USER-ID", "evil"),
        ("x-user-id", "evil2"),
        ("X_User_Role", "admin"),
        ("x-passport-user", "evil"),
    ];
    // Public route: every copy is removed, nothing is set.
    let resp = get(s.gateway.addr, "/public/page", &spoofs);
    assert_eq!(resp.status, 200);
    for (name, _) in resp.echoed_headers() {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            !folded.starts_with("x-user") && !folded.starts_with("x-passport"),
            "{name} reached the app"
        );
    }
    // Authenticated route: only the gateway's own values arrive.
    let mut headers = spoofs.to_vec();
    headers.push(("Cookie", VIEWER_COOKIE));
    let resp = get(s.gateway.addr, "/app", &headers);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.echoed("X-User-Id"), vec!["7007"]);
    assert_eq!(resp.echoed("X-User-Role"), vec!["viewer"]);
    assert!(resp.echoed("x_user_id").is_empty());
    assert!(resp.echoed("X_User_Role").is_empty());
    // The session has no passport field, so the spoofed one is gone and not replaced.
    assert!(resp.echoed("x-passport-user").is_empty());
}

#[test]
fn admin_routes_require_the_admin_role() {
    let s = setup();
    load_express_sessions(&s.redis);
    let viewer = get(s.gateway.addr, "/admin/users", &[("Cookie", VIEWER_COOKIE)]);
    assert_eq!(viewer.status, 403);
    assert!(viewer.body.contains("forbidden"));
    let admin = get(s.gateway.addr, "/admin/users", &[("Cookie", ALICE_COOKIE)]);
    assert_eq!(admin.status, 200);
    assert_eq!(admin.echoed("X-User-Role"), vec!["admin"]);
    // The directory itself is under the admin route too.
    assert_eq!(
        get(s.gateway.addr, "/admin", &[("Cookie", VIEWER_COOKIE)]).status,
        403
    );
}

#[test]
fn paths_are_normalised_before_routes_are_matched() {
    let s = setup();
    load_express_sessions(&s.redis);
    let json = ("Accept", "application/json");
    for path in [
        "/public/../admin/users",
        "/public/%2e%2e/admin/users",
        "/public/%2E%2e/admin/users",
        "/public/./../admin/",
        "//public/../admin/",
        "/public;/../admin/",
    ] {
        assert_eq!(
            get(s.gateway.addr, path, &[json]).status,
            401,
            "{path} bypassed auth"
        );
        assert_eq!(
            get(s.gateway.addr, path, &[json, ("Cookie", VIEWER_COOKIE)]).status,
            403,
            "{path}"
        );
    }
    for path in [
        "/public/..%2fadmin/",
        "/public/..%2Fadmin/",
        "/public/..%5cadmin/",
        "/public/%00",
    ] {
        assert_eq!(get(s.gateway.addr, path, &[json]).status, 400, "{path}");
    }
    assert_eq!(get(s.gateway.addr, "//public//a", &[]).status, 200);
    assert_eq!(s.upstream.requests(), 1);
}

#[test]
fn browsers_are_redirected_to_login_and_apis_get_json() {
    let s = setup();
    let browser = get(
        s.gateway.addr,
        "/reports/2026?q=a%20b",
        &[("Accept", "text/html,application/xhtml+xml")],
    );
    assert_eq!(browser.status, 302);
    assert_eq!(
        browser.header("location"),
        Some("/login?return_to=/reports/2026%3Fq%3Da%2520b")
    );
    let api = get(
        s.gateway.addr,
        "/reports",
        &[("Accept", "application/json")],
    );
    assert_eq!(api.status, 401);
    assert_eq!(api.header("content-type"), Some("application/json"));
    assert!(api.header("www-authenticate").is_none());
    let post = request(
        s.gateway.addr,
        "POST",
        "/reports",
        &[("Accept", "text/html")],
    );
    assert_eq!(post.status, 401);
    // A path that would be protocol-relative comes back as a single-slash path.
    let sneaky = get(
        s.gateway.addr,
        "//evil.example/x",
        &[("Accept", "text/html")],
    );
    assert_eq!(
        sneaky.header("location"),
        Some("/login?return_to=/evil.example/x")
    );
}

#[test]
fn rejections_keep_the_connection_alive() {
    let s = setup();
    load_express_sessions(&s.redis);
    let mut client = Client::connect(s.gateway.addr);
    for _ in 0..3 {
        let resp = client
            .send("GET", "/x", &[("Accept", "application/json")])
            .expect("response on the same connection");
        assert_eq!(resp.status, 401);
        assert_ne!(resp.header("connection"), Some("close"));
    }
    let ok = client
        .send("GET", "/x", &[("Cookie", ALICE_COOKIE)])
        .expect("response");
    assert_eq!(ok.status, 200);
}

#[test]
fn redis_outage_gives_503_then_recovers_without_a_restart() {
    let mut s = setup();
    load_express_sessions(&s.redis);
    assert_eq!(
        get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]).status,
        200
    );

    s.redis.stop();
    // The cache may answer for the few milliseconds it takes to notice that
    // its invalidation channel is gone; after that, every lookup needs Redis.
    let stopped = Instant::now();
    loop {
        let status = get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]).status;
        if status == 503 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "no 503 after 1 s"
        );
    }
    let before = s.upstream.requests();
    for _ in 0..5 {
        let resp = get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]);
        assert_eq!(resp.status, 503);
        assert_eq!(resp.header("retry-after"), Some("1"));
        assert!(
            resp.header("set-cookie").is_none(),
            "a store error must not touch the cookie"
        );
    }
    // Public routes do not need Redis.
    assert_eq!(get(s.gateway.addr, "/public/x", &[]).status, 200);
    assert_eq!(
        s.upstream.requests(),
        before + 1,
        "nothing authenticated was forwarded"
    );

    s.redis.restart();
    load_express_sessions(&s.redis);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]).status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "gateway did not recover after redis came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_slow_redis_is_a_503_not_a_hang() {
    let s = setup();
    load_express_sessions(&s.redis);
    let redis_pid = {
        let mut conn = s.redis.conn();
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .unwrap()
            .trim()
            .to_owned()
    };
    // Freeze redis: connections stay open but nothing answers.
    std::process::Command::new("kill")
        .args(["-STOP", &redis_pid])
        .status()
        .unwrap();
    let started = Instant::now();
    let resp = get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]);
    let took = started.elapsed();
    std::process::Command::new("kill")
        .args(["-CONT", &redis_pid])
        .status()
        .unwrap();
    assert_eq!(resp.status, 503);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(s.upstream.requests(), 0);
}

#[test]
fn unknown_routes_404_and_dead_upstreams_502() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = config(&redis, &upstream, "", SECRETS)
        .replace("path_prefix = \"/\"\n", "path_prefix = \"/app/\"\n")
        .replace(
            &format!("addrs = [\"{}\"]", upstream.addr),
            &format!("addrs = [\"{dead}\"]"),
        );
    let gateway = TestGateway::start(&cfg);
    assert_eq!(get(gateway.addr, "/elsewhere", &[]).status, 404);
    let resp = get(gateway.addr, "/public/x", &[]);
    assert_eq!(resp.status, 502);
    assert!(resp.body.contains("bad_gateway"));
}

#[test]
fn requests_are_spread_round_robin_over_an_upstreams_addresses() {
    let redis = RedisServer::start();
    let a = EchoUpstream::start("127.0.0.1:0").unwrap();
    let b = EchoUpstream::start("127.0.0.1:0").unwrap();
    let cfg = config(&redis, &a, "", SECRETS).replace(
        &format!("addrs = [\"{}\"]", a.addr),
        &format!("addrs = [\"{}\", \"{}\"]", a.addr, b.addr),
    );
    let gateway = TestGateway::start(&cfg);
    for _ in 0..10 {
        assert_eq!(get(gateway.addr, "/public/x", &[]).status, 200);
    }
    assert_eq!((a.requests(), b.requests()), (5, 5));
}

#[test]
fn oversized_request_headers_get_431() {
    let s = setup();
    let big = "a".repeat(70 * 1024);
    let resp = get(s.gateway.addr, "/public/x", &[("X-Big", &big)]);
    assert_eq!(resp.status, 431);
    assert_eq!(s.upstream.requests(), 0);
}

#[test]
fn the_gateway_refuses_to_start_without_redis() {
    let mut redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let cfg = config(&redis, &upstream, "", SECRETS);
    redis.stop();
    let log = match TestGateway::try_start(&cfg) {
        Ok(_) => panic!("started without redis"),
        Err(log) => log,
    };
    assert!(
        log.contains(&format!("redis at redis://127.0.0.1:{}/0", redis.port)),
        "{log}"
    );
    assert!(log.contains("refusing to start"), "{log}");
}
