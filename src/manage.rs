//! Operator actions on sessions, run by the `sessiongate session ...` command
//! against the configured Redis: mint a session an app would accept, show one,
//! revoke one.

use std::time::{Duration, SystemTime};

use rand::distr::{Alphanumeric, SampleString};
use redis::Commands;
use serde_json::{json, Map, Value};

use crate::config::{Config, CookieFormat, ValueFormat};
use crate::credential::cookie::express_sign;

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("cannot reach redis at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("no session with that id")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
}

impl ManageError {
    /// Exit codes scripts can rely on.
    pub fn exit_code(&self) -> u8 {
        match self {
            ManageError::NotFound => 1,
            ManageError::Invalid(_) => 2,
            ManageError::Unreachable { .. } | ManageError::Redis(_) => 3,
        }
    }
}

pub struct Manager<'c> {
    config: &'c Config,
    conn: redis::Connection,
}

/// A freshly minted session.
pub struct Created {
    pub id: String,
    /// The `Cookie` header value a browser would send.
    pub cookie: String,
}

impl<'c> Manager<'c> {
    pub fn connect(config: &'c Config) -> Result<Manager<'c>, ManageError> {
        let url = crate::proxy::service::redact_url(&config.redis.url);
        let unreachable = |source| ManageError::Unreachable {
            url: url.clone(),
            source,
        };
        let client = redis::Client::open(config.redis.url.as_str()).map_err(unreachable)?;
        let conn = client
            .get_connection_with_timeout(config.redis.connect_timeout.max(Duration::from_secs(1)))
            .map_err(unreachable)?;
        Ok(Manager { config, conn })
    }

    /// Writes an express-session compatible session for `user` with extra
    /// `user.<key>` fields, valid for `ttl`.
    pub fn create(
        &mut self,
        user: &str,
        fields: &[(String, String)],
        ttl: Duration,
    ) -> Result<Created, ManageError> {
        if self.config.session.value != ValueFormat::Json {
            return Err(ManageError::Invalid(
                "session create writes JSON sessions; this config reads hashes".into(),
            ));
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1000);
        let expires = humantime::format_rfc3339_millis(SystemTime::now() + ttl).to_string();
        let mut profile = Map::new();
        profile.insert("id".into(), Value::String(user.to_owned()));
        for (key, value) in fields {
            profile.insert(key.clone(), Value::String(value.clone()));
        }
        let doc = json!({
            "cookie": {
                "originalMaxAge": ttl_ms,
                "expires": expires,
                "secure": false,
                "httpOnly": true,
                "path": "/",
                "sameSite": "lax"
            },
            "user": Value::Object(profile),
        });
        // express-session ids: 32 characters (uid-safe, 24 random bytes).
        let id = Alphanumeric.sample_string(&mut rand::rng(), 32);
        let key = self.config.session.key.render(&id);
        let _: () = self.conn.pset_ex(&key, doc.to_string(), ttl_ms)?;
        let session = &self.config.session;
        let value = match (session.cookie_format, session.secrets.first()) {
            (CookieFormat::Express, Some(secret)) => express_sign(&id, secret),
            _ => id.clone(),
        };
        Ok(Created {
            cookie: format!("{}={value}", session.cookie),
            id,
        })
    }

    /// The stored session and its remaining lifetime in seconds (-1: no expiry).
    pub fn show(&mut self, id: &str) -> Result<(Value, i64), ManageError> {
        let key = self.config.session.key.render(id);
        let ttl: i64 = self.conn.ttl(&key)?;
        let doc = match self.config.session.value {
            ValueFormat::Json => {
                let text: Option<String> = self.conn.get(&key)?;
                let text = text.ok_or(ManageError::NotFound)?;
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
            ValueFormat::Hash => {
                let fields: Vec<(String, String)> = self.conn.hgetall(&key)?;
                if fields.is_empty() {
                    return Err(ManageError::NotFound);
                }
                Value::Object(
                    fields
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                )
            }
        };
        Ok((doc, ttl))
    }

    /// Deletes the session; the gateway refuses it from the next request on.
    pub fn revoke(&mut self, id: &str) -> Result<(), ManageError> {
        let key = self.config.session.key.render(id);
        let removed: u64 = self.conn.del(&key)?;
        if removed == 0 {
            return Err(ManageError::NotFound);
        }
        Ok(())
    }
}

/// Parses `--ttl` values like `1h` or `90s`.
pub fn parse_ttl(text: &str) -> Result<Duration, ManageError> {
    humantime::parse_duration(text)
        .map_err(|e| ManageError::Invalid(format!("bad --ttl {text:?}: {e}")))
}

/// Parses a `--field key=value` argument.
pub fn parse_field(text: &str) -> Result<(String, String), ManageError> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(ManageError::Invalid(format!(
            "bad --field {text:?}: expected key=value"
        ))),
    }
}
