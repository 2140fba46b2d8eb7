//! Revocation through the cache under `mode = "cluster"` and `mode =
//! "sentinel"`, against real servers: every master reports changes of its
//! own keys, a flush on any node empties the cache, and a failover to a
//! replica that lacks a write stops the cache from serving what the new
//! master does not hold.

mod support;

use std::time::{Duration, Instant};

use redis::Commands;
use support::revocation::{cached, gone, sample, seen};
use support::topology::{ClusterSetup, SentinelSetup};
use support::{EchoUpstream, TestGateway};

/// See tests/revocation.rs: far inside the cache's 30 s cap, with room for a
/// debug build on a loaded machine.
const LATENCY: Duration = Duration::from_secs(1);

const ADMIN: &str = r#"{"user":{"id":"7","role":"admin"}}"#;
const VIEWER: &str = r#"{"user":{"id":"8","role":"viewer"}}"#;

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

#[test]
fn cluster_every_master_reports_its_keys_and_a_flush_empties_the_cache() {
    let cluster = ClusterSetup::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let nodes: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("\"{}\"", n.addr()))
        .collect();
    let redis = format!("mode = \"cluster\"\nnodes = [{}]", nodes.join(", "));
    let gateway = TestGateway::start(&config(&redis, &upstream));

    // Two session ids per master.
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); cluster.nodes.len()];
    for n in 0.. {
        let id = format!("c{n}");
        let owner = cluster.owner(&format!("sess:{id}"));
        if ids[owner].len() < 2 {
            ids[owner].push(id);
        }
        if ids.iter().all(|i| i.len() == 2) {
            break;
        }
    }
    let seed = |owner: usize, id: &str, value: &str| {
        let _: () = cluster.nodes[owner]
            .conn()
            .set_ex(format!("sess:{id}"), value, 600)
            .unwrap();
    };
    for (owner, pair) in ids.iter().enumerate() {
        let (del, set) = (&pair[0], &pair[1]);
        seed(owner, del, ADMIN);
        seed(owner, set, ADMIN);
        assert_eq!(cached(&gateway, del), "admin");
        assert_eq!(cached(&gateway, set), "admin");
        let mut conn = cluster.nodes[owner].conn();

        let started = Instant::now();
        let _: () = conn.del(format!("sess:{del}")).unwrap();
        let took = gone(&gateway, del, "admin", started, LATENCY);
        eprintln!("cluster node {owner}: DEL refused after {took:?}");

        let started = Instant::now();
        let _: () = conn.set_ex(format!("sess:{set}"), VIEWER, 600).unwrap();
        let took = gone(&gateway, set, "admin", started, LATENCY);
        assert_eq!(seen(&gateway, set), Ok("viewer".into()));
        eprintln!("cluster node {owner}: SET (downgrade) seen after {took:?}");

        // A TTL change on this master puts the unchanged entry back (once the
        // channel has fingerprinted it, a round trip after it was cached).
        assert_eq!(cached(&gateway, set), "viewer");
        std::thread::sleep(Duration::from_millis(100));
        let restored = sample(&gateway, "sessiongate_cache_restored_total", &[]);
        let _: () = conn.expire(format!("sess:{set}"), 1200).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while sample(&gateway, "sessiongate_cache_restored_total", &[]) <= restored {
            assert!(
                Instant::now() < deadline,
                "cluster node {owner}: the entry was not put back after EXPIRE:\n{}",
                gateway.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(cached(&gateway, set), "viewer");
    }

    // FLUSHALL on one master: only its keys are gone, and the cache says so.
    let flushed = &ids[1][1];
    let other = &ids[0][1];
    assert_eq!(cached(&gateway, flushed), "viewer");
    assert_eq!(cached(&gateway, other), "viewer");
    let started = Instant::now();
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut cluster.nodes[1].conn())
        .unwrap();
    let took = gone(&gateway, flushed, "viewer", started, LATENCY);
    eprintln!("cluster node 1: FLUSHALL refused after {took:?}");
    assert_eq!(seen(&gateway, flushed), Err(401));
    assert_eq!(cached(&gateway, other), "viewer");
}

fn sentinel_gateway(setup: &SentinelSetup, upstream: &EchoUpstream) -> TestGateway {
    let redis = format!(
        "mode = \"sentinel\"\nsentinels = [\"{}\"]\nmaster = \"mymaster\"",
        setup.sentinel.addr()
    );
    TestGateway::start(&config(&redis, upstream))
}

#[test]
fn sentinel_master_reports_del_flush_and_swapdb() {
    let setup = SentinelSetup::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = sentinel_gateway(&setup, &upstream);
    let master = setup.master();
    for (what, command) in [
        ("DEL", vec!["DEL", "sess:s"]),
        ("FLUSHALL", vec!["FLUSHALL"]),
        ("SWAPDB", vec!["SWAPDB", "0", "1"]),
    ] {
        let _: () = master.conn().set_ex("sess:s", ADMIN, 600).unwrap();
        assert_eq!(cached(&gateway, "s"), "admin");
        let mut cmd = redis::cmd(command[0]);
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        let started = Instant::now();
        let _: () = cmd.query(&mut master.conn()).unwrap();
        let took = gone(&gateway, "s", "admin", started, LATENCY);
        eprintln!("sentinel master: {what} refused after {took:?}");
        if what == "SWAPDB" {
            // Swap back, so the next round starts from the same database.
            let _: () = cmd.query(&mut master.conn()).unwrap();
        }
    }
}

#[test]
fn a_failover_to_a_replica_that_lacks_the_session_stops_the_cache_serving_it() {
    let setup = SentinelSetup::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = sentinel_gateway(&setup, &upstream);
    let old = setup.master_port();
    let master = setup.master();
    let replica = setup
        .nodes
        .iter()
        .find(|n| n.port != old)
        .expect("a replica");
    let _: () = master.conn().set_ex("sess:f", ADMIN, 600).unwrap();
    assert_eq!(cached(&gateway, "f"), "admin");
    // The replica lacks the write: as if it had not replicated it yet.
    let mut conn = replica.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-read-only")
        .arg("no")
        .query(&mut conn)
        .unwrap();
    let _: () = conn.del("sess:f").unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("replica-read-only")
        .arg("yes")
        .query(&mut conn)
        .unwrap();

    setup.failover();
    let deadline = Instant::now() + Duration::from_secs(20);
    while setup.master_port() == old {
        assert!(Instant::now() < deadline, "the sentinel never failed over");
        std::thread::sleep(Duration::from_millis(10));
    }
    let switched = Instant::now();
    let took = gone(&gateway, "f", "admin", switched, Duration::from_secs(3));
    eprintln!(
        "failover to a replica without the session: refused {took:?} after the sentinel named it"
    );
    // From then on the new master decides, and it has no such session.
    for _ in 0..20 {
        assert_ne!(seen(&gateway, "f"), Ok("admin".into()));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The cache is trusted again on the new master.
    let _: () = replica.conn().set_ex("sess:g", VIEWER, 600).unwrap();
    assert_eq!(cached(&gateway, "g"), "viewer");
}
