//! Turns the text of `proxy.toml` into a validated [`Config`], reporting every
//! problem at once: syntax, `${VAR}` expansion, wrong types, unknown keys and
//! semantic checks, each with its dotted key path and `line:column`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use serde::de::{DeserializeOwned, IntoDeserializer as _};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::file;
use super::model::{
    Access, AdminSettings, BasicAuth, BearerMode, CacheSettings, Config, CookieFormat, FieldPath,
    IdentityHeader, KeyTemplate, RedisSettings, RedisTopology, Route, ServerSettings,
    SessionSettings, Sliding, StoreErrorPolicy, Upstream, ValueFormat,
};

/// `[identity.headers]` values longer than this are not sent, unless the
/// header sets its own `max_bytes`.
const DEFAULT_IDENTITY_BYTES: usize = 1024;

/// One problem in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `route[2].upstream` (array indexes are 0-based);
    /// empty for syntax and I/O errors.
    pub path: String,
    /// 1-based line; 0 when the error is not tied to a position (I/O errors).
    pub line: usize,
    /// 1-based column, in characters; 0 when `line` is 0.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration file, sorted by position.
/// Displays as one `<source>:<line>:<column>: <path>: <message>` line per error.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_errors(.source_name, .errors))]
pub struct ConfigErrors {
    /// The file name used in messages (`load` uses the path it was given).
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

fn render_errors(source_name: &str, errors: &[ConfigError]) -> String {
    let mut out = String::new();
    for (i, error) in errors.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // With a position: `<source>:<line>:<col>: ...`; without: `<source>: ...`.
        let separator = if error.line > 0 { ":" } else { ": " };
        let _ = write!(out, "{source_name}{separator}{error}");
    }
    out
}

/// Reads and validates the file at `path`, expanding `${VAR}` from the
/// process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source_name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&source_name, &text, &|name| std::env::var(name).ok()),
        Err(err) => Err(ConfigErrors {
            source_name,
            errors: vec![ConfigError {
                path: String::new(),
                line: 0,
                column: 0,
                message: format!("cannot read the configuration file: {err}"),
            }],
        }),
    }
}

/// Validates `text` (the contents of `source_name`), looking `${VAR}`
/// references up with `env`.
pub fn parse(
    source_name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        source_name: source_name.to_owned(),
        errors,
    };
    let mut root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(err) => {
            let (line, column) = line_col(text, err.span().map_or(0, |span| span.start));
            return Err(fail(vec![ConfigError {
                path: String::new(),
                line,
                column,
                message: err.message().to_owned(),
            }]));
        }
    };

    let mut env_errors = Vec::new();
    for (key, value) in root.get_mut().iter_mut() {
        let mut path = vec![Seg::Key(key.get_ref().to_string())];
        expand_env(value, &mut path, env, &mut env_errors);
    }

    let mut checker = Checker {
        text,
        root: &root,
        errors: Vec::new(),
        quiet: HashSet::new(),
        base: Path::new(source_name)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let config = checker.check();

    // A string whose `${VAR}` could not be expanded is reported once, for the
    // variable; whatever else is wrong with the unexpanded text is noise.
    let poisoned: HashSet<usize> = env_errors.iter().map(|e| e.offset).collect();
    let mut pending: Vec<Pending> = checker
        .errors
        .into_iter()
        .filter(|e| !poisoned.contains(&e.offset))
        .chain(env_errors)
        .collect();
    pending.sort_by_key(|e| e.offset);
    pending.dedup();

    match config {
        Some(config) if pending.is_empty() => Ok(config),
        _ => {
            let mut errors: Vec<ConfigError> = pending
                .into_iter()
                .map(|e| {
                    let (line, column) = line_col(text, e.offset);
                    ConfigError {
                        path: e.path,
                        line,
                        column,
                        message: e.message,
                    }
                })
                .collect();
            if errors.is_empty() {
                errors.push(ConfigError {
                    path: String::new(),
                    line: 1,
                    column: 1,
                    message: "invalid configuration".to_owned(),
                });
            }
            Err(fail(errors))
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before
        .get(line_start..)
        .map_or(1, |s| s.chars().count() + 1);
    (line, column)
}

// ---------------------------------------------------------------------------
// Key paths

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn fmt_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(key);
                } else {
                    let _ = write!(out, "{key:?}");
                }
            }
            Seg::Index(index) => {
                let _ = write!(out, "[{index}]");
            }
        }
    }
    out
}

fn sub(path: &[Seg], key: &str) -> Vec<Seg> {
    let mut path = path.to_vec();
    path.push(Seg::Key(key.to_owned()));
    path
}

fn idx(path: &[Seg], index: usize) -> Vec<Seg> {
    let mut path = path.to_vec();
    path.push(Seg::Index(index));
    path
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> Vec<Seg> {
    match path {
        serde_ignored::Path::Root => Vec::new(),
        serde_ignored::Path::Seq { parent, index } => idx(&ignored_path(parent), *index),
        serde_ignored::Path::Map { parent, key } => sub(&ignored_path(parent), key),
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

fn tracked_path(path: &serde_path_to_error::Path) -> Vec<Seg> {
    path.iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {
                None
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// `${VAR}` expansion

#[derive(Debug, PartialEq, Eq)]
struct Pending {
    offset: usize,
    path: String,
    message: String,
}

fn expand_env(
    value: &mut Spanned<DeValue<'_>>,
    path: &mut Vec<Seg>,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<Pending>,
) {
    let offset = value.span().start;
    match value.get_mut() {
        DeValue::String(s) => match expand_str(s, env) {
            Ok(Some(expanded)) => *s = Cow::Owned(expanded),
            Ok(None) => {}
            Err(messages) => errors.extend(messages.into_iter().map(|message| Pending {
                offset,
                path: fmt_path(path),
                message,
            })),
        },
        DeValue::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                expand_env(item, path, env, errors);
                path.pop();
            }
        }
        DeValue::Table(table) => {
            for (key, item) in table.iter_mut() {
                path.push(Seg::Key(key.get_ref().to_string()));
                expand_env(item, path, env, errors);
                path.pop();
            }
        }
        DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
    }
}

/// Expands `${NAME}` and `${NAME:-default}` (the default when `NAME` is unset
/// or empty, as in a POSIX shell); `$${` is a literal `${`. `Ok(None)` when
/// there is nothing to expand; `Err` lists every unset variable or malformed
/// reference.
fn expand_str(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, Vec<String>> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut errors = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let reference = after.split_once('}').map(|(inner, remaining)| {
                let (name, default) = match inner.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (inner, None),
                };
                (name, default, remaining)
            });
            match reference {
                Some((name, default, remaining)) if is_env_name(name) => {
                    match (env(name), default) {
                        (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                        (Some(value), _) => out.push_str(&value),
                        (None, Some(default)) => out.push_str(default),
                        (None, None) => {
                            errors.push(format!("environment variable {name} is not set"))
                        }
                    }
                    rest = remaining;
                }
                _ => {
                    errors.push(
                        "malformed `${...}`: expected `${NAME}` or `${NAME:-default}` \
                         (write `$${` for a literal `${`)"
                            .to_owned(),
                    );
                    out.push_str("${");
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(Some(out))
    } else {
        Err(errors)
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---------------------------------------------------------------------------
// Helpers

/// The field names serde knows for struct `T` (used for "did you mean").
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("probe"))
        }

        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("probe"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// Every key `proxy.toml` accepts, by table, straight from the file format's
/// types (so it cannot drift from what `check` accepts). Inline tables are
/// named after their key (`route.on_unauthenticated`); `jwt.claims` and the
/// `identity.headers` names are free-form.
pub fn accepted_keys() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", fields_of::<file::File>()),
        ("server", fields_of::<file::Server>()),
        ("redis", fields_of::<file::Redis>()),
        ("session", fields_of::<file::Session>()),
        ("session.sliding", fields_of::<file::Sliding>()),
        ("jwt", fields_of::<file::Jwt>()),
        ("cache", fields_of::<file::Cache>()),
        ("identity", fields_of::<file::Identity>()),
        ("identity.headers", fields_of::<file::IdentityTable>()),
        ("upstream", fields_of::<file::Upstream>()),
        ("upstream.health_check", fields_of::<file::HealthCheck>()),
        ("rate_limit", fields_of::<file::RateLimit>()),
        ("rate_limit.failed_auth_per_ip", fields_of::<file::Bucket>()),
        ("route", fields_of::<file::Route>()),
        (
            "route.on_unauthenticated",
            fields_of::<file::OnUnauthenticated>(),
        ),
        ("admin", fields_of::<file::Admin>()),
        ("admin.metrics_basic_auth", fields_of::<file::BasicAuth>()),
    ]
}

/// The closest candidate to `word`, if one is close enough to be a typo.
fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

fn with_article(kind: &str) -> String {
    match kind.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {kind}"),
        _ => format!("a {kind}"),
    }
}

/// serde's "expected ..." phrases, in the file's vocabulary.
fn friendly_expected(expected: &str) -> String {
    match expected {
        // Every list in proxy.toml is a list of strings.
        "a sequence" => "a list of strings".to_owned(),
        "i64" | "u64" | "usize" => "an integer".to_owned(),
        "a map" => "a table".to_owned(),
        other if other.starts_with("struct ") => "a table".to_owned(),
        other => other.to_owned(),
    }
}

fn is_listen_addr(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok()
        && !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Whether two listen addresses would be the same socket (port 0 never is:
/// each gets its own free port).
fn same_listener(a: &str, b: &str) -> bool {
    let port = |s: &str| s.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    if port(a).is_none_or(|p| p == 0) || port(a) != port(b) {
        return false;
    }
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(x), Ok(y)) => x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified(),
        _ => false,
    }
}

fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs = match addr.parse::<SocketAddr>() {
        Ok(sa) => vec![sa],
        Err(_) => {
            let Some((host, port)) = addr.rsplit_once(':') else {
                return Err(format!("{addr:?} has no port (expected host:port)"));
            };
            if host.is_empty() {
                return Err(format!("{addr:?} has no host (expected host:port)"));
            }
            if host.contains(':') {
                return Err(format!(
                    "{addr:?}: IPv6 addresses must be in brackets, e.g. \"[::1]:3000\""
                ));
            }
            let Ok(port) = port.parse::<u16>() else {
                return Err(format!("{addr:?} has an invalid port (expected host:port)"));
            };
            (host, port)
                .to_socket_addrs()
                .map_err(|err| format!("cannot resolve {addr:?}: {err}"))?
                .collect()
        }
    };
    if addrs.is_empty() {
        return Err(format!("{addr:?} resolved to no addresses"));
    }
    if addrs.iter().any(|a| a.port() == 0) {
        return Err(format!("{addr:?}: port 0 is not a valid upstream port"));
    }
    Ok(addrs)
}

/// RFC 6265 cookie-name: an RFC 2616 token.
fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        })
}

/// Headers that describe the connection or carry credentials: never set from
/// a session. `name` is lower-cased with `_` folded to `-`.
fn is_reserved_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "cookie"
            | "authorization"
            | "upgrade"
            | "te"
            | "trailer"
            | "keep-alive"
    ) || name.starts_with("proxy-")
}

/// `host` as a route stores it: lower-case, without a port.
fn normalize_host(host: &str) -> Result<String, String> {
    let invalid = || format!("{host:?} is not a valid host name");
    if host.is_empty() || host.contains('@') {
        return Err(invalid());
    }
    let authority: http::uri::Authority = host.parse().map_err(|_| invalid())?;
    let name = authority.host();
    if name.is_empty() {
        return Err(invalid());
    }
    Ok(name.to_ascii_lowercase())
}

/// A cookie attribute value (`Path`): no separators, spaces or control characters.
fn is_cookie_attribute(value: &str) -> bool {
    !value
        .chars()
        .any(|c| c == ';' || c == ',' || c.is_whitespace() || c.is_control())
}

/// The `[session]` keys of logout and per-user sets, as written.
struct LifecycleKeys {
    logout_path: Option<String>,
    logout_all_path: Option<String>,
    logout_redirect: Option<String>,
    user_field: Option<String>,
    user_sessions_key: Option<String>,
    user_tokens_key: Option<String>,
    cookie_path: Option<String>,
    cookie_domain: Option<String>,
}

/// The validated `[session]` keys of logout and per-user sets.
struct Lifecycle {
    logout_path: Option<String>,
    logout_all_path: Option<String>,
    logout_redirect: Option<String>,
    user_field: FieldPath,
    user_sessions_key: Option<KeyTemplate>,
    user_tokens_key: Option<KeyTemplate>,
    cookie_path: String,
    cookie_domain: Option<String>,
}

