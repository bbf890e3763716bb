//! Redis (RESP2 and RESP3): the app's calls to Redis become mocks, one per command and reply, and replay plays
//! the server. Transactions, subscriptions and session commands are handled as described in
//! `store::format::redis` (what is stored) and `serve` (how replay answers).

mod format;
mod record;
pub(crate) mod resp;
mod serve;

use std::sync::Arc;

use super::{Detect, MockPool, MockServer, Observer, Protocol, RecordCtx};
pub(crate) use format::*;

pub(crate) struct Redis;

impl Protocol for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn detect_client(&self, first: &[u8], port: u16) -> Detect {
        detect(first, port)
    }

    fn recorded_write(&self, mock: &super::Mock) -> Option<String> {
        let m = mock.redis.as_ref()?;
        let writes: Vec<&[RedisValue]> = match &m.queued {
            Some(queued) => queued.iter().map(|q| q.command.as_slice()).filter(|c| is_write(c)).collect(),
            None => Some(m.command.as_slice()).filter(|c| is_write(c)).into_iter().collect(),
        };
        let described: Vec<String> = writes.iter().map(|c| describe(c)).collect();
        match (&m.queued, described.is_empty()) {
            (_, true) => None,
            (Some(_), false) => Some(format!("MULTI ... EXEC ({})", described.join("; "))),
            (None, false) => described.into_iter().next(),
        }
    }

    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer> {
        Box::new(record::RedisObserver::new(ctx))
    }

    /// One server per replayed set: messages one connection publishes reach the others' subscriptions.
    fn mock_server(&self, pool: &Arc<MockPool>) -> Arc<dyn MockServer> {
        Arc::new(serve::Server::new(pool))
    }
}

/// The port Redis listens on by default: there, an inline command need not be one doppel knows.
const REDIS_PORT: u16 = 6379;

/// Commands recognised at the start of an inline request (`PING\r\n`), so that other line protocols are not
/// taken for Redis.
const INLINE_COMMANDS: &[&str] = &[
    "ACL",
    "APPEND",
    "AUTH",
    "BGSAVE",
    "BITCOUNT",
    "BITFIELD",
    "BITOP",
    "BITPOS",
    "BLMOVE",
    "BLMPOP",
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BZMPOP",
    "BZPOPMAX",
    "BZPOPMIN",
    "CLIENT",
    "CLUSTER",
    "COMMAND",
    "CONFIG",
    "COPY",
    "DBSIZE",
    "DECR",
    "DECRBY",
    "DEL",
    "DISCARD",
    "DUMP",
    "ECHO",
    "EVAL",
    "EVALSHA",
    "EVALSHA_RO",
    "EVAL_RO",
    "EXEC",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "FCALL",
    "FCALL_RO",
    "FLUSHALL",
    "FLUSHDB",
    "FUNCTION",
    "GEOADD",
    "GEODIST",
    "GEOPOS",
    "GEOSEARCH",
    "GET",
    "GETBIT",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HDEL",
    "HELLO",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HINCRBY",
    "HINCRBYFLOAT",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HMSET",
    "HRANDFIELD",
    "HSCAN",
    "HSET",
    "HSETNX",
    "HSTRLEN",
    "HVALS",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "INFO",
    "KEYS",
    "LASTSAVE",
    "LATENCY",
    "LCS",
    "LINDEX",
    "LINSERT",
    "LLEN",
    "LMOVE",
    "LMPOP",
    "LPOP",
    "LPOS",
    "LPUSH",
    "LPUSHX",
    "LRANGE",
    "LREM",
    "LSET",
    "LTRIM",
    "MEMORY",
    "MGET",
    "MONITOR",
    "MOVE",
    "MSET",
    "MSETNX",
    "MULTI",
    "OBJECT",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PFADD",
    "PFCOUNT",
    "PFMERGE",
    "PING",
    "PSETEX",
    "PSUBSCRIBE",
    "PTTL",
    "PUBLISH",
    "PUBSUB",
    "PUNSUBSCRIBE",
    "QUIT",
    "RANDOMKEY",
    "READONLY",
    "READWRITE",
    "RENAME",
    "RENAMENX",
    "RESET",
    "RESTORE",
    "ROLE",
    "RPOP",
    "RPOPLPUSH",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SAVE",
    "SCAN",
    "SCARD",
    "SCRIPT",
    "SDIFF",
    "SDIFFSTORE",
    "SELECT",
    "SET",
    "SETBIT",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SINTER",
    "SINTERCARD",
    "SISMEMBER",
    "SLOWLOG",
    "SMEMBERS",
    "SMISMEMBER",
    "SMOVE",
    "SORT",
    "SPOP",
    "SPUBLISH",
    "SRANDMEMBER",
    "SREM",
    "SSCAN",
    "SSUBSCRIBE",
    "STRLEN",
    "SUBSCRIBE",
    "SUNION",
    "SUNSUBSCRIBE",
    "SWAPDB",
    "TIME",
    "TOUCH",
    "TTL",
    "TYPE",
    "UNLINK",
    "UNSUBSCRIBE",
    "UNWATCH",
    "WAIT",
    "WATCH",
    "XACK",
    "XADD",
    "XDEL",
    "XGROUP",
    "XINFO",
    "XLEN",
    "XRANGE",
    "XREAD",
    "XREADGROUP",
    "XREVRANGE",
    "XTRIM",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZINCRBY",
    "ZMSCORE",
    "ZPOPMAX",
    "ZPOPMIN",
    "ZRANDMEMBER",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREM",
    "ZREVRANGE",
    "ZREVRANK",
    "ZSCAN",
    "ZSCORE",
];

