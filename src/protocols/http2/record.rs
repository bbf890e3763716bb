//! Turns a proxied HTTP/2 connection into exchanges: every stream is one request and its response (a test
//! case on the app's ports, a mock towards a dependency), with trailers. Frames are followed passively in
//! both directions with one HPACK decoder each; anything that does not follow the protocol hands the rest of
//! the connection to the opaque recorder. For a gRPC call towards a dependency that answered while the app
//! was still sending, each response message keeps how many request messages had arrived before it
//! (`after_requests`), so replay can answer a client that waits for each reply before sending on.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Instant;

use super::frame::{self, Frame, FrameReader};
use super::grpc;
use super::hpack::{Decoder, Field};
use crate::protocols::http::{Header, HttpMock, HttpRequest, HttpResponse};
use crate::protocols::{Observer, ParseError, RecordCtx, Role};
use crate::store::{Record, SpillBuffer, TestCase, format_time};

pub const VERSION: &str = "HTTP/2";

const CLIENT: usize = 0;
const SERVER: usize = 1;

/// A header block split over HEADERS (or PUSH_PROMISE) and CONTINUATION frames.
struct OpenBlock {
    stream: u32,
    fragments: Vec<u8>,
    end_stream: bool,
    /// A server push promise: decoded to keep the table in step, then dropped.
    promise: bool,
}

/// One stream: a request and its response as they arrive.
struct Exchange {
    started: Instant,
    request: Vec<Header>,
    request_body: SpillBuffer,
    request_trailers: Vec<Header>,
    response: Option<(Vec<Header>, Instant)>,
    response_body: SpillBuffer,
    response_trailers: Vec<Header>,
    /// gRPC framing followed in each direction, to know how far each side is.
    request_framing: Framing,
    response_framing: Framing,
    /// The client ended its side of the stream.
    request_ended: bool,
    /// For each response message begun: how many request messages were complete then.
    response_after: Vec<u32>,
    /// A response message began before the client ended its side (a bidirectional conversation).
    answered_early: bool,
}

impl Exchange {
    fn new(started: Instant, request: Vec<Header>, request_body: SpillBuffer, response_body: SpillBuffer) -> Exchange {
        Exchange {
            started,
            request,
            request_body,
            request_trailers: Vec::new(),
            response: None,
            response_body,
            response_trailers: Vec::new(),
            request_framing: Framing::default(),
            response_framing: Framing::default(),
            request_ended: false,
            response_after: Vec::new(),
            answered_early: false,
        }
    }

    fn on_data(&mut self, side: usize, data: &[u8]) {
        if side == CLIENT {
            self.request_framing.feed(data);
            return;
        }
        self.response_framing.feed(data);
        let received = self.request_framing.complete;
        while (self.response_after.len() as u32) < self.response_framing.begun {
            self.response_after.push(received);
            self.answered_early |= !self.request_ended;
        }
    }
}

/// Follows gRPC length-prefixed framing (a flag byte, a 4-byte big-endian length, the message) over DATA
/// frames, counting messages begun and complete. Only a count: the messages are decoded from the whole body.
#[derive(Default)]
struct Framing {
    /// Bytes of the current message's 5-byte prefix seen so far (0: between messages).
    prefix: usize,
    length: [u8; 4],
    /// Bytes of the current message still to come once its prefix is complete.
    remaining: usize,
    begun: u32,
    complete: u32,
}

impl Framing {
    fn feed(&mut self, mut data: &[u8]) {
        while let Some((&b, rest)) = data.split_first() {
            if self.prefix < 5 {
                if self.prefix == 0 {
                    self.begun += 1;
                } else {
                    self.length[self.prefix - 1] = b;
                }
                self.prefix += 1;
                data = rest;
                if self.prefix == 5 {
                    self.remaining = u32::from_be_bytes(self.length) as usize;
                    self.end_message_if_done();
                }
                continue;
            }
            let n = self.remaining.min(data.len());
            self.remaining -= n;
            data = &data[n..];
            self.end_message_if_done();
        }
    }

    fn end_message_if_done(&mut self) {
        if self.remaining == 0 {
            self.complete += 1;
            self.prefix = 0;
        }
    }
}

pub struct H2Observer {
    ctx: RecordCtx,
    readers: [FrameReader; 2],
    decoders: [Decoder; 2],
    open_block: [Option<OpenBlock>; 2],
    streams: HashMap<u32, Exchange>,
}

