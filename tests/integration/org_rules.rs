//! Organization rules end to end: STS is the loopback emulator, and AWS Organizations a loopback
//! fake answering `DescribeAccount` / `ListParents` (AWS JSON 1.1) from a small tree, with
//! failure modes. Include, exclude, `*`, nested OUs, accounts outside any organization and in
//! another organization, each lookup failure, the cache, and that tokens without organization
//! rules never call Organizations.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
use iam_join::emulator::StsEmulator;
use iam_join::organizations::OrganizationsClient;
use iam_join::{
    AwsCall, AwsTransport, Concluded, EndpointOverride, ErrorKind, RequestPolicy, ReqwestTransport, TokenSet, Verifier,
};
use iam_join::{Challenge, Proof};

use crate::common::loopback::Loopback;
use tokio::net::TcpListener;

use crate::common::organizations::{Mode, ORG, PROD, PROD_WEB, key, organizations, principals};

fn tokens() -> TokenSet {
    TokenSet::from_yaml(&format!(
        r#"kind: token
version: v2
metadata:
  name: prod-not-web
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_organization_id: {ORG}
    aws_organizational_units: {{include: [{PROD}], exclude: [{PROD_WEB}]}}
---
kind: token
version: v2
metadata:
  name: whole-org
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_organization_id: {ORG}
    aws_organizational_units: {{include: ["*"]}}
---
kind: token
version: v2
metadata:
  name: dev-users-only
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_organization_id: {ORG}
    aws_arn: "arn:aws:iam::*:user/dev"
---
kind: token
version: v2
metadata:
  name: plain
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_account: "222222222222"
"#
    ))
    .unwrap()
}

async fn setup(mode: Mode) -> (StsEmulator, Loopback, Verifier) {
    let (sts, org, v, _) = setup_both(mode).await;
    (sts, org, v)
}

/// The async verifier, and the same setup driven by hand through the sans-IO state machine.
async fn setup_both(mode: Mode) -> (StsEmulator, Loopback, Verifier, SansIo) {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let org = organizations(mode).await;
    let sts_transport =
        Arc::new(ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap());
    let org_transport = ReqwestTransport::builder()
        .endpoint_override(EndpointOverride::Url(org.url()))
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let reader = Credentials::new("AKIAORGREADER000000", "org-reader-secret", None);
    let client = Arc::new(OrganizationsClient::new(reader, org_transport));
    let v = Verifier::builder(tokens())
        .policy(RequestPolicy::new())
        .shared_transport(sts_transport.clone())
        .organizations(client.clone())
        .build();
    let sans_io =
        SansIo { v: Verifier::builder(tokens()).policy(RequestPolicy::new()).build(), sts: sts_transport, client };
    (sts, org, v, sans_io)
}

/// A caller with its own loop: prepare, send, conclude, and when asked, look the membership up
/// and resume. It uses only the public API.
struct SansIo {
    v: Verifier,
    sts: Arc<ReqwestTransport>,
    client: Arc<OrganizationsClient>,
}

