//! The wire contract of the join service (feature `wire`): what `POST /v1/challenge` and
//! `POST /v1/join` take and answer, as typed values that serialize and parse with serde. The
//! service (`iam-join serve`), the operator's `iam-join verify` and the agent (`iam-join join`,
//! [`crate::agent::JoinClient`]) all build and read their JSON from these types, so there is one
//! shape.
//!
//! What a refused client is told is decided here, not by the service: a [`Refusal`] carries the
//! kind, whether to retry, and [`Error::client_message`] (a fixed text per kind, plus only facts
//! about the client's own request), and the identity STS reported for the client, if any.
//!
//! ```
//! use iam_join::wire::{Answer, Refusal};
//! use iam_join::{EndpointPolicy, FipsMode};
//! let e = EndpointPolicy::new().fips(FipsMode::Required).check("sts.amazonaws.com").unwrap_err();
//! let refusal = Refusal::new("iam-token", &e);
//! let json = serde_json::to_string(&refusal).unwrap();
//! assert!(json.starts_with(r#"{"allowed":false,"token":"iam-token","error":{"kind":"untrusted_endpoint""#));
//! assert!(!json.contains("FIPS"), "the endpoint policy is not the client's to see");
//! let Answer::Refused(back) = Answer::from_slice(json.as_bytes()).unwrap() else { panic!() };
//! assert_eq!(back, refusal);
//! assert_eq!(back.status(), 403);
//! ```

use std::time::SystemTime;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::core::error::{Error, ErrorKind};
use crate::core::identity::CallerIdentity;
use crate::machine::states::Verdict;

/// `POST /v1/challenge`: the token to join with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ChallengeRequest {
    /// The provision token's name.
    pub token: String,
}

impl ChallengeRequest {
    /// A challenge request for `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self { token: token.into() }
    }
}

/// The answer to `POST /v1/challenge`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ChallengeResponse {
    /// The challenge to sign (a keyed challenge, `v1.KEYID.EXPIRY.NONCE.MAC`).
    pub challenge: String,
    /// When it expires, RFC 3339 in UTC.
    pub expires_at: String,
}

impl ChallengeResponse {
    /// The answer for `challenge`, which expires at `expires`.
    pub fn new(challenge: impl Into<String>, expires: SystemTime) -> Self {
        let expires_at = time::OffsetDateTime::from(expires)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Self { challenge: challenge.into(), expires_at }
    }
}

/// `POST /v1/join`: the token, the challenge as issued, and exactly one proof: `request`
/// (standard base64 of the raw signed POST), `presigned` (the presigned URL, or the EKS token
/// `k8s-aws-v1.…`) or `web_identity_token` (the JWT from `sts:GetWebIdentityToken`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JoinRequest {
    /// The provision token's name.
    pub token: String,
    /// The challenge, exactly as `POST /v1/challenge` gave it.
    pub challenge: String,
    /// The forwarded proof: standard base64 (padded) of the raw signed HTTP/1.1 request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The presigned proof: a presigned `GetCallerIdentity` URL or an EKS token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presigned: Option<String>,
    /// The web identity proof: a JWT from `sts:GetWebIdentityToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity_token: Option<String>,
    /// The agent's public key (PEM `PUBLIC KEY`, or a `CERTIFICATE REQUEST` of which only the
    /// key is used), for a certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// The proof a [`JoinRequest`] carries, decoded; [`JoinProof::as_proof`] gives it to the
/// verifier.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinProof {
    /// The raw signed request's bytes.
    Forwarded(Vec<u8>),
    /// The presigned URL or EKS token, as sent.
    Presigned(String),
    /// The JWT, as sent.
    WebIdentityToken(String),
}

impl JoinProof {
    /// The proof, for [`Verifier::verify`](crate::Verifier::verify).
    pub fn as_proof(&self) -> crate::Proof<'_> {
        match self {
            JoinProof::Forwarded(raw) => crate::Proof::Forwarded(raw),
            JoinProof::Presigned(url) => crate::Proof::Presigned(url.as_bytes()),
            JoinProof::WebIdentityToken(jwt) => crate::Proof::WebIdentityToken(jwt.as_bytes()),
        }
    }

    /// `forwarded`, `presigned` or `web_identity`: the proof's format, for logs and metrics.
    pub fn format(&self) -> &'static str {
        match self {
            JoinProof::Forwarded(_) => "forwarded",
            JoinProof::Presigned(_) => "presigned",
            JoinProof::WebIdentityToken(_) => "web_identity",
        }
    }
}

