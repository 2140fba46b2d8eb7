//! Test helpers: a private redis-server, an echo upstream and the real gateway
//! binary, each on a free loopback port and each stopped when dropped.
#![allow(dead_code, unused_imports)]

pub mod echo;
pub mod gateway;
pub mod h2raw;
pub mod http;
pub mod redis;
pub mod revocation;
pub mod scripted;
pub mod tls;
pub mod tls_upstream;
pub mod topology;

pub use self::echo::EchoUpstream;
pub use self::gateway::TestGateway;
pub use self::http::{get, raw_request, request, Client, Response};
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

/// The express-session fixture cookie most tests present (signed with
/// `fixture-secret-current`), and the Redis key of its session.
pub const ALICE: &str = "connect.sid=s%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lT0";
pub const ALICE_KEY: &str = "sess:f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o";

/// A private redis-server, an echo upstream and the gateway in front of them.
pub struct Stack {
    pub redis: RedisServer,
    pub upstream: EchoUpstream,
    pub gateway: TestGateway,
}

impl Stack {
    /// Starts all three; `config` turns the Redis URL and the upstream's
    /// address into the gateway's proxy.toml.
    pub fn start(config: impl FnOnce(&str, std::net::SocketAddr) -> String) -> Stack {
        let redis = RedisServer::start();
        let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
        let gateway = TestGateway::start(&config(&redis.url(), upstream.addr));
        Stack {
            redis,
            upstream,
            gateway,
        }
    }

    /// Stores `value` as the session behind [`ALICE`] for ten minutes.
    pub fn seed_alice(&self, value: &str) {
        use ::redis::Commands;
        let _: () = self
            .redis
            .conn()
            .set_ex(ALICE_KEY, value, 600)
            .expect("SET alice");
    }
}
