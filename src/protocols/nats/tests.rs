//! Tests of the NATS wire codec, detection, observer and mock server.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::format::{NatsMock, NatsOp};
use super::record::{NatsObserver, REDACTED};
use super::wire::{Decoder, Headers, Message, Op, Side, encode_msg, encode_pub};
use super::{InboxMap, detect_info, subject_matches};
use crate::protocols::testing;
use crate::protocols::{Detect, Mock, MockPool, MockServer, ParseError, Role, ServeCtx};

const INFO: &[u8] = b"INFO {\"server_id\":\"S1\",\"version\":\"2.10.0\",\"proto\":1,\"headers\":true,\"max_payload\":1048576,\"auth_required\":true,\"jetstream\":true}\r\n";

fn connect_line() -> Vec<u8> {
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"user\":\"ann\",\"pass\":\"s3cret\",\"auth_token\":\"tok\",\"headers\":true,\"no_responders\":true,\"lang\":\"python3\"}\r\nPING\r\n".to_vec()
}

/// What the client sends in the crafted conversation, in the order the server answers it.
fn client_script() -> Vec<Vec<u8>> {
    vec![
        connect_line(),
        b"SUB _INBOX.AAA.* 1\r\nPUB svc.price _INBOX.AAA.t1 3\r\nA-1\r\n".to_vec(),
        b"SUB orders.> 2\r\npub orders.new 9\r\n{\"id\": 1}\r\nPING\r\n".to_vec(),
        encode_pub(&Message {
            subject: "events".into(),
            reply_to: None,
            headers: Some(Headers { status: None, lines: vec!["X-Kind: shipped".into(), "X-Kind: again".into()] }),
            payload: vec![0, 1, 2, 255],
        }),
        b"PING\r\nSUB _INBOX.PULL 3\r\nPUB $JS.API.CONSUMER.MSG.NEXT.S.d _INBOX.PULL 12\r\n{\"batch\": 2}\r\n".to_vec(),
        b"UNSUB 2\r\n".to_vec(),
    ]
}

/// What the server sends back, one piece per client piece.
fn server_script() -> Vec<Vec<u8>> {
    vec![
        b"PONG\r\n".to_vec(),
        b"MSG _INBOX.AAA.t1 1 19\r\n{\"sku\":\"A-1\",\"p\":3}\r\n".to_vec(),
        // The echo of the app's own publish, then a message someone else published.
        b"MSG orders.new 2 9\r\n{\"id\": 1}\r\nPONG\r\nMSG orders.shipped 2 5\r\nhello\r\n".to_vec(),
        Vec::new(),
        [
            &b"PONG\r\n"[..],
            b"MSG jobs.a 3 $JS.ACK.S.d.1.1.1.17.0 2\r\nj1\r\n",
            b"HMSG jobs.b 3 $JS.ACK.S.d.1.2.2.18.0 21 23\r\nNATS/1.0\r\nX-Id: 2\r\n\r\nj2\r\n",
        ]
        .concat(),
        Vec::new(),
    ]
}

fn conversation() -> Vec<(bool, Vec<u8>)> {
    // The server speaks first.
    let mut pieces = vec![(false, INFO.to_vec())];
    for (c, s) in client_script().into_iter().zip(server_script()) {
        pieces.push((true, c));
        pieces.push((false, s));
    }
    pieces
}

fn decode_all(side: Side, bytes: &[u8], cut: usize) -> Vec<Op> {
    let mut d = Decoder::new(side);
    let mut ops = Vec::new();
    d.feed(&bytes[..cut], &mut ops).unwrap();
    d.feed(&bytes[cut..], &mut ops).unwrap();
    ops
}

#[test]
fn decoding_split_at_every_byte_gives_the_same_operations() {
    for (side, bytes) in [(Side::Client, client_script().concat()), (Side::Server, server_script().concat())] {
        let whole = decode_all(side, &bytes, bytes.len());
        assert!(whole.len() >= 8, "{whole:?}");
        for cut in 0..bytes.len() {
            assert_eq!(decode_all(side, &bytes, cut), whole, "cut at {cut}");
        }
        let mut d = Decoder::new(side);
        let mut ops = Vec::new();
        for b in &bytes {
            d.feed(std::slice::from_ref(b), &mut ops).unwrap();
        }
        assert_eq!(ops, whole, "byte by byte");
    }
}

