//! DNS over UDP: while recording, the app's queries are forwarded to the real resolver and every answer is
//! kept; in replay, queries are answered from those answers (the query id patched in), so names resolve
//! with no network at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hickory_proto::op::Message;
use tokio::net::UdpSocket;

use super::MockPool;
use crate::store::{DnsMock, FORMAT_VERSION, Mock, Record, RecordSink, format_time};

/// The question of a query: lower-case name with trailing dot, record type.
pub fn question(packet: &[u8]) -> Option<(String, String)> {
    let msg = Message::from_vec(packet).ok()?;
    let q = msg.queries.first()?;
    Some((q.name().to_ascii().to_ascii_lowercase(), q.query_type().to_string()))
}

/// Readable summary of a response: rcode and answers (`A 10.0.0.7 ttl=60`).
pub fn describe(packet: &[u8]) -> Option<(String, Vec<String>)> {
    let msg = Message::from_vec(packet).ok()?;
    let answers = msg.answers.iter().map(|r| format!("{} {} ttl={}", r.record_type(), r.data, r.ttl)).collect();
    Some((format!("{:?}", msg.metadata.response_code).to_ascii_uppercase(), answers))
}

/// The first nameserver of /etc/resolv.conf.
pub fn system_resolver() -> Option<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    text.lines().find_map(|l| {
        let ip = l.trim().strip_prefix("nameserver")?.trim().split('%').next()?;
        ip.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
    })
}

/// Forwards the app's queries to `upstream`, answers the app, records each exchange.
pub async fn record(socket: UdpSocket, upstream: Option<SocketAddr>, sink: RecordSink) {
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
            let Some((name, qtype)) = question(&query) else { return };
            let (rcode, answers) = describe(&answer).unwrap_or_default();
            sink.submit(Record::Mock(Box::new(Mock {
                version: FORMAT_VERSION,
                id: sink.next_mock_id(),
                kind: "dns".into(),
                dest: upstream.to_string(),
                connection: 0,
                started_at: format_time(time::OffsetDateTime::from(started_at)),
                duration_ms: started.elapsed().as_secs_f64() * 1000.0,
                dns: Some(DnsMock { name, qtype, rcode, answers, response_base64: B64.encode(&answer) }),
                ..Mock::default()
            })));
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
pub async fn serve(socket: UdpSocket, pool: Arc<MockPool>) {
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
