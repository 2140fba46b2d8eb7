//! The HTTP/2 connection loop: a connection whose TLS handshake chose `h2`
//! (ALPN) is served here, each stream handed to the lean engine
//! (`lean_h2`), which serves the common ones and gives the others back for
//! the full proxy, through the same pipeline as HTTP/1.
//!
//! Pingora's own loop spawns a task per stream and keeps it running after
//! the client resets the stream, so one connection allowed 100 streams can
//! keep thousands of requests in flight (resets after acceptance, a rapid
//! reset variant). This loop bounds the requests in flight per connection
//! and per client IP: a stream over either bound is refused at once
//! (`REFUSED_STREAM`, safe for the client to retry), and a connection that
//! keeps opening streams past its bound is closed with `ENHANCE_YOUR_CALM`.
//! It also bounds the requests one connection carries (`keepalive_requests`),
//! the time a stream may take until its response starts
//! (`h2_request_timeout`; HTTP/2 request bodies have no read timeout in
//! Pingora 0.9.1), and how long a connection with nothing in flight stays.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self as h2server, H2Accept};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use crate::config::ServerSettings;
use crate::live;
use crate::metrics;
use crate::pipeline::Pipeline;
use crate::proxy::lean_h2;
use crate::proxy::progress;

/// How long a connection with no stream in flight is kept.
const IDLE: Duration = Duration::from_secs(60);

/// Streams refused for being over a bound, per bound, before the connection
/// is taken for an attack and closed.
const REFUSALS_BEFORE_CLOSE: usize = 2;

/// Requests in flight per client IP over every HTTP/2 connection.
#[derive(Default)]
pub(crate) struct InFlight {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl InFlight {
    fn admit(self: &Arc<Self>, ip: Option<IpAddr>, max: usize) -> Option<IpSlot> {
        if let Some(ip) = ip {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_ip.entry(ip).or_insert(0);
            if max > 0 && *count >= max {
                return None;
            }
            *count += 1;
        }
        Some(IpSlot {
            in_flight: self.clone(),
            ip,
        })
    }
}

/// One request in flight for its client IP; given back when dropped.
struct IpSlot {
    in_flight: Arc<InFlight>,
    ip: Option<IpAddr>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut per_ip = self
            .in_flight
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// The streams of one connection in flight, and a wake-up when none is.
#[derive(Default)]
struct Streams {
    count: std::sync::atomic::AtomicUsize,
    idle: Notify,
}

struct StreamSlot(Arc<Streams>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_one();
        }
    }
}

impl Streams {
    fn try_start(self: &Arc<Self>, max: usize) -> Option<StreamSlot> {
        let now = self.count.fetch_add(1, Ordering::Relaxed);
        let slot = StreamSlot(self.clone());
        if max > 0 && now >= max {
            // Dropping the slot gives the count back.
            drop(slot);
            return None;
        }
        Some(slot)
    }

    async fn until_idle_for(&self, idle: Duration) {
        loop {
            while self.count.load(Ordering::Relaxed) != 0 {
                self.idle.notified().await;
            }
            tokio::select! {
                () = tokio::time::sleep(idle) => return,
                () = self.idle.notified() => {}
            }
        }
    }
}

/// The HTTP/2 settings the gateway announces, from `[server]`.
pub(crate) fn options(server: &ServerSettings) -> h2server::H2Options {
    let mut options = h2server::default_h2_options();
    let streams = u32::try_from(server.h2_max_concurrent_streams).unwrap_or(u32::MAX);
    options
        .max_concurrent_streams(streams)
        // One limit for a head, whichever protocol carries it.
        .max_header_list_size(u32::try_from(server.max_request_header_bytes).unwrap_or(u32::MAX))
        // Streams reset before they are accepted: h2's own bound (its
        // default), then GOAWAY.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(256))
        // The proxy streams bodies; a small window bounds what one upload
        // buffers in the gateway.
        .initial_window_size(65_535)
        .max_send_buffer_size(128 * 1024);
    options
}

