//! `${VAR}` expansion in every string of the file, before anything is
//! checked, so a variable's value is checked like text written in place.

use std::borrow::Cow;

use toml::de::DeValue;
use toml::Spanned;

use super::error::Pending;
use super::keypath::{fmt_path, Seg};

pub(super) fn expand_env(
    value: &mut Spanned<DeValue<'_>>,
    path: &mut Vec<Seg>,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<Pending>,
) {
    let offset = value.span().start;
    match value.get_mut() {
        DeValue::String(s) => match expand_str(s, env) {
            Ok(Some(expanded)) => *s = Cow::Owned(expanded),
            Ok(None) => {}
            Err(messages) => errors.extend(messages.into_iter().map(|message| Pending {
                offset,
                path: fmt_path(path),
                message,
            })),
        },
        DeValue::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                expand_env(item, path, env, errors);
                path.pop();
            }
        }
        DeValue::Table(table) => {
            for (key, item) in table.iter_mut() {
                path.push(Seg::Key(key.get_ref().to_string()));
                expand_env(item, path, env, errors);
                path.pop();
            }
        }
        DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_) | DeValue::Datetime(_) => {}
    }
}

/// Expands `${NAME}` and `${NAME:-default}` (the default when `NAME` is unset
/// or empty, as in a POSIX shell); `$${` is a literal `${`. `Ok(None)` when
/// there is nothing to expand; `Err` lists every unset variable or malformed
/// reference.
fn expand_str(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, Vec<String>> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut errors = Vec::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let reference = after.split_once('}').map(|(inner, remaining)| {
                let (name, default) = match inner.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (inner, None),
                };
                (name, default, remaining)
            });
            match reference {
                Some((name, default, remaining)) if is_env_name(name) => {
                    match (env(name), default) {
                        (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                        (Some(value), _) => out.push_str(&value),
                        (None, Some(default)) => out.push_str(default),
                        (None, None) => {
                            errors.push(format!("environment variable {name} is not set"))
                        }
                    }
                    rest = remaining;
                }
                _ => {
                    errors.push(
                        "malformed `${...}`: expected `${NAME}` or `${NAME:-default}` \
                         (write `$${` for a literal `${`)"
                            .to_owned(),
                    );
                    out.push_str("${");
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(Some(out))
    } else {
        Err(errors)
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_str_rules() {
        let env = |name: &str| (name == "A").then(|| "x".to_owned());
        assert_eq!(expand_str("plain $5", &env), Ok(None));
        assert_eq!(expand_str("${A}-${A}", &env), Ok(Some("x-x".to_owned())));
        assert_eq!(expand_str("$${A}", &env), Ok(Some("${A}".to_owned())));
        assert_eq!(expand_str("${B:-d:1}", &env), Ok(Some("d:1".to_owned())));
        assert_eq!(expand_str("${A:-d}", &env), Ok(Some("x".to_owned())));
        assert_eq!(expand_str("${B:-}", &env), Ok(Some(String::new())));
        let empty = |_: &str| Some(String::new());
        assert_eq!(expand_str("${A:-d}", &empty), Ok(Some("d".to_owned())));
        assert_eq!(expand_str("${A}", &empty), Ok(Some(String::new())));
        assert!(expand_str("${A", &env).is_err());
        assert!(expand_str("${1A}", &env).is_err());
        assert_eq!(
            expand_str("${B}${C}", &env).unwrap_err(),
            [
                "environment variable B is not set",
                "environment variable C is not set"
            ]
        );
    }
}
