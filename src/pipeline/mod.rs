//! The request pipeline as plain async code, free of Pingora: route, extract,
//! resolve, authorize (DESIGN.md section 1), one stage per module. `decide_from`
//! turns a request head into an [`Outcome`]; the engines in `proxy` only write
//! that outcome out. `explain` runs the same stages with a recording
//! [`trace::Trace`] instead of the serving path's no-op one.

mod authorize;
mod extract;
mod limit;
mod outcome;
mod record;
mod resolve;
mod route;
mod trace;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::header::{ACCEPT, HOST};
use http::request::Parts;
use http::{HeaderValue, Method};
use pingora::protocols::tls::SslDigest;

use crate::config::{Config, CookieFormat, Route};
use crate::credential::cookie::ExpressVerifier;
use crate::explain::Explanation;
use crate::identity::IdentityPlan;
use crate::labels::Decision;
use crate::logout::{Logout, LogoutScope, RequestOrigin};
use crate::metrics::PipelineMetrics;
use crate::reject::{login_url, AuthFailure, Rejection, Rendered};
use crate::route::table::RouteTable;
use crate::route::target::{Target, TargetRejected};
use crate::session::cache::SessionCache;
use crate::session::SessionStore;

use extract::Extracted;
pub use outcome::Outcome;
use resolve::{Resolved, Resolver};
use route::Matched;
use trace::{NoTrace, Trace};

/// What one session profile needs to check a credential, compiled.
pub(crate) struct ProfileRuntime {
    /// The profile's identity headers (what its principals carry values of).
    pub identity: IdentityPlan,
    verifier: Option<ExpressVerifier>,
    resolver: Resolver,
    /// Where its sessions are: `[redis]`, or the profile's own.
    store: Arc<dyn SessionStore>,
    cache: Arc<SessionCache>,
}

/// The stores and caches of profiles with a `[profiles.<name>.redis]` of
/// their own, by profile name; made once at start and kept across reloads.
pub type ProfileStores =
    std::collections::HashMap<String, (Arc<dyn SessionStore>, Arc<SessionCache>)>;

/// Everything compiled from one configuration that a request needs.
pub struct Pipeline {
    pub config: Config,
    /// Every profile's identity headers together: what is stripped from
    /// every client request, whichever profile serves it.
    pub identity: IdentityPlan,
    /// Per profile (`config.profiles`), in order: 0 is `default`.
    profiles: Vec<ProfileRuntime>,
    cache: Arc<SessionCache>,
    /// One round-robin cursor per upstream.
    cursors: Vec<AtomicUsize>,
    /// `logout_path` / `logout_all_path` of each profile that has them.
    logout: Vec<(usize, Logout)>,
    /// Metric handles for this configuration's routes and upstreams.
    pub metrics: PipelineMetrics,
    /// `[rate_limit]` (its token buckets are emptied by a reload).
    limits: limit::Limits,
    /// Which upstream addresses are out of rotation (`health_check`).
    health: Arc<crate::upstream::UpstreamHealth>,
    /// The routes, matched under every reading of a path.
    table: RouteTable,
    /// Whether an upstream speaks HTTP/2 (the full proxy then serves every
    /// request: the lean engine speaks HTTP/1.1 upstream).
    h2_upstream: bool,
}

impl Pipeline {
    pub fn new(config: Config, store: Arc<dyn SessionStore>, cache: Arc<SessionCache>) -> Pipeline {
        Self::with_profile_stores(config, store, cache, &ProfileStores::new())
    }

