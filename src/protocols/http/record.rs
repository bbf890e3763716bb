//! Turns a proxied HTTP/1 connection into exchanges: test cases on the app's ports, mocks towards
//! dependencies. Bodies go through spill buffers, so large ones are streamed to disk.

use std::collections::VecDeque;
use std::time::Instant;

use super::parse::{Event, Parser, RequestHead, ResponseHead, Side};
use crate::protocols::http::{Header, HttpMock, HttpRequest, HttpResponse};
use crate::protocols::{Observer, ParseError, RecordCtx, Role};
use crate::store::{Record, SpillBuffer, TestCase};

struct Pending {
    head: RequestHead,
    body: SpillBuffer,
    trailers: Vec<Header>,
    started: Instant,
    complete: bool,
    response: Option<(ResponseHead, Instant)>,
    response_body: Option<SpillBuffer>,
    response_trailers: Vec<Header>,
}

pub struct HttpObserver {
    ctx: RecordCtx,
    requests: Parser,
    responses: Parser,
    pending: VecDeque<Pending>,
    events: Vec<Event>,
    /// After `Upgrade: h2c` was accepted (101), the HTTP/2 observer that follows the rest of the connection.
    upgraded: Option<Box<dyn Observer>>,
    /// The server closed its side first (an empty piece from the server).
    server_closed: bool,
}

impl HttpObserver {
    pub fn new(ctx: RecordCtx) -> HttpObserver {
        HttpObserver {
            ctx,
            requests: Parser::new(Side::Request),
            responses: Parser::new(Side::Response),
            pending: VecDeque::new(),
            events: Vec::new(),
            upgraded: None,
            server_closed: false,
        }
    }

    fn on_request_events(&mut self, at: Instant) -> Result<(), ParseError> {
        for ev in std::mem::take(&mut self.events) {
            match ev {
                Event::Request(head) => {
                    self.responses.expect_response_to(&head.method);
                    self.pending.push_back(Pending {
                        head,
                        body: self.ctx.sink.spill_buffer(),
                        trailers: Vec::new(),
                        started: at,
                        complete: false,
                        response: None,
                        response_body: None,
                        response_trailers: Vec::new(),
                    });
                }
                Event::Body(b) => {
                    let p = self.pending.back_mut().ok_or("request body without a request")?;
                    if let Err(e) = p.body.push(&b) {
                        let why = format!("cannot store a request body of {} {}: {e}", p.head.method, p.head.target);
                        self.ctx.sink.report_error(why.clone());
                        return Err(ParseError::Unsupported(why));
                    }
                }
                Event::Trailers(t) => {
                    if let Some(p) = self.pending.back_mut() {
                        p.trailers = t;
                    }
                }
                Event::End => {
                    if let Some(p) = self.pending.back_mut() {
                        p.complete = true;
                        if matches!(self.ctx.role, Role::Ingress { .. }) {
                            // Before the app's calls to its dependencies are written: see `RecordSink::learn`.
                            let (head, body) = (&p.head, &p.body);
                            self.ctx.sink.learn(|| {
                                let body = body.bytes().and_then(crate::store::Body::from_bytes);
                                serde_json::json!({"request": {"target": head.target, "headers": head.headers, "body": body}})
                            });
                        }
                    }
                }
                Event::Upgrade | Event::Response(_) => {}
            }
        }
        Ok(())
    }

    fn on_response_events(&mut self, at: Instant) -> Result<(), ParseError> {
        let events = std::mem::take(&mut self.events);
        let upgrading = events.last() == Some(&Event::Upgrade);
        for ev in events {
            match ev {
                Event::Response(head) => {
                    let body = self.ctx.sink.spill_buffer();
                    let p = self
                        .pending
                        .iter_mut()
                        .find(|p| p.response.is_none())
                        .ok_or("a response arrived before any request")?;
                    p.response = Some((head, at));
                    p.response_body = Some(body);
                }
                Event::Body(b) => {
                    let p = self.answering().ok_or("response body without a response")?;
                    if let Some(body) = &mut p.response_body
                        && let Err(e) = body.push(&b)
                    {
                        let why = format!("cannot store a response body of {} {}: {e}", p.head.method, p.head.target);
                        self.ctx.sink.report_error(why.clone());
                        return Err(ParseError::Unsupported(why));
                    }
                }
                Event::Trailers(t) => {
                    if let Some(p) = self.answering() {
                        p.response_trailers = t;
                    }
                }
                Event::End => {
                    let done = self.pending.pop_front().ok_or("response end without a request")?;
                    if upgrading && is_h2c_upgrade(&done) {
                        // The request continues as HTTP/2 stream 1: its answer comes in HTTP/2 frames.
                        let body = done.body.bytes().map(|b| b.to_vec()).unwrap_or_default();
                        done.body.discard();
                        let mut h2 = crate::protocols::http2::upgraded_observer(
                            self.ctx.clone(),
                            done.head,
                            &body,
                            done.started,
                        );
                        let rest = self.responses.take_rest();
                        if !rest.is_empty() {
                            h2.server(&rest, at)?;
                        }
                        self.upgraded = Some(h2);
                        return Ok(());
                    }
                    self.emit(done, at);
                }
                Event::Upgrade => {
                    return Err("connection upgraded (101 Switching Protocols or CONNECT): the rest is opaque".into());
                }
                Event::Request(_) => {}
            }
        }
        Ok(())
    }

