//! PostgreSQL (wire protocol v3). Recording watches the app talk to the real server (the app authenticates
//! against it as usual) and writes one mock per connection start and one per statement execution. Replay
//! plays the server: it accepts any authentication, sends the recorded server parameters, and answers each
//! statement from the mocks, matched on whitespace-collapsed SQL and parameter values.

#[cfg(test)]
mod conversation_tests;
mod format;
mod record;
mod serve;
pub(crate) mod types;
pub(crate) mod wire;

use std::collections::BTreeMap;

use super::{Detect, Observer, Protocol, RecordCtx};
pub(crate) use format::*;
use wire::{Column, Fields, Format};

pub(crate) struct Postgres;

impl Protocol for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    /// A client opens with a length-prefixed startup packet whose code is protocol 3.x, SSLRequest,
    /// GSSENCRequest or CancelRequest.
    fn detect_client(&self, first: &[u8], _port: u16) -> Detect {
        if first.len() < 8 {
            // Every startup packet is longer than 7 bytes and begins with a big-endian length below 10000.
            let plausible = first.iter().take(2).all(|b| *b == 0);
            return if plausible { Detect::NeedMore } else { Detect::No };
        }
        let len = i32::from_be_bytes([first[0], first[1], first[2], first[3]]);
        let code = i32::from_be_bytes([first[4], first[5], first[6], first[7]]);
        let known = matches!(code, wire::SSL_REQUEST | wire::GSSENC_REQUEST | wire::CANCEL_REQUEST)
            || (code >> 16 == 3 && code & 0xffff < 16);
        if known && (8..=10_000).contains(&len) { Detect::Yes } else { Detect::No }
    }

    fn recorded_write(&self, mock: &super::Mock) -> Option<String> {
        let query = mock.postgres.as_ref()?.query.as_ref()?;
        // A statement that failed to parse or bind, or was only described, changed nothing.
        (query.stage.is_none() && super::sql::is_write(&query.sql)).then(|| super::sql::short(&query.sql))
    }

    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer> {
        Box::new(record::PgObserver::new(ctx))
    }

    fn mock_server(
        &self,
        _pool: &std::sync::Arc<crate::protocols::MockPool>,
    ) -> std::sync::Arc<dyn crate::protocols::MockServer> {
        crate::protocols::stateless(serve::serve)
    }
}

/// SQL as matched: whitespace runs outside quotes collapsed to one space, trimmed, without a final `;`.
pub fn normalize_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut pending_space = false;
    for c in sql.chars() {
        if let Some(q) = quote {
            out.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
        }
        out.push(c);
    }
    while out.ends_with(';') || out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Statements of a (normalized) SQL string, split at `;` outside quotes.
