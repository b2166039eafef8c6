//! The one call an auth server makes per join, and the sans-IO state machine it drives:
//! [`Verifier::prepare`] → (send) → [`Verifier::conclude`] → (when an organization rule must
//! decide: look up the membership → [`Verifier::resume`]) → [`Verdict`]. The async
//! [`Verifier::verify`] and [`Verifier::verify_with`] (feature `io`) drive the same machine.

use std::fmt;
use std::sync::Arc;
#[cfg(feature = "io")]
use std::time::Instant;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::arn::{AccountId, Partition};
use crate::challenge::{self, Challenge, ChallengeKeys};
use crate::error::{Error, ErrorKind};
use crate::identity::CallerIdentity;
use crate::membership::Membership;
use crate::request::{RequestPolicy, StsRequest};
#[cfg(feature = "io")]
use crate::response::StsResponse;
use crate::response::{StsAnswer, parse_sts_response};
use crate::token::{Role, Token, TokenSet, truncated_name};
#[cfg(feature = "io")]
use crate::{organizations::OrganizationsClient, replay::ReplayGuard, transport::StsTransport};

/// Default number of retries after an `sts_unavailable` outcome (GetCallerIdentity is idempotent).
pub const DEFAULT_RETRIES: u32 = 2;
/// Default bound on one whole verification, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);

/// A successful join: proof that the request was valid, STS vouched for the identity, and a rule
/// of the token allows it. Only a [`Verifier`] can make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    token: String,
    roles: Vec<Role>,
    identity: CallerIdentity,
    matched_rule: usize,
    sts_request_id: Option<String>,
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
}

/// `{"allowed": true, "token", "roles", "identity", "matched_rule"}`: what `iam-join verify`
/// prints for an allowed join. STS's request id is left out (it is for the server's log).
#[cfg(feature = "serialize")]
impl serde::Serialize for Verdict {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Verdict", 5)?;
        st.serialize_field("allowed", &true)?;
        st.serialize_field("token", &self.token)?;
        st.serialize_field("roles", &self.roles)?;
        st.serialize_field("identity", &self.identity)?;
        st.serialize_field("matched_rule", &self.matched_rule)?;
        st.end()
    }
}

/// The first half of a sans-IO verification: the token is usable and the request valid. Send
/// [`Prepared::request`] with your own HTTP stack, then call [`Verifier::conclude`]. It holds the
/// token as it was when prepared, so a token set swapped in meanwhile cannot mix into this join.
#[derive(Clone, Debug)]
pub struct Prepared {
    token: Arc<Token>,
    request: StsRequest,
    /// Until when the challenge must stay claimed: the request's freshness window, or the keyed
    /// challenge's expiry when that comes first.
    claim_until: SystemTime,
}

/// What STS's answer concluded: a verdict, or the one lookup an organization rule needs.
#[derive(Debug)]
#[must_use]
pub enum Concluded {
    /// A rule allows the identity.
    Allowed(Verdict),
    /// An organization rule must decide: look up where [`MembershipQuery::account`] sits in
    /// [`MembershipQuery::partition`] (e.g. with `organizations::OrganizationsClient`), then call
    /// [`Verifier::resume`].
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

/// The state of a verification waiting for an AWS Organizations membership.
#[derive(Debug)]
pub struct MembershipQuery {
    prepared: Prepared,
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
}

impl Prepared {
    /// The rebuilt request to send to STS.
    pub fn request(&self) -> &StsRequest {
        &self.request
    }

