//! gRPC messages in test and mock files: each length-prefixed message of a call, shown as JSON (field names
//! from the .proto when one was given, field numbers otherwise), with its exact bytes kept only when the JSON
//! does not encode back to them. Response messages of a streaming mock may say when they were sent
//! (`after_requests`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMessage {
    /// The message type from the .proto (`shop.OrderRequest`); absent when decoded without one.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// The decoded message; absent when it could not be decoded (compressed, or not protobuf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// The exact message bytes, when `json` alone does not give them back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Set when the message was sent compressed (the gRPC compressed flag).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compressed: bool,
    /// Response messages of a streaming call the dependency answered while the app was still sending: how
    /// many request messages it had received when it sent this one. Replay sends it once that many have
    /// arrived, for clients that wait for an answer before sending on. Absent: sent when the request ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_requests: Option<u32>,
}
