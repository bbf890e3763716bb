//! Replay: doppel plays the Redis server. Each command is matched on its name (any case) and arguments (exact
//! bytes), the database the connection selected and its RESP version, against the recorded mocks of every
//! connection; repeats are answered in recorded order. A command without a match gets
//! `-ERR doppel: no recorded reply for GET user:42` and fails the running test.
//!
//! - Session commands (AUTH, HELLO, SELECT, CLIENT SETNAME/SETINFO, RESET, QUIT) are answered on every
//!   connection, any number of times; SELECT and CLIENT SETNAME/SETINFO are acknowledged even when not
//!   recorded (the commands that follow are still matched on the database), a HELLO that differs only in
//!   its SETNAME gets the reply of the recorded one.
//! - MULTI is acknowledged; each queued command gets the reply it got when recorded in a transaction that
//!   began the same way; EXEC (or DISCARD) is matched on the whole transaction.
//! - A subscription sends its recorded confirmations, then its recorded messages in order: a message the app
//!   itself published (a recorded PUBLISH with that channel and payload) is sent when the app publishes it
//!   again; any other message at its recorded delay after the subscription.
//! - Blocking commands (BLPOP, XREAD BLOCK, ...) answer after the wait they had when recorded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use tokio::sync::watch;
use tokio::time::Instant;

use super::resp::{Decoder, Side, encode_with};
use super::{
    PubSubFrame, SubKind, command_name, confirmed_channels, describe, is_blocking, is_session_command, pubsub_frame, subscription_command,
};
use crate::capture::BoxFuture;
use crate::protocols::redis::{RedisMock, RedisValue};
use crate::protocols::{Conn, MockPool, MockServer, ServeCtx};
use crate::store::body::INLINE_LIMIT;
use crate::store::{self, Body};

/// What the connections of one replay share: an index of the recorded commands, and the PUBLISH commands the
/// app sent, which release the messages they caused to the app's subscriptions.
struct Shared {
    /// Recorded redis mocks by upper-cased command name, in recorded order.
    by_name: HashMap<String, Vec<usize>>,
    /// The same, by `command_key` of the whole command: where a live command's candidates are.
    by_command: HashMap<u64, Vec<usize>>,
    /// Every recorded PUBLISH / SPUBLISH.
    recorded_publishes: HashSet<Publish>,
    /// The PUBLISH commands the app sent in this replay, in order.
    published: Mutex<Vec<Publish>>,
    published_count: watch::Sender<usize>,
}

/// (destination, channel, payload)
type Publish = (String, Vec<u8>, Vec<u8>);

/// The Redis mock server of one replayed test set: what its connections share.
pub(super) struct Server {
    shared: Arc<Shared>,
}

impl Server {
    pub(super) fn new(pool: &MockPool) -> Server {
        Server { shared: Arc::new(Shared::index(pool)) }
    }
}

impl MockServer for Server {
    fn serve(&self, conn: Conn, ctx: ServeCtx) -> BoxFuture<'static, ()> {
        Box::pin(serve(conn, ctx, self.shared.clone()))
    }
}

impl Shared {
    /// Indexes the recorded commands of a set.
    fn index(pool: &MockPool) -> Shared {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_command: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut recorded_publishes = HashSet::new();
        for (i, m) in pool.of_kind("redis") {
            let Some(redis) = &m.redis else { continue };
            let name = command_name(&redis.command);
            if matches!(name.as_str(), "PUBLISH" | "SPUBLISH")
                && let [_, RedisValue::Bulk(channel), RedisValue::Bulk(payload)] = redis.command.as_slice()
            {
                recorded_publishes.insert((m.dest.clone(), channel.clone(), payload.clone()));
            }
            by_name.entry(name).or_default().push(i);
            by_command.entry(command_key(&redis.command)).or_default().push(i);
        }
        Shared {
            by_name,
            by_command,
            recorded_publishes,
            published: Mutex::new(Vec::new()),
            published_count: watch::Sender::new(0),
        }
    }
}

struct LiveTransaction {
    queued: Vec<Vec<RedisValue>>,
    /// A queued command had no recording: EXEC aborts, as Redis does after a queueing error.
    failed: bool,
}

/// A recorded message waiting to be pushed.
struct Planned {
    due: Instant,
    /// The channel or pattern it arrives on.
    key: Vec<u8>,
    /// (channel, payload) of the app's own PUBLISH that releases it.
    trigger: Option<(Vec<u8>, Vec<u8>)>,
    frame: RedisValue,
}

