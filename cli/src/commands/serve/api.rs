//! The HTTP API, one handler per route. Handlers parse, call the library, and answer; every
//! decision is the library's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use iam_join::challenge::ChallengeKeys;
use iam_join::issue::{AgentKey, CredentialIssuer};
use iam_join::wire::{
    Allowed, Answer, ChallengeRequest, ChallengeResponse, Credentials, JoinProof, JoinRequest, Refusal,
};
use iam_join::{Challenge, ErrorKind, RedisReplayGuard, Verifier};
use serde::Deserialize;

use super::metrics::Metrics;
use super::ratelimit::{ClientLimits, retry_after_seconds};

/// The largest API body read: a signed request is at most 16 KiB of head plus a tiny body, 4/3
/// larger as base64, plus the token name and the challenge.
pub(crate) const MAX_API_BODY_BYTES: usize = 64 * 1024;
/// The longest token name the API accepts, in bytes (UTF-8). Teleport's names are far shorter.
pub(crate) const MAX_TOKEN_NAME_BYTES: usize = 256;

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct App {
    pub(crate) verifier: Verifier,
    pub(crate) keys: ChallengeKeys,
    pub(crate) redis: Option<RedisReplayGuard>,
    pub(crate) metrics: Arc<Metrics>,
    /// How long a client may take to send a body it declared (the head's deadline is hyper's).
    pub(crate) body_timeout: Duration,
    /// Issues credentials for allowed joins, when configured.
    pub(crate) issuer: Option<Arc<CredentialIssuer>>,
    /// The rate limit per client on the challenge and join endpoints.
    pub(crate) limits: Arc<ClientLimits>,
}

/// The routes, with every answer bounded by `answer_timeout` (408 past it) and every error
/// status answered in the refusal shape.
pub(crate) fn router(app: Arc<App>, answer_timeout: Duration) -> Router {
    // The rate limit applies before the body is read, so a limited client costs almost nothing.
    let limited = Router::new()
        .route("/v1/challenge", post(challenge))
        .route("/v1/join", post(join))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&app), rate_limit));
    Router::new()
        .merge(limited)
        .route("/metrics", get(metrics))
        .route("/v1/ca", get(ca))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/openid-configuration", get(openid_configuration))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { refusal(StatusCode::NOT_FOUND, "", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            refusal(StatusCode::METHOD_NOT_ALLOWED, "", "this endpoint does not take that method")
        })
        .layer(middleware::from_fn(move |request: Request, next: Next| async move {
            match tokio::time::timeout(answer_timeout, next.run(request)).await {
                Ok(answer) => answer,
                Err(_) => refusal(StatusCode::REQUEST_TIMEOUT, "", "the request was not answered in time"),
            }
        }))
        .with_state(app)
}

/// Over its client's limit: 429, `Retry-After`, a `rate_limited` refusal; nothing is read or
/// sent to STS. The client is the peer, or what a trusted proxy says it is.
async fn rate_limit(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if !app.limits.enabled() {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |ConnectInfo(addr)| addr.ip());
    let client = app.limits.client(peer, request.headers());
    match app.limits.check(client) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let endpoint = if request.uri().path() == "/v1/join" { "join" } else { "challenge" };
            app.metrics.rate_limited(endpoint);
            tracing::debug!(%client, endpoint, "rate limited");
            let mut answer = (StatusCode::TOO_MANY_REQUESTS, axum::Json(Refusal::rate_limited())).into_response();
            answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds(wait)));
            answer
        }
    }
}

/// An error answer in the refusal shape (the library's `wire::Refusal`), kind
/// `malformed_request`: input that is not a join (bad JSON, too large, too slow, no such route
/// or method).
fn refusal(status: StatusCode, token: &str, message: &str) -> Response {
    (status, axum::Json(Refusal::malformed(token, message))).into_response()
}

/// A refusal of the API's input before the library sees it: always `malformed_request`, 400.
fn bad_input(token: &str, message: &str) -> Response {
    refusal(StatusCode::BAD_REQUEST, token, message)
}

/// An answer of the library's, with the status the wire contract gives it.
fn answer(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(answer)).into_response()
}

/// A join's outcome; a refusal by a local limit (no STS slot, the throttling backoff) also
/// says when to come back (`Retry-After`).
fn join_answer(token: &str, result: &Result<iam_join::Verdict, iam_join::Error>) -> Response {
    let mut response = answer(Answer::of(token, result));
    if let Err(e) = result
        && let Some(wait) = e.retry_after()
    {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds(wait)));
    }
    response
}

/// The body, read whole within the limits: a declared `Content-Length` over the limit is 413 at
/// once, without reading; a body that grows past it is 413; one that does not arrive within
/// `timeout` is 408.
async fn read_body(request: Request, timeout: Duration) -> Result<Bytes, Response> {
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || refusal(StatusCode::PAYLOAD_TOO_LARGE, "", "the body is larger than 64 KiB");
    if declared.is_some_and(|n| n > MAX_API_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(request.into_body(), MAX_API_BODY_BYTES);
    match tokio::time::timeout(timeout, http_body_util::BodyExt::collect(limited)).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(bad_input("", "the body could not be read")),
        Err(_) => Err(refusal(StatusCode::REQUEST_TIMEOUT, "", "the body did not arrive in time")),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("the body is not the expected JSON: {e}"))
}

fn check_token_name(token: &str) -> Result<(), &'static str> {
    if token.is_empty() || token.len() > MAX_TOKEN_NAME_BYTES || token.chars().any(char::is_control) {
        return Err("token must be a name of 1 to 256 bytes (UTF-8) without control characters");
    }
    Ok(())
}

