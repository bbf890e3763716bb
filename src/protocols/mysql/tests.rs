//! The observer and the replay server on crafted conversations: both deprecate-EOF modes, every auth path
//! (native, caching_sha2 fast and full, auth switch, refusal), TLS, multi-results, prepared statements,
//! LOCAL INFILE, MariaDB metadata caching; bytes split anywhere; garbage. (MariaDB has no caching_sha2
//! plugin, so those paths are tested here with packets shaped as MySQL 8 sends them.)

use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::message::{self, Greeting, HandshakeResponse, OkPacket, caps, status, types};
use super::packet::{Framer, Packet, put_lenenc, write_packet};
use super::{CACHING_SHA2, NATIVE_PASSWORD, command};
use crate::protocols::Mock;
use crate::protocols::mysql::{MysqlColumn, MysqlError, MysqlMock, MysqlValue};
use crate::protocols::{MockPool, Observer, ParseError, Role, ServeCtx, testing};
use crate::store::{MemorySink, format_time};

const SERVER_CAPS: u64 = caps::LONG_PASSWORD
    | caps::CONNECT_WITH_DB
    | caps::LOCAL_FILES
    | caps::PROTOCOL_41
    | caps::SECURE_CONNECTION
    | caps::MULTI_STATEMENTS
    | caps::MULTI_RESULTS
    | caps::PS_MULTI_RESULTS
    | caps::PLUGIN_AUTH
    | caps::CONNECT_ATTRS
    | caps::PLUGIN_AUTH_LENENC_DATA
    | caps::SSL
    | caps::DEPRECATE_EOF;

/// One side's read: the packets of one message, in order.
#[derive(Default)]
struct Conv {
    msgs: Vec<(bool, Vec<u8>)>,
    seq: u8,
    capabilities: u64,
}

impl Conv {
    fn server(&mut self, payloads: &[Vec<u8>]) {
        let mut out = Vec::new();
        for p in payloads {
            write_packet(&mut out, &mut self.seq, p);
        }
        self.msgs.push((false, out));
    }

    fn client(&mut self, payload: &[u8]) {
        let mut out = Vec::new();
        write_packet(&mut out, &mut self.seq, payload);
        self.msgs.push((true, out));
    }

    fn command(&mut self, payload: &[u8]) {
        self.seq = 0;
        self.client(payload);
    }

    fn eof_mode(&self) -> bool {
        self.capabilities & caps::DEPRECATE_EOF == 0
    }

    fn login(&mut self, client_caps: u64, plugin: &str) {
        self.capabilities = client_caps & SERVER_CAPS;
        self.server(&[message::encode_greeting(&greeting(plugin))]);
        self.client(&message::encode_handshake_response(&login_response(client_caps, plugin)));
    }

    fn ok(&mut self, affected: u64, last_id: u64) {
        let ok = OkPacket { affected_rows: affected, last_insert_id: last_id, status: 2, ..OkPacket::default() };
        self.server(&[message::encode_ok(&ok, 0)]);
    }

    /// A result set's packets (text or binary rows), ending with `end_status`.
    fn result_set(&self, columns: &[MysqlColumn], rows: &[Vec<MysqlValue>], binary: bool, end: u16) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut count = Vec::new();
        put_lenenc(&mut count, columns.len() as u64);
        out.push(count);
        out.extend(columns.iter().map(message::encode_column));
        if self.eof_mode() {
            out.push(message::encode_eof(0, end));
        }
        let kinds: Vec<_> = columns.iter().map(message::ColumnKind::of).collect();
        for r in rows {
            out.push(if binary { message::encode_binary_row(r, &kinds) } else { message::encode_text_row(r) });
        }
        if self.eof_mode() {
            out.push(message::encode_eof(0, end));
        } else {
            out.push(message::encode_ok(&OkPacket { status: end, ..OkPacket::default() }, 0xFE));
        }
        out
    }
}

fn greeting(plugin: &str) -> Greeting {
    Greeting {
        server_version: "8.0.36".into(),
        connection_id: 12,
        scramble: b"0123456789abcdefghij".to_vec(),
        capabilities: SERVER_CAPS,
        charset: 255,
        status: 2,
        auth_plugin: plugin.into(),
    }
}

