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
use support::h2raw::{self, RawH2};
use support::tls::{certificate, CertFiles};
use support::{RedisServer, TestGateway};
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

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

#[allow(clippy::result_large_err)] // tungstenite's callback type
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
    let Some(head) = support::http::read_head_lowercase(&mut reader) else {
        return;
    };
    // `/poll`: a long poll, a chunked JSON response that trickles.
    let content_type = if head.starts_with("get /poll") {
        "application/json"
    } else {
        "text/event-stream"
    };
    let _ = write!(
        writer,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
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
user_sessions_key = "user:{{user}}:sessions"
bearer = "jwt"

[jwt]
algorithms = ["HS256"]
secret = "{JWT_SECRET}"
leeway = "0s"

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
name = "poll"
path_prefix = "/poll"
upstream = "app"
live_after = "300ms"

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
    request.headers_mut().insert(name, value.parse().unwrap());
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
    let (took, code) =
        ws_closed_within(ws, SOON).unwrap_or_else(|| panic!("the WebSocket outlived {why}"));
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

const JWT_SECRET: &str = "live-test-secret-of-thirty-two-bytes!";

/// A bearer JWT (HS256) whose token key is `token:<id>`, valid `for_secs`.
fn jwt(id: &str, for_secs: u64) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + for_secs;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"tokenId": id, "sub": id, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    format!("Bearer {token}")
}

/// When an exchange ended, and the close code it got.
type Ended = Arc<Mutex<Option<(Instant, Option<u16>)>>>;

/// An exchange followed by a thread of its own: how many messages (echoes
/// or events) it got, and when it ended with which close code.
struct Followed {
    name: String,
    got: Arc<std::sync::atomic::AtomicUsize>,
    ended: Ended,
}

impl Followed {
    fn got(&self) -> usize {
        self.got.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn ended(&self) -> Option<(Instant, Option<u16>)> {
        *self.ended.lock().unwrap()
    }
}

/// Follows a WebSocket: a message every 100 ms, echoes counted, the close
/// frame (or the end of the connection) recorded as soon as it arrives.
fn follow_ws(name: String, mut ws: Ws) -> Followed {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let got = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(Mutex::new(None));
    let (g, e) = (got.clone(), ended.clone());
    if let MaybeTlsStream::Plain(s) = ws.get_mut() {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    }
    thread::spawn(move || {
        let mut last = Instant::now() - Duration::from_secs(1);
        loop {
            if last.elapsed() >= Duration::from_millis(100) {
                last = Instant::now();
                if ws.send(Message::text("ping")).is_err() {
                    *e.lock().unwrap() = Some((Instant::now(), None));
                    return;
                }
            }
            match ws.read() {
                Ok(Message::Text(_)) => {
                    g.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Message::Close(frame)) => {
                    *e.lock().unwrap() = Some((Instant::now(), frame.map(|f| u16::from(f.code))));
                    // Answer the close, then read to the end.
                    let _ = ws.flush();
                    while !matches!(
                        ws.read(),
                        Err(tungstenite::Error::ConnectionClosed
                            | tungstenite::Error::AlreadyClosed)
                    ) && last.elapsed() < SOON
                    {}
                    return;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(err))
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => {
                    *e.lock().unwrap() = Some((Instant::now(), None));
                    return;
                }
            }
        }
    });
    Followed { name, got, ended }
}

/// Follows an event stream opened with `cookie`: events counted, its end recorded.
fn follow_events(name: String, addr: SocketAddr, cookie: &str) -> Followed {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let got = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(Mutex::new(None));
    let (g, e) = (got.clone(), ended.clone());
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: app.test\r\nCookie: {cookie}\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => {
                    *e.lock().unwrap() = Some((Instant::now(), None));
                    return;
                }
                Ok(n) => {
                    let events = String::from_utf8_lossy(&buf[..n]).matches("data: ").count();
                    g.fetch_add(events, Ordering::Relaxed);
                }
            }
        }
    });
    Followed { name, got, ended }
}

