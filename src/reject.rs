//! Every way a request can be refused, as typed values, and the one place
//! that turns them into responses.

use http::StatusCode;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::route::target::TargetRejected;

/// Why a request carried no usable session. Logged (and shown to the client
/// only on a route with `show_error_details`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No cookie and no bearer token.
    Missing,
    /// A credential that does not parse or whose signature does not verify.
    BadCredential,
    /// A well-formed id whose session key does not exist (logged out, expired, made up).
    NotFound,
    /// The key exists but its value is not a readable session.
    Unreadable,
    /// A bearer JWT whose `exp` (with the leeway) has passed; its signature verified.
    Expired,
    /// A verified bearer JWT whose token key is gone from Redis (logged out).
    Revoked,
    /// A genuinely signed bearer JWT that fails a `[jwt.claims]` rule or the
    /// required `typ` (e.g. a refresh token where access tokens are expected).
    ClaimMismatch,
    /// The key exists but holds no logged-in user (`require_user`): a
    /// framework's session for an anonymous visitor.
    Anonymous,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "no_credential",
            AuthFailure::BadCredential => "bad_signature",
            AuthFailure::NotFound => "unknown_session",
            AuthFailure::Unreadable => "unreadable",
            AuthFailure::Expired => "expired",
            AuthFailure::Revoked => "revoked",
            AuthFailure::ClaimMismatch => "claim_mismatch",
            AuthFailure::Anonymous => "anonymous",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The request-target, its path or its host (400, before routing).
    BadTarget(TargetRejected),
    HeadersTooLarge,
    NoRoute,
    /// The method is not among a matched route's `methods` (or is TRACE);
    /// `allow` lists what the route serves.
    MethodNotAllowed {
        allow: String,
    },
    Unauthenticated {
        reason: AuthFailure,
        /// A bearer token was presented (adds `WWW-Authenticate: Bearer`).
        bearer: bool,
        /// Where a browser should be sent instead, with `return_to` built in.
        login: Option<String>,
    },
    Forbidden,
    /// A `required` identity header has no valid value in the session.
    IdentityUnavailable,
    StoreUnavailable,
    /// Over a `[rate_limit]` budget; `retry_after` in seconds.
    RateLimited {
        retry_after: u64,
    },
    /// A browser's logout POST sent from another site (`Sec-Fetch-Site`,
    /// else `Origin`): a page elsewhere may not log the user out.
    CrossSiteLogout,
    /// A TLS connection's certificate is not authoritative for the request's
    /// host (a request fronted through another name's connection): 421, and
    /// the client retries on a connection of its own (RFC 9110 15.5.20).
    Misdirected,
}

/// A response ready to be written: status, extra headers, JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: &'static str,
}

