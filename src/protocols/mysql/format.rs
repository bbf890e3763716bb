//! On-disk form of recorded MySQL/MariaDB exchanges: one mock per command the app sent (and one per
//! connection for its handshake), decoded so that a person can read it: SQL as text, parameters and rows as
//! values, column names and types, OK/ERR details. Bytes that are not UTF-8 are written as `{base64: ...}`.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One recorded MySQL exchange: what the app sent and what the server answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlMock {
    /// `handshake` (connection setup and authentication), `query` (COM_QUERY), `prepare`
    /// (COM_STMT_PREPARE), `execute` (COM_STMT_EXECUTE), `reset` (COM_STMT_RESET), `ping`, `init_db`,
    /// `reset_connection`.
    pub command: String,
    /// The SQL of a query, or of the prepared statement that was prepared, executed or reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// The database selected by `init_db` (COM_INIT_DB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// The statement id the server gave while recording (replay hands out its own and maps them by SQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_id: Option<u32>,
    /// Parameter values of an `execute`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<MysqlValue>,
    /// The wire type the client bound each parameter with (`LONGLONG`, `VAR_STRING`, ..., `UNSIGNED ...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub param_types: Vec<String>,
    /// Connection setup, for `handshake`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handshake: Option<MysqlHandshake>,
    /// The server's answer to a `prepare`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<MysqlPrepared>,
    /// `LOAD DATA LOCAL INFILE`: the file the server asked the client for, and how many bytes the client
    /// sent (0 when it refused). The final answer is in `results` or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_infile: Option<MysqlLocalInfile>,
    /// The answers in order: OK packets and result sets (several with multi-statements or procedures).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<MysqlResult>,
    /// The ERR packet that ended the answer, if any (after the results that came before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<MysqlError>,
}

/// How a connection was set up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlHandshake {
    /// The server's version string (`5.5.5-10.11.19-MariaDB...` or `8.0.36`).
    pub server_version: String,
    /// The connection (thread) id the server gave.
    #[serde(default)]
    pub connection_id: u32,
    /// Server character set / collation id from the greeting.
    #[serde(default)]
    pub charset: u8,
    /// The authentication plugin the server announced.
    #[serde(default)]
    pub auth_plugin: String,
    /// Capability flags the server offered, by name.
    #[serde(default)]
    pub server_capabilities: Vec<String>,
    /// Capability flags the client asked for, by name.
    #[serde(default)]
    pub client_capabilities: Vec<String>,
    /// The user the client logged in as.
    #[serde(default)]
    pub user: String,
    /// The database the client asked for at connect time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The authentication plugin the client answered with.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_auth_plugin: String,
    /// Connection attributes the client sent (`_client_name`, `program_name`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// What happened during authentication, in order (`auth switch to mysql_native_password`,
    /// `caching_sha2_password fast auth`, `caching_sha2_password full auth`, ...); empty when the
    /// first answer was accepted directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_steps: Vec<String>,
}

/// A server's answer to COM_STMT_PREPARE.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlPrepared {
    /// Placeholder definitions, one per `?`.
    #[serde(default)]
    pub params: Vec<MysqlColumn>,
    /// Columns of the statement's result set (none for statements without one).
    #[serde(default)]
    pub columns: Vec<MysqlColumn>,
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub warnings: u16,
}

/// `LOAD DATA LOCAL INFILE`: the server's request for a client file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlLocalInfile {
    pub filename: String,
    /// Bytes of file content the client sent back; 0 when it refused.
    #[serde(default)]
    pub bytes_sent: u64,
}

/// One answer: an OK packet (no `columns`), or a result set (`columns` and `rows`) with the status of the
/// packet that ended it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<MysqlColumn>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<Vec<MysqlValue>>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub affected_rows: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub last_insert_id: u64,
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub warnings: u16,
    /// Server status flags by name (`AUTOCOMMIT`, `IN_TRANS`, `MORE_RESULTS_EXISTS`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    /// The human-readable info of an OK packet (`Rows matched: 1  Changed: 1  Warnings: 0`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub info: String,
}

/// A column definition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlColumn {
    pub name: String,
    /// Wire type: `LONG`, `LONGLONG`, `NEWDECIMAL`, `VAR_STRING`, `BLOB`, `DATETIME`, ... (or `TYPE_<n>`).
    #[serde(rename = "type")]
    pub column_type: String,
    /// Column flags by name (`NOT_NULL`, `PRI_KEY`, `UNSIGNED`, `BINARY`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub table: String,
    /// The column's name in its table, when the query renamed it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub org_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub org_table: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub schema: String,
    /// Character set / collation id (63 is binary).
    #[serde(default)]
    pub charset: u16,
    /// Maximum display length.
    #[serde(default)]
    pub length: u32,
    #[serde(default, skip_serializing_if = "is_zero_u8")]
    pub decimals: u8,
}

/// An ERR packet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlError {
    pub code: u16,
    /// Five-character SQLSTATE (`42S02`, `23000`, `HY000`).
    #[serde(default)]
    pub sqlstate: String,
    pub message: String,
}

/// A cell or parameter value. Text-protocol cells are always strings (as the server sent them);
/// binary-protocol values are numbers, strings (dates as `YYYY-MM-DD hh:mm:ss[.ffffff]`, times as
/// `[-]hhh:mm:ss[.ffffff]`), `null`, or `{base64: ...}` for bytes that are not UTF-8.
#[derive(Debug, Clone, PartialEq)]
pub enum MysqlValue {
    Null,
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl MysqlValue {
    /// Text when the bytes are UTF-8, bytes otherwise.
    pub fn from_bytes(b: &[u8]) -> MysqlValue {
        match std::str::from_utf8(b) {
            Ok(s) => MysqlValue::Text(s.to_string()),
            Err(_) => MysqlValue::Bytes(b.to_vec()),
        }
    }
}

impl Serialize for MysqlValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MysqlValue::Null => s.serialize_none(),
            MysqlValue::Int(v) => s.serialize_i64(*v),
            MysqlValue::UInt(v) => s.serialize_u64(*v),
            MysqlValue::Float(v) => s.serialize_f64(*v),
            MysqlValue::Text(v) => s.serialize_str(v),
            MysqlValue::Bytes(v) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("base64", &B64.encode(v))?;
                m.end()
            }
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = MysqlValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("null, a number, a string or {base64: ...}")
    }

    fn visit_unit<E: de::Error>(self) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<MysqlValue, D::Error> {
        d.deserialize_any(ValueVisitor)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Int(i64::from(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<MysqlValue, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => MysqlValue::Int(i),
            Err(_) => MysqlValue::UInt(v),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Text(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<MysqlValue, E> {
        Ok(MysqlValue::Text(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MysqlValue, A::Error> {
        let mut bytes = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "base64" {
                return Err(de::Error::custom(format!("unknown key {key:?} in a value (only base64 is known)")));
            }
            let text: String = map.next_value()?;
            bytes = Some(B64.decode(text.trim()).map_err(|e| de::Error::custom(format!("bad base64: {e}")))?);
        }
        bytes.map(MysqlValue::Bytes).ok_or_else(|| de::Error::custom("a map value needs a base64 key"))
    }
}

impl<'de> Deserialize<'de> for MysqlValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MysqlValue, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}
