//! Redis failing under load: killed and restarted (empty, same port) while
//! client threads send authenticated and unauthenticated requests, for both
//! `on_store_error` policies. Loopback only; every run stops by itself.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::Commands;
use support::{get, EchoUpstream, RedisServer, TestGateway};

/// Authenticated requests go to `/app/...` (upstream `app`); requests without
/// a valid session go to `/anon/...` (upstream `anon`), so `anon` must never
/// see one.
fn config(redis: &RedisServer, app: &EchoUpstream, anon: &EchoUpstream, extra: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"
command_timeout = "100ms"
connect_timeout = "200ms"
breaker_failures = 3
breaker_cooldown = "250ms"

[session]
cookie = "sid"
cookie_format = "plain"
key = "sess:{{id}}"

[identity.headers]
"X-User-Id" = "user.id"

[cache]
{extra_cache}

[[upstream]]
name = "app"
addrs = ["{app}"]

[[upstream]]
name = "anon"
addrs = ["{anon}"]

[[route]]
name = "app"
path_prefix = "/app/"
upstream = "app"
{extra_route}

[[route]]
name = "anon"
path_prefix = "/anon/"
upstream = "anon"
{extra_route}
"#,
        url = redis.url(),
        app = app.addr,
        anon = anon.addr,
        extra_cache = extra.split_once('|').map_or("", |(c, _)| c),
        extra_route = extra.split_once('|').map_or(extra, |(_, r)| r),
    )
}

const USERS: [&str; 2] = ["alice", "bob"];

