//! `explain`: what the pipeline decides for one request head, stage by stage,
//! for an operator asking "why was this refused?". The pipeline fills an
//! [`Explanation`] as it runs (see `Pipeline::explain`); this module holds its
//! shape, the redaction of ids and the human rendering. Nothing here ever
//! holds a secret, a token or a whole session id.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use http::header::{AUTHORIZATION, COOKIE, HOST};
use http::request::Parts;
use serde::{Deserialize, Serialize};

/// One request head to explain: the body of `POST /explain`, and what the
/// `explain` command's flags build. No `Debug`: it holds credentials.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// `http(s)://host[:port]/path?query`.
    pub url: String,
    /// Default `GET`.
    pub method: Option<String>,
    /// The session cookie's value, or a whole `Cookie` header (`a=1; connect.sid=...`).
    pub cookie: Option<String>,
    /// A bearer token, sent as `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
    /// More request headers (e.g. `Accept`, a spoofed `X-User-Id`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl ExplainRequest {
    /// The request head this describes and its request-target, as a client
    /// would send them: origin-form target, `Host` from the URL's authority.
    /// `cookie_name` is `[session] cookie`.
    pub fn head(&self, cookie_name: &str) -> Result<(Parts, String), String> {
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|e| format!("url: not a URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err("url: must start with http:// or https://".into());
        }
        let authority = uri
            .authority()
            .ok_or("url: has no host")?
            .as_str()
            .to_owned();
        if authority.contains('@') {
            return Err("url: must not carry user information".into());
        }
        let target = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let method = self.method.as_deref().unwrap_or("GET");
        let method = http::Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("method: {method:?} is not an HTTP method"))?;
        let mut builder = http::Request::builder()
            .method(method)
            .uri(target.as_str())
            .header(HOST, authority);
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(cookie) = &self.cookie {
            let header = if cookie.contains('=') && !cookie.starts_with("s%3A") {
                cookie.clone()
            } else {
                format!("{cookie_name}={cookie}")
            };
            builder = builder.header(COOKIE, header);
        }
        if let Some(token) = &self.bearer {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let (parts, ()) = builder
            .body(())
            .map_err(|_| "a header name or value is not valid".to_owned())?
            .into_parts();
        Ok((parts, target))
    }
}

/// The stages of one explained request, in pipeline order. A stage the
/// request never reached is `None`.
#[derive(Debug, Default, Serialize)]
pub struct Explanation {
    pub request: RequestStage,
    pub route: Option<RouteStage>,
    pub credential: Option<CredentialStage>,
    pub lookup: Option<LookupStage>,
    pub session: Option<SessionStage>,
    pub authorization: Option<AuthorizationStage>,
    pub decision: DecisionStage,
    /// What explain does differently from serving (it changes nothing).
    pub notes: Vec<&'static str>,
}

/// The request as the gateway canonicalised it.
#[derive(Debug, Default, Serialize)]
pub struct RequestStage {
    pub method: String,
    /// The canonical host (lower case, port removed); `None` when refused before.
    pub host: Option<String>,
    /// The canonical path (never the query string).
    pub path: Option<String>,
    /// The upstream would be sent a rewritten target or host.
    pub rewritten: bool,
}

