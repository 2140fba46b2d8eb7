//! The extract stage: the credential a request carries, from the session
//! cookie (plain, or express-signed and tried against every secret) or an
//! `Authorization: Bearer` header (an opaque id, or a JWT). A credential that
//! is present but unusable counts as absent, with the reason kept for logs.

use http::header::{AUTHORIZATION, COOKIE};
use http::request::Parts;
use http::HeaderValue;

use crate::config::{BearerMode, JwtSettings, SessionSettings};
use crate::credential::bearer::bearer_token;
use crate::credential::cookie::{find_cookie, plain_id, ExpressVerifier};
use crate::credential::{Credential, CredentialSource};
use crate::logout::Caller;
use crate::reject::AuthFailure;

use super::trace::{CredentialSeen, NoTrace, Trace};

/// What the extract stage found.
pub(super) enum Extracted {
    /// A session id, from the cookie or an opaque bearer token.
    Found(Credential),
    /// Nothing usable; `bearer`: a bearer token was presented.
    Absent { bearer: bool, reason: AuthFailure },
}

/// The session id of `req`'s cookie, else of its opaque bearer token.
/// `verifier` checks express-signed cookies (`None`: plain cookies).
pub(super) fn extract<T: Trace>(
    req: &Parts,
    session: &SessionSettings,
    verifier: Option<&ExpressVerifier>,
    trace: &mut T,
) -> Extracted {
    let cookies = req
        .headers
        .get_all(COOKIE)
        .iter()
        .map(HeaderValue::as_bytes);
    let mut reason = AuthFailure::Missing;
    let mut reported = false;
    if let Some(raw) = find_cookie(cookies, &session.cookie) {
        let (mut id, mut check, secret_index) = match verifier {
            Some(verifier) => match verifier.check(raw) {
                Ok((id, index)) => (Some(id), "ok", Some(index)),
                Err(e) => (None, e.as_str(), None),
            },
            None => match plain_id(raw) {
                Some(id) => (Some(id), "ok", None),
                None => (None, "malformed", None),
            },
        };
        // Only ids the framework issues name a key (a cookie cannot address
        // other keys through the template).
        if id
            .as_ref()
            .is_some_and(|id| !session.id_rule.allows(id.as_str()))
        {
            (id, check) = (None, "malformed");
        }
        trace.credential(CredentialSeen {
            source: "cookie",
            format: Some(session.cookie_format.as_str()),
            check,
            secret_index,
            id: id.as_ref().map(|id| id.as_str()),
        });
        reported = true;
        match id {
            Some(id) => {
                return Extracted::Found(Credential {
                    id,
                    source: CredentialSource::Cookie,
                })
            }
            None => reason = AuthFailure::BadCredential,
        }
    }
    if session.bearer == BearerMode::Opaque {
        if let Some(auth) = req.headers.get(AUTHORIZATION) {
            let id = bearer_token(auth.as_bytes()).and_then(plain_id);
            trace.credential(CredentialSeen {
                source: "bearer",
                format: Some("opaque"),
                check: if id.is_some() { "ok" } else { "malformed" },
                secret_index: None,
                id: id.as_ref().map(|id| id.as_str()),
            });
            return match id {
                Some(id) => Extracted::Found(Credential {
                    id,
                    source: CredentialSource::Bearer,
                }),
                None => Extracted::Absent {
                    bearer: true,
                    reason: AuthFailure::BadCredential,
                },
            };
        }
    }
    if !reported {
        trace.credential(CredentialSeen {
            source: "none",
            check: "absent",
            ..CredentialSeen::default()
        });
    }
    Extracted::Absent {
        bearer: false,
        reason,
    }
}

/// With `bearer = "jwt"`, the `Authorization` header: `None` without one,
/// `Some(None)` when it is not a usable bearer token, else the token.
pub(super) fn jwt_bearer<'r>(req: &'r Parts, session: &SessionSettings) -> Option<Option<&'r str>> {
    if session.bearer != BearerMode::Jwt {
        return None;
    }
    let auth = req.headers.get(AUTHORIZATION)?;
    Some(bearer_token(auth.as_bytes()).filter(|t| t.len() <= crate::credential::jwt::MAX_TOKEN_LEN))
}

/// Who is logging out, as a request would be authenticated: the cookie, else
/// the bearer token. A JWT must verify (an expired one ends nothing).
pub(super) fn caller(
    req: &Parts,
    session: &SessionSettings,
    verifier: Option<&ExpressVerifier>,
    jwt: Option<&JwtSettings>,
) -> Option<Caller> {
    match extract(req, session, verifier, &mut NoTrace) {
        Extracted::Found(credential) => Some(match credential.source {
            CredentialSource::Cookie => Caller::Session(credential.id),
            CredentialSource::Bearer => Caller::Opaque(credential.id),
        }),
        Extracted::Absent { .. } => match (jwt_bearer(req, session), jwt) {
            (Some(Some(token)), Some(jwt)) => {
                jwt.verifier.verify(token).ok().map(|token| Caller::Token {
                    id: token.id,
                    claims: token.claims,
                })
            }
            _ => None,
        },
    }
}
