//! The MySQL messages doppel reads and writes: handshake, OK/ERR/EOF, column definitions, text and binary
//! rows, prepared-statement answers and COM_STMT_EXECUTE parameters. Every decoder works on a whole logical
//! payload (see `packet`) and returns an error instead of panicking on malformed input; every encoder is the
//! exact inverse on the fields doppel keeps.

use super::packet::{Reader, put_lenenc, put_lenenc_bytes, put_nul_str, put_u16, put_u32};
use crate::protocols::ParseError;
use crate::protocols::mysql::{MysqlColumn, MysqlError, MysqlValue};

/// Capability flags: MySQL's in the low 32 bits, MariaDB's extensions (sent in the handshake's filler
/// bytes) in the high 32 bits.
pub(crate) mod caps {
    /// MariaDB calls this bit CLIENT_MYSQL: when it is clear, MariaDB extension flags are exchanged.
    pub const LONG_PASSWORD: u64 = 1;
    pub const CONNECT_WITH_DB: u64 = 1 << 3;
    pub const COMPRESS: u64 = 1 << 5;
    pub const LOCAL_FILES: u64 = 1 << 7;
    pub const PROTOCOL_41: u64 = 1 << 9;
    pub const SSL: u64 = 1 << 11;
    pub const SECURE_CONNECTION: u64 = 1 << 15;
    pub const MULTI_STATEMENTS: u64 = 1 << 16;
    pub const MULTI_RESULTS: u64 = 1 << 17;
    pub const PS_MULTI_RESULTS: u64 = 1 << 18;
    pub const PLUGIN_AUTH: u64 = 1 << 19;
    pub const CONNECT_ATTRS: u64 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_DATA: u64 = 1 << 21;
    pub const SESSION_TRACK: u64 = 1 << 23;
    pub const DEPRECATE_EOF: u64 = 1 << 24;
    pub const OPTIONAL_RESULTSET_METADATA: u64 = 1 << 25;
    pub const ZSTD_COMPRESSION: u64 = 1 << 26;
    pub const QUERY_ATTRIBUTES: u64 = 1 << 27;
    pub const MARIADB_EXTENDED_METADATA: u64 = 1 << 35;
    pub const MARIADB_CACHE_METADATA: u64 = 1 << 36;

    pub const NAMES: &[(u64, &str)] = &[
        (1, "LONG_PASSWORD"),
        (1 << 1, "FOUND_ROWS"),
        (1 << 2, "LONG_FLAG"),
        (1 << 3, "CONNECT_WITH_DB"),
        (1 << 4, "NO_SCHEMA"),
        (1 << 5, "COMPRESS"),
        (1 << 6, "ODBC"),
        (1 << 7, "LOCAL_FILES"),
        (1 << 8, "IGNORE_SPACE"),
        (1 << 9, "PROTOCOL_41"),
        (1 << 10, "INTERACTIVE"),
        (1 << 11, "SSL"),
        (1 << 12, "IGNORE_SIGPIPE"),
        (1 << 13, "TRANSACTIONS"),
        (1 << 14, "RESERVED"),
        (1 << 15, "SECURE_CONNECTION"),
        (1 << 16, "MULTI_STATEMENTS"),
        (1 << 17, "MULTI_RESULTS"),
        (1 << 18, "PS_MULTI_RESULTS"),
        (1 << 19, "PLUGIN_AUTH"),
        (1 << 20, "CONNECT_ATTRS"),
        (1 << 21, "PLUGIN_AUTH_LENENC_CLIENT_DATA"),
        (1 << 22, "CAN_HANDLE_EXPIRED_PASSWORDS"),
        (1 << 23, "SESSION_TRACK"),
        (1 << 24, "DEPRECATE_EOF"),
        (1 << 25, "OPTIONAL_RESULTSET_METADATA"),
        (1 << 26, "ZSTD_COMPRESSION"),
        (1 << 27, "QUERY_ATTRIBUTES"),
        (1 << 28, "MULTI_FACTOR_AUTHENTICATION"),
        (1 << 29, "CAPABILITY_EXTENSION"),
        (1 << 30, "SSL_VERIFY_SERVER_CERT"),
        (1 << 31, "REMEMBER_OPTIONS"),
        (1 << 32, "MARIADB_PROGRESS"),
        (1 << 33, "MARIADB_COM_MULTI"),
        (1 << 34, "MARIADB_STMT_BULK_OPERATIONS"),
        (1 << 35, "MARIADB_EXTENDED_METADATA"),
        (1 << 36, "MARIADB_CACHE_METADATA"),
        (1 << 37, "MARIADB_BULK_UNIT_RESULTS"),
    ];
}

/// Server status flags of OK and EOF packets.
pub(crate) mod status {
    pub const MORE_RESULTS_EXISTS: u16 = 0x0008;
    pub const SESSION_STATE_CHANGED: u16 = 0x4000;

    pub const NAMES: &[(u64, &str)] = &[
        (0x0001, "IN_TRANS"),
        (0x0002, "AUTOCOMMIT"),
        (0x0008, "MORE_RESULTS_EXISTS"),
        (0x0010, "NO_GOOD_INDEX_USED"),
        (0x0020, "NO_INDEX_USED"),
        (0x0040, "CURSOR_EXISTS"),
        (0x0080, "LAST_ROW_SENT"),
        (0x0100, "DB_DROPPED"),
        (0x0200, "NO_BACKSLASH_ESCAPES"),
        (0x0400, "METADATA_CHANGED"),
        (0x0800, "QUERY_WAS_SLOW"),
        (0x1000, "PS_OUT_PARAMS"),
        (0x2000, "IN_TRANS_READONLY"),
        (0x4000, "SESSION_STATE_CHANGED"),
    ];
}

/// Column definition flags.
pub(crate) mod column_flags {
    pub const UNSIGNED: u16 = 32;

