//! NATS (the core client protocol, with headers; JetStream rides on it as request/reply over `$JS.API.*`
//! subjects and `$JS.ACK.*` acknowledgements). The server speaks first (`INFO {...}`), so the protocol is
//! recognised from the server's greeting on any port.
//!
//! Record: `record::NatsObserver` follows both directions and writes one mock per CONNECT, per publish (with
//! the messages delivered because of it: replies, acknowledgements, fetched messages, echoes) and per
//! subscription (with the messages delivered to it that no publish of the connection caused). Replay:
//! `serve` plays the server: its own INFO, any CONNECT accepted, PING answered, publishes matched on
//! subject, headers and payload, their recorded deliveries sent to the live subscriptions. Request inboxes
//! (`_INBOX.<random>...`) differ on every run: recorded inbox tokens are mapped to live ones.

mod format;
mod record;
mod serve;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use super::{Detect, MockPool, MockServer, Observer, Protocol, RecordCtx};
pub(crate) use format::*;

pub(crate) struct Nats;

impl Protocol for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }

    /// A NATS client never speaks first.
    fn detect_client(&self, _first: &[u8], _port: u16) -> Detect {
        Detect::No
    }

    /// The greeting: `INFO` (any case), blanks, then a JSON object.
    fn detect_server(&self, first: &[u8], _port: u16) -> Detect {
        detect_info(first)
    }

    fn server_first(&self) -> bool {
        true
    }

    /// Publishes are writes (an event out, a JetStream message stored, an acknowledgement), except requests
    /// whose answer is not a JetStream acknowledgement: those may be reads (a price lookup, `$JS.API` calls).
    fn recorded_write(&self, mock: &super::Mock) -> Option<String> {
        let m = mock.nats.as_ref().filter(|m| m.op == NatsOp::Publish)?;
        match &m.reply_to {
            None => Some(format!("PUB {}", m.subject)),
            Some(_) if m.deliveries.iter().any(is_publish_ack) => Some(format!("JetStream publish to {}", m.subject)),
            Some(_) => None,
        }
    }

    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer> {
        Box::new(record::NatsObserver::new(ctx))
    }

    fn mock_server(&self, pool: &Arc<MockPool>) -> Arc<dyn MockServer> {
        Arc::new(serve::Server::new(pool))
    }
}

fn detect_info(first: &[u8]) -> Detect {
    let word = b"INFO";
    let n = first.len().min(word.len());
    if !first[..n].eq_ignore_ascii_case(&word[..n]) {
        return Detect::No;
    }
    let rest = &first[n..];
    if first.len() < word.len() {
        return Detect::NeedMore;
    }
    let blanks = rest.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    match rest.get(blanks) {
        None => Detect::NeedMore,
        Some(b'{') if blanks > 0 => Detect::Yes,
        Some(_) => Detect::No,
    }
}

/// Whether a delivery is JetStream's acknowledgement of a stored message: `{"stream": ..., "seq": ...}`.
fn is_publish_ack(d: &NatsDelivery) -> bool {
    let Ok(Some(bytes)) = d.payload.as_ref().map(|b| b.inline_bytes()).transpose().map(Option::flatten) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .is_ok_and(|v| v.get("stream").is_some() && v.get("seq").is_some() && v.get("error").is_none())
}

/// Whether `subject` is one a subscription on `pattern` receives (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Where request inboxes start: `_INBOX.<random>` (old style), `_INBOX.<random>.<random>` (new style).
const INBOX: &str = "_INBOX";

/// Recorded inbox tokens and the live tokens standing for them on one connection in replay.
#[derive(Debug, Default, Clone)]
pub struct InboxMap {
    tokens: HashMap<String, String>,
}

impl InboxMap {
    /// Whether a live subject may stand for a recorded one: equal, or both inboxes with as many tokens,
    /// each differing token consistent with what was mapped so far. Returns the new pairs it would map.
    pub fn fits(&self, recorded: &str, live: &str) -> Option<Vec<(String, String)>> {
        if recorded == live {
            return Some(Vec::new());
        }
        let r: Vec<&str> = recorded.split('.').collect();
        let l: Vec<&str> = live.split('.').collect();
        if r.len() != l.len() || r[0] != INBOX || l[0] != INBOX {
            return None;
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (r, l) in r.iter().zip(&l).skip(1) {
            let known = self.tokens.get(*r).or_else(|| pairs.iter().find(|(k, _)| k == r).map(|(_, v)| v));
            match known {
                Some(v) if v == l => {}
                Some(_) => return None,
                None if r == l => {}
                None if matches!(*r, "*" | ">") || matches!(*l, "*" | ">") => return None,
                None => pairs.push((r.to_string(), l.to_string())),
            }
        }
        Some(pairs)
    }

    /// Like `fits`, for optional subjects (a reply-to): both absent, or both present and fitting.
    pub fn fits_optional(&self, recorded: &Option<String>, live: &Option<String>) -> Option<Vec<(String, String)>> {
        match (recorded, live) {
            (None, None) => Some(Vec::new()),
            (Some(r), Some(l)) => self.fits(r, l),
            _ => None,
        }
    }

    pub fn learn(&mut self, pairs: Vec<(String, String)>) {
        self.tokens.extend(pairs);
    }

    /// A recorded subject with its inbox tokens replaced by the live ones.
    pub fn live(&self, recorded: &str) -> String {
        if !recorded.starts_with("_INBOX.") {
            return recorded.to_string();
        }
        recorded.split('.').map(|t| self.tokens.get(t).map(String::as_str).unwrap_or(t)).collect::<Vec<_>>().join(".")
    }
}

/// A payload as a person would read it in a message: text abridged, or its size.
pub fn describe_payload(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok("") => "(empty)".into(),
        Ok(s) if s.chars().count() > 80 => format!("{:?}... ({} bytes)", s.chars().take(60).collect::<String>(), s.len()),
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("<{} binary bytes>", payload.len()),
    }
}
