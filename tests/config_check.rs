//! `sessiongate check`: every problem in a config is reported at once, each
//! with its key and line, and the exit code says whether the file is usable.

mod support;

use std::process::Command;

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(support::gateway::binary())
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("SESSIONGATE_TEST_UNSET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_proxy_toml_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    let out = Command::new(support::gateway::binary())
        .args(["check", "-c", path])
        .env("SESSION_SECRET", "demo-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn three_mistakes_are_all_reported_with_their_lines() {
    let text = r#"[server]
listn = ["127.0.0.1:8080"]
listen = ["127.0.0.1:8080"]

[redis]
url = "redis://127.0.0.1:6379/0"
command_timeout = "fast"

[session]
secrets = ["s"]

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]

[[route]]
path_prefix = "/"
upstream = "ap"
"#;
    let (code, _, err) = check(text);
    assert_ne!(code, 0);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("proxy.toml:")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].contains(":2:") && lines[0].contains("listn"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(":7:") && lines[1].contains("redis.command_timeout"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains(":18:") && lines[2].contains("upstream"),
        "{}",
        lines[2]
    );
}

#[test]
fn an_unset_environment_variable_is_named() {
    let text = r#"[server]
listen = ["127.0.0.1:8080"]
[redis]
url = "redis://127.0.0.1:6379/0"
[session]
secrets = ["${SESSIONGATE_TEST_UNSET}"]
[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]
[[route]]
path_prefix = "/"
upstream = "app"
"#;
    let (code, _, err) = check(text);
    assert_ne!(code, 0);
    assert!(
        err.contains("SESSIONGATE_TEST_UNSET") && err.contains(":6:"),
        "{err}"
    );
}

#[test]
fn live_keys_are_checked_with_their_lines() {
    let text = r#"[server]
listen = ["127.0.0.1:8080"]

[redis]
url = "redis://127.0.0.1:6379/0"

[session]
secrets = ["s"]

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]

[[route]]
path_prefix = "/ws/"
upstream = "app"
live = "sometimes"
max_lifetime = "forever"

[[route]]
path_prefix = "/"
upstream = "app"
access = "public"
live = "close"
"#;
    let (code, _, err) = check(text);
    assert_ne!(code, 0);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("proxy.toml:")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].contains(":17:") && lines[0].contains("route[0].live"),
        "{err}"
    );
    assert!(
        lines[1].contains(":18:") && lines[1].contains("route[0].max_lifetime"),
        "{err}"
    );
    assert!(
        lines[2].contains(":24:") && lines[2].contains("only applies to access"),
        "{err}"
    );
}

/// A config with TLS listeners, one route and `acme` as its `[acme]` table.
fn with_acme(acme: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:8080"]
listen_tls = ["127.0.0.1:8443"]

[redis]
url = "redis://127.0.0.1:6379/0"

[session]
secrets = ["s"]

[acme]
{acme}

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]

[[route]]
path_prefix = "/"
upstream = "app"
"#
    )
}

#[test]
fn acme_mistakes_are_reported_with_their_keys() {
    let (code, _, err) = check(&with_acme(
        r#"terms_agreed = false
names = ["app.example.com", "not a name"]
directory = "http://acme.test/dir"
storage = "acme"
challenge = "dns-01"
key_type = "rsa-4096""#,
    ));
    assert_ne!(code, 0);
    for want in [
        "acme.terms_agreed",
        "acme.names[1]",
        "acme.directory",
        "acme.challenge",
        "acme.key_type",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    // Without [[tls.certificates]]: [acme] serves the TLS listeners.
    assert!(!err.contains("tls.certificates"), "{err}");
    // `challenge` and `key_type` take their documented values.
    let (code, _, err) = check(&with_acme(
        r#"terms_agreed = true
names = ["app.example.com"]
storage = "acme"
challenge = "tls-alpn-01"
key_type = "ecdsa-p384""#,
    ));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_fleets_acme_state_never_meets_a_session_key() {
    let text = |share_key: &str, prefix: &str| {
        with_acme(&format!(
            r#"terms_agreed = true
names = ["app.example.com"]
storage = "acme"
share_key = "{share_key}"
redis_prefix = "{prefix}""#
        ))
    };
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let (code, _, err) = check(&text(key, "sess:acme:"));
    assert_ne!(code, 0);
    assert!(err.contains("acme.redis_prefix"), "{err}");
    let (code, _, err) = check(&text("c2hvcnQ=", "sessiongate:acme:"));
    assert_ne!(code, 0);
    assert!(
        err.contains("acme.share_key") && !err.contains("c2hvcnQ="),
        "{err}"
    );
    let (code, _, err) = check(&text(key, "sessiongate:acme:"));
    assert_eq!(code, 0, "{err}");
}
