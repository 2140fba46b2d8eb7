//! Logout at the edge. `POST [session] logout_path` ends the caller's session;
//! `POST logout_all_path` ends every session (and token) of the caller's user,
//! found through the Redis sets named by `user_sessions_key` / `user_tokens_key`.
//! Both are answered by the gateway itself, before route matching: 204 (or 303
//! to `logout_redirect`) with a `Set-Cookie` that clears the session cookie.
//!
//! Both are idempotent: without a session, or with an unknown one, they still
//! answer 204 and clear the cookie. Any other method gets 405 with
//! `Allow: POST`, so a link or an image cannot log anyone out, and a browser's
//! POST from another site (`Sec-Fetch-Site: cross-site`, or without that
//! header an `Origin` that is not the request's own) gets 403, so a form on
//! another site cannot either; clients that send neither (curl, apps) are
//! served. A Redis error is a 503 that leaves the cookie alone, so the client
//! can retry.
//!
//! Session ids are never logged; only how many keys a logout ended.

use std::fmt::Write as _;

use http::header::ORIGIN;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value};

use crate::config::{FieldPath, IdTransform, KeyTemplate, SessionSettings, ValueFormat};
use crate::credential::SessionId;
use crate::reject::Rendered;
use crate::route::target::normalise_host;
use crate::session::cache::SessionCache;
use crate::session::{Session, SessionStore, StoreError};

/// Which logout a request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    /// `logout_path`: the caller's own session (or token).
    Session,
    /// `logout_all_path`: every session and token of the caller's user.
    User,
}

impl LogoutScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LogoutScope::Session => "session",
            LogoutScope::User => "user",
        }
    }
}

/// Who is logging out, as the pipeline extracted it.
pub enum Caller {
    /// A session id, from the session cookie.
    Session(SessionId),
    /// A session id from an opaque bearer token (looked up under `bearer_key`).
    Opaque(SessionId),
    /// A verified bearer JWT: its token id and its claims.
    Token {
        id: SessionId,
        claims: Map<String, Value>,
    },
}

/// Where a bearer JWT's Redis key and its user's token set live.
#[derive(Debug, Clone)]
struct TokenKeys {
    /// `[jwt] key`: the Redis key of a token id.
    key: KeyTemplate,
    /// `[session] user_tokens_key`: the set of a user's token ids.
    user_set: Option<KeyTemplate>,
}

/// Logout, compiled from `[session]` once per configuration.
#[derive(Debug)]
pub struct Logout {
    path: Option<String>,
    all_path: Option<String>,
    redirect: Option<String>,
    /// The `Set-Cookie` value that clears the session cookie.
    set_cookie: String,
    user_field: FieldPath,
    session_key: KeyTemplate,
    /// How a cookie id names its key (the profile's `id_transform`).
    id_transform: IdTransform,
    /// `[session] bearer_key`: where opaque bearer ids live.
    bearer_key: Option<KeyTemplate>,
    value: ValueFormat,
    user_sessions: Option<KeyTemplate>,
    tokens: Option<TokenKeys>,
}

impl Logout {
    /// `None` when neither `logout_path` nor `logout_all_path` is configured.
    /// `token_key` is the Redis key of a bearer JWT's id (`[jwt] key`), when
    /// JWTs are accepted.
    pub fn for_session(
        session: &SessionSettings,
        token_key: Option<KeyTemplate>,
    ) -> Option<Logout> {
        if session.logout_path.is_none() && session.logout_all_path.is_none() {
            return None;
        }
        Some(Logout {
            path: session.logout_path.clone(),
            all_path: session.logout_all_path.clone(),
            redirect: session.logout_redirect.clone(),
            set_cookie: clear_cookie(session),
            user_field: session.user_field.clone(),
            session_key: session.key.clone(),
            id_transform: session.id_transform,
            bearer_key: session.bearer_key.clone(),
            value: session.value,
            user_sessions: session.user_sessions_key.clone(),
            tokens: token_key.map(|key| TokenKeys {
                key,
                user_set: session.user_tokens_key.clone(),
            }),
        })
    }

    /// Which logout `path` (normalised) asks for, if any.
    pub fn matches(&self, path: &str) -> Option<LogoutScope> {
        if self.path.as_deref() == Some(path) {
            Some(LogoutScope::Session)
        } else if self.all_path.as_deref() == Some(path) {
            Some(LogoutScope::User)
        } else {
            None
        }
    }

