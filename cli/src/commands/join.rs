//! `iam-join join`: the client of `iam-join serve`, through the library's `JoinClient`. Asks
//! for a challenge, signs with the AWS chain, submits, prints the answer; retries what the
//! service says is retryable, within --deadline.

use std::process::ExitCode;
use std::time::Duration;

use iam_join::agent::{Attempt, JoinClient, JoinError, ProofFormat};
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
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        // The whole run, the credential chain included, ends at the deadline.
        let start = std::time::Instant::now();
        let identity = tokio::time::timeout(deadline, super::sign::load(&a.agent))
            .await
            .map_err(|_| Usage(format!("no AWS credentials from the chain within the {deadline:?} deadline")))??;
        let left = deadline.saturating_sub(start.elapsed());
        let answer =
            client.join(&a.token, &identity, &format, a.agent.fips, left, report).await.map_err(|e| match e {
                JoinError::Deadline(problem) => {
                    Usage(format!("no answer within the deadline: {}", printable(&problem)))
                }
                other => Usage(printable(&other.to_string())),
            })?;
        // serde_json escapes every control character of the service's text.
        println!("{}", serde_json::to_string(&answer).unwrap_or_default());
        Ok(match answer {
            Answer::Allowed(_) => ExitCode::SUCCESS,
            _ => ExitCode::from(1),
        })
    })
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
