//! RESP2/RESP3 framing, incremental, for both directions.
//!
//! Written here rather than taken from the `redis-protocol` crate: its decoders take a complete buffer and
//! return "incomplete" until a whole frame is there, so a frame arriving in many reads is parsed again from
//! its start each time (a multi-MB value or a long pipeline costs far more than one pass), RESP2 and RESP3
//! are separate decoders while one connection switches with `HELLO 3`, and inline commands (`PING\r\n` as
//! telnet sends it) are not covered. This decoder keeps its place between reads: every byte is looked at
//! once, a large bulk string is copied straight into its value, and a half-built array stays on a stack.

use crate::protocols::ParseError;
use memchr::memchr;

use crate::protocols::redis::RedisValue;

/// Which side a decoder reads: clients send commands (arrays of bulk strings, or inline lines); servers send
/// any RESP2/RESP3 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Longest line accepted: Redis refuses inline requests over 64 KiB; server lines (simple strings, errors)
/// get more room.
const MAX_INLINE: usize = 64 * 1024;
const MAX_LINE: usize = 1024 * 1024;
/// Redis's own ceiling for a bulk string (`proto-max-bulk-len`).
const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Aggregates nested deeper than this are refused (Redis replies nest a few levels at most).
const MAX_DEPTH: usize = 64;

#[derive(Debug)]
enum OpenKind {
    Array,
    Set,
    Push,
    Map,
    /// The key/value pairs of a `|` attribute frame.
    Attributes,
    /// The value an attribute frame describes.
    Attributed(Vec<(RedisValue, RedisValue)>),
}

#[derive(Debug)]
struct Open {
    kind: OpenKind,
    expected: usize,
    items: Vec<RedisValue>,
}

#[derive(Debug, Clone, Copy)]
enum BulkKind {
    Bulk,
    BlobError,
    Verbatim,
}

/// A bulk payload still arriving: `data` collects the payload and its trailing CRLF.
#[derive(Debug)]
struct PendingBulk {
    kind: BulkKind,
    len: usize,
    data: Vec<u8>,
}

pub struct Decoder {
    side: Side,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// Where to resume looking for the end of the current line.
    scan: usize,
    stack: Vec<Open>,
    bulk: Option<PendingBulk>,
}

impl Decoder {
    pub fn new(side: Side) -> Decoder {
        Decoder { side, buf: Vec::new(), pos: 0, scan: 0, stack: Vec::new(), bulk: None }
    }

