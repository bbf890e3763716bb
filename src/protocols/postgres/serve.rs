//! Replay: doppel plays the PostgreSQL server. It completes startup itself (no authentication: nonces make
//! a recorded SCRAM exchange unreplayable), sends the recorded server parameters, and answers each
//! statement from the mocks: simple queries by their whitespace-collapsed SQL, extended-protocol executions
//! by SQL and parameter values. Statement and portal names are the app's own on each connection and are
//! only mapped to their SQL. A statement without a recorded answer gets an ErrorResponse (SQLSTATE XX000)
//! naming it, and the miss is reported.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::types;
use super::wire::{self, Backend, Format, Framer, Frontend, Startup};
use super::{
    column_from_store, default_server_parameters, fields_from_error, format_of, is_session_sql, normalize_sql,
    show_params,
};
use crate::protocols::ServeCtx;
use crate::protocols::postgres::{PgCopy, PgError, PgProtocol, PgQuery, PgResult, PgStartup};

#[derive(Clone)]
struct LiveStmt {
    sql: String,
    norm: String,
    parse_types: Vec<u32>,
}

#[derive(Clone)]
struct LivePortal {
    stmt: LiveStmt,
    params: Vec<Option<Vec<u8>>>,
    param_formats: Vec<i16>,
    result_formats: Vec<i16>,
}

/// A COPY FROM STDIN waiting for the app's data.
struct CopyIn {
    norm: String,
    simple: bool,
    /// Candidate mocks (same statement) and the index of the COPY result in them.
    candidates: Vec<usize>,
    result: usize,
    result_formats: Vec<i16>,
    data: Vec<u8>,
}

/// How emitting recorded results ended.
enum Emitted {
    Done,
    /// The statement failed: in the extended protocol, skip to Sync.
    Failed,
    /// Stopped at a COPY FROM STDIN result (the caller starts COPY mode).
    CopyIn,
}

struct Server {
    ctx: ServeCtx,
    /// Query mocks of this destination by normalized SQL, in recorded order.
    by_sql: HashMap<String, Vec<usize>>,
    out: Vec<u8>,
    statements: HashMap<String, LiveStmt>,
    portals: HashMap<String, LivePortal>,
    /// ReadyForQuery status: b'I', b'T' or b'E'.
    status: u8,
    /// After an error in the extended protocol, messages up to Sync are ignored (as the server does).
    skipping: bool,
    copy_in: Option<CopyIn>,
}

pub(super) async fn serve(mut conn: crate::protocols::Conn, ctx: ServeCtx) {
    let mut input = Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    // Startup: SSLRequest is accepted with doppel's CA when it is loaded (refused otherwise), GSSENCRequest is
    // refused, a cancel request is accepted and the connection closed.
    let params = loop {
        let next = match input.next_untagged() {
            Ok(Some(body)) => wire::decode_startup(body),
            Ok(None) => {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => input.push(&buf[..n]),
                }
                continue;
            }
            Err(e) => Err(e),
        };
        match next {
            Ok(Startup::SslRequest) if ctx.ca.is_some() && input.pending() == 0 => {
                if conn.write_all(b"S").await.is_err() {
                    return;
                }
                let Some(ca) = ctx.ca.clone() else { return };
                match crate::tls::accept(&ca, conn, crate::tls::dest_ip(&ctx.dest), |_| None).await {
                    Ok((tls, _)) => conn = Box::new(tls),
                    Err(e) => {
                        ctx.pool.miss("postgres", &ctx.dest, format!("TLS with the app failed for {}: {e}", ctx.dest));
                        return;
                    }
                }
            }
            Ok(Startup::SslRequest) | Ok(Startup::GssEncRequest) => {
                if conn.write_all(b"N").await.is_err() {
                    return;
                }
            }
            Ok(Startup::Cancel { .. }) => return,
            Ok(Startup::Start { params, .. }) => break params,
            Err(e) => {
                ctx.pool.miss("postgres", &ctx.dest, format!("unreadable PostgreSQL startup from the app: {e}"));
                return;
            }
        }
    };
    let mut server = Server::new(ctx);
    if !server.startup(&params) {
        let _ = conn.write_all(&server.out).await;
        return;
    }
    loop {
        loop {
            let msg = match input.next_tagged() {
                Ok(Some((tag, body))) => wire::decode_frontend(tag, body),
                Ok(None) => break,
                Err(e) => Err(e),
            };
            match msg {
                Ok(Frontend::Terminate) => {
                    let _ = conn.write_all(&server.out).await;
                    return;
                }
                Ok(m) => server.handle(m),
                Err(e) => {
                    server.ctx.pool.miss("postgres", &server.ctx.dest, format!("unreadable message from the app: {e}"));
                    server.error(&doppel_error("08P01", format!("doppel: {e}")));
                    let _ = conn.write_all(&server.out).await;
                    return;
                }
            }
        }
        if !server.out.is_empty() {
            if conn.write_all(&server.out).await.is_err() {
                return;
            }
            server.out.clear();
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => input.push(&buf[..n]),
        }
    }
}

