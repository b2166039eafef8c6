//! The async driver of the state machine: [`Verifier::verify`], the one call an auth server
//! makes per join. It drives the same states a sans-IO caller drives by hand, and adds what
//! needs I/O: the claim in a [`ReplayGuard`], STS round trips through an [`AwsTransport`] with
//! retries inside a deadline and the proof's freshness window, organization lookups, and one
//! `tracing` span per join.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::core::challenge::Challenge;
use crate::core::error::{Error, ErrorKind};
use crate::core::proof::Proof;
use crate::core::text::bounded_name;
use crate::io::jwks::JwksCache;
use crate::io::organizations::OrganizationsClient;
use crate::io::replay::ReplayGuard;
use crate::io::transport::{AwsCall, AwsTransport};
use crate::machine::states::{ClaimResult, Claimed, Concluded, PendingClaim, Verdict};
use crate::machine::verifier::{Verifier, VerifierBuilder};

/// Default number of retries after an `sts_unavailable` outcome (GetCallerIdentity is idempotent).
pub const DEFAULT_RETRIES: u32 = 2;
/// Default bound on one whole verification, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);

/// The I/O edge's part of a verifier's configuration.
#[derive(Debug)]
struct IoConfig {
    transport: Option<Arc<dyn AwsTransport>>,
    guard: Option<Arc<dyn ReplayGuard>>,
    organizations: Option<Arc<OrganizationsClient>>,
    /// The pinned issuers' keys; made with the defaults on the first web identity join unless
    /// given.
    jwks: std::sync::OnceLock<Arc<JwksCache>>,
    retries: u32,
    deadline: Duration,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            transport: None,
            guard: None,
            organizations: None,
            jwks: std::sync::OnceLock::new(),
            retries: DEFAULT_RETRIES,
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// The builder methods of the I/O edge (feature `io`).
impl VerifierBuilder {
    fn io(&mut self) -> &mut IoConfig {
        if !self.extension.as_ref().is_some_and(|e| e.is::<IoConfig>()) {
            self.extension = Some(Box::new(IoConfig::default()));
        }
        match self.extension.as_mut().and_then(|e| e.downcast_mut::<IoConfig>()) {
            Some(io) => io,
            None => unreachable!("an IoConfig was put there just above"),
        }
    }

    /// The HTTP stack that sends STS replays ([`crate::ReqwestTransport`], or your own
    /// [`AwsTransport`]). [`Verifier::verify`] needs one.
    pub fn transport(self, transport: impl AwsTransport + 'static) -> Self {
        self.shared_transport(Arc::new(transport))
    }

    /// Like [`VerifierBuilder::transport`], sharing a transport (and its connection pool).
    pub fn shared_transport(mut self, transport: Arc<dyn AwsTransport>) -> Self {
        self.io().transport = Some(transport);
        self
    }

    /// Claims each join's challenge in `guard` before the STS round trip, so one proof joins
    /// once: a replay is refused as `challenge_replayed`, and a store that cannot answer fails
    /// the join closed as `replay_store_unavailable`. Share one guard (or one shared store)
    /// between every verifier that may see the same proofs. Without one, single use is the
    /// caller's ([`PendingClaim::single_use_by_caller`]).
    pub fn replay_guard(mut self, guard: Arc<dyn ReplayGuard>) -> Self {
        self.io().guard = Some(guard);
        self
    }

    /// Evaluates organization rules with this client; without one, tokens that use them are
    /// refused as `token_invalid`. The client is shared, its cache with it.
    pub fn organizations(mut self, client: impl Into<Arc<OrganizationsClient>>) -> Self {
        self.io().organizations = Some(client.into());
        self
    }

    /// Retries after `sts_unavailable` outcomes (default 2), always within the proof's
    /// freshness window and the deadline.
    pub fn retries(mut self, retries: u32) -> Self {
        self.io().retries = retries;
        self
    }

    /// Bound on one whole verification, retries included (default 15 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.io().deadline = deadline;
        self
    }

    /// Where web identity joins get their issuers' keys (default: a [`JwksCache`] with the
    /// defaults, made on the first such join). Share one between verifiers to share its cache.
    pub fn jwks(mut self, cache: Arc<JwksCache>) -> Self {
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(cache);
        self.io().jwks = cell;
        self
    }
}