    /// Ends what `scope` asks for; returns how many session and token keys existed
    /// and were deleted. No caller (or an unknown session) ends nothing and is fine.
    pub async fn end(
        &self,
        scope: LogoutScope,
        caller: Option<Caller>,
        store: &dyn SessionStore,
        cache: &SessionCache,
    ) -> Result<u64, StoreError> {
        let Some(caller) = caller else {
            return Ok(0);
        };
        let key = match &caller {
            Caller::Opaque(id) => Some(
                self.bearer_key
                    .as_ref()
                    .unwrap_or(&self.session_key)
                    .render(id.as_str()),
            ),
            Caller::Session(id) => self.id_transform.key(&self.session_key, id.as_str()),
            Caller::Token { .. } => None,
        };
        let (own_key, own_id, own_set, user) = match caller {
            Caller::Session(id) | Caller::Opaque(id) => {
                // An id the profile's transform cannot take names no session.
                let Some(key) = key else {
                    return Ok(0);
                };
                let wants_user = self.user_sessions.is_some() || scope == LogoutScope::User;
                let user = if wants_user {
                    self.user_of(store, &key).await?
                } else {
                    None
                };
                (key, id, self.user_sessions.as_ref(), user)
            }
            Caller::Token { id, claims } => {
                // Tokens are only accepted when `[jwt]` is configured.
                let Some(tokens) = &self.tokens else {
                    return Ok(0);
                };
                let key = tokens.key.render(id.as_str());
                let wants_user = tokens.user_set.is_some() || scope == LogoutScope::User;
                let user = if wants_user {
                    self.token_user_of(store, &key, claims).await?
                } else {
                    None
                };
                (key, id, tokens.user_set.as_ref(), user)
            }
        };

        let mut keys = vec![own_key];
        // (set key, ids to remove from it)
        let mut removals: Vec<(String, Vec<String>)> = Vec::new();
        if let (Some(set), Some(user)) = (own_set, &user) {
            removals.push((set.render(user), vec![own_id.as_str().to_owned()]));
        }
        if let (LogoutScope::User, Some(user)) = (scope, &user) {
            if let Some(set) = &self.user_sessions {
                let set_key = set.render(user);
                let ids = store.set_members(&set_key).await?;
                keys.extend(
                    ids.iter()
                        .filter_map(|id| self.id_transform.key(&self.session_key, id)),
                );
                removals.push((set_key, ids));
            }
            if let Some(TokenKeys {
                key,
                user_set: Some(set),
            }) = &self.tokens
            {
                let set_key = set.render(user);
                let ids = store.set_members(&set_key).await?;
                keys.extend(ids.iter().map(|id| key.render(id)));
                removals.push((set_key, ids));
            }
        }
        keys.sort_unstable();
        keys.dedup();

        // Delete first: if removing the ids from the sets fails afterwards, the
        // sessions are already over and the sets only hold stale ids.
        let ended = store.delete(&keys).await?;
        // Redis's invalidation of the keys evicts them too; this makes the very next
        // request through this gateway see the logout, whatever the latency.
        for key in &keys {
            cache.invalidate(key).await;
        }
        for (set, ids) in &removals {
            // Removing every id read empties the set, and Redis deletes empty
            // sets; a session added meanwhile (a fresh login) stays listed.
            store.set_remove(set, ids).await?;
        }
        tracing::info!(scope = scope.as_str(), ended, "logout");
        Ok(ended)
    }

