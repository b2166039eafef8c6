//! Rule matching (the critical path) and token parsing.
//!
//! `match_rules/compiled/N` is the crate's matcher; the baselines are Teleport's loop with a regex
//! compiled per rule per call (`baseline_regex_per_rule`) and the same loop over prebuilt regexes
//! (`baseline_prebuilt_loop`). Each iteration matches the next identity of a fixed, mixed set
//! (matched by an exact ARN, by a prefix glob, by a `?` glob, by a mid-pattern `*`, by an
//! account-only rule, and refused in a known and in an unknown account), so the numbers are
//! averages over realistic outcomes, not a best case.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/reference.rs"]
mod reference;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use iam_join::Subject;
use iam_join::{Arn, Rule, RuleMatcher, TokenSet};
use reference::{PlainRule, Prebuilt, first_match_compiling};

const ACCOUNTS: usize = 50;

fn account(i: usize) -> String {
    format!("{:012}", 100_000_000_000u64 + (i % ACCOUNTS) as u64 * 7_919)
}

/// A deterministic mix: exact ARNs, `assumed-role/NAME/*`, `?` patterns, mid-pattern `*`,
/// account + wildcard-account patterns, account-only rules, and a few any-account patterns.
fn rules(n: usize) -> Vec<PlainRule> {
    (0..n)
        .map(|i| {
            let a = account(i * 31 + 7);
            match i % 20 {
                0..=5 => (String::new(), format!("arn:aws:sts::{a}:assumed-role/node-{i}/i-0{i:016x}")),
                6..=11 => (String::new(), format!("arn:aws:sts::{a}:assumed-role/eks-node-{i}/*")),
                12..=14 => (String::new(), format!("arn:aws:iam::{a}:user/svc-{i}-???")),
                15..=16 => (String::new(), format!("arn:aws:sts::{a}:assumed-role/team-{i}-*-deploy/*")),
                17 => (a.clone(), format!("arn:aws:sts::*:assumed-role/ci-{i}/*")),
                18 if i % 7 == 0 => (String::new(), format!("arn:aws:sts::*:assumed-role/global-{i}/*")),
                18 => (String::new(), format!("arn:aws:iam::{a}:user/user-{i}")),
                _ if i % 40 == 19 => (account(i * 31 + 7 + 25), String::new()),
                _ => (String::new(), format!("arn:aws:iam::{a}:user/admin-{i}")),
            }
        })
        .collect()
}

/// Identities: several matched by rules near the end of the list (the loop's worst case), and
/// several refused.
fn identities(n: usize, rules: &[PlainRule]) -> Vec<(String, Arn)> {
    let pick = |kind: usize| (0..n).rev().find(|i| i % 20 == kind).unwrap_or(0);
    let mut out = Vec::new();
    let mut add = |arn: String| {
        let parsed = Arn::parse(&arn).unwrap();
        out.push((parsed.account().as_str().to_owned(), parsed));
    };
    let acct = |i: usize| account(i * 31 + 7);
    let i = pick(0);
    add(format!("arn:aws:sts::{}:assumed-role/node-{i}/i-0{i:016x}", acct(i)));
    let i = pick(6);
    add(format!("arn:aws:sts::{}:assumed-role/eks-node-{i}/i-0123", acct(i)));
    let i = pick(12);
    add(format!("arn:aws:iam::{}:user/svc-{i}-abc", acct(i)));
    let i = pick(15);
    add(format!("arn:aws:sts::{}:assumed-role/team-{i}-blue-deploy/gha", acct(i)));
    let i = pick(0);
    add(format!("arn:aws:sts::{}:assumed-role/node-{i}/i-0ffffffffffffffff", acct(i)));
    add(format!("arn:aws:sts::{}:assumed-role/unknown-role/s", acct(3)));
    add("arn:aws:sts::999999999999:assumed-role/eks-node-1/i-0123".to_owned());
    add(format!("arn:aws:iam::{}:user/svc-{}-abcd", acct(pick(12)), pick(12)));
    let _ = rules;
    out
}

fn compile(rules: &[PlainRule]) -> RuleMatcher {
    let rules = rules
        .iter()
        .map(|(a, p)| {
            Rule::new((!a.is_empty()).then_some(a.as_str()), (!p.is_empty()).then_some(p.as_str())).expect("valid rule")
        })
        .collect();
    RuleMatcher::compile(rules).unwrap()
}