fn login_response(client_caps: u64, plugin: &str) -> HandshakeResponse {
    HandshakeResponse {
        capabilities: client_caps,
        max_packet: 1 << 24,
        charset: 45,
        ssl_request: false,
        user: "app".into(),
        auth_response: vec![7; 20],
        database: Some("shop".into()),
        auth_plugin: plugin.into(),
        attributes: vec![("_client_name".into(), "crafted".into())],
    }
}

fn col(name: &str, ty: &str) -> MysqlColumn {
    MysqlColumn {
        name: name.into(),
        column_type: ty.into(),
        flags: vec!["NOT_NULL".into()],
        table: "t".into(),
        schema: "shop".into(),
        charset: 63,
        length: 11,
        ..MysqlColumn::default()
    }
}

fn text(s: &str) -> MysqlValue {
    MysqlValue::Text(s.into())
}

fn client_caps(deprecate_eof: bool) -> u64 {
    let base = SERVER_CAPS & !caps::SSL & !caps::DEPRECATE_EOF;
    if deprecate_eof { base | caps::DEPRECATE_EOF } else { base }
}

/// A whole session: every command doppel follows, answered as a server would.
fn session(deprecate_eof: bool) -> Conv {
    let mut c = Conv::default();
    c.login(client_caps(deprecate_eof), NATIVE_PASSWORD);
    c.ok(0, 0);

    c.command(b"\x03SELECT 1 AS one; SELECT 'a' AS s");
    let mut first = c.result_set(&[col("one", "LONGLONG")], &[vec![text("1")]], false, 2 | status::MORE_RESULTS_EXISTS);
    first.extend(c.result_set(&[col("s", "VAR_STRING")], &[vec![text("a")], vec![MysqlValue::Null]], false, 2));
    c.server(&first);

    c.command(b"\x03INSERT INTO t (v) VALUES ('x')");
    c.ok(1, 7);

    c.command(b"\x16SELECT id, at FROM t WHERE id = ?");
    let mut prepare =
        vec![message::encode_prepare_ok(&message::PrepareOk { statement_id: 5, columns: 2, params: 1, warnings: 0 })];
    prepare.push(message::encode_column(&col("?", "VAR_STRING")));
    if c.eof_mode() {
        prepare.push(message::encode_eof(0, 2));
    }
    prepare.push(message::encode_column(&col("id", "LONG")));
    prepare.push(message::encode_column(&col("at", "DATETIME")));
    if c.eof_mode() {
        prepare.push(message::encode_eof(0, 2));
    }
    c.server(&prepare);

    let execute = |id: u32, value: i64, types_sent: bool| message::Execute {
        statement_id: id,
        flags: 0,
        types: vec![(types::LONGLONG, 0)],
        params: vec![MysqlValue::Int(value)],
        types_sent,
    };
    let columns = [col("id", "LONG"), col("at", "DATETIME")];
    c.command(&message::encode_execute(&execute(5, 42, true)));
    let rows = c.result_set(&columns, &[vec![MysqlValue::Int(42), text("2024-02-29 13:14:15.000001")]], true, 2);
    c.server(&rows);
    // The types bound at the first execution apply when an execution sends none.
    c.command(&message::encode_execute(&execute(5, 43, false)));
    let none = c.result_set(&columns, &[], true, 2);
    c.server(&none);

    c.command(&[command::STMT_RESET, 5, 0, 0, 0]);
    c.ok(0, 0);
    c.command(&[command::STMT_CLOSE, 5, 0, 0, 0]);
    c.command(&[command::PING]);
    c.ok(0, 0);
    c.command(b"\x02other");
    c.ok(0, 0);
    c.command(b"\x03SELECT * FROM nope");
    let e = MysqlError { code: 1146, sqlstate: "42S02".into(), message: "Table 'shop.nope' doesn't exist".into() };
    c.server(&[message::encode_err(&e)]);

    c.command(b"\x03LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE t");
    c.server(&[b"\xfb/tmp/x.csv".to_vec()]);
    c.client(b"1,a\n2,b\n");
    c.client(b"");
    c.ok(2, 0);

    c.command(&[command::QUIT]);
    c
}

