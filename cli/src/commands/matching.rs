//! `iam-join match`: rule by rule, why an identity would or would not be allowed.

use std::process::ExitCode;

use iam_join::{AccountId, Arn, Membership, Subject};
use serde_json::{Value, json};

use crate::{TokenArgs, Usage, load_tokens};

pub(crate) fn run(
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
    let explanation = t.matcher().explain_with(Subject::new(&account, &arn), membership);
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