/// Which route serves the request, and under which readings of its path.
#[derive(Debug, Default, Serialize)]
pub struct RouteStage {
    /// The route of the exact reading: it serves the request.
    pub name: String,
    /// The session profile its credential is checked under.
    pub profile: String,
    /// Every reading with the route it chose.
    pub readings: Vec<ReadingRoute>,
    /// The route whose authentication settings apply (the first
    /// authenticated one); `None` when every reading is public.
    pub authenticated_by: Option<String>,
    /// `public` or `authenticated` (the strictest reading).
    pub access: &'static str,
    /// `enforce`, or `report` when every authenticated reading is in report mode.
    pub mode: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ReadingRoute {
    pub reading: &'static str,
    pub route: String,
}

/// The credential found and how it checked out.
#[derive(Debug, Default, Serialize)]
pub struct CredentialStage {
    /// `cookie`, `bearer` or `none`.
    pub source: &'static str,
    /// `express` (signed cookie), `plain`, `opaque` (bearer id) or `jwt`.
    pub format: Option<&'static str>,
    /// `ok`, `absent`, `malformed`, `bad_signature`, or a JWT refusal
    /// (`expired`, `signature`, `claim_mismatch`, ...).
    pub check: &'static str,
    /// Which `[session] secrets` entry signed an express cookie (0: the first).
    pub secret_index: Option<usize>,
    /// The first characters of the session (or token) id.
    pub id_prefix: Option<String>,
}

/// The Redis lookup behind a credential.
#[derive(Debug, Default, Serialize)]
pub struct LookupStage {
    /// The key, its id redacted to a prefix.
    pub key: String,
    /// `hit`, `miss` or `bypassed` (cache off or not live); `None` for JWT
    /// token keys, which are never cached.
    pub cache: Option<&'static str>,
    /// Who answered: `cache` or `redis`.
    pub source: &'static str,
    /// `found`, `unknown_session`, `revoked`, `unreadable` or `store_unavailable`.
    pub result: &'static str,
    /// The key's remaining TTL, as last read, in seconds; `None`: no expiry
    /// or not found.
    pub ttl_seconds: Option<u64>,
}

/// The fields of the session the decision used.
#[derive(Debug, Default, Serialize)]
pub struct SessionStage {
    /// The user (`[session] user_field`), when the access log or a rate limit reads it.
    pub user: Option<String>,
    /// The values at `[session] role_field`.
    pub roles: Vec<String>,
    pub role_field: String,
    /// Each `[identity.headers]` entry and the value it would be set to.
    pub identity: Vec<IdentityField>,
    /// A `required` identity header has no valid value.
    pub missing_required: bool,
}

#[derive(Debug, Serialize)]
pub struct IdentityField {
    pub header: String,
    pub field: String,
    pub required: bool,
    /// `None`: the session has no valid value for it (the header is not sent).
    pub value: Option<String>,
}

/// Each matched route's `roles` against the session's.
#[derive(Debug, Default, Serialize)]
pub struct AuthorizationStage {
    pub routes: Vec<RouteRoles>,
    /// The first route whose roles the session lacks.
    pub refused_by: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RouteRoles {
    pub route: String,
    /// Empty: any session will do.
    pub roles: Vec<String>,
    pub satisfied: bool,
}

/// The verdict.
#[derive(Debug, Default, Serialize)]
pub struct DecisionStage {
    /// As in the access log and `sessiongate_requests_total`: `forwarded`,
    /// `public`, `would_deny`, `unauthenticated`, `forbidden`, ...
    pub decision: &'static str,
    /// The reason code; `None` when the request is let in with nothing to report.
    pub reason: Option<&'static str>,
    /// The status the client would get (0: forwarded, the upstream answers).
    pub status: u16,
    /// The route that decided, when one matched.
    pub route: Option<String>,
}

/// The first few characters of an id, then `...`: enough to tell two ids
/// apart in a conversation, never enough to use one. Short ids show nothing.
pub fn redact(id: &str) -> String {
    let keep = match id.chars().count() {
        n if n >= 16 => 4,
        n if n >= 8 => 2,
        _ => 0,
    };
    let mut out: String = id.chars().take(keep).collect();
    out.push_str("...");
    out
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let r = &self.request;
        let _ = writeln!(
            out,
            "request     {} host={} path={}{}",
            r.method,
            r.host.as_deref().unwrap_or("-"),
            r.path.as_deref().unwrap_or("-"),
            if r.rewritten {
                " (rewritten to this for the upstream)"
            } else {
                ""
            }
        );
        if let Some(route) = &self.route {
            let readings: Vec<String> = route
                .readings
                .iter()
                .map(|r| format!("{}={}", r.reading, r.route))
                .collect();
            let _ = writeln!(
                out,
                "route       {} ({}, mode {}; readings: {})",
                route.name,
                route.access,
                route.mode,
                readings.join(", ")
            );
            if let Some(by) = route
                .authenticated_by
                .as_ref()
                .filter(|by| **by != route.name)
            {
                let _ = writeln!(out, "            authentication settings of route {by}");
            }
        }
        if let Some(c) = &self.credential {
            let _ = write!(out, "credential  {}", c.source);
            if let Some(format) = c.format {
                let _ = write!(out, " ({format})");
            }
            let _ = write!(out, ": {}", c.check);
            if let Some(i) = c.secret_index {
                let _ = write!(out, ", signed with secret #{i}");
            }
            if let Some(id) = &c.id_prefix {
                let _ = write!(out, ", id {id}");
            }
            out.push('\n');
        }
        if let Some(l) = &self.lookup {
            let _ = write!(out, "lookup      {}", l.key);
            if let Some(cache) = l.cache {
                let _ = write!(out, " cache {cache},");
            }
            let _ = write!(out, " {} from {}", l.result, l.source);
            if let Some(ttl) = l.ttl_seconds {
                let _ = write!(out, ", ttl {ttl}s");
            }
            out.push('\n');
        }
        if let Some(s) = &self.session {
            let _ = writeln!(
                out,
                "session     user={} {}=[{}]{}",
                s.user.as_deref().unwrap_or("-"),
                s.role_field,
                s.roles.join(", "),
                if s.missing_required {
                    " (a required identity header has no valid value)"
                } else {
                    ""
                }
            );
            for i in &s.identity {
                let _ = writeln!(
                    out,
                    "            {}: {} <- {}{}",
                    i.header,
                    i.value.as_deref().unwrap_or("(not sent)"),
                    i.field,
                    if i.required { " (required)" } else { "" }
                );
            }
        }
        if let Some(a) = &self.authorization {
            for r in &a.routes {
                let roles = if r.roles.is_empty() {
                    "any session".to_owned()
                } else {
                    format!("one of [{}]", r.roles.join(", "))
                };
                let _ = writeln!(
                    out,
                    "roles       route {} wants {roles}: {}",
                    r.route,
                    if r.satisfied { "ok" } else { "missing" }
                );
            }
        }
        let d = &self.decision;
        let _ = write!(out, "decision    {}", d.decision);
        if let Some(reason) = d.reason {
            let _ = write!(out, " ({reason})");
        }
        if d.status > 0 {
            let _ = write!(out, ", status {}", d.status);
        } else {
            out.push_str(", forwarded to the upstream");
        }
        out.push('\n');
        for note in &self.notes {
            let _ = writeln!(out, "note        {note}");
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_built_from_the_url_and_credentials() {
        let req = ExplainRequest {
            url: "https://App.example:8443/a/../b?x=1".into(),
            method: Some("POST".into()),
            cookie: Some("s%3Aabc.def".into()),
            headers: [("Accept".to_owned(), "text/html".to_owned())].into(),
            ..Default::default()
        };
        let (parts, target) = req.head("connect.sid").unwrap();
        assert_eq!(target, "/a/../b?x=1");
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.headers[HOST], "App.example:8443");
        assert_eq!(parts.headers[COOKIE], "connect.sid=s%3Aabc.def");
        assert_eq!(parts.headers["accept"], "text/html");
        let whole = ExplainRequest {
            url: "http://h/".into(),
            cookie: Some("a=1; sid=xyz".into()),
            bearer: Some("tok".into()),
            ..Default::default()
        };
        let (parts, _) = whole.head("sid").unwrap();
        assert_eq!(parts.headers[COOKIE], "a=1; sid=xyz");
        assert_eq!(parts.headers[AUTHORIZATION], "Bearer tok");
        for url in ["/relative", "ftp://h/", "http://u:p@h/"] {
            let req = ExplainRequest {
                url: url.into(),
                ..Default::default()
            };
            assert!(req.head("sid").is_err(), "{url}");
        }
    }

    #[test]
    fn ids_are_cut_to_a_prefix() {
        assert_eq!(redact("f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o"), "f_5L...");
        assert_eq!(redact("abcdefgh"), "ab...");
        assert_eq!(redact("abc"), "...");
        assert_eq!(redact("ééééééééééééééééé"), "éééé...");
    }
}
