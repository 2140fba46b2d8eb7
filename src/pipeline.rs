//! The request pipeline as plain async code, free of Pingora: route, extract,
//! resolve, authorize. `decide` turns a request head into an `Outcome`; the
//! Pingora glue in `proxy` only writes that outcome out.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, COOKIE, HOST};
use http::request::Parts;
use http::{HeaderValue, Method};

use crate::config::{
    Access, BearerMode, Config, CookieFormat, ReportStoreUnavailable, Route, RouteMode,
    StoreErrorPolicy, ValueFormat,
};
use crate::credential::bearer::bearer_token;
use crate::credential::cookie::{find_cookie, plain_id, ExpressVerifier};
use crate::credential::{Credential, CredentialSource};
use crate::explain::{self, Explanation};
use crate::identity::IdentityPlan;
use crate::labels::{Decision, LookupResult, LookupSource};
use crate::logout::{Caller, Logout, LogoutScope};
use crate::metrics::{self, PipelineMetrics};
use crate::reject::{login_url, AuthFailure, Rejection, Rendered};
use crate::route::table::{RouteTable, Selection};
use crate::route::target::{Rewrite, Target};
use crate::session::cache::{Lookup, Principal, SessionCache};
use crate::session::codec::Fields;
use crate::session::store::RawValue;
use crate::session::{RawSession, Session, SessionStore, StoreError};

/// The pipeline's verdict on one request.
#[derive(Debug)]
pub enum Outcome {
    /// Forward to the route's upstream, with these identity headers set.
    Forward {
        route: usize,
        /// The session's principal; `None` on public routes.
        principal: Option<Arc<Principal>>,
        decision: Decision,
        /// Redis was unreachable and the route's `on_store_error = "stale"`
        /// let the session's last known good state in.
        stale: bool,
        /// The canonical target and host to send instead of the client's.
        rewrite: Rewrite,
        /// A `mode = "report"` route let in what enforcement would refuse
        /// with this (`decision` is `WouldDeny`).
        would_deny: Option<Rejection>,
    },
    Reject {
        route: Option<usize>,
        rejection: Rejection,
    },
    /// Answered by the gateway itself, before routing (logout).
    Respond {
        decision: Decision,
        rendered: Rendered,
    },
}

impl Outcome {
    pub fn decision(&self) -> Decision {
        match self {
            Outcome::Forward { decision, .. } | Outcome::Respond { decision, .. } => *decision,
            Outcome::Reject { rejection, .. } => match rejection {
                Rejection::Unauthenticated { .. } => Decision::Unauthenticated,
                Rejection::Forbidden | Rejection::IdentityUnavailable => Decision::Forbidden,
                Rejection::StoreUnavailable => Decision::StoreError,
                Rejection::RateLimited { .. } => Decision::RateLimited,
                Rejection::BadTarget(_)
                | Rejection::HeadersTooLarge
                | Rejection::NoRoute
                | Rejection::MethodNotAllowed { .. } => Decision::Invalid,
            },
        }
    }
}

/// Everything compiled from one configuration that a request needs.
pub struct Pipeline {
    pub config: Config,
    pub identity: IdentityPlan,
    /// The session fields requests read (identity, roles, user): all a
    /// session document is decoded for.
    wanted: crate::session::codec::Wanted,
    verifier: Option<ExpressVerifier>,
    store: Arc<dyn SessionStore>,
    cache: Arc<SessionCache>,
    /// One round-robin cursor per upstream.
    cursors: Vec<AtomicUsize>,
    /// `logout_path` / `logout_all_path`, when configured.
    logout: Option<Logout>,
    /// Metric handles for this configuration's routes and upstreams.
    pub metrics: PipelineMetrics,
    /// `[rate_limit]` token buckets (emptied by a reload).
    limits: crate::ratelimit::RateLimits,
    /// Which upstream addresses are out of rotation (`health_check`).
    health: Arc<crate::upstream::UpstreamHealth>,
    /// Some route has `on_store_error = "stale"`: keep last-known-good records.
    keep_last_good: bool,
    /// Whether anything uses a session's remaining lifetime (the cache bounds
    /// entries by it, stale answers and sliding expiry read it); when
    /// nothing does, lookups do not ask Redis for it.
    needs_ttl: bool,
    /// The routes, matched under every reading of a path.
    table: RouteTable,
}

/// A credential that was present but unusable is treated as absent, but the
/// reason is kept for the logs.
enum Extracted {
    Found(Credential),
    Absent { bearer: bool, reason: AuthFailure },
}

