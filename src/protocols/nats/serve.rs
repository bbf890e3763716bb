//! Replay: doppel plays the NATS server. It greets with the recorded INFO (without authentication or TLS
//! demands; a default one when none was recorded), accepts any CONNECT, answers PING with PONG and every
//! operation with `+OK` when the client asked for verbose mode. A publish is matched on its subject,
//! reply-to, headers and payload against the recorded publishes (repeats in recorded order); the messages
//! recorded with it are delivered to the live subscriptions, at their recorded delay when that was longer
//! than `PROMPT_MS`. A subscription matching a recorded one gets the messages no publish caused, at their
//! recorded delays. Request inboxes are random per run: recorded inbox tokens map to the live ones
//! (`InboxMap`).
//!
//! A publish with no recording fails the running test. The app sees what a real server with nobody
//! listening does: a plain publish is accepted, a request gets the `503` no-responders status when the
//! client enabled it (`headers` and `no_responders` in CONNECT), else no reply (the client times out).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::format::{NatsDelivery, NatsMock, NatsOp};
use super::wire::{Decoder, Headers, Message, Op, Side, encode_msg};
use super::{InboxMap, describe_payload, subject_matches};
use crate::capture::BoxFuture;
use crate::protocols::{Conn, MockPool, MockServer, ServeCtx};
use crate::store;

/// Deliveries recorded within this many milliseconds of their publish are sent at once.
const PROMPT_MS: f64 = 20.0;

/// The longest recorded delay replay keeps.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// INFO fields that would make the client authenticate or switch to TLS: doppel's server asks for neither.
const DROPPED_INFO: &[&str] = &["auth_required", "tls_required", "tls_verify", "tls_available", "nonce", "connect_urls", "ldm"];

/// The NATS mock server of one replayed test set: an index of its recordings.
pub(super) struct Server {
    index: Arc<Index>,
}

struct Index {
    publishes: Vec<usize>,
    subscriptions: Vec<usize>,
    connects: Vec<usize>,
}

impl Server {
    pub(super) fn new(pool: &MockPool) -> Server {
        let mut index = Index { publishes: Vec::new(), subscriptions: Vec::new(), connects: Vec::new() };
        for (i, m) in pool.of_kind("nats") {
            match m.nats.as_ref().map(|n| n.op) {
                Some(NatsOp::Publish) => index.publishes.push(i),
                Some(NatsOp::Subscribe) => index.subscriptions.push(i),
                Some(NatsOp::Connect) => index.connects.push(i),
                None => {}
            }
        }
        Server { index: Arc::new(index) }
    }
}

impl MockServer for Server {
    fn serve(&self, conn: Conn, ctx: ServeCtx) -> BoxFuture<'static, ()> {
        Box::pin(serve(conn, ctx, self.index.clone()))
    }
}

struct LiveSub {
    sid: String,
    subject: String,
    /// Messages still to deliver after `UNSUB sid max`.
    remaining: Option<u64>,
}

/// A recorded message waiting to be delivered.
struct Planned {
    due: Instant,
    delivery: NatsDelivery,
}

struct Session {
    ctx: ServeCtx,
    index: Arc<Index>,
    verbose: bool,
    no_responders: bool,
    subs: Vec<LiveSub>,
    inboxes: InboxMap,
    planned: VecDeque<Planned>,
    out: Vec<u8>,
}

async fn serve(mut conn: Conn, ctx: ServeCtx, index: Arc<Index>) {
    let mut s = Session {
        ctx,
        index,
        verbose: false,
        no_responders: false,
        subs: Vec::new(),
        inboxes: InboxMap::default(),
        planned: VecDeque::new(),
        out: Vec::new(),
    };
    s.greet();
    let mut decoder = Decoder::new(Side::Client);
    let mut ops = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        s.deliver_due();
        if !s.out.is_empty() {
            if conn.write_all(&s.out).await.is_err() {
                return;
            }
            s.out.clear();
        }
        let due = s.planned.front().map(|p| p.due);
        let n = tokio::select! {
            r = conn.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => continue,
        };
        let fed = decoder.feed(&buf[..n], &mut ops);
        for op in ops.drain(..) {
            s.handle(op);
            s.deliver_due();
        }
        if let Err(e) = fed {
            // As nats-server does: say so and close.
            s.ctx.pool.miss("nats", &s.ctx.dest, format!("unreadable NATS from the app to {}: {e}", s.ctx.dest));
            s.out.extend_from_slice(b"-ERR 'Unknown Protocol Operation'\r\n");
            let _ = conn.write_all(&s.out).await;
            return;
        }
    }
}

impl Session {
    fn pool(&self) -> Arc<MockPool> {
        self.ctx.pool.clone()
    }

    fn recorded(&self, i: usize) -> Option<&NatsMock> {
        self.ctx.pool.mocks.get(i).and_then(|m| m.nats.as_ref())
    }

