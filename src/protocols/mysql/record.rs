//! Turns a proxied MySQL connection into mocks. The observer follows the conversation packet by packet in
//! both directions: the handshake (greeting, the client's answer, the authentication exchange whatever the
//! plugin), then each command with its answer. One mock per command; one for the handshake.
//!
//! Anything it cannot follow (TLS, compression, cursors, long data, unknown commands) makes it return an
//! error: the proxy records the rest of the connection as opaque bytes and the app's traffic flows on.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::message::{
    self, ColumnKind, Greeting, HandshakeResponse, caps, decode_column, decode_err, decode_ok, status,
};
use super::packet::{Framer, Packet};
use super::{CACHING_SHA2, command};
use crate::protocols::mysql::{
    MysqlColumn, MysqlHandshake, MysqlLocalInfile, MysqlMock, MysqlPrepared, MysqlResult, MysqlValue,
};
use crate::protocols::{Observer, ParseError, RecordCtx};
use crate::store::Record;

/// An answer beyond this many bytes is not decoded: the rest of the connection is recorded opaque (which
/// has the same limit), so a huge result set cannot exhaust doppel's memory. The traffic itself flows on.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server's greeting.
    Greeting,
    /// Waiting for the client's handshake response.
    Login,
    /// Authentication exchange until the server's OK or ERR.
    Auth,
    Command,
    /// After COM_QUIT or a failed login: nothing more is recorded.
    Closed,
}

/// A prepared statement as the server described it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Statement {
    pub sql: String,
    pub params: usize,
    pub columns: Vec<MysqlColumn>,
    pub kinds: Vec<ColumnKind>,
    /// Parameter types of the latest execution, reused when an execution sends none.
    pub bound: Vec<(u8, u8)>,
}

/// A command the client sent, waiting for (or receiving) its answer.
struct Pending {
    command: u8,
    payload: Vec<u8>,
    started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The first packet of an answer (or of the next result of a multi-result answer).
    First,
    Columns {
        left: usize,
    },
    ColumnsEof,
    Rows,
    PrepareParams {
        left: usize,
    },
    PrepareParamsEof,
    PrepareColumns {
        left: usize,
    },
    PrepareColumnsEof,
    /// LOAD DATA LOCAL: the client is sending the file.
    InfileData,
    /// LOAD DATA LOCAL: the file was sent; the server's OK or ERR follows.
    InfileReply,
}

/// The answer being received to the oldest pending command.
struct Answer {
    mock: MysqlMock,
    stage: Stage,
    binary: bool,
    columns: Vec<MysqlColumn>,
    kinds: Vec<ColumnKind>,
    rows: Vec<Vec<MysqlValue>>,
    /// For COM_STMT_PREPARE: the statement id and counts from the first packet.
    prepare: Option<message::PrepareOk>,
    prepared: MysqlPrepared,
    /// For COM_STMT_EXECUTE: the statement the answer's columns may come from.
    statement: Option<u32>,
    /// Payload bytes received so far.
    size: usize,
}

struct Login {
    greeting: Greeting,
    response: Option<HandshakeResponse>,
    plugin: String,
    steps: Vec<String>,
    started: Instant,
}

pub struct MysqlObserver {
    ctx: RecordCtx,
    client: Framer,
    server: Framer,
    phase: Phase,
    /// Capabilities both sides agreed on.
    capabilities: u64,
    login: Option<Login>,
    pending: VecDeque<Pending>,
    answer: Option<Answer>,
    statements: HashMap<u32, Statement>,
    last_prepared: Option<u32>,
    /// The client asked for TLS (SSLRequest) in the piece just fed.
    tls_requested: bool,
    /// Where in the piece just fed the TLS handshake starts.
    tls_boundary: Option<usize>,
}

