//! `iam-join serve`: the join service. A thin shell over the library: the API in `api`, the
//! metrics in `metrics`, token reloads here. Configuration comes from flags, each with an
//! `IAM_JOIN_*` environment fallback.

mod api;
mod connections;
mod metrics;
mod ratelimit;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use iam_join::agent::Credentials;
use iam_join::challenge::{ChallengeKey, ChallengeKeys};
use iam_join::organizations::OrganizationsClient;
use iam_join::{
    AwsTransport, LimitedTransport, MemoryReplayGuard, RedisReplayGuard, ReplayGuard, StsLimits, TokenSet, Verifier,
};
use tokio::signal::unix::{SignalKind, signal};
use zeroize::Zeroizing;

use crate::{EndpointArgs, Usage};
use api::App;
use iam_join::issue::{CertificateAuthority, CredentialIssuer, JwtKey};
use metrics::{MeteredGuard, MeteredTransport, Metrics};

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on: IP:PORT, [IPv6]:PORT or localhost:PORT.
    #[arg(long, env = "IAM_JOIN_LISTEN", default_value = "127.0.0.1:3080")]
    listen: String,
    /// The token YAML file; reloaded on SIGHUP and when it changes.
    #[arg(long, env = "IAM_JOIN_TOKENS")]
    tokens: PathBuf,
    /// Redis for single use across replicas: redis://[:PASSWORD@]HOST:PORT[/DB], or through
    /// Sentinel, redis+sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER_NAME, which follows
    /// the primary across failovers. Without it, single use is in this process's memory: run
    /// one replica only.
    #[arg(long, env = "IAM_JOIN_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// After each claim, wait (Redis WAIT) until it is on this many replicas before the join
    /// goes to STS; fewer in time and the join fails closed (replay_store_unavailable). 0: a
    /// failover can forget the claims of its last moments; 1 or more: an acknowledged claim
    /// survives the loss of the primary.
    #[arg(long, env = "IAM_JOIN_REDIS_MIN_REPLICAS", default_value_t = 0, requires = "redis")]
    redis_min_replicas: u32,
    /// The rate limit per client address on /v1/challenge and /v1/join, PER_SECOND[:BURST]
    /// (the burst defaults to twice the rate); 0 turns it off. Over it: 429 with Retry-After.
    #[arg(long, env = "IAM_JOIN_RATE_LIMIT", default_value = ratelimit::DEFAULT_RATE_LIMIT)]
    rate_limit: ratelimit::RateLimit,
    /// A proxy (address or CIDR) whose X-Forwarded-For is believed: for a request from it, the
    /// client is the right-most address there that is not a trusted proxy. Repeatable. From
    /// anyone else the header is ignored.
    #[arg(long = "trusted-proxy", env = "IAM_JOIN_TRUSTED_PROXIES", value_delimiter = ',', value_parser = ratelimit::parse_trusted_proxy)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// The most STS exchanges in flight at once in this replica. A join that finds no free
    /// slot within 250 ms is refused retryably (503, sts_unavailable, "busy").
    #[arg(long, env = "IAM_JOIN_MAX_STS_INFLIGHT", default_value_t = iam_join::DEFAULT_MAX_STS_INFLIGHT)]
    max_sts_inflight: usize,
    /// Key file for challenges: one `ID:BASE64` key per line (at least 32 bytes), the first the
    /// active one (`iam-join challenge-key`). Every replica needs the same file. Without it (and
    /// without IAM_JOIN_CHALLENGE_KEYS, the file's contents), a random key is made at start:
    /// challenges then work on this replica only.
    #[arg(long, env = "IAM_JOIN_CHALLENGE_KEY")]
    challenge_key: Option<PathBuf>,
    /// How long an issued challenge stays valid, in seconds (at most 900).
    #[arg(long, env = "IAM_JOIN_CHALLENGE_TTL", default_value_t = 300)]
    challenge_ttl: u64,
    #[command(flatten)]
    endpoints: EndpointArgs,
    /// Certificate chain (PEM) to serve HTTPS with; needs --tls-key.
    #[arg(long, env = "IAM_JOIN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, env = "IAM_JOIN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How often to look for a changed token file, in seconds.
    #[arg(long, env = "IAM_JOIN_RELOAD_INTERVAL", default_value_t = 2.0)]
    reload_interval: f64,
    /// On SIGTERM, how long in-flight joins may take to finish, in seconds.
    #[arg(long, env = "IAM_JOIN_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,
    /// How long a client may take to send a whole request head, counted from the moment its
    /// connection is ready for one (accepted, or its last answer sent), and then its body, in
    /// seconds. It is also the keep-alive idle timeout: a connection that sends nothing for
    /// this long is closed.
    #[arg(long, env = "IAM_JOIN_HEADER_TIMEOUT", default_value_t = 10.0)]
    header_timeout: f64,
    /// The most client connections open at once (never more than half the process's open-file
    /// limit). At the limit a new connection takes the place of the one idle the longest; when
    /// every connection has a request being answered, it is refused (503).
    #[arg(long, env = "IAM_JOIN_MAX_CONNECTIONS", default_value_t = connections::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// The CA certificate (PEM) that signs agents' certificates; needs --ca-key and
    /// --trust-domain. Allowed joins that send a public_key get a certificate.
    #[arg(long, env = "IAM_JOIN_CA_CERT", requires_all = ["ca_key", "trust_domain"])]
    ca_cert: Option<PathBuf>,
    /// The CA's private key (PEM); refused when group or others can read it.
    #[arg(long, env = "IAM_JOIN_CA_KEY", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// The trust domain of the SPIFFE-style URI SAN (spiffe://TRUST_DOMAIN/aws/ACCOUNT/...).
    #[arg(long, env = "IAM_JOIN_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// A JWT signing key (PEM PKCS#8 or a private JWK, EC P-256); repeat for rotation: the first
    /// signs, all are published at /.well-known/jwks.json. Needs --issuer and --jwt-audience.
    #[arg(long = "jwt-signing-key", env = "IAM_JOIN_JWT_SIGNING_KEYS", value_delimiter = ',', requires_all = ["issuer", "jwt_audience"])]
    jwt_signing_keys: Vec<PathBuf>,
    /// The JWT's iss, and the base of /.well-known/openid-configuration (this service's URL).
    #[arg(long, env = "IAM_JOIN_ISSUER")]
    issuer: Option<String>,
    /// The JWT's aud.
    #[arg(long, env = "IAM_JOIN_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// How long issued credentials last, in seconds (1 to 86400), never past the token's expiry.
    #[arg(long, env = "IAM_JOIN_CREDENTIAL_TTL", default_value_t = 3600)]
    credential_ttl: u64,
}

