//! `iam-join serve` as a real process, without Redis: SIGTERM lets a join in flight finish, and
//! organization rules are looked up with the service's own credentials. The tests with Redis
//! (three replicas, outages, reloads, the load test) are in `tests/system`.

use std::time::{Duration, Instant, SystemTime};

use iam_join::agent::Credentials;
use iam_join::emulator::StsEmulator;

use crate::common::fixtures::{TOKENS, principals, user};
use crate::common::loopback::{Loopback, read_message};
use crate::service::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_join_in_flight_finish() {
    let http = client().build().unwrap();
    let dir = scratch("sigterm");
    let tokens = tokens_file(&dir);
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
    use crate::common::organizations::{Mode, ORG, key, organizations};
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
    let sts = StsEmulator::start(crate::common::organizations::principals()).await.unwrap();
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

/// Issue 19: what an operator reads. A join against an STS that cannot be reached names the host
/// and the class of failure in the service's log (the client sees the fixed message); a Redis
/// that does not answer is said at start; no usable token means not ready; `--listen` takes
/// `localhost:PORT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_says_why_and_readiness_means_a_join_could_be_allowed() {
    let http = client().build().unwrap();
    let dir = scratch("causes");
    let tokens = tokens_file(&dir);
    let closed = free_port(); // nothing listens there
    let args = flags(&[
        ("--tokens", &tokens.display().to_string()),
        ("--sts-endpoint", &format!("http://127.0.0.1:{closed}/")),
        ("--timeout", "1"),
        ("--redis", &format!("redis://127.0.0.1:{}/", free_port())),
    ]);
    let r = Replica::start(&http, "causes", &dir, &args).await;
    assert!(r.logs().contains("Redis does not answer"), "said at start: {}", r.logs());
    let readyz = http.get(r.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503);
    assert!(readyz.text().await.unwrap().contains("Redis"));
    drop(r);

    // No Redis now, so joins reach the (unreachable) STS.
    let args = flags(&[
        ("--tokens", &tokens.display().to_string()),
        ("--sts-endpoint", &format!("http://127.0.0.1:{closed}/")),
        ("--timeout", "1"),
    ]);
    let r = Replica::start(&http, "causes2", &dir, &args).await;
    let answer = fresh_join(&http, &r, &r, &user()).await;
    assert_refused("STS unreachable", &answer, 503, "sts_unavailable");
    assert!(!answer.1.to_string().contains("127.0.0.1"), "the client is not told where STS is: {}", answer.1);
    let log = r.logs();
    let line = log.lines().find(|l| l.contains("join refused")).unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&format!("STS request to sts.amazonaws.com via 127.0.0.1:{closed} failed (refused")),
        "the log names the host and the class: {line}"
    );
    assert_eq!(http.get(r.url("/readyz")).send().await.unwrap().status(), 200, "ready: a token, no Redis to ask");
    drop(r);

    // A token file with no usable token: up (healthz), not ready.
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, TOKENS.replace("aws_account", "aws_acount")).unwrap();
    let r = Replica::start(&http, "no-tokens", &dir, &flags(&[("--tokens", &broken.display().to_string())])).await;
    let readyz = http.get(r.url("/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 503);
    assert!(readyz.text().await.unwrap().contains("no usable iam token"));
    drop(r);

    // --listen localhost:PORT.
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_iam-join"))
        .args(["serve", "--listen", &format!("localhost:{port}"), "--tokens", &tokens.display().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Ok(resp) = http.get(format!("http://127.0.0.1:{port}/healthz")).send().await
            && resp.status() == 200
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "serve --listen localhost:{port} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Issue 20: a client refused for its endpoint is told the fixed text of the kind, never the
/// endpoint policy (here FIPS only); the service's log has the full detail, and `iam-join
/// verify` shows it to the operator on stderr, apart from the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_endpoint_refusal_does_not_tell_the_client_the_policy() {
    let http = client().build().unwrap();
    let dir = scratch("policy");
    let tokens = tokens_file(&dir);
    let sts = StsEmulator::start(principals()).await.unwrap();
    let mut args = flags(&[("--tokens", &tokens.display().to_string()), ("--sts-endpoint", &sts.url())]);
    args.push("--fips".to_owned());
    let r = Replica::start(&http, "fips", &dir, &args).await;
    let answer = fresh_join(&http, &r, &r, &user()).await; // signed for sts.amazonaws.com
    assert_refused("not a FIPS endpoint", &answer, 403, "untrusted_endpoint");
    let message = answer.1["error"]["message"].as_str().unwrap();
    assert_eq!(message, iam_join::ErrorKind::UntrustedEndpoint.client_text());
    assert!(!answer.1.to_string().contains("FIPS"), "{}", answer.1);
    assert!(r.logs().contains("FIPS is required"), "the operator's log has the detail: {}", r.logs());
    assert_eq!(sts.requests(), 0);
}

/// `iam-join join --proof presigned` and `--proof web-identity` through `iam-join serve`: the
/// presigned join replays to STS once; the web identity join makes no STS call (the service's
/// metrics count STS attempts); a request with two proofs is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_join_join_with_each_proof_through_the_service() {
    let http = client().build().unwrap();
    let dir = scratch("proofs");
    let tokens = tokens_file(&dir);
    let sts = StsEmulator::start(principals()).await.unwrap();
    let pin = format!("111111111111={}", sts.issuer_url("111111111111"));
    let args = flags(&[
        ("--tokens", &tokens.display().to_string()),
        ("--sts-endpoint", &sts.url()),
        ("--web-identity-issuer", &pin),
        ("--audience", "https://join.example.com"),
    ]);
    let r = Replica::start(&http, "proofs", &dir, &args).await;
    let attempts = |m: &str| metric(m, "iam_join_sts_attempts_total{result=\"answered\"}");
    let join = |extra: &'static [&'static str]| {
        let (server, sts_url) = (r.url(""), sts.url());
        tokio::task::spawn_blocking(move || {
            agent_command(&["join", "--server", &server, "--token", "iam-token", "--deadline", "10"])
                .args(extra)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ENDPOINT_URL_STS", sts_url)
                .output()
                .unwrap()
        })
    };
    let before = attempts(&r.metrics(&http).await);
    let out = join(&["--proof", "presigned"]).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(attempts(&r.metrics(&http).await) - before, 1.0, "the presigned join asked STS once");
    let out = join(&["--proof", "web-identity", "--audience", "https://join.example.com", "--algorithm", "ES384"])
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(attempts(&r.metrics(&http).await) - before, 1.0, "the web identity join asked STS nothing");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"allowed\":true") && stdout.contains("ci-deployer"), "{stdout}");
    // Two proofs in one join: malformed, 400.
    let c = challenge(&http, &r, "iam-token").await;
    let (status, body) = post(
        &http,
        &r.url("/v1/join"),
        &serde_json::json!({"token": "iam-token", "challenge": c, "request": "", "presigned": "x"}),
    )
    .await;
    assert_eq!((status, body["error"]["kind"].as_str()), (400, Some("malformed_request")), "{body}");
}

