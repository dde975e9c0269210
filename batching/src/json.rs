//! Order-preserving, byte-preserving JSON objects for merge/split.
//!
//! A [`RawObject`] is a JSON object read as `(key, raw value bytes)` pairs in their
//! original order: values are `&RawValue` slices of the input, never re-serialised,
//! so embedding vectors, texts and numbers reach the client byte for byte. Only the
//! objects that merge/split rebuild (request top level, response top level, `usage`,
//! each `data[i]` / `choices[i]`) are re-emitted, compactly (no whitespace between
//! their own tokens). Duplicate keys are rejected (their meaning is ambiguous).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A JSON object as ordered `(key, raw value)` pairs borrowed from the input.
#[derive(Debug)]
pub(crate) struct RawObject<'a> {
    pub entries: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawObject<'a> {
    /// Parses `bytes` as one JSON object (duplicate keys are an error).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Parses a raw value that must be an object.
    pub fn from_raw(raw: &'a RawValue) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw.get())
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|&(_, v)| v)
    }
}

/// A key that borrows from the input unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
                let mut entries: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                while let Some((Key(k), v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    entries.push((k, v));
                }
                let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
                keys.sort_unstable();
                if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
                    return Err(de::Error::custom(format_args!("duplicate key {:?}", w[0])));
                }
                Ok(RawObject { entries })
            }
        }
        d.deserialize_map(V)
    }
}

/// Writes `{"k":v,...}` from ordered pairs.
pub(crate) fn write_object<'k>(
    out: &mut Vec<u8>,
    entries: impl IntoIterator<Item = (&'k str, Piece<'k>)>,
) {
    out.push(b'{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        match v {
            Piece::Raw(r) => out.extend_from_slice(r.as_bytes()),
            Piece::Owned(b) => out.extend_from_slice(&b),
        }
    }
    out.push(b'}');
}

/// A value to write: borrowed raw bytes or bytes built here.
pub(crate) enum Piece<'a> {
    Raw(&'a str),
    Owned(Vec<u8>),
}

/// Writes a JSON string literal.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a `str` into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// The first byte of a raw value: `"`, `[`, `{`, `t`, `f`, `n`, a digit or `-`.
pub(crate) fn first_byte(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

/// Decodes a JSON string value (borrowed when it has no escapes); `None` if the
/// value is not a string.
pub(crate) fn decode_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    if first_byte(raw) != b'"' {
        return None;
    }
    let s = raw.get();
    let inner = s.get(1..s.len().saturating_sub(1))?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(s).ok().map(Cow::Owned)
}

/// Whether a raw value is JSON `null`.
pub(crate) fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// Canonical text of a value: object keys sorted, no whitespace, strings
/// re-escaped the one way serde_json writes them, numbers **as written** (so
/// `1` ≠ `1.0`, and integers beyond `u64` are never rounded into each other). Two
/// values with equal canonical text mean the same to any JSON reader.
pub(crate) fn canonical(raw: &RawValue, out: &mut String) -> Result<(), serde_json::Error> {
    match first_byte(raw) {
        b'{' => {
            let obj = RawObject::from_raw(raw)?;
            let mut entries: Vec<(&str, &RawValue)> =
                obj.entries.iter().map(|(k, v)| (k.as_ref(), *v)).collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_str_literal(out, k);
                out.push(':');
                canonical(v, out)?;
            }
            out.push('}');
        }
        b'[' => {
            let elems: Vec<&RawValue> = serde_json::from_str(raw.get())?;
            out.push('[');
            for (i, v) in elems.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out)?;
            }
            out.push(']');
        }
        b'"' => {
            let s = match decode_str(raw) {
                Some(s) => s,
                None => Cow::Owned(serde_json::from_str::<String>(raw.get())?),
            };
            push_str_literal(out, &s);
        }
        // Numbers, true, false, null: already validated and free of whitespace.
        _ => out.push_str(raw.get()),
    }
    Ok(())
}

fn push_str_literal(out: &mut String, s: &str) {
    let mut buf = Vec::with_capacity(s.len() + 2);
    write_str(&mut buf, s);
    out.push_str(&String::from_utf8_lossy(&buf));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_bytes_and_rejects_duplicates() {
        let body = br#"{"z": 1.50e-3, "a\u0041":[1, 2], "m":{"b":1,"a":2}}"#;
        let o = RawObject::parse(body).unwrap();
        let keys: Vec<&str> = o.entries.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["z", "aA", "m"]);
        assert_eq!(o.get("z").unwrap().get(), "1.50e-3");
        assert_eq!(o.get("aA").unwrap().get(), "[1, 2]");
        let mut c = String::new();
        canonical(o.get("m").unwrap(), &mut c).unwrap();
        assert_eq!(c, r#"{"a":2,"b":1}"#);
        let raw = |t: &str| serde_json::from_str::<Box<RawValue>>(t).unwrap();
        let canon = |t: &str| {
            let mut c = String::new();
            canonical(&raw(t), &mut c).unwrap();
            c
        };
        assert_eq!(
            canon(r#" { "b" : [ 1 , "\u0041" ], "a" : null } "#),
            r#"{"a":null,"b":[1,"A"]}"#
        );
        assert_ne!(canon("18446744073709551617"), canon("18446744073709551616"));
        assert_ne!(canon("1"), canon("1.0"));
        assert!(RawObject::parse(br#"{"a":1,"a":2}"#).is_err());
        assert!(RawObject::parse(b"[1]").is_err());
        assert!(RawObject::parse(b"{").is_err());
        let mut out = Vec::new();
        write_object(
            &mut out,
            o.entries
                .iter()
                .map(|(k, v)| (k.as_ref(), Piece::Raw(v.get()))),
        );
        assert_eq!(out, br#"{"z":1.50e-3,"aA":[1, 2],"m":{"b":1,"a":2}}"#);
    }
}
