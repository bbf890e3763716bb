//! Turns a proxied Redis connection into mocks. Commands are queued as the app sends them and paired with
//! replies in order (pipelining), while connection state (selected database, RESP version, an open
//! transaction, subscriptions) follows the replies, because the server applies commands in that order.

use std::collections::VecDeque;
use std::time::Instant;

use super::resp::{Decoder, Side};
use super::{PubSubFrame, SubKind, command_name, confirmed_channels, pubsub_frame, subscription_command};
use crate::protocols::Mock;
use crate::protocols::redis::{RedisMock, RedisPushed, RedisQueued, RedisValue};
use crate::protocols::tcp::TcpObserver;
use crate::protocols::{Observer, ParseError, RecordCtx, Role};
use crate::store::Record;
use crate::store::body::INLINE_LIMIT;

/// A command waiting for its reply.
struct Pending {
    command: Vec<RedisValue>,
    name: String,
    at: Instant,
    /// For (P|S)(UN)SUBSCRIBE: the kind, whether it subscribes, and how many channels it names.
    subscription: Option<(SubKind, bool, usize)>,
    replies: Vec<RedisValue>,
}

/// A MULTI whose EXEC has not come yet.
struct Transaction {
    at: Instant,
    db: i64,
    resp: u8,
    queued: Vec<RedisQueued>,
}

/// A subscription whose channels are still open: its mock is written when they are all unsubscribed or the
/// connection ends, with every message pushed on them.
struct Subscription {
    mock: Mock,
    kind: SubKind,
    channels: Vec<Vec<u8>>,
    confirmed: Instant,
}

/// Until the server's first reply shows it speaks RESP, the raw bytes are kept: a line protocol that only
/// looked like inline Redis (`INCR orders\n` to some other store) is then recorded whole as opaque bytes.
enum Trust {
    Unproven { log: Vec<(bool, Vec<u8>, Instant)>, size: usize },
    Proven,
    NotRedis(TcpObserver),
}

/// Bytes kept while the protocol is unproven; past this, a failure is handed to the proxy as usual.
const UNPROVEN_LOG_LIMIT: usize = 1024 * 1024;

pub struct RedisObserver {
    ctx: RecordCtx,
    trust: Trust,
    commands: Decoder,
    replies: Decoder,
    frames: Vec<RedisValue>,
    pending: VecDeque<Pending>,
    db: i64,
    resp: u8,
    transaction: Option<Transaction>,
    subscriptions: Vec<Subscription>,
}

impl RedisObserver {
    pub fn new(ctx: RecordCtx) -> RedisObserver {
        RedisObserver {
            ctx,
            trust: Trust::Unproven { log: Vec::new(), size: 0 },
            commands: Decoder::new(Side::Client),
            replies: Decoder::new(Side::Server),
            frames: Vec::new(),
            pending: VecDeque::new(),
            db: 0,
            resp: 2,
            transaction: None,
            subscriptions: Vec::new(),
        }
    }

    fn on_command(&mut self, command: Vec<RedisValue>, at: Instant) -> Result<(), ParseError> {
        if !command.iter().all(|a| matches!(a, RedisValue::Bulk(_))) {
            return Err("a command that is not an array of bulk strings".into());
        }
        let name = command_name(&command);
        // Commands after which replies no longer pair one to one with commands.
        match name.as_str() {
            "MONITOR" | "SYNC" | "PSYNC" | "REPLCONF" => {
                return Err(ParseError::Malformed(format!(
                    "{name} turns the connection into a stream doppel does not parse"
                )));
            }
            "CLIENT" if super::subcommand(&command) == "REPLY" => {
                return Err("CLIENT REPLY switches replies off; they cannot be paired with commands".into());
            }
            _ => {}
        }
        let subscription = subscription_command(&name).map(|(kind, subscribe)| (kind, subscribe, command.len() - 1));
        self.pending.push_back(Pending { command, name, at, subscription, replies: Vec::new() });
        Ok(())
    }

