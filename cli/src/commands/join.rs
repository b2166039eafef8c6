//! `iam-join join`: the client of `iam-join serve`, through the library's `JoinClient`. Asks
//! for a challenge, signs with the AWS chain, submits, prints the answer; retries what the
//! service says is retryable, within --deadline.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use iam_join::agent::{Attempt, IdentityDir, JoinClient, JoinError, JoinOptions, ProofFormat};
use iam_join::wire::Answer;

use crate::{JoinArgs, Usage};

/// The most characters of the service's text printed on the terminal.
const MAX_PRINTED_CHARS: usize = 512;

pub(crate) fn run(a: &JoinArgs) -> Result<ExitCode, Usage> {
    let client = JoinClient::new(&a.server).map_err(|e| Usage(format!("--server: {}", e.detail())))?;
    if !(a.deadline > 0.0 && a.deadline <= 3600.0) {
        return Err(Usage("--deadline must be between 0 and 3600 seconds".into()));
    }
    let deadline = Duration::from_secs_f64(a.deadline);
    let format = match (a.proof.as_str(), &a.audience) {
        ("presigned", _) => ProofFormat::Presigned,
        ("web-identity", Some(audience)) => {
            ProofFormat::WebIdentity { audience: audience.clone(), algorithm: a.algorithm.clone() }
        }
        ("web-identity", None) => return Err(Usage("--proof web-identity needs --audience (the service's)".into())),
        _ => ProofFormat::Forwarded,
    };
    let dir = a.identity_dir.as_ref().map(IdentityDir::new);
    let server = client.base().to_owned();
    // A stored identity worth keeping is used as it is: no AWS chain, no service, no STS.
    let mut stored = None;
    if let Some(dir) = &dir
        && !a.force
    {
        match dir.load(&a.token, &server, SystemTime::now()) {
            Ok(id) if id.fresh_at(SystemTime::now()) => stored = Some(id),
            Ok(_) => {
                eprintln!("iam-join: the stored identity has less than a third of its lifetime left; joining again")
            }
            Err(why) => {
                eprintln!("iam-join: no usable identity in {} ({}); joining", dir.path().display(), printable(&why))
            }
        }
    }
    if let Some(id) = &stored {
        println!("{}", serde_json::to_string(id).unwrap_or_default());
        if !a.renew {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        loop {
            if let Some(id) = &stored {
                // --renew: join again once two thirds of the lifetime have passed.
                let wait = id.renew_at().duration_since(SystemTime::now()).unwrap_or_default();
                eprintln!("iam-join: renewing in {} s", wait.as_secs());
                tokio::time::sleep(wait).await;
            }
            let outcome = join_once(a, &client, &format, dir.as_ref(), &server, deadline).await;
            match (outcome, &stored) {
                (Ok(Joined::Stored(id)), _) => {
                    println!("{}", serde_json::to_string(&id).unwrap_or_default());
                    stored = Some(id);
                }
                (Ok(Joined::Answer(code)), _) => return Ok(code),
                // A renewal that failed while the identity is still valid: try again shortly.
                (Err(e), Some(id)) if a.renew && SystemTime::now() + RENEW_RETRY < id.expires_at() => {
                    eprintln!("iam-join: renewing failed ({}); trying again in {} s", e.0, RENEW_RETRY.as_secs());
                    tokio::time::sleep(RENEW_RETRY).await;
                    continue;
                }
                (Err(e), _) => return Err(e),
            }
            if !a.renew {
                return Ok(ExitCode::SUCCESS);
            }
        }
    })
}

/// How long a renewing agent waits after a failed renewal.
const RENEW_RETRY: Duration = Duration::from_secs(10);

enum Joined {
    /// An allowed join whose identity was stored.
    Stored(iam_join::agent::StoredIdentity),
    /// The answer was printed; the exit code to return.
    Answer(ExitCode),
}

/// One join: the AWS chain, a key pair when an identity is kept, the service, the answer.
async fn join_once(
    a: &JoinArgs,
    client: &JoinClient,
    format: &ProofFormat,
    dir: Option<&IdentityDir>,
    server: &str,
    deadline: Duration,
) -> Result<Joined, Usage> {
    // The whole join, the credential chain included, ends at the deadline.
    let start = std::time::Instant::now();
    let identity = tokio::time::timeout(deadline, super::sign::load(&a.agent))
        .await
        .map_err(|_| Usage(format!("no AWS credentials from the chain within the {deadline:?} deadline")))??;
    let mut options = JoinOptions::new(format.clone()).fips(a.agent.fips);
    let key = match dir {
        Some(_) => {
            let (private, public) = iam_join::issue::generate_agent_key().map_err(|e| Usage(e.detail().to_owned()))?;
            options = options.public_key(public);
            Some(private)
        }
        None => None,
    };
    let left = deadline.saturating_sub(start.elapsed());
    let issued_at = SystemTime::now();
    let answer = client.join(&a.token, &identity, &options, left, report).await.map_err(|e| match e {
        JoinError::Deadline(problem) => Usage(format!("no answer within the deadline: {}", printable(&problem))),
        other => Usage(printable(&other.to_string())),
    })?;
    match (answer, dir, key) {
        (Answer::Allowed(allowed), Some(dir), Some(key)) => {
            let id = dir.save(server, &key, &allowed, issued_at).map_err(|e| Usage(e.detail().to_owned()))?;
            Ok(Joined::Stored(id))
        }
        (answer, _, _) => {
            // serde_json escapes every control character of the service's text.
            println!("{}", serde_json::to_string(&answer).unwrap_or_default());
            Ok(Joined::Answer(match answer {
                Answer::Allowed(_) => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            }))
        }
    }
}

/// Each attempt that will be retried, with its cause, on stderr.
fn report(attempt: Attempt<'_>) {
    match attempt {
        Attempt::Refused { number, refusal, retry_in } => eprintln!(
            "iam-join: attempt {number}: {} ({}); retrying in {} ms",
            printable(&refusal.error.kind),
            printable(&refusal.error.message),
            retry_in.as_millis()
        ),
        Attempt::Failed { number, problem, retry_in } => {
            eprintln!("iam-join: attempt {number}: {}; retrying in {} ms", printable(problem), retry_in.as_millis());
        }
        _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_text_cannot_write_to_the_terminal() {
        let forged = "x\r\niam-join: allowed as arn:aws:iam::1:user/admin\u{1b}[2K\u{7}\u{202e}";
        let shown = printable(forged);
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{202e}'), "{shown:?}");
        assert_eq!(shown, "x\\u{d}\\u{a}iam-join: allowed as arn:aws:iam::1:user/admin\\u{1b}[2K\\u{7}\\u{202e}");
        assert_eq!(printable("plain text, é"), "plain text, é", "positive control");
        assert_eq!(printable(&"a".repeat(600)).len(), 512 + 3);
    }
}
