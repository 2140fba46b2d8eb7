//! The resolve stage: the session behind a credential, from the cache or
//! Redis (and, while Redis is unreachable, from a session's last known good
//! state where a route allows it); a bearer JWT is verified first and its
//! token key must exist. Every Redis failure is a refusal, never "no session".

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use quick_cache::sync::Cache;
use sha2::{Digest, Sha256};

use crate::config::{Config, JwtSettings, StoreErrorPolicy, ValueFormat};
use crate::credential::jwt::JwtRejected;
use crate::credential::{Credential, CredentialSource};
use crate::identity::IdentityPlan;
use crate::labels::{LookupResult, LookupSource};
use crate::metrics;
use crate::reject::AuthFailure;
use crate::session::cache::{Lookup, Principal, SessionCache};
use crate::session::codec::{Fields, Wanted};
use crate::session::store::RawValue;
use crate::session::{RawSession, Session, SessionStore, StoreError};

use super::trace::{CredentialSeen, LookupSeen, Trace};

/// What the resolve stage found behind a credential.
pub(super) enum Resolved {
    /// A valid session; `stale`: Redis was unreachable and its last known
    /// good state stood in (`on_store_error = "stale"`).
    Found {
        principal: Arc<Principal>,
        stale: bool,
    },
    /// No valid session; `bearer`: the credential was a bearer token.
    Invalid { reason: AuthFailure, bearer: bool },
    /// Redis could not say.
    Unavailable,
}

/// Everything the resolve stage needs, compiled from one configuration.
pub(super) struct Resolver {
    store: Arc<dyn SessionStore>,
    cache: Arc<SessionCache>,
    identity: IdentityPlan,
    /// The session fields requests read (identity, roles, user): all a
    /// session document is decoded for.
    wanted: Wanted,
    jwt: Option<JwtSettings>,
    /// The profile's session table: key templates and transform, value
    /// format, sliding expiry, `require_user`.
    session: crate::config::SessionSettings,
    /// Where `expires_field` is among the wanted fields, when set.
    expires_slot: Option<usize>,
    /// The profile (index) this resolver checks credentials for.
    profile: usize,
    /// Bearer JWTs verified before, by their SHA-256: their token key, where
    /// the cache keeps the principal verified from exactly that token.
    token_keys: Option<Cache<[u8; 32], Arc<str>>>,
    /// The access log or `requests_per_user` reads a session's user.
    reads_user: bool,
    /// Some route has `on_store_error = "stale"`: keep last-known-good records.
    keep_last_good: bool,
    /// Whether anything uses a session's remaining lifetime (the cache bounds
    /// entries by it, stale answers and sliding expiry read it); when
    /// nothing does, lookups do not ask Redis for it.
    needs_ttl: bool,
}

impl Resolver {
    pub fn new(
        config: &Config,
        session: &crate::config::SessionSettings,
        profile: usize,
        identity: &IdentityPlan,
        store: Arc<dyn SessionStore>,
        cache: Arc<SessionCache>,
    ) -> Resolver {
        // Identity fields first, then roles, then the user: `principal_from`
        // reads the slots in this order.
        let wanted = Wanted::new(
            identity
                .fields()
                .chain([&session.role_field, &session.user_field])
                .chain(session.expires_field.as_ref()),
        );
        let expires_slot = session
            .expires_field
            .as_ref()
            .map(|_| wanted.slot(identity.len() + 2));
        let keep_last_good = config
            .routes
            .iter()
            .any(|r| r.on_store_error == StoreErrorPolicy::Stale);
        let token_keys = (config.jwt.is_some() && cache.enabled()).then(|| {
            Cache::new(usize::try_from(config.cache.max_entries.max(1)).unwrap_or(usize::MAX))
        });
        Resolver {
            needs_ttl: cache.enabled() || session.sliding.is_some() || keep_last_good,
            keep_last_good,
            reads_user: config.admin.access_log_user
                || config.rate_limit.requests_per_user.is_some(),
            store,
            cache,
            identity: identity.clone(),
            wanted,
            token_keys,
            jwt: config.jwt.clone(),
            session: session.clone(),
            expires_slot,
            profile,
        }
    }

