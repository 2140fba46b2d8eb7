//! Whole request heads (request-target, then Host values, one per line) from
//! arbitrary bytes: canonicalisation never panics, the forwarded target is its
//! own canonical form, and every framework reading of it was enforced.
#![no_main]

#[path = "../../tests/support/invariants.rs"]
mod invariants;

use std::sync::OnceLock;

use invariants::{check, sample_config};
use libfuzzer_sys::fuzz_target;
use sessiongate::config::Config;
use sessiongate::route::target::{PathParameters, TargetPolicy};

fuzz_target!(|data: &[u8]| {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    let config = CONFIG.get_or_init(sample_config);
    let mut lines = data.split(|&b| b == b'\n');
    let target = lines.next().unwrap_or_default();
    let hosts: Vec<&[u8]> = lines.take(2).collect();
    for path_parameters in [PathParameters::Reject, PathParameters::Allow] {
        let policy = TargetPolicy {
            path_parameters,
            ..TargetPolicy::default()
        };
        check(config, target, &hosts, policy);
    }
});
