//! The pipeline's decision table, stage by stage, against an in-memory store:
//! which outcome each kind of request gets, and what `explain` shows of it.
//! Pure logic; the gateway binary and a real Redis are tested in tests/.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use http::header::{ACCEPT, AUTHORIZATION, COOKIE, HOST};
use serde_json::json;

use super::*;
use crate::config::ValueFormat;
use crate::credential::cookie::express_sign;
use crate::session::store::{RawSession, RawValue};
use crate::session::StoreError;

const SECRET: &str = "pipeline-test-secret";
const JWT_SECRET: &str = "pipeline-test-jwt-secret";
const ALICE: &str = "aliceSessionId0000000000000000001";
const BOB: &str = "bobSessionId000000000000000000002";
const TOKEN_ID: &str = "b5742c46-b6bf-448b-82c4-170aa08817d4";

/// Redis as a map of JSON strings that can be made unreachable.
#[derive(Default)]
struct MemStore {
    values: Mutex<HashMap<String, String>>,
    down: AtomicBool,
}

impl MemStore {
    fn put(&self, key: &str, value: serde_json::Value) {
        let mut values = self.values.lock().unwrap();
        values.insert(key.to_owned(), value.to_string());
    }
}

#[async_trait]
impl SessionStore for MemStore {
    async fn fetch(
        &self,
        key: &str,
        _format: ValueFormat,
        ttl: bool,
    ) -> Result<Option<RawSession>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        let values = self.values.lock().unwrap();
        Ok(values.get(key).map(|v| RawSession {
            value: RawValue::String(v.clone().into_bytes()),
            ttl_ms: ttl.then_some(600_000),
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn touch(&self, _key: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
        let mut values = self.values.lock().unwrap();
        Ok(keys.iter().filter(|k| values.remove(*k).is_some()).count() as u64)
    }

    async fn set_members(&self, _key: &str) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    async fn set_remove(&self, _key: &str, _members: &[String]) -> Result<u64, StoreError> {
        Ok(0)
    }
}

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]

[redis]
url = "redis://127.0.0.1:6379/0"

[session]
cookie = "sid"
cookie_format = "express"
secrets = ["pipeline-test-secret"]
bearer = "jwt"
key = "sess:{id}"

[jwt]
algorithms = ["HS256"]
secret = "pipeline-test-jwt-secret"

[identity.headers]
"X-User-Id" = "user.id"
"X-Token-Id" = "claims.tokenId"
"X-Session-Ref" = "user.session"

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]

[[route]]
name = "public"
path_prefix = "/public/"
upstream = "app"
access = "public"

[[route]]
name = "admin"
path_prefix = "/admin/"
upstream = "app"
roles = ["admin"]

[[route]]
name = "stale"
path_prefix = "/stale/"
upstream = "app"
on_store_error = "stale"

[[route]]
name = "report"
path_prefix = "/report/"
upstream = "app"
mode = "report"
roles = ["admin"]

[[route]]
name = "web"
path_prefix = "/web/"
upstream = "app"
on_unauthenticated = { redirect = "/login" }

[[route]]
name = "app"
path_prefix = "/app/"
upstream = "app"
"#;

struct Fixture {
    store: Arc<MemStore>,
    pipeline: Pipeline,
}

/// The pipeline of `CONFIG` over a store holding Alice (an admin), Bob (a
/// viewer) and one live token.
fn fixture() -> Fixture {
    let config = match crate::config::parse("proxy.toml", CONFIG, &|_| None) {
        Ok(config) => config,
        Err(e) => panic!("test config: {e:?}"),
    };
    let store = Arc::new(MemStore::default());
    store.put(
        &format!("sess:{ALICE}"),
        json!({"user": {"id": "1001", "role": "admin", "session": ALICE}}),
    );
    store.put(
        &format!("sess:{BOB}"),
        json!({"user": {"id": "2002", "role": "viewer"}}),
    );
    store.put(
        &format!("token:{TOKEN_ID}"),
        json!({"user": {"id": "3003"}}),
    );
    let cache = SessionCache::new(config.cache.clone());
    let pipeline = Pipeline::new(config, store.clone(), cache);
    Fixture { store, pipeline }
}

fn cookie(id: &str) -> String {
    format!("sid={}", express_sign(id, SECRET))
}

/// Alice's cookie with the last character of its signature changed.
fn tampered(id: &str) -> String {
    let mut value = cookie(id);
    let last = if value.ends_with('A') { 'B' } else { 'A' };
    value.pop();
    value.push(last);
    value
}

fn token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn live_token() -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    token(json!({"tokenId": TOKEN_ID, "exp": exp}))
}

