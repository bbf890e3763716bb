//! Turns a proxied HTTP/1 connection into exchanges: test cases on the app's ports, mocks towards
//! dependencies. Bodies go through spill buffers, so large ones are streamed to disk.

use std::collections::VecDeque;
use std::time::Instant;

use super::parse::{Event, Parser, RequestHead, ResponseHead, Side};
use crate::protocols::{Observer, RecordCtx, Role};
use crate::store::{
    FORMAT_VERSION, Header, HttpMock, HttpRequest, HttpResponse, Mock, Record, SpillBuffer, TestCase, format_time,
};

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
}

impl HttpObserver {
    pub fn new(ctx: RecordCtx) -> HttpObserver {
        HttpObserver {
            ctx,
            requests: Parser::new(Side::Request),
            responses: Parser::new(Side::Response),
            pending: VecDeque::new(),
            events: Vec::new(),
        }
    }

    fn on_request_events(&mut self, at: Instant) -> Result<(), String> {
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
                    p.body.push(&b).map_err(|e| format!("cannot store request body: {e}"))?;
                }
                Event::Trailers(t) => {
                    if let Some(p) = self.pending.back_mut() {
                        p.trailers = t;
                    }
                }
                Event::End => {
                    if let Some(p) = self.pending.back_mut() {
                        p.complete = true;
                    }
                }
                Event::Upgrade | Event::Response(_) => {}
            }
        }
        Ok(())
    }

    fn on_response_events(&mut self, at: Instant) -> Result<(), String> {
        for ev in std::mem::take(&mut self.events) {
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
                    if let Some(body) = &mut p.response_body {
                        body.push(&b).map_err(|e| format!("cannot store response body: {e}"))?;
                    }
                }
                Event::Trailers(t) => {
                    if let Some(p) = self.answering() {
                        p.response_trailers = t;
                    }
                }
                Event::End => {
                    let done = self.pending.pop_front().ok_or("response end without a request")?;
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
        let Some((head, response_at)) = p.response else { return };
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
            trailers: p.trailers,
        };
        let response = HttpResponse {
            status: head.status,
            reason: head.reason,
            version: head.version,
            headers: head.headers,
            body: p.response_body.and_then(|b| b.into_body()),
            trailers: p.response_trailers,
        };
        let started_at = format_time(time::OffsetDateTime::from(self.ctx.wall(p.started)));
        let record = match &self.ctx.role {
            Role::Ingress { port } => Record::Test(Box::new(TestCase {
                version: FORMAT_VERSION,
                name: String::new(),
                kind: "http".into(),
                recorded_at: started_at,
                latency_ms: ms(response_at.saturating_duration_since(p.started)),
                port: *port,
                request,
                response,
                noise: Vec::new(),
                volatile: Vec::new(),
                chain: Default::default(),
                tags: Vec::new(),
            })),
            Role::Egress { dest } => Record::Mock(Box::new(Mock {
                version: FORMAT_VERSION,
                id: self.ctx.sink.next_mock_id(),
                kind: "http".into(),
                dest: dest.clone(),
                connection: self.ctx.connection,
                started_at,
                duration_ms: ms(done_at.saturating_duration_since(p.started)),
                http: Some(HttpMock { request, response }),
                tcp: None,
                ..Mock::default()
            })),
        };
        self.ctx.sink.submit(record);
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

impl Observer for HttpObserver {
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), String> {
        let mut events = std::mem::take(&mut self.events);
        let r = self.requests.feed(data, &mut events);
        self.events = events;
        self.on_request_events(at)?;
        r
    }

    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), String> {
        let mut events = std::mem::take(&mut self.events);
        let r = self.responses.feed(data, &mut events);
        self.events = events;
        self.on_response_events(at)?;
        r
    }

    fn close(&mut self, at: Instant) {
        let mut events = Vec::new();
        if self.responses.finish(&mut events).is_ok() {
            self.events = events;
            let _ = self.on_response_events(at);
        }
        // Whatever is still pending was in flight: dropped, and its spilled bodies removed.
        for p in self.pending.drain(..) {
            p.body.discard();
            if let Some(b) = p.response_body {
                b.discard();
            }
        }
    }
}
