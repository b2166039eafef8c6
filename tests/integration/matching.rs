//! The compiled matcher against the plain reference (one regex per rule, Teleport's way).

use iam_join::Subject;
use iam_join::{AccountId, Arn, Rule, RuleMatcher};
use proptest::prelude::*;

use crate::common::reference::{PlainRule, Prebuilt, first_match_compiling};

const ACCOUNTS: [&str; 3] = ["111111111111", "222222222222", "012345678901"];

/// ARNs from a small alphabet so that generated patterns often match them.
fn arn_strategy() -> impl Strategy<Value = String> {
    // Dot-only names (`.`, `..`) are valid session and user names; globset's path shortcuts
    // once disagreed with Teleport on them.
    let name = prop_oneof!["[ab.@_-]{1,6}", "\\.{1,3}", "[a.]{1,4}"];
    // IAM paths may hold `:`, which the any-account index must not be fooled by.
    let path = "[ab:]{1,4}";
    (0..3usize, 0..6usize, name.clone(), name, path).prop_map(|(acct, kind, n1, n2, path)| {
        let a = ACCOUNTS[acct];
        match kind {
            0 => format!("arn:aws:iam::{a}:user/{n1}"),
            1 => format!("arn:aws:iam::{a}:user/{n2}/{n1}"),
            5 => format!("arn:aws:iam::{a}:role/{path}/{n1}"),
            2 => format!("arn:aws:sts::{a}:assumed-role/{n1}/{n2}"),
            3 => format!("arn:aws:sts::{a}:federated-user/{n1}"),
            _ => format!("arn:aws:iam::{a}:root"),
        }
    })
}

/// Patterns derived from an ARN by swapping spans for `*`, `?`, or characters globset would
/// treat specially if they were not escaped.
fn pattern_strategy() -> impl Strategy<Value = String> {
    (arn_strategy(), any::<bool>(), prop::collection::vec((0..80usize, 0..9usize), 0..4)).prop_map(
        |(arn, any_account, edits)| {
            // Half the time the account field becomes `*`, as in `arn:aws:sts::*:assumed-role/x/*`.
            let arn = if any_account { arn.replacen(&arn[13..25], "*", 1) } else { arn };
            let mut chars: Vec<char> = arn.chars().collect();
            for (pos, op) in edits {
                let at = 4 + pos % (chars.len() - 4).max(1);
                let at = at.min(chars.len());
                match op {
                    0 => chars.insert(at, '*'),
                    1 if at < chars.len() => chars[at] = '?',
                    2 => {
                        let end = (at + 3).min(chars.len());
                        chars.splice(at..end, ['*']);
                    }
                    3 => chars.insert(at, '['),
                    4 => chars.insert(at, '{'),
                    5 => chars.insert(at, '\\'),
                    6 => chars.splice(at..at, ['*', '*']).for_each(drop),
                    7 => chars.extend(['*', '.']),
                    _ => {}
                }
            }
            chars.into_iter().collect()
        },
    )
}

fn rule_strategy() -> impl Strategy<Value = PlainRule> {
    prop_oneof![
        (0..3usize).prop_map(|a| (ACCOUNTS[a].to_owned(), String::new())),
        pattern_strategy().prop_map(|p| (String::new(), p)),
        (0..3usize, pattern_strategy()).prop_map(|(a, p)| (ACCOUNTS[a].to_owned(), p)),
    ]
}

