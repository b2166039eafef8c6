//! The keys of pinned web identity issuers, fetched and cached: [`JwksCache`].
//!
//! Keys come from the issuer's own OpenID configuration (`ISSUER/.well-known/openid-configuration`,
//! whose `issuer` must be the pinned URL exactly) and its `jwks_uri`, which must be on the
//! issuer's origin. Both are fetched over verified TLS (rustls with ring, the bundled Mozilla
//! roots unless configured), with no redirects, no proxy, timeouts and size caps. Nothing a token
//! names (`jku`, `x5u`) is ever fetched: the verifier asks only for the issuer pinned for the
//! token's account.
//!
//! Cached per issuer for [`DEFAULT_JWKS_LIFETIME`]; a `kid` the cached keys do not hold makes one
//! refetch, at most once per [`DEFAULT_JWKS_REFRESH_INTERVAL`] per issuer, so a flood of unknown
//! `kid`s cannot turn into a flood of fetches. Expired keys are refetched; when the issuer cannot
//! be reached then, the join fails closed as `sts_unavailable` (retryable).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::error::{Error, ErrorKind};
use crate::core::proof::web_identity::{IssuerKeys, IssuerUrl, MAX_JWKS_BYTES};
use crate::core::text::quoted_shown;
use crate::io::transport::{TrustRoots, failure_cause, tls_config};

/// How long fetched keys are used before they are fetched again.
pub const DEFAULT_JWKS_LIFETIME: Duration = Duration::from_secs(3600);
/// The least time between two fetches of one issuer's keys for an unknown `kid`.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// The most issuers whose keys are held; the least recently fetched is dropped past it.
pub const MAX_CACHED_ISSUERS: usize = 1024;
/// The largest OpenID configuration document read.
const MAX_DISCOVERY_BYTES: usize = 64 * 1024;

struct Entry {
    keys: Arc<IssuerKeys>,
    fetched: Instant,
    /// The last fetch attempt (for an unknown `kid`), successful or not.
    tried: Instant,
}

/// Builds a [`JwksCache`].
#[derive(Clone, Debug)]
#[must_use]
pub struct JwksCacheBuilder {
    roots: TrustRoots,
    lifetime: Duration,
    refresh_interval: Duration,
    timeout: Duration,
}

impl JwksCacheBuilder {
    /// Which CAs to trust for `https://` issuers; default the bundled Mozilla roots.
    pub fn trust_roots(mut self, roots: TrustRoots) -> Self {
        self.roots = roots;
        self
    }

    /// How long fetched keys are used; default [`DEFAULT_JWKS_LIFETIME`].
    pub fn lifetime(mut self, d: Duration) -> Self {
        self.lifetime = d;
        self
    }

    /// The least time between two fetches for an unknown `kid`; default
    /// [`DEFAULT_JWKS_REFRESH_INTERVAL`].
    pub fn refresh_interval(mut self, d: Duration) -> Self {
        self.refresh_interval = d;
        self
    }

