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

/// A string value in `format`, as a JSON document (an object).
fn decode_string(bytes: &[u8], format: ValueFormat) -> Result<Value, &'static str> {
    use crate::session::formats;
    match format {
        ValueFormat::Json => match serde_json::from_slice::<Value>(bytes) {
            Ok(doc) if doc.is_object() => Ok(doc),
            Ok(_) => Err("JSON object"),
            Err(_) => Err("JSON"),
        },
        ValueFormat::Msgpack => formats::msgpack(bytes),
        ValueFormat::Pickle => formats::pickle(bytes),
        ValueFormat::Php => formats::php(bytes),
        ValueFormat::PhpSerialize => formats::php_serialize(bytes),
        // Flask-Session 0.8 reads msgpack, JSON, and still old pickles.
        ValueFormat::Flask => match bytes.first() {
            Some(b'{') => decode_string(bytes, ValueFormat::Json),
            Some(0x80) => formats::pickle(bytes),
            _ => formats::msgpack(bytes),
        },
        // Django's built-in serializer pickles; django-redis can write JSON.
        ValueFormat::Django => match bytes.first() {
            Some(b'{') => decode_string(bytes, ValueFormat::Json),
            _ => formats::pickle(bytes),
        },
        ValueFormat::Exists => Ok(Value::Object(Map::new())),
        ValueFormat::Hash => Err("hash"),
    }
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
            (crate::session::store::RawValue::String(bytes), format) => {
                match decode_string(&bytes, format) {
                    Ok(doc) => doc,
                    // Never decoded: a session with no identity fields (a
                    // route may still require only that it exists).
                    Err(crate::session::formats::NEEDS_CODE) => Value::Object(Map::new()),
                    Err(why) => return Err(SessionUnreadable(why)),
                }
            }
            (crate::session::store::RawValue::Hash(_), _) => {
                return Err(SessionUnreadable("string value"))
            }
        };
        Ok(Session {
            doc,
            ttl_ms: raw.ttl_ms,
        })
    }

    /// The session an existence-only profile sees: nothing but its TTL.
    pub fn exists(ttl_ms: Option<u64>) -> Session {
        Session {
            doc: Value::Object(Map::new()),
            ttl_ms,
        }
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

/// The fields requests read from a session (identity headers, roles,
/// user), compiled once per configuration: a tree of path segments whose
/// every path has a slot in [`Fields`].
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    root: Node,
    /// The slot of each path given to [`Wanted::new`], in that order.
    slots: Vec<usize>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// The slot of the path that ends here, if one does.
    leaf: Option<usize>,
    children: Vec<(String, Node)>,
    /// The slots of this node and every node below it (numbered depth
    /// first, so they are contiguous).
    range: std::ops::Range<usize>,
}

impl Wanted {
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a FieldPath>) -> Wanted {
        let paths: Vec<&FieldPath> = paths.into_iter().collect();
        let mut root = Node::default();
        for path in &paths {
            root.add(path.segments());
        }
        root.number(&mut 0);
        let slots = paths
            .iter()
            .map(|path| {
                let node = path
                    .segments()
                    .iter()
                    .try_fold(&root, |node, segment| node.child(segment));
                node.and_then(|node| node.leaf)
                    .expect("every path was added")
            })
            .collect();
        Wanted { root, slots }
    }

    /// Every slot empty (the root's range holds them all).
    fn empty(&self) -> Fields {
        Fields {
            slots: std::iter::repeat_with(|| Found::Absent)
                .take(self.root.range.end)
                .collect(),
        }
    }

    /// The slot of the `index`-th path given to [`Wanted::new`].
    pub fn slot(&self, index: usize) -> usize {
        self.slots[index]
    }

    /// Reads the wanted fields of a JSON session document, building nothing
    /// else: the rest is checked (it must be valid JSON with an object at
    /// the top) and skipped. Each field reads as it would from the whole
    /// document: a key that appears twice counts by its last value, as
    /// `JSON.parse` has it, and a path through a non-object has no value.
    pub fn decode_json(&self, bytes: &[u8]) -> Result<Fields, SessionUnreadable> {
        let mut fields = self.empty();
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let object = Top {
            node: &self.root,
            slots: &mut fields.slots,
        }
        .deserialize(&mut de)
        .and_then(|object| de.end().map(|()| object))
        .map_err(|_| SessionUnreadable("JSON"))?;
        if !object {
            return Err(SessionUnreadable("JSON object"));
        }
        Ok(fields)
    }

    /// Reads the wanted fields of a decoded session (a hash, a token's).
    pub fn read(&self, session: &Session) -> Fields {
        let mut fields = self.empty();
        self.root.read(&session.doc, &mut fields.slots);
        fields
    }
}

