//! On-disk form of HTTP exchanges (HTTP/1.x and HTTP/2, gRPC included): requests and responses with
//! headers in recorded order and case, bodies as `store::Body`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::protocols::http2::GrpcMessage;
use crate::protocols::{TestRequest, TestResponse};
use crate::store::Body;

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

/// The write a recorded HTTP call made (`POST /v1/payments` to a dependency), or `None` for a read.
/// gRPC calls are all POSTs whatever they do, so they are not counted.
pub(crate) fn recorded_write(mock: &HttpMock) -> Option<String> {
    let r = &mock.request;
    let grpc = r.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-type") && h.value_str().to_ascii_lowercase().starts_with("application/grpc")
    });
    let write = matches!(r.method.to_ascii_uppercase().as_str(), "POST" | "PUT" | "PATCH" | "DELETE");
    (write && !grpc).then(|| format!("{} {}", r.method, r.target))
}

impl crate::store::TestCase {
    /// A recorded HTTP or HTTP/2 test (`kind` is `http` or `http2`).
    pub(crate) fn new_http(
        kind: &str,
        recorded_at: String,
        latency_ms: f64,
        port: u16,
        tls: Option<String>,
        request: HttpRequest,
        response: HttpResponse,
    ) -> crate::store::TestCase {
        let (request, response) = if kind == crate::protocols::http2::KIND {
            (TestRequest::http2(request), TestResponse::http2(response))
        } else {
            (TestRequest::http(request), TestResponse::http(response))
        };
        crate::store::TestCase::new(kind, recorded_at, latency_ms, port, tls, request, response)
    }

    /// The request and response of an HTTP or HTTP/2 test; `None` for a test of another protocol.
    pub(crate) fn http(&self) -> Option<(&HttpRequest, &HttpResponse)> {
        match (&self.request, &self.response) {
            (TestRequest::http(q) | TestRequest::http2(q), TestResponse::http(r) | TestResponse::http2(r)) => {
                Some((q, r))
            }
            // The tests of protocols that are not HTTP.
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// The same, to change.
    pub(crate) fn http_mut(&mut self) -> Option<(&mut HttpRequest, &mut HttpResponse)> {
        match (&mut self.request, &mut self.response) {
            (TestRequest::http(q) | TestRequest::http2(q), TestResponse::http(r) | TestResponse::http2(r)) => {
                Some((q, r))
            }
            // The tests of protocols that are not HTTP.
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}
