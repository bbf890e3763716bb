//! gRPC over HTTP/2: a call's body is a sequence of messages, each a compressed flag, a 4-byte big-endian
//! length and the protobuf bytes. Messages are stored decoded: with the .proto files given to doppel
//! (`--proto`), as protobuf JSON with field names; without, as a tree of field numbers (`pbwire`).

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::Value;

use super::pbwire;
use crate::protocols::http::{Header, HeaderList};
use crate::protocols::http2::GrpcMessage;

/// A call's messages larger than this together are stored as a plain body instead of decoded.
pub const MAX_DECODED_BODY: usize = 16 << 20;

/// The .proto files given for this run. One doppel process records or tests one project, so the schema is
/// process-wide; set once at start-up, before any connection is observed or served.
static SCHEMA: OnceLock<DescriptorPool> = OnceLock::new();

/// Compiles `.proto` files (imports resolved in `include` directories, then the files' own directories).
pub fn load_schema(files: &[std::path::PathBuf], include: &[std::path::PathBuf]) -> crate::error::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let mut dirs: Vec<std::path::PathBuf> = include.to_vec();
    for f in files {
        if let Some(parent) = f.parent() {
            let parent = if parent.as_os_str().is_empty() { std::path::Path::new(".") } else { parent };
            if !dirs.iter().any(|d| d == parent) {
                dirs.push(parent.to_path_buf());
            }
        }
    }
    let set = protox::compile(files, &dirs).map_err(|e| crate::error::Error::input(format!("--proto: {e}")))?;
    let pool = DescriptorPool::from_file_descriptor_set(set)
        .map_err(|e| crate::error::Error::input(format!("--proto: {e}")))?;
    let names = |p: &DescriptorPool| p.files().map(|f| f.name().to_string()).collect::<Vec<_>>();
    let wanted = names(&pool);
    let loaded = SCHEMA.get_or_init(|| pool);
    if names(loaded) != wanted {
        return Err(crate::error::Error::internal(format!(
            "the gRPC schema was already loaded from {} and cannot change to {} within one run",
            names(loaded).join(", "),
            wanted.join(", ")
        )));
    }
    Ok(())
}

pub fn schema() -> Option<&'static DescriptorPool> {
    SCHEMA.get()
}

/// Whether headers describe a gRPC call (`content-type: application/grpc`, `application/grpc+proto`).
pub fn is_grpc(headers: &[Header]) -> bool {
    HeaderList::get(headers, "content-type").is_some_and(|h| {
        let v = h.value.as_slice();
        v == b"application/grpc" || v.starts_with(b"application/grpc+proto") || v.starts_with(b"application/grpc;")
    })
}

/// The request or response message type of the method a path (`/pkg.Service/Method`) names.
fn message_type(pool: &DescriptorPool, path: &str, request: bool) -> Option<MessageDescriptor> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let method = pool.get_service_by_name(service)?.methods().find(|m| m.name() == method)?;
    Some(if request { method.input() } else { method.output() })
}

/// Splits a body into its messages: `(compressed, bytes)`. An error when it is not gRPC framing.
pub fn split(mut body: &[u8]) -> crate::error::Result<Vec<(bool, &[u8])>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let Some((head, rest)) = body.split_first_chunk::<5>() else {
            return Err(crate::error::Error::input(format!("{} bytes left after the last gRPC message", body.len())));
        };
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if head[0] > 1 || rest.len() < len {
            return Err(crate::error::Error::input("not gRPC message framing"));
        }
        let (msg, rest) = rest.split_at(len);
        out.push((head[0] == 1, msg));
        body = rest;
    }
    Ok(out)
}

/// One message as stored: decoded to JSON, exact bytes kept when the JSON does not give them back.
pub fn to_stored(path: &str, request: bool, compressed: bool, bytes: &[u8]) -> GrpcMessage {
    let raw = || Some(B64.encode(bytes));
    if compressed {
        return GrpcMessage { type_name: None, json: None, base64: raw(), compressed, after_requests: None };
    }
    if let Some(desc) = schema().and_then(|p| message_type(p, path, request))
        && let Ok(msg) = DynamicMessage::decode(desc.clone(), bytes)
    {
        let options = SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(false);
        if let Ok(json) = msg.serialize_with_options(serde_json::value::Serializer, &options) {
            let exact = encode_with(&desc, &json).is_some_and(|b| b == bytes);
            return GrpcMessage {
                type_name: Some(desc.full_name().to_string()),
                json: Some(json),
                base64: if exact { None } else { raw() },
                compressed,
                after_requests: None,
            };
        }
    }
    match pbwire::decode(bytes) {
        Some(tree) => {
            let exact = pbwire::encode(&tree).is_some_and(|b| b == bytes);
            let base64 = if exact { None } else { raw() };
            GrpcMessage { type_name: None, json: Some(tree), base64, compressed, after_requests: None }
        }
        None => GrpcMessage { type_name: None, json: None, base64: raw(), compressed, after_requests: None },
    }
}

fn encode_with(desc: &MessageDescriptor, json: &Value) -> Option<Vec<u8>> {
    DynamicMessage::deserialize(desc.clone(), json.clone()).ok().map(|m| m.encode_to_vec())
}

