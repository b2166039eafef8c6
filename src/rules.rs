//! Allow rules compiled into a matcher, and `explain`.
//!
//! Semantics are Teleport's, exactly: a token's rules are ORed, the fields of one rule are ANDed,
//! unset fields are skipped; `aws_account` is exact equality; `aws_arn` is a case-sensitive glob
//! anchored at both ends in which only `*` (any run of characters, `/` and `:` included, possibly
//! empty) and `?` (exactly one character) are special. The lowest-index matching rule wins.
//!
//! Speed: rules are grouped by the account they pin (their `aws_account`, or the literal account
//! field of their ARN pattern). Each group's patterns form one [`globset::GlobSet`], so one match
//! consults two groups (the identity's account and "any account") whatever the rule count.

use std::collections::HashMap;
use std::fmt;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::arn::{AccountId, Arn, Partition};
use crate::error::{Error, ErrorKind};
use crate::token::{MAX_ARN_PATTERN_LEN, Rule};

/// Rules compiled once for fast matching. Immutable, `Send + Sync`, cheap to query concurrently.
///
/// An empty matcher matches nothing.
#[derive(Debug)]
pub struct RuleMatcher {
    rules: Vec<Rule>,
    buckets: HashMap<AccountId, Bucket>,
    any_account: Bucket,
}

#[derive(Debug, Default)]
struct Bucket {
    /// The lowest index among this bucket's rules that have no ARN pattern.
    account_only: Option<usize>,
    globs: GlobSet,
    /// Rule index of each glob, ascending: globs are added in rule order, so the first match
    /// reported by the set is the lowest-index rule.
    glob_rule: Vec<usize>,
}

struct BucketBuilder {
    account_only: Option<usize>,
    globs: GlobSetBuilder,
    glob_rule: Vec<usize>,
}

impl Default for BucketBuilder {
    fn default() -> Self {
        Self { account_only: None, globs: GlobSetBuilder::new(), glob_rule: Vec::new() }
    }
}

impl Bucket {
    fn first(&self, arn: &Candidate<'_>, scratch: &mut Vec<usize>) -> Option<usize> {
        // An account-only rule that precedes every pattern rule wins without touching the globs.
        if self.glob_rule.first().is_none_or(|&g| self.account_only.is_some_and(|a| a < g)) {
            return self.account_only;
        }
        self.globs.matches_candidate_into(arn, scratch);
        let by_arn = scratch.first().map(|&g| self.glob_rule[g]);
        min_some(self.account_only, by_arn)
    }

    fn arn_matches(&self, arn: &Candidate<'_>, into: &mut [bool]) {
        for g in self.globs.matches_candidate(arn) {
            into[self.glob_rule[g]] = true;
        }
    }
}