/// Feeds `msgs` to an observer, each message split into `pieces`, and returns the mocks it wrote and the
/// first error it returned.
fn observe(msgs: &[(bool, Vec<u8>)], cut: impl Fn(&[u8]) -> Vec<&[u8]>) -> (Vec<Mock>, Option<ParseError>) {
    testing::observe(super::record::MysqlObserver::new, Role::Egress { dest: "db:3306".into() }, msgs, cut)
}

use crate::protocols::testing::whole;

fn mysql_of(mocks: &[Mock]) -> Vec<MysqlMock> {
    mocks.iter().map(|m| m.mysql.clone().unwrap()).collect()
}

#[test]
fn a_session_becomes_one_readable_mock_per_command() {
    let (mocks, error) = observe(&session(false).msgs, whole);
    assert_eq!(error, None);
    let m = mysql_of(&mocks);
    let commands: Vec<&str> = m.iter().map(|m| m.command.as_str()).collect();
    assert_eq!(
        commands,
        ["handshake", "query", "query", "prepare", "execute", "execute", "reset", "ping", "init_db", "query", "query"]
    );
    let hs = m[0].handshake.as_ref().unwrap();
    assert_eq!((hs.user.as_str(), hs.database.as_deref()), ("app", Some("shop")));
    assert_eq!(hs.attributes.get("_client_name").map(String::as_str), Some("crafted"));
    // Two result sets from one query.
    assert_eq!(m[1].results.len(), 2);
    assert_eq!(m[1].results[1].rows, vec![vec![text("a")], vec![MysqlValue::Null]]);
    assert_eq!((m[2].results[0].affected_rows, m[2].results[0].last_insert_id), (1, 7));
    // Prepared statements: the SQL travels to executions and resets; values decoded with their types.
    let prepared = m[3].prepared.as_ref().unwrap();
    assert_eq!((prepared.params.len(), prepared.columns.len()), (1, 2));
    assert_eq!(m[4].sql.as_deref(), Some("SELECT id, at FROM t WHERE id = ?"));
    assert_eq!(m[4].params, vec![MysqlValue::Int(42)]);
    assert_eq!(m[4].param_types, vec!["LONGLONG".to_string()]);
    assert_eq!(m[4].results[0].rows[0], vec![MysqlValue::Int(42), text("2024-02-29 13:14:15.000001")]);
    assert_eq!(m[5].params, vec![MysqlValue::Int(43)]);
    assert!(m[5].results[0].rows.is_empty() && m[5].results[0].columns.len() == 2);
    assert_eq!(m[6].sql, m[4].sql);
    assert_eq!(m[8].schema.as_deref(), Some("other"));
    assert_eq!(m[9].error.as_ref().map(|e| (e.code, e.sqlstate.as_str())), Some((1146, "42S02")));
    let infile = m[10].local_infile.as_ref().unwrap();
    assert_eq!((infile.filename.as_str(), infile.bytes_sent), ("/tmp/x.csv", 8));
    assert_eq!(m[10].results[0].affected_rows, 2);
}

#[test]
fn both_eof_modes_give_the_same_mocks() {
    let (old, e1) = observe(&session(false).msgs, whole);
    let (new, e2) = observe(&session(true).msgs, whole);
    assert_eq!((e1, e2), (None, None));
    let (old, new) = (mysql_of(&old), mysql_of(&new));
    assert_eq!(old.len(), new.len());
    // Everything but the negotiated capabilities is the same.
    assert_eq!(old[1..], new[1..]);
}

