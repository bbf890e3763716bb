//! Replay: doppel plays the MySQL server. It greets the app with the recorded server version, accepts any
//! credentials (the scramble is new each time, so recorded auth answers could never match), honours the
//! capabilities the client asks for (deprecate-EOF or not), and answers every command from the mocks:
//! queries by SQL, prepared statements by SQL with ids of its own per connection, executions by SQL and
//! parameter values. Session statements (SET, USE, transaction control) that were not recorded get a
//! plain OK, and a pool's `SELECT 1` its usual answer; any other command without a recording gets ERR 1105
//! naming it, and fails the running test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::message::{self, ColumnKind, Greeting, OkPacket, caps, status};
use super::packet::{Framer, Packet, write_packet};
use super::record::Statement;
use super::{CACHING_SHA2, NATIVE_PASSWORD, command};
use crate::protocols::ServeCtx;
use crate::protocols::mysql::{MysqlColumn, MysqlError, MysqlMock, MysqlResult, MysqlValue};

/// What doppel offers in replay: no compression, session tracking or MariaDB extensions, so clients fall
/// back to the plain protocol that every recording can be re-encoded into. TLS is added when doppel's CA
/// is loaded.
const OFFERED: u64 = caps::LONG_PASSWORD
    | 1 << 1 // FOUND_ROWS
    | 1 << 2 // LONG_FLAG
    | caps::CONNECT_WITH_DB
    | 1 << 4 // NO_SCHEMA
    | caps::LOCAL_FILES
    | 1 << 8 // IGNORE_SPACE
    | caps::PROTOCOL_41
    | 1 << 10 // INTERACTIVE
    | 1 << 12 // IGNORE_SIGPIPE
    | 1 << 13 // TRANSACTIONS
    | caps::SECURE_CONNECTION
    | caps::MULTI_STATEMENTS
    | caps::MULTI_RESULTS
    | caps::PS_MULTI_RESULTS
    | caps::PLUGIN_AUTH
    | caps::CONNECT_ATTRS
    | caps::PLUGIN_AUTH_LENENC_DATA
    | 1 << 22 // CAN_HANDLE_EXPIRED_PASSWORDS
    | caps::DEPRECATE_EOF;

const AUTOCOMMIT: u16 = 0x0002;

static CONNECTION_IDS: AtomicU32 = AtomicU32::new(1);

struct Wire {
    stream: crate::protocols::Conn,
    framer: Framer,
    buf: Vec<u8>,
}

impl Wire {
    async fn read(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = self.framer.next_packet() {
                return Some(p);
            }
            match self.stream.read(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.framer.push(&self.buf[..n]),
            }
        }
    }

    async fn send(&mut self, out: &[u8]) -> Option<()> {
        self.stream.write_all(out).await.ok()
    }
}

/// One connection's state: what it negotiated and the statements it prepared (replay's own ids).
struct Session {
    ctx: ServeCtx,
    capabilities: u64,
    statements: HashMap<u32, Statement>,
    next_statement: u32,
    last_prepared: Option<u32>,
}

