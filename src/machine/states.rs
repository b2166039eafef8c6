//! The states of one join, each consumed by the step that follows it:
//!
//! [`Verifier::start`](crate::Verifier::start) → [`PendingClaim`] (proof, challenge and token
//! checked) → decide single use → [`Claimed`] → send [`Claimed::replay`] → [`Claimed::conclude`]
//! → [`Concluded::Allowed`], or [`Concluded::NeedsMembership`] → look the account up →
//! [`MembershipQuery::resume`] → [`Verdict`].
//!
//! A [`PendingClaim`] has no replay to send: a caller driving the machine by hand reaches the STS
//! step only through a claim decision.
//!
//! ```compile_fail
//! # fn by_hand(pending: iam_join::PendingClaim) {
//! let _ = pending.replay(); // no: single use must be decided first
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::core::arn::{AccountId, Partition};
use crate::core::endpoint::Endpoint;
use crate::core::error::{Error, ErrorKind};
use crate::core::identity::CallerIdentity;
use crate::core::matcher::Subject;
use crate::core::membership::Membership;
use crate::core::proof::CheckedProof;
use crate::core::proof::Replay;
use crate::core::proof::policy::RequestPolicy;
use crate::core::response::{HttpAnswer, StsAnswer, parse_sts_response};
use crate::core::token::Token;
use crate::core::token::role::Role;

/// A join whose local checks passed.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) token: Arc<Token>,
    pub(crate) proof: CheckedProof,
    pub(crate) claim_until: SystemTime,
    /// When the proof stops being fresh (signing time + the allowed skew).
    pub(crate) fresh_until: SystemTime,
    /// The time the join is judged at.
    pub(crate) now: SystemTime,
}

impl Checked {
    /// Single use lasts as long as the proof could be replayed: its freshness window, or the
    /// keyed challenge's life when that ends first.
    pub(crate) fn new(
        token: Arc<Token>,
        proof: CheckedProof,
        policy: &RequestPolicy,
        keyed_expiry: Option<SystemTime>,
        now: SystemTime,
    ) -> Self {
        let fresh_until = proof.fresh_until(policy);
        let claim_until = keyed_expiry.map_or(fresh_until, |e| e.min(fresh_until));
        Self { token, proof, claim_until, fresh_until, now }
    }
}

/// A join whose proof, challenge and token passed every local check, waiting for single use to
/// be decided: [`PendingClaim::claimed`] with what the replay guard answered, or
/// [`PendingClaim::single_use_by_caller`]. It holds the token as it was when the join started,
/// so a token set swapped in meanwhile cannot mix into this join.
#[must_use = "a join goes on only once single use is decided"]
pub struct PendingClaim {
    checked: Checked,
}

/// What a replay guard answered for a [`PendingClaim`]'s key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimResult {
    /// This join holds the claim now: it is the first use of its challenge.
    Claimed,
    /// The claim was already held, and has not expired: a replay.
    AlreadyClaimed,
}

impl fmt::Debug for PendingClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingClaim")
            .field("token", &self.checked.token.name())
            .field("endpoint", &self.endpoint().map(Endpoint::host))
            .field("claim_until", &self.checked.claim_until)
            .finish_non_exhaustive()
    }
}

impl PendingClaim {
    pub(crate) fn new(checked: Checked) -> Self {
        Self { checked }
    }

    /// The key to claim in a replay guard: `iam-join:c:` and a SHA-256 of the challenge's
    /// identity (its key id and nonce for a keyed challenge, its bytes for a plain one), never
    /// the challenge itself.
    pub fn claim_key(&self) -> String {
        crate::core::challenge::claim_key(self.checked.proof.signed_challenge())
    }

    /// Until when the claim must hold: the proof's freshness window, or a keyed challenge's life
    /// when that ends first. After it, the proof is refused anyway.
    pub fn claim_until(&self) -> SystemTime {
        self.checked.claim_until
    }

    /// The time the join is judged at (the `now` it started with).
    pub fn now(&self) -> SystemTime {
        self.checked.now
    }

