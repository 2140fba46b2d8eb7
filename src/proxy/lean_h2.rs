//! The lean engine's HTTP/2 side: a stream whose request has no body, or a
//! body whose `content-length` is at most [`BODY_MAX`], with no `te` and no
//! CONNECT, is decided and forwarded here (such a body is read whole once the
//! request is admitted, then sent with its length), to an HTTP/1.1 upstream on the lean engine's
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
use crate::proxy::answer::{self, upstream_error};
use crate::proxy::lean::leaves_to_full_proxy;
use crate::proxy::pool;
use crate::proxy::progress;
use crate::proxy::request::{self, is_idempotent};
use crate::proxy::response;
use crate::proxy::verdict::{Next, Verdict};
use crate::reject::Rendered;

/// The longest request body the lean path reads whole before forwarding
/// (an API's JSON); longer ones, and bodies of no announced length, stream
/// through the full proxy.
pub(crate) const BODY_MAX: usize = 16 * 1024;

/// Serves one stream on the lean path, or hands it back (untouched) for the
/// full proxy.
pub(crate) async fn serve(
    mut session: HttpSession,
    pipeline: Arc<Pipeline>,
    started: Instant,
) -> Option<HttpSession> {
    let Some(body_length) = takes(&session, &pipeline) else {
        return Some(session);
    };
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
            let forwarded = forward(
                &mut session,
                &pipeline,
                &mut verdict,
                route,
                &arrival,
                body_length,
            )
            .await;
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

/// Whether the lean path takes this stream (the length of its request
/// body): no body or a small one ([`body_length`]), no `te` (trailers), no
/// CONNECT, and no upstream that speaks HTTP/2 (the full proxy's, as on
/// HTTP/1).
fn takes(session: &HttpSession, pipeline: &Pipeline) -> Option<usize> {
    let req = session.req_header();
    let takes = req.method != Method::CONNECT
        && !leaves_to_full_proxy(&req.headers)
        && !req.headers.contains_key(header::CONNECTION)
        && !req.headers.contains_key(header::UPGRADE)
        && !pipeline.h2_upstream();
    takes.then(|| body_length(session)).flatten()
}

/// How long the request body is, when the lean path reads it: none (the
/// HEADERS ended the stream), or one `content-length` of at most
/// [`BODY_MAX`] (the h2 library holds the DATA frames to it).
fn body_length(session: &HttpSession) -> Option<usize> {
    if session.is_body_empty() {
        return Some(0);
    }
    let mut lengths = session
        .req_header()
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter();
    let (Some(length), None) = (lengths.next(), lengths.next()) else {
        return None;
    };
    let length = length.to_str().ok()?;
    if length.is_empty() || !length.bytes().all(|b| b.is_ascii_digit()) || length.len() > 6 {
        return None;
    }
    let length: usize = length.parse().ok()?;
    (length <= BODY_MAX).then_some(length)
}

/// Reads the request body whole: exactly `length` bytes, then the end of
/// the stream.
async fn read_body(session: &mut HttpSession, length: usize) -> Result<Bytes> {
    let mut body = bytes::BytesMut::with_capacity(length);
    while let Some(chunk) = session.read_body_bytes().await.map_err(Error::into_down)? {
        if body.len() + chunk.len() > length {
            return Err(Error::explain(
                ErrorType::InvalidHTTPHeader,
                "a body longer than its content-length",
            )
            .into_down());
        }
        body.extend_from_slice(&chunk);
    }
    if body.len() != length {
        return Err(Error::explain(
            ErrorType::InvalidHTTPHeader,
            "a body shorter than its content-length",
        )
        .into_down());
    }
    Ok(body.freeze())
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
    body_length: usize,
) -> Result<()> {
    let method = session.req_header().method.clone();
    // Read only once the request is admitted.
    // Pingora calls a body of `content-length: 0` empty before its stream
    // has ended: one that announces a length is read to the end of its
    // stream, so DATA after a `0` is refused before anything is forwarded.
    let announced = session
        .req_header()
        .headers
        .contains_key(header::CONTENT_LENGTH);
    let body = if announced || !session.is_body_empty() {
        read_body(session, body_length).await?
    } else {
        Bytes::new()
    };
    verdict
        .observed
        .upstream_chosen(pipeline.route(route).upstream);
    let mut slot = None;
    let (kept, client) = pool::send(
        pipeline,
        route,
        is_idempotent(&method),
        || upstream_request(session.req_header(), pipeline, verdict, arrival),
        &body,
        &mut slot,
    )
    .await?;
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
    let (head, head_only) = answer::prepared(
        rendered,
        pipeline.config.server.hsts.as_ref(),
        session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        &session.req_header().method,
    )?;
    session.write_response_header(head, head_only)?;
    if !head_only {
        session
            .write_body(Bytes::from_static(rendered.body.as_bytes()), true)
            .await?;
    }
    Ok(())
}