    pub const NAMES: &[(u64, &str)] = &[
        (1, "NOT_NULL"),
        (2, "PRI_KEY"),
        (4, "UNIQUE_KEY"),
        (8, "MULTIPLE_KEY"),
        (16, "BLOB"),
        (32, "UNSIGNED"),
        (64, "ZEROFILL"),
        (128, "BINARY"),
        (256, "ENUM"),
        (512, "AUTO_INCREMENT"),
        (1024, "TIMESTAMP"),
        (2048, "SET"),
        (4096, "NO_DEFAULT_VALUE"),
        (8192, "ON_UPDATE_NOW"),
        (16384, "PART_KEY"),
        (32768, "NUM"),
    ];
}

/// Column and parameter wire types.
pub(crate) mod types {
    pub const TINY: u8 = 0x01;
    pub const SHORT: u8 = 0x02;
    pub const LONG: u8 = 0x03;
    pub const FLOAT: u8 = 0x04;
    pub const DOUBLE: u8 = 0x05;
    pub const NULL: u8 = 0x06;
    pub const TIMESTAMP: u8 = 0x07;
    pub const LONGLONG: u8 = 0x08;
    pub const INT24: u8 = 0x09;
    pub const DATE: u8 = 0x0a;
    pub const TIME: u8 = 0x0b;
    pub const DATETIME: u8 = 0x0c;
    pub const YEAR: u8 = 0x0d;
    pub const NEWDATE: u8 = 0x0e;
    pub const TIMESTAMP2: u8 = 0x11;
    pub const DATETIME2: u8 = 0x12;
    pub const TIME2: u8 = 0x13;
    pub const VAR_STRING: u8 = 0xfd;

    pub const NAMES: &[(u8, &str)] = &[
        (0x00, "DECIMAL"),
        (0x01, "TINY"),
        (0x02, "SHORT"),
        (0x03, "LONG"),
        (0x04, "FLOAT"),
        (0x05, "DOUBLE"),
        (0x06, "NULL"),
        (0x07, "TIMESTAMP"),
        (0x08, "LONGLONG"),
        (0x09, "INT24"),
        (0x0a, "DATE"),
        (0x0b, "TIME"),
        (0x0c, "DATETIME"),
        (0x0d, "YEAR"),
        (0x0e, "NEWDATE"),
        (0x0f, "VARCHAR"),
        (0x10, "BIT"),
        (0x11, "TIMESTAMP2"),
        (0x12, "DATETIME2"),
        (0x13, "TIME2"),
        (0xf2, "VECTOR"),
        (0xf5, "JSON"),
        (0xf6, "NEWDECIMAL"),
        (0xf7, "ENUM"),
        (0xf8, "SET"),
        (0xf9, "TINY_BLOB"),
        (0xfa, "MEDIUM_BLOB"),
        (0xfb, "LONG_BLOB"),
        (0xfc, "BLOB"),
        (0xfd, "VAR_STRING"),
        (0xfe, "STRING"),
        (0xff, "GEOMETRY"),
    ];

    pub fn name(t: u8) -> String {
        NAMES.iter().find(|(v, _)| *v == t).map(|(_, n)| n.to_string()).unwrap_or_else(|| format!("TYPE_{t}"))
    }

    pub fn parse(name: &str) -> Option<u8> {
        if let Some(n) = name.strip_prefix("TYPE_") {
            return n.parse().ok();
        }
        NAMES.iter().find(|(_, n)| *n == name).map(|(v, _)| *v)
    }
}

