//! PostgreSQL wire protocol v3: incremental framing and the messages of both directions, decoded and encoded.
//!
//! Written here rather than taken from a crate: `postgres-protocol` only parses backend messages and only
//! encodes frontend ones, and `pgwire` decodes through its own server-side state machine. doppel needs both
//! directions decoded passively (the observer follows a connection it does not drive, one-byte SSL answers
//! included) and backend messages encoded (replay plays the server). The message layouts are fixed and small.

use crate::protocols::ParseError;

/// Protocol version 3.0 in a StartupMessage.
#[cfg(test)]
pub const PROTOCOL_3: i32 = 196_608;
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;

/// The largest message doppel accepts (the server's own limit is 1 GiB).
const MAX_MESSAGE: usize = 1 << 30;

/// Accumulates the bytes of one direction and hands out whole messages. Consumed bytes are dropped in
/// bulk, so buffering stays linear in the traffic.
#[derive(Default)]
pub struct Framer {
    buf: Vec<u8>,
    pos: usize,
}

impl Framer {
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// One byte (the server's answer to SSLRequest or GSSENCRequest).
    pub fn next_byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// A message of the startup phase: length (counting itself) then payload, no tag.
    pub fn next_untagged(&mut self) -> Result<Option<&[u8]>, ParseError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if !(8..=10_000).contains(&len) {
            return Err(ParseError::Malformed(format!("startup packet length {len} is not plausible")));
        }
        let len = len as usize;
        if rest.len() < len {
            return Ok(None);
        }
        let start = self.pos + 4;
        self.pos += len;
        Ok(Some(&self.buf[start..self.pos]))
    }

    /// A regular message: tag byte, length (counting itself, not the tag), body.
    pub fn next_tagged(&mut self) -> Result<Option<(u8, &[u8])>, ParseError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < 5 {
            return Ok(None);
        }
        let tag = rest[0];
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        if len < 4 || len as usize > MAX_MESSAGE {
            return Err(ParseError::Malformed(format!("message {:?} has an impossible length {len}", tag as char)));
        }
        let total = 1 + len as usize;
        if rest.len() < total {
            return Ok(None);
        }
        let start = self.pos + 5;
        self.pos += total;
        Ok(Some((tag, &self.buf[start..self.pos])))
    }
}

/// Reads the fields of a message body; every read is bounds-checked.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.data.len() - self.pos < n {
            return Err("message is shorter than its fields".into());
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }

    pub fn i16(&mut self) -> Result<i16, ParseError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, ParseError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count that must not be negative.
    pub fn count16(&mut self) -> Result<usize, ParseError> {
        let n = self.i16()?;
        usize::try_from(n).map_err(|_| ParseError::Malformed(format!("negative count {n}")))
    }

    /// A NUL-terminated string (lossy UTF-8: names and SQL are text; a stray byte must not stop recording).
    pub fn cstr(&mut self) -> Result<String, ParseError> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|b| *b == 0).ok_or("string without its terminating NUL")?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    /// A value prefixed by its length; -1 is NULL.
    pub fn value(&mut self) -> Result<Option<&'a [u8]>, ParseError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| ParseError::Malformed(format!("negative value length {len}")))?;
        Ok(Some(self.take(len)?))
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }
}

/// Format codes: 0 text, 1 binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Binary,
}

impl Format {
    pub fn from_code(code: i16) -> Format {
        if code == 1 { Format::Binary } else { Format::Text }
    }

    pub fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }

    /// The format of value `i` given a Bind-style list of codes (none: all text; one: all alike).
    pub fn nth(codes: &[i16], i: usize) -> Format {
        match codes {
            [] => Format::Text,
            [one] => Format::from_code(*one),
            many => Format::from_code(many.get(i).copied().unwrap_or(0)),
        }
    }
}

/// What a client sends before the tagged messages start.
#[derive(Debug, Clone, PartialEq)]
pub enum Startup {
    /// StartupMessage: protocol version and parameters (user, database, ...), in order.
    Start {
        version: i32,
        params: Vec<(String, String)>,
    },
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        key: Vec<u8>,
    },
}