/// The bytes of a stored message: the kept bytes, else its JSON encoded (with the .proto when it names a
/// type, else as a field-number tree).
pub fn message_bytes(m: &GrpcMessage) -> crate::error::Result<Vec<u8>> {
    if let Some(b) = &m.base64 {
        return B64
            .decode(b.trim())
            .map_err(|e| crate::error::Error::input(format!("gRPC message base64 is invalid: {e}")));
    }
    let json = m.json.as_ref().ok_or_else(|| crate::error::Error::input("a gRPC message needs json or base64"))?;
    match &m.type_name {
        Some(name) => {
            let pool = schema().ok_or_else(|| {
                crate::error::Error::input(format!("message of type {name}: give its .proto with --proto"))
            })?;
            let desc = pool
                .get_message_by_name(name)
                .ok_or_else(|| crate::error::Error::input(format!("type {name} is not in the .proto files")))?;
            DynamicMessage::deserialize(desc, json.clone()).map(|m| m.encode_to_vec()).map_err(|e| {
                crate::error::Error::input(format!("message of type {name} does not match its .proto: {e}"))
            })
        }
        None => pbwire::encode(json)
            .ok_or_else(|| crate::error::Error::input("a field-number message holds a value protobuf cannot encode")),
    }
}

/// A message type a test set was decoded with, when no schema is loaded to encode it again.
pub fn missing_schema(set: &crate::store::LoadedSet) -> Option<String> {
    if schema().is_some() {
        return None;
    }
    let tests = set.tests.iter().filter_map(|(_, t)| t.http()).flat_map(|(q, r)| [&q.messages, &r.messages]);
    let mocks = set
        .mocks
        .iter()
        .filter_map(|m| m.http2.as_ref())
        .flat_map(|h| [Some(&h.request.messages), h.response.as_ref().map(|r| &r.messages)].into_iter().flatten());
    tests.chain(mocks).flatten().find_map(|m| m.type_name.clone().filter(|_| m.base64.is_none()))
}

/// A whole gRPC body from stored messages.
pub fn body_of(messages: &[GrpcMessage]) -> crate::error::Result<Vec<u8>> {
    let mut out = Vec::new();
    for m in messages {
        let bytes = message_bytes(m)?;
        out.push(u8::from(m.compressed));
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// The messages of a body as stored, or `None` when it is not gRPC framing.
pub fn decode_body(path: &str, request: bool, body: &[u8]) -> Option<Vec<GrpcMessage>> {
    let parts = split(body).ok()?;
    Some(parts.into_iter().map(|(c, b)| to_stored(path, request, c, b)).collect())
}

/// The JSON view of messages, for comparing: decoded JSON, or the base64 bytes for undecodable ones.
pub fn json_view(messages: &[GrpcMessage]) -> Value {
    Value::Array(messages.iter().map(json_of).collect())
}

/// The JSON view of one message (see `json_view`).
pub fn json_of(m: &GrpcMessage) -> Value {
    m.json.clone().unwrap_or_else(|| Value::String(m.base64.clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trip() {
        let msgs = vec![
            to_stored("/x.Y/Z", true, false, b"\x0a\x05alice"),
            to_stored("/x.Y/Z", true, false, b"\x0d\x01\x00\x00\x00"),
        ];
        assert_eq!(msgs[0].json, Some(serde_json::json!({"1": "alice"})));
        assert_eq!(msgs[0].base64, None);
        assert!(msgs[1].base64.is_some(), "fixed32 does not re-encode from the tree; bytes kept");
        let body = body_of(&msgs).unwrap();
        assert_eq!(body, b"\0\0\0\0\x07\x0a\x05alice\0\0\0\0\x05\x0d\x01\x00\x00\x00");
        let back = decode_body("/x.Y/Z", true, &body).unwrap();
        assert_eq!(back, msgs);
        assert!(split(b"\0\0\0\0\x09abc").is_err());
        assert!(split(b"\0\0").is_err());
    }

    #[test]
    fn with_the_proto_messages_have_field_names_and_encode_back() {
        let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/grpc/shop.proto");
        load_schema(std::slice::from_ref(&proto), &[]).unwrap();
        load_schema(&[proto], &[]).expect("the same files again are the same schema");
        // A different schema in the same process is refused, never silently ignored.
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other.proto");
        std::fs::write(&other, "syntax = \"proto3\";\npackage other;\nmessage M { int32 a = 1; }\n").unwrap();
        let refused = load_schema(&[other], &[]).unwrap_err().to_string();
        assert!(refused.contains("already loaded") && refused.contains("other.proto"), "{refused}");
        // Order { order_id: 7, customer: "alice", total_cents: 8750, items: ["a"] }
        let bytes = b"\x08\x07\x12\x05alice\x18\xae\x44\x22\x01a";
        let m = to_stored("/shop.Orders/GetOrder", false, false, bytes);
        assert_eq!(m.type_name.as_deref(), Some("shop.Order"));
        assert_eq!(
            m.json,
            Some(serde_json::json!({"order_id": 7, "customer": "alice", "total_cents": 8750, "items": ["a"]}))
        );
        assert_eq!(m.base64, None, "canonical encoding: the JSON gives the bytes back");
        assert_eq!(message_bytes(&m).unwrap(), bytes);
        // A method the schema does not know falls back to field numbers.
        let unknown = to_stored("/shop.Orders/Nope", true, false, b"\x0a\x01x");
        assert_eq!(unknown.json, Some(serde_json::json!({"1": "x"})));
    }
}
