//! Prometheus metrics: one process-wide registry, served as text by the admin
//! listener. Labels are bounded (route and upstream names, enums); the handles
//! a request needs are resolved when a pipeline is built, not per request.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::Config;
use crate::labels::{Decision, LookupResult, LookupSource};

/// Request latencies: from 0.5 ms (a rejection) to 10 s (a slow upstream).
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Redis round trips: from 100 µs to 1 s.
const STORE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Every `Decision`, in the order of `decision_index`.
const DECISIONS: [Decision; 10] = [
    Decision::Forwarded,
    Decision::Public,
    Decision::Unauthenticated,
    Decision::Forbidden,
    Decision::StoreError,
    Decision::Invalid,
    Decision::LoggedOut,
    Decision::RateLimited,
    Decision::WouldDeny,
    Decision::Redirected,
];

fn decision_index(decision: Decision) -> usize {
    match decision {
        Decision::Forwarded => 0,
        Decision::Public => 1,
        Decision::Unauthenticated => 2,
        Decision::Forbidden => 3,
        Decision::StoreError => 4,
        Decision::Invalid => 5,
        Decision::LoggedOut => 6,
        Decision::RateLimited => 7,
        Decision::WouldDeny => 8,
        Decision::Redirected => 9,
    }
}

/// The `route` label of requests refused before a route matched.
pub const NO_ROUTE: &str = "-";

/// A Redis operation, for `sessiongate_store_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Fetch,
    Ping,
}

impl StoreOp {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreOp::Fetch => "fetch",
            StoreOp::Ping => "ping",
        }
    }
}

/// Why the session cache was bypassed, for `sessiongate_cache_bypassed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheBypass {
    /// The tracking connection could not be made or closed (killed, Redis down).
    Disconnected,
    /// `CLIENT TRACKINGINFO` no longer shows broadcast tracking on.
    TrackingOff,
    /// The server the channel listens to is no longer a master.
    NotMaster,
    /// A probe went unanswered for a second.
    Unanswered,
    /// A write of the canary key came back without an invalidation.
    CanarySilent,
    /// The masters changed (failover, resharding).
    Topology,
    /// Redis answered a command of the channel with an error (ACL, OOM, read-only).
    Refused,
}

impl CacheBypass {
    const ALL: [CacheBypass; 7] = [
        CacheBypass::Disconnected,
        CacheBypass::TrackingOff,
        CacheBypass::NotMaster,
        CacheBypass::Unanswered,
        CacheBypass::CanarySilent,
        CacheBypass::Topology,
        CacheBypass::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheBypass::Disconnected => "disconnected",
            CacheBypass::TrackingOff => "tracking_off",
            CacheBypass::NotMaster => "not_master",
            CacheBypass::Unanswered => "unanswered",
            CacheBypass::CanarySilent => "canary_silent",
            CacheBypass::Topology => "topology_changed",
            CacheBypass::Refused => "refused",
        }
    }
}

/// Why every cache entry was dropped at once, for `sessiongate_cache_flushes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheFlush {
    /// Redis sent a flush message (FLUSHDB, FLUSHALL).
    Flushed,
    /// The canary read back wrong: the database was swapped (SWAPDB) or emptied.
    DatabaseChanged,
}

impl CacheFlush {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheFlush::Flushed => "flush",
            CacheFlush::DatabaseChanged => "database_changed",
        }
    }
}

/// How an upstream answered, for `sessiongate_upstream_responses_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamClass {
    /// 1xx (e.g. 101 Switching Protocols) and 2xx.
    Success,
    Redirect,
    ClientError,
    ServerError,
    /// No response: refused, reset, timed out.
    Error,
}

