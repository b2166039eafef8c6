//! The verification pipeline: STS response parsing (XML and JSON), the library's own CPU per join
//! (everything except waiting for STS: `prepare` + `conclude`), and whole `verify` calls at 64
//! concurrent joins against the loopback STS emulator, reported as verifications per second and
//! p99 latency; and the same through a `LimitedTransport` (STS slots and the throttling
//! backoff), side by side, for what the limits cost.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
use iam_join::emulator::{EmulatedPrincipal, StsEmulator};
use iam_join::{Challenge, HttpAnswer, Proof};
use iam_join::{
    EndpointOverride, LimitedTransport, RequestPolicy, ReqwestTransport, StsLimits, TokenSet, Verifier,
    parse_sts_response,
};

const TOKENS: &str = "kind: token\nversion: v2\nmetadata:\n  name: iam-token\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_account: \"111111111111\"\n  - aws_arn: \"arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-*\"\n";

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/vectors/sts/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn response_parse(c: &mut Criterion) {
    let xml = vector("ok_assumed_role.xml");
    let json = vector("ok_assumed_role.json");
    let mut g = c.benchmark_group("response");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.bench_function("parse_xml", |b| b.iter(|| parse_sts_response(200, Some("text/xml"), black_box(&xml)).unwrap()));
    g.bench_function("parse_json", |b| {
        b.iter(|| parse_sts_response(200, Some("application/json"), black_box(&json)).unwrap())
    });
    g.finish();
}

fn principal() -> EmulatedPrincipal {
    EmulatedPrincipal::new(
        "ASIAIOSFODNN7EXAMPLE",
        "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
        Some("IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN".repeat(20)),
        "arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-0123456789abcdef0",
        "AROAEXAMPLEROLEID0001:i-0123456789abcdef0",
    )
}

fn signed(challenge: &str) -> Vec<u8> {
    let p = principal();
    let creds = Credentials::new(p.access_key_id, p.secret_access_key, p.session_token);
    sign_join_request(&creds, &JoinRequest::new(challenge).region("us-east-1").accept_json(true), SystemTime::now())
        .unwrap()
}

fn cpu_per_join(c: &mut Criterion) {
    let tokens = TokenSet::from_yaml(TOKENS).unwrap();
    let v = Verifier::builder(tokens).policy(RequestPolicy::new()).transport(ReqwestTransport::new().unwrap()).build();
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = signed(&challenge);
    let answer = br#"{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"333333333333","Arn":"arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-0123456789abcdef0","UserId":"AROAEXAMPLEROLEID0001:i-0123456789abcdef0"},"ResponseMetadata":{"RequestId":"4c0ac7f4-2a9f-4f8a-9c5f-5d3b2a1f0e9d"}}}"#;
    let answer = HttpAnswer::new(200, Some("application/json"), answer.to_vec());
    let now = SystemTime::now();
    let mut g = c.benchmark_group("join");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    // Every local check, then STS's answer read and matched: the library's CPU per join.
    g.bench_function("cpu_prepare_conclude", |b| {
        b.iter(|| {
            let pending =
                v.start("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(black_box(&raw)), now).unwrap();
            pending.single_use_by_caller().conclude(black_box(&answer)).unwrap()
        })
    });
    g.finish();
}

const CONCURRENCY: usize = 64;

fn verify_concurrent(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (sts, v, limited, challenge, raw) = rt.block_on(async {
        let sts = StsEmulator::start(vec![principal()]).await.unwrap();
        let transport =
            ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap();
        let verifier = |t: Arc<dyn iam_join::AwsTransport>| {
            Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap())
                .policy(RequestPolicy::new())
                .shared_transport(t)
                .build()
        };
        let v = verifier(Arc::new(transport.clone()));
        // The service's limits: 64 slots (as many as joins in flight here), the backoff idle.
        let limited = verifier(Arc::new(LimitedTransport::new(transport, StsLimits::default())));
        let challenge = iam_join::challenge::generate().unwrap();
        let raw = Arc::new(signed(&challenge));
        (sts, v, limited, Arc::new(challenge), raw)
    });

    // Throughput and p99 over a fixed run, printed for the README.
    let latencies = rt.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..CONCURRENCY {
            let (v, challenge, raw) = (v.clone(), challenge.clone(), raw.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while start.elapsed() < Duration::from_secs(3) {
                    let t = Instant::now();
                    v.verify("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now()).await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        all.sort();
        println!(
            "verify/concurrent_{CONCURRENCY}: {} verifications in {secs:.2}s = {:.0}/s, p50 {:?}, p99 {:?} (loopback emulator, 2 worker threads)",
            all.len(),
            all.len() as f64 / secs,
            all[all.len() / 2],
            all[all.len() * 99 / 100]
        );
        all
    });
    assert!(!latencies.is_empty());

    let mut g = c.benchmark_group("verify");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4)).sample_size(20);
    g.throughput(Throughput::Elements(CONCURRENCY as u64));
    for (name, v) in
        [(format!("concurrent_{CONCURRENCY}"), &v), (format!("concurrent_{CONCURRENCY}_limited"), &limited)]
    {
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut tasks = Vec::with_capacity(CONCURRENCY);
                    for _ in 0..CONCURRENCY {
                        let (v, challenge, raw) = (v.clone(), challenge.clone(), raw.clone());
                        tasks.push(tokio::spawn(async move {
                            v.verify(
                                "iam-token",
                                Challenge::Plain(&challenge),
                                Proof::Forwarded(&raw),
                                SystemTime::now(),
                            )
                            .await
                            .unwrap()
                        }));
                    }
                    for t in tasks {
                        black_box(t.await.unwrap());
                    }
                })
            })
        });
    }
    g.finish();
    drop(sts);
}

criterion_group!(benches, response_parse, cpu_per_join, verify_concurrent);
criterion_main!(benches);