/// A request head for `target` on `app.test` with `headers`.
fn head(method: &str, target: &str, headers: &[(http::HeaderName, &str)]) -> Parts {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(target)
        .header(HOST, "app.test");
    for (name, value) in headers {
        builder = builder.header(name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

impl Fixture {
    async fn decide(&self, target: &str, headers: &[(http::HeaderName, &str)]) -> Outcome {
        self.send("GET", target, headers).await
    }

    async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(http::HeaderName, &str)],
    ) -> Outcome {
        let req = head(method, target, headers);
        self.pipeline
            .decide_from(&req, target.as_bytes(), &Arrival::default())
            .await
    }

    async fn explain(&self, target: &str, headers: &[(http::HeaderName, &str)]) -> Explanation {
        let req = head("GET", target, headers);
        self.pipeline.explain(&req, target.as_bytes()).await
    }

    /// The status the client would get (0: forwarded).
    fn status(&self, outcome: &Outcome) -> u16 {
        match outcome {
            Outcome::Forward { .. } => 0,
            Outcome::Reject { route, rejection } => {
                self.pipeline.render(*route, rejection).status.as_u16()
            }
            Outcome::Respond { rendered, .. } => rendered.status.as_u16(),
        }
    }
}

/// The refusal's reason code, or `None` when forwarded.
fn reason(outcome: &Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Reject { rejection, .. } => Some(rejection.reason()),
        Outcome::Forward { would_deny, .. } => would_deny.as_ref().map(Rejection::reason),
        Outcome::Respond { .. } => None,
    }
}

fn user(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Forward {
            principal: Some(p), ..
        } => p.user.as_deref().or(Some("")),
        _ => None,
    }
}

#[tokio::test]
async fn no_route_is_404_and_a_public_route_forwards_without_a_session() {
    let f = fixture();
    let none = f.decide("/nowhere", &[]).await;
    assert!(
        matches!(
            none,
            Outcome::Reject {
                route: None,
                rejection: Rejection::NoRoute
            }
        ),
        "{none:?}"
    );
    assert_eq!(f.status(&none), 404);

    // A cookie on a public route is not even looked at.
    f.store.down.store(true, Ordering::SeqCst);
    let public = f.decide("/public/x", &[(COOKIE, &cookie(ALICE))]).await;
    assert!(
        matches!(
            public,
            Outcome::Forward {
                route: 0,
                principal: None,
                decision: Decision::Public,
                ..
            }
        ),
        "{public:?}"
    );
}

#[tokio::test]
async fn a_valid_session_is_forwarded_and_each_bad_credential_refused_with_its_reason() {
    let f = fixture();
    let ok = f.decide("/app/x", &[(COOKIE, &cookie(ALICE))]).await;
    assert_eq!(ok.decision(), Decision::Forwarded, "{ok:?}");
    assert!(matches!(&ok, Outcome::Forward { principal: Some(p), .. } if p.roles == ["admin"]));

    let cases: [(&str, String, &str); 4] = [
        ("no credential", String::new(), "no_credential"),
        ("bad signature", tampered(ALICE), "bad_signature"),
        (
            "signed by another secret",
            format!("sid={}", express_sign(ALICE, "another-secret")),
            "bad_signature",
        ),
        (
            "missing session",
            cookie("noSuchSession000000000000000000000"),
            "unknown_session",
        ),
    ];
    for (case, value, want) in cases {
        let headers: Vec<(http::HeaderName, &str)> = if value.is_empty() {
            vec![]
        } else {
            vec![(COOKIE, value.as_str())]
        };
        let outcome = f.decide("/app/x", &headers).await;
        assert_eq!(reason(&outcome), Some(want), "{case}: {outcome:?}");
        assert_eq!(outcome.decision(), Decision::Unauthenticated, "{case}");
        assert_eq!(f.status(&outcome), 401, "{case}");
    }
}

