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

use std::sync::{Arc, Mutex};

use redis::Commands;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use support::h2raw::{self, RawH2};
use support::tls::{certificate, CertFiles};
use support::{RedisServer, TestGateway};

/// What the upstream saw of the WebSockets that closed: the request path
/// and the close code each one received.
type Closes = Arc<Mutex<Vec<(String, Option<u16>)>>>;

/// Answers a WebSocket (a real one: tungstenite) and echoes its messages,
/// recording each close frame it receives; `/events` with an event stream
/// (an event every 50 ms for 20 s).
fn live_upstream() -> (SocketAddr, Closes) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let closes = Closes::default();
    let recorded = closes.clone();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let closes = recorded.clone();
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let mut peeked = [0u8; 4096];
                let n = stream.peek(&mut peeked).unwrap_or(0);
                if String::from_utf8_lossy(&peeked[..n])
                    .to_ascii_lowercase()
                    .contains("upgrade: websocket")
                {
                    serve_websocket(stream, &closes);
                } else {
                    serve_events(stream);
                }
            });
        }
    });
    (addr, closes)
}

fn serve_websocket(stream: TcpStream, closes: &Closes) {
    let mut path = String::new();
    let callback = |req: &tungstenite::handshake::server::Request,
                    resp: tungstenite::handshake::server::Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(mut ws) = tungstenite::accept_hdr(stream, callback) else {
        return;
    };
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                if ws.send(Message::Text(text)).is_err() {
                    return;
                }
            }
            Ok(Message::Close(frame)) => {
                closes
                    .lock()
                    .unwrap()
                    .push((path.clone(), frame.map(|f| u16::from(f.code))));
                // tungstenite answers the close; read on until the end.
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

fn serve_events(stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    if support::http::read_head_lowercase(&mut reader).is_none() {
        return;
    }
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

struct Live {
    closes: Closes,
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
    let (upstream, closes) = live_upstream();
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
        closes,
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

type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// A WebSocket through the gateway (a real client: tungstenite), opened
/// with the session cookie `sid`, or `Authorization` when it starts with
/// `Bearer `.
fn websocket(addr: SocketAddr, path: &str, sid: &str) -> Ws {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("host", "app.test".parse().unwrap());
    let (name, value) = match sid.strip_prefix("Bearer ") {
        Some(_) => ("authorization", sid.to_owned()),
        None => ("cookie", format!("sid={sid}")),
    };
    request
        .headers_mut()
        .insert(name, value.parse().unwrap());
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (ws, resp) = tungstenite::client::client(request, MaybeTlsStream::Plain(stream))
        .unwrap_or_else(|e| panic!("no WebSocket on {path}: {e}"));
    assert_eq!(resp.status(), 101);
    ws
}

/// Whether the WebSocket still echoes a message.
fn echoes(ws: &mut Ws) -> bool {
    if ws.send(Message::text("ping")).is_err() {
        return false;
    }
    loop {
        match ws.read() {
            Ok(Message::Text(t)) if t.as_str() == "ping" => return true,
            Ok(Message::Close(_)) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// Waits for the WebSocket to be closed; how long that took, and the close
/// code the client got (`None`: the connection closed without a close frame).
fn ws_closed_within(ws: &mut Ws, limit: Duration) -> Option<(Duration, Option<u16>)> {
    let started = Instant::now();
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(limit)).unwrap();
    }
    loop {
        match ws.read() {
            Ok(Message::Close(frame)) => {
                return Some((started.elapsed(), frame.map(|f| u16::from(f.code))));
            }
            Ok(_) => {}
            Err(_) if started.elapsed() < limit => return Some((started.elapsed(), None)),
            Err(_) => return None,
        }
    }
}

/// Waits for the WebSocket to be ended by the gateway with a close frame
/// 1008 (policy violation); how long that took.
fn ended_1008(ws: &mut Ws, why: &str) -> Duration {
    let (took, code) = ws_closed_within(ws, SOON).unwrap_or_else(|| panic!("the WebSocket outlived {why}"));
    assert_eq!(code, Some(1008), "{why}: no close frame 1008");
    took
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
    let took = ended_1008(&mut ws, "its session");
    println!("DEL ended the WebSocket in {took:?}");
    let deadline = Instant::now() + SOON;
    while live.closes.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the upstream saw no close frame");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        live.closes.lock().unwrap()[0],
        ("/ws".to_owned(), Some(1008)),
        "the upstream's close"
    );
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
    let took = ended_1008(&mut ws, "the role");
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
    let took = ended_1008(&mut ws, "FLUSHDB");
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
    let took = ended_1008(&mut ws, "its session");
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
    let took = ended_1008(&mut short, "max_lifetime");
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
    let took = ended_1008(&mut ws, "max_unverified");
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
