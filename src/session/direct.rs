//! Session lookups on plain connections owned by the worker thread that
//! uses them: no multiplexer, no driver task, no channel per command. A
//! lookup takes an idle connection of its thread (or opens one), writes
//! `GET key` and `PTTL key` in one write, reads the two replies and gives
//! the connection back. redis-rs still encodes the commands and parses the
//! replies; only its connection machinery is left out.
//!
//! Used for the session lookup of a standalone Redis over plain TCP (the
//! common deployment); TLS, Sentinel and Cluster keep the managed
//! connection. A lookup that fails or is cancelled (its timeout) drops its
//! connection, so no reply is ever read by the wrong request.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo, RedisError, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{RedisSettings, RedisTopology};
use crate::session::topology::standalone_info;

/// Idle connections kept per worker thread and store.
const IDLE_PER_THREAD: usize = 64;

/// A reply larger than this is refused (a session value is a few KiB).
const MAX_REPLY: usize = 16 * 1024 * 1024;

/// Where and how to connect, and the handshake to send first.
#[derive(Debug)]
pub struct Direct {
    /// Tells this store's idle connections from another's (a reload makes
    /// a new store; its connections may differ in credentials or db).
    id: u64,
    host: String,
    port: u16,
    /// AUTH and SELECT as needed, packed; and how many replies they get.
    handshake: Vec<u8>,
    handshake_replies: usize,
}

/// Why a direct lookup failed.
#[derive(Debug)]
pub enum Failed {
    Timeout(Duration),
    Redis(RedisError),
}

impl From<RedisError> for Failed {
    fn from(e: RedisError) -> Failed {
        Failed::Redis(e)
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

thread_local! {
    static IDLE: RefCell<Vec<(u64, Conn)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Direct {
    /// `None` when the settings need the managed connection.
    pub fn new(settings: &RedisSettings) -> Option<Direct> {
        if settings.topology != RedisTopology::Standalone || settings.tls {
            return None;
        }
        let info = standalone_info(settings)
            .or_else(|_| settings.url.as_str().into_connection_info())
            .ok()?;
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let redis = info.redis_settings();
        let mut handshake = Vec::new();
        let mut handshake_replies = 0;
        if let Some(password) = redis.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = redis.username() {
                auth.arg(user);
            }
            auth.arg(password);
            handshake.extend(auth.get_packed_command());
            handshake_replies += 1;
        }
        if redis.db() != 0 {
            handshake.extend(redis::cmd("SELECT").arg(redis.db()).get_packed_command());
            handshake_replies += 1;
        }
        Some(Direct {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            host: host.clone(),
            port: *port,
            handshake,
            handshake_replies,
        })
    }

    /// GET and PTTL of `key` in one round trip: the value (`None`: no such
    /// key) and the PTTL reply. A new connection may take `connect_timeout`,
    /// the commands `command_timeout`.
    pub async fn get_with_pttl(
        &self,
        key: &str,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<(Option<Vec<u8>>, i64), Failed> {
        // A kept connection may have been closed by Redis (a restart, its
        // idle timeout) since its last use: then the lookup, which is
        // harmless to repeat, is tried once more on a new connection.
        let (conn, replies) = match self.checkout() {
            Some(mut conn) => match round_trip(&mut conn, key, command_timeout).await {
                Ok(replies) => (conn, replies),
                Err(Failed::Redis(e)) if e.is_io_error() => {
                    tracing::debug!(error = %e, "a kept redis connection failed; retrying on a new one");
                    let mut conn = self.connect_within(connect_timeout).await?;
                    let replies = round_trip(&mut conn, key, command_timeout).await?;
                    (conn, replies)
                }
                Err(e) => return Err(e),
            },
            None => {
                let mut conn = self.connect_within(connect_timeout).await?;
                let replies = round_trip(&mut conn, key, command_timeout).await?;
                (conn, replies)
            }
        };
        let mut replies = replies.into_iter();
        let value = match replies.next() {
            Some(Value::Nil) => None,
            Some(Value::BulkString(bytes)) => Some(bytes),
            Some(Value::ServerError(e)) => return Err(Failed::Redis(e.into())),
            other => return Err(Failed::Redis(unexpected("GET", other))),
        };
        let pttl = match replies.next() {
            Some(Value::Int(pttl)) => pttl,
            Some(Value::ServerError(e)) => return Err(Failed::Redis(e.into())),
            other => return Err(Failed::Redis(unexpected("PTTL", other))),
        };
        self.checkin(conn);
        Ok((value, pttl))
    }

    async fn connect_within(&self, limit: Duration) -> Result<Conn, Failed> {
        tokio::time::timeout(limit, self.connect())
            .await
            .map_err(|_| Failed::Timeout(limit))?
            .map_err(Failed::Redis)
    }

    async fn connect(&self) -> Result<Conn, RedisError> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: Vec::with_capacity(1024),
        };
        if self.handshake_replies > 0 {
            conn.stream.write_all(&self.handshake).await?;
            for reply in conn.read_replies(self.handshake_replies).await? {
                if let Value::ServerError(e) = reply {
                    return Err(e.into());
                }
            }
        }
        Ok(conn)
    }

    fn checkout(&self) -> Option<Conn> {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let i = idle.iter().rposition(|(id, _)| *id == self.id)?;
            Some(idle.swap_remove(i).1)
        })
    }

    fn checkin(&self, conn: Conn) {
        IDLE.with(|idle| {
            let mut idle = idle.borrow_mut();
            let mine = idle.iter().filter(|(id, _)| *id == self.id).count();
            if mine < IDLE_PER_THREAD {
                idle.push((self.id, conn));
            }
        });
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        // This thread's idle connections of a replaced store are closed;
        // other threads' go when they next look (never, for an old id: they
        // are bounded by IDLE_PER_THREAD and closed at exit).
        let id = self.id;
        let _ = IDLE.try_with(|idle| {
            if let Ok(mut idle) = idle.try_borrow_mut() {
                idle.retain(|(other, _)| *other != id);
            }
        });
    }
}

