//! The lean forwarding path against an upstream that answers in every
//! framing HTTP/1.1 has (content-length, chunked, close-delimited,
//! informational responses first), closes kept connections behind the
//! gateway's back, and records the exact bytes it receives. Requests with a
//! body go to the full proxy; both must behave the same to the client.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{raw_request, Client, RedisServer, TestGateway};

/// What the scripted upstream saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    heads: Mutex<Vec<String>>,
    bodies: Mutex<Vec<Vec<u8>>>,
}

/// Answers by path: `/chunked`, `/close` (close-delimited body),
/// `/hints` (a 103 first), `/switch` (an unasked-for 101), `/once`
/// (answers, then closes the connection without saying so); anything else
/// `ok` with a content-length, keeping the connection.
fn scripted_upstream() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let seen = shared.clone();
            std::thread::spawn(move || serve(stream, &seen));
        }
    });
    (addr, seen)
}

fn serve(stream: TcpStream, seen: &Seen) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        seen.bodies.lock().unwrap().push(body);
        let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        seen.heads.lock().unwrap().push(head);
        let (response, close): (&[u8], bool) = match path.as_str() {
            "/chunked" => (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                false,
            ),
            "/close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
            "/hints" => (
                b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhints",
                false,
            ),
            "/switch" => (
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
                true,
            ),
            "/once" => (b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nonce", true),
            "/slow" => {
                std::thread::sleep(Duration::from_millis(800));
                (b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow", false)
            }
            _ => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
        };
        if writer.write_all(response).is_err() || close {
            return;
        }
    }
}

fn gateway(redis: &RedisServer, upstream: SocketAddr) -> TestGateway {
    gateway_with(redis, upstream, "")
}

fn gateway_with(redis: &RedisServer, upstream: SocketAddr, upstream_extra: &str) -> TestGateway {
    TestGateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{}"

[session]
secrets = ["fixture-secret-current"]

[identity.headers]
"X-User-Id" = "user.id"

[[upstream]]
name = "app"
addrs = ["{upstream}"]
{upstream_extra}

[[route]]
path_prefix = "/"
upstream = "app"
access = "public"
"#,
        redis.url()
    ))
}

#[test]
fn every_response_framing_reaches_the_client_whole_on_a_kept_connection() {
    let redis = RedisServer::start();
    let (upstream, seen) = scripted_upstream();
    let gw = gateway(&redis, upstream);
    let mut client = Client::connect(gw.addr);

    let chunked = client.send("GET", "/chunked", &[]).expect("chunked answer");
    assert_eq!(
        (chunked.status, chunked.body.as_str()),
        (200, "hello world")
    );

    // A close-delimited body is sent on chunked, so the client connection
    // stays open for the next request.
    let close = client
        .send("GET", "/close", &[])
        .expect("close-delimited answer");
    assert_eq!((close.status, close.body.as_str()), (200, "until the end"));
    assert_eq!(close.header("transfer-encoding"), Some("chunked"));

    let head = client.send("HEAD", "/plain", &[]).expect("HEAD answer");
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    assert_eq!(head.header("content-length"), Some("2"));

    // The same client connection carried all of them.
    let plain = client
        .send("GET", "/plain", &[])
        .expect("answer after the others");
    assert_eq!((plain.status, plain.body.as_str()), (200, "ok"));
    assert_eq!(seen.heads.lock().unwrap().len(), 4);
}

