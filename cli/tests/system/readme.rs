//! README's "Try the service offline", run as written: the shell block is read from README.md,
//! its first line (the release build) left out because the tests' debug build is put first on
//! the `PATH`, and run with `bash -e` from the repository root, bounded to 120 s. It needs `curl`.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `n`th `sh` block (from 0) of the section `heading` of README.md.
fn block(heading: &str, n: usize) -> String {
    let readme = std::fs::read_to_string(crate::common::repository().join("README.md")).unwrap();
    let mut section = &readme[readme.find(heading).unwrap_or_else(|| panic!("README has no {heading:?}"))..];
    for _ in 0..n {
        let at = section.find("```sh\n").expect("a sh block") + 6;
        section = &section[at + section[at..].find("```").expect("the block ends") + 3..];
    }
    let start = section.find("```sh\n").expect("a sh block") + 6;
    let end = start + section[start..].find("```").expect("the block ends");
    section[start..end].to_owned()
}

/// Runs `script` with `bash -e` from the repository root, the tests' build first on the PATH,
/// bounded to 120 s; its stdout.
fn run_as_written(script: &str) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_iam-join")).parent().unwrap().to_owned();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new("bash")
        .args(["-e", "-c", script])
        .current_dir(crate::common::repository())
        .env("PATH", path)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the README's commands did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{status}\nstdout:\n{out}\nstderr:\n{err}");
    out
}

pub(crate) fn try_the_service_offline_runs_as_written() {
    let script = block("## Try the service offline", 0);
    let (build, rest) = script.split_once('\n').unwrap();
    assert!(build.starts_with("cargo build --release --bin iam-join"), "the block starts by building: {build}");
    let out = run_as_written(rest);
    let lines: Vec<&str> = out.lines().collect();
    let allowed: Vec<&&str> = lines.iter().filter(|l| l.starts_with("{\"allowed\":true")).collect();
    assert_eq!(allowed.len(), 4, "four allowed joins:\n{out}");
    // The forwarded joins and the presigned one prove the IRSA role's session; the web identity
    // token (the last) proves the role.
    for a in &allowed[..3] {
        assert!(
            a.contains("arn:aws:sts::111111111111:assumed-role/teleport-kube-agent/"),
            "the IRSA role's session: {a}"
        );
    }
    assert!(
        allowed[3].contains("\"arn\":\"arn:aws:iam::111111111111:role/teleport-kube-agent\""),
        "the role: {}",
        allowed[3]
    );
    assert!(lines.iter().any(|l| l.contains("\"kind\":\"challenge_replayed\"")), "a refused replay:\n{out}");
    assert!(lines.contains(&"iam_join_joins_total{outcome=\"allowed\"} 4"), "{out}");
    assert!(lines.contains(&"iam_join_joins_total{outcome=\"challenge_replayed\"} 1"), "{out}");
}

pub(crate) fn the_operator_guide_runs_as_written() {
    let install = block("## Operator guide", 0);
    assert!(install.starts_with("cargo install --locked --path cli"), "{install}");
    let out = run_as_written(&block("## Operator guide", 1));
    assert!(!out.contains(": error:") && !out.contains(": warning:"), "examples/tokens.yaml has problems: {out}");
    assert!(out.contains("rule 1"), "match explains rule by rule: {out}");
    let verdict = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no verdict: {out}"));
    let v: serde_json::Value = serde_json::from_str(verdict).unwrap();
    assert_eq!(
        (v["allowed"].as_bool(), v["identity"]["arn"].as_str()),
        (Some(true), Some("arn:aws:iam::111111111111:user/ci-deployer")),
        "{v}"
    );
}
