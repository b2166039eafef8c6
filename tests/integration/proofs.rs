//! The presigned URL and the web identity token, end to end against the SigV4-checking emulator:
//! a presigned URL joins (URL and EKS token), the same URL for another challenge is refused by
//! STS, a duplicated query key is refused before anything is sent; a web identity token joins
//! with no STS request at join time, from the issuer's keys fetched once and cached, and still
//! joins once the emulator is gone.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iam_join::agent::{AwsChain, DEFAULT_PRESIGN_EXPIRES, JoinRequest, eks_token, presign_join_url};
use iam_join::emulator::StsEmulator;
use iam_join::{
    Challenge, EndpointOverride, ErrorKind, JwksCache, MemoryReplayGuard, Proof, ReqwestTransport, TokenSet, Verifier,
    WebIdentityPolicy,
};

use crate::common::fixtures::{TOKENS, principals, user};

const AUDIENCE: &str = "https://join.example.com";

fn verifier(sts: &StsEmulator, web: Option<WebIdentityPolicy>) -> Verifier {
    let http = ReqwestTransport::builder().endpoint_override(EndpointOverride::Url(sts.url())).build().unwrap();
    let mut b = Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap())
        .transport(http)
        .replay_guard(Arc::new(MemoryReplayGuard::default()));
    if let Some(web) = web {
        b = b.web_identity(web).jwks(Arc::new(JwksCache::new().unwrap()));
    }
    b.build()
}