    /// The token the join is for.
    pub fn token(&self) -> &Token {
        &self.checked.token
    }

    /// The STS endpoint the proof is replayed to; `None` for a proof checked offline (a web
    /// identity token).
    pub fn endpoint(&self) -> Option<&'static Endpoint> {
        self.checked.proof.replay().map(Replay::endpoint)
    }

    /// The join goes on if this claim was the first: [`ClaimResult::AlreadyClaimed`] is refused
    /// as `challenge_replayed`.
    pub fn claimed(self, result: ClaimResult) -> Result<Claimed, Error> {
        match result {
            ClaimResult::Claimed => Ok(Claimed { checked: self.checked }),
            ClaimResult::AlreadyClaimed => Err(Error::new(
                ErrorKind::ChallengeReplayed,
                "this challenge was already used for a join; the agent must ask for a new one",
            )),
        }
    }

    /// The join goes on without a claim: single use is the caller's own (it issues each plain
    /// challenge for one join and forgets it, as Teleport's auth server does per join stream).
    /// Choose this only then: a signed proof can otherwise be replayed until it expires.
    pub fn single_use_by_caller(self) -> Claimed {
        Claimed { checked: self.checked }
    }
}

/// A join whose single use is decided: its replay may be sent, and STS's answer concluded, as
/// many times as retries need.
pub struct Claimed {
    checked: Checked,
}

impl fmt::Debug for Claimed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claimed")
            .field("token", &self.checked.token.name())
            .field("replay", &self.checked.proof.replay())
            .finish_non_exhaustive()
    }
}

impl Claimed {
    /// The request to send to STS, as is; `None` when the proof was checked offline (a web
    /// identity token): then [`Claimed::conclude_offline`].
    pub fn replay(&self) -> Option<&Replay> {
        self.checked.proof.replay()
    }

    /// The token the join is for.
    pub fn token(&self) -> &Token {
        &self.checked.token
    }

    /// The time the join is judged at.
    pub fn now(&self) -> SystemTime {
        self.checked.now
    }

    /// When the proof stops being fresh: no retry is worth sending after it.
    pub fn fresh_until(&self) -> SystemTime {
        self.checked.fresh_until
    }

    /// Reads STS's answer to [`Claimed::replay`] strictly and matches the identity against the
    /// token: [`Concluded::Allowed`], [`Concluded::NeedsMembership`] when an organization rule
    /// must decide, or a refusal (`sts_unavailable` when a retry may help). Emits the span
    /// `iam_join.conclude` (`outcome`).
    pub fn conclude(&self, answer: &HttpAnswer) -> Result<Concluded, Error> {
        self.concluding(|| self.read(answer).and_then(|a| conclude(&self.checked.token, a)))
    }

    /// Matches the identity a proof checked offline (a web identity token) proved against the
    /// token; organization rules are decided from the proof's own organization claims, so the
    /// answer is never [`Concluded::NeedsMembership`]. `config_invalid` for a proof that needs
    /// STS's answer ([`Claimed::replay`] is `Some`). Emits the span `iam_join.conclude`.
    pub fn conclude_offline(&self) -> Result<Concluded, Error> {
        self.concluding(|| match &self.checked.proof {
            #[cfg(feature = "web-identity")]
            CheckedProof::WebIdentity(t) => {
                let answer = StsAnswer { identity: t.identity.clone(), request_id: None };
                match conclude(&self.checked.token, answer)? {
                    Concluded::NeedsMembership(q) => q.resume(&t.membership).map(Concluded::Allowed),
                    done => Ok(done),
                }
            }
            _ => Err(Error::config_invalid("this proof is checked by STS: send Claimed::replay and conclude")),
        })
    }

    fn concluding(&self, f: impl FnOnce() -> Result<Concluded, Error>) -> Result<Concluded, Error> {
        let span = tracing::info_span!("iam_join.conclude", outcome = tracing::field::Empty);
        let _enter = span.enter();
        let result = f();
        span.record(
            "outcome",
            match &result {
                Ok(Concluded::Allowed(_)) => "allowed",
                Ok(Concluded::NeedsMembership(_)) => "needs_membership",
                Err(e) => e.kind().as_str(),
            },
        );
        result
    }