pub fn decode_startup(body: &[u8]) -> Result<Startup, ParseError> {
    let mut r = Reader::new(body);
    let code = r.i32()?;
    match code {
        SSL_REQUEST => Ok(Startup::SslRequest),
        GSSENC_REQUEST => Ok(Startup::GssEncRequest),
        CANCEL_REQUEST => {
            let pid = r.i32()?;
            Ok(Startup::Cancel { pid, key: r.rest().to_vec() })
        }
        v if v >> 16 == 3 => {
            let mut params = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                params.push((name, r.cstr()?));
            }
            Ok(Startup::Start { version: v, params })
        }
        v => Err(ParseError::Malformed(format!("unsupported protocol version {}.{}", v >> 16, v & 0xffff))),
    }
}

#[cfg(test)]
pub fn encode_startup(m: &Startup, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match m {
        Startup::Start { version, params } => {
            out.extend_from_slice(&version.to_be_bytes());
            for (k, v) in params {
                put_cstr(out, k);
                put_cstr(out, v);
            }
            out.push(0);
        }
        Startup::SslRequest => out.extend_from_slice(&SSL_REQUEST.to_be_bytes()),
        Startup::GssEncRequest => out.extend_from_slice(&GSSENC_REQUEST.to_be_bytes()),
        Startup::Cancel { pid, key } => {
            out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(key);
        }
    }
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// A message from the client after startup.
#[derive(Debug, Clone, PartialEq)]
pub enum Frontend {
    Query(String),
    Parse {
        name: String,
        sql: String,
        param_types: Vec<u32>,
    },
    Bind {
        portal: String,
        statement: String,
        param_formats: Vec<i16>,
        params: Vec<Option<Vec<u8>>>,
        result_formats: Vec<i16>,
    },
    /// `kind` is b'S' (statement) or b'P' (portal).
    Describe {
        kind: u8,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        kind: u8,
        name: String,
    },
    Sync,
    Flush,
    Terminate,
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail(String),
    /// PasswordMessage, SASLInitialResponse or SASLResponse: never kept (secrets).
    Password,
    FunctionCall,
}

pub fn decode_frontend(tag: u8, body: &[u8]) -> Result<Frontend, ParseError> {
    let mut r = Reader::new(body);
    Ok(match tag {
        b'Q' => Frontend::Query(r.cstr()?),
        b'P' => {
            let name = r.cstr()?;
            let sql = r.cstr()?;
            let n = r.count16()?;
            let param_types = (0..n).map(|_| r.i32().map(|v| v as u32)).collect::<Result<_, _>>()?;
            Frontend::Parse { name, sql, param_types }
        }
        b'B' => {
            let portal = r.cstr()?;
            let statement = r.cstr()?;
            let n = r.count16()?;
            let param_formats = (0..n).map(|_| r.i16()).collect::<Result<_, _>>()?;
            let n = r.count16()?;
            let params = (0..n).map(|_| r.value().map(|v| v.map(<[u8]>::to_vec))).collect::<Result<_, _>>()?;
            let n = r.count16()?;
            let result_formats = (0..n).map(|_| r.i16()).collect::<Result<_, _>>()?;
            Frontend::Bind { portal, statement, param_formats, params, result_formats }
        }
        b'D' => Frontend::Describe { kind: r.u8()?, name: r.cstr()? },
        b'E' => Frontend::Execute { portal: r.cstr()?, max_rows: r.i32()? },
        b'C' => Frontend::Close { kind: r.u8()?, name: r.cstr()? },
        b'S' => Frontend::Sync,
        b'H' => Frontend::Flush,
        b'X' => Frontend::Terminate,
        b'd' => Frontend::CopyData(body.to_vec()),
        b'c' => Frontend::CopyDone,
        b'f' => Frontend::CopyFail(r.cstr()?),
        b'p' => Frontend::Password,
        b'F' => Frontend::FunctionCall,
        t => return Err(ParseError::Malformed(format!("unknown client message {:?}", t as char))),
    })
}

#[cfg(test)]
pub fn encode_frontend(m: &Frontend, out: &mut Vec<u8>) {
    let tag = match m {
        Frontend::Query(_) => b'Q',
        Frontend::Parse { .. } => b'P',
        Frontend::Bind { .. } => b'B',
        Frontend::Describe { .. } => b'D',
        Frontend::Execute { .. } => b'E',
        Frontend::Close { .. } => b'C',
        Frontend::Sync => b'S',
        Frontend::Flush => b'H',
        Frontend::Terminate => b'X',
        Frontend::CopyData(_) => b'd',
        Frontend::CopyDone => b'c',
        Frontend::CopyFail(_) => b'f',
        Frontend::Password => b'p',
        Frontend::FunctionCall => b'F',
    };
    let at = begin(out, tag);
    match m {
        Frontend::Query(sql) => put_cstr(out, sql),
        Frontend::Parse { name, sql, param_types } => {
            put_cstr(out, name);
            put_cstr(out, sql);
            out.extend_from_slice(&(param_types.len() as i16).to_be_bytes());
            for t in param_types {
                out.extend_from_slice(&t.to_be_bytes());
            }
        }
        Frontend::Bind { portal, statement, param_formats, params, result_formats } => {
            put_cstr(out, portal);
            put_cstr(out, statement);
            put_i16s(out, param_formats);
            out.extend_from_slice(&(params.len() as i16).to_be_bytes());
            for p in params {
                put_value(out, p.as_deref());
            }
            put_i16s(out, result_formats);
        }
        Frontend::Describe { kind, name } | Frontend::Close { kind, name } => {
            out.push(*kind);
            put_cstr(out, name);
        }
        Frontend::Execute { portal, max_rows } => {
            put_cstr(out, portal);
            out.extend_from_slice(&max_rows.to_be_bytes());
        }
        Frontend::CopyData(d) => out.extend_from_slice(d),
        Frontend::CopyFail(msg) => put_cstr(out, msg),
        _ => {}
    }
    finish(out, at);
}

/// ErrorResponse and NoticeResponse fields, by their one-byte codes, in order.
pub type Fields = Vec<(u8, String)>;

/// A message from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// Authentication request: 0 ok, 3 cleartext, 5 md5, 10 SASL, 11 SASL continue, 12 SASL final.
    Auth {
        code: i32,
        data: Vec<u8>,
    },
    ParameterStatus {
        name: String,
        value: String,
    },
    // The protocol's own name for the message.
    #[allow(clippy::enum_variant_names)]
    BackendKeyData {
        pid: i32,
        key: Vec<u8>,
    },
    /// `b'I'` idle, `b'T'` in a transaction, `b'E'` in a failed transaction.
    ReadyForQuery(u8),
    RowDescription(Vec<Column>),
    DataRow(Vec<Option<Vec<u8>>>),
    CommandComplete(String),
    EmptyQuery,
    Error(Fields),
    Notice(Fields),
    ParseComplete,
    BindComplete,
    CloseComplete,
    ParameterDescription(Vec<u32>),
    NoData,
    PortalSuspended,
    /// CopyInResponse (`b'G'`), CopyOutResponse (`b'H'`), CopyBothResponse (`b'W'`).
    CopyResponse {
        tag: u8,
        format: i8,
        columns: Vec<i16>,
    },
    CopyData(Vec<u8>),
    CopyDone,
    Notification {
        pid: i32,
        channel: String,
        payload: String,
    },
    NegotiateProtocol {
        minor: i32,
        options: Vec<String>,
    },
    FunctionResult(Option<Vec<u8>>),
}

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub size: i16,
    pub modifier: i32,
    pub format: i16,
}

