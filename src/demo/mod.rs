//! `doppel demo`: placeholder.
pub mod app;
pub mod rates;
use crate::error::Result;
pub async fn run(_args: crate::cli::DemoArgs) -> Result<i32> { Ok(0) }
