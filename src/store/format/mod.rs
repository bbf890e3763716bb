//! The types written to disk. Version 1 of the format; `FORMAT_VERSION` changes when a file written by a
//! newer doppel could be misread by this one.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::body::Body;

mod grpc;
mod mysql;
mod postgres;
mod redis;

pub use grpc::GrpcMessage;
pub use mysql::*;
pub use postgres::{PgColumn, PgCopy, PgError, PgNotification, PgProtocol, PgQuery, PgResult, PgStartup, PostgresMock};
pub use redis::{RedisMock, RedisPushed, RedisQueued, RedisValue};

pub const FORMAT_VERSION: u32 = 1;

/// One header line, kept in recorded order and case. Written as `"Name: value"`; a value that is not UTF-8
/// is written as `"Name:: <base64>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Header {
        Header { name: name.into(), value: value.into() }
    }

    pub fn value_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

impl Serialize for Header {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.value) {
            Ok(v) if !v.starts_with(':') => s.serialize_str(&format!("{}: {}", self.name, v)),
            _ => s.serialize_str(&format!("{}:: {}", self.name, B64.encode(&self.value))),
        }
    }
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Header, D::Error> {
        let line = String::deserialize(d)?;
        // HTTP/2 pseudo-headers (`:authority: host`) keep their leading colon in the name.
        let pseudo = usize::from(line.starts_with(':'));
        let (name, rest) = line[pseudo..]
            .split_once(':')
            .map(|(n, r)| (&line[..pseudo + n.len()], r))
            .ok_or_else(|| serde::de::Error::custom(format!("header {line:?} is not of the form \"Name: value\"")))?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(serde::de::Error::custom(format!("header {line:?} has an invalid name")));
        }
        let value = if let Some(b64) = rest.strip_prefix(':') {
            B64.decode(b64.trim()).map_err(|e| serde::de::Error::custom(format!("header {name}: bad base64: {e}")))?
        } else {
            rest.strip_prefix(' ').unwrap_or(rest).as_bytes().to_vec()
        };
        Ok(Header { name: name.to_string(), value })
    }
}

/// Case-insensitive lookups over a header list.
pub trait HeaderList {
    fn get(&self, name: &str) -> Option<&Header>;
    fn get_str(&self, name: &str) -> Option<String> {
        self.get(name).map(|h| h.value_str().into_owned())
    }
}

impl HeaderList for [Header] {
    fn get(&self, name: &str) -> Option<&Header> {
        self.iter().find(|h| h.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    pub method: String,
    /// Request target as sent: path and query (`/api/users?page=2`).
    pub target: String,
    #[serde(default = "http11")]
    pub version: String,
    #[serde(default)]
    pub headers: Vec<Header>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// gRPC calls: the messages of the body, decoded (then `body` is absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<GrpcMessage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trailers: Vec<Header>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default = "http11")]
    pub version: String,
    #[serde(default)]
    pub headers: Vec<Header>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// gRPC calls: the messages of the body, decoded (then `body` is absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<GrpcMessage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trailers: Vec<Header>,
}

fn http11() -> String {
    "HTTP/1.1".into()
}

/// A rule that marks part of a response as noise (not compared), or relaxes how it is compared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseRule {
    /// A header name (case-insensitive) whose value is not compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A JSONPath over the response body (`$.created_at`, `$..id`, `$.items[*].token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// With `body`: compare the arrays at that path ignoring element order instead of ignoring them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_order: bool,
    /// The value may change but must keep this shape: the recorded value with its volatile parts written as
    /// slots (`"{uuid}"`, `"{timestamp}"`, `"sid={token:32}; Path=/"`; see `noise::shape`). Without `like`
    /// the selected value is not compared at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub like: Option<String>,
    /// Why the rule exists; `learned` rules were written by doppel and are safe to delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set on rules doppel learned by replaying the same build several times: when, and what it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned: Option<Learned>,
}

/// How a learned noise rule came about, so a reviewer can judge it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learned {
    /// The day it was learned (YYYY-MM-DD).
    pub date: String,
    /// How many responses of the same build were compared (runs, or target and secondary).
    pub runs: u32,
    /// The differing values seen, a few of them, as compact JSON or header text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
}

/// One recorded inbound exchange: a test case. Stored as `tests/<name>.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub version: u32,
    pub name: String,
    pub kind: String,
    /// RFC 3339 time the request started.
    pub recorded_at: String,
    /// Milliseconds the app took to answer when recorded.
    #[serde(default)]
    pub latency_ms: f64,
    /// The app port the request was sent to.
    pub port: u16,
    pub request: HttpRequest,
    pub response: HttpResponse,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub noise: Vec<NoiseRule>,
    /// Values that looked volatile when recorded (timestamps, UUIDs, tokens, JWTs): each may change in
    /// replay as long as it keeps its shape (`like`). Written by `doppel record`; rewritten by `--rerecord`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volatile: Vec<NoiseRule>,
    /// The recorded value behind each `{{ chain.NAME }}` template in this test (a value an earlier response
    /// produced). In replay the template takes the value the app produced this time.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub chain: std::collections::BTreeMap<String, serde_json::Value>,
    /// Labels for `doppel test --tag`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The client spoke TLS to the app, asking for this server name (or the address it connected to):
    /// replay speaks TLS to the app with the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
}

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

    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.text, &self.base64) {
            (Some(t), None) => Ok(t.as_bytes().to_vec()),
            (None, Some(b)) => B64.decode(b.trim()).map_err(|e| format!("chunk base64 is invalid: {e}")),
            _ => Err("a chunk needs exactly one of text or base64".into()),
        }
    }
}

