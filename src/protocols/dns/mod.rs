//! DNS: while recording, the app's queries (over UDP, caught by the sandbox, or over TCP to port 53) are
//! forwarded to the real resolver and every answer is kept; in replay, queries are answered from those
//! answers (the query id patched in), so names resolve with no network at all.

mod format;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hickory_proto::op::Message;
use tokio::net::UdpSocket;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BoxFuture, Conn, DatagramCtx, Detect, Mock, MockPool, MockServer, Observer, ParseError, Protocol};
use super::{RecordCtx, Role, ServeCtx};
use crate::store::{Record, RecordSink, format_time};
pub(crate) use format::DnsMock;

pub(crate) struct Dns;

/// The port DNS servers listen on.
const PORT: u16 = 53;

impl Protocol for Dns {
    fn name(&self) -> &'static str {
        "dns"
    }

    /// DNS over TCP: a two-byte length, then a query, on port 53.
    fn detect_client(&self, first: &[u8], port: u16) -> Detect {
        if port != PORT {
            return Detect::No;
        }
        match framed(first) {
            Some((msg, _)) if question(msg).is_some() => Detect::Yes,
            Some(_) => Detect::No,
            None if first.len() < 2 + 12 => Detect::NeedMore,
            None => Detect::No,
        }
    }

    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer> {
        Box::new(TcpObserver { ctx, client: Vec::new(), server: Vec::new(), asked: Vec::new() })
    }

    fn mock_server(&self, _pool: &Arc<MockPool>) -> Arc<dyn MockServer> {
        super::stateless(serve_stream)
    }

    fn datagram_port(&self) -> Option<u16> {
        Some(PORT)
    }

    fn record_datagrams(&self, socket: UdpSocket, ctx: DatagramCtx) -> BoxFuture<'static, ()> {
        Box::pin(record(socket, ctx.upstream, ctx.sink))
    }

    fn serve_datagrams(&self, socket: UdpSocket, pool: Arc<MockPool>) -> BoxFuture<'static, ()> {
        Box::pin(serve(socket, pool))
    }

    fn fuzz(&self, data: &[u8]) {
        let _ = question(data);
        let _ = describe(data);
        crate::fuzz::observe(self, data);
    }
}

/// The first length-prefixed message of a DNS-over-TCP stream, and the bytes after it.
fn framed(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = buf.split_first_chunk::<2>()?;
    let len = u16::from_be_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A DNS-over-TCP connection: each query and its answer become a mock.
struct TcpObserver {
    ctx: RecordCtx,
    client: Vec<u8>,
    server: Vec<u8>,
    /// Queries waiting for their answer, with when they were sent.
    asked: Vec<(Vec<u8>, Instant)>,
}

impl Observer for TcpObserver {
    fn client(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        self.client.extend_from_slice(data);
        while let Some((msg, rest)) = framed(&self.client) {
            if question(msg).is_none() {
                return Err(ParseError::Malformed("a DNS-over-TCP message that is not a query".into()));
            }
            let (msg, rest_len) = (msg.to_vec(), rest.len());
            self.asked.push((msg, at));
            self.client.drain(..self.client.len() - rest_len);
        }
        Ok(())
    }

    fn server(&mut self, data: &[u8], at: Instant) -> Result<(), ParseError> {
        self.server.extend_from_slice(data);
        while let Some((msg, rest)) = framed(&self.server) {
            let (answer, rest_len) = (msg.to_vec(), rest.len());
            self.server.drain(..self.server.len() - rest_len);
            let id = answer.get(..2);
            let Some(k) = self.asked.iter().position(|(q, _)| q.get(..2) == id) else {
                return Err(ParseError::Malformed("a DNS answer to no query".into()));
            };
            let (query, sent) = self.asked.remove(k);
            let Role::Egress { dest } = &self.ctx.role else { continue };
            let Some(mock) = mock_of(
                &query,
                &answer,
                &self.ctx.sink,
                dest,
                self.ctx.connection,
                self.ctx.wall(sent),
                sent.elapsed(),
            ) else {
                continue;
            };
            let _ = at;
            self.ctx.sink.submit(Record::Mock(Box::new(mock)));
        }
        Ok(())
    }

    fn close(&mut self, _at: Instant) {}
}

/// A recorded query and answer as a mock.
fn mock_of(
    query: &[u8],
    answer: &[u8],
    sink: &RecordSink,
    dest: &str,
    connection: u64,
    started_at: SystemTime,
    took: Duration,
) -> Option<Mock> {
    let (name, qtype) = question(query)?;
    let (rcode, answers) = describe(answer).unwrap_or_default();
    let mut mock = Mock::new(
        "dns",
        sink.next_mock_id(),
        dest,
        connection,
        format_time(time::OffsetDateTime::from(started_at)),
        took.as_secs_f64() * 1000.0,
    );
    mock.dns = Some(DnsMock { name, qtype, rcode, answers, response_base64: B64.encode(answer) });
    Some(mock)
}

/// Answers a DNS-over-TCP connection from the recorded answers.
async fn serve_stream(mut conn: Conn, ctx: ServeCtx) {
    let mut input = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        while let Some((msg, rest)) = framed(&input) {
            let (query, rest_len) = (msg.to_vec(), rest.len());
            input.drain(..input.len() - rest_len);
            let Some(reply) = answer(&query, &ctx.pool) else { return };
            let Ok(len) = u16::try_from(reply.len()) else { return };
            if conn.write_all(&len.to_be_bytes()).await.is_err() || conn.write_all(&reply).await.is_err() {
                return;
            }
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => input.extend_from_slice(&buf[..n]),
        }
    }
}