fn doppel_error(code: &str, message: String) -> PgError {
    PgError { severity: "ERROR".into(), code: code.into(), message, ..PgError::default() }
}

impl Server {
    fn new(ctx: ServeCtx) -> Server {
        let mut by_sql: HashMap<String, Vec<usize>> = HashMap::new();
        let same_dest = ctx.pool.of_kind("postgres").any(|(_, m)| m.dest == ctx.dest);
        for (i, m) in ctx.pool.of_kind("postgres") {
            if same_dest && m.dest != ctx.dest {
                continue;
            }
            if let Some(q) = m.postgres.as_ref().and_then(|p| p.query.as_ref()) {
                by_sql.entry(normalize_sql(&q.sql)).or_default().push(i);
            }
        }
        Server {
            ctx,
            by_sql,
            out: Vec::with_capacity(16 * 1024),
            statements: HashMap::new(),
            portals: HashMap::new(),
            status: b'I',
            skipping: false,
            copy_in: None,
        }
    }

    fn send(&mut self, m: &Backend) {
        wire::encode_backend(m, &mut self.out);
    }

    fn error(&mut self, e: &PgError) {
        wire::encode_backend(&Backend::Error(fields_from_error(e)), &mut self.out);
        if self.status == b'T' {
            self.status = b'E';
        }
    }

    /// Answers the startup from a recorded one (same user and database preferred); false if it failed.
    fn startup(&mut self, params: &[(String, String)]) -> bool {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let user = get("user").unwrap_or("");
        let database = get("database").unwrap_or(user);
        let startups: Vec<(usize, &PgStartup)> = self
            .ctx
            .pool
            .of_kind("postgres")
            .filter(|(_, m)| m.dest == self.ctx.dest)
            .filter_map(|(i, m)| m.postgres.as_ref()?.startup.as_ref().map(|s| (i, s)))
            .collect();
        let same: Vec<usize> = startups
            .iter()
            .filter(|(_, s)| {
                s.parameters.get("user").map(String::as_str).unwrap_or("") == user
                    && s.parameters.get("database").map(String::as_str).unwrap_or(user) == database
            })
            .map(|(i, _)| *i)
            .collect();
        let all: Vec<usize> = startups.iter().map(|(i, _)| *i).collect();
        let pick = if same.is_empty() { self.ctx.pool.take(&all) } else { self.ctx.pool.take(&same) };
        let recorded = pick.and_then(|(i, _)| self.ctx.pool.mocks[i].postgres.as_ref()?.startup.clone());
        let recorded = recorded.unwrap_or_else(|| PgStartup {
            server_parameters: default_server_parameters(),
            backend_pid: 1,
            ..PgStartup::default()
        });
        if let Some(e) = &recorded.error {
            self.error(e);
            return false;
        }
        self.send(&Backend::Auth { code: 0, data: vec![] });
        for (name, value) in &recorded.server_parameters {
            self.send(&Backend::ParameterStatus { name: name.clone(), value: value.clone() });
        }
        let key = B64.decode(&recorded.backend_key_base64).unwrap_or_else(|_| vec![0; 4]);
        let key = if key.is_empty() { vec![0; 4] } else { key };
        self.send(&Backend::BackendKeyData { pid: recorded.backend_pid, key });
        self.send(&Backend::ReadyForQuery(b'I'));
        true
    }

