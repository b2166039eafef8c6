//! One allow rule: the type, the one validator (for the YAML loader and [`Rule::new`]) and the
//! lints for rules Teleport accepts that can never match.

use crate::core::arn::{AccountId, Arn, Partition, Service};
use crate::core::error::{Error, ErrorKind, Severity};

/// The longest `aws_arn` pattern accepted (an ARN is at most 2048 bytes).
pub const MAX_ARN_PATTERN_LEN: usize = 2048;

/// Which organizational units an organization rule includes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OuInclude {
    /// `include: ["*"]`: every account of the organization.
    All,
    /// Accounts under (at any depth) at least one of these OU or root ids.
    Any(Vec<String>),
}

/// The `aws_organizational_units` part of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrganizationalUnits {
    /// The included OUs.
    pub include: OuInclude,
    /// Accounts under any of these OUs never match.
    pub exclude: Vec<String>,
}

/// One validated allow rule. Its fields are ANDed; a token's rules are ORed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub(crate) aws_account: Option<AccountId>,
    pub(crate) aws_arn: Option<String>,
    pub(crate) aws_organization_id: Option<String>,
    pub(crate) aws_organizational_units: Option<OrganizationalUnits>,
}

impl Rule {
    /// Builds a rule from its parts with the loader's validator: errors for an account that is
    /// not 12 digits, a pattern longer than [`MAX_ARN_PATTERN_LEN`], or neither field set (an
    /// empty `aws_arn` counts as unset, as in Teleport). A pattern that can never match is
    /// accepted, as Teleport accepts it; [`Rule::lint`] says why it never matches.
    ///
    /// ```
    /// use iam_join::Rule;
    /// let rule = Rule::new(Some("111111111111"), Some("arn:aws:sts::111111111111:assumed-role/r/*")).unwrap();
    /// assert_eq!(rule.aws_account().unwrap().as_str(), "111111111111");
    /// assert_eq!(rule.lint(), None);
    /// assert!(Rule::new(None, None).is_err());
    /// assert!(Rule::new(Some("1111"), None).is_err());
    /// let forgot_star = Rule::new(None, Some("arn:aws:sts::111111111111:assumed-role/r")).unwrap();
    /// assert!(forgot_star.lint().unwrap().contains("can never match"));
    /// ```
    pub fn new(aws_account: Option<&str>, aws_arn: Option<&str>) -> Result<Self, Error> {
        let mut errors = Vec::new();
        let fields = RuleFields { aws_account, aws_arn, ..RuleFields::default() };
        let rule = validate(&fields, &mut |severity, _, message| {
            if severity == Severity::Error {
                errors.push(message);
            }
        });
        rule.ok_or_else(|| Error::new(ErrorKind::TokenInvalid, errors.join("; ")))
    }

    /// Why this rule can never match any identity STS reports, or `None` when it can. The
    /// loader reports the same text as a warning.
    pub fn lint(&self) -> Option<String> {
        self.aws_arn.as_deref().and_then(|p| arn_pattern_lint(p, self.aws_account.as_ref()))
    }

    /// The account the identity must be in, if the rule names one.
    pub fn aws_account(&self) -> Option<&AccountId> {
        self.aws_account.as_ref()
    }

    /// The ARN glob the identity must match, if the rule names one.
    pub fn aws_arn(&self) -> Option<&str> {
        self.aws_arn.as_deref()
    }

    /// The AWS Organization the identity's account must belong to, if any.
    pub fn aws_organization_id(&self) -> Option<&str> {
        self.aws_organization_id.as_deref()
    }

    /// The organizational units the identity's account must sit under, if any.
    pub fn aws_organizational_units(&self) -> Option<&OrganizationalUnits> {
        self.aws_organizational_units.as_ref()
    }

    /// Whether matching this rule needs an AWS Organizations lookup.
    pub fn needs_organization(&self) -> bool {
        self.aws_organization_id.is_some()
    }
}

