//! What the pipeline decided for one request and what forwarding it found:
//! recorded the same way by every engine (lean, full, and any protocol that
//! hands requests to the pipeline), and read by the access log and metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::labels::Decision;
use crate::pipeline::{Outcome, Pipeline};
use crate::reject::{Rejection, Rendered};
use crate::route::target::Rewrite;
use crate::session::cache::Principal;

/// What the access log and the metrics need beyond the pipeline's verdict.
#[derive(Debug, Default)]
pub struct Observed {
    /// Why the request was refused (or would be, in report mode), e.g. `no_credential`, `bad_signature`, `forbidden`.
    pub(crate) reason: Option<&'static str>,
    /// The upstream chosen (index into the config's upstreams) and when.
    pub(crate) upstream: Option<(usize, Instant)>,
    /// The upstream's status and how long it took to send its response header.
    pub(crate) answer: Option<(u16, Duration)>,
}

impl Observed {
    /// Records why the pipeline refused the request.
    pub fn rejected(&mut self, rejection: &Rejection) {
        if let Rejection::Unauthenticated { reason, .. } = rejection {
            crate::metrics::auth_failure(*reason);
        }
        self.reason = Some(rejection.reason());
        tracing::debug!(reason = rejection.reason(), "request refused");
    }

    /// Records that a `mode = "report"` route forwarded a request that
    /// enforcement would have refused for `rejection`.
    pub fn would_deny(&mut self, route: &str, rejection: &Rejection) {
        let reason = rejection.reason();
        crate::metrics::would_deny(route, reason);
        self.reason = Some(reason);
        tracing::debug!(
            reason,
            "request forwarded in report mode; enforcement would refuse it"
        );
    }

    /// Records that Redis was unreachable and the session's last known good
    /// state let the request in (`on_store_error = "stale"`).
    pub fn served_stale(&mut self) {
        self.reason = Some("stale");
    }

    /// Records that the request is about to go to `upstream`.
    pub fn upstream_chosen(&mut self, upstream: usize) {
        self.upstream = Some((upstream, Instant::now()));
        self.answer = None;
    }

    /// Records the upstream's response header.
    pub fn upstream_answered(&mut self, status: u16) {
        if let Some((_, started)) = self.upstream {
            self.answer = Some((status, started.elapsed()));
        }
    }
}

/// What the pipeline decided for one request and what forwarding it
/// found, recorded the same way by both forwarding engines.
#[derive(Debug, Default)]
pub struct Verdict {
    pub route: Option<usize>,
    pub decision: Option<Decision>,
    pub principal: Option<Arc<Principal>>,
    /// What the forwarded request's target and host are changed to.
    pub rewrite: Rewrite,
    pub observed: Observed,
}

/// What an engine does next with a decided request.
pub enum Next {
    /// Forward it to the upstream of this route.
    Forward(usize),
    /// Answer it with this response of the gateway's own.
    Answer(Rendered),
}

impl Verdict {
    /// Records the pipeline's outcome and says what to do with the request.
    pub fn record(&mut self, pipeline: &Pipeline, outcome: Outcome) -> Next {
        self.decision = Some(outcome.decision());
        match outcome {
            Outcome::Forward {
                route,
                principal,
                stale,
                rewrite,
                would_deny,
                ..
            } => {
                if stale {
                    self.observed.served_stale();
                }
                if let Some(rejection) = &would_deny {
                    self.observed
                        .would_deny(&pipeline.route(route).name, rejection);
                }
                self.route = Some(route);
                self.principal = principal;
                self.rewrite = rewrite;
                Next::Forward(route)
            }
            Outcome::Reject { route, rejection } => {
                self.route = route;
                self.observed.rejected(&rejection);
                Next::Answer(pipeline.render(route, &rejection))
            }
            Outcome::Respond { rendered, .. } => Next::Answer(rendered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reject::AuthFailure;

    fn rejection_reason(rejection: &Rejection) -> &'static str {
        rejection.reason()
    }

    #[test]
    fn admin_access_reasons() {
        let unauthenticated = |reason| Rejection::Unauthenticated {
            reason,
            bearer: false,
            login: None,
        };
        assert_eq!(
            rejection_reason(&unauthenticated(AuthFailure::BadCredential)),
            "bad_signature"
        );
        assert_eq!(
            rejection_reason(&unauthenticated(AuthFailure::Missing)),
            "no_credential"
        );
        assert_eq!(rejection_reason(&Rejection::Forbidden), "role_missing");
        assert_eq!(
            rejection_reason(&Rejection::StoreUnavailable),
            "store_unavailable"
        );
    }
}
