//! Integration tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod endpoints;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod faults;
mod layers;
mod machine;
mod matching;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod observability;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod org_rules;
mod organizations;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod pipeline;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod proofs;
mod properties;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod replicas;
mod requests;
mod sts_responses;
mod tokens;
