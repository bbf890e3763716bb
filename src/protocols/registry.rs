//! The one list of protocols. Record's and replay's detection, replay's mock servers, the datagram
//! listeners, the on-disk sections of mocks and tests, and the fuzz targets all read it; a protocol is
//! added by creating its folder and adding its line here, and nothing else.
//!
//! A line names the protocol's kind (the name in its files), the value implementing `Protocol`, the type
//! of its mock section, and for protocols that bring inbound tests the types of a test's request and
//! response. Lines are in detection order; the last one, opaque TCP, takes what no other recognises.

use super::Protocol;
use super::{dns, http, http2, mysql, postgres, redis, tcp};

macro_rules! registry {
    ($( $kind:ident: $protocol:expr => { mock: $mock:ty $(, test: $req:ty => $resp:ty)? } ),* $(,)?) => {
        crate::store::format::sections! { $( $kind { mock: $mock $(, test: $req => $resp)? } ),* }

        /// Every protocol, in detection order; the last is the fallback.
        pub(crate) fn registry() -> &'static [&'static dyn Protocol] {
            static ALL: &[&dyn Protocol] = &[$(&$protocol),*];
            ALL
        }

        #[cfg(test)]
        mod kinds_match_names {
            use super::*;

            #[test]
            fn every_line_names_its_protocol() {
                $( assert_eq!(Protocol::name(&$protocol), stringify!($kind)); )*
            }
        }
    };
}

// Redis first: an inline `GET key` line is Redis, not an HTTP request (Redis says no to HTTP lines).
registry! {
    redis: redis::Redis => { mock: redis::RedisMock },
    http: http::Http => { mock: http::HttpMock, test: http::HttpRequest => http::HttpResponse },
    http2: http2::Http2 => { mock: http::HttpMock, test: http::HttpRequest => http::HttpResponse },
    mysql: mysql::Mysql => { mock: mysql::MysqlMock },
    postgres: postgres::Postgres => { mock: postgres::PostgresMock },
    dns: dns::Dns => { mock: dns::DnsMock },
    tcp: tcp::Tcp => { mock: tcp::TcpMock },
}

/// Opaque TCP: what a connection is recorded and served as when no other protocol recognises it.
pub(crate) fn fallback() -> &'static dyn Protocol {
    registry().last().copied().unwrap_or(&tcp::Tcp)
}
