//! The session cache: resolved sessions kept in process until the earlier of
//! their Redis TTL and `max_age`, evicted within milliseconds when any client
//! deletes, overwrites or expires their key (Redis keyspace notifications).
//! While the notification channel is down the cache is bypassed, never trusted.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::{HeaderName, HeaderValue};
use moka::future::Cache;
use moka::Expiry;

use crate::config::CacheSettings;
use crate::metrics::{self, LookupResult};
use crate::reject::AuthFailure;
use crate::session::StoreError;

/// What the request path needs from a valid session, extracted once: the
/// identity headers, the role values and the user. Much smaller than the
/// session document, so 100k of them fit in a few tens of MB.
#[derive(Debug)]
pub struct Principal {
    pub identity: Vec<(HeaderName, HeaderValue)>,
    pub roles: Vec<String>,
    pub user: Option<String>,
    /// When the key expires in Redis, in ms since the cache's clock base; `u64::MAX`: never.
    expires_at_ms: AtomicU64,
}

/// A lookup's result as cached: a principal, or a known-invalid id.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<Principal>),
    Invalid(AuthFailure),
}

/// Where a lookup was answered (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupSource {
    Cache,
    Redis,
}

const STRIPES: usize = 1024;

pub struct SessionCache {
    settings: CacheSettings,
    entries: Cache<String, Lookup>,
    /// The invalidation channel is subscribed; until then nothing is read from the cache.
    live: AtomicBool,
    /// Bumped on every channel state change.
    generation: AtomicU64,
    /// Bumped (by key hash) on every invalidation, so a load that raced with one
    /// never leaves a stale entry behind.
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    base: Instant,
}

struct TtlPolicy {
    max_age: Duration,
    negative_ttl: Duration,
    base: Instant,
}

impl Expiry<String, Lookup> for TtlPolicy {
    fn expire_after_create(&self, _key: &String, value: &Lookup, now: Instant) -> Option<Duration> {
        Some(match value {
            Lookup::Found(p) => {
                let at = p.expires_at_ms.load(Ordering::Relaxed);
                if at == u64::MAX {
                    self.max_age
                } else {
                    let now_ms = now.saturating_duration_since(self.base).as_millis() as u64;
                    self.max_age
                        .min(Duration::from_millis(at.saturating_sub(now_ms)))
                }
            }
            Lookup::Invalid(_) => self.negative_ttl,
        })
    }
}

enum LoadError {
    Store(StoreError),
    /// Loaded fine but must not be cached (raced with an invalidation, or not cacheable).
    Uncached(Lookup),
}

