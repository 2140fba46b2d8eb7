//! Keeps idle keep-alive connections cheap.
//!
//! Pingora starts a request's whole state machine (several tens of KiB of
//! future, the session and its header buffer) as soon as a connection is
//! accepted or a response is finished, and holds it while it waits for the
//! next request. With thousands of idle keep-alive clients that is most of
//! the process's memory. [`LeanHttp`] runs Pingora's HTTP/1 loop itself and
//! waits for a connection's next bytes first, holding nothing but the socket;
//! what it read is handed to Pingora as the start of the request (the hook
//! Pingora has for pipelined bytes), so no byte is read twice.
//!
//! The same loop guards the connections: it counts them at accept (in total
//! and per client IP; a connection over a limit is closed at once), reads
//! each request head whole before Pingora sees it, under one deadline from
//! its first byte to its end (`request_head_timeout`) and one size limit for
//! the request line and headers together (`max_request_header_bytes`), and
//! sets the body read and client write timeouts of each request. Requests a
//! client pipelines are served in order, and `keepalive_requests` counts
//! them whichever engine serves them.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::live;
use crate::metrics::{self, BadRequest};
use crate::pipeline::Pipeline;
use crate::proxy::{access, h2, lean, progress};
use crate::reject::Rejection;

/// How long a connection may stay idle before its next request (Pingora's
/// keep-alive default); also the limit for a new connection's first bytes.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// The first read of a request: what Pingora's header buffer starts at.
const FIRST_READ: usize = 4096;

/// How long a refusal written by this loop (431, 408) may take to send.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// The server app of the public listeners: admits each connection, hands
/// one whose TLS handshake chose HTTP/2 to the HTTP/2 loop, and runs the
/// HTTP/1 loop (cleartext or over TLS; no h2c) on the rest, whose idle
/// connections hold only their socket.
pub struct LeanHttp<A> {
    inner: Arc<A>,
    /// The running pipeline: its `[server]` limits and its metrics.
    pipeline: Arc<ArcSwap<Pipeline>>,
    connections: Arc<Connections>,
    /// HTTP/2 requests in flight per client IP.
    in_flight: Arc<h2::InFlight>,
}

impl<A> LeanHttp<A> {
    pub fn new(inner: A, pipeline: Arc<ArcSwap<Pipeline>>) -> LeanHttp<A> {
        LeanHttp {
            inner: Arc::new(inner),
            pipeline,
            connections: Arc::default(),
            in_flight: Arc::default(),
        }
    }
}

/// Open client connections, in total and per client IP.
#[derive(Default)]
struct Connections {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    PerIp,
    Total,
}

impl Connections {
    /// Counts a new connection from `ip` unless that would pass a limit
    /// (0: no limit). The returned guard uncounts it when dropped.
    fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Admitted, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if max_total > 0 && open.total >= max_total {
            return Err(Refused::Total);
        }
        if let Some(ip) = ip {
            let count = open.per_ip.entry(ip).or_insert(0);
            if max_per_ip > 0 && *count >= max_per_ip {
                return Err(Refused::PerIp);
            }
            *count += 1;
        }
        open.total += 1;
        metrics::connection_opened();
        Ok(Admitted {
            connections: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; uncounted when dropped.
struct Admitted {
    connections: Arc<Connections>,
    ip: Option<IpAddr>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(count) = open.per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    open.per_ip.remove(&ip);
                }
            }
        }
        metrics::connection_closed();
    }
}

/// What reading a request head found.
enum Head {
    /// The head, whole, and where it ends in the buffer (what follows is
    /// the first bytes of a body or of a pipelined request).
    Complete(BytesMut, usize),
    /// The client closed or the connection failed before the head was whole.
    Closed,
    /// The deadline passed first.
    TimedOut,
    /// Request line and headers are over the limit.
    TooLarge,
}

/// Where the head in `buf` ends (just past its empty line), if it does.
/// Empty lines before the request line are skipped, as the parser does;
/// `scanned` is how far an earlier call looked, so a head trickled in byte by
/// byte is not rescanned from the start every time.
fn head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let from = start.max(scanned.saturating_sub(2));
    let rest = buf.get(from..)?;
    rest.iter().enumerate().find_map(|(i, b)| {
        if *b != b'\n' {
            return None;
        }
        match rest.get(i + 1..) {
            Some([b'\n', ..]) => Some(from + i + 2),
            Some([b'\r', b'\n', ..]) => Some(from + i + 3),
            _ => None,
        }
    })
}

