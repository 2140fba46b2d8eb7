//! Several apps behind one gateway: a Node shop (express-session, the
//! `default` profile), a Django back office and a PHP admin, each with its
//! own cookie, key layout, value format and identity headers, routed by
//! path, on one Redis. A credential is only ever checked under its route's
//! profile; logout acts on that profile only; `check` refuses profiles whose
//! keys could meet; `explain` names the profile.

mod support;

use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use redis::Commands;
use serde_json::Value;
use support::{fixture, get, request, EchoUpstream, RedisServer, TestGateway};

const EXPRESS_SECRET: &str = "profiles-test-express-secret";

fn config(redis: &RedisServer, upstream: &EchoUpstream) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{url}"

[session]
secrets = ["{EXPRESS_SECRET}"]

[identity.headers]
"X-User-Id" = "user.id"

[profiles.backoffice]
preset = "django"
logout_path = "/backoffice/logout"
cookie_path = "/backoffice"

[profiles.backoffice.identity.headers]
"X-User-Id" = "_auth_user_id"
"X-Staff-Email" = "email"

[profiles.admin]
preset = "php"

[profiles.admin.identity.headers]
"X-User-Id" = "user.id"
"X-Admin-Role" = "user.role"

[profiles.plain]
cookie = "sid"
cookie_format = "plain"
key = "plain:{{id}}"

[profiles.plain.identity.headers]
"X-User-Id" = "user.id"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
name = "backoffice"
path_prefix = "/backoffice/"
upstream = "app"
profile = "backoffice"
show_error_details = true

[[route]]
name = "admin"
path_prefix = "/admin/"
upstream = "app"
profile = "admin"
show_error_details = true

[[route]]
name = "plain"
path_prefix = "/plain/"
upstream = "app"
profile = "plain"

[[route]]
name = "shop"
path_prefix = "/"
upstream = "app"
show_error_details = true
"#,
        url = redis.url(),
        upstream = upstream.addr,
    )
}

struct Edge {
    redis: RedisServer,
    _upstream: EchoUpstream,
    gateway: TestGateway,
}

fn edge() -> Edge {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&config(&redis, &upstream));
    Edge {
        redis,
        _upstream: upstream,
        gateway,
    }
}

/// The three apps' live sessions, as each framework stored them; their cookies.
struct Cookies {
    shop: String,
    backoffice: String,
    admin: String,
}

fn sessions(e: &Edge) -> Cookies {
    let mut conn = e.redis.conn();
    let _: () = conn
        .set_ex(
            "sess:shopper01",
            r#"{"cookie":{},"user":{"id":"c-7"}}"#,
            600,
        )
        .unwrap();
    let shop = format!(
        "connect.sid={}",
        sessiongate::credential::cookie::express_sign("shopper01", EXPRESS_SECRET)
    );
    let django = fixture("frameworks/django.json");
    let valid = &django["variants"][0]["valid"];
    let bytes = STANDARD
        .decode(valid["redis_value_base64"].as_str().unwrap())
        .unwrap();
    let _: () = conn
        .set_ex(valid["redis_key"].as_str().unwrap(), bytes, 600)
        .unwrap();
    let php = fixture("frameworks/php-redis.json");
    let pvalid = &php["variants"][0]["valid"];
    let _: () = conn
        .set_ex(
            pvalid["redis_key"].as_str().unwrap(),
            pvalid["redis_value_text"].as_str().unwrap(),
            600,
        )
        .unwrap();
    Cookies {
        shop,
        backoffice: valid["cookie_header"].as_str().unwrap().to_owned(),
        admin: pvalid["cookie_header"].as_str().unwrap().to_owned(),
    }
}

fn at(e: &Edge, path: &str, headers: &[(&str, &str)]) -> support::Response {
    get(e.gateway.addr, path, headers)
}