fn statements(norm: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in norm.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == ';' => {
                parts.push(norm[start..i].trim());
                start = i + 1;
            }
            None => {}
        }
    }
    parts.push(norm[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// Whether a statement only reads or sets session state: its recorded answers may be served any number of
/// times, on any connection (SET, SHOW, transaction control, pool pings (an empty query included), version
/// and catalog queries).
pub fn is_session_sql(norm: &str) -> bool {
    let parts = statements(norm);
    parts.iter().all(|s| is_session_statement(s))
}

fn is_session_statement(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    let first = lower.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap_or("");
    const SESSION: [&str; 17] = [
        "set",
        "show",
        "reset",
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
        "discard",
        "deallocate",
        "listen",
        "unlisten",
        "close",
        "checkpoint",
    ];
    if SESSION.contains(&first) {
        return true;
    }
    const CATALOGS: [&str; 12] = [
        "pg_catalog.",
        "pg_type",
        "pg_settings",
        "pg_namespace",
        "pg_class",
        "pg_attribute",
        "pg_proc",
        "pg_range",
        "pg_enum",
        "pg_database",
        "pg_roles",
        "information_schema.",
    ];
    if (first == "select" || first == "with") && CATALOGS.iter().any(|c| lower.contains(c)) {
        return true;
    }
    // A SELECT of constants or session functions: no table, nothing that changes between calls.
    const VOLATILE: [&str; 8] = ["nextval", "setval", "now(", "random", "clock_", "gen_random", "txid", "uuid"];
    first == "select" && !lower.contains(" from ") && !VOLATILE.iter().any(|v| lower.contains(v))
}

const FIELD_NAMES: [(u8, &str); 18] = [
    (b'S', "severity"),
    (b'V', "severity_nonlocalized"),
    (b'C', "code"),
    (b'M', "message"),
    (b'D', "detail"),
    (b'H', "hint"),
    (b'P', "position"),
    (b'p', "internal_position"),
    (b'q', "internal_query"),
    (b'W', "where"),
    (b's', "schema"),
    (b't', "table"),
    (b'c', "column"),
    (b'd', "data_type"),
    (b'n', "constraint"),
    (b'F', "file"),
    (b'L', "line"),
    (b'R', "routine"),
];

pub fn error_from_fields(fields: &Fields) -> PgError {
    let mut e = PgError::default();
    for (code, value) in fields {
        match code {
            b'S' => e.severity = value.clone(),
            b'C' => e.code = value.clone(),
            b'M' => e.message = value.clone(),
            other => {
                let name = FIELD_NAMES
                    .iter()
                    .find(|(c, _)| c == other)
                    .map(|(_, n)| n.to_string())
                    .unwrap_or_else(|| (*other as char).to_string());
                e.fields.insert(name, value.clone());
            }
        }
    }
    e
}

pub fn fields_from_error(e: &PgError) -> Fields {
    let mut out: Fields = vec![(b'S', e.severity.clone())];
    if let Some(v) = e.fields.get("severity_nonlocalized") {
        out.push((b'V', v.clone()));
    }
    out.push((b'C', e.code.clone()));
    out.push((b'M', e.message.clone()));
    for (name, value) in &e.fields {
        if name == "severity_nonlocalized" {
            continue;
        }
        let single = match name.as_bytes() {
            [one] => Some(*one),
            _ => None,
        };
        let code = FIELD_NAMES.iter().find(|(_, n)| n == name).map(|(c, _)| *c).or(single);
        if let Some(c) = code {
            out.push((c, value.clone()));
        }
    }
    out
}

pub fn column_to_store(c: &Column) -> PgColumn {
    let size = (c.size != types::type_size(c.type_oid)).then_some(c.size);
    PgColumn {
        name: c.name.clone(),
        type_name: types::type_name(c.type_oid),
        format: if c.format == 1 { "binary".into() } else { String::new() },
        table_oid: c.table_oid,
        column: c.attnum,
        size,
        modifier: c.modifier,
    }
}

pub fn column_from_store(c: &PgColumn) -> Column {
    let type_oid = types::type_oid(&c.type_name).unwrap_or(0);
    Column {
        name: c.name.clone(),
        table_oid: c.table_oid,
        attnum: c.column,
        type_oid,
        size: c.size.unwrap_or_else(|| types::type_size(type_oid)),
        modifier: c.modifier,
        format: if c.format == "binary" { 1 } else { 0 },
    }
}

pub fn format_of(c: &PgColumn) -> Format {
    if c.format == "binary" { Format::Binary } else { Format::Text }
}

/// Readable parameter list for messages: `[$1=42, $2='bob']`.
pub fn show_params(values: &[serde_json::Value]) -> String {
    let items: Vec<String> = values.iter().enumerate().map(|(i, v)| format!("${}={}", i + 1, types::show(v))).collect();
    format!("[{}]", items.join(", "))
}

/// Server parameters replay sends when no startup was recorded for the destination.
pub fn default_server_parameters() -> BTreeMap<String, String> {
    [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("IntervalStyle", "postgres"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("is_superuser", "off"),
        ("application_name", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        let mut startup = Vec::new();
        wire::encode_startup(
            &wire::Startup::Start { version: wire::PROTOCOL_3, params: vec![("user".into(), "u".into())] },
            &mut startup,
        );
        assert_eq!(Postgres.detect_client(&startup, 5432), Detect::Yes);
        assert_eq!(Postgres.detect_client(&startup[..5], 5432), Detect::NeedMore);
        assert_eq!(Postgres.detect_client(&[0, 0, 0, 8, 4, 210, 22, 47], 5432), Detect::Yes);
        assert_eq!(Postgres.detect_client(b"GET / HTTP/1.1", 5432), Detect::No);
        assert_eq!(Postgres.detect_client(b"\x16\x03\x01\x02\x00\x01\x00\x01", 443), Detect::No);
        assert_eq!(Postgres.detect_client(&[0, 0, 0, 8, 0, 2, 0, 0], 5432), Detect::No);
    }

    #[test]
    fn normalizing() {
        assert_eq!(normalize_sql("  SELECT *\n\tFROM t  WHERE a = 'x  y' ;\n"), "SELECT * FROM t WHERE a = 'x  y'");
        assert_eq!(normalize_sql("select 1;"), "select 1");
    }

    #[test]
    fn session_statements() {
        for s in [
            "SET search_path = public",
            "BEGIN",
            "COMMIT",
            "SELECT 1",
            "select version()",
            "SHOW TRANSACTION ISOLATION LEVEL",
            "SELECT t.oid FROM pg_catalog.pg_type t",
            "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL",
            "DISCARD ALL",
        ] {
            assert!(is_session_sql(&normalize_sql(s)), "{s}");
        }
        for s in [
            "SELECT * FROM items",
            "INSERT INTO t VALUES (1)",
            "SELECT nextval('s')",
            "BEGIN; INSERT INTO t VALUES (1)",
        ] {
            assert!(!is_session_sql(&normalize_sql(s)), "{s}");
        }
    }

    #[test]
    fn error_fields_round_trip() {
        let f: Fields = vec![
            (b'S', "ERROR".into()),
            (b'V', "ERROR".into()),
            (b'C', "23505".into()),
            (b'M', "duplicate key".into()),
            (b'D', "Key (name)=(x) already exists.".into()),
            (b'n', "items_name_key".into()),
        ];
        let e = error_from_fields(&f);
        assert_eq!(e.fields.get("constraint").map(String::as_str), Some("items_name_key"));
        let mut back = fields_from_error(&e);
        let mut orig = f.clone();
        back.sort();
        orig.sort();
        assert_eq!(back, orig);
    }
}