impl PendingClaim {
    /// Decides single use with `guard`: claims [`PendingClaim::claim_key`] until
    /// [`PendingClaim::claim_until`]. A claim held already is `challenge_replayed`; a store that
    /// cannot answer is `replay_store_unavailable` (the join fails closed).
    pub async fn claim(self, guard: &dyn ReplayGuard) -> Result<Claimed, Error> {
        let first = guard.claim(&self.claim_key(), self.claim_until(), self.now()).await?;
        self.claimed(if first { ClaimResult::Claimed } else { ClaimResult::AlreadyClaimed })
    }
}

/// The async driver (feature `io`).
impl Verifier {
    fn io(&self) -> Option<&IoConfig> {
        self.config().extension.as_ref()?.downcast_ref::<IoConfig>()
    }

    /// Verifies one join: checks the challenge, the proof and the token; claims the challenge in
    /// the replay guard (when one is configured); replays the proof to STS through the
    /// transport, with retries; reads the answer; matches the identity, looking organizations up
    /// when a rule needs it. Needs a transport ([`VerifierBuilder::transport`]); without one it
    /// refuses with `config_invalid`.
    ///
    /// `now` is the wall-clock time freshness and expiry are judged at; waiting is measured with
    /// a monotonic clock. Everything, retries and transport included, runs inside one `tracing`
    /// span `iam_join.verify` (fields in the crate docs).
    pub async fn verify(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        proof: Proof<'_>,
        now: SystemTime,
    ) -> Result<Verdict, Error> {
        use tracing::Instrument as _;
        use tracing::field::Empty;
        let span = tracing::info_span!(
            "iam_join.verify",
            token = bounded_name(token_name),
            outcome = Empty,
            endpoint = Empty,
            sts_request_id = Empty,
            attempts = Empty,
            prepare_us = Empty,
            sts_us = Empty,
            total_us = Empty,
        );
        let started = Instant::now();
        let result = self.drive(token_name, challenge, proof, now, &span).instrument(span.clone()).await;
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

    async fn drive(
        &self,
        token_name: &str,
        challenge: Challenge<'_>,
        proof: Proof<'_>,
        now: SystemTime,
        span: &tracing::Span,
    ) -> Result<Verdict, Error> {
        let no_transport =
            || Error::config_invalid("this verifier has no transport: build it with VerifierBuilder::transport");
        // A verifier built without any I/O setting still verifies proofs checked offline, with
        // the defaults (one shared key cache); the others need a transport.
        static DEFAULTS: std::sync::OnceLock<IoConfig> = std::sync::OnceLock::new();
        let io = self.io().unwrap_or_else(|| DEFAULTS.get_or_init(IoConfig::default));
        if io.transport.is_none() && !matches!(proof, Proof::WebIdentityToken(_)) {
            return Err(no_transport());
        }
        let t0 = Instant::now();
        let pending = match proof {
            Proof::WebIdentityToken(jwt) => {
                let needs = self.start_web_identity(token_name, challenge, jwt, now);
                span.record("prepare_us", t0.elapsed().as_micros() as u64);
                let needs = needs?;
                let jwks = match io.jwks.get() {
                    Some(c) => c.clone(),
                    None => {
                        let made = Arc::new(JwksCache::new()?);
                        io.jwks.get_or_init(|| made).clone()
                    }
                };
                let keys = tokio::time::timeout(io.deadline, jwks.keys_for(needs.issuer(), needs.kid()))
                    .await
                    .map_err(|_| {
                        Error::new(ErrorKind::StsUnavailable, "the issuer's keys did not arrive within the deadline")
                            .with_retryable(true)
                    })??;
                needs.resume(&keys)?
            }
            other => {
                let pending = self.start(token_name, challenge, other, now);
                span.record("prepare_us", t0.elapsed().as_micros() as u64);
                pending?
            }
        };
        let transport = match pending.endpoint() {
            Some(endpoint) => {
                span.record("endpoint", endpoint.host());
                if io.organizations.is_none() && pending.token().needs_organizations() {
                    return Err(Error::new(
                        ErrorKind::TokenInvalid,
                        format!(
                            "token {:?} uses aws_organization_id rules but this verifier has no Organizations lookup configured",
                            bounded_name(token_name)
                        ),
                    ));
                }
                Some(io.transport.as_deref().ok_or_else(no_transport)?)
            }
            None => {
                span.record("endpoint", "offline");
                None
            }
        };
        // Single use: claimed after every local check, before anything is sent.
        let claimed = match &io.guard {
            Some(guard) => pending.claim(guard.as_ref()).await?,
            None => pending.single_use_by_caller(),
        };
        let Some(transport) = transport else {
            // Checked offline: the identity and its organization are in the proof.
            return claimed.conclude_offline()?.into_verdict();
        };
        // Retries stop at the deadline and before the proof would no longer be fresh.
        let fresh_for = claimed.fresh_until().duration_since(now).unwrap_or(Duration::ZERO);
        let budget = io.deadline.min(fresh_for.max(Duration::from_millis(1)));
        let t1 = Instant::now();
        let outcome =
            tokio::time::timeout(budget, round_trips(transport, &claimed, io.retries, t1, budget, span)).await;
        span.record("sts_us", t1.elapsed().as_micros() as u64);
        let concluded = match outcome {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::StsUnavailable,
                    format!("STS did not answer within {} ms (deadline or freshness window)", budget.as_millis()),
                )
                .with_retryable(true));
            }
        };
        match concluded {
            Concluded::Allowed(verdict) => Ok(verdict),
            Concluded::NeedsMembership(query) => {
                let client = io.organizations.as_ref().ok_or_else(|| {
                    Error::new(ErrorKind::TokenInvalid, "token uses organization rules but no lookup is configured")
                })?;
                match client.membership(query.partition(), query.account(), now).await {
                    Ok(m) => query.resume(&m),
                    Err(e) => Err(e.with_identity(query.into_identity())),
                }
            }
        }
    }
}

