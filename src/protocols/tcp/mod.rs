//! Opaque TCP: connections in a protocol doppel does not parse (or stopped parsing) are recorded as ordered
//! chunks with timings and replayed byte for byte.

mod format;

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Conn, Detect, Mock, MockPool, MockServer, Observer, ParseError, Protocol, RecordCtx, Role, ServeCtx};
use crate::store::Record;
pub(crate) use format::{Chunk, Direction, TcpMock};

/// Beyond this many bytes a connection's recording stops (the traffic still flows).
const MAX_RECORDED: usize = 64 * 1024 * 1024;

/// How the note of a connection whose parser gave up begins (the record summary counts them).
pub(crate) const GAVE_UP: &str = "parsing stopped";

pub(crate) struct Tcp;

impl Protocol for Tcp {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn detect_client(&self, _first: &[u8], _port: u16) -> Detect {
        Detect::Yes
    }

    fn recorded_server_first(&self, mock: &Mock) -> bool {
        mock.tcp.as_ref().is_some_and(|t| t.chunks.first().is_some_and(|c| c.dir == Direction::In))
    }

    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer> {
        Box::new(TcpObserver::new(ctx, None))
    }

    fn mock_server(&self, _pool: &Arc<MockPool>) -> Arc<dyn MockServer> {
        super::stateless(serve)
    }
}

/// A connection the app could not open while recording (the dependency was down): replay refuses it the
/// same way.
pub(crate) fn refused(ctx: &RecordCtx, dest: &str, error: String) -> Mock {
    let mut mock = Mock::new("tcp", ctx.sink.next_mock_id(), dest, ctx.connection, ctx.time_of(ctx.opened), 0.0);
    mock.tcp = Some(TcpMock { chunks: Vec::new(), note: None, closed_by: None, connect_error: Some(error) });
    mock
}

/// Whether every recorded connection to `dest` was refused: replay resets the app's connection at once.
pub(crate) fn refused_everywhere(pool: &MockPool, dest: &str) -> bool {
    let mut mocks = pool.mocks.iter().filter(|m| m.dest == dest).peekable();
    mocks.peek().is_some() && mocks.all(|m| m.tcp.as_ref().is_some_and(|t| t.connect_error.is_some()))
}

pub(crate) struct TcpObserver {
    ctx: RecordCtx,
    chunks: Vec<(Direction, Instant, Vec<u8>)>,
    size: usize,
    note: Option<String>,
    closed_by: Option<&'static str>,
    done: bool,
}

impl TcpObserver {
    pub(crate) fn new(ctx: RecordCtx, note: Option<String>) -> TcpObserver {
        TcpObserver { ctx, chunks: Vec::new(), size: 0, note, closed_by: None, done: false }
    }

    fn push(&mut self, dir: Direction, data: &[u8], at: Instant) {
        if data.is_empty() {
            return;
        }
        if self.size + data.len() > MAX_RECORDED {
            if self.size < MAX_RECORDED {
                self.size = MAX_RECORDED;
                let note = format!("recording stopped after {MAX_RECORDED} bytes");
                self.note = Some(match self.note.take() {
                    Some(n) => format!("{n}; {note}"),
                    None => note,
                });
            }
            return;
        }
        self.size += data.len();
        // Consecutive reads in one direction are one chunk: TCP segmentation is not part of the protocol.
        match self.chunks.last_mut() {
            Some((d, _, buf)) if *d == dir => buf.extend_from_slice(data),
            _ => self.chunks.push((dir, at, data.to_vec())),
        }
    }

    /// Notes which side closed first (the proxy calls this when one direction reaches end of stream).
    fn closed(&mut self, by_client: bool) {
        if self.closed_by.is_none() {
            self.closed_by = Some(if by_client { "app" } else { "dependency" });
        }
    }
}

impl Observer for TcpObserver {
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        if data.is_empty() {
            self.closed(true);
        }
        self.push(Direction::Out, data, at);
        Ok(())
    }

    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        if data.is_empty() {
            self.closed(false);
        }
        self.push(Direction::In, data, at);
        Ok(())
    }

    fn close(&mut self, at: Instant) {
        if self.done {
            return;
        }
        self.done = true;
        let Role::Egress { .. } = &self.ctx.role else {
            if !self.chunks.is_empty() {
                tracing::info!("a connection to the app's port is not HTTP; it was forwarded but not recorded");
            }
            return;
        };
        let chunks = self
            .chunks
            .iter()
            .map(|(dir, t, data)| Chunk::new(*dir, RecordCtx::ms(self.ctx.opened, *t), data))
            .collect();
        let Some(mut mock) = self.ctx.mock("tcp", self.ctx.opened, at) else { return };
        mock.tcp = Some(TcpMock {
            chunks,
            note: self.note.clone(),
            closed_by: self.closed_by.map(String::from),
            connect_error: None,
        });
        self.ctx.sink.submit(Record::Mock(Box::new(mock)));
    }
}

