//! The validated, compiled configuration that the rest of sessiongate sees.
//! Nothing here is parsed per request: header names, key templates and route
//! tables are built once, when the file is loaded.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;

/// Everything sessiongate needs to run, built from `proxy.toml`.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub redis: RedisSettings,
    pub session: SessionSettings,
    /// `[identity.headers]`, in file order.
    pub identity: Vec<IdentityHeader>,
    /// The session profiles: `[0]` is `default` (`[session]` and
    /// `[identity.headers]`), then `[profiles.<name>]` in file order.
    pub profiles: Vec<Profile>,
    /// `[[upstream]]`, in file order; routes refer to them by index.
    pub upstreams: Vec<Upstream>,
    /// `[[route]]`, in file order; the first match wins.
    pub routes: Vec<Route>,
    /// `[cache]`: the in-process session cache.
    pub cache: CacheSettings,
    /// `[admin]`: the admin listener and the access log (defaults when absent).
    pub admin: AdminSettings,
    /// `[jwt]`: present exactly when `[session] bearer = "jwt"`.
    pub jwt: Option<JwtSettings>,
    /// `[rate_limit]`: per client IP and per user token buckets (off by default).
    pub rate_limit: RateLimitSettings,
    /// `[[tls.certificates]]`: the TLS listeners' certificates, checked.
    pub tls: Vec<crate::tls::CertificateFiles>,
    /// `[tls] watch_interval`: how often the certificate files are looked at
    /// for a change on disk (default 10s; 0s: only on reload).
    pub tls_watch: Duration,
    /// `[acme]`: certificates ordered from an ACME server (`None`: off).
    pub acme: Option<AcmeSettings>,
}

/// `[acme]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// `directory`: the ACME server's directory URL (default Let's Encrypt).
    pub directory: String,
    /// `contact`: `mailto:` addresses for the account.
    pub contact: Vec<String>,
    /// `names`: the DNS names to certify (default: the routes' `host`s).
    pub names: Vec<String>,
    /// `storage`: where the account and the certificates are kept.
    pub storage: std::path::PathBuf,
    /// `ca`: a PEM file of the root the directory's TLS certificate chains
    /// to, when it is not a public one (a test server).
    pub ca: Option<std::path::PathBuf>,
    /// `share_key`: with it, a fleet shares one account and certificate
    /// through `[redis]`, the private keys encrypted with this 32-byte key.
    pub share_key: Option<[u8; 32]>,
    /// `redis_prefix`: where in Redis the fleet keeps them (default
    /// `sessiongate:acme:`).
    pub redis_prefix: String,
    /// `[redis] url`, for the fleet's shared state.
    pub redis_url: String,
    /// `challenge`: how the ACME server validates the names.
    pub challenge: AcmeChallenge,
    /// `key_type`: the certificate's key.
    pub key_type: AcmeKeyType,
}

/// `[acme] challenge`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// `"http-01"`: answered on the plain listener.
    Http01,
    /// `"tls-alpn-01"`: answered on the TLS listener (ALPN `acme-tls/1`).
    TlsAlpn01,
}

impl AcmeChallenge {
    /// Its name in `[acme] challenge`.
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// `[acme] key_type`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeKeyType {
    /// `"ecdsa-p256"`
    EcdsaP256,
    /// `"ecdsa-p384"`
    EcdsaP384,
}

/// One app's sessions: `[session]` with `[identity.headers]` (the profile
/// `default`), or a `[profiles.<name>]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub session: SessionSettings,
    pub identity: Vec<IdentityHeader>,
    /// `[profiles.<name>.redis]`: where this app's sessions are (`None`:
    /// `[redis]`).
    pub redis: Option<RedisSettings>,
}

/// `[rate_limit]`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// `failed_auth_per_ip`: failed authentications allowed per client IP.
    pub failed_auth_per_ip: Option<RateLimit>,
    /// `requests_per_user`: authenticated requests allowed per user id.
    pub requests_per_user: Option<RateLimit>,
    /// `trusted_proxies`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// `shared`: count failed authentications per IP in the session Redis,
    /// across every gateway using it (default false: per process).
    pub shared: bool,
}

