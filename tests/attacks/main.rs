//! The attack corpus: hostile inputs gathered from public advisories and from the ways this
//! design is known to be attacked, each with the refusal kind it must get.
//!
//! Every case runs through the whole [`Verifier`], whose transport sends to a loopback fake STS
//! that counts the requests it receives and answers with a scripted body. A case whose refusal is
//! local must leave that count at zero: nothing left the process. Hostile STS answers are served
//! by the same fake, so they travel the real HTTP path. Each table also has a positive control
//! (the untouched input is allowed), so a refusal is due to the attack and not to the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/loopback.rs"]
mod loopback;

/// A case of a table of text mutations (forwarded requests, presigned URLs): the untouched input
/// → a hostile one, and the refusal it must get.
pub(crate) struct Mutation {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    pub(crate) mutate: fn(String) -> String,
    pub(crate) want: ErrorKind,
    /// Text of the refusal's detail that names the check which must stop the case.
    pub(crate) because: &'static str,
}

/// `CASES`, a table of [`Mutation`]s: `name [source]: mutate => Kind, "because";`.
macro_rules! mutations {
    ($($name:ident [$source:expr]: $mutate:expr => $want:ident, $because:literal;)*) => {
        pub(crate) const CASES: &[crate::Mutation] = &[$(crate::Mutation {
            name: stringify!($name),
            source: $source,
            mutate: $mutate,
            want: $want,
            because: $because,
        }),*];
    };
}

/// aws-iam-authenticator's advisory, which both the forwarded and the presigned tables try.
pub(crate) const AUTHENTICATOR: &str = "aws-iam-authenticator CVE-2022-2385 (duplicate parameters differing in case)";

#[cfg(feature = "agent")]
mod challenges;
mod identities;
#[cfg(feature = "agent")]
mod presigned;
mod requests;
mod sts_bodies;
mod tokens;
mod web_identity;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use iam_join::{Challenge, Proof};
use iam_join::{EndpointOverride, ErrorKind, ReqwestTransport, TokenSet, Verifier, VerifierBuilder};
use tokio::io::AsyncWriteExt;

use crate::loopback::Loopback;

/// 2026-11-28T15:00:00Z, the Teleport vector's X-Amz-Date.
pub(crate) fn signed_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_878_000)
}

fn vector(path: &str) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The byte-exact request a Teleport agent sends (Go `Request.Write`), signed at [`signed_at`].
pub(crate) fn teleport_request() -> String {
    vector("requests/teleport_go_request_write.http")
}

pub(crate) fn challenge() -> String {
    vector("requests/CHALLENGE")
}

/// The identity the fake STS reports unless a case says otherwise; `TOKENS` allows it.
pub(crate) const IDENTITY_ARN: &str = "arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-0123456789abcdef0";

/// The `UserId` STS gives the principal of `arn`: `AROA…:SESSION`, `AIDA…`, the account for
/// root, `ACCOUNT:NAME` for a federated user.
pub(crate) fn user_id_for(arn: &str) -> String {
    let (account, resource) = arn.splitn(6, ':').skip(4).fold((String::new(), String::new()), |(a, _), f| {
        if a.is_empty() { (f.to_owned(), String::new()) } else { (a, f.to_owned()) }
    });
    match resource.split_once('/') {
        Some(("assumed-role", rest)) => format!("AROAEXAMPLEROLEID0001:{}", rest.rsplit('/').next().unwrap()),
        Some(("federated-user", name)) => format!("{account}:{name}"),
        _ if resource == "root" => account,
        _ => "AIDAEXAMPLEUSERID0001".to_owned(),
    }
}

pub(crate) fn identity_xml(account: &str, arn: &str) -> String {
    let user_id = user_id_for(arn);
    format!(
        "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <GetCallerIdentityResult><Arn>{arn}</Arn><UserId>{user_id}</UserId>\
         <Account>{account}</Account></GetCallerIdentityResult>\
         <ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>\
         </GetCallerIdentityResponse>"
    )
}