impl Pipeline {
    pub fn new(config: Config, store: Arc<dyn SessionStore>, cache: Arc<SessionCache>) -> Pipeline {
        let verifier = (config.session.cookie_format == CookieFormat::Express)
            .then(|| ExpressVerifier::new(&config.session.secrets));
        let identity = IdentityPlan::new(&config.identity);
        let wanted = crate::session::codec::Wanted::new(
            identity
                .fields()
                .chain([&config.session.role_field, &config.session.user_field]),
        );
        let keep_last_good = config
            .routes
            .iter()
            .any(|r| r.on_store_error == StoreErrorPolicy::Stale);
        let needs_ttl = cache.enabled() || config.session.sliding.is_some() || keep_last_good;
        Pipeline {
            identity,
            wanted,
            cursors: config
                .upstreams
                .iter()
                .map(|_| AtomicUsize::new(0))
                .collect(),
            verifier,
            store,
            cache,
            logout: Logout::new(&config, config.jwt.as_ref().map(|jwt| jwt.key.clone())),
            metrics: PipelineMetrics::new(&config),
            limits: crate::ratelimit::RateLimits::new(&config.rate_limit),
            health: crate::upstream::UpstreamHealth::new(&config.upstreams),
            table: RouteTable::new(&config.routes),
            keep_last_good,
            needs_ttl,
            config,
        }
    }

    pub fn route(&self, index: usize) -> &Route {
        &self.config.routes[index]
    }

    /// The next address of the route's upstream, round robin, skipping the
    /// addresses a health check took out (unless every one of them is out).
    pub fn upstream_addr(&self, route: usize) -> std::net::SocketAddr {
        let upstream = self.config.routes[route].upstream;
        let addrs = &self.config.upstreams[upstream].addrs;
        self.health.start(&self.config.upstreams);
        let n = self.cursors[upstream].fetch_add(1, Ordering::Relaxed);
        (0..addrs.len())
            .map(|k| (n + k) % addrs.len())
            .find(|&i| self.health.is_up(upstream, i))
            .map_or(addrs[n % addrs.len()], |i| addrs[i])
    }

    /// Decides on a request whose request-target, exactly as received, is
    /// `target`, from `peer` (the connection's address), with `[rate_limit]`
    /// applied: failed authentications per client IP (checked before the
    /// session is looked up) and requests per user.
    pub async fn decide_from(
        &self,
        req: &Parts,
        target: &[u8],
        peer: Option<std::net::IpAddr>,
    ) -> Outcome {
        let trusted = &self.config.rate_limit.trusted_proxies;
        let client = self
            .limits
            .failed_auth
            .as_ref()
            .and_then(|_| crate::client_ip::client_ip(req, peer, trusted))
            .map(crate::ratelimit::client_key);
        let outcome = self.decide_limited(req, target, client).await;
        match &outcome {
            // A credential was presented and failed: it counts against the IP.
            Outcome::Reject {
                route: Some(_),
                rejection: Rejection::Unauthenticated { reason, .. },
            } if counts_as_failed_auth(*reason) => {
                if let (Some(limiter), Some(ip)) = (&self.limits.failed_auth, client) {
                    self.count_failed_auth(limiter, ip).await;
                }
                outcome
            }
            // Report mode relaxes the refusal, not the failed-auth budget.
            Outcome::Forward {
                would_deny: Some(Rejection::Unauthenticated { reason, .. }),
                ..
            } if counts_as_failed_auth(*reason) => {
                if let (Some(limiter), Some(ip)) = (&self.limits.failed_auth, client) {
                    self.count_failed_auth(limiter, ip).await;
                }
                outcome
            }
            Outcome::Forward {
                route,
                principal: Some(principal),
                ..
            } => {
                let over = match (&self.limits.per_user, &principal.user) {
                    (Some(limiter), Some(user)) => limiter.take(user),
                    _ => None,
                };
                match over {
                    Some(retry_after) => Outcome::Reject {
                        route: Some(*route),
                        rejection: Rejection::RateLimited { retry_after },
                    },
                    None => outcome,
                }
            }
            _ => outcome,
        }
    }

