//! `iam-join`: check tokens, explain matches, verify captured joins, sign joins, run the demo.
//! Thin: parses flags, calls the library's public API, prints. One file per command.

mod commands;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use iam_join::Membership;
use std::time::Duration;

use iam_join::{
    EndpointOverride, EndpointPolicy, FipsMode, Partition, RequestPolicy, ReqwestTransport, Severity, TokenSet,
};

#[cfg(feature = "serve")]
use commands::serve;
use commands::{check_token, demo, emulator, join, matching, sign, verify};

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
    /// Run the join service: challenges, joins, metrics, health (feature `serve`).
    ///
    /// Example: iam-join serve --tokens tokens.yaml --redis redis://127.0.0.1:6379/ --challenge-key keys
    ///
    /// API: POST /v1/challenge {"token"} -> {"challenge","expires_at"}; POST /v1/join {"token",
    /// "challenge", and one of "request" (base64 of the raw signed request), "presigned" (a
    /// presigned URL or EKS token), "web_identity_token" (a JWT from sts:GetWebIdentityToken)} ->
    /// the JSON `verify` prints, with 200 allowed, 403 refused, 503 retryable, 400 malformed; GET
    /// /metrics, /healthz, /readyz.
    #[cfg(feature = "serve")]
    Serve(Box<serve::ServeArgs>),
    /// Run the full verification of a captured request; prints one JSON object.
    ///
    /// Exit 0 allowed, 1 refused, 2 usage or token file errors.
    /// Example: iam-join sign --challenge C | iam-join verify --token tokens.yaml --challenge C --request -
    Verify(VerifyArgs),
    /// Sign a join request with credentials from the standard AWS chain and write the raw HTTP
    /// request to stdout.
    ///
    /// The chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, the shared config and
    /// credentials files (AWS_PROFILE or --profile), web identity (IRSA: AWS_ROLE_ARN and
    /// AWS_WEB_IDENTITY_TOKEN_FILE), EKS Pod Identity and ECS container credentials, IMDSv2. The
    /// request is signed for the region's STS endpoint (AWS_REGION, the profile, IMDS, or
    /// --region), or the global one when no region is found.
    ///
    /// Example: iam-join sign --challenge "$(iam-join challenge)" --accept-json
    ///
    /// With --presigned: prints an EKS token (k8s-aws-v1.…) of the presigned URL, the challenge
    /// in the signed x-k8s-aws-id header (what `aws eks get-token --cluster-name CHALLENGE`
    /// prints). With --web-identity --audience AUD: asks STS (sts:GetWebIdentityToken) for a
    /// token naming AUD and the challenge, and prints the JWT.
    Sign(SignArgs),
    /// Join through an `iam-join serve`: ask for a challenge, sign with the AWS chain, submit;
    /// prints the verdict JSON. Retries retryable refusals (503) with backoff, with a new
    /// challenge each time, within --deadline.
    ///
    /// Exit 0 allowed, 1 refused, 2 usage errors or no answer from the service within the deadline.
    /// Example: iam-join join --server https://join.example.com --token iam-token
    Join(JoinArgs),
    /// Print a fresh challenge (32 random bytes, unpadded base64).
    Challenge,
    /// Print a fresh 256-bit key for keyed challenges, as one `ID:BASE64` line of a key file
    /// (the first line of the file is the active key). The line is the secret: put it in the
    /// key file and nowhere else.
    ///
    /// Example: iam-join challenge-key --id 2026-11 >> challenge-keys
    ChallengeKey {
        /// The key's id (letters, digits, - or _), carried in every challenge it issues.
        #[arg(long, default_value = "k1")]
        id: String,
        /// Write the key to this file instead of stdout: created with mode 0600, or appended to
        /// (keeping its mode; a file readable by others is reported, and `serve` refuses it).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Run the SigV4-checking STS emulator on a loopback port, and print its URL and example
    /// identities as `export` lines to source: try the service offline, with no AWS account.
    ///
    /// Example: iam-join emulator --listen 127.0.0.1:4566 --export irsa > emulator.env &
    Emulator(emulator::EmulatorArgs),
    /// Walk through allowed and refused joins against an embedded STS emulator (no AWS account,
    /// no network).
    Demo,
}