pub fn flag_names(bits: u64, table: &[(u64, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..64 {
        let bit = 1u64 << i;
        if bits & bit == 0 {
            continue;
        }
        match table.iter().find(|(b, _)| *b == bit) {
            Some((_, n)) => out.push((*n).to_string()),
            None => out.push(format!("BIT_{i}")),
        }
    }
    out
}

pub fn parse_flags(names: &[String], table: &[(u64, &str)]) -> u64 {
    names.iter().fold(0, |acc, n| {
        let bit =
            table.iter().find(|(_, name)| name == n).map(|(b, _)| *b).or_else(|| {
                n.strip_prefix("BIT_").and_then(|i| i.parse::<u32>().ok()).and_then(|i| 1u64.checked_shl(i))
            });
        acc | bit.unwrap_or(0)
    })
}

fn short(what: &str) -> ParseError {
    ParseError::Malformed(format!("{what} is cut short"))
}

/// The server's greeting (Handshake v10).
#[derive(Debug, Clone, PartialEq)]
pub struct Greeting {
    pub server_version: String,
    pub connection_id: u32,
    /// The 20-byte challenge (auth plugin data).
    pub scramble: Vec<u8>,
    pub capabilities: u64,
    pub charset: u8,
    pub status: u16,
    pub auth_plugin: String,
}

pub fn decode_greeting(p: &[u8]) -> Result<Greeting, ParseError> {
    let mut r = Reader::new(p);
    let bad = || short("the server greeting");
    match r.u8() {
        Some(10) => {}
        Some(0xFF) => return Err("the server refused the connection in its greeting".into()),
        other => return Err(ParseError::Malformed(format!("server greeting of protocol {other:?}, not 10"))),
    }
    let server_version = r.nul_string();
    let connection_id = r.u32().ok_or_else(bad)?;
    let mut scramble = r.bytes(8).ok_or_else(bad)?.to_vec();
    r.skip(1).ok_or_else(bad)?;
    let low = u64::from(r.u16().ok_or_else(bad)?);
    // Pre-4.1 servers stop here.
    let charset = r.u8().unwrap_or(0);
    let status = r.u16().unwrap_or(0);
    let high = u64::from(r.u16().unwrap_or(0));
    let mut capabilities = low | high << 16;
    let auth_len = r.u8().unwrap_or(0);
    r.skip(6);
    let mariadb = r.u32().unwrap_or(0);
    if capabilities & caps::LONG_PASSWORD == 0 {
        capabilities |= u64::from(mariadb) << 32;
    }
    if capabilities & caps::SECURE_CONNECTION != 0 {
        let n = (usize::from(auth_len).saturating_sub(8)).max(13);
        let part = r.bytes(n.min(r.remaining())).unwrap_or_default();
        // The second part ends with a NUL that is not part of the challenge.
        let part = part.strip_suffix(&[0]).unwrap_or(part);
        scramble.extend_from_slice(part);
    }
    let auth_plugin = if capabilities & caps::PLUGIN_AUTH != 0 { r.nul_string() } else { String::new() };
    Ok(Greeting { server_version, connection_id, scramble, capabilities, charset, status, auth_plugin })
}

pub fn encode_greeting(g: &Greeting) -> Vec<u8> {
    let mut out = vec![10];
    put_nul_str(&mut out, g.server_version.as_bytes());
    put_u32(&mut out, g.connection_id);
    let mut scramble = g.scramble.clone();
    scramble.resize(20, b'x');
    out.extend_from_slice(&scramble[..8]);
    out.push(0);
    put_u16(&mut out, g.capabilities as u16);
    out.push(g.charset);
    put_u16(&mut out, g.status);
    put_u16(&mut out, (g.capabilities >> 16) as u16);
    out.push(21);
    out.extend_from_slice(&[0; 6]);
    let mariadb = if g.capabilities & caps::LONG_PASSWORD == 0 { (g.capabilities >> 32) as u32 } else { 0 };
    put_u32(&mut out, mariadb);
    out.extend_from_slice(&scramble[8..20]);
    out.push(0);
    put_nul_str(&mut out, g.auth_plugin.as_bytes());
    out
}

/// The client's answer to the greeting (HandshakeResponse41), or an SSLRequest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HandshakeResponse {
    pub capabilities: u64,
    pub max_packet: u32,
    pub charset: u8,
    /// Only the capability header was sent: the client asks for TLS before saying more.
    pub ssl_request: bool,
    pub user: String,
    pub auth_response: Vec<u8>,
    pub database: Option<String>,
    pub auth_plugin: String,
    pub attributes: Vec<(String, String)>,
}

pub fn decode_handshake_response(p: &[u8]) -> Result<HandshakeResponse, ParseError> {
    let mut r = Reader::new(p);
    let bad = || short("the client's handshake response");
    let low = u64::from(r.u16().ok_or_else(bad)?);
    if low & caps::PROTOCOL_41 == 0 {
        return Err("the client uses the pre-4.1 protocol".into());
    }
    let high = u64::from(r.u16().ok_or_else(bad)?);
    let mut capabilities = low | high << 16;
    let max_packet = r.u32().ok_or_else(bad)?;
    let charset = r.u8().ok_or_else(bad)?;
    r.skip(19).ok_or_else(bad)?;
    let mariadb = r.u32().ok_or_else(bad)?;
    if capabilities & caps::LONG_PASSWORD == 0 {
        capabilities |= u64::from(mariadb) << 32;
    }
    let mut h = HandshakeResponse { capabilities, max_packet, charset, ..HandshakeResponse::default() };
    if r.is_empty() {
        if capabilities & caps::SSL != 0 {
            h.ssl_request = true;
            return Ok(h);
        }
        return Err(bad());
    }
    h.user = r.nul_string();
    h.auth_response = if capabilities & caps::PLUGIN_AUTH_LENENC_DATA != 0 {
        r.lenenc_bytes().ok_or_else(bad)?.to_vec()
    } else if capabilities & caps::SECURE_CONNECTION != 0 {
        let n = r.u8().ok_or_else(bad)?;
        r.bytes(usize::from(n)).ok_or_else(bad)?.to_vec()
    } else {
        r.nul_bytes().to_vec()
    };
    if capabilities & caps::CONNECT_WITH_DB != 0 && !r.is_empty() {
        h.database = Some(r.nul_string());
    }
    if capabilities & caps::PLUGIN_AUTH != 0 && !r.is_empty() {
        h.auth_plugin = r.nul_string();
    }
    if capabilities & caps::CONNECT_ATTRS != 0 && !r.is_empty() {
        let attrs = r.lenenc_bytes().ok_or_else(bad)?;
        let mut a = Reader::new(attrs);
        while !a.is_empty() {
            let k = a.lenenc_string().ok_or_else(bad)?;
            let v = a.lenenc_string().ok_or_else(bad)?;
            h.attributes.push((k, v));
        }
    }
    Ok(h)
}

#[cfg(test)]
pub fn encode_handshake_response(h: &HandshakeResponse) -> Vec<u8> {
    let mut out = Vec::new();
    put_u32(&mut out, h.capabilities as u32);
    put_u32(&mut out, h.max_packet);
    out.push(h.charset);
    out.extend_from_slice(&[0; 19]);
    put_u32(&mut out, if h.capabilities & caps::LONG_PASSWORD == 0 { (h.capabilities >> 32) as u32 } else { 0 });
    if h.ssl_request {
        return out;
    }
    put_nul_str(&mut out, h.user.as_bytes());
    if h.capabilities & caps::PLUGIN_AUTH_LENENC_DATA != 0 {
        put_lenenc_bytes(&mut out, &h.auth_response);
    } else {
        out.push(h.auth_response.len() as u8);
        out.extend_from_slice(&h.auth_response);
    }
    if let Some(db) = &h.database {
        put_nul_str(&mut out, db.as_bytes());
    }
    if h.capabilities & caps::PLUGIN_AUTH != 0 {
        put_nul_str(&mut out, h.auth_plugin.as_bytes());
    }
    if h.capabilities & caps::CONNECT_ATTRS != 0 {
        let mut attrs = Vec::new();
        for (k, v) in &h.attributes {
            put_lenenc_bytes(&mut attrs, k.as_bytes());
            put_lenenc_bytes(&mut attrs, v.as_bytes());
        }
        put_lenenc_bytes(&mut out, &attrs);
    }
    out
}

/// An OK packet (header 0x00, or 0xFE when it ends a result set with CLIENT_DEPRECATE_EOF).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OkPacket {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    pub info: String,
}

pub fn decode_ok(p: &[u8], capabilities: u64) -> Result<OkPacket, ParseError> {
    let mut r = Reader::new(p);
    let bad = || short("an OK packet");
    r.u8().ok_or_else(bad)?;
    let affected_rows = r.lenenc().ok_or_else(bad)?;
    let last_insert_id = r.lenenc().ok_or_else(bad)?;
    let status = r.u16().unwrap_or(0);
    let warnings = r.u16().unwrap_or(0);
    let info = if capabilities & caps::SESSION_TRACK != 0 {
        // The session-state block that may follow is not kept: replay does not offer session tracking.
        if r.is_empty() { String::new() } else { r.lenenc_string().unwrap_or_default() }
    } else {
        String::from_utf8_lossy(r.rest()).into_owned()
    };
    Ok(OkPacket { affected_rows, last_insert_id, status, warnings, info })
}