pub(super) async fn serve(stream: crate::protocols::Conn, ctx: ServeCtx) {
    let mut wire = Wire { stream, framer: Framer::new(), buf: vec![0u8; 64 * 1024] };
    let Some(mut session) = handshake(&mut wire, ctx).await else { return };
    while let Some(p) = wire.read().await {
        let mut seq = p.seq.wrapping_add(1);
        let Some((&code, body)) = p.payload.split_first() else { return };
        let mut out = Vec::new();
        match code {
            command::QUIT => return,
            command::STMT_CLOSE => {
                if let Some(id) = session.statement_id(body) {
                    session.statements.remove(&id);
                }
                continue;
            }
            command::QUERY => {
                let sql = String::from_utf8_lossy(body).into_owned();
                if !session.answer_query(&mut wire, &sql, &mut seq).await {
                    return;
                }
                continue;
            }
            command::STMT_PREPARE => session.answer_prepare(&mut out, &mut seq, &String::from_utf8_lossy(body)),
            command::STMT_EXECUTE => session.answer_execute(&mut out, &mut seq, body),
            command::STMT_RESET => {
                let sql = session.statement_id(body).and_then(|id| session.statements.get(&id)).map(|s| s.sql.clone());
                match sql {
                    Some(sql) => session.answer_simple(&mut out, &mut seq, "reset", |m| m.sql.as_deref() == Some(&sql)),
                    None => {
                        let e = error(1243, "HY000", "Unknown prepared statement handler given to mysqld_stmt_reset");
                        write_packet(&mut out, &mut seq, &message::encode_err(&e));
                    }
                }
            }
            command::INIT_DB => {
                let schema = String::from_utf8_lossy(body).into_owned();
                session.answer_simple(&mut out, &mut seq, "init_db", |m| m.schema.as_deref() == Some(&schema));
            }
            command::PING => session.answer_simple(&mut out, &mut seq, "ping", |_| true),
            command::RESET_CONNECTION => {
                session.statements.clear();
                session.last_prepared = None;
                session.answer_simple(&mut out, &mut seq, "reset_connection", |_| true);
            }
            other => {
                let what = format!("{} (0x{other:02x}), which doppel does not replay", command::name(other));
                session.ctx.pool.miss("mysql", &session.ctx.dest, what.clone());
                write_packet(
                    &mut out,
                    &mut seq,
                    &message::encode_err(&error(1047, "08S01", &format!("doppel: {what}"))),
                );
            }
        }
        if wire.send(&out).await.is_none() {
            return;
        }
    }
}

/// Greets the app, reads its login and accepts it. `None` when the connection cannot go on.
async fn handshake(wire: &mut Wire, ctx: ServeCtx) -> Option<Session> {
    let recorded = pick_handshake(&ctx);
    let hs = recorded.as_ref().and_then(|m| m.handshake.clone()).unwrap_or_default();
    let plugin = match hs.auth_plugin.as_str() {
        "" => NATIVE_PASSWORD.to_string(),
        p => p.to_string(),
    };
    let greeting = Greeting {
        server_version: if hs.server_version.is_empty() { "8.0.0-doppel".into() } else { hs.server_version.clone() },
        connection_id: CONNECTION_IDS.fetch_add(1, Ordering::Relaxed),
        scramble: scramble(),
        capabilities: if ctx.ca.is_some() { OFFERED | caps::SSL } else { OFFERED },
        charset: if hs.charset == 0 { 45 } else { hs.charset },
        status: AUTOCOMMIT,
        auth_plugin: plugin.clone(),
    };
    let mut out = Vec::new();
    let mut seq = 0;
    write_packet(&mut out, &mut seq, &message::encode_greeting(&greeting));
    wire.send(&out).await?;
    let Some(mut login) = wire.read().await else {
        let what = format!("a connection to {} closed after the greeting without logging in", ctx.dest);
        ctx.pool.miss("mysql", &ctx.dest, what);
        return None;
    };
    let mut decoded = message::decode_handshake_response(&login.payload);
    if decoded.as_ref().is_ok_and(|r| r.ssl_request) {
        // The app asked for TLS: answer with a certificate from doppel's CA, then read its login inside.
        let ca = ctx.ca.clone()?;
        let early = wire.framer.take_rest();
        let plain = std::mem::replace(&mut wire.stream, Box::new(tokio::io::duplex(1).0));
        let ip = crate::tls::dest_ip(&ctx.dest);
        match crate::tls::accept(&ca, crate::protocols::Prefixed::new(early, plain), ip, |_| None).await {
            Ok((tls, _)) => wire.stream = Box::new(tls),
            Err(e) => {
                ctx.pool.miss("mysql", &ctx.dest, format!("TLS with the app failed for {}: {e}", ctx.dest));
                return None;
            }
        }
        login = wire.read().await?;
        decoded = message::decode_handshake_response(&login.payload);
    }
    let response = match decoded {
        Ok(r) => r,
        Err(e) => {
            ctx.pool.miss(
                "mysql",
                &ctx.dest,
                format!("a connection to {} whose login doppel cannot read: {e}", ctx.dest),
            );
            return None;
        }
    };

    let mut seq = login.seq.wrapping_add(1);
    let mut out = Vec::new();
    if let Some(e) = recorded.as_ref().and_then(|m| m.error.as_ref()) {
        // The recording's login failed: fail the same way.
        write_packet(&mut out, &mut seq, &message::encode_err(e));
        wire.send(&out).await;
        return None;
    }
    let client_plugin = if response.auth_plugin.is_empty() { plugin } else { response.auth_plugin.clone() };
    if client_plugin == CACHING_SHA2 && !response.auth_response.is_empty() {
        // What a server with the password in its cache answers: fast auth success, then OK.
        write_packet(&mut out, &mut seq, &[0x01, 0x03]);
    }
    let ok = OkPacket { status: AUTOCOMMIT, ..OkPacket::default() };
    write_packet(&mut out, &mut seq, &message::encode_ok(&ok, 0));
    wire.send(&out).await?;
    Some(Session {
        ctx,
        capabilities: response.capabilities & OFFERED,
        statements: HashMap::new(),
        next_statement: 1,
        last_prepared: None,
    })
}

