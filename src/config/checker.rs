//! The [`Checker`]: walks the parsed (and `${VAR}`-expanded) file, finds the
//! position of any key path, deserializes one section at a time while
//! reporting every type error and unknown key, and offers the value helpers
//! (durations, choices, server lists) the section checks share. The section
//! checks themselves live next to what they check (`server`, `redis`, ...).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use serde::de::{DeserializeOwned, IntoDeserializer as _};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{line_col, Pending};
use super::file;
use super::keypath::{fmt_path, idx, ignored_path, sub, tracked_path, Seg};
use super::schema::fields_of;
use super::suggest::suggest;
use super::values::is_listen_addr;

/// `kind` with its indefinite article (`an integer`, `a table`).
pub(super) fn with_article(kind: &str) -> String {
    match kind.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {kind}"),
        _ => format!("a {kind}"),
    }
}

/// serde's "expected ..." phrases, in the file's vocabulary.
fn friendly_expected(expected: &str) -> String {
    match expected {
        // Every list in proxy.toml is a list of strings.
        "a sequence" => "a list of strings".to_owned(),
        "i64" | "u64" | "usize" => "an integer".to_owned(),
        "a map" => "a table".to_owned(),
        other if other.starts_with("struct ") => "a table".to_owned(),
        other => other.to_owned(),
    }
}

/// One pass over one file: the parsed document, and every problem found so far.
pub(super) struct Checker<'r, 't> {
    pub(super) text: &'t str,
    pub(super) root: &'r Spanned<DeTable<'t>>,
    pub(super) errors: Vec<Pending>,
    /// Paths whose absence is already explained (a type error removed the
    /// key, or an unknown key was suggested as this one).
    pub(super) quiet: HashSet<String>,
    /// The configuration file's directory: key files are relative to it.
    pub(super) base: std::path::PathBuf,
    /// Where `pid_file` and `upgrade_sock` default to (see `runtime_paths`).
    pub(super) runtime_dir: std::path::PathBuf,
}

/// Each type error costs a new deserialization of its section; this bounds
/// the work a hostile file can cause.
const MAX_TYPE_ERRORS_PER_SECTION: usize = 64;

impl<'r, 't> Checker<'r, 't> {
    // -- positions ---------------------------------------------------------

    fn table_at(&self, path: &[Seg]) -> Option<&'r DeTable<'t>> {
        if path.is_empty() {
            Some(self.root.get_ref())
        } else {
            self.lookup(path)?.get_ref().as_table()
        }
    }

    pub(super) fn lookup(&self, path: &[Seg]) -> Option<&'r Spanned<DeValue<'t>>> {
        let (last, parent) = path.split_last()?;
        match last {
            Seg::Key(key) => self.table_at(parent)?.get(key.as_str()),
            Seg::Index(index) => self.lookup(parent)?.get_ref().as_array()?.get(*index),
        }
    }

    /// Byte offset of the value at `path` (or of its key, with `key`); when
    /// the path does not exist, of its closest existing ancestor.
    pub(super) fn position(&self, path: &[Seg], key: bool) -> usize {
        if key {
            if let Some((Seg::Key(name), parent)) = path.split_last() {
                if let Some((k, _)) = self
                    .table_at(parent)
                    .and_then(|t| t.get_key_value(name.as_str()))
                {
                    return k.span().start;
                }
            }
        }
        (1..=path.len())
            .rev()
            .find_map(|n| self.lookup(&path[..n]))
            .map_or(self.root.span().start, |v| v.span().start)
    }

    pub(super) fn line_of(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    // -- reporting ---------------------------------------------------------

    pub(super) fn error_at(&mut self, offset: usize, path: &[Seg], message: impl Into<String>) {
        self.errors.push(Pending {
            offset,
            path: fmt_path(path),
            message: message.into(),
        });
    }

    /// An error about the value at `path`.
    pub(super) fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        let offset = self.position(path, false);
        self.error_at(offset, path, message);
    }

