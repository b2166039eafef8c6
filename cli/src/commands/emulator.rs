//! `iam-join emulator`: the SigV4-checking STS emulator as a process on a loopback port, with
//! example principals and an IRSA-style role, printed as `export` lines a shell can source. It
//! is how to try `iam-join serve` and `iam-join join` end to end with no AWS account.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use iam_join::emulator::{EmulatedPrincipal, EmulatedRole, StsEmulator};

use crate::Usage;

/// Which identity the printed variables make the AWS chain find.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Export {
    /// The IAM user's static keys.
    User,
    /// The role, through a web identity token file, as an EKS pod with IRSA gets it.
    Irsa,
}

#[derive(Args)]
pub(crate) struct EmulatorArgs {
    /// Address to listen on (a loopback address: `127.0.0.1:PORT`, `[::1]:PORT`, `localhost:PORT`).
    #[arg(long, default_value = "127.0.0.1:4566")]
    listen: String,
    /// Which identity the printed `export` lines select (the other is printed as comments).
    #[arg(long, value_enum, default_value_t = Export::User)]
    export: Export,
    /// Folder for the web identity token file (default: a new one under the temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The emulator's IAM user, in the account `examples/tokens.yaml` allows.
pub(crate) const USER_ARN: &str = "arn:aws:iam::111111111111:user/ci-deployer";
const USER_KEY: &str = "AKIAEMULATEDUSER0001";
const USER_SECRET: &str = "emulated/user/secret/key/000000000000000";
/// A user of another account: `examples/tokens.yaml` refuses it (`not_allowed`).
const STRANGER_ARN: &str = "arn:aws:iam::222222222222:user/stranger";
const STRANGER_KEY: &str = "AKIAEMULATEDOTHER001";
const STRANGER_SECRET: &str = "emulated/other/secret/key/00000000000000";
/// The role a pod's service account maps to with IRSA; its sessions are
/// `arn:aws:sts::111111111111:assumed-role/teleport-kube-agent/SESSION`.
pub(crate) const ROLE_ARN: &str = "arn:aws:iam::111111111111:role/teleport-kube-agent";

pub(crate) fn run(a: &EmulatorArgs) -> Result<ExitCode, Usage> {
    let listen = crate::listen_address(&a.listen)?;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("iam-join-emulator-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Usage(format!("{}: {e}", dir.display())))?;
    // The projected service-account token of an EKS pod, as far as the emulated OIDC provider
    // cares: the one value it accepts for the role.
    let token = format!("emulated-web-identity-token.{}", iam_join::challenge::generate()?);
    let token_file = dir.join("web-identity-token");
    std::fs::write(&token_file, &token).map_err(|e| Usage(format!("{}: {e}", token_file.display())))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let sts = emulator(listen, &token).await.map_err(|e| Usage(format!("--listen {listen}: {e}")))?;
        print_exports(&sts.url(), a.export, &token_file)?;
        let (Ok(mut term), Ok(mut int)) = (
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        ) else {
            return Err(Usage("cannot listen for SIGTERM/SIGINT".into()));
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("iam-join emulator: stopped after {} requests", sts.requests());
        Ok(ExitCode::SUCCESS)
    })
}

async fn emulator(listen: SocketAddr, token: &str) -> std::io::Result<StsEmulator> {
    let user = |key: &str, secret: &str, arn: &str, id: &str| EmulatedPrincipal::new(key, secret, None, arn, id);
    StsEmulator::builder()
        .listen(listen)
        .principal(user(USER_KEY, USER_SECRET, USER_ARN, "AIDAEMULATEDUSER0001"))
        .principal(user(STRANGER_KEY, STRANGER_SECRET, STRANGER_ARN, "AIDAEMULATEDOTHER001"))
        .role(EmulatedRole::new(ROLE_ARN, "AROAEMULATEDROLE0001", token))
        .start()
        .await
}

/// The shell lines: comments, and `export` lines for the chosen identity. They keep the rest of
/// the machine's AWS setup out (config files, IMDS), so what joins is what is printed.
fn print_exports(url: &str, export: Export, token_file: &std::path::Path) -> Result<(), Usage> {
    let on = |wanted: Export| if export == wanted { "" } else { "# " };
    let (user, irsa) = (on(Export::User), on(Export::Irsa));
    let token_file = token_file.display();
    let base = url.trim_end_matches('/');
    let text = format!(
        "# iam-join's STS emulator at {url}: it checks SigV4 signatures; it is not STS.\n\
         # Point the join service at it: iam-join serve --sts-endpoint {url} ...\n\
         # Web identity tokens (sts:GetWebIdentityToken) of account 111111111111 come from the issuer\n\
         # {base}/issuers/111111111111: iam-join serve --web-identity-issuer 111111111111={base}/issuers/111111111111 --audience AUD\n\
         export AWS_ENDPOINT_URL_STS={url}\n\
         export AWS_REGION=us-west-2 AWS_EC2_METADATA_DISABLED=true\n\
         export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null\n\
         # The IAM user {USER_ARN}:\n\
         {user}export AWS_ACCESS_KEY_ID={USER_KEY} AWS_SECRET_ACCESS_KEY={USER_SECRET}\n\
         # IRSA: the role {ROLE_ARN}, assumed with a web identity token\n\
         # (its sessions are arn:aws:sts::111111111111:assumed-role/teleport-kube-agent/SESSION):\n\
         {irsa}unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY\n\
         {irsa}export AWS_ROLE_ARN={ROLE_ARN} AWS_WEB_IDENTITY_TOKEN_FILE={token_file}\n\
         # Another account's user, which examples/tokens.yaml does not allow ({STRANGER_ARN}):\n\
         # export AWS_ACCESS_KEY_ID={STRANGER_KEY} AWS_SECRET_ACCESS_KEY={STRANGER_SECRET}\n"
    );
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