    fn query(&self, i: usize) -> Option<&PgQuery> {
        self.ctx.pool.mocks.get(i)?.postgres.as_ref()?.query.as_ref()
    }

    fn handle(&mut self, msg: Frontend) {
        if self.copy_in.is_some() {
            return self.copy_message(msg);
        }
        if self.skipping && !matches!(msg, Frontend::Sync) {
            return;
        }
        match msg {
            Frontend::Query(sql) => self.simple_query(sql),
            Frontend::Parse { name, sql, param_types } => self.parse(name, sql, param_types),
            Frontend::Bind { portal, statement, param_formats, params, result_formats } => {
                let Some(stmt) = self.statements.get(&statement).cloned() else {
                    self.error(&doppel_error("26000", format!("prepared statement \"{statement}\" does not exist")));
                    self.skipping = true;
                    return;
                };
                let p = LivePortal { stmt, params, param_formats, result_formats };
                if let Some(i) = self.failed_at("bind", &p.stmt.norm, Some(&p)) {
                    self.fail_recorded(i);
                    return;
                }
                self.portals.insert(portal, p);
                self.send(&Backend::BindComplete);
            }
            Frontend::Describe { kind: b'S', name } => self.describe_statement(&name),
            Frontend::Describe { name, .. } => self.describe_portal(&name),
            Frontend::Execute { portal, max_rows } => self.execute(&portal, max_rows),
            Frontend::Close { kind, name } => {
                if kind == b'S' {
                    self.statements.remove(&name);
                } else {
                    self.portals.remove(&name);
                }
                self.send(&Backend::CloseComplete);
            }
            Frontend::Sync => {
                self.skipping = false;
                self.send(&Backend::ReadyForQuery(self.status));
            }
            Frontend::Flush | Frontend::Password | Frontend::Terminate => {}
            Frontend::CopyData(_) | Frontend::CopyDone | Frontend::CopyFail(_) => {}
            Frontend::FunctionCall => {
                self.error(&doppel_error("0A000", "doppel: fast-path function calls are not replayed".into()));
                self.skipping = true;
            }
        }
    }

    fn parse(&mut self, name: String, sql: String, parse_types: Vec<u32>) {
        let norm = normalize_sql(&sql);
        let stmt = LiveStmt { sql, norm, parse_types };
        // A statement that only ever failed to parse while recording fails again here.
        let only_failures = self
            .by_sql
            .get(&stmt.norm)
            .is_some_and(|c| c.iter().all(|i| self.query(*i).is_some_and(|q| q.stage.as_deref() == Some("parse"))));
        if only_failures && let Some(i) = self.failed_at("parse", &stmt.norm, None) {
            self.fail_recorded(i);
            return;
        }
        self.statements.insert(name, stmt);
        self.send(&Backend::ParseComplete);
    }

