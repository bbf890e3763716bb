//! Replay: doppel plays an HTTP/2 dependency with the `h2` crate. Each stream's request is matched against
//! the recorded HTTP/2 mocks (method and path; gRPC: the decoded request messages; otherwise query and body
//! as for HTTP/1) and answered with the recorded headers, body or messages in recorded order, and trailers.
//! A request without a match gets a protocol-native error naming it: gRPC status INTERNAL, or `502 Bad
//! Gateway`.
//!
//! Requests are read to their end before matching and answering, except gRPC calls to a method with a mock
//! whose response messages say when they were sent (`after_requests`, recorded when the dependency answered
//! while the app was still sending: a bidirectional "ping-pong" client that waits for each reply before
//! sending its next message). Those are read message by message ("paced"): the candidates narrow to the
//! mocks whose first recorded request messages equal the ones received so far (bytes, else decoded JSON),
//! the same destination preferred; as soon as the mock `MockPool::take` would pick has a message due, it is
//! taken, and its headers and every message whose `after_requests` has been reached are sent. The rest
//! follow as request messages arrive, then the trailers when the request ends. A received message that
//! departs from the taken mock is a miss: the stream ends with `grpc-status: 13` trailers naming it. A call
//! that no recorded call starts like is a miss at once. If no mock had to be taken before the request
//! ended (mocks recorded without `after_requests`), the call is matched and answered whole as usual.

use bytes::Bytes;

use super::{KIND, from_header_map, grpc, read_body, to_header_map};
use crate::protocols::http::parse::RequestHead;
use crate::protocols::http::serve::mismatch;
use crate::protocols::http::{Header, HttpResponse};
use crate::protocols::http2::GrpcMessage;
use crate::protocols::{Conn, ServeCtx};
use crate::store::{self};

/// Requests larger than this are refused (mocks are matched in memory).
const REQUEST_LIMIT: usize = 64 << 20;

