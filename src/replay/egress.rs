//! Replay side of capture: every outbound connection of the app is answered by the protocol its mocks were
//! recorded in (or, for a destination with no mocks, the protocol its first bytes show), never by the real
//! dependency. TLS is terminated with doppel's CA first, so the app's HTTPS calls are served from the same
//! plaintext mocks they were recorded as.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::capture::Egress;
use crate::protocols::{self, Conn, MockPool, Protocol, ServeCtx, tcp::Tcp};
use crate::store::Direction;
use crate::tls::Ca;

pub fn spawn(mut rx: mpsc::Receiver<Egress>, pool: Arc<MockPool>, ca: Option<Arc<Ca>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            tokio::spawn(serve(e, pool.clone(), ca.clone()));
        }
    })
}

fn by_name(name: &str) -> Option<Arc<dyn Protocol>> {
    if name == "tcp" {
        return Some(Arc::new(Tcp));
    }
    protocols::registry().into_iter().find(|p| p.name() == name)
}

/// Recorded kinds for a destination, and whether its recording starts with the dependency speaking.
fn recorded(pool: &MockPool, dest: &str) -> (Vec<String>, bool, bool) {
    let mocks: Vec<_> = pool.mocks.iter().filter(|m| m.dest == dest).collect();
    let mut kinds: Vec<String> = mocks.iter().map(|m| m.kind.clone()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let server_first =
        mocks.iter().any(|m| m.tcp.as_ref().is_some_and(|t| t.chunks.first().is_some_and(|c| c.dir == Direction::In)))
            || kinds.iter().any(|k| by_name(k).is_some_and(|p| p.server_first()));
    let refused = !mocks.is_empty() && mocks.iter().all(|m| m.tcp.as_ref().is_some_and(|t| t.connect_error.is_some()));
    (kinds, server_first, refused)
}

async fn serve(e: Egress, pool: Arc<MockPool>, ca: Option<Arc<Ca>>) {
    let ctx = ServeCtx { pool: pool.clone(), dest: e.dest.clone(), ca: ca.clone() };
    let (kinds, server_first, refused) = recorded(&pool, &e.dest);
    let stream = e.stream;
    let _ = stream.set_nodelay(true);
    if refused {
        // The dependency was down while recording: the app sees its connection reset again.
        let candidates: Vec<usize> = pool.of_kind("tcp").filter(|(_, m)| m.dest == e.dest).map(|(i, _)| i).collect();
        let _ = pool.take(&candidates);
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        return;
    }
    // TLS first: a ClientHello is answered with a certificate from doppel's CA for the name the app asked.
    let peeked = if server_first { Vec::new() } else { crate::tls::peek_client(&stream, Duration::from_secs(2)).await };
    let mut conn: Conn = if crate::tls::looks_like_client_hello(&peeked) {
        let Some(ca) = &ca else {
            pool.miss("tls", &e.dest, format!("a TLS connection to {} (no CA loaded)", e.dest));
            return;
        };
        let ip = crate::tls::dest_ip(&e.dest);
        let http = kinds.iter().any(|k| k == "http");
        let h2 = kinds.iter().any(|k| k == protocols::http2::KIND);
        // The HTTP version recorded here, when the app offers it: h2 for HTTP/2 mocks, else http/1.1.
        let pick = |offered: &[Vec<u8>]| {
            let find = |name: &[u8]| offered.iter().find(|p| p.as_slice() == name).cloned();
            (if h2 { find(b"h2") } else { None }).or_else(|| if http { find(b"http/1.1") } else { None })
        };
        match crate::tls::accept(ca, stream, ip, pick).await {
            Ok((tls, _name)) => Box::new(tls),
            Err(err) => {
                pool.miss("tls", &e.dest, format!("TLS handshake with the app failed for {}: {err}", e.dest));
                return;
            }
        }
    } else {
        Box::new(stream)
    };
    let mut first = Vec::new();
    // One protocol recorded for this destination: it serves the connection (and reads what it needs).
    if let [only] = kinds.as_slice()
        && let Some(p) = by_name(only)
    {
        p.serve(conn, first, ctx).await;
        return;
    }
    // A server-first protocol next to opaque recordings (connections it stopped parsing, e.g. after TLS):
    // its app sends nothing until greeted, so waiting for first bytes would only stall it.
    let parsed: Vec<&str> = kinds.iter().map(|k| k.as_str()).filter(|k| *k != "tcp").collect();
    if let [only] = parsed.as_slice()
        && let Some(p) = by_name(only).filter(|p| p.server_first())
    {
        p.serve(conn, first, ctx).await;
        return;
    }
    let mut buf = vec![0u8; 4096];
    let protocols = protocols::registry();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let chosen = loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                first.extend_from_slice(&buf[..n]);
                if let Some(p) = protocols::detect(&protocols, &first, &[], e.port, first.len() > 64) {
                    break Some(p);
                }
            }
            Ok(_) => break protocols::detect(&protocols, &first, &[], e.port, true),
            Err(_) => break None,
        }
    };
    let Some(protocol) = chosen else {
        pool.miss("tcp", &e.dest, format!("a connection to {} that sent nothing and has no recording", e.dest));
        return;
    };
    protocol.serve(conn, first, ctx).await;
}
