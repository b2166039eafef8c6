//! # iam-join
//!
//! Verify the AWS "iam" join method the way Teleport's Auth Service does: a joining agent proves
//! its AWS IAM identity with a signed `sts:GetCallerIdentity` request carrying the server's
//! challenge in a signed header, and the server decides whether that identity may use a
//! provision token. The server cannot check the signature (it lacks the agent's secret), so the
//! crate checks that what it replays to STS is exactly what was signed, sends it only to a real
//! STS endpoint over verified TLS, reads STS's answer without leniency, and matches the identity
//! against the token's allow rules with Teleport's semantics.
//!
//! The one type an auth server needs is [`Verifier`]: build it once from a [`TokenSet`] and a
//! [`RequestPolicy`], share it, and call [`Verifier::verify`] per join.
//!
//! ```no_run
//! use std::time::SystemTime;
//! use iam_join::{RequestPolicy, ReqwestTransport, TokenSet, Verifier};
//! # async fn join(raw_request: &[u8]) -> Result<(), iam_join::Error> {
//! // Every valid iam token of the file, whatever its other tokens hold (see `diagnostics`).
//! let tokens = TokenSet::load(&std::fs::read_to_string("tokens.yaml").unwrap());
//! let verifier = Verifier::new(tokens, RequestPolicy::new(), ReqwestTransport::new()?);
//! let challenge = iam_join::challenge::generate().unwrap(); // issue it, once, per join
//! match verifier.verify("iam-token", &challenge, raw_request, SystemTime::now()).await {
//!     Ok(verdict) => println!("{} joins as {:?}", verdict.identity().arn(), verdict.roles()),
//!     Err(e) => println!("refused: {} ({e})", e.kind()), // e.identity() is kept for audit
//! }
//! # Ok(()) }
//! ```
//!
//! ## Your own HTTP stack: the sans-IO state machine
//!
//! [`Verifier::prepare`] (no network) → send [`Prepared::request`] → [`Verifier::conclude`] →
//! [`Concluded::Allowed`], or [`Concluded::NeedsMembership`] when an organization rule must
//! decide → look the account up → [`Verifier::resume`]. [`Verifier::verify_with`] runs the same
//! machine around your send function and keeps the retries, the deadline, the span and the
//! organization lookups. This loop runs against the SigV4-checking emulator:
//!
//! ```
//! # #[cfg(all(feature = "agent", feature = "emulator"))]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::SystemTime;
//! use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
//! use iam_join::emulator::{EmulatedPrincipal, StsEmulator};
//! use iam_join::{Concluded, EndpointOverride, RequestPolicy, ReqwestTransport, StsTransport, TokenSet, Verifier};
//!
//! let sts = StsEmulator::start(vec![EmulatedPrincipal {
//!     access_key_id: "AKIAEXAMPLEKEY000001".into(),
//!     secret_access_key: "example-secret".into(),
//!     session_token: None,
//!     arn: "arn:aws:iam::111111111111:user/ci".into(),
//!     user_id: "AIDAEXAMPLEUSERID0001".into(),
//! }]).await.unwrap();
//! let tokens = TokenSet::from_yaml("kind: token\nversion: v2\nmetadata: {name: ci}\n\
//!     spec: {roles: [Node], join_method: iam, allow: [{aws_account: \"111111111111\"}]}")?;
//! let verifier = Verifier::sans_io(tokens, RequestPolicy::new());
//! // Any HTTP client will do; here the crate's own, pointed at the emulator.
//! let http = ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build()?;
//!
//! let challenge = iam_join::challenge::generate().unwrap();
//! let agent = Credentials::new("AKIAEXAMPLEKEY000001", "example-secret", None);
//! let raw = sign_join_request(&agent, &JoinRequest::new(&challenge), SystemTime::now())?;
//!
//! let prepared = verifier.prepare("ci", &challenge, &raw, SystemTime::now())?;
//! let answer = http.send(prepared.request()).await?; // your round trip
//! let verdict = match verifier.conclude(&prepared, answer.status, answer.content_type.as_deref(), &answer.body)? {
//!     Concluded::Allowed(verdict) => verdict,
//!     Concluded::NeedsMembership(query) => unreachable!("no organization rule: {query:?}"),
//! };
//! assert_eq!(verdict.identity().arn().as_str(), "arn:aws:iam::111111111111:user/ci");
//! # Ok::<(), iam_join::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `io` | yes | the reqwest/rustls transport, the Organizations client and cache, [`Verifier::verify`] and [`Verifier::verify_with`]. Without it the crate is the pure core and the state machine: no tokio, reqwest, hyper, rustls or ring |
//! | `http` | no | conversions between [`StsRequest`]/[`StsResponse`] and the `http` crate's `Request`/`Response` |
//! | `redis` | no | `RedisReplayGuard`: single use across replicas that share a Redis |
//! | `serialize` | no | `serde::Serialize` for [`Verdict`], [`CallerIdentity`], [`ErrorKind`] and [`Role`] |
//! | `agent` | no | `agent::sign_join_request`: the joining side, signed with `aws-sigv4`, written like Go's `Request.Write`; `agent::AwsChain`: credentials and region from `aws-config`'s default chain (environment, profiles, IRSA web identity, EKS Pod Identity, ECS, IMDSv2) |
//! | `emulator` | no | `emulator::StsEmulator`: a loopback STS that checks SigV4, for tests and demos |
//! | `cli` | no | the `iam-join` command |
//! | `serve` | no | `iam-join serve`, the join service: challenges, joins, Prometheus metrics, reloads (a binary feature; no library API) |
//!
//! ## Errors
//!
//! Every refusal has one stable [`ErrorKind`]: `token_invalid`, `malformed_request`,
//! `untrusted_endpoint`, `challenge_mismatch`, `request_expired`, `signature_rejected`,
//! `sts_unavailable` (retryable), `sts_response_invalid`, `not_allowed`, `lookup_failed`, and,
//! with a replay guard, `challenge_replayed` and `replay_store_unavailable` (retryable; the join
//! fails closed). `config_invalid` is not a join outcome: it reports a setup mistake (a verifier without a
//! transport, an issued challenge shorter than [`challenge::MIN_CHALLENGE_LEN`], bad builder
//! values, missing credentials), so that per-kind dashboards of joins stay true.
//!
//! **What to show a joining client.** The kind is safe to return. [`Error::detail`] is for the
//! server's log: it can tell whether a token name exists and of which join method it is, name
//! the server's endpoint policy, and echo the agent's identity. Return a fixed message per kind
//! (and, at most, whether the kind is retryable); never return `detail`, [`Error::sts_error`] or
//! [`Error::problems`]. No error ever holds a signature, a session token, a secret key, a whole
//! `Authorization` value or the challenge.
//!
//! ## Observability contract
//!
//! [`Verifier::verify`] and [`Verifier::verify_with`] run inside one `tracing` span named
//! `iam_join.verify`, retries and transport included. Its field names are stable:
//!
//! | field | value |
//! |---|---|
//! | `token` | the token name the agent sent, at most 128 characters |
//! | `outcome` | `allowed`, or the refusal's kind |
//! | `endpoint` | the STS host the request is signed for |
//! | `sts_request_id` | STS's request id, when allowed |
//! | `attempts` | STS exchanges made |
//! | `prepare_us`, `sts_us`, `total_us` | time in the local checks (recorded for refusals too), waiting for STS, and in all |
//!
//! Inside it: an `info` event `join allowed` (`arn`, `rule`, `elapsed_us`) or `join refused`
//! (`error`, `elapsed_us`), and a `debug` event `retrying STS` (`attempt`, `error`, `backoff_ms`)
//! per retry. Used on their own, [`Verifier::prepare`] and [`Verifier::conclude`] emit the
//! spans `iam_join.prepare` (`token`, `outcome`) and `iam_join.conclude` (`outcome`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "agent")]
pub mod agent;
mod arn;
pub mod challenge;
mod credentials;
#[cfg(feature = "emulator")]
pub mod emulator;
mod endpoint;
mod error;
mod files;
mod identity;
mod matcher;
mod membership;
#[cfg(feature = "io")]
pub mod organizations;
#[cfg(feature = "io")]
mod replay;
mod request;
mod response;
mod rule;
mod sigv4;
mod token;
mod token_file;
#[cfg(feature = "io")]
mod transport;
mod verifier;

