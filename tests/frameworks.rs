//! The sessions other frameworks write, end to end: Flask-Session, Django,
//! PHP (phpredis) and @fastify/session, each from fixtures the real library
//! made (tests/fixtures/frameworks/, with its README), through the real
//! gateway and a real redis-server. For every variant: the live session is
//! let in with the user's identity, every cookie the app refused is
//! refused, and the sessions the frameworks keep for anonymous visitors
//! (some under ids the client chose) are not a login.

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use redis::Commands;
use serde_json::Value;
use support::{fixture, get, EchoUpstream, RedisServer, TestGateway};

struct App {
    redis: RedisServer,
    _upstream: EchoUpstream,
    gateway: TestGateway,
}

/// A gateway whose `[session]` is `session`, with `X-User-Id` and
/// `X-User-Email` read from `user` and `email`.
fn app(session: &str, user: &str, email: &str) -> App {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"

[session]
{session}

[identity.headers]
"X-User-Id" = "{user}"
"X-User-Email" = "{email}"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/"
upstream = "app"
show_error_details = true
"#,
        url = redis.url(),
        upstream = upstream.addr,
    ));
    App {
        redis,
        _upstream: upstream,
        gateway,
    }
}

impl App {
    /// Stores a value as the framework left it in Redis.
    fn store(&self, key: &str, value_base64: &str) {
        let bytes = STANDARD.decode(value_base64).unwrap();
        let _: () = self.redis.conn().set_ex(key, bytes, 600).unwrap();
    }

    fn store_entry(&self, entry: &Value) {
        self.store(
            entry["redis_key"].as_str().unwrap(),
            entry["redis_value_base64"].as_str().unwrap(),
        );
    }

    fn with_cookie(&self, cookie: &str) -> support::Response {
        get(
            self.gateway.addr,
            "/me",
            &[("Cookie", cookie), ("Accept", "application/json")],
        )
    }
}

fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// The variant's live session is let in as `user`; every cookie the app
/// refused is refused (401).
fn admits_valid_and_refuses_invalid(app: &App, variant: &Value, user: &str) {
    let name = str_of(variant, "name");
    let valid = &variant["valid"];
    app.store_entry(valid);
    let resp = app.with_cookie(str_of(valid, "cookie_header"));
    assert_eq!(resp.status, 200, "{name}: the live session was refused");
    assert_eq!(resp.echoed("X-User-Id"), [user], "{name}");
    for invalid in variant["invalid"].as_array().unwrap() {
        // See django_password_change, and Fastify's `secrets_override`
        // (the app configured with other secrets), tested apart.
        if invalid.get("redis_value_base64_before").is_some()
            || invalid.get("secrets_override").is_some()
        {
            continue;
        }
        let resp = app.with_cookie(str_of(invalid, "cookie_header"));
        assert_eq!(
            resp.status,
            401,
            "{name}: {} was let in",
            str_of(invalid, "why")
        );
    }
}

fn reason(resp: &support::Response) -> String {
    serde_json::from_str::<Value>(&resp.body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn variant<'f>(fx: &'f Value, name: &str) -> &'f Value {
    fx["variants"]
        .as_array()
        .unwrap()
        .iter()
        .chain(fx["legacy_variants"].as_array().into_iter().flatten())
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no variant {name}"))
}

#[test]
fn flask_session_msgpack_json_and_legacy_pickle() {
    let fx = fixture("frameworks/flask-session.json");
    let secret = fx["secrets"][0].as_str().unwrap();
    for (name, session) in [
        ("default-msgpack-unsigned", "preset = \"flask-session\"".to_owned()),
        ("json-unsigned", "preset = \"flask-session\"".to_owned()),
        (
            "msgpack-signed",
            format!("preset = \"flask-session\"\ncookie_format = \"flask_signed\"\nsecrets = [\"{secret}\"]"),
        ),
        ("legacy-0.5.0-pickle-unsigned", "preset = \"flask-session\"".to_owned()),
        (
            "legacy-0.5.0-pickle-signed",
            format!("preset = \"flask-session\"\ncookie_format = \"flask_signed\"\nsecrets = [\"{secret}\"]"),
        ),
    ] {
        let app = app(&session, "_user_id", "email");
        let v = variant(&fx, name);
        admits_valid_and_refuses_invalid(&app, v, "1001");
        assert_eq!(
            app.with_cookie(str_of(&v["valid"], "cookie_header"))
                .echoed("X-User-Email"),
            ["alice@example.test"],
            "{name}"
        );
        // Flask-Session 0.5 adopts an id the client chose and stores an
        // anonymous session under it: a key, not a login.
        if let Some(chosen) = v.get("unknown_client_chosen_id") {
            app.store_entry(&chosen["key"]);
            let resp = app.with_cookie(str_of(chosen, "cookie_header"));
            assert_eq!(resp.status, 401, "{name}: an anonymous session let in");
            assert_eq!(reason(&resp), "anonymous", "{}", resp.body);
        }
    }
}

