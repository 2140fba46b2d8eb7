//! The one upstream request builder: every engine hands it the client's head
//! (in whatever form it holds it, see [`HeadEdit`]) and the verdict, and it
//! makes the head say what was decided, so every way in forwards the same
//! bytes for the same request.

use http::{HeaderName, Method};
use pingora::{ErrorType, OrErr, Result};

use crate::pipeline::{Arrival, Pipeline};
use crate::proxy::forwarded;
use crate::proxy::head::HeadEdit;
use crate::proxy::owned::{self, Owned};
use crate::route::target::Rewrite;
use crate::session::cache::Principal;

/// Makes the upstream request say what was decided: the canonical target and
/// host, no method or target override headers, the forwarding headers, no
/// client-sent identity headers, and the principal's identity headers.
pub(crate) fn prepare(
    upstream_request: &mut impl HeadEdit,
    pipeline: &Pipeline,
    rewrite: &Rewrite,
    arrival: &Arrival,
    principal: Option<&Principal>,
) -> Result<()> {
    let peer = arrival.peer;
    let trusted = &pipeline.config.rate_limit.trusted_proxies;
    let from_trusted = peer.is_some_and(|ip| trusted.iter().any(|c| c.contains(ip)));
    // One pass over the client's header names finds what must not reach the
    // app. Usually nothing, and then nothing is allocated.
    let plan = &pipeline.identity;
    let strip: Vec<HeaderName> = upstream_request
        .headers()
        .keys()
        .filter(|name| match owned::classify(name.as_str(), plan) {
            None => false,
            Some((Owned::Override | Owned::Identity, _)) => true,
            // A trusted proxy vouches for the forwarding headers it sets, in
            // their canonical spelling; the chain is extended below.
            Some((Owned::Forwarding(_), canonical)) => !(from_trusted && canonical),
        })
        .cloned()
        .collect();
    for name in &strip {
        upstream_request.remove(name);
    }
    // The upstream sees the target and host the route was chosen on.
    if let Some(uri) = &rewrite.uri {
        upstream_request.set_uri(uri.clone());
    }
    if let Some(host) = &rewrite.host {
        upstream_request.insert(http::header::HOST, host.clone())?;
    }
    // A shared handle on the (already canonical) Host bytes, not a copy.
    let host = upstream_request.headers().get(http::header::HOST).cloned();
    forwarded::apply(
        upstream_request,
        peer,
        from_trusted,
        arrival.tls.is_some(),
        host.as_ref(),
    )?;
    join_cookies(upstream_request)?;
    if let Some(principal) = &principal {
        let plan = &pipeline.profile(principal.profile).identity;
        for (name, value) in plan.headers(&principal.identity) {
            upstream_request.insert(name.clone(), value)?;
        }
    }
    Ok(())
}

/// Removes what HTTP/2 forbids in a request (RFC 9113 8.2.2): `Connection`
/// and every field it nominates, `Keep-Alive`, `Proxy-Connection`,
/// `Transfer-Encoding`, `Upgrade`, and `TE` other than `trailers`. For an
/// upstream spoken to over HTTP/2 (the h2 crate refuses such a request).
pub(crate) fn drop_connection_fields(req: &mut impl HeadEdit) {
    let headers = req.headers();
    let mut names: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    if headers
        .get_all(http::header::TE)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        names.push(http::header::TE);
    }
    names.extend([
        http::header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
    ]);
    for name in &names {
        req.remove(name);
    }
}

/// Several `Cookie` fields become one, joined with `; ` (RFC 9113 8.2.3,
/// and what HTTP/1.1 allows, RFC 6265 5.4): an HTTP/2 client may split its
/// cookies over several fields, and apps differ on which of several
/// HTTP/1.1 fields they read. Joined in order, the app's first occurrence of
/// a cookie is the one the gateway read.
fn join_cookies(req: &mut impl HeadEdit) -> Result<()> {
    let mut fields = req.headers().get_all(http::header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return Ok(());
    }
    let mut joined = Vec::new();
    for field in req.headers().get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(field.as_bytes());
    }
    let value = http::HeaderValue::from_bytes(&joined)
        .or_err(ErrorType::InvalidHTTPHeader, "joining cookie fields")?;
    req.insert(http::header::COOKIE, value)
}

/// RFC 9110 9.2.2: a request that may be sent again when nothing of it
/// reached the upstream.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
