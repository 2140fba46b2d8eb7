//! Operator actions on sessions, run by the `sessiongate session ...` command
//! against the configured Redis: mint a session an app would accept, show one,
//! revoke one, list a user's sessions, or end all of them.
//!
//! A user's sessions are found through the Redis set named by `[session]
//! user_sessions_key` (and `user_tokens_key` for bearer JWTs), the set apps
//! keep for "log out everywhere". `create` adds to it; revocations remove from it.

use std::time::{Duration, SystemTime};

use rand::distr::{Alphanumeric, SampleString};
use redis::Commands;
use serde_json::{json, Map, Value};

use crate::config::{Config, CookieFormat, IdTransform, KeyTemplate, ValueFormat};
use crate::credential::cookie::{express_sign, fastify_sign};
use crate::session::codec::Session;
use crate::session::store::{RawSession, RawValue};

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("cannot reach redis at {url}: {source}")]
    Unreachable {
        /// The Redis URL with its password redacted.
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("redis at {url} answered with an error: {source}")]
    Redis {
        /// The Redis URL with its password redacted.
        url: String,
        #[source]
        source: redis::RedisError,
    },
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
            ManageError::Unreachable { .. } | ManageError::Redis { .. } => 3,
        }
    }
}

pub struct Manager<'c> {
    config: &'c Config,
    conn: redis::Connection,
    /// The Redis URL with its password redacted, for messages.
    url: String,
}

/// A freshly minted session.
pub struct Created {
    pub id: String,
    /// The `Cookie` header value a browser would send.
    pub cookie: String,
}

/// What `revoke_user` ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Revoked {
    /// Session keys that existed and were deleted.
    pub sessions: u64,
    /// Token keys (bearer JWTs) that existed and were deleted.
    pub tokens: u64,
}

/// Whether a listed id is a session or a bearer JWT's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Session,
    Token,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Session => "session",
            Kind::Token => "token",
        }
    }
}

/// The remaining lifetime of a listed id's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Expires in this many milliseconds.
    Expires(u64),
    /// The key has no expiry.
    Persistent,
    /// The id is in the user's set but its key is gone (expired or deleted
    /// by something that did not update the set).
    Stale,
}

/// One id from a user's set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub kind: Kind,
    pub id: String,
    pub lifetime: Lifetime,
}

/// How long a CLI command may wait for one Redis reply.
const COMMAND_LIMIT: Duration = Duration::from_secs(5);