fn fields(r: &mut Reader) -> Result<Fields, ParseError> {
    let mut out = Vec::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            return Ok(out);
        }
        out.push((code, r.cstr()?));
    }
}

/// Decodes a server message. DataRow values are copied; the observer, which reads many rows, uses
/// `data_row_values` on the borrowed body instead.
pub fn decode_backend(tag: u8, body: &[u8]) -> Result<Backend, ParseError> {
    let mut r = Reader::new(body);
    Ok(match tag {
        b'R' => Backend::Auth { code: r.i32()?, data: r.rest().to_vec() },
        b'S' => Backend::ParameterStatus { name: r.cstr()?, value: r.cstr()? },
        b'K' => Backend::BackendKeyData { pid: r.i32()?, key: r.rest().to_vec() },
        b'Z' => Backend::ReadyForQuery(r.u8()?),
        b'T' => {
            let n = r.count16()?;
            let mut cols = Vec::with_capacity(n);
            for _ in 0..n {
                cols.push(Column {
                    name: r.cstr()?,
                    table_oid: r.i32()? as u32,
                    attnum: r.i16()?,
                    type_oid: r.i32()? as u32,
                    size: r.i16()?,
                    modifier: r.i32()?,
                    format: r.i16()?,
                });
            }
            Backend::RowDescription(cols)
        }
        b'D' => Backend::DataRow(data_row_values(body)?.into_iter().map(|v| v.map(<[u8]>::to_vec)).collect()),
        b'C' => Backend::CommandComplete(r.cstr()?),
        b'I' => Backend::EmptyQuery,
        b'E' => Backend::Error(fields(&mut r)?),
        b'N' => Backend::Notice(fields(&mut r)?),
        b'1' => Backend::ParseComplete,
        b'2' => Backend::BindComplete,
        b'3' => Backend::CloseComplete,
        b't' => {
            let n = r.count16()?;
            Backend::ParameterDescription((0..n).map(|_| r.i32().map(|v| v as u32)).collect::<Result<_, _>>()?)
        }
        b'n' => Backend::NoData,
        b's' => Backend::PortalSuspended,
        b'G' | b'H' | b'W' => {
            let format = r.u8()? as i8;
            let n = r.count16()?;
            Backend::CopyResponse { tag, format, columns: (0..n).map(|_| r.i16()).collect::<Result<_, _>>()? }
        }
        b'd' => Backend::CopyData(body.to_vec()),
        b'c' => Backend::CopyDone,
        b'A' => Backend::Notification { pid: r.i32()?, channel: r.cstr()?, payload: r.cstr()? },
        b'v' => {
            let minor = r.i32()?;
            let n = r.i32()?.max(0);
            Backend::NegotiateProtocol { minor, options: (0..n).map(|_| r.cstr()).collect::<Result<_, _>>()? }
        }
        b'V' => Backend::FunctionResult(r.value()?.map(<[u8]>::to_vec)),
        t => return Err(ParseError::Malformed(format!("unknown server message {:?}", t as char))),
    })
}

