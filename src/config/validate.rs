//! Turns the text of `proxy.toml` into a validated [`Config`], reporting every
//! problem at once: syntax, `${VAR}` expansion, wrong types, unknown keys and
//! semantic checks, each with its dotted key path and `line:column`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::checker::Checker;
use super::env::expand_env;
use super::error::{line_col, ConfigError, ConfigErrors, Pending};
use super::file;
use super::keypath::Seg;
use super::model::Config;
use super::schema::fields_of;
use super::suggest::suggest;
use crate::runtime_paths;

/// Reads and validates the file at `path`, expanding `${VAR}` from the
/// process environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source_name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&source_name, &text, &|name| std::env::var(name).ok()),
        Err(err) => Err(ConfigErrors {
            source_name,
            errors: vec![ConfigError {
                path: String::new(),
                line: 0,
                column: 0,
                message: format!("cannot read the configuration file: {err}"),
            }],
        }),
    }
}

/// Validates `text` (the contents of `source_name`), looking `${VAR}`
/// references up with `env`, and `XDG_RUNTIME_DIR` too (it decides where
/// `pid_file` and `upgrade_sock` default to).
pub fn parse(
    source_name: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        source_name: source_name.to_owned(),
        errors,
    };
    let mut root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(err) => {
            let (line, column) = line_col(text, err.span().map_or(0, |span| span.start));
            return Err(fail(vec![ConfigError {
                path: String::new(),
                line,
                column,
                message: err.message().to_owned(),
            }]));
        }
    };

    let mut env_errors = Vec::new();
    for (key, value) in root.get_mut().iter_mut() {
        let mut path = vec![Seg::Key(key.get_ref().to_string())];
        expand_env(value, &mut path, env, &mut env_errors);
    }

    let mut checker = Checker {
        text,
        root: &root,
        errors: Vec::new(),
        quiet: HashSet::new(),
        base: Path::new(source_name)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        runtime_dir: runtime_paths::default_dir(
            env("XDG_RUNTIME_DIR").as_deref(),
            runtime_paths::current_uid(),
        ),
    };
    let config = checker.check();

    // A string whose `${VAR}` could not be expanded is reported once, for the
    // variable; whatever else is wrong with the unexpanded text is noise.
    let poisoned: HashSet<usize> = env_errors.iter().map(|e| e.offset).collect();
    let mut pending: Vec<Pending> = checker
        .errors
        .into_iter()
        .filter(|e| !poisoned.contains(&e.offset))
        .chain(env_errors)
        .collect();
    pending.sort_by_key(|e| e.offset);
    pending.dedup();

    match config {
        Some(config) if pending.is_empty() => Ok(config),
        _ => {
            let mut errors: Vec<ConfigError> = pending
                .into_iter()
                .map(|e| {
                    let (line, column) = line_col(text, e.offset);
                    ConfigError {
                        path: e.path,
                        line,
                        column,
                        message: e.message,
                    }
                })
                .collect();
            if errors.is_empty() {
                errors.push(ConfigError {
                    path: String::new(),
                    line: 1,
                    column: 1,
                    message: "invalid configuration".to_owned(),
                });
            }
            Err(fail(errors))
        }
    }
}

impl Checker<'_, '_> {
    /// Every section, in an order that lets later checks use earlier results
    /// (routes name upstreams, `[admin] listen` must differ from the public one).
    fn check(&mut self) -> Option<Config> {
        self.top_level();
        let server = self.server();
        let redis = self.redis();
        let session = self.session();
        let identity = self.identity();
        let profiles = self.profiles(session.as_ref(), identity.as_ref());
        let profile_names = self.profile_names();
        let (upstreams, names) = self.upstreams();
        let default_mode = self.rollout();
        let routes = self.routes(names.as_deref(), default_mode, &profile_names);
        let mut cache = self.cache();
        let jwt = self.jwt();
        if let (Some(cache), Some(profiles)) = (&mut cache, &profiles) {
            // What `[redis]`'s channel watches: the profiles kept there.
            let token_key = jwt.as_ref().and_then(|j| j.as_ref()).map(|j| &j.key);
            cache.tracked_prefixes = crate::session::tracking::prefixes(profiles, token_key, None);
        }
        let admin = self.admin(server.as_ref().map_or(&[][..], |s| &s.listen[..]));
        let rate_limit = self.rate_limit();
        let mut acme = self.acme(server.as_ref(), routes.as_deref().unwrap_or_default());
        // The fleet's keys in Redis never meet a session's (or token's) key.
        if let (Some(Some(acme)), Some(redis), Some(profiles)) = (&mut acme, &redis, &profiles) {
            acme.redis_url = redis.url.clone();
            self.acme_shared(acme, redis, profiles);
        }
        let tls = self.tls(
            server.as_ref().is_some_and(|s| !s.listen_tls.is_empty())
                // `[acme]` (even one with errors) serves the TLS listeners.
                && matches!(acme, Some(None)),
        );
        Some(Config {
            server: server?,
            redis: redis?,
            session: session?,
            identity: identity?,
            profiles: profiles?,
            upstreams: upstreams?,
            routes: routes?,
            cache: cache?,
            jwt: jwt?,
            admin: admin?,
            rate_limit: rate_limit?,
            acme: acme?,
            tls: tls.as_ref()?.0.clone(),
            tls_watch: tls?.1,
        })
    }

    /// Unknown tables and keys at the top of the file.
    fn top_level(&mut self) {
        let known = fields_of::<file::File>();
        for (key, value) in self.root.get_ref().iter() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let close = suggest(name, known.iter().copied());
            let is_table_array = matches!(value.get_ref(), DeValue::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.get_ref().is_table()));
            let mut message = if value.get_ref().is_table() {
                format!("unknown table [{name}]")
            } else if is_table_array {
                format!("unknown table [[{name}]]")
            } else {
                format!("unknown key `{name}`")
            };
            if let Some(close) = close {
                let _ = write!(message, "; did you mean `{close}`?");
                self.quiet.insert(close.to_owned());
            }
            let path = [Seg::Key(name.to_owned())];
            self.error_at(key.span().start, &path, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::*;
    use crate::config::server::same_listener;
    use std::time::Duration;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse("proxy.toml", text, &no_env) {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.errors,
        }
    }

