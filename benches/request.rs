//! Parse and validate a typical 1.3 KB Teleport-style forwarded request (Go `req.Write` layout,
//! `Accept: application/json`, a session token, seven signed headers).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use iam_join::{ForwardedRequest, RequestPolicy};

fn parse_request(c: &mut Criterion) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/requests/");
    let raw = std::fs::read(format!("{dir}teleport_go_request_write.http")).unwrap();
    let challenge = std::fs::read_to_string(format!("{dir}CHALLENGE")).unwrap();
    let now = UNIX_EPOCH + Duration::from_secs(1_795_878_000);
    let policy = RequestPolicy::new();
    assert!((1200..1400).contains(&raw.len()), "{} bytes", raw.len());
    ForwardedRequest::parse(&raw, &challenge, &policy, now).unwrap();
    let mut group = c.benchmark_group("request");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    group.bench_function("parse_validate/teleport_1302_bytes", |b| {
        b.iter(|| ForwardedRequest::parse(black_box(&raw), black_box(&challenge), &policy, now).unwrap())
    });
    group.finish();
}

criterion_group!(benches, parse_request);
criterion_main!(benches);