/// RESP arrays (`*<n>\r\n$`) are Redis on any port. An inline command is Redis when its first word is a known
/// command (any word on port 6379) and the line is not an HTTP request line.
pub fn detect(first: &[u8], port: u16) -> Detect {
    let Some(&lead) = first.first() else { return Detect::NeedMore };
    if lead == b'*' {
        let digits = first[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        let rest = &first[1 + digits..];
        if rest.is_empty() {
            return if digits <= 10 { Detect::NeedMore } else { Detect::No };
        }
        if digits == 0 {
            return Detect::No;
        }
        return match rest {
            [b'\r'] | [b'\r', b'\n'] => Detect::NeedMore,
            [b'\r', b'\n', b'$', ..] => Detect::Yes,
            _ => Detect::No,
        };
    }
    if !lead.is_ascii_alphabetic() {
        return Detect::No;
    }
    let word_len = first.iter().take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')).count();
    let word = &first[..word_len];
    let known = |w: &[u8]| INLINE_COMMANDS.iter().any(|c| c.as_bytes().eq_ignore_ascii_case(w));
    let could_become_known =
        INLINE_COMMANDS.iter().any(|c| c.len() > word.len() && c.as_bytes()[..word.len()].eq_ignore_ascii_case(word));
    let acceptable = known(word) || port == REDIS_PORT;
    match first.get(word_len) {
        None => {
            if could_become_known || known(word) || port == REDIS_PORT {
                Detect::NeedMore
            } else {
                Detect::No
            }
        }
        Some(b'\r' | b'\n') if acceptable => Detect::Yes,
        Some(b' ' | b'\t') if acceptable => {
            let line_end = memchr::memchr(b'\n', first);
            let line = &first[..line_end.unwrap_or(first.len())];
            let args = line[word_len..].trim_ascii_start();
            if args.first() == Some(&b'/') {
                return Detect::No; // `GET /path HTTP/1.1`
            }
            if args.is_empty() {
                return Detect::NeedMore;
            }
            // `GET http://host/ HTTP/1.1` (a proxy request) only shows at the end of its line.
            match line_end {
                Some(_) if line.trim_ascii_end().windows(6).any(|w| w == b" HTTP/") => Detect::No,
                Some(_) => Detect::Yes,
                None if word.eq_ignore_ascii_case(b"GET") => Detect::NeedMore,
                None => Detect::Yes,
            }
        }
        _ => Detect::No,
    }
}

/// The command name, upper-cased.
pub fn command_name(command: &[RedisValue]) -> String {
    command
        .first()
        .and_then(|v| v.as_bytes())
        .map(|b| String::from_utf8_lossy(b).to_ascii_uppercase())
        .unwrap_or_default()
}

/// The argument at `i`, if it is an in-memory bulk string.
fn arg(command: &[RedisValue], i: usize) -> Option<&[u8]> {
    match command.get(i) {
        Some(RedisValue::Bulk(b)) => Some(b),
        _ => None,
    }
}

/// The subcommand of a container command (`CLIENT SETNAME`), upper-cased.
fn subcommand(command: &[RedisValue]) -> String {
    arg(command, 1).map(|b| String::from_utf8_lossy(b).to_ascii_uppercase()).unwrap_or_default()
}

/// Commands that set up a connection rather than touch data: replay answers them on every connection, any
/// number of times.
pub fn is_session_command(name: &str, command: &[RedisValue]) -> bool {
    match name {
        "AUTH" | "HELLO" | "SELECT" | "RESET" | "QUIT" => true,
        "CLIENT" => matches!(subcommand(command).as_str(), "SETNAME" | "SETINFO"),
        _ => false,
    }
}

/// Commands whose reply may wait for data or a timeout; replay keeps their recorded wait.
pub fn is_blocking(name: &str, command: &[RedisValue]) -> bool {
    match name {
        "BLPOP" | "BRPOP" | "BLMOVE" | "BRPOPLPUSH" | "BLMPOP" | "BZPOPMIN" | "BZPOPMAX" | "BZMPOP" | "WAIT"
        | "WAITAOF" => true,
        "XREAD" | "XREADGROUP" => {
            command.iter().any(|a| a.as_bytes().is_some_and(|b| b.eq_ignore_ascii_case(b"BLOCK")))
        }
        _ => false,
    }
}

/// What a subscription command or pushed frame is about: plain channels, patterns, or shard channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    Channel,
    Pattern,
    Shard,
}

