//! `/metrics`: the service's counters and histograms in Prometheus text (prometheus-client), and
//! the two wrappers that feed them from the library's extension points: an [`AwsTransport`] that
//! times each STS attempt, and a [`ReplayGuard`] that counts claims and conflicts.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use iam_join::organizations::OrganizationsClient;
use iam_join::{AwsCall, AwsService, AwsTransport, BoxFuture, Error, HttpAnswer, LimitedTransport, ReplayGuard};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label, `outcome` or `result`, from a fixed set of strings.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Result_ {
    result: &'static str,
}

/// The `endpoint` label of rate-limited requests: `challenge` or `join`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Endpoint {
    endpoint: &'static str,
}

/// The `type` label of issued credentials: `certificate` or `jwt`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CredentialType {
    r#type: &'static str,
}

/// Every metric the service exports. Names carry the `iam_join_` prefix; counters get `_total`.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    joins: Family<Outcome, Counter>,
    verify_seconds: Histogram,
    sts_seconds: Histogram,
    sts_attempts: Family<Result_, Counter>,
    challenges: Counter,
    credentials: Family<CredentialType, Counter>,
    replay_claims: Family<Result_, Counter>,
    org_cache_hits: Counter,
    org_cache_misses: Counter,
    reloads: Family<Result_, Counter>,
    tokens: Gauge,
    connections: Gauge,
    connections_reclaimed: Counter,
    connections_refused: Counter,
    rate_limited: Family<Endpoint, Counter>,
    rate_limit_clients: Gauge,
    sts_slots_in_use: Gauge,
    sts_slots: Gauge,
    sts_throttling_answers: Counter,
    refused_busy: Counter,
    refused_backoff: Counter,
    /// The Organizations client whose cache counts are read at each scrape.
    organizations: Mutex<Option<Arc<OrganizationsClient>>>,
    /// The STS limits and the rate limiter whose state is read at each scrape.
    limits: Mutex<Option<(Arc<LimitedTransport>, Arc<super::ratelimit::ClientLimits>)>>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("iam_join");
        // 250 µs .. ~16 s: a local refusal is microseconds, an STS round trip tens of milliseconds.
        let buckets = || exponential_buckets(0.000_25, 2.0, 17);
        let m = Self {
            joins: Family::default(),
            verify_seconds: Histogram::new(buckets()),
            sts_seconds: Histogram::new(buckets()),
            sts_attempts: Family::default(),
            challenges: Counter::default(),
            credentials: Family::default(),
            replay_claims: Family::default(),
            org_cache_hits: Counter::default(),
            org_cache_misses: Counter::default(),
            reloads: Family::default(),
            tokens: Gauge::default(),
            connections: Gauge::default(),
            connections_reclaimed: Counter::default(),
            connections_refused: Counter::default(),
            rate_limited: Family::default(),
            rate_limit_clients: Gauge::default(),
            sts_slots_in_use: Gauge::default(),
            sts_slots: Gauge::default(),
            sts_throttling_answers: Counter::default(),
            refused_busy: Counter::default(),
            refused_backoff: Counter::default(),
            organizations: Mutex::new(None),
            limits: Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register("joins", "Join verifications by outcome: allowed, or the refusal kind", m.joins.clone());
        registry.register(
            "verify_seconds",
            "Time to answer POST /v1/join, STS round trips included",
            m.verify_seconds.clone(),
        );
        registry.register("sts_seconds", "Time of each STS attempt", m.sts_seconds.clone());
        registry.register(
            "sts_attempts",
            "STS attempts (retries included), by result: answered (any HTTP status) or failed",
            m.sts_attempts.clone(),
        );
        registry.register("challenges_issued", "Challenges issued by POST /v1/challenge", m.challenges.clone());
        registry.register(
            "credentials_issued",
            "Credentials issued for allowed joins, by type: certificate or jwt",
            m.credentials.clone(),
        );
        registry.register(
            "replay_claims",
            "Single-use claims, by result: claimed, conflict (a replay) or unavailable (store down)",
            m.replay_claims.clone(),
        );
        registry.register(
            "organizations_cache_hits",
            "Organization memberships answered from the cache",
            m.org_cache_hits.clone(),
        );
        registry.register(
            "organizations_cache_misses",
            "Organization memberships that needed a lookup",
            m.org_cache_misses.clone(),
        );
        registry.register(
            "token_reloads",
            "Token file reloads, by result: ok or failed (the old set kept)",
            m.reloads.clone(),
        );
        registry.register("tokens", "iam tokens loaded and in use", m.tokens.clone());
        registry.register("connections", "Client connections open", m.connections.clone());
        registry.register(
            "connections_reclaimed",
            "Idle connections closed at the connection limit to make room for a new one",
            m.connections_reclaimed.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at the connection limit (every open one had a request in the handler)",
            m.connections_refused.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused with 429 at the per-client rate limit, by endpoint: challenge or join",
            m.rate_limited.clone(),
        );
        registry.register(
            "rate_limit_clients",
            "Clients whose rate-limit state is held (bounded)",
            m.rate_limit_clients.clone(),
        );
        registry.register("sts_slots_in_use", "STS exchanges in flight now", m.sts_slots_in_use.clone());
        registry.register("sts_slots", "The cap on STS exchanges in flight (--max-sts-inflight)", m.sts_slots.clone());
        registry.register(
            "sts_throttling_answers",
            "STS answers that said it is throttling (each starts or lengthens a backoff)",
            m.sts_throttling_answers.clone(),
        );
        registry.register(
            "joins_refused_busy",
            "Joins refused (503 sts_unavailable) because no STS slot was free within the wait",
            m.refused_busy.clone(),
        );
        registry.register(
            "joins_refused_backoff",
            "Joins refused (503 sts_unavailable) without an STS call during a throttling backoff",
            m.refused_backoff.clone(),
        );
        for endpoint in ["challenge", "join"] {
            m.rate_limited.get_or_create(&Endpoint { endpoint }).inc_by(0);
        }
        // Every series with a fixed label set is shown from the start, at 0, so that alerts on
        // a rate (failed reloads, conflicts) have a series before the first event.
        for (family, labels) in [
            (&m.sts_attempts, &["answered", "failed"][..]),
            (&m.replay_claims, &["claimed", "conflict", "unavailable"][..]),
            (&m.reloads, &["ok", "failed"][..]),
        ] {
            for &result in labels {
                family.get_or_create(&Result_ { result }).inc_by(0);
            }
        }
        Self { registry, ..m }
    }

    pub(crate) fn watch_organizations(&self, client: Arc<OrganizationsClient>) {
        *self.organizations.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
    }

    pub(crate) fn watch_limits(&self, sts: Arc<LimitedTransport>, clients: Arc<super::ratelimit::ClientLimits>) {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner()) = Some((sts, clients));
    }

    pub(crate) fn rate_limited(&self, endpoint: &'static str) {
        self.rate_limited.get_or_create(&Endpoint { endpoint }).inc();
    }

    pub(crate) fn join(&self, outcome: &'static str, started: Instant) {
        self.joins.get_or_create(&Outcome { outcome }).inc();
        self.verify_seconds.observe(started.elapsed().as_secs_f64());
    }

    pub(crate) fn challenge_issued(&self) {
        self.challenges.inc();
    }

    pub(crate) fn credential_issued(&self, kind: &'static str) {
        self.credentials.get_or_create(&CredentialType { r#type: kind }).inc();
    }

    /// A reload that swapped in a set of `tokens` tokens.
    pub(crate) fn reloaded(&self, tokens: usize) {
        self.reloads.get_or_create(&Result_ { result: "ok" }).inc();
        self.set_tokens(tokens);
    }

    /// A reload that failed: the set in use stays, and so does its count.
    pub(crate) fn reload_failed(&self) {
        self.reloads.get_or_create(&Result_ { result: "failed" }).inc();
    }

    pub(crate) fn set_connections(&self, open: usize) {
        self.connections.set(open as i64);
    }

    pub(crate) fn connection_reclaimed(&self) {
        self.connections_reclaimed.inc();
    }

    pub(crate) fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub(crate) fn set_tokens(&self, tokens: usize) {
        self.tokens.set(tokens as i64);
    }

    /// The text exposition, with the cache counters brought up to date.
    pub(crate) fn render(&self) -> String {
        if let Some(org) = self.organizations.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let stats = org.cache_stats();
            self.org_cache_hits.inc_by(stats.hits.saturating_sub(self.org_cache_hits.get()));
            self.org_cache_misses.inc_by(stats.misses.saturating_sub(self.org_cache_misses.get()));
        }
        if let Some((sts, clients)) = self.limits.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let s = sts.stats();
            self.sts_slots_in_use.set(s.in_flight as i64);
            self.sts_slots.set(s.max_inflight as i64);
            self.sts_throttling_answers.inc_by(s.throttling_answers.saturating_sub(self.sts_throttling_answers.get()));
            self.refused_busy.inc_by(s.refused_busy.saturating_sub(self.refused_busy.get()));
            self.refused_backoff.inc_by(s.refused_backoff.saturating_sub(self.refused_backoff.get()));
            self.rate_limit_clients.set(clients.tracked() as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The verifier's transport, timing and counting each STS attempt.
#[derive(Debug)]
pub(crate) struct MeteredTransport {
    pub(crate) inner: Arc<dyn AwsTransport>,
    pub(crate) metrics: Arc<Metrics>,
}

impl AwsTransport for MeteredTransport {
    fn call<'a>(&'a self, call: AwsCall<'a>) -> BoxFuture<'a, Result<HttpAnswer, Error>> {
        Box::pin(async move {
            let sts = call.service == AwsService::Sts;
            let started = Instant::now();
            let result = self.inner.call(call).await;
            if sts {
                self.metrics.sts_seconds.observe(started.elapsed().as_secs_f64());
                let result_label = if result.is_ok() { "answered" } else { "failed" };
                self.metrics.sts_attempts.get_or_create(&Result_ { result: result_label }).inc();
            }
            result
        })
    }
}

/// The replay guard, counting claims, conflicts and store failures.
#[derive(Debug)]
pub(crate) struct MeteredGuard {
    pub(crate) inner: Arc<dyn ReplayGuard>,
    pub(crate) metrics: Arc<Metrics>,
}

impl ReplayGuard for MeteredGuard {
    fn claim<'a>(&'a self, key: &'a str, until: SystemTime, now: SystemTime) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let result = self.inner.claim(key, until, now).await;
            let label = match &result {
                Ok(true) => "claimed",
                Ok(false) => "conflict",
                Err(_) => "unavailable",
            };
            self.metrics.replay_claims.get_or_create(&Result_ { result: label }).inc();
            result
        })
    }
}
