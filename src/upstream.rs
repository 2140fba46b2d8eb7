//! Upstream address health: active checks (`health_check`), one background
//! task per upstream, marking addresses down or up; the round robin skips
//! addresses that are down (unless all of them are).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

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
            let addrs = upstream.addrs.clone();
            let name = upstream.name.clone();
            let connect_timeout = upstream.connect_timeout;
            tokio::spawn(run(weak, index, name, addrs, check, connect_timeout));
        }
    }
}

async fn run(
    health: Weak<UpstreamHealth>,
    index: usize,
    name: String,
    addrs: Vec<SocketAddr>,
    check: HealthCheck,
    connect_timeout: Duration,
) {
    loop {
        for (i, addr) in addrs.iter().enumerate() {
            let healthy = probe(*addr, &check, connect_timeout).await;
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

/// One check: a TCP connect, or with `path` an HTTP GET answered with 2xx.
async fn probe(addr: SocketAddr, check: &HealthCheck, connect_timeout: Duration) -> bool {
    let connect = tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await;
    let Ok(Ok(mut stream)) = connect else {
        return false;
    };
    let Some(path) = &check.path else {
        return true;
    };
    let exchange = async {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sessiongate-health\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.") && head[8] == b' ' && head[9] == b'2')
    };
    tokio::time::timeout(check.interval.max(connect_timeout), exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