/// The question of a query: lower-case name with trailing dot, record type.
pub(crate) fn question(packet: &[u8]) -> Option<(String, String)> {
    let msg = Message::from_vec(packet).ok()?;
    let q = msg.queries.first()?;
    Some((q.name().to_ascii().to_ascii_lowercase(), q.query_type().to_string()))
}

/// Readable summary of a response: rcode and answers (`A 10.0.0.7 ttl=60`).
pub(crate) fn describe(packet: &[u8]) -> Option<(String, Vec<String>)> {
    let msg = Message::from_vec(packet).ok()?;
    let answers = msg.answers.iter().map(|r| format!("{} {} ttl={}", r.record_type(), r.data, r.ttl)).collect();
    Some((format!("{:?}", msg.metadata.response_code).to_ascii_uppercase(), answers))
}

/// The first nameserver of /etc/resolv.conf.
pub(crate) fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let ip = l.trim().strip_prefix("nameserver")?.trim().split('%').next()?;
        ip.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
    })
}

/// Forwards the app's queries to `upstream`, answers the app, records each exchange.
async fn record(socket: UdpSocket, upstream: Option<SocketAddr>, sink: RecordSink) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
        let query = buf[..n].to_vec();
        let socket = socket.clone();
        let sink = sink.clone();
        tokio::spawn(async move {
            let Some(upstream) = upstream else {
                tracing::warn!("no DNS resolver found in /etc/resolv.conf; use --dns-upstream");
                return;
            };
            let started = Instant::now();
            let started_at = SystemTime::now();
            let Some(answer) = forward(&query, upstream).await else { return };
            let _ = socket.send_to(&answer, from).await;
            if let Some(mock) = mock_of(&query, &answer, &sink, &upstream.to_string(), 0, started_at, started.elapsed())
            {
                sink.submit(Record::Mock(Box::new(mock)));
            }
        });
    }
}

async fn forward(query: &[u8], upstream: SocketAddr) -> Option<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.send_to(query, upstream).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf)).await.ok()?.ok()?;
    Some(buf[..n].to_vec())
}

/// Answers the app's queries from the recorded answers; an unknown name gets NXDOMAIN and is reported.
async fn serve(socket: UdpSocket, pool: Arc<MockPool>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { continue };
        let query = &buf[..n];
        let Some(reply) = answer(query, &pool) else { continue };
        let _ = socket.send_to(&reply, from).await;
    }
}

fn answer(query: &[u8], pool: &MockPool) -> Option<Vec<u8>> {
    let (name, qtype) = question(query)?;
    let candidates: Vec<usize> = pool
        .of_kind("dns")
        .filter(|(_, m)| m.dns.as_ref().is_some_and(|d| d.name.eq_ignore_ascii_case(&name) && d.qtype == qtype))
        .map(|(i, _)| i)
        .collect();
    let mut reply = match pool.take(&candidates) {
        Some((i, _)) => B64.decode(&pool.mocks[i].dns.as_ref()?.response_base64).ok()?,
        None => {
            pool.miss("dns", "dns", format!("DNS {qtype} {name} was not recorded (answered NXDOMAIN)"));
            let q = Message::from_vec(query).ok()?;
            let mut m =
                Message::error_msg(q.metadata.id, q.metadata.op_code, hickory_proto::op::ResponseCode::NXDomain);
            m.add_queries(q.queries.clone());
            m.metadata.recursion_desired = q.metadata.recursion_desired;
            m.metadata.recursion_available = true;
            m.to_vec().ok()?
        }
    };
    if reply.len() >= 2 && query.len() >= 2 {
        reply[..2].copy_from_slice(&query[..2]);
    }
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType, rdata::A};

    #[test]
    fn questions_and_answers_round_trip() {
        let mut q = Message::new(0x1234, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii("API.Example.com.").unwrap(), RecordType::A));
        let query = q.to_vec().unwrap();
        assert_eq!(question(&query), Some(("api.example.com.".into(), "A".into())));
        let mut r = Message::response(0x1234, OpCode::Query);
        r.add_query(Query::query(Name::from_ascii("api.example.com.").unwrap(), RecordType::A));
        r.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("api.example.com.").unwrap(),
            60,
            RData::A(A::new(10, 0, 0, 7)),
        ));
        let (rcode, answers) = describe(&r.to_vec().unwrap()).unwrap();
        assert_eq!(rcode, "NOERROR");
        assert_eq!(answers, vec!["A 10.0.0.7 ttl=60"]);
    }
}
