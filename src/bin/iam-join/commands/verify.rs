//! `iam-join verify`: one captured join through the library's `Verifier`, printed as JSON.

use std::io::Read;
use std::process::ExitCode;
use std::time::SystemTime;

use iam_join::agent::Credentials;
use iam_join::organizations::OrganizationsClient;
use iam_join::{Error, Verifier};
use serde_json::{Value, json};

use crate::{Usage, VerifyArgs, load_tokens};

pub(crate) fn run(a: &VerifyArgs) -> Result<ExitCode, Usage> {
    let (set, name) = load_tokens(&a.token.file, a.token.name.as_deref())?;
    // A request is at most MAX_HEAD_BYTES of head and a tiny body: read no more than 4 times that.
    let limit = 4 * iam_join::MAX_HEAD_BYTES as u64;
    let mut raw = Vec::new();
    if a.request == "-" {
        std::io::stdin().take(limit).read_to_end(&mut raw)?;
    } else {
        let file = std::fs::File::open(&a.request).map_err(|e| Usage(format!("{}: {e}", a.request)))?;
        file.take(limit).read_to_end(&mut raw).map_err(|e| Usage(format!("{}: {e}", a.request)))?;
    }
    let now = match &a.now {
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map(SystemTime::from)
            .map_err(|e| Usage(format!("--now {t:?} is not RFC 3339: {e}")))?,
        None => SystemTime::now(),
    };
    let timeout = a.endpoints.timeout()?;
    let policy = a.endpoints.policy()?;
    let transport = a.endpoints.sts_transport(timeout)?;
    let uses_organizations = set.get(&name).is_some_and(|t| t.matcher().organization_rules().next().is_some());
    let mut verifier = Verifier::new(set, policy, transport).deadline(timeout);
    if uses_organizations {
        let creds = Credentials::from_env().map_err(|e| {
            Usage(format!("token {name:?} has organization rules: {} (the auth server's credentials)", e.detail()))
        })?;
        let org = a.endpoints.organizations_transport(timeout)?;
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