impl H2Observer {
    pub fn new(ctx: RecordCtx) -> H2Observer {
        H2Observer {
            ctx,
            readers: [FrameReader::client(), FrameReader::server()],
            decoders: [Decoder::new(), Decoder::new()],
            open_block: [None, None],
            streams: HashMap::new(),
        }
    }

    /// After an `Upgrade: h2c`: stream 1 is the HTTP/1.1 request that asked for it, already complete.
    pub fn upgraded(ctx: RecordCtx, request: Vec<Header>, body: &[u8], started: Instant) -> H2Observer {
        let mut observer = H2Observer::new(ctx);
        let mut request_body = observer.ctx.sink.spill_buffer();
        if request_body.push(body).is_err() {
            tracing::debug!("cannot keep the body of an h2c upgrade request");
        }
        let mut exchange = Exchange::new(started, request, request_body, observer.ctx.sink.spill_buffer());
        exchange.request_ended = true;
        observer.streams.insert(1, exchange);
        observer
    }

    fn feed(&mut self, side: usize, data: &[u8], at: Instant) -> Result<(), ParseError> {
        let mut reader = std::mem::replace(&mut self.readers[side], FrameReader::server());
        let r = reader.feed(data, |f| self.on_frame(side, f, at));
        self.readers[side] = reader;
        r.map_err(|e| match e {
            frame::FeedError::Framing(why) => ParseError::Malformed(why.to_string()),
            frame::FeedError::Observer(why) => why,
        })
    }