/// Serves one HTTP/2 connection until it closes.
pub(crate) async fn serve<A>(
    app: Arc<A>,
    pipelines: Arc<ArcSwap<Pipeline>>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    server: &ServerSettings,
    in_flight: &Arc<InFlight>,
    ip: Option<IpAddr>,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let mut conn = match Box::pin(h2server::handshake(stream, Some(options(server)))).await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    let max_streams = server.h2_max_concurrent_streams;
    let max_per_ip = server.max_streams_per_ip;
    let max_requests = server.keepalive_requests;
    let deadline = server.h2_request_timeout;
    let write_timeout = server.write_timeout;
    let streams = Arc::new(Streams::default());
    let mut watch = shutdown.clone();
    let mut draining = false;
    let mut served = 0usize;
    let mut refused = 0usize;
    let mut malformed = 0usize;
    loop {
        // Boxed: the wait for the next stream is where an idle connection
        // sits, and its future would otherwise keep room for the largest
        // state of accepting one (about 2 KB per connection).
        let accepted = if draining {
            Box::pin(h2server::HttpSession::from_h2_conn(
                &mut conn,
                digest.clone(),
            ))
            .await
        } else {
            tokio::select! {
                biased;
                changed = watch.changed() => {
                    if changed.is_err() || *watch.borrow() {
                        conn.graceful_shutdown();
                        draining = true;
                    }
                    continue;
                }
                accepted = Box::pin(h2server::HttpSession::from_h2_conn(&mut conn, digest.clone())) => accepted,
                () = streams.until_idle_for(IDLE) => return,
            }
        };
        let mut session = match accepted {
            Ok(Some(H2Accept::Session(session))) => session,
            Ok(Some(H2Accept::Rejected)) => {
                // Pingora answered the malformed stream; its own budget is
                // per call here, so the connection's is kept in this loop.
                malformed += 1;
                if malformed >= 32 {
                    metrics::h2_connection_closed("malformed");
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    draining = true;
                }
                continue;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 connection ended");
                return;
            }
        };
        let Some(stream_slot) = streams.try_start(max_streams) else {
            refuse(&mut session, "in_flight");
            refused += 1;
            if refused >= REFUSALS_BEFORE_CLOSE * max_streams.max(1) {
                metrics::h2_connection_closed("in_flight");
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                draining = true;
            }
            continue;
        };
        let Some(ip_slot) = in_flight.admit(ip, max_per_ip) else {
            refuse(&mut session, "per_ip");
            refused += 1;
            continue;
        };
        served += 1;
        if max_requests > 0 && served >= max_requests && !draining {
            // This one is served; the client opens a new connection for more.
            conn.graceful_shutdown();
            draining = true;
        }
        session.set_write_timeout(Some(write_timeout));
        let app = app.clone();
        let shutdown = shutdown.clone();
        let pipeline = pipelines.load_full();
        tokio::spawn(async move {
            let _slots = (stream_slot, ip_slot);
            let responding = Arc::new(AtomicBool::new(false));
            // A stream that turns into a live exchange (an event stream) is
            // reset when its session no longer admits it.
            let slot = Arc::new(live::Slot::default());
            let started = Instant::now();
            let serve = async {
                // The lean engine takes the common stream; it hands any
                // other back for the full proxy.
                if let Some(session) = lean_h2::serve(session, pipeline, started).await {
                    app.process_new_http(ServerSession::new_http2(session), &shutdown)
                        .await;
                }
            };
            let work = live::watch(&slot, progress::RESPONDING.scope(responding.clone(), serve));
            tokio::pin!(work);
            tokio::select! {
                _ = &mut work => return,
                () = tokio::time::sleep(deadline) => {}
            }
            if responding.load(Ordering::Relaxed) {
                // The response has started: it streams on for as long as
                // it lasts (an event stream, a download).
                work.await;
            } else {
                // Dropping the request resets its stream.
                metrics::h2_stream_refused("deadline");
            }
        });
    }
}

/// Refuses a stream that would pass a bound: not processed, so the client
/// may send it again (RFC 9113 8.7).
fn refuse(session: &mut h2server::HttpSession, reason: &'static str) {
    metrics::h2_stream_refused(reason);
    session.shutdown_with_reason(h2::Reason::REFUSED_STREAM);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_bounded_and_given_back() {
        let streams = Arc::new(Streams::default());
        let a = streams.try_start(2).unwrap();
        let _b = streams.try_start(2).unwrap();
        assert!(streams.try_start(2).is_none());
        drop(a);
        assert!(streams.try_start(2).is_some());
        assert_eq!(streams.count.load(Ordering::Relaxed), 1);
        // 0: no bound.
        let many: Vec<_> = (0..10).map(|_| streams.try_start(0).unwrap()).collect();
        assert_eq!(streams.count.load(Ordering::Relaxed), 11);
        drop(many);
    }

    #[test]
    fn requests_in_flight_are_bounded_per_ip() {
        let in_flight = Arc::new(InFlight::default());
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        let ip = Some(addr);
        let other: Option<IpAddr> = Some("192.0.2.2".parse().unwrap());
        let a = in_flight.admit(ip, 2).unwrap();
        let _b = in_flight.admit(ip, 2).unwrap();
        assert!(in_flight.admit(ip, 2).is_none());
        assert!(in_flight.admit(other, 2).is_some());
        drop(a);
        assert!(in_flight.admit(ip, 2).is_some());
        // Gone from the map when its count is back to 0.
        drop(_b);
        assert!(!in_flight.per_ip.lock().unwrap().contains_key(&addr));
    }
}
