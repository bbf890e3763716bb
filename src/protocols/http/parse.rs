//! Incremental HTTP/1.x message framing for both directions: heads parsed with `httparse`, bodies framed by
//! Content-Length, chunked encoding (with trailers) or connection close. Bytes may arrive split anywhere.

use crate::protocols::ParseError;
use std::collections::VecDeque;

use crate::protocols::http::Header;

/// Largest head accepted; beyond it the stream is not HTTP doppel can follow.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<Header>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: String,
    pub version: String,
    pub headers: Vec<Header>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Request(RequestHead),
    Response(ResponseHead),
    /// A piece of the (de-chunked) body.
    Body(Vec<u8>),
    Trailers(Vec<Header>),
    /// The message is complete.
    End,
    /// The connection stops being HTTP (101 Switching Protocols, CONNECT tunnel): what follows is opaque.
    Upgrade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    UntilClose,
    /// After an upgrade: nothing more is parsed.
    Opaque,
}

/// Parses one direction of an HTTP/1 connection.
pub struct Parser {
    side: Side,
    state: State,
    buf: Vec<u8>,
    /// For responses: methods of requests not answered yet (HEAD and CONNECT change response framing).
    methods: VecDeque<String>,
}

fn version_str(v: Option<u8>) -> String {
    match v {
        Some(0) => "HTTP/1.0".into(),
        _ => "HTTP/1.1".into(),
    }
}

fn headers_of(h: &[httparse::Header<'_>]) -> Vec<Header> {
    h.iter().map(|h| Header::new(h.name, h.value)).collect()
}

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| &h.value[..])
}

fn is_chunked(headers: &[Header]) -> bool {
    headers.iter().filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding")).any(|h| {
        String::from_utf8_lossy(&h.value)
            .rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    })
}

fn content_length(headers: &[Header]) -> Result<Option<u64>, ParseError> {
    match header(headers, "content-length") {
        None => Ok(None),
        Some(v) => {
            std::str::from_utf8(v).ok().and_then(|s| s.trim().parse::<u64>().ok()).map(Some).ok_or_else(|| {
                ParseError::Malformed(format!("invalid Content-Length {:?}", String::from_utf8_lossy(v)))
            })
        }
    }
}

impl Parser {
    pub fn new(side: Side) -> Parser {
        Parser { side, state: State::Head, buf: Vec::new(), methods: VecDeque::new() }
    }

    /// For a response parser: a request with this method was sent and awaits its response.
    pub fn expect_response_to(&mut self, method: &str) {
        self.methods.push_back(method.to_string());
    }

