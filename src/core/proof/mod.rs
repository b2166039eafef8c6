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
pub(crate) mod presigned;
pub(crate) mod replay;
#[cfg(feature = "web-identity")]
pub(crate) mod web_identity;

use std::fmt;
use std::time::SystemTime;

use crate::core::error::{Error, ErrorKind};
use crate::core::proof::forwarded::ForwardedRequest;
use crate::core::proof::policy::RequestPolicy;
use crate::core::proof::presigned::PresignedUrl;
pub use crate::core::proof::replay::{Method, Replay};

/// What an agent sent to prove its AWS identity.
#[non_exhaustive]
#[derive(Clone, Copy)]
pub enum Proof<'a> {
    /// The raw HTTP/1.1 bytes of a signed `POST / Action=GetCallerIdentity` (what Teleport
    /// agents send, and `iam-join sign` writes), replayed to STS as it was signed.
    Forwarded(&'a [u8]),
    /// A presigned `GET /?Action=GetCallerIdentity…` URL, or the EKS token `k8s-aws-v1.` +
    /// unpadded base64url of it (what `aws eks get-token --cluster-name <challenge>` prints),
    /// as received (at most [`MAX_PRESIGNED_BYTES`](crate::MAX_PRESIGNED_BYTES)). The challenge
    /// is not in it: the replay carries the issued one in the signed challenge header.
    Presigned(&'a [u8]),
    /// A web identity token from `sts:GetWebIdentityToken` (a JWT, at most
    /// [`MAX_WEB_IDENTITY_TOKEN_BYTES`](crate::MAX_WEB_IDENTITY_TOKEN_BYTES)), requested with the
    /// verifier's audience and the challenge as its audiences; checked offline against the
    /// issuer pinned for its account (feature `web-identity`, on with `io`).
    #[cfg(feature = "web-identity")]
    WebIdentityToken(&'a [u8]),
}

/// Lengths only: a proof is a bearer value while it is fresh.
impl fmt::Debug for Proof<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proof::Forwarded(raw) => write!(f, "Forwarded(<{} bytes>)", raw.len()),
            Proof::Presigned(raw) => write!(f, "Presigned(<{} bytes>)", raw.len()),
            #[cfg(feature = "web-identity")]
            Proof::WebIdentityToken(raw) => write!(f, "WebIdentityToken(<{} bytes>)", raw.len()),
        }
    }
}

/// A proof that passed every local check, by format. Adding a format adds a variant here and to
/// [`Proof`].
#[derive(Clone, Debug)]
pub(crate) enum CheckedProof {
    Forwarded(ForwardedRequest),
    Presigned(PresignedUrl),
    /// Checked offline: nothing to replay.
    #[cfg(feature = "web-identity")]
    WebIdentity(web_identity::VerifiedToken),
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
            Proof::Presigned(raw) => match issued {
                Some(c) => Ok(CheckedProof::Presigned(PresignedUrl::parse(raw, c, policy, now)?)),
                // The URL does not carry its challenge: the join must say which it was issued.
                None => Err(Error::about_request(
                    ErrorKind::MalformedRequest,
                    "a presigned URL does not carry its challenge: send the challenge it was issued with it",
                )),
            },
            #[cfg(feature = "web-identity")]
            Proof::WebIdentityToken(_) => Err(Error::config_invalid(
                "a web identity token needs its issuer's keys: start it with Verifier::start_web_identity",
            )),
        }
    }

    /// The challenge the proof signed.
    pub(crate) fn signed_challenge(&self) -> &str {
        match self {
            CheckedProof::Forwarded(r) => r.signed_challenge(),
            CheckedProof::Presigned(u) => u.signed_challenge(),
            #[cfg(feature = "web-identity")]
            CheckedProof::WebIdentity(t) => &t.challenge,
        }
    }

    /// When it stops being fresh: its signing time plus the allowed skew, or a presigned URL's
    /// expiry when that comes first.
    pub(crate) fn fresh_until(&self, policy: &RequestPolicy) -> SystemTime {
        match self {
            CheckedProof::Forwarded(r) => r.signed_at() + policy.skew(),
            CheckedProof::Presigned(u) => u.expires_at().min(u.signed_at() + policy.skew()),
            #[cfg(feature = "web-identity")]
            CheckedProof::WebIdentity(t) => t.fresh_until,
        }
    }

    /// The request STS must answer; none for a proof checked offline.
    pub(crate) fn replay(&self) -> Option<&Replay> {
        match self {
            CheckedProof::Forwarded(r) => Some(r.replay()),
            CheckedProof::Presigned(u) => Some(u.replay()),
            #[cfg(feature = "web-identity")]
            CheckedProof::WebIdentity(_) => None,
        }
    }
}
