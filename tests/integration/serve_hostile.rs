//! `iam-join serve` against a hostile environment and hostile clients (issue 18): token files
//! that block or never end, slow and idle connections, bodies declared and never sent, and the
//! answers to input that is not a join.

use std::path::Path;
use std::time::{Duration, Instant};

use iam_join::emulator::StsEmulator;

use crate::pipeline::{TOKENS, principals};
use crate::serve::{
    Replica, STRANGER_ARN, assert_allowed, client, flags, fresh_join, metric, scratch, stranger, tokens_v2,
    write_atomically,
};

/// `/healthz` answers within a second.
async fn answers_within_a_second(http: &reqwest::Client, r: &Replica, when: &str) {
    let start = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(1), http.get(r.url("/healthz")).send()).await;
    let ok = matches!(&got, Ok(Ok(resp)) if resp.status() == 200);
    assert!(ok, "{when}: /healthz did not answer within a second ({:?}): {}", start.elapsed(), r.logs());
}

/// Waits, at most 10 s, until the replica's metric reaches `at_least`.
async fn wait_for_metric(http: &reqwest::Client, r: &Replica, series: &str, at_least: f64) {
    let start = Instant::now();
    loop {
        let value = metric(&r.metrics(http).await, series);
        if value >= at_least {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{series} stayed at {value} (want {at_least}): {}",
            r.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn replace_with_fifo(path: &Path) {
    let fifo = path.with_extension("fifo");
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    std::fs::rename(&fifo, path).unwrap();
}

fn replace_with_link(path: &Path, target: &str) {
    let link = path.with_extension("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(target, &link).unwrap();
    std::fs::rename(&link, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_that_blocks_or_never_ends_leaves_the_service_answering() {
    let http = client().build().unwrap();
    let dir = scratch("hostile-files");
    let tokens = dir.join("tokens.yaml");
    std::fs::write(&tokens, TOKENS).unwrap();
    let sts = StsEmulator::start(principals()).await.unwrap();
    let args = flags(&[
        ("--tokens", &tokens.display().to_string()),
        ("--sts-endpoint", &sts.url()),
        ("--reload-interval", "0.1"),
    ]);
    let r = Replica::start(&http, "files", &dir, &args).await;
    let failed = "iam_join_token_reloads_total{result=\"failed\"}";
    let tokens_in_use = metric(&r.metrics(&http).await, "iam_join_tokens");
    let rss_before = r.peak_rss_kib();

    // A FIFO with no writer: opening it for reading would block the reload for good.
    replace_with_fifo(&tokens);
    wait_for_metric(&http, &r, failed, 1.0).await;
    answers_within_a_second(&http, &r, "token file swapped for a FIFO").await;
    r.signal("HUP");
    wait_for_metric(&http, &r, failed, 2.0).await;
    answers_within_a_second(&http, &r, "SIGHUP with the FIFO in place").await;
    assert!(r.logs().contains("a FIFO"), "the log names what the file is: {}", r.logs());

    // A link to /dev/zero: read whole, it never ends.
    replace_with_link(&tokens, "/dev/zero");
    r.signal("HUP");
    wait_for_metric(&http, &r, failed, 3.0).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // five more ticks
    answers_within_a_second(&http, &r, "token file a link to /dev/zero").await;
    let grown_kib = r.peak_rss_kib().saturating_sub(rss_before);
    assert!(grown_kib < (iam_join::MAX_TOKEN_FILE_BYTES / 1024) as u64, "peak RSS grew {grown_kib} KiB");
    assert!(r.logs().contains("a character device"), "{}", r.logs());
    assert_eq!(metric(&r.metrics(&http).await, "iam_join_tokens"), tokens_in_use, "the set in use stayed");

    // A valid edit reloads: the stranger's account is now allowed.
    write_atomically(&tokens, &tokens_v2());
    wait_for_metric(&http, &r, "iam_join_token_reloads_total{result=\"ok\"}", 1.0).await;
    assert_allowed("after the valid edit", &fresh_join(&http, &r, &r, &stranger()).await, STRANGER_ARN);
}