#[test]
fn each_app_gets_its_own_sessions_and_identity_headers() {
    let e = edge();
    let c = sessions(&e);
    let shop = at(&e, "/cart", &[("Cookie", &c.shop)]);
    assert_eq!(shop.status, 200);
    assert_eq!(shop.echoed("X-User-Id"), ["c-7"]);
    let back = at(&e, "/backoffice/users", &[("Cookie", &c.backoffice)]);
    assert_eq!(back.status, 200);
    assert_eq!(back.echoed("X-User-Id"), ["1001"]);
    assert_eq!(back.echoed("X-Staff-Email"), ["alice@example.test"]);
    let admin = at(&e, "/admin/", &[("Cookie", &c.admin)]);
    assert_eq!(admin.status, 200);
    assert_eq!(admin.echoed("X-User-Id"), ["1001"]);
    assert_eq!(admin.echoed("X-Admin-Role"), ["admin"]);
    // Every profile's identity headers are the gateway's own: a client's
    // copies never reach any app, whichever profile serves the request.
    let forged = at(
        &e,
        "/cart",
        &[
            ("Cookie", &c.shop),
            ("X-Staff-Email", "ceo@example.test"),
            ("X-Admin-Role", "admin"),
            ("x_admin_role", "admin"),
        ],
    );
    assert_eq!(forged.status, 200);
    assert!(forged.echoed("X-Staff-Email").is_empty());
    assert!(forged.echoed("X-Admin-Role").is_empty());
}