    /// The token the request is for.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// Until when a replay guard must hold this join's challenge: after it, the signed request
    /// is refused as expired (or its keyed challenge as expired) anyway.
    pub fn claim_until(&self) -> SystemTime {
        self.claim_until
    }
}

/// Verifies iam joins against a token set. Cheap to share (`Arc` inside); `Send + Sync`.
///
/// ```no_run
/// use iam_join::{RequestPolicy, ReqwestTransport, TokenSet, Verifier};
/// # async fn join(raw_request: &[u8], challenge: &str) -> Result<(), iam_join::Error> {
/// let tokens = TokenSet::load(&std::fs::read_to_string("tokens.yaml").unwrap());
/// let verifier = Verifier::new(tokens, RequestPolicy::new(), ReqwestTransport::new()?);
/// let verdict = verifier.verify("iam-token", challenge, raw_request, std::time::SystemTime::now()).await?;
/// println!("{} joins as {:?}", verdict.identity().arn(), verdict.roles());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// Swapped whole by [`Verifier::replace_tokens`]; each verification reads it once.
    tokens: ArcSwap<TokenSet>,
    policy: RequestPolicy,
    challenge_keys: Option<Arc<ChallengeKeys>>,
    #[cfg(feature = "io")]
    replay: Option<Arc<dyn ReplayGuard>>,
    retries: u32,
    deadline: Duration,
    #[cfg(feature = "io")]
    transport: Option<Arc<dyn StsTransport>>,
    #[cfg(feature = "io")]
    organizations: Option<Arc<OrganizationsClient>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Verifier");
        d.field("tokens", &self.inner.tokens.load().len())
            .field("policy", &self.inner.policy)
            .field("retries", &self.inner.retries)
            .field("deadline", &self.inner.deadline);
        #[cfg(feature = "io")]
        d.field("transport", &self.inner.transport);
        d.finish()
    }
}

/// STS's answer, parsed strictly, from the partition of the endpoint that gave it: an identity of
/// another partition (an `aws-us-gov` ARN from `sts.amazonaws.com`) is no answer STS gives.
fn read_answer(prepared: &Prepared, status: u16, content_type: Option<&str>, body: &[u8]) -> Result<StsAnswer, Error> {
    let answer = parse_sts_response(status, content_type, body)?;
    let (got, endpoint) = (answer.identity.arn().partition(), prepared.request.endpoint());
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
    Ok(answer)
}

fn token_invalid(detail: impl Into<String>) -> Error {
    Error::new(ErrorKind::TokenInvalid, detail)
}