    /// A valid config, with `extra` appended.
    fn minimal(extra: &str) -> String {
        format!(
            r#"[server]
listen = ["127.0.0.1:0"]

[redis]
url = "redis://127.0.0.1:6379/0"

[session]
secrets = ["s3cret"]

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000"]

[[route]]
path_prefix = "/"
upstream = "app"
{extra}"#
        )
    }

    const FULL: &str = r#"
[server]
listen = ["0.0.0.0:8080", "localhost:8081"]
threads = 2
grace_period = "1s"

[redis]
url = "rediss://user:pw@redis.internal:6380/2"
command_timeout = "250ms"

[session]
cookie = "sid"
secrets = ["one", "two"]
bearer = "opaque"
bearer_key = "api:{id}"
key = "app:{id}:data"
value = "hash"
role_field = "passport.user.role"

[identity.headers]
"X-User-Id" = "user.id"
"X-User-Email" = "user.email"
"a-role" = "user.role"

[admin]
listen = "127.0.0.1:9100"

[[upstream]]
name = "static"
addrs = ["127.0.0.1:4000"]

[[upstream]]
name = "app"
addrs = ["127.0.0.1:3000", "localhost:3001"]

[[route]]
name = "api"
host = "Example.COM:8443"
path_prefix = "/api"
upstream = "app"
roles = ["admin", "ops"]
on_unauthenticated = { redirect = "/login" }

[[route]]
path_prefix = "/assets"
upstream = "static"
access = "public"
"#;

    #[test]
    fn full_config_parses() {
        let config = parse("proxy.toml", FULL, &no_env).unwrap();
        let server = &config.server;
        assert_eq!(server.listen, ["0.0.0.0:8080", "localhost:8081"]);
        assert_eq!(server.threads, 2);
        assert_eq!(server.grace_period, Duration::from_secs(1));
        assert_eq!(server.graceful_shutdown_timeout, Duration::from_secs(10));
        let runtime_dir =
            crate::runtime_paths::default_dir(None, crate::runtime_paths::current_uid());
        assert_eq!(
            Path::new(&server.pid_file),
            runtime_dir.join("sessiongate.pid")
        );
        assert_eq!(
            Path::new(&server.upgrade_sock),
            runtime_dir.join("upgrade.sock")
        );
        assert_eq!(server.max_request_header_bytes, 65536);
        assert_eq!(server.request_head_timeout, Duration::from_secs(10));
        assert_eq!(server.body_idle_timeout, Duration::from_secs(60));
        assert_eq!(server.write_timeout, Duration::from_secs(30));
        assert_eq!(server.max_connections, 4096);
        assert_eq!(server.max_connections_per_ip, 256);

        assert_eq!(config.redis.url, "rediss://user:pw@redis.internal:6380/2");
        assert_eq!(config.redis.command_timeout, Duration::from_millis(250));
        assert_eq!(config.redis.connect_timeout, Duration::from_secs(1));

        let session = &config.session;
        assert_eq!(session.cookie, "sid");
        assert_eq!(session.cookie_format, CookieFormat::Express);
        assert_eq!(session.secrets, ["one", "two"]);
        assert_eq!(session.bearer, BearerMode::Opaque);
        assert_eq!(session.key.render("abc"), "app:abc:data");
        assert_eq!(session.value, ValueFormat::Hash);
        assert_eq!(session.role_field.segments(), ["passport", "user", "role"]);

        // File order, not alphabetical.
        let headers: Vec<&str> = config.identity.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(headers, ["x-user-id", "x-user-email", "a-role"]);
        assert_eq!(config.identity[0].field.to_string(), "user.id");

        assert_eq!(config.upstreams.len(), 2);
        assert_eq!(config.upstreams[1].name, "app");
        assert!(config.upstreams[1].addrs.len() >= 2);
        assert_eq!(
            config.upstreams[0].addrs,
            ["127.0.0.1:4000".parse().unwrap()]
        );

        let api = &config.routes[0];
        assert_eq!(api.name, "api");
        assert_eq!(api.host.as_deref(), Some("example.com"));
        assert_eq!(api.path_prefix, "/api");
        assert_eq!(api.upstream, 1);
        assert_eq!(api.access, Access::Authenticated);
        assert_eq!(api.roles, ["admin", "ops"]);
        assert_eq!(api.login_redirect.as_deref(), Some("/login"));

        let assets = &config.routes[1];
        assert_eq!(assets.name, "/assets");
        assert_eq!(assets.host, None);
        assert_eq!(assets.upstream, 0);
        assert_eq!(assets.access, Access::Public);
        assert!(assets.roles.is_empty());
        assert_eq!(assets.login_redirect, None);
    }