    /// Feeds bytes; complete values are appended to `out` in order. An error means the stream is not RESP
    /// (or breaks a limit) and the decoder must not be used again.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<RedisValue>) -> Result<(), ParseError> {
        if let Some(b) = &mut self.bulk {
            let take = (b.len + 2 - b.data.len()).min(data.len());
            b.data.extend_from_slice(&data[..take]);
            data = &data[take..];
            if b.data.len() < b.len + 2 {
                return Ok(());
            }
            if let Some(b) = self.bulk.take() {
                let value = finish_bulk(b)?;
                self.complete(value, out)?;
            }
        }
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.scan = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.scan -= self.pos;
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
        self.parse_buffered(out)
    }

    fn parse_buffered(&mut self, out: &mut Vec<RedisValue>) -> Result<(), ParseError> {
        while self.pos < self.buf.len() {
            let top_level = self.stack.is_empty();
            if self.side == Side::Client && top_level && self.buf[self.pos] != b'*' {
                let Some((start, end)) = self.take_line(MAX_INLINE, false)? else { return Ok(()) };
                let args = split_inline(&self.buf[start..end])?;
                if !args.is_empty() {
                    out.push(RedisValue::Array(args.into_iter().map(RedisValue::Bulk).collect()));
                }
                continue;
            }
            let Some((start, end)) = self.take_line(MAX_LINE, true)? else { return Ok(()) };
            match self.read_line(start, end, top_level)? {
                Line::Value(v) => self.complete(v, out)?,
                Line::Bulk(b'$', -1) if self.side == Side::Server => self.complete(RedisValue::Null, out)?,
                Line::Bulk(kind, len) => {
                    if !(0..=MAX_BULK).contains(&len) {
                        return Err(ParseError::Malformed(format!("invalid bulk length {len}")));
                    }
                    let bulk_kind = match kind {
                        b'$' => BulkKind::Bulk,
                        b'!' => BulkKind::BlobError,
                        _ => BulkKind::Verbatim,
                    };
                    self.start_bulk(bulk_kind, len as usize, out)?;
                }
                Line::Aggregate(b'*', -1) if self.side == Side::Server => self.complete(RedisValue::NullArray, out)?,
                Line::Aggregate(kind, n) => {
                    if n < 0 || n > i64::from(i32::MAX) {
                        return Err(ParseError::Malformed(format!("invalid aggregate length {n}")));
                    }
                    if self.side == Side::Client && n == 0 {
                        continue; // Redis ignores an empty command
                    }
                    let (kind, expected) = match kind {
                        b'*' => (OpenKind::Array, n as usize),
                        b'~' => (OpenKind::Set, n as usize),
                        b'>' => (OpenKind::Push, n as usize),
                        b'%' => (OpenKind::Map, 2 * n as usize),
                        _ => (OpenKind::Attributes, 2 * n as usize),
                    };
                    self.open(kind, expected, out)?;
                }
            }
        }
        Ok(())
    }

    /// Reads one RESP line in place (headers are parsed without copying them).
    fn read_line(&self, start: usize, end: usize, top_level: bool) -> Result<Line, ParseError> {
        let (&kind, rest) = self.buf[start..end].split_first().ok_or("an empty line where a RESP type was expected")?;
        if self.side == Side::Client && !(kind == b'$' || (kind == b'*' && top_level)) {
            return Err(ParseError::Malformed(format!(
                "expected '{}' in a command, got {:?}",
                if top_level { '*' } else { '$' },
                char::from(kind)
            )));
        }
        Ok(match kind {
            b'+' => Line::Value(RedisValue::Simple(rest.to_vec())),
            b'-' => Line::Value(RedisValue::Error(rest.to_vec())),
            b':' => Line::Value(RedisValue::Integer(parse_int(rest)?)),
            b'_' if rest.is_empty() => Line::Value(RedisValue::Nil),
            b',' => Line::Value(RedisValue::Double(text(rest)?)),
            b'(' => Line::Value(RedisValue::BigNumber(text(rest)?)),
            b'#' => Line::Value(RedisValue::Boolean(match rest {
                b"t" => true,
                b"f" => false,
                _ => return Err(ParseError::Malformed(format!("bad boolean {:?}", String::from_utf8_lossy(rest)))),
            })),
            b'$' | b'!' | b'=' => Line::Bulk(kind, parse_int(rest)?),
            b'*' | b'~' | b'>' | b'%' | b'|' => Line::Aggregate(kind, parse_int(rest)?),
            other => return Err(ParseError::Malformed(format!("unknown RESP type byte {:?}", char::from(other)))),
        })
    }

    /// Where the next line is in `buf` (without its line end), or `None` until it is complete. RESP lines end
    /// in CRLF; inline commands may end in a bare LF, as Redis accepts.
    fn take_line(&mut self, limit: usize, crlf: bool) -> Result<Option<(usize, usize)>, ParseError> {
        let from = self.scan.max(self.pos);
        match memchr(b'\n', &self.buf[from..]) {
            None => {
                self.scan = self.buf.len();
                if self.buf.len() - self.pos > limit {
                    return Err(ParseError::Malformed(format!("a line longer than {limit} bytes")));
                }
                Ok(None)
            }
            Some(i) => {
                let nl = from + i;
                let mut end = nl;
                if end > self.pos && self.buf[end - 1] == b'\r' {
                    end -= 1;
                } else if crlf {
                    return Err("a line ends in LF without CR".into());
                }
                if end - self.pos > limit {
                    return Err(ParseError::Malformed(format!("a line longer than {limit} bytes")));
                }
                let start = self.pos;
                self.pos = nl + 1;
                self.scan = self.pos;
                Ok(Some((start, end)))
            }
        }
    }

    fn start_bulk(&mut self, kind: BulkKind, len: usize, out: &mut Vec<RedisValue>) -> Result<(), ParseError> {
        let available = self.buf.len() - self.pos;
        if available >= len + 2 {
            let data = self.buf[self.pos..self.pos + len + 2].to_vec();
            self.pos += len + 2;
            self.scan = self.pos;
            let value = finish_bulk(PendingBulk { kind, len, data })?;
            return self.complete(value, out);
        }
        // The payload goes straight into its own buffer from now on.
        let mut data = Vec::with_capacity((len + 2).min(4 * 1024 * 1024));
        data.extend_from_slice(&self.buf[self.pos..]);
        self.pos = self.buf.len();
        self.scan = self.pos;
        self.bulk = Some(PendingBulk { kind, len, data });
        Ok(())
    }

    fn open(&mut self, kind: OpenKind, expected: usize, out: &mut Vec<RedisValue>) -> Result<(), ParseError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(ParseError::Malformed(format!("values nested more than {MAX_DEPTH} deep")));
        }
        let open = Open { kind, expected, items: Vec::with_capacity(expected.min(1024)) };
        if expected == 0 {
            return match finish(open) {
                Finished::Value(v) => self.complete(v, out),
                Finished::Reopen(o) => {
                    self.stack.push(o);
                    Ok(())
                }
            };
        }
        self.stack.push(open);
        Ok(())
    }

    /// A value is complete: it goes into the aggregate being built, or out when it is a top-level value.
    fn complete(&mut self, mut value: RedisValue, out: &mut Vec<RedisValue>) -> Result<(), ParseError> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                out.push(value);
                return Ok(());
            };
            top.items.push(value);
            if top.items.len() < top.expected {
                return Ok(());
            }
            let Some(done) = self.stack.pop() else { return Ok(()) };
            match finish(done) {
                Finished::Value(v) => value = v,
                Finished::Reopen(o) => {
                    self.stack.push(o);
                    return Ok(());
                }
            }
        }
    }
}

