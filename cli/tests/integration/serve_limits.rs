//! Issue 23: `iam-join serve` under floods, as a process. The rate limit per client (429 with
//! `Retry-After`, nothing sent to STS, another address unaffected, `X-Forwarded-For` believed
//! only from a trusted proxy), the cap on STS exchanges in flight, and the backoff while STS
//! throttles.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use iam_join::emulator::StsEmulator;
use serde_json::{Value, json};

use crate::common::fixtures::{principals, user};
use crate::common::loopback::{Loopback, read_message, reply};
use crate::service::*;

/// A test client whose connections come from `ip` (any 127.0.0.0/8 address is this host).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    client().local_address(IpAddr::V4(Ipv4Addr::from(ip))).build().unwrap()
}

fn assert_rate_limited(case: &str, (status, retry_after, body): &(u16, Option<String>, Value)) {
    assert_eq!(*status, 429, "{case}: {body}");
    let secs: u64 = retry_after.as_deref().unwrap_or_else(|| panic!("{case}: no Retry-After")).parse().unwrap();
    assert!((1..=60).contains(&secs), "{case}: Retry-After {secs}");
    assert_eq!(body["allowed"], false, "{case}: {body}");
    assert_eq!(body["error"]["kind"], "rate_limited", "{case}: {body}");
    assert_eq!(body["error"]["retryable"], true, "{case}: {body}");
}

