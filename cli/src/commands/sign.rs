//! `iam-join sign`: the agent side, signed with credentials from the standard AWS chain.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use iam_join::agent::{
    AwsChain, ChainIdentity, DEFAULT_PRESIGN_EXPIRES, eks_token, presign_join_url, sign_join_request,
};

use crate::{AgentArgs, SignArgs, Usage};

pub(crate) fn run(a: &SignArgs) -> Result<ExitCode, Usage> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let identity = rt.block_on(load(&a.agent))?;
    let join = identity.join_request(a.challenge.as_str(), a.agent.fips);
    let failed = |e: iam_join::Error| Usage(e.detail().to_owned());
    if a.presigned {
        let url = presign_join_url(identity.credentials(), &join, DEFAULT_PRESIGN_EXPIRES, SystemTime::now())
            .map_err(failed)?;
        println!("{}", if a.url { url } else { eks_token(&url) });
        return Ok(ExitCode::SUCCESS);
    }
    if a.web_identity {
        let audience = a.audience.as_deref().unwrap_or_default();
        let audiences = [audience, a.challenge.as_str()];
        let jwt = rt.block_on(identity.web_identity_token(&audiences, &a.algorithm, None)).map_err(failed)?;
        println!("{jwt}");
        return Ok(ExitCode::SUCCESS);
    }
    let join = join.accept_json(a.accept_json).challenge_header(&a.challenge_header);
    let raw = sign_join_request(identity.credentials(), &join, SystemTime::now()).map_err(failed)?;
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
