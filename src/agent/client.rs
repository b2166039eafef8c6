//! [`JoinClient`]: an agent's side of the join service. Asks for a challenge, signs with the
//! agent's credentials, submits, and retries what the service says is retryable, all within one
//! deadline; reads the answers as the wire types.

use std::time::{Duration, Instant, SystemTime};

use crate::agent::chain::ChainIdentity;
use crate::agent::sign::{DEFAULT_PRESIGN_EXPIRES, eks_token, presign_join_url, sign_join_request};
use crate::core::error::Error;
use crate::core::text::escaped;
use crate::io::driver::jittered_backoff;
use crate::io::transport::{FailureClass, TrustRoots, failure_cause, is_loopback_ip, tls_config};
use crate::wire::{Answer, ChallengeRequest, ChallengeResponse, JoinRequest, Refusal};

/// The largest answer read from the service.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most characters of the service's text a [`JoinError`] or an [`Attempt`] quotes.
const MAX_QUOTED_CHARS: usize = 512;

/// Which proof [`JoinClient::join`] sends.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofFormat {
    /// The signed `GetCallerIdentity` POST, as Teleport agents send it.
    Forwarded,
    /// A presigned `GetCallerIdentity` URL, as an EKS token (what `aws eks get-token` makes).
    Presigned,
    /// A web identity token from `sts:GetWebIdentityToken`, naming `audience` (the service's)
    /// and the challenge, signed with `algorithm` (`RS256` or `ES384`).
    WebIdentity {
        /// The audience the service expects.
        audience: String,
        /// `RS256` or `ES384`.
        algorithm: String,
    },
}

/// How [`JoinClient::join`] joins: the proof to send, the FIPS endpoint, and the public key to
/// ask a certificate for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JoinOptions {
    /// The proof.
    pub proof: ProofFormat,
    /// Sign for the region's FIPS endpoint.
    pub fips: bool,
    /// The agent's public key (PEM), for a certificate.
    pub public_key: Option<String>,
}

impl JoinOptions {
    /// Joins with `proof`, the standard endpoint, no certificate.
    pub fn new(proof: ProofFormat) -> Self {
        Self { proof, fips: false, public_key: None }
    }

    /// Sign for the FIPS endpoint.
    pub fn fips(mut self, fips: bool) -> Self {
        self.fips = fips;
        self
    }

    /// Ask for a certificate for this public key (PEM).
    pub fn public_key(mut self, pem: impl Into<String>) -> Self {
        self.public_key = Some(pem.into());
        self
    }
}

/// The client of a join service (`iam-join serve`, or any service with its wire contract).
///
/// The signed request is a bearer proof for the challenge's lifetime, so it crosses no network
/// in clear text: the server is `https://`, or `http://` on a loopback IP address. A loopback
/// server (an IP, or `localhost`) is never reached through a proxy, whatever `HTTP_PROXY` or
/// `ALL_PROXY` say, as Go's `ProxyFromEnvironment` never proxies it; an https server may be
/// (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`): TLS then runs through the proxy end to end. No
/// redirect is followed; answers are read up to [`MAX_ANSWER_BYTES`].
///
/// ```no_run
/// # async fn join() -> Result<(), Box<dyn std::error::Error>> {
/// use iam_join::agent::{AwsChain, JoinClient, JoinOptions, ProofFormat};
/// use iam_join::wire::Answer;
/// let identity = AwsChain::new().load().await?;
/// let client = JoinClient::new("https://join.example.com")?;
/// let answer = client.join("kube-agent", &identity, &JoinOptions::new(ProofFormat::Forwarded), std::time::Duration::from_secs(60), |_| {}).await?;
/// if let Answer::Allowed(a) = answer {
///     println!("joined as {} with roles {:?}", a.identity.arn, a.roles);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct JoinClient {
    http: reqwest::Client,
    base: String,
}

/// The last answer's `Retry-After` in one join (a rate limit, a busy service), honoured by its
/// next retry.
type RetryHint = std::sync::Mutex<Option<Duration>>;

/// The longest `Retry-After` the client honours; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why a join through the service ended without an answer.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// Nothing a retry can fix: signing failed, the service's challenge cannot be a header value,
    /// the server's name does not exist.
    #[error("{0}")]
    Local(String),
    /// The service was not reached, or did not answer with JSON, until the deadline.
    #[error("no answer within the deadline: {0}")]
    Deadline(String),
}

/// One attempt that will be retried, for the caller to report.
#[non_exhaustive]
#[derive(Debug)]
pub enum Attempt<'a> {
    /// The service refused retryably (e.g. `sts_unavailable`).
    Refused {
        /// The attempt's number, from 1.
        number: u32,
        /// What the service said (its own text: escape it before printing it on a terminal).
        refusal: &'a Refusal,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// The exchange failed (no connection, a timeout, an answer that is not JSON).
    Failed {
        /// The attempt's number, from 1.
        number: u32,
        /// What failed, with its class and cause (the service's text escaped).
        problem: &'a str,
        /// When the next attempt starts.
        retry_in: Duration,
    },
}