struct LiveSubscription {
    kind: SubKind,
    channels: Vec<Vec<u8>>,
    messages: VecDeque<Planned>,
    /// Next entry of the publish log to look at.
    cursor: usize,
}

struct Session {
    ctx: ServeCtx,
    shared: Arc<Shared>,
    db: i64,
    resp: u8,
    transaction: Option<LiveTransaction>,
    subscriptions: Vec<LiveSubscription>,
    /// Replies not written yet: a pipeline is answered in one write.
    out: Vec<u8>,
}

async fn serve(mut conn: Conn, ctx: ServeCtx, shared: Arc<Shared>) {
    let mut published = shared.published_count.subscribe();
    let mut s = Session { ctx, shared, db: 0, resp: 2, transaction: None, subscriptions: Vec::new(), out: Vec::new() };
    let mut decoder = Decoder::new(Side::Client);
    let mut commands = Vec::new();
    let mut input = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !input.is_empty() {
            if let Err(e) = decoder.feed(&input, &mut commands) {
                // As Redis does: say why, then close.
                s.ctx.pool.miss("redis", &s.ctx.dest, format!("unreadable Redis command to {}: {e}", s.ctx.dest));
                s.out.extend_from_slice(
                    format!("-ERR Protocol error: {}\r\n", e.to_string().replace(['\r', '\n'], " ")).as_bytes(),
                );
                let _ = conn.write_all(&s.out).await;
                return;
            }
            input.clear();
            for command in commands.drain(..) {
                let RedisValue::Array(args) = command else { continue };
                if !s.handle(&mut conn, args).await {
                    let _ = conn.write_all(&s.out).await;
                    return;
                }
            }
        }
        s.deliver();
        if !s.out.is_empty() {
            if conn.write_all(&s.out).await.is_err() {
                return;
            }
            s.out.clear();
        }
        let due = s.next_due();
        let waits_for_publish = s.waits_for_publish();
        tokio::select! {
            r = conn.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => input.extend_from_slice(&buf[..n]),
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
            r = published.changed(), if waits_for_publish => {
                if r.is_err() {
                    return;
                }
            }
        }
    }
}

impl Session {
    /// Answers one command into `out`; false when the connection must close after it.
    async fn handle(&mut self, conn: &mut crate::protocols::Conn, command: Vec<RedisValue>) -> bool {
        let name = command_name(&command);
        tracing::trace!("redis replay to {}: {}", self.ctx.dest, describe(&command));
        if self.transaction.is_some() {
            match name.as_str() {
                "EXEC" | "DISCARD" => self.end_transaction(&command, &name),
                _ => self.queue(command, &name),
            }
            return true;
        }
        if name == "MULTI" {
            self.out.extend_from_slice(b"+OK\r\n");
            self.transaction = Some(LiveTransaction { queued: Vec::new(), failed: false });
            return true;
        }
        if is_session_command(&name, &command) {
            return self.session(&command, &name);
        }
        self.ordinary(conn, &command, &name).await;
        true
    }

    fn pool(&self) -> Arc<MockPool> {
        self.ctx.pool.clone()
    }

    /// Recorded mocks of this command name that pass `keep`, those of this destination if there are any.
    fn candidates(&self, name: &str, keep: impl Fn(&RedisMock) -> bool) -> Vec<usize> {
        self.pick(self.shared.by_name.get(name).map(Vec::as_slice).unwrap_or_default(), keep)
    }

    /// Recorded mocks of exactly this command (see `same_command`) that pass `keep`.
    fn recordings_of(&self, command: &[RedisValue], keep: impl Fn(&RedisMock) -> bool) -> Vec<usize> {
        let listed = self.shared.by_command.get(&command_key(command)).map(Vec::as_slice).unwrap_or_default();
        self.pick(listed, |m| self.same_command(&m.command, command) && keep(m))
    }

    fn pick(&self, listed: &[usize], keep: impl Fn(&RedisMock) -> bool) -> Vec<usize> {
        let pool = &self.ctx.pool;
        let all: Vec<usize> =
            listed.iter().copied().filter(|i| pool.mocks[*i].redis.as_ref().is_some_and(&keep)).collect();
        let here: Vec<usize> = all.iter().copied().filter(|i| pool.mocks[*i].dest == self.ctx.dest).collect();
        if here.is_empty() { all } else { here }
    }