#[test]
fn django_cache_and_cached_db_pickle_and_json() {
    let fx = fixture("frameworks/django.json");
    for (name, session) in [
        ("builtin-cache", "preset = \"django\""),
        (
            "builtin-cached_db",
            "preset = \"django\"\nkey = \":1:django.contrib.sessions.cached_db{id}\"",
        ),
        ("django-redis", "preset = \"django\""),
        ("django-redis-json", "preset = \"django\""),
    ] {
        let app = app(session, "_auth_user_id", "email");
        admits_valid_and_refuses_invalid(&app, variant(&fx, name), "1001");
        // An anonymous Django session (no `_auth_user_id`): not a login.
        let anonymous = serde_json::json!({"cart": [1, 2]}).to_string();
        let _: () = app
            .redis
            .conn()
            .set_ex(
                ":1:django.contrib.sessions.cacheanonymous00000000",
                anonymous,
                60,
            )
            .unwrap();
        let _: () = app
            .redis
            .conn()
            .set_ex(
                ":1:django.contrib.sessions.cached_dbanonymous00000000",
                serde_json::json!({"cart": [1]}).to_string(),
                60,
            )
            .unwrap();
        let resp = app.with_cookie("sessionid=anonymous00000000");
        assert_eq!(resp.status, 401, "{name}");
        assert_eq!(reason(&resp), "anonymous", "{name}: {}", resp.body);
    }
}