/// Rules as the loader accepts them: patterns that can never match are lints, not errors, so
/// the matcher must agree with the reference on every pattern.
fn compile(rules: &[PlainRule]) -> RuleMatcher {
    let rules = rules
        .iter()
        .map(|(a, p)| {
            Rule::new((!a.is_empty()).then_some(a.as_str()), (!p.is_empty()).then_some(p.as_str()))
                .expect("12-digit accounts, patterns under the length limit")
        })
        .collect();
    RuleMatcher::compile(rules).expect("compiles")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_equals_reference(rules in prop::collection::vec(rule_strategy(), 0..12), arns in prop::collection::vec(arn_strategy(), 1..6)) {
        let m = compile(&rules);
        let prebuilt = Prebuilt::new(&rules);
        for arn in &arns {
            let parsed = Arn::parse(arn).expect("generated ARNs are valid");
            let acct = parsed.account();
            let want = first_match_compiling(&rules, acct.as_str(), arn);
            prop_assert_eq!(m.first_match(Subject::new(acct, &parsed)), want, "rules {:?} arn {}", rules, arn);
            prop_assert_eq!(prebuilt.first_match(acct.as_str(), arn), want);
            prop_assert_eq!(m.explain(Subject::new(acct, &parsed)).matched, want);
        }
    }
}

