//! HTTP/2 observer tests: a crafted connection with interleaved streams, CONTINUATION, padding and gRPC
//! trailers, split at every byte boundary; a real `h2` client and server observed through a tap; garbage.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::frame::{self, CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, PADDED, SETTINGS, encode};
use super::hpack::{Encoder, Field};
use crate::protocols::{Observer, RecordCtx, Role};
use crate::store::{FORMAT_VERSION, Header, HeaderList, Mock, SetMeta, Store};

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

fn meta() -> SetMeta {
    SetMeta {
        version: FORMAT_VERSION,
        created_at: "2026-01-01T00:00:00.000Z".into(),
        command: vec!["app".into()],
        app_ports: vec![],
        capture: "explicit".into(),
        deps: vec![],
    }
}

/// Feeds the pieces to an observer (each split by `cut`) and returns the mocks and the first error.
fn observe(pieces: &[(bool, Vec<u8>)], cut: impl Fn(&[u8]) -> Vec<&[u8]>) -> (Vec<Mock>, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let writer = store.create_set(Some("s"), &meta()).unwrap();
    let at = Instant::now();
    let ctx = RecordCtx {
        sink: writer.sink(),
        role: Role::Egress { dest: "api:443".into() },
        connection: 1,
        opened_at: SystemTime::UNIX_EPOCH,
        opened: at,
    };
    let mut obs = super::record::H2Observer::new(ctx);
    let mut error = None;
    'feed: for (from_client, bytes) in pieces {
        for piece in cut(bytes) {
            let r = if *from_client { obs.client(piece, at) } else { obs.server(piece, at) };
            if let Err(e) = r {
                error = Some(e);
                break 'feed;
            }
        }
    }
    obs.close(at);
    drop(obs);
    writer.finish();
    let mut mocks = store.load_set("s").unwrap().mocks;
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
    assert!(error.unwrap().contains("HPACK"));
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
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let writer = store.create_set(Some("s"), &meta()).unwrap();
    let ctx = RecordCtx {
        sink: writer.sink(),
        role: Role::Ingress { port: 50051, tls: None },
        connection: 1,
        opened_at: SystemTime::now(),
        opened: Instant::now(),
    };
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
    drop(obs);
    writer.finish();
    let tests = store.load_set("s").unwrap().tests;
    assert_eq!(tests.len(), 2);
    let bob = serde_json::json!({"1": "bob"});
    let (_, t) = tests.iter().find(|(_, t)| t.request.messages[0].json.as_ref() == Some(&bob)).unwrap();
    assert_eq!(t.kind, "http2");
    assert_eq!(t.request.target, "/shop.Users/Find");
    assert_eq!(t.request.messages[0].json, Some(serde_json::json!({"1": "bob"})));
    assert_eq!(t.response.messages[0].json, Some(serde_json::json!({"1": 7})));
    assert_eq!(t.response.trailers.get_str("grpc-status").as_deref(), Some("0"));
}

#[test]
fn http2_requests_take_http1_form_for_http1_clients() {
    let req = crate::store::HttpRequest {
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
