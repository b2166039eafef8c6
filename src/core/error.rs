//! The one public error type and its stable kinds.

use std::fmt;

/// What went wrong, as a stable, machine-readable kind.
///
/// The strings returned by [`ErrorKind::as_str`] are part of the public contract: the CLI prints
/// them, operators alert on them and tests assert them. New kinds may be added (the enum is
/// `#[non_exhaustive]`), existing strings never change.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The token is missing, not an iam token, expired, malformed, or uses an unsupported rule.
    TokenInvalid,
    /// The forwarded bytes are not a well-formed, expected `GetCallerIdentity` request.
    MalformedRequest,
    /// The signed host is not an allowed STS endpoint under the endpoint policy.
    UntrustedEndpoint,
    /// The challenge header is missing, duplicated, unsigned, or holds a different value.
    ChallengeMismatch,
    /// `X-Amz-Date` is outside the allowed clock skew around `now`.
    RequestExpired,
    /// STS refused the credentials or the signature (a 4xx error response).
    SignatureRejected,
    /// STS was unreachable, timed out, throttled, or answered 5xx. Retryable.
    StsUnavailable,
    /// STS answered 200 but the body is not exactly one consistent identity.
    StsResponseInvalid,
    /// The verified identity matches no allow rule of the token.
    NotAllowed,
    /// An AWS Organizations lookup failed.
    LookupFailed,
    /// The challenge (and so the signed request) was already used for a join: a replay, refused
    /// by the replay guard before anything reached STS.
    ChallengeReplayed,
    /// The replay guard's store could not answer, so single use could not be ensured: the join
    /// fails closed. Retryable.
    ReplayStoreUnavailable,
    /// The client (its address) sent challenge or join requests faster than the service's rate
    /// limit allows: refused before anything was checked or sent to STS. Retryable after the
    /// `Retry-After` the service answers with.
    RateLimited,
    /// Not a join outcome: the caller's setup is wrong (a builder value, a key, a flag, an issued
    /// challenge too short to be one). Kept apart so that per-kind dashboards of joins stay true.
    ConfigInvalid,
}

impl ErrorKind {
    /// The stable string for this kind, e.g. `"not_allowed"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TokenInvalid => "token_invalid",
            Self::MalformedRequest => "malformed_request",
            Self::UntrustedEndpoint => "untrusted_endpoint",
            Self::ChallengeMismatch => "challenge_mismatch",
            Self::RequestExpired => "request_expired",
            Self::SignatureRejected => "signature_rejected",
            Self::StsUnavailable => "sts_unavailable",
            Self::StsResponseInvalid => "sts_response_invalid",
            Self::NotAllowed => "not_allowed",
            Self::LookupFailed => "lookup_failed",
            Self::ChallengeReplayed => "challenge_replayed",
            Self::ReplayStoreUnavailable => "replay_store_unavailable",
            Self::RateLimited => "rate_limited",
            Self::ConfigInvalid => "config_invalid",
        }
    }

    /// The fixed text a joining client is told for this kind (see [`Error::client_message`]).
    pub const fn client_text(self) -> &'static str {
        match self {
            Self::TokenInvalid => "the token does not exist, has expired, or does not allow the iam join method",
            Self::MalformedRequest => "the join request is malformed",
            Self::UntrustedEndpoint => {
                "the request is signed for a host this server does not accept as an STS endpoint"
            }
            Self::ChallengeMismatch => "the request does not carry the challenge this server issued",
            Self::RequestExpired => {
                "the request's signing time is outside the allowed window; the agent must sign a new one"
            }
            Self::SignatureRejected => "STS refused the request's credentials or signature",
            Self::StsUnavailable => "STS could not be reached; retry with a new challenge",
            Self::StsResponseInvalid => "STS's answer could not be used",
            Self::NotAllowed => "the AWS identity is not allowed by the token's rules",
            Self::LookupFailed => "the AWS Organizations lookup failed",
            Self::ChallengeReplayed => "this challenge was already used for a join; the agent must ask for a new one",
            Self::ReplayStoreUnavailable => "single use cannot be ensured right now; retry with a new challenge",
            Self::RateLimited => "too many requests from this address; retry after the Retry-After delay",
            Self::ConfigInvalid => "the join service cannot verify joins; see its logs",
        }
    }

    /// The kind named by its stable string, e.g. `"not_allowed"`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Every kind, in documentation order.
    pub const ALL: [ErrorKind; 14] = [
        Self::TokenInvalid,
        Self::MalformedRequest,
        Self::UntrustedEndpoint,
        Self::ChallengeMismatch,
        Self::RequestExpired,
        Self::SignatureRejected,
        Self::StsUnavailable,
        Self::StsResponseInvalid,
        Self::NotAllowed,
        Self::LookupFailed,
        Self::ChallengeReplayed,
        Self::ReplayStoreUnavailable,
        Self::RateLimited,
        Self::ConfigInvalid,
    ];
}