    /// STS's answer, parsed strictly, from the partition of the endpoint that gave it: an
    /// identity of another partition (an `aws-us-gov` ARN from `sts.amazonaws.com`) is no answer
    /// STS gives.
    fn read(&self, answer: &HttpAnswer) -> Result<StsAnswer, Error> {
        let Some(replay) = self.checked.proof.replay() else {
            return Err(Error::config_invalid(
                "this proof was checked offline: conclude it with Claimed::conclude_offline",
            ));
        };
        let parsed = parse_sts_response(answer.status, answer.content_type.as_deref(), &answer.body)?;
        let (got, endpoint) = (parsed.identity.arn().partition(), replay.endpoint());
        if got != endpoint.partition() {
            return Err(Error::new(
                ErrorKind::StsResponseInvalid,
                format!(
                    "the identity is in partition {} but {} serves partition {}",
                    got.as_str(),
                    endpoint.host(),
                    endpoint.partition().as_str()
                ),
            ));
        }
        Ok(parsed)
    }
}

/// Decide now, or ask for a membership. The plain rules are matched once; organization rules
/// can decide only when they come before the first plain match (the lowest index wins) and
/// their other fields match.
fn conclude(token: &Arc<Token>, answer: StsAnswer) -> Result<Concluded, Error> {
    let m = token.matcher();
    let subject = Subject::from(&answer.identity);
    let plain = m.first_match(subject);
    let mut candidates = m.organization_candidates(subject);
    if let Some(plain) = plain {
        candidates.retain(|&i| i < plain);
    }
    if candidates.is_empty() {
        return decide(token, answer, plain).map(Concluded::Allowed);
    }
    Ok(Concluded::NeedsMembership(MembershipQuery { token: Arc::clone(token), answer, candidates, plain }))
}

/// The verdict for the rule that matched, or `not_allowed` with the identity kept for audit.
fn decide(token: &Token, answer: StsAnswer, matched: Option<usize>) -> Result<Verdict, Error> {
    let identity = answer.identity;
    match matched {
        Some(rule) => Ok(Verdict {
            token: token.name().to_owned(),
            roles: token.roles().to_vec(),
            identity,
            matched_rule: rule,
            sts_request_id: answer.request_id,
            token_expires: token.expires(),
        }),
        None => Err(Error::new(
            ErrorKind::NotAllowed,
            format!("{} matches no allow rule of token {:?}", identity.arn(), token.name()),
        )
        .with_identity(identity)),
    }
}

/// A verdict for `identity` by rule 0 of `token`, for the tests of the layers above.
#[cfg(test)]
pub(crate) fn verdict_for_tests(token: &Token, identity: CallerIdentity) -> Verdict {
    decide(token, StsAnswer { identity, request_id: None }, Some(0)).unwrap_or_else(|e| panic!("{e}"))
}

/// What STS's answer concluded: a verdict, or the one lookup an organization rule needs.
#[derive(Debug)]
#[must_use]
pub enum Concluded {
    /// A rule allows the identity.
    Allowed(Verdict),
    /// An organization rule must decide: look up where [`MembershipQuery::account`] sits in
    /// [`MembershipQuery::partition`] (e.g. with `organizations::OrganizationsClient`), then call
    /// [`MembershipQuery::resume`].
    NeedsMembership(MembershipQuery),
}

impl Concluded {
    /// The verdict, for callers whose tokens use no organization rules: a needed membership
    /// is refused as `lookup_failed`, with the identity kept for audit.
    pub fn into_verdict(self) -> Result<Verdict, Error> {
        match self {
            Concluded::Allowed(v) => Ok(v),
            Concluded::NeedsMembership(q) => Err(Error::new(
                ErrorKind::LookupFailed,
                "an organization rule must decide: look up the membership and resume",
            )
            .with_identity(q.answer.identity)),
        }
    }
}