#[test]
fn operations_read_as_the_protocol_says() {
    let ops = decode_all(Side::Client, &client_script().concat(), 0);
    assert!(matches!(&ops[0], Op::Connect(v) if v["user"] == "ann"));
    assert_eq!(ops[2], Op::Sub { subject: "_INBOX.AAA.*".into(), queue: None, sid: "1".into() });
    let Op::Pub(m) = &ops[3] else { panic!("{ops:?}") };
    assert_eq!((m.subject.as_str(), m.reply_to.as_deref(), &m.payload[..]), ("svc.price", Some("_INBOX.AAA.t1"), &b"A-1"[..]));
    assert!(matches!(&ops[5], Op::Pub(m) if m.subject == "orders.new"), "operation names in any case");
    let Op::Pub(h) = &ops[7] else { panic!("{ops:?}") };
    assert_eq!(h.headers.as_ref().map(|h| h.lines.len()), Some(2));
    assert_eq!(h.payload, [0, 1, 2, 255]);
    let queue = decode_all(Side::Client, b"SUB q.x workers 9\r\nUNSUB 9 5\r\n", 3);
    assert_eq!(queue[0], Op::Sub { subject: "q.x".into(), queue: Some("workers".into()), sid: "9".into() });
    assert_eq!(queue[1], Op::Unsub { sid: "9".into(), max: Some(5) });
    let server = decode_all(Side::Server, b"+OK\r\n-ERR 'Authorization Violation'\r\n", 2);
    assert_eq!(server, [Op::Ok, Op::Err("'Authorization Violation'".into())]);
}

#[test]
fn encoding_then_decoding_gives_the_message_back() {
    let status = Headers { status: Some("503".into()), lines: Vec::new() };
    for headers in [None, Some(status), Some(Headers { status: None, lines: vec!["A: b".into()] })] {
        for reply_to in [None, Some("_INBOX.x".to_string())] {
            let m = Message { subject: "a.b".into(), reply_to: reply_to.clone(), headers: headers.clone(), payload: b"hi\r\n".to_vec() };
            assert_eq!(decode_all(Side::Server, &encode_msg("7", &m), 1), [Op::Msg { sid: "7".into(), message: m.clone() }]);
            assert_eq!(decode_all(Side::Client, &encode_pub(&m), 5), [Op::Pub(m)]);
        }
    }
}

