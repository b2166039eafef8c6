//! `iam-join sign`: the agent side, signed with credentials from the standard AWS chain.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use iam_join::agent::{AwsChain, ChainIdentity, sign_join_request};

use crate::{AgentArgs, Usage};

pub(crate) fn run(challenge: &str, agent: &AgentArgs, accept_json: bool, header: &str) -> Result<ExitCode, Usage> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let identity = rt.block_on(load(agent))?;
    let join = identity.join_request(challenge, agent.fips).accept_json(accept_json).challenge_header(header);
    let raw = sign_join_request(identity.credentials(), &join, SystemTime::now())
        .map_err(|e| Usage(e.detail().to_owned()))?;
    std::io::stdout().write_all(&raw)?;
    Ok(ExitCode::SUCCESS)
}

/// The agent's identity from the chain, with --profile and --region applied.
pub(crate) async fn load(agent: &AgentArgs) -> Result<ChainIdentity, Usage> {
    let mut chain = AwsChain::new();
    if let Some(p) = &agent.profile {
        chain = chain.profile(p);
    }
    if let Some(r) = &agent.region {
        chain = chain.region(r);
    }
    chain.load().await.map_err(|e| Usage(e.detail().to_owned()))
}
