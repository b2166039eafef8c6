//! Strict parsing of IAM and STS principal ARNs.
//!
//! Only the principals `sts:GetCallerIdentity` can return are accepted:
//! `arn:PARTITION:iam::ACCOUNT:user/[PATH/]NAME`, `...:iam::ACCOUNT:role/[PATH/]NAME`,
//! `...:iam::ACCOUNT:root`, `...:sts::ACCOUNT:assumed-role/ROLE/SESSION` and
//! `...:sts::ACCOUNT:federated-user/NAME`. Anything else is an error, so code that holds an
//! [`Arn`] never has to re-check its shape.

use std::fmt;

/// The longest principal ARN accepted. IAM caps a role or user ARN (path and name included)
/// well below this; anything longer is not something STS returns.
pub const MAX_ARN_LEN: usize = 2048;

/// An AWS partition this crate knows.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Partition {
    /// `aws`: the commercial regions.
    Aws,
    /// `aws-cn`: China.
    AwsCn,
    /// `aws-us-gov`: AWS GovCloud (US).
    AwsUsGov,
    /// `aws-iso`: US ISO East/West.
    AwsIso,
    /// `aws-iso-b`: US ISOB.
    AwsIsoB,
    /// `aws-iso-e`: EU ISOE.
    AwsIsoE,
    /// `aws-iso-f`: US ISOF.
    AwsIsoF,
    /// `aws-eusc`: AWS European Sovereign Cloud.
    AwsEusc,
}

impl Partition {
    /// Every known partition.
    pub const ALL: [Partition; 8] = [
        Self::Aws,
        Self::AwsCn,
        Self::AwsUsGov,
        Self::AwsIso,
        Self::AwsIsoB,
        Self::AwsIsoE,
        Self::AwsIsoF,
        Self::AwsEusc,
    ];

    /// The partition's name as it appears in ARNs, e.g. `aws-us-gov`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::AwsCn => "aws-cn",
            Self::AwsUsGov => "aws-us-gov",
            Self::AwsIso => "aws-iso",
            Self::AwsIsoB => "aws-iso-b",
            Self::AwsIsoE => "aws-iso-e",
            Self::AwsIsoF => "aws-iso-f",
            Self::AwsEusc => "aws-eusc",
        }
    }

    /// Parses a partition name exactly (case-sensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The service of a principal ARN.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// `iam`: users, roles, the account root.
    Iam,
    /// `sts`: assumed-role sessions and federated users.
    Sts,
}

impl Service {
    /// The service name as it appears in ARNs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Iam => "iam",
            Self::Sts => "sts",
        }
    }

    /// Parses `iam` or `sts` exactly.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "iam" => Some(Self::Iam),
            "sts" => Some(Self::Sts),
            _ => None,
        }
    }
}

/// The kind of principal an ARN names, with its parts.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// `iam::ACCOUNT:user/PATH/NAME`.
    User {
        /// The path, `/` when none, otherwise `/a/b/`.
        path: String,
        /// The user name.
        name: String,
    },
    /// `iam::ACCOUNT:role/PATH/NAME`.
    Role {
        /// The path, `/` when none, otherwise `/a/b/`.
        path: String,
        /// The role name.
        name: String,
    },
    /// `sts::ACCOUNT:assumed-role/ROLE/SESSION`.
    AssumedRole {
        /// The name of the assumed role (the assumed-role ARN carries no path).
        role_name: String,
        /// The role session name.
        session_name: String,
    },
    /// `sts::ACCOUNT:federated-user/NAME`.
    FederatedUser {
        /// The federated user's name.
        name: String,
    },
    /// `iam::ACCOUNT:root`.
    Root,
}