/// `{ burst = 20, per = "1m" }`: `burst` tokens, refilled evenly over `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub per: Duration,
}

/// An IP network, e.g. `10.0.0.0/8` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = ip.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
            Some(_) => return None,
        };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `[jwt]`, compiled: the algorithm allowlist, the decoding keys (read from
/// their files at load time) and the claim checks, plus the token key.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// Verifies tokens and extracts the `id_claim`.
    pub verifier: std::sync::Arc<crate::credential::jwt::JwtVerifier>,
    /// `key`: the Redis key that must exist for a token to be valid (default `token:{id}`).
    pub key: KeyTemplate,
}

/// `[cache]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// `enabled` (default true).
    pub enabled: bool,
    /// `max_entries` (default 100000).
    pub max_entries: u64,
    /// `max_age`: no entry is served longer than this, whatever its TTL (default 30s).
    pub max_age: std::time::Duration,
    /// `negative_ttl`: how long an unknown id is remembered (default 1s; 0 turns it off).
    pub negative_ttl: std::time::Duration,
    /// `configure_notifications`: accepted and ignored (default true); the
    /// cache's invalidation no longer depends on keyspace events.
    pub configure_notifications: bool,
    /// `stale_for`: with a route's `on_store_error = "stale"`, how long after its
    /// last successful resolution a session is still let in while Redis is
    /// unreachable (default 30s).
    pub stale_for: std::time::Duration,
    /// `max_unverified`: live exchanges (WebSockets, event streams) are
    /// ended when the invalidation channel has been down this long, since
    /// their sessions' changes go unheard meanwhile (default: none; they are
    /// re-checked when it is back).
    pub max_unverified: Option<std::time::Duration>,
    /// Not a file key: the key prefixes of everything the cache may hold (the
    /// session and opaque bearer key templates'), derived from `[session]`.
    /// Redis is asked to report changes under these prefixes; a key outside
    /// them is never cached. Empty: every key (and every key is watched).
    pub tracked_prefixes: Vec<String>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: true,
            max_entries: 100_000,
            max_age: std::time::Duration::from_secs(30),
            negative_ttl: std::time::Duration::from_secs(1),
            configure_notifications: true,
            stale_for: std::time::Duration::from_secs(30),
            max_unverified: None,
            tracked_prefixes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `listen`: addresses of the public listener (`host:port`, port may be 0).
    pub listen: Vec<String>,
    /// `listen_tls`: the TLS listeners (HTTP/1.1 and HTTP/2 by ALPN).
    pub listen_tls: Vec<String>,
    /// `threads`: worker threads (default: number of cores).
    pub threads: usize,
    /// `grace_period`: how long the old process keeps accepting during shutdown/upgrade.
    pub grace_period: Duration,
    /// `graceful_shutdown_timeout`: how long in-flight requests may take to finish.
    pub graceful_shutdown_timeout: Duration,
    /// `pid_file`: where Pingora writes its pid (used by upgrades).
    pub pid_file: String,
    /// `upgrade_sock`: the socket Pingora hands listeners over on during an upgrade.
    pub upgrade_sock: String,
    /// `max_request_header_bytes`: larger request headers get 431 (default 64 KiB).
    pub max_request_header_bytes: usize,
    /// `non_canonical_paths` and `path_parameters`: how request-targets are
    /// canonicalised (see `route::target`).
    pub target: crate::route::target::TargetPolicy,
    /// `request_head_timeout`: the whole request head (request line and
    /// headers), from its first byte, must arrive within this (default 10s).
    pub request_head_timeout: Duration,
    /// `body_idle_timeout`: the longest pause between two reads of a request
    /// body, or on the client side of an upgraded connection (default 60s).
    pub body_idle_timeout: Duration,
    /// `write_timeout`: the longest a write to the client may wait for it to
    /// read (default 30s).
    pub write_timeout: Duration,
    /// `max_connections`: open client connections, in total (default 4096; 0: no limit).
    pub max_connections: usize,
    /// `max_connections_per_ip`: open client connections per client IP
    /// (default 256; 0: no limit).
    pub max_connections_per_ip: usize,
    /// `keepalive_requests`: requests one client connection carries before
    /// the gateway closes it, on either engine (default 1000; 0: no limit).
    pub keepalive_requests: usize,
    /// `h2_max_concurrent_streams`: streams one HTTP/2 connection may have
    /// open, and requests it may have in flight (default 100; 0: no limit).
    pub h2_max_concurrent_streams: usize,
    /// `max_streams_per_ip`: HTTP/2 requests in flight per client IP over
    /// all its connections (default 512; 0: no limit).
    pub max_streams_per_ip: usize,
    /// `h2_request_timeout`: how long an HTTP/2 stream may take from its
    /// head to the start of its response (default 5m).
    pub h2_request_timeout: Duration,
    /// `https_redirect`: every request on a plain listener is answered 308
    /// to the same host and target over https (default false).
    pub https_redirect: bool,
    /// The port of the https URLs `https_redirect` sends to (the first
    /// `listen_tls` address's; 443 when there is none).
    pub https_port: u16,
    /// `hsts`: the `Strict-Transport-Security` value sent on every response
    /// over TLS (default none).
    pub hsts: Option<http::HeaderValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `url`: `redis://` or `rediss://`, with optional user, password and db.
    pub url: String,
    /// `command_timeout`: a Redis call slower than this is a store error (default 100ms).
    pub command_timeout: Duration,
    /// `connect_timeout`: how long one connection attempt may take (default 1s).
    pub connect_timeout: Duration,
    /// `breaker_failures`: consecutive failures (timeouts, connection errors)
    /// that open the circuit breaker (default 5).
    pub breaker_failures: u32,
    /// `breaker_cooldown`: how long the breaker stays open before one probe is
    /// let through (default 1s).
    pub breaker_cooldown: Duration,
    /// `mode`: where the sessions live (default standalone, at `url`).
    pub topology: RedisTopology,
    /// `username`: ACL user for sentinel-managed masters and cluster nodes.
    pub username: Option<String>,
    /// `password` (or the contents of `password_file`), for sentinel-managed
    /// masters and cluster nodes.
    pub password: Option<String>,
    /// `tls`: TLS to sentinels, masters and cluster nodes.
    pub tls: bool,
}

