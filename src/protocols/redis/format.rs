//! On-disk form of recorded Redis exchanges.
//!
//! Granularity: one mock per command and its reply, with three grouped shapes:
//! - a transaction (`MULTI` ... `EXEC`/`DISCARD`) is one mock: `command` is the `EXEC` (or `DISCARD`), `queued`
//!   holds the commands in between with their immediate replies (normally `QUEUED`), `reply` what `EXEC` said;
//! - a subscription (`SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`) is one mock holding its confirmations in `replies`
//!   and the messages the server pushed on its channels in `pushed`, in order, each with its delay;
//! - `UNSUBSCRIBE` and friends keep their confirmations (one frame per channel) in `replies`.
//!
//! Values are written as YAML a reader can follow, not as RESP bytes. A bulk string is a plain YAML string, an
//! integer a YAML integer, an array a YAML sequence, and the RESP2 null bulk string `null`. Every other RESP
//! type is a one-key map naming it: `{simple: OK}`, `{error: "ERR ..."}`, `{nil: array}` (RESP2 `*-1`),
//! `{nil: resp3}` (RESP3 `_`), `{map: {field: value}}`, `{set: [...]}`, `{push: [...]}`, `{double: "1.5"}`,
//! `{bool: true}`, `{big_number: "1234"}`, `{blob_error: ...}`, `{verbatim: "txt:..."}` and
//! `{attributes: [[key, value]], value: ...}`. Bytes that are not UTF-8 text are written `{base64: ...}`, and bulk
//! strings larger than 1 MiB live in `bodies/` as `{file: bodies/<name>, size: <bytes>}`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A recorded Redis exchange: a command (or a transaction, or a subscription) and what the server answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisMock {
    /// RESP version the connection spoke when the command ran: 2, or 3 after `HELLO 3`. Omitted when 2.
    #[serde(default = "resp2", skip_serializing_if = "is_resp2")]
    pub resp: u8,
    /// Database the connection had selected (`SELECT`); omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub db: i64,
    /// The command as sent: its name and arguments, each a bulk string.
    #[serde(serialize_with = "flow_seq")]
    pub command: Vec<RedisValue>,
    /// Set for a transaction (`EXEC`/`DISCARD` after `MULTI`, even an empty one): the commands queued after
    /// `MULTI`, each with the reply it got when queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<Vec<RedisQueued>>,
    /// The reply. Absent for the subscribe family, whose frames are in `replies`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub reply: Option<RedisValue>,
    /// For (P|S)(UN)SUBSCRIBE: every frame the command got, one confirmation per channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty", serialize_with = "flow_values")]
    pub replies: Vec<RedisValue>,
    /// For a subscription: the messages pushed on its channels, in the order they arrived.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pushed: Vec<RedisPushed>,
}

impl Default for RedisMock {
    fn default() -> RedisMock {
        RedisMock {
            resp: 2,
            db: 0,
            command: Vec::new(),
            queued: None,
            reply: None,
            replies: Vec::new(),
            pushed: Vec::new(),
        }
    }
}

/// A command queued inside a transaction, with the reply it got at once (`QUEUED`, or an error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisQueued {
    #[serde(serialize_with = "flow_seq")]
    pub command: Vec<RedisValue>,
    pub reply: RedisValue,
}

/// A message the server pushed to a subscribed connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisPushed {
    /// Milliseconds after the subscription was confirmed.
    pub after_ms: f64,
    /// The frame as sent: `[message, channel, payload]`, `[pmessage, pattern, channel, payload]`, ... (a
    /// `{push: [...]}` in RESP3).
    #[serde(serialize_with = "flow_value")]
    pub message: RedisValue,
}

/// A field that is there is a value, even `null` (the RESP2 null reply); only a missing field is `None`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RedisValue>, D::Error> {
    RedisValue::deserialize(d).map(Some)
}

fn resp2() -> u8 {
    2
}