impl MysqlObserver {
    pub fn new(ctx: RecordCtx) -> MysqlObserver {
        MysqlObserver {
            ctx,
            client: Framer::new(),
            server: Framer::new(),
            phase: Phase::Greeting,
            capabilities: 0,
            login: None,
            pending: VecDeque::new(),
            answer: None,
            statements: HashMap::new(),
            last_prepared: None,
            tls_requested: false,
            tls_boundary: None,
        }
    }

    fn on_server_packet(&mut self, p: Packet, at: Instant) -> Result<(), ParseError> {
        match self.phase {
            Phase::Greeting => {
                if p.payload.first() == Some(&0xFF) {
                    // Refused before any handshake (too many connections, host not allowed).
                    let error = decode_err(&p.payload)?;
                    let mock = MysqlMock { command: "handshake".into(), error, ..MysqlMock::default() };
                    self.emit(mock, at, at);
                    self.phase = Phase::Closed;
                    return Ok(());
                }
                let greeting = message::decode_greeting(&p.payload)?;
                let plugin = greeting.auth_plugin.clone();
                self.login = Some(Login { greeting, response: None, plugin, steps: Vec::new(), started: at });
                self.phase = Phase::Login;
                Ok(())
            }
            Phase::Login => Err("the server spoke before the client answered its greeting".into()),
            Phase::Auth => self.on_auth_packet(&p.payload, at),
            Phase::Command => self.on_answer_packet(&p.payload, at),
            Phase::Closed => Ok(()),
        }
    }

    fn on_auth_packet(&mut self, payload: &[u8], at: Instant) -> Result<(), ParseError> {
        let login = self.login.as_mut().ok_or("authentication without a greeting")?;
        match payload.first() {
            Some(0x00) => {
                self.phase = Phase::Command;
                self.emit_login(None, at);
            }
            Some(0xFF) => {
                let error = decode_err(payload)?;
                self.phase = Phase::Closed;
                self.emit_login(error, at);
            }
            Some(0xFE) => {
                let mut r = super::packet::Reader::new(&payload[1..]);
                login.plugin = r.nul_string();
                login.steps.push(format!("auth switch to {}", login.plugin));
            }
            Some(0x01) => {
                let step = match (login.plugin.as_str(), &payload[1..]) {
                    (CACHING_SHA2, [3]) => "caching_sha2_password fast auth success".to_string(),
                    (CACHING_SHA2, [4]) => "caching_sha2_password full auth requested".to_string(),
                    (CACHING_SHA2, key) if key.starts_with(b"-----BEGIN") => "server sent its public key".to_string(),
                    (_, data) => format!("more auth data ({} bytes)", data.len()),
                };
                login.steps.push(step);
            }
            _ => return Err("unexpected packet during authentication".into()),
        }
        Ok(())
    }

    fn on_client_packet(&mut self, p: Packet, at: Instant) -> Result<(), ParseError> {
        match self.phase {
            Phase::Greeting => Err("the client spoke before the server's greeting".into()),
            Phase::Login => {
                let response = message::decode_handshake_response(&p.payload)?;
                let login = self.login.as_mut().ok_or("a handshake response without a greeting")?;
                if response.ssl_request {
                    // The real handshake response follows inside TLS (the proxy decrypts it when it can).
                    login.steps.push("TLS (SSLRequest)".into());
                    self.tls_requested = true;
                    return Ok(());
                }
                let agreed = response.capabilities & login.greeting.capabilities;
                if agreed & (caps::COMPRESS | caps::ZSTD_COMPRESSION) != 0 {
                    return Err("the connection uses compression, which doppel does not follow".into());
                }
                if agreed & caps::OPTIONAL_RESULTSET_METADATA != 0 {
                    return Err("the connection uses optional result set metadata, which doppel does not follow".into());
                }
                self.capabilities = agreed;
                if !response.auth_plugin.is_empty() {
                    login.plugin = response.auth_plugin.clone();
                }
                login.response = Some(response);
                self.phase = Phase::Auth;
                Ok(())
            }
            Phase::Auth => {
                if let Some(login) = self.login.as_mut()
                    && login.plugin == CACHING_SHA2
                    && p.payload == [2]
                {
                    login.steps.push("client asked for the server's public key".into());
                }
                Ok(())
            }
            Phase::Command => self.on_command(p.payload, at),
            Phase::Closed => Ok(()),
        }
    }

