//! Operations, end to end against the real binary, a real redis-server and an
//! echo upstream: the admin listener (/metrics, /healthz, /readyz, basic
//! auth), the JSON access log, and SIGHUP reload under load.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::Value;
use support::{fixture, get, Client, EchoUpstream, RedisServer, TestGateway};

const SECRETS: &str = r#"["fixture-secret-current", "fixture-secret-previous"]"#;
const ALICE_ID: &str = "f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o";
const VIEWER_ID: &str = "27D-Pq_tbBxSbRlpuRSKUFOxYmHQg_Nr";
const ALICE_COOKIE: &str = "connect.sid=s%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lT0";
const VIEWER_COOKIE: &str = "connect.sid=s%3A27D-Pq_tbBxSbRlpuRSKUFOxYmHQg_Nr.20FKr79EoBEozE16VHbg0I5vE1p4erFmMImd%2FW12UDY";
/// A well-formed opaque bearer id with no session behind it.
const UNKNOWN_TOKEN: &str = "NoSuchSessionIdAtAll0123456789ab";
const QUERY_SECRET: &str = "query-secret-4f1c";

struct Setup {
    redis: RedisServer,
    _upstream: EchoUpstream,
    gateway: TestGateway,
}

/// `extra` goes into `[admin]`, except `user_field`, which is a `[session]` key.
fn config(redis: &RedisServer, upstream: &EchoUpstream, extra: &str, threads: u32) -> String {
    let (session, admin): (Vec<&str>, Vec<&str>) =
        extra.lines().partition(|l| l.starts_with("user_field"));
    let (session, admin) = (session.join("\n"), admin.join("\n"));
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = {threads}

[redis]
url = "{url}"
command_timeout = "200ms"

[session]
cookie = "connect.sid"
cookie_format = "express"
secrets = {SECRETS}
bearer = "opaque"
bearer_key = "api:{{id}}"
key = "sess:{{id}}"
{session}

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Role" = "user.role"

[admin]
listen = "127.0.0.1:0"
{admin}

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
name = "public"
path_prefix = "/public/"
upstream = "app"
access = "public"

[[route]]
name = "admin"
path_prefix = "/admin/"
upstream = "app"
roles = ["admin"]

[[route]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        url = redis.url(),
        upstream = upstream.addr,
    )
}

fn setup(admin: &str) -> Setup {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let gateway = TestGateway::start(&config(&redis, &upstream, admin, 1));
    let fx = fixture("express-session.json");
    let mut conn = redis.conn();
    for case in fx["valid"].as_array().unwrap() {
        let _: () = conn
            .set_ex(
                case["redis_key"].as_str().unwrap(),
                case["redis_value"].as_str().unwrap(),
                3600,
            )
            .unwrap();
    }
    Setup {
        redis,
        _upstream: upstream,
        gateway,
    }
}

/// The value of one sample of `/metrics` text: `name` with exactly `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, got) = match series.split_once('{') {
                Some((metric, rest)) => (metric, parse_labels(rest.strip_suffix('}')?)),
                None => (series, BTreeMap::new()),
            };
            (metric == name && got == want).then(|| value.parse().ok())?
        })
}

fn parse_labels(text: &str) -> BTreeMap<&str, &str> {
    text.split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once("=\"")?;
            Some((k, v.trim_end_matches('"')))
        })
        .collect()
}

fn metrics(s: &Setup) -> String {
    let resp = get(s.gateway.admin_addr(), "/metrics", &[]);
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.body
}

