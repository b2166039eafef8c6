//! The plain reference matcher: one regex per rule, built the way Teleport builds it
//! (`regexp.QuoteMeta`, then `\*` → `.*` and `\?` → `.`, anchored), checked in rule order.
//! The compiled matcher must agree with it everywhere. Shared by the tests, the benchmark
//! baselines and the `match_rules` fuzz target.

use regex::Regex;

/// Teleport's `arnMatches` pattern for one `aws_arn`.
pub(crate) fn teleport_regex(pattern: &str) -> String {
    let quoted = regex::escape(pattern);
    format!("^{}$", quoted.replace(r"\*", ".*").replace(r"\?", "."))
}

/// A rule as plain strings: (aws_account, aws_arn), empty meaning unset.
pub(crate) type PlainRule = (String, String);

/// Teleport's `checkIAMAllowRules`, compiling each regex on every call as Teleport does.
pub(crate) fn first_match_compiling(rules: &[PlainRule], account: &str, arn: &str) -> Option<usize> {
    rules.iter().position(|(a, p)| {
        (a.is_empty() || a == account)
            && (p.is_empty() || Regex::new(&teleport_regex(p)).expect("quoted pattern is a valid regex").is_match(arn))
    })
}

/// The same loop with regexes built once.
pub(crate) struct Prebuilt(Vec<(String, Option<Regex>)>);

impl Prebuilt {
    pub(crate) fn new(rules: &[PlainRule]) -> Self {
        Self(
            rules
                .iter()
                .map(|(a, p)| {
                    let re = (!p.is_empty()).then(|| Regex::new(&teleport_regex(p)).expect("valid regex"));
                    (a.clone(), re)
                })
                .collect(),
        )
    }

    pub(crate) fn first_match(&self, account: &str, arn: &str) -> Option<usize> {
        self.0.iter().position(|(a, re)| (a.is_empty() || a == account) && re.as_ref().is_none_or(|r| r.is_match(arn)))
    }
}