/// What the gateway cannot see: Django flushes a session whose
/// `_auth_user_hash` no longer matches the user's password hash on the
/// app's next request. Until then the key exists and looks valid; the
/// gateway lets it in (documented), the app then refuses it and deletes it.
#[test]
fn django_password_change_is_the_apps_to_notice() {
    let fx = fixture("frameworks/django.json");
    let v = variant(&fx, "builtin-cache");
    let changed = v["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i.get("redis_value_base64_before").is_some())
        .unwrap();
    let app = app("preset = \"django\"", "_auth_user_id", "email");
    app.store(
        str_of(changed, "redis_key"),
        str_of(changed, "redis_value_base64_before"),
    );
    assert_eq!(
        app.with_cookie(str_of(changed, "cookie_header")).status,
        200
    );
}

#[test]
fn php_sessions_in_both_serialize_handlers() {
    let fx = fixture("frameworks/php-redis.json");
    for (name, session) in [
        ("serialize_handler-php", "preset = \"php\""),
        ("use_strict_mode-1", "preset = \"php\""),
        (
            "serialize_handler-php_serialize",
            "preset = \"php\"\nvalue = \"php_serialize\"",
        ),
    ] {
        let app = app(session, "user.id", "user.email");
        let v = variant(&fx, name);
        admits_valid_and_refuses_invalid(&app, v, "1001");
        app.store_entry(&v["valid_bob"]);
        let resp = app.with_cookie(str_of(&v["valid_bob"], "cookie_header"));
        assert_eq!(resp.echoed("X-User-Id"), ["1002"], "{name}");
        // PHP without strict mode adopts an id the attacker chose and
        // stores an empty session under it.
        let chosen = &v["client_chosen_id"];
        if chosen["adopted"] == true {
            app.store_entry(&chosen["key"]);
            let resp = app.with_cookie(str_of(chosen, "cookie_header"));
            assert_eq!(resp.status, 401, "{name}: an adopted id let in");
            assert_eq!(reason(&resp), "anonymous", "{name}: {}", resp.body);
        }
    }
    // igbinary has no inert reader here: unreadable, never let in.
    let app = app("preset = \"php\"", "user.id", "user.email");
    let v = variant(&fx, "serialize_handler-igbinary");
    app.store_entry(&v["valid"]);
    let resp = app.with_cookie(str_of(&v["valid"], "cookie_header"));
    assert_eq!(resp.status, 401);
    assert_eq!(reason(&resp), "unreadable", "{}", resp.body);
    // Ids PHP never issues never name a key.
    for cookie in ["PHPSESSID=../../x", "PHPSESSID=a%20b", "PHPSESSID=a:b"] {
        assert_eq!(app.with_cookie(cookie).status, 401, "{cookie}");
    }
}

/// A value that would need code to decode (a PHP object, a pickle naming a
/// global) is never decoded: a session with no identity fields. With a
/// preset it is no login (no user); a route that only requires the session
/// to exist (`require_user = false`) lets it in, with no identity headers.
#[test]
fn values_that_need_code_are_sessions_without_fields() {
    let php_object = r#"user|O:8:"stdClass":1:{s:2:"id";i:1001;}"#.as_bytes();
    // os.system("true") at load time, as a pickle.
    let pickle_global = b"cos\nsystem\n(S'true'\ntR.";
    for (session, key, cookie, value) in [
        (
            "preset = \"php\"",
            "PHPREDIS_SESSION:gadget0000000000000000000a",
            "PHPSESSID=gadget0000000000000000000a",
            php_object,
        ),
        (
            "preset = \"django\"",
            ":1:django.contrib.sessions.cachegadget00000000",
            "sessionid=gadget00000000",
            &pickle_global[..],
        ),
    ] {
        for require_user in [true, false] {
            let table = format!("{session}\nrequire_user = {require_user}");
            let app = app(&table, "user.id", "_auth_user_id");
            let _: () = app.redis.conn().set_ex(key, value, 60).unwrap();
            let resp = app.with_cookie(cookie);
            if require_user {
                assert_eq!(resp.status, 401, "{session}");
                assert_eq!(reason(&resp), "anonymous", "{session}: {}", resp.body);
            } else {
                assert_eq!(resp.status, 200, "{session}: {}", resp.body);
                assert!(resp.echoed("X-User-Id").is_empty(), "{session}");
                assert!(resp.echoed("X-User-Email").is_empty(), "{session}");
            }
        }
    }
}

/// Replaces the stored `cookie.expires` of a Fastify session value.
fn with_expires(value_base64: &str, expires: &str) -> String {
    let mut doc: Value = serde_json::from_slice(&STANDARD.decode(value_base64).unwrap()).unwrap();
    doc["cookie"]["expires"] = Value::String(expires.to_owned());
    STANDARD.encode(doc.to_string())
}

#[test]
fn fastify_sessions_signed_and_expiring_by_their_stored_date() {
    let fx = fixture("frameworks/fastify-session.json");
    let secrets: Vec<String> = fx["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{s}"))
        .collect();
    let secrets = secrets.join(", ");
    let future = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    )
    .to_string();
    for (name, session) in [
        (
            "defaults",
            format!("preset = \"fastify\"\nsecrets = [{secrets}]"),
        ),
        (
            "express-compatible",
            format!(
                "preset = \"fastify\"\ncookie = \"connect.sid\"\ncookie_format = \"express\"\nsecrets = [{secrets}]"
            ),
        ),
    ] {
        let app = app(&session, "user.id", "user.email");
        let v = variant(&fx, name);
        let mut valid = v["valid"].clone();
        // The fixture's dates pass with time; the stored date is what counts.
        if valid["decoded"]["cookie"]["expires"].is_string() {
            valid["redis_value_base64"] =
                Value::String(with_expires(str_of(&valid, "redis_value_base64"), &future));
        }
        let mut v = v.clone();
        v["valid"] = valid.clone();
        admits_valid_and_refuses_invalid(&app, &v, "1001");
        // A session the app signed with the previous secret.
        let mut previous = v["signed_with_previous_secret"].clone();
        if previous["redis_value_text"]
            .as_str()
            .is_some_and(|t| t.contains("\"expires\":\""))
        {
            previous["redis_value_base64"] = Value::String(with_expires(
                str_of(&previous, "redis_value_base64"),
                &future,
            ));
        }
        app.store_entry(&previous);
        let resp = app.with_cookie(str_of(&previous, "cookie_header"));
        assert_eq!(resp.echoed("X-User-Id"), ["1002"], "{name}");
        // Under its defaults @fastify/session stores a session for every
        // anonymous visitor (with `saveUninitialized: false`, none).
        let anonymous = &v["anonymous_visit"];
        if !anonymous["key"].is_null() {
            app.store_entry(&anonymous["key"]);
            let set_cookie = anonymous["response"]["set_cookie"][0].as_str().unwrap();
            let cookie = set_cookie.split(';').next().unwrap();
            let resp = app.with_cookie(cookie);
            assert_eq!(resp.status, 401, "{name}: an anonymous visit let in");
            assert_eq!(reason(&resp), "anonymous", "{name}: {}", resp.body);
        }
        // Past its stored `cookie.expires` the app logs the user out: so
        // does the gateway, whatever the key's TTL says.
        app.store(
            str_of(&valid, "redis_key"),
            &with_expires(
                str_of(&valid, "redis_value_base64"),
                "2020-01-01T00:00:00.000Z",
            ),
        );
        // (The cached session is evicted by the overwrite within milliseconds.)
        let started = std::time::Instant::now();
        let resp = loop {
            let resp = app.with_cookie(str_of(&valid, "cookie_header"));
            if resp.status != 200 || started.elapsed() > std::time::Duration::from_secs(1) {
                break resp;
            }
        };
        assert_eq!(resp.status, 401, "{name}: a session past its date let in");
        assert_eq!(reason(&resp), "expired", "{name}: {}", resp.body);
        // The same cookie, to a gateway holding other secrets.
        for invalid in v["invalid"].as_array().unwrap() {
            let Some(other) = invalid.get("secrets_override") else {
                continue;
            };
            let other = app_with(&session, other);
            other.store_entry(&valid);
            let resp = other.with_cookie(str_of(invalid, "cookie_header"));
            assert_eq!(resp.status, 401, "{name}: {}", str_of(invalid, "why"));
            assert_eq!(reason(&resp), "bad_signature", "{name}: {}", resp.body);
        }
    }
}

