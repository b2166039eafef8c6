//! The one call an auth server makes per join, and its sans-IO halves.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::field::Empty;

use crate::error::{Error, ErrorKind};
use crate::identity::CallerIdentity;
use crate::organizations::{Membership, OrganizationsClient};
use crate::request::{RequestPolicy, StsRequest};
use crate::response::{StsAnswer, parse_sts_response};
use crate::token::{Role, Token, TokenSet};
use crate::transport::StsTransport;

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

/// The first half of a sans-IO verification: the token is usable and the request valid. Send
/// [`Prepared::request`] with your own HTTP stack, then call [`Verifier::conclude`].
#[derive(Clone, Debug)]
pub struct Prepared {
    token: Arc<Token>,
    request: StsRequest,
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
}

/// Verifies iam joins against a token set. Cheap to share (`Arc` inside); `Send + Sync`.
///
/// ```no_run
/// use iam_join::{RequestPolicy, ReqwestTransport, TokenSet, Verifier};
/// # async fn join(raw_request: &[u8], challenge: &str) -> Result<(), iam_join::Error> {
/// let tokens = TokenSet::from_yaml(&std::fs::read_to_string("tokens.yaml").unwrap())?;
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
    tokens: TokenSet,
    policy: RequestPolicy,
    transport: Arc<dyn StsTransport>,
    organizations: Option<Arc<OrganizationsClient>>,
    retries: u32,
    deadline: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("tokens", &self.inner.tokens.len())
            .field("policy", &self.inner.policy)
            .field("transport", &self.inner.transport)
            .field("retries", &self.inner.retries)
            .field("deadline", &self.inner.deadline)
            .finish()
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
    /// A verifier with the default retries (2) and deadline (15 s).
    pub fn new(tokens: TokenSet, policy: RequestPolicy, transport: impl StsTransport + 'static) -> Self {
        Self::with_shared_transport(tokens, policy, Arc::new(transport))
    }

    /// Like [`Verifier::new`], sharing a transport (and its connection pool) between verifiers.
    pub fn with_shared_transport(tokens: TokenSet, policy: RequestPolicy, transport: Arc<dyn StsTransport>) -> Self {
        Self {
            inner: Arc::new(Inner {
                tokens,
                policy,
                transport,
                organizations: None,
                retries: DEFAULT_RETRIES,
                deadline: DEFAULT_DEADLINE,
            }),
        }
    }

    /// Retries after `sts_unavailable` outcomes (default 2), always within the request's
    /// freshness window and the deadline.
    pub fn retries(self, retries: u32) -> Self {
        self.map(|i| i.retries = retries)
    }

    /// Evaluates organization rules (`aws_organization_id`, `aws_organizational_units`) with this
    /// client. Without one, tokens that use them are refused with `token_invalid`.
    pub fn organizations(self, client: OrganizationsClient) -> Self {
        let client = Arc::new(client);
        self.map(|i| i.organizations = Some(client))
    }

    /// Bound on one whole verification, retries included (default 15 s).
    pub fn deadline(self, deadline: Duration) -> Self {
        self.map(|i| i.deadline = deadline)
    }

    fn map(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|arc| Inner {
            tokens: arc.tokens.clone(),
            policy: arc.policy.clone(),
            transport: arc.transport.clone(),
            organizations: arc.organizations.clone(),
            retries: arc.retries,
            deadline: arc.deadline,
        });
        f(&mut inner);
        Self { inner: Arc::new(inner) }
    }

    /// The token set.
    pub fn tokens(&self) -> &TokenSet {
        &self.inner.tokens
    }

    /// Checks the token and the request without any network work.
    pub fn prepare(
        &self,
        token_name: &str,
        challenge: &str,
        raw_request: &[u8],
        now: SystemTime,
    ) -> Result<Prepared, Error> {
        let token = self.inner.tokens.lookup(token_name)?;
        if token.is_expired(now) {
            return Err(token_invalid(format!("token {token_name:?} has expired")));
        }
        if self.inner.organizations.is_none() && token.matcher().organization_rules().next().is_some() {
            return Err(token_invalid(format!(
                "token {token_name:?} uses aws_organization_id rules but this verifier has no Organizations lookup configured"
            )));
        }
        let request = StsRequest::parse(raw_request, challenge, &self.inner.policy, now)?;
        Ok(Prepared { token: token.clone(), request })
    }

    /// Reads STS's answer to a prepared request and matches the identity against the token.
    ///
    /// Sans-IO, so it cannot look up organizations: when an organization rule would have to
    /// decide, it refuses with `lookup_failed`; use [`Verifier::verify`] for such tokens.
    pub fn conclude(
        &self,
        prepared: &Prepared,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Verdict, Error> {
        let answer = read_answer(prepared, status, content_type, body)?;
        if !organization_candidates(prepared, &answer).is_empty() {
            return Err(Error::new(
                ErrorKind::LookupFailed,
                "an organization rule must decide, which needs verify (not conclude)",
            )
            .with_identity(answer.identity));
        }
        decide(prepared, answer, None)
    }

    /// Verifies one join: token, request, STS round trip (with retries), identity, rules.
    ///
    /// `now` is the wall-clock time the request's freshness and the token's expiry are judged
    /// against; waiting is measured with a monotonic clock. Emits one `tracing` span
    /// `iam_join.verify` with the token, outcome kind, endpoint, STS request id and timings.
    pub async fn verify(
        &self,
        token_name: &str,
        challenge: &str,
        raw_request: &[u8],
        now: SystemTime,
    ) -> Result<Verdict, Error> {
        let span = tracing::info_span!(
            "iam_join.verify",
            token = token_name,
            outcome = Empty,
            endpoint = Empty,
            sts_request_id = Empty,
            attempts = Empty,
            prepare_us = Empty,
            sts_us = Empty,
        );
        let started = Instant::now();
        let result = self.verify_inner(token_name, challenge, raw_request, now, &span).await;
        let outcome = match &result {
            Ok(_) => "allowed",
            Err(e) => e.kind().as_str(),
        };
        span.record("outcome", outcome);
        if let Ok(v) = &result {
            span.record("sts_request_id", v.sts_request_id());
        }
        let _enter = span.enter();
        match &result {
            Ok(v) => tracing::info!(
                arn = v.identity().arn().as_str(),
                rule = v.matched_rule(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "join allowed"
            ),
            Err(e) => tracing::info!(error = %e, elapsed_us = started.elapsed().as_micros() as u64, "join refused"),
        }
        result
    }

    async fn verify_inner(
        &self,
        token_name: &str,
        challenge: &str,
        raw_request: &[u8],
        now: SystemTime,
        span: &tracing::Span,
    ) -> Result<Verdict, Error> {
        let t0 = Instant::now();
        let prepared = self.prepare(token_name, challenge, raw_request, now)?;
        span.record("prepare_us", t0.elapsed().as_micros() as u64);
        span.record("endpoint", prepared.request.endpoint().host());

        // Retries stop at the deadline and before the request would no longer be fresh.
        let age = now.duration_since(prepared.request.signed_at()).unwrap_or(Duration::ZERO);
        let fresh_for = self.inner.policy.skew().saturating_sub(age);
        let budget = self.inner.deadline.min(fresh_for.max(Duration::from_millis(1)));
        let t1 = Instant::now();
        let outcome = tokio::time::timeout(budget, self.round_trips(&prepared, t1, budget, span)).await;
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
        let candidates = organization_candidates(&prepared, &answer);
        let membership = match (&self.inner.organizations, candidates.is_empty()) {
            (_, true) => None,
            (None, false) => return Err(token_invalid("token uses organization rules but no lookup is configured")),
            (Some(client), false) => {
                let id = &answer.identity;
                match client.membership(id.arn().partition(), *id.account(), now).await {
                    Ok(m) => Some(m),
                    Err(e) => return Err(e.with_identity(answer.identity)),
                }
            }
        };
        decide(&prepared, answer, membership.map(|m| (candidates, m)))
    }

    /// Sends and parses until an answer that is not a retryable `sts_unavailable` (connection
    /// failures, throttling, 5xx), or the retries run out.
    async fn round_trips(
        &self,
        prepared: &Prepared,
        start: Instant,
        budget: Duration,
        span: &tracing::Span,
    ) -> Result<StsAnswer, Error> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            span.record("attempts", attempt);
            let result = self
                .inner
                .transport
                .send(&prepared.request)
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

/// Organization rules that could decide: their other fields match and they precede the first
/// plain rule that matches (the lowest index wins).
fn organization_candidates(prepared: &Prepared, answer: &StsAnswer) -> Vec<usize> {
    let m = prepared.token.matcher();
    let id = &answer.identity;
    let mut candidates = m.organization_candidates(id.account(), id.arn());
    if let Some(plain) = m.first_match(id.account(), id.arn()) {
        candidates.retain(|&i| i < plain);
    }
    candidates
}

/// Matches a verified identity against the prepared token's rules, with the looked-up membership
/// for the organization candidates when there are any.
fn decide(
    prepared: &Prepared,
    answer: StsAnswer,
    organizations: Option<(Vec<usize>, Membership)>,
) -> Result<Verdict, Error> {
    let identity = answer.identity;
    let rules = prepared.token.rules();
    let by_organization =
        organizations.and_then(|(candidates, m)| candidates.into_iter().find(|&i| m.admits(&rules[i])));
    match by_organization.or_else(|| prepared.token.matcher().first_match(identity.account(), identity.arn())) {
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
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100) * 2u32.saturating_pow(attempt.saturating_sub(1)).min(16);
    let mut b = [0u8; 2];
    let jitter = if getrandom::fill(&mut b).is_ok() { u16::from_le_bytes(b) } else { 0 };
    base + base.mul_f64(f64::from(jitter) / f64::from(u16::MAX))
}