/// The credential issuer the flags describe, if any.
fn credential_issuer(a: &ServeArgs) -> Result<Option<Arc<CredentialIssuer>>, Usage> {
    if a.ca_cert.is_none() && a.jwt_signing_keys.is_empty() {
        return Ok(None);
    }
    let failed = |e: iam_join::Error| Usage(e.detail().to_owned());
    let mut b = CredentialIssuer::builder(a.trust_domain.clone().unwrap_or_else(|| "iam-join.invalid".to_owned()))
        .ttl(Duration::from_secs(a.credential_ttl));
    if let (Some(cert), Some(key)) = (&a.ca_cert, &a.ca_key) {
        b = b.ca(CertificateAuthority::load_files(cert, key).map_err(failed)?);
    }
    if !a.jwt_signing_keys.is_empty() {
        let keys = a.jwt_signing_keys.iter().map(JwtKey::load_file).collect::<Result<Vec<_>, _>>().map_err(failed)?;
        b = b.jwt_keys(keys);
        if let Some(iss) = &a.issuer {
            b = b.issuer_url(iss.clone());
        }
        if let Some(aud) = &a.jwt_audience {
            b = b.audience(aud.clone());
        }
    }
    b.build().map(|i| Some(Arc::new(i))).map_err(failed)
}