    /// The exchange whose response is being received: the oldest one.
    fn answering(&mut self) -> Option<&mut Pending> {
        self.pending.front_mut().filter(|p| p.response.is_some())
    }

    fn emit(&self, p: Pending, done_at: Instant) {
        self.emit_as(p, done_at, false);
    }

    /// Emits one exchange; `cut_short` when the server closed the connection before the response ended
    /// (or before answering at all, which only outbound mocks keep).
    fn emit_as(&self, p: Pending, done_at: Instant, cut_short: bool) {
        let unanswered = p.response.is_none();
        let egress = matches!(self.ctx.role, Role::Egress { .. });
        // A test needs a whole response to compare with; a mock may keep a request never (fully) answered.
        if (unanswered && !(egress && p.complete)) || (cut_short && !egress) {
            p.body.discard();
            if let Some(b) = p.response_body {
                b.discard();
            }
            return;
        }
        if !p.complete {
            // The server answered before the request body ended (an early 413, say): keep what was sent.
            tracing::debug!("response before the end of the request body for {} {}", p.head.method, p.head.target);
        }
        let request = HttpRequest {
            method: p.head.method,
            target: p.head.target,
            version: p.head.version,
            headers: p.head.headers,
            body: p.body.into_body(),
            messages: Vec::new(),
            trailers: p.trailers,
        };
        let response = p.response.map(|(head, at)| {
            let response = HttpResponse {
                status: head.status,
                reason: head.reason,
                version: head.version,
                headers: head.headers,
                body: p.response_body.and_then(|b| b.into_body()),
                messages: Vec::new(),
                trailers: p.response_trailers,
            };
            (response, at)
        });
        let started_at = self.ctx.time_of(p.started);
        let record = match (&self.ctx.role, response) {
            (Role::Ingress { port, tls }, Some((response, response_at))) => {
                let latency = RecordCtx::ms(p.started, response_at);
                Record::Test(Box::new(TestCase::new_http(
                    "http",
                    started_at,
                    latency,
                    *port,
                    tls.clone(),
                    request,
                    response,
                )))
            }
            (Role::Ingress { .. }, None) => return,
            (Role::Egress { .. }, response) => {
                let Some(mut mock) = self.ctx.mock("http", p.started, done_at) else { return };
                // Never answered: the dependency closed the connection, which replay does too.
                let cut_short = cut_short || response.is_none();
                mock.http = Some(HttpMock { request, response: response.map(|(r, _)| r), cut_short });
                Record::Mock(Box::new(mock))
            }
        };
        self.ctx.sink.submit(record);
    }
}

/// A request that asked for `Upgrade: h2c` and got `101 Switching Protocols` to it.
fn is_h2c_upgrade(p: &Pending) -> bool {
    let asked =
        p.head.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(b"h2c"));
    let agreed = p.response.as_ref().is_some_and(|(r, _)| {
        r.status == 101
            && r.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(b"h2c"))
    });
    asked && agreed
}

impl Observer for HttpObserver {
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        if let Some(h2) = &mut self.upgraded {
            return h2.client(data, at);
        }
        let mut events = std::mem::take(&mut self.events);
        let r = self.requests.feed(data, &mut events);
        self.events = events;
        self.on_request_events(at)?;
        r
    }

    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        if let Some(h2) = &mut self.upgraded {
            return h2.server(data, at);
        }
        if data.is_empty() && !self.server_closed {
            self.server_closed = true;
        }
        let mut events = std::mem::take(&mut self.events);
        let r = self.responses.feed(data, &mut events);
        self.events = events;
        self.on_response_events(at)?;
        r
    }

    fn close(&mut self, at: Instant) {
        if let Some(h2) = &mut self.upgraded {
            h2.close(at);
            return;
        }
        let mut events = Vec::new();
        if self.responses.finish(&mut events).is_ok() {
            self.events = events;
            let _ = self.on_response_events(at);
        }
        // The server closed first: an outbound exchange it cut short is kept as it happened (replay closes the
        // same way); anything else still pending was in flight when recording stopped, and is dropped.
        let server_closed = self.server_closed;
        for p in std::mem::take(&mut self.pending) {
            if server_closed && p.complete {
                self.emit_as(p, at, true);
                continue;
            }
            p.body.discard();
            if let Some(b) = p.response_body {
                b.discard();
            }
        }
    }
}