    fn on_reply(&mut self, frame: RedisValue, at: Instant) -> Result<(), ParseError> {
        let is_push = matches!(frame, RedisValue::Push(_));
        let front_subscribes = self.pending.front().is_some_and(|p| p.subscription.is_some());
        // RESP3 marks pub/sub traffic as pushes; in RESP2 an array is pub/sub traffic only around subscriptions.
        let around_subscriptions = front_subscribes || !self.subscriptions.is_empty();
        if is_push || (self.resp == 2 && around_subscriptions) {
            match pubsub_frame(&frame) {
                Some(PubSubFrame::Message { kind, key, .. }) => {
                    self.on_message(kind, &key, frame, at);
                    return Ok(());
                }
                Some(PubSubFrame::Confirmation { kind, subscribe, channel }) => {
                    return self.on_confirmation(kind, subscribe, channel, frame, at);
                }
                None if is_push => {
                    tracing::debug!(
                        "connection {}: a push frame that is not pub/sub is not recorded",
                        self.ctx.connection
                    );
                    return Ok(());
                }
                None => {}
            }
        }
        let mut p = self.pending.pop_front().ok_or("a reply arrived while no command was waiting for one")?;
        p.replies.push(frame);
        self.finish(p, at);
        Ok(())
    }

    fn on_message(&mut self, kind: SubKind, key: &[u8], frame: RedisValue, at: Instant) {
        let Some(sub) = self.subscriptions.iter_mut().find(|s| s.kind == kind && s.channels.iter().any(|c| c == key))
        else {
            tracing::debug!(
                "connection {}: a message on a channel no recorded subscription holds",
                self.ctx.connection
            );
            return;
        };
        if let Some(redis) = &mut sub.mock.redis {
            redis.pushed.push(RedisPushed { after_ms: RecordCtx::ms(sub.confirmed, at), message: frame });
        }
    }

    fn on_confirmation(
        &mut self,
        kind: SubKind,
        subscribe: bool,
        channel: Option<Vec<u8>>,
        frame: RedisValue,
        at: Instant,
    ) -> Result<(), ParseError> {
        let asked =
            self.pending.front().is_some_and(|p| p.subscription.map(|(k, s, _)| (k, s)) == Some((kind, subscribe)));
        let Some(front) = self.pending.front_mut().filter(|_| asked) else {
            // Nobody asked: the server unsubscribed the client by itself (an ACL change, a shard moving).
            tracing::debug!("connection {}: an unrequested {} frame", self.ctx.connection, frame_name(&frame));
            if !subscribe {
                self.close_channels(kind, channel.as_deref());
            }
            return Ok(());
        };
        front.replies.push(frame);
        let (_, _, named) = front.subscription.unwrap_or((kind, subscribe, 0));
        let received = front.replies.len();
        if !subscribe {
            self.close_channels(kind, channel.as_deref());
        }
        let complete = if named > 0 {
            received >= named
        } else {
            // UNSUBSCRIBE with no arguments: one confirmation per open channel, or one saying there were none.
            channel.is_none() || !self.subscriptions.iter().any(|s| s.kind == kind)
        };
        if complete && let Some(p) = self.pending.pop_front() {
            self.finish(p, at);
        }
        Ok(())
    }

