//! `[rate_limit]` around the pipeline: failed authentications per client IP
//! (an IP over its budget is refused before Redis is asked; a credential
//! that was presented and failed counts against it) and requests per user.
//! With `shared`, the failed-authentication count is the fleet's, in Redis.

use std::net::IpAddr;
use std::sync::Arc;

use http::request::Parts;

use crate::config::RateLimitSettings;
use crate::ratelimit::{self, RateLimits};
use crate::reject::{AuthFailure, Rejection};
use crate::session::SessionStore;

use super::outcome::Outcome;

/// The limiters of one configuration (emptied by a reload).
pub(super) struct Limits {
    limiters: RateLimits,
    settings: RateLimitSettings,
    store: Arc<dyn SessionStore>,
}

impl Limits {
    pub fn new(settings: &RateLimitSettings, store: Arc<dyn SessionStore>) -> Limits {
        Limits {
            limiters: RateLimits::new(settings),
            settings: settings.clone(),
            store,
        }
    }

    /// The key `req`'s failed authentications count under (its client IP,
    /// IPv6 by /64), when failed authentications are limited.
    #[inline]
    pub fn client(&self, req: &Parts, peer: Option<IpAddr>) -> Option<IpAddr> {
        self.limiters.failed_auth.as_ref()?;
        crate::client_ip::client_ip(req, peer, &self.settings.trusted_proxies)
            .map(ratelimit::client_key)
    }

    /// `Some(retry_after)` when `client` is over its failed-authentication
    /// budget. With `shared`, the fleet's count in Redis decides (and this
    /// process's own bucket still applies); when Redis cannot answer, this
    /// process's bucket alone.
    pub async fn over_failed_auth(&self, client: Option<IpAddr>) -> Option<u64> {
        let (Some(limiter), Some(ip)) = (&self.limiters.failed_auth, client) else {
            return None;
        };
        let local = limiter.exhausted(&ip);
        let (true, Some(limit), None) = (
            self.settings.shared,
            self.settings.failed_auth_per_ip,
            local,
        ) else {
            return local;
        };
        let key = ratelimit::shared_key(ip);
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

    /// Whether `outcome` counts against the failed-authentication budget: a
    /// credential was presented and failed (also when report mode forwards
    /// it: report mode relaxes the refusal, not the budget).
    #[inline]
    pub fn failed(&self, outcome: &Outcome) -> bool {
        self.limiters.failed_auth.is_some()
            && matches!(
                outcome,
                Outcome::Reject {
                    route: Some(_),
                    rejection: Rejection::Unauthenticated { reason, .. },
                } | Outcome::Forward {
                    would_deny: Some(Rejection::Unauthenticated { reason, .. }),
                    ..
                } if counts_as_failed_auth(*reason)
            )
    }

    /// A forwarded session's user takes one request from its budget;
    /// `Some((route, retry_after))` when it had none left. Borrows the
    /// outcome rather than taking it, so the serving path moves nothing.
    #[inline]
    pub fn over_per_user(&self, outcome: &Outcome) -> Option<(usize, u64)> {
        let Outcome::Forward {
            route,
            principal: Some(principal),
            ..
        } = outcome
        else {
            return None;
        };
        match (&self.limiters.per_user, &principal.user) {
            (Some(limiter), Some(user)) => limiter.take(user).map(|retry| (*route, retry)),
            _ => None,
        }
    }

    /// Counts a failed authentication from `client`, here and (with
    /// `shared`) in Redis.
    pub async fn count_failed_auth(&self, client: Option<IpAddr>) {
        let (Some(limiter), Some(ip)) = (&self.limiters.failed_auth, client) else {
            return;
        };
        let _ = limiter.take(&ip);
        if let (true, Some(limit)) = (self.settings.shared, self.settings.failed_auth_per_ip) {
            let key = ratelimit::shared_key(ip);
            if let Err(e) = self.store.window_count(&key, 1, limit.per).await {
                tracing::debug!(error = %e, "shared rate limit: a failure was counted locally only");
            }
        }
    }
}

/// Failures that mean a credential was presented and did not work: a bad
/// signature or format, an unknown or unreadable session, a revoked token. A
/// missing credential and an expired (but genuinely signed) JWT do not count.
fn counts_as_failed_auth(reason: AuthFailure) -> bool {
    !matches!(reason, AuthFailure::Missing | AuthFailure::Expired)
}
