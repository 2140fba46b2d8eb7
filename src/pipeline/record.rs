//! The recording [`Trace`]: turns what the stages report into `explain`'s
//! [`Explanation`]. Ids are cut to a prefix here, the one place that sees
//! them whole, and so is any identity header value that carries one.

use http::request::Parts;
use http::HeaderValue;

use crate::config::{Access, Config, FieldPath};
use crate::explain::{self, redact, Explanation};
use crate::identity::IdentityPlan;
use crate::labels::LookupSource;
use crate::reject::{AuthFailure, Rejection};
use crate::route::target::Target;
use crate::session::cache::{Lookup, Principal, SessionCache};
use crate::session::StoreError;

use super::authorize::lacks_role;
use super::outcome::Outcome;
use super::route::Matched;
use super::trace::{CredentialSeen, LookupSeen, Trace};

/// Builds an [`Explanation`] from a dry run of the pipeline.
pub(super) struct Recorder<'p> {
    config: &'p Config,
    profiles: &'p [super::ProfileRuntime],
    /// The profile of the route that authenticates the request.
    profile: usize,
    cache: &'p SessionCache,
    explained: Explanation,
    /// The whole id of the credential last reported, kept only to recognise
    /// identity values that carry it; never shown.
    id: Option<String>,
}

impl<'p> Recorder<'p> {
    pub fn new(
        config: &'p Config,
        profiles: &'p [super::ProfileRuntime],
        cache: &'p SessionCache,
    ) -> Self {
        Recorder {
            config,
            profiles,
            profile: 0,
            cache,
            explained: Explanation::default(),
            id: None,
        }
    }

