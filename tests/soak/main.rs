//! Fault soak: many verifications at 64 concurrent against a loopback STS that injects faults.
//!
//! A fault proxy sits in front of the SigV4-checking [`StsEmulator`]. It passes 90% of requests
//! through and answers the other 10% with a fault: a connection reset, silence past the timeout,
//! a 500, throttling, or STS's real answer dripping in (half in time, half too slow). The joins mix an
//! allowed principal, a principal the token does not allow, a wrong secret and a tampered
//! challenge, and a class whose requests the proxy always stalls, verified with a deadline shorter
//! than its attempts would take. The test checks that nothing panics, that nothing is allowed
//! that should not be, that every call returns within the verifier's deadline (and that the
//! deadline itself ends the stalled class), that every class gets its expected kind at least 90%
//! of the time, and that resident memory grows by at most 256 bytes per join after warm-up.
//!
//! Ignored by default. `.ci/run` runs a short form; the full run is
//! `cargo test --release --all-features --test soak -- --ignored --nocapture`
//! (`IAM_JOIN_SOAK_JOINS` sets the number of joins, 10,000 by default).
#![cfg(all(feature = "agent", feature = "emulator"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
use iam_join::emulator::{EmulatedPrincipal, StsEmulator};
use iam_join::{AwsTransport, EndpointOverride, ErrorKind, ReqwestTransport, TokenSet, Verifier};
use iam_join::{Challenge, Proof};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::loopback::Loopback;

#[path = "../common/loopback.rs"]
mod loopback;

const CONCURRENCY: usize = 64;
const FAULT_PERCENT: u64 = 10;
const TRANSPORT_TIMEOUT: Duration = Duration::from_millis(300);
const DEADLINE: Duration = Duration::from_secs(3);
/// Scheduling slack on a loaded 2-core machine: a call must return by DEADLINE + SLACK.
const SLACK: Duration = Duration::from_millis(750);

const ALLOWED_ARN: &str = "arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-0123456789abcdef0";
const STRANGER_ARN: &str = "arn:aws:iam::999999999999:user/stranger";

const TOKENS: &str = r#"
kind: token
version: v2
metadata:
  name: iam-token
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_account: "123456789012"
    aws_arn: "arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-*"
"#;

fn principals() -> Vec<EmulatedPrincipal> {
    vec![
        EmulatedPrincipal::new(
            "ASIASOAKALLOWED00001",
            "allowed-secret",
            Some("soak-session-token".to_owned()),
            ALLOWED_ARN,
            "AROASOAKROLE000000001:i-0123456789abcdef0",
        ),
        EmulatedPrincipal::new("AKIASOAKSTRANGER0001", "stranger-secret", None, STRANGER_ARN, "AIDASOAKSTRANGER"),
        EmulatedPrincipal::new("AKIASOAKTAMPERED0001", "tampered-secret", None, ALLOWED_ARN, "AIDASOAKTAMPERED"),
    ]
}

/// What a join is, and so what its outcome may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Join {
    /// The token allows it: allowed, or `sts_unavailable` when faults outlast the retries.
    Allowed,
    /// Not in the token: `not_allowed` or `sts_unavailable`, never allowed.
    Stranger,
    /// Signed with the wrong secret: `signature_rejected` or `sts_unavailable`, never allowed.
    WrongSecret,
    /// Challenge swapped: `challenge_mismatch`, refused locally, never sent.
    Tampered,
    /// Signed with a key the proxy always stalls, verified with a deadline shorter than the
    /// attempts and backoffs would take: the verifier's own deadline must end it.
    Stalled,
}

fn join_kind(i: usize) -> Join {
    match i % 40 {
        0..=26 => Join::Allowed,
        27..=32 => Join::Stranger,
        33..=36 => Join::WrongSecret,
        37..=38 => Join::Tampered,
        _ => Join::Stalled,
    }
}

