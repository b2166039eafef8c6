//! `iam-join verify`: one captured join through the library's `Verifier`, printed as the join
//! service's answer (the wire types), with the operator's detail of a refusal on stderr.

use std::io::Read;
use std::process::ExitCode;
use std::time::SystemTime;

use iam_join::agent::Credentials;
use iam_join::organizations::OrganizationsClient;
use iam_join::wire::Answer;
use iam_join::{Challenge, Proof, Verifier};

use crate::{Usage, VerifyArgs, load_tokens};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Forwarded,
    Presigned,
    WebIdentity,
}

pub(crate) fn run(a: &VerifyArgs) -> Result<ExitCode, Usage> {
    let (set, name) = load_tokens(&a.token.file, a.token.name.as_deref())?;
    // Each proof is read bounded: a little more than the library accepts, so that it, not a cut
    // here, refuses what is too long.
    let (source, limit, kind) = match (&a.request, &a.presigned, &a.web_identity_token) {
        (Some(f), _, _) => (f, 4 * iam_join::MAX_HEAD_BYTES, Kind::Forwarded),
        (_, Some(f), _) => (f, iam_join::MAX_PRESIGNED_BYTES + 2, Kind::Presigned),
        (_, _, Some(f)) => (f, iam_join::MAX_WEB_IDENTITY_TOKEN_BYTES + 2, Kind::WebIdentity),
        _ => return Err(Usage("one of --request, --presigned, --web-identity-token is required".into())),
    };
    let mut raw = Vec::new();
    if source == "-" {
        std::io::stdin().take(limit as u64).read_to_end(&mut raw)?;
    } else {
        let file = std::fs::File::open(source).map_err(|e| Usage(format!("{source}: {e}")))?;
        file.take(limit as u64).read_to_end(&mut raw).map_err(|e| Usage(format!("{source}: {e}")))?;
    }
    if kind != Kind::Forwarded {
        // A token or URL read from a file or a pipe: one trailing newline is not part of it.
        if raw.ends_with(b"\n") {
            raw.pop();
        }
    }
    let proof = match kind {
        Kind::Forwarded => Proof::Forwarded(&raw),
        Kind::Presigned => Proof::Presigned(&raw),
        Kind::WebIdentity => Proof::WebIdentityToken(&raw),
    };
    let now = match &a.now {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map(SystemTime::from)
            .map_err(|e| Usage(format!("--now {t:?} is not RFC 3339: {e}")))?,
        None => SystemTime::now(),
    };
    let timeout = a.endpoints.timeout()?;
    let policy = a.endpoints.policy()?;
    let transport = a.endpoints.sts_transport(timeout)?;
    let uses_organizations = set.get(&name).is_some_and(|t| t.needs_organizations());
    let mut builder = Verifier::builder(set).policy(policy).transport(transport).deadline(timeout);
    match a.endpoints.web_identity()? {
        Some(web) => builder = builder.web_identity(web),
        None if kind == Kind::WebIdentity => {
            return Err(Usage("--web-identity-token needs --web-identity-issuer ACCOUNT=URL and --audience".into()));
        }
        None => {}
    }
    if uses_organizations {
        let creds = Credentials::from_env().map_err(|e| {
            Usage(format!("token {name:?} has organization rules: {} (the auth server's credentials)", e.detail()))
        })?;
        let org = a.endpoints.organizations_transport(timeout)?;
        builder = builder.organizations(OrganizationsClient::new(creds, org));
    }
    let verifier = builder.build();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = rt.block_on(verifier.verify(&name, Challenge::Plain(&a.challenge), proof, now));
    // The answer a joining client would get, from the library's wire types; the operator's
    // full detail (which the client is not told) on stderr.
    println!("{}", serde_json::to_string(&Answer::of(&name, &result)).unwrap_or_default());
    if let Err(e) = &result {
        eprintln!("iam-join: refused: {e}");
    }
    Ok(if result.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