    /// The user of the session at `key` (`user_field`), if it exists and has one.
    async fn user_of(
        &self,
        store: &dyn SessionStore,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        match store.fetch(key, self.value, false).await {
            Ok(Some(raw)) => Ok(Session::decode(raw, self.value)
                .ok()
                .and_then(|session| session.text(&self.user_field))
                .filter(|user| !user.is_empty())),
            Ok(None) | Err(StoreError::WrongType) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The user (`user_field`) of a bearer JWT whose token key is `key`, looked
    /// up as identity headers see a token: in `{"claims": ..., "session": <the
    /// key's value>}`. `None` when the key is gone (the token is revoked already).
    async fn token_user_of(
        &self,
        store: &dyn SessionStore,
        key: &str,
        claims: Map<String, Value>,
    ) -> Result<Option<String>, StoreError> {
        let mut fetched = store.fetch(key, ValueFormat::Json, false).await;
        if let Err(StoreError::WrongType) = fetched {
            fetched = store.fetch(key, ValueFormat::Hash, false).await;
        }
        match fetched {
            Ok(Some(raw)) => Ok(Session::from_token(claims, raw)
                .text(&self.user_field)
                .filter(|user| !user.is_empty())),
            Ok(None) | Err(StoreError::WrongType) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The answer to a completed logout: 204, or 303 to `logout_redirect`,
    /// clearing the session cookie either way.
    pub fn done(&self) -> Rendered {
        let mut headers = vec![("set-cookie", self.set_cookie.clone())];
        let status = match &self.redirect {
            Some(url) => {
                headers.push(("location", url.clone()));
                StatusCode::SEE_OTHER
            }
            None => StatusCode::NO_CONTENT,
        };
        Rendered {
            status,
            headers,
            body: "",
        }
    }

    /// The answer to a logout path requested with another method than POST.
    pub fn method_not_allowed() -> Rendered {
        Rendered {
            status: StatusCode::METHOD_NOT_ALLOWED,
            headers: vec![("allow", "POST".to_owned())],
            body: r#"{"error":"method_not_allowed","message":"logout requires POST"}"#,
        }
    }
}

/// The origin a request was made to: what a browser's `Origin` says when a
/// page of this very site sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOrigin<'a> {
    scheme: &'a str,
    /// Canonical: lower case, no port, no trailing dot.
    host: &'a str,
    /// `None`: no port was named and the scheme has no default.
    port: Option<u16>,
}

impl<'a> RequestOrigin<'a> {
    /// `scheme` (`http`, or `https` behind a TLS-terminating proxy), the
    /// canonical `host`, and the port the request named (`None`: the
    /// scheme's default).
    pub fn new(scheme: &'a str, host: &'a str, port: Option<u16>) -> RequestOrigin<'a> {
        RequestOrigin {
            scheme,
            host,
            port: port.or_else(|| default_port(scheme)),
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else {
        None
    }
}

/// `authority` split into its host and its port text, if it has one.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        return match authority.split_once(']') {
            Some((v6, after)) => (&authority[..v6.len() + 1], after.strip_prefix(':')),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

/// The port a request named: in an absolute-form target's authority (which
/// wins over `Host`), else in its `Host` header; `None` when it named none.
pub fn authority_port(raw_target: &[u8], host: Option<&HeaderValue>) -> Option<u16> {
    let authority = match raw_target.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"http://") => {
            let rest = &raw_target[7..];
            let end = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            &rest[..end]
        }
        _ => host?.as_bytes(),
    };
    let authority = std::str::from_utf8(authority).ok()?;
    split_port(authority).1?.parse().ok()
}

/// Whether a logout POST with `headers` was sent by a page of another site
/// than `own`. `Sec-Fetch-Site` decides when a browser sends it: only
/// `same-origin`, `same-site` and `none` (typed by the user) pass. Without
/// it, an `Origin` must be `own` exactly (scheme, host and port); `Origin:
/// null` (a sandboxed frame, a `file:` page, a redirect across sites) names
/// no site and never is. A request with neither is not a browser's
/// (`curl`, an app's HTTP client) and passes.
pub fn cross_site(headers: &HeaderMap, own: &RequestOrigin<'_>) -> bool {
    let mut sites = headers.get_all("sec-fetch-site").iter().peekable();
    if sites.peek().is_some() {
        return sites
            .any(|site| !matches!(site.as_bytes(), b"same-origin" | b"same-site" | b"none"));
    }
    let mut origins = headers.get_all(ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return false;
    };
    // A browser sends one `Origin`; more than one is not a browser's word.
    if origins.next().is_some() {
        return true;
    }
    !origin.to_str().is_ok_and(|origin| is_origin(origin, own))
}

/// Whether the serialised origin `origin` (`scheme://host[:port]`) is `own`.
fn is_origin(origin: &str, own: &RequestOrigin<'_>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return false;
    }
    let (host, port) = split_port(authority);
    let port = match port {
        Some(port) => match port.parse::<u16>() {
            Ok(port) => Some(port),
            Err(_) => return false,
        },
        None => default_port(scheme),
    };
    scheme.eq_ignore_ascii_case(own.scheme)
        && port.is_some()
        && port == own.port
        && normalise_host(host).is_ok_and(|host| host == own.host)
}

/// The `Set-Cookie` value that makes a browser drop the session cookie: empty,
/// expired, with the `Path` and `Domain` it was set with (a cookie is only
/// replaced by one with the same name, path and domain).
pub fn clear_cookie(session: &SessionSettings) -> String {
    let mut value = format!("{}=; Path={}", session.cookie, session.cookie_path);
    if let Some(domain) = &session.cookie_domain {
        let _ = write!(value, "; Domain={domain}");
    }
    value.push_str("; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly");
    // Browsers ignore a prefixed cookie that is not Secure, even to delete it.
    if session.cookie.starts_with("__Secure-") || session.cookie.starts_with("__Host-") {
        value.push_str("; Secure");
    }
    value.push_str("; SameSite=Lax");
    value
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::config::CacheSettings;
    use crate::session::store::{RawSession, RawValue};

    /// Redis as a map of strings and a map of sets.
    #[derive(Default)]
    struct MemStore {
        strings: Mutex<HashMap<String, String>>,
        sets: Mutex<HashMap<String, HashSet<String>>>,
        down: bool,
    }

    impl MemStore {
        fn check(&self) -> Result<(), StoreError> {
            if self.down {
                Err(StoreError::Unavailable("down".into()))
            } else {
                Ok(())
            }
        }

        fn put(&self, key: &str, value: &str) {
            self.strings
                .lock()
                .unwrap()
                .insert(key.to_owned(), value.to_owned());
        }

        fn add(&self, set: &str, id: &str) {
            self.sets
                .lock()
                .unwrap()
                .entry(set.to_owned())
                .or_default()
                .insert(id.to_owned());
        }

        fn has(&self, key: &str) -> bool {
            self.strings.lock().unwrap().contains_key(key)
        }

        fn members(&self, set: &str) -> Vec<String> {
            let mut ids: Vec<String> = self
                .sets
                .lock()
                .unwrap()
                .get(set)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            ids.sort();
            ids
        }
    }

    #[async_trait]
    impl SessionStore for MemStore {
        async fn fetch(
            &self,
            key: &str,
            _format: ValueFormat,
            _ttl: bool,
        ) -> Result<Option<RawSession>, StoreError> {
            self.check()?;
            Ok(self.strings.lock().unwrap().get(key).map(|v| RawSession {
                value: RawValue::String(v.clone().into_bytes()),
                ttl_ms: None,
            }))
        }

        async fn ping(&self) -> Result<(), StoreError> {
            self.check()
        }

        async fn touch(&self, _key: &str, _ttl: Duration) -> Result<bool, StoreError> {
            self.check().map(|_| false)
        }

        async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
            self.check()?;
            let mut strings = self.strings.lock().unwrap();
            Ok(keys.iter().filter(|k| strings.remove(*k).is_some()).count() as u64)
        }

        async fn set_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
            self.check()?;
            Ok(self.members(key))
        }