    /// Feeds bytes; complete events are appended to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Event>) -> Result<(), ParseError> {
        if self.state == State::Opaque {
            return Ok(());
        }
        if self.buf.is_empty() {
            // Common case: nothing partial is pending, so body bytes are passed on without buffering.
            let consumed = self.run(data, out)?;
            self.buf.extend_from_slice(&data[consumed..]);
        } else {
            self.buf.extend_from_slice(data);
            let buffered = std::mem::take(&mut self.buf);
            let consumed = self.run(&buffered, out)?;
            self.buf = buffered[consumed..].to_vec();
        }
        if self.buf.len() > MAX_HEAD && self.state != State::Opaque {
            return Err(ParseError::Malformed(format!("HTTP {} head larger than {MAX_HEAD} bytes", self.side_name())));
        }
        Ok(())
    }

    /// Bytes received after an upgrade's head, which belong to the new protocol.
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    fn side_name(&self) -> &'static str {
        match self.side {
            Side::Request => "request",
            Side::Response => "response",
        }
    }

    /// The peer closed the connection: ends a body delimited by close.
    pub fn finish(&mut self, out: &mut Vec<Event>) -> Result<(), ParseError> {
        match self.state {
            State::UntilClose => {
                self.state = State::Head;
                out.push(Event::End);
                Ok(())
            }
            State::Head if self.buf.is_empty() => Ok(()),
            State::Opaque => Ok(()),
            _ => Err(ParseError::Malformed(format!("connection closed in the middle of an HTTP {}", self.side_name()))),
        }
    }

    /// Consumes as much of `data` as forms complete pieces; returns how many bytes were used.
    fn run(&mut self, data: &[u8], out: &mut Vec<Event>) -> Result<usize, ParseError> {
        let mut pos = 0;
        loop {
            let rest = &data[pos..];
            match self.state.clone() {
                // What follows an upgrade is kept (unconsumed) for the next protocol: see `take_rest`.
                State::Opaque => return Ok(pos),
                State::Head => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    // Tolerate blank lines between messages (RFC 9112 section 2.2).
                    if rest[0] == b'\r' || rest[0] == b'\n' {
                        pos += 1;
                        continue;
                    }
                    match self.parse_head(rest, out)? {
                        Some(n) => pos += n,
                        None => {
                            if rest.len() > MAX_HEAD {
                                return Err(ParseError::Malformed(format!(
                                    "HTTP {} head larger than {MAX_HEAD} bytes",
                                    self.side_name()
                                )));
                            }
                            return Ok(pos);
                        }
                    }
                }
                State::Fixed(left) => {
                    let Some(n) = body_part(left, rest, out) else { return Ok(pos) };
                    pos += n;
                    if left as usize == n {
                        self.state = State::Head;
                        out.push(Event::End);
                    } else {
                        self.state = State::Fixed(left - n as u64);
                    }
                }
                State::UntilClose => {
                    if !rest.is_empty() {
                        out.push(Event::Body(rest.to_vec()));
                    }
                    return Ok(data.len());
                }
                State::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        pos += n;
                        self.state = if size == 0 { State::Trailers } else { State::ChunkData(size) };
                    }
                    Ok(httparse::Status::Partial) => {
                        if rest.len() > 1024 {
                            return Err("chunk size line too long".into());
                        }
                        return Ok(pos);
                    }
                    Err(_) => return Err("invalid chunk size line".into()),
                },
                State::ChunkData(left) => {
                    let Some(n) = body_part(left, rest, out) else { return Ok(pos) };
                    pos += n;
                    self.state =
                        if left as usize == n { State::ChunkDataEnd } else { State::ChunkData(left - n as u64) };
                }
                State::ChunkDataEnd => {
                    if rest.len() < 2 {
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF".into());
                    }
                    pos += 2;
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    if rest.starts_with(b"\r\n") {
                        pos += 2;
                        self.state = State::Head;
                        out.push(Event::End);
                        continue;
                    }
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(rest, &mut headers) {
                        Ok(httparse::Status::Complete((n, h))) => {
                            out.push(Event::Trailers(headers_of(h)));
                            pos += n;
                            self.state = State::Head;
                            out.push(Event::End);
                        }
                        Ok(httparse::Status::Partial) => return Ok(pos),
                        Err(e) => return Err(ParseError::Malformed(format!("invalid trailers: {e}"))),
                    }
                }
            }
        }
    }

    /// Parses a head at the start of `data`; `None` if incomplete.
    fn parse_head(&mut self, data: &[u8], out: &mut Vec<Event>) -> Result<Option<usize>, ParseError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match self.side {
            Side::Request => {
                let mut req = httparse::Request::new(&mut headers);
                let Some(n) = parsed(req.parse(data), "request")? else { return Ok(None) };
                let head = RequestHead {
                    method: req.method.unwrap_or_default().to_string(),
                    target: req.path.unwrap_or_default().to_string(),
                    version: version_str(req.version),
                    headers: headers_of(req.headers),
                };
                let framing = if is_chunked(&head.headers) {
                    State::ChunkSize
                } else {
                    match content_length(&head.headers)? {
                        Some(0) | None => State::Head,
                        Some(len) => State::Fixed(len),
                    }
                };
                let connect = head.method.eq_ignore_ascii_case("CONNECT");
                out.push(Event::Request(head));
                if framing == State::Head {
                    out.push(Event::End);
                }
                // After CONNECT the client's bytes belong to the tunnel (if the server agrees); either way this
                // side is no longer HTTP we can follow.
                self.state = if connect { State::Opaque } else { framing };
                Ok(Some(n))
            }
            Side::Response => {
                let mut resp = httparse::Response::new(&mut headers);
                let Some(n) = parsed(resp.parse(data), "response")? else { return Ok(None) };
                let status = resp.code.unwrap_or(0);
                let head = ResponseHead {
                    status,
                    reason: resp.reason.unwrap_or_default().to_string(),
                    version: version_str(resp.version),
                    headers: headers_of(resp.headers),
                };
                if (100..200).contains(&status) && status != 101 {
                    // Interim response (100 Continue, 103 Early Hints): not the answer; skipped.
                    return Ok(Some(n));
                }
                let method = self.methods.pop_front().unwrap_or_default();
                if status == 101 || (method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&status)) {
                    out.push(Event::Response(head));
                    out.push(Event::End);
                    out.push(Event::Upgrade);
                    self.state = State::Opaque;
                    return Ok(Some(n));
                }
                let no_body = method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304;
                let framing = if no_body {
                    State::Head
                } else if is_chunked(&head.headers) {
                    State::ChunkSize
                } else {
                    match content_length(&head.headers)? {
                        Some(0) => State::Head,
                        Some(len) => State::Fixed(len),
                        None => State::UntilClose,
                    }
                };
                out.push(Event::Response(head));
                if framing == State::Head {
                    out.push(Event::End);
                }
                self.state = framing;
                Ok(Some(n))
            }
        }
    }
}

/// The length of a complete head; `None` while it is incomplete.
fn parsed(r: httparse::Result<usize>, what: &str) -> Result<Option<usize>, ParseError> {
    match r {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(ParseError::Malformed(format!("not an HTTP/1 {what}: {e}"))),
    }
}

