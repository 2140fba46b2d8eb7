//! The session cache's invalidation channel: Redis client-side caching in
//! broadcast mode (`CLIENT TRACKING on BCAST PREFIX ...` over RESP3), one
//! connection per server that holds session keys.
//!
//! Redis sends an invalidation for every change of a key under the tracked
//! prefixes, whatever the command (DEL, UNLINK, SET, COPY, RENAME, RESTORE,
//! MOVE, EXPIRE, expiry, eviction, scripts), and a flush message on FLUSHDB
//! and FLUSHALL, independently of `notify-keyspace-events`. The one change
//! it does not report is SWAPDB: a canary key, looked for every few
//! milliseconds, shows that the database under the cache was swapped.
//!
//! An invalidation evicts at once. Tracking reports TTL changes too
//! (express-session's `touch` on every request), so an evicted entry whose
//! value was fingerprinted when it was cached is read again (`DUMP`, `PTTL`)
//! and put back when the value is unchanged, its expiry capped by the new TTL.
//!
//! The channel's preconditions are probed: tracking still on (`CLIENT
//! TRACKINGINFO`), the server still a master (`ROLE`), a write to the canary
//! still reported, the masters unchanged. Any failure, or the connection
//! dropping, bypasses the cache until the channel is set up again.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, Mutex, Notify};

use crate::config::{BearerMode, KeyTemplate, Profile, RedisSettings, RedisTopology};
use crate::metrics::{self, CacheBypass, CacheFlush};
use crate::session::cache::{Current, Evicted, Fill, SessionCache};
use crate::session::topology;

/// How often tracking and the server's role are checked.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How often the Sentinels (or the cluster) are asked whether the masters moved.
const TOPOLOGY_EVERY: Duration = Duration::from_millis(500);
/// After a failover, how long the cache stays bypassed at least: the
/// request path's own connection moves to the new master on its own check
/// (every 0.5 s), and until it has, a lookup could read the old master's
/// data, which the new master's channel would never invalidate.
const SETTLE_AFTER_FAILOVER: Duration = Duration::from_secs(1);
/// How often the canary is written (and its invalidation expected back).
const CANARY_WRITE_EVERY: Duration = Duration::from_secs(1);
/// How often the canary is looked for: the delay before a SWAPDB empties the cache.
const CANARY_READ_EVERY: Duration = Duration::from_millis(5);
/// The canary outlives a gateway that stops without removing it by this much.
const CANARY_TTL_MS: u64 = 60_000;
/// A probe not answered within this bypasses the cache.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// Fills and evictions waiting for the channel; beyond this, fills go
/// without a fingerprint and evictions stay evictions.
const QUEUE: usize = 4096;
/// At most this many keys are read again in one batch.
const BATCH: usize = 256;

/// The key prefixes the invalidation channel of `redis` (`None`: `[redis]`)
/// watches and its cache may hold: the session and opaque bearer key
/// templates of the profiles kept there, and `[jwt] key` when the profile
/// with bearer JWTs is there; without any that another covers (Redis
/// refuses overlapping prefixes). Empty: every key.
pub fn prefixes(
    profiles: &[Profile],
    token_key: Option<&KeyTemplate>,
    redis: Option<&RedisSettings>,
) -> Vec<String> {
    let mut all = Vec::new();
    for profile in profiles.iter().filter(|p| p.redis.as_ref() == redis) {
        let session = &profile.session;
        all.push(session.key.prefix().to_owned());
        if let Some(bearer) = &session.bearer_key {
            all.push(bearer.prefix().to_owned());
        }
        if let (Some(token_key), BearerMode::Jwt) = (token_key, session.bearer) {
            all.push(token_key.prefix().to_owned());
        }
    }
    minimal(all)
}