        async fn set_remove(&self, key: &str, members: &[String]) -> Result<u64, StoreError> {
            self.check()?;
            let mut sets = self.sets.lock().unwrap();
            let Some(set) = sets.get_mut(key) else {
                return Ok(0);
            };
            let removed = members.iter().filter(|m| set.remove(*m)).count() as u64;
            if set.is_empty() {
                sets.remove(key);
            }
            Ok(removed)
        }
    }

    fn config(session_extra: &str) -> crate::config::Config {
        let text = format!(
            r#"[server]
listen = ["127.0.0.1:0"]

[redis]
url = "redis://127.0.0.1:6379/0"

[session]
cookie = "sid"
cookie_format = "plain"
{session_extra}

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]

[[route]]
path_prefix = "/"
upstream = "app"
"#
        );
        crate::config::parse("proxy.toml", &text, &|_| None).unwrap()
    }

    fn logout(session_extra: &str) -> Logout {
        Logout::for_session(&config(session_extra).session, None).unwrap()
    }

    fn cache() -> std::sync::Arc<SessionCache> {
        SessionCache::new(CacheSettings::default())
    }

    fn session(id: &str) -> Option<Caller> {
        Some(Caller::Session(SessionId::new(id.to_owned())))
    }

    const SETS: &str = r#"logout_path = "/auth/logout"