impl UpstreamClass {
    pub fn from_status(status: u16) -> UpstreamClass {
        match status {
            300..=399 => UpstreamClass::Redirect,
            400..=499 => UpstreamClass::ClientError,
            500..=599 => UpstreamClass::ServerError,
            _ => UpstreamClass::Success,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamClass::Success => "2xx",
            UpstreamClass::Redirect => "3xx",
            UpstreamClass::ClientError => "4xx",
            UpstreamClass::ServerError => "5xx",
            UpstreamClass::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const CLASSES: [UpstreamClass; 5] = [
    UpstreamClass::Success,
    UpstreamClass::Redirect,
    UpstreamClass::ClientError,
    UpstreamClass::ServerError,
    UpstreamClass::Error,
];

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    /// `[source][result]`, pre-resolved.
    lookups: [[IntCounter; 3]; 3],
    store_duration: [Histogram; 2],
    cache_entries: IntGauge,
    cache_invalidations: IntCounter,
    upstream_responses: IntCounterVec,
    upstream_duration: HistogramVec,
    reloads_ok: IntCounter,
    reloads_error: IntCounter,
    last_reload_success: Gauge,
    tls_expiry: IntGaugeVec,
    live_exchanges: IntGaugeVec,
    live_closed: IntCounterVec,
    acme_orders: IntCounterVec,
    access_log_dropped: IntCounter,
    /// `[per_ip, total]`
    connections_refused: [IntCounter; 2],
    open_connections: IntGauge,
    head_timeouts: IntCounter,
    h2_streams_refused: IntCounterVec,
    h2_connections_closed: IntCounterVec,
    /// `[bad_request, head_too_large]`
    bad_requests: [IntCounter; 2],
    auth_failures: IntCounterVec,
    would_deny: IntCounterVec,
    /// By `CacheBypass as usize`.
    cache_bypassed: [IntCounter; 7],
    /// `[flush, database_changed]`
    cache_flushes: [IntCounter; 2],
    cache_restored: IntCounter,
}

/// A built-in metric definition. Names, help texts and labels are constants
/// checked by the unit tests, so this cannot fail at run time.
fn defined<T>(metric: prometheus::Result<T>) -> T {
    metric.unwrap_or_else(|e| panic!("sessiongate: invalid built-in metric definition: {e}"))
}

/// Builds and registers every metric.
fn build() -> Metrics {
    let registry = Registry::new();
    let reg = |c: Box<dyn prometheus::core::Collector>| {
        if let Err(e) = registry.register(c) {
            tracing::error!(error = %e, "could not register a metric");
        }
    };
    let counter_vec = |name: &str, help: &str, labels: &[&str]| {
        let v = defined(IntCounterVec::new(Opts::new(name, help), labels));
        reg(Box::new(v.clone()));
        v
    };
    let histogram_vec = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        let v = defined(HistogramVec::new(opts, labels));
        reg(Box::new(v.clone()));
        v
    };

    let requests = counter_vec(
        "sessiongate_requests_total",
        "Requests by route and decision (forwarded, public, unauthenticated, forbidden, store_error, invalid, logged_out, rate_limited, would_deny).",
        &["route", "decision"],
    );
    let request_duration = histogram_vec(
        "sessiongate_request_duration_seconds",
        "Time from the request head to the end of the response, by route.",
        &["route"],
        REQUEST_BUCKETS,
    );
    let auth_failures = counter_vec(
        "sessiongate_auth_failures_total",
        "Requests refused with 401, by reason (no_credential, bad_signature, unknown_session, unreadable, anonymous, expired, revoked, claim_mismatch).",
        &["reason"],
    );
    let would_deny = counter_vec(
        "sessiongate_would_deny_total",
        "Requests a mode = \"report\" route forwarded that enforcement would have refused, by route and reason.",
        &["route", "reason"],
    );
    let lookups_vec = counter_vec(
        "sessiongate_session_lookups_total",
        "Session lookups by source (cache, redis, stale) and result (hit, miss, error).",
        &["source", "result"],
    );
    let lookups = ["cache", "redis", "stale"].map(|source| {
        ["hit", "miss", "error"].map(|result| lookups_vec.with_label_values(&[source, result]))
    });
    let store_vec = histogram_vec(
        "sessiongate_store_duration_seconds",
        "Redis round trips by operation (fetch, ping), errors and timeouts included.",
        &["op"],
        STORE_BUCKETS,
    );
    let store_duration =
        [StoreOp::Fetch, StoreOp::Ping].map(|op| store_vec.with_label_values(&[op.as_str()]));
    let cache_entries = defined(IntGauge::new(
        "sessiongate_cache_entries",
        "Entries in the session cache (positive and negative).",
    ));
    reg(Box::new(cache_entries.clone()));
    let cache_invalidations = defined(IntCounter::new(
        "sessiongate_cache_invalidations_total",
        "Cache entries evicted because their Redis key changed or ended.",
    ));
    reg(Box::new(cache_invalidations.clone()));
    let upstream_responses = counter_vec(
        "sessiongate_upstream_responses_total",
        "Upstream answers by upstream and class (2xx, 3xx, 4xx, 5xx, error).",
        &["upstream", "class"],
    );
    let upstream_duration = histogram_vec(
        "sessiongate_upstream_duration_seconds",
        "Time from choosing the upstream to its response header (or failure).",
        &["upstream"],
        REQUEST_BUCKETS,
    );
    let reloads = counter_vec(
        "sessiongate_config_reloads_total",
        "Configuration reloads (SIGHUP) by result (ok, error).",
        &["result"],
    );
    let last_reload_success = defined(Gauge::new(
        "sessiongate_config_last_reload_success_timestamp_seconds",
        "Unix time the running configuration was loaded (at start or by the last good reload).",
    ));
    reg(Box::new(last_reload_success.clone()));
    let tls_expiry = defined(IntGaugeVec::new(
        Opts::new(
            "sessiongate_tls_certificate_expiry_seconds",
            "Unix time a served TLS certificate stops being valid (its notAfter), by its DNS names; alert on this minus time().",
        ),
        &["name"],
    ));
    reg(Box::new(tls_expiry.clone()));
    let live_exchanges = defined(IntGaugeVec::new(
        Opts::new(
            "sessiongate_live_exchanges",
            "Live exchanges tied to the session that admitted them, by kind (upgrade: WebSocket and other 101s; stream: text/event-stream; poll: a response of no announced length streaming past live_after).",
        ),
        &["kind"],
    ));
    reg(Box::new(live_exchanges.clone()));
    let live_closed = counter_vec(
        "sessiongate_live_closed_total",
        "Live exchanges the gateway ended (revoked: the key is gone or no longer a session; expired; role_changed: it no longer has what the route demands; max_lifetime; channel_lost: [cache] max_unverified passed with the invalidation channel down).",
        &["reason"],
    );
    // Exported from the start, so that dashboards and alerts see zeros.
    for kind in ["upgrade", "stream", "poll"] {
        live_exchanges.with_label_values(&[kind]).set(0);
    }
    for reason in [
        "revoked",
        "expired",
        "role_changed",
        "max_lifetime",
        "channel_lost",
    ] {
        live_closed.with_label_values(&[reason]);
    }
    let acme_orders = counter_vec(
        "sessiongate_acme_orders_total",
        "ACME certificate orders, by result (issued, failed).",
        &["result"],
    );
    for result in ["issued", "failed"] {
        acme_orders.with_label_values(&[result]);
    }
    let build_info = defined(IntGaugeVec::new(
        Opts::new(
            "sessiongate_build_info",
            "Always 1; the version label is the running sessiongate version.",
        ),
        &["version"],
    ));
    reg(Box::new(build_info.clone()));
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    let access_log_dropped = defined(IntCounter::new(
        "sessiongate_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind.",
    ));
    reg(Box::new(access_log_dropped.clone()));

    let refused = counter_vec(
        "sessiongate_connections_refused_total",
        "Client connections closed at accept because a limit was reached (per_ip: max_connections_per_ip, total: max_connections).",
        &["reason"],
    );
    let open_connections = defined(IntGauge::new(
        "sessiongate_open_connections",
        "Client connections open on the public listener.",
    ));
    reg(Box::new(open_connections.clone()));
    let head_timeouts = defined(IntCounter::new(
        "sessiongate_request_head_timeouts_total",
        "Connections closed because a request head did not arrive whole within request_head_timeout.",
    ));
    reg(Box::new(head_timeouts.clone()));
    let h2_streams_refused = counter_vec(
        "sessiongate_h2_streams_refused_total",
        "HTTP/2 streams refused (in_flight: h2_max_concurrent_streams requests in flight on the connection; per_ip: max_streams_per_ip) or reset at h2_request_timeout (deadline).",
        &["reason"],
    );
    let h2_connections_closed = counter_vec(
        "sessiongate_h2_connections_closed_total",
        "HTTP/2 connections closed with ENHANCE_YOUR_CALM (in_flight: kept opening streams past the bound; malformed: too many malformed streams).",
        &["reason"],
    );
    let bad = counter_vec(
        "sessiongate_bad_requests_total",
        "Request heads refused before the pipeline saw them (bad_request: the HTTP parser refused the head; head_too_large: over max_request_header_bytes).",
        &["reason"],
    );

    let bypassed = counter_vec(
        "sessiongate_cache_bypassed_total",
        "Times the session cache stopped serving because its invalidation channel could not be trusted, by reason (disconnected, tracking_off, not_master, unanswered, canary_silent, topology_changed, refused).",
        &["reason"],
    );
    let flushes = counter_vec(
        "sessiongate_cache_flushes_total",
        "Times every cache entry was dropped at once, by reason (flush: FLUSHDB/FLUSHALL; database_changed: the canary key read back wrong, e.g. SWAPDB).",
        &["reason"],
    );
    let cache_restored = defined(IntCounter::new(
        "sessiongate_cache_restored_total",
        "Cache entries put back after an invalidation that left their key's value unchanged (a TTL change such as express-session's touch).",
    ));
    reg(Box::new(cache_restored.clone()));

    Metrics {
        cache_bypassed: CacheBypass::ALL.map(|r| bypassed.with_label_values(&[r.as_str()])),
        cache_flushes: [CacheFlush::Flushed, CacheFlush::DatabaseChanged]
            .map(|r| flushes.with_label_values(&[r.as_str()])),
        cache_restored,
        connections_refused: ["per_ip", "total"].map(|r| refused.with_label_values(&[r])),
        open_connections,
        head_timeouts,
        h2_streams_refused,
        h2_connections_closed,
        bad_requests: ["bad_request", "head_too_large"].map(|r| bad.with_label_values(&[r])),
        reloads_ok: reloads.with_label_values(&["ok"]),
        reloads_error: reloads.with_label_values(&["error"]),
        registry,
        requests,
        request_duration,
        lookups,
        store_duration,
        cache_entries,
        cache_invalidations,
        upstream_responses,
        upstream_duration,
        last_reload_success,
        tls_expiry,
        live_exchanges,
        live_closed,
        acme_orders,
        access_log_dropped,
        auth_failures,
        would_deny,
    }
}

/// Counts a 401 by its reason (`AuthFailure::as_str`).
pub fn auth_failure(reason: crate::reject::AuthFailure) {
    METRICS
        .auth_failures
        .with_label_values(&[reason.as_str()])
        .inc();
}

/// Counts a request a report-mode route forwarded that enforcement would
/// have refused, by its route name and reason code (both bounded).
pub fn would_deny(route: &str, reason: &'static str) {
    METRICS.would_deny.with_label_values(&[route, reason]).inc();
}

static METRICS: LazyLock<Metrics> = LazyLock::new(build);

/// The text exposition of every metric (`/metrics`).
pub fn render() -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    out
}

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counts one session lookup; the cache calls it with `LookupSource::Cache`,
/// the Redis store with `LookupSource::Redis`.
pub fn session_lookup(source: LookupSource, result: LookupResult) {
    let s = match source {
        LookupSource::Cache => 0,
        LookupSource::Redis => 1,
        LookupSource::Stale => 2,
    };
    let r = match result {
        LookupResult::Hit => 0,
        LookupResult::Miss => 1,
        LookupResult::Error => 2,
    };
    METRICS.lookups[s][r].inc();
}