    fn on_frame(&mut self, side: usize, f: Frame<'_>, at: Instant) -> Result<(), ParseError> {
        if let Some(open) = &mut self.open_block[side] {
            // Nothing may come between a header block's frames (RFC 9113 6.10).
            if f.kind != frame::CONTINUATION || f.stream != open.stream {
                return Err("a header block was interrupted by another frame".into());
            }
            open.fragments.extend_from_slice(f.payload);
            if f.has(frame::END_HEADERS)
                && let Some(open) = self.open_block[side].take()
            {
                return self.on_block(side, open.stream, &open.fragments, open.end_stream, open.promise, at);
            }
            return Ok(());
        }
        match f.kind {
            frame::HEADERS | frame::PUSH_PROMISE => {
                let promise = f.kind == frame::PUSH_PROMISE;
                let fragment = f.content()?;
                let end_stream = !promise && f.has(frame::END_STREAM);
                if f.has(frame::END_HEADERS) {
                    self.on_block(side, f.stream, fragment, end_stream, promise, at)
                } else {
                    self.open_block[side] =
                        Some(OpenBlock { stream: f.stream, fragments: fragment.to_vec(), end_stream, promise });
                    Ok(())
                }
            }
            frame::CONTINUATION => Err("CONTINUATION without a header block".into()),
            frame::DATA => {
                let data = f.content()?;
                if let Some(x) = self.streams.get_mut(&f.stream) {
                    let body = if side == CLIENT { &mut x.request_body } else { &mut x.response_body };
                    body.push(data).map_err(|e| ParseError::Malformed(format!("cannot store a body: {e}")))?;
                    x.on_data(side, data);
                    if side == CLIENT && f.has(frame::END_STREAM) {
                        x.request_ended = true;
                    }
                }
                if side == SERVER && f.has(frame::END_STREAM) {
                    self.finish(f.stream, at);
                }
                Ok(())
            }
            frame::RST_STREAM => {
                // A cancelled stream was in flight: it is not an exchange.
                if let Some(x) = self.streams.remove(&f.stream) {
                    x.request_body.discard();
                    x.response_body.discard();
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_block(
        &mut self,
        side: usize,
        stream: u32,
        block: &[u8],
        end_stream: bool,
        promise: bool,
        at: Instant,
    ) -> Result<(), ParseError> {
        let mut fields: Vec<Field> = Vec::new();
        self.decoders[side].decode(block, &mut fields).map_err(|e| e.to_string())?;
        if promise {
            return Ok(());
        }
        let headers: Vec<Header> = fields
            .into_iter()
            .map(|(n, v)| Header { name: String::from_utf8_lossy(&n).into_owned(), value: v })
            .collect();
        if side == CLIENT {
            match self.streams.entry(stream) {
                Entry::Occupied(mut open) => {
                    let x = open.get_mut();
                    x.request_trailers = headers;
                    x.request_ended |= end_stream;
                }
                Entry::Vacant(new) => {
                    let mut x = Exchange::new(at, headers, self.ctx.sink.spill_buffer(), self.ctx.sink.spill_buffer());
                    x.request_ended = end_stream;
                    new.insert(x);
                }
            }
            return Ok(());
        }
        let Some(x) = self.streams.get_mut(&stream) else { return Ok(()) };
        if x.response.is_none() {
            let informational = status_of(&headers).is_some_and(|s| (100..200).contains(&s));
            if !informational {
                x.response = Some((headers, at));
            }
        } else {
            x.response_trailers = headers;
        }
        if end_stream {
            self.finish(stream, at);
        }
        Ok(())
    }

    /// The server ended its side of a stream: the exchange is complete.
    fn finish(&mut self, stream: u32, done_at: Instant) {
        let Some(x) = self.streams.remove(&stream) else { return };
        let Some((response_headers, response_at)) = x.response else {
            x.request_body.discard();
            x.response_body.discard();
            return;
        };
        let (method, target, request_headers) = split_request(x.request);
        let (status, response_headers) = split_response(response_headers);
        let grpc = grpc::is_grpc(&request_headers) || grpc::is_grpc(&response_headers);
        let (request_body, request_messages) = body_or_messages(x.request_body, grpc, &target, true);
        let (response_body, mut response_messages) = body_or_messages(x.response_body, grpc, &target, false);
        // Only where it matters: the dependency answered before the app had sent everything.
        let paced = matches!(self.ctx.role, Role::Egress { .. })
            && x.answered_early
            && x.response_after.len() == response_messages.len();
        if paced {
            for (m, after) in response_messages.iter_mut().zip(&x.response_after) {
                m.after_requests = Some(*after);
            }
        }
        let request = HttpRequest {
            method,
            target,
            version: VERSION.into(),
            headers: request_headers,
            body: request_body,
            messages: request_messages,
            trailers: x.request_trailers,
        };
        let response = HttpResponse {
            status,
            reason: String::new(),
            version: VERSION.into(),
            headers: response_headers,
            body: response_body,
            messages: response_messages,
            trailers: x.response_trailers,
        };
        let started_at = format_time(time::OffsetDateTime::from(self.ctx.wall(x.started)));
        let record = match &self.ctx.role {
            Role::Ingress { port, tls } => Record::Test(Box::new(TestCase::new_http(
                super::KIND,
                started_at,
                RecordCtx::ms(x.started, response_at),
                *port,
                tls.clone(),
                request,
                response,
            ))),
            Role::Egress { .. } => {
                let Some(mut mock) = self.ctx.mock(super::KIND, x.started, done_at) else { return };
                mock.http2 = Some(HttpMock { request, response: Some(response), cut_short: false });
                Record::Mock(Box::new(mock))
            }
        };
        self.ctx.sink.submit(record);
    }
}

/// A gRPC body becomes its decoded messages; anything else (or a gRPC body too large to hold) stays a body.
pub(crate) fn body_or_messages(
    body: SpillBuffer,
    grpc: bool,
    path: &str,
    request: bool,
) -> (Option<crate::store::Body>, Vec<crate::protocols::http2::GrpcMessage>) {
    if grpc
        && let Some(bytes) = body.bytes().filter(|b| b.len() <= grpc::MAX_DECODED_BODY)
        && let Some(messages) = grpc::decode_body(path, request, bytes)
    {
        body.discard();
        return (None, messages);
    }
    (body.into_body(), Vec::new())
}

fn status_of(headers: &[Header]) -> Option<u16> {
    headers.iter().find(|h| h.name == ":status").and_then(|h| std::str::from_utf8(&h.value).ok()?.parse().ok())
}

/// `:method` and `:path` become the request line; other pseudo-headers (`:authority`, `:scheme`) stay.
fn split_request(headers: Vec<Header>) -> (String, String, Vec<Header>) {
    let (mut method, mut target) = (String::new(), String::new());
    let mut rest = Vec::with_capacity(headers.len());
    for h in headers {
        match h.name.as_str() {
            ":method" => method = h.value_str().into_owned(),
            ":path" => target = h.value_str().into_owned(),
            _ => rest.push(h),
        }
    }
    (method, target, rest)
}

fn split_response(headers: Vec<Header>) -> (u16, Vec<Header>) {
    let status = status_of(&headers).unwrap_or(0);
    (status, headers.into_iter().filter(|h| h.name != ":status").collect())
}

impl Observer for H2Observer {
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        self.feed(CLIENT, data, at)
    }

    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        self.feed(SERVER, data, at)
    }

    fn close(&mut self, _at: Instant) {
        for (_, x) in self.streams.drain() {
            x.request_body.discard();
            x.response_body.discard();
        }
    }
}