    /// A channel (or every channel of a kind, for `None`) was unsubscribed: subscriptions left with no open
    /// channel are written.
    fn close_channels(&mut self, kind: SubKind, channel: Option<&[u8]>) {
        for s in self.subscriptions.iter_mut().filter(|s| s.kind == kind) {
            match channel {
                Some(c) => s.channels.retain(|x| x != c),
                None => s.channels.clear(),
            }
        }
        let (closed, open): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.subscriptions).into_iter().partition(|s| s.channels.is_empty());
        self.subscriptions = open;
        for s in closed {
            self.emit_subscription(s);
        }
    }

    /// A command got its whole reply: update the connection state and write (or hold) its mock.
    fn finish(&mut self, p: Pending, at: Instant) {
        let (db, resp) = (self.db, self.resp);
        let ok = |expected: &[u8]| matches!(p.replies.as_slice(), [RedisValue::Simple(s)] if s == expected);
        if let Some(tx) = &mut self.transaction {
            if p.name == "EXEC" || p.name == "DISCARD" {
                let Some(tx) = self.transaction.take() else { return };
                let redis = RedisMock {
                    resp: tx.resp,
                    db: tx.db,
                    command: p.command,
                    queued: Some(tx.queued),
                    reply: p.replies.into_iter().next(),
                    ..RedisMock::default()
                };
                self.emit(redis, tx.at, at);
            } else if let Some(reply) = p.replies.into_iter().next() {
                tx.queued.push(RedisQueued { command: p.command, reply });
            }
            return;
        }
        match p.name.as_str() {
            "MULTI" if ok(b"OK") => {
                self.transaction = Some(Transaction { at: p.at, db, resp, queued: Vec::new() });
                return;
            }
            "SELECT" if ok(b"OK") => {
                if let Some(n) = super::arg(&p.command, 1).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()) {
                    self.db = n;
                }
            }
            "HELLO" if p.replies.first().is_some_and(|r| !r.is_error()) => {
                if let Some(v) = super::arg(&p.command, 1).and_then(|b| std::str::from_utf8(b).ok()?.parse().ok()) {
                    self.resp = v;
                }
            }
            "RESET" if ok(b"RESET") => {
                self.db = 0;
                self.resp = 2;
                let subs = std::mem::take(&mut self.subscriptions);
                for s in subs {
                    self.emit_subscription(s);
                }
            }
            _ => {}
        }
        let mut redis = RedisMock { resp, db, command: p.command, ..RedisMock::default() };
        match p.subscription {
            Some((kind, true, _)) if !p.replies.iter().any(RedisValue::is_error) => {
                let channels = confirmed_channels(&p.replies);
                redis.replies = p.replies;
                let mock = self.mock(redis, p.at, at);
                self.subscriptions.push(Subscription { mock, kind, channels, confirmed: at });
            }
            Some(_) => {
                redis.replies = p.replies;
                self.emit(redis, p.at, at);
            }
            None => {
                redis.reply = p.replies.into_iter().next();
                self.emit(redis, p.at, at);
            }
        }
    }

    fn mock(&self, mut redis: RedisMock, started: Instant, done: Instant) -> Mock {
        let Some(mut mock) = self.ctx.mock("redis", started, done) else { return Mock::default() };
        redis.command.iter_mut().for_each(|v| self.spill(v));
        for q in redis.queued.iter_mut().flatten() {
            q.command.iter_mut().for_each(|v| self.spill(v));
            self.spill(&mut q.reply);
        }
        if let Some(r) = &mut redis.reply {
            self.spill(r);
        }
        redis.replies.iter_mut().for_each(|v| self.spill(v));
        mock.redis = Some(redis);
        mock
    }

    fn emit(&self, redis: RedisMock, started: Instant, done: Instant) {
        let mock = self.mock(redis, started, done);
        self.ctx.sink.submit(Record::Mock(Box::new(mock)));
    }

    fn emit_subscription(&self, mut s: Subscription) {
        if let Some(redis) = &mut s.mock.redis {
            for p in &mut redis.pushed {
                self.spill(&mut p.message);
            }
        }
        self.ctx.sink.submit(Record::Mock(Box::new(s.mock)));
    }

    /// Moves bulk strings over the inline limit to files of the test set, as HTTP bodies are.
    fn spill(&self, v: &mut RedisValue) {
        match v {
            RedisValue::Bulk(b) if b.len() > INLINE_LIMIT => {
                let mut buf = self.ctx.sink.spill_buffer();
                if let Err(e) = buf.push(b) {
                    tracing::warn!("cannot store a {}-byte Redis value in a file ({e}); it stays inline", b.len());
                    buf.discard();
                    return;
                }
                if let Some(crate::store::Body { file: Some(file), size: Some(size), .. }) = buf.into_body() {
                    *v = RedisValue::BulkFile { file, size };
                }
            }
            RedisValue::Array(items) | RedisValue::Set(items) | RedisValue::Push(items) => {
                items.iter_mut().for_each(|x| self.spill(x))
            }
            RedisValue::Map(entries) => entries.iter_mut().for_each(|(k, x)| {
                self.spill(k);
                self.spill(x);
            }),
            RedisValue::Attributed { value, .. } => self.spill(value),
            _ => {}
        }
    }
}

