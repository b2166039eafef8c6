//! # iam-join
//!
//! Verify the AWS "iam" join method the way Teleport's Auth Service does: a joining agent proves
//! its AWS IAM identity with a signed `sts:GetCallerIdentity` request, and the server decides
//! whether that identity may use a provision token.
//!
//! This crate provides the pure parts: [`TokenSet`] parses Teleport `ProvisionToken` YAML into
//! validated tokens whose allow rules are compiled into a [`RuleMatcher`], and [`Arn`] parses
//! principal ARNs strictly.
//!
//! ```
//! use iam_join::{Arn, TokenSet};
//!
//! let tokens = TokenSet::from_yaml(r#"
//! kind: token
//! version: v2
//! metadata:
//!   name: iam-token
//! spec:
//!   roles: [Kube, App, Discovery]
//!   join_method: iam
//!   allow:
//!   - aws_account: "111111111111"
//!   - aws_account: "333333333333"
//!     aws_arn: "arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-*"
//! "#)?;
//! let token = tokens.get("iam-token").expect("token exists");
//! let arn = Arn::parse("arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-0abc")?;
//! assert_eq!(token.matcher().first_match(arn.account(), &arn), Some(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
mod identity;
mod matcher;
mod membership;
#[cfg(feature = "io")]
pub mod organizations;
mod request;
mod response;
mod rule;
mod sigv4;
mod token;
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
pub use request::{GET_CALLER_IDENTITY_BODY, MAX_CLOCK_SKEW, MAX_HEAD_BYTES, MAX_HEADERS, RequestPolicy, StsRequest};
pub use response::{
    MAX_STS_RESPONSE_BYTES, MAX_USER_ID_LEN, MAX_XML_DEPTH, STS_NAMESPACE, StsAnswer, parse_sts_response,
};
pub use rule::{MAX_ARN_PATTERN_LEN, OrganizationalUnits, OuInclude, Rule};
pub use token::{MAX_RULES_PER_TOKEN, MAX_TOKEN_FILE_BYTES, MAX_TOKENS_PER_FILE, Role, Token, TokenSet};
#[cfg(feature = "io")]
pub use transport::{
    BoxFuture, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, EndpointOverride, ReqwestTransport,
    ReqwestTransportBuilder, StsResponse, StsTransport, TrustRoots,
};
pub use verifier::{Concluded, DEFAULT_DEADLINE, DEFAULT_RETRIES, MembershipQuery, Prepared, Verdict, Verifier};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
