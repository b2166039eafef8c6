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
//! The one type an auth server needs is [`Verifier`]: build it once, share it, and call
//! [`Verifier::verify`] per join.
//!
//! ```no_run
//! use std::time::SystemTime;
//! use iam_join::{Challenge, Proof, ReqwestTransport, TokenSet, Verifier};
//! # async fn join(raw_request: &[u8]) -> Result<(), iam_join::Error> {
//! // Every valid iam token of the file, whatever its other tokens hold (see `diagnostics`).
//! let tokens = TokenSet::load_file("tokens.yaml")?;
//! let verifier = Verifier::builder(tokens).transport(ReqwestTransport::new()?).build();
//! let challenge = iam_join::challenge::generate().unwrap(); // issue it, once, per join
//! match verifier.verify("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(raw_request), SystemTime::now()).await {
//!     Ok(verdict) => println!("{} joins as {:?}", verdict.identity().arn(), verdict.roles()),
//!     Err(e) => println!("refused: {} ({e})", e.kind()), // e.identity() is kept for audit
//! }
//! # Ok(()) }
//! ```
//!
//! ## The layers, and the state machine every caller goes through
//!
//! The crate is layered, and the folders of its source say so (a test reads them): the pure
//! **core** (`core/`: tokens, rules, the matcher, the proofs, STS's answers, challenges; `now` is
//! a parameter, no clock or network), the sans-IO **state machine** (`machine/`), the **I/O edge**
//! (`io/`, feature `io`: the transport, the replay guards, the Organizations client, the async
//! driver), and the features (`agent/`, `emulator/`, `wire/`), which use only what is below.
//!
//! A join moves through states that consume each other, as rustls's do, so no step can be
//! skipped: [`Verifier::start`] checks the challenge, the proof and the token (no network) and
//! gives a [`PendingClaim`]; single use is decided on it ([`PendingClaim::claimed`] with what a
//! replay guard answered, [`PendingClaim::claim`] with a [`ReplayGuard`], or, explicitly,
//! [`PendingClaim::single_use_by_caller`]), which gives a [`Claimed`]; only a [`Claimed`] has a
//! [`Replay`] to send; [`Claimed::conclude`] reads STS's answer into [`Concluded::Allowed`], or
//! [`Concluded::NeedsMembership`] when an organization rule must decide
//! ([`MembershipQuery::resume`]). [`Verifier::verify`] drives exactly these states, adding the
//! claim, retries inside a deadline and the proof's freshness window, organization lookups and
//! the span. Driven by hand, with any HTTP client (here the crate's own, against the
//! SigV4-checking emulator):
//!
//! ```
//! # #[cfg(all(feature = "agent", feature = "emulator"))]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::SystemTime;
//! use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
//! use iam_join::emulator::{EmulatedPrincipal, StsEmulator};
//! use iam_join::{AwsCall, AwsTransport, Challenge, ClaimResult, Concluded, EndpointOverride};
//! use iam_join::{Proof, ReqwestTransport, TokenSet, Verifier};
//!
//! let sts = StsEmulator::start(vec![EmulatedPrincipal::new(
//!     "AKIAEXAMPLEKEY000001", "example-secret", None,
//!     "arn:aws:iam::111111111111:user/ci", "AIDAEXAMPLEUSERID0001",
//! )]).await.unwrap();
//! let tokens = TokenSet::from_yaml("kind: token\nversion: v2\nmetadata: {name: ci}\n\
//!     spec: {roles: [Node], join_method: iam, allow: [{aws_account: \"111111111111\"}]}")?;
//! let verifier = Verifier::builder(tokens).build(); // no transport: driven by hand
//! let http = ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build()?;
//!
//! let challenge = iam_join::challenge::generate().unwrap();
//! let agent = Credentials::new("AKIAEXAMPLEKEY000001", "example-secret", None);
//! let raw = sign_join_request(&agent, &JoinRequest::new(&challenge), SystemTime::now())?;
//!
//! let pending = verifier.start("ci", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now())?;
//! // Your replay guard: claim pending.claim_key() until pending.claim_until(); here, a first claim.
//! let claimed = pending.claimed(ClaimResult::Claimed)?;
//! let replay = claimed.replay().expect("a forwarded request is checked by STS");
//! let answer = http.call(AwsCall::replay(replay)).await?; // your round trip
//! let verdict = match claimed.conclude(&answer)? {
//!     Concluded::Allowed(verdict) => verdict,
//!     Concluded::NeedsMembership(query) => unreachable!("no organization rule: {query:?}"),
//! };
//! assert_eq!(verdict.identity().arn().as_str(), "arn:aws:iam::111111111111:user/ci");
//! # Ok::<(), iam_join::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## Proof formats: the extension point
//!
//! A [`Proof`] is what the agent sent: the forwarded request ([`Proof::Forwarded`], the raw
//! signed POST Teleport agents send), a presigned `GetCallerIdentity` URL or the EKS token made
//! of it ([`Proof::Presigned`], what `aws eks get-token --cluster-name <challenge>` prints), or
//! AWS's signed web identity token ([`Proof::WebIdentityToken`], from `sts:GetWebIdentityToken`,
//! checked offline against the keys of the issuer pinned for its account). A format is one
//! module under `core/proof/` that turns the format's bytes into a checked value (the challenge
//! it signed, how long it stays fresh, and either the [`Replay`] STS must answer or, for a
//! format whose signature the verifier can check itself, the identity it proves), plus one
//! variant of [`Proof`] and of the checked proof the machine matches on. Tokens, rules,
//! matching, the claim, the verdict and the error kinds are shared, so a rule admits the same
//! principals whatever the proof: a web identity token of a role proves the role, not a
//! session, so it is admitted only by rules that admit every session of the role
//! ([`Subject::every_session_of`]). The transport sends a [`Replay`] as it is
//! ([`AwsCall::replay`]), whatever its method and target. A web identity token is started with
//! [`Verifier::start_web_identity`], which asks for the issuer's keys ([`NeedsKeys`]) before
//! the claim; after the claim, [`Claimed::conclude_offline`] decides, with the token's own
//! organization claims for organization rules.
//!
//! ## Configuration
//!
//! [`Verifier::builder`] takes the tokens; the builder takes the [`RequestPolicy`] (trusted
//! endpoints, the challenge header, the clock skew), the challenge key ring, and with feature
//! `io` the transport, the replay guard, the Organizations client, the retries and the
//! deadline. [`VerifierBuilder::build`] makes an immutable configuration shared by every clone;
//! the token set is the one thing that changes at run time, through
//! [`Verifier::replace_tokens`], which reaches every clone.
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `io` | yes | the reqwest/rustls transport, the replay guards, the Organizations client and cache, [`Verifier::verify`]. Without it the crate is the core and the state machine: no tokio, reqwest, hyper, rustls or ring |
//! | `sign` | with `io` or `agent` | SigV4 signing with aws-sigv4, for the agent and the Organizations lookups |
//! | `http` | no | [`Replay::to_http`] and `HttpAnswer: From<http::Response<Vec<u8>>>` |
//! | `redis` | no | `RedisReplayGuard`: single use across replicas that share a Redis |
//! | `serialize` | no | `serde::Serialize` for [`CallerIdentity`], [`ErrorKind`] and [`Role`] |
//! | `wire` | no | `wire`: the join service's typed requests and answers, and what a refused client is told |
//! | `agent` | no | `agent`: the AWS credential chain (aws-config: environment, profiles, IRSA web identity, EKS Pod Identity, ECS, IMDSv2), `sign_join_request` (Go's `Request.Write` layout), `JoinClient` (the client of the join service) |
//! | `emulator` | no | `emulator::StsEmulator`: a loopback STS that checks SigV4 and plays IRSA, for tests, demos and trying the crate offline |
//!
//! The `iam-join` command and the join service (`iam-join serve`) are the workspace's
//! `iam-join-cli` package: this library carries none of their dependencies.
//!
//! ## Errors
//!
//! Every refusal has one stable [`ErrorKind`]: `token_invalid`, `malformed_request`,
//! `untrusted_endpoint`, `challenge_mismatch`, `request_expired`, `signature_rejected`,
//! `sts_unavailable` (retryable), `sts_response_invalid`, `not_allowed`, `lookup_failed`, and,
//! with a replay guard, `challenge_replayed` and `replay_store_unavailable` (retryable; the join
//! fails closed). `config_invalid` is not a join outcome: it reports a setup mistake (a verifier
//! without a transport, an issued challenge shorter than [`challenge::MIN_CHALLENGE_LEN`], a
//! keyed challenge without a key ring, bad builder or policy values, missing credentials, a
//! region without an STS endpoint), so that per-kind dashboards of joins stay true.
//!
//! **What to show a joining client** is [`Error::client_message`] (with the kind and
//! [`Error::is_retryable`]; `wire::Refusal` is that, serialized): a fixed text per kind, plus,
//! only for the checks of the client's own request, what was wrong with it (which header, which
//! challenge field, how old). It never names the server's endpoint policy, its rules or which
//! tokens exist. [`Error::detail`] is for the server's log: it can tell whether a token name
//! exists and of which join method it is, name the endpoint policy, and echo the agent's
//! identity; never return it, [`Error::sts_error`] or [`Error::problems`] to a client. No error
//! ever holds a signature, a session token, a secret key, a whole `Authorization` value or the
//! challenge.
//!
//! ## Observability contract
//!
//! [`Verifier::verify`] runs inside one `tracing` span named `iam_join.verify`, retries and
//! transport included. Its field names are stable:
//!
//! | field | value |
//! |---|---|
//! | `token` | the token name the agent sent, at most 128 characters |
//! | `outcome` | `allowed`, or the refusal's kind |
//! | `endpoint` | the STS host the proof is signed for |
//! | `sts_request_id` | STS's request id, when allowed |
//! | `attempts` | STS exchanges made |
//! | `prepare_us`, `sts_us`, `total_us` | time in the local checks (recorded for refusals too), waiting for STS, and in all |
//!
//! Inside it: an `info` event `join allowed` (`arn`, `rule`, `elapsed_us`) or `join refused`
//! (`error`, `elapsed_us`), and a `debug` event `retrying STS` (`attempt`, `error`, `backoff_ms`)
//! per retry. Driven by hand, [`Verifier::start`] and [`Claimed::conclude`] emit the spans
//! `iam_join.prepare` (`token`, `outcome`) and `iam_join.conclude` (`outcome`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "agent")]
pub mod agent;
mod core;
#[cfg(feature = "emulator")]
pub mod emulator;
mod io;
#[cfg(feature = "issue")]
pub mod issue;
mod machine;
#[cfg(feature = "wire")]
pub mod wire;