#[test]
fn a_cookie_of_one_app_never_admits_another() {
    let e = edge();
    let c = sessions(&e);
    let all = format!("{}; {}; {}", c.shop, c.backoffice, c.admin);
    // Each route reads only its own profile's cookie, even with all three.
    for (path, who) in [
        ("/cart", "c-7"),
        ("/backoffice/x", "1001"),
        ("/admin/x", "1001"),
    ] {
        let resp = at(&e, path, &[("Cookie", &all)]);
        assert_eq!(resp.echoed("X-User-Id"), [who], "{path}");
    }
    for (path, cookie) in [
        ("/cart", &c.backoffice),
        ("/cart", &c.admin),
        ("/backoffice/x", &c.shop),
        ("/backoffice/x", &c.admin),
        ("/admin/x", &c.shop),
        ("/admin/x", &c.backoffice),
    ] {
        let resp = at(
            &e,
            path,
            &[("Cookie", cookie), ("Accept", "application/json")],
        );
        assert_eq!(resp.status, 401, "{cookie} let in on {path}");
    }
    // The same id under two apps' cookies: found only under the route's own
    // key template. `plain:` and `sess:` both hold "shared01"; the shop's
    // signed cookie and the plain profile's cookie each admit only their own.
    let _: () = e
        .redis
        .conn()
        .set_ex("plain:shared01", r#"{"user":{"id":"p-1"}}"#, 600)
        .unwrap();
    let _: () = e
        .redis
        .conn()
        .set_ex("sess:shared01", r#"{"user":{"id":"s-1"}}"#, 600)
        .unwrap();
    let plain = at(&e, "/plain/x", &[("Cookie", "sid=shared01")]);
    assert_eq!(plain.echoed("X-User-Id"), ["p-1"]);
    // The shop's cookie must be signed: the plain id is nothing there.
    let shop = at(
        &e,
        "/cart",
        &[
            ("Cookie", "connect.sid=shared01"),
            ("Accept", "application/json"),
        ],
    );
    assert_eq!(shop.status, 401);
    // Gone from its own key, it is gone (the cache hears the DEL within
    // milliseconds), though `sess:shared01` still exists.
    let _: () = e.redis.conn().del("plain:shared01").unwrap();
    let started = std::time::Instant::now();
    loop {
        let plain = at(
            &e,
            "/plain/x",
            &[("Cookie", "sid=shared01"), ("Accept", "application/json")],
        );
        if plain.status == 401 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "found under the other app's key"
        );
    }
}

#[test]
fn logout_ends_the_session_of_the_routes_profile_only() {
    let e = edge();
    let c = sessions(&e);
    let all = format!("{}; {}", c.shop, c.backoffice);
    let resp = request(
        e.gateway.addr,
        "POST",
        "/backoffice/logout",
        &[("Cookie", &all), ("Content-Length", "0")],
    );
    assert!(
        resp.status == 204 || resp.status == 303,
        "{} {}",
        resp.status,
        resp.body
    );
    // Django's key is gone and its cookie cleared on its path; the shop's
    // session stands.
    let set_cookie = resp.header("set-cookie").unwrap_or_default().to_owned();
    assert!(set_cookie.starts_with("sessionid="), "{set_cookie}");
    assert!(set_cookie.contains("Path=/backoffice"), "{set_cookie}");
    assert_eq!(
        at(&e, "/backoffice/x", &[("Cookie", &c.backoffice)]).status,
        401
    );
    assert_eq!(at(&e, "/cart", &[("Cookie", &c.shop)]).status, 200);
}

#[test]
fn explain_names_the_profile() {
    let e = edge();
    let c = sessions(&e);
    let out = Command::new(support::gateway::binary())
        .args(["explain", "-c"])
        .arg(&e.gateway.config_path)
        .args([
            "--url",
            "http://app.test/backoffice/users",
            "--cookie",
            &c.backoffice,
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let end = stdout.rfind("\n}").expect("JSON") + 2;
    let doc: Value = serde_json::from_str(&stdout[..end]).unwrap();
    assert_eq!(doc["route"]["profile"], "backoffice");
    assert_eq!(doc["decision"]["decision"], "forwarded", "{doc}");
    assert_eq!(
        doc["session"]["identity"][1]["header"], "x-staff-email",
        "{doc}"
    );
}

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(support::gateway::binary())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_profiles_whose_keys_could_meet() {
    let redis = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let good = config(&redis, &upstream);
    assert!(check(&good).0, "{}", check(&good).1);
    // The plain profile's keys inside the shop's.
    let bad = good.replace("key = \"plain:{id}\"", "key = \"sess:plain-{id}\"");
    let (ok, stderr) = check(&bad);
    assert!(!ok);
    assert!(
        stderr.contains("profiles.plain.key") && stderr.contains("can name the same Redis keys"),
        "{stderr}"
    );
    // A route naming a profile that does not exist.
    let (ok, stderr) = check(&good.replace("profile = \"admin\"", "profile = \"admn\""));
    assert!(!ok);
    assert!(
        stderr.contains("route[1].profile") && stderr.contains("unknown profile \"admn\""),
        "{stderr}"
    );
    // A profile key the session table does not know, with its line.
    let (ok, stderr) = check(&good.replace("preset = \"php\"", "preset = \"php\"\ncookei = \"x\""));
    assert!(!ok);
    assert!(stderr.contains("profiles.admin.cookei"), "{stderr}");
}

/// A profile whose sessions are in a Redis of its own: found only there,
/// cached with that Redis's own invalidation channel (a DEL there is heard),
/// and free to use the same key template as a profile on another Redis.
#[test]
fn a_profile_with_its_own_redis_reads_and_hears_only_that_redis() {
    let main = RedisServer::start();
    let own = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{main}"

[session]
cookie = "sid"
cookie_format = "plain"

[identity.headers]
"X-User-Id" = "user.id"

[profiles.other]
cookie = "osid"
cookie_format = "plain"

[profiles.other.identity.headers]
"X-Other-User" = "user.id"

[profiles.other.redis]
url = "{own}"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/other/"
upstream = "app"
profile = "other"

[[route]]
path_prefix = "/"
upstream = "app"
"#,
        main = main.url(),
        own = own.url(),
        upstream = upstream.addr,
    ));
    let _: () = own
        .conn()
        .set_ex("sess:o1", r#"{"user":{"id":"o-1"}}"#, 600)
        .unwrap();
    let _: () = main
        .conn()
        .set_ex("sess:m1", r#"{"user":{"id":"m-1"}}"#, 600)
        .unwrap();
    let at = |path: &str, cookie: &str| {
        get(
            gateway.addr,
            path,
            &[("Cookie", cookie), ("Accept", "application/json")],
        )
    };
    assert_eq!(at("/other/x", "osid=o1").echoed("X-Other-User"), ["o-1"]);
    assert_eq!(at("/x", "sid=m1").echoed("X-User-Id"), ["m-1"]);
    // Each id is found only in its profile's Redis.
    assert_eq!(at("/other/x", "osid=m1").status, 401);
    assert_eq!(at("/x", "sid=o1").status, 401);
    // Served from the cache once that Redis's channel is up...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        at("/other/x", "osid=o1");
        let before = own.calls("get");
        at("/other/x", "osid=o1");
        if own.calls("get") == before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the profile's cache never went live"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // ... and a DEL there is heard at once.
    let _: () = own.conn().del("sess:o1").unwrap();
    let started = std::time::Instant::now();
    while at("/other/x", "osid=o1").status != 401 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "the profile's Redis's DEL went unheard"
        );
    }
    assert_eq!(at("/x", "sid=m1").status, 200);
}

/// `session` commands act on the profile named by `--profile`: its key
/// template, its value format, its Redis.
#[test]
fn the_session_cli_acts_on_a_named_profile() {
    let e = edge();
    let c = sessions(&e);
    let cli = |args: &[&str]| {
        Command::new(support::gateway::binary())
            .arg("session")
            .args(args)
            .arg("-c")
            .arg(&e.gateway.config_path)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let php_id = c.admin.split('=').nth(1).unwrap();
    let out = cli(&["show", "--profile", "admin", php_id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("alice@example.test"), "{stdout}");
    let django_id = c.backoffice.split('=').nth(1).unwrap();
    // Not a session of the default profile.
    assert!(!cli(&["revoke", django_id]).status.success());
    assert_eq!(
        at(&e, "/backoffice/x", &[("Cookie", &c.backoffice)]).status,
        200
    );
    let out = cli(&["revoke", "--profile", "backoffice", django_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = std::time::Instant::now();
    while at(&e, "/backoffice/x", &[("Cookie", &c.backoffice)]).status != 401 {
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
    assert!(!cli(&["show", "--profile", "nope", "x"]).status.success());
}

/// The README's three-app `proxy.toml` is a valid configuration.
#[test]
fn the_readmes_three_app_config_checks() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Apps behind one gateway")
        .nth(1)
        .expect("the README's section");
    let toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("its proxy.toml");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(support::gateway::binary())
        .args(["check", "-c"])
        .arg(&path)
        .env("SESSION_SECRET", "readme-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Three profiles on two Redis servers: each app's cookie admits only its
/// own routes, even with the same id planted under every other template;
/// `revoke-user` on one profile leaves the others' sessions of that user.
#[test]
fn three_profiles_on_two_redis_servers() {
    let main = RedisServer::start();
    let own = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let gateway = TestGateway::start(&format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{main}"

[session]
cookie = "asid"
cookie_format = "plain"
key = "a:{{id}}"
user_sessions_key = "au:{{user}}"

[identity.headers]
"X-User-Id" = "user.id"

[profiles.b]
cookie = "bsid"
cookie_format = "plain"
key = "b:{{id}}"
user_sessions_key = "bu:{{user}}"

[profiles.b.identity.headers]
"X-User-Id" = "user.id"

[profiles.c]
cookie = "csid"
cookie_format = "plain"
key = "c:{{id}}"
user_sessions_key = "cu:{{user}}"

[profiles.c.identity.headers]
"X-User-Id" = "user.id"

[profiles.c.redis]
url = "{own}"

[[upstream]]
name = "app"
addrs = ["{upstream}"]

[[route]]
path_prefix = "/b/"
upstream = "app"
profile = "b"

[[route]]
path_prefix = "/c/"
upstream = "app"
profile = "c"

[[route]]
path_prefix = "/a/"
upstream = "app"
"#,
        main = main.url(),
        own = own.url(),
        upstream = upstream.addr,
    ));
    let value = r#"{"user":{"id":"u1"}}"#;
    // The id k1 under every template, in both servers; u1's sets list it.
    for redis in [&main, &own] {
        let mut conn = redis.conn();
        for p in ["a", "b", "c"] {
            let _: () = conn.set_ex(format!("{p}:k1"), value, 600).unwrap();
            let _: () = conn.sadd(format!("{p}u:u1"), "k1").unwrap();
        }
    }
    let status = |path: &str, cookie: &str| {
        get(
            gateway.addr,
            path,
            &[("Cookie", cookie), ("Accept", "application/json")],
        )
        .status
    };
    for (route, own_cookie) in [("/a/x", "asid"), ("/b/x", "bsid"), ("/c/x", "csid")] {
        for cookie in ["asid", "bsid", "csid"] {
            let want = if cookie == own_cookie { 200 } else { 401 };
            assert_eq!(
                status(route, &format!("{cookie}=k1")),
                want,
                "{cookie} on {route}"
            );
        }
    }
    // An id that exists only under another profile's template (or in the
    // other Redis) is nothing here.
    let _: () = main.conn().set_ex("a:k2", value, 600).unwrap();
    let _: () = main.conn().set_ex("c:k3", value, 600).unwrap();
    assert_eq!(status("/b/x", "bsid=k2"), 401);
    assert_eq!(
        status("/c/x", "csid=k3"),
        401,
        "read c's key from the wrong Redis"
    );
    assert_eq!(status("/a/x", "asid=k2"), 200);
    // revoke-user on profile b: b's sessions of u1 end, a's and c's stay.
    let out = Command::new(support::gateway::binary())
        .args(["session", "revoke-user", "--profile", "b", "u1", "-c"])
        .arg(&gateway.config_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = std::time::Instant::now();
    while status("/b/x", "bsid=k1") != 401 {
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
    assert_eq!(status("/a/x", "asid=k1"), 200);
    assert_eq!(status("/c/x", "csid=k1"), 200);
}

/// A reload that adds a profile (with a Redis of its own) serves it at
/// once, and the sessions the other profiles had cached stay cached.
#[test]
fn a_reload_that_adds_a_profile_keeps_the_others_cached_sessions() {
    let main = RedisServer::start();
    let own = RedisServer::start();
    let upstream = EchoUpstream::start("127.0.0.1:0").unwrap();
    let base = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
threads = 1

[redis]
url = "{main}"

[session]
cookie = "sid"
cookie_format = "plain"

[identity.headers]
"X-User-Id" = "user.id"

[[upstream]]
name = "app"
addrs = ["{upstream}"]
"#,
        main = main.url(),
        upstream = upstream.addr,
    );
    let routes = "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
    let gateway = TestGateway::start(&(base.clone() + routes));
    let _: () = main
        .conn()
        .set_ex("sess:kept1", r#"{"user":{"id":"k-1"}}"#, 600)
        .unwrap();
    let at = |path: &str, cookie: &str| get(gateway.addr, path, &[("Cookie", cookie)]);
    // Cached (the channel is up once a second request reads no Redis).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        at("/x", "sid=kept1");
        let before = main.calls("get");
        at("/x", "sid=kept1");
        if main.calls("get") == before {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never cached");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _: () = own
        .conn()
        .set_ex("sess:new1", r#"{"user":{"id":"n-1"}}"#, 600)
        .unwrap();
    let added = format!(
        "{base}\n[profiles.added]\ncookie = \"nsid\"\ncookie_format = \"plain\"\n\n\
         [profiles.added.identity.headers]\n\"X-New-User\" = \"user.id\"\n\n\
         [profiles.added.redis]\nurl = \"{own}\"\n\n\
         [[route]]\npath_prefix = \"/new/\"\nupstream = \"app\"\nprofile = \"added\"\n{routes}",
        own = own.url()
    );
    std::fs::write(&gateway.config_path, added).unwrap();
    gateway.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while at("/new/x", "nsid=new1").status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the added profile is not served:\n{}",
            gateway.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(at("/new/x", "nsid=new1").echoed("X-New-User"), ["n-1"]);
    // The default profile's session is still served from the cache.
    let before = main.calls("get");
    for _ in 0..5 {
        assert_eq!(at("/x", "sid=kept1").echoed("X-User-Id"), ["k-1"]);
    }
    assert_eq!(main.calls("get"), before, "the reload emptied the cache");
}
