//! `iam-join serve` as real processes: three replicas sharing one `redis-server` (started here on
//! a loopback port) and the SigV4-checking STS emulator. A challenge from one replica is redeemed
//! at another; a replay is refused everywhere, the first replica included, and never reaches STS;
//! Redis stopping fails joins closed (503, retryable) until it is back; token edits reload while
//! joins run, and a broken edit keeps the set in use; the metrics count exactly the joins made;
//! SIGTERM lets a join in flight finish. The load test (ignored by default) measures throughput
//! across the replicas against in-process `verify`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
use iam_join::challenge::{ChallengeKey, ChallengeKeys};
use iam_join::emulator::StsEmulator;
use serde_json::{Value, json};

use crate::common::loopback::{Loopback, read_message};
use crate::common::redis::{Redis, redis_available};
use crate::pipeline::{TOKENS, USER_SECRET, principals, user};

/// The challenge key every replica shares (a test key; real ones come from `iam-join challenge-key`).
pub(crate) const KEY_LINE: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDE=";

pub(crate) fn stranger() -> Credentials {
    Credentials::new("AKIAOTHERACCOUNT0001", "other-secret", None)
}

/// A scratch folder for one test, under the target directory.
pub(crate) fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replaces a file whole (write, then rename), as an operator's editor or a ConfigMap swap does.
pub(crate) fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The tests' HTTP client, 20 s per exchange (rustls's provider is chosen once per process).
pub(crate) fn client() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(20))
}

/// `serve`'s command line from `(flag, value)` pairs.
pub(crate) fn flags(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs.iter().flat_map(|(flag, value)| [(*flag).to_owned(), (*value).to_owned()]).collect()
}

/// One `iam-join serve` process on a loopback port; killed when dropped.
pub(crate) struct Replica {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) port: u16,
    log: PathBuf,
}

impl Replica {
    pub(crate) async fn start(http: &reqwest::Client, name: &'static str, dir: &Path, args: &[String]) -> Replica {
        Self::start_with_env(http, name, dir, args, &[]).await
    }

    pub(crate) async fn start_with_env(
        http: &reqwest::Client,
        name: &'static str,
        dir: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Replica {
        Self::start_limited(http, name, dir, args, env, None).await
    }

    /// Like [`Replica::start_with_env`], with at most `open_files` file descriptors (`prlimit`).
    pub(crate) async fn start_limited(
        http: &reqwest::Client,
        name: &'static str,
        dir: &Path,
        args: &[String],
        env: &[(&str, &str)],
        open_files: Option<u32>,
    ) -> Replica {
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let mut command = match open_files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(env!("CARGO_BIN_EXE_iam-join"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_iam-join")),
        };
        let child = command
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env("IAM_JOIN_LOG", "info")
            .env_remove("AWS_ACCESS_KEY_ID")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start iam-join serve");
        let replica = Replica { name, child, port, log };
        let start = Instant::now();
        loop {
            if let Ok(r) = http.get(replica.url("/healthz")).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{name} did not start: {}", replica.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        replica
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill").args(["-s", signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -s {signal} {}", self.name);
    }

    pub(crate) async fn metrics(&self, http: &reqwest::Client) -> String {
        let r = http.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Peak resident memory (VmHWM), in KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM on Linux");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metric's value from a text exposition; 0 when the series is absent.
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

pub(crate) async fn post(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)})))
}

