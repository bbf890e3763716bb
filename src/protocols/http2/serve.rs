//! Replay: doppel plays an HTTP/2 dependency with the `h2` crate. Each stream's request is read whole, matched
//! against the recorded HTTP/2 mocks (method and path; gRPC: the decoded request messages; otherwise query
//! and body as for HTTP/1) and answered with the recorded headers, body or messages in recorded order, and
//! trailers. A request without a match gets a protocol-native error naming it: gRPC status INTERNAL, or
//! `502 Bad Gateway`.
//!
//! Requests are read to their end before answering, so a bidirectional call whose client waits for a reply
//! before sending its next message (ping-pong) is not served.

use bytes::Bytes;

use super::{KIND, from_header_map, grpc, read_body, to_header_map};
use crate::protocols::http::parse::RequestHead;
use crate::protocols::http::serve::mismatch;
use crate::protocols::{Conn, Prefixed, ServeCtx};
use crate::store::{self, Header, HttpResponse};

/// Requests larger than this are refused (mocks are matched in memory).
const REQUEST_LIMIT: usize = 64 << 20;

pub async fn serve(conn: Conn, first: Vec<u8>, ctx: ServeCtx) {
    let io = Prefixed::new(first, conn);
    let mut connection = match h2::server::handshake(io).await {
        Ok(c) => c,
        Err(e) => {
            ctx.pool.miss("http2", &ctx.dest, format!("an HTTP/2 connection to {} failed to start: {e}", ctx.dest));
            return;
        }
    };
    while let Some(next) = connection.accept().await {
        let Ok((request, respond)) = next else { break };
        tokio::spawn(answer(request, respond, ctx.clone()));
    }
}

struct Live {
    head: RequestHead,
    body: Vec<u8>,
    grpc: bool,
}

async fn answer(request: http::Request<h2::RecvStream>, mut respond: h2::server::SendResponse<Bytes>, ctx: ServeCtx) {
    let (parts, mut recv) = request.into_parts();
    let target = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let headers = from_header_map(&parts.headers);
    let head = RequestHead { method: parts.method.as_str().to_string(), target, version: "HTTP/2".into(), headers };
    let body = match read_body(&mut recv, REQUEST_LIMIT).await {
        Ok((body, _trailers)) => body,
        Err(e) => {
            ctx.pool.miss("http2", &ctx.dest, format!("{} {} (to {}): {e}", head.method, head.target, ctx.dest));
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return;
        }
    };
    let grpc = grpc::is_grpc(&head.headers);
    let live = Live { head, body, grpc };
    let (candidates, near) = candidates(&live, &ctx);
    let same_dest: Vec<usize> = candidates.iter().copied().filter(|i| ctx.pool.mocks[*i].dest == ctx.dest).collect();
    let pick = if same_dest.is_empty() { ctx.pool.take(&candidates) } else { ctx.pool.take(&same_dest) };
    let recorded =
        pick.and_then(|(i, _)| ctx.pool.mocks[i].http2.as_ref().and_then(|m| m.response.as_ref()).map(|r| (i, r)));
    let result = match recorded {
        Some((i, response)) => send_recorded(&mut respond, response, &ctx).map_err(|e| (i, e)),
        None => {
            send_miss(&mut respond, &live, near, &ctx);
            Ok(())
        }
    };
    if let Err((i, e)) = result {
        tracing::warn!("mock {}: cannot send the recorded response: {e}", ctx.pool.mocks[i].id);
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
    }
}

