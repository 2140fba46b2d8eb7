//! Clients and upstreams that misbehave in time or size: heads trickled in
//! byte by byte, bodies that stall, clients that never read, too many
//! connections, heads the parser refuses, and upstreams that die halfway
//! through a response. Each is bounded by a small configured limit, and the
//! gateway keeps serving everyone else.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{get, Client, EchoUpstream, RedisServer, TestGateway};

/// An upstream that reads one request head and then runs `answer` on the
/// connection (once per connection).
fn raw_upstream(answer: impl Fn(&mut TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                answer(&mut stream);
            });
        }
    });
    addr
}

struct Setup {
    _redis: RedisServer,
    echo: EchoUpstream,
    gateway: TestGateway,
}

/// A gateway with `server` extra `[server]` keys, an admin listener, `/` on
/// the echo upstream and `/raw` on `raw` (when given); every route public.
fn setup(server: &str, raw: Option<SocketAddr>) -> Setup {
    let redis = RedisServer::start();
    let echo = EchoUpstream::start("127.0.0.1:0").unwrap();
    let url = redis.url();
    let addr = echo.addr;
    let raw_part = raw.map_or(String::new(), |raw| {
        format!(
            r#"
[[upstream]]
name = "raw"
addrs = ["{raw}"]
read_timeout = "10s"

[[route]]
path_prefix = "/raw"
upstream = "raw"
access = "public"
"#
        )
    });
    let config = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 2
{server}

[redis]
url = "{url}"

[session]
secrets = ["fixture-secret-current"]

[admin]
listen = "127.0.0.1:0"
{raw_part}
[[upstream]]
name = "app"
addrs = ["{addr}"]

[[route]]
path_prefix = "/"
upstream = "app"
access = "public"
"#
    );
    let gateway = TestGateway::start(&config);
    Setup {
        _redis: redis,
        echo,
        gateway,
    }
}

/// The value of the sample `name` (with its labels, as printed) in /metrics.
fn metric(s: &Setup, name: &str) -> f64 {
    let text = get(s.gateway.admin_addr(), "/metrics", &[]).body;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn ok(s: &Setup) -> bool {
    get(s.gateway.addr, "/app", &[]).status == 200
}

/// Reads until the peer closes (Ok) or `limit` passes (Err); returns what was read.
fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(out);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(out),
            Err(_) => return Err(out),
        }
    }
}

