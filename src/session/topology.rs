//! Where Redis is: one server (`standalone`), the master a set of Sentinels
//! names (`sentinel`), or a Redis Cluster (`cluster`). `Connector` hands the
//! store a connection for whichever it is; `notification_nodes` names the
//! servers whose keyspace notifications the cache must hear.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, TlsMode, Value,
};

use crate::config::{RedisSettings, RedisTopology};
use crate::session::pipe::{PipeConn, Pipes};
use crate::session::RETRY_AFTER_MS;

/// A connection to a single server (standalone, or the current
/// sentinel-managed master) or to a whole cluster: multiplexed, or this
/// thread's own pipelined one.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// This worker thread's own pipelined connection (standalone, plain TCP).
    Pipe(PipeConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Pipe(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Pipe(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Pipe(c) => c.get_db(),
        }
    }
}

/// Makes (lazily) and keeps the store's connection. In sentinel mode an error
/// that says the master is gone or demoted drops it, and the next call asks
/// the Sentinels where the master is now.
pub struct Connector {
    settings: RedisSettings,
    current: Arc<ArcSwapOption<Conn>>,
    connecting: tokio::sync::Mutex<()>,
    failed_at_ms: AtomicU64,
    /// Sentinel mode: the master `current` is connected to, and when the
    /// Sentinels were last asked whether it still is (a graceful failover
    /// leaves the old master up, as a replica, serving stale reads).
    master: Arc<std::sync::Mutex<Option<String>>>,
    checked_at_ms: Arc<AtomicU64>,
    /// Standalone over plain TCP: one pipelined connection per thread
    /// instead of the shared multiplexed one (see `pipe`).
    pipes: Option<Pipes>,
}