    /// Whether a recorded command is the live one: name in any case, arguments byte for byte.
    fn same_command(&self, recorded: &[RedisValue], live: &[RedisValue]) -> bool {
        recorded.len() == live.len()
            && recorded.iter().zip(live).enumerate().all(|(i, (r, l))| {
                let Some(l) = l.as_bytes() else { return false };
                match r {
                    RedisValue::Bulk(b) if i == 0 => b.eq_ignore_ascii_case(l),
                    RedisValue::Bulk(b) => b == l,
                    RedisValue::BulkFile { file, size } => {
                        *size == l.len() as u64 && self.file_bytes(file, *size).is_ok_and(|b| b == l)
                    }
                    _ => false,
                }
            })
    }

    /// Says which arguments of mock `i` only matched by shape.
    fn say_tolerated(&self, i: usize, recorded: &[RedisValue], live: &[RedisValue]) {
        let text = |v: &RedisValue| v.as_bytes().and_then(|b| std::str::from_utf8(b).ok()).map(str::to_string);
        let values = recorded
            .iter()
            .zip(live)
            .enumerate()
            .skip(1)
            .filter_map(|(k, (r, l))| Some((format!("argument {k}"), text(r)?, text(l)?)));
        self.ctx.pool.tolerate_stand_ins(i, &super::describe(recorded), values);
    }

    /// Like `same_command`, with arguments that may stand for the recorded ones (`MockPool::stands_for`).
    fn stands_for(&self, i: usize, recorded: &[RedisValue], live: &[RedisValue]) -> bool {
        recorded.len() == live.len()
            && recorded.iter().zip(live).enumerate().all(|(k, (r, l))| {
                let Some(l) = l.as_bytes() else { return false };
                match r {
                    RedisValue::Bulk(b) if k == 0 => b.eq_ignore_ascii_case(l),
                    RedisValue::Bulk(b) => match (std::str::from_utf8(b), std::str::from_utf8(l)) {
                        (Ok(r), Ok(l)) => self.ctx.pool.stands_for(i, r, l),
                        _ => b == l,
                    },
                    _ => false,
                }
            })
    }

    fn file_bytes(&self, file: &str, size: u64) -> crate::error::Result<Vec<u8>> {
        store::body_bytes(&self.ctx.pool.dir, &Some(Body::file(file.to_string(), size)))
    }

    fn write_value(&mut self, value: &RedisValue) {
        let dir = self.ctx.pool.dir.clone();
        let mut load = |file: &str, size: u64| store::body_bytes(&dir, &Some(Body::file(file.to_string(), size)));
        let mut encoded = Vec::new();
        match encode_with(value, &mut encoded, &mut load) {
            Ok(()) => self.out.extend_from_slice(&encoded),
            Err(e) => {
                tracing::warn!("a recorded Redis reply cannot be read: {e}");
                self.ctx.pool.miss("redis", &self.ctx.dest, format!("a recorded Redis reply cannot be read: {e}"));
                self.error(&format!("ERR doppel: the recorded reply cannot be read: {e}"));
            }
        }
    }

