//! The full pipeline: an agent request signed with aws-sigv4 test credentials → `verify` → the
//! loopback STS emulator (which checks the signature) → verdict, for an allowed join and each
//! refusal kind. Local refusals must not send anything: the emulator's request count says so.

use std::time::{Duration, SystemTime};

use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
use iam_join::emulator::{EmulatedPrincipal, StsEmulator};
use iam_join::{EndpointOverride, ErrorKind, RequestPolicy, ReqwestTransport, TokenSet, Verifier};

pub(crate) const USER_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
pub(crate) const USER_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
pub(crate) const ROLE_KEY: &str = "ASIAIOSFODNN7EXAMPLE";
pub(crate) const ROLE_SECRET: &str = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY";
pub(crate) const ROLE_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN//////////wEaCXVzLWVhc3QtMSJHMEUCIQD";

pub(crate) fn principals() -> Vec<EmulatedPrincipal> {
    vec![
        EmulatedPrincipal {
            access_key_id: USER_KEY.into(),
            secret_access_key: USER_SECRET.into(),
            session_token: None,
            arn: "arn:aws:iam::111111111111:user/ci-deployer".into(),
            user_id: "AIDAEXAMPLEUSERID0001".into(),
        },
        EmulatedPrincipal {
            access_key_id: ROLE_KEY.into(),
            secret_access_key: ROLE_SECRET.into(),
            session_token: Some(ROLE_TOKEN.into()),
            arn: "arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-0123456789abcdef0".into(),
            user_id: "AROAEXAMPLEROLEID0001:i-0123456789abcdef0".into(),
        },
        EmulatedPrincipal {
            access_key_id: "AKIAOTHERACCOUNT0001".into(),
            secret_access_key: "other-secret".into(),
            session_token: None,
            arn: "arn:aws:iam::999999999999:user/stranger".into(),
            user_id: "AIDAEXAMPLEUSERID0009".into(),
        },
    ]
}

pub(crate) const TOKENS: &str = r#"
kind: token
version: v2
metadata:
  name: iam-token
spec:
  roles: [Kube, App, Discovery]
  join_method: iam
  allow:
  - aws_account: "111111111111"
  - aws_account: "333333333333"
    aws_arn: "arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-*"
---
kind: token
version: v2
metadata:
  name: expired-token
  expires: "2020-01-01T00:00:00Z"
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_account: "111111111111"
"#;

pub(crate) fn user() -> Credentials {
    Credentials::new(USER_KEY, USER_SECRET, None)
}

pub(crate) fn role() -> Credentials {
    Credentials::new(ROLE_KEY, ROLE_SECRET, Some(ROLE_TOKEN.into()))
}

pub(crate) async fn setup() -> (StsEmulator, Verifier) {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let transport = ReqwestTransport::builder()
        .endpoint_override(EndpointOverride::Url(sts.url()))
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let tokens = TokenSet::from_yaml(TOKENS).unwrap();
    (sts, Verifier::new(tokens, RequestPolicy::new(), transport))
}

fn sign(creds: &Credentials, join: JoinRequest) -> Vec<u8> {
    sign_join_request(creds, &join, SystemTime::now()).unwrap()
}

#[tokio::test]
async fn allowed_user_by_account_rule_global_xml() {
    let (sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&user(), JoinRequest::new(&challenge));
    let verdict = v.verify("iam-token", &challenge, &raw, SystemTime::now()).await.unwrap();
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
    let verdict = v.verify("iam-token", &challenge, &raw, SystemTime::now()).await.unwrap();
    assert_eq!(verdict.matched_rule(), 1);
    assert_eq!(verdict.identity().account().as_str(), "333333333333");
    assert_eq!(sts.requests(), 1);
}

#[tokio::test]
async fn wrong_secret_is_signature_rejected() {
    let (sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&Credentials::new(USER_KEY, "not-the-secret", None), JoinRequest::new(&challenge));
    let e = v.verify("iam-token", &challenge, &raw, SystemTime::now()).await.unwrap_err();
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
    let e = v.verify("iam-token", &challenge, &raw, SystemTime::now()).await.unwrap_err();
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
    let e = v.verify("iam-token", &new, raw.as_bytes(), SystemTime::now()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SignatureRejected);
    assert_eq!(sts.requests(), 1);
}

#[tokio::test]
async fn other_challenge_is_refused_locally() {
    let (sts, v) = setup().await;
    let issued = iam_join::challenge::generate().unwrap();
    let other = iam_join::challenge::generate().unwrap();
    let raw = sign(&user(), JoinRequest::new(&other));
    let e = v.verify("iam-token", &issued, &raw, SystemTime::now()).await.unwrap_err();
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
    let e = v.verify("iam-token", &challenge, raw.as_bytes(), SystemTime::now()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UntrustedEndpoint);
    assert_eq!(sts.requests(), 0);
}

#[tokio::test]
async fn identity_matching_no_rule_is_not_allowed_and_kept_for_audit() {
    let (sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&Credentials::new("AKIAOTHERACCOUNT0001", "other-secret", None), JoinRequest::new(&challenge));
    let e = v.verify("iam-token", &challenge, &raw, SystemTime::now()).await.unwrap_err();
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
        let e = v.verify(token, &challenge, &raw, SystemTime::now()).await.unwrap_err();
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
    let e = v.verify("iam-token", &challenge, &raw, SystemTime::now()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RequestExpired);
    assert_eq!(sts.requests(), 0);
}

#[tokio::test]
async fn sans_io_prepare_and_conclude() {
    let (_sts, v) = setup().await;
    let challenge = iam_join::challenge::generate().unwrap();
    let raw = sign(&role(), JoinRequest::new(&challenge).region("eu-west-1"));
    let prepared = v.prepare("iam-token", &challenge, &raw, SystemTime::now()).unwrap();
    assert_eq!(prepared.request().url(), "https://sts.eu-west-1.amazonaws.com/");
    let body = std::fs::read(crate::common::vectors("sts/ok_assumed_role.xml")).unwrap();
    // The recorded identity is in account 123456789012, which this token does not allow.
    let e = v.conclude(&prepared, 200, Some("text/xml"), &body).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotAllowed);
    let body = br#"{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"333333333333","Arn":"arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-1","UserId":"AROAEXAMPLEROLEID0001:i-1"}}}"#;
    let verdict = v.conclude(&prepared, 200, Some("application/json"), body).unwrap();
    assert_eq!(verdict.matched_rule(), 1);
}
