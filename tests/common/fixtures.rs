//! The principals the STS emulator knows, their credentials, and the token file the tests join
//! with.

use iam_join::agent::Credentials;
use iam_join::emulator::EmulatedPrincipal;

pub(crate) const USER_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
pub(crate) const USER_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
pub(crate) const ROLE_KEY: &str = "ASIAIOSFODNN7EXAMPLE";
pub(crate) const ROLE_SECRET: &str = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY";
pub(crate) const ROLE_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN//////////wEaCXVzLWVhc3QtMSJHMEUCIQD";

pub(crate) fn principals() -> Vec<EmulatedPrincipal> {
    vec![
        EmulatedPrincipal::new(
            USER_KEY,
            USER_SECRET,
            None,
            "arn:aws:iam::111111111111:user/ci-deployer",
            "AIDAEXAMPLEUSERID0001",
        ),
        EmulatedPrincipal::new(
            ROLE_KEY,
            ROLE_SECRET,
            Some(ROLE_TOKEN.to_owned()),
            "arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-0123456789abcdef0",
            "AROAEXAMPLEROLEID0001:i-0123456789abcdef0",
        ),
        EmulatedPrincipal::new(
            "AKIAOTHERACCOUNT0001",
            "other-secret",
            None,
            "arn:aws:iam::999999999999:user/stranger",
            "AIDAEXAMPLEUSERID0009",
        ),
    ]
}

pub(crate) const TOKENS: &str = r#"
kind: token
version: v2
metadata:
  name: iam-token
spec:
  roles: [Kube, App, Discovery]
  join_method: iam
  allow:
  - aws_account: "111111111111"
  - aws_account: "333333333333"
    aws_arn: "arn:aws:sts::333333333333:assumed-role/teleport-node-role/i-*"
---
kind: token
version: v2
metadata:
  name: expired-token
  expires: "2020-01-01T00:00:00Z"
spec:
  roles: [Node]
  join_method: iam
  allow:
  - aws_account: "111111111111"
"#;

pub(crate) fn user() -> Credentials {
    Credentials::new(USER_KEY, USER_SECRET, None)
}

pub(crate) fn role() -> Credentials {
    Credentials::new(ROLE_KEY, ROLE_SECRET, Some(ROLE_TOKEN.into()))
}
