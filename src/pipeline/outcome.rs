//! The pipeline's verdict on one request, as the engines read it: forward,
//! refuse, or answer on the gateway's own behalf.

use std::sync::Arc;

use crate::labels::Decision;
use crate::reject::{Rejection, Rendered};
use crate::route::target::Rewrite;
use crate::session::cache::Principal;

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
                Rejection::Forbidden
                | Rejection::IdentityUnavailable
                | Rejection::CrossSiteLogout => Decision::Forbidden,
                Rejection::StoreUnavailable => Decision::StoreError,
                Rejection::RateLimited { .. } => Decision::RateLimited,
                Rejection::BadTarget(_)
                | Rejection::HeadersTooLarge
                | Rejection::NoRoute
                | Rejection::MethodNotAllowed { .. }
                | Rejection::Misdirected => Decision::Invalid,
            },
        }
    }

    /// Forwarding to `route` with nothing to report; the rewrite is filled in
    /// once the whole pipeline has run.
    pub(super) fn forward(
        route: usize,
        principal: Option<Arc<Principal>>,
        decision: Decision,
    ) -> Outcome {
        Outcome::Forward {
            route,
            principal,
            decision,
            stale: false,
            rewrite: Rewrite::default(),
            would_deny: None,
        }
    }
}
