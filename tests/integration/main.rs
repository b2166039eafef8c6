//! Integration tests: one binary, one module per area.

#[path = "../common/mod.rs"]
mod common;

mod matching;
mod tokens;
