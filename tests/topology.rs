//! `[redis] mode = "sentinel"` and `mode = "cluster"` against real servers:
//! a Sentinel-managed master that fails over, and a three-master cluster.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::topology::{ClusterSetup, SentinelSetup};
use support::{get, EchoUpstream, TestGateway};

const SESSION: &str = r#"{"user":{"id":"7","role":"admin"}}"#;

fn config(redis: &str, upstream: &EchoUpstream) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
{redis}
command_timeout = "300ms"
connect_timeout = "500ms"

[session]
cookie = "sid"
cookie_format = "plain"
key = "sess:{{id}}"

[identity.headers]
"X-User-Id" = "user.id"

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

fn status(gateway: &TestGateway, id: &str) -> u16 {
    get(gateway.addr, "/", &[("Cookie", &format!("sid={id}"))]).status
}

/// Polls until `id` gets `want`, for at most `limit`; returns how long it took.
fn eventually(gateway: &TestGateway, id: &str, want: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = status(gateway, id);
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{id} did not become {want} within {limit:?} (last {got}):\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sentinel_master_failover_never_turns_a_valid_session_into_a_401() {
    let setup = SentinelSetup::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let redis = format!(
        "mode = \"sentinel\"\nsentinels = [\"{}\"]\nmaster = \"mymaster\"",
        setup.sentinel.addr()
    );
    let gateway = TestGateway::start(&config(&redis, &upstream));
    let old = setup.master_port();
    let _: () = setup
        .master()
        .conn()
        .set_ex("sess:a", SESSION, 600)
        .unwrap();
    eventually(&gateway, "a", 200, Duration::from_secs(5));
    let resp = get(gateway.addr, "/", &[("Cookie", "sid=a")]);
    assert_eq!(resp.echoed("X-User-Id"), vec!["7"]);

    setup.failover();
    let started = Instant::now();
    let mut moved_at = None;
    let mut ok_after_move = 0;
    let mut unavailable = 0;
    while ok_after_move < 20 {
        let got = status(&gateway, "a");
        assert!(
            got == 200 || got == 503,
            "a valid session got {got} during the failover:\n{}",
            gateway.log()
        );
        unavailable += u32::from(got == 503);
        if moved_at.is_none() && setup.master_port() != old {
            moved_at = Some(Instant::now());
        }
        if moved_at.is_some() && got == 200 {
            ok_after_move += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no steady 200s after the failover ({unavailable} 503s):\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_ne!(setup.master_port(), old);

    // The new master is the one the gateway and its cache listen to: a logout
    // there (DEL) ends the session at once, and a new session works.
    let new_master = setup.master();
    let _: () = new_master.conn().del("sess:a").unwrap();
    let took = eventually(&gateway, "a", 401, Duration::from_secs(3));
    assert!(took < Duration::from_secs(2), "revocation took {took:?}");
    let _: () = new_master.conn().set_ex("sess:b", SESSION, 600).unwrap();
    eventually(&gateway, "b", 200, Duration::from_secs(3));

    // The session commands find the new master through the Sentinel too.
    let out = std::process::Command::new(support::gateway::binary())
        .args(["session", "show", "-c"])
        .arg(&gateway.config_path)
        .arg("b")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"7\""), "{stdout}");
}

#[test]
fn cluster_sessions_on_every_master_pass_and_revoke_and_a_dead_master_only_hurts_its_keys() {
    let cluster = ClusterSetup::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let nodes: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("\"{}\"", n.addr()))
        .collect();
    let redis = format!("mode = \"cluster\"\nnodes = [{}]", nodes.join(", "));
    let gateway = TestGateway::start(&config(&redis, &upstream));

    // One session id per master.
    let mut ids: Vec<Option<String>> = vec![None; cluster.nodes.len()];
    for n in 0.. {
        let id = format!("s{n}");
        let owner = cluster.owner(&format!("sess:{id}"));
        if ids[owner].is_none() {
            let _: () = cluster.nodes[owner]
                .conn()
                .set_ex(format!("sess:{id}"), SESSION, 600)
                .unwrap();
            ids[owner] = Some(id);
        }
        if ids.iter().all(Option::is_some) {
            break;
        }
    }
    let ids: Vec<String> = ids.into_iter().map(Option::unwrap_or_default).collect();
    for id in &ids {
        eventually(&gateway, id, 200, Duration::from_secs(5));
    }
    // Warm the cache, then revoke on each master in turn: each DEL lands at once.
    std::thread::sleep(Duration::from_millis(500));
    for (owner, id) in ids.iter().enumerate() {
        for _ in 0..3 {
            assert_eq!(status(&gateway, id), 200);
        }
        let _: () = cluster.nodes[owner]
            .conn()
            .del(format!("sess:{id}"))
            .unwrap();
        let took = eventually(&gateway, id, 401, Duration::from_secs(2));
        assert!(
            took < Duration::from_millis(500),
            "{id} revoked after {took:?}"
        );
        let _: () = cluster.nodes[owner]
            .conn()
            .set_ex(format!("sess:{id}"), SESSION, 600)
            .unwrap();
        eventually(&gateway, id, 200, Duration::from_secs(2));
    }

    // Kill one master: once the gateway has noticed (its cached entry may
    // answer until the invalidation channel drops), its keys get 503, fast,
    // while the others keep passing.
    let mut cluster = cluster;
    cluster.nodes[0].kill();
    let took = eventually(&gateway, &ids[0], 503, Duration::from_secs(3));
    assert!(took < Duration::from_secs(2), "first 503 after {took:?}");
    for _ in 0..20 {
        let t = Instant::now();
        let dead = status(&gateway, &ids[0]);
        assert_eq!(dead, 503, "a dead master's session:\n{}", gateway.log());
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "503 took {:?}",
            t.elapsed()
        );
        for id in &ids[1..] {
            assert_eq!(status(&gateway, id), 200, "{id}:\n{}", gateway.log());
        }
    }

    // The outage ends by itself: the master comes back (empty), the app
    // writes the session again, and it passes without restarting the gateway.
    cluster.nodes[0].restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.nodes[0]
        .conn()
        .set_ex::<_, _, ()>(format!("sess:{}", ids[0]), SESSION, 600)
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the master never took its slots back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eventually(&gateway, &ids[0], 200, Duration::from_secs(5));
    for id in &ids[1..] {
        assert_eq!(status(&gateway, id), 200);
    }
}

