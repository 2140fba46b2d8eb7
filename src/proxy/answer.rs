//! Answers of the gateway's own, rendered the same way by every engine: the
//! head of a small complete response, and the status a failed forwarding
//! turns into.

use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::reject::Rendered;

/// The head of a complete small response written by the gateway itself.
fn rendered_head(rendered: &Rendered) -> Result<Box<ResponseHeader>> {
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

/// The head of `rendered` as a client is sent it (with `[server] hsts`
/// over TLS), and whether it goes without its body (it has none, or the
/// request is a HEAD).
pub(crate) fn prepared(
    rendered: &Rendered,
    hsts: Option<&http::HeaderValue>,
    tls: bool,
    method: &http::Method,
) -> Result<(Box<ResponseHeader>, bool)> {
    let mut head = rendered_head(rendered)?;
    crate::proxy::response::add_hsts(&mut head, hsts, tls)?;
    let head_only = rendered.body.is_empty() || *method == http::Method::HEAD;
    Ok((head, head_only))
}

/// What a request whose forwarding failed before a response started is
/// answered with; `None`: the client is gone, answer nothing.
pub(crate) fn failure(e: &Error) -> Option<Rendered> {
    let (status, body) = failure_status(e);
    let status = http::StatusCode::from_u16(status).ok()?;
    Some(Rendered {
        status,
        headers: Vec::new(),
        body,
    })
}

/// The status and JSON body of [`failure`]; status 0: answer nothing.
pub(crate) fn failure_status(e: &Error) -> (u16, &'static str) {
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

/// An upstream failure the gateway found itself (e.g. a response it will not
/// relay); answered 502 like any other bad upstream response.
pub(crate) fn upstream_error(why: &'static str) -> Box<Error> {
    let mut e = Error::explain(ErrorType::InvalidHTTPHeader, why);
    e.as_up();
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_statuses_by_cause_and_side() {
        let status = |etype, side: ErrorSource| {
            let e = match side {
                ErrorSource::Upstream => Error::new_up(etype),
                ErrorSource::Downstream => Error::new_down(etype),
                _ => Error::new_in(etype),
            };
            failure_status(&e).0
        };
        assert_eq!(
            status(ErrorType::ConnectRefused, ErrorSource::Upstream),
            502
        );
        assert_eq!(
            status(ErrorType::ConnectTimedout, ErrorSource::Upstream),
            504
        );
        assert_eq!(status(ErrorType::ReadTimedout, ErrorSource::Upstream), 504);
        assert_eq!(
            status(ErrorType::ReadTimedout, ErrorSource::Downstream),
            408
        );
        assert_eq!(status(ErrorType::ReadError, ErrorSource::Downstream), 0);
        assert_eq!(status(ErrorType::InternalError, ErrorSource::Internal), 500);
        assert_eq!(
            status(ErrorType::HTTPStatus(429), ErrorSource::Internal),
            429
        );
        assert_eq!(failure_status(&upstream_error("x")).0, 502);
        assert!(failure(&Error::new_down(ErrorType::ReadError)).is_none());
    }
}
