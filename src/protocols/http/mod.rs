//! HTTP/1.x: test cases on the app's ports, mocks for the app's calls to HTTP dependencies.

pub(crate) mod client;
mod format;
pub(crate) mod parse;
mod record;
pub(crate) mod serve;
pub(crate) mod wire;

use super::{Detect, Observer, Protocol, RecordCtx};
pub(crate) use format::*;

pub(crate) struct Http;

const METHODS: [&[u8]; 9] =
    [b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE "];

impl Protocol for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn detect_client(&self, first: &[u8], _port: u16) -> Detect {
        for m in METHODS {
            if first.starts_with(m) {
                return Detect::Yes;
            }
            if m.starts_with(first) {
                return Detect::NeedMore;
            }
        }
        Detect::No
    }

    fn recorded_write(&self, mock: &super::Mock) -> Option<String> {
        mock.http.as_ref().and_then(format::recorded_write)
    }

    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer> {
        Box::new(record::HttpObserver::new(ctx))
    }

    fn mock_server(
        &self,
        _pool: &std::sync::Arc<crate::protocols::MockPool>,
    ) -> std::sync::Arc<dyn crate::protocols::MockServer> {
        crate::protocols::stateless(serve::serve)
    }

    fn alpn(&self) -> &'static [&'static [u8]] {
        &[b"http/1.1"]
    }

    /// The framing parser in both directions, split where the first byte says, then the observer.
    fn fuzz(&self, data: &[u8]) {
        use parse::{Parser, Side};
        let split = data.first().map(|b| *b as usize).unwrap_or(0).min(data.len());
        for side in [Side::Request, Side::Response] {
            let mut p = Parser::new(side);
            p.expect_response_to("GET");
            let mut out = Vec::new();
            if p.feed(&data[..split], &mut out).is_ok() && p.feed(&data[split..], &mut out).is_ok() {
                let _ = p.finish(&mut out);
            }
        }
        crate::fuzz::observe(self, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection() {
        assert_eq!(Http.detect_client(b"GET / HTTP/1.1\r\n", 80), Detect::Yes);
        assert_eq!(Http.detect_client(b"PO", 80), Detect::NeedMore);
        assert_eq!(Http.detect_client(b"PRI * HTTP/2.0", 80), Detect::No);
        assert_eq!(Http.detect_client(b"\x16\x03\x01", 443), Detect::No);
    }
}
