//! Deciding on one reading of a request, and forwarding exactly that reading.
//!
//! - `target`: the request-target and `Host` in canonical form (which forms
//!   are accepted, how the host is normalised, what the upstream is sent).
//! - `path`: path normalisation and prefix matching.
//! - `table`: the route table, matched under every reading of a path that a
//!   common framework could make (exact, case-folded, without `;` parameters).

pub mod path;
pub mod table;
pub mod target;
