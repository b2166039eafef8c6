//! `iam-join sign`: the agent side, signed with the credentials in the environment.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use iam_join::agent::{Credentials, JoinRequest, sign_join_request};

use crate::Usage;

pub(crate) fn run(
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