/// Mocks that answer this request, in recorded order, and why near ones (same method and path) did not.
fn candidates(live: &Live, ctx: &ServeCtx) -> (Vec<usize>, Vec<String>) {
    let mut found = Vec::new();
    let mut near = Vec::new();
    let mut live_messages: Option<Option<serde_json::Value>> = None;
    for (i, m) in ctx.pool.of_kind(KIND) {
        let Some(h2) = &m.http2 else { continue };
        let recorded = &h2.request;
        if recorded.method != live.head.method || path_of(&recorded.target) != path_of(&live.head.target) {
            continue;
        }
        if live.grpc || !recorded.messages.is_empty() {
            // Bytes first (the usual case); decoded JSON when the encodings differ but the messages agree.
            let recorded_body = grpc::body_of(&recorded.messages).unwrap_or_default();
            if recorded_body == live.body {
                found.push(i);
                continue;
            }
            let live_json = live_messages.get_or_insert_with(|| {
                grpc::decode_body(&live.head.target, true, &live.body).map(|m| grpc::json_view(&m))
            });
            if live_json.as_ref() == Some(&grpc::json_view(&recorded.messages)) {
                found.push(i);
            } else {
                near.push(format!(
                    "messages (recorded {})",
                    crate::diff::render_json(&grpc::json_view(&recorded.messages))
                ));
            }
            continue;
        }
        let recorded_body = store::body_bytes(&ctx.pool.dir, &recorded.body).unwrap_or_default();
        match mismatch(recorded, &recorded_body, &live.head, &live.body) {
            None => found.push(i),
            Some(why) => near.push(why),
        }
    }
    (found, near)
}

fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

fn send_recorded(
    respond: &mut h2::server::SendResponse<Bytes>,
    recorded: &HttpResponse,
    ctx: &ServeCtx,
) -> Result<(), String> {
    let body = if recorded.messages.is_empty() {
        store::body_bytes(&ctx.pool.dir, &recorded.body).map_err(|e| e.to_string())?
    } else {
        grpc::body_of(&recorded.messages)?
    };
    let mut response = http::Response::new(());
    *response.status_mut() = http::StatusCode::from_u16(recorded.status).map_err(|e| e.to_string())?;
    *response.headers_mut() = to_header_map(&recorded.headers);
    send(respond, response, body, &recorded.trailers)
}

fn send(
    respond: &mut h2::server::SendResponse<Bytes>,
    response: http::Response<()>,
    body: Vec<u8>,
    trailers: &[Header],
) -> Result<(), String> {
    let end_now = body.is_empty() && trailers.is_empty();
    let mut stream = respond.send_response(response, end_now).map_err(|e| e.to_string())?;
    if !body.is_empty() {
        stream.send_data(Bytes::from(body), trailers.is_empty()).map_err(|e| e.to_string())?;
    }
    if !trailers.is_empty() {
        stream.send_trailers(to_header_map(trailers)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn send_miss(respond: &mut h2::server::SendResponse<Bytes>, live: &Live, near: Vec<String>, ctx: &ServeCtx) {
    let mut what = format!("{} {} (to {})", live.head.method, live.head.target, ctx.dest);
    if live.grpc {
        if let Some(messages) = grpc::decode_body(&live.head.target, true, &live.body) {
            what.push_str(&format!(" with messages {}", crate::diff::render_json(&grpc::json_view(&messages))));
        }
    } else if !live.body.is_empty() {
        what.push_str(&format!(" with a {}-byte body", live.body.len()));
    }
    if let Some(n) = near.first() {
        what.push_str(&format!("; a recorded call to the same path differs in its {n}"));
    }
    ctx.pool.miss("http2", &ctx.dest, what.clone());
    let message = format!("doppel: no recorded response for {what}");
    let mut response = http::Response::new(());
    if !live.grpc {
        *response.status_mut() = http::StatusCode::BAD_GATEWAY;
    }
    let headers = response.headers_mut();
    headers.insert("x-doppel-miss", http::HeaderValue::from_static("1"));
    let result = if live.grpc {
        // Trailers-only response (gRPC over HTTP/2 spec): status and message in the only header block.
        headers.insert("content-type", http::HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", http::HeaderValue::from_static("13"));
        if let Ok(v) = http::HeaderValue::from_str(&percent_encode(&message)) {
            headers.insert("grpc-message", v);
        }
        send(respond, response, Vec::new(), &[])
    } else {
        headers.insert("content-type", http::HeaderValue::from_static("text/plain; charset=utf-8"));
        send(respond, response, format!("{message}\n").into_bytes(), &[])
    };
    if let Err(e) = result {
        tracing::debug!("cannot answer a missed request: {e}");
    }
}

/// `grpc-message` is percent-encoded UTF-8 (gRPC over HTTP/2 spec).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