#[test]
fn informational_responses_are_passed_on_and_an_unasked_upgrade_is_a_502() {
    let redis = RedisServer::start();
    let (upstream, _seen) = scripted_upstream();
    let gw = gateway(&redis, upstream);

    let mut stream = TcpStream::connect(gw.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /hints HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let hints = answer.find("HTTP/1.1 103").expect("the 103 was passed on");
    let ok = answer.find("HTTP/1.1 200").expect("then the 200");
    assert!(hints < ok, "{answer}");
    assert!(answer.contains("</a.css>"), "{answer}");
    assert!(answer.ends_with("hints"), "{answer}");

    let switched =
        raw_request(gw.addr, b"GET /switch HTTP/1.1\r\nHost: a.test\r\n\r\n").expect("an answer");
    assert_eq!(
        switched.status, 502,
        "a 101 nobody asked for is not relayed"
    );
}

#[test]
fn kept_upstream_connections_are_reused_and_one_closed_behind_the_gateway_is_not_an_error() {
    let redis = RedisServer::start();
    let (upstream, seen) = scripted_upstream();
    let gw = gateway(&redis, upstream);

    // Sequential requests from separate clients share one upstream connection.
    for _ in 0..5 {
        let r = support::get(gw.addr, "/plain", &[]);
        assert_eq!(r.status, 200);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);

    // The upstream closes a connection after answering without saying so;
    // the next request must not fail on the dead kept connection.
    for round in 0..5 {
        let once = support::get(gw.addr, "/once", &[]);
        assert_eq!(
            (once.status, once.body.as_str()),
            (200, "once"),
            "round {round}"
        );
        // Let the close arrive before the next request.
        std::thread::sleep(Duration::from_millis(50));
        let next = support::get(gw.addr, "/plain", &[]);
        assert_eq!(
            next.status, 200,
            "round {round}: the dead connection was used"
        );
    }
}

#[test]
fn a_slow_answer_on_a_kept_connection_is_a_504_and_never_sent_twice() {
    let redis = RedisServer::start();
    let (upstream, seen) = scripted_upstream();
    let gw = gateway_with(&redis, upstream, r#"read_timeout = "300ms""#);
    // A kept connection first, so the slow request goes out on a reused one.
    assert_eq!(support::get(gw.addr, "/plain", &[]).status, 200);
    let slow = support::get(gw.addr, "/slow", &[]);
    assert_eq!(slow.status, 504, "{}", slow.body);
    // The upstream may be acting on it: a timeout is not a dead connection.
    std::thread::sleep(Duration::from_millis(1000));
    let heads = seen.heads.lock().unwrap();
    let sent = heads.iter().filter(|h| h.starts_with("GET /slow ")).count();
    assert_eq!(sent, 1, "the request was sent {sent} times");
}

#[test]
fn requests_with_bodies_take_the_full_proxy_and_arrive_intact() {
    let redis = RedisServer::start();
    let (upstream, seen) = scripted_upstream();
    let gw = gateway(&redis, upstream);

    let body = b"name=alice&role=admin";
    let request = format!(
        "POST /form HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let r = raw_request(gw.addr, &bytes).expect("an answer");
    assert_eq!(r.status, 200);
    let chunked = raw_request(
        gw.addr,
        b"POST /form HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n",
    )
    .expect("an answer");
    assert_eq!(chunked.status, 200);
    let bodies = seen.bodies.lock().unwrap();
    assert_eq!(bodies[0], body);
    // Pingora forwards a chunked body chunked; the scripted upstream reads
    // only content-length bodies, so it saw the head of that one.
    let heads = seen.heads.lock().unwrap();
    assert!(heads[1]
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
}

#[test]
fn the_upstream_gets_the_decided_target_and_no_hop_by_hop_or_spoofed_headers() {
    let redis = RedisServer::start();
    let (upstream, seen) = scripted_upstream();
    let gw = gateway(&redis, upstream);

    let r = raw_request(
        gw.addr,
        b"GET /a/./b/../c?q=%2e%2E HTTP/1.1\r\nHost: A.Test.\r\nConnection: keep-alive\r\nX-User-Id: 1\r\nX-Original-URL: /admin\r\n\r\n",
    )
    .expect("an answer");
    assert_eq!(r.status, 200);
    let heads = seen.heads.lock().unwrap();
    let head = heads[0].to_ascii_lowercase();
    assert!(head.starts_with("get /a/c?q=%2e%2e http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: a.test\r\n"), "{head}");
    for absent in ["x-user-id", "x-original-url", "connection:"] {
        assert!(
            !head.contains(absent),
            "{absent} reached the upstream:\n{head}"
        );
    }
    assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
}
