//! The lean forwarding path: one HTTP/1.1 exchange at a time on Pingora's
//! own HTTP/1 server and client sessions (their parsers, framing and
//! smuggling defences), without the per-request machinery of Pingora's proxy
//! engine: no channels and no tasks per request, and upstream connections
//! kept per worker thread, handed back without a task.
//!
//! It takes the common request: HTTP/1.x, origin-form, no body, no upgrade
//! but a WebSocket's (relayed by [`tunnel`]), no `Expect`, and no hop-by-hop
//! fields but `Connection: keep-alive|close`.
//! Anything else goes to the full proxy ([`Lane::Full`]), which shares every
//! security decision: both ask [`Pipeline::decide_from`], both build the
//! upstream request with [`request::prepare`], relay the response head under
//! [`response::prepare`] and render their own answers with [`answer`].

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use http::header;
use http::{Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::v1::server::HttpSession as DownstreamSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::{Error, Result};

use crate::live;
use crate::pipeline::{Arrival, Pipeline};
use crate::proxy::access::{self, Finished};
use crate::proxy::answer::{self, upstream_error};
use crate::proxy::pool;
use crate::proxy::request::{self, is_idempotent};
use crate::proxy::response;
use crate::proxy::tunnel;
use crate::proxy::verdict::{Next, Verdict};
use crate::reject::Rendered;

/// Which path a request head takes.
pub enum Lane {
    /// Served here; the connection comes back when it may be reused.
    Served(Option<Stream>),
    /// Not a request this path takes: the connection and the head, for the
    /// full proxy, and how long its body is when that is known (Pingora
    /// parsed the head, it has no chunked body and asks for no upgrade or
    /// tunnel): what follows that body is the next request.
    Full(Stream, BytesMut, Option<usize>),
}

/// Serves one request whose whole head (and nothing after it) is in `head`
/// on the lean path, or hands it back untouched for the full proxy.
/// `reuses_remaining`: how many more requests the connection may carry after
/// this one (`None`: no limit); `alone`: nothing the client sent follows the
/// head yet (a WebSocket's first frames would: the full proxy takes those).
pub async fn serve(
    stream: Stream,
    head: BytesMut,
    pipeline: Arc<Pipeline>,
    shutdown: &ShutdownWatch,
    started: Instant,
    reuses_remaining: Option<u32>,
    alone: bool,
) -> Lane {
    // HTTP/2 to an upstream is the full proxy's: with such an upstream
    // configured, it serves every request (the route is not known yet).
    if pipeline.h2_upstream() {
        return Lane::Full(stream, head, None);
    }
    let prefix = head.clone();
    let mut down = DownstreamSession::new(stream);
    down.set_pipelined_prefix(head);
    // The head is whole in the prefix, so this parses without reading.
    match down.read_request().await {
        Ok(Some(_)) => {}
        // A head Pingora's parser refuses is answered by the full proxy,
        // which counts and logs it as it always has.
        _ => return Lane::Full(down.into_inner(), prefix, None),
    }
    let body_empty = down.is_body_empty();
    // An ACME server validating a token this gateway waits on: answered
    // before any routing or session check.
    if down
        .req_header()
        .raw_path()
        .starts_with(crate::acme::CHALLENGE_PREFIX.as_bytes())
    {
        if let Some(answer) = crate::acme::http01(down.req_header().raw_path()).await {
            return Lane::Served(acme_answer(down, answer).await);
        }
    }
    let req = down.req_header();
    let takes = if is_websocket(req) { alone } else { takes(req) };
    if !takes || !body_empty {
        let body = body_length(down.req_header(), body_empty);
        return Lane::Full(down.into_inner(), prefix, body);
    }
    drop(prefix);
    let server = &pipeline.config.server;
    down.set_read_timeout(Some(server.body_idle_timeout));
    down.set_write_timeout(Some(server.write_timeout));
    down.set_keepalive_reuses_remaining(reuses_remaining);
    if *shutdown.borrow() {
        down.set_server_keepalive(None);
    }
    let mut exchange = Exchange {
        pipeline: &pipeline,
        verdict: Verdict::default(),
        reusable: true,
    };
    exchange.run(&mut down).await;
    let status = down.response_written().map_or(0, |r| r.status.as_u16());
    access::finish(
        down.req_header(),
        status,
        Finished {
            pipeline: &pipeline,
            verdict: &exchange.verdict,
            started,
        },
    );
    if !exchange.reusable {
        down.shutdown().await;
        return Lane::Served(None);
    }
    match down.reuse().await {
        Ok(Some(reused)) => Lane::Served(Some(reused.into_parts().0)),
        _ => Lane::Served(None),
    }
}

/// Answers an HTTP-01 validation with its key authorization.
async fn acme_answer(mut down: DownstreamSession, answer: String) -> Option<Stream> {
    let mut head = ResponseHeader::build(200, Some(2)).ok()?;
    head.insert_header(header::CONTENT_TYPE, "application/octet-stream")
        .ok()?;
    head.insert_header(header::CONTENT_LENGTH, answer.len())
        .ok()?;
    down.write_response_header(Box::new(head)).await.ok()?;
    down.write_body(answer.as_bytes()).await.ok()?;
    down.finish_body().await.ok()?;
    match down.reuse().await {
        Ok(Some(reused)) => Some(reused.into_parts().0),
        _ => None,
    }
}

/// How long the body of a request Pingora parsed is, when the request ends
/// with it: not for a chunked body, an upgrade or a tunnel.
fn body_length(req: &RequestHeader, body_empty: bool) -> Option<usize> {
    if req.headers.contains_key(header::UPGRADE)
        || req.method == Method::CONNECT
        || req.headers.contains_key(header::TRANSFER_ENCODING)
    {
        return None;
    }
    if body_empty {
        return Some(0);
    }
    // Pingora's parser accepted the head, so its lengths agree.
    let length = req.headers.get(header::CONTENT_LENGTH)?.to_str().ok()?;
    length.split(',').next()?.trim().parse().ok()
}

/// Whether the request opens a WebSocket the lean path relays: `GET`
/// over HTTP/1.1, `Upgrade: websocket` alone, `Connection` saying only
/// `upgrade` (and maybe `keep-alive`), none of the fields [`takes`] leaves
/// to the full proxy.
fn is_websocket(req: &RequestHeader) -> bool {
    let headers = &req.headers;
    let mut upgrade = headers.get_all(header::UPGRADE).iter();
    let (Some(upgrade), None) = (upgrade.next(), upgrade.next()) else {
        return false;
    };
    if req.version != Version::HTTP_11
        || req.method != Method::GET
        || !upgrade
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"websocket")
        || req.raw_path().first() != Some(&b'/')
    {
        return false;
    }
    if headers.contains_key(header::CONTENT_LENGTH) || leaves_to_full_proxy(headers) {
        return false;
    }
    let mut says_upgrade = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"upgrade") {
                says_upgrade = true;
            } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                return false;
            }
        }
    }
    says_upgrade
}

