//! How a message body is written in test and mock files: JSON as structured YAML, text as text, binary as
//! base64, large bodies as files beside the YAML. Every form turns back into the exact bytes recorded.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bodies larger than this are kept in `bodies/` next to the test set instead of inline.
pub const INLINE_LIMIT: usize = 1024 * 1024;

/// One body. Exactly one of `json`, `text`, `base64`, `file` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// How the JSON was laid out byte for byte; absent means compact (`{"a":1}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_style: Option<JsonStyle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Path relative to the test set directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Size in bytes, written for file bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// The byte layout of a JSON body, so that a structured body re-encodes to the exact recorded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonStyle {
    Compact,
    CompactNewline,
    /// `{"a": 1, "b": 2}` as Python's json.dumps writes it.
    Spaced,
    SpacedNewline,
    Pretty2,
    Pretty2Newline,
    Pretty4,
    Pretty4Newline,
}

const STYLES: [JsonStyle; 8] = [
    JsonStyle::Compact,
    JsonStyle::CompactNewline,
    JsonStyle::Spaced,
    JsonStyle::SpacedNewline,
    JsonStyle::Pretty2,
    JsonStyle::Pretty2Newline,
    JsonStyle::Pretty4,
    JsonStyle::Pretty4Newline,
];

impl JsonStyle {
    fn parts(self) -> (&'static str, &'static str, Option<usize>, bool) {
        // (item separator, key separator, indent, trailing newline)
        match self {
            JsonStyle::Compact => (",", ":", None, false),
            JsonStyle::CompactNewline => (",", ":", None, true),
            JsonStyle::Spaced => (", ", ": ", None, false),
            JsonStyle::SpacedNewline => (", ", ": ", None, true),
            JsonStyle::Pretty2 => (",", ": ", Some(2), false),
            JsonStyle::Pretty2Newline => (",", ": ", Some(2), true),
            JsonStyle::Pretty4 => (",", ": ", Some(4), false),
            JsonStyle::Pretty4Newline => (",", ": ", Some(4), true),
        }
    }

    pub fn encode(self, value: &Value) -> Vec<u8> {
        let (item, key, indent, newline) = self.parts();
        let mut out = String::new();
        write_json(&mut out, value, item, key, indent, 0);
        if newline {
            out.push('\n');
        }
        out.into_bytes()
    }
}

// serde_json's pretty printer cannot produce Python's ", " / ": " layout, so the few layouts are written here.
fn write_json(out: &mut String, v: &Value, item: &str, key: &str, indent: Option<usize>, depth: usize) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * depth));
        }
    };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item);
                }
                newline(out, depth + 1);
                write_json(out, x, item, key, indent, depth + 1);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, x)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(key);
                write_json(out, x, item, key, indent, depth + 1);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Whether a content type says JSON (`application/json`, `application/problem+json`, ...).
pub fn is_json_type(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let ct = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        ct.ends_with("/json") || ct.ends_with("+json")
    })
}

impl Body {
    /// The readable form of in-memory bytes: structured JSON when it re-encodes to exactly these bytes,
    /// else text when UTF-8 without control bytes, else base64.
    pub fn from_bytes(bytes: &[u8]) -> Option<Body> {
        if bytes.is_empty() {
            return None;
        }
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if matches!(first, Some(b'{') | Some(b'['))
            && let Ok(value) = serde_json::from_slice::<Value>(bytes)
            && let Some(style) = STYLES.iter().find(|s| s.encode(&value) == bytes)
        {
            let json_style = (*style != JsonStyle::Compact).then_some(*style);
            return Some(Body { json: Some(value), json_style, ..Body::default() });
        }
        match std::str::from_utf8(bytes) {
            Ok(s) if !has_control(s) => Some(Body { text: Some(s.to_string()), ..Body::default() }),
            _ => Some(Body { base64: Some(B64.encode(bytes)), ..Body::default() }),
        }
    }

    pub fn file(path: String, size: u64) -> Body {
        Body { file: Some(path), size: Some(size), ..Body::default() }
    }

    /// Checks that exactly one form is set.
    pub fn validate(&self) -> crate::error::Result<()> {
        let forms = [self.json.is_some(), self.text.is_some(), self.base64.is_some(), self.file.is_some()];
        match forms.iter().filter(|x| **x).count() {
            1 => Ok(()),
            0 => Err(crate::error::Error::input("a body needs one of json, text, base64 or file")),
            _ => Err(crate::error::Error::input("a body must have only one of json, text, base64 or file")),
        }
    }

    /// The recorded bytes of an inline body; `None` for file bodies (read those through the store).
    pub fn inline_bytes(&self) -> crate::error::Result<Option<Vec<u8>>> {
        if let Some(v) = &self.json {
            return Ok(Some(self.json_style.unwrap_or(JsonStyle::Compact).encode(v)));
        }
        if let Some(t) = &self.text {
            return Ok(Some(t.as_bytes().to_vec()));
        }
        if let Some(b) = &self.base64 {
            return B64
                .decode(b.trim())
                .map(Some)
                .map_err(|e| crate::error::Error::input(format!("body base64 is invalid: {e}")));
        }
        Ok(None)
    }
}

/// Whether text holds a control character other than newline, carriage return and tab (Unicode Cc:
/// U+0000–U+001F and U+007F–U+009F), which YAML text cannot carry. Scans bytes rather than chars: bodies
/// are large and this runs on every recorded one (C1 controls are 0xC2 0x80..=0x9F in UTF-8).
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        (c < 0x20 && !matches!(c, b'\n' | b'\r' | b'\t'))
            || c == 0x7f
            || (c == 0xc2 && b.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn control_scan_agrees_with_char_classes(s in "\\PC*|[\\x00-\\x{a0}]{0,40}") {
            let by_chars = s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
            proptest::prop_assert_eq!(has_control(&s), by_chars);
        }
    }

    fn roundtrip(bytes: &[u8]) -> Body {
        let body = Body::from_bytes(bytes).unwrap();
        assert_eq!(body.inline_bytes().unwrap().unwrap(), bytes, "{body:?}");
        body
    }

    #[test]
    fn json_layouts_round_trip_exactly() {
        assert!(roundtrip(br#"{"a":1,"b":[1,2]}"#).json.is_some());
        assert_eq!(roundtrip(b"{\"a\": 1, \"b\": [1, 2]}").json_style, Some(JsonStyle::Spaced));
        assert_eq!(roundtrip(b"{\"a\":1}\n").json_style, Some(JsonStyle::CompactNewline));
        assert_eq!(roundtrip(b"{\n  \"a\": [\n    1\n  ],\n  \"b\": {}\n}").json_style, Some(JsonStyle::Pretty2));
        assert_eq!(roundtrip(b"{\n    \"a\": 1\n}\n").json_style, Some(JsonStyle::Pretty4Newline));
    }

    #[test]
    fn odd_json_stays_text_and_binary_is_base64() {
        assert!(roundtrip(b"{ \"a\" :1}").text.is_some());
        assert!(roundtrip(b"{\"e\": 1.50}").text.is_some());
        assert!(roundtrip(b"hello\nworld").text.is_some());
        assert!(roundtrip(&[0, 159, 146, 150]).base64.is_some());
        assert!(roundtrip(b"a\x1bb").base64.is_some());
    }
}
