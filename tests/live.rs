//! Live exchanges end with their session: a WebSocket (an upgraded
//! connection) or an event stream admitted by a session is ended when the
//! session's key is deleted, flushed or overwritten so that it no longer
//! admits the route, and kept when a change leaves it admitted. Real
//! redis-server, real gateway, an upstream that upgrades and one that
//! streams events; the change comes from another Redis client.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use redis::Commands;
use support::h2raw::{self, RawH2};
use support::tls::{certificate, CertFiles};
use support::{RedisServer, TestGateway};

/// Answers an upgrade with `101` and echoes bytes; `/events` with an event
/// stream (an event every 50 ms for 20 s).
fn live_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let Ok(mut writer) = stream.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let Some(head) = support::http::read_head_lowercase(&mut reader) else {
                    return;
                };
                if head.contains("upgrade: websocket") {
                    let _ = writer.write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                    );
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = reader.read(&mut buf) {
                        if n == 0 || writer.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                } else {
                    let _ = writer.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
                    );
                    for i in 0..400 {
                        let event = format!("data: {i}\n\n");
                        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                        if writer.write_all(chunk.as_bytes()).is_err() {
                            return;
                        }
                        thread::sleep(Duration::from_millis(50));
                    }
                    let _ = writer.write_all(b"0\r\n\r\n");
                }
            });
        }
    });
    addr
}

struct Live {
    redis: RedisServer,
    gateway: TestGateway,
    _dir: tempfile::TempDir,
    cert: CertFiles,
}

fn start() -> Live {
    start_with("")
}

/// `cache` is added as the `[cache]` table.
fn start_with(cache: &str) -> Live {
    let dir = tempfile::tempdir().unwrap();
    let cert = certificate(dir.path(), "app", &["app.test"], false);
    let redis = RedisServer::start();
    let upstream = live_upstream();
    let gateway = TestGateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
threads = 1

[[tls.certificates]]
cert = "{cert}"
key = "{key}"
default = true

[redis]
url = "{url}"

[cache]
{cache}

[session]
cookie = "sid"
cookie_format = "plain"
key = "sess:{{id}}"
role_field = "user.role"

[identity.headers]
"X-User-Id" = "user.id"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
name = "admin"
path_prefix = "/admin/"
upstream = "app"
roles = ["admin"]

[[route]]
name = "keep"
path_prefix = "/keep/"
upstream = "app"
live = "keep"

[[route]]
name = "short"
path_prefix = "/short/"
upstream = "app"
max_lifetime = "600ms"

[[route]]
name = "app"
path_prefix = "/"
upstream = "app"
"#,
        url = redis.url(),
        cert = cert.cert.display(),
        key = cert.key.display(),
    ));
    Live {
        redis,
        gateway,
        _dir: dir,
        cert,
    }
}

