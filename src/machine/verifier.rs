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
use crate::core::proof::{CheckedProof, Proof};
use crate::core::text::bounded_name;
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
    /// The I/O edge's part of the configuration (transport, replay guard, Organizations client,
    /// retries, deadline), held opaquely: this layer knows nothing of I/O, the edge reads its
    /// own type back (`io::driver`).
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

    /// The verifier. Its configuration cannot change after this; its token set can
    /// ([`Verifier::replace_tokens`]).
    pub fn build(self) -> Verifier {
        let config = Config { policy: self.policy, keys: self.keys, extension: self.extension.map(Arc::from) };
        Verifier { shared: Arc::new(Shared { tokens: ArcSwap::from_pointee(self.tokens), config }) }
    }
}

impl Verifier {
    /// A builder, starting from the tokens to verify joins against.
    pub fn builder(tokens: TokenSet) -> VerifierBuilder {
        VerifierBuilder { tokens, policy: RequestPolicy::new(), keys: None, extension: None }
    }

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

    fn check(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        proof: Proof<'_>,
        now: SystemTime,
    ) -> Result<Checked, Error> {
        let policy = &self.shared.config.policy;
        // The challenge the proof must have signed, checked first; a keyed one read from the
        // proof is checked once the proof is.
        let (issued, mut keyed_expiry) = match challenge {
            Challenge::Plain(c) => {
                challenge::check_issued(c)?;
                (Some(c), None)
            }
            Challenge::Keyed(c) => (Some(c), Some(self.keys()?.check(c, token_name, now)?.expires())),
            Challenge::KeyedInRequest => (None, None),
        };
        let proof = CheckedProof::check(proof, issued, policy, now)?;
        if issued.is_none() {
            keyed_expiry = Some(self.keys()?.check(proof.signed_challenge(), token_name, now)?.expires());
        }
        // The token last, so that a malformed proof is refused alike for every token name.
        let token = self.shared.tokens.load().lookup(token_name)?.clone();
        if token.is_expired(now) {
            return Err(Error::new(
                ErrorKind::TokenInvalid,
                format!("token {:?} has expired", bounded_name(token_name)),
            ));
        }
        // Single use lasts as long as the proof could be replayed: its freshness window, or the
        // keyed challenge's life when that ends first.
        let fresh_until = proof.signed_at() + policy.skew();
        let until = keyed_expiry.map_or(fresh_until, |e| e.min(fresh_until));
        Ok(Checked { token, proof, claim_until: until, fresh_until, now })
    }
}