/// The recorded handshake to imitate: one of this destination's, else any.
fn pick_handshake(ctx: &ServeCtx) -> Option<MysqlMock> {
    let all: Vec<usize> = ctx
        .pool
        .of_kind("mysql")
        .filter(|(_, m)| m.mysql.as_ref().is_some_and(|x| x.command == "handshake"))
        .map(|(i, _)| i)
        .collect();
    let same: Vec<usize> = all.iter().copied().filter(|i| ctx.pool.mocks[*i].dest == ctx.dest).collect();
    let (i, _) = ctx.pool.take(if same.is_empty() { &all } else { &same })?;
    ctx.pool.mocks[i].mysql.clone()
}

/// A fresh 20-byte challenge (printable, as servers send it).
fn scramble() -> Vec<u8> {
    let mut bytes = [0u8; 20];
    // SAFETY: getrandom writes at most `len` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ (i as u8).wrapping_mul(37);
        }
    }
    bytes.iter().map(|b| b'!' + b % 90).collect()
}

/// What a server answers to `SELECT 1`.
fn select_one() -> MysqlMock {
    let column = MysqlColumn {
        name: "1".into(),
        column_type: "LONGLONG".into(),
        flags: vec!["NOT_NULL".into(), "BINARY".into()],
        charset: 63,
        length: 1,
        ..MysqlColumn::default()
    };
    let result = MysqlResult {
        columns: vec![column],
        rows: vec![vec![MysqlValue::Text("1".into())]],
        status: vec!["AUTOCOMMIT".into()],
        ..MysqlResult::default()
    };
    MysqlMock { command: "query".into(), results: vec![result], ..MysqlMock::default() }
}

fn error(code: u16, sqlstate: &str, message: &str) -> MysqlError {
    MysqlError { code, sqlstate: sqlstate.into(), message: message.into() }
}

/// SQL as compared: surrounding blanks and a trailing `;` do not matter.
pub fn normalize_sql(sql: &str) -> &str {
    sql.trim().trim_end_matches(';').trim_end()
}

/// Statements that only set up the session: answered with OK when the recording does not have them.
pub fn is_session_statement(sql: &str) -> bool {
    let s = normalize_sql(sql).to_ascii_lowercase();
    let first = s.split_whitespace().next().unwrap_or("");
    matches!(first, "set" | "use" | "begin" | "commit" | "rollback") || s.starts_with("start transaction")
}

