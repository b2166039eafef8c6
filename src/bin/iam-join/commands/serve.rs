//! `iam-join serve`: the join service. A thin shell over the library: the API in `api`, the
//! metrics in `metrics`, token reloads here. Configuration comes from flags, each with an
//! `IAM_JOIN_*` environment fallback.

mod api;
mod metrics;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use iam_join::agent::Credentials;
use iam_join::challenge::{ChallengeKey, ChallengeKeys};
use iam_join::organizations::OrganizationsClient;
use iam_join::{
    AwsTransport, MAX_TOKEN_FILE_BYTES, MemoryReplayGuard, RedisReplayGuard, ReplayGuard, TokenSet, Verifier,
};
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};
use zeroize::Zeroizing;

use crate::{EndpointArgs, Usage};
use api::App;
use metrics::{MeteredGuard, MeteredTransport, Metrics};

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "IAM_JOIN_LISTEN", default_value = "127.0.0.1:3080")]
    listen: SocketAddr,
    /// The token YAML file; reloaded on SIGHUP and when it changes.
    #[arg(long, env = "IAM_JOIN_TOKENS")]
    tokens: PathBuf,
    /// Redis URL for single use across replicas (redis://HOST:PORT/). Without it, single use is
    /// in this process's memory: run one replica only.
    #[arg(long, env = "IAM_JOIN_REDIS", hide_env_values = true)]
    redis: Option<String>,
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
    let metrics = Arc::new(Metrics::new());
    let (tokens, digest) = match read_tokens(&a.tokens) {
        Ok(Loaded { set, digest }) => (set, digest),
        Err(problem) => return Err(Usage(problem)),
    };
    log_diagnostics(&tokens);
    if tokens.is_empty() {
        tracing::warn!(file = %a.tokens.display(), "no usable iam token: every join will be refused until the file is fixed");
    }
    metrics.set_tokens(tokens.len());
    let keys = challenge_keys(&a)?;
    let timeout = a.endpoints.timeout()?;
    let policy = a.endpoints.policy()?;
    let sts: Arc<dyn AwsTransport> = Arc::new(a.endpoints.sts_transport(timeout)?);
    let metered = MeteredTransport { inner: sts, metrics: Arc::clone(&metrics) };
    // The verifier checks each join's challenge against the ring the service issues with.
    let mut verifier = Verifier::new(tokens, policy, metered).deadline(timeout).challenge_keys(keys.clone());
    match Credentials::from_env() {
        Ok(creds) => {
            let org = Arc::new(OrganizationsClient::new(creds, a.endpoints.organizations_transport(timeout)?));
            metrics.watch_organizations(Arc::clone(&org));
            verifier = verifier.organizations(org);
        }
        Err(_) => {
            if verifier.tokens().iter().any(|t| t.matcher().organization_rules().next().is_some()) {
                tracing::warn!(
                    "tokens use organization rules but AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set: \
                     those tokens refuse every join (token_invalid)"
                );
            }
        }
    }
    let (guard, redis): (Arc<dyn ReplayGuard>, _) = match &a.redis {
        Some(url) => {
            let redis = RedisReplayGuard::new(url).map_err(|e| Usage(format!("--redis: {}", e.detail())))?;
            tracing::info!("single use: in Redis, shared by every replica that uses it");
            (Arc::new(redis.clone()), Some(redis))
        }
        None => {
            tracing::warn!("single use: in this process's memory (no --redis): run one replica only");
            (Arc::new(MemoryReplayGuard::default()), None)
        }
    };
    let verifier = verifier.replay_guard(Arc::new(MeteredGuard { inner: guard, metrics: Arc::clone(&metrics) }));
    let app = Arc::new(App { verifier: verifier.clone(), keys, redis, metrics: Arc::clone(&metrics) });
    // An answer never waits longer than a verification may take, plus reading and writing.
    let router = api::router(app, timeout + Duration::from_secs(5));

    let handle = axum_server::Handle::<SocketAddr>::new();
    tokio::spawn(watch_tokens(a.tokens.clone(), Some(digest), reload_interval(a.reload_interval)?, verifier, metrics));
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
    let service = router.into_make_service();
    let served = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| Usage(format!("--tls-cert/--tls-key: {e}")))?;
            axum_server::bind_rustls(a.listen, tls)
                .handle(handle)
                .first_request_timeout(FIRST_REQUEST_TIMEOUT)
                .serve(service)
                .await
        }
        _ => {
            axum_server::bind(a.listen).handle(handle).first_request_timeout(FIRST_REQUEST_TIMEOUT).serve(service).await
        }
    };
    served.map_err(|e| Usage(format!("{}: {e}", a.listen)))?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A connection that has not sent a whole first request by then is closed (slow clients).
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn reload_interval(secs: f64) -> Result<Duration, Usage> {
    if !(0.05..=3600.0).contains(&secs) {
        return Err(Usage("--reload-interval must be between 0.05 and 3600 seconds".into()));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The key ring: the file, else IAM_JOIN_CHALLENGE_KEYS, else a random key for this process.
fn challenge_keys(a: &ServeArgs) -> Result<ChallengeKeys, Usage> {
    let text = match (&a.challenge_key, std::env::var("IAM_JOIN_CHALLENGE_KEYS")) {
        (Some(path), _) => Some(Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| Usage(format!("--challenge-key {}: {e}", path.display())))?,
        )),
        (None, Ok(text)) => Some(Zeroizing::new(text)),
        (None, Err(_)) => None,
    };
    let keys = match text {
        Some(text) => ChallengeKeys::parse(&text).map_err(|e| Usage(e.detail().to_owned()))?,
        None => {
            tracing::warn!("no --challenge-key: a random key for this process; challenges work on this replica only");
            ChallengeKeys::new(ChallengeKey::generate("local").map_err(|e| Usage(e.detail().to_owned()))?)
        }
    };
    tracing::info!(active_key = keys.active_id(), "challenge keys loaded");
    keys.ttl(Duration::from_secs(a.challenge_ttl)).map_err(|e| Usage(format!("--challenge-ttl: {}", e.detail())))
}

