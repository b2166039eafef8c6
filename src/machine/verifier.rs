//! The [`Verifier`]: built once by a [`VerifierBuilder`] into an immutable, shared configuration,
//! with one explicit swap for what changes at run time (the token set). Every clone shares both,
//! so [`Verifier::replace_tokens`] reaches every clone by construction.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::core::challenge::{self, Challenge, ChallengeKeys};
use crate::core::error::{Error, ErrorKind};
use crate::core::proof::policy::RequestPolicy;
#[cfg(feature = "web-identity")]
use crate::core::proof::web_identity::{IssuerKeys, IssuerUrl, UncheckedToken, WebIdentityPolicy};
use crate::core::proof::{CheckedProof, Proof};
use crate::core::text::bounded_name;
use crate::core::token::Token;
use crate::core::token::set::TokenSet;
use crate::machine::states::{Checked, PendingClaim};

/// Verifies iam joins against a token set. Cheap to clone (`Arc` inside), `Send + Sync`; every
/// clone shares the configuration and the token set.
///
/// Build it once with [`Verifier::builder`]. Per join, either call the async `verify` (feature
/// `io`), or drive the state machine by hand from [`Verifier::start`].
///
/// ```
/// use iam_join::{RequestPolicy, TokenSet, Verifier};
/// let verifier = Verifier::builder(TokenSet::default()).policy(RequestPolicy::new()).build();
/// let other = verifier.clone();
/// verifier.replace_tokens(TokenSet::from_yaml("kind: token\nversion: v2\nmetadata: {name: t}\n\
///     spec: {roles: [Node], join_method: iam, allow: [{aws_account: \"111111111111\"}]}").unwrap());
/// assert_eq!(other.tokens().len(), 1, "the swap reaches every clone");
/// ```
#[derive(Clone)]
pub struct Verifier {
    shared: Arc<Shared>,
}

struct Shared {
    /// Swapped whole by [`Verifier::replace_tokens`]; each join reads it once.
    tokens: ArcSwap<TokenSet>,
    config: Config,
}

/// What a verifier checks with, fixed when it is built.
pub(crate) struct Config {
    pub(crate) policy: RequestPolicy,
    pub(crate) keys: Option<ChallengeKeys>,
    #[cfg(feature = "web-identity")]
    pub(crate) web_identity: Option<WebIdentityPolicy>,
    /// The I/O edge's part of the configuration (transport, replay guard, Organizations client,
    /// retries, deadline), held opaquely: this layer knows nothing of I/O, the edge reads its
    /// own type back (`io::driver`).
    #[cfg_attr(not(feature = "io"), allow(dead_code))]
    pub(crate) extension: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("tokens", &self.shared.tokens.load().len())
            .field("policy", &self.shared.config.policy)
            .field("challenge_keys", &self.shared.config.keys.as_ref().map(ChallengeKeys::active_id))
            .finish_non_exhaustive()
    }
}

/// Builds a [`Verifier`]: the request policy, the challenge key ring, and (feature `io`) the
/// transport, replay guard, Organizations client, retries and deadline.
#[must_use]
pub struct VerifierBuilder {
    tokens: TokenSet,
    policy: RequestPolicy,
    keys: Option<ChallengeKeys>,
    #[cfg(feature = "web-identity")]
    web_identity: Option<WebIdentityPolicy>,
    pub(crate) extension: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for VerifierBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierBuilder").field("tokens", &self.tokens.len()).finish_non_exhaustive()
    }
}