impl Verifier {
    /// A verifier for the sans-IO state machine only ([`Verifier::prepare`],
    /// [`Verifier::conclude`], [`Verifier::resume`]), or for [`Verifier::verify_with`] with your
    /// own HTTP stack. Default retries (2) and deadline (15 s).
    pub fn sans_io(tokens: TokenSet, policy: RequestPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                tokens: ArcSwap::from_pointee(tokens),
                policy,
                challenge_keys: None,
                #[cfg(feature = "io")]
                replay: None,
                retries: DEFAULT_RETRIES,
                deadline: DEFAULT_DEADLINE,
                #[cfg(feature = "io")]
                transport: None,
                #[cfg(feature = "io")]
                organizations: None,
            }),
        }
    }

    /// A verifier with the default retries (2) and deadline (15 s).
    #[cfg(feature = "io")]
    pub fn new(tokens: TokenSet, policy: RequestPolicy, transport: impl StsTransport + 'static) -> Self {
        Self::with_shared_transport(tokens, policy, Arc::new(transport))
    }

    /// Like [`Verifier::new`], sharing a transport (and its connection pool) between verifiers.
    #[cfg(feature = "io")]
    pub fn with_shared_transport(tokens: TokenSet, policy: RequestPolicy, transport: Arc<dyn StsTransport>) -> Self {
        let v = Self::sans_io(tokens, policy);
        v.map(|i| i.transport = Some(transport))
    }

    /// Retries after `sts_unavailable` outcomes (default 2), always within the request's
    /// freshness window and the deadline.
    pub fn retries(self, retries: u32) -> Self {
        self.map(|i| i.retries = retries)
    }

    /// Evaluates organization rules (`aws_organization_id`, `aws_organizational_units`) with this
    /// client in [`Verifier::verify`]. Without one, tokens that use them are refused with
    /// `token_invalid` there. The client is shared, its cache with it.
    #[cfg(feature = "io")]
    pub fn organizations(self, client: impl Into<Arc<OrganizationsClient>>) -> Self {
        let client = client.into();
        self.map(|i| i.organizations = Some(client))
    }

    /// Checks keyed challenges with this key ring ([`Verifier::prepare_keyed`],
    /// [`Verifier::verify_keyed`]): any replica holding the same keys accepts a challenge another
    /// issued, for the token it was issued for, until it expires.
    pub fn challenge_keys(self, keys: ChallengeKeys) -> Self {
        let keys = Arc::new(keys);
        self.map(|i| i.challenge_keys = Some(keys))
    }

    /// Claims each join's challenge in `guard` before the STS round trip, so one signed request
    /// joins once: a replay is refused as `challenge_replayed`, and a store that cannot answer
    /// fails the join closed as `replay_store_unavailable`. Share one guard (or one shared
    /// store) between every verifier that may see the same requests.
    #[cfg(feature = "io")]
    pub fn replay_guard(self, guard: Arc<dyn ReplayGuard>) -> Self {
        self.map(|i| i.replay = Some(guard))
    }

    /// Bound on one whole verification, retries included (default 15 s).
    pub fn deadline(self, deadline: Duration) -> Self {
        self.map(|i| i.deadline = deadline)
    }

    fn map(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|arc| Inner {
            tokens: ArcSwap::new(arc.tokens.load_full()),
            policy: arc.policy.clone(),
            challenge_keys: arc.challenge_keys.clone(),
            #[cfg(feature = "io")]
            replay: arc.replay.clone(),
            retries: arc.retries,
            deadline: arc.deadline,
            #[cfg(feature = "io")]
            transport: arc.transport.clone(),
            #[cfg(feature = "io")]
            organizations: arc.organizations.clone(),
        });
        f(&mut inner);
        Self { inner: Arc::new(inner) }
    }

    /// The tokens verifications use now.
    pub fn tokens(&self) -> Arc<TokenSet> {
        self.inner.tokens.load_full()
    }

    /// Swaps in a new token set, for every clone of this verifier, without touching the
    /// transport's connection pool or the Organizations cache. A verification in flight keeps
    /// the token it started with; the next one sees the new set.
    pub fn replace_tokens(&self, tokens: TokenSet) {
        self.inner.tokens.store(Arc::new(tokens));
    }

    /// Checks the request and the token without any network work: the first step of the state
    /// machine, for a challenge the caller issued ([`Challenge::Plain`]). Refuses an issued
    /// challenge shorter than [`challenge::MIN_CHALLENGE_LEN`] as `config_invalid` before
    /// reading the request, whatever the agent signed.
    pub fn prepare(
        &self,
        token_name: &str,
        challenge: &str,
        raw_request: &[u8],
        now: SystemTime,
    ) -> Result<Prepared, Error> {
        self.prepare_challenge(token_name, Challenge::Plain(challenge), raw_request, now)
    }

    /// [`Verifier::prepare`] for a keyed challenge read from the request
    /// ([`Challenge::KeyedInRequest`]): checked against the key ring
    /// ([`Verifier::challenge_keys`]) for `token_name` (spelling, key id, MAC, expiry).
    /// Refusals: `challenge_mismatch` for a forged, expired, misspelled or misbound challenge;
    /// `config_invalid` without a key ring.
    pub fn prepare_keyed(&self, token_name: &str, raw_request: &[u8], now: SystemTime) -> Result<Prepared, Error> {
        self.prepare_challenge(token_name, Challenge::KeyedInRequest, raw_request, now)
    }

    /// The first step of the state machine for any [`Challenge`]. Checks, in order: the challenge
    /// (its length, or for a keyed one its spelling, MAC and expiry against the key ring), the
    /// request (so that a malformed request gets the same refusal whether or not the token
    /// exists), then the token. A keyed challenge's claim lasts until it expires, or until the
    /// request's freshness window ends if that is first.
    pub fn prepare_challenge(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        raw_request: &[u8],
        now: SystemTime,
    ) -> Result<Prepared, Error> {
        let span = tracing::info_span!(
            "iam_join.prepare",
            token = truncated_name(token_name),
            outcome = tracing::field::Empty
        );
        let _enter = span.enter();
        let result = self.prepare_unspanned(token_name, challenge, raw_request, now);
        span.record("outcome", result.as_ref().map_or_else(|e| e.kind().as_str(), |_| "prepared"));
        result
    }

    fn keys(&self) -> Result<&ChallengeKeys, Error> {
        self.inner
            .challenge_keys
            .as_deref()
            .ok_or_else(|| Error::config_invalid("keyed challenges need a key ring: set Verifier::challenge_keys"))
    }

    fn prepare_unspanned(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        raw_request: &[u8],
        now: SystemTime,
    ) -> Result<Prepared, Error> {
        let policy = &self.inner.policy;
        let (request, expires) = match challenge {
            Challenge::Plain(c) => {
                challenge::check_issued(c)?;
                (StsRequest::parse(raw_request, c, policy, now)?, None)
            }
            Challenge::Keyed(c) => {
                let checked = self.keys()?.check(c, token_name, now)?;
                (StsRequest::parse(raw_request, c, policy, now)?, Some(checked.expires()))
            }
            Challenge::KeyedInRequest => {
                let keys = self.keys()?;
                let request = StsRequest::parse_unchecked(raw_request, policy, now)?;
                let checked = keys.check(request.signed_challenge(), token_name, now)?;
                (request, Some(checked.expires()))
            }
        };
        let tokens = self.inner.tokens.load();
        let token = tokens.lookup(token_name)?.clone();
        if token.is_expired(now) {
            return Err(token_invalid(format!("token {:?} has expired", truncated_name(token_name))));
        }
        let fresh_until = request.signed_at() + policy.skew();
        let claim_until = expires.map_or(fresh_until, |e| e.min(fresh_until));
        Ok(Prepared { token, request, claim_until })
    }

    /// Reads STS's answer to a prepared request and matches the identity against the token:
    /// [`Concluded::Allowed`], a refusal, or [`Concluded::NeedsMembership`] when an organization
    /// rule must decide (resume with [`Verifier::resume`]).
    pub fn conclude(
        &self,
        prepared: &Prepared,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Concluded, Error> {
        let span = tracing::info_span!("iam_join.conclude", outcome = tracing::field::Empty);
        let _enter = span.enter();
        let result = read_answer(prepared, status, content_type, body).and_then(|answer| step(prepared, answer));
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

    /// Finishes a verification that needed an organization membership, with the membership
    /// looked up for [`MembershipQuery::account`].
    pub fn resume(&self, query: MembershipQuery, membership: &Membership) -> Result<Verdict, Error> {
        let rules = query.prepared.token.rules();
        let by_organization = query.candidates.iter().copied().find(|&i| membership.admits(&rules[i]));
        decide(&query.prepared, query.answer, by_organization.or(query.plain))
    }
}

/// The async drivers of the state machine: STS round trips with retries inside a deadline and the
/// request's freshness window, organization lookups, and one `tracing` span per verification.
#[cfg(feature = "io")]
impl Verifier {
    /// Verifies one join: token, request, STS round trip (with retries), identity, rules,
    /// organization lookups. Needs a transport ([`Verifier::new`]); a verifier made with
    /// [`Verifier::sans_io`] refuses with `config_invalid`.
    ///
    /// `now` is the wall-clock time the request's freshness and the token's expiry are judged
    /// against; waiting is measured with a monotonic clock. Everything, retries and transport
    /// included, runs inside one `tracing` span `iam_join.verify` (fields in the crate docs).
    pub async fn verify(
        &self,
        token_name: &str,
        challenge: &str,
        raw_request: &[u8],
        now: SystemTime,
    ) -> Result<Verdict, Error> {
        self.run_through_transport(token_name, Challenge::Plain(challenge), raw_request, now).await
    }

    /// [`Verifier::verify`] for a keyed challenge ([`Verifier::prepare_keyed`]): the agent's
    /// request carries a challenge issued by any replica with the same key ring.
    pub async fn verify_keyed(&self, token_name: &str, raw_request: &[u8], now: SystemTime) -> Result<Verdict, Error> {
        self.run_through_transport(token_name, Challenge::KeyedInRequest, raw_request, now).await
    }

    /// [`Verifier::verify`] for any [`Challenge`] ([`Verifier::prepare_challenge`]): for a join
    /// service whose envelope carries a keyed challenge, `Challenge::Keyed(received)`.
    pub async fn verify_challenge(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        raw_request: &[u8],
        now: SystemTime,
    ) -> Result<Verdict, Error> {
        self.run_through_transport(token_name, challenge, raw_request, now).await
    }

    /// Runs the machine with the verifier's own transport.
    async fn run_through_transport(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        raw_request: &[u8],
        now: SystemTime,
    ) -> Result<Verdict, Error> {
        let Some(transport) = self.inner.transport.clone() else {
            return Err(Error::config_invalid(
                "this verifier has no transport: build it with Verifier::new, or call verify_with",
            ));
        };
        let send = move |request: StsRequest| {
            let transport = Arc::clone(&transport);
            async move { transport.send(&request).await }
        };
        self.run(token_name, challenge, raw_request, now, send).await
    }

    /// [`Verifier::verify`] with your own round trip: `send` makes one HTTP exchange of the
    /// rebuilt request it is given ([`StsRequest::url`], [`StsRequest::headers`],
    /// [`StsRequest::body`]; a copy per attempt, so its future may borrow your client freely) and
    /// returns STS's raw answer, or an error built with [`Error::sts_unavailable`] when the
    /// exchange failed. The crate keeps the retries, the deadline and freshness budget, the span
    /// and the organization rules.
    ///
    /// ```
    /// # async fn demo() -> Result<(), iam_join::Error> {
    /// use iam_join::{Error, RequestPolicy, StsResponse, TokenSet, Verifier};
    /// let verifier = Verifier::sans_io(TokenSet::default(), RequestPolicy::new());
    /// let outcome = verifier
    ///     .verify_with("iam-token", &iam_join::challenge::generate().unwrap(), b"", std::time::SystemTime::now(), |_request| async {
    ///         Err::<StsResponse, _>(Error::sts_unavailable("my HTTP client", std::io::Error::other("refused")))
    ///     })
    ///     .await;
    /// assert_eq!(outcome.unwrap_err().kind(), iam_join::ErrorKind::MalformedRequest); // no request
    /// # Ok(()) }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub async fn verify_with<S, F>(
        &self,
        token_name: &str,
        challenge: &str,
        raw_request: &[u8],
        now: SystemTime,
        send: S,
    ) -> Result<Verdict, Error>
    where
        S: Fn(StsRequest) -> F,
        F: std::future::Future<Output = Result<StsResponse, Error>>,
    {
        self.run(token_name, Challenge::Plain(challenge), raw_request, now, send).await
    }

    async fn run<S, F>(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        raw_request: &[u8],
        now: SystemTime,
        send: S,
    ) -> Result<Verdict, Error>
    where
        S: Fn(StsRequest) -> F,
        F: std::future::Future<Output = Result<StsResponse, Error>>,
    {
        use tracing::Instrument as _;
        use tracing::field::Empty;
        let span = tracing::info_span!(
            "iam_join.verify",
            token = truncated_name(token_name),
            outcome = Empty,
            endpoint = Empty,
            sts_request_id = Empty,
            attempts = Empty,
            prepare_us = Empty,
            sts_us = Empty,
            total_us = Empty,
        );
        let started = Instant::now();
        let result = self.drive(token_name, challenge, raw_request, now, &send, &span).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "allowed",
            Err(e) => e.kind().as_str(),
        };
        let total_us = started.elapsed().as_micros() as u64;
        span.record("outcome", outcome);
        span.record("total_us", total_us);
        if let Ok(v) = &result {
            span.record("sts_request_id", v.sts_request_id());
        }
        let _enter = span.enter();
        match &result {
            Ok(v) => tracing::info!(
                arn = v.identity().arn().as_str(),
                rule = v.matched_rule(),
                elapsed_us = total_us,
                "join allowed"
            ),
            Err(e) => tracing::info!(error = %e, elapsed_us = total_us, "join refused"),
        }
        result
    }

    async fn drive<S, F>(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        raw_request: &[u8],
        now: SystemTime,
        send: &S,
        span: &tracing::Span,
    ) -> Result<Verdict, Error>
    where
        S: Fn(StsRequest) -> F,
        F: std::future::Future<Output = Result<StsResponse, Error>>,
    {
        let t0 = Instant::now();
        let prepared = self.prepare_challenge(token_name, challenge, raw_request, now);
        span.record("prepare_us", t0.elapsed().as_micros() as u64);
        let prepared = prepared?;
        if self.inner.organizations.is_none() && prepared.token.matcher().organization_rules().next().is_some() {
            return Err(token_invalid(format!(
                "token {:?} uses aws_organization_id rules but this verifier has no Organizations lookup configured",
                truncated_name(token_name)
            )));
        }
        span.record("endpoint", prepared.request.endpoint().host());
        // Single use: claimed after every local check, before anything is sent.
        if let Some(guard) = &self.inner.replay {
            let key = challenge::claim_key(prepared.request.signed_challenge());
            if !guard.claim(&key, prepared.claim_until, now).await? {
                return Err(Error::new(
                    ErrorKind::ChallengeReplayed,
                    "this challenge was already used for a join; the agent must ask for a new one",
                ));
            }
        }

        // Retries stop at the deadline and before the request would no longer be fresh.
        let age = now.duration_since(prepared.request.signed_at()).unwrap_or(Duration::ZERO);
        let fresh_for = self.inner.policy.skew().saturating_sub(age);
        let budget = self.inner.deadline.min(fresh_for.max(Duration::from_millis(1)));
        let t1 = Instant::now();
        let outcome = tokio::time::timeout(budget, self.round_trips(&prepared, t1, budget, span, send)).await;
        span.record("sts_us", t1.elapsed().as_micros() as u64);
        let answer = match outcome {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::StsUnavailable,
                    format!("STS did not answer within {} ms (deadline or freshness window)", budget.as_millis()),
                )
                .with_retryable(true));
            }
        };
        match step(&prepared, answer)? {
            Concluded::Allowed(verdict) => Ok(verdict),
            Concluded::NeedsMembership(query) => {
                let client = self
                    .inner
                    .organizations
                    .as_ref()
                    .ok_or_else(|| token_invalid("token uses organization rules but no lookup is configured"))?;
                match client.membership(query.partition(), query.account(), now).await {
                    Ok(m) => self.resume(query, &m),
                    Err(e) => Err(e.with_identity(query.answer.identity)),
                }
            }
        }
    }

    /// Sends and parses until an answer that is not a retryable `sts_unavailable` (connection
    /// failures, throttling, 5xx), or the retries run out.
    async fn round_trips<S, F>(
        &self,
        prepared: &Prepared,
        start: Instant,
        budget: Duration,
        span: &tracing::Span,
        send: &S,
    ) -> Result<StsAnswer, Error>
    where
        S: Fn(StsRequest) -> F,
        F: std::future::Future<Output = Result<StsResponse, Error>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            span.record("attempts", attempt);
            let result = send(prepared.request.clone())
                .await
                .and_then(|r| read_answer(prepared, r.status, r.content_type.as_deref(), &r.body));
            let err = match result {
                Err(e) if e.kind() == ErrorKind::StsUnavailable => e,
                other => return other,
            };
            let backoff = backoff(attempt);
            if !err.is_retryable() || attempt > self.inner.retries || start.elapsed() + backoff >= budget {
                return Err(err);
            }
            tracing::debug!(attempt, error = %err, backoff_ms = backoff.as_millis() as u64, "retrying STS");
            tokio::time::sleep(backoff).await;
        }
    }
}

