//! The checks of `[session]` (cookie, bearer, keys, logout and per-user sets, sliding expiry) and `[identity.headers]`.

use std::time::Duration;

use http::HeaderName;

use super::checker::Checker;
use super::file;
use super::keypath::{idx, sub, Seg};
use super::model::{
    BearerMode, CookieFormat, FieldPath, IdRule, IdTransform, IdentityHeader, KeyTemplate, Preset,
    SessionSettings, Sliding, ValueFormat,
};

/// What a `preset` fills in: the framework's cookie, cookie format, key,
/// value format, user field, the ids it issues and an expiry date kept in
/// the value.
struct PresetDefaults {
    cookie: &'static str,
    cookie_format: &'static str,
    key: &'static str,
    value: &'static str,
    user_field: &'static str,
    id_rule: IdRule,
    expires_field: Option<&'static str>,
}

fn preset_defaults(preset: Option<Preset>) -> PresetDefaults {
    let express = PresetDefaults {
        cookie: "connect.sid",
        cookie_format: "express",
        key: "sess:{id}",
        value: "json",
        user_field: "user.id",
        id_rule: IdRule::Any,
        expires_field: None,
    };
    match preset {
        None | Some(Preset::Express) => express,
        Some(Preset::Fastify) => PresetDefaults {
            cookie: "sessionId",
            cookie_format: "fastify",
            expires_field: Some("cookie.expires"),
            ..express
        },
        Some(Preset::FlaskSession) => PresetDefaults {
            cookie: "session",
            cookie_format: "plain",
            key: "session:{id}",
            value: "flask",
            user_field: "_user_id",
            id_rule: IdRule::Flask,
            expires_field: None,
        },
        Some(Preset::Django) => PresetDefaults {
            cookie: "sessionid",
            cookie_format: "plain",
            key: ":1:django.contrib.sessions.cache{id}",
            value: "django",
            user_field: "_auth_user_id",
            id_rule: IdRule::Django,
            expires_field: None,
        },
        Some(Preset::Php) => PresetDefaults {
            cookie: "PHPSESSID",
            cookie_format: "plain",
            key: "PHPREDIS_SESSION:{id}",
            value: "php",
            user_field: "user.id",
            id_rule: IdRule::Php,
            expires_field: None,
        },
    }
}
use super::values::is_valid_redirect;

impl<'r, 't> Checker<'r, 't> {
    pub(super) fn session(&mut self) -> Option<SessionSettings> {
        let path = [Seg::Key("session".to_owned())];
        if self.lookup(&path).is_none() {
            self.missing(&path, "missing required table [session]");
            return None;
        }
        let f: file::Session = self.section(&path)?;
        if f.identity.is_some() {
            self.error(
                &sub(&path, "identity"),
                "[session.identity] is not read: the default profile's identity headers are \
                 [identity.headers]",
            );
        }
        if f.redis.is_some() {
            self.error(
                &sub(&path, "redis"),
                "[session.redis] is not read: the default profile's Redis is [redis]",
            );
        }
        self.session_table(&path, f)
    }