/// The gateway's `session` command on this gateway's config.
fn cli(live: &Live, args: &[&str]) {
    let out = std::process::Command::new(support::gateway::binary())
        .arg("session")
        .args(args)
        .arg("-c")
        .arg(&live.gateway.config_path)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The issue's scene: 50 WebSockets of 5 users (two sessions each) and 20
/// event streams, plus WebSockets of bearer JWTs. One session revoked by the
/// CLI, another user revoked by the CLI, one session left to expire, one
/// losing the route's role, one JWT's token key deleted, one JWT reaching its
/// `exp`: exactly those exchanges end (close frame 1008 at the client, the
/// upstream sees the close), every other one keeps exchanging messages.
#[test]
fn fifty_websockets_and_twenty_event_streams_end_exactly_with_their_sessions() {
    let live = start();
    let mut conn = live.redis.conn();
    let mut followed = Vec::new();
    for u in 0..5 {
        for s in ["a", "b"] {
            let id = format!("u{u}{s}");
            let value = format!(r#"{{"user":{{"id":"u{u}","role":"admin"}}}}"#);
            let _: () = conn.set_ex(format!("sess:{id}"), value, 600).unwrap();
            let _: () = conn.sadd(format!("user:u{u}:sessions"), &id).unwrap();
        }
    }
    for u in 0..5 {
        for s in ["a", "b"] {
            let id = format!("u{u}{s}");
            let path = if id == "u3a" { "/admin/ws" } else { "/ws" };
            for n in 0..5 {
                let ws = websocket(live.gateway.addr, path, &id);
                followed.push(follow_ws(format!("{id}/ws{n}"), ws));
            }
            for n in 0..2 {
                let cookie = format!("sid={id}");
                followed.push(follow_events(
                    format!("{id}/sse{n}"),
                    live.gateway.addr,
                    &cookie,
                ));
            }
        }
    }
    let jc_minted = jsonwebtoken::get_current_timestamp();
    for (id, secs) in [("ja", 600), ("jb", 600), ("jc", 3)] {
        let _: () = conn.set_ex(format!("token:{id}"), "1", 600).unwrap();
        let ws = websocket(live.gateway.addr, "/ws", &jwt(id, secs));
        followed.push(follow_ws(format!("{id}/ws"), ws));
    }
    assert_eq!(
        followed.iter().filter(|f| f.name.contains("/ws")).count(),
        53
    );
    assert_eq!(
        followed.iter().filter(|f| f.name.contains("/sse")).count(),
        20
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while followed.iter().any(|f| f.got() == 0) {
        assert!(Instant::now() < deadline, "not every exchange got going");
        thread::sleep(Duration::from_millis(20));
    }

    // (what was done, when, the exchanges it must end)
    let mut actions: Vec<(&str, Instant, Vec<&str>)> = Vec::new();
    let started = Instant::now();
    cli(&live, &["revoke", "u0a"]);
    actions.push(("session revoke", started, vec!["u0a/"]));
    let started = Instant::now();
    cli(&live, &["revoke-user", "u1"]);
    actions.push(("revoke-user", started, vec!["u1a/", "u1b/"]));
    let _: () = redis::cmd("PEXPIRE")
        .arg("sess:u2a")
        .arg(300)
        .query(&mut conn)
        .unwrap();
    actions.push((
        "expiry",
        Instant::now() + Duration::from_millis(300),
        vec!["u2a/"],
    ));
    let started = Instant::now();
    let _: () = conn
        .set_ex("sess:u3a", r#"{"user":{"id":"u3","role":"viewer"}}"#, 600)
        .unwrap();
    // Only the WebSockets on the admin route lose it; u3a's event streams
    // are on a route without roles and stay.
    actions.push(("role removed", started, vec!["u3a/ws"]));
    let started = Instant::now();
    let _: () = conn.del("token:ja").unwrap();
    actions.push(("token key deleted", started, vec!["ja/"]));
    // jc's `exp` is 3 s after it was minted: its last valid second; it
    // ends when the next one begins.
    let minted_exp = jc_minted + 3;
    let since_epoch = std::time::UNIX_EPOCH.elapsed().unwrap();
    let exp = Instant::now() + Duration::from_secs(minted_exp + 1).saturating_sub(since_epoch);
    actions.push(("JWT exp", exp, vec!["jc/"]));

    let affected = |f: &Followed| {
        actions
            .iter()
            .any(|(_, _, names)| names.iter().any(|n| f.name.starts_with(n)))
    };
    let deadline = exp + SOON;
    while followed.iter().any(|f| affected(f) && f.ended().is_none()) {
        let left: Vec<_> = followed
            .iter()
            .filter(|f| affected(f) && f.ended().is_none())
            .map(|f| f.name.as_str())
            .collect();
        assert!(Instant::now() < deadline, "still running: {left:?}");
        thread::sleep(Duration::from_millis(20));
    }
    let mut latencies = Vec::new();
    for (what, at, names) in &actions {
        let mut took: Vec<Duration> = followed
            .iter()
            .filter(|f| names.iter().any(|n| f.name.starts_with(n)))
            .map(|f| {
                let (ended, code) = f.ended().unwrap();
                if f.name.contains("/ws") {
                    assert_eq!(code, Some(1008), "{}: {what}", f.name);
                }
                ended.saturating_duration_since(*at)
            })
            .collect();
        took.sort();
        println!(
            "{what}: {} exchanges ended, {:?} .. {:?} after it",
            took.len(),
            took[0],
            took[took.len() - 1]
        );
        if !matches!(
            *what,
            "expiry" | "JWT exp" | "session revoke" | "revoke-user"
        ) {
            latencies.extend(took);
        }
    }
    latencies.sort();
    println!(
        "from the Redis command to the close frame: p50 {:?}, p99 {:?} ({} exchanges)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.len()
    );

    // Every other exchange is still running and exchanging.
    let others: Vec<&Followed> = followed.iter().filter(|f| !affected(f)).collect();
    assert_eq!(others.len(), 73 - 7 - 14 - 7 - 5 - 1 - 1);
    let before: Vec<usize> = others.iter().map(|f| f.got()).collect();
    thread::sleep(Duration::from_millis(600));
    for (f, before) in others.iter().zip(before) {
        assert!(f.ended().is_none(), "{} was ended", f.name);
        assert!(f.got() > before, "{} stopped exchanging", f.name);
    }
    // The upstream saw a close frame 1008 from each ended WebSocket.
    let ended_ws = followed
        .iter()
        .filter(|f| affected(f) && f.name.contains("/ws"))
        .count();
    assert_eq!(ended_ws, 5 + 10 + 5 + 5 + 1 + 1);
    let deadline = Instant::now() + SOON;
    loop {
        let closes = live.closes.lock().unwrap().clone();
        let by_1008 = closes.iter().filter(|(_, c)| *c == Some(1008)).count();
        if by_1008 == ended_ws {
            assert_eq!(closes.len(), ended_ws, "{closes:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the upstream saw {closes:?}");
        thread::sleep(Duration::from_millis(20));
    }
    let log = live.gateway.log();
    for reason in ["revoked", "expired", "role_changed"] {
        assert!(log.contains(reason), "no {reason} in the log");
    }
}

/// Redis is killed while exchanges run and comes back with its data; one
/// session is deleted right away: its exchange ends once the channel is
/// back, and the others (whose sessions still exist) keep running.
#[test]
fn after_redis_comes_back_only_the_exchanges_of_vanished_sessions_end() {
    let mut live = start();
    live.session("back1", "admin");
    live.session("back2", "admin");
    let mut gone = websocket(live.gateway.addr, "/ws", "back1");
    let mut kept = websocket(live.gateway.addr, "/ws", "back2");
    let events = follow_events("sse".into(), live.gateway.addr, "sid=back2");
    assert!(echoes(&mut gone) && echoes(&mut kept));
    let _: () = redis::cmd("SAVE").query(&mut live.redis.conn()).unwrap();
    live.redis.stop();
    thread::sleep(Duration::from_millis(300));
    // Nothing is ended for the outage itself.
    assert!(echoes(&mut gone) && echoes(&mut kept));
    live.redis.restart();
    let started = Instant::now();
    live.run(&["DEL", "sess:back1"]);
    let took = ended_1008(&mut gone, "its session");
    println!(
        "deleted just after Redis came back: ended {:?} after the DEL ({took:?} waiting)",
        started.elapsed()
    );
    thread::sleep(Duration::from_millis(500));
    assert!(echoes(&mut kept), "a session that still exists was ended");
    assert!(events.ended().is_none(), "its event stream was ended");
}

/// A response of no announced length (a long poll) becomes a live exchange
/// once it has streamed past the route's `live_after`.
#[test]
fn a_long_poll_is_tied_to_its_session_once_it_has_streamed_past_live_after() {
    let live = start();
    live.session("lp", "admin");
    let mut poll = TcpStream::connect(live.gateway.addr).unwrap();
    poll.write_all(b"GET /poll HTTP/1.1\r\nHost: app.test\r\nCookie: sid=lp\r\n\r\n")
        .unwrap();
    poll.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let n = poll.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("application/json"));
    thread::sleep(Duration::from_millis(500));
    live.run(&["DEL", "sess:lp"]);
    let took = closed_within(&mut poll, SOON).expect("the long poll outlived its session");
    println!("DEL ended the long poll in {took:?}");
    let deadline = Instant::now() + SOON;
    while !live.gateway.log().contains("\"poll\"") {
        assert!(Instant::now() < deadline, "{}", live.gateway.log());
        thread::sleep(Duration::from_millis(20));
    }
}

/// A WebSocket the full proxy relays (its first frame came with the
/// handshake, which the lean path leaves to it) is ended too: without a
/// close frame, its connections are closed.
#[test]
fn the_full_proxy_ends_a_websocket_by_closing_it() {
    let live = start();
    live.session("full", "admin");
    let mut stream = TcpStream::connect(live.gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x84];
    frame.extend(mask);
    frame.extend(b"ping".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut request = b"GET /ws HTTP/1.1\r\nHost: app.test\r\nCookie: sid=full\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    request.extend(&frame);
    stream.write_all(&request).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(6).any(|w| w == b"\x81\x04ping") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 101"));
    live.run(&["DEL", "sess:full"]);
    let took = closed_within(&mut stream, SOON).expect("the WebSocket outlived its session");
    println!("DEL ended a WebSocket on the full proxy in {took:?}");
}

/// With profiles on two Redis servers, `max_unverified` counts each
/// channel's outage apart: the exchanges whose sessions the lost Redis
/// holds end, those of the other Redis run on.
#[test]
fn max_unverified_ends_only_the_exchanges_of_the_redis_that_is_gone() {
    let main = RedisServer::start();
    let mut other = RedisServer::start();
    let (upstream, _closes) = live_upstream();
    let gateway = TestGateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{main}"

[cache]
max_unverified = "500ms"

[session]
cookie = "sid"
cookie_format = "plain"

[profiles.other]
cookie = "osid"
cookie_format = "plain"

[profiles.other.redis]
url = "{other_url}"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/other/"
upstream = "app"
profile = "other"

[[route]]
path_prefix = "/"
upstream = "app"
"#,
        main = main.url(),
        other_url = other.url(),
    ));
    let value = r#"{"user":{"id":"alice"}}"#;
    let _: () = main.conn().set_ex("sess:m1", value, 600).unwrap();
    let _: () = other.conn().set_ex("sess:o1", value, 600).unwrap();
    let mut stays = websocket(gateway.addr, "/ws", "m1");
    let mut ends = {
        let mut request = format!("ws://{}/other/ws", gateway.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("cookie", "osid=o1".parse().unwrap());
        let stream = TcpStream::connect(gateway.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        tungstenite::client::client(request, MaybeTlsStream::Plain(stream))
            .unwrap()
            .0
    };
    assert!(echoes(&mut stays) && echoes(&mut ends));
    other.stop();
    let took = ended_1008(&mut ends, "max_unverified on its Redis");
    println!("the other Redis gone: its WebSocket ended after {took:?}");
    thread::sleep(Duration::from_millis(600));
    assert!(
        echoes(&mut stays),
        "an exchange of the Redis that is up was ended"
    );
}
