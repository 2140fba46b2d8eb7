//! The serde mirror of `proxy.toml`: one struct per table, every key optional
//! and loosely typed (durations and enums are plain strings), so that defaults,
//! ranges and cross-references are all checked, with positions, in `validate`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file. `validate` deserializes each section on its own (so that
/// one broken section does not hide problems in another); this struct lists
/// the known top-level keys: its fields are never read, only their names.
#[derive(Debug, Default, Deserialize)]
#[allow(dead_code)]
pub struct File {
    pub server: Option<Server>,
    pub redis: Option<Redis>,
    pub session: Option<Session>,
    pub identity: Option<Identity>,
    pub upstream: Option<Vec<Upstream>>,
    pub route: Option<Vec<Route>>,
    pub cache: Option<Cache>,
    /// `[admin]`: the admin listener (metrics, health) and the access log.
    pub admin: Option<Admin>,
    /// `[jwt]`: how bearer JWTs are verified (`[session] bearer = "jwt"`).
    pub jwt: Option<Jwt>,
    /// `[rate_limit]`: token buckets per client IP and per user.
    pub rate_limit: Option<RateLimit>,
    /// `[rollout]`: the default `mode` of routes (enforce or report).
    pub rollout: Option<Rollout>,
    /// `[tls]`: the certificates of the TLS listeners.
    pub tls: Option<Tls>,
    /// `[acme]`: certificates from an ACME server.
    pub acme: Option<Acme>,
    /// `[profiles.<name>]`: session tables of other apps (read by name).
    pub profiles: Option<serde::de::IgnoredAny>,
}

/// `[tls]`
#[derive(Debug, Default, Deserialize)]
pub struct Tls {
    pub certificates: Option<Vec<TlsCertificate>>,
    pub watch_interval: Option<String>,
}

/// `[[tls.certificates]]`
#[derive(Debug, Default, Deserialize)]
pub struct TlsCertificate {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub default: Option<bool>,
}

/// `[rollout]`
#[derive(Debug, Default, Deserialize)]
pub struct Rollout {
    pub mode: Option<String>,
}

/// `[rate_limit]`
#[derive(Debug, Default, Deserialize)]
pub struct RateLimit {
    pub failed_auth_per_ip: Option<Bucket>,
    pub requests_per_user: Option<Bucket>,
    pub trusted_proxies: Option<Vec<String>>,
    pub shared: Option<bool>,
}

/// `{ burst = 20, per = "1m" }`
#[derive(Debug, Default, Deserialize)]
pub struct Bucket {
    pub burst: Option<i64>,
    pub per: Option<String>,
}

