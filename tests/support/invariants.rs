//! What canonicalisation guarantees, as one check that the property tests
//! (tests/route_invariants.rs) and the request-head fuzz target both include
//! by path: the forwarded target is its own canonical form and picks the same
//! routes, and every reading of it that a framework could make lands on a
//! route whose demands were enforced. Test code, so not in the library.

use sessiongate::config::{Access, Config};
use sessiongate::route::path::{prefix_matches, strip_parameters};
use sessiongate::route::table::RouteTable;
use sessiongate::route::target::{Target, TargetPolicy};

/// A layout with public, authenticated, role-protected, mixed-case and
/// host-bound routes.
pub fn sample_config() -> Config {
    let text = r#"
[server]
listen = ["127.0.0.1:0"]
[redis]
url = "redis://127.0.0.1:1"
[session]
cookie_format = "plain"
[[upstream]]
name = "app"
addrs = ["127.0.0.1:1"]
[[route]]
name = "admin-vhost"
host = "admin.test"
path_prefix = "/"
upstream = "app"
roles = ["admin"]
[[route]]
path_prefix = "/admin/"
upstream = "app"
roles = ["admin"]
[[route]]
path_prefix = "/Api/"
upstream = "app"
roles = ["api"]
[[route]]
path_prefix = "/app"
upstream = "app"
[[route]]
path_prefix = "/public/"
upstream = "app"
access = "public"
[[route]]
name = "root"
path_prefix = "/"
upstream = "app"
access = "public"
"#;
    sessiongate::config::parse("sample.toml", text, &|_| None).expect("sample config")
}

/// The first route a framework would pick for `path` on `host` under its own
/// reading: plain prefix matching, optionally ignoring ASCII case.
fn framework_route(config: &Config, host: &str, path: &str, folded: bool) -> Option<usize> {
    let fold = |s: &str| {
        if folded {
            s.to_ascii_lowercase()
        } else {
            s.to_owned()
        }
    };
    let path = fold(path);
    config.routes.iter().position(|r| {
        r.host.as_deref().is_none_or(|h| h == host) && prefix_matches(&path, &fold(&r.path_prefix))
    })
}

/// Panics when canonicalising the request-target `raw` with these `Host`
/// values breaks a guarantee. Requests that are refused pass trivially.
pub fn check(config: &Config, raw: &[u8], hosts: &[&[u8]], policy: TargetPolicy) {
    let table = RouteTable::new(&config.routes);
    let Ok(target) = Target::parse(raw, hosts.iter().copied(), true, policy) else {
        return;
    };
    let Some(selection) = table.select(&target.host, &target.path) else {
        return;
    };
    let shown = String::from_utf8_lossy(raw);
    let forwarded = match &target.rewrite.uri {
        Some(uri) => uri.to_string(),
        None => std::str::from_utf8(raw)
            .expect("accepted targets are UTF-8")
            .to_owned(),
    };
    let host = match &target.rewrite.host {
        Some(host) => host.to_str().expect("ASCII host").to_owned(),
        None => target.host.to_string(),
    };
    let path = forwarded.split('?').next().unwrap_or_default();
    assert_eq!(path, target.path, "{shown:?}");
    assert!(path.starts_with('/'), "{shown:?} -> {forwarded:?}");

    // The forwarded request is its own canonical form and is routed the same way.
    let again = Target::parse(
        forwarded.as_bytes(),
        [host.as_bytes()].into_iter(),
        true,
        policy,
    )
    .unwrap_or_else(|e| panic!("{shown:?} -> {forwarded:?}: {e}"));
    assert_eq!(again.path, path, "{shown:?}");
    assert_eq!(again.host, target.host, "{shown:?}");
    assert_eq!(again.rewrite.uri, None, "{shown:?} -> {forwarded:?}");
    assert_eq!(again.rewrite.host, None, "{shown:?} -> {host:?}");
    assert_eq!(
        table.select(&again.host, path),
        Some(selection),
        "{shown:?}"
    );

    // Every framework reading of the forwarded path lands on a route whose
    // demands were enforced.
    let enforced: Vec<usize> = selection.routes().collect();
    let mut readings = vec![
        path.to_owned(),
        percent_encoding::percent_decode_str(path)
            .decode_utf8_lossy()
            .into_owned(),
    ];
    if path.contains(';') {
        readings.push(strip_parameters(path));
    }
    for reading in &readings {
        for folded in [false, true] {
            if let Some(r) = framework_route(config, &again.host, reading, folded) {
                assert!(
                    enforced.contains(&r),
                    "{shown:?} -> {forwarded:?}: {reading:?} (folded {folded}) picks route {} \
                     but only {enforced:?} were enforced",
                    config.routes[r].name
                );
            }
        }
    }
    // So a public decision means every reading is public.
    if enforced
        .iter()
        .all(|&r| config.routes[r].access == Access::Public)
    {
        for reading in &readings {
            for folded in [false, true] {
                let r = framework_route(config, &host, reading, folded);
                assert!(r.is_none_or(|r| config.routes[r].access == Access::Public));
            }
        }
    }
}
