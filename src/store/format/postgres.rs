//! On-disk form of recorded postgres exchanges (filled in by the postgres protocol).

use serde::{Deserialize, Serialize};

/// A recorded postgres exchange.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresMock {}
