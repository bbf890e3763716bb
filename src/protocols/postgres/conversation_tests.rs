//! A scripted conversation recorded by the observer (whole, byte by byte, and split anywhere: same mocks),
//! then replayed by the server to a client that names its statements differently.

use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::record::PgObserver;
use super::wire::{self, Backend, Column, Framer, Frontend, Startup};
use crate::protocols::Mock;
use crate::protocols::{MockPool, Observer, Role, ServeCtx};
use crate::store::MemorySink;

const DEST: &str = "127.0.0.1:5432";

fn fe(msgs: &[Frontend]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        wire::encode_frontend(m, &mut out);
    }
    out
}

fn be(msgs: &[Backend]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        wire::encode_backend(m, &mut out);
    }
    out
}

fn col(name: &str, type_oid: u32, format: i16) -> Column {
    Column { name: name.into(), table_oid: 0, attnum: 0, type_oid, size: -1, modifier: -1, format }
}

fn int4(n: i32) -> Option<Vec<u8>> {
    Some(n.to_be_bytes().to_vec())
}

/// Bind of the unnamed statement to the unnamed portal, parameters and results in text.
fn bind_text(params: Vec<Option<Vec<u8>>>) -> Frontend {
    Frontend::Bind { portal: "".into(), statement: "".into(), param_formats: vec![], params, result_formats: vec![] }
}

/// Bind of `stmt_1` with one int4 to the unnamed portal, parameters and results in binary.
fn bind_stmt_1(n: i32) -> Frontend {
    Frontend::Bind {
        portal: "".into(),
        statement: "stmt_1".into(),
        param_formats: vec![1],
        params: vec![int4(n)],
        result_formats: vec![1],
    }
}

/// `INSERT INTO u VALUES ('x')` in the extended protocol up to Execute: the recorded unique violation.
fn insert_x() -> Vec<Frontend> {
    vec![
        Frontend::Parse { name: "".into(), sql: "INSERT INTO u VALUES ($1)".into(), param_types: vec![25] },
        bind_text(vec![Some(b"x".to_vec())]),
        Frontend::Describe { kind: b'P', name: "".into() },
        Frontend::Execute { portal: "".into(), max_rows: 0 },
    ]
}

fn error(code: &str, message: &str) -> Backend {
    Backend::Error(vec![(b'S', "ERROR".into()), (b'C', code.into()), (b'M', message.into())])
}

/// (from the client?, bytes) in the order they crossed the proxy.
fn conversation() -> Vec<(bool, Vec<u8>)> {
    let mut startup = Vec::new();
    wire::encode_startup(&Startup::SslRequest, &mut startup);
    let mut start = Vec::new();
    wire::encode_startup(
        &Startup::Start {
            version: wire::PROTOCOL_3,
            params: vec![("user".into(), "app".into()), ("database".into(), "shop".into())],
        },
        &mut start,
    );
    vec![
        (true, startup),
        (false, b"N".to_vec()),
        (true, start),
        (false, be(&[Backend::Auth { code: 10, data: b"SCRAM-SHA-256\0\0".to_vec() }])),
        (true, fe(&[Frontend::Password])),
        (false, be(&[Backend::Auth { code: 11, data: b"r=abc".to_vec() }])),
        (true, fe(&[Frontend::Password])),
        (
            false,
            be(&[
                Backend::Auth { code: 12, data: b"v=xyz".to_vec() },
                Backend::Auth { code: 0, data: vec![] },
                Backend::ParameterStatus { name: "server_version".into(), value: "15.2".into() },
                Backend::BackendKeyData { pid: 77, key: vec![1, 2, 3, 4] },
                Backend::ReadyForQuery(b'I'),
            ]),
        ),
        // A named statement prepared and described (asyncpg, tokio-postgres)...
        (
            true,
            fe(&[
                Frontend::Parse {
                    name: "stmt_1".into(),
                    sql: "SELECT n FROM t WHERE n = $1".into(),
                    param_types: vec![],
                },
                Frontend::Describe { kind: b'S', name: "stmt_1".into() },
                Frontend::Sync,
            ]),
        ),
        (
            false,
            be(&[
                Backend::ParseComplete,
                Backend::ParameterDescription(vec![23]),
                Backend::RowDescription(vec![col("n", 23, 0)]),
                Backend::ReadyForQuery(b'I'),
            ]),
        ),
        // ... then executed twice in one pipeline, binary in and out.
        (
            true,
            fe(&[
                bind_stmt_1(42),
                Frontend::Execute { portal: "".into(), max_rows: 0 },
                bind_stmt_1(7),
                Frontend::Execute { portal: "".into(), max_rows: 0 },
                Frontend::Sync,
            ]),
        ),
        (
            false,
            be(&[
                Backend::BindComplete,
                Backend::DataRow(vec![int4(42)]),
                Backend::CommandComplete("SELECT 1".into()),
                Backend::BindComplete,
                Backend::CommandComplete("SELECT 0".into()),
                Backend::ReadyForQuery(b'I'),
            ]),
        ),
        // A multi-statement simple query.
        (true, fe(&[Frontend::Query("BEGIN; SELECT 'a' AS s".into())])),
        (
            false,
            be(&[
                Backend::CommandComplete("BEGIN".into()),
                Backend::RowDescription(vec![col("s", 25, 0)]),
                Backend::DataRow(vec![Some(b"a".to_vec())]),
                Backend::CommandComplete("SELECT 1".into()),
                Backend::ReadyForQuery(b'T'),
            ]),
        ),
        // An error in the extended protocol: the rest up to Sync is skipped.
        (
            true,
            fe(&[
                insert_x(),
                vec![Frontend::Close { kind: b'S', name: "".into() }, Frontend::Sync],
            ]
            .concat()),
        ),
        (
            false,
            be(&[
                Backend::ParseComplete,
                Backend::BindComplete,
                Backend::NoData,
                error("23505", "duplicate key value violates unique constraint \"u_pkey\""),
                Backend::ReadyForQuery(b'E'),
            ]),
        ),
        (true, fe(&[Frontend::Query("ROLLBACK".into())])),
        (
            false,
            be(&[
                Backend::Notice(vec![(b'S', "WARNING".into()), (b'C', "01000".into()), (b'M', "careful".into())]),
                Backend::CommandComplete("ROLLBACK".into()),
                Backend::ParameterStatus { name: "application_name".into(), value: "shop".into() },
                Backend::ReadyForQuery(b'I'),
            ]),
        ),
        (true, fe(&[Frontend::Terminate])),
    ]
}