/// A join waiting for an AWS Organizations membership.
#[derive(Debug)]
pub struct MembershipQuery {
    token: Arc<Token>,
    answer: StsAnswer,
    /// Organization rules that could decide, lowest first, all before `plain`.
    candidates: Vec<usize>,
    /// The first plain rule that matches, if any: it decides when no candidate admits.
    plain: Option<usize>,
}

impl MembershipQuery {
    /// The partition to look the account up in.
    pub fn partition(&self) -> Partition {
        self.answer.identity.arn().partition()
    }

    /// The account whose membership decides.
    pub fn account(&self) -> AccountId {
        *self.answer.identity.account()
    }

    /// The verified identity.
    pub fn identity(&self) -> &CallerIdentity {
        &self.answer.identity
    }

    /// Finishes the join with the membership looked up for [`MembershipQuery::account`].
    pub fn resume(self, membership: &Membership) -> Result<Verdict, Error> {
        let rules = self.token.rules();
        let by_organization = self.candidates.iter().copied().find(|&i| membership.admits(&rules[i]));
        decide(&self.token, self.answer, by_organization.or(self.plain))
    }

    /// The identity, for a refusal when the lookup failed (the I/O edge's lookup).
    #[cfg_attr(not(feature = "io"), allow(dead_code))]
    pub(crate) fn into_identity(self) -> CallerIdentity {
        self.answer.identity
    }
}

/// A successful join: proof that the proof was valid, STS vouched for the identity, and a rule
/// of the token allows it. Only the state machine can make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    token: String,
    roles: Vec<Role>,
    identity: CallerIdentity,
    matched_rule: usize,
    sts_request_id: Option<String>,
    token_expires: Option<SystemTime>,
}

impl Verdict {
    /// The token the agent joined with.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The system roles the token grants.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// The verified identity.
    pub fn identity(&self) -> &CallerIdentity {
        &self.identity
    }

    /// The index of the allow rule that matched (the lowest one that did).
    pub fn matched_rule(&self) -> usize {
        self.matched_rule
    }

    /// STS's request id, for correlating with AWS's logs.
    pub fn sts_request_id(&self) -> Option<&str> {
        self.sts_request_id.as_deref()
    }

    /// When the token joined with expires, if it does: credentials issued for this join end no
    /// later.
    pub fn token_expires(&self) -> Option<SystemTime> {
        self.token_expires
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::token::set::TokenSet;

    const TOKENS: &str = "kind: token\nversion: v2\nmetadata: {name: t}\nspec: {roles: [Node], join_method: iam, allow: [{aws_organization_id: o-abcdefghij}, {aws_account: \"111111111111\"}]}\n";

    #[test]
    fn an_organization_rule_first_asks_for_a_membership_and_resume_decides() {
        let tokens = TokenSet::from_yaml(TOKENS).unwrap();
        let token = tokens.get("t").unwrap().clone();
        let identity =
            CallerIdentity::new("111111111111", "arn:aws:iam::111111111111:user/ci", "AIDAEXAMPLEUSERID0001").unwrap();
        let answer = || StsAnswer { identity: identity.clone(), request_id: None };
        let Ok(Concluded::NeedsMembership(q)) = conclude(&token, answer()) else { panic!("rule 0 must ask") };
        assert_eq!((q.partition(), q.account().as_str()), (Partition::Aws, "111111111111"));
        let member = Membership::member("o-abcdefghij", vec!["r-ab12".into()]);
        assert_eq!(q.resume(&member).unwrap().matched_rule(), 0);
        // Not a member: the plain rule after it decides.
        let Ok(Concluded::NeedsMembership(q)) = conclude(&token, answer()) else { panic!("rule 0 must ask") };
        assert_eq!(q.resume(&Membership::NotInOrganization).unwrap().matched_rule(), 1);
        // A caller without lookups gets lookup_failed, with the identity kept.
        let e = conclude(&token, answer()).unwrap().into_verdict().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LookupFailed);
        assert!(e.identity().is_some());
    }
}