/// Reads until the request head in `buf` is whole, `deadline` passes or the
/// head grows past `limit` bytes.
async fn read_head(
    stream: &mut Stream,
    mut buf: BytesMut,
    deadline: tokio::time::Instant,
    limit: usize,
) -> Head {
    let mut scanned = 0;
    loop {
        match head_end(&buf, scanned) {
            Some(end) if end > limit => return Head::TooLarge,
            Some(end) => return Head::Complete(buf, end),
            None if buf.len() > limit => return Head::TooLarge,
            None => scanned = buf.len(),
        }
        buf.reserve(FIRST_READ);
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Err(_) => return Head::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// Writes a refusal that closes the connection, giving up after [`REFUSAL_WRITE`].
async fn refuse(stream: &mut Stream, status: http::StatusCode, body: &str) {
    let reason = status.canonical_reason().unwrap_or("");
    let mut response = format!(
        "HTTP/1.1 {} {reason}\r\nconnection: close\r\ncache-control: no-store\r\ncontent-length: {}\r\n",
        status.as_u16(),
        body.len()
    );
    if !body.is_empty() {
        response.push_str("content-type: application/json\r\n");
    }
    response.push_str("\r\n");
    response.push_str(body);
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await
    };
    let _ = tokio::time::timeout(REFUSAL_WRITE, write).await;
}

/// Waits for a connection's next bytes and reads them (up to
/// [`FIRST_READ`]). The read buffer lives on the stack of a single poll, so
/// a waiting connection owns no buffer. `None`: the client closed, the
/// connection failed, it stayed idle past [`KEEPALIVE`], or the server is
/// shutting down.
async fn next_bytes(stream: &mut Stream, shutdown: &mut ShutdownWatch) -> Option<BytesMut> {
    let read = poll_fn(|cx| {
        // Uninitialised: zeroing 4 KiB on every poll would cost more than
        // the read.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut buf);
        match Pin::new(&mut *stream).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(None),
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                let mut bytes = BytesMut::with_capacity(FIRST_READ);
                bytes.extend_from_slice(read.filled());
                Poll::Ready(Some(bytes))
            }
        }
    });
    tokio::select! {
        biased;
        bytes = tokio::time::timeout(KEEPALIVE, read) => bytes.ok().flatten(),
        // Idle connections close at once when a graceful shutdown or upgrade
        // begins; requests in flight are not affected.
        () = shutting_down(shutdown) => None,
    }
}