/// Feeds the conversation, each piece cut by `cut` into chunks, and returns the mocks written.
fn observe(conv: &[(bool, Vec<u8>)], cut: impl Fn(usize, &[u8]) -> Vec<&[u8]>) -> Vec<Mock> {
    let memory = MemorySink::new();
    let mut obs = PgObserver::new(memory.ctx(Role::Egress { dest: DEST.into() }));
    for (i, (client, data)) in conv.iter().enumerate() {
        for piece in cut(i, data) {
            let r = if *client { obs.client(piece, Instant::now()) } else { obs.server(piece, Instant::now()) };
            r.unwrap();
        }
    }
    obs.close(Instant::now());
    let mut mocks = memory.mocks();
    for m in &mut mocks {
        m.started_at = String::new();
        m.duration_ms = 0.0;
    }
    mocks
}

fn whole(_: usize, d: &[u8]) -> Vec<&[u8]> {
    vec![d]
}

#[test]
fn records_a_readable_conversation() {
    let mocks = observe(&conversation(), whole);
    let yaml: Vec<String> = mocks.iter().map(|m| crate::store::to_yaml(m).unwrap()).collect();
    let all = yaml.join("");
    assert_eq!(mocks.len(), 6, "{all}");
    let startup = mocks[0].postgres.as_ref().unwrap().startup.as_ref().unwrap();
    assert_eq!(startup.auth, "scram-sha-256");
    assert_eq!(startup.ssl.as_deref(), Some("refused"));
    assert_eq!(startup.backend_pid, 77);
    let q = |i: usize| mocks[i].postgres.as_ref().unwrap().query.clone().unwrap();
    assert_eq!(q(1).parameters, vec![serde_json::json!(42)]);
    assert_eq!(q(1).parameter_types, vec!["int4".to_string()]);
    assert_eq!(q(1).results[0].rows, vec![vec![serde_json::json!(42)]]);
    assert_eq!(q(1).statement, "stmt_1");
    assert_eq!(q(2).parameters, vec![serde_json::json!(7)]);
    assert_eq!(q(2).results[0].tag.as_deref(), Some("SELECT 0"));
    assert_eq!(q(3).results.len(), 2);
    assert_eq!(q(4).results[0].error.as_ref().unwrap().code, "23505");
    assert_eq!(q(4).parameters, vec![serde_json::json!("x")]);
    assert_eq!(q(5).results[0].notices[0].message, "careful");
    assert_eq!(q(5).parameter_status.get("application_name").map(String::as_str), Some("shop"));
    assert!(all.contains("rows:\n      - [42]"), "{all}");
}