/// The stable string, e.g. `"not_allowed"`.
#[cfg(feature = "serialize")]
impl serde::Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a token-file diagnostic matters.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The token (or, with no token named, the file) cannot be used; `check-token` exits 2.
    Error,
    /// The token loads and is usable, but something in it is almost certainly a mistake, such as
    /// an `aws_arn` that can never match. Teleport accepts these; so does this library.
    Warning,
    /// Worth knowing and harmless, such as a token of another join method that was skipped.
    Info,
}

impl Severity {
    /// `error`, `warning` or `info`, as the CLI prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A diagnostic at a place in a token file (1-based line and column; 0 when unknown).
///
/// `Display` is `LINE:COL: SEVERITY: MESSAGE`, or `FILE:LINE:COL: SEVERITY: MESSAGE` when the
/// set was loaded with a file name ([`crate::TokenSet::with_file_name`]).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The token file's name, when the caller gave one.
    pub file: Option<std::sync::Arc<str>>,
    /// 1-based line of the offending YAML node, 0 when the location is unknown.
    pub line: u64,
    /// 1-based column of the offending YAML node, 0 when the location is unknown.
    pub column: u64,
    /// How much it matters.
    pub severity: Severity,
    /// The token it belongs to (`metadata.name`), when known; `None` for file-level problems.
    pub token: Option<String>,
    /// What is wrong, for an operator.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(severity: Severity, line: u64, column: u64, message: String) -> Self {
        Self { file: None, line, column, severity, token: None, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}:")?;
        }
        write!(f, "{}:{}: {}: {}", self.line, self.column, self.severity, self.message)
    }
}

/// What STS said when it refused, kept for the server's log. The message is STS's own text and
/// should not be passed to the joining client verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StsErrorInfo {
    /// The HTTP status.
    pub status: u16,
    /// STS's error code, e.g. `SignatureDoesNotMatch`; empty when the body had none.
    pub code: String,
    /// STS's error message; empty when the body had none.
    pub message: String,
    /// STS's request id, when given.
    pub request_id: Option<String>,
}

