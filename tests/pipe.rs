//! The store's per-thread pipelined Redis connection against a real
//! redis-server: many lookups in flight at once each get their own reply;
//! a lookup that gives up never hands its reply to another; a timeout, a
//! crash and a restart fail closed and recover; AUTH and SELECT are sent.

mod support;

use std::sync::Arc;
use std::time::Duration;

use redis::Commands;
use sessiongate::config::ValueFormat;
use sessiongate::session::store::RawValue;
use sessiongate::session::{RedisStore, SessionStore, StoreError};
use support::RedisServer;

fn store(url: &str, command_timeout: &str) -> Arc<RedisStore> {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[redis]\nurl = \"{url}\"\n\
         command_timeout = \"{command_timeout}\"\nconnect_timeout = \"500ms\"\n\
         breaker_failures = 1000\n\n\
         [session]\ncookie_format = \"plain\"\n\n\
         [[upstream]]\nname = \"app\"\naddrs = [\"127.0.0.1:3000\"]\n\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n"
    );
    let config = sessiongate::config::parse("proxy.toml", &text, &|_| None).expect("config");
    let store = RedisStore::new(&config.redis).expect("store");
    assert!(
        store.pipelined(),
        "a plain redis:// url uses the pipelined connection"
    );
    store
}

fn value_of(raw: Option<sessiongate::session::RawSession>) -> Option<String> {
    raw.map(|raw| match raw.value {
        RawValue::String(bytes) => String::from_utf8(bytes).expect("utf-8"),
        RawValue::Hash(_) => panic!("a string key came back as a hash"),
    })
}

fn seed(redis: &RedisServer, n: usize) {
    let mut conn = redis.conn();
    for i in 0..n {
        let _: () = conn
            .set_ex(format!("sess:{i}"), format!("{{\"user\":\"u{i}\"}}"), 600)
            .expect("seed");
    }
}

/// Makes Redis hold every client's commands for `ms` milliseconds.
fn hold_replies(redis: &RedisServer, ms: u64) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .query(&mut redis.conn())
        .expect("client pause");
}