    /// [`Pipeline::new`], with the stores of profiles that keep their
    /// sessions in a Redis of their own (a profile missing from `extra`
    /// uses `store`).
    pub fn with_profile_stores(
        config: Config,
        store: Arc<dyn SessionStore>,
        cache: Arc<SessionCache>,
        extra: &ProfileStores,
    ) -> Pipeline {
        // A config built in code (tests) may carry no profiles: `[session]`
        // and `[identity.headers]` are the default one.
        let defaults = [crate::config::Profile {
            name: "default".to_owned(),
            session: config.session.clone(),
            identity: config.identity.clone(),
            redis: None,
        }];
        let profile_list = if config.profiles.is_empty() {
            &defaults[..]
        } else {
            &config.profiles[..]
        };
        let profiles: Vec<ProfileRuntime> = profile_list
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let identity = IdentityPlan::new(&p.identity);
                let (store, cache) = match extra.get(&p.name).filter(|_| p.redis.is_some()) {
                    Some((store, cache)) => (store.clone(), cache.clone()),
                    None => (store.clone(), cache.clone()),
                };
                ProfileRuntime {
                    verifier: verifier_for(&p.session),
                    resolver: Resolver::new(
                        &config,
                        &p.session,
                        index,
                        &identity,
                        store.clone(),
                        cache.clone(),
                    ),
                    identity,
                    store,
                    cache,
                }
            })
            .collect();
        let mut every: Vec<crate::config::IdentityHeader> = Vec::new();
        for p in profile_list {
            for h in &p.identity {
                if !every.iter().any(|e| e.name == h.name) {
                    every.push(h.clone());
                }
            }
        }
        let logout = profile_list
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let token_key = (p.session.bearer == crate::config::BearerMode::Jwt)
                    .then(|| config.jwt.as_ref().map(|jwt| jwt.key.clone()))
                    .flatten();
                Logout::for_session(&p.session, token_key).map(|l| (i, l))
            })
            .collect();
        Pipeline {
            profiles,
            identity: IdentityPlan::new(&every),
            cursors: config
                .upstreams
                .iter()
                .map(|_| AtomicUsize::new(0))
                .collect(),
            logout,
            metrics: PipelineMetrics::new(&config),
            limits: limit::Limits::new(&config.rate_limit, store.clone()),
            health: crate::upstream::UpstreamHealth::new(&config.upstreams),
            table: RouteTable::new(&config.routes),
            h2_upstream: config.upstreams.iter().any(|u| u.h2()),
            cache,
            config,
        }
    }

    /// Whether an upstream speaks HTTP/2: the lean engine leaves every
    /// request to the full proxy then (the route is not known yet).
    pub fn h2_upstream(&self) -> bool {
        self.h2_upstream
    }

    pub fn route(&self, index: usize) -> &Route {
        &self.config.routes[index]
    }

    /// The compiled profile at `index` (a route's `profile`, a principal's).
    pub(crate) fn profile(&self, index: usize) -> &ProfileRuntime {
        self.profiles.get(index).unwrap_or(&self.profiles[0])
    }

    /// The session table of profile `index`.
    fn session_of(&self, index: usize) -> &crate::config::SessionSettings {
        self.config
            .profiles
            .get(index)
            .map_or(&self.config.session, |p| &p.session)
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

    /// The response for a refusal on `route`: with its `show_error_details`,
    /// a 401 or 403 body carries the reason code.
    pub fn render(&self, route: Option<usize>, rejection: &Rejection) -> Rendered {
        let details = route.is_some_and(|r| self.config.routes[r].show_error_details);
        rejection.render_with(details)
    }

    /// Decides on a request whose request-target, exactly as received, is
    /// `target`, that arrived as `arrival` says, with `[rate_limit]`
    /// applied: failed authentications per client IP (checked before the
    /// session is looked up) and requests per user.
    pub async fn decide_from(&self, req: &Parts, target: &[u8], arrival: &Arrival) -> Outcome {
        let client = self.limits.client(req, arrival.peer);
        let outcome = self
            .decide(req, target, arrival, client, &mut NoTrace)
            .await;
        if self.limits.failed(&outcome) {
            self.limits.count_failed_auth(client).await;
        }
        match self.limits.over_per_user(&outcome) {
            Some((route, retry_after)) => Outcome::Reject {
                route: Some(route),
                rejection: Rejection::RateLimited { retry_after },
            },
            None => outcome,
        }
    }

    /// Whether a request with this head, on a connection like `arrival`, is
    /// let through now: a live exchange's re-check after its session key
    /// changed. `Ok` keeps it (forwarded, also in report mode), else the
    /// refusal's reason code. No rate limit is applied or counted.
    pub async fn readmits(
        &self,
        req: &Parts,
        raw_target: &[u8],
        arrival: &Arrival,
    ) -> Result<(), &'static str> {
        match self
            .decide(req, raw_target, arrival, None, &mut NoTrace)
            .await
        {
            Outcome::Forward { .. } | Outcome::Respond { .. } => Ok(()),
            Outcome::Reject { rejection, .. } => Err(rejection.reason()),
        }
    }

    /// Runs the pipeline on one request head without serving it and says
    /// what each stage found. Changes nothing: no rate limit is applied or
    /// counted, nothing is cached, touched or logged out, no metric moves
    /// (the Redis reads themselves aside).
    pub async fn explain(&self, req: &Parts, raw_target: &[u8]) -> Explanation {
        let mut recorder = record::Recorder::new(&self.config, &self.profiles, &self.cache);
        let outcome = self
            .decide(req, raw_target, &Arrival::default(), None, &mut recorder)
            .await;
        recorder.finish(req, &outcome, |route, rejection| {
            self.render(route, rejection).status.as_u16()
        })
    }

    /// The stages in order. `client` is the key of `[rate_limit]`'s
    /// failed-authentication budget (`None`: not limited).
    async fn decide<T: Trace>(
        &self,
        req: &Parts,
        raw_target: &[u8],
        arrival: &Arrival,
        client: Option<IpAddr>,
        trace: &mut T,
    ) -> Outcome {
        let reject = |route, rejection| Outcome::Reject { route, rejection };

        if header_bytes(req) > self.config.server.max_request_header_bytes {
            return reject(None, Rejection::HeadersTooLarge);
        }
        // HTTP/2 names the host in `:authority` (Pingora has refused a
        // `Host` that disagrees with it), and only over TLS. A request
        // without `:authority` (one translated from HTTP/1 by a client's
        // proxy, RFC 9113 8.3.1) is routed on its `Host`; the h2 library
        // drops its `:scheme` then, having checked it, and the connection's
        // TLS is what the app is told (`X-Forwarded-Proto`).
        let authority = (req.version == http::Version::HTTP_2)
            .then(|| req.uri.authority())
            .flatten();
        if authority.is_some() && req.uri.scheme_str() != Some("https") {
            return reject(None, Rejection::BadTarget(TargetRejected::Form));
        }
        let hosts = authority.map(|a| a.as_str().as_bytes()).into_iter().chain(
            req.headers
                .get_all(HOST)
                .iter()
                .map(HeaderValue::as_bytes)
                .filter(|_| authority.is_none()),
        );
        let mut target = match Target::parse(
            raw_target,
            hosts,
            req.version >= http::Version::HTTP_11,
            self.config.server.target,
        ) {
            Ok(target) => target,
            Err(e) => return reject(None, Rejection::BadTarget(e)),
        };
        trace.request(&target);
        if !arrival.may_carry(&target.host) {
            return reject(None, Rejection::Misdirected);
        }
        // A request a trusted proxy took over TLS is not sent round again.
        if self.config.server.https_redirect
            && !self.scheme(req, arrival).eq_ignore_ascii_case("https")
        {
            return Outcome::Respond {
                decision: Decision::Redirected,
                rendered: https_redirect(&target, self.config.server.https_port),
            };
        }
        if let Some((profile, logout, scope)) = self
            .logout
            .iter()
            .find_map(|(p, l)| l.matches(&target.path).map(|scope| (*p, l, scope)))
        {
            if T::DRY_RUN {
                trace.note("a logout path: answered by the gateway (explain ends nothing)");
                return Outcome::Respond {
                    decision: Decision::LoggedOut,
                    rendered: logout.done(),
                };
            }
            let origin = self.origin(req, raw_target, &target, arrival);
            return self.logout(req, origin, profile, logout, scope).await;
        }
        let Some(matched) =
            Matched::select(&self.table, &self.config.routes, &target.host, &target.path)
        else {
            return reject(None, Rejection::NoRoute);
        };
        trace.routed(&matched);
        if let Some(allow) = matched.method_refused(&req.method) {
            return reject(Some(matched.index()), Rejection::MethodNotAllowed { allow });
        }
        let mut outcome = self
            .authenticate(req, &target, &matched, client, trace)
            .await;
        // Report mode: a refusal without a session to show for it is
        // forwarded bare (role refusals are relaxed in `authorize`, which
        // still has the session).
        if let Outcome::Reject {
            route: Some(route),
            rejection,
        } = &outcome
        {
            if matched.relaxed(rejection) {
                outcome = Outcome::Forward {
                    route: *route,
                    principal: None,
                    decision: Decision::WouldDeny,
                    stale: false,
                    rewrite: Default::default(),
                    would_deny: Some(rejection.clone()),
                };
            }
        }
        if let Outcome::Forward { rewrite, .. } = &mut outcome {
            *rewrite = std::mem::take(&mut target.rewrite);
        }
        outcome
    }

    /// Extract, resolve and authorize against every matched route: public
    /// only when all of them are public.
    async fn authenticate<T: Trace>(
        &self,
        req: &Parts,
        target: &Target<'_>,
        matched: &Matched<'_>,
        client: Option<IpAddr>,
        trace: &mut T,
    ) -> Outcome {
        let index = matched.index();
        let Some(strict) = matched.strict() else {
            return Outcome::forward(index, None, Decision::Public);
        };
        let route = &self.config.routes[strict];
        // An IP over its failed-authentication budget is refused before Redis.
        if let Some(retry_after) = self.limits.over_failed_auth(client).await {
            return Outcome::Reject {
                route: Some(index),
                rejection: Rejection::RateLimited { retry_after },
            };
        }
        // Every route that authenticates this request must check its
        // credential under the same profile: readings of one path that reach
        // two apps' routes are not left to pick one.
        if matched.all().any(|(_, r)| {
            r.access == crate::config::Access::Authenticated && r.profile != route.profile
        }) {
            return Outcome::Reject {
                route: Some(index),
                rejection: Rejection::BadTarget(TargetRejected::Path(
                    crate::route::path::PathRejected::NotCanonical,
                )),
            };
        }
        let session = self.session_of(route.profile);
        let profile = self.profile(route.profile);
        let resolver = &profile.resolver;
        let resolved = match extract::extract(req, session, profile.verifier.as_ref(), trace) {
            Extracted::Found(credential) => {
                let stale_allowed = || matched.stale_allowed();
                resolver
                    .credential(&credential, stale_allowed, &route.name, trace)
                    .await
            }
            // No usable cookie: a bearer JWT, when `bearer = "jwt"`.
            Extracted::Absent { bearer, reason } => match extract::jwt_bearer(req, session) {
                None => Resolved::Invalid { reason, bearer },
                Some(None) => {
                    trace.credential(trace::CredentialSeen {
                        source: "bearer",
                        format: Some("jwt"),
                        check: "malformed",
                        ..Default::default()
                    });
                    Resolved::Invalid {
                        reason: AuthFailure::BadCredential,
                        bearer: true,
                    }
                }
                Some(Some(token)) => resolver.token(token, &route.name, trace).await,
            },
        };
        match resolved {
            Resolved::Found { principal, stale } => {
                authorize::authorize(matched, principal, stale, trace)
            }
            Resolved::Invalid { reason, bearer } => {
                // Browsers are sent to the login page; API clients get 401.
                let login = route
                    .login_redirect
                    .as_deref()
                    .filter(|_| !bearer && wants_html(req))
                    .map(|login| login_url(login, &target.path, target.query));
                Outcome::Reject {
                    route: Some(index),
                    rejection: Rejection::Unauthenticated {
                        reason,
                        bearer,
                        login,
                    },
                }
            }
            Resolved::Unavailable => Outcome::Reject {
                route: Some(index),
                rejection: Rejection::StoreUnavailable,
            },
        }
    }

    /// The origin `req` was made to: the scheme of the listener,
    /// or the `X-Forwarded-Proto` of a trusted proxy; the canonical host; the
    /// port the client named (else the scheme's default).
    fn origin<'r>(
        &self,
        req: &'r Parts,
        raw_target: &'r [u8],
        target: &'r Target<'r>,
        arrival: &Arrival,
    ) -> RequestOrigin<'r> {
        RequestOrigin::new(
            self.scheme(req, arrival),
            &target.host,
            match req.version {
                http::Version::HTTP_2 => req.uri.port_u16(),
                _ => crate::logout::authority_port(raw_target, req.headers.get(HOST)),
            },
        )
    }

    /// The scheme the client used: the listener's, or the `X-Forwarded-Proto`
    /// of a trusted proxy (the first one's, which the browser spoke to).
    fn scheme<'r>(&self, req: &'r Parts, arrival: &Arrival) -> &'r str {
        let trusted = &self.config.rate_limit.trusted_proxies;
        arrival
            .peer
            .filter(|ip| trusted.iter().any(|c| c.contains(*ip)))
            .and_then(|_| req.headers.get("x-forwarded-proto"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .unwrap_or(arrival.scheme())
    }

    /// `POST logout_path` / `logout_all_path`: ends the caller's session (or
    /// every session of its user) and clears the cookie; other methods get
    /// 405, and a browser's cross-site POST (a page elsewhere logging the
    /// user out) 403.
    async fn logout(
        &self,
        req: &Parts,
        origin: RequestOrigin<'_>,
        profile: usize,
        logout: &Logout,
        scope: LogoutScope,
    ) -> Outcome {
        if req.method != Method::POST {
            return Outcome::Respond {
                decision: Decision::Invalid,
                rendered: Logout::method_not_allowed(),
            };
        }
        if crate::logout::cross_site(&req.headers, &origin) {
            tracing::info!(
                scope = scope.as_str(),
                "logout refused: a cross-site request"
            );
            return Outcome::Reject {
                route: None,
                rejection: Rejection::CrossSiteLogout,
            };
        }
        let caller = extract::caller(
            req,
            self.session_of(profile),
            self.profile(profile).verifier.as_ref(),
            self.config.jwt.as_ref(),
        );
        let runtime = self.profile(profile);
        match logout
            .end(scope, caller, &*runtime.store, &runtime.cache)
            .await
        {
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
}

/// The signed-cookie verifier a session table needs (`None`: plain ids).
fn verifier_for(session: &crate::config::SessionSettings) -> Option<ExpressVerifier> {
    use crate::credential::cookie::Scheme;
    let scheme = match session.cookie_format {
        CookieFormat::Plain => return None,
        CookieFormat::Express => Scheme::Express,
        CookieFormat::Fastify => Scheme::Fastify,
        CookieFormat::FlaskSigned => Scheme::Flask,
    };
    Some(ExpressVerifier::with_scheme(scheme, &session.secrets))
}

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

/// 308 to the same host and target over https: the canonical host and path
/// (what the request would be routed on) and the query as sent.
fn https_redirect(target: &Target<'_>, port: u16) -> Rendered {
    let mut location = String::with_capacity(16 + target.host.len() + target.path.len());
    location.push_str("https://");
    location.push_str(&target.host);
    if port != 443 {
        location.push(':');
        location.push_str(&port.to_string());
    }
    location.push_str(&target.path);
    if let Some(query) = target.query {
        location.push('?');
        location.push_str(query);
    }
    Rendered {
        status: http::StatusCode::PERMANENT_REDIRECT,
        headers: vec![("location", location)],
        body: "",
    }
}

/// The connection a request arrived on, as the request path sees it.
#[derive(Debug, Clone, Default)]
pub struct Arrival {
    /// The peer's address (`None`: not an inet peer).
    pub peer: Option<IpAddr>,
    /// The TLS session of a TLS listener's connection.
    pub tls: Option<Arc<SslDigest>>,
}

impl Arrival {
    /// Whether this connection may carry a request for `host` (canonical):
    /// on TLS, only a host its certificate is authoritative for (a browser
    /// reuses one HTTP/2 connection for every name of a certificate), or an
    /// address when the client sent no SNI. Anything else is another
    /// name's request fronted through this connection.
    pub fn may_carry(&self, host: &str) -> bool {
        let Some(tls) = self
            .tls
            .as_ref()
            .and_then(|digest| digest.extension.get::<crate::tls::ConnectionTls>())
        else {
            return true;
        };
        crate::tls::covers(&tls.names, host)
            || (tls.sni.is_none()
                && (host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()))
    }

    /// `https` on a TLS listener, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}