/// Forwards each request to `upstream` and its answer back.
async fn forward(
    mut conn: tokio::net::TcpStream,
    request: Vec<u8>,
    upstream: SocketAddr,
) -> Option<tokio::net::TcpStream> {
    let mut up = tokio::net::TcpStream::connect(upstream).await.ok()?;
    tokio::io::AsyncWriteExt::write_all(&mut up, &request).await.ok()?;
    let answer = read_message(&mut up).await?;
    tokio::io::AsyncWriteExt::write_all(&mut conn, &answer).await.ok()?;
    Some(conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_address_gets_429s_with_nothing_sent_to_sts_while_another_joins() {
    let dir = scratch("flood");
    let tokens = tokens_file(&dir).display().to_string();
    let sts = StsEmulator::start(principals()).await.unwrap();
    let (flooder, other) = (client_from([127, 0, 0, 1]), client_from([127, 0, 0, 2]));
    let base = flags(&[("--tokens", &tokens), ("--sts-endpoint", &sts.url()), ("--rate-limit", "2:6")]);
    let s = Replica::start(&flooder, "s", &dir, &base).await;
    let user = user();

    // 127.0.0.1 takes its burst of 6 (3 challenges, 3 joins), then is refused on both endpoints.
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let (status, _, c) = post_with(&flooder, &s.url("/v1/challenge"), &json!({"token": "iam-token"}), &[]).await;
        assert_eq!(status, 200, "{c}");
        let c = c["challenge"].as_str().unwrap().to_owned();
        bodies.push(join_body("iam-token", &c, &signed(&user, &c, SystemTime::now())));
    }
    for body in &bodies[..2] {
        let (status, _, answer) = post_with(&flooder, &s.url("/v1/join"), body, &[]).await;
        assert_eq!(status, 200, "within the burst: {answer}");
    }
    let before = sts.requests();
    assert_eq!(before, 2);
    // The flood: joins with garbage signatures, each for its own valid challenge (fetched from
    // other addresses, as challenges are not bound to one), so each one let through would cost
    // an STS round trip; and challenge requests between them.
    let mut garbage = Vec::new();
    for i in 0..20 {
        let fetcher = client_from([127, 0, 1, i + 1]);
        let (_, _, c) = post_with(&fetcher, &s.url("/v1/challenge"), &json!({"token": "iam-token"}), &[]).await;
        let c = c["challenge"].as_str().unwrap_or_else(|| panic!("{c}")).to_owned();
        let forged = iam_join::agent::Credentials::new(crate::common::fixtures::USER_KEY, "not-the-secret", None);
        garbage.push(join_body("iam-token", &c, &signed(&forged, &c, SystemTime::now())));
    }
    let (mut limited, mut joins_through) = (0, 0);
    for i in 0..40 {
        let answer = if i % 2 == 0 {
            post_with(&flooder, &s.url("/v1/join"), &garbage[i as usize / 2], &[]).await
        } else {
            post_with(&flooder, &s.url("/v1/challenge"), &json!({"token": "iam-token"}), &[]).await
        };
        if answer.0 == 429 {
            assert_rate_limited(&format!("flood request {i}"), &answer);
            limited += 1;
        } else if i % 2 == 0 {
            assert_eq!(answer.2["error"]["kind"], "signature_rejected", "{}", answer.2);
            joins_through += 1;
        }
    }
    // 40 requests in well under a second at 2/s after the burst: a few more get through.
    assert!(limited >= 34, "{limited} of 40 limited");
    // Exactly the joins the limit let through reached STS; the 429s sent nothing.
    assert_eq!(sts.requests() - before, joins_through, "STS requests during the flood");
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    for spoof in ["198.51.100.7", "127.0.0.2", "10.0.0.1, 198.51.100.8"] {
        let answer = post_with(&flooder, &s.url("/v1/join"), &bodies[2], &[("x-forwarded-for", spoof)]).await;
        assert_rate_limited(&format!("spoofed {spoof}"), &answer);
    }
    // 127.0.0.2, its own address, joins unhindered, while 127.0.0.1 is still limited.
    for _ in 0..3 {
        let (status, _, c) = post_with(&other, &s.url("/v1/challenge"), &json!({"token": "iam-token"}), &[]).await;
        assert_eq!(status, 200, "{c}");
        let c = c["challenge"].as_str().unwrap().to_owned();
        let body = join_body("iam-token", &c, &signed(&user, &c, SystemTime::now()));
        let (status, _, answer) = post_with(&other, &s.url("/v1/join"), &body, &[]).await;
        assert_eq!((status, &answer["identity"]["arn"]), (200, &json!(USER_ARN)), "{answer}");
    }
    assert_eq!(sts.requests() - before, joins_through + 3, "the other address's joins reached STS");
    let metrics = s.metrics(&other).await;
    let limited_total = metric(&metrics, "iam_join_rate_limited_total{endpoint=\"join\"}")
        + metric(&metrics, "iam_join_rate_limited_total{endpoint=\"challenge\"}");
    assert_eq!(limited_total as usize, limited + 3, "{metrics}");
    assert!(metric(&metrics, "iam_join_rate_limit_clients") >= 2.0);
    // The flooder's limit refills: after Retry-After it may join again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, c) = post_with(&flooder, &s.url("/v1/challenge"), &json!({"token": "iam-token"}), &[]).await;
    assert_eq!(status, 200, "the limit refilled: {c}");
    drop(s);

    // Behind a trusted proxy (127.0.0.1/32), the forwarded address is the client.
    let mut trusted = base.clone();
    trusted.extend(flags(&[("--trusted-proxy", "127.0.0.1/32")]));
    let p = Replica::start(&flooder, "p", &dir, &trusted).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let challenge_from = |ip: &'static str| {
        let (http, url) = (flooder.clone(), p.url("/v1/challenge"));
        async move { post_with(&http, &url, &json!({"token": "iam-token"}), &from(ip)).await }
    };
    for _ in 0..6 {
        assert_eq!(challenge_from("198.51.100.7").await.0, 200);
    }
    assert_rate_limited("the forwarded client over its limit", &challenge_from("198.51.100.7").await);
    // Another forwarded client, and the proxy itself, each have their own limit.
    assert_eq!(challenge_from("198.51.100.8").await.0, 200, "another forwarded client");
    assert_eq!(challenge_from("6.6.6.6, 198.51.100.9").await.0, 200, "the right-most untrusted entry counts");
    let (status, _, _) = post_with(&flooder, &p.url("/v1/challenge"), &json!({"token": "iam-token"}), &[]).await;
    assert_eq!(status, 200, "the proxy's own requests");
    // 127.0.0.2 is not a trusted proxy: its X-Forwarded-For is ignored.
    for _ in 0..6 {
        let _ = post_with(
            &other,
            &p.url("/v1/challenge"),
            &json!({"token": "iam-token"}),
            &[("x-forwarded-for", "198.51.100.20")],
        )
        .await;
    }
    let answer = post_with(
        &other,
        &p.url("/v1/challenge"),
        &json!({"token": "iam-token"}),
        &[("x-forwarded-for", "198.51.100.21")],
    )
    .await;
    assert_rate_limited("an untrusted peer with a fresh forwarded address", &answer);

    // Positive control: with --rate-limit 0 the same flood is never refused.
    let off = flags(&[("--tokens", &tokens), ("--sts-endpoint", &sts.url()), ("--rate-limit", "0")]);
    let o = Replica::start(&flooder, "o", &dir, &off).await;
    for _ in 0..40 {
        let (status, _, _) = post_with(&flooder, &o.url("/v1/challenge"), &json!({"token": "iam-token"}), &[]).await;
        assert_eq!(status, 200);
    }
    assert!(o.logs().contains("--rate-limit 0"), "turning it off is said: {}", o.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_sts_inflight_exchanges_and_the_rest_are_refused_busy_within_the_wait() {
    let dir = scratch("fanout");
    let tokens = tokens_file(&dir).display().to_string();
    let sts = StsEmulator::start(principals()).await.unwrap();
    // A slow STS: 1.5 s per answer, counting the exchanges open at once.
    let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let upstream = sts.addr();
    let slow = {
        let (open, most) = (open.clone(), most.clone());
        Loopback::start(move |conn, request| {
            let (open, most) = (open.clone(), most.clone());
            async move {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                open.fetch_sub(1, Ordering::SeqCst);
                forward(conn, request, upstream).await
            }
        })
        .await
    };
    let http = client().build().unwrap();
    let args = flags(&[
        ("--tokens", &tokens),
        ("--sts-endpoint", &slow.url()),
        ("--max-sts-inflight", "4"),
        ("--rate-limit", "0"),
        ("--timeout", "5"),
    ]);
    let s = Replica::start(&http, "s", &dir, &args).await;
    let mut bodies = Vec::new();
    for _ in 0..12 {
        let c = challenge(&http, &s, "iam-token").await;
        bodies.push(join_body("iam-token", &c, &signed(&user(), &c, SystemTime::now())));
    }
    let joins: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (http, url) = (http.clone(), s.url("/v1/join"));
            tokio::spawn(async move {
                let t = Instant::now();
                let answer = post_with(&http, &url, &body, &[]).await;
                (answer, t.elapsed())
            })
        })
        .collect();
    let (mut allowed, mut busy) = (0, 0);
    for j in joins {
        let ((status, retry_after, body), took) = j.await.unwrap();
        match status {
            200 => {
                assert_eq!(body["identity"]["arn"], USER_ARN);
                allowed += 1;
            }
            503 => {
                assert_eq!(body["error"]["kind"], "sts_unavailable", "{body}");
                assert_eq!(body["error"]["retryable"], true, "{body}");
                assert!(body["error"]["message"].as_str().unwrap().contains("busy"), "{body}");
                assert_eq!(retry_after.as_deref(), Some("1"));
                // The wait is 250 ms; the slow STS answers after 1.5 s.
                assert!(took < Duration::from_millis(1200), "a refused join took {took:?}");
                busy += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(most.load(Ordering::SeqCst), 4, "exchanges open at once at STS");
    assert_eq!((allowed, busy), (4, 8));
    assert_eq!(slow.requests(), 4, "a refused join sends nothing");
    let metrics = s.metrics(&http).await;
    assert_eq!(metric(&metrics, "iam_join_joins_refused_busy_total"), 8.0, "{metrics}");
    assert_eq!(metric(&metrics, "iam_join_sts_slots"), 4.0);
    assert_eq!(metric(&metrics, "iam_join_sts_slots_in_use"), 0.0);
    // Positive control: with the slots free again, a join goes through.
    assert_allowed("after the burst", &fresh_join(&http, &s, &s, &user()).await, USER_ARN);
}

const THROTTLING: &str = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>t</RequestId></ErrorResponse>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_sts_sees_the_service_back_off_and_joins_resume_after_it_recovers() {
    let dir = scratch("throttling");
    let tokens = tokens_file(&dir).display().to_string();
    let sts = StsEmulator::start(principals()).await.unwrap();
    // STS throttles while `throttling` is set; each request's arrival time is kept.
    let throttling = Arc::new(AtomicBool::new(true));
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let upstream = sts.addr();
    let fake = {
        let (throttling, arrivals) = (throttling.clone(), arrivals.clone());
        Loopback::start(move |mut conn, request| {
            let (throttling, arrivals) = (throttling.clone(), arrivals.clone());
            async move {
                arrivals.lock().unwrap().push(Instant::now());
                if throttling.load(Ordering::SeqCst) {
                    let answer = reply(400, "text/xml", THROTTLING.as_bytes());
                    tokio::io::AsyncWriteExt::write_all(&mut conn, &answer).await.ok()?;
                    return Some(conn);
                }
                forward(conn, request, upstream).await
            }
        })
        .await
    };
    let http = client().build().unwrap();
    let args = flags(&[("--tokens", &tokens), ("--sts-endpoint", &fake.url()), ("--rate-limit", "0")]);
    let s = Replica::start(&http, "s", &dir, &args).await;

    // 8 agents join in a loop for 3 s while STS throttles.
    let start = Instant::now();
    let attempts = Arc::new(AtomicUsize::new(0));
    let agents: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, attempts) = (http.clone(), s.url(""), attempts.clone());
            tokio::spawn(async move {
                let mut refused_kinds = Vec::new();
                while start.elapsed() < Duration::from_secs(3) {
                    let (_, c) = post(&http, &format!("{url}/v1/challenge"), &json!({"token": "iam-token"})).await;
                    let c = c["challenge"].as_str().unwrap().to_owned();
                    let body = join_body("iam-token", &c, &signed(&user(), &c, SystemTime::now()));
                    let (status, answer) = post(&http, &format!("{url}/v1/join"), &body).await;
                    attempts.fetch_add(1, Ordering::SeqCst);
                    refused_kinds.push((status, answer["error"]["kind"].clone(), answer["error"]["retryable"].clone()));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                refused_kinds
            })
        })
        .collect();
    for a in agents {
        for (status, kind, retryable) in a.await.unwrap() {
            assert_eq!((status, kind, retryable), (503, json!("sts_unavailable"), json!(true)));
        }
    }
    let attempts = attempts.load(Ordering::SeqCst);
    let seen: Vec<Duration> = arrivals.lock().unwrap().iter().map(|t| t.duration_since(start)).collect();
    let in_window = |from: u64, to: u64| {
        seen.iter().filter(|d| **d >= Duration::from_millis(from) && **d < Duration::from_millis(to)).count()
    };
    let (first, last) = (in_window(0, 1000), in_window(1500, 3000));
    println!(
        "throttling: {attempts} joins in 3 s; STS saw {} requests: {first} in the first second, {last} in the last 1.5 s",
        seen.len()
    );
    // Without the backoff each join would reach STS up to 3 times (2 retries): hundreds.
    assert!(attempts >= 100, "{attempts} joins attempted");
    assert!(seen.len() <= 30, "STS saw {} requests for {attempts} joins", seen.len());
    assert!(last <= 3, "in the last 1.5 s STS saw {last} requests (backoff of up to 4 s, one probe each)");
    let metrics = s.metrics(&http).await;
    assert!(metric(&metrics, "iam_join_sts_throttling_answers_total") >= 1.0, "{metrics}");
    let refused = metric(&metrics, "iam_join_joins_refused_backoff_total");
    assert!(refused as usize >= attempts - seen.len(), "{refused} refused during the backoff of {attempts}");

    // STS recovers: within the longest backoff (4 s, +20%), joins are allowed again.
    throttling.store(false, Ordering::SeqCst);
    let recovered = Instant::now();
    loop {
        let answer = fresh_join(&http, &s, &s, &user()).await;
        if answer.0 == 200 {
            assert_allowed("after STS recovered", &answer, USER_ARN);
            break;
        }
        assert_refused("while backing off", &answer, 503, "sts_unavailable");
        assert!(recovered.elapsed() < Duration::from_secs(8), "joins did not resume: {}", answer.1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        assert_allowed("and stay allowed", &fresh_join(&http, &s, &s, &user()).await, USER_ARN);
    }
}