#[test]
fn agrees_on_teleport_cases() {
    let cases: &[(&str, &str, bool)] = &[
        ("arn:aws:iam::123456789012:user/admins-*", "arn:aws:iam::123456789012:user/admins-123", true),
        ("arn:aws:iam::123456789012:user/admins-???", "arn:aws:iam::123456789012:user/admins-123", true),
        ("arn:aws:iam::123456789012:user/admins-???", "arn:aws:iam::123456789012:user/admins-1234", false),
        (
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name",
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name",
            true,
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/my-*-test-role/my-session-name",
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name",
            true,
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/my-*-test-role/*",
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name",
            true,
        ),
        (
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role",
            "arn:aws:sts::123456789012:assumed-role/my-super-test-role/my-session-name",
            false,
        ),
    ];
    for &(pattern, arn, want) in cases {
        let rules = vec![(String::new(), pattern.to_owned())];
        let parsed = Arn::parse(arn).unwrap();
        assert_eq!(first_match_compiling(&rules, parsed.account().as_str(), arn).is_some(), want, "{pattern}");
        assert_eq!(compile(&rules).first_match(Subject::new(parsed.account(), &parsed)).is_some(), want, "{pattern}");
    }
    // A wrong account refuses even when the ARN pattern matches.
    let rules = vec![("999999999999".to_owned(), "arn:aws:iam::*:user/admins-*".to_owned())];
    let parsed = Arn::parse("arn:aws:iam::123456789012:user/admins-1").unwrap();
    assert_eq!(compile(&rules).first_match(Subject::new(parsed.account(), &parsed)), None);
    assert_eq!(first_match_compiling(&rules, "123456789012", parsed.as_str()), None);
    let _ = AccountId::parse("123456789012").unwrap();
}

/// A small deterministic generator (xorshift64*), so the corpus is the same on every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    /// A name rich in dots, dashes and dot-only forms, all valid IAM name characters.
    fn name(&mut self) -> String {
        match self.below(3) {
            0 => self.pick(&[".", "..", "...", "a.", ".a", "a..b", "a.b", "-", "a-", "-.", "b", "_.@"]).to_owned(),
            _ => (0..1 + self.below(4)).map(|_| self.pick(&["a", ".", "-", "b", "."])).collect(),
        }
    }
    fn arn(&mut self) -> String {
        let p = self.pick(&["aws", "aws", "aws-cn", "aws-us-gov"]);
        let a = self.pick(&ACCOUNTS);
        match self.below(5) {
            0 => format!("arn:{p}:sts::{a}:assumed-role/{}/{}", self.name(), self.name()),
            1 => format!("arn:{p}:iam::{a}:user/{}", self.name()),
            2 => format!("arn:{p}:iam::{a}:user/{}/{}/{}", self.name(), self.name(), self.name()),
            3 => format!("arn:{p}:sts::{a}:federated-user/{}", self.name()),
            _ => format!("arn:{p}:iam::{a}:root"),
        }
    }
    /// A pattern: an ARN of `pool` edited towards wildcards and separators, or one built from
    /// pieces.
    fn pattern(&mut self, pool: &[String]) -> String {
        if self.below(5) == 0 {
            let pieces = ["arn:", "aws", ":", "::", "/", ".", "..", "*", "?", "-", "a", "sts", "iam", "111111111111"];
            return (0..1 + self.below(8)).map(|_| self.pick(&pieces)).collect();
        }
        let mut chars: Vec<char> = pool[self.below(pool.len())].chars().collect();
        for _ in 0..1 + self.below(3) {
            let at = self.below(chars.len() + 1);
            match self.below(8) {
                0 => chars.insert(at, '*'),
                1 if at < chars.len() => chars[at] = '?',
                2 => {
                    let end = (at + 1 + self.below(6)).min(chars.len());
                    chars.splice(at..end, ['*']);
                }
                3 => chars.insert(at, ['.', '/', ':', '-'][self.below(4)]),
                4 => chars.truncate(at),
                5 => chars.extend(self.pick(&["*", ".", "*.", "?.", "/*", "..", "*..", "/."]).chars()),
                6 if at < chars.len() => chars[at] = '.',
                _ => {}
            }
        }
        if chars.is_empty() {
            chars.push('*');
        }
        chars.into_iter().collect()
    }
}

/// At least 100,000 pattern/ARN pairs rich in dots and slashes: every pair's ARN check (through
/// the index, via `explain`) and every ARN's first match (lowest index, with accounts) equal the
/// regular-expression reference.
#[test]
fn matcher_agrees_with_teleport_regex_on_100k_generated_pairs() {
    const PATTERNS: usize = 500;
    const ARNS: usize = 220;
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    // Patterns come from a pool of ARNs that half of the ARNs checked are also drawn from, so
    // that a fair share of pairs match; the other half are fresh.
    let mut arn_gen = Gen(0x2545_F491_4F6C_DD1D);
    let mut valid_arns = std::iter::repeat_with(move || arn_gen.arn()).filter(|a| Arn::parse(a).is_ok());
    let pool: Vec<String> = valid_arns.by_ref().take(ARNS / 2).collect();
    let rules: Vec<PlainRule> = (0..PATTERNS)
        .map(|i| {
            let account = if i % 3 == 0 { g.pick(&ACCOUNTS).to_owned() } else { String::new() };
            (account, g.pattern(&pool))
        })
        .collect();
    let arns: Vec<String> = pool.iter().cloned().chain(valid_arns.take(ARNS - pool.len())).collect();
    let m = compile(&rules);
    let regexes: Vec<regex::Regex> =
        rules.iter().map(|(_, p)| regex::Regex::new(&crate::common::reference::teleport_regex(p)).unwrap()).collect();
    let prebuilt = Prebuilt::new(&rules);
    let (mut pairs, mut matched, mut dot_only_matched) = (0usize, 0usize, 0usize);
    for arn in &arns {
        let parsed = Arn::parse(arn).unwrap();
        let explanation = m.explain(Subject::new(parsed.account(), &parsed));
        for (i, re) in regexes.iter().enumerate() {
            let want = re.is_match(arn);
            let got = explanation.rules[i].arn == iam_join::Check::Matched;
            assert_eq!(got, want, "pattern {:?} vs {arn}", rules[i].1);
            pairs += 1;
            matched += usize::from(want);
            dot_only_matched +=
                usize::from(want && arn.rsplit('/').next().is_some_and(|s| s.bytes().all(|b| b == b'.')));
        }
        let want = prebuilt.first_match(parsed.account().as_str(), arn);
        assert_eq!(m.first_match(Subject::new(parsed.account(), &parsed)), want, "first match for {arn}");
        assert_eq!(explanation.matched, want);
    }
    assert!(pairs >= 100_000, "{pairs} pairs");
    // Not vacuous: a share of the pairs match, dot-only last segments among them.
    assert!(matched >= pairs / 100, "only {matched} of {pairs} pairs match");
    assert!(dot_only_matched >= 100, "only {dot_only_matched} matches on dot-only last segments");
    eprintln!("{pairs} pairs, {matched} matching, {dot_only_matched} on dot-only last segments");
}
