//! The pure core: parsing and deciding. No clock (`now` is a parameter), no network, no file
//! system, no async runtime; only parsing crates. Every other layer builds on it.

pub(crate) mod arn;
pub mod challenge;
pub(crate) mod endpoint;
pub(crate) mod error;
pub(crate) mod identity;
pub(crate) mod matcher;
pub(crate) mod membership;
pub(crate) mod proof;
pub(crate) mod response;
pub(crate) mod rule;
pub(crate) mod sigv4;
pub(crate) mod text;
pub(crate) mod token;
