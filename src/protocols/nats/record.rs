//! Turns a proxied NATS connection into mocks. The server applies a connection's operations in order, so a
//! PONG answers everything the client sent before its PING: a publish without reply-to is complete at the
//! next PONG (the copies delivered to the connection's own subscriptions came before it). A publish with a
//! reply-to collects the messages delivered to that subject (or to the inbox subscription it names) until
//! its answer is in: the first reply, or for a JetStream pull (`$JS.API.CONSUMER.MSG.NEXT.*`) its batch or
//! a status message; a later publish with the same reply-to, the inbox's UNSUB or the connection's end
//! also completes it. Messages no publish of the connection caused belong to their subscription.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde_json::Value;

use super::format::{NatsDelivery, NatsMock, NatsOp, split_headers};
use super::subject_matches;
use super::wire::{Decoder, Message, Op, Side};
use crate::protocols::{Observer, ParseError, RecordCtx, Role};
use crate::store::body::INLINE_LIMIT;
use crate::store::{Body, Record};

/// CONNECT options whose values are secrets: written as `"<redacted>"`.
const SECRET_OPTIONS: &[&str] = &["pass", "auth_token", "nkey", "sig", "jwt"];
pub const REDACTED: &str = "<redacted>";

/// More open publishes than this (requests nobody answers): the oldest is written as it is.
const OPEN_LIMIT: usize = 1024;

/// Messages kept per publish or subscription.
const MAX_DELIVERIES: usize = 10_000;

/// Where JetStream pull requests go; their payload says how many messages complete them.
const PULL_PREFIX: &str = "$JS.API.CONSUMER.MSG.NEXT.";

struct Subscription {
    mock: NatsMock,
    /// Order of the SUB on the connection.
    seq: u64,
    at: Instant,
    last: Instant,
    /// Messages still to come after an `UNSUB sid max`.
    remaining: Option<u64>,
}

struct OpenPublish {
    mock: NatsMock,
    at: Instant,
    last: Instant,
    /// Order of the publish on the connection, to know which a PONG completes.
    seq: u64,
    /// For a JetStream pull: how many messages it asked for.
    batch: Option<u64>,
    fetched: u64,
}

pub struct NatsObserver {
    ctx: RecordCtx,
    client: Decoder,
    server: Decoder,
    info: Option<Value>,
    /// The connect mock until the server answers the CONNECT.
    connect: Option<(NatsMock, Instant)>,
    subs: HashMap<String, Subscription>,
    open: Vec<OpenPublish>,
    published: u64,
    subscribed: u64,
    /// For each PING of the client not answered yet: how many publishes came before it.
    pings: VecDeque<u64>,
}

impl NatsObserver {
    pub fn new(ctx: RecordCtx) -> NatsObserver {
        NatsObserver {
            ctx,
            client: Decoder::new(Side::Client),
            server: Decoder::new(Side::Server),
            info: None,
            connect: None,
            subs: HashMap::new(),
            open: Vec::new(),
            published: 0,
            subscribed: 0,
            pings: VecDeque::new(),
        }
    }

    fn on_client(&mut self, op: Op, at: Instant) {
        match op {
            Op::Connect(options) => {
                let mut mock = NatsMock::new(NatsOp::Connect);
                mock.info = self.info.clone();
                mock.connect = Some(redact(options));
                self.connect = Some((mock, at));
            }
            Op::Ping => self.pings.push_back(self.published),
            Op::Sub { subject, queue, sid } => {
                let mut mock = NatsMock::new(NatsOp::Subscribe);
                mock.subject = subject;
                mock.queue = queue;
                mock.sid = Some(sid.clone());
                self.subscribed += 1;
                let sub = Subscription { mock, seq: self.subscribed, at, last: at, remaining: None };
                if let Some(old) = self.subs.insert(sid, sub) {
                    self.emit(old.mock, old.at, old.last);
                }
            }
            Op::Unsub { sid, max } => {
                let delivered = self.subs.get(&sid).map(|s| s.mock.deliveries.len() as u64);
                match (max, delivered) {
                    (Some(max), Some(n)) if max > n => {
                        if let Some(s) = self.subs.get_mut(&sid) {
                            s.remaining = Some(max - n);
                        }
                    }
                    _ => self.end_subscription(&sid),
                }
            }
            Op::Pub(message) => self.on_publish(message, at),
            _ => {}
        }
    }

