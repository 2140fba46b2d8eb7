//! Upstream address health: active checks (`health_check`), one background
//! task per upstream, marking addresses down or up; the round robin skips
//! addresses that are down (unless all of them are).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthCheck, Upstream};

/// Which addresses of each upstream are down, per `Config::upstreams` index.
pub struct UpstreamHealth {
    down: Vec<Vec<AtomicBool>>,
    started: AtomicBool,
}

impl UpstreamHealth {
    pub fn new(upstreams: &[Upstream]) -> Arc<UpstreamHealth> {
        Arc::new(UpstreamHealth {
            down: upstreams
                .iter()
                .map(|u| u.addrs.iter().map(|_| AtomicBool::new(false)).collect())
                .collect(),
            started: AtomicBool::new(false),
        })
    }

    /// Whether address `addr` (an index) of upstream `upstream` is in rotation.
    pub fn is_up(&self, upstream: usize, addr: usize) -> bool {
        self.down
            .get(upstream)
            .and_then(|u| u.get(addr))
            .is_none_or(|d| !d.load(Ordering::Relaxed))
    }

    /// Starts the checkers once (must be called inside the Tokio runtime).
    /// They stop when this `UpstreamHealth` is dropped (e.g. after a reload).
    pub fn start(self: &Arc<Self>, upstreams: &[Upstream]) {
        if self.started.load(Ordering::Relaxed) || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            self.started.store(false, Ordering::Release);
            return;
        }
        for (index, upstream) in upstreams.iter().enumerate() {
            let Some(check) = upstream.health_check.clone() else {
                continue;
            };
            let weak = Arc::downgrade(self);
            tokio::spawn(run(weak, index, upstream.clone(), check));
        }
    }
}

async fn run(health: Weak<UpstreamHealth>, index: usize, upstream: Upstream, check: HealthCheck) {
    let name = &upstream.name;
    loop {
        for (i, addr) in upstream.addrs.iter().enumerate() {
            let healthy = probe(*addr, &check, &upstream).await;
            let Some(health) = health.upgrade() else {
                return;
            };
            let Some(flag) = health.down.get(index).and_then(|u| u.get(i)) else {
                return;
            };
            let was_down = flag.swap(!healthy, Ordering::Relaxed);
            if was_down == healthy {
                if healthy {
                    tracing::info!(upstream = %name, %addr, "upstream address is healthy again");
                } else {
                    tracing::warn!(upstream = %name, %addr, "upstream address failed its health check");
                }
            }
        }
        tokio::time::sleep(check.interval).await;
        if health.strong_count() == 0 {
            return;
        }
    }
}

/// One check: a TCP connect (a verified TLS handshake for a TLS upstream),
/// or with `path` an HTTP GET answered with 2xx (over HTTP/2 for an `h2`
/// upstream).
async fn probe(addr: SocketAddr, check: &HealthCheck, upstream: &Upstream) -> bool {
    let connect_timeout = upstream.connect_timeout;
    let stream: pingora::protocols::Stream = match &upstream.tls {
        Some(tls) => match crate::tls::upstream::connect(tls, addr, connect_timeout).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(upstream = %upstream.name, %addr, error = %e, "health check: TLS connection failed");
                return false;
            }
        },
        None => {
            let connect = tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await;
            let Ok(Ok(tcp)) = connect else {
                return false;
            };
            Box::new(pingora::protocols::l4::stream::Stream::from(tcp))
        }
    };
    let Some(path) = &check.path else {
        return true;
    };
    let host = upstream
        .tls
        .as_ref()
        .map_or_else(|| addr.to_string(), |t| t.files.sni.clone());
    let h2 = upstream.h2();
    let exchange = async {
        if h2 {
            get_h2(stream, &host, path).await
        } else {
            get_h1(stream, &host, path).await
        }
    };
    tokio::time::timeout(check.interval.max(connect_timeout), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn get_h1(mut stream: pingora::protocols::Stream, host: &str, path: &str) -> Option<bool> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sessiongate-health\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.ok()?;
    Some(head.starts_with(b"HTTP/1.") && head[8] == b' ' && head[9] == b'2')
}

async fn get_h2(stream: pingora::protocols::Stream, host: &str, path: &str) -> Option<bool> {
    let (mut send, connection) = h2::client::handshake(stream).await.ok()?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(format!("https://{host}{path}"))
        .header(http::header::USER_AGENT, "sessiongate-health")
        .body(())
        .ok()?;
    let answer = async {
        let (response, _) = send.send_request(request, true).ok()?;
        Some(response.await.ok()?.status().is_success())
    }
    .await;
    driver.abort();
    answer
}