/// Records how long one Redis operation took.
pub fn store_duration(op: StoreOp, elapsed: Duration) {
    let i = match op {
        StoreOp::Fetch => 0,
        StoreOp::Ping => 1,
    };
    METRICS.store_duration[i].observe(elapsed.as_secs_f64());
}

/// Sets `sessiongate_cache_entries`.
pub fn set_cache_entries(entries: u64) {
    METRICS
        .cache_entries
        .set(i64::try_from(entries).unwrap_or(i64::MAX));
}

/// Adds `n` to `sessiongate_cache_invalidations_total`.
pub fn cache_invalidations(n: u64) {
    METRICS.cache_invalidations.inc_by(n);
}

/// Counts one time the session cache was bypassed (once per outage of its channel).
pub fn cache_bypassed(reason: CacheBypass) {
    METRICS.cache_bypassed[reason as usize].inc();
}

/// Counts one time every cache entry was dropped at once.
pub fn cache_flushed(reason: CacheFlush) {
    METRICS.cache_flushes[reason as usize].inc();
}

/// Counts one cache entry put back after an invalidation left its value unchanged.
pub fn cache_restored() {
    METRICS.cache_restored.inc();
}

/// Counts one configuration reload; a good one also sets the last-success time.
pub fn config_reload(ok: bool) {
    if ok {
        METRICS.reloads_ok.inc();
        config_loaded();
    } else {
        METRICS.reloads_error.inc();
    }
}