pub use crate::core::challenge;
#[cfg(feature = "io")]
pub use crate::io::organizations;

pub use crate::core::arn::{AccountId, Arn, ArnError, MAX_ARN_LEN, Partition, Principal, Service};
pub use crate::core::challenge::Challenge;
pub use crate::core::endpoint::{Endpoint, EndpointPolicy, FipsMode};
pub use crate::core::error::{Error, ErrorKind, Problem, Severity, StsErrorInfo};
pub use crate::core::identity::CallerIdentity;
pub use crate::core::matcher::{Check, Explanation, RuleMatcher, RuleOutcome, Subject};
pub use crate::core::membership::Membership;
pub use crate::core::proof::forwarded::{ForwardedRequest, GET_CALLER_IDENTITY_BODY, MAX_HEAD_BYTES, MAX_HEADERS};
pub use crate::core::proof::policy::{MAX_CLOCK_SKEW, RequestPolicy};
pub use crate::core::proof::presigned::{
    EKS_CHALLENGE_HEADER, EKS_TOKEN_PREFIX, MAX_PRESIGNED_BYTES, MAX_PRESIGNED_EXPIRES, PresignedUrl,
};
#[cfg(feature = "web-identity")]
pub use crate::core::proof::web_identity::{
    AWS_CLAIMS_NAMESPACE, IssuerKeys, IssuerUrl, MAX_JWKS_BYTES, MAX_JWKS_KEYS, MAX_WEB_IDENTITY_LIFETIME,
    MAX_WEB_IDENTITY_TOKEN_BYTES, WebIdentityPolicy,
};
pub use crate::core::proof::{Method, Proof, Replay};
pub use crate::core::response::{
    HttpAnswer, MAX_STS_RESPONSE_BYTES, MAX_USER_ID_LEN, MAX_XML_DEPTH, STS_NAMESPACE, StsAnswer, parse_sts_response,
};
pub use crate::core::rule::{MAX_ARN_PATTERN_LEN, OrganizationalUnits, OuInclude, Rule};
pub use crate::core::token::join_method::JoinMethod;
pub use crate::core::token::role::Role;
pub use crate::core::token::set::TokenSet;
pub use crate::core::token::{MAX_RULES_PER_TOKEN, MAX_TOKEN_FILE_BYTES, MAX_TOKENS_PER_FILE, Token};
#[cfg(feature = "sign")]
pub use crate::io::credentials::Credentials;
#[cfg(feature = "io")]
pub use crate::io::driver::{DEFAULT_DEADLINE, DEFAULT_RETRIES};
#[cfg(feature = "io")]
pub use crate::io::jwks::{
    DEFAULT_JWKS_LIFETIME, DEFAULT_JWKS_REFRESH_INTERVAL, JwksCache, JwksCacheBuilder, MAX_CACHED_ISSUERS,
};
#[cfg(feature = "io")]
pub use crate::io::limits::{
    DEFAULT_MAX_STS_INFLIGHT, DEFAULT_MAX_THROTTLE_BACKOFF, DEFAULT_STS_SLOT_WAIT, DEFAULT_THROTTLE_BACKOFF,
    LimitStats, LimitedTransport, StsLimits,
};
#[cfg(feature = "redis")]
pub use crate::io::replay::RedisReplayGuard;
#[cfg(feature = "io")]
pub use crate::io::replay::{DEFAULT_REPLAY_GUARD_ENTRIES, MemoryReplayGuard, ReplayGuard};
#[cfg(feature = "io")]
pub use crate::io::transport::{
    AwsCall, AwsService, AwsTransport, BoxFuture, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, EndpointOverride,
    FailureClass, ReqwestTransport, ReqwestTransportBuilder, TrustRoots, failure_cause,
};
pub use crate::machine::states::{ClaimResult, Claimed, Concluded, MembershipQuery, PendingClaim, Verdict};
#[cfg(feature = "web-identity")]
pub use crate::machine::verifier::NeedsKeys;
pub use crate::machine::verifier::{Verifier, VerifierBuilder};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
