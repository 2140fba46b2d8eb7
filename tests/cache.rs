//! The session cache against a real redis-server: hits spare Redis, and any
//! client's DEL, overwrite or expiry takes effect within milliseconds, while
//! express-session's EXPIRE (`touch`) on every request leaves entries alone.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::{get, EchoUpstream, RedisServer, TestGateway};

/// How soon a change must reach the gateway: far inside the cache's 30 s cap
/// (what a missed change would cost), with room for a debug build on a loaded
/// machine. The latency itself is the benchmark's revocation mode to measure.
const SOON: Duration = Duration::from_secs(1);

fn config(redis: &RedisServer, upstream: &EchoUpstream, cache: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"
command_timeout = "200ms"

[session]
cookie = "sid"
cookie_format = "plain"
key = "sess:{{id}}"

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Role" = "user.role"

[cache]
{cache}

[admin]
listen = "127.0.0.1:0"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/"
upstream = "app"
"#,
        url = redis.url(),
        upstream = upstream.addr,
    )
}

/// How many GETs Redis has served (its own command statistics).
/// How many GETs Redis has served (its own command statistics).
fn gets(redis: &RedisServer) -> u64 {
    calls(redis, "get")
}

/// How many times Redis has run `command` (its own command statistics).
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

struct Setup {
    redis: RedisServer,
    _upstream: EchoUpstream,
    gateway: TestGateway,
}

fn setup(cache: &str) -> Setup {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&config(&redis, &upstream, cache));
    let s = Setup {
        redis,
        _upstream: upstream,
        gateway,
    };
    if !cache.contains("enabled = false") {
        wait_until_live(&s);
    }
    s
}

/// The cache serves nothing until its invalidation channel is subscribed;
/// wait for that so the assertions below are about the live cache.
fn wait_until_live(s: &Setup) {
    let _: () = s
        .redis
        .conn()
        .set("sess:probe", r#"{"user":{"id":"p"}}"#)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        get(s.gateway.addr, "/", &[("Cookie", "sid=probe")]);
        let before = gets(&s.redis);
        get(s.gateway.addr, "/", &[("Cookie", "sid=probe")]);
        if gets(&s.redis) == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cache never went live:\n{}",
            s.gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(s: &Setup, id: &str) -> u16 {
    get(s.gateway.addr, "/", &[("Cookie", &format!("sid={id}"))]).status
}

/// Polls until `id` gets `want`, for at most `limit`; returns how long it took.
fn eventually(s: &Setup, id: &str, want: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if status(s, id) == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{id} did not become {want} within {limit:?}"
        );
    }
}