/// A (P|S)(UN)SUBSCRIBE command: its kind, and whether it subscribes.
pub fn subscription_command(name: &str) -> Option<(SubKind, bool)> {
    Some(match name {
        "SUBSCRIBE" => (SubKind::Channel, true),
        "UNSUBSCRIBE" => (SubKind::Channel, false),
        "PSUBSCRIBE" => (SubKind::Pattern, true),
        "PUNSUBSCRIBE" => (SubKind::Pattern, false),
        "SSUBSCRIBE" => (SubKind::Shard, true),
        "SUNSUBSCRIBE" => (SubKind::Shard, false),
        _ => return None,
    })
}

/// A frame of the pub/sub machinery, as the server sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSubFrame {
    /// `[subscribe, channel, count]` and friends; `channel` is `None` for "no subscriptions".
    Confirmation { kind: SubKind, subscribe: bool, channel: Option<Vec<u8>> },
    /// `[message, channel, payload]`, `[pmessage, pattern, channel, payload]`, `[smessage, channel, payload]`.
    /// `key` is what the subscription is on: the channel, or the pattern.
    Message { kind: SubKind, key: Vec<u8>, channel: Vec<u8>, payload: Vec<u8> },
}

/// The channels (or patterns) that subscription replies confirm, in order.
pub fn confirmed_channels(replies: &[RedisValue]) -> Vec<Vec<u8>> {
    replies
        .iter()
        .filter_map(|r| match pubsub_frame(r) {
            Some(PubSubFrame::Confirmation { channel: Some(c), .. }) => Some(c),
            _ => None,
        })
        .collect()
}

