//! Entry points for fuzzers (the cargo-fuzz targets in `fuzz/`, and the stable smoke run in
//! `tests/fuzz_smoke.rs`): every decoder that meets bytes from the network, and the loading of test and
//! mock files. None of them may panic, whatever the input.
//!
//! Inputs for the protocol observers are recorded conversations: pieces framed as one direction byte
//! (0: client, 1: server), a little-endian u32 length, then the bytes. `DOPPEL_RAW_DIR=<dir>` makes
//! `doppel record` write every connection in this form (`<connection>-<protocol>.bin`), so corpora are
//! seeded from real recordings.

use std::path::Path;
use std::time::{Instant, SystemTime};

use crate::protocols::{self, Observer, Protocol, RecordCtx, Role};
use crate::store::RecordSink;

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

/// Where the observers' records go while fuzzing: nowhere. Bodies that grow past the inline limit spill to
/// a scratch directory of this process.
fn sink() -> RecordSink {
    RecordSink::discard(std::env::temp_dir().join(format!("doppel-fuzz-{}", std::process::id())))
}

/// Feeds a framed conversation to the observer of `protocol`, as an outbound connection, then closes it.
pub(crate) fn observe<P: Protocol + ?Sized>(protocol: &P, data: &[u8]) {
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

/// Every protocol of the registry on the same input: its decoders (`Protocol::fuzz`), by default its
/// observer over the input as a framed conversation.
pub fn protocols(data: &[u8]) {
    for p in protocols::registry() {
        p.fuzz(data);
    }
}

/// The names of the registered protocols, for the fuzz run's report.
pub fn protocol_names() -> Vec<&'static str> {
    protocols::registry().iter().map(|p| p.name()).collect()
}

/// Detection over the first bytes of both directions, for every protocol.
pub fn detect(data: &[u8]) {
    let split = data.first().map(|b| *b as usize).unwrap_or(0).min(data.len());
    let (client, server) = data.split_at(split);
    let _ = protocols::detect::decide(client, server, 0, false);
    let _ = protocols::detect::decide(client, &[], 5432, true);
    let _ = protocols::detect::decide(client, &[], 53, true);
}

/// A fuzz target: its name (its corpus folder under `fuzz/corpus/`) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every fuzz target: what `fuzz/fuzz_targets/` and the stable smoke run in the test suite call.
pub const TARGETS: &[Target] = &[("protocols", protocols), ("detect", detect), ("store_files", store_files)];

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
