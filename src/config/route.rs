//! The checks of `[[upstream]]` and `[[route]]`.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::checker::{with_article, Checker};
use super::file;
use super::keypath::{idx, sub, Seg};
use super::model::{
    Access, Config, LivePolicy, ReportStoreUnavailable, Route, RouteMode, StoreErrorPolicy,
    Upstream,
};
use super::suggest::suggest;
use super::values::is_valid_redirect;
use crate::route::target::normalise_host;

impl<'r, 't> Checker<'r, 't> {
    /// The upstreams, and each `[[upstream]]`'s name by position (known even
    /// when the rest of it is invalid, so routes can still refer to it);
    /// `None` names when the section itself is missing or malformed.
    #[allow(clippy::type_complexity)]
    pub(super) fn upstreams(&mut self) -> (Option<Vec<Upstream>>, Option<Vec<Option<String>>>) {
        let path = [Seg::Key("upstream".to_owned())];
        let Some(value) = self.lookup(&path) else {
            self.missing(&path, "at least one [[upstream]] is required");
            return (None, None);
        };
        let Some(items) = value.get_ref().as_array() else {
            let found = with_article(value.get_ref().type_str());
            self.error(
                &path,
                format!("expected [[upstream]] tables, found {found}"),
            );
            return (None, None);
        };
        if items.is_empty() {
            self.error(&path, "at least one [[upstream]] is required");
        }

        let mut names: Vec<Option<String>> = Vec::new();
        let mut out = Vec::new();
        for i in 0..items.len() {
            let entry = idx(&path, i);
            let Some(f) = self.section::<file::Upstream>(&entry) else {
                names.push(None);
                out.push(None);
                continue;
            };
            let tls = self.upstream_tls(&entry, &f);
            let name_path = sub(&entry, "name");
            let name = match f.name {
                None => {
                    self.missing_key(&name_path);
                    None
                }
                Some(name) if name.is_empty() => {
                    self.error(&name_path, "must not be empty");
                    None
                }
                Some(name) => {
                    if let Some(first) = names.iter().position(|n| n.as_ref() == Some(&name)) {
                        let line = self.line_of(self.position(&idx(&path, first), false));
                        self.error(
                            &name_path,
                            format!("duplicate upstream name {name:?} (first used on line {line})"),
                        );
                    }
                    Some(name)
                }
            };
            names.push(name.clone());

            let addrs_path = sub(&entry, "addrs");
            self.string_list(&addrs_path, f.addrs.as_deref(), "address");
            let mut addrs = Vec::new();
            let mut ok = f.addrs.as_ref().is_some_and(|a| !a.is_empty());
            for (j, addr) in f.addrs.unwrap_or_default().iter().enumerate() {
                match resolve(addr) {
                    Ok(resolved) => addrs.extend(resolved),
                    Err(message) => {
                        self.error(&idx(&addrs_path, j), message);
                        ok = false;
                    }
                }
            }
            let connect_timeout = self.duration(
                &sub(&entry, "connect_timeout"),
                f.connect_timeout.as_deref(),
                Duration::from_secs(1),
                false,
            );
            let read_timeout = self.duration(
                &sub(&entry, "read_timeout"),
                f.read_timeout.as_deref(),
                Duration::from_secs(30),
                false,
            );
            let health_check = f.health_check.map(|h| {
                let hc_path = sub(&entry, "health_check");
                let path = h.path.filter(|p| {
                    let good = p.starts_with('/') && !p.bytes().any(|b| b <= b' ' || b == 0x7f);
                    if !good {
                        self.error(
                            &sub(&hc_path, "path"),
                            "must start with `/` and contain no spaces or control characters",
                        );
                        ok = false;
                    }
                    good
                });
                let interval = self.duration(
                    &sub(&hc_path, "interval"),
                    h.interval.as_deref(),
                    Duration::from_secs(5),
                    false,
                );
                super::model::HealthCheck { path, interval }
            });
            out.push(match (name, tls) {
                (Some(name), Some(tls)) if ok => Some(Upstream {
                    name,
                    addrs,
                    connect_timeout,
                    read_timeout,
                    health_check,
                    tls,
                }),
                _ => None,
            });
        }
        (out.into_iter().collect(), Some(names))
    }

