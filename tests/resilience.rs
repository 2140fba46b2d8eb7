//! Rate limits and upstream resilience, end to end: the real gateway, a real
//! redis-server and loopback upstreams (echo, dead, slow, WebSocket, streaming).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use redis::Commands;
use support::{get, request, EchoUpstream, RedisServer, Response, TestGateway};

/// Plain cookies (`sid=<id>`), `sess:{id}` JSON values, one authenticated route.
fn config(redis: &RedisServer, upstream: &str, rate_limit: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"
command_timeout = "500ms"

[session]
cookie = "sid"
cookie_format = "plain"
key = "sess:{{id}}"

[identity.headers]
"X-User-Id" = "user.id"

{upstream}

[[route]]
name = "app"
path_prefix = "/"
upstream = "app"

{rate_limit}
"#,
        url = redis.url(),
    )
}

fn one_upstream(addr: SocketAddr) -> String {
    format!("[[upstream]]\nname = \"app\"\naddrs = [\"{addr}\"]\n")
}

fn add_session(redis: &RedisServer, id: &str, user: &str) {
    let mut conn = redis.conn();
    let value = format!(r#"{{"user":{{"id":"{user}"}}}}"#);
    let _: () = conn.set_ex(format!("sess:{id}"), value, 600).unwrap();
}

/// A GET from a chosen loopback source address (127.0.0.2 is not a trusted proxy).
fn get_from(source: &str, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    socket.bind(&source.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

#[test]
fn failed_auths_are_limited_per_client_ip() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    add_session(&redis, "good-session-1", "u1");
    let gateway = TestGateway::start(&config(
        &redis,
        &one_upstream(upstream.addr),
        "[rate_limit]\nfailed_auth_per_ip = { burst = 3, per = \"1m\" }\ntrusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1/32\"]\n",
    ));
    let addr = gateway.addr;
    let bad = |xff: &str| {
        get(
            addr,
            "/x",
            &[("Cookie", "sid=made-up"), ("X-Forwarded-For", xff)],
        )
    };
    let good = |xff: &str| {
        get(
            addr,
            "/x",
            &[("Cookie", "sid=good-session-1"), ("X-Forwarded-For", xff)],
        )
    };

    // The peer (127.0.0.1) is trusted: the right-most untrusted XFF entry counts.
    for _ in 0..3 {
        assert_eq!(bad("198.51.100.1, 203.0.113.7, 10.1.1.1").status, 401);
    }
    let limited = bad("203.0.113.7");
    assert_eq!(limited.status, 429, "{}", limited.body);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(limited.body.contains("rate_limited"));
    // Refused before Redis, even with a valid session.
    assert_eq!(good("203.0.113.7").status, 429);

    // Other IPs are not affected.
    assert_eq!(bad("203.0.113.8").status, 401);
    assert_eq!(good("203.0.113.8").status, 200);
    // A missing credential is not a failed authentication.
    for _ in 0..5 {
        assert_eq!(
            get(addr, "/x", &[("X-Forwarded-For", "203.0.113.9")]).status,
            401
        );
    }

    // 127.0.0.2 is not a trusted proxy: its X-Forwarded-For is ignored.
    for i in 0..3 {
        let xff = format!("192.0.2.{i}");
        let r = get_from(
            "127.0.0.2",
            addr,
            "/x",
            &[("Cookie", "sid=nope"), ("X-Forwarded-For", &xff)],
        );
        assert_eq!(r.status, 401);
    }
    let r = get_from(
        "127.0.0.2",
        addr,
        "/x",
        &[("Cookie", "sid=nope"), ("X-Forwarded-For", "192.0.2.99")],
    );
    assert_eq!(r.status, 429);
    let r = get_from("127.0.0.2", addr, "/x", &[("Cookie", "sid=good-session-1")]);
    assert_eq!(r.status, 429);

    // Counted as `rate_limited` in the access log, and no cookie is logged.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = gateway.access_log();
        let limited = log
            .iter()
            .filter(|l| l["decision"] == "rate_limited" && l["reason"] == "rate_limited")
            .count();
        if limited >= 4 {
            assert!(log
                .iter()
                .all(|l| l["status"] != 429 || l["decision"] == "rate_limited"));
            break;
        }
        assert!(Instant::now() < deadline, "{log:?}");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!gateway.stdout().join("\n").contains("good-session-1"));
}

/// Behind a trusted balancer, an `X-Forwarded-For` that is not ASCII, or a
/// hop that is not an address, is counted against that hop, never against
/// the balancer: whoever sends it spends only their own failed-auth budget.
#[test]
fn an_odd_forwarded_for_spends_only_its_own_failed_auth_budget() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&config(
        &redis,
        &one_upstream(upstream.addr),
        "[rate_limit]\nfailed_auth_per_ip = { burst = 2, per = \"1m\" }\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    ));
    let addr = gateway.addr;
    // A failed authentication through the balancer (the peer, 127.0.0.1),
    // with the X-Forwarded-For bytes it passed on.
    let bad = |xff: &[u8]| {
        let mut req = b"GET /x HTTP/1.1\r\nHost: app.test\r\nCookie: sid=made-up\r\n\
                        Connection: close\r\nX-Forwarded-For: "
            .to_vec();
        req.extend_from_slice(xff);
        req.extend_from_slice(b"\r\n\r\n");
        support::raw_request(addr, &req).expect("a response").status
    };

    // The balancer appended the client's address to junk the client sent:
    // that address is the client, whatever the junk.
    for _ in 0..2 {
        assert_eq!(bad("\u{e9}t\u{e9}, 198.51.100.20".as_bytes()), 401);
    }
    assert_eq!(bad(b"\xff\xfe, 198.51.100.20"), 429);
    assert_eq!(
        bad(b"\xff, 198.51.100.21"),
        401,
        "another client behind the balancer, junk on its left too"
    );

    // A hop that is not an address (not even UTF-8) is a client of its own.
    for _ in 0..2 {
        assert_eq!(bad(b"\xff\xfe-not-an-ip"), 401);
    }
    assert_eq!(bad(b"\xff\xfe-not-an-ip"), 429);
    assert_eq!(
        bad(b"198.51.100.22"),
        401,
        "another client behind the balancer"
    );
    assert_eq!(
        bad("\u{e9}l\u{e9}ment".as_bytes()),
        401,
        "other junk, another client"
    );
    assert_eq!(bad(b"unknown"), 401, "other junk, another client");
    // Nothing was counted against the balancer itself.
    assert_eq!(bad(b""), 401, "the balancer's own budget");
}

#[test]
fn requests_are_limited_per_user() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    add_session(&redis, "alice-laptop", "alice");
    add_session(&redis, "alice-phone", "alice");
    add_session(&redis, "bob-laptop", "bob");
    let gateway = TestGateway::start(&config(
        &redis,
        &one_upstream(upstream.addr),
        "[rate_limit]\nrequests_per_user = { burst = 4, per = \"1m\" }\n\n[admin]\naccess_log_user = false\n",
    ));
    let as_ = |id: &str| get(gateway.addr, "/x", &[("Cookie", &format!("sid={id}"))]);
    // Both of alice's sessions draw on one budget.
    for id in ["alice-laptop", "alice-phone", "alice-laptop", "alice-phone"] {
        assert_eq!(as_(id).status, 200);
    }
    let limited = as_("alice-phone");
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(as_("bob-laptop").status, 200);
    assert_eq!(upstream.requests(), 5);
}

