//! Sends a recorded request to the app exactly as recorded (no added headers, same framing) and reads the
//! response. Used by `doppel test` against the sandboxed app and by `--target` replays, by `doppel diff`,
//! and by `doppel load`, which encodes each request once and reads responses on keep-alive connections.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::parse::{Event, Parser, ResponseHead, Side};
use super::wire;
use crate::error::{Error, Result};
use crate::protocols::http::{Header, HttpRequest};
use crate::store::{self, SpillBuffer};

pub struct Response {
    pub head: ResponseHead,
    pub body: SpillBuffer,
    pub trailers: Vec<Header>,
    /// From the first byte sent to the last byte received.
    pub elapsed: Duration,
}

/// Sends `req` (its body read from `dir` when stored as a file) and reads one response.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    req: &HttpRequest,
    dir: &std::path::Path,
    body_sink: SpillBuffer,
    timeout: Duration,
) -> Result<Response> {
    let started = Instant::now();
    match tokio::time::timeout(timeout, exchange_inner(conn, req, dir, body_sink, started)).await {
        Ok(r) => r,
        Err(_) => Err(Error::app(format!("no complete response within {:.1}s", timeout.as_secs_f64()))),
    }
}

async fn exchange_inner<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    req: &HttpRequest,
    dir: &std::path::Path,
    mut body: SpillBuffer,
    started: Instant,
) -> Result<Response> {
    let mut pieces = store::body_pieces(dir, &req.body)?;
    let send = async {
        conn.write_all(&wire::request_head(req)).await?;
        wire::write_body(conn, wire::is_chunked(&req.headers), &mut pieces, &req.trailers).await?;
        conn.flush().await
    };
    send.await.map_err(|e| Error::app(format!("sending the request failed: {e}")))?;
    let mut buf = vec![0u8; 64 * 1024];
    let (head, trailers) = read_response(conn, &req.method, &mut buf, |piece| {
        body.push(piece).map_err(|e| Error::app(format!("cannot buffer the response body: {e}")))
    })
    .await?;
    Ok(Response { head, body, trailers, elapsed: started.elapsed() })
}

/// The exact bytes `exchange` sends for `req` (head, framed body, trailers) in one buffer, for senders that
/// repeat a request many times (`doppel load`). Bodies stored as files are read whole.
pub async fn encode_request(req: &HttpRequest, dir: &std::path::Path) -> Result<Vec<u8>> {
    let mut out = wire::request_head(req);
    let mut pieces = store::body_pieces(dir, &req.body)?;
    wire::write_body(&mut out, wire::is_chunked(&req.headers), &mut pieces, &req.trailers)
        .await
        .map_err(|e| Error::app(format!("cannot read the request body: {e}")))?;
    Ok(out)
}

/// Reads one response to a request with `method`, handing body pieces to `on_body` as they arrive; returns
/// the head and the trailers. `buf` is scratch space for reads (callers on a hot path reuse it). Bytes after
/// the end of the response are not kept: the caller sent one request and waits for its answer.
pub async fn read_response<S: AsyncRead + Unpin>(
    conn: &mut S,
    method: &str,
    buf: &mut [u8],
    mut on_body: impl FnMut(&[u8]) -> Result<()>,
) -> Result<(ResponseHead, Vec<Header>)> {
    let mut parser = Parser::new(Side::Response);
    parser.expect_response_to(method);
    let mut events = Vec::new();
    let mut head = None;
    let mut trailers = Vec::new();
    loop {
        let n = conn.read(buf).await.map_err(|e| Error::app(format!("reading the response failed: {e}")))?;
        if n == 0 {
            parser.finish(&mut events).map_err(|_| {
                Error::app(if head.is_none() {
                    "the app closed the connection without answering"
                } else {
                    "the app closed the connection in the middle of the response"
                })
            })?;
        } else {
            parser
                .feed(&buf[..n], &mut events)
                .map_err(|e| Error::app(format!("the app's response is not valid HTTP: {e}")))?;
        }
        for ev in events.drain(..) {
            match ev {
                Event::Response(h) => head = Some(h),
                Event::Body(b) => on_body(&b)?,
                Event::Trailers(t) => trailers = t,
                Event::End | Event::Upgrade => {
                    let head = head.take().ok_or_else(|| Error::app("response ended before its head"))?;
                    return Ok((head, trailers));
                }
                Event::Request(_) => {}
            }
        }
        if n == 0 {
            return Err(Error::app("the app closed the connection without answering"));
        }
    }
}
