//! Revocation that no Redis command gets around: a session served from the
//! cache (its hit counted in /metrics) stops being served within the
//! revocation latency of any other client's command that changes or ends its
//! key, whatever the command, against a real redis-server. Each test prints
//! the latency it measured.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::Commands;
use support::revocation::{cache_hits, cached, gone, sample, seen};
use support::{EchoUpstream, RedisServer, TestGateway};

/// How long a change may take to reach the gateway here. The latency it
/// promises (p99 about 10 ms) is the benchmark's to measure, on a release
/// build; these tests run a debug build beside many others on two cores,
/// where one request alone can take tens of milliseconds. What they prove
/// is that the change came by invalidation: the cache's cap (`max_age`,
/// 30 s) is what a missed change would have cost.
const LATENCY: Duration = Duration::from_secs(1);

const ADMIN: &str = r#"{"user":{"id":"1","role":"admin"}}"#;
const VIEWER: &str = r#"{"user":{"id":"2","role":"viewer"}}"#;

fn config(redis: &str, upstream: &EchoUpstream) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{redis}"
command_timeout = "200ms"

[session]
cookie = "sid"
cookie_format = "plain"
key = "sess:{{id}}"

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Role" = "user.role"

[admin]
listen = "127.0.0.1:0"

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

fn setup() -> Setup {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&config(&redis.url(), &upstream));
    let s = Setup {
        redis,
        _upstream: upstream,
        gateway,
    };
    s.seed("probe", VIEWER);
    cached(&s.gateway, "probe");
    s
}

impl Setup {
    fn seed(&self, id: &str, value: &str) {
        let _: () = self
            .redis
            .conn()
            .set_ex(format!("sess:{id}"), value, 600)
            .unwrap();
    }
}

/// Caches `sess:<id>` holding the admin session, runs `command` from another
/// client, and checks the admin session is not passed any more within the
/// revocation latency; prints how long it took.
fn revoked_by(what: &str, id: &str, command: impl FnOnce(&mut redis::Connection)) -> Setup {
    let s = setup();
    s.seed(id, ADMIN);
    assert_eq!(cached(&s.gateway, id), "admin");
    let mut other = s.redis.conn();
    let started = Instant::now();
    command(&mut other);
    let took = gone(&s.gateway, id, "admin", started, LATENCY);
    eprintln!("{what}: the cached session stopped passing after {took:?}");
    s
}

