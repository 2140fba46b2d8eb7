//! Safe rollout, end to end: report-only routes forward what enforcement
//! would refuse and say so (access log, metrics), while never relaxing what
//! must stay enforced; `explain` (the command and the admin endpoint) tells
//! why a request is let in or refused, against a real redis-server, without
//! printing a secret, a token or a whole session id. Credentials come from
//! tests/fixtures (made by express-session and jsonwebtoken).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use redis::Commands;
use serde_json::Value;
use support::{fixture, get, load_fixture, raw_request, Response, Stack};

const EXPRESS_CURRENT: &str = "fixture-secret-current";
const EXPRESS_PREVIOUS: &str = "fixture-secret-previous";
const HS_SECRET: &str = "fixture-jwt-hs256-secret";
const ADMIN_PASSWORD: &str = "explain-pw-9f2c";
/// The token key of the `hs256` fixture token, and of the `revoked` one.
const REVOKED_KEY: &str = "token:b5742c46-b6bf-448b-82c4-170aa08817d4";

const ALICE_ID: &str = "f_5LIkvq0w7x3xnfNxnfddr11Uabkx0o";
/// Alice (role admin), signed with the current secret.
const ALICE: &str = "connect.sid=s%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lT0";
/// The same id with its signature's last character changed.
const TAMPERED: &str = "connect.sid=s%3Af_5LIkvq0w7x3xnfNxnfddr11Uabkx0o.HvwJ5voNwgXc4lZElJJ%2BXwMDSsuiQ6Be2bgQL7N6lTA";
const OLD_ID: &str = "27D-Pq_tbBxSbRlpuRSKUFOxYmHQg_Nr";
/// User 7007 (role viewer), signed with the previous secret.
const OLD_VIEWER: &str = "connect.sid=s%3A27D-Pq_tbBxSbRlpuRSKUFOxYmHQg_Nr.20FKr79EoBEozE16VHbg0I5vE1p4erFmMImd%2FW12UDY";

fn config(redis: &str, upstream: std::net::SocketAddr, extra_routes: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{redis}"
command_timeout = "200ms"

[session]
cookie = "connect.sid"
cookie_format = "express"
secrets = ["{EXPRESS_CURRENT}", "{EXPRESS_PREVIOUS}"]
bearer = "jwt"
key = "sess:{{id}}"

[jwt]
algorithms = ["HS256"]
secret = "{HS_SECRET}"

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Role" = "user.role"
"X-Token-Id" = "claims.tokenId"

[admin]
listen = "127.0.0.1:0"
metrics_basic_auth = {{ username = "ops", password = "{ADMIN_PASSWORD}" }}
explain = true

[rollout]
mode = "report"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

# Its case-folded reading catches /shadow/locked/...: enforced, whatever the exact reading says.
[[route]]
name = "locked"
path_prefix = "/Shadow/Locked/"
upstream = "app"
mode = "enforce"

[[route]]
name = "shadow"
path_prefix = "/shadow/"
upstream = "app"

[[route]]
name = "shadow-admin"
path_prefix = "/shadow-admin/"
upstream = "app"
roles = ["admin"]

[[route]]
name = "staff"
path_prefix = "/staff/"
upstream = "app"
mode = "enforce"
roles = ["admin"]
show_error_details = true
{extra_routes}
[[route]]
name = "app"
path_prefix = "/"
upstream = "app"
mode = "enforce"
"#
    )
}