/// One step of the machine after STS answered: decide now, or ask for a membership. The plain
/// rules are matched once; organization rules can decide only when they come before the first
/// plain match (the lowest index wins) and their other fields match.
fn step(prepared: &Prepared, answer: StsAnswer) -> Result<Concluded, Error> {
    let m = prepared.token.matcher();
    let id = &answer.identity;
    let plain = m.first_match(id.account(), id.arn());
    let mut candidates = m.organization_candidates(id.account(), id.arn());
    if let Some(plain) = plain {
        candidates.retain(|&i| i < plain);
    }
    if candidates.is_empty() {
        return decide(prepared, answer, plain).map(Concluded::Allowed);
    }
    Ok(Concluded::NeedsMembership(MembershipQuery { prepared: prepared.clone(), answer, candidates, plain }))
}

/// The verdict for the rule that matched, or `not_allowed` with the identity kept for audit.
fn decide(prepared: &Prepared, answer: StsAnswer, matched: Option<usize>) -> Result<Verdict, Error> {
    let identity = answer.identity;
    match matched {
        Some(rule) => Ok(Verdict {
            token: prepared.token.name().to_owned(),
            roles: prepared.token.roles().to_vec(),
            identity,
            matched_rule: rule,
            sts_request_id: answer.request_id,
        }),
        None => Err(Error::new(
            ErrorKind::NotAllowed,
            format!("{} matches no allow rule of token {:?}", identity.arn(), prepared.token.name()),
        )
        .with_identity(identity)),
    }
}