#[test]
fn a_cached_session_is_served_without_asking_redis() {
    let s = setup("");
    let _: () = s
        .redis
        .conn()
        .set_ex("sess:a", r#"{"user":{"id":"1","role":"admin"}}"#, 60)
        .unwrap();
    // The SET's own keyspace event may arrive just after the first lookup
    // cached the session and evict it once; let it land before counting.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(status(&s, "a"), 200);
    let after_first = gets(&s.redis);
    for _ in 0..20 {
        let resp = get(s.gateway.addr, "/", &[("Cookie", "sid=a")]);
        assert_eq!(resp.echoed("X-User-Id"), vec!["1"]);
    }
    assert_eq!(gets(&s.redis), after_first, "hits must not reach redis");
}

#[test]
fn del_and_unlink_by_any_client_revoke_within_milliseconds() {
    let s = setup("");
    for (id, command) in [("d", "DEL"), ("u", "UNLINK")] {
        let _: () = s
            .redis
            .conn()
            .set_ex(format!("sess:{id}"), r#"{"user":{"id":"1"}}"#, 60)
            .unwrap();
        assert_eq!(status(&s, id), 200);
        assert_eq!(status(&s, id), 200);
        let _: () = redis::cmd(command)
            .arg(format!("sess:{id}"))
            .query(&mut s.redis.conn())
            .unwrap();
        let took = eventually(&s, id, 401, SOON);
        eprintln!("{command}: refused after {took:?}");
    }
}

#[test]
fn an_overwritten_session_is_served_as_overwritten() {
    let s = setup("");
    let mut conn = s.redis.conn();
    let _: () = conn
        .set_ex("sess:o", r#"{"user":{"id":"1","role":"admin"}}"#, 60)
        .unwrap();
    assert_eq!(
        get(s.gateway.addr, "/", &[("Cookie", "sid=o")]).echoed("X-User-Role"),
        vec!["admin"]
    );
    let _: () = conn
        .set_ex("sess:o", r#"{"user":{"id":"1","role":"viewer"}}"#, 60)
        .unwrap();
    let started = Instant::now();
    loop {
        let role = get(s.gateway.addr, "/", &[("Cookie", "sid=o")]).echoed("X-User-Role");
        if role == vec!["viewer"] {
            break;
        }
        assert!(started.elapsed() < SOON, "still {role:?}");
    }
}

/// How many evicted entries the gateway has put back unchanged (its own
/// `sessiongate_cache_restored_total`).
fn restored(s: &Setup) -> u64 {
    let text = get(s.gateway.admin_addr(), "/metrics", &[]).body;
    text.lines()
        .find_map(|l| l.strip_prefix("sessiongate_cache_restored_total "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[test]
fn express_touch_does_not_evict_but_expiry_does() {
    let s = setup("");
    let mut conn = s.redis.conn();
    let _: () = conn.set_ex("sess:t", r#"{"user":{"id":"1"}}"#, 60).unwrap();
    // The entry is cached and fingerprinted once its fill's DUMP has run and
    // a request no longer reaches Redis. The SET's own invalidation may land
    // late on a loaded machine and evict a fresh fill; then go round again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut dumps, mut fills) = (calls(&s.redis, "dump"), gets(&s.redis));
    assert_eq!(status(&s, "t"), 200);
    loop {
        if gets(&s.redis) > fills {
            while calls(&s.redis, "dump") == dumps {
                assert!(Instant::now() < deadline, "a fill was never read back");
                std::thread::sleep(Duration::from_millis(5));
            }
            // Its reply is handled a moment after Redis counts the DUMP.
            std::thread::sleep(Duration::from_millis(50));
        }
        (dumps, fills) = (calls(&s.redis, "dump"), gets(&s.redis));
        assert_eq!(status(&s, "t"), 200);
        if gets(&s.redis) == fills {
            break;
        }
        assert!(Instant::now() < deadline, "sess:t was never cached");
    }
    let before = gets(&s.redis);
    for _ in 0..5 {
        let put_back = restored(&s);
        let _: () = conn.expire("sess:t", 120).unwrap();
        // Redis reports the TTL change; the entry is evicted and, its value
        // read back unchanged (a DUMP), put back.
        let deadline = Instant::now() + Duration::from_secs(5);
        while restored(&s) == put_back {
            assert!(
                Instant::now() < deadline,
                "the touched entry was never put back:\n{}",
                s.gateway.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(status(&s, "t"), 200);
    }
    assert_eq!(gets(&s.redis), before, "EXPIRE must not empty the cache");

    // A key that expires in Redis stops working when it does.
    let set = Instant::now();
    let _: () = conn
        .pset_ex("sess:short", r#"{"user":{"id":"2"}}"#, 1000)
        .unwrap();
    assert_eq!(status(&s, "short"), 200);
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(set.elapsed()));
    assert_eq!(status(&s, "short"), 401);
}

#[test]
fn unknown_ids_are_kept_off_redis_briefly_but_a_fresh_login_works_at_once() {
    let s = setup(r#"negative_ttl = "10s""#);
    assert_eq!(status(&s, "new"), 401);
    let before = gets(&s.redis);
    for _ in 0..10 {
        assert_eq!(status(&s, "new"), 401);
    }
    assert_eq!(
        gets(&s.redis),
        before,
        "repeated unknown ids must not each reach redis"
    );
    let _: () = s
        .redis
        .conn()
        .set_ex("sess:new", r#"{"user":{"id":"9"}}"#, 60)
        .unwrap();
    eventually(&s, "new", 200, SOON);
}

#[test]
fn with_the_cache_off_every_request_reads_redis() {
    let s = setup("enabled = false");
    let _: () = s
        .redis
        .conn()
        .set_ex("sess:a", r#"{"user":{"id":"1"}}"#, 60)
        .unwrap();
    let before = gets(&s.redis);
    for _ in 0..5 {
        assert_eq!(status(&s, "a"), 200);
    }
    assert_eq!(gets(&s.redis), before + 5);
}

#[test]
fn when_the_invalidation_channel_drops_the_cache_is_not_trusted() {
    let mut s = setup("");
    let _: () = s
        .redis
        .conn()
        .set_ex("sess:a", r#"{"user":{"id":"1"}}"#, 60)
        .unwrap();
    assert_eq!(status(&s, "a"), 200);
    assert_eq!(status(&s, "a"), 200);
    // Redis restarts empty: the session is gone, and no DEL was ever published.
    s.redis.restart();
    let started = Instant::now();
    loop {
        let code = status(&s, "a");
        assert_ne!(
            code, 200,
            "a session missing from redis was served from the cache"
        );
        if code == 401 && started.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(code == 401 || code == 503, "{code}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once the channel is back, caching resumes.
    let _: () = s
        .redis
        .conn()
        .set_ex("sess:b", r#"{"user":{"id":"2"}}"#, 60)
        .unwrap();
    wait_until_live(&s);
}

const JWT_SECRET: &str = "cache-test-secret-of-thirty-two-bytes!";

/// `setup` with bearer JWTs (HS256, no leeway) beside the cookie.
fn jwt_setup() -> Setup {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let text = config(&redis, &upstream, "")
        .replace(
            "key = \"sess:{id}\"\n",
            "key = \"sess:{id}\"\nbearer = \"jwt\"\n",
        )
        .replace(
            "\"X-User-Role\" = \"user.role\"\n",
            "\"X-User-Role\" = \"user.role\"\n\"X-Token-User\" = \"claims.sub\"\n\"X-Token-Plan\" = \"session.plan\"\n",
        )
        + &format!("\n[jwt]\nalgorithms = [\"HS256\"]\nsecret = \"{JWT_SECRET}\"\nleeway = \"0s\"\n");
    let gateway = TestGateway::start(&text);
    let s = Setup {
        redis,
        _upstream: upstream,
        gateway,
    };
    wait_until_live(&s);
    s
}

fn hs256(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn with_token(s: &Setup, token: &str) -> support::Response {
    get(
        s.gateway.addr,
        "/",
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

#[test]
fn a_verified_jwt_is_cached_for_that_token_and_revoked_like_a_session() {
    let s = jwt_setup();
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({"tokenId": "t1", "sub": "42", "exp": now + 600});
    let token = hs256(&claims, JWT_SECRET);
    let _: () = s
        .redis
        .conn()
        .set_ex("token:t1", r#"{"plan":"pro"}"#, 60)
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let first = with_token(&s, &token);
    assert_eq!(first.status, 200);
    assert_eq!(first.echoed("X-Token-User"), ["42"]);
    assert_eq!(first.echoed("X-Token-Plan"), ["pro"]);
    let before = gets(&s.redis);
    for _ in 0..20 {
        let resp = with_token(&s, &token);
        assert_eq!(resp.echoed("X-Token-User"), ["42"]);
        assert_eq!(resp.echoed("X-Token-Plan"), ["pro"]);
    }
    assert_eq!(
        gets(&s.redis),
        before,
        "a cached token must not reach redis"
    );

    // The cache answers only the token it verified: the same claims under
    // another key's signature are refused, and another valid token with the
    // same token id gets its own claims.
    let forged = hs256(&claims, "another-secret-of-thirty-two-bytes-long");
    assert_eq!(with_token(&s, &forged).status, 401);
    let sibling = hs256(
        &serde_json::json!({"tokenId": "t1", "sub": "43", "exp": now + 600}),
        JWT_SECRET,
    );
    assert_eq!(with_token(&s, &sibling).echoed("X-Token-User"), ["43"]);
    assert_eq!(with_token(&s, &token).echoed("X-Token-User"), ["42"]);
    // A cookie naming the token key's id never gets the token's principal.
    assert_eq!(status(&s, "t1"), 401);

    // Any change of the token key reaches the cached token.
    let _: () = s
        .redis
        .conn()
        .set_ex("token:t1", r#"{"plan":"free"}"#, 60)
        .unwrap();
    let started = Instant::now();
    while with_token(&s, &token).echoed("X-Token-Plan") != ["free"] {
        assert!(
            started.elapsed() < SOON,
            "the overwrite did not reach the cache"
        );
    }
    let _: () = s.redis.conn().del("token:t1").unwrap();
    let started = Instant::now();
    while with_token(&s, &token).status != 401 {
        assert!(started.elapsed() < SOON, "the DEL did not reach the cache");
    }
    println!("DEL refused the cached token in {:?}", started.elapsed());
}

#[test]
fn a_cached_jwt_is_refused_once_its_exp_passes() {
    let s = jwt_setup();
    let now = jsonwebtoken::get_current_timestamp();
    let token = hs256(
        &serde_json::json!({"tokenId": "t2", "sub": "7", "exp": now + 2}),
        JWT_SECRET,
    );
    let _: () = s.redis.conn().set_ex("token:t2", "1", 60).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(with_token(&s, &token).status, 200);
    let before = gets(&s.redis);
    assert_eq!(with_token(&s, &token).status, 200);
    assert_eq!(gets(&s.redis), before, "served from the cache");
    // `exp` is the last second it is valid (jsonwebtoken's rule, no leeway).
    let past = Duration::from_secs(now + 3) - std::time::UNIX_EPOCH.elapsed().unwrap();
    std::thread::sleep(past + Duration::from_millis(100));
    assert_eq!(with_token(&s, &token).status, 401);
}
