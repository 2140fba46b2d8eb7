//! The Pingora glue: each `ProxyHttp` hook hands its phase to the pipeline
//! and writes out what it decided. No policy lives here.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use crate::pipeline::Pipeline;
use crate::proxy::access::{self, Finished, Next, Verdict};
use crate::proxy::head::HeadEdit;
use crate::reject::Rendered;
use crate::route::target::Rewrite;
use crate::session::cache::Principal;

/// The proxy. The pipeline sits behind an `ArcSwap` so a reload can replace it
/// while each request keeps the one it started with.
pub struct Gateway {
    pipeline: Arc<ArcSwap<Pipeline>>,
}

impl Gateway {
    pub fn new(pipeline: Arc<ArcSwap<Pipeline>>) -> Gateway {
        Gateway { pipeline }
    }
}

/// What each stage of one request found.
pub struct RequestCtx {
    pipeline: Arc<Pipeline>,
    started: Instant,
    /// The pipeline's verdict and what forwarding found.
    verdict: Verdict,
    /// Connection attempts retried on another address so far.
    retries: usize,
    /// The connection's peer address.
    peer: Option<std::net::IpAddr>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        crate::proxy::idle::request_started();
        RequestCtx {
            pipeline: self.pipeline.load_full(),
            started: Instant::now(),
            verdict: Verdict::default(),
            retries: 0,
            peer: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.peer = peer;
        let req = session.req_header();
        let outcome = ctx.pipeline.decide_from(req, req.raw_path(), peer).await;
        match ctx.verdict.record(&ctx.pipeline, outcome) {
            Next::Forward(_) => Ok(false),
            Next::Answer(rendered) => {
                respond(session, rendered).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .verdict
            .route
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
        let addr = ctx.pipeline.upstream_addr(route);
        let upstream = ctx.pipeline.route(route).upstream;
        ctx.verdict.observed.upstream_chosen(upstream);
        let settings = &ctx.pipeline.config.upstreams[upstream];
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(settings.connect_timeout);
        peer.options.read_timeout = Some(settings.read_timeout);
        Ok(Box::new(peer))
    }

    /// A connection that could not be made is retried on the next address
    /// (the round robin moves on), once per other address, for idempotent
    /// methods only: nothing reached the upstream, but the request body may
    /// already be partly consumed for the others.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let others = ctx.verdict.route.map_or(0, |route| {
            let upstream = ctx.pipeline.route(route).upstream;
            ctx.pipeline.config.upstreams[upstream]
                .addrs
                .len()
                .saturating_sub(1)
        });
        if ctx.retries < others && is_idempotent(&session.req_header().method) {
            ctx.retries += 1;
            e.set_retry(true);
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.verdict
            .observed
            .upstream_answered(upstream_response.status.as_u16());
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        prepare_upstream_request(
            upstream_request,
            &ctx.pipeline,
            &ctx.verdict.rewrite,
            ctx.peer,
            ctx.verdict.principal.as_deref(),
        )
    }