/// `[redis] mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server at `url`.
    Standalone,
    /// The master named `master`, as the `sentinels` (`host:port`) report it.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
    /// A Redis Cluster reached through any of `nodes` (`host:port`).
    Cluster { nodes: Vec<String> },
}

/// A route's `on_store_error`: what a request gets when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreErrorPolicy {
    /// 503 with `Retry-After` (the default).
    #[default]
    Deny,
    /// Let in a session resolved successfully within `[cache] stale_for`.
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieFormat {
    /// The cookie value is the session id.
    Plain,
    /// express-session: URL-encoded `s:<id>.<base64 HMAC-SHA256 without padding>`.
    Express,
    /// @fastify/session: `<id>.<base64 HMAC-SHA256 without padding>`, no `s:`.
    Fastify,
    /// Flask-Session's signed ids (`SESSION_USE_SIGNER`): `<id>.<sig>`, an
    /// itsdangerous HMAC-SHA1 under a key derived from the secret.
    FlaskSigned,
}

impl CookieFormat {
    /// Its `cookie_format` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CookieFormat::Plain => "plain",
            CookieFormat::Express => "express",
            CookieFormat::Fastify => "fastify",
            CookieFormat::FlaskSigned => "flask_signed",
        }
    }
}

/// Which session ids a framework issues: anything else is refused before a
/// key is built from it (so a cookie cannot address other keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdRule {
    /// Any printable id up to the length limit.
    #[default]
    Any,
    /// Django: at least 8 of `[a-z0-9]`.
    Django,
    /// Flask-Session: `[A-Za-z0-9_-]` (URL-safe base64) or a uuid.
    Flask,
    /// PHP: `[A-Za-z0-9,-]`, at most 256.
    Php,
}

