//! `iam-join serve` against a hostile environment and hostile clients (issue 18): token files
//! that block or never end, slow and idle connections, bodies declared and never sent, and the
//! answers to input that is not a join.

use std::path::Path;
use std::time::{Duration, Instant};

use iam_join::emulator::StsEmulator;

use crate::common::fixtures::principals;
use crate::service::{
    Replica, STRANGER_ARN, assert_allowed, challenge, client, flags, fresh_join, metric, scratch, stranger,
    tokens_file, tokens_v2, write_atomically,
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
    let tokens = tokens_file(&dir);
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

/// Sends `bytes` on `conn` and reads one answer: status and body (`Content-Length` framed);
/// `None` when none comes within 5 s.
async fn exchange(conn: &mut tokio::net::TcpStream, bytes: &[u8]) -> Option<(u16, Vec<u8>)> {
    use tokio::io::AsyncWriteExt as _;
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        conn.write_all(bytes).await.ok()?;
        crate::common::loopback::read_message(conn).await
    })
    .await
    .ok()??;
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = answer[text.find("\r\n\r\n")? + 4..].to_vec();
    Some((status, body))
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

/// Whether the server closes `conn` within `within` (a read that ends, not one that waits).
async fn closed_within(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {} // an answer (e.g. 408) before the close
        }
    }
}

