//! Writing HTTP/1 messages back to bytes, framed the way they were recorded.

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::parse::ResponseHead;
use crate::protocols::http::{Header, HttpRequest, HttpResponse};

pub fn is_chunked(headers: &[Header]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(&h.value).to_ascii_lowercase().contains("chunked")
    })
}

fn push_headers(out: &mut Vec<u8>, headers: &[Header]) {
    for h in headers {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
}

pub fn request_head(req: &HttpRequest) -> Vec<u8> {
    let mut out = format!("{} {} {}\r\n", req.method, req.target, req.version).into_bytes();
    push_headers(&mut out, &req.headers);
    out.extend_from_slice(b"\r\n");
    out
}

pub fn response_head(resp: &HttpResponse) -> Vec<u8> {
    let mut out = format!("{} {} {}\r\n", resp.version, resp.status, resp.reason).into_bytes();
    push_headers(&mut out, &resp.headers);
    out.extend_from_slice(b"\r\n");
    out
}

/// Writes a body with the framing its headers declare: chunked (one chunk per piece, then trailers) or raw.
pub async fn write_body<W: AsyncWrite + Unpin>(
    w: &mut W,
    chunked: bool,
    pieces: &mut (dyn Iterator<Item = std::io::Result<Vec<u8>>> + Send),
    trailers: &[Header],
) -> std::io::Result<()> {
    for piece in pieces {
        let piece = piece?;
        if piece.is_empty() {
            continue;
        }
        if chunked {
            w.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await?;
            w.write_all(&piece).await?;
            w.write_all(b"\r\n").await?;
        } else {
            w.write_all(&piece).await?;
        }
    }
    if chunked {
        let mut end = b"0\r\n".to_vec();
        push_headers(&mut end, trailers);
        end.extend_from_slice(b"\r\n");
        w.write_all(&end).await?;
    }
    Ok(())
}

/// Whether the connection should close after this exchange.
pub fn wants_close(version: &str, headers: &[Header]) -> bool {
    let conn = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| String::from_utf8_lossy(&h.value).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",");
    if conn.contains("close") {
        return true;
    }
    version == "HTTP/1.0" && !conn.contains("keep-alive")
}

/// Whether a response without Content-Length or chunking is delimited by closing the connection.
pub fn delimited_by_close(method: &str, head: &ResponseHead) -> bool {
    let has_len = head.headers.iter().any(|h| h.name.eq_ignore_ascii_case("content-length"));
    !has_len
        && !is_chunked(&head.headers)
        && !method.eq_ignore_ascii_case("HEAD")
        && head.status != 204
        && head.status != 304
}