impl IdRule {
    pub fn allows(self, id: &str) -> bool {
        let chars = |ok: fn(u8) -> bool| id.bytes().all(ok);
        match self {
            IdRule::Any => true,
            IdRule::Django => {
                id.len() >= 8 && chars(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            }
            IdRule::Flask => chars(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            IdRule::Php => {
                id.len() <= 256 && chars(|b| b.is_ascii_alphanumeric() || b == b',' || b == b'-')
            }
        }
    }
}

/// How the key's `{id}` is made from the credential's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdTransform {
    /// As it is.
    #[default]
    Identity,
    /// Standard base64-decoded (Spring Session's `SESSION` cookie).
    Base64,
    /// `2::` and the SHA-256 of the id in hex (Rails' server-side stores:
    /// the key is the session's private id).
    RailsPrivate,
}

/// `preset`: a framework whose defaults fill the session table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Express,
    Fastify,
    FlaskSession,
    Django,
    Php,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerMode {
    Off,
    /// `Authorization: Bearer <session id>`.
    Opaque,
    /// `Authorization: Bearer <JWT>` (validated against `[jwt]`).
    Jwt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    /// The key holds a JSON string (express-session, connect-redis and most apps).
    Json,
    /// The key is a Redis hash; each field is a top-level field of the session.
    Hash,
    /// A msgpack map (Flask-Session's default).
    Msgpack,
    /// A pickled dict, read inertly (Django's Redis cache).
    Pickle,
    /// PHP's `php` session format (`name|serialized` pairs).
    Php,
    /// PHP's `php_serialize` session format (one serialized array).
    PhpSerialize,
    /// Flask-Session's values: msgpack, JSON, or a legacy pickle.
    Flask,
    /// Django's values: pickle, or JSON (django-redis' JSONSerializer).
    Django,
    /// Only the key's existence (and TTL) counts; nothing is read from it.
    Exists,
}

impl ValueFormat {
    /// Whether the key is read with GET (a string value).
    pub fn is_string(self) -> bool {
        !matches!(self, ValueFormat::Hash | ValueFormat::Exists)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// `cookie`: the session cookie's name (default `connect.sid`).
    pub cookie: String,
    pub cookie_format: CookieFormat,
    /// `secrets`: express-session secrets; the first signs, all verify.
    pub secrets: Vec<String>,
    pub bearer: BearerMode,
    /// `key`: the Redis key of a session, e.g. `sess:{id}`.
    pub key: KeyTemplate,
    /// `bearer_key`: the Redis key of an opaque bearer id, e.g. `api:{id}`
    /// (`Some` exactly when `bearer = "opaque"`; the cookie's `key` with
    /// `bearer_key = "same_as_cookie"`).
    pub bearer_key: Option<KeyTemplate>,
    /// `value`: `json` (default) or `hash`.
    pub value: ValueFormat,
    /// `role_field`: where a route's `roles` are looked up (default `user.role`).
    pub role_field: FieldPath,
    /// `sliding`: reset a used session's TTL, at most once per `touch_after`.
    pub sliding: Option<Sliding>,
    /// `logout_path`: `POST` here ends the caller's session (answered by the gateway).
    pub logout_path: Option<String>,
    /// `logout_all_path`: `POST` here ends every session of the caller's user.
    pub logout_all_path: Option<String>,
    /// `logout_redirect`: after a logout answer 303 to this URL instead of 204.
    pub logout_redirect: Option<String>,
    /// `user_field`: where the user id is in a session (default `user.id`).
    pub user_field: FieldPath,
    /// `user_sessions_key`: a Redis set of the user's session ids, e.g. `user:{user}:sessions`.
    pub user_sessions_key: Option<KeyTemplate>,
    /// `user_tokens_key`: a Redis set of the user's token ids (JWT), e.g. `user:{user}:tokens`.
    pub user_tokens_key: Option<KeyTemplate>,
    /// `cookie_path`: the `Path` the session cookie is cleared with (default `/`).
    pub cookie_path: String,
    /// `cookie_domain`: the `Domain` the session cookie is cleared with (default none).
    pub cookie_domain: Option<String>,
    /// `preset`: the framework whose defaults filled the rest.
    pub preset: Option<Preset>,
    /// `require_user`: a session admits only when its `user_field` holds a
    /// value (frameworks store sessions for anonymous visitors too).
    pub require_user: bool,
    /// The ids the framework issues (set by the preset).
    pub id_rule: IdRule,
    /// `id_transform`: how the key's `{id}` is made from the cookie's id.
    pub id_transform: IdTransform,
    /// `expires_field`: a date in the value after which the session is
    /// over whatever its TTL (@fastify/session's `cookie.expires`).
    pub expires_field: Option<FieldPath>,
}

impl SessionSettings {
    /// The Redis key of the session whose cookie id is `id` (`None`: an id
    /// the transform cannot take, which names no session).
    pub fn session_key(&self, id: &str) -> Option<String> {
        self.id_transform.key(&self.key, id)
    }
}

impl IdTransform {
    /// The key `template` names for the cookie id `id`, through this
    /// transform (`None`: an id it cannot take).
    pub fn key(self, template: &KeyTemplate, id: &str) -> Option<String> {
        use base64::Engine;
        match self {
            IdTransform::Identity => Some(template.render(id)),
            IdTransform::Base64 => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(id)
                    .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(id))
                    .ok()?;
                let inner = String::from_utf8(bytes).ok()?;
                if inner.is_empty() || inner.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    return None;
                }
                Some(template.render(&inner))
            }
            IdTransform::RailsPrivate => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(id.as_bytes());
                let mut hex = String::with_capacity(3 + 64);
                hex.push_str("2::");
                for b in digest {
                    hex.push_str(&format!("{b:02x}"));
                }
                Some(template.render(&hex))
            }
        }
    }
}