pub(crate) const TOKENS: &str = r#"
kind: token
version: v2
metadata:
  name: iam-token
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_account: "123456789012"
    aws_arn: "arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-*"
  - aws_account: "210987654321"
    aws_arn: "arn:aws:iam::210987654321:user/ad.in"
  - aws_arn: "arn:aws:sts::444455556666:assumed-role/deploy-?/*"
  - aws_account: "135791357913"
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
  - aws_account: "123456789012"
"#;

/// What the fake STS answers: status, content type and body.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn xml(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Answer { status, content_type: "text/xml", body: body.into() }
    }

    pub(crate) fn ok() -> Self {
        Answer::xml(200, identity_xml("123456789012", IDENTITY_ARN))
    }
}

/// A loopback fake STS: answers every request with the current [`Answer`] and counts requests.
pub(crate) struct FakeSts {
    server: Loopback,
    answer: Arc<Mutex<Answer>>,
}

impl FakeSts {
    pub(crate) async fn start() -> Self {
        let answer = Arc::new(Mutex::new(Answer::ok()));
        let script = answer.clone();
        let server = Loopback::start(move |mut s, _request| {
            let a = script.lock().unwrap().clone();
            async move {
                let _ = s.write_all(&loopback::reply_and_close(a.status, a.content_type, &a.body)).await;
                let _ = s.shutdown().await;
                None
            }
        })
        .await;
        FakeSts { server, answer }
    }

    pub(crate) fn answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    /// The bytes of the last request received.
    pub(crate) fn last_request(&self) -> String {
        String::from_utf8_lossy(&self.server.last_request()).into_owned()
    }

    pub(crate) fn requests(&self) -> usize {
        self.server.requests()
    }

    /// A verifier whose only way out is this fake STS. No retries, so counts are exact.
    pub(crate) fn verifier(&self) -> Verifier {
        self.builder().build()
    }

    /// [`FakeSts::verifier`] to configure further.
    pub(crate) fn builder(&self) -> VerifierBuilder {
        let transport = ReqwestTransport::builder()
            .endpoint_override(EndpointOverride::Url(self.server.url()))
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        Verifier::builder(TokenSet::from_yaml(TOKENS).unwrap()).transport(transport).retries(0)
    }
}

/// Where a refusal must come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Where {
    /// Before any network work: the fake STS must see no request.
    Local,
    /// After STS answered: the fake STS sees exactly one request.
    AfterSts,
}

/// The secrets a raw request carries: each `Signature=` value, each session token, each whole
/// `Authorization` value, and the challenge. None may appear in an error's text.
pub(crate) fn secrets_in(raw: &[u8], challenge: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut out = vec![challenge.to_owned()];
    for line in text.split(['\r', '\n']) {
        let Some((name, value)) = line.split_once(':') else { continue };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        match name.as_str() {
            "authorization" => out.push(value.to_owned()),
            "x-amz-security-token" => out.push(value.to_owned()),
            _ => {}
        }
    }
    for part in text.split("Signature=").skip(1) {
        let sig: String = part.chars().take_while(char::is_ascii_hexdigit).collect();
        out.push(sig);
    }
    // A presigned URL's session token; a JWT whole and its signature.
    for part in text.split("X-Amz-Security-Token=").skip(1) {
        out.push(part.split('&').next().unwrap_or("").to_owned());
    }
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() == 3 && !text.contains(['\r', '\n', ' ']) {
        out.push(text.clone().into_owned());
        out.push(parts[2].to_owned());
    }
    // Too short to be a secret, or text every message may hold.
    out.retain(|s| s.len() >= 16);
    out.sort();
    out.dedup();
    out
}

/// Verifies `raw` for `iam-token` with the corpus's challenge at the time it was signed.
pub(crate) async fn verify(v: &Verifier, raw: &[u8]) -> Result<iam_join::Verdict, iam_join::Error> {
    v.verify("iam-token", Challenge::Plain(&challenge()), Proof::Forwarded(raw), signed_at()).await
}

/// Runs one verification and checks it is refused with `kind`, by the check whose detail
/// contains `because`, from `place`, without leaking a secret the input carries. Returns a
/// description of what went wrong, if anything.
pub(crate) async fn expect_refusal(
    sts: &FakeSts,
    v: &Verifier,
    token: &str,
    raw: &[u8],
    want: (ErrorKind, &str),
    place: Where,
) -> Result<(), String> {
    expect_refusal_of(sts, v, (token, &challenge(), signed_at()), Proof::Forwarded(raw), want, place).await
}

