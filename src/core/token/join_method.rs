//! [`JoinMethod`]: how a Teleport provision token says its agents prove who they are.

use std::fmt;

/// A join method, as `spec.join_method` names it. Only [`JoinMethod::Iam`] tokens are this
/// library's to verify; the others are recognised (a `tctl get tokens` file mixes them) and
/// skipped.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum JoinMethod {
    /// `iam`: a signed `sts:GetCallerIdentity`.
    Iam,
    /// `token`, Teleport's default: a static secret.
    Token,
    /// `ec2`: an EC2 instance identity document.
    Ec2,
    /// `kubernetes`.
    Kubernetes,
    /// `github`.
    Github,
    /// `circleci`.
    Circleci,
    /// `gitlab`.
    Gitlab,
    /// `azure`.
    Azure,
    /// `azure_devops`.
    AzureDevops,
    /// `gcp`.
    Gcp,
    /// `spacelift`.
    Spacelift,
    /// `tpm`.
    Tpm,
    /// `terraform_cloud`.
    TerraformCloud,
    /// `bitbucket`.
    Bitbucket,
    /// `oracle`.
    Oracle,
    /// `bound_keypair`.
    BoundKeypair,
    /// `env0`.
    Env0,
    /// A method this version does not know, by its name.
    Other(String),
}

const NAMED: &[(JoinMethod, &str)] = &[
    (JoinMethod::Iam, "iam"),
    (JoinMethod::Token, "token"),
    (JoinMethod::Ec2, "ec2"),
    (JoinMethod::Kubernetes, "kubernetes"),
    (JoinMethod::Github, "github"),
    (JoinMethod::Circleci, "circleci"),
    (JoinMethod::Gitlab, "gitlab"),
    (JoinMethod::Azure, "azure"),
    (JoinMethod::AzureDevops, "azure_devops"),
    (JoinMethod::Gcp, "gcp"),
    (JoinMethod::Spacelift, "spacelift"),
    (JoinMethod::Tpm, "tpm"),
    (JoinMethod::TerraformCloud, "terraform_cloud"),
    (JoinMethod::Bitbucket, "bitbucket"),
    (JoinMethod::Oracle, "oracle"),
    (JoinMethod::BoundKeypair, "bound_keypair"),
    (JoinMethod::Env0, "env0"),
];

impl JoinMethod {
    /// The method named `name` in a token file.
    pub fn from_name(name: &str) -> Self {
        NAMED.iter().find(|(_, n)| *n == name).map_or_else(|| JoinMethod::Other(name.to_owned()), |(m, _)| m.clone())
    }

    /// The name a token file gives it, e.g. `iam`.
    pub fn as_str(&self) -> &str {
        match self {
            JoinMethod::Other(name) => name,
            known => NAMED.iter().find(|(m, _)| m == known).map_or("", |(_, n)| n),
        }
    }
}

impl fmt::Display for JoinMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (m, n) in NAMED {
            assert_eq!(&JoinMethod::from_name(n), m);
            assert_eq!(m.as_str(), *n);
        }
        assert_eq!(JoinMethod::from_name("future_method"), JoinMethod::Other("future_method".into()));
        assert_eq!(JoinMethod::from_name("future_method").as_str(), "future_method");
    }
}
