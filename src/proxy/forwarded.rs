//! `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` and
//! `Forwarded` on the upstream request, as a reverse proxy sets them: a peer
//! that is a trusted proxy (`[rate_limit] trusted_proxies`) has its chain
//! extended; anyone else has them set anew. Every other forwarding header an
//! untrusted client sent is already gone ([`crate::proxy::owned`]), so the app
//! never reads an address, scheme, port or host that a client made up.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora::{ErrorType, OrErr, Result};

use crate::proxy::head::{value, HeadEdit};

// Names made once, not parsed (and allocated) from text on every request.
const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = http::header::FORWARDED;
const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Rewrites the forwarding headers of `req`, which came from `peer` (a
/// trusted proxy or not) for the (canonical) `host`.
pub(crate) fn apply(
    req: &mut impl HeadEdit,
    peer: Option<IpAddr>,
    from_trusted: bool,
    tls: bool,
    host: Option<&HeaderValue>,
) -> Result<()> {
    let proto = if tls { HTTPS } else { HTTP };
    let Some(peer) = peer else {
        // Not an inet peer (a Unix socket): nothing to vouch for.
        for name in [XFF, XFP, XFH, FORWARDED] {
            req.remove(&name);
        }
        return Ok(());
    };
    if from_trusted {
        let chain = joined(req, &XFF);
        let chain = match chain {
            Some(chain) => value(format!("{chain}, {peer}"))?,
            None => address(peer)?,
        };
        req.insert(XFF, chain)?;
        if req.headers().get(&XFP).is_none() {
            req.insert(XFP, proto.clone())?;
        }
        if let (None, Some(host)) = (req.headers().get(&XFH), host) {
            req.insert(XFH, host.clone())?;
        }
        if let Some(chain) = joined(req, &FORWARDED) {
            let host = host.and_then(|h| h.to_str().ok());
            req.insert(
                FORWARDED,
                value(format!("{chain}, {}", element(peer, host, tls)))?,
            )?;
        }
    } else {
        if req.headers().contains_key(FORWARDED) {
            req.remove(&FORWARDED);
        }
        req.insert(XFF, address(peer)?)?;
        req.insert(XFP, proto)?;
        match host {
            Some(host) => req.insert(XFH, host.clone())?,
            None => {
                req.remove(&XFH);
            }
        }
    }
    Ok(())
}

/// `peer` as a header value, printed on the stack (`to_string` grows a
/// `String` once per octet).
fn address(peer: IpAddr) -> Result<HeaderValue> {
    use std::io::Write as _;
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    write!(cursor, "{peer}").or_err(ErrorType::InternalError, "printing an address")?;
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&buf[..len]).or_err(ErrorType::InternalError, "printing an address")
}

/// Every value of `name`, joined with `, ` (repeated headers are one list).
fn joined(req: &impl HeadEdit, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for value in req.headers().get_all(name) {
        let text = String::from_utf8_lossy(value.as_bytes());
        match &mut out {
            Some(out) => {
                out.push_str(", ");
                out.push_str(&text);
            }
            None => out = Some(text.into_owned()),
        }
    }
    out
}

/// One RFC 7239 element for this hop.
fn element(peer: IpAddr, host: Option<&str>, tls: bool) -> String {
    let proto = if tls { "https" } else { "http" };
    let for_ = match peer {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    match host {
        Some(host) if host.starts_with('[') => format!("for={for_};host=\"{host}\";proto={proto}"),
        Some(host) => format!("for={for_};host={host};proto={proto}"),
        None => format!("for={for_};proto={proto}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (n, v) in headers {
            req.append_header(n.to_string(), *v).unwrap();
        }
        req
    }

    fn values(req: &RequestHeader, name: HeaderName) -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn an_untrusted_client_has_every_copy_replaced() {
        let mut r = req(&[
            ("X-Forwarded-For", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "admin.test"),
            ("Forwarded", "for=10.0.0.1;proto=https"),
        ]);
        apply(
            &mut r,
            Some("192.0.2.7".parse().unwrap()),
            false,
            false,
            Some(&HeaderValue::from_static("site.test")),
        )
        .unwrap();
        assert_eq!(values(&r, XFF), ["192.0.2.7"]);
        assert_eq!(values(&r, XFP), ["http"]);
        assert_eq!(values(&r, XFH), ["site.test"]);
        assert!(values(&r, FORWARDED).is_empty());
    }

    #[test]
    fn a_trusted_proxy_has_its_chain_extended() {
        let mut r = req(&[
            ("X-Forwarded-For", "198.51.100.1"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            ("Forwarded", "for=198.51.100.1;proto=https"),
        ]);
        apply(
            &mut r,
            Some("10.1.2.3".parse().unwrap()),
            true,
            false,
            Some(&HeaderValue::from_static("site.test")),
        )
        .unwrap();
        assert_eq!(values(&r, XFF), ["198.51.100.1, 203.0.113.9, 10.1.2.3"]);
        assert_eq!(values(&r, XFP), ["https"]);
        assert_eq!(values(&r, XFH), ["site.test"]);
        assert_eq!(
            values(&r, FORWARDED),
            ["for=198.51.100.1;proto=https, for=10.1.2.3;host=site.test;proto=http"]
        );
        let mut r = req(&[("Forwarded", "for=x")]);
        apply(
            &mut r,
            Some("::1".parse().unwrap()),
            true,
            false,
            Some(&HeaderValue::from_static("[::1]")),
        )
        .unwrap();
        assert_eq!(
            values(&r, FORWARDED),
            [r#"for=x, for="[::1]";host="[::1]";proto=http"#]
        );
    }

    #[test]
    fn addresses_print_as_to_string_does() {
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "2001:db8::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address(ip).unwrap(), ip.to_string().as_str());
        }
    }
}
