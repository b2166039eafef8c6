//! The agent's credentials and region from the standard AWS chain (aws-config).

use crate::agent::sign::JoinRequest;
use crate::core::error::Error;
use crate::io::credentials::Credentials;

/// The agent's AWS identity from the standard AWS chain, through `aws-config`: environment
/// variables, the shared config and credentials files (with profiles), web identity (IRSA:
/// `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`), EKS Pod Identity and ECS container
/// credentials, and IMDSv2 on EC2, in the SDKs' order; the region from `AWS_REGION` /
/// `AWS_DEFAULT_REGION`, the profile, or IMDS. The chain's own STS calls honour the SDKs'
/// `AWS_ENDPOINT_URL_STS`. Its HTTPS client is rustls with ring, as everywhere else in the crate.
///
/// ```no_run
/// # async fn join() -> Result<(), iam_join::Error> {
/// use iam_join::agent::{AwsChain, sign_join_request};
/// let identity = AwsChain::new().load().await?; // in an EKS pod: the IRSA role's session
/// let raw = sign_join_request(identity.credentials(), &identity.join_request("CHALLENGE", false), std::time::SystemTime::now())?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct AwsChain {
    profile: Option<String>,
    region: Option<String>,
    credentials: Option<Credentials>,
    sts_endpoint_url: Option<String>,
}

impl AwsChain {
    /// The default chain, as the environment configures it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this profile of the shared config files instead of `AWS_PROFILE` / `default`.
    pub fn profile(mut self, name: impl Into<String>) -> Self {
        self.profile = Some(name.into());
        self
    }

    /// Use this region instead of the one the chain finds.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Use these credentials instead of the chain's (tests, tools that already hold them).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Send this identity's own STS calls (`GetWebIdentityToken`) to this URL, as
    /// `AWS_ENDPOINT_URL_STS` does (which the chain also reads).
    pub fn sts_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.sts_endpoint_url = Some(url.into());
        self
    }

    /// Resolves the credentials (and the region). Refusals are `config_invalid`, naming what the
    /// chain tried, never a secret.
    pub async fn load(&self) -> Result<ChainIdentity, Error> {
        use aws_credential_types::provider::ProvideCredentials as _;
        use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(p) = &self.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &self.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(c) = &self.credentials {
            loader = loader.credentials_provider(c.to_sdk());
        }
        if let Some(url) = &self.sts_endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        let config = loader.load().await;
        let provider = config
            .credentials_provider()
            .ok_or_else(|| Error::config_invalid("the AWS credential chain is not configured"))?;
        let found = provider.provide_credentials().await.map_err(|e| {
            Error::config_invalid(format!("no AWS credentials from the default chain: {}", chain_error(&e)))
        })?;
        Ok(ChainIdentity {
            credentials: Credentials::new(
                found.access_key_id(),
                found.secret_access_key(),
                found.session_token().map(str::to_owned),
            ),
            region: config.region().map(|r| r.as_ref().to_owned()),
            config,
        })
    }
}

/// The chain's error with its causes, for an operator: which providers were tried and why each
/// failed. aws-config's messages name variables, files and hosts, never secrets.
fn chain_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What [`AwsChain::load`] found: credentials (zeroized, redacted in `Debug`) and the region.
pub struct ChainIdentity {
    credentials: Credentials,
    region: Option<String>,
    /// The chain's configuration, for this identity's own STS calls.
    config: aws_config::SdkConfig,
}

impl std::fmt::Debug for ChainIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainIdentity")
            .field("credentials", &self.credentials)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl ChainIdentity {
    /// The credentials to sign with.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The region the chain found (or was given), if any.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// Asks STS (`sts:GetWebIdentityToken`, through the chain's configuration: the region's
    /// endpoint, or `AWS_ENDPOINT_URL_STS`) for a web identity token naming `audiences` (the
    /// verifier's audience and the challenge), signed with `algorithm` (`RS256` or `ES384`),
    /// valid for `duration` (60 to 3600 s; STS's default 300 s when `None`). The account must
    /// have enabled outbound identity federation, and the principal needs
    /// `sts:GetWebIdentityToken`. Refusals: `config_invalid` for STS's own refusals (what the
    /// agent must fix), `sts_unavailable` when STS could not be reached.
    pub async fn web_identity_token(
        &self,
        audiences: &[&str],
        algorithm: &str,
        duration: Option<std::time::Duration>,
    ) -> Result<String, Error> {
        let client = aws_sdk_sts::Client::new(&self.config);
        let mut call = client.get_web_identity_token().signing_algorithm(algorithm);
        for a in audiences {
            call = call.audience(*a);
        }
        if let Some(d) = duration {
            call = call.duration_seconds(i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
        }
        match call.send().await {
            Ok(out) => out.web_identity_token().map(str::to_owned).ok_or_else(|| {
                Error::new(crate::ErrorKind::StsResponseInvalid, "STS answered without a WebIdentityToken")
            }),
            Err(aws_sdk_sts::error::SdkError::ServiceError(e)) => {
                Err(Error::config_invalid(format!("STS refused GetWebIdentityToken: {}", chain_error(e.err()))))
            }
            Err(e) => Err(Error::new(
                crate::ErrorKind::StsUnavailable,
                format!("GetWebIdentityToken failed: {}", chain_error(&e)),
            )
            .with_retryable(true)),
        }
    }

    /// A join request for `challenge`, signed for this region's STS endpoint ([`sts_endpoint`](crate::agent::sts_endpoint)).
    pub fn join_request(&self, challenge: impl Into<String>, fips: bool) -> JoinRequest {
        let join = JoinRequest::new(challenge).fips(fips);
        match &self.region {
            Some(region) => join.region(region.clone()),
            None => join,
        }
    }
}