/// Up to `left` more body bytes from `rest`, as an event: how many, or `None` when `rest` is empty.
fn body_part(left: u64, rest: &[u8], out: &mut Vec<Event>) -> Option<usize> {
    if rest.is_empty() {
        return None;
    }
    let n = (left as usize).min(rest.len());
    out.push(Event::Body(rest[..n].to_vec()));
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(side: Side, data: &[u8], splits: &[usize], methods: &[&str]) -> Result<Vec<Event>, ParseError> {
        let mut p = Parser::new(side);
        for m in methods {
            p.expect_response_to(m);
        }
        let mut out = Vec::new();
        let mut last = 0;
        for &s in splits.iter().chain(std::iter::once(&data.len())) {
            let s = s.clamp(last, data.len());
            p.feed(&data[last..s], &mut out)?;
            last = s;
        }
        p.finish(&mut out)?;
        Ok(merge_bodies(out))
    }

    /// Adjacent body pieces joined, so different splits compare equal.
    fn merge_bodies(events: Vec<Event>) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for e in events {
            if let (Event::Body(b), Some(Event::Body(prev))) = (&e, out.last_mut()) {
                prev.extend_from_slice(b);
                continue;
            }
            out.push(e);
        }
        out
    }

    const PIPELINE: &[u8] = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Sum: 9\r\n\r\n";

    #[test]
    fn requests_pipelined_with_all_framings() {
        let ev = parse_all(Side::Request, PIPELINE, &[], &[]).unwrap();
        let heads: Vec<_> =
            ev.iter().filter_map(|e| if let Event::Request(h) = e { Some(h.target.clone()) } else { None }).collect();
        assert_eq!(heads, ["/a?x=1", "/b", "/c"]);
        assert!(ev.contains(&Event::Body(b"hello".to_vec())));
        assert!(ev.contains(&Event::Body(b"abcde".to_vec())));
        assert!(ev.contains(&Event::Trailers(vec![Header::new("X-Sum", "9")])));
        assert_eq!(ev.iter().filter(|e| **e == Event::End).count(), 3);
    }

    #[test]
    fn responses_to_head_and_until_close() {
        let data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close";
        let ev = parse_all(Side::Response, data, &[], &["HEAD", "GET", "GET"]).unwrap();
        let ends = ev.iter().filter(|e| **e == Event::End).count();
        assert_eq!(ends, 3);
        assert_eq!(ev.last(), Some(&Event::End));
        assert!(ev.contains(&Event::Body(b"until close".to_vec())));
    }

    #[test]
    fn upgrade_stops_parsing() {
        let data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
        let ev = parse_all(Side::Response, data, &[], &["GET"]).unwrap();
        assert_eq!(ev.last(), Some(&Event::Upgrade));
    }

    #[test]
    fn bytes_after_an_upgrade_in_the_same_read_are_kept_for_the_next_protocol() {
        let mut p = Parser::new(Side::Response);
        p.expect_response_to("GET");
        let mut out = Vec::new();
        p.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n\x00\x00\x00\x04", &mut out).unwrap();
        assert_eq!(out.last(), Some(&Event::Upgrade));
        assert_eq!(p.take_rest(), b"\x00\x00\x00\x04");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_all(Side::Request, b"\x16\x03\x01\x00\xa5\x01\x00\x00", &[], &[]).is_err());
        assert!(parse_all(Side::Request, b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", &[], &[]).is_err());
        assert!(parse_all(Side::Request, b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc", &[], &[]).is_err());
    }

    #[test]
    fn split_at_every_byte_gives_the_same_events() {
        let whole = parse_all(Side::Request, PIPELINE, &[], &[]).unwrap();
        for i in 0..PIPELINE.len() {
            assert_eq!(parse_all(Side::Request, PIPELINE, &[i], &[]).unwrap(), whole, "split at {i}");
        }
        let one_by_one: Vec<usize> = (0..PIPELINE.len()).collect();
        assert_eq!(parse_all(Side::Request, PIPELINE, &one_by_one, &[]).unwrap(), whole);
    }

    proptest! {
        #[test]
        fn any_splits_of_any_chunked_body(body in proptest::collection::vec(any::<u8>(), 0..300), sizes in proptest::collection::vec(1usize..50, 1..10), splits in proptest::collection::vec(0usize..400, 0..6)) {
            let mut msg = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            let mut rest = &body[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                msg.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                msg.extend_from_slice(&rest[..n]);
                msg.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            msg.extend_from_slice(b"0\r\n\r\n");
            let mut splits = splits;
            splits.sort();
            let ev = parse_all(Side::Response, &msg, &splits, &["GET"]).unwrap();
            let got: Vec<u8> = ev.iter().filter_map(|e| if let Event::Body(b) = e { Some(b.clone()) } else { None }).flatten().collect();
            prop_assert_eq!(got, body);
            prop_assert_eq!(ev.last(), Some(&Event::End));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), split in 0usize..600) {
            let _ = parse_all(Side::Request, &data, &[split], &[]);
            let _ = parse_all(Side::Response, &data, &[split], &["GET"]);
        }
    }
}