#[test]
fn malformed_input_is_an_error() {
    for bad in [
        &b"FOO bar\r\n"[..],
        b"PUB a x\r\n",
        b"PUB a 2\r\nabc\r\n",
        b"HPUB a 20 5\r\nhello\r\n",
        b"HPUB a 5 5\r\nhello\r\n",
        b"CONNECT {nope\r\n",
        b"SUB\r\n",
    ] {
        let mut ops = Vec::new();
        assert!(Decoder::new(Side::Client).feed(bad, &mut ops).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let mut ops = Vec::new();
    assert!(Decoder::new(Side::Client).feed(b"INFO {}\r\n", &mut ops).is_err(), "INFO is the server's");
    assert!(Decoder::new(Side::Server).feed(b"PUB a 1\r\nx\r\n", &mut ops).is_err(), "PUB is the client's");
    assert!(Decoder::new(Side::Server).feed(&vec![b'x'; 2 * 1024 * 1024], &mut ops).is_err(), "an endless line");
}

#[test]
fn detection_from_the_greeting() {
    assert_eq!(detect_info(b"INFO {\"server_id\":1}\r\n"), Detect::Yes);
    assert_eq!(detect_info(b"info\t{"), Detect::Yes);
    assert_eq!(detect_info(b"IN"), Detect::NeedMore);
    assert_eq!(detect_info(b"INFO  "), Detect::NeedMore);
    assert_eq!(detect_info(b"INFORMATION"), Detect::No);
    assert_eq!(detect_info(b"INFO{"), Detect::No);
    assert_eq!(detect_info(b"+OK\r\n"), Detect::No);
    let by_server = |server: &[u8]| crate::protocols::detect::decide(b"", server, 4222, false).map(|p| p.name());
    assert_eq!(by_server(INFO), Some("nats"));
    // A MySQL greeting is still MySQL.
    let greeting = b"\x4a\0\0\0\x0a8.0.36\0\x01\0\0\0";
    assert_eq!(by_server(greeting), Some("mysql"));
}

#[test]
fn subjects_and_inboxes() {
    assert!(subject_matches("a.*.c", "a.b.c"));
    assert!(subject_matches("a.>", "a.b.c"));
    assert!(!subject_matches("a.>", "a"));
    assert!(!subject_matches("a.*", "a.b.c"));
    assert!(subject_matches("_INBOX.X", "_INBOX.X"));
    let mut map = InboxMap::default();
    let pairs = map.fits("_INBOX.A.*", "_INBOX.B.*").unwrap();
    assert_eq!(pairs, [("A".to_string(), "B".to_string())]);
    map.learn(pairs);
    assert!(map.fits("_INBOX.A.t1", "_INBOX.C.t2").is_none(), "A already stands for B");
    assert_eq!(map.fits("_INBOX.A.t1", "_INBOX.B.t2").unwrap(), [("t1".to_string(), "t2".to_string())]);
    assert!(map.fits("orders.a", "orders.b").is_none(), "only inboxes differ per run");
    assert!(map.fits("_INBOX.A", "_INBOX.B.c").is_none());
    assert_eq!(map.live("_INBOX.A.zz"), "_INBOX.B.zz");
    assert_eq!(map.live("A.x"), "A.x");
}

fn observe(cut: impl Fn(&[u8]) -> Vec<&[u8]>) -> Vec<Mock> {
    let role = Role::Egress { dest: "127.0.0.1:4222".into() };
    let (mocks, error) = testing::observe(NatsObserver::new, role, &conversation(), cut);
    assert_eq!(error, None);
    mocks
}

fn sections(mocks: &[Mock]) -> Vec<NatsMock> {
    mocks.iter().map(|m| m.nats.clone().expect("a nats mock")).collect()
}

#[test]
fn observer_groups_deliveries_with_what_caused_them() {
    let mocks = sections(&observe(testing::whole));
    let summary: Vec<(NatsOp, &str, usize)> =
        mocks.iter().map(|m| (m.op, m.subject.as_str(), m.deliveries.len())).collect();
    assert_eq!(
        summary,
        [
            (NatsOp::Connect, "", 0),
            (NatsOp::Publish, "svc.price", 1),
            (NatsOp::Publish, "orders.new", 1),
            (NatsOp::Publish, "events", 0),
            (NatsOp::Publish, "$JS.API.CONSUMER.MSG.NEXT.S.d", 2),
            (NatsOp::Subscribe, "orders.>", 1),
            (NatsOp::Subscribe, "_INBOX.AAA.*", 0),
            (NatsOp::Subscribe, "_INBOX.PULL", 0),
        ]
    );
    let connect = mocks[0].connect.as_ref().unwrap();
    assert_eq!((connect["pass"].as_str(), connect["auth_token"].as_str()), (Some(REDACTED), Some(REDACTED)));
    assert_eq!(connect["user"], "ann");
    assert_eq!(mocks[0].info.as_ref().unwrap()["server_id"], "S1");
    let reply = &mocks[1].deliveries[0];
    assert_eq!((reply.subscription.as_str(), reply.subject.as_str()), ("_INBOX.AAA.*", "_INBOX.AAA.t1"));
    assert!(reply.payload.as_ref().unwrap().json.is_some(), "JSON payloads are readable");
    assert_eq!(mocks[3].headers.as_ref().unwrap().len(), 2);
    assert!(mocks[3].payload.as_ref().unwrap().base64.is_some(), "binary payloads are base64");
    let fetched = &mocks[4].deliveries;
    assert_eq!(fetched[0].reply_to.as_deref(), Some("$JS.ACK.S.d.1.1.1.17.0"));
    assert_eq!(fetched[1].headers, Some(vec!["X-Id: 2".to_string()]));
    assert_eq!(mocks[5].deliveries[0].subject, "orders.shipped", "a message nobody here published");
}

#[test]
fn where_reads_are_cut_changes_nothing() {
    let whole = sections(&observe(testing::whole));
    let by_byte = sections(&observe(|b| b.chunks(1).collect()));
    assert_eq!(sections_without_times(by_byte), sections_without_times(whole.clone()));
    for at in [1, 5, 17] {
        let cut = sections(&observe(|b| if b.len() > at { vec![&b[..at], &b[at..]] } else { vec![b] }));
        assert_eq!(sections_without_times(cut), sections_without_times(whole.clone()), "cut at {at}");
    }
}

fn sections_without_times(mut mocks: Vec<NatsMock>) -> Vec<NatsMock> {
    for m in &mut mocks {
        m.deliveries.iter_mut().for_each(|d| d.after_ms = 0.0);
    }
    mocks
}

#[test]
fn inbound_nats_and_garbage_hand_over_to_opaque_recording() {
    let role = Role::Ingress { port: 4222, tls: None };
    let (_, error) = testing::observe(NatsObserver::new, role, &[(true, connect_line())], testing::whole);
    assert!(matches!(error, Some(ParseError::Unsupported(_))), "{error:?}");
    let role = Role::Egress { dest: "n:4222".into() };
    let pieces = [(false, INFO.to_vec()), (true, b"BOGUS\r\n".to_vec())];
    let (_, error) = testing::observe(NatsObserver::new, role, &pieces, testing::whole);
    assert!(matches!(error, Some(ParseError::Malformed(_))), "{error:?}");
}

/// The mock server of the crafted conversation's mocks, serving one connection; the app's end of it.
fn serve(mocks: Vec<Mock>) -> (Arc<MockPool>, DuplexStream) {
    let pool = Arc::new(MockPool::new(mocks, std::env::temp_dir()));
    let (app, server_end) = tokio::io::duplex(1 << 16);
    let server = super::serve::Server::new(&pool);
    let ctx = ServeCtx { pool: pool.clone(), dest: "127.0.0.1:4222".into(), ca: None };
    tokio::spawn(server.serve(Box::new(server_end), ctx));
    (pool, app)
}

/// Reads until `want` has arrived (the bytes so far must lead up to it).
async fn expect(app: &mut DuplexStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), app.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {:?}", String::from_utf8_lossy(want)))
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

#[tokio::test]
async fn mock_server_plays_the_recorded_exchanges_with_live_inboxes() {
    let (pool, mut app) = serve(observe(testing::whole));
    let mut info = vec![0u8; 256];
    let n = app.read(&mut info).await.unwrap();
    let info = String::from_utf8_lossy(&info[..n]).into_owned();
    assert!(info.starts_with("INFO {") && info.contains("\"server_id\":\"S1\""), "{info}");
    assert!(!info.contains("auth_required"), "replay asks for no credentials: {info}");
    app.write_all(b"CONNECT {\"verbose\":true,\"headers\":true,\"no_responders\":true}\r\nPING\r\n").await.unwrap();
    expect(&mut app, b"+OK\r\nPONG\r\n").await;
    // A request from a live inbox gets the recorded reply on it.
    app.write_all(b"SUB _INBOX.LIVE.* 7\r\nPUB svc.price _INBOX.LIVE.x9 3\r\nA-1\r\n").await.unwrap();
    expect(&mut app, b"+OK\r\n+OK\r\nMSG _INBOX.LIVE.x9 7 19\r\n{\"sku\":\"A-1\",\"p\":3}\r\n").await;
    // The pull fetch delivers its recorded messages, with their ack subjects, to the live inbox's sid.
    app.write_all(b"SUB _INBOX.P2 8\r\nPUB $JS.API.CONSUMER.MSG.NEXT.S.d _INBOX.P2 12\r\n{\"batch\": 2}\r\n").await.unwrap();
    expect(
        &mut app,
        b"+OK\r\n+OK\r\nMSG jobs.a 8 $JS.ACK.S.d.1.1.1.17.0 2\r\nj1\r\nHMSG jobs.b 8 $JS.ACK.S.d.1.2.2.18.0 21 23\r\nNATS/1.0\r\nX-Id: 2\r\n\r\nj2\r\n",
    )
    .await;
    assert!(pool.misses().is_empty(), "{:?}", pool.misses());
    // A request nobody recorded: the no-responders status, and a miss naming the subject.
    app.write_all(b"PUB svc.other _INBOX.LIVE.x10 2\r\nhi\r\n").await.unwrap();
    expect(&mut app, b"+OK\r\nHMSG _INBOX.LIVE.x10 7 16 16\r\nNATS/1.0 503\r\n\r\n\r\n").await;
    assert!(pool.misses()[0].what.starts_with("nats PUB svc.other \"hi\" (to 127.0.0.1:4222)"), "{:?}", pool.misses());
    // A plain publish with another payload is accepted, as a server would, and is a miss.
    app.write_all(b"PUB orders.new 9\r\n{\"id\": 2}\r\nPING\r\n").await.unwrap();
    expect(&mut app, b"+OK\r\nPONG\r\n").await;
    assert!(pool.misses()[1].what.contains("the 1 recorded publishes to orders.new differ"), "{:?}", pool.misses());
    // Bytes that are not NATS: the protocol's error, and the connection ends.
    app.write_all(b"BOGUS\r\n").await.unwrap();
    expect(&mut app, b"-ERR 'Unknown Protocol Operation'\r\n").await;
    assert_eq!(pool.misses().len(), 3);
}

#[tokio::test]
async fn recorded_messages_of_a_subscription_are_delivered_to_the_live_one() {
    let (pool, mut app) = serve(observe(testing::whole));
    let mut info = vec![0u8; 256];
    let _ = app.read(&mut info).await.unwrap();
    app.write_all(b"CONNECT {}\r\nSUB orders.> 4\r\nPUB orders.new 9\r\n{\"id\": 1}\r\n").await.unwrap();
    // The message another client published while it was subscribed (at its recorded delay, here none), and
    // the echo of the app's own publish.
    expect(&mut app, b"MSG orders.shipped 4 5\r\nhello\r\nMSG orders.new 4 9\r\n{\"id\": 1}\r\n").await;
    assert!(pool.misses().is_empty(), "{:?}", pool.misses());
}

#[test]
fn the_fuzz_seeds_are_conversations_the_observer_follows() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/protocols");
    for seed in ["conv-nats-1", "conv-nats-2"] {
        let data = std::fs::read(dir.join(seed)).unwrap();
        let pieces: Vec<(bool, Vec<u8>)> =
            crate::fuzz::pieces(&data).into_iter().map(|(c, b)| (c, b.to_vec())).collect();
        let role = Role::Egress { dest: "127.0.0.1:4222".into() };
        let (mocks, error) = testing::observe(NatsObserver::new, role, &pieces, testing::whole);
        assert_eq!(error, None, "{seed}");
        assert!(sections(&mocks).iter().any(|m| m.op == NatsOp::Publish && !m.deliveries.is_empty()), "{seed}");
    }
}

#[test]
fn publishes_are_writes_and_requests_only_when_jetstream_stored_them() {
    use crate::protocols::Protocol;
    let writes: Vec<Option<String>> = observe(testing::whole).iter().map(|m| super::Nats.recorded_write(m)).collect();
    assert_eq!(writes[2].as_deref(), Some("PUB orders.new"));
    assert_eq!(writes[1], None, "a request may be a read");
    assert_eq!(writes[0], None, "the connect");
    let ack = "MSG _INBOX.AAA.t2 1 26\r\n{\"stream\":\"JOBS\", \"seq\":1}\r\n";
    let pieces = [
        (false, INFO.to_vec()),
        (true, b"CONNECT {}\r\nSUB _INBOX.AAA.* 1\r\nPUB jobs.new _INBOX.AAA.t2 2\r\nj1\r\n".to_vec()),
        (false, ack.as_bytes().to_vec()),
    ];
    let role = Role::Egress { dest: "n:4222".into() };
    let (mocks, error) = testing::observe(NatsObserver::new, role, &pieces, testing::whole);
    assert_eq!(error, None);
    let published = mocks.iter().find(|m| m.nats.as_ref().is_some_and(|n| n.subject == "jobs.new")).unwrap();
    assert_eq!(super::Nats.recorded_write(published).as_deref(), Some("JetStream publish to jobs.new"));
}

#[tokio::test]
async fn a_publish_matched_only_by_shape_says_so() {
    let recorded = "PUB ids.new 36\r\n8c5b6f3e-7a8a-4a3e-9f1e-2b6f1c9d0a11\r\nPING\r\n";
    let pieces = [(false, INFO.to_vec()), (true, recorded.as_bytes().to_vec()), (false, b"PONG\r\n".to_vec())];
    let (mocks, _) = testing::observe(NatsObserver::new, Role::Egress { dest: "127.0.0.1:4222".into() }, &pieces, testing::whole);
    let (pool, mut app) = serve(mocks);
    let mut info = vec![0u8; 256];
    let _ = app.read(&mut info).await.unwrap();
    app.write_all(b"CONNECT {}\r\nPUB ids.new 36\r\n0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f\r\nPING\r\n").await.unwrap();
    expect(&mut app, b"PONG\r\n").await;
    assert!(pool.misses().is_empty(), "{:?}", pool.misses());
    let tolerated = pool.tolerated();
    assert_eq!(tolerated.len(), 1, "{tolerated:?}");
    assert_eq!(tolerated[0].what, "matched PUB ids.new ignoring payload: UUIDs");
}