struct Loaded {
    set: TokenSet,
    digest: [u8; 32],
}

/// Reads and loads the token file; an unreadable or oversized file is a message.
fn read_tokens(path: &Path) -> Result<Loaded, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() > MAX_TOKEN_FILE_BYTES {
        return Err(format!("{}: larger than {MAX_TOKEN_FILE_BYTES} bytes", path.display()));
    }
    let digest = Sha256::digest(&bytes).into();
    let text = String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    Ok(Loaded { set: TokenSet::load(&text).with_file_name(&path.display().to_string()), digest })
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

/// Reloads the token file on SIGHUP, and when its contents change. A reload that fails (the file
/// unreadable, or any error in it) keeps the set in use whole, logs every problem and counts as
/// failed: an edit in progress never disables tokens that work.
async fn watch_tokens(
    path: PathBuf,
    mut seen: Option<[u8; 32]>,
    every: Duration,
    verifier: Verifier,
    metrics: Arc<Metrics>,
) {
    let mut hup = signal(SignalKind::hangup())
        .inspect_err(|_| tracing::error!("cannot listen for SIGHUP; reloading on file changes only"))
        .ok();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            Some(_) = async { hup.as_mut()?.recv().await } => true,
            _ = tick.tick() => false,
        };
        reload_once(&path, &mut seen, forced, &verifier, &metrics);
    }
}

/// `seen`: the digest of the file as last read, `None` after a failed read.
fn reload_once(path: &Path, seen: &mut Option<[u8; 32]>, forced: bool, verifier: &Verifier, metrics: &Metrics) {
    let loaded = match read_tokens(path) {
        Ok(l) => l,
        Err(problem) => {
            // Reported once per state, not at every tick; a SIGHUP always reports.
            if forced || seen.is_some() {
                tracing::error!(problem, "token reload failed: keeping the tokens in use");
                metrics.reload_failed();
                *seen = None;
            }
            return;
        }
    };
    if !forced && *seen == Some(loaded.digest) {
        return;
    }
    *seen = Some(loaded.digest);
    log_diagnostics(&loaded.set);
    if loaded.set.has_errors() {
        let errors = loaded.set.diagnostics().iter().filter(|p| p.severity == iam_join::Severity::Error).count();
        tracing::error!(errors, file = %path.display(), "token reload failed: keeping the tokens in use");
        metrics.reload_failed();
        return;
    }
    let count = loaded.set.len();
    verifier.replace_tokens(loaded.set);
    metrics.reloaded(count);
    tracing::info!(tokens = count, file = %path.display(), "tokens reloaded");
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
