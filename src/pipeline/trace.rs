//! What the stages report as they decide. Serving a request reports to
//! [`NoTrace`], whose methods are empty and compile away (the stages are
//! generic over their `Trace`); `explain` reports to a recorder that builds
//! its [`Explanation`](crate::explain::Explanation) from the same events, so
//! what it shows is what the serving path did.

use crate::config::KeyTemplate;
use crate::labels::LookupSource;
use crate::route::target::Target;
use crate::session::cache::{Lookup, Principal};
use crate::session::{RawSession, StoreError};

use super::route::Matched;

/// A stage's report of the credential it found. `id` is the whole session
/// (or token) id: whoever records it must redact it.
#[derive(Clone, Copy, Default)]
pub(super) struct CredentialSeen<'a> {
    /// `cookie`, `bearer` or `none`.
    pub source: &'static str,
    /// `express`, `plain`, `opaque` or `jwt`.
    pub format: Option<&'static str>,
    /// `ok`, `absent`, `malformed`, or why the signature or token was refused.
    pub check: &'static str,
    /// Which `[session] secrets` entry signed an express cookie.
    pub secret_index: Option<usize>,
    pub id: Option<&'a str>,
}

/// A stage's report of the Redis lookup behind a credential. `id` is whole.
pub(super) enum LookupSeen<'a> {
    /// A session key, through the cache.
    Session {
        template: &'a KeyTemplate,
        id: &'a str,
        resolved: &'a Result<(Lookup, LookupSource), StoreError>,
    },
    /// A bearer JWT's token key (never cached).
    Token {
        template: &'a KeyTemplate,
        id: &'a str,
        fetched: &'a Result<Option<RawSession>, StoreError>,
    },
}

/// What the stages report to. Every method defaults to doing nothing.
pub(super) trait Trace: Send {
    /// A dry run (`explain`): nothing may change (no cache fill, no sliding
    /// expiry, no logout, no metric), and what is shown (a token's TTL) is
    /// read even when serving would not need it.
    const DRY_RUN: bool = false;

    /// The request's canonical target and host.
    fn request(&mut self, _target: &Target<'_>) {}
    /// Something the decision depended on that no stage shows.
    fn note(&mut self, _note: &'static str) {}
    /// The routes the request matched.
    fn routed(&mut self, _matched: &Matched<'_>) {}
    fn credential(&mut self, _seen: CredentialSeen<'_>) {}
    fn lookup(&mut self, _seen: LookupSeen<'_>) {}
    /// A session was resolved and is checked against the routes' roles.
    fn authorizing(&mut self, _matched: &Matched<'_>, _principal: &Principal) {}
}

/// The serving path's trace: reports go nowhere, at no cost.
pub(super) struct NoTrace;

impl Trace for NoTrace {}