fn min_some(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Turns a Teleport ARN pattern into a globset glob with the same meaning: `[ ] { } \` are
/// escaped so they stay literal, and runs of `*` collapse into one (globset gives `**` a
/// path-segment meaning that Teleport's `.*` does not have; `.*.*` and `.*` are equal).
fn to_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut prev_star = false;
    for c in pattern.chars() {
        match c {
            '*' if prev_star => continue,
            '[' | ']' | '{' | '}' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
        prev_star = c == '*';
    }
    out
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

/// Why an `aws_arn` pattern is unusable, or `None` when it is fine. A pattern is refused when no
/// principal ARN could ever match it, or when it pins an account other than the rule's
/// `aws_account` (the rule could never match).
pub(crate) fn arn_pattern_problem(pattern: &str, account: Option<&AccountId>) -> Option<String> {
    if pattern.is_empty() {
        return Some("aws_arn is empty; remove it or give a pattern".to_owned());
    }
    if pattern.len() > MAX_ARN_PATTERN_LEN {
        return Some(format!("aws_arn is longer than {MAX_ARN_PATTERN_LEN} bytes"));
    }
    if !pattern.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Some(format!("aws_arn {pattern:?} has characters no ARN contains (spaces, controls or non-ASCII)"));
    }
    if !pattern.starts_with("arn:") {
        return Some(format!("aws_arn {pattern:?} cannot match any ARN: it must start with \"arn:\""));
    }
    if !pattern.contains(['*', '?']) {
        return Arn::parse(pattern)
            .err()
            .map(|e| format!("aws_arn {pattern:?} cannot match any principal ARN: {e}"))
            .or_else(|| account_conflict(pattern, account));
    }
    let fields = literal_fields(pattern);
    let cannot = |why: String| Some(format!("aws_arn {pattern:?} cannot match any principal ARN: {why}"));
    if let Some(p) = fields.get(1).filter(|p| Partition::from_name(p).is_none()) {
        return cannot(format!("unknown partition {p:?}"));
    }
    if let Some(s) = fields.get(2).filter(|s| !matches!(**s, "iam" | "sts")) {
        return cannot(format!("service {s:?} is not iam or sts"));
    }
    if let Some(r) = fields.get(3).filter(|r| !r.is_empty()) {
        return cannot(format!("principal ARNs have an empty region, found {r:?}"));
    }
    if let Some(a) = fields.get(4).filter(|a| AccountId::parse(a).is_none()) {
        return cannot(format!("account {a:?} is not 12 digits"));
    }
    account_conflict(pattern, account)
}

fn account_conflict(pattern: &str, account: Option<&AccountId>) -> Option<String> {
    let (Some(want), Some(pinned)) = (account, pattern_account(pattern)) else { return None };
    (want != &pinned).then(|| {
        format!("aws_arn {pattern:?} names account {pinned} but aws_account is {want}: the rule could never match")
    })
}

impl RuleMatcher {
    /// Compiles rules once. Organization rules (`aws_organization_id`) are kept for `explain`
    /// and [`RuleMatcher::organization_rules`] but never matched by [`RuleMatcher::first_match`].
    pub fn compile(rules: Vec<Rule>) -> Result<Self, Error> {
        let mut builders: HashMap<AccountId, BucketBuilder> = HashMap::new();
        let mut any = BucketBuilder::default();
        for (i, rule) in rules.iter().enumerate() {
            if rule.needs_organization() {
                continue;
            }
            let pinned = rule.aws_account.or_else(|| rule.aws_arn.as_deref().and_then(pattern_account));
            let b = match pinned {
                Some(acct) => builders.entry(acct).or_default(),
                None => &mut any,
            };
            match &rule.aws_arn {
                None => {
                    b.account_only.get_or_insert(i);
                }
                Some(p) => {
                    let glob = GlobBuilder::new(&to_glob(p))
                        .literal_separator(false)
                        .backslash_escape(true)
                        .case_insensitive(false)
                        .build()
                        .map_err(|e| Error::new(ErrorKind::TokenInvalid, format!("rule {i}: aws_arn {p:?}: {e}")))?;
                    b.globs.add(glob);
                    b.glob_rule.push(i);
                }
            }
        }
        let build = |b: BucketBuilder| -> Result<Bucket, Error> {
            let globs = b
                .globs
                .build()
                .map_err(|e| Error::new(ErrorKind::TokenInvalid, format!("compiling allow rules: {e}")))?;
            Ok(Bucket { account_only: b.account_only, globs, glob_rule: b.glob_rule })
        };
        let mut buckets = HashMap::with_capacity(builders.len());
        for (acct, b) in builders {
            buckets.insert(acct, build(b)?);
        }
        Ok(Self { rules, buckets, any_account: build(any)? })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Indices of the rules that need an AWS Organizations lookup.
    pub fn organization_rules(&self) -> impl Iterator<Item = usize> + '_ {
        self.rules.iter().enumerate().filter(|(_, r)| r.needs_organization()).map(|(i, _)| i)
    }

    /// The index of the first rule the identity matches, if any.
    ///
    /// `arn` must belong to `account` (STS never returns otherwise, and the response parser
    /// refuses it); an inconsistent pair matches nothing.
    ///
    /// ```
    /// use iam_join::{AccountId, Arn, Rule, RuleMatcher};
    /// let m = RuleMatcher::compile(vec![
    ///     Rule::new(Some("111111111111"), None).unwrap(),
    ///     Rule::new(None, Some("arn:aws:sts::222222222222:assumed-role/node/i-*")).unwrap(),
    /// ]).unwrap();
    /// let acct = AccountId::parse("222222222222").unwrap();
    /// let arn = Arn::parse("arn:aws:sts::222222222222:assumed-role/node/i-0abc").unwrap();
    /// assert_eq!(m.first_match(&acct, &arn), Some(1));
    /// ```
    pub fn first_match(&self, account: &AccountId, arn: &Arn) -> Option<usize> {
        if arn.account() != account {
            return None;
        }
        let candidate = Candidate::new(arn.as_str());
        let mut scratch = Vec::new();
        let pinned = self.buckets.get(account).and_then(|b| b.first(&candidate, &mut scratch));
        let any = self.any_account.first(&candidate, &mut scratch);
        min_some(pinned, any)
    }

    /// Says, rule by rule, why the identity does or does not match.
    pub fn explain(&self, account: &AccountId, arn: &Arn) -> Explanation {
        let candidate = Candidate::new(arn.as_str());
        let mut arn_ok = vec![false; self.rules.len()];
        for b in self.buckets.values().chain(std::iter::once(&self.any_account)) {
            b.arn_matches(&candidate, &mut arn_ok);
        }
        let consistent = arn.account() == account;
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let account_check = match &rule.aws_account {
                    None => Check::NotSet,
                    Some(a) if a == account => Check::Matched,
                    Some(_) => Check::Differs,
                };
                let arn_check = match &rule.aws_arn {
                    None => Check::NotSet,
                    Some(_) if arn_ok[index] => Check::Matched,
                    Some(_) => Check::Differs,
                };
                let organization = if rule.needs_organization() { Check::NotEvaluated } else { Check::NotSet };
                let matched = consistent
                    && organization == Check::NotSet
                    && account_check != Check::Differs
                    && arn_check != Check::Differs;
                RuleOutcome { index, account: account_check, arn: arn_check, organization, matched }
            })
            .collect::<Vec<_>>();
        let matched = rules.iter().find(|r| r.matched).map(|r| r.index);
        Explanation { matched, rules }
    }
}

