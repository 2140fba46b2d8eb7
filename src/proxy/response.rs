//! The upstream's response head as every engine relays it: without the
//! upstream connection's own (hop-by-hop) fields, and only when its framing
//! has one reading. A response that different clients would cut at different
//! places (`Transfer-Encoding: chunked, gzip` relayed with a close-delimited
//! body, `Content-Length` together with `Transfer-Encoding`, two lengths) is
//! answered 502 instead.

use http::header::{self, HeaderMap, HeaderName};
use pingora::http::ResponseHeader;

/// Why a response is not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unrelayable {
    /// A `Transfer-Encoding` other than exactly `chunked`.
    TransferEncoding,
    /// `Content-Length` together with `Transfer-Encoding`.
    LengthAndEncoding,
    /// `Content-Length` values that disagree or are not a number.
    Length,
}

impl Unrelayable {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Unrelayable::TransferEncoding => "a response transfer-encoding other than chunked",
            Unrelayable::LengthAndEncoding => {
                "a response with both content-length and transfer-encoding"
            }
            Unrelayable::Length => "a response with conflicting or invalid content-length",
        }
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Checks the framing of an upstream response head and removes its
/// hop-by-hop fields (RFC 9110 7.6.1): `Connection` and every field it
/// names, `Keep-Alive`, `Proxy-Connection`, and `Upgrade` outside a 101.
/// The fields that frame the body are never removed by a `Connection`
/// nomination: dropping one would change where the body ends.
pub(crate) fn prepare(resp: &mut ResponseHeader) -> Result<(), Unrelayable> {
    // The common response (one length or none, nothing hop-by-hop) is
    // told apart in one pass over its names, without a lookup per rule.
    let mut lengths = 0;
    let mut more = false;
    for (name, _) in resp.headers.iter() {
        if name == header::CONTENT_LENGTH {
            lengths += 1;
        } else if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
        {
            more = true;
        }
    }
    if !more
        && lengths <= 1
        && resp
            .headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|value| is_length(value.as_bytes()))
    {
        return Ok(());
    }
    check_framing(&resp.headers)?;
    let lengths = resp.headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1
        || resp
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().contains(&b','))
    {
        // Identical repeats (checked above): relay one.
        let length = resp.headers.get(header::CONTENT_LENGTH).cloned();
        if let Some(length) = length {
            let one = first_length(&length);
            resp.remove_header(&header::CONTENT_LENGTH);
            let _ = resp.insert_header(header::CONTENT_LENGTH, one);
        }
    }
    let upgrade = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    for name in hop_by_hop(&resp.headers, upgrade) {
        resp.remove_header(&name);
    }
    Ok(())
}

/// Adds the configured `Strict-Transport-Security` (`[server] hsts`) to a
/// response head sent over TLS; never over plain HTTP, where a client must
/// ignore it (RFC 6797 8.1).
pub(crate) fn add_hsts(
    resp: &mut ResponseHeader,
    hsts: Option<&http::HeaderValue>,
    tls: bool,
) -> pingora::Result<()> {
    if let (true, Some(value)) = (tls, hsts) {
        resp.insert_header(header::STRICT_TRANSPORT_SECURITY, value.clone())?;
    }
    Ok(())
}

/// Gives the field values a buffer of their own (one allocation for all).
/// Values parsed from an upstream response share its whole read buffer;
/// HTTP/2's header compression keeps the fields it indexes for as long as
/// the client connection lasts, and with them that buffer (kilobytes per
/// idle connection).
pub(crate) fn detach_values(headers: &mut HeaderMap) {
    let total = headers.values().map(|v| v.len()).sum();
    let mut all = bytes::BytesMut::with_capacity(total);
    for value in headers.values() {
        all.extend_from_slice(value.as_bytes());
    }
    let all = all.freeze();
    let mut at = 0;
    for value in headers.values_mut() {
        let len = value.len();
        if let Ok(mut copy) = http::HeaderValue::from_maybe_shared(all.slice(at..at + len)) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
        at += len;
    }
}

/// The first of a comma-separated `Content-Length` list, trimmed.
fn first_length(value: &http::HeaderValue) -> String {
    let text = String::from_utf8_lossy(value.as_bytes());
    text.split(',').next().unwrap_or("").trim().to_owned()
}

/// A single `Content-Length` value as the common response sends it.
fn is_length(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    !value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit)
}

fn check_framing(headers: &HeaderMap) -> Result<(), Unrelayable> {
    let mut encodings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = encodings.next() {
        if encodings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Err(Unrelayable::TransferEncoding);
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(Unrelayable::LengthAndEncoding);
        }
        return Ok(());
    }
    let mut seen: Option<&[u8]> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(Unrelayable::Length);
            }
            match seen {
                Some(earlier) if earlier != part => return Err(Unrelayable::Length),
                _ => seen = Some(part),
            }
        }
    }
    Ok(())
}

