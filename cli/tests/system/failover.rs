//! Issue 23: single use across a Redis primary failover, on the real engines. A primary, two
//! replicas and three Sentinels (`redis-server`, `redis-server --sentinel`) on loopback ports,
//! two `iam-join serve` replicas that find the primary through the Sentinels. With
//! `--redis-min-replicas 1` a signed request allowed before the primary is killed is refused
//! after the promotion at every replica; joins during the failover fail closed; new joins work
//! after it. With 0, the same run documents what can be lost.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use iam_join::emulator::StsEmulator;
use serde_json::Value;

use crate::common::fixtures::{principals, user};
use crate::common::redis::Redis;
use crate::service::*;

/// One `redis-server` process (a data node or a Sentinel), killed when dropped or asked.
struct Node {
    process: Option<Redis>,
    port: u16,
}

impl Node {
    fn spawn(args: &[String], port: u16) -> Node {
        Node { process: Some(Redis::spawn(args, port)), port }
    }

    /// A data node; a replica of `primary` when given.
    fn data(primary: Option<u16>) -> Node {
        let port = free_port();
        let mut args: Vec<String> =
            ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
        if let Some(p) = primary {
            args.extend(["--replicaof".to_owned(), "127.0.0.1".to_owned(), p.to_string()]);
        }
        Self::spawn(&args, port)
    }

    /// A Sentinel watching `primary` as `joins`: down after 1 s, quorum 2.
    fn sentinel(dir: &Path, primary: u16) -> Node {
        let port = free_port();
        let conf = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor joins 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds joins 1000\nsentinel failover-timeout joins 4000\n\
                 sentinel parallel-syncs joins 2\n",
                dir.display()
            ),
        )
        .unwrap();
        Self::spawn(&[conf.display().to_string(), "--sentinel".to_owned()], port)
    }

    fn kill(&mut self) {
        self.process = None;
    }
}

/// The replication link between the primary and its replicas, through the test: it can be
/// frozen (the primary's stream is held, in order, so the replicas fall behind while the
/// primary still acknowledges every write) and cut (every held byte dropped with the
/// connections, as when the primary's machine is lost).
struct Link {
    port: u16,
    frozen: tokio::sync::watch::Sender<bool>,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    async fn start(primary: u16) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let (cut, _) = tokio::sync::watch::channel(false);
        let (f, c) = (frozen.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((replica, _)) = listener.accept().await {
                let (mut frozen, mut cut) = (f.subscribe(), c.subscribe());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    if *cut.borrow() {
                        return;
                    }
                    let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", primary)).await else { return };
                    let (mut from_primary, mut to_primary) = upstream.into_split();
                    let (mut from_replica, mut to_replica) = replica.into_split();
                    let acks = async { tokio::io::copy(&mut from_replica, &mut to_primary).await.map(|_| ()) };
                    let stream = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = from_primary.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<(), std::io::Error>(());
                            }
                            // Held while frozen; the bytes go on in order once thawed.
                            if frozen.wait_for(|f| !*f).await.is_err() {
                                return Ok(());
                            }
                            to_replica.write_all(&buf[..n]).await?;
                        }
                    };
                    tokio::select! {
                        _ = acks => {}
                        _ = stream => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Link { port, frozen, cut, task }
    }

    fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }

    fn cut(&self) {
        self.cut.send_replace(true);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn query(port: u16, cmd: &mut redis::Cmd) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    cmd.query_async(&mut conn).await
}

fn count(v: &redis::RedisResult<redis::Value>) -> usize {
    match v {
        Ok(redis::Value::Array(items)) => items.len(),
        _ => 0,
    }
}