/// Why a string is not a principal ARN this crate accepts.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArnError {
    /// Longer than [`MAX_ARN_LEN`].
    #[error("ARN is longer than {MAX_ARN_LEN} bytes")]
    TooLong,
    /// Not of the form `arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE`.
    #[error("not an ARN of the form arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE")]
    NotAnArn,
    /// Holds a byte outside printable ASCII.
    #[error("ARN contains a character outside printable ASCII")]
    BadCharacter,
    /// The partition is not a known AWS partition.
    #[error("unknown partition {0:?}")]
    UnknownPartition(String),
    /// The service is neither `iam` nor `sts`.
    #[error("service {0:?} is not iam or sts")]
    UnknownService(String),
    /// IAM and STS principal ARNs have an empty region field.
    #[error("principal ARNs have an empty region, found {0:?}")]
    UnexpectedRegion(String),
    /// The account field is not 12 digits.
    #[error("account {0:?} is not 12 digits")]
    BadAccount(String),
    /// The resource is not a principal of the service (e.g. `iam::..:role` without a name).
    #[error("resource {0:?} is not a {1} principal (user/, role/, root, assumed-role/, federated-user/)")]
    BadResource(String, &'static str),
}

/// A parsed, validated principal ARN.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Arn {
    raw: String,
    partition: Partition,
    service: Service,
    account: AccountId,
    principal: Principal,
    /// Byte offset of the resource (after the fifth `:`).
    resource_at: usize,
    /// Whether the resource holds a `:` (only an IAM path can).
    resource_has_colon: bool,
}

/// A 12-digit AWS account id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId([u8; 12]);

impl AccountId {
    /// Parses exactly twelve ASCII digits.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes: [u8; 12] = s.as_bytes().try_into().ok()?;
        bytes.iter().all(u8::is_ascii_digit).then_some(Self(bytes))
    }

    /// The account id as a string slice.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored, so this never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", self.as_str())
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Characters IAM allows in user, role and session names: `[\w+=,.@-]`.
fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'=' | b',' | b'.' | b'@' | b'-')
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_name_char)
}

/// Splits `PATH/NAME` (the part after `user/` or `role/`) into (`/PATH/`, `NAME`).
fn path_and_name(rest: &str) -> Option<(String, String)> {
    let (path, name) = match rest.rfind('/') {
        Some(i) => (format!("/{}/", &rest[..i]), &rest[i + 1..]),
        None => ("/".to_owned(), rest),
    };
    // IAM paths are printable ASCII without empty segments.
    let path_ok = path == "/" || path.split('/').filter(|s| !s.is_empty()).count() == path.matches('/').count() - 1;
    (is_name(name) && path_ok).then(|| (path, name.to_owned()))
}