/// The result of one field of a rule against an identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The rule does not set this field.
    NotSet,
    /// The field matches.
    Matched,
    /// The field does not match.
    Differs,
    /// The field needs an AWS Organizations lookup, which this evaluation did not make.
    NotEvaluated,
}

impl Check {
    /// A short stable word: `not_set`, `matched`, `differs`, `not_evaluated`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotSet => "not_set",
            Self::Matched => "matched",
            Self::Differs => "differs",
            Self::NotEvaluated => "not_evaluated",
        }
    }
}

/// How one rule fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleOutcome {
    /// The rule's index in the token.
    pub index: usize,
    /// `aws_account` against the identity's account.
    pub account: Check,
    /// `aws_arn` against the identity's ARN.
    pub arn: Check,
    /// The organization fields.
    pub organization: Check,
    /// Whether the rule as a whole matches.
    pub matched: bool,
}

/// Rule-by-rule reasons for an outcome, from [`RuleMatcher::explain`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The first matching rule, if any: the one `first_match` reports.
    pub matched: Option<usize>,
    /// One outcome per rule, in order.
    pub rules: Vec<RuleOutcome>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            let why = if r.matched {
                "matched".to_owned()
            } else {
                let mut parts = Vec::new();
                if r.account == Check::Differs {
                    parts.push("account differs");
                }
                if r.arn == Check::Differs {
                    parts.push("ARN pattern differs");
                }
                if r.organization == Check::NotEvaluated {
                    parts.push("organization not evaluated");
                }
                if parts.is_empty() {
                    parts.push("ARN account differs from the account");
                }
                parts.join(", ")
            };
            writeln!(f, "rule {}: {}", r.index, why)?;
        }
        match self.matched {
            Some(i) => write!(f, "allowed by rule {i}"),
            None => write!(f, "not allowed: no rule matched"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a rule without load-time validation, so matching semantics can be tested even for
    /// patterns the loader refuses (e.g. one that can never match a principal ARN).
    fn rule(account: Option<&str>, arn: Option<&str>) -> Rule {
        Rule::new_unchecked(account, arn).unwrap()
    }

    fn first(rules: Vec<Rule>, arn: &str) -> Option<usize> {
        let m = RuleMatcher::compile(rules).unwrap();
        let arn = Arn::parse(arn).unwrap();
        let got = m.first_match(arn.account(), &arn);
        assert_eq!(got, m.explain(arn.account(), &arn).matched, "explain disagrees for {arn}");
        got
    }

    /// One line per case: (aws_account, aws_arn) of a single rule, identity ARN, matches?
    macro_rules! matches {
        ($($name:ident: $acct:expr, $pat:expr, $arn:expr => $want:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(first(vec![rule($acct, $pat)], $arn).is_some(), $want);
            }
        )*};
    }

    const USER: &str = "arn:aws:iam::123456789012:user/admins-123";

    matches! {
        account_only: Some("123456789012"), None, USER => true;
        wrong_account: Some("123456789013"), None, USER => false;
        wildcard_suffix: None, Some("arn:aws:iam::123456789012:user/admins-*"), USER => true;
        three_question_marks: None, Some("arn:aws:iam::123456789012:user/admins-???"), USER => true;
        three_question_marks_not_four: None, Some("arn:aws:iam::123456789012:user/admins-???"),
            "arn:aws:iam::123456789012:user/admins-1234" => false;
        exact_assumed_role: None, Some("arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name"),
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name" => true;
        exact_is_exact: None, Some("arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name"),
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name2" => false;
        star_in_role_name: None, Some("arn:aws:sts::123456789012:assumed-role/my-*-test-role/my-session-name"),
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name" => true;
        star_in_role_and_session: None, Some("arn:aws:sts::123456789012:assumed-role/my-*-test-role/*"),
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name" => true;
        no_session_part_no_match: None, Some("arn:aws:sts::123456789012:assumed-role/my-super-test-role"),
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name" => false;
        wrong_arn: None, Some("arn:aws:iam::123456789012:user/admins-*"), "arn:aws:iam::123456789012:user/users-1" => false;
        account_and_arn_wrong_account: Some("123456789013"), Some("arn:aws:iam::*:user/admins-*"), USER => false;
        account_and_arn: Some("123456789012"), Some("arn:aws:iam::*:user/admins-*"), USER => true;
        star_spans_slash_and_colon: None, Some("arn:aws:*/admins-123"), USER => true;
        star_matches_empty: None, Some("arn:aws:iam::123456789012:user/admins-123*"), USER => true;
        question_is_one_char: None, Some("arn:aws:iam::123456789012:user/admins-12?"), USER => true;
        question_not_empty: None, Some("arn:aws:iam::123456789012:user/admins-123?"), USER => false;
        case_sensitive: None, Some("arn:aws:iam::123456789012:user/Admins-*"), USER => false;
        anchored_start: None, Some("arn:aws:iam::123456789012:user/dmins-*"), USER => false;
        double_star_is_star: None, Some("arn:aws:iam::**/admins-123"), USER => true;
        brackets_literal: None, Some("arn:aws:iam::123456789012:user/[a]*"), USER => false;
        braces_literal: None, Some("arn:aws:iam::123456789012:user/{admins,x}-12?"), USER => false;
        dot_literal: None, Some("arn:aws:iam::123456789012:user/admins.123"), USER => false;
        any_partition_star: None, Some("arn:*:iam::123456789012:user/admins-123"), USER => true;
    }

    #[test]
    fn loader_refuses_pattern_that_cannot_match_a_session() {
        let e = Rule::new(None, Some("arn:aws:sts::123456789012:assumed-role/my-super-test-role")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TokenInvalid);
        assert!(e.detail().contains("cannot match any principal ARN"), "{e}");
    }

    #[test]
    fn empty_matcher_matches_nothing() {
        assert_eq!(first(vec![], USER), None);
    }

    #[test]
    fn lowest_index_wins() {
        let rules = vec![
            rule(None, Some("arn:aws:iam::123456789012:user/nobody")),
            rule(None, Some("arn:aws:iam::*:user/admins-*")),
            rule(Some("123456789012"), None),
            rule(None, Some("arn:aws:iam::123456789012:user/admins-123")),
        ];
        assert_eq!(first(rules, USER), Some(1));
        let rules =
            vec![rule(None, Some("arn:aws:iam::123456789012:user/admins-123")), rule(Some("123456789012"), None)];
        assert_eq!(first(rules, USER), Some(0));
        let rules = vec![rule(Some("123456789012"), None), rule(None, Some("arn:aws:iam::*:user/*"))];
        assert_eq!(first(rules, USER), Some(0));
    }

    #[test]
    fn inconsistent_identity_matches_nothing() {
        let m = RuleMatcher::compile(vec![rule(None, Some("arn:aws:iam::*:user/*"))]).unwrap();
        let arn = Arn::parse(USER).unwrap();
        let other = AccountId::parse("999999999999").unwrap();
        assert_eq!(m.first_match(&other, &arn), None);
        assert_eq!(m.explain(&other, &arn).matched, None);
    }

    #[test]
    fn explain_says_why() {
        let rules = vec![
            rule(Some("111111111111"), None),
            rule(Some("123456789012"), Some("arn:aws:iam::123456789012:user/x")),
            rule(None, Some("arn:aws:iam::*:user/admins-*")),
        ];
        let m = RuleMatcher::compile(rules).unwrap();
        let arn = Arn::parse(USER).unwrap();
        let e = m.explain(arn.account(), &arn);
        assert_eq!(e.matched, Some(2));
        assert_eq!((e.rules[0].account, e.rules[0].arn, e.rules[0].matched), (Check::Differs, Check::NotSet, false));
        assert_eq!((e.rules[1].account, e.rules[1].arn, e.rules[1].matched), (Check::Matched, Check::Differs, false));
        assert_eq!((e.rules[2].account, e.rules[2].arn, e.rules[2].matched), (Check::NotSet, Check::Matched, true));
        assert_eq!(
            e.to_string(),
            "rule 0: account differs\nrule 1: ARN pattern differs\nrule 2: matched\nallowed by rule 2"
        );
    }

    #[test]
    fn pattern_problems() {
        let bad = [
            ("", None),
            ("*", None),
            ("aws:iam::123456789012:user/x", None),
            ("arn:aws:iam::123456789012:user/x y", None),
            ("arn:aws-mars:iam::*", None),
            ("arn:aws:s3:::bucket/*", None),
            ("arn:aws:iam:us-east-1:*", None),
            ("arn:aws:iam::1234:user/*", None),
            ("arn:aws:iam::123456789012:role", None),
            ("arn:aws:iam::123456789012:user/*", Some("111111111111")),
            ("arn:aws:iam::123456789012:user/x", Some("111111111111")),
        ];
        for (p, acct) in bad {
            let acct = acct.and_then(AccountId::parse);
            assert!(arn_pattern_problem(p, acct.as_ref()).is_some(), "{p:?} should be refused");
        }
        let good = ["arn:*", "arn:aws:iam::*", "arn:aws:sts::123456789012:assumed-role/r/*", "arn:a?s:iam::1:x"];
        for p in good {
            assert_eq!(arn_pattern_problem(p, None), None, "{p:?} should be accepted");
        }
    }

    #[test]
    fn matcher_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<RuleMatcher>();
    }
}
