//! The full pipeline: an agent request signed with aws-sigv4 test credentials → `verify` → the
//! loopback STS emulator (which checks the signature) → verdict, for an allowed join and each
//! refusal kind. Local refusals must not send anything: the emulator's request count says so.

use std::time::{Duration, SystemTime};

use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
use iam_join::emulator::StsEmulator;
use iam_join::{Challenge, Proof};
use iam_join::{EndpointOverride, ErrorKind, RequestPolicy, ReqwestTransport, TokenSet, Verifier};

use crate::common::fixtures::*;

pub(crate) async fn setup() -> (StsEmulator, Verifier) {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let transport = ReqwestTransport::builder()
        .endpoint_override(EndpointOverride::Url(sts.url()))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let tokens = TokenSet::from_yaml(TOKENS).unwrap();
    (sts, Verifier::builder(tokens).policy(RequestPolicy::new()).transport(transport).build())
}

fn sign(creds: &Credentials, join: JoinRequest) -> Vec<u8> {
    sign_join_request(creds, &join, SystemTime::now()).unwrap()
}

#[tokio::test]
async fn allowed_user_by_account_rule_global_xml() {
    let (sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&user(), JoinRequest::new(&challenge));
    let verdict =
        v.verify("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now()).await.unwrap();
    assert_eq!(verdict.identity().arn().as_str(), "arn:aws:iam::111111111111:user/ci-deployer");
    assert_eq!(verdict.matched_rule(), 0);
    assert_eq!(verdict.token(), "iam-token");
    assert_eq!(verdict.roles().len(), 3);
    assert!(verdict.sts_request_id().is_some());
    assert_eq!(sts.requests(), 1);
}

#[tokio::test]
async fn allowed_assumed_role_regional_json_like_teleport() {
    let (sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&role(), JoinRequest::new(&challenge).region("us-west-2").accept_json(true));
    let text = String::from_utf8(raw.clone()).unwrap();
    assert!(
        text.contains(
            "SignedHeaders=accept;content-length;content-type;host;x-amz-date;x-amz-security-token;x-teleport-challenge"
        ),
        "{text}"
    );
    let verdict =
        v.verify("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now()).await.unwrap();
    assert_eq!(verdict.matched_rule(), 1);
    assert_eq!(verdict.identity().account().as_str(), "333333333333");
    assert_eq!(sts.requests(), 1);
}

#[tokio::test]
async fn wrong_secret_is_signature_rejected() {
    let (sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&Credentials::new(USER_KEY, "not-the-secret", None), JoinRequest::new(&challenge));
    let e = v
        .verify("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SignatureRejected, "{e}");
    assert_eq!(e.sts_error().unwrap().code, "SignatureDoesNotMatch");
    assert!(!e.to_string().contains("not-the-secret"));
    assert_eq!(sts.requests(), 1, "a refusal by STS is not retried");
}

#[tokio::test]
async fn unknown_access_key_is_signature_rejected() {
    let (_sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&Credentials::new("AKIAUNKNOWNKEY000001", "x", None), JoinRequest::new(&challenge));
    let e = v
        .verify("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SignatureRejected);
    assert_eq!(e.sts_error().unwrap().code, "InvalidClientTokenId");
}

#[tokio::test]
async fn challenge_swapped_in_after_signing_is_refused_by_sts() {
    // A captured request replayed with the server's new challenge: locally consistent, but the
    // signature no longer covers what is sent.
    let (sts, v) = setup().await;
    let old = iam_join::challenge::generate().unwrap();
    let new = iam_join::challenge::generate().unwrap();
    let raw = String::from_utf8(sign(&user(), JoinRequest::new(&old))).unwrap().replace(&old, &new);
    let e = v
        .verify("iam-token", Challenge::Plain(&new), Proof::Forwarded(raw.as_bytes()), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SignatureRejected);
    assert_eq!(sts.requests(), 1);
}

#[tokio::test]
async fn other_challenge_is_refused_locally() {
    let (sts, v) = setup().await;
    let issued = iam_join::challenge::generate().unwrap();
    let other = iam_join::challenge::generate().unwrap();
    let raw = sign(&user(), JoinRequest::new(&other));
    let e =
        v.verify("iam-token", Challenge::Plain(&issued), Proof::Forwarded(&raw), SystemTime::now()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ChallengeMismatch);
    assert_eq!(sts.requests(), 0, "nothing may leave the process");
}

#[tokio::test]
async fn untrusted_host_is_refused_locally() {
    let (sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = String::from_utf8(sign(&user(), JoinRequest::new(&challenge)))
        .unwrap()
        .replace("Host: sts.amazonaws.com", "Host: sts.amazonaws.com.evil.example");
    let e = v
        .verify("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(raw.as_bytes()), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UntrustedEndpoint);
    assert_eq!(sts.requests(), 0);
}

#[tokio::test]
async fn identity_matching_no_rule_is_not_allowed_and_kept_for_audit() {
    let (sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&Credentials::new("AKIAOTHERACCOUNT0001", "other-secret", None), JoinRequest::new(&challenge));
    let e = v
        .verify("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotAllowed);
    assert_eq!(e.identity().unwrap().arn().as_str(), "arn:aws:iam::999999999999:user/stranger");
    assert_eq!(sts.requests(), 1);
}

#[tokio::test]
async fn token_problems_are_refused_before_any_network_work() {
    let (sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&user(), JoinRequest::new(&challenge));
    for token in ["expired-token", "no-such-token"] {
        let e =
            v.verify(token, Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TokenInvalid, "{token}: {e}");
    }
    assert_eq!(sts.requests(), 0);
}

#[tokio::test]
async fn stale_request_is_expired_locally() {
    let (sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw =
        sign_join_request(&user(), &JoinRequest::new(&challenge), SystemTime::now() - Duration::from_secs(16 * 60))
            .unwrap();
    let e = v
        .verify("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RequestExpired);
    assert_eq!(sts.requests(), 0);
}

#[tokio::test]
async fn sans_io_prepare_and_conclude() {
    let (_sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&role(), JoinRequest::new(&challenge).region("eu-west-1"));
    let pending =
        v.start("iam-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now()).unwrap();
    let claimed = pending.single_use_by_caller();
    assert_eq!(claimed.replay().expect("replayed").url(), "https://sts.eu-west-1.amazonaws.com/");
    let answer = |content_type: &str, body: Vec<u8>| iam_join::HttpAnswer::new(200, Some(content_type), body);
    let body = std::fs::read(crate::common::vectors("sts/ok_assumed_role.xml")).unwrap();
    // The recorded identity is in account 123456789012, which this token does not allow.
    let e = claimed.conclude(&answer("text/xml", body)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotAllowed);
    assert_eq!(e.identity().unwrap().account().as_str(), "123456789012");
    let body = br#"{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"333333333333","Arn":"arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-1","UserId":"AROAEXAMPLEROLEID0001:i-1"}}}"#;
    let verdict = claimed.conclude(&answer("application/json", body.to_vec())).unwrap().into_verdict().unwrap();
    assert_eq!(verdict.matched_rule(), 1);
}

/// A server that looked a missing challenge up as "" (or issued a short one) must not admit an
/// agent that signed exactly that value: the verifier refuses the issued challenge itself, as a
/// setup mistake, before reading the request or sending anything.
#[tokio::test]
async fn empty_or_short_issued_challenges_are_refused_even_when_signed() {
    let (sts, v) = setup().await;
    for issued in ["", "short", &"x".repeat(iam_join::challenge::MIN_CHALLENGE_LEN - 1)] {
        let raw = sign(&user(), JoinRequest::new(issued));
        let e = v
            .verify("iam-token", Challenge::Plain(issued), Proof::Forwarded(&raw), SystemTime::now())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{issued:?}: {e}");
        assert!(e.detail().contains("at least 22 characters"), "{e}");
        assert!(!e.to_string().contains(issued) || issued.is_empty(), "the challenge is not echoed");
    }
    assert_eq!(sts.requests(), 0);
    // Positive control: the shortest accepted challenge, signed, joins.
    let issued = "x".repeat(iam_join::challenge::MIN_CHALLENGE_LEN);
    let raw = sign(&user(), JoinRequest::new(&issued));
    v.verify("iam-token", Challenge::Plain(&issued), Proof::Forwarded(&raw), SystemTime::now()).await.unwrap();
}

/// A transport of the caller's own, built only from the public API, that cannot connect:
/// the refusal is `sts_unavailable`, retryable, with the connection error as its source.
#[derive(Debug)]
struct OwnTransport(std::net::SocketAddr);

impl iam_join::AwsTransport for OwnTransport {
    fn call<'a>(
        &'a self,
        _call: iam_join::AwsCall<'a>,
    ) -> iam_join::BoxFuture<'a, Result<iam_join::HttpAnswer, iam_join::Error>> {
        Box::pin(async move {
            match tokio::net::TcpStream::connect(self.0).await {
                Ok(_) => unreachable!("the port is closed"),
                Err(e) => Err(iam_join::Error::sts_unavailable("own transport", e)),
            }
        })
    }
}

#[tokio::test]
async fn a_custom_transport_reports_a_refused_connection_as_sts_unavailable_with_its_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let v = Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap())
        .policy(RequestPolicy::new())
        .transport(OwnTransport(addr))
        .retries(1)
        .build();
    let c = iam_join::challenge::generate().unwrap();
    let e = v
        .verify(
            "iam-token",
            Challenge::Plain(&c),
            Proof::Forwarded(&sign(&user(), JoinRequest::new(&c))),
            SystemTime::now(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StsUnavailable, "{e}");
    assert!(e.is_retryable());
    assert!(e.detail().starts_with("own transport could not reach STS"), "{e}");
    let source = std::error::Error::source(&e).expect("the cause is kept");
    let io = source.downcast_ref::<std::io::Error>().expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    // The same with the machine driven by hand, on a verifier without a transport.
    let v = Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap()).build();
    let raw = sign(&user(), JoinRequest::new(&c));
    let claimed = v
        .start("iam-token", Challenge::Plain(&c), Proof::Forwarded(&raw), SystemTime::now())
        .unwrap()
        .single_use_by_caller();
    let own = OwnTransport(addr);
    let e = iam_join::AwsTransport::call(
        &own,
        iam_join::AwsCall::replay(claimed.replay().expect("a forwarded proof is replayed")),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StsUnavailable);
    // verify on a verifier without a transport is a setup mistake, not a join outcome.
    let e = v.verify("iam-token", Challenge::Plain(&c), Proof::Forwarded(b""), SystemTime::now()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
}

/// Two token sets that name the same token: which set a verdict came from shows in its roles
/// and its matched rule together, so a verification that mixed the sets would show.
const SET_A: &str = "kind: token\nversion: v2\nmetadata:\n  name: iam-token\nspec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_account: \"111111111111\"\n";
const SET_B: &str = "kind: token\nversion: v2\nmetadata:\n  name: iam-token\nspec:\n  roles: [Kube]\n  join_method: iam\n  allow:\n  - aws_account: \"999999999999\"\n  - aws_account: \"111111111111\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_tokens_under_64_concurrent_verifications_loses_and_mixes_nothing() {
    use iam_join::Role;
    let (sts, v) = setup().await;
    v.replace_tokens(TokenSet::from_yaml(SET_A).unwrap());
    let (a, b) = (TokenSet::from_yaml(SET_A).unwrap(), TokenSet::from_yaml(SET_B).unwrap());
    let swapper = {
        let v = v.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                v.replace_tokens(if i % 2 == 0 { b.clone() } else { a.clone() });
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..4 {
                let c = iam_join::challenge::generate().unwrap();
                let raw = sign(&user(), JoinRequest::new(&c));
                let verdict = v
                    .verify("iam-token", Challenge::Plain(&c), Proof::Forwarded(&raw), SystemTime::now())
                    .await
                    .expect("no join is lost");
                seen.push((verdict.roles().to_vec(), verdict.matched_rule()));
            }
            seen
        }));
    }
    let (mut from_a, mut from_b) = (0, 0);
    for t in tasks {
        for (roles, rule) in t.await.unwrap() {
            match (roles.as_slice(), rule) {
                ([Role::Node], 0) => from_a += 1,
                ([Role::Kube], 1) => from_b += 1,
                other => panic!("a verdict mixed the token sets: {other:?}"),
            }
        }
    }
    swapper.await.unwrap();
    assert_eq!(from_a + from_b, 256);
    assert_eq!(sts.requests(), 256);
    assert!(from_a > 0 && from_b > 0, "both sets served joins ({from_a} / {from_b})");
}