    /// Indexes from `listed` whose mock passes `keep`, those recorded for this destination if any.
    fn pick(&self, listed: &[usize], keep: impl Fn(&NatsMock) -> bool) -> Vec<usize> {
        let all: Vec<usize> = listed.iter().copied().filter(|i| self.recorded(*i).is_some_and(&keep)).collect();
        let here: Vec<usize> = all.iter().copied().filter(|i| self.ctx.pool.mocks[*i].dest == self.ctx.dest).collect();
        if here.is_empty() { all } else { here }
    }

    fn greet(&mut self) {
        let connects = self.pick(&self.index.connects, |m| m.info.is_some());
        let pool = self.pool();
        let recorded = pool.take(&connects).and_then(|(i, _)| self.recorded(i)).and_then(|m| m.info.clone());
        let mut info = recorded.unwrap_or_else(default_info);
        if let Value::Object(map) = &mut info {
            for key in DROPPED_INFO {
                map.remove(*key);
            }
        }
        self.out.extend_from_slice(format!("INFO {info}\r\n").as_bytes());
    }

    fn ok(&mut self) {
        if self.verbose {
            self.out.extend_from_slice(b"+OK\r\n");
        }
    }

    fn handle(&mut self, op: Op) {
        match op {
            Op::Connect(options) => {
                let on = |k: &str| options.get(k).and_then(Value::as_bool).unwrap_or(false);
                self.verbose = on("verbose");
                self.no_responders = on("headers") && on("no_responders");
                self.ok();
            }
            Op::Ping => self.out.extend_from_slice(b"PONG\r\n"),
            Op::Sub { subject, queue, sid } => {
                self.ok();
                self.subscribe(&subject, &queue);
                self.subs.retain(|s| s.sid != sid);
                self.subs.push(LiveSub { sid, subject, remaining: None });
            }
            Op::Unsub { sid, max } => {
                self.ok();
                match max {
                    Some(max) if max > 0 => {
                        if let Some(s) = self.subs.iter_mut().find(|s| s.sid == sid) {
                            s.remaining = Some(max);
                        }
                    }
                    _ => self.subs.retain(|s| s.sid != sid),
                }
            }
            Op::Pub(message) => {
                self.ok();
                self.publish(&message);
            }
            _ => {}
        }
    }

    /// A live subscription that matches a recorded one gets the messages recorded on it.
    fn subscribe(&mut self, subject: &str, queue: &Option<String>) {
        let candidates = self.pick(&self.index.subscriptions, |m| {
            m.queue == *queue && self.inboxes.fits(&m.subject, subject).is_some()
        });
        let pool = self.pool();
        let Some((i, reused)) = pool.take(&candidates) else { return };
        let Some(m) = pool.mocks[i].nats.as_ref() else { return };
        if let Some(pairs) = self.inboxes.fits(&m.subject, subject) {
            self.inboxes.learn(pairs);
        }
        if !reused {
            self.plan(&m.deliveries, false);
        }
    }

    fn publish(&mut self, live: &Message) {
        let (status, headers) = super::format::split_headers(&live.headers);
        let fits = |s: &Session, i: usize, m: &NatsMock, exact: bool| -> Option<Vec<(String, String)>> {
            let mut pairs = s.inboxes.fits(&m.subject, &live.subject)?;
            let mut map = s.inboxes.clone();
            map.learn(pairs.clone());
            pairs.extend(map.fits_optional(&m.reply_to, &live.reply_to)?);
            let payload = store::body_bytes(&s.ctx.pool.dir, &m.payload).ok()?;
            let same = |r: &[u8], l: &[u8]| {
                r == l
                    || (!exact
                        && matches!((std::str::from_utf8(r), std::str::from_utf8(l)),
                            (Ok(r), Ok(l)) if s.ctx.pool.stands_for(i, r, l)))
            };
            let same_headers = m.status == status
                && match (&m.headers, &headers) {
                    (None, None) => true,
                    (Some(r), Some(l)) => r.len() == l.len() && r.iter().zip(l).all(|(r, l)| same(r.as_bytes(), l.as_bytes())),
                    _ => false,
                };
            (same_headers && same(&payload, &live.payload)).then_some(pairs)
        };
        let mut candidates = Vec::new();
        let mut loose = false;
        for exact in [true, false] {
            candidates = self
                .pick(&self.index.publishes, |_| true)
                .into_iter()
                .filter(|i| self.recorded(*i).is_some_and(|m| fits(self, *i, m, exact).is_some()))
                .collect();
            loose = !exact;
            if !candidates.is_empty() {
                break;
            }
        }
        let pool = self.pool();
        let Some((i, _)) = pool.take(&candidates) else {
            self.miss(live);
            return;
        };
        let Some(m) = pool.mocks[i].nats.as_ref() else { return };
        if loose {
            self.say_tolerated(i, m, live);
        }
        if let Some(pairs) = fits(self, i, m, false) {
            self.inboxes.learn(pairs);
        }
        self.plan(&m.deliveries, true);
    }