/// `app` with `secrets` in place of the session table's.
fn app_with(session: &str, secrets: &Value) -> App {
    let list: Vec<String> = secrets
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{s}"))
        .collect();
    let session: String = session
        .lines()
        .map(|l| {
            if l.starts_with("secrets") {
                format!("secrets = [{}]", list.join(", "))
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    app(&session, "user.id", "user.email")
}

/// Existence-only profiles: Spring Session's base64 `SESSION` cookie and
/// Rails' `2::<sha256>` private ids, computed here by the documented
/// algorithm (no fixture: neither framework can be installed here).
#[test]
fn existence_only_sessions_through_an_id_transform() {
    let app = app(
        "cookie = \"SESSION\"\ncookie_format = \"plain\"\nkey = \"spring:session:sessions:{id}\"\nvalue = \"exists\"\nid_transform = \"base64\"",
        "user.id",
        "user.email",
    );
    let id = "6f1b3f0c-2d1e-4c55-9a0b-3f6c1f2e9d11";
    let _: () = app
        .redis
        .conn()
        .hset(format!("spring:session:sessions:{id}"), "creationTime", "1")
        .unwrap();
    let cookie = format!("SESSION={}", STANDARD.encode(id));
    assert_eq!(app.with_cookie(&cookie).status, 200);
    // The raw id is not the cookie; a cookie that is not base64 names nothing.
    assert_eq!(app.with_cookie(&format!("SESSION={id}")).status, 401);
    assert_eq!(app.with_cookie("SESSION=%%%").status, 401);
    let _: () = app
        .redis
        .conn()
        .del(format!("spring:session:sessions:{id}"))
        .unwrap();
    let started = std::time::Instant::now();
    while app.with_cookie(&cookie).status != 401 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "the DEL went unheard"
        );
    }

    let app = app_rails();
    let public = "a3f1c9e2b4d6e8f0a1b2c3d4e5f60718";
    use sha2::Digest;
    let private = format!("2::{:x}", sha2::Sha256::digest(public.as_bytes()));
    let _: () = app
        .redis
        .conn()
        .set_ex(format!("_session_id:{private}"), "\u{4}\u{8}{\u{0}", 60)
        .unwrap();
    assert_eq!(
        app.with_cookie(&format!("_myapp_session={public}")).status,
        200
    );
    // The private id itself, sent as the cookie, names no key.
    assert_eq!(
        app.with_cookie(&format!("_myapp_session={private}")).status,
        401
    );
}

fn app_rails() -> App {
    app(
        "cookie = \"_myapp_session\"\ncookie_format = \"plain\"\nkey = \"_session_id:{id}\"\nvalue = \"exists\"\nid_transform = \"rails\"",
        "user.id",
        "user.email",
    )
}

/// Logout at the edge ends the key the profile's `id_transform` names, not
/// one named by the raw cookie.
#[test]
fn logout_ends_the_key_an_id_transform_names() {
    let app = app(
        "cookie = \"SESSION\"\ncookie_format = \"plain\"\nkey = \"spring:session:sessions:{id}\"\nvalue = \"exists\"\nid_transform = \"base64\"\nlogout_path = \"/logout\"",
        "user.id",
        "user.email",
    );
    let id = "0c9d7a52-5d3c-4d43-8b1e-2a6f0a8b7c11";
    let key = format!("spring:session:sessions:{id}");
    let _: () = app.redis.conn().hset(&key, "creationTime", "1").unwrap();
    let cookie = format!("SESSION={}", STANDARD.encode(id));
    assert_eq!(app.with_cookie(&cookie).status, 200);
    let resp = support::request(
        app.gateway.addr,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("Content-Length", "0")],
    );
    assert!(resp.status == 204 || resp.status == 303, "{}", resp.status);
    let exists: bool = app.redis.conn().exists(&key).unwrap();
    assert!(!exists, "the transformed key outlived the logout");
}