    fn on_publish(&mut self, message: Message, at: Instant) {
        if let Some(reply) = &message.reply_to {
            // An inbox used again: what came for the earlier publish is complete.
            let reused: Vec<usize> =
                (0..self.open.len()).filter(|i| self.open[*i].mock.reply_to.as_ref() == Some(reply)).collect();
            self.finish(reused);
        }
        let batch = message.subject.starts_with(PULL_PREFIX).then(|| pull_batch(&message.payload));
        let mut mock = NatsMock::new(NatsOp::Publish);
        (mock.status, mock.headers) = split_headers(&message.headers);
        mock.payload = self.body(&message.payload);
        mock.subject = message.subject;
        mock.reply_to = message.reply_to;
        self.published += 1;
        self.open.push(OpenPublish { mock, at, last: at, seq: self.published, batch, fetched: 0 });
        if self.open.len() > OPEN_LIMIT {
            self.finish(vec![0]);
        }
    }

    fn on_server(&mut self, op: Op, at: Instant) {
        match op {
            Op::Info(info) => self.info = Some(info),
            Op::Ok => self.connect_answered(None),
            Op::Err(e) => {
                if self.connect.is_some() {
                    self.connect_answered(Some(e));
                } else if let Some(p) = self.open.last_mut() {
                    p.mock.error = Some(e);
                }
            }
            Op::Pong => {
                self.connect_answered(None);
                if let Some(before) = self.pings.pop_front() {
                    let done: Vec<usize> = (0..self.open.len())
                        .filter(|i| self.open[*i].seq <= before && self.open[*i].mock.reply_to.is_none())
                        .collect();
                    self.finish(done);
                }
            }
            Op::Msg { sid, message } => self.on_delivery(sid, message, at),
            _ => {}
        }
    }

    fn connect_answered(&mut self, error: Option<String>) {
        if let Some((mut mock, at)) = self.connect.take() {
            mock.error = error;
            self.emit(mock, at, at);
        }
    }