/// `all` without the prefixes another one covers; empty when one is "".
fn minimal(mut all: Vec<String>) -> Vec<String> {
    all.sort_by_key(String::len);
    let mut out: Vec<String> = Vec::with_capacity(all.len());
    for prefix in all {
        if prefix.is_empty() {
            return Vec::new();
        }
        if !out.iter().any(|o| prefix.starts_with(o.as_str())) {
            out.push(prefix);
        }
    }
    out
}

/// Why the channel stopped: the cache is bypassed meanwhile.
#[derive(Debug)]
struct Down {
    reason: CacheBypass,
    detail: String,
}

impl Down {
    fn new(reason: CacheBypass, detail: impl Into<String>) -> Down {
        Down {
            reason,
            detail: detail.into(),
        }
    }
}

/// Runs the invalidation channel on its own thread for the life of the
/// process (nothing when the cache is off).
pub(crate) fn spawn(cache: Arc<SessionCache>, redis: RedisSettings) -> std::io::Result<()> {
    if !cache.enabled() {
        return Ok(());
    }
    let (fills_tx, fills_rx) = mpsc::channel(QUEUE);
    cache.announce_to(fills_tx);
    crate::background::spawn(
        "sessiongate-invalidator",
        "cache invalidator could not start; the cache stays bypassed",
        move || run_forever(cache, redis, Arc::new(Mutex::new(fills_rx))),
    )
}

