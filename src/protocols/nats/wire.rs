//! The NATS client protocol on the wire: a text protocol of `\r\n`-ended control lines (operation names in
//! any case, arguments separated by spaces or tabs), some followed by a payload whose length the line gives.
//! The decoder is incremental: bytes may arrive cut anywhere.

use serde_json::Value;

/// Control lines longer than this are refused (nats-server's default `max_control_line` is 4 KiB; INFO
/// and CONNECT carry JSON that may be larger).
const MAX_LINE: usize = 1024 * 1024;
/// Payloads larger than this are refused (nats-server's `max_payload` cannot exceed 64 MiB).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// The header block of HPUB/HMSG: `NATS/1.0[ status[ description]]`, then `Name: value` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// What follows `NATS/1.0` on the first line (`503`, `408 Request Timeout`), if anything.
    pub status: Option<String>,
    /// `Name: value` lines, in order and case as sent.
    pub lines: Vec<String>,
}

impl Headers {
    fn parse(block: &[u8]) -> Result<Headers, String> {
        let text = std::str::from_utf8(block).map_err(|_| "a NATS header block that is not UTF-8".to_string())?;
        let mut lines = text.split("\r\n");
        let first = lines.next().unwrap_or("");
        let rest = first.strip_prefix("NATS/1.0").ok_or_else(|| format!("a header block starting {first:?}"))?;
        let status = Some(rest.trim()).filter(|s| !s.is_empty()).map(str::to_string);
        let lines = lines.filter(|l| !l.is_empty()).map(str::to_string).collect();
        Ok(Headers { status, lines })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = b"NATS/1.0".to_vec();
        if let Some(s) = &self.status {
            out.push(b' ');
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        for l in &self.lines {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// A message as published (PUB/HPUB) or delivered (MSG/HMSG).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub reply_to: Option<String>,
    /// Set for HPUB/HMSG.
    pub headers: Option<Headers>,
    pub payload: Vec<u8>,
}

/// One operation of either side.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Info(Value),
    Connect(Value),
    Ping,
    Pong,
    Ok,
    Err(String),
    Sub { subject: String, queue: Option<String>, sid: String },
    Unsub { sid: String, max: Option<u64> },
    Pub(Message),
    Msg { sid: String, message: Message },
}

/// Which side's operations a decoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Decodes one direction of a connection as bytes arrive.
pub struct Decoder {
    side: Side,
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new(side: Side) -> Decoder {
        Decoder { side, buf: Vec::new() }
    }

    /// Takes the next bytes and appends every operation they complete to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Op>) -> Result<(), String> {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        let result = loop {
            // Blank lines between operations carry nothing (nats-server skips stray line ends too).
            at += self.buf[at..].iter().take_while(|b| b.is_ascii_whitespace()).count();
            match parse_one(self.side, &self.buf[at..]) {
                Ok(Some((op, used))) => {
                    out.push(op);
                    at += used;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..at);
        result
    }
}

/// The arguments of a control line.
fn args(line: &str) -> Vec<&str> {
    line.split([' ', '\t']).filter(|a| !a.is_empty()).collect()
}

fn size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("a size that is not a number: {s:?}"))?;
    if n > MAX_PAYLOAD {
        return Err(format!("a {n}-byte NATS payload"));
    }
    Ok(n)
}