/// Sliding expiry: a session in use is kept alive for `ttl` after its last use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sliding {
    pub ttl: Duration,
    pub touch_after: Duration,
}

/// A Redis key with one `{placeholder}`, split at load time so building a key
/// is a single allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    prefix: String,
    suffix: String,
}

impl KeyTemplate {
    /// Builds a template from `template`, which must contain `placeholder`
    /// (e.g. `{id}`) exactly once.
    pub fn parse(template: &str, placeholder: &str) -> Option<KeyTemplate> {
        let (prefix, suffix) = template.split_once(placeholder)?;
        if suffix.contains(placeholder) {
            return None;
        }
        Some(KeyTemplate {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    /// Whether some id rendered by `self` and some id rendered by `other`
    /// give the same key (ids are any non-empty strings).
    pub fn overlaps(&self, other: &KeyTemplate) -> bool {
        let prefixes =
            self.prefix.starts_with(&other.prefix) || other.prefix.starts_with(&self.prefix);
        let suffixes = self.suffix.ends_with(&other.suffix) || other.suffix.ends_with(&self.suffix);
        prefixes && suffixes
    }

    /// The fixed text before the id: every key of this template starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether `key` could have been rendered from this template.
    pub fn matches(&self, key: &str) -> bool {
        key.len() > self.prefix.len() + self.suffix.len()
            && key.starts_with(&self.prefix)
            && key.ends_with(&self.suffix)
    }

    pub fn render(&self, value: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + value.len() + self.suffix.len());
        key.push_str(&self.prefix);
        key.push_str(value);
        key.push_str(&self.suffix);
        key
    }
}

/// A dotted path into a session document, e.g. `user.id` or `passport.user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    segments: Vec<String>,
}

impl FieldPath {
    /// Returns `None` for an empty path or an empty segment (`user..id`).
    pub fn parse(path: &str) -> Option<FieldPath> {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return None;
        }
        Some(FieldPath { segments })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The value at this path, if every segment exists.
    pub fn lookup<'v>(&self, doc: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        self.segments
            .iter()
            .try_fold(doc, |value, segment| value.get(segment.as_str()))
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

/// One `[identity.headers]` entry: the header is always stripped from client
/// requests and set from `field` when the session has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeader {
    pub name: HeaderName,
    pub field: FieldPath,
    /// `required`: a session without a valid value for it is refused (403)
    /// instead of being forwarded without the header.
    pub required: bool,
    /// `max_bytes`: longer values are not valid (default 1024).
    pub max_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    /// Resolved at load time; requests are spread over them round robin.
    pub addrs: Vec<SocketAddr>,
    /// `connect_timeout` (default 1s).
    pub connect_timeout: Duration,
    /// `read_timeout`: between reads of the upstream's response (default 30s).
    pub read_timeout: Duration,
    /// `health_check`: active checks of every address (off by default).
    pub health_check: Option<HealthCheck>,
    /// `tls = true` and its settings (`sni`, `ca`, `insecure_skip_verify`,
    /// `client_cert`/`client_key`, `h2`); `None`: plain TCP.
    pub tls: Option<crate::tls::upstream::UpstreamTls>,
}

impl Upstream {
    /// Whether it is spoken to over HTTP/2 (`tls` with `h2 = true`).
    pub fn h2(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.files.h2)
    }
}

