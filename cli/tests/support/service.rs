#![allow(dead_code)]
//! `iam-join serve` as a process in a test: started on a loopback port with the flags a test
//! gives, logs to a file, killed when dropped; and the JSON exchanges with it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
use serde_json::{Value, json};

use crate::common::fixtures::TOKENS;

/// The challenge key every replica shares (a test key; real ones come from `iam-join challenge-key`).
pub(crate) const KEY_LINE: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDE=";

pub(crate) fn stranger() -> Credentials {
    Credentials::new("AKIAOTHERACCOUNT0001", "other-secret", None)
}

/// Writes the shared challenge key file, private (`serve` refuses a key file others can read).
pub(crate) fn write_key_file(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("{KEY_LINE}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A scratch folder for one test, under the target directory.
pub(crate) fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `tokens.yaml` in `dir`, holding the fixture tokens.
pub(crate) fn tokens_file(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens.yaml");
    std::fs::write(&tokens, TOKENS).unwrap();
    tokens
}

/// [`tokens_file`] and the shared challenge-key file, for replicas that share challenges.
pub(crate) fn tokens_and_keys(dir: &Path) -> (PathBuf, PathBuf) {
    let keys = dir.join("challenge-keys");
    write_key_file(&keys);
    (tokens_file(dir), keys)
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

/// `iam-join ARGS` as the agent: an empty environment but the agent's static keys (the AWS
/// chain's first source), no instance metadata and no AWS config files.
pub(crate) fn agent_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_iam-join"));
    cmd.args(args)
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", crate::common::fixtures::USER_KEY)
        .env("AWS_SECRET_ACCESS_KEY", crate::common::fixtures::USER_SECRET)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    cmd
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

    /// Sends `HUP` or `TERM` (a system call: procps's `kill` is not on every machine).
    pub(crate) fn signal(&self, signal: &str) {
        use rustix::process::{Pid, Signal, kill_process};
        let sig = match signal {
            "HUP" => Signal::HUP,
            "TERM" => Signal::TERM,
            other => panic!("no such signal in these tests: {other}"),
        };
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        kill_process(pid, sig).unwrap_or_else(|e| panic!("kill -s {signal} {}: {e}", self.name));
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
    let (status, _, answer) = post_with(http, url, body, &[]).await;
    (status, answer)
}

/// POST with extra headers: the status, `Retry-After` and the JSON body (or `{"raw": text}`).
pub(crate) async fn post_with(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut req = http.post(url).header("content-type", "application/json").body(serde_json::to_vec(body).unwrap());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = r.bytes().await.unwrap();
    let answer = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, retry_after, answer)
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
