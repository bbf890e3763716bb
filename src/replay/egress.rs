//! Replay side of capture: every outbound connection of the app is answered by the protocol its mocks were
//! recorded in (or, for a destination with no mocks, the protocol its first bytes show), never by the real
//! dependency.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::capture::Egress;
use crate::protocols::{self, MockPool, Protocol, ServeCtx, tcp::Tcp};

pub fn spawn(mut rx: mpsc::Receiver<Egress>, pool: Arc<MockPool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            tokio::spawn(serve(e, pool.clone()));
        }
    })
}

fn by_name(name: &str) -> Option<Arc<dyn Protocol>> {
    if name == "tcp" {
        return Some(Arc::new(Tcp));
    }
    protocols::registry().into_iter().find(|p| p.name() == name)
}

async fn serve(e: Egress, pool: Arc<MockPool>) {
    let ctx = ServeCtx { pool: pool.clone(), dest: e.dest.clone() };
    let kinds: Vec<&str> = {
        let mut k: Vec<&str> = pool.mocks.iter().filter(|m| m.dest == e.dest).map(|m| m.kind.as_str()).collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    let mut stream = e.stream;
    let _ = stream.set_nodelay(true);
    // One protocol recorded for this destination: it serves the connection (and reads what it needs).
    if let [only] = kinds.as_slice()
        && let Some(p) = by_name(only)
    {
        p.serve(stream, Vec::new(), ctx).await;
        return;
    }
    // A server-first protocol next to opaque recordings (connections it stopped parsing, e.g. after TLS):
    // its app sends nothing until greeted, so waiting for first bytes would only stall it.
    let parsed: Vec<&str> = kinds.iter().copied().filter(|k| *k != "tcp").collect();
    if let [only] = parsed.as_slice()
        && let Some(p) = by_name(only).filter(|p| p.server_first())
    {
        p.serve(stream, Vec::new(), ctx).await;
        return;
    }
    let mut first = Vec::new();
    let mut buf = vec![0u8; 4096];
    let protocols = protocols::registry();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let chosen = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
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
    let protocol = match chosen {
        // What was recorded for this destination wins over what the first bytes look like (a line protocol
        // whose commands start with "GET " is not HTTP).
        Some(p) if kinds.len() == 1 => by_name(kinds[0]).unwrap_or(p),
        Some(p) => p,
        None => match kinds.as_slice() {
            [one] => match by_name(one) {
                Some(p) => p,
                None => return,
            },
            _ => {
                pool.miss("tcp", &e.dest, format!("a connection to {} that sent nothing and has no recording", e.dest));
                return;
            }
        },
    };
    protocol.serve(stream, first, ctx).await;
}
