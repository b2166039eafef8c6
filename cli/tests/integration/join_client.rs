//! `iam-join join` against fake services on loopback: it never sends a loopback join through a
//! proxy, `--deadline` bounds the whole run, the service's text cannot write to the terminal,
//! and local failures exit at once (issue 18).

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::common::loopback::{Loopback, reply, reply_with};
use crate::service::agent_command;

const CHALLENGE: &str = "v1.k1.1800000300.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// `iam-join join --server URL --token iam-token` with the agent's keys as its only credentials
/// and `env` added; returns its output and how long it ran.
async fn join(server: &str, deadline: &str, env: &[(&str, String)]) -> (Output, Duration) {
    let (server, deadline) = (server.to_owned(), deadline.to_owned());
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let out = agent_command(&["join", "--server", &server, "--token", "iam-token", "--deadline", &deadline])
            .envs(env)
            .output()
            .unwrap();
        (out, start.elapsed())
    })
    .await
    .unwrap()
}

/// A fake join service: a challenge, then `join_answer` (status, JSON) for each join.
async fn service(
    challenge: &'static str,
    join_answer: fn(usize) -> (u16, serde_json::Value),
) -> (Loopback, Arc<AtomicUsize>) {
    let joins = Arc::new(AtomicUsize::new(0));
    let count = joins.clone();
    let server = Loopback::start(move |mut conn, request| {
        let count = count.clone();
        async move {
            let head = String::from_utf8_lossy(&request).into_owned();
            let (status, body) = if head.starts_with("POST /v1/challenge ") {
                (200, json!({"challenge": challenge, "expires_at": "2027-01-15T08:00:00Z"}))
            } else {
                join_answer(count.fetch_add(1, Ordering::SeqCst))
            };
            conn.write_all(&reply(status, "application/json", body.to_string().as_bytes())).await.ok()?;
            Some(conn)
        }
    })
    .await;
    (server, joins)
}

fn allowed(_: usize) -> (u16, serde_json::Value) {
    (
        200,
        json!({"allowed": true, "token": "iam-token", "roles": ["Node"], "identity": {"account": "111111111111", "arn": "arn:aws:iam::111111111111:user/ci-deployer", "user_id": "AIDAEXAMPLEUSERID0001"}, "matched_rule": 0}),
    )
}

/// A proxy that must not be used: it counts what reaches it and answers nothing.
async fn proxy() -> Loopback {
    Loopback::start(|_conn, _request| async { None }).await
}

