//! Where sessions live. `SessionStore` is the narrow interface the request
//! path needs; `RedisStore` implements it with one pipelined round trip per
//! lookup and fails closed: every Redis problem is a `StoreError`, never "no session".

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::{RedisSettings, ValueFormat};
use crate::labels::{LookupResult, LookupSource};
use crate::metrics::{self, StoreOp};
use crate::session::topology::{Conn, Connector};

/// A session key's value as Redis returned it, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawValue {
    String(Vec<u8>),
    Hash(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSession {
    pub value: RawValue,
    /// Remaining lifetime of the key; `None` when it has no expiry.
    pub ttl_ms: Option<u64>,
}

/// The store could not answer; the request must not be let through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// The key exists but holds another type than the configured `value`.
    #[error("the session key holds the wrong Redis type")]
    WrongType,
    /// The circuit breaker is open: Redis failed repeatedly, so it is not
    /// asked again until the cool-down ends.
    #[error("redis is unavailable: circuit breaker open after {0} consecutive failures")]
    BreakerOpen(u32),
}

impl StoreError {
    /// Whether Redis could not answer at all (timeout, connection error,
    /// breaker open), as opposed to answering something unexpected.
    pub fn is_unreachable(&self) -> bool {
        !matches!(self, StoreError::WrongType)
    }
}

impl StoreError {
    fn from_redis(err: redis::RedisError) -> StoreError {
        let message = err.to_string();
        let wrong_type = err
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == "WRONGTYPE"));
        if wrong_type {
            StoreError::WrongType
        } else {
            StoreError::Unavailable(message)
        }
    }
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The session at `key`, or `None` when the key does not exist. With
    /// `ttl`, its remaining lifetime too (else `ttl_ms` is `None`).
    async fn fetch(
        &self,
        key: &str,
        format: ValueFormat,
        ttl: bool,
    ) -> Result<Option<RawSession>, StoreError>;
    /// A round trip that proves the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Resets `key`'s TTL to `ttl` if it still exists (sliding expiry).
    async fn touch(&self, key: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Deletes `keys` (logout); returns how many existed.
    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError>;
    /// The members of the set at `key` (a user's session or token ids); empty when absent.
    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError>;
    /// Removes `members` from the set at `key`; returns how many were in it.
    async fn set_remove(&self, key: &str, members: &[String]) -> Result<u64, StoreError>;
    /// A fixed-window counter shared by every gateway on this store: adds
    /// `add` (0 only reads) to the counter at `key`, whose window of `window`
    /// starts with its first hit. Returns the count and the window's
    /// remaining time. Stores without one answer `Unavailable`.
    async fn window_count(
        &self,
        _key: &str,
        _add: u32,
        _window: Duration,
    ) -> Result<(u64, Duration), StoreError> {
        Err(StoreError::Unavailable("no shared counters".to_owned()))
    }
}

/// `window_count` in one round trip: INCRBY, then the window's expiry when the
/// key has none yet (its first hit), and what is left of it.
const WINDOW_COUNT: &str = r"
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {n, ttl}
";

/// Redis through a multiplexed, self-reconnecting connection.
///
/// The connection is made lazily on first use, inside the runtime that uses it,
/// and a failed attempt is retried by the next request, so the gateway starts
/// serving 200s again as soon as Redis is back without a restart.
pub struct RedisStore {
    settings: RedisSettings,
    /// Standalone, sentinel-managed master or cluster (see `topology`).
    conn: Connector,
    breaker: Breaker,
}

impl RedisStore {
    pub fn new(settings: &RedisSettings) -> Result<Arc<RedisStore>, StoreError> {
        let conn = Connector::new(settings).map_err(StoreError::Unavailable)?;
        Ok(Arc::new(RedisStore {
            settings: settings.clone(),
            conn,
            breaker: Breaker::new(settings.breaker_failures, settings.breaker_cooldown),
        }))
    }

    /// Whether lookups go through one pipelined connection per thread
    /// (standalone over plain TCP) rather than redis-rs's shared ones.
    pub fn pipelined(&self) -> bool {
        self.conn.pipelined()
    }

