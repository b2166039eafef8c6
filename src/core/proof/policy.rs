//! How proofs are checked, whatever their format: which STS endpoints are trusted, which header
//! carries the challenge, how much clock skew is allowed.

use std::time::{Duration, SystemTime};

use crate::core::challenge::DEFAULT_CHALLENGE_HEADER;
use crate::core::endpoint::EndpointPolicy;
use crate::core::error::{Error, ErrorKind};

/// The largest clock skew allowed between `X-Amz-Date` and `now`, and the default. STS itself
/// refuses signatures older than 15 minutes; a wider window would only widen replays.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// Headers that must never be signed (and so never forwarded): hop-by-hop and proxy headers
/// would let the agent steer the connection rather than the request.
pub(crate) fn is_forbidden_signed(name: &str) -> bool {
    matches!(
        name,
        "connection" | "transfer-encoding" | "te" | "upgrade" | "expect" | "forwarded" | "keep-alive" | "trailer"
    ) || name.starts_with("proxy-")
        || name.starts_with("x-forwarded-")
}

/// How forwarded requests are checked.
#[derive(Clone, Debug)]
pub struct RequestPolicy {
    pub(crate) endpoints: EndpointPolicy,
    pub(crate) challenge_header: String,
    pub(crate) max_skew: Duration,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        Self {
            endpoints: EndpointPolicy::default(),
            challenge_header: DEFAULT_CHALLENGE_HEADER.to_owned(),
            max_skew: MAX_CLOCK_SKEW,
        }
    }
}

impl RequestPolicy {
    /// The defaults: `aws` partition endpoints, `x-teleport-challenge`, 15 minutes of skew.
    pub fn new() -> Self {
        Self::default()
    }

    /// Which STS endpoints are trusted.
    pub fn endpoints(mut self, endpoints: EndpointPolicy) -> Self {
        self.endpoints = endpoints;
        self
    }

    /// The endpoint policy in force.
    pub fn endpoint_policy(&self) -> &EndpointPolicy {
        &self.endpoints
    }

    /// The header the challenge must travel in (case-insensitive; stored lowercase). Refuses
    /// names that are not HTTP tokens and names of headers SigV4 or HTTP give a meaning to.
    pub fn challenge_header(mut self, name: &str) -> Result<Self, Error> {
        let lower = name.to_ascii_lowercase();
        let token =
            !lower.is_empty() && lower.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        let reserved = matches!(
            lower.as_str(),
            "host" | "authorization" | "x-amz-date" | "x-amz-security-token" | "content-length" | "content-type"
        ) || is_forbidden_signed(&lower);
        if !token || reserved {
            return Err(Error::config_invalid(format!(
                "{} cannot be the challenge header",
                crate::core::text::quoted_shown(name)
            )));
        }
        self.challenge_header = lower;
        Ok(self)
    }

    /// The challenge header name, lowercase.
    pub fn challenge_header_name(&self) -> &str {
        &self.challenge_header
    }

    /// The largest allowed difference between `X-Amz-Date` and `now`. Refuses more than
    /// [`MAX_CLOCK_SKEW`].
    pub fn max_skew(mut self, skew: Duration) -> Result<Self, Error> {
        if skew > MAX_CLOCK_SKEW {
            return Err(Error::config_invalid("max clock skew cannot exceed 15 minutes"));
        }
        self.max_skew = skew;
        Ok(self)
    }

    /// The allowed clock skew.
    pub fn skew(&self) -> Duration {
        self.max_skew
    }

    /// Refuses, as `request_expired`, a signing time (`what`, e.g. `X-Amz-Date`) further from
    /// `now` than the allowed skew, either way. The client is told how far off its own time is,
    /// not the window.
    pub(crate) fn check_fresh(&self, what: &str, signed_at: SystemTime, now: SystemTime) -> Result<(), Error> {
        let skew = match now.duration_since(signed_at) {
            Ok(age) => age,
            Err(ahead) => ahead.duration(),
        };
        if skew <= self.max_skew {
            return Ok(());
        }
        let when = if signed_at > now { "in the future" } else { "old" };
        Err(Error::new(
            ErrorKind::RequestExpired,
            format!(
                "{what} is {}s {when}, beyond the allowed {}s; the agent must sign a new request",
                skew.as_secs(),
                self.max_skew.as_secs()
            ),
        )
        .with_client_fact(format!("{what} is {}s {when}", skew.as_secs())))
    }
}