/// Reads a frame as pub/sub traffic (an array in RESP2, a push in RESP3), if it is shaped like it.
pub fn pubsub_frame(frame: &RedisValue) -> Option<PubSubFrame> {
    let items = match frame {
        RedisValue::Array(items) | RedisValue::Push(items) => items,
        _ => return None,
    };
    let head = items.first()?.as_bytes()?.to_ascii_lowercase();
    let bytes = |i: usize| items.get(i).and_then(|v| v.as_bytes()).map(<[u8]>::to_vec);
    let confirmation = |kind, subscribe| {
        let channel = bytes(1);
        (items.len() == 3 && matches!(items[2], RedisValue::Integer(_))).then_some(PubSubFrame::Confirmation {
            kind,
            subscribe,
            channel,
        })
    };
    match head.as_slice() {
        b"subscribe" => confirmation(SubKind::Channel, true),
        b"unsubscribe" => confirmation(SubKind::Channel, false),
        b"psubscribe" => confirmation(SubKind::Pattern, true),
        b"punsubscribe" => confirmation(SubKind::Pattern, false),
        b"ssubscribe" => confirmation(SubKind::Shard, true),
        b"sunsubscribe" => confirmation(SubKind::Shard, false),
        b"message" | b"smessage" if items.len() == 3 => {
            let kind = if head == b"message" { SubKind::Channel } else { SubKind::Shard };
            let channel = bytes(1)?;
            Some(PubSubFrame::Message { kind, key: channel.clone(), channel, payload: bytes(2)? })
        }
        b"pmessage" if items.len() == 4 => Some(PubSubFrame::Message {
            kind: SubKind::Pattern,
            key: bytes(1)?,
            channel: bytes(2)?,
            payload: bytes(3)?,
        }),
        _ => None,
    }
}

/// Commands that change data (or publish): a recorded one that a replayed test no longer sends is a missing
/// side effect. Scripts (`EVAL`, `FCALL`) count as writes: doppel cannot tell what they do.
const WRITE_COMMANDS: &[&str] = &[
    "APPEND", "BITFIELD", "BITOP", "BLMOVE", "BLMPOP", "BLPOP", "BRPOP", "BRPOPLPUSH", "BZMPOP", "BZPOPMAX",
    "BZPOPMIN", "COPY", "DECR", "DECRBY", "DEL", "EVAL", "EVALSHA", "EXPIRE", "EXPIREAT", "FCALL", "FLUSHALL",
    "FLUSHDB", "GEOADD", "GETDEL", "GETEX", "GETSET", "HDEL", "HINCRBY", "HINCRBYFLOAT", "HMSET", "HSET",
    "HSETNX", "INCR", "INCRBY", "INCRBYFLOAT", "LINSERT", "LMOVE", "LMPOP", "LPOP", "LPUSH", "LPUSHX", "LREM",
    "LSET", "LTRIM", "MOVE", "MSET", "MSETNX", "PERSIST", "PEXPIRE", "PEXPIREAT", "PFADD", "PFMERGE", "PSETEX",
    "PUBLISH", "RENAME", "RENAMENX", "RESTORE", "RPOP", "RPOPLPUSH", "RPUSH", "RPUSHX", "SADD", "SDIFFSTORE",
    "SET", "SETBIT", "SETEX", "SETNX", "SETRANGE", "SINTERSTORE", "SMOVE", "SPOP", "SPUBLISH", "SREM",
    "SUNIONSTORE", "UNLINK", "XACK", "XADD", "XAUTOCLAIM", "XCLAIM", "XDEL", "XGROUP", "XTRIM", "ZADD",
    "ZDIFFSTORE", "ZINCRBY", "ZINTERSTORE", "ZMPOP", "ZPOPMAX", "ZPOPMIN", "ZRANGESTORE", "ZREM",
    "ZREMRANGEBYLEX", "ZREMRANGEBYRANK", "ZREMRANGEBYSCORE", "ZUNIONSTORE",
];

fn is_write(command: &[RedisValue]) -> bool {
    match command.first() {
        Some(RedisValue::Bulk(name)) => {
            let name = String::from_utf8_lossy(name).to_ascii_uppercase();
            WRITE_COMMANDS.binary_search(&name.as_str()).is_ok()
        }
        _ => false,
    }
}