impl VerifierBuilder {
    /// How proofs are checked: trusted endpoints, the challenge header, the clock skew. Default
    /// [`RequestPolicy::new`].
    pub fn policy(mut self, policy: RequestPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Checks keyed challenges ([`Challenge::Keyed`], [`Challenge::KeyedInRequest`]) with this
    /// ring: any replica holding the same keys accepts a challenge another issued, for the token
    /// it was issued for, until it expires.
    pub fn challenge_keys(mut self, keys: ChallengeKeys) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Accepts web identity tokens ([`Proof::WebIdentityToken`]) that name this policy's
    /// audience, from the issuer it pins for their account (feature `web-identity`).
    #[cfg(feature = "web-identity")]
    pub fn web_identity(mut self, policy: WebIdentityPolicy) -> Self {
        self.web_identity = Some(policy);
        self
    }

    /// The verifier. Its configuration cannot change after this; its token set can
    /// ([`Verifier::replace_tokens`]).
    pub fn build(self) -> Verifier {
        let config = Config {
            policy: self.policy,
            keys: self.keys,
            #[cfg(feature = "web-identity")]
            web_identity: self.web_identity,
            extension: self.extension.map(Arc::from),
        };
        Verifier { shared: Arc::new(Shared { tokens: ArcSwap::from_pointee(self.tokens), config }) }
    }
}

impl Verifier {
    /// A builder, starting from the tokens to verify joins against.
    pub fn builder(tokens: TokenSet) -> VerifierBuilder {
        VerifierBuilder {
            tokens,
            policy: RequestPolicy::new(),
            keys: None,
            #[cfg(feature = "web-identity")]
            web_identity: None,
            extension: None,
        }
    }

    /// The configuration, for the I/O edge to read its own part back.
    #[cfg_attr(not(feature = "io"), allow(dead_code))]
    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The tokens joins are checked against now.
    pub fn tokens(&self) -> Arc<TokenSet> {
        self.shared.tokens.load_full()
    }

    /// Swaps in a new token set, for every clone of this verifier, without touching anything
    /// else (a transport's connection pool, the Organizations cache). A join in flight keeps the
    /// token it started with; the next one sees the new set.
    pub fn replace_tokens(&self, tokens: TokenSet) {
        self.shared.tokens.store(Arc::new(tokens));
    }

    /// The first state of a join: checks, without any network work, the challenge (its length,
    /// or for a keyed one its spelling, MAC and expiry against the key ring), the proof (so a
    /// malformed one gets the same refusal whether or not the token exists), then the token
    /// (exists, is an iam token, has not expired). Next: decide single use on the
    /// [`PendingClaim`]; only a claimed join reaches the STS step.
    ///
    /// Refusals: every join kind a local check can give; `config_invalid` for an issued plain
    /// challenge shorter than [`challenge::MIN_CHALLENGE_LEN`] (whatever the agent signed) and
    /// for a keyed challenge without a key ring. Emits the span `iam_join.prepare` (`token`,
    /// `outcome`).
    pub fn start(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        proof: Proof<'_>,
        now: SystemTime,
    ) -> Result<PendingClaim, Error> {
        let span =
            tracing::info_span!("iam_join.prepare", token = bounded_name(token_name), outcome = tracing::field::Empty);
        let _enter = span.enter();
        let result = self.check(token_name, challenge, proof, now).map(PendingClaim::new);
        span.record("outcome", result.as_ref().map_or_else(|e| e.kind().as_str(), |_| "prepared"));
        result
    }

    fn keys(&self) -> Result<&ChallengeKeys, Error> {
        self.shared
            .config
            .keys
            .as_ref()
            .ok_or_else(|| Error::config_invalid("keyed challenges need a key ring: VerifierBuilder::challenge_keys"))
    }

    /// The challenge the proof must have signed (`None`: read from the proof, checked against
    /// the key ring once the proof is), and a keyed challenge's expiry.
    fn issued<'c>(
        &self,
        token_name: &str,
        challenge: Challenge<'c>,
        now: SystemTime,
    ) -> Result<(Option<&'c str>, Option<SystemTime>), Error> {
        Ok(match challenge {
            Challenge::Plain(c) => {
                challenge::check_issued(c)?;
                (Some(c), None)
            }
            Challenge::Keyed(c) => (Some(c), Some(self.keys()?.check(c, token_name, now)?.expires())),
            Challenge::KeyedInRequest => (None, None),
        })
    }

    /// The token, checked last so that a malformed proof is refused alike for every token name.
    fn token(&self, token_name: &str, now: SystemTime) -> Result<Arc<Token>, Error> {
        let token = self.shared.tokens.load().lookup(token_name)?.clone();
        if token.is_expired(now) {
            return Err(Error::new(
                ErrorKind::TokenInvalid,
                format!("token {:?} has expired", bounded_name(token_name)),
            ));
        }
        Ok(token)
    }