    /// Says which parts of the live publish only matched recorded mock `i` by shape: never silent.
    fn say_tolerated(&self, i: usize, m: &NatsMock, live: &Message) {
        let pool = &self.ctx.pool;
        let recorded_payload = store::body_bytes(&pool.dir, &m.payload).unwrap_or_default();
        let live_lines = live.headers.as_ref().map(|h| h.lines.as_slice()).unwrap_or_default();
        let pairs = m.headers.iter().flatten().zip(live_lines).enumerate().map(|(n, (r, l))| {
            (format!("header {}", n + 1), r.as_bytes().to_vec(), l.as_bytes().to_vec())
        });
        let text = |b: Vec<u8>| String::from_utf8(b).ok();
        let values = pairs
            .chain([("payload".to_string(), recorded_payload, live.payload.clone())])
            .filter_map(|(place, r, l)| Some((place, text(r)?, text(l)?)));
        pool.tolerate_stand_ins(i, &format!("PUB {}", m.subject), values);
    }

    fn miss(&mut self, live: &Message) {
        let recorded_here = self.pick(&self.index.publishes, |m| m.subject == live.subject).len();
        let hint = match recorded_here {
            0 => String::new(),
            n => format!("; the {n} recorded publishes to {} differ in payload, headers or reply-to", live.subject),
        };
        let what = format!(
            "nats PUB {} {} (to {}){hint}",
            live.subject,
            describe_payload(&live.payload),
            self.ctx.dest
        );
        self.ctx.pool.miss("nats", &self.ctx.dest, what);
        let Some(reply) = &live.reply_to else { return };
        if !self.no_responders {
            return;
        }
        if let Some(sid) = self.sid_for(reply, None) {
            let status = Headers { status: Some("503".into()), lines: Vec::new() };
            let message = Message { subject: reply.clone(), reply_to: None, headers: Some(status), payload: Vec::new() };
            self.out.extend_from_slice(&encode_msg(&sid, &message));
        }
    }

    /// Queues recorded deliveries: at once when they came promptly after a publish, else at their delay.
    fn plan(&mut self, deliveries: &[NatsDelivery], after_publish: bool) {
        let now = Instant::now();
        for d in deliveries {
            let wait = if after_publish && d.after_ms <= PROMPT_MS { 0.0 } else { d.after_ms };
            // A hand-edited delay that is negative, not a number or absurd waits at most an hour.
            let wait = Duration::try_from_secs_f64(wait / 1000.0).unwrap_or_default().min(MAX_WAIT);
            let due = now + wait;
            let at = self.planned.iter().position(|p| p.due > due).unwrap_or(self.planned.len());
            self.planned.insert(at, Planned { due, delivery: d.clone() });
        }
    }

    /// The live subscription a recorded delivery goes to: the one on the recorded subscription's subject,
    /// else one whose subject matches the message.
    fn sid_for(&mut self, subject: &str, subscription: Option<&str>) -> Option<String> {
        let by_subscription = subscription.map(|s| self.inboxes.live(s));
        let i = self
            .subs
            .iter()
            .position(|s| by_subscription.as_deref() == Some(s.subject.as_str()))
            .or_else(|| self.subs.iter().position(|s| subject_matches(&s.subject, subject)))?;
        let sub = &mut self.subs[i];
        let sid = sub.sid.clone();
        if let Some(left) = &mut sub.remaining {
            *left -= 1;
            if *left == 0 {
                self.subs.remove(i);
            }
        }
        Some(sid)
    }

    fn deliver_due(&mut self) {
        let now = Instant::now();
        while self.planned.front().is_some_and(|p| p.due <= now) {
            let Some(Planned { delivery: d, .. }) = self.planned.pop_front() else { break };
            let payload = match store::body_bytes(&self.ctx.pool.dir, &d.payload) {
                Ok(p) => p,
                Err(e) => {
                    let what = format!("a recorded NATS message on {} cannot be read: {e}", d.subject);
                    self.ctx.pool.miss("nats", &self.ctx.dest, what);
                    continue;
                }
            };
            let mut message = d.message(payload);
            message.subject = self.inboxes.live(&message.subject);
            message.reply_to = message.reply_to.map(|r| self.inboxes.live(&r));
            match self.sid_for(&message.subject, Some(&d.subscription)) {
                Some(sid) => self.out.extend_from_slice(&encode_msg(&sid, &message)),
                None => tracing::debug!("nats replay: no live subscription for a message on {}", message.subject),
            }
        }
    }
}

/// What doppel's server says about itself when no INFO was recorded for the destination.
fn default_info() -> Value {
    serde_json::json!({
        "server_id": "doppel",
        "server_name": "doppel",
        "version": "2.10.0",
        "proto": 1,
        "host": "0.0.0.0",
        "port": 4222,
        "headers": true,
        "max_payload": 1048576,
        "jetstream": true,
    })
}
