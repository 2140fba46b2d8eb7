//! Turns what Redis holds (a JSON string or a hash) into a `Session` whose
//! fields are read by dotted path.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::{FieldPath, ValueFormat};
use crate::session::store::RawSession;

/// A resolved, valid session.
#[derive(Debug, Clone)]
pub struct Session {
    pub doc: Value,
    /// Milliseconds the key has left in Redis; `None` when it never expires.
    pub ttl_ms: Option<u64>,
}

/// The stored value could not be read as a session (e.g. not JSON).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored session is not valid {0}")]
pub struct SessionUnreadable(&'static str);

impl Session {
    pub fn decode(raw: RawSession, format: ValueFormat) -> Result<Session, SessionUnreadable> {
        let doc = match (raw.value, format) {
            (crate::session::store::RawValue::String(bytes), ValueFormat::Json) => {
                let doc: Value =
                    serde_json::from_slice(&bytes).map_err(|_| SessionUnreadable("JSON"))?;
                if !doc.is_object() {
                    return Err(SessionUnreadable("JSON object"));
                }
                doc
            }
            (crate::session::store::RawValue::Hash(fields), ValueFormat::Hash) => Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect::<Map<String, Value>>(),
            ),
            (_, ValueFormat::Json) => return Err(SessionUnreadable("JSON")),
            (_, ValueFormat::Hash) => return Err(SessionUnreadable("hash")),
        };
        Ok(Session {
            doc,
            ttl_ms: raw.ttl_ms,
        })
    }

    /// Like [`Session::decode`], keeping only the fields in `wanted`: the
    /// rest of a JSON document is checked (it must still be valid JSON with
    /// an object at the top) but skipped without being built. Reading a
    /// wanted field gives what reading it from the whole document gives; a
    /// key that appears twice counts by its last value, as `JSON.parse` has it.
    pub fn decode_only(
        raw: RawSession,
        format: ValueFormat,
        wanted: &Wanted,
    ) -> Result<Session, SessionUnreadable> {
        let bytes = match (&raw.value, format) {
            (crate::session::store::RawValue::String(bytes), ValueFormat::Json) => bytes,
            _ => return Session::decode(raw, format),
        };
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let doc = Prune { wanted, top: true }
            .deserialize(&mut de)
            .and_then(|doc| de.end().map(|()| doc))
            .map_err(|_| SessionUnreadable("JSON"))?;
        if !doc.is_object() {
            return Err(SessionUnreadable("JSON object"));
        }
        Ok(Session {
            doc,
            ttl_ms: raw.ttl_ms,
        })
    }

    /// The session of a verified bearer JWT: `{"claims": {...}, "session": v}`,
    /// where `v` is the token key's value: a JSON object as it is, anything else
    /// (e.g. `1`) as its raw text, a hash as an object of strings.
    pub fn from_token(claims: Map<String, Value>, raw: RawSession) -> Session {
        let session = match raw.value {
            crate::session::store::RawValue::String(bytes) => {
                match serde_json::from_slice::<Value>(&bytes) {
                    Ok(doc) if doc.is_object() => doc,
                    _ => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                }
            }
            crate::session::store::RawValue::Hash(fields) => Value::Object(
                fields
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            ),
        };
        let mut doc = Map::with_capacity(2);
        doc.insert("claims".to_owned(), Value::Object(claims));
        doc.insert("session".to_owned(), session);
        Session {
            doc: Value::Object(doc),
            ttl_ms: raw.ttl_ms,
        }
    }

    /// The field at `path` as header-ready text: strings as they are, numbers
    /// and booleans printed; objects, arrays and null have no text.
    pub fn text(&self, path: &FieldPath) -> Option<String> {
        scalar_text(path.lookup(&self.doc)?)
    }

    /// The texts of the field at `path`: one for a scalar, one per scalar
    /// element of an array, none otherwise.
    pub fn texts(&self, path: &FieldPath) -> Vec<String> {
        match path.lookup(&self.doc) {
            Some(Value::Array(items)) => items.iter().filter_map(scalar_text).collect(),
            Some(value) => scalar_text(value).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// Whether the field at `path` is one of `allowed` (a string field, or any
    /// element of an array field).
    pub fn has_any_of(&self, path: &FieldPath, allowed: &[String]) -> bool {
        match path.lookup(&self.doc) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(scalar_text)
                .any(|v| allowed.contains(&v)),
            Some(value) => scalar_text(value).is_some_and(|v| allowed.contains(&v)),
            None => false,
        }
    }
}

/// The fields read from a session, as a tree of path segments.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// This whole value is read.
    whole: bool,
    children: Vec<(String, Wanted)>,
}

