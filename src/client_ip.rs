//! Who the client is: the peer's address, or, behind trusted proxies
//! (`[rate_limit] trusted_proxies`), the right-most `X-Forwarded-For` hop that
//! is not itself one. Rate limits use it; the forwarding headers the upstream
//! is sent follow the same trust rule.
//!
//! A hop that is not an IP address (not ASCII, `unknown`, garbage) is still
//! that hop, never the balancer: it stands for a client of its own, a
//! synthetic address made from its bytes (see [`unparsed_hop`]). Falling back
//! to the balancer's address, as nginx's realip module and Envoy's XFF
//! detection do, would let one client spend the failed-authentication budget
//! of everyone behind that balancer.

use std::net::{IpAddr, Ipv6Addr};

use http::request::Parts;
use sha2::{Digest, Sha256};

use crate::config::Cidr;

/// The client's IP: the peer's, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy
/// (an entry that does not parse is not one: it is the client).
pub fn client_ip(req: &Parts, peer: Option<IpAddr>, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|c| c.contains(*ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Repeated headers are one list, in order; read from the right, as bytes
    // (a value need not be ASCII, and one odd hop says nothing of the others).
    for value in req.headers.get_all("x-forwarded-for").iter().rev() {
        for entry in value.as_bytes().rsplit(|b| *b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            match parse_hop(entry) {
                Some(ip) if is_trusted(&ip) => continue,
                Some(ip) => return Some(ip),
                None => return Some(unparsed_hop(entry)),
            }
        }
    }
    // Every hop is a trusted proxy (or there are none): the nearest is all we know.
    Some(peer)
}

/// An `X-Forwarded-For` entry: an IP, possibly `[v6]` or with a port.
fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?;
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse().ok())
}

/// The address a hop that is not an IP stands for: `2001:db8:hhhh:hhhh::`,
/// in the documentation prefix (RFC 3849), which no real client has, with
/// 32 bits of the SHA-256 of the hop's bytes in the /64 that rate limits key
/// on (`ratelimit::client_key`). The same bytes give the same address in
/// every process, so shared (Redis) budgets agree; different bytes give
/// different ones, so an odd hop spends only its own budget.
fn unparsed_hop(entry: &[u8]) -> IpAddr {
    let digest = Sha256::digest(entry);
    let hash = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let bits = (0x2001_0db8_u128 << 96) | (u128::from(hash) << 64);
    IpAddr::V6(Ipv6Addr::from(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(xffs: &[&[u8]]) -> Parts {
        let mut builder = http::Request::builder();
        for xff in xffs {
            let value = http::HeaderValue::from_bytes(xff).unwrap();
            builder = builder.header("x-forwarded-for", value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn trusted() -> Vec<Cidr> {
        vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("127.0.0.1/32").unwrap(),
        ]
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let trusted = trusted();
        let r = req(&[b"1.1.1.1, 2.2.2.2, 10.1.2.3"]);
        let local = ip("127.0.0.1");
        let outside = ip("8.8.8.8");
        assert_eq!(client_ip(&r, Some(local), &trusted), Some(ip("2.2.2.2")));
        assert_eq!(client_ip(&r, Some(outside), &trusted), Some(outside));
        assert_eq!(client_ip(&r, Some(local), &[]), Some(local));
        // No header, or only trusted hops: the nearest proxy is all there is.
        assert_eq!(client_ip(&req(&[]), Some(local), &trusted), Some(local));
        let proxies = req(&[b"10.0.0.1, 10.0.0.2"]);
        assert_eq!(client_ip(&proxies, Some(local), &trusted), Some(local));
        assert_eq!(client_ip(&r, None, &trusted), None);
    }

    #[test]
    fn hops_parse_with_ports_brackets_and_spaces() {
        let trusted = trusted();
        let local = Some(ip("127.0.0.1"));
        for (xff, want) in [
            (&b"203.0.113.7:4711"[..], "203.0.113.7"),
            (b"[2001:db8::7]", "2001:db8::7"),
            (b"[2001:db8::7]:443, 10.0.0.1", "2001:db8::7"),
            (b" 203.0.113.7 ,\t,10.0.0.1 ", "203.0.113.7"),
        ] {
            assert_eq!(client_ip(&req(&[xff]), local, &trusted), Some(ip(want)));
        }
        // Repeated headers are one list: the last line is the right end.
        let split = req(&[b"198.51.100.1", b"203.0.113.9, 10.0.0.1"]);
        assert_eq!(client_ip(&split, local, &trusted), Some(ip("203.0.113.9")));
        let split = req(&[b"198.51.100.1", b"10.0.0.1"]);
        assert_eq!(client_ip(&split, local, &trusted), Some(ip("198.51.100.1")));
    }

    /// A value that is not ASCII is read hop by hop: the junk a client put on
    /// the left does not hide the hop its balancer appended.
    #[test]
    fn bytes_that_are_not_ascii_do_not_hide_the_appended_hop() {
        let trusted = trusted();
        let local = Some(ip("127.0.0.1"));
        for xff in [
            &b"\xc3\xa9t\xc3\xa9, 198.51.100.20"[..],
            b"\xff\xfe, 198.51.100.20, 10.0.0.9",
            b"junk, 198.51.100.20",
        ] {
            assert_eq!(
                client_ip(&req(&[xff]), local, &trusted),
                Some(ip("198.51.100.20"))
            );
        }
    }

    /// A hop that is not an IP is that hop: a client of its own, never the
    /// balancer, the same for the same bytes, distinct for other bytes.
    #[test]
    fn an_unparsable_hop_is_a_client_of_its_own() {
        let trusted = trusted();
        let local = ip("127.0.0.1");
        let at = |xff: &[u8]| client_ip(&req(&[xff]), Some(local), &trusted).unwrap();
        let accented = at(b"\xc3\xa9t\xc3\xa9");
        let unknown = at(b"unknown");
        for odd in [accented, unknown] {
            assert_ne!(odd, local);
            assert!(matches!(odd, IpAddr::V6(v6) if v6.segments()[..2] == [0x2001, 0xdb8]));
            // Rate limits key on the /64: the hop's mark must survive it.
            assert_eq!(crate::ratelimit::client_key(odd), odd);
        }
        assert_ne!(accented, unknown);
        // Stable: the same bytes, wherever they stand, are the same client.
        assert_eq!(at(b"\xc3\xa9t\xc3\xa9"), accented);
        assert_eq!(at(b"1.2.3.4, \xc3\xa9t\xc3\xa9 , 10.0.0.3"), accented);
        assert_eq!(at(b"unknown, 10.0.0.1"), unknown);
        // Right of it, an untrusted address is still the client.
        assert_eq!(at(b"unknown, 198.51.100.3"), ip("198.51.100.3"));
    }
}