/// How often (at most) the Sentinels are asked whether the master moved.
const MASTER_CHECK_MS: u64 = 500;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Connector {
    pub fn new(settings: &RedisSettings) -> Result<Connector, String> {
        let mut pipes = None;
        if settings.topology == RedisTopology::Standalone {
            // Refuse a bad URL now rather than on the first request.
            let info = standalone_info(settings).map_err(|e| format!("bad redis url: {e}"))?;
            pipes = Pipes::for_info(&info);
        }
        Ok(Connector {
            settings: settings.clone(),
            current: Arc::new(ArcSwapOption::empty()),
            connecting: tokio::sync::Mutex::new(()),
            failed_at_ms: AtomicU64::new(0),
            master: Arc::new(std::sync::Mutex::new(None)),
            checked_at_ms: Arc::new(AtomicU64::new(now_ms())),
            pipes,
        })
    }

    /// Whether this thread's own pipelined connection is used (see `pipe`).
    pub fn pipelined(&self) -> bool {
        self.pipes.is_some()
    }

    /// The current connection, made on first use (or after `failed` dropped it).
    pub async fn get(&self) -> Result<Conn, String> {
        if let Some(pipes) = &self.pipes {
            return pipes
                .get(self.settings.connect_timeout)
                .await
                .map(Conn::Pipe);
        }
        if let Some(conn) = self.current.load_full() {
            self.maybe_check_master();
            return Ok((*conn).clone());
        }
        let _guard = self.connecting.lock().await;
        if let Some(conn) = self.current.load_full() {
            return Ok((*conn).clone());
        }
        let failed_at = self.failed_at_ms.load(Ordering::Acquire);
        if now_ms().saturating_sub(failed_at) < RETRY_AFTER_MS {
            return Err("redis is reconnecting".into());
        }
        match self.connect().await {
            Ok(conn) => {
                self.current.store(Some(Arc::new(conn.clone())));
                Ok(conn)
            }
            Err(e) => {
                self.failed_at_ms.store(now_ms(), Ordering::Release);
                Err(e.to_string())
            }
        }
    }

    /// A command failed with `err`: when the sentinel-managed master may have
    /// moved, forget it so that the next call looks it up again.
    pub fn failed(&self, err: &RedisError) {
        let moved = err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_io_error()
            || err.is_timeout()
            || err.code() == Some("READONLY");
        if moved {
            self.forget();
        }
    }

    /// Sentinel mode: now and then, off the request's path, ask the Sentinels
    /// for the master; when it is not the one connected to, drop the connection.
    fn maybe_check_master(&self) {
        if !matches!(self.settings.topology, RedisTopology::Sentinel { .. }) {
            return;
        }
        let now = now_ms();
        let last = self.checked_at_ms.load(Ordering::Acquire);
        if now.saturating_sub(last) < MASTER_CHECK_MS
            || self
                .checked_at_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (settings, master) = (self.settings.clone(), self.master.clone());
        let current = self.current.clone();
        let seen = self.current.load_full();
        runtime.spawn(async move {
            let Ok(client) = sentinel_master(&settings).await else {
                return;
            };
            let now = client.get_connection_info().addr().to_string();
            let known = master.lock().ok().and_then(|m| m.clone());
            if known.is_some_and(|known| known != now) {
                tracing::warn!(master = %now, "the sentinels name another master; reconnecting");
                // Only drop the connection this check was about.
                current.compare_and_swap(&seen, None);
            }
        });
    }

    /// A command timed out: a frozen master may be failed over, look again.
    pub fn timed_out(&self) {
        self.forget();
    }

    fn forget(&self) {
        if matches!(self.settings.topology, RedisTopology::Sentinel { .. }) {
            self.current.store(None);
        }
    }

    async fn connect(&self) -> RedisResult<Conn> {
        let s = &self.settings;
        match &s.topology {
            RedisTopology::Standalone => {
                let client = redis::Client::open(standalone_info(s)?)?;
                manager(client, s).await
            }
            RedisTopology::Sentinel { .. } => {
                let client = sentinel_master(s).await?;
                let addr = client.get_connection_info().addr().to_string();
                let conn = manager(client, s).await?;
                if let Ok(mut master) = self.master.lock() {
                    *master = Some(addr);
                }
                Ok(conn)
            }
            RedisTopology::Cluster { nodes } => {
                let infos = nodes
                    .iter()
                    .map(|n| node_info(s, n))
                    .collect::<RedisResult<Vec<_>>>()?;
                let client = ClusterClient::builder(infos)
                    .connection_timeout(s.connect_timeout)
                    .response_timeout(s.command_timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

async fn manager(client: redis::Client, s: &RedisSettings) -> RedisResult<Conn> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(s.connect_timeout))
        .set_response_timeout(Some(s.command_timeout))
        // Reconnection happens in the background; requests meanwhile fail fast.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    Ok(Conn::Single(
        ConnectionManager::new_with_config(client, config).await?,
    ))
}

/// The standalone URL, with `username`/`password` (when set) overriding its own.
pub fn standalone_info(s: &RedisSettings) -> RedisResult<ConnectionInfo> {
    let info = s.url.as_str().into_connection_info()?;
    Ok(with_credentials(info, s))
}

fn with_credentials(info: ConnectionInfo, s: &RedisSettings) -> ConnectionInfo {
    let mut redis = info.redis_settings().clone();
    if let Some(user) = &s.username {
        redis = redis.set_username(user);
    }
    if let Some(password) = &s.password {
        redis = redis.set_password(password);
    }
    info.set_redis_settings(redis)
}

/// `host:port` as a connection to one node, with the configured credentials and TLS.
fn node_info(s: &RedisSettings, server: &str) -> RedisResult<ConnectionInfo> {
    let (host, port) = split_host_port(server)?;
    node_addr_info(s, host.to_owned(), port)
}

fn node_addr_info(s: &RedisSettings, host: String, port: u16) -> RedisResult<ConnectionInfo> {
    let addr = if s.tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    };
    Ok(with_credentials(addr.into_connection_info()?, s))
}

fn split_host_port(server: &str) -> RedisResult<(&str, u16)> {
    let bad = || {
        RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "not host:port",
            server.to_owned(),
        ))
    };
    let (host, port) = server.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse::<u16>().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host, port))
}

/// A client for the server the blocking session commands (`sessiongate
/// session ...`) talk to: the standalone server or the current master.
pub fn blocking_client(s: &RedisSettings) -> RedisResult<redis::Client> {
    match &s.topology {
        RedisTopology::Standalone => redis::Client::open(standalone_info(s)?),
        RedisTopology::Sentinel { .. } => sentinel_client(s)?.get_client(),
        RedisTopology::Cluster { .. } => Err(RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "the session commands do not support mode = \"cluster\" yet",
        ))),
    }
}

/// A client for the master the Sentinels name now.
async fn sentinel_master(s: &RedisSettings) -> RedisResult<redis::Client> {
    let mut client = sentinel_client(s)?;
    let limit = s.connect_timeout.max(Duration::from_millis(500));
    match tokio::time::timeout(limit, client.async_get_client()).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from((
            redis::ErrorKind::Io,
            "the sentinels did not answer in time",
        ))),
    }
}