    async fn connection(&self) -> Result<Conn, StoreError> {
        self.conn.get().await.map_err(StoreError::Unavailable)
    }

    /// Runs `f` on a connection under the command timeout, through the
    /// circuit breaker: while it is open, fails at once without asking Redis.
    async fn with_timeout<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let probe = self.breaker.admit(Instant::now())?;
        let result = self.call(f).await;
        let failed = matches!(&result, Err(e) if e.is_unreachable());
        if self.breaker.record(!failed, probe, Instant::now()) {
            tracing::warn!(
                failures = self.settings.breaker_failures,
                cooldown = ?self.settings.breaker_cooldown,
                "redis circuit breaker open: failing store calls fast until a probe succeeds"
            );
        }
        result
    }

    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        // The first connection may take up to connect_timeout; after that the
        // manager reconnects in the background and commands fail fast meanwhile.
        let connect_limit = self.settings.connect_timeout;
        let conn = match tokio::time::timeout(connect_limit, self.connection()).await {
            Ok(conn) => conn?,
            Err(_) => return Err(StoreError::Timeout(connect_limit)),
        };
        let limit = self.settings.command_timeout;
        let pipe = match &conn {
            Conn::Pipe(pipe) => Some(pipe.clone()),
            _ => None,
        };
        match tokio::time::timeout(limit, f(conn)).await {
            Ok(result) => result.map_err(|e| {
                // A sentinel-managed master that went away is looked up again.
                self.conn.failed(&e);
                StoreError::from_redis(e)
            }),
            Err(_) => {
                match pipe {
                    Some(pipe) => pipe.timed_out(),
                    None => self.conn.timed_out(),
                }
                Err(StoreError::Timeout(limit))
            }
        }
    }

    /// GET (or HGETALL) of `key`, and with `ttl` its PTTL in the same round trip.
    async fn fetch_raw(
        &self,
        key: &str,
        format: ValueFormat,
        ttl: bool,
    ) -> Result<Option<RawSession>, StoreError> {
        let command = match format {
            ValueFormat::Hash => "HGETALL",
            // Any type: only whether it exists counts.
            ValueFormat::Exists => "PTTL",
            _ => "GET",
        };
        let (value, ttl_ms) = if ttl {
            let mut pipe = redis::pipe();
            pipe.cmd(command).arg(key).cmd("PTTL").arg(key);
            let mut values: Vec<redis::Value> = self
                .with_timeout(|mut conn| async move { pipe.query_async(&mut conn).await })
                .await?;
            let ttl_ms = values
                .pop()
                .map(redis::from_redis_value::<i64>)
                .transpose()
                .map_err(|e| StoreError::from_redis(e.into()))?
                .and_then(ttl_from_pttl);
            let Some(value) = values.pop() else {
                return Err(StoreError::Unavailable("redis sent no reply".to_owned()));
            };
            (value, ttl_ms)
        } else {
            // One command, not a pipeline of one: no reply vector to build.
            let mut cmd = redis::cmd(command);
            cmd.arg(key);
            let value: redis::Value = self
                .with_timeout(|mut conn| async move { cmd.query_async(&mut conn).await })
                .await?;
            (value, None)
        };
        let value = match format {
            ValueFormat::Exists => {
                let pttl: i64 =
                    redis::from_redis_value(value).map_err(|e| StoreError::from_redis(e.into()))?;
                if pttl == -2 {
                    return Ok(None);
                }
                RawValue::String(Vec::new())
            }
            ValueFormat::Hash => {
                let fields: Vec<(String, String)> =
                    redis::from_redis_value(value).map_err(|e| StoreError::from_redis(e.into()))?;
                if fields.is_empty() {
                    return Ok(None);
                }
                RawValue::Hash(fields)
            }
            _ => match redis::from_redis_value::<Option<Vec<u8>>>(value)
                .map_err(|e| StoreError::from_redis(e.into()))?
            {
                Some(bytes) => RawValue::String(bytes),
                None => return Ok(None),
            },
        };
        Ok(Some(RawSession { value, ttl_ms }))
    }
}

fn ttl_from_pttl(pttl: i64) -> Option<u64> {
    u64::try_from(pttl).ok()
}