pub(super) async fn serve(conn: Conn, ctx: ServeCtx) {
    let mut connection = match h2::server::handshake(conn).await {
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
    let grpc = grpc::is_grpc(&head.headers);
    if grpc && let Some(mocks) = paced_mocks(&head, &ctx) {
        let paced = Paced { head, ctx, respond, matching: mocks, received: Vec::new(), playing: None };
        paced.run(recv).await;
        return;
    }
    let body = match read_body(&mut recv, REQUEST_LIMIT).await {
        Ok((body, _trailers)) => body,
        Err(e) => {
            ctx.pool.miss("http2", &ctx.dest, format!("{} {} (to {}): {e}", head.method, head.target, ctx.dest));
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return;
        }
    };
    answer_whole(&Live { head, body, grpc }, &mut respond, &ctx);
}

/// Matches a whole request and answers it.
fn answer_whole(live: &Live, respond: &mut h2::server::SendResponse<Bytes>, ctx: &ServeCtx) {
    let (candidates, near) = candidates(live, ctx);
    let same_dest: Vec<usize> = candidates.iter().copied().filter(|i| ctx.pool.mocks[*i].dest == ctx.dest).collect();
    let pick = if same_dest.is_empty() { ctx.pool.take(&candidates) } else { ctx.pool.take(&same_dest) };
    let recorded = pick.and_then(|(i, _)| response_of(ctx, i).map(|r| (i, r)));
    let result = match recorded {
        Some((i, response)) => send_recorded(respond, response, ctx).map_err(|e| (i, e)),
        None => {
            send_miss(respond, live, near, ctx);
            Ok(())
        }
    };
    if let Err((i, e)) = result {
        tracing::warn!("mock {}: cannot send the recorded response: {e}", ctx.pool.mocks[i].id);
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
    }
}

fn response_of(ctx: &ServeCtx, i: usize) -> Option<&HttpResponse> {
    ctx.pool.mocks[i].http2.as_ref().and_then(|m| m.response.as_ref())
}

fn request_messages(ctx: &ServeCtx, i: usize) -> &[GrpcMessage] {
    ctx.pool.mocks[i].http2.as_ref().map(|m| m.request.messages.as_slice()).unwrap_or_default()
}

/// The mocks of this call's method and path, in recorded order, when one of them is paced (its response
/// messages say after how many request messages they were sent).
fn paced_mocks(head: &RequestHead, ctx: &ServeCtx) -> Option<Vec<usize>> {
    let mocks: Vec<usize> = ctx
        .pool
        .of_kind(KIND)
        .filter(|(_, m)| {
            m.http2
                .as_ref()
                .is_some_and(|h| h.request.method == head.method && path_of(&h.request.target) == path_of(&head.target))
        })
        .map(|(i, _)| i)
        .collect();
    let paced = mocks
        .iter()
        .any(|&i| response_of(ctx, i).is_some_and(|r| r.messages.iter().any(|m| m.after_requests.is_some())));
    paced.then_some(mocks)
}

/// A request message of a paced call.
struct Received {
    compressed: bool,
    bytes: Vec<u8>,
    stored: GrpcMessage,
}

/// How a paced call departed from the mock answering it.
enum Departure {
    /// Request message `n` (0-based) is not the recorded one, or the recording has no such message.
    Message(usize),
    /// The request ended before all the recorded messages came.
    Ended,
    /// The request's bytes stopped following gRPC framing.
    Garbled,
}

/// The mock a paced call is answered from, once taken.
struct Playing {
    mock: usize,
    stream: h2::SendStream<Bytes>,
    /// Request messages checked against it so far.
    checked: usize,
    /// Response messages sent so far.
    sent: usize,
}

/// A gRPC call answered as its request messages arrive (see the module comment).
struct Paced {
    head: RequestHead,
    ctx: ServeCtx,
    respond: h2::server::SendResponse<Bytes>,
    /// Until a mock is taken: the mocks whose first recorded request messages are the ones received.
    matching: Vec<usize>,
    received: Vec<Received>,
    playing: Option<Playing>,
}

impl Paced {
    async fn run(mut self, mut recv: h2::RecvStream) {
        let mut body = Vec::new();
        // Where the first message not yet split off starts; `framed` turns false on bytes that are not
        // gRPC framing (before a mock is taken, the call is then left to the whole-request path).
        let (mut parsed, mut framed) = (0, true);
        let mut checked = usize::MAX;
        loop {
            if framed && checked != self.received.len() {
                checked = self.received.len();
                if !self.step(&body[..parsed]) {
                    return;
                }
            }
            let chunk = match recv.data().await {
                None => break,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => return self.fail(format!("reading the body failed: {e}")),
            };
            let _ = recv.flow_control().release_capacity(chunk.len());
            if body.len() + chunk.len() > REQUEST_LIMIT {
                return self.fail(format!("body larger than {REQUEST_LIMIT} bytes"));
            }
            body.extend_from_slice(&chunk);
            framed = framed && split_new(&self.head.target, &body, &mut parsed, &mut self.received);
            if !framed && let Some(playing) = self.playing.take() {
                return self.depart(playing, Departure::Garbled);
            }
        }
        if let Err(e) = recv.trailers().await {
            return self.fail(format!("reading the trailers failed: {e}"));
        }
        match self.playing.take() {
            None => answer_whole(&Live { head: self.head, body, grpc: true }, &mut self.respond, &self.ctx),
            Some(playing) => self.finish(playing, parsed == body.len()),
        }
    }

    /// After new request messages (or none yet, at the start): narrows the candidates, takes a mock once
    /// one has a message due, checks the messages against it and sends what is due. False when the stream
    /// was ended.
    fn step(&mut self, body: &[u8]) -> bool {
        let k = self.received.len();
        if self.playing.is_none() {
            let (ctx, received) = (&self.ctx, &self.received);
            self.matching.retain(|&i| {
                let recorded = request_messages(ctx, i);
                recorded.len() >= k && recorded.iter().zip(received).all(|(r, l)| same_message(r, l))
            });
            if self.matching.is_empty() {
                // No recorded call starts like this one, so none can match it whole either.
                let live = Live { head: self.head.clone(), body: body.to_vec(), grpc: true };
                let (_, near) = candidates(&live, &self.ctx);
                send_miss(&mut self.respond, &live, near, &self.ctx);
                return false;
            }
            let same_dest: Vec<usize> =
                self.matching.iter().copied().filter(|i| self.ctx.pool.mocks[*i].dest == self.ctx.dest).collect();
            let set = if same_dest.is_empty() { &self.matching } else { &same_dest };
            let due = |i: usize| {
                response_of(&self.ctx, i)
                    .and_then(|r| r.messages.first())
                    .and_then(|m| m.after_requests)
                    .is_some_and(|after| after as usize <= k)
            };
            if !self.ctx.pool.peek(set).is_some_and(due) {
                return true;
            }
            let Some((i, _)) = self.ctx.pool.take(set) else { return true };
            match self.start(i) {
                // The messages so far matched it already.
                Ok(stream) => self.playing = Some(Playing { mock: i, stream, checked: k, sent: 0 }),
                Err(e) => {
                    tracing::warn!("mock {}: cannot send the recorded response: {e}", self.ctx.pool.mocks[i].id);
                    self.respond.send_reset(h2::Reason::INTERNAL_ERROR);
                    return false;
                }
            }
        }
        let Some(mut playing) = self.playing.take() else { return true };
        let recorded = request_messages(&self.ctx, playing.mock);
        let departed =
            (playing.checked..k).find(|&j| recorded.get(j).is_none_or(|r| !same_message(r, &self.received[j])));
        if let Some(j) = departed {
            self.depart(playing, Departure::Message(j));
            return false;
        }
        playing.checked = k;
        let result = self.send_due(&mut playing, k);
        self.playing = Some(playing);
        self.sent_or_reset(result)
    }

    /// The request ended: the rest of the recorded messages and the trailers.
    fn finish(self, mut playing: Playing, whole_messages: bool) {
        if !whole_messages {
            return self.depart(playing, Departure::Garbled);
        }
        if request_messages(&self.ctx, playing.mock).len() != self.received.len() {
            return self.depart(playing, Departure::Ended);
        }
        let result = self.send_due(&mut playing, usize::MAX).and_then(|()| {
            let trailers = response_of(&self.ctx, playing.mock).map(|r| r.trailers.as_slice()).unwrap_or_default();
            if trailers.is_empty() {
                playing.stream.send_data(Bytes::new(), true).map_err(|e| e.to_string())
            } else {
                playing.stream.send_trailers(to_header_map(trailers)).map_err(|e| e.to_string())
            }
        });
        if let Err(e) = result {
            tracing::warn!("mock {}: cannot send the recorded response: {e}", self.ctx.pool.mocks[playing.mock].id);
            playing.stream.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }

    /// Sends the recorded status and headers of mock `i`.
    fn start(&mut self, i: usize) -> Result<h2::SendStream<Bytes>, String> {
        let recorded = response_of(&self.ctx, i).ok_or("the mock has no response")?;
        let mut response = http::Response::new(());
        *response.status_mut() = http::StatusCode::from_u16(recorded.status).map_err(|e| e.to_string())?;
        *response.headers_mut() = to_header_map(&recorded.headers);
        self.respond.send_response(response, false).map_err(|e| e.to_string())
    }

    /// Sends the recorded response messages due once `k` request messages have arrived.
    fn send_due(&self, playing: &mut Playing, k: usize) -> Result<(), String> {
        let messages = response_of(&self.ctx, playing.mock).map(|r| r.messages.as_slice()).unwrap_or_default();
        while let Some(m) = messages.get(playing.sent) {
            let due = k == usize::MAX || m.after_requests.is_some_and(|after| after as usize <= k);
            if !due {
                break;
            }
            let framed = grpc::body_of(std::slice::from_ref(m)).map_err(|e| e.to_string())?;
            playing.stream.send_data(Bytes::from(framed), false).map_err(|e| e.to_string())?;
            playing.sent += 1;
        }
        Ok(())
    }

    fn sent_or_reset(&mut self, result: Result<(), String>) -> bool {
        let Err(e) = result else { return true };
        if let Some(mut playing) = self.playing.take() {
            tracing::warn!("mock {}: cannot send the recorded response: {e}", self.ctx.pool.mocks[playing.mock].id);
            playing.stream.send_reset(h2::Reason::INTERNAL_ERROR);
        }
        false
    }

    /// The call departed from the mock answering it: a miss, and the stream ends with gRPC status INTERNAL
    /// naming it.
    fn depart(&self, mut playing: Playing, how: Departure) {
        let recorded = request_messages(&self.ctx, playing.mock);
        let live: Vec<GrpcMessage> = self.received.iter().map(|r| r.stored.clone()).collect();
        let mut what = format!(
            "{} {} (to {}) with messages {}",
            self.head.method,
            self.head.target,
            self.ctx.dest,
            crate::diff::render_json(&grpc::json_view(&live))
        );
        let id = self.ctx.pool.mocks[playing.mock].id;
        let how = match how {
            Departure::Message(j) => match recorded.get(j) {
                Some(r) => format!(
                    "the recorded call answering it (mock {id}) differs in message {}: recorded {}",
                    j + 1,
                    crate::diff::render_json(&grpc::json_of(r))
                ),
                None => format!("the recorded call answering it (mock {id}) has only {} messages", recorded.len()),
            },
            Departure::Ended => format!("the recorded call answering it (mock {id}) has {} messages", recorded.len()),
            Departure::Garbled => "then bytes that are not a whole gRPC message".to_string(),
        };
        what.push_str(&format!("; {how}"));
        self.ctx.pool.miss("http2", &self.ctx.dest, what.clone());
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        if let Ok(v) = http::HeaderValue::from_str(&percent_encode(&format!("doppel: no recorded response for {what}")))
        {
            trailers.insert("grpc-message", v);
        }
        if let Err(e) = playing.stream.send_trailers(trailers) {
            tracing::debug!("cannot end a departed call: {e}");
        }
    }

    /// The request could not be read: a miss, and the stream is reset.
    fn fail(mut self, why: String) {
        self.ctx.pool.miss(
            "http2",
            &self.ctx.dest,
            format!("{} {} (to {}): {why}", self.head.method, self.head.target, self.ctx.dest),
        );
        match self.playing.take() {
            Some(mut playing) => playing.stream.send_reset(h2::Reason::INTERNAL_ERROR),
            None => self.respond.send_reset(h2::Reason::INTERNAL_ERROR),
        }
    }
}

/// Splits the complete messages after `parsed` off `body`; false when the bytes are not gRPC framing.
fn split_new(path: &str, body: &[u8], parsed: &mut usize, out: &mut Vec<Received>) -> bool {
    loop {
        let Some((prefix, rest)) = body.get(*parsed..).and_then(|b| b.split_first_chunk::<5>()) else { return true };
        if prefix[0] > 1 {
            return false;
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let Some(bytes) = rest.get(..len) else { return true };
        let compressed = prefix[0] == 1;
        out.push(Received {
            compressed,
            bytes: bytes.to_vec(),
            stored: grpc::to_stored(path, true, compressed, bytes),
        });
        *parsed += 5 + len;
    }
}

/// A recorded request message and a received one agree: same bytes, or (encodings differ) the same JSON.
fn same_message(recorded: &GrpcMessage, live: &Received) -> bool {
    let same_bytes =
        recorded.compressed == live.compressed && grpc::message_bytes(recorded).is_ok_and(|b| b == live.bytes);
    same_bytes || grpc::json_of(recorded) == grpc::json_of(&live.stored)
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
        grpc::body_of(&recorded.messages).map_err(|e| e.to_string())?
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
