//! The one detection path, for record and replay alike: a connection's protocol is the first in the
//! registry that recognises its first bytes (the client's, or the server's for protocols whose server
//! speaks first); when none does, or nothing decides within `LIMIT` bytes, it is opaque TCP.

use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{Conn, Detect, Prefixed, Protocol, fallback, registry};

/// Detection gives up after this many bytes and takes the connection as opaque.
pub(crate) const LIMIT: usize = 64;

/// Decides a connection's protocol as its first bytes arrive.
pub(crate) struct Detector {
    client: Vec<u8>,
    server: Vec<u8>,
    port: u16,
}

impl Detector {
    /// For a connection to `port` (some protocols are recognised by their usual port as well).
    pub(crate) fn new(port: u16) -> Detector {
        Detector { client: Vec::new(), server: Vec::new(), port }
    }

    /// Takes the next piece from one side (an empty piece: that side ended) and returns the protocol once
    /// it is decided.
    pub(crate) fn feed(&mut self, from_client: bool, data: &[u8]) -> Option<&'static dyn Protocol> {
        if from_client {
            self.client.extend_from_slice(data);
        } else {
            self.server.extend_from_slice(data);
        }
        let done = data.is_empty() || self.client.len() + self.server.len() > LIMIT;
        decide(&self.client, &self.server, self.port, done)
    }
}

/// The protocol of a connection from its first client bytes (or, when only the server has spoken, its
/// first server bytes), or `None` while undecided; `done` means no more bytes will come to decide with.
pub(crate) fn decide(client: &[u8], server: &[u8], port: u16, done: bool) -> Option<&'static dyn Protocol> {
    let all = registry();
    let mut undecided = false;
    for p in &all[..all.len().saturating_sub(1)] {
        let d = if !server.is_empty() && client.is_empty() {
            p.detect_server(server, port)
        } else {
            p.detect_client(client, port)
        };
        match d {
            Detect::Yes => return Some(*p),
            Detect::NeedMore => undecided = true,
            Detect::No => {}
        }
    }
    if undecided && !done {
        return None;
    }
    Some(fallback())
}

/// Reads the app's first bytes from `conn` until they decide its protocol (at most `wait`): the
/// connection with those bytes put back in front, and the protocol, or `None` when the app sent nothing.
pub(crate) async fn read_until_known(
    mut conn: Conn,
    port: u16,
    wait: Duration,
) -> (Conn, Option<&'static dyn Protocol>) {
    let mut detector = Detector::new(port);
    let mut first = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    let chosen = loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                first.extend_from_slice(&buf[..n]);
                if let Some(p) = detector.feed(true, &buf[..n]) {
                    break Some(p);
                }
            }
            Ok(_) if !first.is_empty() => break detector.feed(true, &[]),
            _ => break None,
        }
    };
    (Box::new(Prefixed::new(first, conn)), chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_pick_the_protocol_and_the_rest_is_opaque() {
        let name = |client: &[u8], done| decide(client, &[], 80, done).map(|p| p.name());
        assert_eq!(name(b"GET / HTTP/1.1\r\n", false), Some("http"));
        assert_eq!(name(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false), Some("http2"));
        assert_eq!(name(b"*1\r\n$4\r\nPING\r\n", false), Some("redis"));
        assert_eq!(name(b"GE", false), None, "undecided while a protocol may still match");
        assert_eq!(name(b"GE", true), Some("tcp"), "a connection that ends undecided is opaque");
        assert_eq!(name(b"\x00\x01binary", false), Some("tcp"));
        let mut d = Detector::new(80);
        assert!(d.feed(true, b"PO").is_none());
        assert_eq!(d.feed(true, b"ST /x HTTP/1.1\r\n").map(|p| p.name()), Some("http"));
    }
}