    /// The session behind a cookie or opaque bearer id. When Redis is
    /// unreachable and `stale_allowed()` (every matched route says
    /// `on_store_error = "stale"`; asked only then), the session's last
    /// known good state. `route` names the route in logs.
    pub async fn credential<T: Trace>(
        &self,
        credential: &Credential,
        stale_allowed: impl FnOnce() -> bool + Send,
        route: &str,
        trace: &mut T,
    ) -> Resolved {
        let bearer = credential.source == CredentialSource::Bearer;
        let (template, key) = match (&self.session.bearer_key, credential.source) {
            (Some(bearer_key), CredentialSource::Bearer) => {
                (bearer_key, Some(bearer_key.render(credential.id.as_str())))
            }
            // The cookie's id, through the table's `id_transform`.
            _ => (
                &self.session.key,
                self.session.session_key(credential.id.as_str()),
            ),
        };
        let Some(key) = key else {
            return Resolved::Invalid {
                reason: AuthFailure::BadCredential,
                bearer,
            };
        };
        let resolved = self.lookup(&key, T::DRY_RUN).await;
        trace.lookup(LookupSeen::Session {
            template,
            id: credential.id.as_str(),
            resolved: &resolved,
        });
        match resolved {
            Ok((Lookup::Found(principal), _)) => {
                if !T::DRY_RUN {
                    self.slide(key, &principal);
                }
                Resolved::Found {
                    principal,
                    stale: false,
                }
            }
            Ok((Lookup::Invalid(reason), _)) => Resolved::Invalid { reason, bearer },
            Err(e) => {
                tracing::warn!(route, error = %e, "session store error");
                if !(e.is_unreachable() && stale_allowed()) {
                    return Resolved::Unavailable;
                }
                // Only a session resolved within `stale_for` (and not
                // revoked since); nothing is cached or touched meanwhile.
                let stale = self.cache.stale(&key);
                if !T::DRY_RUN {
                    let result = match stale {
                        Some(_) => LookupResult::Hit,
                        None => LookupResult::Miss,
                    };
                    metrics::session_lookup(LookupSource::Stale, result);
                }
                match stale {
                    Some(principal) => {
                        trace.note(
                            "redis is unreachable: the session's last known good state \
                             decides (on_store_error = \"stale\")",
                        );
                        Resolved::Found {
                            principal,
                            stale: true,
                        }
                    }
                    None => Resolved::Unavailable,
                }
            }
        }
    }

