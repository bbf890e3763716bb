//! Follows a proxied PostgreSQL connection and writes its mocks: one `startup` mock when the server is
//! ready, one `query` mock per simple Query and per extended-protocol Execute (and per failed
//! Parse/Bind/Describe). The client's messages are seen before the server's answers, so each client message
//! that the server answers is queued as an expectation, and the server's messages complete them in order.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::types;
use super::wire::{self, Backend, Column, Format, Framer, Frontend, Startup};
use super::{column_to_store, error_from_fields};
use crate::protocols::postgres::{
    PgCopy, PgError, PgNotification, PgProtocol, PgQuery, PgResult, PgStartup, PostgresMock,
};
use crate::protocols::{Observer, ParseError, RecordCtx, Role};
use crate::store::Record;

/// A prepared statement as the client defined it on this connection.
#[derive(Clone)]
struct Stmt {
    id: u64,
    name: String,
    sql: String,
    parse_types: Vec<u32>,
    described_params: Option<Vec<u32>>,
    /// `Some(None)`: described as returning no rows.
    described_columns: Option<Option<Vec<Column>>>,
    executed: bool,
    failed: bool,
    at: Instant,
}

/// A bound portal.
#[derive(Clone)]
struct Portal {
    id: u64,
    stmt: Stmt,
    params: Vec<Option<Vec<u8>>>,
    param_formats: Vec<i16>,
    result_formats: Vec<i16>,
    columns: Option<Vec<Column>>,
}

/// One statement execution being recorded: a simple Query, or an Execute of a portal.
struct Run {
    query: PgQuery,
    started: Instant,
    stmt_id: Option<u64>,
    portal_id: Option<u64>,
    params: Vec<Option<Vec<u8>>>,
    param_formats: Vec<i16>,
    parse_types: Vec<u32>,
    described_params: Option<Vec<u32>>,
    result_formats: Vec<i16>,
    /// Columns the rows are decoded with.
    columns: Option<Vec<Column>>,
    current: Option<PgResult>,
    copy_data: Vec<u8>,
}

impl Run {
    fn simple(sql: String, at: Instant) -> Run {
        Run::new(PgQuery { sql, protocol: PgProtocol::Simple, ..PgQuery::default() }, at)
    }

    fn new(query: PgQuery, at: Instant) -> Run {
        Run {
            query,
            started: at,
            stmt_id: None,
            portal_id: None,
            params: Vec::new(),
            param_formats: Vec::new(),
            parse_types: Vec::new(),
            described_params: None,
            result_formats: Vec::new(),
            columns: None,
            current: None,
            copy_data: Vec::new(),
        }
    }

    fn extended(portal: &Portal, max_rows: i32, at: Instant) -> Run {
        let query = PgQuery {
            sql: portal.stmt.sql.clone(),
            protocol: PgProtocol::Extended,
            statement: portal.stmt.name.clone(),
            max_rows,
            ..PgQuery::default()
        };
        let mut run = Run::new(query, at);
        run.stmt_id = Some(portal.stmt.id);
        run.portal_id = Some(portal.id);
        run.params = portal.params.clone();
        run.param_formats = portal.param_formats.clone();
        run.parse_types = portal.stmt.parse_types.clone();
        run.described_params = portal.stmt.described_params.clone();
        run.result_formats = portal.result_formats.clone();
        run.columns = portal.columns.clone();
        run
    }

    fn result(&mut self) -> &mut PgResult {
        self.current.get_or_insert_with(PgResult::default)
    }

    fn end_result(&mut self) {
        if let Some(mut r) = self.current.take() {
            if !self.copy_data.is_empty() {
                let data = std::mem::take(&mut self.copy_data);
                if let Some(c) = r.copy_in.as_mut().or(r.copy_out.as_mut()) {
                    set_copy_data(c, data);
                }
            }
            self.query.results.push(r);
        }
    }

    /// Extended protocol: the result's columns are the portal's (the server does not repeat them).
    fn describe_result(&mut self) {
        let cols = self.columns.as_ref().map(|c| c.iter().map(column_to_store).collect());
        let r = self.result();
        if r.columns.is_none() {
            r.columns = cols;
        }
    }

