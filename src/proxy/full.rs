//! The full proxy: Pingora's `ProxyHttp` engine, for every request the lean
//! path does not take (bodies, upgrades, hop-by-hop fields) and for HTTP/2.
//! Each hook hands its phase to what every engine shares (the pipeline, the
//! upstream request builder, the response rules, the answers) and writes out
//! what it decided. No policy lives here.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::Version;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType};

use crate::live;
use crate::pipeline::{Arrival, Pipeline};
use crate::proxy::access::{self, Finished};
use crate::proxy::answer;
use crate::proxy::request::{self, is_idempotent};
use crate::proxy::response;
use crate::proxy::verdict::{Next, Verdict};
use crate::reject::Rendered;

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
    /// The connection the request arrived on.
    arrival: Arrival,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        crate::proxy::progress::request_started();
        RequestCtx {
            pipeline: self.pipeline.load_full(),
            started: Instant::now(),
            verdict: Verdict::default(),
            retries: 0,
            arrival: Arrival::default(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.arrival = Arrival {
            peer: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            tls: session.digest().and_then(|d| d.ssl_digest.clone()),
        };
        let req = session.req_header();
        let outcome = ctx
            .pipeline
            .decide_from(req, req.raw_path(), &ctx.arrival)
            .await;
        match ctx.verdict.record(&ctx.pipeline, outcome) {
            Next::Forward(_) => Ok(false),
            Next::Answer(rendered) => {
                respond(session, rendered, &ctx.pipeline).await?;
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
        let mut peer = match &settings.tls {
            Some(tls) => tls.peer(addr),
            None => HttpPeer::new(addr, false, String::new()),
        };
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
        response::prepare(upstream_response).map_err(|why| answer::upstream_error(why.as_str()))
    }

    /// After Pingora's own edits (it turns a close-delimited response into a
    /// chunked one to keep the connection): an HTTP/1.0 client cannot read
    /// chunked framing, so it gets the body delimited by the close.
    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        crate::proxy::progress::response_started();
        if let Some(route) = ctx.verdict.route {
            live::relaying(
                upstream_response.status.as_u16(),
                &upstream_response.headers,
                ctx.verdict.principal.as_deref(),
                ctx.pipeline.route(route),
                session.req_header(),
                &ctx.arrival,
            );
        }
        if session.is_http2() {
            // HTTP/2's header compression would keep the upstream's read
            // buffer alive for the connection's life (see `detach_values`).
            let mut parts = upstream_response.as_owned_parts();
            response::detach_values(&mut parts.headers);
            *upstream_response = ResponseHeader::from(parts);
        }
        let hsts = ctx.pipeline.config.server.hsts.as_ref();
        response::add_hsts(upstream_response, hsts, ctx.arrival.tls.is_some())?;
        if session.req_header().version == Version::HTTP_10
            && upstream_response
                .headers
                .contains_key(http::header::TRANSFER_ENCODING)
        {
            upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        request::prepare(
            upstream_request,
            &ctx.pipeline,
            &ctx.verdict.rewrite,
            &ctx.arrival,
            ctx.verdict.principal.as_deref(),
        )?;
        let h2 = ctx.verdict.route.is_some_and(|route| {
            ctx.pipeline.config.upstreams[ctx.pipeline.route(route).upstream].h2()
        });
        if h2 {
            request::drop_connection_fields(upstream_request);
        }
        Ok(())
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
        ctx: &mut RequestCtx,
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
        let Some(rendered) = answer::failure(e) else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let error_code = rendered.status.as_u16();
        if let Err(err) = respond(session, rendered, &ctx.pipeline).await {
            tracing::debug!(error = %err, "could not write the error response");
        }
        FailToProxy {
            error_code,
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

/// Writes a complete small response, keeping the connection open.
async fn respond(session: &mut Session, rendered: Rendered, pipeline: &Pipeline) -> Result<()> {
    crate::proxy::progress::response_started();
    let (resp, head_only) = answer::prepared(
        &rendered,
        pipeline.config.server.hsts.as_ref(),
        session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        &session.req_header().method,
    )?;
    session.write_response_header(resp, head_only).await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from_static(rendered.body.as_bytes())), true)
            .await?;
    }
    Ok(())
}