/// The values of a DataRow body, borrowed.
pub fn data_row_values(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ParseError> {
    let mut r = Reader::new(body);
    let n = r.count16()?;
    (0..n).map(|_| r.value()).collect()
}

pub fn encode_backend(m: &Backend, out: &mut Vec<u8>) {
    let tag = match m {
        Backend::Auth { .. } => b'R',
        Backend::ParameterStatus { .. } => b'S',
        Backend::BackendKeyData { .. } => b'K',
        Backend::ReadyForQuery(_) => b'Z',
        Backend::RowDescription(_) => b'T',
        Backend::DataRow(_) => b'D',
        Backend::CommandComplete(_) => b'C',
        Backend::EmptyQuery => b'I',
        Backend::Error(_) => b'E',
        Backend::Notice(_) => b'N',
        Backend::ParseComplete => b'1',
        Backend::BindComplete => b'2',
        Backend::CloseComplete => b'3',
        Backend::ParameterDescription(_) => b't',
        Backend::NoData => b'n',
        Backend::PortalSuspended => b's',
        Backend::CopyResponse { tag, .. } => *tag,
        Backend::CopyData(_) => b'd',
        Backend::CopyDone => b'c',
        Backend::Notification { .. } => b'A',
        Backend::NegotiateProtocol { .. } => b'v',
        Backend::FunctionResult(_) => b'V',
    };
    let at = begin(out, tag);
    match m {
        Backend::Auth { code, data } => {
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(data);
        }
        Backend::ParameterStatus { name, value } => {
            put_cstr(out, name);
            put_cstr(out, value);
        }
        Backend::BackendKeyData { pid, key } => {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(key);
        }
        Backend::ReadyForQuery(s) => out.push(*s),
        Backend::RowDescription(cols) => {
            out.extend_from_slice(&(cols.len() as i16).to_be_bytes());
            for c in cols {
                put_cstr(out, &c.name);
                out.extend_from_slice(&c.table_oid.to_be_bytes());
                out.extend_from_slice(&c.attnum.to_be_bytes());
                out.extend_from_slice(&c.type_oid.to_be_bytes());
                out.extend_from_slice(&c.size.to_be_bytes());
                out.extend_from_slice(&c.modifier.to_be_bytes());
                out.extend_from_slice(&c.format.to_be_bytes());
            }
        }
        Backend::DataRow(values) => {
            out.extend_from_slice(&(values.len() as i16).to_be_bytes());
            for v in values {
                put_value(out, v.as_deref());
            }
        }
        Backend::CommandComplete(tag) => put_cstr(out, tag),
        Backend::Error(fields) | Backend::Notice(fields) => {
            for (code, value) in fields {
                out.push(*code);
                put_cstr(out, value);
            }
            out.push(0);
        }
        Backend::ParameterDescription(oids) => {
            out.extend_from_slice(&(oids.len() as i16).to_be_bytes());
            for o in oids {
                out.extend_from_slice(&o.to_be_bytes());
            }
        }
        Backend::CopyResponse { format, columns, .. } => {
            out.push(*format as u8);
            put_i16s(out, columns);
        }
        Backend::CopyData(d) => out.extend_from_slice(d),
        Backend::Notification { pid, channel, payload } => {
            out.extend_from_slice(&pid.to_be_bytes());
            put_cstr(out, channel);
            put_cstr(out, payload);
        }
        Backend::NegotiateProtocol { minor, options } => {
            out.extend_from_slice(&minor.to_be_bytes());
            out.extend_from_slice(&(options.len() as i32).to_be_bytes());
            for o in options {
                put_cstr(out, o);
            }
        }
        Backend::FunctionResult(v) => put_value(out, v.as_deref()),
        Backend::EmptyQuery
        | Backend::ParseComplete
        | Backend::BindComplete
        | Backend::CloseComplete
        | Backend::NoData
        | Backend::PortalSuspended
        | Backend::CopyDone => {}
    }
    finish(out, at);
}

/// Writes a DataRow straight from encoded values (replay's hot path: no intermediate message).
pub fn encode_data_row<'a>(values: impl ExactSizeIterator<Item = Option<&'a [u8]>>, out: &mut Vec<u8>) {
    let at = begin(out, b'D');
    out.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        put_value(out, v);
    }
    finish(out, at);
}

