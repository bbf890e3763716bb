//! One folder per protocol, each implementing `Protocol`: detect it from the first bytes, observe a
//! recorded connection and turn it into exchanges, and serve the app's connections from mocks in replay.
//! Adding a protocol = adding a folder and one line in `registry()`.

pub mod dns;
pub mod http;
pub mod http2;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod tcp;

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::capture::BoxFuture;
use crate::store::{Mock, RecordSink};

/// A byte stream to or from the app: a TCP socket, or the plaintext side of a TLS session on one.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A connection handed to a protocol server in replay.
pub type Conn = Box<dyn Stream>;

/// A stream with bytes already read from it put back in front (for a TLS handshake whose first bytes
/// arrived together with the plaintext before it).
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed { prefix, offset: 0, inner }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = (self.prefix.len() - self.offset).min(buf.remaining());
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the first bytes of a connection say about a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detect {
    Yes,
    No,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// Which side of the app a recorded connection is on.
#[derive(Debug, Clone)]
pub enum Role {
    /// A client calling the app on one of its ports: exchanges become test cases. `tls`: the client spoke TLS,
    /// asking for this server name (or the address it connected to).
    Ingress { port: u16, tls: Option<String> },
    /// The app calling a dependency: exchanges become mocks.
    Egress { dest: String },
}

/// What an observer needs to emit exchanges.
#[derive(Clone)]
pub struct RecordCtx {
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
}

/// A passive observer of one proxied connection. It sees every byte after it was forwarded; an error means
/// it could not follow the protocol, and the proxy carries on recording the connection as opaque bytes.
pub trait Observer: Send {
    /// Bytes from the side that opened the connection.
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), String>;
    /// Bytes from the side that accepted it.
    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), String>;
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

/// A request the mocks could not answer, with when it happened, so the test running then can fail.
#[derive(Debug, Clone)]
pub struct Miss {
    pub at: Instant,
    pub protocol: &'static str,
    pub dest: String,
    pub what: String,
}

/// Shared state of a replay: the mocks of the test set, which were used, and the misses.
pub struct MockPool {
    pub mocks: Vec<Mock>,
    /// When each mock started while recording, in milliseconds since the epoch.
    started_ms: Vec<Option<f64>>,
    /// The recorded time window of the test being replayed: mocks recorded inside it are preferred.
    window: Mutex<Option<(f64, f64)>>,
    used: Mutex<Vec<u32>>,
    misses: Mutex<Vec<Miss>>,
    /// Recorded value -> value the app has now, for chained values (ids, tokens) that the app produced anew
    /// in this replay: a mock recorded with the old value matches a request carrying the new one.
    rewrites: Mutex<Vec<(String, String)>>,
    /// Directory of the test set, for file bodies.
    pub dir: std::path::PathBuf,
}

impl MockPool {
    pub fn new(mocks: Vec<Mock>, dir: std::path::PathBuf) -> MockPool {
        let n = mocks.len();
        let started_ms = mocks.iter().map(|m| crate::store::parse_time_ms(&m.started_at)).collect();
        MockPool {
            mocks,
            started_ms,
            window: Mutex::new(None),
            used: Mutex::new(vec![0; n]),
            misses: Mutex::new(Vec::new()),
            rewrites: Mutex::new(Vec::new()),
            dir,
        }
    }

    /// Sets the recorded -> live values of chained values known so far.
    pub fn set_rewrites(&self, rewrites: Vec<(String, String)>) {
        if let Ok(mut r) = self.rewrites.lock() {
            *r = rewrites;
        }
    }