/// Records the certificates now served: one series per DNS name (a name no
/// longer served is dropped).
pub fn tls_certificates(certs: &[(Vec<String>, SystemTime)]) {
    METRICS.tls_expiry.reset();
    for (names, not_after) in certs {
        let at = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        for name in names {
            METRICS.tls_expiry.with_label_values(&[name]).set(at);
        }
    }
}

/// Records that the running configuration was loaded now (at start).
pub fn config_loaded() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    METRICS.last_reload_success.set(now);
}

/// Counts one access log line that could not be written.
pub fn access_log_dropped() {
    METRICS.access_log_dropped.inc();
}

pub fn access_log_dropped_n(lines: usize) {
    METRICS.access_log_dropped.inc_by(lines as u64);
}

/// Counts one client connection refused at accept (`per_ip` or over the total).
pub fn connection_refused(per_ip: bool) {
    METRICS.connections_refused[usize::from(!per_ip)].inc();
}

/// Tracks the number of open client connections.
pub fn connection_opened() {
    METRICS.open_connections.inc();
}

pub fn connection_closed() {
    METRICS.open_connections.dec();
}

/// Counts one connection closed for a request head that came too slowly.
pub fn head_timeout() {
    METRICS.head_timeouts.inc();
}

/// Counts an HTTP/2 stream refused (`in_flight`, `per_ip`) or reset at its
/// deadline (`deadline`).
pub fn h2_stream_refused(reason: &'static str) {
    METRICS
        .h2_streams_refused
        .with_label_values(&[reason])
        .inc();
}