impl Live {
    fn session(&self, id: &str, role: &str) {
        let value = format!(r#"{{"user":{{"id":"alice","role":"{role}"}}}}"#);
        let _: () = self
            .redis
            .conn()
            .set_ex(format!("sess:{id}"), value, 600)
            .unwrap();
    }

    fn run(&self, args: &[&str]) {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: redis::Value = cmd.query(&mut self.redis.conn()).unwrap();
    }
}

/// An upgraded connection through the gateway, its 101 read.
fn websocket(addr: SocketAddr, path: &str, sid: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: app.test\r\nCookie: sid={sid}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "no 101");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// Whether the tunnel still echoes.
fn echoes(stream: &mut TcpStream) -> bool {
    if stream.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(stream.read_exact(&mut buf), Ok(()) if &buf == b"ping")
}

/// Waits until the peer closes `stream`; how long that took.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) if started.elapsed() < limit => return Some(started.elapsed()),
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// How long a change may take to end an exchange here (the promise is
/// milliseconds; the benchmark measures it, a loaded test machine is slower).
const SOON: Duration = Duration::from_secs(2);

#[test]
fn a_websocket_ends_when_its_session_is_deleted() {
    let live = start();
    live.session("k7Qx9bZtw4", "admin");
    let mut ws = websocket(live.gateway.addr, "/ws", "k7Qx9bZtw4");
    assert!(echoes(&mut ws));
    live.run(&["DEL", "sess:k7Qx9bZtw4"]);
    let took = closed_within(&mut ws, SOON).expect("the WebSocket outlived its session");
    println!("DEL ended the WebSocket in {took:?}");
    let deadline = Instant::now() + SOON;
    while !live.gateway.log().contains("live exchange ended") {
        assert!(Instant::now() < deadline, "{}", live.gateway.log());
        thread::sleep(Duration::from_millis(20));
    }
    let log = live.gateway.log();
    assert!(log.contains("revoked") && log.contains("alice"), "{log}");
    // The session id never reaches the log.
    assert!(!log.contains("k7Qx9bZtw4"), "{log}");
}

#[test]
fn a_change_that_keeps_the_session_admitted_keeps_the_websocket() {
    let live = start();
    live.session("s2", "admin");
    let mut ws = websocket(live.gateway.addr, "/admin/ws", "s2");
    assert!(echoes(&mut ws));
    // A TTL change (express-session's touch) and an overwrite that keeps
    // the role: still admitted.
    live.run(&["EXPIRE", "sess:s2", "900"]);
    live.run(&[
        "SET",
        "sess:s2",
        r#"{"user":{"id":"alice","role":"admin","theme":"dark"}}"#,
    ]);
    thread::sleep(Duration::from_millis(500));
    assert!(
        echoes(&mut ws),
        "a change that keeps the session admitted ended it"
    );
    // The role the route demands is taken away: ended.
    live.run(&[
        "SET",
        "sess:s2",
        r#"{"user":{"id":"alice","role":"viewer"}}"#,
    ]);
    let took = closed_within(&mut ws, SOON).expect("the WebSocket outlived the role");
    println!("losing the role ended the WebSocket in {took:?}");
    let deadline = Instant::now() + SOON;
    while !live.gateway.log().contains("role_changed") {
        assert!(Instant::now() < deadline, "{}", live.gateway.log());
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_event_stream_ends_with_its_session_and_a_flush_ends_every_exchange() {
    let live = start();
    live.session("s3", "admin");
    live.session("s4", "admin");
    // An event stream (a GET: the lean path).
    let mut events = TcpStream::connect(live.gateway.addr).unwrap();
    events
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    events
        .write_all(b"GET /events HTTP/1.1\r\nHost: app.test\r\nCookie: sid=s3\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: 2") {
        let n = events.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("text/event-stream"));
    let mut ws = websocket(live.gateway.addr, "/ws", "s4");
    // Another session's deletion ends neither.
    live.session("other", "admin");
    live.run(&["DEL", "sess:other"]);
    thread::sleep(Duration::from_millis(300));
    assert!(echoes(&mut ws));
    live.run(&["DEL", "sess:s3"]);
    let took = closed_within(&mut events, SOON).expect("the event stream outlived its session");
    println!("DEL ended the event stream in {took:?}");
    assert!(echoes(&mut ws), "another session's exchange was ended");
    // FLUSHDB: every session is gone.
    live.run(&["FLUSHDB"]);
    let took = closed_within(&mut ws, SOON).expect("the WebSocket outlived FLUSHDB");
    println!("FLUSHDB ended the WebSocket in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_2_event_stream_is_reset_when_its_session_ends() {
    let live = start();
    live.session("h2s", "admin");
    let mut raw = RawH2::connect(live.gateway.tls_addr(), "app.test", &live.cert.cert).await;
    let mut fields = h2raw::request_fields("app.test", "/events");
    fields.push(("cookie", "sid=h2s"));
    let id = raw.request(&fields, false).await;
    assert_eq!(raw.outcome(id).await, h2raw::Outcome::Status(200));
    // Events flow.
    let mut data = 0;
    while data < 2 {
        let frame = raw
            .read_frame(Duration::from_secs(5))
            .await
            .expect("an event");
        if frame.kind == h2raw::DATA && frame.stream == id {
            data += 1;
        }
    }
    let started = Instant::now();
    live.run(&["DEL", "sess:h2s"]);
    let reset = loop {
        let Some(frame) = raw.read_frame(SOON).await else {
            break None;
        };
        if frame.stream == id && frame.kind == h2raw::RST_STREAM {
            break Some(u32::from_be_bytes(frame.payload[..4].try_into().unwrap()));
        }
        assert!(started.elapsed() < SOON, "the stream outlived its session");
    };
    println!("DEL reset the HTTP/2 stream in {:?}", started.elapsed());
    assert_eq!(reset, Some(h2raw::CANCEL), "the stream was not reset");
    // The connection itself is still open and serves others.
    live.session("h2t", "admin");
    let mut fields = h2raw::request_fields("app.test", "/plain");
    fields.push(("cookie", "sid=h2t"));
    let other = raw.request(&fields, false).await;
    assert_eq!(raw.outcome(other).await, h2raw::Outcome::Status(200));
}

#[test]
fn a_session_deleted_while_the_channel_is_down_ends_its_exchange_when_it_is_back() {
    let live = start();
    live.session("down1", "admin");
    let mut ws = websocket(live.gateway.addr, "/ws", "down1");
    assert!(echoes(&mut ws));
    // The tracking connection (CLIENT LIST flag t) is killed and the
    // session deleted in the same breath: the gateway may not hear the DEL,
    // and re-checks every exchange when its channel is back.
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut live.redis.conn())
        .unwrap();
    let id = list
        .lines()
        .find_map(|line| {
            let flags = line.split(' ').find_map(|f| f.strip_prefix("flags="))?;
            let id = line.split(' ').find_map(|f| f.strip_prefix("id="))?;
            flags.contains('t').then(|| id.to_owned())
        })
        .expect("a tracking connection");
    let started = Instant::now();
    let _: () = redis::pipe()
        .cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .ignore()
        .cmd("DEL")
        .arg("sess:down1")
        .ignore()
        .query(&mut live.redis.conn())
        .unwrap();
    let took = closed_within(&mut ws, SOON).expect("the WebSocket outlived its session");
    println!(
        "a DEL with the channel down ended the WebSocket in {took:?} ({:?} after the kill)",
        started.elapsed()
    );
}

#[test]
fn live_keep_leaves_the_exchange_and_max_lifetime_ends_it() {
    let live = start();
    live.session("kept", "admin");
    live.session("short", "admin");
    let mut kept = websocket(live.gateway.addr, "/keep/ws", "kept");
    let mut short = websocket(live.gateway.addr, "/short/ws", "short");
    let started = Instant::now();
    live.run(&["DEL", "sess:kept"]);
    thread::sleep(Duration::from_millis(300));
    assert!(echoes(&mut kept), "live = \"keep\" ended the exchange");
    assert!(echoes(&mut short));
    let took = closed_within(&mut short, SOON).expect("max_lifetime did not end the exchange");
    let age = started.elapsed();
    println!("max_lifetime = 600ms ended the WebSocket after {age:?}");
    assert!(
        age >= Duration::from_millis(550),
        "ended early: {age:?} ({took:?})"
    );
    let deadline = Instant::now() + SOON;
    while !live.gateway.log().contains("max_lifetime") {
        assert!(Instant::now() < deadline, "{}", live.gateway.log());
        thread::sleep(Duration::from_millis(20));
    }
    assert!(echoes(&mut kept));
}

#[test]
fn with_max_unverified_exchanges_end_when_the_channel_stays_down() {
    let mut live = start_with("max_unverified = \"500ms\"");
    live.session("mu", "admin");
    let mut ws = websocket(live.gateway.addr, "/ws", "mu");
    assert!(echoes(&mut ws));
    // Redis goes away: nothing can say whether the session still stands.
    let started = Instant::now();
    live.redis.stop();
    let took = closed_within(&mut ws, SOON).expect("the exchange outlived max_unverified");
    let age = started.elapsed();
    println!("with Redis gone, max_unverified = 500ms ended the WebSocket after {age:?}");
    assert!(
        age >= Duration::from_millis(450),
        "ended early: {age:?} ({took:?})"
    );
    let deadline = Instant::now() + SOON;
    while !live.gateway.log().contains("channel_lost") {
        assert!(Instant::now() < deadline, "{}", live.gateway.log());
        thread::sleep(Duration::from_millis(20));
    }
}
