//! doppel: record a service's real traffic as tests and mocks, replay it hermetically, report regressions.
//!
//! The flow runs one way: `capture` brings connections to doppel, `protocols` turn bytes into exchanges,
//! `store` writes them; `harness` runs the app with its dependencies real (record) or mocked (replay);
//! `replay` sends recorded requests, `diff` compares, `report` tells. `load` sends the recorded requests to
//! a deployment under load; `shadow` compares two deployments. Only `cli` (for the binary) and `fuzz`
//! (for the fuzz targets and their smoke run) are public.

mod capture;
mod chain;
pub mod cli;
mod dedup;
mod demo;
mod diff;
mod error;
pub mod fuzz;
mod harness;
mod load;
mod noise;
mod privacy;
mod protocols;
mod record;
mod replay;
mod report;
mod shadow;
mod store;
mod tls;