#[test]
fn sentinel_master_crash_gives_503_at_worst_then_the_promoted_replica_serves() {
    let mut setup = SentinelSetup::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let redis = format!(
        "mode = \"sentinel\"\nsentinels = [\"{}\"]\nmaster = \"mymaster\"",
        setup.sentinel.addr()
    );
    let gateway = TestGateway::start(&config(&redis, &upstream));
    let old = setup.master_port();
    let _: () = setup
        .master()
        .conn()
        .set_ex("sess:a", SESSION, 600)
        .unwrap();
    eventually(&gateway, "a", 200, Duration::from_secs(5));
    // Let the replica copy the session before the master dies.
    let replica = setup.nodes.iter().position(|n| n.port != old).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while setup.nodes[replica].conn().exists::<_, bool>("sess:a").ok() != Some(true) {
        assert!(
            Instant::now() < deadline,
            "the replica never got the session"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let master = setup.nodes.iter().position(|n| n.port == old).unwrap();
    setup.nodes[master].kill();
    let started = Instant::now();
    let (mut ok_streak, mut unavailable) = (0, 0);
    while ok_streak < 20 {
        let got = status(&gateway, "a");
        assert!(
            got == 200 || got == 503,
            "a valid session got {got} after the master died:\n{}",
            gateway.log()
        );
        if got == 200 {
            ok_streak += 1;
        } else {
            ok_streak = 0;
            unavailable += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no steady 200s after the crash ({unavailable} 503s):\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_ne!(setup.master_port(), old);
    assert!(
        unavailable > 0,
        "the dead master's session cannot have been served from Redis"
    );
}