    pub fn rewrites(&self) -> Vec<(String, String)> {
        self.rewrites.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Whether a live value may stand for the value mock `i` recorded: equal; or a chained value the app
    /// produced anew in this replay (see `set_rewrites`); or the recorded value looked volatile (a UUID, a
    /// timestamp, a token) and the live one has the same shape. Protocols use it only after an exact match
    /// found nothing.
    pub fn stands_for(&self, i: usize, recorded: &str, live: &str) -> bool {
        if recorded == live {
            return true;
        }
        if self.rewrites().iter().any(|(r, l)| r == recorded && l == live) {
            return true;
        }
        let around = self.recorded_at_s(i).unwrap_or(0.0);
        crate::noise::shape::Shape::of(recorded, around).is_some_and(|s| s.matches(live))
    }

    /// When mock `i` was recorded, in seconds since the epoch.
    pub fn recorded_at_s(&self, i: usize) -> Option<f64> {
        self.started_ms.get(i).copied().flatten().map(|ms| ms / 1000.0)
    }

    /// Sets the recorded window (start and end, ms since the epoch) of the test about to run.
    pub fn set_window(&self, window: Option<(f64, f64)>) {
        if let Ok(mut w) = self.window.lock() {
            *w = window;
        }
    }

    /// Picks, among `candidates` (indexes in recorded order), the first unused one recorded during the
    /// current test's window, else the first unused one; when all were used, the last one again. Marks it
    /// used and tells whether it was a reuse.
    pub fn take(&self, candidates: &[usize]) -> Option<(usize, bool)> {
        let mut used = self.used.lock().ok()?;
        let (i, reused) = self.choose(candidates, &used)?;
        used[i] += 1;
        Some((i, reused))
    }

    /// The mock `take` would pick now, without taking it.
    pub fn peek(&self, candidates: &[usize]) -> Option<usize> {
        let used = self.used.lock().ok()?;
        self.choose(candidates, &used).map(|(i, _)| i)
    }

    fn choose(&self, candidates: &[usize], used: &[u32]) -> Option<(usize, bool)> {
        let window = self.window.lock().ok().and_then(|w| *w);
        let in_window = |i: &usize| match (window, self.started_ms[*i]) {
            (Some((from, to)), Some(t)) => t >= from - 1.0 && t <= to + 1.0,
            _ => false,
        };
        let pick = candidates
            .iter()
            .copied()
            .find(|i| used[*i] == 0 && in_window(i))
            .or_else(|| candidates.iter().copied().find(|i| used[*i] == 0));
        match pick {
            Some(i) => Some((i, false)),
            None => Some((*candidates.last()?, true)),
        }
    }

    pub fn miss(&self, protocol: &'static str, dest: &str, what: String) {
        tracing::debug!("mock miss ({protocol}, {dest}): {what}");
        if let Ok(mut m) = self.misses.lock() {
            m.push(Miss { at: Instant::now(), protocol, dest: dest.to_string(), what });
        }
    }

    pub fn misses(&self) -> Vec<Miss> {
        self.misses.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// How many times each mock was used.
    pub fn usage(&self) -> Vec<u32> {
        self.used.lock().map(|u| u.clone()).unwrap_or_default()
    }

    pub fn of_kind(&self, kind: &str) -> impl Iterator<Item = (usize, &Mock)> {
        self.mocks.iter().enumerate().filter(move |(_, m)| m.kind == kind)
    }
}

/// Everything a protocol server needs to answer one connection of the app in replay.
#[derive(Clone)]
pub struct ServeCtx {
    pub pool: Arc<MockPool>,
    /// Where the app meant to connect.
    pub dest: String,
    /// doppel's CA, for protocols that switch to TLS in the middle of a connection (STARTTLS).
    pub ca: Option<Arc<crate::tls::Ca>>,
}

pub trait Protocol: Send + Sync + 'static {
    /// The `kind` of its mocks: `http`, `tcp`, `postgres`, ...
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
    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer>;
    /// Answers one connection of the app from the mocks. `first` holds bytes already read from it.
    fn serve(&self, conn: Conn, first: Vec<u8>, ctx: ServeCtx) -> BoxFuture<'static, ()>;
}

/// Every protocol doppel parses, in detection order. The opaque `tcp` protocol is the fallback and is not
/// listed.
pub fn registry() -> Vec<Arc<dyn Protocol>> {
    // Redis first: an inline `GET key` line is Redis, not an HTTP request (Redis says no to HTTP lines).
    vec![
        Arc::new(redis::Redis),
        Arc::new(http::Http),
        Arc::new(http2::Http2),
        Arc::new(mysql::Mysql),
        Arc::new(postgres::Postgres),
    ]
}

/// The protocol of a connection from its first client bytes, or `None` while undecided. `done` means no
/// more bytes will come to decide with.
pub fn detect(
    protocols: &[Arc<dyn Protocol>],
    client_first: &[u8],
    server_first: &[u8],
    port: u16,
    done: bool,
) -> Option<Arc<dyn Protocol>> {
    let mut undecided = false;
    for p in protocols {
        let d = if !server_first.is_empty() && client_first.is_empty() {
            p.detect_server(server_first, port)
        } else {
            p.detect_client(client_first, port)
        };
        match d {
            Detect::Yes => return Some(p.clone()),
            Detect::NeedMore => undecided = true,
            Detect::No => {}
        }
    }
    if undecided && !done {
        return None;
    }
    Some(Arc::new(tcp::Tcp))
}
