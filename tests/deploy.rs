//! The deployment files, checked without a Docker engine: docker-compose.yml
//! wires sessiongate to the redis and app services it names, Prometheus
//! scrapes the admin port, proxy.toml accepts the compose environment, and
//! every metric the Grafana dashboard queries exists in a real /metrics.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use support::{get, EchoUpstream, RedisServer, TestGateway};

fn root(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(file: &str) -> Value {
    serde_norway::from_str(&root(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn str_of<'v>(v: &'v Value, what: &str) -> &'v str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// `host:port` (or `scheme://host:port/...`) split into host and port.
fn host_port(addr: &str) -> (String, u16) {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let authority = rest.split('/').next().unwrap();
    let (host, port) = authority.rsplit_once(':').expect("a port");
    (host.to_owned(), port.parse().expect("a numeric port"))
}

/// The port a service's command listens on: after `flag`, or else in its
/// first argument (`host:port`).
fn port_of_command(command: &Value, flag: Option<&str>) -> u16 {
    let args: Vec<&str> = command
        .as_array()
        .expect("command is a list")
        .iter()
        .map(|a| str_of(a, "command item"))
        .collect();
    match flag.and_then(|flag| args.iter().position(|a| *a == flag)) {
        Some(i) => args[i + 1].parse().expect("a port after the flag"),
        None => host_port(args[1]).1,
    }
}

#[test]
fn compose_wires_redis_app_admin_and_prometheus() {
    let compose = yaml("docker-compose.yml");
    let services = &compose["services"];
    for name in ["redis", "app", "sessiongate", "prometheus"] {
        assert!(services[name].is_object(), "service {name} missing");
    }
    let env = &services["sessiongate"]["environment"];
    let var = |name: &str| str_of(&env[name], name).to_owned();

    let (redis_host, redis_port) = host_port(&var("REDIS_URL"));
    assert_eq!(redis_host, "redis");
    assert_eq!(
        port_of_command(&services["redis"]["command"], Some("--port")),
        redis_port
    );

    let app_command = &services["app"]["command"];
    assert_eq!(app_command[0], "echo_upstream");
    let (app_host, app_port) = host_port(&var("UPSTREAM_ADDR"));
    assert_eq!(app_host, "app");
    assert_eq!(port_of_command(app_command, None), app_port);

    let listen = var("LISTEN_ADDR");
    assert_eq!(listen, "0.0.0.0:8080");
    let published: Vec<&str> = services["sessiongate"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| str_of(p, "port"))
        .collect();
    assert!(
        published.iter().any(|p| p.ends_with(":8080")),
        "{published:?}"
    );

    let (_, admin_port) = host_port(&var("ADMIN_ADDR"));
    assert_ne!(admin_port, 8080);
    let prometheus = yaml("deploy/prometheus.yml");
    let job = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "sessiongate")
        .expect("a sessiongate scrape job");
    assert_eq!(job["metrics_path"], "/metrics");
    let target = str_of(&job["static_configs"][0]["targets"][0], "target");
    assert_eq!(host_port(target), ("sessiongate".to_owned(), admin_port));
    let mounts = services["prometheus"]["volumes"].to_string();
    assert!(mounts.contains("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml"));

    // The shipped proxy.toml with the compose environment ("app" does not
    // resolve outside compose, so the upstream is pointed at loopback).
    let env_of = |name: &str| match name {
        "UPSTREAM_ADDR" => Some(format!("127.0.0.1:{app_port}")),
        "SESSION_SECRET" => Some("compose-test-secret".to_owned()),
        _ => env[name].as_str().map(str::to_owned),
    };
    let config = sessiongate::config::parse("proxy.toml", &root("proxy.toml"), &env_of)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.server.listen, [listen]);
    assert_eq!(config.redis.url, var("REDIS_URL"));
    assert_eq!(config.admin.listen, Some(var("ADMIN_ADDR")));
}

#[test]
fn dockerfile_is_multi_stage_and_runs_as_a_user() {
    let dockerfile = root("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms,
        ["FROM rust:bookworm AS build", "FROM debian:bookworm-slim"]
    );
    assert!(dockerfile.contains("cmake"));
    assert!(dockerfile.contains("--example echo_upstream"));
    assert!(dockerfile.contains("/usr/local/bin/echo_upstream"));
    let user = dockerfile
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && user != "USER 0", "{user}");
    assert!(root(".dockerignore").lines().any(|l| l.trim() == "target"));
}

/// Every `sessiongate_*` name in the dashboard's queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let dashboard: Value = serde_json::from_str(&root("deploy/grafana-dashboard.json")).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|t| t.starts_with("sessiongate_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_dashboard_metric_is_exported() {
    let wanted = dashboard_metrics();
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").expect("echo upstream");
    let gateway = TestGateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{}"

[session]
cookie_format = "plain"

[admin]
listen = "127.0.0.1:0"

[[upstream]]
name = "app"
addrs = ["{}"]

[[route]]
path_prefix = "/"
upstream = "app"
"#,
        redis.url(),
        upstream.addr
    ));
    assert_eq!(
        get(gateway.addr, "/", &[("Cookie", "connect.sid=x")]).status,
        401
    );
    let text = get(gateway.admin_addr(), "/metrics", &[]).body;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|m| !exported.contains(m.as_str()))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{text}");
    // And the dashboard uses the main families.
    for family in [
        "sessiongate_requests_total",
        "sessiongate_request_duration_seconds_bucket",
        "sessiongate_upstream_responses_total",
        "sessiongate_session_lookups_total",
        "sessiongate_config_reloads_total",
    ] {
        assert!(wanted.contains(family), "{family} not on the dashboard");
    }
}