#[test]
fn bytes_split_at_every_boundary_give_the_same_mocks() {
    for deprecate_eof in [false, true] {
        let conv = session(deprecate_eof);
        let (expected, _) = observe(&conv.msgs, whole);
        let longest = conv.msgs.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
        for cut in 0..=longest {
            let (got, error) = observe(&conv.msgs, |b| {
                let at = cut.min(b.len());
                vec![&b[..at], &b[at..]].into_iter().filter(|p| !p.is_empty()).collect()
            });
            assert_eq!(error, None, "cut at {cut}");
            assert_eq!(got, expected, "cut at {cut}");
        }
        let (bytewise, _) = observe(&conv.msgs, |b| b.chunks(1).collect());
        assert_eq!(bytewise, expected);
    }
}

fn auth_steps(conv: &Conv) -> (Vec<String>, Option<MysqlError>) {
    let (mocks, error) = observe(&conv.msgs, whole);
    assert_eq!(error, None);
    let hs = mysql_of(&mocks).into_iter().next().expect("a handshake mock");
    (hs.handshake.map(|h| h.auth_steps).unwrap_or_default(), hs.error)
}

#[test]
fn caching_sha2_fast_path() {
    let mut c = Conv::default();
    c.login(client_caps(true), CACHING_SHA2);
    c.server(&[vec![0x01, 0x03], message::encode_ok(&OkPacket::default(), 0)]);
    assert_eq!(auth_steps(&c).0, ["caching_sha2_password fast auth success"]);
}

#[test]
fn caching_sha2_full_path_with_the_servers_public_key() {
    let mut c = Conv::default();
    c.login(client_caps(true), CACHING_SHA2);
    c.server(&[vec![0x01, 0x04]]);
    c.client(&[0x02]);
    c.server(&[b"\x01-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n".to_vec()]);
    c.client(&[9; 256]);
    c.ok(0, 0);
    c.command(b"\x03SELECT 1");
    let rs = c.result_set(&[col("1", "LONGLONG")], &[vec![text("1")]], false, 2);
    c.server(&rs);
    let (steps, error) = auth_steps(&c);
    assert_eq!(error, None);
    assert_eq!(
        steps,
        [
            "caching_sha2_password full auth requested",
            "client asked for the server's public key",
            "server sent its public key"
        ]
    );
    let (mocks, _) = observe(&c.msgs, whole);
    assert_eq!(mysql_of(&mocks)[1].results[0].rows, vec![vec![text("1")]]);
}

#[test]
fn auth_switch_and_refused_login() {
    let mut c = Conv::default();
    c.login(client_caps(false), CACHING_SHA2);
    let mut switch = b"\xfemysql_native_password\0".to_vec();
    switch.extend_from_slice(b"abcdefghij0123456789\0");
    c.server(&[switch]);
    c.client(&[5; 20]);
    let e = MysqlError { code: 1045, sqlstate: "28000".into(), message: "Access denied for user 'app'".into() };
    c.server(&[message::encode_err(&e)]);
    let (steps, error) = auth_steps(&c);
    assert_eq!(steps, ["auth switch to mysql_native_password"]);
    assert_eq!(error, Some(e));
}

#[test]
fn an_ssl_request_marks_where_tls_starts_in_the_piece() {
    let memory = MemorySink::new();
    let at = Instant::now();
    let mut obs = super::record::MysqlObserver::new(memory.ctx(Role::Egress { dest: "db:3306".into() }));
    let mut hello = Vec::new();
    let mut seq = 0;
    write_packet(&mut hello, &mut seq, &message::encode_greeting(&greeting(NATIVE_PASSWORD)));
    obs.server(&hello, at).unwrap();
    assert_eq!(obs.tls_boundary(), None);
    let ssl =
        HandshakeResponse { capabilities: client_caps(true) | caps::SSL, ssl_request: true, ..Default::default() };
    let mut piece = Vec::new();
    let mut seq = 1;
    write_packet(&mut piece, &mut seq, &message::encode_handshake_response(&ssl));
    let plain = piece.len();
    // The client's ClientHello arrived in the same read as its SSLRequest.
    piece.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x10]);
    obs.client(&piece, at).unwrap();
    assert_eq!(obs.tls_boundary(), Some(plain));
    assert_eq!(obs.tls_boundary(), None, "asked once per piece");
}