    /// A required key is absent (reported at its table, unless explained).
    pub(super) fn missing(&mut self, path: &[Seg], message: impl Into<String>) {
        if !self.quiet.contains(&fmt_path(path)) {
            self.error(path, message);
        }
    }

    pub(super) fn missing_key(&mut self, path: &[Seg]) {
        let name = match path.last() {
            Some(Seg::Key(name)) => name.clone(),
            _ => String::new(),
        };
        self.missing(path, format!("missing required key `{name}`"));
    }

    fn unknown_key(&mut self, path: &[Seg], candidates: &[&'static str]) {
        let Some((Seg::Key(name), parent)) = path.split_last() else {
            return;
        };
        let mut message = format!("unknown key `{name}`");
        if let Some(close) = suggest(name, candidates.iter().copied()) {
            let _ = write!(message, "; did you mean `{close}`?");
            self.quiet.insert(fmt_path(&sub(parent, close)));
        }
        let offset = self.position(path, true);
        self.error_at(offset, path, message);
    }

    // -- deserialization ---------------------------------------------------

    /// Deserializes the table at `path` into `T`. A value of the wrong type is
    /// reported and its key dropped before trying again, so every type error
    /// and every unknown key of the section is reported. `None` when the
    /// value is not a table at all.
    pub(super) fn section<T: DeserializeOwned>(&mut self, path: &[Seg]) -> Option<T> {
        let value = self.lookup(path)?;
        if !value.get_ref().is_table() {
            let found = with_article(value.get_ref().type_str());
            self.error(path, format!("expected a table, found {found}"));
            return None;
        }
        let mut working = value.clone();
        for _ in 0..MAX_TYPE_ERRORS_PER_SECTION {
            let mut ignored = Vec::new();
            let mut track = serde_path_to_error::Track::new();
            let de = serde_path_to_error::Deserializer::new(
                working.clone().into_deserializer(),
                &mut track,
            );
            let result: Result<T, toml::de::Error> =
                serde_ignored::deserialize(de, |p| ignored.push(ignored_path(&p)));
            let err = match result {
                Ok(parsed) => {
                    self.report_unknown::<T>(path, &ignored);
                    return Some(parsed);
                }
                Err(err) => err,
            };
            let relative = tracked_path(&track.path());
            let full = [path, relative.as_slice()].concat();
            self.type_error(&full, &err);
            match remove_key(&mut working, &relative) {
                Some(removed) => {
                    self.quiet
                        .insert(fmt_path(&[path, removed.as_slice()].concat()));
                }
                None => {
                    self.report_unknown::<T>(path, &ignored);
                    return None;
                }
            }
        }
        None
    }

    fn type_error(&mut self, path: &[Seg], err: &toml::de::Error) {
        let message = err.message();
        let friendly = message
            .strip_prefix("invalid type: ")
            .and_then(|rest| rest.rsplit_once(", expected "))
            .map(|(_, expected)| {
                let found = self.lookup(path).map_or_else(
                    || "something else".to_owned(),
                    |v| with_article(v.get_ref().type_str()),
                );
                format!("expected {}, found {found}", friendly_expected(expected))
            });
        let offset = match self.lookup(path) {
            Some(value) => value.span().start,
            None => err
                .span()
                .map_or_else(|| self.position(path, false), |s| s.start),
        };
        self.error_at(offset, path, friendly.unwrap_or_else(|| message.to_owned()));
    }

    fn report_unknown<T: DeserializeOwned>(&mut self, base: &[Seg], ignored: &[Vec<Seg>]) {
        for relative in ignored {
            let candidates = match relative.split_last().map(|(_, parent)| parent) {
                Some([]) => fields_of::<T>(),
                Some([.., Seg::Key(parent)]) if parent == "on_unauthenticated" => {
                    fields_of::<file::OnUnauthenticated>()
                }
                Some([.., Seg::Key(parent)]) if parent == "metrics_basic_auth" => {
                    fields_of::<file::BasicAuth>()
                }
                Some([.., Seg::Key(parent)])
                    if parent == "failed_auth_per_ip" || parent == "requests_per_user" =>
                {
                    fields_of::<file::Bucket>()
                }
                Some([.., Seg::Key(parent)]) if parent == "health_check" => {
                    fields_of::<file::HealthCheck>()
                }
                _ => &[],
            };
            self.unknown_key(&[base, relative.as_slice()].concat(), candidates);
        }
    }

    // -- value helpers -----------------------------------------------------

    pub(super) fn duration(
        &mut self,
        path: &[Seg],
        value: Option<&str>,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        let Some(text) = value else {
            return default;
        };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.error(path, "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(err) => {
                self.error(
                    path,
                    format!(
                        "invalid duration {text:?} ({err}); write e.g. \"100ms\", \"5s\" or \"1m\""
                    ),
                );
                default
            }
        }
    }

