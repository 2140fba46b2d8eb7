//! Sliding expiry against a real redis-server: a session in use has its TTL
//! reset once it has fallen `touch_after` below `ttl`, and not on every request.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::{get, EchoUpstream, RedisServer, TestGateway};

fn config(redis: &RedisServer, upstream: &EchoUpstream, cache: bool) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"

[session]
cookie = "sid"
cookie_format = "plain"
sliding = {{ ttl = "10s", touch_after = "2s" }}

[cache]
enabled = {cache}

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

fn pexpires(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_pexpire:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn slides_once(cache: bool) {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&config(&redis, &upstream, cache));
    let mut conn = redis.conn();

    // Fresh session: TTL close to `ttl`, nothing to do.
    let _: () = conn
        .pset_ex("sess:fresh", r#"{"user":{"id":"1"}}"#, 9_500)
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            get(gateway.addr, "/", &[("Cookie", "sid=fresh")]).status,
            200
        );
    }
    assert_eq!(pexpires(&redis), 0, "a fresh session must not be touched");

    // A session with 5s left of a 10s window is reset to 10s, once.
    let _: () = conn
        .pset_ex("sess:old", r#"{"user":{"id":"2"}}"#, 5_000)
        .unwrap();
    for _ in 0..20 {
        assert_eq!(get(gateway.addr, "/", &[("Cookie", "sid=old")]).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while pexpires(&redis) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pexpires(&redis), 1, "touched exactly once for 20 requests");
    let pttl: i64 = conn.pttl("sess:old").unwrap();
    assert!(
        pttl > 9_000,
        "TTL was reset to the sliding window, got {pttl} ms"
    );
}

#[test]
fn sliding_expiry_touches_once_with_the_cache() {
    slides_once(true);
}

#[test]
fn sliding_expiry_touches_once_without_the_cache() {
    slides_once(false);
}
