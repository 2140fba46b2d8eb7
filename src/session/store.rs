//! Where sessions live. `SessionStore` is the narrow interface the request
//! path needs; `RedisStore` implements it with one pipelined round trip per
//! lookup and fails closed: every Redis problem is a `StoreError`, never "no session".

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::config::{RedisSettings, ValueFormat};
use crate::metrics::{self, LookupResult, StoreOp};
use crate::session::cache::LookupSource;

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
    /// The session at `key`, or `None` when the key does not exist.
    async fn fetch(&self, key: &str, format: ValueFormat)
        -> Result<Option<RawSession>, StoreError>;
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
}

/// Redis through a multiplexed, self-reconnecting connection.
///
/// The connection is made lazily on first use, inside the runtime that uses it,
/// and a failed attempt is retried by the next request, so the gateway starts
/// serving 200s again as soon as Redis is back without a restart.
pub struct RedisStore {
    client: redis::Client,
    settings: RedisSettings,
    conn: OnceCell<ConnectionManager>,
}

impl RedisStore {
    pub fn new(settings: &RedisSettings) -> Result<Arc<RedisStore>, StoreError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| StoreError::Unavailable(format!("bad redis url: {e}")))?;
        Ok(Arc::new(RedisStore {
            client,
            settings: settings.clone(),
            conn: OnceCell::new(),
        }))
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.settings.connect_timeout))
                    .set_response_timeout(Some(self.settings.command_timeout))
                    // Reconnection happens in the background; requests meanwhile fail fast.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs `f` on a connection under the command timeout.
    async fn with_timeout<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
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
        match tokio::time::timeout(limit, f(conn)).await {
            Ok(result) => result.map_err(StoreError::from_redis),
            Err(_) => Err(StoreError::Timeout(limit)),
        }
    }

    /// GET (or HGETALL) and PTTL of `key` in one round trip.
    async fn fetch_raw(
        &self,
        key: &str,
        format: ValueFormat,
    ) -> Result<Option<RawSession>, StoreError> {
        match format {
            ValueFormat::Json => {
                let (value, pttl): (Option<Vec<u8>>, i64) = self
                    .with_timeout(|mut conn| async move {
                        redis::pipe()
                            .get(key)
                            .pttl(key)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                Ok(value.map(|bytes| RawSession {
                    value: RawValue::String(bytes),
                    ttl_ms: ttl_from_pttl(pttl),
                }))
            }
            ValueFormat::Hash => {
                let (fields, pttl): (Vec<(String, String)>, i64) = self
                    .with_timeout(|mut conn| async move {
                        redis::pipe()
                            .hgetall(key)
                            .pttl(key)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                if fields.is_empty() {
                    return Ok(None);
                }
                Ok(Some(RawSession {
                    value: RawValue::Hash(fields),
                    ttl_ms: ttl_from_pttl(pttl),
                }))
            }
        }
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
    ) -> Result<Option<RawSession>, StoreError> {
        let started = Instant::now();
        let result = self.fetch_raw(key, format).await;
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
