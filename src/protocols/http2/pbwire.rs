//! Protobuf wire format without a schema: a message becomes a readable tree keyed by field number
//! (`{"1": "alice", "2": {"1": 42}}`), so gRPC messages recorded without their .proto are still shown and
//! compared field by field. The format is ambiguous without the schema (a string, bytes and a nested message
//! share one wire type; sint, int and bool share another), so [`encode`] gives the recorded bytes back only
//! for the common shapes; the store keeps the exact bytes whenever it does not.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Number, Value};

/// Nested messages deeper than this are shown as bytes (protobuf's own default limit is 100).
const MAX_DEPTH: usize = 64;

fn varint(data: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in data.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &data[i + 1..]));
        }
    }
    None
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Decodes `data` as a message; `None` when it is not a well-formed one.
pub fn decode(data: &[u8]) -> Option<Value> {
    decode_at(data, 0)
}

fn decode_at(mut data: &[u8], depth: usize) -> Option<Value> {
    let mut fields: Map<String, Value> = Map::new();
    while !data.is_empty() {
        let (key, rest) = varint(data)?;
        let number = key >> 3;
        if number == 0 || number > 0x1fff_ffff {
            return None;
        }
        let (value, rest) = match key & 7 {
            0 => {
                let (v, rest) = varint(rest)?;
                (Value::Number(Number::from(v)), rest)
            }
            1 => {
                let (b, rest) = rest.split_first_chunk::<8>()?;
                (Value::Number(Number::from(u64::from_le_bytes(*b))), rest)
            }
            5 => {
                let (b, rest) = rest.split_first_chunk::<4>()?;
                (Value::Number(Number::from(u32::from_le_bytes(*b))), rest)
            }
            2 => {
                let (len, rest) = varint(rest)?;
                let len = usize::try_from(len).ok().filter(|l| *l <= rest.len())?;
                let (bytes, rest) = rest.split_at(len);
                (length_delimited(bytes, depth), rest)
            }
            _ => return None, // groups (3, 4) are long deprecated; 6 and 7 do not exist
        };
        data = rest;
        let name = number.to_string();
        match fields.get_mut(&name) {
            Some(Value::Array(items)) => items.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                fields.insert(name, value);
            }
        }
    }
    Some(Value::Object(fields))
}

/// Text when it reads as text, else a nested message when it parses as one, else base64.
fn length_delimited(bytes: &[u8], depth: usize) -> Value {
    if let Ok(s) = std::str::from_utf8(bytes)
        && !s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Value::String(s.to_string());
    }
    if depth < MAX_DEPTH
        && let Some(nested) = decode_at(bytes, depth + 1)
    {
        return nested;
    }
    Value::String(B64.encode(bytes))
}

/// Encodes a tree made by [`decode`]: numbers as varints, strings as UTF-8, objects as nested messages,
/// arrays as repeated fields. `None` for a tree that is not of that shape.
pub fn encode(tree: &Value) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    encode_into(tree, &mut out)?;
    Some(out)
}

fn encode_into(tree: &Value, out: &mut Vec<u8>) -> Option<()> {
    let Value::Object(fields) = tree else { return None };
    for (name, value) in fields {
        let number: u64 = name.parse().ok()?;
        let items = match value {
            Value::Array(items) => items.as_slice(),
            single => std::slice::from_ref(single),
        };
        for item in items {
            match item {
                Value::Number(n) => {
                    put_varint(number << 3, out);
                    put_varint(n.as_u64()?, out);
                }
                Value::String(s) => {
                    put_varint((number << 3) | 2, out);
                    put_varint(s.len() as u64, out);
                    out.extend_from_slice(s.as_bytes());
                }
                Value::Object(_) => {
                    let mut nested = Vec::new();
                    encode_into(item, &mut nested)?;
                    put_varint((number << 3) | 2, out);
                    put_varint(nested.len() as u64, out);
                    out.extend_from_slice(&nested);
                }
                _ => return None,
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn readable_tree() {
        // field 1 = "alice", field 2 = { field 1 = 42 }, field 3 repeated varints 1 and 2
        let bytes = b"\x0a\x05alice\x12\x02\x08\x2a\x18\x01\x18\x02";
        let tree = decode(bytes).unwrap();
        assert_eq!(tree, json!({"1": "alice", "2": {"1": 42}, "3": [1, 2]}));
        assert_eq!(encode(&tree).unwrap(), bytes);
    }

    #[test]
    fn fixed_width_and_bytes() {
        let bytes = b"\x0d\x01\x00\x00\x00\x11\x02\x00\x00\x00\x00\x00\x00\x00\x1a\x02\xff\x00";
        let tree = decode(bytes).unwrap();
        assert_eq!(tree, json!({"1": 1, "2": 2, "3": "/wA="}));
        // Fixed-width fields do not re-encode as they were: the store keeps those bytes.
        assert_ne!(encode(&tree).unwrap(), bytes);
    }

    #[test]
    fn not_a_message() {
        assert_eq!(decode(b"\x0a\x05ali"), None);
        assert_eq!(decode(b"\x07"), None);
        assert_eq!(decode(b""), Some(json!({})));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(tree) = decode(&data) {
                let _ = encode(&tree);
            }
        }

        #[test]
        fn varint_and_string_messages_round_trip(
            fields in proptest::collection::vec((1u64..2000, prop_oneof![
                any::<u64>().prop_map(|n| json!(n)),
                "[a-zA-Z0-9 ]{1,20}".prop_map(|s| json!(s)),
            ]), 0..10)
        ) {
            let mut map = Map::new();
            for (n, v) in fields {
                map.entry(n.to_string()).or_insert(v);
            }
            let tree = Value::Object(map);
            let bytes = encode(&tree).unwrap();
            prop_assert_eq!(decode(&bytes).unwrap(), tree);
        }
    }
}