    fn on_command(&mut self, payload: Vec<u8>, at: Instant) -> Result<(), ParseError> {
        if let Some(a) = self.answer.as_mut()
            && a.stage == Stage::InfileData
        {
            let infile = a.mock.local_infile.get_or_insert_with(MysqlLocalInfile::default);
            if payload.is_empty() {
                a.stage = Stage::InfileReply;
            } else {
                infile.bytes_sent += payload.len() as u64;
            }
            return Ok(());
        }
        let Some((&code, body)) = payload.split_first() else {
            return Err("an empty command packet".into());
        };
        match code {
            command::QUIT => {
                self.phase = Phase::Closed;
                return Ok(());
            }
            command::QUERY if self.capabilities & caps::QUERY_ATTRIBUTES != 0 => {
                return Err("COM_QUERY with query attributes is not followed".into());
            }
            command::STMT_EXECUTE if body.get(4).is_some_and(|flags| flags & 0x07 != 0) => {
                return Err("COM_STMT_EXECUTE with a cursor (COM_STMT_FETCH) is not followed".into());
            }
            command::QUERY
            | command::STMT_PREPARE
            | command::STMT_EXECUTE
            | command::STMT_RESET
            | command::STMT_CLOSE
            | command::PING
            | command::INIT_DB
            | command::RESET_CONNECTION => {}
            other => {
                return Err(ParseError::Malformed(format!(
                    "command 0x{other:02x} ({}) is not followed",
                    command::name(other)
                )));
            }
        }
        self.pending.push_back(Pending { command: code, payload: body.to_vec(), started: at });
        self.apply_silent_commands();
        Ok(())
    }

    /// Commands without an answer take effect when they reach the front of the queue.
    fn apply_silent_commands(&mut self) {
        while self.answer.is_none() && self.pending.front().is_some_and(|p| p.command == command::STMT_CLOSE) {
            if let Some(p) = self.pending.pop_front()
                && let Some(id) = p.payload.get(..4)
            {
                let id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
                self.statements.remove(&id);
            }
        }
    }

    fn statement_id(&self, payload: &[u8]) -> Option<u32> {
        let id = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
        // MariaDB: -1 means the statement prepared last on this connection.
        if id == u32::MAX { self.last_prepared } else { Some(id) }
    }

    /// Starts the answer to the oldest pending command; its request is decoded now, once every statement
    /// it may refer to is known.
    fn begin_answer(&mut self) -> Result<Answer, ParseError> {
        let p = self.pending.front().ok_or("the server answered a command that was not sent")?;
        let mut mock = MysqlMock { command: command::mock_name(p.command).into(), ..MysqlMock::default() };
        let mut binary = false;
        let mut statement = None;
        match p.command {
            command::QUERY | command::STMT_PREPARE => {
                mock.sql = Some(String::from_utf8_lossy(&p.payload).into_owned());
            }
            command::INIT_DB => mock.schema = Some(String::from_utf8_lossy(&p.payload).into_owned()),
            command::STMT_EXECUTE | command::STMT_RESET => {
                let id = self.statement_id(&p.payload).ok_or("a statement command without a statement id")?;
                let stmt = self
                    .statements
                    .get_mut(&id)
                    .ok_or(ParseError::Malformed(format!("statement {id} was never prepared")))?;
                mock.sql = Some(stmt.sql.clone());
                mock.statement_id = Some(id);
                if p.command == command::STMT_EXECUTE {
                    let e = message::decode_execute(&p.payload, stmt.params, &stmt.bound)?;
                    mock.param_types = e.types.iter().map(|t| message::param_type_name(*t)).collect();
                    mock.params = e.params;
                    stmt.bound = e.types;
                    binary = true;
                    statement = Some(id);
                }
            }
            _ => {}
        }
        Ok(Answer {
            mock,
            stage: Stage::First,
            binary,
            columns: Vec::new(),
            kinds: Vec::new(),
            rows: Vec::new(),
            prepare: None,
            prepared: MysqlPrepared::default(),
            statement,
            size: 0,
        })
    }

