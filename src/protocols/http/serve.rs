//! Replay: doppel plays the dependency. Each request of the app is matched against the recorded HTTP mocks
//! (method, path, query parameters, body; JSON bodies compared as values) and answered with the recorded
//! response; repeats are served in recorded order. A request without a match gets `502 Bad Gateway` naming it.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::parse::{Event, Parser, RequestHead, Side};
use super::wire;
use crate::noise::shape::Shape;
use crate::protocols::http::HttpRequest;
use crate::protocols::{Conn, ServeCtx};
use crate::store::{self};

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
        return Some(body_difference(recorded_body, live_body));
    }
    None
}

/// What differs between a recorded request body and the one the app sent: JSON field by field
/// (`body $.amount: recorded 20, sent 21`), other bodies by size.
pub(crate) fn body_difference(recorded: &[u8], live: &[u8]) -> String {
    const SHOWN: usize = 5;
    if let (Ok(r), Ok(l)) = (serde_json::from_slice::<Value>(recorded), serde_json::from_slice::<Value>(live)) {
        let (diffs, _) = crate::diff::diff_values(&r, &l, &crate::diff::Noise::none());
        if !diffs.is_empty() {
            let mut parts: Vec<String> = diffs
                .iter()
                .take(SHOWN)
                .map(|d| {
                    let at = d.location.strip_prefix("body ").unwrap_or(&d.location);
                    match (&d.expected, &d.actual) {
                        (Some(e), Some(a)) => format!("{at}: recorded {e}, sent {a}"),
                        (Some(e), None) => format!("{at}: recorded {e}, not sent"),
                        (None, Some(a)) => format!("{at}: not recorded, sent {a}"),
                        (None, None) => format!("{at} differs"),
                    }
                })
                .collect();
            if diffs.len() > SHOWN {
                parts.push(format!("and {} more", diffs.len() - SHOWN));
            }
            return format!("body {}", parts.join("; "));
        }
    }
    format!("body (recorded {} bytes, got {})", recorded.len(), live.len())
}

pub(super) async fn serve(mut conn: Conn, ctx: ServeCtx) {
    let mut parser = Parser::new(Side::Request);
    let mut events = Vec::new();
    let mut head: Option<RequestHead> = None;
    let mut body = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut input = Vec::new();
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

/// How strictly a recorded request is compared with the live one; each is tried only when the stricter
/// ones found nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// As recorded.
    Exact,
    /// With chained values the app produced anew in this replay (ids, tokens) put in place of the recorded
    /// ones: the mock recorded with the old id answers the request with the new one.
    Chained,
    /// Values that looked volatile when recorded (UUIDs, timestamps, tokens) match any value of their shape:
    /// an id the app generates and sends before any response shows it.
    Volatile,
}

/// Mocks that answer `live`, at one strictness, and why same-path mocks did not.
fn candidates(live: &RequestHead, body: &[u8], ctx: &ServeCtx, strictness: Strictness) -> (Vec<usize>, Vec<String>) {
    let rewrites = if strictness == Strictness::Chained { ctx.pool.rewrites() } else { Vec::new() };
    let mut found = Vec::new();
    let mut near: Vec<String> = Vec::new();
    for (i, m) in ctx.pool.of_kind("http") {
        let Some(http) = &m.http else { continue };
        if http.request.method != live.method {
            continue;
        }
        let recorded_body = store::body_bytes(&ctx.pool.dir, &http.request.body).unwrap_or_default();
        let why = match strictness {
            // Cheap checks first: only mocks for the same path need their body decoded.
            Strictness::Exact if path_of(&http.request.target) != path_of(&live.target) => continue,
            Strictness::Exact => mismatch(&http.request, &recorded_body, live, body),
            Strictness::Chained => {
                let mut request = http.request.clone();
                request.target = rewrite(&request.target, &rewrites);
                let recorded_body = match std::str::from_utf8(&recorded_body) {
                    Ok(text) => rewrite(text, &rewrites).into_bytes(),
                    Err(_) => recorded_body,
                };
                mismatch(&request, &recorded_body, live, body)
            }
            Strictness::Volatile => {
                let around = ctx.pool.recorded_at_s(i).unwrap_or(0.0);
                loose_mismatch(&http.request, &recorded_body, live, body, around)
            }
        };
        match why {
            None => found.push(i),
            Some(why) if why != "method" && why != "path" => near.push(why),
            Some(_) => {}
        }
    }
    (found, near)
}

