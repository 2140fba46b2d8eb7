//! Who the client is: the peer's address, or, behind trusted proxies
//! (`[rate_limit] trusted_proxies`), the right-most `X-Forwarded-For` hop that
//! is not itself one. Rate limits use it; the forwarding headers the upstream
//! is sent follow the same trust rule.

use std::net::IpAddr;

use http::request::Parts;

use crate::config::Cidr;

/// The client's IP: the peer's, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(req: &Parts, peer: Option<IpAddr>, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|c| c.contains(*ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in req.headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return Some(peer);
        };
        for entry in value.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            match parse_hop(entry) {
                Some(ip) => hops.push(ip),
                // An unparsable hop: nothing left of it can be trusted.
                None => hops.clear(),
            }
        }
    }
    Some(
        hops.into_iter()
            .rev()
            .find(|ip| !is_trusted(ip))
            .unwrap_or(peer),
    )
}

/// An `X-Forwarded-For` entry: an IP, possibly `[v6]` or with a port.
fn parse_hop(entry: &str) -> Option<IpAddr> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_only_from_trusted_peers() {
        let trusted = vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("127.0.0.1/32").unwrap(),
        ];
        let req = |xff: &str| {
            http::Request::builder()
                .header("x-forwarded-for", xff)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let r = req("1.1.1.1, 2.2.2.2, 10.1.2.3");
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let outside: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(
            client_ip(&r, Some(local), &trusted),
            Some("2.2.2.2".parse().unwrap())
        );
        assert_eq!(client_ip(&r, Some(outside), &trusted), Some(outside));
        assert_eq!(client_ip(&req("junk"), Some(local), &trusted), Some(local));
        assert_eq!(client_ip(&r, Some(local), &[]), Some(local));
    }
}