    /// One session table (`[session]`, or a profile's).
    pub(super) fn session_table(
        &mut self,
        path: &[Seg],
        mut f: file::Session,
    ) -> Option<SessionSettings> {
        let path = path.to_vec();
        let preset = self.choice(
            &sub(&path, "preset"),
            f.preset.as_deref(),
            None,
            &[
                ("express", Some(Preset::Express)),
                ("fastify", Some(Preset::Fastify)),
                ("flask-session", Some(Preset::FlaskSession)),
                ("django", Some(Preset::Django)),
                ("php", Some(Preset::Php)),
            ],
        );
        let defaults = preset_defaults(preset.flatten());
        let defaults_cookie_format = defaults.cookie_format.to_owned();
        let cookie_format_text = f.cookie_format.take().or(Some(defaults_cookie_format));
        f.key = f.key.take().or_else(|| Some(defaults.key.to_owned()));
        f.value = f.value.take().or_else(|| Some(defaults.value.to_owned()));
        f.user_field = f
            .user_field
            .take()
            .or_else(|| Some(defaults.user_field.to_owned()));

        let cookie = f.cookie.unwrap_or_else(|| defaults.cookie.to_owned());
        if !is_cookie_name(&cookie) {
            self.error(
                &sub(&path, "cookie"),
                format!("{cookie:?} is not a valid cookie name"),
            );
        }
        let cookie_format = self.choice(
            &sub(&path, "cookie_format"),
            cookie_format_text.as_deref(),
            CookieFormat::Express,
            &[
                CookieFormat::Express,
                CookieFormat::Plain,
                CookieFormat::Fastify,
                CookieFormat::FlaskSigned,
            ]
            .map(|f| (f.as_str(), f)),
        );
        // Secrets are never echoed.
        let secrets_path = sub(&path, "secrets");
        if cookie_format.is_some_and(|f| f != CookieFormat::Plain) {
            match f.secrets.as_deref() {
                None => self.missing(
                    &secrets_path,
                    "missing required key `secrets` (a signed cookie_format needs the \
                     app's signing secrets)",
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
            &[
                ("json", ValueFormat::Json),
                ("hash", ValueFormat::Hash),
                ("msgpack", ValueFormat::Msgpack),
                ("pickle", ValueFormat::Pickle),
                ("php", ValueFormat::Php),
                ("php_serialize", ValueFormat::PhpSerialize),
                ("flask", ValueFormat::Flask),
                ("django", ValueFormat::Django),
                ("exists", ValueFormat::Exists),
            ],
        );
        // A key that exists is not a login: with a preset, by default, only
        // a session whose user field holds a value admits.
        let require_user = f.require_user.unwrap_or(preset.flatten().is_some());
        if require_user && value == Some(ValueFormat::Exists) {
            self.error(
                &sub(&path, "require_user"),
                "value = \"exists\" reads no user from the session; set require_user = false",
            );
        }
        let id_transform = self.choice(
            &sub(&path, "id_transform"),
            f.id_transform.as_deref(),
            IdTransform::Identity,
            &[
                ("none", IdTransform::Identity),
                ("base64", IdTransform::Base64),
                ("rails", IdTransform::RailsPrivate),
            ],
        );
        let expires_text = f
            .expires_field
            .clone()
            .or(defaults.expires_field.map(str::to_owned));
        let expires_field = match expires_text {
            None => Some(None),
            Some(text) => match FieldPath::parse(&text) {
                Some(p) => Some(Some(p)),
                None => {
                    self.error(
                        &sub(&path, "expires_field"),
                        format!("{text:?} is not a dotted field path (e.g. \"cookie.expires\")"),
                    );
                    None
                }
            },
        };
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
            preset: preset?,
            require_user,
            id_rule: defaults.id_rule,
            id_transform: id_transform?,
            expires_field: expires_field?,
        })
    }

    /// `bearer_key` and `allow_unsigned_bearer`: where opaque bearer ids are
    /// looked up. Required with `bearer = "opaque"`; a bearer key that can name
    /// the keys of signed (express) cookies needs `allow_unsigned_bearer = true`,
    /// since a bare session id would then be as good as its signed cookie.
    pub(super) fn bearer_key(
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
        let signed = cookie_format? != CookieFormat::Plain;
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

    /// `sliding = { ttl, touch_after }`: both durations, touch_after below ttl.
    pub(super) fn sliding(
        &mut self,
        path: &[Seg],
        f: Option<file::Sliding>,
    ) -> Option<Option<Sliding>> {
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

    pub(super) fn identity(&mut self) -> Option<Vec<IdentityHeader>> {
        self.identity_at(&[Seg::Key("identity".to_owned())])
    }

    /// An identity table (`[identity]`, or a profile's) at `path`.
    pub(super) fn identity_at(&mut self, path: &[Seg]) -> Option<Vec<IdentityHeader>> {
        let path = path.to_vec();
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
}

/// `[identity.headers]` values longer than this are not sent, unless the
/// header sets its own `max_bytes`.
const DEFAULT_IDENTITY_BYTES: usize = 1024;

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