#[tokio::test]
async fn a_store_error_is_503_unless_the_route_lets_a_recent_session_in_stale() {
    let f = fixture();
    // Seen once while Redis answered: its last known good state is kept.
    let seen = f.decide("/stale/x", &[(COOKIE, &cookie(ALICE))]).await;
    assert_eq!(seen.decision(), Decision::Forwarded);
    f.store.down.store(true, Ordering::SeqCst);

    let deny = f.decide("/app/x", &[(COOKIE, &cookie(ALICE))]).await;
    assert_eq!(reason(&deny), Some("store_unavailable"), "{deny:?}");
    assert_eq!(deny.decision(), Decision::StoreError);
    assert_eq!(f.status(&deny), 503);

    let stale = f.decide("/stale/x", &[(COOKIE, &cookie(ALICE))]).await;
    assert!(
        matches!(
            &stale,
            Outcome::Forward {
                stale: true,
                decision: Decision::Forwarded,
                principal: Some(_),
                ..
            }
        ),
        "{stale:?}"
    );
    // Never seen before the outage: nothing to stand in for it.
    let unseen = f.decide("/stale/x", &[(COOKIE, &cookie(BOB))]).await;
    assert_eq!(reason(&unseen), Some("store_unavailable"), "{unseen:?}");
}

#[tokio::test]
async fn a_session_without_the_role_is_403_and_report_mode_forwards_what_it_would_refuse() {
    let f = fixture();
    let admin = f.decide("/admin/x", &[(COOKIE, &cookie(ALICE))]).await;
    assert_eq!(admin.decision(), Decision::Forwarded, "{admin:?}");
    let viewer = f.decide("/admin/x", &[(COOKIE, &cookie(BOB))]).await;
    assert_eq!(reason(&viewer), Some("role_missing"), "{viewer:?}");
    assert_eq!(viewer.decision(), Decision::Forbidden);
    assert_eq!(f.status(&viewer), 403);

    // Report mode: the viewer is forwarded with its identity, and so is a
    // request without any session (bare).
    let reported = f.decide("/report/x", &[(COOKIE, &cookie(BOB))]).await;
    assert_eq!(reported.decision(), Decision::WouldDeny, "{reported:?}");
    assert_eq!(reason(&reported), Some("role_missing"));
    assert!(matches!(
        &reported,
        Outcome::Forward {
            principal: Some(_),
            ..
        }
    ));
    let bare = f.decide("/report/x", &[]).await;
    assert_eq!(bare.decision(), Decision::WouldDeny, "{bare:?}");
    assert_eq!(reason(&bare), Some("no_credential"));
    assert_eq!(user(&bare), None);
    // A store error is not relaxed (`report_store_unavailable` defaults to refusing).
    f.store.down.store(true, Ordering::SeqCst);
    let down = f.decide("/report/x", &[(COOKIE, &cookie(BOB))]).await;
    assert_eq!(down.decision(), Decision::StoreError, "{down:?}");
}

#[tokio::test]
async fn a_bearer_jwt_needs_its_token_key_and_a_revoked_one_is_refused() {
    let f = fixture();
    let auth = format!("Bearer {}", live_token());
    let ok = f.decide("/app/x", &[(AUTHORIZATION, &auth)]).await;
    assert_eq!(ok.decision(), Decision::Forwarded, "{ok:?}");

    f.store
        .values
        .lock()
        .unwrap()
        .remove(&format!("token:{TOKEN_ID}"));
    let revoked = f.decide("/app/x", &[(AUTHORIZATION, &auth)]).await;
    assert_eq!(reason(&revoked), Some("revoked"), "{revoked:?}");
    assert!(matches!(
        &revoked,
        Outcome::Reject {
            rejection: Rejection::Unauthenticated { bearer: true, .. },
            ..
        }
    ));

    let expired = token(json!({"tokenId": TOKEN_ID, "exp": 1_000_000}));
    let expired = f
        .decide("/app/x", &[(AUTHORIZATION, &format!("Bearer {expired}"))])
        .await;
    assert_eq!(reason(&expired), Some("expired"), "{expired:?}");
    let garbage = f.decide("/app/x", &[(AUTHORIZATION, "Bearer ")]).await;
    assert_eq!(reason(&garbage), Some("bad_signature"), "{garbage:?}");
}

