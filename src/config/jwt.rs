//! The checks of `[jwt]`: algorithms, keys, claims and claim rules.

use std::time::Duration;

use super::checker::Checker;
use super::file;
use super::keypath::{idx, sub, Seg};
use super::model::KeyTemplate;

impl<'r, 't> Checker<'r, 't> {
    /// `[jwt]`: required by, and only used with, `[session] bearer = "jwt"`.
    /// Key files are read (relative to the configuration file) and parsed here,
    /// so a bad key is a configuration error, not a failure per request.
    pub(super) fn jwt(&mut self) -> Option<Option<super::model::JwtSettings>> {
        use crate::credential::jwt;
        use jsonwebtoken::AlgorithmFamily;

        let path = [Seg::Key("jwt".to_owned())];
        let jwt_bearer = self.jwt_bearer_path();
        let wants_jwt = jwt_bearer.is_some();
        let bearer_path = jwt_bearer.unwrap_or_else(|| {
            vec![
                Seg::Key("session".to_owned()),
                Seg::Key("bearer".to_owned()),
            ]
        });
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
                "[jwt] is only used with bearer = \"jwt\" (in [session] or a profile)",
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
    pub(super) fn claim_rules(
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
    pub(super) fn jwt_keys(
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

    pub(super) fn key_file<T>(
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
}