/// Encodes an OK packet for a client that did not ask for session tracking.
pub fn encode_ok(ok: &OkPacket, header: u8) -> Vec<u8> {
    let mut out = vec![header];
    put_lenenc(&mut out, ok.affected_rows);
    put_lenenc(&mut out, ok.last_insert_id);
    put_u16(&mut out, ok.status & !status::SESSION_STATE_CHANGED);
    put_u16(&mut out, ok.warnings);
    out.extend_from_slice(ok.info.as_bytes());
    out
}

/// An ERR packet. MariaDB's progress reports (code 0xFFFF) are not errors: `None`.
pub fn decode_err(p: &[u8]) -> Result<Option<MysqlError>, ParseError> {
    let mut r = Reader::new(p);
    let bad = || short("an ERR packet");
    r.u8().ok_or_else(bad)?;
    let code = r.u16().ok_or_else(bad)?;
    if code == 0xFFFF {
        return Ok(None);
    }
    let mut sqlstate = String::new();
    if r.peek() == Some(b'#') {
        r.skip(1);
        sqlstate = String::from_utf8_lossy(r.bytes(5).ok_or_else(bad)?).into_owned();
    }
    let message = String::from_utf8_lossy(r.rest()).into_owned();
    Ok(Some(MysqlError { code, sqlstate, message }))
}

pub fn encode_err(e: &MysqlError) -> Vec<u8> {
    let mut out = vec![0xFF];
    put_u16(&mut out, e.code);
    out.push(b'#');
    let mut state = e.sqlstate.as_bytes().to_vec();
    state.resize(5, b'0');
    out.extend_from_slice(&state[..5]);
    out.extend_from_slice(e.message.as_bytes());
    out
}

/// An EOF packet's warnings and status.
pub fn decode_eof(p: &[u8]) -> (u16, u16) {
    let mut r = Reader::new(p);
    r.skip(1);
    (r.u16().unwrap_or(0), r.u16().unwrap_or(0))
}

pub fn encode_eof(warnings: u16, status_flags: u16) -> Vec<u8> {
    let mut out = vec![0xFE];
    put_u16(&mut out, warnings);
    put_u16(&mut out, status_flags & !status::SESSION_STATE_CHANGED);
    out
}

/// Whether a packet in a row stream is its end: an EOF packet, or an OK packet with header 0xFE under
/// CLIENT_DEPRECATE_EOF (a row can start with 0xFE only as an 8-byte length, so it is much longer).
pub fn is_end_of_rows(p: &[u8], capabilities: u64) -> bool {
    p.first() == Some(&0xFE)
        && if capabilities & caps::DEPRECATE_EOF != 0 { p.len() < super::packet::MAX_PAYLOAD } else { p.len() < 9 }
}

/// The wire type and flags of a column: what decoding a binary row needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnKind {
    pub ty: u8,
    pub flags: u16,
}

impl ColumnKind {
    pub fn of(c: &MysqlColumn) -> ColumnKind {
        ColumnKind {
            ty: types::parse(&c.column_type).unwrap_or(types::VAR_STRING),
            flags: parse_flags(&c.flags, column_flags::NAMES) as u16,
        }
    }

    fn unsigned(&self) -> bool {
        self.flags & column_flags::UNSIGNED != 0
    }
}

pub fn decode_column(p: &[u8], capabilities: u64) -> Result<(MysqlColumn, ColumnKind), ParseError> {
    let mut r = Reader::new(p);
    let bad = || short("a column definition");
    let _catalog = r.lenenc_bytes().ok_or_else(bad)?;
    let schema = r.lenenc_string().ok_or_else(bad)?;
    let table = r.lenenc_string().ok_or_else(bad)?;
    let org_table = r.lenenc_string().ok_or_else(bad)?;
    let name = r.lenenc_string().ok_or_else(bad)?;
    let org_name = r.lenenc_string().ok_or_else(bad)?;
    if capabilities & caps::MARIADB_EXTENDED_METADATA != 0 {
        // Extended type info (json, uuid...): replay does not offer it, so it is not kept.
        r.lenenc_bytes().ok_or_else(bad)?;
    }
    r.lenenc().ok_or_else(bad)?;
    let charset = r.u16().ok_or_else(bad)?;
    let length = r.u32().ok_or_else(bad)?;
    let ty = r.u8().ok_or_else(bad)?;
    let flags = r.u16().ok_or_else(bad)?;
    let decimals = r.u8().ok_or_else(bad)?;
    let column = MysqlColumn {
        org_name: if org_name == name { String::new() } else { org_name },
        org_table: if org_table == table { String::new() } else { org_table },
        name,
        column_type: types::name(ty),
        flags: flag_names(u64::from(flags), column_flags::NAMES),
        table,
        schema,
        charset,
        length,
        decimals,
    };
    Ok((column, ColumnKind { ty, flags }))
}

pub fn encode_column(c: &MysqlColumn) -> Vec<u8> {
    let kind = ColumnKind::of(c);
    let mut out = Vec::with_capacity(64);
    put_lenenc_bytes(&mut out, b"def");
    put_lenenc_bytes(&mut out, c.schema.as_bytes());
    put_lenenc_bytes(&mut out, c.table.as_bytes());
    put_lenenc_bytes(&mut out, if c.org_table.is_empty() { &c.table } else { &c.org_table }.as_bytes());
    put_lenenc_bytes(&mut out, c.name.as_bytes());
    put_lenenc_bytes(&mut out, if c.org_name.is_empty() { &c.name } else { &c.org_name }.as_bytes());
    out.push(0x0c);
    put_u16(&mut out, c.charset);
    put_u32(&mut out, c.length);
    out.push(kind.ty);
    put_u16(&mut out, kind.flags);
    out.push(c.decimals);
    out.extend_from_slice(&[0, 0]);
    out
}