pub(crate) fn run(a: ServeArgs) -> Result<ExitCode, Usage> {
    init_logs();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(a))
}

/// JSON lines on stderr; the level from IAM_JOIN_LOG (default info), in `tracing`'s filter syntax.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IAM_JOIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .init();
}

async fn serve(a: ServeArgs) -> Result<ExitCode, Usage> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listen = crate::listen_address(&a.listen)?;
    let metrics = Arc::new(Metrics::new());
    let tokens = {
        let path = a.tokens.clone();
        match tokio::time::timeout(READ_TIMEOUT, tokio::task::spawn_blocking(move || TokenSet::load_file(path))).await {
            Ok(Ok(Ok(set))) => set,
            Ok(Ok(Err(e))) => return Err(Usage(e.detail().to_owned())),
            Ok(Err(e)) => return Err(Usage(format!("{}: {e}", a.tokens.display()))),
            Err(_) => return Err(Usage(format!("{}: not read within {READ_TIMEOUT:?}", a.tokens.display()))),
        }
    };
    let digest = tokens.digest();
    log_diagnostics(&tokens);
    if tokens.is_empty() {
        tracing::warn!(file = %a.tokens.display(), "no usable iam token: every join will be refused until the file is fixed");
    }
    metrics.set_tokens(tokens.len());
    let keys = challenge_keys(&a)?;
    // Key material is read once here; it is never logged.
    let credentials = credential_issuer(&a)?;
    let timeout = a.endpoints.timeout()?;
    let policy = a.endpoints.policy()?;
    let sts: Arc<dyn AwsTransport> = Arc::new(a.endpoints.sts_transport(timeout)?);
    let metered = MeteredTransport { inner: sts, metrics: Arc::clone(&metrics) };
    // Caps STS exchanges in flight and backs off while STS throttles (outside the metered
    // transport, so that a refused join is not counted as an STS attempt).
    if a.max_sts_inflight == 0 {
        return Err(Usage("--max-sts-inflight must be at least 1".to_owned()));
    }
    let limited = Arc::new(LimitedTransport::new(metered, StsLimits::default().max_inflight(a.max_sts_inflight)));
    let clients = Arc::new(ratelimit::ClientLimits::new(a.rate_limit, a.trusted_proxies.clone()));
    if !clients.enabled() {
        tracing::warn!("--rate-limit 0: no rate limit per client; every join may cost an STS call");
    }
    metrics.watch_limits(Arc::clone(&limited), Arc::clone(&clients));
    // The verifier checks each join's challenge against the ring the service issues with.
    let uses_organizations = tokens.iter().any(|t| t.needs_organizations());
    let mut builder = Verifier::builder(tokens)
        .policy(policy)
        .shared_transport(limited)
        .deadline(timeout)
        .challenge_keys(keys.clone());
    if let Some(web) = a.endpoints.web_identity()? {
        builder = builder.web_identity(web);
    }
    match Credentials::from_env() {
        Ok(creds) => {
            let org = Arc::new(OrganizationsClient::new(creds, a.endpoints.organizations_transport(timeout)?));
            metrics.watch_organizations(Arc::clone(&org));
            builder = builder.organizations(org);
        }
        Err(_) if uses_organizations => tracing::warn!(
            "tokens use organization rules but AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set: \
             those tokens refuse every join (token_invalid)"
        ),
        Err(_) => {}
    }
    let (guard, redis): (Arc<dyn ReplayGuard>, _) = match &a.redis {
        Some(url) => {
            let redis = RedisReplayGuard::new(url)
                .map(|g| g.min_replicas(a.redis_min_replicas))
                .map_err(|e| Usage(format!("--redis: {}", e.detail())))?;
            tracing::info!("single use: in Redis, shared by every replica that uses it");
            // Said at once, not at the first join; joins fail closed until it answers.
            if let Err(e) = redis.ping().await {
                tracing::warn!(
                    error = %e,
                    "Redis does not answer: every join fails closed (replay_store_unavailable) and /readyz is 503 until it does"
                );
            }
            (Arc::new(redis.clone()), Some(redis))
        }
        None => {
            tracing::warn!("single use: in this process's memory (no --redis): run one replica only");
            (Arc::new(MemoryReplayGuard::default()), None)
        }
    };
    let verifier = builder.replay_guard(Arc::new(MeteredGuard { inner: guard, metrics: Arc::clone(&metrics) })).build();
    let header_timeout = seconds("--header-timeout", a.header_timeout)?;
    let app = Arc::new(App {
        verifier: verifier.clone(),
        keys,
        redis,
        metrics: Arc::clone(&metrics),
        body_timeout: header_timeout,
        issuer: credentials,
        limits: Arc::clone(&clients),
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ratelimit::PRUNE_INTERVAL);
        loop {
            tick.tick().await;
            clients.prune();
        }
    });
    // An answer never waits longer than reading the body and a verification may take, plus
    // writing it.
    let router = api::router(app, header_timeout + timeout + Duration::from_secs(5));
    let max_connections = connections::connection_cap(a.max_connections);
    if max_connections < a.max_connections {
        tracing::warn!(
            max_connections,
            asked = a.max_connections,
            "--max-connections lowered to half the open-file limit (ulimit -n)"
        );
    }
    let tls_on = a.tls_cert.is_some();
    let gate = connections::Gate::new(max_connections, tls_on, Arc::clone(&metrics));

    let handle = axum_server::Handle::<SocketAddr>::new();
    tokio::spawn(watch_tokens(
        a.tokens.clone(),
        digest,
        seconds("--reload-interval", a.reload_interval)?,
        verifier,
        metrics,
    ));
    tokio::spawn(shutdown_on_signal(handle.clone(), Duration::from_secs(a.shutdown_grace)));
    let listening = {
        let handle = handle.clone();
        async move {
            if let Some(addr) = handle.listening().await {
                tracing::info!(%addr, "listening");
            }
        }
    };
    tokio::spawn(listening);
    // Each request knows its connection's peer, for the rate limit.
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let served = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| Usage(format!("--tls-cert/--tls-key: {e}")))?;
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(gate);
            let mut server = axum_server::bind(listen).acceptor(acceptor);
            bounded(&mut server, header_timeout);
            server.handle(handle).first_request_timeout(FIRST_REQUEST_TIMEOUT).serve(service).await
        }
        _ => {
            let mut server = axum_server::bind(listen).acceptor(gate);
            bounded(&mut server, header_timeout);
            server.handle(handle).first_request_timeout(FIRST_REQUEST_TIMEOUT).serve(service).await
        }
    };
    served.map_err(|e| Usage(format!("{listen}: {e}")))?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A connection that has not sent a whole first request by then is closed (slow clients), TLS