impl Node {
    fn add(&mut self, segments: &[String]) {
        let Some((first, rest)) = segments.split_first() else {
            // Numbered later; any value marks a leaf until then.
            self.leaf = Some(usize::MAX);
            return;
        };
        let child = match self.children.iter().position(|(name, _)| name == first) {
            Some(i) => &mut self.children[i].1,
            None => {
                self.children.push((first.clone(), Node::default()));
                &mut self.children.last_mut().expect("just pushed").1
            }
        };
        child.add(rest);
    }

    fn number(&mut self, next: &mut usize) {
        let start = *next;
        if self.leaf.is_some() {
            self.leaf = Some(*next);
            *next += 1;
        }
        for (_, child) in &mut self.children {
            child.number(next);
        }
        self.range = start..*next;
    }

    fn child(&self, name: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, child)| child)
    }

    /// What [`Top`] reads from a document, read from a built one.
    fn read(&self, value: &Value, slots: &mut [Found]) {
        if let Some(leaf) = self.leaf {
            slots[leaf] = match value {
                Value::Array(items) => Found::List(items.iter().filter_map(scalar_text).collect()),
                value => scalar_text(value).map_or(Found::Absent, Found::Text),
            };
        }
        if let Value::Object(map) = value {
            for (name, child) in &self.children {
                if let Some(value) = map.get(name) {
                    child.read(value, slots);
                }
            }
        }
    }
}

/// A session's values at the wanted paths, by slot.
#[derive(Debug)]
pub struct Fields {
    slots: Vec<Found>,
}

#[derive(Debug)]
enum Found {
    /// No such field, or one without text (an object, `null`).
    Absent,
    /// A string as it is, a number or a boolean printed.
    Text(String),
    /// An array: the texts of its scalar elements.
    List(Vec<String>),
}

impl Fields {
    /// The field's text: a string, number or boolean (not an array).
    pub fn text(&self, slot: usize) -> Option<&str> {
        match &self.slots[slot] {
            Found::Text(text) => Some(text),
            _ => None,
        }
    }

    /// Takes the field's texts: one for a scalar, one per scalar element of
    /// an array, none otherwise.
    pub fn take_texts(&mut self, slot: usize) -> Vec<String> {
        match std::mem::replace(&mut self.slots[slot], Found::Absent) {
            Found::Text(text) => vec![text],
            Found::List(texts) => texts,
            Found::Absent => Vec::new(),
        }
    }
}

/// The document's top: an object, whose wanted fields go into `slots`.
/// Anything else is read through (to check it is JSON) and answers `false`.
struct Top<'a> {
    node: &'a Node,
    slots: &'a mut [Found],
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        read_object(self.node, self.slots, map)?;
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// The wanted keys of an object; a wanted key seen again replaces what its
/// first value gave (its slots are cleared first), and an unwanted key
/// never shadows anything.
fn read_object<'de, A: MapAccess<'de>>(
    node: &Node,
    slots: &mut [Found],
    mut map: A,
) -> Result<(), A::Error> {
    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
        match node.child(&key) {
            Some(child) => {
                for slot in &mut slots[child.range.clone()] {
                    *slot = Found::Absent;
                }
                map.next_value_seed(Field {
                    node: child,
                    slots: &mut *slots,
                })?;
            }
            None => {
                map.next_value::<IgnoredAny>()?;
            }
        }
    }
    Ok(())
}