    /// The explanation of a run that ended in `outcome`; `status` is the
    /// status a refusal on a route is answered with.
    pub fn finish(
        self,
        req: &Parts,
        outcome: &Outcome,
        status: impl Fn(Option<usize>, &Rejection) -> u16,
    ) -> Explanation {
        let mut explained = self.explained;
        explained.request.method = req.method.as_str().to_owned();
        let name = |r: usize| self.config.routes[r].name.clone();
        explained.decision = match outcome {
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
                status: status(*route, rejection),
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

    /// The cache of the profile being explained.
    fn profile_cache(&self) -> &SessionCache {
        self.profiles
            .get(self.profile)
            .map_or(self.cache, |p| &p.cache)
    }

    /// Whether the identity value `value`, read from `field`, carries a
    /// session or token id: the field is the JWT's `id_claim`, or the value
    /// holds the id of the credential presented.
    fn carries_id(&self, field: &FieldPath, value: &str) -> bool {
        let id_claim = self.config.jwt.as_ref().map(|jwt| jwt.verifier.id_claim());
        let id_field = matches!(
            (field.segments(), id_claim),
            ([claims, claim], Some(id_claim)) if claims == "claims" && claim == id_claim
        );
        let holds_id = self
            .id
            .as_deref()
            .is_some_and(|id| !id.is_empty() && value.contains(id));
        id_field || holds_id
    }

    /// The session stage: the fields the decision read.
    fn session_stage(&self, principal: &Principal) -> explain::SessionStage {
        let plan: &IdentityPlan =
            &self.profiles[self.profile.min(self.profiles.len() - 1)].identity;
        let sent: Vec<(&http::HeaderName, HeaderValue)> =
            plan.headers(&principal.identity).collect();
        let (session, identity) = match self.config.profiles.get(self.profile) {
            Some(p) => (&p.session, &p.identity),
            None => (&self.config.session, &self.config.identity),
        };
        explain::SessionStage {
            user: principal.user.clone(),
            roles: principal.roles.clone(),
            role_field: session.role_field.to_string(),
            identity: identity
                .iter()
                .map(|h| explain::IdentityField {
                    header: h.name.as_str().to_owned(),
                    field: h.field.to_string(),
                    required: h.required,
                    value: sent
                        .iter()
                        .find(|(name, _)| **name == h.name)
                        .map(|(_, v)| {
                            let value = String::from_utf8_lossy(v.as_bytes());
                            if self.carries_id(&h.field, &value) {
                                redact(&value)
                            } else {
                                value.into_owned()
                            }
                        }),
                })
                .collect(),
            missing_required: principal.identity.missing_required(),
        }
    }
}

impl Trace for Recorder<'_> {
    const DRY_RUN: bool = true;

    fn request(&mut self, target: &Target<'_>) {
        let r = &mut self.explained.request;
        r.host = Some(target.host.clone().into_owned());
        r.path = Some(target.path.clone().into_owned());
        r.rewritten = target.rewrite.uri.is_some() || target.rewrite.host.is_some();
    }

    fn note(&mut self, note: &'static str) {
        self.explained.notes.push(note);
    }

    fn routed(&mut self, matched: &Matched<'_>) {
        let routes = matched.routes;
        let strict = matched.strict();
        self.profile = routes[strict.unwrap_or(matched.index())].profile;
        let profile = self
            .config
            .profiles
            .get(self.profile)
            .map_or("default", |p| p.name.as_str())
            .to_owned();
        self.explained.route = Some(explain::RouteStage {
            profile,
            name: routes[matched.index()].name.clone(),
            readings: matched
                .selection
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
            mode: if matched.reporting() {
                "report"
            } else {
                "enforce"
            },
        });
    }

    fn credential(&mut self, seen: CredentialSeen<'_>) {
        self.id = seen.id.map(str::to_owned);
        self.explained.credential = Some(explain::CredentialStage {
            source: seen.source,
            format: seen.format,
            check: seen.check,
            secret_index: seen.secret_index,
            id_prefix: seen.id.map(redact),
        });
    }

    fn lookup(&mut self, seen: LookupSeen<'_>) {
        self.explained.lookup = Some(match seen {
            LookupSeen::Session {
                template,
                id,
                resolved,
            } => {
                let (source, result, ttl_seconds) = match resolved {
                    Ok((Lookup::Found(principal), source)) => (
                        *source,
                        "found",
                        self.profile_cache()
                            .remaining(principal)
                            .map(|d| d.as_secs()),
                    ),
                    Ok((Lookup::Invalid(reason), source)) => (*source, reason.as_str(), None),
                    Err(_) => (LookupSource::Redis, "store_unavailable", None),
                };
                explain::LookupStage {
                    key: template.render(&redact(id)),
                    cache: Some(match source {
                        LookupSource::Cache => "hit",
                        _ if self.profile_cache().is_live() => "miss",
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
            LookupSeen::Token {
                template,
                id,
                fetched,
            } => explain::LookupStage {
                key: template.render(&redact(id)),
                cache: None,
                source: "redis",
                result: match fetched {
                    Ok(Some(_)) => "found",
                    Ok(None) => AuthFailure::Revoked.as_str(),
                    Err(StoreError::WrongType) => AuthFailure::Unreadable.as_str(),
                    Err(_) => "store_unavailable",
                },
                ttl_seconds: match fetched {
                    Ok(Some(raw)) => raw.ttl_ms.map(|ms| ms / 1000),
                    _ => None,
                },
            },
        });
    }

    fn authorizing(&mut self, matched: &Matched<'_>, principal: &Principal) {
        self.explained.session = Some(self.session_stage(principal));
        self.explained.authorization = Some(explain::AuthorizationStage {
            routes: matched
                .all()
                .filter(|(_, r)| r.access == Access::Authenticated)
                .map(|(_, r)| explain::RouteRoles {
                    route: r.name.clone(),
                    roles: r.roles.clone(),
                    satisfied: !lacks_role(r, principal),
                })
                .collect(),
            refused_by: matched
                .all()
                .find(|(_, r)| lacks_role(r, principal))
                .map(|(_, r)| r.name.clone()),
        });
    }
}
