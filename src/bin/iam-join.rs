//! `iam-join`: check tokens, explain matches, verify captured joins, sign joins, run the demo.
//! Thin: parses flags, calls the library's public API, prints.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Parser, Subcommand};
use iam_join::agent::{Credentials, JoinRequest, sign_join_request};
use iam_join::emulator::{EmulatedPrincipal, StsEmulator};
use iam_join::organizations::{Membership, OrganizationsClient};
use iam_join::{
    AccountId, Arn, EndpointOverride, EndpointPolicy, Error, ErrorKind, FipsMode, Partition, RequestPolicy,
    ReqwestTransport, Severity, TokenSet, Verifier,
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "iam-join", version, about = "Verify AWS IAM joins the way Teleport's Auth Service does", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate token files: every token of every join method, with lints.
    ///
    /// Example: iam-join check-token tokens.yaml
    ///
    /// Prints every diagnostic as FILE:LINE:COL: SEVERITY: MESSAGE. Exits 2 when any token (or
    /// file) has an error, 1 with --deny-warnings when there are warnings, 0 otherwise:
    /// information (tokens of other join methods, skipped) never fails the check.
    CheckToken {
        /// Token YAML files (one or many tokens each).
        #[arg(required = true)]
        files: Vec<String>,
        /// Exit 1 when there are warnings (rules that can never match, ignored sections).
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Explain, rule by rule, why an identity would or would not be allowed.
    ///
    /// Example: iam-join match --token tokens.yaml --account 333333333333 --arn arn:aws:sts::333333333333:assumed-role/node/i-1
    Match {
        #[command(flatten)]
        token: TokenArgs,
        /// The identity's 12-digit account.
        #[arg(long)]
        account: String,
        /// The identity's ARN.
        #[arg(long)]
        arn: String,
        /// The account's AWS Organization (o-...), to explain organization rules offline.
        #[arg(long)]
        organization_id: Option<String>,
        /// An OU or root id the account sits under (repeat for each ancestor).
        #[arg(long = "ou")]
        ous: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the full verification of a captured request; prints one JSON object.
    ///
    /// Exit 0 allowed, 1 refused, 2 usage or token file errors.
    /// Example: iam-join sign --challenge C | iam-join verify --token tokens.yaml --challenge C --request -
    Verify(VerifyArgs),
    /// Sign a join request with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN and
    /// write the raw HTTP request to stdout.
    ///
    /// Example: iam-join sign --challenge "$(iam-join challenge)" --region us-west-2 --accept-json
    Sign {
        /// The challenge the server issued.
        #[arg(long)]
        challenge: String,
        /// Sign for this region's endpoint (default: the global endpoint).
        #[arg(long)]
        region: Option<String>,
        /// Use the region's FIPS endpoint.
        #[arg(long)]
        fips: bool,
        /// Sign Accept: application/json, as Teleport agents do.
        #[arg(long)]
        accept_json: bool,
        /// The header carrying the challenge.
        #[arg(long, default_value = "x-teleport-challenge")]
        challenge_header: String,
    },
    /// Print a fresh challenge (32 random bytes, unpadded base64).
    Challenge,
    /// Walk through allowed and refused joins against an embedded STS emulator (no AWS account,
    /// no network).
    Demo,
}

#[derive(Args)]
struct TokenArgs {
    /// Token YAML file.
    #[arg(long = "token")]
    file: String,
    /// The token to use when the file holds several (default: the only one).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// The challenge the server issued for this join.
    #[arg(long)]
    challenge: String,
    /// The captured raw HTTP request, or - for stdin.
    #[arg(long)]
    request: String,
    /// The header carrying the challenge.
    #[arg(long, default_value = "x-teleport-challenge")]
    challenge_header: String,
    /// Accept only FIPS endpoints (the global endpoint is refused).
    #[arg(long)]
    fips: bool,
    /// Also trust this partition's endpoints (aws is always trusted), e.g. aws-us-gov.
    #[arg(long = "allow-partition")]
    allow_partition: Vec<String>,
    /// Send to this URL instead (https://, or http:// on a loopback address); the signed Host is kept.
    #[arg(long)]
    sts_endpoint: Option<String>,
    /// Send AWS Organizations calls to this URL instead (https://, or http:// on loopback).
    /// Organization rules are looked up with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
    /// AWS_SESSION_TOKEN (the auth server's credentials, not the agent's).
    #[arg(long)]
    organizations_endpoint: Option<String>,
    /// Bound on the whole verification, retries included, in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// The time to judge freshness and token expiry by (RFC 3339); default now.
    #[arg(long)]
    now: Option<String>,
}

/// A failure that is the operator's to fix: exit 2.
struct Usage(String);

impl<E: std::fmt::Display> From<E> for Usage {
    fn from(e: E) -> Self {
        Usage(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckToken { files, deny_warnings } => check_token(&files, deny_warnings),
        Command::Match { token, account, arn, organization_id, ous, json } => {
            let membership =
                organization_id.map(|organization_id| Membership::Member { organization_id, ancestors: ous });
            match_cmd(&token, &account, &arn, membership.as_ref(), json)
        }
        Command::Verify(args) => verify(&args),
        Command::Sign { challenge, region, fips, accept_json, challenge_header } => {
            sign(&challenge, region, fips, accept_json, &challenge_header)
        }
        Command::Challenge => iam_join::challenge::generate()
            .map(|c| {
                println!("{c}");
                ExitCode::SUCCESS
            })
            .map_err(Usage::from),
        Command::Demo => demo(),
    };
    result.unwrap_or_else(|Usage(msg)| {
        eprintln!("iam-join: {msg}");
        ExitCode::from(2)
    })
}

/// Loads a token file for `match` and `verify`: the named token must be valid; problems in the
/// file's other tokens are printed to stderr and do not stop the command.
fn load_tokens(path: &str, name: Option<&str>) -> Result<(TokenSet, String), Usage> {
    let text = std::fs::read_to_string(path).map_err(|e| Usage(format!("{path}: {e}")))?;
    let set = TokenSet::load(&text).with_file_name(path);
    let name = match name {
        Some(n) => n.to_owned(),
        None if set.len() == 1 && !set.has_errors() => {
            set.iter().next().map(|t| t.name().to_owned()).unwrap_or_default()
        }
        None if set.has_errors() && set.is_empty() => return Err(Usage(problem_lines(&set))),
        None => return Err(Usage(format!("the file holds {} iam tokens; pick one with --name", set.len()))),
    };
    // A token of another join method is the verifier's to refuse (token_invalid, naming it).
    let own = |severity: Severity| {
        set.diagnostics().iter().any(|p| p.token.as_deref() == Some(&*name) && p.severity == severity)
    };
    if own(Severity::Info) && !own(Severity::Error) {
        return Ok((set, name));
    }
    match set.lookup(&name) {
        Ok(_) => {
            let others: Vec<String> = set
                .diagnostics()
                .iter()
                .filter(|p| p.severity != Severity::Info && p.token.as_deref() != Some(name.as_str()))
                .map(ToString::to_string)
                .collect();
            if !others.is_empty() {
                eprintln!("iam-join: other tokens in {path} have problems (token {name:?} is fine):");
                others.iter().for_each(|p| eprintln!("{p}"));
            }
            for p in set.diagnostics().iter().filter(|p| p.token.as_deref() == Some(name.as_str())) {
                eprintln!("{p}");
            }
            Ok((set, name))
        }
        Err(e) => {
            let own = set.diagnostics().iter().filter(|p| p.token.as_deref() == Some(name.as_str()));
            let lines: Vec<String> = own.map(ToString::to_string).collect();
            Err(Usage(if lines.is_empty() { format!("{path}: {}", e.detail()) } else { lines.join("\n") }))
        }
    }
}

fn problem_lines(set: &TokenSet) -> String {
    set.diagnostics().iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

fn check_token(files: &[String], deny_warnings: bool) -> Result<ExitCode, Usage> {
    let (mut errors, mut warnings) = (false, false);
    for path in files {
        match std::fs::read_to_string(path) {
            Err(e) => {
                println!("{path}:0:0: error: {e}");
                errors = true;
            }
            Ok(text) => {
                let set = TokenSet::load(&text).with_file_name(path);
                set.diagnostics().iter().for_each(|p| println!("{p}"));
                errors |= set.has_errors();
                warnings |= set.has_warnings();
                eprintln!("{path}: {} usable iam token(s)", set.len());
            }
        }
    }
    Ok(if errors {
        ExitCode::from(2)
    } else if warnings && deny_warnings {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn match_cmd(
    token: &TokenArgs,
    account: &str,
    arn: &str,
    membership: Option<&Membership>,
    json: bool,
) -> Result<ExitCode, Usage> {
    let (set, name) = load_tokens(&token.file, token.name.as_deref())?;
    let t = set.lookup(&name).map_err(|e| Usage(e.detail().to_owned()))?;
    let account = AccountId::parse(account).ok_or_else(|| Usage(format!("--account {account:?} is not 12 digits")))?;
    let arn = Arn::parse(arn).map_err(|e| Usage(format!("--arn: {e}")))?;
    let explanation = t.matcher().explain_with(&account, &arn, membership);
    if json {
        let rules: Vec<Value> = explanation
            .rules
            .iter()
            .map(|r| {
                let rule = &t.rules()[r.index];
                json!({
                    "index": r.index,
                    "aws_account": rule.aws_account().map(|a| a.as_str().to_owned()),
                    "aws_arn": rule.aws_arn(),
                    "account": r.account.as_str(),
                    "arn": r.arn.as_str(),
                    "organization": r.organization.as_str(),
                    "matched": r.matched,
                })
            })
            .collect();
        let out = json!({"token": name, "allowed": explanation.matched.is_some(), "matched_rule": explanation.matched, "rules": rules});
        println!("{out}");
    } else {
        println!("token {name:?}, identity {arn} in {account}:");
        println!("{explanation}");
    }
    Ok(if explanation.matched.is_some() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn verify(a: &VerifyArgs) -> Result<ExitCode, Usage> {
    let (set, name) = load_tokens(&a.token.file, a.token.name.as_deref())?;
    let mut raw = Vec::new();
    if a.request == "-" {
        std::io::stdin().read_to_end(&mut raw)?;
    } else {
        raw = std::fs::read(&a.request).map_err(|e| Usage(format!("{}: {e}", a.request)))?;
    }
    let now = match &a.now {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map(SystemTime::from)
            .map_err(|e| Usage(format!("--now {t:?} is not RFC 3339: {e}")))?,
        None => SystemTime::now(),
    };
    if !(a.timeout > 0.0 && a.timeout <= 600.0) {
        return Err(Usage("--timeout must be between 0 and 600 seconds".into()));
    }
    let timeout = Duration::from_secs_f64(a.timeout);
    let mut endpoints = EndpointPolicy::new().fips(if a.fips { FipsMode::Required } else { FipsMode::Allowed });
    for p in &a.allow_partition {
        endpoints = endpoints
            .allow_partition(Partition::from_name(p).ok_or_else(|| Usage(format!("unknown partition {p:?}")))?);
    }
    let policy = RequestPolicy::new()
        .endpoints(endpoints)
        .challenge_header(&a.challenge_header)
        .map_err(|e| Usage(e.detail().to_owned()))?;
    let mut transport = ReqwestTransport::builder().timeout(timeout);
    if let Some(url) = &a.sts_endpoint {
        transport = transport.endpoint_override(EndpointOverride::Url(url.clone()));
    }
    let transport = transport.build().map_err(|e| Usage(e.detail().to_owned()))?;
    let uses_organizations = set.get(&name).is_some_and(|t| t.matcher().organization_rules().next().is_some());
    let mut verifier = Verifier::new(set, policy, transport).deadline(timeout);
    if uses_organizations {
        let creds = Credentials::from_env().map_err(|e| {
            Usage(format!("token {name:?} has organization rules: {} (the auth server's credentials)", e.detail()))
        })?;
        let mut org = ReqwestTransport::builder().timeout(timeout);
        if let Some(url) = &a.organizations_endpoint {
            org = org.endpoint_override(EndpointOverride::Url(url.clone()));
        }
        let org = org.build().map_err(|e| Usage(e.detail().to_owned()))?;
        verifier = verifier.organizations(OrganizationsClient::new(creds, org));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(verifier.verify(&name, &a.challenge, &raw, now));
    let out = verdict_json(&name, &result);
    println!("{out}");
    Ok(if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The library's own serializations: `Verdict` as is, a refusal from its kind, detail and the
/// identity kept for audit.
fn verdict_json(token: &str, result: &Result<iam_join::Verdict, Error>) -> Value {
    match result {
        Ok(v) => json!(v),
        Err(e) => json!({
            "allowed": false,
            "token": token,
            "error": {"kind": e.kind(), "message": e.detail()},
            "identity": e.identity(),
        }),
    }
}

fn sign(
    challenge: &str,
    region: Option<String>,
    fips: bool,
    accept_json: bool,
    header: &str,
) -> Result<ExitCode, Usage> {
    let creds = Credentials::from_env().map_err(|e| Usage(e.detail().to_owned()))?;
    let mut join = JoinRequest::new(challenge).fips(fips).accept_json(accept_json).challenge_header(header);
    if let Some(r) = region {
        join = join.region(r);
    }
    let raw = sign_join_request(&creds, &join, SystemTime::now()).map_err(|e| Usage(e.detail().to_owned()))?;
    std::io::stdout().write_all(&raw)?;
    Ok(ExitCode::SUCCESS)
}

// ---- demo -----------------------------------------------------------------------------------------

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

struct DemoAgent {
    label: &'static str,
    principal: EmulatedPrincipal,
}

fn demo_agents() -> Vec<DemoAgent> {
    vec![
        DemoAgent {
            label: "IAM user ci-deployer",
            principal: EmulatedPrincipal {
                access_key_id: "AKIADEMOUSER00000001".into(),
                secret_access_key: "demo/user/secret/key/0000000000000000000".into(),
                session_token: None,
                arn: "arn:aws:iam::111111111111:user/ci-deployer".into(),
                user_id: "AIDADEMOUSER00000001".into(),
            },
        },
        DemoAgent {
            label: "EC2 node (role session)",
            principal: EmulatedPrincipal {
                access_key_id: "ASIADEMOROLE00000001".into(),
                secret_access_key: "demo/role/secret/key/0000000000000000000".into(),
                session_token: Some("IQoJb3JpZ2luX2VjDEMOSESSIONTOKEN0000000000000000".into()),
                arn: "arn:aws:sts::222222222222:assumed-role/teleport-node-role/i-0123456789abcdef0".into(),
                user_id: "AROADEMOROLE00000001:i-0123456789abcdef0".into(),
            },
        },
        DemoAgent {
            label: "stranger from another account",
            principal: EmulatedPrincipal {
                access_key_id: "AKIADEMOSTRANGER0001".into(),
                secret_access_key: "demo/stranger/secret/000000000000000000".into(),
                session_token: None,
                arn: "arn:aws:iam::999999999999:user/stranger".into(),
                user_id: "AIDADEMOSTRANGER0001".into(),
            },
        },
    ]
}

fn demo() -> Result<ExitCode, Usage> {
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
    let verifier = Verifier::new(tokens, RequestPolicy::new(), transport).deadline(Duration::from_secs(1));
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
        let result = verifier.verify("demo-token", &challenge, &raw, SystemTime::now()).await;
        let replayed = sts.requests() > before;
        println!(
            "   server: validated locally, {}",
            if replayed { "replayed to STS" } else { "refused before any network traffic" }
        );
        match &result {
            Ok(v) => println!(
                "   verdict: ALLOWED {} (account {}) by rule {}, roles {:?}",
                v.identity().arn(),
                v.identity().account(),
                v.matched_rule(),
                v.roles().iter().map(|r| r.as_str()).collect::<Vec<_>>()
            ),
            Err(e) => println!("   verdict: REFUSED {}", e),
        }
        let got = result.as_ref().err().map(Error::kind);
        let ok = got == case.expect;
        all_as_expected &= ok;
        println!("   {}\n", if ok { "as expected" } else { "UNEXPECTED" });
    }
    println!(
        "demo finished in {} ms: {}",
        started.elapsed().as_millis(),
        if all_as_expected { "every outcome as expected" } else { "some outcomes were unexpected" }
    );
    Ok(if all_as_expected { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
