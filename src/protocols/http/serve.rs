//! Replay: doppel plays the dependency. Each request of the app is matched against the recorded HTTP mocks
//! (method, path, query parameters, body; JSON bodies compared as values) and answered with the recorded
//! response; repeats are served in recorded order. A request without a match gets `502 Bad Gateway` naming it.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::parse::{Event, Parser, RequestHead, Side};
use super::wire;
use crate::protocols::{Conn, ServeCtx};
use crate::store::{self, HttpRequest};

/// Query parameters as a sorted multiset, so `?b=2&a=1` matches `?a=1&b=2`.
fn query_params(target: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some((_, q)) = target.split_once('?') {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

fn bodies_equal(recorded: &[u8], live: &[u8]) -> bool {
    if recorded == live {
        return true;
    }
    match (serde_json::from_slice::<Value>(recorded), serde_json::from_slice::<Value>(live)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Why a recorded request does not match the live one, or `None` if it matches.
pub fn mismatch(recorded: &HttpRequest, recorded_body: &[u8], live: &RequestHead, live_body: &[u8]) -> Option<String> {
    if recorded.method != live.method {
        return Some("method".into());
    }
    if path_of(&recorded.target) != path_of(&live.target) {
        return Some("path".into());
    }
    if query_params(&recorded.target) != query_params(&live.target) {
        return Some(format!("query (recorded {:?})", recorded.target));
    }
    if !bodies_equal(recorded_body, live_body) {
        return Some(format!("body (recorded {} bytes, got {})", recorded_body.len(), live_body.len()));
    }
    None
}

pub async fn serve(mut conn: Conn, first: Vec<u8>, ctx: ServeCtx) {
    let mut parser = Parser::new(Side::Request);
    let mut events = Vec::new();
    let mut head: Option<RequestHead> = None;
    let mut body = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut input = first;
    loop {
        if input.is_empty() {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => input.extend_from_slice(&buf[..n]),
            }
        }
        if let Err(e) = parser.feed(&input, &mut events) {
            ctx.pool.miss("http", &ctx.dest, format!("unreadable HTTP request: {e}"));
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            return;
        }
        input.clear();
        for ev in events.drain(..) {
            match ev {
                Event::Request(h) => {
                    head = Some(h);
                    body.clear();
                }
                Event::Body(b) => body.extend_from_slice(&b),
                Event::End => {
                    let Some(h) = head.take() else { continue };
                    match answer(&mut conn, &h, &body, &ctx).await {
                        Ok(true) => {}
                        Ok(false) | Err(_) => return,
                    }
                }
                _ => {}
            }
        }
    }
}

/// Writes the answer to one request; `Ok(false)` when the connection must close afterwards.
async fn answer(conn: &mut Conn, live: &RequestHead, body: &[u8], ctx: &ServeCtx) -> std::io::Result<bool> {
    let mut candidates = Vec::new();
    let mut near: Vec<String> = Vec::new();
    for (i, m) in ctx.pool.of_kind("http") {
        let Some(http) = &m.http else { continue };
        // Cheap checks first: only mocks for the same method and path need their body decoded.
        if http.request.method != live.method || path_of(&http.request.target) != path_of(&live.target) {
            continue;
        }
        let recorded_body = store::body_bytes(&ctx.pool.dir, &http.request.body).unwrap_or_default();
        match mismatch(&http.request, &recorded_body, live, body) {
            None => candidates.push(i),
            Some(why) if why != "method" && why != "path" => near.push(why),
            Some(_) => {}
        }
    }
    // Prefer mocks recorded for the same destination.
    let same_dest: Vec<usize> = candidates.iter().copied().filter(|i| ctx.pool.mocks[*i].dest == ctx.dest).collect();
    let pick = if same_dest.is_empty() { ctx.pool.take(&candidates) } else { ctx.pool.take(&same_dest) };
    let Some((i, _reused)) = pick else {
        let mut what = format!("{} {} (to {})", live.method, live.target, ctx.dest);
        if !body.is_empty() {
            what.push_str(&format!(" with a {}-byte body", body.len()));
        }
        if let Some(n) = near.first() {
            what.push_str(&format!("; a recorded request to the same path differs in its {n}"));
        }
        ctx.pool.miss("http", &ctx.dest, what.clone());
        let msg = format!("doppel: no recorded response for {what}\n");
        let resp = format!(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nX-Doppel-Miss: 1\r\n\r\n{msg}",
            msg.len()
        );
        conn.write_all(resp.as_bytes()).await?;
        return Ok(!wire::wants_close(&live.version, &live.headers));
    };
    let Some(http) = &ctx.pool.mocks[i].http else { return Ok(false) };
    // The dependency closed without answering while recording: close the same way.
    let Some(resp) = &http.response else { return Ok(false) };
    if http.cut_short {
        // It closed in the middle of the response: send what arrived, then close.
        conn.write_all(&wire::response_head(resp)).await?;
        if let Ok(pieces) = store::body_pieces(&ctx.pool.dir, &resp.body) {
            let chunked = wire::is_chunked(&resp.headers);
            for piece in pieces.flatten() {
                if chunked {
                    conn.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await?;
                }
                conn.write_all(&piece).await?;
            }
        }
        conn.flush().await?;
        return Ok(false);
    }
    let head_only = live.method.eq_ignore_ascii_case("HEAD");
    let chunked = wire::is_chunked(&resp.headers);
    let inline = resp.body.as_ref().map(|b| b.inline_bytes()).transpose().ok().flatten().flatten();
    match inline {
        // The common case goes out in one write: head and body in one segment.
        Some(body) if !chunked => {
            let mut out = wire::response_head(resp);
            if !head_only {
                out.extend_from_slice(&body);
            }
            conn.write_all(&out).await?;
        }
        _ => {
            conn.write_all(&wire::response_head(resp)).await?;
            if !head_only {
                let mut pieces = match store::body_pieces(&ctx.pool.dir, &resp.body) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("mock {}: {e}", ctx.pool.mocks[i].id);
                        return Ok(false);
                    }
                };
                wire::write_body(conn, chunked, &mut pieces, &resp.trailers).await?;
            }
        }
    }
    conn.flush().await?;
    let head = super::parse::ResponseHead {
        status: resp.status,
        reason: resp.reason.clone(),
        version: resp.version.clone(),
        headers: resp.headers.clone(),
    };
    let close = wire::wants_close(&live.version, &live.headers)
        || wire::wants_close(&resp.version, &resp.headers)
        || wire::delimited_by_close(&live.method, &head);
    Ok(!close)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Header;

    fn head(method: &str, target: &str) -> RequestHead {
        RequestHead { method: method.into(), target: target.into(), version: "HTTP/1.1".into(), headers: vec![] }
    }

    fn rec(method: &str, target: &str) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            target: target.into(),
            version: "HTTP/1.1".into(),
            headers: vec![Header::new("Host", "x")],
            body: None,
            messages: vec![],
            trailers: vec![],
        }
    }

    #[test]
    fn matching_rules() {
        assert_eq!(mismatch(&rec("GET", "/a?x=1&y=2"), b"", &head("GET", "/a?y=2&x=1"), b""), None);
        assert!(mismatch(&rec("GET", "/a?x=1"), b"", &head("GET", "/a?x=2"), b"").unwrap().starts_with("query"));
        assert_eq!(mismatch(&rec("GET", "/a"), b"", &head("POST", "/a"), b"").as_deref(), Some("method"));
        assert_eq!(
            mismatch(&rec("POST", "/a"), br#"{"a":1,"b":2}"#, &head("POST", "/a"), br#"{"b": 2, "a": 1}"#),
            None
        );
        assert!(mismatch(&rec("POST", "/a"), br#"{"a":1}"#, &head("POST", "/a"), br#"{"a":2}"#).is_some());
    }
}