    /// Whether `ip` is over its failed-authentication budget. With
    /// `[rate_limit] shared`, the fleet's count in Redis decides (and this
    /// process's own bucket still applies); when Redis cannot answer, this
    /// process's bucket alone.
    async fn failed_auth_over(
        &self,
        limiter: &crate::ratelimit::Limiter<std::net::IpAddr>,
        ip: std::net::IpAddr,
    ) -> Option<u64> {
        let local = limiter.exhausted(&ip);
        let limits = &self.config.rate_limit;
        let (true, Some(limit), None) = (limits.shared, limits.failed_auth_per_ip, local) else {
            return local;
        };
        let key = crate::ratelimit::shared_key(ip);
        match self.store.window_count(&key, 0, limit.per).await {
            Ok((count, left)) if count >= u64::from(limit.burst) => {
                Some(left.as_millis().div_ceil(1000).max(1) as u64)
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "shared rate limit unavailable; this process's own applies");
                None
            }
        }
    }

    /// Counts a failed authentication from `ip`, here and (with `shared`) in Redis.
    async fn count_failed_auth(
        &self,
        limiter: &crate::ratelimit::Limiter<std::net::IpAddr>,
        ip: std::net::IpAddr,
    ) {
        let _ = limiter.take(&ip);
        let limits = &self.config.rate_limit;
        if let (true, Some(limit)) = (limits.shared, limits.failed_auth_per_ip) {
            let key = crate::ratelimit::shared_key(ip);
            if let Err(e) = self.store.window_count(&key, 1, limit.per).await {
                tracing::debug!(error = %e, "shared rate limit: a failure was counted locally only");
            }
        }
    }

    async fn decide_limited(
        &self,
        req: &Parts,
        raw_target: &[u8],
        client: Option<std::net::IpAddr>,
    ) -> Outcome {
        self.decide_traced(req, raw_target, client, &mut None).await
    }

    /// Runs the pipeline on one request head without serving it and says
    /// what each stage found. Changes nothing: no rate limit is applied or
    /// counted, nothing is cached, touched or logged out, no metric moves
    /// (the Redis reads themselves aside).
    pub async fn explain(&self, req: &Parts, raw_target: &[u8]) -> Explanation {
        let mut trace = Some(Explanation::default());
        let outcome = self.decide_traced(req, raw_target, None, &mut trace).await;
        let mut explained = trace.unwrap_or_default();
        explained.request.method = req.method.as_str().to_owned();
        let name = |r: usize| self.config.routes[r].name.clone();
        explained.decision = match &outcome {
            Outcome::Forward {
                route,
                decision,
                stale,
                would_deny,
                ..
            } => explain::DecisionStage {
                decision: decision.as_str(),
                reason: match would_deny {
                    Some(rejection) => Some(rejection.reason()),
                    None => stale.then_some("stale"),
                },
                status: 0,
                route: Some(name(*route)),
            },
            Outcome::Reject { route, rejection } => explain::DecisionStage {
                decision: outcome.decision().as_str(),
                reason: Some(rejection.reason()),
                status: self.render(*route, rejection).status.as_u16(),
                route: route.map(name),
            },
            Outcome::Respond { decision, rendered } => explain::DecisionStage {
                decision: decision.as_str(),
                reason: None,
                status: rendered.status.as_u16(),
                route: None,
            },
        };
        explained.notes.push(
            "explain changes nothing: no rate limit is applied or counted, nothing is cached, \
             touched or logged out",
        );
        explained
    }

    /// The response for a refusal on `route`: with its `show_error_details`,
    /// a 401 or 403 body carries the reason code.
    pub fn render(&self, route: Option<usize>, rejection: &Rejection) -> Rendered {
        let details = route.is_some_and(|r| self.config.routes[r].show_error_details);
        rejection.render_with(details)
    }

    /// Whether every authenticated route of `selection` is in report mode.
    fn reporting(&self, selection: &Selection) -> bool {
        let mut authenticated = selection
            .routes()
            .map(|r| &self.config.routes[r])
            .filter(|r| r.access == Access::Authenticated)
            .peekable();
        authenticated.peek().is_some() && authenticated.all(|r| r.mode == RouteMode::Report)
    }

    /// Whether report mode forwards a request refused with `rejection`: a
    /// missing or invalid credential, a role or a rule, when every reading's
    /// route is in report mode (the strictest reading wins); a store error
    /// only when each of them also says `report_store_unavailable = "forward"`.
    /// Canonicalisation, method and rate-limit refusals are never relaxed.
    fn relaxed(&self, selection: &Selection, rejection: &Rejection) -> bool {
        let relaxable = match rejection {
            Rejection::Unauthenticated { .. }
            | Rejection::Forbidden
            | Rejection::IdentityUnavailable => true,
            Rejection::StoreUnavailable => selection
                .routes()
                .map(|r| &self.config.routes[r])
                .filter(|r| r.access == Access::Authenticated)
                .all(|r| r.report_store_unavailable == ReportStoreUnavailable::Forward),
            _ => false,
        };
        relaxable && self.reporting(selection)
    }

    async fn decide_traced(
        &self,
        req: &Parts,
        raw_target: &[u8],
        client: Option<std::net::IpAddr>,
        trace: &mut Option<Explanation>,
    ) -> Outcome {
        let reject = |route, rejection| Outcome::Reject { route, rejection };

        if header_bytes(req) > self.config.server.max_request_header_bytes {
            return reject(None, Rejection::HeadersTooLarge);
        }
        let mut target = match Target::parse(
            raw_target,
            req.headers.get_all(HOST).iter().map(HeaderValue::as_bytes),
            req.version >= http::Version::HTTP_11,
            self.config.server.target,
        ) {
            Ok(target) => target,
            Err(e) => return reject(None, Rejection::BadTarget(e)),
        };
        if let Some(e) = trace {
            e.request.host = Some(target.host.clone().into_owned());
            e.request.path = Some(target.path.clone().into_owned());
            e.request.rewritten = target.rewrite.uri.is_some() || target.rewrite.host.is_some();
        }
        let path = &target.path;
        if let Some((logout, scope)) = self
            .logout
            .as_ref()
            .and_then(|l| l.matches(path).map(|scope| (l, scope)))
        {
            if let Some(e) = trace {
                e.notes
                    .push("a logout path: answered by the gateway (explain ends nothing)");
                return Outcome::Respond {
                    decision: Decision::LoggedOut,
                    rendered: logout.done(),
                };
            }
            return self.logout(req, logout, scope).await;
        }
        let Some(selection) = self.table.select(&target.host, path) else {
            return reject(None, Rejection::NoRoute);
        };
        if let Some(e) = trace {
            e.route = Some(self.route_stage(&selection));
        }
        let index = selection.route;
        if let Some(allow) = self.method_refused(&selection, &req.method) {
            return reject(Some(index), Rejection::MethodNotAllowed { allow });
        }
        let mut outcome = self
            .authenticate(req, &target, &selection, client, trace)
            .await;
        // Report mode: a refusal without a session to show for it is
        // forwarded bare (role refusals are relaxed in `authorize`, which
        // still has the session).
        if let Outcome::Reject {
            route: Some(route),
            rejection,
        } = &outcome
        {
            if self.relaxed(&selection, rejection) {
                outcome = Outcome::Forward {
                    route: *route,
                    principal: None,
                    decision: Decision::WouldDeny,
                    stale: false,
                    rewrite: Rewrite::default(),
                    would_deny: Some(rejection.clone()),
                };
            }
        }
        if let Outcome::Forward { rewrite, .. } = &mut outcome {
            *rewrite = std::mem::take(&mut target.rewrite);
        }
        outcome
    }

    /// The route stage of `explain`.
    fn route_stage(&self, selection: &Selection) -> explain::RouteStage {
        let routes = &self.config.routes;
        let strict = selection
            .routes()
            .find(|&r| routes[r].access == Access::Authenticated);
        explain::RouteStage {
            name: routes[selection.route].name.clone(),
            readings: selection
                .readings()
                .map(|(reading, r)| explain::ReadingRoute {
                    reading: reading.as_str(),
                    route: routes[r].name.clone(),
                })
                .collect(),
            authenticated_by: strict.map(|r| routes[r].name.clone()),
            access: if strict.is_some() {
                "authenticated"
            } else {
                "public"
            },
            mode: if self.reporting(selection) {
                "report"
            } else {
                "enforce"
            },
        }
    }

    /// Every reading's route must serve the method: its `methods` list when
    /// it has one, else anything but TRACE. Returns the `Allow` value of a
    /// refusal.
    fn method_refused(&self, selection: &Selection, method: &Method) -> Option<String> {
        let refused = selection
            .routes()
            .any(|r| match &self.config.routes[r].methods {
                Some(methods) => !methods.contains(method),
                None => *method == Method::TRACE,
            });
        if !refused {
            return None;
        }
        let allowed: Vec<&str> = match &self.config.routes[selection.route].methods {
            Some(methods) => methods.iter().map(Method::as_str).collect(),
            None => vec!["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        };
        Some(allowed.join(", "))
    }

    /// Authentication and authorization against every route of `selection`:
    /// public only when all of them are public.
    async fn authenticate(
        &self,
        req: &Parts,
        target: &Target<'_>,
        selection: &Selection,
        client: Option<std::net::IpAddr>,
        trace: &mut Option<Explanation>,
    ) -> Outcome {
        let reject = |route, rejection| Outcome::Reject { route, rejection };
        let index = selection.route;
        let path = &target.path;
        let routes = &self.config.routes;
        // The route whose authentication settings apply: the exact reading's,
        // unless it is public and a stricter reading is not.
        let Some(strict) = selection
            .routes()
            .find(|&r| routes[r].access == Access::Authenticated)
        else {
            return Outcome::Forward {
                route: index,
                principal: None,
                decision: Decision::Public,
                stale: false,
                rewrite: Rewrite::default(),
                would_deny: None,
            };
        };
        let route = &routes[strict];
        // An IP over its failed-authentication budget is refused before Redis.
        if let (Some(limiter), Some(ip)) = (&self.limits.failed_auth, client) {
            if let Some(retry_after) = self.failed_auth_over(limiter, ip).await {
                return reject(Some(index), Rejection::RateLimited { retry_after });
            }
        }

        let unauthenticated = |reason: AuthFailure, bearer: bool| {
            let login = route
                .login_redirect
                .as_deref()
                .filter(|_| !bearer && wants_html(req))
                .map(|login| login_url(login, path, target.query));
            reject(
                Some(index),
                Rejection::Unauthenticated {
                    reason,
                    bearer,
                    login,
                },
            )
        };

        let credential = match self.extract(req, trace) {
            Extracted::Found(c) => c,
            // No usable cookie: a bearer JWT, when `bearer = "jwt"`.
            Extracted::Absent { bearer, reason } => match self.jwt_bearer(req) {
                None => return unauthenticated(reason, bearer),
                Some(None) => {
                    if let Some(e) = trace {
                        e.credential = Some(explain::CredentialStage {
                            source: "bearer",
                            format: Some("jwt"),
                            check: "malformed",
                            ..Default::default()
                        });
                    }
                    return unauthenticated(AuthFailure::BadCredential, true);
                }
                Some(Some(token)) => {
                    return match self.resolve_token(token, trace).await {
                        Ok(Lookup::Found(principal)) => self.authorize(selection, principal, trace),
                        Ok(Lookup::Invalid(reason)) => unauthenticated(reason, true),
                        Err(e) => {
                            tracing::warn!(route = %route.name, error = %e, "session store error");
                            reject(Some(index), Rejection::StoreUnavailable)
                        }
                    };
                }
            },
        };
        let bearer = credential.source == CredentialSource::Bearer;
        let key = match (&self.config.session.bearer_key, credential.source) {
            (Some(bearer_key), CredentialSource::Bearer) => bearer_key,
            _ => &self.config.session.key,
        }
        .render(credential.id.as_str());
        let resolved = self.resolve(&key, trace.is_some()).await;
        if let Some(e) = trace {
            e.lookup = Some(self.lookup_stage(&credential, &resolved));
        }
        let principal = match resolved {
            Ok((Lookup::Found(principal), _)) => principal,
            Ok((Lookup::Invalid(reason), _)) => return unauthenticated(reason, bearer),
            Err(e) => {
                tracing::warn!(route = %route.name, error = %e, "session store error");
                let stale_allowed = selection.routes().all(|r| {
                    routes[r].access == Access::Public
                        || routes[r].on_store_error == StoreErrorPolicy::Stale
                });
                if stale_allowed && e.is_unreachable() {
                    // Only a session resolved within `stale_for` (and not
                    // revoked since); nothing is cached or touched meanwhile.
                    let stale = self.cache.stale(&key);
                    let result = if stale.is_some() {
                        LookupResult::Hit
                    } else {
                        LookupResult::Miss
                    };
                    if trace.is_none() {
                        metrics::session_lookup(LookupSource::Stale, result);
                    }
                    if let Some(principal) = stale {
                        if let Some(e) = trace {
                            e.notes.push(
                                "redis is unreachable: the session's last known good state \
                                 decides (on_store_error = \"stale\")",
                            );
                        }
                        let mut outcome = self.authorize(selection, principal, trace);
                        if let Outcome::Forward { stale, .. } = &mut outcome {
                            *stale = true;
                        }
                        return outcome;
                    }
                }
                return reject(Some(index), Rejection::StoreUnavailable);
            }
        };
        if trace.is_none() {
            self.slide(key, &principal);
        }
        self.authorize(selection, principal, trace)
    }

    /// The lookup stage of `explain`: the key with its id cut to a prefix.
    fn lookup_stage(
        &self,
        credential: &Credential,
        resolved: &Result<(Lookup, LookupSource), StoreError>,
    ) -> explain::LookupStage {
        let template = match (&self.config.session.bearer_key, credential.source) {
            (Some(bearer_key), CredentialSource::Bearer) => bearer_key,
            _ => &self.config.session.key,
        };
        let (source, result, ttl_seconds) = match resolved {
            Ok((lookup, source)) => (
                *source,
                match lookup {
                    Lookup::Found(_) => "found",
                    Lookup::Invalid(reason) => reason.as_str(),
                },
                match lookup {
                    Lookup::Found(p) => self.cache.remaining(p).map(|d| d.as_secs()),
                    Lookup::Invalid(_) => None,
                },
            ),
            Err(_) => (LookupSource::Redis, "store_unavailable", None),
        };
        explain::LookupStage {
            key: template.render(&explain::redact(credential.id.as_str())),
            cache: Some(match source {
                LookupSource::Cache => "hit",
                _ if self.cache.is_live() => "miss",
                _ => "bypassed",
            }),
            source: match source {
                LookupSource::Cache => "cache",
                _ => "redis",
            },
            result,
            ttl_seconds,
        }
    }

    /// `POST logout_path` / `logout_all_path`: ends the caller's session (or
    /// every session of its user) and clears the cookie; other methods get 405.
    async fn logout(&self, req: &Parts, logout: &Logout, scope: LogoutScope) -> Outcome {
        if req.method != Method::POST {
            return Outcome::Respond {
                decision: Decision::Invalid,
                rendered: Logout::method_not_allowed(),
            };
        }
        // The caller as a request would be authenticated: the cookie, else the
        // bearer token. A JWT must verify (an expired one ends nothing).
        let caller = match self.extract(req, &mut None) {
            Extracted::Found(credential) => Some(match credential.source {
                CredentialSource::Cookie => Caller::Session(credential.id),
                CredentialSource::Bearer => Caller::Opaque(credential.id),
            }),
            Extracted::Absent { .. } => match (self.jwt_bearer(req), &self.config.jwt) {
                (Some(Some(token)), Some(jwt)) => {
                    jwt.verifier.verify(token).ok().map(|token| Caller::Token {
                        id: token.id,
                        claims: token.claims,
                    })
                }
                _ => None,
            },
        };
        match logout.end(scope, caller, &*self.store, &self.cache).await {
            Ok(_) => Outcome::Respond {
                decision: Decision::LoggedOut,
                rendered: logout.done(),
            },
            Err(e) => {
                tracing::warn!(scope = scope.as_str(), error = %e, "logout: session store error");
                Outcome::Reject {
                    route: None,
                    rejection: Rejection::StoreUnavailable,
                }
            }
        }
    }

    fn extract(&self, req: &Parts, trace: &mut Option<Explanation>) -> Extracted {
        let session = &self.config.session;
        let cookies = req
            .headers
            .get_all(COOKIE)
            .iter()
            .map(HeaderValue::as_bytes);
        let mut reason = AuthFailure::Missing;
        if let Some(raw) = find_cookie(cookies, &session.cookie) {
            let (id, check, secret_index) = match &self.verifier {
                Some(verifier) => match verifier.check(raw) {
                    Ok((id, index)) => (Some(id), "ok", Some(index)),
                    Err(e) => (None, e.as_str(), None),
                },
                None => match plain_id(raw) {
                    Some(id) => (Some(id), "ok", None),
                    None => (None, "malformed", None),
                },
            };
            if let Some(e) = trace {
                e.credential = Some(explain::CredentialStage {
                    source: "cookie",
                    format: Some(if self.verifier.is_some() {
                        "express"
                    } else {
                        "plain"
                    }),
                    check,
                    secret_index,
                    id_prefix: id.as_ref().map(|id| explain::redact(id.as_str())),
                });
            }
            match id {
                Some(id) => {
                    return Extracted::Found(Credential {
                        id,
                        source: CredentialSource::Cookie,
                    })
                }
                None => reason = AuthFailure::BadCredential,
            }
        }
        if session.bearer == BearerMode::Opaque {
            if let Some(auth) = req.headers.get(AUTHORIZATION) {
                let id = bearer_token(auth.as_bytes()).and_then(plain_id);
                if let Some(e) = trace {
                    e.credential = Some(explain::CredentialStage {
                        source: "bearer",
                        format: Some("opaque"),
                        check: if id.is_some() { "ok" } else { "malformed" },
                        secret_index: None,
                        id_prefix: id.as_ref().map(|id| explain::redact(id.as_str())),
                    });
                }
                return match id {
                    Some(id) => Extracted::Found(Credential {
                        id,
                        source: CredentialSource::Bearer,
                    }),
                    None => Extracted::Absent {
                        bearer: true,
                        reason: AuthFailure::BadCredential,
                    },
                };
            }
        }
        if let Some(e) = trace.as_mut().filter(|e| e.credential.is_none()) {
            e.credential = Some(explain::CredentialStage {
                source: "none",
                check: "absent",
                ..Default::default()
            });
        }
        Extracted::Absent {
            bearer: false,
            reason,
        }
    }

    /// The session behind a cookie or opaque token: from the cache when it
    /// holds it, else from Redis (and then cached).
    /// With a `stale` route, every answer also updates the key's last known good.
    /// With `read_only` (`explain`), the cache is only read, never filled.
    async fn resolve(
        &self,
        key: &str,
        read_only: bool,
    ) -> Result<(Lookup, LookupSource), StoreError> {
        if read_only {
            return match self.cache.peek(key) {
                Some(lookup) => Ok((lookup, LookupSource::Cache)),
                None => Ok((self.load_session(key, true).await?, LookupSource::Redis)),
            };
        }
        if !self.keep_last_good {
            return self
                .cache
                .get_or_load(key, || self.load_session(key, self.needs_ttl))
                .await;
        }
        let before = self.cache.lookup_version(key);
        let result = self
            .cache
            .get_or_load(key, || self.load_session(key, self.needs_ttl))
            .await;
        if let Ok((lookup, _)) = &result {
            self.cache.remember_good(key, lookup, before);
        }
        result
    }

    /// Sliding expiry: once a session's remaining TTL has fallen more than
    /// `touch_after` below `ttl`, reset it, off the request's path. The
    /// principal is marked first, so concurrent requests do not touch again.
    fn slide(&self, key: String, principal: &Principal) {
        let Some(sliding) = self.config.session.sliding else {
            return;
        };
        let Some(remaining) = self.cache.remaining(principal) else {
            return;
        };
        if sliding.ttl.saturating_sub(remaining) <= sliding.touch_after {
            return;
        }
        self.cache.touched(principal, sliding.ttl);
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch(&key, sliding.ttl).await {
                tracing::warn!(error = %e, "sliding expiry: could not reset a session's TTL");
            }
        });
    }

    /// With `bearer = "jwt"`, the `Authorization` header: `None` without one,
    /// `Some(None)` when it is not a usable bearer token, else the token.
    fn jwt_bearer<'r>(&self, req: &'r Parts) -> Option<Option<&'r str>> {
        if self.config.session.bearer != BearerMode::Jwt {
            return None;
        }
        let auth = req.headers.get(AUTHORIZATION)?;
        Some(
            bearer_token(auth.as_bytes())
                .filter(|t| t.len() <= crate::credential::jwt::MAX_TOKEN_LEN),
        )
    }

    /// A bearer JWT: verified against `[jwt]`, then its token key must exist
    /// in Redis. Not cached: the principal comes from the token's claims as
    /// well as from the key's value, and two tokens may share a token id.
    async fn resolve_token(
        &self,
        token: &str,
        trace: &mut Option<Explanation>,
    ) -> Result<Lookup, StoreError> {
        use crate::config::ValueFormat;
        use crate::credential::jwt::JwtRejected;

        let Some(jwt) = &self.config.jwt else {
            return Ok(Lookup::Invalid(AuthFailure::BadCredential));
        };
        let verified = jwt.verifier.verify(token);
        if let Some(e) = trace {
            e.credential = Some(explain::CredentialStage {
                source: "bearer",
                format: Some("jwt"),
                check: verified.as_ref().map_or_else(|e| e.as_str(), |_| "ok"),
                secret_index: None,
                id_prefix: verified
                    .as_ref()
                    .ok()
                    .map(|v| explain::redact(v.id.as_str())),
            });
        }
        let verified = match verified {
            Ok(verified) => verified,
            Err(e) => {
                tracing::debug!(reason = e.as_str(), "bearer token refused: {e}");
                return Ok(Lookup::Invalid(match e {
                    JwtRejected::Expired => AuthFailure::Expired,
                    JwtRejected::ClaimMismatch => AuthFailure::ClaimMismatch,
                    _ => AuthFailure::BadCredential,
                }));
            }
        };
        let key = jwt.key.render(verified.id.as_str());
        let ttl = self.needs_ttl || trace.is_some();
        let mut fetched = self.store.fetch(&key, ValueFormat::Json, ttl).await;
        if let Err(StoreError::WrongType) = fetched {
            // An app that keeps its token keys as hashes.
            fetched = self.store.fetch(&key, ValueFormat::Hash, ttl).await;
        }
        if let Some(e) = trace {
            e.lookup = Some(explain::LookupStage {
                key: jwt.key.render(&explain::redact(verified.id.as_str())),
                cache: None,
                source: "redis",
                result: match &fetched {
                    Ok(Some(_)) => "found",
                    Ok(None) => AuthFailure::Revoked.as_str(),
                    Err(StoreError::WrongType) => AuthFailure::Unreadable.as_str(),
                    Err(_) => "store_unavailable",
                },
                ttl_seconds: match &fetched {
                    Ok(Some(raw)) => raw.ttl_ms.map(|ms| ms / 1000),
                    _ => None,
                },
            });
        }
        let raw = match fetched {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(Lookup::Invalid(AuthFailure::Revoked)),
            Err(StoreError::WrongType) => return Ok(Lookup::Invalid(AuthFailure::Unreadable)),
            Err(e) => return Err(e),
        };
        let session = Session::from_token(verified.claims, raw);
        Ok(Lookup::Found(Arc::new(self.principal(&session))))
    }

    /// Every matched route's roles against a resolved principal (each
    /// non-empty list must name one of its roles); forward when they allow it.
    /// In report mode, a refusal here is forwarded with the session's
    /// identity headers (the session itself is valid).
    fn authorize(
        &self,
        selection: &Selection,
        principal: Arc<Principal>,
        trace: &mut Option<Explanation>,
    ) -> Outcome {
        let index = selection.route;
        let lacks = |r: usize| {
            let roles = &self.config.routes[r].roles;
            !roles.is_empty() && !principal.roles.iter().any(|role| roles.contains(role))
        };
        let refused = selection.routes().any(lacks);
        if let Some(e) = trace {
            e.session = Some(self.session_stage(&principal));
            e.authorization = Some(explain::AuthorizationStage {
                routes: selection
                    .routes()
                    .filter(|&r| self.config.routes[r].access == Access::Authenticated)
                    .map(|r| explain::RouteRoles {
                        route: self.config.routes[r].name.clone(),
                        roles: self.config.routes[r].roles.clone(),
                        satisfied: !lacks(r),
                    })
                    .collect(),
                refused_by: selection
                    .routes()
                    .find(|&r| lacks(r))
                    .map(|r| self.config.routes[r].name.clone()),
            });
        }
        let rejection = if refused {
            Rejection::Forbidden
        } else if principal.identity.missing_required() {
            Rejection::IdentityUnavailable
        } else {
            return Outcome::Forward {
                route: index,
                principal: Some(principal),
                decision: Decision::Forwarded,
                stale: false,
                rewrite: Rewrite::default(),
                would_deny: None,
            };
        };
        if self.relaxed(selection, &rejection) {
            return Outcome::Forward {
                route: index,
                principal: Some(principal),
                decision: Decision::WouldDeny,
                stale: false,
                rewrite: Rewrite::default(),
                would_deny: Some(rejection),
            };
        }
        Outcome::Reject {
            route: Some(index),
            rejection,
        }
    }

    /// The session stage of `explain`: the fields the decision read.
    fn session_stage(&self, principal: &Principal) -> explain::SessionStage {
        let sent: Vec<(&http::HeaderName, HeaderValue)> =
            self.identity.headers(&principal.identity).collect();
        explain::SessionStage {
            user: principal.user.clone(),
            roles: principal.roles.clone(),
            role_field: self.config.session.role_field.to_string(),
            identity: self
                .config
                .identity
                .iter()
                .map(|h| explain::IdentityField {
                    header: h.name.as_str().to_owned(),
                    field: h.field.to_string(),
                    required: h.required,
                    value: sent
                        .iter()
                        .find(|(name, _)| **name == h.name)
                        .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned()),
                })
                .collect(),
            missing_required: principal.identity.missing_required(),
        }
    }

    /// The session at `key`, read from Redis; with `ttl`, its remaining
    /// lifetime too.
    async fn load_session(&self, key: &str, ttl: bool) -> Result<Lookup, StoreError> {
        let format = self.config.session.value;
        let raw = match self.store.fetch(key, format, ttl).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(Lookup::Invalid(AuthFailure::NotFound)),
            Err(StoreError::WrongType) => return Ok(Lookup::Invalid(AuthFailure::Unreadable)),
            Err(e) => return Err(e),
        };
        let fields = match (raw.value, format) {
            (RawValue::String(bytes), ValueFormat::Json) => self.wanted.decode_json(&bytes),
            (value, format) => Session::decode(
                RawSession {
                    value,
                    ttl_ms: None,
                },
                format,
            )
            .map(|session| self.wanted.read(&session)),
        };
        Ok(match fields {
            Ok(fields) => Lookup::Found(Arc::new(
                self.principal_from(fields, raw.ttl_ms.map(Duration::from_millis)),
            )),
            Err(_) => Lookup::Invalid(AuthFailure::Unreadable),
        })
    }

    /// Extracts what requests need from a session document.
    pub fn principal(&self, session: &Session) -> Principal {
        self.principal_from(
            self.wanted.read(session),
            session.ttl_ms.map(Duration::from_millis),
        )
    }

    /// Builds the principal from a session's wanted fields (see `Pipeline::new`
    /// for their order).
    fn principal_from(&self, mut fields: Fields, ttl: Option<Duration>) -> Principal {
        let headers = self.identity.len();
        let identity = self
            .identity
            .values(|index| fields.text(self.wanted.slot(index)));
        // The user the access log shows and `requests_per_user` counts.
        let user = (self.config.admin.access_log_user
            || self.config.rate_limit.requests_per_user.is_some())
        .then(|| {
            fields
                .text(self.wanted.slot(headers + 1))
                .map(str::to_owned)
        })
        .flatten();
        let roles = fields.take_texts(self.wanted.slot(headers));
        self.cache.principal(identity, roles, user, ttl)
    }
}

/// Failures that mean a credential was presented and did not work: a bad
/// signature or format, an unknown or unreadable session, a revoked token. A
/// missing credential and an expired (but genuinely signed) JWT do not count.
fn counts_as_failed_auth(reason: AuthFailure) -> bool {
    !matches!(reason, AuthFailure::Missing | AuthFailure::Expired)
}

/// Total size of the request head's headers, as a client would have sent them.
/// The request line and headers, as sent (near enough: `METHOD target HTTP/1.1`).
fn header_bytes(req: &Parts) -> usize {
    let target = req.uri.scheme_str().map_or(0, |s| s.len() + 3)
        + req.uri.authority().map_or(0, |a| a.as_str().len())
        + req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line = req.method.as_str().len() + target + 12;
    line + req
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
}

/// A browser navigation: GET or HEAD that accepts HTML.
fn wants_html(req: &Parts) -> bool {
    (req.method == Method::GET || req.method == Method::HEAD)
        && req
            .headers
            .get_all(ACCEPT)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("text/html")))
}
