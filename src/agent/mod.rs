//! The joining side (feature `agent`): credentials and region from the AWS chain
//! ([`AwsChain`]: environment, profiles, IRSA web identity, EKS Pod Identity, ECS, IMDSv2), the
//! signed `GetCallerIdentity` an agent sends ([`sign_join_request`], Go's `Request.Write`
//! layout), and [`JoinClient`], the client of the join service (`iam-join serve`).

mod chain;
mod client;
mod identity;
mod sign;

pub use crate::io::credentials::Credentials;
pub use chain::{AwsChain, ChainIdentity};
pub use client::{Attempt, JoinClient, JoinError, JoinOptions, MAX_ANSWER_BYTES, ProofFormat};
pub use identity::{IdentityDir, StoredIdentity};
pub use sign::{DEFAULT_PRESIGN_EXPIRES, JoinRequest, eks_token, presign_join_url, sign_join_request, sts_endpoint};