/// Whether a request carries a field the full proxy handles: an
/// expectation, transfer codings or trailers, proxy authentication, or a
/// hop-by-hop field other than `Connection`.
#[inline]
pub(crate) fn leaves_to_full_proxy(headers: &http::HeaderMap) -> bool {
    [
        header::EXPECT,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ]
    .into_iter()
    .any(|name| headers.contains_key(name))
        || headers.contains_key("keep-alive")
        || headers.contains_key("proxy-connection")
        || headers.contains_key("http2-settings")
}

/// Whether the lean path takes this request (its body is checked apart).
fn takes(req: &RequestHeader) -> bool {
    if !matches!(req.version, Version::HTTP_11 | Version::HTTP_10)
        || req.method == Method::CONNECT
        || req.raw_path().first() != Some(&b'/')
    {
        return false;
    }
    let headers = &req.headers;
    if headers.contains_key(header::UPGRADE) || leaves_to_full_proxy(headers) {
        return false;
    }
    // `Connection` may only say keep-alive or close: any other token
    // nominates a field to strip, which the full proxy does.
    let mut connection = headers.get_all(header::CONNECTION).iter();
    match (connection.next(), connection.next()) {
        (None, _) => true,
        (Some(value), None) => {
            let value = value.as_bytes();
            value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
        }
        _ => false,
    }
}

/// One request's state on the lean path.
struct Exchange<'a> {
    pipeline: &'a Pipeline,
    verdict: Verdict,
    /// Whether the client connection may carry another request.
    reusable: bool,
}

