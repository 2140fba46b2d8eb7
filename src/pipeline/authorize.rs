//! The authorize stage: a resolved session against every matched route's
//! `roles`, and its required identity headers. In report mode a refusal here
//! is forwarded with the session's identity headers (the session is valid).

use std::sync::Arc;

use crate::config::Route;
use crate::labels::Decision;
use crate::reject::Rejection;
use crate::session::cache::Principal;

use super::outcome::Outcome;
use super::route::Matched;
use super::trace::Trace;

/// Whether `route` names roles and the session has none of them.
pub(super) fn lacks_role(route: &Route, principal: &Principal) -> bool {
    !route.roles.is_empty()
        && !principal
            .roles
            .iter()
            .any(|role| route.roles.contains(role))
}

/// Every matched route's roles against `principal` (each non-empty list must
/// name one of its roles); forward when they allow it. `stale`: the session
/// is its last known good state (Redis is unreachable).
pub(super) fn authorize<T: Trace>(
    matched: &Matched<'_>,
    principal: Arc<Principal>,
    stale: bool,
    trace: &mut T,
) -> Outcome {
    trace.authorizing(matched, &principal);
    let index = matched.index();
    let refusal = if matched.all().any(|(_, r)| lacks_role(r, &principal)) {
        Some(Rejection::Forbidden)
    } else if principal.identity.missing_required() {
        Some(Rejection::IdentityUnavailable)
    } else {
        None
    };
    let (decision, would_deny) = match refusal {
        None => (Decision::Forwarded, None),
        Some(rejection) if matched.relaxed(&rejection) => (Decision::WouldDeny, Some(rejection)),
        Some(rejection) => {
            return Outcome::Reject {
                route: Some(index),
                rejection,
            }
        }
    };
    Outcome::Forward {
        route: index,
        principal: Some(principal),
        decision,
        stale,
        rewrite: Default::default(),
        would_deny,
    }
}
