//! On-disk form of recorded PostgreSQL exchanges. Two kinds of mock:
//!
//! - `startup`: one per recorded connection: what the client asked for and what the server reported
//!   (ParameterStatus, BackendKeyData). Replay completes authentication itself and sends these back.
//! - `query`: one per statement execution: a simple-protocol Query message (which may hold several
//!   statements, hence several results) or one extended-protocol Execute with its bound parameters; also a
//!   Parse/Bind/Describe that failed, and a statement that was described but never executed.
//!
//! SQL is text, values are readable (see `protocols::postgres::types`): a value that cannot be written back
//! byte for byte is `{base64: ...}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_saphyr::FlowSeq;

/// A recorded postgres exchange: exactly one of `startup` and `query` is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresMock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<PgStartup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<PgQuery>,
}

/// The opening of a connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgStartup {
    /// StartupMessage parameters: user, database, application_name, client_encoding, ...
    pub parameters: BTreeMap<String, String>,
    /// `refused` when the client asked for TLS (SSLRequest) and the server said no; absent if not asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl: Option<String>,
    /// How the server authenticated the client: `trust`, `cleartext`, `md5`, `scram-sha-256`, ... Replay
    /// always accepts the client without asking (nonces make a recorded exchange unreplayable).
    pub auth: String,
    /// ParameterStatus values the server reported during startup (server_version, TimeZone, ...).
    #[serde(default)]
    pub server_parameters: BTreeMap<String, String>,
    /// BackendKeyData: the server process id...
    #[serde(default)]
    pub backend_pid: i32,
    /// ...and its cancellation key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend_key_base64: String,
    /// The error that ended the startup (unknown database, failed password), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PgError>,
}

/// One statement execution and what the server answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgQuery {
    /// The SQL as the app sent it (matched whitespace-collapsed).
    pub sql: String,
    /// `simple` (a Query message) or `extended` (Parse/Bind/Execute).
    pub protocol: PgProtocol,
    /// The prepared statement's name while recording (`__asyncpg_stmt_3__`, `S_1`; empty: unnamed). Only
    /// informative: replay maps the names the app uses on each connection to the SQL they were given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub statement: String,
    /// Parameter types: from the Parse message, completed by the server's ParameterDescription.
    #[serde(default, skip_serializing_if = "Vec::is_empty", serialize_with = "flow")]
    pub parameter_types: Vec<String>,
    /// Bound values, `$1` first, decoded per type (a parameter of unspecified type is its text).
    #[serde(default, skip_serializing_if = "Vec::is_empty", serialize_with = "flow")]
    pub parameters: Vec<Value>,
    /// Row limit of the Execute (0: all rows).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_rows: i32,
    /// Set when the statement failed before executing: `parse`, `bind` or `describe`; `describe` alone
    /// with no error means the app prepared and described the statement but never executed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Row shape reported by a statement Describe (answered when the app describes the statement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub described_columns: Option<Vec<PgColumn>>,
    /// One result per statement (several for a multi-statement simple query, which stops at an error).
    #[serde(default)]
    pub results: Vec<PgResult>,
    /// ParameterStatus changes the server reported after it (SET application_name ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameter_status: BTreeMap<String, String>,
    /// NOTIFY messages delivered with it (LISTEN on this connection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<PgNotification>,
}

/// Short lists on one line: `[42, 'bob']`.
fn flow<S: serde::Serializer, T: Serialize>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    FlowSeq(v).serialize(s)
}

/// One row per line.
fn flow_rows<S: serde::Serializer>(rows: &[Vec<Value>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(rows.iter().map(FlowSeq))
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PgProtocol {
    #[default]
    Simple,
    Extended,
}

/// The outcome of one statement.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgResult {
    /// RowDescription, when the statement returns rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<PgColumn>>,
    /// Rows in the order the server sent them, one readable value per column (null is SQL NULL).
    #[serde(default, skip_serializing_if = "Vec::is_empty", serialize_with = "flow_rows")]
    pub rows: Vec<Vec<Value>>,
    /// CommandComplete tag: `SELECT 2`, `INSERT 0 1`, `UPDATE 3`, `BEGIN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The statement was empty (EmptyQueryResponse).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty: bool,
    /// The row limit was reached (PortalSuspended): the app may execute the portal again for more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
    /// COPY ... FROM STDIN: the data the app sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_in: Option<PgCopy>,
    /// COPY ... TO STDOUT: the data the server sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_out: Option<PgCopy>,
    /// NoticeResponse messages that came with this statement (replayed before its rows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<PgError>,
    /// ErrorResponse: the statement failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PgError>,
}

/// One column of a RowDescription.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgColumn {
    pub name: String,
    /// Type name (`int4`, `text`, `_int4` for arrays) or OID for types doppel does not name.
    #[serde(rename = "type")]
    pub type_name: String,
    /// `binary` when the values were sent in binary format.
    #[serde(default, skip_serializing_if = "is_text")]
    pub format: String,
    /// OID of the table the column comes from, and its attribute number (0: not a table column).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub table_oid: u32,
    #[serde(default, skip_serializing_if = "is_zero_i16")]
    pub column: i16,
    /// Type size as the server reports it (-1: variable); absent when it is the type's usual size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i16>,
    /// Type modifier (varchar(20) -> 24, numeric(10,2) -> 655366); -1 is none.
    #[serde(default = "minus_one", skip_serializing_if = "is_minus_one")]
    pub modifier: i32,
}

fn is_text(s: &String) -> bool {
    s.is_empty() || s == "text"
}
fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}
fn is_zero_i16(n: &i16) -> bool {
    *n == 0
}
fn minus_one() -> i32 {
    -1
}
fn is_minus_one(n: &i32) -> bool {
    *n == -1
}

/// COPY data, with the format the server announced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgCopy {
    /// `text` (also CSV) or `binary`.
    pub format: String,
    /// Number of columns copied.
    pub columns: usize,
    /// The data as text when it is UTF-8...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// ...else as base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// An ErrorResponse or NoticeResponse, field by field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PgError {
    /// ERROR, FATAL, NOTICE, WARNING, ... (localized as the server sent it).
    pub severity: String,
    /// SQLSTATE: `23505` unique violation, `42P01` undefined table, ...
    pub code: String,
    pub message: String,
    /// Other fields by their protocol names: detail, hint, position, where, schema, table, column,
    /// data_type, constraint, file, line, routine, severity_nonlocalized, internal_position, internal_query.
    #[serde(default, flatten)]
    pub fields: BTreeMap<String, String>,
}

/// A NotificationResponse (NOTIFY channel, payload).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgNotification {
    pub channel: String,
    #[serde(default)]
    pub payload: String,
    /// The notifying backend's process id.
    #[serde(default)]
    pub pid: i32,
}