#[tokio::test]
async fn a_browser_is_redirected_to_the_login_page_and_an_api_client_gets_401() {
    let f = fixture();
    let browser = f
        .decide(
            "/web/page?a=1",
            &[(ACCEPT, "text/html,application/xhtml+xml")],
        )
        .await;
    assert_eq!(f.status(&browser), 302, "{browser:?}");
    match &browser {
        Outcome::Reject {
            rejection:
                Rejection::Unauthenticated {
                    login: Some(login), ..
                },
            ..
        } => assert!(login.starts_with("/login?return_to="), "{login}"),
        other => panic!("{other:?}"),
    }
    let api = f.decide("/web/page", &[(ACCEPT, "application/json")]).await;
    assert_eq!(f.status(&api), 401, "{api:?}");
    // A POST (a form) and a bearer token are never redirected.
    let post = f.send("POST", "/web/page", &[(ACCEPT, "text/html")]).await;
    assert_eq!(f.status(&post), 401, "{post:?}");
    let bearer = f
        .decide(
            "/web/page",
            &[(ACCEPT, "text/html"), (AUTHORIZATION, "Bearer x.y.z")],
        )
        .await;
    assert_eq!(f.status(&bearer), 401, "{bearer:?}");
    // Without `on_unauthenticated.redirect`, a browser gets 401 too.
    let plain = f.decide("/app/page", &[(ACCEPT, "text/html")]).await;
    assert_eq!(f.status(&plain), 401, "{plain:?}");
}

#[tokio::test]
async fn explain_shows_each_stage_and_cuts_every_id_to_a_prefix() {
    let f = fixture();
    let jwt = live_token();
    let explained = f
        .explain("/app/x", &[(AUTHORIZATION, &format!("Bearer {jwt}"))])
        .await;
    let shown = serde_json::to_string(&explained).unwrap() + &explained.to_string();
    let lookup = explained.lookup.as_ref().unwrap();
    assert_eq!(lookup.key, "token:b574...");
    let identity = &explained.session.as_ref().unwrap().identity;
    let token_id = identity.iter().find(|i| i.header == "x-token-id").unwrap();
    assert_eq!(token_id.value.as_deref(), Some("b574..."));
    assert!(!shown.contains(TOKEN_ID), "{shown}");
    assert!(!shown.contains(&jwt), "{shown}");

    // A session that lists its own id under an identity field.
    let explained = f.explain("/app/x", &[(COOKIE, &cookie(ALICE))]).await;
    let shown = serde_json::to_string(&explained).unwrap() + &explained.to_string();
    let identity = &explained.session.as_ref().unwrap().identity;
    let reference = identity
        .iter()
        .find(|i| i.header == "x-session-ref")
        .unwrap();
    assert_eq!(reference.value.as_deref(), Some("alic..."));
    let user_id = identity.iter().find(|i| i.header == "x-user-id").unwrap();
    assert_eq!(
        user_id.value.as_deref(),
        Some("1001"),
        "other values are shown"
    );
    assert!(!shown.contains(ALICE), "{shown}");
    assert_eq!(explained.decision.decision, "forwarded");
}

#[tokio::test]
async fn explain_leaves_no_last_known_good_state_behind() {
    let f = fixture();
    // Explain on a stale route does not make a session's last known good.
    let explained = f.explain("/stale/x", &[(COOKIE, &cookie(ALICE))]).await;
    assert_eq!(explained.decision.decision, "forwarded");
    f.store.down.store(true, Ordering::SeqCst);
    let stale = f.decide("/stale/x", &[(COOKIE, &cookie(ALICE))]).await;
    assert_eq!(reason(&stale), Some("store_unavailable"), "{stale:?}");
}