/// Writes GET and PTTL of `key` and reads both replies, within `limit`.
async fn round_trip(conn: &mut Conn, key: &str, limit: Duration) -> Result<Vec<Value>, Failed> {
    let exchange = async {
        let command = redis::pipe().get(key).pttl(key).get_packed_pipeline();
        conn.stream.write_all(&command).await?;
        conn.read_replies(2).await
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| Failed::Timeout(limit))?
        .map_err(Failed::Redis)
}

impl Conn {
    /// Reads until `n` whole replies are in the buffer and returns them.
    async fn read_replies(&mut self, n: usize) -> Result<Vec<Value>, RedisError> {
        self.buf.clear();
        loop {
            if let Some(values) = parse(&self.buf, n) {
                return values;
            }
            if self.buf.len() > MAX_REPLY {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "redis reply too large",
                )));
            }
            self.buf.reserve(4096);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                )));
            }
        }
    }
}

/// `n` replies parsed from `buf`; `None` while they are not all there.
/// Redis sends valid RESP, so a parse failure means "more bytes to come";
/// a reply that never completes ends at the command timeout.
fn parse(buf: &[u8], n: usize) -> Option<Result<Vec<Value>, RedisError>> {
    if !buf.ends_with(b"\r\n") {
        return None;
    }
    let mut parser = redis::Parser::new();
    let mut rest = buf;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        match parser.parse_value(&mut rest) {
            Ok(value) => values.push(value),
            Err(_) => return None,
        }
    }
    Some(Ok(values))
}

fn unexpected(command: &str, reply: Option<Value>) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("unexpected reply to {command}: {reply:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_parsed_only_once_all_are_whole() {
        let both = b"$5\r\nhello\r\n:1500\r\n";
        for cut in 0..both.len() {
            assert!(parse(&both[..cut], 2).is_none(), "{cut}");
        }
        let values = parse(both, 2).unwrap().unwrap();
        assert_eq!(
            values,
            vec![Value::BulkString(b"hello".to_vec()), Value::Int(1500)]
        );
        let missing = parse(b"$-1\r\n:-2\r\n", 2).unwrap().unwrap();
        assert_eq!(missing, vec![Value::Nil, Value::Int(-2)]);
        // A value that itself holds CRLF is not cut short.
        let tricky = parse(b"$4\r\n\r\n\r\n\r\n:1\r\n", 2).unwrap().unwrap();
        assert_eq!(tricky[0], Value::BulkString(b"\r\n\r\n".to_vec()));
        assert!(parse(b"$4\r\n\r\n\r\n", 2).is_none());
    }

    #[test]
    fn only_plain_standalone_redis_is_direct() {
        let mut settings = RedisSettings {
            url: "redis://:pw@127.0.0.1:6390/2".to_owned(),
            command_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(1),
            topology: RedisTopology::Standalone,
            username: None,
            password: None,
            tls: false,
        };
        let direct = Direct::new(&settings).expect("direct");
        assert_eq!((direct.host.as_str(), direct.port), ("127.0.0.1", 6390));
        assert_eq!(direct.handshake_replies, 2);
        settings.tls = true;
        assert!(Direct::new(&settings).is_none());
        settings.tls = false;
        settings.url = "rediss://127.0.0.1:6390".to_owned();
        assert!(Direct::new(&settings).is_none());
    }
}
