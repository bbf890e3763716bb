//! On-disk form of recorded redis exchanges (filled in by the redis protocol).

use serde::{Deserialize, Serialize};

/// A recorded redis exchange.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisMock {}