fn is_resp2(v: &u8) -> bool {
    *v == 2
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// One RESP value (RESP2 and RESP3 types), binary-safe.
#[derive(Debug, Clone, PartialEq)]
pub enum RedisValue {
    /// `+OK`
    Simple(Vec<u8>),
    /// `-ERR ...`
    Error(Vec<u8>),
    /// `:42`
    Integer(i64),
    /// `$5\r\nhello`
    Bulk(Vec<u8>),
    /// A bulk string too large to keep in the YAML, in a file of the test set.
    BulkFile {
        file: String,
        size: u64,
    },
    /// RESP2 null bulk string `$-1`.
    Null,
    /// RESP2 null array `*-1`.
    NullArray,
    /// RESP3 null `_`.
    Nil,
    Array(Vec<RedisValue>),
    Map(Vec<(RedisValue, RedisValue)>),
    Set(Vec<RedisValue>),
    Push(Vec<RedisValue>),
    /// RESP3 double, as written on the wire (`1.5`, `inf`, `nan`).
    Double(String),
    Boolean(bool),
    BigNumber(String),
    BlobError(Vec<u8>),
    /// RESP3 verbatim string, with its `txt:` / `mkd:` prefix.
    Verbatim(Vec<u8>),
    /// RESP3 attributes (`|`) sent before a value.
    Attributed {
        attributes: Vec<(RedisValue, RedisValue)>,
        value: Box<RedisValue>,
    },
}

/// Test shorthand: a bulk string.
#[cfg(test)]
pub(crate) fn bulk(s: &str) -> RedisValue {
    RedisValue::Bulk(s.as_bytes().to_vec())
}

/// Test shorthand: a simple string.
#[cfg(test)]
pub(crate) fn simple(s: &str) -> RedisValue {
    RedisValue::Simple(s.as_bytes().to_vec())
}

impl RedisValue {
    /// The bytes of a string-like value (bulk, simple, error); `None` for other types and file bulks.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            RedisValue::Bulk(b) | RedisValue::Simple(b) | RedisValue::Error(b) | RedisValue::Verbatim(b) => Some(b),
            _ => None,
        }
    }

    /// Whether this is an error reply (`-ERR`, or a RESP3 blob error).
    pub fn is_error(&self) -> bool {
        matches!(self, RedisValue::Error(_) | RedisValue::BlobError(_))
    }
}

/// Text when the bytes are UTF-8 without control characters (other than line breaks and tabs).
fn as_text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().filter(|s| !s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')))
}

/// Bytes written as a string when they are text, else as `{base64: ...}`.
struct Payload<'a>(&'a [u8]);

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match as_text(self.0) {
            Some(t) => s.serialize_str(t),
            None => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("base64", &B64.encode(self.0))?;
                m.end()
            }
        }
    }
}

struct OwnedPayload(Vec<u8>);