/// A live exchange started (`delta` 1) or ended (-1).
pub fn live_exchange(kind: &'static str, delta: i64) {
    METRICS.live_exchanges.with_label_values(&[kind]).add(delta);
}

/// An ACME order ended (`issued`, `failed`).
pub fn acme_order(result: &'static str) {
    METRICS.acme_orders.with_label_values(&[result]).inc();
}

/// A live exchange was ended by the gateway for `reason`.
pub fn live_closed(reason: &'static str) {
    METRICS.live_closed.with_label_values(&[reason]).inc();
}

/// Counts an HTTP/2 connection closed for abuse (`in_flight`, `malformed`).
pub fn h2_connection_closed(reason: &'static str) {
    METRICS
        .h2_connections_closed
        .with_label_values(&[reason])
        .inc();
}

/// Why a request head was refused before the pipeline saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRequest {
    /// The HTTP parser refused it (bad framing, invalid head).
    Invalid,
    /// Request line and headers over `max_request_header_bytes`.
    TooLarge,
}

impl BadRequest {
    pub fn as_str(self) -> &'static str {
        match self {
            BadRequest::Invalid => "bad_request",
            BadRequest::TooLarge => "head_too_large",
        }
    }
}

/// Counts one request head refused before the pipeline saw it.
pub fn bad_request(kind: BadRequest) {
    METRICS.bad_requests[kind as usize].inc();
}

struct RouteHandles {
    requests: [IntCounter; DECISIONS.len()],
    duration: Histogram,
}

