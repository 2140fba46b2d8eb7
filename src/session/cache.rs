//! The session cache: resolved sessions kept in process until the earlier of
//! their Redis TTL and `max_age`, evicted within milliseconds when any client
//! changes their key in any way (Redis client-side tracking, see `tracking`).
//! While the invalidation channel is down the cache is bypassed, never trusted.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::identity::IdentityValues;
use quick_cache::sync::Cache;

use crate::changes::Change;
use crate::config::CacheSettings;
use crate::labels::{LookupResult, LookupSource};
use crate::metrics;
use crate::reject::AuthFailure;
use crate::session::StoreError;

/// What the request path needs from a valid session, extracted once: the
/// identity headers, the role values and the user. Much smaller than the
/// session document, so 100k of them fit in a few tens of MB.
#[derive(Debug)]
pub struct Principal {
    pub identity: IdentityValues,
    pub roles: Vec<String>,
    pub user: Option<String>,
    /// The Redis key it was read from: what a live exchange it admitted is
    /// tied to (see `live`).
    pub key: Box<str>,
    /// When the key expires in Redis, in ms since the cache's clock base; `u64::MAX`: never.
    expires_at_ms: AtomicU64,
    /// A hash of the key's value (its `DUMP`) as it was when this principal
    /// was read; 0 until the invalidation channel has taken it. An
    /// invalidation that leaves the value as it was (a TTL change) may then
    /// put the entry back instead of leaving it evicted.
    fingerprint: AtomicU64,
    /// For a bearer JWT: the SHA-256 of the token it was verified from. A
    /// cached entry answers only that token (two tokens may share a token
    /// id, and only the one whose signature was checked may skip the check).
    token: Option<[u8; 32]>,
    /// For a bearer JWT: when its `exp` (with the leeway) passes. The cache
    /// serves it no longer, and a live exchange it admitted ends then.
    pub ends_at: Option<Instant>,
    /// The session profile it was read under (its identity values are that
    /// profile's headers).
    pub profile: usize,
    /// The invalidation channel that reports changes of its key
    /// ([`SessionCache::channel`]).
    pub channel: usize,
}

/// A lookup's result as cached: a principal, or a known-invalid id.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<Principal>),
    Invalid(AuthFailure),
}

const STRIPES: usize = 1024;

pub struct SessionCache {
    settings: CacheSettings,
    entries: Cache<String, Entry>,
    /// The invalidation channel is subscribed; until then nothing is read from the cache.
    live: AtomicBool,
    /// Bumped on every channel state change.
    generation: AtomicU64,
    /// Bumped (by key hash) on every invalidation, so a load that raced with one
    /// never leaves a stale entry behind.
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    base: Instant,
    /// Last known good: per session key, the principal last resolved
    /// successfully and when, for `on_store_error = "stale"`. Kept apart from
    /// `entries` (which is emptied when the invalidation channel drops);
    /// dropped on an invalidation of the key or an answer that it is invalid.
    /// Made on first use, so it costs nothing without a `stale` route.
    last_good: std::sync::OnceLock<Cache<String, Arc<LastGood>>>,
    /// Key prefixes the invalidation channel watches; a key outside them is
    /// never cached (empty: every key is watched).
    prefixes: Vec<String>,
    /// Where cache fills are announced, so that the channel can fingerprint
    /// them; set once the channel runs.
    fills: std::sync::OnceLock<tokio::sync::mpsc::Sender<Fill>>,
}

/// A principal just cached, for the invalidation channel to fingerprint.
pub(crate) struct Fill {
    pub key: String,
    /// The key's version when its value was read.
    pub version: (u64, u64),
    pub principal: Arc<Principal>,
}

/// An entry evicted by an invalidation that may only have changed the key's
/// TTL: put back if the key's value is still what the entry was read from.
pub(crate) struct Evicted {
    pub key: String,
    entry: Entry,
    good: Option<Arc<LastGood>>,
    principal: Arc<Principal>,
    /// The key's version right after the eviction.
    version: (u64, u64),
}