/// A command as a person would type it, for messages: `GET user:42`, long or binary arguments abridged.
pub fn describe(command: &[RedisValue]) -> String {
    let mut out = String::new();
    for (i, a) in command.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if out.len() > 200 {
            out.push_str(&format!("... ({} arguments)", command.len()));
            break;
        }
        match a {
            RedisValue::Bulk(b) => match std::str::from_utf8(b) {
                Ok(s) if s.chars().count() > 60 => {
                    let head: String = s.chars().take(40).collect();
                    out.push_str(&format!("{:?}... ({} bytes)", head, b.len()));
                }
                Ok(s) if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"') => {
                    out.push_str(&format!("{s:?}"));
                }
                Ok(s) => out.push_str(s),
                Err(_) => out.push_str(&format!("<{} binary bytes>", b.len())),
            },
            RedisValue::BulkFile { size, .. } => out.push_str(&format!("<{size} bytes>")),
            other => out.push_str(&format!("{other:?}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn write_commands_are_sorted_for_binary_search() {
        assert!(WRITE_COMMANDS.windows(2).all(|w| w[0] < w[1]));
        assert!(is_write(&[RedisValue::Bulk(b"set".to_vec()), RedisValue::Bulk(b"k".to_vec())]));
        assert!(!is_write(&[RedisValue::Bulk(b"GET".to_vec())]));
    }
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(detect(b"*1\r\n$4\r\nPING\r\n", 7000), Detect::Yes);
        assert_eq!(detect(b"*3\r", 7000), Detect::NeedMore);
        assert_eq!(detect(b"*", 7000), Detect::NeedMore);
        assert_eq!(detect(b"*x", 7000), Detect::No);
        assert_eq!(detect(b"PING\r\n", 7000), Detect::Yes);
        assert_eq!(detect(b"set k v\r\n", 7000), Detect::Yes);
        assert_eq!(detect(b"GET user:42\r\n", 7000), Detect::Yes);
        assert_eq!(detect(b"PI", 7000), Detect::NeedMore);
        assert_eq!(detect(b"FOO bar\r\n", 7000), Detect::No);
        assert_eq!(detect(b"FOO bar\r\n", 6379), Detect::Yes);
        // HTTP is never taken for Redis.
        assert_eq!(detect(b"GET / HTTP/1.1\r\n", 6379), Detect::No);
        assert_eq!(detect(b"GET /api", 80), Detect::No);
        assert_eq!(detect(b"GET http://x/ HTTP/1.1\r\n", 80), Detect::No);
        assert_eq!(detect(b"POST /x HTTP/1.1\r\n", 80), Detect::No);
        assert_eq!(detect(b"PRI * HTTP/2.0\r\n", 80), Detect::No);
        // Nor binary protocols.
        assert_eq!(detect(b"\x16\x03\x01", 443), Detect::No);
        assert_eq!(detect(b"\0\0\0\x08\x04\xd2\x16\x2f", 5432), Detect::No);
    }

    #[test]
    fn pubsub_frames() {
        let b = |s: &str| RedisValue::Bulk(s.as_bytes().to_vec());
        let f = RedisValue::Array(vec![b("subscribe"), b("news"), RedisValue::Integer(1)]);
        assert_eq!(
            pubsub_frame(&f),
            Some(PubSubFrame::Confirmation {
                kind: SubKind::Channel,
                subscribe: true,
                channel: Some(b"news".to_vec())
            })
        );
        let f = RedisValue::Push(vec![b("pmessage"), b("n*"), b("news"), b("hi")]);
        assert_eq!(
            pubsub_frame(&f),
            Some(PubSubFrame::Message {
                kind: SubKind::Pattern,
                key: b"n*".to_vec(),
                channel: b"news".to_vec(),
                payload: b"hi".to_vec()
            })
        );
        assert_eq!(pubsub_frame(&RedisValue::Array(vec![b("message"), b("x")])), None);
    }

    #[test]
    fn descriptions() {
        let cmd = |a: &[&[u8]]| a.iter().map(|x| RedisValue::Bulk(x.to_vec())).collect::<Vec<_>>();
        assert_eq!(describe(&cmd(&[b"GET", b"user:42"])), "GET user:42");
        assert_eq!(describe(&cmd(&[b"SET", b"k", b"a b"])), "SET k \"a b\"");
        assert_eq!(describe(&cmd(&[b"SET", b"k", &[0, 255]])), "SET k <2 binary bytes>");
        assert!(describe(&cmd(&[b"SET", b"k", "x".repeat(100).as_bytes()])).ends_with("(100 bytes)"));
    }
}
