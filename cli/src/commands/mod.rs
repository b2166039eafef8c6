//! One module per command; each exposes `run`.

pub(crate) mod check_token;
pub(crate) mod demo;
pub(crate) mod emulator;
pub(crate) mod join;
pub(crate) mod matching;
#[cfg(feature = "serve")]
pub(crate) mod serve;
pub(crate) mod sign;
pub(crate) mod verify;