fn start(extra_routes: &str) -> Stack {
    let s = Stack::start(|redis, upstream| config(redis, upstream, extra_routes));
    load_fixture(&s.redis, "express-session.json");
    s
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn metrics(s: &Stack) -> String {
    let auth = basic("ops", ADMIN_PASSWORD);
    let resp = get(
        s.gateway.admin_addr(),
        "/metrics",
        &[("Authorization", &auth)],
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.body
}

/// The `/metrics` text once it has the line `want` (requests are counted
/// after their response is written).
fn metrics_with(s: &Stack, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(s);
        if text.lines().any(|l| l == want) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json() -> (&'static str, &'static str) {
    ("Accept", "application/json")
}

#[test]
fn report_mode_forwards_what_enforcement_would_refuse_and_counts_it() {
    let s = start("");
    let addr = s.gateway.addr;
    let spoof = ("X-User-Id", "0-spoofed");
    let spoof_underscore = ("X_User_Role", "admin");

    // No credential: forwarded, with no identity header at all.
    let bare = get(addr, "/shadow/report", &[json(), spoof, spoof_underscore]);
    assert_eq!(bare.status, 200, "{}", bare.body);
    assert!(bare.echoed("x-user-id").is_empty(), "{}", bare.body);
    assert!(bare.echoed("x_user_role").is_empty(), "{}", bare.body);
    assert!(bare.echoed("x-user-role").is_empty(), "{}", bare.body);

    // A badly signed cookie: forwarded bare too.
    let forged = get(
        addr,
        "/shadow/report",
        &[json(), ("Cookie", TAMPERED), spoof],
    );
    assert_eq!(forged.status, 200);
    assert!(forged.echoed("x-user-id").is_empty(), "{}", forged.body);

    // A valid session without the role: forwarded with its own identity.
    let viewer = get(
        addr,
        "/shadow-admin/users",
        &[("Cookie", OLD_VIEWER), spoof],
    );
    assert_eq!(viewer.status, 200);
    assert_eq!(viewer.echoed("x-user-id"), ["7007"]);
    assert_eq!(viewer.echoed("x-user-role"), ["viewer"]);

    // A valid session with everything it needs: plainly forwarded.
    let alice = get(addr, "/shadow-admin/users", &[("Cookie", ALICE), spoof]);
    assert_eq!(alice.status, 200);
    assert_eq!(alice.echoed("x-user-id"), ["1001"]);

    // Enforce-mode routes still refuse.
    let refused = get(addr, "/dashboard", &[json()]);
    assert_eq!(refused.status, 401);
    let staff = get(addr, "/staff/x", &[json(), ("Cookie", OLD_VIEWER)]);
    assert_eq!(staff.status, 403);

    // One reading picks the report route, another the enforced one: enforced.
    let before = s.upstream.requests();
    let both = get(addr, "/shadow/locked/x", &[json()]);
    assert_eq!(both.status, 401, "{}", both.body);
    assert_eq!(s.upstream.requests(), before);

    // Canonicalisation refusals are never relaxed.
    let bad = raw_request(
        addr,
        b"GET /shadow/a%2fb HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .expect("a response");
    assert_eq!(bad.status, 400);

    let log = s.gateway.access_log_until(|l| l["status"] == 400);
    let would_deny: Vec<(&str, &str, &str)> = log
        .iter()
        .filter(|l| l["decision"] == "would_deny")
        .map(|l| {
            (
                l["route"].as_str().unwrap_or(""),
                l["reason"].as_str().unwrap_or(""),
                l["path"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        would_deny,
        [
            ("shadow", "no_credential", "/shadow/report"),
            ("shadow", "bad_signature", "/shadow/report"),
            ("shadow-admin", "role_missing", "/shadow-admin/users"),
        ],
        "{log:#?}"
    );
    let viewer_line = log
        .iter()
        .find(|l| l["decision"] == "would_deny" && l["route"] == "shadow-admin")
        .unwrap();
    assert_eq!(viewer_line["status"], 200);
    assert_eq!(viewer_line["user"], "7007");
    assert!(log
        .iter()
        .any(|l| l["route"] == "shadow-admin" && l["decision"] == "forwarded"));
    let both: Vec<_> = log
        .iter()
        .filter(|l| l["path"] == "/shadow/locked/x")
        .collect();
    assert_eq!(both.len(), 1, "{log:#?}");
    assert_eq!(both[0]["decision"], "unauthenticated");
    assert_eq!(both[0]["reason"], "no_credential");

    let text = metrics_with(
        &s,
        "sessiongate_would_deny_total{reason=\"role_missing\",route=\"shadow-admin\"} 1",
    );
    for line in [
        "sessiongate_requests_total{decision=\"would_deny\",route=\"shadow\"} 2",
        "sessiongate_requests_total{decision=\"would_deny\",route=\"shadow-admin\"} 1",
        "sessiongate_requests_total{decision=\"forwarded\",route=\"shadow-admin\"} 1",
        "sessiongate_would_deny_total{reason=\"no_credential\",route=\"shadow\"} 1",
        "sessiongate_would_deny_total{reason=\"bad_signature\",route=\"shadow\"} 1",
        "sessiongate_would_deny_total{reason=\"role_missing\",route=\"shadow-admin\"} 1",
        "sessiongate_requests_total{decision=\"unauthenticated\",route=\"app\"} 1",
        "sessiongate_requests_total{decision=\"forbidden\",route=\"staff\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    // A would-be refusal is not a refusal.
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("sessiongate_auth_failures_total{reason=\"bad_signature\"}")),
        "{text}"
    );
}

#[test]
fn error_details_are_shown_only_where_a_route_asks_for_them() {
    let s = start("");
    let addr = s.gateway.addr;
    let body = |resp: &Response| -> Value { serde_json::from_str(&resp.body).unwrap() };

    let missing = get(addr, "/staff/x", &[json()]);
    assert_eq!(missing.status, 401);
    assert_eq!(body(&missing)["reason"], "no_credential");
    let forged = get(addr, "/staff/x", &[json(), ("Cookie", TAMPERED)]);
    assert_eq!(body(&forged)["reason"], "bad_signature");
    let viewer = get(addr, "/staff/x", &[json(), ("Cookie", OLD_VIEWER)]);
    assert_eq!(viewer.status, 403);
    assert_eq!(body(&viewer)["reason"], "role_missing");
    assert_eq!(body(&viewer)["error"], "forbidden");

    let plain = get(addr, "/dashboard", &[json()]);
    assert_eq!(plain.status, 401);
    assert!(body(&plain).get("reason").is_none(), "{}", plain.body);
}

#[test]
fn store_errors_stay_enforced_in_report_mode_unless_a_route_says_forward() {
    let mut s = start(
        r#"
[[route]]
name = "shadow-open"
path_prefix = "/shadow-open/"
upstream = "app"
report_store_unavailable = "forward"
"#,
    );
    let addr = s.gateway.addr;
    s.redis.stop();

    let closed = get(addr, "/shadow/x", &[json(), ("Cookie", ALICE)]);
    assert_eq!(closed.status, 503, "{}", closed.body);
    assert_eq!(closed.header("retry-after"), Some("1"));

    let open = get(
        addr,
        "/shadow-open/x",
        &[json(), ("Cookie", ALICE), ("X-User-Id", "0-spoofed")],
    );
    assert_eq!(open.status, 200, "{}", open.body);
    assert!(open.echoed("x-user-id").is_empty(), "{}", open.body);

    let log = s
        .gateway
        .access_log_until(|l| l["route"] == "shadow-open" && l["status"] == 200);
    assert!(
        log.iter().any(|l| l["route"] == "shadow"
            && l["status"] == 503
            && l["decision"] == "store_error"
            && l["reason"] == "store_unavailable"),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l["route"] == "shadow-open"
            && l["decision"] == "would_deny"
            && l["reason"] == "store_unavailable"),
        "{log:#?}"
    );
}

/// `sessiongate explain` on the gateway's own configuration; returns its stdout.
fn explain_cli(s: &Stack, args: &[&str]) -> String {
    let out = Command::new(support::gateway::binary())
        .arg("explain")
        .arg("-c")
        .arg(&s.gateway.config_path)
        .args(args)
        .env("RUST_LOG", "debug")
        .output()
        .expect("run sessiongate explain");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    format!("{stdout}\n{stderr}")
}

fn explain_json(s: &Stack, args: &[&str]) -> (Value, String) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = explain_cli(s, &all);
    let end = out.rfind("\n}").expect("a JSON document") + 2;
    let doc = serde_json::from_str(&out[..end]).unwrap_or_else(|e| panic!("{e}: {out}"));
    (doc, out)
}

/// Nothing that would let someone use a credential: no secret, no token, no
/// whole session or token id, no signature.
fn assert_no_secrets(output: &str, tokens: &[&str]) {
    let mut secrets = vec![
        EXPRESS_CURRENT,
        EXPRESS_PREVIOUS,
        HS_SECRET,
        ADMIN_PASSWORD,
        ALICE_ID,
        OLD_ID,
        "HvwJ5voNwgXc4lZElJJ",
        "20FKr79EoBEozE16VHbg0I5vE1p4erFmMImd",
        "b5742c46-b6bf-448b-82c4-170aa08817d4",
    ];
    secrets.extend_from_slice(tokens);
    for secret in secrets {
        assert!(!output.contains(secret), "{secret:?} printed:\n{output}");
    }
}

fn jwt_token(list: &str, name: &str) -> String {
    fixture("jwt.json")[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no {list} token {name}"))["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn explain_says_why_for_valid_expired_revoked_forged_and_wrong_role_credentials() {
    let s = start("");
    let tokens = load_fixture(&s.redis, "jwt.json");
    let valid_token = tokens.iter().find(|t| t["name"] == "hs256").unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let expired = jwt_token("invalid", "expired");
    let revoked = jwt_token("invalid", "revoked");
    let mut printed = String::new();
    let url = "http://App.Test/staff/../staff/reports?secret=1";

    // Valid: alice, signed with the current secret.
    let (valid, out) = explain_json(&s, &["--url", url, "--cookie", ALICE]);
    printed += &out;
    assert_eq!(valid["request"]["host"], "app.test");
    assert_eq!(valid["request"]["path"], "/staff/reports");
    assert_eq!(valid["route"]["name"], "staff");
    assert_eq!(valid["route"]["mode"], "enforce");
    assert_eq!(valid["credential"]["source"], "cookie");
    assert_eq!(valid["credential"]["format"], "express");
    assert_eq!(valid["credential"]["check"], "ok");
    assert_eq!(valid["credential"]["secret_index"], 0);
    assert_eq!(valid["credential"]["id_prefix"], "f_5L...");
    assert_eq!(valid["lookup"]["key"], "sess:f_5L...");
    assert_eq!(valid["lookup"]["result"], "found");
    assert_eq!(valid["lookup"]["source"], "redis");
    assert!(valid["lookup"]["ttl_seconds"].as_u64().unwrap() > 80_000);
    assert_eq!(valid["session"]["roles"], serde_json::json!(["admin"]));
    assert_eq!(valid["session"]["identity"][0]["header"], "x-user-id");
    assert_eq!(valid["session"]["identity"][0]["value"], "1001");
    assert_eq!(valid["authorization"]["routes"][0]["route"], "staff");
    assert_eq!(valid["authorization"]["routes"][0]["satisfied"], true);
    assert_eq!(valid["decision"]["decision"], "forwarded");
    assert!(valid["decision"]["reason"].is_null());
    assert_eq!(valid["decision"]["status"], 0);

    // A valid bearer JWT.
    let (jwt, out) = explain_json(
        &s,
        &["--url", "http://app.test/staff/x", "--bearer", &valid_token],
    );
    printed += &out;
    assert_eq!(jwt["credential"]["format"], "jwt");
    assert_eq!(jwt["credential"]["check"], "ok");
    assert_eq!(jwt["lookup"]["key"], "token:b574...");
    assert_eq!(jwt["lookup"]["result"], "found");
    // The identity header carrying the token id shows the same prefix.
    let token_id = jwt["session"]["identity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["header"] == "x-token-id")
        .unwrap_or_else(|| panic!("no x-token-id in {jwt}"));
    assert_eq!(token_id["value"], "b574...", "{out}");
    let human = explain_cli(
        &s,
        &["--url", "http://app.test/staff/x", "--bearer", &valid_token],
    );
    printed += &human;
    assert!(
        human.contains("x-token-id: b574... <- claims.tokenId"),
        "{human}"
    );
    // Its role (editor, at user.role: absent in the token's claims) is not admin.
    assert_eq!(jwt["decision"]["reason"], "role_missing");

    // Expired: the signature verifies, exp has passed.
    let (exp, out) = explain_json(
        &s,
        &["--url", "http://app.test/staff/x", "--bearer", &expired],
    );
    printed += &out;
    assert_eq!(exp["credential"]["check"], "expired");
    assert!(exp["lookup"].is_null());
    assert_eq!(exp["decision"]["decision"], "unauthenticated");
    assert_eq!(exp["decision"]["reason"], "expired");
    assert_eq!(exp["decision"]["status"], 401);

    // Revoked: verified, but its token key is gone (the fixture's revoked
    // token shares its id with the valid one; the app's logout deleted it).
    let _: () = s.redis.conn().del(REVOKED_KEY).unwrap();
    let (rev, out) = explain_json(
        &s,
        &["--url", "http://app.test/staff/x", "--bearer", &revoked],
    );
    printed += &out;
    assert_eq!(rev["credential"]["check"], "ok");
    assert_eq!(rev["lookup"]["result"], "revoked");
    assert_eq!(rev["decision"]["reason"], "revoked");

    // Badly signed.
    let (bad, out) = explain_json(
        &s,
        &["--url", "http://app.test/staff/x", "--cookie", TAMPERED],
    );
    printed += &out;
    assert_eq!(bad["credential"]["check"], "bad_signature");
    assert!(bad["credential"]["id_prefix"].is_null());
    assert!(bad["lookup"].is_null());
    assert_eq!(bad["decision"]["reason"], "bad_signature");
    let (garbled, out) = explain_json(
        &s,
        &[
            "--url",
            "http://app.test/staff/x",
            "--cookie",
            "connect.sid=s%3Anot-signed",
        ],
    );
    printed += &out;
    assert_eq!(garbled["credential"]["check"], "malformed");

    // Wrong role: a valid session signed with the previous secret.
    let (viewer, out) = explain_json(
        &s,
        &["--url", "http://app.test/staff/x", "--cookie", OLD_VIEWER],
    );
    printed += &out;
    assert_eq!(viewer["credential"]["secret_index"], 1);
    assert_eq!(viewer["session"]["roles"], serde_json::json!(["viewer"]));
    assert_eq!(viewer["authorization"]["refused_by"], "staff");
    assert_eq!(
        viewer["authorization"]["routes"][0]["roles"],
        serde_json::json!(["admin"])
    );
    assert_eq!(viewer["decision"]["decision"], "forbidden");
    assert_eq!(viewer["decision"]["reason"], "role_missing");
    assert_eq!(viewer["decision"]["status"], 403);

    // The same on a report route: would_deny, and which readings chose what.
    let (shadow, out) = explain_json(
        &s,
        &[
            "--url",
            "http://app.test/shadow-admin/x",
            "--cookie",
            OLD_VIEWER,
        ],
    );
    printed += &out;
    assert_eq!(shadow["route"]["mode"], "report");
    assert_eq!(shadow["decision"]["decision"], "would_deny");
    assert_eq!(shadow["decision"]["reason"], "role_missing");
    let (both, out) = explain_json(&s, &["--url", "http://app.test/shadow/locked/x"]);
    printed += &out;
    assert_eq!(both["route"]["name"], "shadow");
    assert_eq!(both["route"]["mode"], "enforce");
    assert_eq!(
        both["route"]["readings"],
        serde_json::json!([
            {"reading": "exact", "route": "shadow"},
            {"reading": "case_folded", "route": "locked"}
        ])
    );
    assert_eq!(both["credential"]["check"], "absent");
    assert_eq!(both["decision"]["reason"], "no_credential");

    // Revoked express session: its key deleted.
    let _: () = s.redis.conn().del(format!("sess:{ALICE_ID}")).unwrap();
    let (gone, out) = explain_json(&s, &["--url", "http://app.test/staff/x", "--cookie", ALICE]);
    printed += &out;
    assert_eq!(gone["lookup"]["result"], "unknown_session");
    assert_eq!(gone["decision"]["reason"], "unknown_session");

    // The human form says the same.
    let human = explain_cli(
        &s,
        &["--url", "http://app.test/staff/x", "--cookie", OLD_VIEWER],
    );
    printed += &human;
    assert!(
        human.contains("decision    forbidden (role_missing), status 403"),
        "{human}"
    );
    assert!(human.contains("signed with secret #1"), "{human}");
    assert!(
        human.contains("route staff wants one of [admin]: missing"),
        "{human}"
    );

    assert_no_secrets(&printed, &[&valid_token, &expired, &revoked, "secret=1"]);
}

fn post_explain(s: &Stack, auth: Option<&str>, body: &str) -> Response {
    let mut head = format!(
        "POST /explain HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    raw_request(s.gateway.admin_addr(), head.as_bytes()).expect("an admin response")
}

#[test]
fn the_admin_explain_endpoint_needs_the_admin_credentials_and_reads_the_running_cache() {
    let s = start("");
    let body = serde_json::json!({
        "url": "http://app.test/staff/x",
        "cookie": ALICE,
        "headers": {"X-User-Id": "0-spoofed"}
    })
    .to_string();

    let none = post_explain(&s, None, &body);
    assert_eq!(none.status, 401);
    assert!(none.header("www-authenticate").is_some());
    assert!(!none.body.contains("decision"));
    let wrong = post_explain(&s, Some(&basic("ops", "guess")), &body);
    assert_eq!(wrong.status, 401);
    let get_it = get(
        s.gateway.admin_addr(),
        "/explain",
        &[("Authorization", &basic("ops", ADMIN_PASSWORD))],
    );
    assert_eq!(get_it.status, 405);
    let auth = basic("ops", ADMIN_PASSWORD);
    let garbage = post_explain(&s, Some(&auth), "{\"url\": 5, \"cookie\": \"leak-me\"}");
    assert_eq!(garbage.status, 400);
    assert!(!garbage.body.contains("leak-me"), "{}", garbage.body);

    // Served through the gateway, alice's session lands in its cache (once
    // the invalidation channel is up); explain then reads it from there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = 0;
    let explained = loop {
        assert_eq!(
            get(s.gateway.addr, "/staff/x", &[("Cookie", ALICE)]).status,
            200
        );
        served += 1;
        let resp = post_explain(&s, Some(&auth), &body);
        assert_eq!(resp.status, 200, "{}", resp.body);
        let doc: Value = serde_json::from_str(&resp.body).unwrap();
        if doc["lookup"]["cache"] == "hit" || Instant::now() > deadline {
            break resp;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let doc: Value = serde_json::from_str(&explained.body).unwrap();
    assert_eq!(doc["lookup"]["cache"], "hit", "{doc:#}");
    assert_eq!(doc["lookup"]["source"], "cache");
    assert_eq!(doc["decision"]["decision"], "forwarded");
    assert_eq!(doc["session"]["identity"][0]["value"], "1001");
    assert_no_secrets(&explained.body, &[]);

    // Explaining counts nothing: the requests served are all /metrics has.
    let counted =
        format!("sessiongate_requests_total{{decision=\"forwarded\",route=\"staff\"}} {served}");
    let before = metrics_with(&s, &counted);
    assert!(before.lines().any(|l| l == counted), "{before}");
    for _ in 0..3 {
        assert_eq!(post_explain(&s, Some(&auth), &body).status, 200);
    }
    let after = metrics(&s);
    assert!(after.lines().any(|l| l == counted), "{after}");
}

#[test]
fn check_warns_about_report_mode_routes() {
    let s = start("");
    let out = Command::new(support::gateway::binary())
        .arg("check")
        .arg("-c")
        .arg(&s.gateway.config_path)
        .output()
        .expect("run sessiongate check");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for route in ["shadow", "shadow-admin"] {
        assert!(
            stderr.contains(&format!("warning: route \"{route}\" is in report mode")),
            "{stderr}"
        );
    }
    assert!(
        !stderr.contains("route \"staff\" is in report mode"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("route \"locked\" is in report mode"),
        "{stderr}"
    );
}
