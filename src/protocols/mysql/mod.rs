//! MySQL and MariaDB (client/server protocol 4.1, handshake v10).
//!
//! Record: doppel forwards the connection untouched (the app authenticates against the real server) while
//! `record::MysqlObserver` follows it and writes one mock per command. Replay: `serve` plays the server,
//! completes the handshake itself (any password is accepted), maps prepared statement ids per connection
//! and answers each command from the mocks; a command with no recording gets an ERR packet and fails the
//! test that sent it.
//!
//! The packet layer is written here rather than taken from `mysql_common`: doppel must follow both
//! directions passively from arbitrary TCP reads, per negotiated capability (deprecate-EOF, MariaDB
//! metadata caching), and never fail the app's traffic; a small bounds-checked framer and decoders that
//! report what they did not understand fit that better than a client library's packet types.

mod format;
pub(crate) mod message;
pub(crate) mod packet;
mod record;
mod serve;

use super::{Detect, Observer, Protocol, RecordCtx};
pub(crate) use format::*;

pub const CACHING_SHA2: &str = "caching_sha2_password";
pub const NATIVE_PASSWORD: &str = "mysql_native_password";

/// The port MySQL and MariaDB listen on by default.
pub const DEFAULT_PORT: u16 = 3306;

/// Command bytes (the first byte of a client packet in the command phase).
pub(crate) mod command {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const PING: u8 = 0x0e;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const RESET_CONNECTION: u8 = 0x1f;

    /// The protocol's name of a command byte, for messages.
    pub fn name(code: u8) -> &'static str {
        match code {
            0x00 => "COM_SLEEP",
            0x01 => "COM_QUIT",
            0x02 => "COM_INIT_DB",
            0x03 => "COM_QUERY",
            0x04 => "COM_FIELD_LIST",
            0x05 => "COM_CREATE_DB",
            0x06 => "COM_DROP_DB",
            0x07 => "COM_REFRESH",
            0x08 => "COM_SHUTDOWN",
            0x09 => "COM_STATISTICS",
            0x0a => "COM_PROCESS_INFO",
            0x0c => "COM_PROCESS_KILL",
            0x0d => "COM_DEBUG",
            0x0e => "COM_PING",
            0x11 => "COM_CHANGE_USER",
            0x12 => "COM_BINLOG_DUMP",
            0x16 => "COM_STMT_PREPARE",
            0x17 => "COM_STMT_EXECUTE",
            0x18 => "COM_STMT_SEND_LONG_DATA",
            0x19 => "COM_STMT_CLOSE",
            0x1a => "COM_STMT_RESET",
            0x1b => "COM_SET_OPTION",
            0x1c => "COM_STMT_FETCH",
            0x1f => "COM_RESET_CONNECTION",
            0xfa => "COM_STMT_BULK_EXECUTE",
            0xfe => "COM_MULTI",
            _ => "unknown",
        }
    }

    /// The `command` written in a mock.
    pub fn mock_name(code: u8) -> &'static str {
        match code {
            INIT_DB => "init_db",
            QUERY => "query",
            PING => "ping",
            STMT_PREPARE => "prepare",
            STMT_EXECUTE => "execute",
            STMT_RESET => "reset",
            RESET_CONNECTION => "reset_connection",
            _ => "other",
        }
    }
}

pub(crate) struct Mysql;

impl Protocol for Mysql {
    fn name(&self) -> &'static str {
        "mysql"
    }

    /// A MySQL client never speaks first.
    fn detect_client(&self, _first: &[u8], _port: u16) -> Detect {
        Detect::No
    }

    /// The greeting: a packet with sequence id 0 whose payload starts with protocol version 10 and a
    /// printable server version. On the default port, an ERR packet in its place (a refused connection)
    /// counts too.
    fn detect_server(&self, first: &[u8], port: u16) -> Detect {
        detect_greeting(first, port)
    }

    fn recorded_write(&self, mock: &super::Mock) -> Option<String> {
        let m = mock.mysql.as_ref()?;
        let sql = m.sql.as_deref().filter(|_| matches!(m.command.as_str(), "query" | "execute"))?;
        super::sql::is_write(sql).then(|| super::sql::short(sql))
    }

    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer> {
        Box::new(record::MysqlObserver::new(ctx))
    }

    fn mock_server(
        &self,
        _pool: &std::sync::Arc<crate::protocols::MockPool>,
    ) -> std::sync::Arc<dyn crate::protocols::MockServer> {
        crate::protocols::stateless(serve::serve)
    }

    fn server_first(&self) -> bool {
        true
    }
}

fn detect_greeting(first: &[u8], port: u16) -> Detect {
    if first.len() >= 4 && first[3] != 0 {
        return Detect::No;
    }
    if first.len() >= 3 {
        let len = usize::from(first[0]) | usize::from(first[1]) << 8 | usize::from(first[2]) << 16;
        if !(5..=4096).contains(&len) {
            return Detect::No;
        }
    }
    match first.get(4) {
        None => Detect::NeedMore,
        Some(0xFF) if port == DEFAULT_PORT => Detect::Yes,
        Some(10) => {
            let version = &first[5..];
            let end = version.iter().position(|b| *b == 0);
            let text = &version[..end.unwrap_or(version.len())];
            if !text.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                Detect::No
            } else if end.is_some() {
                Detect::Yes
            } else {
                Detect::NeedMore
            }
        }
        Some(_) => Detect::No,
    }
}

#[cfg(test)]
mod tests;