fn load_sessions(redis: &RedisServer, ids: &[&str]) {
    let mut conn = redis.conn();
    for id in ids {
        let _: () = conn
            .set_ex(
                format!("sess:{id}"),
                format!(r#"{{"user":{{"id":"{id}"}}}}"#),
                3600,
            )
            .unwrap();
    }
}

fn status(gateway: &TestGateway, path: &str, id: Option<&str>) -> u16 {
    let cookie = id.map(|id| format!("sid={id}"));
    let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", c.as_str())).collect();
    get(gateway.addr, path, &headers).status
}

/// Polls until `id` gets `want` on `path`, for at most 10 s.
fn wait_for(gateway: &TestGateway, path: &str, id: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(gateway, path, Some(id)) != want {
        assert!(
            Instant::now() < deadline,
            "{id} never got {want}:\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    unavailable: AtomicUsize,
    unauthenticated: AtomicUsize,
    other: AtomicUsize,
}

impl Counts {
    fn add(&self, status: u16) {
        match status {
            200 => &self.ok,
            503 => &self.unavailable,
            401 => &self.unauthenticated,
            _ => &self.other,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> [usize; 4] {
        [
            self.ok.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
            self.unauthenticated.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        ]
    }
}

/// Redis is killed for 1.5 s and restarted empty (then the sessions are
/// loaded again, as the app's users log in again) while two threads send
/// authenticated requests and two send requests without a valid session
/// (no cookie, made-up ids, a session revoked before the outage).
fn outage_under_load(policy: &str) -> ([usize; 4], [usize; 4]) {
    let mut redis = RedisServer::start();
    let app = EchoUpstream::start("127.0.0.1:0").unwrap();
    let anon = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&config(
        &redis,
        &app,
        &anon,
        &format!("|on_store_error = \"{policy}\""),
    ));
    load_sessions(&redis, &USERS);
    load_sessions(&redis, &["revoked"]);
    for user in USERS {
        wait_for(&gateway, "/app/x", user, 200);
    }
    // Seen, then revoked (logout) before the outage.
    assert_eq!(status(&gateway, "/app/x", Some("revoked")), 200);
    let _: () = redis.conn().del("sess:revoked").unwrap();
    wait_for(&gateway, "/app/x", "revoked", 401);
    let app_before = app.requests();

    let gateway = Arc::new(gateway);
    // Clients hold it for reading per request; the restart (with the reload
    // of the sessions) holds it for writing, so no request sees Redis empty.
    let gate = Arc::new(RwLock::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let authed = Arc::new(Counts::default());
    let unauthed = Arc::new(Counts::default());
    let mut threads = Vec::new();
    for t in 0..2 {
        let (gw, gate_r, stopping, counts) =
            (gateway.clone(), gate.clone(), stop.clone(), authed.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0usize;
            while !stopping.load(Ordering::Relaxed) {
                let _held = gate_r.read().unwrap();
                let user = USERS[(n + t) % USERS.len()];
                counts.add(status(&gw, "/app/x", Some(user)));
                n += 1;
            }
        }));
        let (gw, gate_r, stopping, counts) = (
            gateway.clone(),
            gate.clone(),
            stop.clone(),
            unauthed.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut n = 0usize;
            while !stopping.load(Ordering::Relaxed) {
                let _held = gate_r.read().unwrap();
                let made_up = format!("made-up-{t}-{n}");
                let id = match n % 3 {
                    0 => None,
                    1 => Some(made_up.as_str()),
                    _ => Some("revoked"),
                };
                counts.add(status(&gw, "/anon/x", id));
                n += 1;
            }
        }));
    }

    std::thread::sleep(Duration::from_millis(500));
    redis.stop();
    std::thread::sleep(Duration::from_millis(1500));
    // The load waits until the gateway answers again: the sessions loaded
    // anew are overwrites, which end their last known good (the invalidation
    // channel, back first, says so), so until the gateway's own connection
    // is back a request for one is rightly refused, even with `stale`.
    let exclusive = gate.write().unwrap();
    redis.restart();
    load_sessions(&redis, &USERS);
    let up = Instant::now();
    // 200s resume within 1 s of Redis answering again (the breaker's probe
    // and the connection's reconnect included).
    loop {
        let code = status(&gateway, "/app/x", Some(USERS[0]));
        if code == 200 {
            break;
        }
        assert_eq!(code, 503, "{policy}: an authenticated request got {code}");
        assert!(
            up.elapsed() < Duration::from_secs(1),
            "{policy}: still 503 {:?} after redis came back:\n{}",
            up.elapsed(),
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let resumed = up.elapsed();
    drop(exclusive);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    let (a, u) = (authed.get(), unauthed.get());
    eprintln!(
        "{policy}: authenticated [200, 503, 401, other] = {a:?}; without a session = {u:?}; \
         200s resumed {resumed:?} after redis came back; app upstream saw {}",
        app.requests() - app_before
    );
    assert_eq!(
        anon.requests(),
        0,
        "{policy}: a request without a session was forwarded"
    );
    assert_eq!(a[2], 0, "{policy}: an authenticated request got 401");
    assert_eq!(
        a[3], 0,
        "{policy}: an authenticated request got another status"
    );
    assert_eq!(u[0], 0, "{policy}: a request without a session got 200");
    assert_eq!(
        u[3], 0,
        "{policy}: a request without a session got another status"
    );
    assert!(
        a[0] > 0 && u[1] > 0 && u[2] > 0,
        "{policy}: too little load: {a:?} {u:?}"
    );
    if policy == "stale" {
        let stale = gateway
            .access_log()
            .iter()
            .filter(|l| l["reason"] == "stale")
            .inspect(|l| assert_eq!(l["decision"], "forwarded"))
            .count();
        assert!(stale > 0, "no request was logged as served stale");
    }
    (a, u)
}

#[test]
fn deny_gives_503_during_an_outage_and_never_401() {
    let (authed, _) = outage_under_load("deny");
    assert!(authed[1] > 0, "no 503 during the outage: {authed:?}");
}

#[test]
fn stale_keeps_known_sessions_in_during_an_outage() {
    let (authed, _) = outage_under_load("stale");
    assert_eq!(authed[1], 0, "a known session got 503: {authed:?}");
}

/// `stale` lets in only what resolved before the outage, within `stale_for`,
/// and not a session revoked before it.
#[test]
fn stale_admits_nothing_unseen_or_revoked() {
    let mut redis = RedisServer::start();
    let app = EchoUpstream::start("127.0.0.1:0").unwrap();
    let anon = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&config(
        &redis,
        &app,
        &anon,
        "stale_for = \"3s\"|on_store_error = \"stale\"",
    ));
    load_sessions(&redis, &["alice", "unseen", "revoked"]);
    wait_for(&gateway, "/app/x", "alice", 200);
    assert_eq!(status(&gateway, "/app/x", Some("revoked")), 200);
    let _: () = redis.conn().del("sess:revoked").unwrap();
    wait_for(&gateway, "/app/x", "revoked", 401);
    let last_good = Instant::now();
    assert_eq!(status(&gateway, "/app/x", Some("alice")), 200);

    redis.stop();
    assert_eq!(
        status(&gateway, "/app/x", Some("unseen")),
        503,
        "never seen"
    );
    // Let the live cache notice the dropped channel (its ping gives up
    // within 1 s), so the next answer comes from the last-known-good record.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        status(&gateway, "/app/x", Some("alice")),
        200,
        "seen: stale"
    );
    assert_eq!(
        status(&gateway, "/app/x", Some("unseen")),
        503,
        "never seen"
    );
    assert_eq!(status(&gateway, "/app/x", Some("revoked")), 503, "revoked");
    assert_eq!(status(&gateway, "/app/x", Some("made-up")), 503);
    assert_eq!(status(&gateway, "/app/x", None), 401);
    // Serving stale does not refresh the record: past stale_for it is gone.
    std::thread::sleep(Duration::from_millis(3300).saturating_sub(last_good.elapsed()));
    assert_eq!(
        status(&gateway, "/app/x", Some("alice")),
        503,
        "past stale_for"
    );

    let log = gateway.access_log();
    let stale: Vec<_> = log.iter().filter(|l| l["reason"] == "stale").collect();
    assert_eq!(stale.len(), 1, "{log:?}");
    assert_eq!(stale[0]["decision"], "forwarded");
    assert_eq!(stale[0]["status"], 200);
    let text = log.iter().map(|l| l.to_string()).collect::<String>();
    assert!(!text.contains("unseen") && !text.contains("made-up"));
    assert_eq!(anon.requests(), 0);
}