#[test]
fn byte_by_byte_gives_the_same_mocks() {
    let conv = conversation();
    let expected = observe(&conv, whole);
    let got = observe(&conv, |_, d| d.chunks(1).collect());
    assert_eq!(got, expected);
}

#[test]
fn tls_accepted_by_the_server_marks_where_tls_starts() {
    let mut ssl = Vec::new();
    wire::encode_startup(&Startup::SslRequest, &mut ssl);
    let memory = MemorySink::new();
    let mut obs = PgObserver::new(memory.ctx(Role::Egress { dest: DEST.into() }));
    obs.client(&ssl, Instant::now()).unwrap();
    assert_eq!(obs.tls_boundary(), None);
    // The server's `S`: TLS starts right after that byte.
    obs.server(b"S", Instant::now()).unwrap();
    assert_eq!(obs.tls_boundary(), Some(1));
    assert_eq!(obs.tls_boundary(), None, "asked once per piece");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn split_anywhere_gives_the_same_mocks(cuts in proptest::collection::vec(0usize..400, 20)) {
        let conv = conversation();
        let expected = observe(&conv, whole);
        let got = observe(&conv, |i, d| {
            let at = cuts[i % cuts.len()] % (d.len() + 1);
            vec![&d[..at], &d[at..]].into_iter().filter(|p| !p.is_empty()).collect()
        });
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn garbage_never_panics(client in proptest::collection::vec(any::<u8>(), 0..200),
                            server in proptest::collection::vec(any::<u8>(), 0..200)) {
        let conv = vec![(true, client), (false, server)];
        let memory = MemorySink::new();
        let mut obs = PgObserver::new(memory.ctx(Role::Egress { dest: DEST.into() }));
        for (c, d) in conv {
            let _ = if c { obs.client(&d, Instant::now()) } else { obs.server(&d, Instant::now()) };
        }
        obs.close(Instant::now());
    }
}

/// A client of the replay server.
struct Client {
    conn: TcpStream,
    input: Framer,
}

impl Client {
    async fn send(&mut self, msgs: &[Frontend]) {
        self.conn.write_all(&fe(msgs)).await.unwrap();
    }

    /// Parses and describes a statement, then syncs: the answers up to ReadyForQuery.
    async fn prepare(&mut self, name: &str, sql: &str) -> Vec<Backend> {
        self.send(&[
            Frontend::Parse { name: name.into(), sql: sql.into(), param_types: vec![] },
            Frontend::Describe { kind: b'S', name: name.into() },
            Frontend::Sync,
        ])
        .await;
        self.until_ready().await
    }

    /// Reads messages until ReadyForQuery (included).
    async fn until_ready(&mut self) -> Vec<Backend> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 4096];
        loop {
            while let Some((tag, body)) = self.input.next_tagged().unwrap() {
                let m = wire::decode_backend(tag, body).unwrap();
                let done = matches!(m, Backend::ReadyForQuery(_));
                out.push(m);
                if done {
                    return out;
                }
            }
            let n = self.conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "server closed; got {out:?}");
            self.input.push(&buf[..n]);
        }
    }
}

async fn replay_server(mocks: Vec<Mock>) -> (Client, Arc<MockPool>) {
    let pool = Arc::new(MockPool::new(mocks, std::env::temp_dir()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ctx = ServeCtx { pool: pool.clone(), dest: DEST.into(), ca: None };
    tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        super::serve::serve(Box::new(conn), ctx).await;
    });
    let mut conn = TcpStream::connect(addr).await.unwrap();
    // SSLRequest is refused, then plaintext startup.
    let mut ssl = Vec::new();
    wire::encode_startup(&Startup::SslRequest, &mut ssl);
    conn.write_all(&ssl).await.unwrap();
    let mut answer = [0u8; 1];
    conn.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    let mut start = Vec::new();
    wire::encode_startup(
        &Startup::Start { version: wire::PROTOCOL_3, params: vec![("user".into(), "app".into())] },
        &mut start,
    );
    conn.write_all(&start).await.unwrap();
    (Client { conn, input: Framer::default() }, pool)
}