fn run(conn: &mut redis::Connection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(conn).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn del_revokes() {
    revoked_by("DEL", "a", |c| {
        run(c, &["DEL", "sess:a"]);
    });
}

#[test]
fn unlink_revokes() {
    revoked_by("UNLINK", "a", |c| {
        run(c, &["UNLINK", "sess:a"]);
    });
}

#[test]
fn an_overwrite_is_served_as_overwritten() {
    let s = revoked_by("SET (role downgrade)", "a", |c| {
        let _: () = c.set_ex("sess:a", VIEWER, 600).unwrap();
    });
    assert_eq!(seen(&s.gateway, "a"), Ok("viewer".into()));
}

#[test]
fn copy_replace_onto_a_session_revokes_it() {
    let s = revoked_by("COPY src dst REPLACE", "a", |c| {
        let _: () = c.set_ex("sess:v", VIEWER, 600).unwrap();
        run(c, &["COPY", "sess:v", "sess:a", "REPLACE"]);
    });
    assert_eq!(seen(&s.gateway, "a"), Ok("viewer".into()));
}

#[test]
fn rename_away_and_onto_revoke() {
    revoked_by("RENAME away", "a", |c| {
        run(c, &["RENAME", "sess:a", "parked"]);
    });
    let s = revoked_by("RENAME onto", "a", |c| {
        let _: () = c.set_ex("incoming", VIEWER, 600).unwrap();
        run(c, &["RENAME", "incoming", "sess:a"]);
    });
    assert_eq!(seen(&s.gateway, "a"), Ok("viewer".into()));
}

#[test]
fn restore_replace_revokes() {
    let s = revoked_by("RESTORE REPLACE", "a", |c| {
        let _: () = c.set_ex("template", VIEWER, 600).unwrap();
        let dump: Vec<u8> = redis::cmd("DUMP").arg("template").query(c).unwrap();
        let _: () = redis::cmd("RESTORE")
            .arg("sess:a")
            .arg(0)
            .arg(dump)
            .arg("REPLACE")
            .query(c)
            .unwrap();
    });
    assert_eq!(seen(&s.gateway, "a"), Ok("viewer".into()));
}

#[test]
fn move_to_another_database_revokes() {
    let s = revoked_by("MOVE", "a", |c| {
        run(c, &["MOVE", "sess:a", "1"]);
    });
    assert_eq!(seen(&s.gateway, "a"), Err(401));
}

#[test]
fn expire_to_the_past_revokes() {
    revoked_by("EXPIRE -1", "a", |c| {
        run(c, &["EXPIRE", "sess:a", "-1"]);
    });
    revoked_by("PEXPIREAT 1", "b", |c| {
        run(c, &["PEXPIREAT", "sess:b", "1"]);
    });
}

#[test]
fn eviction_revokes() {
    let s = setup();
    let mut conn = s.redis.conn();
    // A big session whose TTL is shorter than the gateway's canary's (60 s):
    // the first key a volatile-ttl eviction takes, the canary staying.
    let big = format!(
        r#"{{"user":{{"id":"1","role":"admin"}},"pad":"{}"}}"#,
        "x".repeat(65536)
    );
    let _: () = conn.set_ex("sess:a", &big, 30).unwrap();
    assert_eq!(cached(&s.gateway, "a"), "admin");
    let flushes = sample(
        &s.gateway,
        "sessiongate_cache_flushes_total",
        &[("reason", "database_changed")],
    );
    run(
        &mut conn,
        &["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"],
    );
    run(&mut conn, &["CONFIG", "SET", "maxmemory-samples", "64"]);
    let info: String = redis::cmd("INFO").arg("memory").query(&mut conn).unwrap();
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .expect("used_memory")
        .trim()
        .parse::<u64>()
        .expect("a number");
    let started = Instant::now();
    // A quarter of the session's size below what is used: its eviction makes room.
    let limit = (used - 16384).to_string();
    run(&mut conn, &["CONFIG", "SET", "maxmemory", &limit]);
    let _: redis::RedisResult<()> = conn.set("pad", "y");
    run(&mut conn, &["CONFIG", "SET", "maxmemory", "0"]);
    let took = gone(&s.gateway, "a", "admin", started, LATENCY);
    eprintln!("eviction (volatile-ttl): the cached session stopped passing after {took:?}");
    let evicted: bool = conn.exists("sess:a").unwrap();
    assert!(!evicted, "redis did not evict the session");
    assert_eq!(
        sample(
            &s.gateway,
            "sessiongate_cache_flushes_total",
            &[("reason", "database_changed")]
        ),
        flushes,
        "the canary went too: this test is about the eviction's own invalidation"
    );
}

fn flushes(gateway: &TestGateway, reason: &str) -> f64 {
    sample(
        gateway,
        "sessiongate_cache_flushes_total",
        &[("reason", reason)],
    )
}

#[test]
fn flushdb_revokes() {
    let s = revoked_by("FLUSHDB", "a", |c| {
        run(c, &["FLUSHDB"]);
    });
    // Redis's flush message did it (the canary's absence is put down to it).
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(flushes(&s.gateway, "flush"), 1.0);
    assert_eq!(flushes(&s.gateway, "database_changed"), 0.0);
}

#[test]
fn flushall_revokes() {
    let s = revoked_by("FLUSHALL", "a", |c| {
        run(c, &["FLUSHALL"]);
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(flushes(&s.gateway, "flush"), 1.0);
}

#[test]
fn swapdb_revokes() {
    let s = revoked_by("SWAPDB", "a", |c| {
        run(c, &["SWAPDB", "0", "1"]);
    });
    assert_eq!(seen(&s.gateway, "a"), Err(401));
    // No flush message: the canary found missing did it.
    assert_eq!(flushes(&s.gateway, "flush"), 0.0);
    assert_eq!(flushes(&s.gateway, "database_changed"), 1.0);
}

#[test]
fn a_ttl_extension_keeps_the_session_cached() {
    let s = setup();
    s.seed("t", ADMIN);
    assert_eq!(cached(&s.gateway, "t"), "admin");
    let restored = sample(&s.gateway, "sessiongate_cache_restored_total", &[]);
    let mut conn = s.redis.conn();
    // express-session's touch: EXPIRE to the cookie's max age on every request.
    for _ in 0..5 {
        let _: () = conn.expire("sess:t", 1200).unwrap();
        assert_eq!(cached(&s.gateway, "t"), "admin");
    }
    assert!(
        sample(&s.gateway, "sessiongate_cache_restored_total", &[]) >= restored + 1.0,
        "no entry was put back after a TTL change"
    );
    // A TTL shortened below the cache's cap ends the entry with the key.
    let _: () = conn.pexpire("sess:t", 300).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(seen(&s.gateway, "t"), Err(401));
}

#[test]
fn emptied_keyspace_event_flags_change_nothing() {
    let s = setup();
    run(
        &mut s.redis.conn(),
        &["CONFIG", "SET", "notify-keyspace-events", ""],
    );
    s.seed("a", ADMIN);
    assert_eq!(cached(&s.gateway, "a"), "admin");
    let started = Instant::now();
    run(&mut s.redis.conn(), &["DEL", "sess:a"]);
    let took = gone(&s.gateway, "a", "admin", started, LATENCY);
    eprintln!("DEL with notify-keyspace-events \"\": refused after {took:?}");
}

/// The id of the gateway's tracking connection (`CLIENT LIST` flag `t`).
fn tracking_client(redis: &RedisServer) -> Option<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.conn())
        .unwrap();
    list.lines().find_map(|line| {
        let fields: BTreeMap<&str, &str> =
            line.split(' ').filter_map(|f| f.split_once('=')).collect();
        (fields.get("flags")?.contains('t')).then(|| fields.get("id").map(|s| s.to_string()))?
    })
}

#[test]
fn killing_the_tracking_connection_bypasses_the_cache_until_it_is_back() {
    let s = setup();
    s.seed("a", ADMIN);
    assert_eq!(cached(&s.gateway, "a"), "admin");
    let bypassed = |g: &TestGateway| {
        sample(
            g,
            "sessiongate_cache_bypassed_total",
            &[("reason", "disconnected")],
        )
    };
    let before = bypassed(&s.gateway);
    let id = tracking_client(&s.redis).expect("a tracking connection");
    let started = Instant::now();
    run(&mut s.redis.conn(), &["CLIENT", "KILL", "ID", &id]);
    while bypassed(&s.gateway) == before {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the killed connection went unnoticed"
        );
    }
    eprintln!(
        "tracking connection killed: bypass counted after {:?}",
        started.elapsed()
    );
    // Until the channel is back, nothing is served from the cache...
    let hits = cache_hits(&s.gateway);
    assert_eq!(seen(&s.gateway, "a"), Ok("admin".into()));
    assert_eq!(
        cache_hits(&s.gateway),
        hits,
        "served from an untrusted cache"
    );
    // ...and a DEL meanwhile is seen at once.
    run(&mut s.redis.conn(), &["DEL", "sess:a"]);
    assert_eq!(seen(&s.gateway, "a"), Err(401));
    // Then the channel is set up again and the cache trusted.
    s.seed("a", ADMIN);
    assert_eq!(cached(&s.gateway, "a"), "admin");
    assert!(tracking_client(&s.redis).is_some_and(|new| new != id));
    assert_eq!(
        bypassed(&s.gateway),
        before + 1.0,
        "counted once per outage"
    );
}