impl SessionCache {
    pub fn new(settings: CacheSettings) -> Arc<SessionCache> {
        let base = Instant::now();
        let entries = Cache::builder()
            .max_capacity(settings.max_entries)
            .expire_after(TtlPolicy {
                max_age: settings.max_age,
                negative_ttl: settings.negative_ttl,
                base,
            })
            .build();
        Arc::new(SessionCache {
            settings,
            entries,
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
            base,
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Whether cached entries are being served (enabled and the channel is up).
    pub fn is_live(&self) -> bool {
        self.settings.enabled && self.live.load(Ordering::Acquire)
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Builds a principal whose key has `ttl` left in Redis (`None`: no expiry).
    pub fn principal(
        &self,
        identity: Vec<(HeaderName, HeaderValue)>,
        roles: Vec<String>,
        user: Option<String>,
        ttl: Option<Duration>,
    ) -> Principal {
        let expires_at_ms = match ttl {
            Some(ttl) => self.now_ms().saturating_add(ttl.as_millis() as u64),
            None => u64::MAX,
        };
        Principal {
            identity,
            roles,
            user,
            expires_at_ms: AtomicU64::new(expires_at_ms),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// Time the principal's key has left in Redis, as last known.
    pub fn remaining(&self, principal: &Principal) -> Option<Duration> {
        let at = principal.expires_at_ms.load(Ordering::Relaxed);
        (at != u64::MAX).then(|| Duration::from_millis(at.saturating_sub(self.now_ms())))
    }

    /// Records that the key's TTL was reset to `ttl` (sliding expiry).
    pub fn touched(&self, principal: &Principal, ttl: Duration) {
        principal.expires_at_ms.store(
            self.now_ms().saturating_add(ttl.as_millis() as u64),
            Ordering::Relaxed,
        );
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        &self.stripes[(self.hasher.hash_one(key) as usize) % STRIPES]
    }

    fn version(&self, key: &str) -> (u64, u64) {
        (
            self.generation.load(Ordering::Acquire),
            self.stripe(key).load(Ordering::Acquire),
        )
    }

    /// The cached lookup for `key`, or `load`'s result (cached when safe).
    /// Concurrent misses for one key share a single `load`.
    pub async fn get_or_load<F, Fut>(
        &self,
        key: &str,
        load: F,
    ) -> Result<(Lookup, LookupSource), StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Lookup, StoreError>>,
    {
        if !self.is_live() {
            return load().await.map(|l| (l, LookupSource::Redis));
        }
        if let Some(hit) = self.entries.get(key).await {
            metrics::session_lookup(LookupSource::Cache, LookupResult::Hit);
            return Ok((hit, LookupSource::Cache));
        }
        metrics::session_lookup(LookupSource::Cache, LookupResult::Miss);
        let before = self.version(key);
        let negative = !self.settings.negative_ttl.is_zero();
        let result = self
            .entries
            .try_get_with(key.to_owned(), async {
                match load().await {
                    Err(e) => Err(LoadError::Store(e)),
                    Ok(lookup) => {
                        let cacheable = match &lookup {
                            Lookup::Found(_) => true,
                            // Only "no such key" is worth remembering; the rest is cheap to recheck.
                            Lookup::Invalid(reason) => negative && *reason == AuthFailure::NotFound,
                        };
                        if cacheable && self.version(key) == before && self.is_live() {
                            Ok(lookup)
                        } else {
                            Err(LoadError::Uncached(lookup))
                        }
                    }
                }
            })
            .await;
        match result {
            Ok(lookup) => {
                // An invalidation that landed between the check above and the
                // insert would otherwise leave this entry stale.
                if self.version(key) != before || !self.is_live() {
                    self.entries.invalidate(key).await;
                }
                Ok((lookup, LookupSource::Redis))
            }
            Err(err) => match &*err {
                LoadError::Store(e) => Err(e.clone()),
                LoadError::Uncached(lookup) => Ok((lookup.clone(), LookupSource::Redis)),
            },
        }
    }

    /// Forgets `key`: its next lookup goes to Redis.
    pub async fn invalidate(&self, key: &str) {
        self.stripe(key).fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(key).await;
        metrics::cache_invalidations(1);
    }

    /// Marks the invalidation channel up or down; either way nothing cached before survives.
    pub fn set_live(&self, live: bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if !live {
            self.live.store(false, Ordering::Release);
        }
        self.entries.invalidate_all();
        if !live {
            metrics::set_cache_entries(0);
        }
        if live {
            self.live.store(true, Ordering::Release);
        }
    }

    /// Drops every entry (e.g. after a config reload changed what a principal holds).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
    }
}

/// The keyspace events that change or end a key's value. `expire` (a TTL
/// change, sent by express-session's `touch` on every request) is not one of them.
const EVENTS: &[&str] = &[
    "del",
    "set",
    "expired",
    "evicted",
    "rename_from",
    "rename_to",
    "move_from",
    "move_to",
    "restore",
    "hset",
    "hdel",
    "hincrby",
    "hincrbyfloat",
    "setrange",
    "append",
    "incrby",
    "incrbyfloat",
    "hexpired",
];

/// Classes of notifications the cache needs: keyevent (E), generic (g),
/// string ($), hash (h), expired (x), evicted (e).
const NEEDED_FLAGS: &str = "Eg$hxe";

/// Which keys the cache holds (session and token key templates).
pub type KeyFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Runs the invalidation listener on its own thread for the life of the process.
pub fn spawn_invalidator(
    cache: Arc<SessionCache>,
    client: redis::Client,
    filter: KeyFilter,
) -> std::io::Result<()> {
    if !cache.enabled() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("sessiongate-invalidator".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cache invalidator could not start; the cache stays bypassed");
                    return;
                }
            };
            runtime.block_on(invalidate_forever(cache, client, filter));
        })
        .map(|_| ())
}

async fn invalidate_forever(cache: Arc<SessionCache>, client: redis::Client, filter: KeyFilter) {
    let mut delay = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match listen(&cache, &client, &filter).await {
            Ok(()) => tracing::warn!(
                "cache invalidation channel closed; bypassing the cache until it is back"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cache invalidation channel unavailable; bypassing the cache")
            }
        }
        cache.set_live(false);
        if started.elapsed() > Duration::from_secs(10) {
            delay = Duration::from_millis(100);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Makes sure Redis publishes the events we need, merging with what is set.
async fn ensure_notifications(client: &redis::Client, configure: bool) -> Result<(), String> {
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let current: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let flags = current.get(1).cloned().unwrap_or_default();
    let has = |f: char| flags.contains(f) || ("g$lshzxetd".contains(f) && flags.contains('A'));
    if NEEDED_FLAGS.chars().all(has) {
        return Ok(());
    }
    if !configure {
        return Err(format!(
            "redis notify-keyspace-events is {flags:?}; the cache needs {NEEDED_FLAGS:?} (or set [cache] configure_notifications = true)"
        ));
    }
    let mut merged = flags.clone();
    merged.extend(NEEDED_FLAGS.chars().filter(|f| !has(*f)));
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&merged)
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| format!("CONFIG SET notify-keyspace-events {merged}: {e}"))
}

async fn listen(
    cache: &SessionCache,
    client: &redis::Client,
    filter: &KeyFilter,
) -> Result<(), String> {
    ensure_notifications(client, cache.settings.configure_notifications).await?;
    let db = client.get_connection_info().redis_settings().db();
    let mut pubsub = client.get_async_pubsub().await.map_err(|e| e.to_string())?;
    let channels: Vec<String> = EVENTS
        .iter()
        .map(|event| format!("__keyevent@{db}__:{event}"))
        .collect();
    pubsub
        .subscribe(&channels)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sink, mut stream) = pubsub.split();
    cache.set_live(true);
    tracing::info!("session cache live: invalidations subscribed");
    let mut heartbeat = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                if let Ok(key) = std::str::from_utf8(message.get_payload_bytes()) {
                    if filter(key) {
                        cache.invalidate(key).await;
                    }
                }
            }
            _ = heartbeat.tick() => {
                cache.entries.run_pending_tasks().await;
                metrics::set_cache_entries(cache.entry_count());
                // A frozen or partitioned Redis keeps the socket open; a ping proves it answers.
                match tokio::time::timeout(Duration::from_secs(1), sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("ping timed out".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CacheSettings {
        CacheSettings {
            enabled: true,
            max_entries: 1000,
            max_age: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(2),
            configure_notifications: true,
        }
    }

    fn found(cache: &SessionCache, user: &str) -> Lookup {
        Lookup::Found(Arc::new(cache.principal(
            Vec::new(),
            Vec::new(),
            Some(user.into()),
            Some(Duration::from_secs(60)),
        )))
    }

    fn user(l: &Lookup) -> Option<&str> {
        match l {
            Lookup::Found(p) => p.user.as_deref(),
            Lookup::Invalid(_) => None,
        }
    }

    #[tokio::test]
    async fn nothing_is_served_from_the_cache_until_the_channel_is_live() {
        let cache = SessionCache::new(settings());
        let (l, src) = cache
            .get_or_load("k", || async { Ok(found(&cache, "a")) })
            .await
            .unwrap();
        assert_eq!((user(&l), src), (Some("a"), LookupSource::Redis));
        let (_, src) = cache
            .get_or_load("k", || async { Ok(found(&cache, "b")) })
            .await
            .unwrap();
        assert_eq!(src, LookupSource::Redis);

        cache.set_live(true);
        cache
            .get_or_load("k", || async { Ok(found(&cache, "c")) })
            .await
            .unwrap();
        let (l, src) = cache
            .get_or_load("k", || async { Ok(found(&cache, "d")) })
            .await
            .unwrap();
        assert_eq!((user(&l), src), (Some("c"), LookupSource::Cache));

        cache.set_live(false);
        let (l, src) = cache
            .get_or_load("k", || async { Ok(found(&cache, "e")) })
            .await
            .unwrap();
        assert_eq!((user(&l), src), (Some("e"), LookupSource::Redis));
    }

    #[tokio::test]
    async fn an_invalidated_key_is_loaded_again() {
        let cache = SessionCache::new(settings());
        cache.set_live(true);
        cache
            .get_or_load("k", || async { Ok(found(&cache, "a")) })
            .await
            .unwrap();
        cache.invalidate("k").await;
        let (l, src) = cache
            .get_or_load("k", || async { Ok(found(&cache, "b")) })
            .await
            .unwrap();
        assert_eq!((user(&l), src), (Some("b"), LookupSource::Redis));
    }

    #[tokio::test]
    async fn a_load_that_races_an_invalidation_is_not_cached() {
        let cache = SessionCache::new(settings());
        cache.set_live(true);
        let (l, _) = cache
            .get_or_load("k", || async {
                let value = found(&cache, "stale");
                // The key is deleted while its old value is on the way back.
                cache.invalidate("k").await;
                Ok(value)
            })
            .await
            .unwrap();
        assert_eq!(user(&l), Some("stale"), "this request may use what it read");
        let (l, src) = cache
            .get_or_load("k", || async { Ok(found(&cache, "fresh")) })
            .await
            .unwrap();
        assert_eq!((user(&l), src), (Some("fresh"), LookupSource::Redis));
    }

    #[tokio::test]
    async fn store_errors_are_never_cached() {
        let cache = SessionCache::new(settings());
        cache.set_live(true);
        let err = cache
            .get_or_load("k", || async {
                Err(StoreError::Timeout(Duration::from_millis(1)))
            })
            .await;
        assert!(err.is_err());
        let (l, src) = cache
            .get_or_load("k", || async { Ok(found(&cache, "a")) })
            .await
            .unwrap();
        assert_eq!((user(&l), src), (Some("a"), LookupSource::Redis));
    }

    #[tokio::test]
    async fn unknown_ids_are_remembered_briefly_and_other_failures_not_at_all() {
        let cache = SessionCache::new(settings());
        cache.set_live(true);
        let missing = || async { Ok(Lookup::Invalid(AuthFailure::NotFound)) };
        cache.get_or_load("k", missing).await.unwrap();
        let (_, src) = cache.get_or_load("k", missing).await.unwrap();
        assert_eq!(src, LookupSource::Cache);
        // A login (SET of the key) invalidates the negative entry at once.
        cache.invalidate("k").await;
        let (l, src) = cache
            .get_or_load("k", || async { Ok(found(&cache, "new")) })
            .await
            .unwrap();
        assert_eq!((user(&l), src), (Some("new"), LookupSource::Redis));

        let unreadable = || async { Ok(Lookup::Invalid(AuthFailure::Unreadable)) };
        cache.get_or_load("u", unreadable).await.unwrap();
        let (_, src) = cache.get_or_load("u", unreadable).await.unwrap();
        assert_eq!(src, LookupSource::Redis);
    }

    #[tokio::test]
    async fn entries_do_not_outlive_their_redis_ttl() {
        let cache = SessionCache::new(settings());
        cache.set_live(true);
        let short = || async {
            Ok(Lookup::Found(Arc::new(cache.principal(
                Vec::new(),
                Vec::new(),
                None,
                Some(Duration::from_millis(50)),
            ))))
        };
        cache.get_or_load("k", short).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        let (_, src) = cache.get_or_load("k", short).await.unwrap();
        assert_eq!(src, LookupSource::Redis);
    }
}
