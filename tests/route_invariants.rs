//! Property tests of request canonicalisation: for generated request-targets
//! and hosts, whatever the gateway forwards is its own canonical form and every
//! framework reading of it was authorized (the check in support/invariants.rs,
//! which the request-head fuzz target runs too).

#[path = "support/invariants.rs"]
mod invariants;

use invariants::{check, sample_config};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use sessiongate::route::target::{PathParameters, TargetPolicy};

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
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/route_invariants.txt"
        )))),
        ..ProptestConfig::default()
    })]

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