impl<'c> Manager<'c> {
    pub fn connect(config: &'c Config) -> Result<Manager<'c>, ManageError> {
        let url = crate::proxy::service::redact_url(&config.redis.url);
        let unreachable = |source| ManageError::Unreachable {
            url: url.clone(),
            source,
        };
        let client =
            crate::session::topology::blocking_client(&config.redis).map_err(unreachable)?;
        let conn = client
            .get_connection_with_timeout(config.redis.connect_timeout.max(Duration::from_secs(1)))
            .map_err(unreachable)?;
        // A Redis that accepts the connection and then hangs must not hang the command.
        let limit = Some(config.redis.command_timeout.max(COMMAND_LIMIT));
        conn.set_read_timeout(limit).map_err(unreachable)?;
        conn.set_write_timeout(limit).map_err(unreachable)?;
        Ok(Manager { config, conn, url })
    }

    /// A Redis error as the command reports it: connection problems (refused,
    /// dropped, timed out) are "unreachable", both name the redacted URL.
    fn fail(&self, source: redis::RedisError) -> ManageError {
        let url = self.url.clone();
        if source.is_io_error()
            || source.is_connection_refusal()
            || source.is_connection_dropped()
            || source.is_timeout()
        {
            ManageError::Unreachable { url, source }
        } else {
            ManageError::Redis { url, source }
        }
    }

    /// The members of the set at `key` that are text (ids always are).
    fn members(&mut self, key: &str) -> Result<Vec<String>, ManageError> {
        let members: Vec<Vec<u8>> = self.conn.smembers(key).map_err(|e| self.fail(e))?;
        Ok(members
            .into_iter()
            .filter_map(|m| String::from_utf8(m).ok())
            .collect())
    }

    /// Where bearer JWTs of a user are listed and kept: (`user_tokens_key`, `[jwt] key`).
    fn user_tokens(&self) -> Option<(&'c KeyTemplate, &'c KeyTemplate)> {
        let set = self.config.session.user_tokens_key.as_ref()?;
        let key = &self.config.jwt.as_ref()?.key;
        Some((set, key))
    }

    /// Writes an express-session compatible session for `user` with extra
    /// `user.<key>` fields, valid for `ttl`. The user id goes at `user_field`
    /// (`user.id` by default); with `user_sessions_key` the new id is added to
    /// the user's set in the same transaction.
    pub fn create(
        &mut self,
        user: &str,
        fields: &[(String, String)],
        ttl: Duration,
    ) -> Result<Created, ManageError> {
        let session = &self.config.session;
        if session.value != ValueFormat::Json {
            return Err(ManageError::Invalid(
                "session create writes JSON sessions; this config reads hashes".into(),
            ));
        }
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1000);
        let expires = humantime::format_rfc3339_millis(SystemTime::now() + ttl).to_string();
        let mut doc = json!({
            "cookie": {
                "originalMaxAge": ttl_ms,
                "expires": expires,
                "secure": false,
                "httpOnly": true,
                "path": "/",
                "sameSite": "lax"
            },
        });
        if !fields.is_empty() {
            let profile: Map<String, Value> = fields
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            insert_at(&mut doc, &["user".to_owned()], Value::Object(profile))?;
        }
        insert_at(
            &mut doc,
            session.user_field.segments(),
            Value::String(user.to_owned()),
        )?;
        // express-session ids: 32 characters (uid-safe, 24 random bytes).
        let id = Alphanumeric.sample_string(&mut rand::rng(), 32);
        let key = session.key.render(&id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .pset_ex(&key, doc.to_string(), ttl_ms)
            .ignore();
        if let Some(set) = &session.user_sessions_key {
            pipe.sadd(set.render(user), &id).ignore();
        }
        let () = pipe.query(&mut self.conn).map_err(|e| self.fail(e))?;
        let value = match (session.cookie_format, session.secrets.first()) {
            (CookieFormat::Express, Some(secret)) => express_sign(&id, secret),
            (CookieFormat::Fastify, Some(secret)) => fastify_sign(&id, secret),
            _ => id.clone(),
        };
        Ok(Created {
            cookie: format!("{}={value}", session.cookie),
            id,
        })
    }

    /// The stored session and its remaining lifetime in seconds (-1: no expiry).
    pub fn show(&mut self, id: &str) -> Result<(Value, i64), ManageError> {
        let key = self
            .config
            .session
            .session_key(id)
            .ok_or(ManageError::NotFound)?;
        let ttl: i64 = self.conn.ttl(&key).map_err(|e| self.fail(e))?;
        let doc = match self.config.session.value {
            ValueFormat::Json => {
                let text: Option<String> = self.conn.get(&key).map_err(|e| self.fail(e))?;
                let text = text.ok_or(ManageError::NotFound)?;
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
            ValueFormat::Exists => {
                if ttl == -2 {
                    return Err(ManageError::NotFound);
                }
                Value::Null
            }
            format @ (ValueFormat::Msgpack
            | ValueFormat::Pickle
            | ValueFormat::Php
            | ValueFormat::PhpSerialize
            | ValueFormat::Flask
            | ValueFormat::Django) => {
                let bytes: Option<Vec<u8>> = self.conn.get(&key).map_err(|e| self.fail(e))?;
                let bytes = bytes.ok_or(ManageError::NotFound)?;
                Session::decode(
                    RawSession {
                        value: RawValue::String(bytes),
                        ttl_ms: None,
                    },
                    format,
                )
                .map_or(Value::String("(unreadable)".into()), |s| s.doc)
            }
            ValueFormat::Hash => {
                let fields: Vec<(String, String)> =
                    self.conn.hgetall(&key).map_err(|e| self.fail(e))?;
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
    /// With `user_sessions_key`, its id also leaves its user's set.
    pub fn revoke(&mut self, id: &str) -> Result<(), ManageError> {
        let session = &self.config.session;
        let key = session.session_key(id).ok_or(ManageError::NotFound)?;
        let user = match &session.user_sessions_key {
            Some(_) => self.user_of(&key)?,
            None => None,
        };
        let removed: u64 = self.conn.del(&key).map_err(|e| self.fail(e))?;
        if let (Some(set), Some(user)) = (&session.user_sessions_key, user) {
            let _: u64 = self
                .conn
                .srem(set.render(&user), id)
                .map_err(|e| self.fail(e))?;
        }
        if removed == 0 {
            return Err(ManageError::NotFound);
        }
        Ok(())
    }

    /// The user (`user_field`) of the session at `key`, if it exists and is readable.
    fn user_of(&mut self, key: &str) -> Result<Option<String>, ManageError> {
        let format = self.config.session.value;
        let value = match format {
            ValueFormat::Exists => None,
            ValueFormat::Hash => {
                let fields: Vec<(String, String)> =
                    self.conn.hgetall(key).map_err(|e| self.fail(e))?;
                (!fields.is_empty()).then_some(RawValue::Hash(fields))
            }
            _ => {
                let bytes: Option<Vec<u8>> = self.conn.get(key).map_err(|e| self.fail(e))?;
                bytes.map(RawValue::String)
            }
        };
        Ok(value
            .and_then(|value| {
                Session::decode(
                    RawSession {
                        value,
                        ttl_ms: None,
                    },
                    format,
                )
                .ok()
            })
            .and_then(|s| s.text(&self.config.session.user_field))
            .filter(|user| !user.is_empty()))
    }

    /// Ends every session of `user` (and every token, when `user_tokens_key`
    /// and `[jwt]` are configured): deletes the keys of the ids in the user's
    /// sets and removes those ids from the sets (which Redis then deletes).
    pub fn revoke_user(&mut self, user: &str) -> Result<Revoked, ManageError> {
        let sessions = user_sessions(self.config, "revoke-user")?;
        let mut revoked = Revoked {
            sessions: self.end_listed(
                sessions,
                (&self.config.session.key, self.config.session.id_transform),
                user,
            )?,
            tokens: 0,
        };
        if let Some((set, key)) = self.user_tokens() {
            revoked.tokens = self.end_listed(set, (key, IdTransform::Identity), user)?;
        }
        Ok(revoked)
    }

    /// Deletes the key of every id in `user`'s `set`, then takes those ids out
    /// of the set; returns how many keys existed. Ids added meanwhile (a login
    /// racing the revocation) stay listed.
    fn end_listed(
        &mut self,
        set: &KeyTemplate,
        (key, transform): (&KeyTemplate, IdTransform),
        user: &str,
    ) -> Result<u64, ManageError> {
        let set_key = set.render(user);
        let ids = self.members(&set_key)?;
        if ids.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = ids.iter().filter_map(|id| transform.key(key, id)).collect();
        let (ended, _): (u64, u64) = redis::pipe()
            .atomic()
            .del(&keys)
            .srem(&set_key, &ids)
            .query(&mut self.conn)
            .map_err(|e| self.fail(e))?;
        Ok(ended)
    }

    /// The ids in `user`'s session set (and token set, when configured) with
    /// their keys' remaining lifetimes, sorted by kind and id. Ids whose key is
    /// gone are listed as `Stale` and left in the set: listing changes nothing.
    pub fn list(&mut self, user: &str) -> Result<Vec<Listed>, ManageError> {
        let sessions = user_sessions(self.config, "list")?;
        let session = (&self.config.session.key, self.config.session.id_transform);
        let mut listed = self.list_set(Kind::Session, sessions, session, user)?;
        if let Some((set, key)) = self.user_tokens() {
            listed.extend(self.list_set(Kind::Token, set, (key, IdTransform::Identity), user)?);
        }
        Ok(listed)
    }

    fn list_set(
        &mut self,
        kind: Kind,
        set: &KeyTemplate,
        (key, transform): (&KeyTemplate, IdTransform),
        user: &str,
    ) -> Result<Vec<Listed>, ManageError> {
        let mut ids = self.members(&set.render(user))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let mut pipe = redis::pipe();
        for id in &ids {
            // An id the transform cannot take names no key: listed as stale.
            pipe.pttl(transform.key(key, id).unwrap_or_default());
        }
        let pttls: Vec<i64> = pipe.query(&mut self.conn).map_err(|e| self.fail(e))?;
        Ok(ids
            .into_iter()
            .zip(pttls)
            .map(|(id, pttl)| Listed {
                kind,
                id,
                lifetime: match pttl {
                    -1 => Lifetime::Persistent,
                    ms => u64::try_from(ms).map_or(Lifetime::Stale, Lifetime::Expires),
                },
            })
            .collect())
    }
}

/// `user_sessions_key`, or the error (exit code 2) that says `command` needs it.
pub fn user_sessions<'c>(
    config: &'c Config,
    command: &str,
) -> Result<&'c KeyTemplate, ManageError> {
    config.session.user_sessions_key.as_ref().ok_or_else(|| {
        ManageError::Invalid(format!(
            "`session {command}` needs `user_sessions_key` in [session] (the Redis set of each \
             user's session ids, e.g. \"user:{{user}}:sessions\")"
        ))
    })
}

/// Sets `value` at the dotted `path` of `doc`, creating objects on the way.
fn insert_at(doc: &mut Value, path: &[String], value: Value) -> Result<(), ManageError> {
    let conflict = || {
        ManageError::Invalid(format!(
            "cannot store the user at `{}`: another value of the session is in the way \
             (check `user_field` and the --field names)",
            path.join(".")
        ))
    };
    let Some((last, parents)) = path.split_last() else {
        return Err(conflict());
    };
    let mut at = doc;
    for segment in parents {
        let Value::Object(map) = at else {
            return Err(conflict());
        };
        at = map
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let Value::Object(map) = at else {
        return Err(conflict());
    };
    match (map.get_mut(last), value) {
        // `user` given both by --field and as a parent of `user_field`: merge.
        (Some(Value::Object(existing)), Value::Object(extra)) => existing.extend(extra),
        (Some(Value::Object(_)), _) => return Err(conflict()),
        (_, value) => {
            map.insert(last.clone(), value);
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn the_user_goes_where_user_field_points() {
        let mut doc = json!({"cookie": {}});
        let profile = json!({"role": "admin"});
        insert_at(&mut doc, &path("user"), profile).unwrap();
        insert_at(&mut doc, &path("user.id"), json!("1001")).unwrap();
        assert_eq!(doc["user"], json!({"role": "admin", "id": "1001"}));

        let mut doc = json!({"cookie": {}});
        insert_at(&mut doc, &path("passport.user"), json!("7")).unwrap();
        assert_eq!(doc["passport"]["user"], "7");

        let mut doc = json!({"cookie": {}});
        insert_at(&mut doc, &path("user"), json!({"role": "x"})).unwrap();
        let err = insert_at(&mut doc, &path("user.role.id"), json!("1")).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(insert_at(&mut doc, &path("user"), json!("1")).is_err());
    }
}
