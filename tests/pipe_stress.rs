//! The per-thread pipelined Redis connection under everything at once,
//! against a real redis-server: thousands of lookups of distinct sessions
//! on one thread's pipe, given up on at random points (random deadlines,
//! races against random sleeps, dropped after a random number of polls),
//! while Redis is paused past the command timeout, stalled by a busy
//! script, and killed and restarted on the same port. Every lookup that
//! answers `Ok` gets its own key's value (each value names its key), and
//! every error is an error, never a reply meant for another command.

mod support;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sessiongate::config::ValueFormat;
use sessiongate::session::store::RawValue;
use sessiongate::session::{RawSession, RedisStore, SessionStore, StoreError};
use support::RedisServer;

/// Distinct sessions, `sess:<i>` = `{"user":"u<i>"}`.
const KEYS: usize = 500;
/// Lookups in flight at once.
const WAVE: usize = 400;

fn store(url: &str, command_timeout: &str) -> Arc<RedisStore> {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[redis]\nurl = \"{url}\"\n\
         command_timeout = \"{command_timeout}\"\nconnect_timeout = \"300ms\"\n\
         breaker_failures = 10000\n\n\
         [session]\ncookie_format = \"plain\"\n\n\
         [[upstream]]\nname = \"app\"\naddrs = [\"127.0.0.1:3000\"]\n\n\
         [[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n"
    );
    let config = sessiongate::config::parse("proxy.toml", &text, &|_| None).expect("config");
    let store = RedisStore::new(&config.redis).expect("store");
    assert!(store.pipelined(), "a plain redis:// url uses the pipe");
    store
}

fn seed(redis: &RedisServer) {
    let mut conn = redis.conn();
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.set_ex(format!("sess:{i}"), format!("{{\"user\":\"u{i}\"}}"), 600)
            .ignore();
    }
    let _: () = pipe.query(&mut conn).expect("seed");
}

/// Redis holds every client's commands for `ms`: lookups pass the command
/// timeout, which drops the connection with their replies still due.
fn pause(redis: &RedisServer, ms: u64) {
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("ALL")
        .query(&mut redis.conn())
        .expect("client pause");
}

/// Redis runs a script that spins for `ms` (DEBUG SLEEP without DEBUG,
/// which redis 7 refuses by default): nothing else is served meanwhile.
fn stall(redis: &RedisServer, ms: u64) {
    let script = "local t = redis.call('TIME') \
                  local start = t[1] * 1000000 + t[2] \
                  while true do \
                    local n = redis.call('TIME') \
                    if n[1] * 1000000 + n[2] - start > tonumber(ARGV[1]) * 1000 then break end \
                  end";
    let _: () = redis::cmd("EVAL")
        .arg(script)
        .arg(0)
        .arg(ms)
        .query(&mut redis.conn())
        .expect("busy script");
}

/// How a lookup is given up on, if at all.
#[derive(Clone, Copy, Debug)]
enum Cancel {
    Never,
    /// `tokio::time::timeout` with this deadline.
    Deadline(Duration),
    /// `select!` against a sleep of this long.
    Race(Duration),
    /// Polled this many times (yielding in between), then dropped.
    Polls(u32),
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    key: usize,
    /// A key that was never set: only `None` is right for it.
    missing: bool,
    ttl: bool,
    cancel: Cancel,
}

impl Plan {
    fn random(rng: &mut impl Rng, cancels: bool) -> Plan {
        let cancel = match rng.random_range(0..if cancels { 4 } else { 1 }) {
            0 => Cancel::Never,
            1 => Cancel::Deadline(Duration::from_micros(rng.random_range(0..3000))),
            2 => Cancel::Race(Duration::from_micros(rng.random_range(0..3000))),
            _ => Cancel::Polls(rng.random_range(1..6)),
        };
        Plan {
            key: rng.random_range(0..KEYS),
            missing: rng.random_bool(0.1),
            ttl: rng.random_bool(0.5),
            cancel,
        }
    }

