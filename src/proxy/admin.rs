//! The admin listener: `/metrics` (Prometheus text, optional basic auth),
//! `/healthz`, `/readyz`, and `POST /explain` (with `[admin] explain`, behind
//! the basic auth). A second Pingora service in the same server, so
//! its socket is handed over with the public one on a binary upgrade.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use base64::Engine as _;
use http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::listeners::TcpSocketOptions;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::BasicAuth;
use crate::explain::ExplainRequest;
use crate::metrics;
use crate::pipeline::Pipeline;
use crate::proxy::listen::ListenAddr;
use crate::session::SessionStore;

/// Answers the admin endpoints. It reads the current pipeline for its
/// settings (so a reload changes the `/metrics` credentials) and has its own
/// Redis connection for `/readyz`.
pub struct AdminApp {
    pipeline: Arc<ArcSwap<Pipeline>>,
    store: Arc<dyn SessionStore>,
}

impl AdminApp {
    pub fn new(pipeline: Arc<ArcSwap<Pipeline>>, store: Arc<dyn SessionStore>) -> AdminApp {
        AdminApp { pipeline, store }
    }

    /// 200 when a configuration is loaded and Redis answers PING within its
    /// timeouts; 503 otherwise.
    async fn ready(&self) -> Response<Vec<u8>> {
        // A pipeline exists from start on: the configuration is loaded.
        match self.store.ping().await {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(e) => {
                tracing::debug!(error = %e, "readyz: redis did not answer");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: redis unavailable\n",
                )
            }
        }
    }
}

/// Largest `POST /explain` body read.
const MAX_EXPLAIN_BODY: usize = 16 * 1024;

impl AdminApp {
    /// `POST /explain`: the running pipeline's verdict on the request head
    /// the JSON body describes, stage by stage, as JSON. Served only with
    /// `[admin] explain = true`, and only to the basic auth's credentials.
    async fn explain(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let pipeline = self.pipeline.load_full();
        let admin = &pipeline.config.admin;
        let want = match &admin.metrics_basic_auth {
            Some(want) if admin.explain => want,
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        if !authorized(session.req_header().headers.get(AUTHORIZATION), want) {
            let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"sessiongate admin\""),
            );
            return resp;
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_EXPLAIN_BODY => {
                    body.extend_from_slice(&chunk)
                }
                Ok(Some(_)) => {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "explain: could not read the request body");
                    return text(StatusCode::BAD_REQUEST, "could not read the request body\n");
                }
            }
        }
        let request: ExplainRequest = match serde_json::from_slice(&body) {
            Ok(request) => request,
            // Not the parser's message: it can quote the body's values.
            Err(e) => {
                return owned_text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "bad request: expected a JSON object {{url, method?, cookie?, bearer?, \
                         headers?}} (line {}, column {})\n",
                        e.line(),
                        e.column()
                    ),
                )
            }
        };
        let (parts, target) = match request.head(&pipeline.config.session.cookie) {
            Ok(head) => head,
            Err(e) => return owned_text(StatusCode::BAD_REQUEST, format!("bad request: {e}\n")),
        };
        let explained = pipeline.explain(&parts, target.as_bytes()).await;
        match serde_json::to_vec_pretty(&explained) {
            Ok(mut json) => {
                json.push(b'\n');
                let mut resp = Response::new(json);
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            Err(e) => {
                tracing::warn!(error = %e, "explain: could not encode the answer");
                text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let head = req.method == Method::HEAD;
        if req.uri.path() == "/explain" {
            let mut resp = if req.method == Method::POST {
                self.explain(session).await
            } else {
                let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("POST"));
                resp
            };
            let len = resp.body().len();
            resp.headers_mut().insert(CONTENT_LENGTH, len.into());
            resp.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return resp;
        }
        if req.method != Method::GET && !head {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        let mut resp = match req.uri.path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.ready().await,
            "/metrics" => {
                let pipeline = self.pipeline.load();
                match &pipeline.config.admin.metrics_basic_auth {
                    Some(want) if !authorized(req.headers.get(AUTHORIZATION), want) => {
                        let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
                        resp.headers_mut().insert(
                            http::header::WWW_AUTHENTICATE,
                            HeaderValue::from_static("Basic realm=\"sessiongate metrics\""),
                        );
                        resp
                    }
                    _ => {
                        let mut resp = Response::new(metrics::render());
                        resp.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static(metrics::CONTENT_TYPE),
                        );
                        resp
                    }
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        };
        let len = resp.body().len();
        resp.headers_mut().insert(CONTENT_LENGTH, len.into());
        resp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if head {
            resp.body_mut().clear();
        }
        resp
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Vec<u8>> {
    owned_text(status, body.to_owned())
}

fn owned_text(status: StatusCode, body: String) -> Response<Vec<u8>> {
    let mut resp = Response::new(body.into_bytes());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `Authorization: Basic ...` against the configured credentials. Both parts
/// are compared as SHA-256 digests in constant time, so neither their content
/// nor their length shows in the timing.
pub fn authorized(header: Option<&HeaderValue>, want: &BasicAuth) -> bool {
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|b| *b == b':') else {
        return false;
    };
    let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
    let user_ok = Sha256::digest(user).ct_eq(&Sha256::digest(want.username.as_bytes()));
    let pass_ok = Sha256::digest(pass).ct_eq(&Sha256::digest(want.password.as_bytes()));
    (user_ok & pass_ok).into()
}

/// The admin service on `listen`, with one worker thread of its own.
pub fn service(listen: &ListenAddr, app: AdminApp) -> Service<AdminApp> {
    let mut service = Service::new("sessiongate admin".to_owned(), app);
    service.threads = Some(1);
    let mut options = TcpSocketOptions::default();
    options.so_reuseport = Some(listen.reuse_port);
    service.add_tcp_with_settings(&listen.addr.to_string(), options);
    service
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(s);
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    #[test]
    fn admin_basic_auth() {
        let want = BasicAuth {
            username: "prom".into(),
            password: "s3cret:x".into(),
        };
        assert!(authorized(Some(&basic("prom:s3cret:x")), &want));
        assert!(authorized(
            Some(
                &HeaderValue::from_str(&format!(
                    "basic {}",
                    base64::engine::general_purpose::STANDARD.encode("prom:s3cret:x")
                ))
                .unwrap()
            ),
            &want
        ));
        assert!(!authorized(Some(&basic("prom:s3cret")), &want));
        assert!(!authorized(Some(&basic("Prom:s3cret:x")), &want));
        assert!(!authorized(Some(&basic("prom")), &want));
        assert!(!authorized(
            Some(&HeaderValue::from_static("Basic !!!")),
            &want
        ));
        assert!(!authorized(
            Some(&HeaderValue::from_static("Bearer abc")),
            &want
        ));
        assert!(!authorized(None, &want));
        assert!(format!("{want:?}").contains("***"));
        assert!(!format!("{want:?}").contains("s3cret"));
    }
}
