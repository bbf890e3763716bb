//! One folder per protocol, each implementing `Protocol`: detect it from the first bytes, observe a
//! recorded connection and turn it into exchanges, serve the app's connections from mocks in replay, and
//! say how its mocks (and, for protocols that bring inbound tests, its test requests and responses) are
//! written to disk. The `registry!` list below is the one list of them that record, replay, the on-disk
//! format and the fuzz targets iterate: adding a protocol is adding its folder and one line there (the line
//! declares the folder's module too; `registry.rs` says what a line expands to).

pub(crate) mod detect;
mod pool;
#[macro_use]
mod registry;
pub(crate) mod sql;
mod stream;
#[cfg(test)]
pub(crate) mod testing;

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::net::UdpSocket;

use crate::capture::BoxFuture;
use crate::store::RecordSink;
pub(crate) use pool::{Miss, MockPool, UnmadeWrite};
pub(crate) use registry::fallback;
pub(crate) use stream::{Conn, Prefixed, Stream, write_through_inner};

// The registry: one line per protocol, in detection order.
// Redis first: an inline `GET key` line is Redis, not an HTTP request (Redis says no to HTTP lines).
registry! {
    redis: redis::Redis => { mock: redis::RedisMock },
    http: http::Http => { mock: http::HttpMock, test: http::HttpRequest => http::HttpResponse },
    http2: http2::Http2 => { mock: http::HttpMock, test: http::HttpRequest => http::HttpResponse },
    mysql: mysql::Mysql => { mock: mysql::MysqlMock },
    nats: nats::Nats => { mock: nats::NatsMock },
    postgres: postgres::Postgres => { mock: postgres::PostgresMock },
    dns: dns::Dns => { mock: dns::DnsMock },
    tcp: tcp::Tcp => { mock: tcp::TcpMock },
}

/// What the first bytes of a connection say about a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detect {
    Yes,
    No,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// Which side of the app a recorded connection is on.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    /// A client calling the app on one of its ports: exchanges become test cases. `tls`: the client spoke TLS,
    /// asking for this server name (or the address it connected to).
    Ingress { port: u16, tls: Option<String> },
    /// The app calling a dependency: exchanges become mocks.
    Egress { dest: String },
}

/// What an observer needs to emit exchanges.
#[derive(Clone)]
pub(crate) struct RecordCtx {
    pub sink: RecordSink,
    pub role: Role,
    pub connection: u64,
    pub opened_at: SystemTime,
    pub opened: Instant,
}

impl RecordCtx {
    /// Wall-clock time of an instant during this connection.
    pub fn wall(&self, at: Instant) -> SystemTime {
        self.opened_at + at.saturating_duration_since(self.opened)
    }

    /// The wall-clock time of an instant during this connection, as written in test and mock files.
    pub fn time_of(&self, at: Instant) -> String {
        crate::store::format_time(time::OffsetDateTime::from(self.wall(at)))
    }

    /// Milliseconds from `from` to `to`, to the microsecond, as durations and latencies are written.
    pub fn ms(from: Instant, to: Instant) -> f64 {
        (to.saturating_duration_since(from).as_secs_f64() * 1_000_000.0).round() / 1000.0
    }

    /// A mock of `kind` for an exchange of this (outbound) connection from `started` to `done`, its envelope
    /// filled in; the caller sets its protocol section. `None` on an inbound connection.
    pub fn mock(&self, kind: &str, started: Instant, done: Instant) -> Option<Mock> {
        let Role::Egress { dest } = &self.role else { return None };
        let id = self.sink.next_mock_id();
        Some(Mock::new(kind, id, dest, self.connection, self.time_of(started), RecordCtx::ms(started, done)))
    }
}

/// Why an observer could not follow a connection. The proxy records the rest of the connection as opaque
/// bytes, with this reason in the mock's note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    /// Bytes that break the protocol's framing or grammar.
    #[error("{0}")]
    Malformed(String),
    /// Well-formed traffic that doppel does not follow (a message in a state it does not track).
    #[error("{0}")]
    Unsupported(String),
}

impl From<String> for ParseError {
    fn from(s: String) -> ParseError {
        ParseError::Malformed(s)
    }
}

impl From<&str> for ParseError {
    fn from(s: &str) -> ParseError {
        ParseError::Malformed(s.to_string())
    }
}

