//! HTTP/1.x: test cases on the app's ports, mocks for the app's calls to HTTP dependencies.

pub mod client;
pub mod parse;
mod record;
pub mod serve;
pub mod wire;

use super::{BoxFuture, Conn, Detect, Observer, Protocol, RecordCtx, ServeCtx};

pub struct Http;

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

    fn observer(&self, ctx: RecordCtx) -> Box<dyn Observer> {
        Box::new(record::HttpObserver::new(ctx))
    }

    fn serve(&self, conn: Conn, first: Vec<u8>, ctx: ServeCtx) -> BoxFuture<'static, ()> {
        Box::pin(serve::serve(conn, first, ctx))
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