#[tokio::test]
async fn replays_with_other_statement_names_and_reports_misses() {
    let mocks = observe(&conversation(), whole);
    let (mut c, pool) = replay_server(mocks).await;
    let hello = c.until_ready().await;
    assert_eq!(hello[0], Backend::Auth { code: 0, data: vec![] });
    assert!(hello.contains(&Backend::BackendKeyData { pid: 77, key: vec![1, 2, 3, 4] }));

    // Prepared under another name (the next run's driver numbers its statements differently).
    let r = c.prepare("other_9", "SELECT n  FROM t\n WHERE n = $1").await;
    assert_eq!(r[1], Backend::ParameterDescription(vec![23]));
    assert_eq!(r[2], Backend::RowDescription(vec![col("n", 23, 0)]));

    // Text results this time: the recorded binary value is written as text.
    let bind = |v: i32, formats: Vec<i16>| Frontend::Bind {
        portal: "p".into(),
        statement: "other_9".into(),
        param_formats: vec![1],
        params: vec![int4(v)],
        result_formats: formats,
    };
    c.send(&[bind(42, vec![]), Frontend::Execute { portal: "p".into(), max_rows: 0 }, Frontend::Sync]).await;
    let r = c.until_ready().await;
    assert_eq!(r[1], Backend::DataRow(vec![Some(b"42".to_vec())]));
    assert_eq!(r[2], Backend::CommandComplete("SELECT 1".into()));

    // Not recorded: an error naming the statement and its parameter, and a reported miss.
    c.send(&[bind(43, vec![1]), Frontend::Execute { portal: "p".into(), max_rows: 0 }, Frontend::Sync]).await;
    let r = c.until_ready().await;
    let Backend::Error(fields) = &r[1] else { panic!("{r:?}") };
    let e = super::error_from_fields(fields);
    assert_eq!(e.code, "XX000");
    assert_eq!(
        e.message,
        "doppel: no recorded result for SELECT n  FROM t\n WHERE n = $1 with [$1=43]; recorded with [$1=42]"
    );
    assert_eq!(pool.misses().len(), 1);

    // The second recorded execution, then the same one again: no longer recorded (strict repeats).
    for expect_miss in [false, true] {
        c.send(&[bind(7, vec![1]), Frontend::Execute { portal: "p".into(), max_rows: 0 }, Frontend::Sync]).await;
        let r = c.until_ready().await;
        assert_eq!(matches!(r[1], Backend::Error(_)), expect_miss, "{r:?}");
    }

    // Simple query with two results; transaction status follows BEGIN.
    c.send(&[Frontend::Query("BEGIN;  SELECT 'a' AS s".into())]).await;
    let r = c.until_ready().await;
    assert_eq!(r[0], Backend::CommandComplete("BEGIN".into()));
    assert_eq!(r[2], Backend::DataRow(vec![Some(b"a".to_vec())]));
    assert_eq!(r.last(), Some(&Backend::ReadyForQuery(b'T')));

    // The recorded unique violation, then ROLLBACK with its notice and parameter status.
    c.send(&[insert_x(), vec![Frontend::Sync]].concat()).await;
    let r = c.until_ready().await;
    assert_eq!(r[2], Backend::NoData);
    assert!(matches!(&r[3], Backend::Error(f) if super::error_from_fields(f).code == "23505"), "{r:?}");
    assert_eq!(r[4], Backend::ReadyForQuery(b'E'));
    c.send(&[Frontend::Query("ROLLBACK".into())]).await;
    let r = c.until_ready().await;
    assert!(matches!(r[0], Backend::Notice(_)));
    assert_eq!(r[1], Backend::CommandComplete("ROLLBACK".into()));
    assert_eq!(r[3], Backend::ReadyForQuery(b'I'));
    // Session statements are served again (and synthesized when never recorded).
    c.send(&[Frontend::Query("ROLLBACK".into())]).await;
    assert_eq!(c.until_ready().await[1], Backend::CommandComplete("ROLLBACK".into()));
    c.send(&[Frontend::Query("COMMIT".into())]).await;
    assert_eq!(c.until_ready().await[0], Backend::CommandComplete("COMMIT".into()));
    assert_eq!(pool.misses().len(), 2);
}

#[tokio::test]
async fn cancel_request_is_accepted_and_closed() {
    let pool = Arc::new(MockPool::new(Vec::new(), std::env::temp_dir()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ctx = ServeCtx { pool: pool.clone(), dest: DEST.into(), ca: None };
    let server = tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        super::serve::serve(Box::new(conn), ctx).await;
    });
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut cancel = Vec::new();
    wire::encode_startup(&Startup::Cancel { pid: 1, key: vec![0; 4] }, &mut cancel);
    conn.write_all(&cancel).await.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
    server.await.unwrap();
    assert!(pool.misses().is_empty());
}