/// Why verification refused, or why configuration could not be loaded.
///
/// `Display` is `"<kind>: <detail>"`: fixed text plus safe detail. It never contains a signature,
/// a session token, a secret key or a whole `Authorization` value, and never a raw request or
/// response body.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct Error {
    kind: ErrorKind,
    detail: String,
    /// A fact about the client's own request that may be shown to it (which header, how old),
    /// set only where the check knows it reveals nothing of the server's configuration.
    client: Option<Box<str>>,
    problems: Vec<Problem>,
    retryable: Option<bool>,
    sts: Option<Box<StsErrorInfo>>,
    identity: Option<Box<crate::core::identity::CallerIdentity>>,
    /// Set by a local limit (the STS slots, the throttling backoff): when to try again. The
    /// verifier does not retry such an error itself.
    retry_after: Option<std::time::Duration>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            client: None,
            problems: Vec::new(),
            retryable: None,
            sts: None,
            identity: None,
            retry_after: None,
            source: None,
        }
    }

    /// `sts_unavailable`, retryable, for a transport of the caller's own (see
    /// `Verifier::verify_with`) whose exchange failed: `what` names the client for the log
    /// ("my HTTP client"), `source` is the cause (a refused connection, a timeout), kept as
    /// [`std::error::Error::source`].
    ///
    /// ```
    /// let e = iam_join::Error::sts_unavailable("my HTTP client", std::io::Error::other("connection refused"));
    /// assert_eq!(e.kind(), iam_join::ErrorKind::StsUnavailable);
    /// assert!(e.is_retryable());
    /// assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "connection refused");
    /// ```
    pub fn sts_unavailable(what: &str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::new(
            ErrorKind::StsUnavailable,
            format!("{} could not reach STS: {source}", crate::core::text::escaped_shown(what)),
        )
        .with_retryable(true)
        .with_source(source)
    }

    /// `replay_store_unavailable`, retryable, for a replay guard of the caller's own whose store
    /// could not answer: the join fails closed.
    pub fn new_replay_store_unavailable(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::ReplayStoreUnavailable, detail).with_retryable(true)
    }

    /// An error about the client's own request whose detail is a fact it may be told: shown in
    /// [`Error::client_message`] too.
    pub(crate) fn about_request(kind: ErrorKind, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self { client: Some(detail.clone().into_boxed_str()), ..Self::new(kind, detail) }
    }

    /// `malformed_request` about the client's own request (its framing, headers, URL, token):
    /// what is wrong with it is the client's to see.
    pub(crate) fn malformed_request(detail: impl Into<String>) -> Self {
        Self::about_request(ErrorKind::MalformedRequest, detail)
    }

    /// Sets the fact about the client's own request that [`Error::client_message`] shows.
    pub(crate) fn with_client_fact(mut self, fact: impl Into<String>) -> Self {
        self.client = Some(fact.into().into_boxed_str());
        self
    }

    /// What a joining client may be told: a fixed text for the kind, and, for the checks of the
    /// client's own request, what was wrong with it (which header, which challenge field, how
    /// old). Never the server's configuration (its endpoint policy, its rules, which tokens
    /// exist), STS's or a store's text, or a secret. The full detail is [`Error::detail`], for
    /// the server's log.
    ///
    /// ```
    /// use iam_join::{EndpointPolicy, ErrorKind, FipsMode};
    /// let e = EndpointPolicy::new().fips(FipsMode::Required).check("sts.amazonaws.com").unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::UntrustedEndpoint);
    /// assert!(e.detail().contains("FIPS is required"));
    /// assert!(!e.client_message().contains("FIPS"), "the policy is the server's");
    /// ```
    pub fn client_message(&self) -> String {
        let fixed = self.kind.client_text();
        match &self.client {
            Some(fact) => format!("{fixed}: {fact}"),
            None => fixed.to_owned(),
        }
    }

    /// `config_invalid`: a setup mistake of the caller's, not a join outcome.
    pub fn config_invalid(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::ConfigInvalid, detail)
    }

    /// The same error under another kind (e.g. a transport failure during an Organizations call).
    #[cfg(feature = "io")]
    pub(crate) fn into_kind(mut self, kind: ErrorKind) -> Self {
        if self.kind != kind {
            self.retryable = Some(self.is_retryable());
            self.kind = kind;
        }
        self
    }

    /// Marks a refusal by a local limit, worth retrying after `after`.
    #[cfg(feature = "io")]
    pub(crate) fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        self.retry_after = Some(after);
        self.retryable = Some(true);
        self
    }

    /// For a refusal by a local limit of this process (no free STS slot, or backing off while
    /// STS throttles), how long the client should wait before trying again: the `Retry-After` a
    /// service answers with. Nothing was sent to STS for such a join. `None` for every other
    /// error.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    pub(crate) fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = Some(retryable);
        self
    }

    pub(crate) fn with_sts(mut self, info: StsErrorInfo) -> Self {
        self.sts = Some(Box::new(info));
        self
    }

    pub(crate) fn with_identity(mut self, identity: crate::core::identity::CallerIdentity) -> Self {
        self.identity = Some(Box::new(identity));
        self
    }

    pub(crate) fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What STS said, when STS refused (`signature_rejected`, `sts_unavailable`).
    pub fn sts_error(&self) -> Option<&StsErrorInfo> {
        self.sts.as_deref()
    }

    /// The verified identity, when verification got that far (`not_allowed` always has one), for
    /// the audit log.
    pub fn identity(&self) -> Option<&crate::core::identity::CallerIdentity> {
        self.identity.as_deref()
    }

    pub(crate) fn with_problems(mut self, problems: Vec<Problem>) -> Self {
        self.problems = problems;
        self
    }

    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The safe, human-readable detail (the `Display` text without the kind prefix).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// For token files: every problem found, with line and column. Empty for other kinds.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Whether retrying the same verification later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.retryable.unwrap_or(matches!(
            self.kind,
            ErrorKind::StsUnavailable | ErrorKind::ReplayStoreUnavailable | ErrorKind::RateLimited
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_strings_are_stable() {
        let strings: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            strings,
            [
                "token_invalid",
                "malformed_request",
                "untrusted_endpoint",
                "challenge_mismatch",
                "request_expired",
                "signature_rejected",
                "sts_unavailable",
                "sts_response_invalid",
                "not_allowed",
                "lookup_failed",
                "challenge_replayed",
                "replay_store_unavailable",
                "rate_limited",
                "config_invalid",
            ]
        );
    }

    #[test]
    fn display_is_kind_then_detail() {
        let e = Error::new(ErrorKind::NotAllowed, "no rule matched");
        assert_eq!(e.to_string(), "not_allowed: no rule matched");
        assert!(!e.is_retryable());
        assert!(Error::new(ErrorKind::StsUnavailable, "timeout").is_retryable());
    }
}
