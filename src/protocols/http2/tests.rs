//! HTTP/2 observer tests: a crafted connection with interleaved streams, CONTINUATION, padding and gRPC
//! trailers, split at every byte boundary; a real `h2` client and server observed through a tap; garbage.
//! A bidirectional ping-pong call recorded, then served to an `h2` client that waits for each reply.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::frame::{self, CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, PADDED, SETTINGS, encode};
use super::hpack::{Encoder, Field};
use crate::protocols::Mock;
use crate::protocols::http::{Header, HeaderList};
use crate::protocols::{MockPool, Observer, ParseError, Role, ServeCtx, testing};
use crate::store::MemorySink;

fn fields(list: &[(&str, &str)]) -> Vec<Field> {
    list.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
}

fn block(enc: &mut Encoder, list: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    enc.encode(&fields(list), true, &mut out);
    out
}

/// A connection: (from_client, bytes) in the order they crossed the proxy.
fn crafted() -> Vec<(bool, Vec<u8>)> {
    let mut req = Encoder::new();
    let mut resp = Encoder::new();
    let mut c1 = frame::PREFACE.to_vec();
    encode(SETTINGS, 0, 0, &[], &mut c1);
    let get = block(&mut req, &[(":method", "GET"), (":scheme", "http"), (":path", "/a?x=1"), (":authority", "h:1")]);
    // The request's header block split over HEADERS and CONTINUATION.
    let (first, rest) = get.split_at(get.len() / 2);
    encode(HEADERS, END_STREAM, 1, first, &mut c1);
    encode(CONTINUATION, END_HEADERS, 1, rest, &mut c1);
    let call = block(
        &mut req,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/shop.Orders/Get"),
            (":authority", "h:1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    );
    encode(HEADERS, END_HEADERS, 3, &call, &mut c1);
    let mut msg = vec![0, 0, 0, 0, 7];
    msg.extend_from_slice(b"\x0a\x05alice");
    // Padded DATA: one pad-length byte, the data, two bytes of padding.
    let mut padded = vec![2];
    padded.extend_from_slice(&msg);
    padded.extend_from_slice(&[0, 0]);
    encode(DATA, PADDED | END_STREAM, 3, &padded, &mut c1);

    let mut s1 = Vec::new();
    encode(SETTINGS, 0, 0, &[], &mut s1);
    let head = block(&mut resp, &[(":status", "200"), ("content-type", "application/grpc")]);
    encode(HEADERS, END_HEADERS, 3, &head, &mut s1);
    let mut reply = vec![0, 0, 0, 0, 4];
    reply.extend_from_slice(b"\x08\x2a\x10\x01");
    encode(DATA, 0, 3, &reply, &mut s1);
    let ok = block(&mut resp, &[(":status", "200"), ("content-type", "text/plain")]);
    encode(HEADERS, END_HEADERS, 1, &ok, &mut s1);
    encode(DATA, END_STREAM, 1, b"hello", &mut s1);
    let trailers = block(&mut resp, &[("grpc-status", "0"), ("grpc-message", "")]);
    encode(HEADERS, END_HEADERS | END_STREAM, 3, &trailers, &mut s1);
    vec![(true, c1), (false, s1)]
}

/// Feeds the pieces to an observer (each split by `cut`) and returns the mocks and the first error.
fn observe(pieces: &[(bool, Vec<u8>)], cut: impl Fn(&[u8]) -> Vec<&[u8]>) -> (Vec<Mock>, Option<ParseError>) {
    let (mut mocks, error) =
        testing::observe(super::record::H2Observer::new, Role::Egress { dest: "api:443".into() }, pieces, cut);
    for m in &mut mocks {
        m.id = 0;
    }
    (mocks, error)
}

#[test]
fn interleaved_streams_become_exchanges() {
    let (mocks, error) = observe(&crafted(), |b| vec![b]);
    assert_eq!(error, None);
    assert_eq!(mocks.len(), 2, "{mocks:#?}");
    let get = mocks[0].http2.as_ref().unwrap();
    assert_eq!(mocks[0].kind, "http2");
    assert_eq!((get.request.method.as_str(), get.request.target.as_str()), ("GET", "/a?x=1"));
    assert_eq!(get.request.headers.get_str(":authority").as_deref(), Some("h:1"));
    assert_eq!(get.response.as_ref().unwrap().status, 200);
    assert_eq!(get.response.as_ref().unwrap().body.as_ref().and_then(|b| b.text.clone()).as_deref(), Some("hello"));
    let call = mocks[1].http2.as_ref().unwrap();
    assert_eq!(call.request.messages[0].json, Some(serde_json::json!({"1": "alice"})));
    assert_eq!(call.response.as_ref().unwrap().messages[0].json, Some(serde_json::json!({"1": 42, "2": 1})));
    assert_eq!(call.response.as_ref().unwrap().trailers.get_str("grpc-status").as_deref(), Some("0"));
    assert!(call.request.body.is_none());
    // Answered after the request ended: no pacing to keep.
    assert_eq!(call.response.as_ref().unwrap().messages[0].after_requests, None);
}

#[test]
fn split_at_every_byte_gives_the_same_exchanges() {
    let pieces = crafted();
    let (whole, _) = observe(&pieces, |b| vec![b]);
    for side in 0..2 {
        let len = pieces[side].1.len();
        for at in 0..=len {
            let (got, error) = observe(&pieces, |b| if b.len() == len { vec![&b[..at], &b[at..]] } else { vec![b] });
            assert_eq!(error, None, "side {side} cut at {at}");
            assert_eq!(got, whole, "side {side} cut at {at}");
        }
    }
    let (bytewise, _) = observe(&pieces, |b| b.chunks(1).collect());
    assert_eq!(bytewise, whole);
}

#[test]
fn a_reset_stream_is_not_an_exchange_and_a_broken_block_is_an_error() {
    let mut pieces = crafted();
    let mut rst = Vec::new();
    encode(frame::RST_STREAM, 0, 1, &[0, 0, 0, 8], &mut rst);
    pieces.insert(1, (true, rst));
    let (mocks, error) = observe(&pieces, |b| vec![b]);
    assert_eq!(error, None);
    assert_eq!(mocks.len(), 1);
    let mut bad = frame::PREFACE.to_vec();
    encode(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0x0f], &mut bad);
    let (_, error) = observe(&[(true, bad)], |b| vec![b]);
    assert!(error.unwrap().to_string().contains("HPACK"));
}

proptest! {
    #[test]
    fn garbage_after_the_preface_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut c = frame::PREFACE.to_vec();
        c.extend_from_slice(&data);
        let _ = observe(&[(true, c), (false, data)], |b| vec![b]);
    }

    #[test]
    fn well_framed_garbage_never_panics(
        frames in proptest::collection::vec((0u8..10, any::<u8>(), 0u32..6, proptest::collection::vec(any::<u8>(), 0..40)), 0..30)
    ) {
        let mut c = frame::PREFACE.to_vec();
        let mut s = Vec::new();
        for (i, (kind, flags, stream, payload)) in frames.iter().enumerate() {
            encode(*kind, *flags, *stream, payload, if i % 2 == 0 { &mut c } else { &mut s });
        }
        let _ = observe(&[(true, c), (false, s)], |b| vec![b]);
    }
}

