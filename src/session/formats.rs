//! Session values other frameworks write, read as inert data into the JSON
//! document the rest of the gateway reads fields from: msgpack
//! (Flask-Session), pickle (Django, Flask-Session before 0.7) and PHP's
//! session formats (`php`, `php_serialize`). Nothing here can construct an
//! object or call code: pickle is read by `serde-pickle`, which refuses any
//! global or class reference, and PHP values by the reader below, which
//! refuses objects (`O:`, `C:`), enums (`E:`) and references (`r:`, `R:`).
//! A value is capped in size before it is read and in depth while it is.

use serde_json::{Map, Number, Value};

/// The largest value read (framework sessions are a few hundred bytes).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// The deepest nesting read.
pub const MAX_DEPTH: usize = 32;

/// The most container opcodes a pickle may hold (see [`pickle`]).
const MAX_PICKLE_CONTAINERS: usize = 128;

/// Why a value could not be read.
pub type Unreadable = &'static str;

/// The reason a value that would need code to decode (a pickle naming a
/// global, a PHP object or reference) is refused with: it is a session
/// with no identity fields, not an unreadable one.
pub const NEEDS_CODE: Unreadable = "needs code to decode";

/// A msgpack map (Flask-Session 0.7+).
pub fn msgpack(bytes: &[u8]) -> Result<Value, Unreadable> {
    capped(bytes)?;
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    let doc: Value = serde::Deserialize::deserialize(&mut de).map_err(|_| "msgpack")?;
    object(doc)
}

/// A pickled dict (Django's Redis cache, Flask-Session 0.6 and older), read
/// without running anything: a pickle that names a global is refused.
pub fn pickle(bytes: &[u8]) -> Result<Value, Unreadable> {
    capped(bytes)?;
    // Every level of nesting takes a container or mark opcode; bounding how
    // many of those bytes there are bounds the depth of what is built (and
    // dropped, recursively) before it is built. Strings rarely hold these
    // bytes, so real sessions stay far below.
    let nesting = bytes
        .iter()
        .filter(|b| matches!(b, b']' | b'}' | b'(' | b')' | 0x85..=0x87 | 0x8f | 0x91))
        .count();
    if nesting > MAX_PICKLE_CONTAINERS {
        return Err("pickle nested too deep");
    }
    let value = serde_pickle::value_from_slice(bytes, serde_pickle::DeOptions::new()).map_err(
        |e| match e {
            serde_pickle::Error::Syntax(
                serde_pickle::error::ErrorCode::UnsupportedGlobal(..)
                | serde_pickle::error::ErrorCode::UnresolvedGlobal,
            ) => NEEDS_CODE,
            _ => "pickle",
        },
    )?;
    object(from_pickle(value, 0)?)
}