fn is_valid_redirect(target: &str) -> bool {
    if target.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if target.starts_with('/') {
        // `//host` and `/\host` are both treated by browsers as another origin.
        return !(target.starts_with("//") || target.starts_with("/\\"));
    }
    match target.parse::<http::Uri>() {
        Ok(uri) => {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some_and(|a| !a.host().is_empty())
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------
// The checker

struct Checker<'r, 't> {
    text: &'t str,
    root: &'r Spanned<DeTable<'t>>,
    errors: Vec<Pending>,
    /// Paths whose absence is already explained (a type error removed the
    /// key, or an unknown key was suggested as this one).
    quiet: HashSet<String>,
    /// The configuration file's directory: key files are relative to it.
    base: std::path::PathBuf,
}

const MAX_TYPE_ERRORS_PER_SECTION: usize = 64;

impl<'r, 't> Checker<'r, 't> {
    // -- positions ---------------------------------------------------------

    fn table_at(&self, path: &[Seg]) -> Option<&'r DeTable<'t>> {
        if path.is_empty() {
            Some(self.root.get_ref())
        } else {
            self.lookup(path)?.get_ref().as_table()
        }
    }

    fn lookup(&self, path: &[Seg]) -> Option<&'r Spanned<DeValue<'t>>> {
        let (last, parent) = path.split_last()?;
        match last {
            Seg::Key(key) => self.table_at(parent)?.get(key.as_str()),
            Seg::Index(index) => self.lookup(parent)?.get_ref().as_array()?.get(*index),
        }
    }

    /// Byte offset of the value at `path` (or of its key, with `key`); when
    /// the path does not exist, of its closest existing ancestor.
    fn position(&self, path: &[Seg], key: bool) -> usize {
        if key {
            if let Some((Seg::Key(name), parent)) = path.split_last() {
                if let Some((k, _)) = self
                    .table_at(parent)
                    .and_then(|t| t.get_key_value(name.as_str()))
                {
                    return k.span().start;
                }
            }
        }
        (1..=path.len())
            .rev()
            .find_map(|n| self.lookup(&path[..n]))
            .map_or(self.root.span().start, |v| v.span().start)
    }

    fn line_of(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    // -- reporting ---------------------------------------------------------

    fn error_at(&mut self, offset: usize, path: &[Seg], message: impl Into<String>) {
        self.errors.push(Pending {
            offset,
            path: fmt_path(path),
            message: message.into(),
        });
    }

    /// An error about the value at `path`.
    fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        let offset = self.position(path, false);
        self.error_at(offset, path, message);
    }

    /// A required key is absent (reported at its table, unless explained).
    fn missing(&mut self, path: &[Seg], message: impl Into<String>) {
        if !self.quiet.contains(&fmt_path(path)) {
            self.error(path, message);
        }
    }

    fn missing_key(&mut self, path: &[Seg]) {
        let name = match path.last() {
            Some(Seg::Key(name)) => name.clone(),
            _ => String::new(),
        };
        self.missing(path, format!("missing required key `{name}`"));
    }

    fn unknown_key(&mut self, path: &[Seg], candidates: &[&'static str]) {
        let Some((Seg::Key(name), parent)) = path.split_last() else {
            return;
        };
        let mut message = format!("unknown key `{name}`");
        if let Some(close) = suggest(name, candidates.iter().copied()) {
            let _ = write!(message, "; did you mean `{close}`?");
            self.quiet.insert(fmt_path(&sub(parent, close)));
        }
        let offset = self.position(path, true);
        self.error_at(offset, path, message);
    }

    // -- deserialization ---------------------------------------------------

    /// Deserializes the table at `path` into `T`. A value of the wrong type is
    /// reported and its key dropped before trying again, so every type error
    /// and every unknown key of the section is reported. `None` when the
    /// value is not a table at all.
    fn section<T: DeserializeOwned>(&mut self, path: &[Seg]) -> Option<T> {
        let value = self.lookup(path)?;
        if !value.get_ref().is_table() {
            let found = with_article(value.get_ref().type_str());
            self.error(path, format!("expected a table, found {found}"));
            return None;
        }
        let mut working = value.clone();
        for _ in 0..MAX_TYPE_ERRORS_PER_SECTION {
            let mut ignored = Vec::new();
            let mut track = serde_path_to_error::Track::new();
            let de = serde_path_to_error::Deserializer::new(
                working.clone().into_deserializer(),
                &mut track,
            );
            let result: Result<T, toml::de::Error> =
                serde_ignored::deserialize(de, |p| ignored.push(ignored_path(&p)));
            let err = match result {
                Ok(parsed) => {
                    self.report_unknown::<T>(path, &ignored);
                    return Some(parsed);
                }
                Err(err) => err,
            };
            let relative = tracked_path(&track.path());
            let full = [path, relative.as_slice()].concat();
            self.type_error(&full, &err);
            match remove_key(&mut working, &relative) {
                Some(removed) => {
                    self.quiet
                        .insert(fmt_path(&[path, removed.as_slice()].concat()));
                }
                None => {
                    self.report_unknown::<T>(path, &ignored);
                    return None;
                }
            }
        }
        None
    }

    fn type_error(&mut self, path: &[Seg], err: &toml::de::Error) {
        let message = err.message();
        let friendly = message
            .strip_prefix("invalid type: ")
            .and_then(|rest| rest.rsplit_once(", expected "))
            .map(|(_, expected)| {
                let found = self.lookup(path).map_or_else(
                    || "something else".to_owned(),
                    |v| with_article(v.get_ref().type_str()),
                );
                format!("expected {}, found {found}", friendly_expected(expected))
            });
        let offset = match self.lookup(path) {
            Some(value) => value.span().start,
            None => err
                .span()
                .map_or_else(|| self.position(path, false), |s| s.start),
        };
        self.error_at(offset, path, friendly.unwrap_or_else(|| message.to_owned()));
    }

    fn report_unknown<T: DeserializeOwned>(&mut self, base: &[Seg], ignored: &[Vec<Seg>]) {
        for relative in ignored {
            let candidates = match relative.split_last().map(|(_, parent)| parent) {
                Some([]) => fields_of::<T>(),
                Some([.., Seg::Key(parent)]) if parent == "on_unauthenticated" => {
                    fields_of::<file::OnUnauthenticated>()
                }
                Some([.., Seg::Key(parent)]) if parent == "metrics_basic_auth" => {
                    fields_of::<file::BasicAuth>()
                }
                Some([.., Seg::Key(parent)])
                    if parent == "failed_auth_per_ip" || parent == "requests_per_user" =>
                {
                    fields_of::<file::Bucket>()
                }
                Some([.., Seg::Key(parent)]) if parent == "health_check" => {
                    fields_of::<file::HealthCheck>()
                }
                _ => &[],
            };
            self.unknown_key(&[base, relative.as_slice()].concat(), candidates);
        }
    }

    // -- value helpers -----------------------------------------------------

    fn duration(
        &mut self,
        path: &[Seg],
        value: Option<&str>,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        let Some(text) = value else {
            return default;
        };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.error(path, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(err) => {
                self.error(
                    path,
                    format!(
                        "invalid duration {text:?} ({err}); write e.g. \"100ms\", \"5s\" or \"1m\""
                    ),
                );
                default
            }
        }
    }

    /// One of a fixed set of strings; `None` (after reporting) when unknown.
    fn choice<T: Copy>(
        &mut self,
        path: &[Seg],
        value: Option<&str>,
        default: T,
        options: &[(&str, T)],
    ) -> Option<T> {
        let Some(text) = value else {
            return Some(default);
        };
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let expected: Vec<String> = options
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        self.error(
            path,
            format!(
                "unknown value {text:?}, expected one of {}",
                expected.join(", ")
            ),
        );
        None
    }

    fn non_empty(&mut self, path: &[Seg], value: Option<String>, default: &str) -> String {
        match value {
            Some(v) if v.is_empty() => {
                self.error(path, "must not be empty");
                default.to_owned()
            }
            Some(v) => v,
            None => default.to_owned(),
        }
    }

    /// A required, non-empty list of `host:port` servers.
    fn servers(
        &mut self,
        path: &[Seg],
        value: Option<Vec<String>>,
        what: &str,
    ) -> Option<Vec<String>> {
        match value {
            None => {
                self.missing_key(path);
                None
            }
            Some(list) if list.is_empty() => {
                self.error(path, format!("must list at least one {what}"));
                None
            }
            Some(list) => {
                let mut ok = true;
                for (i, server) in list.iter().enumerate() {
                    if !is_listen_addr(server) || server.ends_with(":0") {
                        self.error(&idx(path, i), "must be host:port");
                        ok = false;
                    }
                }
                ok.then_some(list)
            }
        }
    }

    fn string_list(&mut self, path: &[Seg], value: Option<&[String]>, what: &str) {
        match value {
            None => self.missing_key(path),
            Some([]) => self.error(path, format!("must list at least one {what}")),
            Some(_) => {}
        }
    }

    // -- sections ----------------------------------------------------------

    fn check(&mut self) -> Option<Config> {
        self.top_level();
        let server = self.server();
        let redis = self.redis();
        let session = self.session();
        let identity = self.identity();
        let (upstreams, names) = self.upstreams();
        let routes = self.routes(names.as_deref());
        let cache = self.cache();
        let jwt = self.jwt();
        let admin = self.admin(server.as_ref().map_or(&[][..], |s| &s.listen[..]));
        let rate_limit = self.rate_limit();
        Some(Config {
            server: server?,
            redis: redis?,
            session: session?,
            identity: identity?,
            upstreams: upstreams?,
            routes: routes?,
            cache: cache?,
            jwt: jwt?,
            admin: admin?,
            rate_limit: rate_limit?,
        })
    }

    /// `[rate_limit]`: two optional buckets and the trusted proxies.
    fn rate_limit(&mut self) -> Option<super::model::RateLimitSettings> {
        let path = [Seg::Key("rate_limit".to_owned())];
        if self.lookup(&path).is_none() {
            return Some(Default::default());
        }
        let f: file::RateLimit = self.section(&path)?;
        let has_failed_auth = f.failed_auth_per_ip.is_some();
        let failed_auth_per_ip =
            self.bucket(&sub(&path, "failed_auth_per_ip"), f.failed_auth_per_ip);
        let requests_per_user = self.bucket(&sub(&path, "requests_per_user"), f.requests_per_user);
        let proxies_path = sub(&path, "trusted_proxies");
        let mut trusted_proxies = Vec::new();
        let mut ok = true;
        for (i, text) in f.trusted_proxies.unwrap_or_default().iter().enumerate() {
            match super::model::Cidr::parse(text) {
                Some(cidr) => trusted_proxies.push(cidr),
                None => {
                    self.error(
                        &idx(&proxies_path, i),
                        format!("invalid network {text:?}; write e.g. \"10.0.0.0/8\" or \"127.0.0.1/32\""),
                    );
                    ok = false;
                }
            }
        }
        let shared = f.shared.unwrap_or(false);
        if shared && !has_failed_auth {
            self.error(
                &sub(&path, "shared"),
                "shares `failed_auth_per_ip`, which is not set",
            );
        }
        Some(super::model::RateLimitSettings {
            failed_auth_per_ip: failed_auth_per_ip?,
            requests_per_user: requests_per_user?,
            trusted_proxies,
            shared,
        })
        .filter(|_| ok)
    }

    /// `{ burst = N, per = "1m" }`; `Some(None)` when absent.
    fn bucket(
        &mut self,
        path: &[Seg],
        f: Option<file::Bucket>,
    ) -> Option<Option<super::model::RateLimit>> {
        let Some(f) = f else { return Some(None) };
        let burst_path = sub(path, "burst");
        let burst = match f.burst {
            None => {
                self.missing_key(&burst_path);
                None
            }
            Some(n) => match u32::try_from(n) {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    self.error(&burst_path, "must be between 1 and 4294967295");
                    None
                }
            },
        };
        let per_path = sub(path, "per");
        let per = match f.per {
            None => {
                self.missing_key(&per_path);
                None
            }
            Some(text) => {
                let before = self.errors.len();
                let d = self.duration(&per_path, Some(&text), Duration::ZERO, false);
                (self.errors.len() == before).then_some(d)
            }
        };
        Some(Some(super::model::RateLimit {
            burst: burst?,
            per: per?,
        }))
    }

    fn top_level(&mut self) {
        let known = fields_of::<file::File>();
        for (key, value) in self.root.get_ref().iter() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let close = suggest(name, known.iter().copied());
            let is_table_array = matches!(value.get_ref(), DeValue::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.get_ref().is_table()));
            let mut message = if value.get_ref().is_table() {
                format!("unknown table [{name}]")
            } else if is_table_array {
                format!("unknown table [[{name}]]")
            } else {
                format!("unknown key `{name}`")
            };
            if let Some(close) = close {
                let _ = write!(message, "; did you mean `{close}`?");
                self.quiet.insert(close.to_owned());
            }
            let path = [Seg::Key(name.to_owned())];
            self.error_at(key.span().start, &path, message);
        }
    }

    fn server(&mut self) -> Option<ServerSettings> {
        let path = [Seg::Key("server".to_owned())];
        if self.lookup(&path).is_none() {
            self.missing(
                &path,
                "missing required table [server] (it must set `listen`)",
            );
            return None;
        }
        let f: file::Server = self.section(&path)?;

        let listen_path = sub(&path, "listen");
        self.string_list(&listen_path, f.listen.as_deref(), "address");
        let listen = f.listen.unwrap_or_default();
        for (i, addr) in listen.iter().enumerate() {
            if !is_listen_addr(addr) {
                self.error(
                    &idx(&listen_path, i),
                    format!("{addr:?} is not a host:port address"),
                );
            }
        }

        let threads = match f.threads {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) => match usize::try_from(n) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.error(&sub(&path, "threads"), "must be at least 1");
                    1
                }
            },
        };
        let grace_period = self.duration(
            &sub(&path, "grace_period"),
            f.grace_period.as_deref(),
            Duration::from_secs(5),
            true,
        );
        let graceful_shutdown_timeout = self.duration(
            &sub(&path, "graceful_shutdown_timeout"),
            f.graceful_shutdown_timeout.as_deref(),
            Duration::from_secs(10),
            true,
        );
        let pid_file = self.non_empty(&sub(&path, "pid_file"), f.pid_file, "/tmp/sessiongate.pid");
        let upgrade_sock = self.non_empty(
            &sub(&path, "upgrade_sock"),
            f.upgrade_sock,
            "/tmp/sessiongate_upgrade.sock",
        );
        let max_request_header_bytes = match f.max_request_header_bytes {
            None => 65536,
            Some(n) => match usize::try_from(n) {
                Ok(n) if n >= 1024 => n,
                _ => {
                    self.error(
                        &sub(&path, "max_request_header_bytes"),
                        "must be at least 1024",
                    );
                    65536
                }
            },
        };
        use crate::route::target::{NonCanonicalPaths, PathParameters, TargetPolicy};
        let non_canonical_paths = self.choice(
            &sub(&path, "non_canonical_paths"),
            f.non_canonical_paths.as_deref(),
            NonCanonicalPaths::Rewrite,
            &[
                ("rewrite", NonCanonicalPaths::Rewrite),
                ("reject", NonCanonicalPaths::Reject),
            ],
        );
        let path_parameters = self.choice(
            &sub(&path, "path_parameters"),
            f.path_parameters.as_deref(),
            PathParameters::Reject,
            &[
                ("reject", PathParameters::Reject),
                ("allow", PathParameters::Allow),
            ],
        );
        let request_head_timeout = self.duration(
            &sub(&path, "request_head_timeout"),
            f.request_head_timeout.as_deref(),
            Duration::from_secs(10),
            false,
        );
        let body_idle_timeout = self.duration(
            &sub(&path, "body_idle_timeout"),
            f.body_idle_timeout.as_deref(),
            Duration::from_secs(60),
            false,
        );
        let write_timeout = self.duration(
            &sub(&path, "write_timeout"),
            f.write_timeout.as_deref(),
            Duration::from_secs(30),
            false,
        );
        let mut limit = |key: &str, value: Option<i64>, default: usize| match value {
            None => default,
            Some(n) => usize::try_from(n).unwrap_or_else(|_| {
                self.error(&sub(&path, key), "must be 0 (no limit) or more");
                default
            }),
        };
        let max_connections = limit("max_connections", f.max_connections, 4096);
        let max_connections_per_ip = limit("max_connections_per_ip", f.max_connections_per_ip, 256);
        Some(ServerSettings {
            target: TargetPolicy {
                non_canonical_paths: non_canonical_paths?,
                path_parameters: path_parameters?,
            },
            listen,
            threads,
            grace_period,
            graceful_shutdown_timeout,
            pid_file,
            upgrade_sock,
            max_request_header_bytes,
            request_head_timeout,
            body_idle_timeout,
            write_timeout,
            max_connections,
            max_connections_per_ip,
        })
    }

    /// `[admin]`: optional; without it there is no admin listener and the
    /// access log is on.
    fn admin(&mut self, public: &[String]) -> Option<AdminSettings> {
        let path = [Seg::Key("admin".to_owned())];
        let defaults = AdminSettings::default();
        if self.lookup(&path).is_none() {
            return Some(defaults);
        }
        let f: file::Admin = self.section(&path)?;
        let mut ok = true;

        let listen_path = sub(&path, "listen");
        let listen = match f.listen {
            Some(addr) if !is_listen_addr(&addr) => {
                self.error(&listen_path, format!("{addr:?} is not a host:port address"));
                ok = false;
                None
            }
            Some(addr) => {
                if let Some(i) = public.iter().position(|p| same_listener(p, &addr)) {
                    self.error(
                        &listen_path,
                        format!(
                            "{addr:?} is also a public listen address (server.listen[{i}]); \
                             the admin listener needs its own"
                        ),
                    );
                    ok = false;
                }
                Some(addr)
            }
            None => None,
        };

        let auth_path = sub(&path, "metrics_basic_auth");
        let metrics_basic_auth = match f.metrics_basic_auth {
            None => None,
            Some(auth) => {
                let user_path = sub(&auth_path, "username");
                let pass_path = sub(&auth_path, "password");
                match &auth.username {
                    None => self.missing_key(&user_path),
                    Some(u) if u.is_empty() => self.error(&user_path, "must not be empty"),
                    Some(u) if u.contains(':') || u.chars().any(char::is_control) => {
                        self.error(&user_path, "must not contain `:` or control characters")
                    }
                    Some(_) => {}
                }
                match &auth.password {
                    None => self.missing_key(&pass_path),
                    Some(p) if p.is_empty() => self.error(&pass_path, "must not be empty"),
                    Some(_) => {}
                }
                if listen.is_none() && !self.quiet.contains(&fmt_path(&listen_path)) {
                    self.error(&auth_path, "has no effect without `listen`");
                }
                match (auth.username, auth.password) {
                    (Some(username), Some(password)) => Some(BasicAuth { username, password }),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
        };

        if !ok {
            return None;
        }
        Some(AdminSettings {
            listen,
            metrics_basic_auth,
            access_log: f.access_log.unwrap_or(defaults.access_log),
            access_log_user: f.access_log_user.unwrap_or(defaults.access_log_user),
        })
    }

    fn cache(&mut self) -> Option<CacheSettings> {
        let path = [Seg::Key("cache".to_owned())];
        let defaults = CacheSettings::default();
        if self.lookup(&path).is_none() {
            return Some(defaults);
        }
        let f: file::Cache = self.section(&path)?;
        let max_entries = match f.max_entries {
            None => defaults.max_entries,
            Some(n) => match u64::try_from(n) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.error(&sub(&path, "max_entries"), "must be at least 1");
                    defaults.max_entries
                }
            },
        };
        let max_age = self.duration(
            &sub(&path, "max_age"),
            f.max_age.as_deref(),
            defaults.max_age,
            false,
        );
        let negative_ttl = self.duration(
            &sub(&path, "negative_ttl"),
            f.negative_ttl.as_deref(),
            defaults.negative_ttl,
            true,
        );
        let stale_for = self.duration(
            &sub(&path, "stale_for"),
            f.stale_for.as_deref(),
            defaults.stale_for,
            false,
        );
        if stale_for > Duration::from_secs(24 * 3600) {
            self.error(&sub(&path, "stale_for"), "must be at most \"24h\"");
        }
        Some(CacheSettings {
            stale_for,
            enabled: f.enabled.unwrap_or(defaults.enabled),
            max_entries,
            max_age,
            negative_ttl,
            configure_notifications: f
                .configure_notifications
                .unwrap_or(defaults.configure_notifications),
        })
    }

    fn redis(&mut self) -> Option<RedisSettings> {
        let path = [Seg::Key("redis".to_owned())];
        if self.lookup(&path).is_none() {
            self.missing(&path, "missing required table [redis]");
            return None;
        }
        let f: file::Redis = self.section(&path)?;

        #[derive(Clone, Copy, PartialEq, Eq)]
        enum Mode {
            Standalone,
            Sentinel,
            Cluster,
        }
        let mode = self.choice(
            &sub(&path, "mode"),
            f.mode.as_deref(),
            Mode::Standalone,
            &[
                ("standalone", Mode::Standalone),
                ("sentinel", Mode::Sentinel),
                ("cluster", Mode::Cluster),
            ],
        );
        let url_path = sub(&path, "url");
        // The URL may hold a password: never echo it.
        let url = match f.url {
            None if mode == Some(Mode::Standalone) => {
                self.missing_key(&url_path);
                None
            }
            None => None,
            Some(_) if mode != Some(Mode::Standalone) => {
                if mode.is_some() {
                    self.error(
                        &url_path,
                        "not used with this mode: list the servers in `sentinels` (sentinel) or `nodes` (cluster), credentials in `username`/`password`",
                    );
                }
                None
            }
            Some(url) => {
                const SCHEMES: [&str; 4] = ["redis://", "rediss://", "unix://", "redis+unix://"];
                let scheme = SCHEMES.iter().find(|s| {
                    url.get(..s.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(s))
                });
                match scheme {
                    None => {
                        self.error(
                            &url_path,
                            "must start with redis://, rediss://, unix:// or redis+unix://",
                        );
                        None
                    }
                    Some(s) if url.len() == s.len() => {
                        self.error(&url_path, format!("has nothing after {s}"));
                        None
                    }
                    Some(_) => Some(url),
                }
            }
        };
        let only = |this: &mut Self, key: &str, given: bool, modes: &str| {
            if given {
                this.error(&sub(&path, key), format!("only with mode = {modes}"));
            }
        };
        let topology = match mode {
            None => None,
            Some(Mode::Standalone) => {
                only(self, "sentinels", f.sentinels.is_some(), "\"sentinel\"");
                only(self, "master", f.master.is_some(), "\"sentinel\"");
                only(self, "nodes", f.nodes.is_some(), "\"cluster\"");
                only(
                    self,
                    "tls",
                    f.tls.is_some(),
                    "\"sentinel\" or \"cluster\" (standalone: use a rediss:// url)",
                );
                Some(RedisTopology::Standalone)
            }
            Some(Mode::Sentinel) => {
                only(self, "nodes", f.nodes.is_some(), "\"cluster\"");
                let sentinels = self.servers(&sub(&path, "sentinels"), f.sentinels, "sentinel");
                let master_path = sub(&path, "master");
                let master = match f.master {
                    None => {
                        self.missing_key(&master_path);
                        None
                    }
                    Some(m) if m.trim().is_empty() => {
                        self.error(&master_path, "must not be empty");
                        None
                    }
                    Some(m) => Some(m),
                };
                match (sentinels, master) {
                    (Some(sentinels), Some(master)) => {
                        Some(RedisTopology::Sentinel { sentinels, master })
                    }
                    _ => None,
                }
            }
            Some(Mode::Cluster) => {
                only(self, "sentinels", f.sentinels.is_some(), "\"sentinel\"");
                only(self, "master", f.master.is_some(), "\"sentinel\"");
                self.servers(&sub(&path, "nodes"), f.nodes, "node")
                    .map(|nodes| RedisTopology::Cluster { nodes })
            }
        };
        let username = match f.username {
            Some(u) if u.is_empty() => {
                self.error(&sub(&path, "username"), "must not be empty");
                None
            }
            other => other,
        };
        let password = match (f.password, f.password_file) {
            (Some(_), Some(_)) => {
                self.error(
                    &sub(&path, "password_file"),
                    "set either `password` or `password_file`, not both",
                );
                None
            }
            (Some(p), None) => Some(p),
            (None, Some(file)) => self.key_file(&sub(&path, "password_file"), &file, |bytes| {
                // Never echo the contents: they are a secret.
                let text = std::str::from_utf8(bytes).map_err(|_| "is not UTF-8".to_owned())?;
                let text = text.trim_end_matches(['\r', '\n']);
                if text.is_empty() {
                    return Err("is empty".to_owned());
                }
                Ok(text.to_owned())
            }),
            (None, None) => None,
        };
        let tls = f.tls.unwrap_or(false);
        // What logs, errors and reloads name the servers by (no credentials).
        let url = match &topology {
            Some(RedisTopology::Sentinel { sentinels, master }) => Some(format!(
                "{}://{}/{master}",
                if tls {
                    "rediss+sentinel"
                } else {
                    "redis+sentinel"
                },
                sentinels.join(",")
            )),
            Some(RedisTopology::Cluster { nodes }) => Some(format!(
                "{}://{}",
                if tls {
                    "rediss+cluster"
                } else {
                    "redis+cluster"
                },
                nodes.join(",")
            )),
            _ => url,
        };
        let command_timeout = self.duration(
            &sub(&path, "command_timeout"),
            f.command_timeout.as_deref(),
            Duration::from_millis(100),
            false,
        );
        let connect_timeout = self.duration(
            &sub(&path, "connect_timeout"),
            f.connect_timeout.as_deref(),
            Duration::from_secs(1),
            false,
        );
        let breaker_failures = match f.breaker_failures {
            None => 5,
            Some(n) => match u32::try_from(n) {
                Ok(n) if (1..=10_000).contains(&n) => n,
                _ => {
                    self.error(
                        &sub(&path, "breaker_failures"),
                        "must be between 1 and 10000",
                    );
                    5
                }
            },
        };
        let cooldown_path = sub(&path, "breaker_cooldown");
        let breaker_cooldown = self.duration(
            &cooldown_path,
            f.breaker_cooldown.as_deref(),
            Duration::from_secs(1),
            false,
        );
        if breaker_cooldown > Duration::from_secs(60) {
            self.error(&cooldown_path, "must be at most \"60s\"");
        }
        Some(RedisSettings {
            url: url?,
            topology: topology?,
            username,
            password,
            tls,
            command_timeout,
            connect_timeout,
            breaker_failures,
            breaker_cooldown,
        })
    }

    fn session(&mut self) -> Option<SessionSettings> {
        let path = [Seg::Key("session".to_owned())];
        if self.lookup(&path).is_none() {
            self.missing(&path, "missing required table [session]");
            return None;
        }
        let f: file::Session = self.section(&path)?;

        let cookie = f.cookie.unwrap_or_else(|| "connect.sid".to_owned());
        if !is_cookie_name(&cookie) {
            self.error(
                &sub(&path, "cookie"),
                format!("{cookie:?} is not a valid cookie name"),
            );
        }
        let cookie_format = self.choice(
            &sub(&path, "cookie_format"),
            f.cookie_format.as_deref(),
            CookieFormat::Express,
            &[
                ("express", CookieFormat::Express),
                ("plain", CookieFormat::Plain),
            ],
        );
        // Secrets are never echoed.
        let secrets_path = sub(&path, "secrets");
        if cookie_format == Some(CookieFormat::Express) {
            match f.secrets.as_deref() {
                None => self.missing(
                    &secrets_path,
                    "missing required key `secrets` (cookie_format = \"express\" needs the \
                     express-session secrets)",
                ),
                Some([]) => self.error(&secrets_path, "must list at least one secret"),
                Some(_) => {}
            }
        }
        let secrets = f.secrets.unwrap_or_default();
        for (i, secret) in secrets.iter().enumerate() {
            if secret.is_empty() {
                self.error(&idx(&secrets_path, i), "a secret must not be empty");
            }
        }
        let bearer_path = sub(&path, "bearer");
        let bearer = self.choice(
            &bearer_path,
            f.bearer.as_deref(),
            BearerMode::Off,
            &[
                ("off", BearerMode::Off),
                ("opaque", BearerMode::Opaque),
                ("jwt", BearerMode::Jwt),
            ],
        );
        let key_text = f.key.unwrap_or_else(|| "sess:{id}".to_owned());
        let key = KeyTemplate::parse(&key_text, "{id}");
        if key.is_none() {
            self.error(
                &sub(&path, "key"),
                format!("{key_text:?} must contain `{{id}}` exactly once"),
            );
        }
        let bearer_key = self.bearer_key(
            &path,
            bearer,
            cookie_format,
            key.as_ref(),
            f.bearer_key,
            f.allow_unsigned_bearer,
        );
        let value = self.choice(
            &sub(&path, "value"),
            f.value.as_deref(),
            ValueFormat::Json,
            &[("json", ValueFormat::Json), ("hash", ValueFormat::Hash)],
        );
        let role_text = f.role_field.unwrap_or_else(|| "user.role".to_owned());
        let role_field = FieldPath::parse(&role_text);
        if role_field.is_none() {
            self.error(
                &sub(&path, "role_field"),
                format!("{role_text:?} is not a dotted field path (e.g. \"user.role\")"),
            );
        }
        let lifecycle = LifecycleKeys {
            logout_path: f.logout_path,
            logout_all_path: f.logout_all_path,
            logout_redirect: f.logout_redirect,
            user_field: f.user_field,
            user_sessions_key: f.user_sessions_key,
            user_tokens_key: f.user_tokens_key,
            cookie_path: f.cookie_path,
            cookie_domain: f.cookie_domain,
        };
        let lifecycle = self.lifecycle(&path, lifecycle, &cookie);
        let sliding = self.sliding(&sub(&path, "sliding"), f.sliding);
        let lifecycle = lifecycle?;
        Some(SessionSettings {
            logout_path: lifecycle.logout_path,
            logout_all_path: lifecycle.logout_all_path,
            logout_redirect: lifecycle.logout_redirect,
            user_field: lifecycle.user_field,
            user_sessions_key: lifecycle.user_sessions_key,
            user_tokens_key: lifecycle.user_tokens_key,
            cookie_path: lifecycle.cookie_path,
            cookie_domain: lifecycle.cookie_domain,
            sliding: sliding?,
            cookie,
            cookie_format: cookie_format?,
            secrets,
            bearer: bearer?,
            bearer_key: bearer_key?,
            key: key?,
            value: value?,
            role_field: role_field?,
        })
    }

    /// `bearer_key` and `allow_unsigned_bearer`: where opaque bearer ids are
    /// looked up. Required with `bearer = "opaque"`; a bearer key that can name
    /// the keys of signed (express) cookies needs `allow_unsigned_bearer = true`,
    /// since a bare session id would then be as good as its signed cookie.
    fn bearer_key(
        &mut self,
        path: &[Seg],
        bearer: Option<BearerMode>,
        cookie_format: Option<CookieFormat>,
        cookie_key: Option<&KeyTemplate>,
        text: Option<String>,
        allow_unsigned: Option<bool>,
    ) -> Option<Option<KeyTemplate>> {
        let key_path = sub(path, "bearer_key");
        let allow_path = sub(path, "allow_unsigned_bearer");
        let bearer = bearer?;
        if bearer != BearerMode::Opaque {
            for (set, key) in [
                (text.is_some(), &key_path),
                (allow_unsigned.is_some(), &allow_path),
            ] {
                if set {
                    self.error(key, "is only used with bearer = \"opaque\"");
                }
            }
            return Some(None);
        }
        let Some(text) = text else {
            self.missing(
                &key_path,
                "missing required key `bearer_key` (bearer = \"opaque\" needs the Redis key of \
                 a bearer id, e.g. \"api:{id}\", or \"same_as_cookie\" to look bearer ids up \
                 under the cookie's `key`)",
            );
            return None;
        };
        let same = text == "same_as_cookie";
        let template = if same {
            cookie_key.cloned()
        } else {
            let template = KeyTemplate::parse(&text, "{id}");
            if template.is_none() {
                self.error(
                    &key_path,
                    format!(
                        "{text:?} must contain `{{id}}` exactly once (or be \"same_as_cookie\")"
                    ),
                );
            }
            template
        };
        let template = template?;
        let cookie_key = cookie_key?;
        let signed = cookie_format? == CookieFormat::Express;
        if signed && allow_unsigned != Some(true) && template.overlaps(cookie_key) {
            let why = if same {
                "\"same_as_cookie\" lets a bare session id, sent as a bearer token, in without \
                 the cookie's signature"
                    .to_owned()
            } else {
                format!(
                    "{text:?} can name the same Redis keys as `key`, so a bare session id sent as \
                     a bearer token would get in without the cookie's signature; use a prefix of \
                     its own (e.g. \"api:{{id}}\")"
                )
            };
            self.error(
                &key_path,
                format!(
                    "{why} (cookie_format = \"express\"); set `allow_unsigned_bearer = true` \
                     to accept that"
                ),
            );
            return None;
        }
        Some(Some(template))
    }

    /// The `[session]` keys of logout and of the per-user id sets.
    fn lifecycle(&mut self, path: &[Seg], f: LifecycleKeys, cookie: &str) -> Option<Lifecycle> {
        let mut ok = true;
        let logout_path = f.logout_path.as_deref().and_then(|p| {
            let checked = self.exact_path(&sub(path, "logout_path"), p);
            ok &= checked.is_some();
            checked
        });
        let all_path = sub(path, "logout_all_path");
        let logout_all_path = f.logout_all_path.as_deref().and_then(|p| {
            let checked = self.exact_path(&all_path, p);
            ok &= checked.is_some();
            checked
        });
        if logout_all_path.is_some() && logout_all_path == logout_path {
            self.error(&all_path, "must differ from `logout_path`");
            ok = false;
        }

        let redirect_path = sub(path, "logout_redirect");
        let logout_redirect = match f.logout_redirect.clone() {
            Some(target) if !is_valid_redirect(&target) => {
                self.error(
                    &redirect_path,
                    format!(
                        "{target:?} must be a path starting with \"/\" (not \"//\") or an \
                         absolute http(s) URL"
                    ),
                );
                ok = false;
                None
            }
            Some(_) if f.logout_path.is_none() && f.logout_all_path.is_none() => {
                self.error(
                    &redirect_path,
                    "has no effect without `logout_path` or `logout_all_path`",
                );
                ok = false;
                None
            }
            other => other,
        };

        let user_text = f.user_field.as_deref().unwrap_or("user.id");
        let user_field = FieldPath::parse(user_text);
        if user_field.is_none() {
            self.error(
                &sub(path, "user_field"),
                format!("{user_text:?} is not a dotted field path (e.g. \"user.id\")"),
            );
        }

        let mut user_set = |key: &str| -> Option<Option<KeyTemplate>> {
            let Some(text) = (match key {
                "user_sessions_key" => f.user_sessions_key.as_deref(),
                _ => f.user_tokens_key.as_deref(),
            }) else {
                return Some(None);
            };
            let template = KeyTemplate::parse(text, "{user}");
            if template.is_none() {
                self.error(
                    &sub(path, key),
                    format!("{text:?} must contain `{{user}}` exactly once"),
                );
            }
            template.map(Some)
        };
        let user_sessions_key = user_set("user_sessions_key");
        let user_tokens_key = user_set("user_tokens_key");
        let jwt = [Seg::Key("jwt".to_owned())];
        if f.user_tokens_key.is_some() && self.lookup(&jwt).is_none() {
            self.error(
                &sub(path, "user_tokens_key"),
                "lists token ids, which only exist with bearer = \"jwt\" and a [jwt] table \
                 (their keys are its `key`)",
            );
            ok = false;
        }
        if f.logout_all_path.is_some()
            && f.user_sessions_key.is_none()
            && f.user_tokens_key.is_none()
        {
            self.error(
                &all_path,
                "needs `user_sessions_key` (the Redis set of each user's session ids) to find \
                 the user's sessions",
            );
            ok = false;
        }

        let host_prefixed = cookie.starts_with("__Host-");
        let cookie_path_path = sub(path, "cookie_path");
        let cookie_path = f.cookie_path.clone().unwrap_or_else(|| "/".to_owned());
        if !cookie_path.starts_with('/') || !is_cookie_attribute(&cookie_path) {
            self.error(
                &cookie_path_path,
                format!(
                    "{cookie_path:?} must start with \"/\" and hold no `;`, `,`, spaces or \
                     control characters"
                ),
            );
            ok = false;
        } else if host_prefixed && cookie_path != "/" {
            self.error(&cookie_path_path, "a `__Host-` cookie must have Path=/");
            ok = false;
        }
        let domain_path = sub(path, "cookie_domain");
        let cookie_domain = f.cookie_domain.clone();
        if let Some(domain) = &cookie_domain {
            let bare = domain.strip_prefix('.').unwrap_or(domain);
            let valid = !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !valid {
                self.error(&domain_path, format!("{domain:?} is not a domain name"));
                ok = false;
            } else if host_prefixed {
                self.error(&domain_path, "a `__Host-` cookie cannot have a Domain");
                ok = false;
            }
        }

        let lifecycle = Lifecycle {
            logout_path,
            logout_all_path,
            logout_redirect,
            user_field: user_field?,
            user_sessions_key: user_sessions_key?,
            user_tokens_key: user_tokens_key?,
            cookie_path,
            cookie_domain,
        };
        ok.then_some(lifecycle)
    }

    /// A path matched exactly (after normalisation): absolute, plain and normal.
    fn exact_path(&mut self, path: &[Seg], text: &str) -> Option<String> {
        if !text.starts_with('/') {
            self.error(path, format!("{text:?} must start with \"/\""));
            return None;
        }
        if text.contains(['?', '#']) || text.contains(char::is_whitespace) {
            self.error(
                path,
                format!("{text:?} must be a plain path (no query, fragment or spaces)"),
            );
            return None;
        }
        match crate::route::path::normalise_path(text) {
            Ok(normal) if normal == text => Some(text.to_owned()),
            Ok(normal) => {
                self.error(
                    path,
                    format!("{text:?} is not a normalised path; write {normal:?}"),
                );
                None
            }
            Err(e) => {
                self.error(path, format!("{text:?}: {e}"));
                None
            }
        }
    }

    /// `[jwt]`: required by, and only used with, `[session] bearer = "jwt"`.
    /// Key files are read (relative to the configuration file) and parsed here,
    /// so a bad key is a configuration error, not a failure per request.
    fn jwt(&mut self) -> Option<Option<super::model::JwtSettings>> {
        use crate::credential::jwt;
        use jsonwebtoken::AlgorithmFamily;

        let path = [Seg::Key("jwt".to_owned())];
        let bearer_path = [
            Seg::Key("session".to_owned()),
            Seg::Key("bearer".to_owned()),
        ];
        let wants_jwt = self
            .lookup(&bearer_path)
            .is_some_and(|v| v.get_ref().as_str() == Some("jwt"));
        if self.lookup(&path).is_none() {
            if wants_jwt {
                self.error(
                    &bearer_path,
                    "bearer = \"jwt\" needs a [jwt] table (its `algorithms`, and a `secret`, \
                     `public_key_file` or `jwks_file`)",
                );
                return None;
            }
            return Some(None);
        }
        if !wants_jwt {
            let offset = self.position(&path, true);
            self.error_at(
                offset,
                &path,
                "[jwt] is only used with [session] bearer = \"jwt\"",
            );
        }
        let f: file::Jwt = self.section(&path)?;

        let algs_path = sub(&path, "algorithms");
        self.string_list(&algs_path, f.algorithms.as_deref(), "algorithm");
        let names = f.algorithms.unwrap_or_default();
        let mut algorithms = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match jwt::algorithm(name) {
                Some(alg) if algorithms.contains(&alg) => {}
                Some(alg) => algorithms.push(alg),
                None if name.eq_ignore_ascii_case("none") => self.error(
                    &idx(&algs_path, i),
                    "\"none\" (unsigned tokens) is never accepted",
                ),
                None => {
                    let known: Vec<&str> = jwt::ALGORITHMS.iter().map(|(n, _)| *n).collect();
                    self.error(
                        &idx(&algs_path, i),
                        format!(
                            "unknown algorithm {name:?}, expected some of {}",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        // Whether the key settings are sound enough to say which algorithm lacks a key.
        let mut keys_ok = !algorithms.is_empty();

        // The secret is never echoed.
        let secret_path = sub(&path, "secret");
        let hmac = algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        let secret = match f.secret {
            Some(s) if s.is_empty() => {
                self.error(&secret_path, "must not be empty");
                keys_ok = false;
                None
            }
            Some(_) if !hmac && !algorithms.is_empty() => {
                self.error(
                    &secret_path,
                    "is set but `algorithms` lists no HS algorithm",
                );
                None
            }
            Some(s) => Some(s.into_bytes()),
            None => {
                if hmac {
                    self.missing(
                        &secret_path,
                        "missing required key `secret` (`algorithms` lists an HS algorithm)",
                    );
                    keys_ok = false;
                }
                None
            }
        };

        let public_key = self
            .jwt_keys(
                &sub(&path, "public_key_file"),
                f.public_key_file,
                |pem| jwt::public_key_from_pem(pem).map(|key| vec![key]),
                &algorithms,
                &mut keys_ok,
            )
            .and_then(|keys| keys.into_iter().next());
        let jwks = self.jwt_keys(
            &sub(&path, "jwks_file"),
            f.jwks_file,
            jwt::jwks_keys,
            &algorithms,
            &mut keys_ok,
        );

        let id_claim = self.non_empty(&sub(&path, "id_claim"), f.id_claim, "tokenId");
        let key_text = f.key.unwrap_or_else(|| "token:{id}".to_owned());
        let key = KeyTemplate::parse(&key_text, "{id}");
        if key.is_none() {
            self.error(
                &sub(&path, "key"),
                format!("{key_text:?} must contain `{{id}}` exactly once"),
            );
        }
        let mut optional = |name: &str, value: Option<String>| match value {
            Some(v) if v.is_empty() => {
                self.error(&sub(&path, name), "must not be empty");
                None
            }
            other => other,
        };
        let issuer = optional("issuer", f.issuer);
        let typ = optional("typ", f.typ);
        let audience_path = sub(&path, "audience");
        let audience = match f.audience {
            None => Vec::new(),
            Some(file::OneOrMany::One(aud)) => vec![aud],
            Some(file::OneOrMany::Many(list)) => {
                if list.is_empty() {
                    self.error(&audience_path, "must list at least one audience");
                }
                list
            }
        };
        for (i, aud) in audience.iter().enumerate() {
            if aud.is_empty() {
                let at = match audience.len() {
                    1 => audience_path.clone(),
                    _ => idx(&audience_path, i),
                };
                self.error(&at, "must not be empty");
            }
        }
        let claims = self.claim_rules(&sub(&path, "claims"), f.claims.unwrap_or_default());
        let leeway_path = sub(&path, "leeway");
        let leeway = self.duration(
            &leeway_path,
            f.leeway.as_deref(),
            Duration::from_secs(30),
            true,
        );
        if leeway > jwt::MAX_LEEWAY {
            self.error(&leeway_path, "must be at most 1h");
        }

        let verifier = jwt::JwtVerifier::new(jwt::JwtOptions {
            algorithms,
            secret,
            public_key,
            jwks,
            id_claim,
            issuer,
            audience,
            leeway,
            typ,
            claims,
        });
        if keys_ok {
            for (i, name) in names.iter().enumerate() {
                match jwt::algorithm(name) {
                    Some(alg) if !verifier.has_key_for(alg) => self.error(
                        &idx(&algs_path, i),
                        format!(
                            "{name} is listed but no key can verify it; set `public_key_file` \
                             or `jwks_file`"
                        ),
                    ),
                    _ => {}
                }
            }
        }
        Some(Some(super::model::JwtSettings {
            verifier: std::sync::Arc::new(verifier),
            key: key?,
        }))
    }

    /// `[jwt.claims]`: `name = value` (exactly), `name = [values]` (one of) or
    /// `name = { contains = [values] }` (an array claim, or a space-separated
    /// string claim, holding every one). Values are strings, integers or booleans.
    fn claim_rules(
        &mut self,
        path: &[Seg],
        rules: std::collections::BTreeMap<String, toml::Value>,
    ) -> Vec<crate::credential::jwt::ClaimRule> {
        use crate::credential::jwt::{ClaimCheck, ClaimRule};
        const SHAPE: &str =
            "a claim rule is a string, integer or boolean (the exact value), a list \
                             of them (one of), or { contains = [...] }";
        let mut out = Vec::new();
        for (claim, rule) in rules {
            let at = sub(path, &claim);
            if claim.is_empty() {
                self.error(&at, "a claim name must not be empty");
                continue;
            }
            let scalar = |v: &toml::Value| match v {
                toml::Value::String(s) => Some(serde_json::Value::from(s.clone())),
                toml::Value::Integer(i) => Some(serde_json::Value::from(*i)),
                toml::Value::Boolean(b) => Some(serde_json::Value::from(*b)),
                _ => None,
            };
            let list = |this: &mut Self, at: &[Seg], items: &[toml::Value]| {
                if items.is_empty() {
                    this.error(at, "must list at least one value");
                    return None;
                }
                let mut values = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match scalar(item) {
                        Some(v) => values.push(v),
                        None => {
                            this.error(&idx(at, i), "must be a string, integer or boolean");
                            return None;
                        }
                    }
                }
                Some(values)
            };
            let check = match &rule {
                toml::Value::Array(items) => list(self, &at, items).map(ClaimCheck::OneOf),
                toml::Value::Table(table) => {
                    let mut check = None;
                    for (key, value) in table {
                        let key_at = sub(&at, key);
                        match (key.as_str(), value) {
                            ("contains", toml::Value::Array(items)) => {
                                check = list(self, &key_at, items).map(ClaimCheck::Contains);
                            }
                            ("contains", _) => {
                                self.error(&key_at, "must be a list of values");
                            }
                            _ => self.error(
                                &key_at,
                                format!("unknown rule {key:?}, expected `contains`"),
                            ),
                        }
                    }
                    if table.is_empty() {
                        self.error(&at, SHAPE);
                    }
                    check
                }
                other => match scalar(other) {
                    Some(v) => Some(ClaimCheck::Equals(v)),
                    None => {
                        self.error(&at, SHAPE);
                        None
                    }
                },
            };
            if let Some(check) = check {
                out.push(ClaimRule { claim, check });
            }
        }
        out
    }

    /// Reads the file `file` names (relative to the configuration file's
    /// directory) and parses it; problems are reported at `path`.
    /// Reads the keys in a `[jwt]` key file; an unreadable file clears
    /// `keys_ok`, and keys that none of `algorithms` uses are an error.
    fn jwt_keys(
        &mut self,
        path: &[Seg],
        file: Option<String>,
        parse: fn(&[u8]) -> Result<Vec<crate::credential::jwt::PublicKey>, String>,
        algorithms: &[jsonwebtoken::Algorithm],
        keys_ok: &mut bool,
    ) -> Option<Vec<crate::credential::jwt::PublicKey>> {
        let file = file?;
        let Some(keys) = self.key_file(path, &file, parse) else {
            *keys_ok = false;
            return None;
        };
        let fits = keys.iter().any(|k| algorithms.iter().any(|a| k.fits(*a)));
        if !algorithms.is_empty() && !fits {
            let message = match keys.as_slice() {
                [one] => format!(
                    "{file:?} holds {}, which none of `algorithms` uses",
                    one.kind().describe()
                ),
                _ => format!("{file:?} holds no key that any of `algorithms` uses"),
            };
            self.error(path, message);
        }
        Some(keys)
    }

    fn key_file<T>(
        &mut self,
        path: &[Seg],
        file: &str,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Option<T> {
        if file.is_empty() {
            self.error(path, "must not be empty");
            return None;
        }
        let full = self.base.join(file);
        match std::fs::read(&full) {
            Err(e) => {
                self.error(path, format!("cannot read {}: {e}", full.display()));
                None
            }
            Ok(bytes) => match parse(&bytes) {
                Ok(parsed) => Some(parsed),
                Err(message) => {
                    self.error(path, format!("{} {message}", full.display()));
                    None
                }
            },
        }
    }

    /// `sliding = { ttl, touch_after }`: both durations, touch_after below ttl.
    fn sliding(&mut self, path: &[Seg], f: Option<file::Sliding>) -> Option<Option<Sliding>> {
        let Some(f) = f else { return Some(None) };
        let ttl_path = sub(path, "ttl");
        let ttl = match f.ttl {
            None => {
                self.missing_key(&ttl_path);
                return None;
            }
            Some(t) => self.duration(&ttl_path, Some(&t), Duration::ZERO, false),
        };
        let touch_path = sub(path, "touch_after");
        let touch_after = self.duration(
            &touch_path,
            f.touch_after.as_deref(),
            Duration::from_secs(60).min(ttl / 2),
            true,
        );
        if !ttl.is_zero() && touch_after >= ttl {
            self.error(&touch_path, "must be shorter than `ttl`");
            return None;
        }
        Some(Some(Sliding { ttl, touch_after }))
    }

    fn identity(&mut self) -> Option<Vec<IdentityHeader>> {
        let path = [Seg::Key("identity".to_owned())];
        if self.lookup(&path).is_none() {
            return Some(Vec::new());
        }
        let f: file::Identity = self.section(&path)?;
        let Some(headers) = f.headers else {
            return Some(Vec::new());
        };
        let headers_path = sub(&path, "headers");
        let mut entries: Vec<(usize, String, file::IdentityEntry)> = headers
            .into_iter()
            .map(|(name, entry)| {
                let offset = self.position(&sub(&headers_path, &name), true);
                (offset, name, entry)
            })
            .collect();
        entries.sort_by_key(|(offset, _, _)| *offset);

        let mut seen: Vec<(String, String, usize)> = Vec::new();
        let mut out = Vec::new();
        let mut ok = true;
        for (offset, name, entry) in entries {
            let entry_path = sub(&headers_path, &name);
            let (field, required, max_bytes) = match entry {
                file::IdentityEntry::Field(field) => (field, false, DEFAULT_IDENTITY_BYTES),
                file::IdentityEntry::Table(t) => {
                    let max_bytes = match t.max_bytes {
                        None => DEFAULT_IDENTITY_BYTES,
                        Some(n) => match usize::try_from(n) {
                            Ok(n) if (1..=65536).contains(&n) => n,
                            _ => {
                                self.error(
                                    &sub(&entry_path, "max_bytes"),
                                    "must be between 1 and 65536",
                                );
                                ok = false;
                                DEFAULT_IDENTITY_BYTES
                            }
                        },
                    };
                    (t.field, t.required.unwrap_or(false), max_bytes)
                }
            };
            let lower = name.to_ascii_lowercase();
            let folded = lower.replace('_', "-");
            let header = HeaderName::from_bytes(lower.as_bytes()).ok();
            if header.is_none() {
                self.error_at(
                    offset,
                    &entry_path,
                    format!("{name:?} is not a valid header name"),
                );
            } else if is_reserved_header(&folded) {
                self.error_at(
                    offset,
                    &entry_path,
                    format!(
                        "{name:?} cannot be set from the session (it is a hop-by-hop or \
                         credential header)"
                    ),
                );
                ok = false;
            }
            if let Some((_, first, first_offset)) = seen.iter().find(|(f, _, _)| *f == folded) {
                let message = format!(
                    "{name:?} is the same header as {first:?} (line {})",
                    self.line_of(*first_offset)
                );
                self.error_at(offset, &entry_path, message);
                ok = false;
            } else {
                seen.push((folded, name.clone(), offset));
            }
            let field_path = FieldPath::parse(&field);
            if field_path.is_none() {
                self.error(
                    &entry_path,
                    format!("{field:?} is not a dotted field path (e.g. \"user.id\")"),
                );
            }
            match (header, field_path) {
                (Some(name), Some(field)) => out.push(IdentityHeader {
                    name,
                    field,
                    required,
                    max_bytes,
                }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// The upstreams, and each `[[upstream]]`'s name by position (known even
    /// when the rest of it is invalid, so routes can still refer to it);
    /// `None` names when the section itself is missing or malformed.
    #[allow(clippy::type_complexity)]
    fn upstreams(&mut self) -> (Option<Vec<Upstream>>, Option<Vec<Option<String>>>) {
        let path = [Seg::Key("upstream".to_owned())];
        let Some(value) = self.lookup(&path) else {
            self.missing(&path, "at least one [[upstream]] is required");
            return (None, None);
        };
        let Some(items) = value.get_ref().as_array() else {
            let found = with_article(value.get_ref().type_str());
            self.error(
                &path,
                format!("expected [[upstream]] tables, found {found}"),
            );
            return (None, None);
        };
        if items.is_empty() {
            self.error(&path, "at least one [[upstream]] is required");
        }

        let mut names: Vec<Option<String>> = Vec::new();
        let mut out = Vec::new();
        for i in 0..items.len() {
            let entry = idx(&path, i);
            let Some(f) = self.section::<file::Upstream>(&entry) else {
                names.push(None);
                out.push(None);
                continue;
            };
            let name_path = sub(&entry, "name");
            let name = match f.name {
                None => {
                    self.missing_key(&name_path);
                    None
                }
                Some(name) if name.is_empty() => {
                    self.error(&name_path, "must not be empty");
                    None
                }
                Some(name) => {
                    if let Some(first) = names.iter().position(|n| n.as_ref() == Some(&name)) {
                        let line = self.line_of(self.position(&idx(&path, first), false));
                        self.error(
                            &name_path,
                            format!("duplicate upstream name {name:?} (first used on line {line})"),
                        );
                    }
                    Some(name)
                }
            };
            names.push(name.clone());

            let addrs_path = sub(&entry, "addrs");
            self.string_list(&addrs_path, f.addrs.as_deref(), "address");
            let mut addrs = Vec::new();
            let mut ok = f.addrs.as_ref().is_some_and(|a| !a.is_empty());
            for (j, addr) in f.addrs.unwrap_or_default().iter().enumerate() {
                match resolve(addr) {
                    Ok(resolved) => addrs.extend(resolved),
                    Err(message) => {
                        self.error(&idx(&addrs_path, j), message);
                        ok = false;
                    }
                }
            }
            let connect_timeout = self.duration(
                &sub(&entry, "connect_timeout"),
                f.connect_timeout.as_deref(),
                Duration::from_secs(1),
                false,
            );
            let read_timeout = self.duration(
                &sub(&entry, "read_timeout"),
                f.read_timeout.as_deref(),
                Duration::from_secs(30),
                false,
            );
            let health_check = f.health_check.map(|h| {
                let hc_path = sub(&entry, "health_check");
                let path = h.path.filter(|p| {
                    let good = p.starts_with('/') && !p.bytes().any(|b| b <= b' ' || b == 0x7f);
                    if !good {
                        self.error(
                            &sub(&hc_path, "path"),
                            "must start with `/` and contain no spaces or control characters",
                        );
                        ok = false;
                    }
                    good
                });
                let interval = self.duration(
                    &sub(&hc_path, "interval"),
                    h.interval.as_deref(),
                    Duration::from_secs(5),
                    false,
                );
                super::model::HealthCheck { path, interval }
            });
            out.push(match name {
                Some(name) if ok => Some(Upstream {
                    name,
                    addrs,
                    connect_timeout,
                    read_timeout,
                    health_check,
                }),
                _ => None,
            });
        }
        (out.into_iter().collect(), Some(names))
    }

    fn routes(&mut self, upstreams: Option<&[Option<String>]>) -> Option<Vec<Route>> {
        let path = [Seg::Key("route".to_owned())];
        let Some(value) = self.lookup(&path) else {
            self.missing(&path, "at least one [[route]] is required");
            return None;
        };
        let Some(items) = value.get_ref().as_array() else {
            let found = with_article(value.get_ref().type_str());
            self.error(&path, format!("expected [[route]] tables, found {found}"));
            return None;
        };
        if items.is_empty() {
            self.error(&path, "at least one [[route]] is required");
        }

        // (name, offset of its route)
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut out = Vec::new();
        for i in 0..items.len() {
            let entry = idx(&path, i);
            let Some(f) = self.section::<file::Route>(&entry) else {
                out.push(None);
                continue;
            };

            let prefix_path = sub(&entry, "path_prefix");
            let path_prefix = match f.path_prefix {
                None => {
                    self.missing_key(&prefix_path);
                    None
                }
                Some(prefix) if !prefix.starts_with('/') => {
                    self.error(&prefix_path, format!("{prefix:?} must start with \"/\""));
                    None
                }
                Some(prefix)
                    if prefix.contains(['?', '#', ';']) || prefix.contains(char::is_whitespace) =>
                {
                    self.error(
                        &prefix_path,
                        format!(
                            "{prefix:?} must be a plain path (no query, fragment, `;` \
                             parameters or spaces)"
                        ),
                    );
                    None
                }
                // Requests are matched on their normalised path, so a prefix that is
                // not itself normal (dot segments, `//`, raw non-ASCII) could never match.
                Some(prefix) => match crate::route::path::normalise_path(&prefix) {
                    Ok(normal) if normal == prefix.as_str() => Some(prefix),
                    Ok(normal) => {
                        self.error(
                            &prefix_path,
                            format!("{prefix:?} is not a normalised path; write {normal:?}"),
                        );
                        None
                    }
                    Err(e) => {
                        self.error(&prefix_path, format!("{prefix:?}: {e}"));
                        None
                    }
                },
            };

            let name_path = sub(&entry, "name");
            let explicit = f.name.is_some();
            let name = match f.name {
                Some(name) if name.is_empty() => {
                    self.error(&name_path, "must not be empty");
                    None
                }
                Some(name) => Some(name),
                None => path_prefix.clone(),
            };
            if let Some(name) = &name {
                let offset = self.position(&entry, false);
                if let Some((_, first)) = seen.iter().find(|(n, _)| n == name) {
                    let line = self.line_of(*first);
                    let message = if explicit {
                        format!("duplicate route name {name:?} (first used on line {line})")
                    } else {
                        format!(
                            "duplicate route name {name:?} (first used on line {line}); a route \
                             without `name` is named after its path_prefix, so give it a `name`"
                        )
                    };
                    self.error(&name_path, message);
                } else {
                    seen.push((name.clone(), offset));
                }
            }

            // `Some(Err(()))`: a host that was reported as invalid.
            let host = f.host.map(|host| {
                normalize_host(&host).map_err(|message| self.error(&sub(&entry, "host"), message))
            });

            let upstream_path = sub(&entry, "upstream");
            let upstream = match (f.upstream, upstreams) {
                (None, _) => {
                    self.missing_key(&upstream_path);
                    None
                }
                (Some(_), None) => None, // the missing [[upstream]] is reported already
                (Some(wanted), Some(names)) => {
                    let found = names
                        .iter()
                        .position(|n| n.as_deref() == Some(wanted.as_str()));
                    if found.is_none() {
                        let mut message = format!("no [[upstream]] is named {wanted:?}");
                        if let Some(close) =
                            suggest(&wanted, names.iter().flatten().map(String::as_str))
                        {
                            let _ = write!(message, "; did you mean {close:?}?");
                        }
                        self.error(&upstream_path, message);
                    }
                    found
                }
            };

            let access = self.choice(
                &sub(&entry, "access"),
                f.access.as_deref(),
                Access::Authenticated,
                &[
                    ("public", Access::Public),
                    ("authenticated", Access::Authenticated),
                ],
            );
            let roles_path = sub(&entry, "roles");
            if f.roles.is_some() && access == Some(Access::Public) {
                self.error(
                    &roles_path,
                    "`roles` only applies to access = \"authenticated\" routes",
                );
            }
            let roles = f.roles.unwrap_or_default();
            for (j, role) in roles.iter().enumerate() {
                if role.is_empty() {
                    self.error(&idx(&roles_path, j), "a role must not be empty");
                }
            }

            let on_store_error = self.choice(
                &sub(&entry, "on_store_error"),
                f.on_store_error.as_deref(),
                StoreErrorPolicy::Deny,
                &[
                    ("deny", StoreErrorPolicy::Deny),
                    ("stale", StoreErrorPolicy::Stale),
                ],
            );
            if f.on_store_error.is_some() && access == Some(Access::Public) {
                self.error(
                    &sub(&entry, "on_store_error"),
                    "`on_store_error` only applies to access = \"authenticated\" routes",
                );
            }

            let login_redirect = match f.on_unauthenticated {
                None => Some(None),
                Some(on) => {
                    let redirect_path = sub(&sub(&entry, "on_unauthenticated"), "redirect");
                    match on.redirect {
                        None => {
                            self.missing_key(&redirect_path);
                            None
                        }
                        Some(target) if !is_valid_redirect(&target) => {
                            self.error(
                                &redirect_path,
                                format!(
                                    "{target:?} must be a path starting with \"/\" (not \"//\") \
                                     or an absolute http(s) URL"
                                ),
                            );
                            None
                        }
                        Some(target) => Some(Some(target)),
                    }
                }
            };

            let methods_path = sub(&entry, "methods");
            let methods = match f.methods {
                None => Some(None),
                Some(list) if list.is_empty() => {
                    self.error(&methods_path, "must list at least one method");
                    None
                }
                Some(list) => {
                    let mut ok = Vec::with_capacity(list.len());
                    for (j, m) in list.iter().enumerate() {
                        match http::Method::from_bytes(m.as_bytes()) {
                            Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => {
                                if method == http::Method::CONNECT {
                                    self.error(
                                        &idx(&methods_path, j),
                                        "CONNECT is never proxied (its target is not a path)",
                                    );
                                }
                                ok.push(method);
                            }
                            _ => self.error(
                                &idx(&methods_path, j),
                                format!("{m:?} is not an upper-case HTTP method name"),
                            ),
                        }
                    }
                    Some(Some(ok))
                }
            };

            out.push((|| {
                Some(Route {
                    methods: methods?,
                    name: name?,
                    host: host.transpose().ok()?,
                    path_prefix: path_prefix?,
                    upstream: upstream?,
                    access: access?,
                    roles,
                    login_redirect: login_redirect?,
                    on_store_error: on_store_error?,
                })
            })());
        }
        out.into_iter().collect()
    }
}

/// Drops the key a type error points into (the innermost key on `path`) so
/// the section can be deserialized again; returns the dropped key's path.
fn remove_key(value: &mut Spanned<DeValue<'_>>, path: &[Seg]) -> Option<Vec<Seg>> {
    let at = path.iter().rposition(|seg| matches!(seg, Seg::Key(_)))?;
    let Seg::Key(key) = &path[at] else {
        return None;
    };
    let mut parent = value;
    for seg in &path[..at] {
        parent = match (seg, parent.get_mut()) {
            (Seg::Key(k), DeValue::Table(table)) => table.get_mut(k.as_str())?,
            (Seg::Index(i), DeValue::Array(items)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    match parent.get_mut() {
        DeValue::Table(table) => table.remove(key.as_str()).map(|_| path[..=at].to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse("proxy.toml", text, &no_env) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.errors,
        }
    }

    /// A valid config, with `extra` appended.
    fn minimal(extra: &str) -> String {
        format!(
            r#"[server]
listen = ["127.0.0.1:0"]

[redis]
url = "redis://127.0.0.1:6379/0"

[session]
secrets = ["s3cret"]

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]

[[route]]
path_prefix = "/"
upstream = "app"
{extra}"#
        )
    }

    const FULL: &str = r#"
[server]
listen = ["0.0.0.0:8080", "localhost:8081"]
threads = 2
grace_period = "1s"

[redis]
url = "rediss://user:pw@redis.internal:6380/2"
command_timeout = "250ms"

[session]
cookie = "sid"
secrets = ["one", "two"]
bearer = "opaque"
bearer_key = "api:{id}"
key = "app:{id}:data"
value = "hash"
role_field = "passport.user.role"

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Email" = "user.email"
"a-role" = "user.role"

[admin]
listen = "127.0.0.1:9100"

[[upstream]]
name = "static"
addrs = ["127.0.0.1:4000"]

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000", "localhost:3001"]

[[route]]
name = "api"
host = "Example.COM:8443"
path_prefix = "/api"
upstream = "app"
roles = ["admin", "ops"]
on_unauthenticated = { redirect = "/login" }

[[route]]
path_prefix = "/assets"
upstream = "static"
access = "public"
"#;

    #[test]
    fn full_config_parses() {
        let config = parse("proxy.toml", FULL, &no_env).unwrap();
        let server = &config.server;
        assert_eq!(server.listen, ["0.0.0.0:8080", "localhost:8081"]);
        assert_eq!(server.threads, 2);
        assert_eq!(server.grace_period, Duration::from_secs(1));
        assert_eq!(server.graceful_shutdown_timeout, Duration::from_secs(10));
        assert_eq!(server.pid_file, "/tmp/sessiongate.pid");
        assert_eq!(server.upgrade_sock, "/tmp/sessiongate_upgrade.sock");
        assert_eq!(server.max_request_header_bytes, 65536);
        assert_eq!(server.request_head_timeout, Duration::from_secs(10));
        assert_eq!(server.body_idle_timeout, Duration::from_secs(60));
        assert_eq!(server.write_timeout, Duration::from_secs(30));
        assert_eq!(server.max_connections, 4096);
        assert_eq!(server.max_connections_per_ip, 256);

        assert_eq!(config.redis.url, "rediss://user:pw@redis.internal:6380/2");
        assert_eq!(config.redis.command_timeout, Duration::from_millis(250));
        assert_eq!(config.redis.connect_timeout, Duration::from_secs(1));

        let session = &config.session;
        assert_eq!(session.cookie, "sid");
        assert_eq!(session.cookie_format, CookieFormat::Express);
        assert_eq!(session.secrets, ["one", "two"]);
        assert_eq!(session.bearer, BearerMode::Opaque);
        assert_eq!(session.key.render("abc"), "app:abc:data");
        assert_eq!(session.value, ValueFormat::Hash);
        assert_eq!(session.role_field.segments(), ["passport", "user", "role"]);

        // File order, not alphabetical.
        let headers: Vec<&str> = config.identity.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(headers, ["x-user-id", "x-user-email", "a-role"]);
        assert_eq!(config.identity[0].field.to_string(), "user.id");

        assert_eq!(config.upstreams.len(), 2);
        assert_eq!(config.upstreams[1].name, "app");
        assert!(config.upstreams[1].addrs.len() >= 2);
        assert_eq!(
            config.upstreams[0].addrs,
            ["127.0.0.1:4000".parse().unwrap()]
        );

        let api = &config.routes[0];
        assert_eq!(api.name, "api");
        assert_eq!(api.host.as_deref(), Some("example.com"));
        assert_eq!(api.path_prefix, "/api");
        assert_eq!(api.upstream, 1);
        assert_eq!(api.access, Access::Authenticated);
        assert_eq!(api.roles, ["admin", "ops"]);
        assert_eq!(api.login_redirect.as_deref(), Some("/login"));

        let assets = &config.routes[1];
        assert_eq!(assets.name, "/assets");
        assert_eq!(assets.host, None);
        assert_eq!(assets.upstream, 0);
        assert_eq!(assets.access, Access::Public);
        assert!(assets.roles.is_empty());
        assert_eq!(assets.login_redirect, None);
    }

    #[test]
    fn connection_limits_and_timeouts_are_checked() {
        let text = minimal("").replacen(
            "listen = [\"127.0.0.1:0\"]\n",
            "listen = [\"127.0.0.1:0\"]\nrequest_head_timeout = \"0s\"\nwrite_timeout = \"soon\"\nmax_connections = -1\nmax_connections_per_ip = 0\nbody_idle_timeout = \"2s\"\n",
            1,
        );
        let errs = errors(&text);
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.path.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "server.request_head_timeout"),
                (4, "server.write_timeout"),
                (5, "server.max_connections"),
            ],
            "{errs:#?}"
        );
        let ok = minimal("").replacen(
            "listen = [\"127.0.0.1:0\"]\n",
            "listen = [\"127.0.0.1:0\"]\nmax_connections_per_ip = 0\nbody_idle_timeout = \"2s\"\n",
            1,
        );
        let server = parse("proxy.toml", &ok, &no_env).unwrap().server;
        assert_eq!(server.max_connections_per_ip, 0);
        assert_eq!(server.body_idle_timeout, Duration::from_secs(2));
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        assert!(config.server.threads >= 1);
        assert_eq!(config.server.grace_period, Duration::from_secs(5));
        assert_eq!(config.redis.command_timeout, Duration::from_millis(100));
        assert_eq!(config.session.cookie, "connect.sid");
        assert_eq!(config.session.bearer, BearerMode::Off);
        assert_eq!(config.session.value, ValueFormat::Json);
        assert_eq!(config.session.key.render("x"), "sess:x");
        assert_eq!(config.session.role_field.to_string(), "user.role");
        assert!(config.identity.is_empty());
        assert_eq!(config.routes[0].name, "/");
        assert_eq!(config.routes[0].access, Access::Authenticated);
    }

    #[test]
    fn three_mistakes_in_three_sections() {
        let text = r#"[server]
listn = ["0.0.0.0:8080"]

[redis]
url = "redis://127.0.0.1:6379"
command_timeout = "fast"

[session]
secrets = ["s"]

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]

[[route]]
path_prefix = "/"
upstream = "ap"
"#;
        let errs = errors(text);
        let summary: Vec<(usize, usize, &str)> = errs
            .iter()
            .map(|e| (e.line, e.column, e.path.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (2, 1, "server.listn"),
                (6, 19, "redis.command_timeout"),
                (17, 12, "route[0].upstream"),
            ],
            "{errs:#?}"
        );
        assert_eq!(
            errs[0].message,
            "unknown key `listn`; did you mean `listen`?"
        );
        assert!(errs[1].message.contains("\"fast\""), "{}", errs[1].message);
        assert_eq!(
            errs[2].message,
            "no [[upstream]] is named \"ap\"; did you mean \"app\"?"
        );

        let rendered = ConfigErrors {
            source_name: "proxy.toml".to_owned(),
            errors: errs,
        }
        .to_string();
        let first = rendered.lines().next().unwrap();
        assert_eq!(
            first,
            "proxy.toml:2:1: server.listn: unknown key `listn`; did you mean `listen`?"
        );
        assert_eq!(rendered.lines().count(), 3);
    }

    #[test]
    fn syntax_error_reports_its_line() {
        let errs = errors("[server]\nlisten = [\"a:1\"]\nthreads = \n");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 3);
        assert_eq!(errs[0].path, "");
    }

    #[test]
    fn env_vars_are_expanded_or_reported() {
        let env = |name: &str| (name == "REDIS_HOST").then(|| "10.0.0.7".to_owned());
        let text = minimal("")
            .replace("127.0.0.1:6379", "${REDIS_HOST}:6379")
            .replace("[\"s3cret\"]", "[\"${SESSION_SECRET}\"]");

        let errs = parse("proxy.toml", &text, &env).unwrap_err().errors;
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].line, 8);
        assert_eq!(errs[0].path, "session.secrets[0]");
        assert_eq!(
            errs[0].message,
            "environment variable SESSION_SECRET is not set"
        );

        let env = |name: &str| match name {
            "REDIS_HOST" => Some("10.0.0.7".to_owned()),
            "SESSION_SECRET" => Some("hunter2".to_owned()),
            _ => None,
        };
        let config = parse("proxy.toml", &text, &env).unwrap();
        assert_eq!(config.redis.url, "redis://10.0.0.7:6379/0");
        assert_eq!(config.session.secrets, ["hunter2"]);
    }

    #[test]
    fn expand_str_rules() {
        let env = |name: &str| (name == "A").then(|| "x".to_owned());
        assert_eq!(expand_str("plain $5", &env), Ok(None));
        assert_eq!(expand_str("${A}-${A}", &env), Ok(Some("x-x".to_owned())));
        assert_eq!(expand_str("$${A}", &env), Ok(Some("${A}".to_owned())));
        assert_eq!(expand_str("${B:-d:1}", &env), Ok(Some("d:1".to_owned())));
        assert_eq!(expand_str("${A:-d}", &env), Ok(Some("x".to_owned())));
        assert_eq!(expand_str("${B:-}", &env), Ok(Some(String::new())));
        let empty = |_: &str| Some(String::new());
        assert_eq!(expand_str("${A:-d}", &empty), Ok(Some("d".to_owned())));
        assert_eq!(expand_str("${A}", &empty), Ok(Some(String::new())));
        assert!(expand_str("${A", &env).is_err());
        assert!(expand_str("${1A}", &env).is_err());
        assert_eq!(
            expand_str("${B}${C}", &env).unwrap_err(),
            [
                "environment variable B is not set",
                "environment variable C is not set"
            ]
        );
    }

    #[test]
    fn unknown_top_level_table() {
        let errs = errors(&minimal(
            "\n[servr]\nx = 1\n\n[[routes]]\npath_prefix = \"/\"\n",
        ));
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("servr", "unknown table [servr]; did you mean `server`?"),
                ("routes", "unknown table [[routes]]; did you mean `route`?"),
            ]
        );
        assert_eq!(errs[0].line, 18);
        assert_eq!(errs[0].column, 2);
        assert_eq!(errs[1].line, 21);
    }

    #[test]
    fn admin_and_jwt_tables_are_accepted() {
        let text = minimal("\n[admin]\nlisten = \"127.0.0.1:9100\"\n");
        assert!(parse("proxy.toml", &text, &no_env).is_ok());
    }

    #[test]
    fn admin_table_is_checked() {
        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        assert_eq!(config.admin, AdminSettings::default());
        assert!(config.admin.access_log && config.admin.access_log_user);

        let text = minimal(
            "\n[admin]\nlisten = \"127.0.0.1:0\"\naccess_log_user = false\nmetrics_basic_auth = { username = \"prom\", password = \"pw\" }\n",
        );
        let admin = parse("proxy.toml", &text, &no_env).unwrap().admin;
        assert_eq!(admin.listen.as_deref(), Some("127.0.0.1:0"));
        assert!(!admin.access_log_user);
        assert_eq!(admin.metrics_basic_auth.unwrap().password, "pw");

        let text = minimal(
            "\n[admin]\nlistn = \"127.0.0.1:9100\"\nmetrics_basic_auth = { username = \"a:b\", pasword = \"x\" }\n",
        )
        .replace("127.0.0.1:0", "127.0.0.1:9100");
        let got: Vec<String> = errors(&text)
            .iter()
            .map(|e| format!("{}:{} {}: {}", e.line, e.column, e.path, e.message))
            .collect();
        assert_eq!(
            got,
            [
                "19:1 admin.listn: unknown key `listn`; did you mean `listen`?",
                "20:35 admin.metrics_basic_auth.username: must not contain `:` or control characters",
                "20:42 admin.metrics_basic_auth.pasword: unknown key `pasword`; did you mean `password`?",
            ],
            "{got:#?}"
        );

        let text =
            minimal("\n[admin]\nmetrics_basic_auth = { username = \"a\", password = \"b\" }\n");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "admin.metrics_basic_auth");
        assert_eq!(errs[0].message, "has no effect without `listen`");

        let text = minimal("\n[admin]\nlisten = \"0.0.0.0:9100\"\n")
            .replace("127.0.0.1:0", "127.0.0.1:9100");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!((errs[0].line, errs[0].path.as_str()), (19, "admin.listen"));
        assert!(errs[0].message.contains("server.listen[0]"));
        assert!(same_listener("localhost:80", "LOCALHOST:80"));
        assert!(!same_listener("127.0.0.1:0", "127.0.0.1:0"));
        assert!(!same_listener("127.0.0.1:80", "127.0.0.2:80"));
    }

    /// A config with `bearer = "jwt"`; `jwt` is the body of its [jwt] table,
    /// which starts on line 20.
    fn with_jwt(jwt: &str) -> String {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n\n\
             [session]\ncookie_format = \"plain\"\nbearer = \"jwt\"\n\n[[upstream]]\nname = \"app\"\n\
             addrs = [\"127.0.0.1:3000\"]\n\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n\n\
             [jwt]\n{jwt}"
        )
    }

    fn jwt_fixture() -> serde_json::Value {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/jwt.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn jwt_table_compiles_keys_from_files_next_to_the_config() {
        let fx = jwt_fixture();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let pem = fx["rs256_public_key_pem"].as_str().unwrap();
        std::fs::write(dir.path().join("keys/key.pem"), pem).unwrap();
        std::fs::write(dir.path().join("jwks.json"), fx["jwks"].to_string()).unwrap();
        let text = with_jwt(
            "algorithms = [\"HS256\", \"RS256\"]\nsecret = \"${JWT_SECRET}\"\n\
             public_key_file = \"keys/key.pem\"\njwks_file = \"jwks.json\"\n",
        );
        let source = dir.path().join("proxy.toml");
        let env = |name: &str| (name == "JWT_SECRET").then(|| "fixture-jwt-hs256-secret".into());
        let config = parse(&source.display().to_string(), &text, &env).unwrap();
        assert_eq!(config.session.bearer, BearerMode::Jwt);
        let jwt = config.jwt.expect("jwt settings");
        assert_eq!(jwt.key.render("abc"), "token:abc");
        assert_eq!(jwt.verifier.id_claim(), "tokenId");
        for case in fx["valid"].as_array().unwrap() {
            let token = case["token"].as_str().unwrap();
            let verified = jwt.verifier.verify(token).unwrap();
            assert_eq!(
                jwt.key.render(verified.id.as_str()),
                case["redis_key"].as_str().unwrap()
            );
        }
        // The secret never shows in the compiled configuration's Debug.
        assert!(!format!("{:?}", jwt.verifier).contains("fixture-jwt-hs256-secret"));

        let custom = with_jwt(
            "algorithms = [\"HS512\"]\nsecret = \"s\"\nid_claim = \"jti\"\nkey = \"app:{id}:tok\"\n\
             issuer = \"https://id.example\"\naudience = \"api\"\nleeway = \"0s\"\n",
        );
        let jwt = parse("proxy.toml", &custom, &no_env).unwrap().jwt.unwrap();
        assert_eq!(jwt.key.render("1"), "app:1:tok");
        assert_eq!(jwt.verifier.id_claim(), "jti");
    }

    #[test]
    fn jwt_mistakes_are_reported_with_their_keys_and_lines() {
        let text = with_jwt(
            "algorithms = [\"HS256\", \"none\", \"RS257\", \"ES256\"]\n\
             public_key_file = \"/nonexistent/key.pem\"\nkey = \"token\"\nleeway = \"2h\"\n\
             issuer = \"\"\nextra = 1\n",
        );
        let got: Vec<String> = errors(&text)
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.column, e.path))
            .collect();
        assert_eq!(
            got,
            [
                "19:1 jwt.secret",
                "20:24 jwt.algorithms[1]",
                "20:32 jwt.algorithms[2]",
                "21:19 jwt.public_key_file",
                "22:7 jwt.key",
                "23:10 jwt.leeway",
                "24:10 jwt.issuer",
                "25:1 jwt.extra",
            ],
            "{got:#?}"
        );
        let errs = errors(&text);
        assert!(
            errs[1].message.contains("never accepted"),
            "{}",
            errs[1].message
        );
        assert!(
            errs[2].message.contains("unknown algorithm"),
            "{}",
            errs[2].message
        );
        assert!(
            errs[3].message.contains("cannot read"),
            "{}",
            errs[3].message
        );
    }

    /// `minimal()` with `session` added to its `[session]` table (line 8 on).
    fn with_session(session: &str) -> String {
        minimal("").replace(
            "secrets = [\"s3cret\"]\n",
            &format!("secrets = [\"s3cret\"]\n{session}\n"),
        )
    }

    #[test]
    fn opaque_bearer_ids_have_a_key_of_their_own() {
        let config = parse(
            "proxy.toml",
            &with_session("bearer = \"opaque\"\nbearer_key = \"api:{id}\""),
            &no_env,
        )
        .unwrap();
        let bearer_key = config.session.bearer_key.expect("bearer key");
        assert_eq!(bearer_key.render("abc"), "api:abc");
        assert_eq!(config.session.key.render("abc"), "sess:abc");

        // No bearer_key: the operator has to choose.
        let errs = errors(&with_session("bearer = \"opaque\""));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "session.bearer_key");
        assert!(
            errs[0].message.contains("same_as_cookie"),
            "{}",
            errs[0].message
        );

        // Reusing the signed cookie's keys needs the explicit opt-in.
        for bearer_key in [
            "same_as_cookie",
            "sess:{id}",
            "{id}",
            "se{id}",
            "sess:x{id}",
        ] {
            let text = format!("bearer = \"opaque\"\nbearer_key = \"{bearer_key}\"");
            let errs = errors(&with_session(&text));
            assert_eq!(errs.len(), 1, "{bearer_key}: {errs:#?}");
            assert_eq!(
                (errs[0].path.as_str(), errs[0].line),
                ("session.bearer_key", 10),
                "{bearer_key}"
            );
            assert!(
                errs[0].message.contains("allow_unsigned_bearer = true"),
                "{}",
                errs[0].message
            );
            let allowed = with_session(&format!("{text}\nallow_unsigned_bearer = true"));
            let config = parse("proxy.toml", &allowed, &no_env).unwrap();
            let key = config.session.bearer_key.unwrap();
            assert!(key.overlaps(&config.session.key), "{bearer_key}");
        }
        let same = parse(
            "proxy.toml",
            &with_session(
                "bearer = \"opaque\"\nbearer_key = \"same_as_cookie\"\nallow_unsigned_bearer = true",
            ),
            &no_env,
        )
        .unwrap();
        assert_eq!(same.session.bearer_key, Some(same.session.key.clone()));

        // Plain cookies are bare ids already: nothing to opt into.
        let plain = with_session(
            "cookie_format = \"plain\"\nbearer = \"opaque\"\nbearer_key = \"same_as_cookie\"",
        );
        let config = parse("proxy.toml", &plain, &no_env).unwrap();
        assert_eq!(config.session.bearer_key, Some(config.session.key.clone()));

        let errs = errors(&with_session("bearer = \"opaque\"\nbearer_key = \"api\""));
        assert_eq!(errs[0].path, "session.bearer_key");
        assert!(errs[0].message.contains("{id}"), "{}", errs[0].message);

        let errs = errors(&with_session(
            "bearer_key = \"api:{id}\"\nallow_unsigned_bearer = true",
        ));
        let paths: Vec<_> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            paths,
            [
                ("session.bearer_key", 9),
                ("session.allow_unsigned_bearer", 10)
            ]
        );
    }

    #[test]
    fn key_templates_overlap_when_one_id_can_stand_for_another() {
        let t = |s: &str| KeyTemplate::parse(s, "{id}").unwrap();
        assert!(t("sess:{id}").overlaps(&t("sess:{id}")));
        assert!(t("sess:{id}").overlaps(&t("{id}")));
        assert!(t("sess:{id}").overlaps(&t("sess:api:{id}")));
        assert!(t("a{id}:x").overlaps(&t("ab{id}")));
        assert!(!t("sess:{id}").overlaps(&t("api:{id}")));
        assert!(t("sess:{id}").overlaps(&t("sess:{id}:api")));
        assert!(!t("{id}:a").overlaps(&t("{id}:b")));
    }

    #[test]
    fn shared_rate_limits() {
        let config = parse(
            "proxy.toml",
            &minimal(
                "\n[rate_limit]\nfailed_auth_per_ip = { burst = 5, per = \"1m\" }\nshared = true\n",
            ),
            &no_env,
        )
        .unwrap();
        assert!(config.rate_limit.shared);
        assert!(
            !parse("proxy.toml", &minimal(""), &no_env)
                .unwrap()
                .rate_limit
                .shared
        );
        let errs = errors(&minimal(
            "\n[rate_limit]\nrequests_per_user = { burst = 5, per = \"1m\" }\nshared = true\n",
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(
            (errs[0].path.as_str(), errs[0].line),
            ("rate_limit.shared", 20)
        );
    }

    #[test]
    fn jwt_claim_rules_and_audiences() {
        let text = with_jwt(
            "algorithms = [\"HS256\"]\nsecret = \"s\"\naudience = [\"api\", \"web\"]\n\
             typ = \"JWT\"\n\n[jwt.claims]\ntype = \"access\"\nrole = [\"admin\", \"viewer\"]\n\
             scope = { contains = [\"read\"] }\nlevel = 2\n",
        );
        let config = parse("proxy.toml", &text, &no_env).unwrap();
        let shown = format!("{:?}", config.jwt.unwrap().verifier);
        for want in [
            "Equals(String(\"access\"))",
            "OneOf(",
            "Contains([String(\"read\")])",
            "typ: Some(\"JWT\")",
        ] {
            assert!(shown.contains(want), "{want}: {shown}");
        }
        let errs = errors(&with_jwt(
            "algorithms = [\"HS256\"]\nsecret = \"s\"\naudience = []\ntyp = \"\"\n\n\
             [jwt.claims]\nscope = { contains = \"read\" }\ngroups = [[\"a\"]]\n\"\" = \"x\"\n",
        ));
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "jwt.audience",
                "jwt.typ",
                "jwt.claims.scope.contains",
                "jwt.claims.groups[0]",
                "jwt.claims.\"\"",
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn bearer_jwt_and_the_jwt_table_go_together() {
        let text = with_jwt("");
        let without_table = text.split("\n[jwt]\n").next().unwrap().to_owned();
        let errs = errors(&without_table);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!((errs[0].path.as_str(), errs[0].line), ("session.bearer", 9));
        assert!(errs[0].message.contains("needs a [jwt] table"));

        let opaque = with_jwt("algorithms = [\"HS256\"]\nsecret = \"s\"\n").replace(
            "bearer = \"jwt\"",
            "bearer = \"opaque\"\nbearer_key = \"same_as_cookie\"",
        );
        let errs = errors(&opaque);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!((errs[0].path.as_str(), errs[0].line), ("jwt", 20));
    }

    #[test]
    fn every_listed_algorithm_needs_a_key_that_fits_it() {
        let errs = errors(&with_jwt("algorithms = [\"RS256\"]\n"));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "jwt.algorithms[0]");
        assert!(errs[0].message.contains("no key can verify it"));

        let errs = errors(&with_jwt("algorithms = []\n"));
        assert_eq!(errs[0].path, "jwt.algorithms");

        let dir = tempfile::tempdir().unwrap();
        let fx = jwt_fixture();
        let pem = dir.path().join("rsa.pem");
        std::fs::write(&pem, fx["rs256_public_key_pem"].as_str().unwrap()).unwrap();
        let private = dir.path().join("private.pem");
        std::fs::write(
            &private,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
        let cases = [
            (
                format!(
                    "algorithms = [\"ES256\"]\npublic_key_file = {:?}\n",
                    pem.display()
                ),
                "jwt.public_key_file",
                "none of `algorithms` uses",
            ),
            (
                format!(
                    "algorithms = [\"RS256\"]\npublic_key_file = {:?}\n",
                    private.display()
                ),
                "jwt.public_key_file",
                "private key",
            ),
            (
                format!(
                    "algorithms = [\"RS256\"]\njwks_file = {:?}\n",
                    jwks.display()
                ),
                "jwt.jwks_file",
                "no RSA, EC",
            ),
            (
                format!(
                    "algorithms = [\"RS256\"]\npublic_key_file = {:?}\nsecret = \"s\"\n",
                    pem.display()
                ),
                "jwt.secret",
                "lists no HS algorithm",
            ),
        ];
        for (body, path, message) in cases {
            let errs = errors(&with_jwt(&body));
            assert!(
                errs.iter()
                    .any(|e| e.path == path && e.message.contains(message)),
                "{body}: {errs:#?}"
            );
        }
    }

    #[test]
    fn duplicate_upstream_name() {
        let errs = errors(&minimal(
            "\n[[upstream]]\nname = \"app\"\naddrs = [\"127.0.0.1:3001\"]\n",
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "upstream[1].name");
        assert_eq!(errs[0].line, 19);
        assert_eq!(
            errs[0].message,
            "duplicate upstream name \"app\" (first used on line 10)"
        );
    }

    #[test]
    fn bad_header_names() {
        let errs = errors(&minimal(
            "\n[identity.headers]\n\"X-User Id\" = \"user.id\"\n\"Cookie\" = \"user.c\"\n\"X-Role\" = \"user.role\"\n\"x_role\" = \"user.role\"\n\"X-Ok\" = \"user..id\"\n",
        ));
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.path.as_str())).collect();
        assert_eq!(
            got,
            [
                (19, "identity.headers.\"X-User Id\""),
                (20, "identity.headers.Cookie"),
                (22, "identity.headers.x_role"),
                (23, "identity.headers.X-Ok"),
            ],
            "{errs:#?}"
        );
        assert!(errs[0].message.contains("not a valid header name"));
        assert!(errs[1].message.contains("cannot be set"));
        assert_eq!(
            errs[2].message,
            "\"x_role\" is the same header as \"X-Role\" (line 21)"
        );
        assert!(errs[3].message.contains("dotted field path"));
    }

    #[test]
    fn key_without_placeholder() {
        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\nkey = \"sess:\"",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!((errs[0].line, errs[0].column), (9, 7));
        assert_eq!(errs[0].path, "session.key");
        assert_eq!(
            errs[0].message,
            "\"sess:\" must contain `{id}` exactly once"
        );
        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\nkey = \"{id}:{id}\"",
        );
        assert_eq!(errors(&text)[0].path, "session.key");
    }

    #[test]
    fn store_failure_keys() {
        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        assert_eq!(config.redis.breaker_failures, 5);
        assert_eq!(config.redis.breaker_cooldown, Duration::from_secs(1));
        assert_eq!(config.cache.stale_for, Duration::from_secs(30));
        assert_eq!(config.routes[0].on_store_error, StoreErrorPolicy::Deny);

        let url = "url = \"redis://127.0.0.1:6379/0\"\n";
        let text = minimal("on_store_error = \"stale\"\n\n[cache]\nstale_for = \"5s\"\n").replace(
            url,
            &format!("{url}breaker_failures = 2\nbreaker_cooldown = \"250ms\"\n"),
        );
        let config = parse("proxy.toml", &text, &no_env).unwrap();
        assert_eq!(config.redis.breaker_failures, 2);
        assert_eq!(config.redis.breaker_cooldown, Duration::from_millis(250));
        assert_eq!(config.cache.stale_for, Duration::from_secs(5));
        assert_eq!(config.routes[0].on_store_error, StoreErrorPolicy::Stale);

        let text = minimal("on_store_error = \"later\"\n\n[cache]\nstale_for = \"0s\"\n").replace(
            url,
            &format!("{url}breaker_failures = 0\nbreaker_cooldown = \"2m\"\n"),
        );
        let mut got: Vec<(usize, usize, String)> = errors(&text)
            .into_iter()
            .map(|e| (e.line, e.column, e.path))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (6, 20, "redis.breaker_failures".to_owned()),
                (7, 20, "redis.breaker_cooldown".to_owned()),
                (19, 18, "route[0].on_store_error".to_owned()),
                (22, 13, "cache.stale_for".to_owned()),
            ]
        );
        let errs = errors(&minimal(
            "access = \"public\"\non_store_error = \"stale\"\n",
        ));
        assert_eq!(errs[0].path, "route[0].on_store_error", "{errs:#?}");
    }

    #[test]
    fn enum_and_type_errors() {
        let text = r#"[server]
listen = "0.0.0.0:80"
threads = "4"

[redis]
url = "http://localhost"

[session]
cookie_format = "expres"
bearer = "jwt"

[[upstream]]
name = "app"
addrs = ["127.0.0.1"]

[[route]]
path_prefix = "api"
upstream = "app"
access = "public"
roles = ["admin", 3]
on_unauthenticated = { redirect = "//evil.example", colour = "red" }
"#;
        let errs = errors(text);
        let got: Vec<String> = errs
            .iter()
            .map(|e| format!("{}:{} {}: {}", e.line, e.column, e.path, e.message))
            .collect();
        assert_eq!(
            got,
            [
                "2:10 server.listen: expected a list of strings, found a string",
                "3:11 server.threads: expected an integer, found a string",
                "6:7 redis.url: must start with redis://, rediss://, unix:// or redis+unix://",
                "9:17 session.cookie_format: unknown value \"expres\", expected one of \"express\", \"plain\"",
                "10:10 session.bearer: bearer = \"jwt\" needs a [jwt] table (its `algorithms`, and a `secret`, `public_key_file` or `jwks_file`)",
                "14:10 upstream[0].addrs[0]: \"127.0.0.1\" has no port (expected host:port)",
                "17:15 route[0].path_prefix: \"api\" must start with \"/\"",
                "20:19 route[0].roles[1]: expected a string, found an integer",
                "21:35 route[0].on_unauthenticated.redirect: \"//evil.example\" must be a path starting with \"/\" (not \"//\") or an absolute http(s) URL",
                "21:53 route[0].on_unauthenticated.colour: unknown key `colour`",
            ],
            "{got:#?}"
        );
    }

    #[test]
    fn roles_on_public_route_and_duplicate_route_names() {
        let errs = errors(&minimal(
            "access = \"public\"\nroles = [\"a\"]\n\n[[route]]\nhost = \"a.example\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
        ));
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.path.as_str())).collect();
        assert_eq!(
            got,
            [(18, "route[0].roles"), (20, "route[1].name")],
            "{errs:#?}"
        );
    }

    #[test]
    fn missing_sections() {
        let errs = errors("[server]\nlisten = []\n");
        let got: Vec<(usize, usize, &str)> = errs
            .iter()
            .map(|e| (e.line, e.column, e.path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 1, "redis"),
                (1, 1, "session"),
                (1, 1, "upstream"),
                (1, 1, "route"),
                (2, 10, "server.listen"),
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn redirect_rules() {
        assert!(is_valid_redirect("/login"));
        assert!(is_valid_redirect("https://auth.example.com/login?next=/"));
        assert!(!is_valid_redirect("//evil.example"));
        assert!(!is_valid_redirect("/\\evil.example"));
        assert!(!is_valid_redirect("login"));
        assert!(!is_valid_redirect("javascript:alert(1)"));
        assert!(!is_valid_redirect("ftp://x/"));
    }

    #[test]
    fn field_lists_are_known() {
        assert!(fields_of::<file::Server>().contains(&"listen"));
        assert!(fields_of::<file::File>().contains(&"admin"));
        assert_eq!(fields_of::<file::OnUnauthenticated>(), ["redirect"]);
    }

    #[test]
    fn logout_and_user_set_keys() {
        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        let session = &config.session;
        assert_eq!(session.logout_path, None);
        assert_eq!(session.user_field.to_string(), "user.id");
        assert_eq!(session.user_sessions_key, None);
        assert_eq!(session.cookie_path, "/");
        assert_eq!(session.cookie_domain, None);

        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\nlogout_path = \"/auth/logout\"\nlogout_all_path = \"/auth/all\"\n\
             logout_redirect = \"/bye\"\nuser_field = \"passport.user\"\n\
             user_sessions_key = \"u:{user}:s\"\ncookie_path = \"/app\"\ncookie_domain = \".ex.test\"",
        );
        let session = parse("proxy.toml", &text, &no_env).unwrap().session;
        assert_eq!(session.logout_path.as_deref(), Some("/auth/logout"));
        assert_eq!(session.logout_all_path.as_deref(), Some("/auth/all"));
        assert_eq!(session.logout_redirect.as_deref(), Some("/bye"));
        assert_eq!(session.user_field.to_string(), "passport.user");
        assert_eq!(
            session.user_sessions_key.map(|k| k.render("7")),
            Some("u:7:s".to_owned())
        );
        assert_eq!(session.cookie_path, "/app");
        assert_eq!(session.cookie_domain.as_deref(), Some(".ex.test"));

        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\nlogout_path = \"/a/../out\"\nlogout_all_path = \"out-all\"\n\
             logout_redirect = \"//evil.example\"\nuser_field = \"user..id\"\n\
             user_sessions_key = \"u:{id}\"\nuser_tokens_key = \"t:{user}\"\n\
             cookie_path = \"app\"\ncookie_domain = \"a b\"",
        );
        let got: Vec<String> = errors(&text)
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.column, e.path))
            .collect();
        assert_eq!(
            got,
            [
                "9:15 session.logout_path",
                "10:19 session.logout_all_path",
                "11:19 session.logout_redirect",
                "12:14 session.user_field",
                "13:21 session.user_sessions_key",
                "14:19 session.user_tokens_key",
                "15:15 session.cookie_path",
                "16:17 session.cookie_domain",
            ]
        );

        // logout_all_path needs a set to find the user's sessions; the two paths differ.
        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\nlogout_path = \"/out\"\nlogout_all_path = \"/out\"",
        );
        let errs = errors(&text);
        let messages: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs.iter().all(|e| e.path == "session.logout_all_path"));
        assert!(messages.contains(&"must differ from `logout_path`"));
        assert!(messages
            .iter()
            .any(|m| m.contains("needs `user_sessions_key`")));

        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\ncookie = \"__Host-sid\"\ncookie_domain = \"ex.test\"\n\
             logout_redirect = \"/bye\"",
        );
        let got: Vec<(String, String)> = errors(&text)
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "session.cookie_domain".to_owned(),
                    "a `__Host-` cookie cannot have a Domain".to_owned()
                ),
                (
                    "session.logout_redirect".to_owned(),
                    "has no effect without `logout_path` or `logout_all_path`".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn load_reports_io_errors() {
        let err = load(Path::new("/nonexistent/proxy.toml")).unwrap_err();
        assert_eq!(err.errors.len(), 1);
        assert_eq!((err.errors[0].line, err.errors[0].column), (0, 0));
        assert!(err
            .to_string()
            .starts_with("/nonexistent/proxy.toml: cannot read"));
    }

    fn with_redis(redis: &str) -> String {
        minimal("").replace(
            "[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n",
            &format!("[redis]\n{redis}\n"),
        )
    }

    #[test]
    fn redis_sentinel_and_cluster_modes() {
        let text = with_redis(
            "mode = \"sentinel\"\nsentinels = [\"10.0.0.1:26379\", \"s2:26379\"]\n\
             master = \"mymaster\"\nusername = \"gw\"\npassword = \"pw\"",
        );
        let config = parse("proxy.toml", &text, &no_env).unwrap();
        assert_eq!(
            config.redis.topology,
            RedisTopology::Sentinel {
                sentinels: vec!["10.0.0.1:26379".into(), "s2:26379".into()],
                master: "mymaster".into(),
            }
        );
        assert_eq!(
            config.redis.url,
            "redis+sentinel://10.0.0.1:26379,s2:26379/mymaster"
        );
        assert_eq!(config.redis.username.as_deref(), Some("gw"));
        assert_eq!(config.redis.password.as_deref(), Some("pw"));

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("redis");
        std::fs::write(&secret, "from-file\n").unwrap();
        let text = with_redis(&format!(
            "mode = \"cluster\"\nnodes = [\"n1:7000\", \"n2:7001\"]\ntls = true\npassword_file = {:?}",
            secret.display().to_string()
        ));
        let config = parse("proxy.toml", &text, &no_env).unwrap();
        assert_eq!(
            config.redis.topology,
            RedisTopology::Cluster {
                nodes: vec!["n1:7000".into(), "n2:7001".into()]
            }
        );
        assert_eq!(config.redis.url, "rediss+cluster://n1:7000,n2:7001");
        assert_eq!(config.redis.password.as_deref(), Some("from-file"));
        assert!(config.redis.tls);

        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        assert_eq!(config.redis.topology, RedisTopology::Standalone);
        assert!(!config.redis.tls);
    }

    #[test]
    fn redis_mode_mistakes_name_their_keys() {
        let render = |text: &str| -> Vec<String> {
            errors(text)
                .iter()
                .map(|e| format!("{}:{} {}: {}", e.line, e.column, e.path, e.message))
                .collect()
        };
        let got = render(&with_redis(
            "mode = \"sentinel\"\nurl = \"redis://x:1\"\nnodes = [\"a:1\"]\nsentinels = [\"nope\"]",
        ));
        assert_eq!(got, [
            "4:1 redis.master: missing required key `master`",
            "6:7 redis.url: not used with this mode: list the servers in `sentinels` (sentinel) or `nodes` (cluster), credentials in `username`/`password`",
            "7:9 redis.nodes: only with mode = \"cluster\"",
            "8:14 redis.sentinels[0]: must be host:port",
        ], "{got:#?}");
        let got = render(&with_redis(
            "mode = \"cluster\"\nnodes = []\nmaster = \"m\"",
        ));
        assert_eq!(
            got,
            [
                "6:9 redis.nodes: must list at least one node",
                "7:10 redis.master: only with mode = \"sentinel\"",
            ],
            "{got:#?}"
        );
        let got = render(&with_redis(
            "url = \"redis://h:1\"\ntls = true\npassword = \"a\"\npassword_file = \"/nonexistent\"\nmode = \"ring\"",
        ));
        assert_eq!(got, [
            "8:17 redis.password_file: set either `password` or `password_file`, not both",
            "9:8 redis.mode: unknown value \"ring\", expected one of \"standalone\", \"sentinel\", \"cluster\"",
        ], "{got:#?}");
        let got = render(&with_redis(
            "mode = \"sentinel\"\nsentinels = [\"s:26379\"]",
        ));
        assert_eq!(
            got,
            ["4:1 redis.master: missing required key `master`",],
            "{got:#?}"
        );
        let got = render(&with_redis(
            "url = \"redis://h:1\"\npassword_file = \"/nonexistent/redis\"",
        ));
        assert_eq!(got, [
            "6:17 redis.password_file: cannot read /nonexistent/redis: No such file or directory (os error 2)",
        ], "{got:#?}");
    }
}
