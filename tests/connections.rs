//! How the gateway reads requests off its connections: the first bytes of
//! each request are read while the connection holds nothing else (so idle
//! keep-alive connections stay cheap) and handed to the HTTP parser, so heads
//! that arrive in pieces or exceed that first read, bodies that follow later,
//! keep-alive, and idle connections at shutdown must all behave.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Client, Stack, ALICE};

fn setup() -> Stack {
    let stack = Stack::start(|url, upstream| {
        format!(
            r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1
grace_period = "10s"
graceful_shutdown_timeout = "1s"

[redis]
url = "{url}"

[session]
secrets = ["fixture-secret-current"]

[identity.headers]
"X-User-Id" = "user.id"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/"
upstream = "app"
"#
        )
    });
    stack.seed_alice(r#"{"user":{"id":"1001"}}"#);
    stack
}

/// Writes `parts` with a pause between them and reads one response:
/// (status, the echo upstream's JSON body).
fn trickle(s: &Stack, parts: &[&[u8]]) -> (u16, serde_json::Value) {
    let stream = TcpStream::connect(s.gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(60));
        }
        writer.write_all(part).unwrap();
    }
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, serde_json::from_slice(&body).unwrap_or_default())
}

fn echoed_user(body: &serde_json::Value) -> Option<String> {
    body["headers"].as_array()?.iter().find_map(|pair| {
        (pair[0].as_str()?.eq_ignore_ascii_case("x-user-id"))
            .then(|| pair[1].as_str().unwrap_or_default().to_owned())
    })
}

#[test]
fn a_request_head_sent_in_pieces_is_read_whole() {
    let s = setup();
    let cookie = format!("Cookie: {ALICE}\r\n");
    let (status, body) = trickle(
        &s,
        &[
            b"GET /app HTTP/1.1\r\nHo",
            b"st: a\r\n",
            cookie.as_bytes(),
            b"\r\n",
        ],
    );
    assert_eq!(status, 200);
    assert_eq!(echoed_user(&body).as_deref(), Some("1001"));
}

#[test]
fn a_request_head_larger_than_the_first_read_is_read_whole() {
    let s = setup();
    // 12 KiB of headers before the cookie: the cookie is past the first read.
    let padding: String = (0..12)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(1000)))
        .collect();
    let head = format!("GET /app HTTP/1.1\r\nHost: a\r\n{padding}Cookie: {ALICE}\r\n\r\n");
    let (status, body) = trickle(&s, &[head.as_bytes()]);
    assert_eq!(status, 200);
    assert_eq!(echoed_user(&body).as_deref(), Some("1001"));
    assert_eq!(
        body["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p[0].as_str().unwrap().starts_with("X-Pad-")
                || p[0].as_str().unwrap().starts_with("x-pad-"))
            .count(),
        12
    );
}

#[test]
fn a_body_sent_with_and_after_the_head_reaches_the_upstream_whole() {
    let s = setup();
    let head = format!(
        "POST /app HTTP/1.1\r\nHost: a\r\nCookie: {ALICE}\r\nContent-Length: 30000\r\n\r\n"
    );
    let mut first = head.into_bytes();
    first.extend(std::iter::repeat_n(b'a', 10_000));
    let rest = vec![b'b'; 20_000];
    let (status, body) = trickle(&s, &[&first, &rest]);
    assert_eq!(status, 200);
    assert_eq!(body["body_bytes"], 30_000);
    assert_eq!(echoed_user(&body).as_deref(), Some("1001"));
}

#[test]
fn one_connection_carries_many_requests_and_a_silent_one_harms_nothing() {
    let s = setup();
    // A client that connects and leaves without a byte.
    drop(TcpStream::connect(s.gateway.addr).unwrap());
    let mut client = Client::connect(s.gateway.addr);
    for i in 0..6 {
        let cookie = if i % 2 == 0 {
            ALICE
        } else {
            "connect.sid=nope"
        };
        let response = client
            .send("GET", &format!("/app/{i}"), &[("Cookie", cookie)])
            .unwrap_or_else(|| panic!("request {i}: connection closed"));
        assert_eq!(
            response.status,
            if i % 2 == 0 { 200 } else { 401 },
            "request {i}"
        );
    }
    assert_eq!(s.upstream.requests(), 3);
}

#[test]
fn idle_connections_are_closed_as_soon_as_a_graceful_shutdown_begins() {
    let s = setup();
    let mut used = Client::connect(s.gateway.addr);
    assert_eq!(
        used.send("GET", "/app", &[("Cookie", ALICE)])
            .unwrap()
            .status,
        200
    );
    let mut silent = TcpStream::connect(s.gateway.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    s.gateway.signal(libc::SIGTERM);
    // Both see the connection end well within the 10 s grace period, instead
    // of waiting for the 60 s keep-alive timeout or the process's exit.
    let mut buf = [0u8; 16];
    assert_eq!(
        silent.read(&mut buf).unwrap(),
        0,
        "silent connection not closed"
    );
    // The used connection is closed by the same signal; give its task a
    // moment to see it (a request racing the signal may still be served).
    std::thread::sleep(Duration::from_millis(300));
    assert!(used.send("GET", "/app", &[("Cookie", ALICE)]).is_none());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle connections closed only after {:?}",
        started.elapsed()
    );
}
