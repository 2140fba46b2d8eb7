//! Dotted key paths (`route[2].upstream`): how a checker names a value, and
//! how serde's own path trackers are turned into one.

use std::fmt::Write as _;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

pub(super) fn fmt_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(key);
                } else {
                    let _ = write!(out, "{key:?}");
                }
            }
            Seg::Index(index) => {
                let _ = write!(out, "[{index}]");
            }
        }
    }
    out
}

pub(super) fn sub(path: &[Seg], key: &str) -> Vec<Seg> {
    let mut path = path.to_vec();
    path.push(Seg::Key(key.to_owned()));
    path
}

pub(super) fn idx(path: &[Seg], index: usize) -> Vec<Seg> {
    let mut path = path.to_vec();
    path.push(Seg::Index(index));
    path
}

pub(super) fn ignored_path(path: &serde_ignored::Path<'_>) -> Vec<Seg> {
    match path {
        serde_ignored::Path::Root => Vec::new(),
        serde_ignored::Path::Seq { parent, index } => idx(&ignored_path(parent), *index),
        serde_ignored::Path::Map { parent, key } => sub(&ignored_path(parent), key),
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

pub(super) fn tracked_path(path: &serde_path_to_error::Path) -> Vec<Seg> {
    path.iter()
        .filter_map(|seg| match seg {
            serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {
                None
            }
        })
        .collect()
}