#[test]
fn a_redis_that_refuses_the_canary_write_bypasses_the_cache_until_it_accepts_it() {
    let s = setup();
    s.seed("a", ADMIN);
    assert_eq!(cached(&s.gateway, "a"), "admin");
    let refused = |g: &TestGateway| {
        sample(
            g,
            "sessiongate_cache_bypassed_total",
            &[("reason", "refused")],
        )
    };
    let before = refused(&s.gateway);
    let mut conn = s.redis.conn();
    // Out of memory with no eviction: reads work, the canary's SET is refused,
    // so the channel can no longer show that writes are reported.
    run(
        &mut conn,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    run(&mut conn, &["CONFIG", "SET", "maxmemory", "1"]);
    let started = Instant::now();
    while refused(&s.gateway) == before {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the refused canary write went unnoticed:\n{}",
            s.gateway.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("refused canary write noticed after {:?}", started.elapsed());
    let hits = cache_hits(&s.gateway);
    for _ in 0..5 {
        assert_eq!(seen(&s.gateway, "a"), Ok("admin".into()));
    }
    assert_eq!(
        cache_hits(&s.gateway),
        hits,
        "served from an untrusted cache"
    );
    run(&mut conn, &["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(cached(&s.gateway, "a"), "admin");
    assert_eq!(refused(&s.gateway), before + 1.0, "counted once per outage");
}