/// The value of a wanted key: its text when a path ends here, its wanted
/// keys when it is an object and paths go deeper.
struct Field<'a> {
    node: &'a Node,
    slots: &'a mut [Found],
}

impl Field<'_> {
    /// A scalar value: its text (made only when a path ends here).
    fn scalar<E>(self, text: impl FnOnce() -> Result<Scalar, E>) -> Result<(), E> {
        if let Some(leaf) = self.node.leaf {
            if let Some(text) = text()?.0 {
                self.slots[leaf] = Found::Text(text);
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        read_object(self.node, self.slots, map)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if let Some(leaf) = self.node.leaf {
            let mut texts = Vec::new();
            while let Some(text) = seq.next_element::<Scalar>()? {
                texts.extend(text.0);
            }
            self.slots[leaf] = Found::List(texts);
        } else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
        }
        Ok(())
    }

    // Scalars read as an array element's do (`ScalarVisitor`).
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(|| ScalarVisitor.visit_bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(|| ScalarVisitor.visit_i64(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(|| ScalarVisitor.visit_u64(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(|| ScalarVisitor.visit_f64(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(|| ScalarVisitor.visit_str(v))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<(), E> {
        self.scalar(|| ScalarVisitor.visit_string(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// An array element: its text when it is a scalar; objects, arrays and
/// `null` are read through and have none.
struct Scalar(Option<String>);

impl<'de> serde::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// Numbers print as serde_json prints them, so they read as from a built document.
struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar(None))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar(None))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar(Some(v.to_string())))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar(Some(serde_json::Number::from(v).to_string())))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar(Some(serde_json::Number::from(v).to_string())))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar(
            serde_json::Number::from_f64(v).map(|n| n.to_string()),
        ))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar(Some(v.to_owned())))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar(Some(v)))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar(None))
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
            let only = wanted.decode_json(doc.as_bytes()).unwrap();
            same_fields(&wanted, &paths, &whole, only).unwrap_or_else(|e| panic!("{doc}: {e}"));
            // Read from the built document, the fields are the same too.
            same_fields(&wanted, &paths, &whole, wanted.read(&whole))
                .unwrap_or_else(|e| panic!("{doc}: {e}"));
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
            assert!(wanted.decode_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    /// Whether `fields` reads every path as the whole document does.
    fn same_fields(
        wanted: &Wanted,
        paths: &[FieldPath],
        whole: &Session,
        mut fields: Fields,
    ) -> Result<(), String> {
        for (i, p) in paths.iter().enumerate() {
            let slot = wanted.slot(i);
            if whole.text(p).as_deref() != fields.text(slot) {
                return Err(format!(
                    "text of {p}: {:?} != {:?}",
                    whole.text(p),
                    fields.text(slot)
                ));
            }
        }
        for (i, p) in paths.iter().enumerate() {
            let slot = wanted.slot(i);
            // Taken once per slot: a repeated path reads the same slot.
            if paths[..i].contains(p) {
                continue;
            }
            let texts = fields.take_texts(slot);
            if whole.texts(p) != texts {
                return Err(format!("texts of {p}: {:?} != {texts:?}", whole.texts(p)));
            }
        }
        Ok(())
    }

    /// Any JSON made of the keys the wanted paths use (and others), any
    /// nesting, duplicates included: the slot decode reads every wanted
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
        fn the_slot_decode_agrees_with_the_whole_one(doc in json_value()) {
            // "user" is read whole and through: a path may end where another goes on.
            let paths: Vec<FieldPath> =
                ["user.id", "user.role", "user.roles", "id", "user.o.x", "user", "user.id"]
                    .iter()
                    .map(|p| path(p))
                    .collect();
            let wanted = Wanted::new(&paths);
            let whole = Session::decode(json(&doc), ValueFormat::Json);
            let only = wanted.decode_json(doc.as_bytes());
            proptest::prop_assert_eq!(whole.is_ok(), only.is_ok(), "{}", doc);
            if let (Ok(whole), Ok(only)) = (whole, only) {
                let same = same_fields(&wanted, &paths, &whole, only);
                proptest::prop_assert!(same.is_ok(), "{} {:?}", doc, same);
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