/// Until `ready` holds, every 100 ms, at most `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ready().await {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The primary the Sentinel on `port` names.
async fn primary_port(port: u16) -> Option<u16> {
    let v = query(port, redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("joins")).await.ok()?;
    let redis::Value::Array(parts) = v else { return None };
    match parts.get(1)? {
        redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A primary, two replicas in sync through the [`Link`], three Sentinels that know all of them
/// and each other.
async fn cluster(dir: &Path) -> (Node, Link, [Node; 2], [Node; 3]) {
    let primary = Node::data(None);
    let link = Link::start(primary.port).await;
    let replicas = [Node::data(Some(link.port)), Node::data(Some(link.port))];
    until("both replicas in sync", Duration::from_secs(20), || async {
        let info = query(primary.port, redis::cmd("INFO").arg("replication")).await;
        let text = match info {
            Ok(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Ok(redis::Value::VerbatimString { text, .. }) => text,
            _ => String::new(),
        };
        text.lines().filter(|l| l.starts_with("slave") && l.contains("state=online")).count() == 2
    })
    .await;
    let sentinels =
        [Node::sentinel(dir, primary.port), Node::sentinel(dir, primary.port), Node::sentinel(dir, primary.port)];
    for s in &sentinels {
        until("the Sentinels know the replicas and each other", Duration::from_secs(30), || async {
            count(&query(s.port, redis::cmd("SENTINEL").arg("replicas").arg("joins")).await) == 2
                && count(&query(s.port, redis::cmd("SENTINEL").arg("sentinels").arg("joins")).await) == 2
        })
        .await;
    }
    (primary, link, replicas, sentinels)
}

/// The run, with `min_replicas`: the service replicas A and B find the primary through the
/// Sentinels; the replication link is frozen before the join that the failover tests, then the
/// primary is killed (its unreplicated writes lost with it) and a replica promoted. Returns the
/// answers, at A then B, to that join's signed request replayed after the failover.
async fn failover_run(min_replicas: &str) -> Vec<(u16, Value)> {
    let http = client().build().unwrap();
    let dir = scratch(&format!("failover-{min_replicas}"));
    let (tokens, keys) = tokens_and_keys(&dir);
    let (mut primary, link, _replicas, sentinels) = cluster(&dir).await;
    let url = format!(
        "redis+sentinel://{}/joins",
        sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect::<Vec<_>>().join(",")
    );
    let sts = StsEmulator::start(principals()).await.unwrap();
    let args = flags(&[
        ("--tokens", &tokens.display().to_string()),
        ("--challenge-key", &keys.display().to_string()),
        ("--redis", &url),
        ("--redis-min-replicas", min_replicas),
        ("--sts-endpoint", &sts.url()),
        ("--rate-limit", "0"),
    ]);
    let services = [Replica::start(&http, "a", &dir, &args).await, Replica::start(&http, "b", &dir, &args).await];
    for s in &services {
        until("ready through the Sentinels", Duration::from_secs(10), || async {
            http.get(s.url("/readyz")).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert_allowed("with the link up", &fresh_join(&http, s, s, &user()).await, USER_ARN);
    }
    let waits = min_replicas != "0";

    // The replicas fall behind: the primary acknowledges writes they do not get.
    link.freeze(true);
    let c = challenge(&http, &services[0], "iam-token").await;
    let mut before = join_body("iam-token", &c, &signed(&user(), &c, SystemTime::now()));
    if waits {
        // WAIT: a claim that reaches no replica fails the join closed; it is never allowed.
        let answer = join(&http, &services[0], &before).await;
        assert_refused("a claim no replica acknowledged", &answer, 503, "replay_store_unavailable");
        // Thawed, the held stream reaches the replicas: a join is allowed once its claim is
        // on one; then the link freezes again, so nothing after it is replicated.
        link.freeze(false);
        let c = challenge(&http, &services[0], "iam-token").await;
        before = join_body("iam-token", &c, &signed(&user(), &c, SystemTime::now()));
        assert_allowed("acknowledged by a replica", &join(&http, &services[0], &before).await, USER_ARN);
        link.freeze(true);
    } else {
        assert_allowed("acknowledged by the primary alone", &join(&http, &services[0], &before).await, USER_ARN);
    }
    let old = primary.port;
    primary.kill();
    link.cut();

    // During the failover every join fails closed (503 replay_store_unavailable) until one is
    // allowed again; with WAIT, the request allowed before is never allowed again.
    let started = Instant::now();
    let mut refused_during = 0;
    for s in &services {
        loop {
            if waits {
                let replay = join(&http, s, &before).await;
                assert_ne!(replay.0, 200, "the request allowed before was allowed again at {}: {}", s.name, replay.1);
            }
            let answer = fresh_join(&http, s, s, &user()).await;
            if answer.0 == 200 {
                assert_allowed("a new join after the failover", &answer, USER_ARN);
                break;
            }
            assert_refused(
                &format!("a join during the failover at {}", s.name),
                &answer,
                503,
                "replay_store_unavailable",
            );
            refused_during += 1;
            assert!(started.elapsed() < Duration::from_secs(45), "{}: joins did not resume: {}", s.name, s.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let resumed = started.elapsed();
    let promoted = primary_port(sentinels[0].port).await;
    assert!(promoted.is_some_and(|p| p != old), "the Sentinels promoted a replica ({promoted:?}, was {old})");
    println!(
        "failover (--redis-min-replicas {min_replicas}): joins resumed {:.1} s after the primary was killed; \
         {refused_during} joins failed closed meanwhile",
        resumed.as_secs_f64()
    );
    let mut after = Vec::new();
    for s in &services {
        after.push(join(&http, s, &before).await);
        assert_allowed("new joins keep working", &fresh_join(&http, s, s, &user()).await, USER_ARN);
    }
    after
}

/// With `--redis-min-replicas 1`: a join is allowed only once its claim is on a replica, so the
/// request allowed before the failover is refused after it at every replica.
pub(crate) async fn a_request_allowed_before_a_sentinel_failover_is_refused_after_it_at_every_replica() {
    for (i, answer) in failover_run("1").await.iter().enumerate() {
        assert_refused(&format!("the request allowed before, at replica {i} after"), answer, 403, "challenge_replayed");
    }
}

/// With 0 (no WAIT), what is lost: the claim of a join the primary acknowledged but did not
/// replicate before it died. Its signed request joins a second time, once (the second
/// replica's replay is refused: the first one claimed it again).
pub(crate) async fn without_min_replicas_a_failover_forgets_unreplicated_claims() {
    let after = failover_run("0").await;
    for (i, (status, body)) in after.iter().enumerate() {
        println!(
            "failover (--redis-min-replicas 0): the request allowed before, replayed at replica {i}: {status} {}",
            body["error"]["kind"]
        );
    }
    assert_eq!(after[0].0, 200, "the claim was lost with the primary: {}", after[0].1);
    assert_refused("the second replay", &after[1], 403, "challenge_replayed");
}
