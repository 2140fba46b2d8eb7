//! The one matcher for every request header name the gateway owns: the
//! names it strips or sets, in every spelling an app behind it may read as
//! the same header. Field names are case-insensitive, and CGI-style servers
//! (WSGI, PHP, Rack) turn `-` into `_` and back, so `X_Original_URL` reaches
//! a Symfony app as `X-Original-URL`. Every engine (lean, full, and any
//! protocol that hands requests to the pipeline) asks this one function.

use crate::identity::IdentityPlan;

/// What a request header the gateway owns is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owned {
    /// Overrides the method or the target the gateway decided on: never
    /// forwarded, whoever sent it.
    Override,
    /// A copy of an identity header: never forwarded; set from the session.
    Identity,
    /// Says who the client is, how and where it connected: forwarded only
    /// from a trusted proxy, and only in its canonical spelling.
    Forwarding(Forwarding),
}

/// The forwarding headers the gateway itself sets; the rest of them it only
/// strips from untrusted peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarding {
    For,
    Proto,
    Host,
    Forwarded,
    Other,
}

/// The longest name matched below; anything longer is no owned name (but
/// may still be an identity header, which the plan matches).
const LONGEST: usize = 32;

/// Classifies a request header name (as `http` stores it: lower case).
/// `canonical` is false when the name is another spelling of an owned name
/// (`_` for `-`): such a copy is never forwarded, even from a trusted proxy,
/// since the proxy vouches only for the name it sets.
pub(crate) fn classify(name: &str, plan: &IdentityPlan) -> Option<(Owned, bool)> {
    // Names reach us in lower case (`http` and HTTP/2 both say so): only
    // `_` makes another spelling, and most names have none.
    let canonical = !name.as_bytes().contains(&b'_');
    let mut buf = [0u8; LONGEST];
    let folded = if canonical {
        Some(name)
    } else if name.len() <= LONGEST {
        for (out, b) in buf.iter_mut().zip(name.bytes()) {
            *out = match b {
                b'_' => b'-',
                b => b.to_ascii_lowercase(),
            };
        }
        std::str::from_utf8(&buf[..name.len()]).ok()
    } else {
        None
    };
    let owned = folded
        .and_then(known)
        .or_else(|| plan.is_identity_header(name).then_some(Owned::Identity))?;
    Some((owned, canonical))
}