fn presigned(challenge: &str) -> String {
    presign_join_url(
        &user(),
        &JoinRequest::new(challenge).region("us-east-1"),
        DEFAULT_PRESIGN_EXPIRES,
        SystemTime::now(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presigned_url_joins_and_sts_refuses_it_for_another_challenge() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let v = verifier(&sts, None);
    let verify = |c: String, proof: String| {
        let v = v.clone();
        async move {
            v.verify("iam-token", Challenge::Plain(&c), Proof::Presigned(proof.as_bytes()), SystemTime::now()).await
        }
    };
    // Positive controls: the URL, and the EKS token of another URL.
    let c1 = iam_join::challenge::generate().unwrap();
    let verdict = verify(c1.clone(), presigned(&c1)).await.unwrap();
    assert_eq!(verdict.identity().arn().as_str(), "arn:aws:iam::111111111111:user/ci-deployer");
    let c2 = iam_join::challenge::generate().unwrap();
    assert!(verify(c2.clone(), eks_token(&presigned(&c2))).await.is_ok());
    assert_eq!(sts.requests(), 2);

    // The same URL, verified for another issued challenge: STS sees a signature that does not
    // match the header the server sets, and refuses.
    let c3 = iam_join::challenge::generate().unwrap();
    let other = iam_join::challenge::generate().unwrap();
    let e = verify(other, presigned(&c3)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SignatureRejected, "{e}");
    assert_eq!(sts.requests(), 3, "the replay reached STS, which refused it");

    // A duplicated query key, in another letter case: refused here, nothing sent.
    let c4 = iam_join::challenge::generate().unwrap();
    let dup = presigned(&c4).replace("?Action=GetCallerIdentity", "?Action=GetCallerIdentity&action=GetCallerIdentity");
    let e = verify(c4, dup).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MalformedRequest);
    assert!(e.detail().contains("CVE-2022-2385"), "{e}");
    assert_eq!(sts.requests(), 3, "nothing was sent for the duplicated key");

    // The same URL twice: the second is a replay.
    let c5 = iam_join::challenge::generate().unwrap();
    let url = presigned(&c5);
    assert!(verify(c5.clone(), url.clone()).await.is_ok());
    assert_eq!(verify(c5, url).await.unwrap_err().kind(), ErrorKind::ChallengeReplayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_identity_token_joins_offline_from_cached_keys() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let issuer = sts.issuer_url("111111111111");
    let web = WebIdentityPolicy::new(AUDIENCE).unwrap().issuer("111111111111", &issuer).unwrap();
    let v = verifier(&sts, Some(web));
    let agent =
        AwsChain::new().credentials(user()).region("us-east-1").sts_endpoint_url(sts.url()).load().await.unwrap();
    let token = |c: String, alg: &'static str| {
        let agent = &agent;
        async move { agent.web_identity_token(&[AUDIENCE, c.as_str()], alg, Some(Duration::from_secs(300))).await.unwrap() }
    };
    let c1 = iam_join::challenge::generate().unwrap();
    let jwt = token(c1.clone(), "RS256").await;
    let minted = sts.requests();
    let verdict =
        v.verify("iam-token", Challenge::Plain(&c1), Proof::WebIdentityToken(jwt.as_bytes()), SystemTime::now()).await;
    let verdict = verdict.unwrap();
    assert_eq!(verdict.identity().arn().as_str(), "arn:aws:iam::111111111111:user/ci-deployer");
    assert_eq!(sts.requests() - minted, 2, "the OpenID configuration and the JWKS, once; no STS call");

    // ES384, and another join: the keys come from the cache.
    let c2 = iam_join::challenge::generate().unwrap();
    let jwt2 = token(c2.clone(), "ES384").await;
    let c3 = iam_join::challenge::generate().unwrap();
    let jwt3 = token(c3.clone(), "RS256").await;
    let before = sts.requests();
    assert!(
        v.verify("iam-token", Challenge::Plain(&c2), Proof::WebIdentityToken(jwt2.as_bytes()), SystemTime::now())
            .await
            .is_ok()
    );
    assert_eq!(sts.requests(), before, "cached keys: nothing fetched");

    // The emulator (STS and the issuer) is gone: a join still verifies from the cached keys.
    drop(sts);
    let verdict =
        v.verify("iam-token", Challenge::Plain(&c3), Proof::WebIdentityToken(jwt3.as_bytes()), SystemTime::now()).await;
    assert!(verdict.is_ok(), "{verdict:?}");
    // The same token again is a replay, caught by the claim.
    let again =
        v.verify("iam-token", Challenge::Plain(&c3), Proof::WebIdentityToken(jwt3.as_bytes()), SystemTime::now()).await;
    assert_eq!(again.unwrap_err().kind(), ErrorKind::ChallengeReplayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_identity_keys_that_cannot_be_fetched_fail_closed_and_retryably() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    // The issuer pinned for the account is not where the token's keys are: a dead port.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/issuers/111111111111", l.local_addr().unwrap())
    };
    let agent =
        AwsChain::new().credentials(user()).region("us-east-1").sts_endpoint_url(sts.url()).load().await.unwrap();
    let c = iam_join::challenge::generate().unwrap();
    let jwt = agent.web_identity_token(&[AUDIENCE, c.as_str()], "RS256", None).await.unwrap();
    // iss is the emulator's issuer, pinned is the dead one: untrusted, nothing fetched.
    let v = verifier(&sts, Some(WebIdentityPolicy::new(AUDIENCE).unwrap().issuer("111111111111", &dead).unwrap()));
    let e =
        v.verify("iam-token", Challenge::Plain(&c), Proof::WebIdentityToken(jwt.as_bytes()), SystemTime::now()).await;
    assert_eq!(e.unwrap_err().kind(), ErrorKind::UntrustedEndpoint);
    // The right issuer, unreachable once the emulator is gone and nothing is cached:
    // sts_unavailable, retryable.
    let v = verifier(
        &sts,
        Some(
            WebIdentityPolicy::new(AUDIENCE).unwrap().issuer("111111111111", &sts.issuer_url("111111111111")).unwrap(),
        ),
    );
    drop(sts);
    let e = v
        .verify("iam-token", Challenge::Plain(&c), Proof::WebIdentityToken(jwt.as_bytes()), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StsUnavailable, "{e}");
    assert!(e.is_retryable());
}

/// An issuer that serves `discovery` (with `{base}` replaced by its own URL) and the emulator's
/// JWKS, or answers the discovery with `status` and a Location.
async fn scripted_issuer(discovery: &'static str, status: u16, jwks_from: String) -> crate::common::loopback::Loopback {
    use tokio::io::AsyncWriteExt as _;
    let base = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    let b = base.clone();
    let server = crate::common::loopback::Loopback::start(move |mut conn, request| {
        let (b, jwks_from) = (b.clone(), jwks_from.clone());
        async move {
            let head = String::from_utf8_lossy(&request).into_owned();
            let base = b.get().cloned().unwrap_or_default();
            let reply = if head.contains("/.well-known/openid-configuration ") && status != 200 {
                format!(
                    "HTTP/1.1 {status} X\r\nLocation: {jwks_from}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .into_bytes()
            } else if head.contains("/.well-known/openid-configuration ") {
                let body = discovery.replace("{base}", &base);
                crate::common::loopback::reply_and_close(200, "application/json", body.as_bytes())
            } else {
                crate::common::loopback::reply_and_close(200, "application/json", b"{\"keys\":[]}")
            };
            let _ = conn.write_all(&reply).await;
            None
        }
    })
    .await;
    let _ = base.set(format!("{}issuers/111111111111", server.url()));
    server
}

/// The issuer's own documents decide nothing they may not: a `jwks_uri` off the issuer's origin,
/// a discovery document naming another issuer, and a redirect are `untrusted_endpoint`, and
/// nothing off the origin is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_cannot_send_the_verifier_elsewhere_for_keys() {
    let sts = StsEmulator::start(principals()).await.unwrap();
    let elsewhere = StsEmulator::start(vec![]).await.unwrap();
    let keys_elsewhere = format!("{}/.well-known/jwks.json", elsewhere.issuer_url("111111111111"));
    for (name, discovery, status, want) in [
        (
            "jwks_uri off the origin",
            r#"{"issuer":"{base}","jwks_uri":"http://127.0.0.2:1/jwks.json"}"#,
            200,
            "is not on the origin",
        ),
        (
            "another issuer named",
            r#"{"issuer":"https://other.example","jwks_uri":"{base}/jwks.json"}"#,
            200,
            "names another issuer",
        ),
        ("a redirect", "", 302, "redirected (HTTP 302)"),
    ] {
        let issuer = scripted_issuer(discovery, status, keys_elsewhere.clone()).await;
        let pinned = format!("{}issuers/111111111111", issuer.url());
        let jwks = JwksCache::new().unwrap();
        let iss = iam_join::IssuerUrl::parse(&pinned).unwrap();
        let e = jwks.keys_for(&iss, "emulator-rs256").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UntrustedEndpoint, "{name}: {e}");
        assert!(e.detail().contains(want), "{name}: {e}");
        assert_eq!(elsewhere.requests(), 0, "{name}: nothing is fetched from elsewhere");
        assert_eq!(issuer.requests(), 1, "{name}: only the discovery document was read");
    }
    // The positive control: the emulator's own issuer gives its keys.
    let jwks = JwksCache::new().unwrap();
    let own = iam_join::IssuerUrl::parse(&sts.issuer_url("111111111111")).unwrap();
    assert!(jwks.keys_for(&own, "emulator-rs256").await.unwrap().contains("emulator-rs256"));
    assert_eq!(jwks.fetches(), 1);
}

