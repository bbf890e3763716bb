//! doppel: record a service's real traffic as tests and mocks, replay it hermetically, report regressions.
//!
//! The flow runs one way: `capture` brings connections to doppel, `protocols` turn bytes into exchanges,
//! `store` writes them; `replay` serves mocks and sends recorded requests, `diff` compares, `report` tells.
//! `load` sends the recorded requests to a deployment under load; `shadow` compares two deployments.

pub mod capture;
pub mod chain;
pub mod cli;
pub mod dedup;
pub mod demo;
pub mod diff;
pub mod error;
pub mod fuzz;
pub mod load;
pub mod noise;
pub mod protocols;
pub mod record;
pub mod replay;
pub mod report;
pub mod shadow;
pub mod store;
pub mod tls;