/// Picks the recorded connection to replay: same destination, unused, whose first bytes agree with `first`.
fn pick(ctx: &ServeCtx, first: &[u8]) -> Option<usize> {
    let fits = |m: &Mock| {
        let Some(tcp) = &m.tcp else { return false };
        let out: Vec<u8> =
            tcp.chunks.iter().find(|c| c.dir == Direction::Out).and_then(|c| c.bytes().ok()).unwrap_or_default();
        let n = first.len().min(out.len());
        first[..n] == out[..n]
    };
    let candidates: Vec<usize> =
        ctx.pool.of_kind("tcp").filter(|(_, m)| m.dest == ctx.dest && fits(m)).map(|(i, _)| i).collect();
    ctx.pool.take(&candidates).map(|(i, _)| i)
}

/// Whether a recorded conversation starts with the dependency (a greeting, or a refused connection).
fn server_first(m: &Mock) -> bool {
    m.tcp
        .as_ref()
        .is_some_and(|t| t.connect_error.is_some() || t.chunks.first().is_some_and(|c| c.dir == Direction::In))
}

async fn serve(mut conn: Conn, ctx: ServeCtx) {
    // Choosing the conversation needs the app's first bytes, unless the dependency spoke first.
    let speaks_first = ctx.pool.of_kind("tcp").any(|(_, m)| m.dest == ctx.dest && server_first(m));
    let mut first = Vec::new();
    if !speaks_first {
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(std::time::Duration::from_secs(2), conn.read(&mut buf)).await {
            first.extend_from_slice(&buf[..n]);
        }
    }
    let Some(i) = pick(&ctx, &first) else {
        let what = if first.is_empty() {
            format!("a connection to {}", ctx.dest)
        } else {
            format!(
                "a connection to {} starting with {:?}",
                ctx.dest,
                String::from_utf8_lossy(&first[..first.len().min(40)])
            )
        };
        ctx.pool.miss("tcp", &ctx.dest, format!("no recorded conversation for {what}"));
        return;
    };
    let Some(tcp) = ctx.pool.mocks[i].tcp.clone() else { return };
    if tcp.connect_error.is_some() {
        // Recorded as unreachable: the dispatcher resets such connections before they get here.
        return;
    }
    let mut pending_in = first;
    let mut buf = vec![0u8; 64 * 1024];
    for (n, chunk) in tcp.chunks.iter().enumerate() {
        let Ok(bytes) = chunk.bytes() else { return };
        match chunk.dir {
            Direction::In => {
                if conn.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Direction::Out => {
                while pending_in.len() < bytes.len() {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            if pending_in.is_empty() && n > 0 {
                                return; // the app hung up between messages: fine
                            }
                            ctx.pool.miss(
                                "tcp",
                                &ctx.dest,
                                format!("the app closed the connection {}", describe(n, &tcp.chunks)),
                            );
                            return;
                        }
                        Ok(k) => pending_in.extend_from_slice(&buf[..k]),
                    }
                }
                let got: Vec<u8> = pending_in.drain(..bytes.len()).collect();
                if got != bytes {
                    let at = got.iter().zip(&bytes).position(|(a, b)| a != b).unwrap_or(0);
                    ctx.pool.miss(
                        "tcp",
                        &ctx.dest,
                        format!(
                            "bytes sent to {} differ from the recording at byte {at} of chunk {n}: expected {:?}, got {:?}",
                            ctx.dest,
                            String::from_utf8_lossy(&bytes[at..(at + 24).min(bytes.len())]),
                            String::from_utf8_lossy(&got[at..(at + 24).min(got.len())])
                        ),
                    );
                    return;
                }
            }
        }
    }
    if tcp.closed_by.as_deref() == Some("dependency") {
        return;
    }
    // The recording ends with the app closing: wait for it, reporting anything more it sends.
    if let Ok(k) = conn.read(&mut buf).await
        && k > 0
    {
        ctx.pool.miss("tcp", &ctx.dest, format!("the app sent {k} bytes more to {} than recorded", ctx.dest));
    }
}

fn describe(n: usize, chunks: &[Chunk]) -> String {
    format!("before sending chunk {n} of {}", chunks.len())
}
