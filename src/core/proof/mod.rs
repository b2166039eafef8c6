//! Proofs of an AWS identity, and the one request each makes STS answer.
//!
//! A joining agent proves who it is with a [`Proof`]. The verifier checks everything about it
//! that can be checked locally, then either replays a request to STS (which alone can check the
//! signature) or, for formats signed by a key the verifier can check itself, decides offline.
//! What is replayed is a [`Replay`]: a method, an endpoint, a target and headers, built only from
//! validated parts, which a transport sends as is. Whatever the format, STS's answer is read by
//! the same strict parser, and the identity meets the same rules, claim and verdict.
//!
//! **Adding a format** is one module here and one [`Proof`] variant: the module validates the
//! format's bytes into a checked value that yields the endpoint, the signing time, the challenge
//! it signed and the [`Replay`]; the state machine's match on the checked proof gains one arm.
//! Tokens, rules, matching, the claim, verdicts and error kinds do not change.

pub(crate) mod forwarded;
pub(crate) mod policy;
pub(crate) mod replay;

use std::fmt;
use std::time::SystemTime;

use crate::core::error::Error;
use crate::core::proof::forwarded::ForwardedRequest;
use crate::core::proof::policy::RequestPolicy;
pub use crate::core::proof::replay::{Method, Replay};

/// What an agent sent to prove its AWS identity.
#[non_exhaustive]
#[derive(Clone, Copy)]
pub enum Proof<'a> {
    /// The raw HTTP/1.1 bytes of a signed `POST / Action=GetCallerIdentity` (what Teleport
    /// agents send, and `iam-join sign` writes), replayed to STS as it was signed.
    Forwarded(&'a [u8]),
}

/// Lengths only: a proof is a bearer value while it is fresh.
impl fmt::Debug for Proof<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proof::Forwarded(raw) => write!(f, "Forwarded(<{} bytes>)", raw.len()),
        }
    }
}

/// A proof that passed every local check, by format. Adding a format adds a variant here and to
/// [`Proof`].
#[derive(Clone, Debug)]
pub(crate) enum CheckedProof {
    Forwarded(ForwardedRequest),
}

impl CheckedProof {
    pub(crate) fn check(
        proof: Proof<'_>,
        issued: Option<&str>,
        policy: &RequestPolicy,
        now: SystemTime,
    ) -> Result<Self, Error> {
        match proof {
            Proof::Forwarded(raw) => Ok(CheckedProof::Forwarded(match issued {
                Some(c) => ForwardedRequest::parse(raw, c, policy, now)?,
                None => ForwardedRequest::parse_unchecked(raw, policy, now)?,
            })),
        }
    }

    /// The challenge the proof signed.
    pub(crate) fn signed_challenge(&self) -> &str {
        match self {
            CheckedProof::Forwarded(r) => r.signed_challenge(),
        }
    }

    /// When it was signed.
    pub(crate) fn signed_at(&self) -> SystemTime {
        match self {
            CheckedProof::Forwarded(r) => r.signed_at(),
        }
    }

    /// The request STS must answer.
    pub(crate) fn replay(&self) -> &Replay {
        match self {
            CheckedProof::Forwarded(r) => r.replay(),
        }
    }
}