pub fn decode_text_row(p: &[u8], columns: usize) -> Result<Vec<MysqlValue>, ParseError> {
    let mut r = Reader::new(p);
    let mut row = Vec::with_capacity(columns);
    for _ in 0..columns {
        if r.peek() == Some(0xFB) {
            r.skip(1);
            row.push(MysqlValue::Null);
        } else {
            row.push(MysqlValue::from_bytes(r.lenenc_bytes().ok_or_else(|| short("a text row"))?));
        }
    }
    if !r.is_empty() {
        return Err(ParseError::Malformed(format!(
            "a text row has {} bytes after its {columns} columns",
            r.remaining()
        )));
    }
    Ok(row)
}

pub fn encode_text_row(row: &[MysqlValue]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in row {
        match v {
            MysqlValue::Null => out.push(0xFB),
            MysqlValue::Text(s) => put_lenenc_bytes(&mut out, s.as_bytes()),
            MysqlValue::Bytes(b) => put_lenenc_bytes(&mut out, b),
            MysqlValue::Int(i) => put_lenenc_bytes(&mut out, i.to_string().as_bytes()),
            MysqlValue::UInt(u) => put_lenenc_bytes(&mut out, u.to_string().as_bytes()),
            MysqlValue::Float(f) => put_lenenc_bytes(&mut out, f.to_string().as_bytes()),
        }
    }
    out
}

fn is_date(ty: u8) -> bool {
    matches!(
        ty,
        types::DATE | types::NEWDATE | types::DATETIME | types::TIMESTAMP | types::DATETIME2 | types::TIMESTAMP2
    )
}

fn is_time(ty: u8) -> bool {
    matches!(ty, types::TIME | types::TIME2)
}

/// One value in the binary protocol (rows of COM_STMT_EXECUTE, and its parameters).
pub fn decode_binary_value(r: &mut Reader<'_>, kind: ColumnKind) -> Result<MysqlValue, ParseError> {
    let bad = || short("a binary value");
    let unsigned = kind.unsigned();
    let int = |v: i64, u: u64| if unsigned { unsigned_value(u) } else { MysqlValue::Int(v) };
    Ok(match kind.ty {
        types::NULL => MysqlValue::Null,
        types::TINY => {
            let b = r.u8().ok_or_else(bad)?;
            int(i64::from(b as i8), u64::from(b))
        }
        types::SHORT | types::YEAR => {
            let b = r.u16().ok_or_else(bad)?;
            int(i64::from(b as i16), u64::from(b))
        }
        types::LONG | types::INT24 => {
            let b = r.u32().ok_or_else(bad)?;
            int(i64::from(b as i32), u64::from(b))
        }
        types::LONGLONG => {
            let b = r.u64().ok_or_else(bad)?;
            int(b as i64, b)
        }
        types::FLOAT => {
            let f = f32::from_bits(r.u32().ok_or_else(bad)?);
            // Through its shortest decimal form, so 1.1f32 reads as 1.1 and not 1.100000023841858.
            MysqlValue::Float(f.to_string().parse().unwrap_or(f64::from(f)))
        }
        types::DOUBLE => MysqlValue::Float(f64::from_bits(r.u64().ok_or_else(bad)?)),
        t if is_date(t) => {
            let n = usize::from(r.u8().ok_or_else(bad)?);
            let mut b = Reader::new(r.bytes(n).ok_or_else(bad)?);
            let (y, mo, d) = (b.u16().unwrap_or(0), b.u8().unwrap_or(0), b.u8().unwrap_or(0));
            let (h, mi, s) = (b.u8().unwrap_or(0), b.u8().unwrap_or(0), b.u8().unwrap_or(0));
            let micro = b.u32().unwrap_or(0);
            let mut text = format!("{y:04}-{mo:02}-{d:02}");
            if t != types::DATE && t != types::NEWDATE || n > 4 {
                text.push_str(&format!(" {h:02}:{mi:02}:{s:02}"));
            }
            if n > 7 {
                text.push_str(&format!(".{micro:06}"));
            }
            MysqlValue::Text(text)
        }
        t if is_time(t) => {
            let n = usize::from(r.u8().ok_or_else(bad)?);
            let mut b = Reader::new(r.bytes(n).ok_or_else(bad)?);
            let negative = b.u8().unwrap_or(0) == 1;
            let days = u64::from(b.u32().unwrap_or(0));
            let (h, mi, s) = (b.u8().unwrap_or(0), b.u8().unwrap_or(0), b.u8().unwrap_or(0));
            let micro = b.u32().unwrap_or(0);
            let mut text = format!("{}{:02}:{mi:02}:{s:02}", if negative { "-" } else { "" }, days * 24 + u64::from(h));
            if n > 8 {
                text.push_str(&format!(".{micro:06}"));
            }
            MysqlValue::Text(text)
        }
        _ => MysqlValue::from_bytes(r.lenenc_bytes().ok_or_else(bad)?),
    })
}

fn unsigned_value(u: u64) -> MysqlValue {
    match i64::try_from(u) {
        Ok(i) => MysqlValue::Int(i),
        Err(_) => MysqlValue::UInt(u),
    }
}

