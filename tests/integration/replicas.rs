//! Joins across replicas in one process: keyed challenges any replica can check, and single use
//! through one shared replay guard (the in-memory one here, standing in for a shared store).
//! Nothing refused as a replay, a forged or expired challenge, or for want of the store may
//! reach STS: the emulator's request count says so.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iam_join::agent::{JoinRequest, sign_join_request};
use iam_join::challenge::{ChallengeKey, ChallengeKeys};
use iam_join::emulator::StsEmulator;
use iam_join::{
    BoxFuture, EndpointOverride, Error, ErrorKind, MemoryReplayGuard, ReplayGuard, RequestPolicy, ReqwestTransport,
    TokenSet, Verifier,
};
use iam_join::{Challenge, Proof};

use crate::common::fixtures::{TOKENS, principals, user};

fn keys() -> ChallengeKeys {
    ChallengeKeys::new(ChallengeKey::new("k1", vec![42; 32]).unwrap())
}

fn replica(sts: &StsEmulator, guard: Arc<dyn ReplayGuard>) -> Verifier {
    let transport = ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap();
    Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap())
        .policy(RequestPolicy::new())
        .transport(transport)
        .challenge_keys(keys())
        .replay_guard(guard)
        .build()
}

fn signed(challenge: &str) -> Vec<u8> {
    sign_join_request(&user(), &JoinRequest::new(challenge), SystemTime::now()).unwrap()
}

#[tokio::test]
async fn a_challenge_from_one_replica_joins_once_at_any_other() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let guard: Arc<dyn ReplayGuard> = Arc::new(MemoryReplayGuard::default());
    let (a, b, c) = (replica(&sts, guard.clone()), replica(&sts, guard.clone()), replica(&sts, guard));
    let now = SystemTime::now();

    // Replica A issues; B redeems: allowed.
    let challenge = keys().issue("iam-token", now).unwrap();
    let raw = signed(&challenge);
    let verdict = b.verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&raw), now).await.unwrap();
    assert_eq!(verdict.identity().account().as_str(), "111111111111");
    assert_eq!(sts.requests(), 1);

    // The same signed request again, at C and at B: a replay, refused before STS.
    for replica in [&c, &b, &a] {
        let e = replica.verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&raw), now).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ChallengeReplayed, "{e}");
        assert!(!e.is_retryable());
        assert!(!e.to_string().contains(&challenge), "the challenge is not echoed");
    }
    assert_eq!(sts.requests(), 1, "no replay reached STS");

    // Issued for another token, expired, or forged: challenge_mismatch, before the claim.
    let other = keys().issue("expired-token", now).unwrap();
    let e = a.verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&signed(&other)), now).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChallengeMismatch);
    assert!(e.detail().contains("another token"), "{e}");
    let old = keys().issue("iam-token", now - Duration::from_secs(301)).unwrap();
    let e = a.verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&signed(&old)), now).await.unwrap_err();
    assert!(e.kind() == ErrorKind::ChallengeMismatch && e.detail().contains("expired"), "{e}");
    let forged = ChallengeKeys::new(ChallengeKey::new("k1", vec![7; 32]).unwrap()).issue("iam-token", now).unwrap();
    let e =
        a.verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&signed(&forged)), now).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChallengeMismatch);
    // A plain challenge is not a keyed one.
    let plain = iam_join::challenge::generate().unwrap();
    assert_eq!(
        a.verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&signed(&plain)), now)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::ChallengeMismatch
    );
    assert_eq!(sts.requests(), 1);

    // Positive control: a fresh challenge joins at A.
    let fresh = keys().issue("iam-token", now).unwrap();
    a.verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&signed(&fresh)), now).await.unwrap();
    assert_eq!(sts.requests(), 2);

    // Plain challenges, issued and passed in by the caller, are claimed the same way.
    let plain = iam_join::challenge::generate().unwrap();
    let raw = signed(&plain);
    a.verify("iam-token", Challenge::Plain(&plain), Proof::Forwarded(&raw), now).await.unwrap();
    assert_eq!(
        b.verify("iam-token", Challenge::Plain(&plain), Proof::Forwarded(&raw), now).await.unwrap_err().kind(),
        ErrorKind::ChallengeReplayed
    );
    assert_eq!(sts.requests(), 3);
}

/// A store that cannot answer, built only from the public API.
#[derive(Debug)]
struct Down;

impl ReplayGuard for Down {
    fn claim<'a>(&'a self, _: &'a str, _: SystemTime, _: SystemTime) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async { Err(Error::new_replay_store_unavailable("the store is down")) })
    }
}

#[tokio::test]
async fn a_store_that_cannot_answer_fails_joins_closed_and_retryable() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let v = replica(&sts, Arc::new(Down));
    let challenge = keys().issue("iam-token", SystemTime::now()).unwrap();
    let e = v
        .verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&signed(&challenge)), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReplayStoreUnavailable);
    assert!(e.is_retryable());
    assert_eq!(sts.requests(), 0, "nothing is sent without a claim");
    // Without a key ring, keyed verification is a setup mistake.
    let plain = Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap())
        .policy(RequestPolicy::new())
        .transport(ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap())
        .build();
    let e = plain
        .verify("iam-token", Challenge::KeyedInRequest, Proof::Forwarded(&signed(&challenge)), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
}