#[test]
fn unsupported_commands_make_the_observer_step_aside() {
    for payload in [vec![0x18, 1, 0, 0, 0, 0, 0], vec![0x1c, 1, 0, 0, 0, 1, 0, 0, 0], vec![0x11, b'u', 0]] {
        let mut c = Conv::default();
        c.login(client_caps(true), NATIVE_PASSWORD);
        c.ok(0, 0);
        c.command(&payload);
        let (mocks, error) = observe(&c.msgs, whole);
        assert_eq!(mocks.len(), 1, "the handshake was recorded");
        assert!(error.is_some(), "{payload:?}");
    }
}

#[test]
fn mariadb_cached_metadata_uses_the_prepared_columns() {
    let mut c = Conv::default();
    let mariadb = (client_caps(true) & !caps::LONG_PASSWORD) | caps::MARIADB_CACHE_METADATA;
    c.capabilities = mariadb;
    let mut g = greeting(NATIVE_PASSWORD);
    g.capabilities = (SERVER_CAPS & !caps::LONG_PASSWORD) | caps::MARIADB_CACHE_METADATA;
    c.server(&[message::encode_greeting(&g)]);
    c.client(&message::encode_handshake_response(&login_response(mariadb, NATIVE_PASSWORD)));
    c.ok(0, 0);
    c.command(b"\x16SELECT n FROM t");
    let head = message::PrepareOk { statement_id: 1, columns: 1, params: 0, warnings: 0 };
    c.server(&[message::encode_prepare_ok(&head), message::encode_column(&col("n", "LONG"))]);
    let exec = message::Execute { statement_id: 1, flags: 0, types: vec![], params: vec![], types_sent: false };
    c.command(&message::encode_execute(&exec));
    // Column count 1, "metadata follows" 0, then the row and the end.
    let end = message::encode_ok(&OkPacket { status: 2, ..OkPacket::default() }, 0xFE);
    let row = message::encode_binary_row(&[MysqlValue::Int(-3)], &[message::ColumnKind { ty: types::LONG, flags: 0 }]);
    c.server(&[vec![1, 0], row, end]);
    let (mocks, error) = observe(&c.msgs, whole);
    assert_eq!(error, None);
    let m = mysql_of(&mocks);
    assert_eq!(m[2].results[0].columns[0].name, "n");
    assert_eq!(m[2].results[0].rows, vec![vec![MysqlValue::Int(-3)]]);
}

#[test]
fn detection_of_the_greeting() {
    use crate::protocols::{Detect, Protocol};
    let mut wire = Vec::new();
    write_packet(&mut wire, &mut 0, &message::encode_greeting(&greeting(NATIVE_PASSWORD)));
    assert_eq!(super::Mysql.detect_server(&wire, 3307), Detect::Yes);
    assert_eq!(super::Mysql.detect_server(&wire[..7], 3307), Detect::NeedMore);
    assert_eq!(super::Mysql.detect_server(&wire[..3], 3307), Detect::NeedMore);
    assert_eq!(super::Mysql.detect_server(b"+OK redis\r\n", 6379), Detect::No);
    assert_eq!(super::Mysql.detect_server(b"SSH-2.0-OpenSSH_9.2\r\n", 22), Detect::No);
    let mut refused = Vec::new();
    let e = MysqlError { code: 1040, sqlstate: "08004".into(), message: "Too many connections".into() };
    write_packet(&mut refused, &mut 0, &message::encode_err(&e));
    assert_eq!(super::Mysql.detect_server(&refused, 3306), Detect::Yes);
    assert_eq!(super::Mysql.detect_client(b"\x03SELECT", 3306), Detect::No);
}