fn as_i128(v: &MysqlValue) -> i128 {
    match v {
        MysqlValue::Int(i) => i128::from(*i),
        MysqlValue::UInt(u) => i128::from(*u),
        MysqlValue::Float(f) => *f as i128,
        MysqlValue::Text(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

fn as_f64(v: &MysqlValue) -> f64 {
    match v {
        MysqlValue::Int(i) => *i as f64,
        MysqlValue::UInt(u) => *u as f64,
        MysqlValue::Float(f) => *f,
        MysqlValue::Text(s) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

fn text_of(v: &MysqlValue) -> Vec<u8> {
    match v {
        MysqlValue::Null => Vec::new(),
        MysqlValue::Int(i) => i.to_string().into_bytes(),
        MysqlValue::UInt(u) => u.to_string().into_bytes(),
        MysqlValue::Float(f) => f.to_string().into_bytes(),
        MysqlValue::Text(s) => s.clone().into_bytes(),
        MysqlValue::Bytes(b) => b.clone(),
    }
}

/// Numbers of a `YYYY-MM-DD hh:mm:ss.ffffff` or `[-]hhh:mm:ss.ffffff` text, in order.
fn numbers(text: &str) -> (bool, Vec<u64>, u32) {
    let negative = text.starts_with('-');
    let (main, frac) = text.trim_start_matches('-').split_once('.').unwrap_or((text.trim_start_matches('-'), ""));
    let parts = main.split(['-', ' ', ':']).filter(|p| !p.is_empty()).map(|p| p.parse().unwrap_or(0)).collect();
    let mut frac = frac.chars().take(6).collect::<String>();
    while frac.len() < 6 {
        frac.push('0');
    }
    (negative, parts, frac.parse().unwrap_or(0))
}

pub fn encode_binary_value(out: &mut Vec<u8>, v: &MysqlValue, kind: ColumnKind) {
    match kind.ty {
        types::NULL => {}
        types::TINY => out.push(as_i128(v) as u8),
        types::SHORT | types::YEAR => put_u16(out, as_i128(v) as u16),
        types::LONG | types::INT24 => put_u32(out, as_i128(v) as u32),
        types::LONGLONG => out.extend_from_slice(&(as_i128(v) as u64).to_le_bytes()),
        types::FLOAT => put_u32(out, (as_f64(v) as f32).to_bits()),
        types::DOUBLE => out.extend_from_slice(&as_f64(v).to_bits().to_le_bytes()),
        t if is_date(t) => {
            let text = String::from_utf8_lossy(&text_of(v)).into_owned();
            let (_, n, micro) = numbers(&text);
            let at = |i: usize| n.get(i).copied().unwrap_or(0);
            let len = if micro != 0 {
                11
            } else if at(3) != 0 || at(4) != 0 || at(5) != 0 {
                7
            } else if at(0) != 0 || at(1) != 0 || at(2) != 0 {
                4
            } else {
                0
            };
            out.push(len);
            if len >= 4 {
                put_u16(out, at(0) as u16);
                out.extend_from_slice(&[at(1) as u8, at(2) as u8]);
            }
            if len >= 7 {
                out.extend_from_slice(&[at(3) as u8, at(4) as u8, at(5) as u8]);
            }
            if len == 11 {
                put_u32(out, micro);
            }
        }
        t if is_time(t) => {
            let text = String::from_utf8_lossy(&text_of(v)).into_owned();
            let (negative, n, micro) = numbers(&text);
            let at = |i: usize| n.get(i).copied().unwrap_or(0);
            let (hours, minutes, seconds) = (at(0), at(1), at(2));
            let len = if micro != 0 {
                12
            } else if hours != 0 || minutes != 0 || seconds != 0 {
                8
            } else {
                0
            };
            out.push(len);
            if len >= 8 {
                out.push(u8::from(negative));
                put_u32(out, (hours / 24) as u32);
                out.extend_from_slice(&[(hours % 24) as u8, minutes as u8, seconds as u8]);
            }
            if len == 12 {
                put_u32(out, micro);
            }
        }
        _ => put_lenenc_bytes(out, &text_of(v)),
    }
}

pub fn decode_binary_row(p: &[u8], kinds: &[ColumnKind]) -> Result<Vec<MysqlValue>, ParseError> {
    let mut r = Reader::new(p);
    if r.u8() != Some(0) {
        return Err("a binary row does not start with 0x00".into());
    }
    let bitmap = r.bytes((kinds.len() + 7 + 2) / 8).ok_or_else(|| short("a binary row"))?;
    let mut row = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        let bit = i + 2;
        if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
            row.push(MysqlValue::Null);
        } else {
            row.push(decode_binary_value(&mut r, *kind)?);
        }
    }
    if !r.is_empty() {
        return Err(ParseError::Malformed(format!(
            "a binary row has {} bytes after its {} columns",
            r.remaining(),
            kinds.len()
        )));
    }
    Ok(row)
}

pub fn encode_binary_row(row: &[MysqlValue], kinds: &[ColumnKind]) -> Vec<u8> {
    let mut out = vec![0];
    let start = out.len();
    out.resize(start + (kinds.len() + 7 + 2) / 8, 0);
    for (i, kind) in kinds.iter().enumerate() {
        let v = row.get(i).unwrap_or(&MysqlValue::Null);
        if *v == MysqlValue::Null {
            let bit = i + 2;
            out[start + bit / 8] |= 1 << (bit % 8);
        } else {
            encode_binary_value(&mut out, v, *kind);
        }
    }
    out
}

/// The first packet of COM_STMT_PREPARE's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOk {
    pub statement_id: u32,
    pub columns: u16,
    pub params: u16,
    pub warnings: u16,
}

pub fn decode_prepare_ok(p: &[u8]) -> Result<PrepareOk, ParseError> {
    let mut r = Reader::new(p);
    let bad = || short("a COM_STMT_PREPARE answer");
    r.u8().ok_or_else(bad)?;
    let statement_id = r.u32().ok_or_else(bad)?;
    let columns = r.u16().ok_or_else(bad)?;
    let params = r.u16().ok_or_else(bad)?;
    r.skip(1);
    let warnings = r.u16().unwrap_or(0);
    Ok(PrepareOk { statement_id, columns, params, warnings })
}

pub fn encode_prepare_ok(p: &PrepareOk) -> Vec<u8> {
    let mut out = vec![0];
    put_u32(&mut out, p.statement_id);
    put_u16(&mut out, p.columns);
    put_u16(&mut out, p.params);
    out.push(0);
    put_u16(&mut out, p.warnings);
    out
}

/// COM_STMT_EXECUTE after its command byte.
#[derive(Debug, Clone, PartialEq)]
pub struct Execute {
    pub statement_id: u32,
    pub flags: u8,
    /// Type and flag byte of each parameter (bound now, or at an earlier execution).
    pub types: Vec<(u8, u8)>,
    pub params: Vec<MysqlValue>,
    /// Whether this execution sent the types (`new_params_bound_flag`).
    pub types_sent: bool,
}

/// Parameter type names as stored: `LONGLONG`, or `UNSIGNED LONGLONG`.
pub fn param_type_name(t: (u8, u8)) -> String {
    if t.1 & 0x80 != 0 { format!("UNSIGNED {}", types::name(t.0)) } else { types::name(t.0) }
}

/// Decodes COM_STMT_EXECUTE's body for a statement with `param_count` placeholders. `previous` holds the
/// types bound at the statement's previous execution, which apply when none are sent.
pub fn decode_execute(p: &[u8], param_count: usize, previous: &[(u8, u8)]) -> Result<Execute, ParseError> {
    let mut r = Reader::new(p);
    let bad = || short("COM_STMT_EXECUTE");
    let statement_id = r.u32().ok_or_else(bad)?;
    let flags = r.u8().ok_or_else(bad)?;
    r.u32().ok_or_else(bad)?;
    let mut e = Execute { statement_id, flags, types: Vec::new(), params: Vec::new(), types_sent: false };
    if param_count == 0 {
        return Ok(e);
    }
    let nulls = r.bytes(param_count.div_ceil(8)).ok_or_else(bad)?;
    e.types_sent = r.u8().ok_or_else(bad)? == 1;
    if e.types_sent {
        for _ in 0..param_count {
            let t = r.u8().ok_or_else(bad)?;
            let f = r.u8().ok_or_else(bad)?;
            e.types.push((t, f));
        }
    } else if previous.len() == param_count {
        e.types = previous.to_vec();
    } else {
        return Err("COM_STMT_EXECUTE without parameter types, and none bound before".into());
    }
    for (i, t) in e.types.iter().enumerate() {
        if nulls[i / 8] & (1 << (i % 8)) != 0 {
            e.params.push(MysqlValue::Null);
        } else {
            let kind = ColumnKind { ty: t.0, flags: if t.1 & 0x80 != 0 { column_flags::UNSIGNED } else { 0 } };
            e.params.push(decode_binary_value(&mut r, kind)?);
        }
    }
    Ok(e)
}

#[cfg(test)]
pub fn encode_execute(e: &Execute) -> Vec<u8> {
    let mut out = vec![0x17];
    put_u32(&mut out, e.statement_id);
    out.push(e.flags);
    put_u32(&mut out, 1);
    if e.params.is_empty() {
        return out;
    }
    let start = out.len();
    out.resize(start + e.params.len().div_ceil(8), 0);
    for (i, v) in e.params.iter().enumerate() {
        if *v == MysqlValue::Null {
            out[start + i / 8] |= 1 << (i % 8);
        }
    }
    out.push(u8::from(e.types_sent));
    if e.types_sent {
        for t in &e.types {
            out.extend_from_slice(&[t.0, t.1]);
        }
    }
    for (v, t) in e.params.iter().zip(&e.types) {
        if *v != MysqlValue::Null {
            let kind = ColumnKind { ty: t.0, flags: if t.1 & 0x80 != 0 { column_flags::UNSIGNED } else { 0 } };
            encode_binary_value(&mut out, v, kind);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn greeting_round_trips() {
        let g = Greeting {
            server_version: "5.5.5-10.11.19-MariaDB".into(),
            connection_id: 77,
            scramble: b"abcdefghijklmnopqrst".to_vec(),
            capabilities: caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH | caps::DEPRECATE_EOF,
            charset: 45,
            status: 2,
            auth_plugin: "mysql_native_password".into(),
        };
        assert_eq!(decode_greeting(&encode_greeting(&g)).unwrap(), g);
        // MariaDB extension flags travel in the filler when CLIENT_MYSQL (LONG_PASSWORD) is clear.
        let m = Greeting { capabilities: g.capabilities | caps::MARIADB_CACHE_METADATA, ..g.clone() };
        assert_eq!(decode_greeting(&encode_greeting(&m)).unwrap(), m);
    }

    #[test]
    fn handshake_response_and_ssl_request_round_trip() {
        let h = HandshakeResponse {
            capabilities: caps::PROTOCOL_41
                | caps::SECURE_CONNECTION
                | caps::PLUGIN_AUTH
                | caps::CONNECT_WITH_DB
                | caps::CONNECT_ATTRS
                | caps::PLUGIN_AUTH_LENENC_DATA
                | caps::LONG_PASSWORD,
            max_packet: 1 << 24,
            charset: 45,
            ssl_request: false,
            user: "app".into(),
            auth_response: vec![1; 20],
            database: Some("shop".into()),
            auth_plugin: "caching_sha2_password".into(),
            attributes: vec![("_client_name".into(), "libmysql".into())],
        };
        assert_eq!(decode_handshake_response(&encode_handshake_response(&h)).unwrap(), h);
        let ssl = HandshakeResponse {
            capabilities: caps::PROTOCOL_41 | caps::SSL | caps::LONG_PASSWORD,
            ssl_request: true,
            ..HandshakeResponse::default()
        };
        let wire = encode_handshake_response(&ssl);
        assert_eq!(wire.len(), 32);
        assert!(decode_handshake_response(&wire).unwrap().ssl_request);
    }

    #[test]
    fn ok_err_eof_round_trip() {
        let ok =
            OkPacket { affected_rows: 3, last_insert_id: 300, status: 2, warnings: 1, info: "Rows matched: 3".into() };
        assert_eq!(decode_ok(&encode_ok(&ok, 0), 0).unwrap(), ok);
        let e = MysqlError { code: 1146, sqlstate: "42S02".into(), message: "Table 'x.y' doesn't exist".into() };
        assert_eq!(decode_err(&encode_err(&e)).unwrap(), Some(e));
        assert_eq!(decode_err(&[0xFF, 0xFF, 0xFF, 1, 2]).unwrap(), None, "progress report");
        assert_eq!(decode_eof(&encode_eof(2, 0x22)), (2, 0x22));
        assert!(is_end_of_rows(&encode_eof(0, 2), 0));
        assert!(is_end_of_rows(&encode_ok(&ok, 0xFE), caps::DEPRECATE_EOF));
        assert!(!is_end_of_rows(&encode_ok(&ok, 0xFE), 0), "too long to be an EOF packet");
    }

    #[test]
    fn column_round_trips() {
        let c = MysqlColumn {
            name: "total".into(),
            column_type: "NEWDECIMAL".into(),
            flags: vec!["NOT_NULL".into(), "BINARY".into()],
            table: "o".into(),
            org_name: "amount".into(),
            org_table: "orders".into(),
            schema: "shop".into(),
            charset: 63,
            length: 12,
            decimals: 2,
        };
        let (back, kind) = decode_column(&encode_column(&c), 0).unwrap();
        assert_eq!(back, c);
        assert_eq!(kind, ColumnKind { ty: 0xf6, flags: 129 });
    }

    fn col(ty: &str, unsigned: bool) -> MysqlColumn {
        MysqlColumn {
            name: "c".into(),
            column_type: ty.into(),
            flags: if unsigned { vec!["UNSIGNED".into()] } else { vec![] },
            ..MysqlColumn::default()
        }
    }

    #[test]
    fn binary_rows_round_trip_every_type() {
        let cases: Vec<(MysqlColumn, MysqlValue)> = vec![
            (col("TINY", false), MysqlValue::Int(-5)),
            (col("TINY", true), MysqlValue::Int(250)),
            (col("SHORT", false), MysqlValue::Int(-300)),
            (col("YEAR", false), MysqlValue::Int(2024)),
            (col("LONG", false), MysqlValue::Int(-70000)),
            (col("INT24", true), MysqlValue::Int(70000)),
            (col("LONGLONG", false), MysqlValue::Int(i64::MIN)),
            (col("LONGLONG", true), MysqlValue::UInt(u64::MAX)),
            (col("FLOAT", false), MysqlValue::Float(1.1)),
            (col("DOUBLE", false), MysqlValue::Float(-2.5e-7)),
            (col("NEWDECIMAL", false), MysqlValue::Text("12.75".into())),
            (col("VAR_STRING", false), MysqlValue::Text("héllo".into())),
            (col("BLOB", false), MysqlValue::Bytes(vec![0, 0xFF, 0xFE])),
            (col("DATE", false), MysqlValue::Text("2024-02-29".into())),
            (col("DATETIME", false), MysqlValue::Text("2024-02-29 13:14:15".into())),
            (col("DATETIME", false), MysqlValue::Text("2024-02-29 00:00:00.000123".into())),
            (col("DATETIME", false), MysqlValue::Text("0000-00-00 00:00:00".into())),
            (col("TIMESTAMP", false), MysqlValue::Text("2024-02-29 13:14:15.500000".into())),
            (col("TIME", false), MysqlValue::Text("-838:59:59".into())),
            (col("TIME", false), MysqlValue::Text("25:00:01.000001".into())),
            (col("TIME", false), MysqlValue::Text("00:00:00".into())),
            (col("VAR_STRING", false), MysqlValue::Null),
        ];
        let kinds: Vec<ColumnKind> = cases.iter().map(|(c, _)| ColumnKind::of(c)).collect();
        let row: Vec<MysqlValue> = cases.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(decode_binary_row(&encode_binary_row(&row, &kinds), &kinds).unwrap(), row);
    }

    #[test]
    fn text_rows_round_trip() {
        let row = vec![MysqlValue::Text("1".into()), MysqlValue::Null, MysqlValue::Bytes(vec![0xC3])];
        assert_eq!(decode_text_row(&encode_text_row(&row), 3).unwrap(), row);
        assert!(decode_text_row(&encode_text_row(&row), 2).is_err());
    }

    #[test]
    fn execute_round_trips_and_reuses_bound_types() {
        let e = Execute {
            statement_id: 9,
            flags: 0,
            types: vec![(types::LONGLONG, 0), (types::VAR_STRING, 0), (types::DOUBLE, 0), (types::NULL, 0)],
            params: vec![MysqlValue::Int(42), MysqlValue::Text("a".into()), MysqlValue::Float(2.5), MysqlValue::Null],
            types_sent: true,
        };
        let wire = encode_execute(&e);
        assert_eq!(decode_execute(&wire[1..], 4, &[]).unwrap(), e);
        let again = Execute { types_sent: false, ..e.clone() };
        let wire = encode_execute(&again);
        assert_eq!(decode_execute(&wire[1..], 4, &e.types).unwrap(), again);
        assert!(decode_execute(&wire[1..], 4, &[]).is_err());
    }

    #[test]
    fn flags_by_name_round_trip() {
        let bits = caps::PROTOCOL_41 | caps::DEPRECATE_EOF | caps::MARIADB_CACHE_METADATA | 1 << 50;
        assert_eq!(parse_flags(&flag_names(bits, caps::NAMES), caps::NAMES), bits);
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..300), n in 0usize..20) {
            let _ = decode_greeting(&data);
            let _ = decode_handshake_response(&data);
            let _ = decode_ok(&data, caps::SESSION_TRACK);
            let _ = decode_ok(&data, 0);
            let _ = decode_err(&data);
            let _ = decode_column(&data, caps::MARIADB_EXTENDED_METADATA);
            let _ = decode_text_row(&data, n);
            let kinds: Vec<ColumnKind> = (0..n).map(|i| ColumnKind { ty: types::NAMES[i % types::NAMES.len()].0, flags: 0 }).collect();
            let _ = decode_binary_row(&data, &kinds);
            let prev: Vec<(u8, u8)> = kinds.iter().map(|k| (k.ty, 0)).collect();
            let _ = decode_execute(&data, n, &prev);
            let _ = decode_prepare_ok(&data);
        }

        #[test]
        fn binary_integers_round_trip(v in any::<i64>(), u in any::<u64>()) {
            let kinds = [ColumnKind { ty: types::LONGLONG, flags: 0 }, ColumnKind { ty: types::LONGLONG, flags: column_flags::UNSIGNED }];
            let row = vec![MysqlValue::Int(v), unsigned_value(u)];
            prop_assert_eq!(decode_binary_row(&encode_binary_row(&row, &kinds), &kinds).unwrap(), row);
        }
    }
}
