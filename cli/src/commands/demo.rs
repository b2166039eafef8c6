//! `iam-join demo`: the whole flow against the embedded SigV4-checking STS emulator.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use iam_join::agent::{
    AwsChain, Credentials, DEFAULT_PRESIGN_EXPIRES, JoinRequest, eks_token, presign_join_url, sign_join_request,
};
use iam_join::emulator::{EmulatedPrincipal, StsEmulator};
use iam_join::{
    Challenge, EndpointOverride, Error, ErrorKind, Proof, RequestPolicy, ReqwestTransport, TokenSet, Verdict, Verifier,
    WebIdentityPolicy,
};

use crate::Usage;

const DEMO_TOKENS: &str = r#"kind: token
version: v2
metadata:
  name: demo-token
spec:
  roles: [Node, Kube]
  join_method: iam
  allow:
  - aws_account: "111111111111"
  - aws_account: "222222222222"
    aws_arn: "arn:aws:sts::222222222222:assumed-role/teleport-node-role/i-*"
"#;

/// The audience the demo's verifier expects in web identity tokens.
const DEMO_AUDIENCE: &str = "https://join.example.com";

/// Prints a verdict and whether it was the expected outcome.
fn report(result: &Result<Verdict, Error>, expect: Option<ErrorKind>) -> bool {
    match result {
        Ok(v) => println!(
            "   verdict: ALLOWED {} (account {}) by rule {}, roles {:?}",
            v.identity().arn(),
            v.identity().account(),
            v.matched_rule(),
            v.roles().iter().map(|r| r.as_str()).collect::<Vec<_>>()
        ),
        Err(e) => println!("   verdict: REFUSED {}", e),
    }
    let ok = result.as_ref().err().map(Error::kind) == expect;
    println!("   {}\n", if ok { "as expected" } else { "UNEXPECTED" });
    ok
}

struct DemoAgent {
    label: &'static str,
    principal: EmulatedPrincipal,
}

fn demo_agents() -> Vec<DemoAgent> {
    vec![
        DemoAgent {
            label: "IAM user ci-deployer",
            principal: EmulatedPrincipal::new(
                "AKIADEMOUSER00000001",
                "demo/user/secret/key/0000000000000000000",
                None,
                "arn:aws:iam::111111111111:user/ci-deployer",
                "AIDADEMOUSER00000001",
            ),
        },
        DemoAgent {
            label: "EC2 node (role session)",
            principal: EmulatedPrincipal::new(
                "ASIADEMOROLE00000001",
                "demo/role/secret/key/0000000000000000000",
                Some("IQoJb3JpZ2luX2VjDEMOSESSIONTOKEN0000000000000000".to_owned()),
                "arn:aws:sts::222222222222:assumed-role/teleport-node-role/i-0123456789abcdef0",
                "AROADEMOROLE00000001:i-0123456789abcdef0",
            ),
        },
        DemoAgent {
            label: "stranger from another account",
            principal: EmulatedPrincipal::new(
                "AKIADEMOSTRANGER0001",
                "demo/stranger/secret/000000000000000000",
                None,
                "arn:aws:iam::999999999999:user/stranger",
                "AIDADEMOSTRANGER0001",
            ),
        },
    ]
}

pub(crate) fn run() -> Result<ExitCode, Usage> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run_demo())
}