/// `health_check = { path = "/healthz", interval = "5s" }`
#[derive(Debug, Default, Deserialize)]
pub struct HealthCheck {
    pub path: Option<String>,
    pub interval: Option<String>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
pub struct Server {
    pub listen: Option<Vec<String>>,
    pub listen_tls: Option<Vec<String>>,
    pub threads: Option<i64>,
    pub grace_period: Option<String>,
    pub graceful_shutdown_timeout: Option<String>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub max_request_header_bytes: Option<i64>,
    pub non_canonical_paths: Option<String>,
    pub path_parameters: Option<String>,
    pub request_head_timeout: Option<String>,
    pub body_idle_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    pub keepalive_requests: Option<i64>,
    pub h2_max_concurrent_streams: Option<i64>,
    pub max_streams_per_ip: Option<i64>,
    pub h2_request_timeout: Option<String>,
    pub https_redirect: Option<bool>,
    pub hsts: Option<String>,
}

/// `[redis]`
#[derive(Debug, Default, Deserialize)]
pub struct Redis {
    pub url: Option<String>,
    pub command_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub mode: Option<String>,
    pub sentinels: Option<Vec<String>>,
    pub master: Option<String>,
    pub nodes: Option<Vec<String>>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
    pub tls: Option<bool>,
    pub breaker_failures: Option<i64>,
    pub breaker_cooldown: Option<String>,
}

/// `[session]`
#[derive(Debug, Default, Deserialize)]
pub struct Session {
    pub cookie: Option<String>,
    pub cookie_format: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub bearer: Option<String>,
    pub bearer_key: Option<String>,
    pub allow_unsigned_bearer: Option<bool>,
    pub key: Option<String>,
    pub value: Option<String>,
    pub role_field: Option<String>,
    pub sliding: Option<Sliding>,
    pub logout_path: Option<String>,
    pub logout_all_path: Option<String>,
    pub logout_redirect: Option<String>,
    pub user_field: Option<String>,
    pub user_sessions_key: Option<String>,
    pub user_tokens_key: Option<String>,
    pub cookie_path: Option<String>,
    pub cookie_domain: Option<String>,
    pub preset: Option<String>,
    /// A profile's `[profiles.<name>.identity]` (not read in `[session]`).
    pub identity: Option<Identity>,
    /// A profile's `[profiles.<name>.redis]` (not read in `[session]`).
    pub redis: Option<Redis>,
    pub require_user: Option<bool>,
    pub id_transform: Option<String>,
    pub expires_field: Option<String>,
}

/// `[identity]`
#[derive(Debug, Default, Deserialize)]
pub struct Identity {
    /// `[identity.headers]`: header name → dotted field path, or a table
    /// with the field and its rules. The map is sorted by name; `validate`
    /// restores file order from the spans.
    pub headers: Option<BTreeMap<String, IdentityEntry>>,
}

/// One `[identity.headers]` value: `"user.id"`, or
/// `{ field = "user.id", required = true, max_bytes = 256 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum IdentityEntry {
    Field(String),
    Table(IdentityTable),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityTable {
    pub field: String,
    pub required: Option<bool>,
    pub max_bytes: Option<i64>,
}

/// One `[[upstream]]`.
#[derive(Debug, Default, Deserialize)]
pub struct Upstream {
    pub name: Option<String>,
    pub addrs: Option<Vec<String>>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub health_check: Option<HealthCheck>,
    pub tls: Option<bool>,
    pub sni: Option<String>,
    pub ca: Option<String>,
    pub insecure_skip_verify: Option<bool>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub h2: Option<bool>,
}

/// One `[[route]]`.
#[derive(Debug, Default, Deserialize)]
pub struct Route {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: Option<String>,
    pub access: Option<String>,
    pub roles: Option<Vec<String>>,
    pub on_unauthenticated: Option<OnUnauthenticated>,
    pub on_store_error: Option<String>,
    pub methods: Option<Vec<String>>,
    pub mode: Option<String>,
    pub report_store_unavailable: Option<String>,
    pub show_error_details: Option<bool>,
    pub live: Option<String>,
    pub max_lifetime: Option<String>,
    pub live_after: Option<String>,
    pub profile: Option<String>,
}

/// `on_unauthenticated = { redirect = "/login" }`
#[derive(Debug, Default, Deserialize)]
pub struct OnUnauthenticated {
    pub redirect: Option<String>,
}

/// `[cache]`
#[derive(Debug, Default, Deserialize)]
pub struct Cache {
    pub enabled: Option<bool>,
    pub max_entries: Option<i64>,
    pub max_age: Option<String>,
    pub negative_ttl: Option<String>,
    pub configure_notifications: Option<bool>,
    pub stale_for: Option<String>,
    pub max_unverified: Option<String>,
}

/// `[session] sliding = { ttl = "24h", touch_after = "5m" }`
#[derive(Debug, Default, Deserialize)]
pub struct Sliding {
    pub ttl: Option<String>,
    pub touch_after: Option<String>,
}

/// `[jwt]`
#[derive(Debug, Default, Deserialize)]
pub struct Jwt {
    pub algorithms: Option<Vec<String>>,
    pub secret: Option<String>,
    pub public_key_file: Option<String>,
    pub jwks_file: Option<String>,
    pub id_claim: Option<String>,
    pub key: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<OneOrMany>,
    pub leeway: Option<String>,
    pub typ: Option<String>,
    /// `[jwt.claims]`: claim name → rule (a value, a list, or `{ contains = [...] }`).
    pub claims: Option<BTreeMap<String, toml::Value>>,
}

/// A string or a list of strings (`audience = "api"` or `["api", "web"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
pub struct Admin {
    pub listen: Option<String>,
    pub metrics_basic_auth: Option<BasicAuth>,
    pub access_log: Option<bool>,
    pub access_log_user: Option<bool>,
    pub explain: Option<bool>,
}

/// `[admin] metrics_basic_auth = { username = "...", password = "..." }`
#[derive(Debug, Default, Deserialize)]
pub struct BasicAuth {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// `[acme]`
#[derive(Debug, Default, Deserialize)]
pub struct Acme {
    pub directory: Option<String>,
    pub contact: Option<Vec<String>>,
    pub terms_agreed: Option<bool>,
    pub names: Option<Vec<String>>,
    pub storage: Option<String>,
    pub ca: Option<String>,
    pub share_key: Option<String>,
    pub redis_prefix: Option<String>,
    pub challenge: Option<String>,
    pub key_type: Option<String>,
}