/// handshake included.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/1.1 only, and hyper's head deadline on every request, not only the first: it starts when
/// the connection is ready for a request, so it also closes kept-alive connections left idle.
fn bounded<A: axum_server::Address, Acc>(server: &mut axum_server::Server<A, Acc>, header_timeout: Duration) {
    server.http_builder().http1().header_read_timeout(Some(header_timeout)).keep_alive(true);
}

fn seconds(flag: &str, value: f64) -> Result<Duration, Usage> {
    if !(0.05..=3600.0).contains(&value) {
        return Err(Usage(format!("{flag} must be between 0.05 and 3600 seconds")));
    }
    Ok(Duration::from_secs_f64(value))
}

/// The key ring: the file, else IAM_JOIN_CHALLENGE_KEYS, else a random key for this process.
fn challenge_keys(a: &ServeArgs) -> Result<ChallengeKeys, Usage> {
    let keys = match (&a.challenge_key, std::env::var("IAM_JOIN_CHALLENGE_KEYS")) {
        (Some(path), _) => {
            ChallengeKeys::load_file(path).map_err(|e| Usage(format!("--challenge-key: {}", e.detail())))?
        }
        (None, Ok(text)) => {
            let text = Zeroizing::new(text);
            ChallengeKeys::parse(&text).map_err(|e| Usage(e.detail().to_owned()))?
        }
        (None, Err(_)) => {
            tracing::warn!("no --challenge-key: a random key for this process; challenges work on this replica only");
            ChallengeKeys::new(ChallengeKey::generate("local").map_err(|e| Usage(e.detail().to_owned()))?)
        }
    };
    tracing::info!(active_key = keys.active_id(), "challenge keys loaded");
    keys.ttl(Duration::from_secs(a.challenge_ttl)).map_err(|e| Usage(format!("--challenge-ttl: {}", e.detail())))
}