/// A free loopback port with nothing listening on it.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn a_dead_address_is_retried_then_taken_out_by_the_health_check() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    add_session(&redis, "s1", "u1");
    let dead = dead_addr();
    let upstreams = format!(
        "[[upstream]]\nname = \"app\"\naddrs = [\"{dead}\", \"{live}\"]\nconnect_timeout = \"500ms\"\n\
         health_check = {{ path = \"/healthz\", interval = \"200ms\" }}\n",
        live = upstream.addr
    );
    let gateway = TestGateway::start(&config(&redis, &upstreams, ""));
    let cookie = [("Cookie", "sid=s1")];
    // Idempotent requests are retried on the other address at once.
    for _ in 0..6 {
        assert_eq!(get(gateway.addr, "/x", &cookie).status, 200);
    }
    // Once the health check has run, the dead address is out of the round
    // robin: even a POST (never retried) always lands on the live one.
    thread::sleep(Duration::from_millis(800));
    for _ in 0..6 {
        let r = request(
            gateway.addr,
            "POST",
            "/x",
            &[("Cookie", "sid=s1"), ("Content-Length", "0")],
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert!(upstream.requests() >= 12);
}

#[test]
fn a_post_to_a_dead_address_is_not_retried_without_health_checks() {
    let redis = RedisServer::start();
    add_session(&redis, "s1", "u1");
    let gateway = TestGateway::start(&config(&redis, &one_upstream(dead_addr()), ""));
    let r = request(
        gateway.addr,
        "POST",
        "/x",
        &[("Cookie", "sid=s1"), ("Content-Length", "0")],
    );
    assert_eq!(r.status, 502);
    assert!(r.body.contains("bad_gateway"));
}

/// Accepts connections, reads the request, and never answers.
fn silent_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_slow_upstream_is_a_504_within_its_read_timeout() {
    let redis = RedisServer::start();
    add_session(&redis, "s1", "u1");
    let upstreams = format!(
        "[[upstream]]\nname = \"app\"\naddrs = [\"{}\"]\nread_timeout = \"400ms\"\n",
        silent_upstream()
    );
    let gateway = TestGateway::start(&config(&redis, &upstreams, ""));
    let started = Instant::now();
    let r = get(gateway.addr, "/slow", &[("Cookie", "sid=s1")]);
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.body.contains("upstream_timeout"));
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// Answers `101 Switching Protocols` to an upgrade, then echoes bytes; other
/// requests get a chunked response in two parts.
fn upgrade_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let Ok(mut writer) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let Some(head) = support::http::read_head_lowercase(&mut reader) else {
                    return;
                };
                if head.contains("upgrade: websocket") {
                    let identity = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-user-id: "))
                        .unwrap_or("none")
                        .trim()
                        .to_owned();
                    let _ = write!(
                        writer,
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Seen-User: {identity}\r\n\r\n"
                    );
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = reader.read(&mut buf) {
                        if n == 0 || writer.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                } else {
                    let _ = writer.write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nfirst\r\n",
                    );
                    let _ = writer.flush();
                    thread::sleep(Duration::from_millis(200));
                    let _ = writer.write_all(b"6\r\nsecond\r\n0\r\n\r\n");
                }
            });
        }
    });
    addr
}