/// The fields of one allow rule as written, before validation.
#[derive(Default)]
pub(crate) struct RuleFields<'a> {
    pub(crate) aws_account: Option<&'a str>,
    pub(crate) aws_arn: Option<&'a str>,
    pub(crate) aws_organization_id: Option<&'a str>,
    pub(crate) aws_organizational_units: Option<OuFields<'a>>,
    /// ec2 rule fields, present in an iam rule: always an error.
    pub(crate) aws_role: bool,
    pub(crate) aws_regions: bool,
    /// Whether the rule also has keys no rule knows (each its own error): a rule with no known
    /// field is then a typo, already reported, not a second problem.
    pub(crate) unknown_keys: bool,
}

/// `aws_organizational_units` as written.
pub(crate) struct OuFields<'a> {
    pub(crate) include: Option<Vec<&'a str>>,
    pub(crate) exclude: Vec<&'a str>,
}

/// Which part of a rule a finding is about, so the loader can give its line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    Rule,
    Account,
    Arn,
    OrganizationId,
    Ous,
    Include,
    IncludeItem(usize),
    ExcludeItem(usize),
    AwsRole,
    AwsRegions,
}

/// The one rule validator, for the YAML loader and [`Rule::new`]: reports each finding with its
/// severity and place, and returns the rule when no finding is an error. Warnings are rules
/// Teleport accepts that can never match; they admit nobody and do not stop the rule.
pub(crate) fn validate(f: &RuleFields<'_>, report: &mut dyn FnMut(Severity, Place, String)) -> Option<Rule> {
    let mut ok = true;
    // Every finding goes through here; an error makes the rule unusable, a warning does not.
    let mut emit = |severity: Severity, place: Place, message: String| {
        ok &= severity != Severity::Error;
        report(severity, place, message);
    };
    if f.aws_role {
        emit(
            Severity::Error,
            Place::AwsRole,
            "aws_role belongs to join_method ec2 rules and is not checked by iam; remove it".to_owned(),
        );
    }
    if f.aws_regions {
        emit(
            Severity::Error,
            Place::AwsRegions,
            "aws_regions belongs to join_method ec2 rules and is not checked by iam; remove it".to_owned(),
        );
    }
    let account = f.aws_account.and_then(|a| {
        let parsed = AccountId::parse(a);
        if parsed.is_none() {
            emit(Severity::Error, Place::Account, format!("aws_account {a:?} is not a 12-digit AWS account id"));
        }
        parsed
    });
    let aws_arn = match f.aws_arn {
        // Teleport treats an empty aws_arn as unset.
        Some("") => {
            emit(
                Severity::Warning,
                Place::Arn,
                "aws_arn is empty, which Teleport treats as unset; remove it".to_owned(),
            );
            None
        }
        Some(p) if p.len() > MAX_ARN_PATTERN_LEN => {
            emit(Severity::Error, Place::Arn, format!("aws_arn is longer than {MAX_ARN_PATTERN_LEN} bytes"));
            None
        }
        Some(p) => {
            if let Some(why) = arn_pattern_lint(p, account.as_ref()) {
                emit(Severity::Warning, Place::Arn, why);
            }
            Some(p)
        }
        None => None,
    };
    if let Some(o) = f.aws_organization_id
        && !is_org_id(o)
    {
        emit(
            Severity::Error,
            Place::OrganizationId,
            format!(
                "aws_organization_id {o:?} is not an organization id (o- and 10 to 32 lowercase letters or digits)"
            ),
        );
    }
    let ous = f.aws_organizational_units.as_ref().and_then(|ous| {
        if f.aws_organization_id.is_none() {
            emit(
                Severity::Error,
                Place::Ous,
                "aws_organizational_units needs aws_organization_id in the same rule".to_owned(),
            );
        }
        let include = match &ous.include {
            None => {
                emit(
                    Severity::Error,
                    Place::Ous,
                    "aws_organizational_units.include is missing; use [\"*\"] for the whole organization".to_owned(),
                );
                None
            }
            Some(inc) if inc.is_empty() => {
                emit(
                    Severity::Error,
                    Place::Include,
                    "aws_organizational_units.include is empty; use [\"*\"] for the whole organization".to_owned(),
                );
                None
            }
            Some(inc) if inc.contains(&"*") && inc.len() > 1 => {
                emit(
                    Severity::Error,
                    Place::Include,
                    "\"*\" in include stands alone: it already means every OU".to_owned(),
                );
                None
            }
            Some(inc) if inc.contains(&"*") => Some(OuInclude::All),
            Some(inc) => {
                let mut ids = Vec::new();
                for (i, v) in inc.iter().enumerate() {
                    if is_ou_or_root_id(v) {
                        ids.push((*v).to_owned());
                    } else {
                        emit(
                            Severity::Error,
                            Place::IncludeItem(i),
                            format!("{v:?} is not an OU id (ou-...) or root id (r-...)"),
                        );
                    }
                }
                Some(OuInclude::Any(ids))
            }
        };
        let mut exclude = Vec::new();
        for (i, v) in ous.exclude.iter().enumerate() {
            if *v == "*" {
                emit(
                    Severity::Error,
                    Place::ExcludeItem(i),
                    "\"*\" cannot be excluded: the rule would match nothing".to_owned(),
                );
            } else if is_ou_or_root_id(v) {
                exclude.push((*v).to_owned());
            } else {
                emit(
                    Severity::Error,
                    Place::ExcludeItem(i),
                    format!("{v:?} is not an OU id (ou-...) or root id (r-...)"),
                );
            }
        }
        include.map(|include| OrganizationalUnits { include, exclude })
    });
    if f.aws_account.is_none() && aws_arn.is_none() && f.aws_organization_id.is_none() && !f.unknown_keys {
        emit(Severity::Error, Place::Rule, "a rule needs aws_account, aws_arn or aws_organization_id".to_owned());
    }
    ok.then(|| Rule {
        aws_account: account,
        aws_arn: aws_arn.map(str::to_owned),
        aws_organization_id: f.aws_organization_id.map(str::to_owned),
        aws_organizational_units: ous,
    })
}

