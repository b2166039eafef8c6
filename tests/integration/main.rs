//! Integration tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

#[cfg(feature = "cli")]
mod cli;
mod endpoints;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod faults;
#[cfg(feature = "cli")]
mod join_client;
mod layers;
mod matching;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod observability;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod org_rules;
mod organizations;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod pipeline;
mod properties;
#[cfg(all(feature = "agent", feature = "emulator"))]
mod replicas;
mod requests;
#[cfg(feature = "serve")]
mod serve;
#[cfg(feature = "serve")]
mod serve_hostile;
mod sts_responses;
mod tokens;