/// The owned names that do not depend on the configuration, folded.
fn known(name: &str) -> Option<Owned> {
    use Forwarding::*;
    // Most request headers are not owned: only these first letters can be.
    if !matches!(
        name.as_bytes().first(),
        Some(b'x' | b'f' | b't' | b'c' | b'w' | b'p')
    ) {
        return None;
    }
    Some(match name {
        // Method and target overrides (Symfony, IIS, Rails, Express's
        // method-override, nginx auth_request setups).
        "x-original-url"
        | "x-original-uri"
        | "x-rewrite-url"
        | "x-override-url"
        | "x-http-method-override"
        | "x-http-method"
        | "x-method-override"
        | "x-original-method" => Owned::Override,
        "x-forwarded-for" => Owned::Forwarding(For),
        "x-forwarded-proto" => Owned::Forwarding(Proto),
        "x-forwarded-host" => Owned::Forwarding(Host),
        "forwarded" => Owned::Forwarding(Forwarded),
        // Client address, scheme, port and mount point as frameworks read
        // them (Spring, Django, Rails, Laravel/Symfony, PHP's HTTP_CLIENT_IP,
        // Java's Proxy-Client-IP/WL-Proxy-Client-IP, CDN headers), and the
        // client certificate headers TLS terminators set.
        "x-forwarded-port"
        | "x-forwarded-prefix"
        | "x-forwarded-server"
        | "x-forwarded-ssl"
        | "x-forwarded-scheme"
        | "x-forwarded-protocol"
        | "x-forwarded-uri"
        | "x-forwarded-path"
        | "x-forwarded-method"
        | "x-forwarded-by"
        | "x-forwarded"
        | "forwarded-for"
        | "x-real-ip"
        | "true-client-ip"
        | "x-client-ip"
        | "client-ip"
        | "x-cluster-client-ip"
        | "cf-connecting-ip"
        | "fastly-client-ip"
        | "x-original-forwarded-for"
        | "x-remote-ip"
        | "x-remote-addr"
        | "x-originating-ip"
        | "proxy-client-ip"
        | "wl-proxy-client-ip"
        | "x-url-scheme"
        | "front-end-https"
        | "x-original-host"
        | "x-host"
        | "x-forwarded-client-cert"
        | "x-client-cert"
        | "x-ssl-client-cert"
        | "x-ssl-client-verify"
        | "x-ssl-client-dn"
        | "x-ssl-client-s-dn"
        | "ssl-client-cert"
        | "x-client-verify" => Owned::Forwarding(Other),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FieldPath, IdentityHeader};

    fn plan() -> IdentityPlan {
        IdentityPlan::new(&[IdentityHeader {
            name: http::HeaderName::from_static("x-user-id"),
            field: FieldPath::parse("user.id").unwrap(),
            required: false,
            max_bytes: 1024,
        }])
    }

    /// Every spelling the `http` crate can hand us: lower case with `-` or
    /// `_` in any mix.
    fn spellings(name: &str) -> Vec<String> {
        vec![
            name.to_owned(),
            name.replace('-', "_"),
            name.replacen('-', "_", 1),
        ]
    }

    #[test]
    fn every_spelling_of_an_owned_name_is_matched() {
        let plan = plan();
        for (name, want) in [
            ("x-original-url", Owned::Override),
            ("x-http-method-override", Owned::Override),
            ("x-forwarded-for", Owned::Forwarding(Forwarding::For)),
            ("x-forwarded-proto", Owned::Forwarding(Forwarding::Proto)),
            ("x-forwarded-host", Owned::Forwarding(Forwarding::Host)),
            ("forwarded", Owned::Forwarding(Forwarding::Forwarded)),
            ("x-real-ip", Owned::Forwarding(Forwarding::Other)),
            ("true-client-ip", Owned::Forwarding(Forwarding::Other)),
            ("x-forwarded-port", Owned::Forwarding(Forwarding::Other)),
            ("x-forwarded-prefix", Owned::Forwarding(Forwarding::Other)),
            ("x-forwarded-server", Owned::Forwarding(Forwarding::Other)),
            ("client-ip", Owned::Forwarding(Forwarding::Other)),
            ("x-user-id", Owned::Identity),
        ] {
            for spelled in &spellings(name) {
                assert_eq!(
                    classify(spelled, &plan),
                    Some((want, spelled == name)),
                    "{spelled}"
                );
            }
        }
    }

    #[test]
    fn other_names_are_not_owned() {
        let plan = plan();
        for name in [
            "host",
            "cookie",
            "accept",
            "x-request-id",
            "x-forwarded-for-x",
            "x_forwarded",
            "forwarded-",
            "x-user",
            "",
            "x-forwarded-for-and-a-very-long-name-past-the-longest",
        ] {
            if name == "x_forwarded" {
                // `x-forwarded` itself is owned (a legacy spelling).
                assert!(classify(name, &plan).is_some());
                continue;
            }
            assert_eq!(classify(name, &plan), None, "{name}");
        }
    }

    proptest::proptest! {
        /// A name is owned exactly when its folded form is: folding is the
        /// only thing that decides, whatever the case and `_` placement.
        #[test]
        fn folding_decides(name in "[a-z_-]{1,24}") {
            let plan = plan();
            let folded = name.replace('_', "-");
            let a = classify(&name, &plan).map(|(o, _)| o);
            let b = classify(&folded, &plan).map(|(o, _)| o);
            proptest::prop_assert_eq!(a, b);
        }
    }
}