/// `iam-join join --identity-dir`: the stored identity is reused while more than a third of its
/// life remains, replaced once two thirds have passed, and never presented once expired (with
/// the service down, join then fails); `--renew` joins again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_identity_is_reused_renewed_and_never_presented_expired() {
    use std::os::unix::fs::PermissionsExt as _;
    let http = client().build().unwrap();
    let dir = scratch("identity");
    let tokens = tokens_file(&dir).display().to_string();
    let (ca_cert, ca_key) = iam_join::issue::CertificateAuthority::generate("test CA").unwrap();
    let (_, jwt_key) = iam_join::issue::JwtKey::generate().unwrap();
    for (name, text) in [("ca.pem", ca_cert.as_str()), ("ca.key", ca_key.as_str()), ("jwt.pem", jwt_key.as_str())] {
        std::fs::write(dir.join(name), text).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let sts = StsEmulator::start(principals()).await.unwrap();
    let path = |n: &str| dir.join(n).display().to_string();
    let args = flags(&[
        ("--tokens", &tokens),
        ("--sts-endpoint", &sts.url()),
        ("--ca-cert", &path("ca.pem")),
        ("--ca-key", &path("ca.key")),
        ("--trust-domain", "example.org"),
        ("--jwt-signing-key", &path("jwt.pem")),
        ("--jwt-audience", "aud"),
        ("--credential-ttl", "3"),
        ("--issuer", "https://join.example.com"),
    ]);
    let r = Replica::start(&http, "identity", &dir, &args).await;
    let ident = path("agent");
    let server = r.url("");
    let issued_at = || {
        let text = std::fs::read_to_string(dir.join("agent/identity.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["issued_at"].as_u64().unwrap()
    };
    let run = |extra: &'static [&'static str]| {
        let (server, ident) = (server.clone(), ident.clone());
        tokio::task::spawn_blocking(move || identity_join(&server, &ident, extra))
    };
    let out = run(&[]).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let first = issued_at();
    // At once: reused, no join.
    let out = run(&[]).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "reused without joining: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(issued_at(), first);
    // Two thirds of 3 s later: joined again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let out = run(&[]).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("less than a third"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = issued_at();
    assert!(second > first);
    // --renew joins by itself when two thirds have passed.
    let (server, ident2) = (r.url(""), ident.clone());
    let mut renewing = agent_command(&[
        "join",
        "--server",
        &server,
        "--token",
        "iam-token",
        "--deadline",
        "3",
        "--identity-dir",
        &ident2,
        "--renew",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let start = Instant::now();
    while issued_at() == second && start.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = renewing.kill();
    let _ = renewing.wait();
    let renewed = issued_at();
    assert!(renewed > second, "--renew joined again");
    // Expired: joined again.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let out = run(&[]).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(issued_at() > renewed);
    // The service is gone and the identity expires: join never presents it, and fails.
    drop(r);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let out = run(&[]).await.unwrap();
    assert_ne!(out.status.code(), Some(0), "an expired identity is never presented");
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `iam-join join --identity-dir IDENT` against `server` as the emulator's IAM user.
fn identity_join(server: &str, ident: &str, extra: &[&str]) -> std::process::Output {
    agent_command(&["join", "--server", server, "--token", "iam-token", "--deadline", "3", "--identity-dir", ident])
        .args(extra)
        .output()
        .unwrap()
}