/// A real `h2` client and server (Huffman-coded HPACK, its own framing choices) observed through a tap.
#[tokio::test]
async fn real_h2_traffic_is_recorded() {
    let memory = MemorySink::new();
    let ctx = memory.ctx(Role::Ingress { port: 50051, tls: None });
    let obs: Arc<Mutex<Box<dyn Observer>>> = Arc::new(Mutex::new(Box::new(super::record::H2Observer::new(ctx))));
    let (client_io, mut tap_client) = tokio::io::duplex(1 << 16);
    let (mut tap_server, server_io) = tokio::io::duplex(1 << 16);

    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(server_io).await.unwrap();
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                let mut body = req.into_body();
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                let mut resp = http::Response::new(());
                resp.headers_mut().insert("content-type", "application/grpc".parse().unwrap());
                let mut send = respond.send_response(resp, false).unwrap();
                send.send_data(bytes::Bytes::from_static(b"\0\0\0\0\x02\x08\x07"), false).unwrap();
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", "0".parse().unwrap());
                send.send_trailers(trailers).unwrap();
            });
        }
    });
    let tap = {
        let obs = obs.clone();
        tokio::spawn(async move {
            let (mut a, mut b) = ([0u8; 4096], [0u8; 4096]);
            loop {
                tokio::select! {
                    n = tap_client.read(&mut a) => {
                        let Ok(n @ 1..) = n else { break };
                        obs.lock().unwrap().client(&a[..n], Instant::now()).unwrap();
                        tap_server.write_all(&a[..n]).await.unwrap();
                    }
                    n = tap_server.read(&mut b) => {
                        let Ok(n @ 1..) = n else { break };
                        obs.lock().unwrap().server(&b[..n], Instant::now()).unwrap();
                        tap_client.write_all(&b[..n]).await.unwrap();
                    }
                }
            }
        })
    };
    let (client, conn) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(conn);
    for name in ["alice", "bob"] {
        let mut client = client.clone().ready().await.unwrap();
        let req = http::Request::post("http://localhost:50051/shop.Users/Find")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        let mut msg = vec![0, 0, 0, 0, name.len() as u8 + 2, 0x0a, name.len() as u8];
        msg.extend_from_slice(name.as_bytes());
        send.send_data(bytes::Bytes::from(msg), true).unwrap();
        let mut body = resp.await.unwrap().into_body();
        while body.data().await.is_some() {}
        assert!(body.trailers().await.unwrap().is_some());
    }
    tap.abort();
    server.abort();
    obs.lock().unwrap().close(Instant::now());
    let tests = memory.tests();
    assert_eq!(tests.len(), 2);
    let bob = serde_json::json!({"1": "bob"});
    let t = tests.iter().find(|t| t.http().unwrap().0.messages[0].json.as_ref() == Some(&bob)).unwrap();
    let (request, response) = t.http().unwrap();
    assert_eq!(t.kind, "http2");
    assert_eq!(request.target, "/shop.Users/Find");
    assert_eq!(request.messages[0].json, Some(serde_json::json!({"1": "bob"})));
    assert_eq!(response.messages[0].json, Some(serde_json::json!({"1": 7})));
    assert_eq!(response.trailers.get_str("grpc-status").as_deref(), Some("0"));
}

