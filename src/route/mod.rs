//! Deciding on one reading of a request, and forwarding exactly that reading.
//!
//! - `target`: the request-target and `Host` in canonical form (which forms
//!   are accepted, how the host is normalised, what the upstream is sent).
//! - `path`: path normalisation and prefix matching.
//! - `table`: the route table, matched under every reading of a path that a
//!   common framework could make (exact, case-folded, without `;` parameters).

#[doc(hidden)]
pub mod invariants;
pub mod path;
pub mod table;
pub mod target;

#[cfg(test)]
mod tests {
    use super::invariants::{check, sample_config};
    use super::target::{PathParameters, TargetPolicy};
    use proptest::prelude::*;

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

    fn host() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "h",
            "admin.test",
            "ADMIN.test",
            "admin.test.",
            "admin.test:8080",
            "Admin.Test.:1",
            "admin.test..",
            "[::1]",
            "x.admin.test",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn forwarded_paths_demand_no_less_than_what_was_authorized(
            raw in raw_target(),
            host in host(),
            absolute in any::<bool>(),
        ) {
            let raw = if absolute { format!("http://{host}{raw}") } else { raw };
            check(&sample_config(), raw.as_bytes(), &[host.as_bytes()], TargetPolicy::default());
        }

        #[test]
        fn with_path_parameters_allowed_too(raw in raw_target(), host in host()) {
            let policy = TargetPolicy {
                path_parameters: PathParameters::Allow,
                ..TargetPolicy::default()
            };
            check(&sample_config(), raw.as_bytes(), &[host.as_bytes()], policy);
        }
    }
}
