//! Per-request observability: the access log (one JSON line per request on
//! stdout, written by its own thread so a slow reader never blocks a request)
//! and the request and upstream metrics. Never a cookie, token or session id.

use std::io::Write as _;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use http::header::HOST;
use pingora::http::RequestHeader;
use serde::Serialize;

use crate::labels::Decision;
use crate::metrics::{self, UpstreamClass};
use crate::pipeline::Pipeline;
use crate::proxy::verdict::Verdict;

/// Lines waiting for the writer; past this, lines are dropped (and counted).
const QUEUE: usize = 16 * 1024;
const MAX_PATH: usize = 2048;
const MAX_HOST: usize = 256;

/// One finished request.
pub struct Finished<'a> {
    pub pipeline: &'a Pipeline,
    pub verdict: &'a Verdict,
    pub started: Instant,
}

/// Records the request's metrics and writes its access log line.
pub fn finish(req: &RequestHeader, status: u16, f: Finished<'_>) {
    let elapsed = f.started.elapsed();
    // No decision: Pingora gave up before the pipeline ran (e.g. a malformed request).
    let decision = f.verdict.decision.unwrap_or(Decision::Invalid);
    let metrics = &f.pipeline.metrics;
    metrics.request(f.verdict.route, decision, elapsed);
    let upstream = f.verdict.observed.upstream.map(|(index, started)| {
        let (class, took) = match f.verdict.observed.answer {
            Some((status, took)) => (UpstreamClass::from_status(status), took),
            None => (UpstreamClass::Error, started.elapsed()),
        };
        metrics.upstream(index, class, took);
        (index, took)
    });

    let admin = &f.pipeline.config.admin;
    if !admin.access_log {
        return;
    }
    // The forwarded host and path: what the upstream was sent.
    let host = f
        .verdict
        .rewrite
        .host
        .as_ref()
        .or_else(|| req.headers.get(HOST))
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let path = f
        .verdict
        .rewrite
        .uri
        .as_ref()
        .map_or_else(|| req.uri.path(), |uri| uri.path());
    let record = Record {
        time: Rfc3339(humantime::format_rfc3339_millis(SystemTime::now())),
        method: req.method.as_str(),
        host: truncate(host, MAX_HOST),
        path: truncate(path, MAX_PATH),
        status,
        route: f
            .verdict
            .route
            .map_or(metrics::NO_ROUTE, |r| f.pipeline.route(r).name.as_str()),
        decision: decision.as_str(),
        reason: f.verdict.observed.reason,
        duration_ms: millis(elapsed),
        upstream: upstream
            .and_then(|(i, _)| f.pipeline.config.upstreams.get(i).map(|u| u.name.as_str())),
        upstream_ms: upstream.map(|(_, took)| millis(took)),
        user: f
            .verdict
            .principal
            .as_deref()
            .filter(|_| admin.access_log_user)
            .and_then(|p| p.user.as_deref()),
    };
    let mut line = Vec::with_capacity(320);
    match serde_json::to_writer(&mut line, &record) {
        Ok(()) => write_line(line),
        Err(e) => tracing::warn!(error = %e, "could not encode an access log line"),
    }
}

/// Records a request head refused before it reached the pipeline (`reason`:
/// `bad_request`, `head_too_large` or `head_timeout`): counted as an invalid
/// request without a route, and logged with no method, host or path, since
/// nothing of a refused head is trusted enough to print.
pub fn refused_head(pipeline: &Pipeline, reason: &'static str, status: u16, started: Instant) {
    let elapsed = started.elapsed();
    pipeline.metrics.request(None, Decision::Invalid, elapsed);
    if !pipeline.config.admin.access_log {
        return;
    }
    let record = Record {
        time: Rfc3339(humantime::format_rfc3339_millis(SystemTime::now())),
        method: "",
        host: "",
        path: "",
        status,
        route: metrics::NO_ROUTE,
        decision: Decision::Invalid.as_str(),
        reason: Some(reason),
        duration_ms: millis(elapsed),
        upstream: None,
        upstream_ms: None,
        user: None,
    };
    let mut line = Vec::with_capacity(200);
    match serde_json::to_writer(&mut line, &record) {
        Ok(()) => write_line(line),
        Err(e) => tracing::warn!(error = %e, "could not encode an access log line"),
    }
}

/// One access log line. Every key is always present (`null` when unknown).
#[derive(Serialize)]
struct Record<'a> {
    time: Rfc3339,
    method: &'a str,
    host: &'a str,
    /// Without the query string: queries carry tokens too often.
    path: &'a str,
    status: u16,
    route: &'a str,
    decision: &'a str,
    reason: Option<&'a str>,
    duration_ms: f64,
    upstream: Option<&'a str>,
    upstream_ms: Option<f64>,
    user: Option<&'a str>,
}

/// A timestamp written straight into the line, without a `String` of its own.
struct Rfc3339(humantime::Rfc3339Timestamp);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Milliseconds with microsecond precision.
fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Queues `line` for the writer thread, started on first use.
fn write_line(line: Vec<u8>) {
    static WRITER: OnceLock<Option<SyncSender<Vec<u8>>>> = OnceLock::new();
    let writer = WRITER.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        match std::thread::Builder::new()
            .name("sessiongate-access-log".into())
            .spawn(move || drain(rx))
        {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "could not start the access log writer; access log off");
                None
            }
        }
    });
    let Some(tx) = writer else {
        metrics::access_log_dropped();
        return;
    };
    match tx.try_send(line) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => metrics::access_log_dropped(),
    }
}

/// How often the writer wakes to drain the queue. Waking per line would cost
/// a futex wake-up and a context switch per request on the request threads.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// Most bytes gathered before they are written out in one call.
const BATCH_BYTES: usize = 64 * 1024;

/// Writes queued lines in batches: each batch is gathered into one buffer and
/// written with one call, not one write per line (stdout is line-buffered).
fn drain(rx: Receiver<Vec<u8>>) {
    let stdout = std::io::stdout();
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut lines = 0usize;
    let flush = |batch: &mut Vec<u8>, lines: &mut usize| {
        if batch.is_empty() {
            return;
        }
        let mut out = stdout.lock();
        if out.write_all(batch).and_then(|()| out.flush()).is_err() {
            metrics::access_log_dropped_n(*lines);
        }
        batch.clear();
        *lines = 0;
    };
    loop {
        std::thread::sleep(DRAIN_EVERY);
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    batch.extend_from_slice(&line);
                    batch.push(b'\n');
                    lines += 1;
                    if batch.len() >= BATCH_BYTES {
                        flush(&mut batch, &mut lines);
                    }
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    flush(&mut batch, &mut lines);
                    return;
                }
            }
        }
        flush(&mut batch, &mut lines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_access_record_shape() {
        let record = Record {
            time: Rfc3339(humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH)),
            method: "GET",
            host: "example.test",
            path: "/a",
            status: 200,
            route: "app",
            decision: "forwarded",
            reason: None,
            duration_ms: millis(Duration::from_micros(1500)),
            upstream: Some("app"),
            upstream_ms: Some(1.0),
            user: Some("1001"),
        };
        let v: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["duration_ms"], 1.5);
        assert!(v["reason"].is_null());
        assert_eq!(truncate("héllo", 2), "h");
    }
}