    fn row(&mut self, body: &[u8]) -> Result<(), ParseError> {
        let values = wire::data_row_values(body)?;
        let row = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (oid, format) = match &self.columns {
                    Some(cols) => {
                        cols.get(i).map(|c| (c.type_oid, Format::from_code(c.format))).unwrap_or((0, Format::Text))
                    }
                    None => (0, Format::nth(&self.result_formats, i)),
                };
                types::decode_cell(oid, format, *v)
            })
            .collect();
        self.result().rows.push(row);
        Ok(())
    }

    /// Final parameter values, decoded with the best types known (Parse, else the server's description).
    fn finish_params(&mut self) {
        let oids: Vec<u32> = (0..self.params.len())
            .map(|i| {
                let given = self.parse_types.get(i).copied().unwrap_or(0);
                if given != 0 {
                    given
                } else {
                    self.described_params.as_ref().and_then(|d| d.get(i).copied()).unwrap_or(0)
                }
            })
            .collect();
        if oids.iter().any(|o| *o != 0) {
            self.query.parameter_types = oids.iter().map(|o| types::type_name(*o)).collect();
        }
        self.query.parameters = self
            .params
            .iter()
            .enumerate()
            .map(|(i, v)| types::decode_cell(oids[i], Format::nth(&self.param_formats, i), v.as_deref()))
            .collect();
    }
}

fn set_copy_data(c: &mut PgCopy, data: Vec<u8>) {
    match String::from_utf8(data) {
        Ok(text) if c.format == "text" => c.text = Some(text),
        Ok(text) => c.base64 = Some(B64.encode(text.as_bytes())),
        Err(e) => c.base64 = Some(B64.encode(e.as_bytes())),
    }
}

/// What a client message waits for from the server.
enum Expect {
    /// A one-byte answer to SSLRequest (`true`) or GSSENCRequest (`false`).
    EncryptionAnswer(bool),
    Parse(Stmt),
    Bind(Portal),
    DescribeStatement(Stmt),
    DescribePortal(Portal),
    Run(Box<Run>),
    Close,
    Sync,
}

#[derive(PartialEq)]
enum Phase {
    Startup,
    Authenticating,
    Ready,
    /// A cancel request, a terminated connection or a failed startup: nothing more to record.
    Done,
}

pub struct PgObserver {
    /// The server answered `S` to SSLRequest in the piece just fed.
    tls_started: bool,
    /// Where in that piece TLS starts.
    tls_boundary: Option<usize>,
    ctx: RecordCtx,
    client: Framer,
    server: Framer,
    phase: Phase,
    startup: PgStartup,
    startup_at: Option<Instant>,
    statements: HashMap<String, Stmt>,
    portals: HashMap<String, Portal>,
    next_id: u64,
    expect: VecDeque<Expect>,
    /// Executions finished since the last ReadyForQuery: written when it arrives (it may bring
    /// ParameterStatus or notifications that belong to them).
    batch: Vec<(Run, Instant)>,
    status_changes: Vec<(String, String)>,
    notifications: Vec<PgNotification>,
    loose_notices: Vec<PgError>,
}

