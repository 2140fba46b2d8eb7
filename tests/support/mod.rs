//! Test helpers: a private redis-server, an echo upstream and the real gateway
//! binary, each on a free loopback port and each stopped when dropped.
#![allow(dead_code, unused_imports)]

pub mod echo;
pub mod gateway;
pub mod http;
pub mod redis;
pub mod topology;

pub use self::echo::EchoUpstream;
pub use self::gateway::TestGateway;
pub use self::http::{get, request, Client, Response};
pub use self::redis::RedisServer;

use serde_json::Value;

/// A fixture file from tests/fixtures (copied from the real npm libraries' output).
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}