impl RouteHandles {
    fn new(route: &str) -> RouteHandles {
        let m = &*METRICS;
        RouteHandles {
            requests: DECISIONS.map(|d| m.requests.with_label_values(&[route, d.as_str()])),
            duration: m.request_duration.with_label_values(&[route]),
        }
    }
}

struct UpstreamHandles {
    responses: [IntCounter; 5],
    duration: Histogram,
}

/// The label handles one pipeline's requests use, resolved when it is built:
/// recording a request is two atomic adds, with no lookup by name.
pub struct PipelineMetrics {
    routes: Vec<RouteHandles>,
    no_route: RouteHandles,
    upstreams: Vec<UpstreamHandles>,
}

impl PipelineMetrics {
    pub fn new(config: &Config) -> PipelineMetrics {
        let m = &*METRICS;
        PipelineMetrics {
            routes: config
                .routes
                .iter()
                .map(|r| RouteHandles::new(&r.name))
                .collect(),
            no_route: RouteHandles::new(NO_ROUTE),
            upstreams: config
                .upstreams
                .iter()
                .map(|u| UpstreamHandles {
                    responses: CLASSES.map(|c| {
                        m.upstream_responses
                            .with_label_values(&[u.name.as_str(), c.as_str()])
                    }),
                    duration: m.upstream_duration.with_label_values(&[u.name.as_str()]),
                })
                .collect(),
        }
    }

    /// Counts one finished request of `route` (an index into the config's routes).
    pub fn request(&self, route: Option<usize>, decision: Decision, elapsed: Duration) {
        let handles = route
            .and_then(|r| self.routes.get(r))
            .unwrap_or(&self.no_route);
        handles.requests[decision_index(decision)].inc();
        handles.duration.observe(elapsed.as_secs_f64());
    }

    /// Counts one upstream answer (or failure) of `upstream` (an index into
    /// the config's upstreams).
    pub fn upstream(&self, upstream: usize, class: UpstreamClass, elapsed: Duration) {
        if let Some(handles) = self.upstreams.get(upstream) {
            handles.responses[class.index()].inc();
            handles.duration.observe(elapsed.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_metrics_render_every_family() {
        session_lookup(LookupSource::Redis, LookupResult::Miss);
        store_duration(StoreOp::Ping, Duration::from_millis(1));
        config_reload(false);
        let text = String::from_utf8(render()).unwrap();
        for name in [
            "sessiongate_session_lookups_total{result=\"miss\",source=\"redis\"}",
            "sessiongate_store_duration_seconds_bucket{op=\"ping\"",
            "sessiongate_config_reloads_total{result=\"error\"}",
            "sessiongate_config_reloads_total{result=\"ok\"}",
            "sessiongate_cache_entries",
            "sessiongate_cache_invalidations_total",
            "sessiongate_build_info{version=\"",
            "sessiongate_access_log_dropped_total",
            "sessiongate_connections_refused_total{reason=\"per_ip\"}",
            "sessiongate_connections_refused_total{reason=\"total\"}",
            "sessiongate_open_connections",
            "sessiongate_request_head_timeouts_total",
            "sessiongate_bad_requests_total{reason=\"bad_request\"}",
            "sessiongate_bad_requests_total{reason=\"head_too_large\"}",
            "sessiongate_cache_bypassed_total{reason=\"tracking_off\"}",
            "sessiongate_cache_flushes_total{reason=\"database_changed\"}",
            "sessiongate_cache_restored_total",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }

    #[test]
    fn admin_upstream_classes() {
        assert_eq!(UpstreamClass::from_status(101).as_str(), "2xx");
        assert_eq!(UpstreamClass::from_status(204).as_str(), "2xx");
        assert_eq!(UpstreamClass::from_status(302).as_str(), "3xx");
        assert_eq!(UpstreamClass::from_status(404).as_str(), "4xx");
        assert_eq!(UpstreamClass::from_status(503).as_str(), "5xx");
        for (i, c) in CLASSES.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        for (i, d) in DECISIONS.iter().enumerate() {
            assert_eq!(decision_index(*d), i);
        }
    }
}
