//! `iam-join join`: the client of `iam-join serve`. Asks for a challenge, signs with the AWS
//! chain, submits, prints the verdict; retries what the service says is retryable.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use iam_join::agent::{ChainIdentity, sign_join_request};
use serde_json::{Value, json};

use crate::{JoinArgs, Usage};

/// Each exchange with the service; the service bounds a join by its own --timeout + 5 s.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from the service.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

pub(crate) fn run(a: &JoinArgs) -> Result<ExitCode, Usage> {
    let base = server_url(&a.server)?;
    if !(a.deadline > 0.0 && a.deadline <= 3600.0) {
        return Err(Usage("--deadline must be between 0 and 3600 seconds".into()));
    }
    let deadline = Duration::from_secs_f64(a.deadline);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(EXCHANGE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Usage(format!("HTTP client: {e}")))?;
        let identity = super::sign::load(&a.agent).await?;
        let start = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = once(&http, &base, &a.token, &identity, a.agent.fips).await;
            let wait = backoff(attempt);
            let time_left = start.elapsed() + wait < deadline;
            match outcome {
                Ok((status, answer)) => {
                    let retryable = answer["error"]["retryable"] == true;
                    if status != 200 && retryable && time_left {
                        eprintln!(
                            "iam-join: attempt {attempt}: {} ({}); retrying in {} ms",
                            answer["error"]["kind"].as_str().unwrap_or("?"),
                            answer["error"]["message"].as_str().unwrap_or(""),
                            wait.as_millis()
                        );
                    } else {
                        println!("{answer}");
                        return Ok(if status == 200 && answer["allowed"] == true {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(1)
                        });
                    }
                }
                Err(problem) if time_left => {
                    eprintln!("iam-join: attempt {attempt}: {problem}; retrying in {} ms", wait.as_millis());
                }
                Err(problem) => return Err(Usage(format!("no answer from {base} within the deadline: {problem}"))),
            }
            tokio::time::sleep(wait).await;
        }
    })
}

/// `https://…`, or `http://` to a loopback address only: the signed request is a bearer proof
/// for the challenge's lifetime, so it never crosses a network in clear text.
fn server_url(server: &str) -> Result<String, Usage> {
    let url = url::Url::parse(server).map_err(|e| Usage(format!("--server {server:?}: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        // A name could resolve anywhere; the verifier's endpoint override has the same rule.
        Some(url::Host::Domain(_)) | None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(Usage(format!("--server {server:?} must be https:// (or http:// on a loopback address)"))),
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// One join: challenge, sign, submit. `Err` when the service could not be reached or did not
/// answer with JSON.
async fn once(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    identity: &ChainIdentity,
    fips: bool,
) -> Result<(u16, Value), String> {
    let (status, issued) = post(http, &format!("{base}/v1/challenge"), &json!({"token": token})).await?;
    let Some(challenge) = issued["challenge"].as_str().filter(|_| status == 200) else {
        return Err(format!("no challenge: HTTP {status}: {issued}"));
    };
    let raw = sign_join_request(identity.credentials(), &identity.join_request(challenge, fips), SystemTime::now())
        .map_err(|e| e.to_string())?;
    let request = base64::engine::general_purpose::STANDARD.encode(raw);
    post(http, &format!("{base}/v1/join"), &json!({"token": token, "challenge": challenge, "request": request})).await
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Result<(u16, Value), String> {
    let mut answer = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = answer.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_ANSWER_BYTES {
            return Err(format!("{url}: answer larger than {MAX_ANSWER_BYTES} bytes"));
        }
    }
    serde_json::from_slice(&bytes).map(|v| (status, v)).map_err(|_| format!("{url}: HTTP {status}, not JSON"))
}

/// 250 ms, doubling to at most 5 s, with up to 25% random jitter so a fleet does not retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1 << attempt.saturating_sub(1).min(5)).min(5000);
    let mut b = [0u8; 1];
    let jitter = getrandom::fill(&mut b).map_or(0, |()| base * u64::from(b[0]) / 1020);
    Duration::from_millis(base + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signed_request_crosses_no_network_in_clear_text() {
        assert_eq!(server_url("https://join.example.com/").ok().as_deref(), Some("https://join.example.com"));
        assert_eq!(server_url("http://127.0.0.1:3080").ok().as_deref(), Some("http://127.0.0.1:3080"));
        assert_eq!(server_url("http://[::1]:3080/").ok().as_deref(), Some("http://[::1]:3080"));
        for refused in
            ["http://join.example.com", "http://localhost:3080", "http://10.0.0.1", "ftp://127.0.0.1", "nope"]
        {
            assert!(server_url(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!((250..=312).contains(&backoff(1).as_millis()), "{:?}", backoff(1));
        assert!((500..=625).contains(&backoff(2).as_millis()));
        assert!((5000..=6250).contains(&backoff(30).as_millis()));
    }
}
