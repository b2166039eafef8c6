//! The extra CPU per allowed join for issuing credentials, side by side with the join's own
//! verification CPU in the same run: a forwarded join's local checks and STS answer, then a
//! certificate (the agent's P-256 key, signed by a P-256 CA), a JWT (ES256), and both.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
use iam_join::issue::{AgentKey, CertificateAuthority, CredentialIssuer, JwtKey, generate_agent_key};
use iam_join::{Challenge, HttpAnswer, Proof, TokenSet, Verifier};

const TOKENS: &str = "kind: token\nversion: v2\nmetadata:\n  name: iam-token\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_arn: \"arn:aws:sts::333333333333:assumed-role/teleport-node-role/*\"\n";

fn issuing(c: &mut Criterion) {
    let now = SystemTime::now();
    let challenge = iam_join::challenge::generate().unwrap();
    let creds = Credentials::new(
        "ASIAIOSFODNN7EXAMPLE",
        "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY",
        Some("IQoJb3JpZ2luX2VjEXAMPLE".repeat(20)),
    );
    let raw =
        sign_join_request(&creds, &JoinRequest::new(&challenge).region("us-east-1").accept_json(true), now).unwrap();
    let answer = br#"{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"333333333333","Arn":"arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-0123456789abcdef0","UserId":"AROAEXAMPLEROLEID0001:i-0123456789abcdef0"},"ResponseMetadata":{"RequestId":"4c0ac7f4-2a9f-4f8a-9c5f-5d3b2a1f0e9d"}}}"#;
    let answer = HttpAnswer::new(200, Some("application/json"), answer.to_vec());
    let v = Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap()).build();
    let verdict = v
        .start("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), now)
        .unwrap()
        .single_use_by_caller()
        .conclude(&answer)
        .unwrap()
        .into_verdict()
        .unwrap();
    let (cert, key) = CertificateAuthority::generate("bench CA").unwrap();
    let ca = || CertificateAuthority::from_pem(&cert, &key).unwrap();
    let jwt = || JwtKey::generate().unwrap().0;
    let certs = CredentialIssuer::builder("example.org").ca(ca()).build().unwrap();
    let jwts = CredentialIssuer::builder("example.org")
        .jwt_keys(vec![jwt()])
        .issuer_url("https://join.example.com")
        .audience("aud")
        .build()
        .unwrap();
    let both = CredentialIssuer::builder("example.org")
        .ca(ca())
        .jwt_keys(vec![jwt()])
        .issuer_url("https://join.example.com")
        .audience("aud")
        .build()
        .unwrap();
    let (_, public) = generate_agent_key().unwrap();

    let mut g = c.benchmark_group("issue");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    g.bench_function("verify_forwarded_cpu", |b| {
        b.iter(|| {
            let p = v.start("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(black_box(&raw)), now).unwrap();
            p.single_use_by_caller().conclude(black_box(&answer)).unwrap()
        })
    });
    g.bench_function("parse_agent_key", |b| b.iter(|| AgentKey::from_pem(black_box(&public)).unwrap()));
    let key = AgentKey::from_pem(&public).unwrap();
    g.bench_function("certificate", |b| b.iter(|| certs.issue(black_box(&verdict), Some(&key), now).unwrap()));
    g.bench_function("jwt", |b| b.iter(|| jwts.issue(black_box(&verdict), None, now).unwrap()));
    g.bench_function("certificate_and_jwt", |b| b.iter(|| both.issue(black_box(&verdict), Some(&key), now).unwrap()));
    g.finish();
}

criterion_group!(benches, issuing);
criterion_main!(benches);