#[derive(Args)]
pub(crate) struct TokenArgs {
    /// Token YAML file.
    #[arg(long = "token")]
    file: String,
    /// The token to use when the file holds several (default: the only one).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("proof").required(true).args(["request", "presigned", "web_identity_token"])))]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    token: TokenArgs,
    /// The challenge the server issued for this join.
    #[arg(long)]
    challenge: String,
    /// The proof: the captured raw HTTP request (FILE, or - for stdin).
    #[arg(long)]
    request: Option<String>,
    /// The proof: a presigned GetCallerIdentity URL or an EKS token (`aws eks get-token`),
    /// FILE or - (one trailing newline is removed).
    #[arg(long)]
    presigned: Option<String>,
    /// The proof: a web identity token from sts:GetWebIdentityToken, FILE or - (one trailing
    /// newline is removed). Needs --web-identity-issuer and --audience.
    #[arg(long)]
    web_identity_token: Option<String>,
    #[command(flatten)]
    endpoints: EndpointArgs,
    /// The time to judge freshness and token expiry by (RFC 3339); default now.
    #[arg(long)]
    now: Option<String>,
}

#[derive(Args)]
pub(crate) struct SignArgs {
    /// The challenge the server issued.
    #[arg(long)]
    challenge: String,
    #[command(flatten)]
    agent: AgentArgs,
    /// Sign Accept: application/json, as Teleport agents do.
    #[arg(long)]
    accept_json: bool,
    /// The header carrying the challenge.
    #[arg(long, default_value = "x-teleport-challenge")]
    challenge_header: String,
    /// Print a presigned URL's EKS token instead of a signed request.
    #[arg(long, conflicts_with_all = ["web_identity", "accept_json"])]
    presigned: bool,
    /// With --presigned: print the URL itself, not the EKS token.
    #[arg(long, requires = "presigned")]
    url: bool,
    /// Print a web identity token from sts:GetWebIdentityToken (needs --audience).
    #[arg(long, requires = "audience", conflicts_with = "accept_json")]
    web_identity: bool,
    /// The verifier's audience, for --web-identity (the challenge is the other audience).
    #[arg(long, requires = "web_identity")]
    audience: Option<String>,
    /// The web identity token's signing algorithm: RS256 or ES384.
    #[arg(long, default_value = "RS256", value_parser = ["RS256", "ES384"])]
    algorithm: String,
}

/// Where the agent's identity comes from: the standard AWS chain, with these overrides.
#[derive(Args)]
pub(crate) struct AgentArgs {
    /// Use this profile of the shared config files (default: AWS_PROFILE, or default).
    #[arg(long)]
    profile: Option<String>,
    /// Sign for this region's STS endpoint (default: the region the chain finds; the global
    /// endpoint when there is none).
    #[arg(long)]
    region: Option<String>,
    /// Use the region's FIPS endpoint (sts-fips).
    #[arg(long)]
    fips: bool,
}

#[derive(Args)]
pub(crate) struct JoinArgs {
    /// The join service's base URL (https://, or http:// on loopback).
    #[arg(long)]
    server: String,
    /// The provision token to join with.
    #[arg(long)]
    token: String,
    #[command(flatten)]
    agent: AgentArgs,
    /// Give up retrying after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    deadline: f64,
    /// The proof to join with: forwarded (the signed POST, as Teleport agents send it),
    /// presigned (an EKS token) or web-identity (a token from sts:GetWebIdentityToken).
    #[arg(long, default_value = "forwarded", value_parser = ["forwarded", "presigned", "web-identity"])]
    proof: String,
    /// The service's audience, for --proof web-identity.
    #[arg(long)]
    audience: Option<String>,
    /// The web identity token's signing algorithm: RS256 or ES384.
    #[arg(long, default_value = "RS256", value_parser = ["RS256", "ES384"])]
    algorithm: String,
    /// Keep the identity here: a key pair made on this machine, and the certificate, CA and JWT
    /// the service issues for it. A stored identity valid for this token and server with more
    /// than a third of its lifetime left is used without joining (printed, exit 0).
    #[arg(long)]
    identity_dir: Option<std::path::PathBuf>,
    /// With --identity-dir: join even when the stored identity is still good.
    #[arg(long, requires = "identity_dir")]
    force: bool,
    /// With --identity-dir: keep running, and join again when two thirds of the identity's
    /// lifetime have passed.
    #[arg(long, requires = "identity_dir")]
    renew: bool,
}