#[async_trait]
impl SessionStore for RedisStore {
    async fn fetch(
        &self,
        key: &str,
        format: ValueFormat,
        ttl: bool,
    ) -> Result<Option<RawSession>, StoreError> {
        let started = Instant::now();
        let result = self.fetch_raw(key, format, ttl).await;
        metrics::store_duration(StoreOp::Fetch, started.elapsed());
        let outcome = match &result {
            Ok(Some(_)) | Err(StoreError::WrongType) => LookupResult::Hit,
            Ok(None) => LookupResult::Miss,
            Err(_) => LookupResult::Error,
        };
        metrics::session_lookup(LookupSource::Redis, outcome);
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = self
            .with_timeout(|mut conn| async move {
                redis::cmd("PING").query_async::<()>(&mut conn).await
            })
            .await;
        metrics::store_duration(StoreOp::Ping, started.elapsed());
        result
    }

    async fn touch(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.with_timeout(|mut conn| async move {
            redis::cmd("PEXPIRE")
                .arg(key)
                .arg(ms)
                .query_async::<bool>(&mut conn)
                .await
        })
        .await
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.with_timeout(|mut conn| async move {
            redis::cmd("DEL")
                .arg(keys)
                .query_async::<u64>(&mut conn)
                .await
        })
        .await
    }