/// Resolves once the server is shutting down (or gone); a notification
/// that leaves the flag false is not a shutdown.
async fn shutting_down(shutdown: &mut ShutdownWatch) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl<A> ServerApp for LeanHttp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let (max_total, max_per_ip) = {
            let server = &self.pipeline.load().config.server;
            (server.max_connections, server.max_connections_per_ip)
        };
        let _admitted = match self.connections.admit(ip, max_total, max_per_ip) {
            Ok(admitted) => admitted,
            Err(refused) => {
                // Closed without a byte: a limit is there to spend nothing
                // more on the connection.
                metrics::connection_refused(refused == Refused::PerIp);
                return None;
            }
        };
        // A TLS handshake that chose HTTP/2: the HTTP/2 loop serves it.
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let pipeline = self.pipeline.load_full();
            let server = &pipeline.config.server;
            Box::pin(h2::serve(
                self.inner.clone(),
                self.pipeline.clone(),
                stream,
                shutdown,
                server,
                &self.in_flight,
                ip,
            ))
            .await;
            return None;
        }
        let mut watch = shutdown.clone();
        // The place of the live exchange a request may turn into.
        let slot = Arc::new(live::Slot::default());
        // Bytes of the next request read with the previous one (a client
        // that pipelines): they start the next head, served in order.
        let mut pipelined = BytesMut::new();
        // Requests this connection has carried, for the keep-alive limit.
        let mut served: u32 = 0;
        loop {
            let first = if pipelined.is_empty() {
                next_bytes(&mut stream, &mut watch).await?
            } else {
                std::mem::take(&mut pipelined)
            };
            let started = Instant::now();
            let pipeline = self.pipeline.load_full();
            let server = &pipeline.config.server;
            let deadline = tokio::time::Instant::now() + server.request_head_timeout;
            let head = tokio::select! {
                biased;
                head = Box::pin(read_head(&mut stream, first, deadline, server.max_request_header_bytes)) => head,
                () = shutting_down(&mut watch) => return None,
            };
            let (mut head, end) = match head {
                Head::Complete(head, end) => (head, end),
                Head::Closed => return None,
                Head::TimedOut => {
                    metrics::head_timeout();
                    access::refused_head(&pipeline, "head_timeout", 408, started);
                    refuse(&mut stream, http::StatusCode::REQUEST_TIMEOUT, "").await;
                    return None;
                }
                Head::TooLarge => {
                    metrics::bad_request(BadRequest::TooLarge);
                    let rendered = Rejection::HeadersTooLarge.render();
                    access::refused_head(
                        &pipeline,
                        BadRequest::TooLarge.as_str(),
                        rendered.status.as_u16(),
                        started,
                    );
                    refuse(&mut stream, rendered.status, rendered.body).await;
                    return None;
                }
            };
            served = served.saturating_add(1);
            // The limit counts requests, on whichever path they go: the
            // one that reaches it says `Connection: close`.
            let reuses_remaining = match server.keepalive_requests {
                0 => None,
                limit => Some(
                    u32::try_from(limit)
                        .unwrap_or(u32::MAX)
                        .saturating_sub(served),
                ),
            };
            // What follows the head: a body, or the next pipelined request.
            // Split only when something follows: splitting turns the buffer
            // into shared storage, which costs an allocation per request.
            let after = if head.len() > end {
                head.split_off(end)
            } else {
                BytesMut::new()
            };
            // The common request takes the lean path; the rest, and any head
            // Pingora's parser refuses, the full proxy.
            // Boxed, as the head reading above: a future holds room for its
            // largest state, and this loop's waits between requests, which
            // every connection sits in (HTTP/2 ones too: they start here),
            // would otherwise carry the forwarding's room too. Measured: 12 KB
            // less per open connection, for a copy of the ~10 KB state into
            // the box per request (59.3k -> 70.7k instructions per request
            // in callgrind). Never move the unboxed future into a wrapper:
            // each move is such a copy (83.1k).
            let lane = live::watch(
                &slot,
                Box::pin(lean::serve(
                    stream,
                    head,
                    pipeline.clone(),
                    shutdown,
                    started,
                    reuses_remaining,
                    after.is_empty(),
                )),
            )
            .await;
            // None: a live exchange (an event stream) its session no longer
            // admits was ended, and the connection with it.
            let lane = lane?;
            let (full_stream, head) = match lane {
                lean::Lane::Served(Some(reused)) => {
                    stream = reused;
                    pipelined = after;
                    continue;
                }
                lean::Lane::Served(None) => return None,
                lean::Lane::Full(stream, mut head, body) => {
                    let mut after = after;
                    match body {
                        // What follows a body of known length is the next
                        // request, kept for this loop.
                        Some(length) if after.len() > length => {
                            pipelined = after.split_off(length);
                        }
                        // A chunked body (or an upgraded connection's first
                        // bytes): Pingora reads on from here. Bytes it reads
                        // past a body end the connection after the response,
                        // since it does not pipeline; they are never taken
                        // for part of this request.
                        _ => {}
                    }
                    head.unsplit(after);
                    (stream, head)
                }
            };
            let mut session = ServerSession::new_http1(full_stream);
            session.set_read_timeout(Some(server.body_idle_timeout));
            session.set_write_timeout(Some(server.write_timeout));
            session.set_keepalive(Some(KEEPALIVE.as_secs()));
            session.set_keepalive_reuses_remaining(reuses_remaining);
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            // Pipelining is never enabled on the session: these are the
            // request's first bytes, and nothing of an earlier one.
            session.set_pipelined_prefix(head);
            // Pingora's request future is allocated here and freed when the
            // response is done, before the connection waits again.
            let accepted = Arc::new(AtomicBool::new(false));
            let reused = live::watch(
                &slot,
                progress::STARTED.scope(
                    accepted.clone(),
                    self.inner.process_new_http(session, shutdown),
                ),
            )
            .await;
            // A live exchange (an upgraded connection, an event stream) its
            // session no longer admits was ended: the connection closes.
            let reused = reused?;
            let Some(reused) = reused else {
                // The head was whole, so a request that never started is one
                // Pingora's parser refused (it answered 400 itself).
                if !accepted.load(Ordering::Relaxed) && !*shutdown.borrow() {
                    metrics::bad_request(BadRequest::Invalid);
                    access::refused_head(&pipeline, BadRequest::Invalid.as_str(), 400, started);
                }
                return None;
            };
            // The keep-alive settings are this loop's, set anew per request.
            (stream, _) = reused.consume();
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_its_first_empty_line() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 0),
            Some(27)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        // Empty lines before the request line are not the end of a head.
        assert_eq!(head_end(b"\r\n\r\n", 0), None);
        assert_eq!(head_end(b"\r\nGET / HTTP/1.1\r\n\r\n", 0), Some(20));
        // An end split across two reads is found from where the first stopped.
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for scanned in 0..head.len() {
            assert_eq!(head_end(head, scanned), Some(head.len()), "{scanned}");
        }
    }

    /// What Pingora's HTTP/1 parser (httparse, as Pingora calls it) makes
    /// of `buf`: `Some(end)` when the head is whole, `None` when it wants
    /// more bytes, `Err` when it refuses the head.
    fn pingora_end(buf: &[u8]) -> Result<Option<usize>, ()> {
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(end)) => Ok(Some(end)),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(()),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        /// The loop and Pingora agree on where every head ends: when the
        /// loop says a head is whole, Pingora parses exactly those bytes as
        /// a whole head or refuses them (never asks for more, which it would
        /// read outside the head deadline); when Pingora finds a whole head,
        /// the loop finds the same end. Heads are made of the pieces where
        /// parsers differ: CR and LF in every combination, empty lines
        /// before the request line, folded and empty header lines.
        #[test]
        fn the_loop_and_pingoras_parser_agree_where_a_head_ends(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "GET / HTTP/1.1", "GET /a?b HTTP/1.0", "POST /x HTTP/1.1", "Host: a",
                    "X: y", "X:", " folded", "\tX: y", "A", ":", " ", "\r", "\n", "\r\n",
                    "\n\r", "\r\r", "\n\n", "\r\n\r\n", "\n\r\n", "\r\n\n", "body",
                ]),
                1..14,
            ),
            split in 0usize..64,
        ) {
            let buf: Vec<u8> = pieces.concat().into_bytes();
            let ours = head_end(&buf, 0);
            // Trickled in two reads, the loop finds the same end.
            let split = split.min(buf.len());
            let scanned = if head_end(&buf[..split], 0).is_none() { split } else { 0 };
            proptest::prop_assert_eq!(head_end(&buf, scanned), ours);
            match pingora_end(&buf) {
                Ok(Some(end)) => proptest::prop_assert_eq!(ours, Some(end), "{:?}", pieces),
                Ok(None) => proptest::prop_assert_eq!(ours, None, "{:?}", pieces),
                Err(()) => {}
            }
            if let Some(end) = ours {
                let theirs = pingora_end(&buf[..end]);
                proptest::prop_assert!(
                    matches!(theirs, Ok(Some(e)) if e == end) || theirs.is_err(),
                    "{:?}: the loop ends the head at {} but Pingora says {:?}", pieces, end, theirs
                );
            }
        }
    }

    #[test]
    fn connections_are_limited_in_total_and_per_ip_and_given_back() {
        let connections = Arc::new(Connections::default());
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        let first = connections.admit(a, 3, 2).unwrap();
        let _second = connections.admit(a, 3, 2).unwrap();
        assert_eq!(connections.admit(a, 3, 2).err(), Some(Refused::PerIp));
        let _third = connections.admit(b, 3, 2).unwrap();
        assert_eq!(connections.admit(b, 3, 2).err(), Some(Refused::Total));
        drop(first);
        let _again = connections.admit(a, 3, 2).unwrap();
        // 0: no limit.
        let many: Vec<_> = (0..10)
            .map(|_| connections.admit(b, 0, 0).unwrap())
            .collect();
        drop(many);
        drop(_again);
        let open = connections.open.lock().unwrap();
        assert_eq!(open.total, 2);
        assert_eq!(open.per_ip.get(&a.unwrap()), Some(&1));
    }

    #[tokio::test]
    async fn only_a_true_flag_is_a_shutdown() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut watch = rx.clone();
        let wait = Duration::from_millis(50);
        tx.send(false).unwrap();
        assert!(
            tokio::time::timeout(wait, shutting_down(&mut watch))
                .await
                .is_err(),
            "a notification that leaves the flag false ended the wait"
        );
        tx.send(true).unwrap();
        assert!(tokio::time::timeout(wait, shutting_down(&mut watch))
            .await
            .is_ok());
        // A server that is gone counts as shutting down.
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut watch = rx;
        drop(tx);
        assert!(tokio::time::timeout(wait, shutting_down(&mut watch))
            .await
            .is_ok());
    }
}