/// Whether two parameter values are the same value (a number may be bound as text by another build).
pub fn same_value(a: &MysqlValue, b: &MysqlValue) -> bool {
    use MysqlValue::*;
    let number = |v: &MysqlValue| match v {
        Int(i) => Some(*i as f64),
        UInt(u) => Some(*u as f64),
        Float(f) => Some(*f),
        Text(t) => t.trim().parse().ok(),
        _ => None,
    };
    match (a, b) {
        (Null, Null) => true,
        (Null, _) | (_, Null) => false,
        (Text(x), Text(y)) => x == y,
        (Bytes(x), Bytes(y)) => x == y,
        (Text(x), Bytes(y)) | (Bytes(y), Text(x)) => x.as_bytes() == y.as_slice(),
        (Int(x), Int(y)) => x == y,
        _ => matches!((number(a), number(b)), (Some(x), Some(y)) if x == y),
    }
}

fn describe_params(params: &[MysqlValue]) -> String {
    let shown: Vec<String> = params
        .iter()
        .map(|v| match v {
            MysqlValue::Null => "NULL".into(),
            MysqlValue::Int(i) => i.to_string(),
            MysqlValue::UInt(u) => u.to_string(),
            MysqlValue::Float(f) => f.to_string(),
            MysqlValue::Text(t) => format!("{t:?}"),
            MysqlValue::Bytes(b) => format!("<{} bytes>", b.len()),
        })
        .collect();
    format!("[{}]", shown.join(", "))
}

impl Session {
    fn deprecate_eof(&self) -> bool {
        self.capabilities & caps::DEPRECATE_EOF != 0
    }

    fn statement_id(&self, body: &[u8]) -> Option<u32> {
        let id = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
        if id == u32::MAX { self.last_prepared } else { Some(id) }
    }

    /// Recorded mysql mocks of `command` that `fits`, this destination's first; takes one.
    fn take(&self, command: &str, fits: impl Fn(&MysqlMock) -> bool) -> Option<MysqlMock> {
        let all: Vec<usize> = self
            .ctx
            .pool
            .of_kind("mysql")
            .filter(|(_, m)| m.mysql.as_ref().is_some_and(|x| x.command == command && fits(x)))
            .map(|(i, _)| i)
            .collect();
        let same: Vec<usize> = all.iter().copied().filter(|i| self.ctx.pool.mocks[*i].dest == self.ctx.dest).collect();
        let (i, _) = self.ctx.pool.take(if same.is_empty() { &all } else { &same })?;
        self.ctx.pool.mocks[i].mysql.clone()
    }

    fn miss(&self, out: &mut Vec<u8>, seq: &mut u8, what: String) {
        let what = format!("{what} (to {})", self.ctx.dest);
        self.ctx.pool.miss("mysql", &self.ctx.dest, what.clone());
        let e = error(1105, "HY000", &format!("doppel: no recorded answer for {what}"));
        write_packet(out, seq, &message::encode_err(&e));
    }

    /// A recorded query of the same shape whose literals are the live ones, or may stand for them (an id
    /// or a password hash the app made anew, written into the SQL text); takes it and says what differed.
    fn take_by_literals(&self, sql: &str) -> Option<MysqlMock> {
        let live = crate::protocols::sql::literals(sql);
        let pool = &self.ctx.pool;
        let fits = |i: usize, m: &MysqlMock| {
            let recorded = crate::protocols::sql::literals(m.sql.as_deref()?);
            let same = recorded.shape == live.shape
                && recorded.values.len() == live.values.len()
                && recorded.values.iter().zip(&live.values).all(|(r, l)| pool.stands_for(i, r, l));
            same.then_some(recorded)
        };
        let all: Vec<usize> = pool
            .of_kind("mysql")
            .filter(|(i, m)| m.mysql.as_ref().is_some_and(|x| x.command == "query" && fits(*i, x).is_some()))
            .map(|(i, _)| i)
            .collect();
        let same: Vec<usize> = all.iter().copied().filter(|i| pool.mocks[*i].dest == self.ctx.dest).collect();
        let (i, _) = pool.take(if same.is_empty() { &all } else { &same })?;
        let mock = pool.mocks[i].mysql.clone()?;
        if let Some(recorded) = fits(i, &mock) {
            let values = recorded.values.into_iter().zip(live.values.iter().cloned());
            let values = values.enumerate().map(|(k, (r, l))| (format!("literal {}", k + 1), r, l));
            pool.tolerate_stand_ins(i, &crate::protocols::sql::short(&live.shape), values);
        }
        Some(mock)
    }

