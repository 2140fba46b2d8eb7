//! The route table and the readings of a request.
//!
//! Apps do not all read a path the same way: Express routes case-insensitively
//! by default, Tomcat and Jetty drop `;` path parameters before they route. A
//! request is therefore matched under each reading that a common framework
//! could make of its (already normalised) path, and it must satisfy the route
//! of every one of them: the strictest `access`, every `roles` list, every
//! `methods` list. It is forwarded to the route of the exact reading. A
//! variant of a protected path thus gets at least that path's protection, and
//! no variant turns a protected path into a public one.

use super::path::{prefix_matches, strip_parameters};
use crate::config::Route;

/// One way to read a request's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The normalised path, byte for byte (the route that serves the request).
    Exact,
    /// ASCII case folded, against case-folded prefixes (Express, case-insensitive servers).
    CaseFolded,
    /// `;` parameters removed from each segment (Tomcat, Jetty); only when
    /// `path_parameters = "allow"` lets such paths in.
    WithoutParameters,
    /// Both of the above.
    WithoutParametersCaseFolded,
}

impl Reading {
    pub fn as_str(self) -> &'static str {
        match self {
            Reading::Exact => "exact",
            Reading::CaseFolded => "case_folded",
            Reading::WithoutParameters => "without_parameters",
            Reading::WithoutParametersCaseFolded => "without_parameters_case_folded",
        }
    }
}

struct Entry {
    host: Option<String>,
    prefix: String,
    folded: String,
}

/// The routes in file order (the first match wins), with their prefixes
/// case-folded once at load time.
pub struct RouteTable {
    entries: Vec<Entry>,
    /// Some prefix has an upper-case letter, so even a lower-case path can
    /// read differently when case-folded.
    upper_prefix: bool,
}

/// The routes a request matched, one per reading (at most four).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// The route of the exact reading: it serves the request.
    pub route: usize,
    others: [Option<(Reading, usize)>; 3],
}

impl Selection {
    /// Every reading with the route it chose, the exact one first.
    pub fn readings(&self) -> impl Iterator<Item = (Reading, usize)> + '_ {
        std::iter::once((Reading::Exact, self.route)).chain(self.others.iter().flatten().copied())
    }

    /// The distinct routes the request must satisfy, the exact one first.
    pub fn routes(&self) -> impl Iterator<Item = usize> + '_ {
        let mut seen = [self.route; 4];
        let mut n = 1;
        std::iter::once(self.route).chain(self.others.iter().flatten().filter_map(
            move |&(_, r)| {
                if seen[..n].contains(&r) {
                    return None;
                }
                seen[n] = r;
                n += 1;
                Some(r)
            },
        ))
    }
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> RouteTable {
        let entries: Vec<Entry> = routes
            .iter()
            .map(|r| Entry {
                host: r.host.clone(),
                prefix: r.path_prefix.clone(),
                folded: r.path_prefix.to_ascii_lowercase(),
            })
            .collect();
        RouteTable {
            upper_prefix: entries.iter().any(|e| e.prefix != e.folded),
            entries,
        }
    }

    /// The first route for `host` (normalised) whose prefix matches `path`.
    fn find(&self, host: &str, path: &str, folded: bool) -> Option<usize> {
        self.entries.iter().position(|e| {
            e.host.as_deref().is_none_or(|want| want == host)
                && prefix_matches(path, if folded { &e.folded } else { &e.prefix })
        })
    }

    /// Matches `path` (normalised) under every reading. `None` when some
    /// reading has no route: the request is refused rather than served under a
    /// reading the configuration never meant to expose.
    pub fn select(&self, host: &str, path: &str) -> Option<Selection> {
        let route = self.find(host, path, false)?;
        let mut others = [None; 3];
        let folds = |p: &str| self.upper_prefix || p.bytes().any(|b| b.is_ascii_uppercase());
        if folds(path) {
            let r = self.find(host, &path.to_ascii_lowercase(), true)?;
            others[0] = Some((Reading::CaseFolded, r));
        }
        if path.contains(';') {
            let stripped = strip_parameters(path);
            let r = self.find(host, &stripped, false)?;
            others[1] = Some((Reading::WithoutParameters, r));
            if folds(&stripped) {
                let r = self.find(host, &stripped.to_ascii_lowercase(), true)?;
                others[2] = Some((Reading::WithoutParametersCaseFolded, r));
            }
        }
        Some(Selection { route, others })
    }
}