/// A RESP line: a whole value, or the header of a bulk string or an aggregate.
enum Line {
    Value(RedisValue),
    Bulk(u8, i64),
    Aggregate(u8, i64),
}

enum Finished {
    Value(RedisValue),
    /// Attributes are done; the value they describe comes next.
    Reopen(Open),
}

fn pairs(items: Vec<RedisValue>) -> Vec<(RedisValue, RedisValue)> {
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    out
}

fn finish(open: Open) -> Finished {
    Finished::Value(match open.kind {
        OpenKind::Array => RedisValue::Array(open.items),
        OpenKind::Set => RedisValue::Set(open.items),
        OpenKind::Push => RedisValue::Push(open.items),
        OpenKind::Map => RedisValue::Map(pairs(open.items)),
        OpenKind::Attributes => {
            return Finished::Reopen(Open {
                kind: OpenKind::Attributed(pairs(open.items)),
                expected: 1,
                items: Vec::with_capacity(1),
            });
        }
        OpenKind::Attributed(attributes) => {
            let value = open.items.into_iter().next().unwrap_or(RedisValue::Nil);
            RedisValue::Attributed { attributes, value: Box::new(value) }
        }
    })
}

fn finish_bulk(mut b: PendingBulk) -> Result<RedisValue, ParseError> {
    if b.data.get(b.len..) != Some(b"\r\n") {
        return Err("a bulk string is not followed by CRLF".into());
    }
    b.data.truncate(b.len);
    Ok(match b.kind {
        BulkKind::Bulk => RedisValue::Bulk(b.data),
        BulkKind::BlobError => RedisValue::BlobError(b.data),
        BulkKind::Verbatim => RedisValue::Verbatim(b.data),
    })
}

fn parse_int(bytes: &[u8]) -> Result<i64, ParseError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ParseError::Malformed(format!("bad number {:?}", String::from_utf8_lossy(bytes))))
}