    fn on_answer_packet(&mut self, payload: &[u8], at: Instant) -> Result<(), ParseError> {
        let mut answer = match self.answer.take() {
            Some(a) => a,
            None => self.begin_answer()?,
        };
        answer.size += payload.len();
        if answer.size > MAX_ANSWER {
            return Err(ParseError::Malformed(format!(
                "an answer larger than {} MiB is not decoded",
                MAX_ANSWER >> 20
            )));
        }
        let done = self.advance(&mut answer, payload)?;
        if done {
            let p = self.pending.pop_front().ok_or("an answer without its command")?;
            self.finish(answer, p, at);
            self.apply_silent_commands();
        } else {
            self.answer = Some(answer);
        }
        Ok(())
    }

    /// Feeds one server packet to an answer; true when the answer is complete.
    fn advance(&mut self, a: &mut Answer, payload: &[u8]) -> Result<bool, ParseError> {
        let caps = self.capabilities;
        let deprecate_eof = caps & caps::DEPRECATE_EOF != 0;
        let first = payload.first().copied().ok_or("an empty packet from the server")?;
        // No row or column definition starts with 0xFF (it is not a valid length), so this is always ERR.
        if first == 0xFF {
            return Ok(match decode_err(payload)? {
                Some(e) => {
                    a.mock.error = Some(e);
                    true
                }
                None => false, // MariaDB progress report
            });
        }
        match a.stage {
            Stage::First | Stage::InfileReply => {
                if first == 0x00 && a.mock.command == "prepare" {
                    let ok = message::decode_prepare_ok(payload)?;
                    a.prepare = Some(ok);
                    a.prepared.warnings = ok.warnings;
                    a.stage = Stage::PrepareParams { left: usize::from(ok.params) };
                    return self.after_prepare_stage(a);
                }
                if first == 0x00 {
                    let ok = decode_ok(payload, caps)?;
                    let more = ok.status & status::MORE_RESULTS_EXISTS != 0;
                    a.mock.results.push(result_of_ok(ok, Vec::new(), Vec::new()));
                    a.stage = Stage::First;
                    return Ok(!more);
                }
                if first == 0xFB && a.mock.command == "query" {
                    let filename = String::from_utf8_lossy(&payload[1..]).into_owned();
                    a.mock.local_infile = Some(MysqlLocalInfile { filename, bytes_sent: 0 });
                    a.stage = Stage::InfileData;
                    return Ok(false);
                }
                if first == 0xFE {
                    return Err("an EOF packet where an answer was expected".into());
                }
                let mut r = super::packet::Reader::new(payload);
                let count = usize::try_from(r.lenenc().ok_or("a bad column count")?).map_err(|e| e.to_string())?;
                if count == 0 {
                    return Err("a result set without columns".into());
                }
                let metadata_follows = if caps & caps::MARIADB_CACHE_METADATA != 0 { r.u8() != Some(0) } else { true };
                a.columns.clear();
                a.kinds.clear();
                a.rows.clear();
                if metadata_follows {
                    a.stage = Stage::Columns { left: count };
                } else {
                    let stmt =
                        a.statement.and_then(|id| self.statements.get(&id)).ok_or("cached metadata is unknown")?;
                    a.columns = stmt.columns.clone();
                    a.kinds = stmt.kinds.clone();
                    a.stage = if deprecate_eof { Stage::Rows } else { Stage::ColumnsEof };
                }
                Ok(false)
            }
            Stage::Columns { left } => {
                let (c, k) = decode_column(payload, caps)?;
                a.columns.push(c);
                a.kinds.push(k);
                a.stage = match left.saturating_sub(1) {
                    0 if deprecate_eof => Stage::Rows,
                    0 => Stage::ColumnsEof,
                    n => Stage::Columns { left: n },
                };
                Ok(false)
            }
            Stage::ColumnsEof => {
                if first != 0xFE {
                    return Err("no EOF packet after the column definitions".into());
                }
                a.stage = Stage::Rows;
                Ok(false)
            }
            Stage::Rows => {
                if message::is_end_of_rows(payload, caps) {
                    let ok = if deprecate_eof {
                        decode_ok(payload, caps)?
                    } else {
                        let (warnings, status) = message::decode_eof(payload);
                        message::OkPacket { warnings, status, ..message::OkPacket::default() }
                    };
                    let more = ok.status & status::MORE_RESULTS_EXISTS != 0;
                    let columns = std::mem::take(&mut a.columns);
                    let rows = std::mem::take(&mut a.rows);
                    a.mock.results.push(result_of_ok(ok, columns, rows));
                    a.stage = Stage::First;
                    return Ok(!more);
                }
                let row = if a.binary {
                    message::decode_binary_row(payload, &a.kinds)?
                } else {
                    message::decode_text_row(payload, a.kinds.len())?
                };
                a.rows.push(row);
                Ok(false)
            }
            Stage::PrepareParams { left } => {
                a.prepared.params.push(decode_column(payload, caps)?.0);
                a.stage = Stage::PrepareParams { left: left.saturating_sub(1) };
                self.after_prepare_stage(a)
            }
            Stage::PrepareParamsEof | Stage::PrepareColumnsEof => {
                if first != 0xFE {
                    return Err("no EOF packet after the prepared statement's definitions".into());
                }
                a.stage = if a.stage == Stage::PrepareParamsEof {
                    Stage::PrepareColumns { left: a.prepare.map_or(0, |p| usize::from(p.columns)) }
                } else {
                    Stage::PrepareColumns { left: 0 }
                };
                self.after_prepare_stage(a)
            }
            Stage::PrepareColumns { left } => {
                let (c, k) = decode_column(payload, caps)?;
                a.prepared.columns.push(c);
                a.kinds.push(k);
                a.stage = Stage::PrepareColumns { left: left.saturating_sub(1) };
                self.after_prepare_stage(a)
            }
            Stage::InfileData => Err("the server spoke while the client was sending a LOCAL INFILE file".into()),
        }
    }

