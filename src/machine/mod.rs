//! The sans-IO verification: the state machine every caller drives, with no I/O of its own.

pub(crate) mod states;
pub(crate) mod verifier;