impl SansIo {
    async fn verify(
        &self,
        token: &str,
        c: &str,
        raw: &[u8],
        now: SystemTime,
    ) -> Result<iam_join::Verdict, iam_join::Error> {
        let claimed = self.v.start(token, Challenge::Plain(c), Proof::Forwarded(raw), now)?.single_use_by_caller();
        let answer = self.sts.call(AwsCall::replay(claimed.replay().expect("a forwarded proof is replayed"))).await?;
        match claimed.conclude(&answer)? {
            Concluded::Allowed(verdict) => Ok(verdict),
            Concluded::NeedsMembership(query) => {
                let membership = self.client.membership(query.partition(), query.account(), now).await;
                match membership {
                    Ok(m) => query.resume(&m),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

fn signed(account: &str) -> (String, Vec<u8>) {
    let c = iam_join::challenge::generate().unwrap();
    let creds = Credentials::new(key(account), format!("secret-{account}"), None);
    let raw = sign_join_request(&creds, &JoinRequest::new(&c), SystemTime::now()).unwrap();
    (c, raw)
}

async fn join(v: &Verifier, token: &str, account: &str) -> Result<iam_join::Verdict, iam_join::Error> {
    let (c, raw) = signed(account);
    v.verify(token, Challenge::Plain(&c), Proof::Forwarded(&raw), SystemTime::now()).await
}

async fn join_sans_io(d: &SansIo, token: &str, account: &str) -> Result<iam_join::Verdict, iam_join::Error> {
    let (c, raw) = signed(account);
    d.verify(token, &c, &raw, SystemTime::now()).await
}

#[tokio::test]
async fn include_exclude_star_nesting_and_outsiders() {
    let (_sts, org, v, sans_io) = setup_both(Mode::Normal).await;
    let table: &[(&str, &str, bool)] = &[
        ("prod-not-web", "333333333333", true),  // directly under the included OU
        ("prod-not-web", "222222222222", false), // nested under it, but also under the excluded OU
        ("prod-not-web", "444444444444", false), // another OU
        ("prod-not-web", "555555555555", false), // in no organization
        ("prod-not-web", "666666666666", false), // another organization
        ("whole-org", "222222222222", true),     // "*": anywhere in the organization
        ("whole-org", "444444444444", true),
        ("whole-org", "666666666666", false),
        ("whole-org", "555555555555", false),
        ("dev-users-only", "444444444444", true), // organization AND the ARN pattern
        ("dev-users-only", "333333333333", false),
    ];
    // The same table through verify and through the sans-IO state machine driven by hand.
    for sans in [false, true] {
        for &(token, account, allowed) in table {
            let r = if sans { join_sans_io(&sans_io, token, account).await } else { join(&v, token, account).await };
            match (allowed, r) {
                (true, Ok(verdict)) => assert_eq!(verdict.matched_rule(), 0),
                (false, Err(e)) => {
                    assert_eq!(e.kind(), ErrorKind::NotAllowed, "{token} {account} (sans-IO: {sans}): {e}");
                    assert!(e.identity().is_some());
                }
                (want, got) => panic!("{token} {account} (sans-IO: {sans}): wanted allowed={want}, got {got:?}"),
            }
        }
    }
    assert!(org.requests() > 0, "organization rules were looked up");
}

#[tokio::test]
async fn lookups_are_cached_and_skipped_when_not_needed() {
    let (_sts, org, v) = setup(Mode::Normal).await;
    join(&v, "whole-org", "333333333333").await.unwrap();
    let after_first = org.requests();
    assert_eq!(after_first, 3, "DescribeAccount and two ListParents");
    for _ in 0..5 {
        join(&v, "whole-org", "333333333333").await.unwrap();
    }
    assert_eq!(org.requests(), after_first, "cached");
    // A token set swapped in keeps the Organizations cache (and the transport's pool).
    v.replace_tokens(tokens());
    join(&v, "whole-org", "333333333333").await.unwrap();
    assert_eq!(org.requests(), after_first, "still cached after replace_tokens");
    // A rule whose cheaper fields fail never looks up.
    join(&v, "dev-users-only", "222222222222").await.unwrap_err();
    assert_eq!(org.requests(), after_first);
    // A token without organization rules never touches Organizations.
    join(&v, "plain", "222222222222").await.unwrap();
    assert_eq!(org.requests(), after_first);
}

#[tokio::test]
async fn lookup_failures_refuse_with_lookup_failed() {
    for (mode, retryable, says) in
        [(Mode::Denied, false, "organizations:DescribeAccount"), (Mode::Throttled, true, "throttled")]
    {
        let (_sts, _org, v, sans_io) = setup_both(mode).await;
        let e = join(&v, "whole-org", "333333333333").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LookupFailed, "{e}");
        assert_eq!(e.is_retryable(), retryable);
        assert!(e.detail().contains(says), "{e}");
        assert!(e.identity().is_some(), "the verified identity is kept for audit");
        let e = join_sans_io(&sans_io, "whole-org", "333333333333").await.unwrap_err();
        assert_eq!((e.kind(), e.is_retryable()), (ErrorKind::LookupFailed, retryable), "sans-IO: {e}");
    }
    // Unreachable.
    let sts = StsEmulator::start(principals()).await.unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let v = Verifier::builder(tokens())
        .policy(RequestPolicy::new())
        .transport(ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap())
        .organizations(OrganizationsClient::new(
            Credentials::new("AKIAORGREADER000000", "x", None),
            ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(dead)).build().unwrap(),
        ))
        .build();
    let e = join(&v, "whole-org", "333333333333").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LookupFailed);
    assert!(e.is_retryable());
}

#[tokio::test]
async fn without_a_client_organization_tokens_are_refused_before_network() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let v = Verifier::builder(tokens())
        .policy(RequestPolicy::new())
        .transport(ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap())
        .build();
    let e = join(&v, "whole-org", "333333333333").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TokenInvalid);
    assert_eq!(sts.requests(), 0);
    join(&v, "plain", "222222222222").await.unwrap();
}