#[test]
fn a_column_count_of_zero_is_refused_not_a_panic() {
    let mut c = Conv::default();
    c.login(client_caps(true), NATIVE_PASSWORD);
    c.ok(0, 0);
    c.command(b"\x03SELECT");
    c.server(&[vec![0xFC, 0, 0], message::encode_column(&col("x", "LONG"))]);
    let (_, error) = observe(&c.msgs, whole);
    assert!(error.is_some_and(|e| e.to_string().contains("without columns")));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_never_panics(msgs in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..80)), 0..12)) {
        let _ = observe(&msgs, whole);
        // Also after a valid login, where commands and answers are parsed.
        let mut c = Conv::default();
        c.login(client_caps(true), NATIVE_PASSWORD);
        c.ok(0, 0);
        c.msgs.extend(msgs);
        let _ = observe(&c.msgs, whole);
    }

    #[test]
    fn framed_garbage_after_login_never_panics(
        packets in proptest::collection::vec((any::<bool>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..60)), 0..16)
    ) {
        // Well-framed packets with arbitrary payloads, starting with real command bytes, in both directions.
        const FIRST: [u8; 12] = [0x00, 0x01, 0x02, 0x03, 0x0e, 0x16, 0x17, 0x19, 0x1a, 0xfb, 0xfe, 0xff];
        let mut c = Conv::default();
        c.login(client_caps(false), NATIVE_PASSWORD);
        c.ok(0, 0);
        c.command(b"\x16SELECT ?");
        let head = message::PrepareOk { statement_id: 1, columns: 1, params: 1, warnings: 0 };
        c.server(&[message::encode_prepare_ok(&head)]);
        for (from_client, first, rest) in packets {
            let mut payload = vec![FIRST[usize::from(first) % FIRST.len()]];
            payload.extend(rest);
            if from_client { c.command(&payload) } else { c.server(&[payload]) }
        }
        let _ = observe(&c.msgs, whole);
    }

    #[test]
    fn random_splits_give_the_same_mocks(cuts in proptest::collection::vec(1usize..40, 1..20)) {
        let conv = session(true);
        let (expected, _) = observe(&conv.msgs, whole);
        let (got, error) = observe(&conv.msgs, |b| {
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= b.len() { break; }
                let end = (at + c).min(b.len());
                pieces.push(&b[at..end]);
                at = end;
            }
            pieces
        });
        prop_assert_eq!(error, None);
        prop_assert_eq!(got, expected);
    }
}

// ---- replay ----

/// A client of doppel's replay server, speaking through a real socket.
struct Client {
    stream: tokio::net::TcpStream,
    framer: Framer,
}

impl Client {
    async fn read(&mut self) -> Packet {
        loop {
            if let Some(p) = self.framer.next_packet() {
                return p;
            }
            let mut buf = vec![0u8; 65536];
            let n = self.stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            self.framer.push(&buf[..n]);
        }
    }

    async fn send(&mut self, seq: u8, payload: &[u8]) {
        let mut out = Vec::new();
        write_packet(&mut out, &mut { seq }, payload);
        self.stream.write_all(&out).await.unwrap();
    }

    /// Sends a command and reads packets until `done` says the answer is complete.
    async fn command(&mut self, payload: &[u8], mut done: impl FnMut(&[u8]) -> bool) -> Vec<Vec<u8>> {
        self.send(0, payload).await;
        let mut got = Vec::new();
        loop {
            let p = self.read().await;
            let end = done(&p.payload);
            got.push(p.payload);
            if end {
                return got;
            }
        }
    }
}

async fn replay_server(mocks: Vec<Mock>) -> (Arc<MockPool>, std::net::SocketAddr) {
    let pool = Arc::new(MockPool::new(mocks, std::env::temp_dir()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = pool.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let ctx = ServeCtx { pool: p.clone(), dest: "db:3306".into(), ca: None };
            tokio::spawn(super::serve::serve(Box::new(conn), ctx));
        }
    });
    (pool, addr)
}

async fn connect(addr: std::net::SocketAddr, client_caps: u64, plugin: &str) -> (Client, Vec<Vec<u8>>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Client { stream, framer: Framer::new() };
    let g = c.read().await;
    let greeting = message::decode_greeting(&g.payload).unwrap();
    assert_eq!(greeting.server_version, "8.0.36", "the recorded version");
    assert_eq!(greeting.capabilities & caps::SSL, 0, "replay offers no TLS");
    c.send(1, &message::encode_handshake_response(&login_response(client_caps, plugin))).await;
    let mut auth = vec![c.read().await.payload];
    if auth[0] == [0x01, 0x03] {
        auth.push(c.read().await.payload);
    }
    (c, auth)
}