    /// A recorded failure at `stage` for this statement (and parameters), taken from the pool.
    fn failed_at(&self, stage: &str, norm: &str, portal: Option<&LivePortal>) -> Option<usize> {
        let candidates: Vec<usize> = self
            .by_sql
            .get(norm)?
            .iter()
            .copied()
            .filter(|i| {
                self.query(*i).is_some_and(|q| {
                    q.stage.as_deref() == Some(stage)
                        && q.results.iter().any(|r| r.error.is_some())
                        && portal.is_none_or(|p| params_match(q, p))
                })
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        self.ctx.pool.take(&candidates).map(|(i, _)| i)
    }

    fn fail_recorded(&mut self, i: usize) {
        let err = self.query(i).and_then(|q| q.results.iter().find_map(|r| r.error.clone()));
        if let Some(e) = err {
            self.error(&e);
        }
        self.skipping = true;
    }

    /// Mocks that executed this SQL (not failures before execution).
    fn executions(&self, norm: &str, protocol: PgProtocol) -> Vec<usize> {
        self.by_sql
            .get(norm)
            .map(|c| {
                c.iter()
                    .copied()
                    .filter(|i| self.query(*i).is_some_and(|q| q.stage.is_none() && q.protocol == protocol))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Says which parameters of mock `i` only matched by shape (a fresh salt in a password hash).
    fn say_tolerated(&self, i: usize, q: &PgQuery, p: &LivePortal) {
        let live = live_values(p, Some(q));
        let values = q.parameters.iter().zip(&live).enumerate().filter_map(|(k, (recorded, live))| {
            Some((format!("${}", k + 1), param_text(recorded)?, param_text(live)?))
        });
        self.ctx.pool.tolerate_stand_ins(i, &crate::protocols::sql::short(&q.sql), values);
    }

    fn miss(&mut self, sql: &str, params: Option<&[Value]>, why: &str) {
        let mut what = sql.to_string();
        if let Some(p) = params.filter(|p| !p.is_empty()) {
            what.push_str(&format!(" with {}", show_params(p)));
        }
        self.ctx.pool.miss("postgres", &self.ctx.dest, format!("no recorded result for {what}{why}"));
        self.error(&doppel_error("XX000", format!("doppel: no recorded result for {what}{why}")));
    }

    fn simple_query(&mut self, sql: String) {
        let norm = normalize_sql(&sql);
        let candidates = self.executions(&norm, PgProtocol::Simple);
        // A COPY FROM STDIN is matched on its data too: answer the CopyInResponse first, choose at the end.
        if let Some(&first) = candidates.first()
            && let Some(at) = self.query(first).and_then(|q| q.results.iter().position(|r| r.copy_in.is_some()))
        {
            self.start_copy_in(norm, true, candidates, first, at, Vec::new());
            return;
        }
        match self.take(&norm, &candidates) {
            Ok(i) => {
                if let Some(q) = self.query(i).cloned() {
                    self.emit(&q, 0, None);
                }
            }
            Err(why) => {
                if !self.synthesize(&norm, true) {
                    self.miss(&sql, None, &why);
                }
            }
        }
        self.send(&Backend::ReadyForQuery(self.status));
    }

    /// Picks among matching mocks; repeats beyond the recorded count are misses except for session SQL.
    fn take(&self, norm: &str, candidates: &[usize]) -> Result<usize, String> {
        match self.ctx.pool.take(candidates) {
            Some((i, false)) => Ok(i),
            Some((i, true)) if is_session_sql(norm) => Ok(i),
            Some(_) => Err(format!(
                " (it ran more often than recorded: {} recorded result{} already used)",
                candidates.len(),
                if candidates.len() == 1 { " was" } else { "s were" }
            )),
            None => Err(String::new()),
        }
    }

    /// Transaction control and session resets that were not recorded get their usual answer, so that an
    /// app rolling back after a miss does not fail twice.
    fn synthesize(&mut self, norm: &str, simple: bool) -> bool {
        let lower = norm.to_ascii_lowercase();
        let words: Vec<&str> = lower.split_whitespace().collect();
        let tag = match words.as_slice() {
            ["begin", ..] => "BEGIN",
            ["start", "transaction", ..] => "START TRANSACTION",
            ["commit" | "end", ..] if self.status == b'E' => "ROLLBACK",
            ["commit" | "end", ..] => "COMMIT",
            ["rollback" | "abort", ..] => "ROLLBACK",
            ["savepoint", ..] => "SAVEPOINT",
            ["release", ..] => "RELEASE",
            ["discard", "all"] => "DISCARD ALL",
            ["deallocate", "all"] => "DEALLOCATE ALL",
            ["deallocate", ..] => "DEALLOCATE",
            ["unlisten", ..] => "UNLISTEN",
            ["reset", ..] => "RESET",
            _ => return false,
        };
        if norm.contains(';') {
            return false;
        }
        if !simple && self.status == b'E' && !matches!(tag, "ROLLBACK") {
            return false;
        }
        self.send(&Backend::CommandComplete(tag.into()));
        self.track_status(tag, &lower);
        true
    }

    fn track_status(&mut self, tag: &str, lower_sql: &str) {
        match tag {
            "BEGIN" | "START TRANSACTION" => self.status = b'T',
            "ROLLBACK" if lower_sql.contains("rollback to") => self.status = b'T',
            "COMMIT" | "ROLLBACK" | "PREPARE TRANSACTION" | "COMMIT PREPARED" | "ROLLBACK PREPARED" => {
                self.status = b'I'
            }
            _ => {}
        }
    }

    fn start_copy_in(
        &mut self,
        norm: String,
        simple: bool,
        candidates: Vec<usize>,
        first: usize,
        at: usize,
        result_formats: Vec<i16>,
    ) {
        let Some(q) = self.query(first).cloned() else { return };
        if at > 0 {
            let mut head = q.clone();
            head.results.truncate(at);
            head.parameter_status.clear();
            head.notifications.clear();
            if let Emitted::Failed = self.emit(&head, 0, None) {
                return;
            }
        }
        let Some(copy) = q.results.get(at).and_then(|r| r.copy_in.clone()) else { return };
        for n in &q.results[at].notices {
            self.send(&Backend::Notice(fields_from_error(n)));
        }
        self.send(&copy_response(b'G', &copy));
        self.copy_in = Some(CopyIn { norm, simple, candidates, result: at, result_formats, data: Vec::new() });
    }

    fn copy_message(&mut self, msg: Frontend) {
        let Some(mut state) = self.copy_in.take() else { return };
        match msg {
            Frontend::CopyData(d) => {
                state.data.extend_from_slice(&d);
                self.copy_in = Some(state);
            }
            Frontend::Flush | Frontend::Sync => self.copy_in = Some(state),
            Frontend::CopyFail(reason) => {
                self.error(&doppel_error("57014", format!("COPY from stdin failed: {reason}")));
                self.end_copy(&state, true);
            }
            Frontend::CopyDone => {
                let matching: Vec<usize> = state
                    .candidates
                    .iter()
                    .copied()
                    .filter(|i| {
                        self.query(*i)
                            .and_then(|q| q.results.get(state.result)?.copy_in.as_ref().map(copy_bytes))
                            .is_some_and(|d| d == state.data)
                    })
                    .collect();
                match self.take(&state.norm, &matching) {
                    Ok(i) => {
                        if let Some(q) = self.query(i).cloned() {
                            let failed = matches!(self.emit_copy_rest(&q, &state), Emitted::Failed);
                            self.end_copy(&state, failed);
                        }
                    }
                    Err(why) => {
                        let msg = format!(
                            "{}: the {} bytes of COPY data differ from every recording{why}",
                            state.norm,
                            state.data.len()
                        );
                        self.ctx.pool.miss("postgres", &self.ctx.dest, format!("no recorded result for {msg}"));
                        self.error(&doppel_error("XX000", format!("doppel: no recorded result for {msg}")));
                        self.end_copy(&state, true);
                    }
                }
            }
            _ => {
                // Anything else ends COPY mode with an error on a real server too.
                self.error(&doppel_error("08P01", "unexpected message during COPY from stdin".into()));
                self.end_copy(&state, true);
            }
        }
    }

    fn emit_copy_rest(&mut self, q: &PgQuery, state: &CopyIn) -> Emitted {
        let Some(r) = q.results.get(state.result) else { return Emitted::Done };
        let mut rest = r.clone();
        rest.copy_in = None;
        rest.notices.clear();
        let mut tail = q.clone();
        tail.results.splice(..=state.result, [rest]);
        let formats = (!state.simple).then_some(state.result_formats.as_slice());
        self.emit(&tail, 0, formats)
    }

    fn end_copy(&mut self, state: &CopyIn, failed: bool) {
        if state.simple {
            self.send(&Backend::ReadyForQuery(self.status));
        } else if failed {
            self.skipping = true;
        }
    }

    /// Sends recorded results from index `from`. `formats` are the live portal's result formats (extended
    /// protocol: no RowDescription, values in the formats the app asked for now).
    fn emit(&mut self, q: &PgQuery, from: usize, formats: Option<&[i16]>) -> Emitted {
        let lower = q.sql.to_ascii_lowercase();
        for r in q.results.iter().skip(from) {
            if r.copy_in.is_some() {
                return Emitted::CopyIn;
            }
            for n in &r.notices {
                self.send(&Backend::Notice(fields_from_error(n)));
            }
            if formats.is_none()
                && let Some(cols) = &r.columns
            {
                self.send(&Backend::RowDescription(cols.iter().map(column_from_store).collect()));
            }
            if let Err(e) = self.rows(r, formats) {
                self.error(&doppel_error("XX000", format!("doppel: {e}")));
                return Emitted::Failed;
            }
            if let Some(copy) = &r.copy_out {
                self.send(&copy_response(b'H', copy));
                let data = copy_bytes(copy);
                if copy.format == "text" {
                    for line in data.split_inclusive(|b| *b == b'\n') {
                        self.send(&Backend::CopyData(line.to_vec()));
                    }
                } else if !data.is_empty() {
                    self.send(&Backend::CopyData(data));
                }
                self.send(&Backend::CopyDone);
            }
            if let Some(e) = &r.error {
                self.error(e);
                self.session_messages(q);
                return Emitted::Failed;
            }
            if r.empty {
                self.send(&Backend::EmptyQuery);
            } else if r.suspended {
                self.send(&Backend::PortalSuspended);
            } else if let Some(tag) = &r.tag {
                self.send(&Backend::CommandComplete(tag.clone()));
                self.track_status(tag, &lower);
            }
        }
        self.session_messages(q);
        Emitted::Done
    }

    fn session_messages(&mut self, q: &PgQuery) {
        for (name, value) in &q.parameter_status {
            self.send(&Backend::ParameterStatus { name: name.clone(), value: value.clone() });
        }
        for n in &q.notifications {
            self.send(&Backend::Notification { pid: n.pid, channel: n.channel.clone(), payload: n.payload.clone() });
        }
    }

    fn rows(&mut self, r: &PgResult, formats: Option<&[i16]>) -> Result<(), String> {
        let cols: Vec<(u32, Format)> = r
            .columns
            .as_ref()
            .map(|c| c.iter().map(|c| (types::type_oid(&c.type_name).unwrap_or(0), format_of(c))).collect())
            .unwrap_or_default();
        let mut cells: Vec<Option<Vec<u8>>> = Vec::new();
        for row in &r.rows {
            cells.clear();
            for (i, v) in row.iter().enumerate() {
                let (oid, recorded) = cols.get(i).copied().unwrap_or((0, Format::Text));
                let format = formats.map(|f| Format::nth(f, i)).unwrap_or(recorded);
                cells.push(types::encode_cell(oid, format, v).map_err(|e| e.to_string())?);
            }
            wire::encode_data_row(cells.iter().map(|c| c.as_deref()), &mut self.out);
        }
        Ok(())
    }

    /// The recorded query that best describes a statement: a describe-only recording, else an execution.
    fn description(&self, norm: &str, portal: Option<&LivePortal>) -> Option<usize> {
        let candidates = self.by_sql.get(norm)?;
        let usable = |i: &usize| {
            self.query(*i).is_some_and(|q| {
                q.protocol == PgProtocol::Extended
                    // An execution (even a failed one) was described successfully before it ran.
                    && (q.described_columns.is_some() || q.stage.is_none())
            })
        };
        let same_params = |i: &usize| match (portal, self.query(*i)) {
            (Some(p), Some(q)) => params_match(q, p),
            _ => true,
        };
        candidates
            .iter()
            .copied()
            .find(|i| usable(i) && same_params(i))
            .or_else(|| candidates.iter().copied().find(usable))
    }

    fn describe_statement(&mut self, name: &str) {
        let Some(stmt) = self.statements.get(name).cloned() else {
            self.error(&doppel_error("26000", format!("prepared statement \"{name}\" does not exist")));
            self.skipping = true;
            return;
        };
        if let Some(i) = self.failed_at("describe", &stmt.norm, None) {
            return self.fail_recorded(i);
        }
        let Some(i) = self.description(&stmt.norm, None) else {
            if self.synthesize_description(&stmt.norm) {
                self.send(&Backend::ParameterDescription(vec![]));
                self.send(&Backend::NoData);
                return;
            }
            self.miss(&stmt.sql, None, "");
            self.skipping = true;
            return;
        };
        let Some(q) = self.query(i).cloned() else { return };
        if q.stage.as_deref() == Some("describe") {
            let _ = self.ctx.pool.take(&[i]);
        }
        let recorded: Vec<u32> = q.parameter_types.iter().map(|t| types::type_oid(t).unwrap_or(0)).collect();
        let oids = if recorded.len() >= stmt.parse_types.len() {
            recorded
                .iter()
                .enumerate()
                .map(|(k, o)| stmt.parse_types.get(k).copied().filter(|t| *t != 0).unwrap_or(*o))
                .collect()
        } else {
            stmt.parse_types.clone()
        };
        self.send(&Backend::ParameterDescription(oids));
        let cols = q.described_columns.clone().or_else(|| q.results.first().and_then(|r| r.columns.clone()));
        match cols {
            Some(cols) if !cols.is_empty() => {
                let cols = cols
                    .iter()
                    .map(|c| {
                        let mut c = column_from_store(c);
                        c.format = 0;
                        c
                    })
                    .collect();
                self.send(&Backend::RowDescription(cols));
            }
            _ => self.send(&Backend::NoData),
        }
    }

    fn synthesize_description(&self, norm: &str) -> bool {
        let first = norm.split_whitespace().next().unwrap_or("").to_ascii_lowercase();
        matches!(
            first.as_str(),
            "begin"
                | "start"
                | "commit"
                | "end"
                | "rollback"
                | "abort"
                | "savepoint"
                | "release"
                | "discard"
                | "deallocate"
                | "unlisten"
                | "reset"
        )
    }

    fn describe_portal(&mut self, name: &str) {
        let Some(p) = self.portals.get(name).cloned() else {
            self.error(&doppel_error("34000", format!("portal \"{name}\" does not exist")));
            self.skipping = true;
            return;
        };
        if let Some(i) = self.failed_at("describe", &p.stmt.norm, Some(&p)) {
            return self.fail_recorded(i);
        }
        let Some(i) = self.description(&p.stmt.norm, Some(&p)) else {
            if self.synthesize_description(&p.stmt.norm) {
                self.send(&Backend::NoData);
                return;
            }
            let values = live_values(&p, None);
            self.miss(&p.stmt.sql, Some(&values), "");
            self.skipping = true;
            return;
        };
        let Some(q) = self.query(i) else { return };
        let cols = q.results.first().and_then(|r| r.columns.clone()).or_else(|| q.described_columns.clone());
        match cols {
            Some(cols) if !cols.is_empty() => {
                let cols = cols
                    .iter()
                    .enumerate()
                    .map(|(k, c)| {
                        let mut c = column_from_store(c);
                        c.format = Format::nth(&p.result_formats, k).code();
                        c
                    })
                    .collect();
                self.send(&Backend::RowDescription(cols));
            }
            _ => self.send(&Backend::NoData),
        }
    }

    fn execute(&mut self, portal: &str, max_rows: i32) {
        let Some(p) = self.portals.get(portal).cloned() else {
            self.error(&doppel_error("34000", format!("portal \"{portal}\" does not exist")));
            self.skipping = true;
            return;
        };
        let all = self.executions(&p.stmt.norm, PgProtocol::Extended);
        let mut candidates: Vec<usize> = all
            .iter()
            .copied()
            .filter(|i| self.query(*i).is_some_and(|q| q.max_rows == max_rows && params_match(q, &p)))
            .collect();
        let loose = candidates.is_empty();
        if loose {
            // An id or a time the app generated anew in this replay stands for the recorded one.
            let pool = self.ctx.pool.clone();
            candidates = all
                .iter()
                .copied()
                .filter(|i| {
                    self.query(*i).is_some_and(|q| q.max_rows == max_rows && params_stand_for(&pool, *i, q, &p))
                })
                .collect();
        }
        if let Some(&first) = candidates.first()
            && let Some(at) = self.query(first).and_then(|q| q.results.iter().position(|r| r.copy_in.is_some()))
        {
            let (norm, formats) = (p.stmt.norm.clone(), p.result_formats.clone());
            self.start_copy_in(norm, false, candidates, first, at, formats);
            return;
        }
        match self.take(&p.stmt.norm, &candidates) {
            Ok(i) => {
                let Some(q) = self.query(i).cloned() else { return };
                if loose {
                    self.say_tolerated(i, &q, &p);
                }
                if let Emitted::Failed = self.emit(&q, 0, Some(&p.result_formats)) {
                    self.skipping = true;
                }
            }
            Err(why) => {
                if p.params.is_empty() && self.synthesize(&p.stmt.norm, false) {
                    return;
                }
                let values = live_values(&p, all.first().and_then(|i| self.query(*i)));
                let hint = match all.first().and_then(|i| self.query(*i)) {
                    Some(q) if why.is_empty() && !q.parameters.is_empty() => {
                        format!("; recorded with {}", show_params(&q.parameters))
                    }
                    _ => why,
                };
                self.miss(&p.stmt.sql, Some(&values), &hint);
                self.skipping = true;
            }
        }
    }
}

fn copy_response(tag: u8, copy: &PgCopy) -> Backend {
    let binary = copy.format == "binary";
    Backend::CopyResponse { tag, format: i8::from(binary), columns: vec![i16::from(binary); copy.columns] }
}

fn copy_bytes(copy: &PgCopy) -> Vec<u8> {
    match (&copy.text, &copy.base64) {
        (Some(t), _) => t.as_bytes().to_vec(),
        (None, Some(b)) => B64.decode(b).unwrap_or_default(),
        (None, None) => Vec::new(),
    }
}

/// The type of parameter `i`: what the app declared in Parse, else what was recorded.
fn param_oid(q: Option<&PgQuery>, p: &LivePortal, i: usize) -> u32 {
    let given = p.stmt.parse_types.get(i).copied().unwrap_or(0);
    if given != 0 {
        return given;
    }
    q.and_then(|q| q.parameter_types.get(i)).and_then(|t| types::type_oid(t)).unwrap_or(0)
}

fn live_values(p: &LivePortal, q: Option<&PgQuery>) -> Vec<Value> {
    (0..p.params.len())
        .map(|i| types::decode_cell(param_oid(q, p, i), Format::nth(&p.param_formats, i), p.params[i].as_deref()))
        .collect()
}

/// A parameter as text, for comparing by shape.
fn param_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether each live parameter equals the recorded one or may stand for it (`MockPool::stands_for`).
fn params_stand_for(pool: &crate::protocols::MockPool, i: usize, q: &PgQuery, p: &LivePortal) -> bool {
    let text = param_text;
    q.parameters.len() == p.params.len()
        && q.parameters.iter().enumerate().all(|(k, recorded)| {
            let live =
                types::decode_cell(param_oid(Some(q), p, k), Format::nth(&p.param_formats, k), p.params[k].as_deref());
            &live == recorded
                || matches!((text(recorded), text(&live)), (Some(r), Some(l)) if pool.stands_for(i, &r, &l))
        })
}

/// Whether the live parameters are the recorded ones, compared as values of the recorded types.
fn params_match(q: &PgQuery, p: &LivePortal) -> bool {
    q.parameters.len() == p.params.len()
        && q.parameters.iter().enumerate().all(|(i, recorded)| {
            let live =
                types::decode_cell(param_oid(Some(q), p, i), Format::nth(&p.param_formats, i), p.params[i].as_deref());
            &live == recorded
        })
}