logout_all_path = "/auth/logout-all"
user_sessions_key = "user:{user}:sessions""#;

    #[test]
    fn no_logout_paths_no_logout() {
        assert!(Logout::for_session(&config("").session, None).is_none());
    }

    #[test]
    fn paths_match_exactly() {
        let l = logout(SETS);
        assert_eq!(l.matches("/auth/logout"), Some(LogoutScope::Session));
        assert_eq!(l.matches("/auth/logout-all"), Some(LogoutScope::User));
        assert_eq!(l.matches("/auth/logout/"), None);
        assert_eq!(l.matches("/auth"), None);
    }

    #[test]
    fn the_cookie_is_cleared_with_its_path_and_domain() {
        let l = logout("logout_path = \"/out\"");
        let done = l.done();
        assert_eq!(done.status, StatusCode::NO_CONTENT);
        assert_eq!(
            done.headers,
            vec![(
                "set-cookie",
                "sid=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; \
                 SameSite=Lax"
                    .to_owned()
            )]
        );
        let l = logout(
            "logout_path = \"/out\"\nlogout_redirect = \"/bye\"\ncookie_path = \"/app\"\n\
             cookie_domain = \".example.com\"",
        );
        let done = l.done();
        assert_eq!(done.status, StatusCode::SEE_OTHER);
        assert_eq!(
            done.headers[0].1,
            "sid=; Path=/app; Domain=.example.com; Expires=Thu, 01 Jan 1970 00:00:00 GMT; \
             Max-Age=0; HttpOnly; SameSite=Lax"
        );
        assert_eq!(done.headers[1], ("location", "/bye".to_owned()));

        let secure = config("logout_path = \"/out\"").session;
        let secure = SessionSettings {
            cookie: "__Host-sid".into(),
            ..secure
        };
        assert!(clear_cookie(&secure).contains("; Secure;"));
    }

    #[test]
    fn other_methods_are_told_to_post() {
        let r = Logout::method_not_allowed();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers, vec![("allow", "POST".to_owned())]);
    }

    #[tokio::test]
    async fn logout_ends_only_the_callers_session_and_unlists_it() {
        let l = logout(SETS);
        let store = MemStore::default();
        let cache = cache();
        store.put("sess:a", r#"{"user":{"id":"u1"}}"#);
        store.put("sess:b", r#"{"user":{"id":"u1"}}"#);
        store.put("sess:c", r#"{"user":{"id":"u2"}}"#);
        store.add("user:u1:sessions", "a");
        store.add("user:u1:sessions", "b");
        store.add("user:u2:sessions", "c");

        let ended = l
            .end(LogoutScope::Session, session("a"), &store, &cache)
            .await
            .unwrap();
        assert_eq!(ended, 1);
        assert!(!store.has("sess:a"));
        assert!(store.has("sess:b") && store.has("sess:c"));
        assert_eq!(store.members("user:u1:sessions"), ["b"]);

        // Idempotent: again, or with no session at all.
        let again = l.end(LogoutScope::Session, session("a"), &store, &cache);
        assert_eq!(again.await.unwrap(), 0);
        let none = l.end(LogoutScope::Session, None, &store, &cache);
        assert_eq!(none.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn logout_all_ends_every_session_of_the_user_only() {
        let l = logout(SETS);
        let store = MemStore::default();
        let cache = cache();
        for (id, user) in [("a", "u1"), ("b", "u1"), ("unlisted", "u1"), ("c", "u2")] {
            store.put(
                &format!("sess:{id}"),
                &format!(r#"{{"user":{{"id":"{user}"}}}}"#),
            );
        }
        store.add("user:u1:sessions", "a");
        store.add("user:u1:sessions", "b");
        store.add("user:u1:sessions", "gone");
        store.add("user:u2:sessions", "c");

        // The caller's own session ends even when the app did not list it.
        let ended = l
            .end(LogoutScope::User, session("unlisted"), &store, &cache)
            .await
            .unwrap();
        assert_eq!(ended, 3);
        assert!(!store.has("sess:a") && !store.has("sess:b") && !store.has("sess:unlisted"));
        assert!(store.members("user:u1:sessions").is_empty());
        assert!(store.has("sess:c"));
        assert_eq!(store.members("user:u2:sessions"), ["c"]);
    }

    #[tokio::test]
    async fn tokens_are_ended_with_their_user() {
        let mut config = config(&format!("{SETS}\nuser_field = \"claims.userId\""));
        // As `user_tokens_key` with a `[jwt]` table would set it.
        config.session.user_tokens_key = KeyTemplate::parse("user:{user}:tokens", "{user}");
        let token_key = KeyTemplate::parse("token:{id}", "{id}");
        let l = Logout::for_session(&config.session, token_key).unwrap();
        let store = MemStore::default();
        let cache = cache();
        store.put("token:t1", "{}");
        store.put("token:t2", "1");
        store.put("sess:s1", r#"{"user":{"id":"u1"}}"#);
        store.add("user:u1:tokens", "t1");
        store.add("user:u1:tokens", "t2");
        store.add("user:u1:sessions", "s1");

        let caller = |id: &str| {
            let claims = serde_json::json!({"userId": "u1", "tokenId": id});
            Some(Caller::Token {
                id: SessionId::new(id.to_owned()),
                claims: claims.as_object().cloned().unwrap_or_default(),
            })
        };
        let ended = l.end(LogoutScope::Session, caller("t1"), &store, &cache);
        assert_eq!(ended.await.unwrap(), 1);
        assert!(!store.has("token:t1") && store.has("token:t2"));
        assert_eq!(store.members("user:u1:tokens"), ["t2"]);

        let ended = l.end(LogoutScope::User, caller("t2"), &store, &cache);
        assert_eq!(ended.await.unwrap(), 2);
        assert!(!store.has("token:t2") && !store.has("sess:s1"));
        assert!(store.members("user:u1:tokens").is_empty());
        assert!(store.members("user:u1:sessions").is_empty());
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn sec_fetch_site_decides_when_a_browser_sends_it() {
        let own = RequestOrigin::new("http", "app.test", None);
        for site in ["same-origin", "same-site", "none"] {
            let h = headers(&[("sec-fetch-site", site), ("origin", "http://evil.test")]);
            assert!(!cross_site(&h, &own), "{site}");
        }
        for site in ["cross-site", "Same-Origin", "whatever"] {
            let h = headers(&[("sec-fetch-site", site), ("origin", "http://app.test")]);
            assert!(cross_site(&h, &own), "{site}");
        }
        let twice = headers(&[
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert!(cross_site(&twice, &own));
    }

    #[test]
    fn without_sec_fetch_site_the_origin_must_be_the_requests_own() {
        let own = RequestOrigin::new("http", "app.test", Some(8080));
        let passes = |origin: &'static str| !cross_site(&headers(&[("origin", origin)]), &own);
        assert!(passes("http://app.test:8080"));
        assert!(passes("HTTP://App.Test.:8080"));
        for refused in [
            "null",
            "http://app.test",
            "https://app.test:8080",
            "http://evil.test:8080",
            "http://app.test.evil.test:8080",
            "http://app.test:8080/path",
            "http://user@app.test:8080",
            "http://app.test:99999",
            "app.test:8080",
            "",
        ] {
            assert!(!passes(refused), "{refused:?}");
        }
        // No header at all: not a browser, served.
        assert!(!cross_site(&HeaderMap::new(), &own));
        let two = headers(&[
            ("origin", "http://app.test:8080"),
            ("origin", "http://app.test:8080"),
        ]);
        assert!(cross_site(&two, &own));

        // Default ports, and IPv6 literals.
        let https = RequestOrigin::new("https", "app.test", None);
        assert!(!cross_site(
            &headers(&[("origin", "https://app.test:443")]),
            &https
        ));
        assert!(cross_site(
            &headers(&[("origin", "http://app.test:443")]),
            &https
        ));
        let v6 = RequestOrigin::new("http", "[::1]", Some(8080));
        assert!(!cross_site(
            &headers(&[("origin", "http://[::1]:8080")]),
            &v6
        ));
        assert!(cross_site(&headers(&[("origin", "http://[::1]")]), &v6));
    }

    #[test]
    fn the_port_is_the_absolute_targets_else_the_host_headers() {
        let host = HeaderValue::from_static("app.test:8080");
        assert_eq!(authority_port(b"/auth/logout", Some(&host)), Some(8080));
        assert_eq!(
            authority_port(b"http://app.test:81/x", Some(&host)),
            Some(81)
        );
        assert_eq!(authority_port(b"http://app.test?x", Some(&host)), None);
        let v6 = HeaderValue::from_static("[::1]:9000");
        assert_eq!(authority_port(b"/", Some(&v6)), Some(9000));
        let bare = HeaderValue::from_static("[::1]");
        assert_eq!(authority_port(b"/", Some(&bare)), None);
        assert_eq!(authority_port(b"/", None), None);
    }

    #[tokio::test]
    async fn store_errors_are_reported() {
        let l = logout(SETS);
        let store = MemStore {
            down: true,
            ..MemStore::default()
        };
        let cache = cache();
        let result = l.end(LogoutScope::Session, session("a"), &store, &cache);
        assert!(result.await.is_err());
    }
}
