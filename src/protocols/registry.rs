//! What the one list of protocols (the `registry!` lines in `protocols/mod.rs`) expands to. Record's and
//! replay's detection, replay's mock servers, the datagram listeners, the on-disk sections of mocks and
//! tests, and the fuzz targets all read it; a protocol is added by creating its folder and adding its line,
//! and nothing else: the line also declares the folder's module.
//!
//! A line names the protocol's kind (the name in its files and its folder), the value implementing
//! `Protocol`, the type of its mock section, and for protocols that bring inbound tests the types of a
//! test's request and response. Lines are in detection order; the last one, opaque TCP, takes what no
//! other recognises.

use super::{Protocol, registry, tcp};

macro_rules! registry {
    ($( $kind:ident: $protocol:expr => { mock: $mock:ty $(, test: $req:ty => $resp:ty)? } ),* $(,)?) => {
        $( pub(crate) mod $kind; )*

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

/// Opaque TCP: what a connection is recorded and served as when no other protocol recognises it.
pub(crate) fn fallback() -> &'static dyn Protocol {
    registry().last().copied().unwrap_or(&tcp::Tcp)
}
