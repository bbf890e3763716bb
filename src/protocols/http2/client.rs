//! Sends a recorded HTTP/2 request (gRPC calls included) to the app with the `h2` crate and reads the whole
//! response; compares a gRPC response message by message. Used by `doppel test`.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{from_header_map, grpc, read_body, to_header_map};
use crate::diff::{self, Actual, Comparison, Expected, Noise};
use crate::error::{Error, Result};
use crate::protocols::http::{Header, HeaderList, HttpRequest, HttpResponse};
use crate::store::{self};

/// Responses larger than this are not buffered for comparison.
const RESPONSE_LIMIT: usize = 256 << 20;

pub struct Answer {
    pub status: u16,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    pub trailers: Vec<Header>,
}

/// Opens an HTTP/2 connection on `io` (prior knowledge), sends `req` and reads the response.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    req: &HttpRequest,
    dir: &std::path::Path,
    timeout: Duration,
) -> Result<Answer> {
    match tokio::time::timeout(timeout, exchange_inner(io, req, dir)).await {
        Ok(r) => r,
        Err(_) => Err(Error::app(format!("no complete response within {:.1}s", timeout.as_secs_f64()))),
    }
}

async fn exchange_inner<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    req: &HttpRequest,
    dir: &std::path::Path,
) -> Result<Answer> {
    let body = if req.messages.is_empty() { store::body_bytes(dir, &req.body)? } else { grpc::body_of(&req.messages)? };
    let (sender, connection) = h2::client::handshake(io)
        .await
        .map_err(|e| Error::app(format!("the app did not accept an HTTP/2 connection: {e}")))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let scheme = req.headers.get_str(":scheme").unwrap_or_else(|| "http".into());
        let authority = req.headers.get_str(":authority").unwrap_or_else(|| "localhost".into());
        let uri = format!("{scheme}://{authority}{}", req.target);
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::from_bytes(req.method.as_bytes())
            .map_err(|e| Error::app(format!("method {:?}: {e}", req.method)))?;
        *request.uri_mut() = uri.parse().map_err(|e| Error::app(format!("request target {uri:?}: {e}")))?;
        *request.version_mut() = http::Version::HTTP_2;
        *request.headers_mut() = to_header_map(&req.headers);
        let mut sender = sender.ready().await.map_err(|e| Error::app(format!("the app refused a stream: {e}")))?;
        let end_now = body.is_empty() && req.trailers.is_empty();
        let (response, mut stream) = sender
            .send_request(request, end_now)
            .map_err(|e| Error::app(format!("sending the request failed: {e}")))?;
        if !body.is_empty() {
            stream
                .send_data(Bytes::from(body), req.trailers.is_empty())
                .map_err(|e| Error::app(format!("sending the body failed: {e}")))?;
        }
        if !req.trailers.is_empty() {
            stream
                .send_trailers(to_header_map(&req.trailers))
                .map_err(|e| Error::app(format!("sending the trailers failed: {e}")))?;
        }
        let response = response.await.map_err(|e| Error::app(format!("the app did not answer: {e}")))?;
        let (parts, mut recv) = response.into_parts();
        let (body, trailers) = read_body(&mut recv, RESPONSE_LIMIT).await?;
        Ok(Answer { status: parts.status.as_u16(), headers: from_header_map(&parts.headers), body, trailers })
    }
    .await;
    driver.abort();
    result
}

/// Whether a recorded response is a gRPC one, compared message by message.
pub fn is_grpc_response(recorded: &HttpResponse) -> bool {
    !recorded.messages.is_empty() || grpc::is_grpc(&recorded.headers)
}

/// Compares a gRPC response: status, headers and trailers (`grpc-status`, `grpc-message`) as for HTTP, and the
/// messages as a JSON array, field by field (`body $[0].total`). Noise rules over the body apply to it.
pub fn compare_grpc(
    target: &str,
    recorded: &HttpResponse,
    status: u16,
    headers: &[Header],
    body: &[u8],
    trailers: &[Header],
    noise: &Noise,
) -> Comparison {
    let expected = serde_json::to_vec(&grpc::json_view(&recorded.messages)).unwrap_or_default();
    let actual = match grpc::decode_body(target, false, body) {
        Some(messages) => serde_json::to_vec(&grpc::json_view(&messages)).unwrap_or_default(),
        None => body.to_vec(),
    };
    let mut comparison = diff::compare(
        &Expected {
            status: recorded.status,
            headers: &recorded.headers,
            body: &expected,
            trailers: &recorded.trailers,
        },
        &Actual { status, headers, body: &actual, trailers },
        noise,
    );
    // The body is the list of messages: `message $[0].total` reads better than `body $[0].total`.
    for d in &mut comparison.differences {
        if let Some(path) = d.location.strip_prefix("body $") {
            d.location = format!("message ${path}");
        }
    }
    comparison
}