impl<'de> Deserialize<'de> for OwnedPayload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OwnedPayload, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OwnedPayload;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or {base64: ...}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OwnedPayload, E> {
                Ok(OwnedPayload(v.as_bytes().to_vec()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OwnedPayload, E> {
                Ok(OwnedPayload(v.to_string().into_bytes()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OwnedPayload, E> {
                Ok(OwnedPayload(v.to_string().into_bytes()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OwnedPayload, A::Error> {
                let key: String = map.next_key()?.ok_or_else(|| de::Error::custom("expected {base64: ...}"))?;
                if key != "base64" {
                    return Err(de::Error::custom(format!("expected {{base64: ...}}, found key {key:?}")));
                }
                let text: String = map.next_value()?;
                let bytes = B64.decode(text.trim()).map_err(|e| de::Error::custom(format!("bad base64: {e}")))?;
                Ok(OwnedPayload(bytes))
            }
        }
        d.deserialize_any(V)
    }
}

/// Map entries written as a YAML mapping when every key is distinct bulk text, else as `[key, value]` pairs.
struct Entries<'a>(&'a [(RedisValue, RedisValue)]);

impl Entries<'_> {
    fn text_keys(&self) -> Option<Vec<&str>> {
        let keys: Vec<&str> = self
            .0
            .iter()
            .map(|(k, _)| match k {
                RedisValue::Bulk(b) => as_text(b),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        (sorted.len() == keys.len()).then_some(keys)
    }
}

impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(keys) = self.text_keys() {
            let mut m = s.serialize_map(Some(keys.len()))?;
            for (k, (_, v)) in keys.iter().zip(self.0) {
                m.serialize_entry(k, v)?;
            }
            return m.end();
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (k, v) in self.0 {
            seq.serialize_element(&[k, v])?;
        }
        seq.end()
    }
}

struct OwnedEntries(Vec<(RedisValue, RedisValue)>);

impl<'de> Deserialize<'de> for OwnedEntries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OwnedEntries, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OwnedEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping, or a list of [key, value] pairs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OwnedEntries, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<OwnedPayload>()? {
                    out.push((RedisValue::Bulk(k.0), map.next_value()?));
                }
                Ok(OwnedEntries(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OwnedEntries, A::Error> {
                let mut out = Vec::new();
                while let Some(pair) = seq.next_element::<Vec<RedisValue>>()? {
                    let [k, v]: [RedisValue; 2] =
                        pair.try_into().map_err(|_| de::Error::custom("each map entry is a [key, value] pair"))?;
                    out.push((k, v));
                }
                Ok(OwnedEntries(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn tagged<S: Serializer, T: Serialize + ?Sized>(s: S, tag: &str, value: &T) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(1))?;
    m.serialize_entry(tag, value)?;
    m.end()
}

impl Serialize for RedisValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RedisValue::Bulk(b) => Payload(b).serialize(s),
            RedisValue::Integer(n) => s.serialize_i64(*n),
            RedisValue::Null => s.serialize_unit(),
            RedisValue::Array(items) => items.serialize(s),
            RedisValue::Simple(b) => tagged(s, "simple", &Payload(b)),
            RedisValue::Error(b) => tagged(s, "error", &Payload(b)),
            RedisValue::BulkFile { file, size } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("file", file)?;
                m.serialize_entry("size", size)?;
                m.end()
            }
            RedisValue::NullArray => tagged(s, "nil", "array"),
            RedisValue::Nil => tagged(s, "nil", "resp3"),
            RedisValue::Map(entries) => tagged(s, "map", &Entries(entries)),
            RedisValue::Set(items) => tagged(s, "set", items),
            RedisValue::Push(items) => tagged(s, "push", items),
            RedisValue::Double(d) => tagged(s, "double", d),
            RedisValue::Boolean(b) => tagged(s, "bool", b),
            RedisValue::BigNumber(n) => tagged(s, "big_number", n),
            RedisValue::BlobError(b) => tagged(s, "blob_error", &Payload(b)),
            RedisValue::Verbatim(b) => tagged(s, "verbatim", &Payload(b)),
            RedisValue::Attributed { attributes, value } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("attributes", &Entries(attributes))?;
                m.serialize_entry("value", value)?;
                m.end()
            }
        }
    }
}

/// Scalars a double may be written as: a string, or a YAML number.
struct DoubleText(String);

impl<'de> Deserialize<'de> for DoubleText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DoubleText, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DoubleText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number written as a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DoubleText, E> {
                Ok(DoubleText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DoubleText, E> {
                Ok(DoubleText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DoubleText, E> {
                Ok(DoubleText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DoubleText, E> {
                Ok(DoubleText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RedisValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RedisValue, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RedisValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a Redis value: a string, an integer, null, a list, or a one-key map naming the type")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RedisValue, E> {
                Ok(RedisValue::Bulk(v.as_bytes().to_vec()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RedisValue, E> {
                Ok(RedisValue::Integer(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RedisValue, E> {
                i64::try_from(v).map(RedisValue::Integer).map_err(|_| E::custom(format!("integer {v} is too large")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RedisValue, E> {
                Err(E::custom(format!("{v}: write a bulk string as \"{v}\", or a RESP3 double as {{double: \"{v}\"}}")))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RedisValue, E> {
                Err(E::custom(format!("{v}: write a bulk string as \"{v}\", or a RESP3 boolean as {{bool: {v}}}")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RedisValue, E> {
                Ok(RedisValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<RedisValue, E> {
                Ok(RedisValue::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RedisValue, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element()? {
                    items.push(v);
                }
                Ok(RedisValue::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RedisValue, A::Error> {
                let tag: String = map.next_key()?.ok_or_else(|| de::Error::custom("an empty map is not a value"))?;
                let value = match tag.as_str() {
                    "simple" => RedisValue::Simple(map.next_value::<OwnedPayload>()?.0),
                    "error" => RedisValue::Error(map.next_value::<OwnedPayload>()?.0),
                    "base64" => {
                        let text: String = map.next_value()?;
                        let bytes =
                            B64.decode(text.trim()).map_err(|e| de::Error::custom(format!("bad base64: {e}")))?;
                        RedisValue::Bulk(bytes)
                    }
                    "file" => {
                        let file: String = map.next_value()?;
                        match map.next_key::<String>()?.as_deref() {
                            Some("size") => RedisValue::BulkFile { file, size: map.next_value()? },
                            _ => return Err(de::Error::custom("a file value needs its size: {file: ..., size: N}")),
                        }
                    }
                    "nil" => match map.next_value::<String>()?.as_str() {
                        "array" => RedisValue::NullArray,
                        "resp3" => RedisValue::Nil,
                        other => {
                            return Err(de::Error::custom(format!("nil: {other:?} is neither `array` nor `resp3`")));
                        }
                    },
                    "map" => RedisValue::Map(map.next_value::<OwnedEntries>()?.0),
                    "set" => RedisValue::Set(map.next_value()?),
                    "push" => RedisValue::Push(map.next_value()?),
                    "double" => RedisValue::Double(map.next_value::<DoubleText>()?.0),
                    "bool" => RedisValue::Boolean(map.next_value()?),
                    "big_number" => RedisValue::BigNumber(map.next_value::<DoubleText>()?.0),
                    "blob_error" => RedisValue::BlobError(map.next_value::<OwnedPayload>()?.0),
                    "verbatim" => RedisValue::Verbatim(map.next_value::<OwnedPayload>()?.0),
                    "attributes" => {
                        let attributes = map.next_value::<OwnedEntries>()?.0;
                        match map.next_key::<String>()?.as_deref() {
                            Some("value") => RedisValue::Attributed { attributes, value: Box::new(map.next_value()?) },
                            _ => return Err(de::Error::custom("attributes need the value they describe: value: ...")),
                        }
                    }
                    other => return Err(de::Error::custom(format!("unknown Redis value type {other:?}"))),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!("unexpected key {extra:?} in a {tag} value")));
                }
                Ok(value)
            }
        }
        d.deserialize_any(V)
    }
}

/// Commands are short lists: `[SET, "user:42", hello]` on one line reads best.
fn flow_seq<S: Serializer>(items: &[RedisValue], s: S) -> Result<S::Ok, S::Error> {
    serde_saphyr::FlowSeq(items).serialize(s)
}

/// Pub/sub frames on one line: `[message, news, hello]`, `{push: [message, news, hello]}`.
fn flow_value<S: Serializer>(value: &RedisValue, s: S) -> Result<S::Ok, S::Error> {
    match value {
        RedisValue::Array(items) => serde_saphyr::FlowSeq(items).serialize(s),
        RedisValue::Push(items) => tagged(s, "push", &serde_saphyr::FlowSeq(items)),
        other => other.serialize(s),
    }
}

struct Flow<'a>(&'a RedisValue);

impl Serialize for Flow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        flow_value(self.0, s)
    }
}

fn flow_values<S: Serializer>(values: &[RedisValue], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(values.len()))?;
    for v in values {
        seq.serialize_element(&Flow(v))?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(mock: &RedisMock) -> String {
        let yaml = crate::store::to_yaml(mock).unwrap();
        let back: RedisMock = crate::store::parse_yaml(&yaml, std::path::Path::new("mocks.yaml"), 1).unwrap();
        assert_eq!(&back, mock, "{yaml}");
        yaml
    }

    #[test]
    fn commands_and_replies_read_as_yaml() {
        let mock = RedisMock {
            command: vec![
                bulk("SET"),
                bulk("user:42"),
                bulk("42"),
                bulk("true"),
                bulk(""),
                RedisValue::Bulk(vec![0, 255]),
            ],
            reply: Some(RedisValue::Simple(b"OK".to_vec())),
            ..RedisMock::default()
        };
        let yaml = round_trip(&mock);
        assert!(yaml.contains(r#"command: [SET, user:42, "42", "true", "", {base64: AP8=}]"#), "{yaml}");
        assert!(yaml.contains("reply:\n  simple: OK"), "{yaml}");
        assert!(!yaml.contains("resp:") && !yaml.contains("db:"), "defaults are omitted: {yaml}");

        let hello = RedisMock {
            command: vec![bulk("HELLO"), bulk("3")],
            reply: Some(RedisValue::Map(vec![
                (bulk("server"), bulk("redis")),
                (bulk("proto"), RedisValue::Integer(3)),
                (bulk("modules"), RedisValue::Array(vec![])),
            ])),
            ..RedisMock::default()
        };
        let yaml = round_trip(&hello);
        assert!(yaml.contains("map:\n    server: redis\n    proto: 3"), "{yaml}");

        let subscription = RedisMock {
            resp: 3,
            db: 2,
            command: vec![bulk("SUBSCRIBE"), bulk("news")],
            replies: vec![RedisValue::Push(vec![bulk("subscribe"), bulk("news"), RedisValue::Integer(1)])],
            pushed: vec![RedisPushed {
                after_ms: 1.25,
                message: RedisValue::Array(vec![bulk("message"), bulk("news"), bulk("hello world")]),
            }],
            ..RedisMock::default()
        };
        let yaml = round_trip(&subscription);
        assert!(yaml.contains("message: [message, news, hello world]"), "{yaml}");
        assert!(yaml.contains("replies:\n- push: [subscribe, news, 1]"), "{yaml}");

        let transaction = RedisMock {
            command: vec![bulk("EXEC")],
            queued: Some(vec![RedisQueued {
                command: vec![bulk("INCR"), bulk("n")],
                reply: RedisValue::Simple(b"QUEUED".to_vec()),
            }]),
            reply: Some(RedisValue::Array(vec![RedisValue::Integer(1)])),
            ..RedisMock::default()
        };
        round_trip(&transaction);
        let null = RedisMock {
            command: vec![bulk("GET"), bulk("gone")],
            reply: Some(RedisValue::Null),
            ..RedisMock::default()
        };
        assert!(round_trip(&null).contains("reply: null"));
        let empty = RedisMock { queued: Some(vec![]), reply: Some(RedisValue::Array(vec![])), ..transaction };
        assert!(round_trip(&empty).contains("queued: []"));

        let odd = RedisMock {
            command: vec![bulk("X"), RedisValue::BulkFile { file: "bodies/b-1.bin".into(), size: 5_000_000 }],
            reply: Some(RedisValue::Array(vec![
                RedisValue::Null,
                RedisValue::NullArray,
                RedisValue::Nil,
                RedisValue::Double("inf".into()),
                RedisValue::Boolean(false),
                RedisValue::BigNumber("123456789012345678901234567890".into()),
                RedisValue::Map(vec![
                    (RedisValue::Integer(1), bulk("one")),
                    (bulk("a"), bulk("b")),
                    (bulk("a"), bulk("c")),
                ]),
                RedisValue::Attributed {
                    attributes: vec![(bulk("ttl"), RedisValue::Integer(3))],
                    value: Box::new(bulk("v")),
                },
            ])),
            ..RedisMock::default()
        };
        round_trip(&odd);
    }

    #[test]
    fn hand_written_mistakes_are_named() {
        let parse = |y: &str| crate::store::parse_yaml::<RedisMock>(y, std::path::Path::new("m.yaml"), 1);
        assert!(parse("command: [GET, k]\nreply: {simpel: OK}").unwrap_err().to_string().contains("simpel"));
        assert!(parse("command: [GET, k]\nreply: 1.5").unwrap_err().to_string().contains("double"));
        assert!(parse("command: [GET, k]\nreply: {nil: nothing}").is_err());
        assert!(parse("command: [GET, k]\nreply: {base64: '%%%'}").unwrap_err().to_string().contains("base64"));
    }
}