    async fn answer_query(&mut self, wire: &mut Wire, sql: &str, seq: &mut u8) -> bool {
        let wanted = normalize_sql(sql);
        let mut out = Vec::new();
        let exact = self.take("query", |m| m.sql.as_deref().map(normalize_sql) == Some(wanted));
        match exact.or_else(|| self.take_by_literals(sql)) {
            Some(mock) => {
                if let Some(infile) = &mock.local_infile {
                    // Ask for the file as the server did, and take (and drop) whatever the client sends.
                    let mut request = vec![0xFB];
                    request.extend_from_slice(infile.filename.as_bytes());
                    write_packet(&mut out, seq, &request);
                    if wire.send(&out).await.is_none() {
                        return false;
                    }
                    out.clear();
                    loop {
                        let Some(p) = wire.read().await else { return false };
                        *seq = p.seq.wrapping_add(1);
                        if p.payload.is_empty() {
                            break;
                        }
                    }
                }
                self.write_answer(&mut out, seq, &mock, false);
            }
            None if is_session_statement(sql) => {
                let ok = OkPacket { status: AUTOCOMMIT, ..OkPacket::default() };
                write_packet(&mut out, seq, &message::encode_ok(&ok, 0));
            }
            None if wanted.eq_ignore_ascii_case("select 1") => {
                // A pool's liveness check, which may run at other moments than while recording.
                self.write_answer(&mut out, seq, &select_one(), false);
            }
            None => self.miss(&mut out, seq, format!("query `{wanted}`")),
        }
        wire.send(&out).await.is_some()
    }

    fn answer_prepare(&mut self, out: &mut Vec<u8>, seq: &mut u8, sql: &str) {
        let wanted = normalize_sql(sql);
        let Some(mock) = self.take("prepare", |m| m.sql.as_deref().map(normalize_sql) == Some(wanted)) else {
            return self.miss(out, seq, format!("prepared statement `{wanted}`"));
        };
        if let Some(e) = &mock.error {
            return write_packet(out, seq, &message::encode_err(e));
        }
        let prepared = mock.prepared.unwrap_or_default();
        let id = self.next_statement;
        self.next_statement = self.next_statement.wrapping_add(1).max(1);
        let head = message::PrepareOk {
            statement_id: id,
            columns: prepared.columns.len() as u16,
            params: prepared.params.len() as u16,
            warnings: prepared.warnings,
        };
        write_packet(out, seq, &message::encode_prepare_ok(&head));
        for section in [&prepared.params, &prepared.columns] {
            for c in section {
                write_packet(out, seq, &message::encode_column(c));
            }
            if !section.is_empty() && !self.deprecate_eof() {
                write_packet(out, seq, &message::encode_eof(0, AUTOCOMMIT));
            }
        }
        self.statements.insert(
            id,
            Statement {
                sql: wanted.to_string(),
                params: prepared.params.len(),
                kinds: prepared.columns.iter().map(ColumnKind::of).collect(),
                columns: prepared.columns,
                bound: Vec::new(),
            },
        );
        self.last_prepared = Some(id);
    }

