//! The one upstream request builder: every engine hands it the client's head
//! (in whatever form it holds it, see [`HeadEdit`]) and the verdict, and it
//! makes the head say what was decided, so every way in forwards the same
//! bytes for the same request.

use std::net::IpAddr;

use http::{HeaderName, Method};
use pingora::Result;

use crate::pipeline::Pipeline;
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
    peer: Option<IpAddr>,
    principal: Option<&Principal>,
) -> Result<()> {
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
    forwarded::apply(upstream_request, peer, from_trusted, host.as_ref())?;
    if let Some(principal) = &principal {
        for (name, value) in plan.headers(&principal.identity) {
            upstream_request.insert(name.clone(), value)?;
        }
    }
    Ok(())
}

/// RFC 9110 9.2.2: a request that may be sent again when nothing of it
/// reached the upstream.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