/// One operation from the front of `buf` and the bytes it used, or `None` until it is complete.
fn parse_one(side: Side, buf: &[u8]) -> Result<Option<(Op, usize)>, String> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > MAX_LINE {
            return Err(format!("a NATS control line longer than {MAX_LINE} bytes"));
        }
        return Ok(None);
    };
    let raw = &buf[..nl];
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let line = std::str::from_utf8(raw).map_err(|_| "a NATS control line that is not UTF-8".to_string())?;
    let line = line.trim_start_matches([' ', '\t']);
    let head_len = line.find([' ', '\t']).unwrap_or(line.len());
    let name = line[..head_len].to_ascii_uppercase();
    let rest = &line[head_len..];
    let after_line = nl + 1;
    let done = |op| Ok(Some((op, after_line)));
    let json = |what: &str| {
        serde_json::from_str::<Value>(rest.trim()).map_err(|e| format!("{what} with unreadable JSON: {e}"))
    };
    match (side, name.as_str()) {
        (_, "PING") => done(Op::Ping),
        (_, "PONG") => done(Op::Pong),
        (Side::Server, "INFO") => done(Op::Info(json("INFO")?)),
        (Side::Server, "+OK") => done(Op::Ok),
        (Side::Server, "-ERR") => done(Op::Err(rest.trim().to_string())),
        (Side::Client, "CONNECT") => done(Op::Connect(json("CONNECT")?)),
        (Side::Client, "SUB") => match args(rest).as_slice() {
            [subject, sid] => done(Op::Sub { subject: subject.to_string(), queue: None, sid: sid.to_string() }),
            [subject, queue, sid] => done(Op::Sub {
                subject: subject.to_string(),
                queue: Some(queue.to_string()),
                sid: sid.to_string(),
            }),
            _ => Err(format!("a SUB line with unexpected arguments: {line:?}")),
        },
        (Side::Client, "UNSUB") => match args(rest).as_slice() {
            [sid] => done(Op::Unsub { sid: sid.to_string(), max: None }),
            [sid, max] => {
                let max = max.parse().map_err(|_| format!("an UNSUB with a bad count: {line:?}"))?;
                done(Op::Unsub { sid: sid.to_string(), max: Some(max) })
            }
            _ => Err(format!("an UNSUB line with unexpected arguments: {line:?}")),
        },
        (Side::Client, "PUB" | "HPUB") | (Side::Server, "MSG" | "HMSG") => {
            let with_headers = name.starts_with('H');
            let delivery = side == Side::Server;
            let a = args(rest);
            // PUB subject [reply] size; HPUB subject [reply] hsize size; MSG subject sid [reply] size; ...
            let fixed = 1 + usize::from(delivery) + 1 + usize::from(with_headers);
            if a.len() != fixed && a.len() != fixed + 1 {
                return Err(format!("a {name} line with unexpected arguments: {line:?}"));
            }
            let has_reply = a.len() == fixed + 1;
            let sizes_at = 1 + usize::from(delivery) + usize::from(has_reply);
            let total = size(a[a.len() - 1])?;
            let header_len = if with_headers { size(a[sizes_at])? } else { 0 };
            if header_len > total {
                return Err(format!("a {name} whose headers are longer than the message: {line:?}"));
            }
            let end = after_line + total;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(format!("a {name} payload not followed by CRLF: {line:?}"));
            }
            let headers = if with_headers { Some(Headers::parse(&buf[after_line..after_line + header_len])?) } else { None };
            let message = Message {
                subject: a[0].to_string(),
                reply_to: has_reply.then(|| a[sizes_at - 1].to_string()),
                headers,
                payload: buf[after_line + header_len..end].to_vec(),
            };
            let op = if delivery { Op::Msg { sid: a[1].to_string(), message } } else { Op::Pub(message) };
            Ok(Some((op, end + 2)))
        }
        _ => Err(format!("an unknown NATS operation {:?}", line.chars().take(40).collect::<String>())),
    }
}

/// A message as PUB/HPUB (`sid` none) or MSG/HMSG send it: the control line, then headers and payload.
fn encode(sid: Option<&str>, message: &Message) -> Vec<u8> {
    let headers = message.headers.as_ref().map(Headers::encode);
    let mut body = headers.clone().unwrap_or_default();
    body.extend_from_slice(&message.payload);
    let sizes = match &headers {
        Some(h) => format!("{} {}", h.len(), body.len()),
        None => body.len().to_string(),
    };
    let op = match (sid.is_some(), headers.is_some()) {
        (true, true) => "HMSG",
        (true, false) => "MSG",
        (false, true) => "HPUB",
        (false, false) => "PUB",
    };
    let mut line = format!("{op} {}", message.subject);
    for arg in [sid, message.reply_to.as_deref()].into_iter().flatten() {
        line.push(' ');
        line.push_str(arg);
    }
    let mut out = format!("{line} {sizes}\r\n").into_bytes();
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\r\n");
    out
}

/// `MSG subject sid [reply] size` (or HMSG), then the payload.
pub fn encode_msg(sid: &str, message: &Message) -> Vec<u8> {
    encode(Some(sid), message)
}

/// `PUB subject [reply] size` (or HPUB), then the payload.
#[cfg(test)]
pub fn encode_pub(message: &Message) -> Vec<u8> {
    encode(None, message)
}
