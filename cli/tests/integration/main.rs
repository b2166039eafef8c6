//! The `iam-join` binary as a process: its commands (exit codes, output, `verify`'s JSON), the
//! join client against fake services, and `iam-join serve` against hostile clients and files.
//! The tests that need a system package (Redis, curl) are in `tests/system`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../support/service.rs"]
mod service;

mod cli;
mod join_client;
mod serve;
mod serve_hostile;
mod serve_limits;