fn from_pickle(value: serde_pickle::Value, depth: usize) -> Result<Value, Unreadable> {
    use serde_pickle::{HashableValue, Value as P};
    if depth > MAX_DEPTH {
        return Err("pickle nested too deep");
    }
    Ok(match value {
        P::None => Value::Null,
        P::Bool(b) => Value::Bool(b),
        P::I64(i) => Value::Number(i.into()),
        P::Int(i) => Value::String(i.to_string()),
        P::F64(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        P::Bytes(b) => Value::String(String::from_utf8_lossy(&b).into_owned()),
        P::String(s) => Value::String(s),
        P::List(items) | P::Tuple(items) => Value::Array(
            items
                .into_iter()
                .map(|v| from_pickle(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        P::Set(items) | P::FrozenSet(items) => Value::Array(
            items
                .into_iter()
                .map(|v| from_pickle(v.into_value(), depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        P::Dict(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (key, value) in entries {
                let key = match key {
                    HashableValue::String(s) => s,
                    HashableValue::I64(i) => i.to_string(),
                    HashableValue::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
                    // Keys no field path can name.
                    _ => continue,
                };
                map.insert(key, from_pickle(value, depth + 1)?);
            }
            Value::Object(map)
        }
    })
}

/// PHP's default session format (`session.serialize_handler = php`):
/// `name|<serialize(value)>` repeated, into an object of the names.
pub fn php(bytes: &[u8]) -> Result<Value, Unreadable> {
    capped(bytes)?;
    let mut reader = Php { bytes, at: 0 };
    let mut map = Map::new();
    while reader.at < bytes.len() {
        let rest = &bytes[reader.at..];
        let bar = rest.iter().position(|&b| b == b'|').ok_or("php session")?;
        let name = std::str::from_utf8(&rest[..bar]).map_err(|_| "php session")?;
        reader.at += bar + 1;
        let value = reader.value(0)?;
        map.insert(name.to_owned(), value);
    }
    Ok(Value::Object(map))
}

/// PHP's `php_serialize` session format: one serialized array.
pub fn php_serialize(bytes: &[u8]) -> Result<Value, Unreadable> {
    capped(bytes)?;
    let mut reader = Php { bytes, at: 0 };
    let value = reader.value(0)?;
    if reader.at != bytes.len() {
        return Err("php_serialize: trailing bytes");
    }
    match value {
        Value::Object(_) => Ok(value),
        // A list is an array with keys 0..n: no session names.
        Value::Array(items) if items.is_empty() => Ok(Value::Object(Map::new())),
        _ => Err("php_serialize: not an array"),
    }
}

fn capped(bytes: &[u8]) -> Result<(), Unreadable> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err("value too large");
    }
    Ok(())
}

fn object(doc: Value) -> Result<Value, Unreadable> {
    if doc.is_object() {
        Ok(doc)
    } else {
        Err("not a map")
    }
}

/// A reader of one PHP `serialize()` value at a time.
struct Php<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Php<'_> {
    fn value(&mut self, depth: usize) -> Result<Value, Unreadable> {
        if depth > MAX_DEPTH {
            return Err("php: nested too deep");
        }
        let kind = *self.bytes.get(self.at).ok_or("php: truncated")?;
        match kind {
            b'N' => {
                self.expect(b"N;")?;
                Ok(Value::Null)
            }
            b'b' => {
                self.expect(b"b:")?;
                let v = self.until(b';')?;
                match v {
                    b"0" => Ok(Value::Bool(false)),
                    b"1" => Ok(Value::Bool(true)),
                    _ => Err("php: bad boolean"),
                }
            }
            b'i' => {
                self.expect(b"i:")?;
                let v = self.until(b';')?;
                let text = std::str::from_utf8(v).map_err(|_| "php: bad integer")?;
                let i: i64 = text.parse().map_err(|_| "php: bad integer")?;
                Ok(Value::Number(i.into()))
            }
            b'd' => {
                self.expect(b"d:")?;
                let v = self.until(b';')?;
                let text = std::str::from_utf8(v).map_err(|_| "php: bad float")?;
                let f: f64 = text.parse().map_err(|_| "php: bad float")?;
                Ok(Number::from_f64(f).map_or(Value::Null, Value::Number))
            }
            b's' => {
                self.expect(b"s:")?;
                Ok(Value::String(self.string()?))
            }
            b'a' => {
                self.expect(b"a:")?;
                let count = self.count()?;
                self.expect(b"{")?;
                let mut entries = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    let key = match self.value(depth + 1)? {
                        Value::String(s) => s,
                        Value::Number(n) if n.is_i64() => n.to_string(),
                        _ => return Err("php: bad array key"),
                    };
                    let value = self.value(depth + 1)?;
                    entries.push((key, value));
                }
                self.expect(b"}")?;
                let is_list = entries
                    .iter()
                    .enumerate()
                    .all(|(i, (k, _))| *k == i.to_string());
                if is_list && !entries.is_empty() {
                    Ok(Value::Array(entries.into_iter().map(|(_, v)| v).collect()))
                } else {
                    Ok(Value::Object(entries.into_iter().collect()))
                }
            }
            // Objects (`O:`, `C:`) would run `__wakeup`/`__unserialize` in
            // PHP, enums (`E:`) name classes, references (`r:`, `R:`) make
            // graphs: none is session data a gateway reads.
            b'O' | b'C' | b'E' | b'r' | b'R' => Err(NEEDS_CODE),
            _ => Err("php: unknown type"),
        }
    }

    /// `<len>:"<len bytes>";` (the length counts bytes).
    fn string(&mut self) -> Result<String, Unreadable> {
        let len = self.count()?;
        self.expect(b"\"")?;
        let end = self.at.checked_add(len).ok_or("php: bad length")?;
        let bytes = self.bytes.get(self.at..end).ok_or("php: truncated")?;
        self.at = end;
        self.expect(b"\";")?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    /// `<n>:`, a count no larger than what is left to read.
    fn count(&mut self) -> Result<usize, Unreadable> {
        let v = self.until(b':')?;
        if v.is_empty() || v.len() > 7 || !v.iter().all(u8::is_ascii_digit) {
            return Err("php: bad length");
        }
        let n: usize = std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or("php: bad length")?;
        if n > self.bytes.len() - self.at {
            return Err("php: bad length");
        }
        Ok(n)
    }

    fn expect(&mut self, what: &[u8]) -> Result<(), Unreadable> {
        if self.bytes[self.at..].starts_with(what) {
            self.at += what.len();
            Ok(())
        } else {
            Err("php: unexpected byte")
        }
    }

    /// The bytes up to `end`, which is consumed too.
    fn until(&mut self, end: u8) -> Result<&[u8], Unreadable> {
        let rest = &self.bytes[self.at..];
        let n = rest
            .iter()
            .position(|&b| b == end)
            .ok_or("php: truncated")?;
        self.at += n + 1;
        Ok(&rest[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn php_session_formats_read_as_plain_data() {
        let v = php(br#"user|a:3:{s:2:"id";i:1001;s:5:"email";s:18:"alice@example.test";s:4:"role";s:5:"admin";}n|i:3;"#).unwrap();
        assert_eq!(
            v,
            json!({"user": {"id": 1001, "email": "alice@example.test", "role": "admin"}, "n": 3})
        );
        let v = php_serialize(
            br#"a:1:{s:4:"user";a:2:{s:2:"id";i:1002;s:5:"roles";a:2:{i:0;s:1:"a";i:1;s:1:"b";}}}"#,
        )
        .unwrap();
        assert_eq!(v, json!({"user": {"id": 1002, "roles": ["a", "b"]}}));
        // An anonymous session: empty.
        assert_eq!(php(b"").unwrap(), json!({}));
        assert_eq!(php_serialize(b"a:0:{}").unwrap(), json!({}));
        // Lengths count bytes.
        assert_eq!(php("x|s:2:\"é\";".as_bytes()).unwrap(), json!({"x": "é"}));
        assert_eq!(
            php(b"f|d:1.5;b|b:1;z|N;").unwrap(),
            json!({"f": 1.5, "b": true, "z": null})
        );
    }

    #[test]
    fn php_objects_references_and_lies_are_refused() {
        for code in [
            &br#"x|O:8:"stdClass":0:{}"#[..],
            br#"x|C:3:"Foo":0:{}"#,
            br#"x|E:7:"Foo:Bar";"#,
            br#"x|a:1:{i:0;r:1;}"#,
            br#"x|R:1;"#,
        ] {
            assert_eq!(
                php(code),
                Err(NEEDS_CODE),
                "{}",
                String::from_utf8_lossy(code)
            );
        }
        for bad in [
            &br#"x|s:99:"short";"#[..],
            br#"x|a:99999:{}"#,
            br#"x|i:12"#,
            br#"x|s:-1:"";"#,
            b"no bar here",
        ] {
            assert!(php(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = "a:1:{i:0;".repeat(100) + "N;" + &"}".repeat(100);
        assert!(php_serialize(deep.as_bytes()).is_err());
        assert!(php(&vec![b'x'; MAX_VALUE_BYTES + 1]).is_err());
    }

    #[test]
    fn pickles_that_name_a_global_are_refused() {
        // pickle.dumps({"_auth_user_id": "1001"}, protocol=4)
        let dict = b"\x80\x04\x95\x15\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x0d_auth_user_id\x94\x8c\x041001\x94s.";
        assert_eq!(pickle(dict).unwrap(), json!({"_auth_user_id": "1001"}));
        // The classic: os.system("true") at load time.
        let evil = b"cos\nsystem\n(S'true'\ntR.";
        assert_eq!(pickle(evil), Err(NEEDS_CODE));
        // A list is not a session.
        assert!(pickle(b"\x80\x04]\x94.").is_err());
    }

    #[test]
    fn msgpack_maps_are_read_and_nothing_else() {
        let bytes = rmp_serde::to_vec_named(&json!({"_user_id": "1001", "_fresh": true})).unwrap();
        assert_eq!(
            msgpack(&bytes).unwrap(),
            json!({"_user_id": "1001", "_fresh": true})
        );
        assert!(msgpack(&rmp_serde::to_vec(&json!([1, 2])).unwrap()).is_err());
        // 100 nested one-element arrays: deeper than allowed.
        let mut deep = vec![0x91u8; 100];
        deep.push(0xc0);
        assert!(msgpack(&[&[0x81u8, 0xa1, b'x'][..], &deep].concat()).is_err());
    }

    proptest! {
        #[test]
        fn php_reading_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = php(&bytes);
            let _ = php_serialize(&bytes);
            let _ = pickle(&bytes);
            let _ = msgpack(&bytes);
        }

        #[test]
        fn php_strings_round_trip(s in ".{0,40}", name in "[a-z_]{1,10}") {
            let text = format!("{name}|s:{}:\"{s}\";", s.len());
            prop_assert_eq!(php(text.as_bytes()).unwrap(), json!({ name: s }));
        }
    }
}

#[cfg(test)]
mod deep {
    #[test]
    fn a_deeply_nested_pickle_is_refused_without_overflowing() {
        let nested = |n| {
            let mut bytes = b"\x80\x04".to_vec();
            bytes.extend(std::iter::repeat_n(b']', n));
            bytes.extend(std::iter::repeat_n(b'a', n - 1));
            bytes.push(b'.');
            bytes
        };
        assert!(super::pickle(&nested(30_000)).is_err());
        // At the bound: read, refused for its depth, dropped safely.
        assert_eq!(super::pickle(&nested(128)), Err("pickle nested too deep"));
    }
}
