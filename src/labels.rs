//! The label vocabulary of metrics and access logs, as plain types: what
//! happened to a request and where a session lookup was answered. The
//! pipeline, the cache and the access log report in these words, and
//! `metrics` turns them into series; this module depends on nothing else in
//! the crate, so telemetry stays a leaf that everyone reports to.

/// What happened to a request, as counted in metrics and access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Forwarded,
    Public,
    Unauthenticated,
    Forbidden,
    StoreError,
    /// Refused before authentication: bad path, no route, oversized headers.
    Invalid,
    /// A logout answered by the gateway (`logout_path`, `logout_all_path`).
    LoggedOut,
    /// Refused by `[rate_limit]` (429).
    RateLimited,
    /// A `mode = "report"` route forwarded a request that enforcement would
    /// have refused (the reason says why).
    WouldDeny,
    /// A plain-HTTP request sent to https (`[server] https_redirect`).
    Redirected,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Forwarded => "forwarded",
            Decision::Public => "public",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Forbidden => "forbidden",
            Decision::StoreError => "store_error",
            Decision::Invalid => "invalid",
            Decision::LoggedOut => "logged_out",
            Decision::RateLimited => "rate_limited",
            Decision::WouldDeny => "would_deny",
            Decision::Redirected => "redirected",
        }
    }
}

/// Where a lookup was answered (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupSource {
    Cache,
    Redis,
    /// A last-known-good record, served while Redis is unreachable (`on_store_error = "stale"`).
    Stale,
}

/// The result of one session lookup, for `sessiongate_session_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    /// Found (a session, or for the cache an entry of any kind).
    Hit,
    /// Not there.
    Miss,
    /// The source could not answer.
    Error,
}