/// Every diagnostic, one log line each, with its file, line and column.
fn log_diagnostics(set: &TokenSet) {
    for p in set.diagnostics() {
        let (file, token) = (p.file.as_deref().unwrap_or(""), p.token.as_deref().unwrap_or(""));
        match p.severity {
            iam_join::Severity::Error => {
                tracing::error!(file, line = p.line, column = p.column, token, problem = %p.message, "token file problem")
            }
            iam_join::Severity::Warning => {
                tracing::warn!(file, line = p.line, column = p.column, token, problem = %p.message, "token file problem")
            }
            _ => {
                tracing::debug!(file, line = p.line, column = p.column, token, problem = %p.message, "token file note")
            }
        }
    }
}

/// The longest a token file read may take (at start and at each reload). A read that takes
/// longer is a stalled file system: the reload counts as failed and the set in use stays.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reloads the token file on SIGHUP, and when its contents change. A reload that fails (the file
/// unreadable, not a regular file, too large, stalled, or any error in it) keeps the set in use
/// whole, logs every problem and counts as failed: an edit in progress never disables tokens
/// that work. The file is read on a blocking thread, bounded in time, so request handling never
/// waits for it.
async fn watch_tokens(path: PathBuf, seen: [u8; 32], every: Duration, verifier: Verifier, metrics: Arc<Metrics>) {
    let mut hup = signal(SignalKind::hangup())
        .inspect_err(|_| tracing::error!("cannot listen for SIGHUP; reloading on file changes only"))
        .ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reloader = Reloader {
        path,
        seen: Some(seen),
        stalled: None,
        read_timeout: READ_TIMEOUT,
        load: |p| TokenSet::load_file(p),
    };
    loop {
        let forced = tokio::select! {
            Some(_) = async { hup.as_mut()?.recv().await } => true,
            _ = tick.tick() => false,
        };
        reloader.once(forced, &verifier, &metrics).await;
    }
}

/// The reload state between ticks.
struct Reloader {
    path: PathBuf,
    /// The digest of the file as last read, `None` after a failed read.
    seen: Option<[u8; 32]>,
    /// A read that outlived its time bound and is still blocked: no second read starts beside it.
    stalled: Option<tokio::task::JoinHandle<Result<TokenSet, iam_join::Error>>>,
    read_timeout: Duration,
    /// How the file is read: [`TokenSet::load_file`] (tests put a stalling reader here).
    load: fn(PathBuf) -> Result<TokenSet, iam_join::Error>,
}