/// What one attempt came to.
enum Failure {
    Local(String),
    Remote(String),
}

impl JoinClient {
    /// A client for the service at `server` (its base URL), trusting the bundled Mozilla roots.
    /// Refusals are `config_invalid`: a URL that is not one, or plain `http://` to anything but a
    /// loopback IP.
    pub fn new(server: &str) -> Result<Self, Error> {
        Self::with_roots(server, &TrustRoots::Mozilla)
    }

    /// [`JoinClient::new`], trusting only `roots` (a service behind a private CA).
    pub fn with_roots(server: &str, roots: &TrustRoots) -> Result<Self, Error> {
        let url = url::Url::parse(server).map_err(|e| Error::config_invalid(format!("server {server:?}: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_ip(&url) => {}
            _ => {
                return Err(Error::config_invalid(format!(
                    "server {server:?} must be https:// (or http:// on a loopback address)"
                )));
            }
        }
        let localhost =
            matches!(url.host(), Some(url::Host::Domain(d)) if d == "localhost" || d.ends_with(".localhost"));
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(roots)?)
            .redirect(reqwest::redirect::Policy::none());
        if is_loopback_ip(&url) || localhost {
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| Error::config_invalid(format!("HTTP client: {e}")))?;
        Ok(Self { http, base: url.as_str().trim_end_matches('/').to_owned() })
    }

    /// The service's base URL, as the client uses it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Joins with `token`: a challenge, the signed request for `identity` (its region's STS
    /// endpoint, or FIPS with `fips`), the answer. A retryable refusal, or an exchange that
    /// failed, is retried with a new challenge and growing, jittered backoff (250 ms doubling
    /// to 5 s, or the service's `Retry-After` when longer, up to 30 s), each reported to
    /// `on_retry`; everything, every exchange included, ends by
    /// `deadline`. The answer is allowed or refused (when the deadline cuts off a retry, the
    /// service's last refusal); a [`JoinError`] when there is none.
    pub async fn join(
        &self,
        token: &str,
        identity: &ChainIdentity,
        options: &JoinOptions,
        deadline: Duration,
        mut on_retry: impl FnMut(Attempt<'_>),
    ) -> Result<Answer, JoinError> {
        let end = Instant::now() + deadline;
        let mut number = 0u32;
        // The service's last (retryable) refusal: the answer, when the deadline cuts a retry off.
        let mut last_refusal = None;
        let hint = RetryHint::default();
        loop {
            number += 1;
            let outcome = self.once(token, identity, options, end, &hint).await;
            // The growing backoff, or longer when the service said when to come back.
            let asked = hint.lock().unwrap_or_else(|p| p.into_inner()).take();
            let retry_in = jittered_backoff(number, Duration::from_millis(250), Duration::from_secs(5), 0.25)
                .max(asked.unwrap_or_default().min(MAX_RETRY_AFTER));
            let time_left = Instant::now() + retry_in < end;
            match outcome {
                Ok(Answer::Refused(r)) if r.error.retryable && time_left => {
                    on_retry(Attempt::Refused { number, refusal: &r, retry_in });
                    last_refusal = Some(r);
                }
                Ok(answer) => return Ok(answer),
                Err(Failure::Local(problem)) => return Err(JoinError::Local(problem)),
                Err(Failure::Remote(problem)) if time_left => {
                    on_retry(Attempt::Failed { number, problem: &problem, retry_in });
                }
                Err(Failure::Remote(problem)) => {
                    return match last_refusal {
                        Some(r) => Ok(Answer::Refused(r)),
                        None => Err(JoinError::Deadline(format!("{}: {problem}", self.base))),
                    };
                }
            }
            tokio::time::sleep(retry_in).await;
        }
    }

    /// One join: challenge, sign, submit, each exchange bounded by the time left until `end`.
    async fn once(
        &self,
        token: &str,
        identity: &ChainIdentity,
        options: &JoinOptions,
        end: Instant,
        hint: &RetryHint,
    ) -> Result<Answer, Failure> {
        let (format, fips) = (&options.proof, options.fips);
        let url = format!("{}/v1/challenge", self.base);
        let (status, body) = self.post(&url, &ChallengeRequest::new(token), end, hint).await?;
        let issued = match serde_json::from_slice::<ChallengeResponse>(&body) {
            Ok(c) if status == 200 => c,
            _ => {
                let shown = escaped(&String::from_utf8_lossy(&body), MAX_QUOTED_CHARS);
                return Err(Failure::Remote(format!("{url}: no challenge: HTTP {status}: {shown}")));
            }
        };
        // A challenge travels in a signed header: visible ASCII only. Anything else is a service
        // that cannot be joined, not a passing fault.
        let challenge = issued.challenge;
        if challenge.is_empty() || !challenge.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Failure::Local(format!(
                "the service's challenge cannot be a header value (it must be visible ASCII): {}",
                escaped(&challenge, MAX_QUOTED_CHARS)
            )));
        }
        let local = |what: &str, e: crate::core::error::Error| Failure::Local(format!("{what} failed: {}", e.detail()));
        let join = identity.join_request(challenge.as_str(), fips);
        let request = match format {
            ProofFormat::Forwarded => {
                let raw = sign_join_request(identity.credentials(), &join, SystemTime::now())
                    .map_err(|e| local("signing the join", e))?;
                JoinRequest::forwarded(token, challenge, &raw)
            }
            ProofFormat::Presigned => {
                let url = presign_join_url(identity.credentials(), &join, DEFAULT_PRESIGN_EXPIRES, SystemTime::now())
                    .map_err(|e| local("presigning the join", e))?;
                JoinRequest::presigned(token, challenge, eks_token(&url))
            }
            ProofFormat::WebIdentity { audience, algorithm } => {
                let audiences = [audience.as_str(), challenge.as_str()];
                let asked = identity.web_identity_token(&audiences, algorithm, None);
                let jwt = match tokio::time::timeout(end.saturating_duration_since(Instant::now()), asked).await {
                    Ok(Ok(jwt)) => jwt,
                    Ok(Err(e)) if e.is_retryable() => return Err(Failure::Remote(e.detail().to_owned())),
                    Ok(Err(e)) => return Err(local("asking STS for a web identity token", e)),
                    Err(_) => return Err(Failure::Remote("STS gave no web identity token before the deadline".into())),
                };
                JoinRequest::web_identity(token, challenge, jwt)
            }
        };
        let request = match &options.public_key {
            Some(pem) => request.with_public_key(pem.clone()),
            None => request,
        };
        let url = format!("{}/v1/join", self.base);
        let (status, body) = self.post(&url, &request, end, hint).await?;
        Answer::from_slice(&body).map_err(|_| Failure::Remote(format!("{url}: HTTP {status}, not a join answer")))
    }