impl Exchange<'_> {
    /// Decides, then answers or forwards.
    async fn run(&mut self, down: &mut DownstreamSession) {
        let arrival = Arrival {
            peer: down.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
            tls: down.digest().ssl_digest.clone(),
        };
        let req = down.req_header();
        let outcome = self
            .pipeline
            .decide_from(req, req.raw_path(), &arrival)
            .await;
        let route = match self.verdict.record(self.pipeline, outcome) {
            Next::Forward(route) => route,
            Next::Answer(rendered) => {
                self.answer(down, rendered).await;
                return;
            }
        };
        if let Err(e) = self.forward(down, route, &arrival).await {
            self.failed(down, &e).await;
        }
    }

    /// The request the upstream is sent: the client's, as decided on.
    fn upstream_request(
        &self,
        req: &RequestHeader,
        arrival: &Arrival,
    ) -> Result<Box<RequestHeader>> {
        // Without Pingora's header-case map: every header operation below
        // then touches one map instead of two, and names go out in lower
        // case (as HTTP/2 sends them; field names are case-insensitive).
        let mut parts = req.as_owned_parts();
        // Room for the forwarding and identity headers: the map grows once
        // here rather than at several of the inserts.
        let identity = self
            .verdict
            .principal
            .as_ref()
            .map_or(0, |p| p.identity.len());
        parts.headers.reserve(3 + identity);
        parts.version = Version::HTTP_11;
        // Hop-by-hop: the upstream connection's own is not the client's.
        parts.headers.remove(header::CONNECTION);
        if is_websocket(req) {
            // `Upgrade: websocket` stays; the upstream connection is asked
            // to switch too.
            parts.headers.insert(
                header::CONNECTION,
                http::HeaderValue::from_static("upgrade"),
            );
        }
        // Edited as plain parts, before they become Pingora's head.
        request::prepare(
            &mut parts,
            self.pipeline,
            &self.verdict.rewrite,
            arrival,
            self.verdict.principal.as_deref(),
        )?;
        let mut upstream_req = Box::new(RequestHeader::from(parts));
        // The target goes out as the bytes decided on, not a re-serialised
        // URI, unless the decision rewrote it.
        let raw = req.raw_path();
        if self.verdict.rewrite.uri.is_none()
            && upstream_req
                .uri
                .path_and_query()
                .map(|pq| pq.as_str().as_bytes())
                != Some(raw)
        {
            upstream_req.set_raw_path(raw)?;
        }
        Ok(upstream_req)
    }

    /// Writes a response of the gateway's own; the connection stays open.
    async fn answer(&mut self, down: &mut DownstreamSession, rendered: Rendered) {
        if let Err(e) = write_rendered(down, &rendered, self.pipeline).await {
            tracing::debug!(error = %e, "could not write the response");
            self.reusable = false;
        }
    }

    /// Sends the request upstream and its response back.
    async fn forward(
        &mut self,
        down: &mut DownstreamSession,
        route: usize,
        arrival: &Arrival,
    ) -> Result<()> {
        let method = down.req_header().method.clone();
        let upstream = self.pipeline.route(route).upstream;
        self.verdict.observed.upstream_chosen(upstream);
        let mut slot = None;
        let (kept, client) = pool::send(
            self.pipeline,
            route,
            is_idempotent(&method),
            || self.upstream_request(down.req_header(), arrival),
            &[],
            &mut slot,
        )
        .await?;
        // Informational responses are passed on, as the full proxy does.
        loop {
            let Some(status) = client.get_status() else {
                return Err(upstream_error("no response status"));
            };
            if status == http::StatusCode::SWITCHING_PROTOCOLS {
                if !is_websocket(down.req_header()) {
                    return Err(upstream_error("101 to a request that asked for no upgrade"));
                }
                return self.upgraded(down, client, route, arrival).await;
            }
            if !status.is_informational() {
                break;
            }
            let info = Box::new(client.resp_header().cloned().unwrap_or_else(|| {
                ResponseHeader::build(status, None).expect("a status is a valid head")
            }));
            down.write_response_header(info).await.map_err(downstream)?;
            client.read_response().await.map_err(Error::into_up)?;
        }
        let head = client
            .resp_header()
            .ok_or_else(|| upstream_error("no response header"))?;
        // As for the request: without the header-case map, and with room for
        // the headers the server session adds (Date, Connection) and a
        // possible Transfer-Encoding, so the map does not grow for them.
        let mut parts = head.as_owned_parts();
        parts.headers.reserve(3);
        let mut resp = Box::new(ResponseHeader::from(parts));
        resp.set_reason_phrase(head.get_reason_phrase())?;
        self.verdict
            .observed
            .upstream_answered(resp.status.as_u16());
        response::prepare(&mut resp).map_err(|why| upstream_error(why.as_str()))?;
        let hsts = self.pipeline.config.server.hsts.as_ref();
        response::add_hsts(&mut resp, hsts, arrival.tls.is_some())?;
        live::relaying(
            resp.status.as_u16(),
            &resp.headers,
            self.verdict.principal.as_deref(),
            self.pipeline.route(route),
            down.req_header(),
            arrival,
        );
        let no_body = method == Method::HEAD || matches!(resp.status.as_u16(), 204 | 304);
        if down.req_header().version == Version::HTTP_10 {
            // An HTTP/1.0 client cannot read chunked framing: a body of
            // unknown length is delimited by the close, as the full proxy does.
            if resp.headers.contains_key(header::TRANSFER_ENCODING) {
                resp.remove_header(&header::TRANSFER_ENCODING);
                down.set_server_keepalive(None);
            } else if !no_body && !resp.headers.contains_key(header::CONTENT_LENGTH) {
                down.set_server_keepalive(None);
            }
        } else if !no_body
            && !resp.headers.contains_key(header::TRANSFER_ENCODING)
            && !resp.headers.contains_key(header::CONTENT_LENGTH)
        {
            // A close-delimited response is sent on as chunked so the
            // client connection can be kept, as the full proxy does.
            resp.set_version(Version::HTTP_11);
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
        }
        down.write_response_header(resp).await.map_err(downstream)?;
        while let Some(chunk) = client.read_body_bytes().await.map_err(Error::into_up)? {
            down.write_body(&chunk).await.map_err(downstream)?;
        }
        down.finish_body().await.map_err(downstream)?;
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

    /// Relays a WebSocket the upstream accepted (its `101` read by `client`).
    async fn upgraded(
        &mut self,
        down: &mut DownstreamSession,
        client: &mut UpstreamSession,
        route: usize,
        arrival: &Arrival,
    ) -> Result<()> {
        // The connection is the WebSocket's from now on.
        self.reusable = false;
        let head = client
            .resp_header()
            .ok_or_else(|| upstream_error("no response header"))?;
        let switches_to_websocket = head
            .headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
        if !switches_to_websocket {
            return Err(upstream_error(
                "101 to something other than the WebSocket asked for",
            ));
        }
        let mut resp = Box::new(head.clone());
        self.verdict.observed.upstream_answered(101);
        response::prepare(&mut resp).map_err(|why| upstream_error(why.as_str()))?;
        live::relaying(
            101,
            &resp.headers,
            self.verdict.principal.as_deref(),
            self.pipeline.route(route),
            down.req_header(),
            arrival,
        );
        down.write_response_header(resp).await.map_err(downstream)?;
        if !down.was_upgraded() || !client.was_upgraded() {
            return Err(upstream_error("the upgrade did not take"));
        }
        client.maybe_upgrade_body_writer();
        let settings = &self.pipeline.config.upstreams[self.pipeline.route(route).upstream];
        let idle = settings
            .read_timeout
            .max(self.pipeline.config.server.body_idle_timeout);
        let relayed = tunnel::relay(down, client, live::closer(), idle).await;
        client.shutdown().await;
        relayed
    }

    /// Answers a request whose forwarding failed, as the full proxy does.
    async fn failed(&mut self, down: &mut DownstreamSession, e: &Error) {
        self.reusable = false;
        let req = down.req_header();
        tracing::error!("Fail to proxy: {e}, {} {}", req.method, req.uri.path());
        if down.response_written().is_some() {
            // The response has started: closing is all that is left.
            return;
        }
        let Some(rendered) = answer::failure(e) else {
            return;
        };
        if let Err(e) = write_rendered(down, &rendered, self.pipeline).await {
            tracing::debug!(error = %e, "could not write the error response");
        }
    }
}

async fn write_rendered(
    down: &mut DownstreamSession,
    rendered: &Rendered,
    pipeline: &Pipeline,
) -> Result<()> {
    let (head, head_only) = answer::prepared(
        rendered,
        pipeline.config.server.hsts.as_ref(),
        down.digest().ssl_digest.is_some(),
        &down.req_header().method,
    )?;
    down.write_response_header(head).await?;
    if !head_only {
        down.write_body(rendered.body.as_bytes()).await?;
    }
    down.finish_body().await?;
    Ok(())
}

fn downstream(e: Box<Error>) -> Box<Error> {
    e.into_down()
}
