//! `iam-join join`: the client of `iam-join serve`. Asks for a challenge, signs with the AWS
//! chain, submits, prints the verdict; retries what the service says is retryable.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use iam_join::FailureClass;
use iam_join::agent::{ChainIdentity, sign_join_request};
use serde_json::{Value, json};

use crate::{JoinArgs, Usage};

/// The largest answer read from the service.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most characters of the service's text printed on the terminal.
const MAX_PRINTED_CHARS: usize = 512;

/// Why one attempt failed: here (exit 2 at once) or at the service (retried within the deadline).
enum Failure {
    /// Signing, a challenge that cannot be a header value, a server name that does not exist:
    /// no retry can fix it.
    Local(String),
    /// The service could not be reached, or did not answer with JSON.
    Remote(String),
}

pub(crate) fn run(a: &JoinArgs) -> Result<ExitCode, Usage> {
    let server = server_url(&a.server)?;
    if !(a.deadline > 0.0 && a.deadline <= 3600.0) {
        return Err(Usage("--deadline must be between 0 and 3600 seconds".into()));
    }
    let deadline = Duration::from_secs_f64(a.deadline);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        // The whole run, the credential chain included, ends at the deadline.
        let end = Instant::now() + deadline;
        let http = client(&server)?;
        let identity = tokio::time::timeout_at(end.into(), super::sign::load(&a.agent))
            .await
            .map_err(|_| Usage(format!("no AWS credentials from the chain within the {deadline:?} deadline")))??;
        let base = server.base.as_str();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let outcome = once(&http, base, &a.token, &identity, a.agent.fips, end).await;
            let wait = backoff(attempt);
            let time_left = Instant::now() + wait < end;
            match outcome {
                Ok((status, answer)) => {
                    let retryable = answer["error"]["retryable"] == true;
                    if status != 200 && retryable && time_left {
                        eprintln!(
                            "iam-join: attempt {attempt}: {} ({}); retrying in {} ms",
                            printable(answer["error"]["kind"].as_str().unwrap_or("?")),
                            printable(answer["error"]["message"].as_str().unwrap_or("")),
                            wait.as_millis()
                        );
                    } else {
                        // serde_json escapes every control character of the service's text.
                        println!("{answer}");
                        return Ok(if status == 200 && answer["allowed"] == true {
                            ExitCode::SUCCESS
                        } else {
                            ExitCode::from(1)
                        });
                    }
                }
                Err(Failure::Local(problem)) => return Err(Usage(problem)),
                Err(Failure::Remote(problem)) if time_left => {
                    eprintln!(
                        "iam-join: attempt {attempt}: {}; retrying in {} ms",
                        printable(&problem),
                        wait.as_millis()
                    );
                }
                Err(Failure::Remote(problem)) => {
                    return Err(Usage(format!("no answer from {base} within the deadline: {}", printable(&problem))));
                }
            }
            tokio::time::sleep(wait).await;
        }
    })
}

/// The service's base URL, and whether it is this machine.
struct Server {
    base: String,
    /// A loopback IP, or `localhost`: never reached through a proxy.
    local: bool,
}

/// `https://…`, or `http://` to a loopback address only: the signed request is a bearer proof
/// for the challenge's lifetime, so it never crosses a network in clear text.
fn server_url(server: &str) -> Result<Server, Usage> {
    let url = url::Url::parse(server).map_err(|e| Usage(format!("--server {server:?}: {e}")))?;
    let loopback_ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        // A name could resolve anywhere; the verifier's endpoint override has the same rule.
        Some(url::Host::Domain(_)) | None => false,
    };
    let localhost = matches!(url.host(), Some(url::Host::Domain(d)) if d == "localhost" || d.ends_with(".localhost"));
    match url.scheme() {
        "https" => {}
        "http" if loopback_ip => {}
        _ => return Err(Usage(format!("--server {server:?} must be https:// (or http:// on a loopback address)"))),
    }
    Ok(Server { base: url.as_str().trim_end_matches('/').to_owned(), local: loopback_ip || localhost })
}

/// The HTTP client: no redirects, and no proxy for this machine. A proxy from the environment
/// (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`) is used for an https server only: TLS runs through it
/// end to end, so it sees the server's name and nothing of the join. A loopback server is never
/// proxied, as Go's `ProxyFromEnvironment` never proxies it: the plain http allowed there would
/// hand the proxy the signed request, a bearer proof for the challenge's lifetime.
fn client(server: &Server) -> Result<reqwest::Client, Usage> {
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if server.local {
        builder = builder.no_proxy();
    }
    builder.build().map_err(|e| Usage(format!("HTTP client: {e}")))
}