    /// The bound on one fetch (connection and body); default 5 s.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// The cache.
    pub fn build(self) -> Result<JwksCache, Error> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(&self.roots)?)
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.timeout.min(Duration::from_secs(2)))
            .timeout(self.timeout)
            .no_proxy()
            .build()
            .map_err(|e| Error::config_invalid(format!("HTTP client setup failed: {e}")))?;
        Ok(JwksCache {
            http,
            lifetime: self.lifetime,
            refresh_interval: self.refresh_interval,
            entries: Mutex::new(HashMap::new()),
            fetching: tokio::sync::Mutex::new(()),
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

/// Pinned issuers' keys, fetched on demand and cached; shared by every clone of a verifier.
pub struct JwksCache {
    http: reqwest::Client,
    lifetime: Duration,
    refresh_interval: Duration,
    entries: Mutex<HashMap<IssuerUrl, Entry>>,
    /// One fetch at a time: joins that arrive while keys are fetched wait for them.
    fetching: tokio::sync::Mutex<()>,
    fetches: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksCache").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl JwksCache {
    /// A cache with the defaults.
    pub fn new() -> Result<Self, Error> {
        Self::builder().build()
    }

    /// A builder: roots, lifetime, refresh interval, timeout.
    pub fn builder() -> JwksCacheBuilder {
        JwksCacheBuilder {
            roots: TrustRoots::Mozilla,
            lifetime: DEFAULT_JWKS_LIFETIME,
            refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            timeout: Duration::from_secs(5),
        }
    }

    /// How many times keys were fetched (an OpenID configuration and a JWKS each time).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn cached(&self, issuer: &IssuerUrl, kid: &str) -> Option<Arc<IssuerKeys>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = entries.get(issuer)?;
        let fresh = e.fetched.elapsed() < self.lifetime;
        // Known kid: use. Unknown kid: use only while a refetch is not allowed yet (the
        // signature check then refuses it).
        (fresh && (e.keys.contains(kid) || e.tried.elapsed() < self.refresh_interval)).then(|| e.keys.clone())
    }

    /// The keys of `issuer` that should hold `kid`: cached, or fetched (see the module docs).
    pub async fn keys_for(&self, issuer: &IssuerUrl, kid: &str) -> Result<Arc<IssuerKeys>, Error> {
        if let Some(k) = self.cached(issuer, kid) {
            return Ok(k);
        }
        let _one = self.fetching.lock().await;
        if let Some(k) = self.cached(issuer, kid) {
            return Ok(k);
        }
        self.fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = self.fetch(issuer).await;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(keys) => {
                let keys = Arc::new(keys);
                if entries.len() >= MAX_CACHED_ISSUERS && !entries.contains_key(issuer) {
                    let oldest = entries.iter().min_by_key(|(_, e)| e.fetched).map(|(k, _)| k.clone());
                    if let Some(oldest) = oldest {
                        entries.remove(&oldest);
                    }
                }
                let now = Instant::now();
                entries.insert(issuer.clone(), Entry { keys: keys.clone(), fetched: now, tried: now });
                Ok(keys)
            }
            Err(e) => match entries.get_mut(issuer) {
                // The cached keys are still within their lifetime (the fetch was for an unknown
                // kid): keep using them; the signature check refuses the unknown kid.
                Some(entry) if entry.fetched.elapsed() < self.lifetime => {
                    entry.tried = Instant::now();
                    Ok(entry.keys.clone())
                }
                _ => Err(e),
            },
        }
    }

    async fn get(&self, url: &str, what: &str, max: usize) -> Result<Vec<u8>, Error> {
        let unavailable = |detail: String| Error::new(ErrorKind::StsUnavailable, detail).with_retryable(true);
        let mut answer = self.http.get(url).header("accept", "application/json").send().await.map_err(|e| {
            let (class, cause) = failure_cause(&e);
            unavailable(format!("fetching the {what} {} failed ({}): {cause}", quoted_shown(url), class.as_str()))
        })?;
        let status = answer.status().as_u16();
        if (300..400).contains(&status) {
            return Err(Error::new(
                ErrorKind::UntrustedEndpoint,
                format!(
                    "the {what} {} redirected (HTTP {status}); issuers must serve it themselves",
                    quoted_shown(url)
                ),
            ));
        }
        if status != 200 {
            return Err(unavailable(format!("the {what} {} answered HTTP {status}", quoted_shown(url))));
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer
            .chunk()
            .await
            .map_err(|e| unavailable(format!("reading the {what} failed: {}", failure_cause(&e).1)))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > max {
                return Err(unavailable(format!("the {what} is larger than {max} bytes")));
            }
        }
        Ok(body)
    }

    async fn fetch(&self, issuer: &IssuerUrl) -> Result<IssuerKeys, Error> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let doc = self.get(&issuer.discovery_url(), "OpenID configuration", MAX_DISCOVERY_BYTES).await?;
        let doc: Discovery = serde_json::from_slice(&doc).map_err(|e| {
            Error::new(ErrorKind::StsUnavailable, format!("the OpenID configuration of {issuer} is unusable: {e}"))
                .with_retryable(true)
        })?;
        if doc.issuer != issuer.as_str() {
            return Err(Error::new(
                ErrorKind::UntrustedEndpoint,
                format!("the OpenID configuration at {issuer} names another issuer, {}", quoted_shown(&doc.issuer)),
            ));
        }
        if !issuer.same_origin(&doc.jwks_uri) {
            return Err(Error::new(
                ErrorKind::UntrustedEndpoint,
                format!("the jwks_uri {} is not on the origin of {issuer}", quoted_shown(&doc.jwks_uri)),
            ));
        }
        let jwks = self.get(&doc.jwks_uri, "JWKS", MAX_JWKS_BYTES).await?;
        IssuerKeys::from_jwks(issuer, &jwks)
    }
}