impl JoinRequest {
    fn new(token: impl Into<String>, challenge: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            challenge: challenge.into(),
            request: None,
            presigned: None,
            web_identity_token: None,
            public_key: None,
        }
    }

    /// A join request with a forwarded proof (`raw`: the signed request's bytes).
    pub fn forwarded(token: impl Into<String>, challenge: impl Into<String>, raw: &[u8]) -> Self {
        Self { request: Some(base64::engine::general_purpose::STANDARD.encode(raw)), ..Self::new(token, challenge) }
    }

    /// A join request with a presigned proof (a presigned URL or an EKS token).
    pub fn presigned(token: impl Into<String>, challenge: impl Into<String>, url: impl Into<String>) -> Self {
        Self { presigned: Some(url.into()), ..Self::new(token, challenge) }
    }

    /// A join request with a web identity token.
    pub fn web_identity(token: impl Into<String>, challenge: impl Into<String>, jwt: impl Into<String>) -> Self {
        Self { web_identity_token: Some(jwt.into()), ..Self::new(token, challenge) }
    }

    /// The same request, asking for a certificate for `public_key` (PEM).
    pub fn with_public_key(mut self, public_key: impl Into<String>) -> Self {
        self.public_key = Some(public_key.into());
        self
    }

    /// The one proof, decoded strictly (a forwarded request in standard, padded base64); a
    /// refusal (`malformed_request`) when there is none, more than one, or bad base64.
    ///
    /// ```
    /// use iam_join::wire::{JoinProof, JoinRequest};
    /// let j = JoinRequest::presigned("t", "c", "k8s-aws-v1.aHR0cHM");
    /// assert_eq!(j.proof().unwrap(), JoinProof::Presigned("k8s-aws-v1.aHR0cHM".into()));
    /// let two: JoinRequest = serde_json::from_str(r#"{"token":"t","challenge":"c","request":"","presigned":"x"}"#).unwrap();
    /// assert_eq!(two.proof().unwrap_err().status(), 400);
    /// ```
    pub fn proof(&self) -> Result<JoinProof, Box<Refusal>> {
        let refuse = |why: &str| Box::new(Refusal::malformed(&self.token, why));
        match (&self.request, &self.presigned, &self.web_identity_token) {
            (Some(r), None, None) => base64::engine::general_purpose::STANDARD
                .decode(r.as_bytes())
                .map(JoinProof::Forwarded)
                .map_err(|_| refuse("request must be the base64 of the raw signed HTTP request")),
            (None, Some(p), None) => Ok(JoinProof::Presigned(p.clone())),
            (None, None, Some(w)) => Ok(JoinProof::WebIdentityToken(w.clone())),
            (None, None, None) => {
                Err(refuse("the join carries no proof: send one of request, presigned, web_identity_token"))
            }
            _ => Err(refuse(
                "the join carries more than one proof: send exactly one of request, presigned, web_identity_token",
            )),
        }
    }
}

/// A verified identity, as the answers show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Identity {
    /// The 12-digit account.
    pub account: String,
    /// The principal's ARN.
    pub arn: String,
    /// STS's unique id of the principal.
    pub user_id: String,
}

impl From<&CallerIdentity> for Identity {
    fn from(id: &CallerIdentity) -> Self {
        Self {
            account: id.account().as_str().to_owned(),
            arn: id.arn().as_str().to_owned(),
            user_id: id.user_id().to_owned(),
        }
    }
}

/// An allowed join: `{"allowed": true, "token", "roles", "identity", "matched_rule"}`. STS's
/// request id is not in it: it is in the service's log, with the join.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Allowed {
    /// Always `true`.
    pub allowed: bool,
    /// The token joined with.
    pub token: String,
    /// The system roles it grants, as Teleport names them.
    pub roles: Vec<String>,
    /// The verified identity.
    pub identity: Identity,
    /// The index of the allow rule that matched.
    pub matched_rule: usize,
    /// The credentials issued for the join, when the service issues any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
}