#[test]
fn values_survive_the_yaml_round_trip() {
    use crate::protocols::postgres::{PgQuery, PgResult, PostgresMock};
    use serde_json::json;
    let tricky = vec![
        json!("null"),
        json!("~"),
        json!("yes"),
        json!("true"),
        json!("1e3"),
        json!("0x10"),
        json!(""),
        json!(" padded "),
        json!("-"),
        json!("2024-01-01"),
        json!("a: b"),
        json!("[x]"),
        json!("line\nbreak"),
        json!("#hash"),
        json!(null),
        json!(true),
        json!(0.1),
        json!(1e300),
        json!(-0.0),
        json!(i64::MIN),
        json!(u32::MAX),
        json!([1, null, [2]]),
        json!({"base64": "AQI="}),
    ];
    let mut mock = Mock::new("postgres", 1, DEST, 1, "2026-01-01T00:00:00.000Z".into(), 0.0);
    mock.postgres = Some(PostgresMock {
        startup: None,
        query: Some(PgQuery {
            sql: "SELECT $1".into(),
            parameters: tricky.clone(),
            results: vec![PgResult { rows: vec![tricky.clone()], ..PgResult::default() }],
            ..PgQuery::default()
        }),
    });
    let yaml = crate::store::to_yaml(&mock).unwrap();
    let back: Mock = crate::store::parse_yaml(&yaml, std::path::Path::new("mocks.yaml"), 1).unwrap();
    assert_eq!(back, mock, "{yaml}");
}

/// A statement prepared and described but never executed (a driver preparing ahead).
fn prepared_only() -> Vec<(bool, Vec<u8>)> {
    let mut conv = conversation();
    conv.truncate(10); // startup and the prepare/describe of stmt_1
    conv.push((true, fe(&[Frontend::Close { kind: b'S', name: "stmt_1".into() }, Frontend::Sync])));
    conv.push((false, be(&[Backend::CloseComplete, Backend::ReadyForQuery(b'I')])));
    conv
}

#[tokio::test]
async fn a_statement_described_but_never_executed_is_described_again() {
    let mocks = observe(&prepared_only(), whole);
    assert_eq!(mocks.len(), 2);
    let q = mocks[1].postgres.as_ref().unwrap().query.clone().unwrap();
    assert_eq!(q.stage.as_deref(), Some("describe"));
    assert_eq!(q.parameter_types, vec!["int4".to_string()]);
    let (mut c, pool) = replay_server(mocks).await;
    c.until_ready().await;
    let r = c.prepare("s9", "SELECT n FROM t WHERE n = $1").await;
    assert_eq!(r[1], Backend::ParameterDescription(vec![23]));
    assert_eq!(r[2], Backend::RowDescription(vec![col("n", 23, 0)]));
    assert!(pool.misses().is_empty());
    assert_eq!(pool.usage(), vec![1, 1]);
}

#[tokio::test]
async fn a_uuid_the_app_generated_anew_stands_for_the_recorded_one() {
    use crate::protocols::postgres::{PgProtocol, PgQuery, PgResult, PostgresMock};
    let insert = |id: u64, uuid: &str, name: &str| {
        let mut m = Mock::new("postgres", id, DEST, 1, "2026-11-27T10:00:00.000Z".into(), 0.1);
        m.postgres = Some(PostgresMock {
            query: Some(PgQuery {
                sql: "INSERT INTO users (id, name) VALUES ($1, $2)".into(),
                protocol: PgProtocol::Extended,
                parameter_types: vec!["uuid".into(), "text".into()],
                parameters: vec![serde_json::json!(uuid), serde_json::json!(name)],
                results: vec![PgResult { tag: Some("INSERT 0 1".into()), ..PgResult::default() }],
                ..PgQuery::default()
            }),
            ..PostgresMock::default()
        });
        m
    };
    let (mut c, pool) = replay_server(vec![insert(1, "5f0c4e1e-8a43-4c1a-9a55-0d1b8d2b8f27", "ann")]).await;
    c.until_ready().await;
    let run = |uuid: &str, name: &str| {
        vec![
            Frontend::Parse {
                name: "".into(),
                sql: "INSERT INTO users (id, name) VALUES ($1, $2)".into(),
                param_types: vec![],
            },
            bind_text(vec![Some(uuid.as_bytes().to_vec()), Some(name.as_bytes().to_vec())]),
            Frontend::Execute { portal: "".into(), max_rows: 0 },
            Frontend::Sync,
        ]
    };
    // Another UUID, the same name: the recorded insert answers.
    c.send(&run("00000000-1111-4222-8333-444444444444", "ann")).await;
    let r = c.until_ready().await;
    assert!(r.contains(&Backend::CommandComplete("INSERT 0 1".into())), "{r:?}");
    // Another name is another statement: a miss.
    c.send(&run("00000000-1111-4222-8333-555555555555", "bob")).await;
    let r = c.until_ready().await;
    assert!(r.iter().any(|m| matches!(m, Backend::Error(_))), "{r:?}");
    assert_eq!(pool.misses().len(), 1);
}