fn begin(out: &mut Vec<u8>, tag: u8) -> usize {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

fn finish(out: &mut [u8], at: usize) {
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut Vec<u8>, s: &str) {
    // A NUL inside would end the string early on the wire; it cannot come from a decoded message.
    out.extend(s.bytes().filter(|b| *b != 0));
    out.push(0);
}

fn put_i16s(out: &mut Vec<u8>, v: &[i16]) {
    out.extend_from_slice(&(v.len() as i16).to_be_bytes());
    for x in v {
        out.extend_from_slice(&x.to_be_bytes());
    }
}

fn put_value(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frontend_samples() -> Vec<Frontend> {
        vec![
            Frontend::Query("SELECT 1; SELECT 'a'".into()),
            Frontend::Parse { name: "s1".into(), sql: "SELECT $1::int".into(), param_types: vec![23] },
            Frontend::Bind {
                portal: "".into(),
                statement: "s1".into(),
                param_formats: vec![1],
                params: vec![Some(vec![0, 0, 0, 42]), None],
                result_formats: vec![1],
            },
            Frontend::Describe { kind: b'S', name: "s1".into() },
            Frontend::Execute { portal: "".into(), max_rows: 0 },
            Frontend::Close { kind: b'P', name: "p".into() },
            Frontend::Sync,
            Frontend::Flush,
            Frontend::CopyData(b"1\tx\n".to_vec()),
            Frontend::CopyDone,
            Frontend::CopyFail("stop".into()),
            Frontend::Terminate,
        ]
    }

    fn backend_samples() -> Vec<Backend> {
        vec![
            Backend::Auth { code: 0, data: vec![] },
            Backend::ParameterStatus { name: "server_version".into(), value: "15.2".into() },
            Backend::BackendKeyData { pid: 7, key: vec![1, 2, 3, 4] },
            Backend::RowDescription(vec![Column {
                name: "id".into(),
                table_oid: 1,
                attnum: 1,
                type_oid: 23,
                size: 4,
                modifier: -1,
                format: 0,
            }]),
            Backend::DataRow(vec![Some(b"1".to_vec()), None]),
            Backend::CommandComplete("SELECT 1".into()),
            Backend::Error(vec![(b'S', "ERROR".into()), (b'C', "23505".into()), (b'M', "dup".into())]),
            Backend::Notice(vec![(b'M', "hi".into())]),
            Backend::ParameterDescription(vec![23, 25]),
            Backend::CopyResponse { tag: b'G', format: 0, columns: vec![0, 0] },
            Backend::Notification { pid: 3, channel: "c".into(), payload: "p".into() },
            Backend::NegotiateProtocol { minor: 0, options: vec!["_pq_.x".into()] },
            Backend::ReadyForQuery(b'I'),
            Backend::EmptyQuery,
            Backend::NoData,
            Backend::PortalSuspended,
        ]
    }

    /// The messages one after the other on the wire.
    fn encode_all<M>(msgs: &[M], encode: fn(&M, &mut Vec<u8>)) -> Vec<u8> {
        let mut wire = Vec::new();
        for m in msgs {
            encode(m, &mut wire);
        }
        wire
    }

    fn drain_frontend(f: &mut Framer, out: &mut Vec<Frontend>) {
        while let Some((tag, body)) = f.next_tagged().unwrap() {
            out.push(decode_frontend(tag, body).unwrap());
        }
    }

    #[test]
    fn frontend_round_trip_split_anywhere() {
        let msgs = frontend_samples();
        let wire = encode_all(&msgs, encode_frontend);
        for cut in 0..=wire.len() {
            let mut f = Framer::default();
            let mut got = Vec::new();
            f.push(&wire[..cut]);
            drain_frontend(&mut f, &mut got);
            f.push(&wire[cut..]);
            drain_frontend(&mut f, &mut got);
            assert_eq!(got, msgs, "split at {cut}");
        }
    }

    #[test]
    fn backend_round_trip_byte_by_byte() {
        let msgs = backend_samples();
        let wire = encode_all(&msgs, encode_backend);
        let mut f = Framer::default();
        let mut got = Vec::new();
        for b in &wire {
            f.push(std::slice::from_ref(b));
            while let Some((tag, body)) = f.next_tagged().unwrap() {
                got.push(decode_backend(tag, body).unwrap());
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn startup_messages() {
        for m in [
            Startup::Start { version: PROTOCOL_3, params: vec![("user".into(), "u".into())] },
            Startup::SslRequest,
            Startup::GssEncRequest,
            Startup::Cancel { pid: 9, key: vec![1, 2, 3, 4] },
        ] {
            let mut wire = Vec::new();
            encode_startup(&m, &mut wire);
            let mut f = Framer::default();
            f.push(&wire[..3]);
            assert_eq!(f.next_untagged().unwrap(), None);
            f.push(&wire[3..]);
            let body = f.next_untagged().unwrap().unwrap().to_vec();
            assert_eq!(decode_startup(&body).unwrap(), m);
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), tagged in any::<bool>()) {
            let mut f = Framer::default();
            f.push(&data);
            if tagged {
                while let Ok(Some((tag, body))) = f.next_tagged() {
                    let _ = decode_frontend(tag, body);
                    let _ = decode_backend(tag, body);
                }
            } else if let Ok(Some(body)) = f.next_untagged() {
                let body = body.to_vec();
                let _ = decode_startup(&body);
            }
        }

        #[test]
        fn bind_round_trips(params in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)), 0..5),
                            portal in "[a-z_0-9]{0,8}", formats in proptest::collection::vec(0i16..2, 0..3)) {
            let m = Frontend::Bind { portal, statement: "s".into(), param_formats: formats.clone(), params, result_formats: formats };
            let mut wire = Vec::new();
            encode_frontend(&m, &mut wire);
            let mut f = Framer::default();
            f.push(&wire);
            let (tag, body) = f.next_tagged().unwrap().unwrap();
            prop_assert_eq!(decode_frontend(tag, body).unwrap(), m);
        }
    }
}