    fn key(&self) -> String {
        if self.missing {
            format!("nosuch:{}", self.key)
        } else {
            format!("sess:{}", self.key)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Its own value (or `None` for a key that does not exist).
    Answered,
    /// `None` for a key that Redis lost in a restart (not yet seeded again).
    Lost,
    /// An error saying Redis could not answer (timeout, connection).
    Failed,
    /// Given up on before an answer.
    Cancelled,
}

/// `Outage` is even while every `sess:` key exists; it is made odd before
/// Redis is killed and even again once the restarted server is seeded.
struct Outage(AtomicU64);

/// Runs one lookup as `plan` says and judges what it got; panics on an
/// answer that is not its own.
async fn lookup(store: Arc<RedisStore>, plan: Plan, outage: Arc<Outage>) -> Outcome {
    let key = plan.key();
    let before = outage.0.load(Ordering::SeqCst);
    let fetch = store.fetch(&key, ValueFormat::Json, plan.ttl);
    let got = match plan.cancel {
        Cancel::Never => Some(fetch.await),
        Cancel::Deadline(limit) => tokio::time::timeout(limit, fetch).await.ok(),
        Cancel::Race(limit) => tokio::select! {
            got = fetch => Some(got),
            _ = tokio::time::sleep(limit) => None,
        },
        Cancel::Polls(n) => {
            let mut fetch = pin!(fetch);
            let mut got = None;
            for _ in 0..n {
                let polled = std::future::poll_fn(|cx| Poll::Ready(fetch.as_mut().poll(cx))).await;
                if let Poll::Ready(answer) = polled {
                    got = Some(answer);
                    break;
                }
                tokio::task::yield_now().await;
            }
            got
        }
    };
    let Some(got) = got else {
        return Outcome::Cancelled;
    };
    let after = outage.0.load(Ordering::SeqCst);
    let keys_were_there = before == after && before.is_multiple_of(2);
    judge(&plan, &key, got, keys_were_there)
}

fn judge(
    plan: &Plan,
    key: &str,
    got: Result<Option<RawSession>, StoreError>,
    keys_were_there: bool,
) -> Outcome {
    match got {
        Ok(Some(raw)) => {
            assert!(
                !plan.missing,
                "{key} does not exist but was answered {raw:?}"
            );
            let RawValue::String(bytes) = &raw.value else {
                panic!("{key} was answered a hash: {raw:?}");
            };
            let want = format!("{{\"user\":\"u{}\"}}", plan.key);
            assert_eq!(
                String::from_utf8_lossy(bytes),
                want,
                "{key} was answered another session's value"
            );
            assert_eq!(
                raw.ttl_ms.is_some(),
                plan.ttl,
                "{key}: a TTL only when asked for (and every key has one)"
            );
            Outcome::Answered
        }
        Ok(None) if plan.missing => Outcome::Answered,
        Ok(None) => {
            assert!(
                !keys_were_there,
                "{key} exists but was answered None (another command's reply)"
            );
            Outcome::Lost
        }
        Err(StoreError::WrongType) => panic!("{key} holds a string but was answered WRONGTYPE"),
        Err(e) => {
            let text = e.to_string();
            // A reply of the wrong shape is another command's reply.
            for symptom in ["Incompatible type", "reply to no command", "no reply"] {
                assert!(!text.contains(symptom), "{key}: {text}");
            }
            assert!(e.is_unreachable(), "{key}: {e}");
            Outcome::Failed
        }
    }
}

/// What Redis goes through while the lookups run; `done` when it is over.
fn chaos(mut redis: RedisServer, outage: Arc<Outage>, done: Arc<AtomicBool>) -> RedisServer {
    let nap = |ms| std::thread::sleep(Duration::from_millis(ms));
    for _ in 0..2 {
        nap(200);
        pause(&redis, 250);
        nap(450);
        stall(&redis, 250);
        nap(250);
        // A crash with lookups in flight, and a restart on the same port.
        outage.0.fetch_add(1, Ordering::SeqCst);
        redis.stop();
        nap(100);
        redis.restart();
        seed(&redis);
        outage.0.fetch_add(1, Ordering::SeqCst);
        nap(250);
        // And one with no pause before the restart.
        outage.0.fetch_add(1, Ordering::SeqCst);
        redis.restart();
        seed(&redis);
        outage.0.fetch_add(1, Ordering::SeqCst);
    }
    nap(200);
    done.store(true, Ordering::SeqCst);
    redis
}

async fn wave(
    store: &Arc<RedisStore>,
    outage: &Arc<Outage>,
    rng: &mut impl Rng,
    cancels: bool,
    tally: &mut [usize; 4],
) {
    let tasks: Vec<_> = (0..WAVE)
        .map(|_| {
            let plan = Plan::random(rng, cancels);
            tokio::spawn(lookup(store.clone(), plan, outage.clone()))
        })
        .collect();
    for task in tasks {
        let outcome = task
            .await
            .expect("a lookup got an answer that is not its own");
        tally[outcome as usize] += 1;
    }
}

/// Before the trouble: with Redis well, lookups given up on at random
/// points never make another lookup fail. The command timeout is long, so
/// only a lookup left waiting for a flush or a wake-up that never comes
/// would reach it.
async fn quiet(redis: &RedisServer, rng: &mut impl Rng) {
    let store = store(&redis.url(), "2s");
    let outage = Arc::new(Outage(AtomicU64::new(0)));
    let mut tally = [0usize; 4];
    for _ in 0..60 {
        wave(&store, &outage, rng, true, &mut tally).await;
    }
    assert_eq!(tally[Outcome::Failed as usize], 0, "{tally:?}");
    assert!(tally[Outcome::Answered as usize] >= 1000, "{tally:?}");
}

/// One thread, so one pipe: every lookup shares the connection, its queue
/// and its failures.
#[tokio::test(flavor = "current_thread")]
async fn under_cancellation_timeouts_and_restarts_every_answer_is_its_own() {
    run().await;
}

/// Two threads, two pipes, and lookups that move between threads while in
/// flight (one polled on a thread whose pipe is not the one it waits on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_threads_too() {
    run().await;
}

async fn run() {
    let started = Instant::now();
    let seed_value: u64 = rand::rng().random();
    eprintln!("rng seed {seed_value}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed_value);
    let redis = RedisServer::start();
    seed(&redis);
    quiet(&redis, &mut rng).await;
    let store = store(&redis.url(), "100ms");
    let outage = Arc::new(Outage(AtomicU64::new(0)));
    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (outage, done) = (outage.clone(), done.clone());
        std::thread::spawn(move || chaos(redis, outage, done))
    };

    let mut tally = [0usize; 4];
    let mut waves = 0;
    while !done.load(Ordering::SeqCst) || waves < 10 {
        wave(&store, &outage, &mut rng, true, &mut tally).await;
        waves += 1;
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "too slow: {tally:?}"
        );
    }
    let redis = chaos.join().expect("chaos thread");
    let [answered, lost, failed, cancelled] = tally;
    eprintln!(
        "{} lookups in {waves} waves of {WAVE}: {answered} answered, {lost} lost in a restart, \
         {failed} failed, {cancelled} given up on, in {:?}",
        tally.iter().sum::<usize>(),
        started.elapsed()
    );
    assert!(answered >= 1000, "too few answers to prove much: {tally:?}");
    assert!(cancelled >= 500, "too few cancellations: {tally:?}");
    assert!(
        failed >= 50,
        "the timeouts and crashes did not bite: {tally:?}"
    );

    // Redis is back and left alone: the pipe is in step again, and every
    // lookup that waits is answered, with its own value.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store
        .fetch("sess:1", ValueFormat::Json, true)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the pipe never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The store's 100 ms timeout can still bite on a loaded machine (the
    // other test's chaos runs beside this one): a pipe in step answers a
    // whole wave within a few tries, one out of step never does (and a
    // wrong value panics in `wave`).
    let mut calms = Vec::new();
    for _ in 0..5 {
        let mut calm = [0usize; 4];
        wave(&store, &outage, &mut rng, false, &mut calm).await;
        calms.push(calm);
        if calm[Outcome::Answered as usize] == WAVE {
            break;
        }
    }
    assert!(
        calms.iter().any(|c| c[Outcome::Answered as usize] == WAVE),
        "no calm wave was answered in full: {calms:?}"
    );
    let n: usize = redis::cmd("DBSIZE")
        .query(&mut redis.conn())
        .expect("dbsize");
    assert_eq!(n, KEYS, "the lookups wrote nothing");
}
