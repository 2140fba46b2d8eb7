//! The route stage: the routes a request matched under every reading of its
//! path, and what they say together: whether it is public, which route's
//! authentication settings apply, which methods are served, whether a
//! refusal is only reported.

use http::Method;

use crate::config::{Access, ReportStoreUnavailable, Route, RouteMode, StoreErrorPolicy};
use crate::reject::Rejection;
use crate::route::table::{RouteTable, Selection};

/// The routes of one request: every reading's, the exact one serving it.
#[derive(Clone, Copy)]
pub(super) struct Matched<'a> {
    pub routes: &'a [Route],
    pub selection: Selection,
}

impl<'a> Matched<'a> {
    /// Matches `path` (normalised) on `host` (normalised) under every reading;
    /// `None` when some reading has no route.
    #[inline]
    pub fn select(
        table: &RouteTable,
        routes: &'a [Route],
        host: &str,
        path: &str,
    ) -> Option<Matched<'a>> {
        let selection = table.select(host, path)?;
        Some(Matched { routes, selection })
    }

    /// The route of the exact reading: it serves the request.
    #[inline]
    pub fn index(&self) -> usize {
        self.selection.route
    }

    /// The distinct routes the request must satisfy, the exact one first.
    pub fn all(&self) -> impl Iterator<Item = (usize, &'a Route)> + '_ {
        let routes = self.routes;
        self.selection.routes().map(move |r| (r, &routes[r]))
    }

    /// The route whose authentication settings apply: the first
    /// authenticated one (the exact reading's, unless it is public and a
    /// stricter reading is not); `None` when every reading is public.
    #[inline]
    pub fn strict(&self) -> Option<usize> {
        self.all()
            .find(|(_, r)| r.access == Access::Authenticated)
            .map(|(i, _)| i)
    }

    /// Whether every authenticated route is in report mode.
    pub fn reporting(&self) -> bool {
        let mut authenticated = self
            .all()
            .filter(|(_, r)| r.access == Access::Authenticated)
            .peekable();
        authenticated.peek().is_some() && authenticated.all(|(_, r)| r.mode == RouteMode::Report)
    }

    /// Whether report mode forwards a request refused with `rejection`: a
    /// missing or invalid credential, a role or a rule, when every reading's
    /// route is in report mode (the strictest reading wins); a store error
    /// only when each of them also says `report_store_unavailable = "forward"`.
    /// Canonicalisation, method and rate-limit refusals are never relaxed.
    pub fn relaxed(&self, rejection: &Rejection) -> bool {
        let relaxable = match rejection {
            Rejection::Unauthenticated { .. }
            | Rejection::Forbidden
            | Rejection::IdentityUnavailable => true,
            Rejection::StoreUnavailable => self
                .all()
                .filter(|(_, r)| r.access == Access::Authenticated)
                .all(|(_, r)| r.report_store_unavailable == ReportStoreUnavailable::Forward),
            _ => false,
        };
        relaxable && self.reporting()
    }

    /// Whether every authenticated route lets the last known good state of a
    /// session decide while Redis is unreachable (`on_store_error = "stale"`).
    pub fn stale_allowed(&self) -> bool {
        self.all()
            .all(|(_, r)| r.access == Access::Public || r.on_store_error == StoreErrorPolicy::Stale)
    }

    /// Every reading's route must serve the method: its `methods` list when
    /// it has one, else anything but TRACE. Returns the `Allow` value of a
    /// refusal.
    pub fn method_refused(&self, method: &Method) -> Option<String> {
        let refused = self.all().any(|(_, r)| match &r.methods {
            Some(methods) => !methods.contains(method),
            None => *method == Method::TRACE,
        });
        if !refused {
            return None;
        }
        let allowed: Vec<&str> = match &self.routes[self.index()].methods {
            Some(methods) => methods.iter().map(Method::as_str).collect(),
            None => vec!["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        };
        Some(allowed.join(", "))
    }
}
