//! Entry points for fuzzers (the cargo-fuzz targets in `fuzz/`, and the stable smoke run in
//! `tests/fuzz_smoke.rs`): every decoder that meets bytes from the network, and the loading of test and
//! mock files. None of them may panic, whatever the input.
//!
//! Inputs for the protocol observers are recorded conversations: pieces framed as one direction byte
//! (0: client, 1: server), a little-endian u32 length, then the bytes. `DOPPEL_RAW_DIR=<dir>` makes
//! `doppel record` write every connection in this form (`<connection>-<protocol>.bin`), so corpora are
//! seeded from real recordings.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use crate::protocols::{self, Observer, Protocol, RecordCtx, Role};
use crate::store::{FORMAT_VERSION, RecordSink, SetMeta, SetWriter, Store};

/// Splits a framed conversation into (from_client, bytes) pieces; a truncated tail is one last piece.
pub fn pieces(data: &[u8]) -> Vec<(bool, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&dir, tail)) = rest.split_first() {
        if tail.len() < 4 {
            out.push((dir == 0, tail));
            break;
        }
        let len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
        let body = &tail[4..];
        let n = len.min(body.len());
        out.push((dir == 0, &body[..n]));
        rest = &body[n..];
    }
    out
}

/// Appends one piece to a framed conversation.
pub fn frame(out: &mut Vec<u8>, from_client: bool, bytes: &[u8]) {
    out.push(u8::from(!from_client));
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn sink() -> RecordSink {
    // The writer lives for the whole process (kept here, not leaked): mocks that fuzz inputs happen to
    // complete are written to a temporary directory and ignored.
    static WRITER: OnceLock<Option<SetWriter>> = OnceLock::new();
    let writer = WRITER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("doppel-fuzz-{}", std::process::id()));
        let meta = SetMeta {
            version: FORMAT_VERSION,
            created_at: String::new(),
            command: vec![],
            app_ports: vec![],
            capture: "fuzz".into(),
            deps: vec![],
        };
        Store::new(&dir).create_set(None, &meta).ok()
    });
    match writer {
        Some(w) => w.sink(),
        None => std::process::abort(),
    }
}

/// Feeds a framed conversation to the observer of `protocol`, as an outbound connection, then closes it.
pub fn observe(protocol: &Arc<dyn Protocol>, data: &[u8]) {
    let ctx = RecordCtx {
        sink: sink(),
        role: Role::Egress { dest: "127.0.0.1:9".into() },
        connection: 1,
        opened_at: SystemTime::now(),
        opened: Instant::now(),
    };
    let mut obs: Box<dyn Observer> = protocol.observer(ctx);
    let now = Instant::now();
    for (from_client, bytes) in pieces(data) {
        let r = if from_client { obs.client(bytes, now) } else { obs.server(bytes, now) };
        let _ = obs.tls_boundary();
        if r.is_err() {
            break;
        }
    }
    obs.close(now);
}

/// The registered protocol called `name` (`http`, `http2`, `postgres`, `mysql`, `redis`).
pub fn protocol(name: &str) -> Option<Arc<dyn Protocol>> {
    protocols::registry().into_iter().find(|p| p.name() == name)
}

/// Detection over the first bytes of both directions, for every protocol.
pub fn detect(data: &[u8]) {
    let split = data.first().map(|b| *b as usize).unwrap_or(0).min(data.len());
    let (client, server) = data.split_at(split);
    let registry = protocols::registry();
    let _ = protocols::detect(&registry, client, server, 0, false);
    let _ = protocols::detect(&registry, client, &[], 5432, true);
}

/// The HTTP/1 framing parser in both directions, fed in two pieces.
pub fn http1(data: &[u8]) {
    use crate::protocols::http::parse::{Parser, Side};
    let split = data.first().map(|b| *b as usize).unwrap_or(0).min(data.len());
    for side in [Side::Request, Side::Response] {
        let mut p = Parser::new(side);
        p.expect_response_to("GET");
        let mut out = Vec::new();
        if p.feed(&data[..split], &mut out).is_ok() && p.feed(&data[split..], &mut out).is_ok() {
            let _ = p.finish(&mut out);
        }
    }
}

/// A DNS message as a query and as a response.
pub fn dns(data: &[u8]) {
    let _ = protocols::dns::question(data);
    let _ = protocols::dns::describe(data);
}

/// The text of a test file and of a mocks file.
pub fn store_files(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = crate::store::parse_test(&text, Path::new("fuzz.yaml"));
    let _ = crate::store::parse_mocks(&text, Path::new("mocks.yaml"));
    // The tests' journal: every complete document it yields is a test file's text, loaded the same way.
    let (docs, _) = crate::store::journal::split(&text);
    for (_, body) in docs {
        let _ = crate::store::parse_test(&body, Path::new("tests.journal"));
    }
}