fn sentinel_client(s: &RedisSettings) -> RedisResult<redis::sentinel::SentinelClient> {
    let RedisTopology::Sentinel { sentinels, master } = &s.topology else {
        return Err(RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "not in sentinel mode",
        )));
    };
    let addrs = sentinels
        .iter()
        .map(|server| {
            let (host, port) = split_host_port(server)?;
            Ok(ConnectionAddr::Tcp(host.to_owned(), port))
        })
        .collect::<RedisResult<Vec<_>>>()?;
    let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?;
    if s.tls {
        builder = builder
            .set_client_to_sentinel_tls_mode(TlsMode::Secure)
            .set_client_to_redis_tls_mode(TlsMode::Secure);
    }
    if let Some(user) = &s.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = &s.password {
        builder = builder.set_client_to_redis_password(password);
    }
    builder.build()
}

/// The servers whose keyspace notifications cover every session key: the
/// standalone server, the current sentinel-managed master, or every cluster master.
pub async fn notification_nodes(s: &RedisSettings) -> Result<Vec<redis::Client>, String> {
    match &s.topology {
        RedisTopology::Standalone => {
            let info = standalone_info(s).map_err(|e| e.to_string())?;
            Ok(vec![redis::Client::open(info).map_err(|e| e.to_string())?])
        }
        RedisTopology::Sentinel { .. } => Ok(vec![sentinel_master(s)
            .await
            .map_err(|e| format!("asking the sentinels for the master: {e}"))?]),
        RedisTopology::Cluster { nodes } => {
            let mut last = String::from("no cluster node listed");
            for node in nodes {
                match cluster_masters(s, node).await {
                    Ok(masters) => {
                        return masters
                            .into_iter()
                            .map(|(host, port)| {
                                node_addr_info(s, host, port)
                                    .and_then(redis::Client::open)
                                    .map_err(|e| e.to_string())
                            })
                            .collect();
                    }
                    Err(e) => last = format!("{node}: {e}"),
                }
            }
            Err(format!("no cluster node answered CLUSTER SLOTS ({last})"))
        }
    }
}

/// The notification servers as `host:port`, to notice a failover or a resharding.
pub fn node_names(clients: &[redis::Client]) -> Vec<String> {
    let mut names: Vec<String> = clients
        .iter()
        .map(|c| c.get_connection_info().addr().to_string())
        .collect();
    names.sort();
    names
}

/// The masters a cluster node reports (`CLUSTER SLOTS`), deduplicated.
async fn cluster_masters(s: &RedisSettings, node: &str) -> Result<Vec<(String, u16)>, String> {
    let info = node_info(s, node).map_err(|e| e.to_string())?;
    let (seed_host, _) = split_host_port(node).map_err(|e| e.to_string())?;
    let client = redis::Client::open(info).map_err(|e| e.to_string())?;
    let limit = s.connect_timeout.max(Duration::from_millis(500));
    let slots: Value = tokio::time::timeout(limit, async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async::<Value>(&mut conn)
            .await
    })
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let mut masters: Vec<(String, u16)> = Vec::new();
    let Value::Array(ranges) = slots else {
        return Err("unexpected CLUSTER SLOTS reply".into());
    };
    for range in ranges {
        let Value::Array(items) = range else { continue };
        let Some(Value::Array(master)) = items.get(2) else {
            continue;
        };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(t)) => t.clone(),
            _ => continue,
        };
        // An empty or "?" host means "the address you reached me on".
        let host = if host.is_empty() || host == "?" {
            seed_host.to_owned()
        } else {
            host
        };
        let Some(Value::Int(port)) = master.get(1) else {
            continue;
        };
        let Ok(port) = u16::try_from(*port) else {
            continue;
        };
        if !masters.iter().any(|(h, p)| *h == host && *p == port) {
            masters.push((host, port));
        }
    }
    if masters.is_empty() {
        return Err("the cluster has no slots assigned".into());
    }
    Ok(masters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_is_split() {
        assert_eq!(
            split_host_port("10.0.0.7:26379").unwrap(),
            ("10.0.0.7", 26379)
        );
        assert_eq!(split_host_port("[::1]:7000").unwrap(), ("::1", 7000));
        assert!(split_host_port("redis").is_err());
    }
}
