//! Replay side of capture: every outbound connection of the app is answered by the protocol its mocks were
//! recorded in (or, for a destination with no mocks, the protocol its first bytes show), never by the real
//! dependency. TLS is terminated with doppel's CA first, so the app's HTTPS calls are served from the same
//! plaintext mocks they were recorded as.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::capture::Egress;
use crate::protocols::{self, Conn, MockPool, MockServer, Protocol, ServeCtx};
use crate::tls::Ca;

/// The mock servers of one replayed test set, one per protocol, built once: state their connections share
/// lives in them.
pub(crate) struct Mocks {
    pool: Arc<MockPool>,
    ca: Option<Arc<Ca>>,
    servers: Vec<(&'static dyn Protocol, Arc<dyn MockServer>)>,
}

impl Mocks {
    pub(crate) fn new(pool: Arc<MockPool>, ca: Option<Arc<Ca>>) -> Arc<Mocks> {
        let servers = protocols::registry().iter().map(|p| (*p, p.mock_server(&pool))).collect();
        Arc::new(Mocks { pool, ca, servers })
    }

    fn server(&self, protocol: &dyn Protocol) -> Option<&Arc<dyn MockServer>> {
        self.servers.iter().find(|(p, _)| p.name() == protocol.name()).map(|(_, s)| s)
    }

    /// Serves each outbound connection of the app until the channel closes.
    pub(crate) fn spawn(self: &Arc<Mocks>, mut rx: mpsc::Receiver<Egress>) -> tokio::task::JoinHandle<()> {
        let mocks = self.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                tokio::spawn(mocks.clone().serve(e));
            }
        })
    }

    async fn serve(self: Arc<Mocks>, e: Egress) {
        let pool = &self.pool;
        let ctx = ServeCtx { pool: pool.clone(), dest: e.dest.clone(), ca: self.ca.clone() };
        let recorded = Recorded::of(pool, &e.dest);
        let stream = e.stream;
        let _ = stream.set_nodelay(true);
        if protocols::tcp::refused_everywhere(pool, &e.dest) {
            // The dependency was down while recording: the app sees its connection reset again.
            let candidates: Vec<usize> =
                pool.of_kind("tcp").filter(|(_, m)| m.dest == e.dest).map(|(i, _)| i).collect();
            let _ = pool.take(&candidates);
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            return;
        }
        // TLS first: a ClientHello is answered with a certificate from doppel's CA for the name the app asked.
        let peeked = if recorded.server_first {
            Vec::new()
        } else {
            crate::tls::peek_client(&stream, Duration::from_secs(2)).await
        };
        let conn: Conn = if crate::tls::looks_like_client_hello(&peeked) {
            let Some(ca) = &self.ca else {
                pool.miss("tls", &e.dest, format!("a TLS connection to {} (no CA loaded)", e.dest));
                return;
            };
            let ip = crate::tls::dest_ip(&e.dest);
            // The first protocol the app offers that was recorded here.
            let pick = |offered: &[Vec<u8>]| {
                offered.iter().find(|id| recorded.protocols.iter().any(|p| p.alpn().contains(&id.as_slice()))).cloned()
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
        let (conn, protocol) = match recorded.without_reading() {
            Some(p) => (conn, Some(p)),
            None => protocols::detect::read_until_known(conn, e.port, Duration::from_secs(2)).await,
        };
        let Some(protocol) = protocol else {
            pool.miss("tcp", &e.dest, format!("a connection to {} that sent nothing and has no recording", e.dest));
            return;
        };
        if let Some(server) = self.server(protocol) {
            server.serve(conn, ctx).await;
        }
    }
}

/// What was recorded for one destination.
struct Recorded {
    /// The protocols of its mocks, in registry order.
    protocols: Vec<&'static dyn Protocol>,
    /// Its recording starts with the dependency speaking: replay must not wait for the app's bytes.
    server_first: bool,
}

impl Recorded {
    fn of(pool: &MockPool, dest: &str) -> Recorded {
        let mocks: Vec<_> = pool.mocks.iter().filter(|m| m.dest == dest).collect();
        let protocols: Vec<&'static dyn Protocol> =
            protocols::registry().iter().copied().filter(|p| mocks.iter().any(|m| m.kind == p.name())).collect();
        let server_first =
            mocks.iter().any(|m| protocols.iter().any(|p| p.name() == m.kind && p.recorded_server_first(m)));
        Recorded { protocols, server_first }
    }

    /// The protocol that serves a connection without reading its first bytes: the only one recorded here,
    /// or a server-first protocol next to opaque recordings (connections it stopped parsing, e.g. after
    /// TLS), whose app sends nothing until greeted.
    fn without_reading(&self) -> Option<&'static dyn Protocol> {
        if let [only] = self.protocols.as_slice() {
            return Some(*only);
        }
        let fallback = protocols::fallback().name();
        match self.protocols.iter().filter(|p| p.name() != fallback).collect::<Vec<_>>().as_slice() {
            [only] if only.server_first() => Some(**only),
            _ => None,
        }
    }
}