/// The access key of the stalled class: the proxy never answers its requests.
const STALLED_KEY: &str = "AKIASOAKSTALLED00001";
/// The deadline of the stalled class's verifier. The first attempt times out at 300 ms and the
/// backoff is 100 to 200 ms, so a second attempt always starts (by 500 ms) and would time out at
/// 700 to 800 ms: the deadline, not a transport timeout, ends these joins.
const SHORT_DEADLINE: Duration = Duration::from_millis(650);
/// Growth of resident memory per join after warm-up, at most: a leak of a few hundred bytes per
/// join shows over thousands of joins.
const MAX_RSS_GROWTH_PER_JOIN_BYTES: u64 = 256;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Reset,
    Silence,
    Status500,
    Throttling,
    DripInTime,
    DripTooSlow,
}

const THROTTLING: &str = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>soak</RequestId></ErrorResponse>";
const INTERNAL: &str = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Receiver</Type><Code>InternalFailure</Code><Message>oops</Message></Error><RequestId>soak</RequestId></ErrorResponse>";

struct Proxy {
    server: Loopback,
    faults: Arc<Mutex<BTreeMap<Fault, usize>>>,
    passed: Arc<AtomicUsize>,
    /// Requests that carried the tampered principal's key: must stay 0.
    tampered_seen: Arc<AtomicUsize>,
}

/// The fault proxy on the shared loopback server: forwards each request to the emulator, or
/// injects one of the faults instead.
async fn fault_proxy(upstream: SocketAddr) -> Proxy {
    let faults = Arc::new(Mutex::new(BTreeMap::new()));
    let passed = Arc::new(AtomicUsize::new(0));
    let tampered_seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let (f, p, t) = (faults.clone(), passed.clone(), tampered_seen.clone());
    let server = Loopback::start(move |mut client, req| {
        let (faults, passed, tampered, counter) = (f.clone(), p.clone(), t.clone(), counter.clone());
        async move {
            if req.windows(20).any(|w| w == b"AKIASOAKTAMPERED0001") {
                tampered.fetch_add(1, Ordering::SeqCst);
            }
            if req.windows(20).any(|w| w == STALLED_KEY.as_bytes()) {
                // Hold the connection without answering, past the short deadline and the
                // transport timeout (short, so that sleeping tasks do not pile up in the figures).
                tokio::time::sleep(Duration::from_secs(2)).await;
                return None;
            }
            let roll = splitmix(counter.fetch_add(1, Ordering::SeqCst)) % 100;
            let fault = match roll {
                r if r >= FAULT_PERCENT => None,
                0..=1 => Some(Fault::Reset),
                2..=3 => Some(Fault::Silence),
                4..=5 => Some(Fault::Status500),
                6..=7 => Some(Fault::Throttling),
                8 => Some(Fault::DripInTime),
                _ => Some(Fault::DripTooSlow),
            };
            let forward = |req: Vec<u8>| async move {
                let mut up = TcpStream::connect(upstream).await.ok()?;
                let _ = up.set_nodelay(true);
                up.write_all(&req).await.ok()?;
                loopback::read_message(&mut up).await
            };
            let Some(fault) = fault else {
                passed.fetch_add(1, Ordering::SeqCst);
                let resp = forward(req).await?;
                client.write_all(&resp).await.ok()?;
                return Some(client);
            };
            *faults.lock().unwrap().entry(fault).or_insert(0) += 1;
            match fault {
                Fault::Reset => {
                    let _ = client.set_zero_linger();
                    None
                }
                Fault::Silence => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    None
                }
                Fault::Status500 => {
                    client.write_all(&loopback::reply(500, "text/xml", INTERNAL.as_bytes())).await.ok()?;
                    Some(client)
                }
                Fault::Throttling => {
                    client.write_all(&loopback::reply(400, "text/xml", THROTTLING.as_bytes())).await.ok()?;
                    Some(client)
                }
                Fault::DripInTime | Fault::DripTooSlow => {
                    // STS's real answer, a few bytes at a time: in time (allowed if the identity
                    // is), or too slow for the transport's timeout.
                    let whole = forward(req).await?;
                    let pause = if fault == Fault::DripInTime { 2 } else { 50 };
                    for piece in whole.chunks(64) {
                        client.write_all(piece).await.ok()?;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    Some(client)
                }
            }
        }
    })
    .await;
    Proxy { server, faults, passed, tampered_seen }
}

