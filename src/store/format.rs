//! The types written to disk. Version 1 of the format; `FORMAT_VERSION` changes when a file written by a
//! newer doppel could be misread by this one.
//!
//! The store owns the envelopes (what every test and mock says about itself: name, kind, times, noise);
//! each protocol owns the section its kind adds, in its own folder (`protocols/<name>/format.rs`). The
//! registry (`protocols/registry.rs`) names them through `sections!`, which defines `Mock` and the test
//! request and response types, so a new protocol needs no change here.

use serde::{Deserialize, Serialize};

use crate::protocols::{TestRequest, TestResponse};

pub const FORMAT_VERSION: u32 = 1;

/// A rule that marks part of a response as noise (not compared), or relaxes how it is compared.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseRule {
    /// A header name (case-insensitive) whose value is not compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A JSONPath over the response body (`$.created_at`, `$..id`, `$.items[*].token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// With `body`: compare the arrays at that path ignoring element order instead of ignoring them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_order: bool,
    /// The value may change but must keep this shape: the recorded value with its volatile parts written as
    /// slots (`"{uuid}"`, `"{timestamp}"`, `"sid={token:32}; Path=/"`; see `noise::shape`). Without `like`
    /// the selected value is not compared at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub like: Option<String>,
    /// Why the rule exists; `learned` rules were written by doppel and are safe to delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set on rules doppel learned by replaying the same build several times: when, and what it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned: Option<Learned>,
}

/// How a learned noise rule came about, so a reviewer can judge it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learned {
    /// The day it was learned (YYYY-MM-DD).
    pub date: String,
    /// How many responses of the same build were compared (runs, or target and secondary).
    pub runs: u32,
    /// The differing values seen, a few of them, as compact JSON or header text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
}

/// One recorded inbound exchange: a test case. Stored as `tests/<name>.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub version: u32,
    pub name: String,
    pub kind: String,
    /// RFC 3339 time the request started.
    pub recorded_at: String,
    /// Milliseconds the app took to answer when recorded.
    #[serde(default)]
    pub latency_ms: f64,
    /// The app port the request was sent to.
    pub port: u16,
    /// What was sent to the app: its type is the protocol's (see `kind`).
    pub request: TestRequest,
    /// What the app answered.
    pub response: TestResponse,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub noise: Vec<NoiseRule>,
    /// Values that looked volatile when recorded (timestamps, UUIDs, tokens, JWTs): each may change in
    /// replay as long as it keeps its shape (`like`). Written by `doppel record`; rewritten by `--rerecord`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volatile: Vec<NoiseRule>,
    /// The recorded value behind each `{{ chain.NAME }}` template in this test (a value an earlier response
    /// produced). In replay the template takes the value the app produced this time.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub chain: std::collections::BTreeMap<String, serde_json::Value>,
    /// Labels for `doppel test --tag`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The client spoke TLS to the app, asking for this server name (or the address it connected to):
    /// replay speaks TLS to the app with the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
}

impl TestCase {
    /// A test as recorded: no name yet (the store gives it one), no noise, chain or tags yet (marked after
    /// the recording).
    pub fn new(
        kind: &str,
        recorded_at: String,
        latency_ms: f64,
        port: u16,
        tls: Option<String>,
        request: TestRequest,
        response: TestResponse,
    ) -> TestCase {
        TestCase {
            version: FORMAT_VERSION,
            name: String::new(),
            kind: kind.to_string(),
            recorded_at,
            latency_ms,
            port,
            request,
            response,
            noise: Vec::new(),
            volatile: Vec::new(),
            chain: Default::default(),
            tags: Vec::new(),
            tls,
        }
    }
}
/// `set.yaml`: facts about one recording session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetMeta {
    pub version: u32,
    pub created_at: String,
    pub command: Vec<String>,
    /// Ports the app listened on, in the sandbox (or as given with --port).
    #[serde(default)]
    pub app_ports: Vec<u16>,
    /// `sandbox` or `explicit`.
    pub capture: String,
    /// Dependencies declared with --dep NAME=host:port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<String>,
}

/// `doppel.yaml` at the project root: defaults and global noise rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub version: Option<u32>,
    /// Where test sets live (default `doppel`).
    #[serde(default)]
    pub path: Option<String>,
    /// Noise rules applied to every test.
    #[serde(default)]
    pub noise: Vec<NoiseRule>,
    /// Set to false to compare the headers doppel ignores by default (Date, Server-Timing, request ids...).
    #[serde(default)]
    pub default_header_noise: Option<bool>,
    /// .proto files describing the app's gRPC services (as `--proto`).
    #[serde(default)]
    pub proto: Vec<String>,
    /// Directories for the imports of those files (as `--proto-path`).
    #[serde(default)]
    pub proto_path: Vec<String>,
    /// Set to false to stop chaining values from responses into later requests (record and replay).
    #[serde(default)]
    pub chain: Option<bool>,
    /// Set to false to stop flagging volatile-looking values (timestamps, ids, tokens) when recording.
    #[serde(default)]
    pub volatile: Option<bool>,
    /// Recorded writes a test may leave unmade (as `--allow-missing-write`): `*`, a protocol, a
    /// destination, or the start of the statement or request (`INSERT INTO audit_log`, `POST /v1/events`).
    #[serde(default)]
    pub allow_missing_writes: Vec<String>,
    /// What is sealed, pseudonymized or kept in clear when recording (see `privacy::PrivacyConfig`).
    #[serde(default)]
    pub privacy: crate::privacy::PrivacyConfig,
}