#[test]
fn a_head_trickled_in_is_cut_off_at_the_head_deadline_while_others_are_served() {
    let s = setup(r#"request_head_timeout = "1s""#, None);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let addr = s.gateway.addr;
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                let mut writer = stream.try_clone().unwrap();
                let trickle = std::thread::spawn(move || {
                    // One header byte every 200 ms: each read is quick, the head never ends.
                    for b in b"GET /app HTTP/1.1\r\nHost: a\r\nX-Slow: ".iter().cycle() {
                        if stop.load(Ordering::SeqCst) || writer.write_all(&[*b]).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                });
                let result = read_to_close(&mut stream, Duration::from_secs(8));
                let closed_after = started.elapsed();
                drop(trickle);
                (result, closed_after)
            })
        })
        .collect();
    // Meanwhile normal requests are served, and promptly.
    for _ in 0..10 {
        let t = Instant::now();
        assert!(ok(&s));
        assert!(t.elapsed() < Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(100));
    }
    for handle in slow {
        let (result, closed_after) = handle.join().unwrap();
        let answer = result.expect("a trickling client was never disconnected");
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            closed_after < Duration::from_secs(3),
            "closed only after {closed_after:?}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(metric(&s, "sessiongate_request_head_timeouts_total"), 20.0);
    assert!(ok(&s));
    // The access log is written in batches by its own thread.
    let timeouts = || {
        s.gateway
            .access_log()
            .iter()
            .filter(|l| l["reason"] == "head_timeout" && l["status"] == 408)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while timeouts() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(timeouts(), 20);
    // Nothing of a trickled head reached the upstream.
    assert_eq!(s.echo.requests(), 11);
}

#[test]
fn an_idle_keep_alive_connection_is_not_a_head_timeout() {
    let s = setup(r#"request_head_timeout = "1s""#, None);
    let mut client = Client::connect(s.gateway.addr);
    assert_eq!(client.send("GET", "/app", &[]).unwrap().status, 200);
    // Idle for longer than the head deadline: it starts at a head's first byte.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(client.send("GET", "/app", &[]).unwrap().status, 200);
    assert_eq!(metric(&s, "sessiongate_request_head_timeouts_total"), 0.0);
}

#[test]
fn the_request_line_counts_toward_the_head_limit() {
    let s = setup("max_request_header_bytes = 4096", None);
    let long_path = format!("/app/{}", "a".repeat(3000));
    let headers = [("X-Pad", "p".repeat(1500))];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    // Path and headers each fit, together they do not.
    assert_eq!(get(s.gateway.addr, &long_path, &[]).status, 200);
    assert_eq!(get(s.gateway.addr, "/app", &headers).status, 200);
    let refused = get(s.gateway.addr, &long_path, &headers);
    assert_eq!(refused.status, 431);
    assert!(refused.body.contains("headers_too_large"));
    // A 60 KB request line alone is refused without waiting for the rest.
    let mut stream = TcpStream::connect(s.gateway.addr).unwrap();
    let line = format!("GET /app/{} HTTP/1.1\r\n", "b".repeat(60_000));
    let _ = stream.write_all(line.as_bytes());
    let answer = read_to_close(&mut stream, Duration::from_secs(5)).expect("not closed");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"));
    assert_eq!(s.echo.requests(), 2);
    assert_eq!(
        metric(
            &s,
            "sessiongate_bad_requests_total{reason=\"head_too_large\"}"
        ),
        2.0
    );
    assert!(ok(&s));
}

#[test]
fn heads_the_parser_refuses_are_counted_and_logged() {
    let s = setup("", None);
    for bad in [
        "GET /app HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "GET /app HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(s.gateway.addr).unwrap();
        stream.write_all(bad.as_bytes()).unwrap();
        let answer = read_to_close(&mut stream, Duration::from_secs(5)).expect("not closed");
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"),
            "{bad:?}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(s.echo.requests(), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = s.gateway.access_log();
        let refused: Vec<_> = log
            .iter()
            .filter(|l| l["reason"] == "bad_request")
            .collect();
        if refused.len() == 2 {
            for line in refused {
                assert_eq!(line["status"], 400);
                assert_eq!(line["decision"], "invalid");
                assert_eq!(line["path"], "");
            }
            break;
        }
        assert!(Instant::now() < deadline, "log: {log:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric(&s, "sessiongate_bad_requests_total{reason=\"bad_request\"}"),
        2.0
    );
    assert_eq!(
        metric(
            &s,
            "sessiongate_requests_total{decision=\"invalid\",route=\"-\"}"
        ),
        2.0
    );
    assert!(ok(&s));
}

/// Opens a connection and makes sure the gateway kept it (a request answered).
fn held(addr: SocketAddr) -> Client {
    let mut client = Client::connect(addr);
    assert_eq!(client.send("GET", "/app", &[]).unwrap().status, 200);
    client
}

/// Whether the gateway closes a fresh connection without answering.
fn refused(addr: SocketAddr) -> bool {
    Client::connect(addr).send("GET", "/app", &[]).is_none()
}

#[test]
fn connections_over_the_per_ip_limit_are_closed_at_once() {
    let s = setup("max_connections_per_ip = 3", None);
    let kept: Vec<_> = (0..3).map(|_| held(s.gateway.addr)).collect();
    assert!(refused(s.gateway.addr));
    assert!(refused(s.gateway.addr));
    assert_eq!(
        metric(
            &s,
            "sessiongate_connections_refused_total{reason=\"per_ip\"}"
        ),
        2.0
    );
    // One closes: its place is free again.
    drop(kept);
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused(s.gateway.addr) {
        assert!(Instant::now() < deadline, "slots were not given back");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _again: Vec<_> = (0..2).map(|_| held(s.gateway.addr)).collect();
}

#[test]
fn connections_over_the_total_limit_are_closed_at_once() {
    let s = setup("max_connections = 2\nmax_connections_per_ip = 0", None);
    let _kept: Vec<_> = (0..2).map(|_| held(s.gateway.addr)).collect();
    assert!(refused(s.gateway.addr));
    assert_eq!(
        metric(
            &s,
            "sessiongate_connections_refused_total{reason=\"total\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &s,
            "sessiongate_connections_refused_total{reason=\"per_ip\"}"
        ),
        0.0
    );
    assert_eq!(metric(&s, "sessiongate_open_connections"), 2.0);
}

#[test]
fn a_stalled_request_body_is_cut_off_at_the_body_idle_timeout() {
    let s = setup(r#"body_idle_timeout = "1s""#, None);
    let mut stream = TcpStream::connect(s.gateway.addr).unwrap();
    stream
        .write_all(b"POST /app HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let started = Instant::now();
    let answer = read_to_close(&mut stream, Duration::from_secs(8)).expect("never cut off");
    assert!(started.elapsed() < Duration::from_secs(4));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(ok(&s));
}

#[test]
fn a_client_that_never_reads_is_disconnected_after_the_write_timeout() {
    const SIZE: usize = 64 * 1024 * 1024;
    let upstream_gone = Arc::new(AtomicBool::new(false));
    let gone = upstream_gone.clone();
    let raw = raw_upstream(move |stream| {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n");
        let chunk = vec![b'x'; 1024 * 1024];
        let mut sent = stream.write_all(head.as_bytes()).is_ok();
        for _ in 0..SIZE / chunk.len() {
            sent = sent && stream.write_all(&chunk).is_ok();
        }
        if !sent {
            gone.store(true, Ordering::SeqCst);
        }
    });
    let s = setup(r#"write_timeout = "1s""#, Some(raw));
    let mut stream = TcpStream::connect(s.gateway.addr).unwrap();
    stream
        .write_all(b"GET /raw/big HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    // Not reading: the gateway's writes stall once the socket buffers are full.
    std::thread::sleep(Duration::from_secs(3));
    assert!(ok(&s), "others are still served");
    let started = Instant::now();
    let got = read_to_close(&mut stream, Duration::from_secs(10)).expect("never disconnected");
    assert!(
        got.len() < SIZE,
        "the whole response arrived ({} bytes)",
        got.len()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The upstream connection was let go too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !upstream_gone.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "upstream connection still held");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_upstream_that_fails_mid_response_gets_the_connection_closed_not_an_error_appended() {
    let raw = raw_upstream(|stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n<html>part");
        let _ = stream.flush();
        std::thread::sleep(Duration::from_millis(100));
        // Closed here, 90 bytes short.
    });
    let s = setup("", Some(raw));
    let mut stream = TcpStream::connect(s.gateway.addr).unwrap();
    stream
        .write_all(b"GET /raw/page HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let got = read_to_close(&mut stream, Duration::from_secs(8)).expect("connection kept open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("<html>part"), "{text}");
    assert!(!text.contains("bad_gateway"), "{text}");
    assert!(ok(&s));
}