/// `health_check = { path = "/healthz", interval = "5s" }`: an HTTP `GET path`
/// (2xx healthy) when `path` is set, else a TCP connect, every `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: Option<String>,
    pub interval: Duration,
}

/// A route's `mode`: whether its refusals are enforced or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteMode {
    /// Refuse what the route does not allow (the default).
    #[default]
    Enforce,
    /// Forward what enforcement would refuse for lack of a session, a role
    /// or a rule, and record it as `would_deny` with its reason.
    Report,
}

/// A report-mode route's `report_store_unavailable`: what a request gets
/// when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportStoreUnavailable {
    /// As in enforce mode: the route's `on_store_error` applies (the default).
    #[default]
    Deny,
    /// Forward without identity headers, recorded as `would_deny`
    /// (`store_unavailable`).
    Forward,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    Authenticated,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// `name`: used in logs and metric labels (default: the path prefix).
    pub name: String,
    /// `host`: matched case-insensitively against the request's host, port removed.
    pub host: Option<String>,
    /// `path_prefix`: matched against the normalised path.
    pub path_prefix: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub access: Access,
    /// `roles`: when non-empty, the session's role field must be one of them.
    pub roles: Vec<String>,
    /// `on_unauthenticated = { redirect = "/login" }`: where browsers are sent.
    pub login_redirect: Option<String>,
    /// `on_store_error`: `deny` (503, default) or `stale`.
    pub on_store_error: StoreErrorPolicy,
    /// `methods`: the methods this route serves; `None` serves every method
    /// but TRACE.
    pub methods: Option<Vec<http::Method>>,
    /// `mode` (default `[rollout] mode`, else enforce); always enforce on
    /// public routes, which have nothing to relax.
    pub mode: RouteMode,
    /// `report_store_unavailable`: report-mode routes only.
    pub report_store_unavailable: ReportStoreUnavailable,
    /// `show_error_details`: 401 and 403 bodies carry the reason code.
    pub show_error_details: bool,
    /// `live`: whether a WebSocket or event stream the route admitted ends
    /// with its session (`close`, the default) or is left alone (`keep`).
    pub live: LivePolicy,
    /// `max_lifetime`: a live exchange is ended this long after it started,
    /// so that the client reconnects and is checked anew (`None`: no limit).
    pub max_lifetime: Option<Duration>,
    /// `live_after`: a response of no announced length (a long poll) that
    /// is still streaming this long after its head becomes a live exchange
    /// (default 1s). Event streams and upgrades are live at once.
    pub live_after: Duration,
    /// `profile`: the session profile credentials are checked under
    /// (index into `Config::profiles`; 0 is `default`).
    pub profile: usize,
}

/// A route's `live`: what becomes of a live exchange when its session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LivePolicy {
    /// Ended when its session no longer admits it (the default).
    #[default]
    Close,
    /// Left running (a route whose app ends its own sockets).
    Keep,
}

/// `[admin]`: the admin listener (`/metrics`, `/healthz`, `/readyz`) and the
/// access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// `listen`: the admin listener's `host:port` (port may be 0); none: no listener.
    pub listen: Option<String>,
    /// `metrics_basic_auth`: when set, `/metrics` requires these credentials.
    pub metrics_basic_auth: Option<BasicAuth>,
    /// `access_log`: one JSON line per request on stdout (default true).
    pub access_log: bool,
    /// `access_log_user`: include the user id (`[session] user_field`) in
    /// access log lines (default true).
    pub access_log_user: bool,
    /// `explain`: serve `POST /explain` behind `metrics_basic_auth` (default false).
    pub explain: bool,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: None,
            metrics_basic_auth: None,
            access_log: true,
            access_log_user: true,
            explain: false,
        }
    }
}

/// HTTP basic credentials. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}