impl Rejection {
    /// The decision's reason code: one short, stable word, the same in the
    /// access log, the metrics, `explain` and (with `show_error_details`) the
    /// response body.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Unauthenticated { reason, .. } => reason.as_str(),
            Rejection::Forbidden => "role_missing",
            Rejection::IdentityUnavailable => "identity_invalid",
            Rejection::StoreUnavailable => "store_unavailable",
            Rejection::BadTarget(e) => e.as_str(),
            Rejection::MethodNotAllowed { .. } => "method_not_allowed",
            Rejection::HeadersTooLarge => "headers_too_large",
            Rejection::NoRoute => "no_route",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::CrossSiteLogout => "cross_site",
            Rejection::Misdirected => "misdirected",
        }
    }

    /// Like [`Rejection::render`]; with `details` (a route's
    /// `show_error_details`), a 401 or 403 body also carries the reason code.
    pub fn render_with(&self, details: bool) -> Rendered {
        let mut rendered = self.render();
        if details && matches!(rendered.status.as_u16(), 401 | 403) {
            rendered.body = detailed_body(self.reason());
        }
        rendered
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadTarget(_) => StatusCode::BAD_REQUEST,
            Rejection::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::NoRoute => StatusCode::NOT_FOUND,
            Rejection::Unauthenticated { login: Some(_), .. } => StatusCode::FOUND,
            Rejection::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Rejection::Forbidden | Rejection::IdentityUnavailable | Rejection::CrossSiteLogout => {
                StatusCode::FORBIDDEN
            }
            Rejection::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    pub fn render(&self) -> Rendered {
        let mut headers = Vec::new();
        let body = match self {
            Rejection::BadTarget(TargetRejected::Path(_)) => {
                r#"{"error":"bad_request","message":"invalid request path"}"#
            }
            Rejection::BadTarget(_) => {
                r#"{"error":"bad_request","message":"invalid request target or host"}"#
            }
            Rejection::MethodNotAllowed { allow } => {
                headers.push(("allow", allow.clone()));
                r#"{"error":"method_not_allowed","message":"this method is not allowed here"}"#
            }
            Rejection::HeadersTooLarge => {
                r#"{"error":"headers_too_large","message":"request headers are too large"}"#
            }
            Rejection::NoRoute => r#"{"error":"not_found","message":"no route for this request"}"#,
            Rejection::Unauthenticated {
                login: Some(url), ..
            } => {
                headers.push(("location", url.clone()));
                ""
            }
            Rejection::Unauthenticated { bearer, .. } => {
                if *bearer {
                    headers.push(("www-authenticate", r#"Bearer error="invalid_token""#.into()));
                }
                r#"{"error":"unauthenticated","message":"a valid session is required"}"#
            }
            Rejection::Forbidden | Rejection::IdentityUnavailable => {
                r#"{"error":"forbidden","message":"this session may not access this resource"}"#
            }
            Rejection::StoreUnavailable => {
                headers.push(("retry-after", "1".into()));
                r#"{"error":"unavailable","message":"sessions cannot be checked right now, retry shortly"}"#
            }
            Rejection::RateLimited { retry_after } => {
                headers.push(("retry-after", retry_after.to_string()));
                r#"{"error":"rate_limited","message":"too many requests, retry later"}"#
            }
            Rejection::CrossSiteLogout => {
                r#"{"error":"forbidden","message":"a logout must come from this site"}"#
            }
            Rejection::Misdirected => {
                r#"{"error":"misdirected","message":"this connection is not for this host"}"#
            }
        };
        Rendered {
            status: self.status(),
            headers,
            body,
        }
    }
}

/// The 401 and 403 bodies with their reason, as constants: the set of reasons
/// is closed, so no body is built per request.
fn detailed_body(reason: &'static str) -> &'static str {
    macro_rules! bodies {
        ($($error:literal, $message:literal: $($reason:literal)|+;)+) => {
            match reason {
                $($($reason => concat!(
                    r#"{"error":""#, $error, r#"","message":""#, $message,
                    r#"","reason":""#, $reason, r#""}"#
                ),)+)+
                _ => r#"{"error":"forbidden","message":"this session may not access this resource"}"#,
            }
        };
    }
    bodies! {
        "unauthenticated", "a valid session is required":
            "no_credential" | "bad_signature" | "unknown_session" | "unreadable" | "anonymous" | "expired"
            | "revoked" | "claim_mismatch";
        "forbidden", "this session may not access this resource": "role_missing" | "identity_invalid";
    }
}

/// Characters kept as they are in a `return_to` value (RFC 3986 unreserved and `/`).
const RETURN_TO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// The login URL with the original request as a relative `return_to`.
///
/// `path` must be the normalised path (it starts with exactly one `/`, so the
/// app cannot be tricked into an open redirect to `//evil.example`).
pub fn login_url(login: &str, path: &str, query: Option<&str>) -> String {
    let mut original = String::with_capacity(path.len() + 1 + query.map_or(0, str::len));
    original.push_str(path);
    if let Some(q) = query {
        original.push('?');
        original.push_str(q);
    }
    let sep = if login.contains('?') { '&' } else { '?' };
    format!(
        "{login}{sep}return_to={}",
        utf8_percent_encode(&original, RETURN_TO)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_url_carries_a_relative_encoded_return_to() {
        assert_eq!(
            login_url("/login", "/app/x", Some("a=1&b=2")),
            "/login?return_to=/app/x%3Fa%3D1%26b%3D2"
        );
        assert_eq!(
            login_url("https://id.example/login?app=1", "/", None),
            "https://id.example/login?app=1&return_to=/"
        );
    }

    #[test]
    fn store_errors_ask_to_retry_and_bearer_failures_say_so() {
        let r = Rejection::StoreUnavailable.render();
        assert_eq!(r.status, 503);
        assert!(r.headers.contains(&("retry-after", "1".into())));
        let r = Rejection::Unauthenticated {
            reason: AuthFailure::NotFound,
            bearer: true,
            login: None,
        }
        .render();
        assert_eq!(r.status, 401);
        assert_eq!(r.headers[0].0, "www-authenticate");
        let r = Rejection::Unauthenticated {
            reason: AuthFailure::Missing,
            bearer: false,
            login: Some("/login?return_to=/".into()),
        }
        .render();
        assert_eq!(r.status, 302);
        assert_eq!(r.headers, vec![("location", "/login?return_to=/".into())]);
    }

    #[test]
    fn error_details_add_the_reason_to_401_and_403_bodies_only() {
        let unauthenticated = |reason| Rejection::Unauthenticated {
            reason,
            bearer: false,
            login: None,
        };
        for failure in [
            AuthFailure::Missing,
            AuthFailure::BadCredential,
            AuthFailure::NotFound,
            AuthFailure::Unreadable,
            AuthFailure::Expired,
            AuthFailure::Revoked,
            AuthFailure::ClaimMismatch,
        ] {
            let r = unauthenticated(failure).render_with(true);
            let body: serde_json::Value = serde_json::from_str(r.body).unwrap();
            assert_eq!(body["reason"], failure.as_str());
            assert_eq!(body["error"], "unauthenticated");
            assert_eq!(
                unauthenticated(failure).render_with(false).body,
                unauthenticated(failure).render().body
            );
        }
        for rejection in [Rejection::Forbidden, Rejection::IdentityUnavailable] {
            let body: serde_json::Value =
                serde_json::from_str(rejection.render_with(true).body).unwrap();
            assert_eq!(body["reason"], rejection.reason());
            assert_eq!(body["error"], "forbidden");
        }
        let store = Rejection::StoreUnavailable.render_with(true);
        assert!(!store.body.contains("reason"));
    }
}