/// The credentials an allowed join receives (`iam-join serve` with a CA or JWT keys).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Credentials {
    /// The agent's certificate (PEM), when a CA is configured and a `public_key` was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The CA certificate (PEM) that signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The JWT, when JWT keys are configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    /// When they expire (RFC 3339).
    pub expires_at: String,
}

/// The JWT is a bearer credential: its length only.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("certificate", &self.certificate.as_ref().map(String::len))
            .field("jwt", &self.jwt.as_ref().map(|j| format!("<{} bytes>", j.len())))
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The credentials of a join, in RFC 3339 for the expiry.
    pub fn new(certificate: Option<String>, ca: Option<String>, jwt: Option<String>, expires_at: SystemTime) -> Self {
        let expires_at = time::OffsetDateTime::from(expires_at)
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        Self { certificate, ca, jwt, expires_at }
    }
}

impl Allowed {
    /// The same answer, carrying `credentials`.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }
}

impl From<&Verdict> for Allowed {
    fn from(v: &Verdict) -> Self {
        Self {
            allowed: true,
            token: v.token().to_owned(),
            roles: v.roles().iter().map(|r| r.as_str().to_owned()).collect(),
            identity: Identity::from(v.identity()),
            matched_rule: v.matched_rule(),
            credentials: None,
        }
    }
}

/// Why a join was refused, as the client is told: `{"allowed": false, "token", "error": {"kind",
/// "message", "retryable"}, "identity"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Refusal {
    /// Always `false`.
    pub allowed: bool,
    /// The token the join named (empty when the body could not be read).
    pub token: String,
    /// The kind, the message and whether to retry.
    pub error: RefusalError,
    /// The identity STS reported for the client (its own), when verification got that far.
    pub identity: Option<Identity>,
}

/// The `error` of a [`Refusal`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RefusalError {
    /// The stable kind, e.g. `not_allowed` ([`ErrorKind::as_str`]); a newer server may send one
    /// this version does not know ([`Refusal::kind`] is then `None`).
    pub kind: String,
    /// For the client: [`Error::client_message`].
    pub message: String,
    /// Whether asking for a new challenge and trying again may succeed.
    pub retryable: bool,
}

impl Refusal {
    /// The refusal a client is told for `error`, on a join for `token`.
    pub fn new(token: &str, error: &Error) -> Self {
        Self::of(token, error.kind(), error.client_message(), error.is_retryable(), error.identity())
    }

    /// `malformed_request` for input that is not a join (bad JSON, not base64, too large, too
    /// slow, another route or method); `message` says what, about the client's own input.
    pub fn malformed(token: &str, message: &str) -> Self {
        Self::of(token, ErrorKind::MalformedRequest, message.to_owned(), false, None)
    }

    /// `sts_unavailable`, retryable, for a service too busy to take the join now (`message`
    /// says so); nothing was sent to STS.
    pub fn busy(message: &str) -> Self {
        Self::of("", ErrorKind::StsUnavailable, message.to_owned(), true, None)
    }

    /// `rate_limited`, retryable: the client's address is over the service's rate limit; the
    /// service answers 429 with `Retry-After`, and nothing was sent to STS.
    pub fn rate_limited() -> Self {
        Self::of("", ErrorKind::RateLimited, ErrorKind::RateLimited.client_text().to_owned(), true, None)
    }

    fn of(token: &str, kind: ErrorKind, message: String, retryable: bool, identity: Option<&CallerIdentity>) -> Self {
        Self {
            allowed: false,
            token: token.to_owned(),
            error: RefusalError { kind: kind.as_str().to_owned(), message, retryable },
            identity: identity.map(Identity::from),
        }
    }

    /// The kind, when this version knows it.
    pub fn kind(&self) -> Option<ErrorKind> {
        ErrorKind::from_name(&self.error.kind)
    }

