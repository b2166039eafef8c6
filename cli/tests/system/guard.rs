//! Single use across replicas through a real Redis: `redis-server` (Debian's package) started by
//! the test on a loopback port and stopped by it. Two verifiers with their own connections stand
//! for two replicas. Redis is stopped mid-run (joins fail closed, retryably, and nothing reaches
//! STS) and restarted (joins work again, the guard reconnecting by itself).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use iam_join::agent::{JoinRequest, sign_join_request};
use iam_join::challenge::{ChallengeKey, ChallengeKeys};
use iam_join::emulator::StsEmulator;
use iam_join::{Challenge, Proof};
use iam_join::{
    EndpointOverride, ErrorKind, RedisReplayGuard, ReplayGuard, RequestPolicy, ReqwestTransport, TokenSet, Verifier,
};

use crate::common::fixtures::{TOKENS, principals, user};
use crate::common::redis::Redis;

fn keys() -> ChallengeKeys {
    ChallengeKeys::new(ChallengeKey::new("k1", vec![42; 32]).unwrap())
}

fn replica(sts: &StsEmulator, redis: &Redis) -> Verifier {
    let transport = ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap();
    Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap())
        .policy(RequestPolicy::new())
        .transport(transport)
        .challenge_keys(keys())
        .replay_guard(Arc::new(RedisReplayGuard::new(&redis.url()).unwrap()))
        .retries(0)
        .build()
}

fn fresh_join() -> Vec<u8> {
    let challenge = keys().issue("iam-token", SystemTime::now()).unwrap();
    sign_join_request(&user(), &JoinRequest::new(&challenge), SystemTime::now()).unwrap()
}

pub(crate) async fn single_use_across_replicas_through_redis_and_fail_closed_while_it_is_down() {
    let redis = Redis::start(None);
    let port = redis.port;
    let sts = StsEmulator::start(principals()).await.unwrap();

    // The guard itself: claim once, a second claim is refused, Redis expires claims.
    let guard = RedisReplayGuard::new(&redis.url()).unwrap();
    guard.ping().await.unwrap();
    let now = SystemTime::now();
    assert!(guard.claim("iam-join:test:a", now + Duration::from_secs(60), now).await.unwrap());
    assert!(!guard.claim("iam-join:test:a", now + Duration::from_secs(60), now).await.unwrap());
    assert!(guard.claim("iam-join:test:b", now + Duration::from_millis(150), now).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(guard.claim("iam-join:test:b", now + Duration::from_secs(60), now).await.unwrap(), "expired in Redis");

    // Two replicas with their own connections: a join at A, its replay at B and at A.
    let (a, b) = (replica(&sts, &redis), replica(&sts, &redis));
    let raw = fresh_join();
    a.verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&raw), SystemTime::now()).await.unwrap();
    for v in [&b, &a] {
        let e = v
            .verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&raw), SystemTime::now())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ChallengeReplayed, "{e}");
    }
    assert_eq!(sts.requests(), 1, "no replay reached STS");

    // Redis stops: joins fail closed, retryable, and nothing reaches STS.
    drop(redis);
    let e = b
        .verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&fresh_join()), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReplayStoreUnavailable, "{e}");
    assert!(e.is_retryable());
    assert!(!e.to_string().contains("redis://"), "the URL is never shown: {e}");
    assert_eq!(sts.requests(), 1);

    // Redis restarts on the same port: joins work again within a few seconds.
    let _redis = Redis::start(Some(port));
    let start = Instant::now();
    loop {
        match b.verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&fresh_join()), SystemTime::now()).await
        {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::ReplayStoreUnavailable && start.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("after the restart: {e}"),
        }
    }
    assert_eq!(sts.requests(), 2);
}

/// A proxy in front of Redis that forwards everything until the first `SET`, and then drops
/// the reply to it and both connections: the claim reached Redis, its answer never came back.
async fn lose_the_first_set_reply(redis_port: u16) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let lost = Arc::new(AtomicUsize::new(0));
    let lost_count = lost.clone();
    let done = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await else { continue };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let cut = Arc::new(AtomicBool::new(false));
            let (cut_up, done_up, lost_up) = (cut.clone(), done.clone(), lost_count.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = cr.read(&mut buf).await {
                    let is_set = buf[..n].windows(9).any(|w| w == b"$3\r\nSET\r\n");
                    if is_set && !done_up.swap(true, Ordering::SeqCst) {
                        cut_up.store(true, Ordering::SeqCst); // before Redis can answer
                        lost_up.fetch_add(1, Ordering::SeqCst);
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = sr.read(&mut buf).await {
                    if cut.load(Ordering::SeqCst) {
                        return; // the reply is dropped, and the connection with it
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, lost)
}

/// Issue 18: a claim whose reply was lost is retried on a new connection and recognised as the
/// same claim (its own value is under the key), not refused as a replay; and a guard whose
/// connection died while Redis restarted claims at its first attempt.
pub(crate) async fn claims_survive_a_lost_reply_and_a_redis_restart_at_the_first_attempt() {
    let redis = Redis::start(None);
    let port = redis.port;
    let now = SystemTime::now();
    let until = now + Duration::from_secs(60);

    let (proxy, lost) = lose_the_first_set_reply(port).await;
    let through_proxy = RedisReplayGuard::new(&format!("redis://127.0.0.1:{proxy}/")).unwrap();
    assert!(through_proxy.claim("iam-join:test:lost", until, now).await.unwrap(), "the retry is the same claim");
    assert_eq!(lost.load(std::sync::atomic::Ordering::SeqCst), 1, "the reply was lost once");
    assert!(!through_proxy.claim("iam-join:test:lost", until, now).await.unwrap(), "a second claim is a replay");
    let direct = RedisReplayGuard::new(&redis.url()).unwrap();
    assert!(!direct.claim("iam-join:test:lost", until, now).await.unwrap(), "held for every replica");

    // A guard with a live connection; Redis restarts while it is idle; its next claim works.
    assert!(direct.claim("iam-join:test:before", until, now).await.unwrap());
    drop(redis);
    let _redis = Redis::start(Some(port));
    assert!(direct.claim("iam-join:test:after", until, now).await.unwrap(), "the first claim after the restart failed");
}