/// A recorded outbound HTTP exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMock {
    pub request: HttpRequest,
    /// Absent when the dependency closed the connection without answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HttpResponse>,
    /// Set when the dependency closed the connection before the response ended: replay sends what was
    /// recorded, then closes the same way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut_short: bool,
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

/// A recorded DNS answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsMock {
    pub name: String,
    /// Record type: A, AAAA, CNAME, ... or the number.
    pub qtype: String,
    /// Response code: NOERROR, NXDOMAIN, SERVFAIL, ...
    pub rcode: String,
    /// Answer records in presentation form (`A 10.0.0.7 ttl=60`).
    #[serde(default)]
    pub answers: Vec<String>,
    /// The whole response message, so that replay can send exactly what was answered.
    pub response_base64: String,
}

/// One mock: a recorded outbound exchange, a document in `mocks.yaml`. Exactly one protocol field is set,
/// and `kind` names it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mock {
    pub version: u32,
    pub id: u64,
    pub kind: String,
    /// Where the app connected (the original destination, or the declared dependency).
    pub dest: String,
    /// Capture connection number: mocks of one connection share it.
    #[serde(default)]
    pub connection: u64,
    pub started_at: String,
    #[serde(default)]
    pub duration_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpMock>,
    /// An HTTP/2 exchange (gRPC calls included), in the same shape as `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<HttpMock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpMock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsMock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresMock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisMock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql: Option<MysqlMock>,
}

impl TestCase {
    /// A test as recorded: no name yet (the store gives it one), no noise, chain or tags yet (marked after
    /// the recording).
    pub fn new(
        kind: &str,
        recorded_at: String,
        latency_ms: f64,
        port: u16,
        tls: Option<String>,
        request: HttpRequest,
        response: HttpResponse,
    ) -> TestCase {
        TestCase {
            version: FORMAT_VERSION,
            name: String::new(),
            kind: kind.to_string(),
            recorded_at,
            latency_ms,
            port,
            request,
            response,
            noise: Vec::new(),
            volatile: Vec::new(),
            chain: Default::default(),
            tags: Vec::new(),
            tls,
        }
    }
}

impl Mock {
    /// A mock of `kind` with its envelope filled in; the caller sets the one protocol field.
    pub fn new(kind: &str, id: u64, dest: &str, connection: u64, started_at: String, duration_ms: f64) -> Mock {
        Mock {
            version: FORMAT_VERSION,
            id,
            kind: kind.to_string(),
            dest: dest.to_string(),
            connection,
            started_at,
            duration_ms,
            ..Mock::default()
        }
    }

    /// Checks that `kind` names the one protocol field that is set.
    pub fn validate(&self) -> Result<(), String> {
        let set: Vec<&str> = [
            ("http", self.http.is_some()),
            ("http2", self.http2.is_some()),
            ("tcp", self.tcp.is_some()),
            ("dns", self.dns.is_some()),
            ("postgres", self.postgres.is_some()),
            ("redis", self.redis.is_some()),
            ("mysql", self.mysql.is_some()),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(k, _)| *k)
        .collect();
        match set.as_slice() {
            [k] if *k == self.kind => Ok(()),
            [k] => Err(format!("kind is {:?} but the mock holds {k} data", self.kind)),
            [] => Err(format!("mock {} has no {} section", self.id, self.kind)),
            _ => Err(format!("mock {} holds more than one protocol section", self.id)),
        }
    }
}

/// `set.yaml`: facts about one recording session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMeta {
    pub version: u32,
    pub created_at: String,
    pub command: Vec<String>,
    /// Ports the app listened on, in the sandbox (or as given with --port).
    #[serde(default)]
    pub app_ports: Vec<u16>,
    /// `sandbox` or `explicit`.
    pub capture: String,
    /// Dependencies declared with --dep NAME=host:port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<String>,
}

/// `doppel.yaml` at the project root: defaults and global noise rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub version: Option<u32>,
    /// Where test sets live (default `doppel`).
    #[serde(default)]
    pub path: Option<String>,
    /// Noise rules applied to every test.
    #[serde(default)]
    pub noise: Vec<NoiseRule>,
    /// Set to false to compare the headers doppel ignores by default (Date, Server-Timing, request ids...).
    #[serde(default)]
    pub default_header_noise: Option<bool>,
    /// .proto files describing the app's gRPC services (as `--proto`).
    #[serde(default)]
    pub proto: Vec<String>,
    /// Directories for the imports of those files (as `--proto-path`).
    #[serde(default)]
    pub proto_path: Vec<String>,
    /// Set to false to stop chaining values from responses into later requests (record and replay).
    #[serde(default)]
    pub chain: Option<bool>,
    /// Set to false to stop flagging volatile-looking values (timestamps, ids, tokens) when recording.
    #[serde(default)]
    pub volatile: Option<bool>,
}