    #[test]
    fn connection_limits_and_timeouts_are_checked() {
        let text = minimal("").replacen(
            "listen = [\"127.0.0.1:0\"]\n",
            "listen = [\"127.0.0.1:0\"]\nrequest_head_timeout = \"0s\"\nwrite_timeout = \"soon\"\nmax_connections = -1\nmax_connections_per_ip = 0\nbody_idle_timeout = \"2s\"\n",
            1,
        );
        let errs = errors(&text);
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.path.as_str())).collect();
        assert_eq!(
            got,
            [
                (3, "server.request_head_timeout"),
                (4, "server.write_timeout"),
                (5, "server.max_connections"),
            ],
            "{errs:#?}"
        );
        let ok = minimal("").replacen(
            "listen = [\"127.0.0.1:0\"]\n",
            "listen = [\"127.0.0.1:0\"]\nmax_connections_per_ip = 0\nbody_idle_timeout = \"2s\"\n",
            1,
        );
        let server = parse("proxy.toml", &ok, &no_env).unwrap().server;
        assert_eq!(server.max_connections_per_ip, 0);
        assert_eq!(server.body_idle_timeout, Duration::from_secs(2));
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        assert!(config.server.threads >= 1);
        assert_eq!(config.server.grace_period, Duration::from_secs(5));
        assert_eq!(config.redis.command_timeout, Duration::from_millis(100));
        assert_eq!(config.session.cookie, "connect.sid");
        assert_eq!(config.session.bearer, BearerMode::Off);
        assert_eq!(config.session.value, ValueFormat::Json);
        assert_eq!(config.session.key.render("x"), "sess:x");
        assert_eq!(config.session.role_field.to_string(), "user.role");
        assert!(config.identity.is_empty());
        assert_eq!(config.routes[0].name, "/");
        assert_eq!(config.routes[0].access, Access::Authenticated);
    }

    #[test]
    fn three_mistakes_in_three_sections() {
        let text = r#"[server]
listn = ["0.0.0.0:8080"]

[redis]
url = "redis://127.0.0.1:6379"
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
        let errs = errors(text);
        let summary: Vec<(usize, usize, &str)> = errs
            .iter()
            .map(|e| (e.line, e.column, e.path.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (2, 1, "server.listn"),
                (6, 19, "redis.command_timeout"),
                (17, 12, "route[0].upstream"),
            ],
            "{errs:#?}"
        );
        assert_eq!(
            errs[0].message,
            "unknown key `listn`; did you mean `listen`?"
        );
        assert!(errs[1].message.contains("\"fast\""), "{}", errs[1].message);
        assert_eq!(
            errs[2].message,
            "no [[upstream]] is named \"ap\"; did you mean \"app\"?"
        );

        let rendered = ConfigErrors {
            source_name: "proxy.toml".to_owned(),
            errors: errs,
        }
        .to_string();
        let first = rendered.lines().next().unwrap();
        assert_eq!(
            first,
            "proxy.toml:2:1: server.listn: unknown key `listn`; did you mean `listen`?"
        );
        assert_eq!(rendered.lines().count(), 3);
    }

    #[test]
    fn syntax_error_reports_its_line() {
        let errs = errors("[server]\nlisten = [\"a:1\"]\nthreads = \n");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].line, 3);
        assert_eq!(errs[0].path, "");
    }

    #[test]
    fn env_vars_are_expanded_or_reported() {
        let env = |name: &str| (name == "REDIS_HOST").then(|| "10.0.0.7".to_owned());
        let text = minimal("")
            .replace("127.0.0.1:6379", "${REDIS_HOST}:6379")
            .replace("[\"s3cret\"]", "[\"${SESSION_SECRET}\"]");

        let errs = parse("proxy.toml", &text, &env).unwrap_err().errors;
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].line, 8);
        assert_eq!(errs[0].path, "session.secrets[0]");
        assert_eq!(
            errs[0].message,
            "environment variable SESSION_SECRET is not set"
        );

        let env = |name: &str| match name {
            "REDIS_HOST" => Some("10.0.0.7".to_owned()),
            "SESSION_SECRET" => Some("hunter2".to_owned()),
            _ => None,
        };
        let config = parse("proxy.toml", &text, &env).unwrap();
        assert_eq!(config.redis.url, "redis://10.0.0.7:6379/0");
        assert_eq!(config.session.secrets, ["hunter2"]);
    }

    #[test]
    fn unknown_top_level_table() {
        let errs = errors(&minimal(
            "\n[servr]\nx = 1\n\n[[routes]]\npath_prefix = \"/\"\n",
        ));
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("servr", "unknown table [servr]; did you mean `server`?"),
                ("routes", "unknown table [[routes]]; did you mean `route`?"),
            ]
        );
        assert_eq!(errs[0].line, 18);
        assert_eq!(errs[0].column, 2);
        assert_eq!(errs[1].line, 21);
    }

    #[test]
    fn admin_and_jwt_tables_are_accepted() {
        let text = minimal("\n[admin]\nlisten = \"127.0.0.1:9100\"\n");
        assert!(parse("proxy.toml", &text, &no_env).is_ok());
    }

    #[test]
    fn admin_table_is_checked() {
        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        assert_eq!(config.admin, AdminSettings::default());
        assert!(config.admin.access_log && config.admin.access_log_user);

        let text = minimal(
            "\n[admin]\nlisten = \"127.0.0.1:0\"\naccess_log_user = false\nmetrics_basic_auth = { username = \"prom\", password = \"pw\" }\n",
        );
        let admin = parse("proxy.toml", &text, &no_env).unwrap().admin;
        assert_eq!(admin.listen.as_deref(), Some("127.0.0.1:0"));
        assert!(!admin.access_log_user);
        assert_eq!(admin.metrics_basic_auth.unwrap().password, "pw");

        let text = minimal(
            "\n[admin]\nlistn = \"127.0.0.1:9100\"\nmetrics_basic_auth = { username = \"a:b\", pasword = \"x\" }\n",
        )
        .replace("127.0.0.1:0", "127.0.0.1:9100");
        let got: Vec<String> = errors(&text)
            .iter()
            .map(|e| format!("{}:{} {}: {}", e.line, e.column, e.path, e.message))
            .collect();
        assert_eq!(
            got,
            [
                "19:1 admin.listn: unknown key `listn`; did you mean `listen`?",
                "20:35 admin.metrics_basic_auth.username: must not contain `:` or control characters",
                "20:42 admin.metrics_basic_auth.pasword: unknown key `pasword`; did you mean `password`?",
            ],
            "{got:#?}"
        );

        let text =
            minimal("\n[admin]\nmetrics_basic_auth = { username = \"a\", password = \"b\" }\n");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "admin.metrics_basic_auth");
        assert_eq!(errs[0].message, "has no effect without `listen`");

        let text = minimal("\n[admin]\nlisten = \"0.0.0.0:9100\"\n")
            .replace("127.0.0.1:0", "127.0.0.1:9100");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!((errs[0].line, errs[0].path.as_str()), (19, "admin.listen"));
        assert!(errs[0].message.contains("server.listen[0]"));
        assert!(same_listener("localhost:80", "LOCALHOST:80"));
        assert!(!same_listener("127.0.0.1:0", "127.0.0.1:0"));
        assert!(!same_listener("127.0.0.1:80", "127.0.0.2:80"));
    }

    /// A config with `bearer = "jwt"`; `jwt` is the body of its [jwt] table,
    /// which starts on line 20.
    fn with_jwt(jwt: &str) -> String {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n\n\
             [session]\ncookie_format = \"plain\"\nbearer = \"jwt\"\n\n[[upstream]]\nname = \"app\"\n\
             addrs = [\"127.0.0.1:3000\"]\n\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n\n\
             [jwt]\n{jwt}"
        )
    }

    fn jwt_fixture() -> serde_json::Value {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/jwt.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn jwt_table_compiles_keys_from_files_next_to_the_config() {
        let fx = jwt_fixture();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        let pem = fx["rs256_public_key_pem"].as_str().unwrap();
        std::fs::write(dir.path().join("keys/key.pem"), pem).unwrap();
        std::fs::write(dir.path().join("jwks.json"), fx["jwks"].to_string()).unwrap();
        let text = with_jwt(
            "algorithms = [\"HS256\", \"RS256\"]\nsecret = \"${JWT_SECRET}\"\n\
             public_key_file = \"keys/key.pem\"\njwks_file = \"jwks.json\"\n",
        );
        let source = dir.path().join("proxy.toml");
        let env = |name: &str| (name == "JWT_SECRET").then(|| "fixture-jwt-hs256-secret".into());
        let config = parse(&source.display().to_string(), &text, &env).unwrap();
        assert_eq!(config.session.bearer, BearerMode::Jwt);
        let jwt = config.jwt.expect("jwt settings");
        assert_eq!(jwt.key.render("abc"), "token:abc");
        assert_eq!(jwt.verifier.id_claim(), "tokenId");
        for case in fx["valid"].as_array().unwrap() {
            let token = case["token"].as_str().unwrap();
            let verified = jwt.verifier.verify(token).unwrap();
            assert_eq!(
                jwt.key.render(verified.id.as_str()),
                case["redis_key"].as_str().unwrap()
            );
        }
        // The secret never shows in the compiled configuration's Debug.
        assert!(!format!("{:?}", jwt.verifier).contains("fixture-jwt-hs256-secret"));

        let custom = with_jwt(
            "algorithms = [\"HS512\"]\nsecret = \"s\"\nid_claim = \"jti\"\nkey = \"app:{id}:tok\"\n\
             issuer = \"https://id.example\"\naudience = \"api\"\nleeway = \"0s\"\n",
        );
        let jwt = parse("proxy.toml", &custom, &no_env).unwrap().jwt.unwrap();
        assert_eq!(jwt.key.render("1"), "app:1:tok");
        assert_eq!(jwt.verifier.id_claim(), "jti");
    }

    #[test]
    fn jwt_mistakes_are_reported_with_their_keys_and_lines() {
        let text = with_jwt(
            "algorithms = [\"HS256\", \"none\", \"RS257\", \"ES256\"]\n\
             public_key_file = \"/nonexistent/key.pem\"\nkey = \"token\"\nleeway = \"2h\"\n\
             issuer = \"\"\nextra = 1\n",
        );
        let got: Vec<String> = errors(&text)
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.column, e.path))
            .collect();
        assert_eq!(
            got,
            [
                "19:1 jwt.secret",
                "20:24 jwt.algorithms[1]",
                "20:32 jwt.algorithms[2]",
                "21:19 jwt.public_key_file",
                "22:7 jwt.key",
                "23:10 jwt.leeway",
                "24:10 jwt.issuer",
                "25:1 jwt.extra",
            ],
            "{got:#?}"
        );
        let errs = errors(&text);
        assert!(
            errs[1].message.contains("never accepted"),
            "{}",
            errs[1].message
        );
        assert!(
            errs[2].message.contains("unknown algorithm"),
            "{}",
            errs[2].message
        );
        assert!(
            errs[3].message.contains("cannot read"),
            "{}",
            errs[3].message
        );
    }

    /// `minimal()` with `session` added to its `[session]` table (line 8 on).
    fn with_session(session: &str) -> String {
        minimal("").replace(
            "secrets = [\"s3cret\"]\n",
            &format!("secrets = [\"s3cret\"]\n{session}\n"),
        )
    }

    #[test]
    fn opaque_bearer_ids_have_a_key_of_their_own() {
        let config = parse(
            "proxy.toml",
            &with_session("bearer = \"opaque\"\nbearer_key = \"api:{id}\""),
            &no_env,
        )
        .unwrap();
        let bearer_key = config.session.bearer_key.expect("bearer key");
        assert_eq!(bearer_key.render("abc"), "api:abc");
        assert_eq!(config.session.key.render("abc"), "sess:abc");

        // No bearer_key: the operator has to choose.
        let errs = errors(&with_session("bearer = \"opaque\""));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "session.bearer_key");
        assert!(
            errs[0].message.contains("same_as_cookie"),
            "{}",
            errs[0].message
        );

        // Reusing the signed cookie's keys needs the explicit opt-in.
        for bearer_key in [
            "same_as_cookie",
            "sess:{id}",
            "{id}",
            "se{id}",
            "sess:x{id}",
        ] {
            let text = format!("bearer = \"opaque\"\nbearer_key = \"{bearer_key}\"");
            let errs = errors(&with_session(&text));
            assert_eq!(errs.len(), 1, "{bearer_key}: {errs:#?}");
            assert_eq!(
                (errs[0].path.as_str(), errs[0].line),
                ("session.bearer_key", 10),
                "{bearer_key}"
            );
            assert!(
                errs[0].message.contains("allow_unsigned_bearer = true"),
                "{}",
                errs[0].message
            );
            let allowed = with_session(&format!("{text}\nallow_unsigned_bearer = true"));
            let config = parse("proxy.toml", &allowed, &no_env).unwrap();
            let key = config.session.bearer_key.unwrap();
            assert!(key.overlaps(&config.session.key), "{bearer_key}");
        }
        let same = parse(
            "proxy.toml",
            &with_session(
                "bearer = \"opaque\"\nbearer_key = \"same_as_cookie\"\nallow_unsigned_bearer = true",
            ),
            &no_env,
        )
        .unwrap();
        assert_eq!(same.session.bearer_key, Some(same.session.key.clone()));

        // Plain cookies are bare ids already: nothing to opt into.
        let plain = with_session(
            "cookie_format = \"plain\"\nbearer = \"opaque\"\nbearer_key = \"same_as_cookie\"",
        );
        let config = parse("proxy.toml", &plain, &no_env).unwrap();
        assert_eq!(config.session.bearer_key, Some(config.session.key.clone()));

        let errs = errors(&with_session("bearer = \"opaque\"\nbearer_key = \"api\""));
        assert_eq!(errs[0].path, "session.bearer_key");
        assert!(errs[0].message.contains("{id}"), "{}", errs[0].message);

        let errs = errors(&with_session(
            "bearer_key = \"api:{id}\"\nallow_unsigned_bearer = true",
        ));
        let paths: Vec<_> = errs.iter().map(|e| (e.path.as_str(), e.line)).collect();
        assert_eq!(
            paths,
            [
                ("session.bearer_key", 9),
                ("session.allow_unsigned_bearer", 10)
            ]
        );
    }

    #[test]
    fn key_templates_overlap_when_one_id_can_stand_for_another() {
        let t = |s: &str| KeyTemplate::parse(s, "{id}").unwrap();
        assert!(t("sess:{id}").overlaps(&t("sess:{id}")));
        assert!(t("sess:{id}").overlaps(&t("{id}")));
        assert!(t("sess:{id}").overlaps(&t("sess:api:{id}")));
        assert!(t("a{id}:x").overlaps(&t("ab{id}")));
        assert!(!t("sess:{id}").overlaps(&t("api:{id}")));
        assert!(t("sess:{id}").overlaps(&t("sess:{id}:api")));
        assert!(!t("{id}:a").overlaps(&t("{id}:b")));
    }

    #[test]
    fn shared_rate_limits() {
        let config = parse(
            "proxy.toml",
            &minimal(
                "\n[rate_limit]\nfailed_auth_per_ip = { burst = 5, per = \"1m\" }\nshared = true\n",
            ),
            &no_env,
        )
        .unwrap();
        assert!(config.rate_limit.shared);
        assert!(
            !parse("proxy.toml", &minimal(""), &no_env)
                .unwrap()
                .rate_limit
                .shared
        );
        let errs = errors(&minimal(
            "\n[rate_limit]\nrequests_per_user = { burst = 5, per = \"1m\" }\nshared = true\n",
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(
            (errs[0].path.as_str(), errs[0].line),
            ("rate_limit.shared", 20)
        );
    }

    #[test]
    fn jwt_claim_rules_and_audiences() {
        let text = with_jwt(
            "algorithms = [\"HS256\"]\nsecret = \"s\"\naudience = [\"api\", \"web\"]\n\
             typ = \"JWT\"\n\n[jwt.claims]\ntype = \"access\"\nrole = [\"admin\", \"viewer\"]\n\
             scope = { contains = [\"read\"] }\nlevel = 2\n",
        );
        let config = parse("proxy.toml", &text, &no_env).unwrap();
        let shown = format!("{:?}", config.jwt.unwrap().verifier);
        for want in [
            "Equals(String(\"access\"))",
            "OneOf(",
            "Contains([String(\"read\")])",
            "typ: Some(\"JWT\")",
        ] {
            assert!(shown.contains(want), "{want}: {shown}");
        }
        let errs = errors(&with_jwt(
            "algorithms = [\"HS256\"]\nsecret = \"s\"\naudience = []\ntyp = \"\"\n\n\
             [jwt.claims]\nscope = { contains = \"read\" }\ngroups = [[\"a\"]]\n\"\" = \"x\"\n",
        ));
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "jwt.audience",
                "jwt.typ",
                "jwt.claims.scope.contains",
                "jwt.claims.groups[0]",
                "jwt.claims.\"\"",
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn bearer_jwt_and_the_jwt_table_go_together() {
        let text = with_jwt("");
        let without_table = text.split("\n[jwt]\n").next().unwrap().to_owned();
        let errs = errors(&without_table);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!((errs[0].path.as_str(), errs[0].line), ("session.bearer", 9));
        assert!(errs[0].message.contains("needs a [jwt] table"));

        let opaque = with_jwt("algorithms = [\"HS256\"]\nsecret = \"s\"\n").replace(
            "bearer = \"jwt\"",
            "bearer = \"opaque\"\nbearer_key = \"same_as_cookie\"",
        );
        let errs = errors(&opaque);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!((errs[0].path.as_str(), errs[0].line), ("jwt", 20));
    }

    #[test]
    fn every_listed_algorithm_needs_a_key_that_fits_it() {
        let errs = errors(&with_jwt("algorithms = [\"RS256\"]\n"));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "jwt.algorithms[0]");
        assert!(errs[0].message.contains("no key can verify it"));

        let errs = errors(&with_jwt("algorithms = []\n"));
        assert_eq!(errs[0].path, "jwt.algorithms");

        let dir = tempfile::tempdir().unwrap();
        let fx = jwt_fixture();
        let pem = dir.path().join("rsa.pem");
        std::fs::write(&pem, fx["rs256_public_key_pem"].as_str().unwrap()).unwrap();
        let private = dir.path().join("private.pem");
        std::fs::write(
            &private,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
        let cases = [
            (
                format!(
                    "algorithms = [\"ES256\"]\npublic_key_file = {:?}\n",
                    pem.display()
                ),
                "jwt.public_key_file",
                "none of `algorithms` uses",
            ),
            (
                format!(
                    "algorithms = [\"RS256\"]\npublic_key_file = {:?}\n",
                    private.display()
                ),
                "jwt.public_key_file",
                "private key",
            ),
            (
                format!(
                    "algorithms = [\"RS256\"]\njwks_file = {:?}\n",
                    jwks.display()
                ),
                "jwt.jwks_file",
                "no RSA, EC",
            ),
            (
                format!(
                    "algorithms = [\"RS256\"]\npublic_key_file = {:?}\nsecret = \"s\"\n",
                    pem.display()
                ),
                "jwt.secret",
                "lists no HS algorithm",
            ),
        ];
        for (body, path, message) in cases {
            let errs = errors(&with_jwt(&body));
            assert!(
                errs.iter()
                    .any(|e| e.path == path && e.message.contains(message)),
                "{body}: {errs:#?}"
            );
        }
    }

    #[test]
    fn duplicate_upstream_name() {
        let errs = errors(&minimal(
            "\n[[upstream]]\nname = \"app\"\naddrs = [\"127.0.0.1:3001\"]\n",
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "upstream[1].name");
        assert_eq!(errs[0].line, 19);
        assert_eq!(
            errs[0].message,
            "duplicate upstream name \"app\" (first used on line 10)"
        );
    }

    #[test]
    fn bad_header_names() {
        let errs = errors(&minimal(
            "\n[identity.headers]\n\"X-User Id\" = \"user.id\"\n\"Cookie\" = \"user.c\"\n\"X-Role\" = \"user.role\"\n\"x_role\" = \"user.role\"\n\"X-Ok\" = \"user..id\"\n",
        ));
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.path.as_str())).collect();
        assert_eq!(
            got,
            [
                (19, "identity.headers.\"X-User Id\""),
                (20, "identity.headers.Cookie"),
                (22, "identity.headers.x_role"),
                (23, "identity.headers.X-Ok"),
            ],
            "{errs:#?}"
        );
        assert!(errs[0].message.contains("not a valid header name"));
        assert!(errs[1].message.contains("cannot be set"));
        assert_eq!(
            errs[2].message,
            "\"x_role\" is the same header as \"X-Role\" (line 21)"
        );
        assert!(errs[3].message.contains("dotted field path"));
    }

    #[test]
    fn key_without_placeholder() {
        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\nkey = \"sess:\"",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!((errs[0].line, errs[0].column), (9, 7));
        assert_eq!(errs[0].path, "session.key");
        assert_eq!(
            errs[0].message,
            "\"sess:\" must contain `{id}` exactly once"
        );
        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\nkey = \"{id}:{id}\"",
        );
        assert_eq!(errors(&text)[0].path, "session.key");
    }

    #[test]
    fn store_failure_keys() {
        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        assert_eq!(config.redis.breaker_failures, 5);
        assert_eq!(config.redis.breaker_cooldown, Duration::from_secs(1));
        assert_eq!(config.cache.stale_for, Duration::from_secs(30));
        assert_eq!(config.routes[0].on_store_error, StoreErrorPolicy::Deny);

        let url = "url = \"redis://127.0.0.1:6379/0\"\n";
        let text = minimal("on_store_error = \"stale\"\n\n[cache]\nstale_for = \"5s\"\n").replace(
            url,
            &format!("{url}breaker_failures = 2\nbreaker_cooldown = \"250ms\"\n"),
        );
        let config = parse("proxy.toml", &text, &no_env).unwrap();
        assert_eq!(config.redis.breaker_failures, 2);
        assert_eq!(config.redis.breaker_cooldown, Duration::from_millis(250));
        assert_eq!(config.cache.stale_for, Duration::from_secs(5));
        assert_eq!(config.routes[0].on_store_error, StoreErrorPolicy::Stale);

        let text = minimal("on_store_error = \"later\"\n\n[cache]\nstale_for = \"0s\"\n").replace(
            url,
            &format!("{url}breaker_failures = 0\nbreaker_cooldown = \"2m\"\n"),
        );
        let mut got: Vec<(usize, usize, String)> = errors(&text)
            .into_iter()
            .map(|e| (e.line, e.column, e.path))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (6, 20, "redis.breaker_failures".to_owned()),
                (7, 20, "redis.breaker_cooldown".to_owned()),
                (19, 18, "route[0].on_store_error".to_owned()),
                (22, 13, "cache.stale_for".to_owned()),
            ]
        );
        let errs = errors(&minimal(
            "access = \"public\"\non_store_error = \"stale\"\n",
        ));
        assert_eq!(errs[0].path, "route[0].on_store_error", "{errs:#?}");
    }

    #[test]
    fn enum_and_type_errors() {
        let text = r#"[server]
listen = "0.0.0.0:80"
threads = "4"

[redis]
url = "http://localhost"

[session]
cookie_format = "expres"
bearer = "jwt"

[[upstream]]
name = "app"
addrs = ["127.0.0.1"]

[[route]]
path_prefix = "api"
upstream = "app"
access = "public"
roles = ["admin", 3]
on_unauthenticated = { redirect = "//evil.example", colour = "red" }
"#;
        let errs = errors(text);
        let got: Vec<String> = errs
            .iter()
            .map(|e| format!("{}:{} {}: {}", e.line, e.column, e.path, e.message))
            .collect();
        assert_eq!(
            got,
            [
                "2:10 server.listen: expected a list of strings, found a string",
                "3:11 server.threads: expected an integer, found a string",
                "6:7 redis.url: must start with redis://, rediss://, unix:// or redis+unix://",
                "9:17 session.cookie_format: unknown value \"expres\", expected one of \"express\", \"plain\", \"fastify\", \"flask_signed\"",
                "10:10 session.bearer: bearer = \"jwt\" needs a [jwt] table (its `algorithms`, and a `secret`, `public_key_file` or `jwks_file`)",
                "14:10 upstream[0].addrs[0]: \"127.0.0.1\" has no port (expected host:port)",
                "17:15 route[0].path_prefix: \"api\" must start with \"/\"",
                "20:19 route[0].roles[1]: expected a string, found an integer",
                "21:35 route[0].on_unauthenticated.redirect: \"//evil.example\" must be a path starting with \"/\" (not \"//\") or an absolute http(s) URL",
                "21:53 route[0].on_unauthenticated.colour: unknown key `colour`",
            ],
            "{got:#?}"
        );
    }

    #[test]
    fn route_modes_default_from_rollout_and_are_checked() {
        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        assert_eq!(config.routes[0].mode, RouteMode::Enforce);
        assert!(!config.routes[0].show_error_details);
        assert!(crate::config::warnings(&config).is_empty());

        // `[rollout] mode` is the default; a route's own `mode` wins; public
        // routes have nothing to report.
        let text = minimal(
            r#"show_error_details = true

[[route]]
name = "api"
path_prefix = "/api/"
upstream = "app"
mode = "enforce"

[[route]]
name = "pub"
path_prefix = "/pub/"
upstream = "app"
access = "public"

[[route]]
name = "open"
path_prefix = "/open/"
upstream = "app"
report_store_unavailable = "forward"

[rollout]
mode = "report"
"#,
        );
        let config = parse("proxy.toml", &text, &no_env).unwrap();
        let modes: Vec<RouteMode> = config.routes.iter().map(|r| r.mode).collect();
        use RouteMode::{Enforce, Report};
        assert_eq!(modes, [Report, Enforce, Enforce, Report]);
        assert!(config.routes[0].show_error_details);
        assert_eq!(
            config.routes[3].report_store_unavailable,
            ReportStoreUnavailable::Forward
        );
        assert_eq!(
            config.routes[0].report_store_unavailable,
            ReportStoreUnavailable::Deny
        );
        let warnings = crate::config::warnings(&config);
        assert_eq!(warnings.len(), 3, "{warnings:#?}");
        assert!(warnings[0].starts_with("route \"/\" is in report mode"));
        assert!(warnings[2].contains("report_store_unavailable"));

        let errs = errors(&minimal(
            r#"mode = "shadow"

[[route]]
name = "pub"
path_prefix = "/pub/"
upstream = "app"
access = "public"
mode = "report"
show_error_details = true

[[route]]
name = "e"
path_prefix = "/e/"
upstream = "app"
report_store_unavailable = "forward"

[rollout]
mode = "dry-run"
"#,
        ));
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.path.as_str())).collect();
        assert_eq!(
            got,
            [
                (17, "route[0].mode"),
                (24, "route[1].mode"),
                (25, "route[1].show_error_details"),
                // Not route[2].report_store_unavailable: its mode is unknown.
                (34, "rollout.mode"),
            ],
            "{errs:#?}"
        );
        assert!(
            errs[0].message.contains(r#""enforce", "report""#),
            "{errs:#?}"
        );
    }

    #[test]
    fn explain_needs_the_admin_basic_auth() {
        let errs = errors(&minimal(
            "\n[admin]\nlisten = \"127.0.0.1:0\"\nexplain = true\n",
        ));
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "admin.explain");
        assert!(errs[0].message.contains("metrics_basic_auth"));
        let config = parse(
            "proxy.toml",
            &minimal(
                "\n[admin]\nlisten = \"127.0.0.1:0\"\nexplain = true\n\
                 metrics_basic_auth = { username = \"ops\", password = \"pw\" }\n",
            ),
            &no_env,
        )
        .unwrap();
        assert!(config.admin.explain);
        assert!(
            !parse("proxy.toml", &minimal(""), &no_env)
                .unwrap()
                .admin
                .explain
        );
    }

    #[test]
    fn roles_on_public_route_and_duplicate_route_names() {
        let errs = errors(&minimal(
            "access = \"public\"\nroles = [\"a\"]\n\n[[route]]\nhost = \"a.example\"\npath_prefix = \"/\"\nupstream = \"app\"\n",
        ));
        let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.path.as_str())).collect();
        assert_eq!(
            got,
            [(18, "route[0].roles"), (20, "route[1].name")],
            "{errs:#?}"
        );
    }

    #[test]
    fn route_hosts_are_kept_in_the_form_request_hosts_are_compared_in() {
        let vhost = |host: &str| {
            minimal(&format!(
                "\n[[route]]\nname = \"v\"\nhost = {host:?}\npath_prefix = \"/\"\nupstream = \"app\"\n"
            ))
        };
        for (written, kept) in [
            ("A.Test.", "a.test"),
            ("a.test.:8443", "a.test"),
            ("[::1]:8080", "[::1]"),
        ] {
            let config = parse("proxy.toml", &vhost(written), &no_env).unwrap();
            assert_eq!(config.routes[1].host.as_deref(), Some(kept), "{written}");
        }
        for written in ["a..test", "a!b.test", "user@a.test", "a.test:x", ""] {
            let errs = errors(&vhost(written));
            let got: Vec<(&str, &str)> = errs
                .iter()
                .map(|e| (e.path.as_str(), e.message.as_str()))
                .collect();
            let want = format!("{written:?} is not a valid host name");
            assert_eq!(got, [("route[1].host", want.as_str())], "{written}");
        }
    }

    #[test]
    fn pid_file_and_upgrade_sock_default_to_the_users_runtime_dir() {
        let env = |name: &str| (name == "XDG_RUNTIME_DIR").then(|| "/run/user/42".to_owned());
        let server = parse("proxy.toml", &minimal(""), &env).unwrap().server;
        assert_eq!(server.pid_file, "/run/user/42/sessiongate/sessiongate.pid");
        assert_eq!(server.upgrade_sock, "/run/user/42/sessiongate/upgrade.sock");
        // Never a directory every local user can write.
        let server = parse("proxy.toml", &minimal(""), &no_env).unwrap().server;
        assert!(
            !server.pid_file.starts_with("/tmp/sessiongate."),
            "{}",
            server.pid_file
        );
        assert!(
            !server.upgrade_sock.starts_with("/tmp/sessiongate_"),
            "{}",
            server.upgrade_sock
        );
        // Keys that are set win.
        let text = minimal("").replacen(
            "[server]\n",
            "[server]\npid_file = \"/var/run/g.pid\"\nupgrade_sock = \"/var/run/g.sock\"\n",
            1,
        );
        let server = parse("proxy.toml", &text, &env).unwrap().server;
        assert_eq!(
            (server.pid_file.as_str(), server.upgrade_sock.as_str()),
            ("/var/run/g.pid", "/var/run/g.sock")
        );
    }

    #[test]
    fn missing_sections() {
        let errs = errors("[server]\nlisten = []\n");
        let got: Vec<(usize, usize, &str)> = errs
            .iter()
            .map(|e| (e.line, e.column, e.path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 1, "redis"),
                (1, 1, "session"),
                (1, 1, "upstream"),
                (1, 1, "route"),
                (2, 10, "server.listen"),
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn logout_and_user_set_keys() {
        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        let session = &config.session;
        assert_eq!(session.logout_path, None);
        assert_eq!(session.user_field.to_string(), "user.id");
        assert_eq!(session.user_sessions_key, None);
        assert_eq!(session.cookie_path, "/");
        assert_eq!(session.cookie_domain, None);

        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\nlogout_path = \"/auth/logout\"\nlogout_all_path = \"/auth/all\"\n\
             logout_redirect = \"/bye\"\nuser_field = \"passport.user\"\n\
             user_sessions_key = \"u:{user}:s\"\ncookie_path = \"/app\"\ncookie_domain = \".ex.test\"",
        );
        let session = parse("proxy.toml", &text, &no_env).unwrap().session;
        assert_eq!(session.logout_path.as_deref(), Some("/auth/logout"));
        assert_eq!(session.logout_all_path.as_deref(), Some("/auth/all"));
        assert_eq!(session.logout_redirect.as_deref(), Some("/bye"));
        assert_eq!(session.user_field.to_string(), "passport.user");
        assert_eq!(
            session.user_sessions_key.map(|k| k.render("7")),
            Some("u:7:s".to_owned())
        );
        assert_eq!(session.cookie_path, "/app");
        assert_eq!(session.cookie_domain.as_deref(), Some(".ex.test"));

        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\nlogout_path = \"/a/../out\"\nlogout_all_path = \"out-all\"\n\
             logout_redirect = \"//evil.example\"\nuser_field = \"user..id\"\n\
             user_sessions_key = \"u:{id}\"\nuser_tokens_key = \"t:{user}\"\n\
             cookie_path = \"app\"\ncookie_domain = \"a b\"",
        );
        let got: Vec<String> = errors(&text)
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.column, e.path))
            .collect();
        assert_eq!(
            got,
            [
                "9:15 session.logout_path",
                "10:19 session.logout_all_path",
                "11:19 session.logout_redirect",
                "12:14 session.user_field",
                "13:21 session.user_sessions_key",
                "14:19 session.user_tokens_key",
                "15:15 session.cookie_path",
                "16:17 session.cookie_domain",
            ]
        );

        // logout_all_path needs a set to find the user's sessions; the two paths differ.
        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\nlogout_path = \"/out\"\nlogout_all_path = \"/out\"",
        );
        let errs = errors(&text);
        let messages: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(errs.iter().all(|e| e.path == "session.logout_all_path"));
        assert!(messages.contains(&"must differ from `logout_path`"));
        assert!(messages
            .iter()
            .any(|m| m.contains("needs `user_sessions_key`")));

        let text = minimal("").replace(
            "secrets = [\"s3cret\"]",
            "secrets = [\"s\"]\ncookie = \"__Host-sid\"\ncookie_domain = \"ex.test\"\n\
             logout_redirect = \"/bye\"",
        );
        let got: Vec<(String, String)> = errors(&text)
            .into_iter()
            .map(|e| (e.path, e.message))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "session.cookie_domain".to_owned(),
                    "a `__Host-` cookie cannot have a Domain".to_owned()
                ),
                (
                    "session.logout_redirect".to_owned(),
                    "has no effect without `logout_path` or `logout_all_path`".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn load_reports_io_errors() {
        let err = load(Path::new("/nonexistent/proxy.toml")).unwrap_err();
        assert_eq!(err.errors.len(), 1);
        assert_eq!((err.errors[0].line, err.errors[0].column), (0, 0));
        assert!(err
            .to_string()
            .starts_with("/nonexistent/proxy.toml: cannot read"));
    }

    fn with_redis(redis: &str) -> String {
        minimal("").replace(
            "[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n",
            &format!("[redis]\n{redis}\n"),
        )
    }

    #[test]
    fn redis_sentinel_and_cluster_modes() {
        let text = with_redis(
            "mode = \"sentinel\"\nsentinels = [\"10.0.0.1:26379\", \"s2:26379\"]\n\
             master = \"mymaster\"\nusername = \"gw\"\npassword = \"pw\"",
        );
        let config = parse("proxy.toml", &text, &no_env).unwrap();
        assert_eq!(
            config.redis.topology,
            RedisTopology::Sentinel {
                sentinels: vec!["10.0.0.1:26379".into(), "s2:26379".into()],
                master: "mymaster".into(),
            }
        );
        assert_eq!(
            config.redis.url,
            "redis+sentinel://10.0.0.1:26379,s2:26379/mymaster"
        );
        assert_eq!(config.redis.username.as_deref(), Some("gw"));
        assert_eq!(config.redis.password.as_deref(), Some("pw"));

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("redis");
        std::fs::write(&secret, "from-file\n").unwrap();
        let text = with_redis(&format!(
            "mode = \"cluster\"\nnodes = [\"n1:7000\", \"n2:7001\"]\ntls = true\npassword_file = {:?}",
            secret.display().to_string()
        ));
        let config = parse("proxy.toml", &text, &no_env).unwrap();
        assert_eq!(
            config.redis.topology,
            RedisTopology::Cluster {
                nodes: vec!["n1:7000".into(), "n2:7001".into()]
            }
        );
        assert_eq!(config.redis.url, "rediss+cluster://n1:7000,n2:7001");
        assert_eq!(config.redis.password.as_deref(), Some("from-file"));
        assert!(config.redis.tls);

        let config = parse("proxy.toml", &minimal(""), &no_env).unwrap();
        assert_eq!(config.redis.topology, RedisTopology::Standalone);
        assert!(!config.redis.tls);
    }

    #[test]
    fn redis_mode_mistakes_name_their_keys() {
        let render = |text: &str| -> Vec<String> {
            errors(text)
                .iter()
                .map(|e| format!("{}:{} {}: {}", e.line, e.column, e.path, e.message))
                .collect()
        };
        let got = render(&with_redis(
            "mode = \"sentinel\"\nurl = \"redis://x:1\"\nnodes = [\"a:1\"]\nsentinels = [\"nope\"]",
        ));
        assert_eq!(got, [
            "4:1 redis.master: missing required key `master`",
            "6:7 redis.url: not used with this mode: list the servers in `sentinels` (sentinel) or `nodes` (cluster), credentials in `username`/`password`",
            "7:9 redis.nodes: only with mode = \"cluster\"",
            "8:14 redis.sentinels[0]: must be host:port",
        ], "{got:#?}");
        let got = render(&with_redis(
            "mode = \"cluster\"\nnodes = []\nmaster = \"m\"",
        ));
        assert_eq!(
            got,
            [
                "6:9 redis.nodes: must list at least one node",
                "7:10 redis.master: only with mode = \"sentinel\"",
            ],
            "{got:#?}"
        );
        let got = render(&with_redis(
            "url = \"redis://h:1\"\ntls = true\npassword = \"a\"\npassword_file = \"/nonexistent\"\nmode = \"ring\"",
        ));
        assert_eq!(got, [
            "8:17 redis.password_file: set either `password` or `password_file`, not both",
            "9:8 redis.mode: unknown value \"ring\", expected one of \"standalone\", \"sentinel\", \"cluster\"",
        ], "{got:#?}");
        let got = render(&with_redis(
            "mode = \"sentinel\"\nsentinels = [\"s:26379\"]",
        ));
        assert_eq!(
            got,
            ["4:1 redis.master: missing required key `master`",],
            "{got:#?}"
        );
        let got = render(&with_redis(
            "url = \"redis://h:1\"\npassword_file = \"/nonexistent/redis\"",
        ));
        assert_eq!(got, [
            "6:17 redis.password_file: cannot read /nonexistent/redis: No such file or directory (os error 2)",
        ], "{got:#?}");
    }
}