impl Evicted {
    /// The fingerprint of the value the entry was read from.
    pub fn fingerprint(&self) -> u64 {
        self.principal.fingerprint.load(Ordering::Acquire)
    }
}

/// What the invalidation channel learned about a key after an invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Current {
    /// The key is gone.
    Gone,
    /// The key holds a value with this fingerprint; `pttl_ms`: its TTL (`None`: no expiry).
    Value {
        fingerprint: u64,
        pttl_ms: Option<u64>,
    },
    /// It could not be read: no restore.
    Unknown,
}

/// A session's last successful resolution.
struct LastGood {
    principal: Arc<Principal>,
    /// When it was last resolved, in ms since the cache's clock base.
    seen_ms: AtomicU64,
}

/// A cached lookup and when it stops being served (ms on the cache's clock).
#[derive(Clone)]
struct Entry {
    lookup: Lookup,
    until_ms: u64,
}

impl Entry {
    /// Whether it was filled from a bearer JWT: it answers only that token
    /// (`token_hit`), never a cookie or opaque id that names the same key.
    fn is_token(&self) -> bool {
        matches!(&self.lookup, Lookup::Found(p) if p.token.is_some())
    }
}

impl SessionCache {
    pub fn new(settings: CacheSettings) -> Arc<SessionCache> {
        let base = Instant::now();
        // quick_cache: a few dozen bytes of bookkeeping per entry (S3-FIFO, no
        // per-entry timers); expiry is checked on read instead.
        let capacity = usize::try_from(settings.max_entries).unwrap_or(usize::MAX);
        let entries = Cache::new(capacity);
        let prefixes = settings.tracked_prefixes.clone();
        Arc::new(SessionCache {
            last_good: std::sync::OnceLock::new(),
            prefixes,
            fills: std::sync::OnceLock::new(),
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
        self.entries.len() as u64
    }

    /// Builds a principal whose key has `ttl` left in Redis (`None`: no expiry).
    pub fn principal(
        &self,
        key: &str,
        identity: IdentityValues,
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
            key: key.into(),
            expires_at_ms: AtomicU64::new(expires_at_ms),
            fingerprint: AtomicU64::new(0),
            token: None,
            ends_at: None,
            profile: 0,
            channel: self.channel(),
        }
    }

    /// Marks `principal` as verified from the bearer JWT whose SHA-256 is
    /// `token`, valid until `ends_at` whatever its key's TTL says.
    pub fn token_principal(
        &self,
        mut principal: Principal,
        token: [u8; 32],
        ends_at: Instant,
    ) -> Principal {
        let until_ms = self.now_ms().saturating_add(
            ends_at
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
        );
        let at = principal.expires_at_ms.get_mut();
        *at = (*at).min(until_ms);
        principal.token = Some(token);
        principal.ends_at = Some(ends_at);
        principal
    }

    /// The principal cached for the token key `key`, if it was verified from
    /// the token whose SHA-256 is `token` (compared in constant time).
    pub fn token_hit(&self, key: &str, token: &[u8; 32]) -> Option<Arc<Principal>> {
        if !self.is_live() || !self.watched(key) {
            return None;
        }
        let hit = self.entries.get(key)?;
        if hit.until_ms <= self.now_ms() {
            return None;
        }
        let Lookup::Found(principal) = hit.lookup else {
            return None;
        };
        let same = principal
            .token
            .as_ref()
            .is_some_and(|t| bool::from(subtle::ConstantTimeEq::ct_eq(&t[..], &token[..])));
        same.then_some(principal)
    }

    /// Caches `principal` for `key` as read when the key's version was
    /// `before` (`lookup_version`), unless the key changed since or the
    /// channel is down.
    pub fn fill(&self, key: &str, principal: &Arc<Principal>, before: (u64, u64)) {
        let lookup = Lookup::Found(principal.clone());
        let Some(until_ms) = self.until_ms(&lookup) else {
            return;
        };
        if !self.is_live() || !self.watched(key) || self.version(key) != before {
            return;
        }
        self.entries
            .insert(key.to_owned(), Entry { lookup, until_ms });
        // An invalidation that landed meanwhile wins.
        if self.version(key) != before || !self.is_live() {
            self.entries.remove(key);
        } else {
            self.announce(key, before, principal);
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
        if !self.is_live() || !self.watched(key) {
            return load().await.map(|l| (l, LookupSource::Redis));
        }
        let now = self.now_ms();
        match self.entries.get(key) {
            Some(hit) if hit.until_ms > now && !hit.is_token() => {
                metrics::session_lookup(LookupSource::Cache, LookupResult::Hit);
                return Ok((hit.lookup, LookupSource::Cache));
            }
            Some(_) => {
                self.entries.remove_if(key, |entry| entry.until_ms <= now);
            }
            None => {}
        }
        metrics::session_lookup(LookupSource::Cache, LookupResult::Miss);
        let before = self.version(key);
        // Concurrent misses for one key wait on the first one's guard.
        let guard = match self.entries.get_value_or_guard_async(key).await {
            Ok(entry) if entry.until_ms > self.now_ms() && !entry.is_token() => {
                return Ok((entry.lookup, LookupSource::Cache));
            }
            Ok(_) => None,
            Err(guard) => Some(guard),
        };
        let lookup = load().await?;
        let until_ms = self.until_ms(&lookup);
        if let (Some(guard), Some(until_ms)) = (guard, until_ms) {
            if self.version(key) == before && self.is_live() {
                let _ = guard.insert(Entry {
                    lookup: lookup.clone(),
                    until_ms,
                });
                // An invalidation that landed between the check above and the
                // insert would otherwise leave this entry stale.
                if self.version(key) != before || !self.is_live() {
                    self.entries.remove(key);
                } else if let Lookup::Found(principal) = &lookup {
                    self.announce(key, before, principal);
                }
            }
        }
        Ok((lookup, LookupSource::Redis))
    }

    /// The key prefixes the invalidation channel must watch (empty: every key).
    pub(crate) fn watched_prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// Whether the invalidation channel watches `key` (so it may be cached).
    fn watched(&self, key: &str) -> bool {
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// Tells the invalidation channel that `principal` was cached for `key`.
    /// When it is busy the entry simply goes without a fingerprint (any
    /// invalidation then evicts it for good).
    fn announce(&self, key: &str, version: (u64, u64), principal: &Arc<Principal>) {
        if let Some(fills) = self.fills.get() {
            let _ = fills.try_send(Fill {
                key: key.to_owned(),
                version,
                principal: principal.clone(),
            });
        }
    }

    /// Where fills are announced from now on (the invalidation channel's queue).
    pub(crate) fn announce_to(&self, fills: tokio::sync::mpsc::Sender<Fill>) {
        let _ = self.fills.set(fills);
    }

    /// Records the fingerprint of the value a fill was read from, unless the
    /// key changed since (its version moved).
    pub(crate) fn fingerprinted(&self, fill: &Fill, fingerprint: u64) {
        if self.version(&fill.key) == fill.version {
            fill.principal
                .fingerprint
                .store(fingerprint.max(1), Ordering::Release);
        }
    }

    /// The fingerprint a value's `DUMP` gives (never 0).
    pub(crate) fn fingerprint_of(&self, dump: &[u8]) -> u64 {
        self.hasher.hash_one(dump).max(1)
    }

    /// What the cache would answer for `key` right now, without loading,
    /// filling or counting anything (`explain`).
    pub fn peek(&self, key: &str) -> Option<Lookup> {
        if !self.is_live() {
            return None;
        }
        let now = self.now_ms();
        self.entries
            .get(key)
            .filter(|hit| hit.until_ms > now)
            .map(|hit| hit.lookup)
    }

    /// Until when `lookup` may be served from the cache; `None`: not cacheable.
    fn until_ms(&self, lookup: &Lookup) -> Option<u64> {
        let now = self.now_ms();
        let max_age = self.settings.max_age.as_millis() as u64;
        match lookup {
            Lookup::Found(p) => {
                let at = p.expires_at_ms.load(Ordering::Relaxed);
                Some(now.saturating_add(max_age).min(at))
            }
            // Only "no such key" is worth remembering; the rest is cheap to recheck.
            Lookup::Invalid(AuthFailure::NotFound) if !self.settings.negative_ttl.is_zero() => {
                Some(now.saturating_add(self.settings.negative_ttl.as_millis() as u64))
            }
            Lookup::Invalid(_) => None,
        }
    }

    /// The version a lookup of `key` starts at; pass it to `remember_good`.
    pub fn lookup_version(&self, key: &str) -> (u64, u64) {
        self.version(key)
    }

    /// Records that `key` resolved to `lookup` (for the stale policy): a
    /// principal becomes the key's last known good, anything else drops it.
    /// A lookup that raced with an invalidation of the key records nothing.
    pub fn remember_good(&self, key: &str, lookup: &Lookup, before: (u64, u64)) {
        let principal = match lookup {
            Lookup::Found(principal) => principal,
            Lookup::Invalid(_) => {
                if let Some(last_good) = self.last_good.get() {
                    last_good.remove(key);
                }
                return;
            }
        };
        let last_good = self.last_good.get_or_init(|| {
            Cache::new(usize::try_from(self.settings.max_entries).unwrap_or(usize::MAX))
        });
        let stripe = self.stripe(key);
        if stripe.load(Ordering::Acquire) != before.1 {
            return;
        }
        let now = self.now_ms();
        if let Some(good) = last_good.get(key) {
            if Arc::ptr_eq(&good.principal, principal) {
                good.seen_ms.store(now, Ordering::Relaxed);
                return;
            }
        }
        let good = Arc::new(LastGood {
            principal: principal.clone(),
            seen_ms: AtomicU64::new(now),
        });
        last_good.insert(key.to_owned(), good);
        // An invalidation that landed meanwhile wins.
        if stripe.load(Ordering::Acquire) != before.1 {
            last_good.remove(key);
        }
    }

    /// The principal `key` last resolved to, if that was within `stale_for`
    /// and its Redis TTL has not run out since; never anything else.
    pub fn stale(&self, key: &str) -> Option<Arc<Principal>> {
        let last_good = self.last_good.get()?;
        let good = last_good.get(key)?;
        let now = self.now_ms();
        let age = now.saturating_sub(good.seen_ms.load(Ordering::Relaxed));
        if u128::from(age) > self.settings.stale_for.as_millis()
            || good.principal.expires_at_ms.load(Ordering::Relaxed) <= now
        {
            last_good.remove(key);
            return None;
        }
        Some(good.principal.clone())
    }

    /// Forgets `key`: its next lookup goes to Redis.
    pub async fn invalidate(&self, key: &str) {
        self.evict(key);
    }

    /// Forgets `key` at once (Redis said it changed). When its entry held a
    /// fingerprinted principal, returns it, for `restore` to put back if the
    /// change left the value as it was.
    pub(crate) fn evict(&self, key: &str) -> Option<Evicted> {
        let evicted = self.evict_entry(key);
        // Live exchanges the key admitted ask again, cached or not, once
        // nothing of the old value is left to answer them.
        crate::changes::report(Change::Key(key));
        evicted
    }

    fn evict_entry(&self, key: &str) -> Option<Evicted> {
        let stripe = self.stripe(key).fetch_add(1, Ordering::AcqRel) + 1;
        let good = self
            .last_good
            .get()
            .and_then(|lg| lg.remove(key))
            .map(|(_, g)| g);
        let (_, entry) = self.entries.remove(key)?;
        metrics::cache_invalidations(1);
        let Lookup::Found(principal) = &entry.lookup else {
            return None;
        };
        if principal.fingerprint.load(Ordering::Acquire) == 0 {
            return None;
        }
        Some(Evicted {
            key: key.to_owned(),
            principal: principal.clone(),
            entry,
            good,
            version: (self.generation.load(Ordering::Acquire), stripe),
        })
    }

    /// Puts an evicted entry back when the key still holds the value it was
    /// read from (`current`) and nothing changed the key since (its version
    /// is the eviction's). Its expiry is capped by the key's new TTL. Returns
    /// whether it was put back.
    pub(crate) fn restore(&self, evicted: Evicted, current: Current) -> bool {
        let Current::Value {
            fingerprint,
            pttl_ms,
        } = current
        else {
            return false;
        };
        if fingerprint != evicted.fingerprint()
            || !self.is_live()
            || self.version(&evicted.key) != evicted.version
        {
            return false;
        }
        let now = self.now_ms();
        let mut until_ms = evicted.entry.until_ms;
        if let Some(pttl) = pttl_ms {
            let at = now.saturating_add(pttl);
            until_ms = until_ms.min(at);
            if evicted.principal.expires_at_ms.load(Ordering::Relaxed) != u64::MAX {
                evicted.principal.expires_at_ms.store(at, Ordering::Relaxed);
            }
        }
        if until_ms <= now {
            return false;
        }
        let entry = Entry {
            lookup: evicted.entry.lookup,
            until_ms,
        };
        // A request that loaded the key meanwhile cached the same value; keep it.
        match self
            .entries
            .get_value_or_guard(&evicted.key, Some(Duration::ZERO))
        {
            quick_cache::sync::GuardResult::Guard(guard) => {
                let _ = guard.insert(entry);
            }
            _ => return false,
        }
        if let (Some(good), Some(last_good)) = (evicted.good, self.last_good.get()) {
            last_good.insert(evicted.key.clone(), good);
        }
        // An invalidation that landed meanwhile wins.
        if self.version(&evicted.key) != evicted.version || !self.is_live() {
            self.entries.remove(&evicted.key);
            if let Some(last_good) = self.last_good.get() {
                last_good.remove(&evicted.key);
            }
            return false;
        }
        true
    }

    /// Forgets every entry: Redis emptied a database (FLUSHDB, FLUSHALL) or
    /// the one the channel reads was swapped (SWAPDB).
    pub(crate) fn flush(&self) {
        let n = self.entries.len() as u64;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
        if let Some(last_good) = self.last_good.get() {
            last_good.clear();
        }
        crate::changes::report(Change::All);
        metrics::cache_invalidations(n);
        metrics::set_cache_entries(0);
    }

    /// Which invalidation channel this cache listens to, as `changes` and
    /// principals name it.
    pub fn channel(&self) -> usize {
        self as *const SessionCache as usize
    }

    /// Marks the invalidation channel up or down; either way nothing cached before survives.
    pub fn set_live(&self, live: bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if !live {
            self.live.store(false, Ordering::Release);
            crate::changes::report(Change::Lost(self.channel()));
        }
        self.entries.clear();
        if !live {
            metrics::set_cache_entries(0);
        }
        if live {
            self.live.store(true, Ordering::Release);
            // Changes made while the channel was down went unheard.
            crate::changes::report(Change::Back(self.channel()));
        }
    }

    /// After a reload: keeps the principals of the profiles `keep` says are
    /// unchanged (by index), drops every other entry (and every bearer
    /// JWT's: `[jwt]` may have changed).
    pub fn retain_profiles(&self, keep: &[bool]) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let kept =
            |p: &Principal| p.token.is_none() && keep.get(p.profile).copied().unwrap_or(false);
        self.entries
            .retain(|_, entry| matches!(&entry.lookup, Lookup::Found(p) if kept(p)));
        if let Some(last_good) = self.last_good.get() {
            last_good.retain(|_, good| kept(&good.principal));
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
            ..CacheSettings::default()
        }
    }

    fn found(cache: &SessionCache, user: &str) -> Lookup {
        Lookup::Found(Arc::new(cache.principal(
            "sess:test",
            IdentityValues::default(),
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
    async fn a_reload_keeps_only_the_unchanged_profiles_sessions() {
        let cache = SessionCache::new(settings());
        cache.set_live(true);
        let of = |profile: usize| {
            let mut p = cache.principal("k", IdentityValues::default(), Vec::new(), None, None);
            p.profile = profile;
            Lookup::Found(Arc::new(p))
        };
        for (key, profile) in [("a:1", 0), ("b:1", 1)] {
            cache
                .get_or_load(key, || async { Ok(of(profile)) })
                .await
                .unwrap();
        }
        assert!(cache.peek("a:1").is_some() && cache.peek("b:1").is_some());
        // Profile 1 changed in the reload: its sessions go, profile 0's stay.
        cache.retain_profiles(&[true, false]);
        assert!(cache.peek("a:1").is_some());
        assert!(cache.peek("b:1").is_none());
        // A profile the new configuration no longer has at that index goes too.
        cache.retain_profiles(&[]);
        assert!(cache.peek("a:1").is_none());
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
    async fn last_known_good_survives_the_channel_but_not_a_revocation() {
        let cache = SessionCache::new(CacheSettings {
            stale_for: Duration::from_millis(100),
            ..settings()
        });
        cache.set_live(true);
        assert!(cache.stale("k").is_none(), "never resolved: nothing");
        let before = cache.lookup_version("k");
        let (l, _) = cache
            .get_or_load("k", || async { Ok(found(&cache, "a")) })
            .await
            .unwrap();
        cache.remember_good("k", &l, before);
        // The channel drops: the live cache is emptied, the record stays.
        cache.set_live(false);
        assert_eq!(
            cache.stale("k").and_then(|p| p.user.clone()).as_deref(),
            Some("a")
        );
        // A DEL seen (invalidation) drops it.
        cache.invalidate("k").await;
        assert!(cache.stale("k").is_none());

        // So does an answer that the key is gone.
        cache.remember_good("k", &found(&cache, "b"), cache.lookup_version("k"));
        assert!(cache.stale("k").is_some());
        cache.remember_good(
            "k",
            &Lookup::Invalid(AuthFailure::NotFound),
            cache.lookup_version("k"),
        );
        assert!(cache.stale("k").is_none());

        // A lookup that raced with an invalidation records nothing.
        let before = cache.lookup_version("k");
        cache.invalidate("k").await;
        cache.remember_good("k", &found(&cache, "c"), before);
        assert!(cache.stale("k").is_none());

        // Nothing older than stale_for.
        cache.remember_good("k", &found(&cache, "d"), cache.lookup_version("k"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(cache.stale("k").is_none());
    }

    /// Caches `key` as `user` and fingerprints it as `fingerprint`, as the
    /// invalidation channel does after a fill.
    async fn fill(cache: &SessionCache, key: &str, user: &str, fingerprint: u64) {
        cache
            .get_or_load(key, || async { Ok(found(cache, user)) })
            .await
            .unwrap();
        if let Some(Lookup::Found(principal)) = cache.peek(key) {
            principal.fingerprint.store(fingerprint, Ordering::Release);
        }
    }

    fn current(fingerprint: u64, pttl_ms: Option<u64>) -> Current {
        Current::Value {
            fingerprint,
            pttl_ms,
        }
    }

    #[tokio::test]
    async fn an_entry_is_put_back_only_when_its_value_is_unchanged() {
        let cache = SessionCache::new(settings());
        cache.set_live(true);
        fill(&cache, "k", "a", 7).await;
        // A TTL change: evicted at once, put back once read back unchanged.
        let evicted = cache.evict("k").expect("a fingerprinted entry");
        assert!(cache.peek("k").is_none(), "evicted before it is read back");
        assert!(cache.restore(evicted, current(7, Some(60_000))));
        let (l, src) = cache
            .get_or_load("k", || async { Ok(found(&cache, "x")) })
            .await
            .unwrap();
        assert_eq!((user(&l), src), (Some("a"), LookupSource::Cache));

        // Another value, a gone key or an unreadable one: it stays out.
        for now in [current(8, Some(60_000)), Current::Gone, Current::Unknown] {
            let evicted = cache.evict("k").expect("still fingerprinted");
            assert!(!cache.restore(evicted, now), "{now:?}");
            assert!(cache.peek("k").is_none(), "{now:?}");
            fill(&cache, "k", "a", 7).await;
        }

        // A change that lands while the key is read back wins.
        let evicted = cache.evict("k").expect("fingerprinted");
        cache.evict("k");
        assert!(!cache.restore(evicted, current(7, None)));
        assert!(cache.peek("k").is_none());

        // A TTL shortened below the cache's cap caps the entry.
        fill(&cache, "k", "a", 7).await;
        let evicted = cache.evict("k").expect("fingerprinted");
        assert!(cache.restore(evicted, current(7, Some(50))));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(cache.peek("k").is_none(), "outlived the key's new TTL");
    }

    #[tokio::test]
    async fn a_fill_that_raced_a_change_gets_no_fingerprint() {
        let cache = SessionCache::new(settings());
        cache.set_live(true);
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let _ = cache.fills.set(tx);
        cache
            .get_or_load("k", || async { Ok(found(&cache, "a")) })
            .await
            .unwrap();
        let fill = rx.try_recv().expect("the fill was announced");
        // The key changed between the lookup and the read back: whatever
        // was read is not what the entry came from.
        cache.evict("k");
        cache
            .get_or_load("k", || async { Ok(found(&cache, "b")) })
            .await
            .unwrap();
        cache.fingerprinted(&fill, 7);
        assert_eq!(fill.principal.fingerprint.load(Ordering::Acquire), 0);
        // So an invalidation evicts for good.
        let later = rx.try_recv().expect("the second fill");
        assert!(
            cache.evict("k").is_none(),
            "the new entry has no fingerprint yet"
        );
        drop(later);
    }

    #[tokio::test]
    async fn a_flush_empties_the_cache_and_the_last_known_good() {
        let cache = SessionCache::new(settings());
        cache.set_live(true);
        let before = cache.lookup_version("k");
        let (l, _) = cache
            .get_or_load("k", || async { Ok(found(&cache, "a")) })
            .await
            .unwrap();
        cache.remember_good("k", &l, before);
        cache.flush();
        assert!(cache.peek("k").is_none());
        assert!(cache.stale("k").is_none());
    }

    #[tokio::test]
    async fn keys_outside_the_watched_prefixes_are_never_cached() {
        let cache = SessionCache::new(CacheSettings {
            tracked_prefixes: vec!["sess:".into()],
            ..settings()
        });
        cache.set_live(true);
        for _ in 0..2 {
            let (_, src) = cache
                .get_or_load("other:k", || async { Ok(found(&cache, "a")) })
                .await
                .unwrap();
            assert_eq!(src, LookupSource::Redis);
        }
        cache
            .get_or_load("sess:k", || async { Ok(found(&cache, "a")) })
            .await
            .unwrap();
        let (_, src) = cache
            .get_or_load("sess:k", || async { Ok(found(&cache, "b")) })
            .await
            .unwrap();
        assert_eq!(src, LookupSource::Cache);
    }

    #[tokio::test]
    async fn entries_do_not_outlive_their_redis_ttl() {
        let cache = SessionCache::new(settings());
        cache.set_live(true);
        let short = || async {
            Ok(Lookup::Found(Arc::new(cache.principal(
                "sess:test",
                IdentityValues::default(),
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
