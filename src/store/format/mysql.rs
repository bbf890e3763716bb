//! On-disk form of recorded mysql exchanges (filled in by the mysql protocol).

use serde::{Deserialize, Serialize};

/// A recorded mysql exchange.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlMock {}