    /// `[rollout] mode`: the mode of routes without their own (default
    /// enforce); `None` when it is invalid (and reported).
    pub(super) fn rollout(&mut self) -> Option<RouteMode> {
        let path = [Seg::Key("rollout".to_owned())];
        if self.lookup(&path).is_none() {
            return Some(RouteMode::Enforce);
        }
        let f = self.section::<file::Rollout>(&path)?;
        self.route_mode(&sub(&path, "mode"), f.mode.as_deref(), RouteMode::Enforce)
    }

    fn route_mode(
        &mut self,
        path: &[Seg],
        value: Option<&str>,
        default: RouteMode,
    ) -> Option<RouteMode> {
        self.choice(
            path,
            value,
            default,
            &[
                ("enforce", RouteMode::Enforce),
                ("report", RouteMode::Report),
            ],
        )
    }

    pub(super) fn routes(
        &mut self,
        upstreams: Option<&[Option<String>]>,
        default_mode: Option<RouteMode>,
        profiles: &[String],
    ) -> Option<Vec<Route>> {
        let path = [Seg::Key("route".to_owned())];
        let Some(value) = self.lookup(&path) else {
            self.missing(&path, "at least one [[route]] is required");
            return None;
        };
        let Some(items) = value.get_ref().as_array() else {
            let found = with_article(value.get_ref().type_str());
            self.error(&path, format!("expected [[route]] tables, found {found}"));
            return None;
        };
        if items.is_empty() {
            self.error(&path, "at least one [[route]] is required");
        }

        // (name, offset of its route)
        let mut seen: Vec<(String, usize)> = Vec::new();
        let mut out = Vec::new();
        for i in 0..items.len() {
            let entry = idx(&path, i);
            let Some(f) = self.section::<file::Route>(&entry) else {
                out.push(None);
                continue;
            };

            let prefix_path = sub(&entry, "path_prefix");
            let path_prefix = match f.path_prefix {
                None => {
                    self.missing_key(&prefix_path);
                    None
                }
                Some(prefix) if !prefix.starts_with('/') => {
                    self.error(&prefix_path, format!("{prefix:?} must start with \"/\""));
                    None
                }
                Some(prefix)
                    if prefix.contains(['?', '#', ';']) || prefix.contains(char::is_whitespace) =>
                {
                    self.error(
                        &prefix_path,
                        format!(
                            "{prefix:?} must be a plain path (no query, fragment, `;` \
                             parameters or spaces)"
                        ),
                    );
                    None
                }
                // Requests are matched on their normalised path, so a prefix that is
                // not itself normal (dot segments, `//`, raw non-ASCII) could never match.
                Some(prefix) => match crate::route::path::normalise_path(&prefix) {
                    Ok(normal) if normal == prefix.as_str() => Some(prefix),
                    Ok(normal) => {
                        self.error(
                            &prefix_path,
                            format!("{prefix:?} is not a normalised path; write {normal:?}"),
                        );
                        None
                    }
                    Err(e) => {
                        self.error(&prefix_path, format!("{prefix:?}: {e}"));
                        None
                    }
                },
            };

            let name_path = sub(&entry, "name");
            let explicit = f.name.is_some();
            let name = match f.name {
                Some(name) if name.is_empty() => {
                    self.error(&name_path, "must not be empty");
                    None
                }
                Some(name) => Some(name),
                None => path_prefix.clone(),
            };
            if let Some(name) = &name {
                let offset = self.position(&entry, false);
                if let Some((_, first)) = seen.iter().find(|(n, _)| n == name) {
                    let line = self.line_of(*first);
                    let message = if explicit {
                        format!("duplicate route name {name:?} (first used on line {line})")
                    } else {
                        format!(
                            "duplicate route name {name:?} (first used on line {line}); a route \
                             without `name` is named after its path_prefix, so give it a `name`"
                        )
                    };
                    self.error(&name_path, message);
                } else {
                    seen.push((name.clone(), offset));
                }
            }

            // `Some(Err(()))`: a host that was reported as invalid. Stored in
            // the form request hosts are compared in (one normaliser for
            // both), so the route matches whatever spelling of it arrives.
            let host = f.host.map(|host| match normalise_host(&host) {
                Ok(name) => Ok(name.into_owned()),
                Err(_) => {
                    let message = format!("{host:?} is not a valid host name");
                    self.error(&sub(&entry, "host"), message);
                    Err(())
                }
            });

            let upstream_path = sub(&entry, "upstream");
            let upstream = match (f.upstream, upstreams) {
                (None, _) => {
                    self.missing_key(&upstream_path);
                    None
                }
                (Some(_), None) => None, // the missing [[upstream]] is reported already
                (Some(wanted), Some(names)) => {
                    let found = names
                        .iter()
                        .position(|n| n.as_deref() == Some(wanted.as_str()));
                    if found.is_none() {
                        let mut message = format!("no [[upstream]] is named {wanted:?}");
                        if let Some(close) =
                            suggest(&wanted, names.iter().flatten().map(String::as_str))
                        {
                            let _ = write!(message, "; did you mean {close:?}?");
                        }
                        self.error(&upstream_path, message);
                    }
                    found
                }
            };

            let access = self.choice(
                &sub(&entry, "access"),
                f.access.as_deref(),
                Access::Authenticated,
                &[
                    ("public", Access::Public),
                    ("authenticated", Access::Authenticated),
                ],
            );
            let roles_path = sub(&entry, "roles");
            if f.roles.is_some() && access == Some(Access::Public) {
                self.error(
                    &roles_path,
                    "`roles` only applies to access = \"authenticated\" routes",
                );
            }
            let roles = f.roles.unwrap_or_default();
            for (j, role) in roles.iter().enumerate() {
                if role.is_empty() {
                    self.error(&idx(&roles_path, j), "a role must not be empty");
                }
            }

            let on_store_error = self.choice(
                &sub(&entry, "on_store_error"),
                f.on_store_error.as_deref(),
                StoreErrorPolicy::Deny,
                &[
                    ("deny", StoreErrorPolicy::Deny),
                    ("stale", StoreErrorPolicy::Stale),
                ],
            );
            if f.on_store_error.is_some() && access == Some(Access::Public) {
                self.error(
                    &sub(&entry, "on_store_error"),
                    "`on_store_error` only applies to access = \"authenticated\" routes",
                );
            }

            let login_redirect = match f.on_unauthenticated {
                None => Some(None),
                Some(on) => {
                    let redirect_path = sub(&sub(&entry, "on_unauthenticated"), "redirect");
                    match on.redirect {
                        None => {
                            self.missing_key(&redirect_path);
                            None
                        }
                        Some(target) if !is_valid_redirect(&target) => {
                            self.error(
                                &redirect_path,
                                format!(
                                    "{target:?} must be a path starting with \"/\" (not \"//\") \
                                     or an absolute http(s) URL"
                                ),
                            );
                            None
                        }
                        Some(target) => Some(Some(target)),
                    }
                }
            };

            let mode_path = sub(&entry, "mode");
            if f.mode.is_some() && access == Some(Access::Public) {
                self.error(
                    &mode_path,
                    "`mode` only applies to access = \"authenticated\" routes",
                );
            }
            // Unknown (`None`) when it, or the default it falls back to, is invalid.
            let mode = match (f.mode.as_deref(), default_mode) {
                (None, None) => None,
                (mode, default) => {
                    self.route_mode(&mode_path, mode, default.unwrap_or(RouteMode::Enforce))
                }
            }
            .map(|mode| match access {
                Some(Access::Public) => RouteMode::Enforce,
                _ => mode,
            });
            let report_path = sub(&entry, "report_store_unavailable");
            let report_store_unavailable = self.choice(
                &report_path,
                f.report_store_unavailable.as_deref(),
                ReportStoreUnavailable::Deny,
                &[
                    ("deny", ReportStoreUnavailable::Deny),
                    ("forward", ReportStoreUnavailable::Forward),
                ],
            );
            if f.report_store_unavailable.is_some() && mode == Some(RouteMode::Enforce) {
                self.error(
                    &report_path,
                    "`report_store_unavailable` only applies to mode = \"report\" routes",
                );
            }
            let live = self.choice(
                &sub(&entry, "live"),
                f.live.as_deref(),
                LivePolicy::Close,
                &[("close", LivePolicy::Close), ("keep", LivePolicy::Keep)],
            );
            let max_lifetime =
                self.optional_duration(&sub(&entry, "max_lifetime"), f.max_lifetime.as_deref());
            let profile =
                self.profile_index(&sub(&entry, "profile"), f.profile.as_deref(), profiles);
            let live_after = self.duration(
                &sub(&entry, "live_after"),
                f.live_after.as_deref(),
                Duration::from_secs(1),
                true,
            );
            for (key, set) in [
                ("live", f.live.is_some()),
                ("max_lifetime", f.max_lifetime.is_some()),
                ("live_after", f.live_after.is_some()),
            ] {
                if set && access == Some(Access::Public) {
                    self.error(
                        &sub(&entry, key),
                        format!("`{key}` only applies to access = \"authenticated\" routes"),
                    );
                }
            }
            let show_error_details = f.show_error_details.unwrap_or(false);
            if f.show_error_details.is_some() && access == Some(Access::Public) {
                self.error(
                    &sub(&entry, "show_error_details"),
                    "`show_error_details` only applies to access = \"authenticated\" routes",
                );
            }

            let methods_path = sub(&entry, "methods");
            let methods = match f.methods {
                None => Some(None),
                Some(list) if list.is_empty() => {
                    self.error(&methods_path, "must list at least one method");
                    None
                }
                Some(list) => {
                    let mut ok = Vec::with_capacity(list.len());
                    for (j, m) in list.iter().enumerate() {
                        match http::Method::from_bytes(m.as_bytes()) {
                            Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => {
                                if method == http::Method::CONNECT {
                                    self.error(
                                        &idx(&methods_path, j),
                                        "CONNECT is never proxied (its target is not a path)",
                                    );
                                }
                                ok.push(method);
                            }
                            _ => self.error(
                                &idx(&methods_path, j),
                                format!("{m:?} is not an upper-case HTTP method name"),
                            ),
                        }
                    }
                    Some(Some(ok))
                }
            };

            out.push((|| {
                Some(Route {
                    methods: methods?,
                    name: name?,
                    host: host.transpose().ok()?,
                    path_prefix: path_prefix?,
                    upstream: upstream?,
                    access: access?,
                    roles,
                    login_redirect: login_redirect?,
                    on_store_error: on_store_error?,
                    mode: mode?,
                    report_store_unavailable: report_store_unavailable?,
                    show_error_details,
                    live: live?,
                    max_lifetime,
                    live_after,
                    profile: profile?,
                })
            })());
        }
        out.into_iter().collect()
    }
}

