//! HTTP/2 and gRPC: cleartext h2c with prior knowledge, and h2 inside TLS (negotiated with ALPN). Every
//! stream of a connection is one exchange: a test case on the app's ports, a mock towards a dependency.
//! gRPC calls (unary and streaming) keep their messages decoded (`grpc`), their status in the trailers.
//!
//! Record follows the frames passively (`frame`, `hpack`, `record`); replay serves mocks and sends test
//! requests with the `h2` crate, a complete HTTP/2 implementation (`serve`, `client`).

pub(crate) mod client;
mod format;
pub(crate) mod frame;
pub(crate) mod grpc;
pub(crate) mod hpack;
mod huffman_table;
pub(crate) mod pbwire;
mod record;
mod serve;

use bytes::Bytes;

use super::{Detect, Observer, Protocol, RecordCtx};
use crate::protocols::http::Header;
pub(crate) use format::GrpcMessage;
pub(crate) use record::body_or_messages;

/// The `kind` of HTTP/2 test cases and mocks.
pub const KIND: &str = "http2";

/// A recorded HTTP/2 request in HTTP/1.1 form, for a client that speaks only HTTP/1.1 (`doppel load`): the
/// request line says HTTP/1.1 and `:authority` becomes `Host`; other pseudo-headers go.
pub fn as_http1(mut req: crate::protocols::http::HttpRequest) -> crate::protocols::http::HttpRequest {
    if req.version.starts_with("HTTP/1") {
        return req;
    }
    req.version = "HTTP/1.1".into();
    let has_host = req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("host"));
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in std::mem::take(&mut req.headers) {
        match h.name.as_str() {
            ":authority" if !has_host => headers.insert(0, Header { name: "Host".into(), value: h.value }),
            n if n.starts_with(':') => {}
            _ => headers.push(h),
        }
    }
    req.headers = headers;
    req
}

pub(crate) struct Http2;

impl Protocol for Http2 {
    fn name(&self) -> &'static str {
        KIND
    }

    fn detect_client(&self, first: &[u8], _port: u16) -> Detect {
        let n = first.len().min(frame::PREFACE.len());
        if first[..n] != frame::PREFACE[..n] {
            Detect::No
        } else if n == frame::PREFACE.len() {
            Detect::Yes
        } else {
            Detect::NeedMore
        }
    }

    /// An HTTP/2 server may send its SETTINGS before the client's preface arrives (grpcio's does): wait for
    /// the client's first bytes then, instead of giving up on the connection.
    fn detect_server(&self, first: &[u8], _port: u16) -> Detect {
        let settings_header = [None, None, None, Some(frame::SETTINGS), Some(0), Some(0), Some(0), Some(0), Some(0)];
        let plausible = first.iter().zip(settings_header).all(|(b, want)| want.is_none_or(|w| *b == w));
        if plausible { Detect::NeedMore } else { Detect::No }
    }

    fn recorded_write(&self, mock: &super::Mock) -> Option<String> {
        mock.http2.as_ref().and_then(crate::protocols::http::recorded_write)
    }

    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer> {
        Box::new(record::H2Observer::new(ctx))
    }

    fn mock_server(
        &self,
        _pool: &std::sync::Arc<crate::protocols::MockPool>,
    ) -> std::sync::Arc<dyn crate::protocols::MockServer> {
        crate::protocols::stateless(serve::serve)
    }

    fn alpn(&self) -> &'static [&'static [u8]] {
        &[b"h2"]
    }
}

/// The observer for a connection that switched from HTTP/1.1 with `Upgrade: h2c`: the upgrading request is
/// stream 1 (RFC 7540 3.2), and the client's preface and frames follow.
pub fn upgraded_observer(
    ctx: RecordCtx,
    request: super::http::parse::RequestHead,
    body: &[u8],
    started: std::time::Instant,
) -> Box<dyn Observer> {
    let mut headers = vec![
        Header::new(":method", request.method),
        Header::new(":path", request.target),
        Header::new(":scheme", "http"),
    ];
    for h in request.headers {
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "host" => headers.insert(3, Header::new(":authority", h.value)),
            // Hop-by-hop headers of the upgrade itself; HTTP/2 has no place for them.
            "connection" | "upgrade" | "http2-settings" | "keep-alive" | "transfer-encoding" => {}
            _ => headers.push(Header { name, value: h.value }),
        }
    }
    Box::new(record::H2Observer::upgraded(ctx, headers, body, started))
}

/// Headers and trailers of the `h2` crate as stored (lower-case names, in the order the map gives).
fn from_header_map(map: &http::HeaderMap) -> Vec<Header> {
    map.iter().map(|(n, v)| Header::new(n.as_str(), v.as_bytes())).collect()
}

/// Stored headers into a map for the `h2` crate. Pseudo-headers are carried by the request or response
/// itself, and headers HTTP/2 forbids (connection-specific ones) are left out.
fn to_header_map(headers: &[Header]) -> http::HeaderMap {
    let mut map = http::HeaderMap::with_capacity(headers.len());
    for h in headers {
        if h.name.starts_with(':') {
            continue;
        }
        let lower = h.name.to_ascii_lowercase();
        if matches!(lower.as_str(), "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade")
        {
            continue;
        }
        if let (Ok(n), Ok(v)) =
            (http::HeaderName::from_bytes(lower.as_bytes()), http::HeaderValue::from_bytes(&h.value))
        {
            map.append(n, v);
        }
    }
    map
}

/// Reads a whole body and its trailers from an `h2` stream, giving flow-control credit back as it goes.
async fn read_body(recv: &mut h2::RecvStream, limit: usize) -> crate::error::Result<(Vec<u8>, Vec<Header>)> {
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk: Bytes = chunk.map_err(|e| crate::error::Error::app(format!("reading the body failed: {e}")))?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        if body.len() + chunk.len() > limit {
            return Err(crate::error::Error::app(format!("body larger than {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let trailers =
        recv.trailers().await.map_err(|e| crate::error::Error::app(format!("reading the trailers failed: {e}")))?;
    Ok((body, trailers.as_ref().map(from_header_map).unwrap_or_default()))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod detection_tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(Http2.detect_client(frame::PREFACE, 80), Detect::Yes);
        assert_eq!(Http2.detect_client(b"PRI * HT", 80), Detect::NeedMore);
        assert_eq!(Http2.detect_client(b"GET / HTTP/1.1\r\n", 80), Detect::No);
        // A server's SETTINGS before the client spoke: undecided until the client's preface arrives.
        assert_eq!(Http2.detect_server(b"\0\0\x18\x04\0\0\0\0\0\0\x04", 80), Detect::NeedMore);
        assert_eq!(Http2.detect_server(b"\x0a\0\0\0\x0a5.5.5", 3306), Detect::No);
    }
}
