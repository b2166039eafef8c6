//! The I/O edge (default feature `io`; signing with feature `sign`): the HTTP transport for
//! signed AWS calls, the Organizations client, the replay guards, the async driver of the state
//! machine, and the readers of the operator's files.

#[cfg(feature = "sign")]
pub(crate) mod credentials;
#[cfg(feature = "io")]
pub(crate) mod driver;
pub(crate) mod files;
#[cfg(feature = "io")]
pub(crate) mod jwks;
#[cfg(feature = "io")]
pub(crate) mod limits;
#[cfg(feature = "io")]
pub mod organizations;
#[cfg(feature = "io")]
pub(crate) mod replay;
pub(crate) mod token_file;
#[cfg(feature = "io")]
pub(crate) mod transport;