/// What `check` (and `run`, at start) warns about in a valid configuration:
/// routes in report mode, which forward what they would refuse.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for upstream in &config.upstreams {
        if upstream
            .tls
            .as_ref()
            .is_some_and(|t| t.files.insecure_skip_verify)
        {
            out.push(format!(
                "upstream {:?} has insecure_skip_verify = true: any certificate is accepted, \
                 so anyone on the path to it can read and change its traffic",
                upstream.name
            ));
        }
    }
    for route in &config.routes {
        if route.mode != RouteMode::Report {
            continue;
        }
        out.push(format!(
            "route {:?} is in report mode: requests it would refuse for lack of a session, \
             a role or a rule are forwarded (counted as decision=\"would_deny\")",
            route.name
        ));
        if route.report_store_unavailable == ReportStoreUnavailable::Forward {
            out.push(format!(
                "route {:?} forwards requests without identity headers while Redis is \
                 unavailable (report_store_unavailable = \"forward\")",
                route.name
            ));
        }
    }
    out
}

fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    let addrs = match addr.parse::<SocketAddr>() {
        Ok(sa) => vec![sa],
        Err(_) => {
            let Some((host, port)) = addr.rsplit_once(':') else {
                return Err(format!("{addr:?} has no port (expected host:port)"));
            };
            if host.is_empty() {
                return Err(format!("{addr:?} has no host (expected host:port)"));
            }
            if host.contains(':') {
                return Err(format!(
                    "{addr:?}: IPv6 addresses must be in brackets, e.g. \"[::1]:3000\""
                ));
            }
            let Ok(port) = port.parse::<u16>() else {
                return Err(format!("{addr:?} has an invalid port (expected host:port)"));
            };
            (host, port)
                .to_socket_addrs()
                .map_err(|err| format!("cannot resolve {addr:?}: {err}"))?
                .collect()
        }
    };
    if addrs.is_empty() {
        return Err(format!("{addr:?} resolved to no addresses"));
    }
    if addrs.iter().any(|a| a.port() == 0) {
        return Err(format!("{addr:?}: port 0 is not a valid upstream port"));
    }
    Ok(addrs)
}