impl PgObserver {
    pub fn new(ctx: RecordCtx) -> PgObserver {
        PgObserver {
            ctx,
            client: Framer::default(),
            server: Framer::default(),
            tls_started: false,
            tls_boundary: None,
            phase: Phase::Startup,
            startup: PgStartup { auth: "trust".into(), ..PgStartup::default() },
            startup_at: None,
            statements: HashMap::new(),
            portals: HashMap::new(),
            next_id: 0,
            expect: VecDeque::new(),
            batch: Vec::new(),
            status_changes: Vec::new(),
            notifications: Vec::new(),
            loose_notices: Vec::new(),
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn on_client(&mut self, at: Instant) -> Result<(), ParseError> {
        loop {
            match self.phase {
                Phase::Done => {
                    self.client = Framer::default();
                    return Ok(());
                }
                Phase::Startup => {
                    let Some(body) = self.client.next_untagged()? else { return Ok(()) };
                    match wire::decode_startup(body)? {
                        Startup::SslRequest => self.expect.push_back(Expect::EncryptionAnswer(true)),
                        Startup::GssEncRequest => self.expect.push_back(Expect::EncryptionAnswer(false)),
                        Startup::Cancel { .. } => self.phase = Phase::Done,
                        Startup::Start { params, .. } => {
                            self.startup.parameters = params.into_iter().collect();
                            self.startup_at = Some(at);
                            self.phase = Phase::Authenticating;
                        }
                    }
                }
                Phase::Authenticating | Phase::Ready => {
                    let Some((tag, body)) = self.client.next_tagged()? else { return Ok(()) };
                    let msg = wire::decode_frontend(tag, body)?;
                    self.client_message(msg, at)?;
                }
            }
        }
    }

    fn client_message(&mut self, msg: Frontend, at: Instant) -> Result<(), ParseError> {
        match msg {
            Frontend::Password => {}
            Frontend::Query(sql) => self.expect.push_back(Expect::Run(Box::new(Run::simple(sql, at)))),
            Frontend::Parse { name, sql, param_types } => {
                let id = self.id();
                let stmt = Stmt {
                    id,
                    name: name.clone(),
                    sql,
                    parse_types: param_types,
                    described_params: None,
                    described_columns: None,
                    executed: false,
                    failed: false,
                    at,
                };
                if let Some(old) = self.statements.insert(name, stmt.clone()) {
                    self.describe_only(old);
                }
                self.expect.push_back(Expect::Parse(stmt));
            }
            Frontend::Bind { portal, statement, param_formats, params, result_formats } => {
                let stmt = self.statements.get(&statement).cloned().ok_or_else(|| {
                    ParseError::Malformed(format!("Bind to a statement {statement:?} this connection never prepared"))
                })?;
                let columns = stmt.described_columns.clone().flatten().map(|cols| with_formats(cols, &result_formats));
                let p = Portal { id: self.id(), stmt, params, param_formats, result_formats, columns };
                self.portals.insert(portal, p.clone());
                self.expect.push_back(Expect::Bind(p));
            }
            Frontend::Describe { kind: b'S', name } => {
                let stmt = self.statements.get(&name).cloned().ok_or("Describe of an unknown statement")?;
                self.expect.push_back(Expect::DescribeStatement(stmt));
            }
            Frontend::Describe { name, .. } => {
                let p = self.portals.get(&name).cloned().ok_or("Describe of an unknown portal")?;
                self.expect.push_back(Expect::DescribePortal(p));
            }
            Frontend::Execute { portal, max_rows } => {
                let p = self.portals.get(&portal).ok_or("Execute of an unknown portal")?;
                let run = Run::extended(p, max_rows, at);
                if let Some(s) = self.statements.get_mut(&p.stmt.name).filter(|s| s.id == p.stmt.id) {
                    s.executed = true;
                }
                self.expect.push_back(Expect::Run(Box::new(run)));
            }
            Frontend::Close { kind, name } => {
                if kind == b'S' {
                    if let Some(old) = self.statements.remove(&name) {
                        self.describe_only(old);
                    }
                } else {
                    self.portals.remove(&name);
                }
                self.expect.push_back(Expect::Close);
            }
            Frontend::Sync => self.expect.push_back(Expect::Sync),
            Frontend::Flush | Frontend::CopyDone | Frontend::CopyFail(_) => {}
            Frontend::CopyData(data) => {
                let run = self.expect.iter_mut().find_map(|e| match e {
                    Expect::Run(r) if r.current.as_ref().is_some_and(|c| c.copy_in.is_some()) => Some(r),
                    _ => None,
                });
                run.ok_or("CopyData from the client outside COPY FROM STDIN")?.copy_data.extend_from_slice(&data);
            }
            Frontend::Terminate => self.phase = Phase::Done,
            Frontend::FunctionCall => return Err("FunctionCall (fast-path) is not recorded".into()),
        }
        Ok(())
    }

    fn on_server(&mut self, at: Instant) -> Result<(), ParseError> {
        loop {
            if let Some(Expect::EncryptionAnswer(ssl)) = self.expect.front() {
                let ssl = *ssl;
                let Some(answer) = self.server.next_byte() else { return Ok(()) };
                self.expect.pop_front();
                match (answer, ssl) {
                    (b'N', true) => self.startup.ssl = Some("refused".into()),
                    (b'N', false) => {}
                    (b'S', true) => {
                        // TLS starts right after this byte on both sides; the proxy decrypts it when it can and
                        // keeps feeding the plaintext (the startup message comes next, inside TLS).
                        self.startup.ssl = Some("accepted".into());
                        self.tls_started = true;
                        return Ok(());
                    }
                    (b'G', false) => return Err("the server accepted GSSAPI encryption".into()),
                    (other, _) => {
                        return Err(ParseError::Malformed(format!(
                            "unexpected answer {:?} to an encryption request",
                            other as char
                        )));
                    }
                }
                continue;
            }
            if self.phase == Phase::Done {
                self.server = Framer::default();
                return Ok(());
            }
            let Some((tag, body)) = self.server.next_tagged()? else { return Ok(()) };
            if tag == b'D' {
                // Rows are decoded from the borrowed body: the hot path of big results.
                match self.expect.front_mut() {
                    Some(Expect::Run(run)) => run.row(body)?,
                    _ => return Err("a DataRow arrived when no query was running".into()),
                }
                continue;
            }
            let msg = wire::decode_backend(tag, body)?;
            if self.phase == Phase::Authenticating {
                self.startup_message(msg, at)?;
            } else {
                self.server_message(msg, at)?;
            }
        }
    }

    fn startup_message(&mut self, msg: Backend, at: Instant) -> Result<(), ParseError> {
        match msg {
            Backend::Auth { code, data } => {
                let method = match code {
                    0 => return Ok(()),
                    3 => "cleartext".to_string(),
                    5 => "md5".to_string(),
                    7 => "gss".to_string(),
                    9 => "sspi".to_string(),
                    10 => {
                        let first = data.split(|b| *b == 0).next().unwrap_or_default();
                        String::from_utf8_lossy(first).to_ascii_lowercase()
                    }
                    _ => return Ok(()), // SASL continue/final, GSS continue
                };
                self.startup.auth = method;
            }
            Backend::ParameterStatus { name, value } => {
                self.startup.server_parameters.insert(name, value);
            }
            Backend::BackendKeyData { pid, key } => {
                self.startup.backend_pid = pid;
                self.startup.backend_key_base64 = B64.encode(key);
            }
            Backend::ReadyForQuery(_) => {
                self.phase = Phase::Ready;
                self.submit_startup(at);
            }
            Backend::Error(f) => {
                self.startup.error = Some(error_from_fields(&f));
                self.submit_startup(at);
                self.phase = Phase::Done;
            }
            Backend::Notice(_) | Backend::NegotiateProtocol { .. } => {}
            other => return Err(ParseError::Malformed(format!("unexpected {other:?} during startup"))),
        }
        Ok(())
    }

    fn submit_startup(&mut self, at: Instant) {
        let started = self.startup_at.unwrap_or(at);
        let pg = PostgresMock { startup: Some(std::mem::take(&mut self.startup)), query: None };
        self.submit(pg, started, at);
    }

    fn submit(&self, pg: PostgresMock, started: Instant, ended: Instant) {
        let Some(mut mock) = self.ctx.mock("postgres", started, ended) else { return };
        mock.postgres = Some(pg);
        self.ctx.sink.submit(Record::Mock(Box::new(mock)));
    }

    fn server_message(&mut self, msg: Backend, at: Instant) -> Result<(), ParseError> {
        // Messages that may come at any time.
        match msg {
            Backend::Notice(f) => {
                let notice = error_from_fields(&f);
                match self.expect.front_mut() {
                    Some(Expect::Run(run)) => run.result().notices.push(notice),
                    _ => self.loose_notices.push(notice),
                }
                return Ok(());
            }
            Backend::ParameterStatus { name, value } => {
                self.status_changes.push((name, value));
                return Ok(());
            }
            Backend::Notification { pid, channel, payload } => {
                self.notifications.push(PgNotification { channel, payload, pid });
                return Ok(());
            }
            _ => {}
        }
        let front =
            self.expect.pop_front().ok_or_else(|| ParseError::Malformed(format!("server sent {msg:?} unasked")))?;
        match (front, msg) {
            (Expect::Parse(_), Backend::ParseComplete)
            | (Expect::Bind(_), Backend::BindComplete)
            | (Expect::Close, Backend::CloseComplete) => {}
            (Expect::Sync, Backend::ReadyForQuery(_)) => self.flush_batch(),
            (Expect::Parse(stmt), Backend::Error(f)) => {
                if let Some(s) = self.statements.get_mut(&stmt.name).filter(|s| s.id == stmt.id) {
                    s.failed = true;
                }
                let mut run = Run::new(extended_query(&stmt), stmt.at);
                run.parse_types = stmt.parse_types.clone();
                self.fail_before_execute(run, "parse", &f, at);
            }
            (Expect::Bind(p), Backend::Error(f)) => {
                let run = Run::extended(&p, 0, p.stmt.at);
                self.fail_before_execute(run, "bind", &f, at);
            }
            (Expect::DescribeStatement(stmt), Backend::ParameterDescription(oids)) => {
                self.statement_described(&stmt, Some(oids), None);
                // The row description (or NoData) follows.
                self.expect.push_front(Expect::DescribeStatement(stmt));
            }
            (Expect::DescribeStatement(stmt), Backend::RowDescription(cols)) => {
                self.statement_described(&stmt, None, Some(Some(cols)))
            }
            (Expect::DescribeStatement(stmt), Backend::NoData) => self.statement_described(&stmt, None, Some(None)),
            (Expect::DescribeStatement(stmt), Backend::Error(f)) => {
                let run = Run::new(extended_query(&stmt), stmt.at);
                self.fail_before_execute(run, "describe", &f, at);
            }
            (Expect::DescribePortal(p), Backend::RowDescription(cols)) => self.portal_described(&p, Some(cols)),
            (Expect::DescribePortal(p), Backend::NoData) => self.portal_described(&p, None),
            (Expect::DescribePortal(p), Backend::Error(f)) => {
                let run = Run::extended(&p, 0, p.stmt.at);
                self.fail_before_execute(run, "describe", &f, at);
            }
            (Expect::Run(run), msg) => self.run_message(run, msg, at)?,
            (other, msg) => {
                return Err(ParseError::Malformed(format!(
                    "server sent {msg:?} while {} was expected",
                    expected_name(&other)
                )));
            }
        }
        Ok(())
    }

    /// A server message for the running statement; puts the run back unless it is finished.
    fn run_message(&mut self, mut run: Box<Run>, msg: Backend, at: Instant) -> Result<(), ParseError> {
        let simple = run.query.protocol == PgProtocol::Simple;
        let notices = std::mem::take(&mut self.loose_notices);
        if !notices.is_empty() {
            run.result().notices.extend(notices);
        }
        match msg {
            Backend::RowDescription(cols) if simple => {
                // Results end with CommandComplete, EmptyQuery or an error: an open one holds only notices
                // that came first, and they belong to this statement.
                run.result().columns = Some(cols.iter().map(column_to_store).collect());
                run.columns = Some(cols);
            }
            Backend::CommandComplete(tag) => {
                if !simple {
                    run.describe_result();
                }
                run.result().tag = Some(tag);
                run.end_result();
                run.columns = None;
                if !simple {
                    return self.finish(run, at);
                }
            }
            Backend::EmptyQuery => {
                run.result().empty = true;
                run.end_result();
                if !simple {
                    return self.finish(run, at);
                }
            }
            Backend::PortalSuspended if !simple => {
                run.describe_result();
                run.result().suspended = true;
                run.end_result();
                return self.finish(run, at);
            }
            Backend::Error(f) => {
                if !simple {
                    run.describe_result();
                }
                run.result().error = Some(error_from_fields(&f));
                run.end_result();
                if !simple {
                    self.skip_to_sync();
                    return self.finish(run, at);
                }
            }
            Backend::CopyResponse { tag, format, columns } if tag != b'W' => {
                let copy = PgCopy {
                    format: if format == 1 { "binary".into() } else { "text".into() },
                    columns: columns.len(),
                    text: None,
                    base64: None,
                };
                if tag == b'G' {
                    run.result().copy_in = Some(copy);
                } else {
                    run.result().copy_out = Some(copy);
                }
            }
            Backend::CopyData(data) => run.copy_data.extend_from_slice(&data),
            Backend::CopyDone => {}
            Backend::ReadyForQuery(_) if simple => {
                run.end_result();
                self.batch.push((*run, at));
                self.flush_batch();
                return Ok(());
            }
            other => return Err(ParseError::Malformed(format!("unexpected {other:?} while a statement ran"))),
        }
        self.expect.push_front(Expect::Run(run));
        Ok(())
    }

    fn finish(&mut self, mut run: Box<Run>, at: Instant) -> Result<(), ParseError> {
        run.finish_params();
        self.batch.push((*run, at));
        Ok(())
    }

    /// After an error in the extended protocol the server skips every message up to Sync.
    fn skip_to_sync(&mut self) {
        while let Some(e) = self.expect.front() {
            if matches!(e, Expect::Sync) {
                break;
            }
            self.expect.pop_front();
        }
    }

    fn fail_before_execute(&mut self, mut run: Run, stage: &str, f: &wire::Fields, at: Instant) {
        run.query.stage = Some(stage.into());
        run.query.results.push(PgResult { error: Some(error_from_fields(f)), ..PgResult::default() });
        run.finish_params();
        self.batch.push((run, at));
        self.skip_to_sync();
    }

    fn statement_described(&mut self, stmt: &Stmt, params: Option<Vec<u32>>, columns: Option<Option<Vec<Column>>>) {
        if let Some(s) = self.statements.get_mut(&stmt.name).filter(|s| s.id == stmt.id) {
            if params.is_some() {
                s.described_params = params.clone();
            }
            if columns.is_some() {
                s.described_columns = columns.clone();
            }
        }
        // Portals bound and executions queued before this answer arrived (a pipeline) learn it too.
        for e in self.expect.iter_mut() {
            if let Expect::Run(run) = e
                && run.stmt_id == Some(stmt.id)
            {
                if params.is_some() {
                    run.described_params = params.clone();
                }
                if let Some(Some(cols)) = &columns
                    && run.columns.is_none()
                {
                    run.columns = Some(with_formats(cols.clone(), &run.result_formats));
                }
            }
        }
        for p in self.portals.values_mut().filter(|p| p.stmt.id == stmt.id) {
            if params.is_some() {
                p.stmt.described_params = params.clone();
            }
            if let Some(Some(cols)) = &columns
                && p.columns.is_none()
            {
                p.columns = Some(with_formats(cols.clone(), &p.result_formats));
            }
        }
    }

    fn portal_described(&mut self, portal: &Portal, columns: Option<Vec<Column>>) {
        for p in self.portals.values_mut().filter(|p| p.id == portal.id) {
            p.columns = columns.clone();
        }
        for e in self.expect.iter_mut() {
            if let Expect::Run(run) = e
                && run.portal_id == Some(portal.id)
            {
                run.columns = columns.clone();
            }
        }
    }

    /// A statement prepared and described but never executed still needs its description in replay.
    fn describe_only(&mut self, stmt: Stmt) {
        if stmt.executed || stmt.failed {
            return;
        }
        let Some(columns) = &stmt.described_columns else { return };
        let mut query = extended_query(&stmt);
        query.stage = Some("describe".into());
        query.described_columns = Some(columns.iter().flatten().map(column_to_store).collect());
        let params = stmt.described_params.as_ref().unwrap_or(&stmt.parse_types);
        query.parameter_types = params.iter().map(|o| types::type_name(*o)).collect();
        self.submit(PostgresMock { startup: None, query: Some(query) }, stmt.at, stmt.at);
    }

    /// ReadyForQuery: the executions since the last one are complete; session messages attach to the last.
    fn flush_batch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let n = batch.len();
        for (i, (mut run, ended)) in batch.into_iter().enumerate() {
            if i + 1 == n {
                run.query.parameter_status.extend(self.status_changes.drain(..));
                run.query.notifications.append(&mut self.notifications);
            }
            self.submit(PostgresMock { startup: None, query: Some(run.query) }, run.started, ended);
        }
    }
}

fn extended_query(stmt: &Stmt) -> PgQuery {
    PgQuery {
        sql: stmt.sql.clone(),
        protocol: PgProtocol::Extended,
        statement: stmt.name.clone(),
        ..PgQuery::default()
    }
}

/// Columns of a statement description as a portal with these result formats returns them.
fn with_formats(mut cols: Vec<Column>, result_formats: &[i16]) -> Vec<Column> {
    for (i, c) in cols.iter_mut().enumerate() {
        c.format = Format::nth(result_formats, i).code();
    }
    cols
}

fn expected_name(e: &Expect) -> &'static str {
    match e {
        Expect::EncryptionAnswer(_) => "an encryption answer",
        Expect::Parse(_) => "ParseComplete",
        Expect::Bind(_) => "BindComplete",
        Expect::DescribeStatement(_) => "a statement description",
        Expect::DescribePortal(_) => "a portal description",
        Expect::Run(_) => "a statement result",
        Expect::Close => "CloseComplete",
        Expect::Sync => "ReadyForQuery",
    }
}

impl Observer for PgObserver {
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        if let Role::Ingress { .. } = self.ctx.role {
            return Err("PostgreSQL served by the app is forwarded, not recorded".into());
        }
        if data.is_empty() {
            return Ok(());
        }
        self.client.push(data);
        self.on_client(at)
    }

    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        if data.is_empty() {
            return Ok(());
        }
        self.server.push(data);
        let r = self.on_server(at);
        if self.tls_started {
            self.tls_started = false;
            self.tls_boundary = Some(data.len().saturating_sub(self.server.pending()));
            self.server = Framer::default();
        }
        r
    }

    fn tls_boundary(&mut self) -> Option<usize> {
        self.tls_boundary.take()
    }

    fn close(&mut self, _at: Instant) {
        self.flush_batch();
        let stmts: Vec<Stmt> = self.statements.drain().map(|(_, s)| s).collect();
        for s in stmts {
            self.describe_only(s);
        }
    }
}