/// Waits until `check` holds for the `/metrics` text (requests are counted
/// after their response is sent); returns the text that satisfied it.
fn metrics_until(s: &Setup, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(s);
        if check(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}; /metrics:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn requests(text: &str, route: &str, decision: &str) -> f64 {
    sample(
        text,
        "sessiongate_requests_total",
        &[("route", route), ("decision", decision)],
    )
    .unwrap_or(0.0)
}

/// A known sequence: 2 forwarded, 1 public, 3 unauthenticated, 1 forbidden
/// and 1 invalid (bad path).
fn known_sequence(s: &Setup) {
    let addr = s.gateway.addr;
    let json = ("Accept", "application/json");
    let alice = ("Cookie", ALICE_COOKIE);
    let path = format!("/dashboard?token={QUERY_SECRET}");
    assert_eq!(get(addr, &path, &[alice]).status, 200);
    assert_eq!(get(addr, "/admin/panel", &[alice]).status, 200);
    assert_eq!(get(addr, "/public/logo.png", &[]).status, 200);
    assert_eq!(get(addr, "/dashboard", &[json]).status, 401);
    let forged = "connect.sid=s%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.forgedsignature";
    assert_eq!(
        get(addr, "/dashboard", &[json, ("Cookie", forged)]).status,
        401
    );
    let bearer = format!("Bearer {UNKNOWN_TOKEN}");
    let resp = get(addr, "/dashboard", &[json, ("Authorization", &bearer)]);
    assert_eq!(resp.status, 401);
    assert_eq!(
        get(addr, "/admin/panel", &[("Cookie", VIEWER_COOKIE)]).status,
        403
    );
    assert_eq!(get(addr, "/a/%2e%2e%2f/b", &[]).status, 400);
}

#[test]
fn metrics_count_every_decision_per_route() {
    let s = setup("");
    let before = metrics(&s);
    assert!(
        sample(
            &before,
            "sessiongate_config_last_reload_success_timestamp_seconds",
            &[]
        )
        .is_some_and(|t| t > 1.0e9),
        "{before}"
    );
    assert!(before.contains(&format!(
        "sessiongate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));

    known_sequence(&s);
    let text = metrics_until(&s, "8 requests counted", |t| {
        requests(t, "-", "invalid") == 1.0 && requests(t, "admin", "forbidden") == 1.0
    });
    let expected = [
        ("app", "forwarded", 1.0),
        ("admin", "forwarded", 1.0),
        ("public", "public", 1.0),
        ("app", "unauthenticated", 3.0),
        ("admin", "forbidden", 1.0),
        ("-", "invalid", 1.0),
    ];
    for (route, decision, n) in expected {
        assert_eq!(requests(&text, route, decision), n, "{route} {decision}");
    }
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("sessiongate_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 8.0, "{text}");
    let count = |route| {
        sample(
            &text,
            "sessiongate_request_duration_seconds_count",
            &[("route", route)],
        )
    };
    assert_eq!(count("app"), Some(4.0));
    assert_eq!(count("admin"), Some(2.0));
    let upstream = |class| {
        sample(
            &text,
            "sessiongate_upstream_responses_total",
            &[("upstream", "app"), ("class", class)],
        )
    };
    assert_eq!(upstream("2xx"), Some(3.0));
    assert_eq!(upstream("error"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "sessiongate_upstream_duration_seconds_count",
            &[("upstream", "app")]
        ),
        Some(3.0)
    );
    let lookups = |result| {
        sample(
            &text,
            "sessiongate_session_lookups_total",
            &[("source", "redis"), ("result", result)],
        )
        .unwrap_or(0.0)
    };
    assert!(lookups("hit") >= 2.0, "{text}");
    assert!(lookups("miss") >= 1.0, "{text}");
    assert_eq!(lookups("error"), 0.0);
    assert!(
        sample(
            &text,
            "sessiongate_store_duration_seconds_count",
            &[("op", "fetch")]
        )
        .is_some_and(|n| n >= 3.0),
        "{text}"
    );
    // Bounded labels only: no user id, session id, path or token anywhere.
    for secret in [
        ALICE_ID,
        VIEWER_ID,
        UNKNOWN_TOKEN,
        "1001",
        "/dashboard",
        QUERY_SECRET,
    ] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }
}

#[test]
fn access_log_is_json_without_credentials() {
    let s = setup("");
    known_sequence(&s);
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = s.gateway.access_log();
        if log.len() >= 8 || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(log.len(), 8, "{log:#?}");
    let keys = [
        "time",
        "method",
        "host",
        "path",
        "status",
        "route",
        "decision",
        "reason",
        "duration_ms",
        "upstream",
        "upstream_ms",
        "user",
    ];
    for line in &log {
        for key in keys {
            assert!(line.get(key).is_some(), "{key} missing: {line}");
        }
        let time = line["time"].as_str().unwrap();
        assert!(
            time.len() >= 20 && &time[10..11] == "T" && time.ends_with('Z'),
            "{time}"
        );
        assert!(line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
        assert!(!line["path"].as_str().unwrap().contains('?'));
        assert_eq!(line["host"], "localhost");
    }
    let find = |status: u64, reason: Value| {
        log.iter()
            .filter(|l| l["status"] == status && l["reason"] == reason)
            .collect::<Vec<_>>()
    };
    let forwarded = find(200, Value::Null);
    assert_eq!(forwarded.len(), 3, "{log:#?}");
    let dashboard = forwarded
        .iter()
        .find(|l| l["path"] == "/dashboard")
        .expect("the forwarded /dashboard line");
    assert_eq!(dashboard["method"], "GET");
    assert_eq!(dashboard["route"], "app");
    assert_eq!(dashboard["decision"], "forwarded");
    assert_eq!(dashboard["user"], "1001");
    assert_eq!(dashboard["upstream"], "app");
    assert!(dashboard["upstream_ms"]
        .as_f64()
        .is_some_and(|ms| ms >= 0.0));
    let public = forwarded.iter().find(|l| l["route"] == "public").unwrap();
    assert_eq!(public["decision"], "public");
    assert!(public["user"].is_null());

    for reason in ["no_credential", "bad_signature", "unknown_session"] {
        let lines = find(401, reason.into());
        assert_eq!(lines.len(), 1, "{reason}: {log:#?}");
        assert_eq!(lines[0]["decision"], "unauthenticated");
        assert!(lines[0]["upstream"].is_null() && lines[0]["user"].is_null());
    }
    let forbidden = find(403, "role_missing".into());
    assert_eq!(forbidden.len(), 1);
    assert_eq!(forbidden[0]["route"], "admin");
    let invalid = find(400, "bad_path".into());
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0]["route"], "-");
    assert_eq!(invalid[0]["decision"], "invalid");

    // No cookie value, signature, token, session id or query anywhere the gateway wrote.
    let everything = format!("{}\n{}", s.gateway.stdout().join("\n"), s.gateway.log());
    for secret in [
        ALICE_ID,
        VIEWER_ID,
        UNKNOWN_TOKEN,
        QUERY_SECRET,
        "HvwJ5voNwgXc4lZElJJ",
        "forgedsignature",
        "connect.sid=",
        "s%3A",
    ] {
        assert!(!everything.contains(secret), "{secret} was logged");
    }
}

#[test]
fn access_log_can_leave_out_the_user_or_be_off() {
    let s = setup("access_log_user = false\nuser_field = \"user.email\"");
    assert_eq!(
        get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]).status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.gateway.access_log().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = s.gateway.access_log();
    assert_eq!(log.len(), 1);
    assert!(log[0]["user"].is_null(), "{}", log[0]);

    let s = setup("user_field = \"user.email\"\n");
    get(s.gateway.addr, "/x", &[("Cookie", ALICE_COOKIE)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.gateway.access_log().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.gateway.access_log()[0]["user"], "alice@example.test");

    let s = setup("access_log = false");
    assert_eq!(get(s.gateway.addr, "/public/x", &[]).status, 200);
    metrics_until(&s, "the request counted", |t| {
        requests(t, "public", "public") == 1.0
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(s.gateway.access_log().is_empty());
}

#[test]
fn healthz_and_readyz_follow_redis() {
    let mut s = setup("");
    let admin = s.gateway.admin_addr();
    let health = get(admin, "/healthz", &[]);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    assert_eq!(get(admin, "/readyz", &[]).status, 200);
    assert_eq!(get(admin, "/nope", &[]).status, 404);

    s.redis.stop();
    let wait_for = |want: u16| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = get(admin, "/readyz", &[]).status;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {got}, wanted {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(503);
    assert_eq!(get(admin, "/healthz", &[]).status, 200);
    s.redis.restart();
    wait_for(200);
}

#[test]
fn metrics_basic_auth() {
    let s = setup(r#"metrics_basic_auth = { username = "prom", password = "scrape-pass" }"#);
    let admin = s.gateway.admin_addr();
    let resp = get(admin, "/metrics", &[]);
    assert_eq!(resp.status, 401);
    assert!(resp
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Basic")));
    // "prom:wrong" and "prom:scrape-pass", base64.
    let wrong = get(
        admin,
        "/metrics",
        &[("Authorization", "Basic cHJvbTp3cm9uZw==")],
    );
    assert_eq!(wrong.status, 401);
    let ok = get(
        admin,
        "/metrics",
        &[("Authorization", "Basic cHJvbTpzY3JhcGUtcGFzcw==")],
    );
    assert_eq!(ok.status, 200);
    assert!(ok.body.contains("sessiongate_build_info"));
    assert_eq!(get(admin, "/healthz", &[]).status, 200);
    assert!(!s.gateway.log().contains("scrape-pass"));
}

#[test]
fn sighup_reloads_live_and_keeps_the_old_config_when_broken() {
    let s = setup("");
    let addr = s.gateway.addr;
    let path = s.gateway.config_path.clone();
    let original = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        get(addr, "/fresh/x", &[("Accept", "application/json")]).status,
        401
    );

    // A client hammering a public route through both reloads.
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut errors) = (0u32, Vec::new());
            let mut client = Client::connect(addr);
            for i in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if i % 50 == 0 {
                    client = Client::connect(addr);
                }
                match client.send("GET", "/public/ping", &[]) {
                    Some(r) if r.status == 200 => ok += 1,
                    Some(r) => errors.push(format!("status {}", r.status)),
                    None => {
                        errors.push("connection closed".to_owned());
                        client = Client::connect(addr);
                    }
                }
            }
            (ok, errors)
        })
    };
    std::thread::sleep(Duration::from_millis(200));

    // 1. A new public route, and a thread count change (needs a restart).
    let fresh = original
        .replace("threads = 1", "threads = 2")
        .replace(
            "[[route]]\nname = \"app\"",
            "[[route]]\nname = \"fresh\"\npath_prefix = \"/fresh/\"\nupstream = \"app\"\naccess = \"public\"\n\n[[route]]\nname = \"app\"",
        );
    assert_ne!(fresh, original);
    std::fs::write(&path, &fresh).unwrap();
    let reloaded_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    s.gateway.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(addr, "/fresh/x", &[]).status != 200 {
        assert!(Instant::now() < deadline, "the new route never went live");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = metrics_until(&s, "one good reload", |t| {
        sample(t, "sessiongate_config_reloads_total", &[("result", "ok")]) == Some(1.0)
    });
    let last = sample(
        &text,
        "sessiongate_config_last_reload_success_timestamp_seconds",
        &[],
    )
    .unwrap();
    assert!(last >= reloaded_at - 1.0, "{last} < {reloaded_at}");
    assert!(
        s.gateway.log().contains("server.threads"),
        "{}",
        s.gateway.log()
    );

    // 2. A broken file: refused, every error logged, the running config kept.
    let broken = fresh
        .replace("threads = 2", "threads = \"two\"")
        .replace("path_prefix = \"/fresh/\"", "path_prefix = \"fresh\"");
    std::fs::write(&path, &broken).unwrap();
    s.gateway.signal(libc::SIGHUP);
    metrics_until(&s, "one refused reload", |t| {
        sample(
            t,
            "sessiongate_config_reloads_total",
            &[("result", "error")],
        ) == Some(1.0)
    });
    let log = s.gateway.log();
    assert!(log.contains("server.threads"), "{log}");
    assert!(log.contains("route[2].path_prefix"), "{log}");
    assert_eq!(get(addr, "/fresh/x", &[]).status, 200);
    let alice = get(addr, "/dashboard", &[("Cookie", ALICE_COOKIE)]);
    assert_eq!(alice.echoed("X-User-Id"), ["1001"]);

    stop.store(true, Ordering::SeqCst);
    let (ok, errors) = hammer.join().unwrap();
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(ok > 0);

    // 3. `sessiongate reload` validates, then signals the pid in pid_file.
    let out = std::process::Command::new(support::gateway::binary())
        .args(["reload", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    std::fs::write(&path, &original).unwrap();
    let out = std::process::Command::new(support::gateway::binary())
        .args(["reload", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    metrics_until(&s, "a second good reload", |t| {
        sample(t, "sessiongate_config_reloads_total", &[("result", "ok")]) == Some(2.0)
    });
    assert_eq!(
        get(addr, "/fresh/x", &[("Accept", "application/json")]).status,
        401
    );
}

/// `sessiongate reload` signals only a pid file no other user could have
/// planted: one in a directory others can write (sticky bit or not), owned by
/// another user, or writable by others is refused, and nothing is signalled
/// (and `run` will not start with such a directory).
#[test]
fn reload_refuses_a_pid_file_other_users_could_have_written() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::os::unix::process::ExitStatusExt as _;
    use std::path::Path;
    use std::process::{Child, Command};

    /// The process the pid file names: `sleep` dies of a SIGHUP, so whether
    /// it was signalled shows.
    struct Target(Child);
    impl Drop for Target {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let pid_file = run_dir.join("gateway.pid");
    let config_path = dir.path().join("proxy.toml");
    let text = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
pid_file = "{}"
upgrade_sock = "{}"
[redis]
url = "redis://127.0.0.1:1"
[session]
secrets = ["s"]
[[upstream]]
name = "app"
addrs = ["127.0.0.1:1"]
[[route]]
path_prefix = "/"
upstream = "app"
"#,
        pid_file.display(),
        run_dir.join("upgrade.sock").display()
    );
    std::fs::write(&config_path, text).unwrap();
    let mut target = Target(Command::new("sleep").arg("60").spawn().unwrap());
    std::fs::write(&pid_file, format!("{}\n", target.0.id())).unwrap();
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(&pid_file, 0o644);
    let refused = |what: &str, path: &Path, reason: &str| {
        let out = Command::new(support::gateway::binary())
            .args(["reload", "-c"])
            .arg(&config_path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert!(
            stderr.contains(&path.display().to_string()) && stderr.contains(reason),
            "{what}: {stderr}"
        );
    };

    for mode in [0o777, 0o1777, 0o770] {
        chmod(&run_dir, mode);
        refused(
            &format!("directory mode {mode:o}"),
            &run_dir,
            "can be written by other users",
        );
    }
    // `run` refuses such a directory too, before Redis or Pingora are touched.
    let out = Command::new(support::gateway::binary())
        .args(["run", "-c"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "run: {out:?}");
    assert!(
        stderr.contains("refusing to start") && stderr.contains(&run_dir.display().to_string()),
        "run: {stderr}"
    );
    chmod(&run_dir, 0o700);
    chmod(&pid_file, 0o666);
    refused(
        "pid file mode 666",
        &pid_file,
        "can be written by other users",
    );
    chmod(&pid_file, 0o644);
    let ours = std::fs::metadata(&pid_file).unwrap().uid();
    if std::os::unix::fs::lchown(&pid_file, Some(65534), None).is_ok() {
        refused("pid file of uid 65534", &pid_file, "owned by uid 65534");
        std::os::unix::fs::lchown(&pid_file, Some(ours), None).unwrap();
    } else {
        eprintln!("not root: cannot chown, the owner rule is not exercised here");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        target.0.try_wait().unwrap().is_none(),
        "a refused reload signalled the process"
    );

    // The same pid file, ours in a private directory: signalled.
    let out = Command::new(support::gateway::binary())
        .args(["reload", "-c"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(target.0.wait().unwrap().signal(), Some(libc::SIGHUP));
}

/// A reload that drops a secret refuses its cookies from the first request
/// it serves, though they were verified (and remembered) a moment before;
/// the keys' sessions are untouched in Redis.
#[test]
fn a_secret_dropped_by_a_reload_refuses_its_cookies_at_once() {
    let s = setup("");
    let addr = s.gateway.addr;
    let fx = fixture("express-session.json");
    let case = |name: &str| {
        fx["valid"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["cookie_header"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (old, current) = (case("signed-with-previous-secret"), case("user-shape"));
    let json = ("Accept", "application/json");
    // Verified, then served again (from the memo) on one connection and on new ones.
    let mut client = Client::connect(addr);
    for _ in 0..20 {
        let r = client
            .send("GET", "/dashboard", &[("Cookie", old.as_str()), json])
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            get(addr, "/dashboard", &[("Cookie", old.as_str()), json]).status,
            200
        );
    }

    let path = s.gateway.config_path.clone();
    let original = std::fs::read_to_string(&path).unwrap();
    let rotated = original.replace(SECRETS, r#"["fixture-secret-current"]"#);
    assert_ne!(rotated, original);
    std::fs::write(&path, &rotated).unwrap();
    s.gateway.signal(libc::SIGHUP);
    metrics_until(&s, "one good reload", |t| {
        sample(t, "sessiongate_config_reloads_total", &[("result", "ok")]) == Some(1.0)
    });
    // The kept connection and new ones alike.
    for _ in 0..20 {
        let r = client
            .send("GET", "/dashboard", &[("Cookie", old.as_str()), json])
            .unwrap();
        assert_eq!(
            r.status, 401,
            "a cookie signed with a dropped secret was let in"
        );
        assert_eq!(
            get(addr, "/dashboard", &[("Cookie", old.as_str()), json]).status,
            401
        );
        assert_eq!(
            get(addr, "/dashboard", &[("Cookie", current.as_str()), json]).status,
            200
        );
    }
    let key = fx["valid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "signed-with-previous-secret")
        .unwrap()["redis_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let exists: bool = s.redis.conn().exists(&key).unwrap();
    assert!(exists, "the session itself was not touched");
}