#[test]
fn http2_requests_take_http1_form_for_http1_clients() {
    let req = crate::protocols::http::HttpRequest {
        method: "GET".into(),
        target: "/a".into(),
        version: "HTTP/2".into(),
        headers: vec![
            Header::new(":scheme", "https"),
            Header::new(":authority", "api:8443"),
            Header::new("accept", "*/*"),
        ],
        body: None,
        messages: vec![],
        trailers: vec![],
    };
    let h1 = super::as_http1(req);
    assert_eq!(h1.version, "HTTP/1.1");
    let names: Vec<&str> = h1.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["Host", "accept"]);
    assert_eq!(h1.headers[0].value, b"api:8443");
}

/// A gRPC message with its length prefix.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const ALICE: &[u8] = b"\x0a\x05alice";
const BOB: &[u8] = b"\x0a\x03bob";
const REPLY_ALICE: &[u8] = b"\x08\x2a\x10\x01";
const REPLY_BOB: &[u8] = b"\x08\x2b";

/// A bidirectional call in which the server answers each message before the client sends the next.
fn ping_pong() -> Vec<(bool, Vec<u8>)> {
    let (mut req, mut resp) = (Encoder::new(), Encoder::new());
    let mut c1 = frame::PREFACE.to_vec();
    encode(SETTINGS, 0, 0, &[], &mut c1);
    let call = block(
        &mut req,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/shop.Orders/Track"),
            (":authority", "api:443"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    );
    encode(HEADERS, END_HEADERS, 1, &call, &mut c1);
    // The first message split over two DATA frames: it counts once complete.
    let alice = framed(ALICE);
    encode(DATA, 0, 1, &alice[..3], &mut c1);
    encode(DATA, 0, 1, &alice[3..], &mut c1);
    let mut s1 = Vec::new();
    encode(SETTINGS, 0, 0, &[], &mut s1);
    let head = block(&mut resp, &[(":status", "200"), ("content-type", "application/grpc")]);
    encode(HEADERS, END_HEADERS, 1, &head, &mut s1);
    encode(DATA, 0, 1, &framed(REPLY_ALICE), &mut s1);
    let mut c2 = Vec::new();
    encode(DATA, 0, 1, &framed(BOB), &mut c2);
    let mut s2 = Vec::new();
    encode(DATA, 0, 1, &framed(REPLY_BOB), &mut s2);
    let mut c3 = Vec::new();
    encode(DATA, END_STREAM, 1, &[], &mut c3);
    let mut s3 = Vec::new();
    let trailers = block(&mut resp, &[("grpc-status", "0")]);
    encode(HEADERS, END_HEADERS | END_STREAM, 1, &trailers, &mut s3);
    vec![(true, c1), (false, s1), (true, c2), (false, s2), (true, c3), (false, s3)]
}

#[test]
fn a_ping_pong_call_keeps_when_each_reply_was_sent() {
    let (mocks, error) = observe(&ping_pong(), |b| b.chunks(3).collect());
    assert_eq!(error, None);
    let call = mocks[0].http2.as_ref().unwrap();
    assert_eq!(call.request.messages.len(), 2);
    let after: Vec<_> = call.response.as_ref().unwrap().messages.iter().map(|m| m.after_requests).collect();
    assert_eq!(after, [Some(1), Some(2)]);
    assert!(crate::store::to_yaml(&mocks[0]).unwrap().contains("after_requests: 2"));
}

/// Serves `mocks` as replay does, to an `h2` client.
async fn replay(mocks: Vec<Mock>) -> (Arc<MockPool>, h2::client::SendRequest<bytes::Bytes>) {
    let pool = Arc::new(MockPool::new(mocks, std::env::temp_dir()));
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let ctx = ServeCtx { pool: pool.clone(), dest: "api:443".into(), ca: None };
    tokio::spawn(super::serve::serve(Box::new(server_io), ctx));
    let (client, conn) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(conn);
    (pool, client)
}

async fn track(
    client: &h2::client::SendRequest<bytes::Bytes>,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let req = http::Request::post("http://api:443/shop.Orders/Track")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    client.clone().ready().await.unwrap().send_request(req, false).unwrap()
}

fn send(stream: &mut h2::SendStream<bytes::Bytes>, payload: &[u8]) {
    stream.send_data(bytes::Bytes::from(framed(payload)), false).unwrap();
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(10), f).await.expect("no answer in time")
}