fn frame_name(frame: &RedisValue) -> String {
    match frame {
        RedisValue::Array(items) | RedisValue::Push(items) => items
            .first()
            .and_then(|v| v.as_bytes())
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

impl RedisObserver {
    /// Keeps a copy of what passed while the protocol is unproven.
    fn remember(&mut self, from_client: bool, data: &[u8], at: Instant) {
        if let Trust::Unproven { log, size } = &mut self.trust {
            *size += data.len();
            if *size > UNPROVEN_LOG_LIMIT {
                self.trust = Trust::Proven;
            } else {
                log.push((from_client, data.to_vec(), at));
            }
        }
    }

    /// Settles what a parse result means while the protocol is unproven: a failure before any reply was
    /// understood makes the whole connection opaque, from its first byte.
    fn settle(&mut self, result: Result<(), ParseError>, replied: bool) -> Result<(), ParseError> {
        match (&mut self.trust, result) {
            (Trust::Unproven { log, .. }, Err(why)) => {
                let mut tcp = TcpObserver::new(self.ctx.clone(), Some(format!("not Redis after all: {why}")));
                for (from_client, bytes, at) in std::mem::take(log) {
                    let _ = if from_client { tcp.client(&bytes, at) } else { tcp.server(&bytes, at) };
                }
                self.pending.clear();
                self.trust = Trust::NotRedis(tcp);
                Ok(())
            }
            (Trust::Unproven { .. }, Ok(())) if replied => {
                self.trust = Trust::Proven;
                Ok(())
            }
            (_, r) => r,
        }
    }

    fn client_bytes(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut frames = std::mem::take(&mut self.frames);
        let fed = self
            .commands
            .feed(data, &mut frames)
            .map_err(|e| ParseError::Malformed(format!("unreadable Redis command: {e}")));
        let mut result = fed;
        for command in frames.drain(..) {
            let RedisValue::Array(args) = command else { continue };
            if let Err(e) = self.on_command(args, at) {
                result = Err(e);
                break;
            }
        }
        frames.clear();
        self.frames = frames;
        result
    }

    /// Feeds server bytes; tells whether a whole reply was understood.
    fn server_bytes(&mut self, data: &[u8], at: Instant) -> (Result<(), ParseError>, bool) {
        if data.is_empty() {
            return (Ok(()), false);
        }
        let mut frames = std::mem::take(&mut self.frames);
        let fed = self
            .replies
            .feed(data, &mut frames)
            .map_err(|e| ParseError::Malformed(format!("unreadable Redis reply: {e}")));
        let replied = !frames.is_empty();
        let mut result = fed;
        for frame in frames.drain(..) {
            if let Err(e) = self.on_reply(frame, at) {
                result = Err(e);
                break;
            }
        }
        frames.clear();
        self.frames = frames;
        (result, replied)
    }
}

impl Observer for RedisObserver {
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        if let Role::Ingress { .. } = self.ctx.role {
            return Err("a Redis client on the app's port; only HTTP test cases are recorded there".into());
        }
        if let Trust::NotRedis(tcp) = &mut self.trust {
            return tcp.client(data, at);
        }
        self.remember(true, data, at);
        let result = self.client_bytes(data, at);
        self.settle(result, false)
    }

    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        if let Trust::NotRedis(tcp) = &mut self.trust {
            return tcp.server(data, at);
        }
        self.remember(false, data, at);
        let (result, replied) = self.server_bytes(data, at);
        self.settle(result, replied)
    }

    fn close(&mut self, at: Instant) {
        if let Trust::NotRedis(tcp) = &mut self.trust {
            tcp.close(at);
            return;
        }
        for s in std::mem::take(&mut self.subscriptions) {
            self.emit_subscription(s);
        }
        if !self.pending.is_empty() || self.transaction.is_some() {
            tracing::debug!(
                "connection {}: {} command(s) without a reply{} not recorded",
                self.ctx.connection,
                self.pending.len(),
                if self.transaction.is_some() { " and an unfinished transaction" } else { "" }
            );
        }
        self.pending.clear();
        self.transaction = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::redis::resp::{encode, encode_command};
    use crate::protocols::redis::{bulk, simple};
    use crate::protocols::testing;
    use crate::store::MemorySink;

    fn frame(items: &[&str], count: i64) -> RedisValue {
        let mut v: Vec<RedisValue> = items.iter().map(|s| bulk(s)).collect();
        v.push(RedisValue::Integer(count));
        RedisValue::Array(v)
    }

    fn command(args: &[&str]) -> Vec<u8> {
        encode_command(&args.iter().map(|a| a.as_bytes()).collect::<Vec<_>>())
    }

    /// Runs an observer over the two byte streams, each cut at the given points, and returns its mocks.
    fn observe(client: &[u8], server: &[u8], client_cut: usize, server_cut: usize) -> Vec<RedisMock> {
        let pieces = [
            (true, client[..client_cut].to_vec()),
            (true, client[client_cut..].to_vec()),
            (false, server[..server_cut].to_vec()),
            (false, server[server_cut..].to_vec()),
        ];
        let role = Role::Egress { dest: "127.0.0.1:6379".into() };
        let (mocks, error) = testing::observe(RedisObserver::new, role, &pieces, testing::whole);
        assert_eq!(error, None);
        mocks.into_iter().filter_map(|m| m.redis).collect()
    }

    #[test]
    fn pipelined_session_transaction_and_subscription() {
        let client = [
            command(&["SELECT", "2"]),
            command(&["SET", "k", "v"]),
            command(&["GET", "k"]),
            command(&["MULTI"]),
            command(&["INCR", "n"]),
            command(&["GET", "k"]),
            command(&["EXEC"]),
            command(&["SUBSCRIBE", "a", "b"]),
            command(&["UNSUBSCRIBE"]),
        ]
        .concat();
        let replies = [
            simple("OK"),
            simple("OK"),
            bulk("v"),
            simple("OK"),
            simple("QUEUED"),
            simple("QUEUED"),
            RedisValue::Array(vec![RedisValue::Integer(1), bulk("v")]),
            frame(&["subscribe", "a"], 1),
            frame(&["subscribe", "b"], 2),
            RedisValue::Array(vec![bulk("message"), bulk("a"), bulk("hi")]),
            frame(&["unsubscribe", "a"], 1),
            frame(&["unsubscribe", "b"], 0),
        ];
        let server: Vec<u8> = replies.iter().flat_map(encode).collect();
        let expected = observe(&client, &server, client.len(), server.len());
        let names: Vec<String> = expected.iter().map(|m| super::super::describe(&m.command)).collect();
        assert_eq!(names, ["SELECT 2", "SET k v", "GET k", "EXEC", "SUBSCRIBE a b", "UNSUBSCRIBE"]);
        assert_eq!(expected[0].db, 0, "SELECT itself ran on database 0");
        assert_eq!((expected[1].db, expected[2].reply.clone()), (2, Some(bulk("v"))));
        let tx = &expected[3];
        assert_eq!(tx.queued.as_ref().map(|q| q.len()), Some(2));
        assert_eq!(tx.reply, Some(RedisValue::Array(vec![RedisValue::Integer(1), bulk("v")])));
        assert_eq!(expected[5].replies.len(), 2);
        let sub = &expected[4];
        assert_eq!(sub.replies.len(), 2);
        assert_eq!(sub.pushed.len(), 1);
        assert_eq!(sub.pushed[0].message, RedisValue::Array(vec![bulk("message"), bulk("a"), bulk("hi")]));
        // Where the reads are cut changes nothing.
        for (c, s) in [(1, 1), (7, 30), (client.len() / 2, server.len() / 3), (client.len() - 1, server.len() - 1)] {
            assert_eq!(observe(&client, &server, c, s), expected, "cut at {c}/{s}");
        }
    }

    #[test]
    fn resp3_pushes_and_large_values() {
        let big = "x".repeat(INLINE_LIMIT + 10);
        let client = [
            command(&["HELLO", "3"]),
            command(&["SET", "big", &big]),
            command(&["SUBSCRIBE", "c"]),
            command(&["LRANGE", "l", "0", "-1"]),
        ]
        .concat();
        let looks_like_a_message = RedisValue::Array(vec![bulk("message"), bulk("c"), bulk("not pushed")]);
        let push = |items: &[RedisValue]| RedisValue::Push(items.to_vec());
        let replies = [
            RedisValue::Map(vec![(bulk("proto"), RedisValue::Integer(3))]),
            simple("OK"),
            push(&[bulk("subscribe"), bulk("c"), RedisValue::Integer(1)]),
            push(&[bulk("message"), bulk("c"), bulk("m1")]),
            push(&[bulk("invalidate"), RedisValue::Array(vec![bulk("k")])]),
            looks_like_a_message.clone(),
            push(&[bulk("message"), bulk("c"), bulk("m2")]),
        ];
        let server: Vec<u8> = replies.iter().flat_map(encode).collect();
        let mut mocks = observe(&client, &server, client.len(), 9);
        assert_eq!(mocks.len(), 4);
        assert_eq!(mocks[2].reply, Some(looks_like_a_message), "in RESP3 only pushes are pub/sub");
        mocks.swap(2, 3);
        assert_eq!((mocks[0].resp, mocks[1].resp), (2, 3), "HELLO ran over RESP2, what follows over RESP3");
        assert!(matches!(&mocks[1].command[2], RedisValue::BulkFile { size, .. } if *size as usize == big.len()));
        let messages: Vec<&RedisValue> = mocks[2].pushed.iter().map(|p| &p.message).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
    }

    /// Runs an observer over a conversation (client bytes, then server bytes) and returns every mock.
    fn observe_all(client: &[u8], server: &[u8]) -> Vec<Mock> {
        let pieces = [(true, client.to_vec()), (false, server.to_vec())];
        let role = Role::Egress { dest: "10.0.0.1:7000".into() };
        let (mocks, error) = testing::observe(RedisObserver::new, role, &pieces, testing::whole);
        assert_eq!(error, None);
        mocks
    }

    #[test]
    fn what_only_looked_like_redis_is_recorded_whole_as_opaque_bytes() {
        // A line protocol whose commands happen to be Redis words, answered in something that is not RESP.
        let mocks = observe_all(b"INCR orders\n", b"VALUE 1\n");
        assert_eq!(mocks.len(), 1);
        let tcp = mocks[0].tcp.as_ref().expect("an opaque mock");
        let text: Vec<String> = tcp.chunks.iter().map(|c| String::from_utf8(c.bytes().unwrap()).unwrap()).collect();
        assert_eq!(text, ["INCR orders\n", "VALUE 1\n"]);
        assert!(tcp.note.as_deref().unwrap_or("").contains("not Redis"), "{:?}", tcp.note);
        // Streams that replies cannot be paired in are opaque too.
        assert!(observe_all(&command(&["MONITOR"]), b"+OK\r\n")[0].tcp.is_some());
        assert!(observe_all(b"", b"+OK\r\n")[0].tcp.is_some(), "a reply nobody asked for");
        // Once a reply proved the server speaks RESP, a later failure is the proxy's to handle.
        let memory = MemorySink::new();
        let ctx = |role| memory.ctx(role);
        let now = Instant::now();
        let mut o = RedisObserver::new(ctx(Role::Egress { dest: "r:6379".into() }));
        o.client(&command(&["PING"]), now).unwrap();
        o.server(b"+PONG\r\n", now).unwrap();
        assert!(o.server(b"+PONG\r\n", now).is_err());
        let mut o = RedisObserver::new(ctx(Role::Ingress { port: 8080, tls: None }));
        assert!(o.client(&command(&["PING"]), now).is_err());
    }
}