    async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let members = self
            .with_timeout(|mut conn| async move {
                redis::cmd("SMEMBERS")
                    .arg(key)
                    .query_async::<Vec<Vec<u8>>>(&mut conn)
                    .await
            })
            .await?;
        // Ids are text; a member that is not cannot name a session we accept.
        Ok(members
            .into_iter()
            .filter_map(|m| String::from_utf8(m).ok())
            .collect())
    }

    async fn window_count(
        &self,
        key: &str,
        add: u32,
        window: Duration,
    ) -> Result<(u64, Duration), StoreError> {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let (count, ttl): (u64, u64) = self
            .with_timeout(|mut conn| async move {
                redis::cmd("EVAL")
                    .arg(WINDOW_COUNT)
                    .arg(1)
                    .arg(key)
                    .arg(add)
                    .arg(ms)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok((count, Duration::from_millis(ttl)))
    }

    async fn set_remove(&self, key: &str, members: &[String]) -> Result<u64, StoreError> {
        if members.is_empty() {
            return Ok(0);
        }
        self.with_timeout(|mut conn| async move {
            redis::cmd("SREM")
                .arg(key)
                .arg(members)
                .query_async::<u64>(&mut conn)
                .await
        })
        .await
    }
}

/// A circuit breaker over store calls. Closed: every call goes to Redis.
/// After `threshold` consecutive failures it opens for `cooldown`: calls fail
/// at once with `StoreError::BreakerOpen`. Then it is half-open: one call (the
/// probe) goes through; its success closes the breaker, its failure opens it
/// for another `cooldown`. A probe that never reports back (its request was
/// cancelled) is replaced by another after `cooldown`.
///
/// Time is passed in, so the logic is tested without sleeping.
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    /// Consecutive failures since the last success.
    failures: u32,
    /// Open until then; `None`: closed.
    open_until: Option<Instant>,
    /// When the half-open probe was let through, if one is in flight.
    probe_since: Option<Instant>,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(BreakerState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a call may go to Redis now: `Ok(true)` for the half-open probe,
    /// `Ok(false)` when closed, `Err` while open (or while a probe is out).
    pub(crate) fn admit(&self, now: Instant) -> Result<bool, StoreError> {
        let mut state = self.state();
        let Some(until) = state.open_until else {
            return Ok(false);
        };
        let probe_out = state
            .probe_since
            .is_some_and(|since| now < since + self.cooldown);
        if now < until || probe_out {
            return Err(StoreError::BreakerOpen(state.failures));
        }
        state.probe_since = Some(now);
        Ok(true)
    }

    /// Records a call's outcome; returns true when this opened the breaker
    /// (from closed, so it is logged once per outage).
    pub(crate) fn record(&self, ok: bool, probe: bool, now: Instant) -> bool {
        let mut state = self.state();
        if ok {
            *state = BreakerState::default();
            return false;
        }
        state.failures = state.failures.saturating_add(1);
        if probe {
            state.probe_since = None;
            state.open_until = Some(now + self.cooldown);
            return false;
        }
        if state.open_until.is_none() && state.failures >= self.threshold {
            state.open_until = Some(now + self.cooldown);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(1);

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = Breaker::new(3, COOL);
        let t = Instant::now();
        assert!(!b.record(false, false, t));
        assert!(!b.record(false, false, t));
        // A success in between resets the count.
        assert!(!b.record(true, false, t));
        assert!(!b.record(false, false, t));
        assert!(!b.record(false, false, t));
        assert_eq!(b.admit(t).ok(), Some(false));
        assert!(
            b.record(false, false, t),
            "the third failure in a row opens it"
        );
        assert!(matches!(b.admit(t), Err(StoreError::BreakerOpen(3))));
        assert!(b.admit(t + COOL / 2).is_err());
        // Calls already in flight that fail do not reopen or log again.
        assert!(!b.record(false, false, t));
    }

    #[test]
    fn half_open_lets_one_probe_through_and_it_decides() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        assert!(b.record(false, false, t));
        let t1 = t + COOL;
        assert_eq!(b.admit(t1).ok(), Some(true), "the probe");
        assert!(b.admit(t1).is_err(), "only one probe at a time");
        // The probe fails: open for another cool-down.
        assert!(!b.record(false, true, t1));
        assert!(b.admit(t1 + COOL / 2).is_err());
        let t2 = t1 + COOL;
        assert_eq!(b.admit(t2).ok(), Some(true));
        // The probe succeeds: closed, every call goes through again.
        b.record(true, true, t2);
        assert_eq!(b.admit(t2).ok(), Some(false));
        assert_eq!(b.admit(t2).ok(), Some(false));
    }

    #[test]
    fn a_lost_probe_is_replaced_after_a_cool_down() {
        let b = Breaker::new(1, COOL);
        let t = Instant::now();
        b.record(false, false, t);
        assert_eq!(b.admit(t + COOL).ok(), Some(true));
        // That probe's request was cancelled and never reported.
        assert!(b.admit(t + COOL + COOL / 2).is_err());
        assert_eq!(b.admit(t + COOL * 2).ok(), Some(true));
    }

    #[tokio::test]
    async fn a_dead_redis_fails_fast_once_the_breaker_is_open() {
        // Nothing listens on port 1.
        let text = "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[redis]\n\
            url = \"redis://127.0.0.1:1/0\"\ncommand_timeout = \"100ms\"\n\
            connect_timeout = \"200ms\"\nbreaker_failures = 2\nbreaker_cooldown = \"300ms\"\n\n\
            [session]\ncookie_format = \"plain\"\n\n\
            [[upstream]]\nname = \"app\"\naddrs = [\"127.0.0.1:3000\"]\n\n\
            [[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
        let config = crate::config::parse("proxy.toml", text, &|_| None).expect("config");
        assert_eq!(config.redis.breaker_failures, 2);
        assert_eq!(config.redis.breaker_cooldown, Duration::from_millis(300));
        let store = RedisStore::new(&config.redis).expect("store");
        for _ in 0..2 {
            let err = store.fetch("k", ValueFormat::Json, true).await.unwrap_err();
            assert!(!matches!(err, StoreError::BreakerOpen(_)), "{err}");
        }
        let started = Instant::now();
        for _ in 0..100 {
            let err = store.fetch("k", ValueFormat::Json, true).await.unwrap_err();
            assert!(matches!(err, StoreError::BreakerOpen(2)), "{err}");
        }
        assert!(started.elapsed() < Duration::from_millis(100));
        // After the cool-down one probe goes to Redis again (and fails).
        tokio::time::sleep(Duration::from_millis(350)).await;
        let err = store.fetch("k", ValueFormat::Json, true).await.unwrap_err();
        assert!(!matches!(err, StoreError::BreakerOpen(_)), "{err}");
        assert!(matches!(
            store.fetch("k", ValueFormat::Json, true).await,
            Err(StoreError::BreakerOpen(_))
        ));
    }
}