async fn run_forever(
    cache: Arc<SessionCache>,
    redis: RedisSettings,
    fills: Arc<Mutex<mpsc::Receiver<Fill>>>,
) {
    let mut delay = Duration::from_millis(100);
    // Counted and logged once per outage, not once per reconnection attempt.
    let mut outage = false;
    loop {
        let mut live = false;
        let down = listen(&cache, &redis, &fills, &mut live).await;
        cache.set_live(false);
        if live {
            outage = false;
            delay = Duration::from_millis(100);
        }
        if outage {
            tracing::debug!(reason = down.reason.as_str(), detail = %down.detail, "cache invalidation channel still down");
        } else {
            metrics::cache_bypassed(down.reason);
            tracing::warn!(
                reason = down.reason.as_str(),
                detail = %down.detail,
                "session cache bypassed until its invalidation channel is back"
            );
            outage = true;
        }
        let wait = match down.reason {
            CacheBypass::Topology | CacheBypass::NotMaster => delay.max(SETTLE_AFTER_FAILOVER),
            _ => delay,
        };
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// One server's connection and what is known about it.
struct Node {
    name: String,
    conn: MultiplexedConnection,
    canary: Option<Arc<Canary>>,
}

/// A key only this gateway writes, under a tracked prefix: its invalidations
/// prove that the channel reports writes; its presence, that the database
/// was not swapped away.
struct Canary {
    key: String,
    /// Invalidations of the key seen.
    seen: AtomicU64,
    /// Flush messages seen (they explain a missing canary).
    flushes: AtomicU64,
    /// `flushes` when the canary was last written.
    flushes_at_write: AtomicU64,
}

/// What the push handler of one channel run shares with it.
struct Run {
    /// False once the run is over: a late message from its connections
    /// (their drivers end after it) must not touch the next run's cache state.
    active: AtomicBool,
    /// A connection of this run closed.
    closed: AtomicBool,
    lost: Notify,
}

/// Handles one push message, on the connection's driver, before any reply
/// that follows it on the wire is handed out.
fn on_push(
    cache: &SessionCache,
    run: &Run,
    canary: Option<&Canary>,
    evicted: &mpsc::Sender<Evicted>,
    info: PushInfo,
) {
    if !run.active.load(Ordering::Acquire) {
        return;
    }
    match info.kind {
        PushKind::Invalidate => match info.data.into_iter().next() {
            Some(Value::Array(keys)) => {
                for key in keys {
                    let key = match key {
                        Value::BulkString(bytes) => bytes,
                        Value::SimpleString(text) => text.into_bytes(),
                        _ => continue,
                    };
                    // Cached keys are text; another key cannot be one of them.
                    let Ok(key) = String::from_utf8(key) else {
                        continue;
                    };
                    if let Some(canary) = canary.filter(|c| c.key == key) {
                        canary.seen.fetch_add(1, Ordering::AcqRel);
                        continue;
                    }
                    if let Some(entry) = cache.evict(&key) {
                        let _ = evicted.try_send(entry);
                    }
                }
            }
            // A null invalidation: FLUSHDB or FLUSHALL.
            _ => {
                cache.flush();
                metrics::cache_flushed(CacheFlush::Flushed);
                if let Some(canary) = canary {
                    canary.flushes.fetch_add(1, Ordering::AcqRel);
                }
            }
        },
        PushKind::Disconnection => {
            // Changes from now on would go unheard: stop serving at once.
            cache.set_live(false);
            run.closed.store(true, Ordering::Release);
            run.lost.notify_one();
        }
        _ => {}
    }
}

/// Aborts a task when dropped (the run's worker ends with the run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets tracking up on every server, goes live, and watches the channel until
/// something about it fails; returns why.
async fn listen(
    cache: &Arc<SessionCache>,
    redis: &RedisSettings,
    fills: &Arc<Mutex<mpsc::Receiver<Fill>>>,
    live: &mut bool,
) -> Down {
    let run = Arc::new(Run {
        active: AtomicBool::new(true),
        closed: AtomicBool::new(false),
        lost: Notify::new(),
    });
    let down = watch(cache, redis, fills, &run, live).await;
    run.active.store(false, Ordering::Release);
    down
}

async fn watch(
    cache: &Arc<SessionCache>,
    redis: &RedisSettings,
    fills: &Arc<Mutex<mpsc::Receiver<Fill>>>,
    run: &Arc<Run>,
    live: &mut bool,
) -> Down {
    let clients = match topology::notification_nodes(redis).await {
        Ok(clients) => clients,
        Err(e) => return Down::new(CacheBypass::Disconnected, e),
    };
    let watched = topology::node_names(&clients);
    // No SWAPDB in a cluster (one database), and a canary there would have
    // to hash to each master's slots: its nodes go without one.
    let cluster = matches!(redis.topology, RedisTopology::Cluster { .. });
    let (evicted_tx, evicted_rx) = mpsc::channel(QUEUE);
    let run_id: u64 = rand::random();
    let mut nodes = Vec::with_capacity(clients.len());
    for (i, client) in clients.iter().enumerate() {
        let name = client.get_connection_info().addr().to_string();
        let canary = (!cluster).then(|| {
            Arc::new(Canary {
                key: format!("sessiongate:canary:{run_id:016x}:{i}"),
                seen: AtomicU64::new(0),
                flushes: AtomicU64::new(0),
                flushes_at_write: AtomicU64::new(0),
            })
        });
        match connect(cache, client, run, canary.clone(), &evicted_tx, redis).await {
            Ok(conn) => nodes.push(Node { name, conn, canary }),
            Err(e) => return failed(&name, &e),
        }
    }
    for node in &mut nodes {
        if let Err(down) = probe(node, true).await {
            return down;
        }
    }
    let _worker = AbortOnDrop(tokio::spawn(work(
        cache.clone(),
        nodes.iter().map(|n| n.conn.clone()).collect(),
        fills.clone(),
        evicted_rx,
    )));
    // A connection that closed while the others were set up must not see
    // the cache go live, even for an instant.
    if run.closed.load(Ordering::Acquire) {
        return Down::new(CacheBypass::Disconnected, "a tracking connection closed");
    }
    cache.set_live(true);
    *live = true;
    tracing::info!(nodes = ?watched, "session cache live: redis reports every change of its keys");

    let standalone = redis.topology == RedisTopology::Standalone;
    let mut probes = tokio::time::interval(PROBE_EVERY);
    probes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reads = tokio::time::interval(CANARY_READ_EVERY);
    reads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_write = Instant::now();
    let mut last_topology = Instant::now();
    loop {
        tokio::select! {
            _ = run.lost.notified() => {
                return Down::new(CacheBypass::Disconnected, "the tracking connection closed");
            }
            _ = reads.tick(), if !cluster => {
                for node in &mut nodes {
                    if let Err(down) = check_canary(cache, node).await {
                        return down;
                    }
                }
            }
            _ = probes.tick() => {
                metrics::set_cache_entries(cache.entry_count());
                let write = last_write.elapsed() >= CANARY_WRITE_EVERY;
                for node in &mut nodes {
                    if let Err(down) = probe(node, write).await {
                        return down;
                    }
                }
                if write {
                    last_write = Instant::now();
                }
                // A failover or resharding moves keys to servers we do not
                // hear: look again (an unreachable Sentinel changes nothing;
                // a demoted master is caught by ROLE).
                if !standalone && last_topology.elapsed() >= TOPOLOGY_EVERY {
                    last_topology = Instant::now();
                    if let Ok(now) = topology::notification_nodes(redis).await {
                        let now = topology::node_names(&now);
                        if now != watched {
                            return Down::new(
                                CacheBypass::Topology,
                                format!("the masters moved from {watched:?} to {now:?}"),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// A RESP3 connection to `client`'s server whose pushes go to `on_push`,
/// with tracking turned on for the cache's prefixes (and the canary).
async fn connect(
    cache: &Arc<SessionCache>,
    client: &redis::Client,
    run: &Arc<Run>,
    canary: Option<Arc<Canary>>,
    evicted: &mpsc::Sender<Evicted>,
    redis: &RedisSettings,
) -> RedisResult<MultiplexedConnection> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let handler = {
        let (cache, run, canary, evicted) =
            (cache.clone(), run.clone(), canary.clone(), evicted.clone());
        move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            on_push(&cache, &run, canary.as_deref(), &evicted, info);
            Ok(())
        }
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(redis.connect_timeout.max(ANSWER_WITHIN)))
        .set_response_timeout(Some(ANSWER_WITHIN))
        .set_push_sender(handler);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut tracking = redis::cmd("CLIENT");
    tracking.arg("TRACKING").arg("on").arg("BCAST");
    for prefix in tracked(cache, canary.as_deref()) {
        tracking.arg("PREFIX").arg(prefix);
    }
    tracking.query_async::<()>(&mut conn).await?;
    Ok(conn)
}

/// The prefixes to track: the cache's, and the canary's key unless one of
/// them covers it; none (every key) when the cache watches every key.
fn tracked(cache: &SessionCache, canary: Option<&Canary>) -> Vec<String> {
    let mut all = cache.watched_prefixes().to_vec();
    if all.is_empty() {
        return all;
    }
    if let Some(canary) = canary {
        all.push(canary.key.clone());
    }
    minimal(all)
}

/// Checks the channel's preconditions on one server: tracking on in
/// broadcast mode, the server a master and, with `write`, that a write of
/// the canary comes back as an invalidation.
async fn probe(node: &mut Node, write: bool) -> Result<(), Down> {
    let name = node.name.clone();
    let answer = |e: redis::RedisError| failed(&name, &e);
    let mut pipe = redis::pipe();
    pipe.cmd("CLIENT").arg("TRACKINGINFO").cmd("ROLE");
    let (info, role): (Value, Value) = within(pipe.query_async(&mut node.conn))
        .await
        .map_err(answer)?;
    if !tracking_on(&info) {
        return Err(Down::new(
            CacheBypass::TrackingOff,
            format!("{}: CLIENT TRACKINGINFO says {info:?}", node.name),
        ));
    }
    if !is_master(&role) {
        return Err(Down::new(
            CacheBypass::NotMaster,
            format!("{} is no longer a master", node.name),
        ));
    }
    let Some(canary) = node.canary.clone() else {
        return Ok(());
    };
    if !write {
        return Ok(());
    }
    let seen = canary.seen.load(Ordering::Acquire);
    canary
        .flushes_at_write
        .store(canary.flushes.load(Ordering::Acquire), Ordering::Release);
    let token = rand::random::<u64>().max(1);
    let set = redis::cmd("SET")
        .arg(&canary.key)
        .arg(token)
        .arg("PX")
        .arg(CANARY_TTL_MS)
        .clone();
    within(set.query_async::<()>(&mut node.conn))
        .await
        .map_err(answer)?;
    barrier(&mut node.conn).await.map_err(answer)?;
    if canary.seen.load(Ordering::Acquire) == seen {
        return Err(Down::new(
            CacheBypass::CanarySilent,
            format!("{}: a write of the canary was not reported", node.name),
        ));
    }
    Ok(())
}

/// Looks for the canary: its absence means the database under the cache was
/// swapped (SWAPDB) or emptied; every entry goes, and a new canary is
/// written. (EXISTS, not GET: the canary's reads stay apart from the
/// sessions' in Redis's command statistics.)
async fn check_canary(cache: &SessionCache, node: &mut Node) -> Result<(), Down> {
    let Some(canary) = node.canary.clone() else {
        return Ok(());
    };
    let present: bool = within(
        redis::cmd("EXISTS")
            .arg(&canary.key)
            .query_async(&mut node.conn),
    )
    .await
    .map_err(|e| failed(&node.name, &e))?;
    if present {
        return Ok(());
    }
    // Whatever took it, the database may not be the one the entries came from.
    cache.flush();
    if canary.flushes.load(Ordering::Acquire) == canary.flushes_at_write.load(Ordering::Acquire) {
        metrics::cache_flushed(CacheFlush::DatabaseChanged);
        tracing::warn!(
            node = %node.name,
            "the database under the session cache changed without a flush message (SWAPDB?); cache emptied"
        );
    }
    probe(node, true).await
}

/// Why a command of the channel failed: no answer, a refusal (ACL, OOM,
/// read-only: the server answered with an error), or the connection.
fn failed(node: &str, e: &redis::RedisError) -> Down {
    let reason = if e.is_timeout() {
        CacheBypass::Unanswered
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        CacheBypass::Disconnected
    } else {
        CacheBypass::Refused
    };
    Down::new(reason, format!("{node}: {e}"))
}

/// A round trip after a reply: Redis sends broadcast invalidations at the
/// end of the event loop iteration that made them, so those of any change
/// made before (or along with) the command just answered arrive before this
/// one's reply, and have been handled when it returns.
async fn barrier(conn: &mut MultiplexedConnection) -> RedisResult<()> {
    within(redis::cmd("PING").query_async::<()>(conn)).await
}

async fn within<T>(f: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
    match tokio::time::timeout(ANSWER_WITHIN, f).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer from redis",
        ))),
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// Whether `CLIENT TRACKINGINFO` says tracking is on in broadcast mode.
fn tracking_on(info: &Value) -> bool {
    let fields: Vec<(&Value, &Value)> = match info {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        Value::Array(items) => items
            .chunks_exact(2)
            .map(|pair| (&pair[0], &pair[1]))
            .collect(),
        _ => return false,
    };
    let Some((_, flags)) = fields.iter().find(|(k, _)| text(k) == Some("flags")) else {
        return false;
    };
    let flags: Vec<&str> = match flags {
        Value::Set(items) | Value::Array(items) => items.iter().filter_map(text).collect(),
        _ => return false,
    };
    flags.contains(&"on") && flags.contains(&"bcast") && !flags.contains(&"broken_redirect")
}

/// Whether `ROLE` says master.
fn is_master(role: &Value) -> bool {
    matches!(role, Value::Array(items) if items.first().and_then(text) == Some("master"))
}

/// Reads fills and evictions and asks Redis about their keys: fills get the
/// fingerprint of the value they were read from, evicted entries whose value
/// is unchanged are put back.
async fn work(
    cache: Arc<SessionCache>,
    mut nodes: Vec<MultiplexedConnection>,
    fills: Arc<Mutex<mpsc::Receiver<Fill>>>,
    mut evicted: mpsc::Receiver<Evicted>,
) {
    let mut fills = fills.lock().await;
    // Fills queued while the channel was down were never served from this run.
    while fills.try_recv().is_ok() {}
    loop {
        tokio::select! {
            first = evicted.recv() => {
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match evicted.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let keys: Vec<String> = batch.iter().map(|e| e.key.clone()).collect();
                let current = read_all(&cache, &mut nodes, &keys).await;
                for (entry, current) in batch.into_iter().zip(current) {
                    if cache.restore(entry, current) {
                        metrics::cache_restored();
                    } else {
                        tracing::debug!(?current, "an invalidated cache entry stays evicted");
                    }
                }
            }
            first = fills.recv() => {
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while batch.len() < BATCH {
                    match fills.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                let keys: Vec<String> = batch.iter().map(|f| f.key.clone()).collect();
                let current = read_all(&cache, &mut nodes, &keys).await;
                for (fill, current) in batch.iter().zip(current) {
                    match current {
                        Current::Value { fingerprint, .. } => cache.fingerprinted(fill, fingerprint),
                        _ => tracing::debug!(?current, "a cache fill could not be fingerprinted"),
                    }
                }
            }
        }
    }
}

/// What each key holds now, read after every invalidation that preceded the
/// read was handled (see `barrier`); `Unknown` for a key that could not be read.
async fn read_all(
    cache: &SessionCache,
    nodes: &mut [MultiplexedConnection],
    keys: &[String],
) -> Vec<Current> {
    let mut current = vec![Current::Unknown; keys.len()];
    // Each key lives on one node; the others answer MOVED (cluster).
    let mut answered = vec![false; nodes.len()];
    for (n, conn) in nodes.iter_mut().enumerate() {
        let reads = keys.iter().map(|key| {
            let mut conn = conn.clone();
            async move {
                let mut pipe = redis::pipe();
                pipe.cmd("DUMP").arg(key).cmd("PTTL").arg(key);
                within(pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut conn)).await
            }
        });
        let results = futures_util::future::join_all(reads).await;
        for (slot, result) in current.iter_mut().zip(results) {
            if let Ok((dump, pttl)) = result {
                answered[n] = true;
                *slot = match dump {
                    Some(dump) if pttl != -2 => Current::Value {
                        fingerprint: cache.fingerprint_of(&dump),
                        pttl_ms: u64::try_from(pttl).ok(),
                    },
                    _ => Current::Gone,
                };
            }
        }
    }
    for (n, conn) in nodes.iter_mut().enumerate() {
        if answered[n] && barrier(conn).await.is_err() {
            return vec![Current::Unknown; keys.len()];
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covered_prefixes_are_dropped_and_an_empty_one_means_every_key() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            minimal(v(&["sess:", "sess:api:", "tok:"])),
            v(&["tok:", "sess:"])
        );
        assert_eq!(minimal(v(&["sess:", "sess:"])), v(&["sess:"]));
        assert!(minimal(v(&["sess:", ""])).is_empty());
    }

    #[test]
    fn trackinginfo_and_role_are_read() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let info = |flags: &[&str]| {
            Value::Map(vec![
                (
                    bulk("flags"),
                    Value::Set(flags.iter().map(|f| bulk(f)).collect()),
                ),
                (bulk("redirect"), Value::Int(0)),
            ])
        };
        assert!(tracking_on(&info(&["on", "bcast"])));
        assert!(!tracking_on(&info(&["off"])));
        assert!(!tracking_on(&info(&["on"])));
        assert!(!tracking_on(&info(&["on", "bcast", "broken_redirect"])));
        assert!(is_master(&Value::Array(vec![
            bulk("master"),
            Value::Int(0)
        ])));
        assert!(!is_master(&Value::Array(vec![bulk("slave")])));
    }
}
