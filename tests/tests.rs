//! doppel's integration tests, one binary (ripgrep's layout): each suite is a module in its own file,
//! `tests/<suite>.rs`, sharing the helpers of `tests/common/`. `cargo test --test integration http_spine::`
//! runs one suite.

mod common;

mod faults;
mod fuzz_smoke;
mod grpc;
mod house;
mod http2;
mod http_spine;
mod https;
mod load;
mod mysql;
mod nats;
mod noise;
mod postgres;
mod privacy;
mod redis;
mod regressions;
mod shadow;
mod signup;
mod spine_faults;