fn text(bytes: &[u8]) -> Result<String, ParseError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ParseError::Malformed("a number that is not text".into()))
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Splits an inline command the way Redis does: words separated by spaces, `"..."` with backslash escapes
/// (`\n`, `\xHH`, ...), `'...'` with `\'`.
pub fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ParseError> {
    let mut args = Vec::new();
    let mut i = 0;
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    loop {
        while i < line.len() && space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err("unbalanced quotes in an inline command".into()),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if i + 3 < line.len() && line[i + 1] == b'x' => {
                            match (hex(line[i + 2]), hex(line[i + 3])) {
                                (Some(h), Some(l)) => {
                                    arg.push(h * 16 + l);
                                    i += 4;
                                }
                                _ => {
                                    arg.push(b'x');
                                    i += 2;
                                }
                            }
                        }
                        Some(b'\\') if i + 1 < line.len() => {
                            arg.push(match line[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 0x08,
                                b'a' => 0x07,
                                other => other,
                            });
                            i += 2;
                        }
                        Some(&c) => {
                            arg.push(c);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err("unbalanced quotes in an inline command".into()),
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                            arg.push(b'\'');
                            i += 2;
                        }
                        Some(&c) => {
                            arg.push(c);
                            i += 1;
                        }
                    }
                }
            }
            _ => {
                while i < line.len() && !space(line[i]) {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        // A closing quote must end the word.
        if i < line.len() && !space(line[i]) {
            return Err("unbalanced quotes in an inline command".into());
        }
        args.push(arg);
    }
}

/// Reads a bulk string kept in a file of the test set: (path, size) -> bytes.
pub type FileLoader<'a> = dyn FnMut(&str, u64) -> crate::error::Result<Vec<u8>> + 'a;