    fn on_delivery(&mut self, sid: String, message: Message, at: Instant) {
        let Some(sub) = self.subs.get(&sid) else {
            // Sent before the server applied an UNSUB: the client drops it too.
            tracing::debug!("connection {}: a message for sid {sid}, not subscribed", self.ctx.connection);
            return;
        };
        let pattern = sub.mock.subject.clone();
        let delivery = |s: &Self, from: Instant| {
            let (status, headers) = split_headers(&message.headers);
            NatsDelivery {
                after_ms: RecordCtx::ms(from, at),
                subscription: pattern.clone(),
                sid: sid.clone(),
                subject: message.subject.clone(),
                reply_to: message.reply_to.clone(),
                headers,
                status,
                payload: s.body(&message.payload),
            }
        };
        let latest = |keep: &dyn Fn(&OpenPublish) -> bool| self.open.iter().rposition(keep);
        let reply_of = |p: &OpenPublish| p.mock.reply_to.as_deref() == Some(message.subject.as_str());
        let inbox_of = |p: &OpenPublish| p.mock.reply_to.as_deref().is_some_and(|r| subject_matches(&pattern, r));
        // Large payloads are not compared (their bodies are files): such echoes stay with the subscription.
        let inline = (message.payload.len() <= INLINE_LIMIT).then(|| Body::from_bytes(&message.payload));
        let echo_of = |p: &OpenPublish| p.mock.subject == message.subject && inline.as_ref() == Some(&p.mock.payload);
        let status = message.headers.as_ref().and_then(|h| h.status.clone());
        if let Some(i) = latest(&reply_of).or_else(|| latest(&inbox_of)) {
            let d = delivery(self, self.open[i].at);
            let p = &mut self.open[i];
            keep(&mut p.mock.deliveries, d);
            p.last = at;
            let heartbeat = status.as_deref().is_some_and(|s| s.starts_with("100"));
            let complete = match p.batch {
                Some(batch) => {
                    if status.is_none() {
                        p.fetched += 1;
                    }
                    (status.is_some() && !heartbeat) || p.fetched >= batch
                }
                None => reply_of(p) && !heartbeat,
            };
            if complete {
                self.finish(vec![i]);
            }
        } else if let Some(i) = latest(&echo_of) {
            let d = delivery(self, self.open[i].at);
            keep(&mut self.open[i].mock.deliveries, d);
            self.open[i].last = at;
        } else {
            let d = delivery(self, sub.at);
            let Some(sub) = self.subs.get_mut(&sid) else { return };
            keep(&mut sub.mock.deliveries, d);
            sub.last = at;
        }
        if let Some(sub) = self.subs.get_mut(&sid)
            && let Some(left) = &mut sub.remaining
        {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.end_subscription(&sid);
            }
        }
    }

    /// A subscription is gone: it and the publishes waiting for messages on it are complete.
    fn end_subscription(&mut self, sid: &str) {
        let Some(sub) = self.subs.remove(sid) else { return };
        let waiting: Vec<usize> = (0..self.open.len())
            .filter(|i| self.open[*i].mock.reply_to.as_deref().is_some_and(|r| subject_matches(&sub.mock.subject, r)))
            .collect();
        self.finish(waiting);
        self.emit(sub.mock, sub.at, sub.last);
    }

    /// Writes the open publishes at `indexes` (ascending).
    fn finish(&mut self, indexes: Vec<usize>) {
        for i in indexes.into_iter().rev() {
            let p = self.open.remove(i);
            self.emit(p.mock, p.at, p.last);
        }
    }

    fn emit(&self, nats: NatsMock, started: Instant, done: Instant) {
        let Some(mut mock) = self.ctx.mock("nats", started, done) else { return };
        mock.nats = Some(nats);
        self.ctx.sink.submit(Record::Mock(Box::new(mock)));
    }

    /// A payload as written: readable inline, or in a file of the test set when large.
    fn body(&self, payload: &[u8]) -> Option<Body> {
        if payload.len() <= INLINE_LIMIT {
            return Body::from_bytes(payload);
        }
        let mut buf = self.ctx.sink.spill_buffer();
        match buf.push(payload) {
            Ok(()) => buf.into_body(),
            Err(e) => {
                tracing::warn!("cannot store a {}-byte NATS payload in a file ({e}); it stays inline", payload.len());
                buf.discard();
                Body::from_bytes(payload)
            }
        }
    }

    fn feed(&mut self, side: Side, data: &[u8], at: Instant) -> Result<(), ParseError> {
        let mut ops = Vec::new();
        let decoder = if side == Side::Client { &mut self.client } else { &mut self.server };
        let fed = decoder.feed(data, &mut ops).map_err(|e| ParseError::Malformed(format!("NATS: {e}")));
        for op in ops {
            if side == Side::Client { self.on_client(op, at) } else { self.on_server(op, at) }
        }
        fed
    }
}

/// Adds a delivery to a mock that has fewer than `MAX_DELIVERIES`; a busy subscription's later messages are
/// not kept (its mock would grow without end until the connection closes).
fn keep(deliveries: &mut Vec<NatsDelivery>, d: NatsDelivery) {
    if deliveries.len() < MAX_DELIVERIES {
        deliveries.push(d);
    } else {
        tracing::debug!("more than {MAX_DELIVERIES} NATS messages for one mock (on {}); the rest are not recorded", d.subscription);
    }
}

/// Secrets in CONNECT options replaced by `"<redacted>"`.
fn redact(mut options: Value) -> Value {
    if let Value::Object(map) = &mut options {
        for key in SECRET_OPTIONS {
            if let Some(v) = map.get_mut(*key) {
                *v = Value::String(REDACTED.into());
            }
        }
    }
    options
}

/// The `batch` of a JetStream pull request (1 when it does not say).
fn pull_batch(payload: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(payload).ok().and_then(|v| v.get("batch")?.as_u64()).unwrap_or(1)
}

impl Observer for NatsObserver {
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        if let Role::Ingress { .. } = self.ctx.role {
            return Err(ParseError::Unsupported("a NATS client on the app's port; only HTTP tests are recorded".into()));
        }
        self.feed(Side::Client, data, at)
    }

    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        self.feed(Side::Server, data, at)
    }

    fn close(&mut self, _at: Instant) {
        self.connect_answered(None);
        self.finish((0..self.open.len()).collect());
        let mut subs: Vec<Subscription> = self.subs.drain().map(|(_, s)| s).collect();
        subs.sort_by_key(|s| s.seq);
        for s in subs {
            self.emit(s.mock, s.at, s.last);
        }
    }
}
