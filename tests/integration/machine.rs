//! The state machine driven by hand, with only the public API: the STS step is reachable only
//! through a claim decision, a memory guard passed through refuses the replay, and a built
//! verifier's token swap reaches every clone (issue 20: the builder methods of a shared verifier
//! once forked its state).

use std::sync::Arc;
use std::time::SystemTime;

use iam_join::agent::{JoinRequest, sign_join_request};
use iam_join::{
    AwsCall, AwsTransport, Challenge, ClaimResult, Concluded, EndpointOverride, ErrorKind, MemoryReplayGuard, Proof,
    ReqwestTransport, TokenSet, Verifier,
};

use crate::common::fixtures::{TOKENS, principals, user};

const SECOND: &str = "kind: token\nversion: v2\nmetadata: {name: second}\nspec: {roles: [Kube], join_method: iam, allow: [{aws_account: \"111111111111\"}]}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_hand_the_sts_step_is_reached_only_through_a_claim() {
    let sts = iam_join::emulator::StsEmulator::start(principals()).await.unwrap();
    let http = ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap();
    // No guard and no transport configured: the caller drives every step.
    let verifier = Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap()).build();
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign_join_request(&user(), &JoinRequest::new(&challenge), SystemTime::now()).unwrap();
    let start = || verifier.start("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now());

    // A PendingClaim has no replay (the crate docs' compile_fail example); what it offers is
    // what single use needs: the key and how long to hold it.
    let pending = start().unwrap();
    assert!(pending.claim_key().starts_with("iam-join:c:") && !pending.claim_key().contains(&challenge));
    assert!(pending.claim_until() > SystemTime::now());
    assert_eq!(sts.requests(), 0, "nothing is sent before single use is decided");
    // A guard that says the claim was held already: refused, and still nothing sent.
    let e = start().unwrap().claimed(ClaimResult::AlreadyClaimed).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChallengeReplayed);
    assert_eq!(sts.requests(), 0);

    // A memory guard passed through the machine: the first join goes on, its replay is refused.
    let guard = MemoryReplayGuard::default();
    let claimed = pending.claim(&guard).await.unwrap();
    let answer = http.call(AwsCall::replay(claimed.replay().expect("a forwarded proof is replayed"))).await.unwrap();
    let Concluded::Allowed(verdict) = claimed.conclude(&answer).unwrap() else { panic!("no organization rule") };
    assert_eq!(verdict.identity().arn().as_str(), "arn:aws:iam::111111111111:user/ci-deployer");
    let e = start().unwrap().claim(&guard).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChallengeReplayed);
    assert_eq!(sts.requests(), 1, "the replay reached no STS");
    // Single use left to the caller is a decision too, made by name.
    let claimed = start().unwrap().single_use_by_caller();
    assert_eq!(claimed.replay().expect("replayed").endpoint().host(), "sts.amazonaws.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_swap_reaches_every_clone_of_a_fully_configured_verifier() {
    let sts = iam_join::emulator::StsEmulator::start(principals()).await.unwrap();
    let transport = ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap();
    // Every builder option set, then shared: clones made before and after a swap, on other tasks.
    let keys = iam_join::challenge::ChallengeKeys::new(iam_join::challenge::ChallengeKey::generate("k1").unwrap());
    let a = Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap())
        .transport(transport)
        .challenge_keys(keys.clone())
        .replay_guard(Arc::new(MemoryReplayGuard::default()))
        .retries(1)
        .deadline(std::time::Duration::from_secs(5))
        .build();
    let b = a.clone();
    let on_a_task = {
        let c = a.clone();
        tokio::spawn(async move { c })
    };
    let c = on_a_task.await.unwrap();
    assert!(a.tokens().get("second").is_none());
    b.replace_tokens(TokenSet::from_yaml(&format!("{TOKENS}---\n{SECOND}")).unwrap());
    let d = c.clone();
    for (name, v) in [("a", &a), ("b", &b), ("c", &c), ("d", &d)] {
        assert!(v.tokens().get("second").is_some(), "clone {name} does not see the swap");
        // And joins through every clone use the new set.
        let ch = keys.issue("second", SystemTime::now()).unwrap();
        let raw = sign_join_request(&user(), &JoinRequest::new(&ch), SystemTime::now()).unwrap();
        let verdict = v.verify("second", Challenge::Keyed(&ch), Proof::Forwarded(&raw), SystemTime::now()).await;
        assert_eq!(verdict.unwrap().token(), "second", "clone {name}");
    }
    // Positive control: the swap is a swap, not an addition that any set would pass.
    a.replace_tokens(TokenSet::from_yaml(TOKENS).unwrap());
    assert!(d.tokens().get("second").is_none());
}