/// Exponential backoff from 100 ms with up to 100% random jitter.
#[cfg(feature = "io")]
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100) * 2u32.saturating_pow(attempt.saturating_sub(1)).min(16);
    let mut b = [0u8; 2];
    let jitter = if getrandom::fill(&mut b).is_ok() { u16::from_le_bytes(b) } else { 0 };
    base + base.mul_f64(f64::from(jitter) / f64::from(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: &str = "kind: token\nversion: v2\nmetadata: {name: t}\nspec: {roles: [Node], join_method: iam, allow: [{aws_organization_id: o-abcdefghij}, {aws_account: \"111111111111\"}]}\n";

    #[test]
    fn token_names_in_logs_are_bounded() {
        assert_eq!(truncated_name("t"), "t");
        assert_eq!(truncated_name(&"x".repeat(10_000)).len(), 131);
        assert_eq!(truncated_name(&"\u{e9}".repeat(200)).chars().count(), 131);
    }

    #[test]
    fn short_issued_challenges_are_a_setup_mistake_before_anything_else() {
        let v = Verifier::sans_io(TokenSet::default(), RequestPolicy::new());
        for c in ["", "abc", &"a".repeat(challenge::MIN_CHALLENGE_LEN - 1)] {
            let e = v.prepare("no-such-token", c, b"", SystemTime::UNIX_EPOCH).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
        }
        // Positive control: a long enough challenge gets to the request check.
        let c = "a".repeat(challenge::MIN_CHALLENGE_LEN);
        let e = v.prepare("no-such-token", &c, b"", SystemTime::UNIX_EPOCH).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::MalformedRequest);
    }

    #[test]
    fn an_organization_rule_first_asks_for_a_membership_and_resume_decides() {
        let tokens = TokenSet::from_yaml(TOKENS).unwrap();
        let token = tokens.get("t").unwrap().clone();
        let identity =
            CallerIdentity::new("111111111111", "arn:aws:iam::111111111111:user/ci", "AIDAEXAMPLEUSERID0001").unwrap();
        let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/requests/");
        let raw = std::fs::read(format!("{vectors}teleport_go_request_write.http")).unwrap();
        let challenge = std::fs::read_to_string(format!("{vectors}CHALLENGE")).unwrap();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_878_000);
        let request = StsRequest::parse(&raw, challenge.trim(), &RequestPolicy::new(), at).unwrap();
        let prepared = Prepared { token, request, claim_until: at };
        let answer = || StsAnswer { identity: identity.clone(), request_id: None };
        let v = Verifier::sans_io(tokens, RequestPolicy::new());
        let Ok(Concluded::NeedsMembership(q)) = step(&prepared, answer()) else { panic!("rule 0 must ask") };
        assert_eq!((q.partition(), q.account().as_str()), (Partition::Aws, "111111111111"));
        let member = Membership::Member { organization_id: "o-abcdefghij".into(), ancestors: vec!["r-ab12".into()] };
        assert_eq!(v.resume(q, &member).unwrap().matched_rule(), 0);
        // Not a member: the plain rule after it decides.
        let Ok(Concluded::NeedsMembership(q)) = step(&prepared, answer()) else { panic!("rule 0 must ask") };
        assert_eq!(v.resume(q, &Membership::NotInOrganization).unwrap().matched_rule(), 1);
        // A caller without lookups gets lookup_failed, with the identity kept.
        let e = step(&prepared, answer()).unwrap().into_verdict().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LookupFailed);
        assert!(e.identity().is_some());
    }

    #[cfg(feature = "io")]
    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 1..10 {
            let b = backoff(attempt);
            let base = Duration::from_millis(100) * 2u32.pow(attempt - 1).min(16);
            assert!(b >= base && b <= base * 2, "attempt {attempt}: {b:?}");
        }
    }
}