/// Replaces recorded values with live ones where they stand as whole tokens (never inside a longer word
/// or number).
fn rewrite(text: &str, rewrites: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (recorded, live) in rewrites {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(recorded.as_str()) {
            let before = rest[..at].chars().next_back();
            let after = rest[at + recorded.len()..].chars().next();
            let bounded = |c: Option<char>| c.is_none_or(|c| !c.is_ascii_alphanumeric());
            result.push_str(&rest[..at]);
            result.push_str(if bounded(before) && bounded(after) { live } else { recorded });
            rest = &rest[at + recorded.len()..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// Whether a live value may stand for a recorded one that looked volatile.
fn loosely_equal(recorded: &str, live: &str, around: f64) -> bool {
    recorded == live || Shape::of(recorded, around).is_some_and(|s| s.matches(live))
}

fn loose_json(recorded: &Value, live: &Value, around: f64) -> bool {
    match (recorded, live) {
        (Value::Object(r), Value::Object(l)) => {
            r.len() == l.len() && r.iter().all(|(k, rv)| l.get(k).is_some_and(|lv| loose_json(rv, lv, around)))
        }
        (Value::Array(r), Value::Array(l)) => {
            r.len() == l.len() && r.iter().zip(l).all(|(rv, lv)| loose_json(rv, lv, around))
        }
        (Value::String(r), Value::String(l)) => loosely_equal(r, l, around),
        (Value::Number(r), lv) if r.as_f64().is_some() => {
            recorded == live || Shape::of_number(r, around).is_some_and(|s| s.matches_json(lv))
        }
        _ => recorded == live,
    }
}

/// [`mismatch`], with volatile-looking recorded values matching any live value of their shape.
fn loose_mismatch(
    recorded: &HttpRequest,
    recorded_body: &[u8],
    live: &RequestHead,
    live_body: &[u8],
    around: f64,
) -> Option<String> {
    if recorded.method != live.method {
        return Some("method".into());
    }
    if !loosely_equal(path_of(&recorded.target), path_of(&live.target), around) {
        return Some("path".into());
    }
    let (rq, lq) = (query_params(&recorded.target), query_params(&live.target));
    let same_query = rq.len() == lq.len()
        && rq.iter().all(|(k, rv)| {
            lq.get(k)
                .is_some_and(|lv| rv.len() == lv.len() && rv.iter().zip(lv).all(|(r, l)| loosely_equal(r, l, around)))
        });
    if !same_query {
        return Some(format!("query (recorded {:?})", recorded.target));
    }
    let same_body = match (serde_json::from_slice::<Value>(recorded_body), serde_json::from_slice::<Value>(live_body)) {
        (Ok(r), Ok(l)) => loose_json(&r, &l, around),
        _ => match (std::str::from_utf8(recorded_body), std::str::from_utf8(live_body)) {
            (Ok(r), Ok(l)) => loosely_equal(r, l, around),
            _ => recorded_body == live_body,
        },
    };
    if !same_body {
        return Some(body_difference(recorded_body, live_body));
    }
    None
}

/// Writes the answer to one request; `Ok(false)` when the connection must close afterwards.
async fn answer(conn: &mut Conn, live: &RequestHead, body: &[u8], ctx: &ServeCtx) -> std::io::Result<bool> {
    let (mut candidates, near) = candidates(live, body, ctx, Strictness::Exact);
    let mut found_at = Strictness::Exact;
    for strictness in [Strictness::Chained, Strictness::Volatile] {
        if !candidates.is_empty() {
            break;
        }
        if strictness == Strictness::Chained && ctx.pool.rewrites().is_empty() {
            continue;
        }
        candidates = self::candidates(live, body, ctx, strictness).0;
        found_at = strictness;
    }
    // Prefer mocks recorded for the same destination.
    let same_dest: Vec<usize> = candidates.iter().copied().filter(|i| ctx.pool.mocks[*i].dest == ctx.dest).collect();
    let pick = if same_dest.is_empty() { ctx.pool.take(&candidates) } else { ctx.pool.take(&same_dest) };
    let Some((i, _reused)) = pick else {
        let mut what = format!("{} {} (to {})", live.method, live.target, ctx.dest);
        if !body.is_empty() {
            what.push_str(&format!(" with a {}-byte body", body.len()));
        }
        // Requests recorded for other destinations are not compared with this one.
        if let Some(n) = near.first().filter(|_| ctx.pool.targets(&ctx.dest)) {
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
    if found_at == Strictness::Volatile {
        let recorded_body = store::body_bytes(&ctx.pool.dir, &http.request.body).unwrap_or_default();
        let what = match mismatch(&http.request, &recorded_body, live, body) {
            Some(why) => format!("; it differs in its {why}"),
            None => String::new(),
        };
        ctx.pool.tolerate(format!(
            "matched {} {} (to {}) with mock {i} through values of the recorded ones' shape (ids, times, tokens, hashes){what}",
            live.method, live.target, ctx.dest
        ));
    }
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
    use crate::protocols::http::Header;

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

    #[test]
    fn chained_values_are_rewritten_as_whole_tokens_only() {
        let r = vec![("abc12345".to_string(), "xyz98765".to_string())];
        assert_eq!(rewrite("/u/abc12345?x=abc12345", &r), "/u/xyz98765?x=xyz98765");
        assert_eq!(rewrite("/u/abc123456", &r), "/u/abc123456");
        assert_eq!(rewrite(r#"{"id":"abc12345"}"#, &r), r#"{"id":"xyz98765"}"#);
    }

    #[test]
    fn volatile_values_match_any_value_of_their_shape() {
        let around = 1_795_730_000.0;
        let uuid = "5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27";
        let other = "00000000-1111-4222-8333-444444444444";
        let recorded = rec("POST", &format!("/quota/{uuid}"));
        let body = format!(r#"{{"user":"{uuid}","at":"2026-11-27T10:00:00Z","n":1}}"#);
        let live_body = format!(r#"{{"user":"{other}","at":"2026-11-28T11:00:00Z","n":1}}"#);
        let live = head("POST", &format!("/quota/{other}"));
        assert_eq!(loose_mismatch(&recorded, body.as_bytes(), &live, live_body.as_bytes(), around), None);
        let changed = live_body.replace("\"n\":1", "\"n\":2");
        assert!(loose_mismatch(&recorded, body.as_bytes(), &live, changed.as_bytes(), around).is_some());
        assert!(
            loose_mismatch(&recorded, body.as_bytes(), &head("POST", "/quota/nope"), live_body.as_bytes(), around)
                .is_some()
        );
    }
}