impl Wanted {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a FieldPath>) -> Wanted {
        let mut wanted = Wanted::default();
        for path in paths {
            wanted.add(path.segments());
        }
        wanted
    }

    fn add(&mut self, segments: &[String]) {
        let Some((first, rest)) = segments.split_first() else {
            self.whole = true;
            return;
        };
        let child = match self.children.iter().position(|(name, _)| name == first) {
            Some(i) => &mut self.children[i].1,
            None => {
                self.children.push((first.clone(), Wanted::default()));
                &mut self.children.last_mut().expect("just pushed").1
            }
        };
        child.add(rest);
    }

    fn child(&self, name: &str) -> Option<&Wanted> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, child)| child)
    }
}

/// Deserialises the parts of a value that `wanted` reads. A value that is
/// not an object where a path goes deeper has no field there: it becomes
/// `null`, on which every lookup fails as it would have on the value itself.
/// At the top, a non-object stays distinguishable (an error).
struct Prune<'w> {
    wanted: &'w Wanted,
    top: bool,
}

impl<'de> DeserializeSeed<'de> for Prune<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.wanted.whole {
            return serde::Deserialize::deserialize(deserializer);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Prune<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.wanted.child(&key) {
                Some(child) => {
                    let value = map.next_value_seed(Prune {
                        wanted: child,
                        top: false,
                    })?;
                    out.insert(key.into_owned(), value);
                }
                None => {
                    // Skipped, and a wanted key seen before under the same
                    // name stays; an unwanted key never shadows anything.
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.not_an_object()
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Value, E> {
        self.not_an_object()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Value, E> {
        self.not_an_object()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Value, E> {
        self.not_an_object()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Value, E> {
        self.not_an_object()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Value, E> {
        self.not_an_object()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.not_an_object()
    }
}

impl Prune<'_> {
    fn not_an_object<E: serde::de::Error>(self) -> Result<Value, E> {
        if self.top {
            // Only an object is a session; `decode_only` says so.
            Ok(Value::Bool(false))
        } else {
            Ok(Value::Null)
        }
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::store::RawValue;

    fn json(text: &str) -> RawSession {
        RawSession {
            value: RawValue::String(text.as_bytes().to_vec()),
            ttl_ms: Some(1000),
        }
    }

    fn path(p: &str) -> FieldPath {
        FieldPath::parse(p).unwrap()
    }

    #[test]
    fn reads_express_session_fields_by_dotted_path() {
        let s = Session::decode(
            json(r#"{"cookie":{},"user":{"id":"1001","n":7,"admin":true,"o":{}}}"#),
            ValueFormat::Json,
        )
        .unwrap();
        assert_eq!(s.text(&path("user.id")).as_deref(), Some("1001"));
        assert_eq!(s.text(&path("user.n")).as_deref(), Some("7"));
        assert_eq!(s.text(&path("user.admin")).as_deref(), Some("true"));
        assert_eq!(s.text(&path("user.o")), None);
        assert_eq!(s.text(&path("user.missing")), None);
        assert_eq!(s.ttl_ms, Some(1000));
    }

    #[test]
    fn roles_match_strings_and_arrays() {
        let s = Session::decode(
            json(r#"{"user":{"role":"admin","roles":["a","b"]}}"#),
            ValueFormat::Json,
        )
        .unwrap();
        let allowed = vec!["b".to_owned(), "admin".to_owned()];
        assert!(s.has_any_of(&path("user.role"), &allowed));
        assert!(s.has_any_of(&path("user.roles"), &allowed));
        assert!(!s.has_any_of(&path("user.roles"), &["c".to_owned()]));
        assert!(!s.has_any_of(&path("user.none"), &allowed));
    }

    #[test]
    fn token_sessions_hold_the_claims_and_the_keys_value() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"userId":"3003","role":"editor"}"#).unwrap();
        let s = Session::from_token(claims.clone(), json(r#"{"userId":"3003","n":1}"#));
        assert_eq!(s.text(&path("claims.role")).as_deref(), Some("editor"));
        assert_eq!(s.text(&path("session.userId")).as_deref(), Some("3003"));
        assert_eq!(s.ttl_ms, Some(1000));
        for (raw, want) in [("1", "1"), ("\"x\"", "\"x\""), ("not json", "not json")] {
            let s = Session::from_token(claims.clone(), json(raw));
            assert_eq!(s.text(&path("session")).as_deref(), Some(want), "{raw}");
            assert_eq!(s.text(&path("claims.userId")).as_deref(), Some("3003"));
        }
        let hash = RawSession {
            value: RawValue::Hash(vec![("userId".into(), "9".into())]),
            ttl_ms: None,
        };
        let s = Session::from_token(claims, hash);
        assert_eq!(s.text(&path("session.userId")).as_deref(), Some("9"));
    }

    #[test]
    fn decoding_only_the_wanted_fields_reads_them_as_the_whole_document_does() {
        let paths: Vec<FieldPath> = [
            "user.id",
            "user.role",
            "user.roles",
            "user.o.deep",
            "flag",
            "n",
        ]
        .iter()
        .map(|p| path(p))
        .collect();
        let wanted = Wanted::new(&paths);
        let docs = [
            r#"{"cookie":{"expires":"x"},"user":{"id":"1001","role":"admin","roles":["a",1,{}],"o":{"deep":true}},"flag":false,"n":1.5}"#,
            r#"{"user":{"id":7,"id":"last"},"user":{"role":"second object wins"}}"#,
            r#"{"user":"not an object","flag":[1,2],"n":{"x":1}}"#,
            r#"{"user":{"o":[{"deep":1}],"id":null,"role":{"a":1}}}"#,
            r#"{"user":{"id":"\u00e9\n","role":"x"},"other":[{"user":{"id":"no"}}]}"#,
            r#"{}"#,
        ];
        for doc in docs {
            let whole = Session::decode(json(doc), ValueFormat::Json).unwrap();
            let only = Session::decode_only(json(doc), ValueFormat::Json, &wanted).unwrap();
            for p in &paths {
                assert_eq!(whole.text(p), only.text(p), "{doc}: {p:?}");
                assert_eq!(whole.texts(p), only.texts(p), "{doc}: {p:?}");
            }
        }
        for bad in [
            "not json",
            "[1,2]",
            "1",
            "\"s\"",
            "null",
            r#"{"a":1} trailing"#,
            r#"{"a":"#,
        ] {
            assert!(
                Session::decode_only(json(bad), ValueFormat::Json, &wanted).is_err(),
                "{bad}"
            );
        }
    }

    /// Any JSON made of the keys the wanted paths use (and others), any
    /// nesting, duplicates included: the pruned decode reads every wanted
    /// path exactly as the whole-document decode does.
    fn json_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let key = prop::sample::select(vec!["user", "id", "role", "roles", "o", "x", "us\\u0065r"]);
        let leaf = prop_oneof![
            Just("null".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            (-5i64..5).prop_map(|n| n.to_string()),
            Just("1.5e3".to_owned()),
            "[a-z]{0,3}".prop_map(|s| format!("\"{s}\"")),
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key.clone(), inner), 0..5).prop_map(|fields| {
                    let fields: Vec<String> = fields
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn the_pruned_decode_agrees_with_the_whole_one(doc in json_value()) {
            let paths: Vec<FieldPath> = ["user.id", "user.role", "user.roles", "id", "user.o.x"]
                .iter()
                .map(|p| path(p))
                .collect();
            let wanted = Wanted::new(&paths);
            let whole = Session::decode(json(&doc), ValueFormat::Json);
            let only = Session::decode_only(json(&doc), ValueFormat::Json, &wanted);
            proptest::prop_assert_eq!(whole.is_ok(), only.is_ok(), "{}", doc);
            if let (Ok(whole), Ok(only)) = (whole, only) {
                for p in &paths {
                    proptest::prop_assert_eq!(whole.texts(p), only.texts(p), "{} {:?}", doc, p);
                    proptest::prop_assert_eq!(whole.text(p), only.text(p), "{} {:?}", doc, p);
                }
            }
        }
    }

    #[test]
    fn rejects_values_that_are_not_json_objects() {
        assert!(Session::decode(json("not json"), ValueFormat::Json).is_err());
        assert!(Session::decode(json("[1,2]"), ValueFormat::Json).is_err());
        let hash = RawSession {
            value: RawValue::Hash(vec![("userId".into(), "9".into())]),
            ttl_ms: None,
        };
        assert!(Session::decode(hash.clone(), ValueFormat::Json).is_err());
        let s = Session::decode(hash, ValueFormat::Hash).unwrap();
        assert_eq!(s.text(&path("userId")).as_deref(), Some("9"));
    }
}