    fn check(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        proof: Proof<'_>,
        now: SystemTime,
    ) -> Result<Checked, Error> {
        let policy = &self.shared.config.policy;
        let (issued, mut keyed_expiry) = self.issued(token_name, challenge, now)?;
        let proof = CheckedProof::check(proof, issued, policy, now)?;
        if issued.is_none() {
            keyed_expiry = Some(self.keys()?.check(proof.signed_challenge(), token_name, now)?.expires());
        }
        let token = self.token(token_name, now)?;
        Ok(Checked::new(token, proof, policy, keyed_expiry, now))
    }

    /// The first state of a join whose proof is a web identity token: checks the challenge, the
    /// token's shape, header and claims (issuer pinned for its account, audiences, time) and the
    /// provision token, then asks for the pinned issuer's keys ([`NeedsKeys`]) to check the
    /// signature. Feature `web-identity`; `config_invalid` without
    /// [`VerifierBuilder::web_identity`].
    #[cfg(feature = "web-identity")]
    pub fn start_web_identity(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        web_identity_token: &[u8],
        now: SystemTime,
    ) -> Result<NeedsKeys, Error> {
        let span =
            tracing::info_span!("iam_join.prepare", token = bounded_name(token_name), outcome = tracing::field::Empty);
        let _enter = span.enter();
        let result = (|| {
            let config = &self.shared.config;
            let web = config.web_identity.as_ref().ok_or_else(|| {
                Error::config_invalid(
                    "this verifier takes no web identity tokens: configure VerifierBuilder::web_identity",
                )
            })?;
            let (issued, mut keyed_expiry) = self.issued(token_name, challenge, now)?;
            let unchecked = UncheckedToken::parse(web_identity_token, issued, web, &config.policy, now)?;
            if issued.is_none() {
                keyed_expiry = Some(self.keys()?.check(unchecked.challenge(), token_name, now)?.expires());
            }
            let token = self.token(token_name, now)?;
            Ok(NeedsKeys { token, unchecked, policy: config.policy.clone(), keyed_expiry, now })
        })();
        span.record("outcome", result.as_ref().map_or_else(|e: &Error| e.kind().as_str(), |_| "needs_keys"));
        result
    }
}

/// A web identity join waiting for the pinned issuer's keys: fetch the JWKS of
/// [`NeedsKeys::issuer`] (from its OpenID configuration, on its own origin only), then
/// [`NeedsKeys::resume`]. The async `verify` does this with a [`JwksCache`](crate::JwksCache).
#[cfg(feature = "web-identity")]
#[must_use = "the join goes on once the signature is checked"]
pub struct NeedsKeys {
    token: Arc<Token>,
    unchecked: UncheckedToken,
    policy: RequestPolicy,
    keyed_expiry: Option<SystemTime>,
    now: SystemTime,
}

#[cfg(feature = "web-identity")]
impl fmt::Debug for NeedsKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NeedsKeys")
            .field("issuer", self.unchecked.issuer())
            .field("kid", &self.unchecked.kid())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "web-identity")]
impl NeedsKeys {
    /// The issuer pinned for the token's account: the only place its keys may come from.
    pub fn issuer(&self) -> &IssuerUrl {
        self.unchecked.issuer()
    }

    /// The key id the token names.
    pub fn kid(&self) -> &str {
        self.unchecked.kid()
    }

    /// The time the join is judged at.
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// Checks the signature with the issuer's keys: `signature_rejected` for a bad signature or
    /// a `kid` the keys do not hold, `malformed_request` for an `alg` that does not fit the key.
    /// Next: decide single use on the [`PendingClaim`].
    pub fn resume(self, keys: &IssuerKeys) -> Result<PendingClaim, Error> {
        let verified = self.unchecked.verify(keys)?;
        let proof = CheckedProof::WebIdentity(verified);
        Ok(PendingClaim::new(Checked::new(self.token, proof, &self.policy, self.keyed_expiry, self.now)))
    }
}