/// Every lookup of `n` in flight at once gets the value of its own key.
async fn all_at_once(store: &Arc<RedisStore>, n: usize, rounds: usize) {
    let mut tasks = Vec::new();
    for round in 0..rounds {
        for i in 0..n {
            let store = store.clone();
            let ttl = (i + round) % 2 == 0;
            tasks.push(tokio::spawn(async move {
                let raw = store
                    .fetch(&format!("sess:{i}"), ValueFormat::Json, ttl)
                    .await
                    .expect("fetch");
                let ttl_ms = raw.as_ref().and_then(|r| r.ttl_ms);
                assert_eq!(
                    ttl_ms.is_some(),
                    ttl,
                    "the TTL is asked for only when wanted"
                );
                assert_eq!(value_of(raw), Some(format!("{{\"user\":\"u{i}\"}}")));
            }));
        }
    }
    for task in tasks {
        task.await.expect("task");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_lookups_on_one_thread_each_get_their_own_reply() {
    let redis = RedisServer::start();
    seed(&redis, 300);
    let store = store(&redis.url(), "2s");
    all_at_once(&store, 300, 4).await;
    // A key that does not exist is `None`, not someone else's value.
    let missing = store.fetch("sess:nope", ValueFormat::Json, true).await;
    assert!(matches!(missing, Ok(None)), "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_across_threads_each_get_their_own_reply() {
    let redis = RedisServer::start();
    seed(&redis, 300);
    let store = store(&redis.url(), "2s");
    all_at_once(&store, 300, 4).await;
}

#[tokio::test(flavor = "current_thread")]
async fn large_values_and_hashes_come_back_whole() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    // Larger than one read: the reply arrives in pieces.
    let big = format!("{{\"user\":\"big\",\"pad\":\"{}\"}}", "x".repeat(300_000));
    let _: () = conn.set("sess:big", &big).unwrap();
    let _: () = conn.hset("sess:h", "user", "hashed").unwrap();
    let _: () = conn.rpush("sess:list", "x").unwrap();
    let store = store(&redis.url(), "2s");
    let (a, b, c, d, e) = tokio::join!(
        store.fetch("sess:big", ValueFormat::Json, true),
        store.fetch("sess:h", ValueFormat::Hash, true),
        store.fetch("sess:list", ValueFormat::Json, true),
        store.fetch("sess:big", ValueFormat::Json, false),
        // Without the TTL it is one command, not a pipeline: the same answer.
        store.fetch("sess:list", ValueFormat::Json, false),
    );
    assert_eq!(value_of(a.unwrap()).as_deref(), Some(big.as_str()));
    let hash = b.unwrap().expect("hash");
    assert_eq!(
        hash.value,
        RawValue::Hash(vec![("user".into(), "hashed".into())])
    );
    assert!(matches!(c, Err(StoreError::WrongType)), "{c:?}");
    assert!(matches!(e, Err(StoreError::WrongType)), "{e:?}");
    assert_eq!(value_of(d.unwrap()).as_deref(), Some(big.as_str()));
    // The connection is still in step after the error reply.
    let again = store
        .fetch("sess:h", ValueFormat::Hash, false)
        .await
        .unwrap();
    assert!(again.is_some());
}

/// Lookups that give up while Redis holds their replies (the client went
/// away) leave their replies to be thrown away: the lookups after them,
/// sent in between, still each get their own.
#[tokio::test(flavor = "current_thread")]
async fn an_abandoned_lookup_never_hands_its_reply_to_another() {
    let redis = RedisServer::start();
    seed(&redis, 40);
    let store = store(&redis.url(), "5s");
    // Connect first, then hold every reply back for a while.
    store.ping().await.expect("ping");
    // Long enough that the 20 lookups given up on below (20 ms each, one
    // after another) all end while Redis still holds its replies, even on
    // a loaded machine.
    hold_replies(&redis, 2000);
    let mut kept = Vec::new();
    for i in 0..40 {
        let key = format!("sess:{i}");
        if i % 2 == 0 {
            // Given up on after 20 ms, long before Redis answers.
            let store = store.clone();
            let gave_up = tokio::time::timeout(Duration::from_millis(20), async move {
                store.fetch(&key, ValueFormat::Json, true).await
            })
            .await;
            assert!(gave_up.is_err(), "answered while paused: {gave_up:?}");
        } else {
            let store = store.clone();
            kept.push(tokio::spawn(async move {
                (i, store.fetch(&key, ValueFormat::Json, true).await)
            }));
        }
    }
    for task in kept {
        let (i, got) = task.await.expect("task");
        assert_eq!(
            value_of(got.expect("fetch")),
            Some(format!("{{\"user\":\"u{i}\"}}"))
        );
    }
    all_at_once(&store, 40, 2).await;
}

/// A timeout drops the connection: whatever Redis answers late is never
/// read as the answer to a later lookup.
#[tokio::test(flavor = "current_thread")]
async fn a_timeout_fails_closed_and_the_next_lookup_gets_its_own_reply() {
    let redis = RedisServer::start();
    seed(&redis, 4);
    let store = store(&redis.url(), "100ms");
    store.ping().await.expect("ping");
    hold_replies(&redis, 500);
    let (a, b) = tokio::join!(
        store.fetch("sess:0", ValueFormat::Json, true),
        store.fetch("sess:1", ValueFormat::Json, true),
    );
    // The first to time out drops the connection; the other fails with it.
    for got in [a, b] {
        assert!(got.as_ref().is_err_and(|e| e.is_unreachable()), "{got:?}");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let c = store.fetch("sess:2", ValueFormat::Json, true).await;
    assert_eq!(
        value_of(c.expect("after the pause")).as_deref(),
        Some("{\"user\":\"u2\"}")
    );
    all_at_once(&store, 4, 8).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_redis_crash_fails_closed_and_a_restart_is_picked_up() {
    let mut redis = RedisServer::start();
    seed(&redis, 4);
    let store = store(&redis.url(), "500ms");
    all_at_once(&store, 4, 2).await;
    redis.stop();
    for _ in 0..3 {
        let err = store.fetch("sess:0", ValueFormat::Json, true).await;
        assert!(err.is_err(), "{err:?}");
        assert!(err.unwrap_err().is_unreachable());
    }
    redis.restart();
    seed(&redis, 4);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        match store.fetch("sess:3", ValueFormat::Json, true).await {
            Ok(raw) => {
                assert_eq!(value_of(raw).as_deref(), Some("{\"user\":\"u3\"}"));
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.is_unreachable(), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("redis is back but lookups still fail: {e}"),
        }
    }
    all_at_once(&store, 4, 4).await;
}

#[tokio::test(flavor = "current_thread")]
async fn the_url_password_and_database_are_used() {
    let redis = RedisServer::start();
    let mut admin = redis.conn();
    let _: () = redis::cmd("SELECT").arg(3).query(&mut admin).unwrap();
    let _: () = admin.set("sess:db3", "{\"user\":\"three\"}").unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query(&mut admin)
        .unwrap();

    let port = redis.port;
    let right = store(&format!("redis://:s3cret@127.0.0.1:{port}/3"), "1s");
    let got = right.fetch("sess:db3", ValueFormat::Json, true).await;
    assert_eq!(
        value_of(got.expect("fetch")).as_deref(),
        Some("{\"user\":\"three\"}")
    );

    let other_db = store(&format!("redis://:s3cret@127.0.0.1:{port}/0"), "1s");
    let got = other_db.fetch("sess:db3", ValueFormat::Json, true).await;
    assert!(matches!(got, Ok(None)), "{got:?}");

    let wrong = store(&format!("redis://:nope@127.0.0.1:{port}/3"), "1s");
    let got = wrong.fetch("sess:db3", ValueFormat::Json, true).await;
    let err = got.expect_err("a wrong password is refused");
    assert!(err.is_unreachable(), "{err}");
    assert!(
        !err.to_string().contains("nope"),
        "the password is not echoed: {err}"
    );
}

/// Lookups given up on at every point of their life (before they are sent,
/// while in flight, as their reply arrives), mixed with lookups that wait:
/// every answer that arrives is the right one, and nothing stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_cancelled_at_random_points_never_get_a_wrong_answer() {
    let redis = RedisServer::start();
    seed(&redis, 200);
    let store = store(&redis.url(), "2s");
    let mut tasks = Vec::new();
    for n in 0..3000usize {
        let store = store.clone();
        let i = (n * 7919) % 200;
        // 0 to 400 µs, or no limit for every third lookup.
        let limit = (n % 3 != 0).then(|| Duration::from_micros(((n * 31) % 400) as u64));
        tasks.push(tokio::spawn(async move {
            let key = format!("sess:{i}");
            let lookup = store.fetch(&key, ValueFormat::Json, n % 2 == 0);
            let got = match limit {
                Some(limit) => match tokio::time::timeout(limit, lookup).await {
                    Ok(got) => got,
                    Err(_) => return false,
                },
                None => lookup.await,
            };
            assert_eq!(
                value_of(got.expect("fetch")),
                Some(format!("{{\"user\":\"u{i}\"}}"))
            );
            true
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += usize::from(task.await.expect("task"));
    }
    assert!(answered >= 1000, "only {answered} lookups were answered");
    all_at_once(&store, 200, 2).await;
}