/// `POST /v1/challenge {token}` → `{challenge, expires_at}`. Issued for any well-formed name, so
/// the endpoint does not tell which tokens exist; the join checks the token.
async fn challenge(State(app): State<Arc<App>>, request: Request) -> Response {
    let body = match read_body(request, app.body_timeout).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let req: ChallengeRequest = match parse(&body) {
        Ok(r) => r,
        Err(m) => return bad_input("", &m),
    };
    if let Err(m) = check_token_name(&req.token) {
        return bad_input("", m);
    }
    match app.keys.issue_with_expiry(&req.token, SystemTime::now()) {
        Ok((challenge, expires)) => {
            app.metrics.challenge_issued();
            axum::Json(ChallengeResponse::new(challenge, expires)).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "could not issue a challenge");
            answer(Answer::Refused(Refusal::new(&req.token, &e)))
        }
    }
}

/// The join body and its decoded proof; a refusal names the token once it is known.
fn read_join(body: &[u8]) -> Result<(JoinRequest, JoinProof), Box<Refusal>> {
    let req: JoinRequest = parse(body).map_err(|m| Box::new(Refusal::malformed("", &m)))?;
    check_token_name(&req.token).map_err(|m| Box::new(Refusal::malformed("", m)))?;
    let proof = req.proof()?;
    Ok((req, proof))
}

/// `POST /v1/join {token, challenge, request | presigned | web_identity_token}`: the answer, as
/// `iam-join verify` prints it.
async fn join(State(app): State<Arc<App>>, request: Request) -> Response {
    let started = Instant::now();
    let body = match read_body(request, app.body_timeout).await {
        Ok(body) => body,
        Err(answer) => {
            app.metrics.join(ErrorKind::MalformedRequest.as_str(), started);
            return answer;
        }
    };
    let (req, proof) = match read_join(&body) {
        Ok(read) => read,
        Err(refused) => {
            app.metrics.join(ErrorKind::MalformedRequest.as_str(), started);
            return answer(Answer::Refused(*refused));
        }
    };
    // A key that cannot be certified is refused before anything is sent to STS.
    let key = match req.public_key.as_deref().map(AgentKey::from_pem).transpose() {
        Ok(key) => key,
        Err(e) => {
            app.metrics.join(ErrorKind::MalformedRequest.as_str(), started);
            return answer(Answer::Refused(Refusal::new(&req.token, &e)));
        }
    };
    // The challenge must be one this service (or a replica with the same keys) issued for this
    // token, in its one spelling, and still valid; the request must have signed exactly it. The
    // library checks both, claims it, logs the outcome in its span, and decides what the client
    // is told.
    let result =
        app.verifier.verify(&req.token, Challenge::Keyed(&req.challenge), proof.as_proof(), SystemTime::now()).await;
    let outcome = result.as_ref().map_or_else(|e| e.kind().as_str(), |_| "allowed");
    app.metrics.join(outcome, started);
    match (&result, &app.issuer) {
        (Ok(verdict), Some(issuer)) => match issuer.issue(verdict, key.as_ref(), SystemTime::now()) {
            Ok(issued) => {
                if issued.certificate.is_some() {
                    app.metrics.credential_issued("certificate");
                }
                if issued.jwt.is_some() {
                    app.metrics.credential_issued("jwt");
                }
                let credentials = Credentials::new(issued.certificate, issued.ca, issued.jwt, issued.expires_at);
                answer(Answer::Allowed(Allowed::from(verdict).with_credentials(credentials)))
            }
            Err(e) => {
                // The join was allowed, but no credential could be made: the client gets none.
                tracing::error!(error = %e, token = %req.token, "issuing credentials failed");
                answer(Answer::Refused(Refusal::new(&req.token, &e)))
            }
        },
        _ => join_answer(&req.token, &result),
    }
}

/// `GET /v1/ca`: the CA bundle (PEM) agents' certificates chain to.
async fn ca(State(app): State<Arc<App>>) -> Response {
    match app.issuer.as_ref().and_then(|i| i.ca_pem()) {
        Some(pem) => ([(header::CONTENT_TYPE, "application/x-pem-file")], pem.to_owned()).into_response(),
        None => refusal(StatusCode::NOT_FOUND, "", "this service issues no certificates"),
    }
}

/// `GET /.well-known/jwks.json`: every JWT key, the signing one first.
async fn jwks(State(app): State<Arc<App>>) -> Response {
    match app.issuer.as_ref().and_then(|i| i.jwks()) {
        Some(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        None => refusal(StatusCode::NOT_FOUND, "", "this service issues no JWTs"),
    }
}

/// `GET /.well-known/openid-configuration`: the issuer exactly as configured and its JWKS.
async fn openid_configuration(State(app): State<Arc<App>>) -> Response {
    match app.issuer.as_ref().and_then(|i| i.openid_configuration()) {
        Some(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        None => refusal(StatusCode::NOT_FOUND, "", "this service issues no JWTs"),
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render()).into_response()
}

/// Ready when a join could be allowed: at least one usable iam token, and the shared store (if
/// any) answers. Plain text, for probes; the reason is in the body and the log.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.verifier.tokens().is_empty() {
        tracing::warn!("not ready: no usable iam token; every join would be refused");
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: no usable iam token\n").into_response();
    }
    if let Some(redis) = &app.redis
        && let Err(e) = redis.ping().await
    {
        tracing::warn!(error = %e, "not ready: Redis does not answer");
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: Redis does not answer\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}