/// Appends the RESP encoding of `value`. File bulks are read through `file`.
pub fn encode_with(value: &RedisValue, out: &mut Vec<u8>, file: &mut FileLoader) -> crate::error::Result<()> {
    fn head(out: &mut Vec<u8>, kind: u8, n: usize) {
        out.push(kind);
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    fn blob(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
        head(out, kind, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    fn line(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
        out.push(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    match value {
        RedisValue::Simple(s) => line(out, b'+', s),
        RedisValue::Error(s) => line(out, b'-', s),
        RedisValue::Integer(n) => line(out, b':', n.to_string().as_bytes()),
        RedisValue::Bulk(b) => blob(out, b'$', b),
        RedisValue::BulkFile { file: path, size } => blob(out, b'$', &file(path, *size)?),
        RedisValue::Null => out.extend_from_slice(b"$-1\r\n"),
        RedisValue::NullArray => out.extend_from_slice(b"*-1\r\n"),
        RedisValue::Nil => out.extend_from_slice(b"_\r\n"),
        RedisValue::Double(d) => line(out, b',', d.as_bytes()),
        RedisValue::Boolean(b) => line(out, b'#', if *b { b"t" } else { b"f" }),
        RedisValue::BigNumber(n) => line(out, b'(', n.as_bytes()),
        RedisValue::BlobError(b) => blob(out, b'!', b),
        RedisValue::Verbatim(b) => blob(out, b'=', b),
        RedisValue::Array(items) | RedisValue::Set(items) | RedisValue::Push(items) => {
            let kind = match value {
                RedisValue::Array(_) => b'*',
                RedisValue::Set(_) => b'~',
                _ => b'>',
            };
            head(out, kind, items.len());
            for v in items {
                encode_with(v, out, file)?;
            }
        }
        RedisValue::Map(entries) => {
            head(out, b'%', entries.len());
            for (k, v) in entries {
                encode_with(k, out, file)?;
                encode_with(v, out, file)?;
            }
        }
        RedisValue::Attributed { attributes, value } => {
            head(out, b'|', attributes.len());
            for (k, v) in attributes {
                encode_with(k, out, file)?;
                encode_with(v, out, file)?;
            }
            encode_with(value, out, file)?;
        }
    }
    Ok(())
}

/// The RESP encoding of a value held in memory (no file bulks).
#[cfg(test)]
pub fn encode(value: &RedisValue) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = encode_with(value, &mut out, &mut |path, _| {
        Err(crate::error::Error::internal(format!("{path} is not loaded")))
    });
    out
}

/// A command as a client sends it: an array of bulk strings.
#[cfg(test)]
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    encode(&RedisValue::Array(args.iter().map(|a| RedisValue::Bulk(a.to_vec())).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::redis::bulk;
    use proptest::prelude::*;

    fn decode_all(side: Side, pieces: &[&[u8]]) -> Result<Vec<RedisValue>, ParseError> {
        let mut d = Decoder::new(side);
        let mut out = Vec::new();
        for p in pieces {
            d.feed(p, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn decodes_every_resp3_type() {
        let wire =
            b"+OK\r\n-ERR no\r\n:-7\r\n$5\r\nhello\r\n$-1\r\n*-1\r\n_\r\n,1.5\r\n#t\r\n(12345678901234567890\r\n\
!3\r\nbad\r\n=7\r\ntxt:abc\r\n*2\r\n$1\r\na\r\n:1\r\n%1\r\n$1\r\nk\r\n~1\r\n:2\r\n>2\r\n$7\r\nmessage\r\n$0\r\n\r\n\
|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n*0\r\n";
        let values = decode_all(Side::Server, &[wire]).unwrap();
        let expected = vec![
            RedisValue::Simple(b"OK".to_vec()),
            RedisValue::Error(b"ERR no".to_vec()),
            RedisValue::Integer(-7),
            bulk("hello"),
            RedisValue::Null,
            RedisValue::NullArray,
            RedisValue::Nil,
            RedisValue::Double("1.5".into()),
            RedisValue::Boolean(true),
            RedisValue::BigNumber("12345678901234567890".into()),
            RedisValue::BlobError(b"bad".to_vec()),
            RedisValue::Verbatim(b"txt:abc".to_vec()),
            RedisValue::Array(vec![bulk("a"), RedisValue::Integer(1)]),
            RedisValue::Map(vec![(bulk("k"), RedisValue::Set(vec![RedisValue::Integer(2)]))]),
            RedisValue::Push(vec![bulk("message"), bulk("")]),
            RedisValue::Attributed {
                attributes: vec![(RedisValue::Simple(b"ttl".to_vec()), RedisValue::Integer(3))],
                value: Box::new(bulk("v")),
            },
            RedisValue::Array(vec![]),
        ];
        assert_eq!(values, expected);
        let mut again = Vec::new();
        for v in &expected {
            again.extend_from_slice(&encode(v));
        }
        assert_eq!(again, wire.to_vec());
    }

    #[test]
    fn client_commands_and_inline() {
        let wire =
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\nPING\r\n\r\nset \"a b\" 'c\\'d' \"\\x41\\n\"\nget k\r\n*0\r\n";
        let values = decode_all(Side::Client, &[wire]).unwrap();
        let cmd = |a: &[&str]| RedisValue::Array(a.iter().map(|s| bulk(s)).collect());
        assert_eq!(
            values,
            vec![cmd(&["SET", "k", "v1"]), cmd(&["PING"]), cmd(&["set", "a b", "c'd", "A\n"]), cmd(&["get", "k"])]
        );
        assert!(decode_all(Side::Client, &[b"*1\r\n:1\r\n"]).is_err(), "commands are bulk strings");
        assert!(decode_all(Side::Client, &[b"set \"a\n"]).is_err(), "unbalanced quotes");
        assert!(decode_all(Side::Client, &[b"*1\r\n*1\r\n$1\r\na\r\n"]).is_err(), "no nested arrays in commands");
    }

    #[test]
    fn limits_are_errors_not_allocations() {
        assert!(decode_all(Side::Server, &[b"$99999999999\r\n"]).is_err());
        assert!(decode_all(Side::Server, &[b"*-5\r\n"]).is_err());
        // A huge announced array allocates nothing up front.
        let mut d = Decoder::new(Side::Server);
        d.feed(b"*2147483647\r\n", &mut Vec::new()).unwrap();
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(decode_all(Side::Server, &[&deep]).is_err());
        assert!(decode_all(Side::Client, &[&vec![b'a'; MAX_INLINE + 2]]).is_err());
    }

    #[test]
    fn large_bulk_arrives_in_pieces() {
        let value = RedisValue::Bulk((0..3_000_000u32).map(|i| (i % 251) as u8).collect());
        let wire = encode(&value);
        let pieces: Vec<&[u8]> = wire.chunks(65536).collect();
        assert_eq!(decode_all(Side::Server, &pieces).unwrap(), vec![value]);
    }

    fn leaf() -> impl Strategy<Value = RedisValue> {
        let line =
            proptest::collection::vec(any::<u8>().prop_filter("no line ends", |b| *b != b'\r' && *b != b'\n'), 0..12);
        prop_oneof![
            line.clone().prop_map(RedisValue::Simple),
            line.prop_map(RedisValue::Error),
            any::<i64>().prop_map(RedisValue::Integer),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(RedisValue::Bulk),
            Just(RedisValue::Null),
            Just(RedisValue::NullArray),
            Just(RedisValue::Nil),
            "(-?[0-9]{1,5}(\\.[0-9]{1,3})?|inf|-inf|nan)".prop_map(RedisValue::Double),
            any::<bool>().prop_map(RedisValue::Boolean),
            "-?[0-9]{1,30}".prop_map(RedisValue::BigNumber),
            proptest::collection::vec(any::<u8>(), 0..10).prop_map(RedisValue::BlobError),
            "(txt|mkd):[a-z\r\n]{0,10}".prop_map(|s| RedisValue::Verbatim(s.into_bytes())),
        ]
    }

    fn value() -> impl Strategy<Value = RedisValue> {
        leaf().prop_recursive(4, 40, 6, |inner| {
            let items = proptest::collection::vec(inner.clone(), 0..6);
            let entries = proptest::collection::vec((inner.clone(), inner.clone()), 0..4);
            prop_oneof![
                items.clone().prop_map(RedisValue::Array),
                items.clone().prop_map(RedisValue::Set),
                items.prop_map(RedisValue::Push),
                entries.clone().prop_map(RedisValue::Map),
                (entries.prop_filter("attributes are not empty", |e| !e.is_empty()), inner)
                    .prop_map(|(attributes, v)| RedisValue::Attributed { attributes, value: Box::new(v) }),
            ]
        })
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity_at_any_split(values in proptest::collection::vec(value(), 1..5), cut in any::<prop::sample::Index>()) {
            let mut wire = Vec::new();
            for v in &values {
                wire.extend_from_slice(&encode(v));
            }
            prop_assert_eq!(&decode_all(Side::Server, &[&wire]).unwrap(), &values);
            let at = cut.index(wire.len() + 1);
            prop_assert_eq!(&decode_all(Side::Server, &[&wire[..at], &wire[at..]]).unwrap(), &values);
        }

        #[test]
        fn byte_by_byte_equals_whole(values in proptest::collection::vec(value(), 1..3)) {
            let mut wire = Vec::new();
            for v in &values {
                wire.extend_from_slice(&encode(v));
            }
            let pieces: Vec<&[u8]> = wire.chunks(1).collect();
            prop_assert_eq!(decode_all(Side::Server, &pieces).unwrap(), values);
        }

        #[test]
        fn commands_split_anywhere(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 1..6), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4)) {
            let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
            let one = encode_command(&refs);
            let wire = [one.clone(), one].concat();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for p in points {
                pieces.push(&wire[last..p]);
                last = p;
            }
            pieces.push(&wire[last..]);
            let expected = RedisValue::Array(args.into_iter().map(RedisValue::Bulk).collect());
            prop_assert_eq!(decode_all(Side::Client, &pieces).unwrap(), vec![expected.clone(), expected]);
        }

        #[test]
        fn yaml_keeps_every_value(values in proptest::collection::vec(value(), 1..4)) {
            let mock = crate::protocols::redis::RedisMock {
                command: vec![RedisValue::Bulk(b"GET".to_vec())],
                reply: Some(RedisValue::Array(values)),
                ..crate::protocols::redis::RedisMock::default()
            };
            let yaml = crate::store::to_yaml(&mock).unwrap();
            let back: crate::protocols::redis::RedisMock =
                crate::store::parse_yaml(&yaml, std::path::Path::new("mocks.yaml"), 1).unwrap();
            prop_assert_eq!(back, mock, "{}", yaml);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), at in any::<prop::sample::Index>()) {
            let at = at.index(bytes.len() + 1);
            for side in [Side::Client, Side::Server] {
                let _ = decode_all(side, &[&bytes[..at], &bytes[at..]]);
            }
        }

        #[test]
        fn resp_shaped_garbage_never_panics(parts in proptest::collection::vec(prop_oneof![
            Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"%".to_vec()), Just(b"|".to_vec()), Just(b">".to_vec()),
            Just(b"\r\n".to_vec()), Just(b"-1".to_vec()), Just(b"3".to_vec()), Just(b"\"".to_vec()), Just(b"a ".to_vec()),
        ], 0..40)) {
            let bytes = parts.concat();
            for side in [Side::Client, Side::Server] {
                let pieces: Vec<&[u8]> = bytes.chunks(3).collect();
                let _ = decode_all(side, &pieces);
            }
        }
    }
}