/// Resident and peak resident memory of this process, in KiB (Linux `/proc/self/status`).
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<(Join, String), usize>,
    wrong: Vec<String>,
    latencies_us: Vec<u64>,
    max_elapsed: Duration,
}

async fn soak(joins: usize) {
    let emulator = StsEmulator::start(principals()).await.unwrap();
    let proxy = fault_proxy(emulator.addr()).await;
    let transport = ReqwestTransport::builder()
        .endpoint_override(EndpointOverride::Url(format!("http://{}/", proxy.server.addr())))
        .connect_timeout(TRANSPORT_TIMEOUT)
        .timeout(TRANSPORT_TIMEOUT)
        .build()
        .unwrap();
    // Two verifiers sharing one transport (and its pool): the stalled class's has a short deadline.
    let transport: Arc<dyn AwsTransport> = Arc::new(transport);
    let build = |deadline| {
        Arc::new(
            Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap())
                .shared_transport(Arc::clone(&transport))
                .deadline(deadline)
                .build(),
        )
    };
    let (verifier, short) = (build(DEADLINE), build(SHORT_DEADLINE));
    let allowed = Credentials::new("ASIASOAKALLOWED00001", "allowed-secret", Some("soak-session-token".into()));
    let stranger = Credentials::new("AKIASOAKSTRANGER0001", "stranger-secret", None);
    let wrong = Credentials::new("ASIASOAKALLOWED00001", "not-the-secret", Some("soak-session-token".into()));
    let tampered = Credentials::new("AKIASOAKTAMPERED0001", "tampered-secret", None);
    let stalled = Credentials::new(STALLED_KEY, "stalled-secret", None);
    let creds = Arc::new([allowed, stranger, wrong, tampered, stalled]);

    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let checkpoints = Arc::new(Mutex::new(Vec::<(usize, u64)>::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (verifier, short, creds, next, tally, checkpoints) =
            (verifier.clone(), short.clone(), creds.clone(), next.clone(), tally.clone(), checkpoints.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= joins {
                    break;
                }
                if i % (joins / 10).max(1) == 0 {
                    checkpoints.lock().unwrap().push((i, memory_kib().0));
                }
                let kind = join_kind(i);
                let challenge = iam_join::challenge::generate().unwrap();
                let c = &creds[kind as usize];
                let raw =
                    sign_join_request(c, &JoinRequest::new(&challenge).region("us-west-2"), SystemTime::now()).unwrap();
                let expected =
                    if kind == Join::Tampered { iam_join::challenge::generate().unwrap() } else { challenge };
                let t = Instant::now();
                let v = if kind == Join::Stalled { &short } else { &verifier };
                let result =
                    v.verify("iam-token", Challenge::Plain(&expected), Proof::Forwarded(&raw), SystemTime::now()).await;
                let elapsed = t.elapsed();
                let outcome = match &result {
                    Ok(_) => "allowed".to_owned(),
                    Err(e) => e.kind().as_str().to_owned(),
                };
                let fine = match (kind, &result) {
                    (Join::Allowed, Ok(v)) => v.identity().arn().as_str() == ALLOWED_ARN,
                    (Join::Allowed, Err(e)) => e.kind() == ErrorKind::StsUnavailable,
                    (Join::Stranger, Err(e)) => matches!(e.kind(), ErrorKind::NotAllowed | ErrorKind::StsUnavailable),
                    (Join::WrongSecret, Err(e)) => {
                        matches!(e.kind(), ErrorKind::SignatureRejected | ErrorKind::StsUnavailable)
                    }
                    (Join::Tampered, Err(e)) => e.kind() == ErrorKind::ChallengeMismatch,
                    (Join::Stalled, Err(e)) => {
                        e.kind() == ErrorKind::StsUnavailable
                            && e.detail().contains(&format!("did not answer within {} ms", SHORT_DEADLINE.as_millis()))
                            && elapsed >= SHORT_DEADLINE
                            && elapsed <= SHORT_DEADLINE + SLACK
                    }
                    (_, Ok(_)) => false,
                };
                let mut t = tally.lock().unwrap();
                if !fine {
                    t.wrong.push(format!("join {i} ({kind:?}): {outcome} {result:?}"));
                }
                if elapsed > DEADLINE + SLACK {
                    t.wrong.push(format!("join {i} ({kind:?}) took {elapsed:?}"));
                }
                t.max_elapsed = t.max_elapsed.max(elapsed);
                t.latencies_us.push(elapsed.as_micros() as u64);
                *t.outcomes.entry((kind, outcome)).or_insert(0) += 1;
            }
        }));
    }
    for w in workers {
        w.await.expect("a worker panicked");
    }
    let wall = started.elapsed();
    let (rss_end, peak) = memory_kib();

    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    t.latencies_us.sort_unstable();
    let pct = |p: f64| t.latencies_us[((t.latencies_us.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    let mut cps = checkpoints.lock().unwrap().clone();
    cps.sort_unstable();
    println!(
        "soak: {joins} joins at {CONCURRENCY} concurrent in {:.1} s ({:.0}/s); latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        wall.as_secs_f64(),
        joins as f64 / wall.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        t.max_elapsed.as_secs_f64() * 1000.0
    );
    println!(
        "soak: requests passed through untouched {}, faults injected {:?}",
        proxy.passed.load(Ordering::SeqCst),
        proxy.faults.lock().unwrap()
    );
    for ((kind, outcome), n) in &t.outcomes {
        println!("soak: {kind:?} -> {outcome}: {n}");
    }
    println!(
        "soak: RSS at each tenth {:?} KiB; at the end {rss_end} KiB; peak (VmHWM) {peak} KiB",
        cps.iter().map(|c| c.1).collect::<Vec<_>>()
    );

    assert!(t.wrong.is_empty(), "{} wrong outcome(s):\n{}", t.wrong.len(), t.wrong.join("\n"));
    assert_eq!(t.latencies_us.len(), joins, "every join returned");
    assert_eq!(proxy.tampered_seen.load(Ordering::SeqCst), 0, "a locally refused join reached STS");
    let faults: usize = proxy.faults.lock().unwrap().values().sum();
    let sent = faults + proxy.passed.load(Ordering::SeqCst);
    assert!(faults * 100 >= sent * 5, "faults were injected: {faults} of {sent}");
    // Each class gets its own kind at least 90% of the time: faults end a join as sts_unavailable
    // only when they outlast all three attempts.
    let count = |kind: Join| t.outcomes.iter().filter(|((k, _), _)| *k == kind).map(|(_, n)| n).sum::<usize>();
    for (kind, want) in [
        (Join::Allowed, "allowed"),
        (Join::Stranger, "not_allowed"),
        (Join::WrongSecret, "signature_rejected"),
        (Join::Tampered, "challenge_mismatch"),
        (Join::Stalled, "sts_unavailable"),
    ] {
        let (got, all) = (t.outcomes.get(&(kind, want.to_owned())).copied().unwrap_or(0), count(kind));
        assert!(all > 0 && got * 100 >= all * 90, "{kind:?}: {got} of {all} got {want}");
    }
    // Flat memory: after warm-up (the second tenth), resident memory grows by at most
    // MAX_RSS_GROWTH_PER_JOIN_BYTES per join. On Linux the figure must be readable.
    if cfg!(target_os = "linux") {
        assert!(rss_end > 0, "resident memory could not be read from /proc/self/status");
        let (at, warm) = cps.get(1).copied().expect("a checkpoint after warm-up");
        let grown = rss_end.saturating_sub(warm) * 1024;
        let per_join = grown / (joins - at).max(1) as u64;
        println!("soak: RSS grew {grown} bytes over {} joins after warm-up: {per_join} bytes per join", joins - at);
        assert!(
            per_join <= MAX_RSS_GROWTH_PER_JOIN_BYTES,
            "RSS grew {per_join} bytes per join (limit {MAX_RSS_GROWTH_PER_JOIN_BYTES})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run by .ci/run in a short form, or by hand (see the module docs)"]
async fn soak_under_faults() {
    let joins = std::env::var("IAM_JOIN_SOAK_JOINS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    soak(joins).await;
}