pub use arn::{AccountId, Arn, ArnError, MAX_ARN_LEN, Partition, Principal, Service};
pub use credentials::Credentials;
pub use endpoint::{Endpoint, EndpointPolicy, FipsMode};
pub use error::{Error, ErrorKind, Problem, Severity, StsErrorInfo};
pub use identity::CallerIdentity;
pub use matcher::{Check, Explanation, RuleMatcher, RuleOutcome};
pub use membership::Membership;
#[cfg(feature = "redis")]
pub use replay::RedisReplayGuard;
#[cfg(feature = "io")]
pub use replay::{DEFAULT_REPLAY_GUARD_ENTRIES, MemoryReplayGuard, ReplayGuard};
pub use request::{GET_CALLER_IDENTITY_BODY, MAX_CLOCK_SKEW, MAX_HEAD_BYTES, MAX_HEADERS, RequestPolicy, StsRequest};
pub use response::{
    MAX_STS_RESPONSE_BYTES, MAX_USER_ID_LEN, MAX_XML_DEPTH, STS_NAMESPACE, StsAnswer, StsResponse, parse_sts_response,
};
pub use rule::{MAX_ARN_PATTERN_LEN, OrganizationalUnits, OuInclude, Rule};
pub use token::{MAX_RULES_PER_TOKEN, MAX_TOKEN_FILE_BYTES, MAX_TOKENS_PER_FILE, Role, Token, TokenSet};
#[cfg(feature = "io")]
pub use transport::{
    AwsCall, AwsTransport, BoxFuture, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, EndpointOverride, FailureClass,
    ReqwestTransport, ReqwestTransportBuilder, StsTransport, TrustRoots, failure_cause,
};
pub use verifier::{Concluded, DEFAULT_DEADLINE, DEFAULT_RETRIES, MembershipQuery, Prepared, Verdict, Verifier};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