fn proxy_env(p: &Loopback) -> Vec<(&'static str, String)> {
    let url = format!("http://{}", p.addr());
    ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .into_iter()
        .map(|k| (k, url.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_join_never_goes_through_a_proxy() {
    let (svc, joins) = service(CHALLENGE, allowed).await;
    let p = proxy().await;
    let server = format!("http://{}", svc.addr());
    let (out, _) = join(&server, "10", &proxy_env(&p)).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        (svc.requests(), joins.load(Ordering::SeqCst)),
        (2, 1),
        "the challenge and the join reached the service"
    );
    assert_eq!(p.requests(), 0, "the proxy saw the signed request");
    // Positive control: the same proxy variables are honoured for an https server (TLS runs
    // through the proxy end to end), so the test's proxy would have seen a loopback join.
    let (out, _) = join("https://join.example.invalid", "2", &proxy_env(&p)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(p.requests() >= 1, "an https join goes through HTTPS_PROXY");
    assert!(String::from_utf8_lossy(&p.last_request()).starts_with("CONNECT join.example.invalid:443 "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_the_whole_run_against_a_silent_service() {
    // Accepts, reads, and never answers; holds every connection open.
    let silent = Loopback::start(|conn, _request| async move {
        tokio::time::sleep(Duration::from_secs(120)).await;
        drop(conn);
        None
    })
    .await;
    let (out, took) = join(&format!("http://{}", silent.addr()), "2", &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(took < Duration::from_secs(3), "--deadline 2 took {took:?}");
    assert!(silent.requests() >= 1, "the service was asked");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("within the deadline"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// When the deadline cuts off a retry, the answer is the service's last refusal (exit 1, its
/// kind), not "no answer": the service did answer, retryably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_cut_off_by_the_deadline_reports_the_last_refusal() {
    let joins = Arc::new(AtomicUsize::new(0));
    let count = joins.clone();
    // The first join is refused as sts_unavailable; every later exchange hangs.
    let server = Loopback::start(move |mut conn, request| {
        let count = count.clone();
        async move {
            let head = String::from_utf8_lossy(&request).into_owned();
            let body = if head.starts_with("POST /v1/challenge ") {
                json!({"challenge": CHALLENGE, "expires_at": "2027-01-15T08:00:00Z"})
            } else if count.fetch_add(1, Ordering::SeqCst) == 0 {
                json!({"allowed": false, "token": "iam-token",
                       "error": {"kind": "sts_unavailable", "message": "STS could not be reached", "retryable": true}})
            } else {
                tokio::time::sleep(Duration::from_secs(120)).await;
                return None;
            };
            let status = if body["allowed"] == false { 503 } else { 200 };
            conn.write_all(&reply(status, "application/json", body.to_string().as_bytes())).await.ok()?;
            Some(conn)
        }
    })
    .await;
    let (out, took) = join(&format!("http://{}", server.addr()), "2", &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"sts_unavailable\""), "{stdout}");
    assert!(took < Duration::from_secs(3), "--deadline 2 took {took:?}");
    assert!(joins.load(Ordering::SeqCst) >= 2, "the refusal was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_text_cannot_forge_terminal_output() {
    fn answer(n: usize) -> (u16, serde_json::Value) {
        let hostile = "busy\r\niam-join: allowed as arn:aws:iam::111111111111:user/admin\u{1b}[1A\u{1b}[2K\u{7}";
        let retryable = n == 0;
        (
            if retryable { 503 } else { 403 },
            json!({"allowed": false, "token": "iam-token", "error": {"kind": hostile, "message": hostile, "retryable": retryable}}),
        )
    }
    let (svc, joins) = service(CHALLENGE, answer).await;
    let (out, _) = join(&format!("http://{}", svc.addr()), "10", &[]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(joins.load(Ordering::SeqCst), 2, "retried once, then refused");
    for (stream, text) in [("stderr", &out.stderr), ("stdout", &out.stdout)] {
        let text = String::from_utf8_lossy(text);
        assert!(!text.contains(['\u{1b}', '\u{7}', '\r']), "{stream} holds the service's control characters: {text:?}");
        assert!(!text.lines().any(|l| l.starts_with("iam-join: allowed")), "{stream} has a forged line: {text:?}");
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("attempt 1"), "the retry is still reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_that_cannot_be_a_header_exits_at_once() {
    let (svc, joins) = service("v1.k1.1800000300.AAAA\r\nX-Injected: 1", allowed).await;
    let (out, took) = join(&format!("http://{}", svc.addr()), "30", &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(took < Duration::from_secs(2), "retried a local failure for {took:?}");
    assert_eq!(joins.load(Ordering::SeqCst), 0, "nothing was submitted");
    assert!(stderr.contains("cannot be a header value") && !stderr.contains('\r'), "{stderr}");
    // Positive control: a good challenge from the same service joins.
    let (good, _) = service(CHALLENGE, allowed).await;
    let (out, _) = join(&format!("http://{}", good.addr()), "30", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 19: a server name that does not resolve is reported with its cause; when the resolver
/// says the name does not exist the run ends at once (exit 2), otherwise each retry says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_server_prints_the_cause() {
    let (out, took) = join("https://join.nonexistent.invalid", "5", &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("join.nonexistent.invalid"), "{stderr}");
    let said = stderr.contains("does not resolve (no such name)") || stderr.contains("(name resolution)");
    assert!(said, "the cause is printed: {stderr}");
    if stderr.contains("no such name") {
        assert!(took < Duration::from_secs(2), "a name that does not exist is not retried: {took:?}");
    }
}

/// Issue 23: a 429 from the rate limit is waited out for its `Retry-After`, not the 250 ms
/// backoff; then the join goes on (here, to a refusal that ends the run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_agent_waits_for_retry_after() {
    let times = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let seen = times.clone();
    let server = Loopback::start(move |mut conn, request| {
        let seen = seen.clone();
        async move {
            let head = String::from_utf8_lossy(&request).into_owned();
            let answer = if head.starts_with("POST /v1/challenge ") {
                let mut t = seen.lock().unwrap();
                t.push(Instant::now());
                if t.len() == 1 {
                    let body = json!({"allowed": false, "token": "", "error": {"kind": "rate_limited",
                        "message": "too many requests from this address", "retryable": true}, "identity": null});
                    reply_with(429, "application/json", &[("Retry-After", "2")], body.to_string().as_bytes())
                } else {
                    reply(
                        200,
                        "application/json",
                        json!({"challenge": CHALLENGE, "expires_at": "2027-01-15T08:00:00Z"}).to_string().as_bytes(),
                    )
                }
            } else {
                let body = json!({"allowed": false, "token": "iam-token",
                    "error": {"kind": "not_allowed", "message": "no", "retryable": false}, "identity": null});
                reply(403, "application/json", body.to_string().as_bytes())
            };
            conn.write_all(&answer).await.ok()?;
            Some(conn)
        }
    })
    .await;
    let (out, _) = join(&format!("http://{}", server.addr()), "20", &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"not_allowed\""), "the join went on after the wait: {stdout}");
    let t = times.lock().unwrap();
    assert_eq!(t.len(), 2, "one 429, then one challenge");
    let waited = t[1] - t[0];
    assert!(waited >= Duration::from_millis(1900), "retried after {waited:?}, not the Retry-After of 2 s");
}