impl Arn {
    /// Parses a principal ARN strictly.
    ///
    /// ```
    /// use iam_join::{Arn, Principal};
    /// let arn = Arn::parse("arn:aws:sts::123456789012:assumed-role/deploy/i-0abc").unwrap();
    /// assert_eq!(arn.account().as_str(), "123456789012");
    /// assert!(matches!(arn.principal(), Principal::AssumedRole { .. }));
    /// assert_eq!(arn.canonical_role_arn().unwrap(), "arn:aws:iam::123456789012:role/deploy");
    /// assert!(Arn::parse("arn:aws:iam::123456789012:role").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, ArnError> {
        if s.len() > MAX_ARN_LEN {
            return Err(ArnError::TooLong);
        }
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ArnError::BadCharacter);
        }
        let mut parts = s.splitn(6, ':');
        let (Some("arn"), Some(partition), Some(service), Some(region), Some(account), Some(resource)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ArnError::NotAnArn);
        };
        let partition =
            Partition::from_name(partition).ok_or_else(|| ArnError::UnknownPartition(partition.to_owned()))?;
        let service = Service::from_name(service).ok_or_else(|| ArnError::UnknownService(service.to_owned()))?;
        if !region.is_empty() {
            return Err(ArnError::UnexpectedRegion(region.to_owned()));
        }
        let account = AccountId::parse(account).ok_or_else(|| ArnError::BadAccount(account.to_owned()))?;
        let bad = || ArnError::BadResource(resource.to_owned(), service.as_str());
        let principal = match service {
            Service::Iam => {
                if resource == "root" {
                    Principal::Root
                } else if let Some(rest) = resource.strip_prefix("user/") {
                    let (path, name) = path_and_name(rest).ok_or_else(bad)?;
                    Principal::User { path, name }
                } else if let Some(rest) = resource.strip_prefix("role/") {
                    let (path, name) = path_and_name(rest).ok_or_else(bad)?;
                    Principal::Role { path, name }
                } else {
                    return Err(bad());
                }
            }
            Service::Sts => {
                if let Some(rest) = resource.strip_prefix("assumed-role/") {
                    let (role, session) = rest.split_once('/').ok_or_else(bad)?;
                    if !is_name(role) || !is_name(session) {
                        return Err(bad());
                    }
                    Principal::AssumedRole { role_name: role.to_owned(), session_name: session.to_owned() }
                } else if let Some(name) = resource.strip_prefix("federated-user/") {
                    if !is_name(name) {
                        return Err(bad());
                    }
                    Principal::FederatedUser { name: name.to_owned() }
                } else {
                    return Err(bad());
                }
            }
        };
        let resource_at = s.len() - resource.len();
        let resource_has_colon = resource.contains(':');
        Ok(Self { raw: s.to_owned(), partition, service, account, principal, resource_at, resource_has_colon })
    }

    /// The ARN exactly as parsed.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The partition.
    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The service (`iam` or `sts`).
    pub fn service(&self) -> Service {
        self.service
    }

    /// The account that owns the principal.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The resource part, after the fifth `:` (e.g. `assumed-role/ROLE/SESSION`).
    pub fn resource(&self) -> &str {
        &self.raw[self.resource_at..]
    }

    pub(crate) fn resource_has_colon(&self) -> bool {
        self.resource_has_colon
    }

    /// The principal kind and its parts.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// For an assumed-role session, the IAM role ARN it came from
    /// (`arn:PARTITION:iam::ACCOUNT:role/NAME`); for a role, its own ARN; otherwise `None`.
    ///
    /// The assumed-role ARN does not carry the role's path, so a role with a path maps to the
    /// path-less form, as STS prints it.
    pub fn canonical_role_arn(&self) -> Option<String> {
        match &self.principal {
            Principal::AssumedRole { role_name, .. } => {
                Some(format!("arn:{}:iam::{}:role/{}", self.partition, self.account, role_name))
            }
            Principal::Role { .. } => Some(self.raw.clone()),
            _ => None,
        }
    }
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for Arn {
    type Err = ArnError;
    fn from_str(s: &str) -> Result<Self, ArnError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! ok {
        ($($name:ident: $arn:expr => $principal:expr;)*) => {$(
            #[test]
            fn $name() {
                let arn = Arn::parse($arn).unwrap();
                assert_eq!(arn.principal(), &$principal);
                assert_eq!(arn.as_str(), $arn);
            }
        )*};
    }

    fn s(x: &str) -> String {
        x.to_owned()
    }

    ok! {
        user: "arn:aws:iam::123456789012:user/alice" => Principal::User { path: s("/"), name: s("alice") };
        user_with_path: "arn:aws:iam::123456789012:user/division/team/alice" =>
            Principal::User { path: s("/division/team/"), name: s("alice") };
        role: "arn:aws:iam::123456789012:role/teleport-node" => Principal::Role { path: s("/"), name: s("teleport-node") };
        role_with_path: "arn:aws-us-gov:iam::123456789012:role/service-role/x" =>
            Principal::Role { path: s("/service-role/"), name: s("x") };
        assumed: "arn:aws:sts::123456789012:assumed-role/teleport-node-role/i-0123456789abcdef0" =>
            Principal::AssumedRole { role_name: s("teleport-node-role"), session_name: s("i-0123456789abcdef0") };
        assumed_email_session: "arn:aws-cn:sts::123456789012:assumed-role/AWSReservedSSO_Admin_1/a.b+c@example.com" =>
            Principal::AssumedRole { role_name: s("AWSReservedSSO_Admin_1"), session_name: s("a.b+c@example.com") };
        federated: "arn:aws:sts::123456789012:federated-user/bob" => Principal::FederatedUser { name: s("bob") };
        root: "arn:aws:iam::123456789012:root" => Principal::Root;
        eusc: "arn:aws-eusc:iam::123456789012:root" => Principal::Root;
    }

    macro_rules! bad {
        ($($name:ident: $arn:expr => $err:pat,)*) => {$(
            #[test]
            fn $name() {
                let got = Arn::parse($arn);
                assert!(matches!(got, Err($err)), "{:?} gave {:?}", $arn, got);
            }
        )*};
    }

    bad! {
        bare_arn: "arn" => ArnError::NotAnArn,
        not_an_arn: "NOT AN ARN" => ArnError::BadCharacter,
        not_an_arn_no_spaces: "NOT-AN-ARN" => ArnError::NotAnArn,
        two_fields: "arn:aws:iam" => ArnError::NotAnArn,
        role_without_name: "arn:aws:iam::123456789012:role" => ArnError::BadResource(..),
        role_slash_only: "arn:aws:iam::123456789012:role/" => ArnError::BadResource(..),
        assumed_without_session: "arn:aws:sts::123456789012:assumed-role/role" => ArnError::BadResource(..),
        assumed_empty_session: "arn:aws:sts::123456789012:assumed-role/role/" => ArnError::BadResource(..),
        assumed_extra_segment: "arn:aws:sts::123456789012:assumed-role/role/a/b" => ArnError::BadResource(..),
        unknown_partition: "arn:aws-mars:iam::123456789012:root" => ArnError::UnknownPartition(..),
        partition_case: "arn:AWS:iam::123456789012:root" => ArnError::UnknownPartition(..),
        unknown_service: "arn:aws:s3::123456789012:root" => ArnError::UnknownService(..),
        region_set: "arn:aws:iam:us-east-1:123456789012:root" => ArnError::UnexpectedRegion(..),
        short_account: "arn:aws:iam::12345678901:root" => ArnError::BadAccount(..),
        letters_account: "arn:aws:iam::12345678901a:root" => ArnError::BadAccount(..),
        user_in_sts: "arn:aws:sts::123456789012:user/x" => ArnError::BadResource(..),
        assumed_in_iam: "arn:aws:iam::123456789012:assumed-role/r/s" => ArnError::BadResource(..),
        bad_name_char: "arn:aws:iam::123456789012:user/a*b" => ArnError::BadResource(..),
        empty_path_segment: "arn:aws:iam::123456789012:user//alice" => ArnError::BadResource(..),
        newline: "arn:aws:iam::123456789012:user/alice\n" => ArnError::BadCharacter,
        non_ascii: "arn:aws:iam::123456789012:user/al\u{e9}" => ArnError::BadCharacter,
    }

    #[test]
    fn too_long() {
        let long = format!("arn:aws:iam::123456789012:user/{}", "a".repeat(MAX_ARN_LEN));
        assert_eq!(Arn::parse(&long), Err(ArnError::TooLong));
    }

    #[test]
    fn canonical_role_arn() {
        let a = Arn::parse("arn:aws-cn:sts::123456789012:assumed-role/r/s").unwrap();
        assert_eq!(a.canonical_role_arn().unwrap(), "arn:aws-cn:iam::123456789012:role/r");
        let u = Arn::parse("arn:aws:iam::123456789012:user/u").unwrap();
        assert_eq!(u.canonical_role_arn(), None);
    }

    #[test]
    fn account_id() {
        assert_eq!(AccountId::parse("012345678901").unwrap().as_str(), "012345678901");
        assert!(AccountId::parse("01234567890").is_none());
        assert!(AccountId::parse("0123456789012").is_none());
        assert!(AccountId::parse("01234567890x").is_none());
        assert_eq!(format!("{:?}", AccountId::parse("012345678901").unwrap()), "AccountId(012345678901)");
    }
}
