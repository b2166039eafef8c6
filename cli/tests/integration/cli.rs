//! The `iam-join` binary: exit codes, `FILE:LINE:COL` problems, and `verify`'s JSON contract for
//! every error kind it can produce here, against the in-process STS emulator.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use iam_join::agent::{JoinRequest, sign_join_request};
use iam_join::emulator::StsEmulator;
use iam_join::{Challenge, Proof};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::common::fixtures::{TOKENS, principals, role, user};
use crate::common::vectors;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_iam-join"))
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = bin()
        .args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn tokens_file() -> tempfile_path::Path {
    tempfile_path::write("tokens.yaml", TOKENS.as_bytes())
}

/// Tiny temp-file helper (no extra dependency).
mod tempfile_path {
    pub(crate) struct Path(pub(crate) std::path::PathBuf);
    impl Path {
        pub(crate) fn s(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    pub(crate) fn write(name: &str, data: &[u8]) -> Path {
        let n: u64 = rand_suffix();
        let p = std::env::temp_dir().join(format!("iam-join-test-{n}-{name}"));
        std::fs::write(&p, data).unwrap();
        Path(p)
    }
    fn rand_suffix() -> u64 {
        let c = iam_join::challenge::generate().unwrap();
        c.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
    }
}

#[test]
fn check_token_ok_and_problems() {
    let good = vectors("tokens/valid/tctl_get_tokens.yaml");
    let out = run(&["check-token", good.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0));
    let bad = vectors("tokens/invalid/unknown_rule_key_typo.yaml");
    let out = run(&["check-token", good.to_str().unwrap(), bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with(&format!("{}:10:5: error: unknown field `aws_acount`", bad.display())), "{stdout}");
}

/// A `tctl get tokens` stream: one static, one ec2, one iam token (and more).
const MIXED: &str = "tokens/valid/tctl_get_tokens_mixed.yaml";

/// The iam token of MIXED, with the emulator's user account.
fn mixed_with_user_account() -> String {
    std::fs::read_to_string(vectors(MIXED)).unwrap().replace("\"222222222222\"", "\"111111111111\"")
}

#[test]
fn check_token_reports_other_join_methods_as_information() {
    let out = run(&["check-token", vectors(MIXED).to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for (line, name, method) in [
        (7, "4f6b5e1a4c3d2e1f0a9b8c7d6e5f4a3b", "token"),
        (26, "ec2-token", "ec2"),
        (54, "kube-token", "kubernetes"),
        (67, "github-bot", "github"),
    ] {
        let want = format!(":{line}:16: info: token {name:?} uses join_method {method:?}; not an iam token, skipped");
        assert!(stdout.lines().any(|l| l.ends_with(&want)), "{want} in {stdout}");
    }
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 usable iam token(s)"));
    // --deny-warnings does not deny information.
    let out = run(&["check-token", "--deny-warnings", vectors(MIXED).to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0));
}

/// One valid token and one whose only rule can never match (a forgotten `/*`).
const WITH_DEAD_RULE: &str = r#"kind: token
version: v2
metadata:
  name: good
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_account: "111111111111"
---
kind: token
version: v2
metadata:
  name: dead
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_arn: "arn:aws:sts::111111111111:assumed-role/teleport-kube-agent"
"#;

#[test]
fn check_token_warns_with_line_and_column_and_denies_warnings_on_request() {
    let file = tempfile_path::write("dead.yaml", WITH_DEAD_RULE.as_bytes());
    let out = run(&["check-token", file.s()], None);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "{}:19:14: warning: aws_arn \"arn:aws:sts::111111111111:assumed-role/teleport-kube-agent\" can never match a principal ARN",
        file.s()
    );
    assert!(stdout.starts_with(&want), "{stdout}");
    let out = run(&["check-token", "--deny-warnings", file.s()], None);
    assert_eq!(out.status.code(), Some(1));
    // Positive control: without the dead rule, --deny-warnings passes.
    let clean = tempfile_path::write("clean.yaml", WITH_DEAD_RULE.split("---").next().unwrap().as_bytes());
    let out = run(&["check-token", "--deny-warnings", clean.s()], None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_uses_a_valid_token_whatever_the_others_hold() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let c = iam_join::challenge::generate().unwrap();
    let req = || sign_join_request(&user(), &JoinRequest::new(&c), SystemTime::now()).unwrap();

    // The tctl stream: static, ec2 and iam tokens side by side; the iam one allows its join.
    let mixed = tempfile_path::write("mixed.yaml", mixed_with_user_account().as_bytes());
    let (code, v) = verify(&args(mixed.s(), "integration-token", &c, &sts.url()), req()).await;
    assert_eq!((code, &v["allowed"]), (Some(0), &Value::Bool(true)), "{v}");
    // Asking for the ec2 token by name fails clearly for the operator, naming its join method on
    // stderr; the answer (what a client would be told) does not.
    let (code, v, stderr) = verify_with_stderr(&args(mixed.s(), "ec2-token", &c, &sts.url()), req()).await;
    assert_eq!(code, Some(1));
    assert_eq!(v["error"]["kind"], "token_invalid");
    assert!(stderr.contains("join_method \"ec2\""), "{stderr}");
    assert!(!v["error"]["message"].as_str().unwrap().contains("join_method"), "{v}");

    // A dead rule in another token is a warning; the good token verifies.
    let dead = tempfile_path::write("dead-verify.yaml", WITH_DEAD_RULE.as_bytes());
    let (code, v) = verify(&args(dead.s(), "good", &c, &sts.url()), req()).await;
    assert_eq!(code, Some(0), "{v}");

    // An error in another token: the good token still verifies, the broken one is refused.
    let broken = WITH_DEAD_RULE.replace("aws_arn:", "aws_arnn:");
    let broken = tempfile_path::write("broken.yaml", broken.as_bytes());
    let (code, v) = verify(&args(broken.s(), "good", &c, &sts.url()), req()).await;
    assert_eq!(code, Some(0), "{v}");
    let out = run(&["check-token", broken.s()], None);
    assert_eq!(out.status.code(), Some(2));
    let out = tokio::task::spawn_blocking({
        let (b, c) = (broken.s().to_owned(), c.clone());
        move || run(&["verify", "--token", &b, "--name", "dead", "--challenge", &c, "--request", "-"], Some(b""))
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "an invalid token named by --name is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("19:5: error: unknown field `aws_arnn`"), "{out:?}");
}

#[test]
fn match_explains_and_exits_by_outcome() {
    let tokens = tokens_file();
    let args = ["match", "--token", tokens.s(), "--name", "iam-token", "--account", "333333333333", "--arn"];
    let mut yes = args.to_vec();
    yes.push("arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-1");
    let out = run(&yes, None);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rule 0: account differs\nrule 1: matched\nallowed by rule 1")
    );
    let mut no = args.to_vec();
    no.extend(["arn:aws:sts::333333333333:assumed-role/other/i-1", "--json"]);
    let out = run(&no, None);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allowed"], false);
    assert_eq!(v["rules"][1]["arn"], "differs");
    assert_eq!(v["rules"][1]["account"], "matched");
    // Several tokens in the file and no --name: a usage error.
    let out = run(
        &["match", "--token", tokens.s(), "--account", "333333333333", "--arn", "arn:aws:iam::333333333333:root"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn match_explains_organization_rules_offline() {
    let yaml = "kind: token\nversion: v2\nmetadata:\n  name: org\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_organization_id: o-abcdefghij\n    aws_organizational_units: {include: [ou-ab12-prod0001], exclude: [ou-ab12-prodweb1]}\n";
    let file = tempfile_path::write("org.yaml", yaml.as_bytes());
    let base = ["match", "--token", file.s(), "--account", "222222222222", "--arn", "arn:aws:iam::222222222222:user/x"];
    let with = |ous: &[&str]| {
        let mut a = base.to_vec();
        a.extend(["--organization-id", "o-abcdefghij"]);
        for ou in ous {
            a.extend(["--ou", ou]);
        }
        run(&a, None)
    };
    let out = with(&["ou-ab12-prod0001", "r-ab12"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let out = with(&["ou-ab12-prodweb1", "ou-ab12-prod0001", "r-ab12"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("organization or OU differs"));
    let out = run(&base, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("organization not evaluated"));
}

#[test]
fn challenge_key_prints_a_key_file_line_the_library_reads() {
    let out = run(&["challenge-key", "--id", "2026-11"], None);
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8(out.stdout).unwrap();
    let keys = iam_join::challenge::ChallengeKeys::parse(&line).unwrap();
    assert_eq!(keys.active_id(), "2026-11");
    let again = String::from_utf8(run(&["challenge-key", "--id", "2026-11"], None).stdout).unwrap();
    assert_ne!(line, again, "fresh every time");
    assert_eq!(run(&["challenge-key", "--id", "bad id"], None).status.code(), Some(2));
}

#[test]
fn challenge_prints_a_fresh_one() {
    let out = run(&["challenge"], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim().len(), 43);
}

#[test]
fn demo_runs_and_ends_quickly() {
    let t = Instant::now();
    let out = run(&["demo"], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("every outcome as expected"));
    assert_eq!(stdout.lines().filter(|l| *l == "   as expected").count(), 9, "{stdout}");
    assert!(stdout.contains("presigned URL") && stdout.contains("web identity token"), "every proof format is shown");
}

/// Runs `verify` in a blocking thread so the emulator keeps serving on the test's runtime.
async fn verify(extra: &[String], request: Vec<u8>) -> (Option<i32>, Value) {
    let (code, v, _) = verify_with_stderr(extra, request).await;
    (code, v)
}

/// `verify`'s exit code, its JSON (the client's answer), and its stderr (the operator's detail).
async fn verify_with_stderr(extra: &[String], request: Vec<u8>) -> (Option<i32>, Value, String) {
    let extra = extra.to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = run(&args, Some(&request));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {} / {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        });
        (out.status.code(), v, String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await
    .unwrap()
}

fn args(tokens: &str, name: &str, challenge: &str, sts: &str) -> Vec<String> {
    [
        "verify",
        "--token",
        tokens,
        "--name",
        name,
        "--challenge",
        challenge,
        "--request",
        "-",
        "--sts-endpoint",
        sts,
        "--timeout",
        "2",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_json_contract_for_every_kind() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let tokens = tokens_file();
    let t = tokens.s().to_owned();
    let c = iam_join::challenge::generate().unwrap();
    let signed = |creds: &iam_join::agent::Credentials, join: JoinRequest| {
        sign_join_request(creds, &join, SystemTime::now()).unwrap()
    };

    // Allowed.
    let (code, v) =
        verify(&args(&t, "iam-token", &c, &sts.url()), signed(&role(), JoinRequest::new(&c).accept_json(true))).await;
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["token"], "iam-token");
    assert_eq!(v["roles"], serde_json::json!(["Kube", "App", "Discovery"]));
    assert_eq!(v["identity"]["account"], "333333333333");
    assert_eq!(v["matched_rule"], 1);
    assert_eq!(v.as_object().unwrap().len(), 5);

    let refused = |v: &Value, kind: &str| {
        assert_eq!(v["allowed"], false, "{v}");
        assert_eq!(v["error"]["kind"], kind, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(v.as_object().unwrap().len(), 4, "{v}");
    };
    let user_req = || signed(&user(), JoinRequest::new(&c));

    let (code, v) = verify(&args(&t, "expired-token", &c, &sts.url()), user_req()).await;
    assert_eq!(code, Some(1));
    refused(&v, "token_invalid");
    assert!(v["identity"].is_null());

    let (code, v) = verify(&args(&t, "iam-token", &c, &sts.url()), b"GET / HTTP/1.1\r\n\r\n".to_vec()).await;
    assert_eq!(code, Some(1));
    refused(&v, "malformed_request");

    let hostile =
        String::from_utf8(user_req()).unwrap().replace("Host: sts.amazonaws.com", "Host: evil.example").into_bytes();
    let (_, v) = verify(&args(&t, "iam-token", &c, &sts.url()), hostile).await;
    refused(&v, "untrusted_endpoint");

    let other = iam_join::challenge::generate().unwrap();
    let (_, v) = verify(&args(&t, "iam-token", &other, &sts.url()), user_req()).await;
    refused(&v, "challenge_mismatch");

    let mut late = args(&t, "iam-token", &c, &sts.url());
    late.extend(["--now".into(), "2099-01-01T00:00:00Z".into()]);
    let (_, v) = verify(&late, user_req()).await;
    refused(&v, "request_expired");

    let wrong = iam_join::agent::Credentials::new(crate::common::fixtures::USER_KEY, "wrong", None);
    let (_, v) = verify(&args(&t, "iam-token", &c, &sts.url()), signed(&wrong, JoinRequest::new(&c))).await;
    refused(&v, "signature_rejected");

    let stranger = iam_join::agent::Credentials::new("AKIAOTHERACCOUNT0001", "other-secret", None);
    let (_, v) = verify(&args(&t, "iam-token", &c, &sts.url()), signed(&stranger, JoinRequest::new(&c))).await;
    refused(&v, "not_allowed");
    assert_eq!(v["identity"]["arn"], "arn:aws:iam::999999999999:user/stranger");

    // Nothing listens: sts_unavailable.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let (_, v) = verify(&args(&t, "iam-token", &c, &dead), user_req()).await;
    refused(&v, "sts_unavailable");

    // A server that answers 200 with something that is not an identity: sts_response_invalid.
    let junk = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let junk_url = format!("http://{}/", junk.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = junk.accept().await {
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 7\r\n\r\n<a></a>").await;
        }
    });
    let (_, v) = verify(&args(&t, "iam-token", &c, &junk_url), user_req()).await;
    refused(&v, "sts_response_invalid");

    // Usage errors exit 2 without JSON.
    let out = tokio::task::spawn_blocking(move || {
        run(&["verify", "--token", "/nonexistent.yaml", "--challenge", "x", "--request", "-"], None)
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_output_is_accepted_by_verify() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let tokens = tokens_file();
    let c = iam_join::challenge::generate().unwrap();
    let c2 = c.clone();
    let signed = tokio::task::spawn_blocking(move || {
        bin()
            .args(["sign", "--challenge", &c2, "--region", "eu-west-1", "--accept-json"])
            .env("AWS_ACCESS_KEY_ID", crate::common::fixtures::ROLE_KEY)
            .env("AWS_SECRET_ACCESS_KEY", crate::common::fixtures::ROLE_SECRET)
            .env("AWS_SESSION_TOKEN", crate::common::fixtures::ROLE_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(signed.status.code(), Some(0));
    assert!(signed.stdout.starts_with(b"POST / HTTP/1.1\r\nHost: sts.eu-west-1.amazonaws.com\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 43\r\nAccept: application/json\r\n"));
    let (code, v) = verify(&args(tokens.s(), "iam-token", &c, &sts.url()), signed.stdout).await;
    assert_eq!(code, Some(0), "{v}");
}

/// `sign --presigned` and `sign --web-identity` print proofs `verify --presigned` and
/// `verify --web-identity-token` accept (from a file with its trailing newline, and from stdin);
/// `verify` without the web identity flags refuses the token as a usage error, and a proof flag
/// is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_and_verify_the_presigned_and_web_identity_proofs() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let tokens = tokens_file();
    let sign = |extra: Vec<String>| {
        let url = sts.url();
        tokio::task::spawn_blocking(move || {
            let out = crate::service::agent_command(&["sign"])
                .args(&extra)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ENDPOINT_URL_STS", url)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
            out.stdout
        })
    };
    let with = |c: &str, flag: &str, value: &str, more: &[String]| {
        let mut a = args(tokens.s(), "iam-token", c, &sts.url());
        let at = a.iter().position(|x| x == "--request").unwrap();
        a[at] = flag.to_owned();
        a[at + 1] = value.to_owned();
        a.extend_from_slice(more);
        a
    };

    let c = iam_join::challenge::generate().unwrap();
    let eks = sign(vec!["--challenge".into(), c.clone(), "--presigned".into()]).await.unwrap();
    assert!(eks.starts_with(b"k8s-aws-v1.") && eks.ends_with(b"\n"));
    let file = tempfile_path::write("eks-token", &eks);
    let (code, v) = verify(&with(&c, "--presigned", file.s(), &[]), Vec::new()).await;
    assert_eq!((code, &v["allowed"]), (Some(0), &Value::Bool(true)), "{v}");

    let issuer = sts.issuer_url("111111111111");
    let web =
        vec!["--web-identity-issuer".to_owned(), format!("111111111111={issuer}"), "--audience".into(), "aud-1".into()];
    let c = iam_join::challenge::generate().unwrap();
    let jwt = sign(vec!["--challenge".into(), c.clone(), "--web-identity".into(), "--audience".into(), "aud-1".into()])
        .await
        .unwrap();
    assert_eq!(jwt.iter().filter(|&&b| b == b'.').count(), 2, "a JWT");
    let (code, v) = verify(&with(&c, "--web-identity-token", "-", &web), jwt.clone()).await;
    assert_eq!((code, &v["allowed"]), (Some(0), &Value::Bool(true)), "{v}");
    // Another audience configured: untrusted_endpoint, exit 1.
    let other =
        vec!["--web-identity-issuer".to_owned(), format!("111111111111={issuer}"), "--audience".into(), "aud-2".into()];
    let (code, v) = verify(&with(&c, "--web-identity-token", "-", &other), jwt.clone()).await;
    assert_eq!((code, v["error"]["kind"].as_str()), (Some(1), Some("untrusted_endpoint")), "{v}");

    // Usage errors, exit 2: a token without the web identity flags; no proof at all.
    let c2 = c.clone();
    let tokens_path = tokens.s().to_owned();
    let (no_flags, no_proof) = tokio::task::spawn_blocking(move || {
        let a = run(
            &[
                "verify",
                "--token",
                &tokens_path,
                "--name",
                "iam-token",
                "--challenge",
                &c2,
                "--web-identity-token",
                "-",
            ],
            Some(&jwt),
        );
        let b = run(&["verify", "--token", &tokens_path, "--name", "iam-token", "--challenge", &c2], None);
        (a, b)
    })
    .await
    .unwrap();
    assert_eq!(no_flags.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&no_flags.stderr).contains("--web-identity-issuer"),
        "{}",
        String::from_utf8_lossy(&no_flags.stderr)
    );
    assert_eq!(no_proof.status.code(), Some(2));
}

/// `iam-join sign` through aws-config's real chain, in a cleared environment (no IMDS: this is
/// not EC2): the region from AWS_REGION, AWS_DEFAULT_REGION, a profile or --region, the FIPS host
/// with --fips, the global host with no region; credentials from the environment or a profile of
/// the shared files. Every host chosen passes the verifier's default endpoint policy.
#[test]
fn sign_picks_region_and_credentials_from_the_aws_chain() {
    let home = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sign-chain-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let config = home.join("config");
    let credentials = home.join("credentials");
    std::fs::write(&config, "[profile dev]\nregion = ap-southeast-2\n").unwrap();
    std::fs::write(
        &credentials,
        "[dev]\naws_access_key_id = AKIAPROFILEKEY000001\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    let keys = [("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENTKEY01"), ("AWS_SECRET_ACCESS_KEY", "env-secret")];
    let sign = |env: &[(&str, &str)], extra: &[&str]| {
        let mut cmd = bin();
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            .envs(env.iter().copied())
            .args(["sign", "--challenge", "0123456789abcdefghijklmnopqrstuv"])
            .args(extra);
        cmd.output().unwrap()
    };
    let with_keys = |more: &[(&'static str, &'static str)]| [&keys[..], more].concat();
    /// The case, its environment, its flags, the host and the access key id it must sign with.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "AWS_REGION",
            with_keys(&[("AWS_REGION", "eu-west-1")]),
            vec![],
            "sts.eu-west-1.amazonaws.com",
            "AKIAENVIRONMENTKEY01",
        ),
        (
            "AWS_DEFAULT_REGION",
            with_keys(&[("AWS_DEFAULT_REGION", "ap-south-1")]),
            vec![],
            "sts.ap-south-1.amazonaws.com",
            "AKIAENVIRONMENTKEY01",
        ),
        (
            "--region over AWS_REGION",
            with_keys(&[("AWS_REGION", "eu-west-1")]),
            vec!["--region", "us-west-1"],
            "sts.us-west-1.amazonaws.com",
            "AKIAENVIRONMENTKEY01",
        ),
        (
            "--fips",
            with_keys(&[("AWS_REGION", "us-east-2")]),
            vec!["--fips"],
            "sts-fips.us-east-2.amazonaws.com",
            "AKIAENVIRONMENTKEY01",
        ),
        ("no region: global", with_keys(&[]), vec![], "sts.amazonaws.com", "AKIAENVIRONMENTKEY01"),
        (
            "--profile: its region and keys",
            vec![],
            vec!["--profile", "dev"],
            "sts.ap-southeast-2.amazonaws.com",
            "AKIAPROFILEKEY000001",
        ),
        (
            "AWS_PROFILE",
            vec![("AWS_PROFILE", "dev")],
            vec![],
            "sts.ap-southeast-2.amazonaws.com",
            "AKIAPROFILEKEY000001",
        ),
    ];
    let policy = iam_join::EndpointPolicy::new();
    for (case, env, extra, host, key) in &cases {
        let out = sign(env, extra);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{case}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.starts_with(&format!("POST / HTTP/1.1\r\nHost: {host}\r\n")), "{case}: {text}");
        assert!(text.contains(&format!("Credential={key}/")), "{case}: {text}");
        policy.check(host).unwrap_or_else(|e| panic!("{case}: {host} refused by the default policy: {e}"));
    }
    // No credentials anywhere: a usage error that says what was tried, and nothing signed.
    let out = sign(&[("AWS_REGION", "eu-west-1")], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no AWS credentials from the default chain"), "{err}");
    // FIPS without a FIPS host for the region: refused before anything is signed.
    let out = sign(&with_keys(&[("AWS_REGION", "eu-west-1")]), &["--fips"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// EKS Pod Identity: the chain reads the agent's credentials from the pod's credentials endpoint
/// (AWS_CONTAINER_CREDENTIALS_FULL_URI, here a loopback stand-in), presenting the token in
/// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, and `iam-join sign` signs with the session they hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_uses_eks_pod_identity_credentials() {
    use crate::common::loopback::{Loopback, reply};
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let body = serde_json::json!({
        "AccessKeyId": "ASIAPODIDENTITY00001",
        "SecretAccessKey": "pod-identity-secret",
        "Token": "pod-identity-session-token",
        "Expiration": expires.format(&time::format_description::well_known::Rfc3339).unwrap(),
    })
    .to_string();
    let agent = Loopback::start(move |mut conn, _request| {
        let body = body.clone();
        async move {
            conn.write_all(&reply(200, "application/json", body.as_bytes())).await.ok()?;
            Some(conn)
        }
    })
    .await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pod-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("eks-pod-identity-token");
    std::fs::write(&token, "eks-pod-identity-authorization-token").unwrap();
    let uri = format!("http://127.0.0.1:{}/v1/credentials", agent.addr().port());
    let out = tokio::task::spawn_blocking(move || {
        bin()
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &dir)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_REGION", "eu-north-1")
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri)
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token)
            .args(["sign", "--challenge", "0123456789abcdefghijklmnopqrstuv"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("POST / HTTP/1.1\r\nHost: sts.eu-north-1.amazonaws.com\r\n"), "{text}");
    assert!(text.contains("Credential=ASIAPODIDENTITY00001/"), "{text}");
    assert!(text.contains("X-Amz-Security-Token: pod-identity-session-token\r\n"), "{text}");
    let asked = String::from_utf8_lossy(&agent.last_request()).to_ascii_lowercase();
    assert!(asked.starts_with("get /v1/credentials "), "{asked}");
    assert!(asked.contains("authorization: eks-pod-identity-authorization-token"), "{asked}");
}

/// Issue 19: one run of check-token reports every problem of a token it can find (a typo, an
/// 11-digit account, a rule that can never match), each at its line and column; it stopped at
/// the first.
#[test]
fn check_token_reports_every_problem_of_a_token_in_one_run() {
    let file = vectors("tokens/invalid/typo_bad_account_and_dead_rule.yaml");
    let out = run(&["check-token", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let at = |place: &str| stdout.lines().find(|l| l.contains(place)).unwrap_or_else(|| panic!("no {place}: {stdout}"));
    assert!(at(":10:5: error: ").contains("unknown field `aws_acount`"));
    assert!(at(":11:18: error: ").contains("\"11111111111\" is not a 12-digit AWS account id"));
    assert!(at(":12:14: warning: ").contains("can never match"));
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    // Positive control: the same token without the three mistakes has nothing to say.
    let fixed = std::fs::read_to_string(&file)
        .unwrap()
        .replace("aws_acount", "aws_account")
        .replace("\"11111111111\"", "\"111111111111\"")
        .replace("role/node", "user/node");
    let fixed = tempfile_path::write("fixed.yaml", fixed.as_bytes());
    let out = run(&["check-token", "--deny-warnings", fixed.s()], None);
    assert_eq!((out.status.code(), out.stdout.len()), (Some(0), 0), "{}", String::from_utf8_lossy(&out.stdout));
}

/// Issue 19: the challenge key file is created private, appends keep its mode, and `serve`
/// refuses a key file that group or others can read.
#[cfg(feature = "serve")]
#[test]
fn challenge_keys_are_created_private_and_serve_refuses_readable_ones() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("iam-join-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("challenge-keys");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let out = run(&["challenge-key", "--id", "k1", "--out", keys.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "the key is not printed");
    assert_eq!(mode(&keys), 0o600);
    let out = run(&["challenge-key", "--id", "k2", "--out", keys.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(mode(&keys), 0o600, "an append keeps the mode");
    let text = std::fs::read_to_string(&keys).unwrap();
    assert_eq!(text.lines().map(|l| l.split(':').next().unwrap()).collect::<Vec<_>>(), ["k1", "k2"]);
    let ring = iam_join::challenge::ChallengeKeys::load_file(&keys).unwrap();
    assert_eq!(ring.active_id(), "k1", "the first line stays the active key");

    // Readable by others: the library refuses it, `challenge-key` warns, `serve` will not start.
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = iam_join::challenge::ChallengeKeys::load_file(&keys).unwrap_err();
    assert!(e.detail().contains("mode 644") && !e.detail().contains(&text[3..20]), "{e}");
    let out = run(&["challenge-key", "--id", "k3", "--out", keys.to_str().unwrap()], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("accessible by group or others"));
    let tokens = tokens_file();
    let out = run(
        &["serve", "--listen", "127.0.0.1:0", "--tokens", tokens.s(), "--challenge-key", keys.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 19: the emulator plays IRSA. With only the web identity variables (and the SDKs'
/// `AWS_ENDPOINT_URL_STS` at the emulator), aws-config's web identity provider gets the role's
/// session from it, `iam-join sign` signs with those credentials, and the emulator answers
/// GetCallerIdentity for that session. A wrong token gets no credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_hands_a_web_identity_the_roles_session() {
    use iam_join::emulator::{EmulatedRole, StsEmulator};
    use iam_join::{EndpointOverride, RequestPolicy, ReqwestTransport, TokenSet, Verifier};
    let sts = StsEmulator::builder()
        .role(EmulatedRole::new(
            "arn:aws:iam::111111111111:role/teleport-kube-agent",
            "AROAEXAMPLEROLE00001",
            "the-projected-token",
        ))
        .start()
        .await
        .unwrap();
    let sign = |token: &'static str, challenge: String| {
        let url = sts.url();
        tokio::task::spawn_blocking(move || {
            let file = tempfile_path::write("web-identity-token", token.as_bytes());
            bin()
                .args(["sign", "--challenge", &challenge])
                .env_clear()
                .env("AWS_ROLE_ARN", "arn:aws:iam::111111111111:role/teleport-kube-agent")
                .env("AWS_WEB_IDENTITY_TOKEN_FILE", file.s())
                .env("AWS_ROLE_SESSION_NAME", "pod-1")
                .env("AWS_ENDPOINT_URL_STS", url)
                .env("AWS_REGION", "us-west-2")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("HOME", "/nonexistent")
                .output()
                .unwrap()
        })
    };
    let challenge = iam_join::challenge::generate().unwrap();
    let out = sign("the-projected-token", challenge.clone()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let raw = out.stdout;
    assert!(String::from_utf8_lossy(&raw).contains("X-Amz-Security-Token: "), "temporary credentials sign it");
    let tokens = TokenSet::from_yaml(
        "kind: token\nversion: v2\nmetadata: {name: kube}\nspec: {roles: [Kube], join_method: iam, allow: \
         [{aws_account: \"111111111111\", aws_arn: \"arn:aws:sts::111111111111:assumed-role/teleport-kube-agent/*\"}]}",
    )
    .unwrap();
    let transport = ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap();
    let verdict = Verifier::builder(tokens)
        .policy(RequestPolicy::new())
        .transport(transport)
        .build()
        .verify("kube", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now())
        .await
        .unwrap();
    assert_eq!(verdict.identity().arn().as_str(), "arn:aws:sts::111111111111:assumed-role/teleport-kube-agent/pod-1");
    assert_eq!(verdict.identity().user_id(), "AROAEXAMPLEROLE00001:pod-1");
    // Another token: the emulated OIDC provider refuses it, and the chain finds no credentials.
    let out = sign("someone-elses-token", iam_join::challenge::generate().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("InvalidIdentityToken"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