/// How requests are checked and where they are sent: shared by `verify` and `serve`.
#[derive(Args)]
pub(crate) struct EndpointArgs {
    /// The header carrying the challenge.
    #[arg(long, env = "IAM_JOIN_CHALLENGE_HEADER", default_value = "x-teleport-challenge")]
    challenge_header: String,
    /// Accept only FIPS endpoints (the global endpoint is refused).
    #[arg(long, env = "IAM_JOIN_FIPS")]
    fips: bool,
    /// Also trust this partition's endpoints (aws is always trusted), e.g. aws-us-gov.
    #[arg(long = "allow-partition", env = "IAM_JOIN_ALLOW_PARTITION", value_delimiter = ',')]
    allow_partition: Vec<String>,
    /// Send to this URL instead (https://, or http:// on a loopback address); the signed Host is kept.
    #[arg(long, env = "IAM_JOIN_STS_ENDPOINT")]
    sts_endpoint: Option<String>,
    /// Send AWS Organizations calls to this URL instead (https://, or http:// on loopback).
    /// Organization rules are looked up with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
    /// AWS_SESSION_TOKEN (the auth server's credentials, not the agent's).
    #[arg(long, env = "IAM_JOIN_ORGANIZATIONS_ENDPOINT")]
    organizations_endpoint: Option<String>,
    /// Bound on the whole verification, retries included, in seconds.
    #[arg(long, env = "IAM_JOIN_TIMEOUT", default_value_t = 10.0)]
    timeout: f64,
    /// Accept web identity tokens (sts:GetWebIdentityToken) of ACCOUNT from issuer URL (its
    /// keys are fetched from it). Repeat per account; the variable holds a comma-separated list.
    #[arg(
        long = "web-identity-issuer",
        env = "IAM_JOIN_WEB_IDENTITY_ISSUERS",
        value_delimiter = ',',
        value_name = "ACCOUNT=URL"
    )]
    web_identity_issuers: Vec<String>,
    /// The audience web identity tokens must name (required with --web-identity-issuer).
    #[arg(long, env = "IAM_JOIN_AUDIENCE")]
    audience: Option<String>,
}

impl EndpointArgs {
    /// --timeout, checked.
    pub(crate) fn timeout(&self) -> Result<Duration, Usage> {
        if !(self.timeout > 0.0 && self.timeout <= 600.0) {
            return Err(Usage("--timeout must be between 0 and 600 seconds".into()));
        }
        Ok(Duration::from_secs_f64(self.timeout))
    }

    /// The request policy: endpoints (FIPS, partitions) and the challenge header.
    pub(crate) fn policy(&self) -> Result<RequestPolicy, Usage> {
        let mut endpoints = EndpointPolicy::new().fips(if self.fips { FipsMode::Required } else { FipsMode::Allowed });
        for p in &self.allow_partition {
            endpoints = endpoints
                .allow_partition(Partition::from_name(p).ok_or_else(|| Usage(format!("unknown partition {p:?}")))?);
        }
        RequestPolicy::new()
            .endpoints(endpoints)
            .challenge_header(&self.challenge_header)
            .map_err(|e| Usage(e.detail().to_owned()))
    }

    /// The web identity policy, when issuers are pinned.
    pub(crate) fn web_identity(&self) -> Result<Option<iam_join::WebIdentityPolicy>, Usage> {
        match (&self.audience, self.web_identity_issuers.is_empty()) {
            (None, true) => Ok(None),
            (Some(_), true) => Err(Usage("--audience needs at least one --web-identity-issuer ACCOUNT=URL".into())),
            (None, false) => {
                Err(Usage("--web-identity-issuer needs --audience (the audience tokens must name)".into()))
            }
            (Some(audience), false) => {
                let mut policy =
                    iam_join::WebIdentityPolicy::new(audience).map_err(|e| Usage(e.detail().to_owned()))?;
                for pin in &self.web_identity_issuers {
                    policy = policy.issuer_pin(pin).map_err(|e| Usage(e.detail().to_owned()))?;
                }
                Ok(Some(policy))
            }
        }
    }

    pub(crate) fn sts_transport(&self, timeout: Duration) -> Result<ReqwestTransport, Usage> {
        transport(timeout, self.sts_endpoint.as_deref())
    }

    pub(crate) fn organizations_transport(&self, timeout: Duration) -> Result<ReqwestTransport, Usage> {
        transport(timeout, self.organizations_endpoint.as_deref())
    }
}

fn transport(timeout: Duration, endpoint: Option<&str>) -> Result<ReqwestTransport, Usage> {
    let mut builder = ReqwestTransport::builder().timeout(timeout);
    if let Some(url) = endpoint {
        builder = builder.endpoint_override(EndpointOverride::Url(url.to_owned()));
    }
    builder.build().map_err(|e| Usage(e.detail().to_owned()))
}

/// A failure that is the operator's to fix: exit 2.
pub(crate) struct Usage(pub(crate) String);