/// One join: challenge, sign, submit, each exchange bounded by the time left until `end`.
async fn once(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    identity: &ChainIdentity,
    fips: bool,
    end: Instant,
) -> Result<(u16, Value), Failure> {
    let (status, issued) = post(http, &format!("{base}/v1/challenge"), &json!({"token": token}), end).await?;
    let Some(challenge) = issued["challenge"].as_str().filter(|_| status == 200) else {
        return Err(Failure::Remote(format!("no challenge: HTTP {status}: {issued}")));
    };
    // A challenge travels in a signed header: visible ASCII only. Anything else is a service
    // that cannot be joined, not a passing fault.
    if challenge.is_empty() || !challenge.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Failure::Local(format!(
            "the service's challenge cannot be a header value (it must be visible ASCII): {}",
            printable(challenge)
        )));
    }
    let raw = sign_join_request(identity.credentials(), &identity.join_request(challenge, fips), SystemTime::now())
        .map_err(|e| Failure::Local(format!("signing the join failed: {}", e.detail())))?;
    let request = base64::engine::general_purpose::STANDARD.encode(raw);
    post(http, &format!("{base}/v1/join"), &json!({"token": token, "challenge": challenge, "request": request}), end)
        .await
}

async fn post(http: &reqwest::Client, url: &str, body: &Value, end: Instant) -> Result<(u16, Value), Failure> {
    let left = end.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Failure::Remote(format!("{url}: the deadline passed")));
    }
    let failed = |e: reqwest::Error| {
        let (class, cause) = iam_join::failure_cause(&e);
        match class {
            // The resolver says the name does not exist: a typo in --server, not a passing fault.
            FailureClass::NameResolution { permanent: true } => {
                Failure::Local(format!("{url}: the server's name does not resolve (no such name): {cause}"))
            }
            _ => Failure::Remote(format!("{url}: {} ({}): {cause}", describe(&e), class.as_str())),
        }
    };
    let mut answer = http
        .post(url)
        .timeout(left)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(failed)?;
    let status = answer.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(failed)? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_ANSWER_BYTES {
            return Err(Failure::Remote(format!("{url}: answer larger than {MAX_ANSWER_BYTES} bytes")));
        }
    }
    serde_json::from_slice(&bytes)
        .map(|v| (status, v))
        .map_err(|_| Failure::Remote(format!("{url}: HTTP {status}, not JSON")))
}

/// What part of the exchange failed.
fn describe(e: &reqwest::Error) -> &'static str {
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

/// The service's text as it may reach a terminal: control characters (ESC, BEL, CR, LF...) and
/// the invisible characters that reorder text are escaped, so a hostile service cannot forge a
/// line or move the cursor; at most 512 characters.
fn printable(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_PRINTED_CHARS {
            out.push_str("...");
            break;
        }
        let invisible =
            matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c.is_control() || invisible {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
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
        let base = |s: &str| server_url(s).ok().map(|s| (s.base, s.local));
        assert_eq!(base("https://join.example.com/"), Some(("https://join.example.com".into(), false)));
        assert_eq!(base("http://127.0.0.1:3080"), Some(("http://127.0.0.1:3080".into(), true)));
        assert_eq!(base("http://[::1]:3080/"), Some(("http://[::1]:3080".into(), true)));
        assert_eq!(base("https://localhost:3080/"), Some(("https://localhost:3080".into(), true)));
        for refused in
            ["http://join.example.com", "http://localhost:3080", "http://10.0.0.1", "ftp://127.0.0.1", "nope"]
        {
            assert!(server_url(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_services_text_cannot_write_to_the_terminal() {
        let forged = "x\r\niam-join: allowed as arn:aws:iam::1:user/admin\u{1b}[2K\u{7}\u{202e}";
        let shown = printable(forged);
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{202e}'), "{shown:?}");
        assert_eq!(shown, "x\\u{d}\\u{a}iam-join: allowed as arn:aws:iam::1:user/admin\\u{1b}[2K\\u{7}\\u{202e}");
        assert_eq!(printable("plain text, é"), "plain text, é", "positive control");
        assert_eq!(printable(&"a".repeat(600)).len(), 512 + 3);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!((250..=312).contains(&backoff(1).as_millis()), "{:?}", backoff(1));
        assert!((500..=625).contains(&backoff(2).as_millis()));
        assert!((5000..=6250).contains(&backoff(30).as_millis()));
    }
}
