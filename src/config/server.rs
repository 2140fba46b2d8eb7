//! The checks of `[server]`, `[admin]` and `[cache]`.

use std::net::SocketAddr;
use std::time::Duration;

use super::checker::Checker;
use super::file;
use super::keypath::{fmt_path, idx, sub, Seg};
use super::model::{AdminSettings, BasicAuth, CacheSettings, ServerSettings};
use super::values::is_listen_addr;
use crate::runtime_paths;

impl<'r, 't> Checker<'r, 't> {
    pub(super) fn server(&mut self) -> Option<ServerSettings> {
        let path = [Seg::Key("server".to_owned())];
        if self.lookup(&path).is_none() {
            self.missing(
                &path,
                "missing required table [server] (it must set `listen`)",
            );
            return None;
        }
        let f: file::Server = self.section(&path)?;

        let listen_path = sub(&path, "listen");
        self.string_list(&listen_path, f.listen.as_deref(), "address");
        let listen = f.listen.unwrap_or_default();
        for (i, addr) in listen.iter().enumerate() {
            if !is_listen_addr(addr) {
                self.error(
                    &idx(&listen_path, i),
                    format!("{addr:?} is not a host:port address"),
                );
            }
        }

        let tls_path = sub(&path, "listen_tls");
        // Optional; an empty list is the same as none.
        let listen_tls = f.listen_tls.unwrap_or_default();
        for (i, addr) in listen_tls.iter().enumerate() {
            if !is_listen_addr(addr) {
                self.error(
                    &idx(&tls_path, i),
                    format!("{addr:?} is not a host:port address"),
                );
            }
        }
        let https_port = listen_tls
            .first()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
            .filter(|port| *port != 0)
            .unwrap_or(443);

        let threads = match f.threads {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) => match usize::try_from(n) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.error(&sub(&path, "threads"), "must be at least 1");
                    1
                }
            },
        };
        let grace_period = self.duration(
            &sub(&path, "grace_period"),
            f.grace_period.as_deref(),
            Duration::from_secs(5),
            true,
        );
        let graceful_shutdown_timeout = self.duration(
            &sub(&path, "graceful_shutdown_timeout"),
            f.graceful_shutdown_timeout.as_deref(),
            Duration::from_secs(10),
            true,
        );
        // A directory only this user can write: see `runtime_paths`.
        let in_runtime_dir = |name| self.runtime_dir.join(name).to_string_lossy().into_owned();
        let (default_pid, default_sock) = (
            in_runtime_dir(runtime_paths::PID_FILE_NAME),
            in_runtime_dir(runtime_paths::UPGRADE_SOCK_NAME),
        );
        let pid_file = self.non_empty(&sub(&path, "pid_file"), f.pid_file, &default_pid);
        let upgrade_sock =
            self.non_empty(&sub(&path, "upgrade_sock"), f.upgrade_sock, &default_sock);
        let max_request_header_bytes = match f.max_request_header_bytes {
            None => 65536,
            Some(n) => match usize::try_from(n) {
                Ok(n) if n >= 1024 => n,
                _ => {
                    self.error(
                        &sub(&path, "max_request_header_bytes"),
                        "must be at least 1024",
                    );
                    65536
                }
            },
        };
        use crate::route::target::{NonCanonicalPaths, PathParameters, TargetPolicy};
        let non_canonical_paths = self.choice(
            &sub(&path, "non_canonical_paths"),
            f.non_canonical_paths.as_deref(),
            NonCanonicalPaths::Rewrite,
            &[
                ("rewrite", NonCanonicalPaths::Rewrite),
                ("reject", NonCanonicalPaths::Reject),
            ],
        );
        let path_parameters = self.choice(
            &sub(&path, "path_parameters"),
            f.path_parameters.as_deref(),
            PathParameters::Reject,
            &[
                ("reject", PathParameters::Reject),
                ("allow", PathParameters::Allow),
            ],
        );
        let request_head_timeout = self.duration(
            &sub(&path, "request_head_timeout"),
            f.request_head_timeout.as_deref(),
            Duration::from_secs(10),
            false,
        );
        let body_idle_timeout = self.duration(
            &sub(&path, "body_idle_timeout"),
            f.body_idle_timeout.as_deref(),
            Duration::from_secs(60),
            false,
        );
        let write_timeout = self.duration(
            &sub(&path, "write_timeout"),
            f.write_timeout.as_deref(),
            Duration::from_secs(30),
            false,
        );
        let h2_request_timeout = self.duration(
            &sub(&path, "h2_request_timeout"),
            f.h2_request_timeout.as_deref(),
            Duration::from_secs(300),
            false,
        );
        let hsts = match f.hsts.as_deref() {
            None | Some("") => None,
            Some(text) => match http::HeaderValue::from_str(text) {
                Ok(value)
                    if text
                        .trim_start()
                        .to_ascii_lowercase()
                        .starts_with("max-age=") =>
                {
                    Some(value)
                }
                _ => {
                    self.error(
                        &sub(&path, "hsts"),
                        format!("{text:?} is not a Strict-Transport-Security value (it starts with max-age=<seconds>)"),
                    );
                    None
                }
            },
        };
        let mut limit = |key: &str, value: Option<i64>, default: usize| match value {
            None => default,
            Some(n) => usize::try_from(n).unwrap_or_else(|_| {
                self.error(&sub(&path, key), "must be 0 (no limit) or more");
                default
            }),
        };
        let max_connections = limit("max_connections", f.max_connections, 4096);
        let max_connections_per_ip = limit("max_connections_per_ip", f.max_connections_per_ip, 256);
        let keepalive_requests = limit("keepalive_requests", f.keepalive_requests, 1000);
        let h2_max_concurrent_streams = limit(
            "h2_max_concurrent_streams",
            f.h2_max_concurrent_streams,
            100,
        );
        let max_streams_per_ip = limit("max_streams_per_ip", f.max_streams_per_ip, 512);
        Some(ServerSettings {
            target: TargetPolicy {
                non_canonical_paths: non_canonical_paths?,
                path_parameters: path_parameters?,
            },
            listen,
            listen_tls,
            threads,
            grace_period,
            graceful_shutdown_timeout,
            pid_file,
            upgrade_sock,
            max_request_header_bytes,
            request_head_timeout,
            body_idle_timeout,
            write_timeout,
            max_connections,
            max_connections_per_ip,
            keepalive_requests,
            h2_max_concurrent_streams,
            max_streams_per_ip,
            h2_request_timeout,
            https_redirect: f.https_redirect.unwrap_or(false),
            https_port,
            hsts,
        })
    }

    /// `[admin]`: optional; without it there is no admin listener and the
    /// access log is on.
    pub(super) fn admin(&mut self, public: &[String]) -> Option<AdminSettings> {
        let path = [Seg::Key("admin".to_owned())];
        let defaults = AdminSettings::default();
        if self.lookup(&path).is_none() {
            return Some(defaults);
        }
        let f: file::Admin = self.section(&path)?;
        let mut ok = true;

        let listen_path = sub(&path, "listen");
        let listen = match f.listen {
            Some(addr) if !is_listen_addr(&addr) => {
                self.error(&listen_path, format!("{addr:?} is not a host:port address"));
                ok = false;
                None
            }
            Some(addr) => {
                if let Some(i) = public.iter().position(|p| same_listener(p, &addr)) {
                    self.error(
                        &listen_path,
                        format!(
                            "{addr:?} is also a public listen address (server.listen[{i}]); \
                             the admin listener needs its own"
                        ),
                    );
                    ok = false;
                }
                Some(addr)
            }
            None => None,
        };

        let auth_path = sub(&path, "metrics_basic_auth");
        let metrics_basic_auth = match f.metrics_basic_auth {
            None => None,
            Some(auth) => {
                let user_path = sub(&auth_path, "username");
                let pass_path = sub(&auth_path, "password");
                match &auth.username {
                    None => self.missing_key(&user_path),
                    Some(u) if u.is_empty() => self.error(&user_path, "must not be empty"),
                    Some(u) if u.contains(':') || u.chars().any(char::is_control) => {
                        self.error(&user_path, "must not contain `:` or control characters")
                    }
                    Some(_) => {}
                }
                match &auth.password {
                    None => self.missing_key(&pass_path),
                    Some(p) if p.is_empty() => self.error(&pass_path, "must not be empty"),
                    Some(_) => {}
                }
                if listen.is_none() && !self.quiet.contains(&fmt_path(&listen_path)) {
                    self.error(&auth_path, "has no effect without `listen`");
                }
                match (auth.username, auth.password) {
                    (Some(username), Some(password)) => Some(BasicAuth { username, password }),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
        };

        let explain = f.explain.unwrap_or(defaults.explain);
        if explain && metrics_basic_auth.is_none() && ok {
            self.error(
                &sub(&path, "explain"),
                "needs `metrics_basic_auth`: /explain is never served without credentials",
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(AdminSettings {
            explain,
            listen,
            metrics_basic_auth,
            access_log: f.access_log.unwrap_or(defaults.access_log),
            access_log_user: f.access_log_user.unwrap_or(defaults.access_log_user),
        })
    }

    pub(super) fn cache(&mut self) -> Option<CacheSettings> {
        let path = [Seg::Key("cache".to_owned())];
        let defaults = CacheSettings::default();
        if self.lookup(&path).is_none() {
            return Some(defaults);
        }
        let f: file::Cache = self.section(&path)?;
        let max_entries = match f.max_entries {
            None => defaults.max_entries,
            Some(n) => match u64::try_from(n) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.error(&sub(&path, "max_entries"), "must be at least 1");
                    defaults.max_entries
                }
            },
        };
        let max_age = self.duration(
            &sub(&path, "max_age"),
            f.max_age.as_deref(),
            defaults.max_age,
            false,
        );
        let negative_ttl = self.duration(
            &sub(&path, "negative_ttl"),
            f.negative_ttl.as_deref(),
            defaults.negative_ttl,
            true,
        );
        let stale_for = self.duration(
            &sub(&path, "stale_for"),
            f.stale_for.as_deref(),
            defaults.stale_for,
            false,
        );
        if stale_for > Duration::from_secs(24 * 3600) {
            self.error(&sub(&path, "stale_for"), "must be at most \"24h\"");
        }
        let max_unverified =
            self.optional_duration(&sub(&path, "max_unverified"), f.max_unverified.as_deref());
        Some(CacheSettings {
            stale_for,
            max_unverified,
            enabled: f.enabled.unwrap_or(defaults.enabled),
            max_entries,
            max_age,
            negative_ttl,
            configure_notifications: f
                .configure_notifications
                .unwrap_or(defaults.configure_notifications),
            ..defaults
        })
    }
}

/// Whether two listen addresses would be the same socket (port 0 never is:
/// each gets its own free port).
pub(super) fn same_listener(a: &str, b: &str) -> bool {
    let port = |s: &str| s.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok());
    if port(a).is_none_or(|p| p == 0) || port(a) != port(b) {
        return false;
    }
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    match (a.parse::<SocketAddr>(), b.parse::<SocketAddr>()) {
        (Ok(x), Ok(y)) => x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified(),
        _ => false,
    }
}