    /// A bearer JWT: verified against `[jwt]`, then its token key must exist
    /// in Redis. The principal (from the token's claims and the key's value)
    /// is cached under the token key for exactly this token, until the
    /// earliest of its `exp`, the key's TTL and `max_age`, and evicted by any
    /// change of the key like a session; a token seen again skips the
    /// signature check and Redis.
    pub async fn token<T: Trace>(&self, token: &str, route: &str, trace: &mut T) -> Resolved {
        let invalid = |reason| Resolved::Invalid {
            reason,
            bearer: true,
        };
        let Some(jwt) = &self.jwt else {
            return invalid(AuthFailure::BadCredential);
        };
        let digest: [u8; 32] = match &self.token_keys {
            Some(_) if !T::DRY_RUN => Sha256::digest(token.as_bytes()).into(),
            _ => [0; 32],
        };
        if let Some(principal) = self.cached_token(&digest).filter(|_| !T::DRY_RUN) {
            metrics::session_lookup(LookupSource::Cache, LookupResult::Hit);
            return Resolved::Found {
                principal,
                stale: false,
            };
        }
        let verified = jwt.verifier.verify(token);
        trace.credential(CredentialSeen {
            source: "bearer",
            format: Some("jwt"),
            check: verified.as_ref().map_or_else(|e| e.as_str(), |_| "ok"),
            secret_index: None,
            id: verified.as_ref().ok().map(|v| v.id.as_str()),
        });
        let verified = match verified {
            Ok(verified) => verified,
            Err(e) => {
                tracing::debug!(reason = e.as_str(), "bearer token refused: {e}");
                return invalid(match e {
                    JwtRejected::Expired => AuthFailure::Expired,
                    JwtRejected::ClaimMismatch => AuthFailure::ClaimMismatch,
                    _ => AuthFailure::BadCredential,
                });
            }
        };
        let key = jwt.key.render(verified.id.as_str());
        let before = self.cache.lookup_version(&key);
        let ttl = self.needs_ttl || T::DRY_RUN;
        let mut fetched = self.store.fetch(&key, ValueFormat::Json, ttl).await;
        if let Err(StoreError::WrongType) = fetched {
            // An app that keeps its token keys as hashes.
            fetched = self.store.fetch(&key, ValueFormat::Hash, ttl).await;
        }
        trace.lookup(LookupSeen::Token {
            template: &jwt.key,
            id: verified.id.as_str(),
            fetched: &fetched,
        });
        match fetched {
            Ok(Some(raw)) => {
                let session = Session::from_token(verified.claims, raw);
                let principal = self.principal(&key, &session);
                let ends_at = instant_of(verified.valid_until.saturating_add(1));
                let principal = Arc::new(self.cache.token_principal(principal, digest, ends_at));
                if let (Some(token_keys), false) = (&self.token_keys, T::DRY_RUN) {
                    metrics::session_lookup(LookupSource::Cache, LookupResult::Miss);
                    self.cache.fill(&key, &principal, before);
                    token_keys.insert(digest, key.into());
                }
                Resolved::Found {
                    principal,
                    stale: false,
                }
            }
            Ok(None) => invalid(AuthFailure::Revoked),
            Err(StoreError::WrongType) => invalid(AuthFailure::Unreadable),
            Err(e) => {
                tracing::warn!(route, error = %e, "session store error");
                Resolved::Unavailable
            }
        }
    }

    /// The principal cached for the token whose SHA-256 is `digest`, while
    /// its `exp` has not passed.
    fn cached_token(&self, digest: &[u8; 32]) -> Option<Arc<Principal>> {
        let key = self.token_keys.as_ref()?.get(digest)?;
        let principal = self.cache.token_hit(&key, digest)?;
        principal
            .ends_at
            .is_some_and(|at| at > Instant::now())
            .then_some(principal)
    }

    /// The session at `key`: from the cache when it holds it, else from
    /// Redis (and then cached). With a `stale` route, every answer also
    /// updates the key's last known good. With `read_only` (`explain`), the
    /// cache is only read, never filled.
    async fn lookup(
        &self,
        key: &str,
        read_only: bool,
    ) -> Result<(Lookup, LookupSource), StoreError> {
        if read_only {
            return match self.cache.peek(key) {
                Some(lookup) => Ok((lookup, LookupSource::Cache)),
                None => Ok((self.load(key, true).await?, LookupSource::Redis)),
            };
        }
        if !self.keep_last_good {
            return self
                .cache
                .get_or_load(key, || self.load(key, self.needs_ttl))
                .await;
        }
        let before = self.cache.lookup_version(key);
        let result = self
            .cache
            .get_or_load(key, || self.load(key, self.needs_ttl))
            .await;
        if let Ok((lookup, _)) = &result {
            self.cache.remember_good(key, lookup, before);
        }
        result
    }