/// The hop-by-hop fields of a response head.
fn hop_by_hop(headers: &HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let Ok(name) = HeaderName::from_bytes(token.trim_ascii()) else {
                continue;
            };
            let framing = name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING;
            // A 101 keeps the fields that say what the connection becomes.
            let switching = upgrade && name == header::UPGRADE;
            if !framing && !switching && headers.contains_key(&name) {
                names.push(name);
            }
        }
    }
    if !upgrade && headers.contains_key(header::CONNECTION) {
        names.push(header::CONNECTION);
    }
    for name in [KEEP_ALIVE, PROXY_CONNECTION] {
        if headers.contains_key(&name) {
            names.push(name);
        }
    }
    if !upgrade && headers.contains_key(header::UPGRADE) {
        names.push(header::UPGRADE);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detached_values_are_the_same_values_in_their_own_buffer() {
        let parsed = bytes::Bytes::from_static(b"xxxxtext/plainyy42zz");
        let mut headers = HeaderMap::new();
        let v = |a, b| http::HeaderValue::from_maybe_shared(parsed.slice(a..b)).unwrap();
        headers.append(header::CONTENT_TYPE, v(4, 14));
        headers.append(header::SET_COOKIE, v(0, 2));
        headers.append(header::SET_COOKIE, v(18, 20));
        headers.append(header::CONTENT_LENGTH, v(16, 18));
        let before = headers.clone();
        detach_values(&mut headers);
        assert_eq!(headers, before);
        let start = parsed.as_ptr() as usize..parsed.as_ptr() as usize + parsed.len();
        for value in headers.values() {
            assert!(!start.contains(&(value.as_bytes().as_ptr() as usize)));
        }
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).unwrap();
        for (n, v) in headers {
            resp.append_header(n.to_string(), *v).unwrap();
        }
        resp
    }

    fn names(resp: &ResponseHeader) -> Vec<String> {
        let mut names: Vec<String> = resp.headers.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn hop_by_hop_fields_are_removed() {
        let mut r = resp(
            200,
            &[
                ("Connection", "keep-alive, X-Secret"),
                ("Connection", "x-other, content-length"),
                ("X-Secret", "s"),
                ("X-Other", "o"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("Upgrade", "h2c"),
                ("Content-Length", "3"),
                ("Set-Cookie", "a=b"),
            ],
        );
        prepare(&mut r).unwrap();
        assert_eq!(names(&r), ["content-length", "set-cookie"]);
    }

    #[test]
    fn a_switch_keeps_what_it_switches_to() {
        let mut r = resp(
            101,
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Keep-Alive", "x"),
            ],
        );
        prepare(&mut r).unwrap();
        assert_eq!(names(&r), ["connection", "upgrade"]);
    }

    #[test]
    fn framing_with_more_than_one_reading_is_refused() {
        for (headers, want) in [
            (
                vec![("Transfer-Encoding", "chunked, gzip")],
                Unrelayable::TransferEncoding,
            ),
            (
                vec![("Transfer-Encoding", "identity, chunked")],
                Unrelayable::TransferEncoding,
            ),
            (
                vec![("Transfer-Encoding", "gzip, chunked")],
                Unrelayable::TransferEncoding,
            ),
            (
                vec![
                    ("Transfer-Encoding", "chunked"),
                    ("Transfer-Encoding", "identity"),
                ],
                Unrelayable::TransferEncoding,
            ),
            (
                vec![("Transfer-Encoding", "identity")],
                Unrelayable::TransferEncoding,
            ),
            (
                vec![("Transfer-Encoding", "chunked"), ("Content-Length", "3")],
                Unrelayable::LengthAndEncoding,
            ),
            (
                vec![("Content-Length", "3"), ("Content-Length", "4")],
                Unrelayable::Length,
            ),
            (vec![("Content-Length", "3, 4")], Unrelayable::Length),
            (vec![("Content-Length", "-1")], Unrelayable::Length),
            (vec![("Content-Length", "")], Unrelayable::Length),
            (vec![("Content-Length", "0x10")], Unrelayable::Length),
        ] {
            let mut r = resp(200, &headers);
            assert_eq!(prepare(&mut r), Err(want), "{headers:?}");
        }
        for headers in [
            vec![("Transfer-Encoding", "chunked")],
            vec![("Transfer-Encoding", " Chunked ")],
            vec![("Content-Length", "3")],
            vec![],
        ] {
            let mut r = resp(200, &headers);
            assert_eq!(prepare(&mut r), Ok(()), "{headers:?}");
        }
    }

    #[test]
    fn identical_lengths_are_relayed_as_one() {
        let mut r = resp(200, &[("Content-Length", "3"), ("Content-Length", "3")]);
        prepare(&mut r).unwrap();
        let lengths: Vec<_> = r.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["3"]);
        let mut r = resp(200, &[("Content-Length", "3, 3")]);
        prepare(&mut r).unwrap();
        let lengths: Vec<_> = r.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["3"]);
    }
}