/// A token signed by an independent signer (PyJWT, `tests/vectors/jwt`) verifies with the pinned
/// issuer's JWKS as PyJWT wrote it, driven by hand with no network: the role is proved as every
/// session of it, and its organization claims decide an organization rule with no lookup.
#[test]
fn a_token_pyjwt_signed_verifies_by_hand_and_its_organization_decides() {
    let dir = crate::common::repository().join("tests/vectors");
    let jwt = std::fs::read(dir.join("jwt/role_rs256.jwt")).unwrap();
    let jwks = std::fs::read(dir.join("jwt/issuer.jwks.json")).unwrap();
    let challenge = std::fs::read_to_string(dir.join("requests/CHALLENGE")).unwrap();
    let at = std::time::UNIX_EPOCH + Duration::from_secs(1_795_878_000 + 10);
    let tokens = TokenSet::from_yaml(
        "kind: token\nversion: v2\nmetadata: {name: org}\nspec: {roles: [Node], join_method: iam, allow: [\
         {aws_arn: \"arn:aws:sts::123456789012:assumed-role/deploy/i-*\"}, \
         {aws_organization_id: o-a1b2c3d4e5, aws_organizational_units: {include: [ou-ab12-11111111]}}]}\n",
    )
    .unwrap();
    let issuer = "https://abc123.tokens.sts.global.api.aws";
    let web = WebIdentityPolicy::new(AUDIENCE).unwrap().issuer("123456789012", issuer).unwrap();
    let v = Verifier::builder(tokens).web_identity(web).build();
    let needs = v.start_web_identity("org", Challenge::Plain(&challenge), &jwt, at).unwrap();
    assert_eq!((needs.issuer().as_str(), needs.kid()), (issuer, "emulator-rs256"));
    let keys = iam_join::IssuerKeys::from_jwks(needs.issuer(), &jwks).unwrap();
    let claimed = needs.resume(&keys).unwrap().single_use_by_caller();
    assert!(claimed.replay().is_none(), "checked offline: nothing to send");
    let verdict = claimed.conclude_offline().unwrap().into_verdict().unwrap();
    assert_eq!(verdict.matched_rule(), 1, "the organization rule, from the token's claims");
    assert_eq!(verdict.identity().arn().as_str(), "arn:aws:iam::123456789012:role/deploy");
    // The same token at a later time is expired; with a changed byte its signature fails.
    let late = at + Duration::from_secs(400);
    assert_eq!(
        v.start_web_identity("org", Challenge::Plain(&challenge), &jwt, late).unwrap_err().kind(),
        ErrorKind::RequestExpired
    );
    let mut bad = jwt.clone();
    let last = bad.len() - 2;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    let needs = v.start_web_identity("org", Challenge::Plain(&challenge), &bad, at).unwrap();
    assert_eq!(needs.resume(&keys).unwrap_err().kind(), ErrorKind::SignatureRejected);
}
