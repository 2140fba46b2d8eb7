//! Deciding on one reading of a request, and forwarding exactly that reading.
//!
//! - `target`: the request-target and `Host` in canonical form (which forms
//!   are accepted, how the host is normalised, what the upstream is sent).
//! - `path`: path normalisation and prefix matching.
//! - `table`: the route table, matched under every reading of a path that a
//!   common framework could make (exact, case-folded, without `;` parameters).

pub mod path;
pub mod table;
pub mod target;

#[cfg(test)]
mod tests {
    use super::path::{prefix_matches, strip_parameters};
    use super::table::RouteTable;
    use super::target::{PathParameters, Target, TargetPolicy};
    use crate::config::{Access, Config};
    use proptest::prelude::*;

    fn config() -> Config {
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
        crate::config::parse("test.toml", text, &|_| None).expect("config")
    }

    /// The first route a framework would pick for `path` under its own
    /// reading: plain prefix matching, optionally ignoring ASCII case.
    fn framework_route(config: &Config, path: &str, folded: bool) -> Option<usize> {
        let path = if folded {
            path.to_ascii_lowercase()
        } else {
            path.to_owned()
        };
        config.routes.iter().position(|r| {
            let prefix = if folded {
                r.path_prefix.to_ascii_lowercase()
            } else {
                r.path_prefix.clone()
            };
            prefix_matches(&path, &prefix)
        })
    }

    /// What a framework makes of a path by decoding every `%XX`.
    fn percent_decoded(path: &str) -> String {
        percent_encoding::percent_decode_str(path)
            .decode_utf8_lossy()
            .into_owned()
    }

    fn segment() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "",
            ".",
            "..",
            "%2e",
            "%2E%2e",
            ".%2e",
            "admin",
            "ADMIN",
            "Admin",
            "%41dmin",
            "%61dmin",
            "api",
            "Api",
            "API",
            "app",
            "APP",
            "apps",
            "public",
            "PUBLIC",
            "..;",
            ";x=1",
            "admin;x=1",
            "public;",
            "%3b",
            "%3B..",
            "%c3%a9",
            "%25",
            "%2f",
            "x",
            "X",
        ])
        .prop_map(str::to_owned)
    }

    fn raw_target() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(segment(), 0..7),
            any::<bool>(),
            prop::option::of("[a-z=&%./]{0,6}"),
        )
            .prop_map(|(segments, trailing, query)| {
                let mut t = format!("/{}", segments.join("/"));
                if trailing {
                    t.push('/');
                }
                if let Some(q) = query {
                    t.push('?');
                    t.push_str(&q);
                }
                t
            })
    }

    fn check(raw: &str, policy: TargetPolicy) {
        let config = config();
        let table = RouteTable::new(&config.routes);
        let Ok(target) = Target::parse(raw.as_bytes(), [&b"h"[..]].into_iter(), true, policy)
        else {
            return;
        };
        let Some(selection) = table.select(&target.host, &target.path) else {
            return;
        };
        let forwarded = target
            .rewrite
            .uri
            .as_ref()
            .map_or_else(|| raw.to_owned(), ToString::to_string);
        let path = forwarded.split('?').next().unwrap_or_default();
        assert_eq!(path, target.path, "{raw:?}");

        // The forwarded target is its own canonical form, chosen the same way.
        let again = Target::parse(forwarded.as_bytes(), [&b"h"[..]].into_iter(), true, policy)
            .unwrap_or_else(|e| panic!("{raw:?} -> {forwarded:?}: {e}"));
        assert_eq!(again.path, path, "{raw:?}");
        assert_eq!(again.rewrite.uri, None, "{raw:?} -> {forwarded:?}");
        assert_eq!(table.select("h", path), Some(selection), "{raw:?}");

        // Every framework reading of the forwarded path lands on a route
        // whose demands were enforced.
        let enforced: Vec<usize> = selection.routes().collect();
        let mut readings = vec![path.to_owned(), percent_decoded(path)];
        if path.contains(';') {
            readings.push(strip_parameters(path));
        }
        for reading in &readings {
            for folded in [false, true] {
                if let Some(r) = framework_route(&config, reading, folded) {
                    assert!(
                        enforced.contains(&r),
                        "{raw:?} -> {forwarded:?}: {reading:?} (folded {folded}) picks \
                         route {} but only {enforced:?} were enforced",
                        config.routes[r].name
                    );
                }
            }
        }
        // A public decision means every reading is public.
        if enforced
            .iter()
            .all(|&r| config.routes[r].access == Access::Public)
        {
            assert!(!readings.iter().any(|p| {
                [false, true].iter().any(|&f| {
                    framework_route(&config, p, f)
                        .is_some_and(|r| config.routes[r].access != Access::Public)
                })
            }));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn forwarded_paths_demand_no_less_than_what_was_authorized(raw in raw_target()) {
            check(&raw, TargetPolicy::default());
        }

        #[test]
        fn with_path_parameters_allowed_too(raw in raw_target()) {
            check(&raw, TargetPolicy {
                path_parameters: PathParameters::Allow,
                ..TargetPolicy::default()
            });
        }
    }
}
