//! On-disk form of recorded NATS exchanges (`nats:` in a mock). Three shapes, named by `op`:
//!
//! - `connect`: the server's `INFO` and the client's `CONNECT` (credentials written as `"<redacted>"`), and
//!   the `-ERR` the server answered, if it refused the connection;
//! - `publish`: a PUB or HPUB (`subject`, `reply_to`, `status`/`headers`, `payload`) with the messages the
//!   server delivered because of it in `deliveries`: the replies to its reply-to subject (a request, a
//!   JetStream publish acknowledgement or pull fetch) and the copies delivered to this connection's own
//!   subscriptions;
//! - `subscribe`: a SUB (`subject`, `queue`, `sid`) with the messages delivered to it that no publish of the
//!   connection caused, in `deliveries`.
//!
//! Each delivery keeps its delay (`after_ms`, since the publish or the subscription), the subscription it
//! arrived on, and the message as sent. Payloads are bodies (`{json: ...}`, `{text: ...}`, `{base64: ...}`).

use serde::{Deserialize, Serialize};

use super::wire::{Headers, Message};
use crate::store::Body;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NatsOp {
    Connect,
    Publish,
    Subscribe,
}

/// A recorded NATS exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsMock {
    pub op: NatsOp,
    /// connect: the server's INFO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// connect: the client's CONNECT options, credentials redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<serde_json::Value>,
    /// The `-ERR` the server answered (to a CONNECT: the connection was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// publish and subscribe: the subject (a subscription's may hold wildcards).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// subscribe: its queue group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// subscribe: the client's subscription id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// publish: where replies go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// publish: set for HPUB (an empty list is HPUB without headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    /// publish: what followed `NATS/1.0` on the header block's first line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// publish: the payload; absent when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Body>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<NatsDelivery>,
}

impl NatsMock {
    pub fn new(op: NatsOp) -> NatsMock {
        NatsMock {
            op,
            info: None,
            connect: None,
            error: None,
            subject: String::new(),
            queue: None,
            sid: None,
            reply_to: None,
            headers: None,
            status: None,
            payload: None,
            deliveries: Vec::new(),
        }
    }
}

/// A message (MSG or HMSG) the server delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsDelivery {
    /// Milliseconds after the publish (or the subscription) it belongs to.
    pub after_ms: f64,
    /// The subject of the subscription it was delivered to (its sid is in `sid`).
    pub subscription: String,
    pub sid: String,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Body>,
}

/// The header block of a message as written: (`status`, `headers`).
pub fn split_headers(headers: &Option<Headers>) -> (Option<String>, Option<Vec<String>>) {
    match headers {
        Some(h) => (h.status.clone(), Some(h.lines.clone())),
        None => (None, None),
    }
}

/// The header block written as `status` and `headers`, back as on the wire.
pub fn join_headers(status: &Option<String>, headers: &Option<Vec<String>>) -> Option<Headers> {
    match (status, headers) {
        (None, None) => None,
        (status, lines) => Some(Headers { status: status.clone(), lines: lines.clone().unwrap_or_default() }),
    }
}

impl NatsDelivery {
    /// The message as it is delivered again, its payload `payload`.
    pub fn message(&self, payload: Vec<u8>) -> Message {
        Message {
            subject: self.subject.clone(),
            reply_to: self.reply_to.clone(),
            headers: join_headers(&self.status, &self.headers),
            payload,
        }
    }
}