    fn error(&mut self, message: &str) {
        self.out.push(b'-');
        self.out.extend_from_slice(message.replace(['\r', '\n'], " ").as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Reports a command nobody recorded and answers it with an error naming it.
    fn miss(&mut self, command: &[RedisValue], name: &str, context: &str) {
        let what = describe(command);
        let hint = self.hint(command, name);
        self.ctx.pool.miss("redis", &self.ctx.dest, format!("redis {what}{context} (to {}){hint}", self.ctx.dest));
        self.error(&format!("ERR doppel: no recorded reply for {what}{context}"));
    }

    /// Why the closest recordings did not match.
    fn hint(&self, command: &[RedisValue], name: &str) -> String {
        let pool = &self.ctx.pool;
        let recorded: Vec<&RedisMock> =
            self.shared.by_name.get(name).into_iter().flatten().filter_map(|i| pool.mocks[*i].redis.as_ref()).collect();
        if let Some(m) = recorded.iter().find(|m| self.same_command(&m.command, command)) {
            if m.db != self.db {
                return format!("; it was recorded on database {}, this connection is on {}", m.db, self.db);
            }
            if m.resp != self.resp {
                return format!("; it was recorded over RESP{}, this connection speaks RESP{}", m.resp, self.resp);
            }
            if m.queued.is_some() != self.transaction.is_some() {
                return if m.queued.is_some() {
                    "; it was recorded inside a transaction".into()
                } else {
                    "; it was recorded outside a transaction".into()
                };
            }
            return "; its recordings were recorded in a different transaction".into();
        }
        if recorded.is_empty() {
            String::new()
        } else {
            format!("; the {} recorded {name} commands have other arguments", recorded.len())
        }
    }

    async fn ordinary(&mut self, conn: &mut crate::protocols::Conn, command: &[RedisValue], name: &str) {
        let keep = |m: &RedisMock| m.queued.is_none() && m.db == self.db && m.resp == self.resp;
        let mut found = self.recordings_of(command, keep);
        let loose = found.is_empty();
        if loose {
            // A key or value holding an id the app generated anew in this replay stands for the recorded one.
            found = self
                .candidates(name, keep)
                .into_iter()
                .filter(|i| {
                    self.ctx.pool.mocks[*i].redis.as_ref().is_some_and(|m| self.stands_for(*i, &m.command, command))
                })
                .collect();
        }
        let pool = self.pool();
        let picked = pool.take(&found).map(|(i, _)| i);
        if matches!(name, "PUBLISH" | "SPUBLISH") {
            self.log_publish(command);
        }
        let Some(i) = picked else {
            self.miss(command, name, "");
            return;
        };
        let mock = &pool.mocks[i];
        if loose && let Some(m) = &mock.redis {
            self.say_tolerated(i, &m.command, command);
        }
        let Some(redis) = &mock.redis else { return };
        if let Some((kind, subscribe)) = subscription_command(name) {
            for r in &redis.replies {
                self.write_value(r);
            }
            if subscribe {
                self.start_subscription(kind, redis);
            } else {
                self.stop_channels(kind, command);
            }
            return;
        }
        if is_blocking(name, command) && mock.duration_ms > 0.0 {
            // Replies so far go out first; this one comes after the recorded wait.
            if conn.write_all(&self.out).await.is_ok() {
                self.out.clear();
            }
            tokio::time::sleep(Duration::from_secs_f64(mock.duration_ms / 1000.0)).await;
        }
        match &redis.reply {
            Some(r) => self.write_value(r),
            None if !redis.replies.is_empty() => {
                for r in &redis.replies {
                    self.write_value(r);
                }
            }
            None => {
                let what = format!("mock {} has no reply to send for {}", mock.id, describe(command));
                self.ctx.pool.miss("redis", &self.ctx.dest, what.clone());
                self.error(&format!("ERR doppel: {what}"));
            }
        }
    }

    fn session(&mut self, command: &[RedisValue], name: &str) -> bool {
        let found = self.recordings_of(command, |m| m.queued.is_none());
        let pool = self.pool();
        let reply = match pool.take(&found) {
            Some((i, _)) => pool.mocks[i].redis.as_ref().and_then(|r| r.reply.clone()),
            None => self.session_fallback(name, command),
        };
        match reply {
            Some(r) => {
                self.write_value(&r);
                self.apply_session(name, command, &r);
            }
            None => self.miss(command, name, ""),
        }
        name != "QUIT"
    }

    /// The answer to a session command that was not recorded exactly like this.
    fn session_fallback(&self, name: &str, command: &[RedisValue]) -> Option<RedisValue> {
        let simple = |s: &str| Some(RedisValue::Simple(s.as_bytes().to_vec()));
        match name {
            // Settings with nothing to answer but OK; what follows is matched on the database it selects.
            "SELECT" | "CLIENT" | "QUIT" => simple("OK"),
            "RESET" => simple("RESET"),
            "HELLO" => {
                let key = hello_key(command);
                let found = self.candidates(name, |m| m.queued.is_none() && hello_key(&m.command) == key);
                let pool = &self.ctx.pool;
                found.first().and_then(|i| pool.mocks[*i].redis.as_ref()?.reply.clone())
            }
            _ => None,
        }
    }

    fn apply_session(&mut self, name: &str, command: &[RedisValue], reply: &RedisValue) {
        let number = |i: usize| super::arg(command, i).and_then(|b| std::str::from_utf8(b).ok()?.parse::<i64>().ok());
        match name {
            "SELECT" if matches!(reply, RedisValue::Simple(s) if s == b"OK") => {
                if let Some(n) = number(1) {
                    self.db = n;
                }
            }
            "HELLO" if !reply.is_error() => {
                if let Some(v) = number(1).and_then(|v| u8::try_from(v).ok()) {
                    self.resp = v;
                }
            }
            "RESET" => {
                self.db = 0;
                self.resp = 2;
                self.transaction = None;
                self.subscriptions.clear();
            }
            _ => {}
        }
    }

    /// Recorded transactions that began like the live one, `queued` commands in.
    fn transactions_like(&self, queued: &[Vec<RedisValue>], then: Option<&[RedisValue]>) -> Vec<usize> {
        let keep = |m: &RedisMock| {
            let Some(recorded) = &m.queued else { return false };
            m.db == self.db
                && m.resp == self.resp
                && (recorded.len() > queued.len() || (then.is_none() && recorded.len() == queued.len()))
                && recorded.iter().zip(queued).all(|(r, l)| self.same_command(&r.command, l))
                && then.is_none_or(|c| self.same_command(&recorded[queued.len()].command, c))
        };
        let mut out = self.candidates("EXEC", keep);
        out.extend(self.candidates("DISCARD", keep));
        out.sort_unstable();
        out
    }

    fn queue(&mut self, command: Vec<RedisValue>, name: &str) {
        let Some(tx) = &self.transaction else { return };
        let found = self.transactions_like(&tx.queued, Some(&command));
        let pool = self.pool();
        let reply = found.first().and_then(|i| {
            let queued = pool.mocks[*i].redis.as_ref()?.queued.as_ref()?;
            Some(queued.get(tx.queued.len())?.reply.clone())
        });
        match reply {
            Some(r) => self.write_value(&r),
            None => {
                self.miss(&command, name, " (queued after MULTI)");
                if let Some(tx) = &mut self.transaction {
                    tx.failed = true;
                }
            }
        }
        if let Some(tx) = &mut self.transaction {
            tx.queued.push(command);
        }
    }

    fn end_transaction(&mut self, command: &[RedisValue], name: &str) {
        let Some(tx) = self.transaction.take() else { return };
        if tx.failed {
            if name == "EXEC" {
                self.error("EXECABORT Transaction discarded because of previous errors.");
            } else {
                self.out.extend_from_slice(b"+OK\r\n");
            }
            return;
        }
        let found: Vec<usize> = self
            .transactions_like(&tx.queued, None)
            .into_iter()
            .filter(|i| {
                self.ctx.pool.mocks[*i].redis.as_ref().is_some_and(|m| {
                    m.queued.as_ref().is_some_and(|q| q.len() == tx.queued.len())
                        && self.same_command(&m.command, command)
                })
            })
            .collect();
        let pool = self.pool();
        let reply = pool.take(&found).and_then(|(i, _)| pool.mocks[i].redis.as_ref()?.reply.clone());
        match reply {
            Some(r) => self.write_value(&r),
            None => {
                let inside: Vec<String> = tx.queued.iter().map(|c| describe(c)).collect();
                self.miss(command, name, &format!(" of the transaction [{}]", inside.join("; ")));
            }
        }
    }

    fn start_subscription(&mut self, kind: SubKind, redis: &RedisMock) {
        let channels = confirmed_channels(&redis.replies);
        let now = Instant::now();
        let messages = redis
            .pushed
            .iter()
            .filter_map(|p| {
                let Some(PubSubFrame::Message { key, channel, payload, .. }) = pubsub_frame(&p.message) else {
                    return None;
                };
                let by_app =
                    self.shared.recorded_publishes.contains(&(self.ctx.dest.clone(), channel.clone(), payload.clone()));
                Some(Planned {
                    due: now + Duration::from_secs_f64(p.after_ms.max(0.0) / 1000.0),
                    key,
                    trigger: by_app.then_some((channel, payload)),
                    frame: p.message.clone(),
                })
            })
            .collect();
        self.subscriptions.push(LiveSubscription { kind, channels, messages, cursor: 0 });
    }

    fn stop_channels(&mut self, kind: SubKind, command: &[RedisValue]) {
        let named: Vec<&[u8]> = command[1..].iter().filter_map(|a| a.as_bytes()).collect();
        for s in self.subscriptions.iter_mut().filter(|s| s.kind == kind) {
            if named.is_empty() {
                s.channels.clear();
            } else {
                s.channels.retain(|c| !named.contains(&c.as_slice()));
            }
            let open = &s.channels;
            s.messages.retain(|m| open.contains(&m.key));
        }
        self.subscriptions.retain(|s| !s.channels.is_empty());
    }

    fn log_publish(&self, command: &[RedisValue]) {
        let [_, RedisValue::Bulk(channel), RedisValue::Bulk(payload)] = command else { return };
        if let Ok(mut log) = self.shared.published.lock() {
            log.push((self.ctx.dest.clone(), channel.clone(), payload.clone()));
        }
        self.shared.published_count.send_modify(|n| *n += 1);
    }

    /// Pushes every message whose time has come or whose PUBLISH the app sent.
    fn deliver(&mut self) {
        let now = Instant::now();
        let mut ready = Vec::new();
        {
            let log = self.shared.published.lock().unwrap_or_else(|p| p.into_inner());
            for s in &mut self.subscriptions {
                while let Some(m) = s.messages.front() {
                    match &m.trigger {
                        Some((channel, payload)) => {
                            let hit = log[s.cursor.min(log.len())..]
                                .iter()
                                .position(|(d, c, p)| *d == self.ctx.dest && c == channel && p == payload);
                            match hit {
                                Some(j) => s.cursor += j + 1,
                                None => break,
                            }
                        }
                        None if m.due > now => break,
                        None => {}
                    }
                    if let Some(m) = s.messages.pop_front() {
                        ready.push(m.frame);
                    }
                }
            }
        }
        for frame in ready {
            self.write_value(&frame);
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.subscriptions
            .iter()
            .filter_map(|s| s.messages.front())
            .filter(|m| m.trigger.is_none())
            .map(|m| m.due)
            .min()
    }

    fn waits_for_publish(&self) -> bool {
        self.subscriptions.iter().filter_map(|s| s.messages.front()).any(|m| m.trigger.is_some())
    }
}

/// A hash of a command for the index: the name in upper case and the arguments; an argument over the inline
/// limit counts by its size only, because recorded ones live in files (`same_command` compares contents).
fn command_key(command: &[RedisValue]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for (i, a) in command.iter().enumerate() {
        match a {
            RedisValue::Bulk(b) if i == 0 => b.to_ascii_uppercase().hash(&mut h),
            RedisValue::Bulk(b) if b.len() <= INLINE_LIMIT => (0u8, b).hash(&mut h),
            RedisValue::Bulk(b) => (1u8, b.len() as u64).hash(&mut h),
            RedisValue::BulkFile { size, .. } => (1u8, *size).hash(&mut h),
            _ => 2u8.hash(&mut h),
        }
    }
    h.finish()
}

/// What must agree between two HELLOs: the protocol version and the credentials (not the client's name).
fn hello_key(command: &[RedisValue]) -> (Option<Vec<u8>>, Vec<Vec<u8>>) {
    let args: Vec<&[u8]> = command.iter().skip(1).filter_map(|a| a.as_bytes()).collect();
    let version = args.first().filter(|a| a.iter().all(u8::is_ascii_digit)).map(|a| a.to_vec());
    let mut credentials = Vec::new();
    let mut i = usize::from(version.is_some());
    while i < args.len() {
        if args[i].eq_ignore_ascii_case(b"AUTH") {
            credentials.extend(args.iter().skip(i + 1).take(2).map(|a| a.to_vec()));
            i += 3;
        } else {
            i += 2; // SETNAME <name>
        }
    }
    (version, credentials)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::Mock;
    use crate::protocols::redis::resp::{encode, encode_command};
    use crate::protocols::redis::{RedisPushed, RedisQueued, bulk, simple};
    use tokio::net::TcpStream;

    fn args(a: &str) -> Vec<RedisValue> {
        a.split(' ').map(bulk).collect()
    }

    fn mock(id: u64, redis: RedisMock) -> Mock {
        let mut m = Mock::new("redis", id, "redis:6379", 1, "2026-01-01T00:00:00.000Z".into(), 0.1);
        m.redis = Some(redis);
        m
    }

    fn reply(id: u64, command: &str, reply: RedisValue) -> Mock {
        mock(id, RedisMock { command: args(command), reply: Some(reply), ..RedisMock::default() })
    }

    async fn start(mocks: Vec<Mock>) -> (Arc<MockPool>, std::net::SocketAddr) {
        let pool = Arc::new(MockPool::new(mocks, std::path::PathBuf::from(".")));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = pool.clone();
        let server = Server::new(&pool);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(
                    server.serve(Box::new(conn), ServeCtx { pool: p.clone(), dest: "redis:6379".into(), ca: None }),
                );
            }
        });
        (pool, addr)
    }