#[tokio::test]
async fn a_ping_pong_call_is_answered_message_by_message() {
    let (mocks, _) = observe(&ping_pong(), |b| vec![b]);
    let (pool, client) = replay(mocks.clone()).await;

    // Each reply comes before the next message is sent, then the trailers once the client ends.
    let (resp, mut send_stream) = track(&client).await;
    send(&mut send_stream, ALICE);
    let resp = within(resp).await.unwrap();
    assert_eq!(resp.headers().get("content-type").unwrap(), "application/grpc");
    let mut body = resp.into_body();
    assert_eq!(within(body.data()).await.unwrap().unwrap(), framed(REPLY_ALICE));
    send(&mut send_stream, BOB);
    assert_eq!(within(body.data()).await.unwrap().unwrap(), framed(REPLY_BOB));
    send_stream.send_data(bytes::Bytes::new(), true).unwrap();
    assert!(within(body.data()).await.is_none());
    let trailers = within(body.trailers()).await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert!(pool.misses().is_empty(), "{:?}", pool.misses());
    assert_eq!(pool.usage(), [1]);

    // A second message the recording does not have: a miss naming it, and status INTERNAL.
    let (resp, mut send_stream) = track(&client).await;
    send(&mut send_stream, ALICE);
    let mut body = within(resp).await.unwrap().into_body();
    assert_eq!(within(body.data()).await.unwrap().unwrap(), framed(REPLY_ALICE));
    send(&mut send_stream, b"\x0a\x05carol");
    assert!(within(body.data()).await.is_none());
    let trailers = within(body.trailers()).await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "13");
    let message = trailers.get("grpc-message").unwrap().to_str().unwrap().to_string();
    assert!(message.contains("carol") && message.contains("differs in message 2"), "{message}");
    let misses = pool.misses();
    assert_eq!(misses.len(), 1);
    assert!(misses[0].what.contains("/shop.Orders/Track") && misses[0].what.contains("carol"), "{misses:?}");

    // Ending before the recording did is a miss too.
    let (resp, mut send_stream) = track(&client).await;
    send(&mut send_stream, ALICE);
    let mut body = within(resp).await.unwrap().into_body();
    assert_eq!(within(body.data()).await.unwrap().unwrap(), framed(REPLY_ALICE));
    send_stream.send_data(bytes::Bytes::new(), true).unwrap();
    assert!(within(body.data()).await.is_none());
    let trailers = within(body.trailers()).await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "13");
    assert!(pool.misses()[1].what.contains("has 2 messages"), "{:?}", pool.misses());

    // A first message no recorded call starts with: answered at once (trailers-only), not at the end.
    let (resp, mut send_stream) = track(&client).await;
    send(&mut send_stream, b"\x0a\x03zoe");
    let resp = within(resp).await.unwrap();
    assert_eq!(resp.headers().get("grpc-status").unwrap(), "13");
    assert_eq!(pool.misses().len(), 3);
    assert!(pool.misses()[2].what.contains("zoe"), "{:?}", pool.misses());

    // Recorded without `after_requests` (an older recording): answered when the request ends, as before.
    let mut old = mocks;
    for m in &mut old[0].http2.as_mut().unwrap().response.as_mut().unwrap().messages {
        m.after_requests = None;
    }
    let (pool, client) = replay(old).await;
    let (resp, mut send_stream) = track(&client).await;
    send(&mut send_stream, ALICE);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), resp).await;
    assert!(waited.is_err(), "answered before the request ended");
    let (resp, mut send_stream) = track(&client).await;
    send(&mut send_stream, ALICE);
    send(&mut send_stream, BOB);
    send_stream.send_data(bytes::Bytes::new(), true).unwrap();
    let mut body = within(resp).await.unwrap().into_body();
    let mut got = Vec::new();
    while let Some(chunk) = within(body.data()).await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, [framed(REPLY_ALICE), framed(REPLY_BOB)].concat());
    assert!(pool.misses().is_empty(), "{:?}", pool.misses());
}