fn match_rules(c: &mut Criterion) {
    let mut group = c.benchmark_group("match_rules");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for n in [1usize, 100, 1000, 10_000] {
        let plain = rules(n);
        let ids = identities(n, &plain);
        let matcher = compile(&plain);
        let prebuilt = Prebuilt::new(&plain);
        // The optimized path must agree with the reference on every benchmarked identity.
        for (acct, arn) in &ids {
            let parsed_acct = arn.account();
            assert_eq!(
                matcher.first_match(Subject::new(parsed_acct, arn)),
                prebuilt.first_match(acct, arn.as_str()),
                "n={n} {arn}"
            );
        }
        let mut k = 0usize;
        group.bench_with_input(BenchmarkId::new("compiled", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % ids.len();
                let (_, arn) = &ids[k];
                black_box(matcher.first_match(Subject::new(arn.account(), black_box(arn))))
            })
        });
        let mut k = 0usize;
        group.bench_with_input(BenchmarkId::new("baseline_prebuilt_loop", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % ids.len();
                let (acct, arn) = &ids[k];
                black_box(prebuilt.first_match(acct, black_box(arn.as_str())))
            })
        });
        if n == 10_000 {
            group.sample_size(10);
        }
        let mut k = 0usize;
        group.bench_with_input(BenchmarkId::new("baseline_regex_per_rule", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % ids.len();
                let (acct, arn) = &ids[k];
                black_box(first_match_compiling(&plain, acct, black_box(arn.as_str())))
            })
        });
        group.sample_size(100);
    }
    group.finish();
}

fn token_file(tokens: usize) -> String {
    let mut s = String::new();
    for t in 0..tokens {
        let a = account(t);
        s.push_str(&format!(
            "kind: token\nversion: v2\nmetadata:\n  name: token-{t}\n  expires: \"2030-01-01T00:00:00Z\"\nspec:\n  roles: [Node, Kube]\n  join_method: iam\n  allow:\n  - aws_account: \"{a}\"\n  - aws_arn: \"arn:aws:sts::{a}:assumed-role/node-{t}/*\"\n---\n"
        ));
    }
    s
}

fn parse_tokens(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_tokens");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3)).sample_size(20);
    let file = token_file(1000);
    assert_eq!(TokenSet::from_yaml(&file).unwrap().len(), 1000);
    group.bench_function("multi_document/1000", |b| {
        b.iter(|| black_box(TokenSet::from_yaml(black_box(&file)).unwrap()))
    });
    group.finish();
}

/// What a cached organization rule adds to matching: the plain matcher on an account rule,
/// against finding the organization candidates, a cache hit and the OU check. The cache-hit
/// future completes without waiting, so it is polled once with a no-op waker (no executor cost).
fn organization_rules(c: &mut Criterion) {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use iam_join::organizations::{Membership, OrgCache};
    use iam_join::{AccountId, Partition};

    let yaml = "kind: token\nversion: v2\nmetadata:\n  name: t\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_account: \"999999999999\"\n  - aws_organization_id: o-abcdefghij\n    aws_organizational_units: {include: [ou-ab12-prod0001], exclude: [ou-ab12-prodweb1]}\n  - aws_account: \"222222222222\"\n";
    let set = TokenSet::from_yaml(yaml).unwrap();
    let token = set.get("t").unwrap();
    let m = token.matcher();
    let arn = Arn::parse("arn:aws:sts::222222222222:assumed-role/node/i-0123").unwrap();
    let account = AccountId::parse("222222222222").unwrap();
    let cache = OrgCache::default();
    let membership =
        Membership::member("o-abcdefghij", vec!["ou-ab12-team0001".into(), "ou-ab12-prod0001".into(), "r-ab12".into()]);
    let poll = |cache: &OrgCache| {
        let fut = cache.get_or_lookup(Partition::Aws, account, || async { Ok(membership.clone()) });
        let mut fut = std::pin::pin!(fut);
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => panic!("a cache hit must not wait"),
        }
    };
    poll(&cache); // fill the cache
    let decide = || {
        let plain = m.first_match(Subject::new(&account, &arn));
        let candidates = m.organization_candidates(Subject::new(&account, &arn));
        let candidates: Vec<usize> = candidates.into_iter().filter(|&i| plain.is_none_or(|p| i < p)).collect();
        if candidates.is_empty() {
            return plain;
        }
        let membership = poll(&cache);
        candidates.into_iter().find(|&i| membership.admits(&token.rules()[i])).or(plain)
    };
    assert_eq!(decide(), Some(1));
    assert_eq!(m.first_match(Subject::new(&account, &arn)), Some(2));
    let mut g = c.benchmark_group("organization_rules");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.bench_function("plain_account_rule", |b| {
        b.iter(|| black_box(m.first_match(Subject::new(black_box(&account), black_box(&arn)))))
    });
    g.bench_function("cached_organization_rule", |b| b.iter(|| black_box(decide())));
    g.finish();
}

criterion_group!(benches, match_rules, parse_tokens, organization_rules);
criterion_main!(benches);