    fn commands(list: &[&str]) -> Vec<u8> {
        list.iter().flat_map(|c| encode_command(&c.split(' ').map(str::as_bytes).collect::<Vec<_>>())).collect()
    }

    /// Sends `send`, then reads until exactly the bytes of `expected` came (or fails after a while).
    async fn exchange(conn: &mut TcpStream, send: &[u8], expected: &[RedisValue]) {
        let want: Vec<u8> = expected.iter().flat_map(encode).collect();
        conn.write_all(send).await.unwrap();
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {:?}", String::from_utf8_lossy(&want)))
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    }

    #[tokio::test]
    async fn pipelined_repeats_in_order_and_misses_named() {
        let (pool, addr) = start(vec![
            reply(1, "GET k", bulk("v1")),
            reply(2, "SET k v2", simple("OK")),
            reply(3, "GET k", bulk("v2")),
        ])
        .await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        exchange(&mut c, &commands(&["get k", "SET k v2", "GET k"]), &[bulk("v1"), simple("OK"), bulk("v2")]).await;
        let miss = RedisValue::Error(b"ERR doppel: no recorded reply for GET user:42".to_vec());
        exchange(&mut c, &commands(&["GET user:42"]), &[miss]).await;
        assert_eq!(pool.misses().len(), 1);
        assert!(pool.misses()[0].what.starts_with("redis GET user:42 (to redis:6379)"), "{:?}", pool.misses());
        // A miss on arguments says what the recordings have.
        exchange(
            &mut c,
            b"GET other\r\n",
            &[RedisValue::Error(b"ERR doppel: no recorded reply for GET other".to_vec())],
        )
        .await;
        assert!(pool.misses()[1].what.contains("the 2 recorded GET commands have other arguments"));
    }