/// Sends and concludes until an outcome that is not a retryable `sts_unavailable` (connection
/// failures, throttling, 5xx), or the retries run out.
async fn round_trips(
    transport: &dyn AwsTransport,
    claimed: &Claimed,
    retries: u32,
    start: Instant,
    budget: Duration,
    span: &tracing::Span,
) -> Result<Concluded, Error> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        span.record("attempts", attempt);
        let Some(replay) = claimed.replay() else {
            return claimed.conclude_offline();
        };
        let result = transport.call(AwsCall::replay(replay)).await.and_then(|a| claimed.conclude(&a));
        let err = match result {
            Err(e) if e.kind() == ErrorKind::StsUnavailable => e,
            other => return other,
        };
        let backoff = backoff(attempt);
        // A local limit's refusal (no slot, a throttling backoff) is the caller's to retry.
        if !err.is_retryable()
            || err.retry_after().is_some()
            || attempt > retries
            || start.elapsed() + backoff >= budget
        {
            return Err(err);
        }
        tracing::debug!(attempt, error = %err, backoff_ms = backoff.as_millis() as u64, "retrying STS");
        tokio::time::sleep(backoff).await;
    }
}

/// The STS retries' backoff: from 100 ms, doubling up to 1.6 s, with up to 100% random jitter.
pub(crate) fn backoff(attempt: u32) -> Duration {
    jittered_backoff(attempt, Duration::from_millis(100), Duration::from_millis(1600), 1.0)
}

/// Exponential backoff: `first`, doubling per attempt up to `cap`, plus up to `jitter` (a
/// fraction) of it at random, so a fleet does not retry in step.
pub(crate) fn jittered_backoff(attempt: u32, first: Duration, cap: Duration, jitter: f64) -> Duration {
    let base = (first * 2u32.saturating_pow(attempt.saturating_sub(1).min(16))).min(cap);
    let mut b = [0u8; 2];
    let random = if getrandom::fill(&mut b).is_ok() { u16::from_le_bytes(b) } else { 0 };
    base + base.mul_f64(jitter * f64::from(random) / f64::from(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_bounded() {
        for attempt in 1..10 {
            let b = backoff(attempt);
            let base = Duration::from_millis(100) * 2u32.pow(attempt - 1).min(16);
            assert!(b >= base && b <= base * 2, "attempt {attempt}: {b:?}");
        }
    }
}
