//! On-disk form of DNS answers.

use serde::{Deserialize, Serialize};

/// A recorded DNS answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsMock {
    pub name: String,
    /// Record type: A, AAAA, CNAME, ... or the number.
    pub qtype: String,
    /// Response code: NOERROR, NXDOMAIN, SERVFAIL, ...
    pub rcode: String,
    /// Answer records in presentation form (`A 10.0.0.7 ttl=60`).
    #[serde(default)]
    pub answers: Vec<String>,
    /// The whole response message, so that replay can send exactly what was answered.
    pub response_base64: String,
}
