//! How configuration problems are reported: one [`ConfigError`] per problem,
//! with its key path and `line:column`, collected into [`ConfigErrors`] and
//! rendered one line per error, as compilers do.

use std::fmt::{self, Write as _};

/// One problem in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `route[2].upstream` (array indexes are 0-based);
    /// empty for syntax and I/O errors.
    pub path: String,
    /// 1-based line; 0 when the error is not tied to a position (I/O errors).
    pub line: usize,
    /// 1-based column, in characters; 0 when `line` is 0.
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: ", self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration file, sorted by position.
/// Displays as one `<source>:<line>:<column>: <path>: <message>` line per error.
#[derive(Debug, thiserror::Error)]
#[error("{}", render_errors(.source_name, .errors))]
pub struct ConfigErrors {
    /// The file name used in messages (`load` uses the path it was given).
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

fn render_errors(source_name: &str, errors: &[ConfigError]) -> String {
    let mut out = String::new();
    for (i, error) in errors.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        // With a position: `<source>:<line>:<col>: ...`; without: `<source>: ...`.
        let separator = if error.line > 0 { ":" } else { ": " };
        let _ = write!(out, "{source_name}{separator}{error}");
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before
        .get(line_start..)
        .map_or(1, |s| s.chars().count() + 1);
    (line, column)
}

/// An error found while checking, positioned by byte offset until the whole
/// file has been checked (then sorted and turned into a [`ConfigError`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Pending {
    pub(super) offset: usize,
    pub(super) path: String,
    pub(super) message: String,
}