/// The part of a pattern before its first wildcard, split on `:`, with only complete fields.
fn literal_fields(pattern: &str) -> Vec<&str> {
    let literal = &pattern[..pattern.find(['*', '?']).unwrap_or(pattern.len())];
    let mut fields: Vec<&str> = literal.split(':').collect();
    if pattern.len() != literal.len() {
        // The last field continues past the wildcard.
        fields.pop();
    }
    fields
}

/// The account an ARN pattern pins, when its account field is literal.
fn pattern_account(pattern: &str) -> Option<AccountId> {
    literal_fields(pattern).get(4).and_then(|a| AccountId::parse(a))
}

/// Why an `aws_arn` pattern can never match the ARN of a principal that STS reports, or `None`
/// when it can. Teleport accepts such patterns (they simply never match), so this is a lint, not
/// an error: a forgotten `/*`, characters no ARN holds, a partition, service, region or account
/// field no principal ARN has, or an account other than the rule's own `aws_account`.
pub(crate) fn arn_pattern_lint(pattern: &str, account: Option<&AccountId>) -> Option<String> {
    let never = |why: String| Some(format!("aws_arn {pattern:?} can never match a principal ARN: {why}"));
    if !pattern.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return never("it has characters no ARN contains (spaces, controls or non-ASCII)".to_owned());
    }
    // The pattern must be able to start with `arn:`, wildcards included.
    for (p, want) in pattern.bytes().chain(std::iter::repeat(0)).zip(*b"arn:") {
        match p {
            b'*' => break,
            b'?' => {}
            p if p == want => {}
            _ => return never("it must start with \"arn:\"".to_owned()),
        }
    }
    // STS reports a role session as `arn:P:sts::A:assumed-role/ROLE/SESSION`, never the role.
    let literal = &pattern[..pattern.find(['*', '?']).unwrap_or(pattern.len())];
    let names_a_role = matches!(literal.splitn(6, ':').collect::<Vec<_>>()[..],
        [_, _, "iam", _, _, resource] if resource.starts_with("role/"));
    let role = || {
        never(
            "STS reports a role as arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION, never as an IAM role ARN"
                .to_owned(),
        )
    };
    if !pattern.contains(['*', '?']) {
        return match Arn::parse(pattern) {
            Err(e) => never(e.to_string()),
            Ok(_) if names_a_role => role(),
            Ok(_) => account_conflict(pattern, account),
        };
    }
    let fields = literal_fields(pattern);
    if let Some(p) = fields.get(1).filter(|p| Partition::from_name(p).is_none()) {
        return never(format!("unknown partition {p:?}"));
    }
    if let Some(s) = fields.get(2).filter(|s| Service::from_name(s).is_none()) {
        return never(format!("service {s:?} is not iam or sts"));
    }
    if let Some(r) = fields.get(3).filter(|r| !r.is_empty()) {
        return never(format!("principal ARNs have an empty region, found {r:?}"));
    }
    if let Some(a) = fields.get(4).filter(|a| AccountId::parse(a).is_none()) {
        return never(format!("account {a:?} is not 12 digits"));
    }
    if names_a_role {
        return role();
    }
    account_conflict(pattern, account)
}