    /// Moves a prepare answer past sections that are complete; true when the whole answer is.
    fn after_prepare_stage(&mut self, a: &mut Answer) -> Result<bool, ParseError> {
        let deprecate_eof = self.capabilities & caps::DEPRECATE_EOF != 0;
        let ok = a.prepare.ok_or("a prepare answer without its header")?;
        loop {
            match a.stage {
                Stage::PrepareParams { left: 0 } => {
                    a.stage = if ok.params > 0 && !deprecate_eof {
                        Stage::PrepareParamsEof
                    } else {
                        Stage::PrepareColumns { left: usize::from(ok.columns) }
                    };
                    if a.stage == Stage::PrepareParamsEof {
                        return Ok(false);
                    }
                }
                Stage::PrepareColumns { left: 0 } => {
                    if ok.columns > 0 && !deprecate_eof && a.prepared.columns.len() == usize::from(ok.columns) {
                        // Expect the EOF once; after it the stage comes back here with the columns complete.
                        a.stage = Stage::PrepareColumnsEof;
                        a.prepare = Some(message::PrepareOk { columns: 0, ..ok });
                        return Ok(false);
                    }
                    let sql = a.mock.sql.clone().unwrap_or_default();
                    self.statements.insert(
                        ok.statement_id,
                        Statement {
                            sql,
                            params: a.prepared.params.len(),
                            columns: a.prepared.columns.clone(),
                            kinds: std::mem::take(&mut a.kinds),
                            bound: Vec::new(),
                        },
                    );
                    self.last_prepared = Some(ok.statement_id);
                    a.mock.statement_id = Some(ok.statement_id);
                    a.mock.prepared = Some(std::mem::take(&mut a.prepared));
                    return Ok(true);
                }
                _ => return Ok(false),
            }
        }
    }

