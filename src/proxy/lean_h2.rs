//! The lean engine's HTTP/2 side: a stream whose request has no body (its
//! HEADERS ended the stream), no `te` and no method but the plain ones is
//! decided and forwarded here, to an HTTP/1.1 upstream on the lean engine's
//! kept connections ([`pool`]), without the per-request machinery of
//! Pingora's proxy engine. Any other stream is handed back for the full
//! proxy. Both ask [`Pipeline::decide_from`], build the upstream request
//! with [`request::prepare`], relay the response head under
//! [`response::prepare`] and render their answers with [`answer`]; as the
//! full proxy does, the upstream is sent `Host` from `:authority` and an
//! origin-form target.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Uri, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v2::server::HttpSession;
use pingora::{Error, ErrorType, OrErr, Result};

use crate::live;
use crate::pipeline::{Arrival, Pipeline};
use crate::proxy::access::{self, Finished};
use crate::proxy::answer::{self, rendered_head, upstream_error};
use crate::proxy::lean::leaves_to_full_proxy;
use crate::proxy::pool;
use crate::proxy::progress;
use crate::proxy::request::{self, is_idempotent};
use crate::proxy::response;
use crate::proxy::verdict::{Next, Verdict};
use crate::reject::Rendered;

/// Serves one stream on the lean path, or hands it back (untouched) for the
/// full proxy.
pub(crate) async fn serve(
    mut session: HttpSession,
    pipeline: Arc<Pipeline>,
    started: Instant,
) -> Option<HttpSession> {
    if !takes(&session, &pipeline) {
        return Some(session);
    }
    let arrival = Arrival {
        peer: session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        tls: session.digest().and_then(|d| d.ssl_digest.clone()),
    };
    let mut verdict = Verdict::default();
    let req = session.req_header();
    let outcome = pipeline.decide_from(req, req.raw_path(), &arrival).await;
    match verdict.record(&pipeline, outcome) {
        Next::Answer(rendered) => {
            if let Err(e) = write_rendered(&mut session, &rendered, &pipeline).await {
                tracing::debug!(error = %e, "could not write the response");
            }
        }
        Next::Forward(route) => {
            let forwarded = forward(&mut session, &pipeline, &mut verdict, route, &arrival).await;
            if let Err(e) = forwarded {
                failed(&mut session, &pipeline, &e).await;
            }
        }
    }
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    access::finish(
        session.req_header(),
        status,
        Finished {
            pipeline: &pipeline,
            verdict: &verdict,
            started,
        },
    );
    None
}

/// Whether the lean path takes this stream: no request body, no `te`
/// (trailers), no CONNECT, and no upstream that speaks HTTP/2 (the full
/// proxy's, as on HTTP/1).
fn takes(session: &HttpSession, pipeline: &Pipeline) -> bool {
    let req = session.req_header();
    session.is_body_empty()
        && req.method != Method::CONNECT
        && !leaves_to_full_proxy(&req.headers)
        && !req.headers.contains_key(header::CONNECTION)
        && !req.headers.contains_key(header::UPGRADE)
        && !pipeline
            .config
            .upstreams
            .iter()
            .any(|u| u.tls.as_ref().is_some_and(|t| t.files.h2))
}

/// The request the upstream is sent: the client's, as decided on, as
/// HTTP/1.1 with `Host` from `:authority` and an origin-form target.
fn upstream_request(
    req: &RequestHeader,
    pipeline: &Pipeline,
    verdict: &Verdict,
    arrival: &Arrival,
) -> Result<Box<RequestHeader>> {
    let mut parts = req.as_owned_parts();
    let identity = verdict.principal.as_ref().map_or(0, |p| p.identity.len());
    parts.headers.reserve(4 + identity);
    parts.version = Version::HTTP_11;
    if let Some(authority) = parts.uri.authority() {
        if authority.as_str().contains('@') {
            return Error::e_explain(ErrorType::InvalidHTTPHeader, "userinfo in :authority");
        }
        let host = HeaderValue::from_str(authority.as_str())
            .or_err(ErrorType::InvalidHTTPHeader, "the :authority as Host")?;
        parts.headers.insert(header::HOST, host);
    }
    if let Some(target) = parts.uri.path_and_query().cloned() {
        parts.uri = Uri::from(target);
    }
    request::prepare(
        &mut parts,
        pipeline,
        &verdict.rewrite,
        arrival,
        verdict.principal.as_deref(),
    )?;
    Ok(Box::new(RequestHeader::from(parts)))
}

