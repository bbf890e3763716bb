//! On-disk form of opaque TCP conversations: ordered chunks per connection, text when printable.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// One chunk of an opaque TCP conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// `out`: app to dependency; `in`: dependency to app.
    pub dir: Direction,
    /// Milliseconds since the connection opened.
    pub at_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Out,
    In,
}

impl Chunk {
    pub fn new(dir: Direction, at_ms: f64, data: &[u8]) -> Chunk {
        match std::str::from_utf8(data) {
            Ok(s) if !s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) => {
                Chunk { dir, at_ms, text: Some(s.to_string()), base64: None }
            }
            _ => Chunk { dir, at_ms, text: None, base64: Some(B64.encode(data)) },
        }
    }

    pub fn bytes(&self) -> crate::error::Result<Vec<u8>> {
        match (&self.text, &self.base64) {
            (Some(t), None) => Ok(t.as_bytes().to_vec()),
            (None, Some(b)) => {
                B64.decode(b.trim()).map_err(|e| crate::error::Error::input(format!("chunk base64 is invalid: {e}")))
            }
            _ => Err(crate::error::Error::input("a chunk needs exactly one of text or base64")),
        }
    }
}

/// A recorded outbound connection in a protocol doppel does not parse: replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpMock {
    pub chunks: Vec<Chunk>,
    /// Why this connection was not parsed (unknown protocol, or the parser gave up and why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Which side closed first: `app` or `dependency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
    /// Set when the dependency could not be reached while recording; replay refuses the connection the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_error: Option<String>,
}