/// The answers a real server gave, per command, from the crafted session.
fn recorded_answers(conv: &Conv) -> Vec<Vec<u8>> {
    conv.msgs.iter().filter(|(c, _)| !c).map(|(_, b)| b.clone()).collect()
}

fn payloads(wire: &[u8]) -> Vec<Vec<u8>> {
    let mut f = Framer::new();
    f.push(wire);
    std::iter::from_fn(|| f.next_packet()).map(|p| p.payload).collect()
}

#[tokio::test]
async fn replay_answers_as_the_server_did_in_both_eof_modes() {
    for deprecate_eof in [false, true] {
        let conv = session(false);
        let (mocks, _) = observe(&conv.msgs, whole);
        let (pool, addr) = replay_server(mocks).await;
        // The replaying client may negotiate differently from the recorded one.
        let expected_conv = session(deprecate_eof);
        let answers = recorded_answers(&expected_conv);
        let (mut c, auth) = connect(addr, client_caps(deprecate_eof), NATIVE_PASSWORD).await;
        assert_eq!(auth, vec![message::encode_ok(&OkPacket { status: 2, ..OkPacket::default() }, 0)]);
        let eof = |n: usize| {
            let mut seen = 0;
            move |p: &[u8]| {
                if message::is_end_of_rows(p, if deprecate_eof { caps::DEPRECATE_EOF } else { 0 }) {
                    seen += 1;
                }
                seen == n
            }
        };
        let ends = if deprecate_eof { 1 } else { 2 };
        let got = c.command(b"\x03SELECT 1 AS one; SELECT 'a' AS s", eof(2 * ends)).await;
        assert_eq!(got, payloads(&answers[2]));
        let got = c.command(b"\x03INSERT INTO t (v) VALUES ('x')", |_| true).await;
        assert_eq!(got, payloads(&answers[3]));
        // Prepare: same answer as recorded, under doppel's own statement id.
        let n = if deprecate_eof { 4 } else { 6 };
        let mut count = 0;
        let got = c
            .command(b"\x16SELECT id, at FROM t WHERE id = ?", |_| {
                count += 1;
                count == n
            })
            .await;
        let id = message::decode_prepare_ok(&got[0]).unwrap().statement_id;
        assert_eq!(id, 1);
        let mut expected = payloads(&answers[4]);
        expected[0] =
            message::encode_prepare_ok(&message::PrepareOk { statement_id: 1, columns: 2, params: 1, warnings: 0 });
        assert_eq!(got, expected);
        let exec = |value: i64, types_sent: bool| {
            message::encode_execute(&message::Execute {
                statement_id: id,
                flags: 0,
                types: vec![(types::LONGLONG, 0)],
                params: vec![MysqlValue::Int(value)],
                types_sent,
            })
        };
        let got = c.command(&exec(42, true), eof(ends)).await;
        assert_eq!(got, payloads(&answers[5]));
        let got = c.command(&exec(43, false), eof(ends)).await;
        assert_eq!(got, payloads(&answers[6]));
        // A value that was never executed: ERR 1105 naming the statement and values, and a miss.
        let got = c.command(&exec(44, true), |_| true).await;
        let err = message::decode_err(&got[0]).unwrap().unwrap();
        assert_eq!((err.code, err.sqlstate.as_str()), (1105, "HY000"));
        assert!(err.message.contains("SELECT id, at FROM t WHERE id = ?") && err.message.contains("[44]"), "{err:?}");
        assert!(err.message.contains("the recording executed it with [42]"), "{err:?}");
        for cmd in [&[command::STMT_RESET, id as u8, 0, 0, 0][..], &[command::PING], b"\x02other"] {
            let got = c.command(cmd, |_| true).await;
            assert_eq!(got[0][0], 0, "OK");
        }
        let got = c.command(b"\x03SELECT * FROM nope", |_| true).await;
        assert_eq!(message::decode_err(&got[0]).unwrap().unwrap().code, 1146);
        // LOCAL INFILE: asked for the file, given it, then the recorded OK.
        c.send(0, b"\x03LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE t").await;
        assert_eq!(c.read().await.payload, b"\xfb/tmp/x.csv");
        c.send(2, b"whatever").await;
        c.send(3, b"").await;
        let ok = c.read().await;
        assert_eq!((ok.seq, message::decode_ok(&ok.payload, 0).unwrap().affected_rows), (4, 2));
        // A session statement never recorded: OK. Anything else: ERR and a miss.
        let got = c.command(b"\x03SET NAMES utf8mb4", |_| true).await;
        assert_eq!(got[0][0], 0);
        let got = c.command(b"\x03SELECT 1", eof(ends)).await;
        assert_eq!(message::decode_text_row(&got[got.len() - 2], 1).unwrap(), vec![text("1")]);
        let got = c.command(b"\x03DELETE FROM t", |_| true).await;
        assert!(message::decode_err(&got[0]).unwrap().unwrap().message.contains("query `DELETE FROM t`"));
        c.send(0, &[command::QUIT]).await;
        let misses: Vec<String> = pool.misses().into_iter().map(|m| m.what).collect();
        assert_eq!(misses.len(), 2, "{misses:?}");
        assert!(misses[1].starts_with("query `DELETE FROM t` (to db:3306)"), "{misses:?}");
    }
}