pub(crate) async fn challenge(http: &reqwest::Client, at: &Replica, token: &str) -> String {
    let (status, body) = post(http, &at.url("/v1/challenge"), &json!({"token": token})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{body}");
    body["challenge"].as_str().unwrap().to_owned()
}

pub(crate) fn signed(creds: &Credentials, challenge: &str, at: SystemTime) -> String {
    let raw = sign_join_request(creds, &JoinRequest::new(challenge), at).unwrap();
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The JSON body of one join.
pub(crate) fn join_body(token: &str, challenge: &str, request: &str) -> Value {
    json!({"token": token, "challenge": challenge, "request": request})
}

pub(crate) async fn join(http: &reqwest::Client, at: &Replica, body: &Value) -> (u16, Value) {
    post(http, &at.url("/v1/join"), body).await
}

/// A fresh join of `creds` for iam-token: challenge from `from`, submitted to `to`.
pub(crate) async fn fresh_join(
    http: &reqwest::Client,
    from: &Replica,
    to: &Replica,
    creds: &Credentials,
) -> (u16, Value) {
    let c = challenge(http, from, "iam-token").await;
    join(http, to, &join_body("iam-token", &c, &signed(creds, &c, SystemTime::now()))).await
}

/// Asserts a refusal's status and kind, and that the answer tells nothing of the token's rules.
pub(crate) fn assert_refused(case: &str, (status, body): &(u16, Value), want_status: u16, want_kind: &str) {
    assert_eq!(*status, want_status, "{case}: {body}");
    assert_eq!(body["allowed"], false, "{case}: {body}");
    assert_eq!(body["error"]["kind"], want_kind, "{case}: {body}");
    assert!(!body.to_string().contains("111111111111"), "{case}: the answer names the token's account: {body}");
}

pub(crate) fn assert_allowed(case: &str, (status, body): &(u16, Value), arn: &str) {
    assert_eq!(*status, 200, "{case}: {body}");
    assert_eq!(body["allowed"], true, "{case}: {body}");
    assert_eq!(body["identity"]["arn"], arn, "{case}: {body}");
}

pub(crate) const USER_ARN: &str = "arn:aws:iam::111111111111:user/ci-deployer";
pub(crate) const STRANGER_ARN: &str = "arn:aws:iam::999999999999:user/stranger";

/// iam-token, now also allowing the stranger's account.
pub(crate) fn tokens_v2() -> String {
    TOKENS.replacen(
        "  - aws_account: \"111111111111\"\n",
        "  - aws_account: \"111111111111\"\n  - aws_account: \"999999999999\"\n",
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_challenges_single_use_redis_outages_and_reloads() {
    if !redis_available("serve::three_replicas") {
        return;
    }
    let http = client().build().unwrap();
    let dir = scratch("replicas");
    let (tokens, keys) = (dir.join("tokens.yaml"), dir.join("challenge-keys"));
    std::fs::write(&tokens, TOKENS).unwrap();
    std::fs::write(&keys, format!("{KEY_LINE}\n")).unwrap();
    let redis = Redis::start(None);
    let redis_port = redis.port;
    let sts = StsEmulator::start(principals()).await.unwrap();
    let (sts_url, redis_url) = (sts.url(), redis.url());
    let (tokens_path, keys_path) = (tokens.display().to_string(), keys.display().to_string());
    let common = |reload: &str| {
        flags(&[
            ("--tokens", &tokens_path),
            ("--challenge-key", &keys_path),
            ("--redis", &redis_url),
            ("--sts-endpoint", &sts_url),
            ("--timeout", "3"),
            ("--reload-interval", reload),
        ])
    };
    let a = Replica::start(&http, "a", &dir, &common("0.1")).await;
    let b = Replica::start(&http, "b", &dir, &common("0.1")).await;
    // C looks at the file once an hour: only SIGHUP reloads it within this test.
    let c = Replica::start(&http, "c", &dir, &common("3600")).await;
    let replicas = [&a, &b, &c];
    let mut allowed = 0usize;
    let mut replays = 0usize;
    let mut kinds: HashMap<&str, usize> = HashMap::new();

    // A challenge from A, redeemed at B.
    let ch = challenge(&http, &a, "iam-token").await;
    let body = join_body("iam-token", &ch, &signed(&user(), &ch, SystemTime::now()));
    assert_allowed("A's challenge at B", &join(&http, &b, &body).await, USER_ARN);
    allowed += 1;
    assert_eq!(sts.requests(), 1);
    // The same signed request again at C, at B, and at A: a replay everywhere, and never sent to STS.
    for r in [&c, &b, &a] {
        let answer = join(&http, r, &body).await;
        assert_refused(&format!("replay at {}", r.name), &answer, 403, "challenge_replayed");
        replays += 1;
    }
    assert_eq!(sts.requests(), 1, "nothing replayed reaches STS");

    // Every other refusal through the API, one per kind, with its status.
    let now = SystemTime::now();
    let other = challenge(&http, &b, "other-token").await;
    let (c1, c2) = (challenge(&http, &c, "iam-token").await, challenge(&http, &c, "iam-token").await);
    let forged = {
        let mut parts: Vec<String> = c1.split('.').map(str::to_owned).collect();
        parts[4] = "A".repeat(43);
        parts.join(".")
    };
    let foreign_key =
        ChallengeKeys::new(ChallengeKey::new("k1", vec![7; 32]).unwrap()).issue("iam-token", now).unwrap();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "challenge issued for another token",
            join_body("iam-token", &other, &signed(&user(), &other, now)),
            403,
            "challenge_mismatch",
        ),
        ("forged MAC", join_body("iam-token", &forged, &signed(&user(), &forged, now)), 403, "challenge_mismatch"),
        (
            "another service's key",
            join_body("iam-token", &foreign_key, &signed(&user(), &foreign_key, now)),
            403,
            "challenge_mismatch",
        ),
        ("signed c1, sent c2", join_body("iam-token", &c2, &signed(&user(), &c1, now)), 403, "challenge_mismatch"),
        ("stranger", join_body("iam-token", &c1, &signed(&stranger(), &c1, now)), 403, "not_allowed"),
        (
            "wrong secret",
            join_body("iam-token", &c2, &signed(&Credentials::new(crate::pipeline::USER_KEY, "wrong", None), &c2, now)),
            403,
            "signature_rejected",
        ),
        (
            "signed 20 minutes ago",
            join_body("iam-token", &c2, &signed(&user(), &c2, now - Duration::from_secs(1200))),
            403,
            "request_expired",
        ),
        ("not base64", join_body("iam-token", &c2, "%%%"), 400, "malformed_request"),
        ("not a request", join_body("iam-token", &c2, "aGVsbG8="), 400, "malformed_request"),
        (
            "extra field",
            json!({"token": "iam-token", "challenge": c2, "request": "", "admin": true}),
            400,
            "malformed_request",
        ),
        (
            "expired token",
            {
                let ch = challenge(&http, &a, "expired-token").await;
                join_body("expired-token", &ch, &signed(&user(), &ch, now))
            },
            403,
            "token_invalid",
        ),
        (
            "no such token",
            {
                let ch = challenge(&http, &a, "nope").await;
                join_body("nope", &ch, &signed(&user(), &ch, now))
            },
            403,
            "token_invalid",
        ),
    ];
    let sent_before = sts.requests();
    for (i, (case, body, status, kind)) in cases.iter().enumerate() {
        let answer = join(&http, replicas[i % 3], body).await;
        assert_refused(case, &answer, *status, kind);
        *kinds.entry(kind).or_default() += 1;
    }
    assert_eq!(sts.requests(), sent_before + 2, "only the stranger and the wrong secret reach STS");
    // The positive control for the table: the same shape of join, done right, is allowed.
    assert_allowed("control", &fresh_join(&http, &c, &a, &user()).await, USER_ARN);
    allowed += 1;
    // The client, `iam-join join`, with the agent's keys in its environment (the chain's first source).
    let url = b.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_iam-join"))
            .args(["join", "--server", &url, "--token", "iam-token", "--deadline", "10"])
            .env_clear()
            .env("AWS_ACCESS_KEY_ID", crate::pipeline::USER_KEY)
            .env("AWS_SECRET_ACCESS_KEY", USER_SECRET)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_allowed("iam-join join", &(200, serde_json::from_slice(&out.stdout).unwrap()), USER_ARN);
    allowed += 1;

    // Redis stops: joins fail closed with the retryable kind, nothing reaches STS, not ready.
    drop(redis);
    let sent_before = sts.requests();
    for r in replicas {
        let answer = fresh_join(&http, r, r, &user()).await;
        assert_refused(&format!("Redis down at {}", r.name), &answer, 503, "replay_store_unavailable");
        assert_eq!(answer.1["error"]["retryable"], true);
        *kinds.entry("replay_store_unavailable").or_default() += 1;
        assert_eq!(http.get(r.url("/readyz")).send().await.unwrap().status(), 503, "{} ready without Redis", r.name);
    }
    assert_eq!(sts.requests(), sent_before, "a join that cannot be claimed is not sent");
    // Redis back on the same port: joins work again at every replica, within seconds.
    let _redis = Redis::start(Some(redis_port));
    for r in replicas {
        let start = Instant::now();
        loop {
            let answer = fresh_join(&http, r, r, &user()).await;
            if answer.0 == 200 {
                allowed += 1;
                break;
            }
            assert_refused("Redis restarting", &answer, 503, "replay_store_unavailable");
            *kinds.entry("replay_store_unavailable").or_default() += 1;
            assert!(start.elapsed() < Duration::from_secs(15), "{} did not recover after Redis restarted", r.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(http.get(r.url("/readyz")).send().await.unwrap().status(), 200);
    }

    // Token edits while joins run: every background join must be allowed throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (http, stop) = (http.clone(), stop.clone());
        let urls: Vec<String> = replicas.iter().map(|r| r.url("")).collect();
        tokio::spawn(async move {
            let (mut done, mut i) = (0usize, 0usize);
            while !stop.load(Ordering::SeqCst) {
                let (from, to) = (&urls[i % 3], &urls[(i + 1) % 3]);
                let (_, c) = post(&http, &format!("{from}/v1/challenge"), &json!({"token": "iam-token"})).await;
                let c = c["challenge"].as_str().unwrap().to_owned();
                let body = join_body("iam-token", &c, &signed(&user(), &c, SystemTime::now()));
                let answer = post(&http, &format!("{to}/v1/join"), &body).await;
                assert_allowed("background join during reloads", &answer, USER_ARN);
                done += 1;
                i += 1;
            }
            done
        })
    };
    write_atomically(&tokens, &tokens_v2());
    for r in [&a, &b] {
        let start = Instant::now();
        loop {
            let answer = fresh_join(&http, r, r, &stranger()).await;
            if answer.0 == 200 {
                assert_allowed("stranger after the edit", &answer, STRANGER_ARN);
                allowed += 1;
                break;
            }
            assert_refused("stranger before the reload", &answer, 403, "not_allowed");
            *kinds.entry("not_allowed").or_default() += 1;
            assert!(start.elapsed() < Duration::from_secs(10), "{} did not reload the edited file", r.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // C has not looked yet: still the old set. SIGHUP: the new one.
    let refused = fresh_join(&http, &c, &c, &stranger()).await;
    assert_refused("stranger at C before SIGHUP", &refused, 403, "not_allowed");
    assert_eq!(refused.1["identity"]["arn"], STRANGER_ARN, "the caller's own identity is in the refusal");
    *kinds.entry("not_allowed").or_default() += 1;
    c.signal("HUP");
    let start = Instant::now();
    loop {
        let answer = fresh_join(&http, &c, &c, &stranger()).await;
        if answer.0 == 200 {
            allowed += 1;
            break;
        }
        *kinds.entry("not_allowed").or_default() += 1;
        assert!(start.elapsed() < Duration::from_secs(10), "C did not reload on SIGHUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken edit: every replica keeps serving the last good set, and counts a failed reload.
    write_atomically(&tokens, &format!("{}\n---\nkind: token\nspec: {{allow: [oops\n", tokens_v2()));
    c.signal("HUP");
    for r in replicas {
        let start = Instant::now();
        while metric(&r.metrics(&http).await, "iam_join_token_reloads_total{result=\"failed\"}") < 1.0 {
            assert!(start.elapsed() < Duration::from_secs(10), "{} did not try the broken file", r.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(r.logs().contains("token reload failed"), "{}: {}", r.name, r.logs());
        assert_allowed("stranger after the broken edit", &fresh_join(&http, r, r, &stranger()).await, STRANGER_ARN);
        allowed += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let background_joins = background.await.unwrap();
    assert!(background_joins >= 3, "joins ran during the edits: {background_joins}");
    allowed += background_joins;

    // The metrics count exactly the joins this test made.
    let mut totals: HashMap<String, f64> = HashMap::new();
    for r in replicas {
        let text = r.metrics(&http).await;
        for name in [
            "iam_join_joins_total",
            "iam_join_verify_seconds_bucket",
            "iam_join_sts_seconds_bucket",
            "iam_join_sts_attempts_total",
            "iam_join_replay_claims_total",
            "iam_join_challenges_issued_total",
            "iam_join_organizations_cache_hits_total",
            "iam_join_organizations_cache_misses_total",
            "iam_join_token_reloads_total",
            "iam_join_tokens",
        ] {
            assert!(text.contains(name), "{} lacks {name}:\n{text}", r.name);
        }
        for series in [
            "iam_join_joins_total{outcome=\"allowed\"}",
            "iam_join_joins_total{outcome=\"challenge_replayed\"}",
            "iam_join_replay_claims_total{result=\"conflict\"}",
            "iam_join_replay_claims_total{result=\"unavailable\"}",
            "iam_join_sts_attempts_total{result=\"answered\"}",
            "iam_join_verify_seconds_count",
        ] {
            *totals.entry(series.to_owned()).or_default() += metric(&text, series);
        }
        for kind in kinds.keys() {
            let series = format!("iam_join_joins_total{{outcome=\"{kind}\"}}");
            *totals.entry(series.clone()).or_default() += metric(&text, &series);
        }
    }
    assert_eq!(totals["iam_join_joins_total{outcome=\"allowed\"}"], allowed as f64, "{totals:?}");
    assert_eq!(totals["iam_join_joins_total{outcome=\"challenge_replayed\"}"], replays as f64);
    assert_eq!(totals["iam_join_replay_claims_total{result=\"conflict\"}"], replays as f64);
    for (kind, n) in &kinds {
        assert_eq!(totals[&format!("iam_join_joins_total{{outcome=\"{kind}\"}}")], *n as f64, "{kind}: {totals:?}");
    }
    assert_eq!(
        totals["iam_join_replay_claims_total{result=\"unavailable\"}"],
        kinds["replay_store_unavailable"] as f64
    );
    assert_eq!(
        totals["iam_join_sts_attempts_total{result=\"answered\"}"],
        sts.requests() as f64,
        "one attempt per STS request"
    );
    let joins_made = allowed + replays + kinds.values().sum::<usize>();
    assert_eq!(totals["iam_join_verify_seconds_count"], joins_made as f64);

    // The logs are JSON lines, and hold no secret: no key, no signature, no secret key.
    for r in replicas {
        let logs = r.logs();
        for line in logs.lines() {
            serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", r.name));
        }
        for secret in [USER_SECRET, KEY_LINE.split(':').nth(1).unwrap(), "Signature=", &ch] {
            assert!(!logs.contains(secret), "{} logged a secret ({secret:.8}…)", r.name);
        }
    }
}

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

/// Runs `jobs` through `work` with at most `concurrency` at once, returning each job's latency.
async fn drive<F, Fut>(jobs: usize, concurrency: usize, work: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let work = Arc::new(work);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (work, next) = (work.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= jobs {
                    return latencies;
                }
                let t = Instant::now();
                work(i).await;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(jobs);
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort();
    all
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Load: IAM_JOIN_LOAD_JOINS joins (default 10,000; one in ten from a stranger, refused) at 64
/// concurrent across three replicas sharing Redis and the emulator, each challenge redeemed at
/// another replica than the one that issued it; then the same joins through an in-process
/// `Verifier` with the same Redis, emulator and checks, for the ratio. Every outcome is checked.
/// Run: `cargo test --release --all-features --test integration serve::load -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load test: run explicitly, in release"]
async fn load_across_three_replicas() {
    assert!(redis_available("serve::load"), "the load test needs redis-server");
    let joins: usize = std::env::var("IAM_JOIN_LOAD_JOINS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    const CONCURRENCY: usize = 64;
    let http = client().timeout(Duration::from_secs(30)).pool_max_idle_per_host(CONCURRENCY).build().unwrap();
    let dir = scratch("load");
    let (tokens, keys) = (dir.join("tokens.yaml"), dir.join("challenge-keys"));
    std::fs::write(&tokens, TOKENS).unwrap();
    std::fs::write(&keys, format!("{KEY_LINE}\n")).unwrap();
    let redis = Redis::start(None);
    let sts = StsEmulator::start(principals()).await.unwrap();
    let args = flags(&[
        ("--tokens", &tokens.display().to_string()),
        ("--challenge-key", &keys.display().to_string()),
        ("--redis", &redis.url()),
        ("--sts-endpoint", &sts.url()),
    ]);
    let replicas = Arc::new([
        Replica::start(&http, "a", &dir, &args).await,
        Replica::start(&http, "b", &dir, &args).await,
        Replica::start(&http, "c", &dir, &args).await,
    ]);
    let urls: Arc<Vec<String>> = Arc::new(replicas.iter().map(|r| r.url("")).collect());
    let is_stranger = |i: usize| i % 10 == 9;

    // Untimed: a challenge from replica i % 3 for each join, signed by the agent.
    let bodies = Arc::new(std::sync::Mutex::new(vec![Value::Null; joins]));
    let t = Instant::now();
    {
        let (http, urls, bodies) = (http.clone(), urls.clone(), bodies.clone());
        drive(joins, CONCURRENCY, move |i| {
            let (http, urls, bodies) = (http.clone(), urls.clone(), bodies.clone());
            async move {
                let (_, c) =
                    post(&http, &format!("{}/v1/challenge", urls[i % 3]), &json!({"token": "iam-token"})).await;
                let c = c["challenge"].as_str().unwrap().to_owned();
                let creds = if is_stranger(i) { stranger() } else { user() };
                bodies.lock().unwrap()[i] = join_body("iam-token", &c, &signed(&creds, &c, SystemTime::now()));
            }
        })
        .await;
    }
    let challenges_per_s = joins as f64 / t.elapsed().as_secs_f64();

    // Timed: each join at the next replica.
    let wrong = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let latencies = {
        let (http, urls, bodies, wrong) = (http.clone(), urls.clone(), bodies.clone(), wrong.clone());
        drive(joins, CONCURRENCY, move |i| {
            let (http, urls, wrong) = (http.clone(), urls.clone(), wrong.clone());
            let body = std::mem::take(&mut bodies.lock().unwrap()[i]);
            async move {
                let (status, answer) = post(&http, &format!("{}/v1/join", urls[(i + 1) % 3]), &body).await;
                let right = if is_stranger(i) {
                    status == 403 && answer["error"]["kind"] == "not_allowed"
                } else {
                    status == 200 && answer["identity"]["arn"] == USER_ARN
                };
                if !right {
                    eprintln!("wrong outcome for join {i}: {status} {answer}");
                    wrong.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .await
    };
    let served = t.elapsed();
    let service_rate = joins as f64 / served.as_secs_f64();
    let rss: Vec<u64> = replicas.iter().map(Replica::peak_rss_kib).collect();

    // In process: the same checks (key ring, single use in the same Redis, STS at the emulator).
    let ring = ChallengeKeys::parse(KEY_LINE).unwrap();
    let transport = iam_join::ReqwestTransport::builder()
        .endpoint_override(iam_join::EndpointOverride::Url(sts.url()))
        .build()
        .unwrap();
    let verifier = iam_join::Verifier::new(
        iam_join::TokenSet::from_yaml(TOKENS).unwrap(),
        iam_join::RequestPolicy::new(),
        transport,
    )
    .challenge_keys(ring.clone())
    .replay_guard(Arc::new(iam_join::RedisReplayGuard::new(&redis.url()).unwrap()));
    let raws: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..joins)
            .map(|i| {
                let c = ring.issue("iam-token", SystemTime::now()).unwrap();
                let creds = if is_stranger(i) { stranger() } else { user() };
                let raw = sign_join_request(&creds, &JoinRequest::new(&c), SystemTime::now()).unwrap();
                (c, raw)
            })
            .collect(),
    );
    let wrong_in_process = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    {
        let (verifier, ring, raws, wrong) = (verifier.clone(), ring.clone(), raws.clone(), wrong_in_process.clone());
        drive(joins, CONCURRENCY, move |i| {
            let (verifier, ring, raws, wrong) = (verifier.clone(), ring.clone(), raws.clone(), wrong.clone());
            async move {
                let (c, raw) = &raws[i];
                let now = SystemTime::now();
                let result = match ring.check(c, "iam-token", now) {
                    Ok(_) => verifier.verify("iam-token", c, raw, now).await,
                    Err(e) => Err(e),
                };
                let right = match &result {
                    Ok(v) => !is_stranger(i) && v.identity().arn().as_str() == USER_ARN,
                    Err(e) => is_stranger(i) && e.kind() == iam_join::ErrorKind::NotAllowed,
                };
                if !right {
                    wrong.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
        .await;
    }
    let in_process_rate = joins as f64 / t.elapsed().as_secs_f64();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "load: {joins} joins at {CONCURRENCY} concurrent across 3 replicas (Redis single use, emulated STS): \
         {service_rate:.0} joins/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         peak RSS per replica {} MiB; challenges {challenges_per_s:.0}/s",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap()),
        rss.iter().map(|k| format!("{:.1}", *k as f64 / 1024.0)).collect::<Vec<_>>().join(" / "),
    );
    println!(
        "load: in-process verify, same checks and stores: {in_process_rate:.0} joins/s; \
         service / in-process = {:.2}",
        service_rate / in_process_rate
    );
    assert_eq!(wrong.load(Ordering::SeqCst), 0, "wrong outcomes through the service");
    assert_eq!(wrong_in_process.load(Ordering::SeqCst), 0, "wrong outcomes in process");
    assert_eq!(sts.requests(), 2 * joins, "each join reached STS exactly once");
    drop(replicas);
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
