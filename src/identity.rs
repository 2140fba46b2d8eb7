//! The identity header plan: every configured identity header is removed from
//! the client's request in all its spellings (any case, `_` for `-`), then set
//! from the session, so the app can trust what it receives.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::config::IdentityHeader;

/// The identity header values of one session, packed into one buffer: a
/// cached session costs one small allocation for them, not two per header.
#[derive(Debug, Clone, Default)]
pub struct IdentityValues {
    buf: Bytes,
    /// Per value: the index of its header in the plan, and where it ends in `buf`.
    ends: Box<[(u16, u32)]>,
    /// A `required` header has no valid value: the session may not be forwarded.
    missing_required: bool,
}

impl IdentityValues {
    /// Whether a `required` identity header has no valid value.
    pub fn missing_required(&self) -> bool {
        self.missing_required
    }

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

/// Whether `text` is sent as an identity header value: at most `max_bytes`
/// bytes, no control characters (CR, LF, NUL, tab, DEL), no leading or
/// trailing space (parsers trim it, so the app would read another value), and
/// non-empty. Non-ASCII text is sent as its UTF-8 bytes.
pub fn is_valid_value(text: &str, max_bytes: usize) -> bool {
    !text.is_empty()
        && text.len() <= max_bytes
        && !text.starts_with(' ')
        && !text.ends_with(' ')
        // What is left is what a header value may hold (visible ASCII,
        // space, obs-text), so `HeaderValue` takes it: no copy to check.
        && !text.bytes().any(|b| b < 0x20 || b == 0x7F)
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

    /// The session fields the headers are read from.
    pub fn fields(&self) -> impl Iterator<Item = &crate::config::FieldPath> {
        self.headers.iter().map(|h| &h.field)
    }

    /// The headers a session provides, given the text of the `index`-th
    /// header's field. Fields the session lacks, and values that are not
    /// [`is_valid_value`], are left out; when such a header is `required`
    /// the values say so.
    pub fn values<'t>(&self, text: impl Fn(usize) -> Option<&'t str>) -> IdentityValues {
        // Sized first, so the buffer neither grows nor holds spare room
        // (a cached principal keeps it).
        let total = (0..self.headers.len())
            .filter_map(|index| text(index).map(str::len))
            .sum();
        let mut buf = Vec::with_capacity(total);
        let mut ends = Vec::with_capacity(self.headers.len());
        let mut missing_required = false;
        for (index, header) in self.headers.iter().enumerate() {
            let text = text(index).filter(|text| is_valid_value(text, header.max_bytes));
            let (Some(text), Ok(index)) = (text, u16::try_from(index)) else {
                missing_required |= header.required;
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
            missing_required,
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

    /// How many identity headers there are.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FieldPath;
    use crate::session::Session;

    fn values_of(plan: &IdentityPlan, session: &Session) -> IdentityValues {
        let texts: Vec<Option<String>> = plan.fields().map(|f| session.text(f)).collect();
        plan.values(|index| texts[index].as_deref())
    }

    fn plan() -> IdentityPlan {
        IdentityPlan::new(&[
            IdentityHeader {
                name: HeaderName::from_static("x-user-id"),
                field: FieldPath::parse("user.id").unwrap(),
                required: true,
                max_bytes: 16,
            },
            IdentityHeader {
                name: HeaderName::from_static("x-user-role"),
                field: FieldPath::parse("user.role").unwrap(),
                required: false,
                max_bytes: 1024,
            },
        ])
    }

    #[test]
    fn invalid_values_are_left_out_and_required_ones_say_so() {
        let plan = plan();
        let sent = |doc: &str| {
            let session = Session::decode(
                crate::session::store::RawSession {
                    value: crate::session::store::RawValue::String(doc.as_bytes().to_vec()),
                    ttl_ms: None,
                },
                crate::config::ValueFormat::Json,
            )
            .expect("session");
            let values = values_of(&plan, &session);
            let headers: Vec<String> = plan
                .headers(&values)
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or("<utf8>")))
                .collect();
            (headers, values.missing_required())
        };
        assert_eq!(
            sent(r#"{"user":{"id":"7","role":"admin"}}"#),
            (
                vec!["x-user-id=7".to_owned(), "x-user-role=admin".to_owned()],
                false
            )
        );
        for bad in [
            r#""a\r\nX-Admin: 1""#,
            r#""a\u0000""#,
            r#""a\tb""#,
            r#"" padded""#,
            r#""""#,
            r#""12345678901234567""#,
        ] {
            let doc = format!(r#"{{"user":{{"id":{bad},"role":"admin"}}}}"#);
            assert_eq!(
                sent(&doc),
                (vec!["x-user-role=admin".to_owned()], true),
                "{bad}"
            );
        }
        // An optional header is just left out.
        let doc = r#"{"user":{"id":"7","role":"a\nb"}}"#;
        assert_eq!(sent(doc), (vec!["x-user-id=7".to_owned()], false));
        assert!(is_valid_value("Zoë", 16));
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
            let found = spoofed(&plan(), ["host", spelled.as_str()]);
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

    /// The request headers the gateway strips, in request order (as
    /// `prepare_upstream_request` picks them).
    fn spoofed<'a>(plan: &IdentityPlan, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        names
            .into_iter()
            .filter(|n| plan.is_identity_header(n))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn spoofed_lists_only_identity_headers() {
        let found = spoofed(&plan(), ["host", "X_USER_ROLE", "accept", "x-user-id"]);
        assert_eq!(found, vec!["X_USER_ROLE", "x-user-id"]);
    }

    #[test]
    fn values_skip_missing_and_unprintable_fields() {
        let session = Session {
            doc: serde_json::json!({"user": {"id": "1\n2", "role": "admin"}}),
            ttl_ms: None,
        };
        let plan = plan();
        let values = values_of(&plan, &session);
        assert_eq!(values.len(), 1);
        let headers: Vec<_> = plan.headers(&values).collect();
        assert_eq!(headers[0].0, "x-user-role");
        assert_eq!(headers[0].1, "admin");
    }

    proptest::proptest! {
        #[test]
        fn every_valid_value_is_a_header_value(text in "\\PC{0,12}|[\\x00-\\xff]{0,12}") {
            if is_valid_value(&text, 64) {
                proptest::prop_assert!(HeaderValue::from_str(&text).is_ok(), "{:?}", text);
            }
        }
    }
}