    /// What Pingora's own error lines (e.g. on 502/504) say about a request:
    /// the method and the path, never the query string (tokens travel there)
    /// nor any header.
    fn request_summary(&self, session: &Session, _ctx: &Self::CTX) -> String {
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Once a response has started, an error page would be appended to its
        // partial body: the connection is closed instead, so the client sees
        // a truncated response rather than a corrupted one.
        if let Some(started) = session.response_written() {
            return FailToProxy {
                error_code: started.status.as_u16(),
                can_reuse_downstream: false,
            };
        }
        let (status, body) = error_answer(e);
        if status > 0 {
            if let Ok(status) = http::StatusCode::from_u16(status) {
                let rendered = Rendered {
                    status,
                    headers: Vec::new(),
                    body,
                };
                if let Err(err) = respond(session, rendered).await {
                    tracing::debug!(error = %err, "could not write the error response");
                }
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map_or(0, |resp| resp.status.as_u16());
        access::finish(
            session.req_header(),
            status,
            Finished {
                pipeline: &ctx.pipeline,
                verdict: &ctx.verdict,
                started: ctx.started,
            },
        );
    }
}

/// RFC 9110 9.2.2.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The head of a complete small response written by the gateway itself.
pub(crate) fn rendered_head(rendered: &Rendered) -> Result<Box<ResponseHeader>> {
    let mut resp = ResponseHeader::build(rendered.status, Some(rendered.headers.len() + 3))?;
    if !rendered.body.is_empty() {
        resp.insert_header("content-type", "application/json")?;
    }
    // A 204 has no body and must not say how long it is (RFC 9110 8.6).
    if rendered.status != http::StatusCode::NO_CONTENT {
        resp.insert_header("content-length", rendered.body.len())?;
    }
    resp.insert_header("cache-control", "no-store")?;
    for (name, value) in &rendered.headers {
        resp.insert_header(*name, value.as_str())?;
    }
    Ok(Box::new(resp))
}

/// Writes a complete small response, keeping the connection open.
async fn respond(session: &mut Session, rendered: Rendered) -> Result<()> {
    let resp = rendered_head(&rendered)?;
    let head_only = rendered.body.is_empty() || session.req_header().method == Method::HEAD;
    session.write_response_header(resp, head_only).await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from_static(rendered.body.as_bytes())), true)
            .await?;
    }
    Ok(())
}

/// The status and JSON body answering a request whose forwarding failed
/// before a response started; status 0: the client is gone, answer nothing.
pub(crate) fn error_answer(e: &Error) -> (u16, &'static str) {
    match e.etype() {
        ErrorType::HTTPStatus(code) => (*code, ""),
        // The client paused its request body longer than `body_idle_timeout`.
        ErrorType::ReadTimedout if e.esource() == &ErrorSource::Downstream => (
            408,
            r#"{"error":"request_timeout","message":"the request body did not arrive in time"}"#,
        ),
        _ if e.esource() == &ErrorSource::Downstream => (0, ""),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => (
            504,
            r#"{"error":"upstream_timeout","message":"the upstream did not answer in time"}"#,
        ),
        _ => match e.esource() {
            ErrorSource::Upstream => (
                502,
                r#"{"error":"bad_gateway","message":"the upstream could not be reached"}"#,
            ),
            ErrorSource::Downstream => (0, ""),
            _ => (500, r#"{"error":"internal","message":"internal error"}"#),
        },
    }
}

/// Makes the upstream request say what was decided: the canonical target and
/// host, no method or path override headers, the forwarding headers, no
/// client-sent identity headers, and the principal's identity headers.
/// Shared by both forwarding paths.
pub(crate) fn prepare_upstream_request(
    upstream_request: &mut impl HeadEdit,
    pipeline: &Pipeline,
    rewrite: &Rewrite,
    peer: Option<std::net::IpAddr>,
    principal: Option<&Principal>,
) -> Result<()> {
    // The upstream sees the method, path and host that the route was chosen on.
    // One pass over the client's header names finds what must not reach
    // the app: method and path override headers, and client-sent copies of
    // identity headers. Usually nothing, and then nothing is allocated.
    let plan = &pipeline.identity;
    let strip: Vec<http::HeaderName> = upstream_request
        .headers()
        .keys()
        .filter(|name| {
            let name = name.as_str();
            crate::route::target::OVERRIDE_HEADERS.contains(&name) || plan.is_identity_header(name)
        })
        .cloned()
        .collect();
    for name in &strip {
        upstream_request.remove(name);
    }
    if let Some(uri) = &rewrite.uri {
        upstream_request.set_uri(uri.clone());
    }
    if let Some(host) = &rewrite.host {
        upstream_request.insert(http::header::HOST, host.clone())?;
    }
    // A shared handle on the (already canonical) Host bytes, not a copy.
    let host = upstream_request.headers().get(http::header::HOST).cloned();
    crate::proxy::forwarded::apply(
        upstream_request,
        peer,
        &pipeline.config.rate_limit.trusted_proxies,
        host.as_ref(),
    )?;
    if let Some(principal) = &principal {
        for (name, value) in plan.headers(&principal.identity) {
            upstream_request.insert(name.clone(), value)?;
        }
    }
    Ok(())
}