    #[tokio::test]
    async fn ids_generated_anew_stand_for_the_recorded_ones() {
        let recorded = "user:5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27";
        let (pool, addr) = start(vec![
            reply(1, &format!("SET {recorded} ann"), simple("OK")),
            reply(2, &format!("GET {recorded}"), bulk("ann")),
            reply(3, "GET plain-key", bulk("x")),
        ])
        .await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        // A UUID the app generated in this replay: any UUID stands for the recorded one.
        let live = "user:00000000-1111-4222-8333-444444444444";
        exchange(
            &mut c,
            &commands(&[&format!("SET {live} ann"), &format!("GET {live}")]),
            &[simple("OK"), bulk("ann")],
        )
        .await;
        // But the other arguments still have to be the recorded ones, and keys that are not volatile too.
        let miss = |w: &str| RedisValue::Error(format!("ERR doppel: no recorded reply for {w}").into_bytes());
        exchange(&mut c, &commands(&[&format!("SET {live} bob")]), &[miss(&format!("SET {live} bob"))]).await;
        exchange(&mut c, &commands(&["GET plain-kez"]), &[miss("GET plain-kez")]).await;
        assert_eq!(pool.misses().len(), 2);
    }

    #[tokio::test]
    async fn sessions_on_every_connection_and_databases_apart() {
        let hello_reply = RedisValue::Map(vec![(bulk("proto"), RedisValue::Integer(3))]);
        let (pool, addr) = start(vec![
            reply(1, "HELLO 3", hello_reply.clone()),
            mock(
                2,
                RedisMock {
                    resp: 3,
                    db: 1,
                    command: args("GET k"),
                    reply: Some(RedisValue::Nil),
                    ..Default::default()
                },
            ),
            reply(3, "AUTH secret", simple("OK")),
        ])
        .await;
        for _ in 0..3 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            exchange(
                &mut c,
                &commands(&["AUTH secret", "HELLO 3 SETNAME other-name"]),
                &[simple("OK"), hello_reply.clone()],
            )
            .await;
            exchange(
                &mut c,
                &commands(&["SELECT 1", "CLIENT SETNAME x", "GET k"]),
                &[simple("OK"), simple("OK"), RedisValue::Nil],
            )
            .await;
        }
        assert!(pool.misses().is_empty(), "{:?}", pool.misses());
        let mut c = TcpStream::connect(addr).await.unwrap();
        exchange(
            &mut c,
            &commands(&["HELLO 3", "GET k"]),
            &[hello_reply, RedisValue::Error(b"ERR doppel: no recorded reply for GET k".to_vec())],
        )
        .await;
        assert!(pool.misses()[0].what.contains("recorded on database 1"), "{:?}", pool.misses());
        exchange(
            &mut c,
            &commands(&["AUTH wrong"]),
            &[RedisValue::Error(b"ERR doppel: no recorded reply for AUTH wrong".to_vec())],
        )
        .await;
    }

    #[tokio::test]
    async fn transactions_match_as_a_whole() {
        let queued = |c: &str| RedisQueued { command: args(c), reply: simple("QUEUED") };
        let exec = |id, inside: &[&str], result: Vec<RedisValue>| {
            mock(
                id,
                RedisMock {
                    command: args("EXEC"),
                    queued: Some(inside.iter().map(|c| queued(c)).collect()),
                    reply: Some(RedisValue::Array(result)),
                    ..Default::default()
                },
            )
        };
        let (pool, addr) = start(vec![
            exec(1, &["INCR n", "GET k"], vec![RedisValue::Integer(1), bulk("v")]),
            exec(2, &["INCR n", "GET j"], vec![RedisValue::Integer(2), RedisValue::Null]),
            reply(3, "WATCH k", simple("OK")),
            mock(
                4,
                RedisMock {
                    command: args("DISCARD"),
                    queued: Some(vec![queued("SET k x")]),
                    reply: Some(simple("OK")),
                    ..Default::default()
                },
            ),
        ])
        .await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let q = simple("QUEUED");
        exchange(
            &mut c,
            &commands(&["WATCH k", "MULTI", "INCR n", "GET j", "EXEC"]),
            &[
                simple("OK"),
                simple("OK"),
                q.clone(),
                q.clone(),
                RedisValue::Array(vec![RedisValue::Integer(2), RedisValue::Null]),
            ],
        )
        .await;
        // A queued command nobody recorded aborts the transaction, as a queueing error does in Redis.
        exchange(
            &mut c,
            &commands(&["MULTI", "INCR n", "DEL k", "EXEC"]),
            &[
                simple("OK"),
                q,
                RedisValue::Error(b"ERR doppel: no recorded reply for DEL k (queued after MULTI)".to_vec()),
                RedisValue::Error(b"EXECABORT Transaction discarded because of previous errors.".to_vec()),
            ],
        )
        .await;
        assert_eq!(pool.misses().len(), 1);
        exchange(&mut c, &commands(&["MULTI", "SET k x", "DISCARD"]), &[simple("OK"), simple("QUEUED"), simple("OK")])
            .await;
        assert_eq!(pool.misses().len(), 1);
        // QUIT is answered, then the connection closes.
        exchange(&mut c, &commands(&["QUIT"]), &[simple("OK")]).await;
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn subscriptions_push_recorded_messages() {
        let message = |ch: &str, m: &str| RedisValue::Array(vec![bulk("message"), bulk(ch), bulk(m)]);
        let confirm = |ch: &str, n| RedisValue::Array(vec![bulk("subscribe"), bulk(ch), RedisValue::Integer(n)]);
        let (pool, addr) = start(vec![
            mock(
                1,
                RedisMock {
                    command: args("SUBSCRIBE news jobs"),
                    replies: vec![confirm("news", 1), confirm("jobs", 2)],
                    pushed: vec![
                        // Published by someone else: sent at its recorded delay.
                        RedisPushed { after_ms: 20.0, message: message("news", "tick") },
                        // Published by the app: sent when the app publishes it again.
                        RedisPushed { after_ms: 1.0, message: message("jobs", "job-1") },
                    ],
                    ..Default::default()
                },
            ),
            reply(2, "PUBLISH jobs job-1", RedisValue::Integer(1)),
        ])
        .await;
        let mut sub = TcpStream::connect(addr).await.unwrap();
        exchange(&mut sub, &commands(&["SUBSCRIBE news jobs"]), &[confirm("news", 1), confirm("jobs", 2)]).await;
        exchange(&mut sub, b"", &[message("news", "tick")]).await;
        // Nothing more until the app publishes.
        let mut one = [0u8; 1];
        assert!(tokio::time::timeout(Duration::from_millis(150), sub.read(&mut one)).await.is_err());
        let mut publisher = TcpStream::connect(addr).await.unwrap();
        exchange(&mut publisher, &commands(&["PUBLISH jobs job-1"]), &[RedisValue::Integer(1)]).await;
        exchange(&mut sub, b"", &[message("jobs", "job-1")]).await;
        assert!(pool.misses().is_empty(), "{:?}", pool.misses());
    }

    #[tokio::test]
    async fn blocking_commands_keep_their_wait() {
        let mut blpop = reply(1, "BLPOP q 1", RedisValue::NullArray);
        blpop.duration_ms = 300.0;
        let (_, addr) = start(vec![blpop]).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        let began = std::time::Instant::now();
        exchange(&mut c, &commands(&["BLPOP q 1"]), &[RedisValue::NullArray]).await;
        assert!(began.elapsed() >= Duration::from_millis(290), "{:?}", began.elapsed());
    }
}