/// Sends the request upstream and its response back on the stream.
async fn forward(
    session: &mut HttpSession,
    pipeline: &Pipeline,
    verdict: &mut Verdict,
    route: usize,
    arrival: &Arrival,
) -> Result<()> {
    let method = session.req_header().method.clone();
    verdict
        .observed
        .upstream_chosen(pipeline.route(route).upstream);
    let mut slot = None;
    let kept = pool::send(
        pipeline,
        route,
        is_idempotent(&method),
        || upstream_request(session.req_header(), pipeline, verdict, arrival),
        &mut slot,
    )
    .await?;
    let Some(client) = slot.as_mut() else {
        return Err(upstream_error("no upstream session"));
    };
    // Informational responses are not relayed (Pingora's HTTP/2 session
    // drops them too); a 101 answers an upgrade nobody asked for.
    loop {
        let Some(status) = client.get_status() else {
            return Err(upstream_error("no response status"));
        };
        if status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(upstream_error("101 to a request that asked for no upgrade"));
        }
        if !status.is_informational() {
            break;
        }
        client.read_response().await.map_err(Error::into_up)?;
    }
    let head = client
        .resp_header()
        .ok_or_else(|| upstream_error("no response header"))?;
    let mut parts = head.as_owned_parts();
    parts.headers.reserve(2);
    response::detach_values(&mut parts.headers);
    let mut resp = Box::new(ResponseHeader::from(parts));
    verdict.observed.upstream_answered(resp.status.as_u16());
    response::prepare(&mut resp).map_err(|why| upstream_error(why.as_str()))?;
    let hsts = pipeline.config.server.hsts.as_ref();
    response::add_hsts(&mut resp, hsts, arrival.tls.is_some())?;
    progress::response_started();
    live::relaying(
        resp.status.as_u16(),
        &resp.headers,
        verdict.principal.as_deref(),
        pipeline.route(route),
        session.req_header(),
        arrival,
    );
    let no_body = method == Method::HEAD || matches!(resp.status.as_u16(), 204 | 304);
    session
        .write_response_header(resp, no_body)
        .map_err(Error::into_down)?;
    while let Some(chunk) = client.read_body_bytes().await.map_err(Error::into_up)? {
        if !no_body {
            session
                .write_body(chunk, false)
                .await
                .map_err(Error::into_down)?;
        }
    }
    session.finish().map_err(Error::into_down)?;
    client.respect_keepalive();
    let reused = match slot.take() {
        Some(client) => client.reuse().await,
        None => None,
    };
    if let Some(stream) = reused {
        pool::checkin(kept, stream);
    }
    Ok(())
}

/// Answers a stream whose forwarding failed, as the full proxy does; a
/// response already started is reset instead (when the session is dropped).
async fn failed(session: &mut HttpSession, pipeline: &Pipeline, e: &Error) {
    let req = session.req_header();
    tracing::error!("Fail to proxy: {e}, {} {}", req.method, req.uri.path());
    if session.response_written().is_some() {
        return;
    }
    let Some(rendered) = answer::failure(e) else {
        return;
    };
    if let Err(e) = write_rendered(session, &rendered, pipeline).await {
        tracing::debug!(error = %e, "could not write the error response");
    }
}

async fn write_rendered(
    session: &mut HttpSession,
    rendered: &Rendered,
    pipeline: &Pipeline,
) -> Result<()> {
    progress::response_started();
    let mut head = rendered_head(rendered)?;
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    response::add_hsts(&mut head, pipeline.config.server.hsts.as_ref(), tls)?;
    let head_only = rendered.body.is_empty() || session.req_header().method == Method::HEAD;
    session.write_response_header(head, head_only)?;
    if !head_only {
        session
            .write_body(Bytes::from_static(rendered.body.as_bytes()), true)
            .await?;
    }
    Ok(())
}