/// Drips `bytes` onto `conn`, one every `every`, until done or the server closes it; returns
/// whether it was closed before the last byte.
async fn drip(mut conn: tokio::net::TcpStream, bytes: &'static [u8], every: Duration) -> bool {
    use tokio::io::AsyncWriteExt as _;
    for b in bytes {
        if conn.write_all(&[*b]).await.is_err() {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    closed_within(&mut conn, Duration::from_millis(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_a_drip_fed_head_do_not_lock_out_a_new_client() {
    let http = client().build().unwrap();
    let dir = scratch("hostile-connections");
    let tokens = tokens_file(&dir);
    // 128 file descriptors, as in the report: 160 idle connections exhausted them.
    let args = flags(&[("--tokens", &tokens.display().to_string()), ("--header-timeout", "30")]);
    let r = Replica::start_limited(&http, "conns", &dir, &args, &[], Some(128)).await;
    assert!(r.logs().contains("--max-connections lowered"), "the cap follows the open-file limit: {}", r.logs());
    let addr = format!("127.0.0.1:{}", r.port);
    // 160 kept-alive connections, each idle after one quick request.
    let mut idle = Vec::new();
    let mut served = 0;
    for i in 0..160 {
        let connect = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&addr));
        let mut conn = connect.await.unwrap_or_else(|_| panic!("connection {i} was not accepted")).unwrap();
        match exchange(&mut conn, HEALTHZ).await {
            Some((200, _)) => served += 1,
            other => panic!("connection {i} was not served: {other:?}"),
        }
        idle.push(conn);
    }
    assert_eq!(served, 160, "each new connection was served, taking the place of an idle one");
    // And one that drips the head of its second request, a byte every 100 ms.
    let mut dripping = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(matches!(exchange(&mut dripping, HEALTHZ).await, Some((200, _))));
    let head: &'static [u8] = b"GET /healthz HTTP/1.1\r\nHost: a-long-host-name\r\n\r\n";
    let drip = tokio::spawn(drip(dripping, head, Duration::from_millis(100)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new client, on a new connection, is served within a second.
    let fresh = client().pool_max_idle_per_host(0).build().unwrap();
    answers_within_a_second(&fresh, &r, "160 idle connections and a drip-fed head").await;
    let text = r.metrics(&fresh).await;
    let open = metric(&text, "iam_join_connections");
    assert!(open <= 64.0, "{open} connections open under a cap of 64");
    assert!(metric(&text, "iam_join_connections_reclaimed_total") >= 96.0, "{text}");
    // The oldest idle connections were closed to make room.
    assert!(closed_within(&mut idle[0], Duration::from_secs(1)).await, "the longest idle connection is still open");
    // The drip-fed head is bounded by the head deadline (its own test); here it only must not
    // have stopped anyone.
    drip.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_head_has_a_deadline_and_idle_connections_are_closed() {
    let http = client().build().unwrap();
    let dir = scratch("hostile-heads");
    let tokens = tokens_file(&dir);
    let args = flags(&[("--tokens", &tokens.display().to_string()), ("--header-timeout", "1")]);
    let r = Replica::start(&http, "heads", &dir, &args).await;
    let addr = format!("127.0.0.1:{}", r.port);
    // Idle after one request: closed after the timeout, not kept for ever.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(matches!(exchange(&mut idle, HEALTHZ).await, Some((200, _))));
    let start = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(3)).await, "an idle kept-alive connection stayed open");
    assert!(start.elapsed() >= Duration::from_millis(800), "closed before its timeout: {:?}", start.elapsed());
    // The second request's head, dripped a byte every 200 ms (10 s in all): closed in time.
    let mut second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(matches!(exchange(&mut second, HEALTHZ).await, Some((200, _))));
    let start = Instant::now();
    let head: &'static [u8] = b"GET /healthz HTTP/1.1\r\nHost: a-host-name-long-enough\r\n\r\n";
    assert!(drip(second, head, Duration::from_millis(200)).await, "a dripped second head was read to the end");
    assert!(start.elapsed() < Duration::from_secs(4), "took {:?}", start.elapsed());
    // The first request's head too.
    let first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let start = Instant::now();
    assert!(drip(first, head, Duration::from_millis(200)).await);
    assert!(start.elapsed() < Duration::from_secs(4), "took {:?}", start.elapsed());
    // Positive control: a client that sends its head at once is answered.
    answers_within_a_second(&http, &r, "after the slow clients").await;
}

/// The refusal shape every error status of the API has.
fn assert_refusal_json(case: &str, (status, body): &(u16, Vec<u8>), want: u16) {
    assert_eq!(*status, want, "{case}: {}", String::from_utf8_lossy(body));
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("{case}: not JSON: {:?}", String::from_utf8_lossy(body)));
    assert_eq!(v["allowed"], false, "{case}: {v}");
    assert_eq!(v["error"]["kind"], "malformed_request", "{case}: {v}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{case}: {v}");
    assert!(v["error"]["retryable"].is_boolean(), "{case}: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_bounded_and_every_error_status_answers_json() {
    let http = client().build().unwrap();
    let dir = scratch("hostile-bodies");
    let tokens = tokens_file(&dir);
    let args = flags(&[("--tokens", &tokens.display().to_string()), ("--header-timeout", "1"), ("--timeout", "10")]);
    let r = Replica::start(&http, "bodies", &dir, &args).await;
    let addr = format!("127.0.0.1:{}", r.port);
    let on_new = |bytes: Vec<u8>| {
        let addr = addr.clone();
        async move {
            let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let start = Instant::now();
            let answer = exchange(&mut conn, &bytes).await.expect("an answer within 5 s");
            (answer, start.elapsed())
        }
    };
    let post = |path: &str, extra: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}\r\n{body}").into_bytes()
    };
    // Declared far too large, and never sent: 413 at once.
    let (answer, took) = on_new(post("/v1/join", "Content-Length: 10000000000\r\n", "")).await;
    assert_refusal_json("declared 10 GB", &answer, 413);
    assert!(took < Duration::from_secs(1), "413 took {took:?}");
    // Declared, partly sent, then silence: 408 within the body timeout, not the whole answer's.
    let (answer, took) = on_new(post("/v1/join", "Content-Length: 100\r\n", "{\"token\":")).await;
    assert_refusal_json("body never finished", &answer, 408);
    assert!(took < Duration::from_secs(3), "408 took {took:?}");
    // Chunked past the limit: 413.
    let chunk = format!("{:x}\r\n{}\r\n", 70 * 1024, "a".repeat(70 * 1024));
    let (answer, _) = on_new(post("/v1/join", "Transfer-Encoding: chunked\r\n", &format!("{chunk}0\r\n\r\n"))).await;
    assert_refusal_json("chunked 70 KiB", &answer, 413);
    // No such method, no such route.
    let (answer, _) = on_new(b"GET /v1/join HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()).await;
    assert_refusal_json("GET /v1/join", &answer, 405);
    let (answer, _) = on_new(b"GET /v2/join HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()).await;
    assert_refusal_json("GET /v2/join", &answer, 404);
    // Garbage request bytes with a valid challenge: the same answer whether the token exists.
    for token in ["iam-token", "no-such-token"] {
        let c = challenge(&http, &r, token).await;
        let body = serde_json::json!({"token": token, "challenge": c, "request": "aGVsbG8="}).to_string();
        let (answer, _) = on_new(post("/v1/join", &format!("Content-Length: {}\r\n", body.len()), &body)).await;
        assert_refusal_json(&format!("garbage request for {token}"), &answer, 400);
    }
    // Positive control: a well-formed challenge request is answered 200.
    let body = r#"{"token":"iam-token"}"#;
    let (answer, _) = on_new(post("/v1/challenge", &format!("Content-Length: {}\r\n", body.len()), body)).await;
    assert_eq!(answer.0, 200);
}