/// A passive observer of one proxied connection. It sees every byte after it was forwarded; an error means
/// it could not follow the protocol, and the proxy carries on recording the connection as opaque bytes.
pub(crate) trait Observer: Send {
    /// Bytes from the side that opened the connection.
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError>;
    /// Bytes from the side that accepted it.
    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError>;
    /// The connection ended (both directions closed, or the proxy stopped).
    fn close(&mut self, at: Instant);
    /// Asked after each piece is fed: `Some(n)` when the first `n` bytes of that piece completed a STARTTLS
    /// negotiation (PostgreSQL's SSLRequest answered `S`, MySQL's SSL request) and what follows on both
    /// sides is a TLS handshake. The proxy forwards those `n` bytes, decrypts both sides from there on, and
    /// keeps feeding this observer the plaintext. Asked once per piece; the observer forgets it after.
    fn tls_boundary(&mut self) -> Option<usize> {
        None
    }
}

/// Everything a protocol server needs to answer one connection of the app in replay.
#[derive(Clone)]
pub(crate) struct ServeCtx {
    pub pool: Arc<MockPool>,
    /// Where the app meant to connect.
    pub dest: String,
    /// doppel's CA, for protocols that switch to TLS in the middle of a connection (STARTTLS).
    pub ca: Option<Arc<crate::tls::Ca>>,
}

/// Answers the app's connections of one protocol from the mocks, for one replay of a test set. State that
/// connections share (Redis pub/sub: a message published on one connection reaches subscribers on others)
/// lives in the server, which lives as long as the replay of the set.
pub(crate) trait MockServer: Send + Sync {
    /// Serves one connection; bytes already read from it (to detect the protocol) are put back in front.
    fn serve(&self, conn: Conn, ctx: ServeCtx) -> BoxFuture<'static, ()>;
}

/// A mock server that keeps nothing between connections: each is served by `serve`.
pub(crate) fn stateless<F: Future<Output = ()> + Send + 'static>(
    serve: fn(Conn, ServeCtx) -> F,
) -> Arc<dyn MockServer> {
    Arc::new(Stateless(serve))
}

struct Stateless<F>(fn(Conn, ServeCtx) -> F);

impl<F: Future<Output = ()> + Send + 'static> MockServer for Stateless<F> {
    fn serve(&self, conn: Conn, ctx: ServeCtx) -> BoxFuture<'static, ()> {
        Box::pin((self.0)(conn, ctx))
    }
}

/// What a datagram protocol needs to record the app's datagrams.
pub(crate) struct DatagramCtx {
    pub sink: RecordSink,
    /// Where to send the app's datagrams while recording (the resolver, for DNS).
    pub upstream: Option<std::net::SocketAddr>,
}

pub(crate) trait Protocol: Send + Sync + 'static {
    /// The `kind` of its mocks and tests: `http`, `tcp`, `postgres`, ...
    fn name(&self) -> &'static str;
    /// Decides from the first bytes the client sent.
    fn detect_client(&self, first: &[u8], port: u16) -> Detect;
    /// Decides from the first bytes the server sent, for protocols where the server speaks first.
    fn detect_server(&self, _first: &[u8], _port: u16) -> Detect {
        Detect::No
    }
    /// Whether the server speaks first (a greeting): replay must not wait for the app's first bytes.
    fn server_first(&self) -> bool {
        false
    }
    /// Whether the connection recorded in `mock` began with the dependency speaking (or was refused), so
    /// replay must not wait for the app's first bytes. For most protocols that is `server_first`.
    fn recorded_server_first(&self, _mock: &Mock) -> bool {
        self.server_first()
    }
    /// The ALPN ids this protocol is spoken as inside TLS, most preferred first (`h2`, `http/1.1`):
    /// replay offers them to an app that calls a recorded TLS destination.
    fn alpn(&self) -> &'static [&'static [u8]] {
        &[]
    }
    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer>;
    /// The server that answers this protocol's connections during one replay of a test set.
    fn mock_server(&self, pool: &Arc<MockPool>) -> Arc<dyn MockServer>;
    /// The UDP port whose datagrams this protocol handles (DNS: 53); the sandbox catches them.
    fn datagram_port(&self) -> Option<u16> {
        None
    }
    /// Records the app's datagrams caught on `socket` (for protocols with a `datagram_port`).
    fn record_datagrams(&self, _socket: UdpSocket, _ctx: DatagramCtx) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    /// Answers the app's datagrams caught on `socket` from the mocks.
    fn serve_datagrams(&self, _socket: UdpSocket, _pool: Arc<MockPool>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    /// A short description of the write `mock` recorded (an `INSERT`, a `POST`, a Redis `SET`), or `None`
    /// for a read. A recorded write that a replayed test no longer makes fails that test.
    fn recorded_write(&self, _mock: &Mock) -> Option<String> {
        None
    }
    /// Feeds arbitrary bytes to every decoder of this protocol (`fuzz/`): nothing may panic. By default the
    /// bytes are a framed conversation given to the observer.
    fn fuzz(&self, data: &[u8]) {
        crate::fuzz::observe(self, data);
    }
}