async fn run_demo() -> Result<ExitCode, Usage> {
    let started = Instant::now();
    let agents = demo_agents();
    let sts = StsEmulator::start(agents.iter().map(|a| a.principal.clone()).collect()).await?;
    println!("STS emulator listening on {} (checks SigV4 signatures; stands in for sts.amazonaws.com)", sts.url());
    let tokens = TokenSet::from_yaml(DEMO_TOKENS).map_err(|e| Usage(e.to_string()))?;
    println!(
        "token demo-token: roles Node, Kube; allow account 111111111111, or role teleport-node-role sessions in 222222222222\n"
    );
    let transport = ReqwestTransport::builder()
        .endpoint_override(EndpointOverride::Url(sts.url()))
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| Usage(e.to_string()))?;
    let verifier = Verifier::builder(tokens)
        .policy(RequestPolicy::new())
        .transport(transport)
        .deadline(Duration::from_secs(1))
        .build();
    let creds = |a: &DemoAgent| {
        Credentials::new(&a.principal.access_key_id, &a.principal.secret_access_key, a.principal.session_token.clone())
    };

    struct Case {
        title: &'static str,
        agent: usize,
        json: bool,
        region: Option<&'static str>,
        tamper: Tamper,
        expect: Option<ErrorKind>,
    }
    #[derive(PartialEq)]
    enum Tamper {
        None,
        ChallengeAfterSigning,
        WrongSecret,
        UntrustedHost,
    }
    let cases = [
        Case {
            title: "EC2 node joins (Teleport-style: regional endpoint, JSON)",
            agent: 1,
            json: true,
            region: Some("us-west-2"),
            tamper: Tamper::None,
            expect: None,
        },
        Case {
            title: "IAM user joins (botocore-style: global endpoint, XML)",
            agent: 0,
            json: false,
            region: None,
            tamper: Tamper::None,
            expect: None,
        },
        Case {
            title: "challenge replaced after signing",
            agent: 1,
            json: true,
            region: None,
            tamper: Tamper::ChallengeAfterSigning,
            expect: Some(ErrorKind::ChallengeMismatch),
        },
        Case {
            title: "request signed with the wrong secret",
            agent: 0,
            json: false,
            region: None,
            tamper: Tamper::WrongSecret,
            expect: Some(ErrorKind::SignatureRejected),
        },
        Case {
            title: "Host rewritten to an attacker's server",
            agent: 0,
            json: false,
            region: None,
            tamper: Tamper::UntrustedHost,
            expect: Some(ErrorKind::UntrustedEndpoint),
        },
        Case {
            title: "identity matching no allow rule",
            agent: 2,
            json: false,
            region: None,
            tamper: Tamper::None,
            expect: Some(ErrorKind::NotAllowed),
        },
    ];
    let mut all_as_expected = true;
    for (i, case) in cases.iter().enumerate() {
        let agent = &agents[case.agent];
        println!("{}. {} [{}]", i + 1, case.title, agent.label);
        let challenge = iam_join::challenge::generate()?;
        println!("   server: issued challenge {}…", &challenge[..12]);
        let mut c = creds(agent);
        if case.tamper == Tamper::WrongSecret {
            c = Credentials::new(
                &agent.principal.access_key_id,
                "not-the-right-secret",
                agent.principal.session_token.clone(),
            );
        }
        let mut join = JoinRequest::new(&challenge).accept_json(case.json);
        if let Some(r) = case.region {
            join = join.region(r);
        }
        let mut raw = sign_join_request(&c, &join, SystemTime::now()).map_err(|e| Usage(e.to_string()))?;
        println!(
            "   agent:  signed POST https://{}/ ({} bytes, challenge in x-teleport-challenge)",
            join.endpoint().map(|e| e.host()).unwrap_or("?"),
            raw.len()
        );
        let text = String::from_utf8_lossy(&raw).into_owned();
        match case.tamper {
            Tamper::ChallengeAfterSigning => {
                raw = text.replace(&challenge, &iam_join::challenge::generate()?).into_bytes();
                println!("   attacker: swapped the challenge header value");
            }
            Tamper::UntrustedHost => {
                raw = text.replace("Host: sts.amazonaws.com", "Host: sts.amazonaws.com.attacker.example").into_bytes();
                println!("   attacker: rewrote Host to sts.amazonaws.com.attacker.example");
            }
            _ => {}
        }
        let before = sts.requests();
        let result = verifier
            .verify("demo-token", Challenge::Plain(&challenge), Proof::Forwarded(&raw), SystemTime::now())
            .await;
        let replayed = sts.requests() > before;
        println!(
            "   server: validated locally, {}",
            if replayed { "replayed to STS" } else { "refused before any network traffic" }
        );
        all_as_expected &= report(&result, case.expect);
    }
    // The other two proofs: a presigned URL (the EKS token `aws eks get-token` prints) and AWS's
    // web identity token, checked offline against the pinned issuer's keys.
    let user = &agents[0];
    let n = cases.len();
    let challenge = iam_join::challenge::generate()?;
    println!(
        "{}. IAM user joins with a presigned URL, as `aws eks get-token --cluster-name <challenge>` makes it [{}]",
        n + 1,
        user.label
    );
    let url = presign_join_url(&creds(user), &JoinRequest::new(&challenge), DEFAULT_PRESIGN_EXPIRES, SystemTime::now())
        .map_err(|e| Usage(e.to_string()))?;
    let token = eks_token(&url);
    println!(
        "   agent:  presigned GET {}… as {}… ({} bytes; the challenge is signed in x-k8s-aws-id, not in the URL)",
        &url[..60],
        &token[..24],
        token.len()
    );
    let result = verifier
        .verify("demo-token", Challenge::Plain(&challenge), Proof::Presigned(token.as_bytes()), SystemTime::now())
        .await;
    all_as_expected &= report(&result, None);
    let other = iam_join::challenge::generate()?;
    println!("{}. the same URL presented for another challenge", n + 2);
    let result = verifier
        .verify("demo-token", Challenge::Plain(&other), Proof::Presigned(token.as_bytes()), SystemTime::now())
        .await;
    println!("   server: replayed with the other challenge in x-k8s-aws-id; STS computes another signature");
    all_as_expected &= report(&result, Some(ErrorKind::SignatureRejected));

    println!("{}. IAM user joins with a web identity token from sts:GetWebIdentityToken [{}]", n + 3, user.label);
    let issuer = sts.issuer_url("111111111111");
    let web = WebIdentityPolicy::new(DEMO_AUDIENCE)
        .and_then(|w| w.issuer("111111111111", &issuer))
        .map_err(|e| Usage(e.to_string()))?;
    let offline = Verifier::builder(TokenSet::from_yaml(DEMO_TOKENS).map_err(|e| Usage(e.to_string()))?)
        .web_identity(web)
        .build();
    let identity = AwsChain::new()
        .credentials(creds(user))
        .region("us-east-1")
        .sts_endpoint_url(sts.url())
        .load()
        .await
        .map_err(|e| Usage(e.to_string()))?;
    let challenge = iam_join::challenge::generate()?;
    let jwt = identity
        .web_identity_token(&[DEMO_AUDIENCE, &challenge], "ES384", None)
        .await
        .map_err(|e| Usage(e.to_string()))?;
    println!(
        "   agent:  asked STS for a JWT (ES384) with audiences {DEMO_AUDIENCE} and the challenge ({} bytes)",
        jwt.len()
    );
    let before = sts.requests();
    let result = offline
        .verify("demo-token", Challenge::Plain(&challenge), Proof::WebIdentityToken(jwt.as_bytes()), SystemTime::now())
        .await;
    println!(
        "   server: checked offline with the keys of {issuer} ({} request(s) for its OpenID configuration and JWKS, cached; none to STS)",
        sts.requests() - before
    );
    all_as_expected &= report(&result, None);
    println!(
        "demo finished in {} ms: {}",
        started.elapsed().as_millis(),
        if all_as_expected { "every outcome as expected" } else { "some outcomes were unexpected" }
    );
    Ok(if all_as_expected { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