    /// The HTTP status the service answers it with: 429 for `rate_limited`, 503 for what a
    /// retry may fix, 400 for
    /// input that is not a join, 500 for the service's own configuration, 403 for every other
    /// refusal.
    pub fn status(&self) -> u16 {
        match self.kind() {
            Some(ErrorKind::RateLimited) => 429,
            _ if self.error.retryable => 503,
            Some(ErrorKind::MalformedRequest) => 400,
            Some(ErrorKind::ConfigInvalid) => 500,
            _ => 403,
        }
    }
}

/// The answer to `POST /v1/join`: allowed or refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The join is allowed.
    Allowed(Allowed),
    /// The join is refused.
    Refused(Refusal),
}

impl Answer {
    /// The answer for a join's outcome.
    pub fn of(token: &str, outcome: &Result<Verdict, Error>) -> Self {
        match outcome {
            Ok(v) => Answer::Allowed(Allowed::from(v)),
            Err(e) => Answer::Refused(Refusal::new(token, e)),
        }
    }

    /// Reads an answer: its `allowed` field says which shape the rest has.
    pub fn from_slice(json: &[u8]) -> Result<Self, serde_json::Error> {
        let value: serde_json::Value = serde_json::from_slice(json)?;
        match value.get("allowed") {
            Some(serde_json::Value::Bool(true)) => serde_json::from_value(value).map(Answer::Allowed),
            Some(serde_json::Value::Bool(false)) => serde_json::from_value(value).map(Answer::Refused),
            _ => Err(serde::de::Error::custom("an answer has a boolean \"allowed\"")),
        }
    }

    /// The HTTP status the service answers it with: 200, or [`Refusal::status`].
    pub fn status(&self) -> u16 {
        match self {
            Answer::Allowed(_) => 200,
            Answer::Refused(r) => r.status(),
        }
    }
}

impl Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Answer::Allowed(a) => a.serialize(s),
            Answer::Refused(r) => r.serialize(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind's client message is the fixed text (plus, at most, a fact about the client's
    /// own request), and never the operator's detail.
    #[test]
    fn every_kind_tells_the_client_its_fixed_text() {
        for kind in ErrorKind::ALL {
            let e = Error::new(kind, "the endpoint policy of this server, its rules, token 'secret-token'");
            let r = Refusal::new("t", &e);
            assert_eq!(r.error.message, kind.client_text(), "{kind}");
            assert_eq!(r.kind(), Some(kind));
            assert!(!r.error.message.contains("policy") && !r.error.message.contains("secret-token"), "{kind}");
        }
        // A fact about the client's own request is added where the check marked it so.
        let e = Error::about_request(ErrorKind::MalformedRequest, "request has no Host header");
        assert_eq!(Refusal::new("t", &e).error.message, "the join request is malformed: request has no Host header");
    }

    #[test]
    fn statuses_fit_the_kinds() {
        let status = |e: Error| Refusal::new("t", &e).status();
        assert_eq!(status(Error::new_replay_store_unavailable("down")), 503);
        assert_eq!(status(Error::config_invalid("no keys")), 500);
        assert_eq!(status(Error::sts_unavailable("STS", std::io::Error::other("refused"))), 503);
        assert_eq!(status(Error::new(ErrorKind::MalformedRequest, "x")), 400);
        assert_eq!(status(Error::new(ErrorKind::NotAllowed, "x")), 403);
        assert_eq!(Refusal::busy("at the connection limit").status(), 503);
        let limited = Refusal::rate_limited();
        assert_eq!(
            (limited.status(), limited.error.retryable, limited.kind()),
            (429, true, Some(ErrorKind::RateLimited))
        );
    }

    #[test]
    fn answers_read_back_by_their_allowed_field() {
        assert!(Answer::from_slice(br#"{"allowed": "yes"}"#).is_err());
        assert!(Answer::from_slice(br#"{"token": "t"}"#).is_err());
        let r = Refusal::malformed("t", "bad");
        let json = serde_json::to_vec(&Answer::Refused(r.clone())).unwrap();
        assert_eq!(Answer::from_slice(&json).unwrap(), Answer::Refused(r));
    }
}