/// Defines the on-disk types whose parts come from the protocols: `Mock` (the envelope of every mock plus
/// one optional section per protocol, named by its kind: `http:`, `postgres:`, ...), and `TestRequest` and
/// `TestResponse`, the request and response of a test case, one variant per protocol that brings inbound
/// tests. A test file does not name its variant: the request and response are read as the types of its
/// `kind` (see `store::parse_test`), so `request:` and `response:` look the same for every protocol.
macro_rules! sections {
    ($( $kind:ident { mock: $mock:ty $(, test: $req:ty => $resp:ty)? } ),* $(,)?) => {
        /// One mock: a recorded outbound exchange, a document in `mocks.yaml`. Exactly one protocol section is
        /// set, and `kind` names it.
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct Mock {
            pub version: u32,
            pub id: u64,
            pub kind: String,
            /// Where the app connected (the original destination, or the declared dependency).
            pub dest: String,
            /// Capture connection number: mocks of one connection share it.
            #[serde(default)]
            pub connection: u64,
            pub started_at: String,
            #[serde(default)]
            pub duration_ms: f64,
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $kind: Option<$mock>,
            )*
        }

        impl Mock {
            /// A mock of `kind` with its envelope filled in; the caller sets the one protocol section.
            pub(crate) fn new(kind: &str, id: u64, dest: &str, connection: u64, started_at: String, duration_ms: f64) -> Mock {
                Mock {
                    version: $crate::store::FORMAT_VERSION,
                    id,
                    kind: kind.to_string(),
                    dest: dest.to_string(),
                    connection,
                    started_at,
                    duration_ms,
                    ..Mock::default()
                }
            }

            /// Checks that `kind` names the one protocol section that is set.
            pub(crate) fn validate(&self) -> $crate::error::Result<()> {
                let set: Vec<&str> =
                    [$((stringify!($kind), self.$kind.is_some())),*].iter().filter(|(_, on)| *on).map(|(k, _)| *k).collect();
                match set.as_slice() {
                    [k] if *k == self.kind => Ok(()),
                    [k] => Err(format!("kind is {:?} but the mock holds {k} data", self.kind)),
                    [] => Err(format!("mock {} has no {} section", self.id, self.kind)),
                    _ => Err(format!("mock {} holds more than one protocol section", self.id)),
                }
                .map_err($crate::error::Error::input)
            }
        }

        /// What a test sent to the app, in its protocol's form.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(non_camel_case_types)]
        pub(crate) enum TestRequest {
            $($( $kind($req), )?)*
        }

        /// What the app answered to a test, in its protocol's form.
        #[derive(Debug, Clone, PartialEq)]
        #[allow(non_camel_case_types)]
        pub(crate) enum TestResponse {
            $($( $kind($resp), )?)*
        }

        /// The kinds of test cases this doppel reads.
        pub(crate) const TEST_KINDS: &[&str] = &[$($( { let _: Option<$req> = None; stringify!($kind) }, )?)*];

        impl serde::Serialize for TestRequest {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self { $($( TestRequest::$kind(v) => { let v: &$req = v; v.serialize(s) } )?)* }
            }
        }

        impl serde::Serialize for TestResponse {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self { $($( TestResponse::$kind(v) => { let v: &$resp = v; v.serialize(s) } )?)* }
            }
        }

        impl<'de> serde::Deserialize<'de> for TestRequest {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let kind = $crate::store::format::parsing_kind();
                $($( if kind == stringify!($kind) { return <$req>::deserialize(d).map(TestRequest::$kind); } )?)*
                Err(serde::de::Error::custom(format!("unknown test kind {kind:?}")))
            }
        }

        impl<'de> serde::Deserialize<'de> for TestResponse {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let kind = $crate::store::format::parsing_kind();
                $($( if kind == stringify!($kind) { return <$resp>::deserialize(d).map(TestResponse::$kind); } )?)*
                Err(serde::de::Error::custom(format!("unknown test kind {kind:?}")))
            }
        }
    };
}
pub(crate) use sections;

thread_local! {
    /// The `kind` of the test file being parsed: serde gives a derived `Deserialize` no context, and the
    /// request and response of a test are read as the types of its kind.
    static PARSING_KIND: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The kind of the test being parsed on this thread (see `with_kind`).
pub(crate) fn parsing_kind() -> String {
    PARSING_KIND.with(|k| k.borrow().clone())
}

/// Runs `parse` with the request and response of tests read as the types of `kind`.
pub(crate) fn with_kind<T>(kind: &str, parse: impl FnOnce() -> T) -> T {
    let before = PARSING_KIND.with(|k| std::mem::replace(&mut *k.borrow_mut(), kind.to_string()));
    let out = parse();
    PARSING_KIND.with(|k| *k.borrow_mut() = before);
    out
}
