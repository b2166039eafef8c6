//! A fake AWS Organizations on the shared loopback server, and the principals of its accounts:
//! a small tree (an organization with nested OUs, an account in no organization, one in
//! another organization) with failure modes.

use std::collections::HashMap;

use iam_join::emulator::EmulatedPrincipal;
use tokio::io::AsyncWriteExt;

use super::loopback::{self, Loopback};

pub(crate) const ORG: &str = "o-abcdefghij";
pub(crate) const ROOT: &str = "r-ab12";
pub(crate) const PROD: &str = "ou-ab12-prod0001";
pub(crate) const PROD_WEB: &str = "ou-ab12-prodweb1";
pub(crate) const DEV: &str = "ou-ab12-devel001";

/// (account, role name) of each test principal; the key id is derived from the account.
const ACCOUNTS: &[(&str, &str)] = &[
    ("222222222222", "web"),     // org, root > prod > prod-web
    ("333333333333", "api"),     // org, root > prod
    ("444444444444", "dev"),     // org, root > dev
    ("555555555555", "lonely"),  // in no organization
    ("666666666666", "foreign"), // another organization
];

pub(crate) fn key(account: &str) -> String {
    format!("AKIA{account}ORG0")
}

pub(crate) fn principals() -> Vec<EmulatedPrincipal> {
    ACCOUNTS
        .iter()
        .map(|(a, role)| {
            EmulatedPrincipal::new(
                key(a),
                format!("secret-{a}"),
                None,
                format!("arn:aws:iam::{a}:user/{role}"),
                format!("AIDA{a}"),
            )
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    Normal,
    Denied,
    Throttled,
}

/// A fake Organizations endpoint on the shared loopback server, answering DescribeAccount and
/// ListParents from a small tree on kept-alive connections.
pub(crate) async fn organizations(mode: Mode) -> Loopback {
    let parents: HashMap<&str, (&str, &str)> = HashMap::from([
        ("222222222222", (PROD_WEB, "ORGANIZATIONAL_UNIT")),
        (PROD_WEB, (PROD, "ORGANIZATIONAL_UNIT")),
        ("333333333333", (PROD, "ORGANIZATIONAL_UNIT")),
        (PROD, (ROOT, "ROOT")),
        ("444444444444", (DEV, "ORGANIZATIONAL_UNIT")),
        (DEV, (ROOT, "ROOT")),
    ]);
    Loopback::start(move |mut s, request| {
        let req = String::from_utf8_lossy(&request).to_string();
        assert!(
            req.to_ascii_lowercase().contains("authorization: aws4-hmac-sha256 credential=akiaorgreader000000/"),
            "{req}"
        );
        let field = |name: &str| {
            req.split(&format!("\"{name}\":\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let (status, body) = match mode {
            Mode::Denied => (400, r#"{"__type":"AccessDeniedException","Message":"no"}"#.to_owned()),
            Mode::Throttled => {
                (400, r#"{"__type":"TooManyRequestsException","Message":"slow"}"#.to_owned())
            }
            Mode::Normal if req.contains("AWSOrganizationsV20161128.DescribeAccount") => {
                let a = field("AccountId");
                match a.as_str() {
                    "555555555555" => {
                        (400, r#"{"__type":"AccountNotFoundException","Message":"x"}"#.to_owned())
                    }
                    "666666666666" => (
                        200,
                        format!(
                            r#"{{"Account":{{"Arn":"arn:aws:organizations::777777777777:account/o-zzzzzzzzzz/{a}","Id":"{a}"}}}}"#
                        ),
                    ),
                    _ => (
                        200,
                        format!(
                            r#"{{"Account":{{"Arn":"arn:aws:organizations::111111111111:account/{ORG}/{a}","Id":"{a}"}}}}"#
                        ),
                    ),
                }
            }
            Mode::Normal => {
                let child = field("ChildId");
                // The foreign account's organization has its own root.
                let (id, kind) = parents.get(child.as_str()).copied().unwrap_or(("r-zz99", "ROOT"));
                (200, format!(r#"{{"Parents":[{{"Id":"{id}","Type":"{kind}"}}]}}"#))
            }
        };
        let reply = loopback::reply(status, "application/x-amz-json-1.1", body.as_bytes());
        async move { s.write_all(&reply).await.ok().map(|()| s) }
    })
    .await
}