    async fn post(
        &self,
        url: &str,
        body: &impl serde::Serialize,
        end: Instant,
        hint: &RetryHint,
    ) -> Result<(u16, Vec<u8>), Failure> {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Remote(format!("{url}: the deadline passed")));
        }
        let failed = |e: reqwest::Error| {
            let (class, cause) = failure_cause(&e);
            match class {
                // The resolver says the name does not exist: a typo in the server's URL, not a
                // passing fault.
                FailureClass::NameResolution { permanent: true } => {
                    Failure::Local(format!("{url}: the server's name does not resolve (no such name): {cause}"))
                }
                _ => Failure::Remote(format!("{url}: {} ({}): {cause}", step_of(&e), class.as_str())),
            }
        };
        let json = serde_json::to_vec(body).map_err(|e| Failure::Local(format!("{url}: {e}")))?;
        let mut answer = self
            .http
            .post(url)
            .timeout(left)
            .header("content-type", "application/json")
            .body(json)
            .send()
            .await
            .map_err(failed)?;
        let status = answer.status().as_u16();
        let retry_after = answer
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if retry_after.is_some() {
            *hint.lock().unwrap_or_else(|p| p.into_inner()) = retry_after;
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(failed)? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_ANSWER_BYTES {
                return Err(Failure::Remote(format!("{url}: answer larger than {MAX_ANSWER_BYTES} bytes")));
            }
        }
        Ok((status, bytes))
    }
}

/// What part of the exchange failed.
fn step_of(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "could not connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "the exchange failed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_request_crosses_no_network_in_clear_text() {
        let base = |s: &str| JoinClient::new(s).ok().map(|c| c.base().to_owned());
        assert_eq!(base("https://join.example.com/").as_deref(), Some("https://join.example.com"));
        assert_eq!(base("http://127.0.0.1:3080").as_deref(), Some("http://127.0.0.1:3080"));
        assert_eq!(base("http://[::1]:3080/").as_deref(), Some("http://[::1]:3080"));
        assert_eq!(base("https://localhost:3080/").as_deref(), Some("https://localhost:3080"));
        for refused in
            ["http://join.example.com", "http://localhost:3080", "http://10.0.0.1", "ftp://127.0.0.1", "nope"]
        {
            let e = JoinClient::new(refused).unwrap_err();
            assert_eq!(e.kind(), crate::core::error::ErrorKind::ConfigInvalid, "{refused}");
        }
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        let b = |n| jittered_backoff(n, Duration::from_millis(250), Duration::from_secs(5), 0.25).as_millis();
        assert!((250..=313).contains(&b(1)), "{}", b(1));
        assert!((500..=625).contains(&b(2)));
        assert!((5000..=6250).contains(&b(30)));
    }
}