/// [`expect_refusal`] for any proof, verified for `token` against `challenge` at `now`.
pub(crate) async fn expect_refusal_of(
    sts: &FakeSts,
    v: &Verifier,
    (token, challenge, now): (&str, &str, SystemTime),
    proof: Proof<'_>,
    (kind, because): (ErrorKind, &str),
    place: Where,
) -> Result<(), String> {
    let raw: &[u8] = match proof {
        Proof::Forwarded(r) | Proof::Presigned(r) | Proof::WebIdentityToken(r) => r,
        _ => &[],
    };
    let before = sts.requests();
    let result = v.verify(token, Challenge::Plain(challenge), proof, now).await;
    let sent = sts.requests() - before;
    let err = match result {
        Ok(verdict) => return Err(format!("ALLOWED as {}", verdict.identity().arn().as_str())),
        Err(e) => e,
    };
    let mut problems = Vec::new();
    if err.kind() != kind {
        problems.push(format!("kind {} (want {}): {err}", err.kind().as_str(), kind.as_str()));
    }
    if !err.detail().contains(because) {
        problems.push(format!("refused by another check: {:?} (want {because:?})", err.detail()));
    }
    let want_sent = match place {
        Where::Local => 0,
        Where::AfterSts => 1,
    };
    if sent != want_sent {
        problems.push(format!("{sent} request(s) reached STS, want {want_sent}"));
    }
    let text = format!("{err} {err:?}");
    for secret in secrets_in(raw, challenge) {
        if text.contains(&secret) {
            problems.push(format!("a secret of the input leaked ({} chars)", secret.len()));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// The leak check is not vacuous: the vector carries a signature, a session token, an
/// Authorization value and the challenge, and an error text holding any of them is caught.
#[test]
fn leak_check_finds_the_secrets_the_vector_carries() {
    let raw = teleport_request();
    let secrets = secrets_in(raw.as_bytes(), &challenge());
    assert_eq!(secrets.len(), 4, "{secrets:?}");
    assert!(secrets.iter().any(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())), "signature");
    assert!(secrets.iter().any(|s| s.starts_with("AWS4-HMAC-SHA256 ")), "authorization");
    assert!(secrets.contains(&challenge()));
    for s in &secrets {
        assert!(raw.contains(s.as_str()), "{s} is in the input");
    }
}

/// Collects failures of a whole table and reports them together, by case name.
#[derive(Default)]
pub(crate) struct Report {
    failures: Vec<String>,
    cases: usize,
}

impl Report {
    pub(crate) fn record(&mut self, name: &str, source: &str, result: Result<(), String>) {
        assert!(!name.is_empty() && !source.is_empty(), "every case is named and sourced");
        self.cases += 1;
        if let Err(e) = result {
            self.failures.push(format!("{name} [{source}]: {e}"));
        }
    }

    pub(crate) fn finish(self, min_cases: usize) {
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n{}",
            self.failures.len(),
            self.cases,
            self.failures.join("\n")
        );
        assert!(self.cases >= min_cases, "only {} cases ran", self.cases);
    }
}

/// The corpus size the issue asks for, across all tables.
#[test]
fn corpus_has_at_least_80_named_cases_with_unique_names() {
    let mut names: Vec<&str> = requests::CASES.iter().map(|c| c.name).collect();
    names.extend(sts_bodies::CASES.iter().map(|c| c.name));
    names.extend(tokens::CASES.iter().map(|c| c.name));
    names.extend(identities::CASES.iter().map(|c| c.name));
    #[cfg(feature = "agent")]
    names.extend(challenges::CASES.iter().map(|c| c.name));
    #[cfg(feature = "agent")]
    names.extend(presigned::CASES.iter().map(|c| c.name));
    names.extend(web_identity::CASES.iter().map(|c| c.name));
    let total = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), total, "case names must be unique");
    assert!(total >= 80, "{total} cases");
}