    /// Sliding expiry: once a session's remaining TTL has fallen more than
    /// `touch_after` below `ttl`, reset it, off the request's path. The
    /// principal is marked first, so concurrent requests do not touch again.
    fn slide(&self, key: String, principal: &Principal) {
        let Some(sliding) = self.session.sliding else {
            return;
        };
        let Some(remaining) = self.cache.remaining(principal) else {
            return;
        };
        if sliding.ttl.saturating_sub(remaining) <= sliding.touch_after {
            return;
        }
        self.cache.touched(principal, sliding.ttl);
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch(&key, sliding.ttl).await {
                tracing::warn!(error = %e, "sliding expiry: could not reset a session's TTL");
            }
        });
    }

    /// The session at `key`, read from Redis; with `ttl`, its remaining
    /// lifetime too.
    async fn load(&self, key: &str, ttl: bool) -> Result<Lookup, StoreError> {
        let format = self.session.value;
        let raw = match self.store.fetch(key, format, ttl).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(Lookup::Invalid(AuthFailure::NotFound)),
            Err(StoreError::WrongType) => return Ok(Lookup::Invalid(AuthFailure::Unreadable)),
            Err(e) => return Err(e),
        };
        let fields = match (raw.value, format) {
            (RawValue::String(bytes), ValueFormat::Json) => self.wanted.decode_json(&bytes),
            (_, ValueFormat::Exists) => Ok(self.wanted.read(&Session::exists(None))),
            (value, format) => Session::decode(
                RawSession {
                    value,
                    ttl_ms: None,
                },
                format,
            )
            .map(|session| self.wanted.read(&session)),
        };
        Ok(match fields {
            Ok(fields) => self.admit(key, fields, raw.ttl_ms.map(Duration::from_millis)),
            Err(_) => Lookup::Invalid(AuthFailure::Unreadable),
        })
    }

    /// A session read from Redis, unless it is one the app would not take
    /// as a login: no user (`require_user`), or past the expiry date kept
    /// in its value (`expires_field`), which also bounds how long it is cached.
    fn admit(&self, key: &str, fields: Fields, ttl: Option<Duration>) -> Lookup {
        let user = fields.text(self.wanted.slot(self.identity.len() + 1));
        if self.session.require_user && user.is_none_or(str::is_empty) {
            return Lookup::Invalid(AuthFailure::Anonymous);
        }
        let mut ttl = ttl;
        if let Some(at) = self
            .expires_slot
            .and_then(|slot| fields.text(slot))
            .and_then(stored_date)
        {
            match at.duration_since(SystemTime::now()) {
                Ok(left) if !left.is_zero() => ttl = Some(ttl.map_or(left, |t| t.min(left))),
                _ => return Lookup::Invalid(AuthFailure::Expired),
            }
        }
        Lookup::Found(Arc::new(self.principal_from(key, fields, ttl)))
    }

    /// Extracts what requests need from a session document.
    fn principal(&self, key: &str, session: &Session) -> Principal {
        self.principal_from(
            key,
            self.wanted.read(session),
            session.ttl_ms.map(Duration::from_millis),
        )
    }

    /// Builds the principal from a session's wanted fields (see `new` for
    /// their order).
    fn principal_from(&self, key: &str, mut fields: Fields, ttl: Option<Duration>) -> Principal {
        let headers = self.identity.len();
        let identity = self
            .identity
            .values(|index| fields.text(self.wanted.slot(index)));
        // The user the access log shows and `requests_per_user` counts.
        let user = self
            .reads_user
            .then(|| {
                fields
                    .text(self.wanted.slot(headers + 1))
                    .map(str::to_owned)
            })
            .flatten();
        let roles = fields.take_texts(self.wanted.slot(headers));
        let mut principal = self.cache.principal(key, identity, roles, user, ttl);
        principal.profile = self.profile;
        principal
    }
}

/// The instant Unix time `secs` comes (now, if it has passed).
fn instant_of(secs: u64) -> Instant {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Instant::now() + Duration::from_secs(secs).saturating_sub(now)
}

/// A date as JavaScript's `Date#toJSON` writes it (RFC 3339, e.g.
/// `2026-11-23T06:09:29.370Z`).
fn stored_date(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text)
        .or_else(|_| humantime::parse_rfc3339_weak(text))
        .ok()
}