    fn finish(&mut self, answer: Answer, p: Pending, at: Instant) {
        if p.command == command::RESET_CONNECTION && answer.mock.error.is_none() {
            // The server dropped the connection's prepared statements.
            self.statements.clear();
            self.last_prepared = None;
        }
        self.emit(answer.mock, p.started, at);
    }

    fn emit_login(&mut self, error: Option<crate::protocols::mysql::MysqlError>, at: Instant) {
        let Some(login) = self.login.take() else { return };
        let g = &login.greeting;
        let response = login.response.unwrap_or_default();
        let handshake = MysqlHandshake {
            server_version: g.server_version.clone(),
            connection_id: g.connection_id,
            charset: g.charset,
            auth_plugin: g.auth_plugin.clone(),
            server_capabilities: message::flag_names(g.capabilities, caps::NAMES),
            client_capabilities: message::flag_names(response.capabilities, caps::NAMES),
            user: response.user,
            database: response.database,
            client_auth_plugin: response.auth_plugin,
            attributes: response.attributes.into_iter().collect(),
            auth_steps: login.steps,
        };
        let mock = MysqlMock { command: "handshake".into(), handshake: Some(handshake), error, ..MysqlMock::default() };
        self.emit(mock, login.started, at);
    }

    fn emit(&self, mysql: MysqlMock, started: Instant, done: Instant) {
        let Some(mut mock) = self.ctx.mock("mysql", started, done) else { return };
        mock.mysql = Some(mysql);
        self.ctx.sink.submit(Record::Mock(Box::new(mock)));
    }
}

fn result_of_ok(ok: message::OkPacket, columns: Vec<MysqlColumn>, rows: Vec<Vec<MysqlValue>>) -> MysqlResult {
    MysqlResult {
        columns,
        rows,
        affected_rows: ok.affected_rows,
        last_insert_id: ok.last_insert_id,
        warnings: ok.warnings,
        status: message::flag_names(u64::from(ok.status), status::NAMES),
        info: ok.info,
    }
}

/// Adds a piece to a side's framer; a packet beyond `MAX_ANSWER` is not decoded.
fn push_bounded(framer: &mut Framer, data: &[u8], side: &str) -> Result<(), ParseError> {
    framer.push(data);
    if framer.buffered() > MAX_ANSWER {
        return Err(ParseError::Malformed(format!(
            "a {side} packet larger than {} MiB is not decoded",
            MAX_ANSWER >> 20
        )));
    }
    Ok(())
}

impl Observer for MysqlObserver {
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        push_bounded(&mut self.client, data, "client")?;
        while let Some(p) = self.client.next_packet() {
            self.on_client_packet(p, at)?;
            if self.tls_requested {
                // What follows the SSLRequest in this piece is the start of the TLS handshake.
                let rest = self.client.buffered();
                self.client = Framer::new();
                self.tls_boundary = Some(data.len().saturating_sub(rest));
                self.tls_requested = false;
                break;
            }
        }
        Ok(())
    }

    fn tls_boundary(&mut self) -> Option<usize> {
        self.tls_boundary.take()
    }

    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        push_bounded(&mut self.server, data, "server")?;
        while let Some(p) = self.server.next_packet() {
            self.on_server_packet(p, at)?;
        }
        Ok(())
    }

    fn close(&mut self, _at: Instant) {
        // Commands still waiting for an answer were in flight: nothing to replay them with.
        self.pending.clear();
        self.answer = None;
    }
}