    /// A duration that is off when absent (`None`) and never zero.
    pub(super) fn optional_duration(
        &mut self,
        path: &[Seg],
        value: Option<&str>,
    ) -> Option<Duration> {
        let text = value?;
        Some(self.duration(path, Some(text), Duration::ZERO, false))
    }

    /// One of a fixed set of strings; `None` (after reporting) when unknown.
    pub(super) fn choice<T: Copy>(
        &mut self,
        path: &[Seg],
        value: Option<&str>,
        default: T,
        options: &[(&str, T)],
    ) -> Option<T> {
        let Some(text) = value else {
            return Some(default);
        };
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let expected: Vec<String> = options
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect();
        self.error(
            path,
            format!(
                "unknown value {text:?}, expected one of {}",
                expected.join(", ")
            ),
        );
        None
    }

    pub(super) fn non_empty(
        &mut self,
        path: &[Seg],
        value: Option<String>,
        default: &str,
    ) -> String {
        match value {
            Some(v) if v.is_empty() => {
                self.error(path, "must not be empty");
                default.to_owned()
            }
            Some(v) => v,
            None => default.to_owned(),
        }
    }

    /// A required, non-empty list of `host:port` servers.
    pub(super) fn servers(
        &mut self,
        path: &[Seg],
        value: Option<Vec<String>>,
        what: &str,
    ) -> Option<Vec<String>> {
        match value {
            None => {
                self.missing_key(path);
                None
            }
            Some(list) if list.is_empty() => {
                self.error(path, format!("must list at least one {what}"));
                None
            }
            Some(list) => {
                let mut ok = true;
                for (i, server) in list.iter().enumerate() {
                    if !is_listen_addr(server) || server.ends_with(":0") {
                        self.error(&idx(path, i), "must be host:port");
                        ok = false;
                    }
                }
                ok.then_some(list)
            }
        }
    }

    pub(super) fn string_list(&mut self, path: &[Seg], value: Option<&[String]>, what: &str) {
        match value {
            None => self.missing_key(path),
            Some([]) => self.error(path, format!("must list at least one {what}")),
            Some(_) => {}
        }
    }
}

/// Drops the key a type error points into (the innermost key on `path`) so
/// the section can be deserialized again; returns the dropped key's path.
fn remove_key(value: &mut Spanned<DeValue<'_>>, path: &[Seg]) -> Option<Vec<Seg>> {
    let at = path.iter().rposition(|seg| matches!(seg, Seg::Key(_)))?;
    let Seg::Key(key) = &path[at] else {
        return None;
    };
    let mut parent = value;
    for seg in &path[..at] {
        parent = match (seg, parent.get_mut()) {
            (Seg::Key(k), DeValue::Table(table)) => table.get_mut(k.as_str())?,
            (Seg::Index(i), DeValue::Array(items)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    match parent.get_mut() {
        DeValue::Table(table) => table.remove(key.as_str()).map(|_| path[..=at].to_vec()),
        _ => None,
    }
}
