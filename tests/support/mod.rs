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

/// Writes every `valid[]` entry of a fixture file into Redis (`redis_key`,
/// `redis_value`, `ttl_seconds`), as the app that made them would have, and
/// returns those entries.
pub fn load_fixture(redis: &RedisServer, name: &str) -> Vec<Value> {
    use ::redis::Commands;
    let fx = fixture(name);
    let mut conn = redis.conn();
    let valid = fx["valid"].as_array().expect("valid[]").clone();
    for case in &valid {
        let _: () = conn
            .set_ex(
                case["redis_key"].as_str().expect("redis_key"),
                case["redis_value"].as_str().expect("redis_value"),
                case["ttl_seconds"].as_u64().expect("ttl_seconds"),
            )
            .expect("SET fixture");
    }
    valid
}