impl Reloader {
    async fn once(&mut self, forced: bool, verifier: &Verifier, metrics: &Metrics) {
        let mut read = match self.stalled.take() {
            Some(handle) if !handle.is_finished() => {
                self.stalled = Some(handle);
                if forced {
                    tracing::error!(file = %self.path.display(), "token reload failed: the last read of the file is still blocked; keeping the tokens in use");
                    metrics.reload_failed();
                }
                return;
            }
            // A stalled read that has finished since: start afresh.
            _ => {
                let (path, load) = (self.path.clone(), self.load);
                tokio::task::spawn_blocking(move || load(path))
            }
        };
        let set = match tokio::time::timeout(self.read_timeout, &mut read).await {
            Ok(Ok(Ok(set))) => set,
            Ok(Ok(Err(e))) => return self.failed(forced, e.detail(), metrics),
            Ok(Err(e)) => return self.failed(forced, &e.to_string(), metrics),
            Err(elapsed) => {
                let problem = format!("{}: not read within {:?} ({elapsed})", self.path.display(), self.read_timeout);
                self.failed(true, &problem, metrics);
                // Keep the handle: the thread is blocked in the file system, not lost.
                self.stalled = Some(read);
                return;
            }
        };
        if !forced && self.seen == Some(set.digest()) {
            return;
        }
        self.seen = Some(set.digest());
        log_diagnostics(&set);
        if set.has_errors() {
            let errors = set.diagnostics().iter().filter(|p| p.severity == iam_join::Severity::Error).count();
            tracing::error!(errors, file = %self.path.display(), "token reload failed: keeping the tokens in use");
            metrics.reload_failed();
            return;
        }
        let count = set.len();
        verifier.replace_tokens(set);
        metrics.reloaded(count);
        tracing::info!(tokens = count, file = %self.path.display(), "tokens reloaded");
    }

    /// Reported once per state, not at every tick; a SIGHUP (or a stall) always reports.
    fn failed(&mut self, report: bool, problem: &str, metrics: &Metrics) {
        if report || self.seen.is_some() {
            tracing::error!(problem, "token reload failed: keeping the tokens in use");
            metrics.reload_failed();
            self.seen = None;
        }
    }
}

/// SIGTERM or SIGINT: stop accepting, let in-flight joins finish within the grace period.
async fn shutdown_on_signal(handle: axum_server::Handle<SocketAddr>, grace: Duration) {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(
        in_flight = handle.connection_count(),
        grace_s = grace.as_secs(),
        "shutting down: finishing in-flight joins"
    );
    handle.graceful_shutdown(Some(grace));
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use iam_join::{TokenSet, Verifier};

    use super::*;

    static READS: AtomicUsize = AtomicUsize::new(0);

    /// A file system that stalls: each read blocks for 600 ms.
    fn stalling(_: PathBuf) -> Result<TokenSet, iam_join::Error> {
        READS.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(600));
        Ok(TokenSet::default())
    }

    fn failed_reloads(m: &Metrics) -> String {
        m.render()
            .lines()
            .find(|l| l.starts_with("iam_join_token_reloads_total{result=\"failed\"}"))
            .unwrap()
            .to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_read_fails_the_reload_in_time_and_never_piles_up() {
        let (verifier, metrics) = (Verifier::builder(TokenSet::default()).build(), Metrics::new());
        let mut r = Reloader {
            path: PathBuf::from("tokens.yaml"),
            seen: Some([0; 32]),
            stalled: None,
            read_timeout: Duration::from_millis(100),
            load: stalling,
        };
        let start = std::time::Instant::now();
        r.once(false, &verifier, &metrics).await;
        assert!(start.elapsed() < Duration::from_millis(400), "the reload waited for the stalled read");
        assert!(failed_reloads(&metrics).ends_with(" 1"), "{}", failed_reloads(&metrics));
        assert!(r.stalled.is_some() && r.seen.is_none());
        // While that read is blocked, ticks start no other, and a SIGHUP reports the failure.
        r.once(false, &verifier, &metrics).await;
        r.once(true, &verifier, &metrics).await;
        assert_eq!(READS.load(Ordering::SeqCst), 1, "a second read started beside the stalled one");
        assert!(failed_reloads(&metrics).ends_with(" 2"));
        // Once it has finished, the next tick reads again (and this one, too, stalls).
        tokio::time::sleep(Duration::from_millis(700)).await;
        r.once(false, &verifier, &metrics).await;
        assert_eq!(READS.load(Ordering::SeqCst), 2);
    }
}