impl<E: std::fmt::Display> From<E> for Usage {
    fn from(e: E) -> Self {
        Usage(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckToken { files, deny_warnings } => check_token::run(&files, deny_warnings),
        Command::Match { token, account, arn, organization_id, ous, json } => {
            let membership = organization_id.map(|organization_id| Membership::member(organization_id, ous));
            matching::run(&token, &account, &arn, membership.as_ref(), json)
        }
        Command::Verify(args) => verify::run(&args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(*args),
        Command::Sign(args) => sign::run(&args),
        Command::Join(args) => join::run(&args),
        Command::ChallengeKey { id, out } => challenge_key(&id, out.as_deref()),
        Command::Emulator(args) => emulator::run(&args),
        Command::Challenge => iam_join::challenge::generate()
            .map(|c| {
                println!("{c}");
                ExitCode::SUCCESS
            })
            .map_err(Usage::from),
        Command::Demo => demo::run(),
    };
    result.unwrap_or_else(|Usage(msg)| {
        eprintln!("iam-join: {msg}");
        ExitCode::from(2)
    })
}

/// A `--listen` address: `IP:PORT`, `[IPv6]:PORT`, or `localhost:PORT` (127.0.0.1). Other names
/// are refused: a name that resolves to several addresses does not say which one to listen on.
pub(crate) fn listen_address(text: &str) -> Result<std::net::SocketAddr, Usage> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if let Some(port) = text.strip_prefix("localhost:").and_then(|p| p.parse::<u16>().ok()) {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(Usage(format!("--listen {text:?} must be IP:PORT, [IPv6]:PORT or localhost:PORT")))
}

/// `iam-join challenge-key`: a fresh key line on stdout, or into `--out`, created private.
fn challenge_key(id: &str, out: Option<&std::path::Path>) -> Result<ExitCode, Usage> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let key = iam_join::challenge::ChallengeKey::generate(id).map_err(|e| Usage(e.detail().to_owned()))?;
    let Some(path) = out else {
        println!("{}", *key.to_line());
        return Ok(ExitCode::SUCCESS);
    };
    let shown = path.display();
    let existed = path.exists();
    // Created 0600 whatever the umask; an existing file keeps its mode.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Usage(format!("{shown}: {e}")))?;
    let mode = file.metadata().map_err(|e| Usage(format!("{shown}: {e}")))?.permissions().mode();
    file.write_all(format!("{}\n", *key.to_line()).as_bytes()).map_err(|e| Usage(format!("{shown}: {e}")))?;
    if existed {
        eprintln!("iam-join: key {id:?} appended to {shown}; the first line of the file is the active key");
    } else {
        eprintln!("iam-join: key {id:?} written to {shown} (mode 0600)");
    }
    if mode & 0o077 != 0 {
        eprintln!(
            "iam-join: warning: {shown} is accessible by group or others (mode {:o}); `iam-join serve` refuses it: chmod 600 {shown}",
            mode & 0o777
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads a token file for `match` and `verify`: the named token must be valid; problems in the
/// file's other tokens are printed to stderr and do not stop the command.
pub(crate) fn load_tokens(path: &str, name: Option<&str>) -> Result<(TokenSet, String), Usage> {
    let set = TokenSet::load_file(path).map_err(|e| Usage(e.detail().to_owned()))?;
    let name = match name {
        Some(n) => n.to_owned(),
        None if set.len() == 1 && !set.has_errors() => {
            set.iter().next().map(|t| t.name().to_owned()).unwrap_or_default()
        }
        None if set.has_errors() && set.is_empty() => return Err(Usage(problem_lines(&set))),
        None => return Err(Usage(format!("the file holds {} iam tokens; pick one with --name", set.len()))),
    };
    // A token of another join method is the verifier's to refuse (token_invalid, naming it).
    if set.join_method(&name).is_some_and(|m| m != iam_join::JoinMethod::Iam) {
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

pub(crate) fn problem_lines(set: &TokenSet) -> String {
    set.diagnostics().iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_ip_ports_ipv6_and_localhost() {
        let ok = |s: &str| listen_address(s).ok().map(|a| a.to_string());
        assert_eq!(ok("127.0.0.1:3080").as_deref(), Some("127.0.0.1:3080"));
        assert_eq!(ok("[::1]:3099").as_deref(), Some("[::1]:3099"));
        assert_eq!(ok("localhost:3099").as_deref(), Some("127.0.0.1:3099"));
        for refused in ["localhost", "example.com:80", "localhost:99999", ":3080"] {
            assert!(listen_address(refused).is_err(), "{refused}");
        }
    }
}