    fn answer_execute(&mut self, out: &mut Vec<u8>, seq: &mut u8, body: &[u8]) {
        let Some(id) = self.statement_id(body) else {
            return self.miss(out, seq, "a COM_STMT_EXECUTE too short to name its statement".into());
        };
        let Some(stmt) = self.statements.get_mut(&id) else {
            let e = error(
                1243,
                "HY000",
                &format!("Unknown prepared statement handler ({id}) given to mysqld_stmt_execute"),
            );
            return write_packet(out, seq, &message::encode_err(&e));
        };
        let execute = match message::decode_execute(body, stmt.params, &stmt.bound) {
            Ok(e) => e,
            Err(e) => {
                let sql = stmt.sql.clone();
                return self.miss(out, seq, format!("an execution of `{sql}` doppel cannot read: {e}"));
            }
        };
        stmt.bound = execute.types.clone();
        let sql = stmt.sql.clone();
        let params_match = |m: &MysqlMock| {
            m.params.len() == execute.params.len()
                && m.params.iter().zip(&execute.params).all(|(a, b)| same_value(a, b))
        };
        let same_sql = |m: &MysqlMock| m.sql.as_deref().map(normalize_sql) == Some(sql.as_str());
        match self.take("execute", |m| same_sql(m) && params_match(m)) {
            Some(mock) => self.write_answer(out, seq, &mock, true),
            None => {
                let mut what = format!("execution of `{sql}` with parameters {}", describe_params(&execute.params));
                let near = self.ctx.pool.of_kind("mysql").find_map(|(_, m)| {
                    m.mysql
                        .as_ref()
                        .filter(|x| x.command == "execute" && same_sql(x))
                        .map(|x| describe_params(&x.params))
                });
                if let Some(recorded) = near {
                    what.push_str(&format!("; the recording executed it with {recorded}"));
                }
                self.miss(out, seq, what);
            }
        }
    }

    /// Commands answered by OK or ERR: the recorded answer when there is one, else OK.
    fn answer_simple(&self, out: &mut Vec<u8>, seq: &mut u8, command: &str, fits: impl Fn(&MysqlMock) -> bool) {
        match self.take(command, fits) {
            Some(mock) => self.write_answer(out, seq, &mock, false),
            None => {
                let ok = OkPacket { status: AUTOCOMMIT, ..OkPacket::default() };
                write_packet(out, seq, &message::encode_ok(&ok, 0));
            }
        }
    }

    /// Writes a recorded answer (its results, then its error) as this client's capabilities want it.
    fn write_answer(&self, out: &mut Vec<u8>, seq: &mut u8, mock: &MysqlMock, binary: bool) {
        let deprecate_eof = self.deprecate_eof();
        let n = mock.results.len();
        for (i, r) in mock.results.iter().enumerate() {
            let more = i + 1 < n || mock.error.is_some();
            let mut flags = message::parse_flags(&r.status, status::NAMES) as u16 & !status::MORE_RESULTS_EXISTS;
            if more {
                flags |= status::MORE_RESULTS_EXISTS;
            }
            let ok = |r: &MysqlResult| OkPacket {
                affected_rows: r.affected_rows,
                last_insert_id: r.last_insert_id,
                status: flags,
                warnings: r.warnings,
                info: r.info.clone(),
            };
            if r.columns.is_empty() {
                write_packet(out, seq, &message::encode_ok(&ok(r), 0));
                continue;
            }
            let mut count = Vec::new();
            super::packet::put_lenenc(&mut count, r.columns.len() as u64);
            write_packet(out, seq, &count);
            for c in &r.columns {
                write_packet(out, seq, &message::encode_column(c));
            }
            if !deprecate_eof {
                write_packet(out, seq, &message::encode_eof(0, flags));
            }
            let kinds: Vec<ColumnKind> = r.columns.iter().map(ColumnKind::of).collect();
            for row in &r.rows {
                let payload =
                    if binary { message::encode_binary_row(row, &kinds) } else { message::encode_text_row(row) };
                write_packet(out, seq, &payload);
            }
            if deprecate_eof {
                write_packet(out, seq, &message::encode_ok(&ok(r), 0xFE));
            } else {
                write_packet(out, seq, &message::encode_eof(r.warnings, flags));
            }
        }
        match &mock.error {
            Some(e) => write_packet(out, seq, &message::encode_err(e)),
            None if n == 0 => {
                let ok = OkPacket { status: AUTOCOMMIT, ..OkPacket::default() };
                write_packet(out, seq, &message::encode_ok(&ok, 0));
            }
            None => {}
        }
    }
}
