//! The identity header plan: every configured identity header is removed from
//! the client's request in all its spellings (any case, `_` for `-`), then set
//! from the session, so the app can trust what it receives.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::config::IdentityHeader;
use crate::session::Session;

/// The identity header values of one session, packed into one buffer: a
/// cached session costs one small allocation for them, not two per header.
#[derive(Debug, Clone, Default)]
pub struct IdentityValues {
    buf: Bytes,
    /// Per value: the index of its header in the plan, and where it ends in `buf`.
    ends: Box<[(u16, u32)]>,
}

impl IdentityValues {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct IdentityPlan {
    headers: Vec<IdentityHeader>,
    /// The names folded (lower case, `_` as `-`), for matching client variants.
    folded: Vec<String>,
}

/// Lower-cases `name` and reads `_` as `-`, the way many servers and frameworks
/// (CGI, PHP, Django, Rails) merge header names.
fn fold(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'_' => '-',
            b => b.to_ascii_lowercase() as char,
        })
        .collect()
}

impl IdentityPlan {
    pub fn new(headers: &[IdentityHeader]) -> IdentityPlan {
        IdentityPlan {
            folded: headers.iter().map(|h| fold(h.name.as_str())).collect(),
            headers: headers.to_vec(),
        }
    }

    /// Whether a client-sent header named `name` is a copy of an identity header.
    pub fn is_identity_header(&self, name: &str) -> bool {
        self.folded.iter().any(|f| {
            f.len() == name.len()
                && f.bytes().zip(name.bytes()).all(|(f, n)| {
                    let n = if n == b'_' {
                        b'-'
                    } else {
                        n.to_ascii_lowercase()
                    };
                    f == n
                })
        })
    }

    /// The names of the request headers `strip` must remove (in request order).
    pub fn spoofed<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        names
            .into_iter()
            .filter(|n| self.is_identity_header(n))
            .map(str::to_owned)
            .collect()
    }

    /// The headers this session provides; fields the session lacks, or whose
    /// text cannot be a header value, are left out.
    pub fn values(&self, session: &Session) -> IdentityValues {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for (index, header) in self.headers.iter().enumerate() {
            let Some(text) = session.text(&header.field) else {
                continue;
            };
            let (Ok(index), Ok(_)) = (u16::try_from(index), HeaderValue::from_str(&text)) else {
                continue;
            };
            buf.extend_from_slice(text.as_bytes());
            let Ok(end) = u32::try_from(buf.len()) else {
                break;
            };
            ends.push((index, end));
        }
        IdentityValues {
            buf: Bytes::from(buf),
            ends: ends.into_boxed_slice(),
        }
    }

    /// The `(name, value)` pairs to set for `values` (which this plan built).
    pub fn headers<'a>(
        &'a self,
        values: &'a IdentityValues,
    ) -> impl Iterator<Item = (&'a HeaderName, HeaderValue)> + 'a {
        let mut start = 0usize;
        values.ends.iter().filter_map(move |&(index, end)| {
            let end = end as usize;
            let range = start..end;
            start = end;
            let name = &self.headers.get(usize::from(index))?.name;
            // Checked when the values were packed.
            let value = HeaderValue::from_maybe_shared(values.buf.slice(range)).ok()?;
            Some((name, value))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FieldPath;

    fn plan() -> IdentityPlan {
        IdentityPlan::new(&[
            IdentityHeader {
                name: HeaderName::from_static("x-user-id"),
                field: FieldPath::parse("user.id").unwrap(),
            },
            IdentityHeader {
                name: HeaderName::from_static("x-user-role"),
                field: FieldPath::parse("user.role").unwrap(),
            },
        ])
    }

    #[test]
    fn every_spelling_of_an_identity_header_is_recognised() {
        let plan = plan();
        for name in [
            "X-User-Id",
            "x-user-id",
            "X-USER-ID",
            "x_user_id",
            "X_User-Id",
        ] {
            assert!(plan.is_identity_header(name), "{name}");
        }
        for name in ["x-user-ids", "x-user", "xuser-id", "x-user-id2", "cookie"] {
            assert!(!plan.is_identity_header(name), "{name}");
        }
    }

    proptest::proptest! {
        /// Whatever case and `_`/`-` mix a client uses, an identity header is caught.
        #[test]
        fn no_spelling_of_an_identity_header_survives(
            flips in proptest::collection::vec((proptest::bool::ANY, proptest::bool::ANY), 9)
        ) {
            let spelled: String = "x-user-id"
                .chars()
                .zip(flips)
                .map(|(c, (upper, underscore))| match c {
                    '-' if underscore => '_',
                    c if upper => c.to_ascii_uppercase(),
                    c => c,
                })
                .collect();
            proptest::prop_assert!(plan().is_identity_header(&spelled), "{}", spelled);
            let found = plan().spoofed(["host", spelled.as_str()]);
            proptest::prop_assert_eq!(found, vec![spelled.clone()]);
        }

        /// Nothing that folds to another name is mistaken for an identity header.
        #[test]
        fn other_headers_are_left_alone(name in "[a-zA-Z_-]{1,20}") {
            let folded = name.to_ascii_lowercase().replace('_', "-");
            let expected = folded == "x-user-id" || folded == "x-user-role";
            proptest::prop_assert_eq!(plan().is_identity_header(&name), expected);
        }
    }

    #[test]
    fn spoofed_lists_only_identity_headers() {
        let found = plan().spoofed(["host", "X_USER_ROLE", "accept", "x-user-id"]);
        assert_eq!(found, vec!["X_USER_ROLE", "x-user-id"]);
    }

    #[test]
    fn values_skip_missing_and_unprintable_fields() {
        let session = Session {
            doc: serde_json::json!({"user": {"id": "1\n2", "role": "admin"}}),
            ttl_ms: None,
        };
        let plan = plan();
        let values = plan.values(&session);
        assert_eq!(values.len(), 1);
        let headers: Vec<_> = plan.headers(&values).collect();
        assert_eq!(headers[0].0, "x-user-role");
        assert_eq!(headers[0].1, "admin");
    }
}