fn account_conflict(pattern: &str, account: Option<&AccountId>) -> Option<String> {
    let (Some(want), Some(pinned)) = (account, pattern_account(pattern)) else { return None };
    (want != &pinned)
        .then(|| format!("aws_arn {pattern:?} can never match: it names account {pinned} but aws_account is {want}"))
}

fn is_lower_alnum(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

pub(crate) fn is_org_id(s: &str) -> bool {
    s.strip_prefix("o-").is_some_and(|r| is_lower_alnum(r, 10, 32))
}

fn is_ou_or_root_id(s: &str) -> bool {
    if let Some(r) = s.strip_prefix("r-") {
        return is_lower_alnum(r, 4, 32);
    }
    s.strip_prefix("ou-")
        .and_then(|r| r.split_once('-'))
        .is_some_and(|(root, ou)| is_lower_alnum(root, 4, 32) && is_lower_alnum(ou, 8, 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_lints() {
        let never = [
            ("aws:iam::123456789012:user/x", None),
            ("arn:aws:iam::123456789012:user/x y", None),
            ("arn:aws:iam::123456789012:user/\u{e9}", None),
            ("arx*", None),
            ("arn:aws-mars:iam::*", None),
            ("arn:aws:s3:::bucket/*", None),
            ("arn:aws:iam:us-east-1:*", None),
            ("arn:aws:iam::1234:user/*", None),
            ("arn:aws:iam::123456789012:role", None),
            ("arn:aws:sts::123456789012:assumed-role/my-super-test-role", None),
            ("arn:aws:iam::123456789012:role/deploy", None),
            ("arn:aws:iam::123456789012:role/deploy-?", None),
            ("arn:aws:iam::123456789012:user/*", Some("111111111111")),
            ("arn:aws:iam::123456789012:user/x", Some("111111111111")),
        ];
        for (p, acct) in never {
            let acct = acct.and_then(AccountId::parse);
            let lint = arn_pattern_lint(p, acct.as_ref());
            assert!(lint.as_deref().is_some_and(|l| l.contains("can never match")), "{p:?}: {lint:?}");
        }
        let fine = [
            "*",
            "?*",
            "a*",
            "arn:*",
            "arn:aws:iam::*",
            "arn:aws:sts::123456789012:assumed-role/r/*",
            "arn:a?s:iam::1:x",
        ];
        for p in fine {
            assert_eq!(arn_pattern_lint(p, None), None, "{p:?} can match");
        }
    }

    #[test]
    fn a_pattern_that_cannot_match_a_session_is_a_lint_not_an_error() {
        let r = Rule::new(None, Some("arn:aws:sts::123456789012:assumed-role/my-super-test-role")).unwrap();
        assert!(r.lint().is_some_and(|l| l.contains("can never match")), "{:?}", r.lint());
        assert_eq!(Rule::new(None, Some("arn:aws:sts::123456789012:assumed-role/r/*")).unwrap().lint(), None);
    }
}