#[test]
fn websocket_upgrades_and_streams_pass_through_authenticated_routes() {
    let redis = RedisServer::start();
    add_session(&redis, "s1", "u1");
    let gateway = TestGateway::start(&config(&redis, &one_upstream(upgrade_upstream()), ""));

    // Without a session the upgrade is refused.
    let r = get(
        gateway.addr,
        "/ws",
        &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
    );
    assert_eq!(r.status, 401);

    let mut stream = TcpStream::connect(gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: app.test\r\nCookie: sid=s1\r\nX-User-Id: spoofed\r\n\
              Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let mut seen_user = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("x-seen-user:") {
            seen_user = Some(v.trim().to_owned());
        }
    }
    assert_eq!(seen_user.as_deref(), Some("u1"));
    for message in [&b"hello over the tunnel"[..], &b"\x81\x05bytes"[..]] {
        stream.write_all(message).unwrap();
        let mut echoed = vec![0u8; message.len()];
        reader.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, message);
    }

    // A chunked response streams through.
    let r = get(gateway.addr, "/stream", &[("Cookie", "sid=s1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "firstsecond");
}

#[test]
fn a_dead_address_is_retried_for_idempotent_requests() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    add_session(&redis, "s1", "u1");
    let upstreams = format!(
        "[[upstream]]\nname = \"app\"\naddrs = [\"{}\", \"{}\"]\n",
        dead_addr(),
        upstream.addr
    );
    let gateway = TestGateway::start(&config(&redis, &upstreams, ""));
    for _ in 0..6 {
        let r = get(gateway.addr, "/x", &[("Cookie", "sid=s1")]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(upstream.requests(), 6);
}

#[test]
fn new_keys_are_checked_with_their_paths_and_positions() {
    let text = r#"[server]
listen = ["127.0.0.1:0"]

[redis]
url = "redis://127.0.0.1:6379/0"

[session]
cookie_format = "plain"

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]
connect_timeout = "soon"
health_check = { path = "healthz", intervall = "5s" }

[[route]]
path_prefix = "/"
upstream = "app"

[rate_limit]
failed_auth_per_ip = { burst = 0, per = "1m" }
requests_per_user = { burst = 600 }
trusted_proxies = ["10.0.0.0/8", "10.0.0.0/33", "nope"]
"#;
    let errs = sessiongate::config::parse("proxy.toml", text, &|_| None).unwrap_err();
    let got: Vec<String> = errs
        .errors
        .iter()
        .map(|e| format!("{}:{} {}", e.line, e.column, e.path))
        .collect();
    for want in [
        "13:19 upstream[0].connect_timeout",
        "14:25 upstream[0].health_check.path",
        "14:36 upstream[0].health_check.intervall",
        "21:32 rate_limit.failed_auth_per_ip.burst",
        "22:21 rate_limit.requests_per_user.per",
        "23:34 rate_limit.trusted_proxies[1]",
        "23:49 rate_limit.trusted_proxies[2]",
    ] {
        assert!(got.iter().any(|g| g == want), "{want} not in {got:#?}");
    }
    assert_eq!(got.len(), 7, "{got:#?}");

    let good = text
        .replace("\"soon\"", "\"2s\"")
        .replace(
            "path = \"healthz\", intervall",
            "path = \"/healthz\", interval",
        )
        .replace("burst = 0", "burst = 20")
        .replace("burst = 600 }", "burst = 600, per = \"1m\" }")
        .replace(", \"10.0.0.0/33\", \"nope\"", ", \"127.0.0.1/32\"");
    let config = sessiongate::config::parse("proxy.toml", &good, &|_| None).unwrap();
    let up = &config.upstreams[0];
    assert_eq!(up.connect_timeout, Duration::from_secs(2));
    assert_eq!(up.read_timeout, Duration::from_secs(30));
    let hc = up.health_check.as_ref().unwrap();
    assert_eq!(hc.path.as_deref(), Some("/healthz"));
    assert_eq!(hc.interval, Duration::from_secs(5));
    let rl = &config.rate_limit;
    assert_eq!(rl.failed_auth_per_ip.unwrap().burst, 20);
    assert_eq!(rl.requests_per_user.unwrap().per, Duration::from_secs(60));
    assert_eq!(rl.trusted_proxies.len(), 2);
}

/// `[rate_limit] shared = true`: two gateways on one Redis share one
/// failed-authentication budget per IP, so an attacker who spreads bad
/// cookies over both still gets `burst` tries, not twice that. Without
/// `shared`, each process has its own.
#[test]
fn a_shared_failed_auth_budget_holds_across_gateways() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    add_session(&redis, "good-session-1", "u1");
    let limits = "[rate_limit]\nfailed_auth_per_ip = { burst = 4, per = \"1m\" }\n\
                  trusted_proxies = [\"127.0.0.1/32\"]\n";
    let attack = |gateways: &[TestGateway; 2], ip: &str| -> Vec<u16> {
        (0..10)
            .map(|i| {
                let cookie = format!("sid=guess-{i}");
                get(
                    gateways[i % 2].addr,
                    "/x",
                    &[("Cookie", &cookie), ("X-Forwarded-For", ip)],
                )
                .status
            })
            .collect()
    };

    let shared = config(
        &redis,
        &one_upstream(upstream.addr),
        &format!("{limits}shared = true\n"),
    );
    let fleet = [TestGateway::start(&shared), TestGateway::start(&shared)];
    let statuses = attack(&fleet, "203.0.113.50");
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 429, 429, 429, 429, 429, 429],
        "one budget of 4 for both"
    );
    // Refused on both gateways, even with a valid session; other IPs unaffected.
    for gateway in &fleet {
        let good = |ip: &str| {
            get(
                gateway.addr,
                "/x",
                &[("Cookie", "sid=good-session-1"), ("X-Forwarded-For", ip)],
            )
            .status
        };
        assert_eq!(good("203.0.113.50"), 429);
        assert_eq!(good("203.0.113.51"), 200);
    }
    // The counter lives in Redis, with the window as its expiry.
    let mut conn = redis.conn();
    let key = "sessiongate:rl:failed_auth:203.0.113.50";
    let count: u64 = conn.get(key).unwrap();
    assert_eq!(count, 4);
    let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
    assert!((1..=60_000).contains(&pttl), "{pttl}");
    drop(fleet);

    // Per process (the default): each gateway allows 4 on its own.
    let own = config(&redis, &one_upstream(upstream.addr), limits);
    let separate = [TestGateway::start(&own), TestGateway::start(&own)];
    let statuses = attack(&separate, "203.0.113.60");
    assert_eq!(
        statuses.iter().filter(|&&s| s == 401).count(),
        8,
        "{statuses:?}"
    );
    let exists: bool = conn
        .exists("sessiongate:rl:failed_auth:203.0.113.60")
        .unwrap();
    assert!(!exists, "nothing is shared by default");
}

/// With Redis down, a shared limit falls back to each process's own bucket:
/// malformed credentials (refused without asking Redis) are still limited.
#[test]
fn a_shared_limit_falls_back_to_the_process_when_redis_is_down() {
    let mut redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&config(
        &redis,
        &one_upstream(upstream.addr),
        "[rate_limit]\nfailed_auth_per_ip = { burst = 3, per = \"1m\" }\n\
         trusted_proxies = [\"127.0.0.1/32\"]\nshared = true\n",
    ));
    redis.stop();
    // Longer than any session id: refused as malformed, before any lookup.
    let cookie = format!("sid={}", "x".repeat(300));
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            get(
                gateway.addr,
                "/x",
                &[("Cookie", &cookie), ("X-Forwarded-For", "203.0.113.70")],
            )
            .status
        })
        .collect();
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
}