#[tokio::test]
async fn replay_completes_caching_sha2_logins_and_replays_refusals() {
    let mut conv = Conv::default();
    conv.login(client_caps(true), CACHING_SHA2);
    conv.server(&[vec![0x01, 0x03], message::encode_ok(&OkPacket::default(), 0)]);
    let (mocks, _) = observe(&conv.msgs, whole);
    let (_, addr) = replay_server(mocks).await;
    let (_, auth) = connect(addr, client_caps(true), CACHING_SHA2).await;
    assert_eq!(auth[0], [0x01, 0x03], "fast auth success");
    assert_eq!(auth[1][0], 0, "then OK");

    let mut refused = Conv::default();
    refused.login(client_caps(true), NATIVE_PASSWORD);
    let e = MysqlError { code: 1045, sqlstate: "28000".into(), message: "Access denied".into() };
    refused.server(&[message::encode_err(&e)]);
    let (mocks, _) = observe(&refused.msgs, whole);
    let (_, addr) = replay_server(mocks).await;
    let (_, auth) = connect(addr, client_caps(true), NATIVE_PASSWORD).await;
    assert_eq!(message::decode_err(&auth[0]).unwrap(), Some(e));
}

#[test]
fn mock_values_survive_the_yaml_file() {
    let m = MysqlMock {
        command: "execute".into(),
        params: vec![
            MysqlValue::Null,
            MysqlValue::Int(-1),
            MysqlValue::UInt(u64::MAX),
            MysqlValue::Float(2.5),
            text("42"),
            text("null"),
            text("true"),
            text(""),
            MysqlValue::Bytes(vec![0, 255]),
        ],
        ..MysqlMock::default()
    };
    let mut mock = Mock::new("mysql", 1, "db:3306", 1, format_time(time::OffsetDateTime::UNIX_EPOCH), 0.0);
    mock.mysql = Some(m);
    let yaml = crate::store::to_yaml(&mock).unwrap();
    let back: Mock = crate::store::parse_yaml(&yaml, std::path::Path::new("m.yaml"), 1).unwrap();
    assert_eq!(back, mock, "{yaml}");
}

#[tokio::test]
async fn a_client_hanging_up_after_the_greeting_is_reported() {
    let (pool, addr) = replay_server(Vec::new()).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = Client { stream, framer: Framer::new() };
    let g = message::decode_greeting(&c.read().await.payload).unwrap();
    assert_eq!(g.auth_plugin, NATIVE_PASSWORD, "the default without a recorded handshake");
    drop(c);
    for _ in 0..100 {
        if !pool.misses().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let misses: Vec<String> = pool.misses().into_iter().map(|m| m.what).collect();
    assert!(misses.first().is_some_and(|m| m.contains("closed after the greeting without logging in")), "{misses:?}");
}
