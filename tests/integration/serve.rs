//! `iam-join serve` as a real process, without Redis: SIGTERM lets a join in flight finish, and
//! organization rules are looked up with the service's own credentials. The tests with Redis
//! (three replicas, outages, reloads, the load test) are in `tests/system`.

use std::time::{Duration, Instant, SystemTime};

use iam_join::agent::Credentials;
use iam_join::emulator::StsEmulator;

use crate::common::fixtures::{TOKENS, principals, user};
use crate::common::loopback::{Loopback, read_message};
use crate::common::service::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_join_in_flight_finish() {
    let http = client().build().unwrap();
    let dir = scratch("sigterm");
    let tokens = dir.join("tokens.yaml");
    std::fs::write(&tokens, TOKENS).unwrap();
    let sts = StsEmulator::start(principals()).await.unwrap();
    // A slow STS: each request waits 1.5 s, then goes to the emulator.
    let sts_addr = sts.addr();
    let slow = Loopback::start(move |mut conn, request| async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut upstream = tokio::net::TcpStream::connect(sts_addr).await.ok()?;
        tokio::io::AsyncWriteExt::write_all(&mut upstream, &request).await.ok()?;
        let answer = read_message(&mut upstream).await?;
        tokio::io::AsyncWriteExt::write_all(&mut conn, &answer).await.ok()?;
        Some(conn)
    })
    .await;
    let args =
        flags(&[("--tokens", &tokens.display().to_string()), ("--sts-endpoint", &slow.url()), ("--timeout", "5")]);
    let mut d = Replica::start(&http, "d", &dir, &args).await;
    assert!(d.logs().contains("run one replica only"), "no --redis is said in the logs: {}", d.logs());
    let c = challenge(&http, &d, "iam-token").await;
    let body = join_body("iam-token", &c, &signed(&user(), &c, SystemTime::now()));
    let in_flight = {
        let (http, url) = (http.clone(), d.url("/v1/join"));
        tokio::spawn(async move { post(&http, &url, &body).await })
    };
    let start = Instant::now();
    while slow.requests() == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "the join never reached STS");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.signal("TERM");
    let answer = in_flight.await.unwrap();
    assert_allowed("the join in flight at SIGTERM", &answer, USER_ARN);
    assert!(start.elapsed() >= Duration::from_millis(1400), "the answer came from the slow STS");
    // Then the process exits, cleanly, and takes no new joins.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "serve did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}: {}", d.logs());
    assert!(http.get(d.url("/healthz")).send().await.is_err(), "still listening after shutdown");
    assert!(d.logs().contains("shutting down"), "{}", d.logs());
}

/// Organization rules through the service: the service's own credentials (from its environment)
/// sign the lookups to a fake Organizations endpoint, and the cache metrics count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organization_rules_and_their_cache_metrics() {
    use crate::org_rules::{Mode, ORG, key, organizations};
    let http = client().build().unwrap();
    let dir = scratch("organizations");
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "kind: token\nversion: v2\nmetadata: {{name: whole-org}}\nspec:\n  roles: [Node]\n  join_method: iam\n  \
             allow:\n  - aws_organization_id: {ORG}\n"
        ),
    )
    .unwrap();
    let sts = StsEmulator::start(crate::org_rules::principals()).await.unwrap();
    let org = organizations(Mode::Normal).await;
    let args = flags(&[
        ("--tokens", &tokens.display().to_string()),
        ("--sts-endpoint", &sts.url()),
        ("--organizations-endpoint", &org.url()),
    ]);
    let reader = [("AWS_ACCESS_KEY_ID", "AKIAORGREADER000000"), ("AWS_SECRET_ACCESS_KEY", "org-reader-secret")];
    let r = Replica::start_with_env(&http, "org", &dir, &args, &reader).await;
    let member = |account: &str| Credentials::new(key(account), format!("secret-{account}"), None);
    let join_as = |account: &'static str| {
        let (http, r) = (http.clone(), &r);
        async move {
            let c = challenge(&http, r, "whole-org").await;
            join(&http, r, &join_body("whole-org", &c, &signed(&member(account), &c, SystemTime::now()))).await
        }
    };
    assert_allowed("member, first join", &join_as("333333333333").await, "arn:aws:iam::333333333333:user/api");
    let lookups = org.requests();
    assert!(lookups >= 2, "DescribeAccount and ListParents: {lookups}");
    assert_allowed("member, cached", &join_as("333333333333").await, "arn:aws:iam::333333333333:user/api");
    assert_eq!(org.requests(), lookups, "the second join is answered from the cache");
    assert_refused("no organization", &join_as("555555555555").await, 403, "not_allowed");
    let text = r.metrics(&http).await;
    assert_eq!(metric(&text, "iam_join_organizations_cache_hits_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "iam_join_organizations_cache_misses_total"), 2.0, "{text}");
    assert_eq!(metric(&text, "iam_join_joins_total{outcome=\"allowed\"}"), 2.0, "{text}");
    assert!(!r.logs().contains("org-reader-secret"), "the service's secret key is never logged");
}
